//! `lode vm prepare`: the guest kernel and initramfs for `lode run`.

use super::common::lode_home;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Arguments of `lode vm`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Build the guest kernel and initramfs from Debian's packages, and print
    /// exactly which packages (versions and SHA-256) they came from.
    Prepare {
        /// Where to put them (default `$LODE_HOME/vm`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Kernel release to boot, e.g. `6.1.0-57` (default: the one
        /// `linux-image-amd64` depends on today).
        #[arg(long, value_name = "V")]
        kernel_version: Option<String>,
        /// Prepare again from freshly downloaded packages.
        #[arg(long)]
        force: bool,
    },
}

/// The prepared guest kernel and initramfs in `dir`, checked, once QEMU is
/// known to be installed (what `lode run` and `lode worker` boot).
pub fn guest_assets(dir: &Path) -> Result<lode_vm::prepare::Assets> {
    let assets = lode_vm::prepare::Assets::find(dir).with_context(|| {
        format!(
            "no guest kernel in {} (or one prepared by an older lode): run `lode vm prepare` first",
            dir.display()
        )
    })?;
    assets
        .verify()
        .with_context(|| format!("checking the guest files in {}", dir.display()))?;
    if std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("qemu-system-x86_64 is not installed (Debian: apt-get install -t bookworm-backports qemu-system-x86; see scripts/vm-deps.sh)");
    }
    Ok(assets)
}

/// The default VM asset directory.
pub fn vm_dir() -> PathBuf {
    lode_home().join("vm")
}

/// Runs `lode vm`.
pub fn run(args: Args) -> Result<()> {
    match args.action {
        Action::Prepare {
            dir,
            kernel_version,
            force,
        } => {
            let dir = dir.unwrap_or_else(vm_dir);
            let opts = lode_vm::Options {
                kernel_release: kernel_version.clone(),
                force,
            };
            let a = lode_vm::prepare_with(&dir, &opts)?;
            a.verify()?;
            println!(
                "kernel {}\ninitrd {}\n{}",
                a.kernel.display(),
                a.initrd.display(),
                a.record
            );
            // Say when apt has moved on since this directory was prepared.
            if kernel_version.is_none() {
                if let Ok(now) = lode_vm::prepare::default_kernel_package() {
                    if now != a.record.kernel.name {
                        eprintln!(
                            "lode vm prepare: note: {} was prepared with {}, but linux-image-amd64 now depends on {now}; `lode vm prepare --force` switches, `--kernel-version` pins one",
                            dir.display(),
                            a.record.kernel.name
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
