//! The HTTP plumbing frontend, manager and workers share: a bounded
//! HTTP/1.1 server loop, bodies read under a limit, JSON and error replies,
//! and a client that posts JSON and reads a [`LambdaError`] back.

use crate::{ErrorKind, LambdaError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// A response.
pub type Response = hyper::Response<Full<Bytes>>;

/// Time a client has to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// `status` with a JSON body.
pub fn json<T: Serialize>(status: u16, v: &T) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    reply(
        status,
        &[("content-type", "application/json")],
        Bytes::from(body),
    )
}

/// `status` with `headers` and `body`.
pub fn reply(status: u16, headers: &[(&str, &str)], body: Bytes) -> Response {
    let mut b = hyper::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body)).unwrap_or_else(|_| {
        let mut r = hyper::Response::new(Full::new(Bytes::new()));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// The headers of a refusal: JSON, and Lambda's `X-Amzn-ErrorType`.
pub fn error_headers(e: &LambdaError) -> [(&'static str, &'static str); 2] {
    [
        ("content-type", "application/json"),
        ("x-amzn-errortype", e.kind.name()),
    ]
}

/// The answer to a refused request: Lambda's status, `X-Amzn-ErrorType`
/// and JSON body.
pub fn error(e: &LambdaError) -> Response {
    reply(e.status(), &error_headers(e), Bytes::from(e.body()))
}

/// Reads a request body of at most `max` bytes
/// (`RequestEntityTooLargeException` past it).
pub async fn body(b: Incoming, max: usize) -> Result<Bytes, LambdaError> {
    match Limited::new(b, max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(LambdaError::new(
                ErrorKind::RequestEntityTooLargeException,
                format!("the request body is over {max} bytes"),
            ))
        }
        Err(e) => Err(LambdaError::new(
            ErrorKind::InvalidRequestContentException,
            format!("reading the request body: {e}"),
        )),
    }
}

/// Parses a JSON request body (`InvalidRequestContentException` if not).
pub fn parse<T: DeserializeOwned>(b: &[u8]) -> Result<T, LambdaError> {
    serde_json::from_slice(b).map_err(|e| {
        LambdaError::new(
            ErrorKind::InvalidRequestContentException,
            format!("Could not parse request body into json: {e}"),
        )
    })
}

/// Returns once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `handler` on `listener` until `stop` turns true, at most
/// `connections` connections at once; open connections get 10 s to finish.
pub async fn serve<H, F>(
    listener: TcpListener,
    connections: usize,
    mut stop: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(connections));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped(&mut stop) => return,
        };
        let (conn, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let _ = conn.set_nodelay(true);
        let handler = handler.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(conn), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
            drop(permit);
        });
    }
}

/// How a JSON call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made: the request was not sent.
    #[error("{url} unreachable: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The connect error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The request may have been sent, and no usable answer came.
    #[error("{url}: {reason}")]
    Failed {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the request.
    #[error("{url}: {error}")]
    Refused {
        /// The URL.
        url: String,
        /// Its answer.
        error: LambdaError,
    },
}

impl CallError {
    /// The Lambda error to pass on to a client.
    pub fn to_lambda(&self) -> LambdaError {
        match self {
            CallError::Refused { error, .. } => error.clone(),
            other => LambdaError::new(ErrorKind::ServiceException, other.to_string()),
        }
    }
}

/// A client for JSON calls between lode's services.
#[derive(Clone, Debug)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// A pooling client that gives up connecting after 2 s.
    pub fn new() -> Client {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        http.set_nodelay(true);
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(http);
        Client { inner }
    }

    /// Posts `body` as JSON to `url` and reads a JSON answer of at most
    /// `max` bytes within `timeout` (`None` for an empty answer).
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
        max: usize,
        timeout: Duration,
    ) -> Result<Option<T>, CallError> {
        let failed = |reason: String| CallError::Failed {
            url: url.to_string(),
            reason,
        };
        let bytes = Bytes::from(serde_json::to_vec(body).map_err(|e| failed(e.to_string()))?);
        let req = hyper::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .map_err(|e| failed(format!("bad request: {e}")))?;
        let resp = match tokio::time::timeout(timeout, self.inner.request(req)).await {
            Err(_) => return Err(failed(format!("no answer in {timeout:?}"))),
            Ok(Err(e)) if e.is_connect() => {
                return Err(CallError::Unreachable {
                    url: url.to_string(),
                    source: e,
                })
            }
            Ok(Err(e)) => return Err(failed(format!("connection failed: {e}"))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let kind = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = tokio::time::timeout(timeout, Limited::new(resp.into_body(), max).collect())
            .await
            .map_err(|_| failed(format!("answer not read in {timeout:?}")))?
            .map_err(|e| failed(format!("reading the answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            let error = LambdaError::parse(kind.as_deref(), &bytes).unwrap_or_else(|| {
                LambdaError::new(
                    ErrorKind::ServiceException,
                    format!(
                        "answered {status}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                    ),
                )
            });
            return Err(CallError::Refused {
                url: url.to_string(),
                error,
            });
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| failed(format!("the answer is not the JSON expected: {e}")))
    }
}
