//! Roots: the generations chunks live in, and their one-way life cycle.
//!
//! Invariants (from the published design; GC relies on them):
//! * new chunks are written only into the *active* root;
//! * reads come only from *active* or *retired* roots;
//! * a root moves one way: active → retired → expired → deleted;
//! * a chunk may be deleted only when referenced only by *expired* roots, and a
//!   root is deleted only when all its chunks are.
//!
//! Each root has its own salt, so rotating the root changes every chunk name:
//! the most popular chunks are never one single object for ever.
//!
//! Retiring a root is three conditional writes of its document: *closing*
//! (still active, but pushes that check it now go elsewhere), then every
//! push in flight into it is fenced ([`crate::publish`]), then *retired*.
//! After that no pointer can ever be published into it. A deleted root has
//! no document at all: it is removed last, after its chunks.

use crate::bounded::ObjectKind;
use crate::cond::Expect;
use crate::error::{Result, StoreError};
use crate::store::Store;
use lode_chunk::KeyProvider;
use object_store::path::Path;
use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};

/// Life-cycle state of a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootState {
    /// Receives new chunks; readable.
    Active,
    /// Readable; receives nothing new.
    Retired,
    /// Not readable (a read is an alarm); its chunks may be deleted.
    Expired,
    /// Gone.
    Deleted,
}

impl RootState {
    /// True if `self → next` is allowed (one way, one step at a time).
    pub fn can_move_to(self, next: RootState) -> bool {
        use RootState::*;
        matches!(
            (self, next),
            (Active, Retired) | (Retired, Expired) | (Expired, Deleted)
        )
    }

    /// True if chunks may be read from a root in this state.
    pub fn readable(self) -> bool {
        matches!(self, RootState::Active | RootState::Retired)
    }
}

/// `roots/<id>/root.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootInfo {
    /// Document version (2; version 1 lacks the last three fields).
    pub version: u32,
    /// Root id.
    pub id: String,
    /// Current state.
    pub state: RootState,
    /// Id of the salt (held by the key provider, never in the store).
    pub salt_id: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// When the state last changed, Unix milliseconds (0 in version 1: use `created`).
    #[serde(default)]
    pub changed_ms: u64,
    /// Fencing token of the collector that made the last transition (0: none).
    #[serde(default)]
    pub fence: u64,
    /// An active root being retired: pushes must not use it.
    #[serde(default)]
    pub closing: bool,
}

/// Root document version written.
pub const ROOT_VERSION: u32 = 2;

impl RootInfo {
    /// When the state last changed, Unix milliseconds.
    pub fn since_ms(&self) -> u64 {
        if self.changed_ms > 0 {
            self.changed_ms
        } else {
            self.created.saturating_mul(1000)
        }
    }

    /// True if pushes may write new chunks into it.
    pub fn takes_pushes(&self) -> bool {
        self.state == RootState::Active && !self.closing
    }
}

pub(crate) fn root_path(id: &str) -> Path {
    Path::from(format!("roots/{id}/root.json"))
}

/// Checks a root id: 1–128 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_root_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Roots(format!("invalid root id '{id}'")))
    }
}

/// Every root document with its version, and root prefixes that have
/// objects but no document (left over after a deletion).
#[derive(Clone, Debug, Default)]
pub struct RootListing {
    /// Roots with a document, oldest first.
    pub roots: Vec<(RootInfo, UpdateVersion)>,
    /// Ids of prefixes without a document.
    pub orphans: Vec<String>,
}

fn parse_root(bytes: &[u8], path: &Path) -> Result<RootInfo> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::BadDocument {
        what: "root",
        path: path.to_string(),
        reason: e.to_string(),
    })
}

impl Store {
    /// All roots, oldest first.
    pub async fn roots(&self) -> Result<Vec<RootInfo>> {
        Ok(self
            .list_roots()
            .await?
            .roots
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// Every root document with its version, and document-less prefixes.
    pub async fn list_roots(&self) -> Result<RootListing> {
        let list = self.list_dir("roots").await?;
        let mut out = RootListing::default();
        for p in list.common_prefixes {
            let Some(id) = p.filename() else { continue };
            match self.root_versioned(id).await? {
                Some(r) => out.roots.push(r),
                None => out.orphans.push(id.to_string()),
            }
        }
        out.roots.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        out.orphans.sort();
        Ok(out)
    }

    /// Reads one root.
    pub async fn root(&self, id: &str) -> Result<RootInfo> {
        self.root_versioned(id)
            .await?
            .map(|(r, _)| r)
            .ok_or(StoreError::Missing {
                what: "root",
                path: root_path(id).to_string(),
            })
    }

    /// Reads one root with its version; `None` if it has no document.
    pub async fn root_versioned(&self, id: &str) -> Result<Option<(RootInfo, UpdateVersion)>> {
        let path = root_path(id);
        match self.get_versioned(&path, ObjectKind::Root).await? {
            None => Ok(None),
            Some((b, v)) => Ok(Some((parse_root(&b, &path)?, v))),
        }
    }

    async fn write_root(&self, r: &RootInfo) -> Result<()> {
        let doc = serde_json::to_vec_pretty(r).map_err(|e| StoreError::Task(e.to_string()))?;
        self.put(&root_path(&r.id), doc.into()).await
    }

    /// Replaces a root document read as `v` with `next`; `Ok(false)` if it changed since.
    pub(crate) async fn replace_root(&self, next: &RootInfo, v: &UpdateVersion) -> Result<bool> {
        let doc = serde_json::to_vec_pretty(next).map_err(|e| StoreError::Task(e.to_string()))?;
        self.put_if(
            &root_path(&next.id),
            doc.into(),
            &Expect::Version(v.clone()),
        )
        .await
    }

    /// A new root document (state active) with a fresh salt, not yet written.
    fn fresh_root(&self, keys: &dyn KeyProvider) -> Result<RootInfo> {
        let now_ms = self.env().now_ms();
        let salt_id = keys.new_salt()?;
        let id = format!(
            "r{:010}{:09}-{}",
            now_ms / 1000,
            (now_ms % 1000) * 1_000_000,
            &salt_id[..8.min(salt_id.len())]
        );
        Ok(RootInfo {
            version: ROOT_VERSION,
            id,
            state: RootState::Active,
            salt_id,
            created: now_ms / 1000,
            changed_ms: now_ms,
            fence: 0,
            closing: false,
        })
    }

    pub(crate) async fn new_root(&self, keys: &dyn KeyProvider) -> Result<RootInfo> {
        let mut r = self.fresh_root(keys)?;
        // Ids order roots by age (a rotation retires the roots whose ids
        // sort before the new one): a root made in the same millisecond as
        // the newest, whose random suffix could sort lower, takes the next
        // millisecond.
        if let Some(newest) = self.roots().await?.into_iter().map(|x| x.id).max() {
            if r.id <= newest {
                let ms = newest
                    .get(1..11)
                    .zip(newest.get(11..20))
                    .and_then(|(s, n)| {
                        Some(s.parse::<u64>().ok()? * 1000 + n.parse::<u64>().ok()? / 1_000_000)
                    })
                    .unwrap_or(0)
                    + 1;
                let suffix = r.id.rsplit('-').next().unwrap_or_default().to_string();
                r.id = format!("r{:010}{:09}-{suffix}", ms / 1000, (ms % 1000) * 1_000_000);
            }
        }
        self.write_root(&r).await?;
        Ok(r)
    }

    /// The root that receives new chunks: the newest active root that is not
    /// closing. On an empty store, creates the first.
    pub async fn active_root(&self, keys: &dyn KeyProvider) -> Result<RootInfo> {
        let roots = self.roots().await?;
        if let Some(r) = roots.iter().rev().find(|r| r.takes_pushes()) {
            return Ok(r.clone());
        }
        if roots.is_empty() {
            return self.genesis_root(keys).await;
        }
        Err(StoreError::Roots(
            "no active root; run `lode root rotate` to create one".into(),
        ))
    }

    /// Creates the first root exactly once, even when several first pushes race:
    /// the root document is first claimed as `roots/GENESIS` with a create-only
    /// put; whoever loses adopts the winner's root.
    async fn genesis_root(&self, keys: &dyn KeyProvider) -> Result<RootInfo> {
        let mine = self.fresh_root(keys)?;
        let doc = serde_json::to_vec_pretty(&mine).map_err(|e| StoreError::Task(e.to_string()))?;
        let claim = Path::from("roots/GENESIS");
        let winner = if self.put_if(&claim, doc.into(), &Expect::Absent).await? {
            mine
        } else {
            let bytes =
                self.get_opt(&claim, ObjectKind::Root)
                    .await?
                    .ok_or(StoreError::Missing {
                        what: "root claim",
                        path: claim.to_string(),
                    })?;
            parse_root(&bytes, &claim)?
        };
        // The winner may have died between claim and document: either side
        // writes it, unless it exists (and may since have moved on).
        let doc =
            serde_json::to_vec_pretty(&winner).map_err(|e| StoreError::Task(e.to_string()))?;
        self.put_if(&root_path(&winner.id), doc.into(), &Expect::Absent)
            .await?;
        self.root(&winner.id).await
    }

    /// Creates a new active root with a fresh salt and retires the others
    /// (closing each, fencing the pushes in flight into it, then retiring).
    /// Returns the new root and the ones it retired.
    pub async fn rotate_root(&self, keys: &dyn KeyProvider) -> Result<(RootInfo, Vec<RootInfo>)> {
        let new = self.new_root(keys).await?;
        let retired = self.retire_all_but(&new.id, 0).await?;
        Ok((new, retired))
    }

    /// Retires every active root older than `keep` (with fencing token
    /// `token`). Two concurrent rotations thus leave the newer root active.
    pub(crate) async fn retire_all_but(&self, keep: &str, token: u64) -> Result<Vec<RootInfo>> {
        let mut retired = Vec::new();
        for r in self.roots().await? {
            if r.state == RootState::Active && r.id.as_str() < keep {
                if let Some(r) = self.retire_root(&r.id, token).await? {
                    retired.push(r);
                }
            }
        }
        Ok(retired)
    }

    /// Applies `change` to root `id`'s document with a conditional write,
    /// re-reading on conflict. `change` returns `None` when nothing is to be
    /// done. Refuses (lease lost) when the document carries a fence newer
    /// than `token`.
    pub(crate) async fn update_root(
        &self,
        id: &str,
        token: u64,
        mut change: impl FnMut(&RootInfo) -> Option<RootInfo>,
    ) -> Result<Option<RootInfo>> {
        for _ in 0..crate::pointer::CAS_ATTEMPTS {
            let Some((cur, v)) = self.root_versioned(id).await? else {
                return Ok(None);
            };
            if token > 0 && cur.fence > token {
                return Err(StoreError::LeaseLost {
                    token,
                    reason: format!(
                        "root {id} was changed by a collector with token {}",
                        cur.fence
                    ),
                });
            }
            let Some(mut next) = change(&cur) else {
                return Ok(None);
            };
            next.version = ROOT_VERSION;
            next.fence = cur.fence.max(token);
            if self.replace_root(&next, &v).await? {
                return Ok(Some(next));
            }
        }
        Err(StoreError::Contended {
            what: "root",
            path: root_path(id).to_string(),
            attempts: crate::pointer::CAS_ATTEMPTS,
        })
    }

    /// Retires an active root: closing, fencing pushes in flight, retired.
    /// Returns the retired root (`None` if it was not active).
    pub async fn retire_root(&self, id: &str, token: u64) -> Result<Option<RootInfo>> {
        let closing = self
            .update_root(id, token, |r| {
                (r.state == RootState::Active && !r.closing).then(|| RootInfo {
                    closing: true,
                    ..r.clone()
                })
            })
            .await?;
        let still_active = match closing {
            Some(_) => true,
            None => self
                .root_versioned(id)
                .await?
                .is_some_and(|(r, _)| r.state == RootState::Active),
        };
        if !still_active {
            return Ok(None);
        }
        if !crate::rule_broken("skip-fencing") {
            self.fence_intents(id).await?;
        }
        let now = self.env().now_ms();
        self.update_root(id, token, |r| {
            (r.state == RootState::Active).then(|| RootInfo {
                state: RootState::Retired,
                closing: false,
                changed_ms: now,
                ..r.clone()
            })
        })
        .await
    }

    /// Moves a root one step along its life cycle (conditional write).
    pub async fn set_root_state(&self, id: &str, next: RootState) -> Result<RootInfo> {
        let cur = self.root(id).await?;
        if !cur.state.can_move_to(next) {
            return Err(StoreError::Roots(format!("root {id}: {:?} → {next:?} is not allowed (one way: active → retired → expired → deleted)", cur.state)));
        }
        if next == RootState::Retired {
            return self.retire_root(id, 0).await?.ok_or_else(|| {
                StoreError::Roots(format!("root {id} changed while it was being retired"))
            });
        }
        let now = self.env().now_ms();
        let from = cur.state;
        self.update_root(id, 0, |r| {
            (r.state == from).then(|| RootInfo {
                state: next,
                changed_ms: now,
                ..r.clone()
            })
        })
        .await?
        .ok_or_else(|| {
            StoreError::Roots(format!("root {id} changed while it was moved to {next:?}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_move_one_way() {
        use RootState::*;
        assert!(Active.can_move_to(Retired));
        assert!(Retired.can_move_to(Expired));
        assert!(Expired.can_move_to(Deleted));
        assert!(!Retired.can_move_to(Active));
        assert!(!Active.can_move_to(Expired));
        assert!(!Deleted.can_move_to(Active));
        assert!(Retired.readable() && !Expired.readable());
    }

    #[tokio::test]
    async fn rotate_keeps_one_active() {
        let d = tempfile::tempdir().unwrap();
        let keys = lode_chunk::Keyring::new(d.path());
        let s = Store::open("memory://").unwrap();
        let first = s.active_root(&keys).await.unwrap();
        assert_eq!(s.active_root(&keys).await.unwrap(), first);
        let (second, retired) = s.rotate_root(&keys).await.unwrap();
        assert_eq!(retired.len(), 1);
        let roots = s.roots().await.unwrap();
        assert_eq!(
            roots
                .iter()
                .filter(|r| r.state == RootState::Active)
                .count(),
            1
        );
        assert_eq!(s.active_root(&keys).await.unwrap().id, second.id);
        assert_ne!(first.salt_id, second.salt_id);
        assert!(s
            .set_root_state(&second.id, RootState::Expired)
            .await
            .is_err());
    }
}
