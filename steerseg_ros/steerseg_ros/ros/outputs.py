"""What the tracker node publishes for each processed frame.

Owns `output_messages` (one frame's (topic, message) pairs: label mask, tracks, overlay,
markers, groundings, the 3D outputs, and the vision_msgs detections built by standard_outputs)
and `TrackerOutputs`, the node's publishers and their QoS, which draws the overlay and markers
(and gathers the object points) only for topics that something subscribes to. The detections
go out only where vision_msgs is installed (scripts/setup_env.sh builds it): without it the
node says so once at activate and publishes the rest.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from geometry_msgs.msg import PointStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from steerseg_msgs.msg import GroundingResult as GroundingResultMsg
from steerseg_msgs.msg import TrackArray
from steerseg_ros import render
from steerseg_ros.streaming.pipeline import PipelineOutput
from steerseg_ros.ros.depth_input import Frame3D
from steerseg_ros.ros.standard_outputs import detections_2d, detections_3d, vision_msgs_available
from steerseg_ros.ros.image_conversion import ImageBuffer, array_to_image
from steerseg_ros.ros.messages import (MarkerConfig, active_target, drawn_tracks, grounding_to_msg, header_at,
                                       markers_from_tracks, points_to_cloud, stamp_to_ns, target_point_msg,
                                       tracks_to_msg)


def output_messages(output: PipelineOutput, header: Header, rgb: np.ndarray, overlay_alpha: float = 0.5,
                    marker_config: Optional[MarkerConfig] = None, overlay: bool = True,
                    markers: bool = True, frame3d: Optional[Frame3D] = None,
                    object_points: bool = False, overlay_buffer: Optional[ImageBuffer] = None,
                    mask_buffer: Optional[ImageBuffer] = None, detections: bool = False) -> list[tuple[str, Any]]:
    """The (topic, message) pairs the node publishes for one processed frame, all stamped with
    the frame's header: the label mask, the tracks, optionally the overlay and the markers, and
    the groundings that finished since the previous frame. With `frame3d` (the frame's 3D step)
    the tracks carry their 3D, the markers are drawn in 3D, and the active target goes out on
    target_point (and the tracks' points on object_points when `object_points`). With
    `overlay_buffer` the overlay is drawn straight into that reused message memory, and with
    `mask_buffer` the label mask (publish the messages before the next call). With `detections`
    the live tracks go out as vision_msgs detections too (2D always, 3D with `frame3d`)."""
    visible = output.visible_tracks()
    objects = frame3d.objects if frame3d is not None else {}
    camera_header = header_at(stamp_to_ns(header.stamp), frame3d.frame_id) if frame3d is not None else None
    if mask_buffer is not None:
        label = output.label_image(mask_buffer.view((output.frame.height, output.frame.width)))
        mask = mask_buffer.message("mono8", header)
    else:
        label = output.label_image()
        mask = array_to_image(label, "mono8", header)
    tracks = tracks_to_msg(output.tracks, header, objects, frame3d.frame_id if frame3d else "")
    out: list[tuple[str, Any]] = [("mask", mask), ("tracks", tracks)]
    # Drawn from the published label mask and tracks, as the drawing node draws them.
    drawn = drawn_tracks(tracks.tracks) if overlay or markers else []
    if overlay and overlay_buffer is not None:
        render.overlay_labels(rgb, label, drawn, overlay_alpha, out=overlay_buffer.view(rgb.shape))
        out.append(("overlay", overlay_buffer.message("bgr8", header)))
    elif overlay:
        out.append(("overlay", array_to_image(render.overlay_labels(rgb, label, drawn, overlay_alpha), "bgr8", header)))
    if markers:
        out.append(("markers", markers_from_tracks(drawn, header, (rgb.shape[1], rgb.shape[0]), marker_config)))
    out += _messages_3d(visible, frame3d, camera_header, object_points)
    if detections:
        out.append(("detections_2d", detections_2d(tracks.tracks, header)))
        if frame3d is not None and camera_header is not None:
            out.append(("detections_3d", detections_3d(tracks.tracks, frame3d.objects, camera_header)))
    out += [("grounding", grounding_to_msg(result)) for result in output.groundings]
    return out


def _messages_3d(visible: list, frame3d: Optional[Frame3D], camera_header: Optional[Header],
                 object_points: bool) -> list[tuple[str, Any]]:
    """target_point (the active target, when one has a valid 3D estimate) and object_points."""
    if frame3d is None or camera_header is None:
        return []
    out: list[tuple[str, Any]] = []
    target = active_target(visible, frame3d.objects)
    if target is not None:
        out.append(("target_point", target_point_msg(frame3d.objects[target.id], camera_header)))
    if object_points:
        live = {v.id for v in visible}
        points = {i: p for i, p in frame3d.object_points().items() if i in live}
        out.append(("object_points", points_to_cloud(points, camera_header)))
    return out


class TrackerOutputs:
    """The tracker node's publishers, created at activate and destroyed at deactivate, and the
    reused message memory of its overlay and mask (touched by the processing thread only)."""

    def __init__(self, node):
        self._node = node
        self._pubs: dict[str, Any] = {}
        self._overlay_buffer = ImageBuffer()
        self._mask_buffer = ImageBuffer()

    def create(self, draw: bool) -> None:
        """The publishers; `draw`: the overlay and the markers too."""
        node = self._node
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        images_out = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._pubs = {
            "mask": node.create_publisher(Image, "mask", images_out),
            "tracks": node.create_publisher(TrackArray, "tracks", reliable),
            "grounding": node.create_publisher(GroundingResultMsg, "grounding", latched),
        }
        if draw:
            self._pubs["overlay"] = node.create_publisher(Image, "overlay", images_out)
            self._pubs["markers"] = node.create_publisher(MarkerArray, "markers", reliable)
        self._pubs["target_point"] = node.create_publisher(PointStamped, "target_point", reliable)
        self._pubs["object_points"] = node.create_publisher(
            PointCloud2, "object_points", QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE))
        if vision_msgs_available():
            from vision_msgs.msg import Detection2DArray, Detection3DArray

            self._pubs["detections_2d"] = node.create_publisher(Detection2DArray, "detections_2d", reliable)
            self._pubs["detections_3d"] = node.create_publisher(Detection3DArray, "detections_3d", reliable)
        else:
            node.get_logger().warning("vision_msgs is not installed: detections_2d and detections_3d are not "
                                      "published (scripts/setup_env.sh builds it from the shared vendor folder)")

    def destroy(self) -> None:
        for pub in self._pubs.values():
            self._node.destroy_publisher(pub)
        self._pubs = {}

    def subscribed(self, topic: str) -> bool:
        """Whether the node publishes `topic` and something subscribes to it."""
        pub = self._pubs.get(topic)
        return pub is not None and pub.get_subscription_count() > 0

    def publish(self, output: PipelineOutput, header: Header, rgb: np.ndarray, frame3d: Optional[Frame3D],
                overlay_alpha: float, marker_config: MarkerConfig,
                draw_unsubscribed: bool) -> Optional[TrackArray]:
        """Publish everything one processed frame produced, stamped with its image's header; the
        published tracks (None while there are no publishers). The overlay and markers are drawn
        (and the object points gathered) only when something subscribes to them, or always
        with `draw_unsubscribed`."""
        pubs = self._pubs
        if not pubs:
            return None

        def wanted(topic: str) -> bool:
            return topic in pubs and (draw_unsubscribed or pubs[topic].get_subscription_count() > 0)

        messages = output_messages(
            output, header, rgb, overlay_alpha, marker_config,
            overlay=wanted("overlay"), markers=wanted("markers"), frame3d=frame3d,
            object_points=self.subscribed("object_points"),
            overlay_buffer=self._overlay_buffer, mask_buffer=self._mask_buffer,
            detections="detections_2d" in pubs)
        for topic, msg in messages:
            pubs[topic].publish(msg)
        return dict(messages)["tracks"]
