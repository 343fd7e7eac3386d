"""The streaming pipeline's state machine: grounding, tracking, re-grounding, loss, commands,
bad frames, and the asynchronous worker with catch-up.

The backends here are small deterministic implementations of the Grounder and Tracker
interfaces, so each test knows exactly which object grounding points at; the real backends
have their own tests and run through this same pipeline in the end-to-end tests.
"""
import threading
import time

import numpy as np
import pytest

from steerseg_ros.frame import NS_PER_S

from steerseg_ros.streaming.buffer import KeyframeConfig
from steerseg_ros.grounding.base import Grounder, GroundingError, GroundingResult, PointPrompt
from steerseg_ros.streaming.pipeline import FrameRejected, Pipeline, PipelineConfig, PipelineState, TrackState
from steerseg_ros.grounding.prompts import points_from_maps
from steerseg_ros.tracking.base import MaskCandidate, ObjectMask, ObjectState, Tracker

H, W = 60, 80
FPS = 10.0


class PeakGrounder(Grounder):
    """Grounds every command on the cell at `where` (fractions of width, height)."""

    name = "peak"

    def __init__(self, where=(0.25, 0.5)):
        self.where = where
        self.calls = []
        self.gate = None          # a threading.Event that ground() waits for
        self.fail = False
        self.find_nothing = False

    def ground(self, keyframes, command):
        self.calls.append((command, [f.seq for f in keyframes]))
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise GroundingError("the model ran out of memory")
        maps = np.zeros((len(keyframes), 6, 8), np.float32)
        if not self.find_nothing:
            maps[:, int(self.where[1] * 6), int(self.where[0] * 8)] = 1.0
        return GroundingResult(command, self.name, list(keyframes), maps,
                               points_from_maps(maps, (W, H), 0.8), class_word="thing")


def cell_centre(where):
    """Pixel centre of the 8x6 grid cell that PeakGrounder marks for `where`."""
    return (int(where[0] * 8) + 0.5) * W / 8, (int(where[1] * 6) + 0.5) * H / 6


def disk(x, y, r=6):
    yy, xx = np.mgrid[:H, :W]
    return (xx - x) ** 2 + (yy - y) ** 2 <= r * r


class DiskTracker(Tracker):
    """Objects are disks that stay where they were seeded; `score` is what every step reports."""

    name = "disk"

    def __init__(self):
        self.score = 0.9
        self.live = {}
        self.advanced = []
        self.velocity = 0  # pixels per frame that live objects move to the right

    def segment(self, frame, points, labels):
        return [MaskCandidate(disk(*points[0]), 0.9)]

    def start(self, frame, *, points=None, labels=None, mask=None):
        return ObjectState(frame.seq, ObjectMask(mask if mask is not None else disk(*points[0]), 1.0))

    def advance(self, state, frame):
        # The state itself is kept, so that its id() is never reused by a later one.
        self.advanced.append((id(state), frame.seq, state))
        return ObjectMask(state.result.mask, self.score)

    def attach(self, obj_id, state):
        self.live[obj_id] = state

    def remove(self, obj_id):
        self.live.pop(obj_id, None)

    def step(self, frame):
        for s in self.live.values():
            s.result = ObjectMask(np.roll(s.result.mask, self.velocity, axis=1), self.score)
        return {i: ObjectMask(s.result.mask, self.score) for i, s in self.live.items()}

    @property
    def object_ids(self):
        return list(self.live)


def config(**kw):
    base = dict(buffer_size=32, keyframes=KeyframeConfig(count=4, window_s=1.0, min_spacing_s=0.0),
                min_keyframes=3, regrounding_period_s=0.0, lost_timeout_s=0.5, asynchronous=False)
    base.update(kw)
    return PipelineConfig(**base)


class Feed:
    """Feeds frames at FPS with increasing stamps."""

    def __init__(self, pipeline):
        self.p = pipeline
        self.i = 0

    def __call__(self, n=1):
        out = None
        for _ in range(n):
            out = self.p.process(np.full((H, W, 3), self.i % 255, np.uint8), int(self.i / FPS * NS_PER_S))
            self.i += 1
        return out


@pytest.fixture
def setup():
    grounder, tracker = PeakGrounder(), DiskTracker()
    pipelines = []

    def make(**kw):
        p = Pipeline(grounder, tracker, config(**kw))
        pipelines.append(p)
        return p, Feed(p)

    yield grounder, tracker, make
    for p in pipelines:
        p.close()


def test_command_is_grounded_once_enough_keyframes_exist_then_tracked(setup):
    grounder, tracker, make = setup
    p, feed = make()
    assert feed().state == PipelineState.IDLE and not grounder.calls
    p.set_command("  the   red cup ")
    assert p.command == "the red cup"
    out = feed()
    assert out.state == PipelineState.GROUNDING and not out.tracks  # 2 frames < min_keyframes
    out = feed()
    assert grounder.calls == [("the red cup", [0, 1, 2])]
    assert out.state == PipelineState.TRACKING
    assert len(out.groundings) == 1 and out.groundings[0].command == "the red cup"
    (track,) = out.tracks
    assert track.id == 1 and track.state == TrackState.TRACKING and track.label == "thing"
    assert np.array_equal(track.mask, disk(*cell_centre(grounder.where)))
    x, y = cell_centre(grounder.where)
    assert out.label_image()[int(y), int(x)] == track.label_value and out.label_image()[0, 0] == 0
    for _ in range(5):
        out = feed()
        assert [t.id for t in out.tracks] == [1] and not out.groundings
    assert len(grounder.calls) == 1  # no re-grounding when the period is 0


def test_regrounding_that_finds_the_same_object_keeps_the_id(setup):
    grounder, _, make = setup
    p, feed = make(regrounding_period_s=0.5)
    p.set_command("the cup")
    ids = set()
    for _ in range(30):
        ids |= {t.id for t in feed().tracks}
    assert len(grounder.calls) >= 5
    assert ids == {1}
    assert p.stats["tracks_confirmed"] >= 4


def test_regrounding_that_finds_another_object_twice_in_a_row_replaces_the_track(setup):
    grounder, _, make = setup
    p, feed = make(regrounding_period_s=0.5)  # replace_after=2 by default
    p.set_command("the cup")
    feed(4)
    grounder.where = (0.75, 0.5)
    first = [feed() for _ in range(5)]  # one re-grounding: it disagrees, the track stays
    assert len(grounder.calls) == 2 and p.stats["regroundings_disputed"] == 1
    assert all([t.id for t in o.tracks] == [1] for o in first)
    outputs = [feed() for _ in range(6)]  # the second disagreeing re-grounding replaces it
    ended = [t for o in outputs for t in o.tracks if t.state == TrackState.REPLACED]
    assert [(t.id, t.replaced_by) for t in ended] == [(1, 2)]
    assert [t.id for t in outputs[-1].tracks] == [2]
    x, y = cell_centre(grounder.where)
    assert outputs[-1].tracks[0].mask[int(y), int(x)]


def test_one_wrong_regrounding_does_not_swap_the_target(setup):
    grounder, _, make = setup
    p, feed = make(regrounding_period_s=0.5)
    p.set_command("the cup")
    feed(4)
    ids = set()
    for where in [(0.75, 0.5), (0.25, 0.5), (0.75, 0.5), (0.25, 0.5)]:
        grounder.where = where  # every other re-grounding points elsewhere
        for _ in range(5):
            ids |= {t.id for t in feed().tracks}
    assert len(grounder.calls) == 5
    assert ids == {1} and p.stats["tracks_replaced"] == 0
    assert p.stats["regroundings_disputed"] == 2 and p.stats["tracks_confirmed"] == 2


def test_replace_after_one_swaps_at_the_first_disagreement(setup):
    grounder, _, make = setup
    p, feed = make(regrounding_period_s=0.5, replace_after=1)
    p.set_command("the cup")
    feed(4)
    grounder.where = (0.75, 0.5)
    outputs = [feed() for _ in range(5)]
    assert [(t.id, t.replaced_by) for o in outputs for t in o.tracks if t.state == TrackState.REPLACED] == [(1, 2)]


def test_regrounding_is_reconciled_on_the_keyframe_it_used_not_on_the_live_frame(setup):
    grounder, tracker, make = setup
    p, feed = make(regrounding_period_s=0.5)
    p.set_command("the cup")
    feed(3)
    tracker.velocity = 3  # the object now moves right, 3 px a frame: 15 px per 0.5 s
    original = grounder.ground

    def where_it_was_on_the_oldest_keyframe(keyframes, command):
        # The grounding finds the object where it was on the oldest keyframe with the track (it looks at
        # the past); the catch-up of this double does not move it, so on the live frame the new
        # target and the track do not overlap at all.
        r = original(keyframes, command)
        k, old = next((k, m) for k, f in enumerate(keyframes) if (m := p._tracks[1].mask_at(f.seq)) is not None)
        assert k < len(keyframes) - 1 and not np.array_equal(old, p._tracks[1].mask)
        ys, xs = np.nonzero(old)
        r.points = [PointPrompt(k, float(xs.mean()), float(ys.mean()), 1.0)]
        return r

    grounder.ground = where_it_was_on_the_oldest_keyframe
    outputs = [feed() for _ in range(8)]
    assert p.stats["tracks_confirmed"] >= 1
    assert {t.id for o in outputs for t in o.tracks} == {1}
    assert not any(t.state == TrackState.REPLACED for o in outputs for t in o.tracks)


def test_a_regrounding_that_confirms_a_confident_track_costs_no_catch_up(setup):
    """By default (reseed_confirmed false) a re-grounding that finds the confident track again
    leaves it as it is: the same tracker state goes on, and no frame is stepped to catch a
    re-seeded copy up (those steps would take the cores from the live tracking). With
    reseed_confirmed the track is re-seeded from the grounding and caught up."""
    for reseed in (False, True):
        grounder, tracker = PeakGrounder(), DiskTracker()
        p = Pipeline(grounder, tracker, config(regrounding_period_s=0.5, reseed_confirmed=reseed))
        feed = Feed(p)
        p.set_command("the cup")
        feed(4)
        state = tracker.live[1]
        tracker.advanced.clear()
        ids = {t.id for _ in range(12) for t in feed().tracks}
        p.close()
        assert ids == {1} and len(grounder.calls) >= 3
        assert p.stats["tracks_confirmed"] >= 2
        if reseed:
            assert tracker.live[1] is not state and tracker.advanced
            assert p.stats["tracks_confirmed_as_they_are"] == 0
        else:
            assert tracker.live[1] is state
            assert p.stats["tracks_confirmed_as_they_are"] == p.stats["tracks_confirmed"]
            assert p.stats["catch_up_frames"] == 0
            # The tracker was only stepped for the candidate tracklets, on keyframes.
            assert {seq for _, seq, _ in tracker.advanced} <= {f for _, c in grounder.calls for f in c}


def test_a_lost_track_found_again_is_reseeded_from_the_grounding(setup):
    """Only a confident track is confirmed as it is: a LOST one that a grounding finds again
    is re-seeded from the grounded mask and keeps its id."""
    grounder, tracker, make = setup
    p, feed = make(lost_timeout_s=0.5, grounding_retry_s=0.3)
    p.set_command("the cup")
    feed(3)
    tracker.score = 0.1
    grounder.find_nothing = True
    feed(7)
    assert p.state == PipelineState.LOST
    lost_state = tracker.live[1]
    stepped = tracker.step

    def step(frame):  # the lost object's own state never finds it again
        return {i: ObjectMask(m.mask, 0.1) if tracker.live[i] is lost_state else m for i, m in stepped(frame).items()}

    tracker.step = step
    tracker.score, grounder.find_nothing = 0.9, False
    feed(4)
    assert p.state == PipelineState.TRACKING and [t.id for t in feed().tracks] == [1]
    assert tracker.live[1] is not lost_state and p.stats["tracks_confirmed_as_they_are"] == 0


def test_track_is_lost_after_the_timeout_and_regrounding_recovers_it(setup):
    grounder, tracker, make = setup
    p, feed = make(lost_timeout_s=0.5, grounding_retry_s=0.3)
    p.set_command("the cup")
    feed(3)
    tracker.score = 0.1  # below min_confidence: the object left the view
    grounder.find_nothing = True
    calls = len(grounder.calls)
    outs = [feed() for _ in range(7)]
    states = [o.tracks[0].state for o in outs]
    # Within the 0.5 s timeout the track holds its id, UNSEEN: its doubted mask is not published.
    assert states[:5] == [TrackState.UNSEEN] * 5
    assert not any(o.visible_tracks() or o.label_image().any() for o in outs)
    assert states[-1] == TrackState.LOST and p.state == PipelineState.LOST
    assert len(grounder.calls) > calls  # losing the track started a re-grounding
    tracker.score = 0.9  # the object is back
    grounder.find_nothing = False
    feed(4)
    assert p.state == PipelineState.TRACKING
    assert [t.id for t in feed().tracks] == [1]


def test_a_new_command_ends_the_old_tracks_at_once(setup):
    grounder, _, make = setup
    p, feed = make()
    p.set_command("the cup")
    feed(4)
    p.set_command("the bowl")
    out = feed()
    assert [(t.id, t.state) for t in out.tracks if t.command == "the cup"] == [(1, TrackState.REPLACED)]
    out = feed(3)
    assert [(t.id, t.command) for t in out.tracks] == [(2, "the bowl")]


def test_empty_and_huge_commands_are_rejected_and_change_nothing(setup):
    _, _, make = setup
    p, feed = make()
    p.set_command("the cup")
    for bad in ("", "   \n\t", "x" * 100_000):
        with pytest.raises(GroundingError):
            p.set_command(bad)
    assert p.command == "the cup"


def test_frames_stepping_back_in_time_are_rejected_and_a_big_jump_restarts(setup):
    _, _, make = setup
    p, feed = make(time_jump_reset_s=0.3)
    p.set_command("the cup")
    feed(4)
    img = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(FrameRejected) as e:
        p.process(img, int(2.5 / FPS * NS_PER_S))  # between frames 2 and 3: behind the newest (3)
    assert e.value.reason == "stamp" and p.stats["rejected_stamp"] == 1
    assert [t.id for t in feed().tracks] == [1]  # tracking goes on
    out = p.process(img, 0)  # 0.4 s back, to the start: the source restarted
    assert p.stats["time_resets"] == 1
    assert [(t.id, t.state) for t in out.tracks] == [(1, TrackState.REPLACED)]
    assert len(p.buffer) == 1 and p.command == "the cup"


def test_bad_images_are_rejected(setup):
    _, _, make = setup
    p, _ = make()
    for bad in (np.zeros((H, W), np.uint8), np.zeros((0, W, 3), np.uint8), np.zeros((H, W, 3), np.float32)):
        with pytest.raises(FrameRejected) as e:
            p.process(bad, 1)
        assert e.value.reason == "bad_image"
    assert p.stats["rejected_bad_image"] == 3 and len(p.buffer) == 0


def test_grounding_failures_are_counted_and_retried(setup):
    grounder, _, make = setup
    p, feed = make(grounding_retry_s=0.3)
    grounder.fail = True
    p.set_command("the cup")
    feed(8)
    assert p.stats["grounding_failures"] >= 2 and p.state == PipelineState.GROUNDING
    grounder.fail = False
    feed(4)
    assert p.state == PipelineState.TRACKING


def test_a_grounding_that_finds_nothing_starts_no_track(setup):
    grounder, _, make = setup
    p, feed = make(grounding_retry_s=10.0)
    grounder.find_nothing = True
    p.set_command("the unicorn")
    out = feed(6)
    assert p.stats["groundings_empty"] == 1 and not out.tracks and len(out.groundings) == 0


def test_masks_keep_flowing_while_grounding_runs_and_catch_up_lands_on_the_live_frame(setup):
    grounder, tracker, make = setup
    # A confirming re-grounding that re-seeds the track: caught up like a new target.
    p, feed = make(asynchronous=True, regrounding_period_s=0.5, reseed_confirmed=True)
    p.set_command("the cup")
    feed(3)
    deadline = time.monotonic() + 10
    while len(grounder.calls) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    feed(3)
    while not p.state == PipelineState.TRACKING and time.monotonic() < deadline:
        time.sleep(0.01)
        feed()
    assert p.state == PipelineState.TRACKING
    # Now block the next (re-)grounding and keep feeding frames: every frame still gets its
    # mask, and the track shows that a re-grounding is running.
    grounder.gate = threading.Event()
    calls = len(grounder.calls)
    states = []
    for _ in range(15):
        out = feed()
        assert [t.id for t in out.tracks] == [1]
        states.append(out.tracks[0].state)
    while len(grounder.calls) == calls and time.monotonic() < deadline:
        time.sleep(0.01)  # the worker thread picks the job up
    assert len(grounder.calls) == calls + 1  # started, and still blocked
    assert TrackState.REGROUNDING in states
    keyframe_seq = grounder.calls[-1][1][-1]
    tracker.advanced.clear()
    grounder.gate.set()
    while p.grounding_running() and time.monotonic() < deadline:
        time.sleep(0.01)
    live = p.buffer.latest().seq
    # The re-grounded object was caught up through every buffered frame after its keyframe,
    # up to the live frame, before it was attached.
    attached = tracker.live[1]
    assert [seq for sid, seq, _ in tracker.advanced if sid == id(attached)] == list(range(keyframe_seq + 1, live + 1))
    assert attached.seq == live
    grounder.gate = None
    assert [t.id for t in feed().tracks] == [1]


def test_catch_up_goes_through_at_most_the_cap_evenly_and_ends_on_the_live_frame(setup):
    grounder, tracker, make = setup
    p, feed = make(buffer_size=64, max_catch_up_frames=5,
                   keyframes=KeyframeConfig(count=4, window_s=5.0, min_spacing_s=0.0))
    feed(40)
    p.set_command("the cup")
    grounder.where = (0.25, 0.5)
    # Make the grounding choose the oldest keyframe: only it has the peak.
    original = grounder.ground

    def oldest_only(keyframes, command):
        r = original(keyframes, command)
        r.maps[1:] = 0
        r.points = [q for q in r.points if q.keyframe_index == 0]
        return r

    grounder.ground = oldest_only
    feed()
    seed_seq = grounder.calls[-1][1][0]
    attached = tracker.live[1]
    path = [seq for sid, seq, _ in tracker.advanced if sid == id(attached)]
    assert len(path) == 5 and path[-1] == 40 == attached.seq
    assert path == sorted(path) and path[0] > seed_seq
    assert p.stats["catch_up_frames_skipped"] == 40 - seed_seq - 5


def test_a_catch_up_slower_than_the_camera_still_ends_and_attaches_the_track(setup):
    """The worker chases the live frame while the camera thread keeps stepping; when catching
    up one frame takes longer than a camera frame lasts, the chase stops and the rest is done
    under the lock, through at most max_catch_up_frames frames in all: the track still starts."""
    grounder, tracker, make = setup
    p, feed = make(asynchronous=True, buffer_size=64, max_catch_up_frames=8)
    slow = tracker.advance

    def slow_advance(state, frame):
        time.sleep(0.02)  # each catch-up frame costs two camera frames (fed every 10 ms)
        return slow(state, frame)

    tracker.advance = slow_advance
    p.set_command("the cup")
    deadline = time.monotonic() + 20
    while p.state != PipelineState.TRACKING and time.monotonic() < deadline:
        feed()
        time.sleep(0.01)
    assert p.state == PipelineState.TRACKING
    assert p.stats["catch_up_chases_stopped"] >= 1
    assert tracker.live[1].seq == p.buffer.latest().seq
    # The chase and the final pass together stayed within the cap (one more frame when the live
    # frame moved on after the budget was spent): a chase that went on round after round took
    # the cores from the live tracking beside it for seconds after every grounding.
    path = [seq for sid, seq, _ in tracker.advanced if sid == id(tracker.live[1])]
    assert 1 <= len(path) <= 8 + 1, path
    assert p.stats["catch_up_frames"] <= 8 + 1


def test_track_history_stays_bounded(setup):
    _, _, make = setup
    p, feed = make(buffer_size=8, keyframes=KeyframeConfig(count=4, window_s=1.0, min_spacing_s=0.0))
    p.set_command("the cup")
    feed(100)
    assert len(p._tracks[1].history) <= 8
    assert len(p.buffer) == 8


def test_invalid_configuration_is_rejected():
    for bad in (config(buffer_size=2), config(min_keyframes=9), config(lost_timeout_s=-1),
                config(min_confidence=1.5), config(max_catch_up_frames=-1)):
        with pytest.raises(ValueError):
            bad.validate()


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_an_answer_for_an_old_command_is_discarded_and_counted(setup):
    """A grounding that finishes after the command changed (a slow or remote grounder) starts
    no track for the old command."""
    grounder, tracker, make = setup
    p, feed = make(asynchronous=True)
    grounder.gate = threading.Event()
    p.set_command("the cup")
    feed(4)
    assert _wait(lambda: len(grounder.calls) == 1)
    p.set_command("the bowl")
    grounder.gate.set()
    assert _wait(lambda: p.stats["groundings_stale"] == 1)
    assert [t for t in feed().tracks if t.command == "the cup"] == []


def test_an_answer_whose_keyframes_left_the_buffer_is_discarded_and_swaps_no_track(setup):
    """A re-grounding that answers after its keyframes have left the buffer (here it points at
    another object) is dropped and counted: the live track keeps its id and its object."""
    grounder, tracker, make = setup
    p, feed = make(asynchronous=True, buffer_size=8, regrounding_period_s=0.3, replace_after=1)

    def feeding(predicate):  # a frame per poll: the pipeline starts groundings on frames
        return _wait(lambda: predicate() or (feed() is None))

    p.set_command("the cup")
    assert feeding(lambda: p.state == PipelineState.TRACKING)
    out = feed()
    assert [t.id for t in out.tracks] == [1]
    first_mask = out.tracks[0].mask
    grounder.gate = threading.Event()
    grounder.where = (0.75, 0.5)  # the late answer points elsewhere
    calls = len(grounder.calls)
    assert feeding(lambda: len(grounder.calls) > calls)
    feed(10)  # more than the buffer holds: the keyframes are gone
    grounder.gate.set()
    assert _wait(lambda: p.stats["groundings_expired"] == 1)
    grounder.find_nothing = True  # later re-groundings must not decide this test
    grounder.gate = None
    out = feed()
    assert [t.id for t in out.tracks] == [1]
    assert np.array_equal(out.tracks[0].mask, first_mask)
    assert p.stats["tracks_replaced"] == 0
def test_a_target_whose_keyframe_left_the_buffer_is_seeded_on_a_newer_keyframe_without_a_gap(setup):
    """The worker paces a re-grounding's candidate tracklets while its newest keyframe is well
    inside the buffer, so older keyframes may leave it meanwhile. A target then chosen on such a
    keyframe is seeded on the oldest newer keyframe still buffered, from its tracklet's mask
    there (and compared with the tracks there): the catch-up skips no frame, and the answer is
    not discarded."""
    grounder, tracker, make = setup
    p, feed = make(asynchronous=True, buffer_size=8, regrounding_period_s=0.3, replace_after=1)

    def feeding(predicate):
        return _wait(lambda: predicate() or (feed() is None))

    p.set_command("the cup")
    assert feeding(lambda: p.state == PipelineState.TRACKING)
    feed()
    grounder.gate = threading.Event()
    grounder.where = (0.75, 0.5)  # the re-grounding points at another object: it replaces the track
    original = grounder.ground

    def best_on_the_oldest_keyframe(keyframes, command):
        r = original(keyframes, command)
        r.points = [PointPrompt(q.keyframe_index, q.x, q.y, 1.0 - 0.01 * q.keyframe_index) for q in r.points]
        return r

    grounder.ground = best_on_the_oldest_keyframe
    calls = len(grounder.calls)
    assert feeding(lambda: len(grounder.calls) > calls)
    keyframe_seqs = grounder.calls[-1][1]
    feed(3)  # the oldest keyframes leave the 8-frame buffer; the tracks' masks there stay
    assert p.buffer.get(keyframe_seqs[0]) is None and p.buffer.get(keyframe_seqs[-1]) is not None
    gaps = p.stats["catch_up_gaps"]
    grounder.gate.set()
    assert _wait(lambda: p.stats["tracks_replaced"] == 1)
    grounder.find_nothing = True  # later re-groundings must not decide this test
    grounder.gate = None
    assert p.stats["groundings_expired"] == 0
    assert p.stats["catch_up_gaps"] == gaps  # no frame skipped
    (track,) = [t for t in feed().tracks if t.state == TrackState.TRACKING]
    x, y = cell_centre(grounder.where)
    assert track.id == 2 and track.mask[int(y), int(x)]
    # It was seeded on a keyframe still buffered, newer than the one its point came from.
    seeded = [seq for sid, seq, st in tracker.advanced if st is tracker.live[2]]
    assert seeded and seeded[0] - 1 in keyframe_seqs[1:]


@pytest.mark.parametrize("change", ["size", "time"])
def test_a_restart_during_catch_up_is_counted_and_does_not_advise_raising_buffer_size(change, caplog):
    """The stream restarts (the image size changes, or time jumps back) just as a grounded
    object starts its catch-up: the object is dropped quietly. Before, the catch-up ran on over
    the new stream's frames and logged "catch-up skipped N frames that left the buffer: raise
    buffer_size", advice that is wrong there."""
    grounder, tracker = PeakGrounder(), DiskTracker()
    p = Pipeline(grounder, tracker, config(asynchronous=True, time_jump_reset_s=0.2))
    gate, entered = threading.Event(), threading.Event()
    catch_up = p._catch_up

    def gated_catch_up(state, upto, budget, **kwargs):
        if upto is None:  # the worker's chase, after it checked that the command still holds
            entered.set()
            assert gate.wait(10)
        return catch_up(state, upto, budget, **kwargs)

    p._catch_up = gated_catch_up
    try:
        feed = Feed(p)
        p.set_command("the cup")
        feed(3)  # grounding starts on the 3rd frame (seq 2)
        assert entered.wait(10)
        feed(3)  # the old stream goes on a little
        first_new_seq = p.buffer.latest().seq + 1
        shape = (H + 8, W, 3) if change == "size" else (H, W, 3)
        for i in range(6):  # the new stream
            stamp = (feed.i + i) / FPS if change == "size" else i / FPS
            p.process(np.zeros(shape, np.uint8), int(stamp * NS_PER_S))
        with caplog.at_level("WARNING", logger="steerseg_ros"):
            gate.set()
            deadline = time.monotonic() + 10
            while p.grounding_running() and time.monotonic() < deadline:
                time.sleep(0.01)
        assert not p.grounding_running()
        assert "raise buffer_size" not in caplog.text
        assert p.stats["catch_up_gaps"] == 0
        # the object of the old stream was not carried on over the new stream's frames
        assert all(seq < first_new_seq for _, seq, _ in tracker.advanced), tracker.advanced
        assert p.stats["size_changes" if change == "size" else "time_resets"] == 1
        assert p.stats["grounding_failures"] == 0
    finally:
        gate.set()
        p.close()


class RecordingEvent(threading.Event):
    """The worker's pause: records each pause it is asked for and returns at once."""

    def __init__(self):
        super().__init__()
        self.pauses = []

    def wait(self, timeout=None):
        self.pauses.append(timeout)
        return False


def test_the_worker_pauses_between_its_tracker_steps_only_while_tracks_are_live(setup, monkeypatch):
    """With worker_duty 0.25 the grounding worker's tracker steps (candidate tracklets, the
    catch-up chase) take at most a quarter of the time while something is tracked: after a step
    that took t it pauses 3 t, so the live tracking beside it keeps the interpreter and the cores.
    The first grounding, with nothing tracked yet, does not pause (the user waits for its first
    mask), and neither do offline runs (asynchronous false)."""
    import steerseg_ros.streaming.pipeline as pipeline_module

    grounder, tracker, make = setup
    clock = {"now": 0.0}
    monkeypatch.setattr(pipeline_module.time, "perf_counter", lambda: clock["now"])
    real_segment, real_advance = tracker.segment, tracker.advance

    def segment(*args, **kwargs):
        clock["now"] += 0.04  # every tracker call "takes" 40 ms on the fake clock
        return real_segment(*args, **kwargs)

    def advance(*args, **kwargs):
        clock["now"] += 0.04
        return real_advance(*args, **kwargs)

    tracker.segment, tracker.advance = segment, advance
    p, feed = make(asynchronous=True, regrounding_period_s=0.5, worker_duty=0.25)
    pauses = p._paced._stop = RecordingEvent()
    p.set_command("the cup")
    deadline = time.monotonic() + 20
    feed(3)
    while p.state != PipelineState.TRACKING and time.monotonic() < deadline:
        feed()
        time.sleep(0.01)
    assert p.state == PipelineState.TRACKING
    assert pauses.pauses == []  # the first grounding ran unpaced
    groundings = p.stats["groundings"]
    while (p.stats["groundings"] == groundings or p.grounding_running()) and time.monotonic() < deadline:
        feed()
        time.sleep(0.01)
    assert p.stats["groundings"] > groundings
    # (start() took no time on the fake clock: a pause of 0 after it)
    stepped = [pause for pause in pauses.pauses if pause > 0]
    assert stepped and all(pause == pytest.approx(3 * 0.04) for pause in stepped), pauses.pauses

    # Offline (inline grounding): never paced, whatever worker_duty says.
    offline, feed_offline = make(worker_duty=0.25, regrounding_period_s=0.5)
    offline_pauses = offline._paced._stop = RecordingEvent()
    offline.set_command("the cup")
    feed_offline(20)
    assert offline.stats["groundings"] >= 2 and offline_pauses.pauses == []


def test_worker_duty_must_be_a_share():
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="worker_duty"):
            config(worker_duty=bad).validate()


def test_the_worker_does_not_pause_when_nothing_confident_is_tracked_or_its_frames_are_about_to_go(setup):
    """Pausing protects live masks; it must never cost the grounding itself. With every track
    LOST there are no live masks to protect; and once the oldest frame the worker still needs is
    in the oldest quarter of the buffer, a pause could make its keyframe leave the buffer (and the
    re-grounding be discarded): the worker then runs at full speed."""
    grounder, tracker, make = setup
    p, feed = make(asynchronous=True, regrounding_period_s=0.0, buffer_size=32)
    p.set_command("the cup")
    deadline = time.monotonic() + 20
    while p.state != PipelineState.TRACKING and time.monotonic() < deadline:
        feed()
        time.sleep(0.01)
    feed(10)
    (track,) = p._tracks.values()
    latest = p.buffer.latest().seq
    p._needed_seq = latest - 5
    assert p._pace_now()  # a confident track, the needed frame well inside the buffer
    p._needed_seq = latest - 24  # the oldest quarter of 32 frames
    assert not p._pace_now()
    p._needed_seq = latest - 5
    track.state = TrackState.LOST
    assert not p._pace_now()
