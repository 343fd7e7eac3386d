"""A short soak of the node over real DDS: a few hundred DAVIS frames at camera rate with a command
and periodic re-grounding. Every frame the node received is accounted for on /diagnostics
(processed, dropped for a newer one, or rejected), and its thread and file-descriptor counts stay
flat after the warm-up (a thread or a descriptor per frame or per grounding would show here long
before a robot runs out of them). Memory growth needs thousands of frames and a quiet machine:
that figure is steerseg-bench's soak section, not a test."""
from __future__ import annotations

import time

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
psutil = pytest.importorskip("psutil")

import ros_processes as rp  # noqa: E402
from conftest import load_davis  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]

SEQUENCE, FRAMES, WARMUP, SAMPLE_EVERY, RATE = "blackswan", 300, 100, 20, 15.0


def _accounting(counters: dict[str, str]) -> tuple[int, int, int, int]:
    received = int(counters.get("frames_received", 0))
    processed = int(counters.get("frames_processed", 0))
    dropped = int(counters.get("frames_dropped", 0))
    rejected = sum(int(v) for k, v in counters.items() if k.startswith("rejected.image."))
    return received, processed, dropped, rejected


def test_every_frame_is_accounted_for_and_threads_and_fds_stay_flat(tmp_path, domain, recorder, davis_root,
                                                                     davis_expressions):
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from steerseg_ros.ros.image_conversion import rgb_to_image
    from steerseg_ros.ros.messages import header_at

    _, images, _ = load_davis(davis_root, SEQUENCE, count=20)
    frames = [rgb_to_image(im, "bgr8") for im in images + images[-2:0:-1]]  # back and forth
    command = next(e["exp"] for e in davis_expressions[SEQUENCE]["expressions"] if e["kind"] == "referring")
    node = rp.start_node(rp.ros_env(domain), tmp_path, {
        "stats_period_s": 0.5, "image_qos": "reliable",
        "pipeline": {"regrounding_period_s": 2.0}})
    try:
        assert recorder.change_state("configure", timeout=60.0), node.text()[-3000:]
        assert recorder.change_state("activate", timeout=30.0), node.text()[-3000:]
        process = psutil.Process(node.popen.pid)
        camera = recorder.publisher(Image, "image")
        assert rp.wait_until(lambda: camera.get_subscription_count() > 0, 60.0)
        commands = recorder.publisher(String, "command")
        assert rp.wait_until(lambda: commands.get_subscription_count() > 0, 60.0)
        commands.publish(String(data=command))

        samples = []  # (threads, fds) every SAMPLE_EVERY frames after the warm-up
        start = time.monotonic()
        for i in range(FRAMES):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            msg = frames[i % len(frames)]
            msg.header = header_at(10**12 + i * int(1e9 / RATE), "camera")
            camera.publish(msg)
            if i >= WARMUP and i % SAMPLE_EVERY == 0:
                samples.append((process.num_threads(), process.num_fds()))

        # Once the node has taken the last frame, the frame counters stop moving and must add up
        # (a catch-up may still be stepping through buffered frames in the background).
        def settled(previous=[None]):
            received, processed, dropped, rejected = now = _accounting(recorder.counters())
            done = now == previous[0] and received > 0 and received == processed + dropped + rejected
            previous[0] = now
            return done

        assert rp.wait_until(settled, 60.0, interval=1.0), f"{recorder.counters()}\n{node.text()[-3000:]}"
        counters = recorder.counters()
        received, processed, dropped, rejected = _accounting(counters)
        assert 0 < received <= FRAMES and processed > 0, counters
        assert int(counters.get("pipeline.groundings", 0)) >= 2, counters  # re-grounding ran
        assert int(counters.get("internal_errors", 0)) == 0, node.text()[-3000:]
        threads, fds = {s[0] for s in samples}, {s[1] for s in samples}
        assert len(threads) == 1, f"thread count changed after the warm-up: {[s[0] for s in samples]}"
        assert len(fds) == 1, f"file-descriptor count changed after the warm-up: {[s[1] for s in samples]}"
    finally:
        assert node.stop() == 0, f"the node did not exit cleanly:\n{node.text()[-3000:]}"
