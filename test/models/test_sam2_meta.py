"""The sam2_meta tracker (Meta's sam2 code) on tiny random checkpoints in Meta's layout, and the
checkpoint converter: loading and its errors, the Tracker contract, objects added and removed
mid-stream without disturbing the others, catch-up in a worker thread, bounded memory, and
conversion both ways (also for the published SAM2.1 layer shapes, built without weights).

Random weights make meaningless masks: these tests check behaviour. test_sam2_meta_parity.py
checks the masks against the transformers backend on the same weights."""
from __future__ import annotations

import dataclasses
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2", reason="needs Meta's sam2 package (scripts/setup_env.sh installs it)")

from conftest import load_davis_frames  # noqa: E402
from steerseg_ros.streaming import backends  # noqa: E402
from steerseg_ros.frame import Frame  # noqa: E402
from steerseg_ros.grounding.base import ModelUnavailableError  # noqa: E402
from steerseg_testing.meta_checkpoint import random_meta_checkpoint  # noqa: E402
from steerseg_ros.tracking import sam2_checkpoints as sam2_convert  # noqa: E402
from steerseg_ros.tracking.base import MaskCandidate, ObjectMask, TrackerError  # noqa: E402
from steerseg_ros.tracking.sam2_meta import MetaSam2Tracker, MetaSam2TrackerConfig  # noqa: E402
from steerseg_testing.tiny_sam2 import random_sam2, real_config, tiny_config  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_torch_thread")]

SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pt, _ = random_meta_checkpoint(tmp_path_factory.mktemp("sam2_meta") / "tiny.pt",
                                                sam2_convert.meta_compatible(tiny_config(SIZE)))
    return pt


def make(checkpoint, **options) -> MetaSam2Tracker:
    return backends.make_tracker("sam2_meta", {"checkpoint": str(checkpoint), "device": "cpu", **options})


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


@pytest.fixture(scope="module")
def dog(davis_root):
    return load_davis_frames(davis_root, "dog", 20, (427, 240))


# ---- loading ---------------------------------------------------------------------------------
def test_checkpoint_loads_through_the_registry_with_its_config(checkpoint):
    assert checkpoint.with_suffix(".yaml").is_file()  # found beside the .pt
    tracker = make(checkpoint)
    assert isinstance(tracker, MetaSam2Tracker) and tracker.image_size == SIZE
    saved = torch.load(checkpoint, weights_only=True)["model"]
    loaded = tracker.model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    # The same config named explicitly; Hydra's search path is restored afterwards (a packaged
    # config still resolves).
    again = make(checkpoint, model_config=str(checkpoint.with_suffix(".yaml")))
    assert again.image_size == SIZE
    with pytest.raises(ModelUnavailableError, match="does not fit"):
        make(checkpoint, model_config="tiny")  # sam2.1_hiera_t.yaml: other shapes


def test_missing_package_checkpoint_or_config_are_clear_errors(tmp_path, checkpoint, monkeypatch):
    with pytest.raises(ModelUnavailableError, match="sam2.1_hiera_large.pt") as e:
        make(tmp_path / "sam2.1_hiera_large.pt")
    assert "dl.fbaipublicfiles.com" in str(e.value)
    other = tmp_path / "mine.pt"
    other.write_bytes(checkpoint.read_bytes())
    with pytest.raises(ModelUnavailableError, match="no Hydra config"):
        make(other)
    with pytest.raises(ModelUnavailableError, match="not found"):
        make(other, model_config=str(tmp_path / "nothing.yaml"))
    with pytest.raises(TrackerError, match="CUDA"):
        make(checkpoint, compile=True)
    for name in [m for m in sys.modules if m == "sam2" or m.startswith("sam2.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sam2", None)  # as if not installed
    with pytest.raises(ModelUnavailableError, match="SAM2_BUILD_CUDA=0"):
        make(checkpoint)


def test_config_is_declarable_as_ros_parameters_and_validated(checkpoint):
    for f in dataclasses.fields(MetaSam2TrackerConfig):
        assert f.metadata.get("help"), f.name
        assert f.type in ("str", "int", "float", "bool"), (f.name, f.type)
    for bad in ({"dtype": "float64"}, {"max_objects": 0}, {"feature_cache_frames": 0}, {"device": "gpu0"},
                {"checkpoint": " "}):
        with pytest.raises(ValueError):
            backends.make_config("tracker", "sam2_meta", bad)
    with pytest.raises(ValueError, match="no option"):
        make(checkpoint, model="x")


# ---- the Tracker contract -------------------------------------------------------------------------
def test_segment_gives_ranked_single_frame_masks_and_keeps_no_state(checkpoint, dog):
    tracker = make(checkpoint)
    frames, masks = dog
    ys, xs = np.nonzero(masks[0])
    point = np.array([[xs.mean(), ys.mean()]])
    candidates = tracker.segment(frames[0], point, np.array([1]))
    assert len(candidates) == 3 and all(isinstance(c, MaskCandidate) and c.mask.shape == (240, 427) for c in candidates)
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    again = tracker.segment(frames[0], point, np.array([1]))
    assert [c.score for c in again] == scores and all(np.array_equal(a.mask, b.mask) for a, b in zip(again, candidates))
    assert len(tracker.segment(frames[0], np.array([[xs.mean(), ys.mean()], [5.0, 5.0]]), np.array([1, 0]))) >= 1
    assert tracker.object_ids == []
    for points, labels in ((np.array([1.0, 2.0]), np.array([1])), (point, np.array([5])),
                           (np.array([[np.nan, 1.0]]), np.array([1]))):
        with pytest.raises(TrackerError):
            tracker.segment(frames[0], points, labels)


def test_objects_added_and_removed_mid_stream_leave_the_others_alone(checkpoint, dog):
    frames, masks = dog
    tracker = make(checkpoint, max_objects=2)
    state = tracker.start(frames[0], mask=masks[0])
    assert isinstance(state.result, ObjectMask) and iou(state.result.mask, masks[0]) > 0.7
    assert 0.9 < state.result.score <= 1.0
    tracker.attach(1, state)
    seen = {0: state.result.mask}
    for f in frames[1:12]:
        if f.seq == 4:
            ys, xs = np.nonzero(masks[4])
            other = tracker.start(f, points=np.array([[20.0, 20.0]]), labels=np.array([1]))
            tracker.attach(2, other)
            with pytest.raises(TrackerError, match="max_objects"):
                tracker.attach(3, tracker.start(f, mask=masks[4]))
            with pytest.raises(TrackerError, match="already live"):
                tracker.attach(5, other)
        out = tracker.step(f)
        assert sorted(out) == ([1] if f.seq < 4 or f.seq >= 8 else [1, 2])
        seen[f.seq] = out[1].mask
        if f.seq == 7:
            tracker.remove(2)
            tracker.remove(99)  # unknown ids are ignored
    solo = make(checkpoint)
    solo.attach(1, solo.start(frames[0], mask=masks[0]))
    alone = {0: seen[0], **{f.seq: solo.step(f)[1].mask for f in frames[1:12]}}
    assert all(np.array_equal(seen[s], alone[s]) for s in range(12))
    assert any(not np.array_equal(seen[0], seen[s]) for s in range(1, 12))  # the masks move
    tracker.reset()
    assert tracker.object_ids == [] and tracker.step(frames[12]) == {}
    with pytest.raises(TrackerError, match="this tracker"):
        solo.attach(2, state)
    with pytest.raises(TrackerError, match="seeded on"):
        solo.advance(solo.start(frames[0], mask=masks[0]), Frame(1, 1, frames[1].image[:120]))
    tracker.close()


def test_catch_up_in_a_worker_thread_lands_on_the_live_frame(checkpoint, dog):
    frames, masks = dog
    ys, xs = np.nonzero(masks[4])
    point, label = np.array([[xs.mean(), ys.mean()]]), np.array([1])
    robot = make(checkpoint)
    robot.attach(1, robot.start(frames[0], mask=masks[0]))
    live = {f.seq: robot.step(f)[1].mask for f in frames[1:8]}
    state = robot.start(frames[4], points=point, labels=label)
    go = threading.Barrier(2)

    def catch_up():
        torch.set_num_threads(1)
        go.wait()
        for f in frames[5:11]:
            robot.advance(state, f)

    worker = threading.Thread(target=catch_up)
    worker.start()
    go.wait()
    for f in frames[8:12]:
        live[f.seq] = robot.step(f)[1].mask
    worker.join()
    landed = robot.advance(state, frames[11])
    robot.attach(2, state)
    after = {f.seq: robot.step(f) for f in frames[12:15]}

    reference = make(checkpoint)
    reference.attach(1, reference.start(frames[0], mask=masks[0]))
    ref = {f.seq: reference.step(f) for f in frames[1:5]}
    reference.attach(2, reference.start(frames[4], points=point, labels=label))
    ref.update({f.seq: reference.step(f) for f in frames[5:15]})
    assert np.array_equal(landed.mask, ref[11][2].mask) and landed.score == ref[11][2].score
    for s in range(12, 15):
        assert np.array_equal(after[s][2].mask, ref[s][2].mask) and np.array_equal(after[s][1].mask, ref[s][1].mask)
    assert all(np.array_equal(live[s], ref[s][1].mask) for s in range(1, 12))


def test_memory_is_pruned_to_what_sam2_reads_and_masks_do_not_change(checkpoint, dog):
    frames, masks = dog
    video = frames + [Frame(20 + f.seq, 0, f.image) for f in frames]  # 40 frames
    pruned, full = make(checkpoint), make(checkpoint, prune_memory=False)
    sizes = {}
    for tracker in (pruned, full):
        tracker.attach(1, tracker.start(video[0], mask=masks[0]))
    for f in video[1:]:
        a, b = pruned.step(f)[1], full.step(f)[1]
        assert np.array_equal(a.mask, b.mask) and a.score == b.score
        if f.seq in (20, 39):
            sizes[f.seq] = (pruned.memory_bytes(), full.memory_bytes())
    memory = pruned._live[1].memory
    # num_maskmem 7 and 16 object pointers: 15 frames kept, 6 with memory features.
    assert len(memory["non_cond_frame_outputs"]) == 15 and len(memory["cond_frame_outputs"]) == 1
    assert sum("maskmem_features" in o for o in memory["non_cond_frame_outputs"].values()) == 6
    assert sizes[20][0] == sizes[39][0]  # flat
    # Unpruned, every frame adds at least its memory features (64 channels, bfloat16).
    assert sizes[39][1] - sizes[20][1] >= 19 * 64 * (SIZE // 16) ** 2 * 2


# ---- conversion ------------------------------------------------------------------------------------
def test_conversion_round_trips_both_ways(tmp_path, checkpoint):
    folder = sam2_convert.meta_to_hf(checkpoint, checkpoint.with_suffix(".yaml"), tmp_path / "hf")
    back, back_yaml = sam2_convert.hf_to_meta(folder, tmp_path / "back.pt")
    original = torch.load(checkpoint, weights_only=True)["model"]
    again = torch.load(back, weights_only=True)["model"]
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
    assert sam2_convert.load_meta_config(back_yaml) == sam2_convert.load_meta_config(checkpoint.with_suffix(".yaml"))
    # A transformers model (made in transformers' layout) reaches Meta's and loads in the tracker.
    config = sam2_convert.meta_compatible(tiny_config(SIZE))
    model = random_sam2(config, seed=3)
    with torch.no_grad():  # one Fourier matrix in Meta's layout; converted checkpoints have them equal
        model.shared_image_embedding.positional_embedding.copy_(model.prompt_encoder.shared_embedding.positional_embedding)
    model.save_pretrained(tmp_path / "hf2")
    pt, _ = sam2_convert.hf_to_meta(tmp_path / "hf2", tmp_path / "from_hf.pt")
    meta = make(pt)
    converted = sam2_convert.meta_to_hf_state_dict(meta.model.state_dict())
    reference = model.state_dict()
    assert converted.keys() == reference.keys() and all(torch.equal(converted[k], reference[k]) for k in reference)
    with pytest.raises(ValueError, match="mask decoder"):
        sam2_convert.meta_config_from_hf(tiny_config(SIZE))  # the project's tiny widths Meta cannot build


@pytest.mark.parametrize("name,packaged", [("sam2.1-tiny", "tiny"), ("sam2.1-large", "large")])
def test_published_configs_and_weight_names_map_onto_each_other(name, packaged):
    from transformers import Sam2VideoModel

    from steerseg_ros.tracking.sam2_meta import CONFIG_ALIASES

    meta_config = sam2_convert.load_meta_config(CONFIG_ALIASES[packaged])
    converted = sam2_convert.hf_config_from_meta(meta_config)
    assert converted.to_dict() == real_config(name).to_dict()  # the project's own SAM2.1 shapes
    with torch.device("meta"):  # shapes only, no memory
        hf = Sam2VideoModel(converted)
        meta = sam2_convert.build_meta_model(meta_config, device="meta")
    mapped = sam2_convert.meta_to_hf_state_dict(meta.state_dict())
    expected = hf.state_dict()
    assert mapped.keys() == expected.keys()
    assert all(mapped[k].shape == expected[k].shape for k in expected)
    assert sam2_convert.meta_config_from_hf(converted)["model"]["image_encoder"]["trunk"]["stages"] == \
        meta_config["model"]["image_encoder"]["trunk"]["stages"]


def test_benchmark_reports_both_backends_side_by_side():
    from steerseg_bench.sam2_meta import bench_backends

    figures = bench_backends("tiny", frames=2, objects=(1, 2), memory_frames=30, frame_size=(96, 128), device="cpu")
    for name in ("sam2", "sam2_meta"):
        assert sorted(figures[name]["step_ms"]) == [1, 2] and all(v > 0 for v in figures[name]["step_ms"].values())
        assert figures[name]["memory"]["tracker_bytes_per_1000_frames"] == 0  # pruned: flat
    assert sorted(figures["meta_over_transformers"]) == ["step_ms.1", "step_ms.2"]
    assert "CUDA" in figures["sam2_meta_compiled"]
