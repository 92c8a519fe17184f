#![allow(dead_code)] // temporary: mirrors the agreed API, some fields are unread here

//! Stand-ins for the segmentation and VQA library API that is being built in
//! `src/pipeline/{segment,vqa}.rs`, with exactly the signatures agreed for it. `load` always
//! fails, so the node runs with those tasks reported as failed on /diagnostics. Delete this file
//! and import from `vlm_perception::pipeline` once the real types land.

use std::sync::Arc;

use image::{GrayImage, RgbImage};
use vlm_perception::pipeline::{LoadOptions, Timings};
use vlm_perception::vision::boxes::BBox;
use vlm_perception::{Error, Result};

fn not_built(model: &str, what: &str) -> Error {
    Error::Unsupported {
        model: model.to_string(),
        reason: format!("{what} is not built into this version of vlm_perception yet"),
    }
}

pub struct PromptEmbeddings;

pub struct Segmenter;

impl Segmenter {
    pub fn load(model: &str, _options: &LoadOptions) -> Result<Self> {
        Err(not_built(model, "segmentation (CLIPSeg)"))
    }
    pub fn name(&self) -> &str {
        ""
    }
    pub fn prompts<S: AsRef<str>>(&self, _prompts: &[S]) -> Result<Arc<PromptEmbeddings>> {
        Err(not_built("", "segmentation (CLIPSeg)"))
    }
    pub fn segment(
        &self,
        _image: &RgbImage,
        _prompts: &PromptEmbeddings,
        _params: &SegmentParams,
    ) -> Result<SegmentationResult> {
        Err(not_built("", "segmentation (CLIPSeg)"))
    }
}

pub struct SegmentParams {
    pub threshold: f32,
}

pub struct SegmentationResult {
    pub width: u32,
    pub height: u32,
    pub masks: Vec<PromptMask>,
    pub timings: Timings,
}

pub struct PromptMask {
    pub prompt_index: usize,
    pub label: String,
    pub probabilities: Vec<f32>,
    pub mask: GrayImage,
    pub area_fraction: f32,
    pub bbox: Option<BBox>,
    pub mean_score: f32,
}

pub struct VqaModel;

impl VqaModel {
    pub fn load(model: &str, _options: &LoadOptions) -> Result<Self> {
        Err(not_built(model, "visual question answering (ViLT)"))
    }
    pub fn name(&self) -> &str {
        ""
    }
    pub fn ask(&self, _image: &RgbImage, _question: &str, _top_k: usize) -> Result<VqaResult> {
        Err(not_built("", "visual question answering (ViLT)"))
    }
}

pub struct VqaResult {
    pub question: String,
    pub answers: Vec<Answer>,
    pub timings: Timings,
}

pub struct Answer {
    pub answer: String,
    pub score: f32,
}
