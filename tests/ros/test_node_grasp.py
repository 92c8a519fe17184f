"""~/ground's gripper poses and object point clouds on a real node, against closed forms.

The scene: the depth camera of test_node_depth.py (fx = fy = 400 px, principal point (225, 149.5))
looks at a plane tilted about both image axes, with a known normal. Every depth pixel is the
intersection of its ray with that plane, so the approach axis of a pose is the plane's normal
(pointing into the surface) exactly, and every point of a cloud lies on the plane.
"""

import math

import numpy as np
import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from vlm_perception_msgs.srv import Ground

from conftest import IMAGES, RELIABLE, image_msg, load_rgb, module_node
from test_node_depth import (CX, CY, FX, FY, PHOTO, Depth, camera_info_msg, depth_msg, depth_params,
                             next_stamp, stream_frame)

W, H = 451, 300
# The plane n . p = D (camera optical frame): n unit, pointing back towards the camera.
NORMAL = np.array([math.sin(0.35), -math.sin(0.2), -1.0])
NORMAL /= np.linalg.norm(NORMAL)
D = float(NORMAL @ np.array([0.0, 0.0, 1.2]))  # through (0, 0, 1.2)


@pytest.fixture(scope="module")
def node(request):
    return module_node(request, depth_params(), "grasp")


def tilted_plane():
    u, v = np.meshgrid(np.arange(W) - CX, np.arange(H) - CY)  # pixel centres, ROS coordinates
    rays = np.stack([u / FX, v / FY, np.ones_like(u, dtype=np.float64)], axis=-1)
    return D / (rays @ NORMAL)  # z of each ray's hit


def ground(client, points=False):
    req = Ground.Request()
    req.pick, req.place = "a photo of a cat", "a coffee cup"
    req.threshold = 0.0
    req.return_points = points
    req.image = image_msg(load_rgb(IMAGES / PHOTO), "rgb8", frame_id="grasp", stamp=next_stamp())
    req.depth = depth_msg(tilted_plane(), encoding="32FC1")
    req.camera_info = camera_info_msg()
    r = client.call(Ground, "ground", req)
    assert r.success, r.message
    return r


def rotation(q):
    """The 3x3 rotation of a geometry_msgs/Quaternion."""
    x, y, z, w = q.x, q.y, q.z, q.w
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def set_params(client, **values):
    req = SetParameters.Request()
    for name, v in values.items():
        p = ParameterValue()
        if isinstance(v, bool):
            p.type, p.bool_value = ParameterType.PARAMETER_BOOL, v
        elif isinstance(v, int):
            p.type, p.integer_value = ParameterType.PARAMETER_INTEGER, v
        else:
            p.type, p.double_value = ParameterType.PARAMETER_DOUBLE, float(v)
        req.parameters.append(Parameter(name=name.replace("__", "."), value=p))
    return client.call(SetParameters, "set_parameters", req).results


def decode_cloud(cloud):
    fields = {f.name: (f.offset, f.datatype, f.count) for f in cloud.fields}
    assert fields == {"x": (0, 7, 1), "y": (4, 7, 1), "z": (8, 7, 1), "track_id": (12, 6, 1),
                      "query_index": (16, 6, 1), "detection_index": (20, 6, 1)}, fields
    assert cloud.height == 1 and cloud.point_step == 24 and cloud.row_step == 24 * cloud.width
    assert not cloud.is_bigendian and cloud.is_dense
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("track_id", "<u4"), ("query_index", "<u4"),
                   ("detection_index", "<u4")])
    return np.frombuffer(bytes(cloud.data), dtype=dt, count=cloud.width)


def test_pose_approaches_along_the_plane_normal_and_is_right_handed(node):
    _, client = node
    r = ground(client)
    for t in (r.pick, r.place):
        assert t.has_point and t.has_pose, t
        assert t.approach_from_fit, t.pose_note
        q = t.pose.orientation
        assert q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w == pytest.approx(1.0, abs=1e-9)
        R = rotation(q)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-9)
        x, z = R[:, 0], R[:, 2]
        # approach: into the surface, the negated normal (the normal points back at the camera)
        assert np.abs(z - (-NORMAL)).max() < 1e-3, (z, -NORMAL)
        # the closing axis lies in the plane
        assert abs(x @ NORMAL) < 1e-3
        p = t.pose.position
        assert (p.x, p.y, p.z) == (t.point.x, t.point.y, t.point.z)
        assert NORMAL @ np.array([p.x, p.y, p.z]) == pytest.approx(D, abs=2e-3)
        if not t.closing_from_mask:
            assert t.pose_note, "a fallback must say why"
    assert r.pick.points.width == 0, "points only when asked"


def test_return_points_gives_the_object_on_the_plane(node):
    _, client = node
    r = ground(client, points=True)
    for index, t in enumerate((r.pick, r.place)):
        cloud = t.points
        assert cloud.header.frame_id == r.position_frame_id == "grasp"
        assert cloud.header.stamp == r.header.stamp
        pts = decode_cloud(cloud)
        assert 0 < len(pts) <= 5000
        xyz = np.stack([pts["x"], pts["y"], pts["z"]], axis=-1).astype(np.float64)
        # voxel centroids of points of one plane stay on it
        assert np.abs(xyz @ NORMAL - D).max() < 2e-3
        # inside the box, back-projected
        u = xyz[:, 0] * FX / xyz[:, 2] + CX + 0.5
        v = xyz[:, 1] * FY / xyz[:, 2] + CY + 0.5
        b = t.bbox
        assert u.min() >= b.center.position.x - b.size_x / 2 - 1 and u.max() <= b.center.position.x + b.size_x / 2 + 1
        assert v.min() >= b.center.position.y - b.size_y / 2 - 1 and v.max() <= b.center.position.y + b.size_y / 2 + 1
        assert set(pts["query_index"]) == {index} and set(pts["track_id"]) == {0}
    # a coarser voxel (live) gives fewer points; the cap holds
    n_fine = r.pick.points.width
    try:
        assert all(x.successful for x in set_params(client, pointcloud__voxel=0.03))
        assert 0 < ground(client, points=True).pick.points.width < n_fine
        assert all(x.successful for x in set_params(client, pointcloud__voxel=0.0, pointcloud__max_points=50))
        assert ground(client, points=True).pick.points.width <= 50
    finally:
        assert all(x.successful for x in set_params(client, pointcloud__voxel=0.005, pointcloud__max_points=5000))


def test_too_few_depth_points_fall_back_to_the_camera_axis_with_a_note(node):
    _, client = node
    try:
        assert all(x.successful for x in set_params(client, grasp__min_points=1_000_000))
        r = ground(client)
        t = r.pick
        assert t.has_pose and not t.approach_from_fit
        assert "depth" in t.pose_note, t.pose_note
        R = rotation(t.pose.orientation)
        assert np.abs(R[:, 2] - np.array([0.0, 0.0, 1.0])).max() < 1e-9
    finally:
        assert all(x.successful for x in set_params(client, grasp__min_points=12))


def test_invalid_grasp_and_cloud_parameters_are_refused(node):
    _, client = node
    for name, value, words in (("grasp__window", 2, "grasp.window"), ("grasp__min_points", 2, "grasp.min_points"),
                               ("grasp__min_elongation", 0.5, "elongation"), ("pointcloud__voxel", -0.01, "voxel"),
                               ("pointcloud__max_points", -1, "pointcloud.max_points")):
        (res,) = set_params(client, **{name: value})
        assert not res.successful and words in res.reason, (name, res.reason)


def test_stream_publishes_each_frames_object_points_when_enabled(node):
    from sensor_msgs.msg import PointCloud2

    proc, client = node
    clouds = []
    sub = client.node.create_subscription(PointCloud2, f"{proc.fqn}/objects/points", clouds.append, RELIABLE)
    depth = Depth(client)
    try:
        assert all(x.successful for x in set_params(client, pointcloud__enabled=True))
        det = stream_frame(client, depth, tilted_plane())
        cloud = client.wait(lambda: next((c for c in clouds if c.header.stamp == det.header.stamp), None), 10,
                            "the frame's ~/objects/points")
        assert cloud.header.frame_id == det.header.frame_id  # no target_frame: the camera's
        pts = decode_cloud(cloud)
        assert len(pts) > 0
        xyz = np.stack([pts["x"], pts["y"], pts["z"]], axis=-1).astype(np.float64)
        assert np.abs(xyz @ NORMAL - D).max() < 3e-3  # 16UC1 depth: millimetres
        located = {i for i, d in enumerate(det.detections) if d.has_position}
        assert set(pts["detection_index"]) <= located and set(pts["detection_index"])
        for i in set(pts["detection_index"]):
            mine = pts[pts["detection_index"] == i]
            assert set(mine["query_index"]) == {det.detections[i].query_index}
            assert set(mine["track_id"]) == {det.detections[i].track_id}
        # off again (live): the next frame has none
        assert all(x.successful for x in set_params(client, pointcloud__enabled=False))
        det = stream_frame(client, depth, tilted_plane())
        client.spin(0.5)
        assert not [c for c in clouds if c.header.stamp == det.header.stamp]
    finally:
        set_params(client, pointcloud__enabled=False)
        client.node.destroy_subscription(sub)
