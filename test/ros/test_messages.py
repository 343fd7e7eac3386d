"""Core results to ROS messages: tracks (box, centroid, area, state), grounding results (the
chosen point, its score and map), and the RViz markers on the virtual image plane."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytestmark = pytest.mark.ros

from visualization_msgs.msg import Marker  # noqa: E402

from steerseg_ros.frame import Frame  # noqa: E402
from steerseg_ros.grounding.base import GroundingResult, PointPrompt  # noqa: E402
from steerseg_msgs.msg import Track  # noqa: E402
from steerseg_ros.streaming.pipeline import TrackState, TrackView  # noqa: E402
from steerseg_ros.grounding.base import GroundingError  # noqa: E402
from steerseg_ros.ros.messages import (MarkerConfig, ground_result_to_grounding, grounding_to_ground_result,  # noqa: E402
                                       grounding_to_msg, header_at, stamp_to_ns, track_to_msg, tracks_to_markers,
                                       tracks_to_msg)

H, W = 60, 100


def view(track_id=3, state=TrackState.TRACKING, box=(10, 20, 30, 15)):
    x, y, w, h = box
    mask = np.zeros((H, W), bool)
    mask[y:y + h, x:x + w] = True
    return TrackView(track_id, "the red cup", "cup", state, 0.83, mask, 7_000_000_123)


def test_track_message_describes_the_mask():
    header = header_at(5_000_000_001, "cam")
    msg = track_to_msg(view(), header)
    assert (msg.id, msg.label_value, msg.command, msg.label) == (3, 3, "the red cup", "cup")
    assert msg.state == Track.STATE_TRACKING and msg.score == pytest.approx(0.83)
    assert (msg.bbox.x_offset, msg.bbox.y_offset, msg.bbox.width, msg.bbox.height) == (10, 20, 30, 15)
    assert msg.mask_area == 30 * 15
    assert (msg.centroid.x, msg.centroid.y) == pytest.approx((10 + 14.5, 20 + 7))
    assert stamp_to_ns(msg.last_grounding) == 7_000_000_123
    assert stamp_to_ns(msg.header.stamp) == 5_000_000_001 and msg.header.frame_id == "cam"


def test_track_states_match_the_message_constants():
    for state, constant in [(TrackState.TRACKING, Track.STATE_TRACKING), (TrackState.LOST, Track.STATE_LOST),
                            (TrackState.REGROUNDING, Track.STATE_REGROUNDING),
                            (TrackState.REPLACED, Track.STATE_REPLACED)]:
        assert track_to_msg(view(state=state), header_at(0, "")).state == constant


def test_empty_mask_has_an_empty_box():
    v = view()
    v.mask[:] = False
    msg = track_to_msg(v, header_at(0, ""))
    assert msg.mask_area == 0 and msg.bbox.width == 0


def test_track_array_keeps_every_track_and_the_header():
    header = header_at(42, "cam")
    msg = tracks_to_msg([view(1), view(2, TrackState.REPLACED)], header)
    assert [t.id for t in msg.tracks] == [1, 2]
    assert all(stamp_to_ns(t.header.stamp) == 42 for t in msg.tracks)


def test_grounding_message_names_the_chosen_point_and_its_map():
    frames = [Frame(i, (i + 1) * 1_000_000_000, np.zeros((H, W, 3), np.uint8), "cam") for i in range(3)]
    maps = np.zeros((3, 4, 5), np.float32)
    maps[1, 2, 3] = 0.9
    points = [PointPrompt(2, 10.0, 11.0, 0.95), PointPrompt(1, 70.0, 40.0, 0.9)]
    result = GroundingResult("the red cup", "builtin", frames, maps, points, class_word="cup",
                             attributes=["red"], timings={"ground": 0.25, "select": 0.01},
                             candidate_scores=[0.1, 0.7], chosen_points=[1])
    msg = grounding_to_msg(result)
    assert stamp_to_ns(msg.header.stamp) == 3_000_000_000 and msg.header.frame_id == "cam"
    assert [stamp_to_ns(s) for s in msg.keyframe_stamps] == [1_000_000_000, 2_000_000_000, 3_000_000_000]
    assert (msg.chosen_point, msg.chosen_keyframe_index) == (1, 1)
    assert msg.chosen_score == pytest.approx(0.7)
    assert list(msg.candidate_scores) == pytest.approx([0.1, 0.7])
    assert [(p.keyframe_index, p.x, p.y) for p in msg.points] == [(2, 10.0, 11.0), (1, 70.0, 40.0)]
    assert (msg.class_word, list(msg.attributes)) == ("cup", ["red"])
    assert dict(zip(msg.stage_names, msg.stage_seconds)) == pytest.approx({"ground": 0.25, "select": 0.01})
    # the map of the chosen point's keyframe, as 32FC1
    assert (msg.map.encoding, msg.map.height, msg.map.width) == ("32FC1", 4, 5)
    values = np.frombuffer(bytes(msg.map.data), np.float32).reshape(4, 5)
    np.testing.assert_array_equal(values, maps[1])


@pytest.mark.parametrize("in_view, score", [(None, float("nan")), (False, 0.03), (True, 0.97)])
def test_a_grounder_nodes_answer_keeps_point_masks_and_the_in_view_answer(in_view, score):
    """What a grounder node sends back over the Ground action is what the tracker node's pipeline
    sees: the maps, the points with the masks a segmenting backend (SAM 3) made for them, and the
    backend's "not in view" (without which a remote grounder's "the object is not there" would
    start a track on the best wrong guess)."""
    frames = [Frame(i, (i + 1) * 1_000_000_000, np.zeros((H, W, 3), np.uint8), "cam") for i in range(2)]
    mask = np.zeros((H, W), bool)
    mask[5:30, 40:90] = True
    points = [PointPrompt(1, 60.0, 12.0, 0.8, mask=mask), PointPrompt(0, 3.0, 4.0, 0.4)]
    maps = np.random.default_rng(0).random((2, 6, 7)).astype(np.float32)
    sent = GroundingResult("the red cup", "sam3", frames, maps, points, class_word="red cup", in_view=in_view,
                           in_view_score=score)
    got = ground_result_to_grounding(grounding_to_ground_result(sent), frames)
    np.testing.assert_array_equal(got.maps, maps)
    assert [(p.keyframe_index, p.x, p.y, p.score) for p in got.points] == \
        [(1, 60.0, 12.0, pytest.approx(0.8)), (0, 3.0, 4.0, pytest.approx(0.4))]
    np.testing.assert_array_equal(got.points[0].mask, mask)
    assert got.points[1].mask is None
    assert got.in_view is in_view
    assert (math.isnan(got.in_view_score) and math.isnan(score)) or got.in_view_score == pytest.approx(score)
    # Without masks nothing extra goes on the wire.
    plain = GroundingResult("x", "builtin", frames, maps, [PointPrompt(0, 3.0, 4.0, 0.4)])
    assert not grounding_to_ground_result(plain).point_masks
    # A mask of another size than its keyframe is refused, not used.
    answer = grounding_to_ground_result(sent)
    with pytest.raises(GroundingError, match="point mask"):
        ground_result_to_grounding(answer, [Frame(i, (i + 1) * 1_000_000_000, np.zeros((H + 2, W, 3), np.uint8), "cam")
                                            for i in range(2)])


def test_grounding_message_without_a_choice():
    frames = [Frame(0, 5, np.zeros((H, W, 3), np.uint8), "cam")]
    msg = grounding_to_msg(GroundingResult("x", "builtin", frames, np.zeros((1, 2, 2), np.float32), []))
    assert msg.chosen_point == -1 and not msg.points


def test_markers_lie_on_the_viewing_rays_of_their_pixels():
    config = MarkerConfig(distance=2.0, focal_length_px=500.0)
    header = header_at(9, "camera_optical")
    v = view(box=(40, 20, 20, 20))  # centred on pixel (49.5, 29.5), right of the image centre (50, 30)
    markers = tracks_to_markers([v, view(8, TrackState.REPLACED)], header, (W, H), config).markers
    assert markers[0].action == Marker.DELETEALL  # ended tracks disappear
    live = markers[1:]
    assert {m.id // 3 for m in live} == {3}  # the replaced track gets no markers
    assert all(m.header.frame_id == "camera_optical" for m in live)
    (box,) = [m for m in live if m.type == Marker.LINE_STRIP]
    (centre,) = [m for m in live if m.type == Marker.SPHERE]
    (text,) = [m for m in live if m.type == Marker.TEXT_VIEW_FACING]
    s = 2.0 / 500.0
    assert centre.pose.position.z == pytest.approx(2.0)
    assert (centre.pose.position.x, centre.pose.position.y) == pytest.approx(((49.5 - 50) * s, (29.5 - 30) * s))
    # a point (u, v) on the plane at depth d projects back to pixel (cx + f x / d, cy + f y / d)
    for p in box.points:
        u, v_ = 50 + 500.0 * p.x / p.z, 30 + 500.0 * p.y / p.z
        assert 40 - 1e-6 <= u <= 60 + 1e-6 and 20 - 1e-6 <= v_ <= 40 + 1e-6
    assert "#3 cup 0.83" == text.text
    assert not math.isnan(box.scale.x) and box.scale.x > 0


def test_overlay_drawn_into_reused_message_memory_equals_a_fresh_one():
    from steerseg_ros import render
    from steerseg_ros.ros.image_conversion import ImageBuffer, array_to_image

    rng = np.random.default_rng(0)
    header = header_at(1, "cam")
    buffer = ImageBuffer()
    for frame in range(3):  # frame after frame, one buffer, other masks
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        tracks = [view(3, box=(10 + frame, 20, 30, 15)), view(4, box=(50, 5 + frame, 20, 40))]
        fresh = array_to_image(render.overlay(rgb, tracks, 0.5), "bgr8", header)
        render.overlay(rgb, tracks, 0.5, out=buffer.view(rgb.shape))
        drawn = buffer.message("bgr8", header)
        assert (drawn.height, drawn.width, drawn.step, drawn.encoding) == (H, W, 3 * W, "bgr8")
        assert drawn.data == fresh.data
        assert drawn.data is buffer.data  # no copy: the message holds the drawn memory
    with pytest.raises(ValueError, match="out must be"):
        render.overlay(rgb, tracks, 0.5, out=np.zeros((H, W), np.uint8))
