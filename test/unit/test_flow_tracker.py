"""The built-in tracker (steerseg_ros.tracking.flow) on real DAVIS frames.

Floors are set from steerseg_bench/davis_tracker.py and the measurements noted beside each, with a
margin; they guard against a tracker that stops tracking, not against small regressions.
"""
from __future__ import annotations

import threading
import tracemalloc

import cv2
import numpy as np
import pytest

from conftest import load_davis
from steerseg_ros.streaming.backends import make_tracker
from steerseg_ros.frame import Frame
from steerseg_ros.offline.metrics import region_j
from steerseg_ros.tracking.base import TrackerError
from steerseg_ros.tracking.flow import FlowTracker, FlowTrackerConfig

FRAME_NS = 40_000_000  # 25 fps


def frames_of(images, first_seq: int = 0) -> list[Frame]:
    return [Frame(first_seq + i, (first_seq + i) * FRAME_NS, im, "camera") for i, im in enumerate(images)]


def interior_point(mask: np.ndarray) -> np.ndarray:
    """The pixel of the mask farthest from its boundary, as a (1, 2) x, y array."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return np.array([[x, y]], np.float32)


def load_judo(root, count: int = 16):
    """Judo frames and its palette masks (one object added per annotated frame), as
    {frame index: {object id: bool mask}}. The palette is DAVIS's: id 1 red, 2 green, 3 olive,
    4 blue (read here as BGR colours, so no palette reader is needed)."""
    names = sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg"))[:count]
    images = [cv2.cvtColor(cv2.imread(str(root / "JPEGImages" / f"{n}.jpg")), cv2.COLOR_BGR2RGB) for n in names]
    palette = {1: (0, 0, 128), 2: (0, 128, 0), 3: (0, 128, 128), 4: (128, 0, 0)}
    masks = {}
    for i, n in enumerate(names):
        path = root / "Annotations" / f"{n}.png"
        if not path.exists():
            continue
        bgr = cv2.imread(str(path))
        h, w = images[i].shape[:2]
        bgr = cv2.copyMakeBorder(bgr[:h, :w], 0, h - min(h, bgr.shape[0]), 0, w - min(w, bgr.shape[1]),
                                 cv2.BORDER_CONSTANT, value=0)  # one annotation is a pixel narrower
        masks[i] = {k: np.all(bgr == c, axis=2) for k, c in palette.items() if np.all(bgr == c, axis=2).any()}
    return images, masks


# Measured at frame 20 (2026-11, default config): blackswan 0.92, cows 0.87, car-shadow 0.74.
@pytest.mark.parametrize("seq, floor", [("blackswan", 0.8), ("cows", 0.75), ("car-shadow", 0.6)])
def test_tracks_a_davis_object_seeded_with_its_ground_truth(davis_root, seq, floor):
    _, images, gts = load_davis(davis_root, seq, count=21)
    frames = frames_of(images)
    tracker = FlowTracker()
    tracker.attach(1, tracker.start(frames[0], mask=gts[0]))
    for f in frames[1:]:
        out = tracker.step(f)
        assert set(out) == {1}
        assert out[1].mask.shape == gts[0].shape and out[1].mask.dtype == bool
    assert region_j(out[1].mask, gts[-1]) > floor
    assert out[1].score > 0.5


def test_detached_catch_up_then_attach_matches_live_tracking(davis_root):
    """An object seeded on a past frame and caught up in another thread while the live object
    steps ends with the same masks as the object tracked live all along."""
    _, images, gts = load_davis(davis_root, "dog", count=14)
    frames = frames_of(images)
    tracker = FlowTracker()
    tracker.attach(1, tracker.start(frames[0], mask=gts[0]))
    caught_up = {}

    def worker():  # the grounding worker's part: seed on the keyframe, catch up
        state = tracker.start(frames[0], mask=gts[0])
        for f in frames[1:10]:
            state.result = tracker.advance(state, f)
        caught_up["state"] = state

    thread = threading.Thread(target=worker)
    thread.start()
    live = [tracker.step(f)[1] for f in frames[1:10]]  # the camera thread meanwhile
    thread.join()
    state = caught_up["state"]
    assert state.seq == frames[9].seq
    assert np.array_equal(state.result.mask, live[-1].mask)
    tracker.attach(2, state)
    for f in frames[10:]:
        out = tracker.step(f)
        assert np.array_equal(out[1].mask, out[2].mask)
        assert out[1].score == pytest.approx(out[2].score)
    assert out[1].mask.any()


# Measured at frame 0 after 7 jumps of 4 frames from frame 28: blackswan 0.91, cows 0.85.
@pytest.mark.parametrize("seq, floor", [("blackswan", 0.8), ("cows", 0.7)])
def test_advance_jumps_between_keyframes_backward_in_time(davis_root, seq, floor):
    """Tracklets are built by advancing a seed from keyframe to keyframe, forward and backward."""
    _, images, gts = load_davis(davis_root, seq, count=29)
    frames = frames_of(images)
    tracker = FlowTracker()
    state = tracker.start(frames[28], mask=gts[28])
    for k in range(24, -1, -4):
        state.result = tracker.advance(state, frames[k])
        state.seq = frames[k].seq
    assert region_j(state.result.mask, gts[0]) > floor
    assert state.result.score > 0.5


def test_adding_and_removing_an_object_does_not_disturb_another(judo_root):
    images, masks = load_judo(judo_root)
    frames = frames_of(images)
    first, added = masks[0][1], masks[5][2]

    reference = FlowTracker()
    reference.attach(1, reference.start(frames[0], mask=first))
    expected = [reference.step(f)[1].mask for f in frames[1:]]

    tracker = FlowTracker()
    tracker.attach(1, tracker.start(frames[0], mask=first))
    for i, f in enumerate(frames[1:], start=1):
        if i == 6:
            tracker.attach(2, tracker.start(frames[5], mask=added))  # seeded on the frame just stepped
        if i == 11:
            tracker.remove(2)
            tracker.remove(99)  # unknown ids are ignored
        out = tracker.step(f)
        assert np.array_equal(out[1].mask, expected[i - 1]), f"object 1 changed on frame {i}"
        if 6 <= i < 11:
            assert set(out) == {1, 2} and out[2].mask.any()
            assert region_j(out[1].mask, out[2].mask) < 0.2  # two different people
        else:
            assert set(out) == {1}
    assert tracker.object_ids == [1]
    tracker.reset()
    assert tracker.object_ids == [] and tracker.step(frames[-1]) == {}


# Measured (precision / recall of the top candidate, first frame, most interior point): camel
# 0.82 / 0.74, car-shadow 0.98 / 0.38, goat 0.87 / 0.71. Over all 10 sequences the top candidate
# holds to these floors on 5 (see the report: GrabCut's top pick is often a part or a spill).
@pytest.mark.parametrize("seq", ["camel", "car-shadow", "goat"])
def test_segment_from_a_point_inside_an_object_overlaps_it(davis_root, seq):
    _, images, gts = load_davis(davis_root, seq, count=1)
    gt = gts[0]
    candidates = FlowTracker().segment(Frame(0, 0, images[0]), interior_point(gt), np.array([1]))
    assert candidates
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    for c in candidates:
        assert c.mask.shape == gt.shape and c.mask.dtype == bool and c.mask.any()
    best = candidates[0].mask
    overlap = np.count_nonzero(best & gt)
    assert overlap / np.count_nonzero(best) > 0.7  # mostly on the object
    assert overlap / np.count_nonzero(gt) > 0.2  # and object-sized, not a speck


def test_points_seed_a_track(davis_root):
    _, images, gts = load_davis(davis_root, "camel", count=6)
    frames = frames_of(images)
    tracker = FlowTracker()
    state = tracker.start(frames[0], points=interior_point(gts[0]), labels=np.array([1]))
    tracker.attach(7, state)
    for f in frames[1:]:
        out = tracker.step(f)
    assert np.count_nonzero(out[7].mask & gts[-1]) / np.count_nonzero(out[7].mask) > 0.7


def test_confidence_drops_when_the_object_is_gone(davis_root):
    """A cut to another scene: the swan is not in those frames. Measured: about 0.98 while
    tracking, 0.05 on the first frame after the cut, 0.15 eight frames later."""
    _, swan, gts = load_davis(davis_root, "blackswan", count=11)
    _, elsewhere, _ = load_davis(davis_root, "bmx-trees", count=10)
    frames = frames_of(swan + elsewhere)
    tracker = FlowTracker()
    tracker.attach(1, tracker.start(frames[0], mask=gts[0]))
    scores = [tracker.step(f)[1].score for f in frames[1:]]
    tracking, gone = scores[:10], scores[10:]
    assert min(tracking) > 0.8
    assert gone[0] < 0.3
    assert max(gone) < 0.5  # stays below the pipeline's default confidence for 0.4 s


def test_state_stays_bounded_over_many_steps(davis_root):
    _, images, gts = load_davis(davis_root, "blackswan", count=12)
    small = [cv2.resize(im, (320, 180), interpolation=cv2.INTER_AREA) for im in images]
    seed = cv2.resize(gts[0].astype(np.uint8), (320, 180), interpolation=cv2.INTER_NEAREST) > 0
    order = list(range(12)) + list(range(10, 0, -1))  # back and forth through the clip
    tracker = FlowTracker(FlowTrackerConfig(flow_cache_pairs=4))
    state = tracker.start(Frame(0, 0, small[0]), mask=seed)
    tracker.attach(1, state)
    shapes = (state.mask.shape, state.fg_hist.shape, state.bg_hist.shape)
    tracemalloc.start()
    try:
        used = {}
        for seq in range(1, 131):
            out = tracker.step(Frame(seq, seq * FRAME_NS, small[order[seq % len(order)]]))
            if seq in (30, 130):
                used[seq] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert out[1].mask.any()
    assert (state.mask.shape, state.fg_hist.shape, state.bg_hist.shape) == shapes
    grown = used[130] - used[30]
    assert grown < 500_000, f"memory grew by {grown} bytes over 100 steps"


def test_bad_seeds_raise_tracker_error(davis_root):
    _, images, gts = load_davis(davis_root, "blackswan", count=1)
    frame, gt = Frame(0, 0, images[0]), gts[0]
    tracker = FlowTracker()
    inside = interior_point(gt)
    bad = [
        dict(mask=np.zeros_like(gt)),  # empty
        dict(mask=gt[:-1]),  # wrong shape
        dict(points=np.array([[900.0, 10.0]]), labels=np.array([1])),  # outside the 854x480 image
        dict(points=np.array([[-1.0, 10.0]]), labels=np.array([1])),
        dict(points=inside, labels=np.array([0])),  # no positive point
        dict(points=inside, labels=np.array([1, 1])),  # labels do not match
        dict(points=np.array([[np.nan, 3.0]]), labels=np.array([1])),
        dict(points=inside),  # no labels
        dict(),  # nothing
        dict(mask=gt, points=inside, labels=np.array([1])),  # both
    ]
    for kwargs in bad:
        with pytest.raises(TrackerError):
            tracker.start(frame, **kwargs)
    with pytest.raises(TrackerError, match="outside"):
        tracker.segment(frame, np.array([[10.0, 500.0]]), np.array([1]))
    with pytest.raises(TrackerError, match="positive"):
        tracker.segment(frame, inside, np.array([0]))


def test_a_resolution_change_loses_the_object_without_failing(davis_root):
    _, images, gts = load_davis(davis_root, "blackswan", count=2)
    tracker = FlowTracker()
    tracker.attach(1, tracker.start(Frame(0, 0, images[0]), mask=gts[0]))
    out = tracker.step(Frame(1, FRAME_NS, cv2.resize(images[1], (640, 360))))
    assert out[1].score == 0.0 and not out[1].mask.any() and out[1].mask.shape == (360, 640)


def test_registry_and_config_validation():
    tracker = make_tracker("builtin", {"work_width": 320})
    assert isinstance(tracker, FlowTracker) and tracker.config.work_width == 320
    for field_name, value in [("flow_preset", "slow"), ("colour_bins", 12), ("untrusted_confidence", 0.2),
                              ("segment_scales", []), ("flow_cache_pairs", 0), ("band_fraction", 0.0)]:
        with pytest.raises(ValueError, match=field_name):
            make_tracker("builtin", {field_name: value})
