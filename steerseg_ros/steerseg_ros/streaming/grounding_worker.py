"""The grounding schedule and the worker that runs it.

Owns when each target's grounding falls due (first grounding, retries, periodic re-grounding,
re-grounding when lost), the queue of due groundings (at most one per target, served in the
order they fell due), the worker thread that runs them (or the inline run of an offline
pipeline), the pacing of the worker's tracker steps beside the live tracking, and the dropping
of a grounding that went stale (its target changed) or expired (its keyframes left the buffer).
A grounding's chosen targets are seeded and caught up (catch_up), then reconciled with the live
tracks (reconcile), under the book's lock.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from steerseg_ros.frame import NS_PER_S, Frame
from steerseg_ros.grounding.base import Grounder, GroundingError, GroundingResult
from steerseg_ros.streaming import selection
from steerseg_ros.streaming.buffer import FrameBuffer
from steerseg_ros.streaming.catch_up import CatchUp
from steerseg_ros.streaming.reconcile import Reconciler, Seed, buffered_keyframe, confirms_live_track, seed_keyframe
from steerseg_ros.streaming.targets import Target, TargetBook, TrackState
from steerseg_ros.tracking.base import Tracker

# The pipeline's parts log under its logger: one name to filter or raise for the whole streaming logic.
log = logging.getLogger("steerseg_ros.streaming.pipeline")


@dataclass
class Job:
    generation: int
    command: str
    end_seq: int
    end_stamp_ns: int
    reason: str
    target: int = 0


class PacedTracker:
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


class GroundingWorker:
    """Schedules and runs the groundings of the book's targets. Its queue (`pending`, `running`,
    `closed`) is guarded by the book's lock, like the book itself; `config` is the pipeline's
    PipelineConfig, read on every use. `catch_up` is the CatchUp every catch-up of the pipeline
    goes through (the pipeline's seed_mask too)."""

    def __init__(self, book: TargetBook, buffer: FrameBuffer, grounder: Grounder, tracker: Tracker,
                 config, stats: Counter):
        self.book, self.buffer, self.grounder, self.tracker = book, buffer, grounder, tracker
        self.config, self.stats = config, stats
        self.wake = threading.Condition(book.lock)
        # The target whose grounding runs now (None: none), and the due groundings waiting for
        # the worker, in the order they fell due (at most one per target).
        self.running: Optional[int] = None
        self.pending: dict[int, Job] = {}
        self.closed = False
        self.closing = threading.Event()  # ends the worker's pauses at once
        # The oldest buffered frame the worker still needs: its pauses stop before that frame
        # would leave the buffer. For the candidate tracklets, the newest keyframe (a target is
        # seeded on the oldest keyframe still buffered that its tracklet reaches, and compared
        # with the tracks there; the result itself holds the keyframes): with the 3 s keyframe
        # window filling most of the buffer, the oldest keyframe would stop the pauses almost at
        # once. For the catch-up, the frame it has reached.
        self.needed_seq: Optional[int] = None
        self.paced = PacedTracker(tracker, lambda: config.worker_duty if config.asynchronous else 1.0,
                                  self.pace_now, self.closing)
        self.catch_up: Callable = CatchUp(book, buffer, tracker, config, stats, progress=self._reached)
        self.reconcile = Reconciler(book, buffer, tracker, config, stats)
        self._thread: Optional[threading.Thread] = None

    # ---- schedule (under the lock) --------------------------------------------------------
    def grounding(self, target_id: int) -> bool:
        """Whether a grounding of this target runs or waits (called under the lock)."""
        return target_id != 0 and (self.running == target_id or target_id in self.pending)

    def due_jobs(self, frame: Frame) -> list[Job]:
        """The grounding jobs that should start on this frame, one per target at most (called
        under the lock). Each target keeps its own schedule; a target with a grounding running
        or waiting is not due."""
        jobs: list[Job] = []
        enough_keyframes: Optional[bool] = None  # the same for every target: checked once
        for target in self.book.targets.values():
            reason = self._due(target, frame)
            if reason is None:
                continue
            if enough_keyframes is None:
                enough_keyframes = (len(self.buffer.select_keyframes(self.config.keyframes, frame.seq))
                                    >= self.config.min_keyframes)
            if not enough_keyframes:
                return []
            target.last_attempt_ns = frame.stamp_ns
            jobs.append(Job(self.book.generation, target.command, frame.seq, frame.stamp_ns, reason, target.id))
        return jobs

    def _due(self, target: Target, frame: Frame) -> Optional[str]:
        """Why a grounding of this target is due on this frame ("command", "lost",
        "regrounding"); None when it is not."""
        if self.grounding(target.id):
            return None
        tracks = self.book.tracks_of(target.id)
        since = None if target.last_attempt_ns is None else (frame.stamp_ns - target.last_attempt_ns) / NS_PER_S
        if not tracks:
            if since is not None and since < self.config.grounding_retry_s:
                return None
            return "command"
        if any(t.state == TrackState.LOST for t in tracks):
            if since is not None and since < min(self.config.grounding_retry_s, self.config.regrounding_period_s or np.inf):
                return None
            return "lost"
        if self.config.regrounding_period_s > 0 and since is not None and since >= self.config.regrounding_period_s:
            return "regrounding"
        return None

    def forget(self, target_id: Optional[int] = None) -> None:
        """Drop the due groundings still waiting: of one target, or of all (called under the
        lock). One that runs is dropped when it finishes, its target gone or its generation old."""
        if target_id is None:
            self.pending.clear()
        else:
            self.pending.pop(target_id, None)

    def submit(self, jobs: list[Job]) -> None:
        """Queue due jobs for the worker thread (called under the lock)."""
        self.pending.update((job.target, job) for job in jobs)
        self.wake.notify()

    # ---- running --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (an asynchronous pipeline only)."""
        if self.config.asynchronous:
            self._thread = threading.Thread(target=self._work, name="steerseg-grounding", daemon=True)
            self._thread.start()

    def run_inline(self, jobs: list[Job]) -> None:
        """Run due jobs in the calling thread (a pipeline that is not asynchronous)."""
        for job in jobs:
            with self.book.lock:
                if self.book.targets.get(job.target) is None:
                    continue  # removed meanwhile (from another thread)
                self.running = job.target
            self._run_job(job)

    def busy(self) -> bool:
        with self.book.lock:
            return self.running is not None or bool(self.pending)

    def close(self, timeout: float) -> bool:
        """Stop the worker thread, waiting at most `timeout` seconds for a grounding in flight;
        False when it was still running then."""
        with self.book.lock:
            self.closed = True
            self.wake.notify_all()
        self.closing.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            return not self._thread.is_alive()
        return True

    def _work(self) -> None:
        while True:
            with self.book.lock:
                while not self.pending and not self.closed:
                    self.wake.wait()
                if self.closed:
                    return
                # The oldest due grounding first: the targets take turns.
                job = self.pending.pop(next(iter(self.pending)))
                self.running = job.target
            try:
                self._run_job(job)
            except Exception:  # the worker must survive any backend failure
                log.exception("grounding worker failed")

    def _run_job(self, job: Job) -> None:
        try:
            self.needed_seq = None
            self._ground_and_attach(job)
        except GroundingError as e:
            self.stats["grounding_failures"] += 1
            log.error("grounding %r failed: %s", job.command, e)
        except Exception as e:
            self.stats["grounding_failures"] += 1
            log.exception("grounding %r failed: %s", job.command, e)
        finally:
            with self.book.lock:
                self.running = None

    def _ground_and_attach(self, job: Job) -> None:
        grounded = self._ground(job)
        if grounded is None:
            return
        result, chosen = grounded
        if not chosen:
            self.stats["groundings_empty"] += 1
            log.info("grounding %r found no target", job.command)
            return
        seeds = self._seed(job, result, chosen)
        with self.book.lock:
            if not self._job_current(job):
                return
            for cand, state, budget in seeds:
                if state is not None:
                    self.catch_up(state, upto=self.book.last_stepped_seq, budget=budget)
            self.reconcile(job.target, job.command, result, seeds, self.catch_up)

    def _ground(self, job: Job) -> Optional[tuple[GroundingResult, list[selection.Tracklet]]]:
        """The job's grounding and the candidates chosen from it, counted as one of its target's
        groundings and reported in the next output; None when there were no keyframes, or it
        went stale or expired meanwhile."""
        keyframes = self.buffer.select_keyframes(self.config.keyframes, job.end_seq)
        if not keyframes:
            return None
        self.stats["groundings"] += 1
        result = self.grounder.ground(keyframes, job.command)
        result.validate()
        if self._stale(job):
            return None
        self.needed_seq = result.keyframes[-1].seq
        if result.in_view is False:  # the backend says the object is not there: no best wrong guess
            self.stats["groundings_not_in_view"] += 1
            log.info("grounding %r: not in view (%s score %.3f)", job.command, result.backend, result.in_view_score)
            chosen = []
        else:
            chosen = selection.select(result, self.paced, self.config.selection)
        if self._stale(job) or self._expired(job, result, chosen):
            return None
        with self.book.lock:
            target = self.book.targets.get(job.target)
            if target is not None:
                target.groundings += 1
            self.book.finished.append(result)
        return result, chosen

    def _seed(self, job: Job, result: GroundingResult, chosen: list[selection.Tracklet]) -> list[Seed]:
        """Each chosen candidate started on its seed keyframe and chased towards the live frame
        (paced, without the lock); a candidate that confirms a confident track is left as it is
        unless `reseed_confirmed`."""
        seeds: list[Seed] = []
        for cand in chosen:
            budget = [self.config.max_catch_up_frames]
            if not self.config.reseed_confirmed and confirms_live_track(
                    self.book, job.target, result, cand, self.config.reconcile_iou):
                seeds.append((cand, None, budget))  # the live track goes on as it is
                continue
            k = seed_keyframe(self.buffer, result, cand)
            keyframe = result.keyframes[k]
            self.needed_seq = keyframe.seq
            state = self.paced.start(keyframe, mask=cand.mask_on(k))
            self.catch_up(state, upto=None, budget=budget, tracker=self.paced)
            seeds.append((cand, state, budget))
        return seeds

    # ---- pacing, staleness, expiry ---------------------------------------------------------
    def _reached(self, seq: int) -> None:
        self.needed_seq = seq

    def pace_now(self) -> bool:
        """Whether the worker pauses after a tracker step: only while a confident track's live
        masks are there to protect (not for a first grounding, nor when every track is LOST),
        and only while the oldest frame it still needs is in the newer three quarters of the
        buffer. A re-grounding whose keyframes have left the buffer is discarded, so pausing must
        never cost the re-grounding itself; past that point the worker runs at full speed."""
        if not any(t.state != TrackState.LOST for t in list(self.book.tracks.values())):
            return False
        latest, needed = self.buffer.latest(), self.needed_seq
        if latest is None or needed is None:
            return True
        return latest.seq - needed < self.buffer.capacity * 3 // 4

    def _job_current(self, job: Job) -> bool:
        with self.book.lock:
            return job.generation == self.book.generation and job.target in self.book.targets

    def _stale(self, job: Job) -> bool:
        """A finished grounding whose target was removed or replaced since it started (a new
        command, a stream that restarted): dropped and counted."""
        if self._job_current(job):
            return False
        self.stats["groundings_stale"] += 1
        log.info("grounding %r answered after its target changed or was removed: discarded", job.command)
        return True

    def _expired(self, job: Job, result: GroundingResult, chosen: list[selection.Tracklet]) -> bool:
        """A re-grounding whose chosen candidate is on no keyframe still buffered (a late answer:
        its own keyframe and the newer ones its tracklet reaches have left the buffer): the live
        tracks' masks there are gone too, so it could not be compared with them, and a
        disagreement it cannot show must not swap what the robot follows. Dropped and counted;
        the tracks go on. A first grounding (no track to swap) is still used, caught up over
        what the buffer holds."""
        with self.book.lock:
            if not any(t.target == job.target for t in self.book.tracks.values()):
                return False
        gone = [c for c in chosen if buffered_keyframe(self.buffer, result, c) is None]
        if not gone:
            return False
        self.stats["groundings_expired"] += 1
        late_s = (self.buffer.latest().stamp_ns - result.keyframes[-1].stamp_ns) / NS_PER_S
        log.warning("re-grounding %r: its keyframes left the buffer (the newest %.1f s ago): discarded",
                    job.command, late_s)
        return True
