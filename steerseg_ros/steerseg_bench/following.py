"""The following section: does the node keep following its object through occlusion, exits from
the view and a look-alike, and how fast does it find it again, at grounding latencies L of
camera time (issue 20). The scenes come from the DAVIS sequences (steerseg_ros.offline.
following_scenes: occluder, pan, distractor; all ten shared sequences by default, development
split blackswan, bmx-trees, breakdance, camel, car-shadow and held-out split cows, dog, goat,
kite-surf, parkour), each through the pipeline with the built-in tracker, grounding inline with
its answer landing L s after it was asked for (steerseg_ros.offline.following). Grounders:
`builtin`, `oracle:honest` (ground truth; says "not in view"), `oracle:attention` (ground truth;
peaks on the most object-like place when the object is hidden).

Prints the totals and per-scene tables, writes following.md/.json/_scenes.csv/_totals.csv/.png
under --following-out (default: <--out>/following, else out/following), and returns the totals
over all scenes and per split as figures. Goals (issue 20, built-in tracker, oracle, L = 0):
false following <= 5% of hidden frames; re-acquired within 1.5 s on >= 80% of episodes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from steerseg_bench.common import SectionSkipped
from steerseg_ros.offline.following import LATENCIES, QUICK_KEY, GrounderSpec, markdown, run_sweep, write_report
from steerseg_ros.offline.following_scenes import KINDS, SceneConfig, build_scenes
from steerseg_ros.streaming import backends
from steerseg_ros.streaming.pipeline import PipelineConfig

FIGURES = ("first_mask_s", "first_mask_in_time_share", "first_good_mask_s", "J&F", "J&F_answered",
           "false_following_share", "reacquisition_median_s", QUICK_KEY, "reacquired_in_time_share", "id_switches",
           "wrong_object_share")


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def following(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.data)
    if not (root / "JPEGImages" / "480p").is_dir():
        raise SectionSkipped(f"no DAVIS frames at {root} (give --data, the davis16 folder)")
    config = SceneConfig(fps=args.following_fps, duration_s=args.following_duration, width=args.following_width)
    grounders = [GrounderSpec.parse(g) for g in _list(args.following_grounders)]
    latencies = [float(x) for x in _list(args.following_latencies)]
    out = args.following_out or ((args.out / "following") if args.out is not None else Path("out/following"))
    scenes = build_scenes(root, _list(args.following_sequences), _list(args.following_kinds), config)
    tracker = backends.make_tracker("builtin")
    try:
        result = run_sweep(scenes, grounders, tracker, PipelineConfig(), latencies, out / "work",
                           progress=lambda line: print(f"[bench] following {line}", file=sys.stderr, flush=True))
    finally:
        tracker.close()
    files = write_report(result, out, {"scene_config": vars(config), "latencies": latencies,
                                       "grounders": [g.label for g in grounders], "tracker": "builtin"})
    print(markdown(result), file=sys.stderr, flush=True)
    figures: dict[str, Any] = {"scenes": len(scenes), "files": str(files["table"])}
    for t in result["totals"]:
        if t["group"] in ("all", "development", "held_out"):
            key = f"{t['grounder']}.L{t['latency_s']:g}.{t['group']}"
            figures[key] = {k: (round(t[k], 3) if isinstance(t[k], float) else t[k]) for k in FIGURES}
    return figures


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("following")
    group.add_argument("--following-sequences", default="all",
                       help="following: DAVIS sequences, or a split (development, held_out, all); comma-separated")
    group.add_argument("--following-kinds", default=",".join(KINDS), help="following: scene kinds")
    group.add_argument("--following-grounders", default="oracle:honest,oracle:attention,builtin",
                       help="following: builtin, oracle:honest, oracle:attention (comma-separated)")
    group.add_argument("--following-latencies", default=",".join(f"{x:g}" for x in LATENCIES),
                       help="following: grounding latencies L in seconds of camera time")
    group.add_argument("--following-width", type=int, default=0,
                       help="following: frame width in pixels (0: the source's 854; 427 runs about 3x faster)")
    group.add_argument("--following-fps", type=float, default=15.0, help="following: frame rate of the scenes")
    group.add_argument("--following-duration", type=float, default=12.0, help="following: seconds per scene (>= 10)")
    group.add_argument("--following-out", type=Path, default=None,
                       help="following: folder for its tables, CSVs, JSON and plot")

