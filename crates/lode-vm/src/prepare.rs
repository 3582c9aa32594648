//! `lode vm prepare`: a guest kernel and initramfs from Debian's packages.
//!
//! Steps (idempotent; each output is written to a temp name and renamed):
//! 1. `apt-get download` the kernel image package that `linux-image-amd64`
//!    depends on, and `busybox-static`;
//! 2. `dpkg-deb -x` both;
//! 3. decompress the XZ payload of `vmlinuz` into an ELF `vmlinux` (QEMU boots
//!    it directly, ~3.5 s faster under TCG than the compressed kernel);
//! 4. build `initrd.v5.cpio.gz`: busybox, the virtio/ext4 modules in load order,
//!    `/dev/console`, and `/init`.

use crate::cpio::{archive, Member};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The guest's `/init`.
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# insmod does not read module parameters from the kernel command line (modprobe
# would): hand virtio_mmio the devices QEMU listed there.
MMIO=""
for p in $(cat /proc/cmdline); do
  case $p in virtio_mmio.device=*) MMIO="$MMIO device=${p#virtio_mmio.device=}";; esac
done
for m in virtio_ring virtio virtio_mmio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk crc32c_generic crc16 mbcache jbd2 ext4; do
  ARGS=""
  [ $m = virtio_mmio ] && ARGS="$MMIO"
  [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko $ARGS 2>/dev/null
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
MODE=ro
[ -f /lode/rw ] && MODE=rw
if ! mount -t ext4 -o $MODE /dev/vda /newroot; then
  echo "LODE-ERROR cannot mount /dev/vda"
  cat /proc/cmdline; ls /sys/bus/virtio/devices /sys/bus/platform/devices 2>&1 | tr '\n' ' '; echo; lsmod 2>/dev/null | tr '\n' ' '
  poweroff -f; reboot -f
fi
for d in proc sys dev; do [ -d /newroot/$d ] && mount --bind /$d /newroot/$d; done
echo "LODE-CMD-START"
sh /lode/cmd.sh
echo "LODE-CMD-EXIT $?"
for d in proc sys dev; do umount /newroot/$d 2>/dev/null; done
sync
umount /newroot 2>/dev/null
poweroff -f; reboot -f
"#;

/// Why preparing failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A tool failed.
    #[error("{what}: {detail}")]
    Tool {
        /// The step.
        what: String,
        /// What it said.
        detail: String,
    },
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Prepared guest files.
#[derive(Clone, Debug)]
pub struct Assets {
    /// Uncompressed kernel (ELF).
    pub kernel: PathBuf,
    /// Base initramfs (gzip-compressed newc cpio).
    pub initrd: PathBuf,
}

impl Assets {
    /// The assets in `dir`, if prepared.
    pub fn find(dir: &Path) -> Option<Assets> {
        let a = Assets {
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd.v5.cpio.gz"),
        };
        (a.kernel.is_file() && a.initrd.is_file()).then_some(a)
    }
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |source| VmError::Io {
        path: p.display().to_string(),
        source,
    }
}

fn run(what: &str, cmd: &mut Command) -> Result<String, VmError> {
    let out = cmd.output().map_err(|e| VmError::Tool {
        what: what.into(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(VmError::Tool {
            what: what.into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VmError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn find_file(root: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy() == name {
                return Some(p);
            }
        }
    }
    None
}

/// Prepares (or finds) the guest kernel and initramfs in `dir`.
pub fn prepare(dir: &Path) -> Result<Assets, VmError> {
    if let Some(a) = Assets::find(dir) {
        return Ok(a);
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(io(&debs))?;
    let deps = run(
        "apt-cache depends linux-image-amd64",
        Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
    )?;
    let kpkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .ok_or_else(|| VmError::Tool {
            what: "finding the kernel package".into(),
            detail: deps.clone(),
        })?
        .to_string();
    run(
        "apt-get download",
        Command::new("apt-get")
            .current_dir(&debs)
            .args(["download", &kpkg, "busybox-static"]),
    )?;
    let x = dir.join("x");
    for e in std::fs::read_dir(&debs).map_err(io(&debs))?.flatten() {
        if e.path().extension().is_some_and(|x| x == "deb") {
            run(
                "dpkg-deb -x",
                Command::new("dpkg-deb").arg("-x").arg(e.path()).arg(&x),
            )?;
        }
    }
    // Kernel: the XZ payload of vmlinuz.
    let vmlinuz = std::fs::read_dir(x.join("boot"))
        .map_err(io(&x))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
        })
        .ok_or_else(|| VmError::Tool {
            what: "kernel".into(),
            detail: "no vmlinuz in the package".into(),
        })?;
    let z = std::fs::read(&vmlinuz).map_err(io(&vmlinuz))?;
    let at = z
        .windows(6)
        .position(|w| w == b"\xfd7zXZ\0")
        .ok_or_else(|| VmError::Tool {
            what: "kernel".into(),
            detail: "no XZ payload in vmlinuz".into(),
        })?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| VmError::Tool {
            what: "xz".into(),
            detail: e.to_string(),
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let payload = z[at..].to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let out = child.wait_with_output().map_err(|e| VmError::Tool {
        what: "xz".into(),
        detail: e.to_string(),
    })?;
    let _ = feeder.join();
    if !out.stdout.starts_with(b"\x7fELF") {
        return Err(VmError::Tool {
            what: "kernel".into(),
            detail: "decompressed payload is not an ELF".into(),
        });
    }
    // Initramfs.
    let busybox = x.join("bin/busybox");
    let bb = std::fs::read(&busybox).map_err(io(&busybox))?;
    let mut members = vec![
        Member::Dir("bin".into(), 0o755),
        Member::Dir("dev".into(), 0o755),
        Member::Dir("lib".into(), 0o755),
        Member::Dir("lib/modules".into(), 0o755),
        Member::Dir("lode".into(), 0o755),
        Member::CharDev("dev/console".into(), 0o600, 5, 1),
        Member::File("bin/busybox".into(), 0o755, bb),
        Member::Symlink("bin/sh".into(), "busybox".into()),
        Member::File("init".into(), 0o755, INIT.as_bytes().to_vec()),
    ];
    let modroot = x.join("lib/modules");
    for m in MODULES {
        if let Some(p) = find_file(&modroot, &format!("{m}.ko")) {
            members.push(Member::File(
                format!("lib/modules/{m}.ko"),
                0o644,
                std::fs::read(&p).map_err(io(&p))?,
            ));
        }
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&archive(&members)).map_err(io(dir))?;
    let initrd = gz.finish().map_err(io(dir))?;
    write_atomic(&dir.join("vmlinux"), &out.stdout)?;
    write_atomic(&dir.join("initrd.v5.cpio.gz"), &initrd)?;
    let _ = std::fs::remove_dir_all(&x);
    Assets::find(dir).ok_or_else(|| VmError::Tool {
        what: "prepare".into(),
        detail: "outputs missing".into(),
    })
}
