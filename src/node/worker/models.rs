//! The worker's models: loading them, their states, why one is unavailable, and the cached
//! embeddings of text queries and prompts.

use std::sync::Arc;
use std::time::Instant;

use vlm_perception::pipeline::{
    Classifier, Detector, PromptEmbeddings, QueryEmbeddings, Segmenter, VqaModel,
};

use super::{lock, Level, ModelState, Sink, Task, Worker};

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
        let p = self.params.clone();
        if p.owlvit.enabled {
            let t0 = Instant::now();
            match Detector::load(&p.owlvit.model, &self.options) {
                Ok(d) => {
                    self.detector = Some(d);
                    self.loaded(Task::Detection, &p.owlvit.model, t0);
                    if !self.queries.is_empty() {
                        // Encode the default vocabulary now rather than on the first frame.
                        let queries = self.queries.clone();
                        if let Err(e) = self.query_embeddings(&queries, true) {
                            self.sink
                                .log(Level::Error, &format!("cannot encode owlvit.queries: {e}"));
                        }
                    }
                }
                Err(e) => self.load_failed(Task::Detection, &p.owlvit.model, &e),
            }
        }
        if p.clipseg.enabled {
            let t0 = Instant::now();
            match Segmenter::load(&p.clipseg.model, &self.options) {
                Ok(s) => {
                    self.segmenter = Some(s);
                    self.loaded(Task::Segmentation, &p.clipseg.model, t0);
                }
                Err(e) => self.load_failed(Task::Segmentation, &p.clipseg.model, &e),
            }
        }
        if p.vilt.enabled {
            let t0 = Instant::now();
            match VqaModel::load(&p.vilt.model, &self.options) {
                Ok(v) => {
                    self.vqa = Some(v);
                    self.loaded(Task::Vqa, &p.vilt.model, t0);
                }
                Err(e) => self.load_failed(Task::Vqa, &p.vilt.model, &e),
            }
        }
        if p.clip.enabled {
            let t0 = Instant::now();
            match Classifier::load(&p.clip.model, &self.options) {
                Ok(c) => {
                    self.classifier = Some(c);
                    self.loaded(Task::Classification, &p.clip.model, t0);
                }
                Err(e) => self.load_failed(Task::Classification, &p.clip.model, &e),
            }
        }
    }

    pub(super) fn loaded(&mut self, task: Task, model: &str, t0: Instant) {
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

    pub(super) fn load_failed(&mut self, task: Task, model: &str, e: &vlm_perception::Error) {
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
    pub(super) fn loaded_vqa(&self) -> Result<&VqaModel, String> {
        self.vqa.as_ref().ok_or_else(|| self.unavailable(Task::Vqa))
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
