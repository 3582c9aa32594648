//! A real registry for the `docker://` tests: Debian's `docker-registry`
//! (the CNCF distribution registry) on loopback with TLS from a test CA and
//! htpasswd basic auth, images put in with real `skopeo copy`, and a TCP
//! proxy in front of it that injects faults (cut a blob download, kill the
//! registry mid-download, stop answering).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
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
        assert!(
            Instant::now() < deadline,
            "registry at {addr} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Registry {
    /// Starts a registry storing under `dir`, with TLS and basic auth.
    pub fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, None)
    }

    /// Starts a registry storing under `dir`, with TLS and, with `token`,
    /// bearer-token auth from that endpoint instead of basic auth.
    pub fn start_with(dir: &Path, token: Option<&TokenServer>) -> Registry {
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
        let auth = match token {
            None => format!(
                "  htpasswd:\n    realm: lode-test\n    path: {}\n",
                htpasswd.display()
            ),
            Some(t) => format!(
                "  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                t.realm,
                t.cert.display()
            ),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {}\n    key: {}\nauth:\n{auth}",
            dir.join("data").display(),
            tls.server_cert.display(),
            tls.server_key.display(),
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

pub use lode_testkit::proxy::Fault;

/// A TCP proxy on loopback in front of the registry (TLS passes through):
/// [`lode_testkit::proxy::Proxy`] with a fault.
pub struct FaultProxy {
    pub addr: String,
    /// Whether the fault happened.
    pub fired: Arc<AtomicBool>,
    _proxy: lode_testkit::proxy::Proxy,
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
        let opts = lode_testkit::proxy::LinkOptions {
            fault: Some((after, fault)),
            kill: Some(Arc::new(kill)),
            ..Default::default()
        };
        let p = lode_testkit::proxy::Proxy::start("127.0.0.1:0", upstream, opts).unwrap();
        FaultProxy {
            addr: p.addr.clone(),
            fired: p.fired.clone(),
            _proxy: p,
        }
    }

    /// `docker://PROXY/REPO:TAG`.
    pub fn source(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.addr)
    }
}

/// A token endpoint for the registry's `auth: token` (the Docker token
/// flow): checks basic credentials on a GET, or on a POST the OAuth2
/// `grant_type=refresh_token` form with [`REFRESH_TOKEN`], grants the scope
/// asked for, and issues
/// RS256 JWTs signed (by `openssl dgst`) with a test key whose self-signed
/// certificate the registry trusts (`rootcertbundle`; the certificate rides
/// in the `x5c` header). Tokens live `life_secs`.
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`.
    pub realm: String,
    /// The certificate the registry must trust.
    pub cert: PathBuf,
    /// Tokens issued.
    pub issued: Arc<AtomicU64>,
    /// Requests refused for bad or missing credentials.
    pub refused: Arc<AtomicU64>,
    /// Tokens issued for a refresh token (OAuth2 POST).
    pub refreshed: Arc<AtomicU64>,
}

/// The refresh token (an auth file's `identitytoken`) the endpoint accepts.
pub const REFRESH_TOKEN: &str = "lode-test-refresh-token-7f3a";

/// The `service` and `issuer` the registry is configured with.
pub const TOKEN_SERVICE: &str = "lode-test-registry";
const TOKEN_ISSUER: &str = "lode-test-issuer";

fn b64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn b64std(b: &[u8]) -> String {
    b64url(b).replace('-', "+").replace('_', "/")
        + match b.len() % 3 {
            1 => "==",
            2 => "=",
            _ => "",
        }
}

impl TokenServer {
    /// Starts the endpoint; keys and certificate go to `dir`.
    pub fn start(dir: &Path, life_secs: u64) -> TokenServer {
        std::fs::create_dir_all(dir).unwrap();
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let o = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=lode test token issuer"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(o.status.success(), "openssl: {o:?}");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .stdout;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let issued = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let refreshed = Arc::new(AtomicU64::new(0));
        let (iss, refd, refr) = (issued.clone(), refused.clone(), refreshed.clone());
        let want_auth = format!("Basic {}", b64std(format!("{USER}:{PASSWORD}").as_bytes()));
        let dir = dir.to_owned();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head_len = req
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(req.len(), |i| i + 4);
                let text = String::from_utf8_lossy(&req[..head_len]).into_owned();
                let body_len: usize = text
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let mut body = req[head_len..].to_vec();
                while body.len() < body_len.min(1 << 16) {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&buf[..n]),
                    }
                }
                let body = String::from_utf8_lossy(&body).into_owned();
                let post = text.starts_with("POST ");
                let target = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                // The parameters: the query of a GET, the form of a POST.
                let params = if post {
                    body.clone()
                } else {
                    target.split_once('?').map_or("", |(_, q)| q).to_owned()
                };
                let authorized = if post {
                    let form: Vec<&str> = params.split('&').collect();
                    form.contains(&"grant_type=refresh_token")
                        && form.contains(&format!("refresh_token={REFRESH_TOKEN}").as_str())
                        && form.iter().any(|p| p.starts_with("client_id="))
                } else {
                    text.lines().any(|l| {
                        l.split_once(':').is_some_and(|(k, v)| {
                            k.eq_ignore_ascii_case("authorization") && v.trim() == want_auth
                        })
                    })
                };
                if !authorized {
                    refd.fetch_add(1, Ordering::Relaxed);
                    let _ = conn.write_all(
                        b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 24\r\nConnection: close\r\n\r\n{\"details\":\"bad creds\"}\n",
                    );
                    continue;
                }
                // Grant every repository scope asked for.
                let mut access = Vec::new();
                for pair in params.split('&') {
                    if let Some(scope) = pair.strip_prefix("scope=") {
                        let scope = scope
                            .replace("%3A", ":")
                            .replace("%2F", "/")
                            .replace("%2C", ",");
                        let parts: Vec<&str> = scope.splitn(3, ':').collect();
                        if let [kind, name, actions] = parts[..] {
                            access.push(format!(
                                r#"{{"type":"{kind}","name":"{name}","actions":[{}]}}"#,
                                actions
                                    .split(',')
                                    .map(|a| format!("\"{a}\""))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            ));
                        }
                    }
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let n = iss.fetch_add(1, Ordering::Relaxed);
                if post {
                    refr.fetch_add(1, Ordering::Relaxed);
                }
                let header = format!(
                    r#"{{"typ":"JWT","alg":"RS256","x5c":["{}"]}}"#,
                    b64std(&der)
                );
                let claims = format!(
                    r#"{{"iss":"{TOKEN_ISSUER}","sub":"{USER}","aud":"{TOKEN_SERVICE}","exp":{},"nbf":{},"iat":{now},"jti":"lode-{n}","access":[{}]}}"#,
                    now + life_secs,
                    now - 10,
                    access.join(",")
                );
                let signing_input = format!(
                    "{}.{}",
                    b64url(header.as_bytes()),
                    b64url(claims.as_bytes())
                );
                let input_file = dir.join(format!("input-{n}"));
                std::fs::write(&input_file, &signing_input).unwrap();
                let sig = Command::new("openssl")
                    .args(["dgst", "-sha256", "-sign"])
                    .arg(dir.join("token-key.pem"))
                    .arg(&input_file)
                    .output()
                    .unwrap()
                    .stdout;
                let _ = std::fs::remove_file(&input_file);
                // The OAuth2 answer names it access_token.
                let field = if post { "access_token" } else { "token" };
                let body = format!(
                    r#"{{"{field}":"{signing_input}.{}","expires_in":{life_secs}}}"#,
                    b64url(&sig)
                );
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        TokenServer {
            realm,
            cert,
            issued,
            refused,
            refreshed,
        }
    }
}

/// One scripted answer of [`HostileRegistry`].
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// `status` with `body` and headers.
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.into(),
        }
    }
}

/// A misbehaving registry for failure injection: plain HTTP on loopback,
/// answering each path with a scripted [`Answer`] (404 otherwise), one
/// request per connection.
pub struct HostileRegistry {
    pub addr: String,
    /// Requests seen, as `METHOD PATH`.
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl HostileRegistry {
    /// Serves `answers` (path → answer); `/v2/` answers 200.
    pub fn start(answers: Vec<(String, Answer)>) -> HostileRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let answers = answers.clone();
                let seen = s2.clone();
                std::thread::spawn(move || {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                        if !req.first().is_some_and(u8::is_ascii_uppercase) {
                            return; // not HTTP (a TLS hello): close at once
                        }
                    }
                    let text = String::from_utf8_lossy(&req).into_owned();
                    let mut first = text.lines().next().unwrap_or("").split_whitespace();
                    let (Some(method), Some(path)) = (first.next(), first.next()) else {
                        return; // not HTTP (e.g. a TLS hello): close
                    };
                    seen.lock().unwrap().push(format!("{method} {path}"));
                    let answer = if path == "/v2/" {
                        Answer::new(200, &[], "{}")
                    } else {
                        answers
                            .iter()
                            .find(|(p, _)| p == path)
                            .map(|(_, a)| a.clone())
                            .unwrap_or_else(|| Answer::new(404, &[], "{}"))
                    };
                    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", answer.status);
                    let mut has_len = false;
                    for (k, v) in &answer.headers {
                        has_len |= k.eq_ignore_ascii_case("content-length");
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    if !has_len {
                        head.push_str(&format!("Content-Length: {}\r\n", answer.body.len()));
                    }
                    head.push_str("\r\n");
                    let _ = conn.write_all(head.as_bytes());
                    if method != "HEAD" {
                        let _ = conn.write_all(&answer.body);
                    }
                });
            }
        });
        HostileRegistry { addr, seen }
    }

    /// `docker://127.0.0.1:PORT/REPO_TAG`.
    pub fn source(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.addr)
    }
}
