//! Example index: scores a query against the example utterances of every pattern, for the
//! router's second stage (used when no trigger regex matches).
//!
//! LEXICAL on its own: a query is close to an example when they share words, word bigrams
//! or word pieces, never because they mean the same thing in other words. With the
//! examples' embeddings by a real model attached ([`ExampleIndex::with_vectors`]), a query
//! that comes with its own embedding is scored on both (see *Blending*).
//!
//! # Scoring
//!
//! TF-IDF cosine similarity, in the convention of scikit-learn's `TfidfVectorizer`
//! (`sublinear_tf=True, smooth_idf=True, norm="l2"`), on two feature blocks:
//!
//! 1. Features are those of [`crate::embed`] (`hash-v1`): lowercased words (maximal runs of
//!    Unicode alphanumeric characters), adjacent word bigrams, and the 3- to 5-character
//!    n-grams of `<word>`. They are kept as exact 64-bit hashes (no buckets): at the size
//!    of a pattern library a collision is practically impossible. The embedder's weights
//!    are not used.
//! 2. Term weight `(1 + ln tf) * idf`, with `idf = ln((1 + N) / (1 + df)) + 1`, `N` the
//!    number of examples and `df` the number of examples that contain the feature.
//! 3. Two blocks, each L2-normalised on its own: the *word* block (words and bigrams) and
//!    the *char* block (n-grams). `score = WORD_BLOCK_WEIGHT * cos_words +
//!    (1 - WORD_BLOCK_WEIGHT) * cos_chars`, in `[0, 1]`; `1.0` means the same features in
//!    the same proportions (for instance the same text up to case and punctuation).
//! 4. The vocabulary is that of the examples: a query feature that no example contains has
//!    no idf and is dropped (it neither adds to the dot product nor to the query's norm),
//!    so a query whose features are all unseen, or that has no features at all (empty,
//!    punctuation only), scores nothing.
//!
//! # Blending
//!
//! `score = (1 - w) * lexical + w * max(0, cos(query vector, example vector))`, with `w`
//! the weight given to [`ExampleIndex::with_vectors`]. Vectors are normalised on entry; an
//! example without one (a text with nothing to embed) has a semantic part of zero. The
//! same thresholds then mean "close in words or in meaning", which is why the router's
//! thresholds should be recalibrated when a model is attached. A blended query reads every
//! example back (one dot product each): O(examples × dimensions).
//!
//! A pattern's score is that of its best example (ties go to the example registered first).
//! Weights are computed in `f64`, stored and accumulated in `f32`: scores agree with an
//! exact computation to about `1e-6`, and identical examples always tie exactly (each
//! example's dot product is summed in the same order, that of the query's features).
//!
//! # Cost
//!
//! Example vectors are computed once, at build time, into an inverted index (feature →
//! postings of `(example, weight)`, examples grouped by pattern). A query is tokenised,
//! each of its features looked up once, and only the postings of those features are
//! visited, accumulating into per-thread scratch arrays. When the postings are few, the
//! examples they touch are recorded and only those are read back; when they are many
//! (at least [`DENSE_POSTINGS_PER_EXAMPLE`] per example), recording costs more than
//! reading back every example in order. Either way the query costs O(postings touched),
//! never O(examples) on its own.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::bayes::{self, LeftOut, NaiveBayes, Term};
use crate::embed::{FeatureExtractor, FeatureKind};

/// Share of the word block (words and bigrams) in the score; the char block (n-grams)
/// gets the rest. Even: words carry the meaning, n-grams catch morphological variants
/// ("optimize" / "optimization") and typos, and neither should drown the other.
pub const WORD_BLOCK_WEIGHT: f64 = 0.5;

/// A query whose posting lists hold at least this many postings per example is read back
/// with one pass over all examples (cheaper than recording each touched example, and still
/// at most `1 / DENSE_POSTINGS_PER_EXAMPLE` steps per posting).
pub const DENSE_POSTINGS_PER_EXAMPLE: f64 = 0.5;

/// Floor of every stored and query weight, far below any real one (a weight is at least
/// `1 / sqrt(number of features of its text)`). It keeps every product strictly positive,
/// so an example's accumulator is non-zero once touched.
const MIN_WEIGHT: f32 = 1e-18;

/// Up to this `top_k`, the best candidates are kept in a small sorted array as they come;
/// above it, all candidates are collected and selected at the end.
const SMALL_TOP_K: usize = 32;

/// The features are already `fmix64` outputs: well mixed in every bit, so the map can use
/// them as their own hash.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; kept total for safety.
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What a query needs of a feature, in one place (one cache miss per query feature).
#[derive(Debug, Clone, Copy)]
struct Feature {
    /// Its postings: `postings[start..end]`.
    start: u32,
    end: u32,
    idf: f64,
    /// Its id in [`NaiveBayes`].
    id: u32,
}

type FeatureMap = HashMap<u64, Feature, BuildHasherDefault<IdentityHasher>>;

/// Block of a feature: 0 = words and bigrams, 1 = character n-grams.
fn block(kind: FeatureKind) -> u8 {
    match kind {
        FeatureKind::Word | FeatureKind::Bigram => 0,
        FeatureKind::NGram => 1,
    }
}

/// Sublinear term frequency `1 + ln tf` (most features occur once).
fn tf_weight(tf: u32) -> f64 {
    if tf == 1 {
        1.0
    } else {
        1.0 + f64::from(tf).ln()
    }
}

/// One scored pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Registration index of the pattern (order of first appearance of its name in the
    /// examples); its name is [`ExampleIndex::pattern_name`].
    pub pattern: usize,
    /// `WORD_BLOCK_WEIGHT * cos_words + (1 - WORD_BLOCK_WEIGHT) * cos_chars`, in `(0, 1]`.
    pub score: f32,
    /// Index, in the list given to [`ExampleIndex::new`], of the pattern's best example.
    pub example: usize,
}

/// One pattern as [`ExampleIndex::classify`] ranks it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    pub pattern: usize,
    /// Its naive Bayes probability for the query, over all patterns.
    pub probability: f32,
    /// Input index of its nearest example, and that example's cosine score.
    pub example: usize,
    pub cosine: f32,
}

/// Result order: score descending, then registration order.
fn rank(a: &Candidate, b: &Candidate) -> Ordering {
    b.score.total_cmp(&a.score).then(a.pattern.cmp(&b.pattern))
}

/// Sizes of an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    pub patterns: usize,
    pub examples: usize,
    /// Distinct kinds.
    pub kinds: usize,
    /// Distinct words and bigrams.
    pub word_features: usize,
    /// Distinct character n-grams.
    pub char_features: usize,
    /// Total postings, i.e. non-zero weights of all example vectors.
    pub postings: usize,
    /// Examples without any feature (they never score).
    pub empty_examples: usize,
}

/// A distinct feature of the query.
struct QueryTerm {
    hash: u64,
    tf: u32,
    block: u8,
    /// Filled in once the feature is known to the index.
    feature: Feature,
    weight: f64,
}

/// How a query reads its scores back (see the module docs); `Auto` picks by cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Auto,
    #[cfg(test)]
    Sparse,
    #[cfg(test)]
    Dense,
}

/// Per-thread buffers of [`ExampleIndex::score`], sized to the largest index used on the
/// thread. `acc` and `best` are all zero between queries: each query resets exactly the
/// entries it touched.
#[derive(Default)]
struct Scratch {
    extractor: FeatureExtractor,
    /// `(hash, block)` of every feature occurrence of the query.
    occurrences: Vec<(u64, u8)>,
    /// Open-addressing set of the query's features: `(hash, 1 + position in terms)`, or
    /// `(_, 0)` for a free slot.
    distinct: Vec<(u64, u32)>,
    terms: Vec<QueryTerm>,
    /// Per example: its score so far.
    acc: Vec<f32>,
    sparse: SparseScratch,
    candidates: Vec<Candidate>,
    bayes_terms: Vec<Term>,
    bayes_counts: Vec<f64>,
    bayes_out: Vec<f64>,
}

/// Buffers of [`ExampleIndex::accumulate_sparse`].
#[derive(Default)]
struct SparseScratch {
    /// Examples touched, in order; one more entry than examples.
    touched: Vec<u32>,
    /// Per pattern: best score and example.
    best: Vec<(f32, u32)>,
    touched_patterns: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Why [`ExampleIndex::with_vectors`] or [`ExampleIndex::score_blended`] refused vectors.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorError {
    /// Not one vector (or `None`) per example.
    Count { expected: usize, found: usize },
    /// A vector of another length than the first (`example`: input index) or, for a
    /// query, than the index's.
    Dimension {
        expected: usize,
        found: usize,
        example: Option<usize>,
    },
    /// Empty vectors, or a vector with a NaN or infinite component.
    Invalid { example: Option<usize> },
    /// The weight is not within `[0, 1]`.
    Weight(f32),
    /// The index has no vectors to compare a query vector with.
    NoVectors,
}

impl std::fmt::Display for VectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |example: &Option<usize>| match example {
            Some(i) => format!("example {i}"),
            None => "the query vector".to_owned(),
        };
        match self {
            Self::Count { expected, found } => {
                write!(f, "{found} vectors for {expected} examples")
            }
            Self::Dimension {
                expected,
                found,
                example,
            } => write!(
                f,
                "{} has {found} dimensions, expected {expected}",
                at(example)
            ),
            Self::Invalid { example } => {
                write!(f, "{} is empty or not finite", at(example))
            }
            Self::Weight(w) => write!(f, "weight {w} is not within [0, 1]"),
            Self::NoVectors => write!(f, "the index has no example vectors"),
        }
    }
}

impl std::error::Error for VectorError {}

/// The examples' embeddings, blended into the score (module docs, *Blending*).
#[derive(Clone)]
struct Semantic {
    dim: usize,
    weight: f32,
    /// Unit vectors in internal example order, `dim` floats each; zeros for "none".
    rows: Vec<f32>,
}

/// Unit-length copy of `vector`, or `None` for a zero vector; an error if not finite.
fn unit(vector: &[f32], example: Option<usize>) -> Result<Option<Vec<f32>>, VectorError> {
    if vector.is_empty() || vector.iter().any(|x| !x.is_finite()) {
        return Err(VectorError::Invalid { example });
    }
    let norm = vector
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return Ok(None);
    }
    Ok(Some(
        vector
            .iter()
            .map(|&x| (f64::from(x) / norm) as f32)
            .collect(),
    ))
}

/// Dot product in eight independent lanes, so the compiler can vectorise it (a single
/// running sum would pin the order of the additions).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for lane in 0..8 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// TF-IDF index over the example utterances of a pattern library; see the module docs.
/// Immutable once built, `Send + Sync`.
///
/// Examples are numbered internally grouped by pattern (registration order, then input
/// order within a pattern), so a pattern's examples are one range.
#[derive(Clone)]
pub struct ExampleIndex {
    /// Pattern names in registration order.
    patterns: Vec<String>,
    /// Internal examples of pattern `p`: `pattern_start[p]..pattern_start[p + 1]`.
    pattern_start: Vec<u32>,
    /// Kind names by id.
    kinds: Vec<String>,
    /// Per internal example: its pattern, its kind id, its index in the input.
    example_pattern: Vec<u32>,
    example_kind: Vec<u32>,
    example_input: Vec<u32>,
    /// Per input example: its internal number.
    input_internal: Vec<u32>,
    /// Per internal example: its total count in `bayes` (all features, weighted).
    example_bayes_total: Vec<f64>,
    bayes: NaiveBayes,
    /// Feature hash → its postings and idf.
    features: FeatureMap,
    /// The postings of every feature, back to back, each list by ascending internal
    /// example, weights already L2-normalised within the example's block.
    postings: Vec<(u32, f32)>,
    word_features: usize,
    empty_examples: usize,
    semantic: Option<Semantic>,
}

/// Looks up or registers `name`, returning its id.
fn intern(name: &str, names: &mut Vec<String>, ids: &mut HashMap<String, u32>) -> u32 {
    if let Some(&id) = ids.get(name) {
        return id;
    }
    let id = names.len() as u32;
    names.push(name.to_owned());
    ids.insert(name.to_owned(), id);
    id
}

impl ExampleIndex {
    /// Builds the index of `examples`, each `(pattern name, kind, text)`. A pattern's
    /// examples need not be adjacent; patterns are registered in order of first appearance.
    /// Kinds belong to examples: a `kind` filter considers only the examples of that kind.
    ///
    /// # Panics
    /// With more than `u32::MAX` examples, features or postings.
    pub fn new(examples: Vec<(String, String, String)>) -> Self {
        let n = examples.len();
        assert!(u32::try_from(n).is_ok(), "too many examples");

        // Names, kinds, and the internal numbering: a counting sort by pattern, stable.
        let mut patterns = Vec::new();
        let mut pattern_ids = HashMap::new();
        let mut kinds = Vec::new();
        let mut kind_ids = HashMap::new();
        let mut input_pattern = Vec::with_capacity(n);
        let mut input_kind = Vec::with_capacity(n);
        for (name, kind, _) in &examples {
            input_pattern.push(intern(name, &mut patterns, &mut pattern_ids));
            input_kind.push(intern(kind, &mut kinds, &mut kind_ids));
        }
        let mut pattern_start = vec![0u32; patterns.len() + 1];
        for &p in &input_pattern {
            pattern_start[p as usize + 1] += 1;
        }
        for p in 1..pattern_start.len() {
            pattern_start[p] += pattern_start[p - 1];
        }
        let mut next = pattern_start.clone();
        let mut internal = Vec::with_capacity(n);
        let mut example_input = vec![0u32; n];
        for (input, &p) in input_pattern.iter().enumerate() {
            let id = next[p as usize];
            next[p as usize] += 1;
            internal.push(id);
            example_input[id as usize] = input as u32;
        }
        let example_pattern: Vec<u32> = example_input
            .iter()
            .map(|&i| input_pattern[i as usize])
            .collect();
        let example_kind: Vec<u32> = example_input
            .iter()
            .map(|&i| input_kind[i as usize])
            .collect();

        // Every feature occurrence of every example, sorted: equal features become adjacent
        // (one id each, in hash order) and so do their occurrences in one example (tf).
        // One sort costs less than a hash-map probe per occurrence, which misses the cache.
        let mut occurrences: Vec<(u64, u32, u8)> = Vec::new();
        let mut extractor = FeatureExtractor::default();
        for ((_, _, text), &id) in examples.iter().zip(&internal) {
            extractor.extract(text, |kind, hash, _| {
                occurrences.push((hash, id, block(kind)));
            });
        }
        drop(examples);
        let occurrences = sort_occurrences(occurrences);

        // Postings, feature-major and ascending example within a feature; tf for now.
        let mut hashes: Vec<u64> = Vec::new();
        let mut blocks: Vec<u8> = Vec::new();
        let mut offsets: Vec<u32> = vec![0];
        let mut postings: Vec<(u32, f32)> = Vec::new();
        let mut tfs: Vec<u32> = Vec::new();
        for feature in occurrences.chunk_by(|a, b| a.0 == b.0) {
            hashes.push(feature[0].0);
            blocks.push(feature[0].2);
            for posting in feature.chunk_by(|a, b| a.1 == b.1) {
                postings.push((posting[0].1, 0.0));
                tfs.push(posting.len() as u32);
            }
            offsets.push(u32::try_from(postings.len()).expect("too many postings"));
        }
        drop(occurrences);
        assert!(u32::try_from(hashes.len()).is_ok(), "too many features");

        let idf: Vec<f64> = offsets
            .windows(2)
            .map(|w| ((1.0 + n as f64) / (1.0 + f64::from(w[1] - w[0]))).ln() + 1.0)
            .collect();
        // Weights, then each example's block norms, then the normalised weights.
        let mut weights: Vec<f64> = Vec::with_capacity(postings.len());
        let mut norms = vec![[0.0f64; 2]; n];
        for (feature, range) in offsets.windows(2).enumerate() {
            let block = usize::from(blocks[feature]);
            for i in range[0] as usize..range[1] as usize {
                let w = tf_weight(tfs[i]) * idf[feature];
                norms[postings[i].0 as usize][block] += w * w;
                weights.push(w);
            }
        }
        for norm in &mut norms {
            *norm = norm.map(f64::sqrt);
        }
        for (feature, range) in offsets.windows(2).enumerate() {
            let block = usize::from(blocks[feature]);
            for i in range[0] as usize..range[1] as usize {
                let (example, weight) = &mut postings[i];
                let w = weights[i] / norms[*example as usize][block];
                *weight = (w as f32).max(MIN_WEIGHT);
            }
        }
        let empty_examples = norms.iter().filter(|n| n[0] == 0.0).count();

        let mut features = FeatureMap::default();
        features.reserve(hashes.len());
        features.extend(hashes.iter().enumerate().map(|(id, &hash)| {
            let feature = Feature {
                start: offsets[id],
                end: offsets[id + 1],
                idf: idf[id],
                id: id as u32,
            };
            (hash, feature)
        }));

        let word_features = blocks.iter().filter(|&&b| b == 0).count();
        let bayes_weight = |block: u8| {
            if block == 0 {
                bayes::WORD_BLOCK
            } else {
                1.0 - bayes::WORD_BLOCK
            }
        };
        let mut example_bayes_total = vec![0.0f64; n];
        for (feature, range) in offsets.windows(2).enumerate() {
            for &(example, weight) in &postings[range[0] as usize..range[1] as usize] {
                example_bayes_total[example as usize] +=
                    f64::from(weight) * bayes_weight(blocks[feature]);
            }
        }
        let example_class = &example_pattern;
        let bayes = NaiveBayes::new(
            patterns.len(),
            example_class,
            offsets.windows(2).enumerate().map(|(feature, range)| {
                let w = bayes_weight(blocks[feature]);
                postings[range[0] as usize..range[1] as usize]
                    .iter()
                    .map(move |&(example, weight)| {
                        (example_class[example as usize], f64::from(weight) * w)
                    })
                    .collect::<Vec<_>>()
            }),
        );
        Self {
            patterns,
            pattern_start,
            kinds,
            input_internal: internal,
            example_bayes_total,
            bayes,
            example_pattern,
            example_kind,
            example_input,
            features,
            postings,
            word_features,
            empty_examples,
            semantic: None,
        }
    }

    /// A copy of this index with the examples' embeddings attached: `vectors[i]` is that
    /// of input example `i` (`None`: it has none), all of one length; `weight` is the share
    /// of the embedding cosine in a blended score.
    pub fn with_vectors(
        &self,
        vectors: &[Option<Vec<f32>>],
        weight: f32,
    ) -> Result<Self, VectorError> {
        if !(0.0..=1.0).contains(&weight) {
            return Err(VectorError::Weight(weight));
        }
        if vectors.len() != self.len() {
            return Err(VectorError::Count {
                expected: self.len(),
                found: vectors.len(),
            });
        }
        let Some(dim) = vectors.iter().flatten().map(Vec::len).next() else {
            return Err(VectorError::NoVectors);
        };
        let mut rows = vec![0.0f32; self.len() * dim];
        for (internal, &input) in self.example_input.iter().enumerate() {
            let Some(vector) = &vectors[input as usize] else {
                continue;
            };
            let example = Some(input as usize);
            if vector.len() != dim {
                return Err(VectorError::Dimension {
                    expected: dim,
                    found: vector.len(),
                    example,
                });
            }
            if let Some(v) = unit(vector, example)? {
                rows[internal * dim..(internal + 1) * dim].copy_from_slice(&v);
            }
        }
        let mut copy = self.clone();
        copy.semantic = Some(Semantic { dim, weight, rows });
        Ok(copy)
    }

    /// Length of the attached example vectors, if any.
    pub fn vector_dim(&self) -> Option<usize> {
        self.semantic.as_ref().map(|s| s.dim)
    }

    /// Weight of the embedding cosine in a blended score, if vectors are attached.
    pub fn vector_weight(&self) -> Option<f32> {
        self.semantic.as_ref().map(|s| s.weight)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.example_input.len()
    }

    pub fn is_empty(&self) -> bool {
        self.example_input.is_empty()
    }

    /// Number of distinct features (words, bigrams and n-grams) over all examples.
    pub fn feature_count(&self) -> usize {
        self.features.len()
    }

    /// Number of distinct pattern names.
    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }

    /// Name of the pattern registered `pattern`-th ([`Candidate::pattern`]).
    ///
    /// # Panics
    /// If `pattern >= pattern_count()`.
    pub fn pattern_name(&self, pattern: usize) -> &str {
        &self.patterns[pattern]
    }

    pub fn stats(&self) -> IndexStats {
        IndexStats {
            patterns: self.patterns.len(),
            examples: self.len(),
            kinds: self.kinds.len(),
            word_features: self.word_features,
            char_features: self.feature_count() - self.word_features,
            postings: self.postings.len(),
            empty_examples: self.empty_examples,
        }
    }

    /// The `top_k` best patterns for `query`, one entry each (its best example), by score
    /// descending then registration order; only scores above zero. With `kind`, only
    /// examples of that kind count (an unknown kind scores nothing).
    pub fn score(&self, query: &str, top_k: usize, kind: Option<&str>) -> Vec<Candidate> {
        self.score_mode(query, top_k, kind, None, Mode::Auto)
    }

    /// [`score`](Self::score) as if example `exclude` were not in the index (its features
    /// still count in the idf): leave-one-out evaluation of an example against the others.
    pub fn score_without(
        &self,
        query: &str,
        top_k: usize,
        kind: Option<&str>,
        exclude: usize,
    ) -> Vec<Candidate> {
        let exclude = u32::try_from(exclude).ok();
        self.score_mode(query, top_k, kind, exclude, Mode::Auto)
    }

    /// [`score`](Self::score) blended with the cosine of `vector` (the query's embedding by
    /// the model that embedded the examples) and every example's vector; `exclude` as in
    /// [`score_without`](Self::score_without). A zero `vector` scores lexically only.
    pub fn score_blended(
        &self,
        query: &str,
        vector: &[f32],
        top_k: usize,
        kind: Option<&str>,
        exclude: Option<usize>,
    ) -> Result<Vec<Candidate>, VectorError> {
        let Some(semantic) = &self.semantic else {
            return Err(VectorError::NoVectors);
        };
        if vector.len() != semantic.dim {
            return Err(VectorError::Dimension {
                expected: semantic.dim,
                found: vector.len(),
                example: None,
            });
        }
        let exclude = exclude.map(|e| u32::try_from(e).unwrap_or(u32::MAX));
        Ok(match unit(vector, None)? {
            Some(unit_vector) => {
                self.score_with(query, Some(&unit_vector), top_k, kind, exclude, Mode::Auto)
            }
            None => self.score_mode(query, top_k, kind, exclude, Mode::Auto),
        })
    }

    /// The patterns (of `kind`, if given) that share a feature with `query`, ranked by
    /// their naive Bayes probability (see [`crate::bayes`]), most probable first (ties:
    /// registration order), at most `top_k`; each with its nearest example as
    /// [`score`](Self::score) finds it. Probabilities are over all patterns, whatever
    /// `kind`: a query that belongs to a pattern of another kind leaves little to those of
    /// `kind`. `exclude`: an input example left out (its counts removed from its pattern;
    /// the idf stays).
    pub fn classify(
        &self,
        query: &str,
        top_k: usize,
        kind: Option<&str>,
        exclude: Option<usize>,
    ) -> Vec<Ranked> {
        if top_k == 0 {
            return Vec::new();
        }
        let exclude_u32 = exclude.map(|e| u32::try_from(e).unwrap_or(u32::MAX));
        let touched = self.score_with(
            query,
            None,
            self.patterns.len().max(1),
            kind,
            exclude_u32,
            Mode::Auto,
        );
        if touched.is_empty() {
            return Vec::new();
        }
        let excluded = exclude.and_then(|e| self.input_internal.get(e).copied());
        let mut ranked: Vec<Ranked> = SCRATCH.with(|scratch| {
            let s = &mut *scratch.borrow_mut();
            // The scratch still holds this query's terms from `score_with`.
            let cosine_share = [WORD_BLOCK_WEIGHT, 1.0 - WORD_BLOCK_WEIGHT];
            let bayes_share = [bayes::WORD_BLOCK, 1.0 - bayes::WORD_BLOCK];
            s.bayes_terms.clear();
            s.bayes_counts.clear();
            for term in &s.terms {
                let block = usize::from(term.block);
                s.bayes_terms.push(Term {
                    feature: term.feature.id,
                    weight: term.weight / cosine_share[block] * bayes_share[block],
                });
                if let Some(example) = excluded {
                    let postings = self.postings_of(term);
                    let count = postings
                        .binary_search_by_key(&example, |&(e, _)| e)
                        .map_or(0.0, |at| f64::from(postings[at].1) * bayes_share[block]);
                    s.bayes_counts.push(count);
                }
            }
            let left_out = excluded.map(|example| LeftOut {
                class: self.example_pattern[example as usize],
                total: self.example_bayes_total[example as usize],
                counts: &s.bayes_counts,
            });
            self.bayes
                .log_posteriors(&s.bayes_terms, left_out.as_ref(), &mut s.bayes_out);
            touched
                .iter()
                .map(|c| Ranked {
                    pattern: c.pattern,
                    probability: s.bayes_out[c.pattern].exp() as f32,
                    example: c.example,
                    cosine: c.score,
                })
                .collect()
        });
        ranked.sort_by(|a, b| {
            b.probability
                .total_cmp(&a.probability)
                .then(a.pattern.cmp(&b.pattern))
        });
        ranked.truncate(top_k);
        ranked
    }

    fn score_mode(
        &self,
        query: &str,
        top_k: usize,
        kind: Option<&str>,
        exclude: Option<u32>,
        mode: Mode,
    ) -> Vec<Candidate> {
        self.score_with(query, None, top_k, kind, exclude, mode)
    }

    /// `vector`: the query's unit embedding (only with `self.semantic`).
    fn score_with(
        &self,
        query: &str,
        vector: Option<&[f32]>,
        top_k: usize,
        kind: Option<&str>,
        exclude: Option<u32>,
        mode: Mode,
    ) -> Vec<Candidate> {
        let blend = vector.zip(self.semantic.as_ref());
        // Callers name examples by input index; the accumulators see internal numbers.
        let exclude = exclude.and_then(|e| self.input_internal.get(e as usize).copied());
        let kind = match kind {
            None => None,
            Some(name) => match self.kinds.iter().position(|k| k == name) {
                Some(id) => Some(id as u32),
                None => return Vec::new(),
            },
        };
        if top_k == 0 || (self.postings.is_empty() && blend.is_none()) {
            return Vec::new();
        }
        SCRATCH.with(|scratch| {
            let s = &mut *scratch.borrow_mut();
            let postings = self.query_terms(s, query);
            if postings == 0 && blend.is_none() {
                return Vec::new();
            }
            // A blend scores every example, so it always reads all of them back.
            let dense = blend.is_some()
                || match mode {
                    Mode::Auto => postings as f64 >= DENSE_POSTINGS_PER_EXAMPLE * self.len() as f64,
                    #[cfg(test)]
                    Mode::Sparse => false,
                    #[cfg(test)]
                    Mode::Dense => true,
                };
            if s.acc.len() < self.len() {
                s.acc.resize(self.len(), 0.0);
            }
            s.candidates.clear();
            let mut top = TopK::new(top_k, &mut s.candidates);
            if dense {
                self.accumulate_dense(&s.terms, &mut s.acc, blend, kind, exclude, &mut top);
            } else {
                self.accumulate_sparse(
                    &s.terms,
                    &mut s.acc,
                    &mut s.sparse,
                    kind,
                    exclude,
                    &mut top,
                );
            }
            top.finish()
        })
    }

    /// Fills `s.terms` with the query's known features and their weights, already scaled
    /// by the block norm and weight; returns the length of their posting lists together.
    fn query_terms(&self, s: &mut Scratch, query: &str) -> usize {
        let Scratch {
            extractor,
            occurrences,
            distinct,
            terms,
            ..
        } = s;
        occurrences.clear();
        extractor.extract(query, |kind, hash, _| occurrences.push((hash, block(kind))));

        // Distinct features in order of first occurrence (a fixed summation order), counted
        // in a small table that stays in cache; then one index probe each.
        let size = (2 * occurrences.len()).next_power_of_two().max(16);
        distinct.clear();
        distinct.resize(size, (0, 0));
        terms.clear();
        let unknown = Feature {
            start: 0,
            end: 0,
            idf: 0.0,
            id: 0,
        };
        for &(hash, block) in occurrences.iter() {
            let mut i = hash as usize & (size - 1);
            loop {
                let (h, term) = distinct[i];
                if term == 0 {
                    terms.push(QueryTerm {
                        hash,
                        tf: 1,
                        block,
                        feature: unknown,
                        weight: 0.0,
                    });
                    distinct[i] = (hash, terms.len() as u32);
                    break;
                }
                if h == hash {
                    terms[term as usize - 1].tf += 1;
                    break;
                }
                i = (i + 1) & (size - 1);
            }
        }
        terms.retain_mut(|term| match self.features.get(&term.hash) {
            Some(&feature) => {
                term.feature = feature;
                true
            }
            None => false,
        });

        let mut norms = [0.0f64; 2];
        let mut postings = 0;
        for term in terms.iter_mut() {
            term.weight = tf_weight(term.tf) * term.feature.idf;
            norms[usize::from(term.block)] += term.weight * term.weight;
            postings += (term.feature.end - term.feature.start) as usize;
        }
        let scale = [
            WORD_BLOCK_WEIGHT / norms[0].sqrt(),
            (1.0 - WORD_BLOCK_WEIGHT) / norms[1].sqrt(),
        ];
        for term in terms.iter_mut() {
            term.weight *= scale[usize::from(term.block)];
        }
        postings
    }

    fn postings_of(&self, term: &QueryTerm) -> &[(u32, f32)] {
        &self.postings[term.feature.start as usize..term.feature.end as usize]
    }

    /// Many postings: add them all up, then read every example back, pattern by pattern.
    fn accumulate_dense(
        &self,
        terms: &[QueryTerm],
        acc: &mut [f32],
        blend: Option<(&[f32], &Semantic)>,
        kind: Option<u32>,
        exclude: Option<u32>,
        top: &mut TopK<'_>,
    ) {
        let acc = &mut acc[..self.len()];
        for term in terms {
            let q = (term.weight as f32).max(MIN_WEIGHT);
            for &(example, weight) in self.postings_of(term) {
                acc[example as usize] += q * weight;
            }
        }
        if let Some((vector, semantic)) = blend {
            let w = semantic.weight;
            for (slot, row) in acc.iter_mut().zip(semantic.rows.chunks_exact(semantic.dim)) {
                *slot = (1.0 - w) * *slot + w * dot(vector, row).max(0.0);
            }
        }
        for (pattern, range) in self.pattern_start.windows(2).enumerate() {
            let (start, end) = (range[0] as usize, range[1] as usize);
            let (mut best, mut best_example) = (0.0f32, 0);
            for (example, slot) in acc[start..end].iter_mut().enumerate() {
                let mut score = std::mem::replace(slot, 0.0);
                if kind.is_some_and(|k| self.example_kind[start + example] != k)
                    || exclude == Some((start + example) as u32)
                {
                    score = 0.0;
                }
                // Strictly greater: the first of equal examples wins.
                if score > best {
                    (best, best_example) = (score, start + example);
                }
            }
            if best > 0.0 {
                top.offer(self.candidate(pattern, best, best_example));
            }
        }
    }

    /// Few postings: record the examples they touch, and read back only those.
    fn accumulate_sparse(
        &self,
        terms: &[QueryTerm],
        acc: &mut [f32],
        s: &mut SparseScratch,
        kind: Option<u32>,
        exclude: Option<u32>,
        top: &mut TopK<'_>,
    ) {
        let SparseScratch {
            touched,
            best,
            touched_patterns,
        } = s;
        let n = self.len();
        if touched.len() <= n {
            touched.resize(n + 1, 0);
        }
        let acc = &mut acc[..n];
        // Every product is positive, so `acc[e] == 0` means "not touched yet": each example
        // is recorded once, and `touched` needs room for all plus the write past the last.
        let touched = &mut touched[..=n];
        let mut count = 0;
        for term in terms.iter() {
            let q = (term.weight as f32).max(MIN_WEIGHT);
            for &(example, weight) in self.postings_of(term) {
                let slot = &mut acc[example as usize];
                // Branch-free: always write, advance only on the first touch.
                touched[count] = example;
                count += usize::from(*slot == 0.0);
                *slot += q * weight;
            }
        }

        // Best example of each pattern; resets `acc`.
        if best.len() < self.patterns.len() {
            best.resize(self.patterns.len(), (0.0, 0));
        }
        touched_patterns.clear();
        for &example in &touched[..count] {
            let score = std::mem::replace(&mut acc[example as usize], 0.0);
            if kind.is_some_and(|k| self.example_kind[example as usize] != k)
                || exclude == Some(example)
            {
                continue;
            }
            let pattern = self.example_pattern[example as usize];
            let slot = &mut best[pattern as usize];
            if slot.0 == 0.0 {
                touched_patterns.push(pattern);
                *slot = (score, example);
            } else if score > slot.0 || (score == slot.0 && example < slot.1) {
                *slot = (score, example);
            }
        }
        // Resets `best`.
        for &pattern in touched_patterns.iter() {
            let (score, example) = std::mem::replace(&mut best[pattern as usize], (0.0, 0));
            top.offer(self.candidate(pattern as usize, score, example as usize));
        }
    }

    fn candidate(&self, pattern: usize, score: f32, example: usize) -> Candidate {
        Candidate {
            pattern,
            // Rounding may take an identical text a hair above 1.
            score: score.min(1.0),
            example: self.example_input[example] as usize,
        }
    }
}

/// The `k` best candidates offered, in [`rank`] order.
struct TopK<'a> {
    k: usize,
    items: &'a mut Vec<Candidate>,
}

impl<'a> TopK<'a> {
    fn new(k: usize, items: &'a mut Vec<Candidate>) -> Self {
        items.clear();
        Self { k, items }
    }

    #[inline]
    fn offer(&mut self, candidate: Candidate) {
        if self.k > SMALL_TOP_K {
            self.items.push(candidate);
        } else if self.items.len() == self.k && candidate.score < self.items[self.k - 1].score {
            // The common case once full: not even a tie with the last.
        } else if self.items.len() < self.k {
            let at = self.items.partition_point(|c| rank(c, &candidate).is_lt());
            self.items.insert(at, candidate);
        } else if rank(&candidate, &self.items[self.k - 1]).is_lt() {
            self.items.pop();
            let at = self.items.partition_point(|c| rank(c, &candidate).is_lt());
            self.items.insert(at, candidate);
        }
    }

    fn finish(self) -> Vec<Candidate> {
        if self.k > SMALL_TOP_K {
            if self.items.len() > self.k {
                self.items.select_nth_unstable_by(self.k - 1, rank);
                self.items.truncate(self.k);
            }
            self.items.sort_unstable_by(rank);
        }
        self.items.clone()
    }
}

/// `occurrences` sorted: a counting sort on the top bits of the hash (uniform: `fmix64`
/// output) into buckets of a few entries, then each bucket sorted on its own. Far faster
/// than a comparison sort of the whole, at the sizes of a pattern library.
fn sort_occurrences(occurrences: Vec<(u64, u32, u8)>) -> Vec<(u64, u32, u8)> {
    let len = occurrences.len();
    if len < 64 {
        let mut occurrences = occurrences;
        occurrences.sort_unstable();
        return occurrences;
    }
    // About 8 entries a bucket; len >= 64 so bits >= 3.
    let bits = (len / 8).ilog2().min(20);
    let bucket = |hash: u64| (hash >> (64 - bits)) as usize;
    let mut ends = vec![0usize; (1 << bits) + 1];
    for o in &occurrences {
        ends[bucket(o.0) + 1] += 1;
    }
    for i in 1..ends.len() {
        ends[i] += ends[i - 1];
    }
    let mut sorted = vec![(0u64, 0u32, 0u8); len];
    let mut next = ends.clone();
    for o in occurrences {
        let slot = &mut next[bucket(o.0)];
        sorted[*slot] = o;
        *slot += 1;
    }
    for range in ends.windows(2) {
        sorted[range[0]..range[1]].sort_unstable();
    }
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(examples: &[(&str, &str, &str)]) -> ExampleIndex {
        ExampleIndex::new(
            examples
                .iter()
                .map(|&(p, k, t)| (p.to_owned(), k.to_owned(), t.to_owned()))
                .collect(),
        )
    }

    fn names(index: &ExampleIndex, found: &[Candidate]) -> Vec<String> {
        found
            .iter()
            .map(|c| index.pattern_name(c.pattern).to_owned())
            .collect()
    }

    const LIBRARY: [(&str, &str, &str); 6] = [
        ("rotate", "ops", "rotate the JWT signing keys"),
        ("rotate", "ops", "please rotate my keys"),
        ("vacuum", "db", "tune the postgres vacuum settings"),
        ("backup", "db", "back up the database nightly"),
        ("deploy", "ops", "deploy the service to kubernetes"),
        ("weather", "chat", "what is the weather like today"),
    ];

    #[test]
    fn identical_text_scores_one() {
        let idx = index(&LIBRARY);
        let found = idx.score("Rotate the JWT signing keys!", 5, None);
        assert_eq!(found[0].pattern, 0);
        assert_eq!(found[0].example, 0);
        assert!((found[0].score - 1.0).abs() < 1e-6, "{}", found[0].score);
        // Second example of the same pattern, found through its own text.
        let found = idx.score("please rotate my keys", 5, None);
        assert_eq!((found[0].pattern, found[0].example), (0, 1));
        assert!((found[0].score - 1.0).abs() < 1e-6);
        // One entry per pattern.
        let mut patterns: Vec<_> = found.iter().map(|c| c.pattern).collect();
        patterns.dedup();
        assert_eq!(patterns.len(), found.len());
    }

    #[test]
    fn unrelated_text_scores_nothing() {
        let idx = index(&LIBRARY);
        assert!(idx.score("xyzzy qwv", 5, None).is_empty());
        assert!(idx.score("日本語", 5, None).is_empty());
    }

    #[test]
    fn empty_query_scores_nothing() {
        let idx = index(&LIBRARY);
        for query in ["", "   ", "!!! ... ?", "«»—"] {
            assert!(idx.score(query, 5, None).is_empty(), "{query:?}");
        }
        assert!(index(&[]).score("rotate", 5, None).is_empty());
        assert!(index(&[("p", "k", "")]).score("rotate", 5, None).is_empty());
    }

    #[test]
    fn idf_down_weights_common_words() {
        // "the" is in every example, "cat" in one; both have 6 n-grams shared with no other
        // word, so without idf the two queries would score the same against "the cat".
        let idx = index(&[
            ("a", "k", "the cat"),
            ("b", "k", "the dog"),
            ("c", "k", "the owl"),
        ]);
        let common = idx.score("the", 5, None);
        assert_eq!(names(&idx, &common), ["a", "b", "c"]);
        let rare = idx.score("cat", 5, None);
        assert_eq!(names(&idx, &rare), ["a"]);
        assert!(rare[0].score > common[0].score);
        // idf = 1 for "the" and its n-grams (df = N), ln(4 / 2) + 1 for everything else.
        // Word block of "the cat": the, cat, "the cat"; char block: 6 + 6 n-grams.
        let idf = 2.0f64.ln() + 1.0;
        let cos_words = 1.0 / (1.0 + 2.0 * idf * idf).sqrt();
        let cos_chars = 1.0 / (1.0 + idf * idf).sqrt();
        let expected = WORD_BLOCK_WEIGHT * cos_words + (1.0 - WORD_BLOCK_WEIGHT) * cos_chars;
        assert!((f64::from(common[0].score) - expected).abs() < 1e-6);
        let expected =
            WORD_BLOCK_WEIGHT * idf * cos_words + (1.0 - WORD_BLOCK_WEIGHT) * idf * cos_chars;
        assert!((f64::from(rare[0].score) - expected).abs() < 1e-6);
    }

    #[test]
    fn unseen_query_words_contribute_nothing() {
        let idx = index(&LIBRARY);
        let plain = idx.score("postgres vacuum", 1, None);
        let noisy = idx.score("postgres vacuum zzxq", 1, None);
        // "zzxq" and its n-grams are in no example; only the bigram "vacuum zzxq" differs,
        // and it is unseen too.
        assert_eq!(plain, noisy);
    }

    #[test]
    fn kind_filter() {
        let idx = index(&LIBRARY);
        let all = idx.score("the", 10, None);
        assert_eq!(all.len(), 5);
        let mut ops = names(&idx, &idx.score("the", 10, Some("ops")));
        ops.sort();
        assert_eq!(ops, ["deploy", "rotate"]);
        assert!(idx.score("the", 10, Some("nope")).is_empty());
        let db = idx.score("rotate the keys", 10, Some("db"));
        assert!(db
            .iter()
            .all(|c| ["vacuum", "backup"].contains(&idx.pattern_name(c.pattern))));
    }

    #[test]
    fn kind_is_per_example() {
        let idx = index(&[("p", "a", "red apple"), ("p", "b", "red apple pie")]);
        let a = idx.score("red apple pie", 5, Some("a"));
        let b = idx.score("red apple pie", 5, Some("b"));
        assert_eq!((a[0].example, b[0].example), (0, 1));
        assert!(a[0].score < b[0].score);
    }

    #[test]
    fn top_k() {
        let idx = index(&LIBRARY);
        let all = idx.score("the", 10, None);
        for k in 0..7 {
            let found = idx.score("the", k, None);
            assert_eq!(found, all[..k.min(all.len())], "top_k {k}");
        }
        assert!(all.windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn ties_by_registration_order() {
        let idx = index(&[
            ("c", "k", "reset password"),
            ("a", "k", "reset my password"),
            ("b", "k", "reset password"),
            ("c", "k", "reset password"),
        ]);
        let found = idx.score("reset password", 5, None);
        assert_eq!(names(&idx, &found), ["c", "b", "a"]);
        assert_eq!(found[0].score, found[1].score);
        // The first of equal examples wins within a pattern.
        assert_eq!((found[0].example, found[1].example), (0, 2));
        for k in 1..=3 {
            assert_eq!(idx.score("reset password", k, None), found[..k]);
        }
    }

    #[test]
    fn n_grams_find_variants() {
        let idx = index(&[
            ("opt", "k", "query optimization"),
            ("auth", "k", "authentication failed"),
        ]);
        let found = idx.score("optimize", 5, None);
        assert_eq!(names(&idx, &found)[0], "opt");
        assert!(found[0].score < 0.5, "no shared word: char block only");
    }

    #[test]
    fn stats_and_sizes() {
        let idx = index(&[("p", "k", "ab ab"), ("q", "j", ""), ("p", "k", "ab")]);
        // Word "ab", bigram "ab ab", n-grams "<ab", "ab>", "<ab>": 5 + 4 postings.
        assert_eq!(
            idx.stats(),
            IndexStats {
                patterns: 2,
                examples: 3,
                kinds: 2,
                word_features: 2,
                char_features: 3,
                postings: 9,
                empty_examples: 1,
            }
        );
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.feature_count(), 5);
        assert_eq!(idx.pattern_count(), 2);
        assert!(index(&[]).is_empty());
    }

    #[test]
    fn interleaved_patterns_report_input_indexes() {
        let idx = index(&[
            ("a", "k", "red apple"),
            ("b", "k", "green pear"),
            ("a", "k", "green apple"),
            ("b", "j", "green apple tree"),
        ]);
        let found = idx.score("green apple", 5, None);
        assert_eq!(names(&idx, &found), ["a", "b"]);
        assert_eq!((found[0].example, found[1].example), (2, 3));
        let found = idx.score("green apple", 5, Some("k"));
        assert_eq!((found[1].pattern, found[1].example), (1, 1));
    }

    /// Sparse and dense read-back must give identical results, bit for bit.
    #[test]
    fn modes_agree() {
        let mut examples: Vec<(String, String, String)> = LIBRARY
            .iter()
            .map(|&(p, k, t)| (p.to_owned(), k.to_owned(), t.to_owned()))
            .collect();
        let words = [
            "reset", "password", "the", "my", "rotate", "keys", "deploy", "service", "logs",
            "show", "error", "database", "backup", "how", "to", "a",
        ];
        let mut state = 7u64;
        for i in 0..300 {
            let text: Vec<&str> = (0..3 + i % 5)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    words[(state >> 33) as usize % words.len()]
                })
                .collect();
            examples.push((
                format!("p{}", i % 37),
                format!("k{}", i % 3),
                text.join(" "),
            ));
        }
        let idx = ExampleIndex::new(examples);
        for query in [
            "the",
            "reset my password",
            "show the error logs",
            "rotate keys",
            "zzz",
        ] {
            for kind in [None, Some("k1"), Some("ops")] {
                for k in [1, 3, 5, 40, 100] {
                    let sparse = idx.score_mode(query, k, kind, None, Mode::Sparse);
                    let dense = idx.score_mode(query, k, kind, None, Mode::Dense);
                    assert_eq!(sparse, dense, "{query:?} {kind:?} {k}");
                    assert_eq!(idx.score(query, k, kind), dense);
                    let all = idx.score_mode(query, 1000, kind, None, Mode::Dense);
                    assert_eq!(dense, all[..k.min(all.len())]);
                }
            }
        }
        // Ties and the first-example rule hold in both modes.
        let ties = index(&[
            ("c", "k", "reset password"),
            ("a", "k", "reset my password"),
            ("b", "k", "Reset password!"),
            ("c", "k", "reset password"),
        ]);
        for mode in [Mode::Sparse, Mode::Dense] {
            let found = ties.score_mode("reset password", 5, None, None, mode);
            let got: Vec<_> = found.iter().map(|c| (c.pattern, c.example)).collect();
            assert_eq!(got, [(0, 0), (2, 2), (1, 1)], "{mode:?}");
        }
    }

    #[test]
    fn score_without_leaves_one_example_out() {
        let ties = ExampleIndex::new(vec![
            ("a".into(), "k".into(), "reset my password".into()),
            ("a".into(), "k".into(), "password reset help".into()),
            ("b".into(), "k".into(), "reset password".into()),
        ]);
        for mode in [Mode::Sparse, Mode::Dense] {
            let all = ties.score_mode("reset password", 5, None, None, mode);
            assert_eq!((all[0].pattern, all[0].example), (1, 2), "{mode:?}");
            let without = ties.score_mode("reset password", 5, None, Some(2), mode);
            assert!(without.iter().all(|c| c.example != 2), "{mode:?}");
            assert_eq!(without[0].pattern, 0, "{mode:?}");
        }
        let only = ExampleIndex::new(vec![("a".into(), "k".into(), "reset".into())]);
        assert!(only.score_without("reset", 5, None, 0).is_empty());
    }

    #[test]
    fn classify_weighs_words_by_their_spread_over_patterns() {
        // "redis" is in one example of each pattern; "healthy" only in health's.
        let idx = index(&[
            ("health", "ops", "is redis healthy"),
            ("health", "ops", "is the cache healthy"),
            ("compare", "ops", "redis vs memcached for the cache"),
            ("compare", "ops", "kafka vs rabbitmq"),
            ("other", "none", "tell me a joke"),
        ]);
        let ranked = idx.classify("is rabbitmq healthy", 5, None, None);
        assert_eq!(idx.pattern_name(ranked[0].pattern), "health");
        let total: f32 = ranked.iter().map(|r| r.probability).sum();
        assert!(
            total <= 1.0 + 1e-5 && ranked[0].probability > 0.5,
            "{ranked:?}"
        );
        // Each carries its nearest example and that example's cosine.
        assert_eq!(ranked[0].example, 0);
        let cosine = idx.score("is rabbitmq healthy", 5, Some("ops"));
        let health = cosine.iter().find(|c| c.pattern == 0).unwrap();
        assert_eq!(ranked[0].cosine, health.score);
        // A kind filter only filters; nothing shared, nothing returned.
        assert!(idx
            .classify("tell me a joke", 5, Some("ops"), None)
            .iter()
            .all(|r| idx.pattern_name(r.pattern) != "other"));
        assert!(idx.classify("zzqx", 5, None, None).is_empty());
        assert!(idx.classify("is redis healthy", 0, None, None).is_empty());
        assert!(idx
            .classify("is redis healthy", 5, Some("nope"), None)
            .is_empty());
    }

    #[test]
    fn classify_leaves_an_input_example_out() {
        // Interleaved patterns: input and internal numbers differ.
        let idx = index(&[
            ("a", "k", "reset my password"),
            ("b", "k", "reset password"),
            ("a", "k", "password reset help"),
        ]);
        let all = idx.classify("reset password", 5, None, None);
        assert_eq!((idx.pattern_name(all[0].pattern), all[0].example), ("b", 1));
        let without = idx.classify("reset password", 5, None, Some(1));
        assert!(without.iter().all(|r| r.example != 1), "{without:?}");
        assert_eq!(idx.pattern_name(without[0].pattern), "a");
        // The cosine's leave-one-out takes input numbers too.
        let cosine = idx.score_without("reset password", 5, None, 1);
        assert!(cosine.iter().all(|c| c.example != 1), "{cosine:?}");
    }

    fn vectors(rows: &[&[f32]]) -> Vec<Option<Vec<f32>>> {
        rows.iter()
            .map(|r| (!r.is_empty()).then(|| r.to_vec()))
            .collect()
    }

    #[test]
    fn blend_finds_meaning_without_shared_words() {
        let idx = index(&[
            ("buy", "k", "buy an automobile"),
            ("sell", "k", "sell my house"),
        ]);
        assert!(idx.score("zzz qqq", 5, None).is_empty());
        let blended = idx
            .with_vectors(&vectors(&[&[1.0, 0.0], &[0.0, 2.0]]), 0.5)
            .unwrap();
        assert_eq!(blended.vector_dim(), Some(2));
        assert_eq!(blended.vector_weight(), Some(0.5));
        let found = blended
            .score_blended("zzz qqq", &[0.9, 0.1], 5, None, None)
            .unwrap();
        assert_eq!(names(&blended, &found), ["buy", "sell"]);
        let cos = 0.9 / (0.82f32).sqrt();
        assert!((found[0].score - 0.5 * cos).abs() < 1e-6, "{found:?}");
        // The lexical part still counts, at its share.
        let lexical = idx.score("sell my car", 5, None);
        let both = blended
            .score_blended("sell my car", &[0.0, 1.0], 5, None, None)
            .unwrap();
        assert!((both[0].score - (0.5 * lexical[0].score + 0.5)).abs() < 1e-6);
        // The original index is untouched.
        assert_eq!(idx.vector_dim(), None);
    }

    #[test]
    fn blend_weights_and_zero_vectors() {
        let idx = index(&LIBRARY);
        let rows: Vec<Option<Vec<f32>>> = (0..LIBRARY.len())
            .map(|i| Some(vec![i as f32 + 1.0, 1.0, -(i as f32)]))
            .collect();
        let lexical_only = idx.with_vectors(&rows, 0.0).unwrap();
        for query in ["rotate the keys", "store a note", "nothing in common"] {
            let plain = idx.score(query, 5, None);
            let zero_weight = lexical_only
                .score_blended(query, &[1.0, 2.0, 3.0], 5, None, None)
                .unwrap();
            let plain_scores: Vec<f32> = plain.iter().map(|c| c.score).collect();
            let blended: Vec<f32> = zero_weight
                .iter()
                .filter(|c| c.score > 0.0)
                .map(|c| c.score)
                .collect();
            assert_eq!(plain_scores, blended, "{query}");
            // A zero query vector means "no embedding": lexical only.
            assert_eq!(
                lexical_only
                    .score_blended(query, &[0.0, 0.0, 0.0], 5, None, None)
                    .unwrap(),
                plain
            );
        }
    }

    #[test]
    fn blend_honours_kind_and_exclude() {
        let idx = index(&[
            ("a", "infra", "check redis"),
            ("b", "memory", "recall notes"),
            ("c", "memory", "remember this"),
        ])
        .with_vectors(&vectors(&[&[1.0, 0.0], &[0.0, 1.0], &[]]), 1.0)
        .unwrap();
        let all = idx
            .score_blended("zzz", &[1.0, 1.0], 5, None, None)
            .unwrap();
        assert_eq!(names(&idx, &all), ["a", "b"]); // "c" has no vector: zero, not listed
        let memory = idx
            .score_blended("zzz", &[1.0, 1.0], 5, Some("memory"), None)
            .unwrap();
        assert_eq!(names(&idx, &memory), ["b"]);
        let without = idx
            .score_blended("zzz", &[1.0, 1.0], 5, None, Some(0))
            .unwrap();
        assert_eq!(names(&idx, &without), ["b"]);
    }

    #[test]
    fn vector_errors() {
        let idx = index(&LIBRARY[..2]);
        let err = |e: VectorError| e.to_string();
        assert_eq!(
            err(idx.with_vectors(&vectors(&[&[1.0]]), 0.5).err().unwrap()),
            "1 vectors for 2 examples"
        );
        assert_eq!(
            err(idx
                .with_vectors(&vectors(&[&[1.0], &[1.0, 2.0]]), 0.5)
                .err()
                .unwrap()),
            "example 1 has 2 dimensions, expected 1"
        );
        assert_eq!(
            err(idx
                .with_vectors(&vectors(&[&[f32::NAN], &[1.0]]), 0.5)
                .err()
                .unwrap()),
            "example 0 is empty or not finite"
        );
        assert_eq!(
            err(idx
                .with_vectors(&vectors(&[&[1.0], &[1.0]]), 1.5)
                .err()
                .unwrap()),
            "weight 1.5 is not within [0, 1]"
        );
        assert_eq!(
            err(idx.with_vectors(&vectors(&[&[], &[]]), 0.5).err().unwrap()),
            "the index has no example vectors"
        );
        assert_eq!(
            idx.score_blended("x", &[1.0], 5, None, None),
            Err(VectorError::NoVectors)
        );
        let blended = idx.with_vectors(&vectors(&[&[1.0], &[1.0]]), 0.5).unwrap();
        assert_eq!(
            err(blended
                .score_blended("x", &[1.0, 0.0], 5, None, None)
                .unwrap_err()),
            "the query vector has 2 dimensions, expected 1"
        );
        assert!(blended
            .score_blended("x", &[f32::INFINITY], 5, None, None)
            .is_err());
    }

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        assert!((f64::from(dot(&a, &b)) - naive).abs() < 1e-5);
    }

    #[test]
    fn thread_safe() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ExampleIndex>();
        let idx = index(&LIBRARY);
        let expected = idx.score("rotate the keys", 5, None);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| assert_eq!(idx.score("rotate the keys", 5, None), expected));
            }
        });
        // A smaller index after a larger one on the same thread: the scratch stays clean.
        let small = index(&LIBRARY[..2]);
        let found = small.score("rotate the keys", 5, None);
        assert_eq!(names(&small, &found), ["rotate"]);
        assert_eq!(idx.score("rotate the keys", 5, None), expected);
    }
}
