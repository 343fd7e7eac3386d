"""The grounding_rate section: the node as its own process over DDS, fed a camera at a fixed rate,
with a command re-grounded periodically: the rate of published masks while a grounding runs, as
a share of the rate while none runs; goal: >= 90%. For each of `--grounding-backends` (builtin;
tiny: a tiny random Qwen2.5-VL with DecAF) and each of `--grounding-setups`: in_process (the
tracker node grounds in a thread) and two_nodes (a grounder node in its own process answers the
tracker node's Ground requests: also the bytes and milliseconds per request); and the time from
the command to the first mask of the target.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from steerseg_bench.common import command_for, load_sequence
from steerseg_bench.node import Camera, NodeRun, tiny_model_params


def grounding_rate(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in [k.strip() for k in args.grounding_backends.split(",") if k.strip()]:
        if kind == "builtin":
            params: dict[str, Any] = {"grounder.backend": "builtin"}
        elif kind == "tiny":
            # The tiny random Qwen2.5-VL grounder (DecAF) with the built-in tracker: the cost of a
            # VLM grounding beside the tracking, on this machine's scale.
            tiny = tiny_model_params(Path(args.workdir) / "tiny_models")
            params = {k: v for k, v in tiny.items() if k.startswith(("grounder.", "pipeline."))}
        else:
            raise ValueError(f"--grounding-backends: unknown kind {kind!r} (builtin, tiny)")
        for setup in [x.strip() for x in args.grounding_setups.split(",") if x.strip()]:
            if setup not in ("in_process", "two_nodes"):
                raise ValueError(f"unknown grounding setup {setup!r}: in_process or two_nodes")
            out[f"{kind}.{setup}"] = _grounding_rate(args, params, grounder_node=setup == "two_nodes")
            print(f"[bench] grounding_rate {kind} {setup}: {json.dumps(out[f'{kind}.{setup}'])}", file=sys.stderr,
                  flush=True)
    return out


def _grounding_rate(args: argparse.Namespace, params: dict[str, Any], grounder_node: bool) -> dict[str, Any]:
    from std_msgs.msg import String

    _, images, _ = load_sequence(args.data, args.sequence, args.frames)
    run = NodeRun(args, {"pipeline.regrounding_period_s": args.regrounding_period, **params},
                  tag="two_nodes" if grounder_node else "in_process", grounder_node=grounder_node)
    try:
        run.wait_up()
        camera = Camera(run, images, args.camera_rate).start()
        time.sleep(0.5)
        commanded = time.monotonic()
        run.commands.publish(String(data=command_for(args.data, args.sequence)))
        time.sleep(args.duration)
        camera.stop()
        time.sleep(1.5)
        with run.lock:
            arrivals = list(run.arrivals)
            diagnostics = dict(run.diagnostics)
    finally:
        run.close()
    first_track = next((i for i, (_, _, states) in enumerate(arrivals) if states), None)
    if first_track is None:
        raise RuntimeError(f"no track was ever published; see {run.log_path}")
    figures = {"camera_fps": args.camera_rate, "seconds": args.duration, "frames_sent": camera.sent,
               "masks_published": len(arrivals), **_rates(arrivals[first_track:]),
               "command_to_first_mask_s": round(arrivals[first_track][0] - commanded, 3)}
    if grounder_node:
        figures.update({"request_kb": round(int(diagnostics.get("remote.last_request_bytes", 0)) / 1e3, 1),
                        "request_ms": round(1e3 * float(diagnostics.get("remote.last_latency_s", "nan")), 1),
                        "requests": int(diagnostics.get("remote.requests", 0))})
    return figures


def _rates(arrivals: list[tuple[float, int, list[int]]]) -> dict[str, Any]:
    """Mask rates while grounding and otherwise, from the arrivals since the first track.

    Each gap between two published masks counts towards what the node was doing when the later
    one came out: grounding (a track is REGROUNDING) or not. Before the first track exists there
    is nothing to compare, so that phase is left out."""
    from steerseg_ros.streaming.pipeline import TrackState

    busy_n = free_n = 0
    busy_s = free_s = 0.0
    groundings = 0
    was_busy = False
    for (t_prev, _, _), (t, _, states) in zip(arrivals, arrivals[1:]):
        busy = any(s == TrackState.REGROUNDING for s in states)
        groundings += busy and not was_busy
        was_busy = busy
        if busy:
            busy_n, busy_s = busy_n + 1, busy_s + (t - t_prev)
        else:
            free_n, free_s = free_n + 1, free_s + (t - t_prev)
    rate_busy = busy_n / busy_s if busy_s else float("nan")
    rate_free = free_n / free_s if free_s else float("nan")
    share = rate_busy / rate_free if free_s and busy_s else float("nan")
    return {"groundings_seen": groundings,
            "seconds_grounding": round(busy_s, 2), "seconds_not_grounding": round(free_s, 2),
            "mask_fps_while_grounding": round(rate_busy, 2), "mask_fps_otherwise": round(rate_free, 2),
            "share_while_grounding": round(share, 4), "goal_share_at_least_90pct": bool(share >= 0.9)}


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("grounding_rate")
    group.add_argument("--duration", type=float, default=40.0, help="seconds of camera for grounding_rate")
    group.add_argument("--grounding-backends", default="builtin,tiny",
                       help="grounding_rate: builtin (the built-in grounder) and/or tiny (a tiny random "
                            "Qwen2.5-VL, DecAF)")
    group.add_argument("--grounding-setups", default="in_process,two_nodes",
                       help="grounding_rate: in_process (grounding in a thread of the tracker node) and/or "
                            "two_nodes (a grounder node in its own process)")
