"""steerseg-bench: the whole pipeline's figures for this machine, as one table plus JSON.

    steerseg-bench                                     # every section, tiny models (minutes on a CPU)
    steerseg-bench --out out/bench                     # also writes out/bench/bench.md and bench.json
    steerseg-bench --sections tracker,sam2 --device cuda --real-size

Sections (`--sections`, comma-separated; default all) and the goals the issues set:
- node_overhead: per-frame time of the tracker step and of the node's own work around it
  (image conversion in, label image, overlay drawing, track and marker messages, serialisation
  of everything published), in this process without DDS, with the overlay and markers drawn
  and without (nobody subscribes); goals: <= 5% of the step drawn, <= 2% undrawn.
- grounding_rate: the node as its own process over DDS, fed a camera at a fixed rate, with a
  command re-grounded periodically: the rate of published masks while a grounding runs, as a
  share of the rate while none runs; goal: >= 90%.
- memory: the node process's resident memory after 2,000 published masks minus after 200 (with
  re-grounding running); goal: < 20 MB.
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

    from steerseg_ros import backends
    from steerseg_ros.pipeline import Pipeline, PipelineConfig
    from steerseg_ros.ros.image_conversion import ImageBuffer, image_to_rgb, rgb_to_image
    from steerseg_ros.ros.messages import header_at
    from steerseg_ros.ros.node import output_messages

    names, images, masks = load_sequence(args.data, args.sequence, args.frames)
    # What the subscription callback hands over: a message as deserialised from the wire.
    incoming = [deserialize_message(serialize_message(rgb_to_image(im, "bgr8", header_at(i * 33_333_333, "camera"))), Image)
                for i, im in enumerate(images)]
    tracker = backends.make_tracker(args.tracker)
    pipeline = Pipeline(backends.make_grounder(args.grounder), tracker,
                        PipelineConfig(asynchronous=False, regrounding_period_s=0.0))
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
    parts: dict[str, list[float]] = {k: [] for k in ("convert_in", "pipeline_other", "messages", "serialise",
                                                     "messages_undrawn", "serialise_undrawn")}
    # Process CPU time too: on a shared, loaded machine wall times stretch with the load, CPU
    # times much less, so their ratio is the steadier figure there.
    cpu: dict[str, list[float]] = {"step": [], "drawn": [], "undrawn": []}
    try:
        for i, msg in enumerate(incoming):
            t0, c0 = time.perf_counter(), time.process_time()
            rgb = image_to_rgb(msg)
            t1, c1 = time.perf_counter(), time.process_time()
            n_steps = len(step_times)
            output = pipeline.process(rgb, i * 33_333_333 + 1, "camera", names[i])
            t2, c2 = time.perf_counter(), time.process_time()
            if i == 0:
                output.tracks.append(pipeline.seed_mask(masks[0], output.frame.stamp_ns))
            step = step_times[-1] if len(step_times) > n_steps else 0.0
            outgoing = output_messages(output, msg.header, rgb, overlay_buffer=overlay_buffer)
            t3 = time.perf_counter()
            for _, m in outgoing:
                serialize_message(m)
            t4, c4 = time.perf_counter(), time.process_time()
            # What the node does when nobody subscribes to the overlay and the markers.
            undrawn = output_messages(output, msg.header, rgb, overlay=False, markers=False)
            t5 = time.perf_counter()
            for _, m in undrawn:
                serialize_message(m)
            t6, c6 = time.perf_counter(), time.process_time()
            if i < args.warmup:
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
    steps = step_times[max(0, args.warmup - 1):]
    overhead = [a + b + c for a, b, c in zip(parts["convert_in"], parts["messages"], parts["serialise"])]
    undrawn = [a + b + c for a, b, c in zip(parts["convert_in"], parts["messages_undrawn"], parts["serialise_undrawn"])]
    height, width = images[0].shape[:2]
    out: dict[str, Any] = {"frames": len(overhead), "image": f"{width}x{height}", "sequence": args.sequence}
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


# ---- helpers for the node-process sections -------------------------------------------------------
class NodeRun:
    """The node as its own process on a private ROS domain, plus this process as camera and
    recorder. Stops the node with SIGINT."""

    def __init__(self, args: argparse.Namespace, params: dict[str, Any]):
        import rclpy
        import yaml
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from steerseg_ros.msg import TrackArray

        self.domain = random.SystemRandom().randint(1, 100)
        env = os.environ.copy()
        env.update(ROS_DOMAIN_ID=str(self.domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        params_file = self.workdir / f"bench_params_{self.domain}.yaml"
        params_file.write_text(yaml.safe_dump({"/**/steerseg": {"ros__parameters": {
            "autostart": True, "image_qos": "reliable", "stats_period_s": 5.0,
            "grounder.backend": args.grounder, "tracker.backend": args.tracker, **params}}}))
        self.log_path = self.workdir / f"bench_node_{self.domain}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "steerseg_ros.ros.node", "--ros-args",
                                         "--params-file", str(params_file)], env=env, stdout=self._log,
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

    def wait_up(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.images.get_subscription_count() == 0 or self.commands.get_subscription_count() == 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not come up; see {self.log_path}")
            time.sleep(0.05)

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                self.process.wait(5)
        self._log.close()
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


# ---- grounding rate ------------------------------------------------------------------------------
@section("grounding_rate", requires=("rclpy",))
def grounding_rate(args: argparse.Namespace) -> dict[str, Any]:
    from std_msgs.msg import String

    from steerseg_ros.pipeline import TrackState

    _, images, _ = load_sequence(args.data, args.sequence, args.frames)
    run = NodeRun(args, {"pipeline.regrounding_period_s": args.regrounding_period})
    try:
        run.wait_up()
        camera = Camera(run, images, args.camera_rate).start()
        time.sleep(0.5)
        run.commands.publish(String(data=command_for(args.data, args.sequence)))
        time.sleep(args.duration)
        camera.stop()
        time.sleep(1.0)
        with run.lock:
            arrivals = list(run.arrivals)
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
    return {"camera_fps": args.camera_rate, "seconds": args.duration, "frames_sent": camera.sent,
            "masks_published": len(arrivals), "groundings_seen": groundings,
            "seconds_grounding": round(busy_s, 2), "seconds_not_grounding": round(free_s, 2),
            "mask_fps_while_grounding": round(rate_busy, 2), "mask_fps_otherwise": round(rate_free, 2),
            "share_while_grounding": round(share, 4), "goal_share_at_least_90pct": bool(share >= 0.9)}


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


# ---- the command ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from steerseg_ros.tools import bench_models

    parser = argparse.ArgumentParser(prog="steerseg-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {list(SECTIONS)}")
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
    parser.add_argument("--regrounding-period", type=float, default=2.0,
                        help="seconds between re-groundings in the node-process sections")
    parser.add_argument("--memory-start", type=int, default=200)
    parser.add_argument("--memory-frames", type=int, default=2000)
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
from steerseg_ros.tools import bench_models  # noqa: E402,F401

if __name__ == "__main__":
    # Run through the package's module, so the sections bench_models registers land in the same
    # SECTIONS as main reads (as __main__ this file is a second copy of the module).
    from steerseg_ros.tools.bench import main as package_main

    raise SystemExit(package_main())
