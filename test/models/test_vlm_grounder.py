"""The vision-language grounder end to end on DAVIS frames with tiny random Qwen2-VL, Qwen2.5-VL
and Qwen3-VL checkpoints loaded from disk: both modes, what is computed (vision tower once,
answers decoded only as far as they are used), the result, and the errors users see."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import load_davis  # noqa: E402
from vlm_helpers import FAMILIES, checkpoint, grounder  # noqa: E402

from steerseg_ros.streaming import backends  # noqa: E402
from steerseg_ros.frame import Frame  # noqa: E402
from steerseg_ros.grounding.base import GroundingError, ModelUnavailableError  # noqa: E402
from steerseg_ros.grounding.soft_prompts import SoftPrompts  # noqa: E402
from steerseg_ros.grounding import questions  # noqa: E402
from steerseg_ros.grounding.vlm import VLMGrounder, VLMGrounderConfig  # noqa: E402
from steerseg_ros.grounding.vlm_inputs import encode_prompt  # noqa: E402

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def keyframes(davis_root):
    _, images, _ = load_davis(davis_root, "blackswan", count=5, step=8)
    return [Frame(i, 1_000_000_000 + i * 250_000_000, im, "camera", f"{i:05d}") for i, im in enumerate(images)]


class _Counter:
    """Counts vision tower runs and LLM passes (prefills: more than one new token; decode steps)."""

    def __init__(self, model):
        self.vision = 0
        self.prefill_lengths: list[int] = []
        self.decode_steps = 0
        self._handles = [model.model.visual.register_forward_hook(self._on_vision),
                         model.model.language_model.register_forward_pre_hook(self._on_llm, with_kwargs=True)]

    def _on_vision(self, *_):
        self.vision += 1

    def _on_llm(self, _module, _args, kwargs):
        length = kwargs["inputs_embeds"].shape[1]
        if length > 1:
            self.prefill_lengths.append(length)
        else:
            self.decode_steps += 1

    def close(self):
        for h in self._handles:
            h.remove()


def _check_result(result, g, keyframes, command):
    k = len(keyframes)
    result.validate()
    assert result.command == command and result.backend == g.config.mode
    assert [f.stamp_ns for f in result.keyframes] == [f.stamp_ns for f in keyframes]
    # Frame grid = 2x the video grid, per keyframe, all in [0, 1].
    assert result.video_maps.shape[0] == result.frame_maps.shape[0] == result.maps.shape[0] == k
    assert result.maps.shape[1:] == result.frame_maps.shape[1:] == tuple(2 * s for s in result.video_maps.shape[1:])
    for maps in (result.maps, result.video_maps, result.frame_maps):
        assert maps.dtype == np.float32 and maps.min() >= 0 and maps.max() <= 1
    assert result.maps.max() in (0.0, 1.0)
    # Points: every fused cell at or above the threshold (no cap by default, as DecAF), at its
    # cell centre, keyframe by keyframe in row-major order (DecAF's order).
    hg, wg = result.maps.shape[1:]
    assert g.config.max_points == 0
    cells = []
    for p in result.points:
        frame = keyframes[p.keyframe_index]
        col, row = p.x / frame.width * wg - 0.5, p.y / frame.height * hg - 0.5
        assert col == pytest.approx(round(col)) and row == pytest.approx(round(row))
        assert result.maps[p.keyframe_index, round(row), round(col)] == pytest.approx(p.score)
        assert p.score >= g.config.threshold and p.positive
        cells.append((p.keyframe_index, round(row), round(col)))
    assert cells == [tuple(c) for c in np.argwhere(result.maps >= g.config.threshold).tolist()]
    assert result.timings["total"] >= result.timings["vision"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_decaf_grounding_on_davis(family, keyframes):
    g = grounder(family, "decaf")
    counter = _Counter(g.model)
    asked = []
    ask = g.ask

    def spy(visual, content, *args, **kwargs):
        answer = ask(visual, content, *args, **kwargs)
        asked.append((visual.kind if visual is not None else None, content[-1]["text"],
                      kwargs.get("decode_tokens", 0), answer.texts))
        return answer

    g.ask = spy
    try:
        result = g.ground(keyframes, "The black swan")
    finally:
        counter.close()
        del g.ask
    _check_result(result, g, keyframes, "The black swan")
    # DecAF's prompts, filled in as its code fills them: the object prompt on the video and on
    # the frames; its whole answers as the category candidates; the whole category answer as
    # the class in the background prompt, which says "video" for the frames too.
    batches = -(-len(keyframes) // g.config.frames_per_batch)
    kinds = ["video"] + ["image"] * batches
    objects, category, backgrounds = asked[:1 + batches], asked[1 + batches], asked[2 + batches:]
    assert [(kind, text, tokens) for kind, text, tokens, _ in objects] == [
        (kind, questions.object_text("the black swan."), g.config.answer_tokens) for kind in kinds]
    answers = [t for *_, texts in objects for t in texts]
    assert len(answers) == 1 + len(keyframes)
    assert category[:3] == (None, questions.category_text("the black swan.", answers), g.config.answer_tokens)
    assert result.class_word == questions.class_name(category[3][0])
    assert [(kind, text) for kind, text, *_ in backgrounds] == [
        (kind, questions.background_text(result.class_word)) for kind in kinds]
    # The vision tower ran once per visual input, not once per prompt.
    assert counter.vision == 1 + batches
    # Prefills: object prompts (video + frame batches), the text-only category call, background
    # prompts; decoding only for the object prompts and the category call.
    assert len(counter.prefill_lengths) == 2 * (1 + batches) + 1
    assert counter.decode_steps <= (g.config.answer_tokens - 1) * (1 + batches + 1)
    stages = {"inputs", "vision", "object_prompt", "category", "background_prompt", "fusion", "points"}
    assert stages <= set(result.timings)
    answers = result.generated_text
    assert "object (video):" in answers and "category:" in answers
    assert result.attributes == []


@pytest.mark.parametrize("family", FAMILIES)
def test_steerseg_grounding_on_davis(family, keyframes, tmp_path):
    base = grounder(family, "steerseg")
    prompts = SoftPrompts.initialise(base.model.get_input_embeddings(), 8, str(checkpoint(family)), family, seed=1)
    path = tmp_path / "soft.safetensors"
    prompts.save(path)
    g = VLMGrounder(VLMGrounderConfig(model=str(checkpoint(family)), mode="steerseg", video_tokens_per_pair=48,
                                      cot_tokens=8, soft_prompt_file=str(path)), model=base.model,
                    processor=base.processor)
    counter = _Counter(g.model)
    try:
        result = g.ground(keyframes, "the black swan")
    finally:
        counter.close()
    _check_result(result, g, keyframes, "the black swan")
    batches = -(-len(keyframes) // g.config.frames_per_batch)
    assert counter.vision == 1 + batches
    # Attributes call, then the steered question on the video and the frame batches: no background.
    assert len(counter.prefill_lengths) == 1 + 1 + batches
    assert "background_prompt" not in result.timings and "attributes" in result.timings
    assert result.generated_text.startswith("attributes:")
    # The steered prompts carry the soft tokens (the attributes call does not) ...
    video, frame_batches = g.prepare_inputs([f.image for f in keyframes])
    head, question = questions.steered_text_parts("the black swan.", "; ".join(result.attributes))
    expected = [encode_prompt(g.processor, g.content(v, head, question, soft_slot=True), v, soft_count=8).shape[1]
                for v in [video, *frame_batches]]
    assert counter.prefill_lengths[1:] == expected
    # ... and they change the attention.
    if family == "qwen2_vl":
        unsteered = base.ground(keyframes, "the black swan")
        assert not np.allclose(unsteered.video_maps, result.video_maps)


def test_keyframes_of_another_size_and_subsampling(keyframes):
    g = grounder("qwen2_5_vl", "decaf")
    small = Frame(99, keyframes[-1].stamp_ns + 1, keyframes[0].image[::2, ::2].copy())
    many = keyframes + [small]
    g.config.max_keyframes = 4
    try:
        result = g.ground(many, "swan")
    finally:
        g.config.max_keyframes = 32
    assert len(result.keyframes) == 4 and result.keyframes[-1] is small
    for p in result.points:
        frame = result.keyframes[p.keyframe_index]
        assert 0 <= p.x < frame.width and 0 <= p.y < frame.height


def test_bad_input_is_a_grounding_error(keyframes):
    g = grounder("qwen2_vl", "decaf")
    with pytest.raises(GroundingError, match="empty"):
        g.ground(keyframes, "   ")
    with pytest.raises(GroundingError, match="no keyframes"):
        g.ground([], "swan")


def test_registry_builds_both_modes_from_options():
    path = str(checkpoint("qwen3_vl"))
    g = backends.make_grounder("steerseg", {"model": path, "video_tokens_per_pair": 32, "cot": False})
    assert isinstance(g, VLMGrounder) and g.config.mode == "steerseg" and g.name == "steerseg"
    assert g.layer_start == g.num_layers // 2
    assert backends.make_config("grounder", "decaf", {"model": path}).mode == "decaf"
    with pytest.raises(ValueError, match="mode"):
        backends.make_config("grounder", "decaf", {"model": path, "mode": "magic"})
    with pytest.raises(ValueError, match="layer_start 9"):
        VLMGrounder(VLMGrounderConfig(model=path, layer_start=9), model=g.model, processor=g.processor)


def test_missing_weights_name_the_model_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as info:
        VLMGrounder(VLMGrounderConfig(model="Qwen/Qwen2.5-VL-3B-Instruct", local_files_only=True))
    message = str(info.value)
    assert "'Qwen/Qwen2.5-VL-3B-Instruct' is not available" in message
    assert "hf download Qwen/Qwen2.5-VL-3B-Instruct" in message and "grounder.model" in message

    with pytest.raises(ModelUnavailableError, match="no such folder"):
        VLMGrounder(VLMGrounderConfig(model=str(tmp_path / "nowhere")))
    with pytest.raises(ModelUnavailableError, match="no usable config.json"):
        VLMGrounder(VLMGrounderConfig(model=str(tmp_path)))
    # A checkpoint folder that lost its weights.
    import shutil
    broken = shutil.copytree(checkpoint("qwen2_vl"), tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelUnavailableError, match="could not be read"):
        VLMGrounder(VLMGrounderConfig(model=str(broken)))


def test_config_validation():
    assert VLMGrounderConfig().model == "Qwen/Qwen2.5-VL-3B-Instruct"
    VLMGrounderConfig().validate()
    for bad in [dict(mode="x"), dict(dtype="int8"), dict(device="tpu"), dict(threshold=1.5),
                dict(frame_kernel=4), dict(video_tokens_per_pair=0), dict(soft_position="middle"),
                dict(head_weighting="max"), dict(residual=1.0), dict(model=" ")]:
        with pytest.raises(ValueError):
            VLMGrounderConfig(**bad).validate()
    import dataclasses
    for f in dataclasses.fields(VLMGrounderConfig):
        assert f.metadata.get("help"), f.name
        assert f.type in ("str", "int", "float", "bool"), f.name


def test_one_word_answers_stop_once_the_word_is_complete():
    from steerseg_ros.grounding.vlm import _WORD_ENDED

    g = grounder("qwen2_vl", "decaf")
    stopped_early = 0
    for text in ["the black swan.", "a dog on the left.", "which one is moving?"]:
        batch = encode_prompt(g.processor, g.content(None, text), rows=1)
        with torch.inference_mode():
            out, _, positions = g.forward(batch, use_cache=True)
            full = g.decode(out, positions, 8)[0]
            out, _, positions = g.forward(batch, use_cache=True)
            word = g.decode(out, positions, 8, one_word=True)[0]
        assert full.startswith(word)
        assert word == full or _WORD_ENDED.match(word)
        stopped_early += len(word) < len(full)
    assert stopped_early


def test_an_image_the_processor_cannot_take_is_a_grounding_error():
    g = grounder("qwen2_vl", "decaf")
    sliver = [Frame(i, i + 1, np.zeros((2, 900, 3), np.uint8)) for i in range(2)]
    with pytest.raises(GroundingError, match="cannot ground on these keyframes"):
        g.ground(sliver, "swan")


def test_bfloat16_autocast_grounds_like_float32(keyframes):
    """grounder.autocast on the CPU (the GPU path): the maps stay within 0.05 of float32's (maps are
    in [0, 1]; bfloat16 rounds at 2^-9 relative, and the rollout multiplies a few such layers)."""
    from vlm_helpers import checkpoint as tiny

    results = {}
    for autocast in ("none", "bfloat16"):
        g = VLMGrounder(VLMGrounderConfig(model=str(tiny("qwen2_5_vl")), mode="decaf", video_tokens_per_pair=48,
                                          autocast=autocast))
        results[autocast] = g.ground(keyframes, "The black swan")
        g.close()
    full, mixed = results["none"], results["bfloat16"]
    _check_result(mixed, g, keyframes, "The black swan")
    for name in ("maps", "frame_maps", "video_maps"):
        assert np.abs(getattr(full, name) - getattr(mixed, name)).max() < 0.05, name
    # Not a no-op: bfloat16 changed the attention maps.
    assert np.abs(full.frame_maps - mixed.frame_maps).max() > 0
    with pytest.raises(ValueError, match="autocast"):
        VLMGrounderConfig(model="x", autocast="int8").validate()
