"""The camera stream: what ~/detections carries for a frame equals what the CLI prints for the same
image, for every accepted encoding and both transports; headers are the source image's."""

import time

import pytest
from PIL import Image as PILImage

from conftest import (IMAGES, assert_same_detections, base_params, cli_detect, compressed_msg, image_msg,
                      load_rgb, module_node)

QUERIES = base_params()["owlvit"]["queries"]


@pytest.fixture(scope="module")
def node(request):
    return module_node(request, base_params(), "stream")


def _frame_result(client, publish, frame_id):
    return client.publish_until(publish, lambda: client.detections_for(frame_id), f"detections for {frame_id}")


def _variant(pil, encoding, tmp_path):
    """The picture the node should see for `encoding`, saved as a PNG for the CLI."""
    if encoding in ("rgba8", "bgra8"):
        # a varying alpha channel: both sides composite it onto white
        w, h = pil.size
        alpha = PILImage.linear_gradient("L").resize((w, h))
        pil = pil.copy()
        pil.putalpha(alpha)
    elif encoding == "mono8":
        pil = pil.convert("L")
    path = tmp_path / f"{encoding}.png"
    pil.save(path)
    return pil, path


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_raw_frame_matches_cli(node, encoding, tmp_path):
    _, client = node
    pil, path = _variant(load_rgb(IMAGES / "chelsea.png"), encoding, tmp_path)
    frame_id = f"raw-{encoding}-{time.monotonic_ns()}"
    msg = image_msg(pil, encoding, frame_id=frame_id, stamp=1234.5)
    got = _frame_result(client, lambda: client.image_pub.publish(msg), frame_id)
    assert got.header.stamp.sec == 1234 and got.header.stamp.nanosec == 500_000_000
    assert got.model.endswith("owlvit-tiny-p16") and got.latency_ms > 0
    cli = cli_detect(path, QUERIES)
    assert len(cli["detections"]) > 0
    assert_same_detections(got, cli)


@pytest.mark.parametrize("name", ["coffee.png", "chelsea_201x87.png"])
def test_other_sizes_and_padded_rows_match_cli(node, name):
    _, client = node
    frame_id = f"padded-{name}-{time.monotonic_ns()}"
    msg = image_msg(load_rgb(IMAGES / name), "rgb8", frame_id=frame_id, pad=5)
    got = _frame_result(client, lambda: client.image_pub.publish(msg), frame_id)
    assert_same_detections(got, cli_detect(IMAGES / name, QUERIES))


@pytest.mark.parametrize("name,fmt", [("rocket.jpg", "jpeg"), ("chelsea.png", "png"),
                                      ("coffee.png", "rgb8; png compressed rgb8")])
def test_compressed_frame_matches_cli(node, name, fmt):
    _, client = node
    frame_id = f"compressed-{name}-{time.monotonic_ns()}"
    msg = compressed_msg((IMAGES / name).read_bytes(), fmt, frame_id=frame_id)
    got = _frame_result(client, lambda: client.compressed_pub.publish(msg), frame_id)
    assert_same_detections(got, cli_detect(IMAGES / name, QUERIES))


def test_diagnostics_report_the_stream_and_each_task(node):
    _, client = node
    diag = client.fresh_diag()
    level, message, values = diag["stream"]
    assert level == 0, diag["stream"]
    for key in ("fps", "latency_p50_ms", "latency_p95_ms", "frames_received", "frames_processed",
                "frames_dropped", "frames_bad", "device", "query_encodings"):
        assert key in values, key
    assert values["device"] == "cpu"
    assert int(values["frames_processed"]) >= 1
    assert float(values["latency_p95_ms"]) >= float(values["latency_p50_ms"]) > 0
    det = diag["detection (owlvit)"]
    assert det[0] == 0 and det[2]["state"] == "ready" and det[2]["model"].endswith("owlvit-tiny-p16")
    assert set(diag) >= {"stream", "detection (owlvit)", "segmentation (clipseg)", "vqa (vilt)"}


def test_owlv2_checkpoint_streams_with_objectness(start_node):
    # an OWLv2 checkpoint through the same owlvit.model parameter: detections carry objectness,
    # equal to the CLI's, and owlvit.min_objectness filters them
    from conftest import MODELS, base_params, cli_detect, image_msg, load_rgb
    owlv2 = str(MODELS / "owlv2-tiny-p16")
    queries = ["a photo of a cat", "a coffee cup"]
    proc, client = start_node(base_params(owlvit={"model": owlv2, "queries": queries, "min_objectness": 0.0},
                                          clipseg={"enabled": False}, vilt={"enabled": False}), "owlv2")
    frame_id = f"owlv2-{time.monotonic_ns()}"
    msg = image_msg(load_rgb(IMAGES / "chelsea.png"), "rgb8", frame_id=frame_id)
    got = client.publish_until(lambda: client.image_pub.publish(msg), lambda: client.detections_for(frame_id),
                               "OWLv2 detections")
    cli = cli_detect(IMAGES / "chelsea.png", queries, model=owlv2)["detections"]
    assert [round(d.score, 5) for d in got.detections] == [round(d["score"], 5) for d in cli]
    assert [d.objectness for d in got.detections] == pytest.approx([d["objectness"] for d in cli], abs=1e-5)
    assert all(0.0 <= d.objectness <= 1.0 for d in got.detections)
