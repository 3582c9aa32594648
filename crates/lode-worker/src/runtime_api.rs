//! The Lambda Runtime API (version 2018-06-01) of one sandbox, as its
//! runtime sees it at `AWS_LAMBDA_RUNTIME_API`:
//!
//! | method and path | answer |
//! | --- | --- |
//! | `GET /2018-06-01/runtime/invocation/next` | waits for an event: 200, the payload, and `Lambda-Runtime-Aws-Request-Id`, `-Deadline-Ms`, `-Invoked-Function-Arn`, `-Trace-Id` |
//! | `POST /2018-06-01/runtime/invocation/ID/response` | 202 `{"status":"OK"}`; 400 `InvalidRequestID` for an id that is not the current one; 403 `InvalidStateTransition` for one already answered; 413 `RequestEntityTooLarge` over 6 MB (the invocation then fails with `Function.ResponseSizeTooLarge`) |
//! | `POST /2018-06-01/runtime/invocation/ID/error` | 202; the invocation fails with the document's `errorType` (else the `Lambda-Runtime-Function-Error-Type` header's, else `Unhandled`) |
//! | `POST /2018-06-01/runtime/init/error` | 202; the sandbox failed to start (403 once it has asked for an event) |
//!
//! Error answers are `{"errorMessage": ..., "errorType": ...}`. One event
//! at a time: the worker [`RuntimeApi::submit`]s an invocation when the
//! sandbox is idle, the runtime takes it with `next` and answers it once.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use lode_lambda::MAX_PAYLOAD;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Notify};

/// The API version prefix.
pub const PREFIX: &str = "/2018-06-01/runtime";
/// Largest error document or init error accepted.
pub const MAX_ERROR_BODY: usize = 1 << 20;
/// Time a runtime has to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one sandbox may hold open at once.
pub const CONNECTIONS: usize = 16;
/// Answered request ids remembered (to tell a repeat from a stranger).
const REMEMBERED: usize = 16;

/// One event for the runtime.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Request id.
    pub request_id: String,
    /// The event.
    pub payload: Bytes,
    /// Unix time in ms when the invocation times out.
    pub deadline_ms: u64,
    /// The function's ARN.
    pub arn: String,
    /// `Lambda-Runtime-Trace-Id`.
    pub trace_id: String,
}

/// How the runtime answered an invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `response`: the function's result.
    Response(Bytes),
    /// `error` (or `init/error` while the event was pending): the
    /// function failed with `error_type`; `body` is its error document.
    Error {
        /// `errorType`.
        error_type: String,
        /// The document the runtime posted.
        body: Bytes,
    },
    /// The runtime asked for the next event without answering this one.
    Abandoned,
}

/// What the runtime did when the worker looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// The runtime asked for its first event (at this instant).
    Next(Instant),
    /// The runtime reported an init error.
    InitError {
        /// `errorType`.
        error_type: String,
        /// The document posted.
        body: Bytes,
    },
}

#[derive(Default)]
struct Mailbox {
    /// Submitted, not yet taken by `next`.
    pending: Option<(Invocation, oneshot::Sender<Answer>)>,
    /// Taken by `next`, not answered yet.
    current: Option<(String, oneshot::Sender<Answer>)>,
    /// Ids answered lately.
    answered: VecDeque<String>,
}

/// The Runtime API state of one sandbox.
pub struct RuntimeApi {
    mailbox: Mutex<Mailbox>,
    wake: Notify,
    ready: watch::Sender<Option<Ready>>,
}

impl std::fmt::Debug for RuntimeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeApi").finish_non_exhaustive()
    }
}

impl Default for RuntimeApi {
    fn default() -> Self {
        RuntimeApi::new()
    }
}

type Body = Full<Bytes>;

fn answer(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn refuse(status: u16, error_type: &str, message: impl std::fmt::Display) -> Response<Body> {
    let b = serde_json::json!({"errorMessage": message.to_string(), "errorType": error_type});
    answer(status, b.to_string())
}

/// A refused runtime request: status, `errorType`, `errorMessage`.
#[derive(Debug)]
struct Refusal(u16, &'static str, String);

impl Refusal {
    fn response(self) -> Response<Body> {
        refuse(self.0, self.1, self.2)
    }
}

fn accepted() -> Response<Body> {
    answer(202, r#"{"status":"OK"}"#)
}

/// Reads a body of at most `limit` bytes; `Err(true)` when it is larger.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, bool> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(e
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()),
    }
}

/// The error type of an error post: the document's `errorType` (what
/// Lambda reports), else the `Lambda-Runtime-Function-Error-Type` header
/// (Lambda's rule when no document is given), else `default`.
fn error_type_of(header: Option<&str>, body: &[u8], default: &str) -> String {
    let from_body = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("errorType")?.as_str().map(str::to_string))
        .filter(|t| !t.trim().is_empty());
    from_body
        .or_else(|| {
            header
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_string)
        })
        .map(|t| t.chars().take(256).collect())
        .unwrap_or_else(|| default.to_string())
}

impl RuntimeApi {
    /// A sandbox's API before its runtime started.
    pub fn new() -> RuntimeApi {
        RuntimeApi {
            mailbox: Mutex::new(Mailbox::default()),
            wake: Notify::new(),
            ready: watch::channel(None).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mailbox> {
        self.mailbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the runtime has asked for an event or failed its init.
    pub fn ready(&self) -> watch::Receiver<Option<Ready>> {
        self.ready.subscribe()
    }

    /// Hands `inv` to the runtime's next `next`; the receiver gets its answer
    /// (and fails when the invocation is dropped: the sandbox went away).
    /// A pending event not yet taken is replaced (the worker submits one at
    /// a time).
    pub fn submit(&self, inv: Invocation) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.lock().pending = Some((inv, tx));
        self.wake.notify_waiters();
        rx
    }

    /// Forgets the pending or current invocation (timed out, sandbox gone).
    pub fn cancel(&self) {
        let mut m = self.lock();
        m.pending = None;
        m.current = None;
    }

    async fn next(&self) -> Response<Body> {
        if self.ready.borrow().is_none() {
            self.ready.send_replace(Some(Ready::Next(Instant::now())));
        }
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut m = self.lock();
                if let Some((id, tx)) = m.current.take() {
                    tracing::warn!(request = %id, "the runtime asked for the next event without answering this one");
                    let _ = tx.send(Answer::Abandoned);
                }
                if let Some((inv, tx)) = m.pending.take() {
                    m.current = Some((inv.request_id.clone(), tx));
                    return Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .header("lambda-runtime-aws-request-id", &inv.request_id)
                        .header("lambda-runtime-deadline-ms", inv.deadline_ms.to_string())
                        .header("lambda-runtime-invoked-function-arn", &inv.arn)
                        .header("lambda-runtime-trace-id", &inv.trace_id)
                        .body(Full::new(inv.payload))
                        .unwrap_or_else(|_| refuse(500, "Runtime.Internal", "bad headers"));
                }
            }
            woken.await;
        }
    }

    /// Takes the current invocation if it is `id`, or says why not.
    fn take_current(&self, id: &str) -> Result<oneshot::Sender<Answer>, Refusal> {
        let mut m = self.lock();
        match m.current.take() {
            Some((cur, tx)) if cur == id => {
                if m.answered.len() == REMEMBERED {
                    m.answered.pop_front();
                }
                m.answered.push_back(cur);
                Ok(tx)
            }
            other => {
                m.current = other;
                if m.answered.iter().any(|a| a == id) {
                    Err(Refusal(
                        403,
                        "InvalidStateTransition",
                        format!("invocation {id} was answered already"),
                    ))
                } else {
                    Err(Refusal(
                        400,
                        "InvalidRequestID",
                        format!("{id} is not the id of the invocation being run"),
                    ))
                }
            }
        }
    }

    async fn response(&self, id: &str, req: Request<Incoming>) -> Response<Body> {
        if let Err(r) = self.check_current(id) {
            return r.response();
        }
        let body = read_body(req, MAX_PAYLOAD).await;
        let tx = match self.take_current(id) {
            Ok(tx) => tx,
            Err(r) => return r.response(),
        };
        match body {
            Ok(b) => {
                let _ = tx.send(Answer::Response(b));
                accepted()
            }
            Err(true) => {
                let msg = format!(
                    "Response payload size exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."
                );
                let doc = serde_json::json!({"errorMessage": msg, "errorType": "Function.ResponseSizeTooLarge"});
                let _ = tx.send(Answer::Error {
                    error_type: "Function.ResponseSizeTooLarge".into(),
                    body: Bytes::from(doc.to_string()),
                });
                refuse(413, "RequestEntityTooLarge", msg)
            }
            Err(false) => {
                let doc = serde_json::json!({"errorMessage": "the runtime's response was cut off", "errorType": "Runtime.InvalidResponse"});
                let _ = tx.send(Answer::Error {
                    error_type: "Runtime.InvalidResponse".into(),
                    body: Bytes::from(doc.to_string()),
                });
                refuse(
                    400,
                    "InvalidResponse",
                    "the response body could not be read",
                )
            }
        }
    }

    /// Refuses early (before reading a body) an id that is not current.
    fn check_current(&self, id: &str) -> Result<(), Refusal> {
        let m = self.lock();
        if m.current.as_ref().is_some_and(|(c, _)| c == id) {
            return Ok(());
        }
        drop(m);
        self.take_current(id).map(|_| ())
    }

    async fn error(&self, id: &str, req: Request<Incoming>) -> Response<Body> {
        if let Err(r) = self.check_current(id) {
            return r.response();
        }
        let (header, body) = match read_error_doc(req).await {
            Ok(d) => d,
            Err(r) => return r,
        };
        let tx = match self.take_current(id) {
            Ok(tx) => tx,
            Err(r) => return r.response(),
        };
        let error_type = error_type_of(header.as_deref(), &body, "Unhandled");
        let _ = tx.send(Answer::Error { error_type, body });
        accepted()
    }

    async fn init_error(&self, req: Request<Incoming>) -> Response<Body> {
        if matches!(*self.ready.borrow(), Some(Ready::Next(_))) {
            return refuse(
                403,
                "InvalidStateTransition",
                "init/error after the runtime asked for an event",
            );
        }
        let (header, body) = match read_error_doc(req).await {
            Ok(d) => d,
            Err(r) => return r,
        };
        let error_type = error_type_of(header.as_deref(), &body, "Runtime.Unknown");
        self.ready
            .send_replace(Some(Ready::InitError { error_type, body }));
        accepted()
    }

    /// Answers one request of the runtime.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return refuse(
                404,
                "InvalidRequest",
                format!("no endpoint {path} (the API is under {PREFIX}/)"),
            );
        };
        let parts: Vec<&str> = rest.split('/').skip(1).collect();
        let method = req.method().clone();
        match (method, parts.as_slice()) {
            (Method::GET, ["invocation", "next"]) => self.next().await,
            (Method::POST, ["invocation", id, "response"]) => {
                let id = id.to_string();
                self.response(&id, req).await
            }
            (Method::POST, ["invocation", id, "error"]) => {
                let id = id.to_string();
                self.error(&id, req).await
            }
            (Method::POST, ["init", "error"]) => self.init_error(req).await,
            (_, ["invocation", "next"])
            | (_, ["invocation", _, "response"])
            | (_, ["invocation", _, "error"])
            | (_, ["init", "error"]) => refuse(
                405,
                "InvalidRequest",
                format!("method {} not allowed on {path}", req.method()),
            ),
            _ => refuse(404, "InvalidRequest", format!("no endpoint {path}")),
        }
    }
}

/// An error document posted by the runtime (`invocation/ID/error`,
/// `init/error`): its error-type header and body, or the refusal to answer.
async fn read_error_doc(req: Request<Incoming>) -> Result<(Option<String>, Bytes), Response<Body>> {
    let header = error_header(&req);
    match read_body(req, MAX_ERROR_BODY).await {
        Ok(b) => Ok((header, b)),
        Err(true) => Err(refuse(
            413,
            "RequestEntityTooLarge",
            format!("error documents are at most {MAX_ERROR_BODY} bytes"),
        )),
        Err(false) => Err(refuse(
            400,
            "InvalidRequest",
            "the error body could not be read",
        )),
    }
}

fn error_header(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Serves one runtime connection (HTTP/1.1) until it ends.
pub async fn serve_connection<IO>(
    io: IO,
    api: std::sync::Arc<RuntimeApi>,
) -> Result<(), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, std::convert::Infallible>(api.handle(req).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .await
}

/// Serves `api` on `listener` (the sandbox's socket, reached through the
/// relay) until `stop` turns true.
pub async fn serve(
    listener: tokio::net::UnixListener,
    api: std::sync::Arc<RuntimeApi>,
    stop: watch::Receiver<bool>,
) {
    let stats = std::sync::Arc::new(lode_agent::serve::LoopStats::default());
    lode_agent::serve::run(listener, CONNECTIONS, stop, stats, move |conn, mut stop| {
        let api = api.clone();
        async move {
            tokio::select! {
                r = serve_connection(conn, api) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "runtime API connection ended");
                    }
                }
                _ = lode_agent::serve::stopped(&mut stop) => {}
            }
        }
    })
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
