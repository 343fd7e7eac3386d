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

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter

from steerseg_ros.streaming import backends
from steerseg_msgs.action import Ground
from steerseg_ros.frame import Frame
from steerseg_ros.config_checks import check_finite
from steerseg_ros.grounding.base import GroundingError, ModelUnavailableError
from steerseg_ros.ros import main_loop, parameters
from steerseg_ros.ros.image_conversion import ImageConversionError, compressed_to_rgb
from steerseg_ros.ros.messages import grounding_to_ground_result, stamp_to_ns
from steerseg_ros.ros.node_base import NodeBase
from steerseg_ros.ros.node_config import backend_options, backend_specs, declare, read_config

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
    nice: int = field(default=10, metadata={"help": (
        "Scheduling niceness (0-19) this process takes at configure, for all its threads: on a "
        "machine it shares with the tracker node, the tracker gets the cores first and masks keep "
        "their rate while a grounding runs (the grounding takes longer instead). 0 on a machine of "
        "its own. It only ever goes up (lowering it needs privileges).")})

    def validate(self) -> None:
        check_finite(self)
        if not 0 <= self.nice <= 19:
            raise ValueError(f"nice must be in [0, 19], got {self.nice}")
        if self.max_keyframes < 1:
            raise ValueError(f"max_keyframes must be >= 1, got {self.max_keyframes}")
        for name in ("max_request_mb", "delay_s", "stats_period_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_request_mb <= 0:
            raise ValueError(f"max_request_mb must be > 0, got {self.max_request_mb}")


def lower_priority(nice: int) -> int:
    """Give every thread of this process at least niceness `nice`; returns the niceness now.

    On Linux a niceness belongs to a thread, not to the process (os.nice and setpriority change
    the calling thread only), and a new thread inherits its creator's. So the threads that exist
    (DDS, executor) are set one by one from /proc/self/task, and those made later (the executor's
    workers, torch's and OpenCV's pools) inherit it from them. Elsewhere only the calling thread
    changes."""
    if nice <= 0:
        return os.getpriority(os.PRIO_PROCESS, 0)
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:  # the thread ended meanwhile
            pass
    return os.getpriority(os.PRIO_PROCESS, 0)


def grounder_backends() -> list[str]:
    """The backends a grounder node can run: every grounder but the one that calls a grounder node."""
    return sorted(name for name in backends.GROUNDERS if name != "remote")


def static_specs() -> list[parameters.ParamSpec]:
    """The grounder node's own parameters and the backend choice."""
    return parameters.specs(GrounderNodeConfig, "") + [parameters.ParamSpec(
        "grounder.backend", ("backend",), Parameter.Type.STRING.value, "builtin",
        f"The grounding backend, one of {grounder_backends()}. Takes effect at the next configure.")]


def write_default_params(path: str, grounder: str = "builtin") -> None:
    """Write the grounder node's parameters file with every default (config/grounder.yaml)."""
    header = (
        "Parameters of the grounder node, every one at its default (generated by\n"
        "steerseg_ros.ros.grounder_node.write_default_params; test_grounder_node checks that it still\n"
        "matches). A model backend adds its options under grounder.* (see config/steerseg.yaml for the\n"
        "same options of the single-node setup).")
    with open(path, "w") as f:
        f.write(parameters.render_yaml(f"/**/{NODE_NAME}", static_specs() + backend_specs("grounder", grounder),
                                       header))


class _Failed(Exception):
    """Ends a request with `message` in its result's `error` (a goal rejection carries no text),
    counted as failed.<reason>."""

    def __init__(self, reason: str, message: str, model_unavailable: bool = False):
        super().__init__(message)
        self.reason, self.message, self.model_unavailable = reason, message, model_unavailable


class _Cancelled(Exception):
    """Ends a request its client cancelled, `str()` saying when."""


class GrounderNode(NodeBase):
    DIAGNOSTICS_NAME = "grounding"

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self._model_lock = threading.Lock()
        self._grounder = None
        self._backend = ""
        self._server: Optional[ActionServer] = None
        self._last: dict[str, Any] = {}
        self._niceness = os.getpriority(os.PRIO_PROCESS, 0)
        self._group = ReentrantCallbackGroup()

        for spec in static_specs():
            declare(self, spec)
        self._declare_backend(self.get_parameter("grounder.backend").value)
        self._config: GrounderNodeConfig = read_config(self, GrounderNodeConfig)
        self._start_stats_timer(self._config.stats_period_s)

    # ---- parameters -------------------------------------------------------------------------
    def _takes_effect(self, name: str) -> str:
        """The backend, its options, the niceness and the stats timer are set up at configure,
        the request limits read at activate: a change says so in its set result (NodeBase)."""
        if name == "autostart":
            return "start"
        if name.startswith("grounder.") or name in ("nice", "stats_period_s"):
            return "configure"
        return "activate"

    def _declare_backend(self, name: str) -> bool:
        try:
            if name not in grounder_backends():
                raise ValueError(f"unknown grounder backend {name!r}; choose one of {grounder_backends()}")
            for spec in backend_specs("grounder", name):
                declare(self, spec)
            return True
        except Exception as e:
            self._error = f"cannot use grounder backend {name!r}: {e}"
            self.get_logger().error(self._error)
            return False

    # ---- lifecycle (transitions guarded by lifecycle.GuardedTransitions) ----------------------
    def _configure(self) -> None:
        self._error = None
        self._config = read_config(self, GrounderNodeConfig)
        name = self.get_parameter("grounder.backend").value
        if not self._declare_backend(name):
            raise RuntimeError(self._error)
        options = backend_options(self, "grounder", name)
        niceness = lower_priority(self._config.nice)
        self._grounder = backends.make_grounder(name, options)
        self._backend = name
        self._niceness = niceness
        self._start_stats_timer(self._config.stats_period_s)
        self._lifecycle = "inactive"
        self.get_logger().info(f"configured: grounder {name!r}")

    def _activate(self) -> None:
        if self._grounder is None:
            raise RuntimeError("not configured")
        self._config = read_config(self, GrounderNodeConfig)
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

    # ---- requests -----------------------------------------------------------------------------
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
        feedback = Ground.Feedback()

        def stage(name: str) -> None:
            feedback.stage, feedback.elapsed_s = name, float(time.perf_counter() - t0)
            goal_handle.publish_feedback(feedback)

        config = self._config
        try:
            frames = self._decode(request, size, config, stage)
            result = self._ground(goal_handle, frames, config, stage)
        except _Cancelled as e:
            self._count("cancelled")
            goal_handle.canceled()
            return Ground.Result(error=str(e))
        except _Failed as e:
            self._count(f"failed.{e.reason}")
            self.get_logger().warning(f"request for {request.command[:80]!r} failed: {e.message}")
            goal_handle.abort()
            return Ground.Result(error=e.message, model_unavailable=e.model_unavailable)
        answer = grounding_to_ground_result(result)
        goal_handle.succeed()
        seconds = time.perf_counter() - t0
        self._count("answered")
        self._last = {"last_seconds": f"{seconds:.3f}", "last_request_bytes": str(size),
                      "last_keyframes": str(len(frames))}
        return answer

    def _decode(self, request, size: int, config: GrounderNodeConfig, stage) -> list[Frame]:
        """The request's keyframes as frames, within the configured limits (else _Failed)."""
        if not request.keyframes:
            raise _Failed("no_keyframes", "the request has no keyframes")
        if len(request.keyframes) > config.max_keyframes:
            raise _Failed("too_many_keyframes",
                          f"{len(request.keyframes)} keyframes, the limit is {config.max_keyframes}")
        if size > config.max_request_mb * 1e6:
            raise _Failed("too_large", f"{size / 1e6:.1f} MB of keyframes, the limit is {config.max_request_mb} MB")
        stage("decoding")
        try:
            return [Frame(i, stamp_to_ns(k.header.stamp), compressed_to_rgb(k), k.header.frame_id)
                    for i, k in enumerate(request.keyframes)]
        except ImageConversionError as e:
            raise _Failed("decode", f"a keyframe cannot be decoded: {e}") from e

    def _ground(self, goal_handle, frames: list[Frame], config: GrounderNodeConfig, stage):
        """The validated grounding of `frames`, once the model is free (one grounding at a time);
        _Cancelled when the client cancelled meanwhile, _Failed when it cannot be had."""
        if self._model_lock.locked():
            stage("queued")
        with self._model_lock:
            if goal_handle.is_cancel_requested:
                raise _Cancelled("cancelled before it started")
            if self._grounder is None:
                raise _Failed("inactive", "the grounder node was cleaned up")
            stage("grounding")
            if config.delay_s > 0:
                time.sleep(config.delay_s)
            try:
                result = self._grounder.ground(frames, goal_handle.request.command)
                result.validate()
            except ModelUnavailableError as e:
                raise _Failed("model", str(e), model_unavailable=True) from e
            except GroundingError as e:
                raise _Failed("grounding", str(e)) from e
            except Exception as e:  # a backend bug must not take the node down
                self.get_logger().error(f"grounding failed: {type(e).__name__}: {e}")
                raise _Failed("internal", f"{type(e).__name__}: {e}") from e
        if goal_handle.is_cancel_requested:
            raise _Cancelled("cancelled")
        return result

    # ---- diagnostics ----------------------------------------------------------------------------
    def _status(self, counts: dict) -> tuple[int, str, dict]:
        values = {"lifecycle": self._lifecycle, "grounder": self._backend, "niceness": self._niceness, **self._last,
                  **counts}
        return DiagnosticStatus.OK, self._lifecycle, values


def main(args: Optional[list[str]] = None) -> int:
    """Run the grounder node until SIGINT or SIGTERM (both end it with exit code 0)."""
    # Several threads: a grounding blocks one while cancel requests and diagnostics go on.
    return main_loop.run(GrounderNode, lambda: MultiThreadedExecutor(num_threads=4), args)


if __name__ == "__main__":
    raise SystemExit(main())
