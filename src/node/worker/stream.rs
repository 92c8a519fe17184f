//! The camera stream: each frame through the enabled models, with the stream's vocabulary and
//! prompts, its results and overlay to the sink, and its timings to the statistics.

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use nalgebra::Point3;
use vlm_perception::pipeline::{
    DetectInput, DetectMode, DetectParams, DetectionResult, Detector, SegmentInput, SegmentParams,
    SegmentationResult,
};
use vlm_perception::vision::depth::Object3d;
use vlm_perception::vision::draw::{draw_labelled_box, palette_color, tint_mask};

use super::cameras::{DetectionVocab, SegmentationVocab};
use super::diagnostics::push_bounded;
use super::{lock, ms, Frame, FrameDetections, Sink, Task, Worker};

/// Per detection its 3D box and its points (see [`FrameDetections`]).
type FrameGeometry = (Vec<Option<Object3d>>, Vec<Option<Vec<Point3<f32>>>>);
use crate::convert::decode;
use crate::depth_sync::stamp_ns;

/// Opacity of segmentation masks in the overlay.
const MASK_ALPHA: f32 = 0.45;

impl<S: Sink> Worker<S> {
    /// The due frames of one or more cameras: decoded, through each enabled model as one batch
    /// (one vision pass for all), then each frame's results to its camera's outputs.
    pub(super) fn process_frames(&mut self, frames: &[Arc<Frame>]) {
        let t0 = Instant::now();
        let mut batch: Vec<(&Frame, RgbImage)> = Vec::with_capacity(frames.len());
        for frame in frames {
            match decode(&frame.image, &frame.source, self.params.camera.max_pixels) {
                Ok(img) => batch.push((frame, img)),
                Err(e) => self.bad_frame(frame.camera, &e),
            }
        }
        if batch.is_empty() {
            return;
        }
        let cameras: Vec<usize> = batch.iter().map(|(f, _)| f.camera).collect();
        let images: Vec<&RgbImage> = batch.iter().map(|(_, img)| img).collect();
        let mut detections = match self.detector.is_some() {
            true => self.detect_frames(&cameras, &images),
            false => Vec::new(),
        }
        .into_iter();
        let mut segmentations = match self.segmenter.is_some() {
            true => self.segment_frames(&cameras, &images),
            false => Vec::new(),
        }
        .into_iter();
        let batch_time = t0.elapsed();
        for (frame, image) in &batch {
            let t1 = Instant::now();
            let detection = detections.next().flatten();
            let segmentation = segmentations.next().flatten();
            self.finish_frame(frame, image, detection, segmentation);
            let done = Instant::now();
            let mut s = lock(&self.shared.stats);
            push_bounded(&mut s.latencies, ms(done - frame.received));
            push_bounded(&mut s.inference, ms(batch_time + (done - t1)));
            push_bounded(&mut s.processed_at, done);
            if let Some(c) = s.cameras.get_mut(frame.camera) {
                c.frames_processed += 1;
                push_bounded(&mut c.latencies, ms(done - frame.received));
                push_bounded(&mut c.processed_at, done);
            }
        }
    }

    /// One frame's results after the batched passes: 3D, tracks, classification, caption and
    /// overlay, to its camera's outputs.
    fn finish_frame(
        &mut self,
        frame: &Frame,
        image: &RgbImage,
        detections: Option<Result<DetectionResult, String>>,
        segmentation: Option<Result<SegmentationResult, String>>,
    ) {
        let camera = frame.camera;
        let mut overlay = self.params.overlay.then(|| image.clone());
        let classification = (self.classifier.is_some() && !self.params.clip.labels.is_empty())
            .then(|| self.classify_frame(image));

        if let Some(result) = detections {
            match result {
                Ok(r) => {
                    let (positions, clouds) = self.frame_3d(frame, image, &r, &segmentation);
                    let tracks = match (self.params.tracking.enabled, self.cameras.get_mut(camera))
                    {
                        (true, Some(c)) => c.tracks.update(&frame.header, &r.detections),
                        _ => Vec::new(),
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
                        camera,
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
                        .segmentation(camera, &frame.header, &model, &r, r.timings.total());
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
                        .classification(camera, &frame.header, &model, &r, r.timings.total());
                }
                Err(e) => self.inference_error(Task::Classification, &e),
            }
        }

        self.caption_frame(frame, image);

        if let Some(canvas) = overlay {
            self.sink.overlay(camera, &frame.header, &canvas);
        }
    }

    /// A caption of the frame when one is due (`caption.rate`, with a captioning model).
    fn caption_frame(&mut self, frame: &Frame, image: &RgbImage) {
        let rate = self.params.blip.stream_rate;
        let now = Instant::now();
        let Some(camera) = self.cameras.get_mut(frame.camera) else {
            return;
        };
        if rate <= 0.0 || now < camera.next_caption_at || self.captioner.is_none() {
            return;
        }
        camera.next_caption_at = now + std::time::Duration::from_secs_f64(1.0 / rate);
        // the blip.* settings, as ~/caption's defaults (validated with the parameters)
        let config = match self.generation_config(Default::default()) {
            Ok(c) => c,
            Err(e) => return self.inference_error(Task::Caption, &e),
        };
        let Some(m) = self.captioner.as_ref() else {
            return;
        };
        match m.caption(image, None, &config) {
            Ok(r) => {
                let model = m.name().to_string();
                self.sink
                    .caption(frame.camera, &frame.header, &model, &r, r.timings.total());
            }
            Err(e) => self.inference_error(Task::Caption, &e.to_string()),
        }
    }

    /// The detection vocabulary of `camera`: its own, or the shared one.
    pub(super) fn detection_vocab(&self, camera: usize) -> &DetectionVocab {
        self.cameras
            .get(camera)
            .and_then(|c| c.detection.as_ref())
            .unwrap_or(&self.detection_vocab)
    }

    /// The segmentation prompts of `camera`: its own, or the shared ones.
    pub(super) fn segmentation_vocab(&self, camera: usize) -> &SegmentationVocab {
        self.cameras
            .get(camera)
            .and_then(|c| c.segmentation.as_ref())
            .unwrap_or(&self.segmentation_vocab)
    }

    /// Each camera's detection vocabulary on its frame, all frames in one vision pass. Per
    /// frame its result (`None`: no vocabulary, nothing to publish but an empty array).
    fn detect_frames(
        &mut self,
        cameras: &[usize],
        images: &[&RgbImage],
    ) -> Vec<Option<Result<DetectionResult, String>>> {
        let params = DetectParams {
            threshold: self.params.owlvit.score_threshold,
            nms_iou: self.params.owlvit.nms_iou,
        };
        let guided = DetectParams::image_guided();
        // Per frame its embeddings and mode, or why it has none.
        let mut prepared = Vec::with_capacity(cameras.len());
        for &camera in cameras {
            let vocab = self.detection_vocab(camera).clone();
            prepared.push(match vocab.images {
                Some(emb) => Ok(Some((emb, true))),
                None if vocab.queries.is_empty() => Ok(None),
                None => self
                    .query_embeddings(&vocab.queries, true)
                    .map(|e| Some((e, false))),
            });
        }
        let Some(d) = self.detector.as_ref() else {
            return Vec::new();
        };
        let min_objectness = self.min_objectness(d);
        let inputs: Vec<DetectInput<'_>> = prepared
            .iter()
            .zip(images)
            .filter_map(|(p, image)| match p {
                Ok(Some((emb, guided_mode))) => Some(DetectInput {
                    image,
                    queries: emb,
                    params: if *guided_mode { &guided } else { &params },
                    mode: if *guided_mode {
                        DetectMode::ImageGuided
                    } else {
                        DetectMode::Text { min_objectness }
                    },
                }),
                _ => None,
            })
            .collect();
        let mut batched = batch_results(&inputs, |i| d.detect_batch(i));
        prepared
            .into_iter()
            .zip(images)
            .map(|(p, image)| match p {
                Err(e) => Some(Err(e)),
                Ok(None) => Some(Ok(DetectionResult {
                    width: image.width(),
                    height: image.height(),
                    detections: Vec::new(),
                    timings: Default::default(),
                })),
                Ok(Some(_)) => batched.next(),
            })
            .collect()
    }

    /// `owlvit.min_objectness` for an OWLv2 checkpoint; OWL-ViT has no objectness (0: off).
    pub(super) fn min_objectness(&self, d: &Detector) -> f32 {
        if d.has_objectness() {
            self.params.owlvit.min_objectness
        } else {
            0.0
        }
    }

    /// Each camera's segmentation prompts on its frame, all frames in one vision pass. Per
    /// frame its result (`None`: no prompts, no segmentation on that camera).
    fn segment_frames(
        &mut self,
        cameras: &[usize],
        images: &[&RgbImage],
    ) -> Vec<Option<Result<SegmentationResult, String>>> {
        let params = SegmentParams {
            threshold: self.params.clipseg.mask_threshold,
        };
        let mut prepared = Vec::with_capacity(cameras.len());
        for &camera in cameras {
            let vocab = self.segmentation_vocab(camera).clone();
            prepared.push(if vocab.is_empty() {
                None
            } else {
                Some(self.mixed_prompt_embeddings(&vocab.prompts, true, &vocab.images))
            });
        }
        let Some(s) = self.segmenter.as_ref() else {
            return Vec::new();
        };
        let inputs: Vec<SegmentInput<'_>> = prepared
            .iter()
            .zip(images)
            .filter_map(|(p, image)| match p {
                Some(Ok(prompts)) => Some(SegmentInput {
                    image,
                    prompts,
                    params: &params,
                }),
                _ => None,
            })
            .collect();
        let mut batched = batch_results(&inputs, |i| s.segment_batch(i));
        prepared
            .into_iter()
            .map(|p| match p {
                None => None,
                Some(Err(e)) => Some(Err(e)),
                Some(Ok(_)) => batched.next(),
            })
            .collect()
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
        let Some(sync) = self
            .cameras
            .get(frame.camera)
            .and_then(|c| c.depth.as_ref())
        else {
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

/// A batch's results one by one. A batch that fails (one camera's input refused) runs again
/// frame by frame, so that each frame gets its own result or error and the other cameras are
/// not held back by one.
fn batch_results<I, R>(
    inputs: &[I],
    run: impl Fn(&[I]) -> vlm_perception::Result<Vec<R>>,
) -> std::vec::IntoIter<Result<R, String>> {
    match run(inputs) {
        Ok(r) => r.into_iter().map(Ok).collect::<Vec<_>>(),
        Err(e) if inputs.len() <= 1 => vec![Err(e.to_string())],
        Err(_) => inputs
            .iter()
            .map(|one| match run(std::slice::from_ref(one)) {
                Ok(mut r) if r.len() == 1 => Ok(r.remove(0)),
                Ok(_) => Err("the model returned no result for the frame".into()),
                Err(e) => Err(e.to_string()),
            })
            .collect(),
    }
    .into_iter()
}
