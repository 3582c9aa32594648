//! `lode vm prepare`: a guest kernel and initramfs from Debian's packages.
//!
//! Steps (idempotent; each output is written to a temp name of its own and
//! renamed, so a prepared file is never rewritten in place; concurrent
//! preparers of one directory take turns on an exclusive lock, `.lock`, and
//! the later ones find the work done):
//! 1. `apt-get download` the kernel image package (the one `linux-image-amd64`
//!    depends on today, or the release pinned with `--kernel-version`) and
//!    `busybox-static`, unless `debs/` already holds them;
//! 2. `dpkg-deb -x` both;
//! 3. decompress the XZ payload of `vmlinuz` into an ELF `vmlinux` (QEMU boots
//!    it directly, ~3.5 s faster under TCG than the compressed kernel);
//! 4. build `initrd.cpio.gz`: busybox, the virtio/ext4 modules in load order,
//!    `/dev/console`, and `/init` ([`crate::guest`]);
//! 5. write `assets.json` last: which packages (name, version, SHA-256 of the
//!    `.deb`) made the files, and the SHA-256 of each file. A directory
//!    without it, or with an older `/init` revision, is not prepared.
//!
//! A kernel package that `apt` serves changes under a user (a new ABI, other
//! module sizes): the record says exactly what a VM boots, and a pinned
//! release makes it reproducible.

use crate::cpio::{archive, Member};
use crate::guest::{init_script, INIT_REVISION, MODULES, NET_MODULES};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The record of a prepared directory.
pub const RECORD: &str = "assets.json";
/// The uncompressed kernel in a prepared directory.
pub const KERNEL: &str = "vmlinux";
/// The base initramfs in a prepared directory.
pub const INITRD: &str = "initrd.cpio.gz";

/// Why preparing (or checking) the guest files failed.
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
    /// A run initramfs that would overwrite the guest's ACPI tables.
    #[error("initramfs {path}: {len} bytes is not a multiple of 4096 (it would overlap the microvm's ACPI tables; build it with lode_vm::run_initrd)")]
    Layout {
        /// File.
        path: String,
        /// Its size.
        len: u64,
    },
    /// The record of a prepared directory is unreadable.
    #[error("{path}: {source}")]
    Record {
        /// File.
        path: String,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A prepared file is not what its record says.
    #[error("{path}: SHA-256 {got}, but {RECORD} says {expected}; run `lode vm prepare --force`")]
    Digest {
        /// File.
        path: String,
        /// Recorded digest.
        expected: String,
        /// Digest of the file.
        got: String,
    },
    /// A kernel release that is not well formed or that apt does not know.
    #[error("kernel version {asked:?}: {why}")]
    KernelVersion {
        /// What was asked for.
        asked: String,
        /// What is wrong, with the releases apt offers.
        why: String,
    },
}

/// One Debian package a prepared directory was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Package name (`linux-image-6.1.0-57-amd64`).
    pub name: String,
    /// Package version (`6.1.192-3`).
    pub version: String,
    /// SHA-256 (hex) of the `.deb`.
    pub sha256: String,
}

/// What a prepared directory holds and what it was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The kernel image package.
    pub kernel: Package,
    /// The busybox package.
    pub busybox: Package,
    /// SHA-256 (hex) of `vmlinux`.
    pub vmlinux_sha256: String,
    /// SHA-256 (hex) of `initrd.cpio.gz`.
    pub initrd_sha256: String,
    /// [`INIT_REVISION`] of the `/init` inside.
    pub init_revision: u32,
}

impl Record {
    /// The kernel release (`6.1.0-57-amd64`, as `uname -r` prints it).
    pub fn kernel_release(&self) -> &str {
        self.kernel
            .name
            .strip_prefix("linux-image-")
            .unwrap_or(&self.kernel.name)
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel package {} {} (deb sha256 {})\nbusybox package {} {} (deb sha256 {})\nvmlinux sha256 {}\ninitrd sha256 {} (/init revision {})",
            self.kernel.name,
            self.kernel.version,
            self.kernel.sha256,
            self.busybox.name,
            self.busybox.version,
            self.busybox.sha256,
            self.vmlinux_sha256,
            self.initrd_sha256,
            self.init_revision
        )
    }
}

/// Prepared guest files.
#[derive(Clone, Debug)]
pub struct Assets {
    /// Uncompressed kernel (ELF).
    pub kernel: PathBuf,
    /// Base initramfs (gzip-compressed newc cpio).
    pub initrd: PathBuf,
    /// What they were made from.
    pub record: Record,
}

impl Assets {
    /// The assets in `dir`, if prepared with the current `/init`.
    pub fn find(dir: &Path) -> Option<Assets> {
        let record: Record = serde_json::from_slice(&std::fs::read(dir.join(RECORD)).ok()?).ok()?;
        let a = Assets {
            kernel: dir.join(KERNEL),
            initrd: dir.join(INITRD),
            record,
        };
        (a.record.init_revision == INIT_REVISION && a.kernel.is_file() && a.initrd.is_file())
            .then_some(a)
    }

    /// Checks both files against the digests in the record.
    pub fn verify(&self) -> Result<(), VmError> {
        for (path, expected) in [
            (&self.kernel, &self.record.vmlinux_sha256),
            (&self.initrd, &self.record.initrd_sha256),
        ] {
            let got = sha256_file(path)?;
            if &got != expected {
                return Err(VmError::Digest {
                    path: path.display().to_string(),
                    expected: expected.clone(),
                    got,
                });
            }
        }
        Ok(())
    }
}

/// How to prepare.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Kernel release to use (`6.1.0-57`, `6.1.0-57-amd64` or
    /// `linux-image-6.1.0-57-amd64`); default: the one `linux-image-amd64`
    /// depends on today.
    pub kernel_release: Option<String>,
    /// Prepare again from freshly downloaded packages, even if prepared.
    pub force: bool,
}

/// The kernel image package for a release as `--kernel-version` takes it.
pub fn kernel_package(release: &str) -> Result<String, VmError> {
    let bad = |why: &str| VmError::KernelVersion {
        asked: release.to_string(),
        why: why.to_string(),
    };
    let r = release.trim();
    let r = r.strip_prefix("linux-image-").unwrap_or(r);
    let r = r.strip_suffix("-amd64").unwrap_or(r);
    if r.is_empty()
        || !r.starts_with(|c: char| c.is_ascii_digit())
        || !r
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '~'))
    {
        return Err(bad(
            "expected a kernel release such as 6.1.0-57 (as in `uname -r`, without -amd64)",
        ));
    }
    Ok(format!("linux-image-{r}-amd64"))
}

/// The kernel image package `linux-image-amd64` depends on in apt's lists now.
pub fn default_kernel_package() -> Result<String, VmError> {
    let deps = run(
        "apt-cache depends linux-image-amd64",
        Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
    )?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_string)
        .ok_or_else(|| VmError::Tool {
            what: "finding the kernel package".into(),
            detail: format!(
                "linux-image-amd64 names no kernel image package in apt's lists (run `apt-get update`, as scripts/vm-deps.sh does): {}",
                deps.trim()
            ),
        })
}

/// The versioned kernel image packages apt knows (`linux-image-X-amd64`).
fn known_kernels() -> Vec<String> {
    let out = run(
        "apt-cache pkgnames linux-image-",
        Command::new("apt-cache").args(["pkgnames", "linux-image-"]),
    )
    .unwrap_or_default();
    let mut k: Vec<String> = out
        .lines()
        .filter(|p| {
            p.ends_with("-amd64")
                && p["linux-image-".len().min(p.len())..].starts_with(|c: char| c.is_ascii_digit())
                && !p.contains("-dbg")
                && !p.contains("-unsigned")
        })
        .map(str::to_string)
        .collect();
    k.sort();
    k
}

fn sha256_file(path: &Path) -> Result<String, VmError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(hex::encode(h.finalize()))
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Name, version and digest of the `.deb` at `deb`.
fn package_of(deb: &Path) -> Result<Package, VmError> {
    let fields = run(
        "dpkg-deb -f",
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(deb)
            .args(["Package", "Version"]),
    )?;
    let field = |name: &str| {
        fields
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| VmError::Tool {
                what: format!("dpkg-deb -f {}", deb.display()),
                detail: format!("no {name} field in: {fields}"),
            })
    };
    Ok(Package {
        name: field("Package")?,
        version: field("Version")?,
        sha256: sha256_file(deb)?,
    })
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
pub(crate) fn tied_to_us(cmd: &mut Command) -> &mut Command {
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

/// Prepares (or finds) the guest kernel and initramfs in `dir`, with the
/// kernel `linux-image-amd64` depends on.
pub fn prepare(dir: &Path) -> Result<Assets, VmError> {
    prepare_with(dir, &Options::default())
}

/// Prepares (or finds) the guest kernel and initramfs in `dir`.
pub fn prepare_with(dir: &Path, opts: &Options) -> Result<Assets, VmError> {
    let wanted = opts
        .kernel_release
        .as_deref()
        .map(kernel_package)
        .transpose()?;
    let usable = |a: &Assets| wanted.as_ref().is_none_or(|w| &a.record.kernel.name == w);
    if !opts.force {
        if let Some(a) = Assets::find(dir).filter(usable) {
            return Ok(a);
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // One preparer at a time; whoever waited finds the work done.
    let lock_path = dir.join(".lock");
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if !opts.force {
        if let Some(a) = Assets::find(dir).filter(usable) {
            return Ok(a);
        }
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
    if opts.force && debs.exists() {
        std::fs::remove_dir_all(&debs).map_err(io(&debs))?;
    }
    std::fs::create_dir_all(&debs).map_err(io(&debs))?;
    let kpkg = match wanted {
        Some(k) => k,
        None => default_kernel_package()?,
    };
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
        )
        .map_err(|e| match e {
            VmError::Tool { detail, .. } if detail.contains(&kpkg) => VmError::KernelVersion {
                asked: kpkg.clone(),
                why: format!(
                    "apt cannot download it ({detail}); apt knows: {} (old package lists name packages the mirror no longer has: `apt-get update`)",
                    known_kernels().join(", ")
                ),
            },
            e => e,
        })?;
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
    let mut packages = Vec::new();
    for p in wanted {
        let deb = cached_deb(&debs, p).ok_or_else(|| VmError::Tool {
            what: "apt-get download".into(),
            detail: format!("no {p}_*.deb in {}", debs.display()),
        })?;
        packages.push(package_of(&deb)?);
        run(
            "dpkg-deb -x",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
        )?;
    }
    let vmlinux = kernel_elf(&x)?;
    let initrd = base_initrd(&x, dir)?;
    let busybox = packages.pop().expect("two packages");
    let kernel = packages.pop().expect("two packages");
    let record = Record {
        kernel,
        busybox,
        vmlinux_sha256: sha256(&vmlinux),
        initrd_sha256: sha256(&initrd),
        init_revision: INIT_REVISION,
    };
    // The record goes last: it marks the directory prepared.
    write_atomic(&dir.join(KERNEL), &vmlinux)?;
    write_atomic(&dir.join(INITRD), &initrd)?;
    let json = serde_json::to_vec_pretty(&record).map_err(|source| VmError::Record {
        path: dir.join(RECORD).display().to_string(),
        source,
    })?;
    write_atomic(&dir.join(RECORD), &json)?;
    drop(xdir);
    Assets::find(dir).ok_or_else(|| VmError::Tool {
        what: "prepare".into(),
        detail: "outputs missing".into(),
    })
}

/// The kernel as an ELF: the XZ payload of the package's `vmlinuz`.
fn kernel_elf(x: &Path) -> Result<Vec<u8>, VmError> {
    let vmlinuz = std::fs::read_dir(x.join("boot"))
        .map_err(io(x))?
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
    Ok(out.stdout)
}

/// The base initramfs (gzip): busybox, the modules, `/dev/console`, `/init`.
fn base_initrd(x: &Path, dir: &Path) -> Result<Vec<u8>, VmError> {
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
        Member::File("init".into(), 0o755, init_script().into_bytes()),
    ];
    let modroot = x.join("lib/modules");
    for m in MODULES.iter().chain(NET_MODULES) {
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
    gz.finish().map_err(io(dir))
}
