//! Export names (`TENANT/NAME[@OVERLAY]`), the images behind them, and what
//! every transport of one agent shares: the reader, the store, the keys,
//! the prefetch and recording policy, and the claims of named overlays.

use crate::image::ImageHandle;
use crate::reader::ChunkReader;
use crate::reads::{ImageInfo, ReadLog};
use lode_chunk::{KeyProvider, Manifest};
use lode_store::{open_image, OpenedImage, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

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

    /// The identity of a kept overlay: the whole `TENANT/NAME@OVERLAY`, so
    /// equal overlay names of different tenants or images never share pages.
    pub fn overlay_key(&self) -> Option<String> {
        self.overlay
            .as_ref()
            .map(|o| format!("{}@{o}", self.image()))
    }
}

impl std::fmt::Display for ExportName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.overlay {
            Some(o) => write!(f, "{}/{}@{o}", self.tenant, self.name),
            None => write!(f, "{}/{}", self.tenant, self.name),
        }
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
        source: Box<StoreError>,
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

/// Chunks fetched at once by a background prefetch. Each one starts only
/// while no demand read is fetching ([`ChunkReader::demand_settled`]).
pub const PREFETCH_CONCURRENCY: usize = 4;

/// Counters of the transports.
#[derive(Debug, Default)]
pub struct Stats {
    /// NBD connections accepted so far.
    pub nbd_connections: AtomicU64,
    /// vhost-user-blk sessions (one per frontend that connected) so far.
    pub vhost_sessions: AtomicU64,
    /// Accept loops: connections accepted, shed, and accept errors survived.
    pub accept: Arc<crate::serve::LoopStats>,
    /// When the first READ of any client arrived.
    pub first_read: Arc<OnceLock<Instant>>,
}

/// The claim of a named overlay: released when dropped.
#[derive(Debug)]
pub struct Claim {
    key: String,
    claims: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Resolves export names against the store, sharing one reader.
#[derive(Debug)]
pub struct Exports {
    store: Store,
    keys: Arc<dyn KeyProvider>,
    reader: Arc<ChunkReader>,
    prefetch: Prefetch,
    record: bool,
    overlay_dir: PathBuf,
    // Images in use by manifest digest; a re-pushed image gets a new handle,
    // an image nobody uses any more is freed.
    images: Mutex<HashMap<String, Weak<ImageHandle>>>,
    claims: Arc<Mutex<HashSet<String>>>,
    seq: AtomicU64,
    reads: Arc<ReadLog>,
    /// Counters of the transports.
    pub stats: Stats,
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
            overlay_dir: std::env::temp_dir().join("lode-overlays"),
            images: Mutex::new(HashMap::new()),
            claims: Arc::default(),
            seq: AtomicU64::new(0),
            reads: Arc::new(ReadLog::new()),
            stats: Stats::default(),
        }
    }

    /// Sets the background prefetch policy and whether to record working sets.
    pub fn with_policy(mut self, prefetch: Prefetch, record: bool) -> Self {
        self.prefetch = prefetch;
        self.record = record;
        self
    }

    /// Sets the directory of named and per-connection overlays.
    pub fn with_overlay_dir(mut self, dir: PathBuf) -> Self {
        self.overlay_dir = dir;
        self
    }

    /// The directory of named and per-connection overlays.
    pub fn overlay_dir(&self) -> &Path {
        &self.overlay_dir
    }

    /// The file of a named overlay (`TENANT/NAME@OVERLAY.overlay` under the
    /// overlay directory: one directory per tenant), or of a fresh
    /// per-connection one.
    pub fn overlay_path(&self, key: Option<&str>) -> PathBuf {
        match key {
            Some(k) => self.overlay_dir.join(format!("{k}.overlay")),
            None => {
                let id = self.seq.fetch_add(1, Ordering::Relaxed);
                self.overlay_dir
                    .join(format!("conn-{}-{id}.overlay", std::process::id()))
            }
        }
    }

    /// Claims the named overlay `key` for one user; `None` if another has it.
    pub fn claim(&self, key: &str) -> Option<Claim> {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string())
            .then(|| Claim {
                key: key.to_string(),
                claims: self.claims.clone(),
            })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The key provider.
    pub fn keys(&self) -> &Arc<dyn KeyProvider> {
        &self.keys
    }

    /// The shared reader.
    pub fn reader(&self) -> &Arc<ChunkReader> {
        &self.reader
    }

    /// What clients read, per manifest digest.
    pub fn read_log(&self) -> &Arc<ReadLog> {
        &self.reads
    }

    /// The images clients read (the last [`crate::reads::DIGESTS_KEPT`]),
    /// most recently used first, each with how many of the chunks read the
    /// memory or disk cache holds now. Index lookups only, up to one per
    /// chunk read: call it off the async threads.
    pub fn read_images(&self) -> Vec<ImageInfo> {
        self.reads.list(|name, sha| self.reader.holds(name, sha))
    }

    /// Images currently open (in use by a volume, a connection or a prefetch).
    pub fn open_images(&self) -> usize {
        let mut m = self.images.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, w| w.strong_count() > 0);
        m.len()
    }

    /// The handle of `image` (`TENANT/NAME`) at manifest `digest`, if some
    /// user still holds it open.
    fn open_handle(&self, image: &str, digest: &str) -> Option<Arc<ImageHandle>> {
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&handle_key(image, digest))
            .and_then(Weak::upgrade)
    }

    /// The handle of an opened image, shared with every user of the same
    /// image and manifest.
    fn handle(&self, export: String, image: OpenedImage) -> Arc<ImageHandle> {
        let mut m = self.images.lock().unwrap_or_else(|p| p.into_inner());
        let key = handle_key(&export, &image.digest);
        if let Some(h) = m.get(&key).and_then(Weak::upgrade) {
            return h;
        }
        m.retain(|_, w| w.strong_count() > 0);
        let h = Arc::new(
            ImageHandle::new(export, image, self.reader.clone()).with_reads(self.reads.clone()),
        );
        m.insert(key, Arc::downgrade(&h));
        h
    }

    /// Opens an export (the image's current manifest).
    pub async fn open(&self, export: &str) -> Result<(ExportName, Arc<ImageHandle>), ExportError> {
        let name =
            ExportName::parse(export).ok_or_else(|| ExportError::Unknown(export.to_string()))?;
        // The pointer's seal and freshness are checked on every open; a
        // handle is shared only by opens of the same image and manifest, so a
        // pointer swapped to another image's manifest never finds that
        // image's handle (its binding is checked by `open_image`).
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
                    source: Box::new(source),
                })
            }
        };
        if let Some(h) = self.open_handle(&name.image(), &digest) {
            return Ok((name, h));
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
                        source: Box::new(source),
                    })
                }
            };
        let h = self.handle(name.image(), image);
        Ok((name, h))
    }

    /// Opens `tenant/name` pinned to the manifest `digest` whose sealed bytes
    /// are `sealed` (checked against the digest), without the store: how a
    /// restarted agent re-attaches its volumes, also during a store outage.
    /// (The root-state check of [`open_image`] needs the store; the image was
    /// readable when the volume was attached.)
    pub fn open_sealed(
        &self,
        tenant: &str,
        name: &str,
        digest: &str,
        sealed: &[u8],
    ) -> Result<Arc<ImageHandle>, ExportError> {
        let export = format!("{tenant}/{name}");
        let failed = |source: StoreError| ExportError::Failed {
            export: export.clone(),
            source: Box::new(source),
        };
        if Manifest::digest_of(sealed) != digest {
            return Err(failed(StoreError::Corrupt {
                what: "cached manifest",
                path: digest.to_string(),
                expected: digest.to_string(),
                actual: Manifest::digest_of(sealed),
            }));
        }
        if let Some(h) = self.open_handle(&export, digest) {
            return Ok(h);
        }
        let manifest = Manifest::decode(sealed).map_err(|e| failed(e.into()))?;
        if manifest.tenant != tenant {
            return Err(failed(StoreError::BadDocument {
                what: "manifest",
                path: digest.to_string(),
                reason: format!("belongs to tenant '{}', not '{tenant}'", manifest.tenant),
            }));
        }
        if let Some(b) = manifest.binding.as_ref().filter(|b| b.name != name) {
            return Err(failed(StoreError::Binding {
                tenant: tenant.into(),
                name: name.into(),
                reason: format!("the cached manifest is bound to image '{}'", b.name),
            }));
        }
        let keys = manifest
            .open(self.keys.as_ref())
            .map_err(|e| failed(e.into()))?;
        Ok(self.handle(
            export.clone(),
            OpenedImage {
                digest: digest.to_string(),
                manifest,
                keys,
            },
        ))
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

    /// Called when a client attaches to `h` (NBD `GO`/`EXPORT_NAME`, a
    /// vhost-user frontend; not `INFO` or `LIST`): marks the image as just
    /// used in the read log, and the first time starts
    /// recording and the background prefetch. The prefetch holds the image
    /// weakly: it stops once nobody uses the image.
    pub async fn activate(&self, h: &Arc<ImageHandle>) {
        h.touch_reads();
        if h.activated.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.record {
            h.start_recording();
        }
        let order = self.prefetch_order(h).await;
        if order.is_empty() {
            return;
        }
        let img = Arc::downgrade(h);
        let export = h.export.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let n = order.len();
            let t = std::time::Instant::now();
            futures::stream::iter(order)
                .for_each_concurrent(PREFETCH_CONCURRENCY, |i| {
                    let img = img.clone();
                    async move {
                        let Some(img) = img.upgrade() else { return };
                        if let Err(e) = img.prefetch_chunk(i).await {
                            tracing::debug!(error = %e, "prefetch failed");
                        }
                    }
                })
                .await;
            tracing::info!(export = %export, chunks = n, secs = t.elapsed().as_secs_f64(), "prefetch done");
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

/// What open images are keyed by: `TENANT/NAME@sha256:<hex>`.
fn handle_key(image: &str, digest: &str) -> String {
    format!("{image}@{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::future::BoxFuture;
    use lode_chunk::ChunkName;
    use lode_store::Store;
    use lode_tier::{ChunkId, ChunkTier, TierError};
    use std::time::Duration;

    /// A store tier that holds every fetch until a permit is released,
    /// recording the order in which fetches start.
    #[derive(Debug)]
    struct Gated {
        inner: Store,
        started: Mutex<Vec<ChunkName>>,
        gate: tokio::sync::Semaphore,
    }

    impl ChunkTier for Gated {
        fn label(&self) -> &'static str {
            "store"
        }
        fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
            Box::pin(async move {
                self.started
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(id.name);
                self.gate.acquire().await.map(|p| p.forget()).unwrap_or(());
                self.inner.fetch(id).await
            })
        }
    }

    fn started(g: &Gated) -> Vec<ChunkName> {
        g.started.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let t = std::time::Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "{what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Prefetch does not enter the recorded working set, and a demand read
    /// overtakes every prefetch fetch not yet started.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demand_overtakes_prefetch_and_only_demand_is_recorded() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open("memory://").unwrap_or_else(|e| panic!("{e}"));
        let keys: Arc<dyn KeyProvider> = Arc::new(lode_chunk::Keyring::new(d.path().join("k")));
        let img = d.path().join("img");
        let mut data = vec![0u8; 12 * 512 * 1024];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i / 4096 % 251) as u8 + 1;
        }
        std::fs::write(&img, &data).unwrap_or_else(|e| panic!("{e}"));
        lode_store::push_file(&store, keys.clone(), &img, "t", "img", &Default::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let gated = Arc::new(Gated {
            inner: store.clone(),
            started: Mutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(0),
        });
        let tier: Arc<dyn ChunkTier> = gated.clone();
        let reader = Arc::new(ChunkReader::new(64 << 20, None, vec![tier]));
        let exports = Arc::new(Exports::new(store, keys, reader).with_policy(Prefetch::All, true));
        let (_, h) = exports
            .open("t/img")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        exports.activate(&h).await;
        until("prefetch starts 4 fetches", || {
            started(&gated).len() == PREFETCH_CONCURRENCY
        })
        .await;
        // A client reads chunk 10: its fetch starts at once.
        let h2 = h.clone();
        let demand = tokio::spawn(async move {
            let r = h2
                .range(10 * 512 * 1024, 4096)
                .unwrap_or_else(|e| panic!("{e}"));
            h2.read(r).await
        });
        until("the demand fetch starts", || {
            started(&gated).len() == PREFETCH_CONCURRENCY + 1
        })
        .await;
        let chunk10 = h.image.manifest.names[10].unwrap_or_else(|| panic!("chunk 10 stored"));
        assert_eq!(started(&gated).last(), Some(&chunk10));
        // The 4 prefetch fetches end; no new one starts while the demand
        // fetch is in flight.
        gated.gate.add_permits(PREFETCH_CONCURRENCY);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            started(&gated).len(),
            PREFETCH_CONCURRENCY + 1,
            "prefetch went on during a demand read"
        );
        gated.gate.add_permits(1);
        let got = demand
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&got[..], &data[10 * 512 * 1024..10 * 512 * 1024 + 4096]);
        // Prefetch resumes and fetches the rest; none of it is recorded.
        gated.gate.add_permits(100);
        until("prefetch of the rest", || started(&gated).len() == 12).await;
        assert_eq!(
            h.recorded(),
            Some(vec![10]),
            "prefetched chunks were recorded"
        );
    }

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
        assert_eq!(
            ExportName::parse("acme/app@vm1").map(|e| e.to_string()),
            Some("acme/app@vm1".into())
        );
        assert!(ExportName::parse("acme").is_none());
        assert!(ExportName::parse("../x/y").is_none());
        assert!(ExportName::parse("a/b/c").is_none());
        assert!(ExportName::parse("a/b@../../etc").is_none());
    }
}
