"""One tracked object's memory in a transformers `Sam2VideoInferenceSession`.

Owns what the transformers SAM2 backend does to a session's memory bank outside the model's own
call: pruning it to what later steps read (bounded memory), building the memory tokens a
memory-conditioned step attends to (for the batched step, which calls the model's parts itself),
storing a batched step's outputs as the per-object call would, and counting the bytes it holds.
"""
from __future__ import annotations

import torch
from transformers import Sam2VideoInferenceSession


def prune_session(session: Sam2VideoInferenceSession, index: int, memory_frames: int, pointer_frames: int) -> None:
    """Drop what no later step reads (see tracking/sam2.py's docstring). The next step, at
    index + 1, reads memory features at ages 0 .. memory_frames - 1 and object pointers at ages
    0 .. pointer_frames - 1 (age = index - frame index), plus every conditioning frame."""
    session.processed_frames.clear()  # features come from our cache; pixels are never re-read
    session.cache.clear_all()
    horizon = max(memory_frames, pointer_frames)
    for obj_idx, outputs in session.output_dict_per_obj.items():
        tracked = outputs["non_cond_frame_outputs"]
        for f in list(tracked):
            age = index - f
            if age >= horizon:
                del tracked[f]
                continue
            tracked[f].pop("high_res_masks", None)
            tracked[f].pop("pred_masks", None)
            if age >= memory_frames:
                tracked[f].pop("maskmem_features", None)
                tracked[f].pop("maskmem_pos_enc", None)
        for out in outputs["cond_frame_outputs"].values():
            out.pop("high_res_masks", None)
        frames = session.frames_tracked_per_obj[obj_idx]
        for f in [f for f in frames if index - f >= horizon]:
            del frames[f]
        if session.obj_idx_to_id(obj_idx) not in session.obj_with_new_inputs:
            # Prompts are read only on the frame they were given on.
            session.point_inputs_per_obj[obj_idx].clear()
            session.mask_inputs_per_obj[obj_idx].clear()


def memory_inputs(model, session: Sam2VideoInferenceSession, index: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One object's memory for the step onto `index`, as the model's memory-conditioned step
    builds it (its own helpers): (M, 1, C) memory tokens, their position encodings, and how
    many of them are object pointers (the last ones, which get no rotary encoding)."""
    previous = model._gather_memory_frame_outputs(session, 0, index, False)
    memories, positions = model._build_memory_attention_inputs(previous, device)
    offsets, pointers, most = model._get_object_pointers(session, 0, index, None, device, False, True)
    count = 0
    if pointers:
        tokens, encoding = model._process_object_pointers(offsets, pointers, most, 1, model.hidden_dim, device)
        memories.append(tokens)
        positions.append(encoding)
        count = tokens.shape[0]
    return torch.cat(memories, dim=0).to(dtype), torch.cat(positions, dim=0), count


def store_step(session: Sam2VideoInferenceSession, index: int, pixel_values: torch.Tensor, vision: dict,
               output: dict) -> None:
    """Write one object's share of a batched step into its session, as the model's own call on
    frame `index` does (pruning drops the frame and most of the outputs again)."""
    session.add_new_frame(pixel_values, index)
    session.cache.cache_vision_features(index, vision)
    session.store_output(0, index, output_value=output, is_conditioning_frame=False)
    session.frames_tracked_per_obj[0][index] = {"reverse": False}


def session_parts(session: Sam2VideoInferenceSession):
    return (session.processed_frames, session.cache._vision_features, session.output_dict_per_obj,
            session.point_inputs_per_obj, session.mask_inputs_per_obj)


def tensor_bytes(obj) -> int:
    """Bytes of the distinct tensor storages reachable through dicts, lists and tuples."""
    seen: dict[int, int] = {}
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sum(seen.values())
