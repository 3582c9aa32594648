//! Start-up working sets: the order in which a VM first read an image's
//! chunks, sealed for the image's tenant (the order reveals what the image
//! does at start, so it is as secret as the key table).
//!
//! ```text
//! "LODEWSET"  magic 8 bytes, version u16 = 1, reserved u16 = 0
//! wrapped     u16 length + data key wrapped by the KeyProvider
//! nonce       12 bytes
//! sealed      AES-256-GCM(data key, nonce, count u32 ‖ count × u32 chunk index,
//!                         aad = "lode-wset\0" ‖ tenant ‖ "\0" ‖ manifest digest ‖ header bytes)
//! ```
//! The digest in the associated data binds a working set to one manifest.

use crate::error::ChunkError;
use crate::keys::{DataKey, KeyProvider};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;

const MAGIC: &[u8; 8] = b"LODEWSET";
/// Largest working set accepted (indexes).
pub const MAX_ENTRIES: usize = 1 << 24;

fn bad(m: &str) -> ChunkError {
    ChunkError::BadManifest(format!("working set: {m}"))
}

fn aad(tenant: &str, digest: &str, header: &[u8]) -> Vec<u8> {
    [
        b"lode-wset\0".as_slice(),
        tenant.as_bytes(),
        b"\0",
        digest.as_bytes(),
        header,
    ]
    .concat()
}

/// Seals `order` (chunk indexes in first-read order) for `tenant`'s manifest `digest`.
pub fn seal(
    tenant: &str,
    digest: &str,
    order: &[u32],
    keys: &dyn KeyProvider,
) -> Result<Vec<u8>, ChunkError> {
    let dk = DataKey(keys.random()?);
    let wrapped = keys.wrap(tenant, &dk)?;
    let nonce: [u8; 12] = keys.random()?[..12].try_into().expect("12 of 32");
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&1u16.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&(wrapped.len() as u16).to_le_bytes());
    header.extend_from_slice(&wrapped);
    header.extend_from_slice(&nonce);
    let mut body = (order.len() as u32).to_le_bytes().to_vec();
    for i in order {
        body.extend_from_slice(&i.to_le_bytes());
    }
    let ct = Aes256Gcm::new(&dk.0.into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &body,
                aad: &aad(tenant, digest, &header),
            },
        )
        .map_err(|_| bad("sealing failed"))?;
    header.extend_from_slice(&ct);
    Ok(header)
}

/// Opens a sealed working set (untrusted bytes: every length is checked).
pub fn open(
    tenant: &str,
    digest: &str,
    bytes: &[u8],
    keys: &dyn KeyProvider,
) -> Result<Vec<u32>, ChunkError> {
    if bytes.len() < 14
        || &bytes[..8] != MAGIC
        || bytes[8..10] != 1u16.to_le_bytes()
        || bytes[10..12] != [0, 0]
    {
        return Err(bad("bad header"));
    }
    let wl = u16::from_le_bytes([bytes[12], bytes[13]]) as usize;
    let hend = 14usize
        .checked_add(wl)
        .and_then(|x| x.checked_add(12))
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("truncated"))?;
    let wrapped = &bytes[14..14 + wl];
    let nonce: [u8; 12] = bytes[14 + wl..hend]
        .try_into()
        .map_err(|_| bad("truncated"))?;
    let dk = keys.unwrap(tenant, wrapped)?;
    let body = Aes256Gcm::new(&dk.0.into())
        .decrypt(
            &nonce.into(),
            Payload {
                msg: &bytes[hend..],
                aad: &aad(tenant, digest, &bytes[..hend]),
            },
        )
        .map_err(|_| ChunkError::Unauthentic {
            tenant: tenant.to_string(),
        })?;
    let n = u32::from_le_bytes(
        body.get(..4)
            .ok_or_else(|| bad("empty"))?
            .try_into()
            .expect("4"),
    ) as usize;
    if n > MAX_ENTRIES || body.len() != 4 + 4 * n {
        return Err(bad("length mismatch"));
    }
    Ok(body[4..]
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keyring;

    #[test]
    fn roundtrip_and_binding() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path());
        let s = seal("t", "sha256:aa", &[5, 1, 9], &k).unwrap();
        assert_eq!(open("t", "sha256:aa", &s, &k).unwrap(), vec![5, 1, 9]);
        assert!(
            open("t", "sha256:bb", &s, &k).is_err(),
            "bound to its manifest"
        );
        for i in 0..s.len() {
            let mut b = s.clone();
            b[i] ^= 1;
            assert!(open("t", "sha256:aa", &b, &k).is_err(), "byte {i}");
        }
        assert!(open("t", "sha256:aa", &s[..10], &k).is_err());
    }
}
