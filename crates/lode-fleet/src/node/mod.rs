//! `lode cache-node`: stores stripes by key in memory and, optionally, on disk.
//!
//! HTTP/2 (and HTTP/1.1 for tools like curl) over TCP:
//! `GET /s/<key>` → 200 with the stripe or 404; `HEAD /s/<key>`; `PUT /s/<key>`
//! (body ≤ 1 MiB) → 204; `GET /health` → 200 `ok`; `GET /metrics` →
//! Prometheus text; fill leases on `/l/<key>` ([`lease`]). Keys are 1–128 of `[0-9a-z.:_-]`, not starting with `.`.
//! Memory evictions move stripes to the disk tier; disk hits move them back.
//! Both tiers are bounded and evict by LRU-2 ([`store`]).
//!
//! Clients are not trusted to behave: every connection has a first-byte and
//! an idle timeout, connections are capped with the longest-idle shed first,
//! accept errors are survived with back-off ([`serve`]), and request bodies
//! in progress share one memory budget ([`body`]). Every bound is in
//! [`Limits`].

pub mod body;
pub mod lease;
pub mod serve;
pub mod store;

pub use body::{BodyBudget, BodyError};
pub use store::{DiskError, NodeStore, MARKER};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use lode_common::prom;
use serve::{Closed, Registry};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest stripe accepted.
pub const MAX_STRIPE: usize = 1 << 20;
/// Default cap on connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Concurrent HTTP/2 streams per connection.
pub const MAX_STREAMS: u32 = 256;
/// HTTP/2 flow-control window, per stream and per connection: what a
/// connection can make the node buffer before the node reads it.
pub const WINDOW: u32 = MAX_STRIPE as u32;

/// Checks a stripe key: 1–128 of `[0-9a-z.:_-]`, not starting with `.`
/// (the disk tier uses keys as file names: no `.`, `..` or temp names).
pub fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && !k.starts_with('.')
        && k.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b".:_-".contains(&b))
}

/// What one client may cost a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; at the cap the longest-idle one is closed.
    pub max_connections: usize,
    /// A connection must send its first byte within this time.
    pub first_byte_timeout: Duration,
    /// A connection with no request in flight is closed after this time.
    pub idle_timeout: Duration,
    /// A request body must arrive within this time.
    pub body_timeout: Duration,
    /// Bytes of unfinished request bodies, all connections together.
    pub body_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(10),
            body_memory: 64 << 20,
        }
    }
}

/// Counters of the server side.
#[derive(Debug, Default)]
struct ServerMetrics {
    rejected: AtomicU64,
    accept_errors: AtomicU64,
    refused: AtomicU64,
    closed: [AtomicU64; 4],
    bodies_refused: [AtomicU64; 4],
}

impl ServerMetrics {
    fn closed(&self, why: Closed) {
        let i = Closed::ALL.iter().position(|&c| c == why).unwrap_or(0);
        self.closed[i].fetch_add(1, Ordering::Relaxed);
    }
}

const BODY_ERRORS: [BodyError; 4] = [
    BodyError::TooLarge,
    BodyError::Busy,
    BodyError::Timeout,
    BodyError::Aborted,
];

fn body_label(e: BodyError) -> &'static str {
    match e {
        BodyError::TooLarge => "too_large",
        BodyError::Busy => "budget",
        BodyError::Timeout => "timeout",
        BodyError::Aborted => "aborted",
    }
}

/// A cache node: its stripes, its limits and its open connections.
#[derive(Debug)]
pub struct Node {
    store: Arc<NodeStore>,
    limits: Limits,
    budget: BodyBudget,
    conns: Registry,
    metrics: ServerMetrics,
    leases: lease::Leases,
    write_key: Option<crate::auth::WriteKey>,
    /// Writes refused for a missing or bad MAC, by reason.
    auth_refused: [AtomicU64; 4],
}

const AUTH_REASONS: [&str; 4] = ["missing", "malformed", "stale", "bad_mac"];

type Body = Full<Bytes>;

fn respond(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}

impl Node {
    /// A node serving `store` within `limits`.
    pub fn new(store: Arc<NodeStore>, limits: Limits) -> Arc<Node> {
        Self::with_write_key(store, limits, None)
    }

    /// A node that accepts writes (stripe PUTs, leases) only with a MAC made
    /// with `key` ([`crate::auth`]); `None` accepts any write.
    pub fn with_write_key(
        store: Arc<NodeStore>,
        limits: Limits,
        key: Option<crate::auth::WriteKey>,
    ) -> Arc<Node> {
        Arc::new(Node {
            write_key: key,
            auth_refused: Default::default(),
            store,
            budget: BodyBudget::new(limits.body_memory),
            limits,
            conns: Registry::new(),
            metrics: ServerMetrics::default(),
            leases: lease::Leases::default(),
        })
    }

    /// The stripes it serves.
    pub fn store(&self) -> &Arc<NodeStore> {
        &self.store
    }

    /// Prometheus text: the tiers, then connections and refusals.
    pub fn render(&self) -> String {
        let mut out = self.store.render();
        let m = &self.metrics;
        for (n, v) in [
            ("lode_node_rejected_total", &m.rejected),
            ("lode_node_accept_errors_total", &m.accept_errors),
            ("lode_node_connections_refused_total", &m.refused),
        ] {
            prom::sample(&mut out, n, "", prom::load(v));
        }
        for (why, v) in Closed::ALL.iter().zip(&m.closed) {
            prom::sample(
                &mut out,
                "lode_node_connections_closed_total",
                &format!("reason=\"{}\"", why.label()),
                prom::load(v),
            );
        }
        for (e, v) in BODY_ERRORS.iter().zip(&m.bodies_refused) {
            prom::sample(
                &mut out,
                "lode_node_bodies_refused_total",
                &format!("reason=\"{}\"", body_label(*e)),
                prom::load(v),
            );
        }
        let l = &self.leases;
        for (n, v) in [
            ("lode_node_leases_granted_total", &l.granted),
            ("lode_node_leases_contended_total", &l.contended),
            ("lode_node_leases_refused_full_total", &l.full),
            ("lode_node_leases_expired_total", &l.expired),
        ] {
            prom::sample(&mut out, n, "", prom::load(v));
        }
        prom::sample(&mut out, "lode_node_leases", "", l.len());
        for (why, v) in AUTH_REASONS.iter().zip(&self.auth_refused) {
            prom::sample(
                &mut out,
                "lode_node_writes_unauthenticated_total",
                &format!("reason=\"{why}\""),
                prom::load(v),
            );
        }
        prom::sample(&mut out, "lode_node_connections", "", self.conns.len());
        prom::sample(&mut out, "lode_node_body_bytes", "", self.budget.in_use());
        out
    }

    /// Handles one request.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, std::convert::Infallible> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if path == "/health" {
            return Ok(respond(StatusCode::OK, Bytes::from_static(b"ok\n")));
        }
        if path == "/metrics" {
            return Ok(respond(StatusCode::OK, Bytes::from(self.render())));
        }
        let auth = req
            .headers()
            .get(crate::auth::HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let pq = req
            .uri()
            .path_and_query()
            .map_or(path.clone(), |p| p.as_str().to_string());
        if let Some(key) = path.strip_prefix("/l/") {
            if method != Method::GET {
                if let Some(r) = self.refuse_unauthenticated(auth.as_deref(), &method, &pq, b"") {
                    return Ok(r);
                }
            }
            return Ok(self.handle_lease(&method, key, req.uri().query()).await);
        }
        let Some(key) = path.strip_prefix("/s/").filter(|k| valid_key(k)) else {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            return Ok(respond(
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"bad key\n"),
            ));
        };
        let key = key.to_string();
        Ok(match method {
            Method::GET => match self.store.get(&key) {
                Some(v) => respond(StatusCode::OK, v),
                None => respond(StatusCode::NOT_FOUND, Bytes::new()),
            },
            Method::HEAD => match self.store.get(&key) {
                Some(v) => {
                    let mut r = respond(StatusCode::OK, Bytes::new());
                    r.headers_mut()
                        .insert(hyper::header::CONTENT_LENGTH, v.len().into());
                    r
                }
                None => respond(StatusCode::NOT_FOUND, Bytes::new()),
            },
            Method::PUT => {
                let declared = hyper::body::Body::size_hint(req.body()).exact();
                match self
                    .budget
                    .read(req.into_body(), declared, self.limits.body_timeout)
                    .await
                {
                    Ok(b) => {
                        if let Some(r) =
                            self.refuse_unauthenticated(auth.as_deref(), &method, &pq, &b.bytes)
                        {
                            return Ok(r);
                        }
                        self.store.put(key, b.bytes.clone());
                        respond(StatusCode::NO_CONTENT, Bytes::new())
                    }
                    Err(e) => {
                        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                        let i = BODY_ERRORS.iter().position(|&x| x == e).unwrap_or(0);
                        self.metrics.bodies_refused[i].fetch_add(1, Ordering::Relaxed);
                        let status = match e {
                            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                            BodyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
                            BodyError::Timeout => StatusCode::REQUEST_TIMEOUT,
                            BodyError::Aborted => StatusCode::BAD_REQUEST,
                        };
                        respond(status, Bytes::from(format!("{e}\n")))
                    }
                }
            }
            _ => respond(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
        })
    }
}

/// The value of `name=` in a query string, as a number.
fn query_num(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

impl Node {
    /// With a write key: `Some(401)` unless the request carries a valid MAC.
    fn refuse_unauthenticated(
        &self,
        header: Option<&str>,
        method: &Method,
        pq: &str,
        body: &[u8],
    ) -> Option<Response<Body>> {
        let key = self.write_key.as_ref()?;
        let e = key.verify(header, method.as_str(), pq, body).err()?;
        if let Some(i) = AUTH_REASONS.iter().position(|&r| r == e.label()) {
            self.auth_refused[i].fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(error = %e, pq, "unauthenticated write refused");
        Some(respond(
            StatusCode::UNAUTHORIZED,
            Bytes::from(format!("{e}\n")),
        ))
    }

    /// `POST /l/<key>?ttl_ms=N`, `GET /l/<key>?wait_ms=N`,
    /// `DELETE /l/<key>?token=T` (see [`lease`]).
    async fn handle_lease(
        &self,
        method: &Method,
        key: &str,
        query: Option<&str>,
    ) -> Response<Body> {
        let bad = |what: &'static str| {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            respond(StatusCode::BAD_REQUEST, Bytes::from_static(what.as_bytes()))
        };
        if !valid_key(key) {
            return bad("bad key\n");
        }
        let ms = |n: &str| query_num(query, n).map(Duration::from_millis);
        match *method {
            Method::POST => {
                let Some(ttl) = ms("ttl_ms").filter(|t| !t.is_zero()) else {
                    return bad("ttl_ms missing\n");
                };
                match self.leases.acquire(key, ttl) {
                    lease::Grant::Won(t) => {
                        respond(StatusCode::CREATED, Bytes::from(format!("{t}\n")))
                    }
                    lease::Grant::Held => respond(StatusCode::CONFLICT, Bytes::new()),
                    lease::Grant::Full => respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Bytes::from_static(b"lease table full\n"),
                    ),
                }
            }
            Method::GET => {
                let wait = ms("wait_ms").unwrap_or_default();
                if self.leases.wait(key, wait).await {
                    respond(StatusCode::NOT_FOUND, Bytes::new())
                } else {
                    respond(StatusCode::OK, Bytes::new())
                }
            }
            Method::DELETE => {
                let Some(token) = query_num(query, "token") else {
                    return bad("token missing\n");
                };
                if self.leases.release(key, token) {
                    respond(StatusCode::NO_CONTENT, Bytes::new())
                } else {
                    respond(StatusCode::NOT_FOUND, Bytes::new())
                }
            }
            _ => respond(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
        }
    }
}

/// Serves one client connection over any byte stream with the default
/// [`Limits`] (tests and fuzzing; `lode cache-node` uses [`Node::serve`]).
pub async fn serve_connection<S>(io: S, store: Arc<NodeStore>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Node::new(store, Limits::default()).serve_io(io).await
}
