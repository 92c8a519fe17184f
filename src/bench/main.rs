//! `vlm-bench`: times the library on one image, the Rust half of the side-by-side benchmark
//! (scripts/bench.sh runs scripts/bench_reference.py on the same inputs in the same run).
//! Prints one JSON object: per-stage medians and p95 in milliseconds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use vlm_perception::pipeline::{DetectParams, Detector, LoadOptions, Timings};
use vlm_perception::vision::image_io;

/// Times OWL-ViT detection: query encoding once, then `--iters` frames.
#[derive(Debug, Parser)]
#[command(name = "vlm-bench")]
struct Args {
    /// Checkpoint directory or hub id.
    #[arg(long)]
    model: String,
    /// Image to run on.
    #[arg(long)]
    image: PathBuf,
    /// Text queries.
    #[arg(long = "query", required = true)]
    queries: Vec<String>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `f32`, `f16` or `bf16`.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Untimed runs first (kernel JIT, caches).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 20)]
    iters: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn stats(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    serde_json::json!({"median_ms": percentile(&v, 0.5), "p95_ms": percentile(&v, 0.95), "min_ms": v[0]})
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.iters > 0, "--iters must be positive");
    let options = LoadOptions::parse(&args.device, &args.dtype)?;
    let image = image_io::load_rgb(&args.image)?;
    let t = Instant::now();
    let detector = Detector::load(&args.model, &options)
        .with_context(|| format!("loading `{}`", args.model))?;
    let load_ms = ms(t.elapsed());

    let params = DetectParams::default();
    let mut encode = Vec::new();
    for i in 0..args.warmup + args.iters {
        let t = Instant::now();
        let q = detector.encode_queries(&args.queries)?;
        // Synchronize: the embeddings are used on the host side of the first detect anyway.
        q.embeds
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        if i >= args.warmup {
            encode.push(ms(t.elapsed()));
        }
    }
    let queries = detector.encode_queries(&args.queries)?;
    let mut frames: Vec<Timings> = Vec::new();
    let mut totals = Vec::new();
    let mut detections = 0;
    for i in 0..args.warmup + args.iters {
        let t = Instant::now();
        let result = detector.detect(&image, &queries, &params)?;
        if i >= args.warmup {
            totals.push(ms(t.elapsed()));
            frames.push(result.timings);
            detections = result.detections.len();
        }
    }
    let out = serde_json::json!({
        "impl": "vlm_perception (candle)",
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "image": args.image,
        "queries": args.queries.len(),
        "iters": args.iters,
        "load_ms": load_ms,
        "encode_queries": stats(encode),
        "preprocess": stats(frames.iter().map(|t| ms(t.preprocess)).collect()),
        "forward": stats(frames.iter().map(|t| ms(t.forward)).collect()),
        "postprocess": stats(frames.iter().map(|t| ms(t.postprocess)).collect()),
        "frame": stats(totals),
        "detections": detections,
    });
    println!("{out}");
    Ok(())
}
