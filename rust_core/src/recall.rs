//! The derived recall index: memory recall (full text + vector, fused by reciprocal rank
//! fusion) answered in process from a copy of what PostgreSQL holds.
//!
//! PostgreSQL stays the source of truth: the Python side loads every memory at start and
//! applies each change before a query that must see it (`tmws._recall_index`). This module
//! only ranks. It returns memory ids with their fused scores; the rows themselves are read
//! from PostgreSQL, which filters readability again.
//!
//! # Partitions
//!
//! A namespace may read its own memories and everyone's shared ones. Private memories live
//! in one partition per namespace and shared ones in one partition of their own, so a query
//! reads exactly two partitions and never filters: each has its own postings and its own
//! HNSW graph, searched unfiltered. (A single graph filtered to the ~28% of rows a
//! namespace reads is what made pgvector's scan walk several rounds.)
//!
//! # Ranking (same shape as `MemoryStore.search`'s SQL)
//!
//! - Full text: the readable memories holding *all* query lexemes, ranked by BM25 (global
//!   document frequencies); only when none holds them all, those holding *any*. The best
//!   `candidates` are kept, ties by id descending.
//! - Vector: the `candidates` nearest readable memories by cosine distance (exact below
//!   [`RecallConfig::exact_below`] live vectors in a partition, HNSW above), then those
//!   farther than `max_distance` are dropped without renumbering the others. The HNSW beam
//!   starts from the graph's entry point *and* from the full-text candidates: a memory
//!   unlike the thousands around it (a hand-written fact among generated notes) is poorly
//!   linked, and a descent from the entry point often misses it even when it is the
//!   nearest; at 1,000,000 memories that cost the facts ~0.07 nDCG@10 (bench/README.md).
//! - Fusion: `Σ 1 / (rrf_k + rank)`, ordered by score, importance, creation time, id.

use std::collections::HashMap;

use crate::hnsw::{exact_search, Hnsw};

/// How the index is built and searched.
#[derive(Debug, Clone, Copy)]
pub struct RecallConfig {
    pub dim: usize,
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    /// A partition with fewer live vectors than this is searched exactly (all of them).
    pub exact_below: usize,
    pub k1: f64,
    pub b: f64,
}

impl RecallConfig {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            m: 16,
            ef_construction: 64,
            ef_search: 100,
            exact_below: 4096,
            k1: 1.2,
            b: 0.75,
        }
    }
}

/// One memory as the index needs it.
#[derive(Debug, Clone)]
pub struct MemoryDoc {
    pub id: i64,
    pub namespace: String,
    pub shared: bool,
    pub importance: f32,
    pub created_us: i64,
    /// Lexemes with their term frequencies (tags with a space are already left out).
    pub terms: Vec<(String, u32)>,
    /// Unit length, or None (no embedding, or a zero vector pgvector cannot compare).
    pub embedding: Option<Vec<f32>>,
}

/// What a query asks.
#[derive(Debug, Clone)]
pub struct RecallQuery<'a> {
    pub namespace: &'a str,
    pub lexemes: &'a [String],
    pub vector: Option<&'a [f32]>,
    pub candidates: usize,
    pub limit: usize,
    pub max_distance: f32,
    pub rrf_k: f64,
}

/// A ranked memory: its id and fused score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    pub id: i64,
    pub score: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RecallStats {
    pub documents: usize,
    pub partitions: usize,
    pub graphs: usize,
    pub vectors: usize,
    pub terms: usize,
    pub dead_postings: usize,
    pub removed_vectors: usize,
    pub memory_bytes: usize,
}

#[derive(Debug, Clone, Copy)]
struct Posting {
    doc: u32,
    tf: u32,
}

struct Doc {
    id: i64,
    partition: u32,
    importance: f32,
    created_us: i64,
    /// Term ids with frequencies: what a removal takes out of the document frequencies.
    terms: Box<[(u32, u32)]>,
    length: u32,
    slot: Option<u32>,
    alive: bool,
}

struct Partition {
    postings: HashMap<u32, Vec<Posting>>,
    dead_postings: usize,
    live_postings: usize,
    vectors: Hnsw,
    /// Vector slot -> document.
    slot_doc: Vec<u32>,
}

impl Partition {
    fn new(config: &RecallConfig, seed: u64) -> Self {
        Self {
            postings: HashMap::new(),
            dead_postings: 0,
            live_postings: 0,
            vectors: Hnsw::new(config.dim, config.m, config.ef_construction, seed),
            slot_doc: Vec::new(),
        }
    }
}

/// The index. Not synchronised: the Python wrapper holds it behind a read-write lock.
pub struct RecallIndex {
    config: RecallConfig,
    docs: Vec<Doc>,
    by_id: HashMap<i64, u32>,
    free_docs: Vec<u32>,
    partitions: Vec<Partition>,
    private_partition: HashMap<String, u32>,
    term_ids: HashMap<String, u32>,
    document_frequency: Vec<u32>,
    live_docs: usize,
    total_length: u64,
}

const SHARED: u32 = 0;

impl RecallIndex {
    pub fn new(config: RecallConfig) -> Self {
        assert!(config.dim > 0, "the vector dimension must be positive");
        let shared = Partition::new(&config, 0x5eed);
        Self {
            config,
            docs: Vec::new(),
            by_id: HashMap::new(),
            free_docs: Vec::new(),
            partitions: vec![shared],
            private_partition: HashMap::new(),
            term_ids: HashMap::new(),
            document_frequency: Vec::new(),
            live_docs: 0,
            total_length: 0,
        }
    }

    pub fn config(&self) -> &RecallConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.live_docs
    }

    pub fn is_empty(&self) -> bool {
        self.live_docs == 0
    }

    pub fn contains(&self, id: i64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Adds a memory, or replaces the one with its id.
    pub fn upsert(&mut self, memory: MemoryDoc) {
        self.upsert_batch(vec![memory]);
    }

    /// Adds or replaces many memories (the last of an id wins). The HNSW inserts, the slow
    /// part, run one partition per thread: partitions share nothing.
    pub fn upsert_batch(&mut self, memories: Vec<MemoryDoc>) {
        let mut seen = std::collections::HashSet::with_capacity(memories.len());
        let mut latest: Vec<MemoryDoc> = memories
            .into_iter()
            .rev()
            .filter(|m| seen.insert(m.id))
            .collect();
        latest.reverse();
        let mut pending: HashMap<u32, Vec<(u32, Vec<f32>)>> = HashMap::new();
        for mut memory in latest {
            let vector = memory.embedding.take();
            if let Some(vector) = &vector {
                assert_eq!(vector.len(), self.config.dim, "embedding dimension");
            }
            let (partition, doc_index) = self.upsert_text(memory);
            if let Some(vector) = vector {
                pending
                    .entry(partition)
                    .or_default()
                    .push((doc_index, vector));
            }
        }
        let mut work: Vec<PartitionWork<'_>> = self
            .partitions
            .iter_mut()
            .enumerate()
            .filter_map(|(index, part)| pending.remove(&(index as u32)).map(|w| (part, w)))
            .collect();
        let total: usize = work.iter().map(|(_, w)| w.len()).sum();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let placed: Vec<(u32, u32)> = if threads < 2 || work.len() < 2 || total < PARALLEL_ABOVE {
            work.iter_mut()
                .flat_map(|(part, vectors)| insert_vectors(part, std::mem::take(vectors)))
                .collect()
        } else {
            // Largest first onto the least loaded thread.
            work.sort_by_key(|(_, w)| std::cmp::Reverse(w.len()));
            let mut bins: Vec<(usize, Vec<PartitionWork<'_>>)> = (0..threads.min(work.len()))
                .map(|_| (0, Vec::new()))
                .collect();
            for item in work {
                let bin = bins
                    .iter_mut()
                    .min_by_key(|(load, _)| *load)
                    .expect("a bin");
                bin.0 += item.1.len();
                bin.1.push(item);
            }
            std::thread::scope(|scope| {
                let handles: Vec<_> = bins
                    .into_iter()
                    .map(|(_, items)| {
                        scope.spawn(move || {
                            items
                                .into_iter()
                                .flat_map(|(part, vectors)| insert_vectors(part, vectors))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("an HNSW insert panicked"))
                    .collect()
            })
        };
        for (doc_index, slot) in placed {
            self.docs[doc_index as usize].slot = Some(slot);
        }
    }

    /// Everything of an upsert but the vector: returns the memory's partition and document.
    fn upsert_text(&mut self, memory: MemoryDoc) -> (u32, u32) {
        self.remove(memory.id);
        let partition = if memory.shared {
            SHARED
        } else {
            self.partition_of(&memory.namespace)
        };
        let mut terms: Vec<(u32, u32)> = Vec::with_capacity(memory.terms.len());
        for (lexeme, tf) in &memory.terms {
            let term = self.term_id(lexeme);
            match terms.iter_mut().find(|(t, _)| *t == term) {
                Some(entry) => entry.1 += tf,
                None => terms.push((term, *tf)),
            }
        }
        let length: u32 = terms.iter().map(|(_, tf)| *tf).sum();
        let doc_index = match self.free_docs.pop() {
            Some(index) => index,
            None => {
                self.docs.push(Doc {
                    id: 0,
                    partition: 0,
                    importance: 0.0,
                    created_us: 0,
                    terms: Box::new([]),
                    length: 0,
                    slot: None,
                    alive: false,
                });
                (self.docs.len() - 1) as u32
            }
        };
        let part = &mut self.partitions[partition as usize];
        for &(term, tf) in &terms {
            part.postings
                .entry(term)
                .or_default()
                .push(Posting { doc: doc_index, tf });
            part.live_postings += 1;
            self.document_frequency[term as usize] += 1;
        }
        self.docs[doc_index as usize] = Doc {
            id: memory.id,
            partition,
            importance: memory.importance,
            created_us: memory.created_us,
            terms: terms.into_boxed_slice(),
            length,
            slot: None,
            alive: true,
        };
        self.by_id.insert(memory.id, doc_index);
        self.live_docs += 1;
        self.total_length += u64::from(length);
        (partition, doc_index)
    }

    /// Removes a memory; false if the index did not hold it.
    pub fn remove(&mut self, id: i64) -> bool {
        let Some(doc_index) = self.by_id.remove(&id) else {
            return false;
        };
        let doc = &mut self.docs[doc_index as usize];
        doc.alive = false;
        let partition = doc.partition as usize;
        let slot = doc.slot.take();
        let terms = std::mem::take(&mut doc.terms);
        self.total_length -= u64::from(doc.length);
        self.live_docs -= 1;
        for &(term, _) in terms.iter() {
            self.document_frequency[term as usize] -= 1;
        }
        let part = &mut self.partitions[partition];
        // Postings keep the dead entry until the partition is compacted; the document slot
        // is reused only then, so no posting can point at a newer document.
        part.dead_postings += terms.len();
        part.live_postings -= terms.len();
        if let Some(slot) = slot {
            part.vectors.remove(slot);
        }
        true
    }

    /// Whether a partition has enough dead postings or removed vectors for [`compact`]
    /// to rebuild it. Removals never compact by themselves: a rebuild of a large partition
    /// takes as long as loading it, so the caller chooses when (and to answer from
    /// elsewhere meanwhile).
    ///
    /// [`compact`]: RecallIndex::compact
    pub fn compaction_due(&self) -> bool {
        (0..self.partitions.len()).any(|p| self.partition_due(p))
    }

    /// Rebuilds every partition that is due; returns how many were.
    pub fn compact(&mut self) -> usize {
        let due: Vec<usize> = (0..self.partitions.len())
            .filter(|&p| self.partition_due(p))
            .collect();
        for &partition in &due {
            self.compact_partition(partition);
        }
        due.len()
    }

    /// Gives back spare capacity (after a load: vectors grow by doubling).
    pub fn shrink_to_fit(&mut self) {
        self.docs.shrink_to_fit();
        for part in &mut self.partitions {
            part.vectors.shrink_to_fit();
            part.slot_doc.shrink_to_fit();
            for postings in part.postings.values_mut() {
                postings.shrink_to_fit();
            }
        }
    }

    /// Forgets everything (a reload).
    pub fn clear(&mut self) {
        *self = Self::new(self.config);
    }

    pub fn stats(&self) -> RecallStats {
        let mut stats = RecallStats {
            documents: self.live_docs,
            partitions: self.partitions.len(),
            terms: self.term_ids.len(),
            ..RecallStats::default()
        };
        let mut bytes = self.docs.capacity() * std::mem::size_of::<Doc>()
            + self.by_id.capacity() * 16
            + self.term_ids.keys().map(|k| k.len() + 24).sum::<usize>()
            + self.document_frequency.capacity() * 4;
        for doc in &self.docs {
            bytes += doc.terms.len() * 8;
        }
        for part in &self.partitions {
            stats.vectors += part.vectors.live();
            stats.removed_vectors += part.vectors.len() - part.vectors.live();
            stats.dead_postings += part.dead_postings;
            if part.vectors.live() >= self.config.exact_below {
                stats.graphs += 1;
            }
            bytes += part.vectors.memory_bytes()
                + part.slot_doc.capacity() * 4
                + part
                    .postings
                    .values()
                    .map(|p| p.capacity() * std::mem::size_of::<Posting>() + 32)
                    .sum::<usize>();
        }
        stats.memory_bytes = bytes;
        stats
    }

    /// The ranked memories for `query`, best first, at most `query.limit`.
    pub fn search(&self, query: &RecallQuery<'_>) -> Vec<Ranked> {
        let readable = self.readable(query.namespace);
        let mut fused: HashMap<u32, f64> = HashMap::new();
        let candidates = query.candidates;
        let text = self.text_ranking(&readable, query.lexemes, candidates);
        for (rank, doc) in text.iter().enumerate() {
            *fused.entry(*doc).or_default() += 1.0 / (query.rrf_k + (rank + 1) as f64);
        }
        if let Some(vector) = query.vector {
            assert_eq!(vector.len(), self.config.dim, "query vector dimension");
            for (rank, (doc, distance)) in self
                .vector_ranking(&readable, vector, candidates, &text)
                .into_iter()
                .enumerate()
            {
                if distance <= query.max_distance {
                    *fused.entry(doc).or_default() += 1.0 / (query.rrf_k + (rank + 1) as f64);
                }
            }
        }
        let mut ranked: Vec<(u32, f64)> = fused.into_iter().collect();
        ranked.sort_by(|a, b| {
            let (da, db) = (&self.docs[a.0 as usize], &self.docs[b.0 as usize]);
            b.1.total_cmp(&a.1)
                .then(db.importance.total_cmp(&da.importance))
                .then(db.created_us.cmp(&da.created_us))
                .then(db.id.cmp(&da.id))
        });
        ranked.truncate(query.limit);
        ranked
            .into_iter()
            .map(|(doc, score)| Ranked {
                id: self.docs[doc as usize].id,
                score,
            })
            .collect()
    }

    /// The two partitions a namespace reads (its private one may not exist yet).
    fn readable(&self, namespace: &str) -> Vec<u32> {
        let mut parts = vec![SHARED];
        if let Some(&own) = self.private_partition.get(namespace) {
            parts.push(own);
        }
        parts
    }

    /// Full-text candidates, best first: all lexemes, else any.
    fn text_ranking(&self, readable: &[u32], lexemes: &[String], candidates: usize) -> Vec<u32> {
        let mut terms: Vec<u32> = Vec::new();
        let mut unknown = false;
        for lexeme in lexemes {
            match self.term_ids.get(lexeme) {
                Some(&term) if !terms.contains(&term) => terms.push(term),
                Some(_) => {}
                None => unknown = true,
            }
        }
        if terms.is_empty() || candidates == 0 {
            return Vec::new();
        }
        let average = if self.live_docs == 0 {
            1.0
        } else {
            self.total_length as f64 / self.live_docs as f64
        };
        let n = self.live_docs as f64;
        // Per document: how many query terms it holds and its BM25 score.
        let mut scores: HashMap<u32, (u32, f64)> = HashMap::new();
        for &term in &terms {
            let df = f64::from(self.document_frequency[term as usize]);
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &part in readable {
                let Some(postings) = self.partitions[part as usize].postings.get(&term) else {
                    continue;
                };
                for posting in postings {
                    let doc = &self.docs[posting.doc as usize];
                    if !doc.alive {
                        continue;
                    }
                    let tf = f64::from(posting.tf);
                    let norm = self.config.k1
                        * (1.0 - self.config.b + self.config.b * f64::from(doc.length) / average);
                    let entry = scores.entry(posting.doc).or_default();
                    entry.0 += 1;
                    entry.1 += idf * tf * (self.config.k1 + 1.0) / (tf + norm);
                }
            }
        }
        let wanted = terms.len() as u32;
        let mut matched: Vec<(u32, f64)> = if unknown {
            Vec::new() // a lexeme no memory holds: no memory holds them all
        } else {
            scores
                .iter()
                .filter(|(_, (count, _))| *count == wanted)
                .map(|(&doc, &(_, score))| (doc, score))
                .collect()
        };
        if matched.is_empty() {
            matched = scores
                .into_iter()
                .map(|(doc, (_, score))| (doc, score))
                .collect();
        }
        let by_rank = |a: &(u32, f64), b: &(u32, f64)| {
            b.1.total_cmp(&a.1)
                .then(self.docs[b.0 as usize].id.cmp(&self.docs[a.0 as usize].id))
        };
        if matched.len() > candidates {
            matched.select_nth_unstable_by(candidates - 1, by_rank);
            matched.truncate(candidates);
        }
        matched.sort_by(by_rank);
        matched.into_iter().map(|(doc, _)| doc).collect()
    }

    /// The nearest readable documents with their distances, nearest first. A graph search
    /// also starts from the `seeds` (the text ranking's documents) in its partition.
    fn vector_ranking(
        &self,
        readable: &[u32],
        vector: &[f32],
        candidates: usize,
        seeds: &[u32],
    ) -> Vec<(u32, f32)> {
        let mut nearest: Vec<(u32, f32)> = Vec::new();
        for &index in readable {
            let part = &self.partitions[index as usize];
            let found = if part.vectors.live() < self.config.exact_below {
                exact_search(&part.vectors, vector, candidates)
            } else {
                let slots: Vec<u32> = seeds
                    .iter()
                    .map(|&doc| &self.docs[doc as usize])
                    .filter(|doc| doc.partition == index)
                    .filter_map(|doc| doc.slot)
                    .collect();
                part.vectors.search_from(
                    vector,
                    candidates,
                    self.config.ef_search.max(candidates),
                    &slots,
                )
            };
            nearest.extend(
                found
                    .into_iter()
                    .map(|(slot, distance)| (part.slot_doc[slot as usize], distance)),
            );
        }
        nearest.sort_by(|a, b| {
            a.1.total_cmp(&b.1)
                .then(self.docs[b.0 as usize].id.cmp(&self.docs[a.0 as usize].id))
        });
        nearest.truncate(candidates);
        nearest
    }

    fn partition_of(&mut self, namespace: &str) -> u32 {
        if let Some(&part) = self.private_partition.get(namespace) {
            return part;
        }
        let part = self.partitions.len() as u32;
        let seed = xxhash_rust::xxh3::xxh3_64(namespace.as_bytes());
        self.partitions.push(Partition::new(&self.config, seed));
        self.private_partition.insert(namespace.to_owned(), part);
        part
    }

    fn term_id(&mut self, lexeme: &str) -> u32 {
        if let Some(&term) = self.term_ids.get(lexeme) {
            return term;
        }
        let term = self.document_frequency.len() as u32;
        self.document_frequency.push(0);
        self.term_ids.insert(lexeme.to_owned(), term);
        term
    }

    /// Due once dead postings are a quarter of the partition's, or removed vectors half
    /// its live ones (both bounded by the partition's size).
    fn partition_due(&self, partition: usize) -> bool {
        let part = &self.partitions[partition];
        let postings_due = part.dead_postings > 64 && part.dead_postings * 4 > part.live_postings;
        let removed = part.vectors.len() - part.vectors.live();
        let graph_due = removed > 64 && removed * 2 > part.vectors.live();
        postings_due || graph_due
    }

    /// Drops the partition's dead postings and rebuilds its graph from the live vectors.
    fn compact_partition(&mut self, partition: usize) {
        let seed = xxhash_rust::xxh3::xxh3_64(&(partition as u64).to_le_bytes());
        let mut rebuilt = Partition::new(&self.config, seed);
        let old = std::mem::replace(
            &mut self.partitions[partition],
            Partition::new(&self.config, 0),
        );
        let mut freed: Vec<u32> = Vec::new();
        for (index, doc) in self.docs.iter_mut().enumerate() {
            if doc.partition as usize != partition {
                continue;
            }
            if !doc.alive {
                if doc.id != i64::MIN {
                    doc.id = i64::MIN; // freed once: its postings are gone now
                    freed.push(index as u32);
                }
                continue;
            }
            for &(term, tf) in doc.terms.iter() {
                rebuilt.postings.entry(term).or_default().push(Posting {
                    doc: index as u32,
                    tf,
                });
                rebuilt.live_postings += 1;
            }
            if let Some(slot) = doc.slot {
                let new_slot = rebuilt.vectors.insert(old.vectors.vector(slot));
                if rebuilt.slot_doc.len() <= new_slot as usize {
                    rebuilt.slot_doc.resize(new_slot as usize + 1, u32::MAX);
                }
                rebuilt.slot_doc[new_slot as usize] = index as u32;
                doc.slot = Some(new_slot);
            }
        }
        self.partitions[partition] = rebuilt;
        self.free_docs.extend(freed);
    }
}

/// A partition and the (document, vector) pairs to insert into its graph.
type PartitionWork<'a> = (&'a mut Partition, Vec<(u32, Vec<f32>)>);

/// Vectors a batch must hold before its HNSW inserts are spread over threads.
const PARALLEL_ABOVE: usize = 256;

/// Inserts documents' vectors into their partition's graph; returns (document, slot).
fn insert_vectors(part: &mut Partition, vectors: Vec<(u32, Vec<f32>)>) -> Vec<(u32, u32)> {
    vectors
        .into_iter()
        .map(|(doc_index, vector)| {
            let slot = part.vectors.insert(&vector);
            if part.slot_doc.len() <= slot as usize {
                part.slot_doc.resize(slot as usize + 1, u32::MAX);
            }
            part.slot_doc[slot as usize] = doc_index;
            (doc_index, slot)
        })
        .collect()
}

/// Parses PostgreSQL's text form of a tsvector (`'auth':1,4B 'token':2 'ns x'`) into
/// lexemes with their frequencies (the number of positions, 1 without any). Lexemes with a
/// space are left out: no parsed word has one, only the scope tags migration 0005 adds.
pub fn parse_tsvector(text: &str) -> Result<Vec<(String, u32)>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' => i += 1,
            b'\'' => {
                i += 1;
                let mut lexeme = Vec::new();
                loop {
                    match bytes.get(i) {
                        None => return Err(format!("unterminated lexeme at byte {i}")),
                        Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => {
                            lexeme.push(b'\'');
                            i += 2;
                        }
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if i + 1 < bytes.len() => {
                            lexeme.push(bytes[i + 1]);
                            i += 2;
                        }
                        Some(&c) => {
                            lexeme.push(c);
                            i += 1;
                        }
                    }
                }
                let mut frequency = 1;
                if bytes.get(i) == Some(&b':') {
                    i += 1;
                    frequency = 0;
                    while i < bytes.len() && bytes[i] != b' ' {
                        if bytes[i] == b',' {
                            i += 1;
                            continue;
                        }
                        if !bytes[i].is_ascii_digit() {
                            return Err(format!("bad position at byte {i}"));
                        }
                        while i < bytes.len() && bytes[i].is_ascii_digit() {
                            i += 1;
                        }
                        while i < bytes.len() && matches!(bytes[i], b'A'..=b'D') {
                            i += 1;
                        }
                        frequency += 1;
                    }
                }
                let lexeme =
                    String::from_utf8(lexeme).map_err(|_| "lexeme is not UTF-8".to_owned())?;
                if !lexeme.contains(' ') {
                    out.push((lexeme, frequency.max(1)));
                }
            }
            c => return Err(format!("unexpected {:?} at byte {i}", c as char)),
        }
    }
    Ok(out)
}

/// Decodes pgvector's binary form (`vector_send`: int16 dimension, int16 unused, then the
/// big-endian float4s) to a unit vector; None for the zero vector.
pub fn parse_vector(bytes: &[u8], dim: usize) -> Result<Option<Vec<f32>>, String> {
    if bytes.len() < 4 {
        return Err("vector shorter than its header".to_owned());
    }
    let declared = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
    if declared != dim || bytes.len() != 4 + 4 * dim {
        return Err(format!(
            "vector of {declared} dimensions ({} bytes); the index holds {dim}",
            bytes.len()
        ));
    }
    let values: Vec<f32> = bytes[4..]
        .chunks_exact(4)
        .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(unit(values))
}

/// `values` scaled to unit length; None for a zero or non-finite vector.
pub fn unit(mut values: Vec<f32>) -> Option<Vec<f32>> {
    let norm = values
        .iter()
        .map(|v| f64::from(*v) * f64::from(*v))
        .sum::<f64>()
        .sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return None;
    }
    for v in &mut values {
        *v = (f64::from(*v) / norm) as f32;
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIM: usize = 8;

    fn axis(i: usize) -> Vec<f32> {
        let mut v = vec![0.0; DIM];
        v[i % DIM] = 1.0;
        v
    }

    fn mixed(i: usize, j: usize, w: f32) -> Vec<f32> {
        let mut v = vec![0.0; DIM];
        v[i] = 1.0;
        v[j] += w;
        unit(v).unwrap()
    }

    fn doc(id: i64, ns: &str, shared: bool, words: &str, vector: Option<Vec<f32>>) -> MemoryDoc {
        let mut terms: Vec<(String, u32)> = Vec::new();
        for w in words.split_whitespace() {
            match terms.iter_mut().find(|(t, _)| t == w) {
                Some(e) => e.1 += 1,
                None => terms.push((w.to_owned(), 1)),
            }
        }
        MemoryDoc {
            id,
            namespace: ns.to_owned(),
            shared,
            importance: 0.5,
            created_us: id,
            terms,
            embedding: vector,
        }
    }

    fn query<'a>(ns: &'a str, lexemes: &'a [String], vector: Option<&'a [f32]>) -> RecallQuery<'a> {
        RecallQuery {
            namespace: ns,
            lexemes,
            vector,
            candidates: 50,
            limit: 10,
            max_distance: 0.9,
            rrf_k: 60.0,
        }
    }

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn ids(found: &[Ranked]) -> Vec<i64> {
        found.iter().map(|r| r.id).collect()
    }

    #[test]
    fn a_namespace_reads_its_own_and_shared_memories_only() {
        let mut index = RecallIndex::new(RecallConfig::new(DIM));
        index.upsert(doc(1, "a", false, "redis token", Some(axis(0))));
        index.upsert(doc(2, "b", false, "redis token", Some(axis(0))));
        index.upsert(doc(3, "b", true, "redis token", Some(axis(0))));
        let q = words("redis");
        let v = axis(0);
        let mut found = ids(&index.search(&query("a", &q, Some(&v))));
        found.sort();
        assert_eq!(found, vec![1, 3]);
        let mut found = ids(&index.search(&query("c", &q, Some(&v))));
        found.sort();
        assert_eq!(found, vec![3]);
    }

    #[test]
    fn all_words_before_any_word() {
        let mut index = RecallIndex::new(RecallConfig::new(DIM));
        index.upsert(doc(1, "a", false, "redis redis redis cache", None));
        index.upsert(doc(2, "a", false, "redis token", None));
        let found = ids(&index.search(&query("a", &words("redis token"), None)));
        assert_eq!(found, vec![2], "only the memory holding both words");
        let found = ids(&index.search(&query("a", &words("redis nothing"), None)));
        assert_eq!(
            found,
            vec![1, 2],
            "no memory holds both: any word, tf ranks"
        );
    }

    #[test]
    fn bm25_prefers_rare_terms() {
        let mut index = RecallIndex::new(RecallConfig::new(DIM));
        for id in 1..=20 {
            index.upsert(doc(id, "a", false, "common filler", None));
        }
        index.upsert(doc(30, "a", false, "common", None));
        index.upsert(doc(31, "a", false, "rare", None));
        let found = ids(&index.search(&query("a", &words("common rare"), None)));
        assert_eq!(found[0], 31);
    }

    #[test]
    fn vector_ranking_fuses_with_text_and_respects_the_distance_bound() {
        let mut index = RecallIndex::new(RecallConfig::new(DIM));
        index.upsert(doc(1, "a", false, "alpha", Some(axis(1))));
        index.upsert(doc(2, "a", false, "beta", Some(mixed(1, 2, 0.1))));
        index.upsert(doc(3, "a", false, "gamma", Some(axis(5))));
        let v = axis(1);
        let found = index.search(&query("a", &words("beta"), Some(&v)));
        // 2: text rank 1 + vector rank 2; 1: vector rank 1; 3 is orthogonal (distance 1).
        assert_eq!(ids(&found), vec![2, 1]);
        assert!((found[0].score - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-12);
    }

    #[test]
    fn the_vector_search_starts_from_the_text_matches() {
        // Odd memories among thousands of alike ones, each with a word of its own: their
        // graph in-links are pruned by the crowd, so only the text match's seed finds them.
        const D: usize = 32;
        let mut state = 0x5EED_u64;
        let mut gauss = move || {
            let mut next = || {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 + 1e-12
            };
            let (u, v) = (next(), next());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        };
        let mut config = RecallConfig::new(D);
        (
            config.m,
            config.ef_construction,
            config.ef_search,
            config.exact_below,
        ) = (4, 16, 1, 0);
        let mut index = RecallIndex::new(config);
        let centre: Vec<f32> = (0..D).map(|_| gauss()).collect();
        let crowd: Vec<MemoryDoc> = (0..3_000)
            .map(|id| {
                let v = centre.iter().map(|c| c + 0.4 * gauss()).collect();
                doc(id, "a", false, "usual words", unit(v))
            })
            .collect();
        index.upsert_batch(crowd);
        let odd: Vec<Vec<f32>> = (0..40)
            .map(|_| unit((0..D).map(|_| gauss()).collect()).unwrap())
            .collect();
        for (i, v) in odd.iter().enumerate() {
            index.upsert(doc(
                10_000 + i as i64,
                "a",
                false,
                &format!("odd{i}"),
                Some(v.clone()),
            ));
        }
        for (i, v) in odd.iter().enumerate() {
            let lexemes = words(&format!("odd{i}"));
            let near: Vec<f32> = unit(v.iter().map(|x| x + 0.01 * gauss()).collect()).unwrap();
            let mut q = query("a", &lexemes, Some(&near));
            (q.candidates, q.limit) = (3, 3);
            let found = index.search(&q);
            assert_eq!(found[0].id, 10_000 + i as i64);
            assert!(
                (found[0].score - 2.0 / 61.0).abs() < 1e-12,
                "odd{i} is first in the text ranking and in the vector ranking: {found:?}"
            );
        }
    }

    #[test]
    fn upsert_replaces_and_remove_forgets() {
        let mut index = RecallIndex::new(RecallConfig::new(DIM));
        index.upsert(doc(1, "a", false, "old words", Some(axis(0))));
        index.upsert(doc(1, "a", true, "new words", Some(axis(3))));
        assert_eq!(index.len(), 1);
        assert!(index.search(&query("a", &words("old"), None)).is_empty());
        assert_eq!(
            ids(&index.search(&query("z", &words("new"), None))),
            vec![1]
        );
        assert!(index.remove(1));
        assert!(!index.remove(1));
        assert!(index
            .search(&query("z", &words("new"), Some(&axis(3))))
            .is_empty());
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn compaction_keeps_every_live_memory_findable() {
        let mut config = RecallConfig::new(DIM);
        config.exact_below = 10; // graphs, not exact scans
        let mut index = RecallIndex::new(config);
        for id in 0..600 {
            index.upsert(doc(
                id,
                "a",
                false,
                &format!("w{} all", id % 7),
                Some(mixed(id as usize % DIM, (id as usize + 3) % DIM, 0.3)),
            ));
        }
        for id in (0..600).filter(|id| id % 3 != 0) {
            index.remove(id);
        }
        assert!(index.compaction_due());
        assert_eq!(
            index.stats().removed_vectors,
            400,
            "removals alone do not compact"
        );
        assert_eq!(index.compact(), 1);
        assert!(!index.compaction_due());
        assert_eq!(index.compact(), 0);
        let stats = index.stats();
        assert_eq!(stats.documents, 200);
        assert_eq!(
            (stats.dead_postings, stats.removed_vectors),
            (0, 0),
            "{stats:?}"
        );
        for id in (0..600).step_by(3) {
            let q = words(&format!("w{}", id % 7));
            assert!(index
                .text_ranking(&index.readable("a"), &q, 1000)
                .iter()
                .any(|&d| index.docs[d as usize].id == id));
        }
        // Reused document slots stay consistent with their postings.
        for id in 1000..1400 {
            index.upsert(doc(id, "a", false, "fresh", Some(axis(2))));
        }
        let q = words("fresh");
        assert_eq!(
            index.text_ranking(&index.readable("a"), &q, 1000).len(),
            400
        );
        assert_eq!(index.len(), 600);
    }

    #[test]
    fn a_batch_equals_one_upsert_at_a_time() {
        let mut config = RecallConfig::new(DIM);
        config.exact_below = 10; // graphs, built on several threads in the batch
        let memories: Vec<MemoryDoc> = (0..2400)
            .map(|i| {
                let id = (i % 2000) as i64; // the last 400 replace earlier ones
                let ns = ["a", "b", "c", "d"][i % 4];
                doc(
                    id,
                    ns,
                    i % 9 == 0,
                    &format!("w{} v{}", i % 13, i % 5),
                    Some(mixed(i % DIM, (i * 7 + 1) % DIM, (i % 10) as f32 / 10.0)),
                )
            })
            .collect();
        let mut one_by_one = RecallIndex::new(config);
        let mut last: HashMap<i64, usize> = HashMap::new();
        for (i, m) in memories.iter().enumerate() {
            last.insert(m.id, i);
        }
        // The batch keeps each id's last version, in the order of first appearance of
        // those versions: replay exactly that.
        let mut order: Vec<usize> = last.values().copied().collect();
        order.sort_unstable();
        for &i in &order {
            one_by_one.upsert(memories[i].clone());
        }
        let mut batched = RecallIndex::new(config);
        batched.upsert_batch(memories);
        assert_eq!(batched.len(), 2000);
        for ns in ["a", "b", "c", "d", "z"] {
            for q in 0..DIM {
                let lexemes = words(&format!("w{q} v{}", q % 5));
                let v = mixed(q, (q + 3) % DIM, 0.4);
                assert_eq!(
                    batched.search(&query(ns, &lexemes, Some(&v))),
                    one_by_one.search(&query(ns, &lexemes, Some(&v)))
                );
            }
        }
    }

    #[test]
    fn tsvector_text() {
        let parsed =
            parse_tsvector("'auth':1,4B 'it''s':2 'ns agent-1' 'plain' 'x\\\\y':3").unwrap();
        assert_eq!(
            parsed,
            vec![
                ("auth".to_owned(), 2),
                ("it's".to_owned(), 1),
                ("plain".to_owned(), 1),
                ("x\\y".to_owned(), 1)
            ]
        );
        assert!(parse_tsvector("'open").is_err());
        assert_eq!(parse_tsvector("").unwrap(), vec![]);
    }

    #[test]
    fn pgvector_binary() {
        let mut bytes = vec![0, 2, 0, 0];
        bytes.extend(3.0f32.to_be_bytes());
        bytes.extend(4.0f32.to_be_bytes());
        assert_eq!(parse_vector(&bytes, 2).unwrap(), Some(vec![0.6, 0.8]));
        assert!(parse_vector(&bytes, 3).is_err());
        let zero = [0, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_vector(&zero, 1).unwrap(), None);
    }
}
