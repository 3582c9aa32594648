//! LRU-K eviction with K = 2, weighted by bytes.
//!
//! A key's rank is the time of its second most recent access (keys seen only
//! once rank before all others, oldest first). Why K = 2: one access says
//! nothing about popularity — a fill of a chunk that nobody reads again looks
//! like any other — while a second access within the cache's lifetime does;
//! K = 2 keeps most of LRU-K's scan resistance at the cost of one timestamp
//! per key, and K > 2 adapts too slowly when a new image becomes hot.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

#[derive(Debug, Clone, Copy)]
struct Meta {
    last: u64,
    prev: u64,
    weight: u64,
}

/// The policy; the caller keeps the values.
#[derive(Debug)]
pub struct Lru2<K: Ord + Hash + Clone> {
    capacity: u64,
    weight: u64,
    clock: u64,
    meta: HashMap<K, Meta>,
    // (second-last access (0 = none), last access, key): first = next victim.
    order: BTreeSet<(u64, u64, K)>,
}

impl<K: Ord + Hash + Clone> Lru2<K> {
    /// A policy for `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Lru2 {
            capacity,
            weight: 0,
            clock: 0,
            meta: HashMap::new(),
            order: BTreeSet::new(),
        }
    }

    /// Bytes held.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// True if `k` is held.
    pub fn contains(&self, k: &K) -> bool {
        self.meta.contains_key(k)
    }

    /// Records an access; false if `k` is not held.
    pub fn touch(&mut self, k: &K) -> bool {
        self.clock += 1;
        let Some(m) = self.meta.get_mut(k) else {
            return false;
        };
        self.order.remove(&(m.prev, m.last, k.clone()));
        m.prev = m.last;
        m.last = self.clock;
        self.order.insert((m.prev, m.last, k.clone()));
        true
    }

    /// Inserts `k`; returns the evicted keys (or `k` itself if it cannot fit).
    pub fn insert(&mut self, k: K, weight: u64) -> Vec<K> {
        if weight > self.capacity {
            return vec![k];
        }
        self.remove(&k);
        let mut out = Vec::new();
        while self.weight + weight > self.capacity {
            let Some(first) = self.order.iter().next().cloned() else {
                break;
            };
            self.order.remove(&first);
            if let Some(m) = self.meta.remove(&first.2) {
                self.weight -= m.weight;
            }
            out.push(first.2);
        }
        self.clock += 1;
        self.meta.insert(
            k.clone(),
            Meta {
                last: self.clock,
                prev: 0,
                weight,
            },
        );
        self.order.insert((0, self.clock, k));
        self.weight += weight;
        out
    }

    /// Removes `k`.
    pub fn remove(&mut self, k: &K) -> bool {
        match self.meta.remove(k) {
            Some(m) => {
                self.order.remove(&(m.prev, m.last, k.clone()));
                self.weight -= m.weight;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twice_read_keys_outlive_a_scan() {
        let mut c = Lru2::new(10);
        for k in 0..5u32 {
            c.insert(k, 1);
            c.touch(&k);
        }
        for k in 100..200u32 {
            c.insert(k, 1);
        }
        assert!((0..5u32).all(|k| c.contains(&k)));
        assert!(c.weight() <= 10);
    }
}
