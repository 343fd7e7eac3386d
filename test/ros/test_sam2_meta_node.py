"""The node with Meta's sam2 tracker (tracker.backend sam2_meta) and the built-in grounder over
real DDS, as test_sam2_node.py runs the transformers one: the node process loads a tiny random
checkpoint in Meta's layout (.pt and its Hydra config beside it) from tracker.checkpoint,
`steerseg-play` publishes DAVIS frames and a command, and the test process records masks, tracks
and /diagnostics. Random weights make the masks meaningless, so this checks what the node does
with them: stamps, one track id, the tracker in use. And a missing checkpoint: the node stays
up, names it, or falls back to the built-in tracker when told to."""
from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytest.importorskip("sam2", reason="needs Meta's sam2 package (scripts/setup_env.sh installs it)")

import ros_processes as rp  # noqa: E402

from steerseg_ros.streaming.pipeline import TrackState  # noqa: E402
from steerseg_testing.meta_checkpoint import random_meta_checkpoint  # noqa: E402
from steerseg_ros.tracking.sam2_checkpoints import meta_compatible  # noqa: E402
from steerseg_testing.tiny_sam2 import tiny_config  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.models, pytest.mark.timeout(300)]

SEQUENCE, FRAMES, RATE = "cows", 30, 6.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pt, _ = random_meta_checkpoint(tmp_path_factory.mktemp("sam2_meta") / "tiny.pt", meta_compatible(tiny_config(128)))
    return pt


def test_node_tracks_a_grounded_command_with_meta_sam2(tmp_path, domain, recorder, checkpoint, davis_root,
                                                       davis_expressions):
    command = next(e["exp"] for e in davis_expressions[SEQUENCE]["expressions"] if e["kind"] == "referring")
    frames = davis_root / "JPEGImages" / "480p" / SEQUENCE
    params = {"stats_period_s": 0.5,
              "tracker": {"backend": "sam2_meta", "checkpoint": str(checkpoint), "device": "cpu"},
              "pipeline": {"regrounding_period_s": 30.0, "lost_timeout_s": 30.0}}
    manifest, log, counters = rp.play_through_node(
        tmp_path, domain, recorder, params, frames,
        ["--count", str(FRAMES), "--command", command, "--command-at", "0"], RATE, configure_timeout=120.0,
        hold_while_grounding=True)  # a loaded machine's grounding may outlast the clip otherwise
    assert counters["tracker"] == "sam2_meta"
    assert int(counters.get("pipeline.groundings", 0)) >= 1 and int(counters.get("pipeline.grounding_failures", 0)) == 0
    stamps = {e["stamp_ns"] for e in manifest}
    assert set(recorder.masks) <= stamps and len(recorder.masks) >= 0.9 * len(stamps)
    with recorder.lock:
        tracks = [t for m in recorder.tracks for t in m.tracks]
    # Random weights: the track may be doubted (UNSEEN) on every frame; it must exist, once.
    live = {t.id for t in tracks if t.state in (TrackState.TRACKING, TrackState.REGROUNDING, TrackState.UNSEEN,
                                                 TrackState.LOST)}
    assert len(live) == 1, f"expected one track, got {sorted(live)}\n{log[-3000:]}"
    assert "Traceback" not in log


def test_missing_meta_checkpoint_leaves_the_node_up_or_falls_back(tmp_path, domain, recorder):
    missing = {"backend": "sam2_meta", "checkpoint": str(tmp_path / "sam2.1_hiera_tiny.pt")}
    error = rp.check_missing_weights(tmp_path, domain, recorder, "tracker", missing, "sam2.1_hiera_tiny.pt")
    assert "dl.fbaipublicfiles.com" in error
