//! Digest parsing and verification helpers.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::OciError;

/// Largest JSON document (index, manifest, config, manifest.json) read into memory.
pub(crate) const MAX_JSON_SIZE: u64 = 64 * 1024 * 1024;

/// Checks that `digest` is `sha256:<64 lowercase hex>` and returns the hex part.
///
/// Anything else (other algorithms, upper case, wrong length, `..`, `/`) is
/// rejected with [`OciError::BadDigest`]; the returned hex is therefore safe
/// to use as a file name.
pub fn parse_sha256(digest: &str) -> Result<&str, OciError> {
    let bad = || OciError::BadDigest {
        digest: digest.to_owned(),
    };
    let hex = digest.strip_prefix("sha256:").ok_or_else(bad)?;
    if is_sha256_hex(hex) {
        Ok(hex)
    } else {
        Err(bad())
    }
}

/// True if `s` is exactly 64 lowercase hex digits.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `"sha256:<hex>"` of a finished hasher.
pub(crate) fn finish_hex(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// `"sha256:<hex>"` of a byte slice.
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    finish_hex(h)
}

/// Verifies size (if given) and digest of an in-memory blob.
pub(crate) fn verify_bytes(
    what: &str,
    bytes: &[u8],
    expected_digest: &str,
    expected_size: Option<u64>,
) -> Result<(), OciError> {
    if let Some(expected) = expected_size {
        let actual = bytes.len() as u64;
        if actual != expected {
            return Err(OciError::SizeMismatch {
                what: what.to_owned(),
                expected,
                actual,
            });
        }
    }
    let actual = sha256_of(bytes);
    if actual != expected_digest {
        return Err(OciError::DigestMismatch {
            what: what.to_owned(),
            expected: expected_digest.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// Reads all of `r`, failing with `TooLarge` (as an `Ok(Err)`) past `limit` bytes.
pub(crate) fn read_capped(
    r: impl Read,
    limit: u64,
    what: &str,
) -> io::Result<Result<Vec<u8>, OciError>> {
    let mut buf = Vec::new();
    let n = r.take(limit.saturating_add(1)).read_to_end(&mut buf)? as u64;
    if n > limit {
        return Ok(Err(OciError::TooLarge {
            what: what.to_owned(),
            size: n,
            limit,
        }));
    }
    Ok(Ok(buf))
}

/// If a docker-archive member name embeds a content digest, return it as
/// `"sha256:<hex>"`.
///
/// Recognised: `blobs/sha256/<hex>`, `<hex>.tar`, `<hex>.json`, `<hex>.tar.gz`,
/// `<hex>.tar.zst`, bare `<hex>`. Not recognised (on purpose): the legacy
/// `<hex>/layer.tar`, whose directory name is a layer id, not a content digest.
pub(crate) fn embedded_sha256(member: &str) -> Option<String> {
    let base = member.rsplit('/').next().unwrap_or(member);
    let stem = [".tar.gz", ".tar.zst", ".tar", ".json", ".tgz"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .unwrap_or(base);
    is_sha256_hex(stem).then(|| format!("sha256:{stem}"))
}

/// Searches a JSON value for the first descriptor-like object (one with a
/// `mediaType` or `size`) whose `"digest"` string is not a valid sha256 digest. Used to turn an opaque JSON type error into [`OciError::BadDigest`].
pub(crate) fn find_bad_digest(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Object(map) => {
            let looks_like_descriptor = map.contains_key("mediaType") || map.contains_key("size");
            if let (Some(serde_json::Value::String(d)), true) =
                (map.get("digest"), looks_like_descriptor)
            {
                if parse_sha256(d).is_err() {
                    return Some(d.clone());
                }
            }
            map.values().find_map(find_bad_digest)
        }
        serde_json::Value::Array(items) => items.iter().find_map(find_bad_digest),
        _ => None,
    }
}

/// Parses `bytes` as `T`; on failure, reports a malformed `digest` field as
/// [`OciError::BadDigest`] and anything else as [`OciError::Json`].
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    path: &std::path::Path,
) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|source| {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
            if let Some(digest) = find_bad_digest(&value) {
                return OciError::BadDigest { digest };
            }
        }
        OciError::Json {
            what: what.to_owned(),
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sha256_parsing() {
        let good = format!("sha256:{H}");
        assert!(matches!(parse_sha256(&good), Ok(h) if h == H));
        for bad in [
            "sha256:../../x".to_owned(),
            "sha256:".to_owned(),
            format!("sha512:{H}"),
            format!("sha256:{}", H.to_uppercase()),
            format!("sha256:{H}0"),
            format!("sha256:{}/..", &H[..61]),
            H.to_owned(),
        ] {
            assert!(
                matches!(parse_sha256(&bad), Err(OciError::BadDigest { .. })),
                "{bad}"
            );
        }
        assert_eq!(sha256_of(b""), good);
    }

    #[test]
    fn embedded_digests() {
        let want = Some(format!("sha256:{H}"));
        assert_eq!(embedded_sha256(&format!("blobs/sha256/{H}")), want);
        assert_eq!(embedded_sha256(&format!("{H}.tar")), want);
        assert_eq!(embedded_sha256(&format!("{H}.json")), want);
        assert_eq!(embedded_sha256(&format!("{H}/layer.tar")), None);
        assert_eq!(embedded_sha256("layer.tar"), None);
    }

    #[test]
    fn capped_read() -> io::Result<()> {
        assert!(matches!(read_capped(&b"12345"[..], 5, "x")?, Ok(v) if v.len() == 5));
        assert!(matches!(
            read_capped(&b"123456"[..], 5, "x")?,
            Err(OciError::TooLarge { limit: 5, .. })
        ));
        Ok(())
    }
}
