"""The node as its own process for the node sections: `NodeRun` starts it (and a grounder node
when asked) on a private ROS domain and records what it publishes; `Camera` feeds it frames at
a fixed rate; `frame_accounting` and `tiny_model_params` are what the sections read and set.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from steerseg_testing.node_process import Process, random_domain_id, ros_env, write_params


class NodeRun:
    """The node as its own process on a private ROS domain, plus this process as camera and
    recorder. Stops the node with SIGINT."""

    def __init__(self, args: argparse.Namespace, params: dict[str, Any], tag: str = "bench",
                 grounder_node: bool = False):
        self.domain = random_domain_id()
        env = ros_env(self.domain)
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        node_params = {"autostart": True, "image_qos": "reliable", "stats_period_s": 1.0,
                       "grounder.backend": args.grounder, "tracker.backend": args.tracker, **params}
        # With a grounder node, the grounder's settings are its; the tracker node grounds through it.
        grounder_params = {k: v for k, v in node_params.items() if k.startswith("grounder.")}
        if grounder_node:
            node_params = {**{k: v for k, v in node_params.items() if k not in grounder_params},
                           "grounder.backend": "remote"}
        self.log_path = self.workdir / f"{tag}_node_{self.domain}.log"
        params_file = write_params(self.workdir / f"{tag}_params_{self.domain}.yaml", node_params, "steerseg")
        self._node = Process([sys.executable, "-m", "steerseg_ros.ros.tracker_node", "--ros-args",
                              "--params-file", str(params_file)], env, self.log_path)
        self.process = self._node.popen
        self._grounder = None
        if grounder_node:
            grounder_file = write_params(self.workdir / f"bench_grounder_params_{self.domain}.yaml",
                                         {"autostart": True, **grounder_params}, "steerseg_grounder")
            self._grounder = Process([sys.executable, "-m", "steerseg_ros.ros.grounder_node", "--ros-args",
                                      "--params-file", str(grounder_file)], env,
                                     self.workdir / f"bench_grounder_{self.domain}.log")
        self._join()

    def _join(self) -> None:
        """This process's participant: the camera and command publishers, the recorders."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from steerseg_msgs.msg import TrackArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("steerseg_bench", context=self.context)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.images = self.node.create_publisher(Image, "image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.commands = self.node.create_publisher(String, "command", reliable)
        self.lock = threading.Lock()
        self.arrivals: list[tuple[float, int, list[int]]] = []  # (time, stamp, track states)
        self.node.create_subscription(TrackArray, "tracks", self._on_tracks, reliable)
        self.diagnostics: dict[str, str] = {}  # the node's newest /diagnostics values
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:
            pass

    def _on_tracks(self, msg) -> None:
        from steerseg_ros.ros.messages import stamp_to_ns

        with self.lock:
            self.arrivals.append((time.monotonic(), stamp_to_ns(msg.header.stamp), [t.state for t in msg.tracks]))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.hardware_id.endswith("/steerseg"):
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}

    def wait_up(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.images.get_subscription_count() == 0 or self.commands.get_subscription_count() == 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not come up; see {self.log_path}")
            time.sleep(0.05)

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def resources(self) -> tuple[float, int, int]:
        """The node process's resident memory (MB), threads and open file descriptors."""
        import psutil

        process = psutil.Process(self.process.pid)
        return process.memory_info().rss / 2**20, process.num_threads(), process.num_fds()

    def close(self) -> None:
        for process in (self._node, self._grounder):
            if process is not None:
                process.stop(timeout=20.0)
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()


class Camera:
    """Publishes a sequence back and forth (so motion stays smooth) at a fixed rate, with
    increasing stamps, from a thread."""

    def __init__(self, run: NodeRun, images: list[np.ndarray], rate: float):
        from steerseg_ros.ros.image_conversion import rgb_to_image
        from steerseg_ros.ros.messages import header_at

        self.run = run
        self.rate = rate
        order = list(range(len(images))) + list(range(len(images) - 2, 0, -1))
        self._msgs = [rgb_to_image(images[i], "bgr8") for i in order]
        self._header_at = header_at
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "Camera":
        self._thread.start()
        return self

    def _loop(self) -> None:
        t0 = time.monotonic()
        period_ns = int(1e9 / self.rate)
        while not self._stop.is_set():
            delay = t0 + self.sent / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            msg = self._msgs[self.sent % len(self._msgs)]
            msg.header = self._header_at(10**12 + self.sent * period_ns, "camera")
            self.run.images.publish(msg)
            self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def frame_accounting(counters: dict[str, Any]) -> dict[str, int]:
    """The node's frame counters from /diagnostics: every received frame is processed, dropped
    (replaced in the one-slot mailbox by a newer one before it was taken) or rejected
    (`rejected.image.*`); `unaccounted` is what none of them explains (frames in flight while
    the camera runs, 0 once it has stopped and the node has caught up)."""
    def count(key: str) -> int:
        return int(counters.get(key, 0))

    received, processed, dropped = count("frames_received"), count("frames_processed"), count("frames_dropped")
    rejected = sum(int(v) for k, v in counters.items() if k.startswith("rejected.image."))
    return {"received": received, "processed": processed, "dropped": dropped, "rejected": rejected,
            "internal_errors": count("internal_errors"),
            "unaccounted": received - processed - dropped - rejected}


def tiny_model_params(folder: Path) -> dict[str, Any]:
    """Node parameters for the tiny random SAM2 + Qwen2.5-VL backends (written to `folder` by the
    same builders as steerseg-tiny-models, once), with a token budget and keyframe count small
    enough that a CPU grounds in a second or two. The VLM's weights are drawn with std 0.3: at
    the usual 0.02 its attention is uniform, every map is flat, no grounding finds a target and
    SAM2 would never track (the soak must run the tracking path too)."""
    from steerseg_testing.tiny_vlm import build_tiny_checkpoint
    from steerseg_testing.tiny_sam2 import save_random_sam2, tiny_config

    vlm, sam2 = folder / "qwen2_5_vl_init0.3", folder / "sam2"
    if not (vlm / "config.json").is_file():
        build_tiny_checkpoint(vlm, "qwen2_5_vl", initializer_range=0.3)
    if not (sam2 / "config.json").is_file():
        save_random_sam2(sam2, tiny_config(128))
    return {"grounder.backend": "decaf", "grounder.model": str(vlm), "grounder.video_tokens_per_pair": 24,
            "grounder.cot_tokens": 6, "grounder.answer_tokens": 6, "tracker.backend": "sam2", "tracker.model": str(sam2),
            "tracker.device": "cpu", "pipeline.keyframes.count": 4}


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("node sections (the node as its own process)")
    group.add_argument("--grounder", default="builtin", help="grounder backend of the node sections")
    group.add_argument("--tracker", default="builtin", help="tracker backend of the node sections")
    group.add_argument("--camera-rate", type=float, default=30.0, help="frames per second fed to the node")
    group.add_argument("--regrounding-period", type=float, default=2.0,
                       help="seconds between re-groundings in the node-process sections")
    group.add_argument("--workdir", default="out/bench", help="logs and parameter files of the node runs")
