"""Benchmark of the two SAM2 backends side by side: `bench_backends(...) -> dict` (the sam2
section of steerseg-bench adds it when Meta's sam2 is installed), and
`python -m steerseg_bench.sam2_meta` for the same figures as JSON.

The same random weights (made in Meta's layout, converted to transformers'), the same synthetic
frames and the same seeds go through tracker.backend sam2 (transformers) and sam2_meta (Meta's
code), and on CUDA sam2_meta's compiled mode (Meta's vos_optimized) too. Measured per backend:
- per-frame tracking time (median) with 1, 2 and 4 live objects;
- tracker memory over `memory_frames` frames (1,000 by default for the tiny shapes): the tensor
  bytes it holds at the end, their growth per 1,000 frames, and the process's resident memory
  growth per 1,000 frames (pruned memory: what the node runs).
Ratios sam2_meta / sam2 come from the same run (the machine is shared and noisy: compare ratios,
not absolute times, and only a GPU's absolute times count).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from steerseg_bench.common import print_figures
from steerseg_bench.sam2 import _rss, seed_masks, synthetic_frames


def _shapes(config: str, image_size: Optional[int]):
    from steerseg_ros.tracking.sam2_checkpoints import meta_compatible
    from steerseg_testing.tiny_sam2 import real_config, tiny_config

    # The real SAM2.1 shapes are Meta's own; the tiny test config needs Meta's fixed widths.
    return meta_compatible(tiny_config(image_size or 64)) if config == "tiny" else real_config(config, image_size or 1024)


def _step_ms(trackers: dict, video, masks, objects: Sequence[int]) -> dict[str, dict[int, float]]:
    """Median step time per backend and object count. The backends step the same frames in turn
    (frame by frame, alternating which goes first), so that a shared machine's load changes hit
    them alike."""
    out: dict[str, dict[int, float]] = {name: {} for name in trackers}
    for n in objects:
        for tracker in trackers.values():
            tracker.reset()
            for k in range(n):
                tracker.attach(k + 1, tracker.start(video[0], mask=masks[k]))
            for f in video[1:3]:  # warm-up (and, compiled, the first compilations)
                tracker.step(f)
        times: dict[str, list[float]] = {name: [] for name in trackers}
        for i, f in enumerate(video[3:]):
            order = list(trackers) if i % 2 == 0 else list(reversed(trackers))
            for name in order:
                start = time.perf_counter()
                trackers[name].step(f)
                times[name].append(1000 * (time.perf_counter() - start))
        for name in trackers:
            out[name][n] = float(np.median(times[name]))
    for tracker in trackers.values():
        tracker.reset()
    return out


def _memory(make, frames: int, height: int, width: int) -> dict:
    tracker = make()
    video = synthetic_frames(frames + 1, height, width)
    tracker.attach(1, tracker.start(video[0], mask=seed_masks(1, height, width)[0]))
    half = frames // 2
    for f in video[1:half + 1]:
        tracker.step(f)
    bytes_half, rss_half = tracker.memory_bytes(), _rss()
    for f in video[half + 1:]:
        tracker.step(f)
    span = frames - half
    out = {"tracker_bytes_at_end": tracker.memory_bytes(),
           "tracker_bytes_per_1000_frames": (tracker.memory_bytes() - bytes_half) / span * 1000,
           "rss_bytes_per_1000_frames": (_rss() - rss_half) / span * 1000, "frames": frames}
    tracker.close()
    return out


def bench_backends(config: str = "tiny", image_size: Optional[int] = None, frames: int = 10,
                   objects: Sequence[int] = (1, 2, 4), memory_frames: int = 0,
                   frame_size: tuple[int, int] = (480, 854), device: str = "auto", dtype: str = "float32",
                   compile: Optional[bool] = None, threads: int = 0) -> dict:
    """Run the benchmark (see the module docstring) and return its figures.

    frames: timed frames per object count (after 2 warm-up frames).
    memory_frames: frames of the memory run (default 1,000 for "tiny", 40 for real shapes).
    compile: also time sam2_meta compiled (default: when the device is CUDA).
    """
    import torch

    from steerseg_ros.tracking.sam2 import Sam2Tracker, Sam2TrackerConfig
    from steerseg_testing.meta_checkpoint import random_meta_checkpoint
    from steerseg_ros.tracking.sam2_checkpoints import meta_to_hf
    from steerseg_ros.tracking.sam2_meta import MetaSam2Tracker, MetaSam2TrackerConfig

    if threads > 0:
        torch.set_num_threads(threads)
    memory_frames = memory_frames or (1000 if config == "tiny" else 40)
    height, width = frame_size
    out: dict = {"config": config, "frame_size": [height, width], "dtype": dtype,
                 "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp:
        pt, yaml = random_meta_checkpoint(Path(tmp) / "meta.pt", _shapes(config, image_size))
        folder = meta_to_hf(pt, yaml, Path(tmp) / "hf")
        makers = {
            "sam2": lambda **o: Sam2Tracker(Sam2TrackerConfig(model=str(folder), device=device, dtype=dtype,
                                                              local_files_only=True, **o)),
            "sam2_meta": lambda **o: MetaSam2Tracker(MetaSam2TrackerConfig(checkpoint=str(pt), device=device,
                                                                           dtype=dtype, **o)),
        }
        first = makers["sam2_meta"]()
        out.update(image_size=first.image_size, device=str(first.device),
                   parameters=sum(p.numel() for p in first.model.parameters()))
        if compile is None:
            compile = first.device.type == "cuda"
        first.close()
        if compile:
            makers["sam2_meta_compiled"] = lambda **o: makers["sam2_meta"](compile=True, **o)
        else:
            out["sam2_meta_compiled"] = "not measured: Meta's compiled mode needs a CUDA device"
        video = synthetic_frames(frames + 3, height, width)
        masks = seed_masks(max(objects), height, width)
        small = (height // 4, width // 4) if config == "tiny" else (height, width)
        trackers = {name: make() for name, make in makers.items()}
        for name, figures in _step_ms(trackers, video, masks, objects).items():
            out[name] = {"step_ms": figures}
            trackers[name].close()
        for name, make in makers.items():
            out[name]["memory"] = _memory(make, memory_frames, *small)
        for n in objects:
            out.setdefault("meta_over_transformers", {})[f"step_ms.{n}"] = \
                out["sam2_meta"]["step_ms"][n] / out["sam2"]["step_ms"][n]
    return out


def main(argv: Optional[list[str]] = None) -> int:
    from steerseg_testing.tiny_sam2 import REAL_BACKBONES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny", choices=["tiny", *REAL_BACKBONES])
    p.add_argument("--image-size", type=int, default=None, help="model input size (64 tiny, 1024 real)")
    p.add_argument("--frames", type=int, default=10, help="timed frames per object count")
    p.add_argument("--objects", default="1,2,4", help="object counts to time")
    p.add_argument("--memory-frames", type=int, default=0, help="frames of the memory runs (0: 1000 tiny, 40 real)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--compile", choices=("auto", "yes", "no"), default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default="", help="also write the figures here")
    a = p.parse_args(argv)
    figures = bench_backends(a.config, a.image_size, a.frames, [int(n) for n in a.objects.split(",")],
                             a.memory_frames, device=a.device, dtype=a.dtype,
                             compile=None if a.compile == "auto" else a.compile == "yes", threads=a.threads)
    print_figures(figures, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
