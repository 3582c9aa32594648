//! Micro-VM support for `lode run`: a guest kernel and initramfs prepared from
//! Debian's packages (`lode vm prepare`), and the QEMU command line that boots
//! them on a disk served by the agent.
//!
//! The guest runs under QEMU's `microvm` machine with TCG (the KVM here is
//! paravirtual and does not run a stock guest kernel). Its `/init` loads the
//! virtio and ext4 modules, mounts `/dev/vda`, and runs the command inside the
//! image's root with `chroot`, printing markers the host times:
//! `LODE-CMD-START` and `LODE-CMD-EXIT <status>`.

pub mod cpio;
pub mod prepare;
pub mod qemu;

pub use prepare::{prepare, Assets, VmError};
pub use qemu::{command_cpio, Disk, RunSpec};
