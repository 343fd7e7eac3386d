"""Benchmark of the SAM2 tracker: `bench_sam2(...) -> dict` (steerseg-bench plugs it in), and
`python -m steerseg_bench.sam2` for the same figures as JSON.

Measures, on a randomly initialised model (random weights: the timings and memory are those of
the real architecture, the masks are meaningless):
- per-frame tracking time (median) with 1, 2, 4 and 8 live objects, batched and one by one
  (tracker.batch_objects), the encoder's share of it, the cost of each object added after the
  first, and the ratios the goal is set in (n objects over one; each added object over the first);
- tracker memory growth per 1,000 frames with pruning on and off (tensor bytes the tracker holds,
  and the process's resident memory);
- catch-up time per buffered frame (a detached object advanced through frames not yet encoded);
- the image encoder through onnxruntime against torch (time and largest difference).

Configs: "tiny" (the test config, 64 px by default) or the layer shapes of "sam2.1-tiny",
"sam2.1-small", "sam2.1-base-plus" or "sam2.1-large" (1024 px by default). Frames are synthetic
(a textured disc moving over a gradient) so that the benchmark needs no data. Timings depend on
the machine and its load: record `uptime` with them.
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
from steerseg_ros.frame import Frame


def synthetic_frames(count: int, height: int = 480, width: int = 640, start_seq: int = 0) -> list[Frame]:
    """`count` RGB frames of a textured disc moving over a gradient (deterministic)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([xs / width * 200, ys / height * 200, np.full_like(xs, 60)], axis=-1)
    texture = ((np.sin(xs / 7.0) * np.cos(ys / 5.0) + 1) * 60).astype(np.float32)
    frames = []
    for i in range(count):
        t = (start_seq + i) * 0.05
        cx, cy, r = width * (0.5 + 0.3 * np.cos(t)), height * (0.5 + 0.3 * np.sin(1.3 * t)), min(height, width) / 6
        disc = ((xs - cx) ** 2 + (ys - cy) ** 2) < r * r
        image = background.copy()
        image[disc] = np.stack([texture[disc] + 120, texture[disc], 255 - texture[disc]], axis=-1)
        frames.append(Frame(start_seq + i, (start_seq + i) * 33_333_333, np.clip(image, 0, 255).astype(np.uint8)))
    return frames


def seed_masks(count: int, height: int, width: int) -> list[np.ndarray]:
    """`count` box masks spread over the frame, to seed objects with."""
    masks = []
    for k in range(count):
        m = np.zeros((height, width), bool)
        x0 = int(width * (0.1 + 0.2 * k)) % max(width - width // 5, 1)
        m[height // 4: height // 2, x0: x0 + width // 5] = True
        masks.append(m)
    return masks


def _model_folder(config: str, image_size: Optional[int], folder: Path) -> Path:
    from steerseg_testing.tiny_sam2 import real_config, save_random_sam2, tiny_config

    model_config = tiny_config(image_size or 64) if config == "tiny" else real_config(config, image_size or 1024)
    return save_random_sam2(folder / config, model_config)


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def _object_step_parts(tracker, video: list[Frame]) -> dict:
    """Where one object's step goes (the tracker holds one object seeded on video[0]): milliseconds
    in SAM2's memory attention, mask decoder and memory encoder, over the timed frames."""
    tracker.reset()
    tracker.attach(1, tracker.start(video[0], mask=seed_masks(1, *video[0].image.shape[:2])[0]))
    for f in video[1:3]:
        tracker.step(f)
    parts = {"memory_attention": 0.0, "mask_decoder": 0.0, "memory_encoder": 0.0}
    started: dict[str, float] = {}
    handles = []
    for name in parts:
        module = getattr(tracker.model, name)
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: started.__setitem__(n, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda m, a, o, n=name: parts.__setitem__(n, parts[n] + time.perf_counter() - started[n])))
    for f in video[3:]:
        tracker.step(f)
    for h in handles:
        h.remove()
    return {name: 1000 * total / (len(video) - 3) for name, total in parts.items()}


def _rss() -> int:
    import psutil
    return psutil.Process().memory_info().rss


def bench_sam2(config: str = "tiny", image_size: Optional[int] = None, frames: int = 30,
               objects: Sequence[int] = (1, 2, 4, 8), memory_frames: int = 0, catch_up_frames: int = 0,
               onnx: bool = True, frame_size: tuple[int, int] = (480, 640), device: str = "auto",
               dtype: str = "float32", threads: int = 0) -> dict:
    """Run the benchmark (see the module docstring) and return its figures.

    frames: timed frames per object count (after 2 warm-up frames).
    memory_frames: frames for the memory-growth runs (default 10 x frames for "tiny", 40 for
        real shapes; unpruned memory grows by megabytes per frame at 1024 px).
    catch_up_frames: buffered frames to catch up through (default frames).
    threads: torch intra-op threads (0: torch's default).
    """
    import torch

    from steerseg_ros.tracking.sam2 import Sam2Tracker, Sam2TrackerConfig

    if threads > 0:
        torch.set_num_threads(threads)
    memory_frames = memory_frames or (10 * frames if config == "tiny" else 40)
    catch_up_frames = catch_up_frames or frames
    height, width = frame_size
    out: dict = {"config": config, "frame_size": [height, width], "dtype": dtype,
                 "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp:
        folder = _model_folder(config, image_size, Path(tmp))

        def tracker(**options) -> Sam2Tracker:
            return Sam2Tracker(Sam2TrackerConfig(model=str(folder), device=device, dtype=dtype,
                                                 local_files_only=True, **options))

        t = tracker()
        out.update(image_size=t.image_size, device=str(t.device),
                   parameters=sum(p.numel() for p in t.model.parameters()))
        video = synthetic_frames(frames + 3, height, width)
        masks = seed_masks(max(objects), height, width)
        step_ms, step_ms_mean, step_ms_unbatched, cpu_ms = _step_times(t, tracker(batch_objects=False), video,
                                                                       masks, objects)
        with torch.inference_mode():
            pixel_values = t._preprocess(video[0].image)
            t.encoder(pixel_values)
            out["encoder_ms"] = _median_ms(lambda: t.encoder(pixel_values), max(3, frames // 3))
        out["step_ms"], out["step_ms_mean"] = step_ms, step_ms_mean
        out["object_step_parts_ms"] = _object_step_parts(t, video)
        out["step_ms_unbatched"] = step_ms_unbatched
        out.update(_step_ratios(step_ms, step_ms_unbatched, cpu_ms))
        long_video = synthetic_frames(memory_frames + 1, height // 4, width // 4) if config == "tiny" \
            else synthetic_frames(memory_frames + 1, height, width)
        out["memory"] = {"pruned" if prune else "unpruned": _memory_growth(tracker(prune_memory=prune), long_video)
                         for prune in (True, False)}
        out["catch_up_ms_per_frame"] = _catch_up_ms(t, masks[0], catch_up_frames, height, width)
        if onnx:
            out["onnx"] = _onnx_against_torch(t, pixel_values, Path(tmp) / "encoder.onnx", frames)
        t.close()
    return out


def _step_times(batched, one_by_one, video: list[Frame], masks: list[np.ndarray], objects: Sequence[int]):
    """Per-frame tracking time by number of live objects (encoder once per frame), objects
    batched and one by one (tracker.batch_objects), the two stepped in turn on every frame so
    that both see the same machine load. Medians: load spikes hit single frames. Also this
    thread's CPU time per step: with one torch thread (--threads 1) the step runs on this thread
    only, and CPU time hardly moves with what else loads a shared machine. Closes `one_by_one`."""
    step_ms, step_ms_mean, step_ms_unbatched = {}, {}, {}
    cpu_ms: dict[bool, dict[int, float]] = {True: {}, False: {}}
    for n in objects:
        times: dict[bool, list[float]] = {True: [], False: []}
        cpu: dict[bool, list[float]] = {True: [], False: []}
        for run in (batched, one_by_one):
            run.reset()
            for k in range(n):
                run.attach(k + 1, run.start(video[0], mask=masks[k]))
            for f in video[1:3]:
                run.step(f)
        for f in video[3:]:
            for run in (batched, one_by_one):
                start, start_cpu = time.perf_counter(), time.thread_time()
                run.step(f)
                times[run.config.batch_objects].append(1000 * (time.perf_counter() - start))
                cpu[run.config.batch_objects].append(1000 * (time.thread_time() - start_cpu))
        step_ms[n], step_ms_mean[n] = float(np.median(times[True])), float(np.mean(times[True]))
        step_ms_unbatched[n] = float(np.median(times[False]))
        for batched_run in (True, False):
            cpu_ms[batched_run][n] = float(np.median(cpu[batched_run]))
    one_by_one.close()
    return step_ms, step_ms_mean, step_ms_unbatched, cpu_ms


def _step_ratios(step_ms: dict, step_ms_unbatched: dict, cpu_ms: dict[bool, dict[int, float]]) -> dict:
    out: dict = {}
    counts = sorted(step_ms)
    if len(counts) > 1:
        out["added_object_ms"] = (step_ms[counts[-1]] - step_ms[counts[0]]) / (counts[-1] - counts[0])
        out["first_object_ms"] = step_ms[counts[0]]
    out["step_cpu_ms"], out["step_cpu_ms_unbatched"] = cpu_ms[True], cpu_ms[False]
    if counts and counts[0] == 1:
        # The goal's measure: the cost of n objects over one, and of each added object as a
        # share of the first ((step(n) - step(1)) / (n - 1) / step(1); goal <= 0.4).
        for name, ms in (("", step_ms), ("_unbatched", step_ms_unbatched), ("_cpu", cpu_ms[True]),
                         ("_cpu_unbatched", cpu_ms[False])):
            out[f"cost_ratio{name}"] = {n: ms[n] / ms[1] for n in counts}
            out[f"added_object_ratio{name}"] = {n: (ms[n] - ms[1]) / (n - 1) / ms[1] for n in counts if n > 1}
    out["fps"] = {n: 1000.0 / ms for n, ms in step_ms.items()}
    return out


def _memory_growth(m, long_video: list[Frame]) -> dict:
    """Tracker and process memory growth per 1,000 frames over the second half of `long_video`,
    one object. Closes the tracker."""
    memory_frames = len(long_video) - 1
    m.attach(1, m.start(long_video[0], mask=seed_masks(1, *long_video[0].image.shape[:2])[0]))
    half = memory_frames // 2
    for f in long_video[1:half + 1]:
        m.step(f)
    bytes_half, rss_half = m.memory_bytes(), _rss()
    for f in long_video[half + 1:]:
        m.step(f)
    span = memory_frames - half
    figures = {
        "tracker_bytes_per_1000_frames": (m.memory_bytes() - bytes_half) / span * 1000,
        "rss_bytes_per_1000_frames": (_rss() - rss_half) / span * 1000,
        "tracker_bytes_at_end": m.memory_bytes(),
        "frames": memory_frames,
    }
    m.close()
    return figures


def _catch_up_ms(t, mask: np.ndarray, catch_up_frames: int, height: int, width: int) -> float:
    """Median time to advance a detached object through a frame nobody has encoded yet."""
    buffered = synthetic_frames(catch_up_frames + 1, height, width, start_seq=10_000)
    state = t.start(buffered[0], mask=mask)
    times = []
    for f in buffered[1:]:
        start = time.perf_counter()
        t.advance(state, f)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def _onnx_against_torch(t, pixel_values, path: Path, frames: int) -> dict:
    """The image encoder exported to ONNX and run through onnxruntime, against torch's."""
    import torch

    from steerseg_ros.tracking.sam2_encoder import OnnxEncoder, TorchEncoder, export_onnx

    start = time.perf_counter()
    export_onnx(t.model, path)
    export_s = time.perf_counter() - start
    runners = {"torch": TorchEncoder(t.model), "onnx": OnnxEncoder(path, torch.device("cpu"), torch.float32)}
    x = pixel_values.float().cpu()
    results, timing = {}, {}
    for name, run in runners.items():
        results[name] = run(x)
        timing[name] = _median_ms(lambda: run(x), max(3, frames // 3))
    return {"export_s": export_s, "torch_ms": timing["torch"], "onnx_ms": timing["onnx"],
            "max_abs_diff": max(float((a.float() - b.float()).abs().max())
                                for a, b in zip(results["torch"], results["onnx"]))}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from steerseg_testing.tiny_sam2 import REAL_BACKBONES

    p.add_argument("--config", default="tiny", choices=["tiny", *REAL_BACKBONES])
    p.add_argument("--image-size", type=int, default=None, help="model input size (64 tiny, 1024 real)")
    p.add_argument("--frames", type=int, default=30, help="timed frames per object count")
    p.add_argument("--objects", default="1,2,4,8", help="object counts to time")
    p.add_argument("--memory-frames", type=int, default=0, help="frames for the memory-growth runs")
    p.add_argument("--catch-up-frames", type=int, default=0)
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default="", help="also write the figures here")
    a = p.parse_args(argv)
    figures = bench_sam2(a.config, a.image_size, a.frames, [int(n) for n in a.objects.split(",")], a.memory_frames,
                         a.catch_up_frames, not a.no_onnx, device=a.device, dtype=a.dtype, threads=a.threads)
    print_figures(figures, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
