"""steerseg-eval: run the node's core over a dataset on disk and score it like the papers do.

    steerseg-eval --dataset expressions --root ../shared/data/davis16 --out /tmp/eval --mode offline

Backends and their options are chosen as the node's parameters choose them: `--grounder` /
`--tracker` name the backend, `--params FILE` reads a parameters YAML in the node's format
(`steerseg: ros__parameters: {grounder: {backend: ..., <field>: ...}, tracker: {...},
pipeline: {...}}`), and repeatable `--set SECTION.FIELD=VALUE` overrides it (sections grounder,
tracker, pipeline, offline; nested fields with dots, e.g. `pipeline.keyframes.count=8`). Values
are YAML scalars or lists. Outputs are described in steerseg_ros.offline.evaluation.

Sharded, for a job scheduler: `--shard K/N` (K in 1..N) evaluates every N-th video from the K-th
and writes OUT/shards/K-of-N/; once all N have finished, `steerseg-eval --merge --out OUT` writes
the tables of the whole run (the same as one unsharded run). Under `torchrun` each rank takes its
shard from RANK and WORLD_SIZE by itself, the ranks meet at a barrier when done (torch.distributed,
gloo: no GPU needed for it), and rank 0 merges:

    torchrun --nproc-per-node 8 -m steerseg_ros.tools.eval --dataset ... --out OUT

The following benchmark (steerseg_ros.offline.following): `--following occluder,pan,distractor`
builds those scenes from the DAVIS-layout sequences under --root (`--sequences`, default all
ten; `development` and `held_out` name the splits), runs them with the chosen backends at every
grounding latency of `--latencies`, and writes its tables, CSVs, JSON and plot under --out:

    steerseg-eval --following occluder,pan,distractor --root ../shared/data/davis16 --out OUT \
        --grounder oracle --set grounder.kind=attention --latencies 0,2
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import logging
import math
import os
import shlex
import sys
import time
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from tqdm import tqdm

from steerseg_ros.streaming import backends
from steerseg_ros.offline.datasets import ALIASES, DATASETS, DatasetError, open_dataset
from steerseg_ros.offline.evaluation import (MODES, EvalConfig, Evaluator, merge_shards, parse_shard, shard_of,
                                     summary_markdown)
from steerseg_ros.offline.protocol import OfflineConfig
from steerseg_ros.streaming.pipeline import PipelineConfig

log = logging.getLogger("steerseg_ros.tools.eval")

SECTIONS = ("grounder", "tracker", "pipeline", "offline")
# Node parameters under grounder.* / tracker.* that choose a backend rather than configure it.
CHOICE_FIELDS = ("backend", "fallback_to_builtin")


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """Nested parameter dicts to dotted names, as ROS 2 names parameters."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The parameters of a ROS 2 parameters YAML (every `<node>: ros__parameters:` section,
    `/**` included, merged in file order) as dotted names."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    params: dict[str, Any] = {}
    found = False
    for section in data.values() if isinstance(data, dict) else []:
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            params.update(flatten(section["ros__parameters"]))
            found = True
    if not found:
        raise ValueError(f"{path}: no '<node>: ros__parameters:' section")
    return params


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
        out[name.strip()] = yaml.safe_load(text) if text.strip() else ""
    return out


def coerce(value: Any, hint: Any, where: str) -> Any:
    """A parameter value checked against a config field's type (ints are accepted for floats)."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        (inner,) = typing.get_args(hint)[:1] or (Any,)
        return [coerce(v, inner, where) for v in value]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and not isinstance(value, str):
        return str(value)
    if hint in (bool, int, float) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{where} expects {hint.__name__}, got {value!r}")
    return value


def build_config(cls: type, values: dict[str, Any], where: str):
    """An instance of config dataclass `cls` from dotted field names (nested dataclasses by
    dots); unknown names are an error that lists the known ones."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if head not in fields:
            raise ValueError(f"{where} has no option {head!r}; it has {sorted(fields)}")
        if dataclasses.is_dataclass(hints[head]):
            if not rest:
                raise ValueError(f"{where}.{head} is a group; set one of its fields ({where}.{head}.<field>)")
            nested.setdefault(head, {})[rest] = value
        elif rest:
            raise ValueError(f"{where}.{head} has no field {rest!r}")
        else:
            kwargs[head] = coerce(value, hints[head], f"{where}.{head}")
    for head, sub in nested.items():
        kwargs[head] = build_config(hints[head], sub, f"{where}.{head}")
    return cls(**kwargs)


@dataclasses.dataclass
class Setup:
    grounder: str
    tracker: str
    grounder_options: dict[str, Any]
    tracker_options: dict[str, Any]
    pipeline: PipelineConfig
    offline: OfflineConfig


def make_setup(params: dict[str, Any], grounder: Optional[str], tracker: Optional[str]) -> Setup:
    """Backends and configs from dotted parameters; `grounder` / `tracker` (the command line)
    win over `<kind>.backend`."""
    by_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    ignored = []
    for name, value in params.items():
        section, _, rest = name.partition(".")
        if section in by_section and rest:
            by_section[section][rest] = value
        else:
            ignored.append(name)
    if ignored:
        log.info("not evaluation settings (left to the node): %s", ", ".join(sorted(ignored)))
    names = {"grounder": grounder or by_section["grounder"].get("backend", "builtin"),
             "tracker": tracker or by_section["tracker"].get("backend", "builtin")}
    options = {}
    for kind in ("grounder", "tracker"):
        table = backends.GROUNDERS if kind == "grounder" else backends.TRACKERS
        if names[kind] not in table:
            raise ValueError(f"unknown {kind} backend {names[kind]!r}; choose one of {sorted(table)}")
        if by_section[kind].get("fallback_to_builtin"):
            log.warning("%s.fallback_to_builtin is ignored: an evaluation never swaps backends", kind)
        preset = table[names[kind]][3]
        values = {k: v for k, v in by_section[kind].items() if k not in CHOICE_FIELDS}
        fixed = sorted(set(values) & set(preset))
        if fixed:
            raise ValueError(f"{kind}.{fixed[0]} is fixed by the backend name {names[kind]!r}")
        cls = backends.config_class(kind, names[kind])
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{kind} backend {names[kind]!r} has no option(s) {unknown}; it has {sorted(known)}")
        options[kind] = {k: coerce(v, hints[k], f"{kind}.{k}") for k, v in values.items()}
    return Setup(names["grounder"], names["tracker"], options["grounder"], options["tracker"],
                 build_config(PipelineConfig, by_section["pipeline"], "pipeline"),
                 build_config(OfflineConfig, by_section["offline"], "offline"))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    names = sorted(DATASETS) + sorted(ALIASES)
    p = argparse.ArgumentParser(
        prog="steerseg-eval", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Datasets and the folder layouts they expect: see steerseg_ros/datasets.py.")
    p.add_argument("--dataset", help=f"layout: one of {', '.join(names)} (required unless --merge)")
    p.add_argument("--root", help="the dataset's folder (required unless --merge)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--shard", metavar="K/N", help="evaluate only shard K of N (K in 1..N; every N-th video); "
                                                  "default under torchrun: RANK+1/WORLD_SIZE")
    p.add_argument("--merge", action="store_true",
                   help="merge the finished shards under --out into the whole run's tables, and stop")
    p.add_argument("--merge-timeout-h", type=float, default=72.0,
                   help="under torchrun: how long rank 0 waits at the final barrier for the other ranks")
    p.add_argument("--mode", choices=MODES, default="streaming",
                   help="streaming: frame by frame as the node runs (default); offline: the papers' "
                        "protocol (keyframes over the whole clip, propagation both ways)")
    p.add_argument("--split", help="split where the layout has several (e.g. valid, valid_u, train)")
    p.add_argument("--meta", help="the expression file, where it is not in its usual place")
    p.add_argument("--grounder", help=f"grounding backend: {', '.join(sorted(backends.GROUNDERS))} (default: "
                                      "grounder.backend from --params, else builtin)")
    p.add_argument("--tracker", help=f"tracking backend: {', '.join(sorted(backends.TRACKERS))} (default: "
                                     "tracker.backend from --params, else builtin)")
    p.add_argument("--params", help="a parameters YAML in the node's format")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one setting (sections: grounder, tracker, pipeline, offline); repeatable")
    p.add_argument("--keyframes", type=int, help="offline mode: keyframes over the clip (offline.keyframes, default 16)")
    p.add_argument("--fps", type=float, help="frame rate of the frames on disk for streaming stamps "
                                             "(default: the dataset's)")
    p.add_argument("--sequences", action="append", default=[], help="only these videos (comma-separated; repeatable)")
    p.add_argument("--limit", type=int, default=0, help="only the first N samples")
    p.add_argument("--max-frames", type=int, default=0,
                   help="only the first N frames of each video (quick runs; not the benchmark protocol)")
    p.add_argument("--following", metavar="KINDS",
                   help="run the following benchmark instead of a dataset: scene kinds (occluder, pan, "
                        "distractor; comma-separated, or all) made from the DAVIS-layout sequences under --root")
    p.add_argument("--latencies", default="0,0.5,1,2,4",
                   help="--following: grounding latencies in seconds of camera time (comma-separated)")
    p.add_argument("--following-width", type=int, default=0,
                   help="--following: frame width of the scenes (0: the source's)")
    p.add_argument("--following-duration", type=float, default=12.0, help="--following: seconds per scene (>= 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the pipeline does")
    return p.parse_args(argv)


def torchrun_shard() -> Optional[tuple[int, int]]:
    """(rank, world size) when started by torchrun (or any launcher that sets both), else None."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (rank, world) if world > 1 and 0 <= rank < world else None


def _selected(dataset, videos: Optional[list[str]], limit: int, shard: Optional[tuple[int, int]]):
    """(index in the whole run, sample) for this run's samples: the first `limit` of the whole
    run's samples, then this shard's videos among them."""
    samples = enumerate(dataset.samples(videos))
    if limit:
        samples = itertools.islice(samples, limit)
    if shard is None:
        return samples
    mine = shard_of(videos or dataset.videos(), *shard)
    return ((i, s) for i, s in samples if s.video in mine)


def _merge(out: str) -> int:
    try:
        report = merge_shards(out)
    except (ValueError, OSError) as e:
        print(f"steerseg-eval: {e}", file=sys.stderr)
        return 2
    print(summary_markdown(report.summary))
    for name, path in report.files.items():
        print(f"{name}: {path}")
    return 0


def _distributed(timeout_h: float):
    """The torch.distributed group of a torchrun launch (gloo over the launcher's rendezvous),
    used only for the final barrier; None where torch is not installed."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        log.warning("torch is not installed: no barrier; run steerseg-eval --merge when every rank is done")
        return None
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=timeout_h))
    if torch.cuda.is_available():
        # Each rank on its own GPU: a backend's device "cuda" then means the current one.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return dist


def _plan(args: argparse.Namespace, ranks: Optional[tuple[int, int]]):
    """What this run evaluates and how: (shard, dataset, videos, number of samples, setup,
    config). Raises ValueError, DatasetError, OSError, ImportError or yaml.YAMLError for a
    run that cannot start."""
    if not args.dataset or not args.root:
        raise ValueError("--dataset and --root are required (unless --merge)")
    shard = parse_shard(args.shard) if args.shard else ranks
    dataset = open_dataset(args.dataset, args.root, args.split, args.meta)
    videos = [v for item in args.sequences for v in item.split(",") if v] or None
    total = sum(1 for _ in _selected(dataset, videos, args.limit, shard))
    params = read_params_file(args.params) if args.params else {}
    params.update(parse_set(args.set))
    if args.keyframes is not None:
        params["offline.keyframes"] = args.keyframes
    setup = make_setup(params, args.grounder, args.tracker)
    config = EvalConfig(args.mode, args.fps, args.max_frames, setup.pipeline, setup.offline)
    config.validate()
    return shard, dataset, videos, total, setup, config


def _describe(setup: Setup, load_s: float, argv: Optional[Sequence[str]]) -> dict[str, Any]:
    """The run's settings as the report records them."""
    return {
        "grounder": setup.grounder, "tracker": setup.tracker,
        "grounder_options": setup.grounder_options, "tracker_options": setup.tracker_options,
        "pipeline": dataclasses.asdict(setup.pipeline), "offline": dataclasses.asdict(setup.offline),
        "backend_load_s": load_s, "command": shlex.join(["steerseg-eval", *(argv if argv is not None else sys.argv[1:])]),
    }


def _run_samples(args: argparse.Namespace, evaluator: Evaluator, dataset, videos, shard, total: int) -> None:
    """Evaluates this run's samples with a progress bar showing the running J&F; Ctrl-C stops
    early (what was evaluated is still written)."""
    try:
        with tqdm(total=total, desc=f"{dataset.name} {args.mode}", unit="sample",
                  disable=args.no_progress, dynamic_ncols=True) as bar:
            for index, sample in _selected(dataset, videos, args.limit, shard):
                bar.set_postfix_str(sample.key[-40:], refresh=False)
                evaluator.run_sample(sample, index)
                scored = [r.jf for r in evaluator.rows if not math.isnan(r.j)]
                if scored:
                    bar.set_postfix({"J&F": f"{100 * sum(scored) / len(scored):.1f}"}, refresh=False)
                bar.update(1)
    except KeyboardInterrupt:
        print("\nsteerseg-eval: interrupted; writing what was evaluated so far", file=sys.stderr)


def _print_report(report) -> int:
    """Prints the summary and the files written; the exit code (1 when a sample failed)."""
    print(summary_markdown(report.summary))
    for name, path in report.files.items():
        print(f"{name}: {path}")
    if report.summary["errors"]:
        print(f"steerseg-eval: {report.summary['errors']} sample(s) failed; see the error column of "
              f"{report.files['rows']}", file=sys.stderr)
    return 1 if report.summary["errors"] else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.merge:
        return _merge(args.out)
    if args.following:
        return _following(args, argv)
    ranks = torchrun_shard()
    try:
        shard, dataset, videos, total, setup, config = _plan(args, ranks)
    except (ValueError, DatasetError, OSError, ImportError, yaml.YAMLError) as e:
        print(f"steerseg-eval: {e}", file=sys.stderr)
        return 2
    if total == 0 and shard is None:
        print("steerseg-eval: no samples to evaluate", file=sys.stderr)
        return 2
    # Joined before the models load, so that a rank that fails to start is seen at once.
    group = _distributed(args.merge_timeout_h) if ranks is not None else None

    t0 = time.perf_counter()
    try:
        grounder = backends.make_grounder(setup.grounder, setup.grounder_options)
        tracker = backends.make_tracker(setup.tracker, setup.tracker_options)
    except Exception as e:
        print(f"steerseg-eval: cannot load the backends: {e}", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(dataset, grounder, tracker, out, config, _describe(setup, load_s, argv), shard)
    t0 = time.perf_counter()
    try:
        _run_samples(args, evaluator, dataset, videos, shard, total)
    finally:
        grounder.close()
        tracker.close()
    code = _print_report(evaluator.finish(time.perf_counter() - t0))
    if group is not None:
        group.barrier()  # every rank has written its shard
        if ranks[0] == 0:
            code = max(code, _merge(args.out))
        group.destroy_process_group()
    elif shard is not None:
        print(f"steerseg-eval: shard {shard[0] + 1} of {shard[1]} done; once all are, "
              f"run: steerseg-eval --merge --out {shlex.quote(args.out)}", file=sys.stderr)
    return code


def _following(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> int:
    """steerseg-eval --following: the following benchmark's scenes with the chosen backends."""
    from steerseg_ros.offline.following import GrounderSpec, markdown, run_sweep, write_report
    from steerseg_ros.offline.following_scenes import KINDS, SceneConfig, build_scenes

    try:
        if not args.root:
            raise ValueError("--following needs --root, the DAVIS-layout folder")
        kinds = list(KINDS) if args.following == "all" else [k for k in args.following.split(",") if k]
        sequences = [v for item in args.sequences for v in item.split(",") if v] or ["all"]
        latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
        params = read_params_file(args.params) if args.params else {}
        params.update(parse_set(args.set))
        setup = make_setup(params, args.grounder, args.tracker)
        config = SceneConfig(fps=args.fps or 15.0, duration_s=args.following_duration, width=args.following_width)
        config.validate()
        setup.pipeline.validate()
        spec = GrounderSpec.parse(setup.grounder, setup.grounder_options)
        scenes = build_scenes(args.root, sequences, kinds, config)
    except (ValueError, OSError, KeyError, yaml.YAMLError) as e:
        print(f"steerseg-eval: {e}", file=sys.stderr)
        return 2
    try:
        tracker = backends.make_tracker(setup.tracker, setup.tracker_options)
    except Exception as e:
        print(f"steerseg-eval: cannot load the tracker: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        with tqdm(total=len(scenes) * len(latencies), desc="following", unit="run", disable=args.no_progress,
                  dynamic_ncols=True) as bar:
            result = run_sweep(scenes, [spec], tracker, setup.pipeline, latencies, out / "work",
                               progress=lambda line: bar.update(1))
    finally:
        tracker.close()
    files = write_report(result, out, {**_describe(setup, 0.0, argv), "scene_config": dataclasses.asdict(config),
                                       "latencies": latencies})
    print(markdown(result))
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
