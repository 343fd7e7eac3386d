"""Running the following benchmark: scenes through the node's pipeline, over a sweep of grounding
latencies, into tables, a CSV, a JSON and a plot. steerseg-bench's `following` section and
`steerseg-eval --following` both run this.

Owns `GrounderSpec` (a grounding backend and its options under a label: `builtin`,
`oracle:honest`, `oracle:attention`), `run_scene` (one scene, one latency), `run_sweep` and the
report files. Each run feeds the scene to a fresh `Pipeline` grounding inline, with the answer of
every grounding landing `grounding_latency_s` seconds of camera time after it was asked for
(PipelineConfig.grounding_latency_s), so the figures are the same on any machine. The command is
given before the first frame. The oracle grounder reads each scene's ground truth, written as PNGs
under the work folder.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from steerseg_ros.grounding.base import Grounder
from steerseg_ros.offline.following_metrics import QUICK_REACQUISITION_S, FrameRecord, score_following, total
from steerseg_ros.offline.following_scenes import DEVELOPMENT_SPLIT, HELD_OUT_SPLIT, FollowingScene
from steerseg_ros.streaming import backends
from steerseg_ros.streaming.pipeline import Pipeline, PipelineConfig
from steerseg_ros.tracking.base import Tracker

LATENCIES = (0.0, 0.5, 1.0, 2.0, 4.0)
QUICK_KEY = f"reacquired_within_{QUICK_REACQUISITION_S:g}s_share"
# The columns of the printed tables (every figure is in the CSV and JSON).
TABLE_COLUMNS = ("first_mask_s", "first_good_mask_s", "J&F", "J&F_answered", "false_following",
                 "false_following_share", "reacquisition_s", "id_switches", "wrong_object")
TOTAL_COLUMNS = ("scenes", "first_mask_s", "first_mask_in_time_share", "first_good_mask_s", "J&F", "J&F_answered",
                 "false_following_share", "reacquisition_median_s", QUICK_KEY, "reacquired_in_time_share",
                 "id_switches", "wrong_object_share")


@dataclass
class GrounderSpec:
    """A grounding backend under a label. `parse("oracle:attention")` is the oracle with
    kind attention; any other name is a backend of streaming/backends.py with `options`."""

    label: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, options: Optional[dict[str, Any]] = None) -> "GrounderSpec":
        backend, _, kind = text.strip().partition(":")
        opts = dict(options or {})
        if kind:
            if backend != "oracle":
                raise ValueError(f"{text!r}: only the oracle has kinds (oracle:honest, oracle:attention)")
            opts["kind"] = kind
        if backend not in backends.GROUNDERS:
            raise ValueError(f"unknown grounder {backend!r}; choose one of {sorted(backends.GROUNDERS)}")
        label = f"oracle:{opts.get('kind', 'honest')}" if backend == "oracle" else backend
        return cls(label, backend, opts)

    def make(self, scene: FollowingScene, work: Path) -> Grounder:
        """The grounder for a scene: the oracle reads that scene's ground truth."""
        options = dict(self.options)
        if self.backend == "oracle":
            folder = work / "gt" / scene.name
            if not folder.is_dir() or len(list(folder.glob("*.png"))) != len(scene):
                scene.write_masks(folder)
            options["masks_dir"] = str(folder)
        return backends.make_grounder(self.backend, options)


def run_scene(scene: FollowingScene, grounder: Grounder, tracker: Tracker, config: PipelineConfig,
              latency_s: float, frames: Optional[Sequence] = None) -> tuple[list[FrameRecord], dict[str, int]]:
    """What the pipeline published on each frame of the scene, and its grounding and track
    counters. `frames`: the scene's frames already rendered (else rendered here)."""
    tracker.reset()
    cfg = dataclasses.replace(config, asynchronous=False, grounding_latency_s=latency_s)
    pipeline = Pipeline(grounder, tracker, cfg)
    records: list[FrameRecord] = []
    try:
        pipeline.set_command(scene.command)
        for i in range(len(scene)):
            f = frames[i] if frames is not None else scene.frame(i)
            records.append(FrameRecord.from_output(pipeline.process(f.image, f.stamp_ns, name=f.name)))
        stats = {k: int(v) for k, v in pipeline.stats.items() if k.startswith(("grounding", "tracks_"))}
    finally:
        pipeline.close()
        tracker.reset()
    return records, stats


def _split(sequence: str) -> str:
    return "held_out" if sequence in HELD_OUT_SPLIT else "development" if sequence in DEVELOPMENT_SPLIT else "other"


def run_sweep(scenes: Sequence[FollowingScene], grounders: Sequence[GrounderSpec], tracker: Tracker,
              config: PipelineConfig, latencies: Sequence[float], work: str | Path,
              progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Every scene with every grounder at every latency. Returns {"rows": per scene and run,
    "totals": per grounder, latency and group (all, each split, each kind), "scenes": what
    each scene is}."""
    work = Path(work)
    rows: list[dict[str, Any]] = []
    scores: dict[tuple[str, float], list] = {}
    described = []
    for scene in scenes:
        described.append(scene.describe())
        frames = [scene.frame(i) for i in range(len(scene))]  # rendered once for all runs
        gts = [f.gt for f in frames]
        for spec in grounders:
            grounder = spec.make(scene, work)
            try:
                for latency in latencies:
                    records, stats = run_scene(scene, grounder, tracker, config, latency, frames)
                    score = score_following(scene.name, records, gts, scene.whole_area, scene.fps,
                                            latency_s=latency)
                    scores.setdefault((spec.label, latency), []).append((scene, score))
                    rows.append({"grounder": spec.label, "latency_s": latency, "kind": scene.kind,
                                 "split": _split(scene.sequence), **score.row(), **stats})
                    if progress is not None:
                        progress(f"{scene.name} {spec.label} L={latency:g}: " + _brief(rows[-1]))
            finally:
                grounder.close()
        del frames, gts
    totals = []
    for (label, latency), pairs in scores.items():
        groups = {"all": pairs}
        for name, members in (("development", DEVELOPMENT_SPLIT), ("held_out", HELD_OUT_SPLIT)):
            groups[name] = [p for p in pairs if p[0].sequence in members]
        for kind in sorted({p[0].kind for p in pairs}):
            groups[kind] = [p for p in pairs if p[0].kind == kind]
        for group, members in groups.items():
            if members:
                totals.append({"grounder": label, "latency_s": latency, "group": group,
                               **total(s for _, s in members)})
    return {"rows": rows, "totals": totals, "scenes": described}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def _brief(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_fmt(row[k])}" for k in TABLE_COLUMNS)


def markdown(result: dict[str, Any]) -> str:
    """The totals table (every grounder, latency and group), then one table per scene."""
    lines = ["## Following: totals", "",
             "| grounder | L (s) | group | " + " | ".join(TOTAL_COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(TOTAL_COLUMNS)]
    for t in result["totals"]:
        lines.append(f"| {t['grounder']} | {t['latency_s']:g} | {t['group']} | "
                     + " | ".join(_fmt(t[c]) for c in TOTAL_COLUMNS) + " |")
    lines += ["", "## Following: per scene", "",
              "| scene | grounder | L (s) | " + " | ".join(TABLE_COLUMNS) + " |",
              "|---|---|---|" + "---|" * len(TABLE_COLUMNS)]
    for r in sorted(result["rows"], key=lambda r: (r["scene"], r["grounder"], r["latency_s"])):
        lines.append(f"| {r['scene']} | {r['grounder']} | {r['latency_s']:g} | "
                     + " | ".join(_fmt(r[c]) for c in TABLE_COLUMNS) + " |")
    lines += ["", "Times in seconds of camera time from the command (first_mask_s: any published mask; "
              "first_good_mask_s: IoU >= 0.5; first_mask_in_time_share: scenes with a first mask within L + 1 s). "
              "J&F on frames where the object is visible (J&F_answered: from L after the command on, when "
              "an answer can have landed). false_following: "
              "frames with a published mask while the object is hidden (share: of the hidden frames). "
              "reacquisition_s: per hidden episode, from the object fully back to IoU >= 0.5 (never: not "
              "before the scene ended; reacquired_in_time_share: within L + 1.5 s). wrong_object: published "
              "masks with IoU < 0.1 on a visible object."]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out: str | Path, describe: Optional[dict[str, Any]] = None) -> dict[str, Path]:
    """following.md, following.json, following_scenes.csv, following_totals.csv and following.png
    under `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"table": out / "following.md", "json": out / "following.json",
             "scenes_csv": out / "following_scenes.csv", "totals_csv": out / "following_totals.csv",
             "plot": out / "following.png"}
    files["table"].write_text(markdown(result))
    payload = {"run": describe or {}, **result}
    files["json"].write_text(json.dumps(payload, indent=1, default=lambda x: None if x != x else str(x)) + "\n")
    for key, table in (("scenes_csv", result["rows"]), ("totals_csv", result["totals"])):
        columns = list(dict.fromkeys(k for r in table for k in r))
        with open(files[key], "w", newline="") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            writer.writerows(table)
    write_plot(result, files["plot"])
    return files


def write_plot(result: dict[str, Any], path: Path) -> None:
    """The totals over all scenes against the grounding latency, one line per grounder."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("first_good_mask_s", "first mask IoU>=0.5 (s)"), ("J&F_answered", "J&F, object visible, from L on"),
              ("false_following_share", "false following (share of hidden)"),
              ("reacquired_in_time_share", f"re-acquired within L + {QUICK_REACQUISITION_S:g} s (share)"),
              ("reacquisition_median_s", "re-acquisition, median (s)"),
              ("wrong_object_share", "wrong object (share of visible)"))
    totals = [t for t in result["totals"] if t["group"] == "all"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title) in zip(axes.ravel(), panels):
        for label in dict.fromkeys(t["grounder"] for t in totals):
            mine = sorted((t for t in totals if t["grounder"] == label), key=lambda t: t["latency_s"])
            ax.plot([t["latency_s"] for t in mine], [np.nan if t[key] is None else t[key] for t in mine],
                    marker="o", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("grounding latency L (s of camera time)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    scenes = len(result["scenes"])
    fig.suptitle(f"Following benchmark: {scenes} scenes, totals", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
