"""The nodes' parameters: declared from config dataclasses, read back into them.

Owns the tracker node's own settings (`NodeConfig`), the parameter specs of the tracker node
(static, per backend, all defaults) and its parameters file (`write_default_params`), when a
changed parameter takes effect (`takes_effect`: live, or at the next activate or configure; the
README's table, `parameter_table`, is generated from it), and the one way every node declares a
spec (`declare`) and reads a config dataclass from its parameters (`read_config`).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Optional

from rcl_interfaces.msg import SetParametersResult
from rclpy.parameter import Parameter

from steerseg_ros.config_checks import check_finite
from steerseg_ros.streaming import backends
from steerseg_ros.streaming.pipeline import PipelineConfig
from steerseg_ros.ros import parameters
from steerseg_ros.ros.depth_input import DepthConfig
from steerseg_ros.ros.messages import MarkerConfig
from steerseg_ros.ros.node_base import WHEN_TEXT, validate_camera_options
from steerseg_ros.ros.node_base import waiting_reason as _waiting_reason

NODE_NAME = "steerseg"
BACKEND_KINDS = ("grounder", "tracker")
# Parameters under grounder.* / tracker.* that are the node's, not the backend config's.
_CHOICE_FIELDS = ("backend", "fallback_to_builtin")
# The parameters a change applies to on the fly, between two frames (the tracker node's
# _apply_live_parameters); every other one waits for the next activate or configure
# (takes_effect), and a change to it says so in its set-parameters result.
LIVE_NODE_FIELDS = ("overlay_alpha", "draw_unsubscribed", "follow_feedback_hz", "stats_period_s")
LIVE_PIPELINE_FIELDS = ("keyframes", "min_keyframes", "regrounding_period_s", "grounding_retry_s",
                        "lost_timeout_s", "lost_retry_s", "lost_window_s", "grounding_latency_s",
                        "unseen_regrounding_s", "min_confidence", "reconcile_iou", "time_jump_reset_s",
                        "max_command_chars", "max_targets", "selection")
LIVE_DEPTH_FIELDS = ("pairing_tolerance_s", "wait_s", "queue_size", "object_points_max", "max_speed_mps")


@dataclass
class NodeConfig:
    """The node's own settings (each field's help text is in its metadata)."""

    autostart: bool = field(default=False, metadata={"help": (
        "Configure and activate at start-up without a lifecycle manager. The launch file leaves it "
        "false and does the transitions itself.")})
    image_transport: str = field(default="raw", metadata={"help": (
        "raw: subscribe sensor_msgs/Image on `image`; compressed: sensor_msgs/CompressedImage "
        "(JPEG or PNG) on `image/compressed`. Takes effect at the next activate.")})
    image_qos: str = field(default="sensor_data", metadata={"help": (
        "QoS of the camera subscription: sensor_data (best effort, keep last 5) or reliable "
        "(reliable, keep last 5). Takes effect at the next activate.")})
    draw: bool = field(default=True, metadata={"help": (
        "Draw the overlay and the markers in this node (when something subscribes to them). The "
        "launch file sets it false when it starts the drawing node (steerseg_drawer), which draws "
        "them in its own process from the camera image, the mask and the tracks; this node then "
        "publishes neither. Takes effect at the next activate.")})
    overlay_alpha: float = field(default=0.5, metadata={"help": "Opacity of the mask tint in the overlay image."})
    draw_unsubscribed: bool = field(default=False, metadata={"help": (
        "Draw and publish the overlay and markers even when nothing subscribes to them (they cost "
        "a few milliseconds per frame).")})
    stats_period_s: float = field(default=5.0, metadata={"help": (
        "Log the counters and publish /diagnostics this often (seconds); 0: never.")})
    follow_feedback_hz: float = field(default=5.0, metadata={"help": (
        "Each Follow goal gets feedback (its tracks) at most this often (per second of wall time), "
        "on processed frames.")})
    target_frame: str = field(default="", metadata={"help": (
        "The frame of every 3D output (Track positions, target_point, object_points, "
        "detections_3d, the Follow goals' target poses), e.g. base_link, odom or map: looked up "
        "with tf2 at each image's stamp. A frame whose transform is missing or stale gets no 3D "
        "(counted as rejected.tf.*). Empty: the camera's optical frame (camera_info's frame_id). "
        "Takes effect at the next activate.")})
    tf_timeout_s: float = field(default=0.05, metadata={"help": (
        "How long a frame's 3D waits for its transform into target_frame to arrive (seconds; "
        "0: never wait). Takes effect at the next activate.")})
    publish_target_tf: bool = field(default=False, metadata={"help": (
        "Broadcast each target's position on tf as the frame target_<target id> (a child of the "
        "3D outputs' frame, no rotation): Nav2's following server can follow a tf frame. Takes "
        "effect at the next activate.")})

    def validate(self) -> None:
        check_finite(self)
        validate_camera_options(self)
        if self.stats_period_s < 0:
            raise ValueError(f"stats_period_s must be >= 0, got {self.stats_period_s}")
        if not self.follow_feedback_hz > 0:
            raise ValueError(f"follow_feedback_hz must be > 0, got {self.follow_feedback_hz}")
        if not 0.0 <= self.tf_timeout_s <= 1.0:
            raise ValueError(f"tf_timeout_s must be in [0, 1], got {self.tf_timeout_s}")
        if self.target_frame != self.target_frame.strip() or self.target_frame.startswith("/"):
            raise ValueError(f"target_frame must be a tf frame name without spaces or a leading '/', "
                             f"got {self.target_frame!r}")


# The tracker node's config sections by the first part of a parameter's name ("node": the
# names without a dot): (config class, parameter prefix, fields the node sets itself, which are
# no parameters). The node always grounds in the worker thread: `asynchronous` is fixed.
SECTIONS: dict[str, tuple[type, str, dict[str, Any]]] = {
    "node": (NodeConfig, "", {}),
    "markers": (MarkerConfig, "markers", {}),
    "depth": (DepthConfig, "depth", {}),
    "pipeline": (PipelineConfig, "pipeline", {"asynchronous": True}),
}


def section_specs(section: str) -> list[parameters.ParamSpec]:
    cls, prefix, fixed = SECTIONS[section]
    return parameters.specs(cls, prefix, exclude=set(fixed))


def pipeline_specs() -> list[parameters.ParamSpec]:
    return section_specs("pipeline")


def static_specs() -> list[parameters.ParamSpec]:
    """The parameters every node has, whatever its backends."""
    out = section_specs("node")
    for kind in BACKEND_KINDS:
        table = backends.GROUNDERS if kind == "grounder" else backends.TRACKERS
        out.append(parameters.ParamSpec(
            f"{kind}.backend", ("backend",), Parameter.Type.STRING.value, "builtin",
            f"The {kind} backend, one of {sorted(table)}. Takes effect at the next configure."))
        out.append(parameters.ParamSpec(
            f"{kind}.fallback_to_builtin", ("fallback_to_builtin",), Parameter.Type.BOOL.value, False,
            f"When the {kind} backend fails to load (e.g. missing weights), use the built-in one "
            "instead of staying unconfigured. Takes effect at the next configure."))
    out += pipeline_specs()
    out += section_specs("markers")
    out += section_specs("depth")
    return out


def backend_specs(kind: str, name: str) -> list[parameters.ParamSpec]:
    """Parameters of backend `name`'s config fields, `<kind>.<field>` (the fields its preset
    fixes are left out: the backend's name already says them). Imports the backend's module."""
    table = backends.GROUNDERS if kind == "grounder" else backends.TRACKERS
    if name not in table:
        raise ValueError(f"unknown {kind} backend {name!r}; choose one of {sorted(table)}")
    preset = table[name][3]
    return parameters.specs(backends.config_class(kind, name), kind, exclude=set(preset) | set(_CHOICE_FIELDS))


def default_specs(grounder: str = "builtin", tracker: str = "builtin") -> list[parameters.ParamSpec]:
    """Every parameter of a node with these backends (config/steerseg.yaml lists them)."""
    return static_specs() + backend_specs("grounder", grounder) + backend_specs("tracker", tracker)


def write_default_params(path: str, grounder: str = "builtin", tracker: str = "builtin") -> None:
    """Write the parameters file with every default and its help text (config/steerseg.yaml)."""
    header = (
        "Parameters of the steerseg node, every one at its default (generated from the config\n"
        "dataclasses by steerseg_ros.ros.node_config.write_default_params; test_node_parameters checks\n"
        "that it still matches them). The key /**/steerseg matches the node in any namespace\n"
        "(a plain `steerseg:` would not apply under a namespace).")
    with open(path, "w") as f:
        f.write(parameters.render_yaml(f"/**/{NODE_NAME}", default_specs(grounder, tracker), header))


def takes_effect(name: str) -> str:
    """When a change of the tracker node's parameter `name` takes effect: "live" (between two
    frames), "activate", "configure" (the next such transition) or "start" (autostart)."""
    section, _, rest = name.partition(".")
    if not rest:
        if name == "autostart":
            return "start"
        if name in LIVE_NODE_FIELDS:
            return "live"
        # The camera and drawing choices are subscriptions and publishers, made at activate.
        return "activate"
    if section == "markers":
        return "live"
    if section == "depth":
        return "live" if rest in LIVE_DEPTH_FIELDS else "activate"
    if section == "pipeline":
        return "live" if rest.split(".")[0] in LIVE_PIPELINE_FIELDS else "configure"
    return "configure"  # grounder.* / tracker.*: the backends are built at configure


def waiting_reason(names: list[str]) -> str:
    """The set-parameters `reason` for a successful change of these parameters: empty when all
    apply live, else which of them wait and for what."""
    return _waiting_reason(names, takes_effect)


def parameter_table() -> str:
    """The README's parameter table (Markdown): every static parameter, its default and when a
    change takes effect; the backends' own fields (grounder.*, tracker.*) in one row each."""
    rows = ["| parameter | default | a change takes effect |", "|---|---|---|"]
    for spec in static_specs():
        default = parameters._yaml_value(spec.default)
        rows.append(f"| `{spec.name}` | `{default}` | {WHEN_TEXT[takes_effect(spec.name)]} |")
    for kind in BACKEND_KINDS:
        rows.append(f"| `{kind}.*` (the chosen backend's fields) | (config/steerseg.yaml) | "
                    f"{WHEN_TEXT[takes_effect(kind + '.model')]} |")
    return "\n".join(rows) + "\n"


# ---- a node's parameters ----------------------------------------------------------------------
def declare(node, spec: parameters.ParamSpec) -> None:
    """Declare `spec` on `node` unless it is declared already."""
    if node.has_parameter(spec.name):
        return
    value = spec.default
    if isinstance(value, list) and not value:
        # An empty list says nothing about its element type: declare by type instead.
        value = Parameter.Type(spec.type)
    node.declare_parameter(spec.name, value, spec.descriptor())


def parameter_values(node, specs: list[parameters.ParamSpec]) -> dict[tuple[str, ...], Any]:
    """The node's values of these parameters by attribute path; the default for one that is not
    declared or not set."""
    out = {}
    for spec in specs:
        value = node.get_parameter(spec.name).value if node.has_parameter(spec.name) else spec.default
        out[spec.path] = spec.default if value is None else value
    return out


def read_config(node, cls: type, prefix: str = "", overrides: Optional[dict] = None,
                fixed: Optional[dict[str, Any]] = None):
    """The config dataclass `cls` from the node's parameters `<prefix>.<field>`, validated.
    `overrides` (by attribute path) go over the parameters' values: a change about to be set is
    checked this way. `fixed` fields are the node's own choice, not parameters."""
    fixed = fixed or {}
    values = parameter_values(node, parameters.specs(cls, prefix, exclude=set(fixed)))
    values.update(overrides or {})
    config = parameters.build(cls, values)
    for name, value in fixed.items():
        setattr(config, name, value)
    config.validate()
    return config


def read_section(node, section: str, overrides: Optional[dict] = None):
    """One of the tracker node's config sections (SECTIONS) from its parameters, validated."""
    cls, prefix, fixed = SECTIONS[section]
    return read_config(node, cls, prefix, overrides, fixed)


def backend_options(node, kind: str, name: str, overrides: Optional[dict] = None) -> dict[str, Any]:
    """The options (config field values) of backend `name` from the node's `<kind>.*` parameters."""
    values = parameter_values(node, backend_specs(kind, name))
    values.update(overrides or {})
    return {path[0]: value for path, value in values.items()}


def check_changes(node, params: list[Parameter]) -> SetParametersResult:
    """Refuse a change of the tracker node's parameters that would make any of its configs
    invalid, saying why (its on-set-parameters callback)."""
    by_section: dict[str, dict] = collections.defaultdict(dict)
    for p in params:
        section, _, rest = p.name.partition(".")
        if not rest:
            by_section["node"][(p.name,)] = p.value
        else:
            by_section[section][tuple(rest.split("."))] = p.value
    try:
        for section in SECTIONS:
            if section in by_section:
                read_section(node, section, by_section[section])
        for kind in BACKEND_KINDS:
            changes = dict(by_section.get(kind, {}))
            if not changes:
                continue
            name = changes.pop(("backend",), node.get_parameter(f"{kind}.backend").value)
            changes.pop(("fallback_to_builtin",), None)
            table = backends.GROUNDERS if kind == "grounder" else backends.TRACKERS
            if name not in table:
                raise ValueError(f"unknown {kind} backend {name!r}; choose one of {sorted(table)}")
            if changes:
                # A new backend name alone is checked at configure, where a backend that
                # cannot load is reported (or replaced by the built-in one); its options are
                # checked here against its config's validate().
                backends.make_config(kind, name, backend_options(node, kind, name, changes))
    except Exception as e:
        return SetParametersResult(successful=False, reason=str(e))
    return SetParametersResult(successful=True)
