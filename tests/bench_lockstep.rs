//! `vlm-bench --lockstep`, the handshake scripts/bench_lockstep.py interleaves our frames with
//! the reference's by: `ready`, then one frame per stdin line with `step` after it, then the
//! usual JSON report; a closed stdin before the last frame is an error that says so.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;

fn start(iters: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_vlm-bench"))
        .args(["ask", "--model"])
        .arg(model_dir("vilt-tiny-vqa"))
        .arg("--image")
        .arg(image_path("coffee.png"))
        .args(["--question", "what is in the cup?", "--warmup", "1"])
        .args(["--iters", iters, "--lockstep"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run vlm-bench")
}

#[test]
fn one_frame_per_line_then_the_report() {
    let mut bench = start("2");
    let mut stdin = bench.stdin.take().unwrap();
    let mut stdout = BufReader::new(bench.stdout.take().unwrap());
    let mut line = String::new();
    let mut next = |line: &mut String| {
        line.clear();
        stdout.read_line(line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(next(&mut line), "ready");
    // one warm-up frame and two timed ones, each on its go-ahead
    for _ in 0..3 {
        writeln!(stdin, "go").unwrap();
        assert_eq!(next(&mut line), "step");
    }
    drop(stdin);
    let report: serde_json::Value = serde_json::from_str(&next(&mut line)).unwrap();
    assert!(bench.wait().unwrap().success());
    assert_eq!(report["iters"], 2);
    assert!(report["frame"]["median_ms"].as_f64().unwrap() > 0.0);
    // every timed frame, in order, for scripts/bench_summary.py's pairs
    let samples = report["frame"]["samples_ms"].as_array().unwrap();
    assert_eq!(samples.len(), 2);
    let min = report["frame"]["min_ms"].as_f64().unwrap();
    assert!(
        samples.iter().any(|s| s.as_f64() == Some(min)),
        "{samples:?}"
    );
}

#[test]
fn stdin_closed_early_is_an_error() {
    let mut bench = start("2");
    let mut stdin = bench.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    drop(stdin);
    let out = bench.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["ready", "step"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stdin closed before the last frame"),
        "{stderr}"
    );
}
