"""The oracle grounder: ground truth read from disk, turned into maps and point prompts as a
grounding backend would give them. A measuring instrument, not a model: with it, what the
following benchmark loses is lost by the streaming logic and the tracker, not by the grounding.

Owns `OracleGrounder` and `OracleGrounderConfig` (backend name `oracle`). Each keyframe's
ground truth is a PNG in `masks_dir` named like the frame: offline by the Frame's `name`; through
the node, whose frames have no names, by stamp, through the JSON-lines manifest steerseg-play
`--manifest` writes (`{"index", "name", "stamp_ns"}` per frame; re-read when a stamp is not in
it yet, since it grows while the node runs). The map of a keyframe is the share of each cell of
a token grid (`grid_width` cells across, rows in proportion: 30 x 17 at 854x480, as a Qwen-VL
model's 28 px tokens) that the object covers, divided by its largest cell; the point prompts are
at the cells deepest inside the object (the map times its 3x3 mean), best first.

Two kinds (`kind`):
- honest: says whether the object is in view. Hidden (empty ground truth) on every keyframe:
  `in_view = False` and no points, so the pipeline starts no track. Otherwise `in_view = True`,
  and the hidden keyframes' maps are empty.
- attention: always peaks somewhere, as an attention map does (`in_view` None). On a keyframe
  where the object is hidden the map is the back-projection of the object's colours (a ratio
  hue-saturation histogram, object over whole image, from its ground truth on the newest
  keyframe where it was visible that this grounder has seen): the most object-like other
  place. Before the object has ever been seen, a centred Gaussian.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from steerseg_ros.frame import Frame
from steerseg_ros.grounding.base import Grounder, GroundingError, GroundingResult, clean_command
from steerseg_ros.grounding.prompts import points_from_maps

KINDS = ("honest", "attention")
# Hue-saturation histogram of the attention kind (OpenCV's hue is 0..180 for uint8 images).
_HIST_BINS = [30, 32]
_HIST_RANGES = [0, 180, 0, 256]


@dataclass
class OracleGrounderConfig:
    """Settings of the oracle grounder (ground truth from disk; for benchmarks only)."""

    masks_dir: str = field(default="", metadata={
        "help": "Folder of ground-truth masks, one PNG per frame named like the frame (<name>.png; "
                "non-zero is the object). Required."})
    manifest: str = field(default="", metadata={
        "help": "steerseg-play's --manifest file (JSON lines with name and stamp_ns): how frames "
                "without a name (the node's) are matched to their masks, by stamp. Empty: by name only."})
    kind: str = field(default="honest", metadata={
        "help": "honest: says 'not in view' when the object is hidden on every keyframe; attention: "
                "always peaks somewhere, on the most object-like place when the object is hidden."})
    grid_width: int = field(default=30, metadata={
        "help": "Token grid cells across the image (rows in proportion; 30 gives 30x17 at 854x480)."})
    point_threshold: float = field(default=0.8, metadata={
        "help": "Cells whose point score (map x its 3x3 mean, per keyframe max 1) reaches this become points."})
    max_points: int = field(default=8, metadata={"help": "Most point prompts per grounding."})
    point_min_separation: int = field(default=1, metadata={
        "help": "A point within this many cells of a better one on its keyframe is dropped (0: none)."})

    def validate(self) -> None:
        if not self.masks_dir:
            raise ValueError("masks_dir must name the folder of ground-truth masks")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.grid_width < 1:
            raise ValueError(f"grid_width must be >= 1, got {self.grid_width}")
        if not 0.0 < self.point_threshold <= 1.0:
            raise ValueError(f"point_threshold must be in (0, 1], got {self.point_threshold}")
        if self.max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {self.max_points}")
        if self.point_min_separation < 0:
            raise ValueError(f"point_min_separation must be >= 0, got {self.point_min_separation}")


class OracleGrounder(Grounder):
    name = "oracle"

    def __init__(self, config: Optional[OracleGrounderConfig] = None):
        self.config = config or OracleGrounderConfig()
        self.config.validate()
        self.masks_dir = Path(self.config.masks_dir)
        if not self.masks_dir.is_dir():
            raise GroundingError(f"oracle grounder: no mask folder {self.masks_dir}")
        self._names_by_stamp: dict[int, str] = {}
        # The object's colour model: a ratio histogram from the newest visible keyframe seen.
        self._colours: Optional[np.ndarray] = None
        self._colours_stamp_ns = -1

    # ---- ground truth -----------------------------------------------------------------------
    def _name(self, frame: Frame) -> str:
        if frame.name:
            return frame.name
        if frame.stamp_ns not in self._names_by_stamp and self.config.manifest:
            self._read_manifest()
        name = self._names_by_stamp.get(frame.stamp_ns)
        if name is None:
            raise GroundingError(f"oracle grounder: frame at stamp {frame.stamp_ns} ns has no name"
                                 + (f" and is not in the manifest {self.config.manifest}" if self.config.manifest
                                    else " (give grounder.manifest: steerseg-play --manifest)"))
        return name

    def _read_manifest(self) -> None:
        try:
            lines = Path(self.config.manifest).read_text().splitlines()
        except OSError as e:
            raise GroundingError(f"oracle grounder: cannot read the manifest: {e}") from None
        for line in lines:
            try:
                entry = json.loads(line)
                self._names_by_stamp[int(entry["stamp_ns"])] = str(entry["name"])
            except (ValueError, KeyError, TypeError):
                continue  # a line still being written

    def truth(self, frame: Frame) -> np.ndarray:
        """The object's ground-truth mask on `frame` (HxW bool, resized to the frame)."""
        path = self.masks_dir / f"{self._name(frame)}.png"
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise GroundingError(f"oracle grounder: no ground truth {path}")
        if grey.shape != (frame.height, frame.width):
            grey = cv2.resize(grey, (frame.width, frame.height), interpolation=cv2.INTER_NEAREST)
        return grey > 0

    # ---- maps -------------------------------------------------------------------------------
    def grid_shape(self, width: int, height: int) -> tuple[int, int]:
        wg = self.config.grid_width
        return max(1, int(round(wg * height / width))), wg

    @staticmethod
    def _pooled(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """Area-pooled to the grid, divided by its largest cell (all zero stays zero)."""
        pooled = cv2.resize(values.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
        top = float(pooled.max())
        return pooled / top if top > 0 else pooled

    def _learn_colours(self, frame: Frame, mask: np.ndarray) -> None:
        if frame.stamp_ns < self._colours_stamp_ns:
            return
        hsv = cv2.cvtColor(frame.image, cv2.COLOR_RGB2HSV)
        inside = cv2.calcHist([hsv], [0, 1], mask.astype(np.uint8), _HIST_BINS, _HIST_RANGES)
        everywhere = cv2.calcHist([hsv], [0, 1], None, _HIST_BINS, _HIST_RANGES)
        # The ratio histogram (Swain & Ballard): colours common on the object and rare elsewhere.
        ratio = inside / np.maximum(everywhere, 1.0)
        self._colours = (ratio / max(float(ratio.max()), 1e-12)).astype(np.float32)
        self._colours_stamp_ns = frame.stamp_ns

    def _attention(self, frame: Frame, grid: tuple[int, int]) -> np.ndarray:
        """Where the object's colours are on a frame it is hidden on."""
        if self._colours is None:
            ys, xs = np.mgrid[0:grid[0], 0:grid[1]].astype(np.float32)
            cy, cx = (grid[0] - 1) / 2, (grid[1] - 1) / 2
            return np.exp(-(((ys - cy) / max(1.0, grid[0] / 3)) ** 2 + ((xs - cx) / max(1.0, grid[1] / 3)) ** 2) / 2)
        hsv = cv2.cvtColor(frame.image, cv2.COLOR_RGB2HSV)
        back = cv2.calcBackProject([hsv], [0, 1], self._colours * 255, _HIST_RANGES, 1)
        back = cv2.GaussianBlur(back.astype(np.float32), (0, 0), max(1.0, frame.width / (4 * grid[1])))
        pooled = self._pooled(back, grid)
        if not pooled.any():  # no object colour anywhere: still peak somewhere
            pooled[grid[0] // 2, grid[1] // 2] = 1.0
        return pooled

    def ground(self, keyframes: Sequence[Frame], command: str) -> GroundingResult:
        cfg = self.config
        t0 = time.perf_counter()
        command = clean_command(command)
        keyframes = list(keyframes)
        if not keyframes:
            raise GroundingError("no keyframes to ground on")
        width, height = keyframes[0].width, keyframes[0].height
        grid = self.grid_shape(width, height)
        truths = [self.truth(f) for f in keyframes]
        visible = [bool(m.any()) for m in truths]
        for f, m, seen in zip(keyframes, truths, visible):
            if seen and cfg.kind == "attention":
                self._learn_colours(f, m)
        maps = np.zeros((len(keyframes), *grid), np.float32)
        for k, (f, m, seen) in enumerate(zip(keyframes, truths, visible)):
            if seen:
                maps[k] = self._pooled(m, grid)
            elif cfg.kind == "attention":
                maps[k] = self._attention(f, grid)
        # Points deep inside the object: a cell high itself and among high neighbours.
        depth = maps * np.stack([cv2.blur(m, (3, 3), borderType=cv2.BORDER_CONSTANT) for m in maps])
        top = depth.reshape(len(keyframes), -1).max(axis=1)
        depth = depth / np.where(top > 0, top, 1.0)[:, None, None]
        points = points_from_maps(depth, (width, height), cfg.point_threshold, cfg.max_points,
                                  cfg.point_min_separation)
        in_view: Optional[bool] = None
        if cfg.kind == "honest":
            in_view = any(visible)
            if not in_view:
                points = []
        share = float(np.mean(visible))
        result = GroundingResult(
            command=command, backend=self.name, keyframes=keyframes, maps=maps, points=points,
            class_word="object", in_view=in_view, in_view_score=share if cfg.kind == "honest" else float("nan"),
            generated_text=(f"oracle ({cfg.kind}): object visible on {sum(visible)} of {len(keyframes)} keyframes"),
            timings={"total": time.perf_counter() - t0})
        result.validate()
        return result
