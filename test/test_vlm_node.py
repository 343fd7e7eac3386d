"""The node with the vision-language grounder over real DDS: the node process loads a tiny random
Qwen2.5-VL checkpoint from a folder (grounder.backend decaf, grounder.model the
folder), `steerseg-play` publishes DAVIS frames and a command, and the test process watches the
masks and /diagnostics. And the user-facing failure: weights that are not on the machine leave
the node up and unconfigured with the model named in its error, or, with
grounder.fallback_to_builtin, running on the built-in grounder."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytest.importorskip("transformers")

import ros_processes as rp  # noqa: E402
from vlm_helpers import checkpoint  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.models, pytest.mark.timeout(300)]

SEQUENCE, FRAMES, RATE = "blackswan", 24, 6.0
# Small enough that a tiny model grounds 4 keyframes in a second or two on a CPU.
PIPELINE = {"keyframes": {"count": 4, "window_s": 2.0}, "min_keyframes": 4, "regrounding_period_s": 30.0}


@pytest.fixture(scope="module")
def domain():
    return rp.random_domain_id()


@pytest.fixture
def recorder(domain):
    r = rp.Recorder(domain)
    yield r
    r.close()


def _grounder(mode: str, **extra) -> dict:
    return {"backend": mode, "model": str(checkpoint("qwen2_5_vl")), "video_tokens_per_pair": 24,
            "cot_tokens": 6, **extra}


def test_node_grounds_a_command_with_the_vlm_backend(tmp_path, domain, recorder, davis_root, davis_expressions):
    mode = "decaf"  # steerseg runs the same node path (tested end to end without DDS)
    command = next(e["exp"] for e in davis_expressions[SEQUENCE]["expressions"] if e["kind"] == "referring")
    frames = davis_root / "JPEGImages" / "480p" / SEQUENCE
    node = rp.start_node(rp.ros_env(domain), tmp_path, {"stats_period_s": 0.5, "grounder": _grounder(mode),
                                                       "pipeline": PIPELINE})
    try:
        assert recorder.change_state("configure", timeout=120.0), f"configure failed:\n{node.text()[-3000:]}"
        assert recorder.change_state("activate", timeout=30.0), f"activate failed:\n{node.text()[-3000:]}"
        manifest_path = tmp_path / "manifest.jsonl"
        play = rp.Process(["steerseg-play", "--frames", str(frames), "--count", str(FRAMES), "--rate", str(RATE),
                           "--manifest", str(manifest_path), "--wait-subscribers", "20", "--command", command,
                           "--command-at", "0"], rp.ros_env(domain), tmp_path / "play.log")
        try:
            assert play.wait(120.0) == 0, f"steerseg-play failed:\n{play.text()[-3000:]}"
        finally:
            play.stop()
        manifest = [json.loads(line) for line in manifest_path.read_text().splitlines()]
        last = manifest[-1]["stamp_ns"]
        assert rp.wait_until(lambda: last in recorder.masks, 30.0), "no mask for the last frame"
        # The grounding runs in the node's worker thread: wait for it to be counted.
        assert rp.wait_until(lambda: int(recorder.counters().get("pipeline.groundings", 0)) >= 1, 60.0), \
            f"no grounding finished: {recorder.counters()}\n{node.text()[-3000:]}"
        counters = recorder.counters()
    finally:
        assert node.stop() == 0, f"the node did not exit cleanly:\n{node.text()[-3000:]}"
    log = node.text()
    assert counters["grounder"] == mode
    assert counters["command"] == " ".join(command.split())
    assert int(counters.get("pipeline.grounding_failures", 0)) == 0, log[-3000:]
    stamps = {e["stamp_ns"] for e in manifest}
    assert set(recorder.masks) <= stamps and len(recorder.masks) >= 0.9 * len(stamps)
    assert "Traceback" not in log


def test_missing_weights_leave_the_node_up_and_say_how_to_get_them(tmp_path, domain, recorder):
    missing = {"backend": "decaf", "model": "Qwen/Qwen2.5-VL-3B-Instruct", "local_files_only": True}
    node = rp.start_node(rp.ros_env(domain), tmp_path, {"stats_period_s": 0.5, "grounder": missing})
    try:
        assert not recorder.change_state("configure", timeout=60.0)
        assert rp.wait_until(lambda: "Qwen/Qwen2.5-VL-3B-Instruct" in recorder.node_error(), 20.0), \
            f"no error on /diagnostics:\n{node.text()[-3000:]}"
        assert "huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct" in recorder.node_error()
        assert node.popen.poll() is None, "the node exited"
    finally:
        assert node.stop() == 0, f"the node did not exit cleanly:\n{node.text()[-3000:]}"

    second = tmp_path / "fallback"
    second.mkdir()
    fallback = rp.start_node(rp.ros_env(domain), second,
                             {"stats_period_s": 0.5, "grounder": {**missing, "fallback_to_builtin": True}})
    try:
        assert recorder.change_state("configure", timeout=60.0), f"configure failed:\n{fallback.text()[-3000:]}"
        assert rp.wait_until(lambda: recorder.counters().get("grounder") == "builtin (fallback from decaf)", 20.0), \
            recorder.counters()
    finally:
        assert fallback.stop() == 0
