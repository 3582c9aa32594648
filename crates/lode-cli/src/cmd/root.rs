//! `lode root list|rotate [--store URL]`

use super::common::{key_provider, open_store, runtime, StoreArgs};
use anyhow::Result;

/// Arguments of `lode root`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// List roots and their states.
    List(StoreArgs),
    /// Create a new active root with a fresh salt; the old one becomes retired.
    Rotate(StoreArgs),
}

/// Runs `lode root`.
pub fn run(args: Args) -> Result<()> {
    let rt = runtime()?;
    match args.action {
        Action::List(s) => {
            let store = open_store(s.store.as_deref())?;
            let roots = rt.block_on(store.roots())?;
            if roots.is_empty() {
                println!("no roots yet (the first push creates one)");
            }
            for r in roots {
                let state = format!("{:?}", r.state).to_lowercase();
                println!(
                    "{}  {:<8} salt {}  created {}  since {}{}",
                    r.id,
                    state,
                    r.salt_id,
                    r.created,
                    r.since_ms() / 1000,
                    if r.closing { "  (closing)" } else { "" }
                );
            }
        }
        Action::Rotate(s) => {
            let store = open_store(s.store.as_deref())?;
            let (new, retired) = rt.block_on(store.rotate_root(key_provider().as_ref()))?;
            println!("active root {} (salt {})", new.id, new.salt_id);
            for r in retired {
                println!("retired {}", r.id);
            }
        }
    }
    Ok(())
}
