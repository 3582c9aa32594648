//! `lode agent` as a host service: started on a state directory and a
//! control socket, killed, restarted, upgraded; volumes attached through
//! `lode attach`.

use super::{free_port, lode_bin, metrics_text_at, parse_metrics, run_timeout, Env, Out};
use std::collections::HashMap;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `lode agent` process serving one state directory.
pub struct Service {
    child: Option<Child>,
    /// Binary it runs (a copy for an upgrade).
    pub bin: PathBuf,
    pub control: PathBuf,
    pub state: PathBuf,
    pub cache: PathBuf,
    pub overlays: PathBuf,
    pub store: PathBuf,
    pub home: PathBuf,
    pub metrics_addr: String,
    pub log: PathBuf,
    /// Extra arguments of every start.
    pub extra: Vec<String>,
    /// Wrap the command (e.g. `prlimit --nofile=N:N --`).
    pub wrapper: Vec<String>,
}

impl Service {
    /// A service of `env`'s store, not started yet.
    pub fn new(env: &Env, tag: &str) -> Service {
        Service {
            child: None,
            bin: lode_bin().into(),
            control: env.path(&format!("{tag}.ctl")),
            state: env.path(&format!("state-{tag}")),
            cache: env.path(&format!("cache-{tag}")),
            overlays: env.path(&format!("overlays-{tag}")),
            store: env.store.clone(),
            home: env.home.clone(),
            metrics_addr: format!("127.0.0.1:{}", free_port()),
            log: env.path(&format!("service-{tag}.log")),
            extra: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut c = match self.wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        c.env("LODE_HOME", &self.home)
            .env("LODE_LOG", "warn")
            .arg("agent")
            .arg("--control")
            .arg(format!("unix:{}", self.control.display()))
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--store")
            .arg(&self.store)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--overlay-dir")
            .arg(&self.overlays)
            .arg("--metrics")
            .arg(&self.metrics_addr)
            .args(&self.extra);
        c
    }

    /// Starts the agent (without waiting).
    pub fn spawn(&mut self) {
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start lode agent: {e}"));
        self.child = Some(child);
    }

    /// Starts the agent and waits until its control API answers.
    pub fn start(&mut self) -> &mut Self {
        self.spawn();
        self.wait_ready(Duration::from_secs(60));
        self
    }

    /// Waits until the control socket accepts (the volumes are restored then).
    pub fn wait_ready(&mut self, limit: Duration) {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("lode agent exited ({st}); log:\n{}", self.log_text());
            }
            if self.ready() {
                return;
            }
            assert!(
                t.elapsed() < limit,
                "agent not ready after {limit:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the control socket answers `/v1/health`.
    pub fn ready(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = UnixStream::connect(&self.control) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut b = String::new();
        let _ = s.read_to_string(&mut b);
        b.starts_with("HTTP/1.1 200")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` (`TERM`, `INT`) and waits for the exit; returns the status.
    pub fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(c.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
        let t = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if t.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                panic!(
                    "agent did not exit within 60 s of SIG{sig}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes the child over from `other` (an upgrade: the new process waits
    /// for the state directory, the old one exits on SIGTERM).
    pub fn take_over_from(&mut self, other: &mut Service) {
        let ready_before = self.log_text().matches("lode agent ready").count();
        self.spawn();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            self.log_text().matches("lode agent ready").count(),
            ready_before,
            "the new agent served while the old one held the state directory"
        );
        let st = other.signal("TERM");
        assert!(
            st.success(),
            "old agent exited with {st}; log:\n{}",
            other.log_text()
        );
        let t = Instant::now();
        while self.log_text().matches("lode agent ready").count() == ready_before {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "new agent not ready; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.wait_ready(Duration::from_secs(60));
    }

    /// Panics if the agent exited.
    pub fn assert_alive(&mut self) {
        let st = self.child.as_mut().expect("running").try_wait().unwrap();
        assert!(
            st.is_none(),
            "lode agent died ({st:?}); log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `lode ARGS --agent CONTROL`.
    pub fn lode(&self, args: &[&str]) -> Out {
        let mut c = Command::new(lode_bin());
        c.env("LODE_HOME", &self.home)
            .args(args)
            .arg("--agent")
            .arg(&self.control);
        run_timeout(&mut c, Duration::from_secs(150))
    }

    /// `lode attach ARGS`, parsed.
    pub fn attach(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["attach"];
        a.extend_from_slice(args);
        let o = self.lode(&a).ok();
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("attach output is not JSON ({e}): {o:?}"))
    }

    /// `lode detach ID`.
    pub fn detach(&self, id: &str) {
        self.lode(&["detach", id]).ok();
    }

    /// `lode volumes --json`.
    pub fn volumes(&self) -> Vec<serde_json::Value> {
        let o = self.lode(&["volumes", "--json"]).ok();
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("volumes --json ({e}): {o:?}"))
    }

    /// One raw HTTP request on the control socket: (status, body).
    pub fn http(&self, request: &[u8]) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = UnixStream::connect(&self.control).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = s.write_all(request);
        let mut b = Vec::new();
        let _ = s.read_to_end(&mut b);
        let text = String::from_utf8_lossy(&b).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// All samples of the agent's metrics: `name{labels}` → value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        parse_metrics(&metrics_text_at(&self.metrics_addr))
    }

    /// Open file descriptors of the agent process.
    pub fn fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|r| r.count())
            .unwrap_or(0)
    }

    /// Resident memory of the agent process, bytes.
    pub fn rss(&self) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    /// Files in a directory of the state (`sockets`, `volumes`).
    pub fn state_files(&self, sub: &str) -> Vec<String> {
        list(&self.state.join(sub))
    }
}

/// Visible file names in `dir` (sorted).
pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- agent log {} ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}
