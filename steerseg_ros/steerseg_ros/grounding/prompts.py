"""Point prompts from grounding maps: the map's high cells become points in image pixels.

DecAF makes every cell with V >= threshold a positive point at the cell centre, keyframe by
keyframe in row-major order (`points_in_cell_order`, as its code lists them); a cap on the
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


def points_in_cell_order(maps: np.ndarray, image_sizes: list[tuple[int, int]], threshold: float = 0.8,
                         max_points: int = 0, min_separation: int = 0) -> list[PointPrompt]:
    """DecAF's point prompts over all keyframes' maps (K, Hg, Wg): every cell at or above
    `threshold`, keyframe by keyframe, each keyframe's cells in row-major order (the order of
    DecAF's get_candidate_points_video). image_sizes: (width, height) of each keyframe.
    max_points > 0 keeps only that many of the highest (ties: the earlier one), still in this
    order; min_separation as in points_from_map."""
    if maps.ndim != 3 or len(image_sizes) != maps.shape[0]:
        raise ValueError(f"expected (K, H, W) maps and K image sizes, got {maps.shape} and {len(image_sizes)}")
    points: list[PointPrompt] = []
    for k, size in enumerate(image_sizes):
        found = points_from_map(maps[k], size, threshold, None, k, min_separation)
        points += sorted(found, key=lambda p: (p.y, p.x))
    if max_points and len(points) > max_points:
        best = sorted(range(len(points)), key=lambda i: -points[i].score)[:max_points]
        points = [points[i] for i in sorted(best)]
    return points
