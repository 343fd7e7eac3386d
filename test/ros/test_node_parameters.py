"""The node's parameters and lifecycle, in this process: one parameter per config field with its
help text, config/steerseg.yaml holding exactly the defaults, changes validated (an invalid one
refused with a reason), the pipeline's settings applied on the fly, a backend that fails to load
leaving the node unconfigured and saying why (or falling back to the built-in one), and the
publishers existing only while active.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ros_processes import wait_until  # noqa: E402
from node_fixtures import context, make_node  # noqa: E402,F401 (pytest fixtures)

from steerseg_ros.streaming import backends  # noqa: E402
from steerseg_ros.grounding.base import ModelUnavailableError  # noqa: E402
from steerseg_ros.ros.node_config import default_specs  # noqa: E402
from steerseg_ros.ros.tracker_node import PUBLICATIONS  # noqa: E402
from steerseg_ros.ros.standard_outputs import vision_msgs_available  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "steerseg_ros"
pytestmark = pytest.mark.ros


@dataclasses.dataclass
class BrokenConfig:
    path: str = dataclasses.field(default="/nowhere", metadata={"help": "where the weights are not"})

    def validate(self) -> None:
        pass


class BrokenGrounder:
    """A model backend whose weights are missing: what a user with a wrong path gets."""

    def __init__(self, config):
        raise ModelUnavailableError(f"no weights at {config.path}; download them first")


def _nest(specs):
    tree: dict = {}
    for spec in specs:
        *groups, leaf = spec.name.split(".")
        node = tree
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = spec.default
    return tree


def test_the_defaults_file_holds_every_parameter_at_its_default():
    (section,) = yaml.safe_load((PKG / "config" / "steerseg.yaml").read_text()).values()
    assert section["ros__parameters"] == _nest(default_specs("builtin", "builtin")), \
        "config/steerseg.yaml is stale: regenerate it with steerseg_ros.ros.tracker_node.write_default_params"


def test_every_parameter_is_declared_with_its_help_text(make_node):
    node = make_node()
    for spec in default_specs("builtin", "builtin"):
        assert node.has_parameter(spec.name), spec.name
        descriptor = node.describe_parameter(spec.name)
        assert descriptor.description == spec.help and spec.help
        assert descriptor.type == spec.type, spec.name


@pytest.mark.parametrize("name, value, reason", [
    ("pipeline.min_confidence", 2.0, "min_confidence"),
    ("pipeline.keyframes.count", 500, "buffer_size"),
    ("pipeline.selection.scorer", "best", "scorer"),
    ("grounder.backend", "gpt", "choose one of"),
    ("tracker.backend", "", "choose one of"),
    ("image_qos", "fast", "image_qos"),
    ("overlay_alpha", -0.1, "overlay_alpha"),
    ("markers.focal_length_px", 0.0, "markers"),
    ("grounder.point_threshold", 1.5, "point_threshold"),
])
def test_invalid_changes_are_refused_with_a_reason(make_node, name, value, reason):
    node = make_node()
    before = node.get_parameter(name).value
    (result,) = node.set_parameters([Parameter(name, value=value)])
    assert not result.successful
    assert reason in result.reason
    assert node.get_parameter(name).value == before


def test_a_wrongly_typed_value_is_refused(make_node):
    (result,) = make_node().set_parameters([Parameter("pipeline.buffer_size", value="many")])
    assert not result.successful


def test_pipeline_settings_change_on_the_fly(make_node):
    node = make_node(**{"stats_period_s": 0.0})
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    results = node.set_parameters([Parameter("pipeline.lost_timeout_s", value=3.5),
                                   Parameter("pipeline.keyframes.window_s", value=1.5)])
    assert all(r.successful for r in results)

    assert wait_until(lambda: node.pipeline.config.lost_timeout_s == 3.5, 30.0)
    assert node.pipeline.config.keyframes.window_s == 1.5


def test_a_backend_that_fails_to_load_leaves_the_node_unconfigured_saying_why(make_node, monkeypatch):
    monkeypatch.setitem(backends.GROUNDERS, "broken", (__name__, "BrokenGrounder", "BrokenConfig", {}))
    node = make_node(**{"grounder.backend": "broken"})
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert node.lifecycle_state == "unconfigured"
    assert "no weights at /nowhere" in node.error
    # still up: with the fallback allowed, the same node configures with the built-in grounder
    node.set_parameters([Parameter("grounder.fallback_to_builtin", value=True)])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.error is None
    assert node.backend_names["grounder"] == "builtin (fallback from broken)"
    assert node.counters().get("grounder_fallbacks") == 1


def test_publishers_exist_only_while_active_and_the_lifecycle_repeats(make_node):
    # A name of its own: the graph looks publishers up by node name, and the earlier tests' nodes
    # (all named "steerseg", destroyed but not yet forgotten by discovery) answered in their stead
    # in one CI run, listing only two of this node's topics.
    node = make_node("steerseg_lifecycle_publishers", **{"stats_period_s": 0.0})
    # The vision_msgs detections exist where vision_msgs is installed (setup_env.sh builds it).
    topics = {f"/{t}" for t in PUBLICATIONS if vision_msgs_available() or not t.startswith("detections_")}

    def published():
        return {name for name, _ in node.get_publisher_names_and_types_by_node(node.get_name(), node.get_namespace())}

    # The ROS graph learns about entities through discovery, even this node's own (and forgets
    # those of the previous test's node the same way): poll it.
    assert wait_until(lambda: not topics & published(), 30.0), published()
    for _ in range(2):
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert wait_until(lambda: topics <= published(), 30.0), published()
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert wait_until(lambda: not topics & published(), 30.0), published()
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.pipeline is None


def _float_specs():
    return [s for s in default_specs("builtin", "builtin")
            if s.type in (Parameter.Type.DOUBLE.value, Parameter.Type.DOUBLE_ARRAY.value)]


def test_every_float_parameter_refuses_nan_and_infinity(make_node):
    """A NaN passes `x < 0` checks: with time_jump_reset_s NaN every frame after a bag loops
    back was refused, with lost_timeout_s NaN a track could never be LOST. Every float parameter
    (node, pipeline, markers, both built-in backends) refuses NaN, +inf and -inf when changed."""
    node = make_node()
    specs = _float_specs()
    assert {"stats_period_s", "pipeline.lost_timeout_s", "pipeline.time_jump_reset_s",
            "pipeline.keyframes.window_s"} <= {s.name for s in specs}
    for spec in specs:
        before = node.get_parameter(spec.name).value
        for bad in (float("nan"), float("inf"), float("-inf")):
            value = [bad] if spec.type == Parameter.Type.DOUBLE_ARRAY.value else bad
            (result,) = node.set_parameters([Parameter(spec.name, value=value)])
            assert not result.successful, f"{spec.name} = {bad} was accepted"
            assert "finite" in result.reason, (spec.name, result.reason)
            assert node.get_parameter(spec.name).value == before


@pytest.mark.parametrize("name, value", [
    ("pipeline.time_jump_reset_s", 1e300),
    ("stats_period_s", 1e12),
    ("pipeline.regrounding_period_s", 1e300),
])
def test_durations_beyond_any_timer_are_refused(make_node, name, value):
    (result,) = make_node().set_parameters([Parameter(name, value=value)])
    assert not result.successful and "at most" in result.reason


@pytest.mark.parametrize("name", ["stats_period_s", "pipeline.time_jump_reset_s", "pipeline.keyframes.window_s",
                                  "markers.distance", "tracker.colour_weight"])
def test_a_non_finite_value_from_the_parameters_file_fails_configure_saying_which(make_node, name):
    node = make_node(**{name: float("nan")})
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert node.lifecycle_state == "unconfigured"
    assert name.split(".")[-1] in node.error and "finite" in node.error
