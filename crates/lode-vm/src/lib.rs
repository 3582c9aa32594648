//! Micro-VM support for `lode run`: a guest kernel and initramfs prepared from
//! Debian's packages (`lode vm prepare`), the guest's `/init` and the console
//! protocol the host follows, and the QEMU command line that boots them on a
//! disk served by the agent.
//!
//! The guest runs under QEMU's `microvm` machine with TCG (the KVM here is
//! paravirtual and does not run a stock guest kernel). Its `/init` loads the
//! virtio and ext4 modules, mounts `/dev/vda`, and runs the command inside the
//! image's root with `chroot`, printing markers the host follows
//! ([`guest::Console`]): `LODE-STAGE <stage>`, `LODE-CMD-START`,
//! `LODE-CMD-EXIT <status>` and `LODE-ERROR <what>`.

pub mod boot;
pub mod cpio;
pub mod guest;
pub mod keeper;
pub mod prepare;
pub mod qemu;
pub mod sandbox;

pub use boot::{run_stoppable, BootError, BootErrorKind, Limits, Outcome};
pub use guest::{Console, Event, Failure, Stage};
pub use prepare::{prepare, prepare_with, Assets, Options, Record, VmError};
pub use qemu::{
    append_initrd, command_cpio, run_initrd, Disk, Reconnect, RunAs, RunSpec, INITRD_ALIGN,
};
pub use sandbox::{Network, SandboxLaunch};
