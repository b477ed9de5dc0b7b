//! A bounded LRU of match results keyed by (kind filter, query).
//!
//! moka's concurrent hash map answers reads without locking; access order is recorded in a
//! buffer applied later, so the read path never waits on a writer. Plain LRU (no TinyLFU
//! admission) keeps behaviour predictable: a new entry is always admitted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

/// `u32::MAX` stands for "no kind filter".
pub type Key = (u32, Box<str>);
/// Pattern ranks that matched, best first.
pub type Value = Arc<[u32]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub size: u64,
    pub capacity: u64,
    pub evictions: u64,
}

pub struct MatchCache {
    inner: Option<Cache<Key, Value>>,
    capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: Arc<AtomicU64>,
}

impl MatchCache {
    /// `capacity == 0` disables caching (every lookup is a miss, nothing is stored).
    pub fn new(capacity: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let inner = (capacity > 0).then(|| {
            let counter = Arc::clone(&evictions);
            Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(EvictionPolicy::lru())
                .eviction_listener(move |_key, _value, cause| {
                    if cause == RemovalCause::Size {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build()
        });
        Self {
            inner,
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions,
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn get(&self, key: &Key) -> Option<Value> {
        let found = self.inner.as_ref().and_then(|c| c.get(key));
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Like [`get`](Self::get) but counts only a hit: a miss is counted by the full lookup
    /// that follows it.
    pub fn get_if_present(&self, key: &Key) -> Option<Value> {
        let found = self.inner.as_ref().and_then(|c| c.get(key));
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Counts a lookup that a disabled cache could not answer.
    pub fn note_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn insert(&self, key: Key, value: Value) {
        if let Some(c) = &self.inner {
            c.insert(key, value);
        }
    }

    /// Applies pending evictions first so `size` and `evictions` are exact.
    pub fn stats(&self) -> CacheStats {
        let size = match &self.inner {
            Some(c) => {
                c.run_pending_tasks();
                c.entry_count()
            }
            None => 0,
        };
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            size,
            capacity: self.capacity,
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// Drops every entry; counters are kept (they describe the cache's whole life).
    pub fn clear(&self) {
        if let Some(c) = &self.inner {
            c.invalidate_all();
            c.run_pending_tasks();
        }
    }
}
