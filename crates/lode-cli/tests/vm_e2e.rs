//! End to end: a real QEMU micro-VM boots on an image served lazily by lode
//! (NBD, through a 5-node cache fleet) and runs a program from the image.
//! Needs qemu-system-x86_64, busybox-static and xz (scripts/test.sh installs
//! them through scripts/vm-deps.sh); fails, not skips, when they are missing.

#![allow(clippy::unwrap_used, missing_docs)]

use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn lode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lode"))
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// An OCI layout with one layer: a static busybox as /bin/sh and friends, and /etc/msg.
fn write_image(dir: &Path) {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (busybox-static) is installed by scripts/test.sh");
    let mut b = tar::Builder::new(Vec::new());
    let dir_entry = |b: &mut tar::Builder<Vec<u8>>, p: &str| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, p, &[][..]).unwrap();
    };
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        dir_entry(&mut b, d);
    }
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    for tool in ["sh", "cat", "echo", "sync", "ls"] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_link(&mut h, format!("bin/{tool}"), "busybox")
            .unwrap();
    }
    let msg = b"hello from the image\n";
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(msg.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, "etc/msg", &msg[..]).unwrap();
    let layer = b.into_inner().unwrap();
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha(bytes);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
        d
    };
    let ld = put(&layer);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [ld]}, "config": {}});
    let config = serde_json::to_vec(&config).unwrap();
    let cd = put(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let md = put(&manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_fleet(n: usize) -> (Nodes, String) {
    let mut kids = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..n {
        let addr = format!("127.0.0.1:{}", free_port());
        kids.push(
            lode()
                .args(["cache-node", "--listen", &addr, "--memory", "256M"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        addrs.push(addr);
    }
    for a in &addrs {
        let t = Instant::now();
        while std::net::TcpStream::connect(a).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "cache node {a} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (Nodes(kids), addrs.join(","))
}

fn vm_dir() -> PathBuf {
    // Shared across runs: preparing downloads a kernel package.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lode-vm")
}

fn run_vm(
    home: &Path,
    store: &Path,
    cache: &Path,
    fleet: &str,
    rw: bool,
    script: &str,
) -> (bool, String, String) {
    let mut c = lode();
    c.env("LODE_HOME", home)
        .args(["run", "img", "--tenant", "t", "--store"])
        .arg(store);
    c.arg("--cache-dir")
        .arg(cache)
        .args(["--cache-nodes", fleet])
        .arg("--vm-dir")
        .arg(vm_dir());
    if rw {
        c.arg("--rw");
    }
    c.args(["--timeout", "240", "--", "/bin/sh", "-c", script]);
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn micro_vm_boots_on_a_lazily_served_image_and_writes_stay_private() {
    for tool in ["qemu-system-x86_64", "xz", "apt-get"] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .status()
                .unwrap()
                .success(),
            "{tool} is missing: run scripts/test.sh (it installs QEMU via scripts/vm-deps.sh)"
        );
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let store = t.path().join("store");
    write_image(&t.path().join("oci"));
    let prep = lode()
        .env("LODE_HOME", &home)
        .args(["vm", "prepare", "--dir"])
        .arg(vm_dir())
        .output()
        .unwrap();
    assert!(
        prep.status.success(),
        "vm prepare: {}",
        String::from_utf8_lossy(&prep.stderr)
    );
    let push = lode()
        .env("LODE_HOME", &home)
        .args([
            "push",
            &format!("oci:{}:latest", t.path().join("oci").display()),
            "--tenant",
            "t",
            "--name",
            "img",
            "--store",
        ])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "push: {}",
        String::from_utf8_lossy(&push.stderr)
    );
    let (_nodes, fleet) = start_fleet(5);

    // 1. Read-only boot through the fleet (cold: fills it from the store).
    let (ok, out, err) = run_vm(
        &home,
        &store,
        &t.path().join("c1"),
        &fleet,
        false,
        "cat /etc/msg",
    );
    assert!(ok, "run failed:\nstdout {out}\nstderr {err}");
    assert!(
        out.contains("hello from the image"),
        "stdout: {out}\nstderr: {err}"
    );
    assert!(
        err.contains("lode run: agent ready") && err.contains("CMD exited"),
        "timings line missing: {err}"
    );

    // 2. A second VM with an empty host cache reads through the warm fleet.
    std::thread::sleep(Duration::from_secs(1));
    let (ok, out, err) = run_vm(
        &home,
        &store,
        &t.path().join("c2"),
        &fleet,
        false,
        "cat /etc/msg",
    );
    assert!(
        ok && out.contains("hello from the image"),
        "stdout {out}\nstderr {err}"
    );
    assert!(
        !err.contains("fleet 0,"),
        "expected chunks from the fleet: {err}"
    );

    // 3. The guest writes and reads back its change...
    let (ok, out, err) = run_vm(
        &home,
        &store,
        &t.path().join("c3"),
        &fleet,
        true,
        "echo changed > /etc/msg && sync && cat /etc/msg",
    );
    assert!(ok && out.contains("changed"), "stdout {out}\nstderr {err}");
    // ...and the next VM still sees the original bytes.
    let (ok, out, err) = run_vm(
        &home,
        &store,
        &t.path().join("c3"),
        &fleet,
        false,
        "cat /etc/msg",
    );
    assert!(
        ok && out.contains("hello from the image") && !out.contains("changed"),
        "stdout {out}\nstderr {err}"
    );

    // 4. The command's exit status is the run's.
    let (ok, _, _) = run_vm(&home, &store, &t.path().join("c4"), &fleet, false, "exit 3");
    assert!(!ok);
    let _ = std::io::stdout().flush();
}
