//! What sets one sandbox's VMM apart from the others: a user and group id
//! of its own, leased from a range for as long as its QEMU runs, and the
//! check that this user reaches what QEMU opens after it switched to it.
//!
//! QEMU starts as root, opens its kernel, initramfs, disk socket and
//! console, then switches to the leased ids (`-run-with user=UID:GID`, see
//! [`lode_vm::RunSpec::run_as`]). The sandbox's volume socket (the agent's)
//! and its Runtime API socket (the worker's) are owned by that user with
//! mode 0600, so a VMM taken over by its guest cannot connect to another
//! sandbox's disk or Runtime API, nor signal, trace or read the memory of
//! another VMM.
//!
//! A lease is an exclusive `flock` on `DIR/UID` as well as an entry in the
//! worker's own table, so workers sharing a host never hand out the same id
//! twice, whatever ranges they were given. The VMM's keeper holds the lock
//! file open too ([`lode_vm::RunAs::hold`]) until its QEMU is dead, so a
//! successor of a SIGKILLed worker cannot lease an id whose QEMU still runs.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Default first id of the range: far above the ids distributions hand out
/// to users (1000-60000) and to containers' subordinate ids (100000 +
/// 65536 per user).
pub const DEFAULT_BASE: u32 = 1_000_000;
/// Default number of ids in the range.
pub const DEFAULT_COUNT: u32 = 65_536;
/// Where leases are locked by default (one file per id, shared by every
/// worker on the host).
pub const DEFAULT_LOCKS: &str = "/run/lode/vmm-ids";

/// Why no id could be leased, or the VMM's user cannot reach a path.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The range is empty, starts at root or reaches `u32::MAX` (which
    /// `setuid` reads as "unchanged").
    #[error("user id range {base}+{count}: it must hold at least one id, start above 0 and end below 4294967295")]
    Range {
        /// First id.
        base: u32,
        /// Ids in the range.
        count: u32,
    },
    /// Every id of the range is leased (by this worker or another).
    #[error("every user id of {base}..{} is taken by a running VMM (raise --vmm-uid-count or give each worker on the host its own --vmm-uid-base)", u64::from(*.base) + u64::from(*.count))]
    Exhausted {
        /// First id.
        base: u32,
        /// Ids in the range.
        count: u32,
    },
    /// The lock directory or a lock file.
    #[error("user id lock {path}: {source}")]
    Lock {
        /// The file or directory.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The VMM's user cannot reach a path QEMU opens after switching.
    #[error("{path} is out of reach of the VMMs' user {uid}:{gid}: {dir} is {owner}:{group} mode {mode:04o} (give it o+x, or run VMMs as root with --vmm-as-root)")]
    Unreachable {
        /// The path.
        path: String,
        /// The component that stops it.
        dir: String,
        /// Its mode bits.
        mode: u32,
        /// Its owner.
        owner: u32,
        /// Its group.
        group: u32,
        /// The user.
        uid: u32,
        /// Its one group.
        gid: u32,
    },
    /// A user or group of the host has an id of the range: a VMM under
    /// that id could signal its processes and open its files.
    #[error("{kind} '{name}' of {file} has id {id}, inside the VMMs' id range {base}..{} (choose another --vmm-uid-base)", u64::from(*.base) + u64::from(*.count))]
    Taken {
        /// `user` or `group`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Its id.
        id: u32,
        /// The file naming it.
        file: String,
        /// First id of the range.
        base: u32,
        /// Ids in the range.
        count: u32,
    },
    /// A path's metadata.
    #[error("{path}: {source}")]
    Stat {
        /// The path.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// A range of user ids for VMMs (each id is also the VMM's group id).
#[derive(Debug)]
pub struct VmmIds {
    base: u32,
    count: u32,
    locks: PathBuf,
    leased: Mutex<BTreeSet<u32>>,
}

/// One VMM's ids; they are free again when the lease is dropped and the
/// VMM's keeper (which holds the lock file too, [`Lease::run_as`]) has gone
/// with its QEMU.
#[derive(Debug)]
pub struct Lease {
    ids: Arc<VmmIds>,
    id: u32,
    /// The open lock file (`flock`ed): whoever holds a copy keeps the id
    /// taken for every worker on the host.
    lock: Arc<std::os::fd::OwnedFd>,
}

impl Lease {
    /// User id.
    pub fn uid(&self) -> u32 {
        self.id
    }

    /// Group id (the same number).
    pub fn gid(&self) -> u32 {
        self.id
    }

    /// What the VMM runs as: these ids, its keeper holding the lock file.
    pub fn run_as(&self) -> lode_vm::RunAs {
        lode_vm::RunAs {
            uid: self.uid(),
            gid: self.gid(),
            hold: Some(self.lock.clone()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.ids
            .leased
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        // The flock goes with the file.
    }
}

impl VmmIds {
    /// Ids `base..base + count`, leases locked in `locks` (created 0700).
    pub fn new(base: u32, count: u32, locks: &Path) -> Result<Arc<VmmIds>, JailError> {
        if count == 0 || base == 0 || u64::from(base) + u64::from(count) > u64::from(u32::MAX) {
            return Err(JailError::Range { base, count });
        }
        let lock_err = |source| JailError::Lock {
            path: locks.display().to_string(),
            source,
        };
        std::fs::create_dir_all(locks).map_err(lock_err)?;
        std::fs::set_permissions(locks, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(lock_err)?;
        Ok(Arc::new(VmmIds {
            base,
            count,
            locks: locks.to_path_buf(),
            leased: Mutex::new(BTreeSet::new()),
        }))
    }

    /// The lowest id no running VMM of any worker holds.
    pub fn lease(self: &Arc<Self>) -> Result<Lease, JailError> {
        let mut leased = self.leased.lock().unwrap_or_else(|p| p.into_inner());
        for id in self.base..self.base + self.count {
            if leased.contains(&id) {
                continue;
            }
            let path = self.locks.join(id.to_string());
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| JailError::Lock {
                    path: path.display().to_string(),
                    source,
                })?;
            match file.try_lock() {
                Ok(()) => {
                    leased.insert(id);
                    return Ok(Lease {
                        ids: self.clone(),
                        id,
                        lock: Arc::new(file.into()),
                    });
                }
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(JailError::Lock {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        }
        Err(JailError::Exhausted {
            base: self.base,
            count: self.count,
        })
    }
}

/// Checks that no user of `passwd` and no group of `group` (the files of
/// `/etc/passwd` and `/etc/group`'s format) has an id of
/// `base..base + count`. Users known only to other name services (LDAP,
/// sssd) are not seen: the range must be chosen outside theirs.
pub fn check_unused(base: u32, count: u32, passwd: &Path, group: &Path) -> Result<(), JailError> {
    let end = u64::from(base) + u64::from(count);
    for (kind, file) in [("user", passwd), ("group", group)] {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(JailError::Stat {
                    path: file.display().to_string(),
                    source,
                })
            }
        };
        // NAME:PASSWORD:ID:... (a user's id and a group's id are both the
        // third field); lines that do not parse are not ids.
        for line in text.lines() {
            let mut f = line.split(':');
            let (Some(name), Some(id)) = (f.next(), f.nth(1)) else {
                continue;
            };
            let Ok(id) = id.trim().parse::<u32>() else {
                continue;
            };
            if (u64::from(base)..end).contains(&u64::from(id)) {
                return Err(JailError::Taken {
                    kind,
                    name: name.to_string(),
                    id,
                    file: file.display().to_string(),
                    base,
                    count,
                });
            }
        }
    }
    Ok(())
}

/// Checks that user `uid` with the one group `gid` (what QEMU keeps after
/// `-run-with user=`) can search every directory on the way to `path`, and
/// execute `path` itself when `exec`. Root reaches everything.
pub fn check_reachable(path: &Path, uid: u32, gid: u32, exec: bool) -> Result<(), JailError> {
    if uid == 0 {
        return Ok(());
    }
    let stat = |p: &Path| {
        std::fs::metadata(p).map_err(|source| JailError::Stat {
            path: p.display().to_string(),
            source,
        })
    };
    let allowed = |md: &std::fs::Metadata| {
        let mode = md.mode();
        let bit = if md.uid() == uid {
            0o100
        } else if md.gid() == gid {
            0o010
        } else {
            0o001
        };
        mode & bit != 0
    };
    let mut need: Vec<&Path> = path.ancestors().skip(1).collect();
    if exec {
        need.insert(0, path);
    }
    for p in need {
        if p.as_os_str().is_empty() {
            continue;
        }
        let md = stat(p)?;
        if !allowed(&md) {
            return Err(JailError::Unreachable {
                path: path.display().to_string(),
                dir: p.display().to_string(),
                mode: md.mode() & 0o7777,
                owner: md.uid(),
                group: md.gid(),
                uid,
                gid,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_host_user_or_group_inside_the_range_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (passwd, group) = (d.path().join("passwd"), d.path().join("group"));
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/bash\nbad line\nalice:x:1999999:100::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(&group, "root:x:0:\nusers:x:100:\n").unwrap();
        check_unused(2_000_000, 10, &passwd, &group).unwrap();
        // Missing files hold no ids.
        check_unused(2_000_000, 10, &d.path().join("none"), &group).unwrap();
        let e = check_unused(1_999_990, 10, &passwd, &group).unwrap_err();
        assert!(
            matches!(&e, JailError::Taken { kind: "user", name, id: 1_999_999, .. } if name == "alice"),
            "{e}"
        );
        std::fs::write(&group, "vmm:x:2000009:\n").unwrap();
        let e = check_unused(2_000_000, 10, &passwd, &group).unwrap_err();
        assert!(e.to_string().contains("group 'vmm'"), "{e}");
        assert!(e.to_string().contains("2000000..2000010"), "{e}");
        check_unused(2_000_010, 10, &passwd, &group).unwrap();
    }

    #[test]
    fn two_live_sandboxes_never_share_an_id() {
        let d = tempfile::tempdir().unwrap();
        let ids = VmmIds::new(2_000_000, 3, d.path()).unwrap();
        let a = ids.lease().unwrap();
        let b = ids.lease().unwrap();
        let c = ids.lease().unwrap();
        assert_eq!(
            [a.uid(), b.uid(), c.uid()],
            [2_000_000, 2_000_001, 2_000_002]
        );
        let run_as = a.run_as();
        assert_eq!((run_as.uid, run_as.gid), (2_000_000, 2_000_000));
        // It holds a copy of the lock, as a keeper does: let it go.
        drop(run_as);
        // Exhausted: a clear error naming the range.
        let e = ids.lease().unwrap_err();
        assert!(matches!(e, JailError::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains("2000000..2000003"), "{e}");
        // Released on end, and reused after.
        drop(b);
        let b2 = ids.lease().unwrap();
        assert_eq!(b2.uid(), 2_000_001);
        assert!(matches!(ids.lease(), Err(JailError::Exhausted { .. })));
        drop((a, c));
        assert_eq!(ids.lease().unwrap().uid(), 2_000_000);
    }

    #[test]
    fn workers_sharing_the_locks_never_share_an_id() {
        let d = tempfile::tempdir().unwrap();
        let w1 = VmmIds::new(3_000_000, 2, d.path()).unwrap();
        let w2 = VmmIds::new(3_000_000, 2, d.path()).unwrap();
        let a = w1.lease().unwrap();
        let b = w2.lease().unwrap();
        assert_ne!(a.uid(), b.uid());
        assert!(matches!(w2.lease(), Err(JailError::Exhausted { .. })));
        assert!(matches!(w1.lease(), Err(JailError::Exhausted { .. })));
        drop(a);
        assert_eq!(w2.lease().unwrap().uid(), 3_000_000);
    }

    #[test]
    fn bad_ranges_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for (base, count) in [(0, 10), (5, 0), (u32::MAX, 1), (u32::MAX - 5, 10)] {
            let e = VmmIds::new(base, count, d.path()).unwrap_err();
            assert!(matches!(e, JailError::Range { .. }), "{base}+{count}: {e}");
        }
        assert!(VmmIds::new(u32::MAX - 2, 2, d.path()).is_ok());
    }

    #[test]
    fn reachability_follows_each_directory() {
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let sock = inner.join("s.sock");
        std::fs::write(&sock, b"").unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, PermissionsExt::from_mode(m)).unwrap();
        // tempdir is 0700: nobody else gets in.
        mode(d.path(), 0o700);
        let e = check_reachable(&sock, 4_000_000, 4_000_000, false).unwrap_err();
        assert!(
            matches!(&e, JailError::Unreachable { dir, .. } if dir == &d.path().display().to_string()),
            "{e}"
        );
        mode(d.path(), 0o711);
        mode(&d.path().join("a"), 0o711);
        mode(&inner, 0o710);
        // Group access counts only for the VMM's own group.
        std::os::unix::fs::chown(&inner, Some(0), Some(4_000_001)).unwrap();
        assert!(check_reachable(&sock, 4_000_000, 4_000_001, false).is_ok());
        assert!(check_reachable(&sock, 4_000_000, 4_000_000, false).is_err());
        mode(&inner, 0o711);
        assert!(check_reachable(&sock, 4_000_000, 4_000_000, false).is_ok());
        // A program must be executable by the user itself.
        mode(&sock, 0o700);
        assert!(check_reachable(&sock, 4_000_000, 4_000_000, true).is_err());
        mode(&sock, 0o755);
        assert!(check_reachable(&sock, 4_000_000, 4_000_000, true).is_ok());
        assert!(check_reachable(&sock, 0, 0, true).is_ok());
        assert!(matches!(
            check_reachable(&inner.join("none/x"), 4_000_000, 4_000_000, false),
            Err(JailError::Stat { .. })
        ));
    }
}
