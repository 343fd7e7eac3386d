"""The oracle grounder (steerseg_ros.grounding.oracle): ground truth by frame name or by stamp,
maps and points on it, "not in view" from the honest kind (and then no track from a real
pipeline with the built-in tracker), and the attention kind peaking elsewhere when the object
is hidden."""
import json

import cv2
import numpy as np
import pytest

from steerseg_ros.frame import Frame
from steerseg_ros.grounding.base import GroundingError
from steerseg_ros.streaming import backends

H, W = 120, 200


def write(folder, name, mask):
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{name}.png"), mask.astype(np.uint8) * 255)


def disk(cx, cy, r=18):
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def picture(red_at=None, grey=(90, 140, 90)):
    """A green field with, where given, a red disk."""
    image = np.empty((H, W, 3), np.uint8)
    image[:] = grey
    if red_at is not None:
        image[disk(*red_at)] = (220, 30, 30)
    return image


def oracle(folder, **options):
    return backends.make_grounder("oracle", {"masks_dir": str(folder), **options})


def test_registered_and_checked(tmp_path):
    assert "oracle" in backends.GROUNDERS
    with pytest.raises(ValueError, match="masks_dir"):
        backends.make_config("grounder", "oracle", {})
    with pytest.raises(ValueError, match="kind"):
        backends.make_config("grounder", "oracle", {"masks_dir": str(tmp_path), "kind": "psychic"})


def test_maps_and_points_come_from_the_ground_truth_by_name(tmp_path):
    write(tmp_path, "00003", disk(150, 60))
    g = oracle(tmp_path)
    r = g.ground([Frame(3, 0, picture((150, 60)), name="00003")], "the red ball")
    assert r.maps.shape == (1, 18, 30) and r.in_view is True
    assert r.maps.max() == 1.0 and r.maps[0, :, :15].max() == 0  # nothing on the left half
    assert r.points and all(disk(150, 60)[int(p.y), int(p.x)] for p in r.points)
    with pytest.raises(GroundingError, match="no ground truth"):
        g.ground([Frame(4, 1, picture(), name="00004")], "the red ball")


def test_frames_without_names_are_matched_by_stamp_through_the_manifest(tmp_path):
    masks = tmp_path / "gt"
    write(masks, "a", disk(40, 60))
    write(masks, "b", disk(160, 60))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"index": 0, "name": "a", "stamp_ns": 1000}) + "\n")
    g = oracle(masks, manifest=str(manifest))
    r = g.ground([Frame(0, 1000, picture((40, 60)))], "the ball")
    assert r.points[0].x < W / 2
    # The manifest grows while the node runs: a stamp not seen yet is looked up again.
    with open(manifest, "a") as f:
        f.write(json.dumps({"index": 1, "name": "b", "stamp_ns": 2000}) + "\n")
    r = g.ground([Frame(1, 2000, picture((160, 60)))], "the ball")
    assert r.points[0].x > W / 2
    with pytest.raises(GroundingError, match="manifest"):
        g.ground([Frame(2, 3000, picture())], "the ball")


def test_honest_says_not_in_view_only_when_hidden_on_every_keyframe(tmp_path):
    write(tmp_path, "0", disk(100, 60))
    write(tmp_path, "1", np.zeros((H, W), bool))
    g = oracle(tmp_path, kind="honest")
    hidden = g.ground([Frame(1, 1, picture(), name="1")] * 2, "the ball")
    assert hidden.in_view is False and hidden.points == [] and not hidden.maps.any()
    mixed = g.ground([Frame(0, 0, picture((100, 60)), name="0"), Frame(1, 1, picture(), name="1")], "the ball")
    assert mixed.in_view is True and mixed.points
    assert all(p.keyframe_index == 0 for p in mixed.points) and not mixed.maps[1].any()


def test_attention_peaks_on_the_most_object_like_place_when_hidden(tmp_path):
    """Seen once as a red disk on the right; then hidden, with a red look-alike on the left: the
    attention oracle points at the look-alike, and never says 'not in view'."""
    write(tmp_path, "seen", disk(150, 60))
    write(tmp_path, "gone", np.zeros((H, W), bool))
    g = oracle(tmp_path, kind="attention")
    g.ground([Frame(0, 0, picture((150, 60)), name="seen")], "the red ball")
    r = g.ground([Frame(1, 10, picture((40, 70)), name="gone")], "the red ball")
    assert r.in_view is None and r.points
    peak = np.unravel_index(np.argmax(r.maps[0]), r.maps[0].shape)
    assert peak[1] < 10  # the left third of a 30-wide grid: where the look-alike is
    assert disk(40, 70, 24)[int(r.points[0].y), int(r.points[0].x)]
    # Hidden with nothing object-like anywhere, it still peaks somewhere.
    r = g.ground([Frame(2, 20, picture(), name="gone")], "the red ball")
    assert r.points and r.maps.max() == 1.0


@pytest.fixture(scope="module")
def hidden_stretch(davis_root, tmp_path_factory):
    """The frames of a small occluder scene from the wall standing over the object onwards, and
    the scene's ground truth written for the oracle."""
    from steerseg_ros.offline.following_scenes import SceneConfig, build_scene

    scene = build_scene(davis_root, "blackswan", "occluder", SceneConfig(width=160, duration_s=10.0, hidden_s=3.0))
    folder = scene.write_masks(tmp_path_factory.mktemp("gt"))
    start, end = scene.hidden_episodes()[0]
    return scene, folder, [scene.frame(i) for i in range(start, end)]


def run(grounder, frames):
    """A real pipeline, grounding inline, with the built-in tracker; the command is given before
    the first of `frames` (all hidden). Returns (the outputs, the pipeline's counters)."""
    from steerseg_ros.streaming.pipeline import Pipeline, PipelineConfig

    tracker = backends.make_tracker("builtin")
    pipeline = Pipeline(grounder, tracker, PipelineConfig(asynchronous=False))
    try:
        pipeline.set_command("the black swan")
        outputs = [pipeline.process(f.image, f.stamp_ns, name=f.name) for f in frames]
        return outputs, dict(pipeline.stats)
    finally:
        pipeline.close()
        tracker.close()


def test_honest_oracle_gives_no_track_while_the_object_is_hidden(hidden_stretch):
    scene, folder, frames = hidden_stretch
    assert all(not f.gt.any() for f in frames) and len(frames) >= 40
    outputs, stats = run(oracle(folder, kind="honest"), frames)
    assert stats.get("groundings_not_in_view", 0) >= 1
    assert not any(o.tracks for o in outputs)


def test_attention_oracle_follows_something_while_the_object_is_hidden(hidden_stretch):
    """The same frames with the attention kind (it saw the swan before the wall came): a track
    is started on whatever looks most like it: what the honest kind avoids."""
    scene, folder, frames = hidden_stretch
    g = oracle(folder, kind="attention")
    before = scene.frame(0)
    g.ground([Frame(0, before.stamp_ns, before.image, name=before.name)], "the black swan")
    outputs, stats = run(g, frames)
    assert stats.get("groundings_not_in_view", 0) == 0
    assert any(o.visible_tracks() for o in outputs)
