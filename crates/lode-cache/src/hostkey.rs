//! The host key of the disk tier: 32 random bytes in a file outside the
//! cache directory (mode 0600, created on first start through a temp file
//! and a link, so concurrent first starts agree on one key).
//!
//! Three keys are derived from it with HMAC-SHA-256 under distinct labels:
//! the AES-256-GCM key that seals pages, the key that turns `(chunk name,
//! plaintext hash)` into a file name, and the 8-byte key id (the "epoch")
//! written into every page file and the directory's marker.

use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the host key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostKeyError {
    /// Reading, creating or linking the key file failed.
    #[error("host key {path}: {source}")]
    Io {
        /// The key file (or its temp file).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but does not hold exactly 32 bytes.
    #[error("host key {path}: holds {len} bytes, a host key is exactly 32")]
    Length {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The operating system's random source failed.
    #[error("host key {path}: no randomness for a new key: {source}")]
    Random {
        /// The key file that was to be created.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: getrandom::Error,
    },
}

/// The disk tier's host key and the keys derived from it.
#[derive(Clone)]
pub struct HostKey {
    pub(crate) cipher: Arc<LessSafeKey>,
    file_id_key: [u8; 32],
    id: [u8; 8],
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

fn derive(secret: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(label);
    m.finalize().into_bytes().into()
}

impl HostKey {
    /// The key made from `secret` (tests, and [`HostKey::load_or_create`]).
    pub fn from_secret(secret: &[u8; 32]) -> HostKey {
        let aes = derive(secret, b"lode disk tier v1: page sealing key");
        let id = derive(secret, b"lode disk tier v1: key id");
        HostKey {
            cipher: Arc::new(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &aes).expect("a 32-byte AES-256 key"),
            )),
            file_id_key: derive(secret, b"lode disk tier v1: file id key"),
            id: id[..8].try_into().expect("8 of 32 bytes"),
        }
    }

    /// Loads the key in `path`, or creates it (32 random bytes, mode 0600)
    /// when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<HostKey, HostKeyError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| HostKeyError::Io { path: p, source }
        };
        match std::fs::read(path) {
            Ok(b) => {
                let secret: [u8; 32] =
                    b.as_slice().try_into().map_err(|_| HostKeyError::Length {
                        path: path.to_path_buf(),
                        len: b.len(),
                    })?;
                return Ok(HostKey::from_secret(&secret));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path)(e)),
        }
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|source| HostKeyError::Random {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = dir.join(format!(
            ".tmp-host-key-{}-{}",
            std::process::id(),
            hex::encode(&secret[..4])
        ));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&secret)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        // A link, not a rename: if another process created the key first,
        // its key wins and this one is dropped.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(HostKey::from_secret(&secret)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                HostKey::load_or_create(path)
            }
            Err(e) => Err(io(path)(e)),
        }
    }

    /// The key id (epoch) bound into every page file.
    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    /// The file id of a chunk's page file: HMAC of the chunk name and its
    /// plaintext hash, so the directory does not reveal plaintext hashes.
    pub fn file_id(&self, name: &[u8; 32], plain_sha: &[u8; 32]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.file_id_key)
            .expect("HMAC takes any key length");
        m.update(name);
        m.update(plain_sha);
        m.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_then_loaded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state/host.key");
        let a = HostKey::load_or_create(&p).unwrap();
        let b = HostKey::load_or_create(&p).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(
            HostKey::load_or_create(&p),
            Err(HostKeyError::Length { len: 5, .. })
        ));
        assert_ne!(
            HostKey::from_secret(&[1; 32]).id(),
            HostKey::from_secret(&[2; 32]).id()
        );
    }
}
