//! The control API: HTTP/1.1 and JSON on a unix socket, versioned under
//! `/v1/` (served with hyper).
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `GET /v1/health` | | 200 [`Health`] |
//! | `GET /v1/volumes` | | 200 `{"volumes": [VolumeInfo…]}` |
//! | `POST /v1/volumes` | [`AttachRequest`] | 201 [`Attached`] |
//! | `GET /v1/volumes/ID` | | 200 [`VolumeInfo`] |
//! | `DELETE /v1/volumes/ID` | | 200 [`VolumeInfo`] (final counters) |
//! | `GET /v1/images` | | 200 `{"images": [ImageInfo…]}` |
//! | `GET /v1/fleet` | | 200 [`FleetInfo`] (409 without a fleet) |
//! | `PUT /v1/fleet` | [`FleetRequest`] | 200 [`FleetInfo`]: the membership changed |
//!
//! `GET /v1/images` lists the images clients read on this host (the last
//! [`DIGESTS_KEPT`](crate::reads::DIGESTS_KEPT) manifest digests, most
//! recently attached or read first), each with the distinct stored chunks
//! demand reads touched (`read_chunks`) and how many of those the memory or
//! disk cache holds at the time of the call (`resident_chunks`, checked
//! against the caches' indexes). In memory: empty after an agent restart
//! until VMs read again. Workers report from it which images are warm here.
//!
//! `PUT /v1/fleet` is for the agent's own user and root only (403 for other
//! peers); it changes the running membership, not `--cache-nodes-file`.
//!
//! Errors are `{"error": "reason"}` with a 4xx status for the caller's
//! mistakes (400 malformed, 403 owner not allowed, 404 unknown image,
//! digest or volume, 409 a pinned digest of another image, 405 method, 409 overlay in use, 411/413/415 body) and 5xx for
//! the agent's (500, 503 store unavailable or shutting down). A request
//! that fails changes nothing. Bodies are at most [`MAX_BODY`] bytes.

use super::registry::{valid_id, Registry, RegistryError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 << 10;
/// Time a client has to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Control connections served at once.
pub const CONTROL_CONNECTIONS: usize = 64;

/// `POST /v1/volumes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// Tenant.
    pub tenant: String,
    /// Image name.
    pub image: String,
    /// Pin the volume to this manifest digest (`sha256:<64 hex>`) instead
    /// of the image's current one: the agent serves exactly that manifest,
    /// and refuses when it is not this image's or is gone. A function keeps
    /// running the code it was created with whatever is pushed later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Named overlay (kept after detach), if any.
    #[serde(default)]
    pub overlay: Option<String>,
    /// Writable (default: read-only).
    #[serde(default)]
    pub rw: bool,
    /// `nbd` (default) or `vhost-user`.
    #[serde(default)]
    pub via: Option<String>,
    /// Owner of the socket, `UID[:GID]` (default: the caller's uid and gid).
    #[serde(default)]
    pub owner: Option<String>,
}

/// The answer to an attach (what `lode attach` prints).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attached {
    /// Volume id (for detach).
    pub id: String,
    /// `nbd` or `vhost-user`.
    pub via: String,
    /// The volume's socket.
    pub socket: PathBuf,
    /// NBD export name (`""` opens it too).
    pub export: String,
    /// Size in bytes.
    pub size: u64,
}

/// Per-volume counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CounterInfo {
    /// Reads.
    pub reads: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Writes.
    pub writes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Flushes.
    pub flushes: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Sessions so far.
    pub sessions: u64,
    /// Sessions now.
    pub active_sessions: u64,
    /// 4 KiB pages in the overlay.
    pub written_pages: u64,
}

/// One volume, as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Volume id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Image.
    pub image: String,
    /// Manifest digest the volume is pinned to.
    pub digest: String,
    /// Named overlay.
    pub overlay: Option<String>,
    /// Writable.
    pub rw: bool,
    /// Transport.
    pub via: String,
    /// Socket.
    pub socket: PathBuf,
    /// NBD export name.
    pub export: String,
    /// Socket owner `UID:GID`.
    pub owner: String,
    /// Size in bytes (0 when not serving).
    pub size: u64,
    /// Seconds since the epoch when attached.
    pub attached_at: u64,
    /// `serving` or `failed` (could not be restored; retried).
    pub state: String,
    /// Why it is not serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Counters (when serving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<CounterInfo>,
}

/// `GET /v1/volumes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeList {
    /// Every volume.
    pub volumes: Vec<VolumeInfo>,
}

pub use crate::reads::ImageInfo;

/// `GET /v1/images`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageList {
    /// Every remembered image, most recently used first.
    pub images: Vec<ImageInfo>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok` when every volume serves, `degraded` otherwise.
    pub status: String,
    /// Agent version.
    pub version: String,
    /// Agent process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Volumes in the table.
    pub volumes: usize,
    /// Of which serving.
    pub serving: usize,
    /// Images open.
    pub open_images: usize,
    /// Tasks alive in the agent's runtime.
    pub tasks: usize,
}

/// `PUT /v1/fleet`: the new node list, as `--cache-nodes` takes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FleetRequest {
    /// `HOST:PORT,...` or `memcached://HOST:PORT,...`.
    pub nodes: String,
}

/// The fleet membership (and what the last change did).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct FleetInfo {
    /// The nodes now.
    pub nodes: Vec<String>,
    /// Nodes the change added.
    #[serde(default)]
    pub added: Vec<String>,
    /// Nodes the change removed.
    #[serde(default)]
    pub removed: Vec<String>,
}

/// Reads (`None`) or changes (`Some(spec)`) the agent's fleet membership;
/// an error (a refused spec) is answered with its text.
pub type FleetHook = Arc<
    dyn Fn(Option<&str>) -> Result<FleetInfo, Box<dyn std::error::Error + Send + Sync>>
        + Send
        + Sync,
>;

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}

type Body = Full<Bytes>;

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    let body =
        serde_json::to_vec(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error(status: u16, msg: impl std::fmt::Display) -> Response<Body> {
    json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &ApiError {
            error: msg.to_string(),
        },
    )
}

fn registry_error(e: RegistryError) -> Response<Body> {
    if e.status() >= 500 {
        tracing::warn!(error = %e, "control request failed");
    }
    error(e.status(), e)
}

/// Answers one control request.
pub async fn handle(
    registry: &Registry,
    peer: (u32, u32),
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    match (method.clone(), parts.as_slice()) {
        (Method::GET, ["v1", "health"]) => {
            let (volumes, serving) = registry.counts().await;
            json(
                StatusCode::OK,
                &Health {
                    status: if volumes == serving { "ok" } else { "degraded" }.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    pid: std::process::id(),
                    uptime_secs: registry.uptime().as_secs(),
                    volumes,
                    serving,
                    open_images: registry.exports().open_images(),
                    tasks: tokio::runtime::Handle::current()
                        .metrics()
                        .num_alive_tasks(),
                },
            )
        }
        (Method::GET, ["v1", "volumes"]) => json(
            StatusCode::OK,
            &VolumeList {
                volumes: registry.list().await,
            },
        ),
        (Method::GET, ["v1", "images"]) => {
            // One listing at a time: each looks up every chunk read.
            let _turn = registry.images_turn().await;
            let exports = registry.exports().clone();
            match tokio::task::spawn_blocking(move || exports.read_images()).await {
                Ok(images) => json(StatusCode::OK, &ImageList { images }),
                Err(e) => error(500, format!("listing the images read: {e}")),
            }
        }
        (Method::POST, ["v1", "volumes"]) => {
            let ctype = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json");
            if !ctype.starts_with("application/json") {
                return error(
                    415,
                    format!("content-type must be application/json, not {ctype}"),
                );
            }
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        return error(413, format!("request body larger than {MAX_BODY} bytes"));
                    }
                    return error(400, format!("reading the request body: {e}"));
                }
            };
            let attach: AttachRequest = match serde_json::from_slice(&body) {
                Ok(a) => a,
                Err(e) => return error(400, format!("malformed attach request: {e}")),
            };
            match registry.attach(attach, peer).await {
                Ok(a) => json(StatusCode::CREATED, &a),
                Err(e) => registry_error(e),
            }
        }
        (Method::GET, ["v1", "volumes", id]) | (Method::DELETE, ["v1", "volumes", id])
            if !valid_id(id) =>
        {
            error(
                404,
                format!("no volume '{id}' (ids look like v0123456789abcdef)"),
            )
        }
        (Method::GET, ["v1", "volumes", id]) => match registry.get(id).await {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => registry_error(e),
        },
        (Method::DELETE, ["v1", "volumes", id]) => match registry.detach(id).await {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => registry_error(e),
        },
        (Method::GET, ["v1", "fleet"]) | (Method::PUT, ["v1", "fleet"]) => {
            let Some(hook) = registry.fleet_hook() else {
                return error(409, "the agent has no cache fleet (--cache-nodes)");
            };
            if method == Method::GET {
                return match hook(None) {
                    Ok(f) => json(StatusCode::OK, &f),
                    Err(e) => error(500, e.to_string()),
                };
            }
            let me = nix::unistd::geteuid().as_raw();
            if peer.0 != 0 && peer.0 != me {
                return error(
                    403,
                    format!(
                        "uid {} may not change the fleet (the agent's user or root only)",
                        peer.0
                    ),
                );
            }
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(400, format!("reading the request body: {e}")),
            };
            let want: FleetRequest = match serde_json::from_slice(&body) {
                Ok(f) => f,
                Err(e) => return error(400, format!("malformed fleet request: {e}")),
            };
            match hook(Some(&want.nodes)) {
                Ok(f) => json(StatusCode::OK, &f),
                Err(e) => error(400, e.to_string()),
            }
        }
        (_, ["v1", "health"])
        | (_, ["v1", "volumes"])
        | (_, ["v1", "volumes", _])
        | (_, ["v1", "images"])
        | (_, ["v1", "fleet"]) => error(405, format!("method {method} not allowed on {path}")),
        _ => error(404, format!("no endpoint {path} (the API is under /v1/)")),
    }
}

/// Serves the control API on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::UnixListener,
    registry: Arc<Registry>,
    stop: watch::Receiver<bool>,
) {
    let stats = registry.exports().stats.accept.clone();
    crate::serve::run(listener, CONTROL_CONNECTIONS, stop, stats, move |conn, mut stop| {
        let registry = registry.clone();
        async move {
            let peer = conn
                .peer_cred()
                .map(|c| (c.uid(), c.gid()))
                .unwrap_or((nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()));
            let svc = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&registry, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BODY.max(8192))
                .serve_connection(hyper_util::rt::TokioIo::new(conn), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                }
                _ = crate::serve::stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
        }
    })
    .await;
}
