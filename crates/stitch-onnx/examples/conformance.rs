//! Runs the ONNX node test suite and writes `target/onnx-conformance/report.json`
//! plus a per-op summary. Usage: `conformance [NODE_DIR] [OUT_DIR]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use stitch_onnx::conformance::{case_op_type, cases, report_json, run_all};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let root = match args.get(1) {
        Some(p) => PathBuf::from(p),
        None => stitch_onnx::fetch::onnx_node_tests()?,
    };
    let out = PathBuf::from(args.get(2).map(String::as_str).unwrap_or("target/onnx-conformance"));
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let results = run_all(&root, threads, Duration::from_secs(60))?;
    std::fs::create_dir_all(&out)?;
    let report = report_json(&results);
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    // Per-op table: op_type -> [passed, failed, unsupported, crashed].
    let mut per_op: BTreeMap<String, [usize; 4]> = BTreeMap::new();
    let mut details = String::new();
    for (name, dir) in cases(&root)? {
        let op = case_op_type(&dir).unwrap_or_else(|| "?".into());
        let o = &results[&name];
        let i = ["passed", "failed", "unsupported", "crashed"]
            .iter()
            .position(|l| *l == o.label())
            .unwrap_or(1);
        per_op.entry(op).or_default()[i] += 1;
        if let stitch_onnx::conformance::Outcome::Failed(m)
        | stitch_onnx::conformance::Outcome::Unsupported(m)
        | stitch_onnx::conformance::Outcome::Crashed(m) = o
        {
            details.push_str(&format!("{name}\t{}\t{}\n", o.label(), m.replace('\n', " ")));
        }
    }
    let mut md = String::from("| ONNX op | passed | failed | unsupported | crashed |\n|---|---:|---:|---:|---:|\n");
    for (op, c) in &per_op {
        md.push_str(&format!("| {op} | {} | {} | {} | {} |\n", c[0], c[1], c[2], c[3]));
    }
    std::fs::write(out.join("per-op.md"), &md)?;
    std::fs::write(out.join("details.tsv"), details)?;
    println!(
        "passed {} failed {} unsupported {} crashed {}",
        report["passed"], report["failed"], report["unsupported"], report["crashed"]
    );
    Ok(())
}
