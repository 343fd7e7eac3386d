"""The grounder node: owns the grounding model and answers `Ground` requests (keyframes and a
command in, a GroundingResult with every keyframe's maps out) for one or more tracker nodes, in
its own process, on the same machine or on a GPU machine across the network.

Owns `GrounderNode` (the lifecycle node `steerseg_grounder`) and `main()`. Stateless between
requests apart from the loaded model: it can be restarted or moved while the tracker node goes
on tracking. Lifecycle: configure loads the backend (a backend that fails to load leaves the
node unconfigured, saying why on /diagnostics); activate offers the action; deactivate
withdraws it; cleanup releases the model. One grounding runs at a time (the model is the
bottleneck); further requests wait their turn, each with "queued" feedback, and a cancelled
request that has not started is not run.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter

from steerseg_ros import backends
from steerseg_ros.action import Ground
from steerseg_ros.buffer import Frame
from steerseg_ros.grounding.base import GroundingError, ModelUnavailableError
from steerseg_ros.ros import parameters
from steerseg_ros.ros.image_conversion import ImageConversionError, compressed_to_rgb
from steerseg_ros.ros.messages import grounding_to_ground_result, stamp_to_ns
from steerseg_ros.ros.node import RosLogHandler, backend_specs

NODE_NAME = "steerseg_grounder"
ACTION = "ground"


@dataclass
class GrounderNodeConfig:
    """The grounder node's own settings (each field's help text is in its metadata)."""

    autostart: bool = field(default=False, metadata={"help": (
        "Configure and activate at start-up without a lifecycle manager.")})
    max_keyframes: int = field(default=64, metadata={"help": "Requests with more keyframes are refused."})
    max_request_mb: float = field(default=64.0, metadata={"help": (
        "Requests whose compressed keyframes add up to more megabytes are refused.")})
    delay_s: float = field(default=0.0, metadata={"help": (
        "Wait this long before answering each request: simulates a slow network or model in tests "
        "and rehearsals. 0 in use.")})
    stats_period_s: float = field(default=5.0, metadata={"help": (
        "Publish /diagnostics this often (seconds); 0: never. Takes effect at the next configure.")})

    def validate(self) -> None:
        if self.max_keyframes < 1:
            raise ValueError(f"max_keyframes must be >= 1, got {self.max_keyframes}")
        for name in ("max_request_mb", "delay_s", "stats_period_s"):
            value = getattr(self, name)
            if not (value == value and abs(value) != float("inf")) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.max_request_mb <= 0:
            raise ValueError(f"max_request_mb must be > 0, got {self.max_request_mb}")


def grounder_backends() -> list[str]:
    """The backends a grounder node can run: every grounder but the one that calls a grounder node."""
    return sorted(name for name in backends.GROUNDERS if name != "remote")


class GrounderNode(LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self._log_handler = RosLogHandler(self.get_logger())
        core_logger = logging.getLogger("steerseg_ros")
        core_logger.addHandler(self._log_handler)
        if core_logger.level == logging.NOTSET:
            core_logger.setLevel(logging.INFO)
        self._counts: collections.Counter = collections.Counter()
        self._counts_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._grounder = None
        self._backend = ""
        self._server: Optional[ActionServer] = None
        self._error: Optional[str] = None
        self._lifecycle = "unconfigured"
        self._last: dict[str, Any] = {}
        self._group = ReentrantCallbackGroup()

        for spec in parameters.specs(GrounderNodeConfig, ""):
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
        self.declare_parameter("grounder.backend", "builtin", parameters.ParamSpec(
            "grounder.backend", ("backend",), Parameter.Type.STRING.value, "builtin",
            f"The grounding backend, one of {grounder_backends()}. Takes effect at the next configure.").descriptor())
        self._declare_backend(self.get_parameter("grounder.backend").value)
        self._config = self._read_config()
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timer = None
        self._start_timer()

    # ---- parameters -------------------------------------------------------------------------
    def _declare_backend(self, name: str) -> bool:
        try:
            if name not in grounder_backends():
                raise ValueError(f"unknown grounder backend {name!r}; choose one of {grounder_backends()}")
            for spec in backend_specs("grounder", name):
                if not self.has_parameter(spec.name):
                    self.declare_parameter(spec.name, spec.default if not (isinstance(spec.default, list)
                                                                           and not spec.default)
                                           else Parameter.Type(spec.type), spec.descriptor())
            return True
        except Exception as e:
            self._error = f"cannot use grounder backend {name!r}: {e}"
            self.get_logger().error(self._error)
            return False

    def _read_config(self) -> GrounderNodeConfig:
        values = {spec.path: self.get_parameter(spec.name).value
                  for spec in parameters.specs(GrounderNodeConfig, "")}
        config = parameters.build(GrounderNodeConfig, values)
        config.validate()
        return config

    # ---- lifecycle ----------------------------------------------------------------------------
    def _transition(self, name: str, body) -> TransitionCallbackReturn:
        try:
            body()
            return TransitionCallbackReturn.SUCCESS
        except Exception as e:
            self._error = f"{name} failed: {e}"
            self.get_logger().error(self._error)
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", self._configure)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", self._activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("shutdown", self.close)

    def _configure(self) -> None:
        self._error = None
        self._config = self._read_config()
        name = self.get_parameter("grounder.backend").value
        if not self._declare_backend(name):
            raise RuntimeError(self._error)
        options = {spec.path[0]: self.get_parameter(spec.name).value for spec in backend_specs("grounder", name)}
        self._grounder = backends.make_grounder(name, options)
        self._backend = name
        self._start_timer()
        self._lifecycle = "inactive"
        self.get_logger().info(f"configured: grounder {name!r}")

    def _activate(self) -> None:
        if self._grounder is None:
            raise RuntimeError("not configured")
        self._config = self._read_config()
        self._server = ActionServer(self, Ground, ACTION, execute_callback=self._execute,
                                    goal_callback=self._on_goal, cancel_callback=lambda _g: CancelResponse.ACCEPT,
                                    callback_group=self._group)
        self._lifecycle = "active"
        self.get_logger().info(f"active: action {self.get_namespace().rstrip('/')}/{ACTION}")

    def _deactivate(self) -> None:
        if self._server is not None:
            self._server.destroy()
            self._server = None
        if self._lifecycle == "active":
            self._lifecycle = "inactive"

    def _cleanup(self) -> None:
        self._deactivate()
        if self._grounder is not None:
            with self._model_lock:
                grounder, self._grounder = self._grounder, None
                grounder.close()
        self._lifecycle = "unconfigured"

    def close(self) -> None:
        try:
            self._cleanup()
        finally:
            logging.getLogger("steerseg_ros").removeHandler(self._log_handler)

    # ---- requests -----------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[key] += n

    def _on_goal(self, goal) -> GoalResponse:
        if self._lifecycle != "active":
            self._count("refused_inactive")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _execute(self, goal_handle):
        """Decode, wait for the model, ground, answer. Errors go into the result's `error` (a goal
        rejection carries no text): the tracker node logs them."""
        t0 = time.perf_counter()
        request = goal_handle.request
        size = sum(len(k.data) for k in request.keyframes)
        self._count("requests")
        self._count("request_bytes", size)
        answer = Ground.Result()
        feedback = Ground.Feedback()

        def stage(name: str) -> None:
            feedback.stage, feedback.elapsed_s = name, float(time.perf_counter() - t0)
            goal_handle.publish_feedback(feedback)

        def fail(reason: str, message: str, model_unavailable: bool = False):
            self._count(f"failed.{reason}")
            self.get_logger().warning(f"request for {request.command[:80]!r} failed: {message}")
            answer.error, answer.model_unavailable = message, model_unavailable
            goal_handle.abort()
            return answer

        config = self._config
        if not request.keyframes:
            return fail("no_keyframes", "the request has no keyframes")
        if len(request.keyframes) > config.max_keyframes:
            return fail("too_many_keyframes", f"{len(request.keyframes)} keyframes, the limit is {config.max_keyframes}")
        if size > config.max_request_mb * 1e6:
            return fail("too_large", f"{size / 1e6:.1f} MB of keyframes, the limit is {config.max_request_mb} MB")
        stage("decoding")
        try:
            frames = [Frame(i, stamp_to_ns(k.header.stamp), compressed_to_rgb(k), k.header.frame_id)
                      for i, k in enumerate(request.keyframes)]
        except ImageConversionError as e:
            return fail("decode", f"a keyframe cannot be decoded: {e}")
        if self._model_lock.locked():
            stage("queued")
        with self._model_lock:
            if goal_handle.is_cancel_requested:
                self._count("cancelled")
                goal_handle.canceled()
                answer.error = "cancelled before it started"
                return answer
            if self._grounder is None:
                return fail("inactive", "the grounder node was cleaned up")
            stage("grounding")
            if config.delay_s > 0:
                time.sleep(config.delay_s)
            try:
                result = self._grounder.ground(frames, request.command)
                result.validate()
            except ModelUnavailableError as e:
                return fail("model", str(e), model_unavailable=True)
            except GroundingError as e:
                return fail("grounding", str(e))
            except Exception as e:  # a backend bug must not take the node down
                self.get_logger().error(f"grounding failed: {type(e).__name__}: {e}")
                return fail("internal", f"{type(e).__name__}: {e}")
        if goal_handle.is_cancel_requested:
            self._count("cancelled")
            goal_handle.canceled()
            answer.error = "cancelled"
            return answer
        answer = grounding_to_ground_result(result)
        goal_handle.succeed()
        seconds = time.perf_counter() - t0
        self._count("answered")
        self._last = {"last_seconds": f"{seconds:.3f}", "last_request_bytes": str(size),
                      "last_keyframes": str(len(frames))}
        return answer

    # ---- diagnostics ----------------------------------------------------------------------------
    def _start_timer(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self._config.stats_period_s > 0:
            self._timer = self.create_timer(self._config.stats_period_s, self._publish_diagnostics)

    def counters(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(self._counts)

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"{self.get_name()}: grounding", hardware_id=self.get_fully_qualified_name())
        counts = self.counters()
        if self._error is not None:
            status.level, status.message = DiagnosticStatus.ERROR, self._error
        else:
            status.level, status.message = DiagnosticStatus.OK, self._lifecycle
        values = {"lifecycle": self._lifecycle, "grounder": self._backend, **self._last,
                  **{k: str(v) for k, v in counts.items()}}
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


def main(args: Optional[list[str]] = None) -> int:
    """Run the grounder node until SIGINT or SIGTERM (both end it with exit code 0)."""
    rclpy.init(args=args)
    node = None
    # Several threads: a grounding blocks one while cancel requests and diagnostics go on.
    executor = MultiThreadedExecutor(num_threads=4)
    try:
        node = GrounderNode()
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
