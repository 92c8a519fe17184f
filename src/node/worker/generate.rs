//! BLIP in the node: `~/caption` (a captioning checkpoint, `blip.model`), and `~/ask` answered
//! with generated text when `vilt.model` names a BLIP VQA checkpoint instead of ViLT. Both
//! generate with `blip.num_beams` and `blip.max_new_tokens` unless the call says otherwise.

use image::RgbImage;
use vlm_perception::pipeline::{
    Answer, BlipGenerator, Checkpoint, GeneratedText, GenerationConfig, LoadOptions, StopReason,
    VqaModel, VqaResult, MAX_QUERY_CHARS,
};

use super::{ImageArg, Outcome, Sink, Task, Worker};
use crate::params::{MAX_BEAMS, MAX_NEW_TOKENS};

/// The model behind `~/ask`: ViLT ranks its fixed answers, BLIP VQA generates one.
pub enum VqaBackend {
    Vilt(VqaModel),
    Blip(BlipGenerator),
}

impl VqaBackend {
    /// Loads `model` as the family its config.json names.
    pub fn load(model: &str, options: &LoadOptions) -> vlm_perception::Result<Self> {
        let ckpt = Checkpoint::resolve(model)?;
        if BlipGenerator::is_blip(&ckpt)? {
            Ok(Self::Blip(BlipGenerator::from_checkpoint(&ckpt, options)?))
        } else {
            Ok(Self::Vilt(VqaModel::from_checkpoint(&ckpt, options)?))
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Vilt(m) => m.name(),
            Self::Blip(m) => m.name(),
        }
    }
}

/// What a call may ask of generation besides the parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerationArgs {
    pub num_beams: Option<usize>,
    pub max_new_tokens: Option<usize>,
}

/// The stop reason as `Caption.stop` spells it.
pub fn stop_name(stop: StopReason) -> &'static str {
    match stop {
        StopReason::Eos => "eos",
        StopReason::Length => "length",
    }
}

impl<S: Sink> Worker<S> {
    /// The generation settings of a call: its own values, else `blip.*`; out of range refused.
    pub(super) fn generation_config(
        &self,
        args: GenerationArgs,
    ) -> Result<GenerationConfig, String> {
        let beams = args.num_beams.unwrap_or(self.params.blip.num_beams);
        if !(1..=MAX_BEAMS as usize).contains(&beams) {
            return Err(format!(
                "num_beams must be in 1..={MAX_BEAMS} (<= 0: blip.num_beams), got {beams}"
            ));
        }
        let tokens = args
            .max_new_tokens
            .unwrap_or(self.params.blip.max_new_tokens);
        if !(1..=MAX_NEW_TOKENS as usize).contains(&tokens) {
            return Err(format!(
                "max_new_tokens must be in 1..={MAX_NEW_TOKENS} (<= 0: blip.max_new_tokens), got \
                 {tokens}"
            ));
        }
        Ok(GenerationConfig {
            num_beams: beams,
            max_new_tokens: Some(tokens),
            ..GenerationConfig::default()
        })
    }

    /// `~/caption`: a caption of the image, continuing `prompt` when given.
    pub(super) fn caption(
        &mut self,
        image: ImageArg,
        prompt: Option<String>,
        args: GenerationArgs,
    ) -> Result<Outcome<GeneratedText>, String> {
        let config = self.generation_config(args)?;
        if let Some(p) = &prompt {
            check_text(p, "prompt")?;
        }
        let (header, img) = self.image_for(Task::Caption, image)?;
        let m = self.loaded_captioner()?;
        let result = m
            .caption(&img, prompt.as_deref(), &config)
            .map_err(|e| e.to_string())?;
        Ok(Outcome {
            header,
            model: m.name().to_string(),
            latency: result.timings.total(),
            result,
        })
    }

    /// `~/ask` on a BLIP VQA checkpoint: the generated answer as the one candidate.
    pub(super) fn generated_answer(
        &self,
        model: &BlipGenerator,
        img: &RgbImage,
        question: &str,
    ) -> Result<VqaResult, String> {
        let config = self.generation_config(GenerationArgs::default())?;
        let r = model
            .answer(img, question, &config)
            .map_err(|e| e.to_string())?;
        Ok(VqaResult {
            question: question.to_string(),
            answers: vec![Answer {
                answer: r.text,
                score: r.score.unwrap_or(0.0),
            }],
            timings: r.timings,
        })
    }
}

/// A prompt or question: not blank, not absurdly long (named in the error).
fn check_text(text: &str, what: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("the {what} is blank (leave it empty for none)"));
    }
    let chars = text.chars().count();
    if chars > MAX_QUERY_CHARS {
        return Err(format!(
            "the {what} has {chars} characters, at most {MAX_QUERY_CHARS} are accepted"
        ));
    }
    Ok(())
}
