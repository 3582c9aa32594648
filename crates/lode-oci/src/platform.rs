//! The platform (`OS/ARCH[/VARIANT]`) an image is selected for in an image
//! index or manifest list.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, Platform as SpecPlatform};

use crate::OciError;

/// A platform as `--platform` spells it: `OS/ARCH[/VARIANT]`, e.g.
/// `linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture in OCI spelling (`amd64`, `arm64`, `arm`, ...).
    pub arch: String,
    /// Architecture variant (`v7`, `v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the running host (`linux/amd64` on x86-64,
    /// `linux/arm64` on aarch64, ...), the default selection.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "riscv64" => "riscv64",
            "s390x" => "s390x",
            "arm" => "arm",
            other => other,
        };
        Platform {
            os: "linux".to_owned(),
            arch: arch.to_owned(),
            variant: None,
        }
    }

    /// Whether an index entry's platform is this one. A wanted platform
    /// without a variant matches any variant of its OS and architecture
    /// (containerd's and skopeo's behaviour for `linux/arm64`).
    pub fn matches(&self, p: &SpecPlatform) -> bool {
        p.os().to_string() == self.os
            && p.architecture().to_string() == self.arch
            && match &self.variant {
                None => true,
                Some(v) => p.variant().as_deref() == Some(v.as_str()),
            }
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform::host()
    }
}

impl FromStr for Platform {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || OciError::BadPlatform {
            input: s.to_owned(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(bad());
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            arch: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// `os/arch[/variant]` of an index entry's platform.
fn platform_string(p: &SpecPlatform) -> String {
    match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    }
}

/// Picks the entry for `wanted` from an index's manifests, or fails with
/// the list of platforms the index has.
pub(crate) fn pick<'a>(
    descs: impl Iterator<Item = &'a Descriptor>,
    wanted: &Platform,
) -> Result<&'a Descriptor, OciError> {
    let mut available = Vec::new();
    for d in descs {
        match d.platform() {
            Some(p) if wanted.matches(p) => return Ok(d),
            Some(p) => available.push(platform_string(p)),
            None => available.push(format!("(no platform: {})", d.digest())),
        }
    }
    Err(OciError::NoPlatform {
        wanted: wanted.to_string(),
        available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() -> Result<(), OciError> {
        let p: Platform = "linux/arm64/v8".parse()?;
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(
            "linux/amd64".parse::<Platform>()?.to_string(),
            "linux/amd64"
        );
        for bad in ["", "linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn host_is_linux() {
        assert_eq!(Platform::host().os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(Platform::host().to_string(), "linux/amd64");
    }
}
