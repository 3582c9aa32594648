//! QEMU command lines for a micro-VM whose root disk is served by lode.

use crate::cpio::{archive, Member};
use std::path::PathBuf;
use std::process::Command;

/// The VM's root disk.
#[derive(Clone, Debug)]
pub enum Disk {
    /// An NBD export on a unix socket.
    Nbd {
        /// Agent socket.
        socket: PathBuf,
        /// Export name (`TENANT/NAME`).
        export: String,
        /// Attach read-only.
        read_only: bool,
    },
    /// A vhost-user-blk socket.
    VhostUser {
        /// Backend socket.
        socket: PathBuf,
    },
}

/// Everything needed to start one VM.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Uncompressed kernel.
    pub kernel: PathBuf,
    /// Initramfs (base archive with the per-run archive appended).
    pub initrd: PathBuf,
    /// Root disk.
    pub disk: Disk,
    /// Guest memory, MiB.
    pub memory_mib: u32,
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The per-run initramfs part: `/lode/cmd.sh` runs `cmd` chrooted into the
/// image; `/lode/rw` asks for a read-write mount.
pub fn command_cpio(cmd: &[String], rw: bool) -> Vec<u8> {
    let quoted: Vec<String> = cmd.iter().map(|a| shell_quote(a)).collect();
    let script = format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\nexec chroot /newroot {}\n",
        quoted.join(" ")
    );
    let mut m = vec![
        Member::Dir("lode".into(), 0o755),
        Member::File("lode/cmd.sh".into(), 0o755, script.into_bytes()),
    ];
    if rw {
        m.push(Member::File("lode/rw".into(), 0o644, Vec::new()));
    }
    archive(&m)
}

/// The host's TSC frequency in kHz, which the guest needs to skip a flaky
/// calibration under TCG.
pub fn tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

impl RunSpec {
    /// The `qemu-system-x86_64` command.
    pub fn command(&self) -> Command {
        // The guest finds its virtio-mmio disk through ACPI (Debian's kernel has
        // no command-line virtio-mmio devices); `poweroff -f` ends QEMU.
        let mut append = String::from("console=ttyS0 quiet panic=-1 reboot=t tsc=reliable");
        if let Some(k) = tsc_khz() {
            append.push_str(&format!(" tsc_early_khz={k}"));
        }
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-accel",
            "tcg",
            "-M",
            "microvm",
            "-global",
            "virtio-mmio.force-legacy=false",
        ]);
        c.args([
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            "1",
            "-display",
            "none",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ]);
        c.arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-append")
            .arg(append);
        match &self.disk {
            Disk::Nbd {
                socket,
                export,
                read_only,
            } => {
                let ro = if *read_only { ",read-only=on" } else { "" };
                c.arg("-blockdev").arg(format!(
                    "driver=nbd,server.type=unix,server.path={},export={export},node-name=d0{ro}",
                    socket.display()
                ));
                c.args(["-device", "virtio-blk-device,drive=d0"]);
            }
            Disk::VhostUser { socket } => {
                c.args([
                    "-object",
                    &format!(
                        "memory-backend-memfd,id=mem,size={}M,share=on",
                        self.memory_mib
                    ),
                ]);
                c.args(["-machine", "memory-backend=mem"]);
                c.arg("-chardev")
                    .arg(format!("socket,id=c0,path={}", socket.display()));
                c.args(["-device", "vhost-user-blk,chardev=c0"]);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let c = command_cpio(&["echo".into(), "hi there".into()], true);
        assert!(c.windows(7).any(|w| w == b"lode/rw"));
    }
}
