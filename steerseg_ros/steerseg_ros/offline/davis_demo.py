"""A small Ref-YouTube-VOS-layout dataset made from this project's DAVIS 2016 folder, so the
soft-prompt trainer can be tried (and tested) without downloading anything.

Owns `build_from_davis`: DAVIS 2016 frames and masks (JPEGImages/480p/<seq>/, Annotations/480p/
<seq>/, expressions.json with a referring and a reasoning command per sequence) -> the layout
`steerseg-train-prompts` reads:

    OUT/train/JPEGImages/<seq>/<frame>.jpg          every `step`-th frame (Ref-YouTube-VOS keeps
                                                    every 5th), longer side at most `max_side`
    OUT/train/Annotations/<seq>/<frame>.png         palette PNG, object id 1
    OUT/meta_expressions/train/meta_expressions.json
        {"videos": {<seq>: {"expressions": {"0": {"exp": ..., "obj_id": "1"}, ...},
                            "frames": [...]}}}

All sequences go into the train split (Ref-YouTube-VOS publishes masks for train only); the
result names which videos to hold out for validation (`--val-videos`): by default a fixed rule
chosen before any training was run (every third sequence in name order, starting with the
second), or, with `later_fraction`, the later part of every sequence as a video of its own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from PIL import Image

# The DAVIS / YouTube-VOS palette's first entries: 0 background (black), 1 the first object.
_PALETTE = [0, 0, 0, 128, 0, 0] + [0] * (256 * 3 - 6)


@dataclass
class DemoDataset:
    root: Path
    train_videos: list[str]
    heldout_videos: list[str]
    frames: int  # frames written in all


def heldout_rule(videos: Sequence[str]) -> list[str]:
    """Every third video in name order, starting with the second."""
    return sorted(videos)[1::3]


def build_from_davis(davis_root: str | Path, out: str | Path, videos: Optional[Sequence[str]] = None,
                     step: int = 5, max_side: int = 224, max_frames: int = 0,
                     heldout: Optional[Sequence[str]] = None, later_fraction: float = 0.0) -> DemoDataset:
    """Write the dataset to `out` (created; must not hold a dataset already) and return its
    videos split into training and held-out ones.

    videos: sequences to take (default: every one listed in expressions.json); step: keep every
    step-th frame; max_side: downscale so the longer side is at most this many pixels;
    max_frames: at most this many frames per sequence (0: all); heldout: the held-out videos
    (default: `heldout_rule`); later_fraction > 0: instead of holding out whole videos, the last
    `later_fraction` of every video's frames become a video of their own, `<video>-later`, and
    those are the held-out ones (clips of the same objects at times training never saw: what a
    tiny random model can be expected to generalise to, where other objects are not)."""
    davis_root, out = Path(davis_root), Path(out)
    expressions_file = davis_root / "expressions.json"
    if not expressions_file.is_file():
        raise FileNotFoundError(f"{expressions_file} not found: expected this project's DAVIS 2016 folder "
                                "(JPEGImages/480p, Annotations/480p, expressions.json)")
    if not 0.0 <= later_fraction < 1.0:
        raise ValueError(f"later_fraction must be in [0, 1), got {later_fraction}")
    if step < 1 or max_side < 28 or max_frames < 0:
        raise ValueError(f"step must be >= 1, max_side >= 28 and max_frames >= 0 (got {step}, {max_side}, "
                         f"{max_frames})")
    meta_file = out / "meta_expressions" / "train" / "meta_expressions.json"
    if meta_file.exists():
        raise FileExistsError(f"{out} already holds a dataset ({meta_file})")
    commands = json.loads(expressions_file.read_text(encoding="utf-8"))["videos"]
    videos = sorted(videos) if videos is not None else sorted(commands)
    unknown = [v for v in videos if v not in commands]
    if unknown:
        raise ValueError(f"no expressions for {', '.join(unknown)} in {expressions_file}")
    if later_fraction:
        heldout = [f"{v}-later" for v in videos]
    else:
        heldout = sorted(heldout) if heldout is not None else heldout_rule(videos)
    if not later_fraction and set(heldout) - set(videos):
        raise ValueError(f"held-out videos {sorted(set(heldout) - set(videos))} are not among the videos")

    meta, written = {}, 0
    for video in videos:
        frames_dir = davis_root / "JPEGImages" / "480p" / video
        names = sorted(p.stem for p in frames_dir.glob("*.jpg"))[::step]
        if max_frames:
            names = names[:max_frames]
        if not names:
            raise FileNotFoundError(f"no frames in {frames_dir}")
        parts = [(video, names)]
        if later_fraction:
            cut = min(len(names) - 1, max(1, round(len(names) * (1.0 - later_fraction))))
            parts = [(video, names[:cut]), (f"{video}-later", names[cut:])]
        for name_out, part in parts:
            written += _write_video(davis_root, video, part, out / "train", name_out, max_side)
            meta[name_out] = {"expressions": {str(i): {"exp": e["exp"], "obj_id": "1"}
                                              for i, e in enumerate(commands[video]["expressions"])},
                              "frames": part}
    meta_file.parent.mkdir(parents=True, exist_ok=True)
    meta_file.write_text(json.dumps({"videos": meta}, indent=1), encoding="utf-8")
    return DemoDataset(out, [v for v in meta if v not in heldout], list(heldout), written)


def _write_video(davis_root: Path, video: str, names: Sequence[str], split: Path, name_out: str,
                 max_side: int) -> int:
    """Frames (JPEG) and masks (palette PNG, object id 1) of one DAVIS sequence, downscaled."""
    image_out = split / "JPEGImages" / name_out
    mask_out = split / "Annotations" / name_out
    image_out.mkdir(parents=True, exist_ok=True)
    mask_out.mkdir(parents=True, exist_ok=True)
    for name in names:
        image = cv2.imread(str(davis_root / "JPEGImages" / "480p" / video / f"{name}.jpg"), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(davis_root / "Annotations" / "480p" / video / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        if image is None or mask is None:
            raise FileNotFoundError(f"cannot read frame or mask {video}/{name} under {davis_root}")
        h, w = image.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # Nearest keeps the mask binary; the object id is 1 as in a one-object YouTube-VOS video.
        labels = (cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) > 127).astype(np.uint8)
        cv2.imwrite(str(image_out / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        png = Image.fromarray(labels, mode="P")
        png.putpalette(_PALETTE)
        png.save(mask_out / f"{name}.png")
    return len(names)
