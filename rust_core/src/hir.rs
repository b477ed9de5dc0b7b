//! Parsing trigger regexes and rewriting their HIR for the sets.
//!
//! Every pattern is parsed once, case-insensitively with Unicode on (the semantics users get).
//! From that HIR we derive what the sets are compiled from:
//! - capture groups stripped, since a set only answers "which patterns match" and slots for
//!   every group of a large set blow up memory;
//! - an ASCII-only variant, exact for ASCII haystacks, whose automaton is far smaller than the
//!   Unicode one (no UTF-8 sequences for `\w`, no Unicode case folding).

use regex_syntax::hir::{Class, ClassBytes, ClassBytesRange, Hir, HirKind, Look, Repetition};

pub use crate::pyre::NEST_LIMIT;

/// Parses `pattern` the way users' regexes are interpreted: Python `re` syntax and semantics,
/// case-insensitive (see [`crate::pyre`]). The HIR keeps capture groups.
///
/// The error is a one-line reason naming the construct and its offset.
pub fn parse(pattern: &str) -> Result<Hir, String> {
    crate::pyre::translate(pattern, true).map(|t| t.hir)
}

/// Rebuilds `hir` bottom-up, replacing each capture group by its body and each leaf by `leaf(leaf)`.
fn rebuild(hir: &Hir, leaf: &mut impl FnMut(&HirKind) -> Hir) -> Hir {
    match hir.kind() {
        HirKind::Capture(cap) => rebuild(&cap.sub, leaf),
        HirKind::Repetition(rep) => Hir::repetition(Repetition {
            min: rep.min,
            max: rep.max,
            greedy: rep.greedy,
            sub: Box::new(rebuild(&rep.sub, leaf)),
        }),
        HirKind::Concat(subs) => Hir::concat(subs.iter().map(|h| rebuild(h, leaf)).collect()),
        HirKind::Alternation(subs) => {
            Hir::alternation(subs.iter().map(|h| rebuild(h, leaf)).collect())
        }
        kind => leaf(kind),
    }
}

fn same_leaf(kind: &HirKind) -> Hir {
    match kind {
        HirKind::Empty => Hir::empty(),
        HirKind::Literal(lit) => Hir::literal(lit.0.clone()),
        HirKind::Class(cls) => Hir::class(cls.clone()),
        HirKind::Look(look) => Hir::look(*look),
        _ => unreachable!("not a leaf"),
    }
}

/// The same regex with every capturing group made non-capturing.
pub fn strip_captures(hir: &Hir) -> Hir {
    rebuild(hir, &mut same_leaf)
}

/// An ASCII-only rewrite of a (case-insensitive, Unicode) HIR.
pub struct AsciiHir {
    pub hir: Hir,
    /// Every class is closed under ASCII case swapping and no literal holds a letter, i.e. no
    /// `(?-i)` part makes the pattern case-sensitive. Only then may haystacks be lower-cased.
    pub case_closed: bool,
}

/// Rewrites `hir` (captures stripped) into a byte-oriented HIR with Unicode off that matches an
/// ASCII haystack exactly where `hir` does: classes are cut down to their ASCII part, literals
/// holding non-ASCII bytes can never match, and Unicode word boundaries become ASCII ones (on
/// ASCII text both agree). A class like `\p{Greek}` becomes empty, so such a pattern stays valid
/// and simply never matches ASCII queries — which is correct.
pub fn to_ascii(hir: &Hir) -> AsciiHir {
    let mut case_closed = true;
    let hir = rebuild(hir, &mut |kind| match kind {
        HirKind::Literal(lit) => {
            if !lit.0.is_ascii() {
                return Hir::fail();
            }
            if lit.0.iter().any(u8::is_ascii_alphabetic) {
                // Case-insensitive letters are translated into classes; a literal letter
                // only survives inside `(?-i)`.
                case_closed = false;
            }
            Hir::literal(lit.0.clone())
        }
        HirKind::Class(cls) => {
            let ascii = ascii_part(cls);
            case_closed &= is_case_closed(&ascii);
            Hir::class(Class::Bytes(ascii))
        }
        HirKind::Look(look) => Hir::look(ascii_look(*look)),
        other => same_leaf(other),
    });
    AsciiHir { hir, case_closed }
}

/// Drops `A-Z` from every class of an ASCII HIR. With a case-closed pattern, searching the
/// lower-cased haystack with the result is exactly the case-insensitive search, and the
/// literals become plain lowercase words a prefilter can look for.
pub fn lowercase_only(ascii: &Hir) -> Hir {
    let upper = ClassBytes::new([ClassBytesRange::new(b'A', b'Z')]);
    rebuild(ascii, &mut |kind| match kind {
        HirKind::Class(Class::Bytes(cls)) => {
            let mut cls = cls.clone();
            cls.difference(&upper);
            Hir::class(Class::Bytes(cls))
        }
        other => same_leaf(other),
    })
}

fn ascii_part(cls: &Class) -> ClassBytes {
    let ranges: Vec<ClassBytesRange> = match cls {
        Class::Unicode(u) => u
            .ranges()
            .iter()
            .filter(|r| u32::from(r.start()) <= 0x7F)
            .map(|r| {
                let end = u32::from(r.end()).min(0x7F);
                ClassBytesRange::new(r.start() as u8, end as u8)
            })
            .collect(),
        Class::Bytes(b) => b
            .ranges()
            .iter()
            .filter(|r| r.start() <= 0x7F)
            .map(|r| ClassBytesRange::new(r.start(), r.end().min(0x7F)))
            .collect(),
    };
    ClassBytes::new(ranges)
}

fn is_case_closed(cls: &ClassBytes) -> bool {
    let mut member = [false; 128];
    for r in cls.ranges() {
        for b in r.start()..=r.end() {
            member[usize::from(b)] = true;
        }
    }
    (b'a'..=b'z').all(|b| member[usize::from(b)] == member[usize::from(b - 32)])
}

fn ascii_look(look: Look) -> Look {
    match look {
        Look::WordUnicode => Look::WordAscii,
        Look::WordUnicodeNegate => Look::WordAsciiNegate,
        Look::WordStartUnicode => Look::WordStartAscii,
        Look::WordEndUnicode => Look::WordEndAscii,
        Look::WordStartHalfUnicode => Look::WordStartHalfAscii,
        Look::WordEndHalfUnicode => Look::WordEndHalfAscii,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_captures() {
        let hir = strip_captures(&parse(r"(?P<verb>run|call)\s+(\w+)").unwrap());
        assert_eq!(hir.properties().explicit_captures_len(), 0);
    }

    #[test]
    fn lowercases_case_closed_patterns() {
        let ascii = to_ascii(&strip_captures(&parse(r"\bRun\s+[a-c]").unwrap()));
        assert!(ascii.case_closed);
        let lower = lowercase_only(&ascii.hir);
        assert!(!lower.to_string().contains('R'), "{lower}");
    }

    #[test]
    fn case_sensitive_part_is_not_closed() {
        assert!(!to_ascii(&parse(r"(?-i:Run)").unwrap()).case_closed);
        assert!(!to_ascii(&parse(r"(?-i:[A-Z])").unwrap()).case_closed);
    }

    #[test]
    fn non_ascii_only_classes_become_empty() {
        let ascii = to_ascii(&parse("[α-ω]+").unwrap());
        assert!(ascii.case_closed);
    }
}
