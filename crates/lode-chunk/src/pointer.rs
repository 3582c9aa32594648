//! The seal of an image pointer: a tag, made with the tenant's key, over
//! everything the pointer claims (tenant, image name, state, manifest digest,
//! version), so that a pointer cannot be forged, edited, or moved to another
//! image name without the tenant's key.
//!
//! ```text
//! seal = u16 length + wrapped data key (KeyProvider::wrap)
//!        12-byte nonce
//!        16-byte AES-256-GCM tag of the empty message, with
//!        aad = "lode-pointer\0" ‖ tenant ‖ "\0" ‖ name ‖ "\0" ‖ state ‖ "\0"
//!              ‖ manifest ‖ "\0" ‖ version (u64 LE)
//! ```
//! The pointer document itself (JSON, in the store) is `lode-store`'s.

use crate::error::ChunkError;
use crate::keys::{DataKey, KeyProvider};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;

/// What an image pointer asserts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointerClaim<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Image name.
    pub name: &'a str,
    /// `live` or `removed`.
    pub state: &'a str,
    /// `sha256:<hex>` of the manifest (empty for a removed image).
    pub manifest: &'a str,
    /// The image's version number.
    pub version: u64,
}

impl PointerClaim<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut a = b"lode-pointer\0".to_vec();
        for part in [self.tenant, self.name, self.state, self.manifest] {
            a.extend_from_slice(part.as_bytes());
            a.push(0);
        }
        a.extend_from_slice(&self.version.to_le_bytes());
        a
    }
}

/// Most bytes a wrapped data key may take in a seal.
const MAX_WRAPPED: usize = 1024;

/// Seals `claim` for its tenant.
pub fn seal_pointer(
    claim: &PointerClaim<'_>,
    provider: &dyn KeyProvider,
) -> Result<Vec<u8>, ChunkError> {
    let dk = DataKey(provider.random()?);
    let wrapped = provider.wrap(claim.tenant, &dk)?;
    if wrapped.len() > MAX_WRAPPED {
        return Err(ChunkError::BadManifest(
            "pointer seal: wrapped key too long".into(),
        ));
    }
    let nonce: [u8; 12] = provider.random()?[..12].try_into().expect("12 of 32");
    let tag = Aes256Gcm::new(&dk.0.into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &[],
                aad: &claim.aad(),
            },
        )
        .map_err(|_| ChunkError::Random("AES-GCM sealing failed".into()))?;
    let mut out = (wrapped.len() as u16).to_le_bytes().to_vec();
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Checks `seal` against `claim` with the tenant's key (untrusted bytes:
/// every length is checked). A missing tenant key is reported as such;
/// anything else that does not verify is [`ChunkError::PointerUnauthentic`].
pub fn open_pointer(
    claim: &PointerClaim<'_>,
    seal: &[u8],
    provider: &dyn KeyProvider,
) -> Result<(), ChunkError> {
    let forged = || ChunkError::PointerUnauthentic {
        tenant: claim.tenant.to_string(),
        name: claim.name.to_string(),
    };
    let (len, rest) = seal.split_first_chunk::<2>().ok_or_else(forged)?;
    let n = usize::from(u16::from_le_bytes(*len));
    if n > MAX_WRAPPED || rest.len() != n + 12 + 16 {
        return Err(forged());
    }
    let (wrapped, rest) = rest.split_at(n);
    let (nonce, tag) = rest.split_at(12);
    let dk = match provider.unwrap(claim.tenant, wrapped) {
        Ok(k) => k,
        Err(e @ ChunkError::MissingKey { .. }) => return Err(e),
        Err(_) => return Err(forged()),
    };
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| forged())?;
    Aes256Gcm::new(&dk.0.into())
        .decrypt(
            &nonce.into(),
            Payload {
                msg: tag,
                aad: &claim.aad(),
            },
        )
        .map_err(|_| forged())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keyring;

    fn claim<'a>(name: &'a str, manifest: &'a str, version: u64) -> PointerClaim<'a> {
        PointerClaim {
            tenant: "acme",
            name,
            state: "live",
            manifest,
            version,
        }
    }

    #[test]
    fn a_seal_verifies_only_its_own_claim() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path());
        let c = claim("app", "sha256:aa", 3);
        let s = seal_pointer(&c, &k).unwrap();
        open_pointer(&c, &s, &k).unwrap();
        for other in [
            claim("other", "sha256:aa", 3),
            claim("app", "sha256:bb", 3),
            claim("app", "sha256:aa", 2),
            PointerClaim {
                state: "removed",
                ..c
            },
            PointerClaim { tenant: "bob", ..c },
        ] {
            assert!(open_pointer(&other, &s, &k).is_err(), "{other:?}");
        }
        for i in 0..s.len() {
            let mut b = s.clone();
            b[i] ^= 1;
            assert!(open_pointer(&c, &b, &k).is_err(), "byte {i}");
        }
        for cut in [0, 1, 2, s.len() - 1] {
            assert!(open_pointer(&c, &s[..cut], &k).is_err());
        }
        let other_keys = Keyring::new(d.path().join("elsewhere"));
        assert!(matches!(
            open_pointer(&c, &s, &other_keys),
            Err(ChunkError::MissingKey { .. })
        ));
    }
}
