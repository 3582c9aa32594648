//! Output temp files that never outlive their writer for long.
//!
//! A writer of a large output (`lode flatten -o OUT`, `lode pull -o OUT`, the
//! image `lode push` flattens first) writes a temp file named
//! `.<OUT name>.<random>.lode-tmp` beside OUT, holds an `flock` on it while it
//! lives, and renames it onto OUT only when the output is complete and
//! synced. On an error, or when the command is interrupted and unwinds, the
//! file is removed ([`LockedTemp`] drops it). A run killed outright (SIGKILL,
//! power loss) cannot remove anything; its file stays, unlocked, and the next
//! writer of the same OUT removes it ([`LockedTemp::beside`] sweeps first). A
//! file whose lock is held belongs to a live writer and is never touched.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Suffix of every temp file made here.
pub const TEMP_SUFFIX: &str = ".lode-tmp";

/// A locked temp file beside its final path.
#[derive(Debug)]
pub struct LockedTemp {
    tmp: tempfile::NamedTempFile,
}

/// The directory holding `out` (`.` for a bare file name).
fn dir_of(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The temp-file prefix of `out`: `.<file name>.`.
fn prefix_of(out: &Path) -> String {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.")
}

/// Removes the temp files in `dir` named `<prefix>*<suffix>` whose writer's
/// lock is gone (killed runs'). Returns how many it removed. Best effort:
/// what cannot be opened or removed is left alone.
pub fn sweep(dir: &Path, prefix: &str, suffix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if !(n.starts_with(prefix) && n.ends_with(suffix)) {
            continue;
        }
        let Ok(f) = File::open(e.path()) else {
            continue;
        };
        if f.try_lock().is_ok() && std::fs::remove_file(e.path()).is_ok() {
            tracing::info!(path = %e.path().display(), "removed a killed run's temp file");
            removed += 1;
        }
    }
    removed
}

impl LockedTemp {
    /// A new temp file beside `out`, after sweeping the ones killed writers
    /// of `out` left there.
    pub fn beside(out: &Path) -> io::Result<LockedTemp> {
        let dir = dir_of(out);
        let prefix = prefix_of(out);
        sweep(&dir, &prefix, TEMP_SUFFIX);
        Self::create_in(&dir, &prefix)
    }

    /// A new temp file `<prefix><random>.lode-tmp` in `dir` (no sweep; see
    /// [`sweep`]).
    pub fn create_in(dir: &Path, prefix: &str) -> io::Result<LockedTemp> {
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(dir)?;
        // Held until the file is renamed or dropped (or the process dies):
        // how a later run tells a live writer's file from a killed one's.
        tmp.as_file().try_lock().map_err(io::Error::from)?;
        Ok(LockedTemp { tmp })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// Its current path.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Syncs the file and renames it onto `out`.
    pub fn persist(self, out: &Path) -> io::Result<()> {
        self.tmp.as_file().sync_all()?;
        self.tmp.persist(out).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn sweeps_only_unlocked_files_of_the_same_output() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("img.ext4");
        // A killed writer's file (unlocked), a live writer's (locked), another
        // output's, and an unrelated file.
        std::fs::write(d.path().join(".img.ext4.dead01.lode-tmp"), "x").unwrap();
        let live = LockedTemp::create_in(d.path(), ".img.ext4.").unwrap();
        std::fs::write(d.path().join(".other.dead02.lode-tmp"), "x").unwrap();
        std::fs::write(d.path().join("keep"), "x").unwrap();
        let mine = LockedTemp::beside(&out).unwrap();
        let left = names(d.path());
        assert!(!left.contains(&".img.ext4.dead01.lode-tmp".to_string()));
        assert!(left.contains(&".other.dead02.lode-tmp".to_string()));
        assert!(left.contains(&"keep".to_string()));
        assert!(mine.path().exists() && live.path().exists());
        std::fs::write(mine.path(), "done").unwrap();
        mine.persist(&out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"done");
        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists(), "a dropped temp file is removed");
    }
}
