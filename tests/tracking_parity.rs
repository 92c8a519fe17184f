//! ByteTrack parity with ultralytics: the synthetic sequences of
//! `scripts/make_tracking_fixtures.py` (ultralytics 8.4.190's `BYTETracker`, one per label) go
//! through `LabelledTracker`, and on every frame of every sequence:
//! - exactly the same input boxes get a track;
//! - the ids are the same up to one renaming per sequence (ultralytics numbers each label's
//!   tracker from 1, `LabelledTracker` shares one counter): a bijection, consistent over frames;
//! - the track boxes (Kalman state) and scores agree to 1e-4 px / exactly;
//! - per label, `ByteTracker` returns the tracks in ultralytics' order.
//!
//! Also a rough timing of one update with ~20 boxes (printed; the benchmark tool gives the real
//! numbers).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use serde::Deserialize;
use vlm_perception::tracking::{
    ByteTrackConfig, ByteTracker, LabelledBox, LabelledTracker, ScoredBox, Track,
};

/// Track boxes: float32 outputs of float64 states (one float32 step below 1024 px is 6.1e-5).
const BOX_TOL: f32 = 1e-4;

const SEQUENCES: &[&str] = &[
    "crossing",
    "occlusion_return",
    "gone_past_buffer",
    "low_scores",
    "appear_disappear",
    "two_labels",
    "clutter",
    "custom_args",
];

#[derive(Deserialize)]
struct Sequence {
    name: String,
    args: ByteTrackConfig,
    labels: Vec<String>,
    exercised: BTreeMap<String, u64>,
    frames: Vec<Frame>,
}

#[derive(Deserialize)]
struct Frame {
    detections: Vec<Detection>,
    /// Per label, ultralytics' output rows in its order.
    tracks: BTreeMap<String, Vec<RefTrack>>,
}

#[derive(Deserialize)]
struct Detection {
    xyxy: [f32; 4],
    score: f32,
    label: String,
}

#[derive(Deserialize)]
struct RefTrack {
    index: usize,
    track_id: u64,
    xyxy: [f32; 4],
    score: f32,
}

fn load(name: &str) -> Sequence {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference/tracking")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn max_box_diff(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A renaming of ids, checked to stay one-to-one over the whole sequence.
#[derive(Default)]
struct Renaming {
    forward: HashMap<(String, u64), u64>,
    backward: HashMap<u64, (String, u64)>,
}

impl Renaming {
    fn check(&mut self, reference: (String, u64), ours: u64, at: &str) {
        let f = *self.forward.entry(reference.clone()).or_insert(ours);
        let b = self
            .backward
            .entry(ours)
            .or_insert_with(|| reference.clone())
            .clone();
        assert!(
            f == ours && b == reference,
            "{at}: ultralytics id {reference:?} is our {ours}, but earlier it was our {f} (and our {ours} was {b:?})"
        );
    }
}

#[test]
fn labelled_tracker_matches_ultralytics_on_every_frame() {
    let mut worst = 0.0f32;
    let (mut frames, mut tracked) = (0usize, 0usize);
    for name in SEQUENCES {
        let seq = load(name);
        assert_eq!(&seq.name, name);
        let mut tracker = LabelledTracker::new(seq.args.clone()).unwrap();
        let mut renaming = Renaming::default();
        for (f, frame) in seq.frames.iter().enumerate() {
            let at = format!("{name} frame {}", f + 1);
            let input: Vec<LabelledBox> = frame
                .detections
                .iter()
                .map(|d| LabelledBox {
                    label: &d.label,
                    xyxy: d.xyxy,
                    score: d.score,
                })
                .collect();
            let ours = tracker.update(&input);
            assert_eq!(ours.len(), input.len(), "{at}");

            let mut want: Vec<Option<(&str, &RefTrack)>> = vec![None; input.len()];
            for (label, rows) in &frame.tracks {
                for row in rows {
                    assert_eq!(&frame.detections[row.index].label, label, "{at}: fixture");
                    assert!(
                        want[row.index].is_none(),
                        "{at}: fixture gives box {} two tracks",
                        row.index
                    );
                    want[row.index] = Some((label, row));
                }
            }
            for (i, (got, want)) in ours.iter().zip(&want).enumerate() {
                match (got, want) {
                    (None, None) => {}
                    (Some(g), Some((label, w))) => {
                        renaming.check(
                            ((*label).to_owned(), w.track_id),
                            g.track_id,
                            &format!("{at} box {i}"),
                        );
                        assert_eq!(g.index, i, "{at} box {i}");
                        let d = max_box_diff(&g.xyxy, &w.xyxy);
                        assert!(
                            d <= BOX_TOL,
                            "{at} box {i}: {:?} vs ultralytics {:?} ({d} px)",
                            g.xyxy,
                            w.xyxy
                        );
                        assert_eq!(g.score, w.score, "{at} box {i}");
                        worst = worst.max(d);
                        tracked += 1;
                    }
                    (g, w) => panic!(
                        "{at} box {i} ({:?}): ours {:?}, ultralytics {:?}",
                        frame.detections[i].xyxy,
                        g.map(|t| t.track_id),
                        w.map(|(l, t)| (l, t.track_id))
                    ),
                }
            }
            frames += 1;
        }
        println!(
            "{name}: {} frames, {} track ids, exercised {:?}",
            seq.frames.len(),
            renaming.forward.len(),
            seq.exercised
        );
    }
    println!(
        "{frames} frames, {tracked} tracked boxes: all equal; worst box difference {worst:.2e} px"
    );
}

/// Per label, a plain `ByteTracker` gives ultralytics' ids exactly (both count from 1 per
/// tracker) and its rows in the same order.
#[test]
fn byte_tracker_gives_ultralytics_rows_in_order() {
    for name in SEQUENCES {
        let seq = load(name);
        for label in &seq.labels {
            let mut tracker = ByteTracker::new(seq.args.clone()).unwrap();
            for (f, frame) in seq.frames.iter().enumerate() {
                let index: Vec<usize> = (0..frame.detections.len())
                    .filter(|&i| &frame.detections[i].label == label)
                    .collect();
                let input: Vec<ScoredBox> = index
                    .iter()
                    .map(|&i| ScoredBox {
                        xyxy: frame.detections[i].xyxy,
                        score: frame.detections[i].score,
                    })
                    .collect();
                let got: Vec<Track> = tracker.update(&input);
                let want = &frame.tracks[label];
                let got_rows: Vec<(u64, usize)> =
                    got.iter().map(|t| (t.track_id, index[t.index])).collect();
                let want_rows: Vec<(u64, usize)> =
                    want.iter().map(|t| (t.track_id, t.index)).collect();
                assert_eq!(got_rows, want_rows, "{name} `{label}` frame {}", f + 1);
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        max_box_diff(&g.xyxy, &w.xyxy) <= BOX_TOL,
                        "{name} frame {}",
                        f + 1
                    );
                }
            }
        }
    }
}

#[test]
fn fixtures_exercise_every_path() {
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for name in SEQUENCES {
        for (k, v) in load(name).exercised {
            *total.entry(k).or_default() += v;
        }
    }
    for path in [
        "refind",
        "refind_after_removal",
        "second",
        "unconfirmed_removed",
        "removed",
        "duplicates",
    ] {
        assert!(
            total.get(path).copied().unwrap_or(0) > 0,
            "no sequence exercises `{path}`: {total:?}"
        );
    }
}

/// One update of a frame with ~20 boxes (the `clutter` sequence: 20 objects, two false positives
/// a frame), after the tracks have formed. A rough figure for the report; not a benchmark.
#[test]
fn time_one_update_with_twenty_boxes() {
    let seq = load("clutter");
    let frames: Vec<Vec<ScoredBox>> = seq
        .frames
        .iter()
        .map(|f| {
            f.detections
                .iter()
                .map(|d| ScoredBox {
                    xyxy: d.xyxy,
                    score: d.score,
                })
                .collect()
        })
        .collect();
    let mean_boxes = frames.iter().map(Vec::len).sum::<usize>() as f64 / frames.len() as f64;
    let mut per_update = Vec::new();
    for _ in 0..20 {
        let mut tracker = ByteTracker::new(seq.args.clone()).unwrap();
        for f in &frames[..10] {
            tracker.update(f);
        }
        let start = Instant::now();
        for f in &frames[10..] {
            std::hint::black_box(tracker.update(std::hint::black_box(f)));
        }
        per_update.push(start.elapsed().as_secs_f64() / (frames.len() - 10) as f64);
    }
    per_update.sort_by(f64::total_cmp);
    println!(
        "ByteTracker::update, {mean_boxes:.1} boxes a frame: median {:.1} us, min {:.1} us (over {} runs of {} frames)",
        per_update[per_update.len() / 2] * 1e6,
        per_update[0] * 1e6,
        per_update.len(),
        frames.len() - 10
    );
}
