//! The frontend's HTTP server: body limits, SigV4 authentication, then
//! the operation ([`crate::api`]).

use crate::api::{Call, Reply};
use crate::credentials::KeyCache;
use crate::managers::Managers;
use crate::metrics::Outcome;
use crate::sigv4;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use lode_agent::ChunkReader;
use lode_chunk::KeyProvider;
use lode_lambda::{ErrorKind, LambdaError, MAX_PAYLOAD};
use lode_store::Store;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest body of a request other than Invoke.
pub const MAX_REQUEST: usize = 1 << 20;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// A Lambda-compatible frontend (stateless: everything it knows is in the
/// store; see the crate documentation).
pub struct Frontend {
    pub(crate) store: Store,
    pub(crate) keys: Arc<dyn KeyProvider>,
    pub(crate) reader: Arc<ChunkReader>,
    pub(crate) region: String,
    pub(crate) managers: Managers,
    pub(crate) key_cache: KeyCache,
    pub(crate) events: Arc<crate::events::Queue>,
    /// Requests per operation and outcome, latencies.
    pub metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("store", &self.store.url())
            .field("region", &self.region)
            .field("managers", &self.managers)
            .finish()
    }
}

fn respond(r: Reply) -> hyper::Response<Full<Bytes>> {
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    lode_lambda::http::reply(r.status, &headers, r.body)
}

fn refused(kind: ErrorKind, message: impl Into<String>) -> hyper::Response<Full<Bytes>> {
    respond(Reply::error(&LambdaError::new(kind, message)))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Frontend {
    /// A frontend over `store`, reading images through `reader` (for their
    /// run settings), routing invocations to `managers` (base URLs), and
    /// naming `region` in ARNs.
    pub fn new(
        store: Store,
        keys: Arc<dyn KeyProvider>,
        reader: Arc<ChunkReader>,
        managers: Vec<String>,
        region: String,
    ) -> crate::Result<Frontend> {
        Ok(Frontend {
            events: Arc::new(crate::events::Queue::new(store.clone(), keys.clone())?),
            store,
            keys,
            reader,
            region,
            managers: Managers::new(managers),
            key_cache: KeyCache::default(),
            metrics: Default::default(),
        })
    }

    /// Answers one HTTP request.
    pub async fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        if path == "/ping" {
            return respond(Reply {
                status: 200,
                headers: Vec::new(),
                body: Bytes::from_static(b"ok\n"),
            });
        }
        let invoke = path.ends_with("/invocations");
        let max = if invoke { MAX_PAYLOAD } else { MAX_REQUEST };
        let too_large = |n: String| {
            refused(
                ErrorKind::RequestEntityTooLargeException,
                format!(
                    "Request must be smaller than {max} bytes for the {} operation ({n})",
                    if invoke { "Invoke" } else { "API" }
                ),
            )
        };
        let declared = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(n) = declared.filter(|&n| n > max as u64) {
            return too_large(format!("{n} bytes sent"));
        }
        let body = match lode_lambda::http::body(body, max).await {
            Ok(b) => b,
            Err(e) if e.kind == ErrorKind::RequestEntityTooLargeException => {
                return too_large("more sent".into())
            }
            Err(e) => return respond(Reply::error(&e)),
        };
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let query = parts.uri.query().unwrap_or("");
        let tenant = match self
            .authenticate(parts.method.as_str(), &path, query, &headers, &body)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(path, error = %e, "request refused");
                let outcome = if e.kind.fault() == "User" {
                    Outcome::User
                } else {
                    Outcome::Service
                };
                self.metrics.record("Auth", outcome, Duration::ZERO);
                return respond(Reply::error(&e));
            }
        };
        let decoded = String::from_utf8_lossy(&sigv4::percent_decode(&path)).into_owned();
        let query: BTreeMap<String, String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let d = |s: &str| String::from_utf8_lossy(&sigv4::percent_decode(s)).into_owned();
                (d(k), d(v))
            })
            .collect();
        let call = Call {
            tenant: &tenant,
            method: parts.method.as_str(),
            path: &decoded,
            query: &query,
            headers: &headers,
            body: &body,
        };
        respond(self.call(&call).await)
    }

    /// The tenant whose key signed the request.
    async fn authenticate(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<String, LambdaError> {
        let value = headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| {
                LambdaError::new(
                    ErrorKind::UnrecognizedClientException,
                    sigv4::SigError::Missing.to_string(),
                )
            })?;
        let auth = sigv4::parse_authorization(value)
            .map_err(|e| LambdaError::new(ErrorKind::InvalidSignatureException, e.to_string()))?;
        if auth.service != sigv4::SERVICE {
            return Err(LambdaError::new(
                ErrorKind::InvalidSignatureException,
                format!(
                    "Credential should be scoped to correct service: '{}'",
                    sigv4::SERVICE
                ),
            ));
        }
        let found = self
            .key_cache
            .lookup(&self.store, self.keys.as_ref(), &auth.access_key)
            .await
            .map_err(|e| {
                LambdaError::new(
                    ErrorKind::ServiceException,
                    format!("looking up access key {}: {e}", auth.access_key),
                )
            })?;
        let Some((tenant, secret)) = found else {
            return Err(LambdaError::new(
                ErrorKind::UnrecognizedClientException,
                "The security token included in the request is invalid.",
            ));
        };
        let req = sigv4::Request {
            method,
            path,
            query,
            headers,
            body,
        };
        sigv4::verify(&auth, &req, &secret, unix_now())
            .map_err(|e| LambdaError::new(ErrorKind::InvalidSignatureException, e.to_string()))?;
        Ok(tenant)
    }
}

/// Serves the frontend's Prometheus metrics on `listener` until `stop`.
pub async fn serve_metrics(
    listener: TcpListener,
    frontend: Arc<Frontend>,
    stop: watch::Receiver<bool>,
) {
    lode_lambda::http::serve(listener, 16, stop, move |_req| {
        let frontend = frontend.clone();
        async move {
            lode_lambda::http::reply(
                200,
                &[("content-type", "text/plain; version=0.0.4")],
                Bytes::from(frontend.metrics.render(&frontend.events.counters)),
            )
        }
    })
    .await
}

/// Serves `frontend` on `listener` until `stop` turns true, at most
/// [`MAX_CONNECTIONS`] connections at once, and drains the queue of
/// asynchronous invocations meanwhile.
pub async fn serve(listener: TcpListener, frontend: Arc<Frontend>, stop: watch::Receiver<bool>) {
    let events = frontend
        .events
        .clone()
        .run(frontend.managers.clone(), stop.clone());
    let pins = sweep_pins_every(frontend.clone(), PIN_SWEEP, stop.clone());
    let f = frontend.clone();
    let http = lode_lambda::http::serve(listener, MAX_CONNECTIONS, stop, move |req| {
        let frontend = f.clone();
        async move { frontend.handle(req).await }
    });
    tokio::join!(http, events, pins);
}

/// How often a frontend looks for pins no function holds.
const PIN_SWEEP: Duration = Duration::from_secs(600);

/// Every `every` until `stop`: removes every tenant's function pins that no
/// record holds ([`crate::functions::sweep_pins`], older than
/// [`crate::functions::PIN_GRACE`]). Each frontend does it; removing a pin
/// twice is harmless.
async fn sweep_pins_every(
    frontend: Arc<Frontend>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if *stop.borrow() {
            return;
        }
        let tenants = match frontend.store.list_dir("tenants").await {
            Ok(l) => l.common_prefixes,
            Err(e) => {
                tracing::warn!(error = %e, "listing tenants for the pin sweep");
                continue;
            }
        };
        for t in tenants {
            let Some(tenant) = t.filename() else { continue };
            let swept = crate::functions::sweep_pins(
                &frontend.store,
                frontend.keys.as_ref(),
                tenant,
                crate::functions::PIN_GRACE,
            )
            .await;
            if let Err(e) = swept {
                tracing::warn!(tenant, error = %e, "sweeping pins no function holds");
            }
        }
    }
}
