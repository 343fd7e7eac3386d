"""The streaming pipeline: camera frames and commands in, tracks with masks out.

Owns the state machine idle -> grounding -> tracking (-> lost), the grounding worker thread,
periodic re-grounding, the catch-up of a new target from its keyframe to the live frame, the
reconciliation of a re-grounding with the live tracks, and the tracks' ids and states.

Several targets at once. Each command followed is a target (`add_target`, `remove_target`,
`targets`; `set_command` replaces them all with one). A target has its own grounding schedule
(first grounding, retries, periodic re-grounding, re-grounding when lost), its own tracks, and its
own reconciliation: a re-grounding of one target only ever confirms or replaces that target's
tracks. Track ids (hence label values) are unique across targets. The one grounding worker serves
the targets' due groundings one at a time, in the order they fell due, so each target waits at
most for one grounding of every other target.

Time is the camera's: every timeout and period is measured on frame stamps, so a bag or a
simulator runs the same as a live camera.
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from steerseg_ros.streaming import selection as tracklets
from steerseg_ros.config_checks import check_finite
from steerseg_ros.frame import NS_PER_S, Frame
from steerseg_ros.streaming.buffer import FrameBuffer, KeyframeConfig, StampError
from steerseg_ros.grounding.base import (MAX_COMMAND_CHARS, Grounder, GroundingError,
                                         GroundingResult, clean_command)
from steerseg_ros.render import label_image, label_value, mask_geometry
from steerseg_ros.tracking.base import ObjectState, Tracker

log = logging.getLogger("steerseg_ros.streaming.pipeline")


class PipelineState(enum.IntEnum):
    IDLE = 0        # no command
    GROUNDING = 1   # a command, no track yet
    TRACKING = 2    # at least one track with a confident mask
    LOST = 3        # every track lost


class TrackState(enum.IntEnum):
    """Matches the STATE_* constants of steerseg_msgs/msg/Track."""

    TRACKING = 1
    LOST = 2
    REGROUNDING = 3
    REPLACED = 4


class TargetLimitError(ValueError):
    """add_target was refused: `max_targets` targets are already followed."""


class FrameRejected(ValueError):
    """A frame was not processed; `reason` is a short key for counting."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class SeedRejected(ValueError):
    """A seed mask was not used; `reason` is a short key for counting ("no_frame", "size",
    "empty")."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class PipelineConfig:
    """The streaming logic's settings; every field's help text is in its metadata (the node
    declares one ROS parameter per field, `pipeline.<field>`)."""

    buffer_size: int = field(default=128, metadata={"help": (
        "Frames kept for keyframes and catch-up; must cover the keyframe window plus the grounding "
        "latency at camera rate (128: 4.3 s at 30 fps, the 3 s window and 1.3 s to ground; a "
        "re-grounding whose keyframes left the buffer is discarded). Memory: width x height x 3 "
        "bytes per frame (157 MB at 854x480).")})
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig, metadata={"help": "Keyframe selection."})
    min_keyframes: int = field(default=4, metadata={"help": "Grounding waits until this many keyframes can be chosen."})
    regrounding_period_s: float = field(default=5.0, metadata={"help": (
        "Ground the command again this often (seconds of camera time) while tracking; 0: never.")})
    grounding_retry_s: float = field(default=2.0, metadata={"help": (
        "After a failed or empty grounding, try again after this many seconds.")})
    lost_timeout_s: float = field(default=1.0, metadata={"help": (
        "A track with no confident mask for this many seconds is LOST (and re-grounding starts).")})
    min_confidence: float = field(default=0.5, metadata={"help": "A mask scored below this does not count as confident."})
    reconcile_iou: float = field(default=0.5, metadata={"help": (
        "A re-grounded target overlapping a live track by at least this IoU on the keyframe it used "
        "is the same object and keeps the id.")})
    replace_after: int = field(default=2, metadata={"help": (
        "A confident track is replaced only when this many re-groundings in a row pick another "
        "target: one wrong grounding does not swap what the robot follows. A LOST track is "
        "replaced at once. 1: replace at the first disagreement.")})
    time_jump_reset_s: float = field(default=1.0, metadata={"help": (
        "A frame this many seconds older than the newest means the source restarted (a bag "
        "looping): everything is reset. A smaller step back is rejected.")})
    max_catch_up_frames: int = field(default=30, metadata={"help": (
        "A new target is caught up from its keyframe to the live frame through at most this many "
        "buffered frames in all, evenly spaced, the chase after the moving live frame included (a "
        "tracker no faster than the camera otherwise never reaches the live frame, and chasing it "
        "takes the cores from the live tracking); the last stretch always ends on the live frame. "
        "0: through every buffered frame.")})
    max_command_chars: int = field(default=MAX_COMMAND_CHARS, metadata={"help": "Longer commands are rejected."})
    max_targets: int = field(default=4, metadata={"help": (
        "At most this many commands are followed at once (Follow goals, commands); more are "
        "refused. Each target grounds on its own schedule, so grounding latency grows with the count.")})
    selection: tracklets.SelectionConfig = field(default_factory=tracklets.SelectionConfig,
                                                 metadata={"help": "Target selection."})
    asynchronous: bool = field(default=True, metadata={"help": (
        "Ground in a worker thread (the node) or inline in `process` (offline tools).")})
    reseed_confirmed: bool = field(default=False, metadata={"help": (
        "A re-grounding that confirms a confident track re-seeds the tracker from the grounded "
        "mask, caught up from its keyframe to the live frame (true), or leaves the track's live "
        "state as it is (false: the confirmation costs no catch-up, whose tracker steps would take "
        "the cores and the interpreter from the live tracking). A LOST track, or a target not "
        "confirmed, is always seeded from the grounding.")})
    worker_duty: float = field(default=0.33, metadata={"help": (
        "While tracks are live, the grounding worker's tracker work (candidate tracklets, the "
        "catch-up chase) takes at most this share of the time, pausing after each step: it shares "
        "the interpreter and the cores with the live tracking, which then keeps its mask rate "
        "while a re-grounding runs (the re-grounding takes longer instead). 1: no pauses (a "
        "machine with cores to spare, or a GPU tracker). A first grounding, with nothing tracked "
        "yet, never pauses.")})

    def validate(self) -> None:
        check_finite(self)
        self.keyframes.validate()
        self.selection.validate()
        if self.buffer_size < max(2, self.keyframes.count):
            raise ValueError(f"buffer_size {self.buffer_size} must hold at least the keyframe count "
                             f"({self.keyframes.count}) and 2 frames")
        if not 1 <= self.min_keyframes <= self.keyframes.count:
            raise ValueError(f"min_keyframes must be in 1..{self.keyframes.count}, got {self.min_keyframes}")
        for name in ("regrounding_period_s", "grounding_retry_s", "lost_timeout_s", "time_jump_reset_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("min_confidence", "reconcile_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.replace_after < 1:
            raise ValueError(f"replace_after must be >= 1, got {self.replace_after}")
        if not 0.0 < self.worker_duty <= 1.0:
            raise ValueError(f"worker_duty must be in (0, 1], got {self.worker_duty}")
        if self.max_catch_up_frames < 0:
            raise ValueError(f"max_catch_up_frames must be >= 0, got {self.max_catch_up_frames}")
        if self.max_command_chars < 1:
            raise ValueError("max_command_chars must be >= 1")
        if self.max_targets < 1:
            raise ValueError(f"max_targets must be >= 1, got {self.max_targets}")


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
class PipelineOutput:
    """What one processed frame produced. `groundings` holds the groundings that finished since
    the previous output (to publish once); `targets` the targets followed on this frame."""

    frame: Frame
    state: PipelineState
    tracks: list[TrackView]
    groundings: list[GroundingResult] = field(default_factory=list)
    targets: list[TargetView] = field(default_factory=list)

    def visible_tracks(self) -> list[TrackView]:
        """The tracks with a confident mask on this frame (TRACKING or REGROUNDING): the ones the
        label image and the overlay show. LOST tracks and tracks that ended here are left out."""
        return [t for t in self.tracks if t.state in (TrackState.TRACKING, TrackState.REGROUNDING)]

    def label_image(self, out: Optional[np.ndarray] = None) -> np.ndarray:
        return label_image((self.frame.height, self.frame.width), self.visible_tracks(), out)


@dataclass
class _Track:
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
    # Packed masks of recent frames by sequence number, to compare a re-grounding with this
    # track on the keyframe it used. Bounded by the frame buffer's capacity.
    history: deque = field(default_factory=deque)

    def remember(self, seq: int, mask: np.ndarray) -> None:
        self.history.append((seq, np.packbits(mask), mask.shape))

    def mask_at(self, seq: int) -> Optional[np.ndarray]:
        for s, packed, shape in reversed(self.history):
            if s == seq:
                return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)
        return None


@dataclass
class _Target:
    id: int
    command: str
    # Stamp of the first frame processed after it was added (None until then).
    start_ns: Optional[int] = None
    last_attempt_ns: Optional[int] = None
    groundings: int = 0


@dataclass
class _Job:
    generation: int
    command: str
    end_seq: int
    end_stamp_ns: int
    reason: str
    target: int = 0


class _PacedTracker:
    """The tracker as the grounding worker steps it: after each segment, start or advance it
    pauses, so that its steps take at most `duty()` of the wall time while `live()` (tracks are
    being followed). The worker shares the interpreter lock and the cores with the thread that
    tracks every frame; measured on 2 CPU cores with the built-in tracker, an unpaced
    re-grounding cut the mask rate to 0.74 of the rate without one, and lowering the worker
    thread's OS priority changed nothing (the contention is for the interpreter lock).
    Everything else goes straight to the tracker."""

    def __init__(self, tracker: Tracker, duty: Callable[[], float], live: Callable[[], bool],
                 stop: threading.Event):
        self._tracker, self._duty, self._live, self._stop = tracker, duty, live, stop

    def _paced(self, method: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        out = method(*args, **kwargs)
        duty = self._duty()
        if duty < 1.0 and self._live():
            self._stop.wait((time.perf_counter() - t0) * (1.0 / duty - 1.0))
        return out

    def segment(self, *args, **kwargs):
        return self._paced(self._tracker.segment, *args, **kwargs)

    def start(self, *args, **kwargs):
        return self._paced(self._tracker.start, *args, **kwargs)

    def advance(self, *args, **kwargs):
        return self._paced(self._tracker.advance, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._tracker, name)


class Pipeline:
    """Feed frames with `process` (one thread) and commands with `set_command` or
    `add_target` / `remove_target` (any thread)."""

    def __init__(self, grounder: Grounder, tracker: Tracker, config: Optional[PipelineConfig] = None):
        self.config = config or PipelineConfig()
        self.config.validate()
        self.grounder = grounder
        self.tracker = tracker
        self.buffer = FrameBuffer(self.config.buffer_size)
        self.stats: Counter = Counter()
        self._lock = threading.RLock()
        self._tracks: dict[int, _Track] = {}
        self._ended: list[TrackView] = []
        self._finished: list[GroundingResult] = []
        self._next_id = 1
        self._targets: dict[int, _Target] = {}
        self._next_target_id = 1
        self._generation = 0
        self._last_stepped_seq = -1
        self._last_stamp_ns: Optional[int] = None
        # The target whose grounding runs now (None: none), and the due groundings waiting for
        # the worker, in the order they fell due (at most one per target).
        self._running: Optional[int] = None
        self._pending: dict[int, _Job] = {}
        # Sequence number of the first frame after the last restart: an object started on an
        # older frame belongs to the stream before it.
        self._restart_seq = 0
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._closing = threading.Event()  # ends the worker's pauses at once
        # The oldest buffered frame the worker still needs: its pauses stop before that frame
        # would leave the buffer. For the candidate tracklets, the newest keyframe (a target is
        # seeded on the oldest keyframe still buffered that its tracklet reaches, and compared
        # with the tracks there; the result itself holds the keyframes): with the 3 s keyframe
        # window filling most of the buffer, the oldest keyframe would stop the pauses almost at
        # once. For the catch-up, the frame it has reached.
        self._needed_seq: Optional[int] = None
        self._paced = _PacedTracker(
            tracker, lambda: self.config.worker_duty if self.config.asynchronous else 1.0,
            self._pace_now, self._closing)
        self._worker: Optional[threading.Thread] = None
        if self.config.asynchronous:
            self._worker = threading.Thread(target=self._work, name="steerseg-grounding", daemon=True)
            self._worker.start()

    # ---- commands -------------------------------------------------------------------------
    @property
    def command(self) -> Optional[str]:
        """The command followed ("; "-joined when several targets are); None when none."""
        with self._lock:
            if not self._targets:
                return None
            return "; ".join(t.command for t in self._targets.values())

    def set_command(self, text: str) -> str:
        """Follow a new command instead of every target followed so far: their tracks end now.
        Returns the cleaned command. Raises GroundingError for an empty or over-long command
        (nothing changes)."""
        command = clean_command(text, self.config.max_command_chars)
        with self._lock:
            self._end_all_tracks()
            self._targets.clear()
            self._generation += 1
            self._pending.clear()
            self._new_target(command)
        log.info("new command: %r", command)
        return command

    def clear_command(self) -> None:
        """Stop following every target; their tracks end now."""
        with self._lock:
            self._end_all_tracks()
            self._targets.clear()
            self._generation += 1
            self._pending.clear()

    def add_target(self, text: str) -> int:
        """Follow one more command beside the targets already followed; returns the new
        target's id (the `target_id` of its tracks). Raises GroundingError for an empty or
        over-long command and TargetLimitError when `max_targets` are followed already."""
        command = clean_command(text, self.config.max_command_chars)
        with self._lock:
            if len(self._targets) >= self.config.max_targets:
                self.stats["targets_refused"] += 1
                raise TargetLimitError(f"already following {len(self._targets)} targets, the most allowed "
                                       f"(pipeline.max_targets = {self.config.max_targets})")
            target = self._new_target(command)
        log.info("new target %d: %r", target.id, command)
        return target.id

    def remove_target(self, target_id: int) -> bool:
        """Stop following one target: its tracks end now (state REPLACED, replaced by 0), a
        grounding of it that is running is dropped when it finishes. False when there is no
        such target."""
        with self._lock:
            if self._targets.pop(target_id, None) is None:
                return False
            self._pending.pop(target_id, None)
            for t in [t for t in self._tracks.values() if t.target == target_id]:
                self._end_track(t)
            self.stats["targets_removed"] += 1
        log.info("target %d removed", target_id)
        return True

    def targets(self) -> list[TargetView]:
        """The targets followed now, oldest first."""
        with self._lock:
            return [self._target_view(t) for t in self._targets.values()]

    def _new_target(self, command: str) -> _Target:
        target = _Target(self._next_target_id, command)
        self._next_target_id += 1
        self._targets[target.id] = target
        self.stats["commands"] += 1
        return target

    def _end_track(self, t: _Track) -> None:
        self.tracker.remove(t.id)
        del self._tracks[t.id]
        self._ended.append(self._view(t, TrackState.REPLACED))

    def _end_all_tracks(self) -> None:
        for t in self._tracks.values():
            self.tracker.remove(t.id)
            self._ended.append(self._view(t, TrackState.REPLACED))
        self._tracks.clear()

    def _target_view(self, target: _Target) -> TargetView:
        tracks = [t for t in self._tracks.values() if t.target == target.id]
        if not tracks:
            state = PipelineState.GROUNDING
        elif all(t.state == TrackState.LOST for t in tracks):
            state = PipelineState.LOST
        else:
            state = PipelineState.TRACKING
        live = (TrackState.TRACKING, TrackState.REGROUNDING)
        seen = any(t.state in live and t.last_confident_ns == self._last_stamp_ns for t in tracks)
        unseen_s = 0.0
        if not seen and self._last_stamp_ns is not None:
            since = max([t.last_confident_ns for t in tracks] + [target.start_ns or self._last_stamp_ns])
            unseen_s = max(0.0, (self._last_stamp_ns - since) / NS_PER_S)
        return TargetView(target.id, target.command, state, sorted(t.id for t in tracks), unseen_s,
                          target.groundings)

    # ---- frames ---------------------------------------------------------------------------
    @property
    def state(self) -> PipelineState:
        with self._lock:
            if not self._tracks:
                # Tracks seeded from a mask (seed_mask) live without a command.
                return PipelineState.IDLE if not self._targets else PipelineState.GROUNDING
            if all(t.state == TrackState.LOST for t in self._tracks.values()):
                return PipelineState.LOST
            return PipelineState.TRACKING

    def process(self, image: np.ndarray, stamp_ns: int, frame_id: str = "", name: str = "") -> PipelineOutput:
        """Buffer a frame (HxWx3 uint8 RGB), step the live tracks on it, and start a grounding
        when one is due. Raises FrameRejected for a frame that cannot be used."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            self.stats["rejected_bad_image"] += 1
            raise FrameRejected("bad_image", f"expected a non-empty HxWx3 uint8 image, got {image.dtype} {image.shape}")
        last = self.buffer.latest()
        if last is not None and (image.shape[0], image.shape[1]) != (last.height, last.width):
            log.warning("image size changed from %dx%d to %dx%d: starting over",
                        last.width, last.height, image.shape[1], image.shape[0])
            self.stats["size_changes"] += 1
            self._restart()
        if self._last_stamp_ns is not None and stamp_ns <= self._last_stamp_ns:
            back_s = (self._last_stamp_ns - stamp_ns) / NS_PER_S
            if back_s >= self.config.time_jump_reset_s:
                log.warning("time jumped back %.3f s: starting over (source restarted?)", back_s)
                self.stats["time_resets"] += 1
                self._restart()
            else:
                self.stats["rejected_stamp"] += 1
                raise FrameRejected("stamp", f"stamp is {back_s:.6f} s behind the newest frame")
        try:
            frame = self.buffer.push(image, stamp_ns, frame_id, name)
        except StampError as e:  # a concurrent restart; treat as stale
            self.stats["rejected_stamp"] += 1
            raise FrameRejected("stamp", str(e)) from e
        self._last_stamp_ns = stamp_ns
        self.stats["frames"] += 1
        with self._lock:
            for target in self._targets.values():
                if target.start_ns is None:
                    target.start_ns = stamp_ns
            self._step(frame)
            jobs = self._due_jobs(frame)
            if jobs and self.config.asynchronous:
                self._pending.update((job.target, job) for job in jobs)
                self._wake.notify()
        if not self.config.asynchronous:
            for job in jobs:
                with self._lock:
                    if self._targets.get(job.target) is None:
                        continue  # removed meanwhile (from another thread)
                    self._running = job.target
                self._run_job(job)
        with self._lock:
            views = [self._view(t, t.state) for t in sorted(self._tracks.values(), key=lambda t: t.id)]
            targets = [self._target_view(t) for t in self._targets.values()]
            output = PipelineOutput(frame, self.state, self._ended + views, self._finished, targets)
            self._ended, self._finished = [], []
        return output

    def _restart(self) -> None:
        with self._lock:
            latest = self.buffer.latest()
            if latest is not None:
                self._restart_seq = latest.seq + 1
            self._end_all_tracks()
            self.tracker.reset()
            self.buffer.clear()
            self._generation += 1
            self._pending.clear()
            for target in self._targets.values():
                target.start_ns = target.last_attempt_ns = None
            self._last_stamp_ns = None
            self._last_stepped_seq = -1

    def _step(self, frame: Frame) -> None:
        results = self.tracker.step(frame) if self._tracks else {}
        self._last_stepped_seq = frame.seq
        for t in self._tracks.values():
            r = results.get(t.id)
            if r is None:
                continue
            self._update(t, frame, r.mask, r.score, self._grounding_target(t.target))

    def _update(self, t: _Track, frame: Frame, mask: np.ndarray, score: float, regrounding: bool) -> None:
        t.mask, t.score = mask, score
        t.remember(frame.seq, mask)
        while len(t.history) > self.buffer.capacity:
            t.history.popleft()
        if score >= self.config.min_confidence and mask.any():
            t.last_confident_ns = frame.stamp_ns
        lost = frame.stamp_ns - t.last_confident_ns > self.config.lost_timeout_s * NS_PER_S
        if lost:
            if t.state != TrackState.LOST:
                log.info("track %d lost", t.id)
                self.stats["tracks_lost"] += 1
            t.state = TrackState.LOST
        else:
            t.state = TrackState.REGROUNDING if regrounding else TrackState.TRACKING

    def _grounding_target(self, target_id: int) -> bool:
        """Whether a grounding of this target runs or waits (called under the lock)."""
        return target_id != 0 and (self._running == target_id or target_id in self._pending)

    def _due_jobs(self, frame: Frame) -> list[_Job]:
        """The grounding jobs that should start on this frame, one per target at most (called
        under the lock). Each target keeps its own schedule; a target with a grounding running
        or waiting is not due."""
        jobs: list[_Job] = []
        enough_keyframes: Optional[bool] = None  # the same for every target: checked once
        for target in self._targets.values():
            if self._grounding_target(target.id):
                continue
            tracks = [t for t in self._tracks.values() if t.target == target.id]
            since = None if target.last_attempt_ns is None else (frame.stamp_ns - target.last_attempt_ns) / NS_PER_S
            if not tracks:
                if since is not None and since < self.config.grounding_retry_s:
                    continue
                reason = "command"
            elif any(t.state == TrackState.LOST for t in tracks):
                if since is not None and since < min(self.config.grounding_retry_s, self.config.regrounding_period_s or np.inf):
                    continue
                reason = "lost"
            elif self.config.regrounding_period_s > 0 and since is not None and since >= self.config.regrounding_period_s:
                reason = "regrounding"
            else:
                continue
            if enough_keyframes is None:
                enough_keyframes = (len(self.buffer.select_keyframes(self.config.keyframes, frame.seq))
                                    >= self.config.min_keyframes)
            if not enough_keyframes:
                return []
            target.last_attempt_ns = frame.stamp_ns
            jobs.append(_Job(self._generation, target.command, frame.seq, frame.stamp_ns, reason, target.id))
        return jobs

    # ---- seeding from a mask ---------------------------------------------------------------
    def seed_mask(self, mask: np.ndarray, stamp_ns: Optional[int] = None, label: str = "",
                  target: Optional[int] = None) -> TrackView:
        """Start a track from a given mask instead of a grounding (a first-frame annotation, an
        operator's selection): seeded on the buffered frame with `stamp_ns` (the newest when
        None) and caught up to the last processed frame. Call it from the thread that calls
        `process`. Returns the new track as it is on the last processed frame; it is in every
        output from the next one on. The track joins `target` (its groundings may then confirm
        or replace it); by default the one target followed, or none (target id 0: no grounding
        ever touches it) when there are none or several. Raises SeedRejected (a ValueError) when
        no buffered frame has that stamp ("no_frame") or the mask is of another size ("size") or
        empty ("empty"), and ValueError when `target` is not followed."""
        frame = self.buffer.latest()
        if stamp_ns is not None:
            frame = next((f for f in reversed(self.buffer.frames()) if f.stamp_ns == stamp_ns), None)
        if frame is None:
            raise SeedRejected("no_frame", "no buffered frame to seed on" if stamp_ns is None else
                               f"no buffered frame has stamp {stamp_ns / NS_PER_S:.6f} s")
        mask = np.asarray(mask).astype(bool)
        if mask.shape != (frame.height, frame.width):
            raise SeedRejected("size", f"seed mask is {'x'.join(map(str, mask.shape[::-1]))}, "
                               f"the frame is {frame.width}x{frame.height}")
        if not mask.any():
            raise SeedRejected("empty", "seed mask is empty")
        if target is not None and target not in self._targets:
            raise ValueError(f"no target {target}")
        state = self.tracker.start(frame, mask=mask)
        budget = [self.config.max_catch_up_frames]
        self._catch_up(state, upto=None, budget=budget)
        with self._lock:
            self._catch_up(state, upto=self._last_stepped_seq, budget=budget)
            if target is None:
                target = next(iter(self._targets)) if len(self._targets) == 1 else 0
            owner = self._targets.get(target)
            t = _Track(self._next_id, owner.command if owner else "", label, TrackState.TRACKING, state.result.score,
                       state.result.mask, frame.stamp_ns, frame.stamp_ns, target if owner else 0)
            self._next_id += 1
            self._tracks[t.id] = t
            self.tracker.attach(t.id, state)
            last = self.buffer.get(state.seq)
            if last is not None:
                self._update(t, last, state.result.mask, state.result.score, False)
            self.stats["tracks_seeded"] += 1
            log.info("new track %d seeded from a mask on the frame at %.3f s", t.id, frame.stamp_s)
            return self._view(t, t.state)

    # ---- grounding ------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                # The oldest due grounding first: the targets take turns.
                job = self._pending.pop(next(iter(self._pending)))
                self._running = job.target
            try:
                self._run_job(job)
            except Exception:  # the worker must survive any backend failure
                log.exception("grounding worker failed")

    def _run_job(self, job: _Job) -> None:
        try:
            self._needed_seq = None
            self._ground_and_attach(job)
        except GroundingError as e:
            self.stats["grounding_failures"] += 1
            log.error("grounding %r failed: %s", job.command, e)
        except Exception as e:
            self.stats["grounding_failures"] += 1
            log.exception("grounding %r failed: %s", job.command, e)
        finally:
            with self._lock:
                self._running = None

    def _ground_and_attach(self, job: _Job) -> None:
        keyframes = self.buffer.select_keyframes(self.config.keyframes, job.end_seq)
        if not keyframes:
            return
        self.stats["groundings"] += 1
        result = self.grounder.ground(keyframes, job.command)
        result.validate()
        if self._stale(job):
            return
        self._needed_seq = result.keyframes[-1].seq
        chosen = tracklets.select(result, self._paced, self.config.selection)
        if self._stale(job) or self._expired(job, result, chosen):
            return
        with self._lock:
            target = self._targets.get(job.target)
            if target is not None:
                target.groundings += 1
            self._finished.append(result)
        if not chosen:
            self.stats["groundings_empty"] += 1
            log.info("grounding %r found no target", job.command)
            return
        seeds = []
        for cand in chosen:
            budget = [self.config.max_catch_up_frames]
            if not self.config.reseed_confirmed and self._confirms_live_track(job, result, cand):
                seeds.append((cand, None, budget))  # the live track goes on as it is
                continue
            k = self._seed_keyframe(result, cand)
            keyframe = result.keyframes[k]
            self._needed_seq = keyframe.seq
            state = self._paced.start(keyframe, mask=cand.mask_on(k))
            self._catch_up(state, upto=None, budget=budget, tracker=self._paced)
            seeds.append((cand, state, budget))
        with self._lock:
            if not self._job_current(job):
                return
            for cand, state, budget in seeds:
                if state is not None:
                    self._catch_up(state, upto=self._last_stepped_seq, budget=budget)
            self._reconcile(job, result, seeds)

    def _buffered_keyframe(self, result: GroundingResult, cand: tracklets.Tracklet) -> Optional[int]:
        """A chosen target's own keyframe; or, when that one has left the buffer (the worker
        paced the candidate tracklets past it), the oldest newer keyframe still buffered on which
        its tracklet has a mask. None when none of them is buffered any more."""
        for k in range(cand.keyframe_index, len(result.keyframes)):
            if cand.mask_on(k) is not None and self.buffer.get(result.keyframes[k].seq) is not None:
                return k
        return None

    def _seed_keyframe(self, result: GroundingResult, cand: tracklets.Tracklet) -> int:
        """The keyframe a chosen target is seeded on: `_buffered_keyframe`, so that the catch-up
        from there skips no frame; its own when none is buffered (a first grounding, caught up
        over whatever the buffer holds)."""
        k = self._buffered_keyframe(result, cand)
        return cand.keyframe_index if k is None else k

    def _confirms_live_track(self, job: _Job, result: GroundingResult, cand: tracklets.Tracklet) -> bool:
        """Whether a grounded target is one of the job's target's confident tracks, by its mask
        on a keyframe both cover (the comparison `_reconcile` makes): then it needs no catch-up."""
        with self._lock:
            return any(t.target == job.target and t.state != TrackState.LOST
                       and (self._keyframe_overlap(t, cand, result) or 0.0) >= self.config.reconcile_iou
                       for t in self._tracks.values())

    def _pace_now(self) -> bool:
        """Whether the worker pauses after a tracker step: only while a confident track's live
        masks are there to protect (not for a first grounding, nor when every track is LOST),
        and only while the oldest frame it still needs is in the newer three quarters of the
        buffer. A re-grounding whose keyframes have left the buffer is discarded, so pausing must
        never cost the re-grounding itself; past that point the worker runs at full speed."""
        if not any(t.state != TrackState.LOST for t in list(self._tracks.values())):
            return False
        latest, needed = self.buffer.latest(), self._needed_seq
        if latest is None or needed is None:
            return True
        return latest.seq - needed < self.buffer.capacity * 3 // 4

    def _job_current(self, job: _Job) -> bool:
        with self._lock:
            return job.generation == self._generation and job.target in self._targets

    def _stale(self, job: _Job) -> bool:
        """A finished grounding whose target was removed or replaced since it started (a new
        command, a stream that restarted): dropped and counted."""
        if self._job_current(job):
            return False
        self.stats["groundings_stale"] += 1
        log.info("grounding %r answered after its target changed or was removed: discarded", job.command)
        return True

    def _expired(self, job: _Job, result: GroundingResult, chosen: list) -> bool:
        """A re-grounding whose chosen candidate is on no keyframe still buffered (a late answer:
        its own keyframe and the newer ones its tracklet reaches have left the buffer): the live
        tracks' masks there are gone too, so it could not be compared with them, and a
        disagreement it cannot show must not swap what the robot follows. Dropped and counted;
        the tracks go on. A first grounding (no track to swap) is still used, caught up over
        what the buffer holds."""
        with self._lock:
            if not any(t.target == job.target for t in self._tracks.values()):
                return False
        gone = [c for c in chosen if self._buffered_keyframe(result, c) is None]
        if not gone:
            return False
        self.stats["groundings_expired"] += 1
        late_s = (self.buffer.latest().stamp_ns - result.keyframes[-1].stamp_ns) / NS_PER_S
        log.warning("re-grounding %r: its keyframes left the buffer (the newest %.1f s ago): discarded",
                    job.command, late_s)
        return True

    def _catch_up(self, state: ObjectState, upto: Optional[int], budget: list[int],
                  tracker: Optional[Tracker] = None) -> None:
        """Advance a detached object through the buffered frames after it. Without the lock
        (`upto` None) it chases the live frame, which moves on meanwhile; with the lock it
        finishes exactly at the last stepped frame.

        `budget` (one item, shared by the chase and the final pass of one object) is what is
        left of max_catch_up_frames: each round goes through that many frames at most, evenly
        spaced. The chase stops when the budget is spent or a round did not shrink the gap to
        the live frame (the tracker is slower than the camera, or shares the CPU with the camera
        thread's steps): it would never end, and every frame it steps is a core the live tracking
        beside it does not get. The locked pass then finishes through what is left of the budget,
        and at least the live frame. `tracker`: the one to step (the worker's paced one for its
        chase; by default the tracker itself)."""
        tracker = tracker or self.tracker
        gap = None
        while True:
            if state.seq < self._restart_seq:
                # The stream restarted (size change, time reset) while this object was chased:
                # it belongs to frames that are gone, and its caller drops it (the generation
                # changed). Not a gap the buffer could have held.
                return
            limit = self._last_stepped_seq if upto is None else upto
            frames = [f for f in self.buffer.frames_after(state.seq) if f.seq <= limit]
            if not frames:
                return
            if upto is None:
                if gap is not None and len(frames) >= gap:
                    self.stats["catch_up_chases_stopped"] += 1
                    return
                gap = len(frames)
            if frames[0].seq != state.seq + 1:
                if state.seq < self._restart_seq:
                    return  # restarted meanwhile (see above)
                self.stats["catch_up_gaps"] += 1
                log.warning("catch-up skipped %d frames that left the buffer: raise buffer_size",
                            frames[0].seq - state.seq - 1)
            cap = self.config.max_catch_up_frames
            if cap:
                if upto is None and budget[0] <= 0:
                    self.stats["catch_up_chases_stopped"] += 1
                    return
                cap = max(budget[0], 1)
            if cap and len(frames) > cap:
                # Evenly spaced, ending on the newest: the trackers take gaps between frames.
                self.stats["catch_up_frames_skipped"] += len(frames) - cap
                frames = [frames[i] for i in np.linspace(0, len(frames) - 1, cap).round().astype(int)]
            budget[0] -= len(frames)
            for f in frames:
                if upto is None:
                    self._needed_seq = f.seq
                state.result = tracker.advance(state, f)
                state.seq = f.seq
                self.stats["catch_up_frames"] += 1
            if upto is not None:
                return

    def _reconcile(self, job: _Job, result: GroundingResult, seeds: list) -> None:
        """Attach the grounded targets (under the lock). A target that overlaps a live track on
        its keyframe keeps that track's id. Otherwise it is another object: it replaces the live
        tracks it did not confirm once they are LOST or `replace_after` re-groundings in a row
        have disagreed with them; until then the disagreeing target is dropped and the tracks
        go on (a re-grounding that is wrong once must not swap what the robot follows).
        Only the job's target's tracks take part: another target's tracks are never confirmed
        or replaced by this grounding. `seeds`: (candidate, its state caught up to the live
        frame, or None where it confirmed a confident track before any catch-up, what is left
        of its catch-up budget)."""
        stamp = result.keyframes[-1].stamp_ns
        unmatched = {tid: t for tid, t in self._tracks.items() if t.target == job.target}
        matches = []
        for cand, state, budget in seeds:
            best_id, best_iou = None, 0.0
            for tid, t in unmatched.items():
                iou = self._overlap(t, cand, result, state)
                if iou > best_iou:
                    best_id, best_iou = tid, iou
            confirmed = best_id is not None and best_iou >= self.config.reconcile_iou
            if state is None and not (confirmed and unmatched[best_id].state != TrackState.LOST):
                # Not the confident track it confirmed before the catch-up was skipped (it was
                # lost meanwhile): seeded from the grounding after all, caught up here.
                k = self._seed_keyframe(result, cand)
                state = self.tracker.start(result.keyframes[k], mask=cand.mask_on(k))
                self._catch_up(state, upto=self._last_stepped_seq, budget=budget)
            matches.append((state, unmatched.pop(best_id) if confirmed else None, best_iou))
        if unmatched:
            for t in unmatched.values():
                t.disagreements += 1
            holding = [t for t in unmatched.values()
                       if t.state != TrackState.LOST and t.disagreements < self.config.replace_after]
            if holding:
                self.stats["regroundings_disputed"] += 1
                log.info("grounding did not confirm track(s) %s (best IoU %s); keeping them until %d "
                         "re-groundings in a row disagree", [t.id for t in holding],
                         ", ".join(f"{iou:.2f}" for _, matched, iou in matches if matched is None) or "-",
                         self.config.replace_after)
                # The targets found instead wait for the next re-grounding to repeat them.
                matches = [m for m in matches if m[1] is not None]
                for t in holding:
                    del unmatched[t.id]
        for state, t, iou in matches:
            if t is not None:
                self.stats["tracks_confirmed"] += 1
                log.info("grounding confirmed track %d (IoU %.2f)", t.id, iou)
            else:
                t = _Track(self._next_id, job.command, result.class_word, TrackState.TRACKING,
                           state.result.score, state.result.mask, stamp, stamp, job.target)
                self._next_id += 1
                self._tracks[t.id] = t
                self.stats["tracks_started"] += 1
                log.info("new track %d for %r (best overlap with a live track: IoU %.2f)", t.id, job.command, iou)
            t.disagreements = 0
            t.label = result.class_word or t.label
            t.last_grounding_ns = stamp
            if state is None:  # confirmed, and it keeps its live state
                self.stats["tracks_confirmed_as_they_are"] += 1
            else:
                self.tracker.attach(t.id, state)
                last = self.buffer.get(state.seq)
                if last is not None:
                    self._update(t, last, state.result.mask, state.result.score, False)
            t.last_confident_ns = max(t.last_confident_ns, stamp)
        new_ids = [c for c, t in self._tracks.items() if t.target == job.target and c not in unmatched]
        for tid, t in unmatched.items():
            # Live tracks this grounding did not confirm were a different object: replaced.
            self.tracker.remove(tid)
            del self._tracks[tid]
            replaced_by = min(new_ids) if new_ids else 0
            self._ended.append(self._view(t, TrackState.REPLACED, replaced_by))
            self.stats["tracks_replaced"] += 1
            log.info("track %d replaced by %d", tid, replaced_by)

    @classmethod
    def _overlap(cls, t: _Track, cand: tracklets.Tracklet, result: GroundingResult,
                 state: Optional[ObjectState]) -> float:
        """Mask IoU of a live track and a grounded target: on a keyframe both cover
        (`_keyframe_overlap`); failing that (the track is younger) on the live frame, where the
        target has just been caught up to (0 when it was not)."""
        iou = cls._keyframe_overlap(t, cand, result)
        if iou is not None:
            return iou
        return tracklets.mask_iou(t.mask, state.result.mask) if state is not None else 0.0

    @staticmethod
    def _keyframe_overlap(t: _Track, cand: tracklets.Tracklet, result: GroundingResult) -> Optional[float]:
        """Mask IoU of a track and a grounded target on the keyframe the target came from;
        failing that on the newest keyframe both cover; None when they share none."""
        order = [cand.keyframe_index] + list(range(len(result.keyframes) - 1, -1, -1))
        for k in order:
            new, old = cand.mask_on(k), t.mask_at(result.keyframes[k].seq)
            if new is not None and old is not None:
                return tracklets.mask_iou(old, new)
        return None

    def _view(self, t: _Track, state: TrackState, replaced_by: int = 0) -> TrackView:
        return TrackView(t.id, t.command, t.label, state, t.score, t.mask, t.last_grounding_ns, replaced_by, t.target)

    # ---- lifetime -------------------------------------------------------------------------
    def grounding_running(self) -> bool:
        with self._lock:
            return self._running is not None or bool(self._pending)

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the grounding worker, waiting at most `timeout` seconds for a grounding in
        flight; False when it was still running then."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._closing.set()
        if self._worker is not None:
            self._worker.join(timeout=timeout)
            return not self._worker.is_alive()
        return True
