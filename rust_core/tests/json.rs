use tmws_core::json::first_too_deep;

fn nested(levels: usize) -> String {
    format!(
        "{{\"m\":{}1{}}}",
        "[".repeat(levels - 1),
        "]".repeat(levels - 1)
    )
}

#[test]
fn flat_and_shallow_texts_pass() {
    assert_eq!(first_too_deep(b"", 0), None);
    assert_eq!(first_too_deep(b"42", 0), None);
    assert_eq!(first_too_deep(br#"{"query": "check health"}"#, 1), None);
    assert_eq!(first_too_deep(nested(32).as_bytes(), 32), None);
}

#[test]
fn the_first_bracket_beyond_the_limit_is_named() {
    let text = nested(33);
    // `{"m":` then 32 `[`: the last one opens level 33.
    assert_eq!(first_too_deep(text.as_bytes(), 32), Some(5 + 31));
    assert_eq!(first_too_deep(br#"{"a": {}}"#, 1), Some(6));
    assert_eq!(first_too_deep(b"[[]]", 0), Some(0));
}

#[test]
fn brackets_inside_strings_do_not_count() {
    let text = br#"{"content": "[[[[{{{{ \"[[[[\" \\[[[["}"#;
    assert_eq!(first_too_deep(text, 1), None);
    // An escaped backslash ends the escape: the quote after it closes the string.
    assert_eq!(first_too_deep(br#"["\\", [[]]]"#, 2), Some(8));
}

#[test]
fn unbalanced_and_unterminated_text_is_scanned_safely() {
    assert_eq!(first_too_deep(b"]]]]}}}}[", 0), Some(8));
    assert_eq!(first_too_deep(br#"{"open": "[[[[[["#, 1), None);
    assert_eq!(first_too_deep(br#"["\"#, 0), Some(0));
    assert_eq!(first_too_deep(b"[\"\\", 5), None);
}
