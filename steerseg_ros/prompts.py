"""Point prompts from grounding maps: the map's high cells become points in image pixels.

DecAF makes every cell with V >= threshold a positive point at the cell centre; a cap on the
number of points (highest first) bounds the tracker's work per grounding on a robot.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from steerseg_ros.grounding.base import PointPrompt


def points_from_map(grid_map: np.ndarray, image_size: tuple[int, int], threshold: float = 0.8,
                    max_points: Optional[int] = None, keyframe_index: int = 0,
                    min_separation: int = 0) -> list[PointPrompt]:
    """Points at the centres of cells with value >= threshold, best first.

    grid_map: (Hg, Wg) values in [0, 1]. image_size: (width, height) of the keyframe.
    min_separation: drop a point within this many cells (Chebyshev distance) of a better one;
        0 keeps every cell, as DecAF does.
    """
    if grid_map.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {grid_map.shape}")
    width, height = image_size
    hg, wg = grid_map.shape
    values = np.nan_to_num(grid_map.astype(np.float64), nan=0.0)
    rows, cols = np.nonzero(values >= threshold)
    order = np.argsort(-values[rows, cols], kind="stable")
    kept: list[tuple[int, int]] = []
    points: list[PointPrompt] = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if min_separation and any(max(abs(r - r2), abs(c - c2)) <= min_separation for r2, c2 in kept):
            continue
        kept.append((r, c))
        points.append(PointPrompt(keyframe_index, (c + 0.5) * width / wg, (r + 0.5) * height / hg,
                                  float(values[r, c])))
        if max_points is not None and len(points) >= max_points:
            break
    return points


def points_from_maps(maps: np.ndarray, image_size: tuple[int, int], threshold: float = 0.8,
                     max_points: Optional[int] = None, min_separation: int = 0) -> list[PointPrompt]:
    """Points over all keyframes' maps (K, Hg, Wg), best first; `max_points` caps the total.
    Among equal scores the newer keyframe comes first: its target needs the shortest catch-up."""
    points: list[PointPrompt] = []
    for k in range(maps.shape[0]):
        points += points_from_map(maps[k], image_size, threshold, None, k, min_separation)
    points.sort(key=lambda p: (-p.score, -p.keyframe_index))
    return points[:max_points] if max_points is not None else points
