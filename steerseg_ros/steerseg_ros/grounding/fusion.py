"""From attention rollout maps to one grounding map per keyframe (DecAF's fusion; SteerSeg's
maps without the background pass).

Owns the steps of METHOD.md section 1, "Fusion": Gaussian smoothing per frame,
object-minus-background contrast, min-max normalisation (the video map over all its frames
together, each frame map on its own, a constant map becoming 0), temporal alignment of the
video map to the keyframes, and the fusion of the two granularities into V in [0, 1] on the
frame grid; also `contrast_mass`, the object-against-background attention share the grounder's
optional "in view" check reads. NumPy and OpenCV only: no model is needed to test it.

Where METHOD.md leaves a detail open, DecAF's released code (HYUNJS/DecAF at commit 6c9766c,
`evaluation/inf_utils.py` and `evaluation/inference_attn_mask.py`) decides it: the smoothing is
a convolution with a normalised k x k Gaussian (sigma 1; k = 3 for video maps, 7 for frame maps)
over a zero-padded map, and the video map is upsampled bilinearly with half-pixel centres.
test/test_vlm_fusion.py checks this module against outputs recorded from that code.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class FusedMaps:
    """video: (K, Hv, Wv) aligned to the keyframes; frames: (K, Hf, Wf); fused: (K, Hf, Wf).
    All float32 in [0, 1]. object_mass: the mean `contrast_mass` of the two granularities where
    the grounder computed it (its attention "in view" check), NaN otherwise."""

    video: np.ndarray
    frames: np.ndarray
    fused: np.ndarray
    object_mass: float = float("nan")


def smooth(maps: np.ndarray, kernel: int, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each (H, W) map of a (N, H, W) stack; kernel 0 or 1 leaves it.
    Cells beyond the border count as 0, as in DecAF's code (a conv2d with padding k // 2): edge
    cells lose the weight that falls outside the map."""
    if kernel <= 1:
        return maps.astype(np.float32)
    # The normalised 2-D Gaussian is the outer product of normalised 1-D ones, so OpenCV's
    # separable blur computes the same convolution.
    return np.stack([cv2.GaussianBlur(m.astype(np.float32), (kernel, kernel), sigma,
                                      borderType=cv2.BORDER_CONSTANT) for m in maps])


def contrast(obj: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Object minus background, clamped to [0, 1]."""
    return np.clip(obj - background, 0.0, 1.0).astype(np.float32)


def minmax(values: np.ndarray) -> np.ndarray:
    """Min-max over the whole array; a constant array (or one with no finite value) becomes 0."""
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)


def minmax_each(maps: np.ndarray) -> np.ndarray:
    """Min-max of each (H, W) map of a (N, H, W) stack on its own."""
    return np.stack([minmax(m) for m in maps]) if len(maps) else maps.astype(np.float32)


def contrast_mass(obj: np.ndarray, background: np.ndarray, kernel: int = 0, sigma: float = 1.0) -> float:
    """How much of the object prompt's attention to the image the background prompt does not
    explain: both rollout maps (any shape, e.g. (T, H, W); smoothed per (H, W) map first when
    `kernel` > 1) normalised to sum 1 over all their cells, then sum(max(p_obj - p_bg, 0)), the
    total variation distance, in [0, 1]. 0 where the two prompts attend alike (what an object
    that is not there leaves: the object prompt then looks at the scene as the background one
    does); near 1 where the object prompt's attention sits where the background's does not.
    NaN where either map has no positive mass. Not part of DecAF: the node's "in view" evidence
    (grounder.in_view_check attention)."""
    obj = np.clip(np.nan_to_num(smooth(obj, kernel, sigma).astype(np.float64)), 0.0, None)
    background = np.clip(np.nan_to_num(smooth(background, kernel, sigma).astype(np.float64)), 0.0, None)
    if obj.shape != background.shape:
        raise ValueError(f"object and background maps differ in shape: {obj.shape} vs {background.shape}")
    total_obj, total_bg = float(obj.sum()), float(background.sum())
    if total_obj <= 0 or total_bg <= 0:
        return float("nan")
    return float(np.clip(obj / total_obj - background / total_bg, 0.0, None).sum())


def align_time(video: np.ndarray, num_frames: int, frames_per_step: int = 2) -> np.ndarray:
    """(T, H, W) video steps -> (num_frames, H, W): each step repeated for the frames it covers,
    the padding frame of an odd count dropped."""
    aligned = np.repeat(video, frames_per_step, axis=0)[:num_frames]
    if aligned.shape[0] != num_frames:
        raise ValueError(f"{video.shape[0]} video steps cover {aligned.shape[0]} frames, not {num_frames}")
    return aligned


def fuse(video: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Average of the video maps upsampled bilinearly to the frame grid and the frame maps,
    min-max over everything."""
    hf, wf = frames.shape[1:]
    up = np.stack([cv2.resize(v.astype(np.float32), (wf, hf), interpolation=cv2.INTER_LINEAR) for v in video])
    return minmax(0.5 * (up + frames))


def decaf_maps(video_obj: np.ndarray, video_bg: np.ndarray, frame_obj: np.ndarray, frame_bg: np.ndarray,
               num_frames: int, frames_per_step: int = 2, video_kernel: int = 3, frame_kernel: int = 7,
               sigma: float = 1.0) -> FusedMaps:
    """DecAF's fusion. video_*: (T, Hv, Wv) rollout maps of the object and background prompts on
    the video; frame_*: (K, Hf, Wf) on the frames."""
    video = minmax(contrast(smooth(video_obj, video_kernel, sigma), smooth(video_bg, video_kernel, sigma)))
    frames = minmax_each(contrast(smooth(frame_obj, frame_kernel, sigma), smooth(frame_bg, frame_kernel, sigma)))
    video = align_time(video, num_frames, frames_per_step)
    return FusedMaps(video, frames, fuse(video, frames))


def steered_maps(video_map: np.ndarray, frame_map: np.ndarray, num_frames: int,
                 frames_per_step: int = 2, video_kernel: int = 3, frame_kernel: int = 7,
                 sigma: float = 1.0) -> FusedMaps:
    """SteerSeg's maps: the rollout after steering (no background pass), smoothed, normalised
    and fused exactly as DecAF's are (SteerSeg builds on the same attention-to-points steps), so
    both modes hand the tracker the same kind of map."""
    video = align_time(minmax(smooth(video_map, video_kernel, sigma)), num_frames, frames_per_step)
    frames = minmax_each(smooth(frame_map, frame_kernel, sigma))
    return FusedMaps(video, frames, fuse(video, frames))
