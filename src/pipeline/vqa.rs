//! Visual question answering with ViLT: one joint pass over the question tokens and the image
//! patches, answers scored by sigmoid over the answer vocabulary (`id2label`), top-k.

use std::time::Instant;

use candle_core::{DType, Tensor};
use image::RgbImage;
use serde::Serialize;

use super::{
    checkpoint::Checkpoint,
    device::LoadOptions,
    tokenizer::{Padding, TextTokenizer, TokenBatch, TokenizerKind},
    types::Timings,
};
use crate::error::{Error, Result};
use crate::models::vilt::{ViltConfig, ViltForQuestionAnswering};
use crate::vision::{
    masks::sigmoid,
    preprocess::{
        ImageProcessor, PreprocessorConfig, ProcessorDefaults, Resample, ShortestEdgeRule,
        SizeSpec, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD,
    },
};

/// config.json `architectures` this task accepts.
pub const VILT_VQA_ARCHITECTURES: &[&str] = &["ViltForQuestionAnswering"];
/// Answers returned by default (transformers' VQA pipeline `top_k`).
pub const DEFAULT_TOP_K: usize = 5;
/// Longest accepted question in characters: far beyond what the text positions hold (the
/// question is truncated to them with a warning), low enough to refuse garbage.
pub const MAX_QUESTION_CHARS: usize = 65_536;
/// `ViltImageProcessor.size_divisor` default.
const VILT_SIZE_DIVISOR: usize = 32;
/// BERT's `[PAD]` id, used when the tokenizer files name no pad token.
const BERT_PAD_ID: u32 = 0;

/// `ViltImageProcessor`'s class defaults.
const VILT_PROCESSOR_DEFAULTS: ProcessorDefaults = ProcessorDefaults {
    size: SizeSpec::ShortestEdge {
        shortest_edge: 384,
        longest_edge: None,
    },
    resample: Resample::Bicubic,
    do_center_crop: false,
    crop_size: None,
    image_mean: IMAGENET_STANDARD_MEAN,
    image_std: IMAGENET_STANDARD_STD,
    shortest_edge: ShortestEdgeRule::Vilt,
};

/// One answer with its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    pub answer: String,
    /// sigmoid of the answer's logit, in [0, 1].
    pub score: f32,
}

/// The top answers to one question, by descending score.
#[derive(Debug, Clone, Serialize)]
pub struct VqaResult {
    pub question: String,
    pub answers: Vec<Answer>,
    #[serde(skip)]
    pub timings: Timings,
}

/// ViLT VQA model on one device.
pub struct VqaModel {
    name: String,
    model: ViltForQuestionAnswering,
    tokenizer: TextTokenizer,
    processor: ImageProcessor,
    labels: Vec<String>,
    patch_size: usize,
    options: LoadOptions,
}

impl VqaModel {
    /// Loads a `ViltForQuestionAnswering` checkpoint (directory or hub id).
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::from_checkpoint(&Checkpoint::resolve(model)?, options)
    }

    pub fn from_checkpoint(ckpt: &Checkpoint, options: &LoadOptions) -> Result<Self> {
        let _span = tracing::info_span!("load", model = %ckpt.name).entered();
        ckpt.expect_architecture(VILT_VQA_ARCHITECTURES)?;
        let config: ViltConfig = ckpt.config()?;
        let vb = ckpt.model_vars(options)?;
        let model = ViltForQuestionAnswering::new(vb, &config, &ckpt.name)
            .map_err(|e| ckpt.load_error(e))?;
        let tokenizer = TextTokenizer::load(
            ckpt,
            TokenizerKind::BertWordPiece,
            config.max_position_embeddings,
            config.pad_token_id.unwrap_or(BERT_PAD_ID),
        )?;
        let mut pre: PreprocessorConfig = ckpt.preprocessor_config()?;
        // ViltImageProcessor always derives the longer-edge cap from the shorter edge
        // (1333/800 of it) and defaults size_divisor to 32.
        if let Some(SizeSpec::ShortestEdge { shortest_edge, .. }) = pre.size {
            pre.size = Some(SizeSpec::ShortestEdge {
                shortest_edge,
                longest_edge: None,
            });
        }
        pre.size_divisor = pre.size_divisor.or(Some(VILT_SIZE_DIVISOR));
        let processor = ImageProcessor::from_config(pre, &VILT_PROCESSOR_DEFAULTS)?;
        super::host_memory::release_freed_memory();
        Ok(Self {
            name: ckpt.name.clone(),
            model,
            tokenizer,
            processor,
            labels: config.labels(),
            patch_size: config.patch_size,
            options: options.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &ViltForQuestionAnswering {
        &self.model
    }

    /// The answer vocabulary, by class index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Tokenizes `question` as `ViltProcessor` does (no padding, truncated to the text
    /// positions with a warning). Fails on an empty question.
    pub fn tokenize(&self, question: &str) -> Result<TokenBatch> {
        if question.trim().is_empty() {
            return Err(Error::InvalidInput("the question is empty".into()));
        }
        let chars = question.chars().count();
        if chars > MAX_QUESTION_CHARS {
            return Err(Error::InvalidInput(format!(
                "the question has {chars} characters, at most {MAX_QUESTION_CHARS} are accepted"
            )));
        }
        self.tokenizer.encode(&[question], Padding::Longest)
    }

    /// Preprocessed pixel values (1, 3, H, W) in the model's dtype. Accepts every image that
    /// transformers' processor accepts: small ones are scaled up to the shortest edge. Fails,
    /// as the processor does, when the resize rounds a side below one patch (a 1x500 strip).
    pub fn pixel_values(&self, image: &RgbImage) -> Result<Tensor> {
        let (w, h) = image.dimensions();
        let p = self.patch_size;
        let (rh, rw) = self.processor.resized_size(h as usize, w as usize);
        if rh < p || rw < p {
            return Err(Error::InvalidInput(format!(
                "image is {w}x{h} pixels: the processor resizes it to {rw}x{rh}, less than one \
                 {p}x{p} patch of `{}` (aspect ratio too extreme)",
                self.name
            )));
        }
        Ok(self
            .processor
            .preprocess(image, &self.options.device)?
            .to_dtype(self.options.dtype)?)
    }

    /// Raw logits (1, num_labels) in f32 for a tokenized question and preprocessed pixels (the
    /// single-image pixel mask is all ones).
    pub fn forward(&self, tokens: &TokenBatch, pixel_values: &Tensor) -> Result<Tensor> {
        let device = &self.options.device;
        let ids = Tensor::new(tokens.ids.clone(), device)?;
        let attention_mask = Tensor::new(tokens.attention_mask.clone(), device)?;
        let type_ids = Tensor::new(tokens.type_ids.clone(), device)?;
        Ok(self
            .model
            .forward(&ids, &attention_mask, &type_ids, pixel_values, None)?
            .logits)
    }

    /// Answers `question` about `image`: the `top_k` answers (at most the vocabulary size) by
    /// descending sigmoid score.
    pub fn ask(&self, image: &RgbImage, question: &str, top_k: usize) -> Result<VqaResult> {
        let _span = tracing::info_span!("ask", model = %self.name).entered();
        if top_k == 0 {
            return Err(Error::InvalidInput("top_k must be at least 1".into()));
        }
        let t0 = Instant::now();
        let tokens = self.tokenize(question)?;
        let pixel_values = self.pixel_values(image)?;
        let t1 = Instant::now();
        let logits = self.forward(&tokens, &pixel_values)?;
        let logits = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let t2 = Instant::now();
        let answers = top_answers(&logits, &self.labels, top_k)?;
        let t3 = Instant::now();
        Ok(VqaResult {
            question: question.to_string(),
            answers,
            timings: Timings {
                preprocess: t1 - t0,
                forward: t2 - t1,
                postprocess: t3 - t2,
            },
        })
    }
}

/// The `top_k` answers by descending logit (ties: lower class index first), scored by sigmoid
/// as transformers' VQA pipeline.
pub fn top_answers(logits: &[f32], labels: &[String], top_k: usize) -> Result<Vec<Answer>> {
    if logits.len() != labels.len() {
        return Err(Error::InvalidInput(format!(
            "{} logits for {} answer labels",
            logits.len(),
            labels.len()
        )));
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    Ok(order
        .into_iter()
        .take(top_k)
        .map(|i| Answer {
            answer: labels[i].clone(),
            score: sigmoid(logits[i]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_answers_sort_by_score_and_clamp_k() {
        let labels: Vec<String> = ["yes", "no", "2"].iter().map(|s| s.to_string()).collect();
        let a = top_answers(&[0.5, 2.0, -1.0], &labels, 10).unwrap();
        let names: Vec<&str> = a.iter().map(|x| x.answer.as_str()).collect();
        assert_eq!(names, ["no", "yes", "2"]);
        assert!((a[0].score - sigmoid(2.0)).abs() < 1e-7);
        assert_eq!(top_answers(&[0.5, 2.0, -1.0], &labels, 1).unwrap().len(), 1);
        assert!(top_answers(&[0.5], &labels, 1).is_err());
    }
}
