//! Fill leases: one client fills a missing chunk, the others wait for it.
//!
//! `POST /l/<key>?ttl_ms=N` → `201` with a token (the caller fetches the
//! chunk from the store and fills the fleet) or `409` (another client holds
//! the lease). `GET /l/<key>?wait_ms=N` waits until the lease ends (`404`)
//! or the time is up (`200`, still held). `DELETE /l/<key>?token=T` ends the
//! lease if `T` still holds it. A lease ends by itself after its TTL, so a
//! holder that dies stalls the waiters at most that long.
//!
//! The table is bounded ([`MAX_LEASES`]); when it is full of live leases a
//! new one is refused (`503`) and that client fills uncoordinated.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Leases held at once, all keys together.
pub const MAX_LEASES: usize = 65_536;
/// Longest TTL granted (a longer request is cut to this).
pub const MAX_TTL: Duration = Duration::from_secs(60);
/// Longest a `GET /l/<key>?wait_ms=` waits.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Entry {
    token: u64,
    until: Instant,
    ended: Arc<Notify>,
}

/// What [`Leases::acquire`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The caller holds the lease; the token releases it.
    Won(u64),
    /// Someone else holds it.
    Held,
    /// The table is full of live leases.
    Full,
}

/// The lease table of one node.
#[derive(Debug, Default)]
pub struct Leases {
    // std Mutex: map operations only, never held across an await.
    map: Mutex<HashMap<String, Entry>>,
    next: AtomicU64,
    /// Leases granted, refused because held, and refused because full.
    pub(crate) granted: AtomicU64,
    pub(crate) contended: AtomicU64,
    pub(crate) full: AtomicU64,
    /// Leases that ran out their TTL (the holder never released them).
    pub(crate) expired: AtomicU64,
}

impl Leases {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lease `key` for `ttl` (at most [`MAX_TTL`]) unless a live
    /// one exists.
    pub fn acquire(&self, key: &str, ttl: Duration) -> Grant {
        let now = Instant::now();
        let mut map = self.map();
        if let Some(e) = map.get(key) {
            if e.until > now {
                self.contended.fetch_add(1, Ordering::Relaxed);
                return Grant::Held;
            }
            self.expired.fetch_add(1, Ordering::Relaxed);
            if let Some(old) = map.remove(key) {
                old.ended.notify_waiters();
            }
        }
        if map.len() >= MAX_LEASES {
            let before = map.len();
            map.retain(|_, e| {
                let live = e.until > now;
                if !live {
                    e.ended.notify_waiters();
                }
                live
            });
            self.expired
                .fetch_add((before - map.len()) as u64, Ordering::Relaxed);
            if map.len() >= MAX_LEASES {
                self.full.fetch_add(1, Ordering::Relaxed);
                return Grant::Full;
            }
        }
        let token = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        map.insert(
            key.to_string(),
            Entry {
                token,
                until: now + ttl.min(MAX_TTL),
                ended: Arc::new(Notify::new()),
            },
        );
        self.granted.fetch_add(1, Ordering::Relaxed);
        Grant::Won(token)
    }

    /// Ends the lease `key` if `token` holds it; true if it did.
    pub fn release(&self, key: &str, token: u64) -> bool {
        let mut map = self.map();
        if map.get(key).is_some_and(|e| e.token == token) {
            if let Some(e) = map.remove(key) {
                e.ended.notify_waiters();
            }
            return true;
        }
        false
    }

    /// The live lease on `key`: when it expires and what signals its end.
    fn live(&self, key: &str) -> Option<(Instant, Arc<Notify>)> {
        let map = self.map();
        map.get(key)
            .filter(|e| e.until > Instant::now())
            .map(|e| (e.until, e.ended.clone()))
    }

    /// Waits at most `max` (cut to [`MAX_WAIT`]) for the lease `key` to end;
    /// true if it did (or none was held).
    pub async fn wait(&self, key: &str, max: Duration) -> bool {
        let deadline = Instant::now() + max.min(MAX_WAIT);
        loop {
            let Some((until, ended)) = self.live(key) else {
                return true;
            };
            let notified = ended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Released between `live` and `enable`: look again.
            if self.live(key).is_none_or(|(u, _)| u != until) {
                continue;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until.min(deadline)) => {}
            }
        }
    }

    /// Live leases (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when no lease is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_winner_then_release_wakes_waiters() {
        let l = Arc::new(Leases::default());
        let Grant::Won(t) = l.acquire("k", Duration::from_secs(5)) else {
            panic!("first acquire must win");
        };
        assert_eq!(l.acquire("k", Duration::from_secs(5)), Grant::Held);
        let w = {
            let l = l.clone();
            tokio::spawn(async move { l.wait("k", Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!l.release("k", t + 1), "a wrong token releases nothing");
        assert!(l.release("k", t));
        assert!(w.await.unwrap());
        assert!(matches!(
            l.acquire("k", Duration::from_secs(5)),
            Grant::Won(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_holder_stalls_waiters_only_for_the_ttl() {
        let l = Leases::default();
        assert!(matches!(
            l.acquire("k", Duration::from_secs(2)),
            Grant::Won(_)
        ));
        let t = Instant::now();
        assert!(l.wait("k", Duration::from_secs(30)).await);
        assert_eq!(t.elapsed(), Duration::from_secs(2));
        assert!(matches!(
            l.acquire("k", Duration::from_secs(2)),
            Grant::Won(_)
        ));
        assert_eq!(l.expired.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_bounded() {
        let l = Leases::default();
        l.acquire("k", Duration::from_secs(60));
        let t = Instant::now();
        assert!(!l.wait("k", Duration::from_millis(300)).await);
        assert_eq!(t.elapsed(), Duration::from_millis(300));
        assert!(!l.wait("k", Duration::from_secs(3600)).await);
        assert_eq!(t.elapsed(), Duration::from_millis(300) + MAX_WAIT);
    }

    #[tokio::test]
    async fn the_table_is_bounded() {
        let l = Leases::default();
        for i in 0..MAX_LEASES {
            assert!(matches!(
                l.acquire(&format!("k{i}"), Duration::from_secs(60)),
                Grant::Won(_)
            ));
        }
        assert_eq!(l.acquire("one-more", Duration::from_secs(60)), Grant::Full);
        assert_eq!(l.len(), MAX_LEASES);
    }
}
