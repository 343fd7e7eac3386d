"""steerseg-demo: run the whole thing on a video or a folder of frames and write what it saw.

    steerseg-demo --frames DIR --command "the black swan" --out out/demo
    steerseg-demo --video clip.mp4 --seed-mask first_frame_mask.png --out out/clip --direct
    steerseg-demo --bag recording.mcap --command "the cup" --out out/bag

Writes OUT/overlay.mp4 (the overlay images, one per input frame) and OUT/masks/<frame name>.png
(one label image per input frame, values as in the node's `mask` topic: 0 background, each track
its own value; all zeros where there is no mask). By default it goes through the real node and
DDS: it starts the node and steerseg-play as processes on a private ROS domain (discovery on
this machine only), records the `mask` and `overlay` topics, and matches them to input frames by
stamp; the player waits for each frame's mask before it sends the next (steerseg-play
--lockstep), so every frame gets one however busy the machine is. --direct runs the core pipeline in this process instead, synchronously, with no ROS.

With --bag (a ROS 2 bag: folder, .mcap or .db3), steerseg-play replays its colour, depth and
camera_info topics with their recorded stamps onto the node's `image`, `depth` and
`camera_info` inputs (at the recorded rate, or --rate colour frames per second); output frames
are matched by those stamps and named by their frame number. --direct uses the colour frames
(no depth there, so no 3D).
Through the node it also writes each frame's 3D per track, as the node published it on `tracks`
(OUT/tracks_3d.csv and OUT/tracks_3d.jsonl: frame, stamp, track id, x, y, z, spread, standard
error, extent; see tools/demo_3d.py) and OUT/target_path.png, the 3D path of the track with 3D on
the most frames (needs matplotlib). --seed-mask goes with --bag through the node too: the player
sends it with the first colour frame's stamp.

Owns the demo's orchestration and output writing; the node, the player and the pipeline are
used as they are.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import yaml

from steerseg_ros.offline.sources import FrameSource

NS_PER_S = 1_000_000_000
# The node's stamps for the played frames: a fixed start keeps them reproducible.
STAMP_START_S = 1000.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerseg-demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--frames", type=Path, help="folder of images, in name order")
    source.add_argument("--video", type=Path, help="video file")
    source.add_argument("--bag", type=Path, help="ROS 2 bag (folder, .mcap or .db3) with colour, depth, camera_info")
    parser.add_argument("--topics", nargs="+", default=None, metavar="TOPIC",
                        help="with --bag: the bag topics to use (default: found by type and encoding)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--command", help="what to follow, in words")
    target.add_argument("--seed-mask", type=Path, help="first-frame mask (PNG, nonzero: the object) to track instead")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--direct", action="store_true", help="run the core pipeline in-process (no ROS)")
    parser.add_argument("--grounder", default="builtin", help="grounding backend")
    parser.add_argument("--tracker", default="builtin", help="tracking backend")
    parser.add_argument("--grounding", choices=("node", "thread"), default="node",
                        help="through the node: node: a grounder node in its own process (as the launch file "
                             "starts it); thread: grounding in a thread of the tracker node")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                        help="a node parameter, e.g. pipeline.lost_timeout_s=2.0 (how long a hidden object's "
                             "track stays UNSEEN before LOST), pipeline.lost_retry_s=1.0 (re-grounding cadence "
                             "while lost), pipeline.grounding_latency_s=2.0 (answers land 2 s of camera time "
                             "after they were asked for, as a slow grounder's would), depth.max_speed_mps=3.0 "
                             "(3D jumps), or grounder.<field>=... (grounder.* go to the grounder node when "
                             "there is one)")
    parser.add_argument("--count", type=int, default=None, help="use only the first COUNT frames")
    parser.add_argument("--rate", type=float, default=None,
                        help="frames per second (stamps; through the node also the publishing rate); default 10, "
                             "with --bag the recorded rate")
    parser.add_argument("--ground-truth", type=Path, default=None,
                        help="folder of ground-truth masks named like the frames: print J and F")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS domain for the node run (default: a random private one)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="seconds to wait for the node to load its backends and come up")
    return parser


def parse_sets(items: list[str]) -> dict[str, Any]:
    """NAME=VALUE pairs with YAML values (so 2.0 is a float, true a bool, [1, 2] a list)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set expects NAME=VALUE, got {item!r}")
        out[name.strip()] = yaml.safe_load(value)
    return out


class Outputs:
    """Collects per-frame label images and overlays, then writes masks/<name>.png and
    overlay.mp4 in input order (zeros / the plain frame where nothing came back)."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.masks: dict[int, bytes] = {}      # index -> PNG of the label image
        self.overlays: dict[int, bytes] = {}   # index -> JPEG of the overlay (BGR)
        self.tracks: dict[int, list] = {}      # index -> the frame's 3D rows (demo_3d.track_rows)
        self.lock = threading.Lock()

    def add_mask(self, index: int, label: np.ndarray) -> None:
        ok, png = cv2.imencode(".png", label)
        with self.lock:
            self.masks[index] = png.tobytes()

    def add_overlay(self, index: int, overlay_bgr: np.ndarray) -> None:
        ok, jpg = cv2.imencode(".jpg", overlay_bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
        with self.lock:
            self.overlays[index] = jpg.tobytes()

    def add_tracks(self, index: int, rows: list) -> None:
        with self.lock:
            self.tracks[index] = rows

    def write(self, source: FrameSource, fps: float) -> dict[str, Any]:
        masks_dir = self.out_dir / "masks"
        masks_dir.mkdir(parents=True, exist_ok=True)
        video_path = self.out_dir / "overlay.mp4"
        writer = None
        names, missing = [], 0
        try:
            for index, (name, bgr) in enumerate(source):
                names.append(name)
                with self.lock:
                    png = self.masks.get(index)
                    jpg = self.overlays.get(index)
                if png is None:
                    missing += 1
                    (masks_dir / f"{name}.png").write_bytes(cv2.imencode(".png", np.zeros(bgr.shape[:2], np.uint8))[1].tobytes())
                else:
                    (masks_dir / f"{name}.png").write_bytes(png)
                picture = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR) if jpg is not None else bgr
                if writer is None:
                    height, width = picture.shape[:2]
                    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                    if not writer.isOpened():
                        raise RuntimeError(f"OpenCV cannot write {video_path}")
                writer.write(picture)
        finally:
            if writer is not None:
                writer.release()
        return {"frames": len(names), "frames_without_mask": missing, "names": names,
                "masks": str(masks_dir), "overlay": str(video_path)}


def _read_seed(path: Path) -> np.ndarray:
    seed = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if seed is None:
        raise SystemExit(f"cannot read the seed mask {path}")
    return seed > 0


# ---- direct: the core pipeline in this process ----------------------------------------------
def _set_nested(config: Any, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        config = getattr(config, part)
    if not hasattr(config, path[-1]):
        raise SystemExit(f"unknown parameter pipeline.{'.'.join(path)}")
    setattr(config, path[-1], value)


def run_direct(args: argparse.Namespace, source: FrameSource, outputs: Outputs) -> dict[str, Any]:
    from steerseg_ros import render
    from steerseg_ros.streaming import backends
    from steerseg_ros.streaming.pipeline import FrameRejected, Pipeline, PipelineConfig

    sets = parse_sets(args.sets)
    options: dict[str, dict] = {"grounder": {}, "tracker": {}}
    config = PipelineConfig(asynchronous=False)
    for name, value in sets.items():
        section, _, rest = name.partition(".")
        if section in options and rest not in ("backend", "fallback_to_builtin"):
            options[section][rest] = value
        elif section == "pipeline":
            _set_nested(config, rest.split("."), value)
        # node-only parameters (drawing, QoS) mean nothing here
    pipeline = Pipeline(backends.make_grounder(args.grounder, options["grounder"]),
                        backends.make_tracker(args.tracker, options["tracker"]), config)
    seed = _read_seed(args.seed_mask) if args.seed_mask is not None else None
    if args.command is not None:
        pipeline.set_command(args.command)
    period_ns = int(round(NS_PER_S / args.rate))
    stamps = source.stamps() if hasattr(source, "stamps") else None
    rejected = 0
    start = time.perf_counter()
    try:
        for index, (name, bgr) in enumerate(source):
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            stamp_ns = stamps[index] if stamps is not None else int(STAMP_START_S * NS_PER_S) + index * period_ns
            try:
                output = pipeline.process(rgb, stamp_ns, "camera", name)
            except FrameRejected as e:
                rejected += 1
                print(f"frame {name} rejected: {e}", file=sys.stderr)
                continue
            if seed is not None and index == 0:
                output.tracks.append(pipeline.seed_mask(seed, output.frame.stamp_ns))
            outputs.add_mask(index, output.label_image())
            outputs.add_overlay(index, render.overlay(rgb, output.visible_tracks()))
    finally:
        pipeline.close()
    elapsed = time.perf_counter() - start
    return {"mode": "direct", "seconds": round(elapsed, 2), "frames_rejected": rejected,
            "pipeline": dict(pipeline.stats)}


# ---- through the node and DDS ---------------------------------------------------------------
def _share_file(*parts: str) -> Optional[str]:
    try:
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory("steerseg_ros"), *parts)
    except Exception:
        path = Path(__file__).resolve().parents[2].joinpath(*parts)
    return str(path) if path.exists() else None


def _stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    # SIGINT, not SIGKILL: a killed DDS participant leaves its files in /dev/shm.
    if process.poll() is None:
        process.send_signal(2)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()


def _node_env(args: argparse.Namespace) -> tuple[int, dict[str, str]]:
    """The ROS domain and the environment for the node run's processes; this process's own
    environment takes the same DDS settings (its recorder joins them)."""
    domain = args.domain_id if args.domain_id is not None else random.SystemRandom().randint(1, 100)
    env = os.environ.copy()
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    profile = _share_file("config", "fastdds_shm.xml")
    if profile and "FASTDDS_DEFAULT_PROFILES_FILE" not in env:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = profile
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    if "FASTDDS_DEFAULT_PROFILES_FILE" in env:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = env["FASTDDS_DEFAULT_PROFILES_FILE"]
    return domain, env


class _StampIndex:
    """Input frame indices of the node's output stamps; counts the stamps no frame has and
    remembers when the last known one came."""

    def __init__(self, args: argparse.Namespace, source: FrameSource):
        self.period_ns = int(round(NS_PER_S / args.rate))
        self.start_ns = int(STAMP_START_S * NS_PER_S)
        self.last = time.monotonic()
        self.unknown = 0
        # A bag's frames keep their recorded stamps: look them up.
        self.bag_index = {stamp: i for i, stamp in enumerate(source.stamps())} if args.bag is not None else None

    def __call__(self, stamp_ns: int) -> Optional[int]:
        if self.bag_index is not None:
            index = self.bag_index.get(stamp_ns)
            if index is None:
                self.unknown += 1
                return None
            self.last = time.monotonic()
            return index
        offset = stamp_ns - self.start_ns
        index, rest = divmod(offset, self.period_ns)
        if rest or index < 0:
            self.unknown += 1
            return None
        self.last = time.monotonic()
        return int(index)


def _start_recorder(domain: int, index_of: _StampIndex, outputs: Outputs):
    """A node on its own context that records the `mask` and `overlay` topics into `outputs`,
    spun in a thread: (context, node, executor)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    from steerseg_msgs.msg import TrackArray
    from steerseg_ros.ros.image_conversion import image_to_array
    from steerseg_ros.ros.messages import stamp_to_ns
    from steerseg_ros.tools.demo_3d import track_rows

    def on_mask(msg) -> None:
        index = index_of(stamp_to_ns(msg.header.stamp))
        if index is not None:
            outputs.add_mask(index, np.array(image_to_array(msg)))

    def on_overlay(msg) -> None:
        index = index_of(stamp_to_ns(msg.header.stamp))
        if index is not None:
            outputs.add_overlay(index, np.array(image_to_array(msg)))

    def on_tracks(msg) -> None:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        index = index_of(stamp_ns)
        if index is not None:
            outputs.add_tracks(index, track_rows(index, stamp_ns, msg.tracks))

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
    recorder = rclpy.create_node("steerseg_demo_recorder", context=context)
    reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
    recorder.create_subscription(Image, "mask", on_mask, reliable)
    recorder.create_subscription(Image, "overlay", on_overlay, reliable)
    recorder.create_subscription(TrackArray, "tracks", on_tracks, reliable)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(recorder)
    spinner = threading.Thread(target=lambda: _spin(executor), daemon=True)
    spinner.start()
    return context, recorder, executor


def _write_node_params(args: argparse.Namespace, source: FrameSource, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """The tracker node's parameter file, and the --set parameters that go to the grounder node."""
    sets = parse_sets(args.sets)
    grounder_sets = {k: v for k, v in sets.items() if k.startswith("grounder.")} if args.grounding == "node" else {}
    params = {"autostart": True, "image_qos": "reliable",
              "grounder.backend": "remote" if args.grounding == "node" else args.grounder,
              "tracker.backend": args.tracker, "stats_period_s": 5.0,
              **{k: v for k, v in sets.items() if k not in grounder_sets}}
    if args.bag is not None and source.topics.colour_type.endswith("CompressedImage"):
        # steerseg-play sends a compressed colour stream on image/compressed, as recorded.
        params.setdefault("image_transport", "compressed")
    params_file = workdir / "params.yaml"
    params_file.write_text(yaml.safe_dump({"/**/steerseg": {"ros__parameters": params}}))
    return params_file, grounder_sets


def _start_grounder(args: argparse.Namespace, env: dict[str, str], workdir: Path, grounder_sets: dict[str, Any]):
    """The grounder node's process and its open log file."""
    grounder_file = workdir / "grounder_params.yaml"
    grounder_file.write_text(yaml.safe_dump({"/**/steerseg_grounder": {"ros__parameters": {
        "autostart": True, "grounder.backend": args.grounder, **grounder_sets}}}))
    grounder_log = open(args.out / "grounder.log", "wb")
    grounder = subprocess.Popen([sys.executable, "-m", "steerseg_ros.ros.grounder_node", "--ros-args",
                                 "--params-file", str(grounder_file)], env=env, stdout=grounder_log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return grounder, grounder_log


def _node_command(params_file: Path) -> list[str]:
    node_cmd = [sys.executable, "-m", "steerseg_ros.ros.tracker_node", "--ros-args"]
    defaults = _share_file("config", "steerseg.yaml")
    if defaults:
        node_cmd += ["--params-file", defaults]
    node_cmd += ["--params-file", str(params_file)]
    return node_cmd


def _wait_for_node(args: argparse.Namespace, recorder, node: subprocess.Popen) -> None:
    deadline = time.monotonic() + args.startup_timeout
    while recorder.count_publishers("/overlay") == 0:
        if node.poll() is not None:
            raise RuntimeError(f"the node exited ({node.returncode}) before coming up; see {args.out / 'node.log'}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the node did not come up in {args.startup_timeout:.0f} s; see {args.out / 'node.log'}")
        time.sleep(0.1)


def _play_command(args: argparse.Namespace) -> list[str]:
    play_cmd = [sys.executable, "-m", "steerseg_ros.tools.play", "--qos", "reliable",
                "--wait-subscribers", "30", "--manifest", str(args.out / "manifest.jsonl"), "--lockstep"]
    if args.bag is not None:
        # Colour, depth and camera_info go to the node's image, depth and camera_info inputs.
        play_cmd += ["--bag", str(args.bag)]
        if args.topics:
            play_cmd += ["--topics", *args.topics]
        if args.rate_given:
            play_cmd += ["--rate", str(args.rate)]
    else:
        play_cmd += ["--frames" if args.frames else "--video", str(args.frames or args.video),
                     "--rate", str(args.rate), "--stamp-start", str(STAMP_START_S)]
    if args.count is not None:
        play_cmd += ["--count", str(args.count)]
    if args.command is not None:
        play_cmd += ["--command", args.command, "--command-at", "0"]
    else:
        play_cmd += ["--seed-mask", str(args.seed_mask)]
    # The node runs without the launch file's remappings: the player's default (camera driver)
    # topics go to its own input names.
    from steerseg_ros.tools.play import to_node_inputs

    return play_cmd + to_node_inputs()


def _await_player(args: argparse.Namespace, player: subprocess.Popen, expected: int) -> int:
    """Waits for steerseg-play to finish; the number of frames it played."""
    limit = expected / args.rate * 3 + 120
    try:
        _, err = player.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"steerseg-play did not finish in {limit:.0f} s")
    if player.returncode != 0:
        raise RuntimeError(f"steerseg-play failed:\n{err.decode(errors='replace')[-2000:]}")
    return sum(1 for _ in open(args.out / "manifest.jsonl"))


def _await_outputs(outputs: Outputs, played: int, index_of: _StampIndex) -> None:
    # The node may still be working on the last frames: wait until outputs stop coming.
    quiet_deadline = time.monotonic() + 60.0
    while time.monotonic() < quiet_deadline:
        with outputs.lock:
            done = (played - 1) in outputs.masks and (played - 1) in outputs.tracks
        if done or time.monotonic() - index_of.last > 5.0:
            break
        time.sleep(0.1)


def run_node(args: argparse.Namespace, source: FrameSource, outputs: Outputs) -> dict[str, Any]:
    domain, env = _node_env(args)
    index_of = _StampIndex(args, source)
    context, recorder, executor = _start_recorder(domain, index_of, outputs)
    workdir = Path(tempfile.mkdtemp(prefix="steerseg-demo-"))
    params_file, grounder_sets = _write_node_params(args, source, workdir)
    grounder = grounder_log = None
    if args.grounding == "node":
        grounder, grounder_log = _start_grounder(args, env, workdir, grounder_sets)
    node_log = open(args.out / "node.log", "wb")
    node = subprocess.Popen(_node_command(params_file), env=env, stdout=node_log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    player = None
    summary: dict[str, Any] = {"mode": "node", "domain_id": domain, "node_log": str(args.out / "node.log")}
    try:
        _wait_for_node(args, recorder, node)
        play_cmd = _play_command(args)
        start = time.perf_counter()
        player = subprocess.Popen(play_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
        played = _await_player(args, player, len(source))
        _await_outputs(outputs, played, index_of)
        summary.update(seconds=round(time.perf_counter() - start, 2), frames_played=played,
                       masks_received=len(outputs.masks), overlays_received=len(outputs.overlays),
                       tracks_received=len(outputs.tracks),
                       unmatched_stamps=index_of.unknown)
        if len(outputs.masks) < played:
            summary["note"] = ("some frames got no mask within steerseg-play's --answer-timeout; "
                               f"see {args.out / 'node.log'}")
    finally:
        if player is not None and player.poll() is None:
            _stop(player)
        _stop(node)
        node_log.close()
        if grounder is not None:
            _stop(grounder)
            grounder_log.close()
        executor.shutdown(timeout_sec=2.0)
        recorder.destroy_node()
        context.try_shutdown()
    return summary


def _spin(executor) -> None:
    try:
        executor.spin()
    except Exception:  # shut down from the main thread
        pass


def score(ground_truth: Path, names: list[str], masks_dir: Path) -> dict[str, float]:
    from steerseg_ros.offline import metrics

    preds, gts = [], []
    for name in names:
        gt = cv2.imread(str(ground_truth / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        if gt is None:
            continue
        gts.append(gt > 127)
        preds.append(cv2.imread(str(masks_dir / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 0)
    if not gts:
        raise SystemExit(f"no ground-truth masks named like the frames in {ground_truth}")
    s = metrics.score_object("demo", 1, preds, gts)
    return {"J": round(s.j, 4), "F": round(s.f, 4), "J&F": round(s.jf, 4), "scored_frames": s.frames}


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.rate_given = args.rate is not None
    if args.rate_given and args.rate <= 0:
        raise SystemExit("--rate must be > 0")
    if args.topics and args.bag is None:
        raise SystemExit("--topics goes with --bag")
    if args.bag is not None:
        from steerseg_ros.offline.bags import BagError, BagFrameSource, find_topics

        try:
            source = BagFrameSource(args.bag, find_topics(args.bag, args.topics), limit=args.count)
        except BagError as e:
            raise SystemExit(str(e))
        if not args.rate_given:
            stamps = source.stamps()
            span = (stamps[-1] - stamps[0]) / NS_PER_S if len(stamps) > 1 else 0.0
            args.rate = (len(stamps) - 1) / span if span > 0 else 10.0
    else:
        args.rate = args.rate if args.rate_given else 10.0
        source = FrameSource(frames=args.frames, video=args.video, limit=args.count)
    args.out.mkdir(parents=True, exist_ok=True)
    outputs = Outputs(args.out)
    summary = run_direct(args, source, outputs) if args.direct else run_node(args, source, outputs)
    written = outputs.write(source, args.rate)
    names = written.pop("names")
    summary.update(written)
    if not args.direct:
        from steerseg_ros.tools.demo_3d import write_3d

        summary.update(write_3d(args.out, outputs.tracks, names))
    if args.ground_truth is not None:
        summary["score"] = score(args.ground_truth, names, args.out / "masks")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
