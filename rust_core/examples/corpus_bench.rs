//! Rust-side check and timing on the shared corpora (no Python overhead):
//! `cargo run --release --example corpus_bench -- ../shared/bench/corpus_N1000.json`
use std::time::Instant;

use tmws_core::matcher::{Compiled, PatternSpec};

fn main() {
    for path in std::env::args().skip(1) {
        let data: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let specs: Vec<PatternSpec> = data["patterns"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                PatternSpec::new(
                    &format!("p{i}"),
                    p["regex"].as_str().unwrap(),
                    p["priority"].as_i64().unwrap(),
                    "k",
                )
            })
            .collect();
        let queries: Vec<String> = data["queries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q.as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<Option<String>> = data["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_u64().map(|i| format!("p{i}")))
            .collect();
        let t = Instant::now();
        let compiled = Compiled::build(&specs, &[]).unwrap();
        println!(
            "{path}: build {:?} paths {:?}",
            t.elapsed(),
            compiled.path_info()
        );
        for pass in 0..3 {
            let t = Instant::now();
            let mut bad = 0;
            let mut times = Vec::with_capacity(queries.len());
            for (q, e) in queries.iter().zip(&expected) {
                let t1 = Instant::now();
                let got = compiled
                    .ranks(q, None, true)
                    .first()
                    .map(|&r| compiled.name(r).to_string());
                times.push(t1.elapsed().as_nanos() as u64);
                if got != *e {
                    bad += 1;
                }
            }
            times.sort();
            println!(
                "  pass {pass}: total {:?} median {} ns p99 {} ns max {} ns mismatches {bad}",
                t.elapsed(),
                times[times.len() / 2],
                times[times.len() * 99 / 100],
                times[times.len() - 1]
            );
        }
    }
}
