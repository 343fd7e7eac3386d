"""The built-in grounder's motion cue (grounding/builtin.py): how much each keyframe's pixels
move independently of the camera.

Owns the camera motion between consecutive keyframes (an affine map, a similarity or a
homography fitted to ORB matches with RANSAC, refused when implausible) and the object-motion
energy: the residual colour difference of keyframes aligned by the chained camera motion, in
units of each frame's own alignment noise. `config` is the grounder's BuiltinGrounderConfig.
"""
from __future__ import annotations

from typing import Callable, Optional

import cv2
import numpy as np


def _scale_homography(H: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """H between images of one size, re-expressed for the same images resized by (sx, sy)
    (pixel-centre convention of cv2.resize)."""
    S = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)
    return S @ H @ np.linalg.inv(S)


def _plausible(H: np.ndarray, w: int, h: int) -> bool:
    """A camera motion between two keyframes: corners move less than the image size and the
    area changes less than 2x."""
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32).reshape(-1, 1, 2)
    moved = cv2.perspectiveTransform(corners, H)
    if not np.all(np.isfinite(moved)):
        return False
    if np.abs(moved - corners).max() > max(w, h):
        return False
    area = cv2.contourArea(moved.reshape(-1, 2))
    return 0.5 < area / float(w * h) < 2.0


def camera_motion(config, a: tuple, b: tuple, size: tuple[int, int]) -> Optional[np.ndarray]:
    """The camera motion from keyframe a to b (3x3, motion-image pixels) from ORB matches;
    None when it cannot be estimated."""
    (kp_a, des_a), (kp_b, des_b) = a, b
    if des_a is None or des_b is None or len(kp_a) < 8 or len(kp_b) < 8:
        return None
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(des_a, des_b)
    if len(matches) < 8:
        return None
    src = np.float32([kp_a[m.queryIdx].pt for m in matches]).reshape(-1, 1, 2)
    dst = np.float32([kp_b[m.trainIdx].pt for m in matches]).reshape(-1, 1, 2)
    w, h = size
    if config.camera_model == "homography":
        H, inliers = cv2.findHomography(src, dst, cv2.RANSAC, 2.0)
        if H is not None and inliers is not None and inliers.sum() >= 12 and _plausible(H, w, h):
            return H
    similarity = config.camera_model == "similarity"
    estimate = cv2.estimateAffinePartial2D if similarity else cv2.estimateAffine2D
    A, inliers = estimate(src, dst, method=cv2.RANSAC, ransacReprojThreshold=2.0)
    if A is not None and inliers is not None and inliers.sum() >= 6:
        H = np.vstack([A, [0, 0, 1]])
        if _plausible(H, w, h):
            return H
    return None


def keyframe_homographies(config, motion_images: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """(the camera motion from each keyframe to the next, identity where it failed or where
    camera_model is none; how many failed)."""
    k = len(motion_images)
    mh, mw = motion_images[0].shape[:2]
    homographies: list[np.ndarray] = [np.eye(3)] * (k - 1)
    failed = 0
    if config.camera_model != "none":
        # Small patches and few levels: the images are only about 200 px wide.
        orb = cv2.ORB_create(nfeatures=config.orb_features, edgeThreshold=15, patchSize=15,
                             nlevels=3)
        feats = [orb.detectAndCompute(cv2.cvtColor(m, cv2.COLOR_RGB2GRAY), None) for m in motion_images]
        homographies = []
        for i in range(k - 1):
            H = camera_motion(config, feats[i], feats[i + 1], (mw, mh))
            failed += H is None
            homographies.append(np.eye(3) if H is None else H)
    return homographies, failed


def _frame_energy(t: int, k: int, residual: Callable) -> tuple[np.ndarray, np.ndarray, float]:
    """Keyframe t's motion energy, where it is valid, and its 99.5th percentile excess."""
    # Two partners, the neighbours where there are two. The object shows in both
    # differences at its place in frame t, its ghosts (where it is in the partners) in
    # one each: the minimum keeps the object and drops the ghosts.
    partners = [u for u in (t - 1, t + 1) if 0 <= u < k]
    if len(partners) < 2 and k >= 3:
        partners = [1, 2] if t == 0 else [k - 2, k - 3]
    parts = [residual(t, u) for u in partners]
    if len(parts) == 2:
        (r1, v1), (r2, v2) = parts
        r = np.where(v1 & v2, np.minimum(r1, r2), np.where(v1, r1, r2))
        v = v1 | v2
    else:
        r, v = parts[0]
    rv = r[v] if v.any() else np.zeros(1, np.float32)
    median = float(np.median(rv))
    spread = 1.4826 * float(np.median(np.abs(rv - median)))
    excess = np.where(v, np.maximum(r - median, 0.0), 0.0)
    level = float(np.percentile(excess[v], 99.5)) if v.any() else 0.0
    # In units of this frame's own alignment noise (robust spread, at least 1 delta E),
    # so that a frame whose camera motion was estimated badly, and differs everywhere,
    # does not outshine the others.
    return excess / (spread + 1.0), v, level


def motion_maps(config, motion_images: list[np.ndarray], labs: list[np.ndarray]) -> tuple[Optional[np.ndarray], str]:
    """Per-keyframe motion energy (K, h, w) in [0, 1] at the working resolution, or None
    when no object motion is measured; and a few words on how it went."""
    k = len(labs)
    if k < 2:
        return None, "one keyframe, no motion"
    h, w = labs[0].shape[:2]
    mh, mw = motion_images[0].shape[:2]
    homographies, failed = keyframe_homographies(config, motion_images)
    blurred = [cv2.GaussianBlur(lab, (3, 3), 0) for lab in labs]
    ones = np.ones((h, w), np.float32)
    # Keyframe -> keyframe 0 camera motion, chained, at the working resolution.
    to_first = [np.eye(3)]
    for H in homographies:
        to_first.append(to_first[-1] @ np.linalg.inv(_scale_homography(H, w / mw, h / mh)))

    def residual(t: int, u: int) -> tuple[np.ndarray, np.ndarray]:
        """Colour difference of keyframe t and keyframe u aligned to it, in t's pixels."""
        M = np.linalg.inv(to_first[t]) @ to_first[u]  # u's pixels -> t's pixels
        warped = cv2.warpPerspective(blurred[u], M, (w, h), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
        valid = cv2.warpPerspective(ones, M, (w, h), flags=cv2.INTER_NEAREST) > 0.5
        valid = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        return np.sqrt(((blurred[t] - warped) ** 2).sum(-1)), valid

    energies, valids, levels = [], [], []
    for t in range(k):
        energy_t, valid_t, level_t = _frame_energy(t, k, residual)
        energies.append(energy_t)
        valids.append(valid_t)
        levels.append(level_t)
    level = max(levels)
    note = (f"camera motion estimated on {k - 1 - failed}/{k - 1} keyframe pairs"
            if config.camera_model != "none" else "camera motion not compensated")
    if level < config.min_motion:
        return None, (note + f"; no object motion measured (residual {level:.1f} < "
                      f"{config.min_motion:g})")
    energy = np.stack(energies).astype(np.float32)
    scale = float(np.percentile(energy[np.stack(valids)], 99.5))
    motion = np.clip(energy / max(scale, 1e-6), 0.0, 1.0)
    motion = np.stack([cv2.GaussianBlur(m, (5, 5), 0) for m in motion])
    return motion, note
