"""SteerSeg's soft prompts: two sets of learned input embeddings (one for the video input, one
for the frame input) that the grounder splices into the prompt before the question.

Owns `SoftPrompts` (the two parameter tensors and what they were trained for), their
safetensors file format (tensors "video" and "frame", metadata naming the model, its type and
hidden size), the checks that a file fits the loaded model, and `insert_soft_tokens`, which
puts them into a sequence of input embeddings so that gradients reach them (the soft-prompt
trainer of issue 5 optimises exactly these tensors through the grounder's forward pass).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from steerseg_ros.grounding.base import GroundingError

FORMAT = "steerseg-soft-prompts/1"
KINDS = ("video", "frame")
POSITIONS = ("before_question", "after_question", "before_visual")


class SoftPromptError(GroundingError):
    """A soft prompt file is missing, malformed, or made for another model."""


def model_name(model_id: str) -> str:
    """The comparable name of a model: a hub id's or a folder's last component, lower-cased, so
    'Qwen/Qwen2.5-VL-3B-Instruct' and '/models/Qwen2.5-VL-3B-Instruct' name the same model."""
    return Path(model_id.rstrip("/\\")).name.lower()


class SoftPrompts(nn.Module):
    """Soft prompt vectors for the video and the frame input, (N, hidden) each.

    model_id / model_type: what they were trained for. position: where they go in the prompt
    (one of POSITIONS).
    """

    def __init__(self, video: torch.Tensor, frame: torch.Tensor, model_id: str, model_type: str,
                 position: str = "before_question"):
        super().__init__()
        if video.ndim != 2 or frame.ndim != 2 or video.shape[1] != frame.shape[1]:
            raise SoftPromptError(f"soft prompts must be (N, hidden) with one hidden size; got video "
                                  f"{tuple(video.shape)}, frame {tuple(frame.shape)}")
        if position not in POSITIONS:
            raise SoftPromptError(f"soft prompt position {position!r}; expected one of {POSITIONS}")
        self.video = nn.Parameter(video.detach().clone().float())
        self.frame = nn.Parameter(frame.detach().clone().float())
        self.model_id = model_id
        self.model_type = model_type
        self.position = position

    @property
    def hidden_size(self) -> int:
        return int(self.video.shape[1])

    def count(self, kind: str) -> int:
        return int(self.for_kind(kind).shape[0])

    def for_kind(self, kind: str) -> torch.Tensor:
        if kind == "video":
            return self.video
        if kind in ("frame", "image"):
            return self.frame
        raise ValueError(f"soft prompt kind {kind!r}; expected 'video' or 'frame'")

    @classmethod
    def initialise(cls, embeddings: nn.Embedding, count: int, model_id: str, model_type: str,
                   position: str = "before_question", seed: int = 0,
                   token_ids: Optional[torch.Tensor] = None) -> "SoftPrompts":
        """New soft prompts of `count` tokens per set, started from rows of the model's token
        embedding table (prompt tuning's usual start: inside the distribution the model reads).
        token_ids: which rows (default: random rows drawn with `seed`)."""
        weight = embeddings.weight.detach()
        if token_ids is None:
            generator = torch.Generator().manual_seed(seed)
            token_ids = torch.randint(0, weight.shape[0], (2, count), generator=generator)
        else:
            token_ids = torch.as_tensor(token_ids).reshape(2, count)
        rows = weight[token_ids.to(weight.device)].float().cpu()
        return cls(rows[0], rows[1], model_id, model_type, position)

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tensors = {kind: self.for_kind(kind).detach().float().cpu().contiguous() for kind in KINDS}
        save_file(tensors, str(path), metadata={
            "format": FORMAT, "model": self.model_id, "model_type": self.model_type,
            "hidden_size": str(self.hidden_size), "position": self.position})

    @classmethod
    def load(cls, path: str | os.PathLike, model_id: Optional[str] = None, model_type: Optional[str] = None,
             hidden_size: Optional[int] = None, strict: bool = True) -> "SoftPrompts":
        """Read a file written by `save`, checking it against the loaded model: the hidden size
        and model type must match; the model name must match unless strict is False (a
        prompt trained on one checkpoint may be tried on a fine-tuned sibling)."""
        from safetensors import safe_open

        if not Path(path).is_file():
            raise SoftPromptError(f"soft prompt file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise SoftPromptError(f"soft prompt file {path} cannot be read: {exc}") from exc
        if meta.get("format") != FORMAT or set(tensors) != set(KINDS):
            raise SoftPromptError(f"{path} is not a soft prompt file (format {meta.get('format')!r}, "
                                  f"tensors {sorted(tensors)}; expected {FORMAT!r} with {list(KINDS)})")
        prompts = cls(tensors["video"], tensors["frame"], meta.get("model", ""), meta.get("model_type", ""),
                      meta.get("position", "before_question"))
        if hidden_size is not None and prompts.hidden_size != hidden_size:
            raise SoftPromptError(
                f"soft prompts in {path} have hidden size {prompts.hidden_size} (trained for "
                f"{prompts.model_id!r}); the loaded model's is {hidden_size}")
        if model_type is not None and prompts.model_type and prompts.model_type != model_type:
            raise SoftPromptError(f"soft prompts in {path} were trained for a {prompts.model_type} model "
                                  f"({prompts.model_id!r}); the loaded model is a {model_type}")
        if strict and model_id is not None and model_name(prompts.model_id) != model_name(model_id):
            raise SoftPromptError(
                f"soft prompts in {path} were trained for {prompts.model_id!r}, not {model_id!r}; "
                f"set soft_prompt_strict to false to use them anyway")
        return prompts


def insert_soft_tokens(embeds: torch.Tensor, start: int, soft: torch.Tensor) -> torch.Tensor:
    """`embeds` (B, L, D) with rows start..start+N replaced by the soft vectors `soft` (N, D) in
    every batch row. Built by concatenation, so the result is differentiable in `soft`."""
    n = soft.shape[0]
    if start < 0 or start + n > embeds.shape[1]:
        raise ValueError(f"soft slot {start}..{start + n} outside a sequence of {embeds.shape[1]}")
    soft = soft.to(device=embeds.device, dtype=embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1)
    return torch.cat([embeds[:, :start], soft, embeds[:, start + n:]], dim=1)
