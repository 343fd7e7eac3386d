"""Core results to ROS messages: tracks, grounding results, RViz markers, and stamps.

Owns the mapping from the pipeline's `TrackView` and `GroundingResult` to the package's own
messages, and the choice of what the RViz markers show.

Markers. Without depth the node cannot place an object in 3-D: the markers lie on a virtual
image plane in the image's own frame (the camera's optical frame:
x right, y down, z forward), `distance` metres in front of the camera: pixel (u, v) goes to
((u - W/2) * s, (v - H/2) * s, distance) with s = distance / focal_length_px. With the camera's
real focal length every marker lies on the true viewing ray of its pixel, so a Camera display in
RViz draws it over the image where the object is, and in the 3-D view the boxes show the bearing
of each target from the camera. Each live track gets its mask's bounding box (a line strip in the
track's colour), a sphere at the mask centroid and a text label "#id label score". The overlay
image carries the same ids, labels and masks for the Image displays.

With depth, a track whose 3D estimate is valid on the frame gets 3D markers instead, in the
colour camera's optical frame (camera_info's frame_id): a translucent box (CUBE) over its 3D
extent, a sphere at its position and the text label above the box (`object_markers_3d`). The
markers are made from the Track messages (`markers_from_tracks`), so that the tracker node and
the drawing node, which has only what the tracker published, draw the same. The 3D fields of
`Track`, the `target_point` message and the `object_points` cloud are built here as well.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, PointStamped, Vector3
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from steerseg_ros.frame import NS_PER_S
from steerseg_ros.grounding.base import GroundingError, GroundingResult
from steerseg_msgs.msg import GroundingResult as GroundingResultMsg
from steerseg_msgs.msg import PointPrompt as PointPromptMsg
from steerseg_msgs.msg import Track, TrackArray
from steerseg_ros.streaming.pipeline import CONFIDENT_STATES, TrackView
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
def track_to_msg(view: TrackView, header: Header, obj: Any = None, position_frame_id: str = "") -> Track:
    """The track on one frame; `obj` (a steerseg_ros.depth.Object3D, or None) fills the 3D
    fields when valid, in `position_frame_id` (camera_info's frame_id)."""
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
    if obj is not None:
        fill_position(msg, obj, position_frame_id)
    return msg


def _xyz(values: Any) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in np.broadcast_to(np.asarray(values, dtype=np.float64), (3,)))
    return x, y, z


def fill_position(msg: Track, obj: Any, frame_id: str) -> None:
    """The 3D fields of a Track from an Object3D (has_position false when it is not valid)."""
    msg.position_frame_id = frame_id
    msg.depth_points = int(getattr(obj, "n_valid", 0) or 0)
    if not obj.valid:
        return
    msg.has_position = True
    msg.position = Point(**dict(zip("xyz", _xyz(obj.position))))
    msg.extent_min = Point(**dict(zip("xyz", _xyz(obj.extent_min))))
    msg.extent_max = Point(**dict(zip("xyz", _xyz(obj.extent_max))))
    msg.position_std = Vector3(**dict(zip("xyz", _xyz(obj.std))))
    stderr = np.asarray(obj.stderr, dtype=np.float64)
    msg.position_stderr = float(np.linalg.norm(stderr) if stderr.ndim else stderr)


def tracks_to_msg(views: Iterable[TrackView], header: Header, objects: Optional[Mapping[int, Any]] = None,
                  position_frame_id: str = "") -> TrackArray:
    """All tracks on one frame; `objects` maps track id -> Object3D for the tracks with a 3D
    estimate on this frame."""
    objects = objects or {}
    return TrackArray(header=header, tracks=[track_to_msg(v, header, objects.get(v.id), position_frame_id)
                                             for v in views])


# ---- 3D target ------------------------------------------------------------------------------
def active_target(views: Sequence[TrackView], objects: Mapping[int, Any]) -> Optional[TrackView]:
    """The track `target_point` follows: among the tracks with a confident mask on this frame
    (TRACKING or REGROUNDING) and a valid 3D estimate, the oldest (lowest id). The oldest rather
    than the best-scoring one, so that a follower does not jump between objects when scores
    cross; a track that ends (REPLACED, LOST) hands over to the next oldest."""
    live = [v for v in views if v.state in CONFIDENT_STATES
            and v.id in objects and objects[v.id].valid]
    return min(live, key=lambda v: v.id) if live else None


def target_point_msg(obj: Any, header: Header) -> PointStamped:
    """The active target's position; header: the colour frame's stamp, camera_info's frame_id."""
    x, y, z = _xyz(obj.position)
    return PointStamped(header=header, point=Point(x=x, y=y, z=z))


_CLOUD_FIELDS = [PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
                 PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
                 PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
                 PointField(name="id", offset=12, datatype=PointField.UINT32, count=1)]
_CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("id", "<u4")])


def points_to_cloud(points_by_id: Mapping[int, np.ndarray], header: Header) -> PointCloud2:
    """An unorganised PointCloud2 (x, y, z float32 and the track id as uint32 `id`) of each
    track's (N, 3) object points, in the header's frame."""
    total = sum(len(p) for p in points_by_id.values())
    cloud = np.empty(total, dtype=_CLOUD_DTYPE)
    start = 0
    for track_id, points in points_by_id.items():
        points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        end = start + len(points)
        cloud["x"][start:end], cloud["y"][start:end], cloud["z"][start:end] = points.T
        cloud["id"][start:end] = track_id
        start = end
    msg = PointCloud2(header=header, height=1, width=total, fields=_CLOUD_FIELDS, is_bigendian=False,
                      point_step=_CLOUD_DTYPE.itemsize, row_step=_CLOUD_DTYPE.itemsize * total, is_dense=True)
    msg.data = cloud.tobytes()
    return msg


# ---- diagnostics ----------------------------------------------------------------------------
def publish_status(node, publisher, what: str, level: int, message: str, values: dict) -> None:
    """One DiagnosticStatus ("<node name>: <what>", the node's full name as hardware_id) with
    `values` as strings, stamped now, on `publisher`; quietly nothing while the node shuts down."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    status = DiagnosticStatus(name=f"{node.get_name()}: {what}", hardware_id=node.get_fully_qualified_name(),
                              level=level, message=message,
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = node.get_clock().now().to_msg()
    try:
        publisher.publish(array)
    except Exception:  # the context is going down
        pass


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
    msg.in_view = {None: msg.IN_VIEW_UNKNOWN, False: msg.NOT_IN_VIEW, True: msg.IN_VIEW}[result.in_view]
    msg.in_view_score = float(result.in_view_score)
    msg.stage_names = [str(k) for k in result.timings]
    msg.stage_seconds = [float(v) for v in result.timings.values()]
    return msg


def grounding_to_ground_result(result: GroundingResult):
    """The Ground action's result (a grounder node's answer): the grounding message with every
    keyframe's maps, so that the tracker node can score candidates as if it had grounded
    itself."""
    from steerseg_msgs.action import Ground

    answer = Ground.Result()
    answer.result = grounding_to_msg(result)
    header = answer.result.header
    for name in ("maps", "frame_maps", "video_maps"):
        values = getattr(result, name)
        if values is not None:
            setattr(answer, name, [_float_image(m, header) for m in values])
    if any(p.mask is not None for p in result.points):
        answer.point_masks = [_mask_png(p.mask, header) for p in result.points]
    return answer


def _mask_png(mask: Optional[np.ndarray], header: Header) -> CompressedImage:
    """A point's mask as a PNG (mono8, 255 on the object); no data for a point without one.
    PNG because a mask compresses some hundredfold: a grounding with 8 instances on each of
    8 keyframes is tens of MB raw."""
    msg = CompressedImage(header=header, format="png")
    if mask is not None:
        ok, data = cv2.imencode(".png", np.asarray(mask, bool).astype(np.uint8) * 255)
        msg.data = data.tobytes()
    return msg


def _png_mask(msg: CompressedImage, size: tuple[int, int]) -> Optional[np.ndarray]:
    """A point mask sent by `_mask_png`, checked against its keyframe's size (None: no mask)."""
    if not len(msg.data):
        return None
    mask = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None or mask.shape != tuple(size):
        raise GroundingError(f"the grounder node sent a point mask that is not a {size[1]}x{size[0]} PNG")
    return mask > 0


def ground_result_to_grounding(answer, keyframes: list) -> GroundingResult:
    """A grounder node's answer as the core's GroundingResult on the tracker's own `keyframes`
    (the frames the request was made from, in the same order). Raises GroundingError when the
    answer does not fit them."""
    from steerseg_ros.grounding.base import PointPrompt

    msg = answer.result
    stamps = [stamp_to_ns(t) for t in msg.keyframe_stamps]
    if stamps != [f.stamp_ns for f in keyframes]:
        raise GroundingError("the grounder node answered for other keyframes than those sent")

    def stack(images) -> Optional[np.ndarray]:
        return np.stack([float_image_to_array(m) for m in images]) if images else None

    maps = stack(answer.maps)
    if maps is None:
        raise GroundingError("the grounder node's answer has no maps")
    points = [PointPrompt(int(p.keyframe_index), float(p.x), float(p.y), float(p.score), bool(p.positive))
              for p in msg.points]
    if answer.point_masks:
        if len(answer.point_masks) != len(points):
            raise GroundingError(f"the grounder node sent {len(answer.point_masks)} point masks for "
                                 f"{len(points)} points")
        for p, m in zip(points, answer.point_masks):
            if not 0 <= p.keyframe_index < len(keyframes):
                raise GroundingError(f"point on keyframe {p.keyframe_index} of {len(keyframes)}")
            p.mask = _png_mask(m, keyframes[p.keyframe_index].image.shape[:2])
    in_view = {msg.NOT_IN_VIEW: False, msg.IN_VIEW: True}.get(msg.in_view)
    result = GroundingResult(
        command=msg.command, backend=msg.backend, keyframes=list(keyframes), maps=maps, points=points,
        frame_maps=stack(answer.frame_maps), video_maps=stack(answer.video_maps),
        class_word=msg.class_word, attributes=list(msg.attributes), generated_text=msg.generated_text,
        timings={str(k): float(v) for k, v in zip(msg.stage_names, msg.stage_seconds)},
        in_view=in_view, in_view_score=float(msg.in_view_score))
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
        "Metres from the camera to the virtual image plane the markers lie on (for tracks without "
        "a 3D position: no depth).")})
    focal_length_px: float = field(default=600.0, metadata={"help": (
        "The camera's focal length in pixels (CameraInfo K[0]); pixel offsets from the image centre "
        "are scaled by distance / focal_length_px, so each marker lies on its pixel's viewing ray.")})
    text_height: float = field(default=0.12, metadata={"help": "Height of the text labels in metres."})

    @property
    def metres_per_pixel(self) -> float:
        return self.distance / self.focal_length_px

    def validate(self) -> None:
        from steerseg_ros.config_checks import check_finite

        check_finite(self, "markers.")
        if self.distance <= 0 or self.focal_length_px <= 0 or self.text_height <= 0:
            raise ValueError("markers.distance, markers.focal_length_px and markers.text_height must be > 0")


def _colour(track_id: int, alpha: float = 1.0) -> ColorRGBA:
    b, g, r = colour_bgr(track_id)
    return ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=alpha)


def _label_text(track: Any) -> str:
    """'#id label score', as the overlay writes it (a Track message or a TrackView)."""
    return f"#{track.id} {track.label} {track.score:.2f}".replace("  ", " ")


def object_markers_3d(track_id: int, text: str, obj: Any, header: Header, alpha: float = 1.0,
                      text_height: float = 0.12) -> list[Marker]:
    """One object's 3D markers in `header`'s frame (camera_info's): a translucent CUBE over its
    extent, a SPHERE at its position and a TEXT label above the box (y points down in the
    optical frame). Ids track_id * 3 + 0, 1, 2, as the image-plane markers."""
    colour = _colour(track_id, alpha)
    base = dict(header=header, ns=MARKER_NAMESPACE, action=Marker.ADD, lifetime=Duration())
    low, high = np.array(_xyz(obj.extent_min)), np.array(_xyz(obj.extent_max))
    size = np.maximum(high - low, 0.01)  # a flat or one-point extent still shows
    centre = (low + high) / 2.0
    box = Marker(id=track_id * 3, type=Marker.CUBE, color=_colour(track_id, 0.3 * alpha), **base)
    box.pose.position = Point(x=float(centre[0]), y=float(centre[1]), z=float(centre[2]))
    box.pose.orientation.w = 1.0
    box.scale.x, box.scale.y, box.scale.z = (float(v) for v in size)
    x, y, z = _xyz(obj.position)
    sphere = Marker(id=track_id * 3 + 1, type=Marker.SPHERE, color=colour, **base)
    sphere.pose.position = Point(x=x, y=y, z=z)
    sphere.pose.orientation.w = 1.0
    sphere.scale.x = sphere.scale.y = sphere.scale.z = float(np.clip(0.2 * size.min(), 0.02, 0.1))
    label = Marker(id=track_id * 3 + 2, type=Marker.TEXT_VIEW_FACING, color=colour, **base)
    label.pose.position = Point(x=float(centre[0]), y=float(low[1] - text_height), z=float(centre[2]))
    label.pose.orientation.w = 1.0
    label.scale.z = text_height
    label.text = text
    return [box, sphere, label]


def tracks_to_markers(views: Sequence[TrackView], header: Header, image_size: tuple[int, int],
                      config: Optional[MarkerConfig] = None, objects: Optional[Mapping[int, Any]] = None,
                      camera_header: Optional[Header] = None) -> MarkerArray:
    """Markers for the given tracks on one frame (see markers_from_tracks); `objects` maps track
    id -> Object3D in `camera_header`'s frame."""
    frame_id = camera_header.frame_id if camera_header is not None else ""
    msg = tracks_to_msg(views, header, objects if camera_header is not None else None, frame_id)
    return markers_from_tracks(msg.tracks, header, image_size, config)


def drawn_tracks(tracks: Iterable[Track]) -> list[Track]:
    """The tracks the overlay and markers show: those with a confident mask on the frame
    (TRACKING or REGROUNDING), the ones the label mask holds."""
    return [t for t in tracks if t.state in (Track.STATE_TRACKING, Track.STATE_REGROUNDING)]


@dataclass
class _Box3D:
    position: tuple
    extent_min: tuple
    extent_max: tuple


def _point(p: Point) -> tuple[float, float, float]:
    return float(p.x), float(p.y), float(p.z)


def markers_from_tracks(tracks: Sequence[Track], header: Header, image_size: tuple[int, int],
                        config: Optional[MarkerConfig] = None) -> MarkerArray:
    """Markers for `tracks` (Track messages: what the tracker node publishes, so the tracker node
    and the drawing node draw the same) on one frame, after a DELETEALL that clears the previous
    frame's (so ended tracks disappear). image_size: (width, height). A track with a 3D position
    gets 3D markers in its position_frame_id; the others get the image-plane markers in
    `header`'s frame."""
    config = config or MarkerConfig()
    width, height = image_size
    s = config.metres_per_pixel

    def to_point(u: float, v: float) -> Point:
        return Point(x=(u - width / 2.0) * s, y=(v - height / 2.0) * s, z=config.distance)

    markers = [Marker(header=header, ns=MARKER_NAMESPACE, action=Marker.DELETEALL)]
    for t in tracks:
        if t.state == Track.STATE_REPLACED or not t.mask_area:
            continue
        alpha = 0.4 if t.state in (Track.STATE_LOST, Track.STATE_UNSEEN) else 1.0  # no confident mask: faded
        text = _label_text(t)
        if t.has_position:
            box3d = _Box3D(_point(t.position), _point(t.extent_min), _point(t.extent_max))
            markers += object_markers_3d(t.id, text, box3d, Header(stamp=header.stamp, frame_id=t.position_frame_id),
                                         alpha, config.text_height)
            continue
        x, y, w, h = t.bbox.x_offset, t.bbox.y_offset, t.bbox.width, t.bbox.height
        colour = _colour(t.id, alpha)
        base = dict(header=header, ns=MARKER_NAMESPACE, action=Marker.ADD, lifetime=Duration())
        box = Marker(id=t.id * 3, type=Marker.LINE_STRIP, color=colour, **base)
        box.pose.orientation.w = 1.0
        box.scale.x = 2.0 * s  # a line two pixels wide
        box.points = [to_point(x, y), to_point(x + w, y), to_point(x + w, y + h), to_point(x, y + h), to_point(x, y)]
        centre = Marker(id=t.id * 3 + 1, type=Marker.SPHERE, color=colour, **base)
        centre.pose.position = to_point(t.centroid.x, t.centroid.y)
        centre.pose.orientation.w = 1.0
        centre.scale.x = centre.scale.y = centre.scale.z = max(8.0 * s, 0.01)
        label = Marker(id=t.id * 3 + 2, type=Marker.TEXT_VIEW_FACING, color=colour, **base)
        label.pose.position = to_point(x + w / 2.0, y)
        label.pose.position.y -= config.text_height  # above the box (y points down)
        label.pose.orientation.w = 1.0
        label.scale.z = config.text_height
        label.text = text
        markers += [box, centre, label]
    return MarkerArray(markers=markers)


def label_image_msg(label: np.ndarray, header: Header) -> Image:
    """The mono8 label mask image message."""
    return array_to_image(label, "mono8", header)
