"""J and F as the DAVIS toolkit defines them, on masks with known answers."""
import numpy as np
import pytest

from steerseg_ros.offline.metrics import boundary_f, boundary_map, region_j, score_object, summarize


def square(h, w, y0, x0, size):
    m = np.zeros((h, w), bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def test_region_j_is_iou_and_two_empty_masks_agree():
    a = square(100, 100, 10, 10, 20)        # 400 px
    b = square(100, 100, 10, 20, 20)        # overlaps a by 20x10
    assert region_j(a, b) == pytest.approx(200 / 600)
    assert region_j(a, a) == 1.0
    assert region_j(a, np.zeros_like(a)) == 0.0
    assert region_j(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_boundary_map_of_a_square_is_its_outline():
    m = square(20, 20, 5, 5, 6)
    b = boundary_map(m)
    # seg2bmap marks pixels whose right/lower/lower-right neighbour differs: inside the square
    # its right column and bottom row (11 px), outside its left column and top row (13 px).
    assert b.sum() == 24
    assert b[m].sum() == 11 and b[5:11, 10].all() and b[10, 5:11].all()
    assert b[4, 4:11].all() and b[4:11, 4].all()
    assert not b[8, 8]  # interior


def test_boundary_f_tolerates_shifts_within_the_tolerance_only():
    h, w = 480, 854
    tol_px = int(np.ceil(0.008 * np.hypot(h, w)))  # 8 px at 480p
    gt = square(h, w, 100, 100, 200)
    assert boundary_f(gt, gt) == 1.0
    assert boundary_f(square(h, w, 100, 100 + tol_px - 1, 200), gt) == 1.0
    far = boundary_f(square(h, w, 100, 100 + 5 * tol_px, 200), gt)
    assert far < 0.6
    assert boundary_f(np.zeros_like(gt), gt) == 0.0
    assert boundary_f(gt, np.zeros_like(gt)) == 0.0
    assert boundary_f(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_score_object_averages_frames_and_can_skip_first_and_last():
    gt = [square(50, 50, 10, 10, 10)] * 4
    preds = [np.zeros((50, 50), bool), gt[1], gt[2], np.zeros((50, 50), bool)]
    full = score_object("s", 1, preds, gt)
    assert full.j == pytest.approx(0.5) and full.frames == 4
    inner = score_object("s", 1, preds, gt, skip_first_last=True)
    assert inner.j == 1.0 and inner.f == 1.0 and inner.frames == 2
    with pytest.raises(ValueError):
        score_object("s", 1, preds[:3], gt)


def test_summarize_averages_over_objects():
    gt = [square(50, 50, 10, 10, 10)]
    s1 = score_object("a", 1, gt, gt)
    s2 = score_object("b", 1, [np.zeros((50, 50), bool)], gt)
    summary = summarize([s1, s2])
    assert summary["J"] == pytest.approx(0.5)
    assert summary["J&F"] == pytest.approx((summary["J"] + summary["F"]) / 2)
    assert summary["objects"] == 2
