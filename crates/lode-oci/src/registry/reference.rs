//! `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]` references, normalized the
//! way skopeo and containerd do (`busybox` = `docker.io/library/busybox:latest`).

use std::fmt;

use crate::digest::is_sha256_hex;
use crate::OciError;

/// The registry of references without a host, and its API endpoint.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed registry image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RegistryRef {
    /// `HOST[:PORT]` as written (`docker.io` when omitted).
    pub host: String,
    /// The repository path, e.g. `library/busybox`.
    pub repo: String,
    /// The tag, if any (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// `sha256:<hex>`, if the reference pins a digest (it wins over the tag).
    pub digest: Option<String>,
}

impl RegistryRef {
    /// Parses the part after `docker://`.
    pub fn parse(input: &str, rest: &str) -> Result<RegistryRef, OciError> {
        let bad = |reason: &str| OciError::BadSource {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let (name_tag, digest) = match rest.split_once('@') {
            Some((n, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("digest must be sha256:<64 lowercase hex digits>"))?;
                if !is_sha256_hex(hex) {
                    return Err(bad("digest must be sha256:<64 lowercase hex digits>"));
                }
                (n, Some(d.to_owned()))
            }
            None => (rest, None),
        };
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes().enumerate().all(|(i, b)| {
                    b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
                });
            if !ok {
                return Err(bad("tag must be [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
            }
        }
        let (host, repo) = match name.split_once('/') {
            Some((first, repo))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), repo.to_owned())
            }
            Some(_) => (DOCKER_HUB.to_owned(), name.to_owned()),
            None => (DOCKER_HUB.to_owned(), format!("library/{name}")),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(bad("invalid registry host"));
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        };
        if repo.len() > 255 || !repo.split('/').all(component_ok) {
            return Err(bad(
                "repository must be lowercase path components [a-z0-9] joined by '.', '_' or '-'",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(RegistryRef {
            host,
            repo,
            tag,
            digest,
        })
    }

    /// The host the API is served from (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.host == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.host
        }
    }

    /// What to ask `/v2/REPO/manifests/` for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// Whether the host is a loopback address (`localhost`, `127.0.0.0/8`, `[::1]`),
    /// where plain HTTP is allowed as a fallback.
    pub fn is_loopback(&self) -> bool {
        let host = match self.host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => &self.host,
        };
        host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback())
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}/{}", self.host, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<RegistryRef, OciError> {
        RegistryRef::parse(s, s)
    }

    #[test]
    fn normalizes_like_skopeo() -> Result<(), OciError> {
        let r = p("busybox")?;
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.tag.as_deref()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = p("user/app:1.2")?;
        assert_eq!(
            (r.host.as_str(), r.repo.as_str()),
            ("docker.io", "user/app")
        );
        let r = p("127.0.0.1:5000/a/b:v1")?;
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "a/b", Some("v1"))
        );
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), "docker://127.0.0.1:5000/a/b:v1");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = p(&format!("localhost/x@{d}"))?;
        assert_eq!((r.tag.as_deref(), r.manifest_ref()), (None, d.as_str()));
        let r = p(&format!("ghcr.io/x:t@{d}"))?;
        assert_eq!(r.manifest_ref(), d);
        assert!(!r.is_loopback());
        Ok(())
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "host.io/",
            "host.io/UPPER",
            "host.io/a:",
            "host.io/a:-x",
            "host.io/a@sha256:12",
            "host.io/a@md5:00",
            "host.io/a//b",
            "ho st.io/a",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
