//! Multinomial naive Bayes over the example index's features: how probable each pattern is
//! for a query, for the router's second stage.
//!
//! Nearest-example cosine ([`crate::lexical`]) lets the words a query shares with *one*
//! example decide, so a query about the same subject as an example of another pattern
//! ("is rabbitmq up" against "kafka vs rabbitmq") goes there. Naive Bayes weighs every
//! feature by how it is spread over the patterns' examples taken together: words that
//! name what a pattern does count, words every pattern's examples use cancel out.
//!
//! # Model
//!
//! Classes are the index's patterns. A feature's count in a class is the sum of its
//! TF-IDF weights (L2-normalised within its block, as in the cosine) over the class's
//! examples, the word block weighted [`WORD_BLOCK`] and the n-gram block the rest. With
//! `N_c` the class's total count, `n_c` its examples, `V` the number of features and
//! additive smoothing `ALPHA`, a query with feature weights `q_f` (same weighting) gets
//!
//! ```text
//! log P(c | q) = log(n_c / n) + Σ_f q_f · log((N_cf + α) / (N_c + α·V)) - log Z
//! ```
//!
//! computed sparsely: `Σ_f q_f · log(α / (N_c + α·V))` for every class, plus
//! `q_f · ln(1 + N_cf / α)` for the classes whose examples contain `f`. Query features no
//! example has are ignored (they would lower every class alike).
//!
//! Leaving one example out (calibration) subtracts its counts from its class exactly; the
//! idf weights stay those of the whole index.

/// Additive smoothing of the counts. Small: counts are TF-IDF weights below 1.
pub const ALPHA: f64 = 0.03;

/// Share of the word block (words and bigrams) in the counts; n-grams get the rest.
pub const WORD_BLOCK: f64 = 0.7;

/// One feature's count in one class.
#[derive(Debug, Clone, Copy)]
struct Cell {
    class: u32,
    count: f64,
    /// `ln(1 + count / ALPHA)`.
    gain: f64,
}

/// A query feature: its id in the index and its weight `q_f`.
#[derive(Debug, Clone, Copy)]
pub struct Term {
    pub feature: u32,
    pub weight: f64,
}

/// The example left out, as the query's features see it.
pub struct LeftOut<'a> {
    pub class: u32,
    /// The example's total count (all its features, weighted).
    pub total: f64,
    /// Per query term (same order): the example's count of that feature (0 if absent).
    pub counts: &'a [f64],
}

#[derive(Clone, Default)]
pub struct NaiveBayes {
    /// Cells of feature `f`: `cells[cell_start[f]..cell_start[f + 1]]`, by class.
    cell_start: Vec<u32>,
    cells: Vec<Cell>,
    class_total: Vec<f64>,
    class_examples: Vec<u32>,
    examples: u32,
    vocabulary: f64,
    /// Per class, fixed per query: `ln n_c` (`-inf` without examples) and
    /// `ln(N_c + α·V)`; only a left-out example's class recomputes them.
    log_examples: Vec<f64>,
    log_norm: Vec<f64>,
}

impl NaiveBayes {
    /// The model of `classes` classes from each feature's postings: `feature_postings`
    /// yields, feature by feature (ids in order), the `(class, count)` of every example
    /// containing it, examples of one class adjacent. `example_class` gives every
    /// example's class.
    pub fn new<F, P>(classes: usize, example_class: &[u32], feature_postings: F) -> Self
    where
        F: IntoIterator<Item = P>,
        P: IntoIterator<Item = (u32, f64)>,
    {
        let mut cell_start = vec![0u32];
        let mut cells: Vec<Cell> = Vec::new();
        let mut class_total = vec![0.0f64; classes];
        for postings in feature_postings {
            let first = cells.len();
            for (class, count) in postings {
                class_total[class as usize] += count;
                let in_feature = cells.len() > first;
                match cells.last_mut() {
                    Some(cell) if in_feature && cell.class == class => cell.count += count,
                    _ => cells.push(Cell {
                        class,
                        count,
                        gain: 0.0,
                    }),
                }
            }
            cell_start.push(u32::try_from(cells.len()).expect("too many cells"));
        }
        for cell in &mut cells {
            cell.gain = (cell.count / ALPHA).ln_1p();
        }
        let mut class_examples = vec![0u32; classes];
        for &class in example_class {
            class_examples[class as usize] += 1;
        }
        let vocabulary = (cell_start.len() - 1) as f64;
        let log_examples = class_examples.iter().map(|&n| f64::from(n).ln()).collect();
        let log_norm = class_total
            .iter()
            .map(|&total| (total + ALPHA * vocabulary).ln())
            .collect();
        Self {
            vocabulary,
            cell_start,
            cells,
            class_total,
            class_examples,
            examples: example_class.len() as u32,
            log_examples,
            log_norm,
        }
    }

    /// `log P(c | q)` of every class into `out` (normalised over all classes); all equal
    /// (the priors) for a query without known features. A class left with no example
    /// (the one left out was its only) gets `-inf`.
    pub fn log_posteriors(
        &self,
        terms: &[Term],
        left_out: Option<&LeftOut<'_>>,
        out: &mut Vec<f64>,
    ) {
        out.clear();
        let total_query: f64 = terms.iter().map(|t| t.weight).sum();
        let n = f64::from(self.examples) - f64::from(u8::from(left_out.is_some()));
        let (log_n, log_alpha) = (n.ln(), ALPHA.ln());
        out.extend(self.log_examples.iter().zip(&self.log_norm).map(
            |(&log_examples, &log_norm)| {
                log_examples - log_n + total_query * (log_alpha - log_norm)
            },
        ));
        if let Some(l) = left_out {
            let class = l.class as usize;
            let examples = self.class_examples[class] - 1;
            out[class] = if examples == 0 {
                f64::NEG_INFINITY
            } else {
                let total = (self.class_total[class] - l.total).max(0.0);
                f64::from(examples).ln() - log_n
                    + total_query * (log_alpha - (total + ALPHA * self.vocabulary).ln())
            };
        }
        for (i, term) in terms.iter().enumerate() {
            let range = self.cell_start[term.feature as usize] as usize
                ..self.cell_start[term.feature as usize + 1] as usize;
            for cell in &self.cells[range] {
                let gain = match left_out {
                    Some(l) if l.class == cell.class && l.counts[i] > 0.0 => {
                        ((cell.count - l.counts[i]).max(0.0) / ALPHA).ln_1p()
                    }
                    _ => cell.gain,
                };
                out[cell.class as usize] += term.weight * gain;
            }
        }
        let top = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if top == f64::NEG_INFINITY {
            return;
        }
        let z = top + out.iter().map(|&l| (l - top).exp()).sum::<f64>().ln();
        for l in out.iter_mut() {
            *l -= z;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes; features: 0 "health" (class 0 twice), 1 "store" (class 1),
    /// 2 "redis" (classes 0, 1, 2 alike).
    fn model() -> NaiveBayes {
        let postings = vec![
            vec![(0, 0.8), (0, 0.7)],
            vec![(1, 0.9)],
            vec![(0, 0.3), (1, 0.3), (2, 0.3)],
        ];
        NaiveBayes::new(3, &[0, 0, 1, 2], postings)
    }

    fn t(feature: u32, weight: f64) -> Term {
        Term { feature, weight }
    }

    fn posteriors(m: &NaiveBayes, terms: &[Term], left_out: Option<&LeftOut<'_>>) -> Vec<f64> {
        let mut out = Vec::new();
        m.log_posteriors(terms, left_out, &mut out);
        out.iter().map(|l| l.exp()).collect()
    }

    #[test]
    fn probabilities_sum_to_one_and_follow_the_features() {
        let m = model();
        let p = posteriors(&m, &[t(0, 1.0)], None);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(p[0] > 0.9, "{p:?}");
        let p = posteriors(&m, &[t(1, 1.0)], None);
        assert!(p[1] > 0.8 && p[1] > p[0] + p[2], "{p:?}");
    }

    #[test]
    fn a_feature_every_class_has_decides_nothing_against_a_distinctive_one() {
        let m = model();
        let both = [t(1, 0.5), t(2, 0.5)];
        let p = posteriors(&m, &both, None);
        assert!(p[1] > p[0] && p[1] > p[2], "{p:?}");
    }

    #[test]
    fn no_known_feature_gives_the_priors() {
        let m = model();
        let p = posteriors(&m, &[], None);
        assert!(
            (p[0] - 0.5).abs() < 1e-9 && (p[1] - 0.25).abs() < 1e-9,
            "{p:?}"
        );
    }

    #[test]
    fn leaving_out_equals_a_model_without_the_example() {
        let full = model();
        // Leave out class 0's second example (count 0.7 of feature 0, nothing else).
        let terms = [t(0, 0.6), t(2, 0.4)];
        let left = LeftOut {
            class: 0,
            total: 0.7,
            counts: &[0.7, 0.0],
        };
        let mut out = Vec::new();
        full.log_posteriors(&terms, Some(&left), &mut out);
        let without = NaiveBayes::new(
            3,
            &[0, 1, 2],
            vec![
                vec![(0, 0.8)],
                vec![(1, 0.9)],
                vec![(0, 0.3), (1, 0.3), (2, 0.3)],
            ],
        );
        let mut expected = Vec::new();
        without.log_posteriors(&terms, None, &mut expected);
        for (a, b) in out.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-9, "{out:?} vs {expected:?}");
        }
    }

    #[test]
    fn a_class_left_without_examples_is_impossible() {
        let m = model();
        let left = LeftOut {
            class: 2,
            total: 0.3,
            counts: &[0.3],
        };
        let p = posteriors(&m, &[t(2, 1.0)], Some(&left));
        assert_eq!(p[2], 0.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
}
