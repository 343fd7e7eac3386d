"""The frame ring buffer and keyframe selection."""
import threading

import numpy as np
import pytest

from steerseg_ros.frame import NS_PER_S

from steerseg_ros.streaming.buffer import FrameBuffer, KeyframeConfig, StampError, select_keyframes


def image(value=0, h=8, w=10):
    return np.full((h, w, 3), value, np.uint8)


def filled(buffer, n, fps=30.0, start_s=0.0, vary=True):
    for i in range(n):
        buffer.push(image(i % 256 if vary else 0), int((start_s + i / fps) * NS_PER_S))
    return buffer


def test_ring_keeps_the_newest_frames_with_contiguous_sequence_numbers():
    b = filled(FrameBuffer(5), 12)
    frames = b.frames()
    assert len(b) == 5
    assert [f.seq for f in frames] == [7, 8, 9, 10, 11]
    assert b.latest().seq == 11
    assert b.get(9) is frames[2]
    assert b.get(6) is None and b.get(12) is None
    assert [f.seq for f in b.frames_after(8)] == [9, 10, 11]
    assert [f.seq for f in b.frames_after(2)] == [7, 8, 9, 10, 11]  # older than the ring: all


def test_push_rejects_stale_stamps_and_bad_images():
    b = FrameBuffer(4)
    b.push(image(), 2 * NS_PER_S)
    with pytest.raises(StampError):
        b.push(image(), 2 * NS_PER_S)
    with pytest.raises(StampError):
        b.push(image(), 1 * NS_PER_S)
    with pytest.raises(ValueError):
        b.push(np.zeros((8, 10), np.uint8), 3 * NS_PER_S)
    with pytest.raises(ValueError):
        b.push(np.zeros((0, 10, 3), np.uint8), 3 * NS_PER_S)
    with pytest.raises(ValueError):
        b.push(np.zeros((8, 10, 3), np.float32), 3 * NS_PER_S)
    assert len(b) == 1
    b.clear()
    assert b.latest() is None
    assert b.push(image(), 3 * NS_PER_S).seq == 1  # sequence numbers never repeat


def test_keyframes_spread_uniformly_over_the_window_and_end_at_the_newest_frame():
    b = filled(FrameBuffer(400), 300)  # 10 s at 30 fps
    kf = b.select_keyframes(KeyframeConfig(count=8, window_s=3.0, min_spacing_s=0.05))
    stamps = np.array([f.stamp_ns for f in kf]) / NS_PER_S
    assert len(kf) == 8
    assert kf[-1] is b.latest()
    assert stamps[-1] - stamps[0] == pytest.approx(3.0, abs=1 / 30 + 1e-9)
    gaps = np.diff(stamps)
    assert np.all(gaps > 0)
    assert gaps.max() - gaps.min() <= 1 / 30 + 1e-9  # uniform up to one frame period


def test_keyframes_respect_the_minimum_spacing():
    b = filled(FrameBuffer(400), 100, fps=100.0)  # 1 s at 100 fps
    kf = b.select_keyframes(KeyframeConfig(count=8, window_s=0.1, min_spacing_s=0.03))
    stamps = np.array([f.stamp_ns for f in kf]) / NS_PER_S
    assert 2 <= len(kf) < 8
    assert np.all(np.diff(stamps) >= 0.03 - 1e-9)
    assert stamps[-1] - stamps[0] <= 0.1 + 1e-9


def test_few_frames_give_all_of_them_and_end_seq_limits_the_window():
    b = filled(FrameBuffer(10), 3)
    cfg = KeyframeConfig(count=8, min_spacing_s=0.0)
    assert [f.seq for f in b.select_keyframes(cfg)] == [0, 1, 2]
    assert [f.seq for f in b.select_keyframes(cfg, end_seq=1)] == [0, 1]
    # 30 fps frames are 33 ms apart: a 50 ms spacing keeps every other one.
    assert [f.seq for f in b.select_keyframes(KeyframeConfig(count=8, min_spacing_s=0.05))] == [0, 2]
    assert select_keyframes([], KeyframeConfig()) == []


def test_near_duplicate_frames_are_skipped_when_asked():
    b = filled(FrameBuffer(100), 60, vary=False)  # a static scene
    cfg = KeyframeConfig(count=8, window_s=2.0, min_spacing_s=0.0, dedup_threshold=1.0)
    assert len(b.select_keyframes(cfg)) == 1
    b2 = filled(FrameBuffer(100), 60, vary=True)
    assert len(b2.select_keyframes(cfg)) == 8


def test_invalid_keyframe_config_is_rejected():
    for bad in (KeyframeConfig(count=0), KeyframeConfig(window_s=0), KeyframeConfig(min_spacing_s=-1)):
        with pytest.raises(ValueError):
            bad.validate()
    with pytest.raises(ValueError):
        FrameBuffer(0)


def test_concurrent_push_and_read_stay_consistent():
    b = FrameBuffer(16)
    errors = []

    def reader():
        for _ in range(2000):
            frames = b.frames()
            seqs = [f.seq for f in frames]
            if seqs != list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False:
                errors.append(seqs)
            b.select_keyframes(KeyframeConfig(count=4))

    t = threading.Thread(target=reader)
    t.start()
    filled(b, 3000, fps=1000.0)
    t.join()
    assert not errors
    assert len(b) == 16


def test_spare_memory_is_only_a_frame_that_left_the_buffer_and_nothing_holds():
    """The node converts each camera frame into `spare` memory: a frame a grounding still
    holds (its keyframes), or a view, tensor or reference into one, must never be written over."""
    torch = pytest.importorskip("torch")
    b = FrameBuffer(4)
    assert b.spare((8, 10, 3)) is None  # nothing has left the buffer yet
    stamp = iter(range(1, 10_000))

    def push_spare(value):
        # What the node does with every camera frame: convert into spare memory when there is
        # some, then buffer it. True when spare memory was used.
        out = b.spare((8, 10, 3))
        if out is not None:
            assert not any(np.shares_memory(out, x) for x in protected)
        target = out if out is not None else np.empty((8, 10, 3), np.uint8)
        target[...] = value
        b.push(target, next(stamp) * NS_PER_S)
        return out is not None

    protected = []
    for v in range(4):
        push_spare(v)
    keyframes = b.select_keyframes(KeyframeConfig(count=2, window_s=100.0))  # a grounding holds these
    view = b.get(1).image[2:5]                                              # a crop kept somewhere
    tensor = torch.from_numpy(b.get(2).image)                              # a tracker's tensor
    protected = [f.image for f in keyframes] + [view, tensor.numpy()]
    held = [x.copy() for x in protected]
    reused = [push_spare(100 + v) for v in range(12)]  # every old frame leaves the ring
    # Only frames nobody holds were handed out; the held ones still show their pixels.
    assert all(np.array_equal(x, y) for x, y in zip(protected, held))
    assert np.all(view == 1) and bool((tensor == 2).all())
    # The first new frames have no spare (the old ones are held); once frames nobody holds
    # leave the ring, every frame is converted into one of them.
    assert not any(reused[:4]) and all(reused[5:])
    assert b.spares_given == sum(reused)
    # Another size is never handed out.
    protected = []
    assert push_spare(200)
    assert b.spare((8, 12, 3)) is None
    b.clear()
    assert b.spare((8, 10, 3)) is None
