"""Following through losses and late answers in the streaming core (no ROS): a doubted mask is not
published (UNSEEN), a doubted track re-grounds after unseen_regrounding_s and a LOST one at once,
then on the lost cadence, looking at the newest keyframes only; a doubted track gives way at once
to the object found elsewhere, and keeps its id when found inside its last confident mask; after
"not in view" a doubted track is not published again until a grounding confirms it; a target found only on an older keyframe is checked on the live frame; a
catch-up that ends on a doubted mask gives a LOST track; the object found again keeps its id; a
grounding's answer lands `grounding_latency_s` of camera time after it was asked for; and a
grounding can be asked for out of schedule.

The backends are the small deterministic ones of test_pipeline (each test knows where grounding
points); nothing here depends on how fast the machine is: every check counts frames of camera time.
"""
import time

import numpy as np

from steerseg_ros.grounding.base import GroundingResult
from steerseg_ros.grounding.prompts import points_from_maps
from steerseg_ros.streaming.pipeline import PipelineState, TrackState
from steerseg_ros.tracking.base import MaskCandidate, ObjectMask

from test_pipeline import FPS, H, W, DiskTracker, Feed, PeakGrounder, config, disk, setup  # noqa: F401 (setup: fixture)

from steerseg_ros.streaming.pipeline import Pipeline

ELSEWHERE = (0.75, 0.5)


class OldKeyframeGrounder(PeakGrounder):
    """With `only_old`, marks its cell on the oldest keyframe only (the object seen there, not
    since); grounding one frame alone (the live-frame check) marks the cell at `live_where`."""

    def __init__(self):
        super().__init__()
        self.only_old = False
        self.live_where = self.where

    def ground(self, keyframes, command):
        self.calls.append((command, [f.seq for f in keyframes]))
        maps = np.zeros((len(keyframes), 6, 8), np.float32)
        if len(keyframes) == 1 and self.only_old:
            maps[0, int(self.live_where[1] * 6), int(self.live_where[0] * 8)] = 1.0
        elif self.only_old:
            maps[0, int(self.where[1] * 6), int(self.where[0] * 8)] = 1.0
        elif not self.find_nothing:
            maps[:, int(self.where[1] * 6), int(self.where[0] * 8)] = 1.0
        return GroundingResult(command, self.name, list(keyframes), maps,
                               points_from_maps(maps, (W, H), 0.8), class_word="thing")


class DoubtingTracker(DiskTracker):
    """The live steps report `step_score`, except for objects attached while `sure_of_new` is
    set (0.9); the detached steps (candidate tracklets, catch-up) report `advance_score`."""

    def __init__(self):
        super().__init__()
        self.step_score = 0.9
        self.advance_score = 0.9
        self.sure_of_new = False

    def advance(self, state, frame):
        self.advanced.append((id(state), frame.seq, state))
        return ObjectMask(state.result.mask, self.advance_score)

    def attach(self, obj_id, state):
        state.sure = self.sure_of_new
        super().attach(obj_id, state)

    def step(self, frame):
        return {i: ObjectMask(s.result.mask, 0.9 if s.sure else self.step_score) for i, s in self.live.items()}


def make(grounder, tracker, **kw):
    p = Pipeline(grounder, tracker, config(**kw))
    return p, Feed(p)


def lose(p, feed, grounder, tracker, frames=12):
    """Start following, then hide the object until its track is LOST; the outputs while hiding."""
    p.set_command("the cup")
    feed(3)
    assert [t.state for t in p._tracks.values()] == [TrackState.TRACKING]
    tracker.step_score = tracker.score = 0.1
    grounder.find_nothing = True
    outs = []
    for _ in range(frames):
        outs.append(feed())
        if outs[-1].tracks and outs[-1].tracks[0].state == TrackState.LOST:
            break
    assert outs[-1].tracks[0].state == TrackState.LOST
    return outs


def follow_then_doubt(p, feed, tracker):
    """Start following, then let the tracker doubt the track's mask (while trusting the tracks
    started from now on); the followed track's id."""
    p.set_command("the cup")
    feed(3)
    first = next(iter(p._tracks))
    tracker.step_score = 0.1
    tracker.sure_of_new = True
    return first


def calls_per_frame(feed, grounder, n):
    """Feed n frames; the indices (from 0) of the frames on which a grounding was asked for."""
    on = []
    for i in range(n):
        before = len(grounder.calls)
        feed()
        if len(grounder.calls) > before:
            on.append(i)
    return on


def hide_and_watch(p, feed, grounder, tracker, n):
    """Start following, then hide the object (the tracker doubts its mask, the grounder finds
    nothing) for n frames: the track's state on each, and the frames (from 0) on which a
    grounding was asked for."""
    p.set_command("the cup")
    feed(3)
    tracker.step_score = tracker.score = 0.1
    grounder.find_nothing = True
    states, on = [], []
    for i in range(n):
        before = len(grounder.calls)
        states.append(feed().tracks[0].state)
        if len(grounder.calls) > before:
            on.append(i)
    return states, on


def test_a_lost_track_regrounds_on_the_frame_it_is_lost_then_every_lost_retry_s():
    grounder, tracker = PeakGrounder(), DoubtingTracker()
    # unseen_regrounding_s at the lost timeout: only LOST tracks re-ground.
    p, feed = make(grounder, tracker, lost_timeout_s=0.5, lost_retry_s=0.3, grounding_retry_s=5.0,
                   unseen_regrounding_s=0.5)
    try:
        states, on = hide_and_watch(p, feed, grounder, tracker, 15)
        lost_at = states.index(TrackState.LOST)
        # UNSEEN (not published) until the lost timeout, then LOST: grounded on that very frame,
        # then every 0.3 s (3 frames at 10 fps), not after grounding_retry_s (5 s).
        assert set(states[:lost_at]) == {TrackState.UNSEEN}
        assert [i - lost_at for i in on] == [0, 3, 6, 9][:len(range(lost_at, 15, 3))]
        assert p.state == PipelineState.LOST
    finally:
        p.close()


class SeenGrounder(PeakGrounder):
    """Says the object is in view wherever it marks it (an in-view answer, as the honest oracle,
    a VLM with in_view_check or SAM 3 give)."""

    def ground(self, keyframes, command):
        result = super().ground(keyframes, command)
        result.in_view = bool(result.points)
        return result


def test_a_doubted_track_regrounds_after_unseen_regrounding_s_without_waiting_to_be_lost():
    grounder, tracker = SeenGrounder(), DoubtingTracker()
    p, feed = make(grounder, tracker, lost_timeout_s=1.0, lost_retry_s=0.3, grounding_retry_s=5.0,
                   unseen_regrounding_s=0.2, lost_window_s=0.3, buffer_size=64)
    try:
        states, on = hide_and_watch(p, feed, grounder, tracker, 14)
        lost_at = states.index(TrackState.LOST)
        assert set(states[:lost_at]) == {TrackState.UNSEEN} and lost_at >= 9
        # UNSEEN from frame 0: grounded 0.2 s (2 frames) later, then every 0.3 s, and at once
        # again on the frame it is LOST.
        assert on[:3] == [2, 5, 8] and lost_at in on, (on, lost_at)
        # Each of them looked at the newest frames only (0.3 s at 10 fps), not the 3 s window.
        for _, seqs in grounder.calls[1:]:
            assert seqs[-1] - seqs[0] <= 3, seqs
    finally:
        p.close()


def test_a_doubted_track_is_replaced_at_once_by_a_look_now_grounding_that_sees_the_object_elsewhere():
    grounder, tracker = SeenGrounder(), DoubtingTracker()
    p, feed = make(grounder, tracker, lost_timeout_s=2.0, lost_retry_s=0.3, unseen_regrounding_s=0.0,
                   replace_after=3, regrounding_period_s=0.0)
    try:
        first = follow_then_doubt(p, feed, tracker)
        grounder.where = ELSEWHERE  # the object found elsewhere (a disk that does not touch it)
        outs = [feed() for _ in range(3)]
        # Not held out against replace_after (3) groundings as a confident track would be: the
        # first grounding after the doubt replaced it, and the new track is published.
        ended = [t for o in outs for t in o.tracks if t.state == TrackState.REPLACED]
        assert [t.id for t in ended] == [first]
        live = [t for t in outs[-1].tracks if t.state != TrackState.REPLACED]
        assert len(live) == 1 and live[0].id != first and live[0].state == TrackState.TRACKING
        assert p.stats["regroundings_disputed"] == 0
    finally:
        p.close()


def test_a_grounder_that_cannot_say_whether_the_object_is_in_view_regrounds_a_doubted_track_only_when_lost():
    grounder, tracker = PeakGrounder(), DoubtingTracker()  # no in-view answer: always finds something
    p, feed = make(grounder, tracker, lost_timeout_s=1.0, lost_retry_s=0.3, unseen_regrounding_s=0.0,
                   replace_after=3, regrounding_period_s=0.0)
    try:
        first = follow_then_doubt(p, feed, tracker)
        grounder.where = ELSEWHERE
        calls = len(grounder.calls)
        outs = [feed() for _ in range(8)]
        # Doubted but not yet LOST: no early re-grounding (its answer would be a guess), nothing
        # replaced, nothing published.
        assert len(grounder.calls) == calls
        assert not any(t.state == TrackState.REPLACED for o in outs for t in o.tracks)
        assert not any(o.visible_tracks() for o in outs)
        # Once it is LOST it is re-grounded, and the object found elsewhere is followed (under the
        # lost track's id: it was seen on none of the newest keyframes, so nothing tells them apart).
        outs = [feed() for _ in range(6)]
        assert len(grounder.calls) > calls and p.stats["tracks_reacquired"] == 1
        assert [t.id for t in outs[-1].visible_tracks()] == [first]
    finally:
        p.close()


def test_a_doubted_track_found_again_inside_its_last_confident_mask_keeps_its_id():
    grounder, tracker = SeenGrounder(), DoubtingTracker()
    p, feed = make(grounder, tracker, lost_timeout_s=2.0, lost_retry_s=0.3, unseen_regrounding_s=0.0,
                   regrounding_period_s=0.0)
    try:
        first = follow_then_doubt(p, feed, tracker)
        # The grounding segments a disk of half the radius, inside the old one (IoU 0.25).
        tracker.segment = lambda frame, points, labels: [MaskCandidate(disk(*points[0], r=3), 0.9)]
        outs = [feed() for _ in range(3)]
        assert not [t for o in outs for t in o.tracks if t.state == TrackState.REPLACED]
        assert [(t.id, t.state) for t in outs[-1].tracks] == [(first, TrackState.TRACKING)]
        assert p.stats["tracks_regained"] == 1
    finally:
        p.close()


def test_a_regrounding_after_a_loss_looks_at_the_newest_frames_only():
    grounder, tracker = PeakGrounder(), DoubtingTracker()
    p, feed = make(grounder, tracker, buffer_size=64, lost_timeout_s=0.5, lost_window_s=0.3,
                   regrounding_period_s=0.0)
    try:
        lose(p, feed, grounder, tracker)
        newest = p.buffer.latest().seq
        _, seqs = grounder.calls[-1]
        assert seqs[-1] == newest and newest - seqs[0] <= 3, seqs  # 0.3 s at 10 fps
        first_command_keyframes = grounder.calls[0][1]
        assert len(first_command_keyframes) >= 3  # the first grounding used the whole window
    finally:
        p.close()


def test_a_target_found_only_on_an_old_keyframe_is_published_only_once_the_live_frame_shows_it():
    grounder, tracker = OldKeyframeGrounder(), DoubtingTracker()
    p, feed = make(grounder, tracker, buffer_size=64, lost_timeout_s=0.5, lost_retry_s=0.3)
    try:
        lose(p, feed, grounder, tracker)
        lost_id = next(iter(p._tracks))
        # The grounder now finds the object only on the oldest keyframe; on the live frame alone
        # it looks elsewhere: the caught-up target is dropped, nothing is published.
        grounder.find_nothing = False
        grounder.only_old = True
        grounder.live_where = ELSEWHERE
        tracker.advance_score = 0.9
        outs = [feed() for _ in range(8)]
        assert not any(o.visible_tracks() for o in outs)
        assert p.stats["regroundings_unverified"] >= 2
        assert [t.state for t in outs[-1].tracks] == [TrackState.LOST]
        # Once the live frame shows it where the caught-up mask is, it is published, under the
        # id it had before it was lost.
        grounder.live_where = grounder.where
        tracker.sure_of_new = True
        outs = [feed() for _ in range(4)]
        assert p.stats["regroundings_verified"] >= 1 and p.stats["tracks_reacquired"] >= 1
        assert [t.id for t in outs[-1].visible_tracks()] == [lost_id]
    finally:
        p.close()


class AbsentGrounder(OldKeyframeGrounder):
    """With `absent`, says the object is not in view (every keyframe); with `absent_live`, only
    when it grounds one frame alone (the live-frame check)."""

    def __init__(self):
        super().__init__()
        self.absent = False
        self.absent_live = False

    def ground(self, keyframes, command):
        result = super().ground(keyframes, command)
        result.in_view, result.in_view_score = bool(result.points), float(bool(result.points))
        if self.absent or (self.absent_live and len(keyframes) == 1):
            result.maps[:] = 0.0
            result.points, result.in_view, result.in_view_score = [], False, 0.0
        return result


def test_a_doubted_track_stays_unpublished_after_not_in_view_until_a_grounding_confirms_it():
    grounder, tracker = AbsentGrounder(), DoubtingTracker()
    p, feed = make(grounder, tracker, buffer_size=64, lost_timeout_s=0.5, lost_retry_s=0.3,
                   unseen_regrounding_s=0.0)
    try:
        p.set_command("the cup")
        feed(3)
        first = next(iter(p._tracks))
        # Hidden: the tracker doubts its mask and the grounder says "not in view".
        tracker.step_score = 0.1
        grounder.absent = True
        feed(4)
        assert p.stats["tracks_held_not_in_view"] == 1
        # The tracker's confidence climbs back by itself (on whatever covers the object): while
        # the grounder still says "not in view", nothing is published.
        tracker.step_score = 0.9
        outs = [feed() for _ in range(8)]
        assert not any(o.visible_tracks() for o in outs)
        assert outs[-1].tracks[0].state in (TrackState.UNSEEN, TrackState.LOST)
        # The object back: a grounding finds it, and it is published again under its id.
        grounder.absent = False
        tracker.sure_of_new = True
        outs = [feed() for _ in range(4)]
        assert [t.id for t in outs[-1].visible_tracks()] == [first]
    finally:
        p.close()


def test_a_live_frame_check_that_says_not_in_view_holds_the_doubted_track():
    grounder, tracker = AbsentGrounder(), DoubtingTracker()
    p, feed = make(grounder, tracker, buffer_size=64, lost_timeout_s=0.5, lost_retry_s=0.3)
    try:
        lose(p, feed, grounder, tracker)
        # Found on an old keyframe only; on the live frame alone the grounder says "not in view".
        grounder.find_nothing = False
        grounder.only_old = True
        grounder.absent_live = True
        feed(4)
        assert p.stats["regroundings_unverified"] >= 1 and p.stats["tracks_held_not_in_view"] == 1
        # Its confidence climbing back publishes nothing.
        tracker.step_score = 0.9
        assert not any(feed().visible_tracks() for _ in range(6))
    finally:
        p.close()


def test_a_catch_up_that_ends_on_a_doubted_mask_gives_a_lost_track_and_publishes_nothing():
    grounder, tracker = PeakGrounder(), DoubtingTracker()
    # The answer lands 0.3 s after it was asked for, so the new target is caught up over 3
    # frames, on which the tracker doubts it.
    p, feed = make(grounder, tracker, grounding_latency_s=0.3, lost_timeout_s=5.0)
    try:
        p.set_command("the cup")
        tracker.advance_score = tracker.step_score = 0.2
        outs = [feed() for _ in range(8)]
        landed = next(i for i, o in enumerate(outs) if o.groundings)
        assert p.stats["catch_ups_not_confident"] >= 1
        assert not any(o.visible_tracks() or o.label_image().any() for o in outs)
        # LOST on the frame it landed, not UNSEEN for the 5 s lost timeout: its target
        # re-grounds at once.
        assert [t.state for t in outs[landed].tracks] == [TrackState.LOST]
    finally:
        p.close()


def test_a_confirmed_track_keeps_its_live_state_when_its_re_seeded_catch_up_fails():
    grounder, tracker = PeakGrounder(), DoubtingTracker()
    # Every re-grounding confirms the track and re-seeds it from its keyframe, 0.3 s back.
    p, feed = make(grounder, tracker, regrounding_period_s=0.5, grounding_latency_s=0.3,
                   reseed_confirmed=True, lost_timeout_s=5.0)
    try:
        p.set_command("the cup")
        feed(6)
        [first] = [t.id for t in feed().visible_tracks()]
        # From now on every catch-up ends on a mask the tracker doubts, while the live track
        # stays confident: the catch-up failed, not the track.
        tracker.advance_score = 0.2
        confirmed = p.stats["tracks_confirmed"]
        outs = [feed() for _ in range(20)]
        assert p.stats["tracks_confirmed"] >= confirmed + 2
        assert p.stats["catch_ups_failed_live_kept"] >= 2
        assert all([t.id for t in o.visible_tracks()] == [first] for o in outs)
        assert not any(t.state == TrackState.LOST for o in outs for t in o.tracks)
    finally:
        p.close()


def test_an_answer_lands_grounding_latency_s_of_camera_time_after_it_was_asked_for():
    for latency, frames in ((0.0, 0), (0.5, 5), (1.2, 12)):
        grounder, tracker = PeakGrounder(), DiskTracker()
        p, feed = make(grounder, tracker, grounding_latency_s=latency)
        try:
            p.set_command("the cup")
            asked = seen = reported = None
            for i in range(20):
                before = len(grounder.calls)
                out = feed()
                if asked is None and len(grounder.calls) > before:
                    asked = i
                if seen is None and out.visible_tracks():
                    seen = i
                if reported is None and out.groundings:
                    reported = i
            assert asked is not None and seen - asked == frames and reported == seen, (latency, asked, seen)
            # While it waits, the target counts as grounding: no second grounding is asked for.
            assert len(grounder.calls) == 1
        finally:
            p.close()


def test_the_worker_thread_lands_an_answer_no_earlier_than_its_camera_time():
    grounder, tracker = PeakGrounder(), DiskTracker()
    p, feed = make(grounder, tracker, grounding_latency_s=1.0, asynchronous=True)
    try:
        p.set_command("the cup")
        for _ in range(3):
            feed()
        asked_stamp = p.buffer.latest().stamp_ns
        for _ in range(30):  # at most 30 polls of 0.1 s for the grounder to have been asked
            if grounder.calls:
                break
            time.sleep(0.1)
        assert grounder.calls
        # Camera time stands still below the due time: however long we wait, nothing lands.
        for _ in range(8):
            assert not feed().visible_tracks()
        assert p.grounding_running() and not p._tracks
        assert p.buffer.latest().stamp_ns < asked_stamp + 1_000_000_000
        feed(3)  # past the due time
        deadline = time.monotonic() + 30
        while not p._tracks and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p._tracks
        assert feed().visible_tracks()
    finally:
        p.close()


def test_a_grounding_asked_for_out_of_schedule_runs_on_the_next_frame():
    grounder, tracker = PeakGrounder(), DiskTracker()
    p, feed = make(grounder, tracker, regrounding_period_s=0.0, lost_window_s=0.2)
    try:
        target = p.add_target("the cup")
        feed(5)
        before = len(grounder.calls)
        assert calls_per_frame(feed, grounder, 5) == []  # no periodic re-grounding
        assert p.request_grounding(target, "3d_jump")
        assert calls_per_frame(feed, grounder, 5) == [0]
        assert len(grounder.calls) == before + 1
        # A 3D jump may mean the track slid onto something else: it looks at the newest frames.
        _, seqs = grounder.calls[-1]
        assert seqs[-1] - seqs[0] <= 2, seqs  # 0.2 s at 10 fps; the whole window is 1 s
        assert not p.request_grounding(target + 1, "3d_jump")
    finally:
        p.close()


def test_a_lost_targets_late_answer_is_used_though_its_keyframes_left_the_buffer():
    """The answer to a re-grounding after a loss arrives when its keyframes have left a short
    buffer (a loaded machine): there is no confident track it could wrongly swap, so it is
    used (caught up over what the buffer holds), not discarded, and the object is followed again
    under its id. Discarding it kept a lost target lost for good."""
    grounder, tracker = PeakGrounder(), DoubtingTracker()
    p, feed = make(grounder, tracker, buffer_size=6, lost_timeout_s=0.3, lost_window_s=0.3,
                   grounding_latency_s=1.0)
    try:
        p.set_command("the cup")
        outs = [feed() for _ in range(15)]  # the first answer lands 1 s after it was asked for
        assert any(o.visible_tracks() for o in outs)
        lost_id = next(iter(p._tracks))
        tracker.step_score = 0.1
        for _ in range(10):
            if feed().tracks[0].state == TrackState.LOST:
                break
        tracker.sure_of_new = True
        outs = [feed() for _ in range(14)]  # > 1 s: the 6-frame buffer has moved past the keyframes
        assert p.stats["groundings_expired"] == 0
        assert [t.id for t in outs[-1].visible_tracks()] == [lost_id]
    finally:
        p.close()
