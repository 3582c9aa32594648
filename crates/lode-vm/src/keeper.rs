//! What kills a VMM that switched to its own user when the process that
//! started it dies.
//!
//! A child started with [`crate::prepare::tied_to_us`] gets SIGKILL when
//! the thread that started it dies (`PR_SET_PDEATHSIG`). The kernel clears
//! that setting when a process changes its user or group, which QEMU does
//! for `-run-with user=` (tried: a QEMU that switched outlived its SIGKILLed
//! parent; one that did not died with it). QEMU cannot set it again, and a
//! process under another user cannot be signalled by it.
//!
//! So [`tie`] forks, between fork and exec of QEMU, a *keeper*: a copy of
//! the starting process that stays root, closes every file but the read end
//! of a pipe whose write end only the starting process holds (and the file
//! it was asked to hold, see below), and blocks reading it. When the
//! starting process dies (or drops the [`Tie`]) the read returns and the
//! keeper SIGKILLs QEMU, then waits to die with it. The keeper is QEMU's
//! child with its own parent-death signal, so it goes when QEMU goes (the
//! usual end: QEMU exits or is killed by the worker). It never runs Rust
//! code beyond raw system calls.
//!
//! The keeper also holds the open file given to [`tie`] as `hold` (the
//! worker's `flock` on the VMM's user id), so the lock outlives the
//! starting process and is released only once QEMU is dead: a worker
//! started after a SIGKILLed one never leases an id whose QEMU still runs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

/// The starting side of a keeper: dropping it (or dying) makes the keeper
/// kill its QEMU, if QEMU still runs. Keep it until QEMU has been waited
/// for.
#[derive(Debug)]
pub struct Tie {
    _write: OwnedFd,
    // Only the keeper reads; ours must stay open until the fork (the
    // closure knows it by number), and closes with the tie.
    _read: OwnedFd,
}

/// Arranges for `cmd`'s process (QEMU) to be SIGKILLed when the calling
/// process dies or drops the returned [`Tie`], even after it changed its
/// user: it gets a keeper (see the module documentation), and until it
/// switches user it also dies with the calling thread
/// ([`crate::prepare::tied_to_us`]). The keeper keeps `hold` (an open file
/// of the caller's, close-on-exec so QEMU does not get it) open until QEMU
/// is dead.
#[allow(unsafe_code)]
pub fn tie(cmd: &mut Command, hold: Option<&OwnedFd>) -> std::io::Result<Tie> {
    use std::os::unix::process::CommandExt;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and belong to nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    crate::prepare::tied_to_us(cmd);
    let rd = read.as_raw_fd();
    let held = hold.map_or(-1, |f| f.as_raw_fd());
    // SAFETY: between fork and exec the closure and the keeper make only
    // raw system calls (clone, prctl, getpid, getppid, close_range, read,
    // kill, pause, _exit), all async-signal-safe, and allocate nothing. The keeper
    // is a fork (clone with SIGCHLD only, no shared memory) of a process
    // with one thread, and never returns into Rust code.
    unsafe {
        cmd.pre_exec(move || {
            let qemu = libc::getpid();
            let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0);
            if pid < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if pid == 0 {
                keep(rd, held, qemu);
            }
            Ok(())
        })
    };
    Ok(Tie {
        _write: write,
        _read: read,
    })
}

/// The keeper's life (see the module documentation); never returns.
/// `held` (or -1) stays open with the pipe's read end `rd`.
#[allow(unsafe_code)]
unsafe fn keep(rd: libc::c_int, held: libc::c_int, qemu: libc::pid_t) -> ! {
    // SAFETY: raw system calls on numbers this process owns.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != qemu {
            libc::_exit(0);
        }
        libc::prctl(libc::PR_SET_NAME, c"lode-vmm-keeper".as_ptr());
        // Nothing of the worker's stays open here but these two: not its
        // listeners, not QEMU's console pipes, not another keeper's pipe.
        let (lo, hi) = if held < 0 {
            (rd, rd)
        } else {
            (rd.min(held), rd.max(held))
        };
        let close = |from: libc::c_int, to: libc::c_int| {
            if from <= to {
                libc::syscall(
                    libc::SYS_close_range,
                    from as libc::c_uint,
                    to as libc::c_uint,
                    0,
                );
            }
        };
        close(0, lo - 1);
        close(lo + 1, hi - 1);
        libc::syscall(
            libc::SYS_close_range,
            hi as libc::c_uint + 1,
            libc::c_uint::MAX,
            0,
        );
        let mut b = 0u8;
        loop {
            let n = libc::read(rd, (&mut b as *mut u8).cast(), 1);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break;
        }
        libc::kill(qemu, libc::SIGKILL);
        // Die with QEMU (the parent-death signal), holding `held` until then.
        loop {
            libc::pause();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    /// A child that switched user (as QEMU does) is killed by its keeper
    /// when the tie goes; without one it would live on.
    #[test]
    fn a_child_that_switched_user_dies_with_its_tie() {
        assert!(
            nix_is_root(),
            "this test needs root: its child switches to another user"
        );
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=1000123",
            "--regid=1000123",
            "--clear-groups",
            "sleep",
            "30",
        ]);
        let tie = tie(&mut cmd, None).unwrap();
        let mut child = cmd.spawn().expect("setpriv (util-linux)");
        // Until it has switched, the child still has its parent-death signal.
        let t = Instant::now();
        loop {
            let st = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
            if st.lines().any(|l| l.starts_with("Uid:\t1000123")) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{st}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(child.try_wait().unwrap().is_none());
        drop(tie);
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the child outlived its tie"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    /// The file the keeper holds stays open, with its lock, while the
    /// child lives, and is let go once the child is dead.
    #[test]
    fn the_held_lock_outlives_the_tie_until_the_child_is_dead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let lock = std::fs::File::create(&path).unwrap();
        lock.try_lock().unwrap();
        let lock = OwnedFd::from(lock);
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let tie = tie(&mut cmd, Some(&lock)).unwrap();
        let mut child = cmd.spawn().unwrap();
        // The caller lets go of its own copy: the keeper's keeps the lock.
        drop(lock);
        let other = std::fs::File::open(&path).unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            assert!(
                matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
                "the lock went with the caller's copy"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(child.try_wait().unwrap().is_none());
        drop(tie);
        let t = Instant::now();
        loop {
            match other.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the keeper kept the lock after the child's end"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Released only once the child was killed.
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid cannot fail.
        #[allow(unsafe_code)]
        unsafe {
            libc::geteuid() == 0
        }
    }
}
