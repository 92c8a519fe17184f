#!/usr/bin/env python3
"""Several cameras: one node serving N cameras against N single-camera nodes, side by side.

Both set-ups run the same checkpoint on the same frames: each camera is fed as fast as the node
can take frames (best effort, the node keeps the latest), and the script counts the detections
messages each camera's topic carries over a timed window after a warm-up. The set-ups alternate
round by round (one node, N nodes, one node, ...) so that a slow minute of the machine falls on
both. Per round and set-up one JSON line on stdout: frames per second per camera and in total,
the median inference time the node reports per frame (`latency_ms`: preprocess, model pass, post-
processing; in one node the model pass is the whole batch's), and the peak resident memory
(VmHWM) of every node process and their sum. A camera's frames per second are counted between its
first and its last result inside the window ((n - 1) / (t_last - t_first)), so that one node's
results, which come three at a time, are not rounded to whole batches by the window's edges.

    source .ros/env.sh
    python3 scripts/bench_cameras.py [--model DIR] [--cameras 3] [--seconds 30] [--rounds 2]

The default model is the full-size random OWL-ViT B/32 checkpoint of scripts/bench.sh
(target/bench/owlvit-random-safetensors; made by `scripts/bench.sh --case owlvit-b32` or
bench_reference.py make-checkpoint). Detection only (segmentation and VQA off), 4 queries, `rate`
0, overlay off. Run it on a quiet machine: it is a timing.
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NODE_BIN = REPO / "target" / "release" / "vlm_perception_node"
IMAGE = REPO / "tests" / "fixtures" / "images" / "chelsea.png"
QUERIES = ["a photo of a cat", "a remote control", "a coffee cup", "a rocket"]
PROFILE_VAR = "FASTRTPS_DEFAULT_PROFILES_FILE"
if PROFILE_VAR not in os.environ:
    os.environ[PROFILE_VAR] = str(REPO / "config" / "fastdds_large_data.xml")
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 60))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

import rclpy  # noqa: E402  (after the environment is set)
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vlm_perception_msgs.msg import DetectionArray  # noqa: E402

RELIABLE = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=50)


def node_params(model, cameras):
    p = {
        "device": "cpu", "dtype": "f32", "rate": 0.0,
        "camera": {"topic": "image", "transport": "raw", "reliable": False, "depth": 1},
        "owlvit": {"enabled": True, "model": str(model), "queries": QUERIES, "score_threshold": 0.1},
        "clipseg": {"enabled": False}, "vilt": {"enabled": False},
        "overlay": {"enabled": False}, "tracking": {"enabled": False},
    }
    if cameras:
        p["cameras"] = cameras
    return p


class Node:
    """A node process in namespace `ns`, and the topics of its cameras."""

    def __init__(self, params, tmp: Path, cameras):
        self.ns = f"/bench_{uuid.uuid4().hex[:8]}"
        path = tmp / f"{self.ns[1:]}.yaml"
        path.write_text(json.dumps({"/**": {"ros__parameters": params}}))
        self.log = open(tmp / f"{self.ns[1:]}.log", "w")
        self.proc = subprocess.Popen([str(NODE_BIN), "--ros-args", "--params-file", str(path),
                                      "-r", f"__ns:={self.ns}"], stdout=self.log, stderr=subprocess.STDOUT)
        named = [c for c in cameras if c]
        self.inputs = [f"{self.ns}/{c}/image" if c else f"{self.ns}/image" for c in (named or [""])]
        self.outputs = [f"{self.ns}/vlm_perception/{c}/detections" if c else f"{self.ns}/vlm_perception/detections"
                        for c in (named or [""])]

    def peak_rss_kb(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def frame_msg():
    from PIL import Image as PILImage
    pil = PILImage.open(IMAGE).convert("RGB")
    m = Image()
    m.header.frame_id = "camera"
    m.width, m.height, m.encoding, m.step = pil.width, pil.height, "rgb8", 3 * pil.width
    m.data = pil.tobytes()
    return m


def run_setup(ros, nodes, seconds, warmup, feed_hz):
    """Feeds every camera of `nodes` at `feed_hz`; returns per camera the receipt times and the
    reported inference times (ms) of the detections messages within the timed window."""
    msg = frame_msg()
    pubs = [ros.create_publisher(Image, t, qos_profile_sensor_data) for n in nodes for t in n.inputs]
    arrivals = [[] for _ in pubs]
    timing = {"on": False}

    def counter(i):
        def on(msg):
            if timing["on"]:
                arrivals[i].append((time.monotonic(), msg.latency_ms))
        return on

    subs = [ros.create_subscription(DetectionArray, t, counter(i), RELIABLE)
            for i, t in enumerate(t for n in nodes for t in n.outputs)]
    try:
        seen = [False] * len(pubs)

        def warm(i):
            def on(_msg):
                seen[i] = True
            return on
        warm_subs = [ros.create_subscription(DetectionArray, t, warm(i), RELIABLE)
                     for i, t in enumerate(t for n in nodes for t in n.outputs)]
        end = time.monotonic() + 600
        while not all(seen) and time.monotonic() < end:  # models loaded, first frames done
            for p in pubs:
                p.publish(msg)
            rclpy.spin_once(ros, timeout_sec=1.0 / feed_hz)
            for n in nodes:
                if n.proc.poll() is not None:
                    raise RuntimeError(f"node {n.ns} exited: {n.proc.returncode}")
        if not all(seen):
            raise RuntimeError("the nodes did not answer within 600 s")
        for s in warm_subs:
            ros.destroy_subscription(s)
        start = time.monotonic()
        period = 1.0 / feed_hz
        while time.monotonic() - start < warmup + seconds:
            timing["on"] = time.monotonic() - start >= warmup
            for p in pubs:
                p.publish(msg)
            stop = time.monotonic() + period
            while time.monotonic() < stop:
                rclpy.spin_once(ros, timeout_sec=max(0.0, stop - time.monotonic()))
        timing["on"] = False
        return arrivals
    finally:
        for s in subs:
            ros.destroy_subscription(s)
        for p in pubs:
            ros.destroy_publisher(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "target" / "bench" / "owlvit-random-safetensors")
    ap.add_argument("--cameras", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30.0, help="timed window per round and set-up")
    ap.add_argument("--warmup", type=float, default=5.0, help="untimed seconds before each window")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--feed-hz", type=float, default=30.0, help="frames per second sent to each camera")
    args = ap.parse_args()
    if not (args.model / "config.json").exists():
        sys.exit(f"{args.model} has no config.json: make it with scripts/bench.sh --case owlvit-b32")
    if not NODE_BIN.exists():
        sys.exit(f"{NODE_BIN} is missing: cargo build --release --features ros --bin vlm_perception_node")
    names = [f"cam{i}" for i in range(args.cameras)]
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {platform.machine()} {os.cpu_count()} cores, "
          f"model {args.model.name}, {args.cameras} cameras, {args.seconds:.0f} s windows", file=sys.stderr)
    rclpy.init()
    ros = rclpy.create_node(f"bench_cameras_{os.getpid()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_cameras_"))
    try:
        for r in range(args.rounds):
            for setup in ("one node", "separate nodes"):
                if setup == "one node":
                    nodes = [Node(node_params(args.model, names), tmp, names)]
                else:
                    nodes = [Node(node_params(args.model, None), tmp, [""]) for _ in names]
                try:
                    arrivals = run_setup(ros, nodes, args.seconds, args.warmup, args.feed_hz)
                    rss = [n.peak_rss_kb() for n in nodes]
                finally:
                    for n in nodes:
                        n.stop()
                fps = [(len(a) - 1) / (a[-1][0] - a[0][0]) if len(a) > 1 else 0.0 for a in arrivals]
                latency = sorted(ms for a in arrivals for _, ms in a)
                print(json.dumps({
                    "round": r + 1, "setup": setup, "nodes": len(nodes), "cameras": args.cameras,
                    "fps_per_camera": [round(f, 3) for f in fps], "fps_total": round(sum(fps), 3),
                    "results": [len(a) for a in arrivals],
                    "inference_ms_p50": round(latency[len(latency) // 2], 1) if latency else None,
                    "peak_rss_mb": [round(k / 1024, 1) for k in rss], "peak_rss_total_mb": round(sum(rss) / 1024, 1),
                }), flush=True)
    finally:
        ros.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
