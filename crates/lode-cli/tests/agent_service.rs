//! `lode agent` as a host service, through its control API and real clients:
//!
//! * bad control-API input gets a clear 4xx and changes nothing;
//! * volume sockets: mode 0600, owned by `--owner`; another uid cannot
//!   connect; another export name is refused; TCP needs a client certificate;
//! * qemu-io over NBD with `reconnect-delay` rides out three SIGKILLs and an
//!   upgrade of the agent with 0 errors, and every flushed write reads back;
//! * 64 attach/detach cycles while reads run leak no socket, descriptor,
//!   overlay or task;
//! * hostile clients (connections past the fd limit, large reads never read,
//!   handshakes never finished) do not take the agent down;
//! * SIGTERM and SIGINT remove every socket and keep the volume table; a
//!   restart during a store outage re-attaches from the cached manifest.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;

use common_agent::service::{list, Service};
use common_agent::*;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TENANT: &str = "acme";
const NAME: &str = "blk";
/// 24 full chunks and a 12 KiB partial one.
const SIZE: u64 = 12 * MIB + 12 * KIB;

fn setup() -> (Env, BlockImage) {
    require_tool("qemu-io", "qemu-utils");
    let env = Env::new();
    let img = BlockImage::create(&env.path("src.raw"), SIZE);
    env.push(&img.path, TENANT, NAME);
    (env, img)
}

fn image() -> String {
    format!("{TENANT}/{NAME}")
}

/// `nbd+unix:///EXPORT?socket=SOCK`.
fn uri(socket: &serde_json::Value, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", socket.as_str().unwrap())
}

fn post(json: &str) -> Vec<u8> {
    format!(
        "POST /v1/volumes HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
        json.len()
    )
    .into_bytes()
}

#[test]
fn control_api_rejects_bad_input_and_changes_nothing() {
    let (env, _img) = setup();
    let mut svc = Service::new(&env, "api");
    svc.start();
    let ok = svc.attach(&[&image(), "--rw", "--overlay", "keep"]);
    let before = (
        svc.volumes(),
        svc.state_files("sockets"),
        svc.state_files("volumes"),
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("unknown tenant", post(r#"{"tenant":"nobody","image":"blk"}"#), 404, "unknown image"),
        ("unknown image", post(r#"{"tenant":"acme","image":"nope"}"#), 404, "unknown image"),
        ("malformed JSON", post(r#"{"tenant":"acme","image":"#), 400, "malformed"),
        ("not JSON", post("hello"), 400, "malformed"),
        ("unknown field", post(r#"{"tenant":"acme","image":"blk","rootkit":true}"#), 400, "unknown field"),
        ("wrong type", post(r#"{"tenant":"acme","image":"blk","rw":"yes"}"#), 400, "malformed"),
        ("path traversal in overlay", post(r#"{"tenant":"acme","image":"blk","rw":true,"overlay":"../../etc/passwd"}"#), 400, "bad overlay"),
        ("overlay with a slash", post(r#"{"tenant":"acme","image":"blk","rw":true,"overlay":"a/b"}"#), 400, "bad overlay"),
        ("path traversal in tenant", post(r#"{"tenant":"../acme","image":"blk"}"#), 400, "bad tenant"),
        ("path traversal in image", post(r#"{"tenant":"acme","image":"../../x"}"#), 400, "bad image"),
        ("bad transport", post(r#"{"tenant":"acme","image":"blk","via":"iscsi"}"#), 400, "bad via"),
        ("bad owner", post(r#"{"tenant":"acme","image":"blk","owner":"root"}"#), 400, "bad owner"),
        ("duplicate attach of a named overlay", post(r#"{"tenant":"acme","image":"blk","rw":true,"overlay":"keep"}"#), 409, "in use"),
        ("detach of an unknown id", b"DELETE /v1/volumes/v0123456789abcdef HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(), 404, "no volume"),
        ("detach of a malformed id", b"DELETE /v1/volumes/..%2F..%2Fetc HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(), 404, "no volume"),
        ("unknown endpoint", b"GET /v2/volumes HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(), 404, "/v1/"),
        ("wrong method", b"PUT /v1/volumes HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(), 405, "not allowed"),
        ("wrong content type", b"POST /v1/volumes HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_vec(), 415, "application/json"),
    ];
    for (what, req, want, reason) in &cases {
        let (status, body) = svc.http(req);
        assert_eq!(status, *want, "{what}: status (body {body})");
        assert!(
            body.contains("\"error\""),
            "{what}: no error field in {body}"
        );
        assert!(
            body.contains(reason),
            "{what}: reason {body:?} lacks {reason:?}"
        );
    }
    // Huge JSON: refused with 413 whether announced or streamed.
    let huge = format!(
        r#"{{"tenant":"acme","image":"blk","overlay":"{}"}}"#,
        "x".repeat(4 << 20)
    );
    let (status, body) = svc.http(&post(&huge));
    assert_eq!(status, 413, "huge body: {body}");
    // Garbage instead of HTTP, and a header that never ends: the agent goes on.
    let mut g = UnixStream::connect(&svc.control).unwrap();
    let _ = g.write_all(&Rng::new(3).bytes(100_000));
    drop(g);
    let mut slow = UnixStream::connect(&svc.control).unwrap();
    slow.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    svc.assert_alive();
    let after = (
        svc.volumes(),
        svc.state_files("sockets"),
        svc.state_files("volumes"),
    );
    let strip = |v: &Vec<serde_json::Value>| {
        v.iter()
            .map(|x| (x["id"].clone(), x["socket"].clone(), x["state"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&before.0),
        strip(&after.0),
        "volumes changed by refused requests"
    );
    assert_eq!(
        (&before.1, &before.2),
        (&after.1, &after.2),
        "files changed by refused requests"
    );
    assert_eq!(after.0.len(), 1);
    // The CLI names the reason and fails.
    let o = svc.lode(&["attach", "acme/nope"]);
    assert!(
        !o.status.success() && o.stderr.contains("unknown image acme/nope"),
        "{o:?}"
    );
    let o = svc.lode(&["detach", "v0123456789abcdef"]);
    assert!(
        !o.status.success() && o.stderr.contains("no volume"),
        "{o:?}"
    );
    svc.detach(ok["id"].as_str().unwrap());
    drop(slow);
}

/// Runs `qemu-io` on `uri` as `uid:gid` (setpriv).
fn qemu_io_as(uid: u32, uri: &str, cmds: &[&str]) -> Out {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(["qemu-io", "-r", "-f", "raw", uri]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    run_timeout(&mut c, Duration::from_secs(60))
}

/// Runs `qemu-io` (read-write) on `uri` as `uid:uid`.
fn qemu_io_as_rw(uid: u32, uri: &str, cmds: &[&str]) -> Out {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(["qemu-io", "-f", "raw", uri]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    run_timeout(&mut c, Duration::from_secs(60))
}

#[test]
fn volume_sockets_are_isolated() {
    require_tool("setpriv", "util-linux");
    let (env, img) = setup();
    assert!(
        nix_root(),
        "this test needs root: it gives sockets to other users"
    );
    // Other users traverse the test directory to reach the sockets.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut svc = Service::new(&env, "iso");
    svc.start();
    let a = svc.attach(&[&image(), "--owner", "4242:4242"]);
    let b = svc.attach(&[&image(), "--rw", "--owner", "4343", "--via", "nbd"]);
    for (v, uid) in [(&a, 4242), (&b, 4343)] {
        let md = std::fs::metadata(v["socket"].as_str().unwrap()).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600, "socket mode");
        assert_eq!((md.uid(), md.gid()), (uid, uid), "socket owner");
    }
    let (r, p) = img.pattern_regions()[2];
    let read = format!("read -P {p:#04x} {} {}", r * REGION, img.region_len(r));
    // Its owner reads it; another uid cannot connect.
    let o = qemu_io_as(4242, &uri(&a["socket"], ""), &[&read]);
    assert!(
        !qemu_io_failed(&o),
        "the owner cannot read its volume: {o:?}"
    );
    let o = qemu_io_as(4343, &uri(&a["socket"], ""), &[&read]);
    assert!(
        qemu_io_failed(&o) && o.stderr.contains("Permission denied"),
        "another uid reached the volume: {o:?}"
    );
    let o = qemu_io_as(4242, &uri(&b["socket"], ""), &[&read]);
    assert!(
        qemu_io_failed(&o),
        "uid 4242 reached uid 4343's volume: {o:?}"
    );
    // The volume's own name and "" open it; any other export is refused.
    let own = a["export"].as_str().unwrap();
    assert_eq!(own, "acme/blk");
    let o = qemu_io_ro(&uri(&a["socket"], own), std::slice::from_ref(&read));
    assert!(!qemu_io_failed(&o), "its own export name: {o:?}");
    for other in ["acme/other", "acme/blk@x", "other/blk"] {
        let o = qemu_io_ro(&uri(&a["socket"], other), std::slice::from_ref(&read));
        assert!(
            qemu_io_failed(&o) && o.stderr.contains("not it"),
            "export {other} on a volume socket: {o:?}"
        );
    }
    // Read-only volume: NBD says so (a read-write open is refused).
    let o = qemu_io(&uri(&a["socket"], ""), &["write -P 1 0 4096".into()]);
    assert!(qemu_io_failed(&o), "write to a read-only volume: {o:?}");
    // The read-write volume of uid 4343 takes its writes.
    let o = qemu_io_as_rw(
        4343,
        &uri(&b["socket"], ""),
        &["write -P 9 0 4096", "read -P 9 0 4096"],
    );
    assert!(!qemu_io_failed(&o), "owner's write: {o:?}");
    // TCP: no client certificate, another CA's certificate, no TLS at all: refused.
    let tcp = env.agent_tcp("tcp", &[]);
    let addr = tcp.tcp_addr.clone().unwrap();
    let t = tcp.tls.clone().unwrap();
    let ok = qemu_io_tls(
        &addr,
        "acme/blk",
        &t.client_dir,
        std::slice::from_ref(&read),
    );
    assert!(
        !qemu_io_failed(&ok),
        "TLS client with a certificate: {ok:?}"
    );
    for (what, dir) in [
        ("no certificate", &t.anonymous_dir),
        ("another CA", &t.stranger_dir),
    ] {
        let o = qemu_io_tls(&addr, "acme/blk", dir, std::slice::from_ref(&read));
        assert!(qemu_io_failed(&o), "TCP with {what} was served: {o:?}");
    }
    let o = qemu_io(
        &format!("nbd://{addr}/acme/blk"),
        std::slice::from_ref(&read),
    );
    assert!(
        qemu_io_failed(&o) && o.stderr.to_lowercase().contains("tls"),
        "TCP without TLS was served: {o:?}"
    );
    // The open listener needs its explicit flag; TCP needs mutual TLS.
    let o = run_timeout(
        env.lode()
            .args(["agent", "--listen", "unix:/tmp/never.sock", "--state-dir"])
            .arg(env.path("s1")),
        Duration::from_secs(30),
    );
    assert!(
        !o.status.success() && o.stderr.contains("--dev-open-exports"),
        "{o:?}"
    );
    let o = run_timeout(
        env.lode()
            .args([
                "agent",
                "--listen",
                "127.0.0.1:1",
                "--dev-open-exports",
                "--state-dir",
            ])
            .arg(env.path("s2")),
        Duration::from_secs(30),
    );
    assert!(
        !o.status.success() && o.stderr.contains("mutual TLS"),
        "{o:?}"
    );
    svc.assert_alive();
}

fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// A long-lived qemu-io on an NBD volume with `reconnect-delay`, fed
/// commands through stdin.
struct Interactive {
    child: std::process::Child,
    out: std::thread::JoinHandle<String>,
}

impl Interactive {
    fn start(socket: &str, export: &str) -> Interactive {
        let mut child = Command::new("qemu-io")
            .arg("--image-opts")
            .arg(format!(
                "driver=nbd,server.type=unix,server.path={socket},export={export},reconnect-delay=60"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut so = child.stdout.take().unwrap();
        let mut se = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut a = String::new();
            let mut b = String::new();
            let t = std::thread::spawn(move || {
                let _ = se.read_to_string(&mut b);
                b
            });
            let _ = so.read_to_string(&mut a);
            a + &t.join().unwrap_or_default()
        });
        Interactive { child, out }
    }

    fn send(&mut self, cmd: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(cmd.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn finish(mut self) -> String {
        self.send("quit");
        drop(self.child.stdin.take());
        let t = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(240),
                "qemu-io did not finish"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.out.join().unwrap()
    }
}

/// The longest single qemu-io operation in `out` (its `; H:MM:SS.ss sec`
/// or `; SS.ss sec` timings), seconds.
fn longest_op(out: &str) -> f64 {
    out.lines()
        .filter_map(|l| l.split("ops; ").nth(1)?.split(" sec").next())
        .filter_map(|t| {
            t.split(':').try_fold(0.0, |acc, p| {
                p.trim().parse::<f64>().ok().map(|v| acc * 60.0 + v)
            })
        })
        .fold(0.0, f64::max)
}

#[test]
fn nbd_clients_ride_out_kills_and_an_upgrade() {
    let (env, img) = setup();
    let mut svc = Service::new(&env, "r1");
    svc.start();
    let v = svc.attach(&[&image(), "--rw"]);
    let sock = v["socket"].as_str().unwrap().to_string();
    let id = v["id"].as_str().unwrap().to_string();
    // A second binary for the upgrade.
    let upgraded = env.path("lode-upgraded");
    std::fs::copy(lode_bin(), &upgraded).unwrap();
    let mut q = Interactive::start(&sock, "");
    let rounds = 80u64;
    let feeder_cmds: Vec<String> = (0..rounds)
        .flat_map(|i| {
            let off = (i * 97 % 180) * 64 * KIB;
            let p = (i % 200 + 20) as u8;
            vec![
                format!("write -P {p:#04x} {off} 65536"),
                "flush".to_string(),
                format!("read -P {p:#04x} {off} 65536"),
            ]
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let feeder = std::thread::spawn(move || {
        for (k, c) in feeder_cmds.iter().enumerate() {
            q.send(c);
            if k % 3 == 2 {
                std::thread::sleep(Duration::from_millis(60));
            }
            if k == feeder_cmds.len() / 2 {
                let _ = tx.send(());
            }
        }
        q.finish()
    });
    // Three SIGKILLs and an upgrade while the commands run.
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(700));
        if round < 3 {
            svc.kill();
            svc.start();
        } else {
            let mut next = Service::new(&env, "r1");
            next.bin = upgraded.clone();
            next.metrics_addr = svc.metrics_addr.clone();
            next.log = env.path("service-r1-upgraded.log");
            next.take_over_from(&mut svc);
            svc = next;
        }
        assert!(
            Path::new(&sock).exists(),
            "socket not re-created after restart {round}"
        );
    }
    let _ = rx.recv_timeout(Duration::from_secs(60));
    let out = feeder.join().unwrap();
    let writes = out.matches("wrote 65536/65536").count();
    let reads = out.matches("read 65536/65536").count();
    assert!(
        !out.contains("failed") && !out.contains("error") && !out.contains("Error"),
        "qemu-io saw errors across the restarts:\n{out}"
    );
    assert_eq!(
        (writes, reads),
        (rounds as usize, rounds as usize),
        "operations done:\n{out}"
    );
    eprintln!(
        "longest qemu-io operation across the restarts: {:.3} s",
        longest_op(&out)
    );
    // Every flushed write reads back from a fresh connection (later rounds
    // win where offsets repeat).
    let mut last = std::collections::BTreeMap::new();
    for i in 0..rounds {
        last.insert((i * 97 % 180) * 64 * KIB, (i % 200 + 20) as u8);
    }
    let cmds: Vec<String> = last
        .iter()
        .map(|(off, p)| format!("read -P {p:#04x} {off} 65536"))
        .collect();
    qemu_io_ok(&format!("nbd+unix:///?socket={sock}"), &cmds);
    // Untouched regions still hold the image.
    let (r, p) = img
        .pattern_regions()
        .into_iter()
        .rev()
        .find(|(r, _)| r * REGION >= 180 * 64 * KIB)
        .unwrap();
    qemu_io_ok(
        &format!("nbd+unix:///?socket={sock}"),
        &[format!(
            "read -P {p:#04x} {} {}",
            r * REGION,
            img.region_len(r)
        )],
    );
    assert_eq!(svc.volumes()[0]["id"], id);
    svc.assert_alive();
}

#[test]
fn attach_detach_cycles_leak_nothing() {
    let (env, img) = setup();
    let mut svc = Service::new(&env, "cyc");
    svc.start();
    let steady = svc.attach(&[&image()]);
    let steady_uri = uri(&steady["socket"], "");
    let (r, p) = img.pattern_regions()[1];
    let read = format!("read -P {p:#04x} {} {}", r * REGION, img.region_len(r));
    // Warm up, then take the baseline.
    let v = svc.attach(&[&image(), "--rw"]);
    qemu_io_ok(&uri(&v["socket"], ""), std::slice::from_ref(&read));
    svc.detach(v["id"].as_str().unwrap());
    let health = |svc: &Service| -> serde_json::Value {
        let (s, b) = svc.http(b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        assert_eq!(s, 200, "{b}");
        serde_json::from_str(&b).unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    let (fds0, tasks0) = (svc.fds(), health(&svc)["tasks"].as_u64().unwrap());
    // Reads run on the steady volume the whole time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, r2, u2) = (stop.clone(), read.clone(), steady_uri.clone());
    let reader = std::thread::spawn(move || {
        let mut n = 0;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let o = qemu_io_ro(&u2, std::slice::from_ref(&r2));
            assert!(!qemu_io_failed(&o), "steady reads: {o:?}");
            n += 1;
        }
        n
    });
    for i in 0..64 {
        let mut args = vec![image()];
        if i % 2 == 0 {
            args.push("--rw".into());
        }
        if i % 3 == 0 {
            args.extend(["--via".to_string(), "vhost-user".to_string()]);
        }
        if i % 5 == 0 {
            args.extend(["--overlay".to_string(), format!("ov{}", i % 2)]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = svc.attach(&refs);
        if v["via"] == "nbd" {
            if i % 2 == 0 {
                qemu_io_ok(
                    &uri(&v["socket"], ""),
                    &[read.clone(), "write -P 0x77 0 8192".into()],
                );
            } else {
                let o = qemu_io_ro(&uri(&v["socket"], ""), std::slice::from_ref(&read));
                assert!(!qemu_io_failed(&o), "cycle {i}: {o:?}");
            }
        } else {
            // A frontend that connects and goes.
            let mut d = vhost_client::VhostBlk::connect(Path::new(v["socket"].as_str().unwrap()));
            let got = d.read_ok(0, 4096);
            if v["export"].as_str().unwrap().contains('@') {
                // A named overlay keeps what an earlier cycle wrote.
                assert!(got == img.slice(0, 4096) || got[..4096].iter().all(|&b| b == 0x77));
            } else {
                assert_same_bytes(&got, img.slice(0, 4096), "vhost read");
            }
        }
        svc.detach(v["id"].as_str().unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    // Only the steady volume is left: its socket, no overlay files.
    let sockets = svc.state_files("sockets");
    assert_eq!(sockets.len(), 1, "sockets left: {sockets:?}");
    assert_eq!(
        svc.state_files("volumes"),
        Vec::<String>::new(),
        "volume overlays left"
    );
    // Named overlays are kept (by design), one per name.
    let named = list(&svc.overlays.join(TENANT));
    assert!(named.iter().all(|n| n.starts_with("blk@ov")), "{named:?}");
    assert_eq!(svc.volumes().len(), 1);
    let t = Instant::now();
    loop {
        let (fds, tasks) = (svc.fds(), health(&svc)["tasks"].as_u64().unwrap());
        if fds <= fds0 + 2 && tasks <= tasks0 + 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "leak after 64 cycles: {fds} fds (baseline {fds0}), {tasks} tasks (baseline {tasks0})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(health(&svc)["open_images"].as_u64(), Some(1));
}

#[test]
fn hostile_clients_do_not_take_the_agent_down() {
    let t0 = Instant::now();
    require_tool("prlimit", "util-linux");
    let (env, img) = setup();
    let mut svc = Service::new(&env, "h");
    let dev_sock = env.path("open.sock");
    svc.extra = vec![
        "--listen".into(),
        format!("unix:{}", dev_sock.display()),
        "--dev-open-exports".into(),
        "--max-connections".into(),
        "100000".into(),
    ];
    svc.wrapper = vec!["prlimit".into(), "--nofile=256:256".into(), "--".into()];
    svc.start();
    let v = svc.attach(&[&image(), "--rw"]);
    let vsock = v["socket"].as_str().unwrap().to_string();
    let (r, p) = img.pattern_regions()[4];
    let read = format!("read -P {p:#04x} {} {}", r * REGION, img.region_len(r));
    // 1. Connections past the fd limit (each one a stalled handshake).
    let mut held = Vec::new();
    for _ in 0..600 {
        match UnixStream::connect(&dev_sock) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    svc.assert_alive();
    let n = held.len();
    eprintln!("{n} connections held after {:?}", t0.elapsed());
    drop(held);
    std::thread::sleep(Duration::from_millis(1500));
    let shed = metric_of(&svc, "lode_connections_shed_total");
    let errors = metric_of(&svc, "lode_accept_errors_total");
    assert!(
        n > 256 && shed > 0.0 && errors > 0.0,
        "{n} connections held; shed {shed}, accept errors {errors}"
    );
    // Other volumes serve again as soon as descriptors are free.
    qemu_io_ok(
        &uri(&serde_json::Value::from(vsock.clone()), ""),
        std::slice::from_ref(&read),
    );
    // 2. Large reads whose replies are never read: memory stays bounded.
    let rss0 = svc.rss();
    let mut hogs = Vec::new();
    for _ in 0..6 {
        let mut c = nbd_client::Conn::go_ok(Path::new(&vsock), "");
        for k in 0..64u64 {
            let _ = k;
            c.send_request(0, 0, (SIZE - 1) as u32 & !4095, &[])
                .unwrap();
        }
        hogs.push(c);
    }
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("hogs after {:?}", t0.elapsed());
    let rss = svc.rss();
    assert!(
        rss < rss0 + 6 * 80 * MIB,
        "agent memory grew from {} MiB to {} MiB with replies nobody reads",
        rss0 / MIB,
        rss / MIB
    );
    // 3. A handshake that never finishes.
    let mut stalled = UnixStream::connect(&vsock).unwrap();
    let mut greet = [0u8; 18];
    stalled.read_exact(&mut greet).unwrap();
    // The agent and the volume still serve.
    qemu_io_ok(
        &uri(&serde_json::Value::from(vsock.clone()), ""),
        std::slice::from_ref(&read),
    );
    svc.assert_alive();
    drop(hogs);
    drop(stalled);
    qemu_io_ok(&uri(&serde_json::Value::from(vsock), ""), &[read]);
}

fn metric_of(svc: &Service, key: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(&svc.metrics_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut b = String::new();
    let _ = s.read_to_string(&mut b);
    *parse_metrics(&b)
        .get(key)
        .unwrap_or_else(|| panic!("metric {key} missing:\n{b}"))
}

#[test]
fn sigterm_removes_sockets_and_restarts_survive_a_store_outage() {
    let (env, img) = setup();
    let mut svc = Service::new(&env, "t");
    svc.start();
    let a = svc.attach(&[&image(), "--rw"]);
    let b = svc.attach(&[&image(), "--via", "vhost-user"]);
    let sock = a["socket"].as_str().unwrap().to_string();
    qemu_io_ok(
        &format!("nbd+unix:///?socket={sock}"),
        &["write -P 0x3c 65536 65536".into()],
    );
    let (r, p) = img.pattern_regions()[3];
    let read = format!("read -P {p:#04x} {} {}", r * REGION, img.region_len(r));
    qemu_io_ok(
        &format!("nbd+unix:///?socket={sock}"),
        std::slice::from_ref(&read),
    );
    for sig in ["TERM", "INT"] {
        let st = svc.signal(sig);
        assert!(st.success(), "exit status after SIG{sig}: {st}");
        assert!(!svc.control.exists(), "control socket left after SIG{sig}");
        assert_eq!(
            svc.state_files("sockets"),
            Vec::<String>::new(),
            "volume sockets left after SIG{sig}"
        );
        assert!(svc.log_text().contains(&format!("SIG{sig}: stopping")));
        svc.start();
        assert_eq!(
            svc.volumes().len(),
            2,
            "volumes after SIG{sig} and a restart"
        );
        assert!(Path::new(&sock).exists() && Path::new(b["socket"].as_str().unwrap()).exists());
    }
    // The store goes away; the agent is killed and restarts from its cache.
    svc.kill();
    let away = env.path("store-away");
    std::fs::rename(&env.store, &away).unwrap();
    svc.start();
    let vols = svc.volumes();
    assert!(
        vols.iter().all(|v| v["state"] == "serving"),
        "volumes not restored without the store: {vols:?}"
    );
    // The written pages and the cached chunks are served.
    qemu_io_ok(
        &format!("nbd+unix:///?socket={sock}"),
        &["read -P 0x3c 65536 65536".into(), read],
    );
    std::fs::rename(&away, &env.store).unwrap();
}
