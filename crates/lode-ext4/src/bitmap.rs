//! A plain bit set over block or inode numbers.

/// Fixed-size bit set.
#[derive(Clone, Debug)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u64,
}

impl Bitmap {
    /// `len` bits, all clear.
    pub fn new(len: u64) -> Self {
        Bitmap {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// Sets bit `i`. Returns false if it was already set.
    pub fn set(&mut self, i: u64) -> bool {
        assert!(i < self.len, "bit {i} out of range {}", self.len);
        let w = &mut self.words[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        let fresh = *w & m == 0;
        *w |= m;
        fresh
    }

    /// Sets bits `start..start + n`; returns how many were already set.
    pub fn set_range(&mut self, start: u64, n: u64) -> u64 {
        (start..start + n).filter(|&i| !self.set(i)).count() as u64
    }

    /// Tests bit `i`.
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }

    /// Number of set bits in `start..end`.
    pub fn count_range(&self, start: u64, end: u64) -> u64 {
        (start..end.min(self.len)).filter(|&i| self.get(i)).count() as u64
    }

    /// Bits `start..start + 8 * out.len()` as ext4 stores them (LSB first);
    /// bits at or past the end of the set read as 1 (ext4's padding rule).
    pub fn export(&self, start: u64, out: &mut [u8]) {
        for (byte_i, byte) in out.iter_mut().enumerate() {
            let mut v = 0u8;
            for bit in 0..8 {
                let i = start + byte_i as u64 * 8 + bit;
                if i >= self.len || self.get(i) {
                    v |= 1 << bit;
                }
            }
            *byte = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_pads_with_ones() {
        let mut b = Bitmap::new(10);
        b.set(0);
        b.set(9);
        let mut out = [0u8; 2];
        b.export(0, &mut out);
        assert_eq!(out, [0b0000_0001, 0b1111_1110]);
        assert_eq!(b.set_range(0, 3), 1);
        assert_eq!(b.count_range(0, 10), 4);
    }
}
