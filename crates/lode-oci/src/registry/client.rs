//! The HTTP side of the registry transport: one client per image reference,
//! on a small runtime of its own (the crate's API is synchronous), with TLS
//! from the system roots plus `--cert-dir`, the Docker auth flows, and
//! retries with backoff for 429, 5xx and dropped connections.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, ACCEPT, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use tokio::sync::Mutex;

use super::auth::{self, Challenge, Login};
use super::token::{self, TokenRequest};
use super::{RegistryError, RegistryOptions, RegistryRef};

/// Redirects followed per request (registries redirect blobs to storage).
pub(crate) const MAX_REDIRECTS: usize = 5;
/// Attempts per request (the first one included) for 429, 5xx and transport errors.
pub(crate) const ATTEMPTS: u32 = 5;
/// The first retry's delay; doubled per attempt, capped at [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// The longest `Retry-After` honoured.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
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
    login: Option<Login>,
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
        let login = match &opts.creds {
            Some(c) => Some(Login::Basic(c.clone())),
            None => auth::lookup(opts.authfile.as_deref(), reference, opts.timeout)?,
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
            login,
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
    /// `range_from` asks for the bytes from that offset on. A registry
    /// silent for the timeout is [`RegistryError::Stalled`].
    pub(crate) async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<Response, RegistryError> {
        self.get_since(url, accept, range_from, Instant::now())
            .await
    }

    /// [`Client::get`], the registry's last sign of life (an answer, a byte)
    /// having been at `since`: it has until `since` + the timeout to answer,
    /// retries included; any answer, even one retried, renews that.
    pub(crate) async fn get_since(
        &self,
        url: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
        since: Instant,
    ) -> Result<Response, RegistryError> {
        let mut deadline = since + self.read_timeout;
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
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(sent) = tokio::time::timeout(left, req.send()).await else {
                return Err(self.stalled(url, attempt));
            };
            if sent.is_ok() {
                deadline = Instant::now() + self.read_timeout;
            }
            let delay = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    attempt -= 1;
                    self.on_unauthorized(url, resp.headers()).await?;
                    continue;
                }
                Ok(resp) if retryable(resp.status()) && attempt < ATTEMPTS => {
                    let d = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                    // The registry asked for this wait: it is not silence.
                    deadline += d;
                    d
                }
                Ok(resp) => return Err(status_error("GET", url, resp).await),
                Err(e)
                    if !e.is_redirect()
                        && !e.is_builder()
                        && attempt < ATTEMPTS
                        && Instant::now() + backoff(attempt) < deadline =>
                {
                    tracing::debug!(url, error = %e, attempt, "registry request failed, retrying");
                    backoff(attempt)
                }
                Err(e) if e.is_timeout() => return Err(self.stalled(url, attempt)),
                Err(e) => return Err(RegistryError::transport("GET", url, e)),
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// The error for a registry silent for the timeout.
    pub(crate) fn stalled(&self, url: &str, attempts: u32) -> RegistryError {
        RegistryError::Stalled {
            url: url.to_owned(),
            secs: self.read_timeout.as_secs(),
            attempts,
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
            AuthMode::Basic => Ok(match &self.login {
                Some(Login::Basic(c)) => req.basic_auth(&c.username, Some(&c.password)),
                // An identity token is for token endpoints only.
                Some(Login::IdentityToken(_)) | None => req,
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
                        let request = TokenRequest {
                            realm,
                            service: service.as_deref(),
                            scope: &scope,
                            base: &self.base,
                        };
                        let (t, until) =
                            token::fetch(&self.http, self.login.as_ref(), &request).await?;
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

/// Whether a status is worth retrying: 429 and 5xx.
pub(crate) fn retryable(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

/// The delay before retry `attempt + 1`.
pub(crate) fn backoff(attempt: u32) -> Duration {
    BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// The wait a `Retry-After` asks for (RFC 9110 §10.2.3: delay-seconds or
/// an HTTP-date; a date in the past is no wait), at most
/// [`MAX_RETRY_AFTER`]. `None` without the header or with a value of
/// neither form (the caller then backs off as usual).
pub(crate) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    retry_after_at(h.get(RETRY_AFTER)?.to_str().ok()?, SystemTime::now())
}

/// [`retry_after`] of the header's value, at `now`.
pub(crate) fn retry_after_at(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        let at = |v: &str| retry_after_at(v, now);
        assert_eq!(at("7"), Some(Duration::from_secs(7)));
        assert_eq!(at(" 120 "), Some(MAX_RETRY_AFTER));
        assert_eq!(
            at("Wed, 21 Oct 2015 07:28:09 GMT"),
            Some(Duration::from_secs(9))
        );
        // The obsolete forms RFC 9110 still asks recipients to accept.
        assert_eq!(
            at("Wednesday, 21-Oct-15 07:28:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(at("Wed Oct 21 07:28:02 2015"), Some(Duration::from_secs(2)));
        // In the past: no wait; far ahead: the bound.
        assert_eq!(at("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(at("Thu, 22 Oct 2015 07:28:00 GMT"), Some(MAX_RETRY_AFTER));
        for bad in ["", "-1", "soon", "1.5", "Wed, 32 Oct 2015 07:28:00 GMT"] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
    }
}
