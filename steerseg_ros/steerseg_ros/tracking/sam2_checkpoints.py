"""Conversion both ways between Meta's SAM2 checkpoints and transformers' Sam2VideoModel.

Owns the mapping of configs (Meta's Hydra model config <-> `Sam2VideoConfig`) and of weights
(Meta's `{"model": state_dict}` .pt file <-> a transformers model folder), `meta_compatible`
(a transformers config whose shapes Meta's code can build: its mask decoder and memory fuser
have fixed widths), `processor_configs` (the processor files written beside a converted
checkpoint) and the `steerseg-sam2-convert` command.

Why our own converter: transformers ships `convert_sam2_video_to_hf.py` in its source tree but
not in the installed package (5.23.0 has no convert_* under models/sam2*), and that script only
goes one way, downloads the checkpoint and a test image from the hub, and builds its config from
the checkpoint's *name*. Here the config comes from the checkpoint's own Hydra config, weights
go both ways, and every conversion is checked: each key of the source must map to exactly one
key of the target model with the same shape, and every target key must be filled (strict load).
The renaming rules below are written from reading both models' module trees (checked against
the transformers script's table).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional, Union

import torch

# Meta's SAM2Base builds its SAM heads with fixed widths (sam2_base._build_sam_heads), and its
# memory fuser's CXBlock widens 4x: a transformers config must match these to be built by Meta.
META_FIXED = {"mask_decoder_mlp_dim": 2048, "mask_decoder_heads": 8, "mask_decoder_layers": 2,
              "iou_head_hidden_dim": 256, "iou_head_depth": 3, "mask_input_channels": 16}

# Meta's published checkpoint file names and their packaged Hydra configs.
META_CHECKPOINTS = {
    "sam2.1_hiera_tiny.pt": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small.pt": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus.pt": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large.pt": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_tiny.pt": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_small.pt": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_base_plus.pt": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_large.pt": "configs/sam2/sam2_hiera_l.yaml",
}


# ---- configs -------------------------------------------------------------------------------------
def meta_compatible(config, mask_decoder_mlp_dim: int = 2048):
    """A copy of a transformers Sam2VideoConfig with the parts Meta's code fixes set to Meta's
    values (mask decoder 2 layers, MLP 2048, 8 heads, IoU head 256 wide; fuser 4x its width)."""
    from transformers import Sam2VideoConfig

    data = config.to_dict()
    data["mask_decoder_config"].update(mlp_dim=mask_decoder_mlp_dim, num_attention_heads=META_FIXED["mask_decoder_heads"],
                                       num_hidden_layers=META_FIXED["mask_decoder_layers"],
                                       iou_head_hidden_dim=META_FIXED["iou_head_hidden_dim"],
                                       iou_head_depth=META_FIXED["iou_head_depth"])
    data["prompt_encoder_config"]["mask_input_channels"] = META_FIXED["mask_input_channels"]
    data["memory_fuser_intermediate_dim"] = 4 * data["memory_fuser_embed_dim"]
    return Sam2VideoConfig(**{k: v for k, v in data.items() if k not in ("model_type", "transformers_version")})


def _geometric(values: list, name: str) -> float:
    ratio = values[1] / values[0] if len(values) > 1 else 2.0
    if any(abs(values[i] - values[0] * ratio ** i) > 1e-6 for i in range(len(values))):
        raise ValueError(f"Meta's Hiera multiplies {name} by a constant per stage; {values} does not")
    return float(ratio)


def meta_config_from_hf(config) -> dict:
    """Meta's Hydra model config (a plain dict, {'model': {...}}) for a transformers
    Sam2VideoConfig. Raises ValueError for shapes Meta's code cannot build (see meta_compatible)."""
    _check_meta_buildable(config)
    tpos = bool(config.enable_temporal_pos_encoding_for_object_pointers)
    image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    model = {
        "_target_": "sam2.modeling.sam2_base.SAM2Base",
        "image_encoder": _meta_image_encoder(config),
        "memory_attention": _meta_memory_attention(config),
        "memory_encoder": _meta_memory_encoder(config),
        "num_maskmem": config.num_maskmem, "image_size": image_size,
        "sigmoid_scale_for_mem_enc": float(config.sigmoid_scale_for_mem_enc),
        "sigmoid_bias_for_mem_enc": float(config.sigmoid_bias_for_mem_enc),
        "use_mask_input_as_output_without_sam": True, "directly_add_no_mem_embed": True,
        "no_obj_embed_spatial": bool(config.enable_occlusion_spatial_embedding),
        "use_high_res_features_in_sam": True, "multimask_output_in_sam": bool(config.multimask_output_in_sam),
        "iou_prediction_use_sigmoid": True, "use_obj_ptrs_in_encoder": True,
        "add_tpos_enc_to_obj_ptrs": tpos, "proj_tpos_enc_in_obj_ptrs": tpos, "use_signed_tpos_enc_to_obj_ptrs": tpos,
        "only_obj_ptrs_in_the_past_for_eval": True, "pred_obj_scores": True, "pred_obj_scores_mlp": True,
        "fixed_no_obj_ptr": True, "multimask_output_for_tracking": bool(config.multimask_output_for_tracking),
        "use_multimask_token_for_obj_ptr": True, "multimask_min_pt_num": config.multimask_min_pt_num,
        "multimask_max_pt_num": config.multimask_max_pt_num, "use_mlp_for_obj_ptr_proj": True,
        "max_obj_ptrs_in_encoder": config.max_object_pointers_in_encoder,
        "max_cond_frames_in_attn": config.max_cond_frame_num, "compile_image_encoder": False,
    }
    return {"model": model}


def _check_meta_buildable(config) -> None:
    """Raises ValueError naming each part of `config` whose widths Meta's code fixes otherwise."""
    decoder, prompt = config.mask_decoder_config, config.prompt_encoder_config
    problems = []
    if (decoder.mlp_dim, decoder.num_attention_heads, decoder.num_hidden_layers, decoder.iou_head_hidden_dim,
            decoder.iou_head_depth) != (2048, 8, 2, 256, 3):
        problems.append("mask decoder (Meta: mlp_dim 2048, 8 heads, 2 layers, IoU head 256 wide and 3 deep)")
    if prompt.mask_input_channels != 16:
        problems.append("prompt encoder mask_input_channels (Meta: 16)")
    if config.memory_fuser_intermediate_dim != 4 * config.memory_fuser_embed_dim:
        problems.append("memory_fuser_intermediate_dim (Meta: 4 x memory_fuser_embed_dim)")
    if config.memory_fuser_embed_dim != config.memory_encoder_hidden_size or \
            config.mask_downsampler_embed_dim != config.memory_encoder_hidden_size:
        problems.append("memory encoder widths (Meta: fuser and mask downsampler as wide as the memory encoder)")
    if problems:
        raise ValueError("this transformers config cannot be built by Meta's sam2: " + "; ".join(problems)
                         + " (steerseg_ros.tracking.sam2_checkpoints.meta_compatible makes a config that can)")


def _sine(features: int) -> dict:
    return {"_target_": "sam2.modeling.position_encoding.PositionEmbeddingSine", "num_pos_feats": features,
            "normalize": True, "scale": None, "temperature": 10000}


def _meta_image_encoder(config) -> dict:
    vision, backbone = config.vision_config, config.vision_config.backbone_config
    dim_mul = _geometric(list(backbone.embed_dim_per_stage), "the width")
    head_mul = _geometric(list(backbone.num_attention_heads_per_stage), "the heads")
    return {
        "_target_": "sam2.modeling.backbones.image_encoder.ImageEncoder",
        # Hiera yields 4 levels; the model reads the 3 finest (scalp 1 drops the coarsest).
        "scalp": len(backbone.blocks_per_stage) - vision.num_feature_levels,
        "trunk": {"_target_": "sam2.modeling.backbones.hieradet.Hiera", "embed_dim": backbone.hidden_size,
                  "num_heads": backbone.num_attention_heads, "stages": list(backbone.blocks_per_stage),
                  "global_att_blocks": list(backbone.global_attention_blocks),
                  "window_pos_embed_bkg_spatial_size": list(backbone.window_positional_embedding_background_size),
                  "window_spec": list(backbone.window_size_per_stage), "q_pool": backbone.num_query_pool_stages,
                  "dim_mul": dim_mul, "head_mul": head_mul,
                  # Hiera hands q_stride to MaxPool2d, which takes no OmegaConf list: plain lists.
                  "q_stride": list(backbone.query_stride), "_convert_": "all"},
        "neck": {"_target_": "sam2.modeling.backbones.image_encoder.FpnNeck", "position_encoding": _sine(vision.fpn_hidden_size),
                 "d_model": vision.fpn_hidden_size, "backbone_channel_list": list(vision.backbone_channel_list),
                 "fpn_top_down_levels": list(vision.fpn_top_down_levels), "fpn_interp_model": "nearest"},
    }


def _meta_memory_attention(config) -> dict:
    hidden, mem = config.memory_attention_hidden_size, config.memory_encoder_output_channels
    feat = list(config.memory_attention_rope_feat_sizes)

    def rope_attention(**extra) -> dict:
        return {"_target_": "sam2.modeling.sam.transformer.RoPEAttention", "rope_theta": float((config.rope_parameters or {}).get("rope_theta", 10000.0)),
                "feat_sizes": feat, "embedding_dim": hidden, "num_heads": config.memory_attention_num_attention_heads,
                "downsample_rate": config.memory_attention_downsample_rate,
                "dropout": float(config.memory_attention_rope_dropout), **extra}

    return {
        "_target_": "sam2.modeling.memory_attention.MemoryAttention", "d_model": hidden, "pos_enc_at_input": True,
        "num_layers": config.memory_attention_num_layers,
        "layer": {"_target_": "sam2.modeling.memory_attention.MemoryAttentionLayer",
                  "activation": config.memory_attention_feed_forward_hidden_act,
                  "dim_feedforward": config.memory_attention_feed_forward_hidden_size,
                  "dropout": float(config.memory_attention_dropout), "pos_enc_at_attn": False,
                  "self_attention": rope_attention(), "d_model": hidden, "pos_enc_at_cross_attn_keys": True,
                  "pos_enc_at_cross_attn_queries": False,
                  "cross_attention": rope_attention(rope_k_repeat=True, kv_in_dim=mem)},
    }


def _meta_memory_encoder(config) -> dict:
    mem = config.memory_encoder_output_channels
    return {
        "_target_": "sam2.modeling.memory_encoder.MemoryEncoder", "out_dim": mem,
        "in_dim": config.memory_encoder_hidden_size, "position_encoding": _sine(mem),
        "mask_downsampler": {"_target_": "sam2.modeling.memory_encoder.MaskDownSampler",
                             "kernel_size": config.mask_downsampler_kernel_size,
                             "stride": config.mask_downsampler_stride, "padding": config.mask_downsampler_padding,
                             "total_stride": config.mask_downsampler_total_stride,
                             "embed_dim": config.mask_downsampler_embed_dim},
        "fuser": {"_target_": "sam2.modeling.memory_encoder.Fuser", "num_layers": config.memory_fuser_num_layers,
                  "layer": {"_target_": "sam2.modeling.memory_encoder.CXBlock", "dim": config.memory_fuser_embed_dim,
                            "kernel_size": config.memory_fuser_kernel_size, "padding": config.memory_fuser_padding,
                            "layer_scale_init_value": float(config.memory_fuser_layer_scale_init_value),
                            "use_dwconv": True}},
    }


def hf_config_from_meta(meta: dict):
    """A transformers Sam2VideoConfig for Meta's Hydra model config ({'model': {...}} or the
    model part; an OmegaConf config works too)."""
    from transformers import Sam2VideoConfig

    m = _plain(meta)
    m = m.get("model", m)
    neck = m["image_encoder"]["neck"]
    layer = m["memory_attention"]["layer"]
    encoder = m["memory_encoder"]
    fuser, downsampler = encoder["fuser"]["layer"], encoder["mask_downsampler"]
    image_size = int(m.get("image_size", 512))
    vision = _hf_vision_config(m, image_size)
    hidden = m["memory_attention"]["d_model"]
    self_attn = layer["self_attention"]
    tpos = bool(m.get("add_tpos_enc_to_obj_ptrs", True))
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=neck["d_model"], image_size=image_size, patch_size=16),
        mask_decoder_config=dict(hidden_size=neck["d_model"]),
        image_size=image_size, num_maskmem=m.get("num_maskmem", 7),
        sigmoid_scale_for_mem_enc=m.get("sigmoid_scale_for_mem_enc", 1.0),
        sigmoid_bias_for_mem_enc=m.get("sigmoid_bias_for_mem_enc", 0.0),
        enable_occlusion_spatial_embedding=bool(m.get("no_obj_embed_spatial", False)),
        multimask_output_in_sam=bool(m.get("multimask_output_in_sam", False)),
        multimask_min_pt_num=m.get("multimask_min_pt_num", 1), multimask_max_pt_num=m.get("multimask_max_pt_num", 1),
        multimask_output_for_tracking=bool(m.get("multimask_output_for_tracking", False)),
        max_object_pointers_in_encoder=m.get("max_obj_ptrs_in_encoder", 16),
        max_cond_frame_num=m.get("max_cond_frames_in_attn", -1),
        enable_temporal_pos_encoding_for_object_pointers=tpos,
        memory_attention_hidden_size=hidden, memory_attention_num_layers=m["memory_attention"]["num_layers"],
        memory_attention_num_attention_heads=self_attn.get("num_heads", 1),
        memory_attention_downsample_rate=self_attn.get("downsample_rate", 1),
        memory_attention_feed_forward_hidden_size=layer["dim_feedforward"],
        memory_attention_feed_forward_hidden_act=layer.get("activation", "relu"),
        memory_attention_dropout=layer.get("dropout", 0.1),
        memory_attention_rope_feat_sizes=list(self_attn.get("feat_sizes", [32, 32])),
        memory_attention_rope_dropout=self_attn.get("dropout", 0.1),
        rope_parameters={"rope_theta": float(self_attn.get("rope_theta", 10000.0))},
        memory_encoder_hidden_size=encoder.get("in_dim", 256), memory_encoder_output_channels=encoder["out_dim"],
        mask_downsampler_embed_dim=downsampler.get("embed_dim", 256),
        mask_downsampler_kernel_size=downsampler.get("kernel_size", 4),
        mask_downsampler_stride=downsampler.get("stride", 4), mask_downsampler_padding=downsampler.get("padding", 0),
        mask_downsampler_total_stride=downsampler.get("total_stride", 16),
        memory_fuser_num_layers=encoder["fuser"]["num_layers"], memory_fuser_embed_dim=fuser["dim"],
        memory_fuser_intermediate_dim=4 * fuser["dim"], memory_fuser_kernel_size=fuser.get("kernel_size", 7),
        memory_fuser_padding=fuser.get("padding", 3),
        memory_fuser_layer_scale_init_value=fuser.get("layer_scale_init_value", 1e-6),
    )


def _plain(meta):
    """An OmegaConf config as plain containers; anything else as it is."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(meta):
            meta = OmegaConf.to_container(meta, resolve=True)
    except ImportError:
        pass
    return meta


def _hf_vision_config(m: dict, image_size: int):
    """The transformers vision config (Hiera backbone and FPN neck) of Meta's model config `m`."""
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    trunk, neck = m["image_encoder"]["trunk"], m["image_encoder"]["neck"]
    # Meta's defaults where its config files leave a value out (hieradet.Hiera, SAM2Base, ...).
    stages = list(trunk.get("stages", [2, 3, 16, 3]))
    embed, heads = trunk.get("embed_dim", 96), trunk.get("num_heads", 1)
    dim_mul, head_mul = trunk.get("dim_mul", 2.0), trunk.get("head_mul", 2.0)
    q_pool = trunk.get("q_pool", 3)
    stride4 = image_size // 4
    levels = len(stages) - int(m["image_encoder"].get("scalp", 0))
    backbone = Sam2HieraDetConfig(
        hidden_size=embed, num_attention_heads=heads, blocks_per_stage=stages,
        embed_dim_per_stage=[int(round(embed * dim_mul ** i)) for i in range(len(stages))],
        num_attention_heads_per_stage=[int(round(heads * head_mul ** i)) for i in range(len(stages))],
        window_size_per_stage=list(trunk.get("window_spec", [8, 4, 14, 7])),
        global_attention_blocks=list(trunk.get("global_att_blocks", [12, 16, 20])),
        window_positional_embedding_background_size=list(trunk.get("window_pos_embed_bkg_spatial_size", [14, 14])),
        num_query_pool_stages=q_pool, query_stride=list(trunk.get("q_stride", [2, 2])),
        image_size=[image_size, image_size])
    return Sam2VisionConfig(
        backbone_config=backbone, backbone_channel_list=list(neck["backbone_channel_list"]),
        backbone_feature_sizes=[[stride4 >> i, stride4 >> i] for i in range(levels)],
        fpn_hidden_size=neck["d_model"], fpn_top_down_levels=list(neck.get("fpn_top_down_levels", [2, 3])),
        num_feature_levels=levels)


# ---- weights -------------------------------------------------------------------------------------
# Renames applied in order to a Meta key (substring -> substring); the module trees differ in
# names only, except where _meta_to_hf_key handles numbered Sequential/MLP layers and the four
# point embeddings (one table in transformers).
_RENAMES = [
    ("image_encoder.trunk.", "vision_encoder.backbone."),
    ("image_encoder.neck.", "vision_encoder.neck."),
    ("sam_prompt_encoder.", "prompt_encoder."),
    ("sam_mask_decoder.", "mask_decoder."),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("mask_downscaling.0.", "mask_embed.conv1."),
    ("mask_downscaling.1.", "mask_embed.layer_norm1."),
    ("mask_downscaling.3.", "mask_embed.conv2."),
    ("mask_downscaling.4.", "mask_embed.layer_norm2."),
    ("mask_downscaling.6.", "mask_embed.conv3."),
    ("output_upscaling.0.", "upscale_conv1."),
    ("output_upscaling.1.", "upscale_layer_norm."),
    ("output_upscaling.3.", "upscale_conv2."),
    ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    ("no_mem_embed", "no_memory_embedding"),
    ("no_mem_pos_enc", "no_memory_positional_encoding"),
    ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
    ("obj_ptr_tpos_proj", "temporal_positional_encoding_projection_layer"),
    ("obj_ptr_proj", "object_pointer_proj"),
    ("no_obj_ptr", "no_object_pointer"),
    ("memory_encoder.fuser.", "memory_encoder.memory_fuser."),
    ("memory_encoder.out_proj.", "memory_encoder.projection."),
    ("memory_encoder.pix_feat_proj.", "memory_encoder.feature_projection."),
    (".dwconv.", ".depthwise_conv."),
    (".pwconv", ".pointwise_conv"),
    (".gamma", ".scale"),
    ("patch_embed.proj.", "patch_embed.projection."),
    (".out_proj.", ".o_proj."),
    (".norm", ".layer_norm"),
]
# Meta's 3-layer MLPs (layers.0/1/2) are proj_in / layers.0 / proj_out in transformers, its
# 2-layer ones (Hiera blocks, two-way transformer) proj_in / proj_out.
_MLP3 = re.compile(r"(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+|object_pointer_proj)"
                   r"\.layers\.(\d)\.")
_MLP2 = re.compile(r"(vision_encoder\.backbone\.blocks\.\d+\.mlp|mask_decoder\.transformer\.layers\.\d+\.mlp)"
                   r"\.layers\.(\d)\.")
_NECK = re.compile(r"vision_encoder\.neck\.convs\.(\d+)\.conv\.")
_DOWN = re.compile(r"memory_encoder\.mask_downsampler\.encoder\.(\d+)\.")


def _meta_to_hf_key(key: str, downsampler_layers: int) -> str:
    for old, new in _RENAMES:
        key = key.replace(old, new)
    key = _MLP3.sub(lambda m: f"{m[1]}.{('proj_in', 'layers.0', 'proj_out')[int(m[2])]}.", key)
    key = _MLP2.sub(lambda m: f"{m[1]}.{('proj_in', 'proj_out')[int(m[2])]}.", key)
    key = _NECK.sub(lambda m: f"vision_encoder.neck.convs.{m[1]}.", key)

    def down(m) -> str:  # Sequential of (conv, norm, act) x n, then a 1x1 conv
        i = int(m[1])
        if i == 3 * downsampler_layers:
            return "memory_encoder.mask_downsampler.final_conv."
        return f"memory_encoder.mask_downsampler.layers.{i // 3}.{('conv', 'layer_norm')[i % 3]}."

    return _DOWN.sub(down, key)


def _downsampler_layers(keys) -> int:
    indices = [int(m[1]) for k in keys if (m := re.search(r"mask_downsampler\.encoder\.(\d+)\.", k))]
    return max(indices) // 3 if indices else 0


def meta_to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's SAM2 state dict (the .pt file's "model") -> Sam2VideoModel's."""
    layers = _downsampler_layers(state)
    out: dict[str, torch.Tensor] = {}
    points = {}
    for key, value in state.items():
        m = re.fullmatch(r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight", key)
        if m:
            points[int(m[1])] = value
            continue
        new = _meta_to_hf_key(key, layers)
        if new in out:
            raise ValueError(f"two Meta keys map to {new!r}")
        out[new] = value
    if points:
        out["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)], dim=0)
    # transformers keeps the prompt encoder's random Fourier matrix twice (also for the image-wide
    # positional embedding); Meta has one.
    gaussian = out.get("prompt_encoder.shared_embedding.positional_embedding")
    if gaussian is not None:
        out["shared_image_embedding.positional_embedding"] = gaussian.clone()
    return out


def hf_to_meta_state_dict(state: dict[str, torch.Tensor], meta_keys: list[str]) -> dict[str, torch.Tensor]:
    """Sam2VideoModel's state dict -> Meta's, for a Meta model whose keys are `meta_keys` (the
    inverse of meta_to_hf_state_dict, built from it so that the two cannot drift apart)."""
    layers = _downsampler_layers(meta_keys)
    image_pe, point_pe = (state.get(k) for k in ("shared_image_embedding.positional_embedding",
                                                 "prompt_encoder.shared_embedding.positional_embedding"))
    if image_pe is not None and point_pe is not None and not torch.equal(image_pe, point_pe):
        raise ValueError("this transformers checkpoint has two different random Fourier matrices (shared_image_embedding "
                         "and prompt_encoder.shared_embedding); Meta's layout has one (every converted SAM2 has them equal)")
    out: dict[str, torch.Tensor] = {}
    point_keys = sorted((k for k in meta_keys if re.fullmatch(r"sam_prompt_encoder\.point_embeddings\.\d+\.weight", k)),
                        key=lambda k: int(k.split(".")[2]))
    for key in meta_keys:
        if key in point_keys:
            continue
        source = _meta_to_hf_key(key, layers)
        if source not in state:
            raise KeyError(f"transformers checkpoint has no {source!r} (for Meta's {key!r})")
        out[key] = state[source]
    if point_keys:
        table = state["prompt_encoder.point_embed.weight"]
        for i, key in enumerate(point_keys):
            out[key] = table[i:i + 1].clone()
    return out


# ---- Meta models and files -----------------------------------------------------------------------
def build_meta_model(meta_config: dict, checkpoint: Optional[Union[str, Path]] = None, device: str = "cpu",
                     overrides: Optional[dict] = None):
    """Meta's SAM2 model from a Hydra model config given as a dict (what meta_config_from_hf or
    OmegaConf.load(yaml) gives), through hydra's instantiate as build_sam2 does; the weights
    from `checkpoint` with build_sam's own loader. `overrides`: model-level values to set."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from sam2.build_sam import _load_checkpoint

    cfg = OmegaConf.create(meta_config if OmegaConf.is_config(meta_config) else dict(meta_config))
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, f"model.{key}", value, force_add=True)
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    _load_checkpoint(model, str(checkpoint) if checkpoint else None)
    return model.to(device).eval()


def save_meta_checkpoint(model, path: Union[str, Path], meta_config: dict) -> tuple[Path, Path]:
    """Write `model` as Meta writes its checkpoints ({"model": state_dict}) and its Hydra config
    beside it (same name, .yaml). Returns (checkpoint, config)."""
    from omegaconf import OmegaConf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    config_path = path.with_suffix(".yaml")
    config_path.write_text("# @package _global_\n" + OmegaConf.to_yaml(OmegaConf.create(dict(meta_config))))
    return path, config_path


def load_meta_config(source: Union[str, Path]) -> dict:
    """Meta's Hydra model config from a .yaml file or a packaged config name
    ('configs/sam2.1/sam2.1_hiera_t.yaml'), as a plain dict."""
    from omegaconf import OmegaConf

    path = Path(source)
    if not path.is_file():
        import sam2

        packaged = Path(sam2.__file__).parent / str(source)
        if not packaged.is_file():
            raise FileNotFoundError(f"no SAM2 config file {source!r} (nor in the sam2 package)")
        path = packaged
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def processor_configs(image_size: int) -> dict[str, dict]:
    """The processor files of a SAM2 video checkpoint (what Sam2VideoProcessor.save_pretrained
    writes), for a model at `image_size`."""
    from steerseg_ros.tracking.sam2 import IMAGENET_MEAN, IMAGENET_STD

    image = {
        "image_processor_type": "Sam2ImageProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "mask_size": {"height": image_size // 4, "width": image_size // 4},
        "resample": 2,  # bilinear
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "do_convert_rgb": True,
    }
    video = {**image, "video_processor_type": "Sam2VideoVideoProcessor"}
    del video["image_processor_type"], video["mask_size"]
    processor = {"processor_class": "Sam2VideoProcessor", "point_pad_value": -10, "target_size": image_size}
    return {"preprocessor_config.json": image, "video_preprocessor_config.json": video,
            "processor_config.json": processor}


def meta_to_hf(checkpoint: Union[str, Path], meta_config: Union[str, Path, dict], folder: Union[str, Path]) -> Path:
    """Convert Meta's checkpoint (.pt and its Hydra config) to a transformers model folder
    (config.json, model.safetensors, processor configs) that Sam2Tracker loads."""
    from transformers import Sam2VideoModel

    meta = meta_config if isinstance(meta_config, dict) else load_meta_config(meta_config)
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)["model"]
    config = hf_config_from_meta(meta)
    model = Sam2VideoModel(config).eval()
    converted = meta_to_hf_state_dict(state)
    _check_shapes(converted, model.state_dict(), "transformers")
    model.load_state_dict(converted, strict=True)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for name, content in processor_configs(config.image_size).items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")
    return folder


def hf_to_meta(folder: Union[str, Path], checkpoint: Union[str, Path]) -> tuple[Path, Path]:
    """Convert a transformers SAM2 video model folder to Meta's layout: `checkpoint` (.pt) and
    its Hydra config beside it (.yaml). Returns both paths."""
    from transformers import Sam2VideoModel

    model = Sam2VideoModel.from_pretrained(str(folder), local_files_only=True)
    meta_config = meta_config_from_hf(model.config)
    meta = build_meta_model(meta_config)
    converted = hf_to_meta_state_dict(model.state_dict(), list(meta.state_dict()))
    _check_shapes(converted, meta.state_dict(), "Meta")
    meta.load_state_dict(converted, strict=True)
    return save_meta_checkpoint(meta, checkpoint, meta_config)


def _check_shapes(converted: dict, target: dict, name: str) -> None:
    missing, extra = sorted(set(target) - set(converted)), sorted(set(converted) - set(target))
    wrong = [k for k in set(target) & set(converted) if tuple(target[k].shape) != tuple(converted[k].shape)]
    if missing or extra or wrong:
        raise ValueError(f"conversion to the {name} layout does not fit the model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, wrong shapes {sorted(wrong)[:5]}")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Convert SAM2 checkpoints between Meta's layout (.pt + Hydra config) "
                                            "and a transformers model folder.")
    sub = p.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("meta-to-hf", help="Meta .pt -> transformers folder")
    a.add_argument("checkpoint", help="Meta's checkpoint, e.g. sam2.1_hiera_tiny.pt")
    a.add_argument("folder", help="output folder (tracker.model of the sam2 backend)")
    a.add_argument("--config", default="", help="its Hydra config: a .yaml file or a packaged name "
                                                "(default: from the checkpoint's file name)")
    b = sub.add_parser("hf-to-meta", help="transformers folder -> Meta .pt (+ .yaml beside it)")
    b.add_argument("folder")
    b.add_argument("checkpoint", help="output .pt (its Hydra config is written beside it as .yaml)")
    args = p.parse_args(argv)
    if args.direction == "meta-to-hf":
        config = args.config or META_CHECKPOINTS.get(Path(args.checkpoint).name) or \
            str(Path(args.checkpoint).with_suffix(".yaml"))
        print(meta_to_hf(args.checkpoint, config, args.folder))
    else:
        print(*hf_to_meta(args.folder, args.checkpoint))
    return 0


if __name__ == "__main__":
    sys.exit(main())
