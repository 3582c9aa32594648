//! The guest side of `lode run`: the initramfs `/init`, and the console
//! protocol the host reads to follow a boot.
//!
//! `/init` prints one marker line per boot stage (`LODE-STAGE <stage>`),
//! `LODE-CMD-START` and `LODE-CMD-EXIT <status>` around the command, and
//! `LODE-ERROR <what>` when the boot cannot go on. [`Console`] turns the
//! console's lines into [`Event`]s: the stage reached, the command's output
//! and status, or a [`Failure`] (an `/init` error, a kernel panic, a halted
//! guest) that ends the run at once instead of waiting for a timeout.

use std::collections::VecDeque;
use std::fmt;

/// Revision of [`INIT`] and of the initramfs layout; part of the prepared
/// record, so a directory prepared with an older `/init` is prepared again.
pub const INIT_REVISION: u32 = 7;

/// Modules the guest needs, in load order (dependencies first).
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "crc16",
    "mbcache",
    "jbd2",
    "ext4",
];

/// Modules of the guest's network device, in load order: loaded only by a
/// sandbox (a run's initramfs with `/lode/net`, see [`crate::sandbox`]).
pub const NET_MODULES: &[&str] = &["failover", "net_failover", "virtio_net"];

/// The guest's `/init` ([`init_script`] fills in [`MODULES`] and
/// [`NET_MODULES`]).
///
/// Every way out is `reboot -f`: the kernel runs with `reboot=t` and QEMU
/// with `-no-reboot`, so a reboot ends QEMU whether or not the guest's ACPI
/// works (a power-off without ACPI only halts the CPU and leaves QEMU
/// running).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "LODE-STAGE initramfs"
fail() {
  echo "LODE-ERROR $*"
  reboot -f
  sleep 5
  echo "LODE-ERROR reboot failed"
  exec sleep 100000
}
listing() { ls "$1" 2>/dev/null | tr '\n' ' '; }
echo "LODE-STAGE modules"
for m in @MODULES@; do
  [ -f /lib/modules/$m.ko ] && { insmod /lib/modules/$m.ko || echo "LODE-WARN insmod $m failed"; }
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
[ -b /dev/vda ] || fail "no virtio block device appeared in 10 s (virtio devices: [$(listing /sys/bus/virtio/devices)]; ACPI tables: [$(listing /sys/firmware/acpi/tables)]; modules: [$(cut -d' ' -f1 /proc/modules | tr '\n' ' ')])"
if [ -f /lode/net ]; then
  . /lode/net
  for m in @NET_MODULES@; do
    [ -f /lib/modules/$m.ko ] && { insmod /lib/modules/$m.ko || echo "LODE-WARN insmod $m failed"; }
  done
  i=0
  while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
  [ -e /sys/class/net/eth0 ] || fail "no virtio network device appeared in 10 s (virtio devices: [$(listing /sys/bus/virtio/devices)])"
  ip link set lo up
  ip addr add "$LODE_GUEST_ADDR" dev eth0 && ip link set eth0 up || fail "cannot configure eth0 as $LODE_GUEST_ADDR"
fi
echo "LODE-STAGE mount"
MODE=ro
[ -f /lode/rw ] && MODE=rw
mount -t ext4 -o $MODE /dev/vda /newroot || fail "cannot mount /dev/vda ($MODE, ext4)"
for d in proc sys dev; do [ -d /newroot/$d ] && mount --bind /$d /newroot/$d; done
echo "LODE-CMD-START"
sh /lode/cmd.sh
echo "LODE-CMD-EXIT $?"
for d in proc sys dev; do umount /newroot/$d 2>/dev/null; done
sync
umount /newroot 2>/dev/null
reboot -f
"#;

/// The guest's `/init` script.
pub fn init_script() -> String {
    INIT.replace("@MODULES@", &MODULES.join(" "))
        .replace("@NET_MODULES@", &NET_MODULES.join(" "))
}

/// How far a boot got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// QEMU started; nothing printed yet (firmware, or a quiet kernel).
    Firmware,
    /// The kernel printed to the console.
    Kernel,
    /// `/init` runs.
    Initramfs,
    /// `/init` loads the virtio and ext4 modules and waits for the disk.
    Modules,
    /// `/init` mounts the image.
    Mount,
    /// The command runs.
    Command,
    /// The command exited.
    Finished,
}

impl Stage {
    fn from_marker(s: &str) -> Option<Stage> {
        Some(match s {
            "initramfs" => Stage::Initramfs,
            "modules" => Stage::Modules,
            "mount" => Stage::Mount,
            _ => return None,
        })
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Firmware => "firmware/kernel (no console output yet)",
            Stage::Kernel => "kernel",
            Stage::Initramfs => "initramfs",
            Stage::Modules => "module load",
            Stage::Mount => "mount",
            Stage::Command => "command",
            Stage::Finished => "command exited",
        })
    }
}

/// Why a boot cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// `/init` reported an error (`LODE-ERROR ...`).
    Init(String),
    /// The kernel panicked (its line).
    Panic(String),
    /// The guest halted instead of powering off (its line).
    Halted(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Init(m) => write!(f, "the guest's /init failed: {m}"),
            Failure::Panic(l) => write!(f, "the guest kernel panicked: {l}"),
            Failure::Halted(l) => write!(f, "the guest halted: {l}"),
        }
    }
}

/// What one console line means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A boot line (kernel or `/init`), kept in the tail.
    Boot,
    /// A new stage was reached.
    Stage(Stage),
    /// A line the command printed.
    Output(String),
    /// The command started.
    Started,
    /// The command exited with this status.
    Exited(i32),
    /// The boot cannot go on.
    Failed(Failure),
}

/// Follows a guest console line by line.
#[derive(Debug)]
pub struct Console {
    stage: Stage,
    tail: VecDeque<String>,
    keep: usize,
}

impl Default for Console {
    fn default() -> Self {
        Console::new(40)
    }
}

impl Console {
    /// A console keeping the last `keep` boot lines.
    pub fn new(keep: usize) -> Console {
        Console {
            stage: Stage::Firmware,
            tail: VecDeque::with_capacity(keep),
            keep,
        }
    }

    /// The stage reached so far.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The last boot lines (not the command's output), oldest first.
    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.iter().map(String::as_str)
    }

    fn remember(&mut self, line: &str) {
        if self.keep == 0 {
            return;
        }
        if self.tail.len() == self.keep {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }

    /// Reads one console line (without its line ending).
    pub fn feed(&mut self, line: &str) -> Event {
        let line = line.trim_end_matches('\r');
        if self.stage == Stage::Command {
            // The command's own lines are its output, whatever they say; only
            // the exit marker, a panic or a halt ends it.
            if let Some(rest) = line.split("LODE-CMD-EXIT ").nth(1) {
                self.stage = Stage::Finished;
                return Event::Exited(rest.trim().parse().unwrap_or(-1));
            }
            if let Some(f) = kernel_failure(line) {
                self.remember(line);
                return Event::Failed(f);
            }
            return Event::Output(line.to_string());
        }
        self.remember(line);
        if let Some(f) = kernel_failure(line) {
            return Event::Failed(f);
        }
        if let Some(m) = line.split("LODE-ERROR ").nth(1) {
            return Event::Failed(Failure::Init(m.trim().to_string()));
        }
        if line.contains("LODE-CMD-START") {
            self.stage = Stage::Command;
            return Event::Started;
        }
        if let Some(s) = line
            .split("LODE-STAGE ")
            .nth(1)
            .and_then(|s| Stage::from_marker(s.trim()))
        {
            self.stage = s;
            return Event::Stage(s);
        }
        if self.stage == Stage::Firmware && !line.trim().is_empty() {
            self.stage = Stage::Kernel;
            return Event::Stage(Stage::Kernel);
        }
        Event::Boot
    }
}

/// A kernel line that means the guest cannot go on.
fn kernel_failure(line: &str) -> Option<Failure> {
    if line.contains("Kernel panic - not syncing") {
        Some(Failure::Panic(line.trim().to_string()))
    } else if line.contains("reboot: System halted") {
        Some(Failure::Halted(line.trim().to_string()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_boot() {
        let mut c = Console::new(3);
        assert_eq!(c.stage(), Stage::Firmware);
        assert_eq!(
            c.feed("[    0.1] Linux version 6.1\r"),
            Event::Stage(Stage::Kernel)
        );
        assert_eq!(c.feed("[    0.2] more"), Event::Boot);
        assert_eq!(
            c.feed("LODE-STAGE initramfs"),
            Event::Stage(Stage::Initramfs)
        );
        assert_eq!(c.feed("LODE-STAGE modules"), Event::Stage(Stage::Modules));
        assert_eq!(c.feed("LODE-STAGE mount"), Event::Stage(Stage::Mount));
        assert_eq!(c.feed("LODE-CMD-START"), Event::Started);
        // The command's lines are output, even when they look like markers.
        assert_eq!(c.feed("hello"), Event::Output("hello".into()));
        assert_eq!(
            c.feed("LODE-ERROR not mine"),
            Event::Output("LODE-ERROR not mine".into())
        );
        assert_eq!(c.feed("LODE-CMD-EXIT 3"), Event::Exited(3));
        assert_eq!(c.stage(), Stage::Finished);
        // The tail holds the last boot lines only.
        assert_eq!(
            c.tail().collect::<Vec<_>>(),
            ["LODE-STAGE modules", "LODE-STAGE mount", "LODE-CMD-START"]
        );
    }

    #[test]
    fn failures_end_the_boot() {
        let mut c = Console::default();
        c.feed("LODE-STAGE modules");
        assert_eq!(
            c.feed("LODE-ERROR no virtio block device appeared"),
            Event::Failed(Failure::Init("no virtio block device appeared".into()))
        );
        assert_eq!(c.stage(), Stage::Modules);
        let mut c = Console::default();
        assert!(matches!(
            c.feed("[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs"),
            Event::Failed(Failure::Panic(_))
        ));
        let mut c = Console::default();
        c.feed("LODE-CMD-START");
        assert!(matches!(
            c.feed("[ 9.0] reboot: System halted"),
            Event::Failed(Failure::Halted(_))
        ));
        assert!(Failure::Init("x".into()).to_string().contains("/init"));
    }

    #[test]
    fn init_reboots_on_every_exit() {
        // A halt never ends QEMU: /init must not power off or halt.
        let init = init_script();
        assert!(!init.contains("poweroff"));
        assert!(!init.contains("halt"));
        assert!(init.trim_end().ends_with("reboot -f"));
        assert!(init.contains(&format!("for m in {}; do", MODULES.join(" "))));
    }
}
