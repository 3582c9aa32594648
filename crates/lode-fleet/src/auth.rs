//! Who may write to the fleet: a keyed MAC on every request that changes a
//! lode cache node (stripe PUTs, lease requests and releases).
//!
//! Agents and nodes share a write key (a file of at least 32 bytes; leading
//! and trailing whitespace ignored). A request carries
//! `x-lode-auth: v1 <unix ms> <hex HMAC-SHA256>` over
//! `lode-fleet-auth v1\n<METHOD>\n<path and query>\n<unix ms>\n<hex SHA-256 of the body>`.
//! A node with a key refuses (401) a write without a valid MAC or with a
//! time more than [`MAX_SKEW`] away from its clock, and counts it. Reads need
//! no MAC: every chunk is verified against its name by the reader anyway.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The request header that carries the MAC.
pub const HEADER: &str = "x-lode-auth";
/// Largest clock difference accepted between a client and a node.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// Shortest write key accepted.
pub const MIN_KEY: usize = 32;

/// Why a key could not be loaded or a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key file could not be read.
    #[error("reading fleet write key {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file holds fewer than [`MIN_KEY`] bytes.
    #[error("fleet write key {path}: {len} bytes, need at least {MIN_KEY} (e.g. `head -c 32 /dev/urandom | base64 > FILE`)")]
    KeyTooShort {
        /// The file.
        path: PathBuf,
        /// Its length after trimming.
        len: usize,
    },
    /// The request has no MAC header.
    #[error("no {HEADER} header")]
    Missing,
    /// The header is not `v1 <ms> <hex>`.
    #[error("malformed {HEADER} header")]
    Malformed,
    /// The request's time is too far from the node's clock.
    #[error("request time {skew_ms} ms away from the node's clock (limit {} s)", MAX_SKEW.as_secs())]
    Stale {
        /// The difference.
        skew_ms: u64,
    },
    /// The MAC does not match.
    #[error("bad MAC")]
    BadMac,
}

impl AuthError {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Stale { .. } => "stale",
            AuthError::BadMac => "bad_mac",
            AuthError::KeyFile { .. } | AuthError::KeyTooShort { .. } => "key",
        }
    }
}

/// A shared write key.
#[derive(Clone)]
pub struct WriteKey(Vec<u8>);

impl std::fmt::Debug for WriteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteKey(..)")
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl WriteKey {
    /// Loads a key file.
    pub fn load(path: &Path) -> Result<WriteKey, AuthError> {
        let raw = std::fs::read(path).map_err(|source| AuthError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&raw).ok_or_else(|| AuthError::KeyTooShort {
            path: path.to_path_buf(),
            len: raw.trim_ascii().len(),
        })
    }

    /// A key from bytes (trimmed); `None` if shorter than [`MIN_KEY`].
    pub fn from_bytes(raw: &[u8]) -> Option<WriteKey> {
        let k = raw.trim_ascii();
        (k.len() >= MIN_KEY).then(|| WriteKey(k.to_vec()))
    }

    fn mac(&self, method: &str, pq: &str, ts: u64, body: &[u8]) -> Hmac<Sha256> {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        let body_hash = hex::encode(Sha256::digest(body));
        m.update(format!("lode-fleet-auth v1\n{method}\n{pq}\n{ts}\n{body_hash}").as_bytes());
        m
    }

    /// The header value for a request made now.
    pub fn sign(&self, method: &str, pq: &str, body: &[u8]) -> String {
        self.sign_at(method, pq, body, now_ms())
    }

    fn sign_at(&self, method: &str, pq: &str, body: &[u8], ts: u64) -> String {
        let tag = self.mac(method, pq, ts, body).finalize().into_bytes();
        format!("v1 {ts} {}", hex::encode(tag))
    }

    /// Checks a request's header value.
    pub fn verify(
        &self,
        header: Option<&str>,
        method: &str,
        pq: &str,
        body: &[u8],
    ) -> Result<(), AuthError> {
        self.verify_at(header, method, pq, body, now_ms())
    }

    fn verify_at(
        &self,
        header: Option<&str>,
        method: &str,
        pq: &str,
        body: &[u8],
        now: u64,
    ) -> Result<(), AuthError> {
        let h = header.ok_or(AuthError::Missing)?;
        let mut w = h.split(' ');
        let (Some("v1"), Some(ts), Some(tag), None) = (w.next(), w.next(), w.next(), w.next())
        else {
            return Err(AuthError::Malformed);
        };
        let ts: u64 = ts.parse().map_err(|_| AuthError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| AuthError::Malformed)?;
        let skew_ms = now.abs_diff(ts);
        if skew_ms > MAX_SKEW.as_millis() as u64 {
            return Err(AuthError::Stale { skew_ms });
        }
        self.mac(method, pq, ts, body)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadMac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> WriteKey {
        WriteKey::from_bytes(&[b; 32]).unwrap()
    }

    #[test]
    fn signed_requests_verify_and_tampering_does_not() {
        let k = key(1);
        let h = k.sign_at("PUT", "/s/ab.0", b"stripe", 1_000_000);
        assert!(k
            .verify_at(Some(&h), "PUT", "/s/ab.0", b"stripe", 1_000_000)
            .is_ok());
        assert!(k
            .verify_at(Some(&h), "PUT", "/s/ab.0", b"stripe", 1_030_000)
            .is_ok());
        for (m, pq, body) in [
            ("PUT", "/s/ab.1", &b"stripe"[..]),
            ("PUT", "/s/ab.0", b"strip3"),
            ("POST", "/s/ab.0", b"stripe"),
        ] {
            assert!(matches!(
                k.verify_at(Some(&h), m, pq, body, 1_000_000),
                Err(AuthError::BadMac)
            ));
        }
        assert!(matches!(
            key(2).verify_at(Some(&h), "PUT", "/s/ab.0", b"stripe", 1_000_000),
            Err(AuthError::BadMac)
        ));
        assert!(matches!(
            k.verify_at(Some(&h), "PUT", "/s/ab.0", b"stripe", 1_000_000 + 61_000),
            Err(AuthError::Stale { .. })
        ));
        assert!(matches!(
            k.verify_at(None, "PUT", "/s/ab.0", b"", 0),
            Err(AuthError::Missing)
        ));
        for bad in ["", "v1", "v1 x y", "v2 1 00", "v1 1 zz", "v1 1 00 extra"] {
            assert!(
                matches!(
                    k.verify_at(Some(bad), "PUT", "/", b"", 1),
                    Err(AuthError::Malformed)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(WriteKey::from_bytes(b"  short  \n").is_none());
        assert!(WriteKey::from_bytes(&[b'k'; 32]).is_some());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, "tiny\n").unwrap();
        assert!(matches!(
            WriteKey::load(&p),
            Err(AuthError::KeyTooShort { len: 4, .. })
        ));
        assert!(matches!(
            WriteKey::load(&d.path().join("none")),
            Err(AuthError::KeyFile { .. })
        ));
    }
}
