"""Frame buffering: a bounded, thread-safe ring of recent camera frames and keyframe selection.

Owns the ring that keeps the last N camera frames (`steerseg_ros.frame.Frame`), the reuse of the memory of frames that left it, and the choice of
keyframes that grounding looks at.
"""
from __future__ import annotations

import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np

from steerseg_ros.config_checks import check_finite
from steerseg_ros.frame import NS_PER_S, Frame

def _references(array: np.ndarray) -> int:
    return sys.getrefcount(array)


def _references_when_alone() -> int:
    """What `_references` counts for an array that only one local variable holds, measured the
    way `FrameBuffer.spare` measures (not assumed: the temporaries a call counts differ between
    Python versions)."""
    array = deque([np.empty(1)]).popleft()
    return _references(array)


_ALONE = _references_when_alone()
# Arrays of frames that left the ring, kept for reuse; each push retires at most one and each
# `spare` takes at most one, so a few cover a frame held a little longer by a grounding.
RETIRED_FRAMES = 4


class StampError(ValueError):
    """A frame's stamp is not newer than the newest frame in the buffer."""


@dataclass
class KeyframeConfig:
    """How keyframes are chosen from the buffer (each field's help text is in its metadata)."""

    count: int = field(default=8, metadata={"help": "How many keyframes (fewer when the window holds fewer usable frames)."})
    window_s: float = field(default=3.0, metadata={"help": (
        "Keyframes are spread uniformly in time over the last window_s seconds.")})
    min_spacing_s: float = field(default=0.05, metadata={"help": "Two keyframes are at least this many seconds apart."})
    dedup_threshold: float = field(default=0.0, metadata={"help": (
        "Skip a frame whose mean absolute grey-level difference to the previous keyframe (on a 32x32 "
        "thumbnail, 0..255) is below this; 0 disables the check.")})

    def validate(self) -> None:
        check_finite(self, "keyframes.")
        if self.count < 1:
            raise ValueError(f"keyframe count must be >= 1, got {self.count}")
        if self.window_s <= 0:
            raise ValueError(f"keyframe window must be > 0 s, got {self.window_s}")
        if self.min_spacing_s < 0:
            raise ValueError(f"keyframe spacing must be >= 0 s, got {self.min_spacing_s}")
        if self.dedup_threshold < 0:
            raise ValueError(f"dedup threshold must be >= 0, got {self.dedup_threshold}")


class FrameBuffer:
    """The last `capacity` frames, oldest first. Safe to use from several threads."""

    def __init__(self, capacity: int = 64):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self._frames: deque[Frame] = deque(maxlen=capacity)
        self._retired: deque[np.ndarray] = deque(maxlen=RETIRED_FRAMES)
        self.spares_given = 0  # how many frames `spare` has handed out memory for
        self._lock = threading.Lock()
        self._next_seq = 0

    @property
    def capacity(self) -> int:
        return self._frames.maxlen or 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    def push(self, image: np.ndarray, stamp_ns: int, frame_id: str = "", name: str = "") -> Frame:
        """Append a frame; the oldest one falls out when full. Raises StampError when the
        stamp is not strictly newer than the newest frame's."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"empty image {image.shape}")
        with self._lock:
            if self._frames and stamp_ns <= self._frames[-1].stamp_ns:
                raise StampError(
                    f"stamp {stamp_ns / NS_PER_S:.6f} s is not after the newest buffered "
                    f"frame's {self._frames[-1].stamp_ns / NS_PER_S:.6f} s")
            frame = Frame(self._next_seq, int(stamp_ns), image, frame_id, name)
            self._next_seq += 1
            if len(self._frames) == self._frames.maxlen:
                oldest = self._frames[0].image
                if oldest.base is None and oldest.flags.writeable:  # owns its memory
                    self._retired.append(oldest)
            self._frames.append(frame)
            return frame

    def spare(self, shape: tuple[int, ...]) -> Optional[np.ndarray]:
        """The memory of a frame that left the buffer, as a uint8 array of `shape` to convert
        the next camera image into (None when there is none of that shape). Only an array
        nothing else refers to any more is handed out: not a keyframe a grounding still holds,
        nor anything a view, a tensor or a Frame still points into.

        Why: a fresh array for every camera frame costs its page faults (the node runs with a
        low mmap threshold, so that freed frames go back to the system): converting an 854x480
        frame took 0.40 ms into fresh memory and 0.20 ms into reused memory (steerseg-bench
        --sections node_overhead). No library pools numpy arrays by reference count, hence this.
        Safe against other threads: an array that left the ring and that nothing holds cannot be
        reached by them any more."""
        shape = tuple(shape)
        with self._lock:
            for _ in range(len(self._retired)):
                array = self._retired.popleft()
                if array.shape != shape:
                    continue  # another size: the stream changed; let it go
                if _references(array) <= _ALONE:
                    self.spares_given += 1
                    return array
                self._retired.append(array)  # still held: try again later
            return None

    def clear(self) -> None:
        """Forget all frames (sequence numbers keep increasing)."""
        with self._lock:
            self._frames.clear()
            self._retired.clear()

    def latest(self) -> Optional[Frame]:
        with self._lock:
            return self._frames[-1] if self._frames else None

    def get(self, seq: int) -> Optional[Frame]:
        with self._lock:
            if not self._frames:
                return None
            i = seq - self._frames[0].seq
            # Sequence numbers are contiguous inside the ring, so this is an index.
            return self._frames[i] if 0 <= i < len(self._frames) else None

    def frames(self) -> list[Frame]:
        with self._lock:
            return list(self._frames)

    def frames_after(self, seq: int) -> list[Frame]:
        """Buffered frames with a sequence number greater than `seq`, oldest first."""
        with self._lock:
            if not self._frames:
                return []
            start = max(0, seq + 1 - self._frames[0].seq)
            return [self._frames[i] for i in range(start, len(self._frames))]

    def select_keyframes(self, config: KeyframeConfig, end_seq: Optional[int] = None) -> list[Frame]:
        """Keyframes for grounding, oldest first, ending at `end_seq` (default: the newest)."""
        frames = self.frames()
        if end_seq is not None:
            frames = [f for f in frames if f.seq <= end_seq]
        return select_keyframes(frames, config)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def select_keyframes(frames: Sequence[Frame], config: KeyframeConfig) -> list[Frame]:
    """Choose up to `config.count` frames spread uniformly in time over the window that ends at
    the newest frame, at least `min_spacing_s` apart, optionally skipping near-duplicates.

    The newest frame is always a keyframe: the grounding is then as fresh as it can be, and the
    tracker's catch-up from it is shortest.
    """
    config.validate()
    if not frames:
        return []
    end = frames[-1].stamp_ns
    start = end - int(config.window_s * NS_PER_S)
    window = [f for f in frames if f.stamp_ns >= start]
    stamps = np.array([f.stamp_ns for f in window], dtype=np.int64)
    spacing = int(config.min_spacing_s * NS_PER_S)
    # Targets spread over the span actually covered, so a half-full buffer still gets spread.
    targets = np.linspace(stamps[0], stamps[-1], config.count) if config.count > 1 else stamps[-1:]
    chosen: list[int] = []
    for target in targets[::-1]:  # newest first, so the newest frame is always kept
        allowed = np.ones(len(window), dtype=bool)
        if chosen:
            allowed[chosen[-1]:] = False
            allowed &= stamps <= stamps[chosen[-1]] - spacing
        candidates = np.flatnonzero(allowed)
        if candidates.size == 0:
            break
        chosen.append(int(candidates[np.argmin(np.abs(stamps[candidates] - target))]))
    chosen.sort()
    keyframes = [window[i] for i in chosen]
    if config.dedup_threshold > 0 and len(keyframes) > 1:
        kept = [keyframes[-1]]
        last_thumb = _thumbnail(keyframes[-1].image)
        for f in reversed(keyframes[:-1]):
            thumb = _thumbnail(f.image)
            if float(np.mean(np.abs(thumb - last_thumb))) >= config.dedup_threshold:
                kept.append(f)
                last_thumb = thumb
        keyframes = kept[::-1]
    return keyframes
