//! ultralytics' `BYTETracker` and `STrack` (`ultralytics/trackers/byte_tracker.py`,
//! `basetrack.py`, `utils/stracks.py`, 8.4.190), class-agnostic: one tracker follows the boxes of
//! one label. [`crate::tracking::LabelledTracker`] runs one per label.
//!
//! [`ByteTracker::update`] reads as ultralytics' `update`: Kalman predict of the confirmed and
//! lost tracks, first association with the high-score boxes, second association of the remaining
//! tracked tracks with the low-score boxes, the unconfirmed tracks with the high-score boxes left,
//! new tracks, stale lost tracks removed, then the end-of-frame bookkeeping
//! (`merge_track_pools`), list orders included.

use std::collections::{HashMap, HashSet, VecDeque};

use super::kalman_filter::{KalmanFilterXyah, Measurement, StateCovariance, StateMean};
use super::matching::{fuse_score, iou_distance, linear_assignment};
use super::{ByteTrackConfig, ScoredBox, Track};
use crate::error::Result;

/// Second association: IoU distance limit between a tracked track and a low-score box.
const SECOND_MATCH_THRESH: f64 = 0.5;
/// Unconfirmed tracks: cost limit with the high-score boxes left after the first association.
const UNCONFIRMED_MATCH_THRESH: f64 = 0.7;
/// `remove_duplicate_stracks`' `dup_thresh`: a tracked and a lost track closer than this IoU
/// distance (IoU > 0.85) are one object.
const DUPLICATE_IOU_DISTANCE: f32 = 0.15;
/// `merge_track_pools`' `removed_buffer`: how many removed track ids are remembered.
const REMOVED_BUFFER: usize = 1000;

/// Track ids, handed out from 1 in order. A [`ByteTracker`] owns one; a
/// [`crate::tracking::LabelledTracker`] shares one between its labels' trackers so that ids stay
/// unique across labels.
#[derive(Debug, Clone)]
pub(crate) struct TrackIds {
    next: u64,
}

impl Default for TrackIds {
    fn default() -> Self {
        Self { next: 1 }
    }
}

impl TrackIds {
    fn next_id(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }
}

/// `TrackState` (`New` is never stored: a box becomes a track `Tracked`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackState {
    Tracked,
    Lost,
    Removed,
}

/// A box of this frame that passed the score split, as ultralytics' detection `STrack`s.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// `_tlwh`: (left, top, width, height) as float32, computed as ultralytics does.
    tlwh: [f32; 4],
    score: f32,
    /// Index of the box in the frame's input.
    index: usize,
}

impl Candidate {
    /// `STrack.__init__` from the box as ultralytics receives it: `Boxes.xywh` in float32, then
    /// (after `parse_bboxes` makes it float64) `xywh2ltwh`, stored as float32. `None` for the
    /// boxes `_split_detections` drops (width or height not > 0), and for non-finite ones.
    fn new(xyxy: [f32; 4], score: f32, index: usize) -> Option<Self> {
        let [x1, y1, x2, y2] = xyxy;
        let (xc, yc, w, h) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1);
        let finite = xyxy.iter().all(|v| v.is_finite()) && score.is_finite();
        if !(finite && w > 0.0 && h > 0.0) {
            return None;
        }
        let left = (f64::from(xc) - f64::from(w) / 2.0) as f32;
        let top = (f64::from(yc) - f64::from(h) / 2.0) as f32;
        Some(Self {
            tlwh: [left, top, w, h],
            score,
            index,
        })
    }

    /// `xyxy` of a detection (no Kalman state yet): float32 `tlwh` with `ret[2:] += ret[:2]`.
    fn xyxy(&self) -> [f32; 4] {
        let [l, t, w, h] = self.tlwh;
        [l, t, l + w, t + h]
    }

    /// `tlwh_to_xyah` on the float32 `tlwh`, then float64 as the filter takes it.
    fn xyah(&self) -> Measurement {
        let [l, t, w, h] = self.tlwh;
        Measurement::new(
            f64::from(l + w / 2.0),
            f64::from(t + h / 2.0),
            f64::from(w / h),
            f64::from(h),
        )
    }
}

/// A track (`STrack` with a Kalman state).
#[derive(Debug, Clone)]
struct STrack {
    track_id: u64,
    /// Confirmed: matched on a second frame, or born on the tracker's first frame.
    is_activated: bool,
    state: TrackState,
    mean: StateMean,
    covariance: StateCovariance,
    /// Score of the last matched box.
    score: f32,
    /// Input index of the last matched box.
    index: usize,
    /// Last frame it was matched (`frame_id`, also `end_frame`).
    frame_id: u64,
    start_frame: u64,
}

impl STrack {
    /// `activate`: a new track from an unmatched high-score box, confirmed at once only on the
    /// tracker's first frame.
    fn activate(kf: &KalmanFilterXyah, det: &Candidate, frame_id: u64, ids: &mut TrackIds) -> Self {
        let (mean, covariance) = kf.initiate(&det.xyah());
        Self {
            track_id: ids.next_id(),
            is_activated: frame_id == 1,
            state: TrackState::Tracked,
            mean,
            covariance,
            score: det.score,
            index: det.index,
            frame_id,
            start_frame: frame_id,
        }
    }

    /// `update` (and `re_activate`, the same for BYTETracker without `new_id`): correct with the
    /// matched box; the track is confirmed and tracked.
    fn update(&mut self, kf: &KalmanFilterXyah, det: &Candidate, frame_id: u64) {
        let measurement = det.xyah();
        match kf.update(&self.mean, &self.covariance, &measurement) {
            Some((mean, covariance)) => {
                self.mean = mean;
                self.covariance = covariance;
            }
            // Singular projected covariance (a zero-height state): restart from the box.
            None => (self.mean, self.covariance) = kf.initiate(&measurement),
        }
        self.frame_id = frame_id;
        self.state = TrackState::Tracked;
        self.is_activated = true;
        self.score = det.score;
        self.index = det.index;
    }

    /// The box of the Kalman state (`xyxy` from `tlwh`), in float64.
    fn xyxy_f64(&self) -> [f64; 4] {
        let (cx, cy, a, h) = (self.mean[0], self.mean[1], self.mean[2], self.mean[3]);
        let w = a * h;
        let (x, y) = (cx - w / 2.0, cy - h / 2.0);
        [x, y, x + w, y + h]
    }

    /// The state box as ultralytics casts it: for IoU (`np.float32`) and in the output array.
    fn xyxy(&self) -> [f32; 4] {
        self.xyxy_f64().map(|v| v as f32)
    }

    /// The row ultralytics returns for this track (`result`).
    fn result(&self) -> Track {
        Track {
            track_id: self.track_id,
            xyxy: self.xyxy(),
            score: self.score,
            index: self.index,
        }
    }
}

/// Ids of removed tracks (`removed_stracks`, of which ultralytics only ever reads the ids),
/// capped at [`REMOVED_BUFFER`] entries, with a count per id for O(1) membership.
#[derive(Debug, Clone, Default)]
struct RemovedIds {
    order: VecDeque<u64>,
    counts: HashMap<u64, u32>,
}

impl RemovedIds {
    fn contains(&self, id: u64) -> bool {
        self.counts.contains_key(&id)
    }

    fn extend(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            self.order.push_back(id);
            *self.counts.entry(id).or_insert(0) += 1;
        }
        while self.order.len() > REMOVED_BUFFER {
            if let Some(old) = self.order.pop_front() {
                if let Some(count) = self.counts.get_mut(&old) {
                    *count -= 1;
                    if *count == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
    }
}

/// ByteTrack on the boxes of one label (ultralytics' `BYTETracker`).
///
/// Per frame, [`ByteTracker::update`] takes the boxes with their scores and returns the confirmed
/// tracks matched on this frame, each with the input index of its box: a box gets at most one
/// track, and boxes without one (low scores, new unconfirmed tracks) are absent.
#[derive(Debug, Clone)]
pub struct ByteTracker {
    config: ByteTrackConfig,
    /// `max_time_lost`: frames a lost track is kept.
    max_time_lost: i64,
    kalman_filter: KalmanFilterXyah,
    frame_id: u64,
    tracked_stracks: Vec<STrack>,
    lost_stracks: Vec<STrack>,
    removed: RemovedIds,
    ids: TrackIds,
}

impl ByteTracker {
    /// A tracker with no tracks; the parameters are checked ([`ByteTrackConfig::validate`]).
    pub fn new(config: ByteTrackConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::with_frame(config, 0))
    }

    /// A validated tracker that has already seen `frame_id` frames (none of them with boxes):
    /// for a label first seen mid-stream, so that only the stream's first frame confirms new
    /// tracks at once.
    pub(crate) fn with_frame(config: ByteTrackConfig, frame_id: u64) -> Self {
        Self {
            max_time_lost: config.max_time_lost(),
            config,
            kalman_filter: KalmanFilterXyah::new(),
            frame_id,
            tracked_stracks: Vec::new(),
            lost_stracks: Vec::new(),
            removed: RemovedIds::default(),
            ids: TrackIds::default(),
        }
    }

    pub fn config(&self) -> &ByteTrackConfig {
        &self.config
    }

    /// New parameters from the next frame on; tracks, ids and the frame count stay. (ultralytics
    /// reads its `args` on every update too, but fixes the lost-track buffer at construction; here
    /// the buffer follows the new `track_buffer` and `frame_rate`.)
    pub fn set_config(&mut self, config: ByteTrackConfig) -> Result<()> {
        config.validate()?;
        self.max_time_lost = config.max_time_lost();
        self.config = config;
        Ok(())
    }

    /// Frames seen so far (ultralytics' `frame_id`: 1 during the first update).
    pub fn frame_id(&self) -> u64 {
        self.frame_id
    }

    /// Whether the tracker holds no tracked or lost track (nothing can keep an id).
    pub fn is_empty(&self) -> bool {
        self.tracked_stracks.is_empty() && self.lost_stracks.is_empty()
    }

    /// Forget every track and restart ids and frames (`reset`).
    pub fn reset(&mut self) {
        *self = Self::with_frame(self.config.clone(), 0);
    }

    /// One frame: its boxes (any order) in, the confirmed tracks matched on it out, in
    /// ultralytics' order (`tracked_stracks`).
    pub fn update(&mut self, boxes: &[ScoredBox]) -> Vec<Track> {
        let mut ids = std::mem::take(&mut self.ids);
        let out = self.update_with_ids(boxes, &mut ids);
        self.ids = ids;
        out
    }

    /// [`ByteTracker::update`] drawing new track ids from `ids`.
    pub(crate) fn update_with_ids(
        &mut self,
        boxes: &[ScoredBox],
        ids: &mut TrackIds,
    ) -> Vec<Track> {
        self.frame_id += 1;
        let frame_id = self.frame_id;
        let kf = self.kalman_filter;
        let cfg = &self.config;

        // _split_detections: scores compare as float32, as NumPy does a float32 array with a
        // Python float.
        let high_thresh = cfg.track_high_thresh as f32;
        let low_thresh = cfg.track_low_thresh as f32;
        let mut detections = Vec::new();
        let mut detections_second = Vec::new();
        for (i, b) in boxes.iter().enumerate() {
            let Some(det) = Candidate::new(b.xyxy, b.score, i) else {
                continue;
            };
            if det.score >= high_thresh {
                detections.push(det);
            } else if det.score > low_thresh {
                detections_second.push(det);
            }
        }

        // All of this frame's tracks in one arena; the lists below hold indices into it.
        let n_tracked = self.tracked_stracks.len();
        let mut arena: Vec<STrack> = std::mem::take(&mut self.tracked_stracks);
        arena.append(&mut std::mem::take(&mut self.lost_stracks));
        let old_tracked: Vec<usize> = (0..n_tracked).collect();
        let old_lost: Vec<usize> = (n_tracked..arena.len()).collect();

        let (unconfirmed, confirmed): (Vec<usize>, Vec<usize>) =
            old_tracked.iter().partition(|&&i| !arena[i].is_activated);
        let strack_pool = joint_stracks(&arena, &confirmed, &old_lost);
        for &i in &strack_pool {
            let t = &mut arena[i];
            let mut mean = t.mean;
            if t.state != TrackState::Tracked {
                mean[7] = 0.0;
            }
            (t.mean, t.covariance) = kf.predict(&mean, &t.covariance);
        }

        let mut activated: Vec<usize> = Vec::new();
        let mut refind: Vec<usize> = Vec::new();
        let mut lost: Vec<usize> = Vec::new();
        let mut removed: Vec<usize> = Vec::new();

        // First association: confirmed and lost tracks with the high-score boxes.
        let first = linear_assignment(
            &self.dists(&arena, &strack_pool, &detections),
            cfg.match_thresh,
        );
        for &(it, id) in &first.matches {
            apply_match(
                &kf,
                &mut arena,
                strack_pool[it],
                &detections[id],
                frame_id,
                &mut activated,
                &mut refind,
            );
        }

        // Second association: the still-tracked ones with the low-score boxes, by IoU alone.
        let r_tracked: Vec<usize> = first
            .unmatched_a
            .iter()
            .map(|&i| strack_pool[i])
            .filter(|&i| arena[i].state == TrackState::Tracked)
            .collect();
        let u_track = if !r_tracked.is_empty() && !detections_second.is_empty() {
            let boxes_a = boxes_of(&arena, &r_tracked);
            let boxes_b: Vec<[f32; 4]> = detections_second.iter().map(Candidate::xyxy).collect();
            let second = linear_assignment(&iou_distance(&boxes_a, &boxes_b), SECOND_MATCH_THRESH);
            for &(it, id) in &second.matches {
                apply_match(
                    &kf,
                    &mut arena,
                    r_tracked[it],
                    &detections_second[id],
                    frame_id,
                    &mut activated,
                    &mut refind,
                );
            }
            second.unmatched_a
        } else {
            (0..r_tracked.len()).collect()
        };
        for it in u_track {
            let i = r_tracked[it];
            arena[i].state = TrackState::Lost;
            lost.push(i);
        }

        // Unconfirmed tracks (one frame old) with the high-score boxes left.
        let detections: Vec<Candidate> = first.unmatched_b.iter().map(|&i| detections[i]).collect();
        let u_detection: Vec<usize> = if unconfirmed.is_empty() {
            (0..detections.len()).collect()
        } else {
            let a = linear_assignment(
                &self.dists(&arena, &unconfirmed, &detections),
                UNCONFIRMED_MATCH_THRESH,
            );
            for &(it, id) in &a.matches {
                arena[unconfirmed[it]].update(&kf, &detections[id], frame_id);
                activated.push(unconfirmed[it]);
            }
            for &it in &a.unmatched_a {
                arena[unconfirmed[it]].state = TrackState::Removed;
                removed.push(unconfirmed[it]);
            }
            a.unmatched_b
        };

        // New tracks from the high-score boxes nobody took.
        let new_thresh = cfg.new_track_thresh as f32;
        for inew in u_detection {
            let det = &detections[inew];
            if det.score < new_thresh {
                continue;
            }
            arena.push(STrack::activate(&kf, det, frame_id, ids));
            activated.push(arena.len() - 1);
        }

        // Lost too long: removed. (Still in the lost list until the next frame's bookkeeping,
        // as in ultralytics, so a box on the next frame can still bring it back.)
        for &i in &old_lost {
            if frame_id as i64 - arena[i].frame_id as i64 > self.max_time_lost {
                arena[i].state = TrackState::Removed;
                removed.push(i);
            }
        }

        // merge_track_pools
        let mut tracked: Vec<usize> = old_tracked
            .into_iter()
            .filter(|&i| arena[i].state == TrackState::Tracked)
            .collect();
        tracked = joint_stracks(&arena, &tracked, &activated);
        tracked = joint_stracks(&arena, &tracked, &refind);
        let mut lost_pool = sub_stracks(&arena, &old_lost, &tracked);
        lost_pool.extend(lost);
        let lost_pool: Vec<usize> = lost_pool
            .into_iter()
            .filter(|&i| !self.removed.contains(arena[i].track_id))
            .collect();
        let (tracked, lost_pool) = remove_duplicate_stracks(&arena, &tracked, &lost_pool);
        self.removed
            .extend(removed.iter().map(|&i| arena[i].track_id));

        let out: Vec<Track> = tracked
            .iter()
            .filter(|&&i| arena[i].is_activated)
            .map(|&i| arena[i].result())
            .collect();
        let mut slots: Vec<Option<STrack>> = arena.into_iter().map(Some).collect();
        self.tracked_stracks = tracked.iter().filter_map(|&i| slots[i].take()).collect();
        self.lost_stracks = lost_pool.iter().filter_map(|&i| slots[i].take()).collect();
        out
    }

    /// `get_dists`: IoU distance between the tracks' state boxes and the boxes, fused with the
    /// box scores when `fuse_score` is on.
    fn dists(
        &self,
        arena: &[STrack],
        tracks: &[usize],
        dets: &[Candidate],
    ) -> super::matching::CostMatrix {
        let boxes_a = boxes_of(arena, tracks);
        let boxes_b: Vec<[f32; 4]> = dets.iter().map(Candidate::xyxy).collect();
        let mut cost = iou_distance(&boxes_a, &boxes_b);
        if self.config.fuse_score {
            let scores: Vec<f32> = dets.iter().map(|d| d.score).collect();
            fuse_score(&mut cost, &scores);
        }
        cost
    }
}

/// `_apply_match`: a tracked track is updated, a lost (or just removed) one re-activated.
fn apply_match(
    kf: &KalmanFilterXyah,
    arena: &mut [STrack],
    track: usize,
    det: &Candidate,
    frame_id: u64,
    activated: &mut Vec<usize>,
    refind: &mut Vec<usize>,
) {
    let was_tracked = arena[track].state == TrackState::Tracked;
    arena[track].update(kf, det, frame_id);
    if was_tracked {
        activated.push(track);
    } else {
        refind.push(track);
    }
}

fn boxes_of(arena: &[STrack], tracks: &[usize]) -> Vec<[f32; 4]> {
    tracks.iter().map(|&i| arena[i].xyxy()).collect()
}

/// `joint_stracks`: `a`, then the tracks of `b` whose id is not in `a`.
fn joint_stracks(arena: &[STrack], a: &[usize], b: &[usize]) -> Vec<usize> {
    let a_ids: HashSet<u64> = a.iter().map(|&i| arena[i].track_id).collect();
    let mut out = a.to_vec();
    out.extend(
        b.iter()
            .copied()
            .filter(|&i| !a_ids.contains(&arena[i].track_id)),
    );
    out
}

/// `sub_stracks`: the tracks of `a` whose id is not in `b`.
fn sub_stracks(arena: &[STrack], a: &[usize], b: &[usize]) -> Vec<usize> {
    let b_ids: HashSet<u64> = b.iter().map(|&i| arena[i].track_id).collect();
    a.iter()
        .copied()
        .filter(|&i| !b_ids.contains(&arena[i].track_id))
        .collect()
}

/// `remove_duplicate_stracks`: of a tracked and a lost track with IoU > 0.85 (state boxes), the
/// one followed for fewer frames goes (the tracked one on a tie).
fn remove_duplicate_stracks(
    arena: &[STrack],
    a: &[usize],
    b: &[usize],
) -> (Vec<usize>, Vec<usize>) {
    let pdist = iou_distance(&boxes_of(arena, a), &boxes_of(arena, b));
    let mut dup_a = vec![false; a.len()];
    let mut dup_b = vec![false; b.len()];
    let age = |i: usize| arena[i].frame_id as i64 - arena[i].start_frame as i64;
    for (p, &ia) in a.iter().enumerate() {
        for (q, &ib) in b.iter().enumerate() {
            if pdist.get(p, q) < DUPLICATE_IOU_DISTANCE {
                if age(ia) > age(ib) {
                    dup_b[q] = true;
                } else {
                    dup_a[p] = true;
                }
            }
        }
    }
    let keep = |list: &[usize], dup: &[bool]| -> Vec<usize> {
        list.iter()
            .zip(dup)
            .filter(|(_, &d)| !d)
            .map(|(&i, _)| i)
            .collect()
    };
    (keep(a, &dup_a), keep(b, &dup_b))
}
