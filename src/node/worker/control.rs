//! Changes of the worker's own state: the lifecycle's configure (load the models) and cleanup
//! (free them), and new parameter values from `ros2 param set`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{lock, EmbedCache, ModelState, Sink, Task, Worker};
use crate::params::NodeParams;

impl<S: Sink> Worker<S> {
    /// Lifecycle `configure`: loads the enabled models; fails when none of them loads.
    pub(super) fn configure(&mut self) -> Result<String, String> {
        for t in Task::ALL {
            if self.state(t) == ModelState::Unconfigured {
                self.set_state(t, ModelState::Loading);
            }
        }
        self.shared.loading.store(true, Ordering::Relaxed);
        self.load_models();
        self.shared.loading.store(false, Ordering::Relaxed);
        let tasks = lock(&self.shared.tasks).clone();
        let ready: Vec<&str> = tasks
            .iter()
            .filter(|t| t.state == ModelState::Ready)
            .map(|t| t.task)
            .collect();
        if ready.is_empty() {
            // Nothing to free; the failures stay on /diagnostics.
            return Err("no model loaded (see /diagnostics and the log)".into());
        }
        Ok(format!("loaded: {}", ready.join(", ")))
    }

    /// Lifecycle `cleanup`: frees the models and the cached embeddings.
    pub(super) fn cleanup(&mut self) {
        self.detector = None;
        self.segmenter = None;
        self.vqa = None;
        self.classifier = None;
        self.captioner = None;
        self.query_cache = EmbedCache::default();
        self.prompt_cache = EmbedCache::default();
        self.label_cache = EmbedCache::default();
        self.detection_vocab.images = None;
        for c in &mut self.cameras {
            if let Some(v) = c.detection.as_mut() {
                v.images = None;
            }
        }
        for t in Task::ALL {
            if self.state(t) != ModelState::Disabled {
                self.set_state(t, ModelState::Unconfigured);
            }
        }
    }

    /// Applies new parameter values. A changed `owlvit.queries` / `clipseg.prompts` replaces
    /// the stream's vocabulary (as `~/set_queries` does); the rest is read where it is used.
    pub(super) fn reconfigure(&mut self, new: NodeParams) {
        let queries =
            (new.owlvit.queries != self.params.owlvit.queries).then(|| new.owlvit.queries.clone());
        let prompts = (new.clipseg.prompts != self.params.clipseg.prompts)
            .then(|| new.clipseg.prompts.clone());
        self.shared
            .rate
            .store(new.rate.to_bits(), Ordering::Relaxed);
        let now = Instant::now();
        for c in &mut self.cameras {
            if let Some(d) = &c.depth {
                d.set_slop(new.depth.slop);
            }
            if new.rate != self.params.rate {
                c.next_frame_at = now;
            }
            if new.blip.stream_rate != self.params.blip.stream_rate {
                c.next_caption_at = now;
            }
            c.tracks.set_config(&new.tracking.config);
        }
        self.params = new;
        if queries.is_some() || prompts.is_some() {
            // New text prompts replace the stream's example images too.
            let _ = self.set_vocabulary(None, queries, prompts, Vec::new(), "parameters");
        }
    }
}
