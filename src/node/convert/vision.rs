//! `vision_msgs` output (cargo feature `vision_msgs`): the detections as
//! `vision_msgs/Detection2DArray` (and `Detection3DArray` for the located ones), which RViz
//! plugins, Foxglove panels, Isaac ROS and yolo_ros consumers understand.

use r2r::geometry_msgs::msg::{Point, Pose, PoseWithCovariance, Quaternion};
use r2r::vision_msgs::msg as vision;
use vlm_perception::pipeline::DetectionResult;
use vlm_perception::vision::depth::Object3d;

use super::spatial::{object_pose, point, vector};
use super::FrameHeader;

fn hypothesis(label: &str, score: f32, position: Point) -> vision::ObjectHypothesisWithPose {
    vision::ObjectHypothesisWithPose {
        hypothesis: vision::ObjectHypothesis {
            class_id: label.to_string(),
            score: f64::from(score),
        },
        pose: PoseWithCovariance {
            pose: pose(position),
            ..Default::default()
        },
    }
}

/// `Detection2D.id` / `Detection3D.id`: the detection's track id, empty when it has none.
fn track_label(tracks: &[u64], i: usize) -> String {
    match super::track_at(tracks, i) {
        0 => String::new(),
        id => id.to_string(),
    }
}

fn pose(position: Point) -> Pose {
    Pose {
        position,
        orientation: Quaternion {
            x: 0.0,
            y: 0.0,
            z: 0.0,
            w: 1.0,
        },
    }
}

/// `results[0].hypothesis.class_id` = the query text, `score` in [0, 1], `bbox` centre/size in
/// pixels, header = the source image's; `id` = the detection's track id (empty: none).
pub fn detection_2d_array(
    header: &FrameHeader,
    result: &DetectionResult,
    tracks: &[u64],
) -> vision::Detection2DArray {
    vision::Detection2DArray {
        header: header.to_msg(),
        detections: result
            .detections
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (cx, cy) = d.bbox.center();
                vision::Detection2D {
                    header: header.to_msg(),
                    results: vec![hypothesis(&d.label, d.score, Point::default())],
                    bbox: vision::BoundingBox2D {
                        center: vision::Pose2D {
                            position: vision::Point2D {
                                x: f64::from(cx),
                                y: f64::from(cy),
                            },
                            theta: 0.0,
                        },
                        size_x: f64::from(d.bbox.width()),
                        size_y: f64::from(d.bbox.height()),
                    },
                    id: track_label(tracks, i),
                }
            })
            .collect(),
    }
}

/// The located detections; `header`: the frame of the positions (the target frame, else the
/// camera optical frame) at the image's stamp. The box is oriented along the camera's optical
/// axes (the identity in the camera frame). `None` when none was located.
pub fn detection_3d_array(
    header: &FrameHeader,
    result: &DetectionResult,
    positions: &[Option<Object3d>],
    tracks: &[u64],
) -> Option<vision::Detection3DArray> {
    let detections: Vec<vision::Detection3D> = result
        .detections
        .iter()
        .zip(positions)
        .enumerate()
        .filter_map(|(i, (d, o))| {
            let o = o.as_ref()?;
            Some(vision::Detection3D {
                header: header.to_msg(),
                results: vec![hypothesis(&d.label, d.score, point(&o.centre))],
                bbox: vision::BoundingBox3D {
                    center: object_pose(o),
                    size: vector(&o.size),
                },
                id: track_label(tracks, i),
            })
        })
        .collect();
    (!detections.is_empty()).then(|| vision::Detection3DArray {
        header: header.to_msg(),
        detections,
    })
}
