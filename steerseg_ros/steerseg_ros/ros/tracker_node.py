"""The ROS 2 tracker node: camera frames and language commands in; label masks, tracks,
grounding results (and, unless the drawing node draws them, `draw` false, overlays and RViz
markers) out, at camera rate. With depth and camera_info (optional,
see steerseg_ros.ros.depth_input) the tracks carry 3D, and target_point and object_points go out.

Owns `SteerSegNode` (the lifecycle node `steerseg`) and `main()`: its lifecycle transitions, its
subscriptions, and the wiring of the parts it is made of, each in its own module of this folder:
its parameters (node_config: declared from the config dataclasses of the node, the pipeline and
the chosen backends, validated whenever they change), its backends (backend_loader), the camera
frames and seed masks on their way in (frame_input: the one-slot mailbox that keeps only the
newest camera frame, the processing thread that converts, steps the pipeline and publishes),
what it publishes (outputs), the Follow action and ~/stop (follow), and what the three nodes
share (node_base: counters of rejected and dropped input, logged periodically and published on
/diagnostics, and the bridge that forwards the core's Python logging, loggers "steerseg_ros.*",
to the node's logger).

Lifecycle: configure builds the backends and the pipeline from the parameters (a backend that
fails to load leaves the node unconfigured, saying why in its log and on /diagnostics, or falls
back to the built-in backend when `<kind>.fallback_to_builtin` is true); activate creates the
publishers and subscriptions and starts the processing thread; deactivate stops them; cleanup
releases the backends. Grounding runs in the pipeline's worker thread, so masks keep flowing
while it runs.

Several targets: the `command` topic replaces everything followed with one command; the Follow
action (`follow`) adds one target per goal (feedback, results, preemption: action/Follow.action),
and the `~/stop` service ends them all (see steerseg_ros.ros.follow).
"""
from __future__ import annotations

import collections
import time
from typing import Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String

from steerseg_msgs.action import Follow
from steerseg_ros.streaming.pipeline import FrameRejected, Pipeline, PipelineOutput
from steerseg_ros.ros import main_loop
from steerseg_ros.ros.backend_loader import BackendLoader
from steerseg_ros.ros.depth_input import DepthInput, Frame3D
from steerseg_ros.ros.follow import FollowServer
from steerseg_ros.ros.frame_input import CameraTransportWatch, FrameThread, SeedQueue, incoming_rgb
from steerseg_ros.ros.image_conversion import ImageConversionError
from steerseg_ros.ros.messages import MarkerConfig, stamp_to_ns
from steerseg_ros.ros.node_base import NodeBase, RecentRejections, RejectionLog, input_qos
from steerseg_ros.ros.node_config import (BACKEND_KINDS, LIVE_NODE_FIELDS, LIVE_PIPELINE_FIELDS, NODE_NAME, NodeConfig,
                                          check_changes, declare, read_section, static_specs, takes_effect)
# The parameters file's generator: test_node_parameters' hint names it here.
from steerseg_ros.ros.node_config import write_default_params  # noqa: F401
from steerseg_ros.ros.outputs import TrackerOutputs
from steerseg_ros.ros.target_frame import TargetFrame

# Relative topic names (remappable): what the node subscribes and publishes. /diagnostics is
# absolute, as diagnostic aggregators expect.
SUBSCRIPTIONS = {"image": "sensor_msgs/Image", "image/compressed": "sensor_msgs/CompressedImage",
                 "command": "std_msgs/String", "seed_mask": "sensor_msgs/Image",
                 "depth": "sensor_msgs/Image", "camera_info": "sensor_msgs/CameraInfo"}
# The input topic each rejection reason is about (by the reason's first part), for the warnings.
INPUT_TOPICS = {"command": "command", "seed": "seed_mask", "depth": "depth", "camera_info": "camera_info",
                "tf": "/tf"}  # tf2's listener: /tf and /tf_static, absolute
# The Follow action (relative name, remappable) and the stop service (private, ~/stop).
ACTIONS = {"follow": "steerseg_msgs/action/Follow"}
SERVICES = {"~/stop": "std_srvs/srv/Trigger"}
PUBLICATIONS = {"mask": "sensor_msgs/Image", "overlay": "sensor_msgs/Image", "tracks": "steerseg_ros/TrackArray",
                "grounding": "steerseg_ros/GroundingResult", "markers": "visualization_msgs/MarkerArray",
                "target_point": "geometry_msgs/PointStamped", "object_points": "sensor_msgs/PointCloud2",
                # Where vision_msgs is installed (see ros/outputs.py); per Follow goal also a
                # geometry_msgs/PoseStamped on its pose_topic (ros/follow.py).
                "detections_2d": "vision_msgs/Detection2DArray", "detections_3d": "vision_msgs/Detection3DArray"}
# /diagnostics says WARN while input was rejected within this many stats periods (not for the
# rest of the process's life once anything was).
DIAGNOSTICS_WINDOW_PERIODS = 6
# /diagnostics names at most this many of the recent rejection reasons in its message.
DIAGNOSTICS_TOP_REASONS = 3


def _pipeline_values(pipeline: Pipeline, last_stamp_ns: int) -> dict[str, str]:
    """What /diagnostics says about the pipeline. With the last processed frame's stamp: a player
    in lockstep (steerseg-play --hold-while-grounding) waits until the grounding that frame
    started has ended."""
    return {"pipeline_state": pipeline.state.name,
            "grounding_running": str(pipeline.grounding_running()).lower(),
            "last_frame_stamp_ns": str(last_stamp_ns), "command": pipeline.command or ""}


def _timing_values(frame_times, depth_times) -> dict[str, str]:
    """Mean time per processed frame, and of its 3D step, over the recent frames (ms)."""
    out = {}
    for key, times in (("ms_per_frame", list(frame_times)), ("ms_3d_per_frame", list(depth_times))):
        if times:
            out[key] = f"{1e3 * float(np.mean(times)):.2f}"
    return out


class SteerSegNode(NodeBase):
    """The lifecycle node `steerseg` (see the module docstring and README for topics and
    parameters)."""

    DIAGNOSTICS_NAME = "pipeline"

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self._reject = RejectionLog(self._count, self._counts, self._input_topic,
                                    lambda: self._node_config.stats_period_s, self.get_logger())
        self._rejections = RecentRejections(DIAGNOSTICS_WINDOW_PERIODS, DIAGNOSTICS_TOP_REASONS)
        self._transport_watch = CameraTransportWatch(self)  # frames on the other image transport only
        self._frames_at_activate = 0
        self._pipeline: Optional[Pipeline] = None
        self._backends = BackendLoader(self, self._count)
        self._frames = FrameThread(self._handle, self._apply_live_parameters, self._count, self.get_logger())
        self._seeds = SeedQueue(self._reject, self._count)
        self._outputs = TrackerOutputs(self)
        self._subs: list = []
        self._frame_times: collections.deque[float] = collections.deque(maxlen=200)
        self._last_stamp_ns = 0  # of the last processed frame
        self._last_summary = ""
        self._depth = DepthInput(self._reject, self._count)
        self._tf = TargetFrame(self, self._reject)  # target_frame: the 3D outputs' frame
        self._depth_times: collections.deque[float] = collections.deque(maxlen=200)

        for spec in static_specs():
            declare(self, spec)
        for kind in BACKEND_KINDS:
            self._backends.declare(kind, self.get_parameter(f"{kind}.backend").value)
        self.add_on_set_parameters_callback(lambda params: check_changes(self, params))
        self.add_post_set_parameters_callback(self._on_parameters_set)

        try:
            self._node_config: NodeConfig = read_section(self, "node")
            self._markers: MarkerConfig = read_section(self, "markers")
        except ValueError as e:  # a bad parameters file: say so and keep running; configure refuses
            self._node_config, self._markers = NodeConfig(), MarkerConfig()
            self._error = f"invalid parameters: {e}"
            self.get_logger().error(f"{self._error}; configure fails until they are fixed")
        self._start_stats_timer(self._node_config.stats_period_s)
        self._follow = FollowServer(self, self._count, lambda: self._node_config.follow_feedback_hz)

    # ---- parameters -----------------------------------------------------------------------
    def _takes_effect(self, name: str) -> str:
        return takes_effect(name)

    def _on_parameters_set(self, params) -> None:
        """After a change: the processing thread applies what it owns between two frames; the
        stats timer (this thread's) restarts here with a new period."""
        self._frames.parameters_changed.set()
        for p in params:
            if p.name == "stats_period_s":
                self._node_config.stats_period_s = float(p.value)
                self._start_stats_timer(self._node_config.stats_period_s)

    def _apply_live_parameters(self) -> None:
        """Apply changed parameters that can change on the fly (called in the processing thread,
        between frames): the node's drawing settings, the markers, the pipeline's settings in
        LIVE_PIPELINE_FIELDS and the depth pairing's (node_config.takes_effect says which). The
        rest take effect at the next configure or activate."""
        try:
            new_node = read_section(self, "node")
            for name in LIVE_NODE_FIELDS:  # the others wait for the transition that uses them
                setattr(self._node_config, name, getattr(new_node, name))
            self._markers = read_section(self, "markers")
            self._depth.apply_live(read_section(self, "depth"))
            if self._pipeline is not None:
                new = read_section(self, "pipeline")
                for f in LIVE_PIPELINE_FIELDS:
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
        self._node_config = read_section(self, "node")
        self._markers = read_section(self, "markers")
        pipeline_config = read_section(self, "pipeline")
        made = {}
        try:
            for kind in BACKEND_KINDS:
                made[kind] = self._backends.load(kind)
            self._pipeline = Pipeline(made["grounder"], made["tracker"], pipeline_config)
        except Exception:
            for backend in made.values():
                backend.close()
            raise
        self._start_stats_timer(self._node_config.stats_period_s)
        self._lifecycle = "inactive"
        self.get_logger().info(
            f"configured: grounder {self._backends.names['grounder']!r}, tracker {self._backends.names['tracker']!r}")

    def _activate(self) -> None:
        if self._pipeline is None:
            raise RuntimeError("not configured")
        config = self._node_config = read_section(self, "node")
        self._waiting_logged.clear()
        self._transport_watch.warning = None
        self._frames_at_activate = self.counters().get("frames_received", 0)
        self._tf.start(config.target_frame, config.tf_timeout_s, config.publish_target_tf)
        self._outputs.create(config.draw)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        camera_qos = input_qos(config.image_qos)
        if config.image_transport == "compressed":
            self._subs.append(self.create_subscription(
                CompressedImage, "image/compressed", lambda m: self._on_image("compressed", m), camera_qos))
        else:
            self._subs.append(self.create_subscription(Image, "image", lambda m: self._on_image("raw", m), camera_qos))
        self._subs.append(self.create_subscription(String, "command", lambda msg: self._follow.follow_command(msg.data, self._reject), reliable))
        self._subs.append(self.create_subscription(Image, "seed_mask", self._seeds.add, reliable))
        self._activate_depth()
        self._frames.start()
        self._lifecycle = "active"
        self.get_logger().info(
            f"active: camera {self.resolve_topic_name('image' if config.image_transport == 'raw' else 'image/compressed')} "
            f"({config.image_qos} QoS), command {self.resolve_topic_name('command')}")

    def _activate_depth(self) -> None:
        """The depth and camera_info subscriptions (part of activate)."""
        config = read_section(self, "depth")
        self._depth.start(config)
        self._depth.colour_topic = self._input_topic("image")
        self._depth.depth_topic = self._input_topic("depth")
        qos = input_qos(config.qos)
        self._subs.append(self.create_subscription(Image, "depth", self._depth.on_depth, qos))
        self._subs.append(self.create_subscription(CameraInfo, "camera_info", self._depth.on_camera_info, qos))

    def _deactivate(self) -> None:
        self._frames.stop()
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self._outputs.destroy()
        self._tf.stop()
        self._seeds.clear()
        self._follow.end_all(Follow.Result.REASON_ABORTED, "the node was deactivated")
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
    def _input_topic(self, reason: str) -> str:
        """The resolved topic (after remapping) of the input a rejection reason is about: a
        user reading the warning must see which of their topics is wrong."""
        kind = reason.split(".", 1)[0]
        if kind == "image":
            return self.resolve_topic_name("image/compressed" if self._node_config.image_transport == "compressed"
                                           else "image")
        return self.resolve_topic_name(INPUT_TOPICS.get(kind, kind))

    def _on_image(self, kind: str, msg) -> None:
        self._count("frames_received")
        self._depth.colour_arrived()
        self._depth.note_colour(stamp_to_ns(msg.header.stamp))
        if self._frames.put(kind, msg):
            self._count("frames_dropped")

    # ---- processing (the processing thread) -------------------------------------------------
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
        self._seeds.apply(pipeline, output)
        frame3d = self._step_3d(output, msg.header, rgb)
        self._publish(output, msg.header, rgb, frame3d)
        self._frame_times.append(time.perf_counter() - start)

    def _step_3d(self, output: PipelineOutput, header: Header, rgb: np.ndarray) -> Optional[Frame3D]:
        """The 3D of this frame's live tracks from its paired depth image (None: 2D only)."""
        max_points = self._depth.config.object_points_max if self._outputs.subscribed("object_points") else 0
        frame3d = self._depth.estimate(output.tracks, stamp_to_ns(header.stamp), (rgb.shape[1], rgb.shape[0]),
                                       max_points)
        if frame3d is not None:
            self._depth_times.append(frame3d.seconds)
            frame3d = self._tf.place(frame3d, stamp_to_ns(header.stamp))  # None: no transform
        # Speed is judged where the positions are published (target_frame), after the move.
        frame3d, jumps = self._depth.check_motion(frame3d, output.tracks, stamp_to_ns(header.stamp))
        self._on_3d_jumps(jumps)
        return frame3d

    def _on_3d_jumps(self, jumps: list) -> None:
        """Where the node learns that tracks' 3D positions jumped (depth.Jump; already logged,
        counted, and their positions withheld by DepthInput.check_motion): the target of each new
        jump is grounded again out of schedule, so the next grounding re-verifies the track
        (a track seeded with no target, target id 0, has none to ask)."""
        pipeline = self._pipeline
        for jump in jumps:
            if jump.first and jump.target_id and pipeline is not None:
                pipeline.request_grounding(jump.target_id, "3d_jump")

    def _publish(self, output: PipelineOutput, header: Header, rgb: np.ndarray,
                 frame3d: Optional[Frame3D]) -> None:
        config = self._node_config
        tracks = self._outputs.publish(output, header, rgb, frame3d, config.overlay_alpha, self._markers,
                                       config.draw_unsubscribed)
        if tracks is None:  # not active
            return
        self._follow.update(output, tracks)
        self._tf.broadcast(tracks.tracks)
        self._count("groundings_published", len(output.groundings))
        self._count("masks_published")

    # ---- counters and diagnostics -----------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """The node's and the pipeline's counters."""
        out = super().counters()
        if self._pipeline is not None:
            out.update({f"pipeline.{k}": v for k, v in self._pipeline.stats.items()})
            status = getattr(self._pipeline.grounder, "status", None)
            if status is not None:  # a grounder node's link (remote backend)
                out.update(status())
        out.update(self._depth.counters())
        return out

    def check_camera_transport(self) -> Optional[str]:
        """The warning about frames on the other image transport only (frame_input.CameraTransportWatch)."""
        waiting = (self._lifecycle == "active"
                   and self.counters().get("frames_received", 0) <= self._frames_at_activate)
        return self._transport_watch.check(self._node_config.image_transport, waiting)

    def _on_stats_timer(self) -> None:
        self.check_camera_transport()
        counts = self.counters()
        summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        if summary != self._last_summary:
            self._last_summary = summary
            times = list(self._frame_times)
            ms = f", {1e3 * float(np.mean(times)):.1f} ms/frame" if times else ""
            self.get_logger().info(f"[{self._lifecycle}] {summary or 'no input yet'}{ms}")
        self._publish_diagnostics(counts)

    def _status(self, counts: dict) -> tuple[int, str, dict]:
        recent, rejected = self._rejections.update(counts)
        level, message = DiagnosticStatus.OK, self._lifecycle
        if recent:
            level, message = DiagnosticStatus.WARN, f"{self._lifecycle}; {rejected}"
        for warning in (self._transport_watch.warning, self._depth.offset_warning()):
            if warning:
                level, message = DiagnosticStatus.WARN, f"{message}; {warning}"
        values = {"lifecycle": self._lifecycle, "rejected_recently": recent,
                  "grounder": self._backends.names["grounder"], "tracker": self._backends.names["tracker"],
                  **self._depth.status_values()}
        if self._pipeline is not None:
            values.update(_pipeline_values(self._pipeline, self._last_stamp_ns))
        values.update(_timing_values(self._frame_times, self._depth_times))
        values.update(counts)
        return level, message, values

    @property
    def pipeline(self) -> Optional[Pipeline]:
        return self._pipeline

    @property
    def backend_names(self) -> dict[str, str]:
        """The backends in use ("builtin (fallback from steerseg)" after a fallback)."""
        return dict(self._backends.names)


def main(args: Optional[list[str]] = None) -> int:
    """Run the node until SIGINT or SIGTERM (exit code 0 for both; see ros/main_loop.py);
    `autostart:=true` configures and activates it at once."""
    return main_loop.run(SteerSegNode, SingleThreadedExecutor, args)


if __name__ == "__main__":
    raise SystemExit(main())
