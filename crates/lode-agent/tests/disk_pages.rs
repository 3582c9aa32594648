//! The disk tier on the read path: 4 KiB reads served from authenticated
//! page files, and every kind of tampering with those files (page data, a
//! page tag, the header, pages swapped between files, files swapped between
//! names, truncation, another host key) refused, counted, and answered with
//! the right bytes from the store instead.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use lode_agent::{ChunkReader, ImageHandle};
use lode_cache::disk::file_path;
use lode_cache::pagefile::{data_offset, tag_offset, HEADER_LEN, PAGE_SIZE, TAG_LEN};
use lode_cache::{DiskCache, HostKey};
use lode_chunk::{seal_chunk, ChunkName, KeyTable, Manifest, Salt};
use lode_store::OpenedImage;
use lode_tier::ChunkTier;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CHUNK: usize = 512 << 10;
const CHUNKS: usize = 3;

struct Fixture {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    store: lode_store::Store,
    image: OpenedImage,
    data: Vec<u8>,
}

impl Fixture {
    /// A 3-chunk image (the last chunk short) in an in-memory store.
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let size = CHUNK * (CHUNKS - 1) + 100_000;
        // Incompressible, so each chunk is stored raw and decrypts in full.
        let mut x = 0x9e3779b97f4a7c15u64;
        let data: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let store = lode_store::Store::open("memory://").unwrap();
        let (mut names, mut secrets) = (Vec::new(), Vec::new());
        for c in data.chunks(CHUNK) {
            let s = seal_chunk(&Salt([7; 32]), c);
            store
                .put_chunk("r", &s.name, s.ciphertext.clone().into())
                .await
                .unwrap();
            names.push(Some(s.name));
            secrets.push(Some(s.secret));
        }
        let manifest = Manifest {
            format: lode_chunk::manifest::VERSION,
            tenant: "t".into(),
            binding: None,
            image_size: size as u64,
            chunk_size: CHUNK as u32,
            root: "r".into(),
            wrapped_key: Vec::new(),
            nonce: [0; 12],
            names,
            sealed: Vec::new(),
        };
        let image = OpenedImage {
            digest: "sha256:00".into(),
            manifest,
            keys: KeyTable(secrets),
        };
        Fixture {
            cache: dir.path().join("cache"),
            _dir: dir,
            store,
            image,
            data,
        }
    }

    /// A reader with no memory tier (every read reaches the disk tier) and
    /// a disk tier sealed under `key`.
    fn handle(&self, key: u8) -> ImageHandle {
        let tier: Arc<dyn ChunkTier> = Arc::new(self.store.clone());
        let disk = DiskCache::open(&self.cache, 1 << 30, HostKey::from_secret(&[key; 32])).unwrap();
        let reader = Arc::new(ChunkReader::new(0, Some(disk), vec![tier]));
        ImageHandle::new("t/x".into(), self.image.clone(), reader)
    }

    fn name(&self, i: usize) -> ChunkName {
        self.image.manifest.names[i].unwrap()
    }

    fn file(&self, i: usize, key: u8) -> PathBuf {
        let sha = self.image.keys.0[i].unwrap().plain_sha;
        file_path(
            &self.cache,
            &HostKey::from_secret(&[key; 32]),
            &self.name(i),
            &sha,
        )
    }
}

async fn read(h: &ImageHandle, off: usize, len: usize) -> Bytes {
    h.read(h.range(off as u64, len as u64).unwrap())
        .await
        .unwrap()
}

fn store_fetches(h: &ImageHandle) -> u64 {
    h.reader().fetched_from(0).0
}

fn metric(h: &ImageHandle, name: &str) -> f64 {
    let mut s = String::new();
    h.reader().render_metrics(&mut s);
    s.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {s}"))
}

const CORRUPT: &str = "lode_cache_corrupt_discarded_total{tier=\"disk\"}";

/// Reads every chunk once (fills the disk tier) and waits for the writes.
async fn warm(h: &ImageHandle, f: &Fixture) {
    let all = read(h, 0, f.data.len()).await;
    assert_eq!(&all[..], &f.data[..]);
    h.reader().settle().await;
}

fn swap(b: &mut [u8], x: usize, y: usize, n: usize) {
    let tmp = b[x..x + n].to_vec();
    b.copy_within(y..y + n, x);
    b[y..y + n].copy_from_slice(&tmp);
}

fn edit(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    change(&mut b);
    std::fs::write(path, b).unwrap();
}

#[tokio::test]
async fn page_reads_are_served_from_disk_and_survive_restart() {
    let f = Fixture::new().await;
    let h = f.handle(1);
    warm(&h, &f).await;
    assert_eq!(store_fetches(&h), CHUNKS as u64);
    // 4 KiB reads, unaligned reads, reads across a chunk boundary, the
    // short last chunk: all from disk.
    for (off, len) in [
        (0, 4096),
        (CHUNK - 4096, 4096),
        (5 * PAGE_SIZE + 13, 10_000),
        (CHUNK - 100, 300),
        (f.data.len() - 4096, 4096),
        (f.data.len() - 1, 1),
    ] {
        assert_eq!(
            &read(&h, off, len).await[..],
            &f.data[off..off + len],
            "{off}+{len}"
        );
    }
    assert_eq!(store_fetches(&h), CHUNKS as u64);
    assert_eq!(metric(&h, CORRUPT), 0.0);
    drop(h);
    // A new process (same cache dir, same host key) finds the pages again.
    let h = f.handle(1);
    assert_eq!(
        &read(&h, CHUNK + 8192, 4096).await[..],
        &f.data[CHUNK + 8192..CHUNK + 12288]
    );
    assert_eq!(store_fetches(&h), 0);
    assert!(metric(&h, "lode_tier_hits_total{tier=\"disk\"}") >= 1.0);
    // Another host key: the files are dropped at start, reads go to the store.
    drop(h);
    let h = f.handle(2);
    assert_eq!(metric(&h, "lode_cache_chunks{tier=\"disk\"}"), 0.0);
    assert_eq!(&read(&h, 4096, 4096).await[..], &f.data[4096..8192]);
    assert_eq!(store_fetches(&h), 1);
}

/// Each tampering, on a warm cache: the read touching the damage returns
/// the right bytes (from the store), the file is refused, deleted and
/// counted, and the chunk is written back afterwards.
#[tokio::test]
async fn tampered_page_files_are_refused_never_served() {
    let f = Fixture::new().await;
    let h = f.handle(1);
    warm(&h, &f).await;
    let page = 37;
    let at = page * PAGE_SIZE;
    // Chunk 0 is a whole chunk: its pages start at the same offset as chunk 1's.
    let data = data_offset(CHUNK) as usize + page * PAGE_SIZE;
    let tag = tag_offset(page) as usize;
    type Tamper = Box<dyn Fn(&Fixture)>;
    let cases: Vec<(&str, Tamper)> = vec![
        (
            "page data",
            Box::new(move |f| edit(&f.file(0, 1), |b| b[data + 100] ^= 1)),
        ),
        (
            "page tag",
            Box::new(move |f| edit(&f.file(0, 1), |b| b[tag + 3] ^= 0x80)),
        ),
        ("header", Box::new(|f| edit(&f.file(0, 1), |b| b[20] ^= 1))),
        (
            "header tag",
            Box::new(|f| edit(&f.file(0, 1), |b| b[HEADER_LEN - 1] ^= 1)),
        ),
        (
            "page and tag of another chunk's file at the same position",
            Box::new(move |f| {
                let other = std::fs::read(f.file(1, 1)).unwrap();
                edit(&f.file(0, 1), |b| {
                    b[data..data + PAGE_SIZE].copy_from_slice(&other[data..data + PAGE_SIZE]);
                    b[tag..tag + TAG_LEN].copy_from_slice(&other[tag..tag + TAG_LEN]);
                })
            }),
        ),
        (
            "two pages swapped inside the file, with their tags",
            Box::new(move |f| {
                edit(&f.file(0, 1), |b| {
                    swap(b, data, data + PAGE_SIZE, PAGE_SIZE);
                    swap(b, tag, tag + TAG_LEN, TAG_LEN);
                })
            }),
        ),
        (
            "another chunk's whole file under this name",
            Box::new(|f| {
                std::fs::copy(f.file(1, 1), f.file(0, 1)).unwrap();
            }),
        ),
        (
            "truncated by one byte",
            Box::new(|f| edit(&f.file(0, 1), |b| b.truncate(b.len() - 1))),
        ),
        (
            "truncated to the header",
            Box::new(|f| edit(&f.file(0, 1), |b| b.truncate(HEADER_LEN))),
        ),
    ];
    for (i, (what, tamper)) in cases.iter().enumerate() {
        assert!(f.file(0, 1).exists(), "{what}: chunk 0 not on disk before");
        tamper(&f);
        let fetched = store_fetches(&h);
        assert_eq!(
            &read(&h, at, 4096).await[..],
            &f.data[at..at + 4096],
            "{what}"
        );
        assert_eq!(
            metric(&h, CORRUPT),
            (i + 1) as f64,
            "{what}: refusals counted"
        );
        assert_eq!(
            store_fetches(&h),
            fetched + 1,
            "{what}: fell back to the store"
        );
        // Written back from the verified store copy, then served from disk.
        h.reader().settle().await;
        assert_eq!(
            &read(&h, at, 4096).await[..],
            &f.data[at..at + 4096],
            "{what}: after refill"
        );
        assert_eq!(
            store_fetches(&h),
            fetched + 1,
            "{what}: refilled file served"
        );
    }
    // Untouched chunks were never refused.
    assert_eq!(
        &read(&h, CHUNK, 4096).await[..],
        &f.data[CHUNK..CHUNK + 4096]
    );
    assert_eq!(metric(&h, CORRUPT), cases.len() as f64);
}
