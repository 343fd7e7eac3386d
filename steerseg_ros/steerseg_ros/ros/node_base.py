"""What the package's three lifecycle nodes (tracker, grounder, drawing) share.

Owns `NodeBase`: the bridge that forwards the core's Python logging to the node's logger, the
counters, the /diagnostics publisher (which exists in every lifecycle state, so a node stuck
unconfigured says why) and the stats timer that publishes it, and the set-parameters result
that says when a change takes effect (`waiting_reason`: live, or at the next activate or
configure, as the node's `_takes_effect` answers); and the camera options the tracker and
drawing nodes share (`validate_camera_options`, `input_qos`).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from steerseg_ros.ros.lifecycle import GuardedTransitions
from steerseg_ros.ros.messages import publish_status


# When a changed parameter takes effect (a node's _takes_effect), as a set result's reason says it.
WHEN_TEXT = {"live": "live", "activate": "at the next activate", "configure": "at the next configure",
             "start": "at start-up"}


def waiting_reason(names: list[str], takes_effect: Callable[[str], str]) -> str:
    """The set-parameters `reason` for a successful change of these parameters: empty when all
    apply live, else which of them wait and for what."""
    waiting = [(n, takes_effect(n)) for n in names if takes_effect(n) != "live"]
    return "; ".join(f"{n} takes effect {WHEN_TEXT[when]}" + ("" if when == "start" else " (set now, "
                     "not yet in use)") for n, when in waiting)


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


class RejectionLog:
    """Counts a rejected input as rejected.<reason> and logs it naming the input's topic (as
    remapped: a user reading the warning must see which of their topics is wrong), each reason at
    most once per stats period, with the count so far."""

    def __init__(self, count: Callable[[str], None], counts: collections.Counter, topic_of: Callable[[str], str],
                 period_s: Callable[[], float], logger):
        self._count, self._counts, self._topic_of = count, counts, topic_of
        self._period_s, self._logger = period_s, logger
        self._last_log: dict[str, float] = {}

    def __call__(self, reason: str, message: str) -> None:
        self._count(f"rejected.{reason}")
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e9) >= (self._period_s() or 5.0):
            self._last_log[reason] = now
            total = self._counts[f"rejected.{reason}"]
            self._logger.warning(f"rejected ({reason}) on {self._topic_of(reason)}: {message} [{total} so far]")


class RecentRejections:
    """Rejections and internal errors over the last `window` stats periods, for /diagnostics: a
    node says WARN while input was rejected within them (not for the rest of its life once
    anything was), and names the most frequent recent reasons (a count alone sends the user to
    the log)."""

    def __init__(self, window: int, top: int):
        self._totals: collections.deque[int] = collections.deque([0], maxlen=window + 1)
        self._by_reason: collections.deque[dict] = collections.deque([{}], maxlen=window + 1)
        self._top = top

    def update(self, counts: dict) -> tuple[int, str]:
        """Add this period's counters: (rejections within the window, the text naming them, "" when none)."""
        by_reason = {k[len("rejected."):]: v for k, v in counts.items() if k.startswith("rejected.")}
        if counts.get("internal_errors"):
            by_reason["internal_errors"] = counts["internal_errors"]
        self._totals.append(sum(by_reason.values()))
        self._by_reason.append(by_reason)
        recent = self._totals[-1] - self._totals[0]
        if not recent:
            return 0, ""
        oldest = self._by_reason[0]
        recent_by = sorted(((n - oldest.get(k, 0), k) for k, n in by_reason.items() if n > oldest.get(k, 0)),
                           key=lambda nk: (-nk[0], nk[1]))
        top = ", ".join(f"{k} {n}" for n, k in recent_by[:self._top])
        more = len(recent_by) - self._top
        return recent, (f"{recent} input(s) rejected or failed in the last {len(self._totals) - 1} stats "
                        f"period(s): {top}" + (f" and {more} more reason(s)" if more > 0 else ""))


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


class NodeBase(GuardedTransitions, LifecycleNode):
    """A lifecycle node of this package. A subclass provides the transition bodies (see
    lifecycle.GuardedTransitions), `DIAGNOSTICS_NAME` and `_status`, and starts the stats timer
    (`_start_stats_timer`) with its own period."""

    # What the node's status on /diagnostics is called ("<node name>: <this>").
    DIAGNOSTICS_NAME = "node"

    def __init__(self, node_name: str, **kwargs):
        super().__init__(node_name, **kwargs)
        self._log_handler = RosLogHandler.attach(self.get_logger())
        self._counts: collections.Counter = collections.Counter()
        self._counts_lock = threading.Lock()
        self._error: Optional[str] = None
        self._lifecycle = "unconfigured"
        self._stats_timer = None
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._waiting_logged: set[str] = set()  # parameters whose "takes effect at ..." was logged

    # ---- parameters -------------------------------------------------------------------------
    def _takes_effect(self, name: str) -> str:
        """When a change of parameter `name` takes effect: "live", "activate", "configure" (the
        next such transition) or "start" (a subclass says which of its parameters wait)."""
        return "live"

    def _set_parameters_atomically_common(self, parameter_list, descriptors=None, allow_not_set_type=False):
        """Every parameter change (set_parameters, the set_parameters services; not a
        declaration, which passes descriptors) goes through here. A change that waits for the
        next activate or configure succeeds with a `reason` saying so (`ros2 param set` prints
        it), logged once per parameter until the next activate: rclpy keeps an
        on-set-parameters callback's reason only on failure, so it is added here."""
        result = super()._set_parameters_atomically_common(parameter_list, descriptors, allow_not_set_type)
        if result.successful and descriptors is None:
            result.reason = waiting_reason([p.name for p in parameter_list], self._takes_effect)
            for p in parameter_list:
                text = waiting_reason([p.name], self._takes_effect)
                if text and p.name not in self._waiting_logged:
                    self._waiting_logged.add(p.name)
                    self.get_logger().info(f"parameter {text}")
        return result

    # ---- counters ---------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[key] += n

    def counters(self) -> dict[str, Any]:
        """The node's counters (a subclass adds those of what it owns)."""
        with self._counts_lock:
            return dict(self._counts)

    # ---- diagnostics ------------------------------------------------------------------------
    def _start_stats_timer(self, period_s: float) -> None:
        """(Re)start the stats timer: `_on_stats_timer` every `period_s` seconds; 0: never."""
        self._stop_stats_timer()
        if period_s > 0:
            self._stats_timer = self.create_timer(period_s, self._on_stats_timer)

    def _stop_stats_timer(self) -> None:
        if self._stats_timer is not None:
            self.destroy_timer(self._stats_timer)
            self._stats_timer = None

    def _on_stats_timer(self) -> None:
        self._publish_diagnostics()

    def _status(self, counts: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
        """The (level, message, values) to publish while the node has no error."""
        return DiagnosticStatus.OK, self._lifecycle, {"lifecycle": self._lifecycle, **counts}

    def _publish_diagnostics(self, counts: Optional[dict] = None) -> None:
        """Publish the node's status; ERROR with the reason while the last transition failed."""
        counts = self.counters() if counts is None else counts
        level, message, values = self._status(counts)
        if self._error is not None:
            level, message = DiagnosticStatus.ERROR, self._error
        publish_status(self, self._pub_diagnostics, self.DIAGNOSTICS_NAME, level, message, values)

    # ---- lifecycle --------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        """Release everything (at process exit, whatever the lifecycle state)."""
        try:
            self._cleanup()
        finally:
            self._log_handler.detach()

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("autostart").value)

    @property
    def lifecycle_state(self) -> str:
        return self._lifecycle

    @property
    def error(self) -> Optional[str]:
        """Why the last transition failed (None after a successful configure)."""
        return self._error
