"""The tracking interface: seed objects on (possibly past) frames, catch them up, step them on
every new frame.

Owns `Tracker` (what every tracking backend implements), `ObjectMask`, `MaskCandidate` and
`ObjectState`. The API is small and stateful, in the spirit of SAM2's video predictor, with one
addition the robot needs: an object is seeded and caught up *detached* (in the grounding worker
thread, while the live objects keep stepping at camera rate) and then attached to the live set.

Threading contract. `segment`, `start` and `advance` may run in a worker thread at the same
time as `step`, `attach` and `remove` run in the camera thread; a backend makes that safe.
`step`, `attach`, `remove` and `reset` are never called concurrently with each other.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import numpy as np

from steerseg_ros.frame import Frame


@dataclass
class ObjectMask:
    """One object's mask on one frame. `score` is the backend's confidence in [0, 1] that the
    object is present and the mask right (SAM2: from its predicted IoU and object score)."""

    mask: np.ndarray  # HxW bool
    score: float


@dataclass
class MaskCandidate:
    """A single-frame mask proposal from point prompts; `score` is its predicted quality."""

    mask: np.ndarray  # HxW bool
    score: float


class ObjectState:
    """A backend's per-object tracking state. `seq` is the frame it was last advanced to and
    `result` the mask there. Backends subclass it with whatever they carry."""

    def __init__(self, seq: int, result: ObjectMask):
        self.seq = seq
        self.result = result


class TrackerError(RuntimeError):
    """A tracking call failed (bad prompt, model failure)."""


class Tracker(ABC):
    """A tracking backend. Load models in `__init__` (raising
    steerseg_ros.grounding.ModelUnavailableError when weights are missing)."""

    name: str = "tracker"

    @abstractmethod
    def segment(self, frame: Frame, points: np.ndarray, labels: np.ndarray) -> list[MaskCandidate]:
        """Masks for one object on one frame from point prompts, best first; keeps no state.
        points: (N, 2) float pixel (x, y); labels: (N,) 1 positive, 0 negative."""

    @abstractmethod
    def start(self, frame: Frame, *, points: Optional[np.ndarray] = None,
              labels: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None) -> ObjectState:
        """A detached object seeded on `frame` by points (with labels) or an HxW bool mask."""

    @abstractmethod
    def advance(self, state: ObjectState, frame: Frame) -> ObjectMask:
        """Propagate a detached object to `frame`, the next frame in the order the caller feeds
        them: the buffered frames after `state.seq` during catch-up, or the keyframes forward
        and then backward from the seed when target selection builds tracklets. The caller
        sets `state.seq` and `state.result` afterwards."""

    @abstractmethod
    def attach(self, obj_id: int, state: ObjectState) -> None:
        """Make a detached object live under `obj_id` (replacing one with that id). Its state
        has been advanced to the last frame given to `step`."""

    @abstractmethod
    def remove(self, obj_id: int) -> None:
        """Stop tracking `obj_id`; other objects are not disturbed. Unknown ids are ignored."""

    @abstractmethod
    def step(self, frame: Frame) -> dict[int, ObjectMask]:
        """Propagate every live object to the new frame."""

    @property
    @abstractmethod
    def object_ids(self) -> list[int]:
        """Ids of the live objects."""

    def reset(self) -> None:
        """Remove every object."""
        for obj_id in list(self.object_ids):
            self.remove(obj_id)

    def close(self) -> None:
        """Release the model (optional)."""
