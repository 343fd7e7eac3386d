"""The SAM2 tracker on tiny random checkpoints saved and reloaded as users load real ones:
loading and its errors, the Tracker contract, objects added, replaced and removed mid-stream
without disturbing the others, and catch-up in a worker thread landing on the live frame.

Random weights make meaningless masks, so these tests check behaviour: shapes, ids, which
computations must give identical masks, and what must differ."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from conftest import load_davis  # noqa: E402
from steerseg_ros.streaming import backends  # noqa: E402
from steerseg_ros.frame import Frame  # noqa: E402
from steerseg_ros.grounding.base import ModelUnavailableError  # noqa: E402
from steerseg_ros.tracking.base import MaskCandidate, ObjectMask, TrackerError  # noqa: E402
from steerseg_ros.tracking.sam2 import Sam2Tracker, Sam2TrackerConfig  # noqa: E402
from steerseg_testing.tiny_sam2 import random_sam2, save_random_sam2, tiny_config  # noqa: E402


pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_torch_thread")]


# 128 px: masks come out of a 32x32 grid, fine enough for the judo prompts' small objects.
SIZE = 128


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_sam2(tmp_path_factory.mktemp("sam2") / "tiny", tiny_config(SIZE))


def make(checkpoint, **options) -> Sam2Tracker:
    return backends.make_tracker("sam2", {"model": str(checkpoint), "local_files_only": True, **options})


def as_frames(images, start: int = 0) -> list[Frame]:
    return [Frame(start + i, (start + i) * 33_333_333, image) for i, image in enumerate(images)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


@pytest.fixture(scope="module")
def dog(davis_root):
    _, images, masks = load_davis(davis_root, "dog", count=20)
    return as_frames(images), masks


# ---- loading ---------------------------------------------------------------------------------
def test_saved_checkpoint_reloads_through_the_registry(checkpoint):
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json"):
        assert (checkpoint / name).is_file(), name
    tracker = make(checkpoint)
    assert isinstance(tracker, Sam2Tracker) and tracker.image_size == SIZE
    # Every weight, the hand-set initial values included, survives save and reload.
    original = random_sam2(tiny_config(SIZE)).state_dict()
    reloaded = tracker.model.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) for k in original)


def test_missing_weights_error_names_the_model_and_how_to_get_it(tmp_path):
    try:
        make("facebook/sam2.1-hiera-small")
    except ModelUnavailableError as e:
        assert "facebook/sam2.1-hiera-small" in str(e) and "hf download" in str(e)
    else:
        pytest.skip("facebook/sam2.1-hiera-small is in this machine's Hugging Face cache")
    with pytest.raises(ModelUnavailableError, match="sam2.1-hiera-large"):
        make("large")  # short names resolve to the hub ids
    empty = tmp_path / "not_a_checkpoint"
    empty.mkdir()
    with pytest.raises(ModelUnavailableError, match="config.json") as e:
        make(empty)
    assert str(empty) in str(e.value)


def test_config_is_declarable_as_ros_parameters_and_validated(checkpoint):
    for f in dataclasses.fields(Sam2TrackerConfig):
        assert f.metadata.get("help"), f.name
        assert f.type in ("str", "int", "float", "bool"), (f.name, f.type)
    for bad in ({"dtype": "float64"}, {"encoder": "onnx"}, {"encoder": "tvm", "encoder_file": "x"},
                {"max_objects": 0}, {"feature_cache_frames": 0}, {"device": "gpu0"}, {"model": " "}):
        with pytest.raises(ValueError):
            backends.make_config("tracker", "sam2", bad)
    with pytest.raises(ValueError, match="no option"):
        make(checkpoint, memory=3)


# ---- the Tracker contract -------------------------------------------------------------------------
def test_segment_gives_ranked_single_frame_masks_and_keeps_no_state(checkpoint, dog):
    tracker = make(checkpoint)
    frames, masks = dog
    frame = frames[0]
    ys, xs = np.nonzero(masks[0])
    point = np.array([[xs.mean(), ys.mean()]])
    candidates = tracker.segment(frame, point, np.array([1]))
    assert len(candidates) == 3  # SAM2's multimask output for one point
    assert all(isinstance(c, MaskCandidate) and c.mask.shape == (480, 854) and c.mask.dtype == bool
               for c in candidates)
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert len({c.mask.tobytes() for c in candidates}) == 3
    again = tracker.segment(frame, point, np.array([1]))
    assert [c.score for c in again] == scores and all(np.array_equal(a.mask, b.mask) for a, b in zip(again, candidates))
    two = tracker.segment(frame, np.array([[xs.mean(), ys.mean()], [10.0, 10.0]]), np.array([1, 0]))
    assert len(two) >= 1 and two[0].mask.shape == (480, 854)
    other = tracker.segment(frame, np.array([[50.0, 400.0]]), np.array([1]))
    assert not np.array_equal(other[0].mask, candidates[0].mask)  # the prompt matters
    assert tracker.object_ids == []
    for points, labels in ((np.array([1.0, 2.0]), np.array([1])), (point, np.array([1, 1])),
                           (point, np.array([5])), (np.array([[np.nan, 1.0]]), np.array([1])),
                           (np.zeros((0, 2)), np.zeros(0))):
        with pytest.raises(TrackerError):
            tracker.segment(frame, points, labels)


def test_start_advance_attach_step_remove(checkpoint, dog):
    tracker = make(checkpoint)
    frames, masks = dog
    state = tracker.start(frames[0], mask=masks[0])
    assert state.seq == 0 and isinstance(state.result, ObjectMask)
    assert state.result.mask.shape == masks[0].shape and state.result.mask.dtype == bool
    # A mask prompt is SAM2's output on its frame (through the 32x32 low-resolution grid).
    assert iou(state.result.mask, masks[0]) > 0.8
    assert 0.9 < state.result.score <= 1.0
    result = tracker.advance(state, frames[1])
    assert state.seq == 1 and state.result is result and 0.0 <= result.score <= 1.0
    with pytest.raises(TrackerError, match="already on frame"):
        tracker.advance(state, frames[1])
    ys, xs = np.nonzero(masks[1])
    by_points = tracker.start(frames[1], points=np.array([[xs.mean(), ys.mean()]]), labels=np.array([1]))
    assert by_points.result.mask.shape == masks[1].shape
    tracker.attach(7, state)
    tracker.attach(3, by_points)
    with pytest.raises(TrackerError, match="already live"):
        tracker.attach(4, state)
    assert tracker.object_ids == [3, 7]
    out = tracker.step(frames[2])
    assert sorted(out) == [3, 7] and all(r.mask.shape == masks[2].shape for r in out.values())
    tracker.remove(3)
    tracker.remove(99)  # unknown ids are ignored
    assert list(tracker.step(frames[3])) == [7]
    tracker.reset()
    assert tracker.object_ids == [] and tracker.step(frames[4]) == {}
    tracker.close()


def test_detached_objects_follow_keyframes_forward_and_backward(checkpoint, dog):
    # Tracklets are propagated over sparse keyframes, forward then backward from their seed.
    tracker = make(checkpoint)
    frames, masks = dog
    keyframes = frames[::4]
    forward, backward = tracker.start(keyframes[2], mask=masks[8]), tracker.start(keyframes[2], mask=masks[8])
    for k in (3, 4):
        tracker.advance(forward, keyframes[k])
    for k in (1, 0):
        result = tracker.advance(backward, keyframes[k])
        assert backward.seq == keyframes[k].seq and result.mask.shape == masks[0].shape
    assert forward.seq == 16 and backward.seq == 0
    # Skipped frames are not gaps in SAM2's memory: the previous frame fed is the latest memory,
    # so the keyframe walk gives what a stream of just those frames gives.
    stream = make(checkpoint)
    renumbered = [Frame(i, i, f.image) for i, f in enumerate(keyframes[2::-1])]
    state = stream.start(renumbered[0], mask=masks[8])
    for f in renumbered[1:]:
        stream.advance(state, f)
    assert np.array_equal(state.result.mask, backward.result.mask)


def test_dtype_is_a_config_field(checkpoint, dog):
    frames, masks = dog
    tracker = make(checkpoint, dtype="bfloat16", device="cpu")
    assert next(tracker.model.parameters()).dtype == torch.bfloat16
    tracker.attach(1, tracker.start(frames[0], mask=masks[0]))
    out = tracker.step(frames[1])[1]
    assert out.mask.shape == masks[1].shape and 0.0 <= out.score <= 1.0
    assert tracker.segment(frames[1], np.array([[400.0, 200.0]]), np.array([1]))[0].mask.any()


# ---- pixel values ----------------------------------------------------------------------------
PROCESSOR_RECORD = Path(__file__).resolve().parents[1] / "data" / "sam2_processor_davis16.json"


def _nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resampling by index arithmetic: the same bytes on every machine."""
    return image[(np.arange(height) * image.shape[0]) // height][:, (np.arange(width) * image.shape[1]) // width]


def _sha(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_pixel_values_equal_transformers_processors_on_davis_frames(checkpoint, davis_root):
    """The tracker's pixel values are bit for bit those of transformers' own SAM2 processors.
    The processors need torchvision, which is not installable here, so their outputs were
    recorded once with real torchvision code (test/data/sam2_processor_davis16.json says how):
    DAVIS frames at six sizes (down, up, square at the model size, portrait), through the
    processor settings the tiny checkpoint saves. (x/255 - mean)/std instead of the processor's
    (x - 255 mean)/(255 std) changes over half of the values by one float32 rounding step."""
    record = json.loads(PROCESSOR_RECORD.read_text())
    tracker = make(checkpoint, device="cpu")
    assert tracker.image_size == record["image_size"]
    kernel = "uint8" if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else "float"
    checked = 0
    for key, digest in record["frames"].items():
        seq, name = key.split("/")
        names, images, _ = load_davis(davis_root, seq)
        frame = images[names.index(name)]
        assert _sha(frame) == digest, f"{key} decodes differently from when the record was made"
        for case, expected in record["pixel_values"][kernel].items():
            if not case.startswith(key + "@"):
                continue
            height, width = map(int, case.split("@")[1].split("x"))
            with torch.inference_mode():
                pixels = tracker._preprocess(_nearest(frame, height, width))
            assert pixels.dtype == torch.float32 and pixels.shape == (1, 3, 128, 128)
            assert _sha(pixels.numpy()) == expected, f"{case}: pixel values differ from the processor's"
            checked += 1
    assert checked == 12


def test_pixel_values_equal_the_processor_where_torchvision_works(checkpoint, davis_root):
    """The same check live, on machines where transformers' processors can run (torchvision
    installed: users' GPU machines); skipped here."""
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # missing, or a build that does not load with this torch
        pytest.skip(f"transformers' SAM2 processors need torchvision: {exc}")
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(checkpoint))
    tracker = make(checkpoint, device="cpu")
    _, images, _ = load_davis(davis_root, "dog", count=1)
    for height, width in [(480, 854), (97, 131), (600, 400)]:
        image = _nearest(images[0], height, width)
        expected = processor.video_processor(videos=[image[None]], return_tensors="pt")["pixel_values_videos"][0]
        with torch.inference_mode():
            assert torch.equal(tracker._preprocess(image), expected)


def test_read_only_frames_are_taken_without_a_warning(checkpoint, dog):
    """Frames that are read-only NumPy views (a ROS message buffer, np.frombuffer) are used as
    they are: no "not writable" warning, the same masks as from a writable copy."""
    frames, masks = dog
    image = frames[0].image.copy()
    image.setflags(write=False)
    tracker = make(checkpoint)
    ys, xs = np.nonzero(masks[0])
    point, label = np.array([[xs.mean(), ys.mean()]]), np.array([1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_only = tracker.segment(Frame(100, 0, image), point, label)
    assert not [w for w in caught if "writable" in str(w.message)]
    writable = make(checkpoint).segment(Frame(100, 0, frames[0].image.copy()), point, label)
    assert np.array_equal(read_only[0].mask, writable[0].mask)


def test_bad_prompts_and_frames_are_clear_errors(checkpoint, dog):
    tracker = make(checkpoint, max_objects=1)
    frames, masks = dog
    with pytest.raises(TrackerError, match="either points"):
        tracker.start(frames[0])
    with pytest.raises(TrackerError, match="either points"):
        tracker.start(frames[0], mask=masks[0], points=np.array([[1.0, 1.0]]), labels=np.array([1]))
    with pytest.raises(TrackerError, match="labels"):
        tracker.start(frames[0], points=np.array([[1.0, 1.0]]))
    with pytest.raises(TrackerError, match="empty"):
        tracker.start(frames[0], mask=np.zeros_like(masks[0]))
    with pytest.raises(TrackerError, match="seed mask is"):
        tracker.start(frames[0], mask=masks[0][:, :-1])
    with pytest.raises(TrackerError, match="uint8"):
        tracker.start(Frame(0, 0, frames[0].image.astype(np.float32)), mask=masks[0])
    state = tracker.start(frames[0], mask=masks[0])
    with pytest.raises(TrackerError, match="seeded on"):
        tracker.advance(state, Frame(1, 1, frames[1].image[:240]))
    with pytest.raises(TrackerError, match="this tracker"):
        make(checkpoint).attach(1, state)
    tracker.attach(1, state)
    with pytest.raises(TrackerError, match="max_objects"):
        tracker.attach(2, tracker.start(frames[0], mask=masks[0]))
    tracker.attach(1, tracker.start(frames[0], mask=masks[0]))  # replacing is not adding


def test_encoder_runs_once_per_frame_for_all_objects(checkpoint, dog):
    tracker = make(checkpoint)
    frames, masks = dog
    for k in range(3):
        tracker.attach(k + 1, tracker.start(frames[0], mask=np.roll(masks[0], 60 * k, axis=1)))
    assert tracker.stats["encoder_runs"] == 1  # the seed frame, encoded once for three objects
    for f in frames[1:6]:
        tracker.step(f)
    assert tracker.stats["encoder_runs"] == 6 and tracker.stats["object_steps"] == 3 + 15
    ys, xs = np.nonzero(masks[6])
    for x, y in zip(xs[::500][:4], ys[::500][:4]):  # a keyframe prompted several times
        tracker.segment(frames[6], np.array([[x, y]]), np.array([1]))
    assert tracker.stats["encoder_runs"] == 7


def test_confidence_comes_from_sams_object_score(tmp_path, checkpoint, dog):
    frames, masks = dog
    present = make(checkpoint)
    present.attach(1, present.start(frames[0], mask=masks[0]))
    # A checkpoint whose object-score head says "no object" on every frame it predicts.
    model = random_sam2(tiny_config(SIZE))
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(-4.0)
    absent_dir = save_random_sam2(tmp_path / "absent", tiny_config(SIZE))
    model.save_pretrained(absent_dir)
    absent = make(absent_dir)
    absent.attach(1, absent.start(frames[0], mask=masks[0]))
    for f in frames[1:4]:
        seen, gone = present.step(f)[1], absent.step(f)[1]
        assert 0.5 < seen.score <= 1.0 and seen.mask.any()
        assert 0.0 <= gone.score < 0.5 and not gone.mask.any()


# ---- objects added, replaced and removed mid-stream ---------------------------------------------------
def _judo(judo_root):
    names = sorted(p.stem for p in (judo_root / "JPEGImages").glob("*.jpg"))
    frames = as_frames([np.array(Image.open(judo_root / "JPEGImages" / f"{n}.jpg").convert("RGB")) for n in names])
    prompts = {}
    for path in sorted((judo_root / "Annotations").glob("*.png")):
        labels = np.array(Image.open(path))  # palette indices are the object ids
        frame = frames[int(path.stem)]
        ids = [int(i) for i in np.unique(labels) if i]
        assert len(ids) == 1  # each annotation adds one more object
        prompts[frame.seq] = (ids[0], labels == ids[0])
    return frames, prompts


def _fit(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    h, w = min(shape[0], mask.shape[0]), min(shape[1], mask.shape[1])
    out[:h, :w] = mask[:h, :w]
    return out


def test_objects_added_and_removed_mid_stream_leave_the_others_alone(checkpoint, judo_root):
    frames, prompts = _judo(judo_root)
    assert sorted(prompts) == [0, 5, 8, 13] and [prompts[s][0] for s in sorted(prompts)] == [1, 2, 3, 4]
    shape = frames[0].image.shape[:2]
    tracker = make(checkpoint)
    live, seen = [], {}
    for frame in frames:
        out = tracker.step(frame)
        assert sorted(out) == live
        for obj_id, r in out.items():
            seen[obj_id, frame.seq] = r.mask
        if frame.seq in prompts:
            obj_id, mask = prompts[frame.seq]
            if mask.shape != shape:  # one of the real annotations is a column short
                with pytest.raises(TrackerError, match="seed mask is"):
                    tracker.start(frame, mask=mask)
                mask = _fit(mask, shape)
            state = tracker.start(frame, mask=mask)
            assert iou(state.result.mask, mask) > 0.6
            tracker.attach(obj_id, state)
            seen[obj_id, frame.seq] = state.result.mask
            live = sorted(live + [obj_id])
        if frame.seq == 10:
            tracker.remove(2)
            live.remove(2)
        if frame.seq == 11:
            # A re-grounding confirms object 3 and refreshes its memory with a new prompt.
            refreshed = tracker.start(frame, mask=seen[3, 11])
            tracker.attach(3, refreshed)
    assert tracker.object_ids == [1, 3, 4]

    def alone(seed_seq: int, mask: np.ndarray, until: int = 15) -> dict[int, np.ndarray]:
        solo = make(checkpoint)
        state = solo.start(frames[seed_seq], mask=mask)
        solo.attach(1, state)
        masks = {seed_seq: state.result.mask}
        for f in frames[seed_seq + 1: until + 1]:
            masks[f.seq] = solo.step(f)[1].mask
        return masks

    # Object 1 saw objects 2, 3 and 4 come and 2 go; its masks are those it gets alone.
    solo1 = alone(0, prompts[0][1])
    assert all(np.array_equal(seen[1, s], solo1[s]) for s in range(16))
    solo3 = alone(8, prompts[8][1], until=11)
    assert all(np.array_equal(seen[3, s], solo3[s]) for s in range(8, 11))
    # After its refresh, object 3 continues from the new prompt alone.
    refreshed3 = alone(11, seen[3, 11])
    assert all(np.array_equal(seen[3, s], refreshed3[s]) for s in range(12, 16))
    # The comparisons are not vacuous: objects, and object 3 before and after its refresh, differ.
    assert any(iou(seen[1, s], seen[3, s]) < 0.9 for s in range(9, 16))
    assert any(not np.array_equal(refreshed3[s], solo_s) for s, solo_s in alone(8, prompts[8][1]).items() if s > 11)


# ---- catch-up -------------------------------------------------------------------------------------------
def test_catch_up_in_a_worker_thread_lands_on_the_live_frame(checkpoint, dog):
    frames, masks = dog
    ys, xs = np.nonzero(masks[4])
    point, label = np.array([[xs.mean(), ys.mean()]]), np.array([1])

    # The robot: object 1 live; a grounding on keyframe 4 finishes while frame 9 is live. Its
    # object catches up in a worker thread while the camera thread steps frames 10..15, then
    # the last frames under the pipeline's lock, and goes live on frame 15.
    robot = make(checkpoint)
    robot.attach(1, robot.start(frames[0], mask=masks[0]))
    live1 = {f.seq: robot.step(f)[1].mask for f in frames[1:10]}
    start = threading.Barrier(2)
    state = robot.start(frames[4], points=point, labels=label)

    def catch_up():
        torch.set_num_threads(1)  # OpenMP's thread count is per thread: same arithmetic as the reference
        start.wait()
        for f in frames[5:13]:
            robot.advance(state, f)

    worker = threading.Thread(target=catch_up)
    worker.start()
    start.wait()
    for f in frames[10:16]:
        live1[f.seq] = robot.step(f)[1].mask
    worker.join()
    for f in frames[13:16]:
        robot.advance(state, f)
    assert state.seq == 15
    landed = state.result
    robot.attach(2, state)
    after = {f.seq: robot.step(f) for f in frames[16:20]}

    # The reference: the same object stepped live from its keyframe on.
    reference = make(checkpoint)
    reference.attach(1, reference.start(frames[0], mask=masks[0]))
    ref = {f.seq: reference.step(f) for f in frames[1:5]}
    reference.attach(2, reference.start(frames[4], points=point, labels=label))
    ref.update({f.seq: reference.step(f) for f in frames[5:20]})

    assert np.array_equal(landed.mask, ref[15][2].mask)
    assert landed.score == ref[15][2].score
    for s in range(16, 20):
        assert np.array_equal(after[s][2].mask, ref[s][2].mask)
        assert np.array_equal(after[s][1].mask, ref[s][1].mask)
    assert all(np.array_equal(live1[s], ref[s][1].mask) for s in range(1, 16))
    assert any(iou(ref[s][1].mask, ref[s][2].mask) < 0.9 for s in range(5, 20))
