"""tf2 target frames for every 3D output (issue 26), on a real node process over loopback.

The scene is test_node_depth.py's (chelsea.png on a fronto-parallel plane at 1.5 m, colour camera
fx = fy = 400 px) with its image frame `camera_color_optical_frame` placed in a tf tree that this
module publishes itself:

    odom --(/tf: moving)--> base_link --(/tf_static)--> camera_link --(/tf_static)--> camera_color_optical_frame

odom -> base_link drives at a known velocity and yaw rate, sampled every 50 ms; the image stamps
lie between two samples, so the node has to interpolate (translation linearly, rotation by slerp,
which for yaw-only rotations is the linearly interpolated yaw). The expected answers are in closed
form: p_target = target_T_camera(stamp) @ p_camera, where p_camera is what the node itself gives
for the same image and depth with no target frame (the `ref` fixture), so positions are compared
to 1e-6 m.

One node serves the module. The /tf samples of each frame or call live in a "window" of their own
(1 s of samples), each window 100 s after the previous one, so that the buffer (10 s behind the
newest sample) has forgotten the earlier windows and every stamp is bracketed by exactly the
samples published for it. A window's samples go out in one TFMessage; a burst of single-sample
messages has a test of its own.
"""

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray
from vlm_perception_msgs.srv import Ground, Score

from conftest import IMAGES, RELIABLE, image_msg, load_rgb, module_node
from test_node_depth import PHOTO, PLANE, camera_info_msg, depth_msg, depth_params, plane
from test_node_params import get_param, set_param

try:
    from vision_msgs.msg import Detection3DArray
except ImportError:  # the node is then built without ~/detections_3d
    Detection3DArray = None

CAMERA = "camera_color_optical_frame"
PHRASES = ["a photo of a cat", "a coffee cup", "a rocket"]
PICK, PLACE = "a photo of a cat", "a coffee cup"
WARN = 1
POS_TOL = 1e-6  # metres
ROT_TOL = 1e-6  # quaternion components
DEFAULT_TF_TIMEOUT = "0.100"  # tf.timeout as the node's messages print it

NS = 1_000_000_000
T_BASE_NS = 1_700_000_000 * NS  # stamps of the first window
WINDOW_SPACING_NS = 100 * NS  # > the buffer's 10 s: a new window makes the node forget the old ones
SAMPLE_NS = 50_000_000  # /tf every 50 ms
SAMPLES = range(-10, 11)  # a window: samples from origin - 0.5 s to origin + 0.5 s
IMAGE_OFFSET_NS = 23_456_789  # the image stamp: between the samples at origin and origin + 50 ms

# odom -> base_link in a window: x, y = (X0, Y0) + V dt, yaw = YAW0 + W dt (dt from the origin).
X0, Y0, V = 1.2, -0.7, (0.4, 0.1)
YAW0, YAW_RATE = 0.5, 0.3

# base_link -> camera_link: ahead, left and up, turned a little left and tilted a little down.
BASE_CAMERA_LINK = ((0.1, 0.02, 0.5), (0.0, 0.05, 0.2))  # translation, rpy
# camera_link -> camera_color_optical_frame: REP 103's optical rotation (z forward, x right,
# y down), rpy = (-pi/2, 0, -pi/2), and the colour imager's offset.
CAMERA_LINK_OPTICAL = ((0.0, 0.015, 0.0), (-math.pi / 2, 0.0, -math.pi / 2))
OPTICAL_QUAT = (-0.5, 0.5, -0.5, 0.5)


# ---------------------------------------------------------------------------------------------
# Rigid transforms in numpy (quaternions as (x, y, z, w), as ROS writes them)
# ---------------------------------------------------------------------------------------------

def quat_from_rpy(roll, pitch, yaw):
    """tf2's Quaternion::setRPY: fixed axes x (roll), then y (pitch), then z (yaw)."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    return np.array([sr * cp * cy - cr * sp * sy,
                     cr * sp * cy + sr * cp * sy,
                     cr * cp * sy - sr * sp * cy,
                     cr * cp * cy + sr * sp * sy])


def quat_to_matrix(q):
    x, y, z, w = np.asarray(q, dtype=float) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(m):
    """The unit quaternion of a rotation matrix (Shepperd's method), w >= 0."""
    t = np.trace(m)
    if t > 0:
        s = 2.0 * math.sqrt(t + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def slerp(q0, q1, r):
    q0, q1 = np.asarray(q0, float), np.asarray(q1, float)
    d = float(np.dot(q0, q1))
    if d < 0:  # the shorter way round
        q1, d = -q1, -d
    if d > 1 - 1e-12:
        q = q0 + r * (q1 - q0)
    else:
        a = math.acos(d)
        q = (math.sin((1 - r) * a) * q0 + math.sin(r * a) * q1) / math.sin(a)
    return q / np.linalg.norm(q)


class Rigid:
    """parent_T_child: p_parent = R p_child + t."""

    def __init__(self, t=(0.0, 0.0, 0.0), q=(0.0, 0.0, 0.0, 1.0)):
        self.t = np.asarray(t, dtype=float)
        self.q = np.asarray(q, dtype=float) / np.linalg.norm(q)
        self.R = quat_to_matrix(self.q)

    @classmethod
    def rpy(cls, t, rpy):
        return cls(t, quat_from_rpy(*rpy))

    def __matmul__(self, other):
        return Rigid(self.R @ other.t + self.t, matrix_to_quat(self.R @ other.R))

    def apply(self, p):
        return self.R @ np.asarray(p, dtype=float) + self.t


BASE_T_CAMERA_LINK = Rigid.rpy(*BASE_CAMERA_LINK)
CAMERA_LINK_T_OPTICAL = Rigid.rpy(*CAMERA_LINK_OPTICAL)
BASE_T_CAMERA = BASE_T_CAMERA_LINK @ CAMERA_LINK_T_OPTICAL


def odom_T_base_model(dt):
    """The robot's pose dt seconds after a window's origin."""
    return Rigid((X0 + V[0] * dt, Y0 + V[1] * dt, 0.0), quat_from_rpy(0.0, 0.0, YAW0 + YAW_RATE * dt))


def vec(p):
    return np.array([p.x, p.y, p.z])


def quat(q):
    return np.array([q.x, q.y, q.z, q.w])


def assert_vec(got, want, tol, what):
    got, want = np.asarray(got, float), np.asarray(want, float)
    err = float(np.max(np.abs(got - want)))
    assert err <= tol, f"{what}: got {got.tolist()}, expected {want.tolist()} (max error {err:.3g} > {tol})"


def assert_rotation(got, want, what):
    """Quaternions as rotations: q and -q are the same one."""
    got = np.asarray(got, float)
    want = np.asarray(want, float)
    err = min(float(np.max(np.abs(got - want))), float(np.max(np.abs(got + want))))
    assert err <= ROT_TOL, (f"{what}: got (x, y, z, w) {got.tolist()}, expected {want.tolist()} "
                            f"(or its negative; max error {err:.3g} > {ROT_TOL})")


def fmt_ns(ns):
    """A stamp or duration as the transform buffer prints it: seconds with nine decimals."""
    return f"{ns // NS}.{ns % NS:09d}"


def set_stamp(header, ns):
    header.stamp.sec, header.stamp.nanosec = divmod(int(ns), NS)


def stamp_of(header):
    return header.stamp.sec * NS + header.stamp.nanosec


def header_of(msg):
    """A message's header; a MarkerArray's is its first marker's (the DELETEALL)."""
    if isinstance(msg, MarkerArray):
        return msg.markers[0].header if msg.markers else None
    return msg.header


def with_stamp(msgs, ns):
    return next((m for m in msgs if header_of(m) is not None and stamp_of(header_of(m)) == ns), None)


# ---------------------------------------------------------------------------------------------
# The rig: one node, the tf tree, the camera's depth, and the 3D topics
# ---------------------------------------------------------------------------------------------

class Window:
    """1 s of odom -> base_link samples around origin_ns; the image stamp lies between two."""

    def __init__(self, origin_ns):
        self.origin_ns = origin_ns
        self.image_ns = origin_ns + IMAGE_OFFSET_NS
        self.published = []  # stamps of the samples sent, in order

    def stamp(self, k):
        return self.origin_ns + k * SAMPLE_NS

    def sample(self, stamp_ns):
        return odom_T_base_model((stamp_ns - self.origin_ns) / NS)

    def odom_T_base(self, stamp_ns):
        """What tf2 gives from the samples sent: linear between the two around the stamp, slerp."""
        ts = sorted(self.published)
        if stamp_ns in ts:
            return self.sample(stamp_ns)
        before = [s for s in ts if s < stamp_ns]
        after = [s for s in ts if s > stamp_ns]
        assert before and after, f"stamp {fmt_ns(stamp_ns)} is not between two samples sent ({ts})"
        a, b = before[-1], after[0]
        r = (stamp_ns - a) / (b - a)
        ta, tb = self.sample(a), self.sample(b)
        return Rigid(ta.t + r * (tb.t - ta.t), slerp(ta.q, tb.q, r))

    def target_T_camera(self, target, stamp_ns=None):
        if target == CAMERA:
            return Rigid()
        if target == "base_link":
            return BASE_T_CAMERA
        assert target == "odom", target
        return self.odom_T_base(self.image_ns if stamp_ns is None else stamp_ns) @ BASE_T_CAMERA


def transform_msg(parent, child, stamp_ns, rigid):
    m = TransformStamped()
    m.header.frame_id, m.child_frame_id = parent, child
    set_stamp(m.header, stamp_ns)
    m.transform.translation.x, m.transform.translation.y, m.transform.translation.z = map(float, rigid.t)
    r = m.transform.rotation
    r.x, r.y, r.z, r.w = map(float, rigid.q)
    return m


_PHOTO = []


def photo():
    if not _PHOTO:
        _PHOTO.append(load_rgb(IMAGES / PHOTO))
    return _PHOTO[0]


def colour_msg(stamp_ns, frame_id=CAMERA):
    m = image_msg(photo(), "rgb8", frame_id=frame_id)
    set_stamp(m.header, stamp_ns)
    return m


def plane_depth_msg(stamp_ns=0, frame_id=CAMERA):
    m = depth_msg(plane(), frame_id=frame_id)
    set_stamp(m.header, stamp_ns)
    return m


class Rig:
    def __init__(self, proc, client):
        self.proc, self.client = proc, client
        node, ns, fqn = client.node, proc.ns, proc.fqn
        # as tf2_ros's StaticTransformBroadcaster and TransformBroadcaster
        self.static_pub = node.create_publisher(TFMessage, "/tf_static", QoSProfile(
            reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
            history=HistoryPolicy.KEEP_LAST, depth=1))
        self.tf_pub = node.create_publisher(TFMessage, "/tf", QoSProfile(
            reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
            history=HistoryPolicy.KEEP_LAST, depth=100))
        camera_qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=5)
        self.depth_pub = node.create_publisher(Image, f"{ns}/aligned_depth_to_color/image_raw", camera_qos)
        self.info_pub = node.create_publisher(CameraInfo, f"{ns}/color/camera_info", camera_qos)
        self.markers, self.detections_3d = [], []
        self._subs = [node.create_subscription(MarkerArray, f"{fqn}/markers", self.markers.append, RELIABLE)]
        if Detection3DArray is not None:
            self._subs.append(node.create_subscription(Detection3DArray, f"{fqn}/detections_3d",
                                                       self.detections_3d.append, RELIABLE))
        self._pubs = [self.static_pub, self.tf_pub, self.depth_pub, self.info_pub]
        client.wait(lambda: all(p.get_subscription_count() > 0 for p in self._pubs), 20,
                    "the node's /tf, /tf_static, depth and camera_info subscriptions")
        self.statics = []
        self.frames = set()  # every frame id sent
        self.sent = 0  # transforms sent on /tf and /tf_static
        self.windows = 0
        self.add_static("base_link", "camera_link", BASE_T_CAMERA_LINK)
        self.add_static("camera_link", CAMERA, CAMERA_LINK_T_OPTICAL)

    def destroy(self):
        for p in self._pubs:
            self.client.node.destroy_publisher(p)
        for s in self._subs:
            self.client.node.destroy_subscription(s)

    # -- tf -------------------------------------------------------------------------------------

    def add_static(self, parent, child, rigid):
        """One more static transform; the whole static tree goes out again, as tf2_ros does."""
        self.statics.append(transform_msg(parent, child, T_BASE_NS, rigid))
        self.static_pub.publish(TFMessage(transforms=list(self.statics)))
        self.sent += len(self.statics)
        self.frames |= {parent, child}

    def new_window(self):
        w = Window(T_BASE_NS + self.windows * WINDOW_SPACING_NS)
        self.windows += 1
        return w

    def publish_samples(self, window, ks, one_message=True):
        """odom -> base_link at the window's samples ks: in one /tf message (as tf2_ros's
        sendTransform(vector) sends them), or one message each (a burst of broadcasts)."""
        msgs = [transform_msg("odom", "base_link", window.stamp(k), window.sample(window.stamp(k))) for k in ks]
        for batch in ([msgs] if one_message else [[m] for m in msgs]):
            self.tf_pub.publish(TFMessage(transforms=batch))
        window.published += [window.stamp(k) for k in ks]
        self.sent += len(msgs)
        self.frames |= {"odom", "base_link"}

    def taken(self):
        """(transforms_received, transforms_rejected) on the latest /diagnostics."""
        v = self.client.fresh_diag()["tf"][2]
        return int(v["transforms_received"]), int(v["transforms_rejected"])

    def sync_tf(self):
        """Waits until the node has taken every transform sent (/diagnostics counts them)."""
        def taken():
            s = self.client.diag.get("tf")
            if s is None:
                return None
            v = s[2]
            return int(v["transforms_received"]) + int(v["transforms_rejected"]) >= self.sent and v
        try:
            v = self.client.wait(taken, 20, f"the node to take the {self.sent} transforms sent (tf diagnostics)")
        except AssertionError as e:
            s = self.client.diag.get("tf")
            raise AssertionError(f"the node took {s and s[2].get('transforms_received')} of the {self.sent} "
                                 f"transforms sent (rejected {s and s[2].get('transforms_rejected')}); tf status "
                                 f"{s}\n{e}") from None
        assert int(v["transforms_rejected"]) == 0, \
            f"the node refused {v['transforms_rejected']} transform(s), the last: {v['last_rejected']}"

    def window(self, ks=SAMPLES):
        w = self.new_window()
        self.publish_samples(w, ks)
        self.sync_tf()
        return w

    # -- frames and calls -----------------------------------------------------------------------

    def send_frame(self, stamp_ns, frame_id=CAMERA):
        info = camera_info_msg(frame_id=frame_id)
        set_stamp(info.header, stamp_ns)
        self.info_pub.publish(info)
        self.depth_pub.publish(plane_depth_msg(stamp_ns, frame_id))
        self.client.spin(0.05)
        self.client.reliable_image_pub.publish(colour_msg(stamp_ns, frame_id))

    def stream(self, stamp_ns, tries=3, every=15.0):
        """Sends the frame (reliable; again only if nothing came back) until its detections come."""
        c = self.client
        for _ in range(tries):
            self.send_frame(stamp_ns)
            try:
                return c.wait(lambda: with_stamp(c.detections, stamp_ns), every, f"detections at {fmt_ns(stamp_ns)}")
            except AssertionError:
                if not self.proc.alive():
                    raise
        raise AssertionError(f"no detections at {fmt_ns(stamp_ns)} after {tries} tries\n{self.proc.log()[-4000:]}")

    def outputs_3d(self, stamp_ns, located=True):
        """The frame's ~/markers and ~/detections_3d (None where not built, or nothing located)."""
        c = self.client
        markers = c.wait(lambda: with_stamp(self.markers, stamp_ns), 10, f"~/markers at {fmt_ns(stamp_ns)}")
        d3 = None
        if Detection3DArray is not None and located:
            d3 = c.wait(lambda: with_stamp(self.detections_3d, stamp_ns), 10,
                        f"~/detections_3d at {fmt_ns(stamp_ns)}")
        return markers, d3

    def score(self, stamp_ns, target_frame="", frame_id=CAMERA):
        req = Score.Request()
        req.phrases = PHRASES
        req.threshold = 0.0
        req.image = colour_msg(stamp_ns, frame_id)
        req.depth = plane_depth_msg(stamp_ns, frame_id)
        req.camera_info = camera_info_msg(frame_id=frame_id)
        req.target_frame = target_frame
        return self.client.call(Score, "score", req, timeout=60)

    def ground(self, stamp_ns, target_frame=""):
        req = Ground.Request()
        req.pick, req.place = PICK, PLACE
        req.threshold = 0.0
        req.return_masks = False
        req.return_points = True
        req.image = colour_msg(stamp_ns)
        req.depth = plane_depth_msg(stamp_ns)
        req.camera_info = camera_info_msg(frame_id=CAMERA)
        req.target_frame = target_frame
        return self.client.call(Ground, "ground", req, timeout=60)

    def set(self, name, value):
        r = set_param(self.client, name, value)
        assert r.successful, f"setting {name} = {value!r} was refused: {r.reason}"

    def tf_status(self, pred, what, timeout=10):
        """The latest tf status on /diagnostics once pred(level, message, values) holds."""
        c = self.client
        return c.wait(lambda: c.diag.get("tf") and pred(*c.diag["tf"]) and c.diag["tf"], timeout,
                      f"the tf status on /diagnostics to show {what} (now: {c.diag.get('tf')})")


def node_params():
    p = depth_params()
    p["camera"] = {**p["camera"], "reliable": True, "transport": "raw"}
    p["vilt"] = {**p["vilt"], "enabled": False}
    # a stream prompt: ~/segmentation follows each frame's detections out of the worker (the
    # late-transform test uses it to know that the frame waits for its transform)
    p["clipseg"] = {**p["clipseg"], "prompts": [PICK]}
    return p  # target_frame and tf.timeout: the defaults ("" and 0.1 s)


@pytest.fixture(scope="module")
def rig(request):
    proc, client = module_node(request, node_params(), "tf")
    r = Rig(proc, client)
    request.addfinalizer(r.destroy)
    r.sync_tf()
    return r


class Ref:
    """The node's own answers in the camera optical frame (target_frame empty)."""


@pytest.fixture(scope="module")
def ref(rig):
    assert get_param(rig.client, "target_frame") == ""
    r = Ref()
    w = rig.new_window()  # no /tf needed without a target frame
    r.stamp = w.image_ns
    r.stream = rig.stream(w.image_ns)
    r.markers, r.detections_3d = rig.outputs_3d(w.image_ns)
    assert any(d.has_position for d in r.stream.detections), \
        f"no detection was located on the plane: {r.stream.detections}"
    r.score = rig.score(w.image_ns)
    assert r.score.success, r.score.message
    assert any(s.detection.has_position for s in r.score.scores), r.score.message
    r.ground = rig.ground(w.image_ns)
    assert r.ground.success and r.ground.has_place, r.ground.message
    assert r.ground.pick.has_point and r.ground.place.has_point, r.ground.message
    return r


# ---------------------------------------------------------------------------------------------
# Checks of one output against the reference
# ---------------------------------------------------------------------------------------------

def boxes(msg):
    return [(d.label, d.query_index, d.score, d.bbox.center.position.x, d.bbox.center.position.y,
             d.bbox.size_x, d.bbox.size_y) for d in msg.detections]


def check_detections(msg, ref, target, stamp_ns, T):
    """A DetectionArray in `target` (T = target_T_camera at the stamp) against the reference."""
    assert (msg.header.frame_id, stamp_of(msg.header)) == (CAMERA, stamp_ns), \
        f"header: got ({msg.header.frame_id!r}, {fmt_ns(stamp_of(msg.header))}), expected the image's ({CAMERA!r}, {fmt_ns(stamp_ns)})"
    assert msg.position_frame_id == target, f"position_frame_id: got {msg.position_frame_id!r}, expected {target!r}"
    assert boxes(msg) == boxes(ref), f"the same image gave other boxes:\n{boxes(msg)}\nvs\n{boxes(ref)}"
    for i, (d, r) in enumerate(zip(msg.detections, ref.detections)):
        what = f"detection {i} ({d.label}) in {target}"
        assert d.has_position == r.has_position, \
            f"{what}: has_position {d.has_position}, in the camera frame {r.has_position}"
        if not r.has_position:
            continue
        assert_vec(vec(d.position), T.apply(vec(r.position)), POS_TOL, f"{what}: position")
        assert_rotation(quat(d.orientation), T.q, f"{what}: orientation")
        assert_vec(vec(d.size), vec(r.size), 1e-9, f"{what}: size (along the box's own axes)")


def check_outputs_3d(markers, d3, ref, target, stamp_ns, T):
    """~/markers and ~/detections_3d of a frame in `target`."""
    for m in markers.markers:
        assert (m.header.frame_id, stamp_of(m.header)) == (target, stamp_ns), \
            f"marker {m.id} header: got ({m.header.frame_id!r}, {fmt_ns(stamp_of(m.header))}), expected ({target!r}, {fmt_ns(stamp_ns)})"
    cubes = {m.id: m for m in markers.markers if m.type == Marker.CUBE}
    located = [(i, r) for i, r in enumerate(ref.detections) if r.has_position]
    assert sorted(cubes) == [2 * i for i, _ in located], \
        f"CUBE marker ids {sorted(cubes)}, expected one per located detection: {[2 * i for i, _ in located]}"
    for i, r in located:
        p = cubes[2 * i].pose
        what = f"CUBE marker of detection {i} ({r.label}) in {target}"
        assert_vec(vec(p.position), T.apply(vec(r.position)), POS_TOL, f"{what}: pose.position")
        assert_rotation(quat(p.orientation), T.q, f"{what}: pose.orientation")
    if d3 is None:
        return
    assert (d3.header.frame_id, stamp_of(d3.header)) == (target, stamp_ns), \
        f"Detection3DArray header: got ({d3.header.frame_id!r}, {fmt_ns(stamp_of(d3.header))}), expected ({target!r}, {fmt_ns(stamp_ns)})"
    assert [x.results[0].hypothesis.class_id for x in d3.detections] == [r.label for _, r in located], \
        f"Detection3D labels {[x.results[0].hypothesis.class_id for x in d3.detections]} vs located {[r.label for _, r in located]}"
    for x, (i, r) in zip(d3.detections, located):
        what = f"Detection3D of detection {i} ({r.label}) in {target}"
        assert x.header.frame_id == target, f"{what}: header.frame_id {x.header.frame_id!r}, expected {target!r}"
        want = T.apply(vec(r.position))
        assert_vec(vec(x.bbox.center.position), want, POS_TOL, f"{what}: bbox.center.position")
        assert_rotation(quat(x.bbox.center.orientation), T.q, f"{what}: bbox.center.orientation")
        assert_vec(vec(x.bbox.size), vec(r.size), 1e-9, f"{what}: bbox.size")
        assert_vec(vec(x.results[0].pose.pose.position), want, POS_TOL, f"{what}: results[0].pose.position")


def check_score(resp, ref, target, stamp_ns, T):
    assert resp.success, resp.message
    assert "no 3D" not in resp.message, f"3D left out: {resp.message}"
    assert (resp.header.frame_id, stamp_of(resp.header)) == (CAMERA, stamp_ns), \
        f"header: got ({resp.header.frame_id!r}, {fmt_ns(stamp_of(resp.header))}), expected the image's ({CAMERA!r}, {fmt_ns(stamp_ns)})"
    assert resp.position_frame_id == target, f"position_frame_id: got {resp.position_frame_id!r}, expected {target!r}"
    assert [s.phrase for s in resp.scores] == [s.phrase for s in ref.scores]
    for s, r in zip(resp.scores, ref.scores):
        d, rd = s.detection, r.detection
        what = f"~/score `{s.phrase}` in {target}"
        assert d.has_position == rd.has_position, f"{what}: has_position {d.has_position}, in the camera frame {rd.has_position}"
        if rd.has_position:
            assert_vec(vec(d.position), T.apply(vec(rd.position)), POS_TOL, f"{what}: position")
            assert_rotation(quat(d.orientation), T.q, f"{what}: orientation")
            assert_vec(vec(d.size), vec(rd.size), 1e-9, f"{what}: size")


def check_ground(resp, ref, target, stamp_ns, T):
    assert resp.success and resp.has_place, resp.message
    assert "no 3D" not in resp.message, f"3D left out: {resp.message}"
    assert (resp.header.frame_id, stamp_of(resp.header)) == (CAMERA, stamp_ns), \
        f"header: got ({resp.header.frame_id!r}, {fmt_ns(stamp_of(resp.header))}), expected ({CAMERA!r}, {fmt_ns(stamp_ns)})"
    assert resp.position_frame_id == target, f"position_frame_id: got {resp.position_frame_id!r}, expected {target!r}"
    for name, t, r in (("pick", resp.pick, ref.pick), ("place", resp.place, ref.place)):
        assert t.has_point, f"~/ground {name} has no point in {target}: {resp.message}"
        assert_vec(vec(t.point), T.apply(vec(r.point)), POS_TOL, f"~/ground {name}.point in {target}")
        # the gripper pose is moved as a rigid frame: target_T_camera @ camera_T_gripper
        assert t.has_pose and r.has_pose, f"~/ground {name}: no pose"
        want = T @ Rigid(vec(r.pose.position), quat(r.pose.orientation))
        assert_vec(vec(t.pose.position), want.t, POS_TOL, f"~/ground {name}.pose.position in {target}")
        assert_rotation(quat(t.pose.orientation), want.q, f"~/ground {name}.pose.orientation in {target}")
        # and its points, each one
        assert (t.points.header.frame_id, t.points.width) == (target, r.points.width) and r.points.width > 0
        got, ref_pts = cloud_xyz(t.points), cloud_xyz(r.points)
        assert_vec(got, (T.R @ ref_pts.T).T + T.t, 1e-5, f"~/ground {name}.points in {target} (float32)")


def cloud_xyz(cloud):
    """x, y, z of a PointCloud2 of the node's layout (24-byte points, float32 x, y, z first)."""
    raw = np.frombuffer(bytes(cloud.data), dtype=np.float32).reshape(cloud.width, 6)
    return raw[:, :3].astype(np.float64)


def check_2d_only(msg, ref, target, stamp_ns):
    assert msg.position_frame_id == target, f"position_frame_id: got {msg.position_frame_id!r}, expected {target!r}"
    assert boxes(msg) == boxes(ref), f"the 2D boxes changed:\n{boxes(msg)}\nvs\n{boxes(ref)}"
    assert not any(d.has_position for d in msg.detections), \
        f"has_position {[d.has_position for d in msg.detections]}, expected all false"


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

def test_without_target_frame_outputs_stay_in_the_camera_frame(rig, ref):
    msg = ref.stream
    assert msg.header.frame_id == CAMERA and msg.position_frame_id == CAMERA, \
        f"header.frame_id {msg.header.frame_id!r}, position_frame_id {msg.position_frame_id!r}, expected {CAMERA!r}"
    for d in msg.detections:
        if d.has_position:
            # on the plane (x, y: the box centre or, with this module's stream prompt, the mask
            # centroid back-projected): the reference is real 3D
            assert abs(d.position.z - PLANE) <= 2e-3, f"detection {d.label} at z = {d.position.z}, the plane is at {PLANE}"
            assert_rotation(quat(d.orientation), (0, 0, 0, 1), f"detection {d.label} orientation")
    check_outputs_3d(ref.markers, ref.detections_3d, msg, CAMERA, ref.stamp, Rigid())
    assert ref.score.position_frame_id == CAMERA and ref.ground.position_frame_id == CAMERA, \
        (ref.score.position_frame_id, ref.ground.position_frame_id)
    for s in ref.score.scores:
        assert_rotation(quat(s.detection.orientation), (0, 0, 0, 1), f"~/score `{s.phrase}` orientation")
    status = rig.tf_status(lambda lvl, m, v: v.get("target_frame") == "", "target_frame empty")
    assert status[0] == 0 and "camera optical frame" in status[1], f"tf status {status}"


def test_stream_positions_markers_and_3d_detections_in_odom_and_base_link(rig, ref):
    assert np.allclose(quat_from_rpy(*CAMERA_LINK_OPTICAL[1]), OPTICAL_QUAT), quat_from_rpy(*CAMERA_LINK_OPTICAL[1])
    try:
        for target in ("odom", "base_link"):
            rig.set("target_frame", target)
            w = rig.window()
            T = w.target_T_camera(target)
            msg = rig.stream(w.image_ns)
            check_detections(msg, ref.stream, target, w.image_ns, T)
            markers, d3 = rig.outputs_3d(w.image_ns)
            check_outputs_3d(markers, d3, ref.stream, target, w.image_ns, T)
            if target == "odom":
                # the interpolation matters here: the nearest sample (23 ms earlier) is about 1 cm off
                nearest = w.sample(w.stamp(0)) @ BASE_T_CAMERA
                d = next(d for d in ref.stream.detections if d.has_position)
                off = np.abs(nearest.apply(vec(d.position)) - T.apply(vec(d.position))).max()
                assert off > 1e-3, f"the test's stamp does not exercise interpolation ({off})"
                status = rig.tf_status(lambda lvl, m, v: v.get("target_frame") == "odom" and int(v["lookups_ok"]) > 0
                                       and lvl == 0, "a successful lookup into odom")
                assert "3D outputs in `odom`" in status[1], f"tf status {status}"
    finally:
        rig.set("target_frame", "")


def test_score_and_ground_answer_in_the_requested_target_frame(rig, ref):
    w = rig.window()
    for target in ("odom", "base_link", CAMERA):
        T = w.target_T_camera(target)
        check_score(rig.score(w.image_ns, target), ref.score, target, w.image_ns, T)
        check_ground(rig.ground(w.image_ns, target), ref.ground, target, w.image_ns, T)
    # an empty request field takes the node's parameter; a request's own frame wins over it
    try:
        rig.set("target_frame", "base_link")
        check_score(rig.score(w.image_ns, ""), ref.score, "base_link", w.image_ns, BASE_T_CAMERA)
        check_ground(rig.ground(w.image_ns, "odom"), ref.ground, "odom", w.image_ns, w.target_T_camera("odom"))
    finally:
        rig.set("target_frame", "")


def test_a_transform_published_after_the_frame_is_waited_for_and_used(rig, ref):
    c = rig.client
    try:
        rig.set("target_frame", "odom")
        rig.set("tf.timeout", 3.0)
        w = rig.window(range(-10, 1))  # up to the sample just before the image stamp
        image_sent = time.monotonic()
        rig.send_frame(w.image_ns)
        # the frame's ~/segmentation comes out of the worker right after its detections went to
        # the tf stage: from then on the frame waits for its transform
        c.wait(lambda: with_stamp(c.segmentations, w.image_ns), 30, "the frame's ~/segmentation")
        staged = time.monotonic()
        assert with_stamp(c.detections, w.image_ns) is None, \
            "the detections were published before the transform at their stamp was sent"
        c.spin(0.05)
        late_sent_wall = time.time()
        late_after = time.monotonic() - image_sent
        rig.publish_samples(w, range(1, 11))
        msg = c.wait(lambda: with_stamp(c.detections, w.image_ns), 10, "the detections after the late transform")
        got_at = c.detection_times[c.detections.index(msg)]
        assert got_at >= late_sent_wall, \
            f"detections received {late_sent_wall - got_at:.3f} s before the late transform was sent"
        check_detections(msg, ref.stream, "odom", w.image_ns, w.target_T_camera("odom"))
        markers, d3 = rig.outputs_3d(w.image_ns)
        check_outputs_3d(markers, d3, ref.stream, "odom", w.image_ns, w.target_T_camera("odom"))
        print(f"late transform sent {late_after:.3f} s after the image ({time.monotonic() - staged:.3f} s after "
              f"the frame was staged), detections {got_at - late_sent_wall:.3f} s after it")
    finally:
        rig.set("tf.timeout", 0.1)
        rig.set("target_frame", "")


def test_a_transform_that_never_comes_leaves_2d_with_the_reason_and_a_warning(rig, ref):
    c = rig.client
    try:
        rig.set("target_frame", "odom")
        w = rig.window(range(-10, 1))  # the newest sample is 23 ms before the image; no more come
        newest, oldest = w.stamp(0), w.stamp(-10)
        reason = (f"lookup from `{CAMERA}` to `odom` would require extrapolation into the future: requested time "
                  f"{fmt_ns(w.image_ns)} s is {fmt_ns(w.image_ns - newest)} s after the latest transform "
                  f"`odom` -> `base_link`; it has transforms from {fmt_ns(oldest)} s to {fmt_ns(newest)} s")
        waited = f" (waited {DEFAULT_TF_TIMEOUT} s, tf.timeout)"
        before = int(c.fresh_diag()["tf"][2]["lookups_failed"])
        msg = rig.stream(w.image_ns)
        check_2d_only(msg, ref.stream, "odom", w.image_ns)
        markers, _ = rig.outputs_3d(w.image_ns, located=False)
        assert markers.markers and all(m.header.frame_id == "odom" for m in markers.markers), markers
        assert not [m for m in markers.markers if m.type == Marker.CUBE], \
            f"CUBE markers without a transform: {[m.id for m in markers.markers if m.type == Marker.CUBE]}"
        level, message, values = rig.tf_status(lambda lvl, m, v: int(v["lookups_failed"]) > before,
                                               f"lookups_failed above {before}")
        assert level == WARN, f"tf status level {level}, expected WARN ({WARN}): {message}"
        assert message == f"3D outputs left out: {reason}{waited}", \
            f"tf status message:\n  got      {message!r}\n  expected {'3D outputs left out: ' + reason + waited!r}"
        assert values["last_error"] == f"{reason}{waited}", f"last_error {values['last_error']!r}"
        assert values["target_frame"] == "odom", values
        c.wait(lambda: f"without 3D positions: {reason}{waited}" in rig.proc.log(), 10,
               "the frame's reason in the node's log")
        assert not any(m.header.frame_id == "odom" for m in rig.detections_3d if stamp_of(m.header) == w.image_ns), \
            "a Detection3DArray was published for a frame without 3D"
        # the services: success, 2D, and the reason
        r = rig.score(w.image_ns)
        assert r.success and f"; no 3D: {reason}{waited}" in r.message, f"~/score message: {r.message!r}"
        assert r.position_frame_id == "odom", r.position_frame_id
        assert not any(s.detection.has_position for s in r.scores), [s.detection.has_position for s in r.scores]
        g = rig.ground(w.image_ns)
        assert g.success and f"; no 3D: {reason}{waited}" in g.message, f"~/ground message: {g.message!r}"
        assert not g.pick.has_point and not g.place.has_point, (g.pick.has_point, g.place.has_point)
    finally:
        rig.set("target_frame", "")


def test_unknown_unconnected_and_too_old_lookups_are_reported_and_the_node_keeps_working(rig, ref):
    w = rig.window()
    waited = f" (waited {DEFAULT_TF_TIMEOUT} s, tf.timeout)"

    def no_3d(r, reason, what):
        assert r.success, f"{what}: {r.message}"
        assert f"; no 3D: {reason}" in r.message, f"{what}: message {r.message!r} lacks {reason!r}"
        assert not any(s.detection.has_position for s in r.scores), \
            f"{what}: has_position {[s.detection.has_position for s in r.scores]}"

    # a frame nobody publishes
    known = ", ".join(f"`{f}`" for f in sorted(rig.frames))
    reason = f"frame `map` does not exist in the transform buffer; known frames: {known}{waited}"
    r = rig.score(w.image_ns, "map")
    no_3d(r, reason, "target map")
    assert r.message.endswith(reason) and r.position_frame_id == "map", (r.message, r.position_frame_id)
    # an image without a frame id
    r = rig.score(w.image_ns, "odom", frame_id="")
    no_3d(r, "the image has no frame_id", "image without frame_id")
    # a second tree: world -> table, not connected to odom
    rig.add_static("world", "table", Rigid((1.0, 2.0, 0.7)))
    rig.sync_tf()
    reason = (f"cannot transform from `{CAMERA}` to `world`: the frames are not connected, they are in two "
              f"separate trees (`{CAMERA}` is under root `odom`, `world` is a root)")
    no_3d(rig.score(w.image_ns, "world"), reason, "target world")
    g = rig.ground(w.image_ns, "world")
    assert g.success and f"; no 3D: {reason}" in g.message, f"~/ground message {g.message!r}"
    assert not g.pick.has_point and not g.place.has_point and g.position_frame_id == "world", \
        (g.pick.has_point, g.place.has_point, g.position_frame_id)
    # a stamp older than the buffer keeps (> 10 s before the newest odom -> base_link): no wait
    try:
        rig.set("tf.timeout", 5.0)
        old = w.origin_ns - 15 * NS
        oldest, newest = w.stamp(SAMPLES[0]), w.stamp(SAMPLES[-1])
        reason = (f"lookup from `{CAMERA}` to `odom` would require extrapolation into the past: requested time "
                  f"{fmt_ns(old)} s is {fmt_ns(oldest - old)} s before the earliest transform `odom` -> "
                  f"`base_link`; it has transforms from {fmt_ns(oldest)} s to {fmt_ns(newest)} s")
        started = time.monotonic()
        r = rig.score(old, "odom")
        took = time.monotonic() - started
        no_3d(r, reason, "a stamp older than the cache")
        assert "waited" not in r.message, f"a stamp in the past was waited for: {r.message!r}"
        assert took < 5.0, f"the call took {took:.2f} s: it waited tf.timeout (5 s) for a stamp in the past"
        # counted on /diagnostics (the status's level follows the target_frame parameter, empty here)
        _, _, values = rig.tf_status(lambda lvl, m, v: "extrapolation into the past" in v["last_error"],
                                     "the extrapolation into the past as last_error")
        assert values["last_error"] == reason, f"last_error {values['last_error']!r}, expected {reason!r}"
    finally:
        rig.set("tf.timeout", 0.1)
    # and the node goes on: a normal call
    assert rig.proc.alive(), rig.proc.log()[-3000:]
    ok = int(values["lookups_ok"])
    check_score(rig.score(w.image_ns, "odom"), ref.score, "odom", w.image_ns, w.target_T_camera("odom"))
    rig.tf_status(lambda lvl, m, v: int(v["lookups_ok"]) > ok, f"lookups_ok above {ok}")


def test_live_target_frame_change_applies_to_the_next_frame(rig, ref):
    c = rig.client
    assert get_param(c, "target_frame") == "" and get_param(c, "tf.timeout") == pytest.approx(0.1)
    try:
        rig.set("target_frame", "base_link")
        assert get_param(c, "target_frame") == "base_link"
        w = rig.new_window()  # base_link needs the static tree only
        msg = rig.stream(w.image_ns)
        check_detections(msg, ref.stream, "base_link", w.image_ns, BASE_T_CAMERA)
        rig.tf_status(lambda lvl, m, v: v["target_frame"] == "base_link", "target_frame base_link")
        # invalid values are refused with a reason, the value stays
        r = set_param(c, "target_frame", "base link")
        assert not r.successful and "whitespace" in r.reason, (r.successful, r.reason)
        r = set_param(c, "tf.timeout", 11.0)
        assert not r.successful and "[0, 10]" in r.reason, (r.successful, r.reason)
        assert get_param(c, "target_frame") == "base_link"
        rig.set("target_frame", "odom")
        w = rig.window()
        msg = rig.stream(w.image_ns)
        check_detections(msg, ref.stream, "odom", w.image_ns, w.target_T_camera("odom"))
    finally:
        rig.set("target_frame", "")
    w = rig.new_window()
    msg = rig.stream(w.image_ns)
    check_detections(msg, ref.stream, CAMERA, w.image_ns, Rigid())
    markers, _ = rig.outputs_3d(w.image_ns)
    assert all(m.header.frame_id == CAMERA for m in markers.markers), [m.header.frame_id for m in markers.markers]


BURST = 100  # /tf messages, = the QoS depth of /tf on both sides (tf2_ros's listener's)


def test_a_burst_of_tf_messages_within_the_qos_depth_is_taken_whole_under_load(rig):
    """tf2_ros's listener keeps the last 100 /tf messages: a burst of 100 broadcasts (many
    broadcasters, or a publisher catching up) reaches its buffer whole even while the machine is
    busy (here: busy loops on every core for the burst's duration, as inference would)."""
    rig.sync_tf()
    received0, rejected0 = rig.taken()
    w = rig.new_window()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 2))]
    try:
        time.sleep(0.3)
        rig.publish_samples(w, range(BURST), one_message=False)
        rig.client.spin(0.5)
    finally:
        for h in hogs:
            h.kill()
        for h in hogs:
            h.wait(10)
    end = time.monotonic() + 5.0
    while True:
        received, rejected = rig.taken()
        if received + rejected >= rig.sent or time.monotonic() > end:
            break
    # what the node has taken is the base for the other tests' sync_tf, whatever this one says
    rig.sent = received + rejected
    taken, refused = received - received0, rejected - rejected0
    assert (taken, refused) == (BURST, 0), (
        f"the node took {taken} of {BURST} /tf messages sent in one burst (reliable, keep last {BURST} on both "
        f"sides) and refused {refused}: {BURST - taken - refused} were lost without a log line or a count on "
        f"/diagnostics")
