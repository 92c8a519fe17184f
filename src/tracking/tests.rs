//! Unit tests of the tracker's parts against numbers printed by ultralytics
//! (`scripts/make_tracking_fixtures.py`: `kalman.json`, `matching.json`), and of the behaviours
//! the parity sequences do not isolate.

use serde_json::Value;

use super::kalman_filter::{KalmanFilterXyah, Measurement, StateCovariance, StateMean};
use super::matching::{fuse_score, iou_distance, linear_assignment, CostMatrix};
use super::{ByteTrackConfig, ByteTracker, LabelledBox, LabelledTracker, ScoredBox};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/reference/tracking"
);

fn load(name: &str) -> Value {
    let path = format!("{FIXTURES}/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn mean_of(v: &Value) -> StateMean {
    StateMean::from_vec(f64s(v))
}

fn cov_of(v: &Value) -> StateCovariance {
    let rows: Vec<f64> = v.as_array().unwrap().iter().flat_map(f64s).collect();
    StateCovariance::from_row_slice(&rows)
}

/// Relative to the largest magnitude of the reference (covariances span 1e-10 to 1e3).
fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12 * scale,
            "{what}[{k}]: {g} vs ultralytics {w}"
        );
    }
}

#[test]
fn kalman_filter_matches_ultralytics() {
    let fixture = load("kalman.json");
    let kf = KalmanFilterXyah::new();
    for case in fixture["cases"].as_array().unwrap() {
        let m = Measurement::from_vec(f64s(&case["measurement"]));
        let (mean, cov) = kf.initiate(&m);
        assert_close(
            "initiate mean",
            mean.as_slice(),
            mean_of(&case["initiate"]["mean"]).as_slice(),
        );
        assert_close(
            "initiate cov",
            cov.as_slice(),
            cov_of(&case["initiate"]["covariance"]).as_slice(),
        );

        let (mean, cov) = kf.predict(&mean, &cov);
        assert_close(
            "predict mean",
            mean.as_slice(),
            mean_of(&case["predict"]["mean"]).as_slice(),
        );
        assert_close(
            "predict cov",
            cov.as_slice(),
            cov_of(&case["predict"]["covariance"]).as_slice(),
        );

        let z = Measurement::from_vec(f64s(&case["update_measurement"]));
        let (mean, cov) = kf.update(&mean, &cov, &z).unwrap();
        assert_close(
            "update mean",
            mean.as_slice(),
            mean_of(&case["update"]["mean"]).as_slice(),
        );
        assert_close(
            "update cov",
            cov.as_slice(),
            cov_of(&case["update"]["covariance"]).as_slice(),
        );

        let (pm, pc) = kf.project(&mean, &cov);
        assert_close(
            "project mean",
            pm.as_slice(),
            &f64s(&case["project"]["mean"]),
        );
        let want: Vec<f64> = case["project"]["covariance"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(f64s)
            .collect();
        assert_close("project cov", pc.transpose().as_slice(), &want);

        let mut lost = mean;
        lost[7] = 0.0;
        let (mean, cov) = kf.predict(&lost, &cov);
        let want = &case["predict_lost"];
        assert_close(
            "lost mean",
            mean.as_slice(),
            mean_of(&want["mean"]).as_slice(),
        );
        assert_close(
            "lost cov",
            cov.as_slice(),
            cov_of(&want["covariance"]).as_slice(),
        );
    }
}

fn boxes(v: &Value) -> Vec<[f32; 4]> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let b = f64s(b);
            [b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32]
        })
        .collect()
}

#[test]
fn iou_distance_and_fuse_score_match_ultralytics() {
    let fixture = load("matching.json");
    let iou = &fixture["iou"];
    let (a, b) = (boxes(&iou["a"]), boxes(&iou["b"]));
    let mut cost = iou_distance(&a, &b);
    let want: Vec<f32> = iou["distance"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(f64s)
        .map(|x| x as f32)
        .collect();
    // the same float32 operations in the same order: bit-equal
    assert_eq!(cost.data, want);
    let scores: Vec<f32> = f64s(&iou["scores"]).into_iter().map(|x| x as f32).collect();
    fuse_score(&mut cost, &scores);
    let want: Vec<f32> = iou["fused"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(f64s)
        .map(|x| x as f32)
        .collect();
    assert_eq!(cost.data, want);
}

#[test]
fn linear_assignment_matches_lap_cost_limit() {
    let fixture = load("matching.json");
    let cases = fixture["assignment"].as_array().unwrap();
    assert!(cases.len() > 80);
    for (k, case) in cases.iter().enumerate() {
        let rows: Vec<Vec<f64>> = case["cost"].as_array().unwrap().iter().map(f64s).collect();
        let cost = CostMatrix {
            rows: rows.len(),
            cols: rows[0].len(),
            data: rows.iter().flatten().map(|&x| x as f32).collect(),
        };
        // float32 costs, as the tracker's (lap solves them in float64, as here)
        let thresh = case["thresh"].as_f64().unwrap();
        let got = linear_assignment(&cost, thresh);
        let pairs: Vec<(usize, usize)> = case["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_u64().unwrap() as usize,
                    p[1].as_u64().unwrap() as usize,
                )
            })
            .collect();
        let idx = |v: &Value| -> Vec<usize> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect()
        };
        assert_eq!(
            got.matches, pairs,
            "case {k} ({}): {rows:?} at {thresh}",
            case["kind"]
        );
        assert_eq!(got.unmatched_a, idx(&case["unmatched_a"]), "case {k}");
        assert_eq!(got.unmatched_b, idx(&case["unmatched_b"]), "case {k}");
    }
}

#[test]
fn empty_assignment() {
    let cost = CostMatrix {
        rows: 3,
        cols: 0,
        data: vec![],
    };
    let a = linear_assignment(&cost, 0.8);
    assert!(a.matches.is_empty());
    assert_eq!(a.unmatched_a, vec![0, 1, 2]);
    assert!(a.unmatched_b.is_empty());
}

fn sb(x: f32, y: f32, score: f32) -> ScoredBox {
    ScoredBox {
        xyxy: [x, y, x + 40.0, y + 60.0],
        score,
    }
}

#[test]
fn first_frame_confirms_at_once_later_frames_after_a_second_match() {
    let mut t = ByteTracker::new(ByteTrackConfig::default()).unwrap();
    let out = t.update(&[sb(10.0, 10.0, 0.9)]);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].track_id, out[0].index), (1, 0));
    // a box appearing on frame 2: unconfirmed (no id out), confirmed on frame 3
    let out = t.update(&[sb(11.0, 10.0, 0.9), sb(300.0, 200.0, 0.8)]);
    assert_eq!(
        out.iter()
            .map(|t| (t.track_id, t.index))
            .collect::<Vec<_>>(),
        vec![(1, 0)]
    );
    let out = t.update(&[sb(300.0, 201.0, 0.8), sb(12.0, 10.0, 0.9)]);
    let mut got: Vec<(u64, usize)> = out.iter().map(|t| (t.track_id, t.index)).collect();
    got.sort();
    assert_eq!(got, vec![(1, 1), (2, 0)]);
}

#[test]
fn low_scores_continue_but_never_start_tracks() {
    let mut t = ByteTracker::new(ByteTrackConfig::default()).unwrap();
    let out = t.update(&[sb(10.0, 10.0, 0.2), sb(100.0, 10.0, 0.9)]);
    assert_eq!(out.iter().map(|t| t.index).collect::<Vec<_>>(), vec![1]);
    let out = t.update(&[sb(101.0, 10.0, 0.15), sb(400.0, 10.0, 0.15)]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].index, 0);
    // at or below track_low_thresh: ignored, the track is lost
    assert!(t.update(&[sb(102.0, 10.0, 0.1)]).is_empty());
}

#[test]
fn degenerate_and_non_finite_boxes_get_no_track() {
    let mut t = ByteTracker::new(ByteTrackConfig::default()).unwrap();
    let out = t.update(&[
        ScoredBox {
            xyxy: [10.0, 10.0, 10.0, 50.0],
            score: 0.9,
        },
        ScoredBox {
            xyxy: [10.0, 10.0, f32::NAN, 50.0],
            score: 0.9,
        },
        ScoredBox {
            xyxy: [10.0, 10.0, 30.0, 50.0],
            score: f32::NAN,
        },
        ScoredBox {
            xyxy: [10.0, 10.0, f32::INFINITY, 50.0],
            score: 0.9,
        },
        sb(100.0, 100.0, 0.9),
    ]);
    assert_eq!(out.iter().map(|t| t.index).collect::<Vec<_>>(), vec![4]);
}

#[test]
fn labels_have_their_own_tracks_and_unique_ids() {
    let mut t = LabelledTracker::new(ByteTrackConfig::default()).unwrap();
    let frame = |dx: f32| {
        [
            LabelledBox {
                label: "cup",
                xyxy: [10.0 + dx, 10.0, 50.0 + dx, 70.0],
                score: 0.9,
            },
            LabelledBox {
                label: "person",
                xyxy: [10.0 + dx, 10.0, 50.0 + dx, 70.0],
                score: 0.8,
            },
            LabelledBox {
                label: "cup",
                xyxy: [200.0, 10.0, 250.0, 70.0],
                score: 0.7,
            },
        ]
    };
    let first = t.update(&frame(0.0));
    let ids: Vec<u64> = first.iter().map(|t| t.unwrap().track_id).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{ids:?}");
    let second = t.update(&frame(1.0));
    assert_eq!(
        second
            .iter()
            .map(|t| t.unwrap().track_id)
            .collect::<Vec<_>>(),
        ids
    );
    // a label first seen on frame 3 waits for a second match, as if its tracker had run from frame 1
    let third = t.update(&[LabelledBox {
        label: "mug",
        xyxy: [400.0, 300.0, 440.0, 360.0],
        score: 0.9,
    }]);
    assert_eq!(third, vec![None]);
    let fourth = t.update(&[LabelledBox {
        label: "mug",
        xyxy: [401.0, 300.0, 441.0, 360.0],
        score: 0.9,
    }]);
    assert!(fourth[0].unwrap().track_id > *ids.iter().max().unwrap());
    assert_eq!(t.labels().collect::<Vec<_>>(), vec!["cup", "mug", "person"]);
}

#[test]
fn lost_tracks_go_after_the_buffer() {
    let config = ByteTrackConfig {
        track_buffer: 5,
        ..ByteTrackConfig::default()
    };
    assert_eq!(config.max_time_lost(), 5);
    let mut t = LabelledTracker::new(config).unwrap();
    let b = [LabelledBox {
        label: "a",
        xyxy: [10.0, 10.0, 50.0, 70.0],
        score: 0.9,
    }];
    let id = t.update(&b)[0].unwrap().track_id;
    for _ in 0..5 {
        t.update(&[]);
    }
    assert_eq!(
        t.update(&b)[0].unwrap().track_id,
        id,
        "back within the buffer"
    );
    for _ in 0..7 {
        t.update(&[]);
    }
    assert_eq!(
        t.labels().count(),
        0,
        "the label's tracker holds nothing and is dropped"
    );
    assert_eq!(t.update(&b), vec![None], "a new, unconfirmed track");
}

#[test]
fn frame_rate_scales_the_buffer() {
    let config = ByteTrackConfig {
        frame_rate: 15.0,
        ..ByteTrackConfig::default()
    };
    assert_eq!(config.max_time_lost(), 15);
    let config = ByteTrackConfig {
        frame_rate: 10.0,
        track_buffer: 10,
        ..ByteTrackConfig::default()
    };
    assert_eq!(config.max_time_lost(), 3); // int(3.33)
}

#[test]
fn invalid_parameters_are_named() {
    for (config, name) in [
        (
            ByteTrackConfig {
                track_high_thresh: 1.5,
                ..Default::default()
            },
            "track_high_thresh",
        ),
        (
            ByteTrackConfig {
                track_low_thresh: f64::NAN,
                ..Default::default()
            },
            "track_low_thresh",
        ),
        (
            ByteTrackConfig {
                match_thresh: 0.0,
                ..Default::default()
            },
            "match_thresh",
        ),
        (
            ByteTrackConfig {
                frame_rate: -1.0,
                ..Default::default()
            },
            "frame_rate",
        ),
    ] {
        let err = ByteTracker::new(config).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn config_reads_bytetrack_yaml_names() {
    let yaml = "track_high_thresh: 0.5\ntrack_buffer: 60\nfuse_score: false\n";
    let config: ByteTrackConfig = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(config.track_high_thresh, 0.5);
    assert_eq!(config.track_buffer, 60);
    assert!(!config.fuse_score);
    assert_eq!(config.match_thresh, 0.8);
}

#[test]
fn reset_restarts_ids() {
    let mut t = ByteTracker::new(ByteTrackConfig::default()).unwrap();
    t.update(&[sb(10.0, 10.0, 0.9)]);
    t.reset();
    assert_eq!(t.frame_id(), 0);
    assert_eq!(t.update(&[sb(100.0, 10.0, 0.9)])[0].track_id, 1);
}

#[test]
fn set_config_keeps_tracks_and_ids() {
    let mut t = LabelledTracker::new(ByteTrackConfig::default()).unwrap();
    let b = |dx: f32| {
        [LabelledBox {
            label: "a",
            xyxy: [10.0 + dx, 10.0, 50.0 + dx, 70.0],
            score: 0.9,
        }]
    };
    let id = t.update(&b(0.0))[0].unwrap().track_id;
    let bad = ByteTrackConfig {
        track_low_thresh: 2.0,
        ..ByteTrackConfig::default()
    };
    assert!(t.set_config(bad).is_err());
    assert_eq!(
        t.config(),
        &ByteTrackConfig::default(),
        "an invalid config changes nothing"
    );
    t.set_config(ByteTrackConfig {
        track_buffer: 2,
        ..ByteTrackConfig::default()
    })
    .unwrap();
    assert_eq!(t.update(&b(1.0))[0].unwrap().track_id, id);
    // lost on frame 3, removed on frame 5 (5 - 2 > 2), out of the lists on frame 6
    for _ in 0..3 {
        t.update(&[]);
    }
    assert_eq!(t.labels().count(), 1);
    t.update(&[]);
    assert_eq!(
        t.labels().count(),
        0,
        "the new buffer of 2 frames applies to the existing track"
    );
}
