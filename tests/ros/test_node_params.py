"""Live parameters through the standard parameter services (what `ros2 param` calls): list,
describe, get, set of valid, invalid and read-only values, and their effect on the stream
without a restart."""

import time

import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters, SetParameters

from conftest import IMAGES, base_params, image_msg, load_rgb, module_node

LIVE = ["rate", "owlvit.queries", "owlvit.score_threshold", "owlvit.nms_iou", "clipseg.prompts",
        "clipseg.mask_threshold", "vilt.top_k", "overlay.enabled", "services.timeout", "depth.slop"]


@pytest.fixture(scope="module")
def node(request):
    return module_node(request, base_params(), "params")


def value(v):
    p = ParameterValue()
    if isinstance(v, bool):
        p.type, p.bool_value = ParameterType.PARAMETER_BOOL, v
    elif isinstance(v, int):
        p.type, p.integer_value = ParameterType.PARAMETER_INTEGER, v
    elif isinstance(v, float):
        p.type, p.double_value = ParameterType.PARAMETER_DOUBLE, v
    elif isinstance(v, str):
        p.type, p.string_value = ParameterType.PARAMETER_STRING, v
    else:
        p.type, p.string_array_value = ParameterType.PARAMETER_STRING_ARRAY, list(v)
    return p


def set_param(client, name, v):
    req = SetParameters.Request()
    req.parameters = [Parameter(name=name, value=value(v))]
    return client.call(SetParameters, "set_parameters", req).results[0]


def get_param(client, name):
    req = GetParameters.Request()
    req.names = [name]
    v = client.call(GetParameters, "get_parameters", req).values[0]
    return {ParameterType.PARAMETER_BOOL: v.bool_value, ParameterType.PARAMETER_INTEGER: v.integer_value,
            ParameterType.PARAMETER_DOUBLE: v.double_value, ParameterType.PARAMETER_STRING: v.string_value,
            ParameterType.PARAMETER_STRING_ARRAY: list(v.string_array_value)}.get(v.type)


def stream(client, tag):
    frame_id = f"{tag}-{time.monotonic_ns()}"
    msg = image_msg(load_rgb(IMAGES / "chelsea.png"), "rgb8", frame_id=frame_id)
    return client.publish_until(lambda: client.image_pub.publish(msg), lambda: client.detections_for(frame_id),
                                f"detections for {frame_id}")


def test_every_parameter_is_listed_with_a_description(node):
    _, client = node
    names = client.call(ListParameters, "list_parameters", ListParameters.Request()).result.names
    for n in LIVE + ["device", "dtype", "owlvit.model", "camera.topic", "depth.enabled"]:
        assert n in names, n
    req = DescribeParameters.Request()
    req.names = ["owlvit.score_threshold", "device"]
    d = client.call(DescribeParameters, "describe_parameters", req).descriptors
    assert "[0, 1]" in d[0].description and "cpu" in d[1].description
    # defaults are filled in: the node was not given depth.slop
    assert get_param(client, "depth.slop") == pytest.approx(0.05)
    assert get_param(client, "owlvit.queries") == base_params()["owlvit"]["queries"]


def test_threshold_changes_the_stream_without_a_restart(node):
    proc, client = node
    before = stream(client, "before")
    assert any(d.score <= 0.5 for d in before.detections), "the fixture should give low scores too"
    r = set_param(client, "owlvit.score_threshold", 0.5)
    assert r.successful, r.reason
    assert get_param(client, "owlvit.score_threshold") == pytest.approx(0.5)
    after = stream(client, "after")
    assert after.detections and all(d.score > 0.5 for d in after.detections)
    assert [d.score for d in after.detections] == [d.score for d in before.detections if d.score > 0.5]
    assert set_param(client, "owlvit.score_threshold", 0.0).successful


def test_invalid_and_read_only_values_are_refused_with_a_reason(node):
    proc, client = node
    r = set_param(client, "owlvit.score_threshold", 3.0)
    assert not r.successful and "[0, 1]" in r.reason, r.reason
    assert get_param(client, "owlvit.score_threshold") == pytest.approx(0.0)
    r = set_param(client, "owlvit.score_threshold", "high")
    assert not r.successful and "number" in r.reason, r.reason
    r = set_param(client, "vilt.top_k", 0)
    assert not r.successful and "vilt.top_k" not in ("",) and "1..=100" in r.reason, r.reason
    r = set_param(client, "device", "cuda")
    assert not r.successful and "read-only" in r.reason, r.reason
    r = set_param(client, "owlvit.queries", ["a cat", " "])
    assert not r.successful and "empty" in r.reason, r.reason
    assert proc.alive()


def test_vocabulary_parameter_re_encodes_the_queries(node):
    _, client = node
    r = set_param(client, "owlvit.queries", ["a cat", "a remote control"])
    assert r.successful, r.reason
    msg = stream(client, "vocab")
    assert msg.detections and {d.label for d in msg.detections} <= {"a cat", "a remote control"}
    diag = client.wait(lambda: client.stream_stat("queries") == "a cat, a remote control" and client.diag, 10,
                       "the new vocabulary on /diagnostics")
    assert diag
    r = set_param(client, "owlvit.queries", base_params()["owlvit"]["queries"])
    assert r.successful, r.reason


def test_rate_and_overlay_switch_at_run_time(node):
    _, client = node
    assert set_param(client, "overlay.enabled", True).successful
    frame_id = stream(client, "overlay").header.frame_id
    client.wait(lambda: any(m.header.frame_id == frame_id for m in client.overlays), 10, "an overlay")
    assert set_param(client, "overlay.enabled", False).successful
    assert set_param(client, "rate", 2.5).successful
    client.wait(lambda: client.stream_stat("rate_limit_hz") == "2.5", 10, "rate_limit_hz = 2.5 on /diagnostics")
    assert set_param(client, "rate", 0.0).successful
