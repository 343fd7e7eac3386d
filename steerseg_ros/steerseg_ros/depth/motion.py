"""The 3D jump check: a track's position that moves faster than an object can between two of
its frames is not believed.

Owns `JumpCheck` (per live track, the last position that passed and its stamp, dropped when the
track ends) and `Jump` (what a flagged move was: the track, both positions, the speed). A 2D
tracker can slide its mask off the object onto whatever lies next to or behind it with a
confident score; in 3D that shows as a position metres away one frame later. The check judges
speed in camera time (the stamps' difference), so it reads the same on any machine and at any
processing rate, and it compares with the last position that passed, not the last one seen: the
track stays flagged while its position stays out of reach of where the object was, and reach
grows with the time since, so a track whose object really went there is believed again after
distance / max_speed seconds (or at once when a grounding after the jump confirms the track).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from steerseg_ros.frame import NS_PER_S

# The estimates' own noise may not look like motion: a move is a jump only when it is longer
# than max_speed x dt plus this many standard errors of the two positions (their errors added
# in quadrature). It matters where dt is short (high frame rates, near-equal stamps).
NOISE_STDERRS = 3.0


@dataclass(frozen=True)
class Jump:
    """A track's position that moved faster than the check allows: from `previous` (the last
    position that passed, at `previous_stamp_ns`) to `position` (at `stamp_ns`), at `speed_mps`
    (distance over the stamps' difference). `first` is False while the track stays flagged for
    the same jump (every later frame whose position is still out of reach)."""

    track_id: int
    target_id: int
    stamp_ns: int
    position: tuple
    previous: tuple
    previous_stamp_ns: int
    speed_mps: float
    first: bool = True

    @property
    def distance_m(self) -> float:
        return math.dist(self.position, self.previous)

    def describe(self) -> str:
        """One line for the log: the track, both positions, the time between them and the speed."""
        dt = (self.stamp_ns - self.previous_stamp_ns) / NS_PER_S
        a = ", ".join(f"{v:.2f}" for v in self.previous)
        b = ", ".join(f"{v:.2f}" for v in self.position)
        return (f"track {self.track_id} jumped in 3D from ({a}) to ({b}) m, {self.distance_m:.2f} m in "
                f"{dt * 1e3:.0f} ms of camera time: {self.speed_mps:.1f} m/s")


@dataclass
class _Last:
    position: tuple
    stderr: float
    stamp_ns: int
    jump_ns: Optional[int] = None  # the stamp of the frame a still unresolved jump was flagged on


class JumpCheck:
    """Flags a track whose 3D position moves faster than `max_speed_mps` (0: never) between its
    frames (see the module docstring). Feed it every frame's estimates with `check`; it keeps one
    small record per live track and drops it when `end` (or `keep_only`) says the track ended.
    Not thread-safe: one caller (the node's processing thread)."""

    def __init__(self, max_speed_mps: float = 3.0):
        self.max_speed_mps = float(max_speed_mps)
        self._last: dict[int, _Last] = {}
        self._stamp_ns: Optional[int] = None

    def __len__(self) -> int:
        return len(self._last)

    def check(self, track_id: int, position: Sequence[float], stamp_ns: int, stderr: float = 0.0,
              grounded_ns: int = 0, target_id: int = 0) -> Optional[Jump]:
        """The jump when this track's `position` at `stamp_ns` is out of reach of its last
        position that passed; None when it passes (it becomes the track's last position).
        `grounded_ns`: the stamp of the track's latest grounding; one at or after the frame a
        jump was flagged on re-verified the track, and its position is taken as it is."""
        position = tuple(float(v) for v in position)
        if self._stamp_ns is not None and stamp_ns < self._stamp_ns:
            self._last.clear()  # camera time went back (a bag looping, a restarted driver)
        self._stamp_ns = stamp_ns
        last = self._last.get(track_id)
        if last is None or self.max_speed_mps <= 0 or stamp_ns <= last.stamp_ns:
            self._last[track_id] = _Last(position, stderr, stamp_ns)
            return None
        if last.jump_ns is not None and grounded_ns >= last.jump_ns:
            self._last[track_id] = _Last(position, stderr, stamp_ns)  # a grounding since confirmed it
            return None
        dt = (stamp_ns - last.stamp_ns) / NS_PER_S
        distance = math.dist(position, last.position)
        reach = self.max_speed_mps * dt + NOISE_STDERRS * math.hypot(stderr, last.stderr)
        if distance <= reach:
            self._last[track_id] = _Last(position, stderr, stamp_ns)
            return None
        first = last.jump_ns is None
        if first:
            last.jump_ns = stamp_ns
        return Jump(track_id, target_id, stamp_ns, position, last.position, last.stamp_ns, distance / dt, first)

    def pending(self, track_id: int) -> bool:
        """Whether the track is flagged now (its last jump not yet resolved)."""
        last = self._last.get(track_id)
        return last is not None and last.jump_ns is not None

    def end(self, track_id: int) -> None:
        """The track ended: forget it."""
        self._last.pop(track_id, None)

    def keep_only(self, track_ids: Iterable[int]) -> None:
        """Forget every track not in `track_ids` (the tracks still alive)."""
        alive = set(track_ids)
        for track_id in [i for i in self._last if i not in alive]:
            del self._last[track_id]

    def clear(self) -> None:
        self._last.clear()
        self._stamp_ns = None
