"""Seeding a track from a mask (Pipeline.seed_mask), the path `steerseg-demo --seed-mask` and
the node's `seed_mask` topic take: the track starts on the frame the mask was drawn on, is
caught up to the live frame, and is then stepped like any other track, with no command.

The tracker here moves every mask one pixel to the right per frame, so a test knows exactly
where a correctly caught-up mask must be.
"""
import numpy as np
import pytest

from steerseg_ros.frame import NS_PER_S

from steerseg_ros.streaming.buffer import KeyframeConfig
from steerseg_ros.grounding.base import Grounder
from steerseg_ros.streaming.pipeline import Pipeline, PipelineConfig, PipelineState, SeedRejected, TrackState
from steerseg_ros.tracking.base import MaskCandidate, ObjectMask, ObjectState, Tracker

H, W = 40, 60


class NeverGrounder(Grounder):
    """Seeded tracks must not trigger grounding: any call fails the test."""

    name = "never"

    def ground(self, keyframes, command):
        raise AssertionError("seeding must not ground")


class ShiftTracker(Tracker):
    """Every advance or step moves the mask one pixel right."""

    name = "shift"

    def __init__(self):
        self.live = {}

    def segment(self, frame, points, labels):
        return [MaskCandidate(np.zeros((H, W), bool), 0.0)]

    def start(self, frame, *, points=None, labels=None, mask=None):
        return ObjectState(frame.seq, ObjectMask(mask.copy(), 1.0))

    def advance(self, state, frame):
        return ObjectMask(np.roll(state.result.mask, 1, axis=1), 0.9)

    def attach(self, obj_id, state):
        self.live[obj_id] = state

    def remove(self, obj_id):
        self.live.pop(obj_id, None)

    def step(self, frame):
        for state in self.live.values():
            state.result = self.advance(state, frame)
            state.seq = frame.seq
        return {i: s.result for i, s in self.live.items()}

    @property
    def object_ids(self):
        return list(self.live)


def square(x, y, size=6):
    mask = np.zeros((H, W), bool)
    mask[y:y + size, x:x + size] = True
    return mask


def stamp(i):
    return int((1.0 + i / 10.0) * NS_PER_S)


@pytest.fixture(params=[False, True], ids=["synchronous", "asynchronous"])
def pipeline(request):
    config = PipelineConfig(buffer_size=16, keyframes=KeyframeConfig(count=4), asynchronous=request.param)
    p = Pipeline(NeverGrounder(), ShiftTracker(), config)
    yield p
    p.close()


def feed(p, start, count):
    out = None
    for i in range(start, start + count):
        out = p.process(np.full((H, W, 3), i, np.uint8), stamp(i), "cam", f"{i:05d}")
    return out


def test_seed_on_a_past_frame_is_caught_up_to_the_live_one(pipeline):
    feed(pipeline, 0, 5)  # frames 0..4; the mask was drawn on frame 1
    view = pipeline.seed_mask(square(10, 10), stamp(1), label="cup")
    assert view.state == TrackState.TRACKING
    assert view.label == "cup" and view.command == ""
    # caught up through frames 2, 3, 4: three pixels right of where it was drawn
    np.testing.assert_array_equal(view.mask, square(13, 10))
    out = feed(pipeline, 5, 1)
    assert out.state == PipelineState.TRACKING
    assert [t.id for t in out.tracks] == [view.id]
    np.testing.assert_array_equal(out.tracks[0].mask, square(14, 10))
    # the label image paints it with the track's value
    assert set(np.unique(out.label_image())) == {0, view.label_value}
    assert pipeline.stats["tracks_seeded"] == 1


def test_seed_on_the_newest_frame_by_default(pipeline):
    feed(pipeline, 0, 3)
    view = pipeline.seed_mask(square(20, 5))
    np.testing.assert_array_equal(view.mask, square(20, 5))
    np.testing.assert_array_equal(feed(pipeline, 3, 1).tracks[0].mask, square(21, 5))


def test_seeded_tracks_keep_running_without_a_command(pipeline):
    feed(pipeline, 0, 2)
    pipeline.seed_mask(square(5, 5))
    out = feed(pipeline, 2, 20)  # past any grounding or re-grounding period
    assert pipeline.command is None
    assert out.state == PipelineState.TRACKING
    assert pipeline.stats["groundings"] == 0


def test_a_command_replaces_seeded_tracks(pipeline):
    feed(pipeline, 0, 2)
    seeded = pipeline.seed_mask(square(5, 5))
    pipeline.set_command("the red cup")
    out = feed(pipeline, 2, 1)
    ended = [t for t in out.tracks if t.id == seeded.id]
    assert ended and ended[0].state == TrackState.REPLACED
    assert out.visible_tracks() == []


@pytest.mark.parametrize("kwargs, message, reason", [
    (dict(mask=square(1, 1), stamp_ns=stamp(99)), "no buffered frame", "no_frame"),
    (dict(mask=np.ones((H, W + 1), bool)), "the frame is", "size"),
    (dict(mask=np.zeros((H, W), bool)), "empty", "empty"),
])
def test_bad_seeds_are_refused(pipeline, kwargs, message, reason):
    """Each kind of bad seed has its own reason key (the node counts them apart)."""
    feed(pipeline, 0, 2)
    with pytest.raises(SeedRejected, match=message) as info:
        pipeline.seed_mask(**kwargs)
    assert info.value.reason == reason
    assert pipeline.state == PipelineState.IDLE


def test_seed_before_any_frame_is_refused(pipeline):
    with pytest.raises(ValueError, match="no buffered frame"):
        pipeline.seed_mask(square(1, 1))
