"""Dataset readers: each documented layout built as a small tree in a temp folder (frames whose
pixels say which frame they are, masks with known objects), plus the real davis16 folder and the
real Ref-YouTube-VOS valid expression file."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import DATA, load_davis
from steerseg_ros.offline.datasets import (DatasetError, RefYouTubeVOSDataset, open_dataset, read_label_png)
from steerseg_ros.offline.evaluation import davis_palette

H, W = 24, 32


def frame_image(k):
    """A frame whose red channel is its index (JPEG keeps a flat colour within a level or two)."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = 10 * k
    img[..., 1] = 128
    return img


def write_frames(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(names):
        cv2.imwrite(str(folder / f"{n}.jpg"), cv2.cvtColor(frame_image(k), cv2.COLOR_RGB2BGR))


def box(k, obj):
    """Object `obj`'s mask on frame k: a 4x4 box that moves right one pixel a frame."""
    m = np.zeros((H, W), bool)
    y = 2 + 8 * (obj - 1)
    m[y:y + 4, 2 + k:6 + k] = True
    return m


def labels(k, objects):
    out = np.zeros((H, W), np.uint8)
    for o in objects:
        out[box(k, o)] = o
    return out


def write_palette(path, lab):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(lab, mode="P")
    im.putpalette(davis_palette().ravel().tolist())
    im.save(path)


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


NAMES = [f"{5 * k:05d}" for k in range(4)]


def red_level(image):
    return int(round(float(image[..., 0].mean()) / 10))


# ---- DAVIS ---------------------------------------------------------------------------------
def test_davis_2017_palette_masks_give_one_semi_supervised_sample_per_listed_sequence(tmp_path):
    for seq in ("dogs", "cats"):
        write_frames(tmp_path / "JPEGImages/480p" / seq, NAMES)
        for k, n in enumerate(NAMES):
            lab = labels(k, [1, 2])
            lab[0, :] = 255  # void border, as DAVIS 2017 marks it: background for scoring
            write_palette(tmp_path / "Annotations/480p" / seq / f"{n}.png", lab)
    (tmp_path / "ImageSets/2017").mkdir(parents=True)
    (tmp_path / "ImageSets/2017/val.txt").write_text("dogs\n")
    ds = open_dataset("davis17", tmp_path)
    assert ds.videos() == ["dogs"]  # the ImageSets listing, not every folder
    (s,) = list(ds.samples())
    assert s.semi_supervised and s.command is None and s.object_ids == [1, 2]
    assert s.frame_names == NAMES and len(s) == 4
    assert red_level(s.image(2)) == 2
    lab = s.labels(3)
    assert lab[0].max() == 0  # void is background
    assert np.array_equal(lab == 2, box(3, 2)) and np.array_equal(lab == 1, box(3, 1))
    with pytest.raises(DatasetError, match="unknown video"):
        list(ds.samples(["horses"]))


def test_real_davis16_as_semi_supervised_and_with_the_projects_expressions(davis_root, davis_expressions):
    semi = open_dataset("davis16", davis_root)
    samples = list(semi.samples())
    assert len(samples) == 10 and all(s.object_ids == [1] and s.semi_supervised for s in samples)
    blackswan = samples[0]
    assert blackswan.video == "blackswan" and len(blackswan) == 50
    names, images, masks = load_davis(davis_root, "blackswan", count=3, step=20)
    i = blackswan.frame_names.index(names[2])
    assert np.array_equal(blackswan.image(i), images[2])
    assert np.array_equal(blackswan.labels(i) == 1, masks[2])

    refer = open_dataset("expressions", davis_root)
    samples = list(refer.samples())
    assert len(samples) == 2 * len(davis_expressions) == 20
    assert sorted({s.kind for s in samples}) == ["reasoning", "referring"]
    assert sum(s.kind == "reasoning" for s in samples) == 10
    s = next(s for s in samples if s.video == "car-shadow" and s.expression_id == "1")
    assert s.command == davis_expressions["car-shadow"]["expressions"][1]["exp"]
    assert s.target(0).sum() == (s.labels(0) == 1).sum() > 0


# ---- Ref-DAVIS17 and Ref-YouTube-VOS ---------------------------------------------------------
def test_ref_davis17_in_referformers_layout(tmp_path):
    write_frames(tmp_path / "valid/JPEGImages/bike", NAMES)
    for k, n in enumerate(NAMES):
        write_palette(tmp_path / "valid/Annotations/bike" / f"{n}.png", labels(k, [1, 2]))
    exps = {str(i): {"exp": f"expression {i}", "obj_id": str(1 + i // 4)} for i in range(8)}
    write_json(tmp_path / "meta_expressions/valid/meta_expressions.json",
               {"videos": {"bike": {"expressions": exps, "frames": NAMES}}})
    samples = list(open_dataset("ref-davis17", tmp_path).samples())
    assert [s.expression_id for s in samples] == [str(i) for i in range(8)]
    s5 = samples[5]
    assert s5.command == "expression 5" and s5.object_ids == [2]
    assert np.array_equal(s5.target(1), box(1, 2))
    with pytest.raises(DatasetError, match="ground truth"):
        open_dataset("ref-davis17", tmp_path, split="test",
                     meta=tmp_path / "meta_expressions/valid/meta_expressions.json")


def test_ref_youtube_vos_competition_layout_with_train_ground_truth(tmp_path):
    write_frames(tmp_path / "train/JPEGImages/v1", NAMES)
    for k, n in enumerate(NAMES):
        write_palette(tmp_path / "train/Annotations/v1" / f"{n}.png", labels(k, [1, 2]))
    write_json(tmp_path / "meta_expressions/train/meta_expressions.json", {"videos": {"v1": {
        "expressions": {"0": {"exp": "a cat", "obj_id": "2"}, "1": {"exp": "a dog", "obj_id": "1"}},
        "frames": NAMES}}})
    ds = open_dataset("ref-youtube-vos", tmp_path, split="train")
    assert ds.has_ground_truth
    s0, s1 = ds.samples()
    assert (s0.command, s0.object_ids, s1.object_ids) == ("a cat", [2], [1])
    assert np.array_equal(s0.target(2), box(2, 2))
    assert red_level(s1.image(3)) == 3


def test_ref_youtube_vos_valid_leaves_out_the_test_videos_and_has_no_ground_truth(tmp_path):
    videos = {v: {"expressions": {"0": {"exp": f"the {v}"}}, "frames": NAMES} for v in ("a", "b", "c")}
    write_json(tmp_path / "meta_expressions/valid/meta_expressions.json", {"videos": videos})
    write_json(tmp_path / "meta_expressions/test/meta_expressions.json", {"videos": {"b": videos["b"]}})
    ds = open_dataset("ref-youtube-vos", tmp_path)
    assert ds.videos() == ["a", "c"] and not ds.has_ground_truth and ds.submission == "ref-youtube-vos"
    assert all(not s.has_ground_truth and s.labels(0) is None for s in ds.samples())


def test_the_real_ref_youtube_vos_valid_file_in_the_objects_layout(tmp_path):
    meta = DATA / "ref_youtube_vos" / "meta_expressions_valid.json"
    if not meta.exists():
        pytest.skip(f"test data not found at {meta}")
    ds = RefYouTubeVOSDataset(tmp_path, meta=meta)
    assert len(ds.videos()) == 507
    kinds = {}
    for s in ds.samples():
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
        assert s.command and not s.has_ground_truth and len(s.object_ids) == 1
    assert kinds == {"full-video": 2096, "first-frame": 1933}
    assert sum(kinds.values()) == 4029
    first = next(ds.samples(["0062f687f1"]))
    assert first.command == "a dog is with its puppies on the cloth" and first.expression_id == "0"
    assert first.frame_names[:2] == ["00000", "00005"]
    assert str(first.frame_paths[0]).endswith("valid/JPEGImages/0062f687f1/00000.jpg")


def test_objects_layout_numbers_full_video_expressions_first_and_unions_the_frames(tmp_path):
    write_json(tmp_path / "meta_expressions_valid.json", {"videos": {"v": {"objects": {
        "2": {"category": "cat", "expressions": ["cat a"], "expressions_first_frame": ["cat b"], "frames": ["00010"]},
        "1": {"category": "dog", "expressions": ["dog a", "dog b"], "expressions_first_frame": [],
              "frames": ["00000", "00005"]}}}}})
    samples = list(open_dataset("ref-youtube-vos", tmp_path).samples())
    assert [(s.expression_id, s.command, s.kind, s.object_ids) for s in samples] == [
        ("0", "dog a", "full-video", [1]), ("1", "dog b", "full-video", [1]),
        ("2", "cat a", "full-video", [2]), ("3", "cat b", "first-frame", [2])]
    assert samples[0].frame_names == ["00000", "00005", "00010"]


# ---- MeViS and ReVOS (RLE masks) ---------------------------------------------------------------
def build_mevis(root, split, with_masks):
    write_frames(root / split / "JPEGImages/vid", NAMES)
    exps = {"0": {"exp": "both boxes", "obj_id": [0, 1], "anno_id": [7, 8]},
            "1": {"exp": "the lower box", "obj_id": [1], "anno_id": [8]}}
    write_json(root / split / "meta_expressions.json", {"videos": {"vid": {"expressions": exps, "frames": NAMES}}})
    if with_masks:
        # Object 0 (annotation 7) leaves after frame 1: null entries, as in MeViS.
        write_json(root / split / "mask_dict.json", {
            "7": [rle(box(k, 1)) if k < 2 else None for k in range(4)],
            "8": [rle(box(k, 2)) for k in range(4)],
            "99": [None] * 4})


def test_mevis_targets_are_the_union_of_the_expressions_objects(tmp_path):
    build_mevis(tmp_path, "valid_u", True)
    ds = open_dataset("mevis", tmp_path)
    both, lower = ds.samples()
    assert both.command == "both boxes" and both.kind == "referring" and both.has_ground_truth
    assert np.array_equal(both.target(0), box(0, 1) | box(0, 2))
    assert np.array_equal(both.target(3), box(3, 2))  # the first object is gone
    assert np.array_equal(lower.target(2), box(2, 2))
    assert "99" not in ds._rle().masks  # annotations of other splits are dropped after loading


def test_mevis_valid_has_no_ground_truth_and_submits_in_mevis_layout(tmp_path):
    build_mevis(tmp_path, "valid", False)
    ds = open_dataset("mevis", tmp_path, split="valid")
    assert not ds.has_ground_truth and ds.submission == "mevis"
    assert [s.labels(0) for s in ds.samples()] == [None, None]


def test_revos_kinds_from_type_id_and_nested_video_names(tmp_path):
    video = "LVVIS/train/00001"
    write_frames(tmp_path / "JPEGImages" / video, NAMES)
    write_json(tmp_path / "meta_expressions_valid_.json", {"videos": {video: {"frames": NAMES, "expressions": {
        "0": {"exp": "the box", "obj_id": [3], "anno_id": [11], "type_id": 0},
        "1": {"exp": "what could be picked up?", "obj_id": [3], "anno_id": [11], "type_id": 1}}}}})
    write_json(tmp_path / "mask_dict.json", {"11": [rle(box(k, 2)) for k in range(4)]})
    ds = open_dataset("revos", tmp_path)
    assert ds.overall == "kinds"
    s0, s1 = ds.samples()
    assert (s0.kind, s1.kind) == ("referring", "reasoning")
    assert red_level(s1.image(1)) == 1 and np.array_equal(s1.target(1), box(1, 2))


# ---- ReasonVOS -------------------------------------------------------------------------------
def test_reasonvos_scores_only_annotated_frames_and_names_outputs_by_object(tmp_path):
    write_frames(tmp_path / "JPEGImages/clip", NAMES)
    folder = tmp_path / "Annotations/mevis_clip_4"
    folder.mkdir(parents=True)
    for k in (0, 2):  # annotated frames only
        cv2.imwrite(str(folder / f"{NAMES[k]}.png"), np.where(box(k, 1), 255, 0).astype(np.uint8))
    write_json(tmp_path / "meta_expressions.json", {"videos": {"clip": {
        "source": "mevis", "is_sent": True, "frames": NAMES,
        "expressions": {"0": {"exp_text": "which one will be eaten first?", "obj_id": 4}}}}})
    (s,) = open_dataset("reasonvos", tmp_path).samples()
    assert s.command == "which one will be eaten first?" and s.expression_id == "4" and s.kind == "reasoning"
    assert len(s) == 4 and s.target(1) is None
    assert np.array_equal(s.target(2), box(2, 1))


def test_grey_and_palette_mask_pngs(tmp_path):
    m = box(0, 1)
    cv2.imwrite(str(tmp_path / "binary.png"), np.where(m, 255, 0).astype(np.uint8))
    assert np.array_equal(read_label_png(tmp_path / "binary.png"), m.astype(np.int32))
    write_palette(tmp_path / "p.png", labels(0, [1, 2]))
    assert set(np.unique(read_label_png(tmp_path / "p.png"))) == {0, 1, 2}


def test_unknown_dataset_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset"):
        open_dataset("kinetics", tmp_path)
    with pytest.raises(DatasetError, match="no expression file"):
        open_dataset("ref-youtube-vos", tmp_path)
    with pytest.raises(DatasetError, match="JPEGImages"):
        open_dataset("davis", tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        open_dataset("mevis", tmp_path / "nowhere")
