//! Runs every `oma-bench` scenario once at a tiny size, so the benchmarks
//! cannot rot. Speed is never asserted here (see BENCHMARKS.md for numbers).

use std::process::Command;

#[test]
fn every_bench_scenario_runs_at_a_tiny_size() {
    let output = Command::new(env!("CARGO_BIN_EXE_oma-bench"))
        .args(["--smoke", "--runtimes", "5"])
        .output()
        .expect("run oma-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "oma-bench --smoke failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!("{stdout}");
    for section in ["footprint", "latency", "throughput", "replay", "scale"] {
        assert!(
            stdout.contains(&format!("**{section}**")),
            "no {section} rows in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("ERROR"), "{stdout}");
}
