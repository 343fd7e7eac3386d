"""Attention capture and streaming rollout (steerseg_ros/grounding/attention.py) on tiny random
Qwen2-VL, Qwen2.5-VL and Qwen3-VL models, against the float64 reference of METHOD.md.

The tiny-model builder below is local to this file; steerseg_ros/grounding/tiny_models.py (the
VLM grounder's) may replace it later.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from transformers import AutoModelForImageTextToText  # noqa: E402

from steerseg_ros.grounding.attention import (  # noqa: E402
    AttentionRollout, RolloutConfig, default_layer_start, reference_rollout)

pytestmark = pytest.mark.models

IMAGE, VIDEO, VISION_START, VISION_END = 150, 151, 152, 153
VOCAB = 160
TEXT_LAYERS = 3


def tiny_config(family: str):
    """A real Qwen-VL config of a few hundred thousand parameters (3 text layers, GQA 4/2)."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=TEXT_LAYERS,
                num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope, bos_token_id=None,
                eos_token_id=None,
                # larger than the default 0.02 so the random heads attend unevenly and V-Max matters
                initializer_range=0.1)
    ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
               vision_end_token_id=VISION_END)
    if family == "qwen2_vl":
        return transformers.Qwen2VLConfig(
            text_config=text, vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14),
            **ids)
    if family == "qwen2_5_vl":
        return transformers.Qwen2_5_VLConfig(
            text_config=text, vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                                 out_hidden_size=64, patch_size=14, window_size=112,
                                                 fullatt_block_indexes=[1]), **ids)
    if family == "qwen3_vl":
        # Qwen3-VL: explicit head_dim, q/k norms, interleaved M-RoPE, deepstack features.
        text = dict(text, head_dim=16, rope_parameters=dict(rope, mrope_interleaved=True))
        return transformers.Qwen3VLConfig(
            text_config=text, vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                                 out_hidden_size=64, patch_size=16, num_position_embeddings=16,
                                                 deepstack_visual_indexes=[0]), **ids)
    raise ValueError(family)


FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_model_dir(request, tmp_path_factory):
    config = tiny_config(request.param)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return folder


def load(folder, dtype=torch.float32, attn="sdpa"):
    return AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, attn_implementation=attn).eval()


def make_inputs(config, layouts, seed=0):
    """Model inputs for a batch; layouts[i] is a list of ("text", n) and ("image", h, w) segments
    (h, w in patches, even). Every layout must give the same length (no padding)."""
    generator = torch.Generator().manual_seed(seed)
    vision = config.vision_config
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    merge = vision.spatial_merge_size ** 2
    rows, pixels, grids = [], [], []
    for layout in layouts:
        ids = []
        for segment in layout:
            if segment[0] == "text":
                ids += torch.randint(1, IMAGE, (segment[1],), generator=generator).tolist()
            else:
                _, h, w = segment
                ids += [VISION_START] + [IMAGE] * (h * w // merge) + [VISION_END]
                pixels.append(torch.randn(h * w, patch_dim, generator=generator))
                grids.append([1, h, w])
        rows.append(ids)
    assert len({len(r) for r in rows}) == 1, "layouts must have equal length"
    input_ids = torch.tensor(rows)
    return dict(input_ids=input_ids, mm_token_type_ids=(input_ids == IMAGE).int(),
                pixel_values=torch.cat(pixels), image_grid_thw=torch.tensor(grids))


# Same layout for both items, and different visual positions per item (different last rows).
SHARED = [[("text", 5), ("image", 8, 12), ("text", 9)]] * 2
STAGGERED = [[("text", 3), ("image", 8, 8), ("text", 4), ("image", 4, 8), ("text", 12)],
             [("text", 11), ("image", 4, 8), ("image", 8, 8), ("text", 8)]]


def reference_row(model64, inputs, config):
    with torch.no_grad():
        out = model64(**inputs, output_attentions=True)
    return reference_rollout(out.attentions[config.layer_start:], inputs["input_ids"] == IMAGE, config)


def captured_row(model, inputs, config):
    rollout = AttentionRollout(model, config)
    with torch.no_grad(), rollout.capture(inputs["input_ids"] == IMAGE):
        model(**inputs)
    return rollout.last_row()


@pytest.mark.parametrize("layouts", [SHARED, STAGGERED], ids=["shared", "staggered"])
def test_streaming_rollout_matches_float64_reference(tiny_model_dir, layouts):
    model, model64 = load(tiny_model_dir), load(tiny_model_dir, torch.float64, "eager")
    inputs = make_inputs(model.config, layouts)
    length = inputs["input_ids"].shape[1]
    layer_start = default_layer_start(TEXT_LAYERS)
    references = {}
    for weighting in ("vmax", "mean"):
        references[weighting] = reference_row(model64, inputs, RolloutConfig(layer_start, head_weighting=weighting))
        for block_rows in (1, 7, 64, length + 3):  # 7 and 64 do not divide L
            config = RolloutConfig(layer_start, head_weighting=weighting, block_rows=block_rows)
            row = captured_row(model, inputs, config)
            assert row.shape == (2, length) and row.dtype == torch.float32
            diff = (row.double() - references[weighting]).abs().max().item()
            assert diff < 1e-5, f"{weighting} block_rows={block_rows}: max abs diff {diff:.2e}"
    # The check has teeth: V-Max changes the map, and each item has its own row.
    assert (references["vmax"] - references["mean"]).abs().max() > 1e-4
    assert (references["vmax"][0] - references["vmax"][1]).abs().max() > 1e-4
    # With head means every A' is row-stochastic, so the row sums to 1 (eager's softmax is fp32).
    assert bool((references["mean"].sum(dim=1) - 1).abs().max() < 1e-6)


def test_layer_start_is_honoured(tiny_model_dir):
    model, model64 = load(tiny_model_dir), load(tiny_model_dir, torch.float64, "eager")
    inputs = make_inputs(model.config, SHARED)
    for layer_start in (0, TEXT_LAYERS - 1):
        config = RolloutConfig(layer_start, block_rows=16)
        diff = (captured_row(model, inputs, config).double() - reference_row(model64, inputs, config)).abs().max()
        assert diff < 1e-5
    with pytest.raises(ValueError, match="beyond"):
        AttentionRollout(model, RolloutConfig(TEXT_LAYERS))


def test_capture_leaves_model_output_unchanged(tiny_model_dir):
    model = load(tiny_model_dir)
    inputs = make_inputs(model.config, STAGGERED)
    with torch.no_grad():
        plain = model(**inputs).logits
        rollout = AttentionRollout(model, RolloutConfig(1, block_rows=16))
        with rollout.capture(inputs["input_ids"] == IMAGE):
            captured = model(**inputs).logits
        after = model(**inputs).logits
    assert torch.equal(captured, plain)
    assert torch.equal(after, plain)


def test_only_the_prefill_inside_the_block_is_captured(tiny_model_dir):
    model = load(tiny_model_dir)
    inputs = make_inputs(model.config, SHARED)
    visual = inputs["input_ids"] == IMAGE
    config = RolloutConfig(1, block_rows=16)
    prefill_only = captured_row(model, inputs, config)

    # Generation inside the block: the prefill is captured, the decoding steps are not.
    rollout = AttentionRollout(model, config)
    with torch.no_grad(), rollout.capture(visual):
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False,
                                   pad_token_id=0, eos_token_id=None)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
    assert torch.equal(rollout.last_row(), prefill_only)

    # A forward outside any capture block records nothing.
    idle = AttentionRollout(model, config)
    with torch.no_grad():
        model(**inputs)
    with idle.capture(visual):
        pass
    with pytest.raises(RuntimeError, match="no prefill"):
        idle.last_row()
    with torch.no_grad():
        model(**inputs)
    with pytest.raises(RuntimeError, match="no prefill"):
        idle.last_row()


def test_padded_batch_is_refused(tiny_model_dir):
    model = load(tiny_model_dir)
    inputs = make_inputs(model.config, SHARED)
    attention_mask = torch.ones_like(inputs["input_ids"])
    attention_mask[1, :2] = 0
    rollout = AttentionRollout(model, RolloutConfig(1))
    with pytest.raises(ValueError, match="padding"), torch.no_grad(), \
            rollout.capture(inputs["input_ids"] == IMAGE):
        model(**inputs, attention_mask=attention_mask)
    # The model is usable again afterwards, with its own attention.
    with torch.no_grad():
        model(**inputs)


def test_eager_models_capture_too(tiny_model_dir):
    model, model64 = load(tiny_model_dir, attn="eager"), load(tiny_model_dir, torch.float64, "eager")
    inputs = make_inputs(model.config, STAGGERED)
    config = RolloutConfig(1, block_rows=32)
    diff = (captured_row(model, inputs, config).double() - reference_row(model64, inputs, config)).abs().max()
    assert diff < 1e-5


class LargestNewTensor(TorchDispatchMode):
    """Bytes of the largest fresh storage any torch op creates while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for tensor in _tensors(out):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in inputs:
                self.largest = max(self.largest, storage.nbytes())
        return out


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def test_no_length_by_length_tensor_is_allocated(tmp_path):
    """With H * block_rows < L, one fp32 L x L matrix is larger than anything the streaming
    rollout may create; the materialising reference creates H of them per layer."""
    folder = tmp_path / "m"
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(tiny_config("qwen2_5_vl")).save_pretrained(folder)
    model = load(folder)
    inputs = make_inputs(model.config, [[("text", 20), ("image", 24, 24), ("image", 16, 16), ("text", 30)]])
    length = inputs["input_ids"].shape[1]
    visual = inputs["input_ids"] == IMAGE
    length_by_length = length * length * 4
    config = RolloutConfig(1, block_rows=8)
    assert 4 * config.block_rows * length * 4 < length_by_length / 4

    with torch.no_grad():
        with LargestNewTensor() as plain:
            model(**inputs, logits_to_keep=1)
        rollout = AttentionRollout(model, config)
        with rollout.capture(visual), LargestNewTensor() as forward:
            model(**inputs, logits_to_keep=1)
        with LargestNewTensor() as chain:
            row = rollout.last_row()
    assert forward.largest == plain.largest  # capturing adds no allocation of its own
    assert chain.largest < length_by_length / 4, (chain.largest, length_by_length)

    # The detector sees an L x L allocation when there is one.
    model64 = load(folder, torch.float64, "eager")
    with torch.no_grad(), LargestNewTensor() as reference:
        expected = reference_row(model64, inputs, config)
    assert reference.largest >= length_by_length
    assert (row.double() - expected).abs().max() < 1e-5


def test_gradient_reaches_input_embeddings(tmp_path):
    """The soft-prompt trainer backpropagates a loss on the row to input embeddings: the gradient
    exists and equals the float64 reference's."""
    folder = tmp_path / "m"
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(tiny_config("qwen2_5_vl")).save_pretrained(folder)
    inputs = make_inputs(tiny_config("qwen2_5_vl"), SHARED)
    visual = inputs["input_ids"] == IMAGE
    config = RolloutConfig(1, block_rows=10)
    target = torch.rand(visual.shape, generator=torch.Generator().manual_seed(1))

    def grad_of_loss(model, row_fn):
        embeds = model.get_input_embeddings()(inputs["input_ids"]).detach().requires_grad_(True)
        row = row_fn(model, dict(inputs, inputs_embeds=embeds))
        loss = (row * target.to(row.dtype))[visual].sum()
        loss.backward()
        return embeds.grad

    def streaming(model, kwargs):
        rollout = AttentionRollout(model, config)
        with rollout.capture(visual):
            model(**kwargs)
        return rollout.last_row()

    def reference(model, kwargs):
        out = model(**kwargs, output_attentions=True)
        return reference_rollout(out.attentions[config.layer_start:], visual, config)

    grad = grad_of_loss(load(folder), streaming)
    expected = grad_of_loss(load(folder, torch.float64, "eager"), reference)
    text = ~visual
    assert torch.isfinite(grad).all()
    assert grad[text].abs().amax() > 0
    scale = expected.abs().max().item()
    assert (grad.double() - expected).abs().max().item() < 1e-4 * scale


def test_config_is_validated():
    with pytest.raises(ValueError):
        RolloutConfig(0, head_weighting="max")
    with pytest.raises(ValueError):
        RolloutConfig(0, residual=1.5)
    with pytest.raises(ValueError):
        RolloutConfig(0, block_rows=0)
    assert default_layer_start(28) == 14 and default_layer_start(36) == 18
