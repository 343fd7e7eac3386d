"""The node's depth path without DDS: depth image messages to arrays (16UC1, 32FC1, byte order,
padded rows, bad ones with their reason), the 3D fields of Track, target_point, the object point
cloud and the 3D markers, and `DepthInput` (the checks on depth and camera_info, pairing by stamp,
per-track 3D, and the counted rejections) on real message objects and a rendered plane.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytestmark = pytest.mark.ros

from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from steerseg_ros import depth as depth3d  # noqa: E402
from steerseg_ros.frame import NS_PER_S  # noqa: E402
from steerseg_ros.streaming.pipeline import TrackState, TrackView  # noqa: E402
from steerseg_ros.ros.depth_input import DepthConfig, DepthInput  # noqa: E402
from steerseg_ros.ros.image_conversion import (ImageConversionError, depth_array_to_image,  # noqa: E402
                                               depth_image_to_array)
from steerseg_ros.ros.messages import (active_target, header_at, object_markers_3d, points_to_cloud,  # noqa: E402
                                       target_point_msg, tracks_to_markers, tracks_to_msg)

W, H = 64, 48
K = [50.0, 0.0, 31.5, 0.0, 50.0, 23.5, 0.0, 0.0, 1.0]


# ---- depth images -------------------------------------------------------------------------
def test_depth_round_trip_16uc1_and_32fc1():
    mm = (np.arange(W * H, dtype=np.uint16).reshape(H, W) * 7)
    array, encoding = depth_image_to_array(depth_array_to_image(mm))
    assert encoding == "16UC1" and array.dtype == np.uint16 and np.array_equal(array, mm)
    m = np.random.default_rng(0).random((H, W)).astype(np.float32) * 3
    m[0, 0] = np.nan
    array, encoding = depth_image_to_array(depth_array_to_image(m))
    assert encoding == "32FC1" and np.array_equal(array, m, equal_nan=True)


def test_big_endian_and_padded_depth_rows():
    m = np.linspace(0.5, 4.0, W * H, dtype=np.float32).reshape(H, W)
    msg = Image(height=H, width=W, encoding="32FC1", is_bigendian=1, step=W * 4 + 8)
    padded = np.zeros((H, W * 4 + 8), np.uint8)
    padded[:, :W * 4] = m.astype(">f4").view(np.uint8).reshape(H, W * 4)
    msg.data = padded.tobytes()
    array, _ = depth_image_to_array(msg)
    assert array.dtype.isnative and np.array_equal(array, m)


@pytest.mark.parametrize("encoding, step, size, reason", [
    ("8UC1", W, W * H, "encoding"),
    ("rgb8", W * 3, W * H * 3, "encoding"),
    ("16UC1", W, W * H * 2, "step"),
    ("16UC1", W * 2, W * H * 2 - 1, "short_data"),
])
def test_bad_depth_images_are_rejected_with_a_reason(encoding, step, size, reason):
    msg = Image(height=H, width=W, encoding=encoding, step=step)
    msg.data = bytes(size)
    with pytest.raises(ImageConversionError) as e:
        depth_image_to_array(msg)
    assert e.value.reason == reason


# ---- messages -----------------------------------------------------------------------------
def _view(track_id, state=TrackState.TRACKING, box=(10, 10, 20, 20)):
    x, y, w, h = box
    mask = np.zeros((H, W), bool)
    mask[y:y + h, x:x + w] = True
    return TrackView(track_id, "the cup", "cup", state, 0.9, mask, 0)


def _obj(position, valid=True):
    p = np.array(position, float)
    return depth3d.Object3D(valid=valid, position=tuple(p), extent_min=tuple(p - [0.1, 0.2, 0.05]),
                            extent_max=tuple(p + [0.1, 0.1, 0.05]), size=(0.2, 0.3, 0.1), n_valid=321,
                            std=(0.01, 0.02, 0.03), stderr=0.004, points=np.zeros((5, 3), np.float32) + p)


def test_tracks_carry_their_3d_in_the_camera_frame():
    header = header_at(3 * NS_PER_S, "camera_link")
    msg = tracks_to_msg([_view(1), _view(2), _view(3)], header, {1: _obj((0.1, -0.2, 1.5)), 2: _obj((0, 0, 2), False)},
                        "camera_color_optical_frame")
    one, two, three = msg.tracks
    assert one.header.frame_id == "camera_link" and one.position_frame_id == "camera_color_optical_frame"
    assert one.has_position and (one.position.x, one.position.y, one.position.z) == pytest.approx((0.1, -0.2, 1.5))
    assert (one.extent_min.y, one.extent_max.y) == pytest.approx((-0.4, -0.1))
    assert one.depth_points == 321 and one.position_stderr == pytest.approx(0.004)
    assert (one.position_std.x, one.position_std.z) == pytest.approx((0.01, 0.03))
    assert not two.has_position and two.depth_points == 321  # invalid: counted points, no position
    assert not three.has_position and three.position.z == 0.0  # no estimate at all


def test_active_target_is_the_oldest_live_track_with_3d():
    views = [_view(5), _view(2, TrackState.LOST), _view(3), _view(4, TrackState.REGROUNDING)]
    objects = {2: _obj((0, 0, 1)), 3: _obj((0, 0, 1), valid=False), 4: _obj((0, 0, 2)), 5: _obj((0, 0, 3))}
    assert active_target(views, objects).id == 4
    assert active_target(views, {3: objects[3]}) is None
    point = target_point_msg(objects[4], header_at(7, "optical"))
    assert point.header.frame_id == "optical" and point.point.z == pytest.approx(2.0)


def test_point_cloud_holds_xyz_and_track_id():
    pts = {7: np.array([[0.1, 0.2, 1.0], [0.3, 0.4, 1.1]], np.float32), 9: np.array([[1, 2, 3]], np.float32)}
    cloud = points_to_cloud(pts, header_at(1, "optical"))
    assert cloud.width == 3 and cloud.height == 1 and cloud.point_step == 16
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "id"]
    data = np.frombuffer(bytes(cloud.data), dtype=np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("id", "<u4")]))
    assert np.allclose(np.stack([data["x"], data["y"], data["z"]], 1), np.concatenate([pts[7], pts[9]]))
    assert data["id"].tolist() == [7, 7, 9]
    assert points_to_cloud({}, header_at(1, "optical")).width == 0


def test_3d_markers_box_the_extent_and_label_above_it():
    obj = _obj((0.2, 0.1, 1.5))
    box, sphere, text = object_markers_3d(4, "#4 cup", obj, header_at(1, "optical"), text_height=0.1)
    assert box.type == Marker.CUBE and sphere.type == Marker.SPHERE and text.type == Marker.TEXT_VIEW_FACING
    assert (box.id, sphere.id, text.id) == (12, 13, 14)
    lo, hi = np.array(obj.extent_min), np.array(obj.extent_max)
    centre = (lo + hi) / 2
    assert (box.pose.position.x, box.pose.position.y, box.pose.position.z) == pytest.approx(tuple(centre))
    assert (box.scale.x, box.scale.y, box.scale.z) == pytest.approx(tuple(hi - lo))
    assert (sphere.pose.position.x, sphere.pose.position.z) == pytest.approx((0.2, 1.5))
    assert text.pose.position.y == pytest.approx(lo[1] - 0.1) and text.text == "#4 cup"  # above: y points down
    assert box.header.frame_id == "optical"


def test_markers_are_3d_where_there_is_3d_and_on_the_image_plane_elsewhere():
    image_header, camera_header = header_at(1, "camera_link"), header_at(1, "optical")
    markers = tracks_to_markers([_view(1), _view(2)], image_header, (W, H), objects={1: _obj((0, 0, 1.2))},
                                camera_header=camera_header).markers
    assert markers[0].action == Marker.DELETEALL
    by_id = {m.id: m for m in markers[1:]}
    assert by_id[3].type == Marker.CUBE and by_id[3].header.frame_id == "optical"
    assert by_id[6].type == Marker.LINE_STRIP and by_id[6].header.frame_id == "camera_link"
    plain = tracks_to_markers([_view(1)], image_header, (W, H)).markers
    assert plain[1].type == Marker.LINE_STRIP  # no depth: the image-plane markers as before


# ---- DepthInput ---------------------------------------------------------------------------
class Counts:
    def __init__(self):
        self.rejected: dict[str, int] = {}
        self.counted: dict[str, int] = {}

    def reject(self, reason, text):
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def count(self, key, n=1):
        self.counted[key] = self.counted.get(key, 0) + n


def _info(k=K, width=W, height=H, frame_id="optical"):
    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob", k=list(k), d=[0.0] * 5)
    msg.header.frame_id = frame_id
    return msg


def _plane(z=1.5, shape=(H, W)):
    return np.full(shape, int(z * 1000), np.uint16)


def _depth(stamp_ns, array=None):
    return depth_array_to_image(_plane() if array is None else array, header_at(stamp_ns, "camera_link"))


@pytest.fixture
def depth_input():
    counts = Counts()
    d = DepthInput(counts.reject, counts.count)
    d.start(DepthConfig(wait_s=0.0, pairing_tolerance_s=0.01))
    d.counts = counts
    return d


def test_without_depth_nothing_is_estimated_nor_waited_for(depth_input):
    depth_input.config.wait_s = 1.0
    start = time.monotonic()
    assert depth_input.estimate([_view(1)], NS_PER_S, (W, H)) is None
    assert time.monotonic() - start < 0.5 and not depth_input.counts.rejected


def test_paired_depth_gives_each_live_track_its_3d(depth_input):
    depth_input.on_camera_info(_info())
    depth_input.on_depth(_depth(NS_PER_S + 3_000_000))  # 3 ms off: nearest within 10 ms
    frame = depth_input.estimate([_view(1), _view(2, TrackState.LOST)], NS_PER_S, (W, H))
    assert frame is not None and frame.frame_id == "optical" and set(frame.objects) == {1}
    obj = frame.objects[1]
    assert obj.valid and obj.position[2] == pytest.approx(1.5, abs=1e-3)
    # the box 10..30 x 10..30 around the principal point (31.5, 23.5) at f = 50 px
    assert obj.position[0] == pytest.approx((19.5 - 31.5) * 1.5 / 50, abs=0.02)
    assert depth_input.counters()["depth.paired_nearest"] == 1
    # the next colour frame has no depth of its own: 2D
    assert depth_input.estimate([_view(1)], NS_PER_S + NS_PER_S // 30, (W, H)) is None


def test_depth_at_half_size_and_camera_info_at_double_size_pair(depth_input):
    depth_input.on_camera_info(_info([100.0, 0, 63.5, 0, 100.0, 47.5, 0, 0, 1], 2 * W, 2 * H))
    depth_input.on_depth(_depth(NS_PER_S, _plane(2.0, (H // 2, W // 2))))
    frame = depth_input.estimate([_view(1)], NS_PER_S, (W, H))
    assert frame is not None and frame.objects[1].position[2] == pytest.approx(2.0, abs=1e-3)
    assert frame.objects[1].position[0] == pytest.approx((19.5 - 31.5) * 2.0 / 50, abs=0.03)


@pytest.mark.parametrize("k, valid", [([0.0] * 9, False), ([float("nan")] + K[1:], False),
                                      ([float("inf")] + K[1:], False), (K, True)])
def test_camera_info_k_is_checked(depth_input, k, valid):
    depth_input.on_camera_info(_info(k))
    assert ("camera_info.invalid" in depth_input.counts.rejected) is not valid
    depth_input.on_depth(_depth(NS_PER_S))
    frame = depth_input.estimate([_view(1)], NS_PER_S, (W, H))
    assert (frame is not None) is valid
    if not valid:
        assert depth_input.counts.rejected.get("depth.no_camera_info") == 1


def test_bad_depth_is_rejected_and_the_frame_stays_2d(depth_input):
    depth_input.on_camera_info(_info())
    wrong = _depth(NS_PER_S)
    wrong.encoding = "mono8"
    depth_input.on_depth(wrong)
    assert depth_input.counts.rejected == {"depth.encoding": 1}
    depth_input.on_depth(_depth(NS_PER_S, _plane(1.0, (H, W // 2))))  # another aspect
    assert depth_input.estimate([_view(1)], NS_PER_S, (W, H)) is None
    assert depth_input.counts.rejected["depth.size"] == 1
    depth_input.on_camera_info(_info(width=W, height=W))  # camera_info of another aspect
    depth_input.on_depth(_depth(2 * NS_PER_S))
    assert depth_input.estimate([_view(1)], 2 * NS_PER_S, (W, H)) is None
    assert depth_input.counts.rejected["camera_info.size"] == 1


def test_depth_with_no_colour_partner_is_counted(depth_input):
    depth_input.on_camera_info(_info())
    depth_input.on_depth(_depth(10 * NS_PER_S))
    assert depth_input.estimate([_view(1)], 10 * NS_PER_S, (W, H)) is not None
    depth_input.on_depth(_depth(9 * NS_PER_S))  # older than a colour frame already served
    assert depth_input.counts.rejected == {"depth.no_colour_partner": 1}
    depth_input.on_depth(_depth(11 * NS_PER_S))
    depth_input.on_depth(_depth(12 * NS_PER_S))
    assert depth_input.estimate([_view(1)], 12 * NS_PER_S, (W, H)) is not None  # 11 s is passed over
    assert depth_input.counts.rejected == {"depth.no_colour_partner": 2}


def test_a_restarted_source_pairs_again(depth_input):
    depth_input.on_camera_info(_info())
    depth_input.on_depth(_depth(100 * NS_PER_S))
    assert depth_input.estimate([_view(1)], 100 * NS_PER_S, (W, H)) is not None
    # the bag loops: colour and depth start over at 10 s; the first frame's depth came too early
    depth_input.on_depth(_depth(10 * NS_PER_S))
    assert depth_input.estimate([_view(1)], 10 * NS_PER_S, (W, H)) is None
    depth_input.on_depth(_depth(10 * NS_PER_S + NS_PER_S // 30))
    assert depth_input.estimate([_view(1)], 10 * NS_PER_S + NS_PER_S // 30, (W, H)) is not None
    assert depth_input.counts.counted["depth_restarts"] == 1


def test_late_depth_is_waited_for(depth_input):
    import threading

    depth_input.start(DepthConfig(wait_s=1.0))
    depth_input.on_camera_info(_info())
    depth_input.on_depth(_depth(NS_PER_S))
    assert depth_input.estimate([_view(1)], NS_PER_S, (W, H)) is not None
    late = threading.Timer(0.1, depth_input.on_depth, args=(_depth(2 * NS_PER_S),))
    late.start()
    try:
        assert depth_input.estimate([_view(1)], 2 * NS_PER_S, (W, H)) is not None
    finally:
        late.join()


def test_depth_config_is_validated():
    for bad in (dict(qos="fast"), dict(wait_s=-1.0), dict(wait_s=5.0), dict(pairing_tolerance_s=float("nan")),
                dict(queue_size=0), dict(object_points_max=0)):
        with pytest.raises(ValueError):
            DepthConfig(**bad).validate()
    DepthConfig().validate()
