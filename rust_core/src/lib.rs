//! tmws-core: the matching core of tmws.
//!
//! Plain-Rust modules hold the logic; `python` is a thin PyO3 layer compiled only with the
//! `pyo3` feature (maturin enables it), so `cargo test` runs without Python.

pub mod bayes;
pub mod embed;
pub mod errors;
pub mod hir;
pub mod hnsw;
pub mod json;
pub mod keys;
pub mod lexical;
pub mod match_cache;
pub mod matcher;
pub mod prefilter;
pub mod pyre;
#[rustfmt::skip]
pub mod pyre_tables;
#[cfg(feature = "pyo3")]
mod python;
pub mod recall;
pub mod regex_set;
pub mod stem;

pub use embed::HashEmbedder;
pub use errors::CompileError;
pub use lexical::ExampleIndex;
pub use matcher::{Matcher, PatternSpec};

#[cfg(feature = "pyo3")]
#[pyo3::pymodule]
fn _tmws_core(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    python::init_module(m)
}
