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
use hyper::body::Incoming;
use hyper::{Method, Request};
use lode_lambda::http::{self, CallError, Client, Response};
use lode_lambda::{ErrorKind, InvokeRequest, LambdaError, MAX_PAYLOAD};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Largest `/v1/invoke` body: a 6 MB payload in base64 and the function.
pub const MAX_BODY: usize = MAX_PAYLOAD / 3 * 4 + (1 << 20);
/// Connections served at once.
pub const CONNECTIONS: usize = 256;
/// How often the worker reports to the manager.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between reports while the manager is unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest a report may take.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

fn json(body: Vec<u8>) -> Response {
    http::reply(
        200,
        &[("content-type", "application/json")],
        Bytes::from(body),
    )
}

/// Answers one request.
pub async fn handle(worker: &Arc<Worker>, req: Request<Incoming>) -> Response {
    let path = req.uri().path().trim_end_matches('/').to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/v1/invoke") => {
            let inv: InvokeRequest = match http::body(req.into_body(), MAX_BODY).await {
                Ok(b) => match http::parse(&b) {
                    Ok(i) => i,
                    Err(e) => return http::error(&e),
                },
                Err(e) => return http::error(&e),
            };
            match worker.invoke(inv).await {
                Ok(r) => json(serde_json::to_vec(&r).unwrap_or_default()),
                Err(e) => {
                    let le = e.to_lambda();
                    if le.status() >= 500 {
                        tracing::warn!(error = %e, "invocation failed");
                    }
                    http::error(&le)
                }
            }
        }
        (Method::GET, "/v1/report") => {
            json(serde_json::to_vec(&worker.report().await).unwrap_or_default())
        }
        (Method::GET, "/metrics") => {
            let mut out = String::new();
            worker.render_metrics(&mut out);
            http::reply(
                200,
                &[("content-type", "text/plain; version=0.0.4")],
                Bytes::from(out),
            )
        }
        (_, "/v1/invoke") | (_, "/v1/report") | (_, "/metrics") => http::error(&LambdaError::new(
            ErrorKind::InvalidRequestContentException,
            format!("method {} not allowed on {path}", req.method()),
        )),
        _ => http::error(&LambdaError::new(
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
    http::serve(listener, CONNECTIONS, stop, move |req| {
        let worker = worker.clone();
        async move { handle(&worker, req).await }
    })
    .await;
}

/// Why a manager URL is refused.
#[derive(Debug, thiserror::Error)]
#[error("manager URL {0:?} is not http://HOST:PORT")]
pub struct BadUrl(pub String);

/// `http://HOST:PORT[/PATH]` → (`HOST:PORT`, path prefix without a trailing `/`).
pub fn split_url(url: &str) -> Result<(String, String), BadUrl> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| BadUrl(url.to_string()))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || !host.contains(':') {
        return Err(BadUrl(url.to_string()));
    }
    Ok((
        host.to_string(),
        format!("/{}", path.trim_end_matches('/'))
            .trim_end_matches('/')
            .to_string(),
    ))
}

/// Posts the worker's report (JSON) to `{manager}/v1/workers`.
pub async fn post_report<B: serde::Serialize>(
    client: &Client,
    manager: &str,
    report: &B,
) -> Result<(), CallError> {
    let url = format!("{}/v1/workers", manager.trim_end_matches('/'));
    client
        .post::<_, serde::de::IgnoredAny>(&url, report, 64 << 10, REPORT_TIMEOUT)
        .await
        .map(|_| ())
}

/// Reports to `manager` until the task is dropped.
pub async fn report_loop(worker: Arc<Worker>, manager: String) {
    let mut backoff = REPORT_EVERY;
    let mut failing = false;
    let client = Client::new();
    loop {
        match post_report(&client, &manager, &worker.report().await).await {
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
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(http::serve(l, 4, stop, move |req: Request<Incoming>| {
            let tx = tx.clone();
            async move {
                let p = req.uri().path().to_string();
                let b = http::body(req.into_body(), 1024).await.unwrap().to_vec();
                tx.send((p, b)).await.unwrap();
                http::reply(200, &[], Bytes::new())
            }
        }));
        let client = Client::new();
        post_report(&client, &format!("http://{addr}"), &serde_json::json!({}))
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
        let e = post_report(&client, &format!("http://{dead}"), &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&dead.to_string()), "{e}");
    }
}
