//! `push`: chunk, encrypt and upload an image; the manifest goes last, then
//! the pointer, through the publish protocol of [`crate::publish`].

use crate::error::{Result, StoreError};
use crate::publish::{Outcome, Publication};
use crate::roots::RootInfo;
use crate::sealer::Sealer;
use crate::store::{check_name, Store};
use futures::{StreamExt, TryStreamExt};
use lode_chunk::manifest::chunk_count;
use lode_chunk::{ChunkName, ChunkSecret, Compression, KeyProvider, CHUNK_SIZE};
use lode_common::bufpool::BufPool;
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
    /// Chunks in the image, once known (0 before: a streamed image's size is
    /// known only when it is complete).
    pub total: AtomicU64,
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
    /// Whether chunks may be stored zstd-compressed ([`Compression::Auto`],
    /// the default) or all raw ([`Compression::Never`]).
    pub compression: Compression,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            concurrency: 16,
            progress: Arc::default(),
            chunk_size: CHUNK_SIZE,
            compression: Compression::Auto,
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
    /// Chunks taken while the image was still being written (streamed push;
    /// 0 for a push of a finished file).
    pub streamed: u64,
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

/// What the producer of a streamed image tells [`push_stream`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// Chunk `i` (a whole chunk) holds its final bytes in the file.
    Chunk(u64),
    /// The image is complete and this many bytes long: every chunk not told
    /// yet is final now.
    Complete(u64),
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

/// Reads the chunk of `len` bytes at `off` into a buffer from `pool`;
/// `None` for an all-zero chunk. With `punch`, the chunk's bytes are then
/// released from the file (a hole punched), so a streamed image never sits
/// whole on disk.
fn read_chunk(
    file: &std::fs::File,
    off: u64,
    len: u64,
    punch: bool,
    pool: &BufPool,
) -> std::io::Result<Option<Vec<u8>>> {
    if is_hole(file, off, len) {
        return Ok(None);
    }
    let mut buf = pool.take(len as usize);
    if let Err(e) = file.read_exact_at(&mut buf, off) {
        pool.give(buf);
        return Err(e);
    }
    if punch {
        punch_hole(file, off, len);
    }
    if buf.iter().all(|&b| b == 0) {
        pool.give(buf);
        return Ok(None);
    }
    Ok(Some(buf))
}

/// Frees `len` bytes at `off` of `file` (its size stays). Where the file
/// system cannot, the bytes stay: a cost in disk, never in correctness.
#[allow(unsafe_code)]
fn punch_hole(file: &std::fs::File, off: u64, len: u64) {
    // SAFETY: fallocate only changes the file's allocation; fd is owned by a live File.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r != 0 {
        tracing::debug!(off, len, error = %std::io::Error::last_os_error(), "cannot punch a hole in the streamed image");
    }
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
    let io = |source| StoreError::Io {
        path: image.display().to_string(),
        source,
    };
    let file = Arc::new(std::fs::File::open(image).map_err(io)?);
    let size = file.metadata().map_err(io)?.len();
    for retargets in 0..MAX_RETARGETS {
        let chunks = futures::stream::iter([Ok(Ready::Complete(size))]);
        let Some(mut report) =
            push_attempt(store, &keys, &file, chunks, (tenant, name), opts, false).await?
        else {
            continue;
        };
        report.retargets = retargets;
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    Err(StoreError::Roots(format!(
        "the active root was retired {MAX_RETARGETS} times while {tenant}/{name} was pushed"
    )))
}

/// Pushes an image while it is being written into `file`: each chunk told
/// by `ready` is read, sealed and uploaded at once, and its bytes are freed
/// from `file` (so the image never needs a full local copy); the chunks left
/// are pushed when [`Ready::Complete`] arrives, then the manifest and the
/// pointer, as [`push_file`] does. If `ready` closes before `Complete`,
/// nothing is published ([`StoreError::Incomplete`]). `Ok(None)`: the root
/// was retired during the push and the chunks freed cannot be re-encrypted
/// for the new one: the caller produces the image again and retries.
pub async fn push_stream(
    store: &Store,
    keys: Arc<dyn KeyProvider>,
    file: Arc<std::fs::File>,
    ready: tokio::sync::mpsc::Receiver<Ready>,
    tenant: &str,
    name: &str,
    opts: &PushOptions,
) -> Result<Option<PushReport>> {
    let start = Instant::now();
    let chunks = futures::stream::unfold((ready, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(r) => Some((Ok(r), (rx, matches!(r, Ready::Complete(_))))),
            None => Some((Err(StoreError::Incomplete), (rx, true))),
        }
    });
    let report = push_attempt(store, &keys, &file, chunks, (tenant, name), opts, true).await?;
    Ok(report.map(|mut r| {
        r.seconds = start.elapsed().as_secs_f64();
        r
    }))
}

/// One push of the chunks `chunks` tells, under a write intent, into the
/// active root: `Ok(None)` when that root retired meanwhile.
async fn push_attempt(
    store: &Store,
    keys: &Arc<dyn KeyProvider>,
    file: &Arc<std::fs::File>,
    chunks: impl futures::Stream<Item = Result<Ready>>,
    (tenant, name): (&str, &str),
    opts: &PushOptions,
    punch: bool,
) -> Result<Option<PushReport>> {
    lode_chunk::keys::check_tenant(tenant)?;
    check_name(name)?;
    let root = store.active_root(keys.as_ref()).await?;
    let read = store.read_pointer(tenant, name).await?;
    let intent = store.write_intent(&root.id, tenant, name, "push").await?;
    let attempt = push_into(
        store,
        keys,
        file,
        chunks,
        &root,
        (tenant, name),
        read,
        opts,
        punch,
    )
    .await;
    // The intent goes whatever happened (a crash leaves it to GC's fence).
    let cleaned = store.delete(&intent).await;
    let Some(report) = attempt? else {
        tracing::info!(tenant, name, root = %root.id, "root retired during the push: moving to the new root");
        return Ok(None);
    };
    cleaned?;
    store.record_seen(tenant, name, report.version).await?;
    tracing::info!(tenant, name, manifest = %report.manifest, version = report.version, "pushed");
    Ok(Some(report))
}

/// One attempt of a push into `root`: `Ok(None)` when the root stopped
/// taking pushes (the caller moves to the new one).
#[allow(clippy::too_many_arguments)]
async fn push_into(
    store: &Store,
    keys: &Arc<dyn KeyProvider>,
    file: &Arc<std::fs::File>,
    chunks: impl futures::Stream<Item = Result<Ready>>,
    root: &RootInfo,
    (tenant, name): (&str, &str),
    read: crate::publish::PointerRead,
    opts: &PushOptions,
    punch: bool,
) -> Result<Option<PushReport>> {
    if !store.root_takes_pushes(&root.id).await? {
        return Ok(None);
    }
    let chunk_size = u64::from(opts.chunk_size);
    let salt = Arc::new(keys.salt(&root.salt_id)?);
    let sealer = Sealer::start(opts.concurrency, opts.compression)?;
    // Every chunk in flight holds at most one buffer (read, sealed,
    // uploaded); a few more cover uploads the store has not dropped yet.
    let pool = BufPool::new(
        opts.concurrency.max(1) * 2,
        opts.chunk_size as usize,
        opts.chunk_size as usize,
    );
    opts.progress.done.store(0, Ordering::Relaxed);
    // Chunks told one by one, then, at `Complete`, every chunk not told yet
    // (the last one possibly short): `(index, offset, length)`.
    let size = Arc::new(AtomicU64::new(u64::MAX));
    let streamed = Arc::new(AtomicU64::new(0));
    let streamed_in = streamed.clone();
    let mut told = std::collections::HashSet::new();
    let (size_in, progress) = (size.clone(), opts.progress.clone());
    let work = chunks.flat_map(move |r| {
        let items: Vec<Result<(u64, u64, u64)>> = match r {
            Ok(Ready::Chunk(i)) => {
                told.insert(i);
                vec![Ok((i, i * chunk_size, chunk_size))]
            }
            Ok(Ready::Complete(n)) => {
                size_in.store(n, Ordering::Relaxed);
                streamed_in.store(told.len() as u64, Ordering::Relaxed);
                let count = chunk_count(n, opts.chunk_size);
                progress.total.store(count, Ordering::Relaxed);
                (0..count)
                    .filter(|i| !told.contains(i))
                    .map(|i| {
                        let off = i * chunk_size;
                        Ok((i, off, (n - off).min(chunk_size)))
                    })
                    .collect()
            }
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(items)
    });
    let results: Vec<(u64, ChunkOutcome)> = work
        .map(|item| {
            let (file, salt, root_id) = (file.clone(), salt.clone(), root.id.clone());
            let (progress, sealer, pool) = (opts.progress.clone(), &sealer, pool.clone());
            async move {
                let (i, off, len) = item?;
                let reader = pool.clone();
                let plain = tokio::task::spawn_blocking(move || {
                    read_chunk(&file, off, len, punch, &reader)
                })
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
                .map_err(|source| StoreError::Io {
                    path: format!("chunk {i} of the image"),
                    source,
                })?;
                let out = match plain {
                    None => ChunkOutcome::Hole,
                    Some(plain) => {
                        let s = sealer.seal(salt, plain).await?;
                        let secret = s.secret;
                        if store.has_chunk(&root_id, &s.name).await? {
                            pool.give(s.ciphertext);
                            ChunkOutcome::Already(s.name, secret)
                        } else {
                            let n = s.ciphertext.len() as u64;
                            // The buffer returns to the pool once the
                            // store has dropped the upload.
                            store
                                .put_chunk(&root_id, &s.name, pool.bytes(s.ciphertext))
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
    let size = size.load(Ordering::Relaxed);
    if size == u64::MAX {
        return Err(StoreError::Incomplete);
    }
    let count = chunk_count(size, opts.chunk_size);
    if let Some((i, _)) = results.iter().find(|(i, _)| *i >= count) {
        return Err(StoreError::ChunkPastEnd { index: *i, count });
    }
    let mut names = vec![None; count as usize];
    let mut secrets = vec![None; count as usize];
    let mut report = PushReport {
        chunks: count,
        holes: 0,
        already: 0,
        uploaded: 0,
        bytes_uploaded: 0,
        image_bytes: size,
        streamed: streamed.load(Ordering::Relaxed),
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
        chunk_size: opts.chunk_size,
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
