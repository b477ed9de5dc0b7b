//! Timing of the lexical example index on synthetic routing utterances (no Python):
//!
//!     cargo run --release --example lexical_bench [-- PATTERNS EXAMPLES_PER_PATTERN]
//!
//! Without arguments, runs 10 x 5 (50 examples) and 1000 x 5 (5000 examples). Examples are
//! 4-10 words: common English function words (in most examples, so their postings are long)
//! mixed with a skewed draw from a few thousand made-up content words. Queries are short
//! (3-6 words): half new utterances from the same distribution, half variants of examples.
//! Prints the median build time (of 11), the median, p99 and max time of one `score` call,
//! and the mean time of a `score` call over the whole batch (best of 5 passes).
use std::hint::black_box;
use std::time::{Duration, Instant};

use tmws_core::ExampleIndex;

const COMMON: &[&str] = &[
    "the", "a", "to", "my", "i", "how", "do", "can", "you", "please", "what", "is", "for", "of",
    "in", "on", "with", "me", "show", "get", "set", "make", "new", "all", "this", "it",
];

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Corpus {
    vocabulary: Vec<String>,
    rng: Rng,
}

impl Corpus {
    fn new(words: usize) -> Self {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let vocabulary = (0..words)
            .map(|_| {
                let len = 3 + rng.below(8);
                (0..len)
                    .map(|_| (b'a' + rng.below(26) as u8) as char)
                    .collect()
            })
            .collect();
        Self { vocabulary, rng }
    }

    fn utterance(&mut self, min: usize, max: usize) -> String {
        let len = min + self.rng.below(max - min + 1);
        let words: Vec<&str> = (0..len)
            .map(|_| {
                if self.rng.unit() < 0.4 {
                    COMMON[self.rng.below(COMMON.len())]
                } else {
                    // Skewed: low indices (frequent content words) far more likely.
                    let u = self.rng.unit();
                    &self.vocabulary[(u * u * u * self.vocabulary.len() as f64) as usize]
                }
            })
            .collect();
        words.join(" ")
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn run(patterns: usize, per_pattern: usize) {
    let mut corpus = Corpus::new(4000);
    let examples: Vec<(String, String, String)> = (0..patterns * per_pattern)
        .map(|i| {
            let pattern = i / per_pattern;
            (
                format!("pattern_{pattern}"),
                format!("kind_{}", pattern % 4),
                corpus.utterance(4, 10),
            )
        })
        .collect();
    let queries: Vec<String> = (0..2000)
        .map(|i| {
            if i % 2 == 0 {
                corpus.utterance(3, 6)
            } else {
                let (_, _, text) = &examples[corpus.rng.below(examples.len())];
                let words: Vec<&str> = text.split(' ').collect();
                let take = words.len().min(3 + corpus.rng.below(4));
                let mut q = words[..take].join(" ");
                q.push_str(" please");
                q
            }
        })
        .collect();

    let mut builds = Vec::new();
    let mut index = None;
    for _ in 0..11 {
        let input = examples.clone();
        let t = Instant::now();
        let built = ExampleIndex::new(black_box(input));
        builds.push(t.elapsed());
        index = Some(built);
    }
    let index = index.unwrap();
    let stats = index.stats();
    println!(
        "{patterns} patterns x {per_pattern} examples: build median {:?} ({stats:?})",
        median(&mut builds)
    );

    for (label, kind) in [("all kinds", None), ("kind_1", Some("kind_1"))] {
        // Each query timed on its own: median and tail.
        let mut times = Vec::with_capacity(queries.len() * 3);
        let mut found = 0usize;
        for _ in 0..3 {
            for q in &queries {
                let t = Instant::now();
                let out = index.score(black_box(q), 5, kind);
                times.push(t.elapsed());
                found += out.len();
            }
        }
        let med = median(&mut times);
        // The whole batch timed at once (no clock reads in between): mean, best of 5 passes.
        let mut mean = Duration::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for q in &queries {
                black_box(index.score(black_box(q), 5, kind));
            }
            mean = mean.min(t.elapsed() / queries.len() as u32);
        }
        println!(
            "  score top-5 ({label}): median {:?} p99 {:?} max {:?}, mean {:?} (avg {:.2} results)",
            med,
            times[times.len() * 99 / 100],
            times[times.len() - 1],
            mean,
            found as f64 / times.len() as f64
        );
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("PATTERNS EXAMPLES_PER_PATTERN"))
        .collect();
    match args[..] {
        [patterns, per_pattern] => run(patterns, per_pattern),
        [] => {
            run(10, 5);
            run(1000, 5);
        }
        _ => panic!("usage: lexical_bench [PATTERNS EXAMPLES_PER_PATTERN]"),
    }
}
