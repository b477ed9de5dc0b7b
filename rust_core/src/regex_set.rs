//! One compiled pattern set: "which of these regexes match this haystack?". Used for the
//! patterns the literal prefilter cannot cover (see `prefilter.rs`).
//!
//! Built directly on regex-automata (the engines behind `regex::RegexSet`) so that we control
//! what `RegexSet` hides: the lazy DFA's cache size and give-up policy, the prefilter, and
//! which cache a search uses. Regexes here run in time linear in the haystack (automata, no
//! backtracking), so no pattern can cause catastrophic backtracking.

use crossbeam_queue::ArrayQueue;
use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::nfa::thompson::pikevm::{Cache as VmCache, PikeVM};
use regex_automata::nfa::thompson::{self, WhichCaptures, NFA};
use regex_automata::util::prefilter::Prefilter;
use regex_automata::{Input, MatchKind, PatternSet};
use regex_syntax::hir::Hir;

/// NFA size ceiling for a whole set. Each pattern is already held to
/// [`crate::matcher::PATTERN_SIZE_LIMIT`], so this is only a backstop against a set so large
/// that building it would exhaust memory; it is far above what 1,000 patterns need.
pub const SET_SIZE_LIMIT: usize = 1 << 30;

/// Ceiling of one lazy-DFA cache (the `dfa_size_limit` of `regex`). States are only
/// allocated as searches discover them, so this is a cap, not an allocation. When a cache
/// fills, it is cleared and states are recomputed; at the crate's default (2 MiB) a
/// 100-pattern set thrashed that way at ~0.18 ms per query, and a whole 1,000-pattern set
/// still needed ~2 MiB of states for 10,000 queries; this leaves ample headroom.
pub const DFA_CACHE_CAPACITY: usize = 256 << 20;

/// Caches kept for reuse; more concurrent searchers than this just drop theirs afterwards.
const POOL_SIZE: usize = 64;

/// Per-search mutable state: engine caches plus reusable buffers.
#[derive(Clone)]
pub struct Scratch {
    dfa: DfaCache,
    vm: VmCache,
    pub patset: PatternSet,
    lowered: Vec<u8>,
}

pub struct SetEngine {
    dfa: DFA,
    vm: PikeVM,
    /// Haystacks are ASCII-lower-cased first (the set was compiled without `A-Z`).
    lowercase: bool,
    /// Warmed at build time in the building thread; every new cache starts as a clone of it,
    /// so a thread that has never searched does not pay for states the build already found
    /// (the regex crate's own pool would give the warm cache to the first thread only).
    template: Scratch,
    pool: ArrayQueue<Box<Scratch>>,
}

impl SetEngine {
    /// Compiles `hirs` (capture-free) into one set. `unicode_word` must be true if any
    /// pattern has a Unicode word boundary: the lazy DFA then bails out on non-ASCII bytes and
    /// the PikeVM answers instead.
    pub fn build(hirs: &[Hir], lowercase: bool, unicode_word: bool) -> Result<Self, String> {
        let nfa: NFA = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .nfa_size_limit(Some(SET_SIZE_LIMIT))
                    .which_captures(WhichCaptures::Implicit),
            )
            .build_many_from_hir(hirs)
            .map_err(|e| e.to_string())?;
        let pre = Prefilter::from_hirs_prefix(MatchKind::All, hirs);
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::All)
                    .specialize_start_states(pre.is_some())
                    .prefilter(pre)
                    .cache_capacity(DFA_CACHE_CAPACITY)
                    // Never fall back to the PikeVM because the cache was cleared often:
                    // recomputing states is still cheaper than simulating the NFA per byte.
                    .minimum_cache_clear_count(None)
                    .unicode_word_boundary(unicode_word),
            )
            .build_from_nfa(nfa.clone())
            .map_err(|e| e.to_string())?;
        // MatchKind::All here too: leftmost-first would drop lower-priority patterns' threads.
        let vm = PikeVM::builder()
            .configure(PikeVM::config().match_kind(MatchKind::All))
            .build_from_nfa(nfa)
            .map_err(|e| e.to_string())?;
        let template = Scratch {
            dfa: dfa.create_cache(),
            vm: vm.create_cache(),
            patset: PatternSet::new(dfa.pattern_len()),
            lowered: Vec::new(),
        };
        Ok(Self {
            dfa,
            vm,
            lowercase,
            template,
            pool: ArrayQueue::new(POOL_SIZE),
        })
    }

    pub fn has_prefilter(&self) -> bool {
        self.dfa.get_config().get_prefilter().is_some()
    }

    /// Runs `queries` through the template cache. Call before sharing the engine, from the
    /// thread that builds it.
    pub fn warm<'a>(&mut self, queries: impl IntoIterator<Item = &'a str>) {
        let mut scratch = self.template.clone();
        for q in queries {
            self.search_with(q.as_bytes(), &mut scratch);
        }
        self.template = scratch;
    }

    /// Bytes held by the warm template's lazy DFA.
    pub fn template_memory(&self) -> usize {
        self.template.dfa.memory_usage()
    }

    /// Calls `f` with the set of matching pattern indices (ascending).
    pub fn with_matches<R>(&self, haystack: &[u8], f: impl FnOnce(&PatternSet) -> R) -> R {
        let mut scratch = self
            .pool
            .pop()
            .unwrap_or_else(|| Box::new(self.template.clone()));
        self.search_with(haystack, &mut scratch);
        let out = f(&scratch.patset);
        // A full pool means many concurrent searchers; dropping the extra cache is fine.
        let _ = self.pool.push(scratch);
        out
    }

    fn search_with(&self, haystack: &[u8], scratch: &mut Scratch) {
        let Scratch {
            dfa,
            vm,
            patset,
            lowered,
        } = scratch;
        patset.clear();
        let hay = if self.lowercase {
            lowered.clear();
            lowered.extend(haystack.iter().map(u8::to_ascii_lowercase));
            &lowered[..]
        } else {
            haystack
        };
        let input = Input::new(hay);
        if self
            .dfa
            .try_which_overlapping_matches(dfa, &input, patset)
            .is_err()
        {
            // Only a quit byte gets here (Unicode word boundary on non-ASCII text).
            patset.clear();
            self.vm.which_overlapping_matches(vm, &input, patset);
        }
    }
}
