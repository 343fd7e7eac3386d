"""The 3D jump check in the node, without DDS or timing: a track whose position jumps (the issue's
3.45 m -> 1.95 m between two frames at 30 fps) is published on that frame with has_position false
and no detection or target_point, the jump is logged once and counted (depth.jumps,
depth.jump_frames), and the node asks the pipeline to ground the track's target again
(`Pipeline.request_grounding(target_id, "3d_jump")`, through SteerSegNode._on_3d_jumps).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytestmark = pytest.mark.ros

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from sensor_msgs.msg import CameraInfo  # noqa: E402

from node_fixtures import context, make_node  # noqa: E402,F401 (pytest fixtures)

from steerseg_ros import depth as depth3d  # noqa: E402
from steerseg_ros.frame import NS_PER_S  # noqa: E402
from steerseg_ros.ros.depth_input import DepthConfig, DepthInput, Frame3D  # noqa: E402
from steerseg_ros.ros.image_conversion import depth_array_to_image, rgb_to_image  # noqa: E402
from steerseg_ros.ros.messages import header_at  # noqa: E402
from steerseg_ros.streaming.pipeline import TrackState, TrackView  # noqa: E402

W, H = 160, 120
PERIOD = NS_PER_S // 30
T0 = 50 * NS_PER_S


def _view(track_id=1, target_id=3):
    mask = np.zeros((H, W), bool)
    mask[40:80, 60:100] = True
    return TrackView(track_id, "the cup", "cup", TrackState.TRACKING, 0.95, mask, 0, target_id=target_id)


def _obj(z):
    return depth3d.Object3D(valid=True, position=(0.1, 0.0, z), extent_min=(0, 0, z), extent_max=(0.2, 0.1, z),
                            size=(0.2, 0.1, 0.0), n_valid=500, std=(0.05, 0.03, 0.002), stderr=0.004)


def test_depth_input_withholds_a_jumped_position_and_counts_it_once(caplog):
    counted = {}
    d = DepthInput(lambda reason, text: None, lambda key, n=1: counted.__setitem__(key, counted.get(key, 0) + n))
    d.start(DepthConfig(max_speed_mps=3.0))
    views = [_view()]
    frame, jumps = d.check_motion(Frame3D("optical", {1: _obj(3.45)}), views, T0)
    assert frame.objects[1].valid and not jumps
    with caplog.at_level(logging.INFO, logger="steerseg_ros.ros.depth_input"):
        for i in (1, 2):
            frame, jumps = d.check_motion(Frame3D("optical", {1: _obj(1.95)}), views, T0 + i * PERIOD)
            assert not frame.objects[1].valid and frame.objects[1].reason == "3d jump"
            assert [j.first for j in jumps] == [i == 1] and jumps[0].target_id == 3
        frame, jumps = d.check_motion(Frame3D("optical", {1: _obj(3.46)}), views, T0 + 3 * PERIOD)
        assert frame.objects[1].valid and not jumps
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "track 1" in warnings[0] and "3.45" in warnings[0] and "1.95" in warnings[0]
    assert "m/s" in warnings[0]
    assert any("believed again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert counted == {"depth.jumps": 1, "depth.jump_frames": 2}
    # A track that ended is forgotten, with or without depth on the frame.
    d.check_motion(None, [], T0 + 4 * PERIOD)
    assert len(d._jumps) == 0


def _info():
    msg = CameraInfo(width=W, height=H, distortion_model="plumb_bob",
                     k=[150.0, 0, 79.5, 0, 150.0, 59.5, 0, 0, 1], d=[0.0] * 5)
    msg.header.frame_id = "optical"
    return msg


def test_the_node_publishes_a_jumped_track_without_a_position(make_node):
    node = make_node("steerseg_jump", stats_period_s=0.0, draw_unsubscribed=False)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    node._frames.stop()  # this test is the processing thread
    published = []
    publish = node._outputs.publish

    def keep(output, header, rgb, frame3d, *args):
        published.append((publish(output, header, rgb, frame3d, *args), frame3d))
        return published[-1][0]
    node._outputs.publish = keep
    asked = []
    node._pipeline.request_grounding = lambda target_id, why: asked.append((target_id, why)) or True
    node._depth.on_camera_info(_info())
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    box = np.zeros((H, W), bool)
    box[40:80, 60:100] = True

    def frame(i, z):
        stamp = T0 + i * PERIOD
        depth = np.where(box, int(z * 1000), 6000).astype(np.uint16)
        node._on_image("raw", rgb_to_image(rgb, "rgb8", header_at(stamp, "camera_link")))
        node._depth.on_depth(depth_array_to_image(depth, header_at(stamp, "camera_link")))
        node._handle(*node._frames._mailbox.take(0.0))
        return published[-1]

    frame(0, 3.45)
    node._pipeline.seed_mask(box, label="cup")
    tracks, _ = frame(1, 3.45)
    (before,) = [t for t in tracks.tracks if t.state == TrackState.TRACKING]
    assert before.has_position and before.position.z == pytest.approx(3.45, abs=0.01)
    tracks, frame3d = frame(2, 1.95)  # the same mask, the depth under it 1.5 m nearer, 33 ms later
    (after,) = [t for t in tracks.tracks if t.id == before.id]
    assert after.state == TrackState.TRACKING and not after.has_position
    assert not frame3d.objects[after.id].valid  # so no detections_3d, target_point, pose or points
    counts = node.counters()
    assert counts["depth.jumps"] == 1 and counts["depth.jump_frames"] == 1
    assert asked == []  # a seeded track with no target: nothing to ground
    # The hook: a jump of a target's track asks the pipeline for a grounding of that target.
    node._on_3d_jumps([depth3d.Jump(5, 2, T0, (0, 0, 1.95), (0, 0, 3.45), T0 - PERIOD, 45.0)])
    node._on_3d_jumps([depth3d.Jump(5, 2, T0 + PERIOD, (0, 0, 1.95), (0, 0, 3.45), T0 - PERIOD, 22.5, first=False)])
    assert asked == [(2, "3d_jump")]
