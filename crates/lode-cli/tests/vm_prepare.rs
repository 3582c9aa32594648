//! `lode vm prepare` run by several processes at once on a fresh directory,
//! and after a preparer was killed mid-run: every preparer succeeds, the
//! kernel and initramfs are never seen half-written, and no temp entries are
//! left. (Three tests preparing the same directory at once once handed QEMU
//! a kernel that a second preparer was rewriting in place.) Needs apt-get,
//! dpkg-deb and xz, which scripts/test.sh installs.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OUTPUTS: [&str; 3] = ["vmlinux", "initrd.cpio.gz", "assets.json"];

fn prepare(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lode"));
    c.args(["vm", "prepare", "--dir"]).arg(dir);
    c
}

/// The directory vm_e2e shares across runs; prepared once, its downloaded
/// packages seed the fresh directories below so they need no download.
fn shared() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lode-vm");
    let out = prepare(&d).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn fresh(shared: &Path) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("debs")).unwrap();
    if let Ok(rd) = std::fs::read_dir(shared.join("debs")) {
        for e in rd.flatten() {
            std::fs::copy(e.path(), t.path().join("debs").join(e.file_name())).unwrap();
        }
    }
    t
}

fn temp_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(".prepare-") || n.starts_with(".extract-") || n.starts_with(".download-")
        })
        .collect()
}

#[test]
fn concurrent_preparers_never_expose_a_partial_kernel() {
    let shared = shared();
    let t = fresh(&shared);
    let dir = t.path().to_path_buf();

    // Watch the outputs while three preparers race: every length seen must
    // be the final one.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, dir) = (stop.clone(), dir.clone());
        std::thread::spawn(move || {
            let mut seen: Vec<(usize, u64)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (i, f) in OUTPUTS.iter().enumerate() {
                    if let Ok(m) = std::fs::metadata(dir.join(f)) {
                        if seen.last() != Some(&(i, m.len())) {
                            seen.push((i, m.len()));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        })
    };
    let kids: Vec<_> = (0..3)
        .map(|_| {
            prepare(&dir)
                .stderr(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a concurrent preparer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Keep watching a little after the last preparer is done.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();

    for (i, f) in OUTPUTS.iter().enumerate() {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        assert_eq!(
            bytes,
            std::fs::read(shared.join(f)).unwrap(),
            "{f} differs from the one prepared alone"
        );
        for &(j, len) in &seen {
            assert!(
                j != i || len == bytes.len() as u64,
                "{f} was seen with {len} bytes, then ended with {}",
                bytes.len()
            );
        }
    }
    assert!(std::fs::read(dir.join("vmlinux"))
        .unwrap()
        .starts_with(b"\x7fELF"));
    assert_eq!(
        temp_entries(&dir),
        Vec::<String>::new(),
        "temp entries left"
    );
}

#[test]
fn a_preparer_killed_mid_run_leaves_nothing_the_next_one_trips_on() {
    let shared = shared();
    let t = fresh(&shared);
    let dir = t.path();
    let mut victim = prepare(dir)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it is extracting packages (its temp dir exists).
    let t0 = Instant::now();
    while temp_entries(dir).is_empty() {
        assert!(
            victim.try_wait().unwrap().is_none(),
            "the preparer finished before it could be killed"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no temp dir appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert!(
        OUTPUTS.iter().all(|f| !dir.join(f).exists()),
        "a killed preparer left an output"
    );
    assert!(
        !temp_entries(dir).is_empty(),
        "the kill came too late to test anything"
    );

    let out = prepare(dir).output().unwrap();
    assert!(
        out.status.success(),
        "prepare after a kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in OUTPUTS {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(shared.join(f)).unwrap(),
            "{f} differs after a killed run"
        );
    }
    assert_eq!(
        temp_entries(dir),
        Vec::<String>::new(),
        "stale temp entries kept"
    );
}

/// Prepared from nothing (no cached `.deb`), as on a new user's machine:
/// `lode vm prepare` prints and records exactly which packages it used, with
/// the digests of the `.deb`s and of the files it made; `lode run` checks
/// those digests before it boots.
#[test]
fn prepare_from_scratch_records_and_prints_what_it_used() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("vm");
    let out = prepare(&dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("assets.json")).unwrap()).unwrap();
    let kernel = record["kernel"]["name"].as_str().unwrap();
    let version = record["kernel"]["version"].as_str().unwrap();
    assert!(kernel.starts_with("linux-image-") && kernel.ends_with("-amd64"));
    // What apt resolves today is what was used.
    let deps = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&deps.stdout).contains(&format!("Depends: {kernel}")),
        "recorded {kernel}"
    );
    assert!(
        stdout.contains(&format!("kernel package {kernel} {version} (deb sha256 ")),
        "{stdout}"
    );
    // The recorded digests are the files' and the downloaded package's.
    let sha = |p: &Path| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
    };
    assert_eq!(record["vmlinux_sha256"], sha(&dir.join("vmlinux")));
    assert_eq!(record["initrd_sha256"], sha(&dir.join("initrd.cpio.gz")));
    let deb = std::fs::read_dir(dir.join("debs"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(kernel))
        .unwrap()
        .path();
    assert_eq!(record["kernel"]["sha256"], sha(&deb));
    assert!(stdout.contains(record["vmlinux_sha256"].as_str().unwrap()));

    // A damaged kernel is caught before QEMU sees it.
    let mut k = std::fs::read(dir.join("vmlinux")).unwrap();
    k[1000] ^= 1;
    std::fs::write(dir.join("vmlinux"), &k).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_lode"))
        .env("LODE_HOME", t.path().join("home"))
        .args(["run", "img", "--tenant", "t", "--vm-dir"])
        .arg(&dir)
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && err.contains("vmlinux") && err.contains("SHA-256"),
        "{err}"
    );
    // So is it by `lode vm prepare`, which says how to mend it.
    let again = prepare(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("--force"), "{err}");
    let forced = prepare(&dir).arg("--force").output().unwrap();
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_eq!(record["vmlinux_sha256"], sha(&dir.join("vmlinux")));
}

/// `--kernel-version` pins the kernel release; a release apt does not have
/// or a malformed one is a clear error that leaves a prepared directory as
/// it was.
#[test]
fn kernel_version_pins_the_release() {
    let shared = shared();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shared.join("assets.json")).unwrap()).unwrap();
    let kernel = record["kernel"]["name"].as_str().unwrap().to_string();
    let release = kernel
        .strip_prefix("linux-image-")
        .unwrap()
        .strip_suffix("-amd64")
        .unwrap()
        .to_string();
    let t = fresh(&shared);
    for asked in [release.clone(), format!("{release}-amd64"), kernel.clone()] {
        let out = prepare(t.path())
            .args(["--kernel-version", &asked])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{asked}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&kernel));
    }
    let before = std::fs::read(t.path().join("assets.json")).unwrap();

    let out = prepare(t.path())
        .args(["--kernel-version", "6.1.0-9999"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("linux-image-6.1.0-9999-amd64") && err.contains(&kernel),
        "the error names the release asked for and those apt has: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for bad in ["../../x", "-rf", "", "6.1 0"] {
        let out = prepare(t.path())
            .arg(format!("--kernel-version={bad}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("kernel version"),
            "{bad:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(t.path().join("assets.json")).unwrap(),
        before,
        "a failed pin changed the prepared directory"
    );
    assert_eq!(temp_entries(t.path()), Vec::<String>::new());
}
