"""The tracker node's tf2 step (steerseg_ros.ros.target_frame) in-process, its buffer filled by
hand: a transform known at the image's stamp moves the 3D into target_frame; one that is stale
(known only seconds before the stamp), or a frame tf has never heard of, rejects that frame's
3D with its reason (tf.stale, tf.missing) instead of passing camera-frame numbers on; no
target_frame, or the camera's own, leaves the 3D as it is. The DDS test of the whole chain is
test_target_frame_dds.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytest.importorskip("tf2_ros", reason="needs tf2_ros (scripts/setup_env.sh builds it from ../shared/vendor/ros2_msgs)")

import rclpy  # noqa: E402
import ros_processes as rp  # noqa: E402
from geometry_msgs.msg import TransformStamped  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402

from steerseg_ros.depth.estimate import Object3D  # noqa: E402
from steerseg_ros.frame import NS_PER_S  # noqa: E402
from steerseg_ros.ros.depth_input import Frame3D  # noqa: E402
from steerseg_ros.ros.messages import ns_to_stamp  # noqa: E402
from steerseg_ros.ros.target_frame import TargetFrame  # noqa: E402

pytestmark = pytest.mark.ros

CAMERA = "camera_color_optical_frame"
STAMP = 1_000 * NS_PER_S


@pytest.fixture
def target_frame():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=rp.random_domain_id(), signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("target_frame_test", context=ctx)
    rejected: list[tuple[str, str]] = []
    tf = TargetFrame(node, lambda reason, text: rejected.append((reason, text)))
    tf.rejected = rejected
    yield tf
    tf.stop()
    node.destroy_node()
    ctx.try_shutdown()


def _mount(stamp_ns: int) -> TransformStamped:
    """base_link -> camera: optical axes to body axes, the camera 0.5 m up and 0.1 m ahead."""
    msg = TransformStamped(child_frame_id=CAMERA)
    msg.header.frame_id, msg.header.stamp = "base_link", ns_to_stamp(stamp_ns)
    msg.transform.translation.x, msg.transform.translation.z = 0.1, 0.5
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = -0.5, 0.5, -0.5, 0.5
    return msg


def _frame() -> Frame3D:
    obj = Object3D(valid=True, position=(0.3, 0.2, 2.0), extent_min=(0.2, 0.1, 1.9), extent_max=(0.4, 0.3, 2.1),
                   size=(0.2, 0.2, 0.2), n_valid=100, std=(0.01, 0.02, 0.05), stderr=0.001)
    return Frame3D(CAMERA, {7: obj, 8: Object3D(valid=False, reason="too few depth pixels")})


def test_known_transform_moves_the_3d(target_frame):
    target_frame.start("base_link", 0.0, broadcast=False)
    target_frame._buffer.set_transform(_mount(STAMP - NS_PER_S // 10), "test")
    target_frame._buffer.set_transform(_mount(STAMP + NS_PER_S // 10), "test")
    placed = target_frame.place(_frame(), STAMP)
    assert placed is not None and placed.frame_id == "base_link"
    # 2 m ahead of the camera, 0.3 m right, 0.2 m down: 2.1 m ahead of base_link, 0.3 m right, 0.3 m up
    assert np.allclose(placed.objects[7].position, [2.1, -0.3, 0.3])
    assert np.allclose(placed.objects[7].std, [0.05, 0.01, 0.02])
    assert not placed.objects[8].valid
    assert target_frame.rejected == []


def test_stale_or_unknown_transform_rejects_the_frames_3d(target_frame):
    target_frame.start("base_link", 0.0, broadcast=False)
    target_frame._buffer.set_transform(_mount(STAMP - 5 * NS_PER_S), "test")  # only an old one
    assert target_frame.place(_frame(), STAMP) is None
    assert [r for r, _ in target_frame.rejected] == ["tf.stale"]
    assert "base_link" in target_frame.rejected[0][1] and CAMERA in target_frame.rejected[0][1]
    other = Frame3D("another_camera", _frame().objects)  # a frame tf has never heard of
    assert target_frame.place(other, STAMP) is None
    assert [r for r, _ in target_frame.rejected] == ["tf.stale", "tf.missing"]


def test_no_target_frame_or_the_cameras_own_leaves_the_3d_alone(target_frame):
    frame = _frame()
    target_frame.start("", 0.0, broadcast=False)
    assert target_frame.place(frame, STAMP) is frame
    target_frame.stop()
    target_frame.start(CAMERA, 0.0, broadcast=False)
    assert target_frame.place(frame, STAMP) is frame
    assert target_frame.rejected == []
