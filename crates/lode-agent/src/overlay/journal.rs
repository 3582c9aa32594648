//! The bitmap journal of a durable overlay: what keeps acknowledged writes
//! across an agent crash, and flushed writes across a host crash.
//!
//! A write that marks new pages appends one record per changed bitmap word
//! to `NAME.journal` (a `pwrite`, no `fsync`) before it is acknowledged. The
//! record lives in the host's page cache with the page data it describes, so
//! a killed agent process loses neither. A FLUSH syncs the data file, then
//! appends a flush marker and syncs the journal: a marker that reached the
//! disk proves that every record before it and its data did too.
//!
//! Opening replays the snapshot (`NAME.bitmap`) and the journal. The journal
//! header holds the host's boot id: when it is the current one (the agent
//! restarted, the host did not) every record is replayed; after a reboot
//! only records up to the last flush marker are, so a page whose data may
//! not have reached the disk is read from the image again, never as zeros.
//! Then the bitmap is written as a new snapshot (temp file, fsync, rename)
//! and the journal restarts empty.
//!
//! Format (version 1): header `LODEOVJ1` ‖ boot id (16 bytes); records of
//! 16 bytes: word index u64 LE ‖ word u64 LE (the word's bits after the
//! write, OR-ed in at replay); a flush marker is index `u64::MAX` ‖ flush
//! sequence number. A torn last record is ignored.

use super::bitmap::Bitmap;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Magic of the journal file.
const MAGIC: &[u8; 8] = b"LODEOVJ1";
/// Header length: magic and boot id.
const HEADER: u64 = 24;
/// One record.
const RECORD: usize = 16;
/// Index of a flush marker.
const FLUSH_MARK: u64 = u64::MAX;
/// A journal longer than this is folded into a new snapshot at the next flush.
pub const COMPACT_AT: u64 = 1 << 20;

/// The current boot's id (`/proc/sys/kernel/random/boot_id`), or zeros
/// when it cannot be read (then no unflushed record is trusted).
pub fn boot_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let hex: String = s.trim().chars().filter(|c| *c != '-').collect();
        if let Ok(b) = hex::decode(hex) {
            if b.len() == 16 {
                id.copy_from_slice(&b);
            }
        }
    }
    id
}

/// What replaying a journal found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Records applied.
    pub applied: u64,
    /// Records after the last flush marker dropped (written before a host crash).
    pub dropped: u64,
}

/// Applies the journal bytes `b` to `bits` for an image of `words` words,
/// as written under boot `boot` (see the module docs).
pub fn replay(b: &[u8], words: u64, boot: &[u8; 16], bits: &mut Bitmap) -> Replay {
    let mut r = Replay::default();
    if b.len() < HEADER as usize || &b[..8] != MAGIC {
        return r;
    }
    let same_boot = &b[8..24] == boot && boot != &[0u8; 16];
    let mut pending: Vec<(u64, u64)> = Vec::new();
    for rec in b[HEADER as usize..].chunks_exact(RECORD) {
        let index = u64::from_le_bytes(rec[..8].try_into().unwrap_or([0; 8]));
        let word = u64::from_le_bytes(rec[8..].try_into().unwrap_or([0; 8]));
        if index == FLUSH_MARK {
            r.applied += pending.len() as u64;
            for (i, w) in pending.drain(..) {
                bits.merge(i, w);
            }
        } else if index < words {
            pending.push((index, word));
        }
    }
    if same_boot {
        r.applied += pending.len() as u64;
        for (i, w) in pending {
            bits.merge(i, w);
        }
    } else {
        r.dropped = pending.len() as u64;
    }
    r
}

/// An open journal, appended to by writes and flushes.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Where the next record goes.
    end: u64,
    /// Flushes so far (the marker's payload).
    flushes: u64,
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> (PathBuf, std::io::Error) + '_ {
    move |e| (path.to_path_buf(), e)
}

/// An I/O error and the file it concerns.
pub type IoAt = (PathBuf, std::io::Error);

impl Journal {
    /// Recovers `bits` from the snapshot and the journal next to `data_path`
    /// (`.bitmap`, `.journal`), writes a new snapshot, and starts an empty
    /// journal for this boot.
    pub fn recover(
        data_path: &Path,
        words: u64,
        bits: &mut Bitmap,
    ) -> Result<(Journal, Replay), IoAt> {
        let snap = data_path.with_extension("bitmap");
        let jpath = data_path.with_extension("journal");
        match std::fs::read(&snap) {
            Ok(b) => {
                *bits = Bitmap::decode(&b, words).unwrap_or_else(|| {
                    tracing::warn!(path = %snap.display(), "overlay bitmap unreadable: the overlay starts empty");
                    Bitmap::default()
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err((snap, e)),
        }
        let boot = boot_id();
        let replayed = match std::fs::read(&jpath) {
            Ok(b) => replay(&b, words, &boot, bits),
            Err(e) if e.kind() == ErrorKind::NotFound => Replay::default(),
            Err(e) => return Err((jpath, e)),
        };
        if replayed.dropped > 0 {
            tracing::warn!(path = %jpath.display(), dropped = replayed.dropped,
                "the host restarted: pages written after the last flush read as before that flush");
        }
        write_snapshot(&snap, bits)?;
        let journal = Journal::create(&jpath, &boot)?;
        Ok((journal, replayed))
    }

    fn create(path: &Path, boot: &[u8; 16]) -> Result<Journal, IoAt> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io_at(path))?;
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(boot);
        file.write_all_at(&head, 0).map_err(io_at(path))?;
        file.sync_all().map_err(io_at(path))?;
        sync_dir(path)?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            end: HEADER,
            flushes: 0,
        })
    }

    /// Appends the words a write changed (no sync: see the module docs).
    pub fn append(&mut self, changed: &[(u64, u64)]) -> Result<(), IoAt> {
        if changed.is_empty() {
            return Ok(());
        }
        let mut b = Vec::with_capacity(changed.len() * RECORD);
        for (i, w) in changed {
            b.extend_from_slice(&i.to_le_bytes());
            b.extend_from_slice(&w.to_le_bytes());
        }
        self.file
            .write_all_at(&b, self.end)
            .map_err(io_at(&self.path))?;
        self.end += b.len() as u64;
        Ok(())
    }

    /// Appends a flush marker and syncs (the data file is synced before).
    /// Folds a long journal into a new snapshot of `bits`.
    pub fn flushed(&mut self, bits: &Bitmap) -> Result<(), IoAt> {
        self.flushes += 1;
        let mut b = FLUSH_MARK.to_le_bytes().to_vec();
        b.extend_from_slice(&self.flushes.to_le_bytes());
        self.file
            .write_all_at(&b, self.end)
            .map_err(io_at(&self.path))?;
        self.end += RECORD as u64;
        self.file.sync_data().map_err(io_at(&self.path))?;
        if self.end >= COMPACT_AT {
            write_snapshot(&self.path.with_extension("bitmap"), bits)?;
            let fresh = Journal::create(&self.path, &boot_id())?;
            *self = Journal {
                flushes: self.flushes,
                ..fresh
            };
        }
        Ok(())
    }

    /// Length of the journal file in bytes.
    pub fn len(&self) -> u64 {
        self.end
    }

    /// Whether the journal holds no record.
    pub fn is_empty(&self) -> bool {
        self.end == HEADER
    }
}

/// Writes `bits` as the snapshot `path` (temp file, fsync, rename, fsync dir).
pub fn write_snapshot(path: &Path, bits: &Bitmap) -> Result<(), IoAt> {
    let tmp = path.with_extension("bitmap.tmp");
    let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(&bits.encode()).map_err(io_at(&tmp))?;
    f.sync_all().map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_at(path))?;
    sync_dir(path)
}

/// Syncs the directory holding `path` (a rename or create is durable then).
pub fn sync_dir(path: &Path) -> Result<(), IoAt> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_bytes(boot: &[u8; 16], recs: &[(u64, u64)]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(boot);
        for (i, w) in recs {
            b.extend_from_slice(&i.to_le_bytes());
            b.extend_from_slice(&w.to_le_bytes());
        }
        b
    }

    #[test]
    fn replay_trusts_unflushed_records_only_in_the_same_boot() {
        let boot = [7u8; 16];
        let j = journal_bytes(
            &boot,
            &[(1, 0b1), (FLUSH_MARK, 1), (2, 0b10), (1, 0b11), (99, 1)],
        );
        let mut same = Bitmap::default();
        let r = replay(&j, 10, &boot, &mut same);
        assert_eq!((r.applied, r.dropped), (3, 0));
        assert!(same.has(64) && same.has(65) && same.has(129));
        let mut other = Bitmap::default();
        let r = replay(&j, 10, &[8u8; 16], &mut other);
        assert_eq!((r.applied, r.dropped), (1, 2));
        assert!(other.has(64) && !other.has(65) && !other.has(129));
        // A torn last record is ignored; a foreign file changes nothing.
        let mut torn = j.clone();
        torn.truncate(torn.len() - 3);
        let mut t = Bitmap::default();
        replay(&torn, 10, &boot, &mut t);
        assert_eq!(t, same);
        let mut none = Bitmap::default();
        assert_eq!(replay(b"garbage", 10, &boot, &mut none), Replay::default());
        assert_eq!(none.count(), 0);
        // An unknown boot id (zeros) never trusts unflushed records.
        let zero = journal_bytes(&[0u8; 16], &[(1, 1)]);
        let mut z = Bitmap::default();
        assert_eq!(replay(&zero, 10, &[0u8; 16], &mut z).dropped, 1);
    }

    #[test]
    fn recover_append_flush_and_compact() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = d.path().join("o.overlay");
        let mut bits = Bitmap::default();
        let (mut j, _) =
            Journal::recover(&data, 1 << 20, &mut bits).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(j.is_empty());
        let changed = bits.set_range(0, 70);
        j.append(&changed).unwrap_or_else(|e| panic!("{e:?}"));
        // Not flushed: recovered in this boot (agent crash) ...
        let mut again = Bitmap::default();
        let (_j2, r) =
            Journal::recover(&data, 1 << 20, &mut again).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(r.applied, 2);
        assert_eq!(again, bits);
        // ... and compacted into the snapshot: the journal restarts empty.
        assert_eq!(
            std::fs::metadata(data.with_extension("journal"))
                .map(|m| m.len())
                .unwrap_or(0),
            HEADER
        );
        let mut j = _j2;
        for k in 0..(COMPACT_AT / 16 + 10) {
            j.append(&[(k % 1000, 1)])
                .unwrap_or_else(|e| panic!("{e:?}"));
            again.merge(k % 1000, 1);
        }
        j.flushed(&again).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(j.is_empty(), "a long journal is compacted at a flush");
    }
}
