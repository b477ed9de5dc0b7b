use tmws_core::embed::{ALGORITHM, MAX_DIM, MIN_DIM};
use tmws_core::HashEmbedder;

fn embedder() -> HashEmbedder {
    HashEmbedder::new(384).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(v: &[f32]) -> f32 {
    cosine(v, v).sqrt()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn dimension_bounds() {
    assert!(HashEmbedder::new(MIN_DIM).is_ok());
    assert!(HashEmbedder::new(MAX_DIM).is_ok());
    for bad in [0, MIN_DIM - 1, MAX_DIM + 1] {
        let err = HashEmbedder::new(bad).unwrap_err();
        assert!(err.contains("8") && err.contains("16000"), "{err}");
    }
    let e = embedder();
    assert_eq!(e.dim(), 384);
    assert_eq!(e.algorithm(), ALGORITHM);
    assert_eq!(ALGORITHM, "hash-v1");
}

#[test]
fn unit_norm_and_dimension() {
    for dim in [MIN_DIM, 384, 1536, MAX_DIM] {
        let e = HashEmbedder::new(dim).unwrap();
        for text in ["a", "rotate the JWT signing keys", "x1 y2 z3 — 日本語"] {
            let v = e.embed(text);
            assert_eq!(v.len(), dim);
            assert!((norm(&v) - 1.0).abs() < 1e-5, "{dim} {text:?}");
        }
    }
}

#[test]
fn deterministic_across_entry_points() {
    let e = embedder();
    let texts = [
        "rotate the JWT signing keys",
        "",
        "postgres vacuum settings",
    ];
    let batch = e.embed_batch(&texts);
    assert_eq!(batch.len(), texts.len() * 384);
    let mut bytes = vec![0; texts.len() * 384 * 4];
    e.embed_batch_le_bytes(&texts, &mut bytes);
    let mut into = vec![1.0; 384];
    for (i, text) in texts.iter().enumerate() {
        let v = e.embed(text);
        assert_eq!(bits(&v), bits(&e.embed(text)));
        assert_eq!(bits(&v), bits(&batch[i * 384..(i + 1) * 384]));
        e.embed_into(text, &mut into);
        assert_eq!(bits(&v), bits(&into));
        let row: Vec<f32> = bytes[i * 384 * 4..(i + 1) * 384 * 4]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(bits(&v), bits(&row));
    }
    assert!(e.embed_batch::<&str>(&[]).is_empty());
}

#[test]
#[should_panic(expected = "dim")]
fn embed_into_checks_length() {
    embedder().embed_into("text", &mut [0.0; 10]);
}

#[test]
fn featureless_text_is_zero() {
    let e = embedder();
    for text in ["", "   \n\t", "!!! ... --- ?", "«»—·"] {
        assert!(e.embed(text).iter().all(|&x| x == 0.0), "{text:?}");
    }
}

#[test]
fn case_and_punctuation_insensitive() {
    let e = embedder();
    let pairs = [
        ("Rotate the JWT Signing KEYS", "rotate the jwt signing keys"),
        ("jwt-signing, keys!", "jwt signing keys"),
        ("ÉCOLE", "école"),
        // Final sigma folds to sigma, so Greek upper and lower case agree.
        ("ΟΔΟΣ", "οδος"),
    ];
    for (a, b) in pairs {
        assert_eq!(bits(&e.embed(a)), bits(&e.embed(b)), "{a:?} vs {b:?}");
    }
}

#[test]
fn unicode_words() {
    let e = embedder();
    for text in ["Straße", "日本語", "İstanbul"] {
        assert!((norm(&e.embed(text)) - 1.0).abs() < 1e-5, "{text:?}");
    }
    // 'İ' lowercases to "i" plus a combining dot, which must not split the word.
    assert_eq!(bits(&e.embed("İSTANBUL")), bits(&e.embed("İstanbul")));
    assert!(cosine(&e.embed("İstanbul"), &e.embed("istanbul")) > 0.3);
    let strasse = e.embed("Straße");
    assert!(cosine(&strasse, &e.embed("Straßenbahn")) > cosine(&strasse, &e.embed("Wetter")));
    let japanese = e.embed("日本語のテキスト");
    assert!(cosine(&japanese, &e.embed("日本語")) > cosine(&japanese, &e.embed("英語")));
}

/// Pins the output of `hash-v1`. If this fails, the algorithm changed: bump `ALGORITHM`
/// (stored embeddings are no longer comparable) and update the values.
#[test]
fn golden_values() {
    let text = "Rotate the JWT signing keys!";
    let v = HashEmbedder::new(384).unwrap().embed(text);
    assert_eq!(v.iter().filter(|&&x| x != 0.0).count(), 55);
    let pinned = [
        (1, 0.225_406_24),
        (35, -0.069_513_18),
        (51, 0.120_400_35),
        (53, -0.294_919_43),
        (63, 0.120_400_35),
        (66, -0.098_306_48),
    ];
    for (i, value) in pinned {
        assert_eq!(v[i].to_bits(), f32::to_bits(value), "component {i}");
    }
    assert_eq!(fnv_of_bits(&v), 0x0925_7949_7a24_9bbf);

    let v = HashEmbedder::new(8).unwrap().embed(text);
    let expected = [0.119_975_045, 0.402_333_68, -0.330_768_02, 0.004_743_155_6];
    assert_eq!(bits(&v[..4]), bits(&expected));
    assert_eq!(fnv_of_bits(&v), 0x6e12_e3e9_6fd3_d7d8);
}

fn fnv_of_bits(v: &[f32]) -> u64 {
    v.iter()
        .flat_map(|x| x.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// (anchor, related, unrelated): lexical overlap, including morphological variants that
/// only share character n-grams, must rank the related text first.
const TRIPLES: [(&str, &str, &str); 12] = [
    (
        "rotate the JWT signing keys",
        "JWT key rotation schedule",
        "postgres vacuum settings",
    ),
    (
        "query optimization tips",
        "how to optimize a slow query",
        "rotate the JWT signing keys",
    ),
    ("optimization", "optimize", "authentication"),
    (
        "authentication failed for user",
        "user authentication error",
        "disk space running low",
    ),
    (
        "deploying the service to kubernetes",
        "kubernetes deployment manifest",
        "writing unit tests in python",
    ),
    (
        "configure logging level",
        "logger configuration",
        "database connection pool",
    ),
    ("running tests", "run the test suite", "rotating logs"),
    (
        "indexing documents",
        "document index rebuild",
        "billing invoices",
    ),
    (
        "backup the database nightly",
        "nightly database backups",
        "backing up photos",
    ),
    (
        "migrate the schema",
        "schema migration failed",
        "migrant birds",
    ),
    (
        "rate limiting for the api",
        "api rate limiter",
        "limited edition vinyl",
    ),
    (
        "Straße gesperrt",
        "die Straße ist gesperrt",
        "das Wetter ist schön",
    ),
];

#[test]
fn related_text_ranks_above_unrelated() {
    for dim in [384, 1024] {
        let e = HashEmbedder::new(dim).unwrap();
        for (anchor, related, unrelated) in TRIPLES {
            let a = e.embed(anchor);
            let (rel, unrel) = (
                cosine(&a, &e.embed(related)),
                cosine(&a, &e.embed(unrelated)),
            );
            assert!(
                rel > unrel,
                "dim {dim}: {anchor:?}: {related:?} {rel} <= {unrelated:?} {unrel}"
            );
        }
    }
}
