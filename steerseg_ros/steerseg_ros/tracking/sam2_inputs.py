"""What a SAM2 model call is fed, shared by both SAM2 backends (transformers' and Meta's).

Owns `pixel_values`, the pre-processing written to match transformers' SAM2 and SAM 3
processors bit for bit (the SAM 3 concept grounder uses it too), and `Sam2FrameInputs` (a
mixin): the frame check, point and mask prompts scaled to the model's input,
low-resolution logits back to frame-sized masks, and the bounded per-frame feature cache that
lets the image encoder run once per frame. Also `processor_normalization`, the mean and std a
transformers checkpoint's processor config gives, and `tracked_result`, how both backends turn a
step's mask, object score and predicted IoU into an ObjectMask (SAM2's occlusion head decides
whether there is a mask at all).
"""
from __future__ import annotations

import json
import logging
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import cached_file

from steerseg_ros.devices import resolve_device
from steerseg_ros.frame import Frame
from steerseg_ros.tracking.base import ObjectMask, TrackerError

log = logging.getLogger("steerseg_ros.tracking.sam2")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tracked_result(mask: np.ndarray, object_logit: float, iou: float) -> ObjectMask:
    """A tracking step's ObjectMask from SAM2's own outputs: its mask, the object score logit of
    its occlusion head and the predicted IoU of the chosen mask.

    Visible (logit > 0): the mask, scored sigmoid(logit) x IoU. Not visible (logit <= 0): an
    empty mask scored 0, whatever min_confidence is set to. That is what SAM2's video predictor
    itself outputs for an occluded object (its mask logits are set to NO_OBJ_SCORE, -1024), made
    explicit here so that no mask threshold and no resampling can bring a mask back, and so that
    a robot is never handed a mask on whatever now covers the object."""
    if not object_logit > 0:  # also NaN: a head that says nothing says "not visible"
        return ObjectMask(np.zeros_like(mask, dtype=bool), 0.0)
    presence = 1.0 / (1.0 + math.exp(-min(object_logit, 50.0)))
    return ObjectMask(mask, presence * float(iou))


class _Features:
    """One frame's encoder output, in the layout the sessions cache, and the image it came from."""

    def __init__(self, image: np.ndarray, vision: dict):
        self.image = image
        self.vision = vision


class _FrameInput:
    """What a model call on one frame takes: the pixel values (the streaming call stores them,
    although with the features cached it never encodes them) and the features."""

    def __init__(self, pixel_values: torch.Tensor, features: _Features):
        self.pixel_values = pixel_values
        self.features = features


def processor_normalization(model_name: str, image_size: int, device: torch.device,
                            local_files_only: bool, default_mean=IMAGENET_MEAN,
                            default_std=IMAGENET_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std from the checkpoint's image processor config (`default_mean` and
    `default_std` if it has none: ImageNet's for SAM2, 0.5 for SAM 3), with its rescale factor
    folded in as transformers' processor folds it: each float32 constant times
    1 / rescale_factor, so pixels in 0..255 are normalised in one step."""
    mean, std, rescale = default_mean, default_std, 1 / 255
    path = cached_file(model_name, "preprocessor_config.json", local_files_only=local_files_only,
                       _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)
    if path:
        with open(path) as f:
            settings = json.load(f)
        mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
        rescale = settings.get("rescale_factor", rescale)
        size = settings.get("size", {}).get("height")
        if size and size != image_size:
            log.warning("%s: processor size %s differs from the model's image_size %d; using the model's",
                        model_name, size, image_size)
    # The processor's _fuse_mean_std_and_rescale_factor: float32 constants, then the product.
    fused = lambda v: (torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
                       * (1.0 / rescale)).view(1, 3, 1, 1)
    return fused(mean), fused(std)


def pixel_values(image: np.ndarray, image_size: int, mean: torch.Tensor, std: torch.Tensor,
                 device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """HxWx3 uint8 RGB -> (1, 3, S, S) normalised pixel values, bit for bit what transformers'
    SAM2 and SAM 3 processors (Sam2ImageProcessor, Sam2VideoVideoProcessor, Sam3ImageProcessor;
    transformers 5.23) compute from the same frame on the same device, with `mean` and `std`
    from `processor_normalization`:
    - the channel-first uint8 image resized to S x S as torchvision's resize does it
      (bilinear, antialiased): with the native uint8 kernel on a CPU with AVX2 or AVX512,
      otherwise (GPU, other CPUs) in float32 and rounded back to uint8;
    - rescale and normalise fused into (x - mean/rescale) / (std/rescale) in float32, i.e.
      (x - 255 mean) / (255 std), not (x/255 - mean) / std: the two differ by a rounding step
      that random and real weights alike can amplify into different masks.
    Written here because the processors need torchvision, which this package cannot depend on."""
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:
        array = array.copy()  # torch.from_numpy warns about read-only memory (e.g. a ROS message buffer)
    x = torch.from_numpy(array)
    if device.type == "cuda":
        # Through page-locked memory: the copy to the GPU then runs asynchronously.
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.permute(2, 0, 1).contiguous().to(device)[None]
    size = (image_size, image_size)
    if tuple(x.shape[-2:]) != size:
        if x.device.type == "cpu" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        else:
            x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            x = x.round_().to(torch.uint8)
    x = (x.to(torch.float32) - mean) / std
    return x.to(dtype)


class Sam2FrameInputs:
    """Frames and prompts in, masks out, for a SAM2 tracker. The host class sets `device`,
    `dtype`, `image_size`, `mean`, `std`, `config` (mask_threshold, feature_cache_frames),
    `encoder`, `_pos`, `_cache` (an OrderedDict), `_cache_lock`, `stats` and `_precision()`."""

    @staticmethod
    def _resolve_device(name: str) -> torch.device:
        return resolve_device(name, TrackerError)

    def _check_frame(self, frame: Frame) -> None:
        image = frame.image
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 \
                or 0 in image.shape:
            raise TrackerError(f"frame {frame.seq}: expected a non-empty HxWx3 uint8 RGB image, got "
                               f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")

    def _preprocess(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> (1, 3, S, S) normalised pixel values (`pixel_values`)."""
        return pixel_values(image, self.image_size, self.mean, self.std, self.device, self.dtype)

    def _to_image(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(K, h, w) low-resolution mask logits -> (K, H, W) bool masks at the frame size."""
        up = F.interpolate(logits[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
        return (up > self.config.mask_threshold).cpu().numpy()

    def _points(self, points: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> dict:
        points = np.asarray(points, dtype=np.float64)
        labels = np.asarray(labels)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise TrackerError(f"points must be (N>=1, 2) pixel (x, y), got shape {points.shape}")
        if labels.shape != (len(points),):
            raise TrackerError(f"labels must be ({len(points)},), got shape {labels.shape}")
        if not np.isfinite(points).all():
            raise TrackerError("points must be finite")
        if not np.isin(labels, (0, 1)).all():
            raise TrackerError(f"labels must be 1 (positive) or 0 (negative), got {sorted(set(labels.tolist()))}")
        height, width = size
        scaled = points * (self.image_size / width, self.image_size / height)
        return {"point_coords": torch.tensor(scaled, dtype=torch.float32, device=self.device)[None, None],
                "point_labels": torch.tensor(labels, dtype=torch.int32, device=self.device)[None, None]}

    def _mask_input(self, mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        mask = np.asarray(mask)
        if mask.shape != size:
            raise TrackerError(f"seed mask is {mask.shape}, the frame {size}")
        if not mask.any():
            raise TrackerError("seed mask is empty")
        # As Sam2VideoProcessor does: antialiased resize to the model's input size, then >= 0.5.
        x = torch.from_numpy(mask.astype(np.float32)).to(self.device)[None, None]
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                          align_corners=False)
        return (x >= 0.5).float()

    def _input(self, frame: Frame) -> _FrameInput:
        """The frame's pixel values and image features, the features encoded once and shared
        (cached by sequence number; a hit must also be the very same image array, so a reused
        number never matches)."""
        self._check_frame(frame)
        with torch.inference_mode():
            pixel_values = self._preprocess(frame.image)
            with self._cache_lock:
                hit: Optional[_Features] = self._cache.get(frame.seq)
                if hit is not None and hit.image is frame.image:
                    self._cache.move_to_end(frame.seq)
                    return _FrameInput(pixel_values, hit)
            with self._precision():
                maps = self.encoder(pixel_values)
        entry = _Features(frame.image, {"vision_feats": maps, "vision_pos_embeds": self._pos})
        with self._cache_lock:
            self._cache[frame.seq] = entry
            self._cache.move_to_end(frame.seq)
            while len(self._cache) > self.config.feature_cache_frames:
                self._cache.popitem(last=False)
            self.stats["encoder_runs"] += 1
        return _FrameInput(pixel_values, entry)
