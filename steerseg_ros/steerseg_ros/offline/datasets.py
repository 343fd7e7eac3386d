"""Dataset readers for evaluation: one small reader per layout on disk, one `Sample` interface.

Owns `Sample` (one thing to segment: a video with a command, or with a first-frame mask), the
readers, and `open_dataset`. Readers parse the annotation files once and yield samples lazily;
a sample loads frames and ground truth one frame at a time, when asked, so memory stays bounded
by one frame whatever the length of the video.

Ground truth is given as a label image per frame (`Sample.labels(i)`): 0 is background, and the
objects the sample is about carry the values in `Sample.object_ids`. For a referring sample the
target is the union of those objects (`Sample.target(i)`); for a semi-supervised sample each
object is scored on its own, as the DAVIS toolkit does.

Layouts (ROOT is what `--root` names):

davis: DAVIS 2016 / 2017 semi-supervised (the first frame's mask is given).
    ROOT/JPEGImages/480p/<seq>/00000.jpg
    ROOT/Annotations/480p/<seq>/00000.png   DAVIS 2017: palette PNG, index = object id (255 is
                                            void and counts as background); DAVIS 2016: 0/255.
    ROOT/ImageSets/2017/val.txt             optional sequence list (2016 when that year is asked
                                            for); without one, every folder under JPEGImages.
    Objects are ids 1..max of the first frame's mask, as the toolkit counts them. test-dev and
    test-challenge give the first frame's mask only: their submission is a zip of
    <seq>/<frame>.png palette PNGs at its top level.

expressions: this project's language commands on a DAVIS-layout folder (../shared/data/davis16).
    ROOT/JPEGImages/480p/..., ROOT/Annotations/480p/... as for davis (one object per sequence)
    ROOT/expressions.json   {"videos": {<seq>: {"expressions": [{"exp": str, "kind":
                            "referring" | "reasoning"}, ...]}}}; the expression id is the
                            position in the list.

ref-davis17: Ref-DAVIS17 as ReferFormer converts it (tools/data/convert_davis_to_ytvos.py).
    ROOT/meta_expressions/valid/meta_expressions.json
        {"videos": {<video>: {"expressions": {"0": {"exp": str, "obj_id": "1"}, ...},
                              "frames": ["00000", ...]}}}
        (four expressions per object: annotator 1 first-frame, annotator 1 full-video,
        annotator 2 first-frame, annotator 2 full-video)
    ROOT/valid/JPEGImages/<video>/<frame>.jpg
    ROOT/valid/Annotations/<video>/<frame>.png   palette PNG of DAVIS 2017's unsupervised
                                                 annotations; obj_id is the palette index.
    Each expression is scored on its own over all frames, as VISA's tools/eval_davis17.py and
    the MeViS evaluator do. (ReferFormer's older protocol merges each annotator's expressions
    into one multi-object result and runs the DAVIS 2017 toolkit on it; not reproduced here.)

ref-youtube-vos: Ref-YouTube-VOS (the competition download).
    ROOT/meta_expressions/<split>/meta_expressions.json, or ROOT/meta_expressions_<split>.json,
    or the file given as `meta`; either of two layouts per video:
        {"expressions": {"0": {"exp": str, "obj_id": "1"}, ...}, "frames": [...]}   (competition;
            valid has no obj_id)
        {"objects": {"1": {"category": str, "expressions": [...], "expressions_first_frame":
            [...], "frames": [...]}}}                                  (the original release)
    ROOT/<split>/JPEGImages/<video>/<frame>.jpg
    ROOT/<split>/Annotations/<video>/<frame>.png   palette PNG, index = obj_id (train only)
    In the "objects" layout this reader numbers a video's expressions itself: the full-video
    expressions of its objects in id order, then the first-frame ones (kind "full-video" /
    "first-frame"); the video's frames are the union of its objects' frames. The server's ids
    are those of the competition's file: submit with that one. When
    ROOT/meta_expressions/test/meta_expressions.json exists its videos are left out of the
    valid split, as ReferFormer does (the competition's valid file lists the test videos too).
    Valid has no public ground truth: the submission is a zip of
    Annotations/<video>/<expression id>/<frame>.png (0/255 PNGs), as the server expects.

mevis: MeViS (v1 and v2 share the layout).
    ROOT/<split>/JPEGImages/<video>/<frame>.jpg        split: train, valid_u, valid
    ROOT/<split>/meta_expressions.json
        {"videos": {<video>: {"expressions": {"0": {"exp": str, "obj_id": [int, ...],
                                                    "anno_id": [int, ...]}, ...},
                              "frames": [...]}}}
    ROOT/<split>/mask_dict.json   {<anno_id>: [COCO RLE or null, one per frame]} (train, valid_u)
    The target is the union of the expression's objects. valid has no public ground truth: the
    submission is a zip of <video>/<expression id>/<frame>.png at its top level.

revos: ReVOS (VISA).
    ROOT/JPEGImages/<video>/<frame>.jpg      (video names may contain "/")
    ROOT/meta_expressions_<split>_.json      split: train, valid; expressions as MeViS plus
                                             "type_id": 0 referring, 1 reasoning
    ROOT/mask_dict.json                      {<anno_id>: [COCO RLE or null per frame]}
    The overall score is the mean of the referring and the reasoning scores, as VISA's
    evaluator reports it.

reasonvos: ReasonVOS (VideoLISA).
    ROOT/meta_expressions.json
        {"videos": {<video>: {"source": str, "is_sent": bool, "frames": [...],
                              "expressions": {"0": {"exp_text": str, "obj_id": int}, ...}}}}
    ROOT/JPEGImages/<video>/<frame>.jpg
    ROOT/Annotations/<source>_<video>_<obj_id>/<frame>.png   binary masks, on the annotated
                                                             frames only
    The expression id is the obj_id, the folder name VideoLISA's evaluator reads predictions
    from; only frames with a mask are scored.
"""
from __future__ import annotations

import json
import logging
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import cv2
import numpy as np
from PIL import Image

log = logging.getLogger("steerseg_ros.offline.datasets")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DatasetError(ValueError):
    """The folder does not hold the layout the reader expects; the message says what is missing."""


@dataclass
class Sample:
    """One thing to segment: a video and either a command (referring) or, when `command` is
    None, the first frame's mask (semi-supervised).

    expression_id: the expression's folder name in the output and submission layouts ("" for a
        semi-supervised sample).
    kind: the expression's kind where the dataset has a split ("referring", "reasoning", ...).
    object_ids: the label values in `labels(i)` that the sample is about.
    """

    dataset: str
    video: str
    frame_names: list[str]
    frame_paths: list[Path]
    command: Optional[str] = None
    expression_id: str = ""
    kind: str = ""
    object_ids: list[int] = field(default_factory=list)
    annotation: Optional[Callable[[int], Optional[np.ndarray]]] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.frame_names)

    @property
    def semi_supervised(self) -> bool:
        return self.command is None

    @property
    def has_ground_truth(self) -> bool:
        return self.annotation is not None

    @property
    def key(self) -> str:
        return f"{self.video}/{self.expression_id}" if self.expression_id else self.video

    def image(self, i: int) -> np.ndarray:
        """Frame i as HxWx3 uint8 RGB."""
        return read_rgb(self.frame_paths[i])

    def labels(self, i: int) -> Optional[np.ndarray]:
        """Frame i's ground truth as an HxW int32 label image, or None where the frame is not
        annotated (or the dataset has no public ground truth)."""
        if self.annotation is None:
            return None
        return self.annotation(i)

    def target(self, i: int) -> Optional[np.ndarray]:
        """The union of the sample's objects on frame i (HxW bool), or None when not annotated."""
        labels = self.labels(i)
        if labels is None:
            return None
        return np.isin(labels, self.object_ids)


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label_png(path: Path) -> np.ndarray:
    """A mask PNG as an int32 label image: palette PNGs give their indices (255, DAVIS's void,
    becomes background); a grey PNG holding only 0 and 255 (DAVIS 2016) gives 0/1; any other grey
    PNG gives its values."""
    with Image.open(path) as im:
        mode = im.mode
        values = np.array(im)
    if values.ndim == 3:  # an RGB(A) mask: anything not black is the object
        return np.any(values[..., :3] > 0, axis=2).astype(np.int32)
    values = values.astype(np.int32)
    if mode == "P":
        values[values == 255] = 0
        return values
    present = np.unique(values)
    if set(present.tolist()) <= {0, 255}:
        return (values == 255).astype(np.int32)
    values[values == 255] = 0
    return values


def decode_rle(rle: dict) -> np.ndarray:
    """A COCO run-length mask ({"size": [h, w], "counts": str}) as HxW bool."""
    from pycocotools import mask as mask_utils  # only the MeViS and ReVOS readers need it
    with warnings.catch_warnings():
        # pycocotools 2.0.11 trips numpy 2's __array__(copy=...) deprecation; the result is right.
        warnings.simplefilter("ignore", DeprecationWarning)
        mask = mask_utils.decode(rle)
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    return mask.astype(bool)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _frame_path(folder: Path, name: str) -> Path:
    """The frame file `name` (without suffix) in `folder`; .jpg unless another one exists."""
    path = folder / f"{name}.jpg"
    if path.exists():
        return path
    for suffix in (".jpeg", ".png"):
        if (folder / f"{name}{suffix}").exists():
            return folder / f"{name}{suffix}"
    return path  # reported when the frame is read


class Dataset(ABC):
    """A dataset on disk. `samples()` yields lazily; `count()` says how many without loading
    anything but the annotation files.

    fps: the frame rate streaming mode assumes for the frames on disk (they carry no stamps).
    submission: the zip layout of the official server when the split has no ground truth.
    overall: how the overall score is formed: "objects" (the mean over every scored object or
        expression, the DAVIS / MeViS way) or "kinds" (the mean of the per-kind means, ReVOS).
    """

    name = "dataset"
    fps = 24.0
    submission: Optional[str] = None
    overall = "objects"

    def __init__(self, root: str | Path, split: Optional[str] = None, meta: Optional[str | Path] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        self.split = split
        self.meta = Path(meta) if meta else None

    @abstractmethod
    def videos(self) -> list[str]:
        """Video names in the order samples come."""

    @abstractmethod
    def _video_samples(self, video: str) -> Iterator[Sample]:
        """The samples of one video."""

    @property
    @abstractmethod
    def has_ground_truth(self) -> bool:
        """Whether the split's ground truth is on disk."""

    def _check_videos(self, videos: Optional[Iterable[str]]) -> list[str]:
        known = self.videos()
        if videos is None:
            return known
        videos = list(videos)
        known_set = set(known)
        missing = [v for v in videos if v not in known_set]
        if missing:
            raise DatasetError(f"{self.name}: unknown video(s) {missing[:5]}; the split has {len(known)} "
                               f"videos, e.g. {known[:3]}")
        return videos

    def samples(self, videos: Optional[Iterable[str]] = None) -> Iterator[Sample]:
        for video in self._check_videos(videos):
            yield from self._video_samples(video)

    def count(self, videos: Optional[Iterable[str]] = None) -> int:
        return sum(1 for _ in self.samples(videos))


def _palette_annotation(folder: Path, names: list[str]) -> Optional[Callable[[int], Optional[np.ndarray]]]:
    """Frame i's label image from folder/<names[i]>.png, read when asked (None where a frame has
    no PNG); None when the folder does not exist."""
    if not folder.is_dir():
        return None

    def load(i: int) -> Optional[np.ndarray]:
        path = folder / f"{names[i]}.png"
        return read_label_png(path) if path.exists() else None
    return load


# ---- DAVIS ---------------------------------------------------------------------------------
class _DavisFolders:
    """JPEGImages/<resolution>/<seq> and Annotations/<resolution>/<seq> under a root."""

    def __init__(self, root: Path, resolution: str):
        self.images = root / "JPEGImages" / resolution
        self.annotations = root / "Annotations" / resolution
        if not self.images.is_dir():
            raise DatasetError(f"DAVIS frames not found: expected {self.images}/<sequence>/00000.jpg")

    def sequences(self) -> list[str]:
        return sorted(p.name for p in self.images.iterdir() if p.is_dir())

    def frames(self, seq: str) -> tuple[list[str], list[Path]]:
        paths = _image_files(self.images / seq)
        if not paths:
            raise DatasetError(f"no frames in {self.images / seq}")
        return [p.stem for p in paths], paths

    def annotation(self, seq: str, names: list[str]) -> Optional[Callable[[int], Optional[np.ndarray]]]:
        return _palette_annotation(self.annotations / seq, names)


class DavisDataset(Dataset):
    """DAVIS 2016 / 2017, semi-supervised: every object of the first frame's mask is followed."""

    name = "davis"
    fps = 24.0
    submission = "davis"

    def __init__(self, root, split: Optional[str] = None, meta=None, resolution: str = "480p",
                 year: Optional[str] = None):
        super().__init__(root, split or "val", meta)
        self.folders = _DavisFolders(self.root, resolution)
        self.year = year

    def videos(self) -> list[str]:
        years = [self.year] if self.year else ["2017", "2016"]
        for year in years:
            listing = self.root / "ImageSets" / year / f"{self.split}.txt"
            if listing.is_file():
                return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        return self.folders.sequences()

    @property
    def has_ground_truth(self) -> bool:
        """False for test-dev / test-challenge, whose annotations hold the first frame only."""
        videos = self.videos()
        folder = self.folders.annotations / videos[0] if videos else None
        return folder is not None and len(list(folder.glob("*.png"))) > 1

    def _video_samples(self, video: str) -> Iterator[Sample]:
        names, paths = self.folders.frames(video)
        annotation = self.folders.annotation(video, names)
        if annotation is None:
            raise DatasetError(f"{video}: no annotations in {self.folders.annotations / video}; the "
                               "semi-supervised protocol needs at least the first frame's mask")
        first = annotation(0)
        if first is None or first.max() == 0:
            raise DatasetError(f"{video}: the first frame {names[0]} has no object mask")
        yield Sample(self.name, video, names, paths, object_ids=list(range(1, int(first.max()) + 1)),
                     annotation=annotation)


class ExpressionsDataset(Dataset):
    """This project's expressions.json on a DAVIS-layout folder."""

    name = "expressions"
    fps = 24.0

    def __init__(self, root, split=None, meta=None, resolution: str = "480p"):
        super().__init__(root, split, meta)
        self.folders = _DavisFolders(self.root, resolution)
        self.data = _load_json(self.meta or self.root / "expressions.json")["videos"]

    def videos(self) -> list[str]:
        return list(self.data)

    @property
    def has_ground_truth(self) -> bool:
        return self.folders.annotations.is_dir()

    def _video_samples(self, video: str) -> Iterator[Sample]:
        names, paths = self.folders.frames(video)
        annotation = self.folders.annotation(video, names)
        expressions = self.data[video]["expressions"]
        items = expressions.items() if isinstance(expressions, dict) else enumerate(expressions)
        for key, e in items:
            yield Sample(self.name, video, names, paths, command=e["exp"], expression_id=str(key),
                         kind=e.get("kind", ""), object_ids=[1], annotation=annotation)


# ---- the Ref-YouTube-VOS family --------------------------------------------------------------
class RefYouTubeVOSDataset(Dataset):
    """Ref-YouTube-VOS: meta_expressions.json in either layout; ground truth where
    <split>/Annotations exists (train)."""

    name = "ref-youtube-vos"
    fps = 6.0  # the released frames are every 5th of 30 fps
    submission = "ref-youtube-vos"

    def __init__(self, root, split: Optional[str] = None, meta=None):
        super().__init__(root, split or "valid", meta)
        self.meta_path = self.meta or self._find_meta()
        self.data = _load_json(self.meta_path)["videos"]
        self.images = self.root / self.split / "JPEGImages"
        self.annotations = self.root / self.split / "Annotations"
        self._videos = list(self.data)
        test_meta = self.root / "meta_expressions" / "test" / "meta_expressions.json"
        if self.split == "valid" and self.meta is None and test_meta.is_file():
            test = set(_load_json(test_meta)["videos"])
            self._videos = [v for v in self._videos if v not in test]

    def _find_meta(self) -> Path:
        candidates = [self.root / "meta_expressions" / self.split / "meta_expressions.json",
                      self.root / f"meta_expressions_{self.split}.json",
                      self.root / self.split / "meta_expressions.json"]
        for path in candidates:
            if path.is_file():
                return path
        raise DatasetError(f"{self.name}: no expression file; looked for " + ", ".join(map(str, candidates)))

    def videos(self) -> list[str]:
        return self._videos

    @property
    def has_ground_truth(self) -> bool:
        return self.annotations.is_dir()

    def expressions(self, video: str) -> tuple[list[str], list[tuple[str, str, str, list[int]]]]:
        """(frame names, [(expression id, text, kind, object ids)]) of one video."""
        entry = self.data[video]
        if "objects" in entry:
            objects = sorted(entry["objects"].items(), key=lambda kv: int(kv[0]))
            frames = sorted({f for _, o in objects for f in o.get("frames", [])})
            out = []
            for field_name, kind in (("expressions", "full-video"), ("expressions_first_frame", "first-frame")):
                for obj_id, o in objects:
                    for text in o.get(field_name, []):
                        out.append((str(len(out)), text, kind, [int(obj_id)]))
            return frames, out
        frames = list(entry.get("frames", []))
        out = []
        for key, e in entry["expressions"].items():
            obj = e.get("obj_id")
            out.append((str(key), e["exp"], "referring", [int(obj)] if obj is not None else []))
        return frames, out

    def _video_samples(self, video: str) -> Iterator[Sample]:
        frames, expressions = self.expressions(video)
        folder = self.images / video
        if not frames:
            frames = [p.stem for p in _image_files(folder)]
        paths = [_frame_path(folder, f) for f in frames]
        annotation = _palette_annotation(self.annotations / video, frames)
        for exp_id, text, kind, obj_ids in expressions:
            has_gt = annotation is not None and bool(obj_ids)
            yield Sample(self.name, video, frames, paths, command=text, expression_id=exp_id, kind=kind,
                         object_ids=obj_ids, annotation=annotation if has_gt else None)


class RefDavisDataset(RefYouTubeVOSDataset):
    """Ref-DAVIS17 in ReferFormer's Ref-YouTube-VOS-style layout (ground truth in valid/)."""

    name = "ref-davis17"
    fps = 24.0
    submission = None

    def __init__(self, root, split: Optional[str] = None, meta=None):
        super().__init__(root, split or "valid", meta)
        if not self.has_ground_truth:
            raise DatasetError(f"{self.name}: ground truth not found at {self.annotations}")


# ---- RLE-mask datasets: MeViS, ReVOS ---------------------------------------------------------
class _RleMasks:
    """mask_dict.json, reduced to the annotation ids a split uses (the file holds every split)."""

    def __init__(self, path: Path, keep: set[str]):
        data = _load_json(path)
        self.masks = {k: v for k, v in data.items() if k in keep}
        missing = keep - set(self.masks)
        if missing:
            raise DatasetError(f"{path}: no masks for annotation id(s) {sorted(missing)[:5]}")

    def annotation(self, anno_ids: list[str], size: Callable[[], tuple[int, int]]) -> Callable[[int], np.ndarray]:
        def load(i: int) -> np.ndarray:
            rles = [self.masks[a][i] if i < len(self.masks[a]) else None for a in anno_ids]
            shape = next((tuple(r["size"]) for r in rles if r), None) or size()
            labels = np.zeros(shape, np.int32)
            for value, rle in enumerate(rles, start=1):
                if rle:
                    labels[decode_rle(rle)] = value
            return labels
        return load


def _image_size(path: Path) -> Callable[[], tuple[int, int]]:
    @lru_cache(maxsize=1)
    def size() -> tuple[int, int]:
        return read_rgb(path).shape[:2]
    return size


class MevisDataset(Dataset):
    """MeViS: expressions may refer to several objects; the target is their union."""

    name = "mevis"
    fps = 6.0  # assumed; the frames on disk carry no stamps
    submission = "mevis"

    def __init__(self, root, split: Optional[str] = None, meta=None):
        super().__init__(root, split or "valid_u", meta)
        base = self.root / self.split
        if not base.is_dir() and (self.root / "meta_expressions.json").is_file():
            base = self.root  # ROOT is the split folder itself
        self.base = base
        self.data = _load_json(self.meta or base / "meta_expressions.json")["videos"]
        self._masks: Optional[_RleMasks] = None

    @property
    def mask_path(self) -> Path:
        return self.base / "mask_dict.json"

    def videos(self) -> list[str]:
        return list(self.data)

    @property
    def has_ground_truth(self) -> bool:
        return self.mask_path.is_file()

    def _rle(self) -> _RleMasks:
        if self._masks is None:
            keep = {str(a) for v in self.data.values() for e in v["expressions"].values()
                    for a in _as_list(e.get("anno_id", []))}
            self._masks = _RleMasks(self.mask_path, keep)
        return self._masks

    def _kind(self, expression: dict) -> str:
        return "referring"

    def _video_samples(self, video: str) -> Iterator[Sample]:
        entry = self.data[video]
        frames = list(entry["frames"])
        folder = self.base / "JPEGImages" / video
        paths = [_frame_path(folder, f) for f in frames]
        size = _image_size(paths[0])
        for key, e in entry["expressions"].items():
            anno_ids = [str(a) for a in _as_list(e.get("anno_id", []))]
            annotation = self._rle().annotation(anno_ids, size) if self.has_ground_truth else None
            yield Sample(self.name, video, frames, paths, command=e["exp"], expression_id=str(key),
                         kind=self._kind(e), object_ids=list(range(1, len(anno_ids) + 1)),
                         annotation=annotation)


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


class RevosDataset(MevisDataset):
    """ReVOS: MeViS-like expressions with a referring / reasoning type; one mask_dict for all
    splits."""

    name = "revos"
    fps = 6.0  # assumed
    submission = None
    overall = "kinds"
    KINDS = {0: "referring", 1: "reasoning"}

    def __init__(self, root, split: Optional[str] = None, meta=None):
        Dataset.__init__(self, root, split or "valid", meta)
        self.base = self.root
        self.data = _load_json(self.meta or self.root / f"meta_expressions_{self.split}_.json")["videos"]
        self._masks = None

    def _kind(self, expression: dict) -> str:
        return self.KINDS.get(int(expression.get("type_id", 0)), str(expression.get("type_id")))


# ---- ReasonVOS -----------------------------------------------------------------------------------
class ReasonVOSDataset(Dataset):
    """ReasonVOS: one binary-mask folder per (video, object); scored on the annotated frames."""

    name = "reasonvos"
    fps = 6.0  # assumed
    submission = None

    def __init__(self, root, split=None, meta=None):
        super().__init__(root, split, meta)
        self.data = _load_json(self.meta or self.root / "meta_expressions.json")["videos"]
        self.annotations = self.root / "Annotations"

    def videos(self) -> list[str]:
        return list(self.data)

    @property
    def has_ground_truth(self) -> bool:
        return self.annotations.is_dir()

    def _mask_folder(self, source: str, video: str, obj_id) -> Optional[Path]:
        for src in dict.fromkeys((source, source.lower())):
            folder = self.annotations / f"{src}_{video}_{obj_id}"
            if folder.is_dir():
                return folder
        return None

    def _video_samples(self, video: str) -> Iterator[Sample]:
        entry = self.data[video]
        folder = self.root / "JPEGImages" / video
        files = _image_files(folder)
        frames = [p.stem for p in files] or list(entry.get("frames", []))
        paths = files or [_frame_path(folder, f) for f in frames]
        ids = [str(e["obj_id"]) for e in entry["expressions"].values()]
        unique = len(set(ids)) == len(ids)
        for key, e in entry["expressions"].items():
            annotation = None
            if self.has_ground_truth:
                folder = self._mask_folder(entry.get("source", ""), video, e["obj_id"])
                if folder is None:
                    # VideoLISA's evaluator leaves such an expression out of the score too.
                    log.warning("%s: no masks for %s object %s; it is not scored", self.name, video, e["obj_id"])
                else:
                    annotation = _palette_annotation(folder, frames)
            text = e.get("exp_text", e.get("exp"))
            # VideoLISA's evaluator finds predictions under <video>/<obj_id>/.
            yield Sample(self.name, video, frames, paths, command=text,
                         expression_id=str(e["obj_id"]) if unique else str(key), kind="reasoning",
                         object_ids=[1], annotation=_binary(annotation))


def _binary(annotation: Optional[Callable[[int], Optional[np.ndarray]]]):
    if annotation is None:
        return None

    def load(i: int) -> Optional[np.ndarray]:
        labels = annotation(i)
        return None if labels is None else (labels > 0).astype(np.int32)
    return load


DATASETS: dict[str, type[Dataset]] = {
    "davis": DavisDataset,
    "expressions": ExpressionsDataset,
    "ref-davis17": RefDavisDataset,
    "ref-youtube-vos": RefYouTubeVOSDataset,
    "mevis": MevisDataset,
    "revos": RevosDataset,
    "reasonvos": ReasonVOSDataset,
}
ALIASES = {"davis16": ("davis", {"year": "2016"}), "davis17": ("davis", {"year": "2017"}),
           "davis2016": ("davis", {"year": "2016"}), "davis2017": ("davis", {"year": "2017"}),
           "refytvos": ("ref-youtube-vos", {}), "ref-davis": ("ref-davis17", {})}


def open_dataset(name: str, root: str | Path, split: Optional[str] = None,
                 meta: Optional[str | Path] = None) -> Dataset:
    """The reader for dataset `name` (see DATASETS and ALIASES) on `root`."""
    key = name.lower()
    extra: dict[str, Any] = {}
    if key in ALIASES:
        key, extra = ALIASES[key]
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS) + sorted(ALIASES)}")
    return DATASETS[key](root, split=split, meta=meta, **extra)
