"""The training clips of the soft-prompt trainer (offline/training.py).

Owns reading the Ref-YouTube-VOS train split with the evaluation's reader (`read_dataset`), the
split into training and held-out videos, keyframe sampling and random crops, the ground truth
pooled to the token grids, and `prepare_clip`: one referring expression with K keyframes turned
into the model's inputs (built, vision tower run, by the grounder's own code:
`VLMGrounder.prepare_inputs`, one video item and the per-frame images at twice its grid) and its
targets (`ClipInputs`). torch is imported inside: the reader works without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import cv2
import numpy as np

from steerseg_ros.offline.training_config import TrainConfig, TrainingError

if TYPE_CHECKING:
    from steerseg_ros.offline.datasets import Sample


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



def sample_keyframes(expression: "Sample", config: TrainConfig,
                     keyframe_rng: Optional[np.random.Generator]) -> Optional[tuple[list, list, list]]:
    """(frame names, images, masks) of one clip's keyframes at the last keyframe's size (cropped
    when training: `keyframe_rng` given), or None when the target is absent from all of them."""
    from steerseg_ros.grounding.vlm_inputs import resize_rgb

    picks = keyframe_indices(len(expression), config.keyframes, keyframe_rng)
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
    if keyframe_rng is not None and config.crop_scale < 1.0:
        images, masks = random_crop(images, masks, config.crop_scale, keyframe_rng)
    if not any(m.any() for m in masks):
        return None
    return names, images, masks


def pooled_targets(video, frame_batches: list, masks: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(video target (t, h, w), frame targets (K, hf, wf), frame_present (K,)): the masks pooled to
    the video's and the frames' token grids; a video time step's target is the mean over the
    frames it covers."""
    grid = video.grids[0]
    per_frame = [pool_mask(m, (grid.h, grid.w)) for m in masks]
    video_target = np.stack([np.mean([per_frame[i] for i in grid.frames_of_step(s)], axis=0)
                             for s in range(grid.t)])
    fgrid = frame_batches[0].grids[0]
    frame_target = np.stack([pool_mask(m, (fgrid.h, fgrid.w)) for m in masks])
    present = np.array([m.any() for m in masks])
    return video_target, frame_target, present


def prepare_clip(grounder, config: TrainConfig, expression: "Sample", keyframe_rng: Optional[np.random.Generator],
                 autocast: Callable) -> Optional[ClipInputs]:
    """The model inputs and targets of one clip, or None when the target is absent from every
    sampled keyframe. `autocast()` gives the trainer's mixed-precision context."""
    import torch

    from steerseg_ros.grounding import questions
    from steerseg_ros.grounding.base import clean_command

    keyframes = sample_keyframes(expression, config, keyframe_rng)
    if keyframes is None:
        return None
    names, images, masks = keyframes
    g = grounder
    video, frame_batches = g.prepare_inputs(images)
    with torch.no_grad(), autocast():
        for visual in [video, *frame_batches]:
            g.encode_visual(visual)
    video_target, frame_target, present = pooled_targets(video, frame_batches, masks)

    expression_text = questions.format_expression(clean_command(expression.command))
    attributes, generated = "", ""
    if config.cot:
        with torch.no_grad(), autocast():
            answer = g.ask(video, g.content(video, questions.attribute_text(expression_text)),
                           decode_tokens=config.cot_tokens)
        generated = answer.texts[0]
        attributes = "; ".join(questions.parse_attributes(generated))
    head, question = questions.steered_text_parts(expression_text, attributes)
    return ClipInputs(expression, names, video, frame_batches, head, question, video_target, frame_target,
                      present, generated)
