"""The rest of the toolbox through the node: zero-shot classification (CLIP) on ~/classify and on
the stream (~/classification), and CLIPSeg segmentation by example image (~/segment's and
~/set_queries' prompt images). Numbers are checked against transformers' pipeline (the fixtures'
references) and the CLI; bad input gets a clear error and the node keeps running."""

import json
import subprocess
import time

import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from vlm_perception_msgs.msg import Classification
from vlm_perception_msgs.srv import Classify, Segment, SetQueries

from conftest import (CLI_BIN, CLIPSEG, FIXTURES, IMAGES, MODELS, RELIABLE, VILT, base_params, image_msg, load_rgb,
                      module_node)

CLIP = str(MODELS / "clip-tiny")
STREAM_LABELS = ["a cat", "a cup of coffee", "a rocket"]
DEFAULT_TEMPLATE = "This is a photo of {}."


@pytest.fixture(scope="module")
def node(request):
    params = base_params(clip={"enabled": True, "model": CLIP, "labels": STREAM_LABELS})
    proc, client = module_node(request, params, "toolbox")
    client.classifications = []
    client._subs.append(client.node.create_subscription(
        Classification, f"{proc.fqn}/classification", client.classifications.append, RELIABLE))
    return proc, client


def cli_json(*args):
    out = subprocess.run([str(CLI_BIN), *args, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def reference_case(stem, labels):
    meta = json.loads((FIXTURES / "reference" / "clip-tiny" / stem / "meta.json").read_text())
    return next(c for c in meta["cases"] if c["labels"] == labels)


def classify(client, image=None, labels=(), template=""):
    req = Classify.Request()
    if image is not None:
        req.image = image
    req.labels = list(labels)
    req.hypothesis_template = template
    return client.call(Classify, "classify", req)


def test_classify_matches_the_transformers_pipeline(node):
    _, client = node
    labels = ["door open", "door closed"]
    ref = reference_case("coffee", labels)
    assert ref["hypothesis_template"] is None  # the pipeline's default template
    r = classify(client, image_msg(load_rgb(IMAGES / "coffee.png"), "rgb8", frame_id="cls", stamp=3.5), labels)
    assert r.success, r.message
    c = r.classification
    assert c.header.frame_id == "cls" and c.header.stamp.sec == 3 and c.header.stamp.nanosec == 500_000_000
    assert c.model.endswith("clip-tiny") and c.hypothesis_template == DEFAULT_TEMPLATE
    # transformers' pipeline on the same PNG (its PIL backend: the pixels the node decodes)
    assert [l.label for l in c.labels] == [p["label"] for p in ref["pipeline_pil"]]
    assert [l.score for l in c.labels] == pytest.approx([p["score"] for p in ref["pipeline_pil"]], abs=1e-5)
    logits = dict(zip(ref["labels"], ref["logits_per_image_pil"]))
    assert [l.logit for l in c.labels] == pytest.approx([logits[l.label] for l in c.labels], abs=1e-4)
    top = c.labels[0]
    assert r.message == f"{top.label} ({top.score:.3f})"


def test_classify_takes_a_template_and_agrees_with_the_cli(node):
    _, client = node
    labels = ["a cat", "a dog", "a cup"]
    template = "a blurry photo of {}"
    r = classify(client, image_msg(load_rgb(IMAGES / "chelsea.png"), "rgb8"), labels, template)
    assert r.success, r.message
    cli = cli_json("classify", "--model", CLIP, "--image", str(IMAGES / "chelsea.png"), "--label", "a cat",
                   "--label", "a dog", "--label", "a cup", "--template", template)
    got = r.classification
    assert got.hypothesis_template == template == cli["template"]
    assert [l.label for l in got.labels] == [l["label"] for l in cli["labels"]]
    assert [l.score for l in got.labels] == pytest.approx([l["score"] for l in cli["labels"]], abs=1e-6)
    assert sum(l.score for l in got.labels) == pytest.approx(1.0, abs=1e-5)


def test_stream_publishes_a_classification_per_processed_frame(node):
    _, client = node
    frame_id = f"stream-{time.monotonic_ns()}"
    msg = image_msg(load_rgb(IMAGES / "chelsea_107x181.png"), "rgb8", frame_id=frame_id)
    got = client.publish_until(lambda: client.image_pub.publish(msg),
                               lambda: next((c for c in client.classifications if c.header.frame_id == frame_id),
                                            None), f"~/classification for {frame_id}")
    cli = cli_json("classify", "--model", CLIP, "--image", str(IMAGES / "chelsea_107x181.png"),
                   *[a for l in STREAM_LABELS for a in ("--label", l)])
    assert [l.label for l in got.labels] == [l["label"] for l in cli["labels"]]
    assert [l.score for l in got.labels] == pytest.approx([l["score"] for l in cli["labels"]], abs=1e-6)
    assert got.latency_ms > 0
    # a call without labels classifies among the stream's labels, on the latest frame
    r = classify(client)
    assert r.success, r.message
    assert r.classification.header.frame_id == frame_id
    assert [l.label for l in r.classification.labels] == [l.label for l in got.labels]


def _set(client, name, v):
    p = ParameterValue()
    if isinstance(v, str):
        p.type, p.string_value = ParameterType.PARAMETER_STRING, v
    else:
        p.type, p.string_array_value = ParameterType.PARAMETER_STRING_ARRAY, list(v)
    req = SetParameters.Request()
    req.parameters = [Parameter(name=name, value=p)]
    return client.call(SetParameters, "set_parameters", req).results[0]


def test_live_labels_and_template(node):
    _, client = node
    try:
        assert _set(client, "clip.labels", ["door open", "door closed"]).successful
        frame_id = f"live-{time.monotonic_ns()}"
        msg = image_msg(load_rgb(IMAGES / "coffee.png"), "rgb8", frame_id=frame_id)
        got = client.publish_until(lambda: client.image_pub.publish(msg),
                                   lambda: next((c for c in client.classifications
                                                 if c.header.frame_id == frame_id), None), "relabelled frame")
        ref = reference_case("coffee", ["door open", "door closed"])
        assert [l.score for l in got.labels] == pytest.approx([p["score"] for p in ref["pipeline_pil"]], abs=1e-5)
        # refused values keep the old ones
        bad = _set(client, "clip.hypothesis_template", "{} and {}")
        assert not bad.successful and "clip.hypothesis_template" in bad.reason and "more than one" in bad.reason
        assert not _set(client, "clip.labels", ["ok", " "]).successful
        # no labels in the call and none set: a clear error, and the stream classifies nothing
        assert _set(client, "clip.labels", []).successful
        r = classify(client, image_msg(load_rgb(IMAGES / "coffee.png"), "rgb8"))
        assert not r.success and r.message == "no labels: pass some, or set the parameter clip.labels", r.message
    finally:
        assert _set(client, "clip.labels", STREAM_LABELS).successful


def test_bad_classify_requests_get_clear_errors(node):
    proc, client = node
    img = image_msg(load_rgb(IMAGES / "coffee.png"), "rgb8")
    cases = [
        (dict(labels=["a cat", "  "]), "label 1 is empty"),
        (dict(labels=["x" * 5000]), "label 0"),
        (dict(labels=["a", "b"], template="{} or {}"), "more than one `{}`"),
        (dict(labels=["a", "b"], template="a photo of {"), "is not closed"),
    ]
    for kwargs, want in cases:
        r = classify(client, img, **kwargs)
        assert not r.success and want in r.message, (kwargs, r.message)
    bad = image_msg(load_rgb(IMAGES / "coffee.png"), "rgb8")
    bad.data = bytes(bad.data)[:100]
    r = classify(client, bad, ["a", "b"])
    assert not r.success and "request image" in r.message, r.message
    assert proc.alive()
    assert classify(client, img, ["a", "b"]).success


def test_classify_without_a_clip_model_says_why(start_node):
    _, disabled = start_node(base_params(), "noclip")
    r = classify(disabled, image_msg(load_rgb(IMAGES / "coffee.png"), "rgb8"), ["a", "b"])
    assert not r.success and r.message == \
        "classification (clip) is disabled (parameter `clip.enabled` is false)", r.message
    proc, wrong = start_node(base_params(clip={"enabled": True, "model": VILT}), "vilt_as_clip")
    r = classify(wrong, image_msg(load_rgb(IMAGES / "coffee.png"), "rgb8"), ["a", "b"])
    assert not r.success and "classification (clip) model" in r.message and "failed to load" in r.message, r.message
    assert "CLIPModel" in r.message, r.message
    assert proc.alive()
    diag = wrong.fresh_diag()["classification (clip)"]
    assert diag[0] == 2, diag  # ERROR


def _prompt_image(name, label):
    return image_msg(load_rgb(IMAGES / name), "rgb8", frame_id=label)


def test_segment_by_example_image_matches_the_cli(node):
    _, client = node
    req = Segment.Request()
    req.image = image_msg(load_rgb(IMAGES / "chelsea.png"), "rgb8", frame_id="seg-img")
    req.prompts = ["a cat"]
    req.prompt_images = [_prompt_image("coffee_96x96.png", "the cup"), _prompt_image("coffee_64x64.png", "")]
    req.threshold = 0.5
    r = client.call(Segment, "segment", req)
    assert r.success, r.message
    segs = r.segmentations.segmentations
    assert [s.label for s in segs] == ["a cat", "the cup", "prompt image 1"]
    cli = cli_json("segment", "--model", CLIPSEG, "--image", str(IMAGES / "chelsea.png"), "--prompt", "a cat",
                   "--prompt-image", str(IMAGES / "coffee_96x96.png"), "--prompt-image",
                   str(IMAGES / "coffee_64x64.png"), "--threshold", "0.5")
    assert [s.area_fraction for s in segs] == pytest.approx([p["area_fraction"] for p in cli["prompts"]], abs=1e-6)
    assert [s.score for s in segs] == pytest.approx([p["mean_score"] for p in cli["prompts"]], abs=1e-5)
    # a corrupt example image names itself; the node keeps running
    bad = _prompt_image("coffee_64x64.png", "broken")
    bad.data = bytes(bad.data)[:10]
    req.prompt_images = [bad]
    r = client.call(Segment, "segment", req)
    assert not r.success and "prompt image 0 (`broken`)" in r.message, r.message


def test_stream_segments_by_example_images_set_through_set_queries(node):
    _, client = node
    req = SetQueries.Request(keep_detection=True, segmentation_prompts=["a cat"],
                             segmentation_prompt_images=[_prompt_image("coffee_96x96.png", "like this cup")])
    r = client.call(SetQueries, "set_queries", req)
    assert r.success and "1 prompt image" in r.message, r.message
    try:
        frame_id = f"segstream-{time.monotonic_ns()}"
        msg = image_msg(load_rgb(IMAGES / "chelsea.png"), "rgb8", frame_id=frame_id)
        got = client.publish_until(lambda: client.image_pub.publish(msg),
                                   lambda: next((s for s in client.segmentations if s.header.frame_id == frame_id),
                                                None), f"segmentation of {frame_id}")
        assert [s.label for s in got.segmentations] == ["a cat", "like this cup"]
        threshold = base_params()["clipseg"]["mask_threshold"]
        cli = cli_json("segment", "--model", CLIPSEG, "--image", str(IMAGES / "chelsea.png"), "--prompt", "a cat",
                       "--prompt-image", str(IMAGES / "coffee_96x96.png"), "--threshold", str(threshold))
        assert [s.area_fraction for s in got.segmentations] == pytest.approx(
            [p["area_fraction"] for p in cli["prompts"]], abs=1e-6)
    finally:
        clear = client.call(SetQueries, "set_queries", SetQueries.Request(keep_detection=True))
        assert clear.success and "cleared" in clear.message, clear.message
