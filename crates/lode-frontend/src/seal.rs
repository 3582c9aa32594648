//! Sealed documents: a function definition or an access key's secret, kept
//! in the store so that only holders of its tenant's key can read or forge
//! it (function environments carry secrets, as in Lambda).
//!
//! ```text
//! {"v":1,"tenant":T,"key":B64(KeyProvider::wrap(T, data key)),
//!  "nonce":B64(12 bytes),"body":B64(AES-256-GCM(data key, body, aad))}
//! aad = "lode-lambda\0" ‖ kind ‖ "\0" ‖ tenant ‖ "\0" ‖ name
//! ```
//! The aad binds a document to its place: a sealed function moved to
//! another name or tenant does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use lode_chunk::keys::{DataKey, KeyProvider};
use lode_chunk::ChunkError;
use serde::{Deserialize, Serialize};

/// Why a sealed document cannot be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key provider failed (no such tenant key, KMS error, ...).
    #[error("{what} of {tenant}/{name}: {source}")]
    Key {
        /// `function` or `credential`.
        what: &'static str,
        /// Tenant.
        tenant: String,
        /// Name.
        name: String,
        /// What the provider said.
        #[source]
        source: ChunkError,
    },
    /// The document is not a sealed document, or does not open (edited,
    /// moved, or sealed with another key).
    #[error("{what} {tenant}/{name} does not open: {reason}")]
    Corrupt {
        /// `function` or `credential`.
        what: &'static str,
        /// Tenant.
        tenant: String,
        /// Name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    v: u32,
    tenant: String,
    key: String,
    nonce: String,
    body: String,
}

fn aad(what: &str, tenant: &str, name: &str) -> Vec<u8> {
    [
        b"lode-lambda\0",
        what.as_bytes(),
        b"\0",
        tenant.as_bytes(),
        b"\0",
        name.as_bytes(),
    ]
    .concat()
}

/// Seals `body` as the `what` named `name` of `tenant`.
pub fn seal(
    keys: &dyn KeyProvider,
    what: &'static str,
    tenant: &str,
    name: &str,
    body: &[u8],
) -> Result<Vec<u8>, SealError> {
    let err = |source| SealError::Key {
        what,
        tenant: tenant.to_string(),
        name: name.to_string(),
        source,
    };
    let key = DataKey(keys.random().map_err(err)?);
    let wrapped = keys.wrap(tenant, &key).map_err(err)?;
    let nonce: [u8; 12] = keys.random().map_err(err)?[..12]
        .try_into()
        .expect("12 of 32 bytes");
    let ct = Aes256Gcm::new((&key.0).into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: body,
                aad: &aad(what, tenant, name),
            },
        )
        .map_err(|_| SealError::Corrupt {
            what,
            tenant: tenant.to_string(),
            name: name.to_string(),
            reason: "AES-GCM refused the body",
        })?;
    let doc = Doc {
        v: 1,
        tenant: tenant.to_string(),
        key: B64.encode(wrapped),
        nonce: B64.encode(nonce),
        body: B64.encode(ct),
    };
    Ok(serde_json::to_vec(&doc).expect("a document serializes"))
}

/// The tenant a sealed document says it belongs to (not yet verified:
/// [`open`] with that tenant verifies it).
pub fn tenant_of(doc: &[u8]) -> Option<String> {
    serde_json::from_slice::<Doc>(doc).ok().map(|d| d.tenant)
}

/// Opens a document sealed by [`seal`] with the same `what`, `tenant` and `name`.
pub fn open(
    keys: &dyn KeyProvider,
    what: &'static str,
    tenant: &str,
    name: &str,
    doc: &[u8],
) -> Result<Vec<u8>, SealError> {
    let corrupt = |reason| SealError::Corrupt {
        what,
        tenant: tenant.to_string(),
        name: name.to_string(),
        reason,
    };
    let d: Doc = serde_json::from_slice(doc).map_err(|_| corrupt("not a sealed document"))?;
    if d.v != 1 {
        return Err(corrupt("unknown version"));
    }
    if d.tenant != tenant {
        return Err(corrupt("sealed for another tenant"));
    }
    let b64 = |s: &str| B64.decode(s).map_err(|_| corrupt("bad base64"));
    let wrapped = b64(&d.key)?;
    let nonce: [u8; 12] = b64(&d.nonce)?
        .try_into()
        .map_err(|_| corrupt("nonce is not 12 bytes"))?;
    let key = keys
        .unwrap(tenant, &wrapped)
        .map_err(|source| SealError::Key {
            what,
            tenant: tenant.to_string(),
            name: name.to_string(),
            source,
        })?;
    Aes256Gcm::new((&key.0).into())
        .decrypt(
            &nonce.into(),
            Payload {
                msg: &b64(&d.body)?,
                aad: &aad(what, tenant, name),
            },
        )
        .map_err(|_| corrupt("authentication failed (edited, moved or another key)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_chunk::keys::Keyring;

    #[test]
    fn sealed_documents_open_only_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keyring::new(dir.path());
        let doc = seal(&keys, "function", "acme", "f", b"{\"secret\":1}").unwrap();
        assert_eq!(
            open(&keys, "function", "acme", "f", &doc).unwrap(),
            b"{\"secret\":1}"
        );
        assert_eq!(tenant_of(&doc).as_deref(), Some("acme"));
        assert!(open(&keys, "function", "acme", "g", &doc).is_err());
        assert!(open(&keys, "credential", "acme", "f", &doc).is_err());
        assert!(open(&keys, "function", "other", "f", &doc).is_err());
        let other = seal(&keys, "function", "other", "f", b"x").unwrap();
        assert!(open(&keys, "function", "acme", "f", &other).is_err());
        let mut edited: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        edited["body"] = B64.encode(b"not the body").into();
        let edited = serde_json::to_vec(&edited).unwrap();
        assert!(open(&keys, "function", "acme", "f", &edited).is_err());
        assert!(open(&keys, "function", "acme", "f", b"junk").is_err());
    }
}
