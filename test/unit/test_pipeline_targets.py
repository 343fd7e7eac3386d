"""Several targets at once in the pipeline core (no ROS): `add_target`, `remove_target`,
`targets`, `set_command` replacing them all, each target grounded on its own schedule and
reconciled on its own, with the built-in backends on synthetic frames: a red and a blue disk
moving over a textured background (the built-in grounder reads colour words), then a covered
camera (uniform grey frames) for losing them.
"""
import time

import numpy as np
import pytest

from steerseg_ros.streaming import backends
from steerseg_ros.grounding.base import GroundingError
from steerseg_ros.streaming.pipeline import (Pipeline, PipelineConfig, PipelineState, TargetLimitError,
                                   TrackState)

from two_disks import STEP_NS, scene


def iou(a, b):
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def make(**overrides) -> Pipeline:
    config = PipelineConfig(asynchronous=False, **overrides)
    return Pipeline(backends.make_grounder("builtin"), backends.make_tracker("builtin"), config)


def run(pipeline, frames, start=0, covered=False):
    outputs = []
    for i in range(start, start + frames):
        img, _, _ = scene(i, covered)
        outputs.append(pipeline.process(img, 1_000_000_000 + i * STEP_NS))
    return outputs


def live(output):
    return {t.target_id: t for t in output.visible_tracks()}


def test_two_targets_distinct_ids_labels_and_objects():
    p = make()
    red, blue = p.add_target("the red ball"), p.add_target("the blue ball")
    assert red != blue
    assert [(t.id, t.command, t.state) for t in p.targets()] == [
        (red, "the red ball", PipelineState.GROUNDING), (blue, "the blue ball", PipelineState.GROUNDING)]
    out = run(p, 15)[-1]
    tracks = live(out)
    assert set(tracks) == {red, blue}, out.tracks
    assert tracks[red].id != tracks[blue].id
    assert tracks[red].label_value != tracks[blue].label_value
    assert tracks[red].command == "the red ball" and tracks[blue].command == "the blue ball"
    _, red_gt, blue_gt = scene(14)
    assert iou(tracks[red].mask, red_gt) > 0.7 and iou(tracks[blue].mask, blue_gt) > 0.7
    # one label image, each target's pixels with its own value
    label = out.label_image()
    assert set(np.unique(label)) == {0, tracks[red].label_value, tracks[blue].label_value}
    assert (label[red_gt] == tracks[red].label_value).mean() > 0.7
    assert (label[blue_gt] == tracks[blue].label_value).mean() > 0.7
    assert {t.id: t.state for t in out.targets} == {red: PipelineState.TRACKING, blue: PipelineState.TRACKING}
    assert {t.id: t.track_ids for t in out.targets} == {red: [tracks[red].id], blue: [tracks[blue].id]}
    p.close()


def test_each_target_regrounds_on_its_own_schedule():
    """Target B added 7 frames after A: each re-grounds every second of camera time counted
    from its own groundings, so they ground on different frames, and every re-grounding keeps
    the ids of both."""
    p = make(regrounding_period_s=1.0)
    a = p.add_target("the red ball")
    outs = run(p, 7)
    b = p.add_target("the blue ball")
    outs += run(p, 33, start=7)
    grounded = {a: [], b: []}
    previous = {a: 0, b: 0}
    for i, out in enumerate(outs):
        for t in out.targets:
            if t.groundings > previous[t.id]:
                grounded[t.id].append(i)
            previous[t.id] = t.groundings
    assert len(grounded[a]) >= 3 and len(grounded[b]) >= 3, grounded
    assert not set(grounded[a]) & set(grounded[b]), grounded
    ids = {target: {live(o)[target].id for o in outs[20:]} for target in (a, b)}
    assert all(len(v) == 1 for v in ids.values()), ids
    p.close()


def test_regrounding_one_target_never_replaces_another():
    """Two targets with the same command follow the same object: each grounding finds one
    target and confirms its own target's track; the other target's track is not a rival it
    could replace (one reconciliation over all tracks would replace one of them)."""
    p = make(regrounding_period_s=0.5, replace_after=1)
    first, second = p.add_target("the red ball"), p.add_target("the red ball")
    outs = run(p, 30)
    assert p.stats["tracks_replaced"] == 0
    assert p.stats["tracks_confirmed"] >= 4
    ids = [(live(o)[first].id, live(o)[second].id) for o in outs[10:]]
    assert len(set(ids)) == 1 and ids[0][0] != ids[0][1], ids
    assert all(t.state != TrackState.REPLACED for o in outs for t in o.tracks)
    p.close()


def test_remove_one_target_keeps_the_other():
    p = make()
    red, blue = p.add_target("the red ball"), p.add_target("the blue ball")
    before = live(run(p, 12)[-1])
    assert p.remove_target(red)
    assert not p.remove_target(red)
    assert [t.id for t in p.targets()] == [blue]
    out = run(p, 1, start=12)[0]
    ended = [t for t in out.tracks if t.state == TrackState.REPLACED]
    assert [(t.id, t.target_id) for t in ended] == [(before[red].id, red)]
    out = run(p, 5, start=13)[-1]
    assert list(live(out)) == [blue] and live(out)[blue].id == before[blue].id
    assert set(np.unique(out.label_image())) == {0, before[blue].label_value}
    p.close()


def test_set_command_replaces_every_target_and_clear_ends_all():
    p = make()
    p.add_target("the red ball")
    p.add_target("the blue ball")
    old = {t.id for t in run(p, 12)[-1].visible_tracks()}
    assert len(old) == 2
    assert p.set_command("  the blue ball ") == "the blue ball"
    (target,) = p.targets()
    assert target.command == "the blue ball"
    out = run(p, 1, start=12)[0]
    assert {t.id for t in out.tracks if t.state == TrackState.REPLACED} == old
    out = run(p, 12, start=13)[-1]
    assert list(live(out)) == [target.id] and live(out)[target.id].id not in old
    p.clear_command()
    assert p.targets() == [] and p.command is None
    out = run(p, 1, start=25)[0]
    assert out.visible_tracks() == [] and out.state == PipelineState.IDLE
    p.close()


def test_bad_commands_and_the_target_limit():
    p = make(max_targets=2)
    with pytest.raises(GroundingError):
        p.add_target("   ")
    with pytest.raises(GroundingError):
        p.add_target("x" * (p.config.max_command_chars + 1))
    p.add_target("the red ball")
    p.add_target("the blue ball")
    with pytest.raises(TargetLimitError, match="max_targets = 2"):
        p.add_target("the green ball")
    assert len(p.targets()) == 2 and p.stats["targets_refused"] == 1
    with pytest.raises(ValueError):
        PipelineConfig(max_targets=0).validate()
    p.close()


def test_covered_camera_loses_both_targets_and_counts_unseen_time():
    """What a Follow goal's LOST timeout reads: unseen_s grows in camera time once no track
    of a target is confident (here the camera is covered: uniform frames, on which grounding
    finds nothing)."""
    p = make(buffer_size=16, lost_timeout_s=0.5)
    red, blue = p.add_target("the red ball"), p.add_target("the blue ball")
    assert set(live(run(p, 15)[-1])) == {red, blue}
    outs = run(p, 40, start=15, covered=True)
    last = {t.id: t for t in outs[-1].targets}
    assert all(t.state == PipelineState.LOST for t in last.values()), last
    assert all(t.unseen_s > 3.0 for t in last.values()), last
    unseen = [o.targets[0].unseen_s for o in outs[-10:]]
    assert unseen == sorted(unseen)
    p.close()


def test_asynchronous_worker_serves_every_target():
    """The node's mode: one grounding worker thread takes the targets' groundings in turn
    until each has its track (bounded by frames fed, not by time)."""
    config = PipelineConfig(asynchronous=True)
    p = Pipeline(backends.make_grounder("builtin"), backends.make_tracker("builtin"), config)
    targets = [p.add_target("the red ball"), p.add_target("the blue ball")]
    found = set()
    for i in range(600):
        img, _, _ = scene(i)
        found = set(live(p.process(img, 1_000_000_000 + i * STEP_NS)))
        if found == set(targets):
            break
        time.sleep(0.02)  # let the worker run on a busy machine
    assert found == set(targets), p.stats
    p.close()


def test_seed_mask_joins_the_target_it_is_given_or_stands_alone():
    p = make()
    red = p.add_target("the red ball")
    p.add_target("the blue ball")
    run(p, 2)
    _, red_mask, _ = scene(1)
    alone = p.seed_mask(red_mask)  # two targets: it belongs to neither
    assert alone.target_id == 0 and alone.command == ""
    joined = p.seed_mask(red_mask, target=red)
    assert joined.target_id == red and joined.command == "the red ball"
    assert joined.id in {t.id: t for t in p.targets()}[red].track_ids
    with pytest.raises(ValueError, match="no target 99"):
        p.seed_mask(red_mask, target=99)
    p.close()
