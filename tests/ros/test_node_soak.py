"""Soak (long mode only: VLM_SOAK_SECONDS=600 python3 -m pytest tests/ros/test_node_soak.py):
the node on a reliable 30 Hz 640x480 stream with vocabulary changes, parameter changes and service
calls mixed in; its resident memory at the end must stay within a bound of the start (after a
warm-up). Skipped in the normal run: it takes as long as it is told to."""

import os
import time

import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from std_msgs.msg import String
from vlm_perception_msgs.srv import Ask, Detect, Score, Segment

from conftest import IMAGES, METRICS, base_params, image_msg, load_rgb

SECONDS = float(os.environ.get("VLM_SOAK_SECONDS", "0"))
WARMUP = 60.0
# RSS growth allowed from the end of the warm-up to the end (allocator noise, caches of a few
# vocabularies): a leak of one frame per second would exceed it within minutes.
MAX_GROWTH_MIB = 20.0

pytestmark = pytest.mark.skipif(SECONDS <= 0, reason="long mode only: set VLM_SOAK_SECONDS (e.g. 600)")


def test_soak_memory_stays_flat(start_node):
    proc, client = start_node(base_params(camera={"reliable": True, "transport": "raw"}, rate=0.0,
                                          clipseg={"prompts": ["a cat"]}), "soak")
    frame = image_msg(load_rgb(IMAGES / "coffee.png").resize((640, 480)), "rgb8", frame_id="soak")
    vocabularies = [["a cat", "a cup"], ["a rocket", "a person", "a plate"], ["a coffee cup"]]
    start = time.monotonic()
    samples, calls, failures, published = [], 0, 0, 0
    next_frame = start
    next_event = start + 5
    i = 0
    while (now := time.monotonic()) < start + SECONDS:
        if now >= next_frame:
            client.reliable_image_pub.publish(frame)
            published += 1
            next_frame += 1 / 30
        if now >= next_event:
            i += 1
            kind = i % 5
            if kind == 0:
                client.queries_pub.publish(String(data=", ".join(vocabularies[i % 3])))
            elif kind == 1:
                r = client.call(Detect, "detect", Detect.Request(queries=vocabularies[(i + 1) % 3]))
                calls, failures = calls + 1, failures + (not r.success)
            elif kind == 2:
                r = client.call(Segment, "segment", Segment.Request(prompts=["a cup", "a saucer"]))
                calls, failures = calls + 1, failures + (not r.success)
            elif kind == 3:
                r = client.call(Ask, "ask", Ask.Request(question="what is on the table?"))
                calls, failures = calls + 1, failures + (not r.success)
            else:
                r = client.call(Score, "score", Score.Request(phrases=vocabularies[i % 3]))
                calls, failures = calls + 1, failures + (not r.success)
                req = SetParameters.Request()
                req.parameters = [Parameter(name="owlvit.score_threshold", value=ParameterValue(
                    type=ParameterType.PARAMETER_DOUBLE, double_value=0.05 * (i % 4)))]
                client.call(SetParameters, "set_parameters", req)
            next_event += 2.0
        if not samples or now - samples[-1][0] >= 10:
            samples.append((now, proc.rss_kb() / 1024))
        client.spin(0.002)
    samples.append((time.monotonic(), proc.rss_kb() / 1024))
    assert proc.alive()
    diag = client.fresh_diag()["stream"][2]
    warm = [m for t, m in samples if t - start >= WARMUP] or [samples[-1][1]]
    growth = samples[-1][1] - warm[0]
    METRICS["soak"] = (f"{SECONDS:.0f} s, 30 Hz reliable 640x480: published {published}, processed "
                       f"{diag['frames_processed']}, dropped {diag['frames_dropped']}; {calls} service calls, "
                       f"{failures} failed; RSS start {samples[0][1]:.0f} MiB, after warm-up {warm[0]:.0f}, "
                       f"end {samples[-1][1]:.0f} (growth {growth:+.1f} MiB); every 10 s: "
                       f"{[round(m) for _, m in samples]}")
    assert failures == 0
    assert growth <= MAX_GROWTH_MIB, METRICS["soak"]
