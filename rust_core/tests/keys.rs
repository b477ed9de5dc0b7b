use tmws_core::keys::{cache_key, normalize_query};

#[test]
fn normalisation_folds_case_and_whitespace() {
    assert_eq!(
        normalize_query("  Recall  MEMORIES\tabout\nÄrger "),
        "recall memories about ärger"
    );
    assert_eq!(normalize_query(""), "");
    assert_eq!(normalize_query("   "), "");
}

#[test]
fn keys_are_stable_and_unambiguous() {
    let key = cache_key(&["ns", "recall memories", "balanced"]);
    assert_eq!(key.len(), 32);
    assert_eq!(key, cache_key(&["ns", "recall memories", "balanced"]));
    assert_ne!(cache_key(&["ab", "c"]), cache_key(&["a", "bc"]));
    assert_ne!(cache_key(&["a"]), cache_key(&["a", ""]));
    assert_eq!(cache_key(&["tmws"]), cache_key(&[b"tmws".as_slice()]));
    // Golden values: a change of algorithm or framing would split every shared cache.
    assert_eq!(
        cache_key::<&str>(&[]),
        "99aa06d3014798d86001c324468d497f" // XXH3-128 of nothing
    );
    assert_eq!(
        cache_key(&["tmws", "check health"]),
        "a4bdd6d291e5f7053b00c0cbae4d1f38"
    );
}
