"""The tracker's outputs as the standard messages other ROS software reads.

Owns the conversions from one frame's Track messages (and their 3D estimates) to
`vision_msgs/Detection3DArray` (what Isaac ROS and most 3D perception publish),
`vision_msgs/Detection2DArray`, and a target's `geometry_msgs/PoseStamped` (what Nav2's following
server, opennav_following, follows). They are built from the very Track messages published on
`tracks`, so a follower reading any of them sees the same numbers in the same frame.

vision_msgs comes from a source build (scripts/setup_env.sh, vendor/ros2_msgs) where no ROS
installation provides it; `vision_msgs_available()` says whether the detections can go out.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
from std_msgs.msg import Header

from steerseg_msgs.msg import Track
from steerseg_ros.depth.transform import oriented_box, position_covariance

# The detections carry a position, not an orientation: its variance is "unknown" (huge), so a
# filter that fuses the pose's covariance does not take the identity rotation for a measurement.
ORIENTATION_VARIANCE_UNKNOWN = 1e6
# A confident mask on this frame: the tracks a detection, a target pose or target_point reports.
_LIVE = (Track.STATE_TRACKING, Track.STATE_REGROUNDING)


def vision_msgs_available() -> bool:
    try:
        import vision_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


def _class_word(track: Track) -> str:
    return track.label or track.command


def detections_2d(tracks: Iterable[Track], header: Header):
    """A Detection2DArray of the live tracks with a mask: id = the track id, class_id = the class
    word (the command when grounding gave none), score = the mask's confidence, bbox = the mask's
    box in image pixels (centre and size)."""
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    out = Detection2DArray(header=header)
    for t in tracks:
        if t.state not in _LIVE or t.mask_area == 0:
            continue
        det = Detection2D(header=header, id=str(t.id))
        det.bbox.center.position.x = t.bbox.x_offset + t.bbox.width / 2.0
        det.bbox.center.position.y = t.bbox.y_offset + t.bbox.height / 2.0
        det.bbox.size_x, det.bbox.size_y = float(t.bbox.width), float(t.bbox.height)
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = _class_word(t), float(t.score)
        det.results.append(hyp)
        out.detections.append(det)
    return out


def detections_3d(tracks: Iterable[Track], objects: Mapping[int, Any], header: Header):
    """A Detection3DArray of the live tracks with a valid 3D estimate, in header.frame_id (the
    frame the estimates are in): id, class_id and score as in detections_2d; the result's pose
    is the track's position with the covariance of the position spread (per-axis spread squared,
    rotated with the frame; orientation unknown); bbox is the estimate's box, exactly: the
    camera-aligned box turned into this frame (its orientation says how)."""
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    out = Detection3DArray(header=header)
    for t in tracks:
        obj = objects.get(t.id)
        if t.state not in _LIVE or not t.has_position or obj is None or not obj.valid:
            continue
        det = Detection3D(header=header, id=str(t.id))
        centre, rotation, size = oriented_box(obj)
        det.bbox.center = Pose(position=Point(x=float(centre[0]), y=float(centre[1]), z=float(centre[2])),
                               orientation=Quaternion(x=rotation[0], y=rotation[1], z=rotation[2], w=rotation[3]))
        det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = (float(v) for v in size)
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = _class_word(t), float(t.score)
        hyp.pose.pose.position = Point(x=t.position.x, y=t.position.y, z=t.position.z)
        hyp.pose.pose.orientation.w = 1.0
        cov = np.zeros((6, 6))
        cov[:3, :3] = position_covariance(obj)
        cov[3:, 3:] = np.eye(3) * ORIENTATION_VARIANCE_UNKNOWN
        hyp.pose.covariance = [float(v) for v in cov.ravel()]
        det.results.append(hyp)
        out.detections.append(det)
    return out


def target_pose(tracks: Iterable[Track]) -> Optional[PoseStamped]:
    """One target's pose from its tracks on a frame: the position of its oldest live track with
    a position (the rule target_point follows: no jumping between objects when scores cross),
    identity orientation, stamped with the image's stamp in the position's frame; None when no
    track of it has a position on this frame."""
    live = [t for t in tracks if t.state in _LIVE and t.has_position]
    if not live:
        return None
    t = min(live, key=lambda track: track.id)
    pose = PoseStamped(header=Header(stamp=t.header.stamp, frame_id=t.position_frame_id))
    pose.pose.position = Point(x=t.position.x, y=t.position.y, z=t.position.z)
    pose.pose.orientation.w = 1.0
    return pose


def target_poses(tracks: Iterable[Track]) -> dict[int, PoseStamped]:
    """target_pose of every target (by target id, 0 left out) that has one on this frame."""
    by_target: dict[int, list[Track]] = {}
    for t in tracks:
        if t.target_id:
            by_target.setdefault(t.target_id, []).append(t)
    poses = {i: target_pose(ts) for i, ts in by_target.items()}
    return {i: p for i, p in poses.items() if p is not None}
