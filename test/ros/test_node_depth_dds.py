"""Depth and 3D through the running node over real DDS: the node runs as its own process with the
built-in backends; the test process publishes the synthetic RGB-D scene (steerseg_ros.
synthetic_rgbd: a textured object moving 1-2 m in front of a wall, through a distorted camera,
with depth noise, holes and flying pixels) frame by frame, each frame once the previous one has
been answered, and records tracks and target_point. The object is seeded with its true mask; the
masks the 3D comes from are the built-in tracker's, with the errors tracking brings.

Checked: the tracks' 3D positions and target_point against the scene's known truth (within 2%
of depth and 2 cm on 90% of the frames at 1-2 m, measured 94.6-97.5%; the 95% goal on the true
masks) and against the core estimator on the mask the node published with the depth sent for
that frame (exact: the right pairing, camera and units); frames without depth (missing, or depth at half the colour rate) are still tracked and have 3D exactly
where depth paired; bad depth and camera_info (wrong encoding, wrong size, no colour partner,
K zero or NaN) are rejected, counted on /diagnostics and logged, and the node keeps publishing
masks. Nothing here times anything: every step waits for the node's answer.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")

import ros_processes as rp  # noqa: E402
from geometry_msgs.msg import PointStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from steerseg_ros import depth as depth3d  # noqa: E402
from steerseg_ros.frame import NS_PER_S  # noqa: E402
from steerseg_ros.streaming.pipeline import TrackState  # noqa: E402
from steerseg_ros.ros.image_conversion import array_to_image, depth_array_to_image, rgb_to_image  # noqa: E402
from steerseg_ros.ros.messages import header_at, stamp_to_ns  # noqa: E402
from steerseg_testing.synthetic_rgbd import (CORRUPTIONS, SceneConfig, SyntheticRGBDScene, camera_info_fields,  # noqa: E402
                                         default_camera)

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]

W, H = 640, 480
# The scene's path (1 m -> 2 m -> 1 m) over SCENE_FRAMES frames; the tests play SEGMENTS short
# runs along it (slow enough for the built-in tracker to keep the object), each seeded with the
# true mask on its first frame, so that the 3D is checked at depths from 1 to 2 m.
SCENE_FRAMES, SEGMENTS, SEGMENT_LEN = 240, 8, 5
SEGMENT_STARTS = [s * (SCENE_FRAMES // 2) // SEGMENTS for s in range(SEGMENTS)]
WAIT_S = 30.0
IMAGE_FRAME = "camera_color_frame"  # the images' frame_id; 3D must come in camera_info's
CAMERA_FRAME = "camera_color_optical_frame"
LIVE = (TrackState.TRACKING, TrackState.REGROUNDING)


def camera_info_msg(camera, stamp_ns: int, **overrides) -> CameraInfo:
    fields = {**camera_info_fields(camera), **overrides}
    msg = CameraInfo(header=header_at(stamp_ns, fields.pop("frame_id")))
    msg.width, msg.height = fields["width"], fields["height"]
    msg.distortion_model = fields["distortion_model"]
    msg.d, msg.k, msg.r, msg.p = fields["d"], fields["k"], fields["r"], fields["p"]
    return msg


class Session:
    """The node process, the test's participant and its publishers, and what came back."""

    def __init__(self, tmp_path):
        self.domain = rp.random_domain_id()
        self.recorder = rp.Recorder(self.domain)
        self.node = rp.start_node(rp.ros_env(self.domain), tmp_path, {
            "autostart": True, "image_qos": "reliable", "stats_period_s": 0.25,
            # a generous wait, so that a loaded machine still pairs every depth image that was sent
            "depth": {"qos": "reliable", "wait_s": 1.0}})
        r = self.recorder
        self.images = r.publisher(Image, "image")
        self.depths = r.publisher(Image, "depth")
        self.infos = r.publisher(CameraInfo, "camera_info")
        self.seeds = r.publisher(Image, "seed_mask")
        self.lock = threading.Lock()
        self.targets: dict[int, PointStamped] = {}
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        r.node.create_subscription(PointStamped, "target_point", self._on_target,
                                   QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.camera = default_camera(W, H, CAMERA_FRAME)
        self.next_stamp = 10_000 * NS_PER_S
        self.frames_answered = 0

    def _on_target(self, msg: PointStamped) -> None:
        with self.lock:
            self.targets[stamp_to_ns(msg.header.stamp)] = msg

    def stamp(self) -> int:
        self.next_stamp += NS_PER_S // 30
        return self.next_stamp

    def tracks_at(self, stamp: int):
        with self.recorder.lock:
            return next((m for m in reversed(self.recorder.tracks) if stamp_to_ns(m.header.stamp) == stamp), None)

    def send(self, rgb, stamp: int, depth=None, info: bool = True, seed=None) -> object:
        """Publish one frame (camera_info, depth, seed, colour) and wait for its tracks."""
        if info:
            self.infos.publish(camera_info_msg(self.camera, stamp))
        if depth is not None:
            self.depths.publish(depth if isinstance(depth, Image) else depth_array_to_image(depth, header_at(stamp, IMAGE_FRAME)))
        if seed is not None:
            self.seeds.publish(array_to_image((seed > 0).astype(np.uint8) * 255, "mono8", header_at(stamp, IMAGE_FRAME)))
        self.images.publish(rgb_to_image(rgb, "bgr8", header_at(stamp, IMAGE_FRAME)))
        assert rp.wait_until(lambda: self.tracks_at(stamp) is not None and stamp in self.recorder.masks, WAIT_S), \
            f"no answer for the frame at {stamp}:\n{self.node.text()[-3000:]}"
        self.frames_answered += 1
        return self.tracks_at(stamp)

    def restart(self) -> None:
        """Start the source over, as a bag that loops: stamps jump back a minute, the node
        resets (every track ends) and the pairing starts again. One colour frame without depth."""
        self.next_stamp -= 60 * NS_PER_S
        stamp = self.stamp()
        self.images.publish(rgb_to_image(np.zeros((H, W, 3), np.uint8), "bgr8", header_at(stamp, IMAGE_FRAME)))
        assert rp.wait_until(lambda: stamp in self.recorder.masks, WAIT_S), "no answer after the restart"
        self.frames_answered += 1

    def track_ids(self) -> set[int]:
        with self.recorder.lock:
            return {t.id for m in self.recorder.tracks for t in m.tracks}

    def counter(self, key: str) -> int:
        return int(self.recorder.counters().get(key, 0))

    def wait_counter(self, key: str, at_least: int) -> bool:
        return rp.wait_until(lambda: self.counter(key) >= at_least, WAIT_S)


@pytest.fixture(scope="module")
def scene():
    """The frames the tests play, by scene index. Depth corrupted by noise, holes and flying
    pixels; the seeds are the true masks (the tracker's masks bring their own errors)."""
    config = SceneConfig(n_frames=SCENE_FRAMES, corruptions=tuple(c for c in CORRUPTIONS if c != "spill"))
    s = SyntheticRGBDScene(config, default_camera(W, H, CAMERA_FRAME))
    wanted = {i + k for i in SEGMENT_STARTS for k in range(SEGMENT_LEN)} | set(range(12))
    return {i: s.frame(i) for i in sorted(wanted)}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    s = Session(tmp_path_factory.mktemp("depth_dds"))
    try:
        rp.wait_until(lambda: s.recorder.counters().get("lifecycle") == "active" or s.recorder.node_error(), 60.0)
        assert s.recorder.counters().get("lifecycle") == "active", \
            f"the node did not come up active: {s.recorder.node_error()}\n{s.node.text()[-3000:]}"
        assert rp.wait_until(lambda: all(p.get_subscription_count() > 0
                                         for p in (s.images, s.depths, s.infos, s.seeds)), WAIT_S)
        yield s
    finally:
        s.node.stop()
        s.recorder.close()


def _live(msg):
    return [t for t in msg.tracks if t.state in LIVE]


def _xyz(p) -> np.ndarray:
    return np.array([p.x, p.y, p.z])


def test_3d_follows_the_scene(session, scene):
    """The seeded track's 3D against the scene's truth and against the core estimator on the
    mask the node published with the depth sent for that frame (which fails if the node paired
    another depth image, used another camera model, or mixed up the units); target_point is
    the oldest live track's position, in camera_info's frame."""
    camera = default_camera(W, H, CAMERA_FRAME)
    rel, gt_rel, absolute, frames, with_track, with_3d, exact = [], [], [], 0, 0, 0, 0
    for start in SEGMENT_STARTS:
        session.restart()  # each segment on its own: only its seeded track is live
        seeded, known = None, session.track_ids()
        for i in range(start, start + SEGMENT_LEN):
            f = scene[i]
            stamp = session.stamp()
            frames += 1
            msg = session.send(f.rgb, stamp, f.depth_mm, seed=f.mask_true if i == start else None)
            assert msg.header.frame_id == IMAGE_FRAME
            if seeded is None:  # the seed may come in after its frame: then it is applied on the next
                seeded = max((t.id for t in msg.tracks if t.id not in known), default=None)
            track = next((t for t in _live(msg) if t.id == seeded), None)
            depth_m = depth3d.depth_to_metres(f.depth_mm, "16UC1")
            gt = depth3d.estimate_object_3d(f.mask_true, depth_m, camera)
            gt_rel.append(np.linalg.norm(np.array(gt.position) - f.position) / f.position[2])
            if track is None:
                continue
            with_track += 1
            if not track.has_position:
                # its depth came later than depth.wait_s (a heavily loaded machine): 2D, as documented
                assert track.depth_points == 0
                continue
            with_3d += 1
            assert track.position_frame_id == CAMERA_FRAME
            p, lo, hi = _xyz(track.position), _xyz(track.extent_min), _xyz(track.extent_max)
            assert np.all(lo <= p + 1e-6) and np.all(p <= hi + 1e-6), "position outside its extent"
            assert track.depth_points > 0 and track.position_stderr > 0
            rel.append(float(np.linalg.norm(p - f.position) / f.position[2]))
            absolute.append(float(np.linalg.norm(p - f.position)))
            label = session.recorder.masks[stamp] == track.label_value
            if label.sum() == track.mask_area:  # not painted over by another track
                own = depth3d.estimate_object_3d(label, depth_m, camera)
                assert np.allclose(_xyz(track.position), own.position, atol=1e-4), (i, p, own.position)
                exact += 1
            assert rp.wait_until(lambda: stamp in session.targets, WAIT_S), f"no target_point for frame {i}"
            target = session.targets[stamp]
            oldest = min((t for t in _live(msg) if t.has_position), key=lambda t: t.id)
            assert target.header.frame_id == CAMERA_FRAME
            assert np.allclose(_xyz(target.point), _xyz(oldest.position), atol=1e-6)
    rel, gt_rel = np.array(rel), np.array(gt_rel)
    absolute = np.array(absolute)
    good = (rel <= 0.02) & (absolute <= 0.02)
    print(f"3D over DDS at {W}x{H}: the seeded track on {with_track}/{frames} frames, with 3D on {with_3d}; "
          f"position error / true "
          f"depth: median {100 * np.median(rel):.2f}%, max {100 * rel.max():.2f}% ({1e3 * absolute.max():.1f} mm); "
          f"within 2% of depth and 2 cm on {100 * np.mean(good):.1f}% of them (the core estimator on the true "
          f"masks: within 2% on {100 * np.mean(gt_rel <= 0.02):.0f}%); node == estimator on its published mask "
          f"on {exact} frames")
    assert with_track >= 0.9 * frames, f"the seeded track was live on only {with_track} of {frames} frames"
    assert with_3d >= 0.9 * with_track, f"3D on only {with_3d} of {with_track} frames with a track"
    assert exact >= 0.5 * with_3d
    # The goal: within 2% of the depth and 2 cm at 1-2 m on 95% of the frames with a
    # track. Through the node it depends on the tracker's masks: measured 94.6-97.5% (35 of 37 to
    # 39 of 40; the misses, 21-27 mm at 1 m, on the 4th and 5th frames of the first segment,
    # where the built-in tracker's mask has drifted onto the wall). The floor sits a little below;
    # the goal itself is checked on the true masks, with the same depth images.
    assert np.mean(good) >= 0.9, f"3D errors / depth: {np.round(rel, 3)}"
    assert np.mean(gt_rel <= 0.02) >= 0.95, f"the estimator on the true masks: {np.round(gt_rel, 3)}"
    assert np.all(rel <= 0.05), f"3D errors / depth: {np.round(rel, 3)}"


def test_missing_depth_and_depth_at_half_rate_track_on_in_2d(session, scene):
    """No depth for a while, then depth on every other frame only: every frame is answered with
    a live track, and the track has 3D exactly on the frames whose depth was sent."""
    session.restart()
    seeded = _seed(session, scene[0])
    paired = sent = 0
    assert session.wait_counter("frames_processed", session.frames_answered)
    unpaired_before = session.counter("depth.colour_unpaired")
    for i in range(1, 12):
        f = scene[i]
        with_depth = i >= 4 and i % 2 == 0  # frames 1-3 without depth at all, then every other
        msg = session.send(f.rgb, session.stamp(), f.depth_mm if with_depth else None)
        track = next((t for t in _live(msg) if t.id == seeded), None)
        assert track is not None, f"frame {i}: the seeded track is not live"
        assert with_depth or not track.has_position, f"frame {i}: 3D without depth (paired with another frame's)"
        sent += with_depth
        paired += track.has_position
    # every depth image pairs with its frame (one may come later than depth.wait_s on a heavily
    # loaded machine: that frame is 2D, as documented)
    assert paired >= sent - 1, f"3D on {paired} of the {sent} frames sent with depth"
    # The frames without depth are counted as colour_unpaired only while depth is arriving: in
    # the stretch without any (over a second on a slow machine) depth has stopped, which is said
    # once (depth_stopped), not counted against every frame.
    assert session.counter("depth.colour_unpaired") - unpaired_before <= 11 - sent


def _seed(session, f) -> int:
    """Seed a track on frame `f` (with depth, sent again until the seed has been applied); the
    new track's id."""
    known = session.track_ids()
    msg = session.send(f.rgb, session.stamp(), f.depth_mm, seed=f.mask_true)
    for _ in range(3):
        new = [t for t in msg.tracks if t.id not in known]
        if new:
            track = max(new, key=lambda t: t.id)
            assert track.state in LIVE, track
            return track.id
        msg = session.send(f.rgb, session.stamp(), f.depth_mm)
    raise AssertionError("the seed mask started no track")


def _seeded_live_with_3d(msg, seeded: int) -> bool:
    return any(t.id == seeded and t.has_position for t in _live(msg))


def _depth_msg(array, stamp, encoding=None):
    msg = depth_array_to_image(array, header_at(stamp, IMAGE_FRAME))
    if encoding is not None:
        msg.encoding = encoding
    return msg


@pytest.mark.parametrize("case", ["wrong_encoding", "wrong_size", "no_colour_partner", "k_zero", "k_nan"])
def test_bad_depth_and_camera_info_are_rejected_and_masks_go_on(session, scene, case):
    session.restart()
    seeded = _seed(session, scene[0])
    f = scene[1]
    stamp = session.stamp()
    if case == "wrong_encoding":
        reason = "depth.encoding"
        bad = _depth_msg(f.depth_mm, stamp, "8UC1")
    elif case == "wrong_size":
        reason = "depth.size"
        bad = _depth_msg(np.full((100, 100), 1500, np.uint16), stamp)
    elif case == "no_colour_partner":
        reason = "depth.no_colour_partner"
        bad = _depth_msg(f.depth_mm, stamp - 5 * NS_PER_S)  # seconds before frames already answered
    else:
        reason = "camera_info.invalid"
        k = [0.0] * 9 if case == "k_zero" else [float("nan")] + list(session.camera.K.ravel()[1:])
        bad = camera_info_msg(session.camera, stamp, k=k)
    before = session.counter(f"rejected.{reason}")
    if isinstance(bad, CameraInfo):
        session.infos.publish(bad)
        msg = session.send(f.rgb, stamp, f.depth_mm, info=False)
    elif case == "no_colour_partner":  # a stale depth image, then this frame's own
        session.depths.publish(bad)
        msg = session.send(f.rgb, stamp, f.depth_mm)
    else:  # this frame's depth is the bad one
        session.depths.publish(bad)
        msg = session.send(f.rgb, stamp)
    assert session.wait_counter(f"rejected.{reason}", before + 1), session.recorder.counters()
    assert stamp in session.recorder.masks  # this frame was answered all the same
    if case in ("wrong_encoding", "wrong_size"):
        assert not any(t.has_position for t in msg.tracks), "3D from a rejected depth image"
    # then good frames: masks, and 3D again (a bad camera_info is ignored: the last good one
    # stays in use); a few, in case one frame's depth comes later than depth.wait_s
    assert any(_seeded_live_with_3d(session.send(scene[i].rgb, session.stamp(), scene[i].depth_mm), seeded)
               for i in (2, 3, 4)), "no 3D after the bad input"


def test_object_points_while_subscribed(session, scene):
    """Subscribed to object_points: each frame's cloud holds the seeded track's points (x, y, z
    and the track id) in camera_info's frame, at most depth.object_points_max, around the
    track's position."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    clouds: dict[int, PointCloud2] = {}
    sub = session.recorder.node.create_subscription(
        PointCloud2, "object_points", lambda m: clouds.__setitem__(stamp_to_ns(m.header.stamp), m),
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    try:
        session.restart()
        seeded = _seed(session, scene[0])
        found = None
        for i in range(1, 6):  # until the node has seen the subscription
            stamp = session.stamp()
            msg = session.send(scene[i].rgb, stamp, scene[i].depth_mm)
            track = next((t for t in _live(msg) if t.id == seeded and t.has_position), None)
            if track is not None and rp.wait_until(lambda: stamp in clouds, 2.0):
                found = (track, clouds[stamp])
                break
        assert found is not None, "no object_points for a frame with a 3D track"
        track, cloud = found
        assert cloud.header.frame_id == CAMERA_FRAME and [f.name for f in cloud.fields] == ["x", "y", "z", "id"]
        points = np.frombuffer(bytes(cloud.data), np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("id", "<u4")]))
        assert 10 <= len(points) <= 2000 and set(points["id"].tolist()) == {seeded}
        xyz = np.stack([points["x"], points["y"], points["z"]], axis=1)
        assert np.allclose(np.median(xyz, axis=0), _xyz(track.position), atol=0.02)
    finally:
        session.recorder.node.destroy_subscription(sub)


def test_depth_without_colour_says_the_colour_topic_is_silent(tmp_path, session):
    """Depth and camera_info arrive, colour never does (the camera topic is wrong): the node says
    that no colour frames arrive, naming its camera topic as remapped, and not that depth images
    "arrive faster than they pair" (depth.queue_full), which sent users looking at the depth.
    Its own node and domain (not the session's, whose node has a colour stream)."""
    domain = rp.random_domain_id()
    while domain == session.domain:
        domain = rp.random_domain_id()
    recorder = rp.Recorder(domain)
    node = rp.start_node(rp.ros_env(domain), tmp_path, {
        "autostart": True, "stats_period_s": 0.25, "depth": {"qos": "reliable", "queue_size": 2}},
        extra_args=("-r", "image:=/front/color/image_raw"))
    try:
        assert rp.wait_until(lambda: recorder.counters().get("lifecycle") == "active", 60.0), node.text()[-3000:]
        depths = recorder.publisher(Image, "depth")
        infos = recorder.publisher(CameraInfo, "camera_info")
        assert rp.wait_until(lambda: depths.get_subscription_count() > 0 and infos.get_subscription_count() > 0,
                             WAIT_S), node.text()[-3000:]
        camera = default_camera(64, 48, CAMERA_FRAME)
        stamp = 10_000 * NS_PER_S

        def sent_until_reported() -> bool:
            nonlocal stamp
            stamp += NS_PER_S // 30
            infos.publish(camera_info_msg(camera, stamp))
            depths.publish(_depth_msg(np.full((48, 64), 1500, np.uint16), stamp))
            return int(recorder.counters().get("rejected.depth.no_colour", 0)) >= 3

        # Depth goes on arriving (as from a camera) until the node has reported it.
        assert rp.wait_until(sent_until_reported, WAIT_S, interval=0.03), \
            f"{recorder.counters()}\n{node.text()[-3000:]}"
        counters = recorder.counters()
        assert int(counters.get("rejected.depth.queue_full", 0)) == 0, counters
        assert int(counters.get("frames_received", 0)) == 0, counters
    finally:
        assert node.stop() == 0, node.text()[-3000:]
        recorder.close()
    log = node.text()
    assert "rejected (depth.no_colour) on /depth" in log, log[-3000:]
    assert "no colour frames on /front/color/image_raw" in log, log[-3000:]
    assert "arrive faster than they pair" not in log, log[-3000:]


def test_rejections_were_logged_and_the_node_exits_cleanly(session, scene):
    # Runs last in this module: stop the node, then read everything it logged.
    f = scene[3]
    session.send(f.rgb, session.stamp(), f.depth_mm)
    assert session.node.stop() == 0
    log = session.node.text()
    for reason in ("depth.encoding", "depth.size", "depth.no_colour_partner", "camera_info.invalid"):
        assert f"rejected ({reason})" in log, f"no log line for {reason}:\n{log[-3000:]}"
    assert "Traceback" not in log
