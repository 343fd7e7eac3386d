"""The batched SAM2 step: several objects with equally long memories onto one frame at once.

Owns the arithmetic of a live step for a group of objects (memory attention, the mask decoder
and the memory encoder on a batch, with the model's own modules); the transformers backend
(tracking/sam2.py) groups the objects and writes each one's outputs back into its session.
Grouping rather than padding keeps the arithmetic that of the per-object path (no attention
mask, no padded keys).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.sam2_video.modeling_sam2_video import NO_OBJ_SCORE


def decode_batch(model, conditioned: torch.Tensor, high_res: list[torch.Tensor], image_size: int):
    """The mask decoder on B memory-conditioned feature maps without prompts, as the model's
    tracking step runs it for one object; written out because the model's own single-frame
    forward picks the best of several masks correctly for a batch of one only. Returns the
    chosen low- and high-resolution mask logits (B, 1, h, w), object pointers (B, 1, C), object
    score logits (B, 1, 1) and predicted IoUs (B, K), shaped as the per-object step stores them."""
    batch = conditioned.shape[0]
    multimask = model._use_multimask(False, None)
    # No prompt: one padding point labelled -1, as the model feeds a tracked frame.
    points = torch.zeros(batch, 1, 1, 2, dtype=conditioned.dtype, device=conditioned.device)
    labels = -torch.ones(batch, 1, 1, dtype=torch.int32, device=conditioned.device)
    sparse, dense = model.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None,
                                         input_masks=None)
    image_pe = model.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)
    low, iou, tokens, object_logits = model.mask_decoder(
        image_embeddings=conditioned, image_positional_embeddings=image_pe, sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask, high_resolution_features=high_res)
    low, iou, tokens = low[:, 0], iou[:, 0], tokens[:, 0]  # the one prompt of each batch entry
    present = object_logits > 0  # (B, 1, 1)
    low = torch.where(present[..., None], low, NO_OBJ_SCORE)
    # All candidates upsampled before choosing, as the model does: the kernel's result for one
    # channel depends (in the last bits) on how many it processes, and a tracked object's
    # memory carries such differences on.
    high = F.interpolate(low.float(), size=(image_size, image_size), mode="bilinear",
                         align_corners=False).to(low.dtype)
    rows = torch.arange(batch, device=low.device)
    best = iou.argmax(dim=-1) if multimask else torch.zeros(batch, dtype=torch.long, device=low.device)
    low, high = low[rows, best][:, None], high[rows, best][:, None]
    token = tokens[rows, best] if multimask and tokens.shape[1] > 1 else tokens[:, 0]
    pointer = model.object_pointer_proj(token)[:, None]
    weight = present.to(pointer.dtype)
    pointer = weight * pointer + (1 - weight) * model.no_object_pointer
    return low, high, pointer, object_logits, iou


def step_batch(model, pos: list[torch.Tensor], image_size: int, feats: list[torch.Tensor], built: list[tuple]):
    """Memory attention, mask decoder and memory encoder for B objects on one frame's shared
    features `feats`, each object's memory `built` by sam2_memory.memory_inputs (all equally
    long). Returns decode_batch's outputs plus the new memory features and their encodings
    (N, B, ...), batch entry k being object k."""
    batch = len(built)
    memory = torch.cat([m for m, _, _ in built], dim=1)
    memory_pos = torch.cat([p for _, p, _ in built], dim=1)
    top = feats[-1].expand(-1, batch, -1)
    # (HW, 1, C) shared features -> (B, C, H, W) maps for the decoder's skip connections.
    high_res = [x.permute(1, 2, 0).reshape(1, x.shape[2], *size).expand(batch, -1, -1, -1)
                for x, size in zip(feats[:-1], model.backbone_feature_sizes[:-1])]
    conditioned = model.memory_attention(current_vision_features=top,
                                         current_vision_position_embeddings=pos[-1].expand(-1, batch, -1),
                                         memory=memory, memory_posision_embeddings=memory_pos,
                                         num_object_pointer_tokens=built[0][2])
    height, width = model.backbone_feature_sizes[-1]
    conditioned = conditioned[0].transpose(1, 2).reshape(batch, model.hidden_dim, height, width)
    low, high, pointer, object_logits, iou = decode_batch(model, conditioned, high_res, image_size)
    mem_features, mem_pos = model._encode_new_memory(current_vision_feats=top, pred_masks_high_res=high,
                                                     object_score_logits=object_logits, is_mask_from_pts=False)
    return low, high, pointer, object_logits, iou, mem_features, mem_pos
