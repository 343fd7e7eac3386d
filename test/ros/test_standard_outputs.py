"""The vision_msgs detections and the target poses built from a frame's Track messages
(steerseg_ros.ros.standard_outputs), without DDS: what a consumer of each message reads.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytest.importorskip("vision_msgs", reason="needs vision_msgs (scripts/setup_env.sh builds it from "
                    "../shared/vendor/ros2_msgs)")

from geometry_msgs.msg import Point  # noqa: E402
from sensor_msgs.msg import RegionOfInterest  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from steerseg_msgs.msg import Track  # noqa: E402
from steerseg_ros.depth.estimate import Object3D  # noqa: E402
from steerseg_ros.ros.messages import ns_to_stamp  # noqa: E402
from steerseg_ros.ros.standard_outputs import (ORIENTATION_VARIANCE_UNKNOWN, detections_2d, detections_3d,  # noqa: E402
                                               target_pose, target_poses)

pytestmark = pytest.mark.ros

HEADER = Header(stamp=ns_to_stamp(5_000_000_123), frame_id="camera_color_frame")


def _track(track_id: int, target_id: int = 1, state: int = Track.STATE_TRACKING, position=None, label="cup") -> Track:
    t = Track(header=HEADER, id=track_id, target_id=target_id, state=state, label=label, command="the red cup",
              score=0.8, mask_area=120, bbox=RegionOfInterest(x_offset=10, y_offset=20, width=30, height=41))
    if position is not None:
        t.has_position, t.position_frame_id = True, "base_link"
        t.position = Point(x=position[0], y=position[1], z=position[2])
    return t


def test_detections_2d_are_the_live_masks_boxes():
    tracks = [_track(3), _track(4, state=Track.STATE_LOST), _track(5, label="")]
    out = detections_2d(tracks, HEADER)
    assert out.header == HEADER and [d.id for d in out.detections] == ["3", "5"]  # the LOST track is left out
    d = out.detections[0]
    assert (d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x, d.bbox.size_y) == (25.0, 40.5, 30, 41)
    assert d.results[0].hypothesis.class_id == "cup" and d.results[0].hypothesis.score == pytest.approx(0.8)
    # no class word from grounding: the command names it
    assert out.detections[1].results[0].hypothesis.class_id == "the red cup"


def test_detections_3d_box_and_covariance_in_the_camera_frame():
    obj = Object3D(valid=True, position=(0.3, 0.2, 2.0), extent_min=(0.2, 0.1, 1.9), extent_max=(0.4, 0.4, 2.1),
                   size=(0.2, 0.3, 0.2), n_valid=100, std=(0.01, 0.02, 0.05), stderr=0.001)
    tracks = [_track(3, position=(0.3, 0.2, 2.0)), _track(4)]  # track 4 has no 3D on this frame
    out = detections_3d(tracks, {3: obj}, HEADER)
    assert [d.id for d in out.detections] == ["3"]
    d = out.detections[0]
    c, s = d.bbox.center, d.bbox.size
    assert np.allclose([c.position.x, c.position.y, c.position.z], [0.3, 0.25, 2.0])
    assert (c.orientation.x, c.orientation.y, c.orientation.z, c.orientation.w) == (0.0, 0.0, 0.0, 1.0)
    assert np.allclose([s.x, s.y, s.z], [0.2, 0.3, 0.2])
    cov = np.array(d.results[0].pose.covariance).reshape(6, 6)
    assert np.allclose(cov[:3, :3], np.diag([0.01 ** 2, 0.02 ** 2, 0.05 ** 2]))
    assert np.allclose(cov[3:, 3:], np.eye(3) * ORIENTATION_VARIANCE_UNKNOWN) and not cov[:3, 3:].any()


def test_target_pose_is_the_oldest_live_track_with_a_position():
    tracks = [_track(9, position=(1.0, 0.0, 0.0)), _track(7, position=(2.0, 0.0, 0.0)),
              _track(5, state=Track.STATE_LOST, position=(3.0, 0.0, 0.0)), _track(4),
              _track(12, target_id=2, position=(4.0, 0.5, 0.0)), _track(13, target_id=0, position=(5.0, 0.0, 0.0))]
    pose = target_pose([t for t in tracks if t.target_id == 1])
    assert pose.header.frame_id == "base_link" and pose.header.stamp == HEADER.stamp
    assert (pose.pose.position.x, pose.pose.orientation.w) == (2.0, 1.0)  # track 7: 5 is LOST, 4 has no 3D
    poses = target_poses(tracks)
    assert sorted(poses) == [1, 2] and poses[2].pose.position.y == 0.5  # target 0 (no target) left out
    assert target_pose([_track(4)]) is None
