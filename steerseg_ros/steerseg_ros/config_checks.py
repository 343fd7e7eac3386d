"""Checks shared by the config dataclasses (pipeline, keyframes, backends, the node's own).

Owns the rule that every float setting is a finite number: NaN compares false with everything,
so a range check written as `if x < 0: raise` lets NaN through, and an infinite period or timeout
breaks whatever divides or sleeps by it. Each config's `validate()` calls `check_finite` first,
then checks its ranges. Durations (float fields named `*_s`) also get an upper bound: a period of
1e300 s is finite, but no timer or nanosecond stamp arithmetic can hold it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

# The longest duration a `*_s` setting may have: about 11.6 days, far beyond any period or
# timeout the node uses, and far inside int64 nanoseconds.
MAX_DURATION_S = 1e6


def check_finite(config: Any, prefix: str = "") -> None:
    """Raise ValueError naming the first float field (or element of a float list) of the
    dataclass `config`, nested ones included, that is NaN or infinite, or the first duration
    (a float field named `*_s`) over MAX_DURATION_S."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_finite(value, f"{name}.")
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v}")
            if isinstance(v, float) and f.name.endswith("_s") and v > MAX_DURATION_S:
                raise ValueError(f"{name} must be at most {MAX_DURATION_S:g} s, got {v}")
