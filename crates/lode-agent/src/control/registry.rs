//! The volume table of a running agent: attach, detach, list, restore.
//!
//! Every volume is one image pinned to the manifest digest it had when
//! attached (a re-push never changes a running VM's disk), one overlay
//! (read-write volumes: durable, under the state directory or named), and
//! one socket of its own serving only it. The table is persisted on every
//! change; a restarted agent re-creates every volume at the same socket
//! path from the cached sealed manifest before it serves anything.

use super::api::{AttachRequest, Attached, CounterInfo, VolumeInfo};
use super::manifests::ManifestCache;
use super::sockets::{self, SocketError};
use super::state::{StateDir, StateError, VolumeRecord};
use crate::exports::{ExportError, ExportName, Exports};
use crate::nbd::{Catalog, NbdService};
use crate::overlay::Durability;
use crate::serve;
use crate::volume::{OverlaySpec, Via, Volume, VolumeError};
use lode_common::prom;
use lode_store::StoreError;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

/// NBD connections served at once on one volume's socket.
pub const NBD_CONNECTIONS_PER_VOLUME: usize = 16;
/// How often volumes that could not be restored are retried.
pub const RESTORE_RETRY: Duration = Duration::from_secs(2);

/// Why a control operation failed; [`RegistryError::status`] is its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A field of the request is malformed.
    #[error("bad {field} '{value}': expected {expected}")]
    Invalid {
        /// Field.
        field: &'static str,
        /// What was sent.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The image (or the tenant's key) does not exist.
    #[error("unknown image {tenant}/{image} (no such image, or no key for the tenant)")]
    UnknownImage {
        /// Tenant.
        tenant: String,
        /// Image.
        image: String,
    },
    /// A pinned manifest digest that the store no longer holds.
    #[error("image {tenant}/{image} has no manifest {digest} (removed or collected): it is gone")]
    DigestGone {
        /// Tenant.
        tenant: String,
        /// Image.
        image: String,
        /// The pinned digest.
        digest: String,
    },
    /// A pinned manifest digest that belongs to another image.
    #[error("manifest {digest} is not image {tenant}/{image}'s: {reason}")]
    NotThisImage {
        /// Tenant.
        tenant: String,
        /// Image.
        image: String,
        /// The pinned digest.
        digest: String,
        /// What it belongs to instead.
        reason: String,
    },
    /// The store could not be read.
    #[error("image {export}: the store is unavailable: {source}")]
    Store {
        /// Image.
        export: String,
        /// What failed.
        #[source]
        source: Box<StoreError>,
    },
    /// A volume of the table could not be restored: its sealed manifest is
    /// not cached on the host and the store did not give it.
    #[error("volume {volume}: manifest {digest} not cached, and the store failed: {source}")]
    Restore {
        /// Volume id.
        volume: String,
        /// The volume's manifest digest.
        digest: String,
        /// What the store said.
        #[source]
        source: Box<StoreError>,
    },
    /// The volume could not be set up (overlay in use, overlay I/O).
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The socket could not be created or given to its owner.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The table could not be saved.
    #[error(transparent)]
    State(#[from] StateError),
    /// No volume with this id.
    #[error("no volume '{0}'")]
    NoSuchVolume(String),
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

impl RegistryError {
    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            RegistryError::Invalid { .. } => 400,
            RegistryError::UnknownImage { .. }
            | RegistryError::NoSuchVolume(_)
            | RegistryError::DigestGone { .. } => 404,
            RegistryError::NotThisImage { .. } => 409,
            RegistryError::Volume(VolumeError::OverlayInUse(_)) => 409,
            RegistryError::Socket(SocketError::Chown { .. }) => 403,
            RegistryError::Store { .. }
            | RegistryError::Restore { .. }
            | RegistryError::ShuttingDown => 503,
            RegistryError::Volume(VolumeError::Export(ExportError::Unknown(_))) => 404,
            RegistryError::Volume(_) | RegistryError::Socket(_) | RegistryError::State(_) => 500,
        }
    }
}

/// A volume being served.
struct Live {
    volume: Arc<Volume>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Entry {
    record: VolumeRecord,
    /// `Err`: could not be restored after a restart (retried).
    live: Result<Live, RegistryError>,
}

/// The agent's volumes.
pub struct Registry {
    exports: Arc<Exports>,
    state: StateDir,
    manifests: ManifestCache,
    // A tokio Mutex: attach and detach hold it across the table's save.
    volumes: Mutex<BTreeMap<String, Entry>>,
    started: std::time::Instant,
    stopping: watch::Sender<bool>,
    fleet: std::sync::OnceLock<super::api::FleetHook>,
    images: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("state", &self.state.root())
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        b = (now_secs() ^ u64::from(std::process::id())).to_le_bytes();
    }
    format!("v{}", hex::encode(b))
}

/// Parses `UID[:GID]` (GID defaults to UID's value).
pub fn parse_owner(s: &str) -> Option<(u32, u32)> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// Whether `s` is a volume id this agent makes.
pub fn valid_id(s: &str) -> bool {
    s.len() == 17
        && s.starts_with('v')
        && s[1..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// What [`check_request`] found in an attach request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Transport.
    pub via: Via,
    /// Owner of the socket.
    pub uid: u32,
    /// Group of the socket.
    pub gid: u32,
}

/// Checks every field of an attach request (`peer`: the caller's uid and
/// gid, the default owner) before anything is opened: names that could
/// leave their directory, unknown transports, malformed owners are refused.
pub fn check_request(req: &AttachRequest, peer: (u32, u32)) -> Result<Checked, RegistryError> {
    let invalid = |field, value: &str, expected| RegistryError::Invalid {
        field,
        value: value.to_string(),
        expected,
    };
    lode_chunk::keys::check_tenant(&req.tenant).map_err(|_| {
        invalid(
            "tenant",
            &req.tenant,
            "a tenant name ([a-z0-9._-], not starting with '.')",
        )
    })?;
    lode_store::check_name(&req.image).map_err(|_| {
        invalid(
            "image",
            &req.image,
            "an image name (no '/', '..' or control characters)",
        )
    })?;
    if let Some(d) = &req.digest {
        let hex = d.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(invalid(
                "digest",
                d,
                "a manifest digest, sha256: and 64 lowercase hex digits",
            ));
        }
    }
    if let Some(o) = &req.overlay {
        lode_store::check_name(o).map_err(|_| {
            invalid(
                "overlay",
                o,
                "an overlay id (no '/', '..' or control characters)",
            )
        })?;
    }
    let via_s = req.via.as_deref().unwrap_or("nbd");
    let via = Via::parse(via_s).ok_or_else(|| invalid("via", via_s, "nbd or vhost-user"))?;
    let (uid, gid) = match &req.owner {
        Some(o) => parse_owner(o).ok_or_else(|| invalid("owner", o, "UID or UID:GID (numbers)"))?,
        None => peer,
    };
    Ok(Checked { via, uid, gid })
}

impl Registry {
    /// The registry over `state` (locked), serving through `exports`.
    pub fn new(exports: Arc<Exports>, state: StateDir) -> Registry {
        let manifests = ManifestCache::new(state.manifests());
        Registry {
            exports,
            state,
            manifests,
            volumes: Mutex::new(BTreeMap::new()),
            started: std::time::Instant::now(),
            stopping: watch::channel(false).0,
            fleet: std::sync::OnceLock::new(),
            images: tokio::sync::Semaphore::new(1),
        }
    }

    /// Lets `/v1/fleet` read and change the fleet membership (set once).
    pub fn set_fleet_hook(&self, hook: super::api::FleetHook) {
        let _ = self.fleet.set(hook);
    }

    /// The fleet hook, if the agent has a fleet.
    pub fn fleet_hook(&self) -> Option<&super::api::FleetHook> {
        self.fleet.get()
    }

    /// Waits for the turn to list the images read (`GET /v1/images`: one
    /// listing at a time); the turn ends when the guard drops.
    pub async fn images_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.images.acquire().await.ok()
    }

    /// What the transports share.
    pub fn exports(&self) -> &Arc<Exports> {
        &self.exports
    }

    /// Seconds since the agent started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn overlay_spec(&self, r: &VolumeRecord) -> Option<OverlaySpec> {
        let export = ExportName {
            tenant: r.tenant.clone(),
            name: r.image.clone(),
            overlay: r.overlay.clone(),
        };
        match export.overlay_key() {
            Some(key) => Some(OverlaySpec {
                path: self.exports.overlay_path(Some(&key)),
                durability: Durability::Durable,
            }),
            None => r.rw.then(|| OverlaySpec {
                path: self.state.volume_overlay(&r.id),
                durability: Durability::Durable,
            }),
        }
    }

    /// Starts serving `volume` on `listener`.
    fn serve(&self, volume: Arc<Volume>, via: Via, listener: tokio::net::UnixListener) -> Live {
        let (stop, rx) = watch::channel(false);
        let stats = self.exports.stats.accept.clone();
        let task = match via {
            Via::Nbd => {
                let svc = Arc::new(NbdService {
                    catalog: Catalog::Volume(volume.clone()),
                    tls: None,
                });
                tokio::spawn(serve::run(
                    listener,
                    NBD_CONNECTIONS_PER_VOLUME,
                    rx,
                    stats,
                    move |c, s| svc.clone().serve(c, s),
                ))
            }
            Via::VhostUser => {
                let v = volume.clone();
                tokio::spawn(serve::run_with(
                    listener,
                    1,
                    serve::Overflow::Wait,
                    rx,
                    stats,
                    move |c, s| crate::vhost::serve_frontend(v.clone(), c, s),
                ))
            }
        };
        Live { volume, stop, task }
    }

    /// Opens the volume of `r` (image from `sealed`) and binds its socket.
    async fn open_record(&self, r: &VolumeRecord, sealed: &[u8]) -> Result<Live, RegistryError> {
        let image = self
            .exports
            .open_sealed(&r.tenant, &r.image, &r.digest, sealed)
            .map_err(VolumeError::from)?;
        let export = ExportName {
            tenant: r.tenant.clone(),
            name: r.image.clone(),
            overlay: r.overlay.clone(),
        };
        let via = Via::parse(&r.via).ok_or(RegistryError::Invalid {
            field: "via",
            value: r.via.clone(),
            expected: "nbd or vhost-user",
        })?;
        let volume = Arc::new(
            Volume::open(
                self.exports.clone(),
                r.id.clone(),
                export,
                image,
                self.overlay_spec(r),
                !r.rw,
            )
            .await?,
        );
        let listener = match sockets::bind_owned(&r.socket, r.uid, r.gid) {
            Ok(l) => l,
            Err(e) => {
                drop_volume(volume, false).await;
                return Err(e.into());
            }
        };
        Ok(self.serve(volume, via, listener))
    }

    /// Attaches a volume (`peer`: uid and gid of the caller, the default owner).
    pub async fn attach(
        &self,
        req: AttachRequest,
        peer: (u32, u32),
    ) -> Result<Attached, RegistryError> {
        if *self.stopping.borrow() {
            return Err(RegistryError::ShuttingDown);
        }
        let Checked { via, uid, gid } = check_request(&req, peer)?;
        let export = format!("{}/{}", req.tenant, req.image);
        let image = match &req.digest {
            Some(d) => self.open_pinned(&req, d).await?,
            None => {
                self.exports
                    .open(&export)
                    .await
                    .map_err(|e| match e {
                        ExportError::Unknown(_) => RegistryError::UnknownImage {
                            tenant: req.tenant.clone(),
                            image: req.image.clone(),
                        },
                        ExportError::Failed { source, .. } => RegistryError::Store {
                            export: export.clone(),
                            source,
                        },
                    })?
                    .1
            }
        };
        let digest = image.image.digest.clone();
        if self.manifests.get(&req.tenant, &digest).is_none() {
            let sealed = self
                .exports
                .store()
                .get_manifest(&req.tenant, &digest)
                .await
                .map_err(|source| RegistryError::Store {
                    export: export.clone(),
                    source: Box::new(source),
                })?;
            let (cache, tenant, d) = (self.manifests.clone(), req.tenant.clone(), digest.clone());
            let put = tokio::task::spawn_blocking(move || cache.put(&tenant, &d, &sealed)).await;
            if let Ok(Err(e)) = put {
                tracing::warn!(error = %e, "cannot cache the sealed manifest: a restart will need the store");
            }
        }
        let id = new_id();
        let record = VolumeRecord {
            socket: self.state.sockets().join(format!("{id}.sock")),
            id: id.clone(),
            tenant: req.tenant.clone(),
            image: req.image.clone(),
            digest,
            overlay: req.overlay.clone(),
            rw: req.rw,
            via: via.as_str().into(),
            uid,
            gid,
            attached_at: now_secs(),
        };
        let name = ExportName {
            tenant: record.tenant.clone(),
            name: record.image.clone(),
            overlay: record.overlay.clone(),
        };
        let volume = Arc::new(
            Volume::open(
                self.exports.clone(),
                id.clone(),
                name.clone(),
                image,
                self.overlay_spec(&record),
                !req.rw,
            )
            .await?,
        );
        let listener = match sockets::bind_owned(&record.socket, uid, gid) {
            Ok(l) => l,
            Err(e) => {
                drop_volume(volume, true).await;
                return Err(e.into());
            }
        };
        let mut vols = self.volumes.lock().await;
        let mut records: Vec<VolumeRecord> = vols.values().map(|e| e.record.clone()).collect();
        records.push(record.clone());
        if let Err(e) = self.state.save(&records).await {
            drop(vols);
            drop(listener);
            let _ = std::fs::remove_file(&record.socket);
            drop_volume(volume, true).await;
            return Err(e.into());
        }
        let size = volume.size();
        let live = self.serve(volume, via, listener);
        vols.insert(
            id.clone(),
            Entry {
                record: record.clone(),
                live: Ok(live),
            },
        );
        tracing::info!(volume = %id, export = %name, via = via.as_str(), socket = %record.socket.display(), "attached");
        Ok(Attached {
            id,
            via: via.as_str().into(),
            socket: record.socket,
            export: name.to_string(),
            size,
        })
    }

    /// Opens `req`'s image pinned to manifest `digest`: the image must still
    /// exist (not removed), and the manifest must be in the store (or this
    /// host's manifest cache) and bound to this tenant and image name.
    async fn open_pinned(
        &self,
        req: &AttachRequest,
        digest: &str,
    ) -> Result<Arc<crate::ImageHandle>, RegistryError> {
        let export = format!("{}/{}", req.tenant, req.image);
        let store_err = |source: StoreError| RegistryError::Store {
            export: export.clone(),
            source: Box::new(source),
        };
        let unknown = || RegistryError::UnknownImage {
            tenant: req.tenant.clone(),
            image: req.image.clone(),
        };
        match self
            .exports
            .store()
            .resolve_image(self.exports.keys().as_ref(), &req.tenant, &req.image)
            .await
        {
            Ok(_) => {}
            Err(StoreError::ImageNotFound { .. })
            | Err(StoreError::ImageRemoved { .. })
            | Err(StoreError::BadName(_))
            | Err(StoreError::Chunk(lode_chunk::ChunkError::MissingKey { .. })) => {
                return Err(unknown())
            }
            Err(e) => return Err(store_err(e)),
        }
        let sealed = match self.manifests.get(&req.tenant, digest) {
            Some(b) => b,
            None => match self.exports.store().get_manifest(&req.tenant, digest).await {
                Ok(b) => b.to_vec(),
                Err(StoreError::Missing { .. }) => {
                    return Err(RegistryError::DigestGone {
                        tenant: req.tenant.clone(),
                        image: req.image.clone(),
                        digest: digest.to_string(),
                    })
                }
                Err(e) => return Err(store_err(e)),
            },
        };
        let not_this = |reason: String| RegistryError::NotThisImage {
            tenant: req.tenant.clone(),
            image: req.image.clone(),
            digest: digest.to_string(),
            reason,
        };
        let manifest =
            lode_chunk::Manifest::decode(&sealed).map_err(|e| store_err(StoreError::from(e)))?;
        match &manifest.binding {
            Some(b) if b.name == req.image && manifest.tenant == req.tenant => {}
            Some(b) => {
                return Err(not_this(format!(
                    "it is bound to {}/{}",
                    manifest.tenant, b.name
                )))
            }
            None => {
                return Err(not_this(
                    "it carries no image binding (pushed by an older lode): push the image again to pin it"
                        .into(),
                ))
            }
        }
        self.exports
            .open_sealed(&req.tenant, &req.image, digest, &sealed)
            .map_err(|e| match e {
                ExportError::Unknown(_) => unknown(),
                ExportError::Failed { source, .. } => match *source {
                    StoreError::Binding { reason, .. } => not_this(reason),
                    other => store_err(other),
                },
            })
    }

    /// Detaches volume `id`: its clients' requests complete, its socket goes,
    /// its overlay is flushed (and deleted unless named).
    pub async fn detach(&self, id: &str) -> Result<VolumeInfo, RegistryError> {
        let mut vols = self.volumes.lock().await;
        let entry = vols
            .remove(id)
            .ok_or_else(|| RegistryError::NoSuchVolume(id.to_string()))?;
        let records: Vec<VolumeRecord> = vols.values().map(|e| e.record.clone()).collect();
        if let Err(e) = self.state.save(&records).await {
            vols.insert(id.to_string(), entry);
            return Err(e.into());
        }
        let still_used = vols
            .values()
            .any(|e| e.record.digest == entry.record.digest);
        drop(vols);
        let info = info_of(&entry);
        stop_entry(entry.live, &entry.record, entry.record.overlay.is_none()).await;
        if !still_used {
            self.manifests
                .remove(&entry.record.tenant, &entry.record.digest);
        }
        tracing::info!(volume = %id, "detached");
        Ok(info)
    }

    /// Every volume with its counters.
    pub async fn list(&self) -> Vec<VolumeInfo> {
        self.volumes.lock().await.values().map(info_of).collect()
    }

    /// One volume.
    pub async fn get(&self, id: &str) -> Result<VolumeInfo, RegistryError> {
        self.volumes
            .lock()
            .await
            .get(id)
            .map(info_of)
            .ok_or_else(|| RegistryError::NoSuchVolume(id.to_string()))
    }

    /// Re-creates every volume of the table at its socket path (after a
    /// crash, a SIGKILL, an upgrade). A volume that cannot be restored now
    /// (no cached manifest and no store, say) is listed with its error and
    /// retried in the background by [`Registry::retry_failed`].
    pub async fn restore(&self) -> Result<usize, StateError> {
        let records = self.state.load()?;
        self.remove_leftovers(&records);
        let mut vols = self.volumes.lock().await;
        for r in records {
            let live = self.restore_one(&r).await;
            if let Err(e) = &live {
                tracing::error!(volume = %r.id, error = %e, "cannot restore volume: retrying");
            } else {
                tracing::info!(volume = %r.id, socket = %r.socket.display(), "volume restored");
            }
            vols.insert(r.id.clone(), Entry { record: r, live });
        }
        Ok(vols.len())
    }

    /// Removes overlays and sockets of volumes the table no longer lists (a
    /// detach interrupted by a crash after the table was saved).
    fn remove_leftovers(&self, records: &[VolumeRecord]) {
        let known = |name: &str| {
            records
                .iter()
                .any(|r| name.starts_with(&format!("{}.", r.id)))
        };
        for dir in [
            self.state.root().join("volumes"),
            self.state.sockets().to_path_buf(),
        ] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let ours = name.len() > 17 && valid_id(&name[..17]);
                if ours && !known(&name) {
                    tracing::info!(file = %e.path().display(), "removing a leftover of a detached volume");
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    async fn restore_one(&self, r: &VolumeRecord) -> Result<Live, RegistryError> {
        let sealed = match self.manifests.get(&r.tenant, &r.digest) {
            Some(b) => b,
            None => {
                let b = self
                    .exports
                    .store()
                    .get_manifest(&r.tenant, &r.digest)
                    .await
                    .map_err(|source| RegistryError::Restore {
                        volume: r.id.clone(),
                        digest: r.digest.clone(),
                        source: Box::new(source),
                    })?;
                let _ = self.manifests.put(&r.tenant, &r.digest, &b);
                b.to_vec()
            }
        };
        self.open_record(r, &sealed).await
    }

    /// Retries the volumes that could not be restored, until shutdown.
    pub async fn retry_failed(self: Arc<Self>) {
        let mut stop = self.stopping.subscribe();
        loop {
            tokio::select! {
                _ = serve::stopped(&mut stop) => return,
                _ = tokio::time::sleep(RESTORE_RETRY) => {}
            }
            let failed: Vec<VolumeRecord> = self
                .volumes
                .lock()
                .await
                .values()
                .filter(|e| e.live.is_err())
                .map(|e| e.record.clone())
                .collect();
            for r in failed {
                let live = self.restore_one(&r).await;
                let mut vols = self.volumes.lock().await;
                match vols.get_mut(&r.id) {
                    Some(e) if e.live.is_err() => {
                        if live.is_ok() {
                            tracing::info!(volume = %r.id, "volume restored");
                        }
                        e.live = live;
                    }
                    // Detached meanwhile: undo.
                    _ => {
                        drop(vols);
                        if let Ok(l) = live {
                            stop_entry(Ok(l), &r, false).await;
                        }
                    }
                }
            }
        }
    }

    /// Stops serving every volume (their requests complete, their sockets
    /// go, their overlays are flushed) and keeps the table for the next
    /// agent.
    pub async fn shutdown(&self) {
        self.stopping.send_replace(true);
        let mut vols = self.volumes.lock().await;
        let entries = std::mem::take(&mut *vols);
        let stops = entries
            .into_values()
            .map(|e| async move { stop_entry(e.live, &e.record, false).await });
        futures::future::join_all(stops).await;
    }

    /// Volumes in the table, and those serving.
    pub async fn counts(&self) -> (usize, usize) {
        let v = self.volumes.lock().await;
        (v.len(), v.values().filter(|e| e.live.is_ok()).count())
    }

    /// Prometheus text for every volume (labelled by id only: no tenant or
    /// image names leave the host through the metrics).
    pub async fn render_metrics(&self, out: &mut String) {
        let v = self.volumes.lock().await;
        prom::sample(out, "lode_volumes", "", v.len());
        for e in v.values() {
            let Ok(live) = &e.live else { continue };
            let c = &live.volume.counters;
            let l = format!("volume=\"{}\"", e.record.id);
            for (name, val) in [
                ("lode_volume_reads_total", &c.reads),
                ("lode_volume_read_bytes_total", &c.read_bytes),
                ("lode_volume_writes_total", &c.writes),
                ("lode_volume_write_bytes_total", &c.write_bytes),
                ("lode_volume_flushes_total", &c.flushes),
                ("lode_volume_errors_total", &c.errors),
                ("lode_volume_sessions_total", &c.sessions),
                ("lode_volume_active_sessions", &c.active_sessions),
            ] {
                prom::sample(out, name, &l, prom::load(val));
            }
        }
    }
}

/// Stops a volume's loop (its sessions drain), removes its socket, flushes
/// its overlay (deleting it when `discard`), and drops it off the workers.
async fn stop_entry(live: Result<Live, RegistryError>, r: &VolumeRecord, discard: bool) {
    let Ok(live) = live else {
        return;
    };
    live.stop.send_replace(true);
    let _ = live.task.await;
    let _ = std::fs::remove_file(&r.socket);
    drop_volume(live.volume, discard && r.rw).await;
}

/// Flushes and drops a volume no session uses any more (overlay saved, or
/// deleted when `discard`, then its claim released).
async fn drop_volume(volume: Arc<Volume>, discard: bool) {
    if let Err(e) = volume.flush().await {
        tracing::warn!(volume = %volume.id, error = %e, "overlay not flushed");
    }
    if discard {
        volume.discard_overlay();
    }
    let id = volume.id.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if Arc::strong_count(&volume) > 1 {
            tracing::warn!(volume = %id, "volume still referenced when detached");
        }
        drop(volume);
    })
    .await;
}

fn info_of(e: &Entry) -> VolumeInfo {
    let r = &e.record;
    let export = ExportName {
        tenant: r.tenant.clone(),
        name: r.image.clone(),
        overlay: r.overlay.clone(),
    };
    let (state, error, size, counters) = match &e.live {
        Ok(l) => {
            let c = &l.volume.counters;
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            (
                "serving",
                None,
                l.volume.size(),
                Some(CounterInfo {
                    reads: get(&c.reads),
                    read_bytes: get(&c.read_bytes),
                    writes: get(&c.writes),
                    write_bytes: get(&c.write_bytes),
                    flushes: get(&c.flushes),
                    errors: get(&c.errors),
                    sessions: get(&c.sessions),
                    active_sessions: get(&c.active_sessions),
                    written_pages: l.volume.written_pages(),
                }),
            )
        }
        Err(e) => ("failed", Some(lode_common::errors::chain(e)), 0, None),
    };
    VolumeInfo {
        id: r.id.clone(),
        tenant: r.tenant.clone(),
        image: r.image.clone(),
        digest: r.digest.clone(),
        overlay: r.overlay.clone(),
        rw: r.rw,
        via: r.via.clone(),
        socket: r.socket.clone(),
        export: export.to_string(),
        owner: format!("{}:{}", r.uid, r.gid),
        size,
        attached_at: r.attached_at,
        state: state.into(),
        error,
        counters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_ids() {
        assert_eq!(parse_owner("1000"), Some((1000, 1000)));
        assert_eq!(parse_owner("1000:27"), Some((1000, 27)));
        assert_eq!(parse_owner("root"), None);
        assert_eq!(parse_owner("1:"), None);
        assert_eq!(parse_owner("-1"), None);
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        assert!(!valid_id("../etc/passwd"));
        assert!(!valid_id("vABCDEF0123456789"));
    }
}
