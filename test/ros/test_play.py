"""steerseg-play as a user runs it: Ctrl-C (SIGINT) while it publishes ends it with exit code 0
and no traceback, in every mode (a frame folder, a video file, a bag; each with and without
--lockstep, which then waits for an answer that never comes). Each run waits until a
subscriber has received the player's frames before the signal goes out: nothing is timed."""
from __future__ import annotations

import signal

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]
pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")

import ros_processes  # noqa: E402
from topic_listener import TopicListener  # noqa: E402

W, H, FRAMES = 160, 120, 4


def _frame(i: int) -> np.ndarray:
    image = np.full((H, W, 3), 40, np.uint8)
    cv2.circle(image, (30 + 20 * i, 60), 15, (0, 200, 255), -1)
    return image


def _source(kind: str, tmp_path, davis_root) -> list[str]:
    """The player's source arguments for `kind`, written into tmp_path."""
    if kind == "frames":
        folder = tmp_path / "frames"
        folder.mkdir()
        for i in range(FRAMES):
            cv2.imwrite(str(folder / f"{i:05d}.png"), _frame(i))
        return ["--frames", str(folder)]
    if kind == "video":
        path = tmp_path / "clip.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
        assert writer.isOpened()
        for i in range(FRAMES):
            writer.write(_frame(i))
        writer.release()
        return ["--video", str(path)]
    pytest.importorskip("rosbags", reason="needs rosbags (requirements/python.txt)")
    from steerseg_testing.synthetic_rgbd import SceneConfig, SyntheticRGBDScene, write_scene_bag

    write_scene_bag(tmp_path / "bag", SyntheticRGBDScene(SceneConfig(n_frames=FRAMES), davis_root=davis_root))
    return ["--bag", str(tmp_path / "bag"), "--depth-topic", "depth", "--camera-info-topic", "camera_info"]


@pytest.mark.parametrize("lockstep", [False, True], ids=["free", "lockstep"])
@pytest.mark.parametrize("kind", ["frames", "video", "bag"])
def test_ctrl_c_exits_cleanly(tmp_path, davis_root, domain, kind, lockstep):
    listener = TopicListener(domain)
    if lockstep:  # the player waits to see a publisher of the answers (the node's mask) first
        from sensor_msgs.msg import Image

        listener.node.create_publisher(Image, "mask", 10)
    # --loop keeps it publishing until the signal; with --lockstep it sends one frame and then
    # waits (much longer than the test) for the node's answer, which never comes.
    args = ["steerseg-play", *_source(kind, tmp_path, davis_root), "--loop", "--rate", "20", "--qos", "reliable",
            "--topic", "image", "--wait-subscribers", "60"]
    args += ["--lockstep", "--answer-timeout", "600"] if lockstep else []
    play = ros_processes.Process(args, ros_processes.ros_env(domain), tmp_path / "play.log")
    try:
        assert ros_processes.wait_until(lambda: listener.count("image") >= 1 or play.popen.poll() is not None,
                                        120.0), play.text()[-3000:]
        assert play.popen.poll() is None, f"the player ended by itself:\n{play.text()[-3000:]}"
        play.popen.send_signal(signal.SIGINT)
        rc = play.wait(60.0)
    finally:
        play.stop()
        listener.close()
    log = play.text()
    assert rc == 0, log[-3000:]
    assert "Traceback" not in log and "RCLError" not in log, log[-3000:]


def test_no_subscriber_warning_names_the_topics(tmp_path, davis_root, domain):
    """Nobody listens: the player says on which of its topics (as resolved), for a bag all three
    of the default names, and still publishes."""
    args = _source("bag", tmp_path, davis_root)
    args = args[:2]  # the default topics (a camera driver's, the launch file's)
    play = ros_processes.Process(["steerseg-play", *args, "--count", "1", "--wait-subscribers", "1", "--wait-all",
                                  "--linger", "0"], ros_processes.ros_env(domain), tmp_path / "play.log")
    try:
        assert play.wait(120.0) == 0, play.text()[-3000:]
    finally:
        play.stop()
    text = play.text()
    assert ("no subscriber on /camera/image_raw (0 of 1), /camera/depth_registered/image_raw (0 of 1), "
            "/camera/camera_info (0 of 1) after 1.0 s; publishing anyway") in text, text[-3000:]
    assert "some topic" not in text
