"""The node's resources over long runs, the node as its own process over DDS:
- memory: the node process's resident memory after 2,000 published masks minus after 200 (with
  re-grounding running); goal: < 20 MB.
- soak (not in the default run: `--sections soak`): 10,000 frames at camera rate with a command
  and periodic re-grounding, for each backend kind in `--soak-backends` (builtin; tiny: tiny
  random SAM2 + Qwen2.5-VL written by the tiny model builders): resident memory growth after the
  warm-up (goal < 10 MB), thread and file-descriptor counts (goal: flat after the warm-up) and the
  frame accounting on /diagnostics (received = processed + dropped + rejected once the camera
  stops). About 6 minutes per kind at 30 fps. Frames the node never received (a reliable
  keep-last publisher overwrites what a busy subscriber has not acknowledged) are the difference
  between frames_sent and received.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from steerseg_bench.common import command_for, flatten, load_sequence
from steerseg_bench.node import Camera, NodeRun, frame_accounting, tiny_model_params


# ---- memory --------------------------------------------------------------------------------------
def memory(args: argparse.Namespace) -> dict[str, Any]:
    from std_msgs.msg import String

    _, images, _ = load_sequence(args.data, args.sequence, args.frames)
    run = NodeRun(args, {"pipeline.regrounding_period_s": args.regrounding_period})
    samples: dict[int, float] = {}
    try:
        run.wait_up()
        run.commands.publish(String(data=command_for(args.data, args.sequence)))
        camera = Camera(run, images, args.camera_rate).start()
        deadline = time.monotonic() + args.memory_frames / 2.0 + 120
        checkpoints = [args.memory_start, args.memory_frames]
        while checkpoints and time.monotonic() < deadline:
            with run.lock:
                published = len(run.arrivals)
            if published >= checkpoints[0]:
                samples[checkpoints.pop(0)] = run.rss_mb()
            time.sleep(0.02)
        camera.stop()
        sent = camera.sent
    finally:
        run.close()
    if len(samples) < 2:
        raise RuntimeError(f"only {len(run.arrivals)} masks were published before the time limit")
    growth = samples[args.memory_frames] - samples[args.memory_start]
    return {"camera_fps": args.camera_rate, "frames_sent": sent,
            f"rss_mb_after_{args.memory_start}": round(samples[args.memory_start], 1),
            f"rss_mb_after_{args.memory_frames}": round(samples[args.memory_frames], 1),
            "rss_growth_mb": round(growth, 2), "goal_growth_under_20mb": growth < 20.0}


# ---- soak ----------------------------------------------------------------------------------------
def soak(args: argparse.Namespace) -> dict[str, Any]:
    _, images, _ = load_sequence(args.data, args.sequence, args.frames)
    command = command_for(args.data, args.sequence)
    out: dict[str, Any] = {"camera_fps": args.camera_rate, "regrounding_period_s": args.regrounding_period}
    for kind in [k.strip() for k in args.soak_backends.split(",") if k.strip()]:
        if kind == "builtin":
            params = {"grounder.backend": "builtin", "tracker.backend": "builtin"}
        elif kind == "tiny":
            params = tiny_model_params(Path(args.workdir) / "tiny_models")
        else:
            raise ValueError(f"--soak-backends: unknown kind {kind!r} (builtin, tiny)")
        print(f"[bench] soak {kind}: {args.soak_frames} frames at {args.camera_rate} fps", file=sys.stderr, flush=True)
        out[kind] = soak_run(args, params, images, command, args.soak_frames, args.soak_warmup,
                             args.soak_sample_every, tag=f"soak_{kind}")
        # Each kind takes minutes: show its figures at once.
        print(f"[bench] soak {kind}: {json.dumps(flatten(out[kind]))}", file=sys.stderr, flush=True)
    return out


def soak_run(args: argparse.Namespace, params: dict[str, Any], images: list[np.ndarray], command: str,
             frames: int, warmup: int, sample_every: int, tag: str = "soak") -> dict[str, Any]:
    """One node process fed `frames` frames at camera rate with `command` and periodic
    re-grounding: resources sampled every `sample_every` frames sent, and the frame accounting
    from /diagnostics once the camera has stopped and the counters have settled."""
    from std_msgs.msg import String

    run = NodeRun(args, {"pipeline.regrounding_period_s": args.regrounding_period, "stats_period_s": 1.0,
                         **params}, tag=tag)
    try:
        run.wait_up(timeout=300.0)
        run.commands.publish(String(data=command))
        camera = Camera(run, images, args.camera_rate).start()
        samples = _sample_resources(run, camera, frames, sample_every)
        counters = _settled_counters(run)
        sent = camera.sent
        with run.lock:
            tracked = sum(1 for _, _, states in run.arrivals if states)
    finally:
        run.close()
    return _soak_figures(samples, counters, sent, warmup, tracked, run.log_path)


def _sample_resources(run: NodeRun, camera: Camera, frames: int, sample_every: int) -> list[tuple[int, float, int, int]]:
    """(frames sent, rss MB, threads, fds) every `sample_every` frames until `frames` are sent,
    and once more after the camera has stopped."""
    samples: list[tuple[int, float, int, int]] = []
    while camera.sent < frames:
        if camera.sent >= len(samples) * sample_every:
            samples.append((camera.sent, *run.resources()))
        if run.process.poll() is not None:
            raise RuntimeError(f"the node exited with code {run.process.returncode}; see {run.log_path}")
        time.sleep(0.02)
    camera.stop()
    samples.append((camera.sent, *run.resources()))
    return samples


def _settled_counters(run: NodeRun, timeout: float = 120.0) -> dict[str, Any]:
    """The node's /diagnostics counters once they have settled: the node has taken the last frame
    and published diagnostics after it, seen as two equal reports in a row with nothing
    unaccounted (other counters may still move: a catch-up can run on through buffered frames)."""
    deadline, previous, counters = time.monotonic() + timeout, None, {}
    while time.monotonic() < deadline:
        time.sleep(1.5)
        with run.lock:
            counters = dict(run.diagnostics)
        accounting = frame_accounting(counters)
        if counters and accounting == previous and accounting["unaccounted"] == 0:
            break
        previous = accounting
    return counters


def _soak_figures(samples: list[tuple[int, float, int, int]], counters: dict[str, Any], sent: int, warmup: int,
                  tracked: int, log_path: Path) -> dict[str, Any]:
    after = [s for s in samples if s[0] >= warmup]
    if len(after) < 2:
        raise RuntimeError(f"too few samples after the warm-up of {warmup} frames")
    rss = [s[1] for s in after]
    threads = sorted({s[2] for s in after})
    fds = sorted({s[3] for s in after})
    # A straight line through the samples: growth that the last sample's noise does not decide.
    slope = float(np.polyfit([s[0] for s in after], rss, 1)[0]) * 1000
    accounting = frame_accounting(counters)
    return {
        "frames_sent": sent, "warmup_frames": warmup,
        "rss_mb_after_warmup": round(rss[0], 1), "rss_mb_end": round(rss[-1], 1),
        "rss_mb_max_after_warmup": round(max(rss), 1),
        "rss_growth_mb": round(rss[-1] - rss[0], 2), "rss_trend_mb_per_1000_frames": round(slope, 3),
        "rss_mb_series": " ".join(f"{r:.1f}" for r in rss),
        "threads_after_warmup": threads, "fds_after_warmup": fds,
        "threads_start": samples[0][2], "fds_start": samples[0][3],
        "accounting": accounting,
        "groundings": int(counters.get("pipeline.groundings", 0)),
        "groundings_without_target": int(counters.get("pipeline.groundings_empty", 0)),
        "grounding_failures": int(counters.get("pipeline.grounding_failures", 0)),
        "masks_published": int(counters.get("masks_published", 0)),
        "track_messages_with_a_track": tracked,
        "goal_growth_under_10mb": bool(rss[-1] - rss[0] < 10.0),
        "goal_threads_flat": len(threads) == 1, "goal_fds_flat": len(fds) == 1,
        "goal_no_frame_unaccounted": bool(counters) and accounting["unaccounted"] == 0,
        "log": str(log_path),
    }


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("memory and soak")
    group.add_argument("--memory-start", type=int, default=200)
    group.add_argument("--memory-frames", type=int, default=2000)
    group.add_argument("--soak-frames", type=int, default=10000, help="frames the soak sends per backend kind")
    group.add_argument("--soak-warmup", type=int, default=1000, help="soak frames before the first counted sample")
    group.add_argument("--soak-sample-every", type=int, default=250, help="soak frames between resource samples")
    group.add_argument("--soak-backends", default="builtin,tiny", help="soak backend kinds: builtin, tiny")
