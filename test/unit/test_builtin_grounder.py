"""The built-in grounder: cue words move its best point to the object they describe.

Synthetic scenes put two candidate objects in view and check that each word picks the right
one (and, where the scene allows, that the prior alone would have picked the other, so that the
word is what decides). Real DAVIS frames check the output's form and determinism.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import load_davis
from steerseg_ros.streaming.backends import make_config, make_grounder
from steerseg_ros.frame import NS_PER_S, Frame
from steerseg_ros.grounding.base import GroundingError, GroundingResult
from steerseg_ros.grounding.builtin import BuiltinGrounder, BuiltinGrounderConfig, parse_command
from steerseg_ros.grounding.prompts import points_from_maps

H, W = 360, 640
RED, BLUE, ORANGE = (220, 30, 30), (30, 60, 220), (230, 140, 40)


def keyframes(images: list[np.ndarray], fps: float = 10.0) -> list[Frame]:
    return [Frame(i, int(i * NS_PER_S / fps), np.ascontiguousarray(im), "camera", f"{i:05d}")
            for i, im in enumerate(images)]


def background(seed: int = 0) -> np.ndarray:
    """A grey, slightly noisy background (no colour of its own)."""
    noise = np.random.default_rng(seed).normal(0, 6, (H, W, 1))
    return np.clip(120 + noise, 0, 255).repeat(3, axis=2).astype(np.uint8)


def scene(boxes: list[tuple[tuple[int, int, int, int], tuple[int, int, int]]], count: int = 4) -> list[Frame]:
    """`count` identical frames with filled rectangles ((x, y, w, h), rgb)."""
    image = background()
    for (x, y, w, h), colour in boxes:
        image[y:y + h, x:x + w] = colour
    return keyframes([image] * count)


def best_in(result: GroundingResult, box: tuple[int, int, int, int]) -> bool:
    x, y, w, h = box
    p = result.points[0]
    return x <= p.x < x + w and y <= p.y < y + h


def check_form(result: GroundingResult, frames: list[Frame], grounder: BuiltinGrounder) -> None:
    hg, wg = grounder.grid_shape(frames[0].width, frames[0].height)
    result.validate()
    assert result.backend == "builtin"
    assert result.maps.shape == (len(frames), hg, wg) and result.maps.dtype == np.float32
    assert np.isfinite(result.maps).all() and result.maps.min() >= 0 and result.maps.max() <= 1
    assert result.maps.max() == pytest.approx(1.0)
    for extra in (result.frame_maps, result.video_maps):
        if extra is not None:
            assert extra.shape == result.maps.shape and extra.min() >= 0 and extra.max() <= 1
    assert 1 <= len(result.points) <= grounder.config.max_points
    scores = [p.score for p in result.points]
    assert scores == sorted(scores, reverse=True)
    for p in result.points:
        assert 0 <= p.keyframe_index < len(frames)
        assert 0 <= p.x < frames[0].width and 0 <= p.y < frames[0].height
        assert p.positive and p.score >= grounder.config.point_threshold
    assert result.keyframes == frames
    assert result.class_word and result.generated_text.startswith("built-in fallback")
    assert {"prepare", "prior", "motion", "cues", "points", "total"} <= set(result.timings)


@pytest.fixture(scope="module")
def grounder() -> BuiltinGrounder:
    return make_grounder("builtin")


def test_colour_words_pick_the_object_of_that_colour(grounder):
    red, blue = (150, 140, 80, 80), (410, 140, 80, 80)
    frames = scene([(red, RED), (blue, BLUE)])
    result = grounder.ground(frames, "the red one")
    assert best_in(result, red)
    assert result.attributes == ["red"] and result.class_word == "object"
    check_form(result, frames, grounder)
    assert result.video_maps is None  # nothing moves in a still scene
    assert best_in(grounder.ground(frames, "the blue one"), blue)
    # Order of the objects does not matter: swap the colours.
    frames = scene([(red, BLUE), (blue, RED)])
    assert best_in(grounder.ground(frames, "the red one"), blue)
    assert best_in(grounder.ground(frames, "the blue one"), red)


def test_position_words_pick_among_identical_objects(grounder):
    left, right = (130, 140, 80, 80), (430, 140, 80, 80)
    frames = scene([(left, ORANGE), (right, ORANGE)])
    assert best_in(grounder.ground(frames, "the left one"), left)
    assert best_in(grounder.ground(frames, "the one on the right"), right)
    top, bottom = (280, 40, 80, 80), (280, 240, 80, 80)
    frames = scene([(top, ORANGE), (bottom, ORANGE)])
    assert best_in(grounder.ground(frames, "the upper box"), top)
    assert best_in(grounder.ground(frames, "the bottom box"), bottom)


def test_size_words_pick_the_larger_or_smaller_object(grounder):
    # The small square is the more conspicuous one (pure white on grey against a dull orange):
    # the prior alone points at it, so only the word can move the point to the large one.
    large, small = (90, 100, 160, 160), (440, 150, 60, 60)
    frames = scene([(large, (150, 120, 100)), (small, (255, 255, 255))])
    assert best_in(grounder.ground(frames, "the object"), small)
    result = grounder.ground(frames, "the largest")
    assert best_in(result, large) and result.attributes == ["largest"]
    assert best_in(grounder.ground(frames, "the smaller box"), small)


def panning_frames(davis_root, count: int = 8) -> tuple[list[Frame], list, list]:
    """A camera panning over a real DAVIS frame while following a small magenta square that
    moves with it (so it stands still in the image), past a larger magenta square that stays put
    in the world (so it slides across the image with the background). Returns the frames and both
    squares' boxes per frame."""
    _, images, _ = load_davis(davis_root, "car-shadow", count=1)
    world = images[0]
    pan, still_side, mover_side = 20, 72, 48
    frames, still, moving = [], [], []
    for k in range(count):
        x0 = k * pan  # the camera window's left edge in the world
        view = world[60:60 + H, x0:x0 + W].copy()
        sx, sy = 260 - x0, 190
        mx, my = 430, 150
        view[sy:sy + still_side, sx:sx + still_side] = (230, 40, 220)
        view[my:my + mover_side, mx:mx + mover_side] = (230, 40, 220)
        frames.append(view)
        still.append((sx, sy, still_side, still_side))
        moving.append((mx, my, mover_side, mover_side))
    return keyframes(frames), still, moving


def on(result: GroundingResult, boxes: list) -> bool:
    p = result.points[0]
    x, y, w, h = boxes[p.keyframe_index]
    return x <= p.x < x + w and y <= p.y < y + h


def test_motion_words_pick_the_object_moving_in_the_world_not_in_the_image(grounder, davis_root):
    frames, still, moving = panning_frames(davis_root)
    result = grounder.ground(frames, "the moving one")
    assert on(result, moving), (result.points[0], moving)
    assert result.attributes == ["moving"] and result.video_maps is not None
    assert "camera motion estimated on 7/7" in result.generated_text
    check_form(result, frames, grounder)
    assert on(grounder.ground(frames, "the still one"), still)
    # The larger square is the more conspicuous one in any single frame.
    assert on(dataclasses.replace(result, maps=result.frame_maps,
                                  points=points_from_maps(result.frame_maps, (W, H), 0.8)), still)
    # Without compensating the camera's pan the square that stays put is the one that moves
    # in the image: compensation is what gets this right.
    raw = BuiltinGrounder(BuiltinGrounderConfig(camera_model="none")).ground(frames, "the moving one")
    assert "not compensated" in raw.generated_text
    assert on(raw, still)


def test_unknown_words_fall_back_to_the_prior(grounder):
    frames = scene([((150, 140, 80, 80), RED), ((410, 140, 80, 80), BLUE)])
    prior = grounder.ground(frames, "the object")
    result = grounder.ground(frames, "that whatchamacallit thingy, por favor")
    assert result.attributes == [] and "prior alone" in result.generated_text
    np.testing.assert_array_equal(result.maps, prior.maps)
    check_form(result, frames, grounder)
    # A motion word with nothing moving is reported as ignored, not used.
    still = grounder.ground(frames, "the running one")
    assert still.attributes == [] and "ignored" in still.generated_text


def test_bad_input_gives_clear_errors(grounder):
    frames = scene([((150, 140, 80, 80), RED)])
    with pytest.raises(GroundingError, match="empty"):
        grounder.ground(frames, "   ")
    with pytest.raises(GroundingError, match="no keyframes"):
        grounder.ground([], "the red one")
    other = Frame(9, 10 * NS_PER_S, np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(GroundingError, match="differ in size"):
        grounder.ground(frames + [other], "the red one")
    with pytest.raises(GroundingError, match="HxWx3"):
        grounder.ground([Frame(0, 0, np.zeros((40, 60), np.uint8))], "the red one")
    with pytest.raises(ValueError, match="camera_model"):
        make_config("grounder", "builtin", {"camera_model": "fisheye"})
    with pytest.raises(ValueError, match="point_threshold"):
        BuiltinGrounder(BuiltinGrounderConfig(point_threshold=1.5))


def test_small_and_single_frames_work(grounder):
    blank = grounder.ground(keyframes([np.full((20, 30, 3), 90, np.uint8)]), "the red one")
    assert blank.maps.shape == (1, 1, 1) and not blank.maps.any() and blank.points == []  # nothing stands out
    tiny = np.full((60, 90, 3), 90, np.uint8)
    tiny[35:55, 65:85] = RED
    result = grounder.ground(keyframes([tiny]), "the red one")
    assert result.maps.shape == (1, 2, 3) and best_in(result, (60, 30, 30, 30))
    one = scene([((150, 140, 80, 80), RED)], count=1)
    assert best_in(grounder.ground(one, "the red one"), (150, 140, 80, 80))


def test_config_fields_carry_help_and_simple_types():
    for f in dataclasses.fields(BuiltinGrounderConfig):
        assert f.metadata.get("help"), f.name
        assert f.type in ("bool", "int", "float", "str", bool, int, float, str), (f.name, f.type)


@pytest.mark.parametrize("command, head, cues", [
    ("follow the small brown dog that is running", "dog", ["small", "brown", "running"]),
    ("the woman in the grey coat", "woman", ["grey"]),
    ("track the dark-blue car on the left", "car", ["blue", "left"]),
    ("the one that is not moving", "object", ["not moving"]),
    ("a tall man standing still", "man", ["tall", "still"]),
    ("person", "person", []),
    ("man on the bike", "man", []),
    ("please go to the blue chair", "chair", ["blue"]),
])
def test_command_parsing(command, head, cues):
    parsed = parse_command(command)
    assert parsed.class_word == head
    assert parsed.cue_words == cues


def test_negated_motion_reads_as_static():
    assert parse_command("the dog that is not moving").motion == "static"
    assert parse_command("the fastest runner").motion == "fast"
    assert parse_command("follow the bike").motion is None  # nouns and imperatives are not motion


def test_real_frames_give_well_formed_deterministic_results(grounder, davis_root):
    _, images, masks = load_davis(davis_root, "blackswan", count=50, step=6)
    frames = keyframes(images[:8])
    first = grounder.ground(frames, "the black swan swimming in the pond")
    again = grounder.ground(frames, "the black swan swimming in the pond")
    check_form(first, frames, grounder)
    assert first.maps.shape == (8, 17, 30)
    assert first.class_word == "swan" and first.attributes == ["black", "swimming"]
    assert first.video_maps is not None and first.frame_maps is not None
    np.testing.assert_array_equal(first.maps, again.maps)
    assert [(p.keyframe_index, p.x, p.y, p.score) for p in first.points] == \
           [(p.keyframe_index, p.x, p.y, p.score) for p in again.points]
