//! S3 test harness: a moto S3-compatible server as a child process.
//!
//! Shared by the lode-store and lode-cli integration tests (the CLI tests
//! include this file with `#[path]`). Each [`MotoServer`] is a private
//! `moto_server` on a free localhost port, killed when dropped.
//!
//! moto is found as, in order: `$LODE_MOTO_SERVER` (a command), `moto_server`
//! on `PATH`, `/opt/lode-test-venv/bin/moto_server` (where `scripts/test.sh`
//! installs it), `python3 -m moto.server`. When none works the test FAILS: CI
//! installs moto through `scripts/test.sh`, so a missing server is an error in
//! the environment, never a reason to skip.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/test.sh` installs moto when it is not on `PATH`.
pub const MOTO_VENV: &str = "/opt/lode-test-venv";

/// Credentials the tests give to moto (it accepts any).
pub const AWS_KEY_ID: &str = "lode-test-key";
/// Secret for [`AWS_KEY_ID`].
pub const AWS_SECRET: &str = "lode-test-secret";
/// Region.
pub const AWS_REGION: &str = "us-east-1";

const MISSING: &str =
    "moto S3 server not found: run scripts/test.sh (it installs `moto[server]`), \
or `pip install 'moto[server]'`, or set LODE_MOTO_SERVER to a moto_server command";

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The command line that starts moto, without host and port.
fn moto_command() -> Vec<String> {
    if let Some(c) = std::env::var_os("LODE_MOTO_SERVER").filter(|c| !c.is_empty()) {
        return c
            .to_string_lossy()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
    }
    if let Some(p) = on_path("moto_server") {
        return vec![p.display().to_string()];
    }
    let venv = Path::new(MOTO_VENV).join("bin/moto_server");
    if is_executable(&venv) {
        return vec![venv.display().to_string()];
    }
    let importable = Command::new("python3")
        .args(["-c", "import moto.server, flask"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if importable {
        return vec!["python3".into(), "-m".into(), "moto.server".into()];
    }
    panic!("{MISSING}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

/// Sends one HTTP/1.1 request to moto and returns (status, body). No
/// dependencies: raw text over a TCP stream, `Connection: close`.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    // moto does not check signatures, but it treats a request without an
    // Authorization header as anonymous (and private objects are then 403).
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         Content-Type: application/octet-stream\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/20250101/{AWS_REGION}/s3/aws4_request, \
         SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {text:.200}"),
            )
        })?;
    let body_at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(resp.len(), |p| p + 4);
    Ok((status, resp[body_at..].to_vec()))
}

/// A running moto server; killed on drop.
pub struct MotoServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
    _logdir: Option<tempfile::TempDir>,
}

impl MotoServer {
    /// Starts a private moto server and waits until it answers (fails the
    /// test with moto's own output if it does not within 90 s).
    pub fn start() -> MotoServer {
        let cmd = moto_command();
        let logdir = tempfile::Builder::new()
            .prefix("lode-moto-")
            .tempdir()
            .unwrap();
        let mut last_err = String::new();
        // A port picked free can be taken before moto binds it: a few tries.
        for _attempt in 0..3 {
            let port = free_port();
            let log = logdir.path().join(format!("moto-{port}.log"));
            let logf = std::fs::File::create(&log).unwrap();
            let child = Command::new(&cmd[0])
                .args(&cmd[1..])
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(logf.try_clone().unwrap())
                .stderr(logf)
                .spawn();
            let child = match child {
                Ok(c) => c,
                Err(e) => panic!("{MISSING} (starting {cmd:?}: {e})"),
            };
            let mut server = MotoServer {
                child,
                port,
                log,
                _logdir: None,
            };
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                if let Ok(Some(status)) = server.child.try_wait() {
                    last_err =
                        format!("moto ({cmd:?}) exited with {status}: {}", server.log_text());
                    break;
                }
                if let Ok((code, _)) = http(port, "GET", "/", b"") {
                    if code < 500 {
                        server._logdir = Some(logdir);
                        return server;
                    }
                }
                if Instant::now() > deadline {
                    panic!(
                        "moto ({cmd:?}) did not answer on port {port} within 90 s: {}",
                        server.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("could not start moto: {last_err}");
    }

    /// moto's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (path-style `PUT /bucket`).
    pub fn create_bucket(&self, bucket: &str) {
        let (code, body) = http(self.port, "PUT", &format!("/{bucket}"), b"").expect("PUT bucket");
        assert_eq!(
            code,
            200,
            "creating bucket {bucket}: HTTP {code}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// The AWS environment that points an S3 client at this server.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", AWS_KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET.to_string()),
            ("AWS_REGION", AWS_REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
    }

    /// Points this process's own S3 clients at this server: sets
    /// [`MotoServer::aws_env`] and clears the variables that would override
    /// it. For tests that call `Store::open` in-process; call it before any
    /// S3 client exists, from the only test of the binary that touches the
    /// environment.
    pub fn point_process_env(&self) {
        for (k, v) in self.aws_env() {
            std::env::set_var(k, v);
        }
        for k in [
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_ENDPOINT",
            "AWS_DEFAULT_REGION",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        ] {
            std::env::remove_var(k);
        }
    }

    /// Object keys in `bucket` under `prefix` (ListObjectsV2, all pages).
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = format!("/{bucket}?list-type=2&prefix={prefix}");
            if let Some(t) = &token {
                q.push_str(&format!("&continuation-token={}", encode_query(t)));
            }
            let (code, body) = http(self.port, "GET", &q, b"").expect("list objects");
            let text = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(code, 200, "listing {bucket}: {text}");
            keys.extend(xml_values(&text, "Key"));
            token = xml_values(&text, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none() {
                return keys;
            }
        }
    }

    /// Reads one object's bytes.
    pub fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let (code, body) =
            http(self.port, "GET", &format!("/{bucket}/{key}"), b"").expect("get object");
        assert_eq!(
            code,
            200,
            "GET {bucket}/{key}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    /// Overwrites one object's bytes.
    pub fn put_object(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let (code, body) =
            http(self.port, "PUT", &format!("/{bucket}/{key}"), bytes).expect("put object");
        assert_eq!(
            code,
            200,
            "PUT {bucket}/{key}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}

fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(
            after[..j]
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\""),
        );
        rest = &after[j + close.len()..];
    }
    out
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
