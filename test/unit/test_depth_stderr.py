"""position_stderr covers the real error: the 3D estimate's `stderr` (the standard error of the
median plus the mask-boundary term, depth.estimate) against the true position on the synthetic
RGB-D scene, where the 3D error must be within 2 x stderr on at least 90% of frames.

Held out: the estimator's boundary term was designed on blackswan (seed 0, the default scene)
and checked once on dog (seed 5, blackswan wall); these tests run seed 11 on a dog wall, which
neither saw: goat, and the thin bmx-trees (a rider and a bike frame: its pixels are mostly edge,
the case where the old stderr covered 35% of frames). Mask cases: the scene's spilled mask
with every corruption on, and (goat) the true mask with its edge a pixel or two off (eroded,
dilated or shifted by 1-2 px: what a tracker's mask is at best) over noisy, holed depth with
flying pixels. Each prints what it reaches (run with -s). bmx-trees with its mask off by 1-2 px
reaches 88% (not tested; README "Depth and 3D").
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from steerseg_ros.depth import estimate_object_3d

K = 2.0            # the stated multiple: |estimate - truth| <= K x stderr (3D norm) ...
COVERAGE = 0.90    # ... on at least this share of frames
HELD_OUT = dict(background_sequence="dog", seed=11, n_frames=100)


def mask_off_by_a_pixel_or_two(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask eroded, dilated (1 or 2 px) or shifted (up to 2 px each way), at random."""
    op, r = int(rng.integers(0, 3)), int(rng.integers(1, 3))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    if op == 0:
        return cv2.erode(mask.astype(np.uint8), k).astype(bool)
    if op == 1:
        return cv2.dilate(mask.astype(np.uint8), k).astype(bool)
    dy, dx = (int(v) for v in rng.integers(-2, 3, 2))
    return np.roll(mask, (dy, dx), axis=(0, 1))


def coverage(scene, masks=None, **options):
    """(share of frames with 3D error <= K x stderr, median error, median stderr) over the scene;
    `masks(frame)` gives the input mask (default: the scene's)."""
    errors, stderrs = [], []
    for f in scene:
        o = estimate_object_3d(f.mask if masks is None else masks(f), f.depth_m, scene.camera, **options)
        assert o.valid, o.reason
        errors.append(float(np.linalg.norm(np.asarray(o.position) - f.position)))
        stderrs.append(o.stderr)
    errors, stderrs = np.array(errors), np.array(stderrs)
    return float(np.mean(errors <= K * stderrs)), float(np.median(errors)), float(np.median(stderrs))


@pytest.fixture(scope="module")
def held_out(davis_root):
    from steerseg_testing.synthetic_rgbd import SceneConfig, SyntheticRGBDScene

    def make(corruptions, sequence="goat"):
        return SyntheticRGBDScene(SceneConfig(corruptions=tuple(corruptions), object_sequence=sequence, **HELD_OUT),
                                  davis_root=davis_root)
    return make


@pytest.mark.parametrize("sequence, case", [("goat", "spilled mask, all corruptions"),
                                            ("goat", "mask off by 1-2 px, noise holes flying"),
                                            ("bmx-trees", "spilled mask, all corruptions")])
def test_stderr_covers_the_real_error(held_out, sequence, case):
    if case.startswith("spilled"):
        scene, masks = held_out(("noise", "holes", "flying", "spill"), sequence), None
    else:
        scene = held_out(("noise", "holes", "flying"))
        rng = np.random.default_rng(11)
        masks = lambda f: mask_off_by_a_pixel_or_two(f.mask_true, rng)  # noqa: E731
    share, error, stderr = coverage(scene, masks)
    without, _, stderr_without = coverage(scene, masks, boundary_px=0.0)
    print(f"\nstderr coverage [{sequence}, {case}]: 3D error <= {K:g} x stderr on {share:.0%} of {len(scene)} frames "
          f"(median error {error * 1e3:.1f} mm, median stderr {stderr * 1e3:.1f} mm); without the boundary "
          f"term {without:.0%} (median stderr {stderr_without * 1e3:.1f} mm)")
    assert share >= COVERAGE


def test_the_boundary_term_grows_with_the_masks_edge_and_leaves_the_position_alone(held_out):
    """boundary_px changes the stderr, never the position; a mask whose edge pixels pull the
    median (a thin part, pixels without depth at its rim) gets the larger boundary term."""
    scene = held_out(("holes",))
    f = scene.frame(3)
    plain = estimate_object_3d(f.mask, f.depth_m, scene.camera, boundary_px=0.0)
    one = estimate_object_3d(f.mask, f.depth_m, scene.camera, boundary_px=1.0)
    two = estimate_object_3d(f.mask, f.depth_m, scene.camera)
    assert plain.position == one.position == two.position
    assert plain.stderr < one.stderr <= two.stderr
    assert two.stderr == pytest.approx(float(np.linalg.norm(two.stderr_axes)))
    # A square plate, the mask exactly on it: with a thin stick on one side of the mask, the
    # edge's pull (and with it the stderr) grows.
    from steerseg_ros.depth import CameraModel
    cam = CameraModel(width=160, height=120, K=np.array([[150.0, 0, 79.5], [0, 150.0, 59.5], [0, 0, 1]]),
                      D=np.zeros(5), distortion_model="plumb_bob", frame_id="c")
    square = np.zeros((120, 160), bool)
    square[40:80, 60:100] = True
    stick = square.copy()
    stick[58:62, 100:140] = True
    plate, plate_and_stick = (np.where(m, 1.5, 3.0).astype(np.float32) for m in (square, stick))
    alone = estimate_object_3d(square, plate, cam)
    with_stick = estimate_object_3d(stick, plate_and_stick, cam)
    assert alone.stderr_axes == estimate_object_3d(square, plate, cam, boundary_px=0.0).stderr_axes  # a symmetric edge
    assert with_stick.stderr_axes[0] > 2 * alone.stderr_axes[0]
    # The plate's mask alone where the stick is there in depth: the mask may be too small (the
    # pixels just outside it, at the object's depth, would join), and the stderr says so.
    cut_short = estimate_object_3d(square, plate_and_stick, cam)
    assert cut_short.position == alone.position and cut_short.stderr_axes[0] > 2 * alone.stderr_axes[0]
