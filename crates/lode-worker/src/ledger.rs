//! The volumes a worker has attached, in a file, so that a worker that was
//! killed (SIGKILL, a crash) has its successor detach what it left behind:
//! the agent would otherwise keep serving volumes no VM uses.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// A file of volume ids, one per line, rewritten whole on every change
/// (temp file, rename).
#[derive(Debug)]
pub struct Ledger {
    path: Option<PathBuf>,
    ids: Mutex<BTreeSet<String>>,
}

impl Ledger {
    /// A ledger kept in `path` (`None`: in memory only).
    pub fn new(path: Option<PathBuf>) -> Ledger {
        Ledger {
            path,
            ids: Mutex::new(BTreeSet::new()),
        }
    }

    /// The ids a previous worker left in the file (empty without one).
    pub fn leftovers(&self) -> Vec<String> {
        let Some(p) = &self.path else {
            return Vec::new();
        };
        std::fs::read_to_string(p)
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn save(&self, ids: &BTreeSet<String>) {
        let Some(p) = &self.path else { return };
        let tmp = p.with_extension("tmp");
        let body: String = ids.iter().map(|i| format!("{i}\n")).collect();
        let r = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(body.as_bytes()).and_then(|_| f.sync_all()))
            .and_then(|_| std::fs::rename(&tmp, p));
        if let Err(e) = r {
            tracing::warn!(path = %p.display(), error = %e, "cannot record the worker's volumes");
        }
    }

    /// Records volume `id` as attached.
    pub fn add(&self, id: &str) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.insert(id.to_string());
        self.save(&ids);
    }

    /// Records volume `id` as detached.
    pub fn remove(&self, id: &str) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.remove(id);
        self.save(&ids);
    }

    /// Forgets the leftovers (after they were detached).
    pub fn reset(&self) {
        let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        self.save(&ids);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_successor_reads_what_was_left() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w1.volumes");
        let l = Ledger::new(Some(p.clone()));
        l.add("v1");
        l.add("v2");
        l.remove("v1");
        drop(l);
        let next = Ledger::new(Some(p.clone()));
        assert_eq!(next.leftovers(), ["v2"]);
        next.reset();
        assert!(Ledger::new(Some(p)).leftovers().is_empty());
        assert!(Ledger::new(None).leftovers().is_empty());
    }
}
