"""Rigid transforms of the 3D estimates: from the camera's optical frame into another frame.

Owns `RigidTransform` (a rotation given as a unit quaternion, then a translation: what a tf2
`TransformStamped` holds) and what applying one means for the node's 3D outputs: points,
`Object3D` estimates (position, box, spread) and position covariances. Plain numpy, no ROS: the
node looks the transform up with tf2 and hands its numbers here.

An axis-aligned box in the camera frame is an oriented box in the target frame. A consumer of
axis-aligned corners (the Track's extent_min/extent_max) gets the smallest axis-aligned box
around the rotated one; `oriented_box` gives the exact box (centre, orientation, edge lengths)
for a vision_msgs BoundingBox3D. The per-axis spread becomes a full covariance R C R^T, whose
diagonal is the new per-axis spread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


def quaternion_to_matrix(q: Sequence[float]) -> np.ndarray:
    """The 3x3 rotation matrix of the quaternion (x, y, z, w), normalised first."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(np.asarray(q, dtype=np.float64))
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@dataclass(frozen=True)
class RigidTransform:
    """p_target = R p_source + t, with R from the unit quaternion `rotation` (x, y, z, w)."""

    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)

    def __post_init__(self):
        q = np.asarray(self.rotation, dtype=np.float64)
        t = np.asarray(self.translation, dtype=np.float64)
        if q.shape != (4,) or t.shape != (3,) or not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))):
            raise ValueError(f"not a rigid transform: translation {self.translation}, rotation {self.rotation}")
        if not 0.5 < np.linalg.norm(q) < 2.0:  # tf2 normalises; anything far off is garbage
            raise ValueError(f"rotation quaternion {self.rotation} is far from unit length")

    @property
    def matrix(self) -> np.ndarray:
        return quaternion_to_matrix(self.rotation)

    def apply(self, points: Any) -> np.ndarray:
        """Points (..., 3) in the source frame -> the target frame (float64)."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.matrix.T + np.asarray(self.translation, dtype=np.float64)

    def rotate_covariance(self, covariance: Any) -> np.ndarray:
        """A 3x3 position covariance in the source frame -> the target frame: R C R^T."""
        r = self.matrix
        return r @ np.asarray(covariance, dtype=np.float64) @ r.T

    def unit_rotation(self) -> tuple[float, float, float, float]:
        """The rotation as a unit quaternion (x, y, z, w)."""
        q = np.asarray(self.rotation, dtype=np.float64)
        x, y, z, w = (float(v) for v in q / np.linalg.norm(q))
        return x, y, z, w


def box_corners(lo: Any, hi: Any) -> np.ndarray:
    """The 8 corners (8, 3) of the axis-aligned box [lo, hi]."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    pick = np.array([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=bool)
    return np.where(pick, hi, lo)


def position_covariance(obj: Any) -> np.ndarray:
    """An Object3D's 3x3 position covariance: its own when transformed, else diag(std^2)."""
    cov = getattr(obj, "covariance", None)
    if cov is not None:
        return np.asarray(cov, dtype=np.float64)
    return np.diag(np.asarray(obj.std, dtype=np.float64) ** 2)


def oriented_box(obj: Any) -> tuple[np.ndarray, tuple[float, float, float, float], np.ndarray]:
    """The exact box of an Object3D in its frame: (centre (3,), orientation quaternion (x, y, z,
    w), edge lengths (3,)). The estimate's box is axis-aligned in the camera frame; once
    transformed, `box_rotation` (set by `transform_object`) says how it is turned."""
    lo = np.asarray(getattr(obj, "box_min", obj.extent_min), dtype=np.float64)
    hi = np.asarray(getattr(obj, "box_max", obj.extent_max), dtype=np.float64)
    rotation = getattr(obj, "box_rotation", None) or (0.0, 0.0, 0.0, 1.0)
    centre_own = (lo + hi) / 2.0
    offset = np.asarray(getattr(obj, "box_offset", (0.0, 0.0, 0.0)), dtype=np.float64)
    centre = quaternion_to_matrix(rotation) @ centre_own + offset
    return centre, tuple(float(v) for v in rotation), hi - lo


@dataclass
class PlacedObject:
    """An Object3D moved into another frame (same fields, so every output reads it alike), with
    what the move adds: the full position covariance, and the exact box (`box_min`/`box_max` in
    the camera frame, turned by `box_rotation` and shifted by `box_offset`) beside its
    axis-aligned bounds `extent_min`/`extent_max`."""

    valid: bool
    position: tuple
    extent_min: tuple
    extent_max: tuple
    size: tuple
    n_valid: int
    std: tuple
    stderr: float
    reason: str
    points: Any
    covariance: np.ndarray
    box_min: tuple
    box_max: tuple
    box_rotation: tuple
    box_offset: tuple


def transform_object(transform: RigidTransform, obj: Any) -> Any:
    """An Object3D (or PlacedObject) in the transform's target frame. An invalid one is returned
    as it is (it carries no coordinates)."""
    if not obj.valid:
        return obj
    position = transform.apply(obj.position)
    # From the exact box's corners, so that transforming twice loses nothing.
    corners = transform.apply(_exact_corners(obj))
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    cov = transform.rotate_covariance(position_covariance(obj))
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    points = obj.points
    if points is not None:
        points = transform.apply(points).astype(np.float32)
    # The exact box composes: camera box -> previous placement (if any) -> this transform.
    prev_rotation = getattr(obj, "box_rotation", None) or (0.0, 0.0, 0.0, 1.0)
    prev_offset = np.asarray(getattr(obj, "box_offset", (0.0, 0.0, 0.0)), dtype=np.float64)
    rotation = _compose_quaternions(transform.unit_rotation(), prev_rotation)
    offset = transform.apply(prev_offset)
    box_min = getattr(obj, "box_min", obj.extent_min)
    box_max = getattr(obj, "box_max", obj.extent_max)
    return PlacedObject(
        valid=True, position=tuple(float(v) for v in position), extent_min=tuple(float(v) for v in lo),
        extent_max=tuple(float(v) for v in hi), size=tuple(float(v) for v in hi - lo), n_valid=obj.n_valid,
        std=tuple(float(v) for v in std), stderr=obj.stderr, reason=obj.reason, points=points, covariance=cov,
        box_min=tuple(box_min), box_max=tuple(box_max), box_rotation=rotation,
        box_offset=tuple(float(v) for v in offset))


def _exact_corners(obj: Any) -> np.ndarray:
    """The 8 corners of an estimate's exact box, in its frame."""
    lo = getattr(obj, "box_min", obj.extent_min)
    hi = getattr(obj, "box_max", obj.extent_max)
    rotation = getattr(obj, "box_rotation", None) or (0.0, 0.0, 0.0, 1.0)
    offset = np.asarray(getattr(obj, "box_offset", (0.0, 0.0, 0.0)), dtype=np.float64)
    return box_corners(lo, hi) @ quaternion_to_matrix(rotation).T + offset


def _compose_quaternions(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, float]:
    """The rotation a * b (b first, then a), both (x, y, z, w)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz)

