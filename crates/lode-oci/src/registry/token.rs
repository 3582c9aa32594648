//! The bearer token flow of the distribution token spec: `GET
//! realm?service=S&scope=SCOPE` (with basic credentials when there are any,
//! anonymously otherwise), or with an identity token the OAuth2 form `POST
//! realm` with `grant_type=refresh_token`. The answer's `token` or
//! `access_token` lives `expires_in` seconds (60 when not given).

use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;

use super::auth::Login;
use super::client::{backoff, read_capped, retry_after, retryable, status_error, ATTEMPTS};
use super::RegistryError;

/// A token without `expires_in` lives this long (the token spec's default).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);
/// The longest token answer read.
const MAX_TOKEN_BODY: usize = 64 << 10;
/// The `client_id` of the OAuth2 request (the spec requires one).
const CLIENT_ID: &str = "lode";

/// Where and for what a token is asked.
pub(crate) struct TokenRequest<'a> {
    /// The challenge's realm (an absolute URL).
    pub realm: &'a str,
    /// The challenge's `service`, if any.
    pub service: Option<&'a str>,
    /// `repository:REPO:pull`.
    pub scope: &'a str,
    /// The registry's API base, named if the realm is unusable.
    pub base: &'a str,
}

/// Fetches a token; gives it with the instant it expires.
pub(crate) async fn fetch(
    http: &reqwest::Client,
    login: Option<&Login>,
    t: &TokenRequest<'_>,
) -> Result<(String, Instant), RegistryError> {
    let mut url = reqwest::Url::parse(t.realm).map_err(|_| RegistryError::BadChallenge {
        url: t.base.to_owned(),
    })?;
    let refresh = match login {
        Some(Login::IdentityToken(token)) => Some(token),
        _ => None,
    };
    let (method, form) = match refresh {
        Some(token) => {
            let mut f = url::form_urlencoded::Serializer::new(String::new());
            f.append_pair("grant_type", "refresh_token");
            if let Some(s) = t.service {
                f.append_pair("service", s);
            }
            f.append_pair("scope", t.scope);
            f.append_pair("client_id", CLIENT_ID);
            f.append_pair("refresh_token", &token.0);
            ("POST", Some(f.finish()))
        }
        None => {
            let mut q = url.query_pairs_mut();
            if let Some(s) = t.service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", t.scope);
            drop(q);
            ("GET", None)
        }
    };
    // The URL never holds a secret: the refresh token goes in the body.
    let shown = url.to_string();
    let mut attempt = 0;
    let resp = loop {
        attempt += 1;
        let req = match &form {
            Some(body) => http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body.clone()),
            None => {
                let req = http.get(url.clone());
                match login {
                    Some(Login::Basic(c)) => req.basic_auth(&c.username, Some(&c.password)),
                    _ => req,
                }
            }
        };
        match req.send().await {
            Ok(r) if r.status().is_success() => break r,
            Ok(r) if retryable(r.status()) && attempt < ATTEMPTS => {
                let d = retry_after(r.headers()).unwrap_or_else(|| backoff(attempt));
                tokio::time::sleep(d).await;
            }
            Ok(r) => return Err(status_error(method, &shown, r).await),
            Err(e) if attempt < ATTEMPTS && !e.is_redirect() => {
                tokio::time::sleep(backoff(attempt)).await
            }
            Err(e) => return Err(RegistryError::transport(method, &shown, e)),
        }
    };
    let body = read_capped(resp, MAX_TOKEN_BODY, &shown).await?;
    let (token, life) = parse(&body).map_err(|source| RegistryError::TokenJson {
        method,
        url: shown,
        source,
    })?;
    Ok((token, Instant::now() + life))
}

/// Reads a token answer: the token and how long it lives (`expires_in`,
/// within 1 s and a day).
pub(crate) fn parse(body: &[u8]) -> Result<(String, Duration), serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let t: Token = serde_json::from_slice(body)?;
    let life = t.expires_in.map_or(DEFAULT_TOKEN_LIFE, |s| {
        Duration::from_secs(s.clamp(1, 86_400))
    });
    let token = t
        .token
        .filter(|t| !t.is_empty())
        .or(t.access_token)
        .unwrap_or_default();
    if token.is_empty() {
        return Err(serde::de::Error::custom(
            "neither \"token\" nor \"access_token\"",
        ));
    }
    Ok((token, life))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers() {
        assert_eq!(
            parse(br#"{"token":"t","expires_in":300}"#).expect("a token"),
            ("t".to_owned(), Duration::from_secs(300))
        );
        assert_eq!(
            parse(br#"{"access_token":"a","refresh_token":"r"}"#).expect("a token"),
            ("a".to_owned(), DEFAULT_TOKEN_LIFE)
        );
        assert_eq!(
            parse(br#"{"token":"t","expires_in":0}"#)
                .expect("a token")
                .1,
            Duration::from_secs(1)
        );
        assert!(parse(br#"{"token":""}"#).is_err());
        assert!(parse(b"<html>").is_err());
    }
}
