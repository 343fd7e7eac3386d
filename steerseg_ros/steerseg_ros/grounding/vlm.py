"""The vision-language grounder: a frozen Qwen-VL model's attention, read at the prompt's last
token, as the grounding map (DecAF, training-free) or steered by learned soft prompts with
chain-of-thought attributes (SteerSeg). Backends "decaf" and "steerseg".

Owns `VLMGrounderConfig` (every parameter, with its help text), the model loading (with
`ModelUnavailableError` when the weights are neither on disk nor downloadable), and
`VLMGrounder.ground`: keyframes -> one video item and batched frame images -> the vision tower
once -> the method's prompts (prefill with attention capture; answers decoded only as far as
they are used) -> rollout maps on the token grid -> fused map per keyframe -> point prompts.

Model inputs come from `vlm_inputs`, the token layout from `token_grid`, the rollout from
`attention`, the two methods' prompt sequences from `vlm_methods`, the map fusion from `fusion`,
the prompt texts from `questions`, the soft prompts from `soft_prompts`.

The "decaf" mode follows DecAF's released code (HYUNJS/DecAF at commit 6c9766c) wherever the
paper leaves a detail open: its prompt texts, whole answers of up to 128 tokens as the category
candidates and the whole category answer as the background prompt's class, its smoothing, and
every fused cell at or above the threshold as a point, keyframe by keyframe in row-major order.

Also owns the optional "is the object in view" check (`in_view_check`, off by default): the
model's P(yes) to a visibility question about the keyframe video, or the object-against-
background attention share of DecAF's own prompts, against `in_view_threshold`; the result's
`in_view` / `in_view_score` carry it to the pipeline, which makes no track from a "not in view".
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from steerseg_ros.devices import DTYPES, resolve_device
from steerseg_ros.frame import Frame
from steerseg_ros.grounding import questions, vlm_methods
from steerseg_ros.grounding.attention import AttentionRollout, RolloutConfig, default_layer_start
from steerseg_ros.grounding.base import (Grounder, GroundingError, GroundingResult, ModelUnavailableError,
                                         PointPrompt, clean_command)
from steerseg_ros.grounding.soft_prompts import POSITIONS, SoftPrompts, insert_soft_tokens
from steerseg_ros.grounding.vlm_inputs import (FAMILIES, SOFT_TOKEN, PromptBatch, VisualInput, encode_images,
                                               encode_prompt, encode_video, frame_size, load_processor,
                                               resize_rgb, video_size)
from steerseg_ros.grounding.prompts import points_in_cell_order
from steerseg_ros.grounding.sam3 import Sam3GrounderConfig, Sam3Instances, instance_points, noun_phrase

log = logging.getLogger("steerseg_ros.grounding.vlm")

MODES = ("decaf", "steerseg")
IN_VIEW_CHECKS = ("none", "question", "attention")
# A generated text whose first word is complete: letters followed by something else.
_WORD_ENDED = re.compile(r"^[^A-Za-z]*[A-Za-z][A-Za-z\-]*[^A-Za-z\-]")


@dataclass
class VLMGrounderConfig:
    """Configuration of the vision-language grounder (one ROS parameter `grounder.<field>` each)."""

    model: str = field(default="Qwen/Qwen2.5-VL-3B-Instruct", metadata={
        "help": "Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint: a hub id (from the local cache, or "
                "downloaded) or a local folder"})
    mode: str = field(default="decaf", metadata={
        "help": "decaf: training-free attention fusion with a background pass; steerseg: soft "
                "prompts and chain-of-thought attributes, no background pass"})
    dtype: str = field(default="auto", metadata={
        "help": "weights dtype: auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16, float32"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda, cuda:N"})
    autocast: str = field(default="none", metadata={
        "help": "mixed precision for a grounding (torch.autocast): none, bfloat16 or float16; for float32 "
                "weights (with bfloat16 weights, dtype already gives the speed)"})
    attn_implementation: str = field(default="sdpa", metadata={
        "help": "transformers attention implementation for the passes that are not captured (sdpa, eager)"})
    local_files_only: bool = field(default=False, metadata={
        "help": "never try to download: fail at once when the weights are not on disk"})
    layer_start: int = field(default=0, metadata={
        "help": "first decoder layer of the attention rollout (0-based); 0: half the depth "
                "(14 of 28, 18 of 36)"})
    residual: float = field(default=0.5, metadata={"help": "rollout residual weight: A' = (1-r) A + r I"})
    head_weighting: str = field(default="vmax", metadata={
        "help": "vmax (heads weighted by their attention to visual tokens) or mean"})
    rollout_block_rows: int = field(default=256, metadata={
        "help": "query rows per block when the rollout rebuilds a layer's attention"})
    video_tokens_per_pair: int = field(default=400, metadata={
        "help": "token budget of the keyframe video per frame pair (DecAF: 400)"})
    frame_scale: int = field(default=2, metadata={
        "help": "per-frame images at this multiple of the video grid in each dimension (DecAF: 2)"})
    frames_per_batch: int = field(default=4, metadata={"help": "frame images per forward pass"})
    video_fps: float = field(default=2.0, metadata={
        "help": "frame rate the keyframe video is presented at (Qwen2.5-VL temporal positions, "
                "Qwen3-VL timestamps)"})
    max_keyframes: int = field(default=32, metadata={
        "help": "at most this many keyframes per grounding (more are subsampled uniformly)"})
    answer_tokens: int = field(default=128, metadata={
        "help": "most tokens decoded for an answer (DecAF: 128, for the object answers and the "
                "category choice, which are used whole; SteerSeg's one-word answer stops at the end "
                "of its first word)"})
    threshold: float = field(default=0.8, metadata={"help": "fused map value from which a cell becomes a point"})
    max_points: int = field(default=0, metadata={
        "help": "0 (DecAF): every cell at or above threshold is a point. N > 0: only the N highest "
                "(an option for the streaming node, where each point costs tracker time; weaker "
                "keyframes then lose their candidates first). Points come keyframe by keyframe, "
                "each in row-major order, either way"})
    point_min_separation: int = field(default=0, metadata={
        "help": "drop a point within this many cells of a better one on the same keyframe (0: keep all)"})
    video_kernel: int = field(default=3, metadata={
        "help": "Gaussian kernel size for video maps, zero beyond the border (DecAF: 3; both modes)"})
    frame_kernel: int = field(default=7, metadata={
        "help": "Gaussian kernel size for frame maps, zero beyond the border (DecAF: 7; both modes)"})
    gaussian_sigma: float = field(default=1.0, metadata={"help": "Gaussian sigma in token cells (DecAF: 1; both modes)"})
    soft_prompt_file: str = field(default="", metadata={
        "help": "SteerSeg soft prompts (.safetensors with 'video' and 'frame'); empty: no steering"})
    soft_tokens: int = field(default=64, metadata={
        "help": "soft tokens per set for newly initialised prompts (a loaded file brings its own count)"})
    soft_position: str = field(default="before_question", metadata={
        "help": "where new soft tokens go: before_question, after_question, before_visual (a loaded "
                "file keeps the position it was trained at)"})
    soft_prompt_strict: bool = field(default=True, metadata={
        "help": "refuse soft prompts recorded for a differently named model"})
    cot: bool = field(default=True, metadata={
        "help": "SteerSeg mode: ask for the target's colour, position, motion and size first and "
                "add them to the grounding question"})
    cot_tokens: int = field(default=48, metadata={"help": "tokens decoded for the attributes answer"})
    in_view_check: str = field(default="none", metadata={
        "help": "whether the grounder says 'not in view' (then no track is made from its points): none "
                "(never: the map always points somewhere); question: ask the model in_view_question about "
                "the keyframe video and read P(yes) from its next-token logits (one extra prefill); "
                "attention (decaf mode only): the share of the object prompt's attention to the image "
                "that the background prompt does not explain (no extra model call)"})
    in_view_threshold: float = field(default=0.5, metadata={
        "help": "in view when the check's score (P(yes), or the attention share) is at or above this; "
                "calibrate it per model on frames with and without the object (README)"})
    sam3_candidates: str = field(default="", metadata={
        "help": "the hybrid: a SAM 3 checkpoint (hub id or folder, e.g. facebook/sam3) prompted with the class "
                "word on every keyframe; its instances become the candidate targets and the attention maps "
                "choose among them (selection's scoring), instead of point prompts segmented by the tracker. "
                "Empty: off (the default until it is measured with real weights)"})
    in_view_question: str = field(default=questions.VISIBILITY_QUESTION, metadata={
        "help": "the visibility question of in_view_check question; {expression} becomes the command "
                "(lower-cased, without its final '.' or '?')"})

    def validate(self) -> None:
        if not self.model.strip():
            raise ValueError("grounder model must name a checkpoint (hub id or folder)")
        if self.mode not in MODES:
            raise ValueError(f"grounder mode {self.mode!r}; expected one of {MODES}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}; expected auto or one of {sorted(DTYPES)}")
        if self.autocast not in ("none", "bfloat16", "float16"):
            raise ValueError(f"autocast {self.autocast!r}; expected none, bfloat16 or float16")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device {self.device!r}; expected auto, cpu, cuda or cuda:N")
        if self.attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
            raise ValueError(f"attn_implementation {self.attn_implementation!r}; expected sdpa, eager or "
                             f"flash_attention_2")
        if self.layer_start < 0:
            raise ValueError(f"layer_start must be >= 0 (0: default), got {self.layer_start}")
        if not 0.0 <= self.residual < 1.0:
            raise ValueError(f"residual must be in [0, 1), got {self.residual}")
        if self.head_weighting not in ("vmax", "mean"):
            raise ValueError(f"head_weighting {self.head_weighting!r}; expected vmax or mean")
        for name in ("rollout_block_rows", "video_tokens_per_pair", "frame_scale", "frames_per_batch",
                     "max_keyframes", "answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.video_fps <= 0:
            raise ValueError(f"video_fps must be > 0, got {self.video_fps}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.max_points < 0 or self.point_min_separation < 0:
            raise ValueError("max_points and point_min_separation must be >= 0")
        for name in ("video_kernel", "frame_kernel"):
            k = getattr(self, name)
            if k < 0 or (k > 1 and k % 2 == 0):
                raise ValueError(f"{name} must be 0, 1 or odd, got {k}")
        if self.gaussian_sigma <= 0:
            raise ValueError(f"gaussian_sigma must be > 0, got {self.gaussian_sigma}")
        if self.soft_tokens < 0 or self.cot_tokens < 1:
            raise ValueError("soft_tokens must be >= 0 and cot_tokens >= 1")
        if self.soft_position not in POSITIONS:
            raise ValueError(f"soft_position {self.soft_position!r}; expected one of {POSITIONS}")
        if self.in_view_check not in IN_VIEW_CHECKS:
            raise ValueError(f"in_view_check {self.in_view_check!r}; expected one of {IN_VIEW_CHECKS}")
        if self.in_view_check == "attention" and self.mode != "decaf":
            raise ValueError("in_view_check attention compares the object prompt with the background "
                             "prompt, which only mode decaf runs; use in_view_check question")
        if not 0.0 <= self.in_view_threshold <= 1.0:
            raise ValueError(f"in_view_threshold must be in [0, 1], got {self.in_view_threshold}")
        if "{expression}" not in self.in_view_question:
            raise ValueError("in_view_question must contain {expression}")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def _unavailable(model: str, reason: str, local: bool) -> ModelUnavailableError:
    if local:
        how = ("the folder must hold a transformers checkpoint (config.json, the weights, the tokenizer "
               "and preprocessor files): download one on a connected machine with "
               "`hf download <hub id> --local-dir <folder>` and copy the folder here")
    else:
        how = (f"download it on a connected machine with `hf download {model}` and copy the "
               f"Hugging Face cache (~/.cache/huggingface/hub) to this machine, or download it with "
               f"`--local-dir <folder>` and point grounder.model at that folder")
    return ModelUnavailableError(f"model {model!r} is not available: {reason}. To get it, {how}.")


def load_model(config: VLMGrounderConfig):
    """(model, processor, model_type) for `config.model`, on `config.device` in `config.dtype`.
    Raises ModelUnavailableError when the files are not on disk and cannot be downloaded."""
    import transformers
    from transformers import AutoConfig

    name = os.path.expanduser(config.model)
    looks_local = os.path.isabs(name) or name.startswith(".") or Path(name).exists()
    if looks_local and not Path(name).is_dir():
        raise _unavailable(config.model, "no such folder", True)
    try:
        model_config = AutoConfig.from_pretrained(name, local_files_only=config.local_files_only)
    except (OSError, ValueError) as exc:
        reason = "its files are not on this machine and it cannot be downloaded from here"
        if looks_local:
            reason = f"the folder has no usable config.json ({str(exc).splitlines()[0]})"
        raise _unavailable(config.model, reason, looks_local) from exc
    model_type = model_config.model_type
    if model_type not in FAMILIES:
        raise GroundingError(f"model {config.model!r} is a {model_type!r}; the grounder supports "
                             f"{', '.join(FAMILIES)} checkpoints")
    device = resolve_device(config.device, GroundingError)
    dtype = resolve_dtype(config.dtype, device)
    model_cls = getattr(transformers, model_config.architectures[0]) if model_config.architectures else None
    if model_cls is None or not model_cls.__name__.endswith("ForConditionalGeneration"):
        from steerseg_ros.grounding.vlm_inputs import model_class_for
        model_cls = model_class_for(model_type)
    try:
        model = model_cls.from_pretrained(name, dtype=dtype, attn_implementation=config.attn_implementation,
                                          local_files_only=config.local_files_only)
        processor = load_processor(name, model_type, local_files_only=config.local_files_only)
    except OSError as exc:
        raise _unavailable(config.model, f"its files could not be read or downloaded "
                                         f"({str(exc).splitlines()[0]})", looks_local) from exc
    model.to(device).eval()
    model.requires_grad_(False)
    return model, processor, model_type


class _Stages:
    """Wall time per named stage, accumulated (a stage may run several times). "rollout" (the
    rollout's last row, computed after each captured prefill) is also inside the prompt stages."""

    def __init__(self, device: torch.device):
        self.timings: dict[str, float] = {}
        self._sync = device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self._sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def answer_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """(yes ids, no ids): the ids of questions.YES_WORDS / NO_WORDS that the tokenizer holds as
    single tokens (a word it splits cannot be read from one next-token distribution)."""
    def single(words):
        ids = []
        for word in words:
            encoded = tokenizer.encode(word, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] not in ids:
                ids.append(int(encoded[0]))
        return ids
    return single(questions.YES_WORDS), single(questions.NO_WORDS)


def yes_probability(logits: torch.Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]) -> float:
    """P(yes) from one next-token logits vector (V,): the softmax over the yes and no tokens'
    logits only (in float32), summed over the yes tokens. The other tokens' mass is left out on
    purpose: a model sure of its answer but about to say "The" first would otherwise read as
    unsure."""
    chosen = logits.float()[list(yes_ids) + list(no_ids)]
    return float(torch.softmax(chosen, dim=0)[:len(yes_ids)].sum())


@dataclass
class Answer:
    """One prompt's outcome: the last rollout row per batch row (None when not captured) and the
    decoded answer per row (empty when nothing was decoded)."""

    rows: Optional[torch.Tensor]
    texts: list[str]
    batch: PromptBatch


class VLMGrounder(Grounder):
    """Grounding with a frozen Qwen-VL model's attention (DecAF) or steered attention (SteerSeg)."""

    def __init__(self, config: VLMGrounderConfig, model=None, processor=None):
        """Loads `config.model`; or, for tools that already hold one (benchmarks, the soft-prompt
        trainer), takes `model` and `processor` as they are."""
        config.validate()
        self.config = config
        if model is None:
            model, processor, model_type = load_model(config)
        else:
            if processor is None:
                raise ValueError("a processor must come with a model")
            model_type = model.config.model_type
        self.model, self.processor, self.model_type = model, processor, model_type
        self.name = config.mode
        self.device = next(model.parameters()).device
        text_config = model.config.get_text_config()
        self.num_layers = int(text_config.num_hidden_layers)
        self.hidden_size = int(text_config.hidden_size)
        self.layer_start = config.layer_start or default_layer_start(self.num_layers)
        if self.layer_start >= self.num_layers:
            raise ValueError(f"layer_start {self.layer_start} is past the model's {self.num_layers} layers")
        self.rollout = AttentionRollout(model, RolloutConfig(
            layer_start=self.layer_start, residual=config.residual, head_weighting=config.head_weighting,
            block_rows=config.rollout_block_rows))
        tokenizer = processor.tokenizer
        eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>"),
               tokenizer.convert_tokens_to_ids("<|im_end|>")}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        self._stop_ids = torch.tensor(sorted(i for i in eos if isinstance(i, int) and i >= 0), device=self.device)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(self._stop_ids[0])
        self.soft_prompts: Optional[SoftPrompts] = None
        if config.soft_prompt_file:
            self.soft_prompts = SoftPrompts.load(config.soft_prompt_file, model_id=config.model,
                                                 model_type=model_type, hidden_size=self.hidden_size,
                                                 strict=config.soft_prompt_strict)
        elif config.mode == "steerseg":
            log.warning("steerseg mode without soft_prompt_file: the attention is not steered "
                        "(chain-of-thought attributes only)")
        self._yes_ids, self._no_ids = answer_token_ids(tokenizer)
        if config.in_view_check == "question" and not (self._yes_ids and self._no_ids):
            raise ValueError(f"in_view_check question: the tokenizer of {config.model!r} has no single-token "
                             f"'yes' or 'no' answer to read; use in_view_check attention or none")
        vp = processor.video_processor
        self.factor = vp.patch_size * vp.merge_size
        self.frames_per_step = vp.temporal_patch_size
        self.sam3 = None
        if config.sam3_candidates.strip():
            self.sam3 = Sam3Instances(config.sam3_candidates.strip(), device=str(self.device),
                                      local_files_only=config.local_files_only)
        self._lock = threading.Lock()
        self._timer: Optional[_Stages] = None

    # ----------------------------------------------------------------------------------------
    # inputs and the vision tower

    def prepare_inputs(self, images: Sequence[np.ndarray]) -> tuple[VisualInput, list[VisualInput]]:
        """The keyframe video and the frame-image batches (pixels only)."""
        cfg = self.config
        height, width = images[-1].shape[:2]
        vhw = video_size(height, width, self.factor, cfg.video_tokens_per_pair)
        fhw = frame_size(vhw, cfg.frame_scale)
        video = encode_video(self.processor, images, vhw, cfg.video_fps)
        batches = [encode_images(self.processor, images[i:i + cfg.frames_per_batch], fhw)
                   for i in range(0, len(images), cfg.frames_per_batch)]
        return video, batches

    def encode_visual(self, visual: VisualInput) -> VisualInput:
        """Run the vision tower on `visual` once; every prompt about it reuses the output."""
        pixels = visual.pixel_values.to(self.device)
        grid = visual.grid_thw.to(self.device)
        if visual.kind == "video":
            visual.features = self.model.get_video_features(pixels, grid, return_dict=True)
        else:
            visual.features = self.model.get_image_features(pixels, grid, return_dict=True)
        return visual

    # ----------------------------------------------------------------------------------------
    # one prompt: prefill (attention captured), then greedy decoding as far as it is used

    def content(self, visual: Optional[VisualInput], head: str, question: str = "",
                soft_slot: bool = False) -> list[dict]:
        """Chat content: the visual item, then `head` and `question`; with soft_slot the soft
        token marker at the configured position."""
        mark = SOFT_TOKEN if soft_slot else ""
        position = self.soft_prompts.position if (soft_slot and self.soft_prompts) else self.config.soft_position
        sep = " " if head and question and not head.endswith("\n") else ""
        if position == "before_question":
            text = f"{head}{sep}{mark}{question}"
        elif position == "after_question":
            text = f"{head}{sep}{question}{mark}"
        else:
            text = f"{head}{sep}{question}"
        items = []
        if visual is not None:
            if position == "before_visual" and mark:
                items.append({"type": "text", "text": mark})
            items.append({"type": visual.kind})
        elif position == "before_visual":
            text = mark + text
        items.append({"type": "text", "text": text})
        return items

    def position_ids(self, batch: PromptBatch) -> torch.Tensor:
        """(3, B, L) M-RoPE positions for the whole sequence, soft slots counted as text, from the
        model's own get_rope_index. Always passed explicitly: without them the model would reuse
        a rope_deltas cached by an earlier call or miscount the soft tokens."""
        ids = batch.input_ids.to(self.device)
        b, length = ids.shape
        visual = batch.visual
        if visual is None:
            return torch.arange(length, device=self.device).view(1, 1, -1).expand(3, b, -1)
        grids = {"image_grid_thw": None, "video_grid_thw": None}
        grids[f"{visual.kind}_grid_thw"] = visual.grid_thw.to(self.device)
        extra = {k: v.to(self.device) for k, v in visual.extra.items()}
        positions, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=batch.mm_token_type_ids.to(self.device), attention_mask=None, **grids, **extra)
        return positions

    def input_embeds(self, batch: PromptBatch, soft: Optional[torch.Tensor]) -> torch.Tensor:
        embeds = self.model.get_input_embeddings()(batch.input_ids.to(self.device))
        if batch.soft_count:
            if soft is None or soft.shape[0] != batch.soft_count:
                raise ValueError(f"prompt has {batch.soft_count} soft slots, got "
                                 f"{None if soft is None else soft.shape[0]} soft vectors")
            embeds = insert_soft_tokens(embeds, batch.soft_start, soft)
        return embeds

    def forward(self, batch: PromptBatch, soft: Optional[torch.Tensor] = None, capture: bool = False,
                use_cache: bool = False):
        """The prefill of `batch`: (model output, last rollout row (B, L) or None, position ids).
        The visual tokens' embeddings come from the cached vision tower output through the model's
        own `mm_encoder_outputs` argument (Qwen3-VL also feeds them to its deepstack layers)."""
        embeds = self.input_embeds(batch, soft)
        positions = self.position_ids(batch)
        kwargs = {}
        if batch.visual is not None:
            if batch.visual.features is None:
                self.encode_visual(batch.visual)
            kwargs["mm_encoder_outputs"] = {batch.visual.kind: batch.visual.features}
        context = self.rollout.capture(batch.visual_mask.to(self.device)) if capture else contextlib.nullcontext()
        with context:
            out = self.model(inputs_embeds=embeds, position_ids=positions, use_cache=use_cache,
                             logits_to_keep=1, **kwargs)
        row = None
        if capture:
            with self._timer("rollout") if self._timer is not None else contextlib.nullcontext():
                row = self.rollout.last_row()
        return out, row, positions

    def decode(self, out, positions: torch.Tensor, max_new_tokens: int, one_word: bool = False) -> list[str]:
        """Greedy continuation of a prefill `out` (made with use_cache) for up to `max_new_tokens`
        tokens, stopping early when every row has ended; with `one_word`, a row also ends once its
        first word is complete (only that word is used)."""
        b = positions.shape[1]
        cache = out.past_key_values
        next_pos = positions.amax(dim=(0, 2)) + 1
        logits = out.logits[:, -1]
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        tokens = []
        embed = self.model.get_input_embeddings()
        for step in range(max_new_tokens):
            token = torch.where(done, torch.full_like(done, self._pad_id, dtype=torch.long), logits.argmax(-1))
            tokens.append(token)
            done |= torch.isin(token, self._stop_ids)
            if one_word:
                texts = self.processor.tokenizer.batch_decode(torch.stack(tokens, dim=1).cpu(),
                                                              skip_special_tokens=True)
                done |= torch.tensor([bool(_WORD_ENDED.match(t)) for t in texts], device=self.device)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            step_pos = (next_pos + step).view(1, b, 1).expand(3, b, 1)
            out = self.model(inputs_embeds=embed(token[:, None]), position_ids=step_pos, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
            cache, logits = out.past_key_values, out.logits[:, -1]
        ids = torch.stack(tokens, dim=1).cpu()
        texts = self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return [t.strip() for t in texts]

    def ask(self, visual: Optional[VisualInput], content: list[dict], soft: Optional[torch.Tensor] = None,
            capture: bool = False, decode_tokens: int = 0, one_word: bool = False) -> Answer:
        """One prompt over `visual` (a video, a batch of images, or nothing): the prefill, with the
        attention rollout when `capture`, then up to `decode_tokens` greedy tokens (0: none), for
        a `one_word` answer only until its first word is complete."""
        batch = encode_prompt(self.processor, content, visual, soft_count=0 if soft is None else soft.shape[0])
        out, row, positions = self.forward(batch, soft, capture=capture, use_cache=decode_tokens > 0)
        texts = (self.decode(out, positions, decode_tokens, one_word) if decode_tokens > 0
                 else [""] * batch.shape[0])
        del out
        return Answer(row, texts, batch)

    @staticmethod
    def token_maps(rows: torch.Tensor, batch: PromptBatch) -> list[torch.Tensor]:
        """Rollout rows (B, L) at each row's visual tokens -> one (t, h, w) tensor per item."""
        grids = batch.visual.grids
        mask = batch.visual_mask.to(rows.device)
        return [rows[b][mask[b]].reshape(grids[b].t, grids[b].h, grids[b].w) for b in range(rows.shape[0])]

    def rollout_maps(self, visual: VisualInput, content: list[dict],
                     soft: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """The attention rollout of one prompt over `visual` as (t, h, w) maps, one per item,
        differentiable in `soft` when gradients are enabled and the rollout keeps them (the
        soft-prompt trainer's forward pass)."""
        batch = encode_prompt(self.processor, content, visual, soft_count=0 if soft is None else soft.shape[0])
        _, rows, _ = self.forward(batch, soft, capture=True)
        return self.token_maps(rows, batch)

    @classmethod
    def volumes(cls, answer: Answer) -> list[np.ndarray]:
        """The captured rollout of each batch row as (t, h, w) float32 arrays."""
        return [m.detach().float().cpu().numpy() for m in cls.token_maps(answer.rows, answer.batch)]

    def in_view_probability(self, visual: VisualInput, expression: str) -> float:
        """P(yes) for the visibility question about `visual` (the keyframe video): one prefill,
        no attention capture, no decoding; the next-token distribution restricted to the
        tokenizer's yes and no tokens, the yes share of it."""
        content = self.content(visual, questions.visibility_text(expression, self.config.in_view_question))
        batch = encode_prompt(self.processor, content, visual)
        out, _, _ = self.forward(batch)
        return yes_probability(out.logits[0, -1], self._yes_ids, self._no_ids)

    # ----------------------------------------------------------------------------------------
    # the two methods

    def ground(self, keyframes: Sequence[Frame], command: str) -> GroundingResult:
        if self.model is None:
            raise GroundingError("the grounder was closed")
        precision = contextlib.nullcontext() if self.config.autocast == "none" else \
            torch.autocast(device_type=self.device.type, dtype=DTYPES[self.config.autocast])
        with self._lock, torch.inference_mode(), precision:
            try:
                return self._ground(list(keyframes), command)
            except torch.OutOfMemoryError as exc:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise GroundingError(f"out of memory grounding {len(keyframes)} keyframes: lower "
                                     f"frames_per_batch, video_tokens_per_pair or the keyframe count") from exc
            except ValueError as exc:  # e.g. an image too elongated for the processor
                raise GroundingError(f"cannot ground on these keyframes: {exc}") from exc
            finally:
                self._timer = None

    def _ground(self, keyframes: list[Frame], command: str) -> GroundingResult:
        cfg = self.config
        if not keyframes:
            raise GroundingError("no keyframes to ground on")
        command = clean_command(command)
        if len(keyframes) > cfg.max_keyframes:
            # Uniform subsampling that keeps the newest frame.
            idx = np.unique(np.round(np.linspace(0, len(keyframes) - 1, cfg.max_keyframes)).astype(int))
            keyframes = [keyframes[i] for i in idx]
        stage = self._timer = _Stages(self.device)
        start = time.perf_counter()
        expression = questions.format_expression(command)
        with stage("inputs"):
            size = keyframes[-1].image.shape[:2]
            images = [resize_rgb(f.image, size) for f in keyframes]
            video, frame_batches = self.prepare_inputs(images)
        with stage("vision"):
            for visual in [video, *frame_batches]:
                self.encode_visual(visual)
        in_view_score = float("nan")
        if cfg.in_view_check == "question":
            with stage("in_view"):
                in_view_score = self.in_view_probability(video, expression)
        if cfg.mode == "decaf":
            maps, class_word, attributes, text = vlm_methods.decaf(self, expression, video, frame_batches,
                                                                   len(keyframes), stage)
        else:
            maps, class_word, attributes, text = vlm_methods.steerseg(self, expression, video, frame_batches,
                                                                      len(keyframes), stage)
        with stage("points"):
            points = self._points(maps.fused, keyframes)
        in_view = None
        if self.sam3 is not None:
            with stage("sam3"):
                points, presence, present = self._sam3_points(keyframes, class_word or command)
            text += f"\nSAM 3 candidates for {class_word or command!r}: {len(points)} (presence {presence:.3f})"
            if not present:
                in_view, in_view_score = False, presence
        if cfg.in_view_check != "none" and in_view is None:
            if cfg.in_view_check == "attention":
                in_view_score = maps.object_mass
            # A score that could not be computed (no attention mass at all) says nothing: in view
            # stays unknown and the points are used, as without the check.
            if np.isfinite(in_view_score):
                in_view = bool(in_view_score >= cfg.in_view_threshold)
            text += f"\nin view ({cfg.in_view_check}): {in_view_score:.3f}"
        stage.timings["total"] = time.perf_counter() - start
        result = GroundingResult(command=command, backend=self.name, keyframes=keyframes, maps=maps.fused,
                                 points=points, frame_maps=maps.frames, video_maps=maps.video,
                                 class_word=class_word, attributes=attributes, generated_text=text,
                                 timings=stage.timings, in_view=in_view, in_view_score=float(in_view_score))
        result.validate()
        return result

    def _sam3_points(self, keyframes: list[Frame], words: str) -> tuple[list[PointPrompt], float, bool]:
        """The hybrid's candidates: SAM 3's instances of the class word (its leading noun phrase)
        on each keyframe, as points carrying their masks; SAM 3's highest presence probability
        over the keyframes; and whether that reaches the sam3 grounder's default threshold
        (below it the concept is not in view)."""
        phrase = noun_phrase(words)
        found = [self.sam3(f.image, phrase) for f in keyframes]
        points = [p for k, i in enumerate(found) for p in instance_points(i, k, Sam3GrounderConfig.max_instances)]
        presence = max(i.presence for i in found)
        return points, presence, presence >= Sam3GrounderConfig.presence_threshold

    def _points(self, fused: np.ndarray, keyframes: list[Frame]) -> list[PointPrompt]:
        cfg = self.config
        return points_in_cell_order(fused, [(f.width, f.height) for f in keyframes], cfg.threshold,
                                    cfg.max_points, cfg.point_min_separation)

    def close(self) -> None:
        with self._lock:
            self.model = None
            self.rollout = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
