//! `lode credentials add --tenant T` (prints `{"AccessKeyId", "SecretAccessKey"}`)
//! and `lode credentials rm ACCESS_KEY_ID --tenant T`: the access keys with
//! which a tenant signs its Lambda API requests (AWS Signature V4).

use super::common::{key_provider, open_store, runtime, StoreArgs};
use anyhow::{bail, Result};

/// Arguments of `lode credentials`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Make a new access key for a tenant; prints one JSON object.
    Add {
        /// Tenant the key signs for.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an access key (frontends forget it within 30 s).
    Rm {
        /// The key's AccessKeyId.
        access_key_id: String,
        /// Tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Runs `lode credentials`.
pub fn run(args: Args) -> Result<()> {
    let rt = runtime()?;
    let keys = key_provider();
    match args.action {
        Action::Add { tenant, store } => {
            lode_chunk::keys::check_tenant(&tenant)?;
            let store = open_store(store.store.as_deref())?;
            let c = rt.block_on(lode_frontend::credentials::add(
                &store,
                keys.as_ref(),
                &tenant,
            ))?;
            println!("{}", serde_json::to_string(&c)?);
        }
        Action::Rm {
            access_key_id,
            tenant,
            store,
        } => {
            let store = open_store(store.store.as_deref())?;
            let removed = rt.block_on(lode_frontend::credentials::remove(
                &store,
                keys.as_ref(),
                &tenant,
                &access_key_id,
            ))?;
            if !removed {
                bail!("tenant {tenant} has no access key {access_key_id}");
            }
            eprintln!("lode credentials: removed {access_key_id}");
        }
    }
    Ok(())
}
