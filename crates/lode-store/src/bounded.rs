//! The one way lode reads a store object: bounded by what the object is.
//!
//! The store is trusted for neither confidentiality nor integrity, so an
//! object may be any size: a chunk truncated up to 7 GiB, a pointer the size
//! of a disk. Every read goes through [`Store::open_object`] (or
//! [`Store::get_opt`] on top of it), which
//!
//! 1. takes the object's size from the GET response (a local file's length,
//!    an S3 `Content-Length`) and refuses it, before a byte is buffered, when
//!    it is over the limit of the object's [`ObjectKind`];
//! 2. then reads no more than that size, whatever the backend sends: a
//!    stream that runs longer (or shorter) than it said is an error too.
//!
//! A manifest is bounded twice: by the largest manifest the format allows,
//! and then exactly by what its header implies ([`Store::read_manifest`]
//! reads the header first, checks the object's size against it, and lets
//! the caller open the data key before the rest is read).

use crate::error::{Result, StoreError};
use crate::store::Store;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use lode_chunk::manifest::{MAX_CHUNKS, MAX_HEADER_LEN};
use lode_chunk::MAX_CHUNK_SIZE;
use object_store::path::Path;
use object_store::{GetOptions, GetResultPayload, UpdateVersion};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Largest image pointer (`{"version":1,"manifest":"sha256:<hex>"}` is 91 bytes).
pub const POINTER_LIMIT: u64 = 4 << 10;
/// Largest root document or root claim (a pretty-printed `root.json` is about 200 bytes).
pub const ROOT_LIMIT: u64 = 4 << 10;
/// Largest protocol document: the GC lease, a publish intent, an alarm
/// (each a few hundred bytes of JSON).
pub const DOCUMENT_LIMIT: u64 = 16 << 10;
/// Largest sealed function document (its variables, at most 4 KB in
/// Lambda, and its image's run settings, base64 inside JSON).
pub const FUNCTION_LIMIT: u64 = 256 << 10;
/// Largest queued asynchronous invocation (lode-frontend): a 1 MiB payload
/// in base64 with its seal and claim.
pub const EVENT_LIMIT: u64 = 2 << 20;
/// Fixed part of a sealed working set beyond its indexes: header with a
/// wrapped key of up to 65,535 bytes, nonce, count and tag.
const WORKING_SET_OVERHEAD: u64 = 14 + u16::MAX as u64 + 12 + 4 + 16;

/// What a store object is, and so how large it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObjectKind {
    /// A chunk's ciphertext: at most the chunk format's maximum chunk size.
    Chunk,
    /// An image pointer: a few KiB.
    Pointer,
    /// A root document or the genesis claim: a few KiB.
    Root,
    /// A protocol document (GC lease, publish intent, alarm): a few KiB.
    Document,
    /// A manifest: at most what 2^25 chunks take; [`Store::read_manifest`]
    /// then holds it to exactly what its header implies.
    Manifest,
    /// A sealed function definition or access key (lode-frontend): its
    /// environment, image settings and seal.
    Function,
    /// A queued asynchronous invocation (lode-frontend): its sealed
    /// payload and its claim.
    Event,
    /// The sealed working set of an image of `chunks` chunks: one 4-byte
    /// index per chunk at most, plus its header.
    WorkingSet {
        /// Chunks of the image it belongs to.
        chunks: u64,
    },
}

impl ObjectKind {
    /// The largest object of this kind, in bytes.
    pub fn limit(self) -> u64 {
        match self {
            ObjectKind::Chunk => u64::from(MAX_CHUNK_SIZE),
            ObjectKind::Pointer => POINTER_LIMIT,
            ObjectKind::Root => ROOT_LIMIT,
            ObjectKind::Document => DOCUMENT_LIMIT,
            ObjectKind::Function => FUNCTION_LIMIT,
            ObjectKind::Event => EVENT_LIMIT,
            ObjectKind::Manifest => MAX_HEADER_LEN as u64 + 20 + MAX_CHUNKS * 96,
            ObjectKind::WorkingSet { chunks } => {
                WORKING_SET_OVERHEAD + 4 * chunks.min(lode_chunk::workingset::MAX_ENTRIES as u64)
            }
        }
    }

    /// What to call it in messages.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Chunk => "chunk",
            ObjectKind::Pointer => "image pointer",
            ObjectKind::Root => "root",
            ObjectKind::Document => "store document",
            ObjectKind::Function => "function document",
            ObjectKind::Event => "queued invocation",
            ObjectKind::Manifest => "manifest",
            ObjectKind::WorkingSet { .. } => "working set",
        }
    }
}

enum Body {
    /// A local file: positioned reads on a blocking thread, never past the
    /// size it had when opened.
    File(Arc<std::fs::File>),
    /// Any other backend: the response body as it arrives.
    Stream(BoxStream<'static, object_store::Result<Bytes>>),
}

/// An open store object whose size is known and within its kind's limit.
pub struct ObjectReader {
    path: String,
    what: &'static str,
    size: u64,
    version: UpdateVersion,
    body: Body,
    /// What has been read so far (the prefix).
    head: BytesMut,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish()
    }
}

impl ObjectReader {
    /// The object's size as the store reported it (within the limit).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The version (ETag) of the object read, for a conditional write that
    /// replaces exactly it.
    pub fn version(&self) -> &UpdateVersion {
        &self.version
    }

    /// Its path in the store.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn wrong_size(&self, sent: u64) -> StoreError {
        StoreError::WrongSize {
            what: self.what,
            path: self.path.clone(),
            size: sent,
            expected: self.size,
            why: "the size the store reported",
        }
    }

    fn backend(&self, source: object_store::Error) -> StoreError {
        StoreError::Backend {
            op: "read",
            path: self.path.clone(),
            source,
        }
    }

    /// Reads until `want` bytes (or the whole object, when smaller) are held.
    async fn fill(&mut self, want: u64) -> Result<()> {
        let want = want.min(self.size);
        let have = self.head.len() as u64;
        if have >= want {
            return Ok(());
        }
        match &mut self.body {
            Body::File(f) => {
                let (f, at, n) = (f.clone(), have, (want - have) as usize);
                let path = self.path.clone();
                let got = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, at).map(|()| buf)
                })
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
                .map_err(|source| StoreError::Io { path, source })?;
                self.head.extend_from_slice(&got);
            }
            Body::Stream(s) => {
                while (self.head.len() as u64) < want {
                    match s.next().await {
                        Some(Ok(b)) => {
                            let total = self.head.len() as u64 + b.len() as u64;
                            if total > self.size {
                                return Err(self.wrong_size(total));
                            }
                            self.head.extend_from_slice(&b);
                        }
                        Some(Err(e)) => return Err(self.backend(e)),
                        None => return Err(self.wrong_size(self.head.len() as u64)),
                    }
                }
            }
        }
        Ok(())
    }

    /// The first `n` bytes (all of them when the object is smaller).
    pub async fn read_prefix(&mut self, n: u64) -> Result<Bytes> {
        self.fill(n).await?;
        let n = n.min(self.head.len() as u64) as usize;
        Ok(Bytes::copy_from_slice(&self.head[..n]))
    }

    /// The whole object: exactly its reported size, never a byte more.
    pub async fn read_all(mut self) -> Result<Bytes> {
        self.head
            .reserve((self.size as usize).saturating_sub(self.head.len()));
        self.fill(self.size).await?;
        if let Body::Stream(s) = &mut self.body {
            // The stream must end where it said it would.
            match s.next().await {
                None => {}
                Some(Ok(b)) if b.is_empty() => {}
                Some(Ok(b)) => return Err(self.wrong_size(self.size + b.len() as u64)),
                Some(Err(e)) => return Err(self.backend(e)),
            }
        }
        Ok(self.head.freeze())
    }
}

impl Store {
    /// Opens the object at `path` for a bounded read: `Ok(None)` if it does
    /// not exist; [`StoreError::TooLarge`] — naming the object, its size and
    /// the limit — if it is larger than objects of `kind` may be. Nothing of
    /// the object is read yet.
    pub async fn open_object(&self, path: &Path, kind: ObjectKind) -> Result<Option<ObjectReader>> {
        let r = match self
            .object_store()
            .get_opts(path, GetOptions::default())
            .await
        {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => {
                return Err(StoreError::Backend {
                    op: "get",
                    path: path.to_string(),
                    source,
                })
            }
        };
        let size = r.range.end.saturating_sub(r.range.start);
        let limit = kind.limit();
        if size > limit {
            tracing::warn!(path = %path, size, limit, kind = kind.label(), "store object over its limit");
            return Err(StoreError::TooLarge {
                what: kind.label(),
                path: path.to_string(),
                size,
                limit,
            });
        }
        let version = UpdateVersion {
            e_tag: r.meta.e_tag.clone(),
            version: r.meta.version.clone(),
        };
        let body = match r.payload {
            GetResultPayload::File(f, _) => Body::File(Arc::new(f)),
            GetResultPayload::Stream(s) => Body::Stream(s),
        };
        Ok(Some(ObjectReader {
            path: path.to_string(),
            what: kind.label(),
            size,
            version,
            body,
            head: BytesMut::new(),
        }))
    }

    /// Reads a whole object of `kind`, bounded by its kind's limit; `Ok(None)`
    /// if it does not exist.
    pub async fn get_opt(&self, path: &Path, kind: ObjectKind) -> Result<Option<Bytes>> {
        match self.open_object(path, kind).await? {
            Some(r) => Ok(Some(r.read_all().await?)),
            None => Ok(None),
        }
    }

    /// [`Store::get_opt`] with the object's version (ETag), for a
    /// conditional write that replaces exactly what was read.
    pub async fn get_versioned(
        &self,
        path: &Path,
        kind: ObjectKind,
    ) -> Result<Option<(Bytes, UpdateVersion)>> {
        match self.open_object(path, kind).await? {
            Some(r) => {
                let v = r.version().clone();
                Ok(Some((r.read_all().await?, v)))
            }
            None => Ok(None),
        }
    }

    /// Reads a manifest object bounded by its own header: the header first
    /// (at most [`MAX_HEADER_LEN`] bytes), then `check` on it — the caller
    /// opens the data key here, before the chunk entries are read — then the
    /// object's size against what the header implies, and only then the
    /// rest. Returns the bytes (unverified against the digest) and what
    /// `check` returned.
    pub(crate) async fn read_manifest_object<T>(
        &self,
        path: &Path,
        digest: &str,
        check: impl FnOnce(&lode_chunk::ManifestHeader) -> Result<T>,
    ) -> Result<Option<(Bytes, T)>> {
        let Some(mut r) = self.open_object(path, ObjectKind::Manifest).await? else {
            return Ok(None);
        };
        let prefix = r.read_prefix(MAX_HEADER_LEN as u64).await?;
        let header = lode_chunk::ManifestHeader::parse(&prefix).map_err(|source| {
            StoreError::CorruptManifest {
                digest: digest.to_string(),
                path: path.to_string(),
                source,
            }
        })?;
        let implied = header.encoded_len();
        if r.size() != implied {
            return Err(StoreError::WrongSize {
                what: "manifest",
                path: path.to_string(),
                size: r.size(),
                expected: implied,
                why: "what its header implies",
            });
        }
        let checked = check(&header)?;
        Ok(Some((r.read_all().await?, checked)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn oversized_objects_are_refused_before_reading() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path().to_str().unwrap()).unwrap();
        let p = Path::from("tenants/t/images/big");
        store
            .object_store()
            .put(&p, vec![b'x'; 5000].into())
            .await
            .unwrap();
        // A sparse 7 GiB file where a pointer should be: refused from its size.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.path().join("tenants/t/images/big"))
            .unwrap();
        f.set_len(7 << 30).unwrap();
        match store.get_opt(&p, ObjectKind::Pointer).await {
            Err(StoreError::TooLarge { size, limit, .. }) => {
                assert_eq!((size, limit), (7 << 30, POINTER_LIMIT))
            }
            other => panic!("{other:?}"),
        }
        let msg = store
            .get_opt(&p, ObjectKind::Chunk)
            .await
            .unwrap_err()
            .to_string();
        assert!(msg.contains("tenants/t/images/big") && msg.contains("7516192768"));
        assert!(msg.contains(&MAX_CHUNK_SIZE.to_string()), "{msg}");
        assert!(store
            .get_opt(&Path::from("nope"), ObjectKind::Root)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn prefix_then_all_on_every_payload_kind() {
        let d = tempfile::tempdir().unwrap();
        for store in [
            Store::open("memory://").unwrap(),
            Store::open(d.path().to_str().unwrap()).unwrap(),
        ] {
            let p = Path::from("a/b");
            let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
            store
                .object_store()
                .put(&p, data.clone().into())
                .await
                .unwrap();
            let mut r = store
                .open_object(&p, ObjectKind::Root)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.size(), 3000);
            assert_eq!(&r.read_prefix(10).await.unwrap()[..], &data[..10]);
            assert_eq!(&r.read_all().await.unwrap()[..], &data[..]);
            let mut r = store
                .open_object(&p, ObjectKind::Root)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.read_prefix(1 << 20).await.unwrap().len(), 3000);
        }
    }
}
