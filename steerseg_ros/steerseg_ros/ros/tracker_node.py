"""The ROS 2 tracker node: camera frames and language commands in; label masks, tracks,
grounding results (and, unless the drawing node draws them, `draw` false, overlays and RViz
markers) out, at camera rate. With depth and camera_info (optional,
see steerseg_ros.ros.depth_input) the tracks carry 3D, and target_point and object_points go out.

Owns `SteerSegNode` (the lifecycle node `steerseg`) and `main()`: its parameters (declared from
the config dataclasses of the node, the pipeline and the chosen backends, validated whenever they
change), its topics and QoS, the one-slot mailbox that keeps only the newest camera frame, the
processing thread that converts, steps the pipeline and publishes, the counters of rejected and
dropped input (logged periodically and published on /diagnostics), and the bridge that forwards
the core's Python logging (loggers "steerseg_ros.*") to the node's logger.

Lifecycle: configure builds the backends and the pipeline from the parameters (a backend that
fails to load leaves the node unconfigured, saying why in its log and on /diagnostics, or falls
back to the built-in backend when `<kind>.fallback_to_builtin` is true); activate creates the
publishers and subscriptions and starts the processing thread; deactivate stops them; cleanup
releases the backends. Grounding runs in the pipeline's worker thread, so masks keep flowing
while it runs.

Several targets: the `command` topic replaces everything followed with one command; the Follow
action (`follow`) adds one target per goal (feedback, results, preemption: action/Follow.action),
and the `~/stop` service ends them all (see the "Follow action" section of the node class).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from geometry_msgs.msg import PointStamped
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from steerseg_ros import render

from steerseg_ros.streaming import backends
from steerseg_msgs.action import Follow
from steerseg_ros.config_checks import check_finite
from steerseg_ros.grounding.base import GroundingError, clean_command
from steerseg_msgs.msg import GroundingResult as GroundingResultMsg
from steerseg_msgs.msg import TrackArray
from steerseg_ros.streaming.pipeline import (FrameRejected, Pipeline, PipelineConfig, PipelineOutput, SeedRejected,
                                   TargetLimitError)
from steerseg_ros.ros import main_loop, parameters
from steerseg_ros.ros.lifecycle import GuardedTransitions
from steerseg_ros.ros.depth_input import DepthConfig, DepthInput, Frame3D
from steerseg_ros.ros.image_conversion import (ImageBuffer, ImageConversionError, array_to_image, compressed_to_rgb,
                                               image_to_array, image_to_rgb)
from steerseg_ros.ros.messages import (MarkerConfig, active_target, drawn_tracks, grounding_to_msg, header_at,
                                       markers_from_tracks, points_to_cloud, publish_status, stamp_to_ns,
                                       target_point_msg, tracks_to_msg)

NODE_NAME = "steerseg"
# Relative topic names (remappable): what the node subscribes and publishes. /diagnostics is
# absolute, as diagnostic aggregators expect.
SUBSCRIPTIONS = {"image": "sensor_msgs/Image", "image/compressed": "sensor_msgs/CompressedImage",
                 "command": "std_msgs/String", "seed_mask": "sensor_msgs/Image",
                 "depth": "sensor_msgs/Image", "camera_info": "sensor_msgs/CameraInfo"}
# The Follow action (relative name, remappable) and the stop service (private, ~/stop).
ACTIONS = {"follow": "steerseg_msgs/action/Follow"}
SERVICES = {"~/stop": "std_srvs/srv/Trigger"}
PUBLICATIONS = {"mask": "sensor_msgs/Image", "overlay": "sensor_msgs/Image", "tracks": "steerseg_ros/TrackArray",
                "grounding": "steerseg_ros/GroundingResult", "markers": "visualization_msgs/MarkerArray",
                "target_point": "geometry_msgs/PointStamped", "object_points": "sensor_msgs/PointCloud2"}
BACKEND_KINDS = ("grounder", "tracker")
# Parameters under grounder.* / tracker.* that are the node's, not the backend config's.
_CHOICE_FIELDS = ("backend", "fallback_to_builtin")
# How many seed masks may wait for their frame.
MAX_PENDING_SEEDS = 4
# /diagnostics says WARN while input was rejected within this many stats periods (not for the
# rest of the process's life once anything was).
DIAGNOSTICS_WINDOW_PERIODS = 6


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
        "Log the counters and publish /diagnostics this often (seconds); 0: never. Takes effect at "
        "the next configure.")})
    follow_feedback_hz: float = field(default=5.0, metadata={"help": (
        "Each Follow goal gets feedback (its tracks) at most this often (per second of wall time), "
        "on processed frames.")})

    def validate(self) -> None:
        check_finite(self)
        validate_camera_options(self)
        if self.stats_period_s < 0:
            raise ValueError(f"stats_period_s must be >= 0, got {self.stats_period_s}")
        if not self.follow_feedback_hz > 0:
            raise ValueError(f"follow_feedback_hz must be > 0, got {self.follow_feedback_hz}")


def validate_camera_options(config: Any) -> None:
    """The camera and drawing options the tracker node and the drawing node share:
    image_transport, image_qos and overlay_alpha."""
    if config.image_transport not in ("raw", "compressed"):
        raise ValueError(f"image_transport must be raw or compressed, got {config.image_transport!r}")
    if config.image_qos not in ("sensor_data", "reliable"):
        raise ValueError(f"image_qos must be sensor_data or reliable, got {config.image_qos!r}")
    if not 0.0 <= config.overlay_alpha <= 1.0:
        raise ValueError(f"overlay_alpha must be in [0, 1], got {config.overlay_alpha}")


def input_qos(name: str) -> QoSProfile:
    """The QoS of a sensor subscription (camera, depth) named by its parameter: sensor_data
    (best effort, keep last 5) or reliable (reliable, keep last 5)."""
    if name == "sensor_data":
        return qos_profile_sensor_data
    return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


def pipeline_specs() -> list[parameters.ParamSpec]:
    # The node always grounds in the worker thread: `asynchronous` is not a parameter.
    return parameters.specs(PipelineConfig, "pipeline", exclude={"asynchronous"})


def static_specs() -> list[parameters.ParamSpec]:
    """The parameters every node has, whatever its backends."""
    out = parameters.specs(NodeConfig, "")
    for kind in BACKEND_KINDS:
        table = backends.GROUNDERS if kind == "grounder" else backends.TRACKERS
        out.append(parameters.ParamSpec(
            f"{kind}.backend", ("backend",), Parameter.Type.STRING.value, "builtin",
            f"The {kind} backend, one of {sorted(table)}. Takes effect at the next configure."))
        out.append(parameters.ParamSpec(
            f"{kind}.fallback_to_builtin", ("fallback_to_builtin",), Parameter.Type.BOOL.value, False,
            f"When the {kind} backend fails to load (e.g. missing weights), use the built-in one "
            "instead of staying unconfigured."))
    out += pipeline_specs()
    out += parameters.specs(MarkerConfig, "markers")
    out += parameters.specs(DepthConfig, "depth")
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
        "dataclasses by steerseg_ros.ros.tracker_node.write_default_params; test_node_parameters checks\n"
        "that it still matches them). The key /**/steerseg matches the node in any namespace\n"
        "(a plain `steerseg:` would not apply under a namespace).")
    with open(path, "w") as f:
        f.write(parameters.render_yaml(f"/**/{NODE_NAME}", default_specs(grounder, tracker), header))


def incoming_rgb(msg, pipeline: Pipeline) -> np.ndarray:
    """A camera message (Image or CompressedImage) as the HxWx3 RGB frame the pipeline takes,
    converted into the memory of a frame that left the pipeline's buffer where there is one (a
    fresh array per frame costs its page faults: FrameBuffer.spare)."""
    if isinstance(msg, CompressedImage):
        latest = pipeline.buffer.latest()  # its size is only known once decoded: guess the last one's
        return compressed_to_rgb(msg, pipeline.buffer.spare(latest.image.shape) if latest is not None else None)
    return image_to_rgb(msg, pipeline.buffer.spare((int(msg.height), int(msg.width), 3)))


def output_messages(output: PipelineOutput, header: Header, rgb: np.ndarray, overlay_alpha: float = 0.5,
                    marker_config: Optional[MarkerConfig] = None, overlay: bool = True,
                    markers: bool = True, frame3d: Optional[Frame3D] = None,
                    object_points: bool = False, overlay_buffer: Optional[ImageBuffer] = None,
                    mask_buffer: Optional[ImageBuffer] = None) -> list[tuple[str, Any]]:
    """The (topic, message) pairs the node publishes for one processed frame, all stamped with
    the frame's header: the label mask, the tracks, optionally the overlay and the markers, and
    the groundings that finished since the previous frame. With `frame3d` (the frame's 3D step)
    the tracks carry their 3D, the markers are drawn in 3D, and the active target goes out on
    target_point (and the tracks' points on object_points when `object_points`). With
    `overlay_buffer` the overlay is drawn straight into that reused message memory, and with
    `mask_buffer` the label mask (publish the messages before the next call)."""
    visible = output.visible_tracks()
    objects = frame3d.objects if frame3d is not None else {}
    camera_header = header_at(stamp_to_ns(header.stamp), frame3d.frame_id) if frame3d is not None else None
    if mask_buffer is not None:
        label = output.label_image(mask_buffer.view((output.frame.height, output.frame.width)))
        mask = mask_buffer.message("mono8", header)
    else:
        label = output.label_image()
        mask = array_to_image(label, "mono8", header)
    tracks = tracks_to_msg(output.tracks, header, objects, frame3d.frame_id if frame3d else "")
    out: list[tuple[str, Any]] = [("mask", mask), ("tracks", tracks)]
    # Drawn from the published label mask and tracks, as the drawing node draws them.
    drawn = drawn_tracks(tracks.tracks) if overlay or markers else []
    if overlay and overlay_buffer is not None:
        render.overlay_labels(rgb, label, drawn, overlay_alpha, out=overlay_buffer.view(rgb.shape))
        out.append(("overlay", overlay_buffer.message("bgr8", header)))
    elif overlay:
        out.append(("overlay", array_to_image(render.overlay_labels(rgb, label, drawn, overlay_alpha), "bgr8", header)))
    if markers:
        out.append(("markers", markers_from_tracks(drawn, header, (rgb.shape[1], rgb.shape[0]), marker_config)))
    out += _messages_3d(visible, frame3d, camera_header, object_points)
    out += [("grounding", grounding_to_msg(result)) for result in output.groundings]
    return out


def _messages_3d(visible: list, frame3d: Optional[Frame3D], camera_header: Optional[Header],
                 object_points: bool) -> list[tuple[str, Any]]:
    """target_point (the active target, when one has a valid 3D estimate) and object_points."""
    if frame3d is None or camera_header is None:
        return []
    out: list[tuple[str, Any]] = []
    target = active_target(visible, frame3d.objects)
    if target is not None:
        out.append(("target_point", target_point_msg(frame3d.objects[target.id], camera_header)))
    if object_points:
        live = {v.id for v in visible}
        points = {i: p for i, p in frame3d.object_points().items() if i in live}
        out.append(("object_points", points_to_cloud(points, camera_header)))
    return out


class LatestMailbox:
    """A one-slot mailbox: `put` replaces an item not yet taken (the caller counts it as
    dropped), so the consumer always gets the newest one."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        """Leave `item`; True when it replaced one that was never taken."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> Any:
        """The newest item (None after `timeout` seconds or once closed)."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self._item = None


class RosLogHandler(logging.Handler):
    """Forwards Python log records to an rclpy logger at the matching severity."""

    @classmethod
    def attach(cls, ros_logger) -> "RosLogHandler":
        """A handler forwarding the core's loggers ("steerseg_ros.*", INFO and up unless set
        otherwise) to `ros_logger`; `detach` it at close."""
        handler = cls(ros_logger)
        core_logger = logging.getLogger("steerseg_ros")
        core_logger.addHandler(handler)
        if core_logger.level == logging.NOTSET:
            core_logger.setLevel(logging.INFO)
        return handler

    def detach(self) -> None:
        """Stop forwarding (undoes `attach`)."""
        logging.getLogger("steerseg_ros").removeHandler(self)

    def __init__(self, ros_logger):
        super().__init__()
        self._ros_logger = ros_logger
        self.setFormatter(logging.Formatter("[%(name)s] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.ERROR:
                self._ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self._ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self._ros_logger.info(text)
            else:
                self._ros_logger.debug(text)
        except Exception:  # logging must never take the node down
            self.handleError(record)


@dataclass
class _Seed:
    stamp_ns: int  # 0: the newest frame
    mask: np.ndarray
    label: str
    # Frames processed while it waited for its own. A seed whose frame never comes (a stamp in
    # the future, another clock) expires after a buffer's worth of frames: by then a frame
    # with its stamp would have left the buffer anyway.
    frames_waited: int = 0


@dataclass
class _Goal:
    """An accepted Follow goal and the target it follows."""

    handle: Any  # rclpy.action.server.ServerGoalHandle
    target_id: int
    command: str
    lost_timeout_s: float
    # Completed (reason, message) when the goal ends; the goal's execute coroutine awaits it.
    done: Any  # rclpy.task.Future
    tracks: list = field(default_factory=list)  # its Track messages on the last processed frame
    last_feedback: float = -1e9


# Follow.Result reasons by name, for the counters and logs.
_REASON_NAMES = {getattr(Follow.Result, k): k[len("REASON_"):].lower()
                 for k in dir(Follow.Result) if k.startswith("REASON_")}


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class SteerSegNode(GuardedTransitions, LifecycleNode):
    """The lifecycle node `steerseg` (see the module docstring and README for topics and
    parameters)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self._log_handler = RosLogHandler.attach(self.get_logger())

        self._counts: collections.Counter = collections.Counter()
        self._counts_lock = threading.Lock()
        self._last_reject_log: dict[str, float] = {}
        # Rejections + internal errors at each of the last diagnostics publications.
        self._bad_history: collections.deque[int] = collections.deque([0], maxlen=DIAGNOSTICS_WINDOW_PERIODS + 1)
        self._backend_errors: dict[tuple[str, str], str] = {}
        self._error: Optional[str] = None
        self._lifecycle = "unconfigured"
        self._pipeline: Optional[Pipeline] = None
        self._backend_names = {"grounder": "", "tracker": ""}
        self._mailbox = LatestMailbox()
        self._seeds: collections.deque[_Seed] = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._params_dirty = threading.Event()
        self._pubs: dict[str, Any] = {}
        self._overlay_buffer = ImageBuffer()  # used by the processing thread only
        self._mask_buffer = ImageBuffer()  # the same
        self._subs: list = []
        self._stats_timer = None
        self._frame_times: collections.deque[float] = collections.deque(maxlen=200)
        self._last_stamp_ns = 0  # of the last processed frame
        self._last_summary = ""
        self._goals: dict[int, _Goal] = {}  # by target id
        self._goals_lock = threading.RLock()
        self._depth = DepthInput(self._reject, self._count)
        self._depth_times: collections.deque[float] = collections.deque(maxlen=200)

        self._declare_static_parameters()
        for kind in BACKEND_KINDS:
            self._declare_backend_parameters(kind, self.get_parameter(f"{kind}.backend").value)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(lambda _params: self._params_dirty.set())

        try:
            self._node_config = self._read_node_config()
            self._markers = self._read_markers()
        except ValueError as e:  # a bad parameters file: say so and keep running; configure refuses
            self._node_config, self._markers = NodeConfig(), MarkerConfig()
            self._error = f"invalid parameters: {e}"
            self.get_logger().error(f"{self._error}; configure fails until they are fixed")
        # /diagnostics exists in every lifecycle state, so a node stuck unconfigured says why.
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._start_stats_timer()
        self._create_follow_interfaces()

    # ---- parameters -----------------------------------------------------------------------
    def _declare_spec(self, spec: parameters.ParamSpec) -> None:
        if self.has_parameter(spec.name):
            return
        value = spec.default
        if isinstance(value, list) and not value:
            # An empty list says nothing about its element type: declare by type instead.
            value = Parameter.Type(spec.type)
        self.declare_parameter(spec.name, value, spec.descriptor())

    def _declare_static_parameters(self) -> None:
        for spec in static_specs():
            self._declare_spec(spec)

    def _declare_backend_parameters(self, kind: str, name: str) -> bool:
        """Declare backend `name`'s parameters; False (logged) when its module cannot load."""
        try:
            for spec in backend_specs(kind, name):
                self._declare_spec(spec)
            return True
        except Exception as e:  # an unknown name, a missing optional dependency
            # Logged once: configure, which tries again, reports it in its own failure line.
            if self._backend_errors.get((kind, name)) != str(e):
                self.get_logger().error(f"cannot declare the parameters of {kind} backend {name!r}: {e}")
            self._backend_errors[(kind, name)] = str(e)
            return False

    def _values(self, specs: list[parameters.ParamSpec]) -> dict[tuple[str, ...], Any]:
        out = {}
        for spec in specs:
            value = self.get_parameter(spec.name).value if self.has_parameter(spec.name) else spec.default
            out[spec.path] = spec.default if value is None else value
        return out

    def _read_node_config(self, overrides: Optional[dict] = None) -> NodeConfig:
        specs = parameters.specs(NodeConfig, "")
        values = self._values(specs)
        values.update(overrides or {})
        config = parameters.build(NodeConfig, values)
        config.validate()
        return config

    def _read_markers(self, overrides: Optional[dict] = None) -> MarkerConfig:
        values = self._values(parameters.specs(MarkerConfig, "markers"))
        values.update(overrides or {})
        config = parameters.build(MarkerConfig, values)
        config.validate()
        return config

    def _read_depth_config(self, overrides: Optional[dict] = None) -> DepthConfig:
        values = self._values(parameters.specs(DepthConfig, "depth"))
        values.update(overrides or {})
        config = parameters.build(DepthConfig, values)
        config.validate()
        return config

    def _read_pipeline_config(self, overrides: Optional[dict] = None) -> PipelineConfig:
        values = self._values(pipeline_specs())
        values.update(overrides or {})
        config = parameters.build(PipelineConfig, values)
        config.asynchronous = True
        config.validate()
        return config

    def _backend_options(self, kind: str, name: str, overrides: Optional[dict] = None) -> dict[str, Any]:
        specs = backend_specs(kind, name)
        values = self._values(specs)
        values.update(overrides or {})
        return {path[0]: value for path, value in values.items()}

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Reject a change that would make any configuration invalid, saying why."""
        by_section: dict[str, dict] = collections.defaultdict(dict)
        for p in params:
            section, _, rest = p.name.partition(".")
            if not rest:
                by_section["node"][(p.name,)] = p.value
            else:
                by_section[section][tuple(rest.split("."))] = p.value
        try:
            if "node" in by_section:
                self._read_node_config(by_section["node"])
            if "markers" in by_section:
                self._read_markers(by_section["markers"])
            if "depth" in by_section:
                self._read_depth_config(by_section["depth"])
            if "pipeline" in by_section:
                self._read_pipeline_config(by_section["pipeline"])
            for kind in BACKEND_KINDS:
                changes = dict(by_section.get(kind, {}))
                if not changes:
                    continue
                name = changes.pop(("backend",), self.get_parameter(f"{kind}.backend").value)
                changes.pop(("fallback_to_builtin",), None)
                table = backends.GROUNDERS if kind == "grounder" else backends.TRACKERS
                if name not in table:
                    raise ValueError(f"unknown {kind} backend {name!r}; choose one of {sorted(table)}")
                if changes:
                    # A new backend name alone is checked at configure, where a backend that
                    # cannot load is reported (or replaced by the built-in one); its options are
                    # checked here against its config's validate().
                    options = self._backend_options(kind, name, changes)
                    backends.make_config(kind, name, options)
        except Exception as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _apply_live_parameters(self) -> None:
        """Apply changed parameters that can change on the fly (called in the processing thread,
        between frames): the node's drawing settings, the markers, and the pipeline's settings
        other than buffer_size. The rest take effect at the next configure or activate."""
        self._params_dirty.clear()
        try:
            self._node_config = self._read_node_config()
            self._markers = self._read_markers()
            if self._pipeline is not None:
                new = self._read_pipeline_config()
                for f in ("keyframes", "min_keyframes", "regrounding_period_s", "grounding_retry_s",
                          "lost_timeout_s", "min_confidence", "reconcile_iou", "time_jump_reset_s",
                          "max_command_chars", "max_targets", "selection"):
                    setattr(self._pipeline.config, f, getattr(new, f))
        except Exception as e:  # validated when set; a failure here is a bug worth a log line
            self.get_logger().error(f"could not apply changed parameters: {e}")

    # ---- lifecycle (transitions guarded by lifecycle.GuardedTransitions) ----------------------
    def _shutdown(self) -> None:
        self._deactivate()
        self._cleanup()
        self._lifecycle = "finalized"

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._deactivate()
            self._cleanup()
        except Exception as e:
            self.get_logger().error(f"error processing: {e}")
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        self._error = None
        self._node_config = self._read_node_config()
        self._markers = self._read_markers()
        pipeline_config = self._read_pipeline_config()
        made = {}
        try:
            for kind in BACKEND_KINDS:
                made[kind] = self._make_backend(kind)
            self._pipeline = Pipeline(made["grounder"], made["tracker"], pipeline_config)
        except Exception:
            for backend in made.values():
                backend.close()
            raise
        self._start_stats_timer()
        self._lifecycle = "inactive"
        self.get_logger().info(
            f"configured: grounder {self._backend_names['grounder']!r}, tracker {self._backend_names['tracker']!r}")

    def _make_backend(self, kind: str):
        name = self.get_parameter(f"{kind}.backend").value
        make = backends.make_grounder if kind == "grounder" else backends.make_tracker
        try:
            if not self._declare_backend_parameters(kind, name):
                raise RuntimeError(self._backend_errors.get((kind, name), "it cannot be loaded"))
            options = self._backend_options(kind, name)
            if name == "remote" and not options.get("namespace"):
                options["namespace"] = self.get_namespace()  # the grounder node beside this one
            backend = make(name, options)
            self._backend_names[kind] = name
            return backend
        except Exception as e:
            if name == "builtin" or not self.get_parameter(f"{kind}.fallback_to_builtin").value:
                raise RuntimeError(f"{kind} backend {name!r} failed to load: {e}") from e
            self.get_logger().error(f"{kind} backend {name!r} failed to load: {e}")
            self.get_logger().warning(f"{kind}.fallback_to_builtin is true: using the built-in {kind} instead")
            self._declare_backend_parameters(kind, "builtin")
            backend = make("builtin", self._backend_options(kind, "builtin"))
            self._backend_names[kind] = f"builtin (fallback from {name})"
            self._count(f"{kind}_fallbacks")
            return backend

    def _activate(self) -> None:
        if self._pipeline is None:
            raise RuntimeError("not configured")
        config = self._node_config = self._read_node_config()
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        images_out = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._pubs = {
            "mask": self.create_publisher(Image, "mask", images_out),
            "tracks": self.create_publisher(TrackArray, "tracks", reliable),
            "grounding": self.create_publisher(GroundingResultMsg, "grounding", latched),
        }
        if config.draw:
            self._pubs["overlay"] = self.create_publisher(Image, "overlay", images_out)
            self._pubs["markers"] = self.create_publisher(MarkerArray, "markers", reliable)
        camera_qos = input_qos(config.image_qos)
        if config.image_transport == "compressed":
            self._subs.append(self.create_subscription(
                CompressedImage, "image/compressed", lambda m: self._on_image("compressed", m), camera_qos))
        else:
            self._subs.append(self.create_subscription(Image, "image", lambda m: self._on_image("raw", m), camera_qos))
        self._subs.append(self.create_subscription(String, "command", self._on_command, reliable))
        self._subs.append(self.create_subscription(Image, "seed_mask", self._on_seed_mask, reliable))
        self._activate_depth(reliable)
        self._stop.clear()
        self._mailbox.reopen()
        self._thread = threading.Thread(target=self._run, name="steerseg-processing", daemon=True)
        self._thread.start()
        self._lifecycle = "active"
        self.get_logger().info(
            f"active: camera {self.resolve_topic_name('image' if config.image_transport == 'raw' else 'image/compressed')} "
            f"({config.image_qos} QoS), command {self.resolve_topic_name('command')}")

    def _activate_depth(self, reliable: QoSProfile) -> None:
        """The depth and camera_info subscriptions and the 3D outputs (part of activate)."""
        config = self._read_depth_config()
        self._depth.start(config)
        qos = input_qos(config.qos)
        self._subs.append(self.create_subscription(Image, "depth", self._depth.on_depth, qos))
        self._subs.append(self.create_subscription(CameraInfo, "camera_info", self._depth.on_camera_info, qos))
        self._pubs["target_point"] = self.create_publisher(PointStamped, "target_point", reliable)
        self._pubs["object_points"] = self.create_publisher(
            PointCloud2, "object_points", QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE))

    def _deactivate(self) -> None:
        self._stop.set()
        self._mailbox.close()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            if self._thread.is_alive():
                self.get_logger().warning("the processing thread did not stop within 10 s")
            self._thread = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}
        self._seeds.clear()
        self._end_goals(Follow.Result.REASON_ABORTED, "the node was deactivated")
        if self._lifecycle == "active":
            self._lifecycle = "inactive"

    def _cleanup(self, grounding_wait_s: float = 30.0) -> None:
        if self._pipeline is not None:
            pipeline, self._pipeline = self._pipeline, None
            if not pipeline.close(timeout=grounding_wait_s):
                # Closing the backends under a running grounding could crash it; the process is
                # about to end (close() at exit), which ends the worker thread with it.
                self.get_logger().info("a grounding was still running: left to end with the process")
                self._lifecycle = "unconfigured"
                return
            for backend in (pipeline.grounder, pipeline.tracker):
                try:
                    backend.close()
                except Exception as e:
                    self.get_logger().warning(f"closing {type(backend).__name__}: {e}")
        self._lifecycle = "unconfigured"

    def close(self, grounding_wait_s: float = 2.0) -> None:
        """Stop everything (at process exit, whatever the lifecycle state): the processing
        thread first, then the pipeline, waiting at most `grounding_wait_s` for a grounding in
        flight (a model's grounding can take minutes on a CPU; exit must not wait for it)."""
        try:
            self._deactivate()
            self._cleanup(grounding_wait_s)
        finally:
            self._log_handler.detach()

    # ---- input ------------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[key] += n

    def _reject(self, reason: str, message: str) -> None:
        """Count a rejected input and log it (each reason at most once per stats period)."""
        self._count(f"rejected.{reason}")
        now = time.monotonic()
        period = self._node_config.stats_period_s or 5.0
        if now - self._last_reject_log.get(reason, -1e9) >= period:
            self._last_reject_log[reason] = now
            total = self._counts[f"rejected.{reason}"]
            self.get_logger().warning(f"rejected ({reason}): {message} [{total} so far]")

    def _on_image(self, kind: str, msg) -> None:
        self._count("frames_received")
        if self._mailbox.put((kind, msg)):
            self._count("frames_dropped")

    def _on_command(self, msg: String) -> None:
        text = msg.data
        limit = self._pipeline.config.max_command_chars if self._pipeline else PipelineConfig().max_command_chars
        if len(text) > limit:
            self._reject("command.too_long", f"command is {len(text)} characters long; the limit is {limit}")
            return
        if not text.strip():
            self._reject("command.empty", "command is empty")
            return
        if self._pipeline is None:
            self._reject("command.not_configured", "not configured")
            return
        try:
            command = self._pipeline.set_command(text)
        except GroundingError as e:
            self._reject("command.invalid", str(e))
            return
        # The command topic means "follow this one instead of everything": Follow goals end.
        self._end_goals(Follow.Result.REASON_PREEMPTED, f"replaced by the command {_short(command)!r} on the "
                        "command topic", remove_targets=False)
        self._count("commands")
        self.get_logger().info(f"command: {_short(command)!r}")

    def _on_seed_mask(self, msg: Image) -> None:
        try:
            if msg.encoding.lower() != "mono8":
                raise ImageConversionError("encoding", f"a seed mask must be mono8, got {msg.encoding!r}")
            mask = image_to_array(msg) > 0
        except ImageConversionError as e:
            self._reject(f"seed.{e.reason}", str(e))
            return
        if not mask.any():
            self._reject("seed.empty", "seed mask is empty")
            return
        if len(self._seeds) >= MAX_PENDING_SEEDS:
            self._seeds.popleft()
            self._reject("seed.overflow", f"more than {MAX_PENDING_SEEDS} seed masks waiting; dropped the oldest")
        self._seeds.append(_Seed(stamp_to_ns(msg.header.stamp), mask, ""))

    # ---- processing -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._mailbox.take(timeout=0.2)
            if self._params_dirty.is_set():
                self._apply_live_parameters()
            if item is None:
                continue
            try:
                self._handle(*item)
            except Exception as e:  # the node keeps running whatever one frame does
                self._count("internal_errors")
                self.get_logger().error(f"processing a frame failed: {type(e).__name__}: {e}")

    def _handle(self, kind: str, msg) -> None:
        start = time.perf_counter()
        pipeline = self._pipeline
        if pipeline is None:
            return
        try:
            rgb = incoming_rgb(msg, pipeline)
        except ImageConversionError as e:
            self._reject(f"image.{e.reason}", str(e))
            return
        try:
            output = pipeline.process(rgb, stamp_to_ns(msg.header.stamp), msg.header.frame_id)
        except FrameRejected as e:
            self._reject(f"image.{e.reason}", str(e))
            return
        self._count("frames_processed")
        self._last_stamp_ns = output.frame.stamp_ns
        self._apply_seeds(pipeline, output)
        frame3d = self._step_3d(output, msg.header, rgb)
        self.publish_output(output, msg.header, rgb, frame3d)
        self._frame_times.append(time.perf_counter() - start)

    def _step_3d(self, output: PipelineOutput, header: Header, rgb: np.ndarray) -> Optional[Frame3D]:
        """The 3D of this frame's live tracks from its paired depth image (None: 2D only)."""
        pub = self._pubs.get("object_points")
        max_points = self._depth.config.object_points_max if pub is not None and pub.get_subscription_count() else 0
        frame3d = self._depth.estimate(output.tracks, stamp_to_ns(header.stamp), (rgb.shape[1], rgb.shape[0]),
                                       max_points)
        if frame3d is not None:
            self._depth_times.append(frame3d.seconds)
        return frame3d

    def _apply_seeds(self, pipeline: Pipeline, output: PipelineOutput) -> None:
        """Seed tracks from waiting seed masks whose frame has been processed; the others wait
        (a seed whose frame is still to come does not hold up those behind it) until they
        expire."""
        # Only this thread takes seeds out; the executor thread may append meanwhile.
        for _ in range(len(self._seeds)):
            seed = self._seeds.popleft()
            if seed.stamp_ns > output.frame.stamp_ns:  # its frame has not arrived yet
                seed.frames_waited += 1
                if seed.frames_waited > pipeline.config.buffer_size:
                    self._reject("seed.expired", (
                        f"no frame with the seed mask's stamp {seed.stamp_ns / 1e9:.6f} s arrived within "
                        f"{pipeline.config.buffer_size} frames (newest {output.frame.stamp_ns / 1e9:.6f} s)"))
                else:
                    self._seeds.append(seed)
                continue
            try:
                view = pipeline.seed_mask(seed.mask, seed.stamp_ns or None, seed.label)
            except SeedRejected as e:
                self._reject(f"seed.{e.reason}", str(e))
                continue
            self._count("seeds")
            output.tracks.append(view)

    def publish_output(self, output: PipelineOutput, header: Header, rgb: np.ndarray,
                       frame3d: Optional[Frame3D] = None) -> None:
        """Publish everything one processed frame produced, stamped with its image's header.
        The overlay and markers are drawn (and the object points gathered) only when something
        subscribes to them."""
        pubs = self._pubs
        if not pubs:
            return
        draw_all = self._node_config.draw_unsubscribed

        def wanted(topic: str) -> bool:
            return topic in pubs and (draw_all or pubs[topic].get_subscription_count() > 0)

        messages = output_messages(
            output, header, rgb, self._node_config.overlay_alpha, self._markers,
            overlay=wanted("overlay"), markers=wanted("markers"),
            frame3d=frame3d,
            object_points="object_points" in pubs and pubs["object_points"].get_subscription_count() > 0,
            overlay_buffer=self._overlay_buffer, mask_buffer=self._mask_buffer)
        for topic, msg in messages:
            pubs[topic].publish(msg)
        self._follow_update(output, dict(messages)["tracks"])
        self._count("groundings_published", len(output.groundings))
        self._count("masks_published")

    # ---- Follow action and ~/stop ------------------------------------------------------------
    # The action server and the stop service exist in every lifecycle state (a client can find
    # them), but goals are accepted only while the node is active; deactivating ends them.
    #
    # Bad goals (an empty or over-long command, more targets than pipeline.max_targets) are
    # accepted and then ended at once with reason REJECTED and the reason in words: a ROS 2 goal
    # rejection carries no text, so a client could not tell why. Goals that arrive while the node
    # is not active are rejected at the ROS level (logged): there is nothing to follow with.
    #
    # Each goal's execute callback is a coroutine awaiting a future that the goal's end
    # completes (cancel, LOST timeout, preemption, ~/stop, deactivation), so a waiting goal holds
    # no executor thread and the single-threaded executor keeps serving everything else.
    def _create_follow_interfaces(self) -> None:
        group = ReentrantCallbackGroup()
        self._follow_server = ActionServer(
            self, Follow, "follow", execute_callback=self._follow_execute, goal_callback=self._follow_goal,
            cancel_callback=self._follow_cancel, callback_group=group)
        self._stop_service = self.create_service(Trigger, "~/stop", self._on_stop, callback_group=group)

    def _follow_goal(self, request) -> GoalResponse:
        if self._lifecycle != "active" or self._pipeline is None:
            self._count("follow.goals_refused_inactive")
            self.get_logger().warning(f"Follow goal {_short(request.command)!r} refused: the node is {self._lifecycle}")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _follow_cancel(self, handle) -> CancelResponse:
        with self._goals_lock:
            goal = next((g for g in self._goals.values() if g.handle is handle), None)
        if goal is not None:
            self._end_goal(goal, Follow.Result.REASON_CANCELLED, "cancelled by the client")
        return CancelResponse.ACCEPT

    async def _follow_execute(self, handle):
        if handle.is_cancel_requested:  # cancelled before it started: nothing to follow
            handle.canceled()
            return Follow.Result(reason=Follow.Result.REASON_CANCELLED, message="cancelled before it started")
        goal, error = self._start_goal(handle)
        if goal is None:
            self._count("follow.goals_rejected")
            self.get_logger().warning(f"Follow goal {_short(handle.request.command)!r} rejected: {error}")
            handle.abort()
            return Follow.Result(reason=Follow.Result.REASON_REJECTED, message=error)
        reason, message = await goal.done
        self._count(f"follow.ended.{_REASON_NAMES.get(reason, reason)}")
        self.get_logger().info(f"Follow goal for target {goal.target_id} ended: {message}")
        result = Follow.Result(reason=reason, message=message, target_id=goal.target_id, tracks=list(goal.tracks))
        if not handle.is_active:
            return result
        if reason == Follow.Result.REASON_CANCELLED and handle.is_cancel_requested:
            handle.canceled()
        else:
            # rcl_action's goal states allow CANCELED only after a cancel request; every other
            # end is ABORTED, the result's reason saying which.
            handle.abort()
        return result

    def _start_goal(self, handle) -> tuple[Optional[_Goal], str]:
        """Add the goal's target (after ending every other one when the goal preempts);
        (None, reason) for a bad goal."""
        request = handle.request
        pipeline = self._pipeline
        if pipeline is None or self._lifecycle != "active":
            return None, f"the node is {self._lifecycle}"
        if not (request.lost_timeout_s >= 0.0):  # also NaN
            return None, f"lost_timeout_s must be >= 0 (0: never), got {request.lost_timeout_s}"
        try:
            command = clean_command(request.command, pipeline.config.max_command_chars)
        except GroundingError as e:
            return None, str(e)
        with self._goals_lock:
            if request.preempt:
                self._end_goals(Follow.Result.REASON_PREEMPTED,
                                f"preempted by a Follow goal for {_short(request.command)!r}")
                pipeline.clear_command()
            try:
                target_id = pipeline.add_target(request.command)
            except (GroundingError, TargetLimitError) as e:
                return None, str(e)
            done = Future(executor=self.executor)
            # A done callback makes the executor wake up when another thread completes the
            # future, so the awaiting coroutine resumes at once.
            done.add_done_callback(lambda _future: None)
            goal = _Goal(handle, target_id, command, float(request.lost_timeout_s), done)
            self._goals[target_id] = goal
        self._count("follow.goals_accepted")
        self.get_logger().info(f"Follow goal accepted: target {target_id} {goal.command!r}"
                               f"{', preempting' if request.preempt else ''}")
        return goal, ""

    def _end_goal(self, goal: _Goal, reason: int, message: str, remove_target: bool = True) -> bool:
        """End one goal (any thread): drop its target and wake its execute coroutine."""
        with self._goals_lock:
            if self._goals.get(goal.target_id) is not goal:
                return False  # ended already
            del self._goals[goal.target_id]
        if remove_target and self._pipeline is not None:
            self._pipeline.remove_target(goal.target_id)
        try:
            goal.done.set_result((reason, message))
        except Exception as e:  # at process exit the executor may be gone: no client to tell
            self.get_logger().debug(f"Follow goal end not delivered: {e}")
        return True

    def _end_goals(self, reason: int, message: str, remove_targets: bool = True) -> int:
        with self._goals_lock:
            goals = list(self._goals.values())
        return sum(self._end_goal(g, reason, message, remove_targets) for g in goals)

    def _follow_update(self, output: PipelineOutput, tracks: TrackArray) -> None:
        """Per processed frame (processing thread): each goal's tracks, its LOST timeout, and
        its feedback at most follow_feedback_hz times a second. The feedback carries the very
        Track messages published on `tracks`."""
        with self._goals_lock:
            goals = list(self._goals.values())
        if not goals:
            return
        targets = {t.id: t for t in output.targets}
        period = 1.0 / self._node_config.follow_feedback_hz
        now = time.monotonic()
        for goal in goals:
            target = targets.get(goal.target_id)
            if target is None:
                continue  # ended meanwhile
            goal.tracks = [t for t in tracks.tracks if t.target_id == goal.target_id]
            if 0 < goal.lost_timeout_s < target.unseen_s:
                self._end_goal(goal, Follow.Result.REASON_LOST_TIMEOUT,
                               f"target unseen for {target.unseen_s:.2f} s of camera time "
                               f"(lost_timeout_s {goal.lost_timeout_s:g})")
                continue
            if now - goal.last_feedback >= period:
                goal.last_feedback = now
                feedback = Follow.Feedback(target_id=goal.target_id, state=int(target.state),
                                           unseen_s=float(target.unseen_s), tracks=goal.tracks)
                try:
                    goal.handle.publish_feedback(feedback)
                except Exception as e:  # the goal ended on another thread meanwhile
                    self.get_logger().debug(f"Follow feedback not sent: {e}")

    def _on_stop(self, request, response):
        pipeline = self._pipeline
        if pipeline is None:
            response.success, response.message = False, f"nothing to stop: the node is {self._lifecycle}"
            return response
        goals = self._end_goals(Follow.Result.REASON_STOPPED, "stopped by the ~/stop service")
        targets = len(pipeline.targets())
        pipeline.clear_command()
        self._count("stops")
        response.success = True
        response.message = f"stopped {goals + targets} target(s) ({goals} Follow goal(s))"
        self.get_logger().info(response.message)
        return response

    # ---- counters and diagnostics -----------------------------------------------------------
    def _start_stats_timer(self) -> None:
        if self._stats_timer is not None:
            self.destroy_timer(self._stats_timer)
            self._stats_timer = None
        period = self._node_config.stats_period_s
        if period > 0:
            self._stats_timer = self.create_timer(period, self._on_stats_timer)

    def counters(self) -> dict[str, int]:
        """The node's and the pipeline's counters."""
        with self._counts_lock:
            out = dict(self._counts)
        if self._pipeline is not None:
            out.update({f"pipeline.{k}": v for k, v in self._pipeline.stats.items()})
            status = getattr(self._pipeline.grounder, "status", None)
            if status is not None:  # a grounder node's link (remote backend)
                out.update(status())
        out.update(self._depth.counters())
        return out

    def _on_stats_timer(self) -> None:
        counts = self.counters()
        summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        if summary != self._last_summary:
            self._last_summary = summary
            times = list(self._frame_times)
            ms = f", {1e3 * float(np.mean(times)):.1f} ms/frame" if times else ""
            self.get_logger().info(f"[{self._lifecycle}] {summary or 'no input yet'}{ms}")
        self._publish_diagnostics(counts)

    def _publish_diagnostics(self, counts: Optional[dict] = None) -> None:
        counts = self.counters() if counts is None else counts
        bad = sum(v for k, v in counts.items() if k.startswith("rejected.")) + counts.get("internal_errors", 0)
        self._bad_history.append(bad)
        recent = bad - self._bad_history[0]
        if self._error is not None:
            level, message = DiagnosticStatus.ERROR, self._error
        elif recent:
            level, message = DiagnosticStatus.WARN, (
                f"{self._lifecycle}; {recent} input(s) rejected or failed in the last "
                f"{len(self._bad_history) - 1} stats period(s)")
        else:
            level, message = DiagnosticStatus.OK, self._lifecycle
        values = {"lifecycle": self._lifecycle, "rejected_recently": recent,
                  "grounder": self._backend_names["grounder"], "tracker": self._backend_names["tracker"]}
        if self._pipeline is not None:
            values["pipeline_state"] = self._pipeline.state.name
            # With the last processed frame's stamp: a player in lockstep (steerseg-play
            # --hold-while-grounding) waits until the grounding that frame started has ended.
            values["grounding_running"] = str(self._pipeline.grounding_running()).lower()
            values["last_frame_stamp_ns"] = str(self._last_stamp_ns)
            values["command"] = self._pipeline.command or ""
        times = list(self._frame_times)
        if times:
            values["ms_per_frame"] = f"{1e3 * float(np.mean(times)):.2f}"
        depth_times = list(self._depth_times)
        if depth_times:
            values["ms_3d_per_frame"] = f"{1e3 * float(np.mean(depth_times)):.2f}"
        values.update(counts)
        publish_status(self, self._pub_diagnostics, "pipeline", level, message, values)

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("autostart").value)

    @property
    def pipeline(self) -> Optional[Pipeline]:
        return self._pipeline

    @property
    def lifecycle_state(self) -> str:
        return self._lifecycle

    @property
    def error(self) -> Optional[str]:
        """Why the last transition failed (None after a successful configure)."""
        return self._error

    @property
    def backend_names(self) -> dict[str, str]:
        """The backends in use ("builtin (fallback from steerseg)" after a fallback)."""
        return dict(self._backend_names)


def main(args: Optional[list[str]] = None) -> int:
    """Run the node until SIGINT or SIGTERM (exit code 0 for both; see ros/main_loop.py);
    `autostart:=true` configures and activates it at once."""
    return main_loop.run(SteerSegNode, SingleThreadedExecutor, args)


if __name__ == "__main__":
    raise SystemExit(main())
