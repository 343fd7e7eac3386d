"""No silent misconfiguration, in this process (no DDS timing): a parameter change applies live
or its set-parameters result says it waits for the next activate or configure (and the
README's table says which, generated from the same code); depth stamped a steady share of a
frame period off the colour stamps is noticed and shown; /diagnostics names the rejection
reasons and does not count the depth of colour frames the node itself dropped as faults; the
depth counters run on over re-activation and stopped depth is said once, not counted per
frame; JPEG published on the other image transport's topic is pointed out, naming both topics;
and the launch file's `image_transport` argument reaches the tracker and the drawing node.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from ros_processes import wait_until  # noqa: E402
from node_fixtures import context, make_node  # noqa: E402,F401 (pytest fixtures)

from steerseg_ros.frame import NS_PER_S  # noqa: E402
from steerseg_ros.ros.depth_input import DEPTH_STALE_S, OFFSET_WINDOW, DepthConfig, DepthInput  # noqa: E402
from steerseg_ros.ros.image_conversion import depth_array_to_image  # noqa: E402
from steerseg_ros.ros.messages import header_at  # noqa: E402
from steerseg_ros.ros.node_config import parameter_table, static_specs, takes_effect  # noqa: E402
from steerseg_ros.streaming.pipeline import TrackState, TrackView  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ros

W, H = 64, 48
PERIOD_NS = NS_PER_S // 30
MS = 1_000_000


def _active(node):
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    return node


# ---- parameters: live, or the result says they wait --------------------------------------------
def test_the_pairing_tolerance_applies_live(make_node):
    node = _active(make_node(stats_period_s=0.0))
    (result,) = node.set_parameters([Parameter("depth.pairing_tolerance_s", value=0.005)])
    assert result.successful and result.reason == ""
    assert wait_until(lambda: node._depth._pairer.tolerance_ns == 5 * MS, 30.0)
    node.set_parameters([Parameter("depth.queue_size", value=3), Parameter("depth.wait_s", value=0.0)])
    assert wait_until(lambda: node._depth._pairer.capacity == 3 and node._depth.config.wait_s == 0.0, 30.0)


def test_the_stats_period_applies_live(make_node):
    node = _active(make_node(stats_period_s=5.0))
    (result,) = node.set_parameters([Parameter("stats_period_s", value=0.5)])
    assert result.successful and result.reason == ""
    assert node._stats_timer.timer_period_ns == 500_000_000
    node.set_parameters([Parameter("stats_period_s", value=0.0)])
    assert node._stats_timer is None


@pytest.mark.parametrize("name, value, when", [("depth.qos", "reliable", "at the next activate"),
                                               ("image_transport", "compressed", "at the next activate"),
                                               ("pipeline.buffer_size", 40, "at the next configure")])
def test_a_change_that_waits_says_so_in_its_result(make_node, name, value, when):
    node = _active(make_node(stats_period_s=0.0))
    (result,) = node.set_parameters([Parameter(name, value=value)])
    assert result.successful and f"{name} takes effect {when}" in result.reason
    assert node.get_parameter(name).value == value
    # the same through the set_parameters_atomically path the parameter service uses
    result = node.set_parameters_atomically([Parameter(name, value=value)])
    assert result.successful and f"{name} takes effect {when}" in result.reason


@pytest.mark.parametrize("module, cls, name, value, when", [
    ("drawer_node", "DrawerNode", "image_transport", "compressed", "at the next activate"),
    ("drawer_node", "DrawerNode", "queue_size", 10, "at the next configure"),
    ("grounder_node", "GrounderNode", "max_keyframes", 8, "at the next activate"),
    ("grounder_node", "GrounderNode", "nice", 12, "at the next configure"),
])
def test_the_drawing_and_grounder_nodes_say_when_a_change_takes_effect(context, module, cls, name, value, when):
    node_class = getattr(importlib.import_module(f"steerseg_ros.ros.{module}"), cls)
    node = node_class(context=context)
    try:
        (result,) = node.set_parameters([Parameter(name, value=value)])
        assert result.successful and f"{name} takes effect {when}" in result.reason
    finally:
        node.close()
        node.destroy_node()


def test_every_parameter_says_when_it_takes_effect_and_the_readme_table_agrees():
    for spec in static_specs():
        when = takes_effect(spec.name)
        says = re.search(r"Takes effect at the next (activate|configure)", spec.help)
        # A help text that says when never contradicts the code (a live one says nothing).
        assert not says or says.group(1) == when, (spec.name, when, spec.help)
    assert parameter_table() in (REPO / "README.md").read_text(), \
        "README's parameter table is stale: paste steerseg_ros.ros.node_config.parameter_table() into it"


# ---- depth: a steady stamp offset, stopped depth, counters over re-activation --------------------
class Clock:
    def __init__(self):
        self.ns = 1000 * NS_PER_S

    def __call__(self) -> int:
        return self.ns


class Counts:
    def __init__(self):
        self.rejected: dict[str, int] = {}
        self.counted: dict[str, int] = {}

    def reject(self, reason, text):
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def count(self, key, n=1):
        self.counted[key] = self.counted.get(key, 0) + n


def _view():
    mask = np.zeros((H, W), bool)
    mask[10:30, 10:30] = True
    return TrackView(1, "the cup", "cup", TrackState.TRACKING, 0.9, mask, 0)


def _info():
    from sensor_msgs.msg import CameraInfo
    msg = CameraInfo(width=W, height=H, distortion_model="plumb_bob",
                     k=[50.0, 0, 31.5, 0, 50.0, 23.5, 0, 0, 1], d=[0.0] * 5)
    msg.header.frame_id = "optical"
    return msg


def _depth_msg(stamp_ns):
    return depth_array_to_image(np.full((H, W), 1500, np.uint16), header_at(stamp_ns, "camera_link"))


def _depth_input(**config):
    counts, clock = Counts(), Clock()
    d = DepthInput(counts.reject, counts.count, clock=clock)
    d.start(DepthConfig(**{"wait_s": 0.0, **config}))
    d.on_camera_info(_info())
    d.counts, d.clock = counts, clock
    return d


def _stream(d, frames, offset_ns=0, process=lambda i: True, start=0):
    """Colour frames at 30 fps, each with its depth image stamped `offset_ns` off, arriving
    together; the node processes the frames `process` picks (it drops the others). Returns how
    many processed frames got 3D."""
    paired = 0
    for i in range(start, start + frames):
        stamp = 10 * NS_PER_S + i * PERIOD_NS
        d.clock.ns += PERIOD_NS
        d.note_colour(stamp)
        d.on_depth(_depth_msg(stamp + offset_ns))
        if process(i):
            paired += d.estimate([_view()], stamp, (W, H)) is not None
    return paired


def test_depth_stamped_30_ms_off_at_30_fps_is_noticed_with_its_offset():
    d = _depth_input()
    _stream(d, 2 * OFFSET_WINDOW, offset_ns=30 * MS)
    # Nearest-stamp pairing alone cannot see it: each frame takes the next one's depth, 3 ms off.
    assert d.counters()["depth.paired_nearest"] > 0
    warning = d.offset_warning()
    assert warning is not None and "+30.0 ms" in warning and "33.3 ms" in warning
    assert d.status_values()["depth.stamp_offset_ms"] == "30.0"


def test_depth_stamped_alike_raises_no_offset_warning():
    d = _depth_input()
    _stream(d, 2 * OFFSET_WINDOW, offset_ns=2 * MS)
    assert d.offset_warning() is None and d.status_values()["depth.stamp_offset_ms"] == "2.0"


def test_a_replay_slower_than_real_time_with_depth_on_every_other_frame_raises_no_offset_warning():
    d = _depth_input()
    for i in range(4 * OFFSET_WINDOW):  # stamps 33 ms apart, arriving 100 ms apart
        stamp = 10 * NS_PER_S + i * PERIOD_NS
        d.clock.ns += 100 * MS
        d.note_colour(stamp)
        if i % 2 == 0:
            d.on_depth(_depth_msg(stamp))
        d.estimate([_view()], stamp, (W, H))
    assert d.status_values()["depth.stamp_offset_ms"] == "0.0" and d.offset_warning() is None


def test_the_depth_of_frames_the_node_dropped_is_no_pairing_fault():
    d = _depth_input()
    paired = _stream(d, 40, process=lambda i: i % 3 == 0)  # under load: two frames of three dropped
    assert paired == 14
    assert "depth.no_colour_partner" not in d.counts.rejected
    assert d.counts.counted["depth_of_dropped_frames"] >= 20
    # depth whose colour frame never came at all still is one
    d.on_depth(_depth_msg(10 * NS_PER_S + 40 * PERIOD_NS + PERIOD_NS // 2))
    _stream(d, 2, start=42)
    assert d.counts.rejected.get("depth.no_colour_partner") == 1


def test_stopped_depth_is_said_once_and_not_counted_per_frame():
    d = _depth_input()
    assert _stream(d, 5) == 5
    d.clock.ns += int(2 * DEPTH_STALE_S * NS_PER_S)
    for i in range(100):  # colour only
        stamp = 20 * NS_PER_S + i * PERIOD_NS
        d.clock.ns += PERIOD_NS
        d.note_colour(stamp)
        assert d.estimate([_view()], stamp, (W, H)) is None
    assert d.counters()["depth.colour_unpaired"] == 0
    assert d.counts.counted["depth_stopped"] == 1 and not d.counts.rejected
    assert d.status_values()["depth.receiving"] == "false"
    assert _stream(d, 3, start=700) == 3  # back again
    assert d.status_values()["depth.receiving"] == "true"


def test_depth_counters_run_on_over_a_reactivation():
    d = _depth_input()
    _stream(d, 5)
    before = d.counters()
    assert before["depth.paired_exact"] == 5
    d.start(DepthConfig(wait_s=0.0))  # what activate does
    assert d.counters() == before
    _stream(d, 2, start=10)
    assert d.counters()["depth.paired_exact"] == 7


# ---- /diagnostics -----------------------------------------------------------------------------
def test_diagnostics_names_the_top_rejection_reasons(make_node):
    node = _active(make_node(stats_period_s=0.0))
    for _ in range(5):
        node._reject("depth.size", "depth is 10x10")
    for _ in range(2):
        node._reject("image.encoding", "yuv422")
    node._reject("command.empty", "command is empty")
    level, message, values = node._status(node.counters())
    assert level == DiagnosticStatus.WARN
    assert "depth.size 5, image.encoding 2, command.empty 1" in message


def test_the_node_reactivated_keeps_counting_depth_on(make_node):
    node = _active(make_node(stats_period_s=0.0))
    node._depth.on_camera_info(_info())
    node._depth.on_depth(_depth_msg(5 * NS_PER_S))
    assert node._depth.estimate([_view()], 5 * NS_PER_S, (W, H)) is not None
    assert node.counters()["depth.paired_exact"] == 1
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert node.counters()["depth.paired_exact"] == 1


def test_a_healthy_stream_the_node_drops_frames_of_under_load_stays_ok(make_node):
    """Colour and depth for every frame, the node processing one frame in three (its mailbox
    keeps the newest): the depth of the dropped frames is no fault, /diagnostics stays OK."""
    from steerseg_ros.ros.image_conversion import rgb_to_image
    node = _active(make_node("steerseg_under_load", stats_period_s=0.0))
    node._frames.stop()  # this test is the processing thread: it decides which frames are taken
    node._depth.on_camera_info(_info())
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    for i in range(30):
        stamp = 10 * NS_PER_S + i * PERIOD_NS
        node._on_image("raw", rgb_to_image(rgb, "rgb8", header_at(stamp, "camera_link")))
        node._depth.on_depth(_depth_msg(stamp))
        if i % 3 == 2:
            node._handle(*node._frames._mailbox.take(0.0))
    counts = node.counters()
    assert counts["frames_dropped"] == 20 and counts["frames_processed"] == 10
    assert counts["depth_of_dropped_frames"] >= 18 and "rejected.depth.no_colour_partner" not in counts
    level, message, _ = node._status(counts)
    assert level == DiagnosticStatus.OK, message


# ---- the camera's image transport ---------------------------------------------------------------
def test_jpeg_on_the_compressed_topic_of_a_raw_node_is_pointed_out(make_node, context):
    node = _active(make_node("steerseg_transport", stats_period_s=0.0))
    camera = rclpy.create_node("jpeg_camera", context=context)
    try:
        camera.create_publisher(CompressedImage, "image/compressed", 5)
        assert wait_until(lambda: node.check_camera_transport() is not None, 30.0)
        warning = node.check_camera_transport()
        assert "/image " in warning and "/image/compressed" in warning and "image_transport:=compressed" in warning
        level, message, _ = node._status(node.counters())
        assert level == DiagnosticStatus.WARN and "/image/compressed" in message
    finally:
        camera.destroy_node()


def _launch_parameters(**arguments):
    """Each node the launch file starts with these arguments: its name -> its parameters
    (the dictionaries given to it, substituted)."""
    pytest.importorskip("launch_ros", reason="needs the launch system (scripts/setup_env.sh)")
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions
    from launch_ros.utilities import evaluate_parameters

    path = REPO / "steerseg_ros" / "launch" / "steerseg.launch.py"
    spec = importlib.util.spec_from_file_location("steerseg_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        description = module.generate_launch_description()
    except Exception as e:  # the package is not installed where the launch file looks for it
        pytest.skip(f"launch file needs the installed package: {e}")
    context = LaunchContext()
    context.launch_configurations.update(arguments)
    out = {}
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument) and entity.name not in arguments:
            context.launch_configurations[entity.name] = perform_substitutions(context, entity.default_value)
    for entity in description.entities:
        if isinstance(entity, OpaqueFunction) and entity.condition is None:
            for node in entity.execute(context) or []:
                name = getattr(node, "_Node__node_name", None)  # as given (node_name needs execution)
                if name is None:
                    continue
                params = {}
                for item in evaluate_parameters(context, getattr(node, "_Node__parameters", None) or []):
                    if isinstance(item, dict):
                        params.update(item)
                out[perform_substitutions(context, normalize_to_list_of_substitutions(name))] = params
    return out


def test_the_image_transport_launch_argument_reaches_tracker_and_drawing_node():
    nodes = _launch_parameters(image_transport="compressed")
    assert nodes["steerseg"]["image_transport"] == "compressed"
    assert nodes["steerseg_drawer"]["image_transport"] == "compressed"
    assert _launch_parameters()["steerseg"]["image_transport"] == "raw"
