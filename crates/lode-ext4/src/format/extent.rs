//! Extent trees: how a file's logical blocks map to physical blocks.

use super::put16;
use super::put32;
use crate::layout::BLOCK_SIZE;

/// Magic number of every extent node header.
pub const EXTENT_MAGIC: u16 = 0xF30A;
/// Longest initialized extent, in blocks.
pub const MAX_EXTENT_LEN: u32 = 32768;
/// Entries in the root node kept in the inode's `i_block`.
pub const ROOT_ENTRIES: usize = 4;
/// Entries in a node that fills a block.
pub const BLOCK_ENTRIES: usize = (BLOCK_SIZE as usize - 12) / 12;

/// A run of contiguous blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First logical block in the file.
    pub logical: u32,
    /// First physical block on disk.
    pub physical: u64,
    /// Number of blocks, 1 to `MAX_EXTENT_LEN`.
    pub len: u32,
}

/// An encoded extent tree: the inode's root and the blocks below it.
#[derive(Clone, Debug)]
pub struct ExtentTree {
    /// The 60 bytes for `i_block`.
    pub root: [u8; 60],
    /// Tree blocks, each `(block number, contents)`.
    pub blocks: Vec<(u64, Vec<u8>)>,
}

/// Appends a run to `extents`, merging with the previous extent when contiguous
/// and splitting at `MAX_EXTENT_LEN`.
pub fn push_run(extents: &mut Vec<Extent>, logical: u32, physical: u64, len: u32) {
    let (mut logical, mut physical, mut len) = (logical, physical, len);
    if let Some(last) = extents.last_mut() {
        if last.logical + last.len == logical && last.physical + u64::from(last.len) == physical {
            let take = (MAX_EXTENT_LEN - last.len).min(len);
            last.len += take;
            logical += take;
            physical += u64::from(take);
            len -= take;
        }
    }
    while len > 0 {
        let take = len.min(MAX_EXTENT_LEN);
        extents.push(Extent {
            logical,
            physical,
            len: take,
        });
        logical += take;
        physical += u64::from(take);
        len -= take;
    }
}

/// Number of tree blocks `build` will ask for, for `n` extents.
pub fn tree_blocks_needed(n: usize) -> u64 {
    let mut total = 0;
    let mut level = n;
    while level > ROOT_ENTRIES {
        level = level.div_ceil(BLOCK_ENTRIES);
        total += level as u64;
    }
    total
}

fn header(buf: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(buf, 0, EXTENT_MAGIC);
    put16(buf, 2, entries as u16);
    put16(buf, 4, max as u16);
    put16(buf, 6, depth);
}

fn put_leaf(buf: &mut [u8], off: usize, e: &Extent) {
    put32(buf, off, e.logical);
    put16(buf, off + 4, e.len as u16);
    put16(buf, off + 6, (e.physical >> 32) as u16);
    put32(buf, off + 8, e.physical as u32);
}

fn put_index(buf: &mut [u8], off: usize, logical: u32, child: u64) {
    put32(buf, off, logical);
    put32(buf, off + 4, child as u32);
    put16(buf, off + 8, (child >> 32) as u16);
}

/// Builds the tree for `extents` (sorted by logical block, non-overlapping).
/// `blocks` supplies the physical block of each tree block, in order; it must
/// hold at least `tree_blocks_needed(extents.len())` entries.
pub fn build(extents: &[Extent], blocks: &[u64]) -> ExtentTree {
    let mut root = [0u8; 60];
    if extents.len() <= ROOT_ENTRIES {
        header(&mut root, extents.len(), ROOT_ENTRIES, 0);
        for (i, e) in extents.iter().enumerate() {
            put_leaf(&mut root, 12 + 12 * i, e);
        }
        return ExtentTree {
            root,
            blocks: vec![],
        };
    }
    let mut next = blocks.iter().copied();
    let mut out = Vec::new();
    // The current level: (first logical block, physical block) of each node.
    let mut level: Vec<(u32, u64)> = Vec::new();
    for chunk in extents.chunks(BLOCK_ENTRIES) {
        let mut b = vec![0u8; BLOCK_SIZE as usize];
        header(&mut b, chunk.len(), BLOCK_ENTRIES, 0);
        for (i, e) in chunk.iter().enumerate() {
            put_leaf(&mut b, 12 + 12 * i, e);
        }
        let pb = next
            .next()
            .expect("caller reserved tree_blocks_needed blocks");
        level.push((chunk[0].logical, pb));
        out.push((pb, b));
    }
    let mut depth = 1u16;
    while level.len() > ROOT_ENTRIES {
        let mut up = Vec::new();
        for chunk in level.chunks(BLOCK_ENTRIES) {
            let mut b = vec![0u8; BLOCK_SIZE as usize];
            header(&mut b, chunk.len(), BLOCK_ENTRIES, depth);
            for (i, (l, p)) in chunk.iter().enumerate() {
                put_index(&mut b, 12 + 12 * i, *l, *p);
            }
            let pb = next
                .next()
                .expect("caller reserved tree_blocks_needed blocks");
            up.push((chunk[0].0, pb));
            out.push((pb, b));
        }
        level = up;
        depth += 1;
    }
    header(&mut root, level.len(), ROOT_ENTRIES, depth);
    for (i, (l, p)) in level.iter().enumerate() {
        put_index(&mut root, 12 + 12 * i, *l, *p);
    }
    ExtentTree { root, blocks: out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{get16, get32};
    use proptest::prelude::*;

    #[test]
    fn runs_merge_and_split() {
        let mut v = Vec::new();
        push_run(&mut v, 0, 100, 10);
        push_run(&mut v, 10, 110, 5);
        assert_eq!(
            v,
            vec![Extent {
                logical: 0,
                physical: 100,
                len: 15
            }]
        );
        push_run(&mut v, 20, 115, 70000);
        assert_eq!(v.len(), 4);
        assert_eq!(v[1].len, MAX_EXTENT_LEN);
        assert_eq!(v[3].len, 70000 - 2 * MAX_EXTENT_LEN);
    }

    #[test]
    fn small_tree_is_inline() {
        let t = build(
            &[Extent {
                logical: 0,
                physical: 7,
                len: 3,
            }],
            &[],
        );
        assert!(t.blocks.is_empty());
        assert_eq!(get16(&t.root, 0), EXTENT_MAGIC);
        assert_eq!(get16(&t.root, 2), 1);
        assert_eq!(get32(&t.root, 20), 7);
    }

    proptest! {
        /// Every extent is reachable from the root exactly once, in order.
        #[test]
        fn tree_covers_all_extents(n in 0usize..5000) {
            let extents: Vec<Extent> = (0..n)
                .map(|i| Extent { logical: 2 * i as u32, physical: 1000 + 2 * i as u64, len: 1 })
                .collect();
            let need = tree_blocks_needed(n);
            let blocks: Vec<u64> = (0..need).map(|i| 1_000_000 + i).collect();
            let t = build(&extents, &blocks);
            prop_assert_eq!(t.blocks.len() as u64, need);
            let map: std::collections::HashMap<u64, Vec<u8>> = t.blocks.into_iter().collect();
            let mut seen = Vec::new();
            fn walk(node: &[u8], map: &std::collections::HashMap<u64, Vec<u8>>, seen: &mut Vec<u32>) {
                let entries = get16(node, 2) as usize;
                let depth = get16(node, 6);
                for i in 0..entries {
                    let off = 12 + 12 * i;
                    if depth == 0 {
                        seen.push(get32(node, off));
                    } else {
                        let child = u64::from(get32(node, off + 4)) | (u64::from(get16(node, off + 8)) << 32);
                        walk(&map[&child], map, seen);
                    }
                }
            }
            walk(&t.root, &map, &mut seen);
            let want: Vec<u32> = extents.iter().map(|e| e.logical).collect();
            prop_assert_eq!(seen, want);
        }
    }
}
