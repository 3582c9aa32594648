//! `lode cache-node`: stores stripes by key in memory and, optionally, on disk.
//!
//! HTTP/2 (and HTTP/1.1 for tools like curl) over TCP:
//! `GET /s/<key>` → 200 with the stripe or 404; `HEAD /s/<key>`; `PUT /s/<key>`
//! (body ≤ 1 MiB) → 204; `GET /health` → 200 `ok`; `GET /metrics` →
//! Prometheus text. Keys are 1–128 of `[0-9a-z.:_-]`, not starting with `.`. Memory evictions move
//! stripes to the disk tier; disk hits move them back. Both tiers are bounded
//! and evict by LRU-2.

use crate::lru2::Lru2;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use lode_cache::Histogram;
use std::collections::HashMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest stripe accepted.
pub const MAX_STRIPE: usize = 1 << 20;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 1024;

/// Checks a stripe key: 1–128 of `[0-9a-z.:_-]`, not starting with `.`
/// (the disk tier uses keys as file names: no `.`, `..` or temp names).
pub fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && !k.starts_with('.')
        && k.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b".:_-".contains(&b))
}

#[derive(Debug, Default)]
struct NodeMetrics {
    gets: AtomicU64,
    hits_memory: AtomicU64,
    hits_disk: AtomicU64,
    misses: AtomicU64,
    puts: AtomicU64,
    rejected: AtomicU64,
    get_latency: Histogram,
}

#[derive(Debug)]
struct Disk {
    dir: PathBuf,
    policy: Mutex<Lru2<String>>,
}

/// The stripes of one cache node.
#[derive(Debug)]
pub struct NodeStore {
    mem: Mutex<(Lru2<String>, HashMap<String, Bytes>)>,
    disk: Option<Disk>,
    metrics: NodeMetrics,
}

impl NodeStore {
    /// A store with `memory` bytes of RAM and an optional `(dir, bytes)` disk tier
    /// (indexed from what a previous run left there).
    pub fn new(memory: u64, disk: Option<(PathBuf, u64)>) -> std::io::Result<Self> {
        let disk = match disk {
            None => None,
            Some((dir, size)) => {
                std::fs::create_dir_all(&dir)?;
                let mut policy = Lru2::new(size);
                for e in std::fs::read_dir(&dir)? {
                    let e = e?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if valid_key(&name) && e.file_type()?.is_file() {
                        for gone in policy.insert(name, e.metadata()?.len()) {
                            let _ = std::fs::remove_file(dir.join(gone));
                        }
                    } else {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
                Some(Disk {
                    dir,
                    policy: Mutex::new(policy),
                })
            }
        };
        Ok(NodeStore {
            mem: Mutex::new((Lru2::new(memory), HashMap::new())),
            disk,
            metrics: NodeMetrics::default(),
        })
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, (Lru2<String>, HashMap<String, Bytes>)> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a stripe.
    pub fn put(&self, key: String, value: Bytes) {
        self.metrics.puts.fetch_add(1, Ordering::Relaxed);
        let demoted: Vec<(String, Bytes)> = {
            let mut g = self.mem();
            let evicted = g.0.insert(key.clone(), value.len() as u64);
            let mut out = Vec::new();
            for e in evicted {
                if e == key {
                    out.push((key.clone(), value.clone()));
                } else if let Some(v) = g.1.remove(&e) {
                    out.push((e, v));
                }
            }
            if g.0.contains(&key) {
                g.1.insert(key, value);
            }
            out
        };
        if let Some(d) = &self.disk {
            for (k, v) in demoted {
                let tmp = d.dir.join(format!(".tmp-{k}"));
                if std::fs::write(&tmp, &v)
                    .and_then(|_| std::fs::rename(&tmp, d.dir.join(&k)))
                    .is_ok()
                {
                    let gone = d
                        .policy
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(k, v.len() as u64);
                    for g in gone {
                        let _ = std::fs::remove_file(d.dir.join(g));
                    }
                }
            }
        }
    }

    /// Looks a stripe up.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        let t = Instant::now();
        self.metrics.gets.fetch_add(1, Ordering::Relaxed);
        {
            let mut g = self.mem();
            if let Some(v) = g.1.get(key).cloned() {
                g.0.touch(&key.to_string());
                drop(g);
                self.metrics.hits_memory.fetch_add(1, Ordering::Relaxed);
                self.metrics.get_latency.observe(t.elapsed());
                return Some(v);
            }
        }
        if let Some(d) = &self.disk {
            let known = d
                .policy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .touch(&key.to_string());
            if known {
                if let Ok(v) = std::fs::read(d.dir.join(key)) {
                    self.metrics.hits_disk.fetch_add(1, Ordering::Relaxed);
                    self.metrics.get_latency.observe(t.elapsed());
                    return Some(Bytes::from(v));
                }
            }
        }
        self.metrics.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = &self.metrics;
        for (n, v) in [
            ("lode_node_gets_total", &m.gets),
            ("lode_node_hits_memory_total", &m.hits_memory),
            ("lode_node_hits_disk_total", &m.hits_disk),
            ("lode_node_misses_total", &m.misses),
            ("lode_node_puts_total", &m.puts),
            ("lode_node_rejected_total", &m.rejected),
        ] {
            let _ = writeln!(out, "{n} {}", v.load(Ordering::Relaxed));
        }
        m.get_latency
            .render(&mut out, "lode_node_get_seconds", "tier=\"any\"");
        let g = self.mem();
        let _ = writeln!(out, "lode_node_bytes{{tier=\"memory\"}} {}", g.0.weight());
        let _ = writeln!(out, "lode_node_stripes{{tier=\"memory\"}} {}", g.0.len());
        drop(g);
        if let Some(d) = &self.disk {
            let p = d.policy.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(out, "lode_node_bytes{{tier=\"disk\"}} {}", p.weight());
            let _ = writeln!(out, "lode_node_stripes{{tier=\"disk\"}} {}", p.len());
        }
        out
    }
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}

/// Handles one request.
pub async fn handle(
    store: Arc<NodeStore>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/health" {
        return Ok(respond(StatusCode::OK, Bytes::from_static(b"ok\n")));
    }
    if path == "/metrics" {
        return Ok(respond(StatusCode::OK, Bytes::from(store.render())));
    }
    let Some(key) = path.strip_prefix("/s/").filter(|k| valid_key(k)) else {
        store.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        return Ok(respond(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"bad key\n"),
        ));
    };
    let key = key.to_string();
    Ok(match method {
        Method::GET => match store.get(&key) {
            Some(v) => respond(StatusCode::OK, v),
            None => respond(StatusCode::NOT_FOUND, Bytes::new()),
        },
        Method::HEAD => match store.get(&key) {
            Some(v) => {
                let mut r = respond(StatusCode::OK, Bytes::new());
                r.headers_mut()
                    .insert(hyper::header::CONTENT_LENGTH, v.len().into());
                r
            }
            None => respond(StatusCode::NOT_FOUND, Bytes::new()),
        },
        Method::PUT => {
            let body = Limited::new(req.into_body(), MAX_STRIPE);
            match tokio::time::timeout(Duration::from_secs(10), body.collect()).await {
                Ok(Ok(b)) => {
                    store.put(key, b.to_bytes());
                    respond(StatusCode::NO_CONTENT, Bytes::new())
                }
                _ => {
                    store.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    respond(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Bytes::from_static(b"stripe too large or too slow\n"),
                    )
                }
            }
        }
        _ => respond(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    })
}

/// Serves `store` on `listener` until the future is dropped. At most
/// [`MAX_CONNECTIONS`] at once; HTTP/2 keep-alive pings drop dead peers, and a
/// connection must finish each HTTP/1 request header within 10 s.
pub async fn serve(listener: tokio::net::TcpListener, store: Arc<NodeStore>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let store = store.clone();
        tokio::spawn(async move {
            serve_connection(sock, store).await;
            drop(permit);
        });
    }
}

/// Serves one client connection (HTTP/2 or HTTP/1.1) to its end.
pub async fn serve_connection<S>(io: S, store: Arc<NodeStore>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(store.clone(), req));
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(256);
    let _ = b
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_spills_to_disk_and_back() {
        let d = tempfile::tempdir().unwrap();
        let s = NodeStore::new(100, Some((d.path().to_path_buf(), 1000))).unwrap();
        for i in 0..5 {
            s.put(format!("k{i}"), Bytes::from(vec![i as u8; 40]));
        }
        for i in 0..5 {
            assert_eq!(s.get(&format!("k{i}")).map(|b| b[0]), Some(i as u8), "k{i}");
        }
        assert!(s.render().contains("lode_node_hits_disk_total"));
        assert!(!valid_key("../x") && valid_key("ab.1"));
    }

    /// Found by fuzzing (fleet_node_request): `.` and `..` were valid keys,
    /// which the disk tier turns into file names (`dir/..`); the failed
    /// rename left `.tmp-..` behind, itself a valid key on the next start.
    #[test]
    fn keys_are_plain_file_names() {
        for k in [".", "..", ".tmp-ab.1", ".hidden"] {
            assert!(!valid_key(k), "{k}");
        }
        let d = tempfile::tempdir().unwrap();
        let s = NodeStore::new(0, Some((d.path().to_path_buf(), 1000))).unwrap();
        assert!(valid_key("a..b") && valid_key("0.4"));
        s.put("0.4".into(), Bytes::from_static(b"x"));
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["0.4"]);
    }
}
