//! Result-cache keys shared by every tmws instance on one Redis: the same inputs must give
//! the same key on any machine and any version of this crate, so the hash is XXH3-128, a
//! specified and frozen algorithm, over length-prefixed parts (no two part lists collide by
//! concatenation: `["ab", "c"]` and `["a", "bc"]` hash differently).

use xxhash_rust::xxh3::Xxh3;

/// Lower-cased (Unicode), with runs of whitespace collapsed to one space and the ends
/// trimmed: "Recall  MEMORIES\tabout X" and "recall memories about x" share cache entries.
pub fn normalize_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    for word in query.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// 128-bit key of the parts, as 32 lowercase hex digits.
pub fn cache_key<P: AsRef<[u8]>>(parts: &[P]) -> String {
    let mut hasher = Xxh3::new();
    for part in parts {
        let bytes = part.as_ref();
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    format!("{:032x}", hasher.digest128())
}
