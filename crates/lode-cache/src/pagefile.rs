//! The page file of the disk tier (docs/format.md §5a).
//!
//! One file holds one verified chunk's plaintext, cut into 4 KiB pages,
//! each sealed alone with AES-256-GCM under the host key, so one page can be
//! read and authenticated without the rest of the chunk:
//!
//! ```text
//! header (64 bytes)
//!   0  magic "LODEPAGE"     8  version u16 BE (1)    10 page size u32 BE (4096)
//!   14 plaintext length u32 BE                        18 host key id [8]
//!   26 file nonce [8]       34 zero [14]              48 header tag [16]
//! tag table at 64: the tag of page i at 64 + 16 i, i < n = ceil(len / 4096)
//! zeros up to D = 64 + 16 n rounded up to a multiple of 4096
//! page ciphertext at D: page i at D + 4096 i (the last page may be short)
//! ```
//! Nonce of page `i`: file nonce ‖ `i` (u32 BE); of the header: file nonce
//! ‖ `FFFFFFFF`. Associated data of both: header bytes 0..48 ‖ chunk name ‖
//! plaintext SHA-256 ‖ page index (`FFFFFFFF` for the header). Name and
//! plaintext hash are never stored: the reader supplies them from its own
//! sealed manifest, so a page only opens for the chunk, position, length and
//! host key it was sealed for. Pages are contiguous and page-aligned, so a
//! range is decrypted in place in the buffer it was read into.

use crate::hostkey::HostKey;
use aws_lc_rs::aead::{Aad, Nonce};

/// File magic.
pub const MAGIC: [u8; 8] = *b"LODEPAGE";
/// Format version.
pub const VERSION: u16 = 1;
/// Plaintext bytes per page.
pub const PAGE_SIZE: usize = 4096;
/// Authentication tag bytes per page (and of the header).
pub const TAG_LEN: usize = 16;
/// Header bytes.
pub const HEADER_LEN: usize = 64;
/// Largest plaintext a page file holds.
pub const MAX_PLAIN: usize = 16 << 20;
const AUTH_LEN: usize = 48;
const HEADER_INDEX: u32 = u32::MAX;

/// Why a page file (or a part of it) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PageError {
    /// Fewer bytes than a header.
    #[error("page file header: {len} bytes, needs {HEADER_LEN}")]
    ShortHeader {
        /// Bytes given.
        len: usize,
    },
    /// Not a page file.
    #[error("page file header: bad magic")]
    Magic,
    /// A version this build does not read.
    #[error("page file header: version {0}, this build reads {VERSION}")]
    Version(u16),
    /// A page size other than [`PAGE_SIZE`].
    #[error("page file header: page size {0}, expected {PAGE_SIZE}")]
    PageSize(u32),
    /// Plaintext length 0 or above [`MAX_PLAIN`].
    #[error("page file: plaintext length {0} outside 1..={MAX_PLAIN}")]
    Length(usize),
    /// Sealed under another host key.
    #[error("page file header: host key {found}, expected {expected}")]
    KeyId {
        /// Key id in the file.
        found: String,
        /// This host's key id.
        expected: String,
    },
    /// Reserved header bytes are not zero.
    #[error("page file header: reserved bytes are not zero")]
    Reserved,
    /// The padding between the tag table and the pages is not zero (only a
    /// whole-file check reads it: it carries nothing a read uses).
    #[error("page file: padding before the pages is not zero")]
    Padding,
    /// The header's tag does not authenticate it for this chunk and key.
    #[error("page file header: authentication failed")]
    HeaderTag,
    /// The file's size does not match its header.
    #[error("page file: {actual} bytes, the header implies {expected}")]
    FileSize {
        /// Size the header implies.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// A byte range outside the chunk.
    #[error("page file: range {start}..{end} outside a {len}-byte chunk")]
    Range {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// Plaintext length.
        len: usize,
    },
    /// The tags or ciphertext given do not have the length of the pages asked for.
    #[error("page file: tags and ciphertext of pages {first}..{end} are {len} bytes, expected {expected}")]
    Records {
        /// First page.
        first: usize,
        /// Page after the last.
        end: usize,
        /// Bytes given.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// A page's tag does not authenticate it.
    #[error("page {0}: authentication failed")]
    PageTag(usize),
}

/// A page file's header, authenticated for one chunk under one host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Plaintext length of the chunk.
    pub plain_len: usize,
    /// The file's random nonce prefix.
    pub nonce: [u8; 8],
    raw: [u8; AUTH_LEN],
}

/// Pages a plaintext of `len` bytes takes.
pub fn pages(len: usize) -> usize {
    len.div_ceil(PAGE_SIZE)
}

/// Byte offset of page `page`'s tag in the file.
pub fn tag_offset(page: usize) -> u64 {
    (HEADER_LEN + page * TAG_LEN) as u64
}

/// Byte offset of the first page's ciphertext in the file of a
/// `plain_len`-byte chunk.
pub fn data_offset(plain_len: usize) -> u64 {
    (HEADER_LEN + pages(plain_len) * TAG_LEN).next_multiple_of(PAGE_SIZE) as u64
}

/// Size of the page file of a `plain_len`-byte chunk.
pub fn file_len(plain_len: usize) -> u64 {
    data_offset(plain_len) + plain_len as u64
}

/// The pages covering plaintext bytes `start..end`.
pub fn page_span(start: usize, end: usize) -> std::ops::Range<usize> {
    start / PAGE_SIZE..end.div_ceil(PAGE_SIZE)
}

fn nonce(file: &[u8; 8], index: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(file);
    n[8..].copy_from_slice(&index.to_be_bytes());
    // Unique per (file nonce, index) under one key: file nonces are random
    // per write, and a file's pages and header use distinct indexes.
    Nonce::assume_unique_for_key(n)
}

fn aad(raw: &[u8; AUTH_LEN], name: &[u8; 32], plain_sha: &[u8; 32], index: u32) -> [u8; 116] {
    let mut a = [0u8; 116];
    a[..48].copy_from_slice(raw);
    a[48..80].copy_from_slice(name);
    a[80..112].copy_from_slice(plain_sha);
    a[112..].copy_from_slice(&index.to_be_bytes());
    a
}

/// Seals `plaintext` (verified to hash to `plain_sha`, chunk `name`) into a
/// page file with the random `file_nonce`.
pub fn seal(
    key: &HostKey,
    name: &[u8; 32],
    plain_sha: &[u8; 32],
    file_nonce: [u8; 8],
    plaintext: &[u8],
) -> Result<Vec<u8>, PageError> {
    let len = plaintext.len();
    if len == 0 || len > MAX_PLAIN {
        return Err(PageError::Length(len));
    }
    let mut raw = [0u8; AUTH_LEN];
    raw[..8].copy_from_slice(&MAGIC);
    raw[8..10].copy_from_slice(&VERSION.to_be_bytes());
    raw[10..14].copy_from_slice(&(PAGE_SIZE as u32).to_be_bytes());
    raw[14..18].copy_from_slice(&(len as u32).to_be_bytes());
    raw[18..26].copy_from_slice(&key.id());
    raw[26..34].copy_from_slice(&file_nonce);
    let n = pages(len);
    let data_at = data_offset(len) as usize;
    let mut out = vec![0u8; data_at];
    out[..AUTH_LEN].copy_from_slice(&raw);
    out.extend_from_slice(plaintext);
    let (head, data) = out.split_at_mut(data_at);
    let mut seal_into = |tag_at: usize, index: u32, body: &mut [u8]| {
        let tag = key
            .cipher
            .seal_in_place_separate_tag(
                nonce(&file_nonce, index),
                Aad::from(aad(&raw, name, plain_sha, index)),
                body,
            )
            .expect("AES-GCM seals any length below 64 GiB");
        head[tag_at..tag_at + TAG_LEN].copy_from_slice(tag.as_ref());
    };
    seal_into(AUTH_LEN, HEADER_INDEX, &mut []);
    for (i, page) in data.chunks_mut(PAGE_SIZE).enumerate() {
        seal_into(tag_offset(i) as usize, i as u32, page);
    }
    debug_assert_eq!(n, data.len().div_ceil(PAGE_SIZE));
    Ok(out)
}

/// Parses and authenticates a header for chunk `name` with `plain_sha`.
pub fn open_header(
    key: &HostKey,
    name: &[u8; 32],
    plain_sha: &[u8; 32],
    bytes: &[u8],
) -> Result<Header, PageError> {
    let b: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(PageError::ShortHeader { len: bytes.len() })?;
    if b[..8] != MAGIC {
        return Err(PageError::Magic);
    }
    let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let version = u16::from_be_bytes([b[8], b[9]]);
    if version != VERSION {
        return Err(PageError::Version(version));
    }
    if u32_at(10) as usize != PAGE_SIZE {
        return Err(PageError::PageSize(u32_at(10)));
    }
    let plain_len = u32_at(14) as usize;
    if plain_len == 0 || plain_len > MAX_PLAIN {
        return Err(PageError::Length(plain_len));
    }
    if b[18..26] != key.id() {
        return Err(PageError::KeyId {
            found: hex::encode(&b[18..26]),
            expected: hex::encode(key.id()),
        });
    }
    if b[34..AUTH_LEN].iter().any(|&x| x != 0) {
        return Err(PageError::Reserved);
    }
    let raw: [u8; AUTH_LEN] = b[..AUTH_LEN].try_into().expect("48 bytes");
    let file_nonce: [u8; 8] = b[26..34].try_into().expect("8 bytes");
    let mut tag: [u8; TAG_LEN] = b[AUTH_LEN..].try_into().expect("16 bytes");
    key.cipher
        .open_in_place(
            nonce(&file_nonce, HEADER_INDEX),
            Aad::from(aad(&raw, name, plain_sha, HEADER_INDEX)),
            &mut tag,
        )
        .map_err(|_| PageError::HeaderTag)?;
    Ok(Header {
        plain_len,
        nonce: file_nonce,
        raw,
    })
}

impl Header {
    /// Checks that `start..end` lies in the chunk; returns the pages to read.
    pub fn span(&self, start: usize, end: usize) -> Result<std::ops::Range<usize>, PageError> {
        if start >= end || end > self.plain_len {
            return Err(PageError::Range {
                start,
                end,
                len: self.plain_len,
            });
        }
        Ok(page_span(start, end))
    }

    /// Bytes of the tags of `pages` (read at [`tag_offset`]`(pages.start)`).
    pub fn tags_len(&self, pages: &std::ops::Range<usize>) -> usize {
        pages.len() * TAG_LEN
    }

    /// Bytes of the ciphertext of `pages` (read at [`Header::page_offset`]).
    pub fn data_len(&self, pages: &std::ops::Range<usize>) -> usize {
        (pages.end * PAGE_SIZE)
            .min(self.plain_len)
            .saturating_sub(pages.start * PAGE_SIZE)
    }

    /// Byte offset of page `page`'s ciphertext in the file.
    pub fn page_offset(&self, page: usize) -> u64 {
        data_offset(self.plain_len) + (page * PAGE_SIZE) as u64
    }

    /// Size of the whole file this header implies.
    pub fn file_len(&self) -> u64 {
        file_len(self.plain_len)
    }

    /// Authenticates and decrypts the ciphertext of `pages` in place, with
    /// their `tags`; `data` then holds the plaintext of those pages.
    pub fn open_pages(
        &self,
        key: &HostKey,
        name: &[u8; 32],
        plain_sha: &[u8; 32],
        pages: std::ops::Range<usize>,
        tags: &[u8],
        data: &mut [u8],
    ) -> Result<(), PageError> {
        let expected = self.tags_len(&pages) + self.data_len(&pages);
        if pages.end > self::pages(self.plain_len)
            || tags.len() != self.tags_len(&pages)
            || data.len() != self.data_len(&pages)
        {
            return Err(PageError::Records {
                first: pages.start,
                end: pages.end,
                len: tags.len() + data.len(),
                expected,
            });
        }
        let first = pages.start;
        for ((i, page), tag) in pages
            .zip(data.chunks_mut(PAGE_SIZE))
            .zip(tags.chunks(TAG_LEN))
        {
            debug_assert!(i >= first);
            key.cipher
                .open_in_place_separate_tag(
                    nonce(&self.nonce, i as u32),
                    Aad::from(aad(&self.raw, name, plain_sha, i as u32)),
                    tag,
                    page,
                )
                .map_err(|_| PageError::PageTag(i))?;
        }
        Ok(())
    }
}

/// Opens bytes `start..end` of a whole page file held in memory, checking
/// every byte outside the pages too (size, zero padding): tests, the fuzz
/// target and tools. The disk tier reads only the pages it needs.
pub fn open_range(
    key: &HostKey,
    name: &[u8; 32],
    plain_sha: &[u8; 32],
    file: &[u8],
    start: usize,
    end: usize,
) -> Result<Vec<u8>, PageError> {
    let h = open_header(key, name, plain_sha, file)?;
    if file.len() as u64 != file_len(h.plain_len) {
        return Err(PageError::FileSize {
            expected: file_len(h.plain_len),
            actual: file.len() as u64,
        });
    }
    let pad = tag_offset(pages(h.plain_len)) as usize..data_offset(h.plain_len) as usize;
    if file[pad].iter().any(|&b| b != 0) {
        return Err(PageError::Padding);
    }
    let span = h.span(start, end)?;
    let t = tag_offset(span.start) as usize;
    let tags = &file[t..t + h.tags_len(&span)];
    let d = h.page_offset(span.start) as usize;
    let mut data = file[d..d + h.data_len(&span)].to_vec();
    let first = span.start;
    h.open_pages(key, name, plain_sha, span, tags, &mut data)?;
    let skip = start - first * PAGE_SIZE;
    Ok(data[skip..skip + (end - start)].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> HostKey {
        HostKey::from_secret(&[b; 32])
    }

    fn swap(b: &mut [u8], x: usize, y: usize, n: usize) {
        let tmp = b[x..x + n].to_vec();
        b.copy_within(y..y + n, x);
        b[y..y + n].copy_from_slice(&tmp);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any range of any sealed chunk opens to the plaintext's bytes.
        #[test]
        fn round_trip(len in 1usize..20_000, a in any::<usize>(), b in any::<usize>(), seed in any::<u8>()) {
            let pt: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let f = seal(&key(1), &[2; 32], &[3; 32], [seed; 8], &pt).unwrap();
            prop_assert_eq!(f.len() as u64, file_len(len));
            let (s, e) = { let (x, y) = (a % len, b % len); (x.min(y), x.max(y) + 1) };
            prop_assert_eq!(open_range(&key(1), &[2; 32], &[3; 32], &f, s, e).unwrap(), &pt[s..e]);
        }

        /// Any changed byte of the file is refused for a range that covers
        /// the changed page (and the header is part of every range).
        #[test]
        fn any_flip_is_refused(len in 1usize..12_000, at in any::<usize>(), bit in 0u8..8) {
            let pt = vec![0x5a; len];
            let mut f = seal(&key(1), &[2; 32], &[3; 32], [9; 8], &pt).unwrap();
            let at = at % f.len();
            f[at] ^= 1 << bit;
            prop_assert!(open_range(&key(1), &[2; 32], &[3; 32], &f, 0, len).is_err());
        }

        /// The header parser never panics and accepts only authentic headers.
        #[test]
        fn header_of_random_bytes_is_refused(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            prop_assert!(open_header(&key(1), &[2; 32], &[3; 32], &b).is_err());
        }
    }

    #[test]
    fn bound_to_chunk_hash_key_and_position() {
        let pt: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i / PAGE_SIZE) as u8).collect();
        let f = seal(&key(1), &[2; 32], &[3; 32], [4; 8], &pt).unwrap();
        let open =
            |k: &HostKey, n: [u8; 32], s: [u8; 32], f: &[u8]| open_range(k, &n, &s, f, 0, pt.len());
        assert_eq!(open(&key(1), [2; 32], [3; 32], &f).unwrap(), pt);
        assert_eq!(
            open(&key(1), [9; 32], [3; 32], &f),
            Err(PageError::HeaderTag)
        );
        assert_eq!(
            open(&key(1), [2; 32], [9; 32], &f),
            Err(PageError::HeaderTag)
        );
        assert!(matches!(
            open(&key(7), [2; 32], [3; 32], &f),
            Err(PageError::KeyId { .. })
        ));
        // Two pages (with their tags) swapped inside the file.
        let mut swapped = f.clone();
        let d = data_offset(pt.len()) as usize;
        swap(&mut swapped, d, d + PAGE_SIZE, PAGE_SIZE);
        swap(
            &mut swapped,
            tag_offset(0) as usize,
            tag_offset(1) as usize,
            TAG_LEN,
        );
        assert_eq!(
            open(&key(1), [2; 32], [3; 32], &swapped),
            Err(PageError::PageTag(0))
        );
        // A page and its tag from another file of the same chunk (another nonce).
        let g = seal(&key(1), &[2; 32], &[3; 32], [5; 8], &pt).unwrap();
        let mut mixed = f.clone();
        let (p1, t1) = (d + PAGE_SIZE, tag_offset(1) as usize);
        mixed[p1..p1 + PAGE_SIZE].copy_from_slice(&g[p1..p1 + PAGE_SIZE]);
        mixed[t1..t1 + TAG_LEN].copy_from_slice(&g[t1..t1 + TAG_LEN]);
        assert_eq!(
            open_range(
                &key(1),
                &[2; 32],
                &[3; 32],
                &mixed,
                PAGE_SIZE,
                PAGE_SIZE + 1
            ),
            Err(PageError::PageTag(1))
        );
        assert!(open_range(&key(1), &[2; 32], &[3; 32], &f[..f.len() - 1], 0, 1).is_err());
        assert!(matches!(
            open_range(&key(1), &[2; 32], &[3; 32], &f, 0, pt.len() + 1),
            Err(PageError::Range { .. })
        ));
        assert_eq!(
            seal(&key(1), &[2; 32], &[3; 32], [4; 8], &[]),
            Err(PageError::Length(0))
        );
    }
}
