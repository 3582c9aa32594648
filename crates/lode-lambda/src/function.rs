//! A function's definition and the image it pins.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A lode image reference, `TENANT/NAME[@sha256:HEX]` (the form of
/// `Code.ImageUri`). A function always stores it with the digest: the image
/// is pinned when the function is created or its code updated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef {
    /// Tenant that owns the image.
    pub tenant: String,
    /// Image name.
    pub name: String,
    /// Manifest digest, `sha256:<64 hex>` (as `lode images` prints it).
    pub digest: Option<String>,
}

/// Why a string is not an [`ImageRef`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {input:?} is not TENANT/NAME[@sha256:HEX]: {reason}")]
pub struct ImageRefError {
    /// The string given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with('.')
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ImageRefError {
            input: s.chars().take(300).collect(),
            reason,
        };
        let (path, digest) = match s.split_once('@') {
            Some((p, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or(err("the digest is not sha256:"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err("the digest is not 64 hex digits"));
                }
                (p, Some(format!("sha256:{}", hex.to_ascii_lowercase())))
            }
            None => (s, None),
        };
        let (tenant, name) = path
            .split_once('/')
            .ok_or(err("no tenant/ before the name"))?;
        if !plain(tenant) || !plain(name) {
            return Err(err("tenant and name are 1-128 of [A-Za-z0-9._-]"));
        }
        Ok(ImageRef {
            tenant: tenant.to_string(),
            name: name.to_string(),
            digest,
        })
    }
}

impl TryFrom<String> for ImageRef {
    type Error = ImageRefError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ImageRef> for String {
    fn from(r: ImageRef) -> String {
        r.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.name)?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Everything a worker needs to run a function: what the frontend stores
/// and sends with each invocation. Field names are Lambda's where Lambda has
/// the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Tenant that owns the function (and the account id in its ARN).
    pub tenant: String,
    /// Function name.
    pub name: String,
    /// `arn:aws:lambda:REGION:ACCOUNT:function:NAME`.
    pub arn: String,
    /// Code revision: 1 at create, +1 at each UpdateFunctionCode. A warm
    /// sandbox serves only the revision it was started with.
    pub revision: u64,
    /// The image, pinned to its digest.
    pub image: ImageRef,
    /// Guest memory in MiB (Lambda's `MemorySize`, 128-10240).
    pub memory_mib: u32,
    /// Longest invocation in seconds (Lambda's `Timeout`, 1-900).
    pub timeout_s: u32,
    /// Environment variables (`Environment.Variables`).
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// `ImageConfig.EntryPoint` (else the image's own).
    #[serde(default)]
    pub entry_point: Option<Vec<String>>,
    /// `ImageConfig.Command` (else the image's own).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// `ImageConfig.WorkingDirectory` (else the image's own).
    #[serde(default)]
    pub working_directory: Option<String>,
    /// What the image itself says to run (its OCI config, read from the
    /// pinned image when the function's code is set).
    #[serde(default)]
    pub image_config: ImageConfig,
}

/// The run settings of an OCI image config (`config.Entrypoint`, `Cmd`,
/// `Env`, `WorkingDir`, `User`), as lode keeps them in the image
/// (`/.lode/image.json`, see docs/format.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `Env`, `NAME=VALUE` each.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `User`.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

/// What a sandbox runs: the function's settings over the image's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Program and arguments: entry point followed by command.
    pub argv: Vec<String>,
    /// Environment: the image's, then the function's (which win).
    pub env: BTreeMap<String, String>,
    /// Working directory (`/` when neither sets one).
    pub working_dir: String,
}

impl FunctionSpec {
    /// The key that names one runnable version of this function: warm
    /// sandboxes are matched on it.
    pub fn sandbox_key(&self) -> String {
        format!("{}:{}", self.arn, self.revision)
    }

    /// What a sandbox runs, as Lambda composes it: `ImageConfig` values
    /// replace the image's (an empty list counts as set), the entry point
    /// comes before the command, and the function's variables override the
    /// image's.
    pub fn launch(&self) -> Launch {
        let ic = &self.image_config;
        let entry = self.entry_point.clone().or(ic.entrypoint.clone());
        // Docker's rule: a new entry point drops the image's command.
        let cmd = match (&self.command, &self.entry_point) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(_)) => None,
            (None, None) => ic.cmd.clone(),
        };
        let argv = entry
            .into_iter()
            .flatten()
            .chain(cmd.into_iter().flatten())
            .collect();
        let mut env = BTreeMap::new();
        for kv in ic.env.iter().flatten() {
            if let Some((k, v)) = kv.split_once('=') {
                env.insert(k.to_string(), v.to_string());
            }
        }
        env.extend(self.environment.clone());
        let working_dir = self
            .working_directory
            .clone()
            .or(ic.working_dir.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/".to_string());
        Launch {
            argv,
            env,
            working_dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ic: ImageConfig) -> FunctionSpec {
        FunctionSpec {
            tenant: "t".into(),
            name: "f".into(),
            arn: "arn:aws:lambda:us-east-1:t:function:f".into(),
            revision: 1,
            image: "t/i".parse().unwrap(),
            memory_mib: 128,
            timeout_s: 3,
            environment: BTreeMap::new(),
            entry_point: None,
            command: None,
            working_directory: None,
            image_config: ic,
        }
    }

    #[test]
    fn launch_puts_the_function_over_the_image() {
        let ic = ImageConfig {
            entrypoint: Some(vec!["/lambda-entrypoint.sh".into()]),
            cmd: Some(vec!["app.handler".into()]),
            env: Some(vec![
                "PATH=/usr/bin".into(),
                "A=image".into(),
                "junk".into(),
            ]),
            working_dir: Some("/var/task".into()),
            user: None,
        };
        let mut f = spec(ic.clone());
        let l = f.launch();
        assert_eq!(l.argv, ["/lambda-entrypoint.sh", "app.handler"]);
        assert_eq!(l.working_dir, "/var/task");
        assert_eq!(l.env.get("A").map(String::as_str), Some("image"));
        f.command = Some(vec!["other.fn".into()]);
        f.environment.insert("A".into(), "fn".into());
        let l = f.launch();
        assert_eq!(l.argv, ["/lambda-entrypoint.sh", "other.fn"]);
        assert_eq!(l.env.get("A").map(String::as_str), Some("fn"));
        f.command = None;
        f.entry_point = Some(vec!["/bootstrap".into()]);
        assert_eq!(f.launch().argv, ["/bootstrap"]);
        assert_eq!(spec(ImageConfig::default()).launch().working_dir, "/");
    }

    #[test]
    fn image_refs_parse_and_print() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r: ImageRef = format!("acme/py@{d}").parse().unwrap();
        assert_eq!((r.tenant.as_str(), r.name.as_str()), ("acme", "py"));
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.to_string(), format!("acme/py@{d}"));
        let r: ImageRef = "acme/py".parse().unwrap();
        assert_eq!(r.digest, None);
        for bad in [
            "py",
            "/py",
            "acme/",
            "acme/p y",
            "acme/py@md5:00",
            "acme/py@sha256:zz",
            "a/b/c",
            "acme/..",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }
}
