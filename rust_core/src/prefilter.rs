//! Answering one class of queries (ASCII or not) with a literal prefilter plus verification.
//!
//! A single automaton over 1,000 unanchored patterns is slow: every combination of partial
//! matches (`\w+`, `.*` keep many alive) is a new lazy-DFA state, so states are built per
//! query instead of reused (measured ~0.75 ms/query at N=1000). Instead, like hyperscan:
//! - every pattern with a finite set of prefix literals (any match starts with one of them)
//!   contributes them to one Aho-Corasick automaton; a query's literal hits name the only
//!   patterns that can match, and where their matches can start at the earliest;
//! - those candidates are verified in priority order by their own small regex, anchored at
//!   each literal hit (exact: a match can only start there), so `best` stops at the first
//!   success. On the ASCII path the verifiers are ahead-of-time DFAs (no cache to warm,
//!   shared by all threads); non-ASCII queries use lazily built meta regexes;
//! - patterns without such literals (e.g. starting with `\w+`) form a residual set that is
//!   searched in full.

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind as AcMatchKind};
use crossbeam_queue::ArrayQueue;
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::meta;
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::{Anchored, Input};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::Hir;

use crate::regex_set::SetEngine;

/// Literal-hit scratch kept for reuse, as for the set engines.
const POOL_SIZE: usize = 64;

/// NFA size ceiling for a verifier; patterns passed validation at this size already.
const VERIFIER_SIZE_LIMIT: usize = crate::matcher::PATTERN_SIZE_LIMIT;

/// Size ceiling of a verifier's ahead-of-time DFA. Trigger patterns on ASCII text compile to a
/// few KiB; a pattern whose DFA would exceed this uses a lazy (meta) regex instead.
const VERIFIER_DFA_LIMIT: usize = 1 << 20;

// Not boxed: one per pattern, and the hot path should not chase another pointer.
#[allow(clippy::large_enum_variant)]
enum VerifierRegex {
    /// Fully built anchored DFA: no cache, no pool, nothing to warm, any thread.
    Dense(dense::DFA<Vec<u32>>),
    Meta(meta::Regex),
}

/// One pattern's own regex, built eagerly (hot path) or on first use (rare path).
struct Verifier {
    hir: Hir,
    dense_ok: bool,
    regex: OnceLock<VerifierRegex>,
}

impl Verifier {
    fn compiled(&self) -> &VerifierRegex {
        self.regex.get_or_init(|| {
            if self.dense_ok {
                if let Some(dfa) = self.dense() {
                    return VerifierRegex::Dense(dfa);
                }
            }
            VerifierRegex::Meta(
                meta::Regex::builder()
                    .configure(meta::Config::new().nfa_size_limit(Some(VERIFIER_SIZE_LIMIT)))
                    .build_from_hir(&self.hir)
                    .expect("pattern validated at this size"),
            )
        })
    }

    fn dense(&self) -> Option<dense::DFA<Vec<u32>>> {
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .nfa_size_limit(Some(VERIFIER_SIZE_LIMIT))
                    .which_captures(WhichCaptures::None),
            )
            .build_from_hir(&self.hir)
            .ok()?;
        dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .dfa_size_limit(Some(VERIFIER_DFA_LIMIT))
                    .determinize_size_limit(Some(4 * VERIFIER_DFA_LIMIT)),
            )
            .build_from_nfa(&nfa)
            .ok()
    }

    /// Does a match start exactly at `start`?
    fn matches_at(&self, hay: &[u8], start: usize) -> bool {
        let input = Input::new(hay)
            .range(start..)
            .anchored(Anchored::Yes)
            .earliest(true);
        match self.compiled() {
            VerifierRegex::Dense(dfa) => match dfa.try_search_fwd(&input) {
                Ok(found) => found.is_some(),
                // Only quit bytes fail (none on the ASCII path); answer slowly but exactly.
                Err(_) => self.fallback(&input),
            },
            VerifierRegex::Meta(re) => re.is_match(input),
        }
    }

    #[cold]
    fn fallback(&self, input: &Input<'_>) -> bool {
        meta::Regex::builder()
            .build_from_hir(&self.hir)
            .is_ok_and(|re| re.is_match(input.clone()))
    }
}

struct Scratch {
    /// (rank, start) of every literal hit.
    hits: Vec<(u32, u32)>,
    lowered: Vec<u8>,
}

pub struct PrefilteredSet {
    lowercase: bool,
    ac: Option<AhoCorasick>,
    /// Aho-Corasick pattern id -> ranks that have that literal as a prefix.
    owners: Vec<Vec<u32>>,
    verifiers: Vec<Option<Verifier>>,
    residual: Option<SetEngine>,
    /// Residual set id -> rank (ascending).
    residual_ranks: Vec<u32>,
    pool: ArrayQueue<Box<Scratch>>,
}

/// Prefix literals of `hir`, or `None` if some match could start without one.
fn prefixes(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let mut seq = extractor.extract(hir);
    seq.dedup();
    let lits = seq.literals()?;
    if lits.is_empty() || lits.iter().any(|l| l.as_bytes().is_empty()) {
        return None;
    }
    Some(lits.iter().map(|l| l.as_bytes().to_vec()).collect())
}

impl PrefilteredSet {
    /// `hirs` are in rank order. `prefilterable[r]` says rank `r` may go through the
    /// literal prefilter (the ASCII path requires case-closed patterns when lower-casing).
    /// `residual_lowercase` / `unicode_word` configure the residual set.
    pub fn build(
        hirs: &[Hir],
        lowercase: bool,
        prefilterable: &[bool],
        residual_hirs: &[Hir],
        residual_lowercase: bool,
        unicode_word: bool,
        eager: bool,
    ) -> Result<Self, String> {
        let mut literal_ids: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        let mut literals: Vec<Vec<u8>> = Vec::new();
        let mut owners: Vec<Vec<u32>> = Vec::new();
        let mut verifiers = Vec::with_capacity(hirs.len());
        let mut residual = Vec::new();
        let mut residual_ranks = Vec::new();
        for (rank, hir) in hirs.iter().enumerate() {
            let lits = prefilterable[rank].then(|| prefixes(hir)).flatten();
            match lits {
                Some(lits) => {
                    for lit in lits {
                        let id = *literal_ids.entry(lit.clone()).or_insert_with(|| {
                            literals.push(lit);
                            owners.push(Vec::new());
                            literals.len() - 1
                        });
                        if owners[id].last() != Some(&(rank as u32)) {
                            owners[id].push(rank as u32);
                        }
                    }
                    let verifier = Verifier {
                        hir: hir.clone(),
                        dense_ok: eager && !unicode_word,
                        regex: OnceLock::new(),
                    };
                    if eager {
                        verifier.compiled();
                    }
                    verifiers.push(Some(verifier));
                }
                None => {
                    residual.push(residual_hirs[rank].clone());
                    residual_ranks.push(rank as u32);
                    verifiers.push(None);
                }
            }
        }
        let ac = if literals.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(AcMatchKind::Standard)
                    // A DFA scans ~3x faster than the default NFA on overlapping searches
                    // (measured), but the Unicode path's case variants make it big: only the
                    // hot ASCII path gets one.
                    .kind(Some(if eager {
                        AhoCorasickKind::DFA
                    } else {
                        AhoCorasickKind::ContiguousNFA
                    }))
                    .build(&literals)
                    .map_err(|e| e.to_string())?,
            )
        };
        let residual = if residual.is_empty() {
            None
        } else {
            Some(SetEngine::build(
                &residual,
                residual_lowercase,
                unicode_word,
            )?)
        };
        Ok(Self {
            lowercase,
            ac,
            owners,
            verifiers,
            residual,
            residual_ranks,
            pool: ArrayQueue::new(POOL_SIZE),
        })
    }

    pub fn has_prefilter(&self) -> bool {
        self.ac.is_some()
    }

    pub fn residual_len(&self) -> usize {
        self.residual_ranks.len()
    }

    /// Bytes held by the residual set's warm lazy DFA.
    pub fn residual_memory(&self) -> usize {
        self.residual.as_ref().map_or(0, SetEngine::template_memory)
    }

    pub fn warm<'a>(&mut self, queries: impl IntoIterator<Item = &'a str> + Clone) {
        if let Some(residual) = &mut self.residual {
            residual.warm(queries.clone());
        }
        // Builds (and warms) the verifiers the warm-up queries reach, in this thread.
        for q in queries {
            self.ranks(q.as_bytes(), |_| true, false);
        }
    }

    /// Matching ranks, ascending (= best first), among those `keep` accepts.
    pub fn ranks(&self, query: &[u8], keep: impl Fn(u32) -> bool, first_only: bool) -> Vec<u32> {
        let mut scratch = self.pool.pop().unwrap_or_else(|| {
            Box::new(Scratch {
                hits: Vec::new(),
                lowered: Vec::new(),
            })
        });
        let out = self.ranks_with(query, &keep, first_only, &mut scratch);
        let _ = self.pool.push(scratch);
        out
    }

    fn ranks_with(
        &self,
        query: &[u8],
        keep: &impl Fn(u32) -> bool,
        first_only: bool,
        scratch: &mut Scratch,
    ) -> Vec<u32> {
        let Scratch { hits, lowered } = scratch;
        let hay = if self.lowercase {
            lowered.clear();
            lowered.extend(query.iter().map(u8::to_ascii_lowercase));
            &lowered[..]
        } else {
            query
        };
        hits.clear();
        if let Some(ac) = &self.ac {
            for m in ac.find_overlapping_iter(hay) {
                let start = m.start() as u32;
                for &rank in &self.owners[m.pattern().as_usize()] {
                    hits.push((rank, start));
                }
            }
        }
        hits.sort_unstable();
        hits.dedup();
        let residual: Vec<u32> = match &self.residual {
            Some(engine) => engine.with_matches(query, |set| {
                set.iter()
                    .map(|id| self.residual_ranks[id.as_usize()])
                    .filter(|&r| keep(r))
                    .collect()
            }),
            None => Vec::new(),
        };
        // A match of a candidate starts exactly at one of its literal hits: verify anchored
        // there, which fails within a few bytes for most hits.
        let verify = |group: &[(u32, u32)]| {
            let rank = group[0].0;
            if !keep(rank) {
                return false;
            }
            let verifier = self.verifiers[rank as usize]
                .as_ref()
                .expect("literal owners are prefiltered");
            group
                .iter()
                .any(|&(_, start)| verifier.matches_at(hay, start as usize))
        };
        let groups = hits.chunk_by(|a, b| a.0 == b.0);
        if first_only {
            let bound = residual.first().copied().unwrap_or(u32::MAX);
            let found = groups
                .take_while(|g| g[0].0 < bound)
                .find(|g| verify(g))
                .map(|g| g[0].0);
            found.or(residual.first().copied()).into_iter().collect()
        } else {
            let mut all: Vec<u32> = groups.filter(|g| verify(g)).map(|g| g[0].0).collect();
            all.extend_from_slice(&residual);
            all.sort_unstable();
            all
        }
    }
}
