"""A contract test of launch/steerseg.launch.py, not a launch test.

ROS 2's launch system (`launch`, `launch_ros`) is on no package registry this project can install
from, so the file cannot be run here. Instead it is loaded with small recording stand-ins for
the launch and launch_ros modules put into sys.modules: every action records what it was
constructed with, and `LaunchConfiguration` values are resolved from the declared defaults and
the arguments a test passes. The test then checks the contract a user relies on: the right
package, executable and node name, the parameters file and the backend overrides after it, the
remappings of the camera and command topics onto topics the node really subscribes, and the
lifecycle transitions (configure at start-up, activate once inactive) behind `autostart`.
What it cannot check is launch_ros's own behaviour with these actions.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "steerseg.launch.py"


class Recorded:
    """Stand-in for any launch action, event, handler or condition: keeps its arguments."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class LaunchConfiguration:
    def __init__(self, name, default=None):
        self.name = name


class Matcher:
    def __init__(self, action):
        self.action = action


def _module(name, **attrs):
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def _classes(*names):
    return {n: type(n, (Recorded,), {}) for n in names}


@pytest.fixture
def launch_module(monkeypatch):
    """The launch file loaded against the stand-ins; get_package_share_directory points at the
    checkout, whose layout matches the installed share folder (launch/, config/)."""
    actions = _module("launch.actions", **_classes("DeclareLaunchArgument", "EmitEvent", "RegisterEventHandler",
                                                    "SetEnvironmentVariable", "GroupAction", "OpaqueFunction"))
    fakes = {
        "launch": _module("launch", **_classes("LaunchDescription")),
        "launch.actions": actions,
        "launch.conditions": _module("launch.conditions", **_classes("IfCondition", "UnlessCondition")),
        "launch.events": _module("launch.events", matches_action=Matcher),
        "launch.substitutions": _module("launch.substitutions", LaunchConfiguration=LaunchConfiguration),
        "launch_ros": _module("launch_ros"),
        "launch_ros.actions": _module("launch_ros.actions", **_classes("LifecycleNode", "Node")),
        "launch_ros.event_handlers": _module("launch_ros.event_handlers", **_classes("OnStateTransition")),
        "launch_ros.events": _module("launch_ros.events"),
        "launch_ros.events.lifecycle": _module("launch_ros.events.lifecycle", **_classes("ChangeState")),
        "ament_index_python": _module("ament_index_python"),
        "ament_index_python.packages": _module("ament_index_python.packages",
                                               get_package_share_directory=lambda pkg: str(REPO)),
    }
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("steerseg_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Description:
    """The recorded launch description, with launch arguments resolved."""

    def __init__(self, module, **overrides):
        self.root = module.generate_launch_description()
        (self.entities,) = self.root.args
        self.declared = {a.args[0]: a.kwargs for a in self.of("DeclareLaunchArgument")}
        self.values = {name: kw.get("default_value") for name, kw in self.declared.items()}
        unknown = set(overrides) - set(self.values)
        assert not unknown, f"no launch argument(s) {unknown}"
        self.values.update(overrides)

    def of(self, kind):
        return [e for e in self.entities if type(e).__name__ == kind]

    def resolve(self, value):
        if isinstance(value, LaunchConfiguration):
            return self.values[value.name]
        if isinstance(value, list):
            # A list of substitutions is their concatenation (launch's rule); any other list
            # (parameters, remappings) is a list.
            if all(isinstance(v, (str, LaunchConfiguration)) for v in value):
                return "".join(self.resolve(v) for v in value)
            return [self.resolve(v) for v in value]
        if isinstance(value, dict):
            return {self.resolve(k): self.resolve(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return tuple(self.resolve(v) for v in value)
        return value

    def node(self):
        (node,) = self.of("LifecycleNode")
        return node

    def enabled(self, entity) -> bool:
        condition = entity.kwargs.get("condition")
        if condition is None:
            return True
        assert type(condition).__name__ == "IfCondition"
        return str(self.resolve(condition.args[0])).lower() in ("true", "1")


def test_declares_the_documented_arguments(launch_module):
    d = Description(launch_module)
    assert {"camera_topic", "command_topic", "params_file", "grounder", "tracker", "namespace",
            "autostart", "depth_topic", "camera_info_topic"} <= set(d.declared)
    for name, kwargs in d.declared.items():
        assert kwargs.get("description"), f"launch argument {name} has no description"


def test_starts_the_installed_node_executable(launch_module):
    node = Description(launch_module).node()
    assert node.kwargs["package"] == "steerseg_ros"
    assert node.kwargs["executable"] == "steerseg_node"
    assert node.kwargs["name"] == "steerseg"
    # CMakeLists installs scripts/steerseg_node into lib/steerseg_ros, where `ros2 run` and
    # launch look; the script runs the node's main().
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "install(PROGRAMS scripts/steerseg_node DESTINATION lib/${PROJECT_NAME})" in cmake
    assert "from steerseg_ros.ros.node import main" in (REPO / "scripts" / "steerseg_node").read_text()
    assert "install(DIRECTORY launch config DESTINATION share/${PROJECT_NAME})" in cmake


def test_parameters_file_then_backend_overrides(launch_module):
    d = Description(launch_module, grounder="steerseg", tracker="sam2")
    params = d.resolve(d.node().kwargs["parameters"])
    path = Path(params[0])
    assert path == REPO / "config" / "steerseg.yaml" and path.is_file()
    (section,) = yaml.safe_load(path.read_text()).keys()
    assert section.endswith("/steerseg"), "the parameters file must address the node by its name"
    assert params[1] == {"grounder.backend": "steerseg", "tracker.backend": "sam2"}
    custom = Description(launch_module, params_file="/robot/steerseg.yaml")
    assert custom.resolve(custom.node().kwargs["parameters"])[0] == "/robot/steerseg.yaml"


def test_remaps_camera_and_command_onto_the_node_topics(launch_module):
    pytest.importorskip("rclpy", reason="the node's topic names come from steerseg_ros.ros.node")
    from steerseg_ros.ros.node import SUBSCRIPTIONS

    d = Description(launch_module, camera_topic="/front/color/image_raw", command_topic="/speech/text",
                    namespace="robot1", depth_topic="/front/aligned_depth_to_color/image_raw",
                    camera_info_topic="/front/color/camera_info")
    node = d.node()
    remaps = dict(d.resolve(node.kwargs["remappings"]))
    assert remaps == {"image": "/front/color/image_raw", "image/compressed": "/front/color/image_raw/compressed",
                      "command": "/speech/text", "depth": "/front/aligned_depth_to_color/image_raw",
                      "camera_info": "/front/color/camera_info"}
    # by default depth and camera_info stay the node's own relative topics (nothing there: 2D)
    defaults = dict(Description(launch_module).resolve(Description(launch_module).node().kwargs["remappings"]))
    assert defaults["depth"] == "depth" and defaults["camera_info"] == "camera_info"
    assert set(remaps) <= set(SUBSCRIPTIONS)
    assert d.resolve(node.kwargs["namespace"]) == "robot1"


def _change_state(event_action):
    assert type(event_action).__name__ == "EmitEvent"
    event = event_action.kwargs["event"]
    assert type(event).__name__ == "ChangeState"
    return event.kwargs["lifecycle_node_matcher"], event.kwargs["transition_id"]


def test_configures_then_activates_at_start_up(launch_module):
    from lifecycle_msgs.msg import Transition

    d = Description(launch_module)
    node = d.node()
    configures = [e for e in d.of("EmitEvent") if _change_state(e)[1] == Transition.TRANSITION_CONFIGURE]
    (configure,) = configures
    matcher, _ = _change_state(configure)
    assert matcher.action is node
    (handler_action,) = d.of("RegisterEventHandler")
    (handler,) = handler_action.args
    assert type(handler).__name__ == "OnStateTransition"
    assert handler.kwargs["target_lifecycle_node"] is node
    assert handler.kwargs["goal_state"] == "inactive"
    (activate,) = handler.kwargs["entities"]
    matcher, transition = _change_state(activate)
    assert matcher.action is node and transition == Transition.TRANSITION_ACTIVATE
    # the handler is registered before the configure event is emitted, so it cannot miss it
    assert d.entities.index(handler_action) < d.entities.index(configure)
    assert d.enabled(configure) and d.enabled(handler_action)


def test_rviz_only_on_request_with_the_shipped_layout(launch_module):
    (rviz,) = Description(launch_module).of("Node")
    assert rviz.kwargs["package"] == "rviz2"
    layout = Path(rviz.kwargs["arguments"][rviz.kwargs["arguments"].index("-d") + 1])
    assert layout == REPO / "config" / "steerseg.rviz" and layout.is_file()
    displays = yaml.safe_load(layout.read_text())["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"] for d in displays if "Topic" in d}
    assert {"/overlay", "/mask", "/markers"} <= topics
    assert not Description(launch_module).enabled(rviz)
    with_rviz = Description(launch_module, rviz="true")
    assert with_rviz.enabled(with_rviz.of("Node")[0])


def test_autostart_false_leaves_the_transitions_to_a_lifecycle_manager(launch_module):
    d = Description(launch_module, autostart="false")
    assert d.of("LifecycleNode") and d.enabled(d.node())
    transitions = d.of("EmitEvent") + d.of("RegisterEventHandler")
    assert transitions and not any(d.enabled(e) for e in transitions)
