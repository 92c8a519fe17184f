"""Faults: malformed frames and vocabularies are logged once, counted and skipped; invalid
parameters stop startup naming the parameter; a model that fails to load leaves the node up and
the other tasks working; service calls time out."""

import re
import subprocess
import time

import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import String
from vlm_perception_msgs.srv import Ask, Detect, Segment

from conftest import (IMAGES, NODE_BIN, OWLVIT, base_params, compressed_msg, image_msg, load_rgb, module_node)


@pytest.fixture(scope="module")
def node(request):
    return module_node(request, base_params(), "faults")


def _good_frame_answered(client, tag):
    frame_id = f"{tag}-{time.monotonic_ns()}"
    msg = image_msg(load_rgb(IMAGES / "coffee_96x96.png"), "rgb8", frame_id=frame_id)
    client.publish_until(lambda: client.image_pub.publish(msg), lambda: client.detections_for(frame_id),
                         f"detections for the good frame after {tag}")


def _raw(encoding, width, height, step, data):
    m = Image()
    m.header.frame_id = "bad"
    m.encoding, m.width, m.height, m.step, m.data = encoding, width, height, step, bytes(data)
    return m


JPEG = (IMAGES / "rocket.jpg").read_bytes()
BAD_FRAMES = {
    "wrong encoding": ("raw", _raw("yuv422", 4, 4, 8, [0] * 32), "unsupported encoding `yuv422`"),
    "16-bit encoding": ("raw", _raw("16UC1", 4, 4, 8, [0] * 32), "unsupported encoding `16UC1`"),
    "step smaller than a row": ("raw", _raw("rgb8", 4, 4, 10, [0] * 40), "step 10 is smaller than a row"),
    "truncated data": ("raw", _raw("rgb8", 4, 4, 12, [0] * 40), "truncated"),
    "too much data": ("raw", _raw("rgb8", 4, 4, 12, [0] * 50), "50 data bytes"),
    "zero size": ("raw", _raw("rgb8", 0, 0, 0, []), "size 0x0"),
    "huge image": ("raw", _raw("mono8", 20_000, 1, 20_000, [0] * 20_000), "size 20000x1"),
    "corrupt jpeg": ("compressed", compressed_msg(JPEG[:20] + bytes(500), "jpeg"), "cannot decode"),
    "random bytes": ("compressed", compressed_msg(bytes(range(256)) * 4, "jpeg"), "cannot decode"),
    "empty compressed": ("compressed", compressed_msg(b"", "png"), "cannot decode"),
    "unsupported format": ("compressed", compressed_msg(JPEG, "compressedDepth"), "unsupported compressed format"),
}


@pytest.mark.parametrize("kind", list(BAD_FRAMES))
def test_bad_frame_is_counted_skipped_and_survived(node, kind):
    proc, client = node
    transport, msg, expect = BAD_FRAMES[kind]
    pub = client.image_pub if transport == "raw" else client.compressed_pub
    client.fresh_diag()
    before = client.stat_int("frames_bad")
    client.publish_until(lambda: pub.publish(msg), lambda: client.fresh_diag() and client.stat_int("frames_bad") > before,
                         f"frames_bad to count the {kind}")
    assert expect in client.stream_stat("last_bad_frame"), client.stream_stat("last_bad_frame")
    _good_frame_answered(client, kind.replace(" ", "-"))
    assert proc.alive()


def test_repeated_bad_frames_are_logged_once(start_node):
    proc, client = start_node(base_params(), "repeats")
    msg = _raw("bayer_rggb8", 4, 4, 4, [0] * 16)
    client.fresh_diag()
    before = client.stat_int("frames_bad")
    for _ in range(5):
        client.image_pub.publish(msg)
        client.spin(0.15)
    client.wait(lambda: client.fresh_diag() and client.stat_int("frames_bad") >= before + 3, 10, "bad frames counted")
    lines = [l for l in proc.log().splitlines() if "bayer_rggb8" in l]
    assert len(lines) == 1, lines
    _good_frame_answered(client, "after-repeats")


@pytest.mark.parametrize("text", ["", " , ,", ",".join(f"q{i}" for i in range(600))])
def test_bad_vocabulary_on_the_topic_is_counted_and_ignored(node, text):
    proc, client = node
    client.fresh_diag()
    before, vocab = client.stat_int("bad_queries"), client.stream_stat("queries")
    client.queries_pub.publish(String(data=text))
    client.wait(lambda: client.fresh_diag() and client.stat_int("bad_queries") > before, 10, "bad_queries")
    assert client.stream_stat("queries") == vocab
    # logged, at most once per kind every 10 s (so an earlier case may have taken the line)
    assert "~/queries: rejected" in proc.log()
    _good_frame_answered(client, "after-bad-queries")


def _run_invalid(tmp_path, params):
    from conftest import NodeProcess
    p = NodeProcess(params, tmp_path, "invalid")
    try:
        rc = p.proc.wait(30)
    finally:
        p.stop()
    return rc, p.log()


@pytest.mark.parametrize("name,group,value", [
    ("owlvit.score_threshold", "owlvit", {"score_threshold": 1.5}),
    ("owlvit.score_threshold", "owlvit", {"score_threshold": "high"}),
    ("camera.transport", "camera", {"transport": "theora"}),
    ("rate", "rate", -1.0),
    ("device", "device", "gpu"),
    ("dtype", "dtype", "f64"),
    ("vilt.top_k", "vilt", {"top_k": 0}),
    ("owlvit.queries", "owlvit", {"queries": ["a cup", ""]}),
])
def test_invalid_parameter_stops_startup_naming_it(tmp_path, name, group, value):
    rc, log = _run_invalid(tmp_path, base_params(**{group: value}))
    assert rc == 2, log
    assert f"invalid parameter `{name}`" in log, log


def test_no_frame_yet(start_node):
    _, client = start_node(base_params(), "noframe")
    r = client.call(Detect, "detect", Detect.Request())
    assert not r.success and "none received" in r.message


def test_failed_detection_model_leaves_the_other_tasks_working(start_node, tmp_path):
    missing = str(tmp_path / "no-such-owlvit")
    proc, client = start_node(base_params(owlvit={"model": missing}, clipseg={"prompts": ["a cup"]}), "nodet")
    diag = client.fresh_diag()
    level, message, values = diag["detection (owlvit)"]
    assert level == 2 and values["state"] == "failed" and "failed to load" in message and missing in message
    assert diag["segmentation (clipseg)"][2]["state"] == "ready"
    assert diag["vqa (vilt)"][2]["state"] == "ready"
    # services: detection reports the failure, the others answer
    r = client.call(Detect, "detect", Detect.Request(image=image_msg(load_rgb(IMAGES / "coffee.png"))))
    assert not r.success and "failed to load" in r.message and missing in r.message
    r = client.call(Segment, "segment", Segment.Request(image=image_msg(load_rgb(IMAGES / "coffee.png")),
                                                      prompts=["a cup"]))
    assert r.success, r.message
    r = client.call(Ask, "ask", Ask.Request(image=image_msg(load_rgb(IMAGES / "coffee.png")), question="what?"))
    assert r.success, r.message
    # the stream still segments
    msg = image_msg(load_rgb(IMAGES / "coffee_96x96.png"), frame_id="nodet")
    client.publish_until(lambda: client.image_pub.publish(msg),
                         lambda: any(m.header.frame_id == "nodet" for m in client.segmentations),
                         "~/segmentation without a detector")
    assert proc.alive() and not client.detections


def test_failed_vqa_model_leaves_detection_working(start_node):
    # an OWL-ViT checkpoint is not a ViLT one: loading fails with a wrong-architecture error
    proc, client = start_node(base_params(vilt={"model": OWLVIT}), "novqa")
    level, message, _ = client.fresh_diag()["vqa (vilt)"]
    assert level == 2 and "failed to load" in message
    r = client.call(Ask, "ask", Ask.Request(image=image_msg(load_rgb(IMAGES / "coffee.png")), question="what?"))
    assert not r.success and "failed to load" in r.message
    _good_frame_answered(client, "novqa")
    r = client.call(Detect, "detect", Detect.Request(image=image_msg(load_rgb(IMAGES / "coffee.png"))))
    assert r.success, r.message


def test_disabled_task_says_so(start_node):
    _, client = start_node(base_params(clipseg={"enabled": False}), "noseg")
    level, message, values = client.fresh_diag()["segmentation (clipseg)"]
    assert values["state"] == "disabled"
    r = client.call(Segment, "segment", Segment.Request(image=image_msg(load_rgb(IMAGES / "coffee.png")),
                                                      prompts=["a cup"]))
    assert not r.success and "clipseg.enabled" in r.message


def test_service_call_times_out(start_node):
    _, client = start_node(base_params(services={"timeout": 1e-6}), "timeout")
    r = client.call(Detect, "detect", Detect.Request(image=image_msg(load_rgb(IMAGES / "coffee.png"))))
    assert not r.success and re.search(r"timed out after 0\.0 s", r.message), r.message
    _good_frame_answered(client, "after-timeout")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_shuts_down_cleanly(start_node, sig):
    import signal
    proc, client = start_node(base_params(), "signal")
    _good_frame_answered(client, "before-signal")
    proc.proc.send_signal(getattr(signal, sig))
    assert proc.proc.wait(15) == 0, proc.log()
    assert "shutting down" in proc.log()
