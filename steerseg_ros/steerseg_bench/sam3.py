"""Benchmark of the `sam3` tracker against transformers' own streaming loop: `bench_sam3(...) -> dict`
(steerseg-bench's section "sam3"), and `python -m steerseg_bench.sam3` for the same figures as JSON.

Measures, on the tiny random SAM 3 tracker checkpoint (steerseg_testing.tiny_sam3; random weights:
the memory figures are the architecture's, the timings a tiny model's, the masks meaningless):
- memory over `memory_frames` streamed frames (1,000 by default), one object seeded with a mask:
  the bytes of tensor storage the tracker holds (its session and feature cache, pruned) and the
  bytes transformers' inference session holds, driven as transformers documents streaming
  (tiny_sam3.TransformersStream), at the end of the warm-up and at the end, with the growth
  between and per frame;
- the cost per frame of the tracker against transformers' loop on the same frames (medians, the
  two stepped in turn on every frame so that both see the same machine load, one run), as a ratio;
- the per-frame time with 1, 2 and 4 objects, batched and one by one, and the added-object ratio
  ((step(n) - step(1)) / (n - 1) / step(1)) as the sam2 benchmark reports it (its _step_ratios);
- the concept grounder (grounder.backend sam3) on the tiny random Sam3Model: its time per
  keyframe (model call and instance post-processing) against transformers' own (Sam3Model on
  the same pixels, then Sam3ImageProcessor.post_process_instance_segmentation), in turn on each
  frame, as a ratio, and the instances it found per keyframe.
Frames are steerseg_bench.sam2's synthetic ones. Timings depend on the machine and its load:
`load_average` is recorded with them.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from steerseg_bench.common import flatten, print_figures
from steerseg_bench.sam2 import _step_ratios, _step_times, seed_masks, synthetic_frames


def _memory_and_cost(folder: Path, frames: int, warm_up: int, height: int, width: int) -> dict:
    """One object through `frames` frames in the tracker and in transformers' loop, in turn."""
    from steerseg_ros.tracking.sam3 import Sam3Tracker, Sam3TrackerConfig
    from steerseg_testing.tiny_sam3 import TransformersStream

    video = synthetic_frames(frames + 1, height, width)
    mask = seed_masks(1, height, width)[0]
    tracker = Sam3Tracker(Sam3TrackerConfig(model=str(folder), local_files_only=True))
    tracker.attach(1, tracker.start(video[0], mask=mask))
    reference = TransformersStream(folder, height, width)
    reference.add_masks([1], [mask])
    reference.step(video[0].image)
    ours_ms, theirs_ms = [], []
    at_warm_up = None
    for i, frame in enumerate(video[1:], 1):
        start = time.perf_counter()
        tracker.step(frame)
        ours_ms.append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        reference.step(frame.image)
        theirs_ms.append(1000 * (time.perf_counter() - start))
        if i == warm_up:
            at_warm_up = (tracker.memory_bytes(), reference.memory_bytes())
    at_end = (tracker.memory_bytes(), reference.memory_bytes())
    tracker.close()
    span = frames - warm_up
    figures: dict[str, Any] = {"frames": frames, "warm_up_frames": warm_up}
    for k, name in enumerate(("tracker", "transformers")):
        figures[f"{name}_bytes_after_warm_up"] = at_warm_up[k]
        figures[f"{name}_bytes_at_end"] = at_end[k]
        figures[f"{name}_growth_bytes"] = at_end[k] - at_warm_up[k]
        figures[f"{name}_growth_bytes_per_frame"] = (at_end[k] - at_warm_up[k]) / span
    figures["tracker_ms"] = float(np.median(ours_ms))
    figures["transformers_ms"] = float(np.median(theirs_ms))
    figures["cost_ratio_tracker_over_transformers"] = figures["tracker_ms"] / figures["transformers_ms"]
    return figures


def _grounder_cost(folder: Path, frames: int, height: int, width: int) -> dict:
    """The concept grounder's instances of one phrase on `frames` frames against transformers' own
    model call and post-processing, in turn on each frame."""
    import torch
    from transformers import AutoTokenizer, Sam3Model

    from steerseg_ros.grounding.sam3 import Sam3Grounder, Sam3GrounderConfig
    from steerseg_testing.tiny_sam3 import sam3_pixel_values, transformers_instances

    video = synthetic_frames(frames + 1, height, width)
    grounder = Sam3Grounder(Sam3GrounderConfig(model=str(folder), local_files_only=True, device="cpu"))
    model = Sam3Model.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    size = int(model.config.vision_config.image_size)
    ours_ms, theirs_ms, found = [], [], []
    for i, frame in enumerate(video):
        start = time.perf_counter()
        instances = grounder.instances(frame.image, "cow")
        ours = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        with torch.inference_mode():
            text = tokenizer(["cow"], return_tensors="pt", padding="max_length", max_length=32)
            transformers_instances(model(pixel_values=sam3_pixel_values(frame.image, size), **text),
                                   frame.image.shape[:2])
        theirs = 1000 * (time.perf_counter() - start)
        if i:  # the first call of each warms up
            ours_ms.append(ours)
            theirs_ms.append(theirs)
            found.append(len(instances.scores))
    grounder.close()
    figures = {"frames": frames, "grounder_ms_per_keyframe": float(np.median(ours_ms)),
               "transformers_ms_per_keyframe": float(np.median(theirs_ms)),
               "instances_per_keyframe": float(np.mean(found))}
    figures["cost_ratio_grounder_over_transformers"] = (figures["grounder_ms_per_keyframe"]
                                                        / figures["transformers_ms_per_keyframe"])
    return figures


def bench_sam3(image_size: int = 224, frames: int = 20, objects: Sequence[int] = (1, 2, 4),
               memory_frames: int = 1000, warm_up: int = 40, frame_size: tuple[int, int] = (120, 160),
               threads: int = 1) -> dict:
    """Run the benchmark (see the module docstring) and return its figures. `frames`: timed frames
    per object count; `memory_frames`: frames of the memory and cost run (after which the
    growth is measured from frame `warm_up`); `threads`: torch intra-op threads (0: torch's default)."""
    import torch

    from steerseg_ros.tracking.sam3 import Sam3Tracker, Sam3TrackerConfig
    from steerseg_testing.tiny_sam3 import (save_random_sam3, save_random_sam3_detector, tiny_config,
                                            tiny_detector_config)

    if threads > 0:
        torch.set_num_threads(threads)
    height, width = frame_size
    out: dict = {"config": "tiny", "image_size": image_size, "frame_size": [height, width],
                 "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_sam3(Path(tmp) / "tiny", tiny_config(image_size))

        def tracker(**options) -> Sam3Tracker:
            return Sam3Tracker(Sam3TrackerConfig(model=str(folder), local_files_only=True, **options))

        out["memory"] = _memory_and_cost(folder, memory_frames, warm_up, height, width)
        video = synthetic_frames(frames + 3, height, width)
        masks = seed_masks(max(objects), height, width)
        batched = tracker()
        step_ms, _, step_ms_unbatched, cpu_ms = _step_times(batched, tracker(batch_objects=False), video, masks,
                                                            objects)
        batched.close()
        out["step_ms"], out["step_ms_unbatched"] = step_ms, step_ms_unbatched
        out.update(_step_ratios(step_ms, step_ms_unbatched, cpu_ms))
        detector = save_random_sam3_detector(Path(tmp) / "detector", tiny_detector_config(image_size))
        out["grounder"] = _grounder_cost(detector, frames, height, width)
    return out


def section(args: argparse.Namespace) -> dict[str, Any]:
    """steerseg-bench's "sam3" section: the defaults (1,000 memory frames, one torch thread)."""
    figures = bench_sam3()
    figures.pop("load_average", None)  # the machine record has it
    return flatten(figures, "sam3")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--frames", type=int, default=20, help="timed frames per object count")
    p.add_argument("--objects", default="1,2,4")
    p.add_argument("--memory-frames", type=int, default=1000)
    p.add_argument("--warm-up", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="", help="also write the figures here")
    a = p.parse_args(argv)
    figures = bench_sam3(a.image_size, a.frames, [int(n) for n in a.objects.split(",")], a.memory_frames,
                         a.warm_up, threads=a.threads)
    print_figures(figures, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
