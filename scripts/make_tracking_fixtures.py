#!/usr/bin/env python3
"""Generate the ByteTrack parity fixtures under tests/fixtures/reference/tracking/ (ultralytics as reference).

Usage (from the repository root):

    bash scripts/setup_reference.sh && .venv-ref/bin/python scripts/make_tracking_fixtures.py

scripts/make_fixtures.py deletes all of tests/fixtures/ before it regenerates the model fixtures, and runs this
script at its end. This one deletes and rewrites tests/fixtures/reference/tracking/ only. It is deterministic (seeded
NumPy generators, fixed JSON formatting): with the versions pinned in scripts/requirements-reference.txt
(ultralytics, lap, numpy) a rerun writes byte-identical files. Fixtures are never edited by hand.

What it writes:
  * kalman.json: KalmanFilterXYAH initiate / predict / update / project on a few states, for the unit tests.
  * matching.json: ultralytics' iou_distance, fuse_score and linear_assignment (lap.lapjv with extend_cost and
    cost_limit) on synthetic boxes and cost matrices, ties included.
  * <sequence>.json: a synthetic detection sequence (seeded; objects crossing, occlusions, low scores, births
    and deaths, two labels, jitter) and BYTETracker's output on every frame. The tracker runs once per label
    ("a track belongs to one label"): a fresh BYTETracker per label and sequence, created before the first frame
    and updated on every frame with that label's detections (possibly none), which is what
    vlm_perception::tracking::LabelledTracker does.

Each sequence also records which of the tracker's paths it exercised (counted by a subclass that only observes),
and the script fails if a sequence misses the path it was written for.

The detections go in as ultralytics' own `Boxes` on float32 NumPy data (x1, y1, x2, y2, conf, cls), as
ultralytics' track callback hands `result.boxes.cpu().numpy()` to the tracker. Boxes are written as the exact
float32 values (a JSON double that parses back to the same float32).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

import lap
import numpy as np
import ultralytics
from ultralytics.engine.results import Boxes
from ultralytics.trackers.basetrack import BaseTrack, TrackState
from ultralytics.trackers.byte_tracker import BYTETracker
from ultralytics.trackers.utils import matching
from ultralytics.trackers.utils import stracks as stracks_utils
from ultralytics.trackers.utils.kalman_filter import KalmanFilterXYAH

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "reference" / "tracking"

WIDTH, HEIGHT = 640, 480  # boxes stay below 1024 px, where a float32 step is 6.1e-5 px (the tests allow 1e-4)

# ultralytics/cfg/trackers/bytetrack.yaml
DEFAULT_ARGS = dict(
    track_high_thresh=0.25,
    track_low_thresh=0.1,
    new_track_thresh=0.25,
    track_buffer=30,
    match_thresh=0.8,
    fuse_score=True,
)

REFERENCE = {"ultralytics": ultralytics.__version__, "lap": lap.__version__, "numpy": np.__version__}


# ----------------------------------------------------------------------------------------------------------
# JSON helpers


def f32(x) -> float:
    """The exact value of a float32 as a Python float (its repr parses back to the same float32)."""
    return float(np.float32(x))


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")


def write_sequence(path: Path, header: dict, frames: list[dict]) -> None:
    """One frame per line, so that a diff of a regenerated fixture stays readable."""
    lines = ["{"]
    for key, value in header.items():
        lines.append(f" {json.dumps(key)}: {json.dumps(value)},")
    lines.append(' "frames": [')
    for i, frame in enumerate(frames):
        sep = "," if i + 1 < len(frames) else ""
        lines.append("  " + json.dumps(frame, separators=(",", ":")) + sep)
    lines.append(" ]")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Unit-test numbers: Kalman filter and matching


def make_kalman() -> dict:
    kf = KalmanFilterXYAH()
    cases = []
    rng = np.random.default_rng(7)
    for measurement in ([320.5, 240.25, 0.5, 120.0], [10.0, 400.0, 1.75, 33.5], [600.0, 20.0, 0.3, 210.0]):
        m0 = np.asarray(measurement, dtype=np.float64)
        mean, cov = kf.initiate(m0)
        init = (mean.copy(), cov.copy())
        mean, cov = kf.predict(mean, cov)
        pred1 = (mean.copy(), cov.copy())
        z = m0 + rng.normal(0, 1, 4) * np.array([2.0, 2.0, 0.01, 2.0])
        mean, cov = kf.update(mean, cov, z)
        upd = (mean.copy(), cov.copy())
        # a lost track: predicted with the height velocity zeroed, as STrack.multi_predict does
        lost = mean.copy()
        lost[7] = 0
        mmean, mcov = kf.multi_predict(lost[None], cov[None])
        pred_lost = (mmean[0].copy(), mcov[0].copy())
        proj_mean, proj_cov = kf.project(mean, cov)
        cases.append(
            {
                "measurement": m0.tolist(),
                "initiate": {"mean": init[0].tolist(), "covariance": init[1].tolist()},
                "predict": {"mean": pred1[0].tolist(), "covariance": pred1[1].tolist()},
                "update_measurement": z.tolist(),
                "update": {"mean": upd[0].tolist(), "covariance": upd[1].tolist()},
                "predict_lost": {"mean": pred_lost[0].tolist(), "covariance": pred_lost[1].tolist()},
                "project": {"mean": proj_mean.tolist(), "covariance": proj_cov.tolist()},
            }
        )
    return {"reference": REFERENCE, "cases": cases}


def make_matching() -> dict:
    rng = np.random.default_rng(11)
    # IoU distance (float32 inside, as ultralytics computes it) and score fusion
    boxes_a = np.array(
        [[10, 10, 50, 50], [100, 100, 180, 140], [0, 0, 1, 1], [300.25, 200.5, 340.75, 260.125]], dtype=np.float32
    )
    boxes_b = np.array(
        [[30, 30, 70, 70], [10, 10, 50, 50], [60, 60, 90, 90], [100, 120, 180, 160], [301, 201, 339, 259]],
        dtype=np.float32,
    )
    iou_dist = matching.iou_distance(list(boxes_a), list(boxes_b))
    scores = np.array([0.9, 0.3, 0.55, 0.71, 0.26], dtype=np.float32)
    fused = matching.fuse_score(iou_dist, [SimpleNamespace(score=s) for s in scores])
    iou = {
        "a": [[f32(v) for v in b] for b in boxes_a],
        "b": [[f32(v) for v in b] for b in boxes_b],
        "distance": [[f32(v) for v in row] for row in iou_dist],
        "scores": [f32(s) for s in scores],
        "fused": [[f32(v) for v in row] for row in fused],
    }

    # linear_assignment: lap.lapjv(cost, extend_cost=True, cost_limit=thresh)
    cases = []

    def add(cost: np.ndarray, thresh: float, kind: str):
        matches, ua, ub = matching.linear_assignment(cost, thresh=thresh)
        cases.append(
            {
                "kind": kind,
                "thresh": thresh,
                "cost": [[float(v) for v in row] for row in cost],
                "matches": [[int(i), int(j)] for i, j in matches],
                "unmatched_a": [int(i) for i in ua],
                "unmatched_b": [int(j) for j in ub],
            }
        )

    for _ in range(40):  # continuous costs, as IoU distances are (float32 values, as the tracker passes them)
        n, m = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        cost = rng.uniform(0, 1, (n, m)).astype(np.float32)
        cost[rng.uniform(size=(n, m)) < 0.4] = 1.0  # no overlap
        add(cost, float(rng.choice([0.8, 0.5, 0.7])), "continuous")
    for _ in range(40):  # costs on a 0.1 grid: many ties, where solvers may differ in the matches they pick
        n, m = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        cost = (np.round(rng.uniform(0, 1, (n, m)) * 10) / 10).astype(np.float32)
        add(cost, float(rng.choice([0.8, 0.5, 0.7])), "ties")
    add(np.array([[0.8, 0.79], [0.81, 0.8]], dtype=np.float32), 0.8, "at_limit")
    add(np.array([[0.1, 0.2, 0.3]], dtype=np.float32), 0.8, "one_row")
    add(np.array([[1.0, 1.0], [1.0, 1.0]], dtype=np.float32), 0.8, "nothing_matches")
    return {"reference": REFERENCE, "iou": iou, "assignment": cases}


# ----------------------------------------------------------------------------------------------------------
# Synthetic sequences


class Obj:
    """One object: a box moving at constant velocity, detected on `visible` frames with a score per frame."""

    def __init__(self, label, cx, cy, w, h, vx=0.0, vy=0.0, frames=None, score=0.8, score_fn=None):
        self.label = label
        self.cx, self.cy, self.w, self.h = cx, cy, w, h
        self.vx, self.vy = vx, vy
        self.frames = frames  # set of frame indices (0-based) where it is detected; None = all
        self.score = score
        self.score_fn = score_fn  # frame -> score (overrides score)

    def visible(self, t: int) -> bool:
        return self.frames is None or t in self.frames

    def box(self, t: int) -> tuple[float, float, float, float]:
        cx, cy = self.cx + self.vx * t, self.cy + self.vy * t
        return cx - self.w / 2, cy - self.h / 2, cx + self.w / 2, cy + self.h / 2

    def score_at(self, t: int, rng) -> float:
        s = self.score_fn(t) if self.score_fn is not None else self.score + rng.normal(0, 0.03)
        return float(np.clip(s, 0.01, 0.99))


def render(objs: list[Obj], n_frames: int, rng, jitter: float, extra=None) -> list[list[dict]]:
    """Per frame, the detections (x1, y1, x2, y2 jittered, score, label) in shuffled order."""
    frames = []
    for t in range(n_frames):
        dets = []
        for o in objs:
            if not o.visible(t):
                continue
            x1, y1, x2, y2 = o.box(t)
            if jitter > 0:
                x1, y1, x2, y2 = np.array([x1, y1, x2, y2]) + rng.normal(0, jitter, 4)
            dets.append({"xyxy": [x1, y1, x2, y2], "score": o.score_at(t, rng), "label": o.label})
        if extra is not None:
            dets.extend(extra(t, rng))
        order = rng.permutation(len(dets))
        dets = [dets[i] for i in order]
        for d in dets:  # the float32 values the tracker sees
            d["xyxy"] = [f32(np.clip(v, -50, 1000)) for v in d["xyxy"]]
            d["score"] = f32(d["score"])
        frames.append(dets)
    return frames


def seq_crossing(rng):
    """Two people cross; the one behind is not detected while they overlap, then comes back (same id). While
    its lost track overlaps the visible one, ultralytics' duplicate removal drops one of the two."""
    n = 70
    a = Obj("person", 100, 240, 60, 150, vx=7.0)
    hidden = set(range(28, 38))
    b = Obj("person", 580, 244, 60, 150, vx=-7.0, frames={t for t in range(n) if t not in hidden})
    c = Obj("person", 320, 80, 40, 90)  # a bystander
    # two boxes moving together; the younger one vanishes, then the older: duplicate removal both ways
    d = Obj("person", 100, 420, 50, 50, vx=2.0)
    e = Obj("person", 101, 421, 50, 50, vx=2.0, frames=set(range(5, 40)))
    f = Obj("person", 450, 420, 50, 50, vx=-2.0, frames=set(range(0, 45)))
    g = Obj("person", 451, 421, 50, 50, vx=-2.0, frames=set(range(8, n)))
    return ["person"], render([a, b, c, d, e, f, g], n, rng, jitter=1.0), DEFAULT_ARGS, {"refind", "duplicates"}


def seq_occlusion_return(rng):
    """A moving object occluded for 12 frames (within the buffer of 30) comes back with its id; a static one
    occluded for 25 frames too."""
    n = 60
    a = Obj("cup", 80, 200, 50, 60, vx=5.0, vy=1.0, frames=set(range(0, 20)) | set(range(32, n)))
    b = Obj("cup", 500, 350, 70, 40, frames=set(range(0, 10)) | set(range(35, n)))
    c = Obj("cup", 300, 100, 30, 30, vx=-1.0, vy=0.5)
    return ["cup"], render([a, b, c], n, rng, jitter=1.5), DEFAULT_ARGS, {"refind"}


def seq_gone_past_buffer(rng):
    """Static objects that go away and come back: 31 frames later (the track is removed on that frame but,
    as ultralytics merges removals a frame late, is still matchable: same id), 32 frames later (new id) and
    45 frames later (new id); one back after 30 frames (same id)."""
    n = 100
    last = 10  # last frame (0-based) each is seen before the gap

    def gap(back):
        return set(range(0, last + 1)) | set(range(back, n))

    objs = [
        Obj("box", 100, 100, 60, 60, frames=gap(last + 31)),
        Obj("box", 300, 100, 60, 60, frames=gap(last + 32)),
        Obj("box", 500, 100, 60, 60, frames=gap(last + 33)),
        Obj("box", 100, 300, 60, 60, frames=gap(last + 46)),
        Obj("box", 300, 300, 60, 60, frames=gap(last + 30)),
        Obj("box", 500, 300, 60, 60),
    ]
    return ["box"], render(objs, n, rng, jitter=0.7), DEFAULT_ARGS, {"refind", "removed", "refind_after_removal"}


def seq_low_scores(rng):
    """Scores that dip into (track_low_thresh, track_high_thresh): kept by the second association; below
    track_low_thresh: ignored; a low-score object alone never starts a track; scores exactly at the
    thresholds."""
    n = 50

    def dip(t):
        if 15 <= t < 25:
            return 0.15 + 0.05 * np.sin(t)
        if 30 <= t < 33:
            return 0.05
        return 0.8

    a = Obj("bottle", 200, 200, 40, 100, vx=3.0, score_fn=dip)
    b = Obj("bottle", 450, 300, 60, 80, vx=-2.0, vy=-1.0, score_fn=lambda t: 0.2 if t % 3 == 0 else 0.7)
    c = Obj("bottle", 550, 80, 40, 40, score_fn=lambda t: 0.18)  # low score only: never tracked
    d = Obj("bottle", 80, 400, 50, 50, score_fn=lambda t: 0.25)  # exactly track_high_thresh: tracked
    e = Obj("bottle", 320, 420, 50, 50, score_fn=lambda t: 0.9 if t < 5 else 0.1)  # exactly low: ignored
    return ["bottle"], render([a, b, c, d, e], n, rng, jitter=1.0), DEFAULT_ARGS, {"second"}


def seq_appear_disappear(rng):
    """Objects appear (on frame 1 and later) and leave; one-frame false positives (unconfirmed, removed);
    a zero-width box (dropped by the tracker)."""
    n = 60
    objs = []
    for _ in range(10):
        start = int(rng.integers(0, 40))
        stop = int(rng.integers(start + 1, n + 1))
        objs.append(
            Obj(
                "mug",
                float(rng.uniform(60, 580)),
                float(rng.uniform(60, 420)),
                float(rng.uniform(20, 90)),
                float(rng.uniform(20, 90)),
                vx=float(rng.normal(0, 2)),
                vy=float(rng.normal(0, 2)),
                frames=set(range(start, stop)),
                score=float(rng.uniform(0.3, 0.9)),
            )
        )

    def extra(t, rng):
        out = []
        if t % 7 == 3:  # a false positive seen once
            x, y = rng.uniform(0, 600), rng.uniform(0, 440)
            out.append({"xyxy": [x, y, x + 30, y + 30], "score": 0.6, "label": "mug"})
        if t == 20:
            out.append({"xyxy": [200.0, 200.0, 200.0, 260.0], "score": 0.9, "label": "mug"})
        return out

    return ["mug"], render(objs, n, rng, jitter=1.0, extra=extra), DEFAULT_ARGS, {"unconfirmed_removed"}


def seq_two_labels(rng):
    """Two labels on the same objects (a person holding a cup): each label has its own tracks."""
    n = 50
    objs = [
        Obj("person", 200, 250, 80, 200, vx=2.0),
        Obj("cup", 200, 250, 80, 190, vx=2.0, frames=set(range(0, 30)) | set(range(36, n))),
        Obj("cup", 450, 150, 30, 40, vy=1.5),
        Obj("person", 500, 300, 90, 210, vx=-1.0, frames=set(range(10, n))),
    ]
    return ["cup", "person"], render(objs, n, rng, jitter=1.0), DEFAULT_ARGS, {"refind"}


def clutter_objects(rng, n_frames, count, label="item"):
    objs = []
    for _ in range(count):
        frames = {t for t in range(n_frames) if rng.uniform() > 0.1}
        objs.append(
            Obj(
                label,
                float(rng.uniform(50, 590)),
                float(rng.uniform(50, 430)),
                float(rng.uniform(15, 80)),
                float(rng.uniform(15, 80)),
                vx=float(rng.normal(0, 3)),
                vy=float(rng.normal(0, 2)),
                frames=frames,
                score=float(rng.uniform(0.15, 0.95)),
            )
        )
    return objs


def clutter_extra(t, rng):
    out = []
    for _ in range(2):
        x, y = rng.uniform(0, 600), rng.uniform(0, 440)
        w, h = rng.uniform(10, 60), rng.uniform(10, 60)
        out.append({"xyxy": [x, y, x + w, y + h], "score": float(rng.uniform(0.05, 0.6)), "label": "item"})
    return out


def seq_clutter(rng):
    """Twenty objects moving in all directions, 10% missed detections, two false positives a frame."""
    n = 60
    objs = clutter_objects(rng, n, 20)
    return ["item"], render(objs, n, rng, jitter=2.0, extra=clutter_extra), DEFAULT_ARGS, {"second", "refind"}


def seq_custom_args(rng):
    """Clutter with non-default parameters (no score fusion, higher thresholds, a short buffer), and an object away
    for longer than that buffer."""
    n = 60
    objs = clutter_objects(rng, n, 15)
    # away for longer than the buffer of 10 frames: removed, back with a new id
    objs.append(Obj("item", 320, 240, 50, 50, frames=set(range(0, 20)) | set(range(35, n)), score=0.9))
    args = dict(
        track_high_thresh=0.5,
        track_low_thresh=0.2,
        new_track_thresh=0.6,
        track_buffer=10,
        match_thresh=0.7,
        fuse_score=False,
    )
    return ["item"], render(objs, n, rng, jitter=2.0, extra=clutter_extra), args, {"second", "removed"}


SEQUENCES = {
    "crossing": (seq_crossing, 101),
    "occlusion_return": (seq_occlusion_return, 102),
    "gone_past_buffer": (seq_gone_past_buffer, 103),
    "low_scores": (seq_low_scores, 104),
    "appear_disappear": (seq_appear_disappear, 105),
    "two_labels": (seq_two_labels, 106),
    "clutter": (seq_clutter, 107),
    "custom_args": (seq_custom_args, 108),
}


class CountingTracker(BYTETracker):
    """BYTETracker that counts which paths a sequence takes; it changes nothing."""

    def __init__(self, args, counts):
        super().__init__(args)
        self.counts = counts

    def _apply_match(self, track, det, activated, refind):
        if track.state == TrackState.Removed:
            self.counts["refind_after_removal"] += 1
        if track.state != TrackState.Tracked:
            self.counts["refind"] += 1
        super()._apply_match(track, det, activated, refind)

    def _second_association(self, strack_pool, u_track, detections_second, activated, refind, lost):
        before = len(activated) + len(refind)
        super()._second_association(strack_pool, u_track, detections_second, activated, refind, lost)
        self.counts["second"] += len(activated) + len(refind) - before

    def _unconfirmed_association(self, unconfirmed, u_detection, detections, activated, removed):
        before = len(removed)
        out = super()._unconfirmed_association(unconfirmed, u_detection, detections, activated, removed)
        self.counts["unconfirmed_removed"] += len(removed) - before
        return out

    def _remove_stale_lost(self, removed):
        before = len(removed)
        super()._remove_stale_lost(removed)
        self.counts["removed"] += len(removed) - before


def count_duplicates(counts):
    original = stracks_utils.remove_duplicate_stracks

    def wrapped(a, b, *args, **kwargs):
        ra, rb = original(a, b, *args, **kwargs)
        counts["duplicates"] += len(a) - len(ra) + len(b) - len(rb)
        return ra, rb

    return original, wrapped


def run_sequence(name: str) -> dict:
    make, seed = SEQUENCES[name]
    rng = np.random.default_rng(seed)
    labels, frames, args, must_exercise = make(rng)
    counts = {k: 0 for k in ("refind", "refind_after_removal", "second", "unconfirmed_removed", "removed")}
    counts["duplicates"] = 0
    original, wrapped = count_duplicates(counts)
    stracks_utils.remove_duplicate_stracks = wrapped
    try:
        BaseTrack.reset_id()
        trackers = {label: CountingTracker(SimpleNamespace(tracker_type="bytetrack", **args), counts) for label in labels}
        out_frames = []
        for dets in frames:
            tracks = {}
            for label in labels:
                index = [i for i, d in enumerate(dets) if d["label"] == label]
                data = np.zeros((len(index), 6), dtype=np.float32)
                for row, i in enumerate(index):
                    data[row, :4] = dets[i]["xyxy"]
                    data[row, 4] = dets[i]["score"]
                boxes = Boxes(data, orig_shape=(HEIGHT, WIDTH))
                result = trackers[label].update(boxes)
                rows = []
                for r in result:
                    rows.append(
                        {
                            "index": index[int(r[7])],
                            "track_id": int(r[4]),
                            "xyxy": [f32(v) for v in r[:4]],
                            "score": f32(r[5]),
                        }
                    )
                tracks[label] = rows
            out_frames.append({"detections": dets, "tracks": tracks})
    finally:
        stracks_utils.remove_duplicate_stracks = original
    missing = [k for k in sorted(must_exercise) if counts[k] == 0]
    assert not missing, f"{name}: the sequence never exercised {missing}: {counts}"
    make_doc = make.__doc__.strip().replace("\n    ", " ")
    header = {
        "reference": REFERENCE,
        "name": name,
        "description": make_doc,
        "args": args,
        "labels": labels,
        "size": [WIDTH, HEIGHT],
        "exercised": counts,
    }
    write_sequence(OUT / f"{name}.json", header, out_frames)
    n_ids = len({(lbl, t["track_id"]) for f in out_frames for lbl, ts in f["tracks"].items() for t in ts})
    n_dets = sum(len(f["detections"]) for f in out_frames)
    print(f"{name}: {len(out_frames)} frames, {n_dets} detections, {n_ids} track ids, exercised {counts}")
    return counts


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    write_json(OUT / "kalman.json", make_kalman())
    write_json(OUT / "matching.json", make_matching())
    for name in SEQUENCES:
        run_sequence(name)


if __name__ == "__main__":
    main()
