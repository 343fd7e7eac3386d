"""Every float setting of every config (the pipeline's, the keyframes', each backend's) refuses
NaN and infinity, and durations refuse values no timer can hold: the offline tools build the
same configs as the node, so the check lives in the configs themselves."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from steerseg_ros.streaming import backends
from steerseg_ros.streaming.buffer import KeyframeConfig
from steerseg_ros.streaming.pipeline import PipelineConfig

BACKENDS = [("grounder", n) for n in backends.GROUNDERS] + [("tracker", n) for n in backends.TRACKERS]


def _float_fields(cls):
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls)
            if hints[f.name] is float or typing.get_args(hints[f.name])[:1] == (float,)]


@pytest.mark.parametrize("kind, name", BACKENDS, ids=[f"{k}-{n}" for k, n in BACKENDS])
def test_every_float_option_of_every_backend_must_be_finite(kind, name):
    if name != "builtin":
        pytest.importorskip("torch")
    cls = backends.config_class(kind, name)
    fields = _float_fields(cls)
    assert fields, f"{cls.__name__} has no float option"
    list_fields = {f.name for f in dataclasses.fields(cls) if typing.get_origin(typing.get_type_hints(cls)[f.name])}
    for field_name in fields:
        for bad in (float("nan"), float("inf"), float("-inf")):
            value = [bad] if field_name in list_fields else bad
            with pytest.raises(ValueError, match=f"{field_name} must be a finite number"):
                backends.make_config(kind, name, {field_name: value})


@pytest.mark.parametrize("field_name", _float_fields(PipelineConfig))
def test_every_float_setting_of_the_pipeline_must_be_finite(field_name):
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            PipelineConfig(**{field_name: bad}).validate()


@pytest.mark.parametrize("field_name", _float_fields(KeyframeConfig))
def test_every_float_setting_of_the_keyframes_must_be_finite(field_name):
    with pytest.raises(ValueError, match="finite"):
        KeyframeConfig(**{field_name: float("nan")}).validate()
    with pytest.raises(ValueError, match="finite"):
        PipelineConfig(keyframes=KeyframeConfig(**{field_name: float("inf")})).validate()


def test_durations_are_bounded():
    with pytest.raises(ValueError, match="at most"):
        PipelineConfig(lost_timeout_s=1e300).validate()
    PipelineConfig(lost_timeout_s=3600.0).validate()  # an hour is a legitimate setting
