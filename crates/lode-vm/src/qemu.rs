//! QEMU command lines for a micro-VM whose root disk is served by lode.

use crate::cpio::{archive, Member};
use crate::prepare::VmError;
use std::path::PathBuf;
use std::process::Command;

/// What the run initramfs is padded to (see [`run_initrd`]).
pub const INITRD_ALIGN: usize = 4096;

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

/// How QEMU rides out a restart of the agent serving its disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// NBD: how long requests wait for the agent to come back before they
    /// fail (`-blockdev driver=nbd,...,reconnect-delay=SECONDS`, rounded up).
    pub nbd_delay: std::time::Duration,
    /// vhost-user: how often the chardev retries connecting after the agent
    /// went away (`-chardev socket,...,reconnect-ms=N`).
    pub vhost_retry: std::time::Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            nbd_delay: std::time::Duration::from_secs(60),
            vhost_retry: std::time::Duration::from_millis(100),
        }
    }
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
    /// Keep the kernel quiet on the console (`quiet`): faster boots, and
    /// only errors before `/init` speaks.
    pub quiet: bool,
    /// Where QEMU logs every CPU reset with the CPU state (`-d cpu_reset -D`):
    /// a guest that resets before its console speaks leaves its last state
    /// there ([`crate::boot`] reports it).
    pub reset_log: Option<PathBuf>,
    /// Reconnect to the agent when it restarts (`None`: a restart of the
    /// agent fails the disk).
    pub reconnect: Option<Reconnect>,
    /// The guest's one network service (`None`: no network device at all).
    pub network: Option<crate::sandbox::Network>,
    /// The unprivileged user and group QEMU switches to (`-run-with
    /// user=UID:GID`) once it has opened its kernel, initrd, disk, chardevs
    /// and network, before the guest runs (`None`: it keeps the caller's).
    /// Its supplementary groups become just GID. Everything QEMU opens
    /// later must be reachable by that user: the disk socket it reconnects
    /// to after an agent restart, the relay program its network spawns and
    /// the socket that relay connects to. A QEMU that changed its user
    /// loses its parent-death signal; [`crate::boot::run_stoppable`] ties it
    /// to the thread that started it another way ([`crate::keeper`]).
    pub run_as: Option<RunAs>,
}

/// The user a VMM switches to ([`RunSpec::run_as`]).
#[derive(Clone, Debug)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id (its one group).
    pub gid: u32,
    /// An open file (close-on-exec) that QEMU's keeper holds until QEMU is
    /// dead, even when the process that started it died first: the lease
    /// lock of `uid` (see [`crate::keeper`]).
    pub hold: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
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

/// The initramfs of one run: the prepared `base` archive, then this run's
/// [`command_cpio`], zero-padded to a multiple of [`INITRD_ALIGN`].
///
/// Why the padding: QEMU's `microvm` machine loads the initrd at
/// `(ram_below_4g - 1 - size) & !4095`, keeping no room for ACPI data (the
/// `pc` machine keeps 160 KiB), so the initrd ends inside the last page of
/// guest RAM. That page is where the microvm firmware puts the ACPI tables
/// (RSDT, FACP, DSDT, APIC; under 1 KiB), and the initrd is copied in after
/// them: whatever it overlaps reads back as garbage, the kernel's ACPI gives
/// up, the virtio-mmio devices (which only the DSDT describes to Debian's
/// kernel) are never found, and the guest cannot mount its disk. Whether the
/// overlap hit the tables depended on `size % 4096`, so a new kernel package
/// (other module sizes) turned a working boot into a hang. With a size that
/// is a multiple of 4096 the initrd ends exactly one page below the top of
/// RAM, whatever the kernel, the command or the memory size, and the
/// firmware keeps its whole last page. The kernel skips zero padding between
/// and after archives.
pub fn run_initrd(base: &[u8], cmd: &[String], rw: bool) -> Vec<u8> {
    append_initrd(base, &command_cpio(cmd, rw))
}

/// `base`, then the archive `part` (4-byte aligned), zero-padded to a
/// multiple of [`INITRD_ALIGN`] (see [`run_initrd`] for why).
pub fn append_initrd(base: &[u8], part: &[u8]) -> Vec<u8> {
    let mut initrd = base.to_vec();
    // A following archive must start 4-byte aligned.
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    initrd.extend_from_slice(part);
    initrd.resize(initrd.len().next_multiple_of(INITRD_ALIGN), 0);
    initrd
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
    /// A VM of `kernel`, `initrd` and `disk` with the defaults: 256 MiB,
    /// a quiet kernel, no reset log, no reconnect, no network, the caller's
    /// user. Set the other fields on the result.
    pub fn new(kernel: PathBuf, initrd: PathBuf, disk: Disk) -> RunSpec {
        RunSpec {
            kernel,
            initrd,
            disk,
            memory_mib: 256,
            quiet: true,
            reset_log: None,
            reconnect: None,
            network: None,
            run_as: None,
        }
    }

    /// The `qemu-system-x86_64` command. Refuses an initrd whose size is not
    /// a multiple of [`INITRD_ALIGN`] (it would overwrite the guest's ACPI
    /// tables; see [`run_initrd`]).
    pub fn command(&self) -> Result<Command, VmError> {
        let len = std::fs::metadata(&self.initrd)
            .map_err(|source| VmError::Io {
                path: self.initrd.display().to_string(),
                source,
            })?
            .len();
        if len % INITRD_ALIGN as u64 != 0 {
            return Err(VmError::Layout {
                path: self.initrd.display().to_string(),
                len,
            });
        }
        // The guest finds its virtio-mmio disk through ACPI (Debian's kernel has
        // no command-line virtio-mmio devices); `poweroff -f` ends QEMU.
        // earlyprintk: errors from before the console is up (an early panic)
        // still reach the serial line.
        let mut append =
            String::from("console=ttyS0 earlyprintk=ttyS0 panic=-1 reboot=t tsc=reliable");
        if self.quiet {
            append.push_str(" quiet");
        }
        if let Some(k) = tsc_khz() {
            append.push_str(&format!(" tsc_early_khz={k}"));
        }
        let mut c = Command::new("qemu-system-x86_64");
        // No legacy PIT or PIC: under TCG about 1 boot in 100 took a PIT
        // interrupt at the kernel's first `local_irq_enable` and died of a
        // divide error before the console was up (7 of 700 early boots with
        // the PIT, 0 of 700 without; the TSC is the clock, `tsc_early_khz`
        // skips its calibration, and the IOAPIC routes the serial port).
        c.args([
            "-accel",
            "tcg",
            "-M",
            "microvm,pit=off,pic=off",
            "-global",
            "virtio-mmio.force-legacy=false",
        ]);
        // QEMU's seccomp filter, as libvirt sets it: a guest that takes
        // over the emulator cannot use obsolete system calls or change its
        // scheduling, nor exec, fork or change its user, unless the
        // network's Runtime API forward must start its relay (one per guest
        // connection): libslirp's spawn fails under `spawn=deny` and under
        // `elevateprivileges=deny` or `children` (tried with worker_vm).
        c.arg("-sandbox").arg(sandbox_option(
            self.network.is_some(),
            self.run_as.is_some(),
        ));
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
        if let Some(log) = &self.reset_log {
            c.args(["-d", "cpu_reset,guest_errors", "-D"]).arg(log);
        }
        if let Some(r) = &self.run_as {
            c.arg("-run-with").arg(format!("user={}:{}", r.uid, r.gid));
        }
        c.arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-append")
            .arg(append);
        // Without a network, -nodefaults leaves the guest no NIC at all.
        if let Some(n) = &self.network {
            c.arg("-netdev").arg(n.netdev("n0"));
            c.args(["-device", "virtio-net-device,netdev=n0"]);
        }
        match &self.disk {
            Disk::Nbd {
                socket,
                export,
                read_only,
            } => {
                let ro = if *read_only { ",read-only=on" } else { "" };
                let rc = match self.reconnect {
                    Some(r) => format!(
                        ",reconnect-delay={}",
                        r.nbd_delay.as_secs_f64().ceil() as u64
                    ),
                    None => String::new(),
                };
                c.arg("-blockdev").arg(format!(
                    "driver=nbd,server.type=unix,server.path={},export={export},node-name=d0{ro}{rc}",
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
                let rc = match self.reconnect {
                    Some(r) => format!(",reconnect-ms={}", r.vhost_retry.as_millis().max(1)),
                    None => String::new(),
                };
                c.arg("-chardev")
                    .arg(format!("socket,id=c0,path={}{rc}", socket.display()));
                c.args(["-device", "vhost-user-blk,chardev=c0"]);
            }
        }
        Ok(c)
    }
}

/// QEMU's `-sandbox` value: everything denied, but a VM whose network
/// starts relays keeps `spawn` and `elevateprivileges`, and one that drops
/// to its own user (`drops`) keeps `elevateprivileges`.
///
/// Why the drop needs `elevateprivileges=allow` (QEMU 10.0, tried): QEMU
/// installs its seccomp filter while it parses its options, and switches
/// user (`-run-with user=`: `setgid`, `setgroups`, `setuid`) only later,
/// just before the guest starts, so under `elevateprivileges=deny` (or
/// `children`) the filter kills QEMU with SIGSYS at the switch ("Bad system
/// call", exit status 159). Allowing the calls costs nothing once QEMU has
/// switched: its user is not root, it has no capabilities and
/// `no_new_privs` is set (the filter sets it), so `setuid` and friends can
/// only fail, and an exec'd set-user-ID program gains nothing.
fn sandbox_option(relays: bool, drops: bool) -> &'static str {
    match (relays, drops) {
        (true, _) => "on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny",
        (false, true) => "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny",
        (false, false) => "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let c = command_cpio(&["echo".into(), "hi there".into()], true);
        assert!(c.windows(7).any(|w| w == b"lode/rw"));
    }

    #[test]
    fn run_initrd_is_whole_pages() {
        for base_len in [0usize, 1, 3, 4095, 4096, 4097, 1_708_004] {
            for arg in ["", "x", &"y".repeat(5000)] {
                let base = vec![7u8; base_len];
                let cmd = vec!["echo".to_string(), arg.to_string()];
                let i = run_initrd(&base, &cmd, false);
                assert_eq!(
                    i.len() % INITRD_ALIGN,
                    0,
                    "base {base_len}, arg {}",
                    arg.len()
                );
                assert_eq!(&i[..base_len], &base[..]);
                // The command archive starts 4-byte aligned after the base.
                let at = base_len.next_multiple_of(4);
                assert!(i[base_len..at].iter().all(|&b| b == 0));
                assert_eq!(&i[at..at + 6], b"070701");
            }
        }
    }

    /// A vhost-user disk at `DIR/s`.
    fn vhost(dir: &std::path::Path) -> Disk {
        Disk::VhostUser {
            socket: dir.join("s"),
        }
    }

    /// The command's arguments.
    fn args(s: &RunSpec) -> Vec<String> {
        s.command()
            .unwrap()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn command_refuses_an_unpadded_initrd() {
        let t = tempfile::tempdir().unwrap();
        let initrd = t.path().join("initrd");
        let spec = RunSpec::new(t.path().join("vmlinux"), initrd.clone(), vhost(t.path()));
        std::fs::write(&initrd, vec![0u8; 4097]).unwrap();
        let e = spec.command().unwrap_err();
        assert!(e.to_string().contains("4097"), "{e}");
        std::fs::write(&initrd, vec![0u8; 8192]).unwrap();
        assert!(spec.command().is_ok());
        std::fs::remove_file(&initrd).unwrap();
        assert!(spec.command().is_err());
    }

    #[test]
    fn reconnect_options() {
        let t = tempfile::tempdir().unwrap();
        let initrd = t.path().join("initrd");
        std::fs::write(&initrd, vec![0u8; 4096]).unwrap();
        let mut spec = RunSpec::new(t.path().join("vmlinux"), initrd, vhost(t.path()));
        spec.reconnect = Some(Reconnect::default());
        let args = |s: &RunSpec| args(s).join(" ");
        assert!(args(&spec).contains(",reconnect-ms=100"), "{}", args(&spec));
        spec.disk = Disk::Nbd {
            socket: t.path().join("s"),
            export: String::new(),
            read_only: false,
        };
        assert!(
            args(&spec).contains(",reconnect-delay=60"),
            "{}",
            args(&spec)
        );
        spec.reconnect = None;
        assert!(!args(&spec).contains("reconnect"));
    }

    #[test]
    fn run_with_user_only_when_set() {
        let t = tempfile::tempdir().unwrap();
        let initrd = t.path().join("initrd");
        std::fs::write(&initrd, vec![0u8; 4096]).unwrap();
        let mut spec = RunSpec::new(t.path().join("vmlinux"), initrd, vhost(t.path()));
        let sandbox = |a: &[String]| {
            let i = a.iter().position(|x| x == "-sandbox").unwrap();
            a[i + 1].clone()
        };
        let a = args(&spec);
        assert!(!a.iter().any(|x| x == "-run-with"), "{a:?}");
        assert!(sandbox(&a).contains("elevateprivileges=deny"), "{a:?}");
        spec.run_as = Some(RunAs {
            uid: 1_000_003,
            gid: 1_000_004,
            hold: None,
        });
        let a = args(&spec);
        let i = a.iter().position(|x| x == "-run-with").unwrap();
        assert_eq!(a[i + 1], "user=1000003:1000004");
        // The filter must let QEMU switch (it is installed before).
        assert!(sandbox(&a).contains("elevateprivileges=allow"), "{a:?}");
        assert!(sandbox(&a).contains("spawn=deny"), "{a:?}");
        spec.network = Some(crate::sandbox::Network {
            relay: vec!["/bin/true".into()],
        });
        let a = args(&spec);
        assert!(sandbox(&a).contains("spawn=allow"), "{a:?}");
        assert_eq!(a.iter().filter(|x| *x == "-run-with").count(), 1);
    }
}
