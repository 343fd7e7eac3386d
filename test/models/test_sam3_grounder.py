"""The `sam3` concept grounder (transformers' Sam3Model with a noun phrase) on tiny random SAM 3
checkpoints saved and reloaded as users load facebook/sam3: the phrase it is prompted with, its
errors, parity with Sam3Model's own outputs and transformers' own instance post-processing on
identical pixels, and what the pipeline does with its answers: SAM 3's instance masks become the
candidates (the tracker segments nothing), and a presence score below the threshold starts no
track.

Random weights make meaningless masks, so these tests check behaviour and agreement, not quality."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import load_davis_frames  # noqa: E402
from steerseg_ros.frame import Frame  # noqa: E402
from steerseg_ros.grounding.base import ModelUnavailableError  # noqa: E402
from steerseg_ros.grounding.sam3 import Sam3Grounder, noun_phrase  # noqa: E402
from steerseg_ros.streaming import backends  # noqa: E402
from steerseg_ros.streaming.pipeline import Pipeline, PipelineConfig  # noqa: E402
from steerseg_testing.tiny_sam3 import (sam3_pixel_values, save_random_sam3_detector,  # noqa: E402
                                        tiny_detector_config, transformers_instances)

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_torch_thread")]

SIZE = 224


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_sam3_detector(tmp_path_factory.mktemp("sam3det") / "tiny", tiny_detector_config(SIZE))


@pytest.fixture(scope="module")
def absent(tmp_path_factory):
    """The same model with the presence head saying "not in this image" (about 0.02) everywhere."""
    return save_random_sam3_detector(tmp_path_factory.mktemp("sam3absent") / "tiny", tiny_detector_config(SIZE),
                                     presence_bias=-4.0)


@pytest.fixture(scope="module")
def cows(davis_root):
    frames, _ = load_davis_frames(davis_root, "cows", 12, (320, 180))
    return [f.image for f in frames]


def make(checkpoint, **options) -> Sam3Grounder:
    return backends.make_grounder("sam3", {"model": str(checkpoint), "local_files_only": True, **options})


def keyframes(images, count=4):
    return [Frame(seq=i, stamp_ns=i * 100_000_000, image=img) for i, img in enumerate(images[:count])]


# ---- the phrase --------------------------------------------------------------------------------
@pytest.mark.parametrize("command, phrase", [
    ("the red cup", "red cup"),
    ("The red cup on the left", "red cup"),
    ("a black swan swimming in the pond", "black swan"),
    ("the man jumping over the railings", "man"),
    ("dog that is running", "dog"),
    ("the cow which walks behind the others", "cow"),
    ("the", "the"),
])
def test_the_command_is_cut_to_its_leading_noun_phrase(command, phrase):
    assert noun_phrase(command) == phrase


def test_a_fixed_phrase_overrides_the_command(checkpoint, cows):
    result = make(checkpoint, phrase="cow").ground(keyframes(cows, 1), "the one on the left")
    assert result.class_word == "cow"


# ---- loading ---------------------------------------------------------------------------------
def test_a_closed_grounder_refuses_with_a_grounding_error(checkpoint, cows):
    from steerseg_ros.grounding.base import GroundingError

    grounder = make(checkpoint)
    grounder.close()
    with pytest.raises(GroundingError, match="closed"):
        grounder.ground(keyframes(cows, 1), "the cow")


def test_missing_weights_say_how_to_get_the_gated_checkpoint(tmp_path):
    with pytest.raises(ModelUnavailableError) as e:
        make(tmp_path / "nowhere")
    assert "hf download facebook/sam3" in str(e.value)
    with pytest.raises(ModelUnavailableError) as e:
        backends.make_grounder("sam3", {"model": "facebook/sam3", "local_files_only": True})
    assert "request access" in str(e.value) and "hf auth login" in str(e.value)


# ---- parity with transformers ------------------------------------------------------------------
def test_instances_match_sam3_models_own_outputs_and_post_processing(checkpoint, cows):
    """The grounder's instances on a frame are transformers' own: Sam3Model.from_pretrained on the
    same folder, fed the same pixels (SAM 3's processor maths, written out) and the phrase
    tokenized as Sam3Processor does, then Sam3ImageProcessor.post_process_instance_segmentation:
    the same instances, scores and masks."""
    from transformers import AutoTokenizer, Sam3Model

    grounder = make(checkpoint)
    model = Sam3Model.from_pretrained(str(checkpoint), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
    compared = 0
    for image in cows[:3]:
        ours = grounder.instances(image, "cow")
        with torch.inference_mode():
            text = tokenizer(["cow"], return_tensors="pt", padding="max_length", max_length=32)
            theirs = transformers_instances(model(pixel_values=sam3_pixel_values(image, SIZE), **text),
                                            image.shape[:2])
        assert len(ours.scores) == len(theirs["scores"]) > 0
        order = torch.argsort(theirs["scores"], descending=True, stable=True)
        np.testing.assert_allclose(ours.scores, theirs["scores"][order].numpy(), rtol=0, atol=1e-6)
        for mine, their in zip(ours.masks, theirs["masks"][order].numpy().astype(bool)):
            assert mine.shape == image.shape[:2]
            # Identical up to pixels whose probability sits at the threshold to the last bit.
            assert np.count_nonzero(mine != their) <= 2
        compared += len(ours.scores)
    assert compared >= 3


def test_the_result_carries_instances_as_points_with_their_masks(checkpoint, cows):
    grounder = make(checkpoint, max_instances=3)
    frames = keyframes(cows)
    result = grounder.ground(frames, "the brown cow on the right")
    result.validate()
    assert result.backend == "sam3" and result.class_word == "brown cow"
    assert result.in_view is True and result.in_view_score > 0.9
    assert result.maps.shape[0] == len(frames) and 0 <= result.maps.min() and result.maps.max() <= 1
    assert result.points and max(sum(p.keyframe_index == k for p in result.points) for k in range(4)) <= 3
    for p in result.points:
        frame = frames[p.keyframe_index].image
        assert p.mask.shape == frame.shape[:2] and p.mask[int(p.y), int(p.x)]
        assert p.score > 0.3


# ---- through the pipeline ----------------------------------------------------------------------
class CountingTracker:
    """The built-in tracker, counting the point prompts it is asked to segment."""

    def __init__(self):
        self.tracker = backends.make_tracker("builtin")
        self.segments = 0

    def segment(self, *args, **kwargs):
        self.segments += 1
        return self.tracker.segment(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tracker, name)


def run_pipeline(grounder, images):
    tracker = CountingTracker()
    pipeline = Pipeline(grounder, tracker, PipelineConfig(asynchronous=False, min_keyframes=2))
    pipeline.set_command("the cow")
    outputs = [pipeline.process(img, 1_000_000_000 + i * 100_000_000, "camera", str(i)) for i, img in enumerate(images)]
    stats = dict(pipeline.stats)
    pipeline.close()
    return outputs, stats, tracker.segments


def test_sam3_instances_become_the_candidates_and_a_track(checkpoint, cows):
    grounder = make(checkpoint)
    seen = []
    ground = grounder.ground
    grounder.ground = lambda frames, command: seen.append(ground(frames, command)) or seen[-1]
    outputs, stats, segments = run_pipeline(grounder, cows)
    assert stats.get("tracks_started") == 1, stats
    assert segments == 0  # SAM 3 segmented the candidates: the tracker was asked for none
    chosen = seen[0].points[seen[0].chosen_points[0]]
    assert chosen.mask is not None
    assert any(t.id == 1 for t in outputs[-1].tracks)


def test_an_absent_concept_starts_no_track(absent, cows):
    outputs, stats, _ = run_pipeline(make(absent), cows)
    assert stats.get("groundings", 0) >= 1 and stats.get("groundings_not_in_view", 0) == stats.get("groundings")
    assert not stats.get("tracks_started") and all(not o.tracks for o in outputs)


# ---- the hybrid: a VLM's class word prompts SAM 3, its attention chooses -------------------------
def test_hybrid_takes_sam3_instances_of_the_class_word_and_lets_attention_choose(checkpoint, absent, cows):
    """A VLM grounder with `sam3_candidates`: its candidates are SAM 3's instances of the class
    word it answered (points carrying SAM 3's masks, no point prompts of its own); the tracker
    segments nothing; the attention maps rank the instances, so a map that covers another
    instance chooses that one; and SAM 3 saying the concept is absent is "not in view"."""
    import dataclasses

    from vlm_helpers import grounder as tiny_vlm_grounder

    from steerseg_ros.grounding.vlm import VLMGrounder
    from steerseg_ros.streaming import selection

    base = tiny_vlm_grounder("qwen2_5_vl", "steerseg")
    hybrid = VLMGrounder(dataclasses.replace(base.config, sam3_candidates=str(checkpoint), local_files_only=True),
                         model=base.model, processor=base.processor)
    frames = keyframes(cows, 3)
    result = hybrid.ground(frames, "the cow")
    expected = make(checkpoint).instances
    phrase = noun_phrase(result.class_word or "the cow")
    assert result.points and all(p.mask is not None for p in result.points)
    for k, frame in enumerate(frames):
        on_k = [p for p in result.points if p.keyframe_index == k]
        theirs = expected(frame.image, phrase)
        assert [p.score for p in on_k] == pytest.approx(list(theirs.scores[:len(on_k)]), abs=1e-6)
        for p, mask in zip(on_k, theirs.masks):
            np.testing.assert_array_equal(p.mask, mask)
    assert result.in_view is None  # SAM 3 finds the concept present; no other check is on

    tracker = CountingTracker()
    config = selection.SelectionConfig(scorer="steerseg", propagate=False)
    # Attention on each candidate that survives suppression, in turn: the scorer must follow it.
    candidates = selection.build_tracklets(result, tracker, config)
    assert len(candidates) >= 2
    for target in candidates[:3]:
        aimed = dataclasses.replace(result)
        maps = np.zeros_like(result.maps)
        maps[target.keyframe_index] = selection.pool_to_grid(target.mask, maps.shape[1:])
        aimed.maps = aimed.frame_maps = aimed.video_maps = maps
        chosen = selection.select(aimed, tracker, config)
        assert chosen and chosen[0].point_index == target.point_index, f"attention on point {target.point_index}"
    assert tracker.segments == 0

    gone = VLMGrounder(dataclasses.replace(base.config, sam3_candidates=str(absent), local_files_only=True),
                       model=base.model, processor=base.processor)
    result = gone.ground(frames, "the cow")
    assert result.in_view is False and result.in_view_score < 0.5
