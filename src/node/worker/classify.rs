//! Zero-shot classification (CLIP): `~/classify` on the request's image or the latest frame,
//! and the stream's `clip.labels` on every processed frame. Label embeddings are cached per
//! template and label list, the stream's apart from one service call's.

use std::sync::Arc;

use image::RgbImage;
use vlm_perception::pipeline::{validate_texts, ClassificationResult, LabelEmbeddings};

use super::{lock, ImageArg, Outcome, Sink, Task, Worker};

impl<S: Sink> Worker<S> {
    /// `~/classify`: `labels` (or `clip.labels`) through `template` (or
    /// `clip.hypothesis_template`).
    pub(super) fn classify(
        &mut self,
        image: ImageArg,
        labels: Vec<String>,
        template: Option<String>,
    ) -> Result<Outcome<ClassificationResult>, String> {
        let (header, img) = self.image_for(Task::Classification, image)?;
        let template = match template {
            Some(t) => {
                validate_texts(std::slice::from_ref(&t), "hypothesis template")
                    .map_err(|e| e.to_string())?;
                t
            }
            None => self.params.clip.hypothesis_template.clone(),
        };
        let (labels, for_stream) = if labels.is_empty() {
            if self.params.clip.labels.is_empty() {
                return Err("no labels: pass some, or set the parameter clip.labels".to_string());
            }
            let stream = self.params.clip.labels.clone();
            let same = template == self.params.clip.hypothesis_template;
            (stream, same)
        } else {
            validate_texts(&labels, "label").map_err(|e| e.to_string())?;
            (labels, false)
        };
        let emb = self.label_embeddings(&labels, &template, for_stream)?;
        let c = self.loaded_classifier()?;
        let result = c.classify(&img, &emb).map_err(|e| e.to_string())?;
        Ok(Outcome {
            header,
            model: c.name().to_string(),
            latency: result.timings.total(),
            result,
        })
    }

    /// `clip.labels` on one frame.
    pub(super) fn classify_frame(
        &mut self,
        image: &RgbImage,
    ) -> Result<ClassificationResult, String> {
        let labels = self.params.clip.labels.clone();
        let template = self.params.clip.hypothesis_template.clone();
        let emb = self.label_embeddings(&labels, &template, true)?;
        self.loaded_classifier()?
            .classify(image, &emb)
            .map_err(|e| e.to_string())
    }

    fn label_embeddings(
        &mut self,
        labels: &[String],
        template: &str,
        for_stream: bool,
    ) -> Result<Arc<LabelEmbeddings>, String> {
        let Some(classifier) = self.classifier.as_ref() else {
            return Err(self.unavailable(Task::Classification));
        };
        // The template is part of the key: the same labels through another template embed anew.
        let key: Vec<String> = std::iter::once(template.to_string())
            .chain(labels.iter().cloned())
            .collect();
        let mut encoded = false;
        let r = self.label_cache.get(&key, for_stream, &mut encoded, |_| {
            classifier
                .encode_labels(labels, template)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        if encoded {
            lock(&self.shared.stats).label_encodings += 1;
        }
        r
    }
}
