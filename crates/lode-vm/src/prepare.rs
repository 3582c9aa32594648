//! `lode vm prepare`: a guest kernel and initramfs from Debian's packages.
//!
//! Steps (idempotent; each output is written to a temp name of its own and
//! renamed, so a prepared file is never rewritten in place; concurrent
//! preparers of one directory take turns on an exclusive lock, `.lock`, and
//! the later ones find the work done):
//! 1. `apt-get download` the kernel image package that `linux-image-amd64`
//!    depends on, and `busybox-static`, unless `debs/` already holds them;
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

/// Makes `cmd`'s process die with the thread that starts it: a killed
/// preparer must not leave `dpkg-deb` or `xz` writing into a directory the
/// next preparer cleans.
#[allow(unsafe_code)]
fn tied_to_us(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure calls only prctl and
    // getppid, both async-signal-safe, and allocates nothing.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

fn run(what: &str, cmd: &mut Command) -> Result<String, VmError> {
    let out = tied_to_us(cmd).output().map_err(|e| VmError::Tool {
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

/// Writes `bytes` to a fresh temp file beside `path`, syncs it and renames it
/// over `path`: readers see the old file or the whole new one, never a part.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VmError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".prepare-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| VmError::Io {
        path: path.display().to_string(),
        source: e.error,
    })?;
    Ok(())
}

/// A `.deb` in `debs` for package `pkg` (named `PKG_VERSION_ARCH.deb`).
fn cached_deb(debs: &Path, pkg: &str) -> Option<PathBuf> {
    let prefix = format!("{pkg}_");
    std::fs::read_dir(debs).ok()?.flatten().find_map(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        (n.starts_with(&prefix) && n.ends_with(".deb")).then(|| e.path())
    })
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
    // One preparer at a time; whoever waited finds the work done.
    let lock_path = dir.join(".lock");
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if let Some(a) = Assets::find(dir) {
        return Ok(a);
    }
    // Holding the lock, any temp entry is a killed preparer's: remove it.
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if [".prepare-", ".extract-", ".download-"]
            .iter()
            .any(|p| n.starts_with(p))
        {
            let p = e.path();
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            gone.map_err(io(&p))?;
        }
    }
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
    let wanted = [kpkg.as_str(), "busybox-static"];
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| cached_deb(&debs, p).is_none())
        .collect();
    if !missing.is_empty() {
        // Download beside `debs/` and move in only what apt verified, so an
        // interrupted download never poses as a cached package.
        let dl = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(dir)
            .map_err(io(dir))?;
        run(
            "apt-get download",
            Command::new("apt-get")
                .current_dir(dl.path())
                .arg("download")
                .args(&missing),
        )?;
        for e in std::fs::read_dir(dl.path())
            .map_err(io(dl.path()))?
            .flatten()
        {
            let to = debs.join(e.file_name());
            std::fs::rename(e.path(), &to).map_err(io(&to))?;
        }
    }
    // Extracted packages live in a temp dir removed on every exit path.
    let xdir = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(dir)
        .map_err(io(dir))?;
    let x = xdir.path().to_path_buf();
    for p in wanted {
        let deb = cached_deb(&debs, p).ok_or_else(|| VmError::Tool {
            what: "apt-get download".into(),
            detail: format!("no {p}_*.deb in {}", debs.display()),
        })?;
        run(
            "dpkg-deb -x",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
        )?;
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
    let mut child = tied_to_us(&mut Command::new("xz"))
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
    drop(xdir);
    Assets::find(dir).ok_or_else(|| VmError::Tool {
        what: "prepare".into(),
        detail: "outputs missing".into(),
    })
}
