//! `lode worker` end to end: a real agent, real micro-VMs (QEMU, TCG) and a
//! custom runtime no one here wrote — AWS's custom-runtime tutorial: a
//! shell-script `bootstrap` looping on `invocation/next` and `response`
//! with the image's own (busybox) wget. Invoked cold then warm in the same
//! sandbox; a function error; the guest's network reaches the Runtime API
//! and nothing else; a timeout (Lambda's message, the sandbox replaced); an
//! entry point that exits at once (`Runtime.ExitError`); a runtime the
//! guest kernel kills for memory (`Runtime.OutOfMemory`); capacity refusals;
//! the report the manager receives; the metrics. Each sandbox's QEMU runs
//! under its seccomp filter and a user id of its own, which alone reaches
//! the sandbox's disk and Runtime API sockets (another user's connect is
//! refused), also when QEMU reconnects after an agent restart; two live
//! sandboxes never share a user; a SIGKILLed worker leaves no QEMU behind
//! although QEMU switched user. Needs what vm_e2e.rs needs, and setpriv
//! (scripts/test.sh installs them); runs as root.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;
mod common_vm;
mod common_worker;

use common_agent::{run_timeout, Env};
use common_worker::*;
use lode_testkit::vm_image::{write_busybox_image, BusyboxImage};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One VM test at a time: TCG is CPU-bound and the machines have 2 cores.
static VM: Mutex<()> = Mutex::new(());

#[test]
fn a_shell_script_runtime_runs_cold_then_warm_and_its_failures_are_lambdas() {
    let _one = VM.lock().unwrap_or_else(|p| p.into_inner());
    let env = Env::new();
    let oci = env.path("oci");
    write_runtime_image(&oci);
    let digest = push_layout(&env, &oci, "rt");
    let (mut agent, _manager, reports, _w, addr) = stack(&env);
    let ctl = agent.control.to_str().unwrap().to_string();

    // A pinned attach serves exactly that manifest and refuses another's.
    let bad = run_timeout(
        env.lode().args([
            "attach",
            &format!("t/rt@sha256:{}", "0".repeat(64)),
            "--agent",
            &ctl,
        ]),
        Duration::from_secs(60),
    );
    assert!(
        !bad.status.success() && bad.stderr.contains("gone"),
        "{bad:?}"
    );
    let others = push_layout(&env, &oci, "other");
    let bad = run_timeout(
        env.lode()
            .args(["attach", &format!("t/rt@{others}"), "--agent", &ctl]),
        Duration::from_secs(60),
    );
    assert!(
        !bad.status.success() && bad.stderr.contains("is not image t/rt's"),
        "{bad:?}"
    );
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    probe.set_nonblocking(true).unwrap();
    let probe_port = probe.local_addr().unwrap().port();
    let worker_log = || std::fs::read_to_string(env.path("worker.log")).unwrap_or_default();

    // Cold, then warm in the same sandbox.
    let f = spec(&digest, 1, 120, None, probe_port);
    let t = Instant::now();
    let (status, head, r1) = invoke(&addr, "r1", &f, br#"{"x":1}"#, None);
    let cold = t.elapsed();
    assert_eq!(status, 200, "{head}\n{r1}\n{}", worker_log());
    assert_eq!(r1["outcome"], "success", "{r1}\n{}", log_tail(&r1));
    let p: Value =
        serde_json::from_str(&payload(&r1)).unwrap_or_else(|e| panic!("{e}: {}", payload(&r1)));
    assert_eq!(
        p,
        json!({"count": 1, "event": {"x": 1}, "cwd": "/var/task", "handler": "function.handler", "region": "eu-west-1"})
    );
    assert_eq!(r1["warm"], false);
    let tm = &r1["timings"];
    assert!(
        tm["attach_us"].as_u64().unwrap() > 0 && tm["boot_us"].as_u64().unwrap() > 0,
        "{tm}"
    );
    let tail = log_tail(&r1);
    assert!(
        tail.contains(
            "init: handler=function.handler task_root=/var/task pwd=/var/task memory=256"
        ),
        "{tail}"
    );
    assert!(
        tail.contains("START RequestId: r1") && tail.contains("REPORT RequestId: r1"),
        "{tail}"
    );
    let sandbox = r1["sandbox"].as_str().unwrap().to_string();
    let t = Instant::now();
    let (_, _, r2) = invoke(&addr, "r2", &f, br#"{"x":2}"#, Some(&sandbox));
    let warm = t.elapsed();
    assert_eq!(r2["outcome"], "success", "{r2}");
    assert_eq!(
        (r2["warm"].as_bool(), r2["sandbox"].as_str()),
        (Some(true), Some(sandbox.as_str()))
    );
    assert!(payload(&r2).contains("\"count\":2"), "{}", payload(&r2));
    // The warm sandbox's emulator runs under QEMU's seccomp filter, as a
    // user of its own that alone reaches its disk and Runtime API sockets.
    let vmms = vmms_under(env.dir.path());
    assert_eq!(vmms.len(), 1, "one QEMU of this test in /proc: {vmms:?}");
    for v in &vmms {
        assert!(
            v.status.lines().any(|l| l == "Seccomp:\t2"),
            "QEMU {} runs without a seccomp filter:\n{}",
            v.pid,
            v.status
        );
        check_confined(v);
    }
    // The relay runs as that user and still reaches the Runtime API (the
    // invocations above went through it); after an agent restart QEMU
    // reconnects to its disk as that user and the guest reads it again.
    agent.kill();
    agent.start();
    let (_, _, rd) = invoke(&addr, "rd", &f, br#""disk""#, Some(&sandbox));
    assert_eq!(
        (rd["outcome"].as_str(), rd["sandbox"].as_str()),
        (Some("success"), Some(sandbox.as_str())),
        "{rd}\n{}",
        log_tail(&rd)
    );
    assert_eq!(payload(&rd), r#""disk ok""#, "{}", log_tail(&rd));
    eprintln!(
        "cold invoke {cold:?} ({tm}), warm invoke {warm:?} ({})",
        r2["timings"]
    );

    // A function error keeps the sandbox.
    let (_, _, r3) = invoke(&addr, "r3", &f, br#""fail""#, None);
    assert_eq!(r3["outcome"], "function_error");
    assert_eq!(r3["error_type"], "Custom.Fail");
    assert_eq!(
        payload(&r3),
        r#"{"errorMessage":"asked to fail","errorType":"Custom.Fail"}"#
    );
    assert_eq!(r3["sandbox"].as_str(), Some(sandbox.as_str()));

    // The guest reaches its Runtime API and nothing else.
    let (_, _, r4) = invoke(&addr, "r4", &f, br#""probe""#, None);
    assert_eq!(r4["outcome"], "success", "{r4}");
    let seen = payload(&r4);
    assert!(!seen.contains("reached"), "{seen}");
    assert!(
        seen.contains(&format!("blocked:10.0.2.2:{probe_port}"))
            && seen.contains("blocked:10.0.2.3:53"),
        "{seen}"
    );
    assert!(probe.accept().is_err(), "the guest reached a host port");

    // The report the manager gets, and the worker's own.
    let (_, _, rep) = http(&addr, "GET", "/v1/report", b"");
    let rep: Value = serde_json::from_slice(&rep).unwrap();
    assert_eq!(rep["worker"], "w1");
    assert_eq!(rep["sandboxes"][0]["id"].as_str(), Some(sandbox.as_str()));
    assert_eq!(
        rep["sandboxes"][0]["key"],
        "arn:aws:lambda:eu-west-1:t:function:rt:1"
    );
    assert_eq!(rep["images"], json!([digest]));
    std::thread::sleep(Duration::from_millis(1500));
    let got = reports.lock().unwrap().clone();
    assert!(
        got.iter().any(
            |r| r["worker"] == "w1" && r["sandboxes"].as_array().is_some_and(|s| !s.is_empty())
        ),
        "{got:?}"
    );

    // A function larger than the worker's memory is refused.
    let mut big = f.clone();
    big["memory_mib"] = json!(1024);
    let (status, head, e) = invoke(&addr, "big", &big, b"{}", None);
    assert_eq!(status, 429, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-amzn-errortype: toomanyrequestsexception"),
        "{head}"
    );
    assert!(
        e["message"].as_str().unwrap().contains("no capacity"),
        "{e}"
    );

    // A later push of the same name changes nothing for the pinned
    // function: the new image's bootstrap exits at once, the pinned one's
    // sleeps into the timeout below.
    let oci2 = env.path("oci2");
    write_busybox_image(
        &oci2,
        &BusyboxImage {
            applets: &["sh"],
            dirs: &["var", "var/task"],
            files: &[("var/task/bootstrap", 0o755, b"#!/bin/sh\nexit 42\n")],
            config: json!({"Entrypoint": ["/var/task/bootstrap"]}),
        },
    );
    assert_ne!(push_layout(&env, &oci2, "rt"), digest);

    // An image that does not exist, a function with nothing to run.
    let mut nope = f.clone();
    nope["image"] = json!(format!("t/nope@sha256:{}", "1".repeat(64)));
    nope["revision"] = json!(8);
    let (status, head, e) = invoke(&addr, "nope", &nope, b"{}", None);
    assert_eq!(status, 502, "{head}");
    assert_eq!(e["__type"], "InvalidImageException", "{e}");
    assert!(e["message"].as_str().unwrap().contains("t/nope"), "{e}");
    let mut empty = f.clone();
    empty["image_config"] = json!({});
    empty["revision"] = json!(9);
    let (status, _, e) = invoke(&addr, "empty", &empty, b"{}", None);
    assert_eq!(
        (status, e["__type"].as_str()),
        (400, Some("InvalidParameterValueException")),
        "{e}"
    );

    // A timeout: Lambda's error, and the sandbox is stopped (revision 2:
    // a sandbox of its own beside revision 1's idle one).
    let slow = spec(&digest, 2, 2, None, probe_port);
    let (_, _, r5) = invoke(&addr, "r5", &slow, br#""sleep""#, None);
    assert_eq!(r5["error_type"], "Sandbox.Timedout", "{r5}");
    assert!(
        payload(&r5).contains("r5 Task timed out after 2.00 seconds"),
        "{}",
        payload(&r5)
    );
    assert_ne!(r5["sandbox"].as_str(), Some(sandbox.as_str()));
    let t = Instant::now();
    loop {
        let (_, _, rep) = http(&addr, "GET", "/v1/report", b"");
        let rep: Value = serde_json::from_slice(&rep).unwrap();
        if !rep["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == r5["sandbox"])
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the timed-out sandbox stays: {rep}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // An entry point that exits at once.
    let gone = spec(
        &digest,
        3,
        30,
        Some(json!(["/bin/sh", "-c", "echo leaving; exit 3"])),
        probe_port,
    );
    let (_, _, r6) = invoke(&addr, "r6", &gone, b"{}", None);
    assert_eq!(r6["error_type"], "Runtime.ExitError", "{r6}");
    assert!(
        payload(&r6).contains("RequestId: r6 Error: Runtime exited with error: exit status 3"),
        "{}",
        payload(&r6)
    );
    assert!(log_tail(&r6).contains("leaving"), "{}", log_tail(&r6));

    let (_, _, m) = http(&addr, "GET", "/metrics", b"");
    let m = String::from_utf8_lossy(&m);
    for want in [
        "lode_worker_cold_starts_total 4",
        "lode_worker_start_failures_total 1",
        "lode_worker_warm_starts_total 4",
        "lode_worker_timeouts_total 1",
        "lode_worker_throttles_total 1",
    ] {
        assert!(m.contains(want), "{want} in\n{m}");
    }
    // 10 MB of output: the log tail stays 4 KiB and the worker's memory
    // does not grow with it.
    let rss = || {
        let st = std::fs::read_to_string(format!("/proc/{}/status", _w.0.id())).unwrap();
        let kb = st
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap();
        kb.parse::<u64>().unwrap() * 1024
    };
    let before = rss();
    let t = Instant::now();
    let (_, _, r7) = invoke(&addr, "r7", &f, br#""spam""#, None);
    assert_eq!(r7["outcome"], "success", "{r7}");
    let tail = log_tail(&r7);
    assert!(
        tail.len() <= 4096
            && tail.contains("abcdefghijklmnopqrstuvwxyz")
            && tail.contains("END RequestId: r7"),
        "{tail}"
    );
    let after = rss();
    eprintln!(
        "10 MB of output in {:?}; worker RSS {before} -> {after} bytes",
        t.elapsed()
    );
    assert!(
        after < before + (8 << 20),
        "worker RSS grew from {before} to {after} bytes"
    );

    // The guest kernel crashing: a clear error, and the sandbox is gone.
    let (_, _, r8) = invoke(&addr, "r8", &f, br#""crash""#, None);
    assert_eq!(r8["error_type"], "Runtime.ExitError", "{r8}");
    assert!(
        payload(&r8).contains("the guest kernel panicked"),
        "{}",
        payload(&r8)
    );

    // A runtime that outgrows the function's memory: the guest kernel's
    // OOM killer ends it, and the error is Lambda's Runtime.OutOfMemory.
    let (_, _, r9) = invoke(&addr, "r9", &f, br#""hog""#, None);
    assert_eq!(
        r9["error_type"],
        "Runtime.OutOfMemory",
        "{r9}\n{}",
        log_tail(&r9)
    );
    assert!(
        payload(&r9).contains("RequestId: r9 Error: Runtime exited with error: signal: killed"),
        "{}",
        payload(&r9)
    );

    // The agent holds no volume of a stopped sandbox.
    let t = Instant::now();
    loop {
        let vols = env.lode_ok(&["volumes", "--agent", &ctl, "--json"]);
        let vols: Value = serde_json::from_slice(&vols.stdout).unwrap();
        if vols.as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "volumes left: {vols}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn aws_python_runtime_interface_client_runs_unmodified() {
    let _one = VM.lock().unwrap_or_else(|p| p.into_inner());
    let env = Env::new();
    let oci = env.path("oci");
    let config = write_python_image(&oci, env.dir.path());
    let digest = push_layout(&env, &oci, "py");
    let (agent, _manager, _reports, w, addr) = stack(&env);
    let worker_log = || std::fs::read_to_string(env.path("worker.log")).unwrap_or_default();
    // As the frontend stores it: the image's own run settings.
    let f = json!({
        "tenant": "t", "name": "py", "arn": "arn:aws:lambda:us-east-1:t:function:py", "revision": 1,
        "image": format!("t/py@{digest}"), "memory_mib": 256, "timeout_s": 60, "image_config": config
    });
    let (status, head, r1) = invoke(&addr, "p1", &f, br#"{"hello":"python"}"#, None);
    assert_eq!(status, 200, "{head}\n{r1}\n{}", worker_log());
    eprintln!("python cold: {}", r1["timings"]);
    assert_eq!(
        r1["outcome"],
        "success",
        "{r1}\n{}\n{}",
        log_tail(&r1),
        worker_log()
    );
    let p: Value = serde_json::from_str(&payload(&r1)).unwrap();
    assert_eq!(
        p,
        json!({"count": 1, "event": {"hello": "python"}, "request_id": "p1", "function": "py", "memory": "256", "time_left": true})
    );
    let (_, _, r2) = invoke(&addr, "p2", &f, b"[1,2]", r1["sandbox"].as_str());
    assert_eq!(
        (r2["warm"].as_bool(), r2["sandbox"].clone()),
        (Some(true), r1["sandbox"].clone()),
        "{r2}"
    );
    assert!(payload(&r2).contains("\"count\": 2"), "{}", payload(&r2));
    eprintln!("python warm: {}", r2["timings"]);
    let mut boom = f.clone();
    boom["command"] = json!(["handler.boom"]);
    boom["revision"] = json!(2);
    let (_, _, r3) = invoke(&addr, "p3", &boom, b"7", None);
    assert_eq!(r3["error_type"], "ValueError", "{r3}\n{}", log_tail(&r3));
    assert!(payload(&r3).contains("boom 7"), "{}", payload(&r3));

    // SIGKILL: the VMs die with the worker (no QEMU left), and the next
    // worker of that id detaches the volumes it left.
    let ctl = agent.control.to_str().unwrap().to_string();
    let vols = |env: &Env| -> usize {
        let o = env.lode_ok(&["volumes", "--agent", &ctl, "--json"]);
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(vols(&env), 2, "two warm sandboxes");
    let qemus = || vmms_under(env.dir.path()).len();
    assert_eq!(qemus(), 2, "one QEMU per sandbox");
    let vmms = vmms_under(env.dir.path());
    assert_eq!(vmms.len(), 2, "{vmms:?}");
    for v in &vmms {
        check_confined(v);
    }
    assert_ne!(
        vmms[0].run_as, vmms[1].run_as,
        "two live sandboxes share a user"
    );
    // Each one's user is kept from the other's sockets.
    for (me, other) in [(&vmms[0], &vmms[1]), (&vmms[1], &vmms[0])] {
        let uid = me.run_as.unwrap().0;
        for path in [&other.disk, &other.runtime] {
            let r = connect_as(uid, path);
            assert!(
                matches!(r, Err(e) if e == EACCES),
                "sandbox user {uid} connecting to {}: {r:?}",
                path.display()
            );
        }
    }
    drop(w);
    let t = Instant::now();
    while qemus() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "QEMU outlived the SIGKILLed worker"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        vols(&env),
        2,
        "the killed worker's volumes stay until a successor"
    );
    let (mut w, addr) = spawn_worker(&env, &ctl, &_manager);
    assert_eq!(
        vols(&env),
        0,
        "the successor detaches them:\n{}",
        worker_log()
    );

    // SIGTERM: the worker stops its sandboxes and detaches their volumes.
    let (_, _, r4) = invoke(&addr, "p4", &f, b"4", None);
    assert_eq!(
        (r4["outcome"].as_str(), r4["warm"].as_bool()),
        (Some("success"), Some(false)),
        "{r4}"
    );
    assert_eq!(vols(&env), 1);
    let st = Command::new("kill")
        .args(["-TERM", &w.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    while w.0.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the worker did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        vols(&env),
        0,
        "volumes left after the worker stopped:\n{}",
        worker_log()
    );
}

const EACCES: i32 = 13;
const EPERM: i32 = 1;

/// `v` runs as the user it was given (not root), its volume and Runtime API
/// sockets are that user's alone (0600), its own user connects to both and
/// another user (a neighbour's id, as setpriv sets it) connects to neither.
fn check_confined(v: &Vmm) {
    use std::os::unix::fs::MetadataExt;
    let (uid, gid) = v
        .run_as
        .unwrap_or_else(|| panic!("QEMU {} has no -run-with", v.pid));
    assert!(uid >= 1_000_000 && gid == uid, "{uid}:{gid}");
    assert_eq!(v.ids("Uid:"), [uid; 4], "QEMU {}:\n{}", v.pid, v.status);
    assert_eq!(v.ids("Gid:"), [gid; 4], "QEMU {}:\n{}", v.pid, v.status);
    assert!(
        v.status
            .lines()
            .any(|l| l.trim_end() == format!("Groups:\t{gid}")),
        "{}",
        v.status
    );
    for path in [&v.disk, &v.runtime] {
        let md = std::fs::metadata(path).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o777),
            (uid, gid, 0o600),
            "{}",
            path.display()
        );
        assert_eq!(
            connect_as(uid, path),
            Ok(()),
            "{} as its owner",
            path.display()
        );
        let r = connect_as(uid + 7, path);
        assert!(
            matches!(r, Err(e) if e == EACCES || e == EPERM),
            "another user connecting to {}: {r:?}",
            path.display()
        );
    }
    // Others do not even see which sandboxes there are.
    let dir = v.runtime.parent().unwrap();
    let md = std::fs::metadata(dir).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (0, gid, 0o710));
}
