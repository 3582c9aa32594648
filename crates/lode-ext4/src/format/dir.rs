//! Linear directory blocks (`ext4_dir_entry_2`).

use super::{put16, put32};
use crate::layout::BLOCK_SIZE;

/// Directory entry file types.
pub mod ftype {
    /// Regular file.
    pub const REG: u8 = 1;
    /// Directory.
    pub const DIR: u8 = 2;
    /// Character device.
    pub const CHR: u8 = 3;
    /// Block device.
    pub const BLK: u8 = 4;
    /// FIFO.
    pub const FIFO: u8 = 5;
    /// Symbolic link.
    pub const SYMLINK: u8 = 7;
}

/// One directory entry to encode.
#[derive(Clone, Copy, Debug)]
pub struct DirEntry<'a> {
    /// Name bytes, 1 to 255 of them.
    pub name: &'a [u8],
    /// Inode the entry points to.
    pub ino: u32,
    /// One of [`ftype`].
    pub ftype: u8,
}

fn rec_len(name_len: usize) -> usize {
    (8 + name_len).div_ceil(4) * 4
}

/// Number of blocks `encode` produces for entries with these name lengths
/// (`.` and `..` included by the caller).
pub fn blocks_needed(name_lens: impl IntoIterator<Item = usize>) -> u64 {
    let mut blocks = 1u64;
    let mut used = 0usize;
    for n in name_lens {
        let r = rec_len(n);
        if used + r > BLOCK_SIZE as usize {
            blocks += 1;
            used = 0;
        }
        used += r;
    }
    blocks
}

/// Encodes entries, in the given order, into whole directory blocks. The first
/// two entries must be `.` and `..`. Each block's last entry stretches to the
/// block's end, as ext4 requires.
pub fn encode(entries: &[DirEntry<'_>]) -> Vec<u8> {
    let bs = BLOCK_SIZE as usize;
    encode_regions(entries, |_| Some(bs)).expect("every entry fits in a block")
}

/// Encodes entries, in the given order, into consecutive regions whose sizes
/// `region_size(i)` gives (`None`: there is no region `i`). An entry that
/// does not fit in what is left of a region starts the next one; each
/// region's last entry stretches to its end, and a region left without
/// entries holds one blank entry (inode 0) spanning it. Returns `None` when
/// the entries need more regions than there are. At least the first region
/// is returned, and no region after the last one used.
pub fn encode_regions(
    entries: &[DirEntry<'_>],
    region_size: impl Fn(usize) -> Option<usize>,
) -> Option<Vec<u8>> {
    let mut region = 0usize;
    let mut size = region_size(0)?;
    let mut out = vec![0u8; size];
    let mut region_start = 0usize;
    let mut pos = 0usize;
    let mut last: Option<usize> = None;
    let close = |out: &mut Vec<u8>, last: Option<usize>, region_start: usize, size: usize| {
        let l = last.unwrap_or(region_start);
        put16(out, l + 4, (region_start + size - l) as u16);
    };
    for e in entries {
        let r = rec_len(e.name.len());
        while pos + r > region_start + size {
            close(&mut out, last, region_start, size);
            region += 1;
            region_start += size;
            size = region_size(region)?;
            pos = region_start;
            last = None;
            out.resize(region_start + size, 0);
        }
        put32(&mut out, pos, e.ino);
        put16(&mut out, pos + 4, r as u16);
        out[pos + 6] = e.name.len() as u8;
        out[pos + 7] = e.ftype;
        out[pos + 8..pos + 8 + e.name.len()].copy_from_slice(e.name);
        last = Some(pos);
        pos += r;
    }
    close(&mut out, last, region_start, size);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{get16, get32};
    use proptest::prelude::*;

    fn parse(buf: &[u8]) -> Vec<(Vec<u8>, u32)> {
        let mut v = Vec::new();
        for block in buf.chunks(BLOCK_SIZE as usize) {
            let mut p = 0;
            while p < block.len() {
                let rl = get16(block, p + 4) as usize;
                assert!(rl >= 8 && p + rl <= block.len(), "bad rec_len");
                let nl = block[p + 6] as usize;
                v.push((block[p + 8..p + 8 + nl].to_vec(), get32(block, p)));
                p += rl;
            }
            assert_eq!(p, block.len());
        }
        v
    }

    proptest! {
        #[test]
        fn encode_parses_back(names in proptest::collection::vec(proptest::collection::vec(1u8..=255, 1..=255), 0..300)) {
            let mut entries = vec![
                DirEntry { name: b".", ino: 2, ftype: ftype::DIR },
                DirEntry { name: b"..", ino: 2, ftype: ftype::DIR },
            ];
            for (i, n) in names.iter().enumerate() {
                entries.push(DirEntry { name: n, ino: 100 + i as u32, ftype: ftype::REG });
            }
            let buf = encode(&entries);
            prop_assert_eq!(buf.len() as u64, blocks_needed(entries.iter().map(|e| e.name.len())) * BLOCK_SIZE);
            let got = parse(&buf);
            let want: Vec<(Vec<u8>, u32)> = entries.iter().map(|e| (e.name.to_vec(), e.ino)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
