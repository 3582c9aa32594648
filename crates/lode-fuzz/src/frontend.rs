//! The Lambda frontend's parsers of untrusted input: the `Authorization`
//! header and request a client sends (SigV4), and the sealed documents it
//! reads back from the store.

use lode_frontend::{seal, sigv4};

/// A secret every signature here is made and checked with.
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// 2015-08-30T12:36:00Z, the date of AWS's published example.
const NOW: u64 = 1_440_938_160;

/// Arbitrary bytes as an `Authorization` header (first line) and a request
/// (path, query, one header per line, then the body after a blank line):
/// parsing and verifying never panic, and a forged signature never
/// verifies. The same request signed by [`sigv4::sign`] verifies.
pub fn sigv4(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let auth_line = lines.next().unwrap_or("");
    let path = lines.next().unwrap_or("/");
    let query = lines.next().unwrap_or("");
    let mut headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        // HTTP header names are tokens (hyper refuses anything else).
        .filter(|(n, _)| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        })
        .take(32)
        .collect();
    if let Ok(auth) = sigv4::parse_authorization(auth_line) {
        let req = sigv4::Request {
            method: "POST",
            path,
            query,
            headers: &headers,
            body: body.as_bytes(),
        };
        // Whatever was sent, a signature not made with the secret does not
        // check out (finding one would be breaking HMAC-SHA256).
        assert!(
            sigv4::verify(&auth, &req, SECRET, NOW).is_err(),
            "an arbitrary signature verified"
        );
        let _ = sigv4::canonical_request(&auth, &req);
    }
    // Round trip: the request signed as a client would verifies.
    headers.retain(|(n, _)| n != "host" && n != "x-amz-date" && n != "authorization");
    headers.push(("host".into(), "lambda.us-east-1.amazonaws.com".into()));
    headers.push(("x-amz-date".into(), "20150830T123600Z".into()));
    let req = sigv4::Request {
        method: "POST",
        path,
        query,
        headers: &headers,
        body: body.as_bytes(),
    };
    if let Ok(value) = sigv4::sign("AKIDEXAMPLE", SECRET, "us-east-1", &req) {
        let auth = sigv4::parse_authorization(&value).expect("lode's own header parses");
        if sigv4::canonical_request(&auth, &req).is_ok() {
            assert!(
                sigv4::verify(&auth, &req, SECRET, NOW).is_ok(),
                "a request signed by sign() does not verify: {value}"
            );
        }
    }
}

/// Arbitrary bytes as a sealed store document (a function, an access key,
/// a queued event): opening it never panics and never succeeds without the
/// tenant's key having sealed it.
pub fn sealed_document(data: &[u8]) {
    let dir = std::env::temp_dir().join("lode-fuzz-frontend-keys");
    let keys = lode_chunk::Keyring::new(&dir);
    for kind in ["function", "credential", "event"] {
        assert!(
            seal::open(&keys, kind, "t1", "f1", data).is_err(),
            "an arbitrary document opened as a {kind}"
        );
    }
    let _ = seal::tenant_of(data);
}
