"""The 3D jump check (steerseg_ros.depth.JumpCheck): a track's position that moves faster than
max_speed between its frames, judged on the stamps' difference (camera time), is flagged once per
jump and stays flagged until it is back within reach or a grounding re-verified the track; normal
motion at 30 fps never is; the per-track state is dropped when the track ends.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from steerseg_ros.depth import Jump, JumpCheck
from steerseg_ros.frame import NS_PER_S

T0 = 1_700_000_000 * NS_PER_S
PERIOD = NS_PER_S // 30


def stamp(i: int, period: int = PERIOD) -> int:
    return T0 + i * period


def test_normal_motion_at_30_fps_is_never_flagged():
    """A person walking and turning (up to 2 m/s along a loop at 1-4 m) seen through a noisy
    estimate (5 mm per axis, stderr 5 mm) for 20 s: no jump."""
    check = JumpCheck(max_speed_mps=3.0)
    rng = np.random.default_rng(3)
    for i in range(600):
        t = i / 30.0
        truth = np.array([1.2 * math.sin(0.8 * t), 0.1 * math.sin(2.0 * t), 2.5 + 1.4 * math.cos(0.8 * t)])
        assert check.check(1, truth + rng.normal(0, 0.005, 3), stamp(i), stderr=0.005) is None, i


def test_the_issues_jump_is_flagged_once_with_both_positions_and_the_speed():
    check = JumpCheck(max_speed_mps=3.0)
    assert check.check(7, (0.1, 0.0, 3.45), stamp(0), stderr=0.008, target_id=2) is None
    jump = check.check(7, (0.1, 0.0, 1.95), stamp(1), stderr=0.008, target_id=2)
    assert isinstance(jump, Jump) and jump.first and check.pending(7)
    assert (jump.track_id, jump.target_id) == (7, 2)
    assert jump.previous == pytest.approx((0.1, 0.0, 3.45)) and jump.position == pytest.approx((0.1, 0.0, 1.95))
    assert jump.speed_mps == pytest.approx(1.5 / (PERIOD / NS_PER_S), rel=1e-6)  # 45 m/s
    text = jump.describe()
    assert "track 7" in text and "3.45" in text and "1.95" in text and "45.0 m/s" in text
    # The track stays at 1.95 m: still out of reach of 3.45 m (3 m/s x dt) for 0.5 s, flagged
    # but not a new jump; then believed (the object could have got there by now).
    flagged = []
    for i in range(2, 30):
        j = check.check(7, (0.1, 0.0, 1.95), stamp(i), stderr=0.008)
        flagged.append(j is not None)
        assert j is None or not j.first
    n = flagged.index(False)
    assert 12 <= n <= 15 and not any(flagged[n:])  # 1.5 m - 3 x 11 mm noise margin at 3 m/s: ~0.49 s
    assert not check.pending(7)


def test_speed_is_judged_on_the_stamps_not_on_frame_counts():
    """The same 1.5 m move between two consecutive frames: a jump at 30 fps, none when the
    frames are a second apart (a node that fell behind, a depth gap)."""
    fast, slow = JumpCheck(3.0), JumpCheck(3.0)
    fast.check(1, (0, 0, 3.45), stamp(0))
    slow.check(1, (0, 0, 3.45), stamp(0))
    assert fast.check(1, (0, 0, 1.95), stamp(1)) is not None
    assert slow.check(1, (0, 0, 1.95), stamp(1, period=NS_PER_S)) is None
    # 3 cm at 100 fps is 3 m/s: within 3.0 m/s plus the noise margin, and over 1.0 m/s.
    strict = JumpCheck(1.0)
    strict.check(1, (0, 0, 2.0), stamp(0, NS_PER_S // 100))
    jump = strict.check(1, (0.0, 0.0, 2.03), stamp(1, NS_PER_S // 100))
    assert jump is not None and jump.speed_mps == pytest.approx(3.0, rel=1e-3)


def test_the_noise_margin_follows_the_stderrs():
    """A 6 cm move in 10 ms (6 m/s): noise when the positions are known to +-3 cm, a jump when to +-1 mm."""
    noisy, sharp = JumpCheck(3.0), JumpCheck(3.0)
    for check, se in ((noisy, 0.03), (sharp, 0.001)):
        check.check(1, (0, 0, 2.0), stamp(0, NS_PER_S // 100), stderr=se)
    assert noisy.check(1, (0, 0, 2.06), stamp(1, NS_PER_S // 100), stderr=0.03) is None
    assert sharp.check(1, (0, 0, 2.06), stamp(1, NS_PER_S // 100), stderr=0.001) is not None


def test_a_grounding_after_the_jump_confirms_the_new_position():
    check = JumpCheck(3.0)
    check.check(1, (0, 0, 3.45), stamp(0), grounded_ns=stamp(0))
    assert check.check(1, (0, 0, 1.95), stamp(1), grounded_ns=stamp(0)) is not None
    # A grounding that looked at frames before the jump proves nothing about it.
    assert check.check(1, (0, 0, 1.95), stamp(2), grounded_ns=stamp(0)) is not None
    # One that looked at the jump's frame or later re-verified the track: believed at once.
    assert check.check(1, (0, 0, 1.95), stamp(3), grounded_ns=stamp(2)) is None
    assert not check.pending(1)
    assert check.check(1, (0, 0, 1.96), stamp(4), grounded_ns=stamp(2)) is None


def test_a_flagged_track_that_comes_back_is_believed_again():
    check = JumpCheck(3.0)
    check.check(1, (0, 0, 3.45), stamp(0))
    assert check.check(1, (0, 0, 1.95), stamp(1)).first
    assert check.check(1, (0, 0, 3.44), stamp(2)) is None and not check.pending(1)
    second = check.check(1, (0, 0, 1.95), stamp(3))
    assert second is not None and second.first  # a new jump, logged again


def test_state_is_per_track_and_bounded():
    check = JumpCheck(3.0)
    for track in range(5):
        check.check(track, (track, 0, 2.0), stamp(0))
    assert len(check) == 5
    # Tracks are independent: track 2 far from track 1's position is no jump.
    assert check.check(2, (2.0, 0, 2.0), stamp(1)) is None
    check.keep_only([1, 2])
    assert len(check) == 2
    check.end(1)
    assert len(check) == 1
    # A track id seen again after it ended starts afresh (no jump against its old position).
    assert check.check(1, (5.0, 0, 9.0), stamp(2)) is None
    # Camera time going back (a bag looping) forgets every track.
    check.check(2, (2.0, 0, 2.0), stamp(3))
    assert check.check(2, (-3.0, 0, 6.0), stamp(0)) is None and len(check) == 1


def test_zero_speed_turns_the_check_off():
    check = JumpCheck(0.0)
    check.check(1, (0, 0, 3.45), stamp(0))
    assert check.check(1, (0, 0, 1.95), stamp(1)) is None
