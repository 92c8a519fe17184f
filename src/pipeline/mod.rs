//! The library API the front ends use: resolve a checkpoint, load a task object on a device,
//! run it on images. One task object per model family:
//! - [`Detector`]: OWL-ViT / OWLv2 open-vocabulary detection.
//! - [`Classifier`]: CLIP zero-shot image classification.
//! - [`Segmenter`]: CLIPSeg text-prompted segmentation.
//! - [`VqaModel`]: ViLT visual question answering.
//! - [`BlipGenerator`] ([`Captioner`]): BLIP image captioning and generative VQA.

pub mod caption;
pub mod checkpoint;
pub mod classify;
pub mod detect;
pub mod device;
pub mod generate;
pub mod grounding;
pub mod host_memory;
pub mod segment;
mod text_cache;
pub mod tokenizer;
pub mod types;
pub mod vqa;
pub mod weights;

pub use caption::{BlipGenerator, Captioner, GeneratedText};
pub use checkpoint::Checkpoint;
pub use classify::{
    format_hypothesis, ClassificationResult, Classifier, LabelEmbeddings, LabelScore,
    DEFAULT_HYPOTHESIS_TEMPLATE,
};
pub use detect::{
    DetectInput, DetectMode, DetectParams, Detector, DetectorFamily, ImageQueryOutput,
    QueryEmbeddings, QueryKind,
};
pub use device::LoadOptions;
pub use generate::{EarlyStopping, GenerationConfig, StopReason};
pub use segment::{
    PromptEmbeddings, PromptMask, SegmentInput, SegmentParams, SegmentationLogits,
    SegmentationResult, Segmenter,
};
pub use types::{Detection, DetectionResult, Timings};
pub use vqa::{Answer, VqaModel, VqaResult};

use crate::error::{Error, Result};

/// At most this many queries or prompts in one vocabulary: beyond it, a request is more likely
/// a bug than a vocabulary, and the text pass would stall the camera stream.
pub const MAX_QUERIES: usize = 512;
/// Longest accepted query or prompt, in characters (the text towers keep only the first
/// tokens anyway; longer strings are truncated with a warning up to this bound).
pub const MAX_QUERY_CHARS: usize = 2048;

/// Checks a list of text queries or prompts: not empty, none blank, none absurdly long.
pub fn validate_texts<S: AsRef<str>>(texts: &[S], what: &str) -> Result<()> {
    if texts.is_empty() {
        return Err(Error::InvalidInput(format!("no {what}s given")));
    }
    if texts.len() > MAX_QUERIES {
        return Err(Error::InvalidInput(format!(
            "{} {what}s given, at most {MAX_QUERIES} are accepted",
            texts.len()
        )));
    }
    for (i, t) in texts.iter().enumerate() {
        let t = t.as_ref();
        if t.trim().is_empty() {
            return Err(Error::InvalidInput(format!("{what} {i} is empty")));
        }
        let chars = t.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(Error::InvalidInput(format!(
                "{what} {i} has {chars} characters, at most {MAX_QUERY_CHARS} are accepted"
            )));
        }
    }
    Ok(())
}
