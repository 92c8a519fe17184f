//! The planner-facing requests (`~/score`, `~/ground`) and the 3D positions of the stream's
//! detections, on the worker thread. One vision pass per model serves all phrases of a call;
//! the arithmetic is the library's ([`vlm_perception::pipeline::grounding`]).

use image::{GrayImage, RgbImage};
use nalgebra::Point3;
use vlm_perception::geometry::{grasp_pose, mask_in_box, object_points, GraspPose, GraspTarget};
use vlm_perception::pipeline::grounding::{
    act_pixel, phrase_scores, scene_description, ActPixel, DepthContext, PhraseScore,
};
use vlm_perception::pipeline::{validate_texts, Detection, SegmentParams, SegmentationResult};
use vlm_perception::vision::camera::PinholeCamera;
use vlm_perception::vision::depth::{DepthImage, Object3d, ObjectRegion};
use vlm_perception::vision::masks::MASK_OFF;

use super::tracks::NO_TRACK;
use super::{ImageArg, Outcome, Sink, Task, Worker};
use crate::convert::FrameHeader;
use crate::depth_sync::{camera_for, check_aligned, stamp_ns, DepthPair};

/// Where a request's depth comes from.
pub enum DepthArg {
    /// The depth image paired with the request's image by stamp (the stream's pairing).
    Stream,
    /// Sent with the request; `camera: None` means the latest received CameraInfo.
    Given {
        depth: Result<DepthImage, String>,
        camera: Option<Result<PinholeCamera, String>>,
    },
}

/// The stream's mask of a detection's phrase, when it segmented that phrase and the mask is not
/// empty.
fn phrase_mask<'a>(
    segmentation: Option<&'a SegmentationResult>,
    d: &Detection,
) -> Option<&'a GrayImage> {
    segmentation
        .and_then(|s| s.masks.iter().find(|m| m.label == d.label))
        .filter(|m| m.bbox.is_some())
        .map(|m| &m.mask)
}

/// `~/score`'s answer.
pub struct ScoreAnswer {
    pub scores: Vec<PhraseScore>,
    /// Per phrase, the 3D position of its best box.
    pub positions: Vec<Option<Object3d>>,
    /// Per phrase, the stream's track of its best box (on the latest frame; 0: none).
    pub tracks: Vec<u64>,
    pub scene: String,
    /// Why there are no 3D positions, when there are none.
    pub depth_note: Option<String>,
    /// With `with_caption`: the image's caption, or why there is none.
    pub caption: Option<Result<String, String>>,
}

/// One grounded phrase.
pub struct Target {
    pub detection: Detection,
    /// The stream's track of the box (on the latest frame; 0: none).
    pub track_id: u64,
    pub pixel: ActPixel,
    pub point: Option<Point3<f64>>,
    /// The gripper pose at `point` (with it), in the camera's optical frame until placed.
    pub grasp: Option<GraspPose>,
    /// The object's points when asked, in the camera's optical frame until placed.
    pub points: Option<Vec<Point3<f32>>>,
    pub mask: Option<GrayImage>,
}

/// `~/ground`'s answer.
pub struct GroundAnswer {
    pub pick: Target,
    pub place: Option<Target>,
    pub depth_note: Option<String>,
}

/// A request's `~/ground` arguments.
pub struct GroundArgs {
    pub pick: String,
    pub place: Option<String>,
    pub threshold: Option<f32>,
    pub masks: bool,
    /// Return each target's point cloud.
    pub points: bool,
}

impl<S: Sink> Worker<S> {
    /// The stream's track of `d` when it was found on a camera's last tracked frame (`header`).
    fn track_of(&self, header: &FrameHeader, d: &Detection) -> u64 {
        self.cameras
            .iter()
            .map(|c| c.tracks.track_of(header, d))
            .find(|&id| id != NO_TRACK)
            .unwrap_or(NO_TRACK)
    }

    /// The depth for an image of `camera` with `header` and `colour` = (width, height).
    pub(super) fn depth_for(
        &self,
        camera: usize,
        header: &FrameHeader,
        colour: (u32, u32),
        arg: DepthArg,
    ) -> Result<DepthPair, String> {
        let sync = self.cameras.get(camera).and_then(|c| c.depth.as_ref());
        match arg {
            DepthArg::Stream => match sync {
                Some(sync) => sync.pair(stamp_ns(header.sec, header.nanosec), colour),
                None => Err("depth is off (parameter `depth.enabled` is false)".into()),
            },
            DepthArg::Given { depth, camera } => {
                let depth = depth.map_err(|e| format!("the request's depth image: {e}"))?;
                let camera = match camera {
                    Some(c) => c.map_err(|e| format!("the request's camera_info: {e}"))?,
                    None => match sync {
                        Some(sync) => sync.camera()?,
                        None => {
                            return Err("the request has a depth image but no camera_info \
                                        (and depth is off, so none was received)"
                                .into())
                        }
                    },
                };
                check_aligned(colour, &depth)?;
                Ok(DepthPair {
                    camera: camera_for(&camera, colour)?,
                    depth: depth.into(),
                })
            }
        }
    }

    /// 3D positions of `detections`, using the mask of the segmentation prompt with the same
    /// text when segmentation ran on the frame.
    pub(super) fn positions(
        &self,
        pair: &DepthPair,
        detections: &[Detection],
        segmentation: Option<&SegmentationResult>,
    ) -> Vec<Option<Object3d>> {
        let ctx = DepthContext {
            camera: &pair.camera,
            depth: &pair.depth,
            sampling: &self.params.depth.sampling,
        };
        detections
            .iter()
            .map(|d| ctx.locate(d, phrase_mask(segmentation, d)).ok().flatten())
            .collect()
    }

    /// The points of a frame's detections (under their part of the phrase's mask, else the
    /// box's central part); `None` where too little depth.
    pub(super) fn clouds(
        &self,
        pair: &DepthPair,
        detections: &[Detection],
        segmentation: Option<&SegmentationResult>,
    ) -> Vec<Option<Vec<Point3<f32>>>> {
        detections
            .iter()
            .map(|d| {
                self.object_cloud(pair, d, phrase_mask(segmentation, d))
                    .ok()
                    .filter(|points| !points.is_empty())
            })
            .collect()
    }

    /// Best box per phrase, in one vision pass.
    fn best_boxes(
        &mut self,
        img: &RgbImage,
        phrases: &[String],
    ) -> Result<(Vec<Detection>, String, std::time::Duration), String> {
        validate_texts(phrases, "phrase").map_err(|e| e.to_string())?;
        let emb = self.query_embeddings(phrases, false)?;
        let d = self.loaded_detector()?;
        let r = d.best_per_query(img, &emb).map_err(|e| e.to_string())?;
        Ok((r.detections, d.name().to_string(), r.timings.total()))
    }

    pub(super) fn score(
        &mut self,
        image: ImageArg,
        depth: DepthArg,
        phrases: Vec<String>,
        threshold: Option<f32>,
        with_caption: bool,
    ) -> Result<Outcome<ScoreAnswer>, String> {
        let camera = image.camera;
        let (header, img) = self.image_for(Task::Detection, image)?;
        let (best, model, mut latency) = self.best_boxes(&img, &phrases)?;
        let caption = with_caption.then(|| {
            let config = self.generation_config(Default::default())?;
            let m = self.loaded_captioner()?;
            let r = m.caption(&img, None, &config).map_err(|e| e.to_string())?;
            latency += r.timings.total();
            Ok(r.text)
        });
        let threshold = threshold.unwrap_or(self.params.owlvit.score_threshold);
        let scores = phrase_scores(&best, &phrases, threshold);
        let (positions, depth_note) = match self.depth_for(camera, &header, img.dimensions(), depth)
        {
            Ok(pair) => {
                let positions = scores
                    .iter()
                    .map(|s| {
                        let d = s.detection.as_ref()?;
                        self.positions(&pair, std::slice::from_ref(d), None).pop()?
                    })
                    .collect();
                (positions, None)
            }
            Err(e) => (vec![None; scores.len()], Some(e)),
        };
        let tracks = scores
            .iter()
            .map(|s| {
                s.detection
                    .as_ref()
                    .map_or(NO_TRACK, |d| self.track_of(&header, d))
            })
            .collect();
        Ok(Outcome {
            header,
            model,
            latency,
            result: ScoreAnswer {
                scene: scene_description(&scores),
                scores,
                positions,
                tracks,
                depth_note,
                caption,
            },
        })
    }

    /// The points of one detected object: the depth under its part of the phrase's mask (the
    /// mask inside its box: one object of the phrase), else under its box's central part.
    fn object_cloud(
        &self,
        pair: &DepthPair,
        detection: &Detection,
        mask: Option<&GrayImage>,
    ) -> Result<Vec<Point3<f32>>, String> {
        let instance = mask
            .map(|m| mask_in_box(m, &detection.bbox))
            .filter(|m| m.pixels().any(|p| p[0] != MASK_OFF));
        let region = match &instance {
            Some(m) => ObjectRegion::Mask(m),
            None => ObjectRegion::Box(detection.bbox),
        };
        object_points(
            &pair.camera,
            &pair.depth,
            region,
            &self.params.depth.sampling,
            &self.params.pointcloud,
        )
        .map_err(|e| e.to_string())
    }

    pub(super) fn ground(
        &mut self,
        image: ImageArg,
        depth: DepthArg,
        args: GroundArgs,
    ) -> Result<Outcome<GroundAnswer>, String> {
        if self.detector.is_none() {
            return Err(self.unavailable(Task::Detection));
        }
        let mut phrases = vec![args.pick.clone()];
        phrases.extend(args.place.iter().cloned());
        let camera = image.camera;
        let (header, img) = self.image(image)?;
        let (best, model, mut latency) = self.best_boxes(&img, &phrases)?;
        let threshold = args.threshold.unwrap_or(self.params.owlvit.score_threshold);
        let scores = phrase_scores(&best, &phrases, threshold);
        if let Some(miss) = scores.iter().find(|s| !s.found) {
            return Err(format!(
                "no detection of `{}` above the threshold {threshold} (best score {:.3})",
                miss.phrase, miss.score
            ));
        }
        // The phrases' probability maps, when segmentation is available.
        let segmentation = if self.segmenter.is_some() {
            let emb = self.prompt_embeddings(&phrases, false)?;
            let params = SegmentParams {
                threshold: self.params.clipseg.mask_threshold,
            };
            let s = self.loaded_segmenter()?;
            let r = s.segment(&img, &emb, &params).map_err(|e| e.to_string())?;
            latency += r.timings.total();
            Some(r)
        } else {
            None
        };
        let (w, h) = img.dimensions();
        let pair = self.depth_for(camera, &header, (w, h), depth);
        let mut targets = Vec::with_capacity(scores.len());
        for (i, s) in scores.into_iter().enumerate() {
            let detection = s
                .detection
                .ok_or_else(|| format!("no boxes for `{}`", s.phrase))?;
            let mask = segmentation.as_ref().and_then(|r| r.masks.get(i));
            let pixel = act_pixel(&detection, mask.map(|m| m.probabilities.as_slice()), w, h)
                .map_err(|e| e.to_string())?;
            let point = match &pair {
                Ok(p) => DepthContext {
                    camera: &p.camera,
                    depth: &p.depth,
                    sampling: &self.params.depth.sampling,
                }
                .point_at(pixel.x, pixel.y)
                .map_err(|e| e.to_string())?,
                Err(_) => None,
            };
            let (grasp, points) = match (&pair, point) {
                (Ok(p), Some(position)) => {
                    let shape = mask.map(|m| &m.mask);
                    let grasp = grasp_pose(
                        &p.camera,
                        &p.depth,
                        &self.params.depth.sampling,
                        &GraspTarget {
                            pixel: (pixel.x, pixel.y),
                            position,
                            bbox: detection.bbox,
                            mask: shape,
                        },
                        &self.params.grasp,
                    )
                    .map_err(|e| e.to_string())?;
                    let points = if args.points {
                        Some(self.object_cloud(p, &detection, shape)?)
                    } else {
                        None
                    };
                    (Some(grasp), points)
                }
                _ => (None, None),
            };
            targets.push(Target {
                track_id: self.track_of(&header, &detection),
                detection,
                pixel,
                point,
                grasp,
                points,
                mask: mask.filter(|_| args.masks).map(|m| m.mask.clone()),
            });
        }
        let mut targets = targets.into_iter();
        let pick = targets.next().ok_or("no pick target")?;
        Ok(Outcome {
            header,
            model,
            latency,
            result: GroundAnswer {
                pick,
                place: targets.next(),
                depth_note: pair.err(),
            },
        })
    }
}
