//! A real registry for the `docker://` tests: Debian's `docker-registry`
//! (the CNCF distribution registry) on loopback with TLS from a test CA and
//! htpasswd basic auth, images put in with real `skopeo copy`, and a TCP
//! proxy in front of it that injects faults (cut a blob download, kill the
//! registry mid-download, stop answering).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common_agent::{require_tool, tls_certs, TlsFiles};

/// The user and password the registry accepts.
pub const USER: &str = "alice";
/// The password of [`USER`].
pub const PASSWORD: &str = "correct horse";

/// A running `docker-registry serve`, killed on drop.
pub struct Registry {
    child: Arc<Mutex<Option<Child>>>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub dir: PathBuf,
    pub tls: TlsFiles,
    /// A `--cert-dir` trusting the test CA.
    pub cert_dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "registry at {addr} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Registry {
    /// Starts a registry storing under `dir`, with TLS and basic auth.
    pub fn start(dir: &Path) -> Registry {
        require_tool("docker-registry", "docker-registry");
        require_tool("htpasswd", "apache2-utils");
        require_tool("skopeo", "skopeo");
        std::fs::create_dir_all(dir).unwrap();
        let tls = tls_certs(&dir.join("tls"));
        let cert_dir = dir.join("certs.d");
        std::fs::create_dir_all(&cert_dir).unwrap();
        std::fs::copy(&tls.ca, cert_dir.join("ca.crt")).unwrap();
        let htpasswd = dir.join("htpasswd");
        let o = Command::new("htpasswd")
            .args(["-Bbc", htpasswd.to_str().unwrap(), USER, PASSWORD])
            .output()
            .unwrap();
        assert!(o.status.success(), "htpasswd: {o:?}");
        let addr = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: lode-test\n    path: {}\n",
            dir.join("data").display(),
            tls.server_cert.display(),
            tls.server_key.display(),
            htpasswd.display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        wait_listening(&addr);
        Registry {
            child: Arc::new(Mutex::new(Some(child))),
            addr,
            dir: dir.to_owned(),
            tls,
            cert_dir,
        }
    }

    /// Copies `src` (a skopeo source, e.g. `oci:DIR:latest`) to `REPO:TAG`
    /// here with `skopeo copy` (`--all` keeps a whole index).
    pub fn put(&self, src: &str, repo_tag: &str, all: bool) {
        let mut c = Command::new("skopeo");
        c.arg("copy").arg("--quiet");
        if all {
            c.arg("--all");
        }
        c.arg("--dest-cert-dir")
            .arg(&self.cert_dir)
            .arg("--dest-creds")
            .arg(format!("{USER}:{PASSWORD}"))
            .arg(src)
            .arg(format!("docker://{}/{repo_tag}", self.addr));
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "skopeo copy {src} {repo_tag}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// A handle that kills the registry (for the fault proxy).
    pub fn killer(&self) -> impl Fn() + Send + Sync + 'static {
        let child = self.child.clone();
        move || {
            if let Some(mut c) = child.lock().unwrap().take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// `docker://127.0.0.1:PORT/REPO:TAG`.
    pub fn source(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        (self.killer())();
    }
}

/// What the proxy does once `after` bytes went from the registry to lode
/// on one connection carrying more than that.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Close that connection (once); later connections pass.
    CutOnce,
    /// Kill the registry and close every connection.
    KillRegistry,
    /// Stop forwarding on that connection and every later one (the
    /// connections stay open: the registry "stops answering").
    Stall,
}

/// A TCP proxy on loopback in front of the registry (TLS passes through).
pub struct FaultProxy {
    pub addr: String,
    stop: Arc<AtomicBool>,
    /// Whether the fault happened.
    pub fired: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Proxies to `upstream`, injecting `fault` after `after` bytes of a
    /// response on one connection (`kill` kills the registry).
    pub fn start(
        upstream: &str,
        after: u64,
        fault: Fault,
        kill: impl Fn() + Send + Sync + 'static,
    ) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let kill: Arc<dyn Fn() + Send + Sync> = Arc::new(kill);
        let upstream = upstream.to_owned();
        let (s, f) = (stop.clone(), fired.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(&upstream) else {
                    let _ = down.shutdown(Shutdown::Both);
                    continue;
                };
                let stalled = matches!(fault, Fault::Stall) && f.load(Ordering::Relaxed);
                if stalled {
                    // Hold the connection open, answer nothing.
                    std::thread::spawn(move || {
                        let _keep = (down, up);
                        std::thread::sleep(Duration::from_secs(600));
                    });
                    continue;
                }
                let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || pump(d2, u2, None));
                let (f2, k2) = (f.clone(), kill.clone());
                std::thread::spawn(move || {
                    let counted = Counted {
                        after,
                        fault,
                        fired: f2,
                        kill: k2,
                        seen: AtomicU64::new(0),
                    };
                    pump(up, down, Some(counted));
                });
            }
        });
        FaultProxy { addr, stop, fired }
    }

    /// `docker://PROXY/REPO:TAG`.
    pub fn source(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Counted {
    after: u64,
    fault: Fault,
    fired: Arc<AtomicBool>,
    kill: Arc<dyn Fn() + Send + Sync>,
    seen: AtomicU64,
}

/// Copies `from` to `to` until EOF; with `counted`, injects its fault.
fn pump(mut from: TcpStream, mut to: TcpStream, counted: Option<Counted>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(c) = &counted {
            let seen = c.seen.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            let first = !c.fired.load(Ordering::Relaxed);
            let due = seen > c.after && (first || matches!(c.fault, Fault::Stall));
            if due {
                c.fired.store(true, Ordering::Relaxed);
                match c.fault {
                    Fault::CutOnce => break,
                    Fault::KillRegistry => {
                        (c.kill)();
                        break;
                    }
                    Fault::Stall => {
                        std::thread::sleep(Duration::from_secs(600));
                        break;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
