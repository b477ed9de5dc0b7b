//! HNSW approximate nearest-neighbour index (Malkov & Yashunin, 2016) over unit vectors,
//! distance `1 - dot(a, b)` (cosine distance once the caller has normalised the vectors).
//!
//! * Slots are dense `u32`s assigned in insertion order and never reused; [`Hnsw::remove`]
//!   only tombstones a slot, which stays a graph node so the graph keeps its connectivity.
//!   Rebuild the index once many slots are removed: a search has to walk past tombstones
//!   to collect `ef` live candidates, so its cost grows roughly with `len / live`.
//! * Searching takes `&self` and the type is `Send + Sync`, so any number of threads can
//!   search under a `RwLock` read guard. Each thread keeps its own visited-set scratch
//!   (4 bytes per slot of the largest index it has searched), reused across queries.
//! * Vectors of the wrong length are a caller bug: `insert`, `search` and [`exact_search`]
//!   panic on them with a message naming both lengths.
//! * Results are deterministic: same inserts, removes and seed give the same results on
//!   the same machine; ties in distance are broken by slot ascending.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Levels above this are never drawn; even with `m = 2` reaching it needs ~2^31 inserts.
const MAX_LEVEL: usize = 31;

/// A slot with its distance to the current query; ordered by distance, then slot, so every
/// heap and sort in here is a total, deterministic order.
#[derive(Clone, Copy, Debug)]
struct Cand {
    dist: f32,
    slot: u32,
}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist
            .total_cmp(&other.dist)
            .then(self.slot.cmp(&other.slot))
    }
}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Cand {}

/// Per-thread search buffers, so a query allocates nothing proportional to the index.
struct Scratch {
    /// `visited[slot] == epoch` marks a slot seen by the current search; bumping the epoch
    /// clears the whole set in O(1).
    visited: Vec<u32>,
    epoch: u32,
    candidates: BinaryHeap<Reverse<Cand>>,
    results: BinaryHeap<Cand>,
    /// Unvisited neighbours of the node being expanded.
    fresh: Vec<u32>,
}

impl Scratch {
    const fn new() -> Self {
        Self {
            visited: Vec::new(),
            epoch: 0,
            candidates: BinaryHeap::new(),
            results: BinaryHeap::new(),
            fresh: Vec::new(),
        }
    }

    fn begin(&mut self, slots: usize) {
        if self.visited.len() < slots {
            self.visited.resize(slots.next_power_of_two(), 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited.fill(0);
            self.epoch = 1;
        }
        self.candidates.clear();
        self.results.clear();
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

/// Hierarchical navigable small-world graph over `dim`-dimensional unit vectors.
#[derive(Clone)]
pub struct Hnsw {
    dim: usize,
    /// Link capacity on layers >= 1, and the number of links a new node picks on each layer.
    m: usize,
    /// Link capacity on layer 0.
    m0: usize,
    ef_construction: usize,
    level_mult: f64,
    rng: u64,
    /// Slot `s` is `vectors[s * dim..(s + 1) * dim]`.
    vectors: Vec<f32>,
    levels: Vec<u8>,
    /// Layer 0, stride `m0 + 1` per slot: link count, then the links.
    links0: Vec<u32>,
    /// Per slot, where its layer-1 block starts in `upper` (its layers are consecutive).
    upper_start: Vec<u32>,
    /// Layers >= 1, stride `m + 1` per (slot, layer): link count, then the links. Only
    /// ~1/m of the slots have any, so this is small next to `links0`.
    upper: Vec<u32>,
    /// Tombstones, one bit per slot.
    removed: Vec<u64>,
    n_removed: usize,
    entry: Option<u32>,
    max_level: usize,
}

impl std::fmt::Debug for Hnsw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hnsw")
            .field("dim", &self.dim)
            .field("m", &self.m)
            .field("ef_construction", &self.ef_construction)
            .field("len", &self.len())
            .field("live", &self.live())
            .field("max_level", &self.max_level)
            .finish_non_exhaustive()
    }
}

impl Hnsw {
    /// An empty index. `m` (clamped to at least 2) is the link capacity on layers >= 1 and
    /// twice that on layer 0; `ef_construction` (raised to at least `m`) is the beam width
    /// while inserting. `seed` drives the level draws, so it fixes the graph.
    ///
    /// # Panics
    /// If `dim` is 0.
    pub fn new(dim: usize, m: usize, ef_construction: usize, seed: u64) -> Self {
        assert!(dim > 0, "Hnsw::new: dim must be at least 1");
        let m = m.max(2);
        Self {
            dim,
            m,
            m0: 2 * m,
            ef_construction: ef_construction.max(m),
            level_mult: 1.0 / (m as f64).ln(),
            rng: seed,
            vectors: Vec::new(),
            levels: Vec::new(),
            links0: Vec::new(),
            upper_start: Vec::new(),
            upper: Vec::new(),
            removed: Vec::new(),
            n_removed: 0,
            entry: None,
            max_level: 0,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Link capacity on layers >= 1 (after clamping).
    pub fn m(&self) -> usize {
        self.m
    }

    /// Beam width used while inserting (after clamping).
    pub fn ef_construction(&self) -> usize {
        self.ef_construction
    }

    /// Slots ever inserted, removed ones included.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    /// Slots not removed.
    pub fn live(&self) -> usize {
        self.len() - self.n_removed
    }

    /// No slot was ever inserted.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Adds a unit vector and returns its slot: 0, 1, 2, .. in insertion order.
    ///
    /// # Panics
    /// If `vector.len() != dim()`, or the index already holds `u32::MAX` slots.
    pub fn insert(&mut self, vector: &[f32]) -> u32 {
        assert_eq!(
            vector.len(),
            self.dim,
            "Hnsw::insert: vector has {} dimensions, the index {}",
            vector.len(),
            self.dim
        );
        let slot = u32::try_from(self.len())
            .ok()
            .filter(|&s| s < u32::MAX)
            .expect("Hnsw::insert: index is full (u32 slots)");
        let level = self.random_level();
        self.vectors.extend_from_slice(vector);
        self.levels.push(level as u8);
        self.links0.resize(self.links0.len() + self.m0 + 1, 0);
        let start = u32::try_from(self.upper.len()).expect("Hnsw::insert: upper layers overflow");
        self.upper_start.push(start);
        self.upper
            .resize(self.upper.len() + level * (self.m + 1), 0);
        if slot % 64 == 0 {
            self.removed.push(0);
        }

        let Some(entry) = self.entry else {
            self.entry = Some(slot);
            self.max_level = level;
            return slot;
        };
        let mut ep = Cand {
            dist: distance(vector, self.vector(entry)),
            slot: entry,
        };
        for layer in (level + 1..=self.max_level).rev() {
            ep = self.greedy(vector, ep, layer);
        }
        let mut entries = vec![ep];
        for layer in (0..=level.min(self.max_level)).rev() {
            // The new node has no in-links yet, so it never shows up in its own beam.
            let found = self.search_layer(vector, &entries, self.ef_construction, layer, false);
            let chosen = self.select_neighbours(&found, self.m);
            self.set_links(slot, layer, &chosen);
            let cap = if layer == 0 { self.m0 } else { self.m };
            for &nb in &chosen {
                self.add_link(nb, slot, layer, cap);
            }
            entries = found;
        }
        if level > self.max_level {
            self.max_level = level;
            self.entry = Some(slot);
        }
        slot
    }

    /// Tombstones `slot`: it stays in the graph but no search returns it again. Idempotent.
    ///
    /// # Panics
    /// If `slot >= len()`.
    pub fn remove(&mut self, slot: u32) {
        self.check_slot(slot, "remove");
        let (word, bit) = (slot as usize / 64, slot % 64);
        if self.removed[word] & (1 << bit) == 0 {
            self.removed[word] |= 1 << bit;
            self.n_removed += 1;
        }
    }

    /// # Panics
    /// If `slot >= len()`.
    pub fn is_removed(&self, slot: u32) -> bool {
        self.check_slot(slot, "is_removed");
        self.removed_unchecked(slot)
    }

    /// The vector stored in `slot` (removed slots keep theirs).
    ///
    /// # Panics
    /// If `slot >= len()`.
    pub fn vector(&self, slot: u32) -> &[f32] {
        let start = slot as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    /// Up to `k` nearest live slots as `(slot, distance)`, nearest first, ties by slot
    /// ascending. The beam holds `max(ef, k)` live candidates. Empty when `k == 0` or no
    /// slot is live.
    ///
    /// # Panics
    /// If `query.len() != dim()`.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Vec<(u32, f32)> {
        self.search_from(query, k, ef, &[])
    }

    /// [`Hnsw::search`] whose layer-0 beam also starts from `seeds`: slots already known
    /// to be relevant (e.g. the memories a full-text ranking found). The graph is walked
    /// from them as from the entry point, so their neighbourhoods are searched even when
    /// the greedy descent lands elsewhere: out-of-distribution vectors (one odd memory
    /// among thousands of alike ones) are poorly linked, and a descent rarely reaches them.
    /// Removed seeds are walked through but never returned.
    ///
    /// # Panics
    /// If `query.len() != dim()` or a seed is not below `len()`.
    pub fn search_from(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        seeds: &[u32],
    ) -> Vec<(u32, f32)> {
        assert_eq!(
            query.len(),
            self.dim,
            "Hnsw::search: query has {} dimensions, the index {}",
            query.len(),
            self.dim
        );
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        if k == 0 || self.live() == 0 {
            return Vec::new();
        }
        let mut ep = Cand {
            dist: distance(query, self.vector(entry)),
            slot: entry,
        };
        for layer in (1..=self.max_level).rev() {
            ep = self.greedy(query, ep, layer);
        }
        let mut entries = Vec::with_capacity(seeds.len() + 1);
        entries.push(ep);
        for &seed in seeds {
            self.check_slot(seed, "search_from");
            entries.push(Cand {
                dist: distance(query, self.vector(seed)),
                slot: seed,
            });
        }
        let mut found = self.search_layer(query, &entries, ef.max(k), 0, true);
        found.truncate(k);
        found.into_iter().map(|c| (c.slot, c.dist)).collect()
    }

    /// Reserves room for `additional` more slots, so a bulk load does not leave the
    /// vector store up to twice its size (amortised growth doubles the capacity).
    pub fn reserve(&mut self, additional: usize) {
        self.vectors.reserve_exact(additional * self.dim);
        self.levels.reserve_exact(additional);
        self.links0.reserve_exact(additional * (self.m0 + 1));
        self.upper_start.reserve_exact(additional);
        self.removed.reserve_exact(additional.div_ceil(64));
    }

    /// Gives back capacity beyond what the slots use.
    pub fn shrink_to_fit(&mut self) {
        self.vectors.shrink_to_fit();
        self.levels.shrink_to_fit();
        self.links0.shrink_to_fit();
        self.upper_start.shrink_to_fit();
        self.upper.shrink_to_fit();
        self.removed.shrink_to_fit();
    }

    /// Approximate heap bytes held by the index (not the per-thread search scratch).
    pub fn memory_bytes(&self) -> usize {
        self.vectors.capacity() * size_of::<f32>()
            + self.levels.capacity()
            + (self.links0.capacity() + self.upper_start.capacity() + self.upper.capacity())
                * size_of::<u32>()
            + self.removed.capacity() * size_of::<u64>()
    }

    fn check_slot(&self, slot: u32, what: &str) {
        assert!(
            (slot as usize) < self.len(),
            "Hnsw::{what}: slot {slot} out of range (len {})",
            self.len()
        );
    }

    fn removed_unchecked(&self, slot: u32) -> bool {
        self.removed[slot as usize / 64] & (1 << (slot % 64)) != 0
    }

    /// splitmix64: tiny, and good enough for level draws.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn random_level(&mut self) -> usize {
        // Uniform in (0, 1]: never 0, so the log is finite.
        let u = ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        ((-u.ln() * self.level_mult) as usize).min(MAX_LEVEL)
    }

    fn links(&self, slot: u32, layer: usize) -> &[u32] {
        let (list, base) = self.list_base(slot, layer);
        let count = list[base] as usize;
        &list[base + 1..base + 1 + count]
    }

    fn list_base(&self, slot: u32, layer: usize) -> (&[u32], usize) {
        if layer == 0 {
            (&self.links0, slot as usize * (self.m0 + 1))
        } else {
            let base = self.upper_start[slot as usize] as usize + (layer - 1) * (self.m + 1);
            (&self.upper, base)
        }
    }

    fn set_links(&mut self, slot: u32, layer: usize, links: &[u32]) {
        let base = self.list_base(slot, layer).1;
        let list = if layer == 0 {
            &mut self.links0
        } else {
            &mut self.upper
        };
        list[base] = links.len() as u32;
        list[base + 1..base + 1 + links.len()].copy_from_slice(links);
    }

    /// Links `from -> to` on `layer`; a full list is re-pruned with the same heuristic.
    fn add_link(&mut self, from: u32, to: u32, layer: usize, cap: usize) {
        let current = self.links(from, layer);
        if current.len() < cap {
            let mut links = Vec::with_capacity(current.len() + 1);
            links.extend_from_slice(current);
            links.push(to);
            self.set_links(from, layer, &links);
            return;
        }
        let base = self.vector(from);
        for &slot in current {
            prefetch(self.vector(slot));
        }
        let mut cands: Vec<Cand> = current
            .iter()
            .chain(std::iter::once(&to))
            .map(|&slot| Cand {
                dist: distance(base, self.vector(slot)),
                slot,
            })
            .collect();
        cands.sort_unstable();
        let chosen = self.select_neighbours(&cands, cap);
        self.set_links(from, layer, &chosen);
    }

    /// The paper's heuristic (algorithm 4) with keepPrunedConnections: take candidates
    /// nearest first, keeping one only if it is closer to the base than to every one kept
    /// so far (so links spread out in different directions instead of all pointing into one
    /// cluster), then top up with the nearest pruned ones. `cands` must be sorted.
    fn select_neighbours(&self, cands: &[Cand], m: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        let mut pruned: Vec<u32> = Vec::new();
        for c in cands {
            if kept.len() == m {
                break;
            }
            let v = self.vector(c.slot);
            if kept.iter().all(|&s| distance(v, self.vector(s)) > c.dist) {
                kept.push(c.slot);
            } else {
                pruned.push(c.slot);
            }
        }
        let room = m - kept.len();
        kept.extend(pruned.into_iter().take(room));
        kept
    }

    /// Greedy walk on an upper layer: move to a closer neighbour until none is closer.
    fn greedy(&self, query: &[f32], mut cur: Cand, layer: usize) -> Cand {
        loop {
            let mut moved = false;
            for &nb in self.links(cur.slot, layer) {
                let c = Cand {
                    dist: distance(query, self.vector(nb)),
                    slot: nb,
                };
                if c < cur {
                    cur = c;
                    moved = true;
                }
            }
            if !moved {
                return cur;
            }
        }
    }

    /// Beam search on one layer (algorithm 2), returning up to `ef` candidates sorted
    /// nearest first. With `live_only`, tombstones are walked through but never enter the
    /// results, and the search stops only once `ef` live results are held (or the graph
    /// reachable from `entries` is exhausted), so heavy removal costs time, not results.
    fn search_layer(
        &self,
        query: &[f32],
        entries: &[Cand],
        ef: usize,
        layer: usize,
        live_only: bool,
    ) -> Vec<Cand> {
        let ef = ef.max(1);
        SCRATCH.with(|scratch| {
            let s = &mut *scratch.borrow_mut();
            s.begin(self.len());
            let Scratch {
                visited,
                epoch,
                candidates,
                results,
                fresh,
            } = s;
            let epoch = *epoch;
            for &e in entries {
                let mark = &mut visited[e.slot as usize];
                if *mark == epoch {
                    continue;
                }
                *mark = epoch;
                candidates.push(Reverse(e));
                if !live_only || !self.removed_unchecked(e.slot) {
                    results.push(e);
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
            while let Some(Reverse(c)) = candidates.pop() {
                if results.len() >= ef && results.peek().is_some_and(|worst| c > *worst) {
                    break;
                }
                fresh.clear();
                for &nb in self.links(c.slot, layer) {
                    let mark = &mut visited[nb as usize];
                    if *mark != epoch {
                        *mark = epoch;
                        fresh.push(nb);
                    }
                }
                // Vectors are scattered over the heap; fetching the next one while
                // scoring this one hides most of the cache misses.
                if let Some(&first) = fresh.first() {
                    prefetch(self.vector(first));
                }
                for (i, &nb) in fresh.iter().enumerate() {
                    if let Some(&next) = fresh.get(i + 1) {
                        prefetch(self.vector(next));
                    }
                    let cand = Cand {
                        dist: distance(query, self.vector(nb)),
                        slot: nb,
                    };
                    if results.len() < ef || results.peek().is_some_and(|worst| cand < *worst) {
                        candidates.push(Reverse(cand));
                        if !live_only || !self.removed_unchecked(nb) {
                            results.push(cand);
                            if results.len() > ef {
                                results.pop();
                            }
                        }
                    }
                }
            }
            let mut out: Vec<Cand> = results.drain().collect();
            out.sort_unstable();
            out
        })
    }
}

/// Exact `k` nearest live slots of `index` by brute force, with the ordering rules of
/// [`Hnsw::search`]. Meant for small indexes and as the oracle in tests.
///
/// # Panics
/// If `query.len() != index.dim()`.
pub fn exact_search(index: &Hnsw, query: &[f32], k: usize) -> Vec<(u32, f32)> {
    check_query(index, query);
    if k == 0 {
        return Vec::new();
    }
    let all: Vec<Cand> = (0..index.len() as u32)
        .filter(|&s| !index.removed_unchecked(s))
        .map(|slot| Cand {
            dist: distance(query, index.vector(slot)),
            slot,
        })
        .collect();
    top_k(all, k)
}

/// Exact `k` nearest live slots among `slots` (a partition of the index); removed slots
/// are skipped and duplicates count once. Same ordering rules as [`Hnsw::search`].
///
/// # Panics
/// If `query.len() != index.dim()` or a slot is `>= index.len()`.
pub fn exact_search_slots(index: &Hnsw, query: &[f32], slots: &[u32], k: usize) -> Vec<(u32, f32)> {
    check_query(index, query);
    if k == 0 {
        return Vec::new();
    }
    let mut all: Vec<Cand> = slots
        .iter()
        .filter(|&&s| !index.is_removed(s))
        .map(|&slot| Cand {
            dist: distance(query, index.vector(slot)),
            slot,
        })
        .collect();
    // A duplicate has the same distance, so after sorting it sits next to its twin.
    all.sort_unstable();
    all.dedup();
    all.truncate(k);
    all.into_iter().map(|c| (c.slot, c.dist)).collect()
}

fn check_query(index: &Hnsw, query: &[f32]) {
    assert_eq!(
        query.len(),
        index.dim,
        "exact_search: query has {} dimensions, the index {}",
        query.len(),
        index.dim
    );
}

fn top_k(mut all: Vec<Cand>, k: usize) -> Vec<(u32, f32)> {
    if all.len() > k {
        all.select_nth_unstable(k - 1);
        all.truncate(k);
    }
    all.sort_unstable();
    all.into_iter().map(|c| (c.slot, c.dist)).collect()
}

/// Hints the CPU to pull `v` into cache; a no-op off x86_64.
#[inline(always)]
fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16) {
        // SAFETY: prefetching is only a hint; it cannot fault, and the address is valid.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

#[inline]
fn distance(a: &[f32], b: &[f32]) -> f32 {
    1.0 - dot(a, b)
}

/// Dot product; AVX2 + FMA when the CPU has them (checked at run time), otherwise a
/// portable loop with 8 independent accumulators that the compiler can vectorise.
/// Summation order differs between the two paths, so results may differ in the last bits.
///
/// # Panics
/// If the lengths differ.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: both features were just detected on this CPU.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // Four accumulators hide the FMA latency (4 cycles) behind independent chains.
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc3 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n, so every load is inside both slices.
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            acc2 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 16)),
                _mm256_loadu_ps(pb.add(i + 16)),
                acc2,
            );
            acc3 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 24)),
                _mm256_loadu_ps(pb.add(i + 24)),
                acc3,
            );
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: i + 8 <= n.
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        }
        i += 8;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    let mut sum = _mm_cvtss_f32(s);
    for j in i..n {
        sum += a[j] * b[j];
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Instant;

    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in (0, 1].
        fn unit_f64(&mut self) -> f64 {
            ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
        }

        fn gauss(&mut self) -> f32 {
            let (u, v) = (self.unit_f64(), self.unit_f64());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        }

        fn gauss_vec(&mut self, dim: usize) -> Vec<f32> {
            (0..dim).map(|_| self.gauss()).collect()
        }
    }

    fn normalise(mut v: Vec<f32>) -> Vec<f32> {
        let norm = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    fn uniform(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = Rng(seed);
        (0..n).map(|_| normalise(rng.gauss_vec(dim))).collect()
    }

    /// Clustered unit vectors, like sentence embeddings: a random centre per topic, and
    /// around it noise spread over a few directions of that topic (variance decaying as
    /// 1/j over `rank` directions) plus weaker isotropic noise, so the data has a low
    /// intrinsic dimension, as real embeddings do, rather than being a Gaussian ball.
    struct Clusters {
        dim: usize,
        rank: usize,
        iso: f32,
        centres: Vec<Vec<f32>>,
        /// Per centre, `rank` unit directions scaled by their standard deviation.
        dirs: Vec<Vec<Vec<f32>>>,
    }

    impl Clusters {
        fn new(dim: usize, centres: usize, rank: usize, iso: f32, rng: &mut Rng) -> Self {
            let norm: f32 = (1..=rank).map(|j| 1.0 / j as f32).sum::<f32>().sqrt();
            let centres_v: Vec<Vec<f32>> = (0..centres)
                .map(|_| normalise(rng.gauss_vec(dim)))
                .collect();
            let dirs = (0..centres)
                .map(|_| {
                    (1..=rank)
                        .map(|j| {
                            let sd = 0.8 / (j as f32).sqrt() / norm;
                            normalise(rng.gauss_vec(dim))
                                .iter()
                                .map(|x| x * sd)
                                .collect()
                        })
                        .collect()
                })
                .collect();
            Self {
                dim,
                rank,
                iso,
                centres: centres_v,
                dirs,
            }
        }

        fn sample(&self, n: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
            let sigma = self.iso / (self.dim as f32).sqrt();
            (0..n)
                .map(|_| {
                    let c = rng.next_u64() as usize % self.centres.len();
                    let mut v: Vec<f32> = self.centres[c]
                        .iter()
                        .map(|x| x + sigma * rng.gauss())
                        .collect();
                    for d in &self.dirs[c][..self.rank] {
                        let z = rng.gauss();
                        v.iter_mut().zip(d).for_each(|(x, y)| *x += z * y);
                    }
                    normalise(v)
                })
                .collect()
        }
    }

    /// `n` data points and `q` queries from the same clusters.
    fn clustered(n: usize, q: usize, dim: usize, centres: usize, seed: u64) -> Data {
        let mut rng = Rng(seed);
        let model = Clusters::new(dim, centres, 16, 0.3, &mut rng);
        (model.sample(n, &mut rng), model.sample(q, &mut rng))
    }

    type Data = (Vec<Vec<f32>>, Vec<Vec<f32>>);

    fn build(data: &[Vec<f32>], m: usize, efc: usize, seed: u64) -> Hnsw {
        let mut index = Hnsw::new(data[0].len(), m, efc, seed);
        index.reserve(data.len());
        for v in data {
            index.insert(v);
        }
        index
    }

    fn recall(index: &Hnsw, queries: &[Vec<f32>], k: usize, ef: usize) -> f64 {
        let mut hits = 0;
        let mut total = 0;
        for q in queries {
            let exact: HashSet<u32> = exact_search(index, q, k).iter().map(|r| r.0).collect();
            let got = index.search(q, k, ef);
            assert!(got.windows(2).all(|w| (w[0].1, w[0].0) <= (w[1].1, w[1].0)));
            hits += got.iter().filter(|r| exact.contains(&r.0)).count();
            total += exact.len();
        }
        hits as f64 / total as f64
    }

    #[test]
    fn recall_clustered() {
        let (data, queries) = clustered(5_000, 200, 64, 20, 1);
        let index = build(&data, 16, 100, 7);
        let r = recall(&index, &queries, 10, 64);
        println!("clustered recall@10 ef=64: {r:.3}");
        assert!(r >= 0.95, "recall@10 {r}");
        // A beam no wider than k is a tighter check on the graph itself.
        let r = recall(&index, &queries, 10, 10);
        println!("clustered recall@10 ef=10: {r:.3}");
        assert!(r >= 0.9, "recall@10 at ef=10: {r}");
    }

    #[test]
    fn recall_uniform() {
        let data = uniform(5_000, 64, 2);
        let queries = uniform(200, 64, 3);
        let index = build(&data, 16, 100, 7);
        let r = recall(&index, &queries, 10, 64);
        println!("uniform recall@10 ef=64: {r:.3}");
        assert!(r >= 0.9, "recall@10 {r}");
    }

    #[test]
    fn seeds_reach_outliers_the_descent_misses() {
        // Out-of-distribution points among clustered ones: each one's in-links are pruned
        // away by the cluster points around it, so a beam from the entry rarely gets there.
        let (mut data, _) = clustered(5_000, 0, 64, 20, 11);
        let outliers = uniform(40, 64, 12);
        let first_outlier = data.len() as u32;
        data.extend(outliers.iter().cloned());
        let mut index = build(&data, 8, 40, 3);
        let mut rng = Rng(13);
        let queries: Vec<Vec<f32>> = outliers
            .iter()
            .map(|o| normalise(o.iter().map(|x| x + 0.02 * rng.gauss()).collect()))
            .collect();
        let (mut seeded_hits, mut plain_hits) = (0, 0);
        for (i, q) in queries.iter().enumerate() {
            let target = first_outlier + i as u32;
            assert_eq!(exact_search(&index, q, 1)[0].0, target);
            let plain = index.search(q, 10, 10);
            assert_eq!(plain, index.search_from(q, 10, 10, &[]));
            let seeded = index.search_from(q, 10, 10, &[target, 0, 17]);
            assert!(seeded
                .windows(2)
                .all(|w| (w[0].1, w[0].0) <= (w[1].1, w[1].0)));
            assert_eq!(
                seeded[0].0, target,
                "a seed nearest to the query comes first"
            );
            plain_hits += usize::from(plain.first().is_some_and(|r| r.0 == target));
            seeded_hits += 1;
        }
        println!("outliers found first: {plain_hits}/40 from the entry, {seeded_hits}/40 seeded");
        // A removed seed is walked through, never returned.
        index.remove(first_outlier);
        let got = index.search_from(&queries[0], 10, 10, &[first_outlier]);
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|&(s, _)| s != first_outlier));
    }

    #[test]
    #[should_panic(expected = "search_from")]
    fn seed_out_of_range_panics() {
        let index = build(&uniform(10, 8, 1), 4, 8, 1);
        let _ = index.search_from(&uniform(1, 8, 2)[0], 3, 3, &[10]);
    }

    #[test]
    fn removed_slots_are_skipped() {
        let (data, queries) = clustered(3_000, 100, 32, 10, 4);
        let mut index = build(&data, 12, 80, 9);
        for s in (0..index.len() as u32).step_by(2) {
            index.remove(s);
            index.remove(s);
        }
        assert_eq!(index.live(), 1_500);
        for q in &queries {
            let got = index.search(q, 10, 64);
            assert_eq!(got.len(), 10);
            assert!(got.iter().all(|&(s, _)| s % 2 == 1));
        }
        let r = recall(&index, &queries, 10, 64);
        println!("recall@10 ef=64 after removing half: {r:.3}");
        assert!(r >= 0.9, "recall@10 after removing half: {r}");

        for s in 0..index.len() as u32 {
            index.remove(s);
        }
        assert_eq!(index.live(), 0);
        assert!(index.search(&queries[0], 10, 64).is_empty());
        assert!(exact_search(&index, &queries[0], 10).is_empty());
    }

    #[test]
    fn few_live_slots_still_found() {
        let data = uniform(1_000, 16, 6);
        let mut index = build(&data, 8, 40, 1);
        for s in 0..1_000 {
            if s % 100 != 37 {
                index.remove(s);
            }
        }
        let got = index.search(&data[0], 5, 5);
        let want = exact_search(&index, &data[0], 5);
        assert_eq!(got, want);
        assert_eq!(index.search(&data[0], 50, 10).len(), 10);
    }

    #[test]
    fn slots_dense_and_stable() {
        let data = uniform(300, 8, 8);
        let mut index = Hnsw::new(8, 4, 20, 3);
        assert!(index.is_empty());
        for (i, v) in data.iter().enumerate() {
            assert_eq!(index.insert(v), i as u32);
        }
        index.remove(5);
        assert!(index.is_removed(5) && !index.is_removed(6));
        assert_eq!(
            (index.len(), index.live(), index.is_empty()),
            (300, 299, false)
        );
        assert_eq!(index.insert(&data[0]), 300);
        for (i, v) in data.iter().enumerate() {
            assert_eq!(index.vector(i as u32), v.as_slice());
        }
        assert!(index.memory_bytes() >= 301 * 8 * 4);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let (data, queries) = clustered(2_000, 50, 32, 10, 10);
        let a = build(&data, 8, 40, 42);
        let b = build(&data, 8, 40, 42);
        for q in &queries {
            assert_eq!(a.search(q, 10, 20), b.search(q, 10, 20));
        }
    }

    #[test]
    fn edge_cases() {
        let mut index = Hnsw::new(4, 1, 0, 0);
        assert_eq!((index.m(), index.ef_construction()), (2, 2));
        let q = [1.0, 0.0, 0.0, 0.0];
        assert!(index.search(&q, 5, 10).is_empty());
        assert!(exact_search(&index, &q, 5).is_empty());
        index.insert(&[0.0, 1.0, 0.0, 0.0]);
        assert!(index.search(&q, 0, 10).is_empty());
        assert!(exact_search(&index, &q, 0).is_empty());
        assert_eq!(index.search(&q, 5, 0), vec![(0, 1.0)]);
        index.insert(&q);
        assert_eq!(index.search(&q, 5, 1), vec![(1, 0.0), (0, 1.0)]);
        index.remove(1);
        assert_eq!(index.search(&q, 5, 1), vec![(0, 1.0)]);
    }

    #[test]
    fn ties_by_slot() {
        let mut index = Hnsw::new(3, 4, 10, 0);
        let v = normalise(vec![1.0, 2.0, 3.0]);
        for _ in 0..20 {
            index.insert(&v);
        }
        index.remove(1);
        let got: Vec<u32> = index.search(&v, 4, 30).iter().map(|r| r.0).collect();
        assert_eq!(got, [0, 2, 3, 4]);
        let exact: Vec<u32> = exact_search(&index, &v, 4).iter().map(|r| r.0).collect();
        assert_eq!(exact, [0, 2, 3, 4]);
    }

    #[test]
    fn exact_search_on_slots() {
        let data = uniform(100, 8, 12);
        let mut index = build(&data, 4, 20, 0);
        index.remove(3);
        let got = exact_search_slots(&index, &data[7], &[9, 3, 7, 9, 50, 7], 10);
        let slots: Vec<u32> = got.iter().map(|r| r.0).collect();
        assert_eq!(slots[0], 7);
        assert_eq!(slots.len(), 3);
        assert!(got.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(exact_search_slots(&index, &data[7], &[9, 50, 7], 1)[0].0, 7);
    }

    #[test]
    #[should_panic(expected = "vector has 3 dimensions, the index 4")]
    fn insert_wrong_dim_panics() {
        Hnsw::new(4, 4, 10, 0).insert(&[1.0, 0.0, 0.0]);
    }

    #[test]
    #[should_panic(expected = "query has 5 dimensions, the index 4")]
    fn search_wrong_dim_panics() {
        Hnsw::new(4, 4, 10, 0).search(&[1.0; 5], 1, 1);
    }

    #[test]
    fn dot_matches_scalar() {
        let mut rng = Rng(99);
        for dim in 1..=70 {
            let a = rng.gauss_vec(dim);
            let b = rng.gauss_vec(dim);
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let scale: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum();
            for got in [dot(&a, &b), dot_portable(&a, &b)] {
                let err = (got as f64 - naive).abs();
                assert!(err <= 1e-4 * scale.max(1e-6), "dim {dim}: {got} vs {naive}");
            }
        }
    }

    #[test]
    fn concurrent_searches_agree() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Hnsw>();
        let (data, queries) = clustered(2_000, 40, 16, 8, 13);
        let index = std::sync::RwLock::new(build(&data, 8, 40, 5));
        let serial: Vec<_> = queries
            .iter()
            .map(|q| index.read().unwrap().search(q, 5, 20))
            .collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        queries
                            .iter()
                            .map(|q| index.read().unwrap().search(q, 5, 20))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap(), serial);
            }
        });
    }

    /// `cargo test --release -p tmws-core -j1 hnsw -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn timing_100k_dim384() {
        let (n, dim, k, ef) = (100_000, 384, 50, 100);
        let (data, queries) = clustered(n, 100, dim, 100, 21);
        let t = Instant::now();
        let index = build(&data, 16, 64, 1);
        let build_s = t.elapsed().as_secs_f64();
        let rounds = 10;
        let t = Instant::now();
        for _ in 0..rounds {
            for q in &queries {
                std::hint::black_box(index.search(q, k, ef));
            }
        }
        let query_us = t.elapsed().as_secs_f64() * 1e6 / (rounds * queries.len()) as f64;
        let t = Instant::now();
        for q in &queries {
            std::hint::black_box(exact_search(&index, q, k));
        }
        let exact_us = t.elapsed().as_secs_f64() * 1e6 / queries.len() as f64;
        let r = recall(&index, &queries, k, ef);
        println!(
            "hnsw n={n} dim={dim} m=16 efc=64: build {build_s:.1} s, search k={k} ef={ef} \
             {query_us:.0} us/query (exact {exact_us:.0} us), recall@{k} {r:.4}, \
             memory {:.1} MiB",
            index.memory_bytes() as f64 / (1 << 20) as f64
        );
        assert!(r >= 0.95, "recall@{k} {r}");
    }
}
