"""target_frame and the standard outputs through the running node over real DDS.

The node runs as its own process (built-in backends) with `target_frame: base_link`; the test
process publishes a static transform base_link -> camera_color_optical_frame (a camera 0.45 m up,
pitched down, turned a little to the left: every axis of the result mixes all three of the
camera's) with a tf2 StaticTransformBroadcaster and follows a target with the Follow action (a
pose_topic of its own). The synthetic RGB-D scene (steerseg_testing.synthetic_rgbd) reaches the
node as a robot's would: written to a rosbag2 bag and replayed by `steerseg-play --bag
--lockstep` in its own process (each colour frame once the previous one has been answered), with
the object's true mask of the first frame as the seed (the seed joins the goal's target).

Checked: every Track position, the Detection3DArray (pose, box, covariance) and the goal's
PoseStamped are in base_link and equal, within 1 mm, the camera-frame values (the core estimator
on the mask the node published, with the depth in the bag for that frame) transformed by the
test's own matrix; the Detection2DArray boxes are the tracks' mask boxes. A node whose
target_frame has no transform publishes its masks and tracks in 2D, counts each rejected frame's
3D on /diagnostics (rejected.tf.*) and keeps running. With publish_target_tf the target's
position also goes out on /tf as the frame target_<id>. Nothing here times anything: every step
waits for the answer.
"""
from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytest.importorskip("tf2_ros", reason="needs tf2_ros (scripts/setup_env.sh builds it from ../shared/vendor/ros2_msgs)")
pytest.importorskip("vision_msgs", reason="needs vision_msgs (scripts/setup_env.sh builds it from "
                    "../shared/vendor/ros2_msgs)")

import ros_processes as rp  # noqa: E402
from geometry_msgs.msg import PointStamped, PoseStamped, TransformStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, Detection3DArray  # noqa: E402

from steerseg_ros import depth as depth3d  # noqa: E402
from steerseg_ros.frame import NS_PER_S  # noqa: E402
from steerseg_ros.ros.image_conversion import array_to_image, depth_array_to_image, rgb_to_image  # noqa: E402
from steerseg_ros.ros.messages import header_at, stamp_to_ns  # noqa: E402
from steerseg_testing.synthetic_rgbd import SceneConfig, SyntheticRGBDScene, camera_info_fields, default_camera  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]

W, H = 640, 480
WAIT_S = 60.0
IMAGE_FRAME = "camera_color_frame"
CAMERA_FRAME = "camera_color_optical_frame"
FRAMES = 8
LIVE = (1, 3)  # Track.STATE_TRACKING, STATE_REGROUNDING


def _rot(axis: str, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


# The camera mount, written as matrices: optical axes (z forward, x right, y down) to body axes
# (x forward, y left, z up), then pitched down 12 degrees and turned 8 degrees to the left.
OPTICAL_TO_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
R_MOUNT = _rot("z", np.radians(8)) @ _rot("y", np.radians(12)) @ OPTICAL_TO_BODY
T_MOUNT = np.array([0.12, -0.03, 0.45])


def _quaternion(r: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation matrix (Shepperd's method, the w-largest branch suffices here)."""
    w = np.sqrt(1.0 + np.trace(r)) / 2.0
    return ((r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w), w)


def to_base(p) -> np.ndarray:
    return np.asarray(p, dtype=np.float64) @ R_MOUNT.T + T_MOUNT


def _xyz(p) -> np.ndarray:
    return np.array([p.x, p.y, p.z])


def camera_info_msg(camera, stamp_ns: int) -> CameraInfo:
    fields = camera_info_fields(camera)
    msg = CameraInfo(header=header_at(stamp_ns, fields.pop("frame_id")))
    msg.width, msg.height = fields["width"], fields["height"]
    msg.distortion_model = fields["distortion_model"]
    msg.d, msg.k, msg.r, msg.p = fields["d"], fields["k"], fields["r"], fields["p"]
    return msg


class Session:
    """A node process with `target_frame`, the test's participant (publishers, the recorded
    outputs by stamp, optionally the static transform and a Follow goal)."""

    def __init__(self, tmp_path, target_frame: str, transform: bool):
        from tf2_msgs.msg import TFMessage
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.domain = rp.random_domain_id()
        self.recorder = r = rp.Recorder(self.domain)
        if transform:
            import tf2_ros

            self.broadcaster = tf2_ros.StaticTransformBroadcaster(r.node)
            msg = TransformStamped(child_frame_id=CAMERA_FRAME)
            msg.header.frame_id = "base_link"
            msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = T_MOUNT
            q = msg.transform.rotation
            q.x, q.y, q.z, q.w = _quaternion(R_MOUNT)
            self.broadcaster.sendTransform(msg)
        self.node = rp.start_node(rp.ros_env(self.domain), tmp_path, {
            "autostart": True, "image_qos": "reliable", "stats_period_s": 0.25, "target_frame": target_frame,
            # generous waits, so that a loaded machine still pairs every depth image and transform
            "tf_timeout_s": 0.5, "depth": {"qos": "reliable", "wait_s": 1.0}, "publish_target_tf": transform})
        self.images = r.publisher(Image, "image")
        self.depths = r.publisher(Image, "depth")
        self.infos = r.publisher(CameraInfo, "camera_info")
        self.seeds = r.publisher(Image, "seed_mask")
        self.lock = threading.Lock()
        self.got: dict[str, dict[int, object]] = {"det3d": {}, "det2d": {}, "pose": {}, "target": {}, "tf": {}}
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for kind, msg_type, topic in (("det3d", Detection3DArray, "detections_3d"),
                                      ("det2d", Detection2DArray, "detections_2d"),
                                      ("pose", PoseStamped, "follow_pose"),
                                      ("target", PointStamped, "target_point")):
            r.node.create_subscription(msg_type, topic, lambda m, k=kind: self._on(k, m), reliable)
        r.node.create_subscription(TFMessage, "/tf", self._on_tf, reliable)
        self.camera = default_camera(W, H, CAMERA_FRAME)
        self.next_stamp = 10_000 * NS_PER_S

    def _on(self, kind: str, msg) -> None:
        with self.lock:
            self.got[kind][stamp_to_ns(msg.header.stamp)] = msg

    def _on_tf(self, msg) -> None:
        with self.lock:
            for t in msg.transforms:
                if t.child_frame_id.startswith("target_"):
                    self.got["tf"][stamp_to_ns(t.header.stamp)] = t

    def received(self, kind: str, stamp: int):
        with self.lock:
            return self.got[kind].get(stamp)

    def wait_active(self) -> None:
        r = self.recorder
        rp.wait_until(lambda: r.counters().get("lifecycle") == "active" or r.node_error(), WAIT_S)
        assert r.counters().get("lifecycle") == "active", \
            f"the node did not come up active: {r.node_error()}\n{self.node.text()[-3000:]}"
        assert rp.wait_until(lambda: all(p.get_subscription_count() > 0
                                         for p in (self.images, self.depths, self.infos, self.seeds)), WAIT_S)

    def follow(self, command: str, pose_topic: str):
        """Send a Follow goal and wait until it is accepted (its handle)."""
        from rclpy.action import ActionClient
        from unique_identifier_msgs.msg import UUID

        from steerseg_msgs.action import Follow

        self.action = ActionClient(self.recorder.node, Follow, "follow")
        assert self.action.wait_for_server(timeout_sec=WAIT_S)
        future = self.action.send_goal_async(Follow.Goal(command=command, pose_topic=pose_topic),
                                             goal_uuid=UUID(uuid=list(uuid.uuid4().bytes)))
        assert rp.wait_until(future.done, WAIT_S), "no answer to the Follow goal"
        handle = future.result()
        assert handle.accepted
        return handle

    def send(self, f, seed: bool = False):
        """Publish one scene frame (camera_info, depth, seed, colour); its stamp and tracks."""
        self.next_stamp += NS_PER_S // 30
        stamp = self.next_stamp
        self.infos.publish(camera_info_msg(self.camera, stamp))
        self.depths.publish(depth_array_to_image(f.depth_mm, header_at(stamp, IMAGE_FRAME)))
        if seed:
            self.seeds.publish(array_to_image(f.mask_true.astype(np.uint8) * 255, "mono8", header_at(stamp, IMAGE_FRAME)))
        self.images.publish(rgb_to_image(f.rgb, "bgr8", header_at(stamp, IMAGE_FRAME)))
        r = self.recorder

        def tracks():
            with r.lock:
                return next((m for m in reversed(r.tracks) if stamp_to_ns(m.header.stamp) == stamp), None)

        assert rp.wait_until(lambda: tracks() is not None and stamp in r.masks, WAIT_S), \
            f"no answer for the frame at {stamp}:\n{self.node.text()[-3000:]}"
        return stamp, tracks()

    def close(self) -> None:
        self.node.stop()
        self.recorder.close()


@pytest.fixture(scope="module")
def scene():
    s = SyntheticRGBDScene(SceneConfig(n_frames=240), default_camera(W, H, CAMERA_FRAME))
    return [s.frame(i) for i in range(FRAMES)]


def _check_frame(session, f, stamp, msg, target_id) -> dict:
    """Compare one answered frame's 3D outputs with the hand-transformed camera-frame estimate;
    the largest difference per output (metres)."""
    camera = session.camera
    depth_m = depth3d.depth_to_metres(f.depth_mm, "16UC1")
    errors: dict[str, list] = {"track": [], "det3d": [], "pose": []}
    live = [t for t in msg.tracks if t.state in LIVE and t.has_position]
    if not live:
        return errors
    assert rp.wait_until(lambda: session.received("det3d", stamp) is not None, WAIT_S), "no detections_3d"
    assert rp.wait_until(lambda: session.received("det2d", stamp) is not None, WAIT_S), "no detections_2d"
    det3d = {d.id: d for d in session.received("det3d", stamp).detections}
    det2d = {d.id: d for d in session.received("det2d", stamp).detections}
    assert session.received("det3d", stamp).header.frame_id == "base_link"
    for t in live:
        assert t.position_frame_id == "base_link"
        d2 = det2d[str(t.id)]
        assert (d2.bbox.size_x, d2.bbox.size_y) == (t.bbox.width, t.bbox.height)
        assert d2.bbox.center.position.x == t.bbox.x_offset + t.bbox.width / 2.0
        d3 = det3d[str(t.id)]
        hyp = d3.results[0]
        assert hyp.hypothesis.class_id == (t.label or t.command) and hyp.hypothesis.score == pytest.approx(t.score)
        label = session.recorder.masks[stamp] == t.label_value
        if label.sum() != t.mask_area:  # painted over by another track: no exact reference
            continue
        own = depth3d.estimate_object_3d(label, depth_m, camera)
        expected = to_base(own.position)
        errors["track"].append(np.linalg.norm(_xyz(t.position) - expected))
        errors["det3d"].append(np.linalg.norm(_xyz(hyp.pose.pose.position) - expected))
        # The box: the camera-frame box's centre moved, its edges kept, turned by the mount.
        lo, hi = np.array(own.extent_min), np.array(own.extent_max)
        errors["det3d"].append(np.linalg.norm(_xyz(d3.bbox.center.position) - to_base((lo + hi) / 2)))
        errors["det3d"].append(np.abs(_xyz(d3.bbox.size) - (hi - lo)).max())
        corners = to_base(np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]))
        errors["track"].append(np.abs(_xyz(t.extent_min) - corners.min(axis=0)).max())
        errors["track"].append(np.abs(_xyz(t.extent_max) - corners.max(axis=0)).max())
        # The covariance: the camera-frame spread rotated (variances in m^2: compared as spreads).
        cov = np.array(hyp.pose.covariance).reshape(6, 6)[:3, :3]
        expected_cov = R_MOUNT @ np.diag(np.array(own.std) ** 2) @ R_MOUNT.T
        errors["det3d"].append(np.sqrt(np.abs(cov - expected_cov).max()))
    ours = [t for t in live if t.target_id == target_id]
    if ours:
        assert rp.wait_until(lambda: session.received("pose", stamp) is not None, WAIT_S), "no target pose"
        pose = session.received("pose", stamp)
        assert pose.header.frame_id == "base_link"
        oldest = min(ours, key=lambda t: t.id)
        errors["pose"].append(np.linalg.norm(_xyz(pose.pose.position) - _xyz(oldest.position)))
        errors["pose"].append(abs(pose.pose.orientation.w - 1.0))
        # publish_target_tf: the same position as the tf frame target_<id>
        assert rp.wait_until(lambda: session.received("tf", stamp) is not None, WAIT_S), "no target_<id> on /tf"
        frame = session.received("tf", stamp)
        assert (frame.header.frame_id, frame.child_frame_id) == ("base_link", f"target_{target_id}")
        errors["pose"].append(np.linalg.norm(_xyz(frame.transform.translation) - _xyz(pose.pose.position)))
    return errors


def replay_bag(session: Session, tmp_path, scene) -> rp.Process:
    """The scene written as a bag and replayed into the node by steerseg-play in lockstep, the
    first frame seeded with the object's true mask; the player's process, finished."""
    import cv2

    from steerseg_testing.synthetic_rgbd import write_scene_bag

    class FirstFrames(list):  # what write_scene_bag reads of a scene: its frames and camera
        camera = session.camera

    bag = write_scene_bag(tmp_path / "scene_bag", FirstFrames(scene))["path"]
    seed = tmp_path / "seed.png"
    cv2.imwrite(str(seed), scene[0].mask_true.astype(np.uint8) * 255)
    player = rp.Process(["steerseg-play", "--bag", bag, "--lockstep", "--qos", "reliable", "--wait-all",
                         "--seed-mask", str(seed), "--topic", "image", "--depth-topic", "depth",
                         "--camera-info-topic", "camera_info", "--answer-timeout", str(WAIT_S)],
                        rp.ros_env(session.domain), tmp_path / "play.log")
    assert player.wait(FRAMES * WAIT_S) == 0, f"steerseg-play failed:\n{player.text()[-3000:]}"
    return player


def test_bag_replay_in_base_link_agrees_with_the_hand_transformed_camera_values(tmp_path, scene):
    session = Session(tmp_path, "base_link", transform=True)
    try:
        session.wait_active()
        handle = session.follow("the card", "follow_pose")
        player = replay_bag(session, tmp_path, scene)
        assert "no answer for the frame" not in player.text(), player.text()[-3000:]
        r = session.recorder
        errors: dict[str, list] = {"track": [], "det3d": [], "pose": []}
        target_id = None
        for f in scene:
            with r.lock:
                msg = next((m for m in r.tracks if stamp_to_ns(m.header.stamp) == f.stamp_ns), None)
            assert msg is not None and f.stamp_ns in r.masks, \
                f"no answer for the frame at {f.stamp_ns}:\n{session.node.text()[-3000:]}"
            if target_id is None:
                target_id = next((t.target_id for t in msg.tracks if t.target_id), None)
            for k, v in _check_frame(session, f, f.stamp_ns, msg, target_id).items():
                errors[k] += v
        worst = {k: (1e3 * max(v) if v else None) for k, v in errors.items()}
        print(f"base_link outputs against the hand-transformed camera values, worst (mm): {worst}; "
              f"compared: {', '.join(f'{k} {len(v)}' for k, v in errors.items())}")
        for kind in ("track", "det3d", "pose"):
            assert errors[kind], f"no {kind} compared: {session.node.text()[-3000:]}"
            assert max(errors[kind]) <= 1e-3, (kind, errors[kind])
        counters = r.counters()
        assert not any(k.startswith("rejected.tf.") for k in counters), counters
        assert int(counters.get("internal_errors", 0)) == 0, session.node.text()[-3000:]
        handle.cancel_goal_async()
    finally:
        session.close()


def test_missing_transform_is_counted_and_the_node_keeps_running(tmp_path, scene):
    session = Session(tmp_path, "odom", transform=False)  # nothing publishes odom
    try:
        session.wait_active()
        live = 0
        for i, f in enumerate(scene[:6]):
            stamp, msg = session.send(f, seed=i == 0)
            assert not any(t.has_position for t in msg.tracks), "a pose without its transform"
            assert session.received("det3d", stamp) is None
            assert session.received("target", stamp) is None
            live += any(t.state in LIVE for t in msg.tracks)
        assert live, "the seeded track never became live"

        def tf_rejections() -> int:
            return sum(int(v) for k, v in session.recorder.counters().items() if k.startswith("rejected.tf."))

        # Each frame whose depth paired was rejected (one may have missed depth.wait_s on a loaded
        # machine and gone out in 2D without a lookup).
        assert rp.wait_until(lambda: tf_rejections() >= 5, WAIT_S), session.recorder.counters()
        assert rp.wait_until(lambda: "rejected (tf." in session.node.text(), WAIT_S), session.node.text()[-3000:]
        assert session.recorder.counters().get("lifecycle") == "active"
        assert session.node.popen.poll() is None, "the node exited"
    finally:
        session.close()
