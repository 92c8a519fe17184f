#!/usr/bin/env python3
"""An image-sequence camera for vlm_perception_node: publishes a few photos as sensor_msgs/Image
(or CompressedImage), with a synthetic aligned depth image and CameraInfo for each (a table seen
from above at an angle: 0.8 m at the bottom row to 2.0 m at the top, at half the colour
resolution, 16UC1), prints what the node publishes for each frame (detections with their 3D
positions, masks, answers) and saves the overlays. It also publishes the camera's static tf tree
on /tf_static, as a robot's robot_state_publisher would from a RealSense URDF: base_link ->
camera_link (0.2 m ahead, 0.6 m up, pitched 30 degrees down at the table) ->
camera_color_optical_frame (the optical rotation: z forward, x right, y down). Frames carry
camera_color_optical_frame. scripts/run_sample.sh starts the node (target_frame base_link) and
runs this.

    python3 scripts/sample_camera.py --node /sample/vlm_perception --out sample_out \
        [--images a.png b.jpg ...] [--compressed] [--question "what is this?"] [--cameras head wrist]

With --cameras (the node's `cameras` parameter), each named camera gets its own view of each photo
(the first the whole photo, the next ones closer, centre crops) on <ns>/<name>/image, its own
optical frame in the tf tree (<name>_color_optical_frame), and its results are read from
~/<name>/...; one node serves them all, in one batch per frame.

Exit status: 0 when the node answered every frame, 1 otherwise.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage
from vlm_perception_msgs.msg import Answer, Classification, DetectionArray, SegmentationArray
from vlm_perception_msgs.srv import Ask, Caption, GetObjects

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = [REPO / "tests/fixtures/images" / n for n in ("chelsea.png", "coffee.png", "rocket.jpg")]
RELIABLE = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=50)
PROFILE_VAR = "FASTRTPS_DEFAULT_PROFILES_FILE"
# The synthetic scene: depth from NEAR_M (bottom row) to FAR_M (top row); focal length in pixels
# as a fraction of the image width (a ~58 degree horizontal field of view, like a RealSense D435).
NEAR_M, FAR_M = 0.8, 2.0
FOCAL_PER_WIDTH = 0.9
OPTICAL_FRAME = "camera_color_optical_frame"
# tf2_ros's StaticTransformBroadcaster QoS: a late subscriber still gets the tree.
TF_STATIC_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                           history=HistoryPolicy.KEEP_LAST, depth=1)
# (parent, child, translation (m), rotation quaternion (x, y, z, w))
STATIC_TREE = [
    # 0.2 m ahead of base_link, 0.6 m up, pitched 30 degrees down (about y)
    ("base_link", "camera_link", (0.2, 0.0, 0.6), (0.0, math.sin(math.radians(15)), 0.0, math.cos(math.radians(15)))),
    # the optical frame: roll -90, yaw -90 degrees (z forward, x right, y down); 15 mm to the left
    ("camera_link", OPTICAL_FRAME, (0.0, 0.015, 0.0), (-0.5, 0.5, -0.5, 0.5)),
]


def camera_tree(name: str):
    """A further named camera's links: as the first, 0.2 m further ahead per camera, 0.3 m lower,
    pitched 60 degrees down (a wrist camera looking at the table)."""
    k = 0.2 * (1 + len(name) % 3)
    return [
        ("base_link", f"{name}_link", (0.2 + k, 0.0, 0.3),
         (0.0, math.sin(math.radians(30)), 0.0, math.cos(math.radians(30)))),
        (f"{name}_link", f"{name}_color_optical_frame", (0.0, 0.015, 0.0), (-0.5, 0.5, -0.5, 0.5)),
    ]


def static_tree(node, cameras=()) -> TFMessage:
    msg = TFMessage()
    tree = list(STATIC_TREE)
    for name in cameras[1:]:
        tree += camera_tree(name)
    for parent, child, t, q in tree:
        ts = TransformStamped()
        ts.header.stamp = node.get_clock().now().to_msg()
        ts.header.frame_id, ts.child_frame_id = parent, child
        ts.transform.translation.x, ts.transform.translation.y, ts.transform.translation.z = t
        r = ts.transform.rotation
        r.x, r.y, r.z, r.w = q
        msg.transforms.append(ts)
    return msg


def use_large_data_profile():
    """This process writes the frames, and the writer's Fast DDS shared-memory segment must hold a
    whole frame (512 KB by default): use the bundled profile unless one is set ('' for none). Fast
    DDS reads the variable when rclpy.init() creates the participant."""
    if PROFILE_VAR not in os.environ:
        os.environ[PROFILE_VAR] = str(REPO / "config" / "fastdds_large_data.xml")
    elif not os.environ[PROFILE_VAR]:
        del os.environ[PROFILE_VAR]


def view(path: Path, closeness: int):
    """The photo as camera number `closeness` sees it: whole for 0, else a centre crop of
    1 / (1 + closeness / 2) of each side (a closer camera)."""
    from PIL import Image as PILImage
    pil = PILImage.open(path).convert("RGB")
    if closeness:
        f = 1 / (1 + closeness / 2)
        w, h = pil.size
        cw, ch = max(1, round(w * f)), max(1, round(h * f))
        pil = pil.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
    return pil


def to_image_msg(path: Path, frame_id: str, closeness: int = 0) -> Image:
    pil = view(path, closeness)
    m = Image()
    m.header.frame_id = frame_id
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
    m.width, m.height = pil.size
    m.encoding, m.step = "rgb8", 3 * pil.width
    m.data = pil.tobytes()
    return m


def depth_and_info(width: int, height: int, header) -> tuple[Image, CameraInfo]:
    """The synthetic aligned depth (half resolution, 16UC1 millimetres) and the colour camera's
    CameraInfo, stamped like the colour frame."""
    dw, dh = (width + 1) // 2, (height + 1) // 2
    rows = [round(1000 * (FAR_M - (FAR_M - NEAR_M) * (y + 0.5) / dh)) for y in range(dh)]
    depth = Image()
    depth.header = header
    depth.width, depth.height, depth.encoding, depth.step = dw, dh, "16UC1", 2 * dw
    depth.data = b"".join(r.to_bytes(2, "little") * dw for r in rows)
    info = CameraInfo()
    info.header = header
    info.width, info.height = width, height
    f = FOCAL_PER_WIDTH * width
    info.k = [f, 0.0, (width - 1) / 2, 0.0, f, (height - 1) / 2, 0.0, 0.0, 1.0]
    info.distortion_model, info.d = "plumb_bob", [0.0] * 5
    return depth, info


def to_compressed_msg(path: Path, frame_id: str, closeness: int = 0) -> CompressedImage:
    """The file's own bytes for the whole photo; a closer camera's crop as PNG."""
    m = CompressedImage()
    m.header.frame_id = frame_id
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
    if closeness:
        import io
        buf = io.BytesIO()
        view(path, closeness).save(buf, format="PNG")
        m.format, m.data = "png", buf.getvalue()
    else:
        m.format = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
        m.data = path.read_bytes()
    return m


def stamp_key(header) -> tuple[int, int]:
    return header.stamp.sec, header.stamp.nanosec


class CameraStream:
    """One camera's topics: its inputs under the camera namespace, its results under the node
    (`~/<name>/...` for a named camera), matched to their frame by the image's stamp."""

    def __init__(self, n, node_name: str, camera_topic: str, name: str, index: int):
        self.name, self.index = name, index
        self.frame_id = f"{name}_color_optical_frame" if index else OPTICAL_FRAME
        ns = camera_topic.rsplit("/", 1)[0]
        topic = f"{ns}/{name}/{camera_topic.rsplit('/', 1)[1]}" if name else camera_topic
        base = f"{ns}/{name}" if name else ns
        out = f"{node_name}/{name}" if name else node_name
        self.topic = topic
        self.detections, self.segmentations, self.overlays, self.classifications = {}, {}, {}, {}
        self.raw_pub = n.create_publisher(Image, topic, qos_profile_sensor_data)
        self.compressed_pub = n.create_publisher(CompressedImage, topic + "/compressed", qos_profile_sensor_data)
        self.depth_pub = n.create_publisher(Image, f"{base}/aligned_depth_to_color/image_raw", qos_profile_sensor_data)
        self.info_pub = n.create_publisher(CameraInfo, f"{base}/color/camera_info", qos_profile_sensor_data)
        for kind, store, topic_name in ((DetectionArray, self.detections, "detections"),
                                        (SegmentationArray, self.segmentations, "segmentation"),
                                        (Image, self.overlays, "overlay"),
                                        (Classification, self.classifications, "classification")):
            n.create_subscription(kind, f"{out}/{topic_name}",
                                  lambda m, store=store: store.setdefault(stamp_key(m.header), m), RELIABLE)

    def label(self):
        return f"camera {self.name}: " if self.name else ""


class SampleCamera:
    def __init__(self, node_name: str, camera_topic: str, cameras=()):
        self.node = rclpy.create_node("sample_camera")
        self.fqn = node_name
        self.answers = []
        self.diag = None
        n = self.node
        self.streams = [CameraStream(n, node_name, camera_topic, name, i)
                        for i, name in enumerate(cameras or [""])]
        self.tf_static_pub = n.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        self.tf_static_pub.publish(static_tree(n, list(cameras)))
        n.create_subscription(Answer, f"{node_name}/answers", self.answers.append, RELIABLE)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, RELIABLE)
        self.ask = n.create_client(Ask, f"{node_name}/ask")
        self.caption = n.create_client(Caption, f"{node_name}/caption")
        self.get_objects = n.create_client(GetObjects, f"{node_name}/get_objects")

    def _on_diag(self, msg):
        mine = {s.name.split(": ", 1)[1]: s for s in msg.status if s.name.startswith(self.fqn + ": ")}
        if mine:
            self.diag = mine

    def spin_until(self, pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = pred()
            if v:
                return v
            rclpy.spin_once(self.node, timeout_sec=0.05)
        return pred()

    def wait_ready(self, timeout):
        def ready():
            s = self.diag and self.diag.get("stream")
            return s is not None and s.message != "loading models"
        if not self.spin_until(ready, timeout):
            return False
        return self.spin_until(lambda: all(c.raw_pub.get_subscription_count() > 0
                                           or c.compressed_pub.get_subscription_count() > 0
                                           for c in self.streams), 20)


def describe_tasks(diag):
    for name, s in diag.items():
        if name != "stream":
            print(f"  {name:24s} {s.message}")


def print_detections(m: DetectionArray, limit: int):
    print(f"  detections ({m.model}, {m.latency_ms:.0f} ms): {len(m.detections)}, 3D positions in "
          f"{m.position_frame_id or '(no frame)'}")
    for d in m.detections[:limit]:
        b = d.bbox
        at = (f"  at ({d.position.x:+.2f}, {d.position.y:+.2f}, {d.position.z:+.2f}) m" if d.has_position else "")
        track = f"#{d.track_id}" if d.track_id else "-"
        print(f"    {track:>5s} {d.score:6.3f}  {d.label:24s} center ({b.center.position.x:7.1f}, {b.center.position.y:7.1f})"
              f"  size {b.size_x:6.1f} x {b.size_y:6.1f}{at}")
    if len(m.detections) > limit:
        print(f"    ... {len(m.detections) - limit} more")


def print_object_memory(cam, timeout: float):
    """The node's object memory (~/get_objects): every tracked object seen, where and when."""
    if not cam.get_objects.wait_for_service(timeout_sec=5):
        print("\n~/get_objects: not available")
        return
    fut = cam.get_objects.call_async(GetObjects.Request())
    cam.spin_until(fut.done, timeout)
    r = fut.result() if fut.done() else None
    if r is None or not r.success:
        print(f"\n~/get_objects: {r.message if r else 'no response'}")
        return
    print(f"\nobject memory (~/get_objects): {len(r.objects)} object(s)")
    for o in sorted(r.objects, key=lambda o: -o.best_score)[:8]:
        at = (f" at ({o.position.x:+.2f}, {o.position.y:+.2f}, {o.position.z:+.2f}) m in {o.position_frame_id}"
              if o.has_position else "")
        print(f"  #{o.id:<4d} {o.label:16s} best {o.best_score:.3f}, seen {o.times_seen}x{at}")
    if len(r.objects) > 8:
        print(f"  ... {len(r.objects) - 8} more")


def report_frame(cam, c: CameraStream, key, path: Path, args):
    """Prints one camera's results for a frame (detections, masks, classification, overlay);
    returns them for results.json, or None when its detections never came."""
    det = c.detections.get(key)
    if det is None:
        return None
    if c.name:
        print(f"  camera {c.name} ({c.frame_id}):")
    print_detections(det, args.show)
    entry = {"position_frame_id": det.position_frame_id, "detections": [
        {"label": d.label, "score": round(d.score, 4), "track_id": d.track_id,
         "center": [round(d.bbox.center.position.x, 1), round(d.bbox.center.position.y, 1)],
         "size": [round(d.bbox.size_x, 1), round(d.bbox.size_y, 1)],
         **({"position_m": [round(d.position.x, 3), round(d.position.y, 3), round(d.position.z, 3)]}
            if d.has_position else {})} for d in det.detections]}
    seg = cam.spin_until(lambda: c.segmentations.get(key), 1.0)
    if seg:
        print(f"  segmentation ({seg.model}, {seg.latency_ms:.0f} ms):")
        for s in seg.segmentations:
            print(f"    {s.label:24s} area {100 * s.area_fraction:5.1f} %  mean score {s.score:.3f}")
        entry["segmentation"] = [{"label": s.label, "area_fraction": round(s.area_fraction, 4),
                                  "score": round(s.score, 4)} for s in seg.segmentations]
    cls = cam.spin_until(lambda: c.classifications.get(key), 1.0)
    if cls:
        ranked = ", ".join(f"{x.label} ({x.score:.2f})" for x in cls.labels)
        print(f"  classification ({cls.model}, {cls.latency_ms:.0f} ms): {ranked}")
        entry["classification"] = [{"label": x.label, "score": round(x.score, 4)} for x in cls.labels]
    overlay = cam.spin_until(lambda: c.overlays.get(key), 1.0)
    if overlay:
        from PIL import Image as PILImage
        out = args.out / f"{path.stem}{'_' + c.name if c.name else ''}_overlay.png"
        PILImage.frombytes("RGB", (overlay.width, overlay.height), bytes(overlay.data)).save(out)
        print(f"  overlay -> {out}")
    return entry


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--node", default="/sample/vlm_perception", help="the node's fully qualified name")
    ap.add_argument("--camera-topic", default="/sample/image", help="topic to publish frames on")
    ap.add_argument("--images", nargs="+", type=Path, default=DEFAULT_IMAGES, help="the frames, in order")
    ap.add_argument("--compressed", action="store_true", help="send CompressedImage (the file bytes) instead of rgb8")
    ap.add_argument("--question", default="what is in the picture?", help="asked about each frame (~/ask); '' skips")
    ap.add_argument("--out", type=Path, default=Path("sample_out"), help="where overlays and results go")
    ap.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the models to load")
    ap.add_argument("--frame-timeout", type=float, default=60.0, help="seconds to wait for each frame's results")
    ap.add_argument("--show", type=int, default=5, help="detections printed per frame")
    ap.add_argument("--no-depth", action="store_true", help="do not publish the synthetic depth and CameraInfo")
    ap.add_argument("--cameras", nargs="*", default=[],
                    help="the node's `cameras` names (each gets its own view of every photo)")
    args = ap.parse_args()

    use_large_data_profile()
    rclpy.init()
    cam = SampleCamera(args.node, args.camera_topic, args.cameras)
    args.out.mkdir(parents=True, exist_ok=True)
    ok = True
    try:
        print(f"waiting for {args.node} (models loading) ...", flush=True)
        if not cam.wait_ready(args.ready_timeout):
            print(f"error: {args.node} did not come up within {args.ready_timeout:.0f} s", file=sys.stderr)
            return 1
        describe_tasks(cam.diag)
        results = []
        for i, path in enumerate(args.images):
            frames = {}  # camera index -> (msg, depth and info or None)
            for c in cam.streams:
                msg = (to_compressed_msg(path, c.frame_id, c.index) if args.compressed
                       else to_image_msg(path, c.frame_id, c.index))
                pair = None
                if not args.no_depth:
                    w, h = view(path, c.index).size
                    pair = depth_and_info(w, h, msg.header)
                frames[c.index] = (msg, pair)
                print(f"\n[{path.name}] {c.label()}published on {c.topic}{'/compressed' if args.compressed else ''}",
                      flush=True)
            # best effort: publish again until the node's answers for this frame arrive (every
            # camera's frame at once: the node runs them as one batch)
            def missing():
                return [c for c in cam.streams if stamp_key(frames[c.index][0].header) not in c.detections]
            end = time.monotonic() + args.frame_timeout
            while missing() and time.monotonic() < end:
                for c in missing():
                    msg, pair = frames[c.index]
                    if pair:
                        c.info_pub.publish(pair[1])
                        c.depth_pub.publish(pair[0])
                    (c.compressed_pub if args.compressed else c.raw_pub).publish(msg)
                cam.spin_until(lambda: not missing(), 2.0)
            entry = {"image": path.name}
            answered = True
            for c in cam.streams:
                key = stamp_key(frames[c.index][0].header)
                part = report_frame(cam, c, key, path, args)
                if part is None:
                    print(f"  {c.label()}no detections received for this frame", file=sys.stderr)
                    ok = answered = False
                    continue
                if c.name:
                    entry.setdefault("cameras", {})[c.name] = part
                else:
                    entry.update(part)
            if not answered:
                continue
            if cam.caption.wait_for_service(timeout_sec=5):
                fut = cam.caption.call_async(Caption.Request())  # no image: the latest frame
                cam.spin_until(fut.done, args.frame_timeout)
                r = fut.result() if fut.done() else None
                if r is None:
                    print("  caption: no response")
                elif r.success:
                    print(f"  caption ({r.caption.model}, {r.caption.latency_ms:.0f} ms): \"{r.caption.text}\"")
                    entry["caption"] = r.caption.text
                else:
                    print(f"  caption: {r.message}")
            if args.question:
                req = Ask.Request(question=args.question, top_k=3)  # no image: the latest frame
                if cam.ask.wait_for_service(timeout_sec=5):
                    fut = cam.ask.call_async(req)
                    cam.spin_until(fut.done, args.frame_timeout)
                    r = fut.result() if fut.done() else None
                    if r is None:
                        print("  ask: no response")
                    elif r.success:
                        answers = ", ".join(f"{a.answer} ({a.score:.2f})" if a.score else f"\"{a.answer}\""
                                            for a in r.answer.answers)
                        print(f"  ask \"{args.question}\": {answers}")
                        entry["answers"] = [{"answer": a.answer, "score": round(a.score, 4)} for a in r.answer.answers]
                    else:
                        print(f"  ask: {r.message}")
            results.append(entry)
        print_object_memory(cam, args.frame_timeout)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        cam.spin_until(lambda: False, 1.2)  # one more diagnostics period
        if cam.diag and "stream" in cam.diag:
            v = {kv.key: kv.value for kv in cam.diag["stream"].values}
            print(f"\n/diagnostics: {cam.diag['stream'].message}; processed {v.get('frames_processed')}, "
                  f"dropped {v.get('frames_dropped')}, bad {v.get('frames_bad')}, device {v.get('device')}")
        print(f"results -> {args.out / 'results.json'}")
    finally:
        cam.node.destroy_node()
        rclpy.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
