//! Baseline: the corpora through ONE plain `regex::bytes::RegexSet` (ASCII, captures made
//! non-capturing, size_limit 1 GiB, dfa_size_limit 256 MiB), warmed on half the queries and
//! timed on the other half. This is why the matcher is built on regex-automata with a literal
//! prefilter instead (see `src/prefilter.rs`).
//!
//!     cargo run --release --example regexset_baseline -- 1000
//!
//! The corpora live in ../shared/bench (CORPUS_DIR overrides).
use std::time::Instant;
fn main() {
    let n = std::env::args().nth(1).unwrap();
    let dir = std::env::var("CORPUS_DIR").unwrap_or_else(|_| "../shared/bench".into());
    let text = std::fs::read_to_string(format!("{dir}/corpus_N{n}.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let pats: Vec<(String, i64)> = v["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["regex"]
                    .as_str()
                    .unwrap()
                    .replace("(", "(?:")
                    .replace("(?:?", "(?"),
                p["priority"].as_i64().unwrap(),
            )
        })
        .collect();
    let queries: Vec<String> = v["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q.as_str().unwrap().to_lowercase())
        .collect();
    let expected: Vec<i64> = v["expected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_i64().unwrap_or(-1))
        .collect();
    let t = Instant::now();
    let set = regex::bytes::RegexSetBuilder::new(pats.iter().map(|p| format!("(?-u){}", p.0)))
        .case_insensitive(true)
        .unicode(false)
        .size_limit(1 << 30)
        .dfa_size_limit(256 << 20)
        .build()
        .unwrap();
    println!("build {:?}", t.elapsed());
    let mut order: Vec<usize> = (0..pats.len()).collect();
    order.sort_by_key(|&i| (-pats[i].1, i));
    let mut rank = vec![0; pats.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    let best = |q: &str| -> i64 {
        set.matches(q.as_bytes())
            .iter()
            .min_by_key(|&i| rank[i])
            .map(|i| i as i64)
            .unwrap_or(-1)
    };
    for pass in 0..3 {
        let half = queries.len() / 2;
        let t = Instant::now();
        let mut ok = 0;
        for (i, q) in queries[..half].iter().enumerate() {
            if best(q) == expected[i] {
                ok += 1;
            }
        }
        let e = t.elapsed();
        println!(
            "pass {pass} first half: {:.2} us/query ok {ok}/{half}",
            e.as_secs_f64() * 1e6 / half as f64
        );
    }
    let t = Instant::now();
    let half = queries.len() / 2;
    let mut times = vec![];
    for (i, q) in queries[half..].iter().enumerate() {
        let t1 = Instant::now();
        let b = best(q);
        times.push(t1.elapsed().as_secs_f64() * 1e6);
        assert_eq!(b, expected[half + i]);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "unseen half: mean {:.2} us median {:.2} p99 {:.2}",
        t.elapsed().as_secs_f64() * 1e6 / half as f64,
        times[times.len() / 2],
        times[times.len() * 99 / 100]
    );
}
