"""Training SteerSeg's two soft-prompt sets (video and frame) on a referring video dataset, with
the vision-language model frozen.

Owns `PromptTrainer`: the training loop with resumable checkpoints, a JSONL log and a progress
bar, and the forward step of a clip. The output is the soft-prompt file the grounder loads
(`soft_prompts.SoftPrompts.save`); the training checkpoint is a separate file. Its parts live
beside it: training_config (`TrainConfig`, every option, and `TrainingError`), training_data
(the dataset, clip sampling and the pooled ground truth), training_step (the loss, the
validation metrics and the precision settings) and training_checkpoint.

One training clip is one referring expression with K keyframes sampled from its video. The
grounder's own code builds the inputs (`VLMGrounder.prepare_inputs`: one video item and the
per-frame images at twice its grid), runs the vision tower (under no_grad: it is frozen and its
output does not depend on the prompts), and computes the attention rollout of SteerSeg's
grounding prompt with the soft tokens spliced in (`VLMGrounder.rollout_maps`), differentiable in
the soft vectors only. The loss is BCE + Dice against the mask pooled to the token grid
(training_step). Validation runs held-out clips with fixed, uniformly spaced keyframes and reports
the attention mass inside the mask and the pointing accuracy for the video map (per time step),
the frame maps, and the fused map the grounder turns into point prompts.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from steerseg_ros.offline import training_checkpoint
from steerseg_ros.offline.training_config import TrainConfig, TrainingError
from steerseg_ros.offline.training_data import ClipInputs, prepare_clip, read_dataset, split_videos
from steerseg_ros.offline.training_step import (amp_dtype, bce_dice, enable_gradient_checkpointing, map_metrics,
                                                normalise_maps)

if TYPE_CHECKING:
    from steerseg_ros.offline.datasets import Sample

log = logging.getLogger("steerseg_ros.offline.training")

__all__ = ["PromptTrainer", "TrainConfig", "TrainResult", "TrainingError"]


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

        self.amp_dtype = amp_dtype(config.amp, self.device)
        self.checkpointing = enable_gradient_checkpointing(self.model, config.gradient_checkpointing, self.device)

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
        sampled keyframe (training_data.prepare_clip)."""
        return prepare_clip(self.grounder, self.config, expression, keyframe_rng, self._autocast)

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
        training_checkpoint.save_checkpoint(self, path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        training_checkpoint.load_checkpoint(self, path)
