"""Evaluation over a dataset: the node's core run on every sample, in streaming or offline mode,
its masks written as PNGs and scored with the DAVIS metrics.

Owns `EvalConfig`, the two ways of running a sample (`run_streaming`: `Pipeline` frame by
frame, exactly as the node runs on a robot; `run_offline`: the papers' protocol from
`steerseg_ros.offline.protocol`), the mask files, the result rows and tables, and the plot.

Output layout under OUT:
    masks/<video>/<expression id>/<frame>.png   referring samples: 0/255 grey PNGs (what the
                                                Ref-YouTube-VOS, MeViS, ReVOS and ReasonVOS
                                                evaluators read)
    masks/<video>/<frame>.png                   semi-supervised samples: palette PNGs whose index
                                                is the object id (the DAVIS results format)
    per_expression.csv (referring) or per_object.csv (semi-supervised), per_video.csv
    summary.md, summary.json, plot.png
    submission.zip                              splits without public ground truth, in the
                                                official server's layout
    shards/<K>-of-<N>/                          a sharded run's share (`shard_of`): its tables,
                                                and shard.json with its rows for `merge_shards`,
                                                which writes the tables above for all shards

Scores follow the DAVIS toolkit: J and F per frame, averaged over the frames of each object (an
expression's target counts as one object), then over objects; the semi-supervised protocol
leaves out the first frame (given) and the last. Every score is computed from the mask exactly
as written to its PNG, so rescoring the PNGs gives the same numbers.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np
from PIL import Image

from steerseg_ros import render

from steerseg_ros.offline import metrics
from steerseg_ros.frame import NS_PER_S
from steerseg_ros.offline.datasets import Dataset, Sample
from steerseg_ros.grounding.base import Grounder, GroundingError
from steerseg_ros.offline.protocol import OfflineConfig, propagate_objects, segment_clip
from steerseg_ros.streaming.pipeline import Pipeline, PipelineConfig, PipelineOutput
from steerseg_ros.tracking.base import Tracker

log = logging.getLogger("steerseg_ros.offline.evaluation")

MODES = ("streaming", "offline")
PREVIEWS = 4
PREVIEW_WIDTH = 480


@dataclass
class EvalConfig:
    """mode: "streaming" or "offline". fps: the frame rate the frames on disk are taken to have
    (None: the dataset's). max_frames: only the first N frames of each video (0: all; changes
    the protocol, for quick runs)."""

    mode: str = "streaming"
    fps: Optional[float] = None
    max_frames: int = 0
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {self.max_frames}")
        self.pipeline.validate()
        self.offline.validate()


# ---- mask files ---------------------------------------------------------------------------
def davis_palette() -> np.ndarray:
    """The 256-colour palette of DAVIS (and PASCAL VOC) label PNGs: colour bits of the index
    spread over the channels' high bits. Neither PIL nor OpenCV ships it."""
    palette = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for bit in range(7, -1, -1):
            r |= (c & 1) << bit
            g |= ((c >> 1) & 1) << bit
            b |= ((c >> 2) & 1) << bit
            c >>= 3
        palette[i] = (r, g, b)
    return palette


_PALETTE = davis_palette().ravel().tolist()


def mask_path(out: Path, sample: Sample, frame_name: str) -> Path:
    if sample.semi_supervised:
        return out / "masks" / sample.video / f"{frame_name}.png"
    return out / "masks" / sample.video / sample.expression_id / f"{frame_name}.png"


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A binary mask as a 0/255 grey PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.where(mask, 255, 0).astype(np.uint8)):
        raise OSError(f"cannot write {path}")


def write_labels(path: Path, labels: np.ndarray) -> None:
    """A label image (object ids 0..255) as a palette PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(_PALETTE)
    image.save(path)


def read_mask(path: Path) -> np.ndarray:
    """A mask PNG written by this module: bool for grey PNGs, object ids for palette PNGs."""
    with Image.open(path) as im:
        values = np.array(im)
        return values.astype(np.int32) if im.mode == "P" else values > 127


def write_submission(out: Path, layout: str, folders: Optional[list[Path]] = None) -> Path:
    """Zip masks/ in the official server's layout: "ref-youtube-vos" puts
    Annotations/<video>/<expression>/<frame>.png at the top (ReferFormer's instructions),
    "mevis" the video folders themselves (MeViS's sample submission), "davis" the sequence
    folders of palette PNGs (the DAVIS challenge's)."""
    prefix = {"ref-youtube-vos": "Annotations", "mevis": "", "davis": ""}[layout]
    masks = out / "masks"
    target = out / "submission.zip"
    # Only this run's folders (`folders`), not what an earlier run left in masks/.
    if folders is None:
        paths = sorted(masks.rglob("*.png"))
    else:
        paths = sorted(p for folder in dict.fromkeys(folders) for p in folder.glob("*.png"))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for path in paths:
            rel = path.relative_to(masks).as_posix()
            z.write(path, f"{prefix}/{rel}" if prefix else rel)
    return target


# ---- results ------------------------------------------------------------------------------
@dataclass
class Row:
    """One scored object: a referring expression's target, or one object of a semi-supervised
    video. j and f are NaN where the sample has no ground truth."""

    video: str
    expression_id: str
    object_id: int
    kind: str
    command: str
    frames: int
    scored_frames: int
    j: float
    f: float
    seconds: float
    first_mask_frame: int
    error: str = ""
    groundings: int = 0            # grounding calls (streaming: the first and every re-grounding)
    grounding_failures: int = 0    # of which failed (streaming goes on, as the node does)
    sample_index: int = -1         # position in the whole run's sample order (sharded runs merge by it)

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


@dataclass
class _Preview:
    score: float
    title: str
    image: np.ndarray


class _Drawn:
    def __init__(self, obj_id: int, mask: np.ndarray, label: str = ""):
        self.id = obj_id
        self.label_value = render.label_value(obj_id)
        self.label = label
        self.score = 1.0
        self.mask = mask


class SampleOutput:
    """Writes one sample's predictions as they come, frame by frame, and scores each against
    the ground truth, keeping only running per-frame scores."""

    def __init__(self, out: Path, sample: Sample, num_frames: int, preview_frame: Optional[int] = None):
        self.out = out
        self.sample = sample
        self.n = num_frames
        self.done = [False] * num_frames
        self.shape: Optional[tuple[int, int]] = None
        self.first_mask_frame = -1
        self.preview_frame = num_frames // 2 if preview_frame is None else preview_frame
        self.preview: Optional[np.ndarray] = None
        ids = sample.object_ids if sample.semi_supervised else [0]
        self.js: dict[int, list[float]] = {o: [] for o in ids}
        self.fs: dict[int, list[float]] = {o: [] for o in ids}

    def _scored(self, i: int) -> bool:
        # The DAVIS semi-supervised protocol leaves out the given first frame and the last one.
        return not (self.sample.semi_supervised and self.n > 2 and i in (0, self.n - 1))

    def put(self, i: int, prediction: np.ndarray) -> None:
        """Frame i's prediction: a bool mask (referring) or a label image (semi-supervised)."""
        if self.done[i]:
            raise ValueError(f"{self.sample.key}: frame {i} predicted twice")
        self.shape = prediction.shape[:2]
        path = mask_path(self.out, self.sample, self.sample.frame_names[i])
        if self.sample.semi_supervised:
            prediction = prediction.astype(np.int32)
            write_labels(path, prediction)
        else:
            prediction = prediction.astype(bool)
            write_mask(path, prediction)
        self.done[i] = True
        if self.first_mask_frame < 0 and prediction.any():
            self.first_mask_frame = i
        truth = self.sample.labels(i) if self._scored(i) or i == self.preview_frame else None
        if truth is not None and truth.shape != prediction.shape:
            raise ValueError(f"{self.sample.key}: prediction {prediction.shape} and ground truth "
                             f"{truth.shape} differ on frame {self.sample.frame_names[i]}")
        if truth is not None and self._scored(i):
            if self.sample.semi_supervised:
                for o in self.js:
                    self.js[o].append(metrics.region_j(prediction == o, truth == o))
                    self.fs[o].append(metrics.boundary_f(prediction == o, truth == o))
            else:
                target = np.isin(truth, self.sample.object_ids)
                self.js[0].append(metrics.region_j(prediction, target))
                self.fs[0].append(metrics.boundary_f(prediction, target))
        if i == self.preview_frame:
            self.preview = self._draw(i, prediction, truth)

    def _draw(self, i: int, prediction: np.ndarray, truth: Optional[np.ndarray]) -> np.ndarray:
        image = self.sample.image(i)
        if self.sample.semi_supervised:
            drawn = [_Drawn(o, prediction == o) for o in self.sample.object_ids]
        else:
            drawn = [_Drawn(1, prediction, self.sample.kind)]
        bgr = render.overlay(image, drawn)
        if truth is not None:  # the ground truth's outline in white
            target = truth > 0 if self.sample.semi_supervised else np.isin(truth, self.sample.object_ids)
            contours, _ = cv2.findContours(target.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(bgr, contours, -1, (0, 0, 0), 4, cv2.LINE_AA)
            cv2.drawContours(bgr, contours, -1, (255, 255, 255), 2, cv2.LINE_AA)
        scale = PREVIEW_WIDTH / bgr.shape[1]
        if scale < 1:
            bgr = cv2.resize(bgr, (PREVIEW_WIDTH, int(round(bgr.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def fill_missing(self) -> int:
        """Write empty masks on the frames never predicted (a run that failed part-way), so
        the output stays complete and they count as misses. Returns how many."""
        missing = [i for i in range(self.n) if not self.done[i]]
        if missing and self.shape is None:
            self.shape = self.sample.image(0).shape[:2]
        for i in missing:
            empty = np.zeros(self.shape, np.int32 if self.sample.semi_supervised else bool)
            self.put(i, empty)
        return len(missing)

    def rows(self, seconds: float, error: str = "", info: Optional[dict[str, Any]] = None) -> list[Row]:
        info = info or {}
        out = []
        for o in self.js:
            js, fs = self.js[o], self.fs[o]
            j = float(np.mean(js)) if js else float("nan")
            f = float(np.mean(fs)) if fs else float("nan")
            out.append(Row(self.sample.video, self.sample.expression_id, o, self.sample.kind,
                           self.sample.command or "", self.n, len(js), j, f, seconds, self.first_mask_frame, error,
                           int(info.get("groundings", 0)), int(info.get("grounding_failures", 0))))
        return out


# ---- running one sample -------------------------------------------------------------------
class _Head:
    """The first n frames of a sample, as a clip."""

    def __init__(self, sample: Sample, n: int):
        self.sample = sample
        self.frame_names = sample.frame_names[:n]

    def __len__(self) -> int:
        return len(self.frame_names)

    def image(self, i: int) -> np.ndarray:
        return self.sample.image(i)


def _stamp(i: int, fps: float) -> int:
    return int(round(i * NS_PER_S / fps))


def visible_mask(output: PipelineOutput) -> np.ndarray:
    """The union of the tracks the node draws on this frame (the confident ones)."""
    mask = np.zeros((output.frame.height, output.frame.width), bool)
    for t in output.visible_tracks():
        mask |= t.mask
    return mask


def _paint(shape: tuple[int, int], masks: dict[int, Any]) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for obj in sorted(masks):
        labels[masks[obj].mask] = obj
    return labels


def run_streaming(sample: Sample, clip: _Head, grounder: Grounder, tracker: Tracker,
                  config: EvalConfig, fps: float, put: Callable[[int, np.ndarray], None]) -> dict[str, Any]:
    """Feed the clip to the node's pipeline frame by frame (grounding inline, so results do not
    depend on this machine's speed) and put what the node would publish on each frame: the
    union of its visible tracks. A semi-supervised sample seeds one track per object from the
    first frame's mask (`Pipeline.seed_mask`, no command) and paints the visible tracks with
    their object ids."""
    tracker.reset()
    pipeline = Pipeline(grounder, tracker, dataclasses.replace(config.pipeline, asynchronous=False))
    info: dict[str, Any] = {}
    try:
        if sample.semi_supervised:
            first_labels = sample.labels(0)
            pipeline.process(clip.image(0), 0, name=clip.frame_names[0])
            objects: dict[int, int] = {}  # track id -> object id
            for obj in sample.object_ids:
                mask = first_labels == obj
                if mask.any():
                    objects[pipeline.seed_mask(mask, label=str(obj)).id] = obj
            # The given masks are the first frame's prediction (the protocol does not score it).
            put(0, np.where(np.isin(first_labels, sample.object_ids), first_labels, 0))
            for i in range(1, len(clip)):
                output = pipeline.process(clip.image(i), _stamp(i, fps), name=clip.frame_names[i])
                labels = np.zeros(first_labels.shape, np.int32)
                for t in sorted(output.visible_tracks(), key=lambda t: objects.get(t.id, 0)):
                    if t.id in objects:
                        labels[t.mask] = objects[t.id]
                put(i, labels)
        else:
            pipeline.set_command(sample.command)
            for i in range(len(clip)):
                output = pipeline.process(clip.image(i), _stamp(i, fps), name=clip.frame_names[i])
                put(i, visible_mask(output))
        info.update({k: v for k, v in pipeline.stats.items() if k.startswith(("grounding", "tracks_"))})
        return info
    finally:
        pipeline.close()
        tracker.reset()


def run_offline(sample: Sample, clip: _Head, grounder: Grounder, tracker: Tracker,
                config: EvalConfig, fps: float, put: Callable[[int, np.ndarray], None]) -> dict[str, Any]:
    """The papers' protocol (steerseg_ros.offline.protocol); semi-supervised samples propagate the first
    frame's masks forward over the clip."""
    tracker.reset()
    try:
        if sample.semi_supervised:
            first_labels = sample.labels(0)
            propagate_objects(tracker, clip, first_labels, sample.object_ids, fps,
                              lambda i, masks: put(i, _paint(first_labels.shape, masks)))
            return {}
        result = segment_clip(grounder, tracker, clip, sample.command, config.offline,
                              config.pipeline.selection, fps)
        shape = (result.grounding.keyframes[0].height, result.grounding.keyframes[0].width)
        for i in range(len(clip)):
            put(i, result.masks.get(i, shape))
        info: dict[str, Any] = dict(result.timings)
        info.update({"targets": len(result.chosen), "groundings": 1})
        return info
    finally:
        tracker.reset()


# ---- the whole dataset --------------------------------------------------------------------
@dataclass
class EvalReport:
    rows: list[Row]
    summary: dict[str, Any]
    files: dict[str, Path]


class Evaluator:
    """Runs a dataset's samples through the backends and writes everything under `out`; with
    `shard` (k, n) the tables go to out/shards/<k+1>-of-<n>/ with a shard.json for
    `merge_shards`, and the masks to out/masks/ as in an unsharded run."""

    def __init__(self, dataset: Dataset, grounder: Grounder, tracker: Tracker, out: str | Path,
                 config: Optional[EvalConfig] = None, describe: Optional[dict[str, Any]] = None,
                 shard: Optional[tuple[int, int]] = None):
        self.dataset = dataset
        self.grounder = grounder
        self.tracker = tracker
        self.out = Path(out)
        self.config = config or EvalConfig()
        self.config.validate()
        self.describe = dict(describe or {})
        self.fps = self.config.fps or dataset.fps
        self.rows: list[Row] = []
        self.samples = 0
        self.errors = 0
        self.frames = 0
        self.previews: list[_Preview] = []
        self.folders: list[Path] = []  # the mask folders this run wrote
        self.shard = shard

    def run_sample(self, sample: Sample, index: int = -1) -> list[Row]:
        """Run, write and score one sample; a failure is logged and recorded in its rows (the
        frames it did not reach are written empty and count as misses). `index`: the sample's
        position in the whole (unsharded) run."""
        n = len(sample) if not self.config.max_frames else min(len(sample), self.config.max_frames)
        clip = _Head(sample, n)
        output = SampleOutput(self.out, sample, n)
        run = run_streaming if self.config.mode == "streaming" else run_offline
        error = ""
        info: dict[str, Any] = {}
        t0 = time.perf_counter()
        try:
            info = run(sample, clip, self.grounder, self.tracker, self.config, self.fps, output.put)
        except Exception as e:  # one bad sample must not end a run of thousands
            error = f"{type(e).__name__}: {e}"
            if isinstance(e, GroundingError) and not sample.semi_supervised:
                info = {"groundings": 1, "grounding_failures": 1}
            log.error("%s: %s", sample.key, error, exc_info=log.isEnabledFor(logging.DEBUG))
        seconds = time.perf_counter() - t0
        try:
            output.fill_missing()
        except Exception as e:
            error = error or f"{type(e).__name__}: {e}"
            log.error("%s: cannot complete the output: %s", sample.key, e)
        rows = output.rows(seconds, error, info)
        for r in rows:
            r.sample_index = index
        self.folders.append(mask_path(self.out, sample, "x").parent)
        self.rows += rows
        self.samples += 1
        self.errors += bool(error)
        self.frames += n
        self._keep_preview(sample, rows, output.preview)
        return rows

    def _keep_preview(self, sample: Sample, rows: list[Row], image: Optional[np.ndarray]) -> None:
        """Keep the overlays of the best and the worst samples so far (a bounded handful)."""
        if image is None:
            return
        scored = [r.jf for r in rows if not math.isnan(r.j)]
        score = float(np.mean(scored)) if scored else float("nan")
        title = sample.key if math.isnan(score) else f"{sample.key}  J&F {100 * score:.1f}"
        self.previews.append(_Preview(score, title, image))
        if len(self.previews) > PREVIEWS:
            if all(math.isnan(p.score) for p in self.previews):
                self.previews = self.previews[:PREVIEWS]
            else:
                ranked = sorted(self.previews, key=lambda p: -np.nan_to_num(p.score, nan=-1.0))
                self.previews = ranked[:PREVIEWS // 2] + ranked[-(PREVIEWS - PREVIEWS // 2):]

    def finish(self, wall_s: float) -> EvalReport:
        """Write the CSVs, the summary, the plot and (without ground truth) the submission; a
        shard writes its tables and shard.json, and leaves the submission to the merge."""
        dataset = {"dataset": self.dataset.name, "split": self.dataset.split, "root": str(self.dataset.root),
                   "ground_truth": self.dataset.has_ground_truth, "overall": self.dataset.overall,
                   "submission_layout": self.dataset.submission}
        run = {"mode": self.config.mode, "fps": self.fps, "max_frames": self.config.max_frames,
               "samples": self.samples, "frames": self.frames, "errors": self.errors, "wall_s": wall_s}
        if self.shard is None:
            return write_report(self.out, self.rows, dataset, run, self.describe, self.previews, self.folders)
        k, n = self.shard
        folder = shard_folder(self.out, k, n)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"shard": [k, n], "dataset": dataset, "run": run, "describe": self.describe,
                  "rows": [dataclasses.asdict(r) for r in self.rows],
                  "folders": [p.relative_to(self.out).as_posix() for p in self.folders]}
        (folder / SHARD_FILE).write_text(json.dumps(_jsonable(record), indent=1) + "\n")
        return write_report(folder, self.rows, dict(dataset, submission_layout=None), run,
                            dict(self.describe, shard=f"{k + 1}/{n}"), self.previews, [])


# ---- shards ---------------------------------------------------------------------------------
SHARD_FILE = "shard.json"


def parse_shard(text: str) -> tuple[int, int]:
    """"K/N" (K in 1..N, as job-array indices usually count) -> (K-1, N)."""
    k, sep, n = text.partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        k_i = n_i = 0
    if not sep or not 1 <= k_i <= n_i:
        raise ValueError(f"--shard expects K/N with 1 <= K <= N, got {text!r}")
    return k_i - 1, n_i


def shard_of(videos: list[str], k: int, n: int) -> set[str]:
    """Shard k's videos (0-based, of n): every n-th video in the dataset's order, so that long and
    short videos spread over the shards as they come. Whole videos go to one shard: a video's
    frames are read once and its masks folder has one writer."""
    return set(videos[k::n])


def shard_folder(out: Path, k: int, n: int) -> Path:
    return Path(out) / "shards" / f"{k + 1}-of-{n}"


def merge_shards(out: str | Path) -> EvalReport:
    """The tables of a sharded run under `out` (every out/shards/*/shard.json), as one unsharded
    run writes them: rows in the whole run's sample order, the summary over all of them, the
    submission over every shard's masks. Refuses shards of different runs or a missing shard."""
    out = Path(out)
    records = [json.loads(p.read_text()) for p in sorted((out / "shards").glob(f"*/{SHARD_FILE}"))]
    if not records:
        raise ValueError(f"no shards to merge under {out / 'shards'}")
    n = records[0]["shard"][1]
    found = sorted(r["shard"][0] for r in records if r["shard"][1] == n)
    if len(found) != len(records):
        raise ValueError(f"{out / 'shards'} holds shards of runs split in different numbers of shards")
    missing = sorted(set(range(n)) - set(found))
    if missing or len(found) != n:
        raise ValueError(f"cannot merge: shard(s) {[k + 1 for k in missing] or found} of {n} missing or twice")
    same = lambda r: (r["dataset"], {k: v for k, v in r["describe"].items() if k not in ("command", "backend_load_s")},
                      {k: r["run"][k] for k in ("mode", "fps", "max_frames")})
    if any(same(r) != same(records[0]) for r in records[1:]):
        raise ValueError("cannot merge: the shards come from runs with different datasets, backends or settings")
    rows = sorted((Row(**{k: float("nan") if v is None else v for k, v in row.items()})
                   for r in records for row in r["rows"]), key=lambda row: row.sample_index)
    run = {**{k: records[0]["run"][k] for k in ("mode", "fps", "max_frames")},
           **{k: sum(r["run"][k] for r in records) for k in ("samples", "frames", "errors")},
           "wall_s": max(r["run"]["wall_s"] for r in records)}  # the shards ran side by side
    describe = {k: v for k, v in records[0]["describe"].items() if k != "command"}
    describe.update(shards=n, command=" ; ".join(r["describe"].get("command", "") for r in records))
    folders = [out / f for r in records for f in r["folders"]]
    return write_report(out, rows, records[0]["dataset"], run, describe, [], folders)


def write_report(out: Path, rows: list[Row], dataset: dict[str, Any], run: dict[str, Any], describe: dict[str, Any],
                 previews: list[_Preview], folders: list[Path]) -> EvalReport:
    """The CSVs, the summary, the plot and (a split without ground truth) the submission, under
    `out`. dataset: name, split, root, ground_truth, overall, submission_layout; run: mode, fps,
    max_frames, samples, frames, errors, wall_s."""
    files: dict[str, Path] = {}
    semi = any(r.expression_id == "" for r in rows)
    files["rows"] = out / ("per_object.csv" if semi else "per_expression.csv")
    write_rows_csv(files["rows"], rows, semi)
    videos = per_video(rows)
    files["videos"] = out / "per_video.csv"
    write_video_csv(files["videos"], videos)
    summary = summarize_rows(rows, dataset["overall"])
    wall_s = run["wall_s"]
    summary.update({
        "dataset": dataset["dataset"], "split": dataset["split"], "root": dataset["root"], **run,
        "frames_per_s": run["frames"] / wall_s if wall_s > 0 else float("nan"),
        "ground_truth": dataset["ground_truth"], **describe,
    })
    if not dataset["ground_truth"] and dataset["submission_layout"]:
        files["submission"] = write_submission(out, dataset["submission_layout"], folders)
        summary["submission"] = str(files["submission"])
    files["summary_md"] = out / "summary.md"
    files["summary_md"].write_text(summary_markdown(summary))
    files["summary_json"] = out / "summary.json"
    files["summary_json"].write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    files["plot"] = out / "plot.png"
    write_plot(files["plot"], videos, previews, summary)
    return EvalReport(rows, summary, files)


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Path):
        return str(value)
    return value


# ---- tables ---------------------------------------------------------------------------------
ROW_FIELDS = ["video", "expression_id", "object_id", "kind", "command", "frames", "scored_frames",
              "J", "F", "J&F", "seconds", "first_mask_frame", "groundings", "grounding_failures", "error"]


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6f}"


def write_rows_csv(path: Path, rows: list[Row], semi: bool) -> None:
    fields = [f for f in ROW_FIELDS
              if not (semi and f in ("expression_id", "kind", "command", "groundings", "grounding_failures"))]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            values = {"video": r.video, "expression_id": r.expression_id, "object_id": r.object_id,
                      "kind": r.kind, "command": r.command, "frames": r.frames,
                      "scored_frames": r.scored_frames, "J": _fmt(r.j), "F": _fmt(r.f), "J&F": _fmt(r.jf),
                      "seconds": f"{r.seconds:.3f}", "first_mask_frame": r.first_mask_frame,
                      "groundings": r.groundings, "grounding_failures": r.grounding_failures, "error": r.error}
            w.writerow({k: values[k] for k in fields})


def per_video(rows: list[Row]) -> list[dict[str, Any]]:
    """Per video: J, F and J&F averaged over its objects or expressions."""
    videos: dict[str, list[Row]] = {}
    for r in rows:
        videos.setdefault(r.video, []).append(r)
    out = []
    for video, rs in videos.items():
        scored = [r for r in rs if not math.isnan(r.j)]
        j = float(np.mean([r.j for r in scored])) if scored else float("nan")
        f = float(np.mean([r.f for r in scored])) if scored else float("nan")
        seconds = {r.expression_id: r.seconds for r in rs}  # a sample's rows share its time
        out.append({"video": video, "objects": len(rs), "J": j, "F": f, "J&F": (j + f) / 2,
                    "seconds": float(sum(seconds.values()))})
    return out


def write_video_csv(path: Path, videos: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "objects", "J", "F", "J&F", "seconds"])
        for v in videos:
            w.writerow([v["video"], v["objects"], _fmt(v["J"]), _fmt(v["F"]), _fmt(v["J&F"]), f"{v['seconds']:.3f}"])


def summarize_rows(rows: list[Row], overall: str = "objects") -> dict[str, Any]:
    """J, F, J&F (in [0, 1]) overall and per kind. overall "objects": the mean over every
    scored object (DAVIS, MeViS); "kinds": the mean of the per-kind means (ReVOS)."""
    scored = [r for r in rows if not math.isnan(r.j)]
    scores = [metrics.ObjectScore(r.video, r.object_id, r.j, r.f, r.scored_frames) for r in scored]
    kinds = sorted({r.kind for r in scored if r.kind})
    table: dict[str, dict[str, float]] = {}
    for kind in kinds if len(kinds) > 1 else []:
        table[kind] = metrics.summarize(s for s, r in zip(scores, scored) if r.kind == kind)
    total = metrics.summarize(scores)
    if overall == "kinds" and len(table) > 1:
        j = float(np.mean([t["J"] for t in table.values()]))
        f = float(np.mean([t["F"] for t in table.values()]))
        total = {"J": j, "F": f, "J&F": (j + f) / 2, "objects": total["objects"]}
    table["overall"] = total
    return {"table": table, "overall_rule": overall}


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# steerseg-eval: {summary.get('dataset')} ({summary.get('split') or '-'}), {summary.get('mode')} mode", ""]
    for key in ("grounder", "tracker", "fps", "max_frames", "samples", "frames", "errors", "wall_s", "frames_per_s",
                "command"):
        if key in summary:
            value = summary[key]
            if isinstance(value, float):
                value = f"{value:.1f}"
            lines.append(f"- {key}: {value}")
    lines.append("")
    if not summary.get("ground_truth"):
        lines.append("No public ground truth: nothing is scored." +
                     (f" Submission: {summary['submission']}" if summary.get("submission") else ""))
        return "\n".join(lines) + "\n"
    lines += ["| split | n | J | F | J&F |", "|---|---:|---:|---:|---:|"]
    for name, t in summary["table"].items():
        if t["objects"]:
            lines.append(f"| {name} | {t['objects']} | {100 * t['J']:.1f} | {100 * t['F']:.1f} | {100 * t['J&F']:.1f} |")
        else:
            lines.append(f"| {name} | 0 | - | - | - |")
    if summary.get("overall_rule") == "kinds":
        lines += ["", "overall = mean of the per-kind scores (the dataset's own convention)."]
    return "\n".join(lines) + "\n"


# ---- plot -----------------------------------------------------------------------------------
def write_plot(path: Path, videos: list[dict[str, Any]], previews: list[_Preview], summary: dict[str, Any]) -> None:
    """Per-video J&F bars above a few overlay frames (the best and worst samples; white
    outline: ground truth)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [v for v in videos if not math.isnan(v["J&F"])]
    columns = max(1, len(previews))
    fig = plt.figure(figsize=(max(8.0, 0.35 * len(scored) + 2, 3.2 * columns), 7.5))
    grid = fig.add_gridspec(2, columns, height_ratios=[1.0, 1.1])
    ax = fig.add_subplot(grid[0, :])
    if scored:
        names = [v["video"] for v in scored]
        values = [100 * v["J&F"] for v in scored]
        ax.bar(range(len(values)), values, color="#4c72b0", width=0.7)
        ax.set_xlim(-0.75, max(len(values), 8) - 0.25)  # a few videos do not make wide bars
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(names, rotation=60 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center",
                           fontsize=8 if len(names) > 20 else 9)
        overall = summary["table"]["overall"]["J&F"]
        ax.axhline(100 * overall, color="#c44e52", linestyle="--", linewidth=1, label=f"overall {100 * overall:.1f}")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("J&F (%)")
    else:
        ax.text(0.5, 0.5, "no ground truth: not scored", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"{summary.get('dataset')} - {summary.get('mode')} - grounder {summary.get('grounder', '?')}, "
                 f"tracker {summary.get('tracker', '?')}", fontsize=10)
    for k, p in enumerate(previews):
        a = fig.add_subplot(grid[1, k])
        a.imshow(p.image)
        a.set_title(p.title, fontsize=8)
        a.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
