//! Image captioning and generative VQA with BLIP, as transformers'
//! `BlipForConditionalGeneration.generate` / `BlipForQuestionAnswering.generate` (v5.17.0
//! `models/blip/modeling_blip.py`) with the `BlipProcessor`'s preprocessing:
//! - the image is resized to the processor's size (384 x 384 BICUBIC on the hub checkpoints),
//!   rescaled and normalised with the OpenAI CLIP mean/std, and encoded once;
//! - captioning: the prompt is tokenized with `[CLS] ... [SEP]`, then `[CLS]` becomes `[DEC]`
//!   (the text config's `bos_token_id`) and the trailing `[SEP]` is dropped; no prompt is
//!   `[DEC]` alone; the decoder attends to the image;
//! - VQA: the question (`[CLS] ... [SEP]`) is encoded against the image, and the decoder,
//!   starting from `[DEC]`, attends to the question's states;
//! - generation stops on `[SEP]` (`sep_token_id`), greedy or beam search
//!   ([`super::generate`]), with a key/value cache; the vision pass runs once per image and
//!   the cross-attention keys once for all beams.
//!
//! The text is `decode(sequence, skip_special_tokens=True)`, prompt included (as the model
//! cards print it).

use std::time::Instant;

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::Serialize;

use super::{
    checkpoint::Checkpoint,
    device::LoadOptions,
    generate::{generate, Generated, GenerationConfig, StepDecoder, StopReason},
    tokenizer::{Padding, TextTokenizer, TokenizerKind},
    types::Timings,
};
use crate::error::{Error, Result};
use crate::models::blip::{
    text::{select_rows, BlipTextLMHeadModel, KeyValues},
    BlipConfig, BlipModel, BlipTask, CAPTION_ARCHITECTURES, VQA_ARCHITECTURES,
};
use crate::vision::preprocess::{
    ImageProcessor, PreprocessorConfig, ProcessorDefaults, Resample, ResizeMode, ShortestEdgeRule,
    SizeSpec, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};

/// Longest accepted prompt or question, in characters (it is truncated to the text positions
/// anyway, with a warning).
pub const MAX_TEXT_CHARS: usize = 65_536;

/// `BlipImageProcessor`'s class defaults: 384 x 384 BICUBIC, OpenAI CLIP mean/std, no crop.
const BLIP_PROCESSOR_DEFAULTS: ProcessorDefaults = ProcessorDefaults {
    size: SizeSpec::HeightWidth {
        height: 384,
        width: 384,
    },
    resample: Resample::Bicubic,
    do_center_crop: false,
    crop_size: None,
    image_mean: OPENAI_CLIP_MEAN,
    image_std: OPENAI_CLIP_STD,
    shortest_edge: ShortestEdgeRule::KeepAspect,
};

/// A generated caption or answer.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratedText {
    /// `decode(sequence, skip_special_tokens=True)`: for a caption, the prompt's words and the
    /// generated ones; for VQA, the answer.
    pub text: String,
    /// The prompt (captioning) or question (VQA), as given.
    pub prompt: Option<String>,
    /// The generated token ids (after the prompt; the final `[SEP]` included when generated).
    pub token_ids: Vec<u32>,
    /// Beam search: the best beam's score (log-probability over length^length_penalty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    pub stop: StopReason,
    pub width: u32,
    pub height: u32,
    #[serde(skip)]
    pub timings: Timings,
}

/// [`StepDecoder`] over BLIP's text decoder: the self-attention cache of each row (beam) and
/// the cross-attention keys and values of the one image (or question) they share.
struct BlipStep<'a> {
    decoder: &'a BlipTextLMHeadModel,
    cross: Vec<KeyValues>,
    cache: Vec<Option<KeyValues>>,
    device: Device,
}

impl BlipStep<'_> {
    fn run(&mut self, ids: Vec<u32>, rows: usize) -> Result<Vec<Vec<f32>>> {
        let cols = ids.len() / rows;
        let ids = Tensor::from_vec(ids, (rows, cols), &self.device)?;
        Ok(self
            .decoder
            .next_logits(&ids, &mut self.cache, &self.cross)?
            .to_vec2::<f32>()?)
    }
}

impl StepDecoder for BlipStep<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        self.cache = vec![None; self.decoder.bert().num_layers()];
        Ok(self.run(prompt.to_vec(), 1)?.remove(0))
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.run(tokens.to_vec(), tokens.len())
    }

    fn select_rows(&mut self, rows: &[u32]) -> Result<()> {
        Ok(select_rows(&mut self.cache, rows)?)
    }
}

/// A BLIP checkpoint on one device: `BlipForConditionalGeneration` (captions) or
/// `BlipForQuestionAnswering` (answers).
pub struct BlipGenerator {
    name: String,
    model: BlipModel,
    config: BlipConfig,
    tokenizer: TextTokenizer,
    processor: ImageProcessor,
    options: LoadOptions,
}

/// The captioning task object.
pub type Captioner = BlipGenerator;

impl BlipGenerator {
    /// Loads a BLIP captioning or VQA checkpoint (directory or hub id).
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::from_checkpoint(&Checkpoint::resolve(model)?, options)
    }

    /// Whether config.json names a BLIP head this type loads.
    pub fn is_blip(ckpt: &Checkpoint) -> Result<bool> {
        let arch = ckpt.architecture()?;
        Ok(CAPTION_ARCHITECTURES.contains(&arch.as_str())
            || VQA_ARCHITECTURES.contains(&arch.as_str()))
    }

    pub fn from_checkpoint(ckpt: &Checkpoint, options: &LoadOptions) -> Result<Self> {
        let _span = tracing::info_span!("load", model = %ckpt.name).entered();
        let expected: Vec<&str> = CAPTION_ARCHITECTURES
            .iter()
            .chain(VQA_ARCHITECTURES)
            .copied()
            .collect();
        ckpt.expect_architecture(&expected)?;
        let task = if VQA_ARCHITECTURES.contains(&ckpt.architecture()?.as_str()) {
            BlipTask::Vqa
        } else {
            BlipTask::Caption
        };
        let config: BlipConfig = ckpt.config()?;
        let pre: PreprocessorConfig = ckpt.preprocessor_config()?;
        let processor = ImageProcessor::from_config(pre, &BLIP_PROCESSOR_DEFAULTS)?;
        let side = config.vision_config.image_size;
        let fits = processor.center_crop.map_or(
            processor.resize
                == ResizeMode::Exact {
                    height: side,
                    width: side,
                },
            |crop| crop == (side, side),
        );
        if !fits {
            // BLIP's generate runs the vision tower without interpolate_pos_encoding
            return Err(Error::Unsupported {
                model: ckpt.name.clone(),
                reason: format!(
                    "preprocessor_config.json must produce {side}x{side} images (the vision \
                     tower's image_size): got resize {:?}, crop {:?}",
                    processor.resize, processor.center_crop
                ),
            });
        }
        let vb = ckpt.model_vars(options)?;
        let model =
            BlipModel::new(vb, &config, task, &ckpt.name).map_err(|e| ckpt.load_error(e))?;
        let tokenizer = TextTokenizer::load(
            ckpt,
            TokenizerKind::BertWordPiece,
            config.text_config.max_position_embeddings,
            config.text_config.pad_token_id,
        )?;
        super::host_memory::release_freed_memory();
        Ok(Self {
            name: ckpt.name.clone(),
            model,
            config,
            tokenizer,
            processor,
            options: options.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn task(&self) -> BlipTask {
        self.model.task
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

    /// The processor's pixels for `image`: (1, 3, S, S) on the model's device.
    pub fn pixel_values(&self, image: &RgbImage) -> Result<Tensor> {
        self.processor.preprocess(image, &self.options.device)
    }

    fn tokenize(&self, text: &str, what: &str) -> Result<Vec<u32>> {
        super::validate_texts(&[text], what)?;
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(Error::InvalidInput(format!(
                "the {what} has more than {MAX_TEXT_CHARS} characters"
            )));
        }
        let batch = self.tokenizer.encode(&[text], Padding::Longest)?;
        Ok(batch.ids.into_iter().next().unwrap_or_default())
    }

    /// The decoder's prompt: `[DEC]` alone, or the prompt's tokens with `[CLS]` replaced by
    /// `[DEC]` and the trailing `[SEP]` dropped (`BlipForConditionalGeneration.generate`).
    pub fn prompt_ids(&self, prompt: Option<&str>) -> Result<Vec<u32>> {
        let bos = self.config.text_config.bos_token_id;
        match prompt {
            None => Ok(vec![bos]),
            Some(text) => {
                let mut ids = self.tokenize(text, "prompt")?;
                if ids.len() < 2 {
                    return Err(Error::InvalidInput(format!(
                        "prompt {text:?} has no tokens"
                    )));
                }
                ids.pop();
                ids[0] = bos;
                Ok(ids)
            }
        }
    }

    /// The question's token ids as the processor gives them (`[CLS] ... [SEP]`).
    pub fn question_ids(&self, question: &str) -> Result<Vec<u32>> {
        self.tokenize(question, "question")
    }

    /// Generation from pixels (1, 3, S, S): a caption continuing `prompt_ids`, or (VQA) an
    /// answer to `question_ids` from `[DEC]`.
    pub fn generate_from_pixels(
        &self,
        pixel_values: &Tensor,
        prompt_ids: &[u32],
        question_ids: Option<&[u32]>,
        config: &GenerationConfig,
    ) -> Result<Generated> {
        let image_embeds = self.model.image_embeds(pixel_values)?;
        let question = question_ids
            .map(|ids| Tensor::new(ids, pixel_values.device())?.unsqueeze(0))
            .transpose()?;
        let cross = self
            .model
            .decoder_context(&image_embeds, question.as_ref())?;
        let mut step = BlipStep {
            decoder: &self.model.decoder,
            cross,
            cache: Vec::new(),
            device: pixel_values.device().clone(),
        };
        let text = &self.config.text_config;
        generate(
            &mut step,
            prompt_ids,
            text.sep_token_id,
            text.max_position_embeddings,
            config,
        )
    }

    /// `[DEC]`: the text config's `bos_token_id`, where every answer and caption starts.
    pub fn bos_token_id(&self) -> u32 {
        self.config.text_config.bos_token_id
    }

    /// The vision tower alone on pixel values (1, 3, S, S): what one image costs before any
    /// token (for timing; generation runs it itself).
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.model.image_embeds(pixel_values)?)
    }

    /// The decoder's next-token logits after `prompt_ids` for a captioning checkpoint's
    /// pixels (the first generation step): (vocab,) f32.
    pub fn first_logits(&self, pixel_values: &Tensor, prompt_ids: &[u32]) -> Result<Tensor> {
        let image_embeds = self.model.image_embeds(pixel_values)?;
        let cross = self.model.decoder_context(&image_embeds, None)?;
        let mut step = BlipStep {
            decoder: &self.model.decoder,
            cross,
            cache: Vec::new(),
            device: pixel_values.device().clone(),
        };
        let row = step.prefill(prompt_ids)?;
        let n = row.len();
        Ok(Tensor::from_vec(row, n, &Device::Cpu)?)
    }

    fn run(
        &self,
        image: &RgbImage,
        text: Option<&str>,
        config: &GenerationConfig,
    ) -> Result<GeneratedText> {
        let t0 = Instant::now();
        let (prompt_ids, question_ids) = match self.model.task {
            BlipTask::Caption => (self.prompt_ids(text)?, None),
            BlipTask::Vqa => {
                let q =
                    text.ok_or_else(|| Error::InvalidInput("a VQA model needs a question".into()))?;
                (vec![self.bos_token_id()], Some(self.question_ids(q)?))
            }
        };
        let pixels = self.pixel_values(image)?;
        let t1 = Instant::now();
        let out =
            self.generate_from_pixels(&pixels, &prompt_ids, question_ids.as_deref(), config)?;
        let t2 = Instant::now();
        let text_out = self.tokenizer.decode(&out.sequence, true)?;
        Ok(GeneratedText {
            text: text_out,
            prompt: text.map(str::to_string),
            token_ids: out.new_tokens().to_vec(),
            score: out.sequence_score,
            stop: out.stop,
            width: image.width(),
            height: image.height(),
            timings: Timings {
                preprocess: t1 - t0,
                forward: t2 - t1,
                postprocess: t2.elapsed(),
            },
        })
    }

    /// A caption of `image`, continuing `prompt` when given.
    pub fn caption(
        &self,
        image: &RgbImage,
        prompt: Option<&str>,
        config: &GenerationConfig,
    ) -> Result<GeneratedText> {
        if self.model.task != BlipTask::Caption {
            return Err(Error::InvalidInput(format!(
                "`{}` is a BLIP VQA checkpoint: ask it a question instead",
                self.name
            )));
        }
        self.run(image, prompt, config)
    }

    /// A free-form answer to `question` about `image` (BLIP VQA checkpoints).
    pub fn answer(
        &self,
        image: &RgbImage,
        question: &str,
        config: &GenerationConfig,
    ) -> Result<GeneratedText> {
        if self.model.task != BlipTask::Vqa {
            return Err(Error::InvalidInput(format!(
                "`{}` is a BLIP captioning checkpoint, not a VQA one",
                self.name
            )));
        }
        self.run(image, Some(question), config)
    }
}
