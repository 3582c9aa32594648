//! The HTTP client's TLS: system roots plus a containers-certs.d(5)
//! directory (`--cert-dir`), timeouts and the redirect bound.

use std::path::{Path, PathBuf};

use super::client::MAX_REDIRECTS;
use super::{RegistryError, RegistryOptions, RegistryRef};

/// The reqwest client for `r`: TLS roots, client certificate, timeouts, redirects.
pub(crate) fn http_client(
    r: &RegistryRef,
    opts: &RegistryOptions,
) -> Result<reqwest::Client, RegistryError> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("lode/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .connect_timeout(opts.timeout)
        .read_timeout(opts.timeout)
        .pool_max_idle_per_host(8);
    let dirs: Vec<PathBuf> = match &opts.cert_dir {
        Some(d) => vec![d.clone()],
        None => ["/etc/containers/certs.d", "/etc/docker/certs.d"]
            .iter()
            .map(|root| Path::new(root).join(&r.host))
            .filter(|d| d.is_dir())
            .collect(),
    };
    let mut roots = Vec::new();
    for dir in &dirs {
        let (cas, identity) = cert_dir(dir)?;
        roots.extend(cas);
        if let Some(id) = identity {
            b = b.identity(id);
        }
    }
    if !roots.is_empty() {
        b = b.tls_certs_merge(roots);
    }
    if !opts.tls_verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build().map_err(RegistryError::Client)
}

/// Reads a skopeo / containers-certs.d(5) directory: every `*.crt` is a CA
/// bundle; `NAME.cert` with `NAME.key` is a client certificate and key.
fn cert_dir(
    dir: &Path,
) -> Result<(Vec<reqwest::Certificate>, Option<reqwest::Identity>), RegistryError> {
    let io = |path: &Path, source| RegistryError::CertDir {
        path: path.to_owned(),
        source,
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| io(dir, e)))
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut cas = Vec::new();
    let mut identity = None;
    for path in &names {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let read = |p: &Path| std::fs::read(p).map_err(|e| io(p, e));
        let cert_err = |p: &Path| {
            let p = p.to_owned();
            move |source| RegistryError::Cert { path: p, source }
        };
        match ext {
            "crt" => cas.extend(
                reqwest::Certificate::from_pem_bundle(&read(path)?).map_err(cert_err(path))?,
            ),
            "cert" => {
                let key = path.with_extension("key");
                if !key.is_file() {
                    return Err(RegistryError::CertPair {
                        path: dir.to_owned(),
                        name: file_name(path),
                        missing: ".key",
                    });
                }
                let mut pem = read(path)?;
                pem.push(b'\n');
                pem.extend(read(&key)?);
                identity = Some(reqwest::Identity::from_pem(&pem).map_err(cert_err(path))?);
            }
            "key" if !path.with_extension("cert").is_file() => {
                return Err(RegistryError::CertPair {
                    path: dir.to_owned(),
                    name: file_name(path),
                    missing: ".cert",
                })
            }
            _ => {}
        }
    }
    Ok((cas, identity))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
