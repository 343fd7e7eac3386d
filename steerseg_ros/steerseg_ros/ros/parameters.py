"""ROS parameters from configuration dataclasses.

Owns the mapping between a config dataclass (every field with `metadata={"help": ...}` and a
simple type: bool, int, float, str, or a list of one of those; nested config dataclasses are
flattened with dots) and the node's parameters: one `ParameterDescriptor` per field, its
description the field's help text, and the way back from parameter values to a config.
"""
from __future__ import annotations

import dataclasses
import json
import textwrap
import typing
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from rcl_interfaces.msg import ParameterDescriptor, ParameterType

_SCALARS = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_ARRAYS = {
    bool: ParameterType.PARAMETER_BOOL_ARRAY,
    int: ParameterType.PARAMETER_INTEGER_ARRAY,
    float: ParameterType.PARAMETER_DOUBLE_ARRAY,
    str: ParameterType.PARAMETER_STRING_ARRAY,
}


@dataclass
class ParamSpec:
    """One parameter made from one dataclass field. `path` is the attribute path inside the
    config (("keyframes", "count") for `pipeline.keyframes.count`)."""

    name: str
    path: tuple[str, ...]
    type: int
    default: Any
    help: str

    def descriptor(self, read_only: bool = False) -> ParameterDescriptor:
        return ParameterDescriptor(name=self.name, type=self.type, description=self.help, read_only=read_only)


def _param_type(cls: type, field_name: str, hint: Any) -> int:
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (list, tuple) and args and args[0] in _ARRAYS:
        return _ARRAYS[args[0]]
    raise TypeError(f"{cls.__name__}.{field_name}: type {hint!r} cannot be a ROS parameter "
                    "(use bool, int, float, str or a list of one of those)")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise TypeError(f"field {f.name} has no default; every config field needs one")


def specs(cls: type, prefix: str, defaults: Optional[Mapping[str, Any]] = None,
          exclude: Iterable[str] = ()) -> list[ParamSpec]:
    """One ParamSpec per (flattened) field of the dataclass `cls`, named `<prefix>.<field>`.
    `defaults` overrides field defaults by flattened name relative to `cls` ("keyframes.count");
    `exclude` leaves fields out by the same name."""
    defaults = dict(defaults or {})
    exclude = set(exclude)
    out: list[ParamSpec] = []
    hints = typing.get_type_hints(cls)

    def walk(klass: type, path: tuple[str, ...]) -> None:
        klass_hints = typing.get_type_hints(klass) if klass is not cls else hints
        for f in dataclasses.fields(klass):
            sub = path + (f.name,)
            rel = ".".join(sub)
            if rel in exclude:
                continue
            hint = klass_hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, sub)
                continue
            help_text = f.metadata.get("help")
            if not help_text:
                raise TypeError(f"{klass.__name__}.{f.name} has no metadata['help']")
            ptype = _param_type(klass, f.name, hint)
            default = defaults.get(rel, _default(f))
            if isinstance(default, tuple):
                default = list(default)
            out.append(ParamSpec(f"{prefix}.{rel}" if prefix else rel, sub, ptype, default, help_text))

    walk(cls, ())
    return out


def build(cls: type, values: Mapping[tuple[str, ...], Any]):
    """An instance of the dataclass `cls` from values by attribute path; fields without a
    value keep their defaults. Integers given for float fields are converted."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            nested = {p[1:]: v for p, v in values.items() if p[0] == f.name and len(p) > 1}
            kwargs[f.name] = build(hint, nested)
        elif (f.name,) in values:
            value = values[(f.name,)]
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if typing.get_origin(hint) in (list, tuple):
                value = list(value)
            kwargs[f.name] = value
    return cls(**kwargs)


def flat_values(config: Any) -> dict[tuple[str, ...], Any]:
    """The (flattened) field values of a config instance by attribute path."""
    out: dict[tuple[str, ...], Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update({(f.name,) + p: v for p, v in flat_values(value).items()})
        else:
            out[(f.name,)] = value
    return out


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        # rcl reads 1 as an integer, which a double parameter refuses.
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a parameter")


def render_yaml(node_key: str, param_specs: list[ParamSpec], header: str = "") -> str:
    """A ROS 2 parameters file (`node_key: ros__parameters: ...`, nested by the dots in the
    names, groups in order of first appearance) with each parameter's help text as a comment."""
    tree: dict = {}
    for spec in param_specs:
        *groups, leaf = spec.name.split(".")
        node = tree
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = spec

    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{node_key}:", "  ros__parameters:"]

    def emit(node: dict, depth: int) -> None:
        indent = "    " + "  " * depth
        for key, value in node.items():
            if isinstance(value, dict):
                lines.append(f"{indent}{key}:")
                emit(value, depth + 1)
            else:
                for line in textwrap.wrap(value.help, width=max(40, 96 - len(indent))):
                    lines.append(f"{indent}# {line}")
                lines.append(f"{indent}{key}: {_yaml_value(value.default)}")

    emit(tree, 0)
    return "\n".join(lines) + "\n"
