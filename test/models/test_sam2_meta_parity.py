"""Cross-implementation parity: Meta's sam2 (tracker.backend sam2_meta) and transformers' SAM2
(tracker.backend sam2) on the same weights, frames and prompts must give the same masks.

Random weights are made in Meta's layout for a tiny config (the project's tiny transformers
config with the widths Meta's code fixes, sam2_convert.meta_compatible), written as Meta writes
checkpoints (.pt + Hydra config), converted to a transformers model folder, and both backends
track the same DAVIS clip for 30 frames, seeded from the same first-frame mask and from the same
points, with one and with two objects. Per frame, every mask's IoU between the two must be at
least 0.99; the largest difference of the mask decoders' logits is printed (run with -s).

The one departure this found (transformers' object pointer on a mask-prompted frame, see
tracking/sam2_reference.py) is corrected in the transformers backend; the last test shows that
the corrected transformers backend keeps Meta's object pointer on a mask-prompted frame, and the
uncorrected one does not."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2", reason="needs Meta's sam2 package (scripts/setup_env.sh installs it)")

from conftest import load_davis  # noqa: E402
from steerseg_ros.frame import Frame  # noqa: E402
from steerseg_testing.meta_checkpoint import random_meta_checkpoint  # noqa: E402
from steerseg_ros.tracking import sam2_checkpoints as sam2_convert  # noqa: E402
from steerseg_ros.tracking.sam2 import Sam2Tracker, Sam2TrackerConfig  # noqa: E402
from steerseg_ros.tracking.sam2_meta import MetaSam2Tracker, MetaSam2TrackerConfig  # noqa: E402
from steerseg_testing.tiny_sam2 import tiny_config  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_torch_thread")]

SIZE, FRAMES, SEQUENCE = 128, 30, "camel"
LOGITS: dict[str, float] = {}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam2_meta")
    pt, yaml = random_meta_checkpoint(folder / "tiny.pt", sam2_convert.meta_compatible(tiny_config(SIZE)))
    hf = sam2_convert.meta_to_hf(pt, yaml, folder / "hf")
    return pt, hf


@pytest.fixture(scope="module")
def clip(davis_root):
    _, images, masks = load_davis(davis_root, SEQUENCE, count=FRAMES)
    # Half size: the models see SIZE px anyway; smaller frames keep the up-sampling cheap.
    import cv2

    images = [cv2.resize(im, (im.shape[1] // 2, im.shape[0] // 2), interpolation=cv2.INTER_AREA) for im in images]
    masks = [cv2.resize(m.astype(np.uint8), (m.shape[1] // 2, m.shape[0] // 2), interpolation=cv2.INTER_NEAREST) > 0
             for m in masks]
    return [Frame(i, i * 33_333_333, im) for i, im in enumerate(images)], masks


def meta_tracker(pt) -> MetaSam2Tracker:
    return MetaSam2Tracker(MetaSam2TrackerConfig(checkpoint=str(pt), device="cpu"))


def hf_tracker(folder) -> Sam2Tracker:
    # The per-object path: the decoder calls then pair one to one with Meta's (the batched path
    # equals the per-object one, test_sam2_batched.py).
    return Sam2Tracker(Sam2TrackerConfig(model=str(folder), device="cpu", local_files_only=True, batch_objects=False))


def prompts(kind: str, objects: int, mask0: np.ndarray) -> list[dict]:
    """Seeds for 1 or 2 objects: the annotated object and a patch of background away from it."""
    h, w = mask0.shape
    ys, xs = np.nonzero(mask0)
    background = np.zeros_like(mask0)
    background[: h // 4, : w // 5] = True
    background &= ~mask0
    if kind == "mask":
        seeds = [dict(mask=mask0), dict(mask=background)]
    else:
        seeds = [dict(points=np.array([[xs.mean(), ys.mean()], [xs.min() + 2.0, ys.mean()]]), labels=np.array([1, 1])),
                 dict(points=np.array([[w / 10, h / 8]]), labels=np.array([1]))]
    return seeds[:objects]


def track(tracker, frames, seeds) -> tuple[list[dict[int, np.ndarray]], list[torch.Tensor]]:
    """Masks per frame and object (live objects stepped frame by frame) and the mask decoder's raw
    logits of every call, in order."""
    decoder = tracker.model.sam_mask_decoder if isinstance(tracker, MetaSam2Tracker) else tracker.model.mask_decoder
    logits: list[torch.Tensor] = []
    hook = decoder.register_forward_hook(lambda m, a, out: logits.append(out[0].detach().float().reshape(-1).clone()))
    try:
        first = {}
        for k, seed in enumerate(seeds):
            state = tracker.start(frames[0], **seed)
            tracker.attach(k + 1, state)
            first[k + 1] = state.result.mask
        out = [first] + [{k: r.mask for k, r in tracker.step(f).items()} for f in frames[1:]]
    finally:
        hook.remove()
        tracker.reset()
    return out, logits


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


@pytest.mark.parametrize("objects", [1, 2])
@pytest.mark.parametrize("kind", ["mask", "points"])
def test_meta_and_transformers_track_alike(checkpoints, clip, kind, objects):
    pt, hf = checkpoints
    frames, masks = clip
    seeds = prompts(kind, objects, masks[0])
    meta_masks, meta_logits = track(meta_tracker(pt), frames, seeds)
    hf_masks, hf_logits = track(hf_tracker(hf), frames, seeds)
    assert len(meta_masks) == len(hf_masks) == FRAMES
    ious = [iou(a[k], b[k]) for a, b in zip(meta_masks, hf_masks) for k in a]
    assert all(sorted(a) == sorted(b) == list(range(1, objects + 1)) for a, b in zip(meta_masks, hf_masks))
    # Not vacuous: the masks are not empty, and they move.
    assert all(m[1].any() for m in meta_masks)
    assert any(not np.array_equal(meta_masks[0][1], m[1]) for m in meta_masks[1:])
    assert min(ious) >= 0.99, f"per-frame IoU {min(ious):.4f} (frame-object pairs {np.round(ious, 3).tolist()})"
    assert len(meta_logits) == len(hf_logits) and all(a.shape == b.shape for a, b in zip(meta_logits, hf_logits))
    diff = max(float((a - b).abs().max()) for a, b in zip(meta_logits, hf_logits))
    scale = max(float(a.abs().max()) for a in meta_logits)
    LOGITS[f"{kind}/{objects}"] = diff
    print(f"\nparity {kind}, {objects} object(s), {FRAMES} frames: min IoU {min(ious):.4f}, "
          f"largest mask-decoder logit difference {diff:.3g} (logits up to {scale:.3g})")


def test_a_mask_prompt_gives_the_same_object_pointer_only_with_the_correction(checkpoints, clip):
    """tracking/sam2_reference.py: the object pointer SAM2 keeps for a mask-prompted frame, which
    every later frame attends to. Corrected, transformers' equals Meta's; undone, it does not."""
    pt, hf = checkpoints
    frames, masks = clip
    meta_state = meta_tracker(pt).start(frames[0], mask=masks[0])
    reference = meta_state.memory["cond_frame_outputs"][0]["obj_ptr"].reshape(-1)

    def pointer(tracker) -> torch.Tensor:
        state = tracker.start(frames[0], mask=masks[0])
        outputs = state.session.output_dict_per_obj[0]["cond_frame_outputs"][0]
        assert np.array_equal(state.result.mask, meta_state.result.mask)  # the mask is the prompt in both
        return outputs["object_pointer"].reshape(-1).float()

    corrected = pointer(hf_tracker(hf))
    plain = hf_tracker(hf)
    for name in ("_use_mask_as_output", "_single_frame_forward"):
        delattr(plain.model, name)  # the instance patches; transformers' own methods remain
    uncorrected = pointer(plain)
    scale = float(reference.abs().max())
    print(f"\nseed-frame object pointer, largest difference to Meta's: corrected {float((corrected - reference).abs().max()):.3g}, "
          f"uncorrected {float((uncorrected - reference).abs().max()):.3g} (values up to {scale:.3g})")
    assert torch.allclose(corrected, reference, atol=1e-5 * scale, rtol=0)
    assert float((uncorrected - reference).abs().max()) > 1e-2 * scale
