//! A client of the control API (what `lode attach`, `lode detach`,
//! `lode volumes`, `lode fleet`, `lode run --agent` and the worker use).

use super::api::{
    ApiError, AttachRequest, Attached, FleetInfo, FleetRequest, Health, ImageInfo, ImageList,
    VolumeInfo, VolumeList,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest a control request may take (a detach drains the volume's requests).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent's socket could not be reached.
    #[error("cannot reach the agent at {path}: {source} (is `lode agent` running?)")]
    Connect {
        /// Control socket.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("control request to {path}: {source}")]
    Http {
        /// Control socket.
        path: String,
        /// What failed.
        #[source]
        source: hyper::Error,
    },
    /// The agent did not answer in time.
    #[error("the agent at {0} did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout(String),
    /// The agent refused the request.
    #[error("{message} (HTTP {status})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The agent's reason.
        message: String,
    },
    /// The answer is not what this client understands.
    #[error("unexpected answer from the agent: {0}")]
    Decode(#[source] serde_json::Error),
}

/// A client of one agent's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// A client of the control socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Client {
        Client { path: path.into() }
    }

    /// The control socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request; returns the status and body.
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), ClientError> {
        let p = self.path.display().to_string();
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: p.clone(),
                    source,
                })?;
            let http = |source| ClientError::Http {
                path: p.clone(),
                source,
            };
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(http)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut b = Request::builder()
                .method(method)
                .uri(uri)
                .header("host", "lode-agent");
            if body.is_some() {
                b = b.header("content-type", "application/json");
            }
            let req = b
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| ClientError::Refused {
                    status: 0,
                    message: format!("bad request {uri}: {e}"),
                })?;
            let resp = send.send_request(req).await.map_err(http)?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(ClientError::Timeout(p.clone())))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.raw(method, uri, body).await?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Refused { status, message });
        }
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// Attaches a volume.
    pub async fn attach(&self, req: &AttachRequest) -> Result<Attached, ClientError> {
        let body = serde_json::to_vec(req).map_err(ClientError::Decode)?;
        self.call(Method::POST, "/v1/volumes", Some(body)).await
    }

    /// Detaches volume `id`.
    pub async fn detach(&self, id: &str) -> Result<VolumeInfo, ClientError> {
        self.call(Method::DELETE, &format!("/v1/volumes/{id}"), None)
            .await
    }

    /// Every volume.
    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>, ClientError> {
        self.call::<VolumeList>(Method::GET, "/v1/volumes", None)
            .await
            .map(|l| l.volumes)
    }

    /// The images clients read on this host, with how many of the chunks
    /// read its caches hold now (`GET /v1/images`).
    pub async fn images(&self) -> Result<Vec<ImageInfo>, ClientError> {
        self.call::<ImageList>(Method::GET, "/v1/images", None)
            .await
            .map(|l| l.images)
    }

    /// The agent's health.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/v1/health", None).await
    }

    /// The agent's cache-fleet membership.
    pub async fn fleet(&self) -> Result<FleetInfo, ClientError> {
        self.call(Method::GET, "/v1/fleet", None).await
    }

    /// Replaces the agent's cache-fleet node list (`HOST:PORT,...` or
    /// `memcached://HOST:PORT,...`, as `--cache-nodes` takes it).
    pub async fn set_fleet(&self, nodes: &str) -> Result<FleetInfo, ClientError> {
        let req = FleetRequest {
            nodes: nodes.to_string(),
        };
        let body = serde_json::to_vec(&req).map_err(ClientError::Decode)?;
        self.call(Method::PUT, "/v1/fleet", Some(body)).await
    }
}
