//! `lode worker` end to end: a real agent, real micro-VMs (QEMU, TCG) and a
//! custom runtime no one here wrote — AWS's custom-runtime tutorial: a
//! shell-script `bootstrap` looping on `invocation/next` and `response`
//! with the image's own (busybox) wget. Invoked cold then warm in the same
//! sandbox; a function error; the guest's network reaches the Runtime API
//! and nothing else; a timeout (Lambda's message, the sandbox replaced); an
//! entry point that exits at once (`Runtime.ExitError`); capacity refusals;
//! the report the manager receives; the metrics. Needs what vm_e2e.rs
//! needs (scripts/test.sh installs it).
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;
mod common_vm;

use common_agent::service::Service;
use common_agent::{run_timeout, Env};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common_vm::vm_dir;
use lode_testkit::vm_image::{write_busybox_image, BusyboxImage};
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// AWS's custom runtime tutorial (`bootstrap`), with busybox wget for curl.
const BOOTSTRAP: &str = r#"#!/bin/sh
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
echo "init: handler=$_HANDLER task_root=$LAMBDA_TASK_ROOT pwd=$(pwd) memory=$AWS_LAMBDA_FUNCTION_MEMORY_SIZE"
n=0
while true; do
  wget -q -S -O /tmp/event "$API/invocation/next" 2> /tmp/headers || { echo "next failed"; cat /tmp/headers; exit 1; }
  id=$(grep -i 'lambda-runtime-aws-request-id:' /tmp/headers | tr -d ' \r' | cut -d: -f2)
  n=$((n+1))
  event=$(cat /tmp/event)
  echo "handling $id ($n): $event"
  case "$event" in
    *sleep*) sleep 600 ;;
    *fail*)
      wget -q -O /dev/null --header 'Lambda-Runtime-Function-Error-Type: Custom.Fail' \
        --post-data '{"errorMessage":"asked to fail","errorType":"Custom.Fail"}' "$API/invocation/$id/error"
      continue ;;
    *probe*)
      out=""
      for a in "10.0.2.2:$PROBE_PORT" 10.0.2.3:53 10.0.2.100:80 1.1.1.1:80; do
        if wget -q -T 3 -O /dev/null "http://$a/" 2>/dev/null; then out="$out reached:$a"; else out="$out blocked:$a"; fi
      done
      body="\"$out\"" ;;
    *) body="{\"count\":$n,\"event\":$event,\"cwd\":\"$(pwd)\",\"handler\":\"$_HANDLER\",\"region\":\"$AWS_REGION\"}" ;;
  esac
  wget -q -O /dev/null --post-data "$body" "$API/invocation/$id/response" || echo "response failed"
done
"#;

fn lode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lode"))
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 exchange (connection closed after it).
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head, all[split + 4..].to_vec())
}

/// A stand-in for the manager's report endpoint: records every body posted
/// to `/v1/workers`.
fn report_sink() -> (String, Arc<Mutex<Vec<Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let mut r = std::io::BufReader::new(s);
            let mut len = 0usize;
            let mut line = String::new();
            let mut path = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if path.is_empty() {
                    path = line.split(' ').nth(1).unwrap_or("").to_string();
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            if path == "/v1/workers" {
                if let Ok(v) = serde_json::from_slice(&body) {
                    g.lock().unwrap().push(v);
                }
            }
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        }
    });
    (format!("http://{addr}"), got)
}

fn spec(digest: &str, revision: u64, timeout_s: u32, entry: Option<Value>, probe: u16) -> Value {
    json!({
        "tenant": "t", "name": "rt",
        "arn": "arn:aws:lambda:eu-west-1:t:function:rt",
        "revision": revision,
        "image": format!("t/rt@{digest}"),
        "memory_mib": 256, "timeout_s": timeout_s,
        "environment": {"PROBE_PORT": probe.to_string()},
        "entry_point": entry,
        "image_config": {"Entrypoint": ["/var/task/bootstrap"], "Cmd": ["function.handler"], "WorkingDir": "/var/task"}
    })
}

fn invoke(worker: &str, id: &str, function: &Value, payload: &[u8], sandbox: Option<&str>) -> (u16, String, Value) {
    let req = json!({"request_id": id, "function": function, "payload": B64.encode(payload), "sandbox": sandbox});
    let (status, head, body) = http(worker, "POST", "/v1/invoke", &serde_json::to_vec(&req).unwrap());
    let v = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {head}\n{}", String::from_utf8_lossy(&body)));
    (status, head, v)
}

fn payload(v: &Value) -> String {
    String::from_utf8_lossy(&B64.decode(v["payload"].as_str().unwrap()).unwrap()).into_owned()
}

fn log_tail(v: &Value) -> String {
    String::from_utf8_lossy(&B64.decode(v["log_tail"].as_str().unwrap_or("")).unwrap()).into_owned()
}

#[test]
fn a_shell_script_runtime_runs_cold_then_warm_and_its_failures_are_lambdas() {
    let env = Env::new();
    let oci = env.path("oci");
    write_busybox_image(
        &oci,
        &BusyboxImage {
            applets: &["sh", "cat", "echo", "wget", "grep", "tr", "cut", "sleep", "ls"],
            dirs: &["var", "var/task"],
            files: &[("var/task/bootstrap", 0o755, BOOTSTRAP.as_bytes())],
            config: json!({"Entrypoint": ["/var/task/bootstrap"], "Cmd": ["function.handler"], "WorkingDir": "/var/task"}),
        },
    );
    env.lode_ok(&[
        "push",
        &format!("oci:{}:latest", oci.display()),
        "--tenant", "t", "--name", "rt", "--store", env.store.to_str().unwrap(),
    ]);
    let digest = env.inspect("t", "rt")["manifest"].as_str().unwrap().to_string();
    let prep = run_timeout(env.lode().args(["vm", "prepare", "--dir"]).arg(vm_dir()), Duration::from_secs(600));
    assert!(prep.status.success(), "vm prepare: {prep:?}");
    let mut agent = Service::new(&env, "a");
    agent.start();

    // A pinned attach serves exactly that manifest and refuses another's.
    let ctl = agent.control.to_str().unwrap().to_string();
    let bad = run_timeout(
        env.lode().args(["attach", &format!("t/rt@sha256:{}", "0".repeat(64)), "--agent", &ctl]),
        Duration::from_secs(60),
    );
    assert!(!bad.status.success() && bad.stderr.contains("gone"), "{bad:?}");

    let (manager, reports) = report_sink();
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    probe.set_nonblocking(true).unwrap();
    let probe_port = probe.local_addr().unwrap().port();
    let mut w = lode()
        .env("LODE_HOME", &env.home)
        .env("LODE_LOG", "info")
        .args(["worker", "--manager", &manager, "--agent", &ctl, "--slots", "2", "--memory", "600", "--id", "w1", "--keep-alive", "60"])
        .arg("--vm-dir")
        .arg(vm_dir())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(env.path("worker.log")).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(w.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let _w = Kill(w);
    let hello: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first:?}"));
    let addr = hello["listen"].as_str().unwrap().to_string();
    let worker_log = || std::fs::read_to_string(env.path("worker.log")).unwrap_or_default();

    // Cold, then warm in the same sandbox.
    let f = spec(&digest, 1, 30, None, probe_port);
    let t = Instant::now();
    let (status, head, r1) = invoke(&addr, "r1", &f, br#"{"x":1}"#, None);
    let cold = t.elapsed();
    assert_eq!(status, 200, "{head}\n{r1}\n{}", worker_log());
    assert_eq!(r1["outcome"], "success", "{r1}\n{}", log_tail(&r1));
    let p: Value = serde_json::from_str(&payload(&r1)).unwrap_or_else(|e| panic!("{e}: {}", payload(&r1)));
    assert_eq!(p, json!({"count": 1, "event": {"x": 1}, "cwd": "/var/task", "handler": "function.handler", "region": "eu-west-1"}));
    assert_eq!(r1["warm"], false);
    let tm = &r1["timings"];
    assert!(tm["attach_us"].as_u64().unwrap() > 0 && tm["boot_us"].as_u64().unwrap() > 0, "{tm}");
    let tail = log_tail(&r1);
    assert!(tail.contains("init: handler=function.handler task_root=/var/task pwd=/var/task memory=256"), "{tail}");
    assert!(tail.contains("START RequestId: r1") && tail.contains("REPORT RequestId: r1"), "{tail}");
    let sandbox = r1["sandbox"].as_str().unwrap().to_string();
    let t = Instant::now();
    let (_, _, r2) = invoke(&addr, "r2", &f, br#"{"x":2}"#, Some(&sandbox));
    let warm = t.elapsed();
    assert_eq!(r2["outcome"], "success", "{r2}");
    assert_eq!((r2["warm"].as_bool(), r2["sandbox"].as_str()), (Some(true), Some(sandbox.as_str())));
    assert!(payload(&r2).contains("\"count\":2"), "{}", payload(&r2));
    eprintln!("cold invoke {cold:?} ({tm}), warm invoke {warm:?} ({})", r2["timings"]);

    // A function error keeps the sandbox.
    let (_, _, r3) = invoke(&addr, "r3", &f, br#""fail""#, None);
    assert_eq!(r3["outcome"], "function_error");
    assert_eq!(r3["error_type"], "Custom.Fail");
    assert_eq!(payload(&r3), r#"{"errorMessage":"asked to fail","errorType":"Custom.Fail"}"#);
    assert_eq!(r3["sandbox"].as_str(), Some(sandbox.as_str()));

    // The guest reaches its Runtime API and nothing else.
    let (_, _, r4) = invoke(&addr, "r4", &f, br#""probe""#, None);
    assert_eq!(r4["outcome"], "success", "{r4}");
    let seen = payload(&r4);
    assert!(!seen.contains("reached"), "{seen}");
    assert!(seen.contains(&format!("blocked:10.0.2.2:{probe_port}")) && seen.contains("blocked:10.0.2.3:53"), "{seen}");
    assert!(probe.accept().is_err(), "the guest reached a host port");

    // The report the manager gets, and the worker's own.
    let (_, _, rep) = http(&addr, "GET", "/v1/report", b"");
    let rep: Value = serde_json::from_slice(&rep).unwrap();
    assert_eq!(rep["worker"], "w1");
    assert_eq!(rep["sandboxes"][0]["id"].as_str(), Some(sandbox.as_str()));
    assert_eq!(rep["sandboxes"][0]["key"], "arn:aws:lambda:eu-west-1:t:function:rt:1");
    assert_eq!(rep["images"], json!([digest]));
    std::thread::sleep(Duration::from_millis(1500));
    let got = reports.lock().unwrap().clone();
    assert!(got.iter().any(|r| r["worker"] == "w1" && r["sandboxes"].as_array().is_some_and(|s| !s.is_empty())), "{got:?}");

    // A function larger than the worker's memory is refused.
    let mut big = f.clone();
    big["memory_mib"] = json!(1024);
    let (status, head, e) = invoke(&addr, "big", &big, b"{}", None);
    assert_eq!(status, 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("x-amzn-errortype: toomanyrequestsexception"), "{head}");
    assert!(e["message"].as_str().unwrap().contains("no capacity"), "{e}");

    // A timeout: Lambda's error, and the sandbox is stopped (revision 2:
    // a sandbox of its own beside revision 1's idle one).
    let slow = spec(&digest, 2, 2, None, probe_port);
    let (_, _, r5) = invoke(&addr, "r5", &slow, br#""sleep""#, None);
    assert_eq!(r5["error_type"], "Sandbox.Timedout", "{r5}");
    assert!(payload(&r5).contains("r5 Task timed out after 2.00 seconds"), "{}", payload(&r5));
    assert_ne!(r5["sandbox"].as_str(), Some(sandbox.as_str()));
    let t = Instant::now();
    loop {
        let (_, _, rep) = http(&addr, "GET", "/v1/report", b"");
        let rep: Value = serde_json::from_slice(&rep).unwrap();
        if !rep["sandboxes"].as_array().unwrap().iter().any(|s| s["id"] == r5["sandbox"]) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the timed-out sandbox stays: {rep}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // An entry point that exits at once.
    let gone = spec(&digest, 3, 30, Some(json!(["/bin/sh", "-c", "echo leaving; exit 3"])), probe_port);
    let (_, _, r6) = invoke(&addr, "r6", &gone, b"{}", None);
    assert_eq!(r6["error_type"], "Runtime.ExitError", "{r6}");
    assert!(payload(&r6).contains("RequestId: r6 Error: Runtime exited with error: exit status 3"), "{}", payload(&r6));
    assert!(log_tail(&r6).contains("leaving"), "{}", log_tail(&r6));

    let (_, _, m) = http(&addr, "GET", "/metrics", b"");
    let m = String::from_utf8_lossy(&m);
    for want in [
        "lode_worker_cold_starts_total 3",
        "lode_worker_warm_starts_total 3",
        "lode_worker_timeouts_total 1",
        "lode_worker_throttles_total 1",
    ] {
        assert!(m.contains(want), "{want} in\n{m}");
    }
    // The agent holds only the volumes of live sandboxes: the failed and
    // timed-out ones were detached.
    let t = Instant::now();
    loop {
        let vols = env.lode_ok(&["volumes", "--agent", &ctl, "--json"]);
        let vols: Value = serde_json::from_slice(&vols.stdout).unwrap();
        if vols.as_array().unwrap().len() == 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "volumes left: {vols}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
