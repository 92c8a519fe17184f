//! Command-line flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Open-vocabulary perception for robots: OWL-ViT detection, CLIPSeg segmentation and ViLT
/// visual question answering, on CPU or NVIDIA GPUs.
#[derive(Debug, Parser)]
#[command(name = "vlm-perception", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log more (repeat for debug output); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Detect objects named by text queries (OWL-ViT).
    Detect(DetectArgs),
}

/// Where and how a model runs.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Checkpoint: a local directory in Hugging Face hub layout, or a hub id such as
    /// `google/owlvit-base-patch32` (optionally `id@revision`), resolved through the HF cache.
    #[arg(long)]
    pub model: String,

    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,

    /// Weights precision: `f32`, `f16` or `bf16`.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

#[derive(Debug, Args)]
pub struct DetectArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The image to search (PNG or JPEG).
    #[arg(long)]
    pub image: PathBuf,

    /// A text query, e.g. "a red block"; repeat for several.
    #[arg(long = "query", required = true)]
    pub queries: Vec<String>,

    /// Keep boxes whose score is above this.
    #[arg(long, default_value_t = vlm_perception::pipeline::detect::DEFAULT_THRESHOLD)]
    pub threshold: f32,

    /// Suppress lower-scored boxes of the same query that overlap more than this IoU;
    /// 1 or more disables NMS (the transformers reference applies none).
    #[arg(long, default_value_t = 1.0)]
    pub nms_iou: f32,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Write the image with the detections drawn to this PNG.
    #[arg(long)]
    pub overlay: Option<PathBuf>,
}
