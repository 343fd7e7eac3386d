"""Target selection: candidate masks from point prompts, scored against the grounding maps.

Owns `Candidate`, `SelectionConfig` and `select`, which the pipeline calls between the grounder
and the tracker. Backend-agnostic: it only asks the tracker for single-frame masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from steerseg_ros.grounding.base import GroundingResult
from steerseg_ros.tracking.base import Tracker


@dataclass
class SelectionConfig:
    """max_points: point prompts tried, best first. weight: a in
    s = a*rho(mask, frame map) + (1-a)*rho(mask, video map). nms_iou: a candidate overlapping a
    better one on the same keyframe by more than this is dropped. max_targets: tracks started
    per grounding."""

    max_points: int = 8
    weight: float = 0.5
    nms_iou: float = 0.7
    max_targets: int = 1

    def validate(self) -> None:
        if self.max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {self.max_points}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {self.weight}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.max_targets < 1:
            raise ValueError(f"max_targets must be >= 1, got {self.max_targets}")


@dataclass
class Candidate:
    """A candidate target: a mask on one keyframe from one point prompt."""

    keyframe_index: int
    point_index: int
    mask: np.ndarray
    mask_score: float
    map_value: float
    score: float = 0.0


def pool_to_grid(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Fraction of each grid cell covered by the mask (area averaging)."""
    return cv2.resize(mask.astype(np.float32), (grid_hw[1], grid_hw[0]), interpolation=cv2.INTER_AREA)


def weighted_pearson(a: np.ndarray, b: np.ndarray, w: Optional[np.ndarray] = None) -> float:
    """Pearson correlation of a and b under weights w (uniform by default); 0 when either is
    constant."""
    a = a.ravel().astype(np.float64)
    b = b.ravel().astype(np.float64)
    w = np.ones_like(a) if w is None else w.ravel().astype(np.float64)
    w = w / w.sum()
    da = a - (w * a).sum()
    db = b - (w * b).sum()
    cov = (w * da * db).sum()
    var = (w * da * da).sum() * (w * db * db).sum()
    return float(cov / np.sqrt(var)) if var > 1e-24 else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def candidates_from_points(result: GroundingResult, tracker: Tracker, config: SelectionConfig) -> list[Candidate]:
    """One candidate per point prompt (the tracker's best mask for it), with per-keyframe NMS."""
    kept: list[Candidate] = []
    for i, p in enumerate(result.points[:config.max_points]):
        frame = result.keyframes[p.keyframe_index]
        proposals = tracker.segment(frame, np.array([[p.x, p.y]], np.float32), np.array([1], np.int32))
        if not proposals or not proposals[0].mask.any():
            continue
        cand = Candidate(p.keyframe_index, i, proposals[0].mask, proposals[0].score, p.score)
        if any(k.keyframe_index == cand.keyframe_index and mask_iou(k.mask, cand.mask) > config.nms_iou
               for k in kept):
            continue
        kept.append(cand)
    return kept


def score_by_correlation(result: GroundingResult, candidates: list[Candidate], weight: float) -> None:
    """SteerSeg's ranking: correlation of the mask, pooled to the map grid, with the frame-level
    and video-level maps of its keyframe (the fused map stands in for a missing granularity)."""
    for c in candidates:
        k = c.keyframe_index
        frame_map = result.frame_maps[k] if result.frame_maps is not None else result.maps[k]
        video_map = result.video_maps[k] if result.video_maps is not None else result.maps[k]
        rho_f = weighted_pearson(pool_to_grid(c.mask, frame_map.shape), frame_map)
        rho_v = weighted_pearson(pool_to_grid(c.mask, video_map.shape), video_map)
        c.score = weight * rho_f + (1 - weight) * rho_v


def select(result: GroundingResult, tracker: Tracker, config: SelectionConfig) -> list[Candidate]:
    """The chosen targets, best first (at most config.max_targets). Records the candidates'
    scores and the chosen points in `result`."""
    config.validate()
    candidates = candidates_from_points(result, tracker, config)
    score_by_correlation(result, candidates, config.weight)
    candidates.sort(key=lambda c: -c.score)
    chosen = candidates[:config.max_targets]
    result.candidate_scores = [float("nan")] * len(result.points)
    for c in candidates:
        result.candidate_scores[c.point_index] = c.score
    result.chosen_points = [c.point_index for c in chosen]
    return chosen
