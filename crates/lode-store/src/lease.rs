//! The garbage collector's lease: at most one collector deletes at a time.
//!
//! `gc/lease.json` is `{"version":1,"holder":..,"token":N,"expires_ms":..,
//! "acquired_ms":..}`. A collector takes the lease when there is none or it
//! has expired, with a conditional write of the version it read, and the
//! next fencing token (`token + 1`; the token never goes down, because a
//! released lease is kept with `expires_ms` 0). It renews the lease — again
//! conditionally — before every step that deletes or moves a root, whenever
//! less than half of it is left, so a collector that stalled past its lease
//! finds it taken and stops ([`crate::StoreError::LeaseLost`]) before it
//! deletes anything more. Every root transition records the token that
//! made it, and a collector refuses to touch a root that a newer token has
//! touched. The margin assumes clocks of collectors agree to well within
//! half a lease and one store request finishes within it.

use crate::bounded::ObjectKind;
use crate::cond::Expect;
use crate::error::{Result, StoreError};
use crate::store::Store;
use object_store::path::Path;
use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};

/// The lease document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseDoc {
    /// Document version (1).
    pub version: u32,
    /// Who holds it (host, pid, id).
    pub holder: String,
    /// Fencing token: rises by one with every new holder.
    pub token: u64,
    /// Expiry, Unix milliseconds (0: released).
    pub expires_ms: u64,
    /// When this holder took it, Unix milliseconds.
    pub acquired_ms: u64,
}

fn lease_path() -> Path {
    Path::from("gc/lease.json")
}

/// A lease this collector holds.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    doc: LeaseDoc,
    version: UpdateVersion,
    duration_ms: u64,
}

fn parse(b: &[u8]) -> Result<LeaseDoc> {
    serde_json::from_slice(b).map_err(|e| StoreError::BadDocument {
        what: "GC lease",
        path: lease_path().to_string(),
        reason: e.to_string(),
    })
}

impl Store {
    /// Takes the GC lease for `duration_ms`, or fails with
    /// [`StoreError::LeaseHeld`] while another collector holds it.
    pub async fn acquire_lease(&self, holder: &str, duration_ms: u64) -> Result<Lease> {
        for _ in 0..crate::pointer::CAS_ATTEMPTS {
            let now = self.env().now_ms();
            let (token, expect) = match self
                .get_versioned(&lease_path(), ObjectKind::Document)
                .await?
            {
                None => (1, Expect::Absent),
                Some((b, v)) => {
                    let cur = parse(&b)?;
                    if cur.expires_ms > now {
                        return Err(StoreError::LeaseHeld {
                            holder: cur.holder,
                            token: cur.token,
                            remaining_ms: cur.expires_ms - now,
                        });
                    }
                    (cur.token + 1, Expect::Version(v))
                }
            };
            let doc = LeaseDoc {
                version: 1,
                holder: holder.to_string(),
                token,
                expires_ms: now + duration_ms,
                acquired_ms: now,
            };
            let bytes = serde_json::to_vec(&doc).map_err(|e| StoreError::Task(e.to_string()))?;
            if let Some(version) = self.put_cond(&lease_path(), bytes.into(), &expect).await? {
                return Ok(Lease {
                    store: self.clone(),
                    doc,
                    version,
                    duration_ms,
                });
            }
        }
        Err(StoreError::Contended {
            what: "GC lease",
            path: lease_path().to_string(),
            attempts: crate::pointer::CAS_ATTEMPTS,
        })
    }

    /// The lease document as it is now, if any.
    pub async fn lease_doc(&self) -> Result<Option<LeaseDoc>> {
        match self.get_opt(&lease_path(), ObjectKind::Document).await? {
            None => Ok(None),
            Some(b) => Ok(Some(parse(&b)?)),
        }
    }
}

impl Lease {
    /// This holder's fencing token.
    pub fn token(&self) -> u64 {
        self.doc.token
    }

    /// Expiry of the lease as last written, Unix milliseconds.
    pub fn expires_ms(&self) -> u64 {
        self.doc.expires_ms
    }

    async fn write(&mut self, expires_ms: u64) -> Result<()> {
        let mut next = self.doc.clone();
        next.expires_ms = expires_ms;
        let bytes = serde_json::to_vec(&next).map_err(|e| StoreError::Task(e.to_string()))?;
        let expect = Expect::Version(self.version.clone());
        match self
            .store
            .put_cond(&lease_path(), bytes.into(), &expect)
            .await?
        {
            Some(v) => {
                self.version = v;
                self.doc = next;
                Ok(())
            }
            None => {
                let now = self.store.lease_doc().await?;
                Err(StoreError::LeaseLost {
                    token: self.doc.token,
                    reason: match now {
                        Some(d) => format!("now held by '{}' with token {}", d.holder, d.token),
                        None => "the lease document was deleted".into(),
                    },
                })
            }
        }
    }

    /// Renews the lease (a conditional write: fails if it was taken).
    pub async fn renew(&mut self) -> Result<()> {
        let until = self.store.env().now_ms() + self.duration_ms;
        self.write(until).await
    }

    /// Makes sure at least half of the lease is left before a step that
    /// deletes or moves roots: renews it when less is.
    pub async fn keep(&mut self) -> Result<()> {
        let now = self.store.env().now_ms();
        if now + self.duration_ms / 2 < self.doc.expires_ms {
            return Ok(());
        }
        self.renew().await
    }

    /// Releases the lease (kept with expiry 0, so tokens keep rising).
    pub async fn release(mut self) -> Result<()> {
        self.write(0).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_tokens_rise() {
        let s = Store::open("memory://").unwrap();
        let mut a = s.acquire_lease("a", 60_000).await.unwrap();
        assert_eq!(a.token(), 1);
        assert!(matches!(
            s.acquire_lease("b", 60_000).await,
            Err(StoreError::LeaseHeld { token: 1, .. })
        ));
        a.renew().await.unwrap();
        a.keep().await.unwrap();
        a.release().await.unwrap();
        let b = s.acquire_lease("b", 60_000).await.unwrap();
        assert_eq!(b.token(), 2, "a released lease keeps its token");
        assert!(s.acquire_lease("c", 60_000).await.is_err(), "b holds it");
    }

    #[tokio::test]
    async fn a_stalled_holder_loses_an_expired_lease() {
        let s = Store::open("memory://").unwrap();
        let mut a = s.acquire_lease("a", 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let c = s.acquire_lease("c", 60_000).await.unwrap();
        assert_eq!(c.token(), 2);
        assert!(matches!(a.renew().await, Err(StoreError::LeaseLost { .. })));
        assert!(matches!(a.keep().await, Err(StoreError::LeaseLost { .. })));
    }
}
