"""steerseg-bench: figures for this machine, printed as one table and written as JSON.

    steerseg-bench                                  # every section
    steerseg-bench --sections node_overhead --json out/bench.json

Each section is a function that takes the parsed options and returns a flat dict of figures;
`SECTIONS` maps its name to it, and other modules add theirs with `@section("name")`. The
sections here measure the built-in backends and the node:

- node_overhead: per-frame time of the tracker step and of the node's own work around it
  (image conversion in, label image, overlay drawing, track and marker messages, serialisation
  of everything published), in this process without DDS; goal: overhead <= 10% of the step.
- grounding_rate: the node as its own process over DDS, fed a camera at a fixed rate, with a
  command re-grounded periodically: the rate of published masks while a grounding runs, as a
  share of the rate while none runs; goal: >= 90%.
- memory: the node process's resident memory after 2,000 published masks minus after 200 (with
  re-grounding running); goal: < 20 MB.

Timings depend on what else runs on the machine: the table reports the load average with them.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np

SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {}


def section(name: str):
    """Register a benchmark section: a function (options) -> dict of figures."""
    def register(fn):
        SECTIONS[name] = fn
        return fn
    return register


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
        raise SystemExit(f"no frames at {frames_dir} (give --data, the davis16 folder)")
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
@section("node_overhead")
def node_overhead(args: argparse.Namespace) -> dict[str, Any]:
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from steerseg_ros import backends
    from steerseg_ros.pipeline import Pipeline, PipelineConfig
    from steerseg_ros.ros.image_conversion import image_to_rgb, rgb_to_image
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
    real_step = tracker.step

    def timed_step(frame):
        t = time.perf_counter()
        result = real_step(frame)
        step_times.append(time.perf_counter() - t)
        return result

    tracker.step = timed_step
    parts: dict[str, list[float]] = {k: [] for k in ("convert_in", "pipeline_other", "messages", "serialise")}
    try:
        for i, msg in enumerate(incoming):
            t0 = time.perf_counter()
            rgb = image_to_rgb(msg)
            t1 = time.perf_counter()
            n_steps = len(step_times)
            output = pipeline.process(rgb, i * 33_333_333 + 1, "camera", names[i])
            t2 = time.perf_counter()
            if i == 0:
                output.tracks.append(pipeline.seed_mask(masks[0], output.frame.stamp_ns))
            step = step_times[-1] if len(step_times) > n_steps else 0.0
            outgoing = output_messages(output, msg.header, rgb)
            t3 = time.perf_counter()
            for _, m in outgoing:
                serialize_message(m)
            t4 = time.perf_counter()
            if i < args.warmup:
                continue
            parts["convert_in"].append(t1 - t0)
            parts["pipeline_other"].append(t2 - t1 - step)
            parts["messages"].append(t3 - t2)
            parts["serialise"].append(t4 - t3)
    finally:
        pipeline.close()
    steps = step_times[max(0, args.warmup - 1):]
    overhead = [a + b + c for a, b, c in zip(parts["convert_in"], parts["messages"], parts["serialise"])]
    height, width = images[0].shape[:2]
    out: dict[str, Any] = {"frames": len(overhead), "image": f"{width}x{height}", "sequence": args.sequence}
    out.update({f"tracker_step_{k}": v for k, v in _ms(steps).items()})
    for name, values in parts.items():
        out.update({f"{name}_{k}": v for k, v in _ms(values).items()})
    out.update({f"node_overhead_{k}": v for k, v in _ms(overhead).items()})
    ratio = statistics.median(overhead) / statistics.median(steps)
    out["overhead_over_step"] = round(ratio, 4)
    out["goal_overhead_at_most_10pct"] = ratio <= 0.10
    out["note"] = ("node overhead = convert_in + messages (label image, overlay, tracks, markers) + serialise; "
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
@section("grounding_rate")
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
@section("memory")
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
    parser = argparse.ArgumentParser(prog="steerseg-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {sorted(SECTIONS)}")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--data", type=Path, default=default_data(), help="the davis16 folder")
    parser.add_argument("--sequence", default="blackswan")
    parser.add_argument("--frames", type=int, default=None, help="frames of the sequence to use (default: all)")
    parser.add_argument("--warmup", type=int, default=5, help="frames left out of the timings at the start")
    parser.add_argument("--grounder", default="builtin")
    parser.add_argument("--tracker", default="builtin")
    parser.add_argument("--camera-rate", type=float, default=30.0, help="frames per second fed to the node")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of camera for grounding_rate")
    parser.add_argument("--regrounding-period", type=float, default=2.0,
                        help="seconds between re-groundings in the node-process sections")
    parser.add_argument("--memory-start", type=int, default=200)
    parser.add_argument("--memory-frames", type=int, default=2000)
    parser.add_argument("--workdir", default="out/bench", help="logs and parameter files of the node runs")
    return parser


def _table(results: dict[str, dict[str, Any]]) -> str:
    rows = [(name, key, value) for name, figures in results.items() for key, value in figures.items()]
    w1 = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in rows)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {sorted(SECTIONS)}")
    results: dict[str, dict[str, Any]] = {
        "machine": {"cpus": os.cpu_count(), "load_average_1_5_15": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                    "command": " ".join(["steerseg-bench"] + (sys.argv[1:] if argv is None else list(argv)))}}
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results[name] = SECTIONS[name](args)
    results["machine"]["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
