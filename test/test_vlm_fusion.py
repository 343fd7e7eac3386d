"""DecAF's map fusion and the grounder's prompt texts and answer parsing (no model needed)."""
from __future__ import annotations

import numpy as np
import pytest

from steerseg_ros.grounding import fusion, questions


def _peak(shape, cells, value=1.0, floor=0.0):
    m = np.full(shape, floor, np.float32)
    for idx in cells:
        m[idx] = value
    return m


def test_background_contrast_removes_what_both_prompts_attend_to():
    # Object attention on the swan (cell 2,5) and on a bright distractor (0,0) the background
    # prompt attends to as well: after the contrast only the swan survives.
    obj = _peak((4, 6, 8), [(t, 2, 5) for t in range(4)] + [(t, 0, 0) for t in range(4)], 0.02, 0.001)
    bg = _peak((4, 6, 8), [(t, 0, 0) for t in range(4)], 0.03, 0.001)
    frames_obj = _peak((6, 12, 16), [(k, 4, 10) for k in range(6)] + [(k, 0, 0) for k in range(6)], 0.02, 0.001)
    frames_bg = _peak((6, 12, 16), [(k, 0, 0) for k in range(6)], 0.03, 0.001)
    maps = fusion.decaf_maps(obj, bg, frames_obj, frames_bg, num_frames=6)
    assert maps.video.shape == (6, 6, 8) and maps.frames.shape == maps.fused.shape == (6, 12, 16)
    for k in range(6):
        assert np.unravel_index(np.argmax(maps.fused[k]), (12, 16)) in {(4, 10), (5, 10), (4, 11), (5, 11)}
        assert maps.fused[k, 0, 0] == 0
    assert maps.fused.max() == pytest.approx(1.0) and maps.fused.min() == 0.0


def test_normalisation_video_over_all_frames_frames_each_on_their_own():
    video = np.stack([np.full((2, 2), v, np.float32) for v in (0.0, 1.0)])
    video[1, 0, 0] = 3.0
    norm = fusion.minmax(video)
    assert norm.max() == 1.0 and norm[0].max() == 0.0      # the weak step stays weak
    frames = np.stack([np.arange(4, dtype=np.float32).reshape(2, 2), 10 + np.arange(4, dtype=np.float32).reshape(2, 2)])
    each = fusion.minmax_each(frames)
    assert np.allclose(each[0], each[1]) and each[1].max() == 1.0
    assert not fusion.minmax(np.full((3, 3), 0.2, np.float32)).any()   # a constant map becomes 0
    assert not fusion.minmax(np.full((3, 3), np.nan, np.float32)).any()


def test_time_alignment_repeats_steps_and_drops_the_padding_frame():
    video = np.arange(3, dtype=np.float32).reshape(3, 1, 1)
    assert fusion.align_time(video, 5)[:, 0, 0].tolist() == [0, 0, 1, 1, 2]
    assert fusion.align_time(video, 6)[:, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        fusion.align_time(video, 7)


def test_fusion_upsamples_the_video_map_onto_the_frame_grid():
    video = _peak((1, 3, 4), [(0, 1, 2)])
    frames = np.zeros((1, 6, 8), np.float32)
    fused = fusion.fuse(video, frames)
    assert fused.shape == (1, 6, 8) and fused.max() == 1.0
    top = set(zip(*np.nonzero(fused[0] == fused[0].max())))
    assert top == {(2, 4), (2, 5), (3, 4), (3, 5)}


def test_smoothing_sizes_and_steered_maps():
    m = _peak((1, 9, 9), [(0, 4, 4)])
    s3, s7 = fusion.smooth(m, 3, 1.0), fusion.smooth(m, 7, 1.0)
    assert (s3[0] > 0).sum() == 9 and (s7[0] > 0).sum() == 49
    assert s3.sum() == pytest.approx(1.0, abs=1e-5)
    steered = fusion.steered_maps(_peak((2, 3, 4), [(1, 0, 0)], 0.5), _peak((3, 6, 8), [(2, 0, 0)], 0.4), 3)
    assert steered.video.shape == (3, 3, 4) and steered.video[2, 0, 0] == 1.0 and steered.video[0].max() == 0.0
    assert steered.frames[2, 0, 0] == 1.0 and steered.fused[2, 0, 0] == 1.0


def test_expression_formatting_and_prompts():
    assert questions.format_expression("  The RED  cup ") == "the red cup."
    assert questions.format_expression("which one is moving?") == "which one is moving?"
    assert questions.object_text("the cup.").startswith("the cup. What is the main object")
    assert "excluding any swan" in questions.background_text("swan", "video")
    head, question = questions.steered_text_parts("the cup.", "red; left")
    assert head == "the cup.\nAttributes: red; left\n" and "using the attributes above" in question
    assert "Candidate answers: swan, bird" in questions.category_text("the swan.", ["swan", "bird"])


def test_class_word_choice():
    candidates = ["swan", "bird", "swan", "", "water"]
    assert questions.choose_class_word("Swan.", "the black swan.", candidates) == "swan"
    assert questions.choose_class_word("bird", "the black swan.", candidates) == "bird"
    # Free text outside the choice falls back to the most common object answer ...
    assert questions.choose_class_word("xyzzy", "the black swan.", candidates) == "swan"
    # ... and without usable answers to the expression's last content word.
    assert questions.choose_class_word("", "the dog on the left.", ["", "the"]) == "dog"
    assert questions.choose_class_word("", "", []) == "object"


def test_attribute_parsing():
    text = "Colour: black.\nPosition: centre; motion: swimming slowly. Size: large"
    assert questions.parse_attributes(text) == ["Colour: black", "Position: centre", "motion: swimming slowly",
                                                "Size: large"]
    assert len(questions.parse_attributes("; ".join(["x" * 200] * 10))) == 6
    assert all(len(a) <= 80 for a in questions.parse_attributes("y" * 300))
    assert questions.parse_attributes("  ") == []
