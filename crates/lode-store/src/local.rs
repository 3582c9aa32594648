//! The local-directory backend, with conditional updates.
//!
//! `object_store`'s [`LocalFileSystem`] creates objects atomically
//! (`PutMode::Create`, by hard link) but has no `PutMode::Update`. lode's
//! protocol needs it for image pointers, root documents and the GC lease, so
//! [`LocalStore`] adds it: an update takes an exclusive `flock` on
//! `<dir>/.lode-cas.lock`, compares the object's current ETag with the one
//! expected, and only then replaces it (temp file + rename, as every write).
//! Every process on the host that writes through lode takes the same lock,
//! so two updates of one version cannot both succeed. Everything else is
//! delegated unchanged.

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use std::fmt;
use std::path::PathBuf;

/// A local directory as an object store, with conditional updates.
#[derive(Debug)]
pub struct LocalStore {
    inner: LocalFileSystem,
    lock: PathBuf,
}

impl LocalStore {
    /// The store in `dir` (which exists).
    pub fn new(dir: &std::path::Path) -> Result<LocalStore> {
        Ok(LocalStore {
            // Deleting an object also removes directories it leaves empty.
            inner: LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true),
            lock: dir.join(".lode-cas.lock"),
        })
    }

    /// Takes the directory's update lock (released when the file is dropped).
    async fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>> {
        let path = self.lock.clone();
        let generic = |e: String| object_store::Error::Generic {
            store: "LocalStore",
            source: e.into(),
        };
        tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| format!("flock {}: {e}", path.display()))
        })
        .await
        .map_err(|e| generic(e.to_string()))?
        .map_err(generic)
    }
}

/// Removes staging files (`NAME#N`, the temporary files of writes in
/// progress) older than `older_than` under `dir`: what writers killed in the
/// middle of a write leave behind, invisible to listings. Returns how many.
pub fn sweep_staging(dir: &std::path::Path, older_than: std::time::Duration) -> usize {
    fn walk(d: &std::path::Path, older_than: std::time::Duration, n: &mut usize) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(&p, older_than, n);
                continue;
            }
            let name = e.file_name();
            let staging = name
                .to_str()
                .and_then(|s| s.rsplit_once('#'))
                .is_some_and(|(_, k)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= older_than);
            if staging && old && std::fs::remove_file(&p).is_ok() {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(dir, older_than, &mut n);
    n
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let PutMode::Update(expected) = &opts.mode else {
            return self.inner.put_opts(location, payload, opts).await;
        };
        let _guard = self.lock().await?;
        let current = match self.inner.head(location).await {
            Ok(m) => m.e_tag,
            Err(object_store::Error::NotFound { path, source }) => {
                return Err(object_store::Error::Precondition { path, source })
            }
            Err(e) => return Err(e),
        };
        if current.is_none() || current != expected.e_tag {
            return Err(object_store::Error::Precondition {
                path: location.to_string(),
                source: format!("ETag {current:?} is not the expected {:?}", expected.e_tag).into(),
            });
        }
        let opts = PutOptions {
            mode: PutMode::Overwrite,
            ..opts
        };
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::UpdateVersion;

    #[tokio::test]
    async fn updates_are_conditional() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path()).unwrap();
        let p = Path::from("a/b");
        let r = s.put(&p, "one".into()).await.unwrap();
        let v1 = UpdateVersion::from(r);
        let upd = |v: UpdateVersion| PutOptions {
            mode: PutMode::Update(v),
            ..Default::default()
        };
        let r2 = s.put_opts(&p, "two".into(), upd(v1.clone())).await.unwrap();
        assert!(matches!(
            s.put_opts(&p, "three".into(), upd(v1)).await,
            Err(object_store::Error::Precondition { .. })
        ));
        let got = s.get(&p).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"two");
        assert!(s
            .put_opts(&p, "four".into(), upd(UpdateVersion::from(r2)))
            .await
            .is_ok());
        let missing = UpdateVersion {
            e_tag: Some("x".into()),
            version: None,
        };
        assert!(matches!(
            s.put_opts(&Path::from("nope"), "x".into(), upd(missing))
                .await,
            Err(object_store::Error::Precondition { .. })
        ));
    }

    #[test]
    fn stale_staging_files_are_swept() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        for f in ["a/b/obj#1", "a/obj#22", "a/b/obj", "a/b/x#y"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        assert_eq!(
            sweep_staging(d.path(), std::time::Duration::from_secs(3600)),
            0
        );
        assert_eq!(sweep_staging(d.path(), std::time::Duration::ZERO), 2);
        assert!(d.path().join("a/b/obj").exists() && d.path().join("a/b/x#y").exists());
    }

    #[tokio::test]
    async fn concurrent_updaters_of_one_version_one_wins() {
        let d = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(LocalStore::new(d.path()).unwrap());
        let p = Path::from("ptr");
        let v = UpdateVersion::from(s.put(&p, "base".into()).await.unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (s, p, v) = (s.clone(), p.clone(), v.clone());
                tokio::spawn(async move {
                    let o = PutOptions {
                        mode: PutMode::Update(v),
                        ..Default::default()
                    };
                    s.put_opts(&p, format!("w{i}").into(), o).await.is_ok()
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.unwrap());
        }
        assert_eq!(wins, 1);
    }
}
