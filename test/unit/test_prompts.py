"""Point prompts from grounding maps."""
import numpy as np
import pytest

from steerseg_ros.grounding.prompts import points_from_map, points_from_maps


def test_cells_above_threshold_become_points_at_cell_centres_best_first():
    m = np.zeros((4, 8), np.float32)
    m[1, 2] = 0.9
    m[3, 7] = 1.0
    m[0, 0] = 0.79
    pts = points_from_map(m, image_size=(800, 400), threshold=0.8)
    assert [(p.x, p.y) for p in pts] == [(750.0, 350.0), (250.0, 150.0)]  # cells are 100 x 100 px
    assert [p.score for p in pts] == pytest.approx([1.0, 0.9])
    assert all(p.positive and p.keyframe_index == 0 for p in pts)


def test_max_points_and_separation_limit_the_points():
    m = np.zeros((10, 10), np.float32)
    m[5, 5], m[5, 6], m[1, 1] = 1.0, 0.95, 0.9
    assert len(points_from_map(m, (10, 10), 0.8)) == 3
    assert len(points_from_map(m, (10, 10), 0.8, max_points=1)) == 1
    sep = points_from_map(m, (10, 10), 0.8, min_separation=1)
    assert [(p.x, p.y) for p in sep] == [(5.5, 5.5), (1.5, 1.5)]


def test_no_point_below_threshold_and_nan_is_ignored():
    m = np.full((3, 3), np.nan, np.float32)
    m[0, 0] = 0.5
    assert points_from_map(m, (30, 30), 0.8) == []
    with pytest.raises(ValueError):
        points_from_map(np.zeros((2, 2, 2)), (10, 10))


def test_points_over_several_keyframes_keep_their_keyframe():
    maps = np.zeros((3, 2, 2), np.float32)
    maps[0, 0, 0] = 0.85
    maps[2, 1, 1] = 0.95
    pts = points_from_maps(maps, (20, 20), 0.8)
    assert [(p.keyframe_index, p.x, p.y) for p in pts] == [(2, 15.0, 15.0), (0, 5.0, 5.0)]
    assert len(points_from_maps(maps, (20, 20), 0.8, max_points=1)) == 1
