"""Measure a grounder on DAVIS 2016 with the project's commands (a measurement, not a test).

For each sequence and each command in expressions.json (kinds: referring, reasoning) the
grounder runs on `--frames` uniformly spaced frames, and the figures are:
  point: the best point prompt lies inside the ground-truth mask of its keyframe (share of
      commands);
  peak: per keyframe, the centre of the map's highest cell lies inside that keyframe's mask
      (share of keyframes);
  mass: per keyframe, the share of the map's mass on the mask (mask area-pooled to the grid),
      averaged over keyframes; "chance" is the same figure for a uniform map (the mask's area
      share).
The same figures for a command with no word the grounder knows ("the object", the prior
alone) are printed beside them, so it is visible whether the words help.

    python -m steerseg_bench.davis_grounding [--root ../shared/data/davis16] [--backend builtin]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from steerseg_ros.streaming.backends import make_grounder
from steerseg_ros.frame import NS_PER_S, Frame
from steerseg_ros.grounding.base import GroundingResult
from steerseg_testing.davis import davis_root

PRIOR_COMMAND = "the object"


def load_keyframes(root: Path, seq: str, count: int, fps: float = 24.0):
    """`count` uniformly spaced frames of a sequence (as keyframes) and their masks."""
    names = sorted(p.stem for p in (root / "JPEGImages" / "480p" / seq).glob("*.jpg"))
    picks = np.unique(np.linspace(0, len(names) - 1, count).round().astype(int))
    frames, masks = [], []
    for k, i in enumerate(picks):
        bgr = cv2.imread(str(root / "JPEGImages" / "480p" / seq / f"{names[i]}.jpg"))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        frames.append(Frame(k, int(i * NS_PER_S / fps), rgb, "camera", names[i]))
        gt = cv2.imread(str(root / "Annotations" / "480p" / seq / f"{names[i]}.png"), cv2.IMREAD_GRAYSCALE)
        masks.append(gt > 127)
    return frames, masks


def score(result: GroundingResult, masks: list[np.ndarray]) -> dict[str, float]:
    maps = result.maps
    hg, wg = maps.shape[1:]
    h, w = masks[0].shape
    best = result.points[0] if result.points else None
    point = 0.0
    if best is not None:
        point = float(masks[best.keyframe_index][min(int(best.y), h - 1), min(int(best.x), w - 1)])
    peaks, mass, chance = [], [], []
    for m, gt in zip(maps, masks):
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        peaks.append(float(gt[min(int((r + 0.5) * h / hg), h - 1), min(int((c + 0.5) * w / wg), w - 1)]))
        pooled = cv2.resize(gt.astype(np.float32), (wg, hg), interpolation=cv2.INTER_AREA)
        mass.append(float((m * pooled).sum() / m.sum()) if m.sum() > 0 else 0.0)
        chance.append(float(pooled.mean()))
    return {"point": point, "peak": float(np.mean(peaks)), "mass": float(np.mean(mass)),
            "chance": float(np.mean(chance)), "seconds": result.timings.get("total", float("nan"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("STEERSEG_DAVIS", davis_root())))
    parser.add_argument("--backend", default="builtin")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timing: best of this many runs per command")
    parser.add_argument("--json", type=Path, help="also write the per-command figures here")
    args = parser.parse_args(argv)
    if not (args.root / "expressions.json").exists():
        print(f"no DAVIS data at {args.root}", file=sys.stderr)
        return 2
    videos = json.loads((args.root / "expressions.json").read_text())["videos"]
    grounder = make_grounder(args.backend)
    rows = []
    print(f"{'sequence':12s} {'kind':9s} {'point':>5s} {'peak':>5s} {'mass':>5s} {'ms':>5s}  command -> cues")
    for seq in sorted(videos):
        frames, masks = load_keyframes(args.root, seq, args.frames)
        commands = [("prior", PRIOR_COMMAND)] + [(e["kind"], e["exp"]) for e in videos[seq]["expressions"]]
        for kind, command in commands:
            result = grounder.ground(frames, command)
            if kind == "prior" and result.attributes:
                raise RuntimeError(f"{PRIOR_COMMAND!r} is meant to carry no cue, got {result.attributes}")
            fig = score(result, masks)
            walls, cpus = [], []
            for _ in range(args.repeats):
                cpu = time.process_time()
                walls.append(grounder.ground(frames, command).timings["total"])
                cpus.append(time.process_time() - cpu)
            fig["seconds"], fig["cpu_seconds"] = min(walls), min(cpus)
            rows.append({"sequence": seq, "kind": kind, "command": command, "class_word": result.class_word,
                         "attributes": result.attributes, **fig})
            print(f"{seq:12s} {kind:9s} {fig['point']:5.0f} {fig['peak']:5.2f} {fig['mass']:5.2f} "
                  f"{fig['seconds'] * 1000:5.0f}  {command!r} -> {result.class_word} {result.attributes}")
    print()
    print(f"{'kind':9s} {'n':>3s} {'point':>6s} {'peak':>6s} {'mass':>6s} {'chance':>6s}")
    for kind in ("prior", "referring", "reasoning"):
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            print(f"{kind:9s} {len(sel):3d} {np.mean([r['point'] for r in sel]):6.2f} "
                  f"{np.mean([r['peak'] for r in sel]):6.2f} {np.mean([r['mass'] for r in sel]):6.2f} "
                  f"{np.mean([r['chance'] for r in sel]):6.2f}")
    print()
    for label, key in (("wall", "seconds"), ("CPU", "cpu_seconds")):
        times = [r[key] for r in rows]
        print(f"grounding {label} time per call ({args.frames} keyframes of 854x480, "
              f"best of {args.repeats}): median {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms")
    print("load average (1, 5, 15 min): %.2f %.2f %.2f on %d CPUs" % (*os.getloadavg(), os.cpu_count()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
