"""The node under faults, as its own process over real DDS: SIGINT and SIGTERM end it cleanly
(exit code 0, no traceback, no ERROR line) while frames flow and while a grounding is in flight,
and a bad backend name is reported once, not once per attempt.
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")

import ros_processes as rp  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from steerseg_ros.frame import NS_PER_S  # noqa: E402
from steerseg_ros.ros.image_conversion import rgb_to_image  # noqa: E402
from steerseg_ros.ros.messages import header_at  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(240)]

SLOW_NODE = Path(__file__).resolve().parents[1] / "support" / "slow_grounder_node.py"
# Far longer than any wait below: a node that waits for the grounding before it exits fails.
GROUNDING_DELAY_S = 300
# "Within a few seconds", with room for a loaded 2-core machine.
EXIT_WAIT_S = 20.0
H, W = 120, 160


class Camera:
    """Publishes frames from a thread until stopped, as a camera driver does (it does not wait
    for the node)."""

    def __init__(self, recorder):
        self.pub = recorder.publisher(Image, "image")
        yy, xx = np.mgrid[0:H, 0:W]
        self.picture = np.stack([xx, yy * 2, 255 - xx], axis=-1).astype(np.uint8)
        self.picture[40:80, 60:100] = (250, 20, 20)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        stamp = 100 * NS_PER_S
        while not self._stop.wait(0.03):
            stamp += NS_PER_S // 30
            self.pub.publish(rgb_to_image(self.picture, "bgr8", header_at(stamp, "camera")))
            self.sent += 1

    def stop(self):
        self._stop.set()
        self._thread.join(5.0)


@pytest.mark.parametrize("grounding", [False, True], ids=["frames", "frames+grounding"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_node_cleanly_while_frames_flow(tmp_path, recorder, domain, sig, grounding):
    env = rp.ros_env(domain)
    env["STEERSEG_TEST_GROUNDING_DELAY_S"] = str(GROUNDING_DELAY_S)
    params = rp.write_params(tmp_path / "params.yaml", {
        "autostart": True, "image_qos": "reliable", "stats_period_s": 0.25})
    node = rp.Process([sys.executable, str(SLOW_NODE), "--ros-args", "--params-file",
                       str(rp.PKG / "config" / "steerseg.yaml"), "--params-file", str(params)],
                      env, tmp_path / "node.log")
    camera = None
    try:
        assert rp.wait_until(lambda: recorder.counters().get("lifecycle") == "active", 60.0), node.text()[-3000:]
        camera = Camera(recorder)
        assert rp.wait_until(lambda: len(recorder.masks) >= 3, 60.0), f"no masks:\n{node.text()[-3000:]}"
        if grounding:
            commands = recorder.publisher(String, "command")
            assert rp.wait_until(lambda: commands.get_subscription_count() > 0, 30.0)
            commands.publish(String(data="the red box"))
            # counted when the grounder is called, which then sleeps
            assert rp.wait_until(lambda: int(recorder.counters().get("pipeline.groundings", 0)) >= 1, 60.0), \
                f"no grounding started: {recorder.counters()}\n{node.text()[-3000:]}"
        received = len(recorder.masks)
        assert rp.wait_until(lambda: len(recorder.masks) > received, 30.0), "frames stopped flowing"
        node.popen.send_signal(sig)
        code = node.wait(EXIT_WAIT_S)
        log = node.text()
        assert code is not None, f"still running {EXIT_WAIT_S} s after {sig.name}:\n{log[-3000:]}"
        assert code == 0, f"exit code {code} after {sig.name}:\n{log[-3000:]}"
        assert "Traceback" not in log, log[-3000:]
        assert "[ERROR]" not in log, log[-3000:]
    finally:
        if camera is not None:
            camera.stop()
        node.stop()


def test_a_bad_backend_name_is_logged_once(tmp_path, recorder, domain):
    node = rp.start_node(rp.ros_env(domain), tmp_path, {"stats_period_s": 0.25, "grounder": {"backend": "gpt"}})
    try:
        for _ in range(2):
            assert not recorder.change_state("configure", timeout=60.0)
        assert rp.wait_until(lambda: "unknown grounder backend 'gpt'" in recorder.node_error(), 30.0), \
            f"{recorder.node_error()!r}\n{node.text()[-3000:]}"
    finally:
        assert node.stop() == 0
    log = node.text()
    assert log.count("cannot declare the parameters of grounder backend 'gpt'") == 1, log
    # each failed configure says why in its own line
    assert log.count("configure failed: grounder backend 'gpt' failed to load: unknown grounder backend") == 2, log
