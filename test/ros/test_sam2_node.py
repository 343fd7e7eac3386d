"""The node with the SAM2 tracker and the built-in grounder over real DDS: the node process loads a
tiny random SAM2 checkpoint from a folder (tracker.backend sam2, tracker.model the folder),
`steerseg-play` publishes DAVIS frames and a command, and the test process records masks, tracks
and /diagnostics. Random weights make the masks meaningless, so this checks what the node does
with them: stamps, one track id, the tracker in use. And missing SAM2 weights: the node stays up,
names the model, or falls back to the built-in tracker when told to."""
from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytest.importorskip("transformers")

import ros_processes as rp  # noqa: E402

from steerseg_ros.streaming.pipeline import TrackState  # noqa: E402
from steerseg_testing.tiny_sam2 import save_random_sam2, tiny_config  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.models, pytest.mark.timeout(300)]

SEQUENCE, FRAMES, RATE = "cows", 30, 6.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_sam2(tmp_path_factory.mktemp("sam2") / "tiny", tiny_config(128))


def test_node_tracks_a_grounded_command_with_sam2(tmp_path, domain, recorder, checkpoint, davis_root,
                                                  davis_expressions):
    command = next(e["exp"] for e in davis_expressions[SEQUENCE]["expressions"] if e["kind"] == "referring")
    frames = davis_root / "JPEGImages" / "480p" / SEQUENCE
    params = {"stats_period_s": 0.1, "tracker": {"backend": "sam2", "model": str(checkpoint), "device": "cpu"},
              "pipeline": {"regrounding_period_s": 30.0, "lost_timeout_s": 30.0}}
    manifest, log, counters = rp.play_through_node(
        tmp_path, domain, recorder, params, frames,
        ["--count", str(FRAMES), "--command", command, "--command-at", "0"], RATE, configure_timeout=120.0,
        hold_while_grounding=True)
    assert counters["tracker"] == "sam2"
    assert int(counters.get("pipeline.groundings", 0)) >= 1 and int(counters.get("pipeline.grounding_failures", 0)) == 0
    stamps = {e["stamp_ns"] for e in manifest}
    assert set(recorder.masks) == stamps  # played in lockstep: every frame answered
    with recorder.lock:
        tracks = [t for m in recorder.tracks for t in m.tracks]
    # Random weights: the track may be doubted (UNSEEN) on every frame; it must exist, once.
    live = {t.id for t in tracks if t.state in (TrackState.TRACKING, TrackState.REGROUNDING, TrackState.UNSEEN,
                                                 TrackState.LOST)}
    assert len(live) == 1, f"expected one track, got {sorted(live)}\n{log[-3000:]}"
    assert "Traceback" not in log


def test_missing_sam2_weights_leave_the_node_up_or_fall_back(tmp_path, domain, recorder):
    missing = {"backend": "sam2", "model": "facebook/sam2.1-hiera-tiny", "local_files_only": True}
    rp.check_missing_weights(tmp_path, domain, recorder, "tracker", missing, "facebook/sam2.1-hiera-tiny")
