"""The following benchmark's scenes (steerseg_ros.offline.following_scenes), built from the shared
DAVIS sequences at a small size: a long stream, exact ground truth, a wall that really hides the
object, a pan that takes it out of view and back, a look-alike that is not ground truth."""
import numpy as np
import pytest

from steerseg_ros.offline.following_scenes import (DEVELOPMENT_SPLIT, HELD_OUT_SPLIT, SEQUENCES, SceneConfig,
                                                   build_scene, load_source, pingpong, runs)

SMALL = SceneConfig(width=160, duration_s=10.0)


@pytest.fixture(scope="module")
def occluder(davis_root):
    return build_scene(davis_root, "blackswan", "occluder", SMALL)


def test_pingpong_plays_forth_and_back():
    assert [pingpong(i, 4) for i in range(9)] == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert runs(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]


def test_splits_are_the_ten_sequences_halved():
    assert set(DEVELOPMENT_SPLIT) | set(HELD_OUT_SPLIT) == set(SEQUENCES) and len(SEQUENCES) == 10
    assert not set(DEVELOPMENT_SPLIT) & set(HELD_OUT_SPLIT)


def test_stream_is_long_named_and_stamped(occluder):
    assert len(occluder) == 150 and len(occluder) / occluder.fps >= 10
    f = occluder.frame(42)
    assert f.name == "00042" and f.stamp_ns == round(42 * 1e9 / 15)
    assert f.image.shape == (occluder.height, 160, 3) and f.image.dtype == np.uint8
    # Ping-pong: blackswan has 50 frames, so frame 49 is followed by 48 again.
    assert list(occluder.source[47:52]) == [47, 48, 49, 48, 47]


def test_occluder_hides_the_object_completely_for_one_to_three_seconds(davis_root, occluder):
    episodes = occluder.hidden_episodes()
    assert len(episodes) == 1
    start, end = episodes[0]
    assert 1.0 <= (end - start) / occluder.fps <= 3.0
    images, _ = load_source(davis_root, "blackswan", 160)
    for i in range(start, end):
        f = occluder.frame(i)
        assert not f.gt.any() and f.full.any()  # hidden, though the object is there
        x0, x1 = occluder.wall[i]
        cols = np.flatnonzero(f.full.any(axis=0))
        assert x0 <= cols[0] and cols[-1] < x1  # the wall spans every column of the object
        # What is drawn where the object is: the wall, not the object.
        source = images[occluder.source[i]]
        diff = np.abs(f.image.astype(int) - source.astype(int))[f.full].mean()
        assert diff > 20
    wall = occluder.frame(start).image[:, occluder.wall[start, 0]:occluder.wall[start, 1]]
    assert wall.reshape(-1, 3).std(axis=0).mean() > 10  # a texture, not a flat colour


def test_occluder_ground_truth_is_exact_on_every_frame(occluder):
    for i in range(len(occluder)):
        gt, full = occluder.gt(i), occluder.frame(i).full
        expected = full.copy()
        expected[:, occluder.wall[i, 0]:occluder.wall[i, 1]] = False
        assert np.array_equal(gt, expected)
    # Before the event and after it the object is whole: fully back.
    assert occluder.gt_area[0] == occluder.whole_area[0]
    assert occluder.gt_area[-1] == occluder.whole_area[-1]


def test_pan_takes_the_object_out_of_view_and_back(davis_root):
    scene = build_scene(davis_root, "dog", "pan", SMALL)
    episodes = scene.hidden_episodes()
    assert len(episodes) == 1
    start, end = episodes[0]
    assert start > 0 and scene.gt_area[start - 1] > 0  # it was in view before
    assert (scene.gt_area[end:] == scene.whole_area[end:]).any()  # and comes fully back
    assert scene.offset[start:end].min() > 0 and scene.offset[0] == 0 == scene.offset[-1]
    f = scene.frame((start + end) // 2)
    assert f.image.shape == scene.frame(0).image.shape  # the output size does not change
    assert not f.gt.any() and not f.full.any()  # out of view: nothing to uncover either


def test_distractor_passes_and_is_not_ground_truth(davis_root):
    scene = build_scene(davis_root, "dog", "distractor", SMALL)
    images, masks = load_source(davis_root, "dog", 160)
    assert not scene.hidden.any()
    passing = np.flatnonzero(~np.isnan(scene.look_alike_x))
    assert passing.size >= 40  # three seconds at 15 fps
    changed = 0
    for i in passing[::5]:
        f = scene.frame(i)
        source, mask = images[scene.source[i]], masks[scene.source[i]]
        assert np.array_equal(f.gt, mask)  # only the real object
        assert np.array_equal(f.image[mask], source[mask])  # it passes behind the object
        changed += np.count_nonzero(np.any(f.image != source, axis=2) & ~mask)
    assert changed > 500  # the look-alike is drawn


def test_scenes_are_deterministic(davis_root, occluder):
    again = build_scene(davis_root, "blackswan", "occluder", SMALL)
    for i in (0, 70, 80):
        assert np.array_equal(again.frame(i).image, occluder.frame(i).image)
    assert np.array_equal(again.gt_area, occluder.gt_area)


def test_config_is_checked():
    with pytest.raises(ValueError, match="duration_s"):
        SceneConfig(duration_s=5).validate()
    with pytest.raises(ValueError, match="hidden_s"):
        SceneConfig(hidden_s=4).validate()


def test_eval_runs_the_scenes_with_the_oracle(davis_root, tmp_path):
    """steerseg-eval --following: a scene through the pipeline, scored and written out."""
    import json

    from steerseg_ros.tools.eval import main

    code = main(["--following", "occluder", "--root", str(davis_root), "--out", str(tmp_path),
                 "--sequences", "blackswan", "--latencies", "0", "--following-width", "120",
                 "--following-duration", "10", "--grounder", "oracle", "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "following.json").read_text())
    (row,) = report["rows"]
    assert row["scene"] == "blackswan-occluder" and row["grounder"] == "oracle:honest"
    assert row["hidden_frames"] > 0 and row["episodes"] == 1 and row["groundings"] >= 1
    for name in ("following.md", "following_scenes.csv", "following_totals.csv", "following.png"):
        assert (tmp_path / name).stat().st_size > 0
