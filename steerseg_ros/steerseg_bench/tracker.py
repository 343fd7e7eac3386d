"""The built-in tracker on DAVIS 2016: J, F, J&F and time per step (issue 2's figures).

Owns the measurement that `python -m steerseg_bench.davis_tracker` prints and the `tracker` section of
`steerseg-bench` reports: FlowTracker seeded with each sequence's first ground-truth mask,
tracked to its last frame, scored by the DAVIS semi-supervised protocol (first and last frames
left out), and timed per `step` at the data's 854x480; then the per-frame cost with 1, 2 and 4
live objects. Goal: at most 30 ms per frame.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from steerseg_ros.frame import Frame
from steerseg_ros.offline.metrics import score_object, summarize
from steerseg_testing import davis
from steerseg_ros.tracking.flow import FlowTracker, FlowTrackerConfig

STEP_GOAL_MS = 30.0


def list_sequences(root: Path) -> list[str]:
    folder = root / "JPEGImages" / "480p"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def frames_of(images, start_seq: int = 0) -> list[Frame]:
    return [Frame(start_seq + i, (start_seq + i) * 41_666_667, im, "camera", str(i)) for i, im in enumerate(images)]


def track_sequence(config: FlowTrackerConfig, images, masks, n_objects: int = 1):
    """Masks for every frame (the seed on frame 0), per-step wall and process-CPU times (s),
    and scores."""
    tracker = FlowTracker(config)
    frames = frames_of(images)
    state = tracker.start(frames[0], mask=masks[0])
    for obj_id in range(1, n_objects + 1):
        tracker.attach(obj_id, state if obj_id == 1 else copy.deepcopy(state))
    preds, wall, cpu, scores = [masks[0]], [], [], []
    for f in frames[1:]:
        t0, c0 = time.perf_counter(), time.process_time()
        out = tracker.step(f)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        preds.append(out[1].mask)
        scores.append(out[1].score)
    return preds, np.array(wall), np.array(cpu), np.array(scores)


def bench_tracker(root: Path, sequences: Optional[Sequence[str]] = None, frames: Optional[int] = None,
                  config: Optional[FlowTrackerConfig] = None, objects: Sequence[int] = (1, 2, 4)) -> dict:
    """Scores and step times over `sequences` (default: all in `root`), the first `frames` frames
    of each (default: all; J&F on cut sequences is not comparable with full ones), and the step
    time per number of live objects on the first sequence. Flat dict of figures."""
    config = config or FlowTrackerConfig()
    sequences = list(sequences or list_sequences(root))
    if not sequences:
        raise FileNotFoundError(f"no DAVIS sequences under {root / 'JPEGImages' / '480p'}")
    scores, walls, cpus = [], [], []
    out: dict = {}
    size = ""
    for seq in sequences:
        _, images, masks = davis.load_sequence(root, seq, frames)
        if len(images) < 3:
            raise ValueError(f"{seq}: {len(images)} frames; the protocol needs at least 3")
        size = f"{images[0].shape[1]}x{images[0].shape[0]}"
        preds, wall, cpu, _ = track_sequence(config, images, masks)
        score = score_object(seq, 1, preds, masks, skip_first_last=True)
        scores.append(score)
        walls.append(wall)
        cpus.append(cpu)
        out[f"sequences.{seq}.J&F"] = round(100 * score.jf, 2)
    summary = summarize(scores)
    wall, cpu = np.concatenate(walls), np.concatenate(cpus)
    step_ms = 1000 * float(np.median(wall))
    head = {"sequences": len(sequences), "frames_timed": int(len(wall)), "image": size,
            "J": round(100 * summary["J"], 2), "F": round(100 * summary["F"], 2),
            "J&F": round(100 * summary["J&F"], 2),
            "step_median_ms": round(step_ms, 2), "step_p90_ms": round(1000 * float(np.percentile(wall, 90)), 2),
            # Process CPU time counts OpenCV's worker threads too; on a shared machine it moves
            # less with the load than wall time does.
            "step_cpu_median_ms": round(1000 * float(np.median(cpu)), 2),
            "goal_step_ms": STEP_GOAL_MS, "goal_step_met": bool(step_ms <= STEP_GOAL_MS)}
    _, images, masks = davis.load_sequence(root, sequences[0], frames)
    for n in objects:
        _, w, _, _ = track_sequence(config, images, masks, n_objects=n)
        head[f"objects.{n}.step_median_ms"] = round(1000 * float(np.median(w)), 2)
    return {**head, **out}
