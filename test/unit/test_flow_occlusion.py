"""The built-in tracker (tracking/flow.py) under full occlusion: a textured wall slides over a
DAVIS object, hides it for 2 s and slides away. While the object is hidden the tracker must not
be confident (a robot would drive at the wall); while it is in plain view it must stay confident.

The scene is built here (offline/following_scenes.py, the project's scene builder, did not exist
when this was written): the sequence played forth and back at 15 fps, downscaled to 427x240 (the
tracker's own working width, so no work is lost), and a wall, a flipped crop of another
sequence's frame, sliding in from the left, standing over the object for 2 s and sliding out to
the right. The ground truth is exact: the object's mask less the wall.

Sequences are the development ones (blackswan, camel, car-shadow); cows, dog, goat, kite-surf and
parkour are held out for measurement. Measured (2026-12, default config), hidden frames with a
confident mask, of 94: 36 before the occlusion cues (car-shadow 26 of 31: its mask slid off onto
the road beside the wall; blackswan 8: a sliver left on the wall's edge regaining confidence),
0 after. Counts, never times.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import load_davis
from steerseg_ros.frame import Frame
from steerseg_ros.offline.metrics import region_j
from steerseg_ros.streaming.pipeline import PipelineConfig
from steerseg_ros.tracking.flow import FlowTracker, FlowTrackerConfig

FPS = 15.0
SIZE = (427, 240)
MIN_CONFIDENCE = PipelineConfig().min_confidence
# Each sequence with the one its wall's texture comes from.
SCENES = {"blackswan": "bmx-trees", "camel": "car-shadow", "car-shadow": "blackswan"}


def ping_pong(n: int, length: int) -> list[int]:
    """Frame indices of a clip of n frames played forth and back, `length` of them."""
    cycle = list(range(n)) + list(range(n - 2, 0, -1))
    return [cycle[i % len(cycle)] for i in range(length)]


def wall_scene(images, masks, texture, lead_s=1.5, slide_s=0.5, hide_s=2.0, tail_s=1.5):
    """(frames, visible masks, hidden flags, untouched flags) of `images` played forth and back
    with a wall sliding over the object: in from the left over slide_s, standing over the object
    (wherever it goes in that time, with a margin) for hide_s, out to the right over slide_s.
    `untouched`: the wall does not reach the object on that frame (it is in plain view)."""
    w, h = SIZE
    images = [cv2.resize(im, SIZE, interpolation=cv2.INTER_AREA) for im in images]
    masks = [cv2.resize(m.astype(np.uint8), SIZE, interpolation=cv2.INTER_NEAREST) > 0 for m in masks]
    n_lead, n_slide, n_hide, n_tail = (int(round(s * FPS)) for s in (lead_s, slide_s, hide_s, tail_s))
    order = ping_pong(len(images), n_lead + 2 * n_slide + n_hide + n_tail)
    standing = range(n_lead + n_slide, n_lead + n_slide + n_hide)
    xs = np.nonzero(np.any([masks[order[t]] for t in standing], axis=0).any(axis=0))[0]
    margin = max(8, w // 40)
    left, right = max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)
    wall_w = right - left
    tex = cv2.resize(texture, (max(w, wall_w), h), interpolation=cv2.INTER_AREA)[::-1, ::-1, :]
    tex = np.ascontiguousarray(tex[:, :wall_w])
    # The wall's left edge over time: off screen, sliding in, standing, sliding out, gone.
    keys = [(0, -wall_w), (n_lead - 1, -wall_w), (n_lead + n_slide - 1, left),
            (n_lead + n_slide + n_hide - 1, left), (n_lead + 2 * n_slide + n_hide - 1, w), (len(order), w)]
    edge = np.round(np.interp(np.arange(len(order)), *zip(*keys))).astype(int)
    frames, visible, hidden, untouched = [], [], [], []
    for t, (i, x) in enumerate(zip(order, edge)):
        image, vis = images[i].copy(), masks[i].copy()
        a, b = max(0, x), min(w, x + wall_w)
        if b > a:
            image[:, a:b] = tex[:, a - x:b - x]
            vis[:, a:b] = False
        frames.append(Frame(t, int(round(t * 1e9 / FPS)), image, "camera"))
        visible.append(vis)
        hidden.append(not vis.any())
        untouched.append(b <= a or not masks[i][:, a:b].any())
    return frames, visible, np.array(hidden), np.array(untouched)


def track(frames, seed):
    tracker = FlowTracker()
    tracker.attach(1, tracker.start(frames[0], mask=seed))
    results = [tracker.step(f)[1] for f in frames[1:]]
    return tracker, results


@pytest.fixture(scope="module")
def scenes(davis_root):
    out = {}
    for seq, other in SCENES.items():
        _, images, masks = load_davis(davis_root, seq)
        _, textures, _ = load_davis(davis_root, other, count=1)
        out[seq] = wall_scene(images, masks, textures[0])
    return out


def test_a_fully_hidden_object_gets_no_confident_mask(scenes):
    hidden_total = hidden_confident = 0
    seen_total = seen_confident = 0
    for seq, (frames, visible, hidden, untouched) in scenes.items():
        _, results = track(frames, visible[0])
        scores = np.array([r.score for r in results])
        hidden, untouched = hidden[1:], untouched[1:]
        assert 25 <= np.count_nonzero(hidden) <= 35, seq  # the scene hides the object for about 2 s
        hidden_total += np.count_nonzero(hidden)
        hidden_confident += np.count_nonzero(hidden & (scores >= MIN_CONFIDENCE))
        # In plain view before the wall reaches it, where the tracker is on the object.
        on_object = untouched & np.array([region_j(r.mask, v) >= 0.5 for r, v in zip(results, visible[1:])])
        seen_total += np.count_nonzero(on_object)
        seen_confident += np.count_nonzero(on_object & (scores >= MIN_CONFIDENCE))
    assert hidden_total >= 75
    assert hidden_confident <= 0.05 * hidden_total, f"confident on {hidden_confident} of {hidden_total} hidden frames"
    # Measured 98 of 105 before the occlusion cues and after them.
    assert seen_total >= 60
    assert seen_confident >= 0.9 * seen_total, f"confident on {seen_confident} of {seen_total} frames in plain view"


def test_the_reference_learns_nothing_while_the_object_is_hidden(scenes):
    """The reference colours and size change only on confidently tracked frames: whatever the
    mask lies on while the object is hidden is never learnt as the object."""
    frames, visible, hidden, _ = scenes["car-shadow"]
    tracker = FlowTracker()
    state = tracker.start(frames[0], mask=visible[0])
    tracker.attach(1, state)
    first_hidden = int(np.argmax(hidden))
    for f in frames[1:first_hidden]:
        tracker.step(f)
    ref_hist, ref_area, colours = state.ref_hist.copy(), state.ref_area, state.fg_hist.copy()
    for f in frames[first_hidden:first_hidden + 20]:
        assert tracker.step(f)[1].score < tracker.config.reference_min_score
    np.testing.assert_array_equal(state.ref_hist, ref_hist)
    assert state.ref_area == ref_area
    assert not np.array_equal(state.fg_hist, colours)  # the segmentation's colour model did move


@pytest.mark.parametrize("seq", ["car-shadow", "camel"])
def test_a_moving_object_in_plain_view_stays_confident(davis_root, seq):
    """No wall: the occlusion cues must not doubt a visible object that moves and turns.
    Measured: every frame confident on both before and after the cues."""
    _, images, masks = load_davis(davis_root, seq, count=40)
    images = [cv2.resize(im, SIZE, interpolation=cv2.INTER_AREA) for im in images]
    masks = [cv2.resize(m.astype(np.uint8), SIZE, interpolation=cv2.INTER_NEAREST) > 0 for m in masks]
    frames = [Frame(i, int(round(i * 1e9 / 24)), im, "camera") for i, im in enumerate(images)]
    _, results = track(frames, masks[0])
    assert np.mean([region_j(r.mask, m) for r, m in zip(results, masks[1:])]) > 0.6
    assert sum(r.score >= MIN_CONFIDENCE for r in results) >= len(results) - 1


def turning_square():
    """A small textured square on a still, textured background, moving right 7 px a frame at
    15 fps and then back at once (a turn, as at a clip's end, or the camera starting to pan)."""
    rng = np.random.default_rng(0)
    background = (cv2.GaussianBlur(rng.integers(0, 256, (240, 427, 3), dtype=np.uint8), (0, 0), 3) // 2)
    square = cv2.GaussianBlur(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), (0, 0), 1.5)
    square[..., 2] = 230
    xs = [150 + 7 * i for i in range(12)] + [150 + 7 * (10 - i) for i in range(12)]
    frames, masks = [], []
    for i, x in enumerate(xs):
        image = background.astype(np.uint8)
        image[100:128, x:x + 28] = square
        mask = np.zeros((240, 427), bool)
        mask[100:128, x:x + 28] = True
        frames.append(Frame(i, int(round(i * 1e9 / FPS)), image, "camera"))
        masks.append(mask)
    return frames, masks


def test_an_object_that_turns_back_stays_confident_unless_the_motion_fit_cue_is_on():
    """By default a tracked object that turns back at once stays confident; with the motion-fit
    cue on (motion_change_limit) the same, perfectly tracked, object is doubted from the turn on
    and its confidence climbs back only slowly. Measured: every frame on the object (J = 1),
    scores >= 0.99 off; 0.00 at the turn, 0.24 eleven frames later, on."""
    frames, masks = turning_square()
    turn = 11  # results[11] is frames[12], the first frame moving back
    for limit in (None, 0.3):
        tracker = FlowTracker(FlowTrackerConfig() if limit is None else FlowTrackerConfig(motion_change_limit=limit))
        tracker.attach(1, tracker.start(frames[0], mask=masks[0]))
        results = [tracker.step(f)[1] for f in frames[1:]]
        assert all(region_j(r.mask, m) > 0.9 for r, m in zip(results, masks[1:]))
        scores = np.array([r.score for r in results])
        assert (scores[:turn] >= MIN_CONFIDENCE).all()
        if limit is None:
            assert (scores >= MIN_CONFIDENCE).all()
        else:
            assert (scores[turn:] < MIN_CONFIDENCE).all()


def test_occlusion_settings_are_validated():
    FlowTrackerConfig(motion_change_limit=0).validate()  # 0 turns the motion-fit cue off
    for bad in (dict(reference_min_score=1.5), dict(reference_update=-0.1), dict(appearance_floor=1.0),
                dict(min_extent=0), dict(motion_change_limit=-1)):
        with pytest.raises(ValueError):
            FlowTrackerConfig(**bad).validate()
