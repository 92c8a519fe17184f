//! The camera stream: each frame through the enabled models, with the stream's vocabulary and
//! prompts, its results and overlay to the sink, and its timings to the statistics.

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use nalgebra::Point3;
use vlm_perception::pipeline::{
    DetectParams, DetectionResult, Detector, SegmentParams, SegmentationResult,
};
use vlm_perception::vision::depth::Object3d;
use vlm_perception::vision::draw::{draw_labelled_box, palette_color, tint_mask};

use super::diagnostics::push_bounded;
use super::{lock, ms, Frame, FrameDetections, Sink, Task, Worker};

/// Per detection its 3D box and its points (see [`FrameDetections`]).
type FrameGeometry = (Vec<Option<Object3d>>, Vec<Option<Vec<Point3<f32>>>>);
use crate::convert::decode;
use crate::depth_sync::stamp_ns;

/// Opacity of segmentation masks in the overlay.
const MASK_ALPHA: f32 = 0.45;

impl<S: Sink> Worker<S> {
    pub(super) fn process_frame(&mut self, frame: &Frame) {
        let t0 = Instant::now();
        let image = match decode(&frame.image, &frame.source, self.params.camera.max_pixels) {
            Ok(img) => img,
            Err(e) => return self.bad_frame(&e),
        };
        let mut overlay = self.params.overlay.then(|| image.clone());

        let detections = self.detector.is_some().then(|| self.detect_frame(&image));
        let segmentation = (self.segmenter.is_some()
            && !(self.prompts.is_empty() && self.image_prompts.is_empty()))
        .then(|| self.segment_frame(&image));
        let classification = (self.classifier.is_some() && !self.params.clip.labels.is_empty())
            .then(|| self.classify_frame(&image));

        if let Some(result) = detections {
            match result {
                Ok(r) => {
                    let (positions, clouds) = self.frame_3d(frame, &image, &r, &segmentation);
                    let tracks = if self.params.tracking.enabled {
                        self.tracks.update(&frame.header, &r.detections)
                    } else {
                        Vec::new()
                    };
                    if let Some(canvas) = overlay.as_mut() {
                        for (i, d) in r.detections.iter().enumerate().rev() {
                            let label = match tracks.get(i).copied().unwrap_or(0) {
                                0 => format!("{} {:.2}", d.label, d.score),
                                id => format!("#{id} {} {:.2}", d.label, d.score),
                            };
                            draw_labelled_box(
                                canvas,
                                &d.bbox,
                                &label,
                                palette_color(d.query_index),
                            );
                        }
                    }
                    self.sink.detections(FrameDetections {
                        header: frame.header.clone(),
                        model: self.detector.as_ref().map_or("", |d| d.name()).to_string(),
                        latency: r.timings.total(),
                        result: r,
                        positions,
                        tracks,
                        clouds,
                    });
                }
                Err(e) => self.inference_error(Task::Detection, &e),
            }
        }

        if let Some(result) = segmentation {
            match result {
                Ok(r) => {
                    let model = self.segmenter.as_ref().map_or("", |s| s.name()).to_string();
                    self.sink
                        .segmentation(&frame.header, &model, &r, r.timings.total());
                    if let Some(canvas) = overlay.as_mut() {
                        for m in &r.masks {
                            let on: Vec<bool> = m.mask.as_raw().iter().map(|&v| v > 0).collect();
                            if on.len() == (canvas.width() * canvas.height()) as usize {
                                tint_mask(canvas, &on, palette_color(m.prompt_index), MASK_ALPHA);
                            }
                        }
                    }
                }
                Err(e) => self.inference_error(Task::Segmentation, &e),
            }
        }

        if let Some(result) = classification {
            match result {
                Ok(r) => {
                    let model = self
                        .classifier
                        .as_ref()
                        .map_or("", |c| c.name())
                        .to_string();
                    self.sink
                        .classification(&frame.header, &model, &r, r.timings.total());
                }
                Err(e) => self.inference_error(Task::Classification, &e),
            }
        }

        self.caption_frame(frame, &image);

        if let Some(canvas) = overlay {
            self.sink.overlay(&frame.header, &canvas);
        }
        let done = Instant::now();
        let mut s = lock(&self.shared.stats);
        s.frames_processed += 1;
        push_bounded(&mut s.latencies, ms(done - frame.received));
        push_bounded(&mut s.inference, ms(done - t0));
        push_bounded(&mut s.processed_at, done);
    }

    /// A caption of the frame when one is due (`caption.rate`, with a captioning model).
    fn caption_frame(&mut self, frame: &Frame, image: &RgbImage) {
        let rate = self.params.blip.stream_rate;
        let now = Instant::now();
        if rate <= 0.0 || now < self.next_caption_at {
            return;
        }
        let Some(m) = self.captioner.as_ref() else {
            return;
        };
        self.next_caption_at = now + std::time::Duration::from_secs_f64(1.0 / rate);
        // the blip.* settings, as ~/caption's defaults (validated with the parameters)
        let config = match self.generation_config(Default::default()) {
            Ok(c) => c,
            Err(e) => return self.inference_error(Task::Caption, &e),
        };
        match m.caption(image, None, &config) {
            Ok(r) => {
                let model = m.name().to_string();
                self.sink
                    .caption(&frame.header, &model, &r, r.timings.total());
            }
            Err(e) => self.inference_error(Task::Caption, &e.to_string()),
        }
    }

    /// The stream vocabulary on one frame.
    pub(super) fn detect_frame(&mut self, image: &RgbImage) -> Result<DetectionResult, String> {
        if let Some(r) = self.detect_frame_images(image) {
            return r;
        }
        let queries = self.queries.clone();
        if queries.is_empty() {
            return Ok(DetectionResult {
                width: image.width(),
                height: image.height(),
                detections: Vec::new(),
                timings: Default::default(),
            });
        }
        let params = DetectParams {
            threshold: self.params.owlvit.score_threshold,
            nms_iou: self.params.owlvit.nms_iou,
        };
        let emb = self.query_embeddings(&queries, true)?;
        match &self.detector {
            Some(d) => d
                .detect_with_min_objectness(image, &emb, &params, self.min_objectness(d))
                .map_err(|e| e.to_string()),
            None => Err("no detection model".to_string()),
        }
    }

    /// `owlvit.min_objectness` for an OWLv2 checkpoint; OWL-ViT has no objectness (0: off).
    pub(super) fn min_objectness(&self, d: &Detector) -> f32 {
        if d.has_objectness() {
            self.params.owlvit.min_objectness
        } else {
            0.0
        }
    }

    /// The stream prompts on one frame.
    pub(super) fn segment_frame(&mut self, image: &RgbImage) -> Result<SegmentationResult, String> {
        let (prompts, images) = (self.prompts.clone(), Arc::clone(&self.image_prompts));
        let params = SegmentParams {
            threshold: self.params.clipseg.mask_threshold,
        };
        let emb = self.mixed_prompt_embeddings(&prompts, true, &images)?;
        match &self.segmenter {
            Some(s) => s.segment(image, &emb, &params).map_err(|e| e.to_string()),
            None => Err("no segmentation model".to_string()),
        }
    }

    /// 3D positions (and with `pointcloud.enabled` the points) of a frame's detections when
    /// depth is on (a frame without a depth pair is processed in 2D and counted).
    pub(super) fn frame_3d(
        &self,
        frame: &Frame,
        image: &RgbImage,
        r: &DetectionResult,
        segmentation: &Option<Result<SegmentationResult, String>>,
    ) -> FrameGeometry {
        let Some(sync) = &self.depth else {
            return (Vec::new(), Vec::new());
        };
        let stamp = stamp_ns(frame.header.sec, frame.header.nanosec);
        let pair = sync.wait_pair(stamp, image.dimensions());
        sync.count(&pair);
        let segmentation = segmentation.as_ref().and_then(|s| s.as_ref().ok());
        match pair {
            Ok(p) => {
                let clouds = if self.params.pointcloud_enabled {
                    self.clouds(&p, &r.detections, segmentation)
                } else {
                    Vec::new()
                };
                (self.positions(&p, &r.detections, segmentation), clouds)
            }
            Err(_) => (vec![None; r.detections.len()], Vec::new()),
        }
    }
}
