//! Pins: holds on one version (manifest) of an image that GC keeps live.
//!
//! A function runs the image version it was created with after the name
//! moves on, so that version must outlive its pointer. A pin is one small
//! object per holder:
//!
//! ```text
//! tenants/<T>/pins/<manifest hex>/<holder>      {"v":1,"image":NAME,"holder":HOLDER}
//! ```
//!
//! GC reads only the path: the manifest the pin names is live, so it is not
//! swept and its root is neither expired nor deleted (a pinned version is
//! kept where it is, not migrated: its root stays until the last pin goes).
//! Pins are not secret (the path names nothing the manifest's own path does
//! not) and not sealed: a forged pin can only keep data longer.
//!
//! **Safety against a concurrent GC pass.** [`Store::pin`] writes the pin
//! first, then checks that the version is still safe to hold: its pointer
//! names it, or its root still takes pushes (is active). A pass deletes a
//! manifest or root only when its scan found neither a pointer nor a pin for
//! it, and its decisions use root states listed before its scan, which reads
//! every pointer before it lists pins. If the check saw the pointer name the
//! version, a scan that no longer sees it read the pointer later, so lists
//! the pin later still; if the check saw the root active, a pass that found
//! it retired listed roots after the check, so scanned after the pin landed.
//! A version that passes neither check (an old version in a retired root) is
//! refused and the pin removed.

use crate::error::{Result, StoreError};
use crate::pointer::PointerState;
use crate::roots::RootState;
use crate::store::{hex_of, Store};
use bytes::Bytes;
use lode_chunk::Manifest;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

/// The body of a pin (informative: GC reads only the path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PinDoc {
    v: u32,
    image: String,
    holder: String,
}

/// A pin as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// Tenant.
    pub tenant: String,
    /// `sha256:<hex>` of the pinned manifest.
    pub digest: String,
    /// Who holds it (e.g. `function.NAME.<nonce>`).
    pub holder: String,
}

impl Pin {
    /// The pin's object path.
    pub fn path(&self) -> Result<Path> {
        pin_path(&self.tenant, &self.digest, &self.holder)
    }
}

/// Checks a holder name: 1–200 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_holder(h: &str) -> Result<()> {
    let ok = (1..=200).contains(&h.len())
        && !h.starts_with('.')
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(format!(
            "pin holder {h:?}: 1-200 of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

fn pin_path(tenant: &str, digest: &str, holder: &str) -> Result<Path> {
    lode_chunk::keys::check_tenant(tenant)?;
    check_holder(holder)?;
    Ok(Path::from(format!(
        "tenants/{tenant}/pins/{}/{holder}",
        hex_of(digest)?
    )))
}

impl Store {
    /// Pins `tenant/image` at `digest` for `holder`, so GC keeps that
    /// version. Refused (and nothing left behind) when the manifest is not
    /// there or is an old version in a root that no longer takes pushes.
    pub async fn pin(&self, tenant: &str, image: &str, digest: &str, holder: &str) -> Result<Pin> {
        crate::check_name(image)?;
        let pin = Pin {
            tenant: tenant.to_string(),
            digest: digest.to_string(),
            holder: holder.to_string(),
        };
        let path = pin.path()?;
        let body = serde_json::to_vec(&PinDoc {
            v: 1,
            image: image.to_string(),
            holder: holder.to_string(),
        })
        .expect("a pin serializes");
        self.put(&path, Bytes::from(body)).await?;
        match self.pin_safe(tenant, image, digest).await {
            Ok(()) => Ok(pin),
            Err(e) => {
                self.delete(&path).await?;
                Err(e)
            }
        }
    }

    async fn pin_safe(&self, tenant: &str, image: &str, digest: &str) -> Result<()> {
        let refused = |reason: String| StoreError::PinRefused {
            tenant: tenant.to_string(),
            image: image.to_string(),
            digest: digest.to_string(),
            reason,
        };
        let bytes = match self.get_manifest(tenant, digest).await {
            Ok(b) => b,
            Err(StoreError::Missing { .. }) => return Err(refused("no such manifest".into())),
            Err(e) => return Err(e),
        };
        let root = Manifest::peek_root(&bytes)
            .map_err(|e| refused(format!("the manifest does not read: {e}")))?;
        if let Some((p, _)) = self.read_pointer(tenant, image).await? {
            if p.state == PointerState::Live && p.live_manifest() == Some(digest) {
                return Ok(());
            }
        }
        let r = self.root(&root).await?;
        if r.state == RootState::Active {
            return Ok(());
        }
        Err(refused(format!(
            "it is an old version in root {root}, which is {:?} and being collected: pin the current version",
            r.state
        )))
    }

    /// Removes a pin (a missing pin is fine).
    pub async fn unpin(&self, pin: &Pin) -> Result<()> {
        self.delete(&pin.path()?).await
    }

    /// Every pin of `tenant` (objects whose path is not a pin are skipped).
    pub async fn list_pins(&self, tenant: &str) -> Result<Vec<Pin>> {
        Ok(self
            .list_pins_written(tenant)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// Every pin of `tenant`, with when it was written (Unix milliseconds,
    /// the store's modification time).
    pub async fn list_pins_written(&self, tenant: &str) -> Result<Vec<(Pin, u64)>> {
        let mut out = Vec::new();
        for m in self.list_all(&format!("tenants/{tenant}/pins")).await? {
            let parts: Vec<&str> = m.location.as_ref().split('/').collect();
            if let [_, _, _, hex, holder] = parts.as_slice() {
                let digest = format!("sha256:{hex}");
                if hex_of(&digest).is_ok() && check_holder(holder).is_ok() {
                    let pin = Pin {
                        tenant: tenant.to_string(),
                        digest,
                        holder: holder.to_string(),
                    };
                    out.push((pin, m.last_modified.timestamp_millis().max(0) as u64));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders() {
        assert!(check_holder("function.f1.0123abcd").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(201)] {
            assert!(check_holder(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let p = pin_path("t1", &d, "function.f").unwrap();
        assert_eq!(
            p.as_ref(),
            format!("tenants/t1/pins/{}/function.f", "ab".repeat(32))
        );
        assert!(pin_path("t1", "sha256:zz", "f").is_err());
        assert!(pin_path("t1", &d, "a/b").is_err());
    }
}
