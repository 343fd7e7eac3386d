"""The training checkpoint of the soft-prompt trainer (offline/training.py): everything a resumed
run needs to continue exactly as the uninterrupted run would, in a file apart from the soft-prompt
file the grounder loads.

torch is imported inside: the module's reader works without it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from steerseg_ros.offline.training_config import TrainingError

# The trainer's logger: a resumed run reports itself under it.
log = logging.getLogger("steerseg_ros.offline.training")

CHECKPOINT_FORMAT = "steerseg-train-checkpoint/1"


def save_checkpoint(trainer, path: str | os.PathLike) -> None:
    """Everything a resumed run of `trainer` (a PromptTrainer) needs, written atomically (a crash
    mid-write keeps the old one)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(trainer.config),
        "model": trainer.config.model, "model_type": trainer.grounder.model_type,
        "hidden_size": trainer.grounder.hidden_size, "position": trainer.prompts.position,
        "video": trainer.prompts.video.detach().cpu(), "frame": trainer.prompts.frame.detach().cpu(),
        "optimizer": trainer.optimizer.state_dict(),
        "step": trainer.step, "epoch": trainer.epoch, "data_position": trainer.position,
        "total_steps": trainer.total_steps, "train_videos": trainer.train_videos,
        "numpy_rng": trainer.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "validations": trainer.validations,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(trainer, path: str | os.PathLike) -> None:
    """Put `trainer` (a PromptTrainer) where the checkpoint at `path` left its run: prompts,
    optimizer, step, data position and random generators; refused when it is another run's."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise TrainingError(f"cannot read training checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a training checkpoint of this trainer")
    mismatches = [f"{name}: checkpoint {was!r}, now {now!r}" for name, was, now in (
        ("model type", state["model_type"], trainer.grounder.model_type),
        ("hidden size", state["hidden_size"], trainer.grounder.hidden_size),
        ("soft tokens", int(state["video"].shape[0]), trainer.prompts.count("video")),
        ("training videos", state["train_videos"], trainer.train_videos)) if was != now]
    if mismatches:
        raise TrainingError(f"checkpoint {path} does not fit this run: " + "; ".join(mismatches))
    with torch.no_grad():
        trainer.prompts.video.copy_(state["video"])
        trainer.prompts.frame.copy_(state["frame"])
    trainer.prompts.position = state["position"]
    trainer.grounder.config.soft_position = state["position"]
    trainer.optimizer.load_state_dict(state["optimizer"])
    if not trainer.config.steps:
        trainer.total_steps = state["total_steps"]
    trainer.step, trainer.epoch, trainer.position = state["step"], state["epoch"], state["data_position"]
    trainer.rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    trainer.validations = list(state.get("validations", []))
    log.info("resumed from %s at step %d of %d", path, trainer.step, trainer.total_steps)
