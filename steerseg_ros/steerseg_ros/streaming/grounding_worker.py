"""The grounding schedule and the worker that runs it.

Owns when each target's grounding falls due (first grounding, retries, periodic re-grounding,
re-grounding at once when a track is lost and then on a short cadence, a grounding asked for out
of schedule), which keyframes it looks at (the newest ones after a loss), the queue of due
groundings (at most one per target, served in the order they fell due), the worker thread that
runs them (or the inline run of an offline pipeline), when an answer lands (no earlier than
`grounding_latency_s` of camera time after it was asked for), the pacing of the worker's tracker
steps beside the live tracking, the check on the live frame of a target a re-grounding after a
loss found only on older keyframes, and the dropping of a grounding that went stale (its target
changed) or expired (its keyframes left the buffer). A grounding's chosen targets are seeded and
caught up (catch_up), then reconciled with the live tracks (reconcile), under the book's lock.
"""
from __future__ import annotations

import dataclasses
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
from steerseg_ros.streaming.buffer import FrameBuffer, KeyframeConfig
from steerseg_ros.streaming.catch_up import CatchUp
from steerseg_ros.streaming.reconcile import Reconciler, Seed, buffered_keyframe, confirms_live_track, seed_keyframe
from steerseg_ros.streaming.targets import Target, TargetBook, TrackState
from steerseg_ros.tracking.base import Tracker

# The pipeline's parts log under its logger: one name to filter or raise for the whole streaming logic.
log = logging.getLogger("steerseg_ros.streaming.pipeline")

# Groundings that must find the object where it is now, not where it was: after a loss, when
# the tracker doubts a track's mask (UNSEEN), and when the node asked because the track's 3D
# position jumped (it may have slid onto another object). They look at the newest frames only,
# and what they find only on older keyframes is checked on the live frame.
LOOK_NOW = ("lost", "unseen", "3d_jump")


@dataclass
class Job:
    generation: int
    command: str
    end_seq: int
    end_stamp_ns: int
    reason: str
    target: int = 0


@dataclass
class Landing:
    """A grounding's answer (its result and the candidates chosen from it) waiting for camera
    time to reach `due_ns`, when it is used."""

    job: Job
    result: GroundingResult
    chosen: list[selection.Tracklet]
    due_ns: int


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
        # Answers waiting for their camera time (grounding_latency_s): parked by target in an
        # inline pipeline (they land in `land_inline`); the worker thread waits on `wake` for its one.
        self.landings: dict[int, Landing] = {}
        self.awaiting_landing = False
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
        return target_id != 0 and (self.running == target_id or target_id in self.pending
                                   or target_id in self.landings)

    def due_jobs(self, frame: Frame) -> list[Job]:
        """The grounding jobs that should start on this frame, one per target at most (called
        under the lock). Each target keeps its own schedule; a target with a grounding running
        or waiting is not due."""
        jobs: list[Job] = []
        enough: dict[float, bool] = {}  # by keyframe window: the same for every target, checked once
        for target in self.book.targets.values():
            reason = self._due(target, frame)
            if reason is None:
                continue
            keyframes = self.keyframe_config(reason)
            if keyframes.window_s not in enough:
                enough[keyframes.window_s] = (len(self.buffer.select_keyframes(keyframes, frame.seq))
                                              >= self.config.min_keyframes)
            if not enough[keyframes.window_s]:
                continue
            target.last_attempt_ns = frame.stamp_ns
            target.requested = ""
            jobs.append(Job(self.book.generation, target.command, frame.seq, frame.stamp_ns, reason, target.id))
        return jobs

    def keyframe_config(self, reason: str) -> KeyframeConfig:
        """The keyframes a grounding looks at: after a loss or a 3D jump (LOOK_NOW), only the
        newest (lost_window_s), so that it finds the object where it is now, not where it was."""
        keyframes = self.config.keyframes
        if reason in LOOK_NOW and self.config.lost_window_s < keyframes.window_s:
            return dataclasses.replace(keyframes, window_s=self.config.lost_window_s)
        return keyframes

    def _due(self, target: Target, frame: Frame) -> Optional[str]:
        """Why a grounding of this target is due on this frame ("command", "lost", "unseen",
        "regrounding", or the reason it was asked for out of schedule); None when it is not."""
        if self.grounding(target.id):
            return None
        if target.requested:
            return target.requested
        tracks = self.book.tracks_of(target.id)
        since = None if target.last_attempt_ns is None else (frame.stamp_ns - target.last_attempt_ns) / NS_PER_S
        if not tracks:
            if since is not None and since < self.config.grounding_retry_s:
                return None
            return "command"
        # TargetBook.set_lost stamps every track it makes LOST (lost_ns); TargetBook.update the
        # first frame of an UNSEEN run (unseen_ns), which counts once it is unseen_regrounding_s old.
        lost = [t.lost_ns for t in tracks if t.state == TrackState.LOST]
        dwell = round(self.config.unseen_regrounding_s * NS_PER_S)
        # Only a grounder that can say the object is not in view is asked early: one that always
        # finds something answers with a guess while the object is hidden (on the following scenes
        # the built-in grounder's false following rose from 33% to 36% of the hidden frames).
        unseen = [t.unseen_ns + dwell for t in tracks if t.state == TrackState.UNSEEN and t.unseen_ns is not None
                  and frame.stamp_ns - t.unseen_ns >= dwell] if target.answers_in_view else []
        for reason, stamps in (("lost", lost), ("unseen", unseen)):
            if stamps:
                # At once when a track went lost (unseen) since the last try, then every lost_retry_s.
                if since is None or target.last_attempt_ns < max(stamps):
                    return reason
                return reason if since >= self.config.lost_retry_s else None
        if self.config.regrounding_period_s > 0 and since is not None and since >= self.config.regrounding_period_s:
            return "regrounding"
        return None

    def forget(self, target_id: Optional[int] = None) -> None:
        """Drop the due groundings still waiting: of one target, or of all (called under the
        lock). One that runs is dropped when it finishes, its target gone or its generation old."""
        if target_id is None:
            self.pending.clear()
            self.landings.clear()
        else:
            self.pending.pop(target_id, None)
            self.landings.pop(target_id, None)

    def frame_arrived(self) -> None:
        """A new frame was stepped (called under the lock): an answer waiting for its camera
        time may land now."""
        if self.awaiting_landing:
            self.wake.notify_all()

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
        """Run due jobs in the calling thread (a pipeline that is not asynchronous); an answer
        whose camera time has not come is parked until `land_inline` finds it due."""
        for job in jobs:
            with self.book.lock:
                if self.book.targets.get(job.target) is None:
                    continue  # removed meanwhile (from another thread)
                self.running = job.target
            self._run_job(job)

    def land_inline(self) -> None:
        """Use the parked answers whose camera time has come (an inline pipeline, each frame)."""
        with self.book.lock:
            now = self.book.last_stamp_ns
            due = [a for a in self.landings.values() if now is not None and a.due_ns <= now]
            for landing in due:
                del self.landings[landing.job.target]
        for landing in due:
            with self.book.lock:
                self.running = landing.job.target
            self._guarded(landing.job, self._use, landing)

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
        self.needed_seq = None
        self._guarded(job, self._ground_and_land, job)

    def _guarded(self, job: Job, step: Callable, *args) -> None:
        """Run one step of a job; a failure is counted and logged, never raised (the worker and
        the camera thread of an inline pipeline must survive any backend failure)."""
        try:
            step(*args)
        except GroundingError as e:
            self.stats["grounding_failures"] += 1
            log.error("grounding %r failed: %s", job.command, e)
        except Exception as e:
            self.stats["grounding_failures"] += 1
            log.exception("grounding %r failed: %s", job.command, e)
        finally:
            with self.book.lock:
                self.running = None

    def _ground_and_land(self, job: Job) -> None:
        """Ground, then use the answer when its camera time has come: at once, after waiting
        for it (the worker thread), or later from `land_inline` (parked)."""
        landing = self._ground(job)
        if landing is None:
            return
        with self.book.lock:
            now = self.book.last_stamp_ns
            if now is not None and landing.due_ns > now and not self.config.asynchronous:
                self.landings[job.target] = landing
                return
        if self.config.asynchronous and not self._wait_to_land(landing):
            return
        self._use(landing)

    def _wait_to_land(self, landing: Landing) -> bool:
        """Wait (the worker thread) until camera time reaches the answer's due time; False when
        the pipeline closed or the job went stale meanwhile."""
        with self.book.lock:
            self.awaiting_landing = True
            try:
                while (not self.closed and self._job_current(landing.job)
                       and (self.book.last_stamp_ns is None or self.book.last_stamp_ns < landing.due_ns)):
                    self.wake.wait(timeout=1.0)
            finally:
                self.awaiting_landing = False
            return not self.closed

    def _use(self, landing: Landing) -> None:
        """An answer that has landed: counted, reported, and its chosen targets seeded, caught up
        to the live frame and reconciled with the live tracks; nothing when it went stale or
        expired meanwhile."""
        job, result, chosen = landing.job, landing.result, landing.chosen
        if self._stale(job) or self._expired(job, result, chosen):
            return
        with self.book.lock:
            target = self.book.targets.get(job.target)
            if target is not None:
                target.groundings += 1
                target.answers_in_view = result.in_view is not None
            self.book.finished.append(result)
        if not chosen:
            self.stats["groundings_empty"] += 1
            log.info("grounding %r found no target", job.command)
            if result.in_view is False:
                self._hold_doubted(job)
            return
        seeds, absent_live = self._verified(job, result, self._seed(job, result, chosen))
        if not seeds:  # nothing that held up on the live frame: as if nothing was found
            if absent_live:
                self._hold_doubted(job)
            return
        with self.book.lock:
            if not self._job_current(job):
                return
            for cand, state, budget in seeds:
                if state is not None:
                    self.catch_up(state, upto=self.book.last_stepped_seq, budget=budget)
            self.reconcile(job.target, job.command, result, seeds, self.catch_up,
                           look_now=job.reason in LOOK_NOW)

    def _ground(self, job: Job) -> Optional[Landing]:
        """The job's grounding and the candidates chosen from it, due to land
        `grounding_latency_s` of camera time after the job was asked for; None when there were
        no keyframes, or it went stale meanwhile."""
        keyframes = self.buffer.select_keyframes(self.keyframe_config(job.reason), job.end_seq)
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
        if self._stale(job):
            return None
        return Landing(job, result, chosen, job.end_stamp_ns + round(self.config.grounding_latency_s * NS_PER_S))

    def _hold_doubted(self, job: Job) -> None:
        """The grounder says the object is not in view: the target's doubted tracks stay
        unpublished until a grounding confirms them (TargetBook.hold_doubted)."""
        with self.book.lock:
            if self._job_current(job) and self.book.hold_doubted(job.target):
                log.info("grounding %r: not in view, so the doubted tracks stay unpublished until a "
                         "grounding confirms them", job.command)

    def _verified(self, job: Job, result: GroundingResult, seeds: list[Seed]) -> tuple[list[Seed], bool]:
        """After a loss, a target the grounding found only on older keyframes (its candidate
        came from one, not from the newest) is checked on the frame it has been caught up to:
        the same grounder on that frame alone must put its peak on the caught-up mask. The
        catch-up from an old keyframe is what carried lost tracks into whatever then covered
        the object. Seeds that fail are dropped and counted. Also returns whether the grounder
        said, on a live frame, that the object is not in view."""
        if job.reason not in LOOK_NOW:
            return seeds, False
        newest = len(result.keyframes) - 1
        kept, absent = [], False
        for cand, state, budget in seeds:
            if state is None or cand.keyframe_index == newest:
                kept.append((cand, state, budget))
                continue
            live = self.buffer.get(state.seq)
            seen = self._seen_on(live, job.command, state.result.mask) if live is not None else False
            absent = absent or seen is None
            if seen:
                self.stats["regroundings_verified"] += 1
                kept.append((cand, state, budget))
            else:
                self.stats["regroundings_unverified"] += 1
                log.info("grounding %r after a loss: its target, found on a keyframe %.2f s old, is not "
                         "where the grounder looks on the live frame: dropped", job.command,
                         (result.keyframes[-1].stamp_ns - result.keyframes[cand.keyframe_index].stamp_ns) / NS_PER_S)
        return kept, absent

    def _seen_on(self, frame: Frame, command: str, mask: np.ndarray) -> Optional[bool]:
        """Whether the grounder, on `frame` alone, puts the peak of its map on `mask`; None when
        it says the object is not in view there. On the map's own grid: a cell the mask touches."""
        if not mask.any():
            return False
        check = self.grounder.ground([frame], command)
        check.validate()
        if check.in_view is False:
            return None
        grid = check.maps[0]
        touched = selection.pool_to_grid(mask, grid.shape) > 0
        return bool(touched.flat[int(np.argmax(grid))])

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
        the tracks go on. A first grounding, or one for a target whose every track is LOST (no
        track to swap: a LOST one is replaced at once anyway), is still used, caught up over what
        the buffer holds: on a loaded machine with a short buffer, discarding those left a lost
        target lost for good."""
        with self.book.lock:
            if not any(t.target == job.target and t.state != TrackState.LOST for t in self.book.tracks.values()):
                return False
        gone = [c for c in chosen if buffered_keyframe(self.buffer, result, c) is None]
        if not gone:
            return False
        self.stats["groundings_expired"] += 1
        late_s = (self.buffer.latest().stamp_ns - result.keyframes[-1].stamp_ns) / NS_PER_S
        log.warning("re-grounding %r: its keyframes left the buffer (the newest %.1f s ago): discarded",
                    job.command, late_s)
        return True
