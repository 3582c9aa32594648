//! Function definitions in the store: one sealed document per function at
//! `tenants/<TENANT>/functions/<NAME>` (see [`crate::seal`]), written with
//! conditional puts so that concurrent frontends never lose an update.

use crate::error::{refuse, FrontendError, Result};
use crate::seal;
use bytes::Bytes;
use lode_chunk::KeyProvider;
use lode_lambda::{ErrorKind, FunctionSpec};
use lode_store::{Expect, ObjectKind, Store};
use object_store::path::Path;
use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};

/// A function as stored: what workers need ([`FunctionSpec`]) and what
/// only the API shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionRecord {
    /// What a worker runs.
    pub spec: FunctionSpec,
    /// `Role` as given (lode does not assume roles; kept for clients).
    #[serde(default)]
    pub role: String,
    /// `Description`.
    #[serde(default)]
    pub description: String,
    /// `Code.ImageUri` as given (the pinned image is `spec.image`).
    pub image_uri: String,
    /// `LastModified`, Lambda's format (`2026-12-06T02:00:00.000+0000`).
    pub last_modified: String,
    /// `RevisionId`: changes with every change of the function.
    pub revision_id: String,
    /// Holder of the store pin that keeps `spec.image`'s version from GC
    /// (see [`lode_store::pins`]); `None` in records written before pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

impl FunctionRecord {
    /// The store pin this record holds, if any.
    pub fn store_pin(&self) -> Option<lode_store::Pin> {
        Some(lode_store::Pin {
            tenant: self.spec.tenant.clone(),
            digest: self.spec.image.digest.clone()?,
            holder: self.pin.clone()?,
        })
    }
}

/// Whether `s` is a function name Lambda accepts (1-64 of `[A-Za-z0-9_-]`).
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn path(tenant: &str, name: &str) -> Path {
    Path::from(format!("tenants/{tenant}/functions/{name}"))
}

fn encode(keys: &dyn KeyProvider, rec: &FunctionRecord) -> Result<Bytes> {
    let body = serde_json::to_vec(rec).expect("a record serializes");
    Ok(Bytes::from(seal::seal(
        keys,
        "function",
        &rec.spec.tenant,
        &rec.spec.name,
        &body,
    )?))
}

fn decode(keys: &dyn KeyProvider, tenant: &str, name: &str, doc: &[u8]) -> Result<FunctionRecord> {
    let body = seal::open(keys, "function", tenant, name, doc)?;
    let rec: FunctionRecord =
        serde_json::from_slice(&body).map_err(|source| FrontendError::Document {
            what: "function definition",
            path: path(tenant, name).to_string(),
            source,
        })?;
    if rec.spec.tenant != tenant || rec.spec.name != name {
        return Err(seal::SealError::Corrupt {
            what: "function",
            tenant: tenant.to_string(),
            name: name.to_string(),
            reason: "the record names another function",
        }
        .into());
    }
    Ok(rec)
}

/// Stores a new function; `ResourceConflictException` when it exists.
pub async fn create(store: &Store, keys: &dyn KeyProvider, rec: &FunctionRecord) -> Result<()> {
    let (t, n) = (&rec.spec.tenant, &rec.spec.name);
    if !store
        .put_if(&path(t, n), encode(keys, rec)?, &Expect::Absent)
        .await?
    {
        return Err(refuse(
            ErrorKind::ResourceConflictException,
            format!("Function already exist: {n}"),
        ));
    }
    Ok(())
}

/// A function and the version of its document, `None` when there is none.
pub async fn get(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
    name: &str,
) -> Result<Option<(FunctionRecord, UpdateVersion)>> {
    if !valid_name(name) {
        return Ok(None);
    }
    match store
        .get_versioned(&path(tenant, name), ObjectKind::Function)
        .await?
    {
        Some((doc, v)) => Ok(Some((decode(keys, tenant, name, &doc)?, v))),
        None => Ok(None),
    }
}

/// Replaces a function read at `version`; `false` when another writer
/// changed it first (read it again and retry).
pub async fn replace(
    store: &Store,
    keys: &dyn KeyProvider,
    rec: &FunctionRecord,
    version: &UpdateVersion,
) -> Result<bool> {
    let p = path(&rec.spec.tenant, &rec.spec.name);
    Ok(store
        .put_if(&p, encode(keys, rec)?, &Expect::Version(version.clone()))
        .await?)
}

/// Removes a function and then the pin of the version it ran; `false`
/// when it did not exist.
pub async fn delete(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
    name: &str,
) -> Result<bool> {
    let Some((rec, _)) = get(store, keys, tenant, name).await? else {
        return Ok(false);
    };
    store.delete(&path(tenant, name)).await?;
    unpin(store, rec.store_pin()).await;
    Ok(true)
}

/// Pins the version `image` names for a function record about to be
/// written; its holder is what the record keeps in [`FunctionRecord::pin`].
pub async fn pin(
    store: &Store,
    keys: &dyn KeyProvider,
    image: &lode_lambda::ImageRef,
    function: &str,
) -> Result<lode_store::Pin> {
    let digest = image.digest.as_deref().ok_or_else(|| {
        refuse(
            ErrorKind::InvalidParameterValueException,
            format!("image {image} names no version to pin"),
        )
    })?;
    let nonce = hex::encode(&keys.random()?[..8]);
    let holder = format!("function.{function}.{nonce}");
    match store.pin(&image.tenant, &image.name, digest, &holder).await {
        Ok(p) => Ok(p),
        Err(e @ lode_store::StoreError::PinRefused { .. }) => Err(refuse(
            ErrorKind::InvalidParameterValueException,
            format!("Source image {image}: {e}"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Drops a pin no record holds any more. A failure only keeps the version
/// longer, so it is logged, not returned.
pub async fn unpin(store: &Store, pin: Option<lode_store::Pin>) {
    if let Some(p) = pin {
        if let Err(e) = store.unpin(&p).await {
            tracing::warn!(tenant = p.tenant, holder = p.holder, digest = p.digest, error = %e, "a pin was not removed: its version is kept until it is");
        }
    }
}

/// How old an unheld function pin must be before [`sweep_pins`] removes it:
/// far longer than a create or an update takes between writing a pin and
/// writing the record that holds it.
pub const PIN_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes `tenant`'s function pins (holders `function.*`) that no function
/// record holds and that were written more than `grace` ago: the pins of a
/// create or update whose frontend died between writing the pin and writing
/// (or replacing) the record. Pins of other holders are left alone. If any
/// record of the tenant does not open, nothing is removed (its pin could be
/// among them). Returns the pins removed.
pub async fn sweep_pins(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
    grace: std::time::Duration,
) -> Result<Vec<lode_store::Pin>> {
    let now = store.env().now_ms();
    let old: Vec<lode_store::Pin> = store
        .list_pins_written(tenant)
        .await?
        .into_iter()
        .filter(|(p, written)| {
            p.holder.starts_with("function.")
                && now.saturating_sub(*written) > grace.as_millis() as u64
        })
        .map(|(p, _)| p)
        .collect();
    if old.is_empty() {
        return Ok(old);
    }
    // Listed after the pins: a record written after the listing holds a pin
    // written after it too, so younger than `grace` and not in `old`.
    let mut held = std::collections::HashSet::new();
    for m in store
        .list_all(&format!("tenants/{tenant}/functions"))
        .await?
    {
        let Some(name) = m.location.filename() else {
            continue;
        };
        if let Some((rec, _)) = get(store, keys, tenant, name).await? {
            held.extend(rec.pin);
        }
    }
    let mut removed = Vec::new();
    for p in old.into_iter().filter(|p| !held.contains(&p.holder)) {
        store.unpin(&p).await?;
        tracing::info!(
            tenant,
            holder = p.holder,
            digest = p.digest,
            "removed a pin no function holds"
        );
        removed.push(p);
    }
    Ok(removed)
}

/// A tenant's functions, by name. A document that does not open is
/// skipped with a warning (one bad document does not hide the others).
pub async fn list(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
) -> Result<Vec<FunctionRecord>> {
    let mut out = Vec::new();
    for m in store
        .list_all(&format!("tenants/{tenant}/functions"))
        .await?
    {
        let Some(name) = m.location.filename() else {
            continue;
        };
        match get(store, keys, tenant, name).await {
            Ok(Some((rec, _))) => out.push(rec),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(tenant, function = name, error = %e, "skipping a function that does not open")
            }
        }
    }
    out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_chunk::Keyring;
    use lode_lambda::ImageRef;

    fn record(tenant: &str, name: &str, digest: &str, pin: &str) -> FunctionRecord {
        FunctionRecord {
            spec: FunctionSpec {
                tenant: tenant.into(),
                name: name.into(),
                arn: format!("arn:aws:lambda:local:{tenant}:function:{name}"),
                revision: 1,
                image: ImageRef {
                    tenant: tenant.into(),
                    name: "img".into(),
                    digest: Some(digest.into()),
                },
                memory_mib: 128,
                timeout_s: 3,
                environment: Default::default(),
                entry_point: None,
                command: None,
                working_directory: None,
                image_config: Default::default(),
            },
            role: String::new(),
            description: String::new(),
            image_uri: "img".into(),
            last_modified: String::new(),
            revision_id: "r1".into(),
            pin: Some(pin.into()),
        }
    }

    /// Writes a pin object as `Store::pin` does, without its pointer check
    /// (which needs a pushed image; the sweep only reads pins).
    async fn put_pin(store: &Store, tenant: &str, digest: &str, holder: &str) -> lode_store::Pin {
        let p = lode_store::Pin {
            tenant: tenant.into(),
            digest: digest.into(),
            holder: holder.into(),
        };
        store.put(&p.path().unwrap(), Bytes::new()).await.unwrap();
        p
    }

    #[tokio::test]
    async fn the_sweep_removes_only_old_function_pins_no_record_holds() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keyring::new(dir.path().join("keys"));
        let store = Store::open("memory://").unwrap();
        let d = |c: &str| format!("sha256:{}", c.repeat(64));
        create(
            &store,
            &keys,
            &record("t", "held", &d("a"), "function.held.01"),
        )
        .await
        .unwrap();
        put_pin(&store, "t", &d("a"), "function.held.01").await;
        let orphan = put_pin(&store, "t", &d("b"), "function.gone.02").await;
        // An update that died after its new pin: the record still holds 01.
        let replaced = put_pin(&store, "t", &d("c"), "function.held.03").await;
        put_pin(&store, "t", &d("b"), "operator.keep").await;
        put_pin(&store, "u", &d("b"), "function.other-tenant.04").await;
        let holders = |v: Vec<lode_store::Pin>| {
            let mut h: Vec<String> = v.into_iter().map(|p| p.holder).collect();
            h.sort();
            h
        };
        // Young pins are never taken: a create may be between pin and record.
        assert!(sweep_pins(&store, &keys, "t", PIN_GRACE)
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let gone = sweep_pins(&store, &keys, "t", std::time::Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            holders(gone),
            [orphan.holder.clone(), replaced.holder.clone()]
        );
        assert_eq!(
            holders(store.list_pins("t").await.unwrap()),
            ["function.held.01", "operator.keep"]
        );
        assert_eq!(store.list_pins("u").await.unwrap().len(), 1);
        // A record that does not open stops the sweep for its tenant.
        put_pin(&store, "t", &d("b"), "function.gone.05").await;
        store
            .put(&path("t", "broken"), Bytes::from_static(b"{not sealed"))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(sweep_pins(&store, &keys, "t", std::time::Duration::ZERO)
            .await
            .is_err());
        assert_eq!(store.list_pins("t").await.unwrap().len(), 3);
    }
}
