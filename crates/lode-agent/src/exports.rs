//! Export names (`TENANT/NAME[@OVERLAY]`) and the images behind them.

use crate::image::ImageHandle;
use crate::reader::ChunkReader;
use lode_chunk::KeyProvider;
use lode_store::{open_image, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A parsed export name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportName {
    /// Tenant.
    pub tenant: String,
    /// Image name.
    pub name: String,
    /// Name of an overlay to keep across connections, if any.
    pub overlay: Option<String>,
}

impl ExportName {
    /// Parses `TENANT/NAME` or `TENANT/NAME@OVERLAY`.
    pub fn parse(s: &str) -> Option<ExportName> {
        let (tenant, rest) = s.split_once('/')?;
        let (name, overlay) = match rest.split_once('@') {
            Some((n, o)) => (n, Some(o.to_string())),
            None => (rest, None),
        };
        lode_chunk::keys::check_tenant(tenant).ok()?;
        lode_store::check_name(name).ok()?;
        if let Some(o) = &overlay {
            lode_store::check_name(o).ok()?;
        }
        Some(ExportName { tenant: tenant.into(), name: name.into(), overlay })
    }

    /// `TENANT/NAME` without the overlay.
    pub fn image(&self) -> String {
        format!("{}/{}", self.tenant, self.name)
    }
}

/// Why an export could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No such export (bad name, unknown tenant or image, no key).
    #[error("unknown export '{0}'")]
    Unknown(String),
    /// The export exists but could not be opened.
    #[error("export '{export}': {source}")]
    Failed {
        /// Export name.
        export: String,
        /// What failed.
        #[source]
        source: StoreError,
    },
}

/// Resolves export names against the store, sharing one reader.
#[derive(Debug)]
pub struct Exports {
    store: Store,
    keys: Arc<dyn KeyProvider>,
    reader: Arc<ChunkReader>,
    // Opened images by manifest digest: a re-pushed image gets a new handle.
    open: Mutex<HashMap<String, Arc<ImageHandle>>>,
}

impl Exports {
    /// Exports of `store`, opened with `keys`, read through `reader`.
    pub fn new(store: Store, keys: Arc<dyn KeyProvider>, reader: Arc<ChunkReader>) -> Self {
        Exports { store, keys, reader, open: Mutex::new(HashMap::new()) }
    }

    /// The shared reader.
    pub fn reader(&self) -> &Arc<ChunkReader> {
        &self.reader
    }

    /// Opens an export (the image's current manifest).
    pub async fn open(&self, export: &str) -> Result<(ExportName, Arc<ImageHandle>), ExportError> {
        let name = ExportName::parse(export).ok_or_else(|| ExportError::Unknown(export.to_string()))?;
        let digest = match self.store.get_image(&name.tenant, &name.name).await {
            Ok(d) => d,
            Err(StoreError::ImageNotFound { .. }) | Err(StoreError::BadName(_)) => {
                return Err(ExportError::Unknown(export.to_string()))
            }
            Err(source) => return Err(ExportError::Failed { export: export.into(), source }),
        };
        if let Some(h) = self.open.lock().unwrap_or_else(|p| p.into_inner()).get(&digest) {
            return Ok((name, h.clone()));
        }
        let image = match open_image(&self.store, self.keys.as_ref(), &name.tenant, &name.name).await {
            Ok(i) => i,
            Err(StoreError::Chunk(lode_chunk::ChunkError::MissingKey { .. })) => {
                return Err(ExportError::Unknown(export.to_string()))
            }
            Err(source) => return Err(ExportError::Failed { export: export.into(), source }),
        };
        let h = Arc::new(ImageHandle::new(name.image(), image, self.reader.clone()));
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, h.clone());
        Ok((name, h))
    }

    /// All exports the store holds (`TENANT/NAME`).
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.store.list_images().await?.into_iter().map(|(t, n)| format!("{t}/{n}")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names() {
        assert_eq!(
            ExportName::parse("acme/app@vm1"),
            Some(ExportName { tenant: "acme".into(), name: "app".into(), overlay: Some("vm1".into()) })
        );
        assert!(ExportName::parse("acme").is_none());
        assert!(ExportName::parse("../x/y").is_none());
        assert!(ExportName::parse("a/b/c").is_none());
    }
}
