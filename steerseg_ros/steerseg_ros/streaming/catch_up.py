"""The catch-up of a new object from its keyframe to the live frame.

Owns `CatchUp`: advancing a detached tracker object through the buffered frames after the one it
was started on, within the `max_catch_up_frames` budget, and the chase after a live frame that
moves on meanwhile. Used for a grounded target (by the grounding worker and the reconciliation)
and for a track seeded from a mask (by the pipeline).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Optional

import numpy as np

from steerseg_ros.frame import Frame
from steerseg_ros.streaming.buffer import FrameBuffer
from steerseg_ros.streaming.targets import TargetBook
from steerseg_ros.tracking.base import ObjectState, Tracker

# The pipeline's parts log under its logger: one name to filter or raise for the whole streaming logic.
log = logging.getLogger("steerseg_ros.streaming.pipeline")


class CatchUp:
    """Call it with an object to catch up. `book` tells where the stream stands (the last
    stepped frame, the last restart); `config` is the pipeline's PipelineConfig, read on every
    use; `progress` is told each frame the chase reaches (the grounding worker's pacing must not
    let that frame leave the buffer)."""

    def __init__(self, book: TargetBook, buffer: FrameBuffer, tracker: Tracker, config, stats: Counter,
                 progress: Callable[[int], None]):
        self.book, self.buffer, self.tracker, self.config = book, buffer, tracker, config
        self.stats, self.progress = stats, progress

    def __call__(self, state: ObjectState, upto: Optional[int], budget: list[int],
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
            if state.seq < self.book.restart_seq:
                # The stream restarted (size change, time reset) while this object was chased:
                # it belongs to frames that are gone, and its caller drops it (the generation
                # changed). Not a gap the buffer could have held.
                return
            limit = self.book.last_stepped_seq if upto is None else upto
            frames = [f for f in self.buffer.frames_after(state.seq) if f.seq <= limit]
            if not frames:
                return
            if upto is None:
                if gap is not None and len(frames) >= gap:
                    self.stats["catch_up_chases_stopped"] += 1
                    return
                gap = len(frames)
            if frames[0].seq != state.seq + 1:
                if state.seq < self.book.restart_seq:
                    return  # restarted meanwhile (see above)
                self.stats["catch_up_gaps"] += 1
                log.warning("catch-up skipped %d frames that left the buffer: raise buffer_size",
                            frames[0].seq - state.seq - 1)
            frames = self._within_budget(frames, upto, budget)
            if frames is None:
                return
            self._advance(state, frames, tracker, chasing=upto is None)
            if upto is not None:
                return

    def _within_budget(self, frames: list[Frame], upto: Optional[int], budget: list[int]) -> Optional[list[Frame]]:
        """The frames of one round that the budget allows, charged to it; None when the chase's
        budget is spent (the locked pass always goes through at least the live frame)."""
        cap = self.config.max_catch_up_frames
        if cap:
            if upto is None and budget[0] <= 0:
                self.stats["catch_up_chases_stopped"] += 1
                return None
            cap = max(budget[0], 1)
        if cap and len(frames) > cap:
            # Evenly spaced, ending on the newest: the trackers take gaps between frames.
            self.stats["catch_up_frames_skipped"] += len(frames) - cap
            frames = [frames[i] for i in np.linspace(0, len(frames) - 1, cap).round().astype(int)]
        budget[0] -= len(frames)
        return frames

    def _advance(self, state: ObjectState, frames: list[Frame], tracker: Tracker, chasing: bool) -> None:
        for f in frames:
            if chasing:
                self.progress(f.seq)
            state.result = tracker.advance(state, f)
            state.seq = f.seq
            self.stats["catch_up_frames"] += 1
