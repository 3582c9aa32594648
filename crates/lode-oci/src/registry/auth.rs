//! Credentials (`--creds`, auth files in the containers-auth.json / docker
//! config.json format: `auths` entries with `auth` or `identitytoken`,
//! `credHelpers` and `credsStore`) and `WWW-Authenticate` challenges.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::reference::{RegistryRef, DOCKER_HUB};
use super::RegistryError;

/// A user name and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password (or token used as one).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Parses `USER:PASSWORD` (the password may contain `:`).
    pub fn parse(s: &str) -> Result<Credentials, RegistryError> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials {
                username: u.to_owned(),
                password: p.to_owned(),
            }),
            _ => Err(RegistryError::BadCreds),
        }
    }
}

/// An OAuth2 refresh token (an auth file's `identitytoken`, or a credential
/// helper's secret for the user `<token>`). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct IdentityToken(pub(crate) String);

impl fmt::Debug for IdentityToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityToken(<redacted>)")
    }
}

/// What the client logs in with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Login {
    /// A user and password: HTTP Basic, or the token endpoint's GET with them.
    Basic(Credentials),
    /// A refresh token for the token endpoint's OAuth2 POST
    /// (`grant_type=refresh_token`); nothing for a Basic registry.
    IdentityToken(IdentityToken),
}

/// What an auth file says about a registry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// Credentials written in the file.
    Login(Login),
    /// Ask the credential helper `docker-credential-NAME`.
    Helper(String),
}

/// The part of an auth file this crate reads.
#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// Registry host → credential helper name.
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    /// The credential helper of every registry without its own.
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The auth files searched when `--authfile` is not given, in
/// containers-auth.json(5) order: `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/...`),
/// `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`).
pub fn default_authfiles() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("HOME");
    let mut out = Vec::new();
    out.extend(env("REGISTRY_AUTH_FILE"));
    out.extend(env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    match env("XDG_CONFIG_HOME") {
        Some(d) => out.push(d.join("containers/auth.json")),
        None => out.extend(
            home.as_ref()
                .map(|h| h.join(".config/containers/auth.json")),
        ),
    }
    match env("DOCKER_CONFIG") {
        Some(d) => out.push(d.join("config.json")),
        None => out.extend(home.as_ref().map(|h| h.join(".docker/config.json"))),
    }
    out
}

/// The auth file keys that apply to `r`, most specific first:
/// `host/repo/path`, ..., `host/repo`, `host` (and Docker Hub's legacy names).
fn keys_for(r: &RegistryRef) -> Vec<String> {
    let mut keys = Vec::new();
    let mut path = format!("{}/{}", r.host, r.repo);
    loop {
        keys.push(path.clone());
        match path.rfind('/') {
            Some(i) => path.truncate(i),
            None => break,
        }
    }
    if r.host == DOCKER_HUB {
        keys.push("index.docker.io".to_owned());
        keys.push("registry-1.docker.io".to_owned());
    }
    keys
}

/// An auth file key without scheme and API suffix (`https://index.docker.io/v1/`
/// → `index.docker.io`), as containers/image normalizes them.
fn normalize_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    match k.split_once('/') {
        Some((host, rest))
            if key.contains("://")
                && (rest.starts_with("v1") || rest.starts_with("v2") || rest.is_empty()) =>
        {
            host
        }
        _ => k.trim_end_matches('/'),
    }
}

/// The hosts `r`'s registry is known by in `credHelpers` (Docker Hub's
/// several names included).
fn helper_hosts(r: &RegistryRef) -> Vec<&str> {
    let mut hosts = vec![r.host.as_str()];
    if r.host == DOCKER_HUB {
        hosts.extend(["index.docker.io", "registry-1.docker.io"]);
    }
    hosts
}

/// Parses an auth file's text and says what it holds for `r`, in the docker
/// CLI's order: a `credHelpers` entry for the registry, else the most
/// specific `auths` entry with an `identitytoken` or `auth`, else
/// `credsStore`.
pub(crate) fn lookup_in(
    text: &[u8],
    path: &Path,
    r: &RegistryRef,
) -> Result<Option<Found>, RegistryError> {
    let file: AuthFile =
        serde_json::from_slice(text).map_err(|source| RegistryError::AuthfileJson {
            path: path.to_owned(),
            source,
        })?;
    let hosts = helper_hosts(r);
    for (k, helper) in &file.cred_helpers {
        if hosts.contains(&normalize_key(k)) && !helper.is_empty() {
            return Ok(Some(Found::Helper(helper.clone())));
        }
    }
    for key in keys_for(r) {
        for (k, entry) in &file.auths {
            if normalize_key(k) != key {
                continue;
            }
            if let Some(t) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
                return Ok(Some(Found::Login(Login::IdentityToken(IdentityToken(
                    t.to_owned(),
                )))));
            }
            let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) else {
                continue;
            };
            let bad = || RegistryError::AuthfileEntry {
                path: path.to_owned(),
                key: k.clone(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let text = String::from_utf8(decoded).map_err(|_| bad())?;
            return Credentials::parse(&text)
                .map(|c| Some(Found::Login(Login::Basic(c))))
                .map_err(|_| bad());
        }
    }
    Ok(file
        .creds_store
        .filter(|s| !s.is_empty())
        .map(Found::Helper))
}

/// The login for `r` from `explicit` (must exist) or else the first
/// default auth file that has one for it; credential helpers are run
/// (bounded by `timeout`), and one holding nothing for `r` passes on to the
/// next file.
pub(crate) fn lookup(
    explicit: Option<&Path>,
    r: &RegistryRef,
    timeout: Duration,
) -> Result<Option<Login>, RegistryError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| RegistryError::AuthfileIo {
            path: p.to_owned(),
            source,
        })
    };
    let resolve = |found: Option<Found>| match found {
        None => Ok(None),
        Some(Found::Login(l)) => Ok(Some(l)),
        Some(Found::Helper(name)) => {
            super::helper::get(&name, &super::helper::server_url(&r.host), timeout)
        }
    };
    if let Some(p) = explicit {
        return resolve(lookup_in(&read(p)?, p, r)?);
    }
    for p in default_authfiles() {
        if !p.is_file() {
            continue;
        }
        if let Some(l) = resolve(lookup_in(&read(&p)?, &p, r)?)? {
            return Ok(Some(l));
        }
    }
    Ok(None)
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter, if given.
        service: Option<String>,
        /// The `scope` parameter, if given.
        scope: Option<String>,
    },
    /// Any other scheme (named).
    Other(String),
}

/// Parses one `WWW-Authenticate` header value (RFC 7235 auth-params,
/// quoted strings with `\` escapes). `None` if it has no scheme.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.find(char::is_whitespace) {
        Some(i) => (&header[..i], header[i..].trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let mut value = String::new();
        if let Some(q) = rest.strip_prefix('"') {
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = q.get(end..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        params.insert(key, value);
        rest = rest
            .trim_start()
            .strip_prefix(',')
            .unwrap_or(rest)
            .trim_start();
    }
    Some(if scheme.eq_ignore_ascii_case("basic") {
        Challenge::Basic
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Challenge::Bearer {
            realm: params.remove("realm").unwrap_or_default(),
            service: params.remove("service"),
            scope: params.remove("scope"),
        }
    } else {
        Challenge::Other(scheme.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegistryRef {
        RegistryRef::parse(s, s).expect("reference")
    }

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://x/t , service = "a\"b""#),
            Some(Challenge::Bearer {
                realm: "http://x/t".into(),
                service: Some("a\"b".into()),
                scope: None
            })
        );
        assert_eq!(
            parse_challenge("Negotiate"),
            Some(Challenge::Other("Negotiate".into()))
        );
        assert_eq!(parse_challenge("  "), None);
        assert!(matches!(
            parse_challenge(r#"Bearer realm="unterminated"#),
            Some(Challenge::Bearer { .. })
        ));
    }

    #[test]
    fn authfile_lookup_most_specific_first() -> Result<(), RegistryError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text = format!(
            r#"{{"auths":{{"reg.io":{{"auth":"{}"}},"reg.io/team":{{"auth":"{}"}},"https://index.docker.io/v1/":{{"auth":"{}"}}}},"credsStore":"x"}}"#,
            b64("host:pw"),
            b64("team:p:w"),
            b64("hub:pw")
        );
        let p = Path::new("auth.json");
        let basic = |found: Option<Found>| match found {
            Some(Found::Login(Login::Basic(c))) => c,
            other => panic!("basic credentials expected, got {other:?}"),
        };
        let c = basic(lookup_in(text.as_bytes(), p, &r("reg.io/team/app:1"))?);
        assert_eq!((c.username.as_str(), c.password.as_str()), ("team", "p:w"));
        let c = basic(lookup_in(text.as_bytes(), p, &r("reg.io/other"))?);
        assert_eq!(c.username, "host");
        let c = basic(lookup_in(text.as_bytes(), p, &r("busybox"))?);
        assert_eq!(c.username, "hub");
        // No entry: the file's credsStore.
        assert_eq!(
            lookup_in(text.as_bytes(), p, &r("elsewhere.io/x"))?,
            Some(Found::Helper("x".into()))
        );
        let plain = format!(
            r#"{{"auths":{{"reg.io":{{"auth":"{}"}}}}}}"#,
            b64("host:pw")
        );
        assert!(lookup_in(plain.as_bytes(), p, &r("elsewhere.io/x"))?.is_none());
        let bad = format!(
            r#"{{"auths":{{"reg.io":{{"auth":"{}"}}}}}}"#,
            b64("nocolon")
        );
        let e = lookup_in(bad.as_bytes(), p, &r("reg.io/x")).expect_err("bad entry");
        assert!(!e.to_string().contains("nocolon"), "{e}");
        assert!(lookup_in(b"[", p, &r("reg.io/x")).is_err());
        Ok(())
    }

    #[test]
    fn helpers_and_identity_tokens() -> Result<(), RegistryError> {
        let text = r#"{
            "auths": {
                "reg.io": {"auth": "PHRva2VuPjo=", "identitytoken": "refresh-me"},
                "helped.io": {"auth": "dTpw"},
                "https://index.docker.io/v1/": {}
            },
            "credHelpers": {"helped.io": "secretservice", "index.docker.io": "desktop"},
            "credsStore": "pass"
        }"#;
        let p = Path::new("config.json");
        let found = lookup_in(text.as_bytes(), p, &r("reg.io/app"))?;
        assert_eq!(
            found,
            Some(Found::Login(Login::IdentityToken(IdentityToken(
                "refresh-me".into()
            ))))
        );
        assert!(!format!("{found:?}").contains("refresh-me"));
        // credHelpers wins over an inline entry; Docker Hub by its index name.
        assert_eq!(
            lookup_in(text.as_bytes(), p, &r("helped.io/app"))?,
            Some(Found::Helper("secretservice".into()))
        );
        assert_eq!(
            lookup_in(text.as_bytes(), p, &r("busybox"))?,
            Some(Found::Helper("desktop".into()))
        );
        assert_eq!(
            lookup_in(text.as_bytes(), p, &r("other.io/app"))?,
            Some(Found::Helper("pass".into()))
        );
        Ok(())
    }

    #[test]
    fn creds_debug_hides_password() -> Result<(), RegistryError> {
        let c = Credentials::parse("u:secret:x")?;
        assert_eq!(c.password, "secret:x");
        assert!(!format!("{c:?}").contains("secret"));
        assert!(Credentials::parse("nopass").is_err());
        assert!(Credentials::parse(":pw").is_err());
        Ok(())
    }
}
