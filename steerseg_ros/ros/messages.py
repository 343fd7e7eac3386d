"""Core results to ROS messages: tracks, grounding results, RViz markers, and stamps.

Owns the mapping from the pipeline's `TrackView` and `GroundingResult` to the package's own
messages, and the choice of what the RViz markers show.

Markers. The node sees only a camera image, with no depth, so it cannot place an object in 3-D.
The markers lie on a virtual image plane in the image's own frame (the camera's optical frame:
x right, y down, z forward), `distance` metres in front of the camera: pixel (u, v) goes to
((u - W/2) * s, (v - H/2) * s, distance) with s = distance / focal_length_px. With the camera's
real focal length every marker lies on the true viewing ray of its pixel, so a Camera display in
RViz draws it over the image where the object is, and in the 3-D view the boxes show the bearing
of each target from the camera. Each live track gets its mask's bounding box (a line strip in the
track's colour), a sphere at the mask centroid and a text label "#id label score". The overlay
image carries the same ids, labels and masks for the Image displays.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from steerseg_ros.buffer import NS_PER_S
from steerseg_ros.grounding.base import GroundingResult
from steerseg_ros.msg import GroundingResult as GroundingResultMsg
from steerseg_ros.msg import PointPrompt as PointPromptMsg
from steerseg_ros.msg import Track, TrackArray
from steerseg_ros.pipeline import TrackState, TrackView
from steerseg_ros.render import colour_bgr
from steerseg_ros.ros.image_conversion import array_to_image

MARKER_NAMESPACE = "steerseg"


# ---- stamps ---------------------------------------------------------------------------------
def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def header_at(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


# ---- tracks ---------------------------------------------------------------------------------
def track_to_msg(view: TrackView, header: Header) -> Track:
    msg = Track()
    msg.header = header
    msg.id = int(view.id)
    msg.label_value = int(view.label_value)
    msg.command = view.command
    msg.label = view.label
    msg.score = float(view.score)
    msg.state = int(view.state)
    msg.replaced_by = int(view.replaced_by)
    if view.mask is not None:
        area, (x, y, w, h), (cx, cy) = view.geometry()
        if area:
            msg.bbox = RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h)
            msg.centroid = Point(x=float(cx), y=float(cy), z=0.0)
        msg.mask_area = area
    msg.last_grounding = ns_to_stamp(view.last_grounding_ns)
    msg.target_id = int(getattr(view, "target_id", 0))
    return msg


def tracks_to_msg(views: Iterable[TrackView], header: Header) -> TrackArray:
    return TrackArray(header=header, tracks=[track_to_msg(v, header) for v in views])


# ---- grounding ------------------------------------------------------------------------------
def grounding_to_msg(result: GroundingResult) -> GroundingResultMsg:
    """The grounding result; header.stamp is the newest keyframe's stamp (its frame_id too).
    The chosen candidate is the first of `result.chosen_points` (filled by target selection);
    `map` is the fused map on the chosen point's keyframe (the newest when none was chosen)."""
    msg = GroundingResultMsg()
    if result.keyframes:
        newest = result.keyframes[-1]
        msg.header = header_at(newest.stamp_ns, newest.frame_id)
    msg.command = result.command
    msg.backend = result.backend
    msg.keyframe_stamps = [ns_to_stamp(f.stamp_ns) for f in result.keyframes]
    msg.points = [PointPromptMsg(keyframe_index=int(p.keyframe_index), x=float(p.x), y=float(p.y),
                                 score=float(p.score), positive=bool(p.positive)) for p in result.points]
    msg.class_word = result.class_word
    msg.attributes = [str(a) for a in result.attributes]
    msg.generated_text = result.generated_text
    msg.candidate_scores = [float(s) for s in result.candidate_scores]
    map_index = len(result.keyframes) - 1
    msg.chosen_point = -1
    if result.chosen_points:
        best = int(result.chosen_points[0])
        msg.chosen_point = best
        if 0 <= best < len(result.points):
            map_index = int(result.points[best].keyframe_index)
            msg.chosen_keyframe_index = map_index
            if best < len(result.candidate_scores):
                msg.chosen_score = float(result.candidate_scores[best])
    if result.maps is not None and result.maps.ndim == 3 and 0 <= map_index < result.maps.shape[0]:
        msg.map = _float_image(result.maps[map_index], msg.header)
    msg.stage_names = [str(k) for k in result.timings]
    msg.stage_seconds = [float(v) for v in result.timings.values()]
    return msg


def grounding_to_ground_result(result: GroundingResult):
    """The Ground action's result (a grounder node's answer): the grounding message with every
    keyframe's maps, so that the tracker node can score candidates as if it had grounded
    itself."""
    from steerseg_ros.action import Ground

    answer = Ground.Result()
    answer.result = grounding_to_msg(result)
    header = answer.result.header
    for name in ("maps", "frame_maps", "video_maps"):
        values = getattr(result, name)
        if values is not None:
            setattr(answer, name, [_float_image(m, header) for m in values])
    return answer


def ground_result_to_grounding(answer, keyframes: list) -> GroundingResult:
    """A grounder node's answer as the core's GroundingResult on the tracker's own `keyframes`
    (the frames the request was made from, in the same order). Raises GroundingError when the
    answer does not fit them."""
    from steerseg_ros.grounding.base import GroundingError, PointPrompt

    msg = answer.result
    stamps = [stamp_to_ns(t) for t in msg.keyframe_stamps]
    if stamps != [f.stamp_ns for f in keyframes]:
        raise GroundingError("the grounder node answered for other keyframes than those sent")

    def stack(images) -> Optional[np.ndarray]:
        return np.stack([float_image_to_array(m) for m in images]) if images else None

    maps = stack(answer.maps)
    if maps is None:
        raise GroundingError("the grounder node's answer has no maps")
    result = GroundingResult(
        command=msg.command, backend=msg.backend, keyframes=list(keyframes), maps=maps,
        points=[PointPrompt(int(p.keyframe_index), float(p.x), float(p.y), float(p.score), bool(p.positive))
                for p in msg.points],
        frame_maps=stack(answer.frame_maps), video_maps=stack(answer.video_maps),
        class_word=msg.class_word, attributes=list(msg.attributes), generated_text=msg.generated_text,
        timings={str(k): float(v) for k, v in zip(msg.stage_names, msg.stage_seconds)})
    result.validate()
    return result


def float_image_to_array(msg: Image) -> np.ndarray:
    """A 32FC1 image message as an HxW float32 array (a copy)."""
    from steerseg_ros.ros.image_conversion import ImageConversionError

    if msg.encoding != "32FC1":
        raise ImageConversionError("encoding", f"expected a 32FC1 map, got {msg.encoding!r}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(msg.data, dtype=">f4" if msg.is_bigendian else "<f4", count=height * step // 4)
    return data.reshape(height, step // 4)[:, :width].astype(np.float32)


def _float_image(values: np.ndarray, header: Header) -> Image:
    """A 32FC1 image message (array_to_image covers the 8-bit encodings only)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    msg = Image(header=header, height=values.shape[0], width=values.shape[1], encoding="32FC1",
                is_bigendian=int(sys.byteorder == "big"), step=values.shape[1] * 4)
    msg.data = values.tobytes()
    return msg


# ---- markers --------------------------------------------------------------------------------
@dataclass
class MarkerConfig:
    """Where the RViz markers are drawn (each field's help text is in its metadata)."""

    distance: float = field(default=2.0, metadata={"help": (
        "Metres from the camera to the virtual image plane the markers lie on (there is no depth).")})
    focal_length_px: float = field(default=600.0, metadata={"help": (
        "The camera's focal length in pixels (CameraInfo K[0]); pixel offsets from the image centre "
        "are scaled by distance / focal_length_px, so each marker lies on its pixel's viewing ray.")})
    text_height: float = field(default=0.12, metadata={"help": "Height of the text labels in metres."})

    @property
    def metres_per_pixel(self) -> float:
        return self.distance / self.focal_length_px


def _colour(track_id: int, alpha: float = 1.0) -> ColorRGBA:
    b, g, r = colour_bgr(track_id)
    return ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=alpha)


def tracks_to_markers(views: Sequence[TrackView], header: Header, image_size: tuple[int, int],
                      config: Optional[MarkerConfig] = None) -> MarkerArray:
    """Markers for the live tracks on one frame, after a DELETEALL that clears the previous
    frame's (so ended tracks disappear). image_size: (width, height)."""
    config = config or MarkerConfig()
    width, height = image_size
    s = config.metres_per_pixel

    def to_point(u: float, v: float) -> Point:
        return Point(x=(u - width / 2.0) * s, y=(v - height / 2.0) * s, z=config.distance)

    markers = [Marker(header=header, ns=MARKER_NAMESPACE, action=Marker.DELETEALL)]
    for view in views:
        if view.state == TrackState.REPLACED or view.mask is None:
            continue
        area, (x, y, w, h), (cx, cy) = view.geometry()
        if not area:
            continue
        alpha = 0.4 if view.state == TrackState.LOST else 1.0
        colour = _colour(view.id, alpha)
        base = dict(header=header, ns=MARKER_NAMESPACE, action=Marker.ADD, lifetime=Duration())
        box = Marker(id=view.id * 3, type=Marker.LINE_STRIP, color=colour, **base)
        box.pose.orientation.w = 1.0
        box.scale.x = 2.0 * s  # a line two pixels wide
        box.points = [to_point(x, y), to_point(x + w, y), to_point(x + w, y + h), to_point(x, y + h), to_point(x, y)]
        centre = Marker(id=view.id * 3 + 1, type=Marker.SPHERE, color=colour, **base)
        centre.pose.position = to_point(cx, cy)
        centre.pose.orientation.w = 1.0
        centre.scale.x = centre.scale.y = centre.scale.z = max(8.0 * s, 0.01)
        text = Marker(id=view.id * 3 + 2, type=Marker.TEXT_VIEW_FACING, color=colour, **base)
        text.pose.position = to_point(x + w / 2.0, y)
        text.pose.position.y -= config.text_height  # above the box (y points down)
        text.pose.orientation.w = 1.0
        text.scale.z = config.text_height
        text.text = f"#{view.id} {view.label} {view.score:.2f}".replace("  ", " ")
        markers += [box, centre, text]
    return MarkerArray(markers=markers)


def label_image_msg(label: np.ndarray, header: Header) -> Image:
    """The mono8 label mask image message."""
    return array_to_image(label, "mono8", header)
