"""Target selection: candidate tracklets from point prompts, ranked against the grounding maps.

Owns `SelectionConfig`, `Tracklet`, and `select`, which the pipeline calls between the grounder
and the tracker. Each point prompt gives a candidate mask on its keyframe (the tracker's
`segment`, or the mask the grounder made itself: SAM 3's instances); overlapping candidates are
suppressed; each survivor is propagated over the other keyframes (forward, then backward) into a
tracklet; tracklets are ranked by one of two scorers (METHOD.md):

- "decaf": s_trk = (s_sam + V_p + s_ac) / 3, with s_ac the attention-consistency score; keep
  the tracklets with s_trk above a threshold, else the best one.
- "steerseg": s = a * rho(tracklet, frame maps) + (1 - a) * rho(tracklet, video maps), Pearson
  correlations over the keyframes with the tracklet pooled to each map's grid; the best one.

Backend-agnostic: it only asks the tracker for single-frame masks and detached propagation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from steerseg_ros.grounding.base import GroundingResult
from steerseg_ros.tracking.base import Tracker

SCORERS = ("auto", "decaf", "steerseg")


@dataclass
class SelectionConfig:
    scorer: str = field(default="auto", metadata={
        "help": "Tracklet ranking: 'decaf' (attention consistency, keep above keep_threshold), "
                "'steerseg' (correlation with frame and video maps, top 1), or 'auto' (decaf for "
                "the decaf grounder, steerseg otherwise)."})
    max_points: int = field(default=8, metadata={
        "help": "Point prompts tried per grounding, best first (each becomes a candidate)."})
    propagate: bool = field(default=True, metadata={
        "help": "Propagate candidates over all keyframes into tracklets before ranking; false "
                "ranks each candidate on its own keyframe only (cheaper)."})
    skip_covered_points: bool = field(default=True, metadata={
        "help": "Do not segment a point that falls inside a candidate already made on its "
                "keyframe (its mask would almost always be suppressed by NMS): fewer tracker "
                "calls per grounding. False segments every point, as DecAF does."})
    weight: float = field(default=0.5, metadata={
        "help": "steerseg: weight a of the frame-level map (1 - a for the video-level map)."})
    nms_iou: float = field(default=0.7, metadata={
        "help": "A candidate overlapping a better one (same keyframe) above this mask IoU is dropped."})
    keep_threshold: float = field(default=0.8, metadata={
        "help": "decaf: tracklets with s_trk above this are kept (else the best one)."})
    max_targets: int = field(default=1, metadata={
        "help": "Most tracks started per grounding (decaf may keep several tracklets; "
                "steerseg keeps the best one)."})

    def validate(self) -> None:
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {SCORERS}, got {self.scorer!r}")
        if self.max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {self.max_points}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {self.weight}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.max_targets < 1:
            raise ValueError(f"max_targets must be >= 1, got {self.max_targets}")


@dataclass
class Tracklet:
    """A candidate target: the mask a point prompt gave on its keyframe (`keyframe_index`,
    `mask`), and its propagation to the other keyframes (`masks`, one per keyframe)."""

    keyframe_index: int
    point_index: int
    mask: np.ndarray
    mask_score: float      # s_sam: the tracker's predicted quality of `mask`
    map_value: float       # V_p: the map's value at the point
    masks: list[np.ndarray] = field(default_factory=list)
    consistency: float = 0.0
    score: float = 0.0

    def mask_on(self, k: int) -> Optional[np.ndarray]:
        """The mask on keyframe k, or None where the tracklet does not reach it."""
        if self.masks:
            return self.masks[k]
        return self.mask if k == self.keyframe_index else None


def pool_to_grid(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Fraction of each grid cell covered by the mask (average pooling)."""
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


def mask_containment(a: np.ndarray, b: np.ndarray) -> float:
    """The share of the smaller mask inside the other: 1 when one holds the other, whatever
    their sizes (the same object segmented to a different extent: a part, or with its shadow)."""
    smaller = min(np.count_nonzero(a), np.count_nonzero(b))
    return np.count_nonzero(a & b) / smaller if smaller else 0.0


def _propagate(result: GroundingResult, tracker: Tracker, t: Tracklet) -> None:
    """Fill t.masks by propagating t.mask from its keyframe forward, then backward."""
    frames = result.keyframes
    masks: list[Optional[np.ndarray]] = [None] * len(frames)
    masks[t.keyframe_index] = t.mask
    for order in (range(t.keyframe_index + 1, len(frames)), range(t.keyframe_index - 1, -1, -1)):
        state = tracker.start(frames[t.keyframe_index], mask=t.mask)
        for k in order:
            state.result = tracker.advance(state, frames[k])
            state.seq = frames[k].seq
            masks[k] = state.result.mask
    t.masks = masks


def map_value(result: GroundingResult, p) -> float:
    """V_p for a point the grounder gave with its own mask: the value of the point's keyframe
    map in the cell under the point (for the hybrid, the attention map's: SAM 3's score is the
    candidate's s_sam)."""
    grid = result.maps[p.keyframe_index]
    h, w = result.keyframes[p.keyframe_index].image.shape[:2]
    row = min(int(p.y * grid.shape[0] / h), grid.shape[0] - 1)
    col = min(int(p.x * grid.shape[1] / w), grid.shape[1] - 1)
    return float(grid[row, col])


def build_tracklets(result: GroundingResult, tracker: Tracker, config: SelectionConfig) -> list[Tracklet]:
    """Candidates from the best `max_points` points, in order of s_sam + V_p; a candidate
    overlapping one kept on the same keyframe, or a kept tracklet there, is dropped. Points must
    lie inside their keyframe (PointPrompt's contract)."""
    candidates: list[Tracklet] = []
    # The best points whatever order the grounder lists them in (ties: the grounder's order).
    best = sorted(range(len(result.points)), key=lambda j: -result.points[j].score)[:config.max_points]
    for i in best:
        p = result.points[i]
        if config.skip_covered_points and any(
                c.keyframe_index == p.keyframe_index and c.mask[int(p.y), int(p.x)] for c in candidates):
            continue
        if p.mask is not None:
            # The grounder segmented the object itself (SAM 3): its mask and score are the candidate's.
            if p.mask.any():
                candidates.append(Tracklet(p.keyframe_index, i, p.mask, p.score, map_value(result, p)))
            continue
        proposals = tracker.segment(result.keyframes[p.keyframe_index],
                                    np.array([[p.x, p.y]], np.float32), np.array([1], np.int32))
        if proposals and proposals[0].mask.any():
            candidates.append(Tracklet(p.keyframe_index, i, proposals[0].mask, float(proposals[0].score), p.score))
    candidates.sort(key=lambda c: -(c.mask_score + c.map_value))
    kept: list[Tracklet] = []
    for c in candidates:
        k = c.keyframe_index
        if any(mask_iou(c.mask, m) > config.nms_iou for t in kept if (m := t.mask_on(k)) is not None):
            continue
        if config.propagate:
            _propagate(result, tracker, c)
        kept.append(c)
    return kept


def score_decaf(result: GroundingResult, tracklets: list[Tracklet]) -> None:
    """Attention consistency and s_trk (METHOD.md, DecAF), written into each tracklet."""
    maps = result.maps
    raw = []
    for t in tracklets:
        total = 0.0
        for k in range(maps.shape[0]):
            m = t.mask_on(k)
            if m is None:
                continue
            pooled = pool_to_grid(m, maps.shape[1:])
            v = maps[k].astype(np.float64)
            attention = v > v.mean()
            v_hat = np.where(attention, v, -v.max())
            denominator = float((attention * v_hat).sum())
            if denominator > 0:
                total += float((pooled * v_hat).sum()) / denominator
        raw.append(total)
    top = max((r for r in raw if r > 0), default=0.0)
    for t, r in zip(tracklets, raw):
        t.consistency = r / top if r > 0 else r
        t.score = (t.mask_score + t.map_value + t.consistency) / 3


def score_steerseg(result: GroundingResult, tracklets: list[Tracklet], weight: float) -> None:
    """Correlation of each tracklet with the frame-level and video-level maps over the
    keyframes it covers (SteerSeg). The fused map stands in for a missing granularity."""
    frame_maps = result.frame_maps if result.frame_maps is not None else result.maps
    video_maps = result.video_maps if result.video_maps is not None else result.maps

    def rho(maps: np.ndarray, t: Tracklet) -> float:
        covered = [k for k in range(maps.shape[0]) if t.mask_on(k) is not None]
        pooled = np.stack([pool_to_grid(t.mask_on(k), maps.shape[1:]) for k in covered])
        return weighted_pearson(pooled, maps[covered])

    for t in tracklets:
        t.score = weight * rho(frame_maps, t) + (1 - weight) * rho(video_maps, t)


def select(result: GroundingResult, tracker: Tracker, config: SelectionConfig) -> list[Tracklet]:
    """The chosen targets, best first (at most config.max_targets). Records each candidate's
    score and the chosen points in `result`."""
    config.validate()
    tracklets = build_tracklets(result, tracker, config)
    scorer = config.scorer
    if scorer == "auto":
        scorer = "decaf" if result.backend == "decaf" else "steerseg"
    if scorer == "decaf":
        score_decaf(result, tracklets)
    else:
        score_steerseg(result, tracklets, config.weight)
    tracklets.sort(key=lambda t: -t.score)
    if scorer == "decaf":
        chosen = [t for t in tracklets if t.score > config.keep_threshold] or tracklets[:1]
    else:
        chosen = tracklets[:1]
    chosen = chosen[:config.max_targets]
    result.candidate_scores = [float("nan")] * len(result.points)
    for t in tracklets:
        result.candidate_scores[t.point_index] = t.score
    result.chosen_points = [t.point_index for t in chosen]
    return chosen
