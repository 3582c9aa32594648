//! The written-page bitmap of an overlay, in memory and as its snapshot file.
//!
//! In memory the bitmap is sparse (word index → non-zero 64-page word), so
//! its size follows what the VM wrote, not the image size. The snapshot file
//! `NAME.bitmap` is `LODEOVB1`, then (word index u64 LE, word u64 LE) for
//! every non-zero word in index order ([format.md](../../../../docs/format.md#6-nbd)).

use std::collections::BTreeMap;

/// Page size of the overlay.
pub const PAGE: u64 = 4096;

/// Magic of the snapshot file.
const MAGIC: &[u8; 8] = b"LODEOVB1";

/// Written pages, 64 to a word.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: BTreeMap<u64, u64>,
}

impl Bitmap {
    /// Whether `page` was written.
    pub fn has(&self, page: u64) -> bool {
        self.words
            .get(&(page / 64))
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// Marks pages `first..=last`; returns the words that gained bits, with
    /// their new value (what the journal records).
    pub fn set_range(&mut self, first: u64, last: u64) -> Vec<(u64, u64)> {
        let mut changed = Vec::new();
        for wi in first / 64..=last / 64 {
            let lo = if wi == first / 64 { first % 64 } else { 0 };
            let hi = if wi == last / 64 { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            let w = self.words.entry(wi).or_insert(0);
            if *w & mask != mask {
                *w |= mask;
                changed.push((wi, *w));
            }
        }
        changed
    }

    /// ORs `bits` into word `index`.
    pub fn merge(&mut self, index: u64, bits: u64) {
        if bits != 0 {
            *self.words.entry(index).or_insert(0) |= bits;
        }
    }

    /// Whether any page in `first..=last` was written.
    pub fn any(&self, first: u64, last: u64) -> bool {
        // Only the non-zero words in range, each masked to the pages asked.
        self.words.range(first / 64..=last / 64).any(|(&i, &w)| {
            let lo = if i == first / 64 { first % 64 } else { 0 };
            let hi = if i == last / 64 { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            w & mask != 0
        })
    }

    /// Pages written.
    pub fn count(&self) -> u64 {
        self.words.values().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The snapshot file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (i, w) in &self.words {
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Reads a snapshot for an image of `words` 64-page words: the sparse
    /// format, or the dense one of earlier versions (`words` × u64 LE).
    /// Anything else, or a word past the image, is `None`: the caller then
    /// starts afresh rather than serve pages it cannot vouch for.
    pub fn decode(b: &[u8], words: u64) -> Option<Bitmap> {
        let mut map = BTreeMap::new();
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        if let Some(rest) = b.strip_prefix(MAGIC.as_slice()) {
            if rest.len() % 16 != 0 {
                return None;
            }
            for pair in rest.chunks(16) {
                let (i, w) = (word(&pair[..8]), word(&pair[8..]));
                if i >= words {
                    return None;
                }
                if w != 0 {
                    map.insert(i, w);
                }
            }
        } else if b.len() as u64 == words.checked_mul(8)? {
            for (i, c) in b.chunks(8).enumerate() {
                if word(c) != 0 {
                    map.insert(i as u64, word(c));
                }
            }
        } else {
            return None;
        }
        Some(Bitmap { words: map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_matches_page_by_page() {
        let mut b = Bitmap::default();
        for p in [0u64, 63, 64, 200, 4095] {
            b.set_range(p, p);
        }
        for (s, e) in [
            (0u64, 0u64),
            (1, 62),
            (1, 63),
            (65, 199),
            (65, 200),
            (201, 4094),
            (4095, 4095),
            (4096, 1 << 18),
        ] {
            let want = (s..=e).any(|p| b.has(p));
            assert_eq!(b.any(s, e), want, "[{s}, {e}]");
        }
        assert_eq!(b.count(), 5);
    }

    #[test]
    fn set_range_reports_only_new_bits() {
        let mut b = Bitmap::default();
        assert_eq!(b.set_range(60, 70), vec![(0, 0xf << 60), (1, 0x7f)]);
        assert!(b.set_range(61, 66).is_empty());
        assert_eq!(b.set_range(59, 59), vec![(0, 0x1f << 59)]);
    }

    #[test]
    fn snapshots_round_trip_and_reject_garbage() {
        let mut b = Bitmap::default();
        b.merge(3, 0b1011);
        b.merge(1_000_000, u64::MAX);
        assert_eq!(Bitmap::decode(&b.encode(), 2_000_000), Some(b.clone()));
        // A word past the image, a torn file: refused.
        assert_eq!(Bitmap::decode(&b.encode(), 10), None);
        let mut torn = b.encode();
        torn.pop();
        assert_eq!(Bitmap::decode(&torn, 2_000_000), None);
        // The dense format of earlier versions still loads.
        let mut dense = vec![0u8; 4 * 8];
        dense[8..16].copy_from_slice(&5u64.to_le_bytes());
        let d = Bitmap::decode(&dense, 4).unwrap_or_default();
        assert_eq!(d.words.into_iter().collect::<Vec<_>>(), vec![(1, 5)]);
    }
}
