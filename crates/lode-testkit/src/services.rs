//! Real services the tests run on loopback: a `memcached` process, a free
//! port, a check that a tool is installed. Shared by lode-cli's fleet tests
//! and the tier conformance suite of lode-fleet. Test support: a failure
//! to start is a panic.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails the test unless `tool` is on PATH (CI installs it via scripts/test.sh).
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: install the Debian package `{package}` (scripts/test.sh does)"
    );
}

/// A port on 127.0.0.1 free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A memcached process (`-I 1m -m 256 -U 0`); SIGKILLed on drop.
pub struct Memcached {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Memcached {
    /// Starts memcached on a free port and waits until it answers.
    pub fn start() -> Memcached {
        require_tool("memcached", "memcached");
        for attempt in 0..3 {
            let port = free_port();
            let mut cmd = Command::new("memcached");
            cmd.args([
                "-p",
                &port.to_string(),
                "-l",
                "127.0.0.1",
                "-I",
                "1m",
                "-m",
                "256",
                "-U",
                "0",
            ]);
            // memcached refuses to run as root without -u.
            if is_root() {
                cmd.args(["-u", "root"]);
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let addr = format!("127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(st) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                    if attempt < 2 && err.contains("bind") {
                        break;
                    }
                    panic!("memcached exited ({st}): {err}");
                }
                if let Ok(mut s) = TcpStream::connect(&addr) {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut b = [0u8; 64];
                    if s.write_all(b"version\r\n").is_ok()
                        && s.read(&mut b).is_ok_and(|n| b[..n].starts_with(b"VERSION"))
                    {
                        return Memcached {
                            child: Some(child),
                            addr,
                        };
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "memcached on {addr} did not come up"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unreachable!()
    }

    /// SIGKILLs it (once).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `stats` counters (`get_hits`, `curr_items`, ...).
    pub fn stats(&self) -> HashMap<String, f64> {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"stats\r\n").unwrap();
        let mut text = String::new();
        let mut b = [0u8; 4096];
        while !text.ends_with("END\r\n") {
            let n = s.read(&mut b).unwrap();
            assert!(n > 0, "memcached closed during stats");
            text.push_str(&String::from_utf8_lossy(&b[..n]));
        }
        text.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some("STAT")).then_some(())?;
                let k = it.next()?;
                Some((k.to_string(), it.next()?.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
