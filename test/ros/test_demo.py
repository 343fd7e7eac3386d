"""steerseg-demo: one label PNG per input frame named after it, an overlay video with one frame
per input frame, for a frame folder or a video file, seeded by a mask or driven by a command;
and through the node over DDS it produces the same masks as the in-process pipeline."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import load_davis
from steerseg_ros.tools import demo

SEQUENCE, FRAMES = "car-shadow", 10


def _masks(out_dir, names):
    return [cv2.imread(str(out_dir / "masks" / f"{n}.png"), cv2.IMREAD_UNCHANGED) for n in names]


def _video_frames(path):
    capture = cv2.VideoCapture(str(path))
    count = 0
    size = None
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        size = frame.shape[:2]
        count += 1
    capture.release()
    return count, size


def test_direct_seed_mask_writes_one_mask_per_frame(tmp_path, davis_root):
    names, images, gts = load_davis(davis_root, SEQUENCE, FRAMES)
    frames = davis_root / "JPEGImages" / "480p" / SEQUENCE
    seed = davis_root / "Annotations" / "480p" / SEQUENCE / f"{names[0]}.png"
    out = tmp_path / "direct"
    assert demo.main(["--frames", str(frames), "--count", str(FRAMES), "--seed-mask", str(seed), "--direct",
                      "--out", str(out), "--ground-truth", str(davis_root / "Annotations" / "480p" / SEQUENCE)]) == 0
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == names
    masks = _masks(out, names)
    assert all(m.dtype == np.uint8 and m.shape == gts[0].shape for m in masks)
    assert set(np.unique(np.stack(masks))) == {0, 1}  # the one track's label value
    np.testing.assert_array_equal(masks[0] > 0, gts[0])  # the seed frame shows the seed
    assert _video_frames(out / "overlay.mp4") == (FRAMES, gts[0].shape)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == FRAMES and summary["frames_without_mask"] == 0
    assert summary["score"]["J"] > 0.5  # the built-in tracker follows a car for ten frames


def test_direct_command_on_a_video_file(tmp_path, bedroom_video):
    out = tmp_path / "video"
    assert demo.main(["--video", str(bedroom_video), "--count", "6", "--command", "the bed", "--direct",
                      "--out", str(out)]) == 0
    names = [f"{i:05d}" for i in range(6)]
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == names
    count, size = _video_frames(out / "overlay.mp4")
    assert count == 6 and size == (540, 960)
    # grounding waits for its keyframes: the first frames have no mask, and their PNGs are zeros
    assert not _masks(out, names)[0].any()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        demo.main(["--frames", str(tmp_path), "--command", "x", "--seed-mask", "m.png", "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError):
        demo.main(["--frames", str(tmp_path / "missing"), "--command", "x", "--out", str(tmp_path / "o"), "--direct"])


@pytest.mark.ros
@pytest.mark.timeout(180)
def test_through_the_node_gives_the_direct_masks(tmp_path, davis_root):
    """The default path: node and player as processes, outputs matched to frames by stamp."""
    pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
    names, _, _ = load_davis(davis_root, SEQUENCE, FRAMES)
    frames = davis_root / "JPEGImages" / "480p" / SEQUENCE
    seed = davis_root / "Annotations" / "480p" / SEQUENCE / f"{names[0]}.png"
    common = ["--frames", str(frames), "--count", str(FRAMES), "--seed-mask", str(seed), "--rate", "5"]
    assert demo.main(common + ["--direct", "--out", str(tmp_path / "direct")]) == 0
    import ros_processes

    # A domain from this run's range (STEERSEG_TEST_DOMAINS): another run's masks on the same
    # domain would arrive as unmatched stamps.
    domain = ["--domain-id", str(ros_processes.random_domain_id())]
    run = subprocess.run([sys.executable, "-m", "steerseg_ros.tools.demo", *common, *domain, "--out", str(tmp_path / "node")],
                         capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "node" / "summary.json").read_text())
    assert summary["mode"] == "node" and summary["unmatched_stamps"] == 0
    assert summary["masks_received"] == FRAMES, summary  # the player waits for each frame's mask
    assert _video_frames(tmp_path / "node" / "overlay.mp4")[0] == FRAMES
    direct, node = _masks(tmp_path / "direct", names), _masks(tmp_path / "node", names)
    # Frame 0's seed can reach the node just after its frame (then it is applied from frame 1,
    # caught up): compare from frame 1 on, where both paths have run the same tracker.
    ious = [np.count_nonzero((a > 0) & (b > 0)) / max(1, np.count_nonzero((a > 0) | (b > 0)))
            for a, b in zip(direct[1:], node[1:])]
    assert min(ious) > 0.98, ious
