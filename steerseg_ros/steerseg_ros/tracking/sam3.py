"""SAM 3 tracking backend: transformers' Sam3TrackerVideoModel through the SAM2 backend's code.

Owns `Sam3TrackerConfig`, `Sam3Tracker` and how SAM 3 tracker checkpoints are loaded (and what
the error says when the gated weights are missing). Everything else, the per-object sessions,
batched live steps, catch-up, bounded memory (pruning), the feature cache and the visibility
output (a frame the occlusion head calls not visible gives an empty mask scored 0), is
tracking/sam2.py's: transformers 5.23.0's Sam3TrackerVideoModel is SAM2's video model with
SAM 3's vision encoder (a ViT with an FPN neck whose lowest level the tracker drops), and its
inference session, memory bank and mask decoder are SAM2's, attribute for attribute. What
differs here:
- loading: `Sam3TrackerVideoModel.from_pretrained`, which also reads the tracker out of a full
  SAM 3 checkpoint (facebook/sam3 holds detector and tracker; the detector's weights are
  skipped);
- normalisation: SAM 3's processors resize to S x S and normalise with mean and std 0.5 (SAM2's
  use ImageNet's); a checkpoint's own preprocessor_config.json still wins. The processors need
  torchvision, so pre-processing is done by hand as for SAM2 (sam2_inputs);
- the session class, Sam3TrackerVideoInferenceSession, built with a torch dtype (its default,
  the string "float32", breaks add_new_frame).
Mask prompts take their object pointer from a single-mask decoder output, as Meta's SAM 3
tracker does (Sam3TrackerBase._use_mask_as_output calls _forward_sam_heads without
multimask_output) and as the SAM2 backend corrects transformers' SAM2 (tracking/sam2_reference).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import Sam3TrackerVideoInferenceSession, Sam3TrackerVideoModel

from steerseg_ros.grounding.base import ModelUnavailableError
from steerseg_ros.tracking.sam2 import Sam2Tracker, Sam2TrackerConfig
from steerseg_ros.tracking.sam2_reference import match_reference

SAM3_MEAN = (0.5, 0.5, 0.5)
SAM3_STD = (0.5, 0.5, 0.5)
SAM3_MODEL = "facebook/sam3"


@dataclass
class Sam3TrackerConfig(Sam2TrackerConfig):
    """The SAM2 backend's settings (every field means the same here), with SAM 3's checkpoint."""

    model: str = field(default=SAM3_MODEL, metadata={
        "help": "SAM 3 checkpoint: a hub id (facebook/sam3, gated: request access on its hub page, then "
                "`hf auth login` and `hf download facebook/sam3`) or a local folder holding config.json and "
                "model.safetensors (a full SAM 3 checkpoint or its tracker alone)"})


def missing_weights_message(name: str, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if os.path.isdir(name) or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return (f"SAM 3 checkpoint folder {name!r} could not be loaded ({reason}). It must hold config.json and "
                f"model.safetensors, e.g. from `hf download {SAM3_MODEL} --local-dir {name}` (gated: see "
                f"https://huggingface.co/{SAM3_MODEL}).")
    return (f"SAM 3 model {name!r} is not available: its weights are not in the local Hugging Face cache and "
            f"could not be downloaded ({reason}). The SAM 3 checkpoints are gated: request access on "
            f"https://huggingface.co/{name} (accept the SAM License), log in where the hub is reachable with "
            f"`hf auth login` (a token with read access), then `hf download {name}` (copy "
            f"~/.cache/huggingface/hub to this machine) or `hf download {name} --local-dir DIR` and set "
            f"tracker.model to DIR.")


def load_model(name: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               local_files_only: bool = False) -> Sam3TrackerVideoModel:
    """A Sam3TrackerVideoModel from a hub id or folder, in eval mode on `device`. Raises
    ModelUnavailableError, saying how to get the gated weights, when they are not there."""
    try:
        model = Sam3TrackerVideoModel.from_pretrained(name, dtype=dtype, local_files_only=local_files_only)
    except OSError as e:
        raise ModelUnavailableError(missing_weights_message(name, e)) from e
    return match_reference(model.to(device).eval())


class Sam3Tracker(Sam2Tracker):
    """Streaming SAM 3 tracker (see the module docstring); behaves as Sam2Tracker in every respect."""

    name = "sam3"
    session_class = Sam3TrackerVideoInferenceSession
    default_normalization = (SAM3_MEAN, SAM3_STD)

    def __init__(self, config: Optional[Sam3TrackerConfig] = None):
        super().__init__(config or Sam3TrackerConfig())

    @staticmethod
    def _resolve_model(name: str) -> str:
        return name.strip()  # no short names: SAM 3 has one published checkpoint

    def _load_model(self):
        return load_model(self.model_name, self.dtype, self.device, self.config.local_files_only)
