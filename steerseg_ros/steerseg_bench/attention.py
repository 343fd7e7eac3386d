"""Benchmark of the attention capture + rollout (grounding/attention.py) against a materialising
reference, on random decoder layers with the real shapes of Qwen2.5-VL-3B and -7B.

The reference computes what DecAF's released code computes in the forward of each captured
layer: the full (B, H, L, L) fp32 attention from the layer's queries and keys, V-Max head
weights, and the running L x L product R <- A' R. The streaming rollout keeps the layers' queries
and keys and produces each layer's attention only in row blocks after the forward.

Each measurement runs in a fresh subprocess. Memory is the process's peak resident size
(Linux VmHWM, reset through /proc/self/clear_refs) with glibc told to return every large
block to the system at once, so the peak follows live tensors. Reported figures are the extra
peak over the same model's plain forward. Only the captured layers (l_s..last) are built: the
layers before l_s add forward compute common to both methods and nothing to the capture. The
MLPs are shrunk (intermediate size 256) for the same reason.

    python -m steerseg_bench.attention            # the full table (minutes)
    python -m steerseg_bench.attention --shapes qwen2.5-vl-3b --cases video --layers 4
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

SHAPES = {
    # decoder shapes of the real checkpoints; l_s per METHOD.md
    "qwen2.5-vl-3b": dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=2, num_hidden_layers=36,
                          layer_start=18),
    "qwen2.5-vl-7b": dict(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, num_hidden_layers=28,
                          layer_start=14),
}
# (batch, visual grid t x h x w in LLM tokens). Video: 16 frames = 8 frame pairs at 400 tokens;
# frames: 1,600 tokens per frame, 16 frames in 4 batches of 4 (one batch is measured).
CASES = {
    "video": dict(batch=1, grid=(8, 20, 20)),
    "frames": dict(batch=4, grid=(1, 40, 40)),
    # 2 frame pairs at 256 tokens: seconds on a CPU, for steerseg-bench's default run
    "tiny": dict(batch=1, grid=(2, 16, 16)),
}
REAL_CASES = ("video", "frames")
PREFIX_TEXT, SUFFIX_TEXT = 15, 45  # system prompt and question around the visual tokens
METHODS = ("streaming", "materialising")
MIB = 1024 ** 2


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


class _Peak:
    """The process's peak resident size over a span, with resets in between (a reset folds the
    peak so far into the span's)."""

    def __init__(self):
        self.span = 0.0

    def start(self) -> None:
        self.span = 0.0
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def fold(self) -> None:
        self.span = max(self.span, _status_mib("VmHWM"))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size

    def peak(self) -> float:
        return max(self.span, _status_mib("VmHWM"))


_PEAK = _Peak()


def _rollout_classes():
    import torch

    from steerseg_ros.grounding.attention import AttentionRollout

    class Timed:
        """Accumulates the time spent in the capturing attention function (beyond the model's
        own attention, which both methods run identically) and the largest transient memory
        peak inside one call."""

        capture_seconds = 0.0
        call_peak_mib = 0.0

        def _record(self, *args, **kwargs):
            before = _status_mib("VmRSS")
            _PEAK.fold()
            start = time.perf_counter()
            try:
                return super()._record(*args, **kwargs)
            finally:
                self.capture_seconds += time.perf_counter() - start
                self.call_peak_mib = max(self.call_peak_mib, _status_mib("VmHWM") - before)

    class Streaming(Timed, AttentionRollout):
        pass

    class Materialising(Timed, AttentionRollout):
        """DecAF's released rollout: everything as full matrices, layer by layer in the forward."""

        rollout = None

        def _keep(self, layer, query, key):
            groups = query.shape[1] // key.shape[1]
            length = query.shape[2]
            q = query.float()
            k = key.float().repeat_interleave(groups, dim=1)
            attention = torch.matmul(q, k.transpose(2, 3)) * layer.scaling
            causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
            attention = torch.softmax(attention.masked_fill(~causal, float("-inf")), dim=-1)
            visual = self._visual_mask[0].nonzero().flatten()
            first, last = int(visual[0]), int(visual[-1])
            head_weights = attention[:, :, :, first:last + 1].amax(dim=-1).mean(dim=-1)
            head_weights = head_weights / head_weights.amax(dim=-1, keepdim=True)
            weighted = (attention * head_weights[:, :, None, None]).mean(dim=1)
            del attention
            eye = torch.eye(length)[None]
            layer_matrix = weighted * (1 - self.config.residual) + eye * self.config.residual
            self.rollout = layer_matrix if self.rollout is None else torch.matmul(layer_matrix, self.rollout)

        def last_row(self):
            if self._row is None:
                self._row = self.rollout[:, -1].clone()
                self.rollout = None
            return self._row

    return {"streaming": Streaming, "materialising": Materialising}


def _inputs(hidden: int, batch: int, grid: tuple[int, int, int], dtype):
    """Random embeddings with Qwen's M-RoPE position ids (text, t x h x w grid, text)."""
    import torch

    t, h, w = grid
    visual = t * h * w
    length = PREFIX_TEXT + 1 + visual + 1 + SUFFIX_TEXT
    positions = torch.zeros(3, length, dtype=torch.long)
    positions[:, :PREFIX_TEXT + 1] = torch.arange(PREFIX_TEXT + 1)
    start = PREFIX_TEXT + 1
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    positions[:, start:start + visual] = torch.stack([tt.flatten(), hh.flatten(), ww.flatten()]) + start
    after = int(positions[:, start:start + visual].max()) + 1
    positions[:, start + visual:] = torch.arange(after, after + 1 + SUFFIX_TEXT)
    visual_mask = torch.zeros(batch, length, dtype=torch.bool)
    visual_mask[:, start:start + visual] = True
    generator = torch.Generator().manual_seed(1)
    embeds = torch.randn(batch, length, hidden, generator=generator).to(dtype)
    return embeds, positions[:, None].expand(3, batch, length), visual_mask


def _model(shape: dict, layers: int, dtype):
    """Random captured decoder layers of the shape (MLPs shrunk: they add nothing to the capture)."""
    import torch
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    torch.manual_seed(0)
    config = Qwen2_5_VLTextConfig(
        hidden_size=shape["hidden_size"], num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"], num_hidden_layers=layers,
        intermediate_size=256, vocab_size=256, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
    config._attn_implementation = "sdpa"
    return Qwen2_5_VLTextModel(config).to(dtype).eval()


def _measured(fn):
    """(fn's result, seconds, the process's peak resident MiB during the call)."""
    _PEAK.start()
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start, _PEAK.peak()


def _worker(spec: dict) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    from steerseg_ros.grounding.attention import RolloutConfig

    shape = SHAPES[spec["shape"]]
    dtype = getattr(torch, spec["dtype"])
    model = _model(shape, spec["layers"], dtype)
    embeds, positions, visual_mask = _inputs(shape["hidden_size"], spec["batch"], tuple(spec["grid"]), dtype)
    rollout_cls = _rollout_classes()[spec["method"]]

    def forward():
        return model(inputs_embeds=embeds, position_ids=positions, use_cache=False)

    def captured_forward():
        with rollout.capture(visual_mask):
            return forward()

    with torch.no_grad():
        model(inputs_embeds=embeds[:, :64], position_ids=positions[:, :, :64], use_cache=False)  # warm-up
        gc.collect()
        base = _status_mib("VmRSS")
        out, plain_seconds, plain_peak = _measured(forward)
        plain_peak -= base
        del out
        gc.collect()

        rollout = rollout_cls(model, RolloutConfig(layer_start=0, block_rows=spec["block_rows"]))
        base = _status_mib("VmRSS")
        out, forward_seconds, forward_peak = _measured(captured_forward)
        forward_peak -= base
        del out
        gc.collect()
        held = _status_mib("VmRSS") - base  # what the method keeps between forward and rollout
        stored = sum(t.numel() * t.element_size() for layer in rollout._captured
                     for t in (layer.queries, layer.keys) if t is not None) / MIB
        before = _status_mib("VmRSS")
        row, rollout_seconds, rollout_peak = _measured(rollout.last_row)
        rollout_peak -= before
        total_peak = max(forward_peak, before - base + rollout_peak)

    if spec.get("row_file"):
        torch.save(row, spec["row_file"])
    return dict(
        spec, length=embeds.shape[1], threads=torch.get_num_threads(),
        plain_forward_s=plain_seconds, plain_forward_peak_mib=plain_peak,
        capture_s=rollout.capture_seconds, rollout_s=rollout_seconds,
        capture_rollout_s=rollout.capture_seconds + rollout_seconds,
        captured_forward_s=forward_seconds, held_after_forward_mib=held, stored_qk_mib=stored,
        capture_call_transient_mib=rollout.call_peak_mib, rollout_transient_mib=rollout_peak,
        # the method's own peak: what it holds after the forward plus the larger of its transients
        own_peak_mib=held + max(rollout.call_peak_mib, rollout_peak),
        extra_peak_mib=total_peak - plain_peak)


def _run_worker(spec: dict) -> dict:
    env = dict(os.environ)
    # Every block above 64 KiB is its own mapping and goes back to the system when freed, so the
    # resident size follows the live tensors.
    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    result = subprocess.run([sys.executable, "-m", "steerseg_bench.attention", "--worker", json.dumps(spec)],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {spec}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _reference_estimate_gib(shape: dict, batch: int, length: int) -> float:
    """The materialising reference's peak: two (B, H, L, L) fp32 tensors alive at once."""
    return 2 * batch * shape["num_attention_heads"] * length ** 2 * 4 / 1024 ** 3


def bench_rollout(shapes: Sequence[str] = tuple(SHAPES), cases: Sequence[str] = REAL_CASES,
                  layers: Optional[int] = None, dtype: str = "bfloat16", block_rows: int = 256,
                  max_reference_gib: float = 8.0, methods: Sequence[str] = METHODS, progress=None) -> dict:
    """Peak memory and time of capture + rollout, streaming vs materialising reference.

    layers: captured layers to build (default: all of l_s..last, 18 for 3B and 14 for 7B).
    Where the reference would need more than `max_reference_gib`, it is measured with fewer
    visual tokens and its extra peak scaled by (L / L')^2 and its time by (L / L')^3 (its L x L
    matrix products), marked `extrapolated_from_length`.
    Returns {"rows": [...one dict per shape, case, method...], "summary": [...one per shape and case
    where both methods ran...]}.
    """
    rows, summary = [], []
    with tempfile.TemporaryDirectory() as folder:
        for shape_name in shapes:
            shape = SHAPES[shape_name]
            captured = layers or shape["num_hidden_layers"] - shape["layer_start"]
            for case_name in cases:
                case = CASES[case_name]
                t, h, w = case["grid"]
                length = PREFIX_TEXT + 2 + t * h * w + SUFFIX_TEXT
                pair = {}
                for method in methods:
                    spec = dict(shape=shape_name, case=case_name, method=method, layers=captured, dtype=dtype,
                                block_rows=block_rows, batch=case["batch"], grid=[t, h, w],
                                row_file=str(Path(folder) / f"{shape_name}-{case_name}-{method}.pt"))
                    pair[method] = result = _measure_method(spec, shape, length, max_reference_gib, progress)
                    rows.append(result)
                if len(pair) == 2:
                    summary.append(_compare(pair, shape_name, case_name, case["batch"], length, captured))
    return {"rows": rows, "summary": summary}


def _measure_method(spec: dict, shape: dict, length: int, max_reference_gib: float, progress) -> dict:
    """One method on one shape and case, in a worker process; a reference that would not fit
    `max_reference_gib` is measured on fewer visual tokens and scaled up to `length`."""
    t, h, w = spec["grid"]
    if spec["method"] == "materialising":
        estimate = _reference_estimate_gib(shape, spec["batch"], length)
        if estimate > max_reference_gib:
            scale = (max_reference_gib / estimate) ** 0.5
            spec["grid"] = [t, max(2, int(h * scale)), w]
            spec["row_file"] = None
    if progress:
        progress(f"{spec['shape']} {spec['case']} {spec['method']} ...")
    result = _run_worker(spec)
    if result["length"] != length:
        factor = length / result["length"]
        result["extrapolated_from_length"] = result["length"]
        result["length"] = length
        for key in ("own_peak_mib", "extra_peak_mib", "held_after_forward_mib",
                    "capture_call_transient_mib", "rollout_transient_mib"):
            result[key] *= factor ** 2
        for key in ("capture_s", "rollout_s", "capture_rollout_s"):
            result[key] *= factor ** 3
    if progress:
        progress(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}))
    return result


def _compare(pair: dict, shape_name: str, case_name: str, batch: int, length: int, captured: int) -> dict:
    stream, reference = pair["streaming"], pair["materialising"]
    entry = dict(shape=shape_name, case=case_name, batch=batch, length=length, layers=captured,
                 memory_ratio=reference["own_peak_mib"] / max(stream["own_peak_mib"], 1e-9),
                 process_memory_ratio=reference["extra_peak_mib"] / max(stream["extra_peak_mib"], 1e-9),
                 time_ratio=stream["capture_rollout_s"] / reference["capture_rollout_s"])
    if reference.get("row_file") and stream.get("row_file"):
        import torch

        entry["max_abs_row_diff"] = float(
            (torch.load(stream["row_file"]) - torch.load(reference["row_file"])).abs().max())
    return entry


def format_table(result: dict) -> str:
    lines = ["| shape | case | B x L | layers | method | own peak MiB | held after forward | capture-call transient | "
             "rollout transient | process extra peak | capture s | rollout s | capture+rollout s | plain forward s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        note = f" (extrap. from L={r['extrapolated_from_length']})" if "extrapolated_from_length" in r else ""
        lines.append(f"| {r['shape']} | {r['case']} | {r['batch']} x {r['length']} | {r['layers']} | {r['method']}{note} | "
                     f"{r['own_peak_mib']:.0f} | {r['held_after_forward_mib']:.0f} | "
                     f"{r['capture_call_transient_mib']:.0f} | {r['rollout_transient_mib']:.0f} | "
                     f"{r['extra_peak_mib']:.0f} | {r['capture_s']:.2f} | {r['rollout_s']:.2f} | "
                     f"{r['capture_rollout_s']:.2f} | {r['plain_forward_s']:.2f} |")
    lines += ["", "| shape | case | own peak: reference / streaming | process extra peak: reference / streaming | "
              "time: streaming / reference | max abs row diff |", "|---|---|---|---|---|---|"]
    for s in result["summary"]:
        diff = f"{s['max_abs_row_diff']:.1e}" if "max_abs_row_diff" in s else "n/a"
        lines.append(f"| {s['shape']} | {s['case']} | {s['memory_ratio']:.1f}x | {s['process_memory_ratio']:.1f}x | "
                     f"{s['time_ratio']:.2f}x | {diff} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--cases", nargs="+", default=list(REAL_CASES), choices=list(CASES))
    parser.add_argument("--layers", type=int, default=None, help="captured layers to build (default: l_s..last)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--block-rows", type=int, default=256)
    parser.add_argument("--max-reference-gib", type=float, default=8.0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    result = bench_rollout(args.shapes, args.cases, args.layers, args.dtype, args.block_rows, args.max_reference_gib,
                           args.methods, progress=lambda message: print(message, file=sys.stderr, flush=True))
    result["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(format_table(result))
    print(f"\nuptime: {result['uptime']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
