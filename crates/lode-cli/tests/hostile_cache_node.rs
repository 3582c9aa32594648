//! Hostile clients against a real `lode cache-node` on loopback: silent
//! floods, HTTP/2 connections kept alive by pings, descriptor exhaustion,
//! PUT streams that never finish; and `--disk` on a directory the node did
//! not create, SIGTERM, and a killed run's temp files. Every attack is
//! bounded in count (at most 1,100 connections) and time (timeouts of a few
//! seconds, set by the node's options).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod common_agent;
mod common_fleet;

use bytes::Bytes;
use common::{cpu_seconds, names_in, peak_rss, tmp};
use common_fleet::{http_get, CacheNode};
use http_body_util::{BodyExt, StreamBody};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A node metric by its full name (labels included).
fn metric(node: &CacheNode, name: &str) -> f64 {
    *node.metrics().get(name).unwrap_or(&0.0)
}

/// `/health` answers within `limit`.
fn healthy_within(addr: &str, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if matches!(http_get(addr, "/health"), Some((200, _))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits until the node has closed `s` (EOF or reset), at most `limit`.
fn closed_by_node(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

/// Row: 1,100 TCP connections that send nothing. The header timeout never
/// started, so every slot was taken and `/health` blocked for the whole
/// attack. Now the connection idle longest is shed for each new one, and
/// every silent connection is closed after the first-byte timeout.
#[test]
fn a_silent_flood_does_not_block_health() {
    let d = tmp();
    let node = CacheNode::start(
        d.path(),
        "flood",
        &["--memory", "64M", "--first-byte-timeout-ms", "15000"],
    );
    let t = Instant::now();
    // In parallel: loopback SYNs are sometimes retried after 1 s here.
    let mut silent: Vec<TcpStream> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..10)
            .map(|_| {
                sc.spawn(|| {
                    (0..110)
                        .map(|_| TcpStream::connect(&node.addr).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "1,100 connections opened in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "during the flood: {} connections",
        metric(&node, "lode_node_connections")
    );
    assert!(
        healthy_within(&node.addr, Duration::from_secs(10)),
        "/health blocked by 1,100 silent connections"
    );
    let all_closed = silent
        .iter_mut()
        .all(|s| closed_by_node(s, Duration::from_secs(30)));
    assert!(
        all_closed,
        "a silent connection outlived the first-byte timeout"
    );
    let first = metric(
        &node,
        "lode_node_connections_closed_total{reason=\"first_byte_timeout\"}",
    );
    let cap = metric(
        &node,
        "lode_node_connections_closed_total{reason=\"connection_cap\"}",
    );
    eprintln!("silent flood: {first} closed by the first-byte timeout, {cap} shed at the cap");
    assert!(first + cap >= 1100.0, "{first} + {cap}");
    assert!(cap >= 76.0, "1,100 connections, a cap of 1,024: {cap} shed");
}

/// Row: the same flood with the node's descriptors limited (`prlimit`): the
/// node used to spin at 100 % of a core on EMFILE. It now backs off, sheds
/// its longest-idle connection to free a descriptor, and keeps answering.
#[test]
fn descriptor_exhaustion_is_survived_without_spinning() {
    let d = tmp();
    let mut node = CacheNode::start_prefixed(
        d.path(),
        "emfile",
        &["prlimit", "--nofile=64:64", "--"],
        &["--memory", "64M", "--first-byte-timeout-ms", "60000"],
    );
    let pid = node.pid().unwrap();
    let _silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&node.addr).unwrap())
        .collect();
    // While the backlog holds more connections than it has descriptors.
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(pid) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    eprintln!("EMFILE: {used:.2} s of CPU in {wall:.1} s");
    assert!(
        used < 0.5 * wall,
        "the node spins on accept errors: {used:.2} s CPU in {wall:.1} s"
    );
    assert!(
        healthy_within(&node.addr, Duration::from_secs(30)),
        "/health not answered while out of descriptors"
    );
    assert!(metric(&node, "lode_node_accept_errors_total") > 0.0);
    assert!(node.alive());
}

/// A client HTTP/2 connection to `addr`.
async fn h2_connect(
    addr: &str,
    ping_every: Option<Duration>,
) -> (
    hyper::client::conn::http2::SendRequest<
        http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
    >,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new());
    if let Some(p) = ping_every {
        b.keep_alive_interval(p)
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
    }
    let (send, conn) = b
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

fn empty() -> http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible> {
    http_body_util::Full::new(Bytes::new()).boxed()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Row: HTTP/2 connections that answer (here: send) pings but never send a
/// request held their slots for ever. Pings are not requests: the idle
/// timeout closes them.
#[test]
fn http2_connections_kept_alive_by_pings_are_closed_when_idle() {
    let d = tmp();
    let node = CacheNode::start(
        d.path(),
        "pings",
        &["--memory", "64M", "--idle-timeout-ms", "2000"],
    );
    let rt = rt();
    rt.block_on(async {
        let (mut send, conn) = h2_connect(&node.addr, Some(Duration::from_millis(200))).await;
        let uri = format!("http://{}/health", node.addr);
        let r = send
            .send_request(hyper::Request::get(&uri).body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let t = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(20), conn).await;
        assert!(ended.is_ok(), "a pinging idle connection was never closed");
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "closed by something else than the 2 s idle timeout"
        );
        eprintln!(
            "pinging HTTP/2 connection closed after {:.1} s idle",
            t.elapsed().as_secs_f64()
        );
    });
    assert!(
        metric(
            &node,
            "lode_node_connections_closed_total{reason=\"idle_timeout\"}"
        ) >= 1.0
    );
}

/// Row: HTTP/2 PUT streams that never finish pinned about 256 MiB per
/// connection (1.07 GB after 4 connections), unrelated to `--memory`. Now
/// bodies in progress share one budget (`--body-memory`): the node's peak
/// memory stays near it, streams beyond it are refused at once (503), and
/// once the stalled bodies time out an ordinary PUT is stored again.
#[test]
fn unfinished_http2_puts_share_one_memory_budget() {
    let d = tmp();
    let node = CacheNode::start(
        d.path(),
        "puts",
        &[
            "--memory",
            "64M",
            "--body-memory",
            "16M",
            "--body-timeout-ms",
            "4000",
            "--idle-timeout-ms",
            "30000",
        ],
    );
    let pid = node.pid().unwrap();
    let rt = rt();
    let statuses = rt.block_on(async {
        let mut waits = Vec::new();
        let mut conns = Vec::new();
        for c in 0..4 {
            let (send, conn) = h2_connect(&node.addr, None).await;
            conns.push(conn);
            for s in 0..256 {
                let mut send = send.clone();
                let uri = format!("http://{}/s/stuck{c}.{s}", node.addr);
                // Most of a stripe, then nothing: the stream never ends.
                let part = Bytes::from(vec![0x5a; 1000 << 10]);
                let frames = futures::StreamExt::chain(
                    futures::stream::iter([Ok(hyper::body::Frame::data(part))]),
                    futures::stream::pending(),
                );
                let body = StreamBody::new(frames).boxed();
                waits.push(tokio::spawn(async move {
                    send.ready().await.ok()?;
                    let req = hyper::Request::put(uri).body(body).unwrap();
                    let r =
                        tokio::time::timeout(Duration::from_secs(30), send.send_request(req)).await;
                    r.ok()?.ok().map(|r| r.status().as_u16())
                }));
            }
        }
        let mut statuses = Vec::new();
        for w in waits {
            statuses.push(w.await.unwrap());
        }
        drop(conns);
        statuses
    });
    let rss = peak_rss(pid);
    let count = |code| statuses.iter().filter(|s| **s == Some(code)).count();
    eprintln!(
        "1,024 stalled PUT streams: peak {} MiB; 503 {}, 408 {}, other {:?}",
        rss >> 20,
        count(503),
        count(408),
        statuses
            .iter()
            .filter(|s| !matches!(s, Some(503 | 408)))
            .count()
    );
    assert!(
        rss < 160 * MIB,
        "node peak memory {rss} with a 16 MiB body budget"
    );
    assert!(
        count(503) > 900,
        "streams over the budget were not refused: {statuses:?}"
    );
    assert!(count(408) > 0, "no stalled body timed out");
    assert_eq!(
        metric(&node, "lode_node_body_bytes"),
        0.0,
        "budget given back"
    );
    // An ordinary stripe is stored and served again.
    let mut s = TcpStream::connect(&node.addr).unwrap();
    s.write_all(
        b"PUT /s/ok.1 HTTP/1.1
Host: x
Content-Length: 5
Connection: close

hello",
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 204"), "{reply}");
    assert_eq!(http_get(&node.addr, "/s/ok.1"), Some((200, "hello".into())));
}

/// Row: `--disk DIR` on a directory holding other files deleted every file
/// whose name was not a stripe key. Now such a directory is refused (one
/// line naming it and the marker) and left untouched; a new or empty one is
/// taken and marked.
#[test]
fn disk_refuses_a_directory_it_did_not_create() {
    let d = tmp();
    let theirs = d.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("database.db"), "precious").unwrap();
    std::fs::write(theirs.join("ab.1"), "looks like a stripe").unwrap();
    let o = std::process::Command::new(common::lode_bin())
        .args([
            "cache-node",
            "--listen",
            "127.0.0.1:0",
            "--memory",
            "1M",
            "--disk",
        ])
        .arg(&theirs)
        .args(["--disk-size", "1M"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(
        e.contains(theirs.to_str().unwrap()) && e.contains(".lode-cache-node"),
        "{e}"
    );
    assert_eq!(names_in(&theirs), ["ab.1", "database.db"]);
    assert_eq!(
        std::fs::read(theirs.join("database.db")).unwrap(),
        b"precious"
    );
    let ours = d.path().join("ours");
    let node = CacheNode::start(
        d.path(),
        "disk",
        &[
            "--memory",
            "1M",
            "--disk",
            ours.to_str().unwrap(),
            "--disk-size",
            "1M",
        ],
    );
    drop(node);
    assert_eq!(names_in(&ours), [".lode-cache-node"]);
}

/// Row (clean exits): SIGTERM stops the node with status 0 and no temp file
/// in its disk tier; a killed run's temp files are swept by the next start,
/// and its stripes survive.
#[test]
fn sigterm_stops_cleanly_and_a_killed_runs_temp_files_are_swept() {
    let d = tmp();
    let disk = d.path().join("disk");
    let args = [
        "--memory",
        "1",
        "--disk",
        disk.to_str().unwrap(),
        "--disk-size",
        "10M",
    ];
    let mut node = CacheNode::start(d.path(), "term", &args);
    for i in 0..20 {
        let mut s = TcpStream::connect(&node.addr).unwrap();
        s.write_all(
            format!("PUT /s/k.{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nv{i:02}")
                .as_bytes(),
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 204"), "{reply}");
    }
    let st = node.terminate();
    assert_eq!(st.code(), Some(0), "cache node after SIGTERM: {st}");
    let left = names_in(&disk);
    assert!(!left.iter().any(|n| n.starts_with(".tmp-")), "{left:?}");
    assert!(left.contains(&".lode-cache-node".to_string()));
    // What a SIGKILLed run leaves: a half-written stripe.
    std::fs::write(disk.join(".tmp-k.99"), "hal").unwrap();
    let node = CacheNode::start(d.path(), "term2", &args);
    assert!(
        !disk.join(".tmp-k.99").exists(),
        "a killed run's temp file survived a restart"
    );
    assert_eq!(http_get(&node.addr, "/s/k.7"), Some((200, "v07".into())));
}
