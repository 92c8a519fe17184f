"""3D from aligned depth and the planner services (~/score, ~/ground), on real node processes.

The scene is synthetic with answers in closed form: the colour camera (fx = fy = 400 px, principal
point (225, 149.5) in ROS pixel coordinates) looks at a fronto-parallel plane at 1.5 m, so every
located object lies at z = 1.5 m and its centre is its box centre back-projected:
x = (u - cx) z / fx with u = image x - 0.5 (pixel centres at integer coordinates). The detections
themselves come from the tiny random checkpoint: which boxes there are does not matter, where
they are in 3D does.
"""

import math
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image
from vlm_perception_msgs.srv import Ground, Score

from conftest import IMAGES, REPO, base_params, image_msg, load_rgb, module_node

FX = FY = 400.0
CX, CY = 225.0, 149.5
PLANE = 1.5
PHOTO = "chelsea.png"  # 451 x 300
PHRASES = ["a photo of a cat", "a coffee cup", "a rocket"]


def depth_params(**extra):
    return base_params(depth={"enabled": True, "slop": 0.05, **extra}, rate=0.0)


@pytest.fixture(scope="module")
def node(request):
    return module_node(request, depth_params(), "depth")


def camera_info_msg(width=451, height=300, k=None, frame_id="camera"):
    m = CameraInfo()
    m.header.frame_id = frame_id
    m.width, m.height = width, height
    m.k = list(k) if k is not None else [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
    m.distortion_model = "plumb_bob"
    m.d = [0.0] * 5
    return m


def depth_msg(metres: np.ndarray, encoding="16UC1", stamp=0.0, frame_id="camera", bigendian=False):
    """A depth image: 16UC1 in millimetres (NaN -> 0 = no data) or 32FC1 in metres."""
    h, w = metres.shape
    m = Image()
    m.header.frame_id = frame_id
    m.header.stamp.sec, m.header.stamp.nanosec = int(stamp), int(round((stamp % 1) * 1e9))
    m.width, m.height, m.encoding = w, h, encoding
    if encoding == "16UC1":
        mm = np.where(np.isfinite(metres), np.round(metres * 1000.0), 0).astype(">u2" if bigendian else "<u2")
        data, m.step = mm.tobytes(), 2 * w
    else:
        data, m.step = metres.astype(">f4" if bigendian else "<f4").tobytes(), 4 * w
    m.is_bigendian = int(bigendian)
    m.data = data
    return m


class Depth:
    """Publishers of one node's aligned depth and camera_info (the node's default topic names)."""

    def __init__(self, client):
        from rclpy.qos import qos_profile_sensor_data
        ns = client.proc.ns
        self.client = client
        self.depth_pub = client.node.create_publisher(Image, f"{ns}/aligned_depth_to_color/image_raw",
                                                      qos_profile_sensor_data)
        self.info_pub = client.node.create_publisher(CameraInfo, f"{ns}/color/camera_info", qos_profile_sensor_data)
        client.wait(lambda: self.depth_pub.get_subscription_count() > 0 and self.info_pub.get_subscription_count() > 0,
                    20, "the node's depth subscriptions")

    def publish(self, depth: Image, info: CameraInfo = None):
        self.info_pub.publish(info or camera_info_msg())
        self.depth_pub.publish(depth)


_stamp = [1000.0]


def next_stamp():
    _stamp[0] += 10.0
    return _stamp[0]


def stream_frame(client, depth, depth_image, info=None, depth_stamp_offset=0.0):
    """Publishes depth then the photo with one stamp until the node answers; returns the detections."""
    stamp = next_stamp()
    frame_id = f"depth-{stamp}"
    colour = image_msg(load_rgb(IMAGES / PHOTO), "rgb8", frame_id=frame_id, stamp=stamp)
    dmsg = depth_msg(depth_image, stamp=stamp + depth_stamp_offset)

    def publish():
        depth.publish(dmsg, info)
        client.spin(0.05)
        client.image_pub.publish(colour)

    return client.publish_until(publish, lambda: client.detections_for(frame_id), f"detections for {frame_id}")


def expected_centre(bbox, z=PLANE, fx=FX, fy=FY, cx=CX, cy=CY):
    u, v = bbox.center.position.x - 0.5, bbox.center.position.y - 0.5
    return (u - cx) * z / fx, (v - cy) * z / fy, z


def assert_on_plane(det, z=PLANE):
    x, y, zz = expected_centre(det.bbox, z)
    p = det.position
    assert (p.x, p.y, p.z) == pytest.approx((x, y, zz), abs=2e-3), det
    # box size at that depth; a plane has no depth spread
    assert det.size.x == pytest.approx(det.bbox.size_x * z / FX, abs=2e-3)
    assert det.size.y == pytest.approx(det.bbox.size_y * z / FY, abs=2e-3)
    assert det.size.z == pytest.approx(0.0, abs=2e-3)


def plane(w=451, h=300, z=PLANE):
    return np.full((h, w), z, dtype=np.float64)


def test_detections_on_a_plane_have_closed_form_positions(node):
    _, client = node
    depth = Depth(client)
    msg = stream_frame(client, depth, plane())
    located = [d for d in msg.detections if d.has_position]
    assert located, "no detection was located on a plane that fills the image"
    for d in located:
        assert_on_plane(d)
    # boxes whose sampled centre lies off the image have no depth under them
    for d in msg.detections:
        cx, cy = d.bbox.center.position.x, d.bbox.center.position.y
        if 0 <= cx < 451 and 0 <= cy < 300 and d.bbox.size_x > 4 and d.bbox.size_y > 4:
            assert d.has_position, d


def test_half_resolution_depth_with_holes_gives_the_same_positions(node):
    _, client = node
    depth = Depth(client)
    full = stream_frame(client, depth, plane())
    half = plane(226, 150)
    half[::3, ::2] = np.nan  # no data (0 in 16UC1)
    msg = stream_frame(client, depth, half)
    assert [d.has_position for d in msg.detections] == [d.has_position for d in full.detections]
    for d in msg.detections:
        if d.has_position:
            assert_on_plane(d)


def test_a_nearer_object_is_seen_at_its_depth(node):
    # the left half of the scene is a board at 1.0 m: boxes whose sampled centre (the central
    # half of the box) lies entirely on one side are at that side's depth
    _, client = node
    depth = Depth(client)
    scene = plane()
    scene[:, :225] = 1.0
    msg = stream_frame(client, depth, scene)
    checked = 0
    for d in msg.detections:
        if not d.has_position:
            continue
        cx, w = d.bbox.center.position.x, d.bbox.size_x
        left, right = cx - w / 4, cx + w / 4
        if right < 224:
            assert d.position.z == pytest.approx(1.0, abs=1e-3)
            x, _, _ = expected_centre(d.bbox, 1.0)
            assert d.position.x == pytest.approx(x, abs=2e-3)
            checked += 1
        elif left > 226:
            assert d.position.z == pytest.approx(PLANE, abs=1e-3)
            checked += 1
    assert checked > 0


def test_missing_depth_leaves_2d_and_is_counted(node):
    _, client = node
    depth = Depth(client)
    # all zeros: paired, but nothing valid under any object
    msg = stream_frame(client, depth, np.zeros((300, 451)))
    assert msg.detections and not any(d.has_position for d in msg.detections)
    # a depth image outside the slop: processed in 2D and counted on /diagnostics
    before = int(client.fresh_diag()["depth"][2]["frames_without_depth"])
    msg = stream_frame(client, depth, plane(), depth_stamp_offset=-1.0)
    assert msg.detections and not any(d.has_position for d in msg.detections)
    diag = client.wait(lambda: int(client.fresh_diag()["depth"][2]["frames_without_depth"]) > before and client.diag,
                       10, "frames_without_depth to count the frame")
    level, message, values = diag["depth"]
    assert "depth.slop" in values["last_without_depth"], values


def test_camera_info_with_zero_k_is_reported_and_2d_continues(start_node):
    proc, client = start_node(depth_params(), "zero_k")
    depth = Depth(client)
    msg = stream_frame(client, depth, plane(), info=camera_info_msg(k=[0.0] * 9))
    assert msg.detections and not any(d.has_position for d in msg.detections)
    diag = client.wait(lambda: client.diag.get("depth") and int(client.diag["depth"][2]["camera_info_bad"]) > 0
                       and client.diag, 10, "camera_info_bad on /diagnostics")
    assert "not calibrated" in diag["depth"][2]["last_without_depth"] or \
        "camera_info" in diag["depth"][2]["last_without_depth"], diag["depth"]
    assert proc.alive()


# ---------------------------------------------------------------------------------------------
# ~/score and ~/ground
# ---------------------------------------------------------------------------------------------

def score_request(phrases, threshold=0.0, with_image=True, depth=None, info=None):
    req = Score.Request()
    req.phrases = phrases
    req.threshold = threshold
    if with_image:
        req.image = image_msg(load_rgb(IMAGES / PHOTO), "rgb8", frame_id="score", stamp=next_stamp())
    if depth is not None:
        req.depth = depth
    if info is not None:
        req.camera_info = info
    return req


def test_score_gives_affordances_in_request_order_with_3d(node):
    _, client = node
    threshold = 0.5
    r = client.call(Score, "score", score_request(PHRASES, threshold, depth=depth_msg(plane()),
                                                  info=camera_info_msg()))
    assert r.success, r.message
    assert [s.phrase for s in r.scores] == PHRASES
    assert all(0.0 <= s.score <= 1.0 and s.found == (s.score > threshold) for s in r.scores)
    assert r.scene == "objects = [" + ", ".join(s.phrase for s in r.scores if s.found) + "]"
    for s in r.scores:
        assert s.detection.label == s.phrase and s.detection.score == pytest.approx(s.score)
        if s.detection.has_position:
            assert_on_plane(s.detection)
    assert any(s.detection.has_position for s in r.scores)
    assert r.header.frame_id == "score"
    # the same request without the threshold: the node's owlvit.score_threshold (0 here)
    r0 = client.call(Score, "score", score_request(PHRASES))
    assert [s.score for s in r0.scores] == pytest.approx([s.score for s in r.scores], abs=1e-6)
    assert all(s.found for s in r0.scores)


def test_score_bad_input(node):
    _, client = node
    r = client.call(Score, "score", score_request([]))
    assert not r.success and "no phrases given" in r.message, r.message
    r = client.call(Score, "score", score_request(["a cup", "  "]))
    assert not r.success and "phrase 1 is empty" in r.message, r.message
    r = client.call(Score, "score", score_request(["a cup"], threshold=3.0))
    assert not r.success and "threshold" in r.message, r.message
    # a depth image that is not aligned to the image (another aspect ratio): 2D, and said why
    r = client.call(Score, "score", score_request(["a cup"], depth=depth_msg(plane(100, 100)), info=camera_info_msg()))
    assert r.success and "aspect ratio" in r.message and not r.scores[0].detection.has_position, r.message
    # a corrupt depth image
    bad = depth_msg(plane())
    bad.encoding = "rgb8"
    r = client.call(Score, "score", score_request(["a cup"], depth=bad, info=camera_info_msg()))
    assert r.success and "rgb8" in r.message and not r.scores[0].detection.has_position, r.message


def test_score_without_depth_yet_says_so(start_node):
    _, client = start_node(depth_params(), "nodepth")
    r = client.call(Score, "score", score_request(["a cup"]))
    assert r.success, r.message
    assert "no 3D" in r.message and not r.scores[0].detection.has_position, r.message


def test_ground_gives_pick_and_place_pixels_and_points(node):
    _, client = node
    req = Ground.Request()
    req.pick, req.place = "a photo of a cat", "a coffee cup"
    req.threshold = 0.0
    req.return_masks = True
    req.image = image_msg(load_rgb(IMAGES / PHOTO), "rgb8", frame_id="ground", stamp=next_stamp())
    req.depth = depth_msg(plane(226, 150))
    req.camera_info = camera_info_msg()
    r = client.call(Ground, "ground", req)
    assert r.success, r.message
    assert r.has_place
    for t, phrase in ((r.pick, req.pick), (r.place, req.place)):
        assert t.phrase == phrase and 0.0 <= t.score <= 1.0
        b = t.bbox
        x0, x1 = b.center.position.x - b.size_x / 2, b.center.position.x + b.size_x / 2
        y0, y1 = b.center.position.y - b.size_y / 2, b.center.position.y + b.size_y / 2
        assert max(0, x0) <= t.pixel.x <= min(451, x1) and max(0, y0) <= t.pixel.y <= min(300, y1), t
        assert 0.0 <= t.peak_probability <= 1.0
        assert t.has_point
        u, v = t.pixel.x - 0.5, t.pixel.y - 0.5
        assert (t.point.x, t.point.y, t.point.z) == pytest.approx(
            ((u - CX) * PLANE / FX, (v - CY) * PLANE / FY, PLANE), abs=2e-3)
        assert (t.mask.width, t.mask.height, t.mask.encoding) == (451, 300, "mono8")
    # pick only, no masks
    req.place, req.return_masks = "", False
    r = client.call(Ground, "ground", req)
    assert r.success and not r.has_place and len(r.pick.mask.data) == 0, r.message


def test_ground_names_the_phrase_nothing_passes(node):
    _, client = node
    req = Ground.Request()
    req.pick, req.place = "a photo of a cat", "a rocket"
    req.threshold = 0.9999
    req.image = image_msg(load_rgb(IMAGES / PHOTO), "rgb8")
    r = client.call(Ground, "ground", req)
    assert not r.success and "a photo of a cat" in r.message and "0.9999" in r.message, r.message
    req.pick = " "
    req.threshold = 0.0
    r = client.call(Ground, "ground", req)
    assert not r.success and "phrase 0 is empty" in r.message, r.message


# ---------------------------------------------------------------------------------------------
# The example planner
# ---------------------------------------------------------------------------------------------

def test_saycan_example_planner_runs_against_the_node(node):
    proc, client = node
    depth = Depth(client)
    stream_frame(client, depth, plane())  # a synchronised frame for the services' "latest"
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "saycan_planner.py"), "--node", proc.fqn,
         "--task", "put the cat in the coffee cup", "--objects", "cat, coffee cup, rocket",
         "--threshold", "0.0", "--timeout", "60"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "objects = [" in text and "plan:" in text, text
    assert "pick up the cat and place it in the coffee cup" in text, text
    # the targets come with 3D points on the plane
    assert "z=1.500" in text, text


def test_vision_msgs_3d_detections_match_the_located_ones(node):
    try:
        from vision_msgs.msg import Detection3DArray
    except ImportError:
        pytest.skip("vision_msgs is not installed (../shared/ros2-extras or ros-jazzy-vision-msgs)")
    from conftest import RELIABLE
    proc, client = node
    got = []
    sub = client.node.create_subscription(Detection3DArray, f"{proc.fqn}/detections_3d", got.append, RELIABLE)
    try:
        depth = Depth(client)
        msg = stream_frame(client, depth, plane())
        frame_id = msg.header.frame_id
        d3 = client.wait(lambda: next((m for m in got if m.header.frame_id == frame_id), None), 10,
                         "a Detection3DArray for the frame")
        located = [d for d in msg.detections if d.has_position]
        assert [x.results[0].hypothesis.class_id for x in d3.detections] == [d.label for d in located]
        for x, d in zip(d3.detections, located):
            c = x.bbox.center.position
            assert (c.x, c.y, c.z) == pytest.approx((d.position.x, d.position.y, d.position.z), abs=1e-6)
            assert x.bbox.size.x == pytest.approx(d.size.x, abs=1e-6)
    finally:
        client.node.destroy_subscription(sub)
