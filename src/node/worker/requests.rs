//! The requests the worker serves besides the stream: vocabulary changes (the `set_queries`
//! service, parameters) and the ad-hoc detect / segment / ask services, on the request's image
//! or the latest camera frame.

use std::sync::Arc;

use image::RgbImage;
use vlm_perception::pipeline::{
    validate_texts, DetectParams, DetectionResult, SegmentParams, SegmentationResult, VqaResult,
};

use super::cameras::{DetectionVocab, SegmentationVocab};
use super::{
    lock, ImageArg, LabelledImages, Level, Outcome, QueryImage, Sink, Task, VqaBackend, Worker,
};
use crate::convert::{decode, FrameHeader};
use crate::params::MAX_TOP_K;

impl<S: Sink> Worker<S> {
    /// Replaces the stream's detection vocabulary and/or its segmentation prompts (`None`:
    /// keep); `prompt_images` go with `prompts`, after them.
    pub(super) fn set_vocabulary(
        &mut self,
        camera: Option<usize>,
        detection: Option<Vec<String>>,
        prompts: Option<Vec<String>>,
        prompt_images: Vec<QueryImage>,
        origin: &'static str,
    ) -> Result<String, String> {
        let result = self.apply_vocabulary(camera, detection, prompts, prompt_images);
        let whose = match camera.and_then(|c| self.cameras.get(c)) {
            Some(c) => format!(" ({})", c.spec.label()),
            None => String::new(),
        };
        match &result {
            Ok(msg) => self
                .sink
                .log(Level::Info, &format!("{origin}{whose}: {msg}")),
            Err(e) => {
                lock(&self.shared.stats).bad_queries += 1;
                self.log_limited(
                    &format!("vocabulary:{origin}"),
                    Level::Warn,
                    format!("{origin}: rejected: {e}"),
                );
            }
        }
        result
    }

    fn apply_vocabulary(
        &mut self,
        camera: Option<usize>,
        detection: Option<Vec<String>>,
        prompts: Option<Vec<String>>,
        prompt_images: Vec<QueryImage>,
    ) -> Result<String, String> {
        // Validate everything before changing anything.
        if let Some(q) = &detection {
            validate_texts(q, "detection query").map_err(|e| e.to_string())?;
        }
        if let Some(p) = &prompts {
            if !p.is_empty() {
                validate_texts(p, "segmentation prompt").map_err(|e| e.to_string())?;
            }
        }
        let images = match prompts {
            Some(_) => self.decode_images(prompt_images, "prompt image")?,
            None => LabelledImages::default(),
        };
        let mut notes = Vec::new();
        let mut failed = Vec::new();
        if let Some(q) = detection {
            if self.detector.is_some() {
                self.query_embeddings(&q, true)
                    .map_err(|e| format!("cannot encode the detection queries: {e}"))?;
            } else {
                failed.push(format!(
                    "detection vocabulary stored, but {}",
                    self.unavailable(Task::Detection)
                ));
            }
            notes.push(format!("{} detection queries", q.len()));
            *self.own_detection_vocab(camera) = DetectionVocab {
                queries: q,
                images: None,
            };
        }
        if let Some(p) = prompts {
            if !p.is_empty() || !images.is_empty() {
                if self.segmenter.is_some() {
                    self.mixed_prompt_embeddings(&p, true, &images)
                        .map_err(|e| format!("cannot encode the segmentation prompts: {e}"))?;
                } else {
                    failed.push(format!(
                        "segmentation prompts stored, but {}",
                        self.unavailable(Task::Segmentation)
                    ));
                }
            }
            notes.push(match (p.len(), images.images.len()) {
                (0, 0) => {
                    "segmentation prompts cleared (no segmentation on the stream)".to_string()
                }
                (n, 0) => format!("{n} segmentation prompts"),
                (n, m) => format!("{n} segmentation prompts and {m} prompt image(s)"),
            });
            *self.own_segmentation_vocab(camera) = SegmentationVocab {
                prompts: p,
                images: Arc::new(images),
            };
        }
        self.vocabulary_to_stats();
        if !failed.is_empty() {
            return Err(failed.join("; "));
        }
        if notes.is_empty() {
            return Ok("nothing to change (both keep flags set)".into());
        }
        Ok(format!("set {}", notes.join(", ")))
    }

    /// Where a vocabulary change of `camera` goes: its own detection vocabulary (made from the
    /// shared one on its first change), or the shared one (`None`).
    pub(super) fn own_detection_vocab(&mut self, camera: Option<usize>) -> &mut DetectionVocab {
        match camera {
            Some(c) if c < self.cameras.len() => self.cameras[c]
                .detection
                .get_or_insert_with(|| self.detection_vocab.clone()),
            _ => &mut self.detection_vocab,
        }
    }

    /// As [`Self::own_detection_vocab`], for the segmentation prompts.
    fn own_segmentation_vocab(&mut self, camera: Option<usize>) -> &mut SegmentationVocab {
        match camera {
            Some(c) if c < self.cameras.len() => self.cameras[c]
                .segmentation
                .get_or_insert_with(|| self.segmentation_vocab.clone()),
            _ => &mut self.segmentation_vocab,
        }
    }

    /// The vocabularies as /diagnostics shows them.
    pub(super) fn vocabulary_to_stats(&self) {
        let mut s = lock(&self.shared.stats);
        s.queries = self.detection_vocab.queries.clone();
        s.prompts = self.segmentation_vocab.prompts.clone();
        for (stats, camera) in s.cameras.iter_mut().zip(&self.cameras) {
            stats.queries = camera.detection.as_ref().map(|v| v.queries.clone());
            stats.prompts = camera.segmentation.as_ref().map(|v| v.prompts.clone());
        }
    }

    /// The request's image (or the latest camera frame) for `task`, whose model must be
    /// loaded.
    pub(super) fn image_for(
        &mut self,
        task: Task,
        arg: ImageArg,
    ) -> Result<(FrameHeader, RgbImage), String> {
        let loaded = match task {
            Task::Detection => self.detector.is_some(),
            Task::Segmentation => self.segmenter.is_some(),
            Task::Vqa => self.vqa.is_some(),
            Task::Classification => self.classifier.is_some(),
            Task::Caption => self.captioner.is_some(),
        };
        if !loaded {
            return Err(self.unavailable(task));
        }
        self.image(arg)
    }

    /// The request's image, or the latest camera frame.
    pub(super) fn image(&mut self, arg: ImageArg) -> Result<(FrameHeader, RgbImage), String> {
        let max = self.params.camera.max_pixels;
        match arg.given {
            Some((header, raw)) => decode(&raw, "request image", max)
                .map(|img| (header, img))
                .map_err(|e| e.to_string()),
            None => {
                let latest = lock(&self.shared.latest).get(arg.camera).cloned().flatten();
                let Some(frame) = latest else {
                    let (label, topic) = match self.cameras.get(arg.camera) {
                        Some(c) => (c.spec.label(), c.spec.input(&self.params.camera.topic)),
                        None => ("the camera".into(), self.params.camera.topic.clone()),
                    };
                    return Err(format!(
                        "no image in the request and none received from {label} on `{topic}` yet"
                    ));
                };
                decode(&frame.image, &frame.source, max)
                    .map(|img| (frame.header.clone(), img))
                    .map_err(|e| format!("the latest frame is unusable: {e}"))
            }
        }
    }

    pub(super) fn detect(
        &mut self,
        image: ImageArg,
        queries: Vec<String>,
        threshold: Option<f32>,
    ) -> Result<Outcome<DetectionResult>, String> {
        let camera = image.camera;
        let (header, img) = self.image_for(Task::Detection, image)?;
        let vocabulary = self.detection_vocab(camera).queries.clone();
        let (queries, for_stream) = request_texts(queries, &vocabulary, ("query", "queries"))?;
        let emb = self
            .query_embeddings(&queries, for_stream)
            .map_err(|e| e.to_string())?;
        let params = DetectParams {
            threshold: threshold.unwrap_or(self.params.owlvit.score_threshold),
            nms_iou: self.params.owlvit.nms_iou,
        };
        let d = self.loaded_detector()?;
        let result = d
            .detect_with_min_objectness(&img, &emb, &params, self.min_objectness(d))
            .map_err(|e| e.to_string())?;
        Ok(Outcome {
            header,
            model: d.name().to_string(),
            latency: result.timings.total(),
            result,
        })
    }

    /// `~/segment`: the request's text prompts then its example images, or the stream's when
    /// it names neither.
    pub(super) fn segment(
        &mut self,
        image: ImageArg,
        prompts: Vec<String>,
        prompt_images: Vec<QueryImage>,
        threshold: Option<f32>,
    ) -> Result<Outcome<SegmentationResult>, String> {
        let camera = image.camera;
        let (header, img) = self.image_for(Task::Segmentation, image)?;
        let emb = if prompts.is_empty() && prompt_images.is_empty() {
            let vocab = self.segmentation_vocab(camera).clone();
            if vocab.is_empty() {
                return Err("no prompts: pass some, or set the vocabulary with set_queries".into());
            }
            self.mixed_prompt_embeddings(&vocab.prompts, true, &vocab.images)?
        } else {
            if !prompts.is_empty() {
                validate_texts(&prompts, "prompt").map_err(|e| e.to_string())?;
            }
            let images = self.decode_images(prompt_images, "prompt image")?;
            self.mixed_prompt_embeddings(&prompts, false, &images)?
        };
        let params = SegmentParams {
            threshold: threshold.unwrap_or(self.params.clipseg.mask_threshold),
        };
        let s = self.loaded_segmenter()?;
        let result = s.segment(&img, &emb, &params).map_err(|e| e.to_string())?;
        Ok(Outcome {
            header,
            model: s.name().to_string(),
            latency: result.timings.total(),
            result,
        })
    }

    pub(super) fn ask(
        &mut self,
        image: ImageArg,
        question: String,
        top_k: Option<usize>,
    ) -> Result<Outcome<VqaResult>, String> {
        if self.vqa.is_none() {
            return Err(self.unavailable(Task::Vqa));
        }
        validate_texts(std::slice::from_ref(&question), "question").map_err(|e| e.to_string())?;
        let (header, img) = self.image(image)?;
        let top_k = top_k
            .unwrap_or(self.params.vilt.top_k)
            .clamp(1, MAX_TOP_K as usize);
        let v = self.loaded_vqa()?;
        let result = match v {
            VqaBackend::Vilt(m) => m.ask(&img, &question, top_k).map_err(|e| e.to_string())?,
            VqaBackend::Blip(m) => self.generated_answer(m, &img, &question)?,
        };
        Ok(Outcome {
            header,
            model: v.name().to_string(),
            latency: result.timings.total(),
            result,
        })
    }
}

/// The texts a request names, validated, or the stream's vocabulary where it names none; `true`
/// with the vocabulary (its cached embeddings serve). `kind`: (singular, plural) for errors.
fn request_texts(
    given: Vec<String>,
    vocabulary: &[String],
    kind: (&str, &str),
) -> Result<(Vec<String>, bool), String> {
    let (texts, for_stream) = if given.is_empty() {
        (vocabulary.to_vec(), true)
    } else {
        validate_texts(&given, kind.0).map_err(|e| e.to_string())?;
        (given, false)
    };
    if texts.is_empty() {
        return Err(format!(
            "no {}: pass some, or set the vocabulary with set_queries",
            kind.1
        ));
    }
    Ok((texts, for_stream))
}

#[cfg(test)]
mod tests {
    use super::request_texts;

    #[test]
    fn request_texts_fall_back_to_the_vocabulary_and_name_what_is_missing() {
        let vocabulary = vec!["a cat".to_string()];
        let kind = ("query", "queries");
        assert_eq!(
            request_texts(Vec::new(), &vocabulary, kind).unwrap(),
            (vocabulary.clone(), true)
        );
        let given = vec!["a cup".to_string()];
        assert_eq!(
            request_texts(given.clone(), &vocabulary, kind).unwrap(),
            (given, false)
        );
        let err = request_texts(Vec::new(), &[], ("prompt", "prompts")).unwrap_err();
        assert!(err.starts_with("no prompts: pass some"), "{err}");
        let err = request_texts(vec![" ".to_string()], &vocabulary, kind).unwrap_err();
        assert!(err.contains("query"), "{err}");
    }
}
