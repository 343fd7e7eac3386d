"""Measure the built-in tracker on DAVIS 2016 (a measurement, not a test).

Each sequence: FlowTracker is seeded with the first frame's ground-truth mask and tracks to the
last frame; J, F and J&F follow the DAVIS semi-supervised protocol (first and last frames left
out). Then the time per `step` at the data's 854x480, and the per-frame cost with 1, 2 and 4
live objects (the extra objects are copies of the same seed: the flow is shared, the per-object
work is the same as for distinct objects of that size).

`--segment` also measures `segment` (masks from one click, no learned model): the point of
each sequence's first and middle ground-truth mask farthest from its edge, J of the top
candidate and of the best candidate.

    python -m steerseg_bench.davis_tracker [--davis DIR] [--sequences blackswan dog ...]
        [--segment] [--no-timing] [--set name=value ...]   (FlowTrackerConfig fields, for ablations)

The measurement itself lives in steerseg_bench/tracker.py (also `steerseg-bench
--sections tracker`, which reports the same figures in the common table); this script prints
them per sequence and adds the ablation and `segment` options.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from steerseg_ros.frame import Frame
from steerseg_ros.offline.metrics import region_j, score_object, summarize
from steerseg_bench.tracker import track_sequence
from steerseg_testing.davis import davis_root, load_sequence
from steerseg_ros.tracking.flow import FlowTracker, FlowTrackerConfig


def measure_segment(config: FlowTrackerConfig, root: Path, sequences: list[str]) -> None:
    tracker = FlowTracker(config)
    top, best, times = [], [], []
    for seq in sequences:
        _, images, masks = load_sequence(root, seq)
        for i in (0, len(images) // 2):
            dist = cv2.distanceTransform(masks[i].astype(np.uint8), cv2.DIST_L2, 5)
            y, x = np.unravel_index(np.argmax(dist), dist.shape)
            t0 = time.perf_counter()
            candidates = tracker.segment(Frame(i, 0, images[i]), np.array([[x, y]], np.float32), np.array([1]))
            times.append(time.perf_counter() - t0)
            js = [region_j(c.mask, masks[i]) for c in candidates] or [0.0]
            top.append(js[0])
            best.append(max(js))
    print(f"segment() from one interior point, {len(top)} frames: J of the top candidate {100 * np.mean(top):.1f}, "
          f"of the best candidate {100 * np.mean(best):.1f}; median {1000 * np.median(times):.0f} ms per call")


def time_objects(config: FlowTrackerConfig, root: Path, sequence: str) -> None:
    """Per-frame cost against the number of live objects (1, 2, 4) on `sequence`: the copies of
    the seed share the flow, as distinct objects do, and cost what an object that size costs."""
    _, images, masks = load_sequence(root, sequence)
    base = None
    for n in (1, 2, 4):
        _, w, c, _ = track_sequence(config, images, masks, n_objects=n)
        med = 1000 * np.median(w)
        base = base or med
        extra = f" (+{(med - base) / (n - 1):.1f} ms per added object)" if n > 1 else ""
        print(f"{n} live object(s) on {sequence}: wall median {med:.1f} ms/frame{extra}; "
              f"process CPU median {1000 * np.median(c):.1f} ms")


def parse_overrides(items: list[str]) -> dict:
    values = {}
    for item in items:
        name, _, text = item.partition("=")
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[name] = text
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--davis", type=Path, default=Path(os.environ.get("STEERSEG_DAVIS", davis_root())),
                        help="DAVIS 2016 folder (JPEGImages/480p, Annotations/480p)")
    parser.add_argument("--sequences", nargs="*", help="sequence names (default: all in the folder)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="FlowTrackerConfig overrides, for ablations")
    parser.add_argument("--no-timing", action="store_true", help="skip the 1/2/4-object timing runs")
    parser.add_argument("--segment", action="store_true", help="also measure segment() from one click")
    args = parser.parse_args(argv)

    root = args.davis
    if not (root / "JPEGImages" / "480p").is_dir():
        print(f"no DAVIS data at {root}", file=sys.stderr)
        return 1
    sequences = args.sequences or sorted(p.name for p in (root / "JPEGImages" / "480p").iterdir() if p.is_dir())
    config = FlowTrackerConfig(**parse_overrides(args.set))
    config.validate()
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if getattr(config, f.name) != getattr(FlowTrackerConfig(), f.name)}
    print(f"FlowTracker, OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads; config changes: {changed or 'none'}")

    scores, all_wall, all_cpu = [], [], []
    print(f"{'sequence':<12} {'frames':>6} {'J':>6} {'F':>6} {'J&F':>6} {'ms med':>7} {'score med':>9} {'min':>5}")
    for seq in sequences:
        _, images, masks = load_sequence(root, seq)
        preds, wall, cpu, conf = track_sequence(config, images, masks)
        s = score_object(seq, 1, preds, masks, skip_first_last=True)
        scores.append(s)
        all_wall.append(wall)
        all_cpu.append(cpu)
        print(f"{seq:<12} {len(images):>6} {100 * s.j:6.1f} {100 * s.f:6.1f} {100 * s.jf:6.1f} "
              f"{1000 * np.median(wall):7.1f} {np.median(conf):9.2f} {conf.min():5.2f}", flush=True)
    summary = summarize(scores)
    wall, cpu = np.concatenate(all_wall), np.concatenate(all_cpu)
    print(f"{'mean':<12} {'':>6} {100 * summary['J']:6.1f} {100 * summary['F']:6.1f} {100 * summary['J&F']:6.1f}")
    # Process CPU time counts OpenCV's worker threads too; on a shared machine it moves less
    # with the load than wall time does.
    print(f"step time over {len(wall)} frames at {images[0].shape[1]}x{images[0].shape[0]}: "
          f"wall median {1000 * np.median(wall):.1f} ms, p90 {1000 * np.percentile(wall, 90):.1f} ms; "
          f"process CPU median {1000 * np.median(cpu):.1f} ms, p90 {1000 * np.percentile(cpu, 90):.1f} ms")

    if not args.no_timing:
        time_objects(config, root, sequences[0])
    if args.segment:
        measure_segment(config, root, sequences)
    print("load average (1, 5, 15 min):", " ".join(f"{x:.2f}" for x in os.getloadavg()),
          f"on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
