//! Errors of the registry transport. Every variant names the URL (or file)
//! involved; none ever carries a password or token: URLs never hold
//! credentials, and bodies quoted from registries are their JSON error codes.

use std::io;
use std::path::PathBuf;

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry answered with an error status.
    #[error("{method} {url}: HTTP {status}{}{}", explain(*status), detail_suffix(detail))]
    Status {
        /// `GET`, `HEAD`.
        method: &'static str,
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error code and message, if it sent one.
        detail: Option<String>,
    },

    /// The request could not be sent or its answer not read (DNS, connect,
    /// TLS handshake, reset), after the retries.
    #[error("{method} {url}: {}", chain(source))]
    Transport {
        /// `GET`, `HEAD`.
        method: &'static str,
        /// The URL requested.
        url: String,
        /// The client error.
        source: reqwest::Error,
    },

    /// The registry accepted the connection but stopped sending.
    #[error("GET {url}: the registry stopped answering (nothing received for {secs} s, {attempts} attempts)")]
    Stalled {
        /// The URL requested.
        url: String,
        /// The read timeout in seconds.
        secs: u64,
        /// How many times it was tried.
        attempts: u32,
    },

    /// Redirects went round in a loop or exceeded the bound.
    #[error("GET {url}: redirect loop or more than {max} redirects")]
    Redirects {
        /// The URL requested first.
        url: String,
        /// The redirect bound.
        max: usize,
    },

    /// A manifest or other document is larger than the limit.
    #[error("GET {url}: answer larger than {limit} bytes")]
    TooLarge {
        /// The URL requested.
        url: String,
        /// The limit in bytes.
        limit: u64,
    },

    /// A blob ended before its declared size on every attempt.
    #[error("GET {url}: blob truncated: {got} of {expected} bytes after {attempts} attempts")]
    Truncated {
        /// The blob URL.
        url: String,
        /// Bytes received.
        got: u64,
        /// The size the manifest declares.
        expected: u64,
        /// How many times it was tried (with `Range` resumption).
        attempts: u32,
    },

    /// The registry answered a `Range` request with a different range.
    #[error("GET {url}: asked for bytes from {asked}, the registry sent {content_range:?}")]
    BadRange {
        /// The blob URL.
        url: String,
        /// The first byte asked for.
        asked: u64,
        /// The `Content-Range` it sent.
        content_range: String,
    },

    /// The registry asks for an authentication scheme other than Basic and Bearer.
    #[error("{url}: unsupported authentication scheme {scheme:?} (supported: Basic, Bearer)")]
    AuthScheme {
        /// The URL that was refused.
        url: String,
        /// The scheme of its `WWW-Authenticate` challenge.
        scheme: String,
    },

    /// A bearer challenge lacks its realm or names a realm that is not a URL.
    #[error("{url}: bearer challenge without a usable realm")]
    BadChallenge {
        /// The URL whose challenge it was.
        url: String,
    },

    /// The token endpoint's answer is not a token.
    #[error("{method} {url}: invalid token response: {source}")]
    TokenJson {
        /// `GET` (the token flow) or `POST` (the OAuth2 refresh-token flow).
        method: &'static str,
        /// The token endpoint (no credentials in it).
        url: String,
        /// The parse error.
        source: serde_json::Error,
    },

    /// `--creds` is not `USER:PASSWORD`.
    #[error("--creds must be USER:PASSWORD (the value is not shown)")]
    BadCreds,

    /// An auth file could not be read.
    #[error("auth file {}: {source}", path.display())]
    AuthfileIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },

    /// An auth file is not containers-auth.json / docker config.json.
    #[error("auth file {}: not a containers-auth.json / docker config.json: {source}", path.display())]
    AuthfileJson {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },

    /// An auth file entry's `auth` is not base64 of `USER:PASSWORD`.
    #[error("auth file {}: entry {key:?}: \"auth\" is not base64 of USER:PASSWORD", path.display())]
    AuthfileEntry {
        /// The file.
        path: PathBuf,
        /// The registry key of the entry.
        key: String,
    },

    /// A credential helper (`credHelpers`, `credsStore`) gave no credentials.
    #[error("credential helper {helper} for {registry}: {reason}")]
    CredHelper {
        /// The program, `docker-credential-NAME`.
        helper: String,
        /// The server URL it was asked about.
        registry: String,
        /// What went wrong.
        #[source]
        reason: super::helper::HelperFailure,
    },

    /// A certificate directory could not be read.
    #[error("certificate directory {}: {source}", path.display())]
    CertDir {
        /// The directory or file in it.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },

    /// A certificate or key in the certificate directory is not valid PEM.
    #[error("certificate file {}: {source}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: reqwest::Error,
    },

    /// A client certificate (`*.cert`) has no key (`*.key`) beside it, or the reverse.
    #[error("certificate directory {}: {name} has no matching {missing}", path.display())]
    CertPair {
        /// The directory.
        path: PathBuf,
        /// The file that is alone.
        name: String,
        /// The extension of the missing partner.
        missing: &'static str,
    },

    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),

    /// The registry client's runtime could not be started.
    #[error("starting the registry client's threads: {0}")]
    Runtime(#[source] io::Error),
}

impl RegistryError {
    /// A transport error; a redirect failure becomes [`RegistryError::Redirects`].
    pub(crate) fn transport(method: &'static str, url: &str, source: reqwest::Error) -> Self {
        if source.is_redirect() {
            return RegistryError::Redirects {
                url: url.to_owned(),
                max: super::client::MAX_REDIRECTS,
            };
        }
        RegistryError::Transport {
            method,
            url: url.to_owned(),
            source,
        }
    }
}

fn explain(status: u16) -> &'static str {
    match status {
        401 => " Unauthorized: credentials missing or rejected (--creds, --authfile)",
        403 => " Forbidden: access denied to this repository",
        404 => " Not Found: no such repository, tag or blob",
        429 => " Too Many Requests (gave up after retrying)",
        500..=599 => " server error (gave up after retrying)",
        _ => "",
    }
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

/// A reqwest error and its causes on one line (the TLS reason is a cause).
fn chain(e: &reqwest::Error) -> String {
    lode_common::errors::chain(e)
}
