"""The ROS 2 node: camera frames and language commands in; label masks, overlays, tracks,
grounding results and RViz markers out, at camera rate.

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
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from steerseg_ros import backends, render
from steerseg_ros.grounding.base import GroundingError
from steerseg_ros.msg import GroundingResult as GroundingResultMsg
from steerseg_ros.msg import TrackArray
from steerseg_ros.pipeline import FrameRejected, Pipeline, PipelineConfig, PipelineOutput
from steerseg_ros.ros import parameters
from steerseg_ros.ros.image_conversion import (ImageBuffer, ImageConversionError, array_to_image, compressed_to_rgb,
                                               image_to_array, image_to_rgb)
from steerseg_ros.ros.messages import (MarkerConfig, grounding_to_msg, stamp_to_ns, tracks_to_markers,
                                       tracks_to_msg)

NODE_NAME = "steerseg"
# Relative topic names (remappable): what the node subscribes and publishes. /diagnostics is
# absolute, as diagnostic aggregators expect.
SUBSCRIPTIONS = {"image": "sensor_msgs/Image", "image/compressed": "sensor_msgs/CompressedImage",
                 "command": "std_msgs/String", "seed_mask": "sensor_msgs/Image"}
PUBLICATIONS = {"mask": "sensor_msgs/Image", "overlay": "sensor_msgs/Image", "tracks": "steerseg_ros/TrackArray",
                "grounding": "steerseg_ros/GroundingResult", "markers": "visualization_msgs/MarkerArray"}
BACKEND_KINDS = ("grounder", "tracker")
# Parameters under grounder.* / tracker.* that are the node's, not the backend config's.
_CHOICE_FIELDS = ("backend", "fallback_to_builtin")
# How many seed masks may wait for their frame.
MAX_PENDING_SEEDS = 4


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
    overlay_alpha: float = field(default=0.5, metadata={"help": "Opacity of the mask tint in the overlay image."})
    draw_unsubscribed: bool = field(default=False, metadata={"help": (
        "Draw and publish the overlay and markers even when nothing subscribes to them (they cost "
        "a few milliseconds per frame).")})
    stats_period_s: float = field(default=5.0, metadata={"help": (
        "Log the counters and publish /diagnostics this often (seconds); 0: never. Takes effect at "
        "the next configure.")})

    def validate(self) -> None:
        if self.image_transport not in ("raw", "compressed"):
            raise ValueError(f"image_transport must be raw or compressed, got {self.image_transport!r}")
        if self.image_qos not in ("sensor_data", "reliable"):
            raise ValueError(f"image_qos must be sensor_data or reliable, got {self.image_qos!r}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {self.overlay_alpha}")
        if self.stats_period_s < 0:
            raise ValueError(f"stats_period_s must be >= 0, got {self.stats_period_s}")


def _validate_markers(config: MarkerConfig) -> None:
    if config.distance <= 0 or config.focal_length_px <= 0 or config.text_height <= 0:
        raise ValueError("markers.distance, markers.focal_length_px and markers.text_height must be > 0")


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
        "dataclasses by steerseg_ros.ros.node.write_default_params; test_node_parameters checks\n"
        "that it still matches them). The key /**/steerseg matches the node in any namespace\n"
        "(a plain `steerseg:` would not apply under a namespace).")
    with open(path, "w") as f:
        f.write(parameters.render_yaml(f"/**/{NODE_NAME}", default_specs(grounder, tracker), header))


def output_messages(output: PipelineOutput, header: Header, rgb: np.ndarray, overlay_alpha: float = 0.5,
                    marker_config: Optional[MarkerConfig] = None, overlay: bool = True,
                    markers: bool = True, overlay_buffer: Optional[ImageBuffer] = None) -> list[tuple[str, Any]]:
    """The (topic, message) pairs the node publishes for one processed frame, all stamped with
    the frame's header: the label mask, the tracks, optionally the overlay and the markers, and
    the groundings that finished since the previous frame. With `overlay_buffer` the overlay is
    drawn straight into that reused message memory (publish the messages before the next call)."""
    visible = output.visible_tracks()
    out: list[tuple[str, Any]] = [
        ("mask", array_to_image(output.label_image(), "mono8", header)),
        ("tracks", tracks_to_msg(output.tracks, header)),
    ]
    if overlay and overlay_buffer is not None:
        render.overlay(rgb, visible, overlay_alpha, out=overlay_buffer.view(rgb.shape))
        out.append(("overlay", overlay_buffer.message("bgr8", header)))
    elif overlay:
        out.append(("overlay", array_to_image(render.overlay(rgb, visible, overlay_alpha), "bgr8", header)))
    if markers:
        out.append(("markers", tracks_to_markers(visible, header, (rgb.shape[1], rgb.shape[0]), marker_config)))
    out += [("grounding", grounding_to_msg(result)) for result in output.groundings]
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


class _RosLogHandler(logging.Handler):
    """Forwards Python log records to an rclpy logger at the matching severity."""

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


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class SteerSegNode(LifecycleNode):
    """The lifecycle node `steerseg` (see the module docstring and README for topics and
    parameters)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self._log_handler = _RosLogHandler(self.get_logger())
        core_logger = logging.getLogger("steerseg_ros")
        core_logger.addHandler(self._log_handler)
        if core_logger.level == logging.NOTSET:
            core_logger.setLevel(logging.INFO)

        self._counts: collections.Counter = collections.Counter()
        self._counts_lock = threading.Lock()
        self._last_reject_log: dict[str, float] = {}
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
        self._subs: list = []
        self._stats_timer = None
        self._frame_times: collections.deque[float] = collections.deque(maxlen=200)
        self._last_summary = ""

        self._declare_static_parameters()
        for kind in BACKEND_KINDS:
            self._declare_backend_parameters(kind, self.get_parameter(f"{kind}.backend").value)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(lambda _params: self._params_dirty.set())

        self._node_config = self._read_node_config()
        self._markers = self._read_markers()
        # /diagnostics exists in every lifecycle state, so a node stuck unconfigured says why.
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._start_stats_timer()

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
            self.get_logger().error(f"cannot declare the parameters of {kind} backend {name!r}: {e}")
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
        _validate_markers(config)
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
                          "max_command_chars", "selection"):
                    setattr(self._pipeline.config, f, getattr(new, f))
        except Exception as e:  # validated when set; a failure here is a bug worth a log line
            self.get_logger().error(f"could not apply changed parameters: {e}")

    # ---- lifecycle --------------------------------------------------------------------------
    def _transition(self, name: str, body: Callable[[], None],
                    undo: Optional[Callable[[], None]] = None) -> TransitionCallbackReturn:
        """Run a transition; on an exception, undo what it did, remember and log why, and fail
        (the node stays in its previous state, and /diagnostics reports the error)."""
        try:
            body()
            return TransitionCallbackReturn.SUCCESS
        except Exception as e:
            self._error = f"{name} failed: {e}"
            self.get_logger().error(self._error)
            if undo is not None:
                try:
                    undo()
                except Exception as undo_error:
                    self.get_logger().error(f"undoing the failed {name}: {undo_error}")
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", self._configure, self._cleanup)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", self._activate, self._deactivate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        def shutdown():
            self._deactivate()
            self._cleanup()
            self._lifecycle = "finalized"
        return self._transition("shutdown", shutdown)

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
                raise RuntimeError(f"the {kind} backend {name!r} cannot be loaded")
            backend = make(name, self._backend_options(kind, name))
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
            "overlay": self.create_publisher(Image, "overlay", images_out),
            "tracks": self.create_publisher(TrackArray, "tracks", reliable),
            "grounding": self.create_publisher(GroundingResultMsg, "grounding", latched),
            "markers": self.create_publisher(MarkerArray, "markers", reliable),
        }
        if config.image_qos == "sensor_data":
            camera_qos = qos_profile_sensor_data
        else:
            camera_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                                    history=HistoryPolicy.KEEP_LAST)
        if config.image_transport == "compressed":
            self._subs.append(self.create_subscription(
                CompressedImage, "image/compressed", lambda m: self._on_image("compressed", m), camera_qos))
        else:
            self._subs.append(self.create_subscription(Image, "image", lambda m: self._on_image("raw", m), camera_qos))
        self._subs.append(self.create_subscription(String, "command", self._on_command, reliable))
        self._subs.append(self.create_subscription(Image, "seed_mask", self._on_seed_mask, reliable))
        self._stop.clear()
        self._mailbox.reopen()
        self._thread = threading.Thread(target=self._run, name="steerseg-processing", daemon=True)
        self._thread.start()
        self._lifecycle = "active"
        self.get_logger().info(
            f"active: camera {self.resolve_topic_name('image' if config.image_transport == 'raw' else 'image/compressed')} "
            f"({config.image_qos} QoS), command {self.resolve_topic_name('command')}")

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
        if self._lifecycle == "active":
            self._lifecycle = "inactive"

    def _cleanup(self) -> None:
        if self._pipeline is not None:
            pipeline, self._pipeline = self._pipeline, None
            pipeline.close()
            for backend in (pipeline.grounder, pipeline.tracker):
                try:
                    backend.close()
                except Exception as e:
                    self.get_logger().warning(f"closing {type(backend).__name__}: {e}")
        self._lifecycle = "unconfigured"

    def close(self) -> None:
        """Stop everything (at process exit, whatever the lifecycle state)."""
        try:
            self._deactivate()
            self._cleanup()
        finally:
            logging.getLogger("steerseg_ros").removeHandler(self._log_handler)

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
            rgb = image_to_rgb(msg) if kind == "raw" else compressed_to_rgb(msg)
        except ImageConversionError as e:
            self._reject(f"image.{e.reason}", str(e))
            return
        try:
            output = pipeline.process(rgb, stamp_to_ns(msg.header.stamp), msg.header.frame_id)
        except FrameRejected as e:
            self._reject(f"image.{e.reason}", str(e))
            return
        self._count("frames_processed")
        self._apply_seeds(pipeline, output)
        self.publish_output(output, msg.header, rgb)
        self._frame_times.append(time.perf_counter() - start)

    def _apply_seeds(self, pipeline: Pipeline, output: PipelineOutput) -> None:
        """Seed tracks from waiting seed masks whose frame has been processed."""
        while self._seeds:
            seed = self._seeds[0]
            if seed.stamp_ns > output.frame.stamp_ns:
                return  # its frame has not arrived yet
            self._seeds.popleft()
            try:
                view = pipeline.seed_mask(seed.mask, seed.stamp_ns or None, seed.label)
            except ValueError as e:
                self._reject("seed.no_frame", str(e))
                continue
            self._count("seeds")
            output.tracks.append(view)

    def publish_output(self, output: PipelineOutput, header: Header, rgb: np.ndarray) -> None:
        """Publish everything one processed frame produced, stamped with its image's header.
        The overlay and markers are drawn only when something subscribes to them."""
        pubs = self._pubs
        if not pubs:
            return
        draw_all = self._node_config.draw_unsubscribed
        messages = output_messages(
            output, header, rgb, self._node_config.overlay_alpha, self._markers,
            overlay=draw_all or pubs["overlay"].get_subscription_count() > 0,
            markers=draw_all or pubs["markers"].get_subscription_count() > 0, overlay_buffer=self._overlay_buffer)
        for topic, msg in messages:
            pubs[topic].publish(msg)
        self._count("groundings_published", len(output.groundings))
        self._count("masks_published")

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
        status = DiagnosticStatus(name=f"{self.get_name()}: pipeline", hardware_id=self.get_fully_qualified_name())
        if self._error is not None:
            status.level, status.message = DiagnosticStatus.ERROR, self._error
        elif any(k.startswith("rejected.") for k in counts) or counts.get("internal_errors"):
            status.level, status.message = DiagnosticStatus.WARN, f"{self._lifecycle}; some input rejected"
        else:
            status.level, status.message = DiagnosticStatus.OK, self._lifecycle
        values = {"lifecycle": self._lifecycle,
                  "grounder": self._backend_names["grounder"], "tracker": self._backend_names["tracker"]}
        if self._pipeline is not None:
            values["pipeline_state"] = self._pipeline.state.name
            values["command"] = self._pipeline.command or ""
        times = list(self._frame_times)
        if times:
            values["ms_per_frame"] = f"{1e3 * float(np.mean(times)):.2f}"
        values.update({k: str(v) for k, v in counts.items()})
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        try:
            self._pub_diagnostics.publish(array)
        except Exception:  # during shutdown
            pass

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
    """Run the node until SIGINT; `autostart:=true` configures and activates it at once."""
    rclpy.init(args=args)
    node = None
    executor = SingleThreadedExecutor()
    try:
        node = SteerSegNode()
        executor.add_node(node)
        if node.autostart and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
