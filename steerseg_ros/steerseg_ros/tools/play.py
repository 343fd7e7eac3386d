"""steerseg-play: publish a folder of frames, a video file or a ROS 2 bag as camera topics.

Owns the player used by the tests, the demo and anyone without a camera: frames go out as
sensor_msgs/Image (or CompressedImage for jpeg/png) at a fixed rate with increasing stamps,
optionally looping; a std_msgs/String command goes out at a given time, and optionally a seed
mask (mono8, stamped with the first frame's stamp) for tracking without a command. A manifest
(one JSON line per published frame: index, name, stamp_ns) lets a recorder match outputs to
input frames by stamp. With --lockstep it publishes the next frame only once the node has
answered the previous one (its mask came back), so every frame is processed however slow the
machine is: for tests and evaluations, not for rate measurements (steerseg-bench).

    steerseg-play --frames DIR --rate 10 --command "the black swan" --command-at 1.0
    steerseg-play --bag recording.mcap [--topics COLOUR DEPTH CAMERA_INFO] [--rate R]

A bag (a rosbag2 folder, or one .mcap/.db3 file; read with `rosbags`, no ROS bag tools needed)
replays its colour image, depth image and camera_info topics on /camera/image_raw,
/camera/depth_registered/image_raw and /camera/camera_info (the launch file's defaults, what a
camera driver publishes; --topic, --depth-topic, --camera-info-topic rename them) as the recorded bytes, so header stamps and frame ids are the recorded ones. Timing is
the recorded one (log times), or scaled so the colour topic runs at --rate frames per second.
Without --topics the colour, depth and camera_info topics are found by type and encoding.
With --loop, each later pass goes out with every stamp (all three topics alike) moved on by
the bag's length plus one colour frame period, so a node sees time go forward and depth keeps
its colour partner; a --seed-mask goes out with the first colour frame's stamp and frame id.

Ctrl-C ends any mode with exit code 0: the player handles SIGINT itself (see main).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import cv2

from steerseg_ros.offline.sources import FrameSource

RAW_ENCODINGS = ("bgr8", "rgb8", "bgra8", "rgba8", "mono8")
# Where frames go by default: the launch file's defaults, the names of a camera driver's topics
# (image_pipeline's `camera` namespace, depth registered to the colour camera), so that a plain
# `ros2 launch steerseg_ros steerseg.launch.py` hears a plain `steerseg-play`. The node's own
# names are relative (image, depth, camera_info): launch remaps them to these.
IMAGE_TOPIC = "/camera/image_raw"
DEPTH_TOPIC = "/camera/depth_registered/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"


def to_node_inputs() -> list[str]:
    """ROS arguments for the player that send its default topics to a node started without the
    launch file's remappings (`steerseg_node`, as the demo and the tests run it), which listens
    on its own relative names: image, image/compressed, depth, camera_info."""
    names = ((IMAGE_TOPIC, "image"), (f"{IMAGE_TOPIC}/compressed", "image/compressed"),
             (DEPTH_TOPIC, "depth"), (CAMERA_INFO_TOPIC, "camera_info"))
    return ["--ros-args"] + [arg for ours, node in names for arg in ("-r", f"{ours}:={node}")]
COMPRESSED_ENCODINGS = ("jpeg", "png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerseg-play", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--frames", type=Path, help="folder of images, published in name order")
    source.add_argument("--video", type=Path, help="video file (anything OpenCV reads)")
    source.add_argument("--bag", type=Path, help="ROS 2 bag (folder, .mcap or .db3): replay colour, depth, camera_info")
    parser.add_argument("--topics", nargs="+", default=None, metavar="TOPIC",
                        help="with --bag: the bag topics to replay (colour, and optionally depth and camera_info)")
    parser.add_argument("--rate", type=float, default=None,
                        help="frames per second (default 10; with --bag: the recorded rate)")
    parser.add_argument("--count", type=int, default=None, help="publish only the first COUNT frames")
    parser.add_argument("--loop", action="store_true", help="start over after the last frame (stamps keep increasing: a bag's "
                        "later passes are shifted by its length plus one frame period)")
    parser.add_argument("--loops", type=int, default=0, help="with --loop, stop after this many passes (0: until Ctrl-C)")
    parser.add_argument("--topic", default=None,
                        help=f"image topic (default: {IMAGE_TOPIC}, or {IMAGE_TOPIC}/compressed for jpeg/png)")
    parser.add_argument("--depth-topic", default=DEPTH_TOPIC, help="with --bag: the topic depth images go out on")
    parser.add_argument("--camera-info-topic", default=CAMERA_INFO_TOPIC,
                        help="with --bag: the topic camera_info goes out on")
    parser.add_argument("--encoding", default="bgr8", choices=RAW_ENCODINGS + COMPRESSED_ENCODINGS)
    parser.add_argument("--frame-id", default="camera", help="header.frame_id of every frame")
    parser.add_argument("--qos", default="sensor_data", choices=("sensor_data", "reliable"), help="QoS of the image topic")
    parser.add_argument("--stamp-start", type=float, default=None,
                        help="stamp of the first frame in seconds (default: the wall clock at start)")
    parser.add_argument("--command", default=None, help="text published on the command topic")
    parser.add_argument("--command-at", type=float, default=0.0,
                        help="seconds after the first frame at which the command is published")
    parser.add_argument("--command-topic", default="command")
    parser.add_argument("--seed-mask", type=Path, default=None,
                        help="PNG mask (nonzero: the object) published as mono8 on --seed-topic with the first frame's stamp")
    parser.add_argument("--seed-topic", default="seed_mask")
    parser.add_argument("--wait-subscribers", type=float, default=10.0,
                        help="wait up to this many seconds for a subscriber on each topic before the first frame (0: no wait)")
    parser.add_argument("--min-subscribers", type=int, default=1,
                        help="the number of subscribers to wait for on the camera image topic (e.g. 2: the "
                             "tracker and the drawing node), up to --wait-subscribers seconds")
    parser.add_argument("--wait-all", action="store_true",
                        help="with --bag: wait for subscribers on depth and camera_info too, not only on the image")
    parser.add_argument("--linger", type=float, default=1.0,
                        help="seconds to stay up after the last message so reliable subscribers get everything")
    parser.add_argument("--manifest", type=Path, default=None, help="write one JSON line per published frame here")
    parser.add_argument("--lockstep", action="store_true",
                        help="publish the next frame only once the previous one's answer (a message with its "
                             "stamp on --answer-topic) arrived, or --answer-timeout passed; --rate stays the "
                             "fastest pace")
    parser.add_argument("--answer-topic", default="mask", help="with --lockstep: the node's output to wait for")
    parser.add_argument("--hold-while-grounding", action="store_true",
                        help="with --lockstep: also wait, after each answer, until the node's /diagnostics say "
                             "no grounding is running (needs the node's stats_period_s > 0; a small one is "
                             "faster): a grounding then starts and ends on the same frames on any machine")
    parser.add_argument("--answer-timeout", type=float, default=60.0,
                        help="with --lockstep: seconds to wait for one frame's answer before going on")
    return parser


def _unheard(publishers, images: int = 1) -> str:
    """The topics of `publishers` with fewer subscribers than waited for (as _wait_for_subscribers
    counts them), named as resolved, so that a user sees which of their topics is wrong."""
    short = [(p, images if i == 0 else 1) for i, p in enumerate(publishers)]
    return ", ".join(f"{p.topic_name} ({p.get_subscription_count()} of {need})" for p, need in short
                     if p.get_subscription_count() < need) or "(every topic has one now)"


def _wait_for_subscribers(publishers, timeout: float, images: int = 1) -> bool:
    """Wait until every publisher has a subscriber, the camera image publisher (the first)
    `images` of them (--min-subscribers)."""
    def heard() -> bool:
        return all(p.get_subscription_count() >= (images if i == 0 else 1) for i, p in enumerate(publishers))

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if heard():
            return True
        time.sleep(0.05)
    return heard()


class _Answers:
    """The stamps of the messages the node published on one topic (its answers to frames),
    received by spinning `node` while waiting."""

    def __init__(self, node, topic: str):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from steerseg_ros.ros.messages import stamp_to_ns

        self._node = node
        self._stamps: set[int] = set()
        self._sub = node.create_subscription(
            Image, topic, lambda m: self._stamps.add(stamp_to_ns(m.header.stamp)),
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self._idle_after = -1  # the newest frame stamp the node reported with no grounding running
        self._diagnostics = node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._executor = SingleThreadedExecutor(context=node.context)
        self._executor.add_node(node)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if values.get("grounding_running") == "false" and "last_frame_stamp_ns" in values:
                self._idle_after = max(self._idle_after, int(values["last_frame_stamp_ns"]))

    def _spin_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Spin the answers' node until `done()` or `timeout` seconds; whether it is done."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self._executor.spin_once(timeout_sec=0.05)
        return done()

    def wait_idle(self, stamp_ns: int, timeout: float) -> bool:
        """Until the node reports, after processing the frame at `stamp_ns`, that no grounding
        is running."""
        return self._spin_until(lambda: self._idle_after >= stamp_ns, timeout)

    def wait_for_publisher(self, timeout: float) -> bool:
        return self._spin_until(lambda: self._sub.get_publisher_count() > 0, timeout)

    def spin_for(self, seconds: float) -> None:
        self._spin_until(lambda: False, seconds)

    def wait_for(self, stamp_ns: int, timeout: float) -> bool:
        found = self._spin_until(lambda: stamp_ns in self._stamps, timeout)
        self._stamps = {s for s in self._stamps if s > stamp_ns}  # bounded: older answers are done
        return found

    def close(self) -> None:
        self._executor.remove_node(self._node)
        self._executor.shutdown()
        self._node.destroy_subscription(self._sub)
        self._node.destroy_subscription(self._diagnostics)


def play(args: argparse.Namespace, node) -> int:
    """Publish with `node` (an rclpy node) as the options say; returns the frames published."""
    if args.bag is not None:
        return play_bag(args, node)
    from steerseg_ros.ros.image_conversion import rgb_to_compressed, rgb_to_image
    from steerseg_ros.ros.messages import header_at

    compressed = args.encoding in COMPRESSED_ENCODINGS
    topic = args.topic or (f"{IMAGE_TOPIC}/compressed" if compressed else IMAGE_TOPIC)
    image_pub, command_pub, seed_pub = _frame_publishers(args, node, topic, compressed)
    log = node.get_logger()
    source = FrameSource(frames=args.frames, video=args.video, limit=args.count)
    seed = _read_seed_mask(args.seed_mask) if args.seed_mask is not None else None
    answers = _wait_for_listeners(args, node, [p for p in (image_pub, command_pub, seed_pub) if p is not None])

    if args.rate is None:
        args.rate = 10.0
    period_ns = int(round(1e9 / args.rate))
    start_ns = int(args.stamp_start * 1e9) if args.stamp_start is not None else time.time_ns()
    manifest = open(args.manifest, "w") if args.manifest is not None else None
    command = _Command(args, command_pub, log)
    published = 0
    t0 = time.monotonic()
    try:
        passes = 0
        while True:
            for name, bgr in source:
                _sleep_until(t0 + published / args.rate)
                stamp_ns = start_ns + published * period_ns
                header = header_at(stamp_ns, args.frame_id)
                if seed is not None and published == 0:
                    t0 += _send_seed(seed_pub, seed, bgr, header, args.rate)
                command.send_when_due(time.monotonic() - t0)
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                msg = rgb_to_compressed(rgb, args.encoding, header) if compressed else rgb_to_image(rgb, args.encoding, header)
                image_pub.publish(msg)
                if answers is not None:
                    _await_answer(answers, stamp_ns, args, log)
                _record(manifest, published, name, stamp_ns)
                published += 1
            passes += 1
            if not args.loop or (args.loops and passes >= args.loops):
                break
        _finish(args, command)
    finally:
        _close(manifest, answers)
    log.info(f"published {published} frames on {node.resolve_topic_name(topic)}")
    return published


def _frame_publishers(args: argparse.Namespace, node, topic: str, compressed: bool):
    """The image publisher, and the command and seed mask publishers (None when not asked for)."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import String

    image_qos = qos_profile_sensor_data if args.qos == "sensor_data" else QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(CompressedImage if compressed else Image, topic, image_qos)
    command_pub = node.create_publisher(String, args.command_topic, reliable) if args.command is not None else None
    return image_pub, command_pub, _seed_publisher(args, node)


def _seed_publisher(args: argparse.Namespace, node):
    """The seed mask publisher (reliable: it is sent once), or None without --seed-mask."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    if args.seed_mask is None:
        return None
    return node.create_publisher(Image, args.seed_topic, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))


def _read_seed_mask(path: Path):
    """The seed mask as mono8 (0 or 255)."""
    seed = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if seed is None:
        raise FileNotFoundError(f"cannot read the seed mask {path}")
    return ((seed > 0) * 255).astype("uint8")


def _wait_for_listeners(args: argparse.Namespace, node, publishers) -> Optional[_Answers]:
    """Waits (--wait-subscribers) for subscribers on `publishers` and, with --lockstep, for the
    node's answer topic; the answers to wait for in lockstep, or None."""
    log = node.get_logger()
    if args.wait_subscribers > 0 and not _wait_for_subscribers(publishers, args.wait_subscribers, args.min_subscribers):
        log.warning(f"no subscriber on {_unheard(publishers, args.min_subscribers)} after "
                    f"{args.wait_subscribers:.1f} s; publishing anyway")
    return _answers_heard(args, node) if args.lockstep else None


def _answers_heard(args: argparse.Namespace, node) -> _Answers:
    """The lockstep answers' subscription, once the node's answer publisher is matched."""
    answers = _Answers(node, args.answer_topic)
    if not answers.wait_for_publisher(max(args.wait_subscribers, 1.0)):
        node.get_logger().warning(f"nothing publishes {node.resolve_topic_name(args.answer_topic)} after "
                                  f"{args.wait_subscribers:.1f} s; --lockstep waits for answers anyway")
    else:
        # Matching is two-sided: our reader has seen the node's writer, the writer may not have seen
        # our reader yet, and an answer it sends before then is lost (a whole --answer-timeout
        # wasted on the first frame). The other side's discovery message is in flight by now.
        answers.spin_for(0.5)
    return answers


def _sleep_until(due: float) -> None:
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _send_seed(seed_pub, seed, bgr, header, rate: float) -> float:
    """Publishes the seed mask for the first frame; returns the pause taken after it."""
    from steerseg_ros.ros.image_conversion import array_to_image

    if seed.shape != bgr.shape[:2]:
        raise ValueError(f"seed mask is {seed.shape[::-1]}, the first frame {bgr.shape[1::-1]}")
    # Sent just before its frame: the node holds it until that frame arrives.
    # The short pause lets it get there first (else it is applied, caught up,
    # from the next frame on).
    seed_pub.publish(array_to_image(seed, "mono8", header))
    time.sleep(min(0.2, 1.0 / rate))
    return min(0.2, 1.0 / rate)


class _Command:
    """The --command, published once --command-at seconds into playback (or after the last
    frame, see _finish)."""

    def __init__(self, args: argparse.Namespace, publisher, log):
        self.args = args
        self.publisher = publisher
        self.log = log
        self.sent = publisher is None

    def send_when_due(self, elapsed_s: float) -> None:
        from std_msgs.msg import String

        if not self.sent and elapsed_s >= self.args.command_at:
            self.publisher.publish(String(data=self.args.command))
            self.sent = True
            self.log.info(f"command: {self.args.command!r}")


def _await_answer(answers: _Answers, stamp_ns: int, args: argparse.Namespace, log) -> None:
    """In lockstep: waits for the node's answer to the frame at `stamp_ns` (and, with
    --hold-while-grounding, for its grounding to end); warns when it does not come."""
    if not answers.wait_for(stamp_ns, args.answer_timeout):
        log.warning(f"no answer for the frame at {stamp_ns / 1e9:.6f} s within {args.answer_timeout:.0f} s")
    elif args.hold_while_grounding and not answers.wait_idle(stamp_ns, args.answer_timeout):
        log.warning(f"the node still grounds {args.answer_timeout:.0f} s after the frame at {stamp_ns / 1e9:.6f} s")


def _record(manifest, index: int, name: str, stamp_ns: int) -> None:
    """One published frame in the manifest (when one is written), flushed at once so that a
    reader sees it while playback goes on."""
    if manifest is not None:
        manifest.write(json.dumps({"index": index, "name": name, "stamp_ns": stamp_ns}) + "\n")
        manifest.flush()


def _finish(args: argparse.Namespace, command: _Command) -> None:
    """After the last frame: a command due after it still goes out, then --linger."""
    from std_msgs.msg import String

    if not command.sent:
        command.publisher.publish(String(data=args.command))
    if args.linger > 0:
        time.sleep(args.linger)


def _close(manifest, answers) -> None:
    if manifest is not None:
        manifest.close()
    if answers is not None:
        answers.close()


def play_bag(args: argparse.Namespace, node) -> int:
    """Replay a bag's colour, depth and camera_info messages (raw, stamps as recorded; with
    --loop, each later pass shifted by the bag's length); returns the colour frames published."""
    from steerseg_ros.offline.bags import find_topics, read_bag

    topics = find_topics(args.bag, args.topics)
    log = node.get_logger()
    pubs, out, command_pub = _bag_publishers(args, node, topics)
    seed_pub = _seed_publisher(args, node)
    seed = _read_seed_mask(args.seed_mask) if args.seed_mask is not None else None
    _wait_for_bag_listeners(args, node, topics, out, pubs, [p for p in (command_pub, seed_pub) if p is not None])

    scale = _bag_time_scale(args, topics) if args.rate is not None else 1.0
    stamp_shift, log_shift = _bag_loop_shift(args, topics) if args.loop else (0, 0)
    answers = _answers_heard(args, node) if args.lockstep else None
    manifest = open(args.manifest, "w") if args.manifest is not None else None
    command = _Command(args, command_pub, log)
    replay = _BagReplay(args, pubs, answers, manifest, command, scale, log)
    replay.seed, replay.seed_pub = seed, seed_pub
    try:
        passes = 0
        while True:
            replay.one_pass(read_bag(args.bag, topics), passes * stamp_shift, passes * log_shift)
            passes += 1
            if not args.loop or (args.loops and passes >= args.loops):
                break
        replay.await_last_answer()
        _finish(args, command)
    finally:
        _close(manifest, answers)
    counts = replay.counts
    log.info(f"published {counts['colour']} colour, {counts['depth']} depth, {counts['camera_info']} camera_info "
             f"messages from {args.bag}" + (f" in {passes} passes" if args.loop else ""))
    return counts["colour"]


class _BagReplay:
    """Publishes a bag's messages pass after pass at the recorded pace (scaled), keeping the
    counts, the manifest and, in lockstep, the colour frame whose answer is awaited."""

    def __init__(self, args: argparse.Namespace, pubs, answers, manifest, command: _Command, scale: float, log):
        self.args, self.pubs, self.answers, self.manifest = args, pubs, answers, manifest
        self.command, self.scale, self.log = command, scale, log
        self.seed = self.seed_pub = None
        self.counts = {"colour": 0, "depth": 0, "camera_info": 0}
        self.t0 = time.monotonic()
        self.first_log: Optional[int] = None
        # In lockstep the answer for a colour frame is awaited just before the next colour
        # frame goes out, so the depth and camera_info recorded after it still reach the node first.
        self.unanswered: Optional[int] = None

    def one_pass(self, messages, stamp_shift: int, log_shift: int) -> None:
        """One pass over the bag: stamps and log times moved on by the shifts (0 the first time)."""
        colour = 0
        for m in messages:
            if m.role == "colour" and self.args.count is not None and colour >= self.args.count:
                break
            if m.role == "colour":
                self.await_last_answer()
            self.first_log = m.log_ns if self.first_log is None else self.first_log
            _sleep_until(self.t0 + (m.log_ns + log_shift - self.first_log) / 1e9 / self.scale)
            self.command.send_when_due(time.monotonic() - self.t0)
            stamp_ns = m.stamp_ns + stamp_shift
            if m.role == "colour" and self.seed is not None and self.counts["colour"] == 0:
                from steerseg_ros.ros.messages import header_at

                self.t0 += _send_seed(self.seed_pub, self.seed, m.image(), header_at(stamp_ns, m.frame_id),
                                      self.args.rate or 10.0)
            self.pubs[m.role].publish(m.restamped(stamp_ns) if stamp_shift else m.raw)
            if m.role == "colour":
                self.unanswered = stamp_ns
                _record(self.manifest, self.counts["colour"], f"{self.counts['colour']:05d}", stamp_ns)
                colour += 1
            self.counts[m.role] += 1

    def await_last_answer(self) -> None:
        if self.answers is not None and self.unanswered is not None:
            _await_answer(self.answers, self.unanswered, self.args, self.log)
            self.unanswered = None


def _bag_loop_shift(args: argparse.Namespace, topics) -> tuple[int, int]:
    """How far each --loop pass moves the stamps and the log times on: the span of the replayed
    messages (every topic, the first --count colour frames) plus one colour frame period, so
    that every topic's stamps keep increasing across the loop and depth keeps its colour partner."""
    from steerseg_ros.offline.bags import read_bag

    stamps, logs, colour_stamps, colour_logs = [], [], [], []
    for m in read_bag(args.bag, topics):
        if m.role == "colour":
            if args.count is not None and len(colour_stamps) >= args.count:
                break
            colour_stamps.append(m.stamp_ns)
            colour_logs.append(m.log_ns)
        stamps.append(m.stamp_ns)
        logs.append(m.log_ns)

    def period(values: list[int]) -> int:  # one colour frame period; 0.1 s for a one-frame bag
        return (values[-1] - values[0]) // (len(values) - 1) if len(values) > 1 and values[-1] > values[0] \
            else 100_000_000

    return (max(stamps) - min(stamps) + period(colour_stamps), max(logs) - min(logs) + period(colour_logs))


def _bag_publishers(args: argparse.Namespace, node, topics):
    """Publishers for the bag's colour and (where it has them) depth and camera_info topics,
    by role; the topic each role goes out on; the command publisher (None without --command)."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
    from std_msgs.msg import String

    from steerseg_ros.offline.bags import COMPRESSED

    qos = qos_profile_sensor_data if args.qos == "sensor_data" else QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    compressed = topics.colour_type == COMPRESSED
    out = {"colour": args.topic or (f"{IMAGE_TOPIC}/compressed" if compressed else IMAGE_TOPIC),
           "depth": args.depth_topic, "camera_info": args.camera_info_topic}
    pubs = {"colour": node.create_publisher(CompressedImage if compressed else Image, out["colour"], qos)}
    if topics.depth:
        pubs["depth"] = node.create_publisher(Image, out["depth"], qos)
    if topics.camera_info:
        pubs["camera_info"] = node.create_publisher(CameraInfo, out["camera_info"], qos)
    command_pub = node.create_publisher(String, args.command_topic, reliable) if args.command is not None else None
    return pubs, out, command_pub


def _wait_for_bag_listeners(args: argparse.Namespace, node, topics, out, pubs, reliable_pubs) -> None:
    """Logs which bag topic goes out where, then waits (--wait-subscribers) for subscribers."""
    log = node.get_logger()
    log.info(f"bag {args.bag}: " + ", ".join(f"{t} -> {node.resolve_topic_name(out[r])}" for r, t in
                                             (("colour", topics.colour), ("depth", topics.depth),
                                              ("camera_info", topics.camera_info)) if t))
    # By default only the colour topic (and the command) must be heard: a node without depth
    # input still runs. --wait-all waits for depth and camera_info subscribers too.
    waited = list(pubs.values()) if args.wait_all else [pubs["colour"]]
    waited += reliable_pubs  # the command and the seed mask
    if args.wait_subscribers > 0 and not _wait_for_subscribers(waited, args.wait_subscribers, args.min_subscribers):
        log.warning(f"no subscriber on {_unheard(waited, args.min_subscribers)} after "
                    f"{args.wait_subscribers:.1f} s; publishing anyway")


def _bag_time_scale(args: argparse.Namespace, topics) -> float:
    """How much faster than recorded to play so the colour topic runs at --rate: the recorded
    colour rate comes from the colour frames' log times."""
    from steerseg_ros.offline.bags import read_bag

    scale = 1.0
    first = last = None
    n = 0
    for m in read_bag(args.bag, type(topics)(colour=topics.colour, colour_type=topics.colour_type)):
        first = m.log_ns if first is None else first
        last = m.log_ns
        n += 1
        if args.count is not None and n >= args.count:
            break
    if n > 1 and last > first:
        scale = args.rate / ((n - 1) * 1e9 / (last - first))
    return scale


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # ROS arguments (--ros-args -r image:=/camera/image_raw ...) go to rclpy, the rest to us.
    ours = argv[:argv.index("--ros-args")] if "--ros-args" in argv else argv
    args = build_parser().parse_args(ours)
    if args.rate is not None and args.rate <= 0:
        raise SystemExit("--rate must be > 0")
    if args.topics and args.bag is None:
        raise SystemExit("--topics goes with --bag")
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions

    # Ctrl-C is ours, not rclpy's: rclpy's handler shuts the context down at once, so a publish
    # in progress fails ("publisher's context is invalid", a traceback and exit code 1). Python's
    # own handler raises KeyboardInterrupt where the player is, and the node then goes down in
    # order: exit code 0, nothing on stderr.
    node = None
    try:
        rclpy.init(args=["steerseg-play"] + argv, signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node("steerseg_play")
        play(args, node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break the teardown
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
