"""SAM 3 concept grounding: every instance of a noun phrase on the keyframes.

Owns `Sam3GrounderConfig`, `Sam3Grounder` (grounder.backend sam3), `noun_phrase` (the short
phrase SAM 3 is prompted with, cut from a command) and `Sam3Instances`, the model call and the
instance post-processing that the hybrid (a VLM grounder with `sam3_candidates`) shares.

transformers' Sam3Model takes an image and a short noun phrase and returns up to Q instance
queries: mask logits, boxes, a logit per query and one presence logit per image ("is the
concept in this image at all"). Its processors need torchvision, so pre-processing is done here
as for the SAM2 and SAM 3 trackers (tracking/sam2_inputs.pixel_values: resize to S x S, mean
and std 0.5 unless the checkpoint's processor config says otherwise), and the instance
post-processing is written out as Sam3ImageProcessor.post_process_instance_segmentation does it
(transformers 5.23): score = sigmoid(query logit) x sigmoid(presence logit), queries above
`score_threshold` kept, their mask probabilities resized bilinearly to the frame and cut at
`mask_threshold`.

What the grounder hands on: one point prompt per instance (its most interior pixel, its score,
and its mask, so target selection takes SAM 3's mask instead of asking the tracker for one), a
map per keyframe (each cell: the best score x mask probability of the instances covering it),
which the steerseg correlation scorer ranks the candidate tracklets against, and the presence
answer: when the presence probability stays below `presence_threshold` on every keyframe the
result says not in view, and no track starts (never the best wrong guess).

Referring or reasoning commands ("the one he is about to pick up") are beyond it: SAM 3 reads a
noun phrase. `noun_phrase` keeps a command's leading noun phrase ("the red cup on the left" ->
"red cup"); the hybrid prompts it with the VLM's class word instead.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, Sam3Model

from steerseg_ros.devices import DTYPES, resolve_device
from steerseg_ros.frame import Frame
from steerseg_ros.grounding.base import (Grounder, GroundingError, GroundingResult, ModelUnavailableError,
                                         PointPrompt)
from steerseg_ros.tracking.sam2_inputs import pixel_values, processor_normalization
from steerseg_ros.tracking.sam3 import SAM3_MEAN, SAM3_MODEL, SAM3_STD, missing_weights_message

# Sam3Processor pads every phrase to this many tokens (its __call__: padding="max_length").
TEXT_TOKENS = 32

# Words that end a command's leading noun phrase: relative pronouns, prepositions, conjunctions
# and the verbs that start a clause. SAM 3 is trained on short noun phrases ("red cup", "person
# in a hat" are both in its data, but a clause is not).
_PHRASE_END = frozenset("""
that which who whom whose where when while as is are was were be being been has have had
on in at near by under over behind beside next to from of with without into onto above below
between among across along around through toward towards against and or but than like
""".split())
_LEADING = frozenset("the a an this that these those his her its their my your our some any one".split())
_MAX_PHRASE_WORDS = 4


def noun_phrase(command: str) -> str:
    """The leading noun phrase of a command, lower case, without its article: "The red cup on
    the left" -> "red cup"; "the man jumping over the railings" -> "man". Words ending in -ing
    after the first word start a clause too. At most four words; the whole command (cut to
    four words) when nothing is left."""
    everything = re.findall(r"[\w'-]+", command.lower())
    words = list(everything)
    while words and words[0] in _LEADING:
        words = words[1:]
    kept: list[str] = []
    for w in words:
        if kept and (w in _PHRASE_END or (w.endswith("ing") and len(w) > 4)):
            break
        kept.append(w)
    return " ".join(kept[:_MAX_PHRASE_WORDS]) or " ".join(everything[:_MAX_PHRASE_WORDS])


@dataclass
class Sam3GrounderConfig:
    """Configuration of the SAM 3 concept grounder (one ROS parameter `grounder.<field>` each)."""

    model: str = field(default=SAM3_MODEL, metadata={
        "help": "SAM 3 checkpoint: a hub id (facebook/sam3, gated: request access on its hub page, then "
                "`hf auth login` and `hf download facebook/sam3`) or a local folder with config.json, "
                "model.safetensors and the tokenizer files"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda, cuda:N"})
    dtype: str = field(default="float32", metadata={"help": "model dtype: float32, bfloat16 or float16 (GPU)"})
    local_files_only: bool = field(default=False, metadata={
        "help": "never try to download the weights (only the local cache or folder)"})
    phrase: str = field(default="", metadata={
        "help": "prompt SAM 3 with this noun phrase whatever the command says; empty: the command's "
                "leading noun phrase"})
    score_threshold: float = field(default=0.3, metadata={
        "help": "instances scored above this are candidates (score: query probability x presence "
                "probability; 0.3 is transformers' post-processing default)"})
    mask_threshold: float = field(default=0.5, metadata={"help": "mask probability threshold"})
    presence_threshold: float = field(default=0.5, metadata={
        "help": "below this presence probability on every keyframe the object is not in view: no track "
                "starts"})
    max_instances: int = field(default=8, metadata={
        "help": "most instances per keyframe handed to target selection, best first"})

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("score_threshold", "mask_threshold", "presence_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {self.max_instances}")
        if not self.model.strip():
            raise ValueError("model must name a SAM 3 checkpoint")


@dataclass
class Instances:
    """SAM 3's instances of one phrase on one frame, best first: frame-sized boolean masks,
    their scores, their mask probabilities on the model's mask grid (N, h, w), and the frame's
    presence probability."""

    masks: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray
    presence: float


class Sam3Instances:
    """A Sam3Model and its tokenizer, loaded once: `__call__(frame, phrase)` gives the phrase's
    instances on the frame. Raises ModelUnavailableError (saying how to get the gated weights)
    when the checkpoint is not there."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "float32", local_files_only: bool = False,
                 score_threshold: float = 0.3, mask_threshold: float = 0.5):
        self.device = resolve_device(device, GroundingError)
        self.dtype = DTYPES[dtype]
        self.score_threshold, self.mask_threshold = score_threshold, mask_threshold
        try:
            self.model = Sam3Model.from_pretrained(model, dtype=self.dtype, local_files_only=local_files_only)
            self.tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local_files_only)
        except OSError as e:
            raise ModelUnavailableError(missing_weights_message(model, e)) from e
        self.model = self.model.to(self.device).eval()
        self.image_size = int(self.model.config.vision_config.image_size)
        self.mean, self.std = processor_normalization(model, self.image_size, self.device, local_files_only,
                                                      SAM3_MEAN, SAM3_STD)
        self._text: dict[str, dict[str, torch.Tensor]] = {}

    def tokens(self, phrase: str) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask of a phrase, as Sam3Processor makes them (the last few
        phrases kept: a command's phrase is asked for on every keyframe of every grounding)."""
        if phrase not in self._text:
            if len(self._text) >= 16:
                self._text.pop(next(iter(self._text)))
            enc = self.tokenizer([phrase], return_tensors="pt", padding="max_length", max_length=TEXT_TOKENS,
                                 truncation=True)
            self._text[phrase] = {"input_ids": enc["input_ids"].to(self.device),
                                  "attention_mask": enc["attention_mask"].to(self.device)}
        return self._text[phrase]

    @torch.inference_mode()
    def raw(self, image: np.ndarray, phrase: str):
        """Sam3Model's own output for one HxWx3 uint8 RGB image and a phrase."""
        pixels = pixel_values(image, self.image_size, self.mean, self.std, self.device, self.dtype)
        return self.model(pixel_values=pixels, **self.tokens(phrase))

    def __call__(self, image: np.ndarray, phrase: str) -> Instances:
        return self.post_process(self.raw(image, phrase), image.shape[:2])

    @torch.inference_mode()
    def post_process(self, output, size: tuple[int, int]) -> Instances:
        """The instances of one image's output (see the module docstring), best first."""
        scores = output.pred_logits[0].float().sigmoid()
        presence = 1.0
        if output.presence_logits is not None:
            presence = float(output.presence_logits.float().sigmoid().reshape(-1)[0])
            scores = scores * presence
        keep = torch.nonzero(scores > self.score_threshold).reshape(-1)
        keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
        probabilities = output.pred_masks[0, keep].float().sigmoid()
        if len(keep):
            full = F.interpolate(probabilities[None], size=size, mode="bilinear", align_corners=False)[0]
            masks = (full > self.mask_threshold).cpu().numpy()
        else:
            masks = np.zeros((0, *size), bool)
        return Instances(masks, scores[keep].cpu().numpy().astype(np.float32),
                         probabilities.cpu().numpy().astype(np.float32), presence)


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """x, y of the mask pixel farthest from its border (a point prompt there lands on the object
    whatever its shape; a centroid may not)."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(x), float(y)


def instance_map(instances: Instances, grid: tuple[int, int]) -> np.ndarray:
    """Each cell of the model's mask grid: the best score x mask probability over the instances
    (0 where there are none)."""
    if len(instances.scores) == 0:
        return np.zeros(grid, np.float32)
    return (instances.probabilities * instances.scores[:, None, None]).max(axis=0).astype(np.float32)


def instance_points(instances: Instances, keyframe_index: int, limit: int) -> list[PointPrompt]:
    """A point prompt per instance (best `limit`), carrying its mask for target selection."""
    points = []
    for mask, score in zip(instances.masks[:limit], instances.scores[:limit]):
        if mask.any():
            x, y = interior_point(mask)
            points.append(PointPrompt(keyframe_index, x, y, float(score), mask=mask))
    return points


class Sam3Grounder(Grounder):
    """grounder.backend sam3: SAM 3 on each keyframe with the command's noun phrase (see the
    module docstring)."""

    name = "sam3"

    def __init__(self, config: Optional[Sam3GrounderConfig] = None):
        self.config = config or Sam3GrounderConfig()
        self.config.validate()
        c = self.config
        self.instances = Sam3Instances(c.model, c.device, c.dtype, c.local_files_only, c.score_threshold,
                                       c.mask_threshold)

    def ground(self, keyframes: Sequence[Frame], command: str) -> GroundingResult:
        if self.instances is None:
            raise GroundingError("the grounder was closed")
        if not keyframes:
            raise GroundingError("no keyframes to ground on")
        phrase = self.config.phrase.strip() or noun_phrase(command)
        t0 = time.perf_counter()
        found = [self.instances(f.image, phrase) for f in keyframes]
        grid = found[0].probabilities.shape[1:]  # (0, h, w) when nothing was kept
        maps = np.stack([instance_map(i, grid) for i in found])
        points = [p for k, i in enumerate(found) for p in instance_points(i, k, self.config.max_instances)]
        presence = max(i.presence for i in found)
        return GroundingResult(command=command, backend=self.name, keyframes=list(keyframes), maps=maps,
                               points=points, class_word=phrase,
                               timings={"sam3_s": time.perf_counter() - t0},
                               in_view=presence >= self.config.presence_threshold, in_view_score=presence)

    def close(self) -> None:
        self.instances = None
