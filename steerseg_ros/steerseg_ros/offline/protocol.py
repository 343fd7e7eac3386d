"""The papers' offline protocol, run on the node's own core objects.

Owns `OfflineConfig`, `keyframe_indices`, `segment_clip` and `propagate_objects`. DecAF and
SteerSeg see a finished clip: keyframes spread uniformly over all of it (`linspace(0, T-1, 16)`),
one grounding, target selection (`steerseg_ros.streaming.selection.select`, as the node calls it), and
then the chosen tracklet's mask on its own keyframe seeds the tracker, which propagates it
forward to the last frame and backward to the first. The tracker is driven through its detached
`start` / `advance` API, which accepts frames in whatever order they are fed.

Only what streaming cannot do differs from the node: the keyframes may lie in the future of any
frame, and every frame is segmented after grounding has seen the whole clip. Measuring both on
the same backends gives the gap between the robot setting and the published numbers.

A clip is anything with `len()`, `image(i)` (HxWx3 uint8 RGB) and `frame_names`
(`steerseg_ros.offline.datasets.Sample` is one); frames are loaded one at a time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from steerseg_ros.streaming import selection as tracklets
from steerseg_ros.frame import NS_PER_S, Frame
from steerseg_ros.grounding.base import Grounder, GroundingResult, clean_command
from steerseg_ros.tracking.base import ObjectMask, Tracker


log = logging.getLogger("steerseg_ros.offline.protocol")


class Clip(Protocol):
    frame_names: list[str]

    def __len__(self) -> int: ...

    def image(self, i: int) -> np.ndarray: ...


@dataclass
class OfflineConfig:
    keyframes: int = field(default=16, metadata={
        "help": "Keyframes spread uniformly over the whole clip (linspace(0, T-1, n) truncated to "
                "integers, as DecAF's code picks them); every frame when the clip is not longer."})

    def validate(self) -> None:
        if self.keyframes < 1:
            raise ValueError(f"offline keyframes must be >= 1, got {self.keyframes}")


def keyframe_indices(num_frames: int, count: int) -> list[int]:
    """`count` frame indices spread uniformly from the first frame to the last (all frames when
    the clip has no more than `count`): linspace(0, T-1, count) truncated towards zero, exactly
    as DecAF's evaluation picks them (HYUNJS/DecAF 6c9766c), so per-frame outputs line up with
    its published ones. With more frames than `count` the spacing exceeds 1 and no index repeats."""
    if num_frames < 1:
        raise ValueError("the clip has no frames")
    if num_frames <= count:
        return list(range(num_frames))
    return np.linspace(0, num_frames - 1, count).astype(int).tolist()


def clip_frame(clip: Clip, i: int, fps: float) -> Frame:
    """Frame i of the clip, with its index as sequence number and a stamp at `fps`."""
    return Frame(i, int(round(i * NS_PER_S / fps)), clip.image(i), name=clip.frame_names[i])


class ClipMasks:
    """One mask per frame of a clip, kept bit-packed (a 480p clip of 100 frames is 5 MB), and
    merged by union when several targets cover a frame."""

    def __init__(self, num_frames: int):
        self._packed: list[Optional[np.ndarray]] = [None] * num_frames
        self.shape: Optional[tuple[int, int]] = None

    def __len__(self) -> int:
        return len(self._packed)

    def add(self, i: int, mask: np.ndarray) -> None:
        mask = np.asarray(mask, bool)
        if self.shape is None:
            self.shape = mask.shape
        elif mask.shape != self.shape:
            raise ValueError(f"mask {mask.shape} on frame {i} differs from the clip's {self.shape}")
        old = self._packed[i]
        packed = np.packbits(mask)
        self._packed[i] = packed if old is None else old | packed

    def covered(self, i: int) -> bool:
        return self._packed[i] is not None

    def get(self, i: int, shape: Optional[tuple[int, int]] = None) -> np.ndarray:
        """The mask on frame i (empty where nothing was added; `shape` when nothing was added
        anywhere)."""
        shape = self.shape or shape
        if shape is None:
            raise ValueError("no mask was added to the clip; give its shape")
        packed = self._packed[i]
        if packed is None:
            return np.zeros(shape, bool)
        return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)


def propagate(tracker: Tracker, clip: Clip, seed_index: int, seed_mask: np.ndarray, fps: float,
              masks: ClipMasks, visit: Optional[Callable[[int, str], None]] = None) -> None:
    """Seed the tracker with `seed_mask` on frame `seed_index`, propagate it to the last frame,
    then again from the seed back to the first frame; add every frame's mask to `masks`.
    `visit(i, direction)` is told each frame as it is segmented ("seed", "forward", "backward")."""
    n = len(clip)
    masks.add(seed_index, seed_mask)
    if visit:
        visit(seed_index, "seed")
    seed = clip_frame(clip, seed_index, fps)
    for direction, order in (("forward", range(seed_index + 1, n)), ("backward", range(seed_index - 1, -1, -1))):
        if len(order) == 0:
            continue
        state = tracker.start(seed, mask=seed_mask)
        for i in order:
            frame = clip_frame(clip, i, fps)
            state.result = tracker.advance(state, frame)
            state.seq = frame.seq
            masks.add(i, state.result.mask)
            if visit:
                visit(i, direction)


@dataclass
class OfflineResult:
    """What the offline protocol produced for one clip and command."""

    masks: ClipMasks
    keyframe_indices: list[int]
    grounding: Optional[GroundingResult]
    chosen: list[tracklets.Tracklet]
    timings: dict[str, float] = field(default_factory=dict)


def segment_clip(grounder: Grounder, tracker: Tracker, clip: Clip, command: str,
                 config: Optional[OfflineConfig] = None,
                 selection: Optional[tracklets.SelectionConfig] = None, fps: float = 24.0,
                 visit: Optional[Callable[[int, str], None]] = None) -> OfflineResult:
    """Ground `command` on keyframes over the whole clip, select the target(s) as the node does,
    and propagate each chosen tracklet from its keyframe over every frame in both directions.
    The result's mask on a frame is the union of the chosen targets' (empty when grounding
    found nothing). Raises GroundingError for a command that cannot be used."""
    config = config or OfflineConfig()
    config.validate()
    selection = selection or tracklets.SelectionConfig()
    command = clean_command(command)
    indices = keyframe_indices(len(clip), config.keyframes)
    keyframes = [clip_frame(clip, i, fps) for i in indices]
    masks = ClipMasks(len(clip))
    masks.shape = (keyframes[0].height, keyframes[0].width)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    result = grounder.ground(keyframes, command)
    result.validate()
    timings["grounding_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen = tracklets.select(result, tracker, selection)
    timings["selection_s"] = time.perf_counter() - t0
    log.info("grounding %r: %d point(s), %d target(s) chosen", command, len(result.points), len(chosen))
    del keyframes  # the grounding result keeps its own references; propagation reloads frames

    t0 = time.perf_counter()
    for t in chosen:
        propagate(tracker, clip, indices[t.keyframe_index], t.mask, fps, masks, visit)
    timings["propagation_s"] = time.perf_counter() - t0
    return OfflineResult(masks, indices, result, chosen, timings)


def propagate_objects(tracker: Tracker, clip: Clip, first_labels: np.ndarray, object_ids: Sequence[int],
                      fps: float, on_frame: Callable[[int, dict[int, ObjectMask]], None]) -> None:
    """Semi-supervised propagation: every object of the first frame's label image seeds the
    tracker there and is propagated forward over the clip. `on_frame(i, {object id: mask})` is
    called for every frame, the first included (with the given masks); an object absent from
    the first frame stays empty."""
    first = clip_frame(clip, 0, fps)
    states = {}
    given: dict[int, ObjectMask] = {}
    for obj in object_ids:
        mask = first_labels == obj
        given[obj] = ObjectMask(mask, 1.0)
        if mask.any():
            states[obj] = tracker.start(first, mask=mask)
    on_frame(0, given)
    empty = np.zeros(first_labels.shape, bool)
    for i in range(1, len(clip)):
        frame = clip_frame(clip, i, fps)
        out: dict[int, ObjectMask] = {}
        for obj in object_ids:
            state = states.get(obj)
            if state is None:
                out[obj] = ObjectMask(empty, 0.0)
                continue
            state.result = tracker.advance(state, frame)
            state.seq = frame.seq
            out[obj] = state.result
        on_frame(i, out)
