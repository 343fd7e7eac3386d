"""Targets and tracks bookkeeping: what the pipeline follows and what it has found.

Owns the track and target records, their ids, the views the publishers get (`TrackView`,
`TargetView`), the states they report, and `TargetBook`: the one lock and the state it guards
(targets, tracks, the tracks that ended and the groundings that finished since the last output,
the command generation, and where the stream stands). The pipeline holds one book and passes it
explicitly to its parts (the grounding worker, the catch-up, the reconciliation); none of them
refers back to the pipeline.
"""
from __future__ import annotations

import enum
import logging
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from steerseg_ros.frame import NS_PER_S, Frame
from steerseg_ros.grounding.base import GroundingResult
from steerseg_ros.render import label_value, mask_geometry
from steerseg_ros.tracking.base import Tracker

# The pipeline's parts log under its logger: one name to filter or raise for the whole streaming logic.
log = logging.getLogger("steerseg_ros.streaming.pipeline")


class PipelineState(enum.IntEnum):
    IDLE = 0        # no command
    GROUNDING = 1   # a command, no track yet
    TRACKING = 2    # at least one track with a confident mask
    LOST = 3        # every track lost


class TrackState(enum.IntEnum):
    """Matches the STATE_* constants of steerseg_msgs/msg/Track. Only TRACKING and REGROUNDING
    have a confident mask on the frame: the only states whose mask is published."""

    TRACKING = 1
    LOST = 2
    REGROUNDING = 3
    REPLACED = 4
    # No confident mask on this frame (hidden, or the tracker doubts it), not yet for
    # lost_timeout_s: not published, and LOST if it lasts.
    UNSEEN = 5


# The states with a confident mask on the frame: the only tracks that are drawn, labelled, placed
# in 3D and followed.
CONFIDENT_STATES = (TrackState.TRACKING, TrackState.REGROUNDING)
# A track whose mask the tracker doubts: not published; a grounding may hold or replace it.
DOUBTED_STATES = (TrackState.UNSEEN, TrackState.LOST)


@dataclass
class TrackView:
    """One track on one frame, as the publishers see it."""

    id: int
    command: str
    label: str
    state: TrackState
    score: float
    mask: np.ndarray
    last_grounding_ns: int
    replaced_by: int = 0
    # The target (add_target's id) this track answers; 0 for a track seeded from a mask with no
    # target to join.
    target_id: int = 0

    @property
    def label_value(self) -> int:
        return label_value(self.id)

    @property
    def area(self) -> int:
        return self.geometry()[0]

    def bbox(self) -> tuple[int, int, int, int]:
        """(x, y, width, height) of the mask; zeros when empty."""
        return self.geometry()[1]

    def centroid(self) -> tuple[float, float]:
        return self.geometry()[2]

    def geometry(self) -> tuple[int, tuple[int, int, int, int], tuple[float, float]]:
        """(area, bbox, centroid) in one pass (render.mask_geometry), computed once per view:
        the track message and the markers both need it on every frame."""
        cached = self.__dict__.get("_geometry")
        if cached is None or cached[0] is not self.mask:
            cached = (self.mask, mask_geometry(self.mask))
            self.__dict__["_geometry"] = cached
        return cached[1]


@dataclass
class TargetView:
    """One target (a followed command) on one frame.

    `state`: GROUNDING while it has no track, LOST when every track is LOST, else TRACKING.
    `unseen_s`: 0 while a track of it has a confident mask on this frame (TRACKING state), else
    the camera seconds since one last had, counted from the target's first frame when none ever
    had (a target grounding has not found yet is unseen since it was added)."""

    id: int
    command: str
    state: PipelineState
    track_ids: list[int]
    unseen_s: float
    groundings: int


@dataclass
class Track:
    id: int
    command: str
    label: str
    state: TrackState
    score: float
    mask: np.ndarray
    last_confident_ns: int
    last_grounding_ns: int
    target: int = 0
    # Re-groundings in a row that picked another target while this track was confident.
    disagreements: int = 0
    # Stamp of the frame it went LOST on (None while it is not LOST): a LOST track re-grounds
    # at once, then every lost_retry_s.
    lost_ns: Optional[int] = None
    # Stamp of the first frame of its current run without a confident mask (None while it has
    # one): an UNSEEN track re-grounds after unseen_regrounding_s.
    unseen_ns: Optional[int] = None
    # The grounder said its object is not in view while the tracker doubted this track: no mask of
    # it counts as confident (published) until a grounding confirms it again. A doubted track
    # whose confidence climbs back by itself is then on whatever covers the object.
    held: bool = False
    # Packed confident masks of recent frames by sequence number, to compare a re-grounding
    # with this track on the keyframe it used. Only confident ones: a mask the tracker itself
    # doubted (on an occluder, say) says nothing about where the object was. Bounded by the
    # frame buffer's capacity.
    history: deque = field(default_factory=deque)

    def remember(self, seq: int, mask: np.ndarray) -> None:
        self.history.append((seq, np.packbits(mask), mask.shape))

    def mask_at(self, seq: int) -> Optional[np.ndarray]:
        for s, packed, shape in reversed(self.history):
            if s == seq:
                return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)
        return None


@dataclass
class Target:
    id: int
    command: str
    # Stamp of the first frame processed after it was added (None until then).
    start_ns: Optional[int] = None
    last_attempt_ns: Optional[int] = None
    groundings: int = 0
    # Why a grounding was asked for out of schedule (`Pipeline.request_grounding`); "" when not.
    requested: str = ""
    # Whether its last grounding answered "is the object in view" (GroundingResult.in_view not
    # None): only then is a doubted (UNSEEN) track re-grounded before it is LOST.
    answers_in_view: bool = False


class TargetBook:
    """The targets, their tracks and ids, under one lock (`lock`, reentrant). Every method
    expects the caller to hold the lock; the fields are read and written by the pipeline's
    parts under it, except where a docstring there says otherwise.

    `tracker` holds each track's live object state under the track's id: ending a track here
    removes it there too. `config` is the pipeline's PipelineConfig, read on every use (as the
    pipeline always did). `history`: how many recent masks a track keeps (the frame buffer's
    capacity: older keyframes are gone anyway)."""

    def __init__(self, tracker: Tracker, config, stats: Counter, history: int):
        self.tracker, self.config, self.stats, self.history = tracker, config, stats, history
        self.lock = threading.RLock()
        self.tracks: dict[int, Track] = {}
        self.targets: dict[int, Target] = {}
        # What the next output reports once: tracks that ended, groundings that finished.
        self.ended: list[TrackView] = []
        self.finished: list[GroundingResult] = []
        self.next_id = 1
        self.next_target_id = 1
        # Bumped by every new command and restart: a grounding started before is stale.
        self.generation = 0
        self.last_stepped_seq = -1
        self.last_stamp_ns: Optional[int] = None
        # Sequence number of the first frame after the last restart: an object started on an
        # older frame belongs to the stream before it.
        self.restart_seq = 0

    # ---- targets --------------------------------------------------------------------------
    def new_target(self, command: str) -> Target:
        target = Target(self.next_target_id, command)
        self.next_target_id += 1
        self.targets[target.id] = target
        self.stats["commands"] += 1
        return target

    def drop_all_targets(self) -> None:
        """End every track and forget every target; a grounding running for one is now stale."""
        self.end_all_tracks()
        self.targets.clear()
        self.generation += 1

    def target_view(self, target: Target) -> TargetView:
        tracks = self.tracks_of(target.id)
        if not tracks:
            state = PipelineState.GROUNDING
        elif all(t.state == TrackState.LOST for t in tracks):
            state = PipelineState.LOST
        else:
            state = PipelineState.TRACKING
        seen = any(t.state in CONFIDENT_STATES and t.last_confident_ns == self.last_stamp_ns for t in tracks)
        unseen_s = 0.0
        if not seen and self.last_stamp_ns is not None:
            since = max([t.last_confident_ns for t in tracks] + [target.start_ns or self.last_stamp_ns])
            unseen_s = max(0.0, (self.last_stamp_ns - since) / NS_PER_S)
        return TargetView(target.id, target.command, state, sorted(t.id for t in tracks), unseen_s,
                          target.groundings)

    # ---- tracks ---------------------------------------------------------------------------
    def tracks_of(self, target_id: int) -> list[Track]:
        return [t for t in self.tracks.values() if t.target == target_id]

    def new_track(self, command: str, label: str, score: float, mask: np.ndarray, stamp_ns: int,
                  target: int) -> Track:
        t = Track(self.next_id, command, label, TrackState.TRACKING, score, mask, stamp_ns, stamp_ns, target)
        self.next_id += 1
        self.tracks[t.id] = t
        return t

    def end_track(self, t: Track, replaced_by: int = 0) -> None:
        """End a track now (REPLACED, by `replaced_by` or by nothing)."""
        self.tracker.remove(t.id)
        del self.tracks[t.id]
        self.ended.append(self.view(t, TrackState.REPLACED, replaced_by))

    def end_all_tracks(self) -> None:
        for t in self.tracks.values():
            self.tracker.remove(t.id)
            self.ended.append(self.view(t, TrackState.REPLACED))
        self.tracks.clear()

    def update(self, t: Track, frame: Frame, mask: np.ndarray, score: float, regrounding: bool) -> None:
        """A track's mask on a frame: remembered, and its state (LOST after `lost_timeout_s`
        without a confident mask) updated."""
        t.mask, t.score = mask, score
        confident = self.confident(score, mask, t)
        if confident:
            t.remember(frame.seq, mask)
            while len(t.history) > self.history:
                t.history.popleft()
            t.last_confident_ns = frame.stamp_ns
        lost = frame.stamp_ns - t.last_confident_ns > self.config.lost_timeout_s * NS_PER_S
        if not confident and t.unseen_ns is None:
            t.unseen_ns = frame.stamp_ns
        if lost:
            self.set_lost(t, frame.stamp_ns)
        elif not confident:
            t.state = TrackState.UNSEEN
        else:
            t.state = TrackState.REGROUNDING if regrounding else TrackState.TRACKING
            t.lost_ns = t.unseen_ns = None

    def confident(self, score: float, mask: np.ndarray, t: Optional[Track] = None) -> bool:
        """A mask the tracker is sure of (and, for a track `t`, not one held by "not in view")."""
        return score >= self.config.min_confidence and bool(mask.any()) and not (t is not None and t.held)

    def hold_doubted(self, target_id: int) -> int:
        """The grounder found the target's object not in view: its doubted tracks (UNSEEN, LOST)
        are held until a grounding confirms them again. Returns how many."""
        held = 0
        for t in self.tracks_of(target_id):
            if t.state in DOUBTED_STATES and not t.held:
                t.held = True
                held += 1
        self.stats["tracks_held_not_in_view"] += held
        return held

    def set_lost(self, t: Track, stamp_ns: int, why: str = "") -> None:
        if t.state != TrackState.LOST:
            log.info("track %d lost%s", t.id, f" ({why})" if why else "")
            self.stats["tracks_lost"] += 1
            t.lost_ns = stamp_ns
        t.state = TrackState.LOST

    def pipeline_state(self) -> PipelineState:
        if not self.tracks:
            # Tracks seeded from a mask (seed_mask) live without a command.
            return PipelineState.IDLE if not self.targets else PipelineState.GROUNDING
        if all(t.state == TrackState.LOST for t in self.tracks.values()):
            return PipelineState.LOST
        return PipelineState.TRACKING

    @staticmethod
    def view(t: Track, state: TrackState, replaced_by: int = 0) -> TrackView:
        return TrackView(t.id, t.command, t.label, state, t.score, t.mask, t.last_grounding_ns, replaced_by, t.target)
