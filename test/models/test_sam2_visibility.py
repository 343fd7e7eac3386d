"""SAM2's occlusion head decides whether a tracked object has a mask, in both SAM2 backends.

SAM2's mask decoder has an object-score head (object_score_logits); its video predictor outputs an
empty mask for a frame where that logit is <= 0 ("not visible"). The trackers must do the same and
score such a frame 0, so that the pipeline publishes nothing and the track goes LOST, instead of a
mask on whatever now covers the object.

The models are the tiny random ones; the head is forced by setting the bias of its last layer:
-1000 makes it say "not visible" on every tracked frame, +4 (the fixtures' own value) "visible".
The weights are changed in the loaded tracker's model, between steps, so one object goes through
visible -> hidden -> visible on the real model code with its real memory.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import load_davis_frames  # noqa: E402
from steerseg_ros.grounding.base import Grounder  # noqa: E402
from steerseg_ros.streaming import backends  # noqa: E402
from steerseg_ros.streaming.pipeline import Pipeline, PipelineConfig, TrackState  # noqa: E402
from steerseg_testing.tiny_sam2 import save_random_sam2, tiny_config  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_torch_thread")]

SIZE = 64
HIDDEN, VISIBLE = -1000.0, 4.0
MIN_CONFIDENCE = PipelineConfig().min_confidence


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    return save_random_sam2(tmp_path_factory.mktemp("sam2_visibility") / "tiny", tiny_config(SIZE))


@pytest.fixture(scope="module")
def meta_checkpoint(tmp_path_factory):
    pytest.importorskip("sam2", reason="needs Meta's sam2 package (scripts/setup_env.sh installs it)")
    from steerseg_ros.tracking import sam2_checkpoints
    from steerseg_testing.meta_checkpoint import random_meta_checkpoint

    pt, _ = random_meta_checkpoint(tmp_path_factory.mktemp("sam2_meta_visibility") / "tiny.pt",
                                   sam2_checkpoints.meta_compatible(tiny_config(SIZE)))
    return pt


@pytest.fixture(scope="module")
def dog(davis_root):
    return load_davis_frames(davis_root, "dog", 16, (160, 90))


# Each variant: how to build the tracker, and the bias of its object-score head's last layer.
VARIANTS = {
    "transformers-batched": ("hf", {"batch_objects": True}),
    "transformers-per-object": ("hf", {"batch_objects": False}),
    "meta": ("meta", {}),
}


def make(request, variant):
    kind, options = VARIANTS[variant]
    if kind == "hf":
        path = request.getfixturevalue("hf_checkpoint")
        tracker = backends.make_tracker("sam2", {"model": str(path), "local_files_only": True, **options})
        bias = tracker.model.mask_decoder.pred_obj_score_head.proj_out.bias
    else:
        path = request.getfixturevalue("meta_checkpoint")
        tracker = backends.make_tracker("sam2_meta", {"checkpoint": str(path), "device": "cpu", **options})
        bias = tracker.model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias
    return tracker, bias


def set_head(bias, value: float) -> None:
    with torch.no_grad():
        bias.fill_(value)


def assert_not_confident(result):
    assert not result.mask.any()
    assert result.score == 0.0 < MIN_CONFIDENCE


def assert_confident(result):
    assert result.mask.any()
    assert MIN_CONFIDENCE < result.score <= 1.0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_frame_the_head_calls_not_visible_gives_no_confident_mask(request, variant, dog):
    frames, masks = dog
    tracker, bias = make(request, variant)
    try:
        tracker.attach(1, tracker.start(frames[0], mask=masks[0]))
        detached = tracker.start(frames[0], mask=masks[0])
        for f in frames[1:4]:  # the normal path: visible, a mask, confident
            assert_confident(tracker.step(f)[1])
            assert_confident(tracker.advance(detached, f))
        set_head(bias, HIDDEN)
        for f in frames[4:8]:  # live and catching up alike
            assert_not_confident(tracker.step(f)[1])
            assert_not_confident(tracker.advance(detached, f))
        set_head(bias, VISIBLE)
        for f in frames[8:11]:  # back in view: the same objects, masks again
            assert_confident(tracker.step(f)[1])
            assert_confident(tracker.advance(detached, f))
    finally:
        tracker.close()


class NeverGrounder(Grounder):
    """A seeded track needs no grounding: any call fails the test."""

    name = "never"

    def ground(self, keyframes, command):
        raise AssertionError("a seeded track must not ground")


@pytest.mark.parametrize("variant", ["transformers-batched", "meta"])
def test_a_hidden_object_is_not_published_and_its_track_goes_lost(request, variant, dog):
    frames, masks = dog
    tracker, bias = make(request, variant)
    config = PipelineConfig(asynchronous=False, lost_timeout_s=0.1)
    pipeline = Pipeline(NeverGrounder(), tracker, config)
    step_ns = frames[1].stamp_ns
    try:
        pipeline.process(frames[0].image, frames[0].stamp_ns)
        pipeline.seed_mask(masks[0])
        for f in frames[1:3]:
            out = pipeline.process(f.image, f.stamp_ns)
            assert [t.state for t in out.tracks] == [TrackState.TRACKING]
            assert out.label_image().any()
        set_head(bias, HIDDEN)
        hidden = frames[3:3 + 6]  # 6 frames, 0.2 s: past the 0.1 s lost timeout
        for f in hidden:
            out = pipeline.process(f.image, f.stamp_ns)
            assert not out.visible_tracks() and not out.label_image().any()
        assert (hidden[-1].stamp_ns - frames[2].stamp_ns) > config.lost_timeout_s * 1e9 + step_ns
        assert [t.state for t in out.tracks] == [TrackState.LOST]
    finally:
        pipeline.close()
        tracker.close()


@pytest.mark.parametrize("logit", [0.0, -0.01, -3.0, float("nan")])
def test_at_the_heads_boundary_not_visible_wins(logit):
    """logit <= 0 is SAM2's own "not visible" (its masks become NO_OBJ_SCORE there). Before, the
    score was sigmoid(logit) x IoU: 0.5 at logit 0 with IoU 1, which is min_confidence itself."""
    from steerseg_ros.tracking.sam2_inputs import tracked_result

    result = tracked_result(np.ones((4, 6), bool), logit, 1.0)
    assert result.score == 0.0 and not result.mask.any() and result.mask.shape == (4, 6)
    seen = tracked_result(np.ones((4, 6), bool), 3.0, 0.9)
    assert seen.mask.all() and seen.score == pytest.approx(0.9 / (1 + np.exp(-3.0)))
