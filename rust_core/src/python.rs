//! The Python face of the core: frozen `Matcher`, `HashEmbedder`, `ExampleIndex` and
//! `RecallIndex`
//! classes and the private `CompileFailure` (`tmws._native` turns it into
//! `tmws.errors.PatternCompileError`: the core imports nothing from the Python package).
//!
//! Only conversion lives here. Every search and every build runs with the GIL released
//! (`Python::detach`), so other Python threads keep running while Rust works.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyError, PyOverflowError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::embed::{HashEmbedder, MAX_DIM, MIN_DIM};
use crate::errors::CompileError;
use crate::json;
use crate::keys;
use crate::lexical::ExampleIndex;
use crate::matcher::{Matcher, PatternSpec};
use crate::recall::{
    parse_tsvector, parse_vector, unit, MemoryDoc, RecallConfig, RecallIndex, RecallQuery,
};
use crate::stem;

create_exception!(
    _tmws_core,
    CompileFailure,
    PyException,
    "A trigger regex was rejected: args are (pattern_name, reason). Private: tmws._native \
     raises tmws.errors.PatternCompileError in its place."
);

fn compile_error(err: CompileError) -> PyErr {
    CompileFailure::new_err((err.pattern_name, err.reason))
}

type SpecTuple = (String, String, i64, String);

fn to_specs(patterns: Vec<SpecTuple>) -> Vec<PatternSpec> {
    patterns
        .into_iter()
        .map(|(name, regex, priority, kind)| PatternSpec {
            name,
            regex,
            priority,
            kind,
        })
        .collect()
}

/// Matches queries against a library of trigger regexes; see `tmws/_tmws_core.pyi`.
#[pyclass(frozen, subclass, name = "Matcher", module = "tmws._tmws_core")]
pub struct PyMatcher {
    inner: Matcher,
}

#[pymethods]
impl PyMatcher {
    #[new]
    #[pyo3(signature = (patterns, *, cache_capacity = 10_000, warmup = Vec::new()))]
    fn new(
        py: Python<'_>,
        patterns: Vec<SpecTuple>,
        cache_capacity: u64,
        warmup: Vec<String>,
    ) -> PyResult<Self> {
        let specs = to_specs(patterns);
        py.detach(|| Matcher::new(&specs, cache_capacity, &warmup))
            .map(|inner| Self { inner })
            .map_err(compile_error)
    }

    #[staticmethod]
    fn check(py: Python<'_>, name: &str, regex: &str) -> PyResult<()> {
        py.detach(|| Matcher::check(name, regex))
            .map_err(compile_error)
    }

    #[pyo3(signature = (patterns, *, warmup = Vec::new()))]
    fn replace(
        &self,
        py: Python<'_>,
        patterns: Vec<SpecTuple>,
        warmup: Vec<String>,
    ) -> PyResult<u64> {
        let specs = to_specs(patterns);
        py.detach(|| self.inner.replace(&specs, &warmup))
            .map_err(compile_error)
    }

    // `query` borrows the str's UTF-8 buffer; the caller's reference keeps the (immutable)
    // str alive for the whole call, so it can be read with the GIL released.
    #[pyo3(signature = (query, kind = None))]
    fn best<'py>(
        &self,
        py: Python<'py>,
        query: &str,
        kind: Option<&str>,
    ) -> Option<Bound<'py, PyString>> {
        // A cached answer is a hash lookup: releasing the GIL for it would cost more (a
        // thread hand-off, measured ~20 us per served request) than it lets others run.
        let found = match self.inner.best_cached(query, kind) {
            Some(cached) => cached,
            None => py.detach(|| self.inner.best(query, kind)),
        };
        found.map(|name| PyString::new(py, &name))
    }

    #[pyo3(signature = (query, kind = None))]
    fn all<'py>(
        &self,
        py: Python<'py>,
        query: &str,
        kind: Option<&str>,
    ) -> PyResult<Bound<'py, PyList>> {
        let names = py.detach(|| self.inner.all(query, kind));
        PyList::new(py, names.iter().map(|n| PyString::new(py, n)))
    }

    fn captures<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        query: &str,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let groups = py
            .detach(|| self.inner.captures(name, query))
            .map_err(|()| PyKeyError::new_err(name.to_owned()))?;
        groups
            .map(|groups| {
                let dict = PyDict::new(py);
                for (group, text) in groups {
                    dict.set_item(group, text)?;
                }
                Ok(dict)
            })
            .transpose()
    }

    /// Character (not byte) offsets, so Python can slice the query with them.
    fn span(&self, py: Python<'_>, name: &str, query: &str) -> PyResult<Option<(usize, usize)>> {
        let found = py
            .detach(|| self.inner.span(name, query))
            .map_err(|()| PyKeyError::new_err(name.to_owned()))?;
        Ok(found.map(|(start, end)| {
            let start_chars = query[..start].chars().count();
            (start_chars, start_chars + query[start..end].chars().count())
        }))
    }

    fn names<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let names = self.inner.names();
        PyList::new(py, names.iter().map(|n| PyString::new(py, n)))
    }

    #[getter]
    fn version(&self) -> u64 {
        self.inner.version()
    }

    fn cache_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = py.detach(|| self.inner.cache_stats());
        let dict = PyDict::new(py);
        dict.set_item("hits", stats.hits)?;
        dict.set_item("misses", stats.misses)?;
        dict.set_item("size", stats.size)?;
        dict.set_item("capacity", stats.capacity)?;
        dict.set_item("evictions", stats.evictions)?;
        Ok(dict)
    }

    fn clear_cache(&self, py: Python<'_>) {
        py.detach(|| self.inner.clear_cache());
    }

    /// Diagnostics for benchmarks: literal prefilter use and patterns searched without one.
    fn _engine_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let state = self.inner.state();
        let dict = PyDict::new(py);
        for (path, (prefilter, residual, residual_bytes)) in ["ascii", "unicode"]
            .into_iter()
            .zip(state.compiled.path_info())
        {
            dict.set_item(format!("{path}_prefilter"), prefilter)?;
            dict.set_item(format!("{path}_residual_patterns"), residual)?;
            dict.set_item(format!("{path}_residual_dfa_bytes"), residual_bytes)?;
        }
        Ok(dict)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<Matcher patterns={} version={}>",
            self.inner.len(),
            self.inner.version()
        )
    }
}

/// Lexical feature-hashing embedder; see `tmws/_tmws_core.pyi`.
#[pyclass(frozen, name = "HashEmbedder", module = "tmws._tmws_core")]
pub struct PyHashEmbedder {
    inner: HashEmbedder,
}

// Batches take `PyBackedStr`: it borrows each str's UTF-8 buffer (no copy) and, unlike
// `&str`, may be read with the GIL released.
#[pymethods]
impl PyHashEmbedder {
    #[new]
    #[pyo3(signature = (dim = 384))]
    fn new(dim: i64) -> PyResult<Self> {
        // Signed so a negative dim is a ValueError like any other bad one, not OverflowError.
        usize::try_from(dim)
            .map_err(|_| format!("dim must be between {MIN_DIM} and {MAX_DIM}, got {dim}"))
            .and_then(HashEmbedder::new)
            .map(|inner| Self { inner })
            .map_err(PyValueError::new_err)
    }

    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        self.inner.algorithm()
    }

    fn embed(&self, py: Python<'_>, text: &str) -> Vec<f32> {
        py.detach(|| self.inner.embed(text))
    }

    fn embed_batch<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<PyBackedStr>,
    ) -> PyResult<Bound<'py, PyList>> {
        let flat = py.detach(|| self.inner.embed_batch(&texts));
        PyList::new(py, flat.chunks_exact(self.inner.dim()))
    }

    fn embed_batch_bytes<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<PyBackedStr>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let len = texts
            .len()
            .checked_mul(self.inner.dim() * 4)
            .ok_or_else(|| PyOverflowError::new_err("batch too large"))?;
        // Rows are written straight into the new bytes object's buffer.
        PyBytes::new_with(py, len, |buf| {
            py.detach(|| self.inner.embed_batch_le_bytes(&texts, buf));
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<HashEmbedder dim={} algorithm={:?}>",
            self.inner.dim(),
            self.inner.algorithm()
        )
    }
}

/// Lexical TF-IDF index over pattern example utterances; see `tmws/_tmws_core.pyi`.
/// `top_k` as given from Python: signed, so a negative one is a ValueError, not an
/// OverflowError.
fn top_k_arg(top_k: i64) -> PyResult<usize> {
    usize::try_from(top_k)
        .map_err(|_| PyValueError::new_err(format!("top_k must be >= 0, got {top_k}")))
}

#[pyclass(frozen, name = "ExampleIndex", module = "tmws._tmws_core")]
pub struct PyExampleIndex {
    inner: ExampleIndex,
}

#[pymethods]
impl PyExampleIndex {
    #[new]
    fn new(py: Python<'_>, examples: Vec<(String, String, String)>) -> Self {
        let inner = py.detach(|| ExampleIndex::new(examples));
        Self { inner }
    }

    fn with_vectors(
        &self,
        py: Python<'_>,
        vectors: Vec<Option<Vec<f32>>>,
        weight: f32,
    ) -> PyResult<Self> {
        let inner = py
            .detach(|| self.inner.with_vectors(&vectors, weight))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Self { inner })
    }

    // `query` borrows the str's UTF-8 buffer, alive for the whole call (see `Matcher.best`).
    #[pyo3(signature = (query, top_k = 5, kind = None, exclude = None, vector = None))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        query: &str,
        top_k: i64,
        kind: Option<&str>,
        exclude: Option<usize>,
        vector: Option<Vec<f32>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let top_k = top_k_arg(top_k)?;
        let found = py
            .detach(|| match (&vector, exclude) {
                (Some(v), _) => self.inner.score_blended(query, v, top_k, kind, exclude),
                (None, None) => Ok(self.inner.score(query, top_k, kind)),
                (None, Some(example)) => Ok(self.inner.score_without(query, top_k, kind, example)),
            })
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        PyList::new(
            py,
            found.iter().map(|c| {
                (
                    PyString::new(py, self.inner.pattern_name(c.pattern)),
                    c.score,
                    c.example,
                )
            }),
        )
    }

    #[pyo3(signature = (query, top_k = 5, kind = None, exclude = None))]
    fn classify<'py>(
        &self,
        py: Python<'py>,
        query: &str,
        top_k: i64,
        kind: Option<&str>,
        exclude: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let top_k = top_k_arg(top_k)?;
        let found = py.detach(|| self.inner.classify(query, top_k, kind, exclude));
        PyList::new(
            py,
            found.iter().map(|r| {
                (
                    PyString::new(py, self.inner.pattern_name(r.pattern)),
                    r.probability,
                    r.example,
                    r.cosine,
                )
            }),
        )
    }

    #[getter]
    fn feature_count(&self) -> usize {
        self.inner.feature_count()
    }

    #[getter]
    fn pattern_count(&self) -> usize {
        self.inner.pattern_count()
    }

    #[getter]
    fn vector_dim(&self) -> Option<usize> {
        self.inner.vector_dim()
    }

    #[getter]
    fn vector_weight(&self) -> Option<f32> {
        self.inner.vector_weight()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.inner.stats();
        let dict = PyDict::new(py);
        dict.set_item("patterns", stats.patterns)?;
        dict.set_item("examples", stats.examples)?;
        dict.set_item("kinds", stats.kinds)?;
        dict.set_item("word_features", stats.word_features)?;
        dict.set_item("char_features", stats.char_features)?;
        dict.set_item("postings", stats.postings)?;
        dict.set_item("empty_examples", stats.empty_examples)?;
        Ok(dict)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<ExampleIndex patterns={} examples={} features={}>",
            self.inner.pattern_count(),
            self.inner.len(),
            self.inner.feature_count()
        )
    }
}

/// A memory row as `tmws._recall_index` hands it over:
/// `(id, namespace, shared, importance, created_us, tsv, vector_send bytes or None)`.
type MemoryRowTuple = (i64, String, bool, f32, i64, String, Option<Vec<u8>>);

fn positive(name: &str, value: i64) -> PyResult<usize> {
    usize::try_from(value)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| PyValueError::new_err(format!("{name} must be > 0, got {value}")))
}

/// The derived recall index (`crate::recall`); see `tmws/_tmws_core.pyi`. Searches share a
/// read lock, changes take the write lock; both run with the GIL released.
#[pyclass(frozen, name = "RecallIndex", module = "tmws._tmws_core")]
pub struct PyRecallIndex {
    inner: std::sync::RwLock<RecallIndex>,
    dim: usize,
}

fn poisoned() -> PyErr {
    PyRuntimeError::new_err(
        "the recall index was left inconsistent by a panic: clear() it and load it again",
    )
}

impl PyRecallIndex {
    // Inputs are checked before a lock is taken, so no panic is expected under one; if one
    // happened anyway the index may be half-changed, and it answers nothing until cleared.
    fn read(&self) -> PyResult<std::sync::RwLockReadGuard<'_, RecallIndex>> {
        self.inner.read().map_err(|_| poisoned())
    }

    fn write(&self) -> PyResult<std::sync::RwLockWriteGuard<'_, RecallIndex>> {
        self.inner.write().map_err(|_| poisoned())
    }

    /// For figures only (stats, len): a poisoned index's are still worth showing.
    fn peek(&self) -> std::sync::RwLockReadGuard<'_, RecallIndex> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PyRecallIndex {
    #[new]
    #[pyo3(signature = (dim, *, m = 16, ef_construction = 64, ef_search = 100, exact_below = 4096))]
    fn new(
        dim: i64,
        m: i64,
        ef_construction: i64,
        ef_search: i64,
        exact_below: i64,
    ) -> PyResult<Self> {
        let mut config = RecallConfig::new(positive("dim", dim)?);
        config.m = positive("m", m)?.max(2);
        config.ef_construction = positive("ef_construction", ef_construction)?;
        config.ef_search = positive("ef_search", ef_search)?;
        config.exact_below = usize::try_from(exact_below).map_err(|_| {
            PyValueError::new_err(format!("exact_below must be >= 0, got {exact_below}"))
        })?;
        Ok(Self {
            inner: std::sync::RwLock::new(RecallIndex::new(config)),
            dim: config.dim,
        })
    }

    /// Upserts `rows` and removes `deleted`, in that order; every row is parsed before any
    /// is applied, so a bad one changes nothing.
    fn apply(&self, py: Python<'_>, rows: Vec<MemoryRowTuple>, deleted: Vec<i64>) -> PyResult<()> {
        let dim = self.dim;
        let docs = py
            .detach(|| {
                rows.into_iter()
                    .map(
                        |(id, namespace, shared, importance, created_us, tsv, vector)| {
                            let terms = parse_tsvector(&tsv)
                                .map_err(|e| format!("memory {id}: content_tsv: {e}"))?;
                            let embedding = match vector {
                                None => None,
                                Some(bytes) => parse_vector(&bytes, dim)
                                    .map_err(|e| format!("memory {id}: embedding: {e}"))?,
                            };
                            Ok(MemoryDoc {
                                id,
                                namespace,
                                shared,
                                importance,
                                created_us,
                                terms,
                                embedding,
                            })
                        },
                    )
                    .collect::<Result<Vec<MemoryDoc>, String>>()
            })
            .map_err(PyValueError::new_err)?;
        py.detach(|| {
            let mut index = self.write()?;
            index.upsert_batch(docs);
            for id in deleted {
                index.remove(id);
            }
            Ok(())
        })
    }

    /// Empties the index, a poisoned one included.
    fn clear(&self, py: Python<'_>) {
        py.detach(|| {
            let mut index = self.inner.write().unwrap_or_else(|e| e.into_inner());
            index.clear();
            self.inner.clear_poison();
        });
    }

    fn compaction_due(&self, py: Python<'_>) -> PyResult<bool> {
        py.detach(|| Ok(self.read()?.compaction_due()))
    }

    fn compact(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| Ok(self.write()?.compact()))
    }

    fn shrink(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            self.write()?.shrink_to_fit();
            Ok(())
        })
    }

    #[pyo3(signature = (namespace, query_tsv, vector, *, candidates, limit, max_distance, rrf_k))]
    #[allow(clippy::too_many_arguments)]
    fn search<'py>(
        &self,
        py: Python<'py>,
        namespace: &str,
        query_tsv: &str,
        vector: Option<Vec<f32>>,
        candidates: i64,
        limit: i64,
        max_distance: f32,
        rrf_k: f64,
    ) -> PyResult<Bound<'py, PyList>> {
        let candidates = top_k_arg(candidates)?;
        let limit = top_k_arg(limit)?;
        let lexemes: Vec<String> = parse_tsvector(query_tsv)
            .map_err(|e| PyValueError::new_err(format!("query_tsv: {e}")))?
            .into_iter()
            .map(|(lexeme, _)| lexeme)
            .collect();
        let dim = self.dim;
        if let Some(v) = &vector {
            if v.len() != dim {
                return Err(PyValueError::new_err(format!(
                    "query vector has {} dimensions; the index holds {dim}",
                    v.len()
                )));
            }
        }
        let found = py.detach(|| {
            let vector = vector.and_then(unit);
            Ok::<_, PyErr>(self.read()?.search(&RecallQuery {
                namespace,
                lexemes: &lexemes,
                vector: vector.as_deref(),
                candidates,
                limit,
                max_distance,
                rrf_k,
            }))
        })?;
        PyList::new(py, found.iter().map(|r| (r.id, r.score)))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.peek().stats();
        let dict = PyDict::new(py);
        dict.set_item("documents", stats.documents)?;
        dict.set_item("partitions", stats.partitions)?;
        dict.set_item("graphs", stats.graphs)?;
        dict.set_item("vectors", stats.vectors)?;
        dict.set_item("removed_vectors", stats.removed_vectors)?;
        dict.set_item("terms", stats.terms)?;
        dict.set_item("dead_postings", stats.dead_postings)?;
        dict.set_item("memory_bytes", stats.memory_bytes)?;
        Ok(dict)
    }

    fn __contains__(&self, id: i64) -> bool {
        self.peek().contains(id)
    }

    fn __len__(&self) -> usize {
        self.peek().len()
    }

    fn __repr__(&self) -> String {
        let index = self.peek();
        format!(
            "<RecallIndex documents={} dim={}>",
            index.len(),
            index.config().dim
        )
    }
}

/// See [`crate::keys::normalize_query`].
#[pyfunction]
fn normalize_query(query: &str) -> String {
    keys::normalize_query(query)
}

/// See [`crate::stem::stemmed_words`].
#[pyfunction]
fn stemmed_words(text: &str) -> Vec<String> {
    stem::stemmed_words(text)
}

/// See [`crate::keys::cache_key`]; parts are `str` (UTF-8) or `bytes`.
#[pyfunction]
fn cache_key(parts: Vec<KeyPart>) -> String {
    keys::cache_key(&parts)
}

/// See [`crate::json::first_too_deep`]. Bodies are small; only large ones release the GIL.
#[pyfunction]
fn json_too_deep(py: Python<'_>, data: &[u8], limit: usize) -> Option<usize> {
    if data.len() < 16 * 1024 {
        json::first_too_deep(data, limit)
    } else {
        py.detach(|| json::first_too_deep(data, limit))
    }
}

/// One part of a cache key: text or raw bytes.
#[derive(FromPyObject)]
enum KeyPart {
    Text(String),
    Bytes(Vec<u8>),
}

impl AsRef<[u8]> for KeyPart {
    fn as_ref(&self) -> &[u8] {
        match self {
            KeyPart::Text(text) => text.as_bytes(),
            KeyPart::Bytes(bytes) => bytes,
        }
    }
}

/// Fills the `_tmws_core` module.
pub fn init_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CompileFailure", py.get_type::<CompileFailure>())?;
    m.add_class::<PyMatcher>()?;
    m.add_class::<PyHashEmbedder>()?;
    m.add_class::<PyExampleIndex>()?;
    m.add_class::<PyRecallIndex>()?;
    m.add_function(wrap_pyfunction!(normalize_query, m)?)?;
    m.add_function(wrap_pyfunction!(stemmed_words, m)?)?;
    m.add_function(wrap_pyfunction!(cache_key, m)?)?;
    m.add_function(wrap_pyfunction!(json_too_deep, m)?)?;
    Ok(())
}
