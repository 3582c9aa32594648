//! End to end: a real QEMU micro-VM boots on an image served lazily by lode
//! (through a 5-node cache fleet) and runs a program from the image, once
//! with the disk over NBD and once over vhost-user-blk, the same scenarios
//! for both, and `lode agent --vhost-user` serving QEMU processes started on
//! their own. Needs qemu-system-x86_64, busybox-static and xz (scripts/test.sh
//! installs them through scripts/vm-deps.sh); fails, not skips, when they are
//! missing.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_vm;

use common_vm::{vm_dir, write_image};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One VM at a time: the machines have 2 cores and TCG is CPU-bound.
static VM: Mutex<()> = Mutex::new(());

fn lode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lode"))
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

/// Paths and the fleet of one scenario run.
struct Setup {
    t: tempfile::TempDir,
    home: PathBuf,
    store: PathBuf,
    fleet: String,
    _nodes: Nodes,
    /// SHA-256 (hex) of the image as `lode pull` rebuilds it.
    image_sha: String,
}

fn setup() -> Setup {
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
    let pulled = t.path().join("pulled.ext4");
    let pull = lode()
        .env("LODE_HOME", &home)
        .args(["pull", "img", "--tenant", "t", "--store"])
        .arg(&store)
        .arg("-o")
        .arg(&pulled)
        .output()
        .unwrap();
    assert!(
        pull.status.success(),
        "pull: {}",
        String::from_utf8_lossy(&pull.stderr)
    );
    let image_sha = hex::encode(Sha256::digest(std::fs::read(&pulled).unwrap()));
    let (nodes, fleet) = start_fleet(5);
    Setup {
        t,
        home,
        store,
        fleet,
        _nodes: nodes,
        image_sha,
    }
}

impl Setup {
    /// `lode run --via VIA` with the host cache `cache`; (success, stdout, stderr).
    fn run_vm(&self, via: &str, cache: &str, rw: bool, script: &str) -> (bool, String, String) {
        self.run_vm_with(via, cache, rw, script, &[])
    }

    /// [`Self::run_vm`] with more `lode run` options.
    fn run_vm_with(
        &self,
        via: &str,
        cache: &str,
        rw: bool,
        script: &str,
        opts: &[&str],
    ) -> (bool, String, String) {
        let _one = VM.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = lode();
        c.env("LODE_HOME", &self.home)
            .args(["run", "img", "--tenant", "t", "--via", via, "--store"])
            .arg(&self.store);
        c.arg("--cache-dir")
            .arg(self.t.path().join(format!("{via}-{cache}")))
            .args(["--cache-nodes", &self.fleet])
            .arg("--vm-dir")
            .arg(vm_dir());
        if rw {
            c.arg("--rw");
        }
        c.args(opts);
        c.args(["--timeout", "240", "--", "/bin/sh", "-c", script]);
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Chunks fetched from `tier` per the timings line (`chunks by tier: memory
/// N, local disk N, fleet N, store N`).
fn fetched(err: &str, tier: &str) -> u64 {
    let tiers = err
        .split("chunks by tier: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no tier counts in: {err}"));
    tiers
        .lines()
        .next()
        .unwrap_or_default()
        .split(", ")
        .find_map(|t| t.strip_prefix(tier)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count for tier {tier} in: {err}"))
}

/// The scenarios every way of attaching the disk must pass.
fn scenarios(via: &str) {
    let s = setup();

    // 1. Read-only boot through the fleet (cold: fills it from the store).
    let (ok, out, err) = s.run_vm(
        via,
        "c1",
        false,
        "cat /etc/msg; echo ro=$(cat /sys/block/vda/ro)",
    );
    assert!(ok, "{via}: run failed:\nstdout {out}\nstderr {err}");
    assert!(
        out.contains("hello from the image"),
        "{via}: stdout: {out}\nstderr: {err}"
    );
    assert!(out.contains("ro=1"), "{via}: disk not read-only: {out}");
    assert!(
        err.contains("lode run: agent ready")
            && err.contains("first byte read")
            && err.contains("CMD exited")
            && err.contains("chunks by tier: memory"),
        "{via}: timings line missing: {err}"
    );
    assert!(
        fetched(&err, "store") > 0 && fetched(&err, "memory") > 0,
        "{via}: a cold run must fetch from the store, then hit memory: {err}"
    );

    // 2. A second VM with an empty host cache reads through the warm fleet.
    std::thread::sleep(Duration::from_secs(1));
    let (ok, out, err) = s.run_vm(via, "c2", false, "cat /etc/msg");
    assert!(
        ok && out.contains("hello from the image"),
        "{via}: stdout {out}\nstderr {err}"
    );
    assert!(
        fetched(&err, "fleet") > 0,
        "{via}: expected chunks from the fleet: {err}"
    );

    // 3. Every byte of the disk, read by the guest past its page cache
    //    (O_DIRECT, 1 MiB requests), equals the image `lode pull` rebuilds.
    let (ok, out, err) = s.run_vm(
        via,
        "c2",
        false,
        "busybox dd if=/dev/vda bs=1M iflag=direct 2>/dev/null | busybox sha256sum",
    );
    assert!(ok, "{via}: stdout {out}\nstderr {err}");
    assert!(
        out.contains(&s.image_sha),
        "{via}: the guest read other bytes than the image ({}):\n{out}",
        s.image_sha
    );

    // 4. The guest writes (a small file and 3 MiB of random bytes), drops its
    //    page cache, and reads its changes back from the disk...
    let script = "set -e
echo changed > /etc/msg
busybox dd if=/dev/urandom of=/root/big bs=65536 count=48 2>/dev/null
A=$(busybox sha256sum /root/big)
sync
echo 3 > /proc/sys/vm/drop_caches
B=$(busybox sha256sum /root/big)
[ \"$A\" = \"$B\" ] && echo readback-ok
echo ro=$(cat /sys/block/vda/ro)
cat /etc/msg";
    let (ok, out, err) = s.run_vm(via, "c3", true, script);
    assert!(
        ok && out.contains("changed") && out.contains("readback-ok") && out.contains("ro=0"),
        "{via}: stdout {out}\nstderr {err}"
    );
    // ...and the next VM still sees the original bytes.
    let (ok, out, err) = s.run_vm(via, "c3", false, "cat /etc/msg; ls /root");
    assert!(
        ok && out.contains("hello from the image") && !out.contains("changed"),
        "{via}: stdout {out}\nstderr {err}"
    );
    assert!(
        !out.contains("big"),
        "{via}: another VM's file is visible: {out}"
    );

    // 5. The command's exit status is the run's.
    let (ok, _, _) = s.run_vm(via, "c4", false, "exit 3");
    assert!(!ok, "{via}: exit 3 reported as success");
    let _ = std::io::stdout().flush();
}

#[test]
fn micro_vm_over_nbd_boots_lazily_and_writes_stay_private() {
    scenarios("nbd");
}

/// vhost-user-blk: the same scenarios, plus what only this device has: the
/// serial number (GET_ID) and discard (fstrim on the read-write mount).
#[test]
fn micro_vm_over_vhost_user_boots_lazily_and_writes_stay_private() {
    scenarios("vhost-user");
    let s = setup();
    let (ok, out, err) = s.run_vm(
        "vhost-user",
        "c5",
        true,
        "echo serial=$(cat /sys/block/vda/serial); busybox fstrim -v / && echo trim-ok",
    );
    assert!(
        ok && out.contains("serial=t/img") && out.contains("trim-ok"),
        "stdout {out}\nstderr {err}"
    );
}

/// The microvm firmware keeps its ACPI tables in the last page of guest RAM
/// and QEMU loads the initrd so that it ends in that page; an initrd that
/// overlapped the tables left the guest without its virtio disk, depending on
/// the initrd's size modulo 4096 (issue 10). Boots over a range of guest
/// memory sizes (below and above the 3 GiB low-memory split) and of
/// initramfs sizes whose unpadded ends fall all over the last page.
#[test]
fn boots_at_any_memory_and_initramfs_size() {
    let s = setup();
    let base = std::fs::read(lode_vm::Assets::find(&vm_dir()).unwrap().initrd)
        .unwrap()
        .len();
    // A script whose run initramfs, before padding, ends `r` bytes into a
    // page (`r` a multiple of 4: the archives are 4-byte aligned).
    let script_for = |r: usize| -> String {
        let script = |n: usize| format!(": {}; cat /etc/msg", "x".repeat(n));
        let len = |n: usize| {
            let cmd = ["/bin/sh".to_string(), "-c".into(), script(n)];
            base.next_multiple_of(4) + lode_vm::command_cpio(&cmd, false).len()
        };
        let n = (0..8192).find(|&n| len(n) % 4096 == r).unwrap();
        script(n)
    };
    let mut cases: Vec<(&str, u32, usize)> = [4, 700, 1500, 2500, 3300, 4000, 4092]
        .iter()
        .map(|&r| ("nbd", 256, r))
        .collect();
    cases.extend([
        ("nbd", 128, 3900),
        ("nbd", 200, 4092),
        ("nbd", 1024, 3600),
        ("nbd", 3200, 4000),
        ("vhost-user", 384, 4048),
    ]);
    for (via, mem, r) in cases {
        let mem_s = mem.to_string();
        let (ok, out, err) = s.run_vm_with(
            via,
            "sizes",
            false,
            &script_for(r),
            &[
                "--memory",
                &mem_s,
                "--stall-timeout",
                "60",
                "--boot-timeout",
                "120",
            ],
        );
        assert!(
            ok && out.contains("hello from the image"),
            "{via}, {mem} MiB, initramfs end {r} bytes into a page:\nstdout {out}\nstderr {err}"
        );
    }
}

/// Boots one VM with QEMU on the vhost-user-blk socket `sock`, running
/// `script` (read-write mount when `rw`); returns the console output.
fn boot_on_socket(work: &Path, sock: &Path, rw: bool, script: &str) -> String {
    let _one = VM.lock().unwrap_or_else(|p| p.into_inner());
    let assets = lode_vm::Assets::find(&vm_dir()).expect("vm prepare ran");
    let base = std::fs::read(&assets.initrd).unwrap();
    let cmd = ["/bin/sh".to_string(), "-c".into(), script.into()];
    let initrd_path = work.join("initrd");
    std::fs::write(&initrd_path, lode_vm::run_initrd(&base, &cmd, rw)).unwrap();
    let spec = lode_vm::RunSpec::new(
        assets.kernel,
        initrd_path,
        lode_vm::Disk::VhostUser {
            socket: sock.to_path_buf(),
        },
    );
    let mut child = spec
        .command()
        .unwrap()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `lode agent --vhost-user` (not `lode run`): QEMU processes started on
/// their own attach one after the other to the same socket; each VM gets a
/// fresh private overlay, removed when it powers off; the agent stays up.
#[test]
fn lode_agent_vhost_user_serves_vms_one_after_another() {
    let s = setup();
    let sock = s.t.path().join("vu.sock");
    let overlays = s.t.path().join("overlays");
    let agent = lode()
        .env("LODE_HOME", &s.home)
        .arg("agent")
        .arg("--vhost-user")
        .arg(format!("{}=t/img", sock.display()))
        .arg("--store")
        .arg(&s.store)
        .arg("--cache-dir")
        .arg(s.t.path().join("agent-cache"))
        .arg("--overlay-dir")
        .arg(&overlays)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed on drop, also when an assertion fails.
    let mut agent = Nodes(vec![agent]);
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "agent socket missing"
        );
        assert!(agent.0[0].try_wait().unwrap().is_none(), "agent exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let conn_overlays = || -> Vec<String> {
        std::fs::read_dir(&overlays)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("conn-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    for vm in 0..2 {
        let out = boot_on_socket(
            s.t.path(),
            &sock,
            true,
            "cat /etc/msg; echo changed > /etc/msg; sync; echo 3 > /proc/sys/vm/drop_caches; cat /etc/msg",
        );
        assert!(
            out.contains("hello from the image")
                && out.contains("changed")
                && out.contains("LODE-CMD-EXIT 0"),
            "VM {vm}: {out}"
        );
        assert!(
            agent.0[0].try_wait().unwrap().is_none(),
            "agent exited after VM {vm}"
        );
        let t = Instant::now();
        while !conn_overlays().is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "overlay of VM {vm} left: {:?}",
                conn_overlays()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
