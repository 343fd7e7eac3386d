"""Training SteerSeg's two soft-prompt sets (video and frame) on a referring video dataset, with
the vision-language model frozen.

Owns `TrainConfig` (every option, with its help text), the small reader of the Ref-YouTube-VOS
train split read with the evaluation's reader (`read_dataset`), clip sampling, the ground truth pooled to
the token grids, the loss, the validation metrics, and `PromptTrainer`: the training loop with
resumable checkpoints, a JSONL log and a progress bar. The output is the soft-prompt file the
grounder loads (`soft_prompts.SoftPrompts.save`); the training checkpoint is a separate file.

One training clip is one referring expression with K keyframes sampled from its video. The
grounder's own code builds the inputs (`VLMGrounder.prepare_inputs`: one video item and the
per-frame images at twice its grid), runs the vision tower (under no_grad: it is frozen and its
output does not depend on the prompts), and computes the attention rollout of SteerSeg's
grounding prompt with the soft tokens spliced in (`VLMGrounder.rollout_maps`), differentiable in
the soft vectors only.

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
Validation metrics, on the raw (unnormalised) rollout maps of held-out clips with fixed,
uniformly spaced keyframes: attention mass inside the mask (sum over cells of map x pooled mask
over the sum of the map; a uniform map scores the mask's area fraction, logged as `chance`) and
pointing accuracy (the map's highest cell is at least half inside the mask), for the video map
(per time step), the frame maps, and the fused map the grounder turns into point prompts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import cv2
import numpy as np

if TYPE_CHECKING:
    from steerseg_ros.offline.datasets import Sample

log = logging.getLogger("steerseg_ros.offline.training")

CHECKPOINT_FORMAT = "steerseg-train-checkpoint/1"
AMP_MODES = ("auto", "off", "bf16")
CHECKPOINTING_MODES = ("auto", "on", "off")


class TrainingError(ValueError):
    """The options, the dataset or a checkpoint cannot be used; the message says why."""


@dataclass
class TrainConfig:
    """Options of `steerseg-train-prompts` (one command-line flag each)."""

    model: str = field(default="", metadata={
        "help": "Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint, as the grounder's `model`: a hub id or "
                "a local folder"})
    root: str = field(default="", metadata={
        "help": "dataset root in the Ref-YouTube-VOS layout (ROOT/meta_expressions/<split>/"
                "meta_expressions.json and ROOT/<split>/{JPEGImages,Annotations}), or a split folder "
                "holding meta_expressions.json, JPEGImages and Annotations itself"})
    out: str = field(default="", metadata={
        "help": "the soft-prompt file to write (.safetensors, what the grounder's soft_prompt_file loads)"})
    split: str = field(default="train", metadata={"help": "the dataset split to read (it must have masks)"})
    meta: str = field(default="", metadata={"help": "expression file to use instead of the split's own"})
    init: str = field(default="", metadata={
        "help": "start from this soft-prompt file instead of new prompts (its token count and "
                "position are kept)"})
    soft_tokens: int = field(default=64, metadata={"help": "soft tokens per set (video and frame)"})
    soft_position: str = field(default="before_question", metadata={
        "help": "where the soft tokens go: before_question, after_question, before_visual"})
    epochs: float = field(default=1.0, metadata={
        "help": "passes over the training expressions (SteerSeg suggests one); ignored when steps > 0"})
    steps: int = field(default=0, metadata={"help": "optimizer steps in all (0: from epochs)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on the soft vectors"})
    warmup_steps: int = field(default=0, metadata={
        "help": "linear warm-up steps, then cosine decay to zero at the last step"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: no clipping)"})
    batch: int = field(default=1, metadata={"help": "clips per optimizer step (gradients accumulated)"})
    keyframes: int = field(default=16, metadata={"help": "keyframes per clip (DecAF and SteerSeg: 16)"})
    video_tokens_per_pair: int = field(default=400, metadata={
        "help": "token budget of the keyframe video per frame pair, as the grounder's"})
    frame_scale: int = field(default=2, metadata={"help": "frame images at this multiple of the video grid"})
    frames_per_batch: int = field(default=4, metadata={"help": "frame images per forward pass"})
    layer_start: int = field(default=0, metadata={
        "help": "first decoder layer of the rollout (0: half the depth), as the grounder's"})
    cot: bool = field(default=False, metadata={
        "help": "ask the frozen model for the target's attributes first and put them in the question, "
                "as the grounder's cot option does (one extra generation per clip)"})
    cot_tokens: int = field(default=48, metadata={"help": "tokens decoded for the attributes (with cot)"})
    crop_scale: float = field(default=1.0, metadata={
        "help": "training clips are cropped at random, one crop per clip with its side between this "
                "fraction of the frame's and all of it (1: no cropping), so the prompts learn what the "
                "target looks like rather than where targets usually are"})
    bce_weight: float = field(default=1.0, metadata={"help": "weight of the BCE term"})
    dice_weight: float = field(default=1.0, metadata={"help": "weight of the Dice term"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda, cuda:N"})
    dtype: str = field(default="auto", metadata={
        "help": "weights dtype: auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16, float32; the "
                "soft prompts stay float32"})
    amp: str = field(default="auto", metadata={
        "help": "autocast: auto (bf16 on a CUDA device that supports it, off on CPU), bf16, off"})
    gradient_checkpointing: str = field(default="auto", metadata={
        "help": "recompute decoder layers in backward instead of storing them: auto (on for CUDA), on, off"})
    val_videos: str = field(default="", metadata={
        "help": "comma-separated videos held out of training for validation"})
    val_fraction: float = field(default=0.0, metadata={
        "help": "or: hold out this fraction of the videos (chosen with the seed) for validation"})
    val_every: int = field(default=100, metadata={
        "help": "validate every this many steps (and before the first and after the last; 0: only those)"})
    val_clips: int = field(default=0, metadata={"help": "validate on at most this many expressions (0: all)"})
    checkpoint: str = field(default="", metadata={
        "help": "training checkpoint (soft prompts, optimizer, schedule, step, RNG); default: OUT with "
                "the suffix .ckpt"})
    checkpoint_every: int = field(default=100, metadata={"help": "write the checkpoint every this many steps"})
    resume: bool = field(default=False, metadata={"help": "continue from the checkpoint"})
    log_file: str = field(default="", metadata={
        "help": "JSONL log of losses and validation metrics; default: OUT with the suffix .log.jsonl"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt initialisation, clip order and keyframes"})
    local_files_only: bool = field(default=False, metadata={"help": "never try to download the model"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> None:
        from steerseg_ros.grounding.soft_prompts import POSITIONS

        for name in ("model", "root", "out"):
            if not getattr(self, name).strip():
                raise TrainingError(f"{name} must be given")
        if not self.out.endswith(".safetensors"):
            raise TrainingError(f"out must be a .safetensors file (what the grounder loads), got {self.out!r}")
        if self.soft_tokens < 1:
            raise TrainingError(f"soft_tokens must be >= 1, got {self.soft_tokens}")
        if self.soft_position not in POSITIONS:
            raise TrainingError(f"soft_position {self.soft_position!r}; expected one of {POSITIONS}")
        if self.steps < 0 or (self.steps == 0 and not self.epochs > 0):
            raise TrainingError(f"give steps > 0 or epochs > 0 (got steps {self.steps}, epochs {self.epochs})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"lr must be a positive number, got {self.lr}")
        for name in ("weight_decay", "grad_clip", "bce_weight", "dice_weight"):
            if getattr(self, name) < 0:
                raise TrainingError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bce_weight == 0 and self.dice_weight == 0:
            raise TrainingError("bce_weight and dice_weight cannot both be 0")
        for name in ("batch", "keyframes", "video_tokens_per_pair", "frame_scale", "frames_per_batch",
                     "cot_tokens", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "layer_start", "val_every", "val_clips"):
            if getattr(self, name) < 0:
                raise TrainingError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.amp not in AMP_MODES:
            raise TrainingError(f"amp {self.amp!r}; expected one of {AMP_MODES}")
        if self.gradient_checkpointing not in CHECKPOINTING_MODES:
            raise TrainingError(f"gradient_checkpointing {self.gradient_checkpointing!r}; expected one of "
                                f"{CHECKPOINTING_MODES}")
        if not 0.1 <= self.crop_scale <= 1.0:
            raise TrainingError(f"crop_scale must be in [0.1, 1], got {self.crop_scale}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise TrainingError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_fraction and self.val_videos.strip():
            raise TrainingError("give val_videos or val_fraction, not both")

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint) if self.checkpoint else Path(self.out).with_suffix(".ckpt")

    @property
    def log_path(self) -> Path:
        return Path(self.log_file) if self.log_file else Path(self.out).with_suffix(".log.jsonl")


# ----------------------------------------------------------------------------------------------
# the dataset


def read_dataset(config: TrainConfig) -> list:
    """The expressions with ground truth of a Ref-YouTube-VOS-layout split, as the evaluation's
    reader gives them (`datasets.Sample`: frames and target masks read one at a time)."""
    from steerseg_ros.offline.datasets import DatasetError, RefYouTubeVOSDataset

    try:
        dataset = RefYouTubeVOSDataset(config.root, config.split, config.meta or None)
        if not dataset.has_ground_truth:
            raise TrainingError(f"{dataset.annotations} not found: training needs the masks of split "
                                f"{config.split!r} (Ref-YouTube-VOS publishes masks for train only)")
        samples = [s for s in dataset.samples() if s.has_ground_truth]
    except (DatasetError, OSError, ValueError, KeyError) as exc:
        if isinstance(exc, TrainingError):
            raise
        raise TrainingError(f"cannot read the dataset in {config.root}: {exc}") from exc
    if not samples:
        raise TrainingError(f"{dataset.meta_path} has no expression with an object id and masks")
    return samples


def split_videos(videos: Sequence[str], val_videos: Sequence[str], val_fraction: float,
                 seed: int) -> tuple[list[str], list[str]]:
    """(training videos, validation videos): the named ones, or a seeded fraction of them."""
    videos = sorted(videos)
    if val_videos:
        missing = sorted(set(val_videos) - set(videos))
        if missing:
            raise TrainingError(f"validation videos not in the dataset: {', '.join(missing)}")
        held = sorted(set(val_videos))
    elif val_fraction > 0:
        count = max(1, round(val_fraction * len(videos)))
        order = np.random.default_rng(seed).permutation(len(videos))
        held = sorted(videos[i] for i in order[:count])
    else:
        held = []
    train = [v for v in videos if v not in held]
    if not train:
        raise TrainingError("every video is held out for validation: nothing is left to train on")
    return train, held


# ----------------------------------------------------------------------------------------------
# targets, loss and metrics (torch is imported inside: the module's reader works without it)


def keyframe_indices(count: int, keyframes: int, rng: Optional[np.random.Generator] = None) -> list[int]:
    """Indices of the keyframes of a clip of `count` frames: uniformly spaced (DecAF's
    linspace) without `rng`; with it, one random frame from each of `keyframes` equal strata, so
    training sees the whole clip in varied frames. All frames when there are fewer."""
    if count <= keyframes:
        return list(range(count))
    if rng is None:
        return np.unique(np.round(np.linspace(0, count - 1, keyframes)).astype(int)).tolist()
    edges = np.linspace(0, count, keyframes + 1)
    picks = [int(rng.integers(int(np.ceil(a)), max(int(np.ceil(a)) + 1, int(np.ceil(b))))) for a, b in
             zip(edges[:-1], edges[1:])]
    return sorted(set(min(p, count - 1) for p in picks))


def random_crop(images: list, masks: list, min_scale: float, rng: np.random.Generator) -> tuple[list, list]:
    """One random crop for the whole clip (side between min_scale and 1 of the frame's, same
    aspect ratio, anywhere in the frame), so the prompts cannot learn where targets usually are
    in the frame instead of what they look like. The grounder resizes the crop back."""
    h, w = images[0].shape[:2]
    scale = float(rng.uniform(min_scale, 1.0))
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return [im[y:y + ch, x:x + cw] for im in images], [m[y:y + ch, x:x + cw] for m in masks]


def pool_mask(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """HxW bool -> (h, w) float32: the fraction of each token cell inside the mask. A cell of the
    grid covers the same fraction of the image whatever the model's resize, so pooling the mask
    at its own resolution is exact. INTER_AREA averages exactly over each cell's pixel area."""
    h, w = grid_hw
    pooled = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    # INTER_AREA's weights do not always sum to exactly 1 at fractional scales.
    return np.clip(pooled, 0.0, 1.0)


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


@dataclass
class ClipInputs:
    """One clip ready for the model: visual inputs (vision tower already run), the prompt, and
    the pooled targets: video (t, h, w), frames (K, hf, wf); frame_present: (K,) bool."""

    expression: "Sample"
    frame_names: list[str]
    video: object
    frame_batches: list
    head: str
    question: str
    video_target: np.ndarray
    frame_target: np.ndarray
    frame_present: np.ndarray
    generated: str = ""


@dataclass
class TrainResult:
    """What a run did: the final step, the per-step records, the validation records."""

    step: int
    total_steps: int
    history: list[dict]
    validations: list[dict]
    out: Optional[Path]
    interrupted: bool = False


class PromptTrainer:
    """Trains the video and frame soft prompts of a frozen Qwen-VL model.

        trainer = PromptTrainer(TrainConfig(model=..., root=..., out="steer.safetensors"))
        result = trainer.train()      # writes out (and the checkpoint and log beside it)

    `grounder` may be given (a VLMGrounder already holding the model); it is used as it is,
    with its own input sizes.
    """

    def __init__(self, config: TrainConfig, grounder=None, samples: Optional[Sequence["Sample"]] = None):
        import torch

        from steerseg_ros.grounding.soft_prompts import SoftPrompts
        from steerseg_ros.grounding.vlm import VLMGrounder, VLMGrounderConfig

        config.validate()
        self.config = config
        self.samples = list(samples) if samples is not None else read_dataset(config)
        held = [v.strip() for v in config.val_videos.split(",") if v.strip()]
        self.train_videos, self.val_videos = split_videos(sorted({e.video for e in self.samples}), held, config.val_fraction,
                                                          config.seed)
        self.train_items = [e for e in self.samples if e.video in self.train_videos]
        self.val_items = [e for e in self.samples if e.video in self.val_videos]
        if config.val_clips:
            self.val_items = self.val_items[:config.val_clips]

        if grounder is None:
            grounder = VLMGrounder(VLMGrounderConfig(
                model=config.model, mode="steerseg", dtype=config.dtype, device=config.device,
                local_files_only=config.local_files_only, layer_start=config.layer_start,
                video_tokens_per_pair=config.video_tokens_per_pair, frame_scale=config.frame_scale,
                frames_per_batch=config.frames_per_batch, max_keyframes=max(32, config.keyframes),
                soft_tokens=config.soft_tokens, soft_position=config.soft_position, cot=config.cot,
                cot_tokens=config.cot_tokens))
        self.grounder = grounder
        self.model = grounder.model
        self.device = grounder.device
        # Frozen: no parameter of the model is trained, and eval mode throughout, except the
        # decoder layers' training flag that activation checkpointing needs (see below).
        self.model.requires_grad_(False)
        self.model.eval()

        if config.init:
            prompts = SoftPrompts.load(config.init, model_id=config.model, model_type=grounder.model_type,
                                       hidden_size=grounder.hidden_size, strict=False)
        else:
            prompts = SoftPrompts.initialise(self.model.get_input_embeddings(), config.soft_tokens, config.model,
                                             grounder.model_type, config.soft_position, seed=config.seed)
        # The file records what the prompts are for: the model as the user names it.
        prompts.model_id = config.model
        self.prompts = prompts.to(self.device)
        grounder.config.soft_position = prompts.position

        self.amp_dtype = self._amp_dtype()
        self.checkpointing = self._enable_checkpointing()

        steps_per_epoch = math.ceil(len(self.train_items) / config.batch)
        self.total_steps = config.steps or max(1, math.ceil(config.epochs * steps_per_epoch))
        self.optimizer = torch.optim.AdamW(list(self.prompts.parameters()), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.step = 0
        self.epoch = 0
        self.position = 0  # clips of the current epoch already used
        self.rng = np.random.default_rng([config.seed, 1])
        self.history: list[dict] = []
        self.validations: list[dict] = []

    # ------------------------------------------------------------------------------------------
    # setup

    def _amp_dtype(self):
        import torch

        mode = self.config.amp
        if mode == "off":
            return None
        if mode == "auto":
            if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return None
        return torch.bfloat16

    def _enable_checkpointing(self) -> bool:
        """Activation checkpointing of the decoder layers with the model's own
        activation_checkpointing_enable (non-reentrant: the rollout reads each captured layer's
        queries and keys, which a reentrant checkpoint would detach). transformers checkpoints a
        layer only while it is in training mode, so the decoder layers get the training flag;
        their attention dropout must be 0 for that to change nothing (it is in every Qwen-VL
        config)."""
        from steerseg_ros.grounding.attention import decoder_layers

        mode = self.config.gradient_checkpointing
        enable = mode == "on" or (mode == "auto" and self.device.type == "cuda")
        if not enable:
            return False
        layers = decoder_layers(self.model)
        dropout = [float(getattr(layer.self_attn, "attention_dropout", 0.0) or 0.0) for layer in layers]
        if any(dropout):
            raise TrainingError("gradient checkpointing needs the decoder layers in training mode, which would "
                                f"turn on their attention dropout ({max(dropout)}); use gradient_checkpointing off")
        self.model.activation_checkpointing_enable({"use_reentrant": False})
        for layer in layers:
            layer.train()
        return True

    def _lr_factor(self, step: int) -> float:
        warmup = self.config.warmup_steps
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(1, self.total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))

    def _autocast(self):
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------------------------------
    # clips

    def prepare(self, expression: "Sample", keyframe_rng: Optional[np.random.Generator]) -> Optional[ClipInputs]:
        """The model inputs and targets of one clip, or None when the target is absent from every
        sampled keyframe."""
        import torch

        from steerseg_ros.grounding import questions
        from steerseg_ros.grounding.base import clean_command
        from steerseg_ros.grounding.vlm_inputs import resize_rgb

        cfg = self.config
        picks = keyframe_indices(len(expression), cfg.keyframes, keyframe_rng)
        names = [expression.frame_names[i] for i in picks]
        images, masks = [], []
        for i in picks:
            image = expression.image(i)
            mask = expression.target(i)
            if mask is None:
                mask = np.zeros(image.shape[:2], dtype=bool)
            elif mask.shape != image.shape[:2]:
                mask = cv2.resize(mask.astype(np.uint8), image.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
            images.append(image)
            masks.append(mask)
        if not any(m.any() for m in masks):
            return None
        size = images[-1].shape[:2]
        images = [resize_rgb(im, size) for im in images]
        masks = [m if m.shape == size else cv2.resize(m.astype(np.uint8), size[::-1],
                                                      interpolation=cv2.INTER_NEAREST) > 0 for m in masks]
        if keyframe_rng is not None and cfg.crop_scale < 1.0:
            images, masks = random_crop(images, masks, cfg.crop_scale, keyframe_rng)
        if not any(m.any() for m in masks):
            return None
        g = self.grounder
        video, frame_batches = g.prepare_inputs(images)
        with torch.no_grad(), self._autocast():
            for visual in [video, *frame_batches]:
                g.encode_visual(visual)

        grid = video.grids[0]
        per_frame = [pool_mask(m, (grid.h, grid.w)) for m in masks]
        video_target = np.stack([np.mean([per_frame[i] for i in grid.frames_of_step(s)], axis=0)
                                 for s in range(grid.t)])
        fgrid = frame_batches[0].grids[0]
        frame_target = np.stack([pool_mask(m, (fgrid.h, fgrid.w)) for m in masks])
        present = np.array([m.any() for m in masks])

        expression_text = questions.format_expression(clean_command(expression.command))
        attributes, generated = "", ""
        if cfg.cot:
            with torch.no_grad(), self._autocast():
                answer = g.ask(video, g.content(video, questions.attribute_text(expression_text)),
                               decode_tokens=cfg.cot_tokens)
            generated = answer.texts[0]
            attributes = "; ".join(questions.parse_attributes(generated))
        head, question = questions.steered_text_parts(expression_text, attributes)
        return ClipInputs(expression, names, video, frame_batches, head, question, video_target, frame_target,
                          present, generated)

    def maps(self, clip: ClipInputs):
        """(video map (t, h, w), frame maps (K, hf, wf)): the raw rollout maps of SteerSeg's
        grounding prompt with the soft prompts, differentiable in them when grad is enabled."""
        import torch

        g = self.grounder
        with self._autocast():
            video = g.rollout_maps(clip.video, g.content(clip.video, clip.head, clip.question, soft_slot=True),
                                   soft=self.prompts.video)[0]
            frames = torch.cat([m for fb in clip.frame_batches for m in
                                g.rollout_maps(fb, g.content(fb, clip.head, clip.question, soft_slot=True),
                                               soft=self.prompts.frame)])
        return video, frames

    def loss(self, clip: ClipInputs, video, frames) -> tuple:
        """(loss, parts): the mean over the two granularities of weighted BCE + Dice."""
        import torch

        cfg = self.config
        video_loss, video_bce, video_dice = bce_dice(normalise_maps(video, per_frame=False),
                                                     torch.from_numpy(clip.video_target), cfg.bce_weight,
                                                     cfg.dice_weight)
        present = torch.from_numpy(clip.frame_present).to(frames.device)
        frame_loss, frame_bce, frame_dice = bce_dice(normalise_maps(frames[present], per_frame=True),
                                                     torch.from_numpy(clip.frame_target[clip.frame_present]),
                                                     cfg.bce_weight, cfg.dice_weight, per_frame=True)
        total = 0.5 * (video_loss + frame_loss)
        parts = {"loss_video": float(video_loss.detach()), "loss_frame": float(frame_loss.detach()),
                 "bce": float(0.5 * (video_bce + frame_bce)), "dice": float(0.5 * (video_dice + frame_dice))}
        return total, parts

    # ------------------------------------------------------------------------------------------
    # validation

    def evaluate(self, items: Optional[Sequence["Sample"]] = None) -> dict:
        """Loss and metrics on `items` (default: the validation expressions) with uniformly spaced
        keyframes: mean over clips of the video, frame and fused maps' attention mass inside the
        mask, pointing accuracy and chance mass."""
        import torch

        from steerseg_ros.grounding import fusion

        items = self.val_items if items is None else list(items)
        sums: dict[str, list[float]] = {}
        clips = 0
        for expression in items:
            with torch.inference_mode():
                clip = self.prepare(expression, None)
                if clip is None:
                    continue
                video, frames = self.maps(clip)
                loss, _ = self.loss(clip, video, frames)
            video_np = video.float().cpu().numpy()
            frames_np = frames.float().cpu().numpy()
            k = len(clip.frame_names)
            fused = fusion.steered_maps(video_np, frames_np, k, self.grounder.frames_per_step).fused
            values = {"loss": float(loss)}
            for name, maps_, target in (("video", video_np, clip.video_target),
                                        ("frame", frames_np, clip.frame_target),
                                        ("fused", fused, clip.frame_target)):
                values.update({f"{name}_{k_}": v for k_, v in map_metrics(maps_, target).items()})
            for key, value in values.items():
                sums.setdefault(key, []).append(value)
            clips += 1
        result = {key: float(np.mean(v)) for key, v in sums.items()}
        result["clips"] = clips
        return result

    # ------------------------------------------------------------------------------------------
    # training

    def _next_item(self) -> "Sample":
        """The next training expression: a seeded permutation per epoch, so a resumed run draws
        exactly the clips the uninterrupted run would."""
        if self.position >= len(self.train_items):
            self.epoch += 1
            self.position = 0
        order = np.random.default_rng([self.config.seed, 2, self.epoch]).permutation(len(self.train_items))
        item = self.train_items[int(order[self.position])]
        self.position += 1
        return item

    def train_step(self) -> dict:
        """One optimizer step over `batch` clips (gradients accumulated); returns its record."""
        import torch

        cfg = self.config
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        parts_sum: dict[str, float] = {}
        losses, used, skipped = [], 0, 0
        # A clip whose target is absent from all its keyframes is replaced by the next one;
        # bounded, so a dataset of empty masks fails instead of looping.
        attempts = 0
        while used < cfg.batch:
            attempts += 1
            if attempts > cfg.batch + 10 * max(1, len(self.train_items)):
                raise TrainingError("no clip with the target visible on its keyframes: are the masks' object "
                                    "ids those of meta_expressions.json?")
            clip = self.prepare(self._next_item(), self.rng)
            if clip is None:
                skipped += 1
                continue
            video, frames = self.maps(clip)
            loss, parts = self.loss(clip, video, frames)
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite loss on {clip.expression.video} ({clip.expression.command!r}) at "
                                    f"step {self.step + 1}")
            (loss / cfg.batch).backward()
            losses.append(float(loss.detach()))
            for key, value in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + value / cfg.batch
            used += 1
        grad_norm = torch.nn.utils.clip_grad_norm_(
            list(self.prompts.parameters()), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        # The schedule is a function of the step alone, so a resumed run needs no scheduler state.
        lr = cfg.lr * self._lr_factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step += 1
        record = {"step": self.step, "epoch": self.epoch, "loss": float(np.mean(losses)), **parts_sum,
                  "grad_norm": float(grad_norm), "lr": lr, "skipped": skipped,
                  "seconds": time.perf_counter() - start}
        return record

    def train(self, on_step: Optional[Callable[[dict], None]] = None) -> TrainResult:
        """Train until the last step, validating and checkpointing as configured, and write the
        soft-prompt file. Resumes from the checkpoint when config.resume. A KeyboardInterrupt
        (Ctrl-C, or raised by `on_step`) writes the checkpoint and ends the run without the
        soft-prompt file; the result says it was interrupted."""
        from tqdm.auto import tqdm

        cfg = self.config
        ckpt = cfg.checkpoint_path
        if cfg.resume:
            if not ckpt.is_file():
                raise TrainingError(f"resume asked for, but there is no checkpoint at {ckpt}")
            self.load_checkpoint(ckpt)
        elif ckpt.exists():
            raise TrainingError(f"a training checkpoint exists at {ckpt}: pass resume to continue it, or remove it")
        log_file = cfg.log_path
        log_file.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if cfg.resume else "w"
        interrupted = False
        with open(log_file, mode, encoding="utf-8") as log_out, \
                tqdm(total=self.total_steps, initial=self.step, disable=not cfg.progress, desc="soft prompts",
                     unit="step", dynamic_ncols=True) as bar:
            def write(record: dict) -> None:
                log_out.write(json.dumps(record) + "\n")
                log_out.flush()

            try:
                if self.step == 0 and self.val_items:
                    self._validate(write, bar)
                while self.step < self.total_steps:
                    record = self.train_step()
                    self.history.append(record)
                    write({"kind": "train", **record})
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                    last = self.step == self.total_steps
                    if self.val_items and (last or (cfg.val_every and self.step % cfg.val_every == 0)):
                        self._validate(write, bar)
                    if last or self.step % cfg.checkpoint_every == 0:
                        self.save_checkpoint(ckpt)
                    if on_step is not None:
                        on_step(record)
            except KeyboardInterrupt:
                interrupted = True
                self.save_checkpoint(ckpt)
                write({"kind": "interrupted", "step": self.step})
                log.warning("interrupted at step %d: checkpoint written to %s (resume to continue)", self.step, ckpt)
        out = None
        if not interrupted:
            out = Path(cfg.out)
            self.prompts.save(out)
        return TrainResult(self.step, self.total_steps, self.history, self.validations, out, interrupted)

    def _validate(self, write, bar) -> None:
        record = {"step": self.step, **self.evaluate()}
        self.validations.append(record)
        write({"kind": "validation", **record})
        summary = ", ".join(f"{k} {record[k]:.3f}" for k in ("loss", "video_mass", "frame_mass", "fused_pointing")
                            if k in record)
        bar.write(f"validation at step {self.step}: {summary}")

    # ------------------------------------------------------------------------------------------
    # checkpoints

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Everything a resumed run needs, written atomically (a crash mid-write keeps the old one)."""
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": dataclasses.asdict(self.config),
            "model": self.config.model, "model_type": self.grounder.model_type,
            "hidden_size": self.grounder.hidden_size, "position": self.prompts.position,
            "video": self.prompts.video.detach().cpu(), "frame": self.prompts.frame.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step, "epoch": self.epoch, "data_position": self.position,
            "total_steps": self.total_steps, "train_videos": self.train_videos,
            "numpy_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "validations": self.validations,
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a damaged or foreign file
            raise TrainingError(f"cannot read training checkpoint {path}: {exc}") from exc
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{path} is not a training checkpoint of this trainer")
        mismatches = [f"{name}: checkpoint {was!r}, now {now!r}" for name, was, now in (
            ("model type", state["model_type"], self.grounder.model_type),
            ("hidden size", state["hidden_size"], self.grounder.hidden_size),
            ("soft tokens", int(state["video"].shape[0]), self.prompts.count("video")),
            ("training videos", state["train_videos"], self.train_videos)) if was != now]
        if mismatches:
            raise TrainingError(f"checkpoint {path} does not fit this run: " + "; ".join(mismatches))
        with torch.no_grad():
            self.prompts.video.copy_(state["video"])
            self.prompts.frame.copy_(state["frame"])
        self.prompts.position = state["position"]
        self.grounder.config.soft_position = state["position"]
        self.optimizer.load_state_dict(state["optimizer"])
        if not self.config.steps:
            self.total_steps = state["total_steps"]
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["data_position"]
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.validations = list(state.get("validations", []))
        log.info("resumed from %s at step %d of %d", path, self.step, self.total_steps)
