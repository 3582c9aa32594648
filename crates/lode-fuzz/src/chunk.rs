//! lode-chunk: sealed manifests, working sets, wrapped keys and key files,
//! all read back from the (untrusted) store or the local key directory, and
//! stored chunks (zstd frames after decryption).

use crate::support::{scratch, FixedKeys, Input, DIGEST, KEK};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use lode_chunk::codec::{self, Codec};
use lode_chunk::keys::{unwrap_with, wrap_with};
use lode_chunk::manifest::{chunk_count, entry_len, plain_len, MAX_CHUNKS, MAX_HEADER_LEN};
use lode_chunk::workingset;
use lode_chunk::{
    open_chunk, open_named_chunk, seal_chunk, ChunkKey, ChunkName, ChunkSecret, DataKey,
    KeyProvider, Keyring, Manifest, ManifestHeader, Salt,
};
use sha2::{Digest, Sha256};

/// Outer framing of a manifest as read from the store: `decode` either
/// refuses the bytes or returns a manifest that encodes to exactly them;
/// opening it never panics.
pub fn manifest_decode(data: &[u8]) {
    let Ok(m) = Manifest::decode(data) else {
        return;
    };
    assert_eq!(m.encode(), data, "decode accepted a non-canonical encoding");
    assert!(m.names.len() as u64 <= MAX_CHUNKS);
    assert_eq!(
        m.names.len() as u64,
        chunk_count(m.image_size, m.chunk_size)
    );
    assert_eq!(m.sealed.len(), m.names.len() * entry_len(m.format) + 16);
    if let Ok(table) = m.open(&FixedKeys) {
        assert_eq!(table.0.len(), m.names.len());
        for (n, s) in m.names.iter().zip(&table.0) {
            assert_eq!(n.is_some(), s.is_some(), "hole mismatch accepted");
        }
    }
}

/// The header a reader parses before it reads (or allocates for) the chunk
/// table (`ManifestHeader::parse`, store): it refuses the bytes or returns
/// a header that is consistent (count matches the size, within the limits),
/// depends only on its own `len` bytes, and whose implied size is the whole
/// input's when the input is a manifest `decode` accepts.
pub fn manifest_header(data: &[u8]) {
    let Ok(h) = ManifestHeader::parse(data) else {
        assert!(
            Manifest::decode(data).is_err(),
            "decode accepted what the header parser refused"
        );
        return;
    };
    assert!(h.len <= data.len() && h.len <= MAX_HEADER_LEN);
    assert_eq!(
        ManifestHeader::parse(&data[..h.len]).ok().as_ref(),
        Some(&h)
    );
    assert!(h.chunk_count <= MAX_CHUNKS);
    assert_eq!(h.chunk_count, chunk_count(h.image_size, h.chunk_size));
    assert_eq!(
        h.encoded_len(),
        h.len as u64 + 20 + h.chunk_count * (32 + entry_len(h.format) as u64)
    );
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(h.encoded_len(), data.len() as u64);
        assert_eq!(
            (&m.tenant, &m.root, &m.wrapped_key, m.nonce),
            (&h.tenant, &h.root, &h.wrapped_key, h.nonce)
        );
        // The data key the header opens is the one the manifest opens with.
        if let Ok(k) = h.unwrap_key(&FixedKeys) {
            assert_eq!(m.open_with_key(&k).is_ok(), m.open(&FixedKeys).is_ok());
        }
    }
}

/// The decrypted body of a manifest, with a known key: the fuzz input
/// chooses the format version (1 to 3), the chunk names (and holes) and the
/// plaintext key table, which is sealed properly; `open` must return
/// exactly the table when it agrees with the names (and, in version 3, each
/// entry's codec byte and stored length fit its chunk) and refuse it
/// otherwise. A sealed table of the wrong length must be refused by
/// `decode`, and any flipped byte by `decode` or `open`.
pub fn manifest_body(data: &[u8]) {
    let mut u = Input::new(data);
    let first = u.u8();
    let format = u16::from(first >> 4) % 3 + 1;
    let entry = entry_len(format);
    let n = usize::from(first % 9);
    let tail = u64::from(u.u16()) % 4096;
    let image_size = if n == 0 { 0 } else { n as u64 * 4096 - tail };
    let holes = u.u8();
    let names: Vec<Option<ChunkName>> = (0..n)
        .map(|i| {
            if holes >> i & 1 == 1 {
                return None;
            }
            let mut a = [0u8; 32];
            a[0] = i as u8 + 1;
            a[1..].copy_from_slice(&u.padded(31));
            Some(ChunkName(a))
        })
        .collect();
    let len_delta = u.u8();
    let flip = u.u16();
    let mut table = u.padded(n * entry);
    if len_delta >= 240 {
        let extra = usize::from(len_delta - 239);
        if len_delta.is_multiple_of(2) && table.len() >= extra {
            table.truncate(table.len() - extra);
        } else {
            table.resize(table.len() + extra, 0);
        }
    }
    let data_key = DataKey([0x44; 32]);
    let mut m = Manifest {
        format,
        tenant: "t".into(),
        binding: (format >= 2).then(|| lode_chunk::ImageBinding {
            name: "x".into(),
            version: 1,
        }),
        image_size,
        chunk_size: 4096,
        root: "r".into(),
        wrapped_key: wrap_with(&KEK, "t", &data_key).expect("wrap"),
        nonce: [1; 12],
        names,
        sealed: Vec::new(),
    };
    let unsealed = m.encode();
    let header = &unsealed[..unsealed.len() - 4];
    m.sealed = Aes256Gcm::new(&data_key.0.into())
        .encrypt(
            &m.nonce.into(),
            Payload {
                msg: &table,
                aad: header,
            },
        )
        .expect("seal");
    let bytes = m.encode();
    let decoded = Manifest::decode(&bytes);
    if table.len() != n * entry {
        assert!(
            decoded.is_err(),
            "a sealed table of the wrong length was accepted"
        );
        return;
    }
    let decoded = decoded.expect("a well-formed manifest must decode");
    assert_eq!(decoded, m);
    let mut want = Some(Vec::new());
    for (i, name) in m.names.iter().enumerate() {
        let e = &table[i * entry..(i + 1) * entry];
        let zero = e.iter().all(|b| *b == 0);
        let entry = match (name.is_some(), zero) {
            (true, false) => expected_entry(format, e, plain_len(image_size, 4096, i)),
            (false, true) => Some(None),
            _ => None,
        };
        let Some(entry) = entry else {
            want = None;
            break;
        };
        if let Some(w) = want.as_mut() {
            w.push(entry);
        }
    }
    match (want, decoded.open(&FixedKeys)) {
        (Some(w), Ok(t)) => assert_eq!(t.0, w),
        (None, Err(_)) => {}
        (w, got) => panic!("open: expected {w:?}, got {got:?}"),
    }
    if flip != 0 {
        let mut b = bytes.clone();
        let p = usize::from(flip) % b.len();
        b[p] ^= 1 << (flip % 8);
        assert!(
            Manifest::decode(&b)
                .and_then(|m| m.open(&FixedKeys))
                .is_err(),
            "flipping byte {p} went unnoticed"
        );
    }
}

/// What `open` must make of a non-hole key-table entry `e` of chunk
/// format `format` for a chunk of `plain` bytes: `None` = refused. Written
/// from docs/format.md, independently of lode-chunk's parser.
fn expected_entry(format: u16, e: &[u8], plain: u32) -> Option<Option<ChunkSecret>> {
    let (codec, stored_len) = if format >= 3 {
        let stored = u32::from_le_bytes(e[65..69].try_into().expect("4"));
        match e[64] {
            0 if stored == plain => (Codec::Raw, stored),
            1 if stored > 0 && stored < plain => (Codec::Zstd, stored),
            _ => return None,
        }
    } else {
        (Codec::Raw, plain)
    };
    Some(Some(ChunkSecret {
        key: ChunkKey(e[..32].try_into().expect("32")),
        plain_sha: e[32..64].try_into().expect("32"),
        codec,
        stored_len,
        plain_len: plain,
    }))
}

/// A stored chunk as a tier returns it (chunk format v2): the input picks
/// the expected plaintext length, the codec and the stored bytes. The
/// bounded zstd decoder never panics and yields exactly the length asked
/// for or an error; `open_named_chunk` under any entry never yields bytes
/// that fail the plaintext hash; sealing the input and opening it again
/// gives it back, and a tampered stored length or codec is refused.
pub fn chunk_open(data: &[u8]) {
    let mut u = Input::new(data);
    let plain = usize::from(u.u16() % 20_000);
    let codec_byte = u.u8();
    let stored = u.rest();
    if let Ok(out) = codec::decompress(0, stored, plain) {
        assert_eq!(out.len(), plain, "decoded past or short of the cap");
    }
    let want_sha: [u8; 32] = Sha256::digest(stored).into();
    let secret = ChunkSecret {
        key: ChunkKey([0x5a; 32]),
        plain_sha: want_sha,
        codec: Codec::from_byte(codec_byte % 3).unwrap_or(Codec::Zstd),
        stored_len: stored.len() as u32,
        plain_len: plain as u32,
    };
    if let Ok(pt) = open_named_chunk(1, &secret, stored.to_vec()) {
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&pt)), want_sha);
        assert_eq!(pt.len(), plain);
    }
    let sealed = seal_chunk(&Salt([0x33; 32]), stored);
    let s = sealed.secret;
    assert_eq!(s.stored_len as usize, sealed.ciphertext.len());
    assert!(s.codec == Codec::Raw || s.stored_len as usize <= codec::worth_limit(stored.len()));
    let back = open_chunk(2, &sealed.name, &s, sealed.ciphertext.clone()).expect("own chunk");
    assert_eq!(back, stored);
    let mut longer = s;
    longer.stored_len += 1;
    assert!(open_named_chunk(2, &longer, sealed.ciphertext.clone()).is_err());
    let mut other = s;
    other.codec = if s.codec == Codec::Raw {
        Codec::Zstd
    } else {
        Codec::Raw
    };
    if let Ok(pt) = open_named_chunk(2, &other, sealed.ciphertext) {
        assert_eq!(pt, stored, "another codec gave other bytes");
    }
}

/// A sealed working set as read from the store: never panics; whatever
/// opens re-seals and re-opens to the same order.
pub fn workingset_open(data: &[u8]) {
    if let Ok(order) = workingset::open("t", DIGEST, data, &FixedKeys) {
        assert!(order.len() <= workingset::MAX_ENTRIES);
        let again = workingset::seal("t", DIGEST, &order, &FixedKeys).expect("seal");
        assert_eq!(
            workingset::open("t", DIGEST, &again, &FixedKeys).expect("open"),
            order
        );
    }
}

/// The decrypted body of a working set, with a known key: `open` returns
/// the indexes exactly when the body is `count u32 ‖ count × u32`.
pub fn workingset_body(data: &[u8]) {
    let data_key = DataKey([0x57; 32]);
    let wrapped = FixedKeys.wrap("t", &data_key).expect("wrap");
    let nonce = [2u8; 12];
    let mut header = b"LODEWSET".to_vec();
    header.extend_from_slice(&1u16.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&(wrapped.len() as u16).to_le_bytes());
    header.extend_from_slice(&wrapped);
    header.extend_from_slice(&nonce);
    let aad = [
        b"lode-wset\0".as_slice(),
        b"t",
        b"\0",
        DIGEST.as_bytes(),
        &header,
    ]
    .concat();
    let ct = Aes256Gcm::new(&data_key.0.into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: data,
                aad: &aad,
            },
        )
        .expect("seal");
    let mut bytes = header;
    bytes.extend_from_slice(&ct);
    let want = data.get(..4).and_then(|c| {
        let n = u32::from_le_bytes(c.try_into().expect("4")) as usize;
        (n <= workingset::MAX_ENTRIES && data.len() == 4 + 4 * n).then(|| {
            data[4..]
                .chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
                .collect::<Vec<u32>>()
        })
    });
    let got = workingset::open("t", DIGEST, &bytes, &FixedKeys);
    match (&want, &got) {
        (Some(w), Ok(g)) => assert_eq!(w, g),
        (None, Err(_)) => {}
        _ => panic!("working set body: expected {want:?}, got {got:?}"),
    }
    // Bound to its manifest and tenant.
    assert!(workingset::open("t", "sha256:00", &bytes, &FixedKeys).is_err());
    assert!(workingset::open("u", DIGEST, &bytes, &FixedKeys).is_err());
}

/// Wrapped data keys (from manifests and working sets) and the keyring's
/// files: a tenant key file and a salt file holding the fuzz input.
/// Only a 32-byte file is a key; only the right key unwraps.
pub fn keyring(data: &[u8]) {
    if let Ok(k) = unwrap_with(&KEK, "t", data) {
        let again = wrap_with(&KEK, "t", &k).expect("wrap");
        assert_eq!(unwrap_with(&KEK, "t", &again).expect("unwrap"), k);
    }
    let dir = scratch("keyring");
    std::fs::write(dir.join("t.key"), data).expect("write key file");
    std::fs::create_dir_all(dir.join("salts")).expect("mkdir");
    std::fs::write(dir.join("salts").join("ab12.salt"), data).expect("write salt file");
    let ring = Keyring::new(&dir);
    let dk = DataKey([0x11; 32]);
    let wrapped = wrap_with(&KEK, "t", &dk).expect("wrap");
    match ring.unwrap("t", &wrapped) {
        Ok(k) => {
            assert_eq!(data, KEK, "unwrapped with another key");
            assert_eq!(k, dk);
        }
        Err(_) => assert_ne!(data, KEK, "the right key file failed to unwrap"),
    }
    match ring.salt("ab12") {
        Ok(s) => assert_eq!(s.0.as_slice(), data),
        Err(_) => assert_ne!(data.len(), 32, "a 32-byte salt file was refused"),
    }
    // A tenant name from the input never reads outside the key directory.
    if let Ok(t) = std::str::from_utf8(data) {
        if ring.unwrap(t, &wrapped).is_ok() {
            assert_eq!(t, "t");
        }
    }
}
