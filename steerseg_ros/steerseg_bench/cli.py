"""steerseg-bench: the whole pipeline's figures for this machine, as one table plus JSON.

    steerseg-bench                                     # every section, tiny models (minutes on a CPU)
    steerseg-bench --out out/bench                     # also writes out/bench/bench.md and bench.json
    steerseg-bench --sections tracker,sam2 --device cuda --real-size

Sections (`--sections`, comma-separated; default all but soak) and the goals the issues set:
- node_overhead: per-frame time of the tracker step and of the node's own work around it
  (image conversion in, label image, overlay drawing, track and marker messages, serialisation
  of everything published), in this process without DDS, with the overlay and markers drawn
  and without (nobody subscribes); goals: <= 5% of the step drawn, <= 2% undrawn.
- grounding_rate: the node as its own process over DDS, fed a camera at a fixed rate, with a
  command re-grounded periodically: the rate of published masks while a grounding runs, as a
  share of the rate while none runs; goal: >= 90%. For each of `--grounding-backends` (builtin;
  tiny: a tiny random Qwen2.5-VL with DecAF) and each of `--grounding-setups`:
  in_process (the tracker node grounds in a thread) and two_nodes (a grounder node in its own
  process answers the tracker node's Ground requests: also the bytes and milliseconds per
  request); and the time from the command to the first mask of the target.
- depth3d: the 3D step (position, extent, spread from mask + depth) per object per frame at
  640x480 and 1280x720 on the synthetic RGB-D scene, and its share of the frame time against the
  built-in tracker's step on the same frames; goal: <= 1 ms for one object.
- depth3d_node: the same scene through the node as its own process over DDS (colour, depth and
  camera_info, one seeded object, each frame once the previous one was answered): the node's
  time per frame and its 3D step's (as on /diagnostics: ms_per_frame, ms_3d_per_frame) and the
  3D step's share of the node's frame time.
- memory: the node process's resident memory after 2,000 published masks minus after 200 (with
  re-grounding running); goal: < 20 MB.
- soak (not in the default run: `--sections soak`): the node over DDS for 10,000 frames at camera
  rate with a command and periodic re-grounding, for each backend kind in `--soak-backends`
  (builtin; tiny: tiny random SAM2 + Qwen2.5-VL written by the tiny model builders): resident
  memory growth after the warm-up (goal < 10 MB), thread and file-descriptor counts (goal: flat
  after the warm-up) and the frame accounting on /diagnostics (received = processed + dropped +
  rejected once the camera stops). About 6 minutes per kind at 30 fps. Frames the node never
  received (a reliable keep-last publisher overwrites what a busy subscriber has not acknowledged)
  are the difference between frames_sent and received.
- tracker: the built-in tracker's J&F on DAVIS 2016 and its step time at 854x480; goal: <= 30 ms.
- rollout: attention capture + streaming rollout against the materialising reference; goal:
  >= 10x less peak memory at <= 1.2x the time (CPU only: it measures process memory).
- grounding: whole grounding latency per mode (decaf, steerseg) on 8 and 16 keyframes.
- sam2: SAM2 step time for 1/2/4 objects and its parts, memory growth with and without
  pruning, catch-up time, the ONNX encoder against torch.
The last four live in bench_models.py. Model sections use tiny random-weight configs unless
`--real-size` (Qwen2.5-VL-3B/-7B and SAM2.1 tiny/small/base-plus/large layer shapes at 1024 px,
854x480 frames, random weights), and run on `--device` (default: cuda if available, else cpu).
On a CPU the real sizes take hours; `--grounding-layers`, `--grounding-vision-depth`,
`--rollout-layers`, `--sam2-configs` and `--sam2-memory-frames` cut them down.

A section whose dependencies are missing (no torch, no data) is reported as skipped with the
reason; a section that fails reports its error and the others still run (the exit code is then
1). The files are rewritten after every section, and Ctrl-C stops the run keeping what is done. Each section is a function (options) -> flat dict of figures, registered with
`@section("name")`; nested results are flattened with dotted keys. The JSON holds the machine
(CPUs, load average before and after, torch version, device, GPU), the options and every
section's figures, so two runs can be compared. Timings depend on what else runs on the
machine: compare runs only with their load averages.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np

SectionFn = Callable[[argparse.Namespace], dict[str, Any]]
SECTIONS: dict[str, SectionFn] = {}
REQUIRES: dict[str, tuple[str, ...]] = {}
# Sections left out of the default run (they take long): run them by name.
OPT_IN = {"soak"}


class SectionSkipped(Exception):
    """Raised by a section that cannot run here (no data, no device): reported, not failed."""


def section(name: str, requires: tuple[str, ...] = ()):
    """Register a benchmark section: a function (options) -> dict of figures. `requires` names
    the modules it imports; without them the section is reported as skipped."""
    def register(fn):
        SECTIONS[name] = fn
        REQUIRES[name] = tuple(requires)
        return fn
    return register


def flatten(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict of figures as one level, keys joined with dots."""
    flat: dict[str, Any] = {}
    for key, value in figures.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def default_data() -> Path:
    shared = os.environ.get("STEERSEG_SHARED")
    if shared:
        return Path(shared) / "data" / "davis16"
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "davis16"


def load_sequence(data: Path, sequence: str, count: Optional[int] = None):
    """(names, RGB frames, boolean masks) of a DAVIS sequence."""
    frames_dir = data / "JPEGImages" / "480p" / sequence
    names = sorted(p.stem for p in frames_dir.glob("*.jpg"))[:count]
    if not names:
        raise SectionSkipped(f"no frames at {frames_dir} (give --data, the davis16 folder)")
    images = [cv2.cvtColor(cv2.imread(str(frames_dir / f"{n}.jpg")), cv2.COLOR_BGR2RGB) for n in names]
    masks = [cv2.imread(str(data / "Annotations" / "480p" / sequence / f"{n}.png"), cv2.IMREAD_GRAYSCALE) > 127
             for n in names]
    return names, images, masks


def command_for(data: Path, sequence: str, kind: str = "referring") -> str:
    videos = json.loads((data / "expressions.json").read_text())["videos"]
    return next(e["exp"] for e in videos[sequence]["expressions"] if e["kind"] == kind)


def _ms(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(1e3 * statistics.median(values), 3), "mean_ms": round(1e3 * statistics.fmean(values), 3)}


# ---- node overhead ------------------------------------------------------------------------------
@section("node_overhead", requires=("rclpy",))
def node_overhead(args: argparse.Namespace) -> dict[str, Any]:
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from steerseg_ros.streaming import backends
    from steerseg_ros.streaming.pipeline import Pipeline, PipelineConfig
    from steerseg_ros.ros.image_conversion import ImageBuffer, rgb_to_image
    from steerseg_ros.ros.main_loop import fix_mmap_threshold
    from steerseg_ros.ros.messages import header_at
    from steerseg_ros.ros.tracker_node import incoming_rgb, output_messages

    fix_mmap_threshold()  # the allocator as the node process runs it
    names, images, masks = load_sequence(args.data, args.sequence, args.frames)
    config = PipelineConfig(asynchronous=False, regrounding_period_s=0.0)
    # The steady state of a node that has run for a while: its buffer is full and each frame is
    # converted into the memory of one that left it. So the sequence is played forth and back
    # for a full buffer plus the measured frames, and the timings start once the buffer is full.
    skip = config.buffer_size + args.warmup
    period = max(2 * len(images) - 2, 1)
    order = [min(i % period, period - i % period) for i in range(skip + max(len(images), 60))]
    # What the subscription callback hands over: a message as deserialised from the wire.
    incoming = [deserialize_message(serialize_message(rgb_to_image(images[j], "bgr8", header_at(i * 33_333_333, "camera"))),
                                    Image) for i, j in enumerate(order)]
    names = [names[j] for j in order]
    tracker = backends.make_tracker(args.tracker)
    pipeline = Pipeline(backends.make_grounder(args.grounder), tracker, config)
    step_times: list[float] = []
    step_cpu: list[float] = []
    real_step = tracker.step

    def timed_step(frame):
        t, c = time.perf_counter(), time.process_time()
        result = real_step(frame)
        step_times.append(time.perf_counter() - t)
        step_cpu.append(time.process_time() - c)
        return result

    tracker.step = timed_step
    overlay_buffer = ImageBuffer()  # as the node draws: into reused message memory
    mask_buffer = ImageBuffer()
    parts: dict[str, list[float]] = {k: [] for k in ("convert_in", "pipeline_other", "messages", "serialise",
                                                     "messages_undrawn", "serialise_undrawn")}
    # Process CPU time too: on a shared, loaded machine wall times stretch with the load, CPU
    # times much less, so their ratio is the steadier figure there.
    cpu: dict[str, list[float]] = {"step": [], "drawn": [], "undrawn": []}
    try:
        for i, msg in enumerate(incoming):
            t0, c0 = time.perf_counter(), time.process_time()
            rgb = incoming_rgb(msg, pipeline)
            t1, c1 = time.perf_counter(), time.process_time()
            n_steps = len(step_times)
            output = pipeline.process(rgb, i * 33_333_333 + 1, "camera", names[i])
            t2, c2 = time.perf_counter(), time.process_time()
            if i == 0:
                output.tracks.append(pipeline.seed_mask(masks[0], output.frame.stamp_ns))
            step = step_times[-1] if len(step_times) > n_steps else 0.0
            outgoing = output_messages(output, msg.header, rgb, overlay_buffer=overlay_buffer, mask_buffer=mask_buffer)
            t3 = time.perf_counter()
            for _, m in outgoing:
                serialize_message(m)
            t4, c4 = time.perf_counter(), time.process_time()
            # What the node does when nobody subscribes to the overlay and the markers.
            undrawn = output_messages(output, msg.header, rgb, overlay=False, markers=False, mask_buffer=mask_buffer)
            t5 = time.perf_counter()
            for _, m in undrawn:
                serialize_message(m)
            t6, c6 = time.perf_counter(), time.process_time()
            if i < skip:
                continue
            if len(step_times) > n_steps:
                cpu["step"].append(step_cpu[-1])
                cpu["drawn"].append((c1 - c0) + (c4 - c2))
                cpu["undrawn"].append((c1 - c0) + (c6 - c4))
            parts["convert_in"].append(t1 - t0)
            parts["pipeline_other"].append(t2 - t1 - step)
            parts["messages"].append(t3 - t2)
            parts["serialise"].append(t4 - t3)
            parts["messages_undrawn"].append(t5 - t4)
            parts["serialise_undrawn"].append(t6 - t5)
    finally:
        pipeline.close()
    steps = step_times[max(0, skip - 1):]
    overhead = [a + b + c for a, b, c in zip(parts["convert_in"], parts["messages"], parts["serialise"])]
    undrawn = [a + b + c for a, b, c in zip(parts["convert_in"], parts["messages_undrawn"], parts["serialise_undrawn"])]
    height, width = images[0].shape[:2]
    out: dict[str, Any] = {"frames": len(overhead), "image": f"{width}x{height}", "sequence": args.sequence,
                           "frames_into_reused_memory": pipeline.buffer.spares_given}
    out.update({f"tracker_step_{k}": v for k, v in _ms(steps).items()})
    for name, values in parts.items():
        out.update({f"{name}_{k}": v for k, v in _ms(values).items()})
    out.update({f"node_overhead_{k}": v for k, v in _ms(overhead).items()})
    out.update({f"node_overhead_undrawn_{k}": v for k, v in _ms(undrawn).items()})
    ratio = statistics.median(overhead) / statistics.median(steps)
    ratio_undrawn = statistics.median(undrawn) / statistics.median(steps)
    out["overhead_over_step"] = round(ratio, 4)
    out["overhead_over_step_undrawn"] = round(ratio_undrawn, 4)
    if cpu["step"]:
        step_cpu_median = statistics.median(cpu["step"])
        out["tracker_step_cpu_median_ms"] = round(1e3 * step_cpu_median, 3)
        out["overhead_over_step_cpu"] = round(statistics.median(cpu["drawn"]) / step_cpu_median, 4)
        out["overhead_over_step_undrawn_cpu"] = round(statistics.median(cpu["undrawn"]) / step_cpu_median, 4)
    out["goal_overhead_at_most_5pct"] = ratio <= 0.05
    out["goal_undrawn_at_most_2pct"] = ratio_undrawn <= 0.02
    out["note"] = ("node overhead = convert_in + messages (label image, overlay, tracks, markers) + serialise; "
                   "undrawn: the same without overlay and markers (nobody subscribes to them); "
                   "pipeline_other is the core's own bookkeeping around the step, reported apart")
    return out


# ---- depth3d: the 3D step ------------------------------------------------------------------------
@section("depth3d")
def depth3d(args: argparse.Namespace) -> dict[str, Any]:
    """The 3D step (depth.estimate_object_3d) per object per frame on the synthetic RGB-D scene
    with every corruption on, at 640x480 and 1280x720, against the built-in tracker's step on
    the same frames (its share of a frame's time = 3D / (tracker step + 3D))."""
    from steerseg_ros.depth import estimate_object_3d
    from steerseg_ros.testing.synthetic_rgbd import CORRUPTIONS, SceneConfig, SyntheticRGBDScene, default_camera
    from steerseg_bench.tracker import track_sequence
    from steerseg_ros.tracking.flow import FlowTrackerConfig

    n = min(args.frames or 30, 60)
    repeats = 5
    out: dict[str, Any] = {"frames": n, "repeats": repeats, "corruptions": "+".join(CORRUPTIONS), "goal_ms": 1.0}
    try:
        for width, height in ((640, 480), (1280, 720)):
            scene = SyntheticRGBDScene(SceneConfig(n_frames=n, corruptions=CORRUPTIONS),
                                       camera=default_camera(width, height), davis_root=args.data)
            frames = list(scene)
            key = f"{width}x{height}"
            estimate_object_3d(frames[0].mask, frames[0].depth_m, scene.camera)  # the camera's rays, once
            plain, points, cpu = [], [], []
            for _ in range(repeats):
                for f in frames:
                    t, c = time.perf_counter(), time.process_time()
                    estimate_object_3d(f.mask, f.depth_m, scene.camera)
                    plain.append(time.perf_counter() - t)
                    cpu.append(time.process_time() - c)
                    t = time.perf_counter()
                    estimate_object_3d(f.mask, f.depth_m, scene.camera, max_points=2000)
                    points.append(time.perf_counter() - t)
            _, wall, tcpu, _ = track_sequence(FlowTrackerConfig(), [f.rgb for f in frames],
                                              [f.mask_true for f in frames])
            skip = min(args.warmup, len(wall) - 1)
            step = float(np.median(wall[skip:]))
            d3 = statistics.median(plain)
            out[f"{key}.mask_pixels_median"] = int(np.median([f.mask.sum() for f in frames]))
            out.update({f"{key}.object3d_{k}": v for k, v in _ms(plain).items()})
            out[f"{key}.object3d_p90_ms"] = round(1e3 * float(np.percentile(plain, 90)), 3)
            # Process CPU time moves less with a shared machine's load than wall time does.
            out[f"{key}.object3d_cpu_median_ms"] = round(1e3 * statistics.median(cpu), 3)
            out.update({f"{key}.object3d_with_2000_points_{k}": v for k, v in _ms(points).items()})
            out[f"{key}.tracker_step_median_ms"] = round(1e3 * step, 3)
            out[f"{key}.tracker_step_cpu_median_ms"] = round(1e3 * float(np.median(tcpu[skip:])), 3)
            out[f"{key}.share_of_frame"] = round(d3 / (step + d3), 4)
            tc, dc = float(np.median(tcpu[skip:])), statistics.median(cpu)
            out[f"{key}.share_of_frame_cpu"] = round(dc / (tc + dc), 4)
            out[f"{key}.goal_met"] = bool(d3 <= 1e-3)
    except FileNotFoundError as e:
        raise SectionSkipped(str(e))
    out["note"] = ("one object, median over frames x repeats; the camera's undistortion table is built once per "
                   "camera (not timed); share_of_frame = 3D / (built-in tracker step + 3D) on the same frames, in wall "
                   "time and in process CPU time")
    return out


# ---- helpers for the node-process sections -------------------------------------------------------
class NodeRun:
    """The node as its own process on a private ROS domain, plus this process as camera and
    recorder. Stops the node with SIGINT."""

    def __init__(self, args: argparse.Namespace, params: dict[str, Any], tag: str = "bench",
                 grounder_node: bool = False):
        import rclpy
        import yaml
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from steerseg_msgs.msg import TrackArray

        # 1..100, or the range STEERSEG_TEST_DOMAINS gives (runs sharing a machine stay apart).
        low, _, high = os.environ.get("STEERSEG_TEST_DOMAINS", "1-100").partition("-")
        self.domain = random.SystemRandom().randint(int(low), int(high or low))
        env = os.environ.copy()
        env.update(ROS_DOMAIN_ID=str(self.domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        params_file = self.workdir / f"{tag}_params_{self.domain}.yaml"
        node_params = {"autostart": True, "image_qos": "reliable", "stats_period_s": 1.0,
                       "grounder.backend": args.grounder, "tracker.backend": args.tracker, **params}
        # With a grounder node, the grounder's settings are its; the tracker node grounds through it.
        grounder_params = {k: v for k, v in node_params.items() if k.startswith("grounder.")}
        if grounder_node:
            node_params = {**{k: v for k, v in node_params.items() if k not in grounder_params},
                           "grounder.backend": "remote"}
        params_file.write_text(yaml.safe_dump({"/**/steerseg": {"ros__parameters": node_params}}))
        self.log_path = self.workdir / f"{tag}_node_{self.domain}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "steerseg_ros.ros.tracker_node", "--ros-args",
                                         "--params-file", str(params_file)], env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.grounder = None
        if grounder_node:
            grounder_file = self.workdir / f"bench_grounder_params_{self.domain}.yaml"
            grounder_file.write_text(yaml.safe_dump({"/**/steerseg_grounder": {"ros__parameters": {
                "autostart": True, **grounder_params}}}))
            self._grounder_log = open(self.workdir / f"bench_grounder_{self.domain}.log", "wb")
            self.grounder = subprocess.Popen([sys.executable, "-m", "steerseg_ros.ros.grounder_node", "--ros-args",
                                              "--params-file", str(grounder_file)], env=env, stdout=self._grounder_log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
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
        for process in (self.process, self.grounder):
            if process is not None and process.poll() is None:
                process.send_signal(2)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.terminate()
                    process.wait(5)
        self._log.close()
        if self.grounder is not None:
            self._grounder_log.close()
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


# ---- depth3d_node: the 3D step's share inside the node ----------------------------------------------
@section("depth3d_node", requires=("rclpy",))
def depth3d_node(args: argparse.Namespace) -> dict[str, Any]:
    """The synthetic RGB-D scene through the node process (built-in or chosen backends): per frame
    camera_info, depth (16UC1) and colour, the first with the true mask as seed, the next once the
    previous frame's tracks came back. Reads the node's own timings from /diagnostics."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from steerseg_ros.ros.image_conversion import array_to_image, depth_array_to_image, rgb_to_image
    from steerseg_ros.ros.messages import header_at
    from steerseg_ros.testing.synthetic_rgbd import CORRUPTIONS, SceneConfig, SyntheticRGBDScene, camera_info_fields, default_camera

    n = min(args.frames or 30, 60)
    out: dict[str, Any] = {"frames": n, "corruptions": "+".join(CORRUPTIONS)}
    for width, height in ((640, 480), (1280, 720)):
        try:
            scene = SyntheticRGBDScene(SceneConfig(n_frames=n, corruptions=CORRUPTIONS),
                                       camera=default_camera(width, height), davis_root=args.data)
        except FileNotFoundError as e:
            raise SectionSkipped(str(e))
        run = NodeRun(args, {"stats_period_s": 0.5, "depth.qos": "reliable", "depth.wait_s": 1.0})
        try:
            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            depth_pub = run.node.create_publisher(Image, "depth", reliable)
            info_pub = run.node.create_publisher(CameraInfo, "camera_info", reliable)
            seed_pub = run.node.create_publisher(Image, "seed_mask", reliable)
            status: dict[str, str] = {}
            run.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: status.update(
                {kv.key: kv.value for s in m.status if s.name.startswith("steerseg:") for kv in s.values}), 10)
            run.wait_up()
            while min(p.get_subscription_count() for p in (depth_pub, info_pub, seed_pub)) == 0:
                time.sleep(0.05)
            fields = camera_info_fields(scene.camera)
            for i in range(n):
                f = scene.frame(i)
                stamp = 10**12 + i * (10**9 // 30)
                header = header_at(stamp, fields["frame_id"])
                info = CameraInfo(header=header, width=width, height=height, distortion_model=fields["distortion_model"])
                info.k, info.d, info.r, info.p = fields["k"], fields["d"], fields["r"], fields["p"]
                info_pub.publish(info)
                depth_pub.publish(depth_array_to_image(f.depth_mm, header))
                if i == 0:
                    seed_pub.publish(array_to_image(f.mask_true.astype(np.uint8) * 255, "mono8", header))
                run.images.publish(rgb_to_image(f.rgb, "bgr8", header))
                deadline = time.monotonic() + 60.0
                while not any(a[1] == stamp for a in list(run.arrivals)):
                    if time.monotonic() > deadline or run.process.poll() is not None:
                        raise RuntimeError(f"no answer for frame {i}; see {run.log_path}")
                    time.sleep(0.005)
            deadline = time.monotonic() + 10.0
            while int(status.get("frames_processed", 0)) < n and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            run.close()
        if "ms_3d_per_frame" not in status:
            raise RuntimeError(f"the node reported no 3D step (depth never paired?); see {run.log_path}")
        key = f"{width}x{height}"
        frame_ms, d3_ms = float(status["ms_per_frame"]), float(status["ms_3d_per_frame"])
        out[f"{key}.node_ms_per_frame"] = frame_ms
        out[f"{key}.node_3d_ms_per_frame"] = d3_ms
        out[f"{key}.node_3d_share"] = round(d3_ms / frame_ms, 4)
        out[f"{key}.frames_with_3d"] = int(status.get("frames_3d", 0))
    out["note"] = ("means over the frames, from the node's /diagnostics; the node's frame time covers image "
                   "conversion, the tracker step, the 3D step (depth to metres and every live track) and "
                   "building and publishing the outputs; one object")
    return out


# ---- grounding rate ------------------------------------------------------------------------------
@section("grounding_rate", requires=("rclpy",))
def grounding_rate(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in [k.strip() for k in args.grounding_backends.split(",") if k.strip()]:
        if kind == "builtin":
            params: dict[str, Any] = {"grounder.backend": "builtin"}
        elif kind == "tiny":
            # The tiny random Qwen2.5-VL grounder (DecAF) with the built-in tracker: the cost of a
            # VLM grounding beside the tracking, on this machine's scale.
            tiny = tiny_model_params(Path(args.workdir) / "tiny_models")
            params = {k: v for k, v in tiny.items() if k.startswith(("grounder.", "pipeline."))}
        else:
            raise ValueError(f"--grounding-backends: unknown kind {kind!r} (builtin, tiny)")
        for setup in [x.strip() for x in args.grounding_setups.split(",") if x.strip()]:
            if setup not in ("in_process", "two_nodes"):
                raise ValueError(f"unknown grounding setup {setup!r}: in_process or two_nodes")
            out[f"{kind}.{setup}"] = _grounding_rate(args, params, grounder_node=setup == "two_nodes")
            print(f"[bench] grounding_rate {kind} {setup}: {json.dumps(out[f'{kind}.{setup}'])}", file=sys.stderr,
                  flush=True)
    return out


def _grounding_rate(args: argparse.Namespace, params: dict[str, Any], grounder_node: bool) -> dict[str, Any]:
    from std_msgs.msg import String

    from steerseg_ros.streaming.pipeline import TrackState

    _, images, _ = load_sequence(args.data, args.sequence, args.frames)
    run = NodeRun(args, {"pipeline.regrounding_period_s": args.regrounding_period, **params},
                  tag="two_nodes" if grounder_node else "in_process", grounder_node=grounder_node)
    try:
        run.wait_up()
        camera = Camera(run, images, args.camera_rate).start()
        time.sleep(0.5)
        commanded = time.monotonic()
        run.commands.publish(String(data=command_for(args.data, args.sequence)))
        time.sleep(args.duration)
        camera.stop()
        time.sleep(1.5)
        with run.lock:
            arrivals = list(run.arrivals)
            diagnostics = dict(run.diagnostics)
    finally:
        run.close()
    # Each gap between two published masks counts towards what the node was doing when the
    # later one came out: grounding (a track is REGROUNDING) or not. Before the first track
    # exists there is nothing to compare, so that phase is left out.
    first_track = next((i for i, (_, _, states) in enumerate(arrivals) if states), None)
    if first_track is None:
        raise RuntimeError(f"no track was ever published; see {run.log_path}")
    busy_n = free_n = 0
    busy_s = free_s = 0.0
    groundings = 0
    was_busy = False
    for (t_prev, _, _), (t, _, states) in zip(arrivals[first_track:], arrivals[first_track + 1:]):
        busy = any(s == TrackState.REGROUNDING for s in states)
        groundings += busy and not was_busy
        was_busy = busy
        if busy:
            busy_n, busy_s = busy_n + 1, busy_s + (t - t_prev)
        else:
            free_n, free_s = free_n + 1, free_s + (t - t_prev)
    rate_busy = busy_n / busy_s if busy_s else float("nan")
    rate_free = free_n / free_s if free_s else float("nan")
    share = rate_busy / rate_free if free_s and busy_s else float("nan")
    figures = {"camera_fps": args.camera_rate, "seconds": args.duration, "frames_sent": camera.sent,
               "masks_published": len(arrivals), "groundings_seen": groundings,
               "seconds_grounding": round(busy_s, 2), "seconds_not_grounding": round(free_s, 2),
               "mask_fps_while_grounding": round(rate_busy, 2), "mask_fps_otherwise": round(rate_free, 2),
               "share_while_grounding": round(share, 4), "goal_share_at_least_90pct": bool(share >= 0.9),
               "command_to_first_mask_s": round(arrivals[first_track][0] - commanded, 3)}
    if grounder_node:
        figures.update({"request_kb": round(int(diagnostics.get("remote.last_request_bytes", 0)) / 1e3, 1),
                        "request_ms": round(1e3 * float(diagnostics.get("remote.last_latency_s", "nan")), 1),
                        "requests": int(diagnostics.get("remote.requests", 0))})
    return figures


# ---- memory --------------------------------------------------------------------------------------
@section("memory", requires=("rclpy",))
def memory(args: argparse.Namespace) -> dict[str, Any]:
    from std_msgs.msg import String

    _, images, _ = load_sequence(args.data, args.sequence, args.frames)
    run = NodeRun(args, {"pipeline.regrounding_period_s": args.regrounding_period})
    samples: dict[int, float] = {}
    try:
        run.wait_up()
        run.commands.publish(String(data=command_for(args.data, args.sequence)))
        camera = Camera(run, images, args.camera_rate).start()
        deadline = time.monotonic() + args.memory_frames / 2.0 + 120
        checkpoints = [args.memory_start, args.memory_frames]
        while checkpoints and time.monotonic() < deadline:
            with run.lock:
                published = len(run.arrivals)
            if published >= checkpoints[0]:
                samples[checkpoints.pop(0)] = run.rss_mb()
            time.sleep(0.02)
        camera.stop()
        sent = camera.sent
    finally:
        run.close()
    if len(samples) < 2:
        raise RuntimeError(f"only {len(run.arrivals)} masks were published before the time limit")
    growth = samples[args.memory_frames] - samples[args.memory_start]
    return {"camera_fps": args.camera_rate, "frames_sent": sent,
            f"rss_mb_after_{args.memory_start}": round(samples[args.memory_start], 1),
            f"rss_mb_after_{args.memory_frames}": round(samples[args.memory_frames], 1),
            "rss_growth_mb": round(growth, 2), "goal_growth_under_20mb": growth < 20.0}


# ---- soak ----------------------------------------------------------------------------------------
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
    from steerseg_ros.testing.tiny_vlm import build_tiny_checkpoint
    from steerseg_ros.testing.tiny_sam2 import save_random_sam2, tiny_config

    vlm, sam2 = folder / "qwen2_5_vl_init0.3", folder / "sam2"
    if not (vlm / "config.json").is_file():
        build_tiny_checkpoint(vlm, "qwen2_5_vl", initializer_range=0.3)
    if not (sam2 / "config.json").is_file():
        save_random_sam2(sam2, tiny_config(128))
    return {"grounder.backend": "decaf", "grounder.model": str(vlm), "grounder.video_tokens_per_pair": 24,
            "grounder.cot_tokens": 6, "grounder.answer_tokens": 6, "tracker.backend": "sam2", "tracker.model": str(sam2),
            "tracker.device": "cpu", "pipeline.keyframes.count": 4}


def soak_run(args: argparse.Namespace, params: dict[str, Any], images: list[np.ndarray], command: str,
             frames: int, warmup: int, sample_every: int, tag: str = "soak") -> dict[str, Any]:
    """One node process fed `frames` frames at camera rate with `command` and periodic
    re-grounding: resources sampled every `sample_every` frames sent, and the frame accounting
    from /diagnostics once the camera has stopped and the counters have settled."""
    from std_msgs.msg import String

    run = NodeRun(args, {"pipeline.regrounding_period_s": args.regrounding_period, "stats_period_s": 1.0,
                         **params}, tag=tag)
    samples: list[tuple[int, float, int, int]] = []  # (frames sent, rss MB, threads, fds)
    try:
        run.wait_up(timeout=300.0)
        run.commands.publish(String(data=command))
        camera = Camera(run, images, args.camera_rate).start()
        while camera.sent < frames:
            if camera.sent >= len(samples) * sample_every:
                samples.append((camera.sent, *run.resources()))
            if run.process.poll() is not None:
                raise RuntimeError(f"the node exited with code {run.process.returncode}; see {run.log_path}")
            time.sleep(0.02)
        camera.stop()
        samples.append((camera.sent, *run.resources()))
        # The counters settle once the node has taken the last frame and published diagnostics
        # after it: wait for two equal reports in a row with nothing unaccounted.
        deadline, previous, counters = time.monotonic() + 120.0, None, {}
        while time.monotonic() < deadline:
            time.sleep(1.5)
            with run.lock:
                counters = dict(run.diagnostics)
            # (other counters may still move: a catch-up can run on through buffered frames)
            accounting = frame_accounting(counters)
            if counters and accounting == previous and accounting["unaccounted"] == 0:
                break
            previous = accounting
        sent = camera.sent
        with run.lock:
            tracked = sum(1 for _, _, states in run.arrivals if states)
    finally:
        run.close()
    after = [s for s in samples if s[0] >= warmup]
    if len(after) < 2:
        raise RuntimeError(f"too few samples after the warm-up of {warmup} frames")
    rss = [s[1] for s in after]
    threads = sorted({s[2] for s in after})
    fds = sorted({s[3] for s in after})
    # A straight line through the samples: growth that the last sample's noise does not decide.
    slope = float(np.polyfit([s[0] for s in after], rss, 1)[0]) * 1000
    accounting = frame_accounting(counters)
    return {
        "frames_sent": sent, "warmup_frames": warmup,
        "rss_mb_after_warmup": round(rss[0], 1), "rss_mb_end": round(rss[-1], 1),
        "rss_mb_max_after_warmup": round(max(rss), 1),
        "rss_growth_mb": round(rss[-1] - rss[0], 2), "rss_trend_mb_per_1000_frames": round(slope, 3),
        "rss_mb_series": " ".join(f"{r:.1f}" for r in rss),
        "threads_after_warmup": threads, "fds_after_warmup": fds,
        "threads_start": samples[0][2], "fds_start": samples[0][3],
        "accounting": accounting,
        "groundings": int(counters.get("pipeline.groundings", 0)),
        "groundings_without_target": int(counters.get("pipeline.groundings_empty", 0)),
        "grounding_failures": int(counters.get("pipeline.grounding_failures", 0)),
        "masks_published": int(counters.get("masks_published", 0)),
        "track_messages_with_a_track": tracked,
        "goal_growth_under_10mb": bool(rss[-1] - rss[0] < 10.0),
        "goal_threads_flat": len(threads) == 1, "goal_fds_flat": len(fds) == 1,
        "goal_no_frame_unaccounted": bool(counters) and accounting["unaccounted"] == 0,
        "log": str(run.log_path),
    }


@section("soak", requires=("rclpy", "psutil"))
def soak(args: argparse.Namespace) -> dict[str, Any]:
    _, images, _ = load_sequence(args.data, args.sequence, args.frames)
    command = command_for(args.data, args.sequence)
    out: dict[str, Any] = {"camera_fps": args.camera_rate, "regrounding_period_s": args.regrounding_period}
    for kind in [k.strip() for k in args.soak_backends.split(",") if k.strip()]:
        if kind == "builtin":
            params = {"grounder.backend": "builtin", "tracker.backend": "builtin"}
        elif kind == "tiny":
            params = tiny_model_params(Path(args.workdir) / "tiny_models")
        else:
            raise ValueError(f"--soak-backends: unknown kind {kind!r} (builtin, tiny)")
        print(f"[bench] soak {kind}: {args.soak_frames} frames at {args.camera_rate} fps", file=sys.stderr, flush=True)
        out[kind] = soak_run(args, params, images, command, args.soak_frames, args.soak_warmup,
                             args.soak_sample_every, tag=f"soak_{kind}")
        # Each kind takes minutes: show its figures at once.
        print(f"[bench] soak {kind}: {json.dumps(flatten(out[kind]))}", file=sys.stderr, flush=True)
    return out


# ---- the command ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from steerseg_bench import models as bench_models

    parser = argparse.ArgumentParser(prog="steerseg-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sections", default=",".join(n for n in SECTIONS if n not in OPT_IN),
                        help=f"comma-separated, of {list(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=None, help="write DIR/bench.md (the table) and DIR/bench.json")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="for the torch sections; auto: cuda if available, else cpu")
    parser.add_argument("--real-size", action="store_true",
                        help="model sections on real layer shapes (random weights) instead of tiny configs")
    parser.add_argument("--data", type=Path, default=default_data(), help="the davis16 folder")
    parser.add_argument("--sequence", default="blackswan", help="DAVIS sequence of the node sections")
    parser.add_argument("--frames", type=int, default=None, help="frames of that sequence to use (default: all)")
    parser.add_argument("--warmup", type=int, default=5, help="frames left out of the timings at the start")
    parser.add_argument("--grounder", default="builtin", help="grounder backend of the node sections")
    parser.add_argument("--tracker", default="builtin", help="tracker backend of the node sections")
    parser.add_argument("--camera-rate", type=float, default=30.0, help="frames per second fed to the node")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of camera for grounding_rate")
    parser.add_argument("--grounding-backends", default="builtin,tiny",
                        help="grounding_rate: builtin (the built-in grounder) and/or tiny (a tiny random "
                             "Qwen2.5-VL, DecAF)")
    parser.add_argument("--grounding-setups", default="in_process,two_nodes",
                        help="grounding_rate: in_process (grounding in a thread of the tracker node) and/or "
                             "two_nodes (a grounder node in its own process)")
    parser.add_argument("--regrounding-period", type=float, default=2.0,
                        help="seconds between re-groundings in the node-process sections")
    parser.add_argument("--memory-start", type=int, default=200)
    parser.add_argument("--memory-frames", type=int, default=2000)
    parser.add_argument("--soak-frames", type=int, default=10000, help="frames the soak sends per backend kind")
    parser.add_argument("--soak-warmup", type=int, default=1000, help="soak frames before the first counted sample")
    parser.add_argument("--soak-sample-every", type=int, default=250, help="soak frames between resource samples")
    parser.add_argument("--soak-backends", default="builtin,tiny", help="soak backend kinds: builtin, tiny")
    parser.add_argument("--workdir", default="out/bench", help="logs and parameter files of the node runs")
    bench_models.add_options(parser)
    return parser


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _resolve_device(args: argparse.Namespace, names: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Sets args.device to cpu or cuda and returns the machine's device figures. torch is only
    imported when a selected section uses it."""
    uses_torch = any("torch" in REQUIRES[n] and not _missing(REQUIRES[n]) for n in names)
    if not uses_torch:
        args.device = "cpu" if args.device == "auto" else args.device
        return {"device": args.device}
    import torch

    available = torch.cuda.is_available()
    if args.device == "cuda" and not available:
        parser.error("--device cuda: torch sees no CUDA device here")
    args.device = "cuda" if args.device == "auto" and available else ("cpu" if args.device == "auto" else args.device)
    figures: dict[str, Any] = {"device": args.device, "torch_threads": torch.get_num_threads()}
    if args.device == "cuda":
        figures["gpu"] = torch.cuda.get_device_name(0)
        figures["cuda"] = torch.version.cuda
    return figures


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_cell(v) for v in value) if all(isinstance(v, (int, float)) for v in value) else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the machine, then one table of every section's figures."""
    machine = report["machine"]
    lines = ["# steerseg-bench", "", f"`{report['command']}`", "",
             "| machine | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in machine.items()]
    lines += ["", "| section | figure | value |", "|---|---|---|"]
    for name, entry in report["sections"].items():
        status = entry["status"] + (f" ({entry['seconds']:.0f} s)" if "seconds" in entry else "")
        lines.append(f"| {name} | status | {status} |")
        for key in ("reason", "error"):
            if key in entry:
                lines.append(f"| {name} | {key} | {_cell(entry[key])} |")
        lines += [f"| {name} | {k} | {_cell(v)} |" for k, v in entry.get("figures", {}).items()]
    return "\n".join(lines) + "\n"


def run_section(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One section's entry: status ok (with figures), skipped (with the reason) or failed (with
    the error). Never raises: one broken section must not cost the others."""
    missing = _missing(REQUIRES[name])
    if missing:
        return {"status": "skipped", "reason": f"needs {', '.join(missing)}, not installed"}
    start = time.perf_counter()
    try:
        figures = flatten(SECTIONS[name](args))
    except SectionSkipped as reason:
        return {"status": "skipped", "reason": str(reason)}
    except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
        traceback.print_exc()
        return {"status": "failed", "error": f"{type(error).__name__}: {error}",
                "seconds": round(time.perf_counter() - start, 1)}
    return {"status": "ok", "seconds": round(time.perf_counter() - start, 1), "figures": figures}


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    command = " ".join(["steerseg-bench"] + (sys.argv[1:] if argv is None else list(argv)))
    machine: dict[str, Any] = {
        "host": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": _version("torch"), "transformers": _version("transformers"),
        "opencv": cv2.__version__, "commit": _git_commit(), "load_average_before": _load()}
    machine.update(_resolve_device(args, names, parser))
    report: dict[str, Any] = {
        "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())},
        "sections": {}}
    for i, name in enumerate(names):
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            report["sections"][name] = entry = run_section(name, args)
        except KeyboardInterrupt:
            # A long real-size run stopped by hand keeps the figures it has.
            report["sections"][name] = entry = {"status": "interrupted"}
            report["sections"].update({n: {"status": "not run"} for n in names[i + 1:]})
        print(f"[bench] {name}: {entry['status']} {entry.get('reason', entry.get('error', ''))}",
              file=sys.stderr, flush=True)
        machine["load_average_after"] = _load()
        _write(report, args)  # after every section, so a run killed later keeps these
        if entry["status"] == "interrupted":
            break
    print(markdown(report))
    return 1 if any(e["status"] in ("failed", "interrupted") for e in report["sections"].values()) else 0


def _write(report: dict[str, Any], args: argparse.Namespace) -> None:
    text = json.dumps(report, indent=2, default=str) + "\n"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.md").write_text(markdown(report))
        (args.out / "bench.json").write_text(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


# The model and tracker sections register themselves into SECTIONS.
from steerseg_bench import models as bench_models  # noqa: E402,F401

if __name__ == "__main__":
    # Run through the package's module, so the sections bench_models registers land in the same
    # SECTIONS as main reads (as __main__ this file is a second copy of the module).
    from steerseg_bench.cli import main as package_main

    raise SystemExit(package_main())
