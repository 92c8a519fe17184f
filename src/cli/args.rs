//! Command-line flags.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

/// Open-vocabulary perception for robots: OWL-ViT / OWLv2 detection, CLIPSeg segmentation, ViLT
/// and BLIP visual question answering, CLIP zero-shot classification and BLIP captioning, on CPU
/// or NVIDIA GPUs.
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
    /// Detect objects named by text queries, or looking like query images (OWL-ViT or OWLv2,
    /// from the checkpoint).
    Detect(DetectArgs),
    /// Segment the regions described by text prompts (CLIPSeg).
    Segment(SegmentArgs),
    /// Answer a question about an image (ViLT: ranked answers; BLIP VQA: a generated answer;
    /// from the checkpoint).
    Ask(AskArgs),
    /// Classify an image among candidate labels, zero-shot (CLIP).
    Classify(ClassifyArgs),
    /// Describe an image in a sentence (BLIP captioning).
    Caption(CaptionArgs),
}

/// Text generation settings (BLIP); unset ones are transformers' `generate` defaults: greedy,
/// 20 new tokens.
#[derive(Debug, Args)]
pub struct GenerationArgs {
    /// Beam search with this many beams (1: greedy).
    #[arg(long, value_name = "N")]
    pub num_beams: Option<usize>,

    /// At most this many generated tokens.
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
}

impl GenerationArgs {
    pub fn is_set(&self) -> bool {
        self.num_beams.is_some() || self.max_new_tokens.is_some()
    }

    pub fn config(&self) -> vlm_perception::pipeline::GenerationConfig {
        let mut c = vlm_perception::pipeline::GenerationConfig::default();
        if let Some(n) = self.num_beams {
            c.num_beams = n;
        }
        c.max_new_tokens = self.max_new_tokens;
        c
    }
}

#[derive(Debug, Args)]
pub struct CaptionArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The image to describe (PNG, JPEG, WebP, GIF, BMP, TIFF).
    #[arg(long)]
    pub image: PathBuf,

    /// Text the caption continues, e.g. "a photo of" (it starts the caption printed).
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,

    #[command(flatten)]
    pub generation: GenerationArgs,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
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
#[command(group(ArgGroup::new("query_kind").required(true).args(["queries", "query_images"])))]
pub struct DetectArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The image to search (PNG, JPEG, WebP, GIF, BMP, TIFF).
    #[arg(long)]
    pub image: PathBuf,

    /// A text query, e.g. "a red block"; repeat for several. Exactly one kind of query:
    /// --query or --query-image.
    #[arg(long = "query", value_name = "TEXT")]
    pub queries: Vec<String>,

    /// Image-guided (one-shot) detection: find what looks like this image, e.g. a crop of the
    /// object (transformers' `image_guided_detection`); repeat for several, one query each,
    /// labelled by file name.
    #[arg(long = "query-image", value_name = "PATH")]
    pub query_images: Vec<PathBuf>,

    /// Text queries: keep boxes whose score is above this [default: 0.1]. Query images: zero
    /// the scores below this before they are scaled to alphas [default: 0.0] (as
    /// transformers' `post_process_image_guided_detection`).
    #[arg(long, value_name = "T")]
    pub threshold: Option<f32>,

    /// Text queries: suppress lower-scored boxes of the same query that overlap more than this
    /// IoU [default: 1.0: no NMS, as the transformers reference]. Query images: transformers'
    /// greedy NMS over all boxes [default: 0.3]. 1 or more disables NMS.
    #[arg(long, value_name = "IOU")]
    pub nms_iou: Option<f32>,

    /// OWLv2 text queries only: keep boxes whose objectness (sigmoid of the objectness logit)
    /// is above this, applied with --threshold before NMS; 0 disables it. An error with OWL-ViT
    /// checkpoints, which have no objectness head.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "F",
        conflicts_with = "query_images"
    )]
    pub min_objectness: f32,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Write the image with the detections drawn to this PNG.
    #[arg(long)]
    pub overlay: Option<PathBuf>,
}

/// A query or prompt image's label: its file name.
pub fn file_label(path: &std::path::Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("prompt_kind").required(true).multiple(true).args(["prompts", "prompt_images"])))]
pub struct SegmentArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The image to segment (PNG or JPEG).
    #[arg(long)]
    pub image: PathBuf,

    /// A text prompt, e.g. "the sponge"; repeat for several (one mask each).
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompts: Vec<String>,

    /// An example image as a prompt ("segment things like this", transformers'
    /// `conditional_pixel_values`); repeat for several, one mask each, labelled by file name.
    /// They follow the text prompts.
    #[arg(long = "prompt-image", value_name = "PATH")]
    pub prompt_images: Vec<PathBuf>,

    /// A pixel belongs to a prompt's mask when its probability is above this.
    #[arg(long, default_value_t = vlm_perception::pipeline::segment::DEFAULT_MASK_THRESHOLD)]
    pub threshold: f32,

    /// Write the raw logits (before sigmoid, at the model's input resolution) to this .npy
    /// file: little-endian float32, shape [prompts, H, W].
    #[arg(long)]
    pub logits_out: Option<PathBuf>,

    /// Write one PNG mask per prompt (original image size, 0/255) and a colour overlay
    /// (overlay.png) into this directory.
    #[arg(long)]
    pub masks_out: Option<PathBuf>,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The image the question is about (PNG or JPEG).
    #[arg(long)]
    pub image: PathBuf,

    /// The question, e.g. "is the drawer open?".
    #[arg(long, value_name = "TEXT")]
    pub question: String,

    /// How many answers to return (at most the model's answer vocabulary; ViLT only).
    #[arg(long, default_value_t = vlm_perception::pipeline::vqa::DEFAULT_TOP_K)]
    pub top_k: usize,

    /// BLIP VQA only.
    #[command(flatten)]
    pub generation: GenerationArgs,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The image to classify (PNG, JPEG, WebP, GIF, BMP, TIFF).
    #[arg(long)]
    pub image: PathBuf,

    /// A candidate label, e.g. "door open"; repeat for several (the scores are a softmax over
    /// them, so give at least two to compare).
    #[arg(long = "label", value_name = "TEXT", required = true)]
    pub labels: Vec<String>,

    /// The text each label is put in, `{}` standing for the label (`{{`, `}}`: literal braces).
    /// Pass "{}" for labels that are already sentences.
    #[arg(long, default_value = vlm_perception::pipeline::DEFAULT_HYPOTHESIS_TEMPLATE)]
    pub template: String,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}
