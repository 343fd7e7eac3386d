"""The vision-language grounder's "is the object in view" check (grounder.in_view_check) on tiny
random Qwen-VL checkpoints: P(yes) read from the real model's next-token logits for the
tokenizer's yes / no tokens, the threshold deciding `in_view`, a streaming Pipeline with the
built-in tracker making no track from a "not in view" and the usual one otherwise, the attention
variant, and a grounding with the check off unchanged.

The random models' answers mean nothing: these tests check the plumbing, not whether the check
tells a present object from an absent one (that needs real weights; README, "Is the object in
view?")."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import load_davis  # noqa: E402
from vlm_helpers import checkpoint, grounder  # noqa: E402

from steerseg_ros.frame import Frame  # noqa: E402
from steerseg_ros.grounding import questions  # noqa: E402
from steerseg_ros.grounding.vlm import VLMGrounder, VLMGrounderConfig, yes_probability  # noqa: E402
from steerseg_ros.grounding.vlm_inputs import encode_prompt  # noqa: E402
from steerseg_ros.streaming.buffer import KeyframeConfig  # noqa: E402
from steerseg_ros.streaming.pipeline import Pipeline, PipelineConfig, TrackState  # noqa: E402
from steerseg_ros.tracking.flow import FlowTracker  # noqa: E402

pytestmark = pytest.mark.models

COMMAND = "The black swan"
FPS = 15
PIPELINE_FAMILY = "qwen3_vl"


@pytest.fixture(scope="module")
def keyframes(davis_root):
    _, images, _ = load_davis(davis_root, "blackswan", count=5, step=8)
    return [Frame(i, 1_000_000_000 + i * 250_000_000, im, "camera", f"{i:05d}") for i, im in enumerate(images)]


def _variant(family: str, mode: str = "decaf", **options) -> VLMGrounder:
    """A grounder over the shared tiny model (no second copy of the weights) with `options`."""
    base = grounder(family, mode)
    config = dataclasses.replace(base.config, **options)
    return VLMGrounder(config, model=base.model, processor=base.processor)


class _Prefills:
    """The LLM passes over more than one new token (prefills), by length."""

    def __init__(self, model):
        self.lengths: list[int] = []
        self._handle = model.model.language_model.register_forward_pre_hook(self._on_llm, with_kwargs=True)

    def _on_llm(self, _module, _args, kwargs):
        if kwargs["inputs_embeds"].shape[1] > 1:
            self.lengths.append(kwargs["inputs_embeds"].shape[1])

    def close(self):
        self._handle.remove()


def _direct_p_yes(g: VLMGrounder, keyframes, command: str) -> float:
    """P(yes) from the model's own forward (input ids and video pixels, its own embedding merge
    and rotary positions: none of the grounder's cached vision output or explicit positions),
    over the full vocabulary's logits restricted to the ids the tokenizer gives "yes", "Yes",
    "no", "No"."""
    tok = g.processor.tokenizer
    ids = {w: tok.encode(w, add_special_tokens=False) for w in ("yes", "Yes", "no", "No")}
    assert all(len(v) == 1 for v in ids.values()), ids  # the fixture's tokenizer holds them whole
    video, _ = g.prepare_inputs([f.image for f in keyframes])
    text = questions.visibility_text(questions.format_expression(command))
    assert text == "Is there the black swan in the video? Answer yes or no."
    batch = encode_prompt(g.processor, [{"type": "video"}, {"type": "text", "text": text}], video)
    with torch.inference_mode():
        out = g.model(input_ids=batch.input_ids, mm_token_type_ids=batch.mm_token_type_ids,
                      pixel_values_videos=video.pixel_values, video_grid_thw=video.grid_thw, **video.extra)
    logits = out.logits[0, -1].double()
    yes, no = [ids["yes"][0], ids["Yes"][0]], [ids["no"][0], ids["No"][0]]
    probs = torch.softmax(logits[yes + no], dim=0)
    return float(probs[:2].sum())


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_question_p_yes_is_the_models_yes_no_answer(family, keyframes):
    off = grounder(family, "decaf")
    g = _variant(family, in_view_check="question", in_view_threshold=0.0)
    prefills = _Prefills(g.model)
    try:
        with_check = g.ground(keyframes, COMMAND)
        checked = list(prefills.lengths)
        prefills.lengths.clear()
        without = off.ground(keyframes, COMMAND)
    finally:
        prefills.close()
    expected = _direct_p_yes(g, keyframes, COMMAND)
    assert with_check.in_view_score == pytest.approx(expected, abs=1e-5)
    assert 0.0 < with_check.in_view_score < 1.0
    assert with_check.in_view is True  # threshold 0
    # One extra prefill, the question over the keyframe video, before the method's own.
    assert checked[1:] == prefills.lengths and len(checked) == len(prefills.lengths) + 1
    assert "in_view" in with_check.timings and "in_view" not in without.timings
    # The check changed no map and no point.
    for name in ("maps", "frame_maps", "video_maps"):
        np.testing.assert_array_equal(getattr(with_check, name), getattr(without, name))
    assert [(p.keyframe_index, p.x, p.y, p.score) for p in with_check.points] == \
        [(p.keyframe_index, p.x, p.y, p.score) for p in without.points]


def test_yes_probability_is_the_softmax_over_the_answer_tokens_only():
    logits = torch.tensor([5.0, 1.0, 0.0, 2.0, -1.0, 9.0])  # index 5: a token that is no answer
    p = yes_probability(logits, [1, 3], [0, 4])
    e = np.exp([1.0, 2.0, 5.0, -1.0])
    assert p == pytest.approx((e[0] + e[1]) / e.sum())
    assert yes_probability(logits.to(torch.bfloat16), [1], [2]) == pytest.approx(np.exp(1) / (np.exp(1) + 1), 1e-3)


def _run_pipeline(g: VLMGrounder, davis_root, frames: int = 6):
    """A real streaming Pipeline, grounding inline, with the built-in tracker, fed `frames` DAVIS
    frames after the command. Returns (every output, the pipeline's counters)."""
    _, images, _ = load_davis(davis_root, "blackswan", count=frames, step=3)
    config = PipelineConfig(asynchronous=False, buffer_size=16, min_keyframes=4, regrounding_period_s=0.0,
                            grounding_retry_s=60.0, keyframes=KeyframeConfig(count=4, window_s=2.0, min_spacing_s=0.0))
    pipeline = Pipeline(g, FlowTracker(), config)
    try:
        pipeline.set_command(COMMAND)
        outputs = [pipeline.process(im, 1_000_000_000 + i * 1_000_000_000 // FPS) for i, im in enumerate(images)]
        return outputs, dict(pipeline.stats)
    finally:
        pipeline.close()


def test_threshold_decides_in_view_and_the_pipeline_follows_it(davis_root):
    # Below the model's P(yes): in view, the usual points, a track. (The tiny Qwen3-VL: on
    # these frames the Qwen2 families' random fused maps are all zero, so they give no points.)
    below = _variant(PIPELINE_FAMILY, in_view_check="question", in_view_threshold=0.0)
    outputs, stats = _run_pipeline(below, davis_root)
    (seen,) = [r for out in outputs for r in out.groundings]
    p_yes = seen.in_view_score
    assert seen.in_view is True and 0.0 < p_yes < 1.0 and seen.points
    assert stats.get("groundings_not_in_view", 0) == 0
    tracked = [t for out in outputs for t in out.tracks if t.state == TrackState.TRACKING]
    assert tracked, "an in-view grounding with points made no track"
    # The same frames without the check: the same points, in_view unknown.
    outputs_off, _ = _run_pipeline(grounder(PIPELINE_FAMILY, "decaf"), davis_root)
    (plain,) = [r for out in outputs_off for r in out.groundings]
    assert plain.in_view is None and np.isnan(plain.in_view_score)
    np.testing.assert_array_equal(plain.maps, seen.maps)
    assert [(p.x, p.y) for p in plain.points] == [(p.x, p.y) for p in seen.points]

    # Above it (the same frames, so the same keyframes and the same P(yes)): not in view, the
    # points are there but no track is made from them.
    above = _variant(PIPELINE_FAMILY, in_view_check="question", in_view_threshold=(1.0 + p_yes) / 2)
    outputs, stats = _run_pipeline(above, davis_root)
    (hidden,) = [r for out in outputs for r in out.groundings]
    assert hidden.in_view is False and hidden.in_view_score == pytest.approx(p_yes, abs=1e-6)
    assert hidden.points  # the map still points somewhere: the best wrong guess, not used
    assert stats["groundings_not_in_view"] == 1
    assert all(not out.tracks for out in outputs)


def test_attention_check_scores_the_object_against_the_background_prompt(keyframes):
    off = grounder("qwen2_vl", "decaf")
    g = _variant("qwen2_vl", in_view_check="attention", in_view_threshold=0.0)
    prefills = _Prefills(g.model)
    try:
        result = g.ground(keyframes, COMMAND)
        checked = list(prefills.lengths)
        prefills.lengths.clear()
        plain = off.ground(keyframes, COMMAND)
    finally:
        prefills.close()
    assert checked == prefills.lengths  # no extra model call
    assert 0.0 <= result.in_view_score <= 1.0 and result.in_view is True
    np.testing.assert_array_equal(result.maps, plain.maps)
    g.config.in_view_threshold = min(1.0, result.in_view_score + 1e-3)
    assert g.ground(keyframes, COMMAND).in_view is False


def test_config_is_validated_and_a_tokenizer_without_yes_no_is_refused(tmp_path):
    from steerseg_testing.tiny_vlm import build_tiny_checkpoint, build_tokenizer

    assert VLMGrounderConfig().in_view_check == "none"
    for bad in [dict(in_view_check="maybe"), dict(in_view_threshold=1.5), dict(in_view_threshold=-0.1),
                dict(in_view_question="Is it there?"), dict(in_view_check="attention", mode="steerseg")]:
        with pytest.raises(ValueError):
            VLMGrounderConfig(**bad).validate()
    VLMGrounderConfig(in_view_check="question", mode="steerseg").validate()
    # A vocabulary that splits "yes" and "no" cannot be read from one next-token distribution.
    path = build_tiny_checkpoint(tmp_path / "split", "qwen2_vl", num_layers=2,
                                 tokenizer=build_tokenizer(answer_words=()))
    with pytest.raises(ValueError, match="single-token 'yes' or 'no'"):
        VLMGrounder(VLMGrounderConfig(model=str(path), in_view_check="question"))
    VLMGrounder(VLMGrounderConfig(model=str(path), in_view_check="attention")).close()


def test_configured_question_wording_is_asked(keyframes):
    g = _variant("qwen2_vl", in_view_check="question", in_view_question="Can you see {expression}? Yes or no.")
    asked = []
    encode = encode_prompt

    import steerseg_ros.grounding.vlm as vlm

    def spy(processor, content, *args, **kwargs):
        asked.append(content[-1]["text"])
        return encode(processor, content, *args, **kwargs)

    vlm.encode_prompt = spy
    try:
        g.ground(keyframes, "the black swan?")
    finally:
        vlm.encode_prompt = encode
    assert asked[0] == "Can you see the black swan? Yes or no."
