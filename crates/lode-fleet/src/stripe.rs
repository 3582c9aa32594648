//! The 4-of-5 code: a chunk's ciphertext as 4 data stripes and 1 parity stripe.
//!
//! With one parity stripe, XOR is a maximum-distance-separable code: any 4 of
//! the 5 stripes rebuild the chunk. It costs one pass over the data (memory
//! bandwidth), which beats the Reed-Solomon crates measured here for the one
//! parity case (see docs/benchmarks.md).
//!
//! Each stripe carries an 8-byte header so that a stripe is self-describing:
//! ```text
//! magic u16 = 0x4c53 ("LS"), index u8 (0-3 data, 4 parity), version u8 = 1,
//! chunk length u32 (little-endian), then ceil(length / 4) bytes
//! ```

/// Data stripes per chunk.
pub const DATA: usize = 4;
/// Stripes per chunk (data + parity).
pub const TOTAL: usize = 5;
const MAGIC: u16 = 0x4c53;
/// Header bytes in front of every stripe.
pub const HEADER: usize = 8;

/// Splits `chunk` into 5 stripes (the last data stripe is zero-padded).
pub fn encode(chunk: &[u8]) -> Vec<Vec<u8>> {
    let w = chunk.len().div_ceil(DATA);
    let mut out: Vec<Vec<u8>> = (0..TOTAL)
        .map(|i| {
            let mut s = Vec::with_capacity(HEADER + w);
            s.extend_from_slice(&MAGIC.to_le_bytes());
            s.push(i as u8);
            s.push(1);
            s.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            s
        })
        .collect();
    let mut parity = vec![0u8; w];
    for (i, s) in out.iter_mut().take(DATA).enumerate() {
        let start = (i * w).min(chunk.len());
        let end = ((i + 1) * w).min(chunk.len());
        s.extend_from_slice(&chunk[start..end]);
        s.resize(HEADER + w, 0);
        for (p, b) in parity.iter_mut().zip(&s[HEADER..]) {
            *p ^= b;
        }
    }
    out[DATA].extend_from_slice(&parity);
    out
}

/// Parses a stripe's header: `(index, chunk length)`, or `None` if malformed.
pub fn header(stripe: &[u8]) -> Option<(usize, usize)> {
    if stripe.len() < HEADER
        || u16::from_le_bytes([stripe[0], stripe[1]]) != MAGIC
        || stripe[3] != 1
    {
        return None;
    }
    let idx = stripe[2] as usize;
    let len = u32::from_le_bytes(stripe[4..8].try_into().ok()?) as usize;
    (idx < TOTAL && stripe.len() == HEADER + len.div_ceil(DATA)).then_some((idx, len))
}

/// Rebuilds the chunk from any 4 distinct, well-formed stripes of one chunk.
/// Returns `None` if they are not 4 distinct stripes agreeing on the length.
pub fn decode(stripes: &[&[u8]]) -> Option<Vec<u8>> {
    let mut by_idx: [Option<&[u8]>; TOTAL] = [None; TOTAL];
    let mut len = None;
    for s in stripes {
        let (i, l) = header(s)?;
        if *len.get_or_insert(l) != l {
            return None;
        }
        by_idx[i] = Some(&s[HEADER..]);
    }
    let len = len?;
    let w = len.div_ceil(DATA);
    if by_idx.iter().filter(|s| s.is_some()).count() < DATA {
        return None;
    }
    let missing = (0..DATA).find(|&i| by_idx[i].is_none());
    let mut out = Vec::with_capacity(DATA * w);
    let mut rebuilt = vec![0u8; w];
    if let Some(m) = missing {
        for (i, s) in by_idx.iter().enumerate() {
            if i != m {
                for (r, b) in rebuilt.iter_mut().zip(s.expect("4 present")) {
                    *r ^= b;
                }
            }
        }
    }
    for (i, s) in by_idx.iter().take(DATA).enumerate() {
        out.extend_from_slice(if Some(i) == missing {
            &rebuilt
        } else {
            s.expect("present")
        });
    }
    out.truncate(len);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_four_rebuild(chunk in proptest::collection::vec(any::<u8>(), 0..5000), drop in 0usize..5) {
            let s = encode(&chunk);
            prop_assert_eq!(s.len(), 5);
            let four: Vec<&[u8]> = s.iter().enumerate().filter(|(i, _)| *i != drop).map(|(_, v)| v.as_slice()).collect();
            prop_assert_eq!(decode(&four), Some(chunk.clone()));
            let three: Vec<&[u8]> = four[..3].to_vec();
            prop_assert_eq!(decode(&three), None);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = header(&bytes);
            let _ = decode(&[&bytes, &bytes, &bytes, &bytes]);
        }
    }

    /// A chunk stored compressed (chunk format v2) is striped at its stored
    /// length: five small stripes, not five quarters of 512 KiB.
    #[test]
    fn stripes_follow_the_stored_length() {
        let text = b"compressible chunk ".repeat(512 * 1024 / 19);
        let sealed = lode_chunk::seal_chunk(&lode_chunk::Salt([1; 32]), &text);
        assert_eq!(sealed.secret.codec, lode_chunk::Codec::Zstd);
        let ct = &sealed.ciphertext;
        assert_eq!(ct.len(), sealed.secret.stored_len as usize);
        let s = encode(ct);
        for x in &s {
            assert_eq!(x.len(), HEADER + ct.len().div_ceil(DATA));
            assert_eq!(header(x).map(|(_, l)| l), Some(ct.len()));
        }
        let four: Vec<&[u8]> = s[1..].iter().map(Vec::as_slice).collect();
        assert_eq!(decode(&four).as_ref(), Some(ct));
    }

    #[test]
    fn overhead_is_a_quarter() {
        let s = encode(&vec![1u8; 512 * 1024]);
        let total: usize = s.iter().map(|x| x.len() - HEADER).sum();
        assert_eq!(total, 512 * 1024 * 5 / 4);
    }
}
