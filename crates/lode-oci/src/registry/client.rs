//! The HTTP side of the registry transport: one client per image reference,
//! on a small runtime of its own (the crate's API is synchronous), with TLS
//! from the system roots plus `--cert-dir`, the Docker auth flows, and
//! retries with backoff for 429, 5xx and dropped connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, ACCEPT, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use tokio::sync::Mutex;

use super::auth::{self, Challenge, Credentials};
use super::{RegistryError, RegistryOptions, RegistryRef};

/// Redirects followed per request (registries redirect blobs to storage).
pub(crate) const MAX_REDIRECTS: usize = 5;
/// Attempts per request (the first one included) for 429, 5xx and transport errors.
pub(crate) const ATTEMPTS: u32 = 5;
/// The first retry's delay; doubled per attempt, capped at [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// A token without `expires_in` lives this long (the token spec's default).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);
/// Refresh a token this long before it expires.
const TOKEN_SLACK: Duration = Duration::from_secs(5);
/// The largest error body read to quote the registry's error code.
const MAX_ERROR_BODY: usize = 16 << 10;

/// The runtime the client's futures run on, shut down without blocking when
/// dropped (an [`crate::Image`] may be dropped inside another runtime).
pub(crate) struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    fn new() -> Result<Runtime, RegistryError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lode-registry")
            .enable_all()
            .build()
            .map(|rt| Runtime(Some(rt)))
            .map_err(RegistryError::Runtime)
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle(),
            None => unreachable!("the runtime is only taken in drop"),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// How requests are authenticated, learnt from the `/v2/` ping.
enum AuthMode {
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        token: Option<(String, Instant)>,
    },
}

/// A registry client for one repository.
pub(crate) struct Client {
    pub(crate) rt: Runtime,
    http: reqwest::Client,
    /// `https://HOST/v2/REPO/` (or `http://` on loopback / `--tls-verify=false`).
    base: String,
    pub(crate) reference: RegistryRef,
    creds: Option<Credentials>,
    auth: Mutex<AuthMode>,
    pub(crate) read_timeout: Duration,
}

impl Client {
    /// Builds the client, picks the scheme and authenticates against `/v2/`.
    pub(crate) fn connect(
        reference: &RegistryRef,
        opts: &RegistryOptions,
    ) -> Result<Arc<Client>, RegistryError> {
        let rt = Runtime::new()?;
        let http = super::tls::http_client(reference, opts)?;
        let creds = match &opts.creds {
            Some(c) => Some(c.clone()),
            None => auth::lookup(opts.authfile.as_deref(), reference)?,
        };
        let host = reference.api_host().to_owned();
        let plain_ok = reference.is_loopback() || !opts.tls_verify;
        let handle = rt.handle().clone();
        let probe = http.clone();
        let (scheme, mode) = block_on(&handle, async move {
            let https = format!("https://{host}/v2/");
            match ping(&probe, &https).await {
                Ok(mode) => Ok(("https", mode)),
                Err(e @ RegistryError::Transport { .. }) if plain_ok => {
                    // A registry serving plain HTTP answers as one; a TLS
                    // port answering 400 to HTTP keeps the TLS error.
                    match ping(&probe, &format!("http://{host}/v2/")).await {
                        Ok(mode) => Ok(("http", mode)),
                        Err(_) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        })??;
        let base = format!("{scheme}://{}/v2/{}/", reference.api_host(), reference.repo);
        tracing::debug!(%base, "registry connected");
        Ok(Arc::new(Client {
            rt,
            http,
            base,
            reference: reference.clone(),
            creds,
            auth: Mutex::new(mode),
            read_timeout: opts.timeout,
        }))
    }

    /// Runs `fut` on the client's runtime and waits for it (from any thread,
    /// inside another runtime or not).
    pub(crate) fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RegistryError>> + Send + 'static,
    ) -> Result<T, RegistryError> {
        block_on(self.rt.handle(), fut)?
    }

    /// The URL of `kind` (`manifests` or `blobs`) `reference`.
    pub(crate) fn url(&self, kind: &str, reference: &str) -> String {
        format!("{}{kind}/{reference}", self.base)
    }

    /// GETs `url` with auth, retrying 429/5xx/transport errors with backoff
    /// (honouring `Retry-After`) and a 401 once with a fresh token.
    /// `range_from` asks for the bytes from that offset on.
    pub(crate) async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<Response, RegistryError> {
        let mut attempt = 0u32;
        let mut reauthed = false;
        loop {
            attempt += 1;
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(from) = range_from.filter(|f| *f > 0) {
                req = req.header(RANGE, format!("bytes={from}-"));
            }
            req = self.authorize(req).await?;
            let delay = match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    attempt -= 1;
                    self.on_unauthorized(url, resp.headers()).await?;
                    continue;
                }
                Ok(resp) if retryable(resp.status()) && attempt < ATTEMPTS => {
                    retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt))
                }
                Ok(resp) => return Err(status_error("GET", url, resp).await),
                Err(e) if !e.is_redirect() && !e.is_builder() && attempt < ATTEMPTS => {
                    tracing::debug!(url, error = %e, attempt, "registry request failed, retrying");
                    backoff(attempt)
                }
                Err(e) if e.is_timeout() => {
                    return Err(RegistryError::Stalled {
                        url: url.to_owned(),
                        secs: self.read_timeout.as_secs(),
                        attempts: attempt,
                    })
                }
                Err(e) => return Err(RegistryError::transport("GET", url, e)),
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// Adds the Authorization header the registry wants.
    async fn authorize(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, RegistryError> {
        let mut mode = self.auth.lock().await;
        match &mut *mode {
            AuthMode::Anonymous => Ok(req),
            AuthMode::Basic => Ok(match &self.creds {
                Some(c) => req.basic_auth(&c.username, Some(&c.password)),
                None => req,
            }),
            AuthMode::Bearer {
                realm,
                service,
                token,
            } => {
                let fresh = token
                    .as_ref()
                    .filter(|(_, until)| Instant::now() + TOKEN_SLACK < *until);
                let t = match fresh {
                    Some((t, _)) => t.clone(),
                    None => {
                        let scope = format!("repository:{}:pull", self.reference.repo);
                        let (t, until) =
                            self.fetch_token(realm, service.as_deref(), &scope).await?;
                        *token = Some((t.clone(), until));
                        t
                    }
                };
                Ok(req.bearer_auth(t))
            }
        }
    }

    /// A 401: learn the challenge again (and drop a cached token).
    async fn on_unauthorized(&self, url: &str, headers: &HeaderMap) -> Result<(), RegistryError> {
        let mut mode = self.auth.lock().await;
        *mode = mode_from_challenge(url, headers)?;
        Ok(())
    }

    /// The Docker token flow: GET realm?service=S&scope=repository:REPO:pull,
    /// with basic credentials if there are any.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Instant), RegistryError> {
        let mut url = reqwest::Url::parse(realm).map_err(|_| RegistryError::BadChallenge {
            url: self.base.clone(),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let shown = url.to_string();
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let mut req = self.http.get(url.clone());
            if let Some(c) = &self.creds {
                req = req.basic_auth(&c.username, Some(&c.password));
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => break r,
                Ok(r) if retryable(r.status()) && attempt < ATTEMPTS => {
                    let d = retry_after(r.headers()).unwrap_or_else(|| backoff(attempt));
                    tokio::time::sleep(d).await;
                }
                Ok(r) => return Err(status_error("GET", &shown, r).await),
                Err(e) if attempt < ATTEMPTS && !e.is_redirect() => {
                    tokio::time::sleep(backoff(attempt)).await
                }
                Err(e) => return Err(RegistryError::transport("GET", &shown, e)),
            }
        };
        let body = read_capped(resp, MAX_ERROR_BODY * 4, &shown).await?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: Token =
            serde_json::from_slice(&body).map_err(|source| RegistryError::TokenJson {
                url: shown.clone(),
                source,
            })?;
        let life = t.expires_in.map_or(DEFAULT_TOKEN_LIFE, |s| {
            Duration::from_secs(s.clamp(1, 86_400))
        });
        let token = t.token.or(t.access_token).unwrap_or_default();
        if token.is_empty() {
            return Err(RegistryError::TokenJson {
                url: shown,
                source: serde::de::Error::custom("neither \"token\" nor \"access_token\""),
            });
        }
        Ok((token, Instant::now() + life))
    }
}

/// Runs `fut` on `handle` and blocks this thread until it is done.
fn block_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, RegistryError> {
    futures::executor::block_on(handle.spawn(fut)).map_err(|e| {
        RegistryError::Runtime(std::io::Error::other(format!("registry task failed: {e}")))
    })
}

/// `GET /v2/`: 200 = anonymous access; 401 = the challenge says how to log in.
async fn ping(http: &reqwest::Client, url: &str) -> Result<AuthMode, RegistryError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => return Ok(AuthMode::Anonymous),
            Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                return mode_from_challenge(url, r.headers())
            }
            Ok(r) if retryable(r.status()) && attempt < ATTEMPTS => {
                let d = retry_after(r.headers()).unwrap_or_else(|| backoff(attempt));
                tokio::time::sleep(d).await;
            }
            Ok(r) => return Err(status_error("GET", url, r).await),
            Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                tokio::time::sleep(backoff(attempt)).await
            }
            Err(e) => return Err(RegistryError::transport("GET", url, e)),
        }
    }
}

/// Whether a connect error may go away (refused, reset, timed out), unlike
/// a TLS or DNS failure.
fn is_transient(e: &reqwest::Error) -> bool {
    if e.is_timeout() {
        return true;
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut
            );
        }
        src = s.source();
    }
    false
}

fn mode_from_challenge(url: &str, headers: &HeaderMap) -> Result<AuthMode, RegistryError> {
    let mut first_other = None;
    for value in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else { continue };
        match auth::parse_challenge(text) {
            Some(Challenge::Basic) => return Ok(AuthMode::Basic),
            Some(Challenge::Bearer { realm, service, .. }) => {
                if reqwest::Url::parse(&realm).is_err() {
                    return Err(RegistryError::BadChallenge {
                        url: url.to_owned(),
                    });
                }
                return Ok(AuthMode::Bearer {
                    realm,
                    service,
                    token: None,
                });
            }
            Some(Challenge::Other(s)) => first_other = first_other.or(Some(s)),
            None => {}
        }
    }
    match first_other {
        Some(scheme) => Err(RegistryError::AuthScheme {
            url: url.to_owned(),
            scheme,
        }),
        // 401 without a challenge: send basic credentials if we have them.
        None => Ok(AuthMode::Basic),
    }
}

fn retryable(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

pub(crate) fn backoff(attempt: u32) -> Duration {
    BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// `Retry-After: SECONDS` (the HTTP-date form is treated as the backoff).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The error for a non-success answer, quoting the registry's error code and
/// message (`{"errors":[{"code":..,"message":..}]}`) when it sent one.
pub(crate) async fn status_error(method: &'static str, url: &str, resp: Response) -> RegistryError {
    let status = resp.status().as_u16();
    let body = read_capped(resp, MAX_ERROR_BODY, url)
        .await
        .unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        code: Option<String>,
        message: Option<String>,
    }
    let detail = serde_json::from_slice::<Errors>(&body).ok().and_then(|e| {
        let first = e.errors.into_iter().next()?;
        let text = match (first.code, first.message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c,
            (None, Some(m)) => m,
            (None, None) => return None,
        };
        Some(text.chars().take(200).collect())
    });
    RegistryError::Status {
        method,
        url: url.to_owned(),
        status,
        detail,
    }
}

/// Reads a body of at most `limit` bytes; a longer one is an error.
pub(crate) async fn read_capped(
    mut resp: Response,
    limit: usize,
    url: &str,
) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| RegistryError::transport("GET", url, e))?
    {
        if out.len() + chunk.len() > limit {
            return Err(RegistryError::TooLarge {
                url: url.to_owned(),
                limit: limit as u64,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
