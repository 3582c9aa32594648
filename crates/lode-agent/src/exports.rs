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
        Some(ExportName {
            tenant: tenant.into(),
            name: name.into(),
            overlay,
        })
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

/// What to fetch in the background when an image is first opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Prefetch {
    /// Nothing: only what the guest reads.
    None,
    /// The recorded start-up working set, in recorded order (if one exists).
    #[default]
    Recorded,
    /// The working set, then every other chunk of the image.
    All,
}

/// Chunks fetched at once by a background prefetch; on-demand reads are not
/// limited, so a guest's reads overtake the prefetch.
pub const PREFETCH_CONCURRENCY: usize = 4;

/// Resolves export names against the store, sharing one reader.
#[derive(Debug)]
pub struct Exports {
    store: Store,
    keys: Arc<dyn KeyProvider>,
    reader: Arc<ChunkReader>,
    prefetch: Prefetch,
    record: bool,
    // Opened images by `TENANT/NAME@digest`: a re-pushed image gets a new
    // handle, and a pointer swapped to another image's manifest never finds
    // that image's handle.
    open: Mutex<HashMap<String, Arc<ImageHandle>>>,
}

impl Exports {
    /// Exports of `store`, opened with `keys`, read through `reader`.
    pub fn new(store: Store, keys: Arc<dyn KeyProvider>, reader: Arc<ChunkReader>) -> Self {
        Exports {
            store,
            keys,
            reader,
            prefetch: Prefetch::default(),
            record: false,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the background prefetch policy and whether to record working sets.
    pub fn with_policy(mut self, prefetch: Prefetch, record: bool) -> Self {
        self.prefetch = prefetch;
        self.record = record;
        self
    }

    /// Stores the recorded working set of `image` (if recording), sealed for its tenant.
    pub async fn save_working_set(&self, image: &ImageHandle) -> Result<usize, StoreError> {
        let Some(order) = image.recorded().filter(|o| !o.is_empty()) else {
            return Ok(0);
        };
        let tenant = &image.image.manifest.tenant;
        let sealed =
            lode_chunk::workingset::seal(tenant, &image.image.digest, &order, self.keys.as_ref())?;
        self.store
            .put_working_set(tenant, &image.image.digest, sealed.into())
            .await?;
        tracing::info!(export = %image.export, chunks = order.len(), "working set recorded");
        Ok(order.len())
    }

    /// The order to prefetch `image` in, per the policy.
    async fn prefetch_order(&self, image: &ImageHandle) -> Vec<u64> {
        let mut order: Vec<u64> = Vec::new();
        let tenant = &image.image.manifest.tenant;
        if self.prefetch != Prefetch::None {
            match self
                .store
                .get_working_set(tenant, &image.image.digest, image.chunks())
                .await
            {
                Ok(Some(b)) => match lode_chunk::workingset::open(
                    tenant,
                    &image.image.digest,
                    &b,
                    self.keys.as_ref(),
                ) {
                    Ok(o) => {
                        order.extend(o.into_iter().map(u64::from).filter(|&i| i < image.chunks()))
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring unreadable working set"),
                },
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read working set"),
            }
        }
        if self.prefetch == Prefetch::All {
            let mut seen = vec![false; image.chunks() as usize];
            for &i in &order {
                seen[i as usize] = true;
            }
            order.extend((0..image.chunks()).filter(|&i| !seen[i as usize]));
        }
        order
    }

    /// The shared reader.
    pub fn reader(&self) -> &Arc<ChunkReader> {
        &self.reader
    }

    /// Opens an export (the image's current manifest).
    pub async fn open(&self, export: &str) -> Result<(ExportName, Arc<ImageHandle>), ExportError> {
        let name =
            ExportName::parse(export).ok_or_else(|| ExportError::Unknown(export.to_string()))?;
        // The pointer's seal and freshness are checked on every open; a
        // handle is shared only by opens of the same image and manifest.
        let digest = match self
            .store
            .resolve_image(self.keys.as_ref(), &name.tenant, &name.name)
            .await
        {
            Ok(r) => r.digest,
            Err(StoreError::ImageNotFound { .. })
            | Err(StoreError::ImageRemoved { .. })
            | Err(StoreError::BadName(_))
            | Err(StoreError::Chunk(lode_chunk::ChunkError::MissingKey { .. })) => {
                return Err(ExportError::Unknown(export.to_string()))
            }
            Err(source) => {
                return Err(ExportError::Failed {
                    export: export.into(),
                    source,
                })
            }
        };
        let key = format!("{}@{digest}", name.image());
        if let Some(h) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok((name, h.clone()));
        }
        let image =
            match open_image(&self.store, self.keys.as_ref(), &name.tenant, &name.name).await {
                Ok(i) => i,
                Err(StoreError::Chunk(lode_chunk::ChunkError::MissingKey { .. })) => {
                    return Err(ExportError::Unknown(export.to_string()))
                }
                Err(source) => {
                    return Err(ExportError::Failed {
                        export: export.into(),
                        source,
                    })
                }
            };
        let h = Arc::new(ImageHandle::new(name.image(), image, self.reader.clone()));
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, h.clone());
        Ok((name, h))
    }

    /// Called when a client attaches to `h` (NBD `GO`/`EXPORT_NAME`, not `INFO`
    /// or `LIST`): the first time, starts recording and the background prefetch.
    pub async fn activate(&self, h: &Arc<ImageHandle>) {
        if h.activated.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if self.record {
            h.start_recording();
        }
        let order = self.prefetch_order(h).await;
        if order.is_empty() {
            return;
        }
        let img = h.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let n = order.len();
            let t = std::time::Instant::now();
            futures::stream::iter(order)
                .for_each_concurrent(PREFETCH_CONCURRENCY, |i| {
                    let img = img.clone();
                    async move {
                        if let Err(e) = img.chunk(i).await {
                            tracing::debug!(error = %e, "prefetch failed");
                        }
                    }
                })
                .await;
            tracing::info!(export = %img.export, chunks = n, secs = t.elapsed().as_secs_f64(), "prefetch done");
        });
    }

    /// All exports the store holds (`TENANT/NAME`).
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .store
            .list_images()
            .await?
            .into_iter()
            .map(|(t, n)| format!("{t}/{n}"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names() {
        assert_eq!(
            ExportName::parse("acme/app@vm1"),
            Some(ExportName {
                tenant: "acme".into(),
                name: "app".into(),
                overlay: Some("vm1".into())
            })
        );
        assert!(ExportName::parse("acme").is_none());
        assert!(ExportName::parse("../x/y").is_none());
        assert!(ExportName::parse("a/b/c").is_none());
    }
}
