//! Turning a `--store` URL into an object store.

use crate::error::{Result, StoreError};
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use std::sync::Arc;
use std::time::Duration;

/// Retries of a failing request: a few, with backoff, within a bounded time,
/// so an unreachable store fails a command in seconds rather than hanging.
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
    }
}

/// The directory of a local store URL (`file:///DIR` or a plain path), or
/// `None` for other schemes.
pub fn local_dir(url: &str) -> Option<std::path::PathBuf> {
    if url.starts_with("memory:") || url.starts_with("s3://") {
        return None;
    }
    match url.strip_prefix("file://") {
        Some(p) if p.starts_with('/') => Some(p.into()),
        Some(_) => None,
        None if url.contains("://") || url.is_empty() => None,
        None => Some(url.into()),
    }
}

/// Opens a store: `file:///DIR` or a plain path, `s3://BUCKET[/PREFIX]`
/// (standard AWS environment; `AWS_ENDPOINT_URL` for S3-compatible servers),
/// or `memory://` (process-local, for tests).
pub fn open_url(url: &str) -> Result<Arc<dyn ObjectStore>> {
    let bad = |reason: &str| StoreError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if url == "memory://" || url == "memory:" {
        return Ok(Arc::new(InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("missing bucket name"));
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry_config())
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(Duration::from_secs(30))
                    .with_connect_timeout(Duration::from_secs(5)),
            );
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .ok();
        if let Some(ep) = endpoint {
            b = b
                .with_endpoint(&ep)
                .with_allow_http(ep.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let s3 = b.build().map_err(|e| bad(&e.to_string()))?;
        let prefix = prefix.trim_matches('/');
        return Ok(if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        });
    }
    let path = if let Some(p) = url.strip_prefix("file://") {
        if !p.starts_with('/') {
            return Err(bad("file:// URLs need an absolute path (file:///DIR)"));
        }
        p.to_string()
    } else if url.contains("://") {
        return Err(bad(
            "unknown scheme (use file:///DIR, a path, s3://BUCKET/PREFIX or memory://)",
        ));
    } else {
        url.to_string()
    };
    if path.is_empty() {
        return Err(bad("empty path"));
    }
    std::fs::create_dir_all(&path).map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    let local = crate::local::LocalStore::new(std::path::Path::new(&path))
        .map_err(|e| bad(&e.to_string()))?;
    Ok(Arc::new(local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(open_url("memory://").is_ok());
        let d = tempfile::tempdir().unwrap();
        assert!(open_url(d.path().to_str().unwrap()).is_ok());
        assert!(open_url(&format!("file://{}", d.path().display())).is_ok());
        assert!(open_url("file://relative").is_err());
        assert!(open_url("gopher://x").is_err());
        assert!(open_url("s3://").is_err());
    }
}
