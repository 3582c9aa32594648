//! Hash-indexed directories (`dir_index`, "htree"): ext4's half-MD4 name
//! hash and the index blocks that send a lookup straight to one leaf block.
//!
//! Layout of an indexed directory of `L` leaves (logical blocks):
//!
//! ```text
//! 0          root: "." and ".." (spanning the block), dx_root_info, then
//!            (hash, block) entries, one per leaf (or per interior node)
//! 1..=N      interior nodes (only when L > 508): a blank entry spanning
//!            the block, then up to 511 (hash, block) entries
//! then       the L leaves: ordinary directory blocks, entries sorted by hash
//! ```
//!
//! A leaf holds the names whose hash is at least its index entry's hash and
//! below the next one's. Names of one hash stay in one leaf unless they fill
//! more than a block; the leaf continuing them is indexed under `hash | 1`,
//! ext4's collision mark.

use super::dir::{self, ftype, DirEntry};
use super::{put16, put32};
use crate::layout::BLOCK_SIZE;

/// `s_def_hash_version` / `dx_root_info.hash_version`: half MD4.
pub const HASH_HALF_MD4: u8 = 1;
/// Index entries that fit in the root block.
pub const ROOT_LIMIT: usize = (BLOCK_SIZE as usize - 32) / 8;
/// Index entries that fit in an interior node.
pub const NODE_LIMIT: usize = (BLOCK_SIZE as usize - 8) / 8;

/// ext4's `str2hashbuf` for signed chars (`str2hashbuf_signed`): up to 32
/// bytes of `msg`, each sign-extended, into eight words, padded with a word
/// built from the length. Signed, as `mke2fs` on x86 chooses, and as
/// readers such as the `ext4-view` crate assume.
fn str2hashbuf(msg: &[u8], len: usize, out: &mut [u32; 8]) {
    let pad = (len as u32) | ((len as u32) << 8);
    let pad = pad | (pad << 16);
    let mut val = pad;
    let mut n = 0;
    for (i, &b) in msg.iter().take(32).enumerate() {
        val = (i32::from(b as i8) as u32).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[n] = val;
            n += 1;
            val = pad;
        }
    }
    if n < 8 {
        out[n] = val;
        n += 1;
    }
    for w in out.iter_mut().skip(n) {
        *w = pad;
    }
}

/// ext4's `half_md4_transform`: three rounds of MD4 over eight words.
fn half_md4_transform(buf: &mut [u32; 4], x: &[u32; 8]) {
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:expr, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($f($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s)
        };
    }
    round!(f, a, b, c, d, x[0], 3);
    round!(f, d, a, b, c, x[1], 7);
    round!(f, c, d, a, b, x[2], 11);
    round!(f, b, c, d, a, x[3], 19);
    round!(f, a, b, c, d, x[4], 3);
    round!(f, d, a, b, c, x[5], 7);
    round!(f, c, d, a, b, x[6], 11);
    round!(f, b, c, d, a, x[7], 19);
    round!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[6].wrapping_add(K2), 13);
    round!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

/// The (major, minor) half-MD4 hash ext4 gives `name` under `seed` (the
/// superblock's `s_hash_seed`; all zeros means MD4's initial words), with
/// signed chars (`EXT2_FLAGS_SIGNED_HASH`). The major hash has its low bit
/// clear, as ext4 keeps it.
pub fn half_md4(name: &[u8], seed: &[u8; 16]) -> (u32, u32) {
    let mut buf = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    if seed.iter().any(|&b| b != 0) {
        for (w, c) in buf.iter_mut().zip(seed.chunks_exact(4)) {
            *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    let mut input = [0u32; 8];
    let mut rest = name;
    loop {
        str2hashbuf(rest, rest.len(), &mut input);
        half_md4_transform(&mut buf, &input);
        if rest.len() <= 32 {
            break;
        }
        rest = &rest[32..];
    }
    let mut hash = buf[1] & !1;
    // 0xfffffffe is ext4's end-of-directory cookie for 32-bit readdir.
    if hash == 0x7fff_ffff << 1 {
        hash = (0x7fff_ffff - 1) << 1;
    }
    (hash, buf[2])
}

/// Encodes an indexed directory: `entries` are the names other than `.` and
/// `..`. `None` when they need more leaves than two index levels address
/// (ext4 without `large_dir`); the caller then writes a linear directory.
pub fn encode(dot: u32, dotdot: u32, entries: &[DirEntry<'_>], seed: &[u8; 16]) -> Option<Vec<u8>> {
    let bs = BLOCK_SIZE as usize;
    let mut hashed: Vec<(u32, u32, &DirEntry<'_>)> = entries
        .iter()
        .map(|e| {
            let (h, m) = half_md4(e.name, seed);
            (h, m, e)
        })
        .collect();
    hashed.sort_by(|a, b| (a.0, a.1, a.2.name).cmp(&(b.0, b.1, b.2.name)));

    // Leaves: (index hash, entries). A hash group moves whole to a new leaf
    // when it does not fit in the current one and fits in an empty one.
    let rec = |e: &DirEntry<'_>| (8 + e.name.len()).div_ceil(4) * 4;
    let mut leaves: Vec<(u32, Vec<DirEntry<'_>>)> = vec![(0, Vec::new())];
    let mut used = 0usize;
    let mut i = 0;
    while i < hashed.len() {
        let h = hashed[i].0;
        let group_end = i + hashed[i..].iter().take_while(|x| x.0 == h).count();
        let group_len: usize = hashed[i..group_end].iter().map(|x| rec(x.2)).sum();
        if used > 0 && used + group_len > bs && group_len <= bs {
            leaves.push((h, Vec::new()));
            used = 0;
        }
        for x in &hashed[i..group_end] {
            let r = rec(x.2);
            if used + r > bs {
                // Only inside a group bigger than a block: a continuation.
                leaves.push((h | 1, Vec::new()));
                used = 0;
            }
            used += r;
            leaves.last_mut()?.1.push(*x.2);
        }
        i = group_end;
    }

    let n_leaves = leaves.len();
    let (levels, nodes) = if n_leaves <= ROOT_LIMIT {
        (0u8, 0usize)
    } else {
        let nodes = n_leaves.div_ceil(NODE_LIMIT);
        if nodes > ROOT_LIMIT {
            return None;
        }
        (1, nodes)
    };
    let first_leaf = 1 + nodes;
    let mut out = vec![0u8; (1 + nodes + n_leaves) * bs];

    // Root: "." and "..", dx_root_info, the entries.
    put32(&mut out, 0, dot);
    put16(&mut out, 4, 12);
    out[6] = 1;
    out[7] = ftype::DIR;
    out[8] = b'.';
    put32(&mut out, 12, dotdot);
    put16(&mut out, 16, (bs - 12) as u16);
    out[18] = 2;
    out[19] = ftype::DIR;
    out[20..22].copy_from_slice(b"..");
    out[24 + 4] = HASH_HALF_MD4;
    out[24 + 5] = 8; // info_length
    out[24 + 6] = levels;
    let leaf_refs: Vec<(u32, u32)> = leaves
        .iter()
        .enumerate()
        .map(|(k, (h, _))| (*h, (first_leaf + k) as u32))
        .collect();
    if nodes == 0 {
        put_entries(&mut out[..bs], 32, ROOT_LIMIT, &leaf_refs);
    } else {
        let groups: Vec<&[(u32, u32)]> = leaf_refs.chunks(NODE_LIMIT).collect();
        let node_refs: Vec<(u32, u32)> = groups
            .iter()
            .enumerate()
            .map(|(k, g)| (g[0].0, (1 + k) as u32))
            .collect();
        put_entries(&mut out[..bs], 32, ROOT_LIMIT, &node_refs);
        for (k, g) in groups.iter().enumerate() {
            let node = &mut out[(1 + k) * bs..(2 + k) * bs];
            // A blank entry spanning the block hides the index from readers
            // of linear directories.
            put16(node, 4, bs as u16);
            put_entries(node, 8, NODE_LIMIT, g);
        }
    }
    for (k, (_, names)) in leaves.iter().enumerate() {
        let at = (first_leaf + k) * bs;
        let block = if names.is_empty() {
            // Only an empty directory's single leaf: one blank entry.
            let mut b = vec![0u8; bs];
            put16(&mut b, 4, bs as u16);
            b
        } else {
            dir::encode(names)
        };
        debug_assert_eq!(block.len(), bs);
        out[at..at + bs].copy_from_slice(&block);
    }
    Some(out)
}

/// Writes `limit`, `count` and the (hash, block) entries at `at`; the first
/// entry's hash is implied (it covers everything below the second).
fn put_entries(block: &mut [u8], at: usize, limit: usize, refs: &[(u32, u32)]) {
    put16(block, at, limit as u16);
    put16(block, at + 2, refs.len() as u16);
    put32(block, at + 4, refs[0].1);
    for (k, (hash, blk)) in refs.iter().enumerate().skip(1) {
        put32(block, at + 8 * k, *hash);
        put32(block, at + 8 * k + 4, *blk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{get16, get32};
    use proptest::prelude::*;

    const SEED: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    /// Values from e2fsprogs 1.47.0:
    /// `debugfs -R "dx_hash -h half_md4 [-s 00010203-0405-0607-0809-0a0b0c0d0e0f] NAME"`.
    #[test]
    fn hashes_match_e2fsprogs() {
        let long = b"0123456789abcdefghijklmnopqrstuvwxyz-long-name-over-32-bytes";
        type Case<'a> = (&'a [u8], (u32, u32), (u32, u32));
        let cases: [Case<'_>; 5] = [
            // Bytes from 0x80 up are sign-extended.
            (
                "café".as_bytes(),
                (0xd635_7b70, 0x95c9_ec7e),
                (0xfb9c_5e5c, 0x0573_e8b8),
            ),
            (b"a", (0x0a2f_a3a0, 0x6b8e_d956), (0xd5fa_7d7a, 0xacb4_8187)),
            (
                b"hello",
                (0xaf3d_0524, 0x4eeb_19be),
                (0x1746_da32, 0x4200_13b5),
            ),
            (long, (0x6669_a3ac, 0x3df0_f308), (0x7993_b798, 0xa21b_b8a0)),
            (
                b"exactly-32-bytes-long-name-abcde",
                (0xf015_c110, 0x086b_4c73),
                (0x8275_8cbc, 0x1b61_5e98),
            ),
        ];
        for (name, seeded, unseeded) in cases {
            let show = String::from_utf8_lossy(name);
            assert_eq!(half_md4(name, &SEED), seeded, "{show} with a seed");
            assert_eq!(half_md4(name, &[0; 16]), unseeded, "{show} without");
        }
    }

    /// Index entries (hash, block) of an index block at `at`.
    fn entries(block: &[u8], at: usize) -> Vec<(u32, u32)> {
        let count = get16(block, at + 2) as usize;
        let mut v = vec![(0, get32(block, at + 4))];
        for k in 1..count {
            v.push((get32(block, at + 8 * k), get32(block, at + 8 * k + 4)));
        }
        v
    }

    /// The names in a leaf block.
    fn names(block: &[u8]) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        let mut p = 0;
        while p < block.len() {
            let rl = get16(block, p + 4) as usize;
            assert!(rl >= 8 && p + rl <= block.len());
            if get32(block, p) != 0 {
                let nl = block[p + 6] as usize;
                v.push(block[p + 8..p + 8 + nl].to_vec());
            }
            p += rl;
        }
        v
    }

    /// Looks `name` up as the kernel does: descend by hash, then scan the leaf
    /// (and leaves continuing its hash).
    fn lookup(buf: &[u8], name: &[u8]) -> bool {
        let bs = BLOCK_SIZE as usize;
        let (h, _) = half_md4(name, &SEED);
        let levels = buf[24 + 6];
        let pick = |refs: &[(u32, u32)]| {
            let k = refs.iter().rposition(|&(eh, _)| eh <= h).unwrap_or(0);
            (k, refs.to_vec())
        };
        let (mut k, mut refs) = pick(&entries(&buf[..bs], 32));
        if levels == 1 {
            let node = refs[k].1 as usize;
            (k, refs) = pick(&entries(&buf[node * bs..(node + 1) * bs], 8));
        }
        loop {
            let leaf = refs[k].1 as usize;
            if names(&buf[leaf * bs..(leaf + 1) * bs])
                .iter()
                .any(|n| n == name)
            {
                return true;
            }
            k += 1;
            if k >= refs.len() || refs[k].0 != h | 1 {
                return false;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn every_name_is_found_through_the_index(
            names in proptest::collection::btree_set(proptest::collection::vec(1u8..=255, 1..=255), 0..3000)
        ) {
            let names: Vec<Vec<u8>> = names.into_iter().collect();
            let entries: Vec<DirEntry<'_>> = names
                .iter()
                .enumerate()
                .map(|(i, n)| DirEntry { name: n, ino: 100 + i as u32, ftype: ftype::REG })
                .collect();
            let buf = encode(2, 2, &entries, &SEED).unwrap();
            prop_assert_eq!(buf.len() % BLOCK_SIZE as usize, 0);
            for n in &names {
                prop_assert!(lookup(&buf, n), "{:?} not found", String::from_utf8_lossy(n));
            }
            prop_assert!(!lookup(&buf, b"\0never a name"));
        }
    }

    #[test]
    fn two_levels_when_the_root_is_full() {
        // 255-byte names: 15 per leaf, so 10 000 need 667 leaves > 508.
        let names: Vec<Vec<u8>> = (0..10_000u32)
            .map(|i| {
                let mut n = format!("{i:08}").into_bytes();
                n.resize(255, b'x');
                n
            })
            .collect();
        let entries: Vec<DirEntry<'_>> = names
            .iter()
            .map(|n| DirEntry {
                name: n,
                ino: 12,
                ftype: ftype::REG,
            })
            .collect();
        let buf = encode(2, 2, &entries, &SEED).unwrap();
        assert_eq!(buf[24 + 6], 1, "indirect levels");
        for n in names.iter().step_by(97) {
            assert!(lookup(&buf, n));
        }
    }
}
