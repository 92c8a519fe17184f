//! `vlm-bench`: times the library, the Rust half of the side-by-side benchmark
//! (scripts/bench.sh runs scripts/bench_reference.py on the same inputs in the same run).
//! Each subcommand prints one JSON object: per-stage medians and p95 in milliseconds (and each
//! timed sample, in order), the thread count and the peak resident set size.
//!
//! - `detect`: OWL-ViT / OWLv2, query embeddings once (as the node), then frames, each also
//!   through ByteTrack as the node's stream does (`track`: its share of the frame);
//! - `segment`: CLIPSeg, prompt embeddings once, then frames (one image pass, prompts batched);
//! - `ask`: ViLT VQA, one question per frame;
//! - `classify`: CLIP zero-shot classification, label embeddings once (as the node), then frames;
//! - `generate`: BLIP captioning or VQA, exactly `--max-new-tokens` tokens a frame, with the
//!   vision tower timed apart (what one image costs) and the cost per generated token;
//! - `track`: ByteTrack alone, replaying a detection sequence of the tracking fixtures (what a
//!   frame of tracking costs next to a frame of inference);
//! - `gemm`: one large f32 matmul, the machine's compute floor for the rest;
//! - `mac-rates`: one core's multiply-accumulate rate per AVX-512 instruction (f32 FMA, bf16
//!   dot product, f16 FMA): what a reduced-precision path could gain here.

mod mac_rates;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand};
use vlm_perception::pipeline::{
    host_memory, BlipGenerator, Classifier, DetectInput, DetectMode, DetectParams, Detector,
    GenerationConfig, LoadOptions, SegmentParams, Segmenter, Timings, VqaModel,
    DEFAULT_HYPOTHESIS_TEMPLATE,
};
use vlm_perception::tracking::{ByteTrackConfig, LabelledBox, LabelledTracker};
use vlm_perception::vision::image_io;

#[derive(Debug, Parser)]
#[command(name = "vlm-bench", about = "Times vlm_perception on one image")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// OWL-ViT / OWLv2 detection: query encoding once, then `--iters` frames.
    Detect {
        #[command(flatten)]
        run: RunArgs,
        /// Text queries.
        #[arg(long = "query", required = true)]
        queries: Vec<String>,
        /// Images per frame, as one batch through the vision tower (`Detector::detect_batch`,
        /// the node's several cameras); `frame` is then the whole batch's time.
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
    /// CLIPSeg segmentation: prompt encoding once, then `--iters` frames.
    Segment {
        #[command(flatten)]
        run: RunArgs,
        /// Text prompts.
        #[arg(long = "prompt", required = true)]
        prompts: Vec<String>,
    },
    /// ViLT visual question answering: `--iters` frames with one question.
    Ask {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        question: String,
    },
    /// CLIP zero-shot classification: label encoding once, then `--iters` frames.
    Classify {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long = "label", required = true)]
        labels: Vec<String>,
        #[arg(long, default_value = DEFAULT_HYPOTHESIS_TEMPLATE)]
        template: String,
    },
    /// BLIP captioning (or, with `--question`, VQA): `--iters` frames of exactly
    /// `--max-new-tokens` generated tokens.
    Generate {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long)]
        question: Option<String>,
        #[arg(long, default_value_t = 1)]
        num_beams: usize,
        #[arg(long, default_value_t = 20)]
        max_new_tokens: usize,
    },
    /// ByteTrack (one tracker per label, default parameters) on a detection sequence of
    /// tests/fixtures/reference/tracking (`frames[].detections[]`: xyxy, score, label), replayed
    /// `--rounds` times with a fresh tracker: the time of one frame's update.
    Track {
        #[arg(long)]
        sequence: PathBuf,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// One matmul (m, k) x (k, n) on the CPU: the machine's GEMM rate in GFLOP/s. `--dtype
    /// f32`: candle's f32 matmul; `--dtype bf16`: our bf16 kernel (bf16 weights packed once,
    /// the f32 input rounded to bf16 in every run, f32 accumulation; AVX512-BF16, or its
    /// AVX2 + FMA emulation where the CPU lacks it).
    Gemm {
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long, default_value_t = 2048)]
        m: usize,
        #[arg(long, default_value_t = 2048)]
        k: usize,
        #[arg(long, default_value_t = 2048)]
        n: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
    /// One core's multiply-accumulate rate for f32 FMA, bf16 dot products (AVX512-BF16) and
    /// f16 FMA (AVX512-FP16), where the CPU has them: best of `--rounds`.
    MacRates {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

/// What every model benchmark takes.
#[derive(Debug, Args)]
struct RunArgs {
    /// Checkpoint directory or hub id.
    #[arg(long)]
    model: String,
    /// Image to run on.
    #[arg(long)]
    image: PathBuf,
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
    /// Run each frame (warm-up ones too) when a line arrives on stdin, and print `step` on
    /// stdout after it (`ready` before the first): scripts/bench_lockstep.py interleaves this
    /// process's frames with the reference's, so that both sides meet the same machine.
    #[arg(long)]
    lockstep: bool,
    /// With `--dtype bf16` on a CPU without AVX512-BF16 (which the pipeline refuses): run the
    /// bf16 weights on the kernel's AVX2 + FMA emulation instead - the same numbers and the
    /// same memory, not the speed of the instructions (the JSON's `bf16_kernel` says which).
    #[arg(long)]
    bf16_emulation: bool,
}

/// The load options of `run`: as the CLI parses them, but for `--bf16-emulation`.
fn load_options(run: &RunArgs) -> Result<LoadOptions> {
    use vlm_perception::models::{kernels::bf16_gemm, KernelPath};
    let cpu_bf16 = run.device.trim() == "cpu" && matches!(run.dtype.trim(), "bf16" | "bfloat16");
    if cpu_bf16 && run.bf16_emulation && !bf16_gemm::supported() {
        anyhow::ensure!(bf16_gemm::emulated(), "--bf16-emulation needs AVX2 and FMA");
        return Ok(LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            kernels: KernelPath::NativeBf16,
        });
    }
    Ok(LoadOptions::parse(&run.device, &run.dtype)?)
}

/// Which kernel the bf16 weights of `options` run on, if any.
fn bf16_kernel(options: &LoadOptions) -> Option<&'static str> {
    use vlm_perception::models::kernels::bf16_gemm;
    options.cpu_bf16_weights().then(|| {
        if bf16_gemm::supported() {
            "avx512_bf16"
        } else {
            "AVX2 + FMA emulation"
        }
    })
}

/// The `--lockstep` handshake: `ready` once, then one stdin line per frame, `step` after it.
struct Lockstep {
    on: bool,
}

impl Lockstep {
    fn new(on: bool) -> Self {
        if on {
            println!("{LOCKSTEP_READY}");
        }
        Self { on }
    }

    /// Waits for the go-ahead of the next frame.
    fn wait(&self) -> Result<()> {
        if self.on {
            let mut line = String::new();
            let n = std::io::stdin().read_line(&mut line)?;
            anyhow::ensure!(n > 0, "--lockstep: stdin closed before the last frame");
        }
        Ok(())
    }

    /// Reports a frame done.
    fn done(&self) {
        if self.on {
            println!("{LOCKSTEP_STEP}");
        }
    }
}

/// The `--lockstep` lines (scripts/bench_lockstep.py reads them; `println!` flushes lines).
const LOCKSTEP_READY: &str = "ready";
const LOCKSTEP_STEP: &str = "step";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Median, p95 and minimum of `samples` (ms), and the samples themselves in the order they
/// were taken: in a lockstep run, sample i met the machine together with the reference's
/// iteration i (scripts/bench_summary.py pairs them).
fn stats(samples: Vec<f64>) -> serde_json::Value {
    let mut v = samples.clone();
    v.sort_by(f64::total_cmp);
    serde_json::json!({
        "median_ms": percentile(&v, 0.5),
        "p95_ms": percentile(&v, 0.95),
        "min_ms": v[0],
        "samples_ms": samples,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Peak resident set size of this process so far (`VmHWM`), in MiB; `None` off Linux.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The CPU threads candle's kernels use (`RAYON_NUM_THREADS`, else every core).
fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Runs `frame` `warmup + iters` times; the timed runs' wall times and stage timings.
fn time_frames(
    run: &RunArgs,
    mut frame: impl FnMut() -> Result<Timings>,
) -> Result<(Vec<f64>, Vec<Timings>)> {
    anyhow::ensure!(run.iters > 0, "--iters must be positive");
    let (mut totals, mut stages) = (Vec::new(), Vec::new());
    let lockstep = Lockstep::new(run.lockstep);
    for i in 0..run.warmup + run.iters {
        lockstep.wait()?;
        let t = Instant::now();
        let timings = frame()?;
        if i >= run.warmup {
            totals.push(ms(t.elapsed()));
            stages.push(timings);
        }
        lockstep.done();
    }
    Ok((totals, stages))
}

/// Times `encode` (a text tower) `warmup + iters` times.
fn time_encode(run: &RunArgs, mut encode: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for i in 0..run.warmup + run.iters {
        let t = Instant::now();
        encode()?;
        if i >= run.warmup {
            times.push(ms(t.elapsed()));
        }
    }
    Ok(times)
}

/// The JSON common to the model benchmarks; `extra` is merged in.
fn report(
    run: &RunArgs,
    task: &str,
    load_ms: f64,
    totals: Vec<f64>,
    stages: &[Timings],
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut out = serde_json::json!({
        "impl": "vlm_perception (candle)",
        "task": task,
        "model": run.model,
        "device": run.device,
        "dtype": run.dtype,
        "threads": threads(),
        "image": run.image,
        "iters": run.iters,
        "load_ms": load_ms,
        "preprocess": stats(stages.iter().map(|t| ms(t.preprocess)).collect()),
        "forward": stats(stages.iter().map(|t| ms(t.forward)).collect()),
        "postprocess": stats(stages.iter().map(|t| ms(t.postprocess)).collect()),
        "frame": stats(totals),
        "peak_rss_mib": peak_rss_mib(),
        "bf16_kernel": load_options(run).ok().as_ref().and_then(bf16_kernel),
    });
    if let (Some(out), serde_json::Value::Object(extra)) = (out.as_object_mut(), extra) {
        out.extend(extra);
    }
    out
}

/// Forces a device tensor to the host: the GPU backends run asynchronously.
fn sync(t: &Tensor) -> Result<()> {
    t.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(())
}

fn detect(run: &RunArgs, queries: &[String], batch: usize) -> Result<serde_json::Value> {
    anyhow::ensure!(batch > 0, "--batch must be positive");
    let options = load_options(run)?;
    let image = image_io::load_rgb(&run.image)?;
    let t = Instant::now();
    let detector =
        Detector::load(&run.model, &options).with_context(|| format!("loading `{}`", run.model))?;
    let load_ms = ms(t.elapsed());
    let encode = time_encode(run, || sync(&detector.encode_queries(queries)?.embeds))?;
    let embeds = detector.encode_queries(queries)?;
    let params = DetectParams::default();
    let mut detections = 0;
    // As the node's stream: every frame's detections through ByteTrack (one tracker per label),
    // with thresholds at the detection threshold so that every detection is tracked (the
    // random-weight checkpoints score below ByteTrack's defaults): the worst case.
    let threshold = f64::from(params.threshold);
    let mut tracker = LabelledTracker::new(ByteTrackConfig {
        track_high_thresh: threshold,
        new_track_thresh: threshold,
        track_low_thresh: threshold / 2.0,
        ..ByteTrackConfig::default()
    })?;
    let (mut track_ms, mut tracked) = (Vec::new(), 0);
    let inputs = vec![
        DetectInput {
            image: &image,
            queries: &embeds,
            params: &params,
            mode: DetectMode::Text {
                min_objectness: 0.0
            },
        };
        batch
    ];
    let (totals, stages) = time_frames(run, || {
        let mut results = detector.detect_batch(&inputs)?;
        let result = results.pop().context("no result")?;
        detections = result.detections.len();
        let boxes: Vec<LabelledBox<'_>> = result.detections.iter().map(Into::into).collect();
        let t = Instant::now();
        tracked = tracker.update(&boxes).iter().flatten().count();
        track_ms.push(ms(t.elapsed()));
        Ok(result.timings)
    })?;
    let track_ms = track_ms.split_off(track_ms.len() - totals.len());
    Ok(report(
        run,
        "detect",
        load_ms,
        totals,
        &stages,
        serde_json::json!({
            "queries": queries.len(),
            "batch": batch,
            "encode_queries": stats(encode),
            "detections": detections,
            "tracked": tracked,
            "track": stats(track_ms),
        }),
    ))
}

fn segment(run: &RunArgs, prompts: &[String]) -> Result<serde_json::Value> {
    let options = load_options(run)?;
    let image = image_io::load_rgb(&run.image)?;
    let t = Instant::now();
    let segmenter = Segmenter::load(&run.model, &options)
        .with_context(|| format!("loading `{}`", run.model))?;
    let load_ms = ms(t.elapsed());
    let encode = time_encode(run, || sync(&segmenter.encode_prompts(prompts)?.embeds))?;
    let embeds = segmenter.encode_prompts(prompts)?;
    let params = SegmentParams::default();
    let (totals, stages) = time_frames(run, || {
        Ok(segmenter.segment(&image, &embeds, &params)?.timings)
    })?;
    Ok(report(
        run,
        "segment",
        load_ms,
        totals,
        &stages,
        serde_json::json!({"prompts": prompts.len(), "encode_prompts": stats(encode)}),
    ))
}

fn ask(run: &RunArgs, question: &str) -> Result<serde_json::Value> {
    let options = load_options(run)?;
    let image = image_io::load_rgb(&run.image)?;
    let t = Instant::now();
    let model =
        VqaModel::load(&run.model, &options).with_context(|| format!("loading `{}`", run.model))?;
    let load_ms = ms(t.elapsed());
    let tokens = model.tokenize(question)?.ids.first().map_or(0, Vec::len);
    let mut answer = String::new();
    let (totals, stages) = time_frames(run, || {
        let result = model.ask(&image, question, 1)?;
        answer = result
            .answers
            .first()
            .map(|a| a.answer.clone())
            .unwrap_or_default();
        Ok(result.timings)
    })?;
    Ok(report(
        run,
        "ask",
        load_ms,
        totals,
        &stages,
        serde_json::json!({"question_tokens": tokens, "answer": answer}),
    ))
}

fn classify(run: &RunArgs, labels: &[String], template: &str) -> Result<serde_json::Value> {
    let options = load_options(run)?;
    let image = image_io::load_rgb(&run.image)?;
    let t = Instant::now();
    let classifier = Classifier::load(&run.model, &options)
        .with_context(|| format!("loading `{}`", run.model))?;
    let load_ms = ms(t.elapsed());
    let encode = time_encode(run, || {
        sync(&classifier.encode_labels(labels, template)?.embeds)
    })?;
    let embeds = classifier.encode_labels(labels, template)?;
    let mut top = String::new();
    let (totals, stages) = time_frames(run, || {
        let result = classifier.classify(&image, &embeds)?;
        top = result.top().map(|l| l.label.clone()).unwrap_or_default();
        Ok(result.timings)
    })?;
    Ok(report(
        run,
        "classify",
        load_ms,
        totals,
        &stages,
        serde_json::json!({"labels": labels.len(), "encode_labels": stats(encode), "top": top}),
    ))
}

fn generate_text(
    run: &RunArgs,
    prompt: Option<&str>,
    question: Option<&str>,
    num_beams: usize,
    max_new_tokens: usize,
) -> Result<serde_json::Value> {
    let options = load_options(run)?;
    let image = image_io::load_rgb(&run.image)?;
    let t = Instant::now();
    let model = BlipGenerator::load(&run.model, &options)
        .with_context(|| format!("loading `{}`", run.model))?;
    let load_ms = ms(t.elapsed());
    // exactly max_new_tokens a frame, as the reference is asked (random weights stop anywhere)
    let config = GenerationConfig {
        num_beams,
        max_new_tokens: Some(max_new_tokens),
        min_new_tokens: Some(max_new_tokens),
        ..GenerationConfig::default()
    };
    let (prompt_ids, question_ids) = match question {
        Some(q) => (vec![model.bos_token_id()], Some(model.question_ids(q)?)),
        None => (model.prompt_ids(prompt)?, None),
    };
    let (mut vision, mut sequence) = (Vec::new(), Vec::new());
    let (totals, stages) = time_frames(run, || {
        let t0 = Instant::now();
        let pixels = model.pixel_values(&image)?;
        let t1 = Instant::now();
        sync(&model.image_embeds(&pixels)?)?;
        vision.push(ms(t1.elapsed()));
        let t2 = Instant::now();
        let out =
            model.generate_from_pixels(&pixels, &prompt_ids, question_ids.as_deref(), &config)?;
        let t3 = Instant::now();
        sequence = out.sequence;
        Ok(Timings {
            preprocess: t1 - t0,
            forward: t3 - t2,
            postprocess: Duration::ZERO,
        })
    })?;
    let vision = vision.split_off(vision.len() - totals.len());
    let per_token = stages
        .iter()
        .zip(&vision)
        .map(|(s, v)| (ms(s.forward) - v) / max_new_tokens as f64)
        .collect();
    // frame = preprocess + generate, as the reference's (the vision-only pass is not in it)
    let frames = stages
        .iter()
        .map(|s| ms(s.preprocess + s.forward))
        .collect();
    Ok(report(
        run,
        "generate",
        load_ms,
        frames,
        &stages,
        serde_json::json!({
            "text": question.or(prompt),
            "num_beams": num_beams,
            "new_tokens": max_new_tokens,
            "sequence": sequence,
            "vision": stats(vision),
            "per_token": stats(per_token),
        }),
    ))
}

#[derive(serde::Deserialize)]
struct TrackSequence {
    frames: Vec<TrackFrame>,
}

#[derive(serde::Deserialize)]
struct TrackFrame {
    detections: Vec<TrackInput>,
}

#[derive(serde::Deserialize)]
struct TrackInput {
    xyxy: [f32; 4],
    score: f32,
    label: String,
}

fn track(sequence: &std::path::Path, rounds: usize) -> Result<serde_json::Value> {
    anyhow::ensure!(rounds > 0, "--rounds must be positive");
    let text = std::fs::read_to_string(sequence)
        .with_context(|| format!("reading `{}`", sequence.display()))?;
    let seq: TrackSequence = serde_json::from_str(&text)
        .with_context(|| format!("`{}` is not a tracking sequence", sequence.display()))?;
    let frames: Vec<Vec<LabelledBox<'_>>> = seq
        .frames
        .iter()
        .map(|f| {
            f.detections
                .iter()
                .map(|d| LabelledBox {
                    label: &d.label,
                    xyxy: d.xyxy,
                    score: d.score,
                })
                .collect()
        })
        .collect();
    let (mut times, mut tracked) = (Vec::new(), 0usize);
    for _ in 0..rounds {
        let mut tracker = LabelledTracker::new(ByteTrackConfig::default())?;
        for boxes in &frames {
            let t = Instant::now();
            let out = tracker.update(boxes);
            times.push(ms(t.elapsed()));
            tracked += out.iter().flatten().count();
        }
    }
    let boxes: usize = frames.iter().map(Vec::len).sum();
    Ok(serde_json::json!({
        "impl": "vlm_perception (ByteTrack)",
        "task": "track",
        "sequence": sequence,
        "frames": frames.len(),
        "rounds": rounds,
        "boxes_per_frame": boxes as f64 / frames.len().max(1) as f64,
        "tracked_per_frame": tracked as f64 / times.len().max(1) as f64,
        "update": stats(times),
    }))
}

fn gemm(
    dtype: &str,
    m: usize,
    k: usize,
    n: usize,
    warmup: usize,
    iters: usize,
) -> Result<serde_json::Value> {
    use vlm_perception::models::kernels::bf16_gemm;
    anyhow::ensure!(iters > 0, "--iters must be positive");
    let bf16 = match dtype {
        "f32" => false,
        "bf16" => {
            anyhow::ensure!(
                bf16_gemm::supported() || bf16_gemm::emulated(),
                "--dtype bf16 needs AVX512-BF16 (`avx512_bf16`) or AVX2 + FMA"
            );
            true
        }
        other => anyhow::bail!("gemm --dtype: f32 or bf16, not `{other}`"),
    };
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1f32, (m, k), &dev)?;
    let b = Tensor::randn(0f32, 1f32, (k, n), &dev)?;
    let packed = if bf16 {
        let w = b.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        Some(bf16_gemm::PackedBf16::from_transposed(&w, n, k))
    } else {
        None
    };
    let a_values = a.flatten_all()?.to_vec1::<f32>()?;
    let bias = vec![0f32; n];
    let mut times = Vec::new();
    for i in 0..warmup + iters {
        let t = Instant::now();
        match &packed {
            Some(p) => {
                // as a layer runs it: onto a bias, into an output that is not prefilled
                let mut c = Vec::with_capacity(m * n);
                let out = &mut c.spare_capacity_mut()[..m * n];
                let a = bf16_gemm::Input::F32(&a_values);
                bf16_gemm::linear(out, a, m, p, &bias, None, true);
                drop(c);
            }
            None => drop(a.matmul(&b)?),
        }
        let elapsed = ms(t.elapsed());
        if i >= warmup {
            times.push(elapsed);
        }
    }
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let flop = 2.0 * (m * k * n) as f64;
    Ok(serde_json::json!({
        "impl": match (bf16, bf16_gemm::supported()) {
            (false, _) => "vlm_perception (candle)",
            (true, true) => "vlm_perception (bf16_gemm, avx512_bf16)",
            (true, false) => "vlm_perception (bf16_gemm, AVX2 + FMA emulation)",
        },
        "task": "gemm",
        "dtype": dtype,
        "shape": [m, k, n],
        "threads": threads(),
        "time": stats(times),
        "gflops_median": flop / percentile(&sorted, 0.5) / 1e6,
        "gflops_best": flop / best / 1e6,
    }))
}

fn main() -> Result<()> {
    // as the node and the CLI run
    host_memory::keep_freed_memory();
    let out = match Cli::parse().command {
        Command::Detect {
            run,
            queries,
            batch,
        } => detect(&run, &queries, batch)?,
        Command::Segment { run, prompts } => segment(&run, &prompts)?,
        Command::Ask { run, question } => ask(&run, &question)?,
        Command::Generate {
            run,
            prompt,
            question,
            num_beams,
            max_new_tokens,
        } => generate_text(
            &run,
            prompt.as_deref(),
            question.as_deref(),
            num_beams,
            max_new_tokens,
        )?,
        Command::Classify {
            run,
            labels,
            template,
        } => classify(&run, &labels, &template)?,
        Command::Gemm {
            dtype,
            m,
            k,
            n,
            warmup,
            iters,
        } => gemm(&dtype, m, k, n, warmup, iters)?,
        Command::MacRates { rounds } => mac_rates::mac_rates(rounds)?,
        Command::Track { sequence, rounds } => track(&sequence, rounds)?,
    };
    println!("{out}");
    Ok(())
}
