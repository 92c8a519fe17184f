"""End-to-end tests of vlm_perception_node: real node processes on loopback, driven by rclpy.

Run through scripts/test_ros.sh (sets up ROS 2, builds the node and the CLI, runs pytest here),
or by hand after `source .ros/env.sh`:  python3 -m pytest tests/ros

Each run takes a ROS_DOMAIN_ID of its own (a lock file per id under the temp dir, so that
concurrent runs on one machine never share one) and keeps discovery on loopback
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST). Every node gets its own namespace. This process and
the nodes run with config/fastdds_large_data.xml unless FASTRTPS_DEFAULT_PROFILES_FILE is set
('' for no profile).
"""

import fcntl
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
MODELS = FIXTURES / "models"
IMAGES = FIXTURES / "images"
NODE_BIN = Path(os.environ.get("VLM_NODE_BIN", REPO / "target" / "release" / "vlm_perception_node"))
CLI_BIN = Path(os.environ.get("VLM_CLI_BIN", REPO / "target" / "release" / "vlm-perception"))

OWLVIT = str(MODELS / "owlvit-tiny-p16")
CLIPSEG = str(MODELS / "clipseg-tiny-rd16")
VILT = str(MODELS / "vilt-tiny-vqa")


def _claim_domain_id():
    """A ROS_DOMAIN_ID no other test run on this machine holds (1..100), kept for the session."""
    if os.environ.get("VLM_TEST_DOMAIN_ID"):
        return int(os.environ["VLM_TEST_DOMAIN_ID"]), None
    start = os.getpid() % 100
    for i in range(100):
        domain = 1 + (start + i) % 100
        f = open(Path(tempfile.gettempdir()) / f"vlm_perception_ros_domain_{domain}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return domain, f
        except OSError:
            f.close()
    raise RuntimeError("no free ROS_DOMAIN_ID in 1..100")


_DOMAIN, _DOMAIN_LOCK = _claim_domain_id()
os.environ["ROS_DOMAIN_ID"] = str(_DOMAIN)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)
# Raw frames over 512 KB only get through best effort when the WRITER's Fast DDS shared-memory
# segment holds them: this process writes the test frames, the nodes (which inherit os.environ)
# their overlays. Set before rclpy creates a participant.
PROFILE_VAR = "FASTRTPS_DEFAULT_PROFILES_FILE"
if PROFILE_VAR not in os.environ:
    os.environ[PROFILE_VAR] = str(REPO / "config" / "fastdds_large_data.xml")
elif not os.environ[PROFILE_VAR]:
    del os.environ[PROFILE_VAR]

import rclpy  # noqa: E402  (after the environment is set)
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, qos_profile_sensor_data  # noqa: E402


METRICS = {}  # name -> text, printed after the run (measured numbers for the report)


def pytest_terminal_summary(terminalreporter):
    if METRICS:
        terminalreporter.section("vlm_perception_node measurements")
        for k, v in METRICS.items():
            terminalreporter.write_line(f"{k}: {v}")


def pytest_report_header(config):
    return (f"ROS_DOMAIN_ID={_DOMAIN}, node {NODE_BIN}, cli {CLI_BIN}, "
            f"Fast DDS profile {os.environ.get(PROFILE_VAR, 'none')}")


@pytest.fixture(scope="session")
def ros():
    for b in (NODE_BIN, CLI_BIN):
        if not b.exists():
            pytest.fail(f"{b} is missing: build it first (scripts/test_ros.sh does)")
    rclpy.init()
    node = rclpy.create_node(f"vlm_test_client_{os.getpid()}")
    yield node
    node.destroy_node()
    rclpy.shutdown()


# ---------------------------------------------------------------------------------------------
# The node under test
# ---------------------------------------------------------------------------------------------

def base_params(**groups):
    """Parameters for a node on the fixture checkpoints; `groups` override whole groups' keys."""
    p = {
        "device": "cpu",
        "dtype": "f32",
        "rate": 0.0,
        "camera": {"topic": "image", "transport": "both", "reliable": False, "depth": 5},
        "owlvit": {
            "enabled": True,
            "model": OWLVIT,
            "queries": ["a photo of a cat", "a coffee cup", "a rocket"],
            "score_threshold": 0.0,
            "nms_iou": 1.0,
        },
        "clipseg": {"enabled": True, "model": CLIPSEG, "mask_threshold": 0.5},
        "vilt": {"enabled": True, "model": VILT, "top_k": 3},
        "overlay": {"enabled": False},
        "services": {"timeout": 20.0},
        "diagnostics": {"period": 0.2},
    }
    for k, v in groups.items():
        if isinstance(v, dict) and isinstance(p.get(k), dict):
            p[k] = {**p[k], **v}
        else:
            p[k] = v
    return p


class NodeProcess:
    """vlm_perception_node started with --ros-args --params-file <yaml> -r __ns:=<ns>."""

    def __init__(self, params, tmp: Path, name="node"):
        self.params = params
        self.ns = f"/test_{name}_{uuid.uuid4().hex[:8]}"
        self.fqn = f"{self.ns}/vlm_perception"
        self.params_file = tmp / f"{name}.yaml"
        # JSON is valid YAML for rcl's parser.
        self.params_file.write_text(json.dumps({"/**": {"ros__parameters": params}}, indent=1))
        self.log_path = tmp / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(NODE_BIN), "--ros-args", "--params-file", str(self.params_file), "-r", f"__ns:={self.ns}"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
        )

    def log(self):
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def rss_kb(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def start_node(ros, tmp_path):
    """Factory: start_node(params, name) -> (NodeProcess, Client), stopped after the test."""
    started = []

    def start(params, name="node", wait_ready=True):
        proc = NodeProcess(params, tmp_path, name)
        client = Client(ros, proc)
        started.append((proc, client))
        if wait_ready:
            client.wait_ready()
        return proc, client

    yield start
    for proc, client in started:
        client.destroy()
        proc.stop()


def module_node(request, params, name):
    """A node shared by the tests of one module (see the module fixtures)."""
    ros = request.getfixturevalue("ros")
    tmp = Path(tempfile.mkdtemp(prefix=f"vlm_{name}_"))
    proc = NodeProcess(params, tmp, name)
    client = Client(ros, proc)
    client.wait_ready()
    request.addfinalizer(lambda: (client.destroy(), proc.stop()))
    return proc, client


# ---------------------------------------------------------------------------------------------
# rclpy side
# ---------------------------------------------------------------------------------------------

RELIABLE = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=200)


class Client:
    """Publishes camera frames to one node and records what it publishes."""

    def __init__(self, node, proc: NodeProcess):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String
        from vlm_perception_msgs.msg import Answer, DetectionArray, SegmentationArray

        self.node, self.proc = node, proc
        ns, fqn = proc.ns, proc.fqn
        self.detections, self.segmentations, self.answers, self.overlays = [], [], [], []
        self.detection_times = []  # wall-clock receipt time of each detections message
        self.diag = {}  # part ("stream", "detection (owlvit)", ...) -> (level, message, {key: value})
        self.diag_count = 0
        self._pubs = [
            node.create_publisher(Image, f"{ns}/image", qos_profile_sensor_data),
            node.create_publisher(CompressedImage, f"{ns}/image/compressed", qos_profile_sensor_data),
            node.create_publisher(String, f"{fqn}/queries", 10),
            node.create_publisher(String, f"{fqn}/prompts", 10),
            node.create_publisher(Image, f"{ns}/image", QoSProfile(
                reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=5)),
        ]
        self._subs = [
            node.create_subscription(DetectionArray, f"{fqn}/detections", self._on_detections, RELIABLE),
            node.create_subscription(SegmentationArray, f"{fqn}/segmentation", self.segmentations.append, RELIABLE),
            node.create_subscription(Answer, f"{fqn}/answers", self.answers.append, RELIABLE),
            node.create_subscription(Image, f"{fqn}/overlay", self.overlays.append, RELIABLE),
            node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, RELIABLE),
        ]
        self.image_pub, self.compressed_pub, self.queries_pub, self.prompts_pub, self.reliable_image_pub = self._pubs
        self._clients = {}

    def _on_detections(self, msg):
        self.detections.append(msg)
        self.detection_times.append(time.time())

    def _on_diag(self, msg):
        prefix = f"{self.proc.fqn}: "
        mine = [s for s in msg.status if s.name.startswith(prefix)]
        for s in mine:
            self.diag[s.name[len(prefix):]] = (ord(s.level) if isinstance(s.level, bytes) else s.level, s.message, {kv.key: kv.value for kv in s.values})
        if mine:
            self.diag_count += 1

    def destroy(self):
        for p in self._pubs:
            self.node.destroy_publisher(p)
        for s in self._subs:
            self.node.destroy_subscription(s)
        for c in self._clients.values():
            self.node.destroy_client(c)

    def spin(self, seconds):
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            rclpy.spin_once(self.node, timeout_sec=min(left, 0.05))

    def wait(self, pred, timeout, what):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = pred()
            if v:
                return v
            if not self.proc.alive():
                raise AssertionError(f"node exited (rc {self.proc.proc.returncode}) waiting for {what}:\n{self.proc.log()}")
            rclpy.spin_once(self.node, timeout_sec=0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n--- node log ---\n{self.proc.log()[-4000:]}")

    def stream_stat(self, key):
        s = self.diag.get("stream")
        return None if s is None else s[2].get(key)

    def stat_int(self, key):
        v = self.stream_stat(key)
        return -1 if v is None else int(v)

    def fresh_diag(self):
        """Waits for the next diagnostics message and returns the parsed statuses."""
        n = self.diag_count
        self.wait(lambda: self.diag_count > n, 10, "a /diagnostics message")
        return self.diag

    def wait_ready(self, timeout=60):
        self.wait(lambda: self.diag.get("stream") and self.diag["stream"][1] != "loading models",
                  timeout, f"{self.proc.fqn} to finish loading (diagnostics)")
        if self.proc.params.get("cameras"):
            return self.diag  # named cameras: their tests publish on <name>/image and wait themselves
        camera = self.proc.params.get("camera", {})
        raw = self.reliable_image_pub if camera.get("reliable") else self.image_pub
        pubs = {"raw": [raw], "compressed": [self.compressed_pub],
                "both": [raw, self.compressed_pub]}[camera.get("transport", "raw")]
        self.wait(lambda: all(p.get_subscription_count() > 0 for p in pubs), 20, "the node's image subscriptions")
        return self.diag

    def service(self, srv_type, name):
        if name not in self._clients:
            c = self.node.create_client(srv_type, f"{self.proc.fqn}/{name}")
            self._clients[name] = c
        c = self._clients[name]
        self.wait(lambda: c.service_is_ready(), 20, f"service {name}")
        return c

    def call(self, srv_type, name, request, timeout=30):
        fut = self.service(srv_type, name).call_async(request)
        self.wait(fut.done, timeout, f"the {name} response")
        return fut.result()

    def publish_until(self, publish, pred, what, timeout=20, every=1.0):
        """Publishes (best effort) until pred() holds; returns pred()'s value."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            publish()
            try:
                return self.wait(pred, min(every, max(0.05, end - time.monotonic())), what)
            except AssertionError:
                if not self.proc.alive():
                    raise
        raise AssertionError(f"timed out waiting for {what}\n{self.proc.log()[-4000:]}")

    def detections_for(self, frame_id):
        return next((m for m in self.detections if m.header.frame_id == frame_id), None)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def load_rgb(path):
    from PIL import Image as PILImage
    return PILImage.open(path).convert("RGB")


def image_msg(pil, encoding="rgb8", frame_id="camera", stamp=None, pad=0):
    """A sensor_msgs/Image from a PIL image, in one of the node's encodings, rows padded by `pad`."""
    from sensor_msgs.msg import Image
    mode = {"rgb8": "RGB", "bgr8": "RGB", "rgba8": "RGBA", "bgra8": "RGBA", "mono8": "L"}[encoding]
    data = pil.convert(mode).tobytes() if pil.mode != mode else pil.tobytes()
    ch = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    if encoding in ("bgr8", "bgra8"):
        b = bytearray(data)
        b[0::ch], b[2::ch] = b[2::ch], b[0::ch]
        data = bytes(b)
    w, h = pil.size
    if pad:
        row = w * ch
        data = b"".join(data[y * row:(y + 1) * row] + bytes(pad) for y in range(h))
    m = Image()
    m.header.frame_id = frame_id
    if stamp is not None:
        m.header.stamp.sec, m.header.stamp.nanosec = int(stamp), int((stamp % 1) * 1e9)
    m.width, m.height, m.encoding, m.step = w, h, encoding, w * ch + pad
    m.data = data
    return m


def compressed_msg(data: bytes, fmt, frame_id="camera"):
    from sensor_msgs.msg import CompressedImage
    m = CompressedImage()
    m.header.frame_id = frame_id
    m.format = fmt
    m.data = data
    return m


def cli_detect(image_path, queries, threshold=0.0, nms_iou=1.0, model=OWLVIT):
    args = [str(CLI_BIN), "detect", "--model", model, "--image", str(image_path),
            "--threshold", str(threshold), "--nms-iou", str(nms_iou), "--json"]
    for q in queries:
        args += ["--query", q]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assert_same_detections(msg, cli, score_tol=1e-5, px_tol=1e-3):
    """A DetectionArray against the CLI's JSON for the same image: same boxes, same numbers."""
    got = msg.detections
    want = cli["detections"]
    assert len(got) == len(want), f"{len(got)} detections on the topic, {len(want)} from the CLI"
    for i, (g, w) in enumerate(zip(got, want)):
        x0, y0, x1, y1 = w["bbox"]
        assert g.label == w["label"] and g.query_index == w["query_index"], (i, g, w)
        assert abs(g.score - w["score"]) <= score_tol, (i, g.score, w["score"])
        for a, b in [(g.bbox.center.position.x, (x0 + x1) / 2), (g.bbox.center.position.y, (y0 + y1) / 2),
                     (g.bbox.size_x, x1 - x0), (g.bbox.size_y, y1 - y0)]:
            assert abs(a - b) <= px_tol, (i, a, b)
        assert g.bbox.center.theta == 0.0 and not g.has_position
