//! The words of a text, lowercased and reduced to their English stems (Snowball's
//! Porter 2), for the router's lexicon (`tmws.lexicon`): inflections meet ("configured" =
//! "configure", "memories" = "memory") before the example index sees the text.

use std::sync::OnceLock;

use rust_stemmers::{Algorithm, Stemmer};

/// Words of at most this many characters are kept as they are: stems of short words
/// ("is", "ran", "api") are more often wrong than helpful.
pub const MIN_STEMMED_CHARS: usize = 4;

fn stemmer() -> &'static Stemmer {
    static STEMMER: OnceLock<Stemmer> = OnceLock::new();
    STEMMER.get_or_init(|| Stemmer::create(Algorithm::English))
}

/// Maximal runs of Unicode alphanumeric characters, lowercased, each stemmed if it has
/// at least [`MIN_STEMMED_CHARS`] characters.
pub fn stemmed_words(text: &str) -> Vec<String> {
    let stemmer = stemmer();
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| {
            let lower = word.to_lowercase();
            if lower.chars().count() >= MIN_STEMMED_CHARS {
                stemmer.stem(&lower).into_owned()
            } else {
                lower
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflections_meet() {
        assert_eq!(stemmed_words("Configured"), stemmed_words("configure"));
        assert_eq!(stemmed_words("memories"), stemmed_words("memory"));
        assert_eq!(
            stemmed_words("is the DB up?"),
            vec!["is", "the", "db", "up"]
        );
    }

    #[test]
    fn words_are_alphanumeric_runs() {
        assert_eq!(
            stemmed_words("n+1 queries_x, ünïcode"),
            vec!["n", "1", "queri", "x", "ünïcode"]
        );
        assert!(stemmed_words(" ,;!").is_empty());
    }
}
