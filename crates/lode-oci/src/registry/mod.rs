//! `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]` — images in a registry
//! (the OCI distribution API, as served by the CNCF distribution registry,
//! Harbor, ECR, GHCR, Docker Hub).
//!
//! [`open`] pings `/v2/`, authenticates (anonymous, basic, or the Docker
//! bearer-token flow with a `repository:REPO:pull` scope, refreshed on
//! expiry), fetches the manifest (Docker schema 2 or OCI; an index or
//! manifest list resolved for the wanted platform), verifying every digest,
//! and the config. Layers are streamed by [`blob::Fetcher`], never stored.

mod auth;
mod blob;
mod client;
mod error;
mod helper;
mod reference;
mod tls;
mod token;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oci_spec::image::{ImageIndex, ImageManifest};
use reqwest::header::CONTENT_TYPE;

pub use auth::{default_authfiles, parse_challenge, Challenge, Credentials};
pub(crate) use blob::Fetcher;
pub use error::RegistryError;
pub use helper::HelperFailure;
pub use reference::RegistryRef;

use crate::digest::{parse_json, sha256_of, verify_bytes, MAX_JSON_SIZE};
use crate::manifest::{
    self, Kind, DOCKER_LIST, DOCKER_MANIFEST, MAX_INDEX_DEPTH, OCI_INDEX, OCI_MANIFEST,
};
use crate::platform::{self, Platform};
use crate::{parse_config_diff_ids, Backend, OciError, Resolved};
use client::{read_capped, Client};

/// Fuzzing entry point (not API): `data` is a `WWW-Authenticate` value, a
/// newline, then an auth file. Checks what the parsers promise: a Bearer
/// challenge the client would use has an absolute realm; credentials found
/// have a non-empty user, tokens and helper names are non-empty; errors
/// never quote the auth file's secrets.
#[doc(hidden)]
pub fn fuzz_auth(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (header, file) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    if let Ok(h) = std::str::from_utf8(header) {
        if let Some(Challenge::Other(scheme)) = parse_challenge(h) {
            assert!(!scheme.is_empty() && !scheme.contains(char::is_whitespace));
        }
    }
    for r in ["reg.io/team/app", "busybox", "127.0.0.1:5000/a"] {
        let r = RegistryRef::parse(r, r).expect("a fixed reference parses");
        match auth::lookup_in(file, Path::new("auth.json"), &r) {
            Ok(Some(auth::Found::Login(auth::Login::Basic(c)))) => assert!(!c.username.is_empty()),
            Ok(Some(auth::Found::Login(auth::Login::IdentityToken(t)))) => assert!(!t.0.is_empty()),
            Ok(Some(auth::Found::Helper(name))) => assert!(!name.is_empty()),
            Ok(None) => {}
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("auth.json"), "{msg}");
            }
        }
    }
}

/// Fuzzing entry point (not API): `data` is a `Retry-After` value, a
/// newline, then a body read both as a token endpoint's answer and as a
/// credential helper's output. Checks what the parsers promise: a wait
/// within the bound, a token non-empty and living 1 s to a day, helper
/// credentials with a user and a secret, and helper errors that are fixed
/// texts and numbers, quoting nothing of the output (it may hold a secret).
#[doc(hidden)]
pub fn fuzz_answers(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (header, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    if let Ok(h) = std::str::from_utf8(header) {
        if let Some(wait) = client::retry_after_at(h, std::time::SystemTime::now()) {
            assert!(wait <= client::MAX_RETRY_AFTER);
        }
    }
    if let Ok((token, life)) = token::parse(body) {
        assert!(!token.is_empty());
        assert!(life >= Duration::from_secs(1) && life <= Duration::from_secs(86_400));
    }
    match helper::parse(body) {
        Ok(auth::Login::Basic(c)) => assert!(!c.username.is_empty() && !c.password.is_empty()),
        Ok(auth::Login::IdentityToken(t)) => assert!(!t.0.is_empty()),
        Err(e) => {
            // Digits aside, the message is one of a few fixed texts: nothing
            // of the output can be in it.
            let shape: String = e
                .to_string()
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .collect();
            let fixed = ["syntax", "data", "end of input", "read"].map(|kind| {
                format!("its output is not {{\"Username\",\"Secret\"}} JSON ({kind} error at line , column )")
            });
            assert!(
                fixed.contains(&shape) || shape == helper::HelperFailure::Empty.to_string(),
                "{shape}"
            );
        }
    }
}

/// The largest manifest or index read (containers/image's limit).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// How to reach a registry; the defaults are skopeo's.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// `--creds USER:PASSWORD`; wins over auth files.
    pub creds: Option<Credentials>,
    /// `--authfile FILE`; without it the default auth files are searched
    /// ([`default_authfiles`]).
    pub authfile: Option<PathBuf>,
    /// `--cert-dir DIR`: `*.crt` CA bundles, `NAME.cert` + `NAME.key` client
    /// certificate; without it `/etc/containers/certs.d/HOST[:PORT]` and
    /// `/etc/docker/certs.d/HOST[:PORT]` are used if they exist.
    pub cert_dir: Option<PathBuf>,
    /// `--tls-verify`: `false` accepts any certificate and allows plain HTTP.
    /// Plain HTTP is also allowed for loopback hosts.
    pub tls_verify: bool,
    /// Blobs downloaded at once (ahead of the layer being read).
    pub parallel: usize,
    /// How long the registry may stay silent: it bounds each connect and
    /// read, a credential helper's run, and the whole wait for the next byte
    /// of a blob, retries included (a registry silent this long has stopped
    /// answering).
    pub timeout: Duration,
    /// Told the total size of an image's layer blobs and each piece that
    /// arrives (a download progress bar).
    pub progress: Option<ProgressHook>,
}

/// Observes the downloads of an image's layer blobs (for a progress bar).
pub trait DownloadProgress: Send + Sync {
    /// The layer blobs to download total `bytes` (the sizes the manifest
    /// gives); called once the image is resolved.
    fn start(&self, bytes: u64);
    /// `bytes` more arrived (bytes received again after a resumption that
    /// had to restart from the beginning are not counted twice).
    fn advance(&self, bytes: u64);
}

/// A shared [`DownloadProgress`].
#[derive(Clone)]
pub struct ProgressHook(pub Arc<dyn DownloadProgress>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook")
    }
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            creds: None,
            authfile: None,
            cert_dir: None,
            tls_verify: true,
            parallel: 3,
            timeout: Duration::from_secs(30),
            progress: None,
        }
    }
}

/// The Accept header for manifests: the four kinds this crate reads.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A manifest-ish document as fetched.
struct Fetched {
    bytes: Vec<u8>,
    media_type: String,
    url: String,
    /// The registry's `Docker-Content-Digest`, if it sent a sha256 one.
    content_digest: Option<String>,
}

/// Resolves `r` to one image for `platform`.
pub(crate) fn open(
    r: &RegistryRef,
    platform: &Platform,
    opts: &RegistryOptions,
) -> Result<Resolved, OciError> {
    let client = Client::connect(r, opts)?;
    let mut want = r.manifest_ref().to_owned();
    let mut expect: Option<(String, Option<u64>)> = r.digest.clone().map(|d| (d, None));
    let mut depth = 0;
    let manifest = loop {
        let doc = fetch_manifest(&client, &want)?;
        if let Some((digest, size)) = &expect {
            verify_bytes(
                &format!("manifest at {}", doc.url),
                &doc.bytes,
                digest,
                *size,
            )?;
        } else if let Some(digest) = &doc.content_digest {
            // A tag: the registry's digest header, when given, must match.
            verify_bytes(
                &format!("manifest at {}", doc.url),
                &doc.bytes,
                digest,
                None,
            )?;
        }
        let digest = expect
            .as_ref()
            .map_or_else(|| sha256_of(&doc.bytes), |(d, _)| d.clone());
        let at = format!(" at {}", doc.url);
        let path = Path::new(&doc.url);
        match manifest::kind(&doc.media_type, &digest, &at)? {
            Kind::Index => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(OciError::UnsupportedSchema(format!(
                        "image index {digest}{at} is nested more than {MAX_INDEX_DEPTH} levels deep"
                    )));
                }
                let index: ImageIndex =
                    parse_json(&doc.bytes, &format!("image index {digest}"), path)?;
                let child = platform::pick(index.manifests().iter(), platform)?;
                want = child.digest().to_string();
                crate::digest::parse_sha256(&want)?;
                expect = Some((want.clone(), Some(child.size())));
                depth += 1;
            }
            Kind::Manifest => {
                let m: ImageManifest = parse_json(&doc.bytes, &format!("manifest {digest}"), path)?;
                manifest::check(&m, &digest)?;
                break m;
            }
        }
    };
    let cdesc = manifest.config();
    let config_digest = cdesc.digest().to_string();
    crate::digest::parse_sha256(&config_digest)?;
    if cdesc.size() > MAX_JSON_SIZE {
        return Err(OciError::TooLarge {
            what: format!("config {config_digest}"),
            size: cdesc.size(),
            limit: MAX_JSON_SIZE,
        });
    }
    let config_url = client.url("blobs", &config_digest);
    let config_json = {
        let c = client.clone();
        let url = config_url.clone();
        client.run(async move {
            let resp = c.get(&url, None, None).await?;
            read_capped(resp, MAX_JSON_SIZE as usize, &url).await
        })?
    };
    verify_bytes(
        &format!("config at {config_url}"),
        &config_json,
        &config_digest,
        Some(cdesc.size()),
    )?;
    let diff_ids = parse_config_diff_ids(&config_json, Path::new(&config_url))?;
    let layers = manifest::layer_descs(manifest.layers(), &diff_ids)?;
    let fetcher = Fetcher::new(client, &layers, opts.parallel, opts.progress.clone());
    Ok(Resolved {
        layers,
        config_digest,
        config_json,
        diff_ids,
        backend: Backend::Registry {
            fetcher: Arc::new(fetcher),
        },
    })
}

/// GETs `/v2/REPO/manifests/REF` (at most [`MAX_MANIFEST_SIZE`] bytes) and
/// its media type (the `Content-Type`, else the document's `mediaType`).
fn fetch_manifest(client: &Arc<Client>, reference: &str) -> Result<Fetched, OciError> {
    let url = client.url("manifests", reference);
    let c = client.clone();
    let u = url.clone();
    let (bytes, content_type, content_digest) = client.run(async move {
        let resp = c.get(&u, Some(MANIFEST_ACCEPT), None).await?;
        if let Some(len) = resp.content_length() {
            if len > MAX_MANIFEST_SIZE {
                return Err(RegistryError::TooLarge {
                    url: u,
                    limit: MAX_MANIFEST_SIZE,
                });
            }
        }
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        let cd = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .filter(|d| crate::digest::parse_sha256(d).is_ok())
            .map(str::to_owned);
        let bytes = read_capped(resp, MAX_MANIFEST_SIZE as usize, &u).await?;
        Ok((bytes, ct, cd))
    })?;
    let known = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];
    let media_type = match content_type {
        Some(ct) if known.contains(&ct.as_str()) || ct.starts_with("application/vnd.") => ct,
        other => {
            #[derive(serde::Deserialize)]
            struct MediaType {
                #[serde(rename = "mediaType")]
                media_type: Option<String>,
            }
            serde_json::from_slice::<MediaType>(&bytes)
                .ok()
                .and_then(|m| m.media_type)
                .or(other)
                .unwrap_or_default()
        }
    };
    Ok(Fetched {
        bytes,
        media_type,
        url,
        content_digest,
    })
}
