"""The built-in tracker's shared per-frame work (tracking/flow.py): each frame prepared once at
working resolution, and the optical flow of each frame pair computed once.

Owns `PreparedFrame` (grey and colour-histogram bins), `FlowPair` (the backward flow and how far
it is trusted, from a forward-backward check) and `FrameFlows`, the two small caches every
object, live or catching up, draws from, with one DIS instance per thread.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import cv2
import numpy as np

from steerseg_ros.frame import Frame

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
_PREPARED_FRAMES = 4  # frames in use at once: the live pair and a catch-up pair


def colour_bins(lab: np.ndarray, bins: int) -> np.ndarray:
    """Joint histogram bin of each pixel of a uint8 Lab image, `bins` levels per channel."""
    q = lab.astype(np.int32) * bins >> 8
    return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


class PreparedFrame:
    """One frame at working resolution: grey (for flow) and each pixel's colour-histogram bin."""

    __slots__ = ("seq", "stamp_ns", "shape", "grey", "bins")

    def __init__(self, frame: Frame, work_hw: tuple[int, int], colour_bins_per_channel: int):
        self.seq = frame.seq
        self.stamp_ns = frame.stamp_ns
        self.shape = frame.image.shape[:2]
        h, w = work_hw
        small = frame.image if (h, w) == self.shape else cv2.resize(frame.image, (w, h), interpolation=cv2.INTER_AREA)
        self.grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        self.bins = colour_bins(cv2.cvtColor(small, cv2.COLOR_RGB2LAB), colour_bins_per_channel).astype(np.uint16)


class FlowPair:
    """The backward flow of one frame pair (current -> previous pixel displacement, float16 to
    keep the cache small) and how far each current pixel's motion is trusted (0..1)."""

    __slots__ = ("disp", "trust")

    def __init__(self, disp: np.ndarray, trust: np.ndarray):
        self.disp = disp
        self.trust = trust

    def maps(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Absolute sampling maps (cv2.remap) into the previous frame for a box of the current one."""
        d = self.disp[y0:y1, x0:x1].astype(np.float32)
        map_x = d[..., 0] + np.arange(x0, x1, dtype=np.float32)[None, :]
        map_y = d[..., 1] + np.arange(y0, y1, dtype=np.float32)[:, None]
        return map_x, map_y


class FrameFlows:
    """Prepared frames and frame-pair flows for a FlowTracker with `config` (a FlowTrackerConfig:
    work_width, colour_bins, flow_preset, consistency_relative, consistency_absolute,
    flow_cache_pairs)."""

    def __init__(self, config):
        self.config = config
        # Prepared frames and flows are shared between the camera thread (step) and the grounding
        # worker (start/advance); the lock guards the caches, never the computation (two threads
        # may compute the same pair at worst, and both results are the same).
        self._cache_lock = threading.Lock()
        self._frames: OrderedDict[tuple[int, int], PreparedFrame] = OrderedDict()
        self._flows: OrderedDict[tuple, FlowPair] = OrderedDict()
        # A DIS instance keeps working buffers between calls, so each thread has its own.
        self._local = threading.local()

    def _work_hw(self, shape: tuple[int, int]) -> tuple[int, int]:
        h, w = shape
        if w <= self.config.work_width:
            return h, w
        return max(8, round(h * self.config.work_width / w)), self.config.work_width

    def prepare(self, frame: Frame) -> PreparedFrame:
        key = (frame.seq, frame.stamp_ns)
        with self._cache_lock:
            p = self._frames.get(key)
            if p is not None and p.shape == frame.image.shape[:2]:
                self._frames.move_to_end(key)
                return p
        p = PreparedFrame(frame, self._work_hw(frame.image.shape[:2]), self.config.colour_bins)
        with self._cache_lock:
            self._frames[key] = p
            while len(self._frames) > _PREPARED_FRAMES:
                self._frames.popitem(last=False)
        return p

    def _dis(self):
        dis = getattr(self._local, "dis", None)
        if dis is None:
            dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.config.flow_preset])
            self._local.dis = dis
        return dis

    def flow(self, prev: PreparedFrame, cur: PreparedFrame) -> FlowPair:
        key = (prev.seq, prev.stamp_ns, cur.seq, cur.stamp_ns)
        with self._cache_lock:
            pair = self._flows.get(key)
            if pair is not None:
                self._flows.move_to_end(key)
                return pair
        dis = self._dis()
        backward = dis.calc(cur.grey, prev.grey, None)
        forward = dis.calc(prev.grey, cur.grey, None)
        h, w = cur.grey.shape
        map_x = backward[..., 0] + np.arange(w, dtype=np.float32)[None, :]
        map_y = backward[..., 1] + np.arange(h, dtype=np.float32)[:, None]
        # Following the backward flow and then the forward flow should come back to the start.
        forward_there = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        bx, by = cv2.split(backward)
        fx, fy = cv2.split(forward_there)
        error2 = (bx + fx) ** 2 + (by + fy) ** 2
        allowed2 = self.config.consistency_relative * (bx * bx + by * by + fx * fx + fy * fy) \
            + self.config.consistency_absolute
        trust = np.exp2(-error2 / allowed2)
        # A pixel whose origin lies outside the previous frame came into view: no motion evidence.
        trust[(map_x < 0) | (map_x > w - 1) | (map_y < 0) | (map_y > h - 1)] = 0
        pair = FlowPair(backward.astype(np.float16), trust.astype(np.float16))
        with self._cache_lock:
            self._flows[key] = pair
            while len(self._flows) > self.config.flow_cache_pairs:
                self._flows.popitem(last=False)
        return pair

    def clear(self) -> None:
        with self._cache_lock:
            self._frames.clear()
            self._flows.clear()
