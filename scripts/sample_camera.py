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
        [--images a.png b.jpg ...] [--compressed] [--question "what is this?"]

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


def static_tree(node) -> TFMessage:
    msg = TFMessage()
    for parent, child, t, q in STATIC_TREE:
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


def to_image_msg(path: Path, frame_id: str) -> Image:
    from PIL import Image as PILImage
    pil = PILImage.open(path).convert("RGB")
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


def to_compressed_msg(path: Path, frame_id: str) -> CompressedImage:
    m = CompressedImage()
    m.header.frame_id = frame_id
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
    m.format = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
    m.data = path.read_bytes()
    return m


def stamp_key(header) -> tuple[int, int]:
    return header.stamp.sec, header.stamp.nanosec


class SampleCamera:
    def __init__(self, node_name: str, camera_topic: str):
        self.node = rclpy.create_node("sample_camera")
        self.fqn = node_name
        self.detections, self.segmentations, self.answers, self.overlays = {}, {}, [], {}
        self.classifications = {}
        self.diag = None
        n = self.node
        self.raw_pub = n.create_publisher(Image, camera_topic, qos_profile_sensor_data)
        self.compressed_pub = n.create_publisher(CompressedImage, camera_topic + "/compressed", qos_profile_sensor_data)
        ns = camera_topic.rsplit("/", 1)[0]
        self.depth_pub = n.create_publisher(Image, f"{ns}/aligned_depth_to_color/image_raw", qos_profile_sensor_data)
        self.info_pub = n.create_publisher(CameraInfo, f"{ns}/color/camera_info", qos_profile_sensor_data)
        self.tf_static_pub = n.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        self.tf_static_pub.publish(static_tree(n))
        # results are matched to their frame by the image's stamp (the node keeps the header)
        n.create_subscription(DetectionArray, f"{node_name}/detections",
                              lambda m: self.detections.setdefault(stamp_key(m.header), m), RELIABLE)
        n.create_subscription(SegmentationArray, f"{node_name}/segmentation",
                              lambda m: self.segmentations.setdefault(stamp_key(m.header), m), RELIABLE)
        n.create_subscription(Image, f"{node_name}/overlay",
                              lambda m: self.overlays.setdefault(stamp_key(m.header), m), RELIABLE)
        n.create_subscription(Answer, f"{node_name}/answers", self.answers.append, RELIABLE)
        n.create_subscription(Classification, f"{node_name}/classification",
                              lambda m: self.classifications.setdefault(stamp_key(m.header), m), RELIABLE)
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
        return self.spin_until(lambda: self.raw_pub.get_subscription_count() > 0
                               or self.compressed_pub.get_subscription_count() > 0, 20)


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
    args = ap.parse_args()

    use_large_data_profile()
    rclpy.init()
    cam = SampleCamera(args.node, args.camera_topic)
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
            msg = to_compressed_msg(path, OPTICAL_FRAME) if args.compressed else to_image_msg(path, OPTICAL_FRAME)
            key = stamp_key(msg.header)
            pub = cam.compressed_pub if args.compressed else cam.raw_pub
            if not args.no_depth:
                from PIL import Image as PILImage
                w, h = PILImage.open(path).size
                depth, info = depth_and_info(w, h, msg.header)
            print(f"\n[{path.name}] published on {args.camera_topic}{'/compressed' if args.compressed else ''}",
                  flush=True)
            # best effort: publish again until the node's answer for this frame arrives
            det = None
            end = time.monotonic() + args.frame_timeout
            while det is None and time.monotonic() < end:
                if not args.no_depth:
                    cam.info_pub.publish(info)
                    cam.depth_pub.publish(depth)
                pub.publish(msg)
                det = cam.spin_until(lambda: cam.detections.get(key), 2.0)
            if det is None:
                print("  no detections received for this frame", file=sys.stderr)
                ok = False
                continue
            print_detections(det, args.show)
            entry = {"image": path.name, "position_frame_id": det.position_frame_id, "detections": [
                {"label": d.label, "score": round(d.score, 4), "track_id": d.track_id,
                 "center": [round(d.bbox.center.position.x, 1), round(d.bbox.center.position.y, 1)],
                 "size": [round(d.bbox.size_x, 1), round(d.bbox.size_y, 1)],
                 **({"position_m": [round(d.position.x, 3), round(d.position.y, 3), round(d.position.z, 3)]}
                    if d.has_position else {})} for d in det.detections]}
            seg = cam.spin_until(lambda: cam.segmentations.get(key), 1.0)
            if seg:
                print(f"  segmentation ({seg.model}, {seg.latency_ms:.0f} ms):")
                for s in seg.segmentations:
                    print(f"    {s.label:24s} area {100 * s.area_fraction:5.1f} %  mean score {s.score:.3f}")
                entry["segmentation"] = [{"label": s.label, "area_fraction": round(s.area_fraction, 4),
                                          "score": round(s.score, 4)} for s in seg.segmentations]
            cls = cam.spin_until(lambda: cam.classifications.get(key), 1.0)
            if cls:
                ranked = ", ".join(f"{c.label} ({c.score:.2f})" for c in cls.labels)
                print(f"  classification ({cls.model}, {cls.latency_ms:.0f} ms): {ranked}")
                entry["classification"] = [{"label": c.label, "score": round(c.score, 4)} for c in cls.labels]
            overlay = cam.spin_until(lambda: cam.overlays.get(key), 1.0)
            if overlay:
                from PIL import Image as PILImage
                out = args.out / f"{path.stem}_overlay.png"
                PILImage.frombytes("RGB", (overlay.width, overlay.height), bytes(overlay.data)).save(out)
                print(f"  overlay -> {out}")
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
