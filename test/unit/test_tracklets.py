"""Tracklet building and the two rankers (DecAF, SteerSeg) on constructed maps and masks whose
answers are known. The tracker here knows where a square object is on every frame, so every
mask it returns is exact."""
import math

import numpy as np
import pytest

from steerseg_ros.frame import Frame
from steerseg_ros.grounding.base import GroundingResult, PointPrompt
from steerseg_ros.tracking.base import MaskCandidate, ObjectMask, ObjectState, Tracker
from steerseg_ros.streaming.selection import SelectionConfig, mask_iou, select, weighted_pearson

CELL = 10           # pixels per map cell
GRID = (4, 4)       # map grid (rows, cols)
SIZE = (40, 40)     # image (height, width)


def cell_mask(row, col, rows=1, cols=1):
    m = np.zeros(SIZE, bool)
    m[row * CELL:(row + rows) * CELL, col * CELL:(col + cols) * CELL] = True
    return m


class CellTracker(Tracker):
    """segment(): the map cell the point is in. Propagation moves the mask by `motion[seq]`
    cells (row, col) relative to frame 0, so where a tracklet ends up is known exactly."""

    name = "cells"

    def __init__(self, motion=None, score=0.9):
        self.motion = motion or {}
        self.score = score

    def _shift(self, mask, seq_from, seq_to):
        (r0, c0), (r1, c1) = self.motion.get(seq_from, (0, 0)), self.motion.get(seq_to, (0, 0))
        return np.roll(mask, ((r1 - r0) * CELL, (c1 - c0) * CELL), axis=(0, 1))

    def segment(self, frame, points, labels):
        x, y = points[0]
        return [MaskCandidate(cell_mask(int(y // CELL), int(x // CELL)), self.score)]

    def start(self, frame, *, points=None, labels=None, mask=None):
        return ObjectState(frame.seq, ObjectMask(mask, 1.0))

    def advance(self, state, frame):
        return ObjectMask(self._shift(state.result.mask, state.seq, frame.seq), self.score)

    def attach(self, obj_id, state):
        pass

    def remove(self, obj_id):
        pass

    def step(self, frame):
        return {}

    @property
    def object_ids(self):
        return []


def keyframes(k=3):
    return [Frame(i, i * 100_000_000, np.zeros(SIZE + (3,), np.uint8)) for i in range(k)]


def point(k, row, col, score):
    return PointPrompt(k, (col + 0.5) * CELL, (row + 0.5) * CELL, score)


def result(maps, points, backend="test", frame_maps=None, video_maps=None):
    return GroundingResult("the thing", backend, keyframes(maps.shape[0]), maps.astype(np.float32), points,
                           frame_maps=frame_maps, video_maps=video_maps)


def two_object_map(k=3):
    """V = 1 on cell (1,1), 0.5 on cell (3,3), 0 elsewhere, on every keyframe."""
    v = np.zeros((k,) + GRID)
    v[:, 1, 1] = 1.0
    v[:, 3, 3] = 0.5
    return v


def test_decaf_attention_consistency_and_s_trk_match_the_formulas():
    # mean(V) = 1.5/16, so the attention mask is cells (1,1) and (3,3); V-hat is V there and
    # -max(V) = -1 elsewhere; <attention, V-hat> = 1.5 per keyframe.
    # Tracklet on (1,1): 1/1.5 per keyframe, 2.0 over three. On (3,3): 0.5/1.5, 1.0 in all.
    # On (0,0): -1/1.5, -2.0 in all. Positives are divided by the largest (2.0).
    r = result(two_object_map(), [point(2, 1, 1, 1.0), point(2, 3, 3, 0.5), point(2, 0, 0, 0.0)])
    chosen = select(r, CellTracker(score=0.9), SelectionConfig(scorer="decaf", max_targets=3))
    scores = dict(zip(r.chosen_points, [t.score for t in chosen]))
    assert list(scores) == [0]  # only the (1,1) tracklet is above 0.8
    assert scores[0] == pytest.approx((0.9 + 1.0 + 1.0) / 3)
    assert r.candidate_scores == pytest.approx([(0.9 + 1.0 + 1.0) / 3, (0.9 + 0.5 + 0.5) / 3,
                                                (0.9 + 0.0 - 2.0) / 3])


def test_decaf_keeps_every_tracklet_above_the_threshold_or_else_the_best_one():
    r = result(two_object_map(), [point(2, 1, 1, 1.0), point(2, 3, 3, 0.5)])
    both = select(r, CellTracker(), SelectionConfig(scorer="decaf", keep_threshold=0.5, max_targets=3))
    assert [t.point_index for t in both] == [0, 1]
    capped = select(r, CellTracker(), SelectionConfig(scorer="decaf", keep_threshold=0.5, max_targets=1))
    assert [t.point_index for t in capped] == [0]
    none_above = select(r, CellTracker(), SelectionConfig(scorer="decaf", keep_threshold=0.99, max_targets=3))
    assert [t.point_index for t in none_above] == [0]


def test_steerseg_ranks_by_correlation_with_the_frame_and_video_maps():
    frame_maps = np.zeros((3,) + GRID)
    frame_maps[:, 1, 1] = 1.0       # the frame-level map says (1,1)
    video_maps = np.zeros((3,) + GRID)
    video_maps[:, 3, 3] = 1.0       # the video-level map says (3,3)
    maps = (frame_maps + video_maps) / 2
    points = [point(2, 1, 1, 1.0), point(2, 3, 3, 1.0)]
    for weight, expected in ((1.0, 0), (0.0, 1), (0.8, 0), (0.2, 1)):
        r = result(maps, points, frame_maps=frame_maps, video_maps=video_maps)
        (chosen,) = select(r, CellTracker(), SelectionConfig(scorer="steerseg", weight=weight, max_targets=3))
        assert chosen.point_index == expected, weight
    # With a = 1 the score is exactly the correlation with the frame map: 1 for the right cell.
    r = result(maps, points, frame_maps=frame_maps, video_maps=video_maps)
    select(r, CellTracker(), SelectionConfig(scorer="steerseg", weight=1.0))
    assert r.candidate_scores[0] == pytest.approx(1.0)


def test_auto_scorer_uses_decaf_for_the_decaf_grounder_only():
    points = [point(2, 1, 1, 1.0), point(2, 3, 3, 0.5)]
    decaf = result(two_object_map(), points, backend="decaf")
    select(decaf, CellTracker(score=0.9), SelectionConfig())
    assert decaf.candidate_scores[0] == pytest.approx((0.9 + 1.0 + 1.0) / 3)
    other = result(two_object_map(), points, backend="builtin")
    select(other, CellTracker(score=0.9), SelectionConfig())
    assert other.candidate_scores[0] == pytest.approx(weighted_pearson(
        np.stack([cell_mask(1, 1)[::CELL, ::CELL]] * 3).astype(float), two_object_map()))


def test_candidates_are_propagated_forward_and_backward_over_the_keyframes():
    motion = {0: (0, 0), 1: (0, 1), 2: (1, 2), 3: (2, 2), 4: (2, 3)}
    maps = np.zeros((5,) + GRID)
    maps[2, 2, 2] = 1.0  # the object seen on keyframe 2, at cell (2,2)
    r = result(maps, [point(2, 2, 2, 1.0)])
    (t,) = select(r, CellTracker(motion), SelectionConfig(scorer="steerseg"))
    for k, (dr, dc) in motion.items():
        assert np.array_equal(t.masks[k], cell_mask(1 + dr, 0 + dc)), k
    unpropagated = result(maps, [point(2, 2, 2, 1.0)])
    (u,) = select(unpropagated, CellTracker(motion), SelectionConfig(scorer="steerseg", propagate=False))
    assert u.masks == [] and u.mask_on(2) is not None and u.mask_on(0) is None


def test_overlapping_candidates_are_suppressed_on_the_same_keyframe_and_against_kept_tracklets():
    maps = two_object_map()
    same_object = [point(2, 1, 1, 1.0), point(1, 1, 1, 0.95), point(0, 1, 1, 0.9), point(2, 3, 3, 0.5)]
    r = result(maps, same_object)
    tracklets = select(r, CellTracker(), SelectionConfig(scorer="decaf", keep_threshold=0.0, max_targets=9))
    # The (1,1) object seen on three keyframes is one tracklet; the (3,3) object another.
    assert sorted(t.point_index for t in tracklets) == [0, 3]
    assert math.isnan(r.candidate_scores[1]) and math.isnan(r.candidate_scores[2])
    r = result(maps, same_object)
    loose = select(r, CellTracker(), SelectionConfig(scorer="decaf", keep_threshold=0.0, max_targets=9, nms_iou=1.0))
    assert len(loose) == 4


def test_max_points_limits_the_candidates_and_helpers_behave():
    r = result(two_object_map(), [point(2, 1, 1, 1.0), point(2, 3, 3, 0.5)])
    select(r, CellTracker(), SelectionConfig(max_points=1))
    assert not math.isnan(r.candidate_scores[0]) and math.isnan(r.candidate_scores[1])
    # The best points whatever order the grounder lists them in (DecAF's: by cell, not score).
    r = result(two_object_map(), [point(0, 3, 3, 0.5), point(2, 1, 1, 1.0)])
    select(r, CellTracker(), SelectionConfig(max_points=1))
    assert math.isnan(r.candidate_scores[0]) and not math.isnan(r.candidate_scores[1])
    assert weighted_pearson(np.arange(4.0), np.arange(4.0) * 3 + 1) == pytest.approx(1.0)
    assert weighted_pearson(np.ones(4), np.arange(4.0)) == 0.0
    assert mask_iou(cell_mask(0, 0, 1, 2), cell_mask(0, 1, 1, 2)) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        SelectionConfig(scorer="best").validate()


def test_points_inside_a_candidate_on_their_keyframe_are_not_segmented_again():
    class Counting(CellTracker):
        calls = 0

        def segment(self, frame, points, labels):
            Counting.calls += 1
            return super().segment(frame, points, labels)

    # Two points in the same cell of keyframe 2, one in another cell.
    points = [point(2, 1, 1, 1.0), PointPrompt(2, 1.2 * CELL, 1.7 * CELL, 0.95), point(2, 3, 3, 0.5)]
    r = result(two_object_map(), points)
    select(r, Counting(), SelectionConfig(scorer="decaf"))
    assert Counting.calls == 2 and math.isnan(r.candidate_scores[1])
    Counting.calls = 0
    r = result(two_object_map(), points)
    select(r, Counting(), SelectionConfig(scorer="decaf", skip_covered_points=False))
    assert Counting.calls == 3 and math.isnan(r.candidate_scores[1])  # segmented, then suppressed
