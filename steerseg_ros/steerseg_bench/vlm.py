"""Latency of whole-keyframe-set grounding with the vision-language grounder, per stage.

Owns `bench_grounding` (a function the `steerseg-bench` tool calls; also runnable as
`python -m steerseg_bench.vlm`): it builds a random-weight model of the chosen
family and shape (the tiny test checkpoints, or Qwen2.5-VL-3B / -7B layer shapes with the depth
cut to fit a CPU), grounds a command on synthetic keyframes in each mode, and reports the median
time of every stage, the token counts, and peak memory. Random weights make the answers
meaningless but the work per stage is the real one (answers decode for at most the configured
number of tokens, so a random model's early or late end-of-sequence changes little).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from typing import Optional, Sequence

import numpy as np

SHAPES = ("tiny", "3b", "7b")


def synthetic_keyframes(count: int, height: int = 480, width: int = 854, seed: int = 0):
    """Keyframes of a textured scene with a square moving across it (Frame objects)."""
    from steerseg_ros.frame import Frame

    rng = np.random.default_rng(seed)
    background = rng.integers(40, 200, (height // 8, width // 8, 3), dtype=np.uint8)
    background = np.kron(background, np.ones((8, 8, 1), dtype=np.uint8))
    background = np.pad(background, ((0, height - background.shape[0]), (0, width - background.shape[1]), (0, 0)),
                        "edge")
    frames = []
    for i in range(count):
        image = background.copy()
        x = int((0.1 + 0.6 * i / max(1, count - 1)) * width)
        image[height // 3:height // 3 + height // 4, x:x + width // 6] = (220, 30, 30)
        frames.append(Frame(i, 1_000_000_000 + i * 200_000_000, image, "camera"))
    return frames


def _build(shape: str, family: str, num_layers: Optional[int], vision_depth: Optional[int], dtype: str,
           device: str, options: dict):
    """A VLMGrounder on a random-weight model: the tiny checkpoint through the loading code, or a
    real-shape model built in memory (saving gigabytes of random weights would only cost time)."""
    import torch

    from steerseg_testing import tiny_vlm as tiny_models
    from steerseg_ros.devices import resolve_device
    from steerseg_ros.grounding.vlm import VLMGrounder, VLMGrounderConfig, resolve_dtype
    from steerseg_ros.grounding.vlm_inputs import model_class_for, processor_class

    if shape == "tiny":
        folder = tempfile.mkdtemp(prefix="steerseg_vlm_bench_")
        tiny_models.build_tiny_checkpoint(folder, family, num_layers=num_layers or 4)
        return VLMGrounder(VLMGrounderConfig(model=folder, dtype=dtype, device=device, **options))
    if family != "qwen2_5_vl":
        raise ValueError("real-size shapes are Qwen2.5-VL's (3b, 7b)")
    tokenizer = tiny_models.build_tokenizer()
    config = (tiny_models.qwen2_5_vl_3b_config if shape == "3b" else tiny_models.qwen2_5_vl_7b_config)(
        num_layers=num_layers, vision_depth=vision_depth)
    for name, token in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]:
        setattr(config, name, tokenizer.convert_tokens_to_ids(token))
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    torch.manual_seed(0)
    model_cls = model_class_for(family)
    model = model_cls._from_config(config, dtype=torch_dtype, attn_implementation="sdpa").to(torch_device).eval()
    model.requires_grad_(False)
    processor = processor_class(family)(image_processor=tiny_models.image_processor_for(family),
                                        tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    name = "Qwen/Qwen2.5-VL-3B-Instruct" if shape == "3b" else "Qwen/Qwen2.5-VL-7B-Instruct"
    return VLMGrounder(VLMGrounderConfig(model=name, dtype=dtype, device=device, **options), model=model,
                       processor=processor)


def bench_grounding(family: str = "qwen2_5_vl", shape: str = "tiny", modes: Sequence[str] = ("decaf", "steerseg"),
                    keyframes: int = 8, repeats: int = 3, num_layers: Optional[int] = None,
                    vision_depth: Optional[int] = None, dtype: str = "auto", device: str = "auto",
                    video_tokens_per_pair: int = 400, frames_per_batch: int = 4, soft_tokens: int = 64,
                    image_size: tuple[int, int] = (480, 854), command: str = "the red box moving right",
                    frames=None) -> dict:
    """Ground `command` on `keyframes` synthetic frames (or `frames`, a list of Frame) `repeats`
    times per mode after one warm-up, and return a dict: the setup, the visual token counts, per
    mode the median seconds of each stage (and min/max of the total), and peak memory (process
    RSS in MB; CUDA peak where on a GPU)."""
    import torch

    from steerseg_ros.grounding.soft_prompts import SoftPrompts

    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}; expected one of {SHAPES}")
    # A trained model answers DecAF's questions in a few tokens and stops; random weights never
    # stop, and decoding the full 128-token budget would be timed instead of the grounding.
    options = dict(video_tokens_per_pair=video_tokens_per_pair, frames_per_batch=frames_per_batch, answer_tokens=4)
    start = time.perf_counter()
    grounder = _build(shape, family, num_layers, vision_depth, dtype, device, options)
    load_s = time.perf_counter() - start
    frames = frames if frames is not None else synthetic_keyframes(keyframes, *image_size)
    video, batches = grounder.prepare_inputs([f.image for f in frames])
    report = {
        "family": family, "shape": shape, "device": str(grounder.device),
        "dtype": str(next(grounder.model.parameters()).dtype).replace("torch.", ""),
        "decoder_layers": grounder.num_layers, "layer_start": grounder.layer_start,
        "vision_depth": int(grounder.model.config.vision_config.depth), "hidden_size": grounder.hidden_size,
        "keyframes": len(frames), "image_size": list(frames[-1].image.shape[:2]),
        "video_tokens": video.grids[0].num_tokens, "frame_tokens": batches[0].grids[0].num_tokens,
        "frames_per_batch": frames_per_batch, "build_s": round(load_s, 3), "torch_threads": torch.get_num_threads(),
        "modes": {},
    }
    if grounder.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for mode in modes:
        grounder.config.mode = grounder.name = mode
        grounder.soft_prompts = None
        if mode == "steerseg" and soft_tokens:
            grounder.soft_prompts = SoftPrompts.initialise(grounder.model.get_input_embeddings(), soft_tokens,
                                                           grounder.config.model, grounder.model_type)
        runs = []
        for i in range(repeats + 1):
            result = grounder.ground(frames, command)
            if i:  # the first run warms caches and allocators
                runs.append(result.timings)
        stages = sorted({k for r in runs for k in r})
        report["modes"][mode] = {
            "stages_s": {k: round(statistics.median(r.get(k, 0.0) for r in runs), 4) for k in stages},
            "total_min_s": round(min(r["total"] for r in runs), 4),
            "total_max_s": round(max(r["total"] for r in runs), 4),
            "points": len(result.points),
        }
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if grounder.device.type == "cuda":
        report["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    grounder.close()
    return report


def flat_figures(report: dict) -> dict:
    """`bench_grounding`'s report as one flat dict ("decaf.vision_s": ...), the form a
    steerseg-bench section returns."""
    flat = {k: v for k, v in report.items() if k != "modes"}
    for mode, figures in report["modes"].items():
        flat.update({f"{mode}.{stage}_s": value for stage, value in figures["stages_s"].items()})
        flat.update({f"{mode}.{k}": v for k, v in figures.items() if k != "stages_s"})
    return flat


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="qwen2_5_vl", choices=("qwen2_vl", "qwen2_5_vl", "qwen3_vl"))
    parser.add_argument("--shape", default="tiny", choices=SHAPES)
    parser.add_argument("--modes", default="decaf,steerseg")
    parser.add_argument("--keyframes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the shape's)")
    parser.add_argument("--vision-depth", type=int, default=None, help="vision blocks (default: the shape's)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--video-tokens", type=int, default=400)
    parser.add_argument("--frames-per-batch", type=int, default=4)
    parser.add_argument("--soft-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    report = bench_grounding(args.family, args.shape, args.modes.split(","), args.keyframes, args.repeats,
                             args.layers, args.vision_depth, args.dtype, args.device, args.video_tokens,
                             args.frames_per_batch, args.soft_tokens)
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
