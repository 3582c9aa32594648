//! `lode vm prepare`: the guest kernel and initramfs for `lode run`.

use super::common::lode_home;
use anyhow::Result;
use std::path::PathBuf;

/// Arguments of `lode vm`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Build the guest kernel and initramfs from Debian's packages.
    Prepare {
        /// Where to put them (default `$LODE_HOME/vm`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The default VM asset directory.
pub fn vm_dir() -> PathBuf {
    lode_home().join("vm")
}

/// Runs `lode vm`.
pub fn run(args: Args) -> Result<()> {
    match args.action {
        Action::Prepare { dir } => {
            let dir = dir.unwrap_or_else(vm_dir);
            let a = lode_vm::prepare(&dir)?;
            println!(
                "kernel {}\ninitrd {}",
                a.kernel.display(),
                a.initrd.display()
            );
        }
    }
    Ok(())
}
