//! Shared helpers of the worker tests and benchmark: the shell-script
//! custom runtime, a stack of agent and `lode worker`, invoking over HTTP.
#![allow(dead_code, clippy::unwrap_used)]

use super::common_agent::service::Service;
use super::common_agent::{run_timeout, Env};
use super::common_vm::vm_dir;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use lode_testkit::vm_image::{write_busybox_image, BusyboxImage};
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// AWS's custom runtime tutorial (`bootstrap`), with busybox wget for curl.
pub const BOOTSTRAP: &str = r#"#!/bin/sh
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
    *nap*) sleep 4; body='"rested"' ;;
    *spam*) yes "a line of log output padded to about one hundred bytes: abcdefghijklmnopqrstuvwxyz0123456789" | head -c 10000000; body='"spammed"' ;;
    *crash*) echo c > /proc/sysrq-trigger; sleep 60 ;;
    *hog*) exec sh -c 'yes "$(head -c 200 /dev/zero | tr "\0" x)" | sort' ;;
    *fail*)
      wget -q -O /dev/null --header 'Lambda-Runtime-Function-Error-Type: Custom.Fail' \
        --post-data '{"errorMessage":"asked to fail","errorType":"Custom.Fail"}' "$API/invocation/$id/error"
      continue ;;
    *disk*)
      # Drop the guest's caches, then read the image again: the disk must answer.
      echo 3 > /proc/sys/vm/drop_caches
      if ls -R / > /dev/null 2>&1 && cat /var/task/bootstrap > /dev/null; then body='"disk ok"'; else body='"disk failed"'; fi ;;
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

pub fn lode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lode"))
}

pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 exchange (connection closed after it).
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
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
pub fn report_sink() -> (String, Arc<Mutex<Vec<Value>>>) {
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

/// A prepared VM directory, an agent on `env`'s store, a report sink
/// standing in for the manager's endpoint, and `lode worker` (2 slots,
/// 600 MiB) with its API address.
pub fn stack(env: &Env) -> (Service, String, Arc<Mutex<Vec<Value>>>, Kill, String) {
    let prep = run_timeout(
        env.lode().args(["vm", "prepare", "--dir"]).arg(vm_dir()),
        Duration::from_secs(600),
    );
    assert!(prep.status.success(), "vm prepare: {prep:?}");
    let mut agent = Service::new(env, "a");
    agent.start();
    let ctl = agent.control.to_str().unwrap().to_string();
    let (manager, reports) = report_sink();
    let (w, addr) = spawn_worker(env, &ctl, &manager);
    (agent, manager, reports, w, addr)
}

/// Starts `lode worker` (id `w1`, 2 slots, 600 MiB) on agent `ctl`; returns
/// it and its API address.
pub fn spawn_worker(env: &Env, ctl: &str, manager: &str) -> (Kill, String) {
    spawn_worker_as(env, ctl, manager, "w1")
}

/// [`spawn_worker`] with worker id `id` (its log: `ID.log` in `env`).
pub fn spawn_worker_as(env: &Env, ctl: &str, manager: &str, id: &str) -> (Kill, String) {
    let name = if id == "w1" {
        "worker.log".to_string()
    } else {
        format!("{id}.log")
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.path(&name))
        .unwrap();
    // The VMMs run under their own users, and reconnect to their volume
    // sockets (under this directory) after an agent restart.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut w = lode()
        .env("LODE_HOME", &env.home)
        .env("LODE_LOG", "info")
        .args([
            "worker",
            "--manager",
            manager,
            "--agent",
            ctl,
            "--slots",
            "2",
            "--memory",
            "600",
            "--id",
            id,
            "--keep-alive",
            "60",
        ])
        .arg("--vm-dir")
        .arg(vm_dir())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(w.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let w = Kill(w);
    let hello: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first:?}"));
    (w, hello["listen"].as_str().unwrap().to_string())
}

/// A function of image `t/rt`.
pub fn spec(
    digest: &str,
    revision: u64,
    timeout_s: u32,
    entry: Option<Value>,
    probe: u16,
) -> Value {
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

pub fn invoke(
    worker: &str,
    id: &str,
    function: &Value,
    payload: &[u8],
    sandbox: Option<&str>,
) -> (u16, String, Value) {
    let req = json!({"request_id": id, "function": function, "payload": B64.encode(payload), "sandbox": sandbox});
    let (status, head, body) = http(
        worker,
        "POST",
        "/v1/invoke",
        &serde_json::to_vec(&req).unwrap(),
    );
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {head}\n{}", String::from_utf8_lossy(&body)));
    (status, head, v)
}

pub fn payload(v: &Value) -> String {
    String::from_utf8_lossy(&B64.decode(v["payload"].as_str().unwrap()).unwrap()).into_owned()
}

pub fn log_tail(v: &Value) -> String {
    String::from_utf8_lossy(&B64.decode(v["log_tail"].as_str().unwrap_or("")).unwrap()).into_owned()
}

/// Writes the custom-runtime image (busybox, `/var/task/bootstrap`) to `oci`.
pub fn write_runtime_image(oci: &std::path::Path) {
    write_busybox_image(
        oci,
        &BusyboxImage {
            applets: &[
                "sh", "cat", "echo", "wget", "grep", "tr", "cut", "sleep", "ls", "yes", "head",
                "sort",
            ],
            dirs: &["var", "var/task"],
            files: &[("var/task/bootstrap", 0o755, BOOTSTRAP.as_bytes())],
            config: json!({"Entrypoint": ["/var/task/bootstrap"], "Cmd": ["function.handler"], "WorkingDir": "/var/task"}),
        },
    );
}

/// What a Python image needs from this host's Python: the interpreter, its
/// standard library, and every shared library they load (`ldd`).
pub fn python_files(task: &std::path::Path) -> Vec<std::path::PathBuf> {
    let py = Command::new("python3")
        .args(["-c", "import sys, sysconfig, os; print(os.path.realpath(sys.executable)); print(sysconfig.get_paths()['stdlib']); print(sysconfig.get_config_var('LIBDIR') or '')"])
        .output()
        .expect("python3 (scripts/test.sh installs it)");
    let out = String::from_utf8(py.stdout).unwrap();
    let mut lines = out.lines();
    let (exe, stdlib, libdir) = (
        lines.next().unwrap(),
        lines.next().unwrap(),
        lines.next().unwrap_or(""),
    );
    let mut files = vec![std::path::PathBuf::from(exe)];
    let skip = [
        "test",
        "site-packages",
        "dist-packages",
        "idlelib",
        "tkinter",
        "ensurepip",
        "lib2to3",
        "turtledemo",
        "unittest",
        "pydoc_data",
    ];
    let mut stack = vec![std::path::PathBuf::from(stdlib)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() && !skip.contains(&name.as_str()) && !name.starts_with("config-") {
                stack.push(p);
            } else if ft.is_file() {
                files.push(p);
            }
        }
    }
    // Shared objects: the interpreter's, the standard library's extension
    // modules' and the function's (awslambdaric's runtime client).
    let mut sos: Vec<std::path::PathBuf> = files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".so") || p.as_os_str() == exe)
        .cloned()
        .collect();
    let mut st = vec![task.to_path_buf()];
    while let Some(d) = st.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                st.push(e.path());
            } else if e.path().to_string_lossy().contains(".so") {
                sos.push(e.path());
            }
        }
    }
    let mut libs = std::collections::BTreeSet::new();
    if !libdir.is_empty() {
        for e in std::fs::read_dir(libdir).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("libpython") && n.contains(".so") {
                libs.insert(e.path());
            }
        }
    }
    for so in sos {
        let o = Command::new("ldd").arg(&so).output().unwrap();
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let path = l
                .split("=>")
                .nth(1)
                .unwrap_or(l)
                .split_whitespace()
                .next()
                .unwrap_or("");
            if path.starts_with('/') && !path.starts_with(&task.display().to_string()) {
                libs.insert(std::path::PathBuf::from(path));
            }
        }
    }
    files.extend(libs);
    files
}

/// An OCI layout of AWS's Python runtime interface client (`awslambdaric`
/// from PyPI) and a handler, on this host's Python, laid out as AWS's
/// guide for images from an alternative base: the client installed with
/// `pip install --target` in the function directory, `ENTRYPOINT [python,
/// -m, awslambdaric]`, `CMD [handler.fn]`, `WORKDIR` the function directory.
pub fn write_python_image(oci: &std::path::Path, work: &std::path::Path) -> Value {
    let task = work.join("task");
    std::fs::create_dir_all(&task).unwrap();
    let pip = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--target",
        ])
        .arg(&task)
        .arg("awslambdaric")
        .output()
        .expect("python3 -m pip");
    assert!(
        pip.status.success(),
        "pip install awslambdaric (needs pip and PyPI; scripts/test.sh installs python3-pip): {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    std::fs::write(
        task.join("handler.py"),
        "import time\n\ncount = 0\n\ndef fn(event, context):\n    global count\n    if isinstance(event, dict) and 'direct' in event:\n        # Calls itself `direct` times in the guest: the benchmark's baseline.\n        t = time.perf_counter()\n        for _ in range(event['direct']):\n            fn(event['event'], context)\n        return {'direct_us': (time.perf_counter() - t) * 1e6 / event['direct']}\n    count += 1\n    print('handling', context.aws_request_id, flush=True)\n    return {'count': count, 'event': event, 'request_id': context.aws_request_id,\n            'function': context.function_name, 'memory': context.memory_limit_in_mb,\n            'time_left': context.get_remaining_time_in_millis() > 0}\n\ndef boom(event, context):\n    raise ValueError('boom ' + str(event))\n",
    )
    .unwrap();
    let files = python_files(&task);
    let exe = files[0].display().to_string();
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    let mut add_dirs = |b: &mut tar::Builder<Vec<u8>>, rel: &std::path::Path| {
        let mut cur = std::path::PathBuf::new();
        for c in rel.parent().into_iter().flat_map(|p| p.components()) {
            cur.push(c);
            if dirs.insert(cur.clone()) {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(1_700_000_000);
                b.append_data(&mut h, &cur, &[][..]).unwrap();
            }
        }
    };
    // Real modification times: the compiled modules (__pycache__) record
    // their sources' and are used only when those match.
    let mut add =
        |b: &mut tar::Builder<Vec<u8>>, rel: std::path::PathBuf, bytes: &[u8], mtime: u64| {
            add_dirs(b, &rel);
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o755);
            h.set_size(bytes.len() as u64);
            h.set_mtime(mtime);
            b.append_data(&mut h, &rel, bytes).unwrap();
        };
    let mtime = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().mtime() as u64
    };
    for d in ["proc", "sys", "dev", "tmp"] {
        add(
            &mut b,
            std::path::PathBuf::from(d).join(".keep"),
            b"",
            1_700_000_000,
        );
    }
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        add(
            &mut b,
            f.strip_prefix("/").unwrap().to_path_buf(),
            &bytes,
            mtime(f),
        );
    }
    let mut st = vec![task.clone()];
    while let Some(d) = st.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                st.push(p);
            } else if e.file_type().unwrap().is_file() {
                let rel = std::path::Path::new("var/task").join(p.strip_prefix(&task).unwrap());
                add(&mut b, rel, &std::fs::read(&p).unwrap(), mtime(&p));
            }
        }
    }
    let layer = b.into_inner().unwrap();
    let config = json!({"Entrypoint": [exe, "-m", "awslambdaric"], "Cmd": ["handler.fn"], "WorkingDir": "/var/task",
                        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]});
    lode_testkit::vm_image::write_layout(oci, &layer, config.clone());
    config
}

/// Pushes the OCI layout at `oci` (ref `latest`) as `t/NAME` to `env`'s
/// store; returns its manifest digest.
pub fn push_layout(env: &Env, oci: &std::path::Path, name: &str) -> String {
    env.lode_ok(&[
        "push",
        &format!("oci:{}:latest", oci.display()),
        "--tenant",
        "t",
        "--name",
        name,
        "--store",
        env.store.to_str().unwrap(),
    ]);
    env.inspect("t", name)["manifest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// What a sandbox's QEMU runs as and reaches, read from `/proc/PID`.
#[derive(Debug)]
pub struct Vmm {
    pub pid: String,
    /// `/proc/PID/status`.
    pub status: String,
    /// `-run-with user=UID:GID`.
    pub run_as: Option<(u32, u32)>,
    /// Its volume socket (`server.path=`).
    pub disk: std::path::PathBuf,
    /// Its Runtime API socket (the relay's argument).
    pub runtime: std::path::PathBuf,
}

impl Vmm {
    /// Real, effective, saved and file-system ids of `Uid:` or `Gid:`.
    pub fn ids(&self, field: &str) -> Vec<u32> {
        self.status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .unwrap_or_else(|| panic!("no {field} in {}", self.status))
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect()
    }
}

/// Every QEMU whose command line names a path under `dir` (one test's
/// sandboxes).
pub fn vmms_under(dir: &std::path::Path) -> Vec<Vmm> {
    let dir = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.starts_with("qemu-system"))
            || !args.iter().any(|a| a.contains(&dir))
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let after = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].clone())
        };
        let run_as = after("-run-with").map(|v| {
            let (u, g) = v.strip_prefix("user=").unwrap().split_once(':').unwrap();
            (u.parse().unwrap(), g.parse().unwrap())
        });
        let blockdev = after("-blockdev").unwrap();
        let disk = blockdev
            .split(',')
            .find_map(|kv| kv.strip_prefix("server.path="))
            .unwrap()
            .into();
        let netdev = after("-netdev").unwrap();
        let runtime = netdev.rsplit('\'').nth(1).unwrap().into();
        out.push(Vmm {
            pid,
            status,
            run_as,
            disk,
            runtime,
        });
    }
    out
}

/// Connects to the unix socket `path` as user `uid` (group `uid`, no
/// others): `Ok` or the errno of the failure.
pub fn connect_as(uid: u32, path: &std::path::Path) -> Result<(), i32> {
    let o = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        // Debian's, not one under /root (e.g. pyenv's shim) that the user
        // cannot reach.
        .args([
            "/usr/bin/python3",
            "-c",
            "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.errno); sys.exit(3)\nprint(0)",
        ])
        .arg(path)
        .output()
        .expect("setpriv (util-linux) and /usr/bin/python3");
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    match (o.status.code(), out.parse::<i32>()) {
        (Some(0), Ok(0)) => Ok(()),
        (Some(3), Ok(errno)) => Err(errno),
        _ => panic!("connect as {uid} to {}: {o:?}", path.display()),
    }
}
