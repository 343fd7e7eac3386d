"""The following figures (steerseg_ros.offline.following_metrics) on small hand-made sequences
whose answers are known: false following, re-acquisition time, id switches, wrong object."""
import math

import numpy as np

from steerseg_ros.offline.following_metrics import FrameRecord, score_following, total

H, W = 20, 30
FPS = 10.0


def box(x0, x1):
    m = np.zeros((H, W), bool)
    m[5:15, x0:x1] = True
    return m


EMPTY = np.zeros((H, W), bool)
OBJECT = box(10, 20)
ELSEWHERE = box(0, 5)


def scene(published, ids=None):
    """Ten frames: the object hidden on 3-5, half back on 6, fully back from 7 on."""
    gts = [OBJECT, OBJECT, OBJECT, EMPTY, EMPTY, EMPTY, box(10, 15), OBJECT, OBJECT, OBJECT]
    whole = [np.count_nonzero(OBJECT)] * 10
    ids = ids or [(1,) if m.any() else () for m in published]
    return score_following("s", [FrameRecord(m, i) for m, i in zip(published, ids)], gts, whole, FPS)


def test_false_following_is_counted_on_hidden_frames_only():
    published = [OBJECT, OBJECT, OBJECT, ELSEWHERE, ELSEWHERE, EMPTY, EMPTY, EMPTY, OBJECT, OBJECT]
    s = scene(published)
    assert s.hidden_frames == 3 and s.false_following == 2
    assert math.isclose(s.false_following_share, 2 / 3)


def test_reacquisition_runs_from_fully_back_to_a_good_mask():
    # Fully back on frame 7; the first mask with IoU >= 0.5 from there is on frame 9: 0.2 s.
    published = [OBJECT] * 3 + [EMPTY] * 6 + [OBJECT]
    assert scene(published).reacquisition_s == [0.2]
    # A good mask on the half-visible frame 6 does not count: the object is not fully back yet.
    published = [OBJECT] * 3 + [EMPTY] * 3 + [box(10, 15), OBJECT] + [OBJECT] * 2
    assert scene(published).reacquisition_s == [0.0]
    # A mask that overlaps too little is not a re-acquisition; never: NaN.
    published = [OBJECT] * 3 + [EMPTY] * 4 + [box(17, 22)] * 3
    s = scene(published)
    assert len(s.reacquisition_s) == 1 and math.isnan(s.reacquisition_s[0])


def test_first_mask_times_from_the_command():
    published = [EMPTY, EMPTY, box(0, 12)] + [OBJECT] * 7
    s = scene(published)
    assert math.isclose(s.first_mask_s, 0.2)  # any published mask
    # IoU >= 0.5 against what is visible: frame 6 (the whole object published, half of it visible).
    assert math.isclose(s.first_good_mask_s, 0.6)


def test_id_switches_count_a_new_id_not_a_gap():
    published = [OBJECT] * 3 + [EMPTY] * 3 + [OBJECT] * 4
    assert scene(published, [(1,)] * 3 + [()] * 3 + [(1,)] * 4).id_switches == 0
    assert scene(published, [(1,)] * 3 + [()] * 3 + [(2,)] * 4).id_switches == 1
    assert scene(published, [(1,), (2,), (1,)] + [()] * 3 + [(1,)] * 4).id_switches == 2


def test_wrong_object_and_scores_on_visible_frames_only():
    published = [ELSEWHERE, OBJECT, OBJECT, ELSEWHERE, EMPTY, EMPTY, EMPTY, OBJECT, OBJECT, OBJECT]
    s = scene(published)
    assert s.wrong_object == 1  # frame 0; frame 3 is hidden: false following, not wrong object
    assert s.visible_frames == 7
    # J over the seven visible frames: 0 on frame 0, 0 on frame 6 (nothing published), 1 elsewhere.
    assert math.isclose(s.j, 5 / 7)


def test_totals_pool_counts_and_episodes():
    a = scene([OBJECT] * 3 + [ELSEWHERE] * 3 + [EMPTY, EMPTY, OBJECT, OBJECT])  # re-acquired 0.1 s
    b = scene([OBJECT] * 3 + [EMPTY] * 7)  # never re-acquired
    t = total([a, b])
    assert t["scenes"] == 2 and t["hidden_frames"] == 6 and t["false_following"] == 3
    assert math.isclose(t["false_following_share"], 0.5)
    assert t["episodes"] == 2 and t["reacquired"] == 1
    assert math.isclose(t["reacquired_within_1.5s_share"], 0.5)
    assert math.isclose(t["reacquisition_mean_s"], 0.1)


def test_frame_record_from_pipeline_output_uses_the_visible_tracks():
    from steerseg_ros.frame import Frame
    from steerseg_ros.streaming.pipeline import PipelineOutput, PipelineState
    from steerseg_ros.streaming.targets import TrackState

    class View:
        def __init__(self, id, state, mask):
            self.id, self.state, self.mask = id, state, mask

    output = PipelineOutput(Frame(0, 0, np.zeros((H, W, 3), np.uint8)), PipelineState.TRACKING,
                            [View(1, TrackState.TRACKING, OBJECT), View(2, TrackState.LOST, ELSEWHERE)])
    r = FrameRecord.from_output(output)
    assert r.track_ids == (1,) and np.array_equal(r.mask, OBJECT)


def test_figures_against_the_latency_leave_out_what_no_answer_could_reach():
    # L = 0.2 s: the answer can land on frame 2 at the earliest; frames 0-1 are empty by force.
    published = [EMPTY, EMPTY] + [OBJECT] * 3 + [EMPTY] * 5
    gts = [OBJECT, OBJECT, OBJECT, OBJECT, OBJECT, EMPTY, EMPTY, EMPTY, EMPTY, OBJECT]
    whole = [np.count_nonzero(OBJECT)] * 10
    s = score_following("s", [FrameRecord(m, (1,) if m.any() else ()) for m in published], gts, whole, FPS,
                        latency_s=0.2)
    assert math.isclose(s.j, 3 / 6)  # every visible frame
    assert math.isclose(s.j_answered, 3 / 4)  # frames 2, 3, 4 and 9
    # Goals at L: a first mask within L + 1 s, re-acquisition within L + 1.5 s.
    late = scene([OBJECT] * 3 + [EMPTY] * 4 + [EMPTY] * 2 + [OBJECT])  # re-acquired after 0.2 s
    slow = scene([EMPTY] * 9 + [OBJECT])  # first mask at 0.9 s, re-acquired after 0.2 s
    for s in (late, slow):
        s.latency_s = 0.0
    t = total([late, slow], quick_s=0.1)
    assert math.isclose(t["first_mask_in_time_share"], 1.0)
    assert t["reacquired_in_time_share"] == 0.0  # 0.2 s > 0 + 0.1 s
    for s in (late, slow):
        s.latency_s = 0.15
    t = total([late, slow], quick_s=0.1)
    assert t["reacquired_in_time_share"] == 1.0  # 0.2 s <= 0.15 + 0.1 s
