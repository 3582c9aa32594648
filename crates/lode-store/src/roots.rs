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

use crate::bounded::ObjectKind;
use crate::error::{Result, StoreError};
use crate::store::Store;
use lode_chunk::KeyProvider;
use object_store::path::Path;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// Document version (1).
    pub version: u32,
    /// Root id.
    pub id: String,
    /// Current state.
    pub state: RootState,
    /// Id of the salt (held by the key provider, never in the store).
    pub salt_id: String,
    /// Creation time, Unix seconds.
    pub created: u64,
}

fn root_path(id: &str) -> Path {
    Path::from(format!("roots/{id}/root.json"))
}

impl Store {
    /// All roots, oldest first.
    pub async fn roots(&self) -> Result<Vec<RootInfo>> {
        let prefix = Path::from("roots");
        let list = self
            .object_store()
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|source| StoreError::Backend {
                op: "list",
                path: "roots/".into(),
                source,
            })?;
        let mut out = Vec::new();
        for p in list.common_prefixes {
            let Some(id) = p.filename() else { continue };
            let path = root_path(id);
            let Some(bytes) = self.get_opt(&path, ObjectKind::Root).await? else {
                continue;
            };
            let info: RootInfo =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::BadDocument {
                    what: "root",
                    path: path.to_string(),
                    reason: e.to_string(),
                })?;
            out.push(info);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Reads one root.
    pub async fn root(&self, id: &str) -> Result<RootInfo> {
        let path = root_path(id);
        let bytes = self
            .get_opt(&path, ObjectKind::Root)
            .await?
            .ok_or(StoreError::Missing {
                what: "root",
                path: path.to_string(),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::BadDocument {
            what: "root",
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    async fn write_root(&self, r: &RootInfo) -> Result<()> {
        let doc = serde_json::to_vec_pretty(r).map_err(|e| StoreError::Task(e.to_string()))?;
        self.put(&root_path(&r.id), doc.into()).await
    }

    /// A new active root with a fresh salt (not yet written). Ids start with
    /// fixed-width time, so they sort in creation order.
    fn fresh_root(keys: &dyn KeyProvider) -> Result<RootInfo> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let salt_id = keys.new_salt()?;
        let id = format!(
            "r{:010}{:09}-{}",
            now.as_secs(),
            now.subsec_nanos(),
            &salt_id[..8.min(salt_id.len())]
        );
        Ok(RootInfo {
            version: 1,
            id,
            state: RootState::Active,
            salt_id,
            created: now.as_secs(),
        })
    }

    async fn new_root(&self, keys: &dyn KeyProvider) -> Result<RootInfo> {
        let r = Self::fresh_root(keys)?;
        self.write_root(&r).await?;
        Ok(r)
    }

    /// The root that receives new chunks; on an empty store, creates the first.
    /// While a rotation is half done two roots can be active: the newest wins.
    pub async fn active_root(&self, keys: &dyn KeyProvider) -> Result<RootInfo> {
        let roots = self.roots().await?;
        if let Some(r) = roots.iter().rev().find(|r| r.state == RootState::Active) {
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
        let mine = Self::fresh_root(keys)?;
        let doc = serde_json::to_vec_pretty(&mine).map_err(|e| StoreError::Task(e.to_string()))?;
        let claim = Path::from("roots/GENESIS");
        let opts = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        let winner = match self.object_store().put_opts(&claim, doc.into(), opts).await {
            Ok(_) => mine,
            Err(object_store::Error::AlreadyExists { .. }) => {
                let bytes =
                    self.get_opt(&claim, ObjectKind::Root)
                        .await?
                        .ok_or(StoreError::Missing {
                            what: "root claim",
                            path: claim.to_string(),
                        })?;
                serde_json::from_slice(&bytes).map_err(|e| StoreError::BadDocument {
                    what: "root claim",
                    path: claim.to_string(),
                    reason: e.to_string(),
                })?
            }
            // A backend without create-only puts: plain write (a race can then
            // leave two active roots; the newest wins in `active_root`).
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. }) => {
                self.write_root(&mine).await?;
                return Ok(mine);
            }
            Err(source) => {
                return Err(StoreError::Backend {
                    op: "put",
                    path: claim.to_string(),
                    source,
                })
            }
        };
        // The winner may have died between claim and document: either side writes it.
        if self
            .get_opt(&root_path(&winner.id), ObjectKind::Root)
            .await?
            .is_none()
        {
            self.write_root(&winner).await?;
        }
        self.root(&winner.id).await
    }

    /// Creates a new active root with a fresh salt and retires the others.
    /// Returns the new root and the ones it retired.
    pub async fn rotate_root(&self, keys: &dyn KeyProvider) -> Result<(RootInfo, Vec<RootInfo>)> {
        let before = self.roots().await?;
        let new = self.new_root(keys).await?;
        let mut retired = Vec::new();
        for mut r in before.into_iter().filter(|r| r.state == RootState::Active) {
            r.state = RootState::Retired;
            self.write_root(&r).await?;
            retired.push(r);
        }
        Ok((new, retired))
    }

    /// Moves a root one step along its life cycle.
    pub async fn set_root_state(&self, id: &str, next: RootState) -> Result<RootInfo> {
        let mut r = self.root(id).await?;
        if !r.state.can_move_to(next) {
            return Err(StoreError::Roots(format!("root {id}: {:?} → {next:?} is not allowed (one way: active → retired → expired → deleted)", r.state)));
        }
        r.state = next;
        self.write_root(&r).await?;
        Ok(r)
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
