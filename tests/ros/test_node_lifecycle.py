"""`lifecycle: true`: the managed-node services driven from rclpy, as a lifecycle manager does -
configure loads the models, activate lets frames and requests through, deactivate stops them
with the models kept, cleanup frees them, shutdown finalizes; ~/transition_event reports each."""

import time

import pytest
from lifecycle_msgs.msg import State, Transition, TransitionEvent
from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState
from vlm_perception_msgs.srv import Detect

from conftest import IMAGES, RELIABLE, base_params, image_msg, load_rgb


def change(client, transition_id=0, label=""):
    req = ChangeState.Request()
    req.transition = Transition(id=transition_id, label=label)
    return client.call(ChangeState, "change_state", req, timeout=120).success


def current(client):
    return client.call(GetState, "get_state", GetState.Request()).current_state.id


def frame(client, tag):
    frame_id = f"{tag}-{time.monotonic_ns()}"
    return frame_id, image_msg(load_rgb(IMAGES / "chelsea.png"), "rgb8", frame_id=frame_id)


def test_managed_node_transitions(start_node):
    proc, client = start_node(base_params(lifecycle=True), "lifecycle", wait_ready=False)
    events = []
    sub = client.node.create_subscription(TransitionEvent, f"{proc.fqn}/transition_event", events.append, RELIABLE)
    try:
        client.wait(lambda: client.diag.get("stream"), 30, "diagnostics")
        assert current(client) == State.PRIMARY_STATE_UNCONFIGURED
        # not configured: models are not loaded, requests are refused
        assert client.diag["detection (owlvit)"][2]["state"] == "unconfigured"
        r = client.call(Detect, "detect", Detect.Request())
        assert not r.success and "not active" in r.message, r.message
        assert not change(client, Transition.TRANSITION_ACTIVATE), "activate before configure"

        assert change(client, label="configure")
        assert current(client) == State.PRIMARY_STATE_INACTIVE
        client.wait(lambda: client.diag["detection (owlvit)"][2]["state"] == "ready", 30, "models loaded")
        names = [t.transition.label for t in client.call(
            GetAvailableTransitions, "get_available_transitions", GetAvailableTransitions.Request()).available_transitions]
        assert sorted(names) == ["activate", "cleanup", "shutdown"]

        # inactive: frames are ignored
        fid, msg = frame(client, "inactive")
        for _ in range(3):
            client.image_pub.publish(msg)
            client.spin(0.5)
        assert client.detections_for(fid) is None

        assert change(client, Transition.TRANSITION_ACTIVATE)
        assert current(client) == State.PRIMARY_STATE_ACTIVE
        fid, msg = frame(client, "active")
        client.publish_until(lambda: client.image_pub.publish(msg), lambda: client.detections_for(fid), "detections")
        r = client.call(Detect, "detect", Detect.Request())
        assert r.success, r.message

        assert change(client, Transition.TRANSITION_DEACTIVATE)
        fid, msg = frame(client, "deactivated")
        for _ in range(3):
            client.image_pub.publish(msg)
            client.spin(0.5)
        assert client.detections_for(fid) is None
        # deactivated keeps the models; cleanup frees them
        assert client.fresh_diag()["detection (owlvit)"][2]["state"] == "ready"
        assert change(client, Transition.TRANSITION_CLEANUP)
        assert current(client) == State.PRIMARY_STATE_UNCONFIGURED
        client.wait(lambda: client.fresh_diag()["detection (owlvit)"][2]["state"] == "unconfigured", 10, "models freed")

        assert change(client, label="shutdown")
        assert current(client) == State.PRIMARY_STATE_FINALIZED
        assert proc.alive()

        client.wait(lambda: len(events) >= 10, 10, "transition events")
        seen = [(e.transition.label, e.start_state.label, e.goal_state.label) for e in events if e.transition.label]
        assert seen == [("configure", "unconfigured", "configuring"), ("activate", "inactive", "activating"),
                        ("deactivate", "active", "deactivating"), ("cleanup", "inactive", "cleaningup"),
                        ("shutdown", "unconfigured", "shuttingdown")], seen
        ends = [(e.start_state.label, e.goal_state.label) for e in events if not e.transition.label]
        assert ends == [("configuring", "inactive"), ("activating", "active"), ("deactivating", "inactive"),
                        ("cleaningup", "unconfigured"), ("shuttingdown", "finalized")], ends
    finally:
        client.node.destroy_subscription(sub)


def test_failed_configure_returns_to_unconfigured(start_node):
    params = base_params(lifecycle=True, owlvit={"model": "/no/such/model"}, clipseg={"enabled": False},
                         vilt={"enabled": False})
    proc, client = start_node(params, "lifecycle_fail", wait_ready=False)
    client.wait(lambda: client.diag.get("stream"), 30, "diagnostics")
    assert not change(client, label="configure")
    assert current(client) == State.PRIMARY_STATE_UNCONFIGURED
    assert "no/such/model" in client.fresh_diag()["detection (owlvit)"][1]
    assert proc.alive()
