"""Raw frames larger than Fast DDS's default 512 KB shared-memory segment reach a node on its
DEFAULT camera QoS (best effort, depth 5) from a best-effort publisher, at the first or second
publish. Without config/fastdds_large_data.xml in the writer (this process, see conftest) most of
them never arrive:

    FASTRTPS_DEFAULT_PROFILES_FILE= python3 -m pytest tests/ros/test_node_large_frames.py   # fails
"""

import os

import pytest

from conftest import IMAGES, base_params, image_msg, load_rgb, module_node

# the defaults of config/vlm_perception.yaml
DEFAULT_CAMERA = {"topic": "image", "transport": "raw", "reliable": False, "depth": 5}
# seconds to wait for the detections of one publish (inference on these frames takes well under 1 s)
ANSWER_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def node(request):
    return module_node(request, base_params(camera=DEFAULT_CAMERA), "large_frames")


@pytest.mark.parametrize("size", [None, (640, 480), (1280, 720)], ids=["451x300", "640x480", "1280x720"])
def test_large_raw_frame_arrives_within_two_publishes(node, size):
    _, client = node
    pil = load_rgb(IMAGES / "chelsea.png")
    if size:
        pil = pil.resize(size)
    w, h = pil.size
    stamp = 2000 + w + h / 1e4  # one stamp per frame
    msg = image_msg(pil, "rgb8", frame_id=f"large-{w}x{h}", stamp=stamp)
    sec, nanosec = msg.header.stamp.sec, msg.header.stamp.nanosec

    def answered():
        return any(m.header.stamp.sec == sec and m.header.stamp.nanosec == nanosec for m in client.detections)

    for _ in range(2):
        client.image_pub.publish(msg)
        try:
            client.wait(answered, ANSWER_TIMEOUT, "detections")
            return
        except AssertionError:
            if not client.proc.alive():
                raise
    pytest.fail(f"a {w}x{h} rgb8 frame ({len(msg.data) / 1e6:.2f} MB) published twice best effort got no "
                f"detections (Fast DDS profile: {os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE', 'none')})")
