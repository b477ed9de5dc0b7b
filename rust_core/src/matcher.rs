//! The matcher: pattern specs compiled into sets, answers in priority order, a result cache,
//! and atomic replacement of the whole compiled state.
//!
//! Semantics equal a Python priority loop: patterns sorted by (-priority, registration order),
//! the first whose regex `re.search`es the query case-insensitively wins. Regexes run on Rust's
//! regex engines, which take time linear in the query: a pattern author cannot cause
//! catastrophic backtracking (look-around and back-references, which would need it, are
//! rejected at compile time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use regex_automata::nfa::thompson;
use regex_automata::util::captures::Captures;
use regex_automata::{meta, Input, PatternID};
use regex_syntax::hir::Hir;

use crate::errors::CompileError;
use crate::hir;
use crate::match_cache::{CacheStats, Key, MatchCache};
use crate::prefilter::PrefilteredSet;

/// NFA size ceiling for one pattern (the `size_limit` of `regex`, whose default is 10 MiB).
/// A trigger phrase needs a few KiB even with Unicode `\w`; the limit exists because every
/// pattern's cost is paid again in each set and each search, so a `\w{1000}` must be refused
/// up front rather than slow down or starve the whole library.
pub const PATTERN_SIZE_LIMIT: usize = 2 << 20;

/// Lazy-DFA cache of a per-pattern capture regex (`dfa_size_limit`): one small pattern,
/// called only after a match, so the crate default is plenty.
const CAPTURES_DFA_LIMIT: usize = 2 << 20;

/// Warm-up text used for every build, on top of the caller's: it gets the start states and
/// the common word/space transitions into the template caches, including the Unicode set's.
const BUILTIN_WARMUP: &[&str] = &[
    "",
    "hello world, please run the thing for me",
    "The quick brown fox jumps over the lazy dog 0123456789!",
    "CAFÉ straße Ünïcödé ΚΑΛΗΜΈΡΑ привет 日本語 \u{212A}elvin",
];

/// One pattern as registered: `(name, regex, priority, kind)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternSpec {
    pub name: String,
    pub regex: String,
    pub priority: i64,
    pub kind: String,
}

impl PatternSpec {
    pub fn new(name: &str, regex: &str, priority: i64, kind: &str) -> Self {
        Self {
            name: name.to_owned(),
            regex: regex.to_owned(),
            priority,
            kind: kind.to_owned(),
        }
    }
}

struct Entry {
    name: Arc<str>,
    regex: String,
    kind: u32,
    /// Built on first `captures` call: most patterns never need one.
    captures: OnceLock<Option<meta::Regex>>,
    /// Python's answer for the empty query (its `\B` differs there).
    matches_empty: bool,
}

/// Everything compiled from one list of specs. Immutable once built.
pub struct Compiled {
    /// Patterns in rank order: index in the sets == rank, so ascending ids are best first.
    entries: Vec<Entry>,
    /// Rank of each pattern, in registration order.
    registration: Vec<u32>,
    by_name: HashMap<Arc<str>, u32>,
    kinds: HashMap<String, u32>,
    /// For ASCII queries: patterns rewritten with Unicode off (exact on ASCII, far smaller).
    ascii: PrefilteredSet,
    /// For everything else.
    unicode: PrefilteredSet,
}

/// Parses and size-checks one regex; the HIR is what the sets are built from.
fn validate(name: &str, regex: &str) -> Result<Hir, CompileError> {
    let parsed = hir::parse(regex).map_err(|reason| CompileError::new(name, reason))?;
    thompson::Compiler::new()
        .configure(thompson::Config::new().nfa_size_limit(Some(PATTERN_SIZE_LIMIT)))
        .build_from_hir(&parsed)
        .map_err(|e| {
            CompileError::new(
                name,
                format!("regex too large: its automaton exceeds the {PATTERN_SIZE_LIMIT}-byte size limit ({e})"),
            )
        })?;
    Ok(parsed)
}

impl Compiled {
    /// Compiles `specs` and warms the sets on `warmup` in the calling thread.
    pub fn build(specs: &[PatternSpec], warmup: &[String]) -> Result<Self, CompileError> {
        let mut order: Vec<usize> = (0..specs.len()).collect();
        // Stable sort keeps registration order among equal priorities.
        order.sort_by_key(|&i| std::cmp::Reverse(specs[i].priority));

        let mut parsed = Vec::with_capacity(specs.len());
        let mut by_name = HashMap::with_capacity(specs.len());
        let mut kinds: HashMap<String, u32> = HashMap::new();
        let mut entries = Vec::with_capacity(specs.len());
        let mut registration = vec![0u32; specs.len()];
        // Validate in registration order so the first bad spec is the one reported.
        let mut hirs: Vec<Option<Hir>> = Vec::with_capacity(specs.len());
        for spec in specs {
            hirs.push(Some(validate(&spec.name, &spec.regex)?));
        }
        for (rank, &i) in order.iter().enumerate() {
            let spec = &specs[i];
            let name: Arc<str> = Arc::from(spec.name.as_str());
            if by_name.insert(Arc::clone(&name), rank as u32).is_some() {
                return Err(CompileError::new(
                    spec.name.as_str(),
                    "duplicate pattern name",
                ));
            }
            let next = kinds.len() as u32;
            let kind = *kinds.entry(spec.kind.clone()).or_insert(next);
            registration[i] = rank as u32;
            let hir = hirs[i].take().expect("each spec is ranked once");
            entries.push(Entry {
                name,
                regex: spec.regex.clone(),
                kind,
                captures: OnceLock::new(),
                matches_empty: crate::pyre::matches_empty(&hir),
            });
            parsed.push(hir);
        }

        let set_error = |reason: String| {
            CompileError::new(
                "<pattern set>",
                format!(
                    "the {} patterns together cannot be compiled: {reason}",
                    specs.len()
                ),
            )
        };
        let unicode_hirs: Vec<Hir> = parsed.iter().map(hir::strip_captures).collect();
        let ascii: Vec<hir::AsciiHir> = unicode_hirs.iter().map(hir::to_ascii).collect();
        let closed: Vec<bool> = ascii.iter().map(|a| a.case_closed).collect();
        // Case-closed patterns are searched on the lower-cased query (literals become plain
        // lowercase words for the prefilter); the others keep ASCII-case-insensitive classes.
        let lowered: Vec<Hir> = ascii
            .iter()
            .map(|a| {
                if a.case_closed {
                    hir::lowercase_only(&a.hir)
                } else {
                    a.hir.clone()
                }
            })
            .collect();
        let ascii_hirs: Vec<Hir> = ascii.into_iter().map(|a| a.hir).collect();
        let unicode_word = unicode_hirs
            .iter()
            .any(|h| h.properties().look_set().contains_word_unicode());
        let mut ascii =
            PrefilteredSet::build(&lowered, true, &closed, &ascii_hirs, false, false, true)
                .map_err(set_error)?;
        let everything = vec![true; unicode_hirs.len()];
        // Non-ASCII queries are rare: their verifiers are built on first use.
        let mut unicode = PrefilteredSet::build(
            &unicode_hirs,
            false,
            &everything,
            &unicode_hirs,
            false,
            unicode_word,
            false,
        )
        .map_err(set_error)?;

        let all_warmup: Vec<&str> = BUILTIN_WARMUP
            .iter()
            .copied()
            .chain(warmup.iter().map(String::as_str))
            .collect();
        ascii.warm(all_warmup.iter().copied().filter(|q| q.is_ascii()));
        unicode.warm(all_warmup.iter().copied().filter(|q| !q.is_ascii()));

        Ok(Self {
            entries,
            registration,
            by_name,
            kinds,
            ascii,
            unicode,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names in registration order.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.registration
            .iter()
            .map(|&r| Arc::clone(&self.entries[r as usize].name))
            .collect()
    }

    pub fn name(&self, rank: u32) -> &Arc<str> {
        &self.entries[rank as usize].name
    }

    pub fn kind_id(&self, kind: &str) -> Option<u32> {
        self.kinds.get(kind).copied()
    }

    /// (ASCII, Unicode) paths: whether each has a literal prefilter, and how many patterns
    /// each must search in full because they have no prefix literals.
    pub fn path_info(&self) -> [(bool, usize, usize); 2] {
        [&self.ascii, &self.unicode]
            .map(|p| (p.has_prefilter(), p.residual_len(), p.residual_memory()))
    }

    /// Ranks of the matching patterns (best first), restricted to `kind` if given.
    /// `first_only` stops after the best one.
    pub fn ranks(&self, query: &str, kind: Option<u32>, first_only: bool) -> Vec<u32> {
        let path = if query.is_ascii() {
            &self.ascii
        } else {
            &self.unicode
        };
        let keep = |r: u32| kind.is_none_or(|k| self.entries[r as usize].kind == k);
        if query.is_empty() {
            let mut ranks = (0..self.entries.len() as u32)
                .filter(|&r| self.entries[r as usize].matches_empty && keep(r));
            return if first_only {
                ranks.next().into_iter().collect()
            } else {
                ranks.collect()
            };
        }
        path.ranks(query.as_bytes(), keep, first_only)
    }

    /// The per-pattern regex (with captures), compiled on first use from the same Python
    /// translation as the sets. `Err(())` if there is no such pattern.
    fn pattern_regex(&self, name: &str) -> Result<(Option<&meta::Regex>, bool), ()> {
        let &rank = self.by_name.get(name).ok_or(())?;
        let entry = &self.entries[rank as usize];
        let re = entry
            .captures
            .get_or_init(|| {
                let hir = crate::pyre::renumber(&hir::parse(&entry.regex).ok()?);
                meta::Regex::builder()
                    .configure(
                        meta::Config::new()
                            .nfa_size_limit(Some(PATTERN_SIZE_LIMIT))
                            .hybrid_cache_capacity(CAPTURES_DFA_LIMIT),
                    )
                    .build_from_hir(&hir)
                    .ok()
            })
            .as_ref();
        Ok((re, entry.matches_empty))
    }

    /// The first match of pattern `name` in `query` with its groups, as Python reports them.
    fn first_match(&self, name: &str, query: &str) -> Result<Option<(meta::Regex, Captures)>, ()> {
        let (re, matches_empty) = self.pattern_regex(name)?;
        let Some(re) = re else {
            return Ok(None);
        };
        if query.is_empty() && !matches_empty {
            return Ok(None);
        }
        let mut caps = re.create_captures();
        re.search_captures(&Input::new(query), &mut caps);
        Ok(caps.is_match().then(|| (re.clone(), caps)))
    }

    /// Byte span of group `index`, moved back by one where a `$` took the final newline
    /// (Python's `$` matched before it; see [`crate::pyre::Translated`]).
    fn group_span(caps: &Captures, index: usize, query: &str) -> Option<(usize, usize)> {
        let span = caps.get_group(index)?;
        let dollar = caps
            .group_info()
            .pattern_names(PatternID::ZERO)
            .enumerate()
            .any(|(i, n)| {
                n.is_some_and(|n| n.starts_with(crate::pyre::DOLLAR_NEWLINE_GROUP))
                    && caps.get_group(i).is_some()
            });
        let fix = |at: usize| {
            if dollar && at == query.len() {
                at - 1
            } else {
                at
            }
        };
        Some((fix(span.start), fix(span.end)))
    }

    /// Named groups of pattern `name` on its first match in `query`.
    /// `Err(())` if there is no such pattern; `Ok(None)` if it does not match.
    #[allow(clippy::result_unit_err)]
    pub fn captures(&self, name: &str, query: &str) -> Result<Option<Vec<(String, String)>>, ()> {
        // Most triggers name no group: a plain search then answers, without the capture
        // engines (tens of microseconds on a long query with Unicode classes).
        if let (Some(re), matches_empty) = self.pattern_regex(name)? {
            let named = re
                .group_info()
                .pattern_names(PatternID::ZERO)
                .flatten()
                .any(|g| !g.starts_with(crate::pyre::DOLLAR_NEWLINE_GROUP));
            if !named {
                let found = (!query.is_empty() || matches_empty) && re.is_match(query);
                return Ok(found.then(Vec::new));
            }
        }
        let Some((re, caps)) = self.first_match(name, query)? else {
            return Ok(None);
        };
        let names = re.group_info().pattern_names(PatternID::ZERO);
        Ok(Some(
            names
                .enumerate()
                .filter_map(|(index, group)| {
                    let group =
                        group.filter(|g| !g.starts_with(crate::pyre::DOLLAR_NEWLINE_GROUP))?;
                    let (start, end) = Self::group_span(&caps, index, query)?;
                    Some((group.to_owned(), query[start..end].to_owned()))
                })
                .collect(),
        ))
    }

    /// Byte range of pattern `name`'s first match in `query` (leftmost-first, as `re.search`).
    /// `Err(())` if there is no such pattern; `Ok(None)` if it does not match.
    #[allow(clippy::result_unit_err)]
    pub fn span(&self, name: &str, query: &str) -> Result<Option<(usize, usize)>, ()> {
        Ok(self
            .first_match(name, query)?
            .and_then(|(_, caps)| Self::group_span(&caps, 0, query)))
    }
}

/// One generation of the matcher: compiled sets plus the cache of their answers.
pub struct State {
    pub compiled: Compiled,
    pub cache: MatchCache,
    pub version: u64,
}

/// The shared, swappable matcher. Readers load the current [`State`] without locking.
pub struct Matcher {
    state: ArcSwap<State>,
    cache_capacity: u64,
    /// Serialises `replace` calls so versions increase by one per swap.
    writer: Mutex<()>,
}

impl Matcher {
    pub fn new(
        specs: &[PatternSpec],
        cache_capacity: u64,
        warmup: &[String],
    ) -> Result<Self, CompileError> {
        let compiled = Compiled::build(specs, warmup)?;
        Ok(Self {
            state: ArcSwap::from_pointee(State {
                compiled,
                cache: MatchCache::new(cache_capacity),
                version: 1,
            }),
            cache_capacity,
            writer: Mutex::new(()),
        })
    }

    /// Validates one regex the way the matcher would.
    pub fn check(name: &str, regex: &str) -> Result<(), CompileError> {
        validate(name, regex).map(|_| ())
    }

    /// Compiles `specs` and swaps them in with a fresh cache; returns the new version.
    /// On error nothing changes. Readers keep using the old state until the swap and never
    /// see a partly built one.
    pub fn replace(&self, specs: &[PatternSpec], warmup: &[String]) -> Result<u64, CompileError> {
        let compiled = Compiled::build(specs, warmup)?;
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let version = self.state.load().version + 1;
        self.state.store(Arc::new(State {
            compiled,
            cache: MatchCache::new(self.cache_capacity),
            version,
        }));
        Ok(version)
    }

    pub fn version(&self) -> u64 {
        self.state.load().version
    }

    pub fn len(&self) -> usize {
        self.state.load().compiled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn names(&self) -> Vec<Arc<str>> {
        self.state.load().compiled.names()
    }

    /// Current generation, for callers that want several answers from one state.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    fn lookup(&self, query: &str, kind: Option<&str>, first_only: bool) -> Vec<Arc<str>> {
        let state = self.state.load();
        let compiled = &state.compiled;
        let kind_id = match kind {
            None => None,
            Some(k) => match compiled.kind_id(k) {
                Some(id) => Some(id),
                None => return Vec::new(),
            },
        };
        let to_names = |ranks: &[u32]| -> Vec<Arc<str>> {
            let n = if first_only {
                ranks.len().min(1)
            } else {
                ranks.len()
            };
            ranks[..n]
                .iter()
                .map(|&r| Arc::clone(compiled.name(r)))
                .collect()
        };
        if !state.cache.enabled() {
            state.cache.note_miss();
            return to_names(&compiled.ranks(query, kind_id, first_only));
        }
        let key: Key = (kind_id.unwrap_or(u32::MAX), Box::from(query));
        if let Some(ranks) = state.cache.get(&key) {
            return to_names(&ranks);
        }
        // Cache the full list so `best` and `all` share entries.
        let ranks: Arc<[u32]> = compiled.ranks(query, kind_id, false).into();
        let names = to_names(&ranks);
        state.cache.insert(key, ranks);
        names
    }

    /// Name of the best matching pattern, optionally among those of `kind`.
    pub fn best(&self, query: &str, kind: Option<&str>) -> Option<Arc<str>> {
        self.lookup(query, kind, true).pop()
    }

    /// [`Matcher::best`] answered from the result cache alone: `None` on a cache miss (or
    /// with the cache disabled), `Some(answer)` on a hit. Costs a hash lookup, no matching;
    /// a miss is not counted (the full lookup that follows counts it).
    pub fn best_cached(&self, query: &str, kind: Option<&str>) -> Option<Option<Arc<str>>> {
        let state = self.state.load();
        if !state.cache.enabled() {
            return None;
        }
        let compiled = &state.compiled;
        let kind_id = match kind {
            None => u32::MAX,
            Some(k) => compiled.kind_id(k)?,
        };
        let ranks = state.cache.get_if_present(&(kind_id, Box::from(query)))?;
        Some(ranks.first().map(|&r| Arc::clone(compiled.name(r))))
    }

    /// Names of all matching patterns, best first.
    pub fn all(&self, query: &str, kind: Option<&str>) -> Vec<Arc<str>> {
        self.lookup(query, kind, false)
    }

    /// See [`Compiled::captures`].
    #[allow(clippy::result_unit_err)]
    pub fn captures(&self, name: &str, query: &str) -> Result<Option<Vec<(String, String)>>, ()> {
        self.state.load().compiled.captures(name, query)
    }

    /// See [`Compiled::span`].
    #[allow(clippy::result_unit_err)]
    pub fn span(&self, name: &str, query: &str) -> Result<Option<(usize, usize)>, ()> {
        self.state.load().compiled.span(name, query)
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.state.load().cache.stats()
    }

    pub fn clear_cache(&self) {
        self.state.load().cache.clear()
    }
}
