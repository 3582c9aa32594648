//! S3-FIFO eviction (Yang et al., SOSP 2023), weighted by bytes.
//!
//! Why S3-FIFO: a VM's start-up reads a chunk once or twice and a background
//! prefetch or a full-image copy scans every chunk once. Plain LRU lets such a
//! scan flush the hot set. S3-FIFO admits new keys into a small FIFO (10 % of
//! the budget); only keys read again while there move to the main FIFO, and
//! keys evicted from the small FIFO are remembered in a ghost list so that a
//! quick return goes straight to main. One-hit wonders leave quickly; the hot
//! set stays. It needs no per-hit reordering, only a 2-bit counter.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
struct Entry {
    weight: u64,
    freq: u8,
    in_main: bool,
}

/// Bookkeeping of which keys to keep; the caller stores the values.
#[derive(Debug)]
pub struct S3Fifo<K: Hash + Eq + Clone> {
    capacity: u64,
    small_cap: u64,
    small: VecDeque<K>,
    main: VecDeque<K>,
    ghost: VecDeque<K>,
    ghost_set: HashMap<K, ()>,
    entries: HashMap<K, Entry>,
    small_weight: u64,
    main_weight: u64,
}

impl<K: Hash + Eq + Clone> S3Fifo<K> {
    /// A policy for `capacity` units of weight (bytes).
    pub fn new(capacity: u64) -> Self {
        S3Fifo {
            capacity,
            small_cap: (capacity / 10).max(1),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashMap::new(),
            entries: HashMap::new(),
            small_weight: 0,
            main_weight: 0,
        }
    }

    /// Total weight held.
    pub fn weight(&self) -> u64 {
        self.small_weight + self.main_weight
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Capacity in weight units.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// True if `k` is held.
    pub fn contains(&self, k: &K) -> bool {
        self.entries.contains_key(k)
    }

    /// Records a hit on `k`; returns false if `k` is not held.
    pub fn touch(&mut self, k: &K) -> bool {
        match self.entries.get_mut(k) {
            Some(e) => {
                e.freq = (e.freq + 1).min(3);
                true
            }
            None => false,
        }
    }

    /// Inserts `k` (or updates its weight) and returns the keys evicted to make
    /// room. A key heavier than the whole capacity is not admitted (it is
    /// returned as evicted).
    pub fn insert(&mut self, k: K, weight: u64) -> Vec<K> {
        let mut evicted = Vec::new();
        if weight > self.capacity {
            evicted.push(k);
            return evicted;
        }
        if self.entries.contains_key(&k) {
            self.remove(&k);
        }
        let to_main = self.ghost_set.remove(&k).is_some();
        while self.weight() + weight > self.capacity {
            match self.evict_one() {
                Some(e) => evicted.push(e),
                None => break,
            }
        }
        if to_main {
            self.main.push_front(k.clone());
            self.main_weight += weight;
        } else {
            self.small.push_front(k.clone());
            self.small_weight += weight;
        }
        self.entries.insert(
            k,
            Entry {
                weight,
                freq: 0,
                in_main: to_main,
            },
        );
        evicted
    }

    /// Forgets `k` (e.g. its backing file turned out corrupt).
    pub fn remove(&mut self, k: &K) -> bool {
        let Some(e) = self.entries.remove(k) else {
            return false;
        };
        let q = if e.in_main {
            &mut self.main
        } else {
            &mut self.small
        };
        if let Some(pos) = q.iter().position(|x| x == k) {
            q.remove(pos);
        }
        if e.in_main {
            self.main_weight -= e.weight;
        } else {
            self.small_weight -= e.weight;
        }
        true
    }

    fn remember_ghost(&mut self, k: K) {
        self.ghost.push_front(k.clone());
        self.ghost_set.insert(k, ());
        // The ghost list remembers about as many keys as main holds.
        let limit = self.main.len().max(16) * 2;
        while self.ghost.len() > limit {
            if let Some(old) = self.ghost.pop_back() {
                self.ghost_set.remove(&old);
            }
        }
    }

    fn evict_one(&mut self) -> Option<K> {
        loop {
            if self.small_weight >= self.small_cap || self.main.is_empty() {
                if let Some(k) = self.small.pop_back() {
                    let e = self.entries.get_mut(&k).expect("queued keys have entries");
                    self.small_weight -= e.weight;
                    if e.freq > 0 {
                        e.freq = 0;
                        e.in_main = true;
                        self.main_weight += e.weight;
                        self.main.push_front(k);
                        continue;
                    }
                    self.entries.remove(&k);
                    self.remember_ghost(k.clone());
                    return Some(k);
                }
            }
            let k = self.main.pop_back()?;
            let e = self.entries.get_mut(&k).expect("queued keys have entries");
            if e.freq > 0 {
                e.freq -= 1;
                self.main.push_front(k);
                continue;
            }
            self.main_weight -= e.weight;
            self.entries.remove(&k);
            return Some(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scan_does_not_flush_the_hot_set() {
        let mut c = S3Fifo::new(100);
        for k in 0..20u32 {
            c.insert(k, 1);
            c.touch(&k);
        }
        // A scan of 1,000 one-hit keys.
        for k in 1000..2000u32 {
            c.insert(k, 1);
            for h in 0..20u32 {
                c.touch(&h);
            }
        }
        let kept = (0..20u32).filter(|k| c.contains(k)).count();
        assert!(kept >= 18, "hot keys kept: {kept}");
        assert!(c.weight() <= 100);
    }

    proptest! {
        #[test]
        fn weight_never_exceeds_capacity(ops in proptest::collection::vec((0u16..200, 1u64..40, any::<bool>()), 1..500)) {
            let mut c = S3Fifo::new(300);
            let mut live = std::collections::HashSet::new();
            for (k, w, touch) in ops {
                if touch {
                    c.touch(&k);
                } else {
                    for e in c.insert(k, w) {
                        live.remove(&e);
                    }
                    if c.contains(&k) { live.insert(k); }
                }
                prop_assert!(c.weight() <= 300);
                prop_assert_eq!(c.len(), live.len());
            }
        }
    }
}
