//! The one error the core raises: a pattern that cannot be compiled or registered.

use std::fmt;

/// A trigger regex was rejected. `pattern_name` is the spec's name, `reason` a one-line cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub pattern_name: String,
    pub reason: String,
}

impl CompileError {
    pub fn new(pattern_name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            pattern_name: pattern_name.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pattern {:?}: {}", self.pattern_name, self.reason)
    }
}

impl std::error::Error for CompileError {}
