"""A randomly initialised SAM2 in Meta's layout, for the tests and benchmarks of the sam2_meta
backend and of the checkpoint conversion (no checkpoint can be downloaded here)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from steerseg_testing.tiny_sam2 import tiny_config
from steerseg_ros.tracking.sam2_checkpoints import build_meta_model, meta_compatible, meta_config_from_hf, save_meta_checkpoint


def random_meta_checkpoint(path: Union[str, Path], config=None, seed: int = 0, memory_scale: float = 10.0,
                           attention_scale: float = 1.0, hypernetwork_scale: float = 20.0) -> tuple[Path, Path]:
    """A randomly initialised SAM2 in Meta's layout, written with its Hydra config: `config` a
    transformers Sam2VideoConfig that Meta can build (default meta_compatible(tiny_config(64))).

    As tiny_sam2.random_sam2 does for the transformers model, a few initial values are changed
    so that random outputs exercise the tracker (masks that depend on the object's memory, objects
    mostly present, confident IoU): the memory encoder's weights (x10 by default), the memory
    cross-attention's (x1: unchanged by default), the object-score and IoU heads' output biases,
    the hypernetwork output weights (x20).

    Why gentler than random_sam2's x30 memory encoder and x30 cross-attention: that model is
    chaotic. The two implementations differ by float rounding (1e-6 in the mask logits; both then
    store memory features in bfloat16, which turns some of those differences into a bfloat16 step),
    and with x30 attention the differences grow to a per-frame mask IoU of 0.98 within 30 frames
    (the parity test's clip). With these scales masks still depend on the object's memory (two
    seeds on the same frames give different masks 30 frames later) and the differences stay small."""
    meta_config = meta_config_from_hf(config or meta_compatible(tiny_config(64)))
    torch.manual_seed(seed)
    model = build_meta_model(meta_config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and name.startswith("memory_encoder."):
                param.mul_(memory_scale)
            elif param.ndim >= 2 and ".cross_attn_image." in name:
                param.mul_(attention_scale)
        decoder = model.sam_mask_decoder
        decoder.pred_obj_score_head.layers[-1].bias.fill_(4.0)
        decoder.iou_prediction_head.layers[-1].bias.fill_(2.0)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(hypernetwork_scale)
    return save_meta_checkpoint(model, path, meta_config)
