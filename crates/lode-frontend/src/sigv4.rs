//! AWS Signature Version 4, the server's side: parse the `Authorization`
//! header, rebuild the canonical request from what arrived, and check the
//! signature with the caller's secret (constant time).
//!
//! What is checked: the algorithm (`AWS4-HMAC-SHA256`), the credential scope
//! (`AKID/DATE/REGION/lambda/aws4_request`, DATE equal to the day of
//! `X-Amz-Date`), `X-Amz-Date` within [`MAX_SKEW`] of now, `host` and
//! `x-amz-date` among the signed headers, and the signature over method,
//! path, query, the signed headers and the body's SHA-256. Paths are
//! encoded twice, as every AWS service but S3 signs them.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Largest difference between `X-Amz-Date` and the server's clock (AWS's).
pub const MAX_SKEW: u64 = 15 * 60;

/// The service name in the credential scope.
pub const SERVICE: &str = "lambda";

/// Why a request's signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// No `Authorization` header.
    #[error("the request is not signed (no Authorization header)")]
    Missing,
    /// The header or a signed value is not what SigV4 defines.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// `X-Amz-Date` is too far from the server's clock.
    #[error("signature expired or not yet valid: X-Amz-Date {date} is {skew} s from the server's clock (at most {MAX_SKEW} s)")]
    Skew {
        /// The date sent.
        date: String,
        /// How far off it is, in seconds.
        skew: u64,
    },
    /// The signature does not match the request.
    #[error("the request signature we calculated does not match the signature you provided")]
    Mismatch,
}

/// A parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Access key id.
    pub access_key: String,
    /// Scope date, `YYYYMMDD`.
    pub date: String,
    /// Scope region.
    pub region: String,
    /// Scope service.
    pub service: String,
    /// Signed header names, lowercase, in the order sent (sorted).
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

/// The parts of a request the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path as received (still percent-encoded).
    pub path: &'a str,
    /// The query string as received, without `?` (may be empty).
    pub query: &'a str,
    /// Every header (name, value), as received.
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

fn bad(what: impl Into<String>) -> SigError {
    SigError::Malformed(what.into())
}

/// Parses `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
pub fn parse_authorization(value: &str) -> Result<Authorization, SigError> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(|| bad("the algorithm is not AWS4-HMAC-SHA256"))?;
    let mut fields = BTreeMap::new();
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("field {part:?} has no '='")))?;
        fields.insert(k.trim(), v.trim());
    }
    let field = |k: &str| {
        fields
            .get(k)
            .copied()
            .ok_or_else(|| bad(format!("no {k}= in the Authorization header")))
    };
    let cred: Vec<&str> = field("Credential")?.split('/').collect();
    let [akid, date, region, service, term] = cred[..] else {
        return Err(bad(
            "Credential is not AKID/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    if term != "aws4_request" || akid.is_empty() || date.len() != 8 || region.is_empty() {
        return Err(bad(
            "Credential is not AKID/DATE/REGION/SERVICE/aws4_request",
        ));
    }
    let signed_headers: Vec<String> = field("SignedHeaders")?
        .split(';')
        .map(str::to_ascii_lowercase)
        .collect();
    let signature = field("Signature")?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("Signature is not 64 hex digits"));
    }
    Ok(Authorization {
        access_key: akid.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// SigV4's URI encoding: unreserved characters kept, every other byte `%XX`.
fn uri_encode(s: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decoding (`+` stays `+`: AWS clients encode spaces as `%20`).
pub(crate) fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value as SigV4 canonicalizes it: trimmed, inner runs of spaces
/// made one.
fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The canonical request (exposed for tests and for logging a mismatch).
pub fn canonical_request(auth: &Authorization, req: &Request<'_>) -> Result<String, SigError> {
    let path = if req.path.is_empty() { "/" } else { req.path };
    let mut headers = String::new();
    for name in &auth.signed_headers {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| canonical_value(v))
            .collect();
        if values.is_empty() {
            return Err(bad(format!("signed header {name:?} is not in the request")));
        }
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        uri_encode(path.as_bytes(), true),
        canonical_query(req.query),
        headers,
        auth.signed_headers.join(";"),
        hex::encode(Sha256::digest(req.body)),
    ))
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// The signing key of `secret` for a scope.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// Seconds since the epoch of an `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`).
pub fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

/// Checks `req`, signed as `auth` says, against `secret`, at `now` (seconds
/// since the epoch).
pub fn verify(
    auth: &Authorization,
    req: &Request<'_>,
    secret: &str,
    now: u64,
) -> Result<(), SigError> {
    for must in ["host", "x-amz-date"] {
        if !auth.signed_headers.iter().any(|h| h == must) {
            return Err(bad(format!("the {must} header is not signed")));
        }
    }
    let date = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-date"))
        .map(|(_, v)| v.trim())
        .ok_or_else(|| bad("no X-Amz-Date header"))?;
    let at = parse_amz_date(date)
        .ok_or_else(|| bad(format!("X-Amz-Date {date:?} is not YYYYMMDDTHHMMSSZ")))?;
    if !date.starts_with(&auth.date) {
        return Err(bad(format!(
            "the credential's date {} is not X-Amz-Date's day",
            auth.date
        )));
    }
    let skew = at.abs_diff(now);
    if skew > MAX_SKEW {
        return Err(SigError::Skew {
            date: date.to_string(),
            skew,
        });
    }
    let canonical = canonical_request(auth, req)?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    let sent = hex::decode(&auth.signature).map_err(|_| bad("Signature is not hex"))?;
    let mut m = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    m.update(to_sign.as_bytes());
    m.verify_slice(&sent).map_err(|_| SigError::Mismatch)
}

/// Signs a request as an AWS client would (for tests and lode's own tools):
/// returns the `Authorization` header for the given headers (which must
/// include `host` and `x-amz-date`).
pub fn sign(
    access_key: &str,
    secret: &str,
    region: &str,
    req: &Request<'_>,
) -> Result<String, SigError> {
    let date = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-date"))
        .map(|(_, v)| v.trim().to_string())
        .ok_or_else(|| bad("no X-Amz-Date header"))?;
    let mut names: Vec<String> = req
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    let auth = Authorization {
        access_key: access_key.to_string(),
        date: date
            .get(..8)
            .ok_or_else(|| bad("short X-Amz-Date"))?
            .to_string(),
        region: region.to_string(),
        service: SERVICE.to_string(),
        signed_headers: names,
        signature: String::new(),
    };
    let canonical = canonical_request(&auth, req)?;
    let scope = format!("{}/{region}/{SERVICE}/aws4_request", auth.date);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(secret, &auth.date, region, SERVICE);
    Ok(format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={}, Signature={}",
        auth.signed_headers.join(";"),
        hex::encode(hmac(&key, to_sign.as_bytes()))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's published example (IAM ListUsers, from the SigV4 documentation:
    // "Create a canonical request" ... "Calculate the signature").
    #[test]
    fn aws_documentation_example() {
        let headers = vec![
            ("Host".to_string(), "iam.amazonaws.com".to_string()),
            (
                "Content-Type".to_string(),
                "application/x-www-form-urlencoded; charset=utf-8".to_string(),
            ),
            ("X-Amz-Date".to_string(), "20150830T123600Z".to_string()),
        ];
        let req = Request {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            body: b"",
        };
        let auth = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        )
        .unwrap();
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let now = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(canonical_request(&auth, &req).unwrap())),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        verify(&auth, &req, secret, now).unwrap();
        assert_eq!(verify(&auth, &req, "wrong", now), Err(SigError::Mismatch));
        let late = verify(&auth, &req, secret, now + MAX_SKEW + 1);
        assert!(matches!(late, Err(SigError::Skew { .. })), "{late:?}");
        let mut tampered = req;
        tampered.query = "Action=DeleteUsers&Version=2010-05-08";
        assert_eq!(
            verify(&auth, &tampered, secret, now),
            Err(SigError::Mismatch)
        );
    }

    #[test]
    fn sign_and_verify_agree_and_paths_are_encoded_twice() {
        let headers = vec![
            ("host".to_string(), "127.0.0.1:9000".to_string()),
            ("x-amz-date".to_string(), "20261206T020000Z".to_string()),
        ];
        let req = Request {
            method: "POST",
            path: "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3At%3Afunction%3Af/invocations",
            query: "Qualifier=%24LATEST",
            headers: &headers,
            body: b"{\"a\": 1}",
        };
        let h = sign("AK", "SECRET", "us-east-1", &req).unwrap();
        let auth = parse_authorization(&h).unwrap();
        let now = parse_amz_date("20261206T020500Z").unwrap();
        verify(&auth, &req, "SECRET", now).unwrap();
        let c = canonical_request(&auth, &req).unwrap();
        assert!(c.contains("/functions/arn%253Aaws%253Alambda"), "{c}");
        assert!(c.contains("\nQualifier=%24LATEST\n"), "{c}");
        let mut body = req;
        body.body = b"{\"a\": 2}";
        assert_eq!(verify(&auth, &body, "SECRET", now), Err(SigError::Mismatch));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for h in [
            "",
            "AWS4-HMAC-SHA1 Credential=a/20260101/r/lambda/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/2026/r/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=",
            "AWS4-HMAC-SHA256 Credential=a/20260101/r/lambda, SignedHeaders=host, Signature=aa",
            "AWS4-HMAC-SHA256 SignedHeaders=host",
        ] {
            assert!(parse_authorization(h).is_err(), "{h}");
        }
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20000301T000000Z"), Some(951_868_800));
        assert_eq!(parse_amz_date("2000030T000000Z"), None);
        assert_eq!(parse_amz_date("20001301T000000Z"), None);
    }
}
