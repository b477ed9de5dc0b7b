//! A bound on how deeply a JSON text nests, checked before anything decodes it.
//!
//! Recursive decoders (msgspec, Python's `json`, psycopg's loaders) spend a stack frame per
//! level and fail somewhere near 1,000 levels with an error that is not about the input. One
//! linear pass over the bytes finds the first bracket beyond a limit instead, so a request can
//! be refused with the place named. Only brackets outside strings count; the text need not be
//! valid JSON (the decoder says what else is wrong).

use memchr::memchr2;

/// Byte offset of the first `[` or `{` that opens level `limit + 1`, or `None` if the text
/// never nests deeper than `limit`.
pub fn first_too_deep(data: &[u8], limit: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = 0usize;
    while at < data.len() {
        match data[at] {
            b'"' => at = string_end(data, at + 1),
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(at);
                }
                at += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                at += 1;
            }
            _ => at += 1,
        }
    }
    None
}

/// The offset just past the string whose contents start at `from` (the end of the data
/// for an unterminated string).
fn string_end(data: &[u8], mut from: usize) -> usize {
    // Long strings (memory content) are skipped with SIMD search for the two bytes that
    // matter inside them.
    while let Some(offset) = memchr2(b'"', b'\\', &data[from..]) {
        let at = from + offset;
        if data[at] == b'"' {
            return at + 1;
        }
        from = at + 2; // an escape: skip the escaped byte, whatever it is
        if from >= data.len() {
            return data.len();
        }
    }
    data.len()
}
