//! Image source strings in skopeo's transport syntax.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::{OciError, RegistryRef};

/// The transports understood by [`Source::from_str`].
pub const SUPPORTED_TRANSPORTS: &[&str] = &["oci", "docker-archive", "docker"];

/// Where an image comes from, in skopeo's transport syntax.
///
/// Parsing splits at the first `:` after the transport, like skopeo: the path
/// cannot contain `:`, the reference may (`oci:dir:name:tag`). An empty
/// reference (`oci:dir:`) is the same as none.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// `oci:DIR[:REF]` — an OCI image layout directory; REF matches the
    /// `org.opencontainers.image.ref.name` annotation in `index.json`
    /// (`@N` selects the Nth entry of `index.json`, like containers/image).
    OciLayout {
        /// The layout directory.
        dir: PathBuf,
        /// The reference name, if any.
        reference: Option<String>,
    },
    /// `docker-archive:FILE[:REF]` — a `docker save` style tar. REF is a
    /// RepoTag like `name:tag`, or `@N` = the Nth entry of `manifest.json`.
    DockerArchive {
        /// The tar file.
        file: PathBuf,
        /// The RepoTag or `@N`, if any.
        reference: Option<String>,
    },
    /// `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]` — an image in a
    /// registry (skopeo's `docker` transport).
    Registry(RegistryRef),
}

impl Source {
    /// The reference part (`REF`; a registry's tag or digest), if any.
    pub fn reference(&self) -> Option<&str> {
        match self {
            Source::OciLayout { reference, .. } | Source::DockerArchive { reference, .. } => {
                reference.as_deref()
            }
            Source::Registry(r) => Some(r.manifest_ref()),
        }
    }

    /// The path part (`DIR` or `FILE`); `None` for a registry.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Source::OciLayout { dir, .. } => Some(dir),
            Source::DockerArchive { file, .. } => Some(file),
            Source::Registry(_) => None,
        }
    }
}

/// Parses an `@N` reference (select the Nth entry) into `N`.
pub(crate) fn parse_index_ref(reference: &str) -> Option<usize> {
    let n = reference.strip_prefix('@')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

fn bad(input: &str, reason: impl Into<String>) -> OciError {
    OciError::BadSource {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

impl FromStr for Source {
    type Err = OciError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let supported = SUPPORTED_TRANSPORTS.join(", ");
        if let Some(rest) = input.strip_prefix("docker://") {
            return RegistryRef::parse(input, rest).map(Source::Registry);
        }
        let Some((transport, rest)) = input.split_once(':') else {
            return Err(bad(
                input,
                format!("missing transport prefix; expected TRANSPORT:PATH[:REF] with TRANSPORT one of: {supported}"),
            ));
        };
        let (path, reference) = match rest.split_once(':') {
            Some((p, r)) => (p, (!r.is_empty()).then(|| r.to_owned())),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(bad(input, "empty path"));
        }
        if let Some(r) = &reference {
            if r.starts_with('@') && parse_index_ref(r).is_none() {
                return Err(bad(
                    input,
                    format!("reference {r:?}: '@' must be followed by a manifest entry number"),
                ));
            }
        }
        match transport {
            "oci" => Ok(Source::OciLayout {
                dir: PathBuf::from(path),
                reference,
            }),
            "docker-archive" => Ok(Source::DockerArchive {
                file: PathBuf::from(path),
                reference,
            }),
            "docker" => Err(bad(
                input,
                "the docker transport is docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]",
            )),
            other => Err(bad(
                input,
                format!("unknown transport {other:?}; supported transports: {supported}"),
            )),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (transport, path, reference) = match self {
            Source::OciLayout { dir, reference } => ("oci", dir, reference),
            Source::DockerArchive { file, reference } => ("docker-archive", file, reference),
            Source::Registry(r) => return r.fmt(f),
        };
        write!(f, "{transport}:{}", path.display())?;
        if let Some(r) = reference {
            write!(f, ":{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Source, OciError> {
        s.parse()
    }

    #[test]
    fn parses_oci_without_ref() -> Result<(), OciError> {
        let s = parse("oci:/tmp/img")?;
        assert_eq!(
            s,
            Source::OciLayout {
                dir: "/tmp/img".into(),
                reference: None
            }
        );
        assert_eq!(s.to_string(), "oci:/tmp/img");
        Ok(())
    }

    #[test]
    fn ref_may_contain_colons() -> Result<(), OciError> {
        let s = parse("oci:dir:name:tag")?;
        assert_eq!(
            s,
            Source::OciLayout {
                dir: "dir".into(),
                reference: Some("name:tag".into())
            }
        );
        assert_eq!(s.reference(), Some("name:tag"));
        assert_eq!(s.to_string(), "oci:dir:name:tag");
        let s = parse("docker-archive:a.tar:registry.example/x/y:1.2")?;
        assert_eq!(
            s,
            Source::DockerArchive {
                file: "a.tar".into(),
                reference: Some("registry.example/x/y:1.2".into())
            }
        );
        assert_eq!(
            s.to_string(),
            "docker-archive:a.tar:registry.example/x/y:1.2"
        );
        Ok(())
    }

    #[test]
    fn docker_archive_index_ref() -> Result<(), OciError> {
        let s = parse("docker-archive:x.tar:@2")?;
        assert_eq!(s.reference(), Some("@2"));
        assert_eq!(parse(&s.to_string())?, s);
        for badref in [
            "docker-archive:x.tar:@",
            "docker-archive:x.tar:@x",
            "docker-archive:x.tar:@-1",
        ] {
            assert!(
                matches!(parse(badref), Err(OciError::BadSource { .. })),
                "{badref}"
            );
        }
        Ok(())
    }

    #[test]
    fn empty_ref_is_none() -> Result<(), OciError> {
        assert_eq!(parse("oci:d:")?.reference(), None);
        Ok(())
    }

    #[test]
    fn errors() {
        for input in ["oci:", "oci::ref", "docker-archive:", ""] {
            assert!(
                matches!(parse(input), Err(OciError::BadSource { .. })),
                "{input}"
            );
        }
        match parse("dockr:busybox") {
            Err(e @ OciError::BadSource { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("oci") && msg.contains("docker-archive"),
                    "{msg}"
                );
                assert!(msg.contains("\"dockr\""), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse("docker:busybox"),
            Err(OciError::BadSource { .. })
        ));
        match parse("docker://127.0.0.1:5000/a/b:t") {
            Ok(s @ Source::Registry(_)) => {
                assert_eq!(s.to_string(), "docker://127.0.0.1:5000/a/b:t");
                assert_eq!(s.reference(), Some("t"));
            }
            other => panic!("unexpected {other:?}"),
        }
        match parse("/just/a/path") {
            Err(OciError::BadSource { reason, .. }) => {
                assert!(reason.contains("transport"), "{reason}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
