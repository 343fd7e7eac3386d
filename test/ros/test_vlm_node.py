"""The node with the vision-language grounder over real DDS: the node process loads a tiny random
Qwen2.5-VL checkpoint from a folder (grounder.backend decaf, grounder.model the
folder), `steerseg-play` publishes DAVIS frames and a command, and the test process watches the
masks and /diagnostics. And the user-facing failure: weights that are not on the machine leave
the node up and unconfigured with the model named in its error, or, with
grounder.fallback_to_builtin, running on the built-in grounder."""
from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytest.importorskip("transformers")

import ros_processes as rp  # noqa: E402
from vlm_helpers import checkpoint  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.models, pytest.mark.timeout(300)]

SEQUENCE, FRAMES, RATE = "blackswan", 24, 6.0
# Small enough that a tiny model grounds 4 keyframes in a second or two on a CPU.
PIPELINE = {"keyframes": {"count": 4, "window_s": 2.0}, "min_keyframes": 4, "regrounding_period_s": 30.0}


def _grounder(mode: str, **extra) -> dict:
    # Short answers: a random model rarely stops by itself, and DecAF's 128 answer tokens would
    # keep the grounding (and the node's shutdown, which waits for it) busy for long.
    return {"backend": mode, "model": str(checkpoint("qwen2_5_vl")), "video_tokens_per_pair": 24,
            "cot_tokens": 6, "answer_tokens": 6, **extra}


def test_node_grounds_a_command_with_the_vlm_backend(tmp_path, domain, recorder, davis_root, davis_expressions):
    mode = "decaf"  # steerseg runs the same node path (tested end to end without DDS)
    command = next(e["exp"] for e in davis_expressions[SEQUENCE]["expressions"] if e["kind"] == "referring")
    frames = davis_root / "JPEGImages" / "480p" / SEQUENCE
    # The grounding runs in the node's worker thread: wait for it to be counted.
    manifest, log, counters = rp.play_through_node(
        tmp_path, domain, recorder, {"stats_period_s": 0.1, "grounder": _grounder(mode), "pipeline": PIPELINE},
        frames, ["--count", str(FRAMES), "--command", command, "--command-at", "0"], RATE,
        configure_timeout=120.0, until=lambda: int(recorder.counters().get("pipeline.groundings", 0)) >= 1,
        hold_while_grounding=True)
    assert counters["grounder"] == mode
    assert counters["command"] == " ".join(command.split())
    assert int(counters.get("pipeline.grounding_failures", 0)) == 0, log[-3000:]
    stamps = {e["stamp_ns"] for e in manifest}
    assert set(recorder.masks) == stamps  # played in lockstep: every frame answered
    assert "Traceback" not in log


def test_missing_weights_leave_the_node_up_and_say_how_to_get_them(tmp_path, domain, recorder):
    missing = {"backend": "decaf", "model": "Qwen/Qwen2.5-VL-3B-Instruct", "local_files_only": True}
    error = rp.check_missing_weights(tmp_path, domain, recorder, "grounder", missing, "Qwen/Qwen2.5-VL-3B-Instruct")
    assert "hf download Qwen/Qwen2.5-VL-3B-Instruct" in error
