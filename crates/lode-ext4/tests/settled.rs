//! What the builder calls settled never changes again: a chunk's bytes read
//! the moment [`Builder::is_settled`] first says so equal the finished
//! image's (the contract that lets `lode push` upload chunks while the image
//! is still being written).
#![allow(clippy::unwrap_used)]

mod common;

use common::meta;
use lode_ext4::{Builder, Options};
use proptest::prelude::*;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;

const CHUNK: u64 = 512 * 1024;

#[derive(Clone, Debug)]
enum Op {
    /// A file in directory `dir` (0..4) with `blocks` 4 KiB blocks of data.
    File {
        dir: u8,
        name: u8,
        blocks: u16,
        seed: u8,
    },
    /// A symlink whose target is long enough for a block of its own.
    LongLink { dir: u8, name: u8 },
    /// Removes `dir/name` (a whiteout).
    Remove { dir: u8, name: u8 },
    /// Ends the layer and starts the next one.
    NextLayer,
    /// Ends the layer and starts the next one in the same section.
    PackedLayer,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 0u8..40, 0u16..700, any::<u8>())
            .prop_map(|(dir, name, blocks, seed)| Op::File { dir, name, blocks, seed }),
        1 => (0u8..4, 0u8..40).prop_map(|(dir, name)| Op::LongLink { dir, name }),
        1 => (0u8..4, 0u8..40).prop_map(|(dir, name)| Op::Remove { dir, name }),
        1 => Just(Op::NextLayer),
        1 => Just(Op::PackedLayer),
    ]
}

/// Records each chunk's bytes when it first becomes settled.
struct Watch {
    file: std::fs::File,
    snapshots: HashMap<u64, Vec<u8>>,
}

impl Watch {
    fn look(&mut self, b: &Builder) {
        let end = b.settled_below() / CHUNK;
        for c in 0..end {
            let range = c * CHUNK..(c + 1) * CHUNK;
            if self.snapshots.contains_key(&c) {
                assert!(b.is_settled(range), "chunk {c} stopped being settled");
            } else if b.is_settled(range) {
                let mut buf = vec![0u8; CHUNK as usize];
                let n = self.file.read_at(&mut buf, c * CHUNK).unwrap();
                buf[n..].fill(0);
                self.snapshots.insert(c, buf);
            }
        }
    }
}

fn run(ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    let out = std::fs::File::create(&path).unwrap();
    let mut w = Watch {
        file: std::fs::File::open(&path).unwrap(),
        snapshots: HashMap::new(),
    };
    let mut b = Builder::new(out, Options::default());
    b.begin_layer().unwrap();
    b.add_dir(&[], meta(0o755)).unwrap();
    for d in 0..4u8 {
        b.add_dir(&[vec![b'd', b'0' + d]], meta(0o755)).unwrap();
    }
    // Names added in the current layer (a second add is a duplicate).
    let mut layer_names: std::collections::HashSet<Vec<Vec<u8>>> = Default::default();
    for op in ops {
        match op {
            Op::File {
                dir,
                name,
                blocks,
                seed,
            } => {
                let path = vec![vec![b'd', b'0' + dir], format!("f{name}").into_bytes()];
                if !layer_names.insert(path.clone()) {
                    continue;
                }
                let mut data = vec![0u8; *blocks as usize * 4096];
                for (i, x) in data.iter_mut().enumerate() {
                    *x = (i as u8).wrapping_mul(31).wrapping_add(*seed) | 1;
                }
                b.add_file(&path, meta(0o755), data.len() as u64, &mut &data[..])
                    .unwrap();
            }
            Op::LongLink { dir, name } => {
                let path = vec![vec![b'd', b'0' + dir], format!("l{name}").into_bytes()];
                if !layer_names.insert(path.clone()) {
                    continue;
                }
                let target = vec![b't'; 100 + *name as usize];
                b.add_symlink(&path, &target, meta(0o755)).unwrap();
            }
            Op::Remove { dir, name } => {
                let path = vec![vec![b'd', b'0' + dir], format!("f{name}").into_bytes()];
                if layer_names.contains(&path) {
                    continue;
                }
                // Removing what no lower layer has is fine for the builder.
                let _ = b.whiteout(&path[..1], &path[1]);
            }
            Op::NextLayer | Op::PackedLayer => {
                b.end_layer().unwrap();
                w.look(&b);
                if matches!(op, Op::PackedLayer) {
                    b.begin_layer_packed().unwrap();
                } else {
                    b.begin_layer().unwrap();
                }
                layer_names.clear();
            }
        }
        w.look(&b);
    }
    b.end_layer().unwrap();
    w.look(&b);
    b.finish().unwrap();
    let fin = std::fs::read(&path).unwrap();
    for (c, bytes) in &w.snapshots {
        let at = (*c * CHUNK) as usize;
        let mut want = fin[at.min(fin.len())..(at + CHUNK as usize).min(fin.len())].to_vec();
        want.resize(CHUNK as usize, 0);
        assert!(
            want == *bytes,
            "chunk {c} changed after it was settled ({} of {} chunks settled early)",
            w.snapshots.len(),
            fin.len() as u64 / CHUNK
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn settled_chunks_never_change(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops);
    }
}

/// One file of 40 MiB settles most of its chunks through the hook before
/// `add_file` returns (every 8 MiB flush tells), and the rest of the image
/// keeps the contract.
#[test]
fn a_big_file_settles_through_the_hook_while_it_is_written() {
    let ops: Vec<Op> = (0..40)
        .map(|i| Op::File {
            dir: (i % 4) as u8,
            name: i as u8,
            blocks: 256,
            seed: i as u8,
        })
        .chain([
            Op::NextLayer,
            Op::File {
                dir: 0,
                name: 1,
                blocks: 10,
                seed: 9,
            },
        ])
        .collect();
    run(&ops);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    let mut b = Builder::new(std::fs::File::create(&path).unwrap(), Options::default());
    let told = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = told.clone();
    b.on_settle(Box::new(move |s| {
        let n = (1..s.below() / CHUNK)
            .filter(|c| s.contains(c * CHUNK..(c + 1) * CHUNK))
            .count() as u64;
        seen.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
    }));
    b.begin_layer().unwrap();
    let data = vec![7u8; 40 << 20];
    b.add_file(
        &[b"big".to_vec()],
        meta(0o755),
        data.len() as u64,
        &mut &data[..],
    )
    .unwrap();
    let during = told.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        during >= 48,
        "only {during} chunks of a 40 MiB file settled while it was written"
    );
    assert!(
        !b.is_settled(0..CHUNK),
        "the header chunk is written at the end"
    );
}
