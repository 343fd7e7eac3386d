"""SteerSeg soft prompts: the grounder's own forward pass (cached vision output, explicit M-RoPE
positions) against the stock model, soft tokens inserted through inputs_embeds against the same
tokens written into the prompt, gradients reaching the soft vectors, and the file format."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vlm_helpers import FAMILIES, checkpoint, grounder, random_frames  # noqa: E402

from steerseg_ros.grounding import vlm_inputs as vi  # noqa: E402
from steerseg_ros.grounding.soft_prompts import SoftPromptError, SoftPrompts  # noqa: E402

pytestmark = pytest.mark.models

HEAD, QUESTION = "the black swan.\n", "What is the main object mentioned in the given expression?"


def _inputs(g, kind):
    frames = random_frames(3, 120, 200, seed=5)
    video, batches = g.prepare_inputs(frames)
    return video if kind == "video" else batches[0]


def _stock_logits(g, visual, batch, input_ids):
    """The stock model on token ids with pixel values: positions, vision tower and placeholder
    scatter all done by transformers itself."""
    pixels = {"video": "pixel_values_videos", "image": "pixel_values"}[visual.kind]
    kwargs = {pixels: visual.pixel_values, f"{visual.kind}_grid_thw": visual.grid_thw, **visual.extra}
    mm_types = torch.tensor(g.processor.create_mm_token_type_ids(input_ids.tolist()), dtype=torch.int)
    return g.model(input_ids=input_ids, mm_token_type_ids=mm_types, **kwargs).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["video", "image"])
def test_zero_soft_tokens_equal_the_stock_model(family, kind):
    g = grounder(family)
    visual = _inputs(g, kind)
    with torch.inference_mode():
        # A stock call first leaves a cached rope_deltas behind, as generate() would: the
        # grounder's explicit positions must not depend on it.
        batch = vi.encode_prompt(g.processor, g.content(visual, HEAD, QUESTION, soft_slot=True), visual, soft_count=0)
        stock = _stock_logits(g, visual, batch, batch.input_ids)
        out, _, _ = g.forward(batch, soft=None)
    assert batch.soft_count == 0 and vi.SOFT_TOKEN not in g.processor.tokenizer.decode(batch.input_ids[0])
    assert torch.allclose(out.logits[:, -1], stock[:, -1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("position", ["before_question", "before_visual"])
def test_soft_tokens_act_like_the_same_tokens_in_the_prompt(family, position):
    # Soft vectors equal to the embeddings of real tokens must give exactly what the stock model
    # gives with those tokens written at the same place: the insertion and the M-RoPE positions
    # of everything after it are right.
    g = grounder(family)
    visual = _inputs(g, "video")
    words = g.processor.tokenizer(" look at the left swan", add_special_tokens=False)["input_ids"]
    g.config.soft_position = position
    try:
        content = g.content(visual, HEAD, QUESTION, soft_slot=True)
    finally:
        g.config.soft_position = "before_question"
    with torch.inference_mode():
        soft = g.model.get_input_embeddings()(torch.tensor(words))
        batch = vi.encode_prompt(g.processor, content, visual, soft_count=len(words))
        ids = batch.input_ids.clone()
        ids[:, batch.soft_start:batch.soft_start + len(words)] = torch.tensor(words)
        stock = _stock_logits(g, visual, batch, ids)
        out, _, positions = g.forward(batch, soft=soft)
        plain = vi.encode_prompt(g.processor, content, visual, soft_count=0)
        plain_positions = g.position_ids(plain)
    assert torch.allclose(out.logits[:, -1], stock[:, -1], atol=1e-5, rtol=0)
    # Everything after the slot moved on by the number of soft tokens.
    s = batch.soft_start
    assert torch.equal(positions[..., s + len(words):], plain_positions[..., s:] + len(words))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_gradients_reach_the_soft_prompts(family):
    g = grounder(family)
    visual = _inputs(g, "image")
    prompts = SoftPrompts.initialise(g.model.get_input_embeddings(), 6, str(checkpoint(family)), family)
    with torch.no_grad():
        g.encode_visual(visual)
    batch = vi.encode_prompt(g.processor, g.content(visual, HEAD, QUESTION, soft_slot=True), visual, soft_count=6)
    out, _, _ = g.forward(batch, soft=prompts.frame)
    out.logits[:, -1].logsumexp(-1).sum().backward()
    assert prompts.frame.grad is not None and prompts.frame.grad.abs().sum() > 0
    assert prompts.video.grad is None
    assert all(p.grad is None for p in g.model.parameters())

    # The soft-prompt trainer's path: a loss on the rollout map itself reaches the soft vectors.
    prompts.frame.grad = None
    maps = g.rollout_maps(visual, g.content(visual, HEAD, QUESTION, soft_slot=True), soft=prompts.frame)
    assert [tuple(m.shape) for m in maps] == [(g_.t, g_.h, g_.w) for g_ in visual.grids]
    target = torch.zeros_like(maps[0])
    target[0, 0, 0] = 1.0
    torch.nn.functional.binary_cross_entropy(maps[0].clamp(1e-6, 1 - 1e-6), target).backward()
    assert prompts.frame.grad is not None and prompts.frame.grad.abs().sum() > 0


def test_soft_prompt_file_round_trip_and_mismatches(tmp_path):
    g = grounder("qwen2_vl")
    model_id = "Qwen/Qwen2.5-VL-7B-Instruct"
    prompts = SoftPrompts.initialise(g.model.get_input_embeddings(), 5, model_id, "qwen2_5_vl", seed=3)
    path = tmp_path / "steer.safetensors"
    prompts.save(path)
    back = SoftPrompts.load(path, model_id="/models/Qwen2.5-VL-7B-Instruct/", model_type="qwen2_5_vl",
                            hidden_size=prompts.hidden_size)
    assert torch.equal(back.video, prompts.video) and torch.equal(back.frame, prompts.frame)
    assert (back.model_id, back.position, back.count("video")) == (model_id, "before_question", 5)

    with pytest.raises(SoftPromptError, match="hidden size 64.*3584"):
        SoftPrompts.load(path, model_id=model_id, hidden_size=3584)
    with pytest.raises(SoftPromptError, match="qwen2_5_vl model.*qwen3_vl"):
        SoftPrompts.load(path, model_id=model_id, model_type="qwen3_vl")
    with pytest.raises(SoftPromptError, match="Qwen2.5-VL-3B-Instruct"):
        SoftPrompts.load(path, model_id="Qwen/Qwen2.5-VL-3B-Instruct")
    assert SoftPrompts.load(path, model_id="Qwen/Qwen2.5-VL-3B-Instruct", strict=False).count("frame") == 5
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SoftPromptError, match="cannot be read"):
        SoftPrompts.load(tmp_path / "bad.safetensors")
    with pytest.raises(SoftPromptError, match="does not exist"):
        SoftPrompts.load(tmp_path / "missing.safetensors")


def test_grounder_refuses_soft_prompts_for_another_model(tmp_path):
    from steerseg_ros.grounding.vlm import VLMGrounder, VLMGrounderConfig

    g = grounder("qwen2_vl")
    path = tmp_path / "other.safetensors"
    SoftPrompts(torch.zeros(4, 32), torch.zeros(4, 32), "Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl").save(path)
    with pytest.raises(SoftPromptError, match="hidden size 32"):
        VLMGrounder(VLMGrounderConfig(model=str(checkpoint("qwen2_vl")), mode="steerseg",
                                      soft_prompt_file=str(path)))
    assert g.hidden_size == 64
