"""Helpers for the tests that run the node over real DDS (not a test module).

Each test module gets its own random ROS_DOMAIN_ID with discovery kept on localhost and the
shipped Fast DDS profile (large shared-memory segment); the domain, the environment, the
parameters file and the node's process come from the fixture steerseg_testing.node_process,
which the benchmarks' node sections use too. The test process itself joins as a third
participant through `Recorder`, in its own rclpy context.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from steerseg_ros.tools.play import to_node_inputs  # noqa: F401 (the tests' players use it too)
from steerseg_testing.node_process import (NODE_NAME, Process, random_domain_id, ros_env,  # noqa: F401
                                               write_params)

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "steerseg_ros"
# The state each lifecycle transition leads to when it succeeds.
TRANSITION_GOALS = {"configure": "inactive", "activate": "active", "deactivate": "inactive",
                    "cleanup": "unconfigured", "shutdown": "finalized"}
TRANSITION_STARTS = {"configure": "unconfigured", "activate": "inactive", "deactivate": "active",
                     "cleanup": "inactive"}


def node_command() -> list[str]:
    """The installed node launcher (what `ros2 run steerseg_ros steerseg_node` runs)."""
    from ament_index_python.packages import get_package_prefix

    return [str(Path(get_package_prefix("steerseg_ros")) / "lib" / "steerseg_ros" / "steerseg_node")]


def start_node(env: dict, tmp_path: Path, params: dict, extra_args: tuple[str, ...] = ()) -> Process:
    """The node as its own process with the shipped defaults, then `params` on top."""
    override = write_params(tmp_path / "node_params.yaml", params)
    args = [*node_command(), "--ros-args", "--params-file", str(PKG / "config" / "steerseg.yaml"),
            "--params-file", str(override), *extra_args]
    return Process(args, env, tmp_path / "node.log")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Recorder:
    """The test's own participant: records masks, tracks and diagnostics, sends commands and
    images, and drives the node's lifecycle through its services."""

    def __init__(self, domain_id: int):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image

        from steerseg_msgs.msg import TrackArray

        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(PKG / "config" / "fastdds_shm.xml"))
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("steerseg_test_recorder", context=self.context)
        self.lock = threading.Lock()
        self.masks: dict[int, np.ndarray] = {}
        self.mask_order: list[int] = []
        self.tracks: list = []
        self.diagnostics: list = []
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Image, "mask", self._on_mask, reliable)
        self.node.create_subscription(TrackArray, "tracks", self._on_tracks, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spin_error = ""
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass
        except Exception as e:  # a test's callback failed: say so, or the test only sees silence
            import traceback

            self.spin_error = "".join(traceback.format_exception(e))
            print(f"the recorder stopped spinning: {self.spin_error}", flush=True)

    def _on_mask(self, msg) -> None:
        from steerseg_ros.ros.image_conversion import image_to_array
        from steerseg_ros.ros.messages import stamp_to_ns

        stamp = stamp_to_ns(msg.header.stamp)
        label = np.array(image_to_array(msg))
        with self.lock:
            self.masks[stamp] = label
            self.mask_order.append(stamp)

    def _on_tracks(self, msg) -> None:
        with self.lock:
            self.tracks.append(msg)

    def _on_diagnostics(self, msg) -> None:
        with self.lock:
            self.diagnostics.extend(s for s in msg.status if s.name.startswith(f"{NODE_NAME}:"))

    def counters(self) -> dict[str, str]:
        """The key-values of the node's newest diagnostics status."""
        with self.lock:
            if not self.diagnostics:
                return {}
            return {kv.key: kv.value for kv in self.diagnostics[-1].values}

    def level(self) -> Optional[int]:
        """The level of the node's newest diagnostics status (DiagnosticStatus.OK, WARN, ...)."""
        with self.lock:
            return self.diagnostics[-1].level if self.diagnostics else None

    def node_error(self) -> str:
        """The node's error on /diagnostics (e.g. a backend that failed to load), or ""."""
        from diagnostic_msgs.msg import DiagnosticStatus

        with self.lock:
            if self.diagnostics and self.diagnostics[-1].level == DiagnosticStatus.ERROR:
                return self.diagnostics[-1].message
        return ""

    def publisher(self, msg_type, topic: str, reliable: bool = True):
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE) if reliable else qos_profile_sensor_data
        return self.node.create_publisher(msg_type, topic, qos)

    def change_state(self, transition: str, timeout: float = 30.0) -> bool:
        """Ask the node for a lifecycle transition ("configure", "activate", ...), as a
        lifecycle manager or launch does. Fast DDS can lose a request sent just after the
        service was discovered (its request reader not matched yet) and a response likewise
        ("failed to send response (timeout)", seen in CI): when no answer comes within a few
        seconds the node's state says what happened, and the request is sent again while the
        node is still in the state the transition starts from (a lost request: a soak pass
        beside a busy core waited out 60 s on one, the node never having heard it)."""
        from lifecycle_msgs.srv import ChangeState

        goal = TRANSITION_GOALS.get(transition)
        start = TRANSITION_STARTS.get(transition)
        deadline = time.monotonic() + timeout
        client = self.node.create_client(ChangeState, f"/{NODE_NAME}/change_state")
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                return False
            future = None
            while True:
                if future is None:
                    request = ChangeState.Request()
                    request.transition.label = transition
                    future = client.call_async(request)
                    done = threading.Event()
                    future.add_done_callback(lambda _f, d=done: d.set())
                left = deadline - time.monotonic()
                if done.wait(max(0.1, min(10.0, left))):
                    return bool(future.result().success) or self.state(timeout=15.0) == goal
                current = self.state(timeout=15.0)
                if current == goal:
                    return True
                if time.monotonic() >= deadline:
                    return False
                if current == start:
                    future = None  # never heard: ask again (a transition under way is waited for)
        finally:
            self.node.destroy_client(client)

    def state(self, timeout: float = 15.0) -> Optional[str]:
        """The node's lifecycle state label ("unconfigured", "inactive", "active", ...), or None."""
        from lifecycle_msgs.srv import GetState

        client = self.node.create_client(GetState, f"/{NODE_NAME}/get_state")
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not client.wait_for_service(timeout_sec=max(0.1, deadline - time.monotonic())):
                    return None
                future = client.call_async(GetState.Request())
                done = threading.Event()
                future.add_done_callback(lambda _f: done.set())
                if done.wait(min(3.0, max(0.1, deadline - time.monotonic()))):
                    return future.result().current_state.label
            return None
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


def play_through_node(tmp_path: Path, domain: int, recorder: "Recorder", node_params: dict, frames: Path,
                      play_args: list[str], rate: float, configure_timeout: float = 60.0,
                      until: Optional[Callable[[], bool]] = None, until_timeout: float = 60.0,
                      play_timeout: float = 180.0, hold_while_grounding: bool = False,
                      node_env: Optional[dict] = None):
    """Start the node with `node_params`, configure and activate it through its lifecycle
    services (as launch or a lifecycle manager does), play `frames` with `steerseg-play
    --lockstep` (each frame once the previous one's mask came back, at most at `rate`: every
    frame is processed however slow or busy the machine; with `hold_while_grounding` also each
    grounding starts and ends on the same frames, and `node_params` should then set a short
    stats_period_s, since the player learns that from /diagnostics), wait for the last frame's
    mask (and for `until`, when given), then stop the node.
    Returns (manifest: index, name, stamp_ns per published frame; the node's log; its last
    /diagnostics counters). `node_env`: variables the node's process gets on top.
    Frames go out reliable, to a reliable subscription (unless `node_params` or `play_args` say
    otherwise): in lockstep one frame is in flight at a time, and a best-effort frame lost while
    discovery is still matching the two ends (the first, on a busy machine) would leave the player
    waiting out --answer-timeout and the frame without a mask."""
    import json

    env = ros_env(domain)
    node_params = {"image_qos": "reliable", **node_params}
    if "--qos" not in play_args:
        play_args = ["--qos", "reliable", *play_args]
    node = start_node({**env, **(node_env or {})}, tmp_path, node_params)
    try:
        assert recorder.change_state("configure", timeout=configure_timeout), \
            f"configure failed:\n{node.text()[-3000:]}"
        assert recorder.change_state("activate", timeout=30.0), f"activate failed:\n{node.text()[-3000:]}"
        manifest_path = tmp_path / "manifest.jsonl"
        play = Process(["steerseg-play", "--frames", str(frames), "--rate", str(rate),
                        "--manifest", str(manifest_path), "--wait-subscribers", "20", "--lockstep",
                        *(["--hold-while-grounding"] if hold_while_grounding else []), *play_args,
                        *to_node_inputs()],
                       env, tmp_path / "play.log")
        try:
            assert play.wait(play_timeout) == 0, f"steerseg-play failed:\n{play.text()[-3000:]}"
        finally:
            play.stop()
        manifest = [json.loads(line) for line in manifest_path.read_text().splitlines()]
        assert manifest, "steerseg-play published nothing"
        last = manifest[-1]["stamp_ns"]
        assert wait_until(lambda: last in recorder.masks, 60.0), f"no mask for the last frame {recorder.spin_error}"
        if until is not None:
            assert wait_until(until, until_timeout), f"{recorder.counters()}\n{node.text()[-3000:]}"
        counters = recorder.counters()
    finally:
        assert node.stop() == 0, f"the node did not exit cleanly:\n{node.text()[-3000:]}"
    return manifest, node.text(), counters


def score_played(recorder: "Recorder", manifest: list, names: list, gts: list):
    """J&F over every played frame (steerseg-play's manifest) against the ground truth by frame
    name; a frame without a mask counts as an empty prediction."""
    from steerseg_ros.offline import metrics

    by_name = dict(zip(names, gts))
    preds, truth = [], []
    for entry in manifest:
        label = recorder.masks.get(entry["stamp_ns"])
        truth.append(by_name[entry["name"]])
        preds.append(label > 0 if label is not None else np.zeros_like(truth[-1]))
    return metrics.score_object("seq", 1, preds, truth)


def check_missing_weights(tmp_path: Path, domain: int, recorder: "Recorder", kind: str, missing: dict,
                          model: str) -> str:
    """A `kind` ("grounder" or "tracker") backend whose weights are not on the machine: configure
    fails, the node stays up and names `model` on /diagnostics; with fallback_to_builtin the
    node configures on the built-in backend instead. Returns the error the node reported."""
    node = start_node(ros_env(domain), tmp_path, {"stats_period_s": 0.5, kind: missing})
    try:
        assert not recorder.change_state("configure", timeout=60.0)
        assert wait_until(lambda: model in recorder.node_error(), 60.0), \
            f"no error on /diagnostics:\n{node.text()[-3000:]}"
        error = recorder.node_error()
        assert node.popen.poll() is None, "the node exited"
    finally:
        assert node.stop() == 0, f"the node did not exit cleanly:\n{node.text()[-3000:]}"
    second = tmp_path / "fallback"
    second.mkdir()
    fallback = start_node(ros_env(domain), second,
                          {"stats_period_s": 0.5, kind: {**missing, "fallback_to_builtin": True}})
    try:
        assert recorder.change_state("configure", timeout=60.0), f"configure failed:\n{fallback.text()[-3000:]}"
        expected = f"builtin (fallback from {missing['backend']})"
        assert wait_until(lambda: recorder.counters().get(kind) == expected, 60.0), recorder.counters()
    finally:
        assert fallback.stop() == 0
    return error
