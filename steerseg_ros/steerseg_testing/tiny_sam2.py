"""Randomly initialised SAM2 video checkpoints built from configs in code.

Owns the configs that tests, benchmarks and the demo use where no pretrained SAM2 weights can be
downloaded: `tiny_config` (a few MB, milliseconds per frame on a CPU) and `real_config` (the
layer shapes of SAM2.1 Hiera tiny / small, for timing), and `save_random_sam2`, which writes a
model folder laid out like a hub checkpoint (config.json, model.safetensors and the processor
configs) that `Sam2Tracker` loads through the same code as a real one. Random weights make
meaningless masks: use them to test behaviour and to time, never to judge quality.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from transformers import Sam2VideoConfig, Sam2VideoModel
from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

from steerseg_ros.tracking.sam2_checkpoints import processor_configs  # noqa: F401 (tests write it with their models)

# Layer shapes of the SAM2.1 checkpoints (facebook/sam2.1-hiera-*): the Hiera backbone differs,
# the memory, prompt and mask-decoder parts are the Sam2VideoConfig defaults.
REAL_BACKBONES = {
    "sam2.1-tiny": dict(blocks_per_stage=[1, 2, 7, 2], global_attention_blocks=[5, 7, 9]),
    "sam2.1-small": dict(blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13]),
    # The larger two are wider too: embedding and heads double at each stage from their own
    # start, and the FPN neck reads their stage widths (backbone_channel_list, widest first).
    "sam2.1-base-plus": dict(hidden_size=112, num_attention_heads=2, blocks_per_stage=[2, 3, 16, 3],
                             embed_dim_per_stage=[112, 224, 448, 896], num_attention_heads_per_stage=[2, 4, 8, 16],
                             window_size_per_stage=[8, 4, 14, 7], global_attention_blocks=[12, 16, 20],
                             window_positional_embedding_background_size=[14, 14],
                             backbone_channel_list=[896, 448, 224, 112]),
    "sam2.1-large": dict(hidden_size=144, num_attention_heads=2, blocks_per_stage=[2, 6, 36, 4],
                         embed_dim_per_stage=[144, 288, 576, 1152], num_attention_heads_per_stage=[2, 4, 8, 16],
                         window_size_per_stage=[8, 4, 16, 8], global_attention_blocks=[23, 33, 43],
                         window_positional_embedding_background_size=[7, 7],
                         backbone_channel_list=[1152, 576, 288, 144]),
}


def tiny_config(image_size: int = 64) -> Sam2VideoConfig:
    """A SAM2 video config with every part present but tiny: a 5-block Hiera, one memory-attention
    layer, hidden size 128 (transformers needs a multiple of 64 above 64) and 64 memory channels.
    `image_size` must be a multiple of 64 (the Hiera stages and the 16-pixel prompt grid)."""
    if image_size < 64 or image_size % 64:
        raise ValueError(f"image_size must be a positive multiple of 64, got {image_size}")
    hidden = 128
    stride4 = image_size // 4  # the Hiera patch embedding has stride 4
    backbone = Sam2HieraDetConfig(
        hidden_size=16,
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        # A global-attention block must not open a stage (Q-pooling needs a window there).
        blocks_per_stage=[1, 1, 2, 1],
        global_attention_blocks=[3],
        window_size_per_stage=[4, 4, 4, 2],
        window_positional_embedding_background_size=[4, 4],
        image_size=[image_size, image_size],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[stride4, stride4], [stride4 // 2, stride4 // 2], [stride4 // 4, stride4 // 4]],
        fpn_hidden_size=hidden,
    )
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=hidden, image_size=image_size, patch_size=16),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=128, num_attention_heads=2, iou_head_hidden_dim=64),
        image_size=image_size,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=128,
        memory_attention_rope_feat_sizes=[image_size // 16, image_size // 16],
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=128,
        memory_fuser_num_layers=1,
    )


def real_config(name: str = "sam2.1-tiny", image_size: int = 1024) -> Sam2VideoConfig:
    """The layer shapes of a real SAM2.1 checkpoint (a name in REAL_BACKBONES) at
    `image_size` (1024 for the published models; a multiple of 256 to keep the windows whole)."""
    if name not in REAL_BACKBONES:
        raise ValueError(f"unknown real config {name!r}; choose one of {sorted(REAL_BACKBONES)}")
    if image_size < 256 or image_size % 256:
        raise ValueError(f"image_size must be a positive multiple of 256, got {image_size}")
    stride4 = image_size // 4
    shapes = dict(REAL_BACKBONES[name])
    channels = shapes.pop("backbone_channel_list", None)
    backbone = Sam2HieraDetConfig(image_size=[image_size, image_size], **shapes)
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=channels,
        backbone_feature_sizes=[[stride4, stride4], [stride4 // 2, stride4 // 2], [stride4 // 4, stride4 // 4]],
    )
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=dict(image_size=image_size),
        image_size=image_size,
        memory_attention_rope_feat_sizes=[image_size // 16, image_size // 16],
    )


def random_sam2(config: Optional[Sam2VideoConfig] = None, seed: int = 0) -> Sam2VideoModel:
    """A randomly initialised Sam2VideoModel (the tiny config by default).

    A few initial values are changed so that random outputs exercise what the tests check. With
    transformers' initialisation (weights of std 0.02, zero biases) the memory barely reaches the
    mask (two objects seeded with different masks get the same masks afterwards), half of all
    frames report no object, and every predicted IoU is 0.5. So: the memory encoder's and the
    memory cross-attention's weights are scaled up (masks then depend on the object's memory),
    the object-score head is biased towards "present", and the IoU head towards about 0.9."""
    torch.manual_seed(seed)
    model = Sam2VideoModel(config or tiny_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and (name.startswith("memory_encoder.") or ".cross_attn_image." in name):
                param.mul_(30.0)
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(4.0)
        model.mask_decoder.iou_prediction_head.proj_out.bias.fill_(2.0)
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(20.0)
    return model


def save_random_sam2(folder: Union[str, Path], config: Optional[Sam2VideoConfig] = None, seed: int = 0) -> Path:
    """Write a random SAM2 video checkpoint (model and processor configs) to `folder`; returns it.
    Load it with Sam2Tracker(Sam2TrackerConfig(model=str(folder)))."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = random_sam2(config, seed)
    model.save_pretrained(folder)
    for name, content in processor_configs(model.config.image_size).items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")
    return folder
