//! Tenants' access keys: `lode credentials add --tenant T` makes one; the
//! frontend looks the secret up to check a request's signature.
//!
//! Each key is one sealed document at `credentials/<ACCESS_KEY_ID>`
//! (see [`crate::seal`]): the tenant in clear, the secret sealed under the
//! tenant's key and bound to the key id. Removing the object revokes the
//! key (frontends cache a lookup for at most [`CACHE_TTL`]).

use crate::error::Result;
use crate::seal;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use lode_chunk::KeyProvider;
use lode_store::{Expect, ObjectKind, Store};
use object_store::path::Path;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a frontend trusts a looked-up key (and a key found missing).
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Keys a frontend keeps cached.
pub const CACHE_ENTRIES: usize = 4096;

/// A new access key, as `lode credentials add` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Credential {
    /// `AccessKeyId` (20 characters, `LODE` + 16 of base32).
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    /// `SecretAccessKey` (40 characters of base64).
    #[serde(rename = "SecretAccessKey")]
    pub secret_access_key: String,
}

/// Whether `s` can be an access key id (and so a path in the store).
pub fn valid_key_id(s: &str) -> bool {
    (16..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn path(akid: &str) -> Path {
    Path::from(format!("credentials/{akid}"))
}

/// Makes a new access key for `tenant` and stores it.
pub async fn add(store: &Store, keys: &dyn KeyProvider, tenant: &str) -> Result<Credential> {
    const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let r = keys.random()?;
    let id: String = r[..16]
        .iter()
        .map(|b| BASE32[(b & 31) as usize] as char)
        .collect();
    let akid = format!("LODE{id}");
    let secret = B64.encode(&keys.random()?[..30]);
    let doc = seal::seal(keys, "credential", tenant, &akid, secret.as_bytes())?;
    if !store
        .put_if(&path(&akid), Bytes::from(doc), &Expect::Absent)
        .await?
    {
        // 80 random bits collided: vanishingly rare, never silently reused.
        return Err(crate::error::refuse(
            lode_lambda::ErrorKind::ServiceException,
            format!("access key id {akid} exists already; try again"),
        ));
    }
    Ok(Credential {
        access_key_id: akid,
        secret_access_key: secret,
    })
}

/// Removes an access key of `tenant`; `false` when it did not exist.
pub async fn remove(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
    akid: &str,
) -> Result<bool> {
    match lookup(store, keys, akid).await? {
        Some((t, _)) if t == tenant => {
            store.delete(&path(akid)).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The tenant and secret of an access key, `None` when there is no such key.
pub async fn lookup(
    store: &Store,
    keys: &dyn KeyProvider,
    akid: &str,
) -> Result<Option<(String, String)>> {
    if !valid_key_id(akid) {
        return Ok(None);
    }
    let Some(doc) = store.get_opt(&path(akid), ObjectKind::Document).await? else {
        return Ok(None);
    };
    let tenant = seal::tenant_of(&doc).ok_or_else(|| seal::SealError::Corrupt {
        what: "credential",
        tenant: String::new(),
        name: akid.to_string(),
        reason: "not a sealed document",
    })?;
    let secret = seal::open(keys, "credential", &tenant, akid, &doc)?;
    let secret = String::from_utf8(secret).map_err(|_| seal::SealError::Corrupt {
        what: "credential",
        tenant: tenant.clone(),
        name: akid.to_string(),
        reason: "the secret is not text",
    })?;
    Ok(Some((tenant, secret)))
}

/// A looked-up key: when, and its tenant and secret (`None`: no such key).
type Cached = (Instant, Option<(String, String)>);

/// A frontend's bounded cache of [`lookup`]s.
#[derive(Debug, Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, Cached>>,
}

impl KeyCache {
    /// [`lookup`], answered from the cache when fresh.
    pub async fn lookup(
        &self,
        store: &Store,
        keys: &dyn KeyProvider,
        akid: &str,
    ) -> Result<Option<(String, String)>> {
        let now = Instant::now();
        {
            let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, v)) = map.get(akid) {
                if now.duration_since(*at) < CACHE_TTL {
                    return Ok(v.clone());
                }
            }
        }
        let v = lookup(store, keys, akid).await?;
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_ENTRIES {
            map.retain(|_, (at, _)| now.duration_since(*at) < CACHE_TTL);
            if map.len() >= CACHE_ENTRIES {
                map.clear();
            }
        }
        map.insert(akid.to_string(), (now, v.clone()));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_chunk::Keyring;

    #[tokio::test]
    async fn keys_are_added_looked_up_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keyring::new(dir.path().join("keys"));
        let store = Store::open(&format!("file://{}", dir.path().join("store").display())).unwrap();
        let c = add(&store, &keys, "acme").await.unwrap();
        assert_eq!((c.access_key_id.len(), c.secret_access_key.len()), (20, 40));
        assert!(valid_key_id(&c.access_key_id));
        let got = lookup(&store, &keys, &c.access_key_id).await.unwrap();
        assert_eq!(got, Some(("acme".to_string(), c.secret_access_key.clone())));
        assert_eq!(
            lookup(&store, &keys, "LODEAAAAAAAAAAAAAAAA").await.unwrap(),
            None
        );
        assert_eq!(lookup(&store, &keys, "../etc").await.unwrap(), None);
        assert!(!remove(&store, &keys, "other", &c.access_key_id)
            .await
            .unwrap());
        assert!(remove(&store, &keys, "acme", &c.access_key_id)
            .await
            .unwrap());
        assert_eq!(lookup(&store, &keys, &c.access_key_id).await.unwrap(), None);
    }
}
