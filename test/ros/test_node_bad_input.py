"""Bad input to the running node over real DDS: each kind (wrong encoding, zero-size image, data
shorter than height x step, empty command, a 100 kB command, stamps jumping backwards, seed
masks of the wrong size, empty or for a frame that never comes) gives a logged rejection counted
under its own reason on /diagnostics, and the node keeps publishing a mask for the next good
frame; an image size change is counted, and /diagnostics goes back to OK once rejections stop. The node runs as its own process with the built-in backends and
`autostart` (no lifecycle manager); the test process is the other participant.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")

import ros_processes as rp  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from steerseg_ros.frame import NS_PER_S  # noqa: E402
from steerseg_ros.ros.image_conversion import array_to_image, rgb_to_image  # noqa: E402
from steerseg_ros.ros.messages import header_at  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]

H, W = 48, 64
WAIT_S = 60.0  # only a failing test waits this long: room for a slow, busy machine
BUFFER_SIZE = 16


class Session:
    """The node process, the test's participant, and the stamps of the frames sent so far."""

    def __init__(self, tmp_path):
        self.domain = rp.random_domain_id()
        self.recorder = rp.Recorder(self.domain)
        self.node = rp.start_node(rp.ros_env(self.domain), tmp_path, {
            "autostart": True, "image_qos": "reliable", "stats_period_s": 0.25,
            "pipeline": {"buffer_size": BUFFER_SIZE}})
        self.images = self.recorder.publisher(Image, "image")
        self.seeds = self.recorder.publisher(Image, "seed_mask")
        self.commands = self.recorder.publisher(String, "command")
        self.next_stamp = 10 * NS_PER_S
        yy, xx = np.mgrid[0:H, 0:W]
        self.picture = np.stack([xx * 4, yy * 5, 255 - xx * 4], axis=-1).astype(np.uint8)

    def stamp(self) -> int:
        self.next_stamp += NS_PER_S // 10
        return self.next_stamp

    def send_good(self, stamp: int | None = None) -> bool:
        """A valid frame; True once its mask has come back."""
        stamp = self.stamp() if stamp is None else stamp
        self.images.publish(rgb_to_image(self.picture, "bgr8", header_at(stamp, "camera")))
        return rp.wait_until(lambda: stamp in self.recorder.masks, WAIT_S)

    def counter(self, key: str) -> int:
        return int(self.recorder.counters().get(key, 0))

    def wait_counter(self, key: str, at_least: int = 1) -> bool:
        return rp.wait_until(lambda: self.counter(key) >= at_least, WAIT_S)

    def feed_until_counter(self, key: str, at_least: int = 1, frames: int = 20) -> bool:
        """Good frames, one at a time, until the counter is reached: a seed mask and the frame
        after it travel on two topics, and DDS does not order messages across topics, so the
        seed may reach the node only after that frame (it is then applied on a later one)."""
        for _ in range(frames):
            if self.counter(key) >= at_least:
                return True
            self.send_good()
        return self.wait_counter(key, at_least)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    s = Session(tmp_path_factory.mktemp("bad_input"))
    try:
        rp.wait_until(lambda: s.recorder.counters().get("lifecycle") == "active" or s.recorder.node_error(), 60.0)
        assert s.recorder.counters().get("lifecycle") == "active", \
            f"the node did not come up active: {s.recorder.node_error()}\n{s.node.text()[-3000:]}"
        assert rp.wait_until(lambda: s.images.get_subscription_count() > 0
                             and s.commands.get_subscription_count() > 0
                             and s.seeds.get_subscription_count() > 0, WAIT_S)
        assert s.send_good(), f"no mask for a good frame:\n{s.node.text()[-3000:]}"
        yield s
    finally:
        s.node.stop()
        s.recorder.close()


def _raw(encoding="bgr8", height=H, width=W, step=None, size=None):
    msg = Image(height=height, width=width, encoding=encoding)
    msg.step = width * 3 if step is None else step
    msg.data = bytes(msg.step * height if size is None else size)
    return msg


@pytest.mark.parametrize("make, reason", [
    (lambda: _raw("16UC1", step=W * 2), "image.encoding"),
    (lambda: _raw(height=0, width=0, size=0), "image.zero_size"),
    (lambda: _raw(size=H * W * 3 - 100), "image.short_data"),
], ids=["wrong_encoding", "zero_size", "short_data"])
def test_bad_images_are_rejected_and_the_node_keeps_publishing(session, make, reason):
    before = session.counter(f"rejected.{reason}")
    msg = make()
    msg.header = header_at(session.stamp(), "camera")
    session.images.publish(msg)
    assert session.wait_counter(f"rejected.{reason}", before + 1), session.recorder.counters()
    assert session.send_good(), "no mask after a bad image"


@pytest.mark.parametrize("text, reason", [
    ("", "command.empty"),
    ("   \t  ", "command.empty"),
    ("x" * 100_000, "command.too_long"),
], ids=["empty", "blank", "100kB"])
def test_bad_commands_are_rejected_and_the_node_keeps_publishing(session, text, reason):
    before = session.counter(f"rejected.{reason}")
    session.commands.publish(String(data=text))
    assert session.wait_counter(f"rejected.{reason}", before + 1), session.recorder.counters()
    assert session.recorder.counters().get("command", "") == ""  # the bad command was not taken
    assert session.send_good(), "no mask after a bad command"


def test_stamp_jumping_back_a_little_is_rejected(session):
    assert session.send_good()
    newest = session.next_stamp
    before = session.counter("rejected.image.stamp")
    stale = newest - NS_PER_S // 20  # 50 ms behind the newest frame
    session.images.publish(rgb_to_image(session.picture, "bgr8", header_at(stale, "camera")))
    assert session.wait_counter("rejected.image.stamp", before + 1), session.recorder.counters()
    assert stale not in session.recorder.masks
    assert session.send_good()


def test_stamp_jumping_far_back_restarts_and_keeps_publishing(session):
    """A source that starts over (a bag looping) resets the pipeline instead of being refused."""
    assert session.send_good()
    before = session.counter("pipeline.time_resets")
    restarted = session.next_stamp - 30 * NS_PER_S
    assert session.send_good(restarted), "no mask for the first frame after the source restarted"
    assert session.wait_counter("pipeline.time_resets", before + 1)
    session.next_stamp = restarted
    assert session.send_good()


def _seed(stamp, mask):
    return array_to_image((mask * 255).astype(np.uint8), "mono8", header_at(stamp, "camera"))


def _square():
    mask = np.zeros((H, W), bool)
    mask[10:30, 20:40] = True
    return mask


@pytest.mark.parametrize("mask, reason", [
    (np.ones((H + 2, W), bool), "seed.size"),
    (np.zeros((H, W), bool), "seed.empty"),
], ids=["wrong_size", "empty"])
def test_bad_seed_masks_are_counted_under_their_own_reason(session, mask, reason):
    assert session.send_good()
    before = session.counter(f"rejected.{reason}")
    session.seeds.publish(_seed(session.next_stamp, mask))
    assert session.send_good()
    assert session.feed_until_counter(f"rejected.{reason}", before + 1), session.recorder.counters()
    assert session.counter("rejected.seed.no_frame") == 0


def test_a_seed_whose_frame_never_comes_does_not_block_the_next_and_expires(session):
    seeded = session.counter("seeds")
    expired = session.counter("rejected.seed.expired")
    session.seeds.publish(_seed(session.next_stamp + 3600 * NS_PER_S, _square()))  # an hour ahead
    assert session.send_good()
    good = session.stamp()
    session.seeds.publish(_seed(good, _square()))
    assert session.send_good(good)
    assert session.feed_until_counter("seeds", seeded + 1), \
        f"a seed for a frame that came was held up: {session.recorder.counters()}"
    for _ in range(BUFFER_SIZE + 1):
        assert session.send_good()
    assert session.wait_counter("rejected.seed.expired", expired + 1), session.recorder.counters()
    assert session.counter("seeds") == seeded + 1


def test_an_image_size_change_is_counted(session):
    before = session.counter("pipeline.size_changes")
    bigger = np.zeros((H + 16, W + 16, 3), np.uint8)
    stamp = session.stamp()
    session.images.publish(rgb_to_image(bigger, "bgr8", header_at(stamp, "camera")))
    assert rp.wait_until(lambda: stamp in session.recorder.masks, WAIT_S)
    assert session.send_good()  # and back
    assert session.wait_counter("pipeline.size_changes", before + 2), session.recorder.counters()


def test_diagnostics_return_to_ok_once_rejections_stop(session):
    """The level reflects the last few stats periods, not the life of the process."""
    before = session.counter("rejected.command.empty")
    session.commands.publish(String(data=""))
    assert session.wait_counter("rejected.command.empty", before + 1)
    assert rp.wait_until(lambda: session.recorder.level() == DiagnosticStatus.WARN, WAIT_S)
    assert session.send_good()
    assert rp.wait_until(lambda: session.recorder.level() == DiagnosticStatus.OK, 60.0), \
        session.recorder.counters()


def test_every_rejection_was_logged_and_the_node_exits_cleanly(session):
    # Runs last in this module: stop the node, then read everything it logged.
    assert session.send_good()
    assert session.node.stop() == 0
    log = session.node.text()
    for reason in ("image.encoding", "image.zero_size", "image.short_data", "command.empty",
                   "command.too_long", "image.stamp", "seed.size", "seed.empty", "seed.expired"):
        assert f"rejected ({reason})" in log, f"no log line for {reason}:\n{log[-3000:]}"
    assert "Traceback" not in log
    # a size change and a time reset are no reason to raise buffer_size
    assert "raise buffer_size" not in log
    # the 100 kB command is logged by its length, not in full
    assert "x" * 1000 not in log
