//! The read log on the real read path: demand reads of stored chunks are
//! remembered by manifest digest (distinct chunk names; prefetch and holes
//! are not), every handle of one digest shares one set, the set outlives
//! the handles, and `read_images` counts what the caches hold now.
#![allow(clippy::unwrap_used, missing_docs)]

use lode_agent::reads::ImageInfo;
use lode_agent::{ChunkReader, Exports, ImageHandle, Prefetch};
use lode_chunk::KeyProvider;
use lode_store::Store;
use lode_tier::ChunkTier;
use std::sync::Arc;
use std::time::Duration;

const CHUNK: usize = 512 << 10;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    keys: Arc<dyn KeyProvider>,
}

/// An 8-chunk image `t/img`: chunks 2 and 5 all zeros (holes), chunk 6 a
/// copy of chunk 0 (the same stored chunk), the rest distinct.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open("memory://").unwrap();
    let keys: Arc<dyn KeyProvider> = Arc::new(lode_chunk::Keyring::new(dir.path().join("k")));
    let mut data = vec![0u8; 8 * CHUNK];
    for (c, chunk) in data.chunks_mut(CHUNK).enumerate() {
        let seed = match c {
            2 | 5 => continue,
            6 => 0,
            c => c,
        };
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = ((i / 4096 + seed * 31) % 251) as u8 + 1;
        }
    }
    let img = dir.path().join("img");
    std::fs::write(&img, &data).unwrap();
    lode_store::push_file(&store, keys.clone(), &img, "t", "img", &Default::default())
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        store,
        keys,
    }
}

fn exports(f: &Fixture, memory: u64, prefetch: Prefetch) -> Arc<Exports> {
    let tier: Arc<dyn ChunkTier> = Arc::new(f.store.clone());
    let reader = Arc::new(ChunkReader::new(memory, None, vec![tier]));
    Arc::new(Exports::new(f.store.clone(), f.keys.clone(), reader).with_policy(prefetch, false))
}

async fn read_chunk(h: &ImageHandle, i: usize) {
    h.read(h.range((i * CHUNK) as u64 + 100, 4096).unwrap())
        .await
        .unwrap();
}

fn only(e: &Exports) -> ImageInfo {
    let mut all = e.read_images();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_reads_of_stored_chunks_are_remembered_by_digest() {
    let f = fixture().await;
    let e = exports(&f, 64 << 20, Prefetch::All);
    let (_, h) = e.open("t/img").await.unwrap();
    let digest = h.image.digest.clone();
    // A client attaches: the whole image is prefetched, none of it counted.
    e.activate(&h).await;
    let t = std::time::Instant::now();
    while h.reader().fetched_from(0).0 < 5 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "prefetch did not run"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let info = only(&e);
    assert_eq!(info.digest, digest);
    assert_eq!((info.tenant.as_str(), info.image.as_str()), ("t", "img"));
    assert_eq!(info.read_chunks, 0, "prefetch was counted");
    // A prefetch of one chunk through the handle: not counted either.
    h.prefetch_chunk(1).await.unwrap();
    assert_eq!(e.read_log().read_chunks(&digest), Some(0));

    // Demand reads: chunk 0, the hole 2, chunks 3 and 4 in one read across
    // their border, chunk 0 again, chunk 6 (chunk 0's copy).
    read_chunk(&h, 0).await;
    read_chunk(&h, 2).await;
    h.read(h.range((5 * CHUNK - 2048) as u64, 4096).unwrap())
        .await
        .unwrap();
    h.read(h.range((4 * CHUNK - 2048) as u64, 4096).unwrap())
        .await
        .unwrap();
    read_chunk(&h, 0).await;
    read_chunk(&h, 6).await;
    let info = only(&e);
    assert_eq!(
        (info.read_chunks, info.resident_chunks),
        (3, 3),
        "chunks 0, 3 and 4 (chunk 6 is chunk 0, 2 and 5 are holes)"
    );

    // The handle goes (its last volume detached): the set stays, and a new
    // handle of the same digest adds to it.
    drop(h);
    // The prefetch task lets go of its clone of the handle on its own time.
    let t = std::time::Instant::now();
    while e.open_images() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the handle stayed open"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, h2) = e.open("t/img").await.unwrap();
    read_chunk(&h2, 1).await;
    read_chunk(&h2, 3).await;
    let info = only(&e);
    assert_eq!((info.read_chunks, info.resident_chunks), (4, 4));
}

/// Two handles of one digest share one set: it is keyed by the manifest
/// digest, not by the handle (through `Exports` the volumes of one digest
/// also share one handle while any is open).
#[tokio::test]
async fn handles_of_one_digest_share_one_set() {
    let f = fixture().await;
    let e = exports(&f, 64 << 20, Prefetch::None);
    let (_, h) = e.open("t/img").await.unwrap();
    let other = ImageHandle::new(h.export.clone(), h.image.clone(), h.reader().clone())
        .with_reads(e.read_log().clone());
    read_chunk(&h, 0).await;
    read_chunk(&other, 0).await;
    read_chunk(&other, 1).await;
    read_chunk(&h, 7).await;
    assert_eq!(e.read_log().len(), 1);
    assert_eq!(only(&e).read_chunks, 3);
}

/// `resident_chunks` is checked against the cache when asked: a memory
/// cache of two chunks cannot hold the four chunks read.
#[tokio::test]
async fn resident_counts_what_the_cache_holds_now() {
    let f = fixture().await;
    let e = exports(&f, 2 * CHUNK as u64, Prefetch::None);
    let (_, h) = e.open("t/img").await.unwrap();
    read_chunk(&h, 0).await;
    let info = only(&e);
    assert_eq!((info.read_chunks, info.resident_chunks), (1, 1));
    for i in [1, 3, 4, 7] {
        read_chunk(&h, i).await;
    }
    let info = only(&e);
    assert_eq!(info.read_chunks, 5);
    assert!(info.resident_chunks <= 2, "{info:?}");
}

/// A digest dropped from the log while its image is still open comes back
/// whole: its handle gives the log its chunks again, not only new ones.
#[tokio::test]
async fn a_dropped_digest_is_filled_again_by_its_open_handle() {
    let f = fixture().await;
    let e = exports(&f, 64 << 20, Prefetch::None);
    let (_, h) = e.open("t/img").await.unwrap();
    let digest = h.image.digest.clone();
    read_chunk(&h, 0).await;
    read_chunk(&h, 1).await;
    for n in 0..lode_agent::reads::DIGESTS_KEPT {
        e.read_log().touch(&lode_agent::reads::ImageId {
            digest: format!("sha256:{n:064x}"),
            tenant: "u".into(),
            image: format!("i{n}"),
            chunks: 1,
        });
    }
    assert_eq!(e.read_log().read_chunks(&digest), None, "not dropped");
    read_chunk(&h, 3).await;
    assert_eq!(e.read_log().read_chunks(&digest), Some(1));
    read_chunk(&h, 0).await;
    read_chunk(&h, 1).await;
    assert_eq!(e.read_log().read_chunks(&digest), Some(3));
    assert_eq!(e.read_log().len(), lode_agent::reads::DIGESTS_KEPT);
}
