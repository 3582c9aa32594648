//! The per-image manifest, format version 3 (versions 1 and 2 are still
//! read; see `docs/format.md`).
//!
//! ```text
//! "LODEMANI"  magic                      8 bytes
//! version     u16 = 3, reserved u16 = 0
//! image_size  u64      chunk_size u32    chunk_count u32
//! tenant      u16 length + bytes
//! name        u16 length + bytes         (v2: the image name it was pushed as)
//! image_ver   u64                        (v2: the image's version number)
//! root        u16 length + bytes
//! wrapped     u16 length + bytes         (the data key, wrapped by the KeyProvider)
//! nonce       12 bytes                   (AES-256-GCM nonce of the sealed table)
//! names       chunk_count × 32 bytes     (SHA-256 of ciphertext; all-zero = hole)
//! sealed      u32 length + AES-256-GCM(data key, nonce, table, aad = every byte above)
//!             table = chunk_count × entry
//!             v3 entry: key 32 ‖ plaintext SHA-256 32 ‖ codec u8 ‖ stored length u32
//!             v1, v2 entry: key 32 ‖ plaintext SHA-256 32 (every chunk raw)
//! ```
//! All integers little-endian. Nothing may follow the sealed table. Because
//! every byte before the table is the GCM associated data and the table ends
//! with the tag, a change anywhere in the file makes [`Manifest::open`] fail.
//! Version 2 puts the image's name and version number in that authenticated
//! header ([`ImageBinding`]), so a manifest cannot be passed off as another
//! image of its tenant, or as a newer version of its own image; version 1
//! has neither field. Version 3 records per chunk how it is stored (chunk
//! format v2: raw or one zstd frame, see [`crate::codec`]) and the stored
//! object's length; versions 1 and 2 describe chunk format v1 only.

use crate::codec::Codec;
pub use crate::crypto::ChunkSecret;
use crate::crypto::{ChunkKey, ChunkName};
use crate::error::ChunkError;
use crate::keys::{check_tenant, DataKey, KeyProvider};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"LODEMANI";
/// Manifest format version lode writes: bound, with codec and stored length
/// per chunk (chunk format v2).
pub const VERSION: u16 = 3;
/// The bound format of chunk format v1 (every chunk raw). Still read;
/// written only on request ([`SealSpec::format`]: compatibility tests, tools).
pub const VERSION_V2: u16 = 2;
/// The first format: no image binding. Still read; written only on request.
pub const VERSION_V1: u16 = 1;

/// Bytes of one key-table entry in a manifest of format `format`.
pub fn entry_len(format: u16) -> usize {
    if format >= VERSION {
        69
    } else {
        64
    }
}

fn known_format(format: u16) -> bool {
    (VERSION_V1..=VERSION).contains(&format)
}
/// Largest manifest lode will parse (a 16 TiB image at 512 KiB chunks is 1 GiB
/// of table; anything larger is refused before allocation).
pub const MAX_CHUNKS: u64 = 1 << 25;
/// Largest image a manifest may describe (16 TiB): larger sizes are refused,
/// so a manifest cannot make an agent size anything by a bogus image size.
pub const MAX_IMAGE_SIZE: u64 = 16 << 40;
/// Smallest chunk size a manifest may declare.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest chunk size a manifest may declare: the chunk format's maximum, and
/// so the largest chunk object a reader ever accepts.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Longest manifest header (everything before the chunk names): fixed fields,
/// four strings of at most 65,535 bytes each (v2), the image version, the nonce.
pub const MAX_HEADER_LEN: usize = 28 + 4 * (2 + u16::MAX as usize) + 8 + 12;

/// Bytes of a manifest's start that hold its root id whenever its tenant,
/// name and root ids are of the lengths lode allows (64, 128, 128 bytes):
/// what [`Manifest::peek_root`] needs.
pub const HEADER_PEEK: usize = 1024;

/// The opened key table: one entry per chunk, `None` for holes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTable(pub Vec<Option<ChunkSecret>>);

/// Which image a manifest belongs to (format v2): the name it was pushed
/// as and its version number, both inside the authenticated header. A
/// reader refuses a manifest whose binding is not the image it asked for,
/// and one older than a version it has already seen.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageBinding {
    /// Image name within the tenant.
    pub name: String,
    /// Version number: each push of the name increments it; migration keeps it.
    pub version: u64,
}

/// What [`Manifest::seal`] writes besides the chunk tables.
#[derive(Clone, Copy, Debug)]
pub struct SealSpec<'a> {
    /// Format version to write: [`VERSION`]; [`VERSION_V2`] or
    /// [`VERSION_V1`] only for compatibility tests and tools (their chunks
    /// must all be raw).
    pub format: u16,
    /// Tenant that owns the image.
    pub tenant: &'a str,
    /// Name and version the manifest is bound to: `Some` for versions 2
    /// and 3, `None` for the unbound version 1.
    pub binding: Option<&'a ImageBinding>,
    /// Image size in bytes.
    pub image_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Root holding the chunks.
    pub root: &'a str,
}

/// The fixed part of a manifest, before its chunk names: enough to know how
/// large the whole manifest must be and to open its data key, so a reader
/// checks both before it buffers (or allocates for) a single chunk entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHeader {
    /// Format version ([`VERSION_V1`] to [`VERSION`]).
    pub format: u16,
    /// Tenant that owns the image.
    pub tenant: String,
    /// Image name and version (format v2; `None` in a v1 manifest).
    pub binding: Option<ImageBinding>,
    /// Image size in bytes.
    pub image_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunks (checked against the image size).
    pub chunk_count: u64,
    /// Root holding the chunks.
    pub root: String,
    /// Data key wrapped by the key provider.
    pub wrapped_key: Vec<u8>,
    /// GCM nonce.
    pub nonce: [u8; 12],
    /// Length of the header in bytes (offset of the chunk names).
    pub len: usize,
}

/// A parsed manifest. Names are readable by anyone; keys need the tenant's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Format version of these bytes ([`VERSION_V1`] to [`VERSION`]).
    pub format: u16,
    /// Tenant that owns the image.
    pub tenant: String,
    /// Image name and version (format v2; `None` in a v1 manifest).
    pub binding: Option<ImageBinding>,
    /// Image size in bytes.
    pub image_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Root holding the chunks.
    pub root: String,
    /// Data key wrapped by the key provider.
    pub wrapped_key: Vec<u8>,
    /// GCM nonce.
    pub nonce: [u8; 12],
    /// Chunk names; `None` = hole (all-zero chunk, never stored).
    pub names: Vec<Option<ChunkName>>,
    /// The sealed key table (ciphertext and tag).
    pub sealed: Vec<u8>,
}

fn bad(msg: impl Into<String>) -> ChunkError {
    ChunkError::BadManifest(msg.into())
}

/// Bounds-checked little-endian reader.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ChunkError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| bad(format!("truncated at {what}")))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self, what: &str) -> Result<u16, ChunkError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32, ChunkError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ChunkError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn str16(&mut self, what: &str) -> Result<String, ChunkError> {
        let n = self.u16(what)? as usize;
        String::from_utf8(self.take(n, what)?.to_vec())
            .map_err(|_| bad(format!("{what} is not UTF-8")))
    }
}

impl ManifestHeader {
    /// Parses the header at the start of `bytes` (what follows it is not
    /// looked at): magic, version, sizes, strings, nonce. Untrusted input:
    /// every length is checked, nothing is allocated by a count.
    pub fn parse(bytes: &[u8]) -> Result<ManifestHeader, ChunkError> {
        let mut r = Reader { b: bytes, pos: 0 };
        if r.take(8, "magic")? != MAGIC {
            return Err(bad("not a lode manifest (bad magic)"));
        }
        let format = r.u16("version")?;
        if !known_format(format) {
            return Err(bad(format!(
                "unsupported version {format} (this lode reads {VERSION_V1} to {VERSION})"
            )));
        }
        if r.u16("reserved")? != 0 {
            return Err(bad("reserved field is not zero"));
        }
        let image_size = r.u64("image size")?;
        let chunk_size = r.u32("chunk size")?;
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(bad(format!("invalid chunk size {chunk_size}")));
        }
        let count = u64::from(r.u32("chunk count")?);
        if image_size > MAX_IMAGE_SIZE {
            return Err(bad(format!(
                "image size {image_size} exceeds the limit of {MAX_IMAGE_SIZE}"
            )));
        }
        if count != chunk_count(image_size, chunk_size) {
            return Err(bad(format!(
                "chunk count {count} does not match image size {image_size}"
            )));
        }
        if count > MAX_CHUNKS {
            return Err(bad(format!(
                "chunk count {count} exceeds the limit of {MAX_CHUNKS} chunks"
            )));
        }
        let tenant = r.str16("tenant")?;
        check_tenant(&tenant)?;
        let binding = if format >= VERSION_V2 {
            let name = r.str16("image name")?;
            check_image_name(&name)?;
            let version = r.u64("image version")?;
            Some(ImageBinding { name, version })
        } else {
            None
        };
        let root = r.str16("root")?;
        let n = r.u16("wrapped key")? as usize;
        let wrapped_key = r.take(n, "wrapped key")?.to_vec();
        let nonce: [u8; 12] = r.take(12, "nonce")?.try_into().expect("12 bytes");
        Ok(ManifestHeader {
            format,
            tenant,
            binding,
            image_size,
            chunk_size,
            chunk_count: count,
            root,
            wrapped_key,
            nonce,
            len: r.pos,
        })
    }

    /// The size in bytes of the whole manifest this header begins:
    /// header, names, table length, sealed table and tag.
    pub fn encoded_len(&self) -> u64 {
        self.len as u64 + 4 + 16 + self.chunk_count * (32 + entry_len(self.format) as u64)
    }

    /// Opens the data key with the tenant's key: the check a reader makes
    /// before it reads (or allocates for) the chunk entries.
    pub fn unwrap_key(&self, provider: &dyn KeyProvider) -> Result<DataKey, ChunkError> {
        provider.unwrap(&self.tenant, &self.wrapped_key)
    }
}

/// Checks a bound image name: 1–128 bytes of `[A-Za-z0-9._:-]`, not
/// starting with `.` (the store's image-name rule).
pub fn check_image_name(n: &str) -> Result<(), ChunkError> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(format!("invalid image name '{n}' in the binding")))
    }
}

/// Plaintext length of chunk `index` of an image: the chunk size, or what
/// is left of the image for its last chunk.
pub fn plain_len(image_size: u64, chunk_size: u32, index: usize) -> u32 {
    let cs = u64::from(chunk_size);
    image_size.saturating_sub(index as u64 * cs).min(cs) as u32
}

/// Whether a chunk stored with `codec` in `stored_len` bytes for
/// `plain_len` plaintext bytes may appear in a manifest of `format`: raw
/// chunks are stored at their length; zstd frames (version 3 only) are
/// non-empty and shorter than the plaintext.
fn form_ok(format: u16, codec: Codec, stored_len: u32, plain_len: u32) -> bool {
    match codec {
        Codec::Raw => stored_len == plain_len,
        Codec::Zstd => format >= VERSION && stored_len > 0 && stored_len < plain_len,
    }
}

/// Number of chunks of an image.
pub fn chunk_count(image_size: u64, chunk_size: u32) -> u64 {
    image_size.div_ceil(u64::from(chunk_size))
}

impl Manifest {
    /// Builds and seals a manifest. `secrets[i]` must be `Some` exactly where
    /// `names[i]` is. The data key and nonce come from `provider.random()`.
    pub fn seal(
        spec: &SealSpec<'_>,
        names: Vec<Option<ChunkName>>,
        secrets: &[Option<ChunkSecret>],
        provider: &dyn KeyProvider,
    ) -> Result<Manifest, ChunkError> {
        let SealSpec {
            format,
            tenant,
            binding,
            image_size,
            chunk_size,
            root,
        } = *spec;
        check_tenant(tenant)?;
        if !known_format(format) || binding.is_some() != (format >= VERSION_V2) {
            return Err(bad(format!(
                "cannot write version {format} with{} a binding",
                if binding.is_some() { "" } else { "out" }
            )));
        }
        if names.len() != secrets.len() || names.len() as u64 != chunk_count(image_size, chunk_size)
        {
            return Err(bad("chunk table does not match the image size"));
        }
        for (i, s) in secrets.iter().enumerate() {
            let Some(s) = s else { continue };
            let plain_len = plain_len(image_size, chunk_size, i);
            if s.plain_len != plain_len || !form_ok(format, s.codec, s.stored_len, plain_len) {
                return Err(bad(format!(
                    "chunk {i}: a {} chunk of {} stored bytes for {} plaintext bytes cannot be written as version {format}",
                    s.codec.as_str(),
                    s.stored_len,
                    s.plain_len
                )));
            }
        }
        if let Some(b) = binding {
            check_image_name(&b.name)?;
        }
        if root.len() > usize::from(u16::MAX) {
            return Err(bad("root id too long"));
        }
        let data_key = DataKey(provider.random()?);
        let wrapped_key = provider.wrap(tenant, &data_key)?;
        let nonce: [u8; 12] = provider.random()?[..12].try_into().expect("12 of 32");
        let mut m = Manifest {
            format,
            tenant: tenant.to_string(),
            binding: binding.cloned(),
            image_size,
            chunk_size,
            root: root.to_string(),
            wrapped_key,
            nonce,
            names,
            sealed: Vec::new(),
        };
        let entry = entry_len(format);
        let mut table = Vec::with_capacity(secrets.len() * entry);
        for s in secrets {
            match s {
                Some(s) => {
                    table.extend_from_slice(&s.key.0);
                    table.extend_from_slice(&s.plain_sha);
                    if format >= VERSION {
                        table.push(s.codec as u8);
                        table.extend_from_slice(&s.stored_len.to_le_bytes());
                    }
                }
                None => table.resize(table.len() + entry, 0),
            }
        }
        let aad = m.header_bytes();
        m.sealed = Aes256Gcm::new(&data_key.0.into())
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &table,
                    aad: &aad,
                },
            )
            .map_err(|_| bad("sealing failed"))?;
        Ok(m)
    }

    /// Everything before the sealed table: the GCM associated data.
    fn header_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.names.len() * 32);
        let str16 = |b: &mut Vec<u8>, s: &[u8]| {
            b.extend_from_slice(&(s.len() as u16).to_le_bytes());
            b.extend_from_slice(s);
        };
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.format.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&self.image_size.to_le_bytes());
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        b.extend_from_slice(&(self.names.len() as u32).to_le_bytes());
        str16(&mut b, self.tenant.as_bytes());
        if self.format >= VERSION_V2 {
            let (name, version) = self
                .binding
                .as_ref()
                .map_or(("", 0), |b| (b.name.as_str(), b.version));
            str16(&mut b, name.as_bytes());
            b.extend_from_slice(&version.to_le_bytes());
        }
        str16(&mut b, self.root.as_bytes());
        str16(&mut b, &self.wrapped_key);
        b.extend_from_slice(&self.nonce);
        for n in &self.names {
            b.extend_from_slice(&n.map(|n| n.0).unwrap_or([0; 32]));
        }
        b
    }

    /// The manifest's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.header_bytes();
        b.extend_from_slice(&(self.sealed.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.sealed);
        b
    }

    /// `sha256:<hex>` of the encoded manifest: its name in the store.
    pub fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// Parses manifest bytes (untrusted input: every length is checked).
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ChunkError> {
        let ManifestHeader {
            format,
            tenant,
            binding,
            image_size,
            chunk_size,
            chunk_count: count,
            root,
            wrapped_key,
            nonce,
            len,
        } = ManifestHeader::parse(bytes)?;
        let mut r = Reader { b: bytes, pos: len };
        let raw = r.take(count as usize * 32, "chunk names")?;
        let names = raw
            .chunks(32)
            .map(|c| {
                let a: [u8; 32] = c.try_into().expect("32 bytes");
                (a != [0; 32]).then_some(ChunkName(a))
            })
            .collect();
        let sealed_len = r.u32("sealed table length")? as usize;
        if sealed_len != count as usize * entry_len(format) + 16 {
            return Err(bad("sealed table has the wrong length"));
        }
        let sealed = r.take(sealed_len, "sealed table")?.to_vec();
        if r.pos != bytes.len() {
            return Err(bad("trailing bytes after the sealed table"));
        }
        Ok(Manifest {
            format,
            tenant,
            binding,
            image_size,
            chunk_size,
            root,
            wrapped_key,
            nonce,
            names,
            sealed,
        })
    }

    /// The root id named in a manifest's header, read from its first bytes
    /// alone (a prefix of [`HEADER_PEEK`] bytes suffices). Unauthenticated:
    /// for the garbage collector, which only needs to know which root an
    /// unreferenced manifest's chunks are in.
    pub fn peek_root(prefix: &[u8]) -> Result<String, ChunkError> {
        let mut r = Reader { b: prefix, pos: 0 };
        if r.take(8, "magic")? != MAGIC {
            return Err(bad("not a lode manifest (bad magic)"));
        }
        let format = r.u16("version")?;
        if !known_format(format) {
            return Err(bad(format!("unsupported version {format}")));
        }
        r.take(2 + 8 + 4 + 4, "sizes")?;
        r.str16("tenant")?;
        if format >= VERSION_V2 {
            r.str16("image name")?;
            r.u64("image version")?;
        }
        r.str16("root")
    }

    /// Opens the key table with the tenant's key, authenticating the whole manifest.
    pub fn open(&self, provider: &dyn KeyProvider) -> Result<KeyTable, ChunkError> {
        self.open_with_key(&provider.unwrap(&self.tenant, &self.wrapped_key)?)
    }

    /// [`Manifest::open`] with the data key already unwrapped (by
    /// [`ManifestHeader::unwrap_key`], before the rest was read).
    pub fn open_with_key(&self, data_key: &DataKey) -> Result<KeyTable, ChunkError> {
        let aad = self.header_bytes();
        let table = Aes256Gcm::new(&data_key.0.into())
            .decrypt(
                &self.nonce.into(),
                Payload {
                    msg: &self.sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| ChunkError::Unauthentic {
                tenant: self.tenant.clone(),
            })?;
        let mut out = Vec::with_capacity(self.names.len());
        for (i, e) in table.chunks(entry_len(self.format)).enumerate() {
            let hole = e.iter().all(|&b| b == 0);
            if self.names[i].is_none() {
                if !hole {
                    return Err(bad(format!("chunk {i}: key table and name table disagree")));
                }
                out.push(None);
                continue;
            }
            let plain_len = plain_len(self.image_size, self.chunk_size, i);
            let (codec, stored_len) = if self.format >= VERSION {
                let byte = e[64];
                let codec = Codec::from_byte(byte)
                    .ok_or_else(|| bad(format!("chunk {i}: unknown codec byte {byte}")))?;
                (
                    codec,
                    u32::from_le_bytes(e[65..69].try_into().expect("4 bytes")),
                )
            } else {
                (Codec::Raw, plain_len)
            };
            if hole || !form_ok(self.format, codec, stored_len, plain_len) {
                return Err(bad(format!(
                    "chunk {i}: entry ({} codec, {stored_len} stored bytes) does not fit its {plain_len} bytes",
                    codec.as_str()
                )));
            }
            out.push(Some(ChunkSecret {
                key: ChunkKey(e[..32].try_into().expect("32 bytes")),
                plain_sha: e[32..64].try_into().expect("32 bytes"),
                codec,
                stored_len,
                plain_len,
            }));
        }
        Ok(KeyTable(out))
    }

    /// Number of non-hole chunks.
    pub fn stored_chunks(&self) -> usize {
        self.names.iter().filter(|n| n.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keyring;
    use crate::ChunkError;
    use proptest::prelude::*;

    fn sample(names: Vec<Option<ChunkName>>, k: &Keyring) -> Manifest {
        let binding = ImageBinding {
            name: "app:v1".into(),
            version: 7,
        };
        sample_with(names, k, Some(&binding), VERSION)
    }

    /// Chunks of 4096 bytes; in version 3, odd chunks are zstd frames of
    /// 1000 + i bytes.
    fn sample_with(
        names: Vec<Option<ChunkName>>,
        k: &Keyring,
        binding: Option<&ImageBinding>,
        format: u16,
    ) -> Manifest {
        let secrets: Vec<Option<ChunkSecret>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let zstd = format >= VERSION && i % 2 == 1;
                n.map(|n| ChunkSecret {
                    key: ChunkKey(n.0),
                    plain_sha: [9; 32],
                    codec: if zstd { Codec::Zstd } else { Codec::Raw },
                    stored_len: if zstd { 1000 + i as u32 } else { 4096 },
                    plain_len: 4096,
                })
            })
            .collect();
        let size = names.len() as u64 * 4096;
        let spec = SealSpec {
            format,
            tenant: "t1",
            binding,
            image_size: size,
            chunk_size: 4096,
            root: "root-1",
        };
        Manifest::seal(&spec, names, &secrets, k).unwrap()
    }

    #[test]
    fn v2_binds_name_and_version() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path());
        let m = sample(vec![Some(ChunkName([1; 32])), None], &k);
        assert_eq!(m.format, VERSION);
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(
            back.binding,
            Some(ImageBinding {
                name: "app:v1".into(),
                version: 7
            })
        );
        assert!(back.open(&k).is_ok());
        // Rebinding the header (another name, another version) breaks the seal.
        let mut other = back.clone();
        other.binding = Some(ImageBinding {
            name: "app:v2".into(),
            version: 7,
        });
        assert!(matches!(
            Manifest::decode(&other.encode()).unwrap().open(&k),
            Err(ChunkError::Unauthentic { .. })
        ));
        let mut newer = back.clone();
        newer.binding = Some(ImageBinding {
            name: "app:v1".into(),
            version: 8,
        });
        assert!(newer.open(&k).is_err());
        let bad = ImageBinding {
            name: "../x".into(),
            version: 1,
        };
        let spec = SealSpec {
            format: VERSION,
            tenant: "t1",
            binding: Some(&bad),
            image_size: 0,
            chunk_size: 4096,
            root: "r",
        };
        assert!(Manifest::seal(&spec, vec![], &[], &k).is_err());
    }

    #[test]
    fn peek_root_reads_the_root_from_the_header() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path());
        let v2 = sample(vec![Some(ChunkName([1; 32]))], &k).encode();
        let v1 = sample_with(vec![None], &k, None, VERSION_V1).encode();
        assert_eq!(Manifest::peek_root(&v2[..200]).unwrap(), "root-1");
        assert_eq!(Manifest::peek_root(&v1).unwrap(), "root-1");
        assert!(Manifest::peek_root(&v2[..20]).is_err());
        assert!(Manifest::peek_root(b"garbage").is_err());
    }

    #[test]
    fn v1_manifests_stay_readable() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path());
        let binding = ImageBinding {
            name: "app".into(),
            version: 2,
        };
        for (format, binding) in [(VERSION_V1, None), (VERSION_V2, Some(&binding))] {
            let names = vec![Some(ChunkName([3; 32])), None, Some(ChunkName([4; 32]))];
            let m = sample_with(names, &k, binding, format);
            let bytes = m.encode();
            assert_eq!(
                &bytes[8..10],
                &format.to_le_bytes(),
                "written as format {format}"
            );
            let h = ManifestHeader::parse(&bytes).unwrap();
            assert_eq!(h.encoded_len(), bytes.len() as u64);
            let back = Manifest::decode(&bytes).unwrap();
            assert_eq!(back.format, format);
            assert_eq!(back.binding.as_ref(), binding);
            assert_eq!(back.encode(), bytes, "re-encodes byte for byte");
            let table = back.open(&k).unwrap();
            let s = table.0[2].unwrap();
            assert_eq!(
                (s.codec, s.stored_len, s.plain_len),
                (Codec::Raw, 4096, 4096)
            );
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x40;
                assert!(
                    Manifest::decode(&b).and_then(|m| m.open(&k)).is_err(),
                    "v{format} byte {i}"
                );
            }
        }
        // Compressed chunks only fit version 3.
        let spec = SealSpec {
            format: VERSION_V2,
            tenant: "t1",
            binding: Some(&binding),
            image_size: 8192,
            chunk_size: 4096,
            root: "r",
        };
        let z = ChunkSecret {
            key: ChunkKey([1; 32]),
            plain_sha: [2; 32],
            codec: Codec::Zstd,
            stored_len: 100,
            plain_len: 4096,
        };
        let names = vec![Some(ChunkName([1; 32])), None];
        assert!(Manifest::seal(&spec, names.clone(), &[Some(z), None], &k).is_err());
        let spec = SealSpec {
            format: VERSION,
            ..spec
        };
        assert!(Manifest::seal(&spec, names.clone(), &[Some(z), None], &k).is_ok());
        let spec = SealSpec {
            binding: None,
            ..spec
        };
        assert!(Manifest::seal(&spec, names, &[Some(z), None], &k).is_err());
    }

    /// Version 3's codec byte and stored length are sealed: changing them
    /// breaks the manifest, and a table entry that does not fit its chunk
    /// (unknown codec, a raw chunk of another length, a "compressed" chunk
    /// not shorter than its plaintext) is refused even when sealed.
    #[test]
    fn v3_entries_are_sealed_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path());
        let names = vec![Some(ChunkName([1; 32])), Some(ChunkName([2; 32])), None];
        let m = sample(names.clone(), &k);
        let t = m.open(&k).unwrap();
        assert_eq!(t.0[1].unwrap().codec, Codec::Zstd);
        assert_eq!(t.0[1].unwrap().stored_len, 1001);
        // Sealed with a bad entry: refused on open.
        let bad_entries = [
            (Codec::Raw, 4000),
            (Codec::Zstd, 4096),
            (Codec::Zstd, 0),
            (Codec::Zstd, 5000),
        ];
        for (codec, stored_len) in bad_entries {
            let mut secrets: Vec<Option<ChunkSecret>> = t.0.clone();
            let s = secrets[0].as_mut().unwrap();
            s.codec = codec;
            s.stored_len = stored_len;
            assert!(Manifest::seal(&spec_of(&m), names.clone(), &secrets, &k).is_err());
        }
        let mut bytes = m.encode();
        // Forge an unknown codec byte under a fresh seal: open refuses it.
        let header = m.header_bytes();
        let key = ManifestHeader::parse(&bytes)
            .unwrap()
            .unwrap_key(&k)
            .unwrap();
        let mut table = Aes256Gcm::new(&key.0.into())
            .decrypt(
                &m.nonce.into(),
                Payload {
                    msg: &m.sealed,
                    aad: &header,
                },
            )
            .unwrap();
        table[64] = 7;
        let resealed = Aes256Gcm::new(&key.0.into())
            .encrypt(
                &m.nonce.into(),
                Payload {
                    msg: &table,
                    aad: &header,
                },
            )
            .unwrap();
        let at = bytes.len() - resealed.len();
        bytes[at..].copy_from_slice(&resealed);
        let err = Manifest::decode(&bytes).unwrap().open(&k).unwrap_err();
        assert!(err.to_string().contains("unknown codec byte 7"), "{err}");
    }

    fn spec_of(m: &Manifest) -> SealSpec<'_> {
        SealSpec {
            format: m.format,
            tenant: &m.tenant,
            binding: m.binding.as_ref(),
            image_size: m.image_size,
            chunk_size: m.chunk_size,
            root: &m.root,
        }
    }

    #[test]
    fn tampering_anywhere_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path());
        let m = sample(
            vec![Some(ChunkName([1; 32])), None, Some(ChunkName([2; 32]))],
            &k,
        );
        let bytes = m.encode();
        assert!(Manifest::decode(&bytes).unwrap().open(&k).is_ok());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            let opened = Manifest::decode(&b).and_then(|m| m.open(&k));
            assert!(opened.is_err(), "flipping byte {i} went unnoticed");
        }
        for cut in [0, 7, 30, bytes.len() - 1] {
            assert!(Manifest::decode(&bytes[..cut]).is_err());
        }
    }

    /// A reader learns the whole manifest's size and opens (or fails to
    /// open) the data key from the header alone: a manifest claiming 2^25
    /// chunks under another tenant's key fails before its names are read.
    #[test]
    fn the_header_alone_gives_the_size_and_the_key() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path());
        let m = sample(vec![Some(ChunkName([1; 32])), None], &k);
        let bytes = m.encode();
        let h = ManifestHeader::parse(&bytes).unwrap();
        assert_eq!(h.encoded_len(), bytes.len() as u64);
        assert_eq!(ManifestHeader::parse(&bytes[..h.len]).unwrap(), h);
        assert!(ManifestHeader::parse(&bytes[..h.len - 1]).is_err());
        let key = h.unwrap_key(&k).unwrap();
        assert_eq!(m.open_with_key(&key).unwrap(), m.open(&k).unwrap());

        // Same structure, 2^25 chunks claimed, wrapped for another tenant key.
        let mut big = m.clone();
        big.image_size = MAX_CHUNKS * 4096;
        let mut header = big.encode();
        header.truncate(h.len);
        header[24..28].copy_from_slice(&(MAX_CHUNKS as u32).to_le_bytes());
        let h = ManifestHeader::parse(&header).unwrap();
        assert_eq!(h.encoded_len(), h.len as u64 + 20 + MAX_CHUNKS * 101);
        let other = Keyring::new(d.path().join("other"));
        other.wrap("t1", &DataKey::random().unwrap()).unwrap();
        assert!(matches!(
            h.unwrap_key(&other),
            Err(ChunkError::WrongKey { .. })
        ));
        header[24..28].copy_from_slice(&(MAX_CHUNKS as u32 + 1).to_le_bytes());
        assert!(ManifestHeader::parse(&header).is_err());
    }

    proptest! {
        #[test]
        fn encode_decode_roundtrip(raw in proptest::collection::vec(proptest::option::of(any::<[u8; 32]>()), 0..200)) {
            let d = tempfile::tempdir().unwrap();
            let k = Keyring::new(d.path());
            let names: Vec<Option<ChunkName>> = raw.into_iter().map(|o| o.filter(|a| *a != [0; 32]).map(ChunkName)).collect();
            let m = sample(names.clone(), &k);
            let back = Manifest::decode(&m.encode()).unwrap();
            prop_assert_eq!(&back, &m);
            let table = back.open(&k).unwrap();
            prop_assert_eq!(table.0.len(), names.len());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Manifest::decode(&bytes);
        }
    }
}
