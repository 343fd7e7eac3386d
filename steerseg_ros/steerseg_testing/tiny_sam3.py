"""Randomly initialised SAM 3 checkpoints built from configs in code: the tracker
(Sam3TrackerVideoModel) and the concept detector (Sam3Model, with a CLIP tokenizer).

Owns `tiny_config` (a two-layer ViT with its FPN neck, one memory-attention layer: a few MB,
tens of milliseconds per frame on a CPU at 224 px), `random_sam3` and `save_random_sam3`, which
writes a folder laid out like a hub checkpoint (config.json, model.safetensors and, unless told
not to, a preprocessor_config.json with SAM 3's normalisation) that `Sam3Tracker` loads through
the same code as facebook/sam3, and `TransformersStream`, transformers' own streaming loop that
the parity test and the benchmark hold the `sam3` tracker against; and for the concept grounder
`tiny_detector_config`, `save_random_sam3_detector` (Sam3Model, its tokenizer and processor
config in a hub-like folder that `Sam3Grounder` loads as it loads facebook/sam3) and
`transformers_instances`, transformers' own post-processing of Sam3Model's outputs. Random
weights make meaningless masks: use them to test behaviour and to time, never to judge quality.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (CLIPTokenizer, Sam3Config, Sam3Model, Sam3TrackerVideoConfig, Sam3TrackerVideoInferenceSession, Sam3TrackerVideoModel,
                          Sam3TrackerVideoProcessor)
from transformers.models.sam3.configuration_sam3 import Sam3ViTConfig, Sam3VisionConfig

from steerseg_ros.tracking.sam2_memory import session_parts, tensor_bytes
from steerseg_ros.tracking.sam2_reference import match_reference

PATCH = 14  # SAM 3's ViT patch size; its FPN levels are 4x, 2x and 1x the patch grid


def tiny_config(image_size: int = 224) -> Sam3TrackerVideoConfig:
    """A Sam3TrackerVideo config with every part present but tiny: a 2-layer ViT (width 32, one
    windowed and one global block), FPN width 128, one memory-attention layer and 64 memory
    channels. `image_size` must be a multiple of 112 (the 14-pixel patches, and windows of 8
    patches that tile the grid)."""
    if image_size < 112 or image_size % 112:
        raise ValueError(f"image_size must be a positive multiple of 112, got {image_size}")
    grid = image_size // PATCH
    hidden = 128
    backbone = Sam3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
                             image_size=image_size, patch_size=PATCH, window_size=8, global_attn_indexes=[1],
                             pretrain_image_size=image_size)
    vision = Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=hidden,
                              backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]])
    return Sam3TrackerVideoConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=hidden, image_size=image_size, patch_size=PATCH),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=128, num_attention_heads=2, iou_head_hidden_dim=64),
        image_size=image_size,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=128,
        memory_attention_rope_feat_sizes=[grid, grid],
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=128,
        memory_fuser_num_layers=1,
    )


def random_sam3(config: Optional[Sam3TrackerVideoConfig] = None, seed: int = 0,
                memory_scale: float = 30.0) -> Sam3TrackerVideoModel:
    """A randomly initialised Sam3TrackerVideoModel (the tiny config by default), with the initial
    values changed as tiny_sam2.random_sam2 changes SAM2's and for the same reasons: memory that
    reaches the mask, objects mostly "present", predicted IoUs near 0.9 and masks that are neither
    empty nor full. `memory_scale` is the factor on the memory weights: 30 makes a chaotic model,
    in which last-bit differences (objects batched or not) grow into different masks within a
    few frames; 1 keeps transformers' initialisation there, where they stay at rounding level."""
    torch.manual_seed(seed)
    model = Sam3TrackerVideoModel(config or tiny_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and (name.startswith("memory_encoder.") or ".cross_attn_image." in name):
                param.mul_(memory_scale)
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(4.0)
        model.mask_decoder.iou_prediction_head.proj_out.bias.fill_(2.0)
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(20.0)
    return model


def processor_config(image_size: int) -> dict:
    """The image processor settings of a SAM 3 checkpoint at `image_size` (those the tracker reads:
    size, rescale factor, mean and std 0.5)."""
    return {"image_processor_type": "Sam3ImageProcessor", "do_resize": True,
            "size": {"height": image_size, "width": image_size}, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def save_random_sam3(folder: Union[str, Path], config: Optional[Sam3TrackerVideoConfig] = None, seed: int = 0,
                     processor: bool = True, memory_scale: float = 30.0) -> Path:
    """Write a random SAM 3 tracker checkpoint to `folder` (with preprocessor_config.json unless
    `processor` is false); returns it. Load it with Sam3Tracker(Sam3TrackerConfig(model=str(folder)))."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = random_sam3(config, seed, memory_scale)
    model.save_pretrained(folder)
    if processor:
        (folder / "preprocessor_config.json").write_text(
            json.dumps(processor_config(model.config.image_size), indent=2) + "\n")
    return folder


def sam3_pixel_values(image: np.ndarray, image_size: int) -> torch.Tensor:
    """HxWx3 uint8 RGB -> (1, 3, S, S) float32 as SAM 3's image processor computes them (written
    out: the processor needs torchvision): the uint8 image resized to S x S, bilinear and
    antialiased, then rescale and normalisation with mean and std 0.5 fused into
    (x - 127.5) / 127.5."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].contiguous()
    size = (image_size, image_size)
    if tuple(x.shape[-2:]) != size:
        if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        else:
            x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            x = x.round_().to(torch.uint8)
    return (x.float() - 127.5) / 127.5


class TransformersStream:
    """Sam3TrackerVideoModel driven frame by frame as transformers documents streaming inference
    (its Sam3TrackerVideo docs and test_inference_propagate_on_streamed_video): one inference
    session for all objects, prompts added through Sam3TrackerVideoProcessor's
    add_inputs_to_inference_session with the video's size, then model(inference_session=...,
    frame=pixel_values) per frame; nothing is ever pruned. Pixel values come from
    `sam3_pixel_values` and the processor is built without its image and video processors
    (which need torchvision): prompts only use its coordinate and mask handling.

    `mask_pointer_as_meta` applies tracking/sam2_reference.match_reference to the model, the
    one change the `sam3` tracker makes to transformers' code (a mask prompt's object pointer
    from a single-mask decoder output, as Meta's SAM 3 tracker takes it); it changes mask
    prompts only."""

    def __init__(self, folder: Union[str, Path], height: int, width: int, mask_pointer_as_meta: bool = True):
        self.model = Sam3TrackerVideoModel.from_pretrained(str(folder), local_files_only=True).eval()
        if mask_pointer_as_meta:
            match_reference(self.model)
        self.image_size = int(self.model.config.image_size)
        self.processor = Sam3TrackerVideoProcessor.__new__(Sam3TrackerVideoProcessor)
        self.processor.target_size, self.processor.point_pad_value = self.image_size, -10
        # A torch dtype: the session's default, the string "float32", breaks add_new_frame.
        self.session = Sam3TrackerVideoInferenceSession(video_height=height, video_width=width,
                                                        inference_device="cpu", dtype=torch.float32)
        self.size = (height, width)
        self.frames = 0

    def add_points(self, obj_ids: list[int], points: list[np.ndarray], labels: list[np.ndarray]) -> None:
        """Point prompts (pixel x, y) for each object, on the next frame fed."""
        self.processor.add_inputs_to_inference_session(
            self.session, frame_idx=self.frames, obj_ids=list(obj_ids),
            input_points=[[np.asarray(p, float).tolist() for p in points]],
            input_labels=[[np.asarray(lab).astype(int).tolist() for lab in labels]], original_size=self.size)

    def add_masks(self, obj_ids: list[int], masks: list[np.ndarray]) -> None:
        """Mask prompts (H x W bool) for each object, on the next frame fed."""
        self.processor.add_inputs_to_inference_session(
            self.session, frame_idx=self.frames, obj_ids=list(obj_ids),
            input_masks=[torch.from_numpy(np.asarray(m, bool)) for m in masks])

    @torch.inference_mode()
    def step(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed one frame; returns the objects' low-resolution mask logits (K, h, w) and object
        score logits (K,), objects in the order they were first prompted."""
        output = self.model(inference_session=self.session, frame=sam3_pixel_values(image, self.image_size)[0])
        self.frames += 1
        return output.pred_masks[:, 0], output.object_score_logits.reshape(-1)

    def memory_bytes(self) -> int:
        """Bytes of tensor storage the session holds (counted as the tracker counts its own)."""
        return tensor_bytes(session_parts(self.session))


# ---- the concept detector (Sam3Model) ------------------------------------------------------------
def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer built offline: every byte as a token (and as a word end), no merges, and
    CLIP's two special tokens; 514 ids. It tokenizes any text, a character at a time."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_detector_config(image_size: int = 224, num_queries: int = 16) -> Sam3Config:
    """A Sam3Config with every part present but tiny: the tracker's 2-layer ViT and FPN (width
    64), a one-layer CLIP text encoder over `tiny_tokenizer`'s 514 ids, one layer each of the
    geometry encoder, DETR encoder and decoder, and `num_queries` queries."""
    if image_size < 112 or image_size % 112:
        raise ValueError(f"image_size must be a positive multiple of 112, got {image_size}")
    grid = image_size // PATCH
    hidden = 64
    backbone = Sam3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
                             image_size=image_size, patch_size=PATCH, window_size=8, global_attn_indexes=[1],
                             pretrain_image_size=image_size)
    vision = Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=hidden,
                              backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]])
    text = dict(model_type="clip_text_model", vocab_size=514, hidden_size=32, intermediate_size=64,
                projection_dim=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                bos_token_id=512, eos_token_id=513, pad_token_id=513)
    layers = lambda **k: dict(hidden_size=hidden, num_attention_heads=2, intermediate_size=128,  # noqa: E731
                              num_layers=1, **k)
    return Sam3Config(vision_config=vision, text_config=text, geometry_encoder_config=layers(),
                      detr_encoder_config=layers(), detr_decoder_config=layers(num_queries=num_queries),
                      mask_decoder_config=dict(hidden_size=hidden, num_attention_heads=2))


def random_sam3_detector(config: Optional[Sam3Config] = None, seed: int = 0, presence_bias: float = 4.0,
                         query_scale: float = 60.0) -> Sam3Model:
    """A randomly initialised Sam3Model (the tiny config by default). `presence_bias`: the bias of
    the presence head (4: the concept "present" on every image, about 0.98; -4: never).
    `query_scale` multiplies the query projection of the scoring head, spreading the query
    scores (all near 0.5 at transformers' initialisation) so that some pass the 0.3 threshold
    and some do not."""
    torch.manual_seed(seed)
    model = Sam3Model(config or tiny_detector_config()).eval()
    with torch.no_grad():
        model.detr_decoder.presence_head.layer3.bias.fill_(presence_bias)
        model.dot_product_scoring.query_proj.weight.mul_(query_scale)
    return model


def save_random_sam3_detector(folder: Union[str, Path], config: Optional[Sam3Config] = None, seed: int = 0,
                              presence_bias: float = 4.0) -> Path:
    """Write a random Sam3Model checkpoint with its tokenizer and processor config to `folder`;
    returns it. Load it with Sam3Grounder(Sam3GrounderConfig(model=str(folder)))."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = random_sam3_detector(config, seed, presence_bias)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(processor_config(model.config.vision_config.image_size), indent=2) + "\n")
    return folder


def transformers_instances(output, size: tuple[int, int], threshold: float = 0.3,
                           mask_threshold: float = 0.5) -> dict:
    """transformers' own Sam3ImageProcessor.post_process_instance_segmentation on one image's
    Sam3Model output (scores, boxes, masks). Its module imports torchvision's batched_nms at
    the top, which this package cannot install with its CPU torch; the instance post-processing
    never calls it, so an empty torchvision.ops.boxes stands in for the import alone."""
    import importlib
    import sys
    import types

    if "torchvision.ops.boxes" not in sys.modules:
        for name in ("torchvision", "torchvision.ops", "torchvision.ops.boxes"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["torchvision.ops.boxes"].batched_nms = None
    module = importlib.import_module("transformers.models.sam3.image_processing_sam3")
    processor = module.Sam3ImageProcessor.__new__(module.Sam3ImageProcessor)
    return processor.post_process_instance_segmentation(output, threshold, mask_threshold, [size])[0]
