//! The worker's models: loading them, their states, why one is unavailable, and the cached
//! embeddings of text queries and prompts.

use std::sync::Arc;
use std::time::Instant;

use vlm_perception::pipeline::{
    BlipGenerator, Classifier, Detector, LoadOptions, PromptEmbeddings, QueryEmbeddings, Segmenter,
};

use super::{lock, Level, ModelState, Sink, Task, VqaBackend, Worker};

impl<S: Sink> Worker<S> {
    pub(super) fn set_state(&self, task: Task, state: ModelState) {
        if let Some(t) = lock(&self.shared.tasks).get_mut(task as usize) {
            t.state = state;
        }
    }

    pub(super) fn state(&self, task: Task) -> ModelState {
        lock(&self.shared.tasks)
            .get(task as usize)
            .map_or(ModelState::Disabled, |t| t.state.clone())
    }

    pub(super) fn load_models(&mut self) {
        self.detector = self.load(Task::Detection, Detector::load);
        if self.detector.is_some() {
            // Encode the vocabularies now rather than on the first frame.
            let mut vocabularies = vec![(
                "owlvit.queries".to_string(),
                self.detection_vocab.queries.clone(),
            )];
            for c in &self.cameras {
                if let Some(v) = &c.detection {
                    vocabularies.push((format!("{}.queries", c.spec.name), v.queries.clone()));
                }
            }
            for (name, queries) in vocabularies {
                if queries.is_empty() {
                    continue;
                }
                if let Err(e) = self.query_embeddings(&queries, true) {
                    self.sink
                        .log(Level::Error, &format!("cannot encode {name}: {e}"));
                }
            }
        }
        self.segmenter = self.load(Task::Segmentation, Segmenter::load);
        self.vqa = self.load(Task::Vqa, VqaBackend::load);
        self.classifier = self.load(Task::Classification, Classifier::load);
        self.captioner = self.load(Task::Caption, BlipGenerator::load);
    }

    /// Loads `task`'s model when its group is enabled, logging and recording the outcome.
    fn load<M>(
        &mut self,
        task: Task,
        load: impl FnOnce(&str, &LoadOptions) -> vlm_perception::Result<M>,
    ) -> Option<M> {
        let (enabled, model) = task.model(&self.params);
        if !enabled {
            return None;
        }
        let model = model.to_string();
        let t0 = Instant::now();
        match load(&model, &self.options) {
            Ok(m) => {
                self.loaded(task, &model, t0);
                Some(m)
            }
            Err(e) => {
                self.load_failed(task, &model, &e);
                None
            }
        }
    }

    fn loaded(&mut self, task: Task, model: &str, t0: Instant) {
        self.set_state(task, ModelState::Ready);
        self.sink.log(
            Level::Info,
            &format!(
                "{} model `{model}` loaded in {:.2} s",
                task.label(),
                t0.elapsed().as_secs_f64()
            ),
        );
    }

    fn load_failed(&mut self, task: Task, model: &str, e: &vlm_perception::Error) {
        let msg = format!("{e}");
        self.set_state(task, ModelState::Failed(msg.clone()));
        self.sink.log(
            Level::Error,
            &format!(
                "{} model `{model}` failed to load (the other tasks keep running): {msg}",
                task.label()
            ),
        );
    }

    /// Why `task` cannot serve a request right now.
    pub(super) fn unavailable(&self, task: Task) -> String {
        let (_, model) = task.model(&self.params);
        match self.state(task) {
            ModelState::Disabled => format!(
                "{} is disabled (parameter `{}.enabled` is false)",
                task.label(),
                task.group()
            ),
            ModelState::Loading => format!("{} model `{model}` is still loading", task.label()),
            ModelState::Unconfigured => format!(
                "{} model `{model}` is not loaded: configure the lifecycle node first",
                task.label()
            ),
            ModelState::Failed(e) => {
                format!("{} model `{model}` failed to load: {e}", task.label())
            }
            ModelState::Ready => format!("{} model `{model}` is not available", task.label()),
        }
    }

    /// The loaded detector, or why there is none.
    pub(super) fn loaded_detector(&self) -> Result<&Detector, String> {
        self.detector
            .as_ref()
            .ok_or_else(|| self.unavailable(Task::Detection))
    }

    /// The loaded segmenter, or why there is none.
    pub(super) fn loaded_segmenter(&self) -> Result<&Segmenter, String> {
        self.segmenter
            .as_ref()
            .ok_or_else(|| self.unavailable(Task::Segmentation))
    }

    /// The loaded VQA model, or why there is none.
    pub(super) fn loaded_vqa(&self) -> Result<&VqaBackend, String> {
        self.vqa.as_ref().ok_or_else(|| self.unavailable(Task::Vqa))
    }

    /// The loaded captioning model, or why there is none.
    pub(super) fn loaded_captioner(&self) -> Result<&BlipGenerator, String> {
        self.captioner
            .as_ref()
            .ok_or_else(|| self.unavailable(Task::Caption))
    }

    /// The loaded classifier, or why there is none.
    pub(super) fn loaded_classifier(&self) -> Result<&Classifier, String> {
        self.classifier
            .as_ref()
            .ok_or_else(|| self.unavailable(Task::Classification))
    }

    pub(super) fn query_embeddings(
        &mut self,
        queries: &[String],
        for_stream: bool,
    ) -> Result<Arc<QueryEmbeddings>, String> {
        let Some(detector) = self.detector.as_ref() else {
            return Err(self.unavailable(Task::Detection));
        };
        let mut encoded = false;
        let r = self
            .query_cache
            .get(queries, for_stream, &mut encoded, |q| {
                detector
                    .encode_queries(q)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            });
        if encoded {
            lock(&self.shared.stats).query_encodings += 1;
        }
        r
    }

    pub(super) fn prompt_embeddings(
        &mut self,
        prompts: &[String],
        for_stream: bool,
    ) -> Result<Arc<PromptEmbeddings>, String> {
        let Some(segmenter) = self.segmenter.as_ref() else {
            return Err(self.unavailable(Task::Segmentation));
        };
        let mut encoded = false;
        let r = self
            .prompt_cache
            .get(prompts, for_stream, &mut encoded, |p| {
                segmenter.prompts(p).map_err(|e| e.to_string())
            });
        if encoded {
            lock(&self.shared.stats).prompt_encodings += 1;
        }
        r
    }
}
