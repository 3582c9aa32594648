//! lode-cache: the disk tier's page files, read back from a cache directory
//! that anyone with write access to it may have changed.

use crate::support::Input;
use lode_cache::pagefile::{self, open_header, open_range, seal, PageError, MAX_PLAIN};
use lode_cache::HostKey;

/// The host key, chunk name and plaintext hash every fuzzed file is opened
/// for (the seeds are sealed for them).
pub const KEY: [u8; 32] = [0x42; 32];
/// Chunk name of the fuzzed files.
pub const NAME: [u8; 32] = [0x11; 32];
/// Plaintext hash of the fuzzed files.
pub const PLAIN_SHA: [u8; 32] = [0x22; 32];

/// A page file (`open_header`, `Header::open_pages`, `open_range`) from a
/// cache directory. The first byte picks the mode:
///
/// * even: the rest is a whole file, opened for ranges the input picks. It
///   is refused, or (an authentic file) whole-file opening re-seals with the
///   header's nonce to exactly the input, and every range opens to the
///   matching bytes of that plaintext.
/// * odd: a plaintext the input gives is sealed properly, then one edit
///   (flip, truncate or append, chosen by the input) changes the file: the
///   whole file is then refused, and a range opens only to the original
///   plaintext's bytes (never a wrong byte).
pub fn page_file(data: &[u8]) {
    let mut inp = Input::new(data);
    let key = HostKey::from_secret(&KEY);
    let mode = inp.u8();
    let (a, b) = (usize::from(inp.u16()), usize::from(inp.u16()));
    if mode.is_multiple_of(2) {
        let file = inp.rest();
        let Ok(h) = open_header(&key, &NAME, &PLAIN_SHA, file) else {
            assert!(open_range(&key, &NAME, &PLAIN_SHA, file, 0, 1).is_err());
            return;
        };
        assert!(h.plain_len >= 1 && h.plain_len <= MAX_PLAIN);
        let Ok(pt) = open_range(&key, &NAME, &PLAIN_SHA, file, 0, h.plain_len) else {
            return;
        };
        assert_eq!(pt.len(), h.plain_len);
        let again = seal(&key, &NAME, &PLAIN_SHA, h.nonce, &pt).expect("re-seal");
        assert_eq!(again, file, "an accepted page file is not canonical");
        let (s, e) = (a.min(b) % h.plain_len, (a.max(b) % h.plain_len) + 1);
        if s < e {
            assert_eq!(
                open_range(&key, &NAME, &PLAIN_SHA, file, s, e).expect("range of a valid file"),
                &pt[s..e]
            );
        }
        return;
    }
    let nonce: [u8; 8] = inp.padded(8).try_into().expect("8 bytes");
    let edit = inp.u8();
    let at = usize::from(inp.u16());
    let pt = inp.rest();
    let Ok(mut file) = seal(&key, &NAME, &PLAIN_SHA, nonce, pt) else {
        assert!(pt.is_empty() || pt.len() > MAX_PLAIN);
        return;
    };
    assert_eq!(file.len() as u64, pagefile::file_len(pt.len()));
    assert_eq!(
        open_range(&key, &NAME, &PLAIN_SHA, &file, 0, pt.len()).expect("round trip"),
        pt
    );
    let at = at % file.len();
    match edit % 3 {
        0 => file[at] ^= edit | 1,
        1 => file.truncate(at),
        _ => file.push(edit),
    }
    assert!(open_range(&key, &NAME, &PLAIN_SHA, &file, 0, pt.len()).is_err());
    let (s, e) = (a.min(b) % pt.len(), (a.max(b) % pt.len()) + 1);
    match open_range(&key, &NAME, &PLAIN_SHA, &file, s, e) {
        Ok(got) => assert_eq!(got, &pt[s..e], "a changed file served wrong bytes"),
        Err(PageError::PageTag(_) | PageError::HeaderTag | PageError::FileSize { .. }) => {}
        Err(PageError::ShortHeader { .. } | PageError::Magic | PageError::Version(_)) => {}
        Err(PageError::PageSize(_) | PageError::Length(_) | PageError::KeyId { .. }) => {}
        Err(PageError::Reserved | PageError::Padding | PageError::Range { .. }) => {}
        Err(PageError::Records { .. }) => {}
        Err(e) => panic!("unexpected refusal {e}"),
    }
}
