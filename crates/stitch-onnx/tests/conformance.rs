//! The ONNX backend node test suite (onnx 1.22.0), run in-process on the CPU.
//!
//! Fails when a case listed in `tests/expected-passes.txt` no longer passes, when
//! that list has fewer than 1100 entries, or when any case crashes (panics or
//! times out). The list may only grow: add newly passing cases to it.

use std::time::Duration;

use stitch_onnx::conformance::{run_all, Outcome};

const EXPECTED: &str = include_str!("expected-passes.txt");
const MIN_EXPECTED: usize = 1100;

#[test]
fn onnx_node_conformance() {
    let root = match stitch_onnx::fetch::onnx_node_tests() {
        Ok(r) => r,
        Err(e) if std::env::var_os("CI").is_none() && e.to_string().contains("pypi.org") => {
            eprintln!("skipping: cannot fetch the onnx wheel (no network?): {e}");
            return;
        }
        Err(e) => panic!("fetching the ONNX test data failed: {e}"),
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let results = run_all(&root, threads, Duration::from_secs(120)).expect("listing cases");
    assert!(
        results.len() >= 1700,
        "only {} cases found under {}",
        results.len(),
        root.display()
    );
    let expected: Vec<&str> = EXPECTED
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut problems = vec![];
    for name in &expected {
        match results.get(*name) {
            Some(Outcome::Passed) => {}
            Some(o) => problems.push(format!("{name} regressed: {o:?}")),
            None => problems.push(format!("{name} is listed but not in the suite")),
        }
    }
    for (name, o) in &results {
        if let Outcome::Crashed(m) = o {
            problems.push(format!("{name} crashed: {m}"));
        }
    }
    let passed = results.values().filter(|o| **o == Outcome::Passed).count();
    let unlisted: Vec<&String> = results
        .iter()
        .filter(|(n, o)| **o == Outcome::Passed && !expected.contains(&n.as_str()))
        .map(|(n, _)| n)
        .collect();
    if !unlisted.is_empty() {
        eprintln!(
            "{} passing cases are not yet in expected-passes.txt: {unlisted:?}",
            unlisted.len()
        );
    }
    eprintln!("passed {passed} of {}", results.len());
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        expected.len() >= MIN_EXPECTED,
        "the expected-pass list has {} entries; it must have at least {MIN_EXPECTED}",
        expected.len()
    );
}
