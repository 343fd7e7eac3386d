"""steerseg-bench: the whole pipeline's figures for this machine, as one table plus JSON.

    steerseg-bench                                     # every section, tiny models (minutes on a CPU)
    steerseg-bench --out out/bench                     # also writes out/bench/bench.md and bench.json
    steerseg-bench --sections tracker,sam2 --device cuda --real-size

Sections (`--sections`, comma-separated; default all but soak; sections.py lists them) and the
module that measures each, whose docstring gives the figures and the goals the issues set:
- node_overhead (overhead.py): the node's own work per frame around the tracker step.
- depth3d, depth3d_node (depth.py): the 3D step per object per frame, alone and in the node.
- grounding_rate (grounding_rate.py): the mask rate while a grounding runs, over DDS.
- memory, soak (soak.py; soak not in the default run): the node process's resources over
  long runs and its frame accounting.
- rollout, grounding, sam2, tracker (models.py): the model stages and the built-in tracker.
Model sections use tiny random-weight configs unless `--real-size` (Qwen2.5-VL-3B/-7B and
SAM2.1 tiny/small/base-plus/large layer shapes at 1024 px, 854x480 frames, random weights), and
run on `--device` (default: cuda if available, else cpu). On a CPU the real sizes take hours;
`--grounding-layers`, `--grounding-vision-depth`, `--rollout-layers`, `--sam2-configs` and
`--sam2-memory-frames` cut them down.

A section whose dependencies are missing (no torch, no data) is reported as skipped with the
reason; a section that fails reports its error and the others still run (the exit code is then
1). The files are rewritten after every section, and Ctrl-C stops the run keeping what is done.
Each section is a function (options) -> dict of figures; nested results are flattened with
dotted keys. The JSON holds the machine (CPUs, load average before and after, torch version,
device, GPU), the options and every section's figures, so two runs can be compared. Timings
depend on what else runs on the machine: compare runs only with their load averages.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import cv2

from steerseg_bench import sections
from steerseg_bench.common import SectionSkipped, flatten
from steerseg_bench.sections import OPT_IN, REQUIRES, SECTIONS
from steerseg_testing.davis import davis_root


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerseg-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sections", default=",".join(n for n in SECTIONS if n not in OPT_IN),
                        help=f"comma-separated, of {list(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=None, help="write DIR/bench.md (the table) and DIR/bench.json")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="for the torch sections; auto: cuda if available, else cpu")
    parser.add_argument("--real-size", action="store_true",
                        help="model sections on real layer shapes (random weights) instead of tiny configs")
    parser.add_argument("--data", type=Path, default=davis_root(), help="the davis16 folder")
    parser.add_argument("--sequence", default="blackswan", help="DAVIS sequence of the node sections")
    parser.add_argument("--frames", type=int, default=None, help="frames of that sequence to use (default: all)")
    parser.add_argument("--warmup", type=int, default=5, help="frames left out of the timings at the start")
    sections.add_options(parser)
    return parser


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _resolve_device(args: argparse.Namespace, names: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Sets args.device to cpu or cuda and returns the machine's device figures. torch is only
    imported when a selected section uses it."""
    uses_torch = any("torch" in REQUIRES[n] and not _missing(REQUIRES[n]) for n in names)
    if not uses_torch:
        args.device = "cpu" if args.device == "auto" else args.device
        return {"device": args.device}
    import torch

    available = torch.cuda.is_available()
    if args.device == "cuda" and not available:
        parser.error("--device cuda: torch sees no CUDA device here")
    args.device = "cuda" if args.device == "auto" and available else ("cpu" if args.device == "auto" else args.device)
    figures: dict[str, Any] = {"device": args.device, "torch_threads": torch.get_num_threads()}
    if args.device == "cuda":
        figures["gpu"] = torch.cuda.get_device_name(0)
        figures["cuda"] = torch.version.cuda
    return figures


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_cell(v) for v in value) if all(isinstance(v, (int, float)) for v in value) else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the machine, then one table of every section's figures."""
    machine = report["machine"]
    lines = ["# steerseg-bench", "", f"`{report['command']}`", "",
             "| machine | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in machine.items()]
    lines += ["", "| section | figure | value |", "|---|---|---|"]
    for name, entry in report["sections"].items():
        status = entry["status"] + (f" ({entry['seconds']:.0f} s)" if "seconds" in entry else "")
        lines.append(f"| {name} | status | {status} |")
        for key in ("reason", "error"):
            if key in entry:
                lines.append(f"| {name} | {key} | {_cell(entry[key])} |")
        lines += [f"| {name} | {k} | {_cell(v)} |" for k, v in entry.get("figures", {}).items()]
    return "\n".join(lines) + "\n"


def run_section(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One section's entry: status ok (with figures), skipped (with the reason) or failed (with
    the error). Never raises: one broken section must not cost the others."""
    missing = _missing(REQUIRES[name])
    if missing:
        return {"status": "skipped", "reason": f"needs {', '.join(missing)}, not installed"}
    start = time.perf_counter()
    try:
        figures = flatten(SECTIONS[name](args))
    except SectionSkipped as reason:
        return {"status": "skipped", "reason": str(reason)}
    except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
        traceback.print_exc()
        return {"status": "failed", "error": f"{type(error).__name__}: {error}",
                "seconds": round(time.perf_counter() - start, 1)}
    return {"status": "ok", "seconds": round(time.perf_counter() - start, 1), "figures": figures}


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    command = " ".join(["steerseg-bench"] + (sys.argv[1:] if argv is None else list(argv)))
    machine: dict[str, Any] = {
        "host": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": _version("torch"), "transformers": _version("transformers"),
        "opencv": cv2.__version__, "commit": _git_commit(), "load_average_before": _load()}
    machine.update(_resolve_device(args, names, parser))
    report: dict[str, Any] = {
        "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())},
        "sections": {}}
    for i, name in enumerate(names):
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            report["sections"][name] = entry = run_section(name, args)
        except KeyboardInterrupt:
            # A long real-size run stopped by hand keeps the figures it has.
            report["sections"][name] = entry = {"status": "interrupted"}
            report["sections"].update({n: {"status": "not run"} for n in names[i + 1:]})
        print(f"[bench] {name}: {entry['status']} {entry.get('reason', entry.get('error', ''))}",
              file=sys.stderr, flush=True)
        machine["load_average_after"] = _load()
        _write(report, args)  # after every section, so a run killed later keeps these
        if entry["status"] == "interrupted":
            break
    print(markdown(report))
    return 1 if any(e["status"] in ("failed", "interrupted") for e in report["sections"].values()) else 0


def _write(report: dict[str, Any], args: argparse.Namespace) -> None:
    text = json.dumps(report, indent=2, default=str) + "\n"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.md").write_text(markdown(report))
        (args.out / "bench.json").write_text(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
