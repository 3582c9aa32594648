//! Conditional writes: the one primitive the store protocol builds on.
//!
//! Image pointers, root documents, the GC lease and intent fences are only
//! ever replaced by a write that names the version it replaces (S3
//! `If-Match`, `If-None-Match: *`; the local store's [`crate::local`] lock;
//! the in-memory store natively). Two writers that read the same version
//! cannot both win: the loser sees `Ok(false)` and re-reads.

use crate::bounded::ObjectKind;
use crate::error::{Result, StoreError};
use crate::store::Store;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use std::sync::atomic::{AtomicBool, Ordering};

/// What a conditional write expects to replace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Nothing: the object must not exist.
    Absent,
    /// The object exactly as last read (its ETag and version).
    Version(UpdateVersion),
}

impl Expect {
    /// `Absent` for `None`, else the version read.
    pub fn from_read(v: Option<&UpdateVersion>) -> Expect {
        v.map_or(Expect::Absent, |v| Expect::Version(v.clone()))
    }
}

static WARNED: AtomicBool = AtomicBool::new(false);

impl Store {
    /// Writes `bytes` at `path` only if the object is as `expect` says.
    /// `Ok(true)`: written; `Ok(false)`: another writer changed it first.
    ///
    /// Idempotent under retries: when the condition fails but the object
    /// now holds exactly `bytes`, an earlier attempt of this same write
    /// landed and only its answer was lost, so the result is `Ok(true)`
    /// (every conditional document lode writes is unique: it carries a
    /// fresh seal, time or fence number).
    ///
    /// On a backend without conditional writes this falls back to
    /// read-compare-write, which is not atomic, and warns once.
    pub async fn put_if(&self, path: &Path, bytes: Bytes, expect: &Expect) -> Result<bool> {
        Ok(self.put_cond(path, bytes, expect).await?.is_some())
    }

    /// [`Store::put_if`] that also returns the new version of the object
    /// (`None`: the condition failed).
    pub async fn put_cond(
        &self,
        path: &Path,
        bytes: Bytes,
        expect: &Expect,
    ) -> Result<Option<UpdateVersion>> {
        let mode = match expect {
            Expect::Absent => PutMode::Create,
            Expect::Version(v) => PutMode::Update(v.clone()),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .object_store()
            .put_opts(path, PutPayload::from(bytes.clone()), opts)
            .await
        {
            Ok(r) => Ok(Some(r.into())),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(self
                .get_versioned(path, ObjectKind::Document)
                .await?
                .filter(|(b, _)| *b == bytes)
                .map(|(_, v)| v)),
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. }) => {
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(store = %self.url(), "the store has no conditional writes: concurrent writers of one pointer or root are not serialized");
                }
                let now = self.get_versioned(path, ObjectKind::Document).await?;
                let matches = match (expect, &now) {
                    (Expect::Absent, None) => true,
                    (Expect::Version(v), Some((_, cur))) => v.e_tag == cur.e_tag,
                    _ => false,
                };
                if !matches {
                    return Ok(None);
                }
                self.put(path, bytes).await?;
                Ok(self
                    .get_versioned(path, ObjectKind::Document)
                    .await?
                    .map(|(_, v)| v))
            }
            Err(source) => Err(StoreError::Backend {
                op: "conditional put",
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Deletes an object; a missing object is not an error (deletes are
    /// retried, and another collector may have been first).
    pub async fn delete(&self, path: &Path) -> Result<()> {
        match self.object_store().delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StoreError::Backend {
                op: "delete",
                path: path.to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_one_of_two_writers_of_a_version_wins() {
        let s = Store::open("memory://").unwrap();
        let p = Path::from("x/doc");
        assert!(s.put_if(&p, "a".into(), &Expect::Absent).await.unwrap());
        assert!(!s.put_if(&p, "b".into(), &Expect::Absent).await.unwrap());
        // A retried create of the same bytes is a success.
        assert!(s.put_if(&p, "a".into(), &Expect::Absent).await.unwrap());
        let (_, v) = s
            .get_versioned(&p, ObjectKind::Document)
            .await
            .unwrap()
            .unwrap();
        let e = Expect::Version(v);
        assert!(s.put_if(&p, "c".into(), &e).await.unwrap());
        assert!(
            !s.put_if(&p, "d".into(), &e).await.unwrap(),
            "stale version"
        );
        assert_eq!(
            s.get_opt(&p, ObjectKind::Document).await.unwrap().unwrap(),
            "c"
        );
        s.delete(&p).await.unwrap();
        s.delete(&p).await.unwrap();
        assert!(!s.put_if(&p, "e".into(), &e).await.unwrap(), "gone");
    }
}
