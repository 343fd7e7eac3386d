"""The SAM2 tracker's memory bank stays bounded without changing what it tracks: pruned and
unpruned streams give the same masks, and memory stays flat over 2,000 frames (tiny random
checkpoint, small frames)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
psutil = pytest.importorskip("psutil")

from conftest import load_davis  # noqa: E402
from steerseg_ros.streaming import backends  # noqa: E402
from steerseg_ros.frame import Frame  # noqa: E402


pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_torch_thread")]


def make(sam2_checkpoint, **options):
    return backends.make_tracker("sam2", {"model": str(sam2_checkpoint), "local_files_only": True, **options})


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def stored_frames(tracker) -> list[int]:
    """Per live object, how many frames' outputs its session holds."""
    counts = []
    for state in tracker._live.values():
        outputs = state.session.output_dict_per_obj[0]
        counts.append(len(outputs["cond_frame_outputs"]) + len(outputs["non_cond_frame_outputs"])
                      + len(state.session.processed_frames))
    return counts


def test_pruned_and_unpruned_streams_give_the_same_masks(sam2_checkpoint, davis_root):
    _, images, masks = load_davis(davis_root, "bmx-trees", count=80)
    frames = [Frame(i, i * 33_333_333, image) for i, image in enumerate(images)]
    pruned, unpruned = make(sam2_checkpoint), make(sam2_checkpoint, prune_memory=False)
    ys, xs = np.nonzero(masks[0])
    for tracker in (pruned, unpruned):
        tracker.attach(1, tracker.start(frames[0], mask=masks[0]))
        tracker.attach(2, tracker.start(frames[0], points=np.array([[60.0, 60.0]]), labels=np.array([1])))
    for frame in frames[1:40]:
        a, b = pruned.step(frame), unpruned.step(frame)
        assert all(iou(a[k].mask, b[k].mask) >= 0.999 for k in (1, 2)), frame.seq
    # A third object joins mid-stream after a catch-up through ten buffered frames.
    for tracker in (pruned, unpruned):
        state = tracker.start(frames[30], mask=masks[30])
        for frame in frames[31:40]:
            tracker.advance(state, frame)
        tracker.attach(3, state)
    for frame in frames[40:]:
        a, b = pruned.step(frame), unpruned.step(frame)
        assert all(iou(a[k].mask, b[k].mask) >= 0.999 for k in (1, 2, 3)), frame.seq
    # Pruning kept only the conditioning frame and the memory/pointer window (16 frames with
    # SAM2's 7 memories and 16 pointers), while the unpruned sessions kept every frame.
    window = 1 + max(pruned.memory_frames, pruned.pointer_frames)
    assert stored_frames(pruned) == [window] * 3
    assert stored_frames(unpruned) == [1 + 79 + 80, 1 + 79 + 80, 1 + 49 + 50]  # outputs, pixel values
    assert pruned.memory_bytes() < unpruned.memory_bytes() / 4


@pytest.mark.timeout(240)
def test_memory_stays_flat_over_2000_frames(sam2_checkpoint, davis_root):
    _, images, masks = load_davis(davis_root, "blackswan", count=50)
    small = [cv2.resize(im, (96, 54), interpolation=cv2.INTER_AREA) for im in images]
    seed = cv2.resize(masks[0].astype(np.uint8), (96, 54), interpolation=cv2.INTER_NEAREST) > 0
    tracker = make(sam2_checkpoint)
    tracker.attach(1, tracker.start(Frame(0, 0, small[0]), mask=seed))
    process = psutil.Process()
    samples = {}
    for seq in range(1, 2001):
        frame = Frame(seq, seq * 33_333_333, small[seq % len(small)])
        out = tracker.step(frame)
        if seq % 400 == 0:
            # A re-grounding refreshes the object: a new seed on a recent frame, caught up.
            state = tracker.start(Frame(seq - 3, 0, small[(seq - 3) % len(small)]), mask=out[1].mask)
            for back in (2, 1, 0):
                tracker.advance(state, Frame(seq - back, 0, small[(seq - back) % len(small)]))
            tracker.attach(1, state)
        if seq in (350, 1990):  # both long after a refresh: full memory windows
            samples[seq] = (tracker.memory_bytes(), process.memory_info().rss, stored_frames(tracker))
    (bytes_early, rss_early, frames_early), (bytes_late, rss_late, frames_late) = samples[350], samples[1990]
    assert frames_early == frames_late == [1 + max(tracker.memory_frames, tracker.pointer_frames)]
    assert bytes_late == bytes_early
    # Unpruned, this stream would hold about 70 kB more per frame (over 100 MB by frame 2000).
    assert rss_late - rss_early < 20 * 2**20, f"resident memory grew {(rss_late - rss_early) / 2**20:.1f} MiB"


def test_benchmark_measures_memory_growth():
    from steerseg_bench.sam2 import bench_sam2

    figures = bench_sam2("tiny", frames=2, objects=(1, 2), memory_frames=40, catch_up_frames=2, onnx=False,
                         frame_size=(96, 128))
    assert sorted(figures["step_ms"]) == [1, 2] and figures["catch_up_ms_per_frame"] > 0
    assert figures["memory"]["pruned"]["tracker_bytes_per_1000_frames"] == 0
    assert figures["memory"]["unpruned"]["tracker_bytes_per_1000_frames"] > 10 * 2**20
