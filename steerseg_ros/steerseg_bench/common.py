"""What the benchmark sections share: the skip signal, flat figures, the DAVIS data they read.

Every area module and the command line import this module; it imports none of them, so the
registry (sections.py) and the command line (cli.py) stay out of an import circle.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Callable, Optional

from steerseg_testing import davis

SectionFn = Callable[[argparse.Namespace], dict[str, Any]]


class SectionSkipped(Exception):
    """Raised by a section that cannot run here (no data, no device): reported, not failed."""


def flatten(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict of figures as one level, keys joined with dots."""
    flat: dict[str, Any] = {}
    for key, value in figures.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def print_figures(figures: dict[str, Any], json_path: str = "") -> None:
    """A benchmark module's figures as indented JSON on stdout, and in `json_path` too if given
    (the `--json` option of the modules run on their own)."""
    text = json.dumps(figures, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")


def ms_figures(values: list[float]) -> dict[str, float]:
    """Median and mean of durations in seconds, as milliseconds."""
    return {"median_ms": round(1e3 * statistics.median(values), 3), "mean_ms": round(1e3 * statistics.fmean(values), 3)}


def load_sequence(data: Path, sequence: str, count: Optional[int] = None):
    """(names, RGB frames, boolean masks) of a DAVIS sequence; none there skips the section."""
    names, images, masks = davis.load_sequence(data, sequence, count)
    if not names:
        raise SectionSkipped(f"no frames at {data / 'JPEGImages' / '480p' / sequence} (give --data, the davis16 folder)")
    return names, images, masks


def command_for(data: Path, sequence: str, kind: str = "referring") -> str:
    videos = json.loads((data / "expressions.json").read_text())["videos"]
    return next(e["exp"] for e in videos[sequence]["expressions"] if e["kind"] == kind)
