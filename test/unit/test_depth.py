"""The ROS-free depth core: camera model, depth encodings, stamp pairing and the 3D estimate.

The accuracy tests run the estimator on the synthetic RGB-D scene (steerseg_testing.synthetic_rgbd:
a DAVIS object on a card at 1-2 m in front of a wall 1.2 m or more behind it, seen through a
distorted wide-angle camera) with each corruption on its own and all together. The bound is
the issue's: the 3D error within 2 cm and the depth error within 2% of the true depth, on at
least 95% of frames. Each case prints what it reaches (run with -s to see it).
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from steerseg_ros.depth import (CameraModel, DepthPairer, EstimatorOptions, check_depth_size, depth_to_metres,
                                estimate_object_3d, object_points)

K9 = [500.0, 0.0, 319.5, 0.0, 500.0, 239.5, 0.0, 0.0, 1.0]
D5 = [-0.25, 0.08, 0.001, -0.001, -0.01]


def within_bound(estimate, truth) -> bool:
    estimate, truth = np.asarray(estimate), np.asarray(truth)
    return bool(np.linalg.norm(estimate - truth) <= 0.02 and abs(estimate[2] - truth[2]) <= 0.02 * truth[2])


# ---- camera model -----------------------------------------------------------------------------

def test_camera_from_camera_info_fields():
    cam = CameraModel.from_camera_info_fields(640, 480, K9, D5, "plumb_bob", "cam")
    assert cam.K.shape == (3, 3) and cam.K.dtype == np.float64 and cam.fx == 500.0
    assert cam.D.tolist() == D5 and cam.frame_id == "cam"
    with pytest.raises(ValueError):
        cam.K[0, 0] = 1.0  # read-only: a camera is shared between threads
    # An empty D is an undistorted camera (image_geometry reads it the same way).
    flat = CameraModel.from_camera_info_fields(640, 480, K9, [], "", "cam")
    assert not flat.has_distortion and flat.distortion_model == "plumb_bob"
    fisheye = CameraModel.from_camera_info_fields(640, 480, K9, [0.1, 0.01, 0.0, 0.0], "equidistant", "cam")
    assert fisheye.D.size == 4


@pytest.mark.parametrize("width,height,k,d,model,match", [
    (640, 480, [0.0] * 9, D5, "plumb_bob", "focal length"),
    (640, 480, [500.0, 0, 319.5, 0, float("nan"), 239.5, 0, 0, 1], D5, "plumb_bob", "non-finite"),
    (640, 480, [500.0, 0, 319.5, 0, float("inf"), 239.5, 0, 0, 1], D5, "plumb_bob", "non-finite"),
    (0, 480, K9, D5, "plumb_bob", "size"),
    (640, 0, K9, D5, "plumb_bob", "size"),
    (640, 480, K9[:8], D5, "plumb_bob", "9 values"),
    (640, 480, K9, D5[:3], "plumb_bob", "5 values"),
    (640, 480, K9, D5, "equidistant", "4 values"),
    (640, 480, K9, D5, "rational_polynomial", "8 values"),
    (640, 480, K9, D5, "kannala", "not supported"),
    (640, 480, K9, [0.1, float("nan"), 0, 0, 0], "plumb_bob", "D has non-finite"),
])
def test_bad_camera_model_raises(width, height, k, d, model, match):
    with pytest.raises(ValueError, match=match):
        CameraModel.from_camera_info_fields(width, height, k, d, model, "cam")


def test_scaled_camera_projects_to_scaled_pixels():
    cam = CameraModel.from_camera_info_fields(640, 480, K9, D5, "plumb_bob", "cam")
    half = cam.scaled(320, 240)
    pts = np.array([[0.3, -0.2, 1.5], [-0.5, 0.4, 2.0], [0.0, 0.0, 1.0]])
    uv_full, uv_half = cam.project(pts), half.project(pts)
    # Pixel centres: u_half + 0.5 = (u_full + 0.5) / 2.
    np.testing.assert_allclose(uv_half + 0.5, (uv_full + 0.5) / 2, atol=1e-9)
    assert cam.scaled(640, 480) is cam
    with pytest.raises(ValueError, match="aspect"):
        cam.scaled(640, 360)
    check_depth_size(cam, 320, 240)
    with pytest.raises(ValueError, match="aspect"):
        check_depth_size(cam, 640, 360)


@pytest.mark.parametrize("model,d", [("plumb_bob", D5), ("rational_polynomial", D5[:5] + [0.01, -0.002, 0.001]),
                                     ("equidistant", [0.05, -0.01, 0.002, -0.0005])])
def test_rays_invert_the_distorted_projection(model, d):
    cam = CameraModel.from_camera_info_fields(640, 480, K9, d, model, "cam")
    rx, ry = cam.rays()
    ys, xs = np.mgrid[0:480:13, 0:640:17]
    uv = cam.project(np.stack([rx[ys, xs].ravel(), ry[ys, xs].ravel(), np.ones(ys.size)], axis=1))
    assert np.abs(uv - np.stack([xs.ravel(), ys.ravel()], axis=1)).max() < 0.01


# ---- depth encodings --------------------------------------------------------------------------

def test_depth_to_metres():
    mm = np.array([[0, 1000], [1500, 65535]], dtype=np.uint16)
    m = depth_to_metres(mm, "16UC1")
    assert m.dtype == np.float32 and np.isnan(m[0, 0])
    np.testing.assert_allclose(m[[0, 1, 1], [1, 0, 1]], [1.0, 1.5, 65.535], rtol=1e-6)
    f = np.array([[0.0, np.nan], [np.inf, 2.5], [-1.0, 0.25]], dtype=np.float32)
    m = depth_to_metres(f, "32FC1")
    assert np.isnan(m[[0, 0, 1, 2], [0, 1, 0, 0]]).all() and m[1, 1] == 2.5 and m[2, 1] == 0.25
    assert np.isnan(f[1, 0]) == False  # noqa: E712 (the input is left alone)


@pytest.mark.parametrize("array,encoding,match", [
    (np.zeros((4, 4), np.uint8), "8UC1", "encoding"),
    (np.zeros((4, 4), np.uint16), "mono16", "encoding"),
    (np.zeros((4, 4), np.float32), "16UC1", "uint16"),
    (np.zeros((4, 4), np.uint16), "32FC1", "float32"),
    (np.zeros((4, 4, 3), np.uint16), "16UC1", "one channel"),
])
def test_bad_depth_encoding_raises(array, encoding, match):
    with pytest.raises(ValueError, match=match):
        depth_to_metres(array, encoding)


# ---- stamp pairing ----------------------------------------------------------------------------
MS = 1_000_000


def test_pairing_exact_and_nearest():
    p = DepthPairer(tolerance_ns=10 * MS, capacity=10)
    for t in (0, 33, 66, 100):
        p.add(t * MS, f"d{t}")
    assert p.take(33 * MS) == "d33"
    assert p.take(64 * MS) == "d66"          # nearest within tolerance
    assert p.take(80 * MS) is None           # 100 is 20 ms away, 66 is already used
    assert p.take(100 * MS) == "d100"
    c = p.counters
    assert (c["paired_exact"], c["paired_nearest"], c["colour_unpaired"]) == (2, 1, 1)
    assert c["depth_unpaired"] == 1          # d0: older than any colour frame still to come
    assert len(p) == 0


def test_pairing_depth_early_late_missing():
    p = DepthPairer(tolerance_ns=5 * MS, capacity=30, idle_s=60.0)
    # Early: depth frames come before their colour frames.
    for i in range(5):
        p.add(i * 33 * MS, i)
    assert [p.take(i * 33 * MS) for i in range(5)] == [0, 1, 2, 3, 4]
    # Missing: no depth for this colour frame; it goes 2D and the next one still pairs.
    p.add(7 * 33 * MS, 7)
    assert p.take(6 * 33 * MS, timeout_s=0.05) is None
    assert p.take(7 * 33 * MS) == 7
    # Late: the depth frame arrives while the colour frame waits for it.
    t = 8 * 33 * MS
    threading.Timer(0.2, p.add, args=(t + 2 * MS, 8)).start()
    t0 = time.monotonic()
    assert p.take(t, timeout_s=60.0) == 8
    assert time.monotonic() - t0 < 30.0      # woken by the frame, not by the timeout
    # Too late: a colour frame that waited in vain is 2D, and the depth frame that turns up
    # afterwards is dropped as unpairable rather than pairing with a later colour frame.
    assert p.take(9 * 33 * MS, timeout_s=0.05) is None
    p.add(9 * 33 * MS, 9)
    assert p.take(10 * 33 * MS) is None
    c = p.counters
    assert c["paired_exact"] == 6 and c["paired_nearest"] == 1 and c["colour_unpaired"] == 3
    assert c["depth_unpaired"] >= 1


def test_pairing_waits_only_while_a_better_partner_can_come():
    p = DepthPairer(tolerance_ns=20 * MS, capacity=10, idle_s=60.0)
    p.add(95 * MS, "early")
    p.add(104 * MS, "after")     # a frame after the colour stamp: nothing nearer can follow
    t0 = time.monotonic()
    assert p.take(100 * MS, timeout_s=60.0) == "after"
    assert time.monotonic() - t0 < 30.0


def test_pairing_depth_at_another_rate():
    """Depth at 15 Hz, colour at 30 Hz with 8 ms stamp jitter: every colour frame that has a
    depth frame within the tolerance gets exactly that one, the others go 2D."""
    rng = np.random.default_rng(0)
    p = DepthPairer(tolerance_ns=10 * MS, capacity=8)
    colour = [int(i * 1e9 / 30) for i in range(90)]
    depth = [int(i * 1e9 / 15 + rng.integers(-4, 5) * MS) for i in range(45)]
    expected = []
    for c in colour:
        near = [d for d in depth if abs(d - c) <= 10 * MS]
        expected.append(near[0] if near else None)
    got = []
    di = 0
    for c in colour:
        while di < len(depth) and depth[di] <= c + 15 * MS:   # depth runs a little ahead
            p.add(depth[di], depth[di])
            di += 1
        got.append(p.take(c))
    assert got == expected
    assert sum(g is not None for g in got) == 45
    assert p.counters["colour_unpaired"] == 45


def test_pairing_does_not_wait_without_a_depth_stream():
    p = DepthPairer(tolerance_ns=5 * MS, capacity=5, idle_s=0.5)
    t0 = time.monotonic()
    assert p.take(0, timeout_s=30.0) is None          # no depth ever: no wait
    p.add(33 * MS, "d")
    assert p.take(33 * MS, timeout_s=30.0) == "d"
    time.sleep(0.6)                                   # the depth stream stopped
    assert p.take(66 * MS, timeout_s=30.0) is None
    assert time.monotonic() - t0 < 20.0


def test_pairing_queue_is_bounded():
    p = DepthPairer(tolerance_ns=1 * MS, capacity=5)
    for i in range(50):
        p.add(i * MS, i)
    assert len(p) == 5 and p.counters["depth_dropped_full"] == 45
    assert p.take(49 * MS) == 49 and p.take(10 * MS) is None


def test_pairing_threads():
    """A producer thread adds depth while the consumer takes with a timeout: every frame pairs
    with its own depth frame."""
    p = DepthPairer(tolerance_ns=1 * MS, capacity=50, idle_s=60.0)
    n = 200
    p.add(0, 0)  # the stream is live before the consumer starts (else take() does not wait)

    def produce():
        for i in range(1, n):
            p.add(i * 33 * MS, i)
            time.sleep(0.0005)

    th = threading.Thread(target=produce)
    th.start()
    got = [p.take(i * 33 * MS, timeout_s=60.0) for i in range(n)]
    th.join()
    assert got == list(range(n))


# ---- the 3D estimate on the synthetic scene ---------------------------------------------------

@pytest.fixture(scope="module")
def scene_cache(davis_root):
    from steerseg_testing.synthetic_rgbd import SceneConfig, SyntheticRGBDScene

    cache = {}

    def get(corruptions=(), **kw):
        key = (tuple(corruptions), tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = SyntheticRGBDScene(SceneConfig(corruptions=tuple(corruptions), **kw), davis_root=davis_root)
        return cache[key]
    return get


def accuracy(scene, camera=None, **options):
    errors, ok = [], 0
    for f in scene:
        o = estimate_object_3d(f.mask, f.depth_m, camera or scene.camera, **options)
        assert o.valid, o.reason
        errors.append(float(np.linalg.norm(np.asarray(o.position) - f.position)))
        ok += within_bound(o.position, f.position)
    return ok / len(scene), float(np.median(errors)), float(np.max(errors))


@pytest.mark.parametrize("corruptions", [(), ("noise",), ("holes",), ("flying",), ("spill",),
                                         ("noise", "holes", "flying", "spill")],
                         ids=["clean", "noise", "holes", "flying", "spill", "all"])
def test_3d_accuracy_per_corruption(scene_cache, corruptions):
    scene = scene_cache(corruptions)
    zs = [scene.pose(i)[0][2] for i in range(len(scene))]
    assert min(zs) >= 0.99 and max(zs) <= 2.01   # the range: 1-2 m
    frac, median, worst = accuracy(scene)
    print(f"\n3D accuracy [{'+'.join(corruptions) or 'clean'}]: {frac:.1%} of {len(scene)} frames within "
          f"2 cm and 2% of z; median error {median * 1000:.1f} mm, worst {worst * 1000:.1f} mm")
    assert frac >= 0.95


def test_depth_from_16uc1_millimetres(scene_cache):
    scene = scene_cache(("noise",), n_frames=10)
    ok = 0
    for f in scene:
        o = estimate_object_3d(f.mask, depth_to_metres(f.depth_mm, "16UC1"), scene.camera)
        ok += within_bound(o.position, f.position)
    assert ok >= 0.95 * len(scene)


def test_ignoring_distortion_fails(scene_cache):
    """The same clean scene with D dropped: the back-projection is off by centimetres where
    the object is away from the image centre."""
    scene = scene_cache(())
    frac_d, median_d, _ = accuracy(scene)
    frac_0, median_0, _ = accuracy(scene, camera=scene.camera.without_distortion())
    print(f"\nwith D: {frac_d:.1%} within bound, median {median_d * 1000:.1f} mm; "
          f"ignoring D: {frac_0:.1%}, median {median_0 * 1000:.1f} mm")
    assert frac_d >= 0.95
    assert frac_0 <= 0.8 and median_0 > 5 * max(median_d, 0.001)


def test_mask_and_depth_at_other_sizes(scene_cache):
    """A half-size depth image (same aspect) and a half-size mask give the full-size answer."""
    import cv2

    scene = scene_cache(("noise",), n_frames=8)
    for f in scene:
        full = estimate_object_3d(f.mask, f.depth_m, scene.camera)
        half_depth = cv2.resize(f.depth_m, (320, 240), interpolation=cv2.INTER_NEAREST)
        a = estimate_object_3d(f.mask, half_depth, scene.camera)
        half_mask = cv2.resize(f.mask.astype(np.uint8), (320, 240), interpolation=cv2.INTER_NEAREST) > 0
        b = estimate_object_3d(half_mask, f.depth_m, scene.camera)
        for o in (a, b):
            assert o.valid and np.linalg.norm(np.subtract(o.position, full.position)) < 0.01
    with pytest.raises(ValueError, match="aspect"):
        estimate_object_3d(f.mask, np.zeros((300, 300), np.float32), scene.camera)


def test_extent_spread_and_points(scene_cache):
    scene = scene_cache(("spill", "flying", "noise"), n_frames=6)
    for f in scene:
        o = estimate_object_3d(f.mask, f.depth_m, scene.camera, max_points=500)
        ys, xs = np.nonzero(f.mask_true)
        z = f.depth_clean_m[ys, xs]
        rx, ry = scene.camera.rays()
        true_pts = np.stack([rx[ys, xs] * z, ry[ys, xs] * z, z], axis=1)
        lo, hi = np.percentile(true_pts, [5, 95], axis=0)
        np.testing.assert_allclose(o.extent_min, lo, atol=0.03)
        np.testing.assert_allclose(o.extent_max, hi, atol=0.03)
        np.testing.assert_allclose(o.size, np.subtract(o.extent_max, o.extent_min))
        # stderr: the median's own and the mask-boundary term (its coverage: test_depth_stderr.py)
        assert all(s > 0 for s in o.std) and 0 < o.stderr < 0.05 and o.n_valid > 500
        pts = object_points(f.mask, f.depth_m, scene.camera, max_points=300)
        assert pts.shape[1] == 3 and 100 < pts.shape[0] <= 300 and pts.dtype == np.float32
        assert o.points.shape[0] <= 500
        # No background points (the wall is 1.2 m or more behind): every point is near the object.
        assert pts[:, 2].min() > true_pts[:, 2].min() - 0.1 and pts[:, 2].max() < true_pts[:, 2].max() + 0.1


# ---- hand-made cases --------------------------------------------------------------------------

def flat_scene(obj_mask, z_obj=1.5, z_wall=2.8, cam=None):
    cam = cam or CameraModel.from_camera_info_fields(640, 480, K9, D5, "plumb_bob", "cam")
    depth = np.full((480, 640), z_wall, np.float32)
    depth[obj_mask] = z_obj
    rx, ry = cam.rays()
    truth = np.array([np.median(rx[obj_mask]) * z_obj, np.median(ry[obj_mask]) * z_obj, z_obj])
    return cam, depth, truth


def test_thin_object_with_spilled_mask():
    """A 3-pixel-wide pole: erosion would wipe it out, so the estimator keeps the whole mask
    and the depth mode leaves out the spill onto the wall behind."""
    import cv2

    pole = np.zeros((480, 640), bool)
    pole[100:400, 300:303] = True
    cam, depth, truth = flat_scene(pole)
    spilled = cv2.dilate(pole.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0  # 4 px each side: 11 of 3
    o = estimate_object_3d(spilled, depth, cam)
    assert o.valid and within_bound(o.position, truth)
    assert o.n_valid <= pole.sum()


def test_nearest_dominant_mode_wins_over_a_bigger_spill():
    """The mask spills over a wall pixel for every object pixel: the object (nearer, with at
    least the chosen share of the biggest mode) is still the answer."""
    obj = np.zeros((480, 640), bool)
    obj[200:260, 280:340] = True
    cam, depth, truth = flat_scene(obj)
    mask = np.zeros_like(obj)
    mask[190:270, 270:350] = True     # 6400 pixels, 3600 on the object
    mask[200:280, 350:380] = True     # more wall
    o = estimate_object_3d(mask, depth, cam)
    assert o.valid and abs(o.position[2] - 1.5) < 0.01


def test_holes_and_invalid_results():
    obj = np.zeros((480, 640), bool)
    obj[200:300, 250:350] = True
    cam, depth, truth = flat_scene(obj)
    holed = depth.copy()
    holed[200:300, 250:300] = np.nan          # the left half of the object has no return
    o = estimate_object_3d(obj, holed, cam)
    assert o.valid and within_bound(o.position, truth)
    assert o.n_valid == 25 * 50  # read on every other row and column: 10,000 mask pixels > max_pixels
    o = estimate_object_3d(np.zeros_like(obj), depth, cam)
    assert not o.valid and "empty" in o.reason
    o = estimate_object_3d(obj, np.full_like(depth, np.nan), cam)
    assert not o.valid and "too few" in o.reason and o.n_valid == 0
    assert object_points(obj, np.full_like(depth, np.nan), cam, 10).shape == (0, 3)


def test_equidistant_camera():
    cam = CameraModel.from_camera_info_fields(640, 480, [300.0, 0, 319.5, 0, 300.0, 239.5, 0, 0, 1],
                                              [0.05, -0.01, 0.002, -0.0005], "equidistant", "cam")
    obj = np.zeros((480, 640), bool)
    obj[50:120, 480:560] = True               # far off-centre, where the fisheye bends most
    _, depth, truth = flat_scene(obj, cam=cam)
    o = estimate_object_3d(obj, depth, cam)
    assert within_bound(o.position, truth)
    o_plain = estimate_object_3d(obj, depth, CameraModel(640, 480, cam.K, np.zeros(5), "plumb_bob"))
    assert np.linalg.norm(np.subtract(o_plain.position, truth)) > 0.05


def test_options_override():
    obj = np.zeros((480, 640), bool)
    obj[200:300, 250:350] = True
    cam, depth, truth = flat_scene(obj)
    o = estimate_object_3d(obj, depth, cam, percentiles=(0.0, 100.0))
    assert o.size[0] > estimate_object_3d(obj, depth, cam).size[0]
    with pytest.raises(TypeError):
        estimate_object_3d(obj, depth, cam, no_such_option=1)
    assert EstimatorOptions().percentiles == (5.0, 95.0)


def test_bench_depth3d_section(tmp_path, davis_root):
    """steerseg-bench --sections depth3d reports the 3D step's cost at both sizes (a figure, not
    asserted: a test does not time things) and skips with the reason without the data."""
    import json

    from steerseg_bench import cli as bench

    assert bench.main(["--sections", "depth3d", "--frames", "3", "--data", str(davis_root), "--out", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "bench.json").read_text())["sections"]["depth3d"]
    assert entry["status"] == "ok", entry
    for size in ("640x480", "1280x720"):
        assert entry["figures"][f"{size}.object3d_median_ms"] > 0
        assert 0 < entry["figures"][f"{size}.share_of_frame"] < 1
    assert bench.main(["--sections", "depth3d", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 0
    entry = json.loads((tmp_path / "b" / "bench.json").read_text())["sections"]["depth3d"]
    assert entry["status"] == "skipped" and "not found" in entry["reason"]


def test_raw_depth_with_zeros_and_inf():
    """A depth array not passed through depth_to_metres (zeros, inf, negatives for no return)
    gives the same answer as its NaN form."""
    obj = np.zeros((480, 640), bool)
    obj[200:260, 250:330] = True
    cam, depth, truth = flat_scene(obj)
    rng = np.random.default_rng(1)
    bad = rng.random(depth.shape) < 0.2
    raw = depth.copy()
    raw[bad] = rng.choice(np.array([0.0, np.inf, -1.0], np.float32), size=int(bad.sum()))
    clean = depth.copy()
    clean[bad] = np.nan
    a, b = estimate_object_3d(obj, raw, cam), estimate_object_3d(obj, clean, cam)
    assert a.valid and within_bound(a.position, truth)
    np.testing.assert_allclose(a.position, b.position, atol=1e-6)
    assert a.n_valid == b.n_valid
