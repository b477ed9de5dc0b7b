//! Built-in text embedder: feature hashing of words, word bigrams and character n-grams into
//! a fixed-dimension, L2-normalised `f32` vector.
//!
//! Fast, offline and deterministic, but LEXICAL: two texts are close when they share words or
//! word pieces ("optimize" / "optimization"), not when they mean the same thing with different
//! words ("car" / "automobile" score near zero). Use a learned model for semantic similarity.
//!
//! # Algorithm `hash-v1`
//!
//! Embeddings are stored in a database, so the output must never drift. Everything below is
//! part of the [`ALGORITHM`] contract; changing any of it (tokenisation, weights, hash,
//! n-gram range, bucket or sign rule) requires bumping [`ALGORITHM`] so old rows can be told
//! apart and re-embedded.
//!
//! 1. Words are maximal runs of characters for which `char::is_alphanumeric` holds, each
//!    character lowercased with `char::to_lowercase` (final sigma `ς` is folded to `σ`, so
//!    case-insensitivity also holds for Greek). No Unicode normalisation: NFC and NFD
//!    spellings of the same word are different words.
//! 2. Features, each hashed with a one-byte namespace prefix so a word never collides with
//!    an n-gram of the same text by construction:
//!    * `b'w'` + word, weight [`WORD_WEIGHT`];
//!    * `b'b'` + word + `b' '` + next word, weight [`BIGRAM_WEIGHT`];
//!    * `b'c'` + character n-gram (n = 3..=5) of `<word>`, each weighing
//!      [`NGRAM_BUDGET`] / sqrt(number of n-grams of that word), so every word's n-grams
//!      have the same total L2 mass whatever its length.
//! 3. Repeated features (same 64-bit hash) are merged as `sum(weights) / sqrt(count)`, i.e.
//!    their mean weight times a sublinear term frequency `sqrt(tf)`.
//! 4. Hash: 64-bit FNV-1a over the bytes, then MurmurHash3's `fmix64` finaliser. Bit 63 is
//!    the sign (signed hashing trick), the low 63 bits modulo `dim` the bucket.
//! 5. The vector is divided by its L2 norm; a text without features (empty, punctuation or
//!    whitespace only) gives the all-zero vector, which callers store as NULL.
//!
//! Only IEEE-754 correctly rounded operations (`+ * /`, `sqrt`) are used, in an order fixed
//! by sorting the features, so the output is bit-identical on every platform (`ln` would not
//! be: it comes from the platform's libm). The one outside input is the Unicode tables of
//! the Rust standard library: a character newly assigned in a later Unicode version may be
//! classified differently by a newer compiler.

/// Name of the algorithm, stored next to every embedding; bump it on any output change.
pub const ALGORITHM: &str = "hash-v1";
/// Smallest accepted dimension.
pub const MIN_DIM: usize = 8;
/// Largest accepted dimension: pgvector's limit for an indexed-size `vector` column.
pub const MAX_DIM: usize = 16_000;

/// Whole words carry the meaning; every other feature is weighed against them.
pub const WORD_WEIGHT: f32 = 1.0;
/// Bigrams reward shared phrases ("signing keys") without outweighing the words themselves.
pub const BIGRAM_WEIGHT: f32 = 0.5;
/// L2 mass of all of one word's n-grams together, equal to the word's own: each n-gram
/// weighs ~0.2 for an 8-letter word, so a shared suffix ("-ing", "-tion") stays weak while
/// "optimize" still finds "optimization". On a small set of (anchor, related, unrelated)
/// triples, 0.5-0.7 missed variant-only matches; 1.4-2.0 ranked slightly better but raised
/// the similarity of unrelated pairs, drifting towards a pure n-gram model.
pub const NGRAM_BUDGET: f32 = 1.0;
const NGRAM_MIN: usize = 3;
const NGRAM_MAX: usize = 5;

const KIND_WORD: u8 = b'w';
const KIND_BIGRAM: u8 = b'b';
const KIND_NGRAM: u8 = b'c';

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new(kind: u8) -> Self {
        Self(FNV_OFFSET).bytes(&[kind])
    }

    fn bytes(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        self
    }

    /// FNV-1a alone mixes its high bits poorly; `fmix64` spreads every input bit to the sign
    /// bit and the bucket.
    fn finish(self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
}

/// Which part of the text a feature comes from (its namespace prefix in the hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum FeatureKind {
    /// A whole word.
    Word,
    /// Two adjacent words.
    Bigram,
    /// A character n-gram of `<word>`.
    NGram,
}

/// The tokeniser and feature extractor of `hash-v1` (steps 1, 2 and 4 of the module
/// documentation), with buffers reused across texts. Shared with [`crate::lexical`], which
/// keeps the exact 64-bit hashes instead of folding them into buckets.
#[derive(Default)]
pub(crate) struct FeatureExtractor {
    lower: String,
    /// Byte ranges of the words in `lower`.
    words: Vec<(usize, usize)>,
    /// Byte offset of each character of the current word, plus its end.
    bounds: Vec<usize>,
}

impl FeatureExtractor {
    /// Calls `emit(kind, hash, weight)` for every feature occurrence of `text`, repeats
    /// included, in text order: for each word, the word, then its bigram with the previous
    /// word, then its n-grams. `weight` is the embedder's weight of the occurrence.
    pub(crate) fn extract(&mut self, text: &str, mut emit: impl FnMut(FeatureKind, u64, f32)) {
        self.tokenize(text);
        let lower = self.lower.as_bytes();
        for (i, &(start, end)) in self.words.iter().enumerate() {
            let word = &lower[start..end];
            emit(
                FeatureKind::Word,
                Fnv::new(KIND_WORD).bytes(word).finish(),
                WORD_WEIGHT,
            );
            if i > 0 {
                let (prev_start, prev_end) = self.words[i - 1];
                let hash = Fnv::new(KIND_BIGRAM)
                    .bytes(&lower[prev_start..prev_end])
                    .bytes(b" ")
                    .bytes(word)
                    .finish();
                emit(FeatureKind::Bigram, hash, BIGRAM_WEIGHT);
            }
            char_ngrams(&self.lower[start..end], &mut self.bounds, &mut emit);
        }
    }

    /// Fills `lower` with the lowercased words, separated by single spaces, and `words`
    /// with their byte ranges.
    fn tokenize(&mut self, text: &str) {
        self.lower.clear();
        self.words.clear();
        let mut start = None;
        for c in text.chars() {
            // Classify the original character: a lowercase expansion may contain a combining
            // mark ('İ' -> "i\u{307}") that must not split the word.
            if c.is_alphanumeric() {
                if start.is_none() {
                    start = Some(self.lower.len());
                }
                for l in c.to_lowercase() {
                    self.lower.push(if l == 'ς' { 'σ' } else { l });
                }
            } else if let Some(begin) = start.take() {
                self.words.push((begin, self.lower.len()));
                self.lower.push(' ');
            }
        }
        if let Some(begin) = start {
            self.words.push((begin, self.lower.len()));
        }
    }
}

/// Buffers reused across the texts of a batch.
#[derive(Default)]
struct Scratch {
    extractor: FeatureExtractor,
    /// `(hash, weight)` of every feature occurrence.
    features: Vec<(u64, f32)>,
}

/// Feature-hashing embedder producing L2-normalised vectors of `dim` floats (see the module
/// documentation for the exact algorithm). Measures lexical, not semantic, similarity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashEmbedder {
    dim: usize,
}

impl HashEmbedder {
    /// An embedder of dimension `dim`, which must lie in `MIN_DIM..=MAX_DIM`.
    pub fn new(dim: usize) -> Result<Self, String> {
        if (MIN_DIM..=MAX_DIM).contains(&dim) {
            Ok(Self { dim })
        } else {
            Err(format!(
                "dim must be between {MIN_DIM} and {MAX_DIM}, got {dim}"
            ))
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The algorithm name ([`ALGORITHM`]).
    pub fn algorithm(&self) -> &'static str {
        ALGORITHM
    }

    /// The embedding of `text`; all zeros if it has no words.
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let mut out = vec![0.0; self.dim];
        self.embed_into(text, &mut out);
        out
    }

    /// Writes the embedding of `text` into `out`.
    ///
    /// # Panics
    /// If `out.len() != dim`.
    pub fn embed_into(&self, text: &str, out: &mut [f32]) {
        self.embed_with(text, out, &mut Scratch::default());
    }

    /// Embeddings of `texts`, row-major: `texts.len() * dim` floats.
    pub fn embed_batch<S: AsRef<str>>(&self, texts: &[S]) -> Vec<f32> {
        let mut out = vec![0.0; texts.len() * self.dim];
        let mut scratch = Scratch::default();
        for (text, row) in texts.iter().zip(out.chunks_exact_mut(self.dim)) {
            self.embed_with(text.as_ref(), row, &mut scratch);
        }
        out
    }

    /// Embeddings of `texts` as row-major little-endian `f32` bytes, the layout of
    /// `numpy.frombuffer(out, "<f4").reshape(len(texts), dim)`.
    ///
    /// # Panics
    /// If `out.len() != texts.len() * dim * 4`.
    pub fn embed_batch_le_bytes<S: AsRef<str>>(&self, texts: &[S], out: &mut [u8]) {
        let row_bytes = self.dim * 4;
        assert_eq!(out.len(), texts.len() * row_bytes, "output buffer size");
        let mut row = vec![0.0; self.dim];
        let mut scratch = Scratch::default();
        for (text, dst) in texts.iter().zip(out.chunks_exact_mut(row_bytes)) {
            self.embed_with(text.as_ref(), &mut row, &mut scratch);
            for (value, bytes) in row.iter().zip(dst.chunks_exact_mut(4)) {
                bytes.copy_from_slice(&value.to_le_bytes());
            }
        }
    }

    fn embed_with(&self, text: &str, out: &mut [f32], s: &mut Scratch) {
        assert_eq!(out.len(), self.dim, "output length must equal dim");
        out.fill(0.0);
        s.features.clear();
        s.extractor
            .extract(text, |_, hash, weight| s.features.push((hash, weight)));
        self.accumulate(&mut s.features, out);
        normalize(out);
    }

    fn accumulate(&self, features: &mut [(u64, f32)], out: &mut [f32]) {
        // A total order (weight breaks hash ties) makes the summation order, and so the
        // rounding, independent of the sort algorithm.
        features.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for group in features.chunk_by(|a, b| a.0 == b.0) {
            let hash = group[0].0;
            let sum: f32 = group.iter().map(|f| f.1).sum();
            let value = sum / (group.len() as f32).sqrt();
            // usize is at least 32 bits and dim <= MAX_DIM, so both casts are exact.
            let bucket = ((hash & (u64::MAX >> 1)) % self.dim as u64) as usize;
            out[bucket] += if hash >> 63 == 1 { -value } else { value };
        }
    }
}

/// Emits the n-grams of `<word>`, sharing [`NGRAM_BUDGET`] of L2 mass.
fn char_ngrams(word: &str, bounds: &mut Vec<usize>, emit: &mut impl FnMut(FeatureKind, u64, f32)) {
    bounds.clear();
    bounds.extend(word.char_indices().map(|(i, _)| i));
    bounds.push(word.len());
    let padded = bounds.len() + 1; // chars of `<word>`
    let count: usize = (NGRAM_MIN..=NGRAM_MAX)
        .map(|n| (padded + 1).saturating_sub(n))
        .sum();
    if count == 0 {
        return;
    }
    let weight = NGRAM_BUDGET / (count as f32).sqrt();
    let bytes = word.as_bytes();
    for n in NGRAM_MIN..=NGRAM_MAX {
        for first in 0..(padded + 1).saturating_sub(n) {
            let last = first + n; // exclusive, in padded positions
                                  // Padded position p > 0 is word character p - 1; the markers are outside it.
            let from = bounds[first.saturating_sub(1)];
            let to = bounds[last.min(padded - 1) - 1];
            let mut h = Fnv::new(KIND_NGRAM);
            if first == 0 {
                h = h.bytes(b"<");
            }
            h = h.bytes(&bytes[from..to]);
            if last == padded {
                h = h.bytes(b">");
            }
            emit(FeatureKind::NGram, h.finish(), weight);
        }
    }
}

fn normalize(out: &mut [f32]) {
    let norm = out
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in out.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}
