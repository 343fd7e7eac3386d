"""The one type every layer shares: `Frame`, a camera image with its stamp and the sequence
number the buffer gave it, and the stamp unit (nanoseconds, as ROS stamps)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NS_PER_S = 1_000_000_000


@dataclass(frozen=True, eq=False)
class Frame:
    """One camera image. `image` is HxWx3 uint8 RGB and must not be written to."""

    seq: int
    stamp_ns: int
    image: np.ndarray
    frame_id: str = ""
    name: str = ""

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def stamp_s(self) -> float:
        return self.stamp_ns / NS_PER_S
