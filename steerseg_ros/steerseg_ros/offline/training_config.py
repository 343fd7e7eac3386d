"""The options of `steerseg-train-prompts`: `TrainConfig` (every option, with its help text and
its checks) and `TrainingError`, the error every part of the training raises for bad options,
datasets or checkpoints."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

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
