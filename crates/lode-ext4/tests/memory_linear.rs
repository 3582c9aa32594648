//! Ingest memory is linear in the entries, whatever the tree's shape: a
//! counting allocator measures the heap the writer holds at its peak while
//! random trees — deep chains (thousands of levels), wide directories,
//! whiteouts and opaque markers in an upper layer — are built, and the peak
//! must stay within a fixed allowance plus a constant per entry and per
//! name byte. The full path of every entry kept per entry (as the writer
//! once did to refuse duplicates) is quadratic in the depth and fails this.
#![allow(unsafe_code, clippy::unwrap_used, missing_docs)]

use lode_ext4::{Builder, Meta, Options};
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) };
        IN_USE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = IN_USE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                IN_USE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One step of a random walk through a tree.
#[derive(Clone, Debug)]
enum Step {
    /// A new directory in the current one, entered.
    Down(u8),
    /// Back up `n` levels.
    Up(u16),
    /// A file in the current directory.
    File(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u8..40).prop_map(Step::Down),
        1 => (1u16..2000).prop_map(Step::Up),
        3 => (1u8..40).prop_map(Step::File),
    ]
}

/// A name of `len` bytes, unique by `i`.
fn name(i: usize, len: u8) -> Vec<u8> {
    let mut n = format!("{i:x}-").into_bytes();
    n.resize(n.len().max(usize::from(len)), b'n');
    n
}

/// Builds the walk under `/a` as layer 0 and, in layer 1, whites `/a` out
/// (the whole tree is pruned), marks `/b` opaque and repeats the walk
/// under it. Returns (peak heap bytes above the start, entries, name
/// bytes, deepest path).
/// One ingest at a time: the allocator's count is process-wide, so two
/// tests ingesting on parallel threads would count each other's heap (a
/// 148-entry tree once "peaked" at 17 MB beside the 5,000-deep chain).
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ingest(steps: &[Step]) -> (usize, usize, usize, usize) {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("img")).unwrap();
    let before = IN_USE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut b = Builder::new(file, Options::default());
    let (mut entries, mut name_bytes, mut deepest) = (0usize, 0usize, 0usize);
    for (layer, top) in [(0, b"a".to_vec()), (1, b"b".to_vec())] {
        b.begin_layer().unwrap();
        if layer == 1 {
            b.whiteout(&[], b"a").unwrap();
            b.opaque(std::slice::from_ref(&top)).unwrap();
        }
        let mut path: Vec<Vec<u8>> = vec![top.clone()];
        b.add_dir(&path, Meta::implied_dir()).unwrap();
        for (i, s) in steps.iter().enumerate() {
            match s {
                Step::Down(len) => {
                    path.push(name(i, *len));
                    b.add_dir(&path, Meta::implied_dir()).unwrap();
                }
                Step::Up(n) => {
                    let keep = path.len().saturating_sub(usize::from(*n)).max(1);
                    path.truncate(keep);
                    continue;
                }
                Step::File(len) => {
                    path.push(name(i, *len));
                    b.add_file(&path, Meta::default(), 0, &mut &b""[..])
                        .unwrap();
                    path.pop();
                }
            }
            entries += 1;
            name_bytes += path.last().map_or(0, Vec::len);
            deepest = deepest.max(path.len());
        }
        b.end_layer().unwrap();
    }
    let peak = PEAK.load(Ordering::Relaxed) - before;
    drop(b);
    (peak, entries, name_bytes, deepest)
}

/// What the writer may hold: its fixed buffers (8 MiB of pending data,
/// 1 MiB of read buffer) and slack; per entry a node (264 bytes, up to three
/// times while the arena grows), a directory's B-tree leaf, its name and its
/// duplicate-check entry (2 KiB is ample); and the one path being added.
fn allowance(entries: usize, name_bytes: usize, deepest: usize) -> usize {
    (12 << 20) + 2048 * entries + 8 * name_bytes + 128 * deepest
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn peak_memory_is_linear_in_entries(steps in proptest::collection::vec(step(), 1..4000)) {
        let (peak, entries, name_bytes, deepest) = ingest(&steps);
        prop_assert!(
            peak <= allowance(entries, name_bytes, deepest),
            "peak {peak} bytes for {entries} entries, {name_bytes} name bytes, depth {deepest}"
        );
    }
}

/// The shape that was quadratic: one chain 5,000 directories deep (twice,
/// in two layers, the first whited out). Full paths per entry would take
/// about 12.5 million components here.
#[test]
fn a_deep_chain_stays_within_the_allowance() {
    let steps = vec![Step::Down(1); 5000];
    let (peak, entries, name_bytes, deepest) = ingest(&steps);
    eprintln!("5,000 deep: peak {} KiB for {entries} entries", peak >> 10);
    assert!(peak <= allowance(entries, name_bytes, deepest), "{peak}");
}
