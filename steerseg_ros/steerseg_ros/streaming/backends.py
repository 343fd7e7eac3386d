"""Backend registry: backend names to classes and their configuration dataclasses.

Each backend module defines a Config dataclass whose fields carry `metadata={"help": ...}` and a
`validate()` method; the node declares one ROS parameter per field from it (`grounder.<field>`,
`tracker.<field>`), and the offline tools build the same configs from their options. Modules
are imported only when their backend is asked for, so the built-in backends never import torch.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

from steerseg_ros.config_checks import check_finite

from steerseg_ros.grounding.base import Grounder
from steerseg_ros.tracking.base import Tracker

# name: (module, class, config class, preset config values)
GROUNDERS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "builtin": ("steerseg_ros.grounding.builtin", "BuiltinGrounder", "BuiltinGrounderConfig", {}),
    "decaf": ("steerseg_ros.grounding.vlm", "VLMGrounder", "VLMGrounderConfig", {"mode": "decaf"}),
    "steerseg": ("steerseg_ros.grounding.vlm", "VLMGrounder", "VLMGrounderConfig", {"mode": "steerseg"}),
    "sam3": ("steerseg_ros.grounding.sam3", "Sam3Grounder", "Sam3GrounderConfig", {}),  # noun phrases
    "oracle": ("steerseg_ros.grounding.oracle", "OracleGrounder", "OracleGrounderConfig", {}),  # ground truth: benchmarks
    # A grounder node in another process or on another machine (needs ROS).
    "remote": ("steerseg_ros.ros.remote_grounder", "RemoteGrounder", "RemoteGrounderConfig", {}),
}
TRACKERS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "builtin": ("steerseg_ros.tracking.flow", "FlowTracker", "FlowTrackerConfig", {}),
    "sam2": ("steerseg_ros.tracking.sam2", "Sam2Tracker", "Sam2TrackerConfig", {}),
    "sam2_meta": ("steerseg_ros.tracking.sam2_meta", "MetaSam2Tracker", "MetaSam2TrackerConfig", {}),
    "sam3": ("steerseg_ros.tracking.sam3", "Sam3Tracker", "Sam3TrackerConfig", {}),
}


def _entry(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} backend {name!r}; choose one of {sorted(table)}")
    module, cls, cfg, preset = table[name]
    mod = importlib.import_module(module)
    return getattr(mod, cls), getattr(mod, cfg), preset


def config_class(kind: str, name: str) -> type:
    """The config dataclass of backend `name` ("grounder" or "tracker")."""
    return _entry(GROUNDERS if kind == "grounder" else TRACKERS, kind, name)[1]


def make_config(kind: str, name: str, options: Mapping[str, Any] | None = None):
    """The backend's config from its preset and `options` (unknown keys are an error)."""
    _, cfg_cls, preset = _entry(GROUNDERS if kind == "grounder" else TRACKERS, kind, name)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    values = {**preset, **dict(options or {})}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"{kind} backend {name!r} has no option(s) {sorted(unknown)}; it has {sorted(fields)}")
    config = cfg_cls(**values)
    check_finite(config)
    config.validate()
    return config


def make_grounder(name: str, options: Mapping[str, Any] | None = None) -> Grounder:
    cls, _, _ = _entry(GROUNDERS, "grounder", name)
    return cls(make_config("grounder", name, options))


def make_tracker(name: str, options: Mapping[str, Any] | None = None) -> Tracker:
    cls, _, _ = _entry(TRACKERS, "tracker", name)
    return cls(make_config("tracker", name, options))
