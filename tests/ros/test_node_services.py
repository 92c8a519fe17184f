"""The services (~/detect, ~/segment, ~/ask, ~/set_queries), the vocabulary topics and the query
embedding cache, ~/segmentation and ~/overlay on the stream, concurrent calls while streaming."""

import time

import pytest
from std_msgs.msg import String
from vlm_perception_msgs.srv import Ask, Detect, Segment, SetQueries

from conftest import (CLIPSEG, IMAGES, VILT, assert_same_detections, base_params, cli_detect, image_msg,
                      load_rgb, module_node)
import json
import subprocess
from conftest import CLI_BIN

QUERIES = base_params()["owlvit"]["queries"]


@pytest.fixture(scope="module")
def node(request):
    return module_node(request, base_params(overlay={"enabled": True}), "services")


def cli_json(*args):
    out = subprocess.run([str(CLI_BIN), *args, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _stream_frame(client, name="chelsea.png", tag="f"):
    frame_id = f"{tag}-{time.monotonic_ns()}"
    msg = image_msg(load_rgb(IMAGES / name), "rgb8", frame_id=frame_id)
    got = client.publish_until(lambda: client.image_pub.publish(msg), lambda: client.detections_for(frame_id),
                               f"detections for {frame_id}")
    return frame_id, got


def test_detect_with_request_image_matches_cli(node):
    _, client = node
    req = Detect.Request()
    req.image = image_msg(load_rgb(IMAGES / "coffee.png"), "rgb8", frame_id="req-coffee", stamp=7.25)
    r = client.call(Detect, "detect", req)
    assert r.success, r.message
    assert r.detections.header.frame_id == "req-coffee" and r.detections.header.stamp.sec == 7
    assert_same_detections(r.detections, cli_detect(IMAGES / "coffee.png", QUERIES))


def test_detect_with_own_queries_and_threshold(node):
    _, client = node
    req = Detect.Request()
    req.image = image_msg(load_rgb(IMAGES / "coffee.png"), "bgr8")
    req.queries = ["a mug", "a saucer", "a spoon"]
    req.threshold = 0.5
    r = client.call(Detect, "detect", req)
    assert r.success, r.message
    cli = cli_detect(IMAGES / "coffee.png", req.queries, threshold=0.5)
    assert_same_detections(r.detections, cli)
    assert all(d.score > 0.5 for d in r.detections.detections)


def test_detect_without_image_uses_the_latest_frame(node):
    _, client = node
    frame_id, streamed = _stream_frame(client, "chelsea.png", "latest")
    r = client.call(Detect, "detect", Detect.Request())
    assert r.success, r.message
    assert r.detections.header.frame_id == frame_id
    assert_same_detections(r.detections, cli_detect(IMAGES / "chelsea.png", QUERIES))
    assert [d.score for d in r.detections.detections] == [d.score for d in streamed.detections]


def test_overlay_is_published_with_the_source_header(node):
    _, client = node
    frame_id, _ = _stream_frame(client, "coffee.png", "overlay")
    ov = client.wait(lambda: next((m for m in client.overlays if m.header.frame_id == frame_id), None), 10,
                     "the overlay")
    src = load_rgb(IMAGES / "coffee.png")
    assert (ov.width, ov.height, ov.encoding, ov.step) == (src.width, src.height, "rgb8", 3 * src.width)
    assert bytes(ov.data) != src.tobytes(), "nothing drawn"


def test_segment_matches_cli(node):
    _, client = node
    req = Segment.Request()
    req.image = image_msg(load_rgb(IMAGES / "coffee.png"), "rgb8", frame_id="seg")
    req.prompts = ["a cup", "a table"]
    req.threshold = 0.5
    r = client.call(Segment, "segment", req)
    assert r.success, r.message
    segs = r.segmentations
    assert segs.header.frame_id == "seg" and segs.model.endswith("clipseg-tiny-rd16")
    cli = cli_json("segment", "--model", CLIPSEG, "--image", str(IMAGES / "coffee.png"),
                   "--prompt", "a cup", "--prompt", "a table", "--threshold", "0.5")
    assert len(segs.segmentations) == len(cli["prompts"]) == 2
    for s, c in zip(segs.segmentations, cli["prompts"]):
        assert s.label == c["prompt"] and s.prompt_index == c["prompt_index"]
        assert abs(s.score - c["mean_score"]) <= 1e-5 and abs(s.area_fraction - c["area_fraction"]) <= 1e-6
        m = s.mask
        assert (m.width, m.height, m.encoding, m.step) == (600, 400, "mono8", 600)
        assert m.header.frame_id == "seg"
        on = sum(1 for v in bytes(m.data) if v == 255)
        assert on + sum(1 for v in bytes(m.data) if v == 0) == 600 * 400
        assert abs(on / (600 * 400) - s.area_fraction) <= 1e-6
        if c["bbox"] is not None:
            x0, y0, x1, y1 = c["bbox"]
            assert abs(s.bbox.center.position.x - (x0 + x1) / 2) <= 1e-3
            assert abs(s.bbox.size_x - (x1 - x0)) <= 1e-3 and abs(s.bbox.size_y - (y1 - y0)) <= 1e-3


def test_ask_matches_cli_and_is_echoed_on_answers(node):
    _, client = node
    req = Ask.Request()
    req.image = image_msg(load_rgb(IMAGES / "coffee.png"), "rgb8", frame_id="ask")
    req.question = "what is on the table?"
    req.top_k = 3
    r = client.call(Ask, "ask", req)
    assert r.success, r.message
    cli = cli_json("ask", "--model", VILT, "--image", str(IMAGES / "coffee.png"),
                   "--question", req.question, "--top-k", "3")
    got = [(a.answer, a.score) for a in r.answer.answers]
    assert [a for a, _ in got] == [c["answer"] for c in cli["answers"]]
    for (_, s), c in zip(got, cli["answers"]):
        assert abs(s - c["score"]) <= 1e-5
    assert r.message == cli["answers"][0]["answer"]
    assert r.answer.question == req.question and r.answer.header.frame_id == "ask"
    echoed = client.wait(lambda: next((a for a in client.answers if a.header.frame_id == "ask"), None), 10,
                         "the answer on ~/answers")
    assert [a.answer for a in echoed.answers] == [a for a, _ in got]


def test_vocabulary_changes_and_the_embedding_cache(node):
    _, client = node
    client.fresh_diag()
    n0 = client.stat_int("query_encodings")
    for _ in range(3):
        _stream_frame(client)
    assert client.fresh_diag() and client.stat_int("query_encodings") == n0, "re-encoded without a change"

    req = SetQueries.Request(detection_queries=["a cat", "a dog"], keep_segmentation=True)
    r = client.call(SetQueries, "set_queries", req)
    assert r.success, r.message
    assert client.fresh_diag()["stream"][2]["queries"] == "a cat, a dog"
    assert client.stat_int("query_encodings") == n0 + 1
    _, got = _stream_frame(client)
    assert {d.label for d in got.detections} <= {"a cat", "a dog"} and got.detections

    # the same vocabulary again, by service and by topic: no new encoding
    assert client.call(SetQueries, "set_queries", req).success
    client.queries_pub.publish(String(data="a cat, a dog"))
    _stream_frame(client)
    assert client.fresh_diag() and client.stat_int("query_encodings") == n0 + 1

    # ~/queries with a new vocabulary
    client.queries_pub.publish(String(data=" a mug ,a plate"))
    client.wait(lambda: client.stream_stat("queries") == "a mug, a plate", 10, "the ~/queries vocabulary")
    assert client.stat_int("query_encodings") == n0 + 2

    # restore for the other tests
    r = client.call(SetQueries, "set_queries", SetQueries.Request(detection_queries=QUERIES, keep_segmentation=True))
    assert r.success, r.message


def test_prompts_switch_segmentation_on_the_stream(node):
    _, client = node
    r = client.call(SetQueries, "set_queries",
                    SetQueries.Request(keep_detection=True, segmentation_prompts=["a cup", "a saucer"]))
    assert r.success, r.message
    frame_id, _ = _stream_frame(client, "coffee.png", "segstream")
    seg = client.wait(lambda: next((m for m in client.segmentations if m.header.frame_id == frame_id), None), 10,
                      "~/segmentation for the frame")
    assert [s.label for s in seg.segmentations] == ["a cup", "a saucer"]
    assert all(s.mask.width == 600 and s.mask.height == 400 for s in seg.segmentations)

    # clearing the prompts stops segmentation on the stream; detection goes on
    r = client.call(SetQueries, "set_queries", SetQueries.Request(keep_detection=True, segmentation_prompts=[]))
    assert r.success, r.message
    frame_id, _ = _stream_frame(client, "coffee.png", "segoff")
    client.spin(0.5)
    assert not any(m.header.frame_id == frame_id for m in client.segmentations)


def test_bad_requests_fail_with_a_message(node):
    _, client = node
    cases = []
    req = Detect.Request(queries=["a cup", "  "])
    cases.append((Detect, "detect", req, "empty"))
    cases.append((Detect, "detect", Detect.Request(queries=[f"q{i}" for i in range(600)]), "at most"))
    cases.append((Detect, "detect", Detect.Request(threshold=1.5), "threshold"))
    bad = image_msg(load_rgb(IMAGES / "coffee_64x64.png"), "rgb8")
    bad.encoding = "yuv422"
    cases.append((Detect, "detect", Detect.Request(image=bad), "unsupported encoding `yuv422`"))
    short = image_msg(load_rgb(IMAGES / "coffee_64x64.png"), "rgb8")
    short.data = bytes(short.data)[:100]
    cases.append((Segment, "segment", Segment.Request(image=short, prompts=["a cup"]), "truncated"))
    cases.append((Ask, "ask", Ask.Request(question=""), "empty"))
    cases.append((SetQueries, "set_queries", SetQueries.Request(keep_segmentation=True), "no detection querys given"))
    before = client.fresh_diag()["stream"][2]["queries"]
    for srv, name, req, expect in cases:
        r = client.call(srv, name, req)
        assert not r.success, (name, expect)
        assert expect in r.message, (name, r.message)
    assert client.fresh_diag()["stream"][2]["queries"] == before, "a rejected vocabulary was applied"
    assert int(client.diag["stream"][2]["service_failures"]) >= len(cases)


def test_concurrent_calls_while_streaming(node):
    _, client = node
    _stream_frame(client)  # calls without an image use the latest frame
    pil = load_rgb(IMAGES / "chelsea.png")
    calls = []
    for i in range(10):  # 30 calls: more than the node queues (16); the rest are refused at once
        calls.append(client.service(Detect, "detect").call_async(Detect.Request()))
        calls.append(client.service(Segment, "segment").call_async(Segment.Request(prompts=["a cat"])))
        calls.append(client.service(Ask, "ask").call_async(Ask.Request(question="is there a cat?")))
    n_det = len(client.detections)
    end = time.monotonic() + 30
    while not all(c.done() for c in calls) and time.monotonic() < end:
        client.image_pub.publish(image_msg(pil, "rgb8", frame_id="conc"))
        client.spin(0.03)
    assert all(c.done() for c in calls), "a call never returned"
    ok = [c for c in calls if c.result().success]
    refused = [c.result().message for c in calls if not c.result().success]
    assert all(m.startswith("busy:") for m in refused), refused
    assert len(ok) >= 16, (len(ok), refused)
    client.wait(lambda: len(client.detections) > n_det, 10, "the stream to keep publishing")


@pytest.mark.parametrize("name", ["chelsea_1x1.png", "chelsea_31x33.png", "coffee_500x1.png"])
def test_segment_accepts_images_smaller_than_a_patch(node, name):
    # transformers' CLIPSeg processor resizes any image to its fixed size: so does the node
    _, client = node
    req = Segment.Request()
    req.image = image_msg(load_rgb(IMAGES / name), "rgb8", frame_id=name)
    req.prompts = ["a cat", "a cup"]
    r = client.call(Segment, "segment", req)
    assert r.success, r.message
    threshold = base_params()["clipseg"]["mask_threshold"]
    cli = cli_json("segment", "--model", CLIPSEG, "--image", str(IMAGES / name), "--prompt", "a cat",
                   "--prompt", "a cup", "--threshold", str(threshold))
    segs = r.segmentations.segmentations
    assert [s.label for s in segs] == [p["prompt"] for p in cli["prompts"]]
    assert [s.area_fraction for s in segs] == pytest.approx([p["area_fraction"] for p in cli["prompts"]], abs=1e-6)


def test_ask_accepts_small_images_and_refuses_what_transformers_refuses(node):
    _, client = node
    for name in ("chelsea_1x1.png", "chelsea_31x33.png", "chelsea_20x64.png"):
        req = Ask.Request()
        req.image = image_msg(load_rgb(IMAGES / name), "rgb8")
        req.question = "what colour is this?"
        r = client.call(Ask, "ask", req)
        assert r.success, f"{name}: {r.message}"
        cli = cli_json("ask", "--model", VILT, "--image", str(IMAGES / name), "--question", req.question,
                       "--top-k", "3")
        assert [a.answer for a in r.answer.answers] == [a["answer"] for a in cli["answers"]]
    # the 500x1 strip: ViLT's processor rounds its height to 0 and fails; so does the node, clearly
    req = Ask.Request()
    req.image = image_msg(load_rgb(IMAGES / "coffee_500x1.png"), "rgb8")
    req.question = "what colour is this?"
    r = client.call(Ask, "ask", req)
    assert not r.success and "500x1" in r.message and "less than one" in r.message, r.message


def test_detect_with_query_images_matches_the_cli(node):
    # image-guided (one-shot) detection: a crop of the coffee photo as the query
    _, client = node
    req = Detect.Request()
    req.image = image_msg(load_rgb(IMAGES / "coffee.png"), "rgb8", frame_id="target")
    req.query_images = [image_msg(load_rgb(IMAGES / "coffee_64x64.png"), "rgb8", frame_id="the cup")]
    r = client.call(Detect, "detect", req)
    assert r.success, r.message
    cli = cli_json("detect", "--model", base_params()["owlvit"]["model"], "--image", str(IMAGES / "coffee.png"),
                   "--query-image", str(IMAGES / "coffee_64x64.png"))
    assert r.detections.detections, "image-guided detection found nothing"
    assert [d.label for d in r.detections.detections] == ["the cup"] * len(cli["detections"])
    assert [d.score for d in r.detections.detections] == pytest.approx([d["score"] for d in cli["detections"]],
                                                                       abs=1e-5)
    # a corrupt query image: a clear error naming it
    bad = image_msg(load_rgb(IMAGES / "coffee_64x64.png"), "rgb8", frame_id="broken")
    bad.data = bytes(bad.data[:10])
    req.query_images = [bad]
    r = client.call(Detect, "detect", req)
    assert not r.success and "broken" in r.message, r.message


def test_query_images_as_the_stream_vocabulary(node):
    _, client = node
    req = SetQueries.Request()
    req.detection_query_images = [image_msg(load_rgb(IMAGES / "coffee_64x64.png"), "rgb8", frame_id="my mug")]
    req.keep_segmentation = True
    r = client.call(SetQueries, "set_queries", req)
    assert r.success and "1 detection query image" in r.message, r.message
    try:
        _, got = _stream_frame(client, "coffee.png", "imgvocab")
        assert got.detections and {d.label for d in got.detections} == {"my mug"}
    finally:
        r = client.call(SetQueries, "set_queries", SetQueries.Request(detection_queries=QUERIES,
                                                                     keep_segmentation=True))
        assert r.success, r.message
