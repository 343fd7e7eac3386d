"""Pairing each colour frame with the depth frame of the same (or the nearest) stamp, and
measuring a steady offset between the two streams' stamps."""
from __future__ import annotations

import bisect
import collections
import threading
import time
from typing import Dict, Optional

import numpy as np


class DepthPairer:
    """Pairs each colour frame with the depth frame of the same stamp, or the nearest one
    within `tolerance_ns`; each depth frame pairs at most once.

    Written by hand because `message_filters` (whose ApproximateTimeSynchronizer is the
    reference for these semantics) is not installable on these machines: it ships with ROS
    distributions, not on PyPI. This is the small part the node needs: a bounded queue of
    depth frames sorted by stamp, and a lookup that can wait a little for a late depth frame.

    Stamps are assumed to rise on each stream (as a camera driver publishes them); a depth
    frame older than a colour frame already served minus the tolerance can never pair and is
    dropped (`depth_unpaired`); a full queue drops its oldest (`depth_dropped_full`).
    """

    COUNTERS = ("paired_exact", "paired_nearest", "colour_unpaired", "depth_unpaired", "depth_dropped_full")

    def __init__(self, tolerance_ns: int = 20_000_000, capacity: int = 30, idle_s: float = 1.0):
        if tolerance_ns < 0:
            raise ValueError(f"tolerance_ns must be >= 0, got {tolerance_ns}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.tolerance_ns = int(tolerance_ns)
        self.capacity = int(capacity)
        self._stamps: list = []
        self._frames: list = []
        self._last_colour_ns: Optional[int] = None
        # No depth for idle_s seconds (wall clock): the stream is off, and take() does not wait
        # for it (a colour frame must not pay the timeout when the depth camera is gone).
        self.idle_s = float(idle_s)
        self._last_add: Optional[float] = None
        self._cond = threading.Condition()
        self._counters: Dict[str, int] = {name: 0 for name in self.COUNTERS}
        # The stamps of the depth frames counted as depth_unpaired, until taken: whoever reports
        # them can tell a depth frame whose colour frame never came from one whose colour frame
        # came but was never asked for (a consumer that drops frames under load).
        self._unpaired_stamps: collections.deque = collections.deque(maxlen=1024)

    def __len__(self) -> int:
        with self._cond:
            return len(self._stamps)

    @property
    def counters(self) -> Dict[str, int]:
        with self._cond:
            return dict(self._counters)

    def add(self, stamp_ns: int, depth) -> None:
        """Queue a depth frame (any object: an array, a message) under its stamp."""
        stamp_ns = int(stamp_ns)
        with self._cond:
            self._last_add = time.monotonic()
            if self._last_colour_ns is not None and stamp_ns < self._last_colour_ns - self.tolerance_ns:
                # Too old for any colour frame still to come.
                self._counters["depth_unpaired"] += 1
                self._unpaired_stamps.append(stamp_ns)
                return
            i = bisect.bisect_right(self._stamps, stamp_ns)
            if i > 0 and self._stamps[i - 1] == stamp_ns:
                self._frames[i - 1] = depth  # a repeated stamp replaces the frame
                self._cond.notify_all()
                return
            self._stamps.insert(i, stamp_ns)
            self._frames.insert(i, depth)
            while len(self._stamps) > self.capacity:
                self._stamps.pop(0)
                self._frames.pop(0)
                self._counters["depth_dropped_full"] += 1
            self._cond.notify_all()

    def take(self, colour_stamp_ns: int, timeout_s: float = 0.0):
        """The depth frame for the colour frame stamped `colour_stamp_ns`, or None (the frame
        goes on in 2D). Waits up to `timeout_s` while the best partner may still arrive: until
        the exact stamp is there or a depth frame at or after the colour stamp has come (later
        ones can only be farther). Does not wait when no depth frame came in the last `idle_s`
        seconds (no depth stream)."""
        t = int(colour_stamp_ns)
        with self._cond:
            live = self._last_add is not None and time.monotonic() - self._last_add <= self.idle_s
            if timeout_s > 0 and live:
                self._cond.wait_for(lambda: bool(self._stamps) and self._stamps[-1] >= t, timeout=timeout_s)
            best = self._nearest(t)
            if self._last_colour_ns is None or t > self._last_colour_ns:
                self._last_colour_ns = t
            if best is None:
                self._counters["colour_unpaired"] += 1
                self._drop_stale(t)
                return None
            stamp = self._stamps.pop(best)
            depth = self._frames.pop(best)
            self._counters["paired_exact" if stamp == t else "paired_nearest"] += 1
            self._drop_stale(t)
            return depth

    def _nearest(self, t: int) -> Optional[int]:
        if not self._stamps:
            return None
        i = bisect.bisect_left(self._stamps, t)
        best, best_dt = None, None
        for j in (i - 1, i):
            if 0 <= j < len(self._stamps):
                dt = abs(self._stamps[j] - t)
                if dt <= self.tolerance_ns and (best_dt is None or dt < best_dt):
                    best, best_dt = j, dt
        return best

    def _drop_stale(self, t: int) -> None:
        limit = t - self.tolerance_ns
        n = bisect.bisect_left(self._stamps, limit)
        if n:
            self._unpaired_stamps.extend(self._stamps[:n])
            del self._stamps[:n]
            del self._frames[:n]
            self._counters["depth_unpaired"] += n

    def set_limits(self, tolerance_ns: int, capacity: int) -> None:
        """Change the tolerance and the capacity on the fly (a smaller capacity drops the oldest
        queued frames at the next add)."""
        if tolerance_ns < 0 or capacity < 1:
            raise ValueError(f"need tolerance_ns >= 0 and capacity >= 1, got {tolerance_ns}, {capacity}")
        with self._cond:
            self.tolerance_ns, self.capacity = int(tolerance_ns), int(capacity)

    def take_unpaired_stamps(self) -> list:
        """The stamps of the depth frames counted as depth_unpaired since the last call."""
        with self._cond:
            out = list(self._unpaired_stamps)
            self._unpaired_stamps.clear()
            return out

    def clear(self) -> None:
        with self._cond:
            self._stamps.clear()
            self._frames.clear()
            self._last_colour_ns = None


class StampOffset:
    """The steady offset between the depth and the colour stamps of frames that arrive together:
    each depth image against the colour frame that arrived nearest to it, the median over the last
    `window` depth images, with the colour frame period. Pairing by nearest stamp cannot see such
    an offset (at 30 fps, depth stamped 30 ms late pairs 3 ms off with the next frame's colour
    image). By arrival, not by stamp: a replay faster or slower than real time, or depth at half
    the colour rate, leaves each depth image next to its own colour frame. Not thread-safe: the
    caller holds its lock."""

    def __init__(self, window: int):
        self.window = window
        self._colour: collections.deque = collections.deque(maxlen=2 * window)  # (arrival ns, stamp ns)
        self._depth: collections.deque = collections.deque(maxlen=2 * window)  # not yet compared
        self._offsets: collections.deque = collections.deque(maxlen=window)  # depth stamp - colour stamp

    def clear(self) -> None:
        for window in (self._colour, self._depth, self._offsets):
            window.clear()

    def colour(self, arrival_ns: int, stamp_ns: int) -> None:
        self._colour.append((arrival_ns, stamp_ns))
        self._compare()

    def depth(self, arrival_ns: int, stamp_ns: int) -> None:
        self._depth.append((arrival_ns, stamp_ns))
        self._compare()

    def _compare(self) -> None:
        """Compare each depth image that has a colour frame arrived after it (or with it) with
        the colour frame that arrived nearest to it."""
        colour = self._colour
        while self._depth and colour and self._depth[0][0] <= colour[-1][0]:
            arrival, stamp = self._depth.popleft()
            nearest = min(colour, key=lambda c: abs(c[0] - arrival))
            self._offsets.append(stamp - nearest[1])

    def measure(self) -> Optional[tuple[int, Optional[int]]]:
        """(median offset ns, colour frame period ns or None) once `window` depth images were
        compared; None before."""
        if len(self._offsets) < self.window:
            return None
        steps = np.diff(np.asarray([c[1] for c in self._colour], dtype=np.int64))
        steps = steps[steps > 0]
        return int(np.median(self._offsets)), (int(np.median(steps)) if steps.size else None)
