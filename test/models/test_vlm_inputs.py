"""Model inputs of the vision-language grounder: the hand-written video patchify against
transformers' own, the prompts against the processor's own output, and the token -> (t, h, w)
-> image mapping traced with planted signals through the processor and the model's positions."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vlm_helpers import FAMILIES, checkpoint, random_frames  # noqa: E402

from steerseg_ros.grounding import vlm_inputs as vi  # noqa: E402

pytestmark = pytest.mark.models


def _processor(family):
    return vi.load_processor(str(checkpoint(family)), family)


@pytest.mark.parametrize("patch_size,frames", [(14, 5), (16, 4)])
def test_video_patchify_matches_transformers(patch_size, frames):
    # transformers' own video patchify (the same code in every Qwen-VL video processor; Qwen3-VL's
    # module is the one that imports without torchvision).
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    x = np.random.default_rng(1).standard_normal((frames, 3, 4 * patch_size, 6 * patch_size)).astype(np.float32)
    ref, gt, gh, gw = Qwen3VLVideoProcessor.patchify(None, torch.from_numpy(x)[None], patch_size=patch_size,
                                                     merge_size=2, temporal_patch_size=2)
    mine, grid = vi.patchify_video(x, patch_size, 2, 2)
    assert grid == (gt, gh, gw)
    assert np.array_equal(mine, ref[0].numpy())


@pytest.mark.parametrize("family", FAMILIES)
def test_video_of_a_repeated_frame_equals_the_image_processor(family):
    # An image is a video of one frame pair: a video of two identical frames must give exactly the
    # image processor's pixels (same normalisation, same layout, same temporal stacking).
    proc = _processor(family)
    factor = proc.video_processor.patch_size * proc.video_processor.merge_size
    frame = random_frames(1, 3 * factor, 5 * factor, seed=2)[0]
    video = proc.video_processor([np.stack([frame, frame])])
    image = proc.image_processor([frame], do_resize=False)
    assert np.array_equal(np.asarray(video["video_grid_thw"]), np.asarray(image["image_grid_thw"]))
    np.testing.assert_array_equal(np.asarray(video["pixel_values_videos"]), np.asarray(image["pixel_values"]))


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_encoding_equals_the_processor(family):
    proc = _processor(family)
    factor = proc.video_processor.patch_size * proc.video_processor.merge_size
    frames = random_frames(3, 100, 170, seed=3)
    vhw = vi.video_size(100, 170, factor, 12)
    video = vi.encode_video(proc, frames, vhw, fps=2.0)
    content = [{"type": "video"}, {"type": "text", "text": "the swan. " + vi.SOFT_TOKEN + "What is it?"}]
    batch = vi.encode_prompt(proc, content, video)
    text = vi.chat_text(proc, [{"type": "video"}, {"type": "text", "text": "the swan. What is it?"}])
    ref = proc(text=[text], videos=[np.stack([vi.resize_rgb(f, vhw) for f in frames])], return_tensors="pt")
    assert torch.equal(batch.input_ids, ref["input_ids"])
    assert torch.equal(batch.mm_token_type_ids, ref["mm_token_type_ids"].int())
    assert torch.equal(video.pixel_values, ref["pixel_values_videos"])
    assert torch.equal(video.grid_thw, ref["video_grid_thw"])

    fhw = vi.frame_size(vhw, 2)
    images = vi.encode_images(proc, frames[:2], fhw)
    batch = vi.encode_prompt(proc, [{"type": "image"}, {"type": "text", "text": "the swan."}], images)
    text = vi.chat_text(proc, [{"type": "image"}, {"type": "text", "text": "the swan."}])
    ref = proc(text=[text, text], images=[vi.resize_rgb(f, fhw) for f in frames[:2]],
               images_kwargs={"do_resize": False}, return_tensors="pt")
    assert torch.equal(batch.input_ids, ref["input_ids"])
    assert torch.equal(images.pixel_values, ref["pixel_values"])
    assert batch.visual_mask.sum(1).tolist() == [g.num_tokens for g in images.grids]


def _plant(image: np.ndarray, box, value=255) -> np.ndarray:
    """A bright square on the inner half of `box` (x0, y0, x1, y1), clear of its neighbours even
    after bicubic resizing."""
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
    out = image.copy()
    out[int(round(cy - hh)):int(round(cy + hh)), int(round(cx - hw)):int(round(cx + hw))] = value
    return out


def _token_change(pixels_a, pixels_b, merge: int) -> np.ndarray:
    """Per LLM token, how much its patches changed (patch rows -> token = row // merge^2)."""
    change = np.abs(np.asarray(pixels_a) - np.asarray(pixels_b)).sum(axis=1)
    return change.reshape(-1, merge * merge).sum(axis=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_video_token_mapping_with_a_planted_patch(family):
    proc = _processor(family)
    vp = proc.video_processor
    factor = vp.patch_size * vp.merge_size
    height, width, count = 240, 427, 5
    vhw = vi.video_size(height, width, factor, 24)
    base = [np.full((height, width, 3), 90, np.uint8) for _ in range(count)]
    grid = vi.encode_video(proc, base, vhw, 2.0).grids[0]
    target_t, target_r, target_c, frame = 1, grid.h - 2, 1, 2   # frame 2 opens time step 1
    planted = list(base)
    planted[frame] = _plant(base[frame], grid.cell_box(target_r, target_c, (width, height)))

    video0 = vi.encode_video(proc, base, vhw, 2.0)
    video1 = vi.encode_video(proc, planted, vhw, 2.0)
    change = _token_change(video0.pixel_values, video1.pixel_values, vp.merge_size)
    k = int(np.argmax(change))
    assert tuple(grid.token_thw()[k]) == (target_t, target_r, target_c)
    assert change[k] > 50 * np.delete(change, k).max(initial=1e-9)
    assert frame in grid.frames_of_step(target_t)
    # Inside the token's patches only the first frame of the pair changed.
    rows = np.arange(k * vp.merge_size ** 2, (k + 1) * vp.merge_size ** 2)
    diff = (video1.pixel_values[rows] - video0.pixel_values[rows]).abs().numpy()
    per_frame = diff.reshape(len(rows), 3, vp.temporal_patch_size, -1).sum(axis=(0, 1, 3))
    assert per_frame[0] > 0 and per_frame[1] == 0

    # The k-th video token of the prompt is where the model itself puts (row, column) = planted cell.
    from steerseg_ros.grounding.vlm_inputs import model_class_for
    model = model_class_for(family).from_pretrained(str(checkpoint(family)))
    batch = vi.encode_prompt(proc, [{"type": "video"}, {"type": "text", "text": "what?"}], video1)
    positions, _ = model.model.get_rope_index(batch.input_ids, mm_token_type_ids=batch.mm_token_type_ids,
                                              video_grid_thw=video1.grid_thw, **video1.extra)
    seq = batch.visual_mask[0].nonzero().flatten()
    # Rows and columns count from the first token of the time step (Qwen3-VL restarts them after
    # each step's timestamp text; Qwen2/2.5-VL share one origin for all steps).
    first = positions[:, 0, seq[target_t * grid.h * grid.w]]
    at_k = positions[:, 0, seq[k]]
    assert (int(at_k[1] - first[1]), int(at_k[2] - first[2])) == (target_r, target_c)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_token_mapping_with_a_planted_patch(family):
    proc = _processor(family)
    ip = proc.image_processor
    height, width = 180, 300
    vhw = vi.video_size(height, width, ip.patch_size * ip.merge_size, 20)
    fhw = vi.frame_size(vhw, 2)
    base = [np.full((height, width, 3), 40, np.uint8) for _ in range(3)]
    grid = vi.encode_images(proc, base[:1], fhw).grids[0]
    target_image, target_r, target_c = 1, 2, grid.w - 1
    planted = list(base)
    planted[target_image] = _plant(base[target_image], grid.cell_box(target_r, target_c, (width, height)))
    change = _token_change(vi.encode_images(proc, base, fhw).pixel_values,
                           vi.encode_images(proc, planted, fhw).pixel_values, ip.merge_size)
    k = int(np.argmax(change))
    image, within = divmod(k, grid.num_tokens)
    assert image == target_image
    assert tuple(grid.token_thw()[within]) == (0, target_r, target_c)
    assert change[k] > 50 * np.delete(change, k).max(initial=1e-9)


def test_token_budget_and_frame_grid():
    for (h, w), budget in [((480, 854), 400), ((480, 640), 100), ((720, 1280), 400), ((100, 1000), 16)]:
        vh, vw = vi.video_size(h, w, 28, budget)
        assert vh % 28 == 0 and vw % 28 == 0
        assert (vh // 28) * (vw // 28) <= budget
        fh, fw = vi.frame_size((vh, vw), 2)
        assert (fh // 28, fw // 28) == (2 * vh // 28, 2 * vw // 28)
    # DecAF's numbers: a 480p DAVIS frame pair is 14 x 26 = 364 tokens under a 400 budget.
    assert vi.video_size(480, 854, 28, 400) == (392, 728)


def test_tiny_frames_are_enlarged_as_decafs_inputs_are():
    """DecAF passes its keyframes to qwen-vl-utils 0.0.11 as a list of frames: each is resized
    with that library's smallest image size, 4 x 28 x 28 pixels, and its sides never round to
    0. Sizes below from qwen-vl-utils 0.0.11's smart_resize (max_pixels = 400 x 28 x 28)."""
    assert vi.video_size(30, 40, 28, 400) == (56, 84)       # one token before: 28 x 28
    assert vi.video_size(20, 20, 28, 400) == (56, 56)
    assert vi.video_size(50, 200, 28, 400) == (56, 196)
    assert vi.video_size(10, 1000, 28, 400) == (28, 1008)   # transformers' rule: 28 x 560
    assert vi.video_size(60, 70, 28, 48) == (56, 56)


def test_a_checkpoint_in_the_hub_layout_loads(tmp_path):
    # Hub checkpoints keep the image processor in preprocessor_config.json (as the torchvision
    # class), the video processor in video_preprocessor_config.json and the chat template in
    # chat_template.json.
    import json
    import shutil

    folder = shutil.copytree(checkpoint("qwen2_5_vl"), tmp_path / "hub")
    saved = json.loads((folder / "processor_config.json").read_text())["image_processor"]
    legacy = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
              "merge_size": 2, "image_mean": saved["image_mean"], "image_std": saved["image_std"],
              "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(legacy))
    (folder / "video_preprocessor_config.json").write_text(json.dumps(
        {**legacy, "video_processor_type": "Qwen2VLVideoProcessor"}))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    (folder / "processor_config.json").unlink()
    (folder / "chat_template.jinja").unlink()
    assert saved["image_processor_type"] == "Qwen2VLImageProcessor"

    proc = vi.load_processor(str(folder), "qwen2_5_vl")
    ref = _processor("qwen2_5_vl")
    assert type(proc.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert type(proc).__name__ == "Qwen2_5_VLProcessor"
    content = [{"type": "image"}, {"type": "text", "text": "the swan."}]
    frames = random_frames(1, 56, 84, seed=7)
    a = vi.encode_prompt(proc, content, vi.encode_images(proc, frames, (56, 84)))
    b = vi.encode_prompt(ref, content, vi.encode_images(ref, frames, (56, 84)))
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.visual.pixel_values, b.visual.pixel_values)
