"""DecAF's map fusion and the grounder's prompt texts and answer parsing (no model needed).

The reference is DecAF's released code, HYUNJS/DecAF at commit 6c9766c (6c9766c2528f...):
`evaluation/inf_utils.py` (smoothing, normalisation, point extraction, prompt templates),
`evaluation/inference_attn_mask.py` (the fusion steps), `evaluation/llm_prompting_utils.py`
(how the prompts are filled in)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from steerseg_ros.grounding import fusion, questions
from steerseg_ros.grounding.prompts import points_in_cell_order

DATA = Path(__file__).resolve().parents[1] / "data"


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
    # Zero beyond the border (DecAF's conv2d padding): a corner peak keeps only the kernel's
    # weight that falls inside the map, 4 of its 9 cells.
    corner = fusion.smooth(_peak((1, 5, 5), [(0, 0, 0)]), 3, 1.0)
    g = np.exp(-0.5 * np.array([1.0, 0.0, 1.0]))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    assert corner.sum() == pytest.approx(kernel[1:, 1:].sum(), abs=1e-6)
    # SteerSeg's maps are smoothed like DecAF's (no background pass), then normalised and fused.
    video, frames = _peak((2, 3, 4), [(1, 0, 0)], 0.5), _peak((3, 6, 8), [(2, 0, 0)], 0.4)
    steered = fusion.steered_maps(video, frames, 3)
    assert steered.video.shape == (3, 3, 4) and steered.video[2, 0, 0] == 1.0 and steered.video[0].max() == 0.0
    assert steered.frames[2, 0, 0] == 1.0 and steered.fused[2, 0, 0] == 1.0
    np.testing.assert_allclose(steered.frames[2], fusion.minmax(fusion.smooth(frames[2:], 7, 1.0)[0]))
    assert (steered.frames[2] > 0).sum() == 16   # the 7x7 kernel's reach from the corner


def test_fusion_reproduces_decafs_code_on_recorded_maps():
    """test/data/decaf_fusion_6c9766c.npz was produced once (outside the repository) by running
    DecAF's own functions from HYUNJS/DecAF at commit 6c9766c2528f2e64fb13944b7db5ceb3b825a26e:
    get_smoothed_attn_map (k = 3 video, 7 frames, sigma 1), normalize_attn_map_thw and
    get_candidate_points_video (threshold 0.8) from evaluation/inf_utils.py, and the fusion
    lines of evaluation/inference_attn_mask.py's main() (contrast, normalisation, time
    alignment, bilinear upsampling, average, normalisation), executed as they are in the file,
    in float32 torch on the CPU. Inputs: random positive rollout-like maps (numpy seed 13; a
    floor, noise and a few Gaussian blobs per map, scaled to sum to 0.3-0.6) for the object and
    background prompts, on a video grid and a frame grid twice as fine, for 5 keyframes (an odd
    count: the padded step is dropped), 4 keyframes (one frame's background above its object
    everywhere: a constant map) and 1 keyframe. Recorded per case: the inputs, the four smoothed
    maps, the normalised video and frame maps, the video map aligned to the keyframes, the
    fused map and the point cells (keyframe, row, column) in DecAF's order."""
    data = np.load(DATA / "decaf_fusion_6c9766c.npz")
    assert str(data["commit"]).startswith("6c9766c")
    for case in ("odd_keyframes", "even_keyframes", "one_keyframe"):
        ref = {key.split("/", 1)[1]: data[key] for key in data.files if key.startswith(case + "/")}
        k = ref["frame_obj"].shape[0]
        for name, ours in (("attn_map_obj_video", fusion.smooth(ref["video_obj"], 3, 1.0)),
                           ("attn_map_bg_video", fusion.smooth(ref["video_bg"], 3, 1.0)),
                           ("attn_map_obj_frame", fusion.smooth(ref["frame_obj"], 7, 1.0)),
                           ("attn_map_bg_frame", fusion.smooth(ref["frame_bg"], 7, 1.0))):
            # Rollout-sized values (about 1e-3): compared relative to the map's largest value.
            np.testing.assert_allclose(ours / ref[name].max(), ref[name] / ref[name].max(), rtol=0, atol=1e-5,
                                       err_msg=f"{case}: {name}")
        maps = fusion.decaf_maps(ref["video_obj"], ref["video_bg"], ref["frame_obj"], ref["frame_bg"], k)
        np.testing.assert_allclose(maps.frames, ref["norm_attn_map_obj_bg_frame"], rtol=0, atol=1e-5, err_msg=case)
        np.testing.assert_allclose(maps.video, ref["norm_attn_map_video"], rtol=0, atol=1e-5, err_msg=case)
        np.testing.assert_allclose(maps.fused, ref["fused"], rtol=0, atol=1e-5, err_msg=case)
        # The same point cells in the same order (keyframes of 10 pixels per cell).
        hg, wg = maps.fused.shape[1:]
        points = points_in_cell_order(maps.fused, [(10 * wg, 10 * hg)] * k, threshold=0.8)
        cells = [(p.keyframe_index, round(p.y / 10 - 0.5), round(p.x / 10 - 0.5)) for p in points]
        assert cells == [tuple(c) for c in ref["point_cells"].tolist()], case
        for p, (kf, row, col) in zip(points, cells):
            assert p.score == maps.fused[kf, row, col]


def test_points_in_cell_order_and_the_optional_cap():
    maps = np.zeros((2, 3, 4), np.float32)
    maps[0, 2, 1], maps[0, 0, 3], maps[1, 1, 0], maps[1, 0, 2] = 0.9, 1.0, 0.85, 0.95
    points = points_in_cell_order(maps, [(40, 30), (40, 30)])
    assert [(p.keyframe_index, p.x, p.y) for p in points] == [(0, 35, 5), (0, 15, 25), (1, 25, 5), (1, 5, 15)]
    capped = points_in_cell_order(maps, [(40, 30), (40, 30)], max_points=2)
    assert [(p.keyframe_index, p.score) for p in capped] == [(0, 1.0), (1, pytest.approx(0.95))]


def test_expression_formatting_and_prompts():
    assert questions.format_expression("  The RED  cup ") == "the red cup."
    assert questions.format_expression("which one is moving?") == "which one is moving?"
    head, question = questions.steered_text_parts("the cup.", "red; left")
    assert head == "the cup.\nAttributes: red; left\n" and "using the attributes above" in question


def test_prompt_texts_are_decafs_own():
    """Pinned to HYUNJS/DecAF 6c9766c: evaluation/inf_utils.py's PROMPT_TMPL_OBJ_CLS,
    PROMPT_TMPL_OBJ_CHOICE and PROMPT_TMPL_BACKGROUND, filled in as
    evaluation/llm_prompting_utils.py fills them (expression lower-cased; candidates lower-cased
    and joined with ","; the chosen class the whole answer, trimmed and lower-cased; "video" in
    the background prompt for the frame images too)."""
    assert questions.object_text("the black swan.") == (
        "the black swan. \n"
        "What is the main object (or objects) referred to in the given expression or question? \n"
        "Focus on the **primary subject or agent** involved in the described action or behavior. "
        "Respond with a single word (e.g., 'cat', 'person', 'dog') that best describes the target object(s). ")
    assert questions.category_text("the black swan.", ["Swan", "black swan", "", "bird"]) == (
        "Given:\n"
        "- Expression: 'the black swan.'\n"
        "- Candidate object class list: swan,black swan,,bird\n"
        "Goal: Identify the object class referred to by the expression. Instructions:\n"
        "1. If the expression is **clear**, rely on it directly (e.g., 'a person driving a car' \u2192 'person').\n"
        "2. If the expression is **vague**, use the object class list to support your decision "
        "(e.g., check frequency and plausibility).\n"
        "3. Avoid defaulting to the most frequent class unless the expression lacks clarity.\n"
        "Output the most likely referred object class - just the label.\n")
    assert questions.background_text("black swan") == (
        "Describe the background scene of the video, excluding any black swan. "
        "Answer the question using a single word or phrase.")
    # The chosen class is the whole answer, not its first word.
    assert questions.class_name("  Black Swan.\n") == "black swan."
    assert questions.class_name("") == ""


def test_attribute_parsing():
    text = "Colour: black.\nPosition: centre; motion: swimming slowly. Size: large"
    assert questions.parse_attributes(text) == ["Colour: black", "Position: centre", "motion: swimming slowly",
                                                "Size: large"]
    assert len(questions.parse_attributes("; ".join(["x" * 200] * 10))) == 6
    assert all(len(a) <= 80 for a in questions.parse_attributes("y" * 300))
    assert questions.parse_attributes("  ") == []
