"""ROS 2 bags: the synthetic RGB-D scene written as a bag and read back (.mcap and .db3), and
replayed over DDS by `steerseg-play --bag` with the recorded stamps."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="needs rosbags (requirements/python.txt)")

from steerseg_ros.offline.bags import (CAMERA_INFO_TOPIC, COLOUR_TOPIC, DEPTH_TOPIC, BagError, BagFrameSource,  # noqa: E402
                                       BagTopics, camera_info_fields, find_topics, read_bag)
from steerseg_testing.synthetic_rgbd import write_scene_bag  # noqa: E402
from steerseg_ros.depth import CameraModel, DepthPairer, depth_to_metres  # noqa: E402

N = 6


@pytest.fixture(scope="module")
def scene(davis_root):
    from steerseg_testing.synthetic_rgbd import CORRUPTIONS, SceneConfig, SyntheticRGBDScene

    return SyntheticRGBDScene(SceneConfig(n_frames=N, corruptions=CORRUPTIONS), davis_root=davis_root)


@pytest.fixture(scope="module")
def frames(scene):
    return list(scene)


@pytest.mark.parametrize("storage,depth_encoding,colour_encoding",
                         [("mcap", "16UC1", "rgb8"), ("sqlite3", "32FC1", "bgr8")])
def test_bag_round_trip(tmp_path, scene, frames, storage, depth_encoding, colour_encoding):
    bag = tmp_path / "scene"
    written = write_scene_bag(bag, scene, storage=storage, depth_encoding=depth_encoding,
                              colour_encoding=colour_encoding)
    assert written["colour"] == [f.stamp_ns for f in frames] == written["depth"] == written["camera_info"]
    files = [p.name for p in bag.iterdir()]
    assert "metadata.yaml" in files and any(n.endswith(".mcap" if storage == "mcap" else ".db3") for n in files)
    # The storage file alone reads too (what a user passing the .mcap gets).
    single = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    for path in (bag, single):
        assert find_topics(path) == BagTopics(COLOUR_TOPIC, DEPTH_TOPIC, CAMERA_INFO_TOPIC)
    got = {"colour": [], "depth": [], "camera_info": []}
    for m in read_bag(bag):
        got[m.role].append(m)
    assert [m.stamp_ns for m in got["colour"]] == [f.stamp_ns for f in frames]
    assert [m.stamp_ns for m in got["depth"]] == [f.stamp_ns for f in frames]
    for m, f in zip(got["colour"], frames):
        np.testing.assert_array_equal(m.image(), f.rgb)
        assert m.msg.encoding == colour_encoding and m.frame_id == scene.camera.frame_id
    for m, f in zip(got["depth"], frames):
        depth = m.image()
        if depth_encoding == "16UC1":
            np.testing.assert_array_equal(depth, f.depth_mm)
        else:
            np.testing.assert_array_equal(depth_to_metres(depth, "32FC1"), f.depth_m)  # NaN == NaN here
    cam = CameraModel.from_camera_info_fields(**camera_info_fields(got["camera_info"][0].msg))
    np.testing.assert_array_equal(cam.K, scene.camera.K)
    np.testing.assert_array_equal(cam.D, scene.camera.D)
    assert (cam.width, cam.height, cam.distortion_model, cam.frame_id) == (640, 480, "plumb_bob", scene.camera.frame_id)
    # Recorded order: by log time, camera_info, colour and depth of a frame before the next frame's.
    order = [m.log_ns for m in read_bag(bag)]
    assert order == sorted(order)
    source = BagFrameSource(bag)
    assert len(source) == N and source.stamps() == [f.stamp_ns for f in frames]
    np.testing.assert_array_equal(next(iter(source))[1], frames[0].bgr)


def test_bag_pairing_at_another_rate_with_offsets(tmp_path, scene, frames):
    """Depth for every other frame, stamped 4 ms late and logged 20 ms late, one dropped: the
    pairer pairs each colour frame read from the bag with its own depth or none."""
    bag = tmp_path / "rate"
    write_scene_bag(bag, scene, depth_offset_ns=4_000_000, depth_every=2, drop_depth=[4],
                    depth_latency_ns=20_000_000)
    pairer = DepthPairer(tolerance_ns=10_000_000, capacity=4)
    pending, paired = [], {}
    for m in read_bag(bag):
        if m.role == "depth":
            pairer.add(m.stamp_ns, m.stamp_ns)
        elif m.role == "colour":
            pending.append(m.stamp_ns)
        # A colour frame is decided once the depth that could pair with it has had time to come.
        while pending and m.log_ns >= pending[0] + 20_000_000:
            c = pending.pop(0)
            paired[c] = pairer.take(c)
    for c in pending:
        paired[c] = pairer.take(c)
    expected = {f.stamp_ns: (f.stamp_ns + 4_000_000 if f.index % 2 == 0 and f.index != 4 else None) for f in frames}
    assert paired == expected


def test_bag_errors(tmp_path, scene):
    with pytest.raises(BagError, match="does not exist"):
        find_topics(tmp_path / "nothing")
    bag = tmp_path / "scene"
    write_scene_bag(bag, scene)
    with pytest.raises(BagError, match="not in the bag"):
        find_topics(bag, ["/no/such/topic"])
    with pytest.raises(FileExistsError):
        write_scene_bag(bag, scene)
    only_colour = find_topics(bag, [COLOUR_TOPIC])
    assert only_colour.depth is None and only_colour.camera_info is None
    assert {m.role for m in read_bag(bag, only_colour)} == {"colour"}


def test_synthetic_rgbd_command(tmp_path, davis_root):
    from steerseg_testing import write_synthetic_bag as synthetic_rgbd

    bag, truth = tmp_path / "cli", tmp_path / "truth.jsonl"
    assert synthetic_rgbd.main(["--out", str(bag), "--frames", "3", "--davis", str(davis_root), "--truth", str(truth),
                                "--storage", "sqlite3", "--depth-encoding", "32FC1"]) == 0
    lines = [json.loads(line) for line in truth.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert 0.99 <= lines[0]["position"][2] <= 2.01
    assert [m.stamp_ns for m in read_bag(bag) if m.role == "colour"] == [line["stamp_ns"] for line in lines]


# ---- steerseg-play --bag over DDS -------------------------------------------------------------

@pytest.mark.ros
@pytest.mark.timeout(300)
def test_play_bag_over_dds(tmp_path, scene, frames, domain):
    """Without topic options the bag goes out on the launch file's default topics (a camera
    driver's), so that a plain `ros2 launch` hears a plain `steerseg-play --bag`."""
    pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CameraInfo, Image

    import ros_processes
    from steerseg_ros.ros.messages import stamp_to_ns
    from steerseg_ros.tools.play import CAMERA_INFO_TOPIC, DEPTH_TOPIC, IMAGE_TOPIC

    bag = tmp_path / "scene"
    write_scene_bag(bag, scene)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("bag_test_subscriber", context=context)
    got = {"image": [], "depth": [], "camera_info": []}
    lock = threading.Lock()

    def keep(topic):
        def on(msg):
            with lock:
                got[topic].append(msg)
        return on

    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, IMAGE_TOPIC, keep("image"), qos)
    node.create_subscription(Image, DEPTH_TOPIC, keep("depth"), qos)
    node.create_subscription(CameraInfo, CAMERA_INFO_TOPIC, keep("camera_info"), qos)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    env = ros_processes.ros_env(domain)
    play = ros_processes.Process(["steerseg-play", "--bag", str(bag), "--qos", "reliable", "--rate", "15",
                                  "--wait-subscribers", "60", "--wait-all", "--manifest", str(tmp_path / "m.jsonl")],
                                 env, tmp_path / "play.log")
    try:
        assert play.wait(180.0) == 0, play.text()[-3000:]
        assert ros_processes.wait_until(lambda: all(len(v) == N for v in got.values()), 60.0), \
            {k: len(v) for k, v in got.items()}
    finally:
        play.stop()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        context.try_shutdown()
    stamps = [f.stamp_ns for f in frames]
    assert [stamp_to_ns(m.header.stamp) for m in got["image"]] == stamps
    assert [stamp_to_ns(m.header.stamp) for m in got["depth"]] == stamps
    assert [stamp_to_ns(m.header.stamp) for m in got["camera_info"]] == stamps
    for m, f in zip(got["image"], frames):
        assert (m.encoding, m.width, m.height) == ("rgb8", 640, 480)
        np.testing.assert_array_equal(np.frombuffer(bytes(m.data), np.uint8).reshape(480, 640, 3), f.rgb)
    for m, f in zip(got["depth"], frames):
        assert m.encoding == "16UC1"
        np.testing.assert_array_equal(np.frombuffer(bytes(m.data), np.uint16).reshape(480, 640), f.depth_mm)
    assert list(got["camera_info"][0].k) == [float(v) for v in scene.camera.K.ravel()]
    manifest = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [line["stamp_ns"] for line in manifest] == stamps


# ---- steerseg-demo --bag ----------------------------------------------------------------------

def test_demo_bag_direct(tmp_path, scene, frames):
    import cv2

    from steerseg_ros.tools import demo

    bag = tmp_path / "scene"
    write_scene_bag(bag, scene)
    seed = tmp_path / "seed.png"
    cv2.imwrite(str(seed), frames[0].mask_true.astype(np.uint8) * 255)
    out = tmp_path / "direct"
    assert demo.main(["--bag", str(bag), "--seed-mask", str(seed), "--direct", "--out", str(out)]) == 0
    names = [f"{i:05d}" for i in range(N)]
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == names
    first = cv2.imread(str(out / "masks" / "00000.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(first > 0, frames[0].mask_true)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == N and summary["frames_without_mask"] == 0


@pytest.mark.ros
@pytest.mark.timeout(240)
def test_demo_bag_through_the_node(tmp_path, scene, frames):
    """steerseg-demo --bag: the node gets the bag's frames with their recorded stamps (every
    mask comes back matched to a bag frame by stamp)."""
    import subprocess
    import sys

    pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
    import ros_processes

    bag = tmp_path / "scene"
    write_scene_bag(bag, scene)
    env = ros_processes.ros_env(ros_processes.random_domain_id())
    run = subprocess.run([sys.executable, "-m", "steerseg_ros.tools.demo", "--bag", str(bag), "--command", "the bird",
                          "--rate", "1", "--out", str(tmp_path / "node"),
                          "--domain-id", env["ROS_DOMAIN_ID"]],
                         capture_output=True, text=True, timeout=200, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "node" / "summary.json").read_text())
    assert summary["mode"] == "node" and summary["frames_played"] == N
    assert summary["unmatched_stamps"] == 0 and summary["masks_received"] == N, summary
    manifest = [json.loads(line) for line in (tmp_path / "node" / "manifest.jsonl").read_text().splitlines()]
    assert [line["stamp_ns"] for line in manifest] == [f.stamp_ns for f in frames]


@pytest.mark.ros
@pytest.mark.timeout(300)
def test_demo_bag_writes_each_frames_3d(tmp_path, davis_root):
    """steerseg-demo --bag --seed-mask through the node (depth and all): OUT/tracks_3d.csv and
    .jsonl hold a row per frame with a tracked 3D position, at the frame's stamp: the node's 3D
    of that frame, within the depth tests' bounds of the scene's truth; OUT/target_path.png
    plots that track's path."""
    import csv
    import itertools
    import subprocess
    import sys

    import cv2

    pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
    import ros_processes
    from steerseg_ros.depth import estimate_object_3d
    from steerseg_testing.synthetic_rgbd import CORRUPTIONS, SceneConfig, SyntheticRGBDScene

    # The first frames of the depth tests' slow path (1 m to 2 m over 120 frames), so that the
    # built-in tracker keeps the object as it does there.
    scene = SyntheticRGBDScene(SceneConfig(n_frames=240, corruptions=CORRUPTIONS), davis_root=davis_root)
    count = 10

    class FirstFrames:
        camera = scene.camera

        def __iter__(self):
            return itertools.islice(iter(scene), count)

    frames = list(FirstFrames())
    bag, seed, out = tmp_path / "scene", tmp_path / "seed.png", tmp_path / "node"
    write_scene_bag(bag, FirstFrames())
    cv2.imwrite(str(seed), frames[0].mask_true.astype(np.uint8) * 255)
    env = ros_processes.ros_env(ros_processes.random_domain_id())
    run = subprocess.run([sys.executable, "-m", "steerseg_ros.tools.demo", "--bag", str(bag), "--seed-mask", str(seed),
                          "--rate", "5", "--out", str(out), "--domain-id", env["ROS_DOMAIN_ID"]],
                         capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["masks_received"] == count and summary["unmatched_stamps"] == 0, summary
    with open(out / "tracks_3d.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lines = [json.loads(line) for line in (out / "tracks_3d.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) and [int(r["frame"]) for r in rows] == [line["frame"] for line in lines]
    # One track, the seeded one, with 3D on every frame from the seed's on (the seed may reach
    # the node just after frame 0; it is then applied from frame 1).
    assert {line["track_id"] for line in lines} == {summary["target_track_id"]}
    seen = [line["frame"] for line in lines]
    assert seen == sorted(set(seen)) and set(range(1, count)) <= set(seen), seen
    assert summary["frames_with_3d"] == len(seen)
    rel = []
    for line, row in zip(lines, rows):
        truth = frames[line["frame"]]
        assert line["stamp_ns"] == truth.stamp_ns and line["name"] == f"{line['frame']:05d}"
        xyz = np.array([line["x"], line["y"], line["z"]])
        assert np.allclose(xyz, [float(row["x"]), float(row["y"]), float(row["z"])])
        lo, hi = np.array([line[k] for k in ("min_x", "min_y", "min_z")]), np.array([line[k] for k in ("max_x", "max_y", "max_z")])
        assert np.all(lo <= xyz + 1e-6) and np.all(xyz <= hi + 1e-6) and line["position_stderr"] > 0
        rel.append(float(np.linalg.norm(xyz - truth.position) / truth.position[2]))
        # Exactly the node's 3D of that frame: the core estimator on the mask the demo wrote for
        # it and the bag's depth for it (fails on another frame's row, pairing or units).
        label = cv2.imread(str(out / "masks" / f"{line['name']}.png"), cv2.IMREAD_GRAYSCALE) > 0
        own = estimate_object_3d(label, depth_to_metres(truth.depth_mm, "16UC1"), scene.camera)
        assert np.allclose(xyz, own.position, atol=1e-4), (line["frame"], xyz, own.position)
    # The depth tests' bounds (test_node_depth_dds): every frame within 5% of the true depth,
    # the typical one within 2%. (Their 2%-on-90% share needs more frames than these: on the
    # path's first frames at 1 m the built-in tracker's mask drifts a little onto the wall.)
    rel = np.array(rel)
    assert np.all(rel <= 0.05) and np.median(rel) <= 0.02, np.round(rel, 4)
    assert summary["target_path"] == str(out / "target_path.png")
    picture = cv2.imread(summary["target_path"])
    assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 100


def test_compressed_colour_bag(tmp_path, frames):
    """A robot's recording often holds compressed colour: found as the colour topic, decoded
    (PNG here, so exactly) by the frame source, and published on image/compressed."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer

    from steerseg_ros.offline.bags import COMPRESSED, IMAGE, _typestore, image_msg
    from steerseg_ros.offline.bags import _header as header

    ts = _typestore()
    bag = tmp_path / "compressed"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c = w.add_connection("/cam/color/image_raw/compressed", COMPRESSED, typestore=ts)
        d = w.add_connection("/cam/depth/image_rect_raw", IMAGE, typestore=ts)
        for f in frames[:3]:
            png = np.frombuffer(cv2.imencode(".png", f.bgr)[1].tobytes(), np.uint8)
            msg = ts.types[COMPRESSED](header=header(ts, f.stamp_ns, "cam"), format="png", data=png)
            w.write(c, f.stamp_ns, ts.serialize_cdr(msg, COMPRESSED))
            w.write(d, f.stamp_ns, ts.serialize_cdr(image_msg(ts, f.depth_mm, "16UC1", f.stamp_ns, "cam"), IMAGE))
    topics = find_topics(bag)
    assert topics.colour == "/cam/color/image_raw/compressed" and topics.colour_type == COMPRESSED
    assert topics.depth == "/cam/depth/image_rect_raw" and topics.camera_info is None
    source = BagFrameSource(bag)
    assert source.stamps() == [f.stamp_ns for f in frames[:3]]
    for (_, bgr), f in zip(source, frames):
        np.testing.assert_array_equal(bgr, f.bgr)


def test_restamped_moves_only_the_stamp(tmp_path, scene):
    """A looping replay rewrites each message's header stamp in the recorded bytes: read back,
    every message type carries the new stamp and is otherwise what was recorded."""
    from steerseg_ros.offline.bags import _typestore

    bag = tmp_path / "scene"
    write_scene_bag(bag, scene, storage="sqlite3", depth_encoding="32FC1")
    ts = _typestore()
    for m in read_bag(bag):
        shifted = ts.deserialize_cdr(m.restamped(m.stamp_ns + 1_234_567_891), m.msgtype)
        assert (shifted.header.stamp.sec, shifted.header.stamp.nanosec) == divmod(m.stamp_ns + 1_234_567_891, 10**9)
        assert shifted.header.frame_id == m.frame_id
        data = "k" if m.role == "camera_info" else "data"
        np.testing.assert_array_equal(getattr(shifted, data), getattr(m.msg, data))


@pytest.mark.ros
@pytest.mark.timeout(300)
def test_play_bag_loop_keeps_time_going_forward(tmp_path, scene, frames, domain):
    """steerseg-play --bag --loop: each pass goes out with every stamp moved on by the bag's
    length plus one frame period, on all three topics alike, so stamps only increase across
    the loop and each depth image still has its colour frame's stamp."""
    pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
    import ros_processes
    from topic_listener import TopicListener

    bag = tmp_path / "scene"
    write_scene_bag(bag, scene)
    passes = 3
    listener = TopicListener(domain, depth=passes * N + 10)
    play = ros_processes.Process(["steerseg-play", "--bag", str(bag), "--loop", "--loops", str(passes),
                                  "--qos", "reliable", "--rate", "15", "--wait-subscribers", "60", "--wait-all",
                                  "--topic", "image", "--depth-topic", "depth", "--camera-info-topic", "camera_info",
                                  "--manifest", str(tmp_path / "m.jsonl")],
                                 ros_processes.ros_env(domain), tmp_path / "play.log")
    try:
        assert play.wait(180.0) == 0, play.text()[-3000:]
        assert ros_processes.wait_until(lambda: all(listener.count(t) == passes * N for t in listener.got), 60.0), \
            {t: listener.count(t) for t in listener.got}
        got = {t: listener.stamps(t) for t in listener.got}
    finally:
        play.stop()
        listener.close()
    recorded = [f.stamp_ns for f in frames]
    shift = recorded[-1] - recorded[0] + (recorded[-1] - recorded[0]) // (N - 1)
    expected = [s + k * shift for k in range(passes) for s in recorded]
    for topic, stamps in got.items():
        assert stamps == expected, topic
        assert all(b > a for a, b in zip(stamps, stamps[1:])), topic
    manifest = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [line["stamp_ns"] for line in manifest] == expected
    assert [line["index"] for line in manifest] == list(range(passes * N))
