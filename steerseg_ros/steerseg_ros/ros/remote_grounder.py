"""A grounder in another process or on another machine, reached over the `Ground` action.

Owns `RemoteGrounder`: to the pipeline it is one more `Grounder` (backend name "remote"); each
`ground()` sends the keyframes (JPEG or PNG) and the command to a grounder node
(steerseg_ros.ros.grounder_node) and turns its answer back into a `GroundingResult` on the
tracker's own keyframes. A grounding that runs past `timeout_s` is cancelled and tried again
`retries` times; a grounder node that is not there fails fast (`server_wait_s`), so tracking goes
on and the pipeline tries again on its retry schedule, resuming by itself once the grounder node
is back. Its counters (requests, bytes, latency, timeouts, outages) go on the tracker node's
/diagnostics.

The client lives on its own small node with its own executor thread: `ground()` runs in the
pipeline's grounding thread and blocks there, while the tracker node's executor goes on serving
camera frames.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from steerseg_ros.frame import Frame
from steerseg_ros.config_checks import check_finite
from steerseg_ros.grounding.base import Grounder, GroundingError, GroundingResult, ModelUnavailableError

log = logging.getLogger("steerseg_ros.remote_grounder")


@dataclass
class RemoteGrounderConfig:
    """How the tracker node reaches its grounder node (each field's help text is in its metadata)."""

    action: str = field(default="ground", metadata={"help": (
        "Name of the grounder node's Ground action; relative names resolve in `namespace`.")})
    namespace: str = field(default="", metadata={"help": (
        "Namespace the action name resolves in; empty: the tracker node's own.")})
    timeout_s: float = field(default=30.0, metadata={"help": (
        "A grounding that has not answered after this many seconds is cancelled and tried again.")})
    retries: int = field(default=1, metadata={"help": (
        "How many times a timed-out grounding is sent again before the attempt counts as failed.")})
    server_wait_s: float = field(default=2.0, metadata={"help": (
        "How long one grounding waits for the grounder node to be there; past it the grounding "
        "fails at once (logged and shown on /diagnostics) and tracking goes on.")})
    image_format: str = field(default="jpeg", metadata={"help": "Keyframes are sent as jpeg or png."})
    jpeg_quality: int = field(default=90, metadata={"help": "JPEG quality of the keyframes sent (1-100)."})

    def validate(self) -> None:
        check_finite(self)
        if not self.action.strip():
            raise ValueError("action must not be empty")
        for name in ("timeout_s", "server_wait_s"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not 0 <= self.retries <= 10:
            raise ValueError(f"retries must be in 0..10, got {self.retries}")
        if self.image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be jpeg or png, got {self.image_format!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


def _wait(future, timeout: float) -> bool:
    """Wait for an rclpy future from a thread that is not the executor's."""
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    return done.wait(timeout)


class RemoteGrounder(Grounder):
    name = "remote"

    def __init__(self, config: Optional[RemoteGrounderConfig] = None):
        import rclpy
        from rclpy.action import ActionClient
        from rclpy.executors import SingleThreadedExecutor

        from steerseg_msgs.action import Ground

        self.config = config or RemoteGrounderConfig()
        self.config.validate()
        # Offline tools (steerseg-eval) have no ROS main of their own to init the context.
        self._owns_context = not rclpy.ok()
        if self._owns_context:
            rclpy.init()
        # Without the process's global arguments: launch renames "every node in the process"
        # (__node:=steerseg), which would give this helper node the tracker node's name.
        self._node = rclpy.create_node("steerseg_grounding_client", namespace=self.config.namespace or "/",
                                       use_global_arguments=False)
        self._client = ActionClient(self._node, Ground, self.config.action)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self._node)
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "answers": 0, "failures": 0, "timeouts": 0, "outages": 0}
        self._available: Optional[bool] = None
        self._last: dict[str, Any] = {"request_bytes": 0, "latency_s": float("nan"), "error": ""}
        self._thread = threading.Thread(target=self._spin, name="steerseg-grounding-client", daemon=True)
        self._thread.start()
        # A node that exits while a grounding waits here does not close its grounder (it would
        # close it under the waiting thread): stop spinning when the context goes down instead,
        # or the process aborts at exit with this thread inside rcl's wait.
        rclpy.get_default_context().on_shutdown(self._stop_spinning)
        log.info("grounding on the grounder node's action %s", self.action_name)

    @property
    def action_name(self) -> str:
        name = self.config.action
        if name.startswith("/"):
            return name
        ns = (self.config.namespace or "/").rstrip("/")
        return f"{ns}/{name}"

    def _stop_spinning(self) -> None:
        try:
            self._executor.shutdown(timeout_sec=2.0)
        except Exception:  # already shut down
            pass
        self._thread.join(timeout=2.0)

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self._executor.spin()
        except (ExternalShutdownException, Exception):  # the context went down first
            pass

    # ---- grounding ----------------------------------------------------------------------------
    def ground(self, keyframes: Sequence[Frame], command: str) -> GroundingResult:
        from steerseg_msgs.action import Ground
        from steerseg_ros.ros.messages import ground_result_to_grounding, header_at
        from steerseg_ros.ros.image_conversion import rgb_to_compressed

        goal = Ground.Goal(command=command)
        goal.keyframes = [rgb_to_compressed(f.image, self.config.image_format, header_at(f.stamp_ns, f.frame_id),
                                            jpeg_quality=self.config.jpeg_quality) for f in keyframes]
        size = sum(len(k.data) for k in goal.keyframes)
        with self._lock:
            self._counts["requests"] += 1
            self._last["request_bytes"] = size
        t0 = time.perf_counter()
        try:
            result = self._send(goal)
        except GroundingError as e:
            with self._lock:
                self._counts["failures"] += 1
                self._last["error"] = str(e)
            raise
        latency = time.perf_counter() - t0
        with self._lock:
            self._counts["answers"] += 1
            self._last.update(latency_s=latency, error=result.error)
        if result.error:
            with self._lock:
                self._counts["failures"] += 1
            error = ModelUnavailableError if result.model_unavailable else GroundingError
            raise error(f"the grounder node: {result.error}")
        grounding = ground_result_to_grounding(result, list(keyframes))
        grounding.timings["request_s"] = latency
        grounding.timings["request_mb"] = size / 1e6
        return grounding

    def _send(self, goal):
        """The Ground result, after up to 1 + retries tries; GroundingError when the grounder node
        is not there, refuses, or never answers in time."""
        tries = 1 + self.config.retries
        for attempt in range(1, tries + 1):
            if not self._client.wait_for_server(timeout_sec=self.config.server_wait_s):
                self._set_available(False)
                raise GroundingError(f"no grounder node answers on {self.action_name} (is steerseg_grounder "
                                     f"running and reachable?); tracking goes on, grounding retries later")
            self._set_available(True)
            sent = self._client.send_goal_async(goal)
            if not _wait(sent, self.config.server_wait_s + self.config.timeout_s):
                raise GroundingError(f"the grounder node on {self.action_name} did not take the request")
            handle = sent.result()
            if handle is None or not handle.accepted:
                raise GroundingError(f"the grounder node on {self.action_name} refused the request (not active?)")
            answer = handle.get_result_async()
            if _wait(answer, self.config.timeout_s):
                response = answer.result()
                if response is None:
                    raise GroundingError("the grounder node's answer was lost")
                return response.result
            with self._lock:
                self._counts["timeouts"] += 1
            log.warning("grounding took longer than %.1f s: cancelled (try %d of %d)",
                        self.config.timeout_s, attempt, tries)
            _wait(handle.cancel_goal_async(), self.config.server_wait_s)
        raise GroundingError(f"the grounder node did not answer within {self.config.timeout_s:.1f} s, {tries} times")

    def _set_available(self, available: bool) -> None:
        with self._lock:
            was, self._available = self._available, available
            if not available and was is not False:
                self._counts["outages"] += 1
        if was is not False and not available:
            log.error("the grounder node on %s is not reachable: tracking goes on without re-grounding",
                      self.action_name)
        elif was is False and available:
            log.info("the grounder node on %s is back", self.action_name)

    # ---- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Counters and the state of the link, for /diagnostics."""
        with self._lock:
            out: dict[str, Any] = {f"remote.{k}": v for k, v in self._counts.items()}
            out["remote.available"] = "unknown" if self._available is None else str(self._available).lower()
            out["remote.last_request_bytes"] = self._last["request_bytes"]
            out["remote.last_latency_s"] = round(float(self._last["latency_s"]), 3)
            if self._last["error"]:
                out["remote.last_error"] = self._last["error"]
        return out

    def close(self) -> None:
        import rclpy

        self._executor.shutdown(timeout_sec=2.0)
        self._client.destroy()
        self._node.destroy_node()
        self._thread.join(timeout=5.0)
        if self._owns_context:
            rclpy.try_shutdown()
