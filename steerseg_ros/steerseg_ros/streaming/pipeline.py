"""The streaming pipeline: camera frames and commands in, tracks with masks out.

Owns the live path and the public API: admitting a frame (and starting over when the stream
restarts), stepping the live tracks on it, the output of each frame, tracks seeded from a mask,
and the commands (`set_command`, `add_target`, `remove_target`, `targets`). Its parts: the targets
and tracks with their ids and the lock (targets.TargetBook, held here and passed to the others),
the grounding schedule and worker thread (grounding_worker), the catch-up of a new object to the
live frame (catch_up), and the reconciliation of a re-grounding with the live tracks (reconcile).

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

import logging
import time  # noqa: F401  (tests patch pipeline.time.perf_counter: the worker's pacing clock)
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from steerseg_ros.config_checks import check_finite
from steerseg_ros.frame import NS_PER_S, Frame
from steerseg_ros.grounding.base import MAX_COMMAND_CHARS, Grounder, GroundingResult, clean_command
from steerseg_ros.render import label_image
from steerseg_ros.streaming import selection
from steerseg_ros.streaming.buffer import FrameBuffer, KeyframeConfig, StampError
from steerseg_ros.streaming.grounding_worker import GroundingWorker
# The states and views live with the book that reports them; callers import them from here.
from steerseg_ros.streaming.targets import (CONFIDENT_STATES, PipelineState, TargetBook, TargetView, Track,  # noqa: F401
                                            TrackState, TrackView)
from steerseg_ros.tracking.base import Tracker

log = logging.getLogger("steerseg_ros.streaming.pipeline")


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
        "A track with no confident mask for this many seconds is LOST (and re-grounding starts); "
        "before that it is UNSEEN: its mask is not published.")})
    lost_retry_s: float = field(default=0.5, metadata={"help": (
        "A LOST track's target is re-grounded at once, then again every this many seconds while "
        "it stays lost (grounding_retry_s is for failed or empty first groundings). 0.5 suits the "
        "built-in grounder (a grounding takes well under that); with a VLM grounder set it to "
        "about one grounding's time (e.g. 1-2 s on a desktop GPU): a shorter one only queues.")})
    unseen_regrounding_s: float = field(default=0.0, metadata={"help": (
        "A track UNSEEN (the tracker doubts its mask) for this many seconds has its target "
        "re-grounded as a LOST one is (the newest frames, then every lost_retry_s), without waiting "
        "for lost_timeout_s, when the grounder answers whether the object is in view (the oracle, a "
        "VLM with grounder.in_view_check, SAM 3; not the built-in grounder, which always finds "
        "something): a doubted mask on an object still in view is replaced by a grounded one that "
        "much sooner, and the object found elsewhere replaces the doubted track at once. 0: at "
        "once; lost_timeout_s or more: only LOST tracks.")})
    lost_window_s: float = field(default=1.0, metadata={"help": (
        "A re-grounding after a loss takes its keyframes from the last this many seconds (not "
        "the keyframes.window_s window): it looks for the object where it is now. A target it "
        "finds on none of the newest keyframe's candidates is verified on the live frame "
        "before it is published.")})
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
    selection: selection.SelectionConfig = field(default_factory=selection.SelectionConfig,
                                                 metadata={"help": "Target selection."})
    asynchronous: bool = field(default=True, metadata={"help": (
        "Ground in a worker thread (the node) or inline in `process` (offline tools).")})
    reseed_confirmed: bool = field(default=False, metadata={"help": (
        "A re-grounding that confirms a confident track re-seeds the tracker from the grounded "
        "mask, caught up from its keyframe to the live frame (true), or leaves the track's live "
        "state as it is (false: the confirmation costs no catch-up, whose tracker steps would take "
        "the cores and the interpreter from the live tracking). A LOST track, or a target not "
        "confirmed, is always seeded from the grounding.")})
    grounding_latency_s: float = field(default=0.0, metadata={"help": (
        "A grounding's answer is used no earlier than this many seconds of camera time after it "
        "was asked for (the frame that made it due): a slow grounder played deterministically, "
        "the same on any machine, for the following benchmark and steerseg-eval. An answer that "
        "really takes longer lands when it is ready. 0: as soon as it is ready.")})
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
        for name in ("regrounding_period_s", "grounding_retry_s", "lost_timeout_s", "time_jump_reset_s",
                     "grounding_latency_s", "lost_retry_s", "unseen_regrounding_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("min_confidence", "reconcile_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.lost_window_s <= 0:
            raise ValueError(f"lost_window_s must be > 0, got {self.lost_window_s}")
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
        return [t for t in self.tracks if t.state in CONFIDENT_STATES]

    def label_image(self, out: Optional[np.ndarray] = None) -> np.ndarray:
        return label_image((self.frame.height, self.frame.width), self.visible_tracks(), out)


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
        self._book = TargetBook(tracker, self.config, self.stats, self.buffer.capacity)
        self._lock = self._book.lock
        self._worker = GroundingWorker(self._book, self.buffer, grounder, tracker, self.config, self.stats)
        self._worker.start()

    # ---- the parts' state under the names it had here (the tests reach into it) ------------
    @property
    def _tracks(self) -> dict[int, Track]:
        return self._book.tracks

    @property
    def _catch_up(self) -> Callable:
        return self._worker.catch_up

    @_catch_up.setter
    def _catch_up(self, catch_up: Callable) -> None:
        self._worker.catch_up = catch_up

    @property
    def _paced(self):
        return self._worker.paced

    @property
    def _needed_seq(self) -> Optional[int]:
        return self._worker.needed_seq

    @_needed_seq.setter
    def _needed_seq(self, seq: Optional[int]) -> None:
        self._worker.needed_seq = seq

    def _pace_now(self) -> bool:
        return self._worker.pace_now()

    # ---- commands -------------------------------------------------------------------------
    @property
    def command(self) -> Optional[str]:
        """The command followed ("; "-joined when several targets are); None when none."""
        with self._lock:
            if not self._book.targets:
                return None
            return "; ".join(t.command for t in self._book.targets.values())

    def set_command(self, text: str) -> str:
        """Follow a new command instead of every target followed so far: their tracks end now.
        Returns the cleaned command. Raises GroundingError for an empty or over-long command
        (nothing changes)."""
        command = clean_command(text, self.config.max_command_chars)
        with self._lock:
            self._book.drop_all_targets()
            self._worker.forget()
            self._book.new_target(command)
        log.info("new command: %r", command)
        return command

    def clear_command(self) -> None:
        """Stop following every target; their tracks end now."""
        with self._lock:
            self._book.drop_all_targets()
            self._worker.forget()

    def add_target(self, text: str) -> int:
        """Follow one more command beside the targets already followed; returns the new
        target's id (the `target_id` of its tracks). Raises GroundingError for an empty or
        over-long command and TargetLimitError when `max_targets` are followed already."""
        command = clean_command(text, self.config.max_command_chars)
        with self._lock:
            if len(self._book.targets) >= self.config.max_targets:
                self.stats["targets_refused"] += 1
                raise TargetLimitError(f"already following {len(self._book.targets)} targets, the most allowed "
                                       f"(pipeline.max_targets = {self.config.max_targets})")
            target = self._book.new_target(command)
        log.info("new target %d: %r", target.id, command)
        return target.id

    def remove_target(self, target_id: int) -> bool:
        """Stop following one target: its tracks end now (state REPLACED, replaced by 0), a
        grounding of it that is running is dropped when it finishes. False when there is no
        such target."""
        with self._lock:
            if self._book.targets.pop(target_id, None) is None:
                return False
            self._worker.forget(target_id)
            for t in self._book.tracks_of(target_id):
                self._book.end_track(t)
            self.stats["targets_removed"] += 1
        log.info("target %d removed", target_id)
        return True

    def request_grounding(self, target_id: int, why: str) -> bool:
        """Ground this target again as soon as its grounding worker is free, out of schedule
        (the node asks when a track's 3D position jumped: the next grounding re-verifies it).
        False when there is no such target."""
        with self._lock:
            target = self._book.targets.get(target_id)
            if target is None:
                return False
            target.requested = why or "requested"
        return True

    def targets(self) -> list[TargetView]:
        """The targets followed now, oldest first."""
        with self._lock:
            return [self._book.target_view(t) for t in self._book.targets.values()]

    # ---- frames ---------------------------------------------------------------------------
    @property
    def state(self) -> PipelineState:
        with self._lock:
            return self._book.pipeline_state()

    def process(self, image: np.ndarray, stamp_ns: int, frame_id: str = "", name: str = "") -> PipelineOutput:
        """Buffer a frame (HxWx3 uint8 RGB), step the live tracks on it, and start a grounding
        when one is due. Raises FrameRejected for a frame that cannot be used."""
        frame = self._admit(image, stamp_ns, frame_id, name)
        with self._lock:
            for target in self._book.targets.values():
                if target.start_ns is None:
                    target.start_ns = stamp_ns
            self._step(frame)
            self._worker.frame_arrived()
            jobs = self._worker.due_jobs(frame) if self.config.asynchronous else []
            if jobs:
                self._worker.submit(jobs)
        if not self.config.asynchronous:
            # Answers that are due land first (grounding_latency_s), then new groundings start.
            self._worker.land_inline()
            with self._lock:
                jobs = self._worker.due_jobs(frame)
            self._worker.run_inline(jobs)
        return self._output(frame)

    def _admit(self, image: np.ndarray, stamp_ns: int, frame_id: str, name: str) -> Frame:
        """The frame, buffered; the pipeline starts over first when the stream restarted (the
        image size changed, or time jumped back by `time_jump_reset_s`). Raises FrameRejected."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            self.stats["rejected_bad_image"] += 1
            raise FrameRejected("bad_image", f"expected a non-empty HxWx3 uint8 image, got {image.dtype} {image.shape}")
        last = self.buffer.latest()
        if last is not None and (image.shape[0], image.shape[1]) != (last.height, last.width):
            log.warning("image size changed from %dx%d to %dx%d: starting over",
                        last.width, last.height, image.shape[1], image.shape[0])
            self.stats["size_changes"] += 1
            self._restart()
        last_stamp_ns = self._book.last_stamp_ns
        if last_stamp_ns is not None and stamp_ns <= last_stamp_ns:
            back_s = (last_stamp_ns - stamp_ns) / NS_PER_S
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
        self._book.last_stamp_ns = stamp_ns
        self.stats["frames"] += 1
        return frame

    def _restart(self) -> None:
        with self._lock:
            book = self._book
            latest = self.buffer.latest()
            if latest is not None:
                book.restart_seq = latest.seq + 1
            book.end_all_tracks()
            self.tracker.reset()
            self.buffer.clear()
            book.generation += 1
            self._worker.forget()
            for target in book.targets.values():
                target.start_ns = target.last_attempt_ns = None
            book.last_stamp_ns = None
            book.last_stepped_seq = -1

    def _step(self, frame: Frame) -> None:
        results = self.tracker.step(frame) if self._book.tracks else {}
        self._book.last_stepped_seq = frame.seq
        for t in self._book.tracks.values():
            r = results.get(t.id)
            if r is None:
                continue
            self._book.update(t, frame, r.mask, r.score, self._worker.grounding(t.target))

    def _output(self, frame: Frame) -> PipelineOutput:
        """The frame's output: the tracks that ended and the groundings that finished since the
        previous one are reported once."""
        with self._lock:
            book = self._book
            views = [book.view(t, t.state) for t in sorted(book.tracks.values(), key=lambda t: t.id)]
            targets = [book.target_view(t) for t in book.targets.values()]
            output = PipelineOutput(frame, book.pipeline_state(), book.ended + views, book.finished, targets)
            book.ended, book.finished = [], []
        return output

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
        frame, mask = self._seed_frame(mask, stamp_ns, target)
        state = self.tracker.start(frame, mask=mask)
        budget = [self.config.max_catch_up_frames]
        self._catch_up(state, upto=None, budget=budget)
        with self._lock:
            book = self._book
            self._catch_up(state, upto=book.last_stepped_seq, budget=budget)
            if target is None:
                target = next(iter(book.targets)) if len(book.targets) == 1 else 0
            owner = book.targets.get(target)
            t = book.new_track(owner.command if owner else "", label, state.result.score, state.result.mask,
                               frame.stamp_ns, target if owner else 0)
            self.tracker.attach(t.id, state)
            last = self.buffer.get(state.seq)
            if last is not None:
                book.update(t, last, state.result.mask, state.result.score, False)
            self.stats["tracks_seeded"] += 1
            log.info("new track %d seeded from a mask on the frame at %.3f s", t.id, frame.stamp_s)
            return book.view(t, t.state)

    def _seed_frame(self, mask: np.ndarray, stamp_ns: Optional[int], target: Optional[int]) -> tuple[Frame, np.ndarray]:
        """The buffered frame a seed mask is for, and the mask as booleans; raises what
        `seed_mask` says."""
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
        if target is not None and target not in self._book.targets:
            raise ValueError(f"no target {target}")
        return frame, mask

    # ---- lifetime -------------------------------------------------------------------------
    def grounding_running(self) -> bool:
        return self._worker.busy()

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the grounding worker, waiting at most `timeout` seconds for a grounding in
        flight; False when it was still running then."""
        return self._worker.close(timeout)
