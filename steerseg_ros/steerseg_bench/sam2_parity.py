"""Parity of the two SAM2 backends beyond the test's one setting (a measurement, not a test).

For each random seed: a random checkpoint in Meta's layout (tiny shapes at --size px, with the
given initial-value scales, see random_meta_checkpoint) converted to transformers',
both backends tracking the first --frames frames of a DAVIS sequence (halved unless --half 0) from the
first-frame mask and from points, with one and two objects, as test/models/test_sam2_meta_parity.py
does. Prints per case the lowest per-frame mask IoU between the two and the largest
mask-decoder logit difference, for the transformers backend as it runs (with the mask-prompt
correction of tracking/sam2_reference.py) and, with --uncorrected, without it.

    python -m steerseg_bench.sam2_parity [--davis DIR] [--sequence camel] [--size 128] [--frames 30] [--half 1]
        [--seeds 0,1,2,3] [--memory-scale 10] [--attention-scale 1] [--hypernetwork-scale 20]
        [--uncorrected]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from steerseg_testing.davis import davis_root, load_sequence


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--davis", type=Path, default=davis_root())
    p.add_argument("--sequence", default="camel")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--half", type=int, default=1, help="1: frames at half size (as the test); 0: full size")
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--memory-scale", type=float, default=10.0)
    p.add_argument("--attention-scale", type=float, default=1.0)
    p.add_argument("--hypernetwork-scale", type=float, default=20.0)
    p.add_argument("--uncorrected", action="store_true", help="also the transformers backend without the correction")
    return p.parse_args(argv)


def clip(a: argparse.Namespace):
    """The sequence's first frames (halved unless --half 0) and the prompts of each seed kind:
    per object, the first frame's mask (object 1) or a background corner (object 2), or points."""
    from steerseg_ros.frame import Frame

    _, images, masks = load_sequence(a.davis, a.sequence, a.frames)
    if a.half:
        images = [cv2.resize(im, (im.shape[1] // 2, im.shape[0] // 2), interpolation=cv2.INTER_AREA) for im in images]
    mask0 = cv2.resize(masks[0].astype(np.uint8), images[0].shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
    frames = [Frame(i, i, im) for i, im in enumerate(images)]
    h, w = mask0.shape
    ys, xs = np.nonzero(mask0)
    background = np.zeros_like(mask0)
    background[: h // 4, : w // 5] = True
    background &= ~mask0
    seeds = {"mask": [dict(mask=mask0), dict(mask=background)],
             "points": [dict(points=np.array([[xs.mean(), ys.mean()], [xs.min() + 2.0, ys.mean()]]),
                             labels=np.array([1, 1])),
                        dict(points=np.array([[w / 10, h / 8]]), labels=np.array([1]))]}
    return frames, seeds


def track(tracker, decoder, frames, prompts):
    """Per frame {object id: mask}, and every mask-decoder call's logits."""
    logits = []
    hook = decoder.register_forward_hook(lambda m, i, o: logits.append(o[0].detach().float().reshape(-1).clone()))
    first = {}
    for k, s in enumerate(prompts):
        state = tracker.start(frames[0], **s)
        tracker.attach(k + 1, state)
        first[k + 1] = state.result.mask
    out = [first] + [{k: r.mask for k, r in tracker.step(f).items()} for f in frames[1:]]
    hook.remove()
    tracker.reset()
    return out, logits


def iou(x, y):
    union = np.count_nonzero(x | y)
    return np.count_nonzero(x & y) / union if union else 1.0


def trackers(a: argparse.Namespace, seed: int, folder: Path):
    """Meta's tracker and the transformers one(s) on one random checkpoint: (meta, {label: tracker})."""
    from steerseg_ros.tracking import sam2_checkpoints as sam2_convert
    from steerseg_testing.meta_checkpoint import random_meta_checkpoint
    from steerseg_ros.tracking.sam2 import Sam2Tracker, Sam2TrackerConfig
    from steerseg_ros.tracking.sam2_meta import MetaSam2Tracker, MetaSam2TrackerConfig
    from steerseg_testing.tiny_sam2 import tiny_config

    pt, yaml = random_meta_checkpoint(
        folder / "m.pt", sam2_convert.meta_compatible(tiny_config(a.size)), seed=seed,
        memory_scale=a.memory_scale, attention_scale=a.attention_scale,
        hypernetwork_scale=a.hypernetwork_scale)
    hf = sam2_convert.meta_to_hf(pt, yaml, folder / "hf")
    meta = MetaSam2Tracker(MetaSam2TrackerConfig(checkpoint=str(pt), device="cpu"))
    variants = {"corrected": Sam2Tracker(Sam2TrackerConfig(model=str(hf), device="cpu", local_files_only=True))}
    if a.uncorrected:
        plain = Sam2Tracker(Sam2TrackerConfig(model=str(hf), device="cpu", local_files_only=True))
        for name in ("_use_mask_as_output", "_single_frame_forward"):
            delattr(plain.model, name)
        variants["uncorrected"] = plain
    return meta, variants


def compare_seed(a: argparse.Namespace, seed: int, frames, seeds) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        meta, variants = trackers(a, seed, Path(tmp))
        for kind in ("mask", "points"):
            for objects in (1, 2):
                ref, ref_logits = track(meta, meta.model.sam_mask_decoder, frames, seeds[kind][:objects])
                fg = np.mean([m[1].mean() for m in ref])
                for label, tracker in variants.items():
                    got, logits = track(tracker, tracker.model.mask_decoder, frames, seeds[kind][:objects])
                    ious = [iou(x[k], y[k]) for x, y in zip(ref, got) for k in x]
                    # (uncorrected, the mask-prompted frame's decoder call gives 3 masks, not 1)
                    diff = max(float((x - y).abs().max()) for x, y in zip(ref_logits, logits)
                               if x.shape == y.shape)
                    print(f"seed {seed} {kind:6s} {objects} object(s) {label:11s}: min IoU {min(ious):.4f}, "
                          f"largest logit difference {diff:.3g} (object 1 covers {fg:.3f} of the frame)")


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    frames, seeds = clip(a)
    h, w = frames[0].image.shape[:2]
    print(f"{a.sequence}, {a.frames} frames at {w}x{h}, model {a.size} px, scales memory {a.memory_scale} "
          f"attention {a.attention_scale} hypernetwork {a.hypernetwork_scale}")
    for seed in [int(s) for s in a.seeds.split(",")]:
        compare_seed(a, seed, frames, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
