//! Volume sockets: created owned by the volume's user with mode 0600, so a
//! VMM jailed under its own uid reaches its own disks and no one else's.
//!
//! The socket is bound in a private directory (0700), given its mode and
//! owner there, and only then renamed into place: no process can connect
//! to it before it is locked down.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Binding, chmod, rename.
    #[error("socket {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be given to its owner.
    #[error("cannot give socket {path} to {uid}:{gid}: {source} (only an agent running as root can hand sockets to other users)")]
    Chown {
        /// Socket path.
        path: String,
        /// Owner asked for.
        uid: u32,
        /// Group asked for.
        gid: u32,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Binds a unix socket at `path`, mode 0600, owned by `uid:gid`, created in
/// `.tmp` beside it (a private directory on the same file system) and
/// renamed into place. A stale file at `path` (left by a crashed agent) is
/// replaced.
pub fn bind_owned(
    path: &Path,
    uid: u32,
    gid: u32,
) -> Result<tokio::net::UnixListener, SocketError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| SocketError::Io { path: p, source }
    };
    let tmp_dir = path.parent().unwrap_or(Path::new(".")).join(".tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
    std::fs::set_permissions(&tmp_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(&tmp_dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "socket".into());
    let tmp: PathBuf = tmp_dir.join(format!("{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io(&tmp))?;
    let lock_down = || -> Result<(), SocketError> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(|source| {
            SocketError::Chown {
                path: path.display().to_string(),
                uid,
                gid,
                source,
            }
        })?;
        std::fs::rename(&tmp, path).map_err(io(path))
    };
    if let Err(e) = lock_down() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    listener.set_nonblocking(true).map_err(io(path))?;
    tokio::net::UnixListener::from_std(listener).map_err(io(path))
}

/// Binds a unix socket at `path` for the agent's own user only (the
/// control socket, the development listener): mode 0600.
pub fn bind_private(path: &Path) -> Result<tokio::net::UnixListener, SocketError> {
    bind_owned(
        path,
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn sockets_are_private_and_replace_stale_files() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let tmp = d.path().join(".tmp");
        let p = d.path().join("v.sock");
        std::fs::write(&p, b"stale").unwrap_or_else(|e| panic!("{e}"));
        let l = bind_private(&p).unwrap_or_else(|e| panic!("{e}"));
        let md = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(md.uid(), nix::unistd::geteuid().as_raw());
        assert!(tokio::net::UnixStream::connect(&p).await.is_ok());
        drop(l);
        assert_eq!(std::fs::read_dir(&tmp).map(|r| r.count()).unwrap_or(1), 0);
    }
}
