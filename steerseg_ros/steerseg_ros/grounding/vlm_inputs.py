"""Model inputs for the vision-language grounder, at the two granularities DecAF uses.

Owns:
- the Qwen-VL processors without torchvision (`processor_class`, `load_processor`): each
  family's own processor with `FramesVideoProcessor` standing in for transformers' video
  processor, which needs torchvision (not usable here); images go through the family's PIL
  image processor;
- `FramesVideoProcessor` and `patchify_video`: keyframes -> `pixel_values_videos`, laid out
  exactly as transformers' video processors lay them out;
- `video_size` / `frame_size`: the pixel sizes of the keyframe video (a token budget per frame
  pair) and of the per-frame images (a multiple of the video grid);
- `VisualInput` / `encode_video` / `encode_images`: pixels of one visual item or batch, computed
  once and reused by every prompt;
- `PromptBatch` / `encode_prompt`: a chat prompt around a visual input -> token ids, modality
  types, the visual token mask, and the slot where soft prompt tokens go.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from steerseg_ros.grounding.token_grid import VisualGrid

# Marks where soft prompt tokens go in a prompt. Every Qwen-VL vocabulary has it and no Qwen-VL
# processor uses it, so it never collides with image/video placeholders.
SOFT_TOKEN = "<|vision_pad|>"
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The Qwen-VL resize rule as qwen-vl-utils 0.0.11 applies it to DecAF's keyframes: both
    sides multiples of `factor` (at least one), the area within [min_pixels, max_pixels], the
    aspect ratio kept as closely as possible.

    Written here because qwen-vl-utils imports torchvision, and transformers' copy of the rule
    rounds a side under half a factor to 0 before enlarging (a 10 x 1000 frame: 28 x 560 instead
    of qwen-vl-utils' 28 x 1008). Where both rules give a size, they give the same one."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        # qwen-vl-utils lets a side reach 0 here (only for budgets under 200 tokens and extreme
        # aspect ratios); one factor keeps the frame usable.
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# The smallest keyframe, in LLM tokens: DecAF hands its keyframes to qwen-vl-utils as a list of
# frames, which resizes each one as an image with qwen-vl-utils' smallest image size (4 x 28 x 28
# pixels in 0.0.11, the version DecAF pins; the transformers processor it ran keeps 56 x 56).
MIN_FRAME_TOKENS = 4


def video_size(height: int, width: int, factor: int, tokens_per_pair: int, min_pixels: int = 0) -> tuple[int, int]:
    """(H, W) of the keyframe video: at most `tokens_per_pair` LLM tokens per frame pair, one
    token covering factor x factor pixels (factor = patch size x spatial merge); a frame smaller
    than MIN_FRAME_TOKENS tokens (or `min_pixels`, if more) is enlarged to it."""
    smallest = max(min_pixels, MIN_FRAME_TOKENS * factor * factor)
    return smart_resize(height, width, factor, smallest, tokens_per_pair * factor * factor)


def frame_size(video_hw: tuple[int, int], scale: int) -> tuple[int, int]:
    """(H, W) of the per-frame images: `scale` times the video grid in each dimension, so frame
    cell (i, j) refines video cell (i // scale, j // scale) exactly."""
    return video_hw[0] * scale, video_hw[1] * scale


def resize_rgb(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize with PIL, the resampling transformers' Qwen image processors use."""
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))


def patchify_video(frames: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int):
    """Normalised frames (T, C, H, W) float32 -> (grid_t * grid_h * grid_w, C * tp * p * p) patches
    and the grid (t, h, w), in the order transformers' Qwen video processors produce: time
    groups, then merge-blocks row-major, then the merge_size x merge_size patches inside a block;
    inside a patch, channel, then frame within the time group, then pixel rows and columns. A
    frame count not divisible by the temporal patch is padded by repeating the last frame.

    Written here because transformers' own video processors import torchvision."""
    t, c, h, w = frames.shape
    if pad := -t % temporal_patch_size:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)], axis=0)
        t += pad
    if h % (patch_size * merge_size) or w % (patch_size * merge_size):
        raise ValueError(f"frame size {h}x{w} is not a multiple of {patch_size * merge_size}")
    gt, gh, gw = t // temporal_patch_size, h // patch_size, w // patch_size
    patches = frames.reshape(gt, temporal_patch_size, c, gh // merge_size, merge_size, patch_size,
                             gw // merge_size, merge_size, patch_size)
    # (gt, tp, c, bh, mh, ph, bw, mw, pw) -> (gt, bh, bw, mh, mw, c, tp, ph, pw)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = np.ascontiguousarray(patches).reshape(gt * gh * gw, c * temporal_patch_size * patch_size * patch_size)
    return flat, (gt, gh, gw)


class FramesVideoProcessor:
    """The video half of a Qwen-VL processor, for videos given as frames already resized to
    multiples of patch x merge pixels (the grounder picks the size from its token budget):
    rescale and normalise with the image processor's own code, patchify as transformers does,
    and report the metadata the processors read (frame rate for Qwen2.5-VL's temporal positions
    and Qwen3-VL's timestamps)."""

    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, image_processor, fps: float = 2.0):
        self.image_processor = image_processor
        self.patch_size = int(image_processor.patch_size)
        self.merge_size = int(image_processor.merge_size)
        self.temporal_patch_size = int(image_processor.temporal_patch_size)
        self.fps = float(fps)

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, 3, H, W) float32, as the image processor prepares an image."""
        ip = self.image_processor
        out = []
        for frame in frames:
            x = np.moveaxis(np.asarray(frame), -1, 0)
            if ip.do_rescale:
                x = ip.rescale(x, ip.rescale_factor)
            if ip.do_normalize:
                x = ip.normalize(x, ip.image_mean, ip.image_std)
            out.append(np.asarray(x, dtype=np.float32))
        return np.stack(out)

    def __call__(self, videos, fps: Optional[float] = None, return_tensors: Optional[str] = None, **kwargs):
        from transformers.feature_extraction_utils import BatchFeature
        from transformers.video_utils import VideoMetadata

        if isinstance(videos, np.ndarray) and videos.ndim == 4:
            videos = [videos]
        fps = float(fps or self.fps)
        pixels, grids, metadata = [], [], []
        for video in videos:
            frames = np.stack([np.asarray(f) for f in video]) if not isinstance(video, np.ndarray) else video
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}")
            patches, grid = patchify_video(self.normalize(frames), self.patch_size, self.merge_size,
                                           self.temporal_patch_size)
            pixels.append(patches)
            grids.append(list(grid))
            metadata.append(VideoMetadata(total_num_frames=len(frames), fps=fps, height=frames.shape[1],
                                          width=frames.shape[2], frames_indices=list(range(len(frames)))))
        data = {"pixel_values_videos": np.concatenate(pixels, axis=0),
                "video_grid_thw": np.array(grids, dtype=np.int64), "video_metadata": metadata}
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=["video_metadata"])


def processor_class(model_type: str) -> type:
    """The family's processor class with `FramesVideoProcessor` as its video processor. Saving
    writes the tokenizer, image processor and chat template; loading reads them back."""
    import transformers

    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model type {model_type!r}; supported: {', '.join(FAMILIES)}")
    base = {"qwen2_vl": transformers.Qwen2VLProcessor, "qwen2_5_vl": transformers.Qwen2_5_VLProcessor,
            "qwen3_vl": transformers.Qwen3VLProcessor}[model_type]

    class Processor(base):
        # Only these two sub-processors are loaded and saved: the signature is what transformers
        # reads to decide that.
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
            self.video_processor = FramesVideoProcessor(image_processor)

    # Saved folders name the stock processor class, as hub checkpoints do, so that
    # AutoProcessor opens them on machines where torchvision works.
    Processor.__name__ = Processor.__qualname__ = base.__name__
    return Processor


def load_processor(path: str, model_type: str, **kwargs):
    """The processor of a checkpoint folder or hub id (tokenizer, image processor, chat template)."""
    return processor_class(model_type).from_pretrained(path, **kwargs)


@dataclass
class VisualInput:
    """Pixels of one video or a batch of images, and the vision tower's output once computed.

    kind: "video" or "image". grid_thw: (N, 3) patch grids, one row per item. grids: the LLM
    token layout of each item. extra: family-specific model inputs (second_per_grid_ts).
    metadata: video metadata for the processor's placeholder text (Qwen3-VL timestamps).
    features: the vision tower's output for `mm_encoder_outputs`, filled by the grounder.
    """

    kind: str
    pixel_values: Any
    grid_thw: Any
    grids: list[VisualGrid]
    metadata: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    features: Any = None

    @property
    def count(self) -> int:
        return len(self.grids)


def encode_video(processor, frames: Sequence[np.ndarray], size_hw: tuple[int, int], fps: float) -> VisualInput:
    """One video item from frames (H, W, 3) uint8, resized to `size_hw`."""
    import torch
    from transformers import Qwen2_5_VLProcessor

    vp = processor.video_processor
    resized = np.stack([resize_rgb(f, size_hw) for f in frames])
    out = vp([resized], fps=fps)
    grid_thw = torch.as_tensor(out["video_grid_thw"])
    extra = {}
    if isinstance(processor, Qwen2_5_VLProcessor):
        # Qwen2.5-VL spaces the temporal positions of video tokens by seconds per time step.
        extra["second_per_grid_ts"] = torch.tensor([vp.temporal_patch_size / fps])
    grids = [VisualGrid.from_patch_grid(tuple(int(v) for v in g), vp.patch_size, vp.merge_size,
                                        vp.temporal_patch_size, size_hw, len(frames)) for g in grid_thw]
    return VisualInput("video", torch.as_tensor(out["pixel_values_videos"]), grid_thw, grids,
                       metadata=list(out["video_metadata"]), extra=extra)


def encode_images(processor, images: Sequence[np.ndarray], size_hw: tuple[int, int]) -> VisualInput:
    """A batch of images (H, W, 3) uint8 resized to `size_hw`, one image per prompt row."""
    import torch

    ip = processor.image_processor
    resized = [resize_rgb(im, size_hw) for im in images]
    # Already at a multiple of the patch grid: the processor's own resize must not move it.
    out = ip(resized, do_resize=False, return_tensors="pt")
    grid_thw = out["image_grid_thw"]
    grids = [VisualGrid.from_patch_grid(tuple(int(v) for v in g), int(ip.patch_size), int(ip.merge_size),
                                        1, size_hw, 1) for g in grid_thw]
    return VisualInput("image", out["pixel_values"], grid_thw, grids)


@dataclass
class PromptBatch:
    """Token-level inputs of one prompt over a batch of rows (all rows the same length).

    input_ids / mm_token_type_ids: (B, L). visual_mask: (B, L) bool, the visual placeholder
    tokens. soft_start: index of the first soft prompt slot (its N slots hold the soft token
    placeholder in input_ids), or None when the prompt has no soft slot. visual: the visual
    input the placeholders stand for, or None for a text-only prompt.
    """

    input_ids: Any
    mm_token_type_ids: Any
    visual_mask: Any
    visual: Optional[VisualInput]
    soft_start: Optional[int] = None
    soft_count: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)


def chat_text(processor, content: list[dict]) -> str:
    """The chat-template text of one user turn, ending with the assistant's turn opening."""
    return processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def _expanded(processor, text: str, visual: Optional[VisualInput], row: int) -> str:
    """`text` with its one image/video placeholder expanded to the item's tokens, by the
    processor's own replacement rule (Qwen3-VL's per-step timestamps included)."""
    if visual is None:
        return text
    if visual.kind == "image":
        token = processor.image_token
        replacement = processor.replace_image_token({"image_grid_thw": visual.grid_thw}, image_idx=row)
    else:
        token = processor.video_token
        replacement = processor.replace_video_token(
            {"video_grid_thw": visual.grid_thw, "video_metadata": visual.metadata}, video_idx=row)
    if text.count(token) != 1:
        raise ValueError(f"expected one {token} in the prompt, found {text.count(token)}")
    return text.replace(token, replacement)


def encode_prompt(processor, content: list[dict], visual: Optional[VisualInput] = None,
                  rows: int = 1, soft_count: int = 0) -> PromptBatch:
    """Token ids of a one-turn chat prompt, one row per visual item (or `rows` rows without one).

    content: chat items, e.g. [{"type": "video"}, {"type": "text", "text": ...}]; a text item
    may contain SOFT_TOKEN once to mark where `soft_count` soft prompt tokens go (the marker is
    dropped when soft_count is 0, leaving the stock prompt).
    """
    import torch

    tokenizer = processor.tokenizer
    soft_id = tokenizer.convert_tokens_to_ids(SOFT_TOKEN)
    if soft_id is None or soft_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {SOFT_TOKEN} token to mark soft prompt slots")
    text = chat_text(processor, content)
    n_rows = visual.count if visual is not None else rows
    ids_rows = []
    for row in range(n_rows):
        ids = tokenizer(_expanded(processor, text, visual, row), add_special_tokens=False)["input_ids"]
        ids_rows.append(ids)
    lengths = {len(ids) for ids in ids_rows}
    if len(lengths) != 1:
        raise ValueError(f"prompt rows differ in length {sorted(lengths)}: batch items of one size only")
    input_ids = torch.tensor(ids_rows, dtype=torch.long)
    marks = (input_ids[0] == soft_id).nonzero().flatten().tolist()
    soft_start = None
    if marks:
        if len(marks) != 1:
            raise ValueError(f"{SOFT_TOKEN} appears {len(marks)} times in the prompt; it marks one soft slot")
        soft_start = marks[0]
        # The one marker becomes soft_count placeholders (none for a stock prompt).
        input_ids = torch.cat([input_ids[:, :soft_start], input_ids[:, soft_start:soft_start + 1].repeat(1, soft_count),
                               input_ids[:, soft_start + 1:]], dim=1)
        if soft_count == 0:
            soft_start = None
    mm_types = torch.tensor(processor.create_mm_token_type_ids(input_ids.tolist()), dtype=torch.int)
    visual_mask = mm_types > 0
    if visual is not None:
        expected = sum(g.num_tokens for g in visual.grids) // n_rows
        if int(visual_mask[0].sum()) != expected:
            raise ValueError(f"prompt has {int(visual_mask[0].sum())} visual tokens per row, expected {expected}")
    return PromptBatch(input_ids, mm_types, visual_mask, visual, soft_start,
                       soft_count if soft_start is not None else 0)


def model_class_for(family: str):
    import transformers

    names = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
             "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
             "qwen3_vl": "Qwen3VLForConditionalGeneration"}
    return getattr(transformers, names[family])
