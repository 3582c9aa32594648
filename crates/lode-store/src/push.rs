//! `push`: chunk, encrypt and upload an image; the manifest goes last, then
//! the pointer, through the publish protocol of [`crate::publish`].

use crate::error::{Result, StoreError};
use crate::publish::{Outcome, Publication};
use crate::roots::RootInfo;
use crate::store::{check_name, Store};
use futures::{StreamExt, TryStreamExt};
use lode_chunk::manifest::chunk_count;
use lode_chunk::{seal_chunk, ChunkName, ChunkSecret, KeyProvider, Salt, CHUNK_SIZE};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Counters shown while pushing.
#[derive(Debug, Default)]
pub struct PushProgress {
    /// Chunks processed.
    pub done: AtomicU64,
    /// Bytes uploaded.
    pub uploaded_bytes: AtomicU64,
}

/// Options of [`push_file`].
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Chunks in flight at once (reading, encrypting, uploading).
    pub concurrency: usize,
    /// Live counters for a progress bar.
    pub progress: Arc<PushProgress>,
    /// Chunk size (a format parameter recorded in the manifest; lode uses
    /// [`CHUNK_SIZE`]; tests and the protocol simulation use small ones).
    pub chunk_size: u32,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            concurrency: 16,
            progress: Arc::default(),
            chunk_size: CHUNK_SIZE,
        }
    }
}

/// Times a push moves to a newer root (its root was retired under it)
/// before it gives up.
pub const MAX_RETARGETS: u32 = 4;

/// What a push did.
#[derive(Clone, Debug, PartialEq)]
pub struct PushReport {
    /// Chunks in the image.
    pub chunks: u64,
    /// All-zero chunks (recorded as holes, never stored).
    pub holes: u64,
    /// Chunks the store already had.
    pub already: u64,
    /// Chunks uploaded.
    pub uploaded: u64,
    /// Ciphertext bytes uploaded.
    pub bytes_uploaded: u64,
    /// Image size in bytes.
    pub image_bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Digest of the manifest written.
    pub manifest: String,
    /// Root the chunks went to.
    pub root: String,
    /// The image's new version number.
    pub version: u64,
    /// Times the push moved to a newer root because its root retired.
    pub retargets: u32,
}

enum ChunkOutcome {
    Hole,
    Already(ChunkName, ChunkSecret),
    Uploaded(ChunkName, ChunkSecret, u64),
}

/// True if `len` bytes at `off` hold no data, by the file system's own sparse
/// map (`SEEK_DATA`), so holes of sparse images are never read.
fn is_hole(file: &std::fs::File, off: u64, len: u64) -> bool {
    // An error means "unknown": the chunk is then read.
    match seek_data(file.as_raw_fd(), off) {
        Some(next) => next >= off + len,
        None => false,
    }
}

#[allow(unsafe_code)]
fn seek_data(fd: i32, off: u64) -> Option<u64> {
    // SAFETY: lseek only reads the descriptor's state; fd is owned by a live File.
    let r = unsafe { libc::lseek(fd, off as libc::off_t, libc::SEEK_DATA) };
    if r >= 0 {
        Some(r as u64)
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
        Some(u64::MAX)
    } else {
        None
    }
}

/// Reads chunk `i` and seals it; `None` for an all-zero chunk.
fn read_and_seal(
    file: &std::fs::File,
    size: u64,
    i: u64,
    chunk_size: u32,
    salt: &Salt,
) -> std::io::Result<Option<lode_chunk::SealedChunk>> {
    let off = i * u64::from(chunk_size);
    let len = (size - off).min(u64::from(chunk_size));
    if is_hole(file, off, len) {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, off)?;
    if buf.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    Ok(Some(seal_chunk(salt, &buf)))
}

/// Pushes the ext4 image at `image` as `tenant/name`. Only chunks the store
/// lacks are uploaded; the manifest and then the image pointer are written
/// after every chunk is stored, so an interrupted push leaves no manifest
/// pointing at a missing chunk, and a re-run resumes cheaply. The new
/// manifest is bound to the name and the next version number. If the root
/// is retired while the push runs, the push moves to the new active root
/// (re-encrypting there): it never publishes into a root that is not active.
pub async fn push_file(
    store: &Store,
    keys: Arc<dyn KeyProvider>,
    image: &Path,
    tenant: &str,
    name: &str,
    opts: &PushOptions,
) -> Result<PushReport> {
    let start = Instant::now();
    lode_chunk::keys::check_tenant(tenant)?;
    check_name(name)?;
    let io = |source| StoreError::Io {
        path: image.display().to_string(),
        source,
    };
    let file = Arc::new(std::fs::File::open(image).map_err(io)?);
    let size = file.metadata().map_err(io)?.len();
    for retargets in 0..MAX_RETARGETS {
        let root = store.active_root(keys.as_ref()).await?;
        let read = store.read_pointer(tenant, name).await?;
        let intent = store.write_intent(&root.id, tenant, name, "push").await?;
        let attempt = push_into(store, &keys, &file, size, &root, (tenant, name), read, opts).await;
        // The intent goes whatever happened (a crash leaves it to GC's fence).
        let cleaned = store.delete(&intent).await;
        let Some(mut report) = attempt? else {
            tracing::info!(tenant, name, root = %root.id, "root retired during the push: moving to the new root");
            continue;
        };
        cleaned?;
        report.retargets = retargets;
        report.seconds = start.elapsed().as_secs_f64();
        store.record_seen(tenant, name, report.version).await?;
        tracing::info!(tenant, name, manifest = %report.manifest, version = report.version, "pushed");
        return Ok(report);
    }
    Err(StoreError::Roots(format!(
        "the active root was retired {MAX_RETARGETS} times while {tenant}/{name} was pushed"
    )))
}

/// One attempt of a push into `root`: `Ok(None)` when the root stopped
/// taking pushes (the caller moves to the new one).
#[allow(clippy::too_many_arguments)]
async fn push_into(
    store: &Store,
    keys: &Arc<dyn KeyProvider>,
    file: &Arc<std::fs::File>,
    size: u64,
    root: &RootInfo,
    (tenant, name): (&str, &str),
    read: crate::publish::PointerRead,
    opts: &PushOptions,
) -> Result<Option<PushReport>> {
    if !store.root_takes_pushes(&root.id).await? {
        return Ok(None);
    }
    let chunk_size = opts.chunk_size;
    let salt = Arc::new(keys.salt(&root.salt_id)?);
    let count = chunk_count(size, chunk_size);
    opts.progress.done.store(0, Ordering::Relaxed);
    let results: Vec<(u64, ChunkOutcome)> = futures::stream::iter(0..count)
        .map(|i| {
            let (file, salt, root_id) = (file.clone(), salt.clone(), root.id.clone());
            let progress = opts.progress.clone();
            async move {
                let sealed = tokio::task::spawn_blocking(move || {
                    read_and_seal(&file, size, i, chunk_size, &salt)
                })
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
                .map_err(|source| StoreError::Io {
                    path: format!("chunk {i} of the image"),
                    source,
                })?;
                let out = match sealed {
                    None => ChunkOutcome::Hole,
                    Some(s) => {
                        let secret = ChunkSecret {
                            key: s.key,
                            plain_sha: s.plain_sha,
                        };
                        if store.has_chunk(&root_id, &s.name).await? {
                            ChunkOutcome::Already(s.name, secret)
                        } else {
                            let n = s.ciphertext.len() as u64;
                            store
                                .put_chunk(&root_id, &s.name, s.ciphertext.into())
                                .await?;
                            progress.uploaded_bytes.fetch_add(n, Ordering::Relaxed);
                            ChunkOutcome::Uploaded(s.name, secret, n)
                        }
                    }
                };
                progress.done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, StoreError>((i, out))
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    let mut names = vec![None; count as usize];
    let mut secrets = vec![None; count as usize];
    let mut report = PushReport {
        chunks: count,
        holes: 0,
        already: 0,
        uploaded: 0,
        bytes_uploaded: 0,
        image_bytes: size,
        seconds: 0.0,
        manifest: String::new(),
        root: root.id.clone(),
        version: 0,
        retargets: 0,
    };
    for (i, o) in results {
        let i = i as usize;
        match o {
            ChunkOutcome::Hole => report.holes += 1,
            ChunkOutcome::Already(n, s) => {
                report.already += 1;
                names[i] = Some(n);
                secrets[i] = Some(s);
            }
            ChunkOutcome::Uploaded(n, s, b) => {
                report.uploaded += 1;
                report.bytes_uploaded += b;
                names[i] = Some(n);
                secrets[i] = Some(s);
            }
        }
    }
    let publication = Publication {
        tenant,
        name,
        root: &root.id,
        image_size: size,
        chunk_size,
        names: &names,
        secrets: &secrets,
    };
    match store
        .publish_next(&publication, read, keys.as_ref())
        .await?
    {
        Outcome::Published { digest, version } => {
            report.manifest = digest;
            report.version = version;
            Ok(Some(report))
        }
        Outcome::Retarget | Outcome::Superseded => Ok(None),
    }
}
