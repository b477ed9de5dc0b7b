use std::sync::Arc;

use tmws_core::{Matcher, PatternSpec};

fn spec(name: &str, regex: &str, priority: i64, kind: &str) -> PatternSpec {
    PatternSpec::new(name, regex, priority, kind)
}

fn library() -> Vec<PatternSpec> {
    vec![
        spec("run", r"(?P<verb>run|execute)\s+(?P<target>\w+)", 3, "tool"),
        spec("run_tool", r"run\s+tool", 3, "tool"),
        spec("health", r"check\s+(health|status)", 5, "ops"),
        spec("anything", r"\w+", 1, "fallback"),
        spec("urgent", r"\burgent\b", 9, "ops"),
    ]
}

fn names(v: Vec<Arc<str>>) -> Vec<String> {
    v.into_iter().map(|s| s.to_string()).collect()
}

#[test]
fn highest_priority_wins() {
    let m = Matcher::new(&library(), 0, &[]).unwrap();
    assert_eq!(
        m.best("urgent: check health", None).as_deref(),
        Some("urgent")
    );
    assert_eq!(m.best("check health", None).as_deref(), Some("health"));
    assert_eq!(m.best("!!!", None), None);
}

#[test]
fn ties_break_by_registration_order() {
    let m = Matcher::new(&library(), 0, &[]).unwrap();
    // `run` and `run_tool` both have priority 3; `run` was registered first.
    assert_eq!(m.best("please run tool now", None).as_deref(), Some("run"));
    let reversed = vec![library()[1].clone(), library()[0].clone()];
    let m = Matcher::new(&reversed, 0, &[]).unwrap();
    assert_eq!(
        m.best("please run tool now", None).as_deref(),
        Some("run_tool")
    );
}

#[test]
fn all_is_in_priority_order() {
    let m = Matcher::new(&library(), 0, &[]).unwrap();
    assert_eq!(
        names(m.all("URGENT run tool", None)),
        ["urgent", "run", "run_tool", "anything"]
    );
}

#[test]
fn kind_filter() {
    let m = Matcher::new(&library(), 0, &[]).unwrap();
    assert_eq!(
        m.best("urgent run tool", Some("tool")).as_deref(),
        Some("run")
    );
    assert_eq!(
        m.best("urgent run tool", Some("fallback")).as_deref(),
        Some("anything")
    );
    assert_eq!(m.best("urgent run tool", Some("no-such-kind")), None);
    assert_eq!(
        names(m.all("urgent check status", Some("ops"))),
        ["urgent", "health"]
    );
}

#[test]
fn captures_of_one_pattern() {
    let m = Matcher::new(&library(), 0, &[]).unwrap();
    let mut caps = m
        .captures("run", "Please EXECUTE backups")
        .unwrap()
        .unwrap();
    caps.sort();
    assert_eq!(
        caps,
        [
            ("target".into(), "backups".into()),
            ("verb".into(), "EXECUTE".into())
        ]
    );
    assert_eq!(m.captures("run", "nothing here").unwrap(), None);
    assert!(m.captures("missing", "run x").is_err());
    // Groups that did not participate are omitted.
    let m = Matcher::new(&[spec("opt", r"a(?P<x>x)?(?P<y>y)?", 1, "k")], 0, &[]).unwrap();
    assert_eq!(
        m.captures("opt", "ay").unwrap().unwrap(),
        [("y".into(), "y".into())]
    );
}

#[test]
fn span_of_the_first_match() {
    let m = Matcher::new(&library(), 0, &[]).unwrap();
    let query = "Please EXECUTE backups";
    let (start, end) = m.span("run", query).unwrap().unwrap();
    assert_eq!(&query[start..end], "EXECUTE backups");
    assert_eq!(m.span("run", "nothing here").unwrap(), None);
    assert!(m.span("missing", "run x").is_err());
}

#[test]
fn cache_counts_hits_and_misses() {
    let m = Matcher::new(&library(), 100, &[]).unwrap();
    assert_eq!(m.best("run tool", None).as_deref(), Some("run"));
    assert_eq!(m.best("run tool", None).as_deref(), Some("run"));
    // `all` shares the entry that `best` filled.
    assert_eq!(
        names(m.all("run tool", None)),
        ["run", "run_tool", "anything"]
    );
    // A kind filter is a different key.
    assert_eq!(m.best("run tool", Some("tool")).as_deref(), Some("run"));
    let s = m.cache_stats();
    assert_eq!((s.hits, s.misses, s.size, s.capacity), (2, 2, 2, 100));
    m.clear_cache();
    assert_eq!(m.cache_stats().size, 0);
    m.best("run tool", None);
    assert_eq!(m.cache_stats().misses, 3);
}

#[test]
fn best_cached_answers_only_from_the_cache() {
    let m = Matcher::new(&library(), 100, &[]).unwrap();
    assert_eq!(m.best_cached("run tool", None), None); // a miss: not counted here
    assert_eq!(m.cache_stats().misses, 0);
    m.best("run tool", None);
    assert_eq!(
        m.best_cached("run tool", None).unwrap().as_deref(),
        Some("run")
    );
    assert_eq!(m.best_cached("run tool", Some("no-such-kind")), None);
    let s = m.cache_stats();
    assert_eq!((s.hits, s.misses), (1, 1));
    let off = Matcher::new(&library(), 0, &[]).unwrap();
    off.best("run tool", None);
    assert_eq!(off.best_cached("run tool", None), None);
}

#[test]
fn cache_evicts_at_capacity() {
    let m = Matcher::new(&library(), 10, &[]).unwrap();
    for i in 0..25 {
        m.best(&format!("query {i}"), None);
        // Let moka apply each insert so eviction is deterministic.
        m.cache_stats();
    }
    let s = m.cache_stats();
    assert_eq!(s.size, 10);
    assert_eq!(s.evictions, 15);
    // Least recently used went first: the newest entry is still there.
    m.best("query 24", None);
    assert_eq!(m.cache_stats().hits, 1);
    m.best("query 0", None);
    assert_eq!(m.cache_stats().hits, 1);
}

#[test]
fn disabled_cache_only_misses() {
    let m = Matcher::new(&library(), 0, &[]).unwrap();
    m.best("run tool", None);
    m.best("run tool", None);
    let s = m.cache_stats();
    assert_eq!((s.hits, s.misses, s.size, s.capacity), (0, 2, 0, 0));
}

#[test]
fn replace_swaps_and_bumps_version() {
    let m = Matcher::new(&library(), 100, &[]).unwrap();
    assert_eq!(m.version(), 1);
    assert_eq!(m.best("run tool", None).as_deref(), Some("run"));
    let v = m
        .replace(&[spec("only", r"tool", 1, "k")], &["run tool".into()])
        .unwrap();
    assert_eq!((v, m.version(), m.len()), (2, 2, 1));
    // The old cache cannot answer: the same query is a miss with the new answer.
    assert_eq!(m.best("run tool", None).as_deref(), Some("only"));
    let s = m.cache_stats();
    assert_eq!((s.hits, s.misses), (0, 1));
}

#[test]
fn failed_replace_keeps_old_matcher() {
    let m = Matcher::new(&library(), 100, &[]).unwrap();
    let err = m
        .replace(
            &[spec("fine", "x", 1, "k"), spec("bad", r"(?=x)", 1, "k")],
            &[],
        )
        .unwrap_err();
    assert_eq!(err.pattern_name, "bad");
    assert_eq!(m.version(), 1);
    assert_eq!(m.len(), 5);
    assert_eq!(m.best("check health", None).as_deref(), Some("health"));
}

#[test]
fn rejections_name_the_pattern() {
    let cases = [
        ("ahead", r"run(?=x)", "look-ahead"),
        ("behind", r"(?<!x)run", "look-behind"),
        ("backref", r"(a)\1", "backreferences"),
        ("named_backref", r"(?P<x>a)(?P=x)", "backreference (?P=x)"),
        ("possessive", r"a++", "possessive"),
        ("atomic", r"(?>a)", "atomic"),
        ("rust_only", r"\p{Greek}", "bad escape \\p"),
        ("syntax", r"(unclosed", "missing ), unterminated subpattern"),
        ("huge", r"\w{2000}", "size limit"),
    ];
    for (name, regex, reason) in cases {
        let err = Matcher::check(name, regex).unwrap_err();
        assert_eq!(err.pattern_name, name);
        assert!(err.reason.contains(reason), "{name}: {}", err.reason);
        assert!(err.to_string().contains(name));
        let err = Matcher::new(
            &[spec("ok", "x", 1, "k"), spec(name, regex, 1, "k")],
            0,
            &[],
        )
        .err()
        .unwrap();
        assert_eq!(err.pattern_name, name);
    }
    let err = Matcher::new(
        &[spec("dup", "a", 1, "k"), spec("dup", "b", 2, "k")],
        0,
        &[],
    )
    .err()
    .unwrap();
    assert_eq!(err.pattern_name, "dup");
    assert!(err.reason.contains("duplicate"));
}

#[test]
fn unicode_case_insensitivity() {
    let m = Matcher::new(
        &[
            spec("cafe", r"café", 5, "k"),
            spec("strasse", r"straße", 4, "k"),
            spec("kelvin", r"\bk\w+", 3, "k"),
            spec("greek", r"[α-ω]+", 2, "k"),
            spec("sigma", r"σ", 1, "k"),
        ],
        0,
        &[],
    )
    .unwrap();
    assert_eq!(m.best("CAFÉ au lait", None).as_deref(), Some("cafe"));
    assert_eq!(m.best("cafe", None), None);
    assert_eq!(m.best("STRAẞE", None).as_deref(), Some("strasse"));
    // Simple case folding, as Python `re`: ß does not fold to "ss".
    assert_eq!(m.best("STRASSE", None), None);
    assert_eq!(m.best("\u{212A}elvin", None).as_deref(), Some("kelvin"));
    assert_eq!(m.best("KELVIN", None).as_deref(), Some("kelvin"));
    assert_eq!(m.best("ΑΒΓ", None).as_deref(), Some("greek"));
    assert_eq!(m.best("plain ascii", None), None);
    assert_eq!(names(m.all("Σ", None)), ["greek", "sigma"]);
}

#[test]
fn ascii_path_honours_non_ascii_pattern_chars() {
    // The Kelvin sign and long s fold to ASCII k and s: ASCII queries must still match.
    let m = Matcher::new(
        &[
            spec("k", "\u{212A}ey", 1, "k"),
            spec("s", "\u{17F}un", 2, "k"),
        ],
        0,
        &[],
    )
    .unwrap();
    assert_eq!(m.best("a KEY", None).as_deref(), Some("k"));
    assert_eq!(m.best("the sun", None).as_deref(), Some("s"));
}

#[test]
fn case_sensitive_groups_and_residual_patterns() {
    let m = Matcher::new(
        &[
            spec("cs", r"(?-i:Exact)", 3, "k"),
            spec("wordy", r"\w+\s+now", 2, "k"),
            spec("dots", r".*end$", 1, "k"),
        ],
        0,
        &[],
    )
    .unwrap();
    assert_eq!(m.best("Exact", None).as_deref(), Some("cs"));
    assert_eq!(m.best("EXACT", None), None);
    assert_eq!(m.best("do it NOW", None).as_deref(), Some("wordy"));
    assert_eq!(names(m.all("Exact now END", None)), ["cs", "wordy", "dots"]);
}

#[test]
fn concurrent_readers_during_replace() {
    let m = Arc::new(Matcher::new(&library(), 1000, &[]).unwrap());
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    let got = m.best("check health", None);
                    assert!(matches!(got.as_deref(), Some("health") | Some("other")));
                }
            })
        })
        .collect();
    for _ in 0..5 {
        m.replace(&[spec("other", "health", 1, "k")], &[]).unwrap();
        m.replace(&library(), &[]).unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(m.version(), 11);
}

#[test]
fn residual_set_reports_every_pattern_on_non_ascii_text() {
    // `\b` makes the lazy DFA give up on non-ASCII bytes; the fallback must still be overlapping.
    let m = Matcher::new(
        &[spec("b", r"x?\b", 0, "k"), spec("w", r"\w", 0, "k")],
        0,
        &[],
    )
    .unwrap();
    assert_eq!(names(m.all("É", None)), ["b", "w"]);
    assert_eq!(names(m.all("aÉ", None)), ["b", "w"]);
}
