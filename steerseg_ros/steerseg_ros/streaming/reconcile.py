"""Reconciliation of a grounding with the live tracks of its target.

Owns the comparison of a grounded target with a live track (their masks on a keyframe both
cover, failing that on the live frame), the choice of the keyframe a grounded target is seeded
on, and `Reconciler`: which grounded targets confirm a live track (it keeps its id), which
re-acquire a lost one, which replace the tracks they did not confirm, and which wait for the
next re-grounding to repeat them. A target whose catch-up ends on a mask that is not confident
becomes a LOST track: its mask is never published.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Optional

from steerseg_ros.grounding.base import GroundingResult
from steerseg_ros.streaming import selection
from steerseg_ros.streaming.buffer import FrameBuffer
from steerseg_ros.streaming.targets import CONFIDENT_STATES, DOUBTED_STATES, TargetBook, Track, TrackState
from steerseg_ros.tracking.base import ObjectState, Tracker

# The pipeline's parts log under its logger: one name to filter or raise for the whole streaming logic.
log = logging.getLogger("steerseg_ros.streaming.pipeline")

# One chosen candidate, its object state caught up to the live frame (None where it confirmed a
# confident track before any catch-up), and what is left of its catch-up budget.
Seed = tuple[selection.Tracklet, Optional[ObjectState], list[int]]
# An object state to attach, the live track it confirmed (None: a new track), and the best IoU.
Match = tuple[Optional[ObjectState], Optional[Track], float]


def buffered_keyframe(buffer: FrameBuffer, result: GroundingResult, cand: selection.Tracklet) -> Optional[int]:
    """A chosen target's own keyframe; or, when that one has left the buffer (the worker
    paced the candidate tracklets past it), the oldest newer keyframe still buffered on which
    its tracklet has a mask. None when none of them is buffered any more."""
    for k in range(cand.keyframe_index, len(result.keyframes)):
        if cand.mask_on(k) is not None and buffer.get(result.keyframes[k].seq) is not None:
            return k
    return None


def seed_keyframe(buffer: FrameBuffer, result: GroundingResult, cand: selection.Tracklet) -> int:
    """The keyframe a chosen target is seeded on: `buffered_keyframe`, so that the catch-up
    from there skips no frame; its own when none is buffered (a first grounding, caught up
    over whatever the buffer holds)."""
    k = buffered_keyframe(buffer, result, cand)
    return cand.keyframe_index if k is None else k


def keyframe_overlap(t: Track, cand: selection.Tracklet, result: GroundingResult,
                     measure: Callable = selection.mask_iou) -> Optional[float]:
    """Mask IoU (or `measure`) of a track and a grounded target on the keyframe the target came
    from; failing that on the newest keyframe both cover; None when they share none."""
    order = [cand.keyframe_index] + list(range(len(result.keyframes) - 1, -1, -1))
    for k in order:
        new, old = cand.mask_on(k), t.mask_at(result.keyframes[k].seq)
        if new is not None and old is not None:
            return measure(old, new)
    return None


def overlap(t: Track, cand: selection.Tracklet, result: GroundingResult, state: Optional[ObjectState]) -> float:
    """Mask IoU of a live track and a grounded target: on a keyframe both cover
    (`keyframe_overlap`: the track's confident masks only); failing that (the track is
    younger) on the live frame, where the target has just been caught up to (0 when it was
    not, or when the track is LOST: its mask there is one the tracker itself doubted)."""
    iou = keyframe_overlap(t, cand, result)
    if iou is not None:
        return iou
    if state is None or t.state == TrackState.LOST:
        return 0.0
    return selection.mask_iou(t.mask, state.result.mask)


def confirms_live_track(book: TargetBook, target_id: int, result: GroundingResult, cand: selection.Tracklet,
                        min_iou: float) -> bool:
    """Whether a grounded target is one of its target's confident tracks, by its mask on a
    keyframe both cover (the comparison `Reconciler` makes): then it needs no catch-up. Takes
    the lock."""
    with book.lock:
        return any(t.target == target_id and t.state in CONFIDENT_STATES
                   and (keyframe_overlap(t, cand, result) or 0.0) >= min_iou
                   for t in book.tracks.values())


class Reconciler:
    """Attaches the grounded targets of one grounding to the book (called under its lock).
    `config` is the pipeline's PipelineConfig, read on every use."""

    def __init__(self, book: TargetBook, buffer: FrameBuffer, tracker: Tracker, config, stats: Counter):
        self.book, self.buffer, self.tracker, self.config, self.stats = book, buffer, tracker, config, stats

    def __call__(self, target_id: int, command: str, result: GroundingResult, seeds: list[Seed],
                 catch_up: Callable, look_now: bool = False) -> None:
        """A target that overlaps a live track on its keyframe keeps that track's id. Otherwise
        it is another object: it replaces the live tracks it did not confirm once they are LOST
        or `replace_after` re-groundings in a row have disagreed with them; until then the
        disagreeing target is dropped and the tracks go on (a re-grounding that is wrong once
        must not swap what the robot follows). Only the tracks of `target_id` take part: another
        target's tracks are never confirmed or replaced by this grounding. `catch_up`: the
        pipeline's CatchUp, for a seed whose confirmed track was lost meanwhile. `look_now`: a
        grounding asked for because a track was doubted or lost (LOOK_NOW). An UNSEEN track does
        not hold out against one whose grounder also says the object is in view (`in_view` True):
        the tracker itself doubts the track, and the grounder looked for the object where it is
        now and knows it is there. A grounder with no in-view answer (the built-in one, an
        attention map) always finds something, also while the object is hidden: against it the
        doubted track holds as a confident one does, until it is LOST (replacing it at once
        raised the built-in grounder's false following on the following scenes from 33% to 55%
        of the hidden frames)."""
        unmatched = {tid: t for tid, t in self.book.tracks.items() if t.target == target_id}
        matches = self._match(unmatched, result, seeds, catch_up, look_now)
        matches = self._hold_disputed(unmatched, matches, look_now and result.in_view is True)
        self._attach(matches, target_id, command, result)
        self._replace(unmatched, target_id)

    def _match(self, unmatched: dict[int, Track], result: GroundingResult, seeds: list[Seed],
               catch_up: Callable, look_now: bool = False) -> list[Match]:
        """Each seed with the live track it overlaps best, if by `reconcile_iou`; that track
        leaves `unmatched`."""
        matches = []
        for cand, state, budget in seeds:
            best_id, best_iou = None, 0.0
            for tid, t in unmatched.items():
                iou = overlap(t, cand, result, state)
                if iou > best_iou:
                    best_id, best_iou = tid, iou
            confirmed = best_id is not None and best_iou >= self.config.reconcile_iou
            if not confirmed and look_now:
                best_id = self._regained(unmatched, cand, result)
                confirmed = best_id is not None
            if not confirmed:
                best_id = self._reacquired(unmatched, cand, result)
                confirmed = best_id is not None
            if state is None and not (confirmed and unmatched[best_id].state != TrackState.LOST):
                # Not the confident track it confirmed before the catch-up was skipped (it was
                # lost meanwhile): seeded from the grounding after all, caught up here.
                k = seed_keyframe(self.buffer, result, cand)
                state = self.tracker.start(result.keyframes[k], mask=cand.mask_on(k))
                catch_up(state, upto=self.book.last_stepped_seq, budget=budget)
            matches.append((state, unmatched.pop(best_id) if confirmed else None, best_iou))
        return matches

    def _regained(self, unmatched: dict[int, Track], cand: selection.Tracklet,
                  result: GroundingResult) -> Optional[int]:
        """The target's one doubted track (UNSEEN or LOST) when a grounding that looked for the
        object where it is now found it, on a keyframe where the track was last confident,
        mostly inside the track's mask or the other way round (`reconcile_iou` of the smaller
        one): the same object, segmented to another extent by the grounding than by the tracker
        (IoU alone called the built-in tracker's half-right masks another object, and the
        follower's id changed). None otherwise."""
        doubted = [t for t in unmatched.values() if t.state in DOUBTED_STATES]
        if len(doubted) != 1 or len(unmatched) != 1:
            return None
        inside = keyframe_overlap(doubted[0], cand, result, selection.mask_containment)
        if inside is None or inside < self.config.reconcile_iou:
            return None
        self.stats["tracks_regained"] += 1
        return doubted[0].id

    def _reacquired(self, unmatched: dict[int, Track], cand: selection.Tracklet,
                    result: GroundingResult) -> Optional[int]:
        """The target's one LOST track, when the grounding's target cannot be compared with it
        (it was seen confidently on none of the keyframes): the object it lost, found again,
        keeps its id. A robot following "the dog" keeps following the same id when the dog
        comes back from behind the wall. None when there are several LOST tracks, or the track
        was seen on a keyframe and was elsewhere."""
        lost = [t for t in unmatched.values() if t.state == TrackState.LOST]
        if len(lost) != 1 or len(unmatched) != 1 or keyframe_overlap(lost[0], cand, result) is not None:
            return None
        self.stats["tracks_reacquired"] += 1
        return lost[0].id

    def _hold_disputed(self, unmatched: dict[int, Track], matches: list[Match],
                       seen_now: bool = False) -> list[Match]:
        """The unconfirmed tracks that hold on (not LOST, nor UNSEEN when `seen_now`, and fewer
        than `replace_after` disagreements in a row) leave `unmatched`; while any does, the
        targets found instead are dropped. Returns the matches that go on."""
        if not unmatched:
            return matches
        for t in unmatched.values():
            t.disagreements += 1
        doubted = DOUBTED_STATES if seen_now else (TrackState.LOST,)
        holding = [t for t in unmatched.values()
                   if t.state not in doubted and t.disagreements < self.config.replace_after]
        if not holding:
            return matches
        self.stats["regroundings_disputed"] += 1
        log.info("grounding did not confirm track(s) %s (best IoU %s); keeping them until %d "
                 "re-groundings in a row disagree", [t.id for t in holding],
                 ", ".join(f"{iou:.2f}" for _, matched, iou in matches if matched is None) or "-",
                 self.config.replace_after)
        for t in holding:
            del unmatched[t.id]
        # The targets found instead wait for the next re-grounding to repeat them.
        return [m for m in matches if m[1] is not None]

    def _attach(self, matches: list[Match], target_id: int, command: str, result: GroundingResult) -> None:
        """Confirmed tracks take the grounding (and, re-seeded, their new object state); the
        other matches start new tracks."""
        stamp = result.keyframes[-1].stamp_ns
        for state, t, iou in matches:
            confirmed = t is not None
            if confirmed:
                self.stats["tracks_confirmed"] += 1
                log.info("grounding confirmed track %d (IoU %.2f)", t.id, iou)
            else:
                t = self.book.new_track(command, result.class_word, state.result.score, state.result.mask,
                                        stamp, target_id)
                self.stats["tracks_started"] += 1
                log.info("new track %d for %r (best overlap with a live track: IoU %.2f)", t.id, command, iou)
            t.disagreements = 0
            t.held = False
            t.label = result.class_word or t.label
            t.last_grounding_ns = stamp
            if state is None:  # confirmed, and it keeps its live state
                self.stats["tracks_confirmed_as_they_are"] += 1
                t.last_confident_ns = max(t.last_confident_ns, stamp)
                continue
            confident = self.book.confident(state.result.score, state.result.mask)
            if confirmed and not confident and self._live_state_better(t, state):
                # The grounding confirmed the track, but its own mask, caught up from an older
                # keyframe, ended on a mask the tracker doubts more than the live one: the
                # catch-up failed, not the track (on the following scenes, re-seeding anyway
                # lost confidently tracked objects for a re-grounding's round trip).
                self.stats["catch_ups_failed_live_kept"] += 1
                continue
            self.tracker.attach(t.id, state)
            last = self.buffer.get(state.seq)
            if not confident:
                # Caught up into something the tracker doubts (the object hidden now, or the
                # chase gone astray): never published; LOST, so the target re-grounds soon.
                self.stats["catch_ups_not_confident"] += 1
                t.mask, t.score = state.result.mask, state.result.score
                self.book.set_lost(t, last.stamp_ns if last is not None else stamp,
                                   f"its catch-up ended on a mask scored {state.result.score:.2f}")
                continue
            t.last_confident_ns = max(t.last_confident_ns, stamp)
            if last is not None:
                self.book.update(t, last, state.result.mask, state.result.score, False)

    def _live_state_better(self, t: Track, state: ObjectState) -> bool:
        """Whether a confirmed track's live state, on the frame its catch-up ended on, is scored
        above the catch-up's (a LOST track's live mask is one the tracker gave up on: never)."""
        return (t.state != TrackState.LOST and state.seq == self.book.last_stepped_seq
                and t.score > state.result.score)

    def _replace(self, unmatched: dict[int, Track], target_id: int) -> None:
        """Live tracks this grounding did not confirm were a different object: replaced."""
        new_ids = [c for c, t in self.book.tracks.items() if t.target == target_id and c not in unmatched]
        for tid, t in unmatched.items():
            replaced_by = min(new_ids) if new_ids else 0
            self.book.end_track(t, replaced_by)
            self.stats["tracks_replaced"] += 1
            log.info("track %d replaced by %d", tid, replaced_by)
