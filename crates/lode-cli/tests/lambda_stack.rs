//! The whole function stack with real processes: `lode frontend`, `lode
//! manager` and two `lode worker`s (each on its own `lode agent`, so each
//! has its own host cache) running the invocations in QEMU micro-VMs.
//!
//! * boto3 creates, invokes (sync, async, dry run, log tail), updates,
//!   lists and deletes functions; the second invocation lands in the same
//!   sandbox; a function whose image is cached on one worker starts there.
//! * A worker SIGKILLed during an invocation: that invocation fails with a
//!   clear error, the next one succeeds on the other worker.
//! * The manager SIGKILLed and restarted under load: the invocation that was
//!   running completes (frontends call workers directly), and the new
//!   manager rebuilds its state from the workers' reports.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common_agent;
mod common_lambda;
mod common_vm;
mod common_worker;

use common_agent::{run_timeout, Env};
use common_lambda::{aws_lambda, python, run_ok, start_frontend, Service};
use common_worker::{spawn_worker_as, write_runtime_image};
use lode_frontend::sigv4;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

/// A SigV4-signed Lambda API request from Rust (for the fault sequences
/// that need exact timing); returns (status, headers, body).
fn signed(
    addr: &str,
    akid: &str,
    secret: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    signed_with(addr, akid, secret, method, path, body, "")
}

/// [`signed`] with `extra` header lines (unsigned, each ending in CRLF).
fn signed_with(
    addr: &str,
    akid: &str,
    secret: &str,
    method: &str,
    path: &str,
    body: &[u8],
    extra: &str,
) -> (u16, String, Vec<u8>) {
    let date = {
        let out = Command::new("date")
            .args(["-u", "+%Y%m%dT%H%M%SZ"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let headers = vec![
        ("host".to_string(), addr.to_string()),
        ("x-amz-date".to_string(), date.clone()),
    ];
    let req = sigv4::Request {
        method,
        path,
        query: "",
        headers: &headers,
        body,
    };
    let auth = sigv4::sign(akid, secret, "us-east-1", &req).unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nx-amz-date: {date}\r\nauthorization: {auth}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, out[split + 4..].to_vec())
}

fn manager_state(url: &str) -> serde_json::Value {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /v1/state HTTP/1.0\r\nhost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn functions_run_on_a_stack_of_frontend_manager_and_two_workers() {
    let env = Env::new();
    let prep = run_timeout(
        env.lode()
            .args(["vm", "prepare", "--dir"])
            .arg(common_vm::vm_dir()),
        Duration::from_secs(600),
    );
    assert!(prep.status.success(), "vm prepare: {prep:?}");
    let oci = env.path("rt-oci");
    write_runtime_image(&oci);
    let store = env.store.to_str().unwrap().to_string();
    env.lode_ok(&[
        "push",
        &format!("oci:{}", oci.display()),
        "--tenant",
        "acme",
        "--name",
        "rt",
        "--store",
        &store,
    ]);
    let creds = {
        let o = env.lode_ok(&["credentials", "add", "--tenant", "acme", "--store", &store]);
        o.stdout_str().trim().to_string()
    };
    let c: serde_json::Value = serde_json::from_str(&creds).unwrap();
    let (akid, secret) = (
        c["AccessKeyId"].as_str().unwrap(),
        c["SecretAccessKey"].as_str().unwrap(),
    );

    let mport = free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let mut manager = Service::start(&env, "manager", &["manager", "--listen", &maddr]);
    let mut agent_a = common_agent::service::Service::new(&env, "a");
    agent_a.start();
    let mut agent_b = common_agent::service::Service::new(&env, "b");
    agent_b.start();
    let (mut w1, _) = spawn_worker_as(
        &env,
        agent_a.control.to_str().unwrap(),
        &manager.url(),
        "w1",
    );
    let (w2, _) = spawn_worker_as(
        &env,
        agent_b.control.to_str().unwrap(),
        &manager.url(),
        "w2",
    );
    let mut frontend = start_frontend(&env, "frontend", &[&manager.url()], &store, &[]);
    let started = Instant::now();
    while manager_state(&manager.url())["workers_live"] != 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "workers did not report: {}",
            manager_state(&manager.url())
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // boto3: the operations, warm reuse, cache affinity.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lambda/stack.py");
    let out = run_ok(
        Command::new(python()).args([script, &frontend.url(), &creds, &manager.url()]),
        Duration::from_secs(900),
    );
    assert!(out.contains("stack ok"), "{out}");
    eprintln!("{out}");

    // The manager SIGKILLed and restarted while an invocation runs.
    let create = br#"{"FunctionName":"nap","Role":"r","PackageType":"Image","Code":{"ImageUri":"acme/rt"},"Timeout":60}"#;
    let (st, _, b) = signed(
        &frontend.addr,
        akid,
        secret,
        "POST",
        "/2015-03-31/functions",
        create,
    );
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&b));
    let fe = frontend.addr.clone();
    let (k1, s1) = (akid.to_string(), secret.to_string());
    let running = std::thread::spawn(move || {
        signed(
            &fe,
            &k1,
            &s1,
            "POST",
            "/2015-03-31/functions/nap/invocations",
            br#"{"nap": true}"#,
        )
    });
    let started = Instant::now();
    while manager_state(&manager.url())["leases"] == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the nap was never placed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    manager.kill();
    manager = Service::start(&env, "manager2", &["manager", "--listen", &maddr]);
    let (st, head, body) = running.join().unwrap();
    assert_eq!(
        (st, String::from_utf8_lossy(&body).as_ref()),
        (200, "\"rested\""),
        "{head}"
    );
    let started = Instant::now();
    while manager_state(&manager.url())["workers_live"] != 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "state not rebuilt: {}",
            manager_state(&manager.url())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (st, head, body) = signed(
        &frontend.addr,
        akid,
        secret,
        "POST",
        "/2015-03-31/functions/nap/invocations",
        br#"{"n": 1}"#,
    );
    assert_eq!(st, 200, "{head} {}", String::from_utf8_lossy(&body));
    assert!(
        head.to_ascii_lowercase().contains("x-lode-warm: true"),
        "the rebuilt manager knows the warm sandbox: {head}"
    );

    // A worker SIGKILLed during an invocation. First no sandbox may be busy
    // in the manager's view (reports lag up to a second behind), so that
    // the busy one seen next is this invocation's.
    let idle = |s: &serde_json::Value| {
        s["leases"] == 0
            && s["workers"].as_array().unwrap().iter().all(|w| {
                w["sandboxes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| s["running"].is_null())
            })
    };
    let started = Instant::now();
    while !idle(&manager_state(&manager.url())) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a sandbox stays busy: {}",
            manager_state(&manager.url())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fe = frontend.addr.clone();
    let (k1, s1) = (akid.to_string(), secret.to_string());
    let doomed = std::thread::spawn(move || {
        signed(
            &fe,
            &k1,
            &s1,
            "POST",
            "/2015-03-31/functions/nap/invocations",
            br#"{"sleep": true}"#,
        )
    });
    let started = Instant::now();
    let victim = loop {
        let s = manager_state(&manager.url());
        let busy = s["workers"].as_array().unwrap().iter().find(|w| {
            w["sandboxes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| !s["running"].is_null())
        });
        if let Some(w) = busy {
            break w["worker"].as_str().unwrap().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the sleep never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut w2 = Some(w2);
    if victim == "w1" {
        let _ = w1.0.kill();
        let _ = w1.0.wait();
    } else {
        drop(w2.take());
    }
    let (st, head, body) = doomed.join().unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(st, 500, "{head} {body}");
    assert!(body.contains("lost during invocation"), "{body}");
    // Capacity recovers on the other worker.
    let (st, head, body) = signed(
        &frontend.addr,
        akid,
        secret,
        "POST",
        "/2015-03-31/functions/nap/invocations",
        br#"{"n": 2}"#,
    );
    assert_eq!(st, 200, "{head} {}", String::from_utf8_lossy(&body));
    assert!(
        !head.contains(&format!("x-lode-worker: {victim}")),
        "{head}"
    );

    // Several managers: a frontend whose first choice for a function (by
    // rendezvous hash of its ARN) is a manager that is down asks the next.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let managers = vec![dead.clone(), manager.url()];
    let name = (0..64)
        .map(|i| format!("fx{i}"))
        .find(|n| {
            let arn = format!(
                "arn:aws:lambda:us-east-1:{}:function:{n}",
                lode_frontend::api::account_of("acme")
            );
            lode_frontend::managers::rendezvous(&managers, &arn)[0] == dead
        })
        .unwrap();
    let two = start_frontend(
        &env,
        "frontend-two-managers",
        &[&dead, &manager.url()],
        &store,
        &[],
    );
    let create = format!(
        r#"{{"FunctionName":"{name}","Role":"r","PackageType":"Image","Code":{{"ImageUri":"acme/rt"}},"Timeout":60}}"#
    );
    let (st, _, b) = signed(
        &two.addr,
        akid,
        secret,
        "POST",
        "/2015-03-31/functions",
        create.as_bytes(),
    );
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&b));
    let (st, head, body) = signed(
        &two.addr,
        akid,
        secret,
        "POST",
        &format!("/2015-03-31/functions/{name}/invocations"),
        br#"{"n": 3}"#,
    );
    assert_eq!(st, 200, "{head} {}", String::from_utf8_lossy(&body));
    assert!(
        two.log_text().contains("manager unreachable"),
        "{}",
        two.log_text()
    );

    // A queued (Event) invocation outlives the frontend that took it: that
    // frontend is SIGKILLed while the invocation runs; another takes the
    // event over once the claim lapses, runs it again (at least once, as
    // Lambda) and empties the queue.
    let placed = |url: &str| -> u64 {
        manager_state(url)["placements"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    // Queued events: files under events/ (not the local store's temp files).
    let queued = || -> usize {
        common_agent::files_under(&env.store.join("events"))
            .1
            .iter()
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .count()
    };
    let before = placed(&manager.url());
    let (st, head, _) = signed_with(
        &frontend.addr,
        akid,
        secret,
        "POST",
        "/2015-03-31/functions/nap/invocations",
        br#"{"nap": true}"#,
        "x-amz-invocation-type: Event\r\n",
    );
    assert_eq!(st, 202, "{head}");
    let started = Instant::now();
    while placed(&manager.url()) == before {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the queued invocation was never placed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    frontend.kill();
    assert_eq!(queued(), 1, "the event stays queued while it runs");
    let takeover = start_frontend(&env, "frontend-takeover", &[&manager.url()], &store, &[]);
    let started = Instant::now();
    while queued() > 0 || placed(&manager.url()) < before + 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the orphaned event was not run again: {} queued, {} placements since\n{}",
            queued(),
            placed(&manager.url()) - before,
            takeover.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(w2);
}

/// `lode serve`: the four parts in one process on the embedded defaults;
/// the AWS CLI creates a function and invokes it cold, then warm; SIGTERM
/// stops it cleanly.
#[test]
fn lode_serve_runs_a_function_in_one_process() {
    let env = Env::new();
    let prep = run_timeout(
        env.lode()
            .args(["vm", "prepare", "--dir"])
            .arg(common_vm::vm_dir()),
        Duration::from_secs(600),
    );
    assert!(prep.status.success(), "vm prepare: {prep:?}");
    let oci = env.path("rt-oci");
    write_runtime_image(&oci);
    // The embedded default store ($LODE_HOME/store), as a user's first run.
    env.lode_ok(&[
        "push",
        &format!("oci:{}", oci.display()),
        "--tenant",
        "acme",
        "--name",
        "rt",
    ]);
    let creds = env
        .lode_ok(&["credentials", "add", "--tenant", "acme"])
        .stdout_str();
    let c: serde_json::Value = serde_json::from_str(creds.trim()).unwrap();
    // vm prepare's directory is the worker's default only through LODE_HOME:
    // link it where `lode serve` looks.
    std::os::unix::fs::symlink(common_vm::vm_dir(), env.home.join("vm")).unwrap();
    let mut serve = Service::start(
        &env,
        "serve",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--slots",
            "2",
            "--memory",
            "600",
        ],
    );
    let cli = |args: &[&str]| {
        run_ok(
            aws_lambda(&serve.url(), &c)
                .args(["--cli-read-timeout", "300"])
                .args(args),
            Duration::from_secs(300),
        )
    };
    cli(&[
        "create-function",
        "--function-name",
        "hello",
        "--package-type",
        "Image",
        "--code",
        "ImageUri=acme/rt",
        "--role",
        "r",
    ]);
    let out = env.path("out.json");
    for n in 1..=2 {
        let meta = cli(&[
            "invoke",
            "--function-name",
            "hello",
            "--payload",
            &format!("{{\"n\": {n}}}"),
            out.to_str().unwrap(),
        ]);
        let v: serde_json::Value = serde_json::from_str(&meta).unwrap();
        assert_eq!(v["StatusCode"], 200, "{meta}");
        let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(
            p["count"], n,
            "the second invocation reuses the sandbox: {p}"
        );
    }
    // SIGTERM: sandboxes stopped, volumes detached, exit 0.
    let term = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = serve.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "lode serve did not stop:\n{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}: {}", serve.log_text());
    assert!(
        !env.home.join("serve/agent.sock").exists(),
        "the agent's socket stayed"
    );
}
