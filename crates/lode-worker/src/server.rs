//! The worker's HTTP API and its heartbeat to the manager.
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `POST /v1/invoke` | `InvokeRequest` | 200 `InvokeResult`, or a Lambda error (status, `X-Amzn-ErrorType`, `LambdaError::body`) |
//! | `GET /v1/report` | | 200 `WorkerReport` |
//! | `GET /metrics` | | Prometheus text |
//!
//! The worker posts its `WorkerReport` to `{manager}/v1/workers` every
//! [`REPORT_EVERY`] and at once when a sandbox changes state; while the
//! manager is unreachable it retries with a doubling backoff up to
//! [`MAX_BACKOFF`], sending only the newest report (nothing queues).

use crate::worker::Worker;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use lode_lambda::{ErrorKind, InvokeRequest, LambdaError, MAX_PAYLOAD};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Largest `/v1/invoke` body: a 6 MB payload in base64 and the function.
pub const MAX_BODY: usize = MAX_PAYLOAD / 3 * 4 + (1 << 20);
/// Time a client has to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const CONNECTIONS: usize = 256;
/// How often the worker reports to the manager.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between reports while the manager is unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest a report may take.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

type Body = Full<Bytes>;

fn json(status: u16, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The answer carrying `e`.
pub fn lambda_error(e: &LambdaError) -> Response<Body> {
    let mut r = json(e.status(), e.body());
    if let Ok(v) = hyper::header::HeaderValue::from_str(e.kind.name()) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

/// Answers one request.
pub async fn handle(worker: &Arc<Worker>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/v1/invoke") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let kind = if e
                        .downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        ErrorKind::RequestEntityTooLargeException
                    } else {
                        ErrorKind::InvalidRequestContentException
                    };
                    return lambda_error(&LambdaError::new(
                        kind,
                        format!("reading the invoke request: {e}"),
                    ));
                }
            };
            let inv: InvokeRequest = match serde_json::from_slice(&body) {
                Ok(i) => i,
                Err(e) => {
                    return lambda_error(&LambdaError::new(
                        ErrorKind::InvalidRequestContentException,
                        format!("malformed invoke request: {e}"),
                    ))
                }
            };
            match worker.invoke(inv).await {
                Ok(r) => json(200, serde_json::to_vec(&r).unwrap_or_default()),
                Err(e) => {
                    let le = e.to_lambda();
                    if le.status() >= 500 {
                        tracing::warn!(error = %e, "invocation failed");
                    }
                    lambda_error(&le)
                }
            }
        }
        (Method::GET, "/v1/report") => json(
            200,
            serde_json::to_vec(&worker.report()).unwrap_or_default(),
        ),
        (Method::GET, "/metrics") => {
            let mut out = String::new();
            worker.render_metrics(&mut out);
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(out)))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
        }
        (_, "/v1/invoke") | (_, "/v1/report") | (_, "/metrics") => lambda_error(&LambdaError::new(
            ErrorKind::InvalidRequestContentException,
            format!("method {} not allowed on {path}", req.method()),
        )),
        _ => lambda_error(&LambdaError::new(
            ErrorKind::ResourceNotFoundException,
            format!("no endpoint {path}"),
        )),
    }
}

/// Serves the worker's API on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    worker: Arc<Worker>,
    stop: watch::Receiver<bool>,
) {
    let stats = Arc::new(lode_agent::serve::LoopStats::default());
    lode_agent::serve::run(listener, CONNECTIONS, stop, stats, move |conn, mut stop| {
        let worker = worker.clone();
        async move {
            let svc = hyper::service::service_fn(move |req| {
                let worker = worker.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&worker, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(conn), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "worker connection ended");
                    }
                }
                _ = lode_agent::serve::stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
                }
            }
        }
    })
    .await;
}

/// Why a report did not reach the manager.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The manager URL is not `http://HOST:PORT[/PATH]`.
    #[error("manager URL {0:?} is not http://HOST:PORT")]
    BadUrl(String),
    /// Connecting or the HTTP exchange failed.
    #[error("reporting to {url}: {source}")]
    Http {
        /// Manager URL.
        url: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The manager answered with an error.
    #[error("the manager at {url} answered {status}")]
    Status {
        /// Manager URL.
        url: String,
        /// Its status.
        status: u16,
    },
    /// No answer in time.
    #[error("the manager at {0} did not answer within {REPORT_TIMEOUT:?}")]
    Timeout(String),
}

/// `http://HOST:PORT[/PATH]` → (`HOST:PORT`, path prefix without a trailing `/`).
pub fn split_url(url: &str) -> Result<(String, String), ReportError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ReportError::BadUrl(url.to_string()))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || !host.contains(':') {
        return Err(ReportError::BadUrl(url.to_string()));
    }
    Ok((
        host.to_string(),
        format!("/{}", path.trim_end_matches('/'))
            .trim_end_matches('/')
            .to_string(),
    ))
}

/// Posts `body` (JSON) to `url` + `path`.
pub async fn post_json(url: &str, path: &str, body: Vec<u8>) -> Result<(), ReportError> {
    let (host, prefix) = split_url(url)?;
    let http = |e: Box<dyn std::error::Error + Send + Sync>| ReportError::Http {
        url: url.to_string(),
        source: e,
    };
    let exchange = async {
        let s = tokio::net::TcpStream::connect(&host)
            .await
            .map_err(|e| http(e.into()))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                .await
                .map_err(|e| http(e.into()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("{prefix}{path}"))
            .header("host", &host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| http(e.into()))?;
        let resp = send.send_request(req).await.map_err(|e| http(e.into()))?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(ReportError::Status {
                url: url.to_string(),
                status,
            })
        }
    };
    tokio::time::timeout(REPORT_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(ReportError::Timeout(url.to_string())))
}

/// Reports to `manager` until the task is dropped.
pub async fn report_loop(worker: Arc<Worker>, manager: String) {
    let mut backoff = REPORT_EVERY;
    let mut failing = false;
    loop {
        let body = serde_json::to_vec(&worker.report()).unwrap_or_default();
        match post_json(&manager, "/v1/workers", body).await {
            Ok(()) => {
                if failing {
                    tracing::info!(manager = %manager, "reporting to the manager again");
                }
                failing = false;
                backoff = REPORT_EVERY;
                tokio::select! {
                    _ = worker.changed.notified() => {}
                    _ = tokio::time::sleep(REPORT_EVERY) => {}
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot report to the manager: retrying");
                }
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn manager_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9000").unwrap(),
            ("127.0.0.1:9000".into(), "".into())
        );
        assert_eq!(
            split_url("http://m:1/x/").unwrap(),
            ("m:1".into(), "/x".into())
        );
        assert!(split_url("https://m:1").is_err());
        assert!(split_url("http://m").is_err());
    }

    #[tokio::test]
    async fn reports_reach_a_manager_and_a_dead_one_is_an_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(4);
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let p = req.uri().path().to_string();
                    let b = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                    tx.send((p, b)).await.unwrap();
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
        post_json(&format!("http://{addr}"), "/v1/workers", b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(
            rx.recv().await.unwrap(),
            ("/v1/workers".to_string(), b"{}".to_vec())
        );
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let e = post_json(&format!("http://{dead}"), "/v1/workers", vec![])
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&dead.to_string()), "{e}");
    }
}
