"""ByteTrack ids on the stream and the object memory (issue 27), on a real node process over loopback.

The scene is test_node_depth.py's: chelsea.png (451 x 300) from a camera with fx = fy = 400 px
looking at a fronto-parallel plane (1.5 m unless a test says otherwise). The detections come from
the tiny random checkpoint: their boxes are noise, but the same image gives the same boxes, and on
chelsea.png every one of the 16 boxes scores above ByteTrack's default thresholds (0.33 .. 0.95:
14 `a rocket`, 2 `a photo of a cat`). A uniform grey image gives 16 `a photo of a cat` boxes and
no `a rocket`: on grey frames the rockets are out of view. Rolling the photo sideways by a pixel
per frame moves the boxes a little (frame-to-frame IoU of the same box about 0.75 .. 0.99; boxes of
one label hardly overlap each other).

One node serves the module (reliable raw camera, so that each frame sent is processed exactly
once: the tests count the tracker's frames). Frames go out one at a time, each waiting for its
~/detections (matched by stamp) before the next. The tracker's state carries over from test to
test; each test sends the frames it relies on itself. The module's first frame, sent by the
fixture, is the stream's very first one: its tracks are confirmed at once.
"""

import time

import numpy as np
import pytest
from PIL import Image as PILImage
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from vlm_perception_msgs.msg import ObjectArray
from vlm_perception_msgs.srv import GetObjects, Ground, Score

from conftest import IMAGES, RELIABLE, image_msg, load_rgb, module_node
from test_node_depth import PHOTO, camera_info_msg, depth_msg, depth_params, plane
from test_node_params import get_param, set_param
from test_node_tf import set_stamp, stamp_of, with_stamp

try:
    from vision_msgs.msg import Detection2DArray, Detection3DArray
except ImportError:  # the node is then built without ~/detections_2d and ~/detections_3d
    Detection2DArray = Detection3DArray = None

CAMERA = "camera"
ROCKET, CAT, CUP = "a rocket", "a photo of a cat", "a coffee cup"
PHRASES = [CAT, CUP, ROCKET]  # the node's queries (base_params)
NS = 1_000_000_000
T0_NS = 1_800_000_000 * NS  # the first frame's stamp; one second between frames (depth.slop 0.05 s)
FRAME_TIMEOUT = 60.0
DEFAULT_TRACK_BUFFER = 30
DEFAULT_FORGET_AFTER = 60.0
OBJECTS_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         history=HistoryPolicy.KEEP_LAST, depth=100)


# ---------------------------------------------------------------------------------------------
# Images and boxes
# ---------------------------------------------------------------------------------------------

_IMAGES = {}


def photo(shift=0):
    """chelsea.png rolled `shift` pixels to the right (the boxes move with it, roughly)."""
    key = ("photo", shift)
    if key not in _IMAGES:
        rgb = load_rgb(IMAGES / PHOTO)
        _IMAGES[key] = rgb if shift == 0 else PILImage.fromarray(np.roll(np.asarray(rgb), shift, axis=1))
    return _IMAGES[key]


def grey():
    """A uniform grey frame of the photo's size: no `a rocket` box on it."""
    if "grey" not in _IMAGES:
        _IMAGES["grey"] = PILImage.new("RGB", photo().size, (128, 128, 128))
    return _IMAGES["grey"]


def xyxy(bbox):
    c, w, h = bbox.center.position, bbox.size_x, bbox.size_y
    return (c.x - w / 2, c.y - h / 2, c.x + w / 2, c.y + h / 2)


def iou(a, b):
    a, b = xyxy(a), xyxy(b)
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_tuple(bbox):
    return (bbox.center.position.x, bbox.center.position.y, bbox.center.theta, bbox.size_x, bbox.size_y)


def ids(msg, label=None):
    return [d.track_id for d in msg.detections if label is None or d.label == label]


def labelled_ids(msg):
    return [(i, d.label, d.track_id) for i, d in enumerate(msg.detections)]


def time_ns(t):
    """A builtin_interfaces/Time in nanoseconds."""
    return t.sec * NS + t.nanosec


def vec(p):
    return (p.x, p.y, p.z)


def quat(q):
    return (q.x, q.y, q.z, q.w)


# ---------------------------------------------------------------------------------------------
# The rig: one node with depth, its outputs, and the frames sent
# ---------------------------------------------------------------------------------------------

class Rig:
    def __init__(self, proc, client):
        self.proc, self.client = proc, client
        node, ns, fqn = client.node, proc.ns, proc.fqn
        camera_qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=5)
        self.depth_pub = node.create_publisher(Image, f"{ns}/aligned_depth_to_color/image_raw", camera_qos)
        self.info_pub = node.create_publisher(CameraInfo, f"{ns}/color/camera_info", camera_qos)
        self.detections_2d, self.detections_3d = [], []
        self.objects, self.objects_times = [], []  # ~/objects messages and their wall-clock receipt times
        self._pubs = [self.depth_pub, self.info_pub]
        self._subs = [node.create_subscription(ObjectArray, f"{fqn}/objects", self._on_objects, OBJECTS_QOS)]
        if Detection2DArray is not None:
            self._subs += [
                node.create_subscription(Detection2DArray, f"{fqn}/detections_2d", self.detections_2d.append, RELIABLE),
                node.create_subscription(Detection3DArray, f"{fqn}/detections_3d", self.detections_3d.append, RELIABLE),
            ]
        client.wait(lambda: all(p.get_subscription_count() > 0 for p in self._pubs), 20,
                    "the node's depth and camera_info subscriptions")
        client.wait(lambda: all(s.get_publisher_count() > 0 for s in self._subs), 20,
                    "the node's ~/objects and vision_msgs publishers")
        self.next_ns = T0_NS

    def _on_objects(self, msg):
        self.objects.append(msg)
        self.objects_times.append(time.time())

    def destroy(self):
        for p in self._pubs:
            self.client.node.destroy_publisher(p)
        for s in self._subs:
            self.client.node.destroy_subscription(s)

    def frame(self, pil=None, z=1.5):
        """Sends one colour frame (with an aligned depth plane at z metres, none when z is None)
        and returns its ~/detections. Sent once (reliable): a frame processed twice would be a
        tracker frame more than the test counts."""
        c = self.client
        stamp = self.next_ns
        self.next_ns += NS
        if z is not None:
            info = camera_info_msg(frame_id=CAMERA)
            set_stamp(info.header, stamp)
            self.info_pub.publish(info)
            d = depth_msg(plane(z=z), frame_id=CAMERA)
            set_stamp(d.header, stamp)
            self.depth_pub.publish(d)
            c.spin(0.05)
        colour = image_msg(photo() if pil is None else pil, "rgb8", frame_id=CAMERA)
        set_stamp(colour.header, stamp)
        c.reliable_image_pub.publish(colour)
        return c.wait(lambda: with_stamp(c.detections, stamp), FRAME_TIMEOUT, f"the detections of the frame at {stamp}")

    def frames_of(self, images, z=1.5):
        return [self.frame(im, z) for im in images]

    def detections_2d_of(self, msg):
        stamp = stamp_of(msg.header)
        return self.client.wait(lambda: with_stamp(self.detections_2d, stamp), 10,
                                f"the Detection2DArray at {stamp}")

    def get_objects(self, labels=(), clear=False):
        req = GetObjects.Request()
        req.labels = list(labels)
        req.clear = clear
        r = self.client.call(GetObjects, "get_objects", req)
        assert r.success, r.message
        return r

    def set(self, name, value):
        r = set_param(self.client, name, value)
        assert r.successful, f"setting {name} = {value!r} was refused: {r.reason}"

    def clear_memory(self):
        self.get_objects(clear=True)
        assert not self.get_objects().objects, "the memory is not empty after get_objects with clear"

    def latest_objects(self, pred, what, timeout=10):
        """The newest ~/objects message once pred(msg) holds for it."""
        try:
            return self.client.wait(lambda: self.objects and pred(self.objects[-1]) and self.objects[-1], timeout,
                                    f"~/objects to show {what}")
        except AssertionError as e:
            newest = summary(self.objects[-1]) if self.objects else None
            raise AssertionError(f"{e}\nnewest ~/objects (id, label, times_seen, last_seen): {newest}") from None


def summary(objects_msg):
    return [(o.id, o.label, o.times_seen, time_ns(o.last_seen)) for o in objects_msg.objects]


@pytest.fixture(scope="module")
def rig(request):
    params = depth_params()
    params["camera"] = {**params["camera"], "reliable": True, "transport": "raw"}
    params["vilt"] = {**params["vilt"], "enabled": False}
    proc, client = module_node(request, params, "tracking")
    r = Rig(proc, client)
    request.addfinalizer(r.destroy)
    # the stream's very first frame: every track is confirmed at once
    r.first = r.frame(photo())
    return r


# ---------------------------------------------------------------------------------------------
# Track ids on the stream
# ---------------------------------------------------------------------------------------------

def test_first_frame_tracks_every_detection_with_distinct_nonzero_ids(rig):
    msg = rig.first
    labels = sorted({d.label for d in msg.detections})
    assert len(msg.detections) == 16 and labels == [CAT, ROCKET], \
        f"the fixture checkpoint gave {len(msg.detections)} detections of {labels} on {PHOTO}, expected 16 of {[CAT, ROCKET]}"
    assert min(d.score for d in msg.detections) >= 0.25, [d.score for d in msg.detections]
    got = ids(msg)
    assert all(got), f"the stream's first frame confirms its tracks at once, yet some ids are 0: {labelled_ids(msg)}"
    assert len(set(got)) == len(got), f"ids repeat on one frame: {labelled_ids(msg)}"
    assert sorted(got) == list(range(1, len(got) + 1)), f"ids on the first frame should be 1..{len(got)}: {sorted(got)}"


def test_tracked_detections_keep_their_ids_across_frames(rig):
    # the same image again and again: the same boxes, the same ids, detection by detection
    msgs = rig.frames_of([photo()] * 3)
    ref = msgs[-1]
    assert ref.detections and all(ids(ref)), f"tracked detections have id 0: {labelled_ids(ref)}"
    for m in msgs[1:]:
        assert [box_tuple(d.bbox) for d in m.detections] == [box_tuple(d.bbox) for d in ref.detections]
        assert ids(m) == ids(msgs[0]), f"ids changed on the same boxes:\n{labelled_ids(msgs[0])}\nthen\n{labelled_ids(m)}"
    assert ids(ref) == ids(rig.first), \
        f"the first frame's ids changed on the same boxes:\n{labelled_ids(rig.first)}\nthen\n{labelled_ids(ref)}"

    # moving boxes: the photo rolls one pixel further right on each frame
    prev, checked = ref, 0
    for shift in range(1, 5):
        m = rig.frame(photo(shift))
        for d in m.detections:
            near = [p for p in prev.detections if p.label == d.label and iou(p.bbox, d.bbox) > 0.1]
            back = [q for q in m.detections if q.label == d.label and near and iou(near[0].bbox, q.bbox) > 0.1]
            if len(near) != 1 or len(back) != 1 or iou(near[0].bbox, d.bbox) < 0.6 or near[0].track_id == 0:
                continue  # not one unambiguous, well-overlapping box of the previous frame
            p = near[0]
            assert d.track_id == p.track_id, \
                (f"shift {shift}: `{d.label}` at {xyxy(d.bbox)} (IoU {iou(p.bbox, d.bbox):.2f} with the previous "
                 f"frame's box at {xyxy(p.bbox)}) has id {d.track_id}, the previous box had {p.track_id}")
            checked += 1
        prev = m
    assert checked >= 40, f"only {checked} boxes moved unambiguously from frame to frame (expected >= 40)"
    print(f"{checked} moving boxes kept their ids over 4 one-pixel shifts")


def test_vision_msgs_detection_ids_are_the_track_ids(rig):
    if Detection2DArray is None:
        pytest.skip("vision_msgs is not installed")
    msg = rig.frame(photo())
    d2 = rig.detections_2d_of(msg)
    assert [x.id for x in d2.detections] == [str(d.track_id) for d in msg.detections], \
        f"Detection2D ids {[x.id for x in d2.detections]}, track ids {ids(msg)}"
    assert all(x.id for x in d2.detections), [x.id for x in d2.detections]
    stamp = stamp_of(msg.header)
    d3 = rig.client.wait(lambda: with_stamp(rig.detections_3d, stamp), 10, "the Detection3DArray of the frame")
    located = [d for d in msg.detections if d.has_position]
    assert located, "no detection was located on the plane"
    assert [x.id for x in d3.detections] == [str(d.track_id) for d in located], \
        f"Detection3D ids {[x.id for x in d3.detections]}, located detections' track ids {[d.track_id for d in located]}"


def test_detections_of_one_label_on_one_frame_get_distinct_ids(rig):
    msg = rig.frame(photo())
    rockets = ids(msg, ROCKET)
    cats = ids(msg, CAT)
    assert len(rockets) == 14 and len(cats) == 2, labelled_ids(msg)
    assert all(rockets) and all(cats), f"untracked detections: {labelled_ids(msg)}"
    assert len(set(rockets)) == len(rockets), f"`{ROCKET}` ids repeat: {rockets}"
    assert len(set(cats)) == len(cats), f"`{CAT}` ids repeat: {cats}"
    assert not set(rockets) & set(cats), f"ids shared across labels: rockets {rockets}, cats {cats}"


def test_a_track_away_up_to_track_buffer_frames_keeps_its_id_and_one_away_longer_gets_a_new_id(rig):
    """tracking.track_buffer = 3, live. As in ultralytics' BYTETracker, a lost track is marked
    removed on the first frame on which it has been away more than track_buffer frames, but leaves
    the lost list only in the next frame's bookkeeping: a box on that next frame still brings it
    back. So it keeps its id through track_buffer + 1 frames away, and is gone after
    track_buffer + 2."""
    buffer = 3
    try:
        rig.set("tracking.track_buffer", buffer)
        assert get_param(rig.client, "tracking.track_buffer") == buffer
        settle = rig.frames_of([photo()] * 3)
        before = ids(settle[-1], ROCKET)
        assert all(before) and len(set(before)) == 14, f"rockets before: {labelled_ids(settle[-1])}"
        assert ids(settle[-2], ROCKET) == before, (ids(settle[-2], ROCKET), before)

        for gone in (buffer - 1, buffer + 1):
            away = rig.frames_of([grey()] * gone)
            assert all(not ids(m, ROCKET) for m in away), f"grey frames had rockets: {[labelled_ids(m) for m in away]}"
            back = rig.frame(photo())
            assert ids(back, ROCKET) == before, \
                (f"after {gone} frames away (tracking.track_buffer = {buffer}) the rockets came back with ids "
                 f"{ids(back, ROCKET)}, before {before}")
        highest = max(max(ids(m)) for m in rig.client.detections if ids(m))

        # away for track_buffer + 2 frames: the tracks are removed, the rockets start new ones,
        # which (not on the stream's first frame) are confirmed on their second frame
        gone = buffer + 2
        away = rig.frames_of([grey()] * gone)
        assert all(not ids(m, ROCKET) for m in away)
        highest = max([highest] + [max(ids(m)) for m in away])
        first_back, second_back = rig.frames_of([photo()] * 2)
        assert ids(first_back, ROCKET) == [0] * 14, \
            (f"after {gone} frames away (track_buffer {buffer}) the rockets' old tracks should be gone and the new "
             f"ones unconfirmed on their first frame (id 0), got {ids(first_back, ROCKET)} (before: {before})")
        renewed = ids(second_back, ROCKET)
        assert all(renewed) and len(set(renewed)) == 14, f"rockets on the second frame back: {renewed}"
        assert not set(renewed) & set(before), \
            f"after {gone} frames away (track_buffer {buffer}) old ids came back: {renewed} vs {before}"
        assert min(renewed) > highest, f"new ids {renewed} should be above every id handed out so far ({highest})"
    finally:
        rig.set("tracking.track_buffer", DEFAULT_TRACK_BUFFER)


# ---------------------------------------------------------------------------------------------
# The object memory
# ---------------------------------------------------------------------------------------------

def expected_memory(msgs):
    """The memory from a clean start after these frames: per track id, what the node must keep."""
    exp = {}
    for m in msgs:
        stamp = stamp_of(m.header)
        for d in m.detections:
            if d.track_id == 0:
                continue
            o = exp.setdefault(d.track_id, {"label": d.label, "first_seen": stamp, "times_seen": 0,
                                            "best_score": d.score, "position": None})
            assert o["label"] == d.label, f"track {d.track_id} changed label: {o['label']} -> {d.label}"
            o["times_seen"] += 1
            o["last_seen"] = stamp
            o["last_score"] = d.score
            o["best_score"] = max(o["best_score"], d.score)
            o["bbox"] = box_tuple(d.bbox)
            o["image_frame_id"] = m.header.frame_id
            if d.has_position:
                o["position"] = (vec(d.position), vec(d.size), quat(d.orientation), m.position_frame_id, stamp)
    return exp


def check_memory(objects, exp, what):
    got_ids = [o.id for o in objects]
    assert got_ids == sorted(exp), f"{what}: object ids {got_ids}, expected {sorted(exp)}"
    for o in objects:
        e = exp[o.id]
        w = f"{what}: object {o.id} ({e['label']})"
        got = {"label": o.label, "times_seen": o.times_seen, "first_seen": time_ns(o.first_seen),
               "last_seen": time_ns(o.last_seen), "last_score": o.last_score, "best_score": o.best_score,
               "bbox": box_tuple(o.bbox), "image_frame_id": o.image_frame_id}
        want = {k: e[k] for k in got}
        assert got == want, f"{w}:\n  got      {got}\n  expected {want}"
        if e["position"] is None:
            assert not o.has_position and o.position_frame_id == "", \
                f"{w}: never located, yet has_position {o.has_position}, position_frame_id {o.position_frame_id!r}"
            continue
        pos, size, orientation, frame_id, stamp = e["position"]
        got = (o.has_position, vec(o.position), vec(o.size), quat(o.orientation), o.position_frame_id,
               time_ns(o.position_stamp))
        want = (True, pos, size, orientation, frame_id, stamp)
        assert got == want, (f"{w}: (has_position, position, size, orientation, position_frame_id, position_stamp)\n"
                             f"  got      {got}\n  expected {want} (the last frame that located it)")


def test_memory_lists_tracked_objects_with_scores_counts_stamps_and_last_positions(rig):
    rig.clear_memory()
    # located on a plane at 1.5 m, then (the photo moved by a pixel: other boxes and scores) at
    # 1.2 m, then seen without depth: the memory keeps the positions of the 1.2 m frame
    msgs = [rig.frame(photo(), z=1.5), rig.frame(photo(1), z=1.2), rig.frame(photo(), z=None)]
    assert any(d.has_position for d in msgs[0].detections), "nothing was located at 1.5 m"
    assert not any(d.has_position for d in msgs[2].detections), "the frame sent without depth has 3D positions"
    for a, b in zip(msgs[0].detections, msgs[1].detections):
        if a.has_position and b.has_position:
            assert vec(a.position) != vec(b.position), "the 1.5 m and 1.2 m planes gave the same position"
    exp = expected_memory(msgs)
    assert len(exp) == 16 and all(o["times_seen"] == 3 for o in exp.values()), \
        {k: (o["label"], o["times_seen"]) for k, o in exp.items()}
    assert any(o["position"] for o in exp.values()), "no tracked detection was located"
    assert any(o["best_score"] != o["last_score"] for o in exp.values()), "the best scores are all the last ones"
    last = stamp_of(msgs[-1].header)

    snap = rig.latest_objects(lambda m: m.objects and max(time_ns(o.last_seen) for o in m.objects) == last,
                              f"the frame at {last}")
    check_memory(snap.objects, exp, "~/objects")
    print(f"memory: {len(exp)} objects, {sum(1 for o in exp.values() if o['position'])} with a 3D position "
          f"(kept from the 1.2 m frame)")
    assert stamp_of(snap.header) > 0, "~/objects header.stamp is 0"
    r = rig.get_objects()
    check_memory(r.objects, exp, "~/get_objects")
    assert f"{len(exp)} object" in r.message, r.message

    # latched: a subscriber that comes later gets the memory at once
    late = []
    sub = rig.client.node.create_subscription(ObjectArray, f"{rig.proc.fqn}/objects", late.append, OBJECTS_QOS)
    try:
        rig.client.wait(lambda: late, 10, "the latched ~/objects on a late subscription")
        check_memory(late[-1].objects, exp, "~/objects (late subscriber)")
    finally:
        rig.client.node.destroy_subscription(sub)


def test_get_objects_filters_by_label_and_clear_forgets_the_returned_ones(rig):
    rig.clear_memory()
    msgs = rig.frames_of([photo()] * 2)
    exp = expected_memory(msgs)
    cats = {k: v for k, v in exp.items() if v["label"] == CAT}
    rockets = {k: v for k, v in exp.items() if v["label"] == ROCKET}
    assert len(cats) == 2 and len(rockets) == 14, {k: v["label"] for k, v in exp.items()}

    check_memory(rig.get_objects([CAT]).objects, cats, f"~/get_objects [{CAT}]")
    check_memory(rig.get_objects([ROCKET, CAT]).objects, exp, f"~/get_objects [{ROCKET}, {CAT}]")
    r = rig.get_objects([CUP])
    assert r.success and not r.objects, f"`{CUP}` was never seen, got {[o.id for o in r.objects]}"
    last = stamp_of(msgs[-1].header)
    snap = rig.latest_objects(lambda m: m.objects and max(time_ns(o.last_seen) for o in m.objects) == last,
                              f"the frame at {last}")
    check_memory(snap.objects, exp, "~/objects before the clear")

    r = rig.get_objects([CAT], clear=True)
    check_memory(r.objects, cats, f"~/get_objects [{CAT}] with clear (what it returns)")
    assert "forgotten" in r.message, r.message
    check_memory(rig.get_objects().objects, rockets, "~/get_objects after clearing the cats")
    snap = rig.latest_objects(lambda m: len(m.objects) < len(exp), "a new message after the clear")
    check_memory(snap.objects, rockets, "~/objects after clearing the cats")

    check_memory(rig.get_objects(clear=True).objects, rockets, "~/get_objects with clear (all)")
    assert not rig.get_objects().objects
    rig.latest_objects(lambda m: not m.objects, "an empty memory after clearing everything")


def test_objects_not_seen_for_forget_after_are_forgotten_without_frames(rig):
    forget_after = 2.0
    try:
        rig.set("objects.forget_after", forget_after)
        msg = rig.frame(photo())
        seen = rig.client.detection_times[rig.client.detections.index(msg)]
        stamp = stamp_of(msg.header)
        rig.latest_objects(lambda m: any(time_ns(o.last_seen) == stamp for o in m.objects), "the frame's objects")
        present = rig.get_objects().objects
        asked = time.time() - seen
        assert asked < forget_after and {o.id for o in present} == set(ids(msg)), \
            f"{asked:.2f} s after the frame the memory holds {[o.id for o in present]}, expected {ids(msg)}"
        gone = rig.latest_objects(lambda m: not m.objects, "the objects forgotten", timeout=forget_after + 10)
        after = rig.objects_times[rig.objects.index(gone)] - seen
        assert forget_after - 0.2 <= after <= forget_after + 1.5, \
            (f"~/objects went empty {after:.2f} s after the frame; objects.forget_after = {forget_after} s, checked "
             f"every second: expected between {forget_after - 0.2} and {forget_after + 1.5} s")
        assert not rig.get_objects().objects
        print(f"forgotten {after:.2f} s after the last sighting (objects.forget_after = {forget_after} s)")
    finally:
        rig.set("objects.forget_after", DEFAULT_FORGET_AFTER)


# ---------------------------------------------------------------------------------------------
# ~/score and ~/ground
# ---------------------------------------------------------------------------------------------

def score_request(phrases, threshold, pil=None, frame_id=CAMERA, from_memory=False):
    req = Score.Request()
    req.phrases = phrases
    req.threshold = threshold
    req.from_memory = from_memory
    if pil is not None:
        req.image = image_msg(pil, "rgb8", frame_id=frame_id)
        set_stamp(req.image.header, T0_NS - NS)  # never a stream frame's stamp
    return req


def test_score_from_memory_reports_a_remembered_phrase_with_its_track(rig):
    rig.clear_memory()
    rig.frames_of([photo(), photo()])
    memory = rig.get_objects().objects
    latest = {}
    for o in memory:  # the one seen last (then the higher last score) per label
        if o.label not in latest or (time_ns(o.last_seen), o.last_score) > \
                (time_ns(latest[o.label].last_seen), latest[o.label].last_score):
            latest[o.label] = o
    assert set(latest) == {CAT, ROCKET}, sorted(latest)
    assert any(o.has_position for o in latest.values()), "neither remembered object has a 3D position"
    threshold = 0.99  # nothing on a grey image (nor on the photo) scores above this

    plain = rig.client.call(Score, "score", score_request(PHRASES, threshold, grey()))
    assert plain.success, plain.message
    assert [s.found for s in plain.scores] == [False] * 3, \
        f"without from_memory: found {[(s.phrase, s.score, s.found) for s in plain.scores]}"
    assert [s.detection.track_id for s in plain.scores] == [0, 0, 0], \
        f"an explicit image never carries track ids: {[s.detection.track_id for s in plain.scores]}"
    assert "memory" not in plain.message and plain.scene == "objects = []", (plain.message, plain.scene)

    r = rig.client.call(Score, "score", score_request(PHRASES, threshold, grey(), from_memory=True))
    assert r.success, r.message
    assert [s.phrase for s in r.scores] == PHRASES
    assert [s.found for s in r.scores] == [True, False, True], \
        f"from_memory: found {[(s.phrase, s.found) for s in r.scores]}, expected the cat and the rocket"
    assert "(2 from the object memory)" in r.message, r.message
    assert r.scene == f"objects = [{CAT}, {ROCKET}]", r.scene
    assert r.position_frame_id == CAMERA, r.position_frame_id
    for s in r.scores:
        if not s.found:
            assert s.detection.track_id == 0, (s.phrase, s.detection.track_id)
            continue
        o, d = latest[s.phrase], s.detection
        got = (s.score, d.label, d.score, d.track_id, box_tuple(d.bbox), d.has_position)
        want = (o.last_score, o.label, o.last_score, o.id, box_tuple(o.bbox), o.has_position)
        assert got == want, f"`{s.phrase}` from memory: (score, label, score, track_id, bbox, has_position)\n" \
                            f"  got      {got}\n  expected {want}"
        if o.has_position:
            assert (vec(d.position), vec(d.size), quat(d.orientation)) == \
                (vec(o.position), vec(o.size), quat(o.orientation)), \
                f"`{s.phrase}`: 3D {vec(d.position)} vs remembered {vec(o.position)}"

    # an answer in another frame than the remembered positions' carries no remembered 3D
    other = rig.client.call(Score, "score", score_request(PHRASES, threshold, grey(), frame_id="other_camera",
                                                          from_memory=True))
    assert other.success and other.position_frame_id == "other_camera", (other.message, other.position_frame_id)
    assert [s.found for s in other.scores] == [True, False, True], [(s.phrase, s.found) for s in other.scores]
    assert not any(s.detection.has_position for s in other.scores), \
        f"remembered positions in `{CAMERA}` given in `other_camera`: {[s.detection.has_position for s in other.scores]}"
    assert [s.detection.track_id for s in other.scores] == [latest[CAT].id, 0, latest[ROCKET].id], \
        [s.detection.track_id for s in other.scores]


def stream_track_of(msg, label, bbox):
    """The track id the node must give a service box on the stream's latest frame `msg`."""
    best = max(((iou(d.bbox, bbox), d.track_id) for d in msg.detections if d.label == label and d.track_id),
               default=(0.0, 0))
    return best[1] if best[0] >= 0.5 else 0


def test_score_and_ground_on_the_latest_frame_carry_the_stream_track_ids(rig):
    msg = rig.frame(photo())
    r = rig.client.call(Score, "score", score_request(PHRASES, 0.0))
    assert r.success and stamp_of(r.header) == stamp_of(msg.header), (r.message, stamp_of(r.header))
    got = [s.detection.track_id for s in r.scores]
    want = [stream_track_of(msg, s.phrase, s.detection.bbox) for s in r.scores]
    assert got == want, f"~/score track ids {got}, expected those of the stream's boxes {want}"
    assert want[PHRASES.index(ROCKET)] != 0, "the best `a rocket` box is not a stream track's box"

    req = Ground.Request()
    req.pick, req.place = ROCKET, CAT
    req.threshold = 0.0
    g = rig.client.call(Ground, "ground", req)
    assert g.success and g.has_place, g.message
    got = (g.pick.track_id, g.place.track_id)
    want = (stream_track_of(msg, ROCKET, g.pick.bbox), stream_track_of(msg, CAT, g.place.bbox))
    assert got == want and want[0] != 0, f"~/ground (pick, place) track ids {got}, expected {want}"

    # the same image sent with the request is not the stream's frame: no track ids
    r = rig.client.call(Score, "score", score_request(PHRASES, 0.0, photo()))
    assert [s.detection.track_id for s in r.scores] == [0, 0, 0], [s.detection.track_id for s in r.scores]
    req.image = image_msg(photo(), "rgb8", frame_id=CAMERA)
    g = rig.client.call(Ground, "ground", req)
    assert g.success and (g.pick.track_id, g.place.track_id) == (0, 0), (g.message, g.pick.track_id, g.place.track_id)


# ---------------------------------------------------------------------------------------------
# Live parameters
# ---------------------------------------------------------------------------------------------

def test_tracking_can_be_switched_off_and_on_live(rig):
    before = rig.frame(photo())
    assert all(ids(before)), labelled_ids(before)
    memory = {o.id: o.times_seen for o in rig.get_objects().objects}
    try:
        rig.set("tracking.enabled", False)
        assert get_param(rig.client, "tracking.enabled") is False
        off = rig.frame(photo())
        assert ids(off) == [0] * len(off.detections), f"tracking.enabled false, yet track ids {ids(off)}"
        if Detection2DArray is not None:
            d2 = rig.detections_2d_of(off)
            assert [x.id for x in d2.detections] == [""] * len(d2.detections), \
                f"tracking off: Detection2D ids {[x.id for x in d2.detections]}, expected all empty"
        after_off = {o.id: o.times_seen for o in rig.get_objects().objects}
        assert after_off == memory, f"a frame without tracks changed the memory: {memory} -> {after_off}"
    finally:
        rig.set("tracking.enabled", True)
    on = rig.frame(photo())
    assert ids(on) == ids(before), \
        f"tracking on again: ids {ids(on)}, expected the tracks of before it was off {ids(before)}"
    if Detection2DArray is not None:
        d2 = rig.detections_2d_of(on)
        assert [x.id for x in d2.detections] == [str(i) for i in ids(on)], [x.id for x in d2.detections]


def test_invalid_tracking_and_memory_values_are_refused_with_a_reason(rig):
    c = rig.client
    for name, value, words in [
        ("tracking.track_low_thresh", 0.5, ["tracking.track_high_thresh", "0.25", "0.5"]),
        ("tracking.track_high_thresh", 0.05, ["tracking.track_high_thresh", "0.05"]),
        ("tracking.new_track_thresh", 1.5, ["[0, 1]"]),
        ("tracking.track_buffer", 0, ["1..=100000"]),
        ("tracking.match_thresh", 0.0, ["positive"]),
        ("objects.forget_after", 0.0, ["(0, 1e6]"]),
        ("objects.forget_after", -1.0, ["(0, 1e6]"]),
    ]:
        old = get_param(c, name)
        r = set_param(c, name, value)
        assert not r.successful, f"{name} = {value!r} was accepted"
        assert all(w in r.reason for w in words), f"{name} = {value!r}: reason {r.reason!r} lacks {words}"
        assert get_param(c, name) == old, f"{name} changed to {get_param(c, name)!r} by a refused value"
    assert rig.proc.alive()
    msg = rig.frame(photo())
    assert all(ids(msg)), labelled_ids(msg)
