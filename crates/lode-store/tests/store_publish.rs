//! A push that began before its root retired never publishes into it: the
//! root is rotated while the push uploads its chunks (the push notices when
//! it checks the root) and while its pointer write is in flight (the
//! retirement's fence makes that write fail); both times the push moves to
//! the new root, re-encrypts there and publishes there.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use async_trait::async_trait;
use futures::stream::BoxStream;
use lode_chunk::{KeyProvider, Keyring};
use lode_store::{push_file, PushOptions, Store};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// An in-memory store that holds the first PUT whose path contains `at`
/// until released.
#[derive(Debug)]
struct Hold {
    inner: InMemory,
    at: &'static str,
    armed: AtomicBool,
    held: Notify,
    release: Notify,
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

#[async_trait]
impl ObjectStore for Hold {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if location.as_ref().contains(self.at) && self.armed.swap(false, Ordering::SeqCst) {
            self.held.notify_one();
            self.release.notified().await;
        }
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

async fn rotated_during(at: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn KeyProvider> = Arc::new(Keyring::new(dir.path().join("keys")));
    let hold = Arc::new(Hold {
        inner: InMemory::new(),
        at,
        armed: AtomicBool::new(false),
        held: Notify::new(),
        release: Notify::new(),
    });
    let store = Store::from_object_store(hold.clone(), "memory://held");
    let first = store.active_root(keys.as_ref()).await.unwrap();
    let img = dir.path().join("img");
    std::fs::write(
        &img,
        (0..3 * 4096 + 5)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let opts = PushOptions {
        chunk_size: 4096,
        concurrency: 1,
        ..PushOptions::default()
    };
    hold.armed.store(true, Ordering::SeqCst);
    let push = {
        let (store, keys, img) = (store.clone(), keys.clone(), img.clone());
        tokio::spawn(async move { push_file(&store, keys, &img, "t", "app", &opts).await })
    };
    hold.held.notified().await;
    // The push is stuck mid-way in the first root: rotate under it.
    let (second, retired) = store.rotate_root(keys.as_ref()).await.unwrap();
    assert_eq!(retired[0].id, first.id);
    hold.release.notify_one();
    let report = push.await.unwrap().unwrap();
    assert_eq!(report.root, second.id, "{at}: published into the new root");
    assert_eq!(report.retargets, 1, "{at}");
    let img = lode_store::open_image(&store, keys.as_ref(), "t", "app")
        .await
        .unwrap();
    assert_eq!(img.manifest.root, second.id, "{at}");
    assert_eq!(img.manifest.binding.unwrap().version, 1, "{at}");
    let first_now = store.root(&first.id).await.unwrap();
    assert_eq!(first_now.state, lode_store::RootState::Retired);
    // Nothing points into the retired root, and its intents are gone.
    assert!(store
        .list_all(&format!("roots/{}/intents", first.id))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn root_retired_while_chunks_upload() {
    rotated_during("/chunks/").await;
}

#[tokio::test]
async fn root_retired_while_the_pointer_write_is_in_flight() {
    rotated_during("/images/").await;
}
