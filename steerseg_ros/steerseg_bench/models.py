"""The model and tracker sections of steerseg-bench: rollout, grounding, sam2, tracker.

Each section calls the benchmark its stage owns and flattens the result into figures:
- rollout (attention.py): attention capture + streaming rollout against the
  materialising reference; goal: >= 10x less peak memory at <= 1.2x the time.
- grounding (vlm.py): whole grounding latency per mode (decaf, steerseg) on 8 and
  16 keyframes of 854x480.
- sam2 (sam2.py): SAM2 step time for 1/2/4/8 objects (batched and one by one) and
  the per-added-object cost ratio (goal <= 0.4), its parts, memory growth per 1,000 frames with
  and without pruning, catch-up time per buffered frame; then (sam2_meta.py)
  transformers' and Meta's SAM2 side by side on the same weights: step time for 1/2/4 objects
  and memory over 1,000 frames, and Meta's compiled mode on CUDA.
- tracker (tracker.py): the built-in tracker's J&F on DAVIS 2016 and its step time at
  854x480; goal: <= 30 ms per frame.

By default the models are tiny random-weight configs (the whole run takes minutes on a CPU);
`--real-size` switches to random weights in the real layer shapes (Qwen2.5-VL-3B and -7B,
SAM2.1 tiny, small, base-plus and large at 1024 px), which is what the goals are stated for.
"""
from __future__ import annotations

import argparse
from typing import Any

from steerseg_bench.common import SectionSkipped, flatten

ROLLOUT_MEMORY_GOAL = 10.0  # reference peak / streaming peak, at least
ROLLOUT_TIME_GOAL = 1.2  # streaming time / reference time, at most


def rollout(args: argparse.Namespace) -> dict[str, Any]:
    from steerseg_bench.attention import REAL_CASES, SHAPES, bench_rollout

    # The benchmark measures process resident memory in subprocesses, so it runs on the CPU
    # whatever --device says; the device is reported with the figures.
    if args.real_size:
        shapes, cases, layers = tuple(SHAPES), REAL_CASES, args.rollout_layers
    else:
        shapes, cases, layers = ("qwen2.5-vl-3b",), ("tiny",), args.rollout_layers or 2
    result = bench_rollout(shapes, cases, layers=layers)
    out: dict[str, Any] = {"device": "cpu", "goal_memory_ratio_min": ROLLOUT_MEMORY_GOAL,
                           "goal_time_ratio_max": ROLLOUT_TIME_GOAL}
    for row in result["rows"]:
        key = f"{row['shape']}.{row['case']}.{row['method']}"
        out[f"{key}.length"] = row["length"]
        out[f"{key}.layers"] = row["layers"]
        out[f"{key}.own_peak_mib"] = round(row["own_peak_mib"], 1)
        out[f"{key}.extra_peak_mib"] = round(row["extra_peak_mib"], 1)
        out[f"{key}.capture_rollout_s"] = round(row["capture_rollout_s"], 4)
        if "extrapolated_from_length" in row:
            out[f"{key}.extrapolated_from_length"] = row["extrapolated_from_length"]
    for s in result["summary"]:
        key = f"{s['shape']}.{s['case']}"
        out[f"{key}.memory_ratio"] = round(s["memory_ratio"], 2)
        out[f"{key}.time_ratio"] = round(s["time_ratio"], 3)
        if "max_abs_row_diff" in s:
            out[f"{key}.max_abs_row_diff"] = s["max_abs_row_diff"]
        out[f"{key}.goal_met"] = bool(s["memory_ratio"] >= ROLLOUT_MEMORY_GOAL and s["time_ratio"] <= ROLLOUT_TIME_GOAL)
    if not args.real_size:
        out["note"] = "tiny case: the goals are stated for --real-size (Qwen2.5-VL-3B/7B, 16 frames)"
    return out


def grounding(args: argparse.Namespace) -> dict[str, Any]:
    from steerseg_bench.vlm import bench_grounding, flat_figures

    shapes = ("3b", "7b") if args.real_size else ("tiny",)
    keyframe_counts = [int(k) for k in args.grounding_keyframes.split(",")]
    out: dict[str, Any] = {}
    for shape in shapes:
        for count in keyframe_counts:
            report = bench_grounding(args.grounding_family if shape == "tiny" else "qwen2_5_vl", shape,
                                     keyframes=count, repeats=args.grounding_repeats,
                                     num_layers=args.grounding_layers, vision_depth=args.grounding_vision_depth,
                                     dtype="bfloat16" if args.real_size else "auto",
                                     device=args.device)
            out.update({f"{shape}.{count}kf.{k}": v for k, v in flat_figures(report).items()})
    return out


def sam2(args: argparse.Namespace) -> dict[str, Any]:
    from steerseg_bench.sam2 import bench_sam2

    from steerseg_testing.tiny_sam2 import REAL_BACKBONES

    configs = args.sam2_configs.split(",") if args.sam2_configs else (
        list(REAL_BACKBONES) if args.real_size else ["tiny"])
    out: dict[str, Any] = {}
    for config in configs:
        figures = bench_sam2(config, image_size=args.sam2_image_size, frames=args.sam2_frames,
                             objects=[int(n) for n in args.sam2_objects.split(",")],
                             memory_frames=args.sam2_memory_frames, frame_size=(480, 854), device=args.device,
                             onnx=not args.sam2_no_onnx, threads=args.sam2_threads)
        figures.pop("load_average", None)  # the machine record has it
        out.update(flatten(figures, config))
        out.update(_sam2_backends(args, config))
    return out


def _sam2_backends(args: argparse.Namespace, config: str) -> dict[str, Any]:
    """transformers' and Meta's SAM2 side by side on the same shapes (sam2_meta.py),
    when Meta's sam2 is installed."""
    import importlib.util

    if args.sam2_no_meta:
        return {}
    if importlib.util.find_spec("sam2") is None:
        return {f"{config}.backends": "not measured: Meta's sam2 is not installed (scripts/setup_env.sh installs it)"}
    from steerseg_bench.sam2_meta import bench_backends

    figures = bench_backends(config, frames=args.sam2_frames, memory_frames=args.sam2_memory_frames,
                             frame_size=(480, 854), device=args.device)
    figures.pop("load_average", None)
    return flatten(figures, f"{config}.backends")


def tracker(args: argparse.Namespace) -> dict[str, Any]:
    from steerseg_bench.tracker import bench_tracker, list_sequences

    available = list_sequences(args.data)
    if not available:
        raise SectionSkipped(f"no DAVIS 2016 data at {args.data} (give --data)")
    wanted = args.tracker_sequences
    if wanted is None:
        sequences = available
    elif wanted.isdigit():
        sequences = available[:int(wanted)]
    else:
        sequences = [s.strip() for s in wanted.split(",") if s.strip()]
    out = bench_tracker(args.data, sequences, args.tracker_frames)
    if args.tracker_frames is not None:
        out["note"] = f"first {args.tracker_frames} frames per sequence: J&F not comparable with full sequences"
    return out


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and tracker sections")
    group.add_argument("--rollout-layers", type=int, default=None,
                       help="captured decoder layers to build; None: 2 tiny, l_s..last with --real-size")
    group.add_argument("--grounding-family", default="qwen2_5_vl", choices=("qwen2_vl", "qwen2_5_vl", "qwen3_vl"),
                       help="model family of the tiny grounding model (real size is Qwen2.5-VL)")
    group.add_argument("--grounding-keyframes", default="8,16", help="keyframe counts, comma-separated")
    group.add_argument("--grounding-repeats", type=int, default=1, help="timed groundings per mode (after a warm-up)")
    group.add_argument("--grounding-layers", type=int, default=None,
                       help="decoder layers of the grounding model; None: the shape's (cut it for a CPU)")
    group.add_argument("--grounding-vision-depth", type=int, default=None,
                       help="vision blocks of the grounding model; None: the shape's")
    group.add_argument("--sam2-configs", default=None,
                       help="comma-separated, of tiny, sam2.1-tiny, -small, -base-plus, -large; "
                            "None: tiny, all four real ones with --real-size")
    group.add_argument("--sam2-frames", type=int, default=10, help="timed frames per object count")
    group.add_argument("--sam2-memory-frames", type=int, default=0,
                       help="frames of each memory-growth run; 0: 10 x --sam2-frames tiny, 40 real")
    group.add_argument("--sam2-objects", default="1,2,4,8", help="live object counts to time, comma-separated")
    group.add_argument("--sam2-image-size", type=int, default=None,
                       help="model input size (a multiple of 64); None: 64 tiny, 1024 real (cut it for a CPU)")
    group.add_argument("--sam2-threads", type=int, default=0,
                       help="torch threads for the sam2 section (0: torch's default); 1 makes its CPU-time "
                            "figures (step_cpu_ms, *_cpu ratios) steady on a shared machine")
    group.add_argument("--sam2-no-onnx", action="store_true", help="skip the ONNX encoder comparison")
    group.add_argument("--sam2-no-meta", action="store_true",
                       help="skip the side-by-side run of transformers' and Meta's SAM2 (and Meta's compiled mode on CUDA)")
    group.add_argument("--tracker-sequences", default=None,
                       help="DAVIS sequences for the tracker: a count (the first N) or comma-separated names; "
                            "None: all")
    group.add_argument("--tracker-frames", type=int, default=None, help="first N frames of each sequence; None: all")
