"""Video object segmentation metrics as the DAVIS toolkit computes them.

J is region similarity (IoU); F is the boundary F-measure with a tolerance of 0.8% of the
image diagonal. Conventions follow the DAVIS 2017 toolkit: two empty masks score J = 1; for F,
an empty prediction has precision 1 and an empty ground truth recall 1. Per-frame scores are
averaged per object, then objects are averaged (each object of each sequence counts once).

The toolkit itself needs scikit-image; these few lines reproduce its definitions with OpenCV.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

BOUNDARY_TOLERANCE = 0.008


def region_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1 when both are empty."""
    pred = pred.astype(bool)
    gt = gt.astype(bool)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a mask: pixels whose right, lower or lower-right neighbour
    differs (the DAVIS toolkit's seg2bmap for an unscaled mask)."""
    seg = mask.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (xx * xx + yy * yy <= radius * radius).astype(np.uint8)


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """Boundary F-measure: boundary pixels match when within `tolerance` x image diagonal."""
    radius = int(np.ceil(tolerance * np.linalg.norm(pred.shape[:2]))) if tolerance < 1 else int(tolerance)
    pred_b = boundary_map(pred)
    gt_b = boundary_map(gt)
    n_pred = np.count_nonzero(pred_b)
    n_gt = np.count_nonzero(gt_b)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0:
        return 0.0  # precision 1, recall 0
    if n_gt == 0:
        return 0.0  # precision 0, recall 1
    disk = _disk(radius)
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), disk).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), disk).astype(bool)
    precision = np.count_nonzero(pred_b & gt_dil) / n_pred
    recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass
class ObjectScore:
    """Mean J and F of one object over one sequence's frames."""

    sequence: str
    object_id: int
    j: float
    f: float
    frames: int

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


def score_object(sequence: str, object_id: int, preds: Sequence[np.ndarray],
                 gts: Sequence[np.ndarray], skip_first_last: bool = False) -> ObjectScore:
    """Score one object's predicted masks against its ground truth, frame by frame.

    skip_first_last: the DAVIS semi-supervised protocol leaves out the first frame (given) and
    the last one.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{sequence}: {len(preds)} predicted masks for {len(gts)} ground-truth masks")
    pairs = list(zip(preds, gts))
    if skip_first_last and len(pairs) > 2:
        pairs = pairs[1:-1]
    js, fs = [], []
    for p, g in pairs:
        if p.shape != g.shape:
            raise ValueError(f"{sequence}: mask shape {p.shape} differs from ground truth {g.shape}")
        js.append(region_j(p, g))
        fs.append(boundary_f(p, g))
    return ObjectScore(sequence, object_id, float(np.mean(js)), float(np.mean(fs)), len(js))


def summarize(scores: Iterable[ObjectScore]) -> dict[str, float]:
    """J, F and J&F averaged over objects (as the DAVIS toolkit reports them), in [0, 1]."""
    scores = list(scores)
    if not scores:
        return {"J": float("nan"), "F": float("nan"), "J&F": float("nan"), "objects": 0}
    j = float(np.mean([s.j for s in scores]))
    f = float(np.mean([s.f for s in scores]))
    return {"J": j, "F": f, "J&F": (j + f) / 2, "objects": len(scores)}
