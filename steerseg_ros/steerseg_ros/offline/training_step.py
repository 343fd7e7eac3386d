"""The loss, the validation metrics and the precision settings of the soft-prompt trainer
(offline/training.py).

Loss (METHOD.md section 2: BCE + Dice between the normalised rollout map and the ground-truth
mask pooled to the token grid), per granularity:
- the map is normalised the way the grounder normalises SteerSeg's maps before fusing them
  (`fusion.steered_maps`, DecAF's step 3): the video map min-max over all its time steps
  together, each frame map min-max on its own; a constant map becomes 0;
- the target is the mask average-pooled to the map's token grid (each cell: the fraction of its
  pixels inside the mask); a video time step's target is the mean over the frames it covers;
- loss = bce_weight * BCE + dice_weight * soft Dice; the clip's loss is the mean of the video's
  and the frames' (frames where the object is absent are left out of the frame term: a
  min-max-normalised map cannot be all zero, so they carry no usable signal).
Validation metrics, on the raw (unnormalised) rollout maps: attention mass inside the mask (sum
over cells of map x pooled mask over the sum of the map; a uniform map scores the mask's area
fraction, logged as `chance`) and pointing accuracy (the map's highest cell is at least half
inside the mask).

torch is imported inside: the module's reader works without it.
"""
from __future__ import annotations

import numpy as np

from steerseg_ros.offline.training_config import TrainingError


def normalise_maps(maps, per_frame: bool):
    """Min-max normalisation as the grounder applies it (fusion.minmax / minmax_each), in torch
    so the loss is differentiable: over the whole (t, h, w) volume, or each (h, w) map on its
    own; a constant map becomes 0."""
    import torch

    x = maps.float()
    dims = (-2, -1) if per_frame else tuple(range(x.dim()))
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    return (x - lo) / torch.clamp(hi - lo, min=1e-12)


def bce_dice(pred, target, bce_weight: float = 1.0, dice_weight: float = 1.0, per_frame: bool = False):
    """(loss, bce, dice) between a normalised map `pred` in [0, 1] and a pooled target of the
    same shape; Dice over the whole volume or per frame (then averaged)."""
    import torch
    import torch.nn.functional as F

    pred = pred.float().clamp(1e-6, 1.0 - 1e-6)
    target = target.to(pred)
    bce = F.binary_cross_entropy(pred, target)
    dims = (-2, -1) if per_frame else tuple(range(pred.dim()))
    intersection = (pred * target).sum(dim=dims)
    dice = (1.0 - (2.0 * intersection + 1e-6) / (pred.sum(dim=dims) + target.sum(dim=dims) + 1e-6)).mean()
    return bce_weight * bce + dice_weight * dice, bce.detach(), dice.detach()


def map_metrics(maps: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Attention mass inside the mask, pointing accuracy and the mass a uniform map would get
    (the mask's area fraction), averaged over the (h, w) maps of a (n, h, w) stack whose target
    is not empty. maps: non-negative."""
    masses, hits, chance = [], [], []
    for m, t in zip(maps, targets):
        if t.max() <= 0:
            continue
        m = np.clip(m.astype(np.float64), 0.0, None)
        total = m.sum()
        masses.append(float((m * t).sum() / total) if total > 0 else 0.0)
        hits.append(float(t.flat[int(np.argmax(m))] >= 0.5))
        chance.append(float(t.mean()))
    if not masses:
        return {}
    return {"mass": float(np.mean(masses)), "pointing": float(np.mean(hits)), "chance": float(np.mean(chance))}


def amp_dtype(mode: str, device):
    """The autocast dtype of training with `amp` mode `mode` on `device`, or None for none."""
    import torch

    if mode == "off":
        return None
    if mode == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return torch.bfloat16


def enable_gradient_checkpointing(model, mode: str, device) -> bool:
    """Activation checkpointing of the decoder layers with the model's own
    activation_checkpointing_enable (non-reentrant: the rollout reads each captured layer's
    queries and keys, which a reentrant checkpoint would detach). transformers checkpoints a
    layer only while it is in training mode, so the decoder layers get the training flag;
    their attention dropout must be 0 for that to change nothing (it is in every Qwen-VL
    config). Returns whether it is on."""
    from steerseg_ros.grounding.attention import decoder_layers

    enable = mode == "on" or (mode == "auto" and device.type == "cuda")
    if not enable:
        return False
    layers = decoder_layers(model)
    dropout = [float(getattr(layer.self_attn, "attention_dropout", 0.0) or 0.0) for layer in layers]
    if any(dropout):
        raise TrainingError("gradient checkpointing needs the decoder layers in training mode, which would "
                            f"turn on their attention dropout ({max(dropout)}); use gradient_checkpointing off")
    model.activation_checkpointing_enable({"use_reentrant": False})
    for layer in layers:
        layer.train()
    return True
