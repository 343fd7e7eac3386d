"""The following benchmark's scenes: a DAVIS-layout sequence turned into a long stream in which
the object is hidden, leaves the view or meets a look-alike, with exact ground truth.

Owns `SceneConfig`, `FollowingScene`, `build_scene`, the scene kinds and the sequence splits.
The sequence is played forth and back (ping-pong) into a stream of `duration_s` at `fps`, one
source frame per output frame (`step` to skip), and one event happens at `event_at_s`:

- occluder: a textured wall slides in from one side, stands still over the object for
  `hidden_s` (it covers every column the object takes over that time, so the object is hidden
  completely), and slides out on the other side. Its texture is another frame of the sequence,
  the object painted out and turned upside down: image content, not a flat colour.
- pan: the view is a window onto a world wider than the frame (the frame, and beside it another
  frame of the sequence with the object painted out, mirrored, as if the scene went on); it pans
  to the side until the object is out of view, stays `hidden_s`, and pans back.
- distractor: the object's own cut-out from a distant frame of the sequence crosses the view at
  the object's height, behind the object, in `pass_s`. Only the real object is ground truth.

Every frame has a name ("00042", its index) and a stamp (index / fps); `gt` is the object's
visible mask (empty: hidden), `full` what would be visible without the occluder (in view), and
`whole_area` the object's area in its source frame (what would be visible at the pan's home
position with nothing in front): the object is fully back when its visible area reaches it.
Frames are rendered on demand (`frame(i)`), so a long scene costs only its source frames.
Deterministic: `seed` picks the sides and the frames the textures come from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

from steerseg_ros.frame import NS_PER_S

KINDS = ("occluder", "pan", "distractor")
# The shared DAVIS 2016 sequences, in two halves: settings are developed on the first and the
# second is held out (nothing is tuned on it; the acceptance figures include it).
DEVELOPMENT_SPLIT = ("blackswan", "bmx-trees", "breakdance", "camel", "car-shadow")
HELD_OUT_SPLIT = ("cows", "dog", "goat", "kite-surf", "parkour")
SEQUENCES = DEVELOPMENT_SPLIT + HELD_OUT_SPLIT
SPLITS = {"development": DEVELOPMENT_SPLIT, "held_out": HELD_OUT_SPLIT, "all": SEQUENCES}


@dataclass
class SceneConfig:
    """How a scene is made from its sequence; every field's help text is in its metadata."""

    fps: float = field(default=15.0, metadata={"help": "Frame rate of the stream (its stamps)."})
    duration_s: float = field(default=12.0, metadata={"help": "Length of the stream in seconds (at least 10)."})
    width: int = field(default=0, metadata={"help": "Output width in pixels (height in proportion); 0: the source's."})
    step: int = field(default=1, metadata={"help": "Source frames per output frame."})
    event_at_s: float = field(default=4.0, metadata={"help": (
        "When the event starts: the wall begins to slide in, the view to pan, the look-alike to "
        "enter.")})
    hidden_s: float = field(default=1.5, metadata={"help": (
        "occluder, pan: how long the wall stands over the object / the view stays away (the "
        "object is hidden at least this long, and at most 2 x slide_s longer).")})
    slide_s: float = field(default=0.5, metadata={"help": "occluder, pan: time to slide in (pan away) and out (back)."})
    pass_s: float = field(default=3.0, metadata={"help": "distractor: time the look-alike takes to cross the view."})
    margin: float = field(default=0.03, metadata={"help": (
        "occluder, pan: clearance around the object (fraction of the width) for the wall and the "
        "pan.")})
    seed: int = field(default=0, metadata={"help": "Picks the sides and the texture frames."})

    def validate(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.duration_s < 10:
            raise ValueError(f"duration_s must be >= 10, got {self.duration_s}")
        if self.width < 0 or 0 < self.width < 32:
            raise ValueError(f"width must be 0 or >= 32, got {self.width}")
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        if not 1.0 <= self.hidden_s <= 3.0:
            raise ValueError(f"hidden_s must be in [1, 3], got {self.hidden_s}")
        if self.slide_s <= 0 or self.pass_s <= 0:
            raise ValueError("slide_s and pass_s must be > 0")
        if not 0 <= self.margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {self.margin}")
        end = self.event_at_s + max(self.hidden_s + 2 * self.slide_s, self.pass_s)
        if self.event_at_s < 0 or end > self.duration_s:
            raise ValueError(f"the event ({self.event_at_s} s to {end} s) must lie within the stream "
                             f"(0 to {self.duration_s} s)")


@dataclass
class SceneFrame:
    """One frame of a scene: `image` HxWx3 uint8 RGB, `gt` and `full` HxW bool."""

    index: int
    name: str
    stamp_ns: int
    image: np.ndarray
    gt: np.ndarray
    full: np.ndarray


def frame_name(index: int) -> str:
    return f"{index:05d}"


def pingpong(index: int, length: int) -> int:
    """The source frame of stream position `index` when a sequence of `length` frames is played
    forth and back (0 1 .. n-1 n-2 .. 1 0 1 ..)."""
    if length < 2:
        return 0
    period = 2 * (length - 1)
    k = index % period
    return k if k < length else period - k


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3 - 2 * u)


def load_source(root: Path, sequence: str, width: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(RGB frames, boolean masks) of a DAVIS-layout sequence, resized to `width` (0: as they
    are). FileNotFoundError when the sequence has no frames."""
    frames_dir = Path(root) / "JPEGImages" / "480p" / sequence
    masks_dir = Path(root) / "Annotations" / "480p" / sequence
    names = sorted(p.stem for p in frames_dir.glob("*.jpg"))
    if not names:
        raise FileNotFoundError(f"no frames at {frames_dir}")
    images, masks = [], []
    for n in names:
        bgr = cv2.imread(str(frames_dir / f"{n}.jpg"))
        grey = cv2.imread(str(masks_dir / f"{n}.png"), cv2.IMREAD_GRAYSCALE)
        if bgr is None or grey is None:
            raise FileNotFoundError(f"{sequence}/{n}: frame or mask missing or unreadable")
        if width and width != bgr.shape[1]:
            size = (width, max(8, round(bgr.shape[0] * width / bgr.shape[1])))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_NEAREST)
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        masks.append(grey > 127)
    return images, masks


def command_for(root: Path, sequence: str, kind: str = "referring") -> str:
    """The sequence's command of `kind` in ROOT/expressions.json."""
    videos = json.loads((Path(root) / "expressions.json").read_text())["videos"]
    return next(e["exp"] for e in videos[sequence]["expressions"] if e["kind"] == kind)


def painted_out(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the object painted out (OpenCV's Telea inpainting of the dilated mask, at
    a quarter of the size: a texture, not a restoration)."""
    h, w = mask.shape
    small = (max(8, w // 4), max(8, h // 4))
    hole = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8))
    filled = cv2.inpaint(cv2.resize(image, small, interpolation=cv2.INTER_AREA),
                         cv2.resize(hole, small, interpolation=cv2.INTER_NEAREST) * 255, 5, cv2.INPAINT_TELEA)
    filled = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(hole[..., None].astype(bool), filled, image)


def _columns(mask: np.ndarray) -> Optional[tuple[int, int]]:
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(cols[-1]) + 1) if cols.size else None


class FollowingScene:
    """A scene made by `build_scene`: `len(scene)` frames, rendered by `frame(i)`; the per-frame
    areas (`gt_area`, `full_area`, `whole_area`) and `hidden` are computed at construction."""

    def __init__(self, sequence: str, kind: str, command: str, images: list[np.ndarray],
                 masks: list[np.ndarray], config: SceneConfig):
        if kind not in KINDS:
            raise ValueError(f"unknown scene kind {kind!r}; choose one of {KINDS}")
        config.validate()
        self.sequence, self.kind, self.command, self.config = sequence, kind, command, config
        self.name = f"{sequence}-{kind}"
        self.fps = config.fps
        self._images, self._masks = images, masks
        self.height, self.width = masks[0].shape
        n = int(round(config.duration_s * config.fps))
        self.source = np.array([pingpong(i * config.step, len(images)) for i in range(n)])
        self.frame_names = [frame_name(i) for i in range(n)]
        rng = np.random.default_rng([config.seed, *sequence.encode()])
        self.side = int(rng.choice([-1, 1]))  # occluder: the side the wall enters from; distractor: too
        # The frame the texture (wall, pan extension) or the look-alike comes from: far from the
        # frames around the event, so it does not repeat what is in view.
        event = int(round(config.event_at_s * config.fps))
        near = self.source[event]
        far = np.argsort(-np.abs(np.arange(len(images)) - near), kind="stable")[:max(1, len(images) // 3)]
        self.texture_frame = int(rng.choice(far))
        fps = config.fps
        self.event_frames = {
            "start": event,
            "hold": event + int(round(config.slide_s * fps)),
            "release": event + int(round((config.slide_s + config.hidden_s) * fps)),
            "end": event + int(round((2 * config.slide_s + config.hidden_s) * fps)),
        }
        self._plan(rng)
        self.whole_area = np.array([np.count_nonzero(masks[j]) for j in self.source], np.int64)
        areas = np.array([[np.count_nonzero(m) for m in self._render_masks(i)] for i in range(n)], np.int64)
        self.gt_area, self.full_area = areas[:, 0], areas[:, 1]
        self.hidden = self.gt_area == 0

    # ---- planning -----------------------------------------------------------------------
    def _plan(self, rng: np.random.Generator) -> None:
        n, w = len(self.source), self.width
        c = self.config
        ev = self.event_frames
        i = np.arange(n, dtype=np.float64)
        margin = int(round(c.margin * w))
        hold_cols = [_columns(self._masks[j]) for j in self.source[ev["hold"]:ev["release"]]]
        hold_cols = [x for x in hold_cols if x is not None] or [(w // 2, w // 2 + 1)]
        lo, hi = min(x[0] for x in hold_cols), max(x[1] for x in hold_cols)
        self.wall = np.zeros((n, 2), np.int64)  # [x0, x1) of the wall in view, per frame
        self.offset = np.zeros(n, np.int64)     # pan: the window's offset into the world
        self.look_alike_x = np.full(n, np.nan)  # distractor: left edge of the cut-out
        if self.kind == "occluder":
            x0, x1 = max(0, lo - margin), min(w, hi + margin)
            width = x1 - x0
            enter = _smoothstep((i - ev["start"]) / max(1, ev["hold"] - ev["start"]))
            leave = _smoothstep((i - ev["release"]) / max(1, ev["end"] - ev["release"]))
            if self.side < 0:  # in from the left, out to the right
                left = -width + enter * (x0 + width) + leave * (w - x0)
            else:              # in from the right, out to the left
                left = w + enter * (x0 - w) + leave * (-width - x0)
            left = np.round(left).astype(np.int64)
            self.wall_left = left  # may lie outside the view
            self.wall[:, 0] = np.clip(left, 0, w)
            self.wall[:, 1] = np.clip(left + width, 0, w)
            texture = np.flipud(painted_out(self._images[self.texture_frame], self._masks[self.texture_frame]))
            start = int(rng.integers(0, w - width + 1))
            self._texture = np.ascontiguousarray(texture[:, start:start + width])
        elif self.kind == "pan":
            # Pan towards the side the object is farther from: the shorter way out of view.
            right, left = hi + margin, (w - lo) + margin
            self.pan_side = 1 if right <= left else -1
            distance = min(w, min(right, left))
            away = _smoothstep((i - ev["start"]) / max(1, ev["hold"] - ev["start"]))
            back = _smoothstep((i - ev["release"]) / max(1, ev["end"] - ev["release"]))
            self.offset = np.round(distance * (away - back)).astype(np.int64)
            self._texture = np.ascontiguousarray(np.fliplr(
                painted_out(self._images[self.texture_frame], self._masks[self.texture_frame])))
        else:
            j = self.texture_frame
            box = cv2.boundingRect(self._masks[j].astype(np.uint8))
            bx, by, bw, bh = box
            self._cutout = (self._images[j][by:by + bh, bx:bx + bw].copy(), self._masks[j][by:by + bh, bx:bx + bw].copy())
            n_pass = int(round(c.pass_s * c.fps))
            u = (i - ev["start"]) / max(1, n_pass)
            active = (u >= 0) & (u <= 1)
            if self.side < 0:
                x = -bw + u * (w + bw)
            else:
                x = w - u * (w + bw)
            self.look_alike_x = np.where(active, np.round(x), np.nan)
            # At the object's height over the pass (its median centre row), clipped to the view.
            rows = [cv2.boundingRect(self._masks[s].astype(np.uint8)) for s in self.source[ev["start"]:ev["start"] + n_pass]]
            centre = int(np.median([r[1] + r[3] / 2 for r in rows])) if rows else self.height // 2
            self.look_alike_y = int(np.clip(centre - bh // 2, 0, max(0, self.height - bh)))

    # ---- rendering ----------------------------------------------------------------------
    def _view(self, i: int, picture: np.ndarray, extension: np.ndarray) -> np.ndarray:
        """The pan window at frame i over [extension | picture | extension]'s relevant side."""
        o, w = int(self.offset[i]), self.width
        if o == 0:
            return picture
        if self.pan_side > 0:
            return np.concatenate([picture[:, o:], extension[:, :o]], axis=1)
        return np.concatenate([extension[:, w - o:], picture[:, :w - o]], axis=1)

    def _render_masks(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(gt, full) of frame i."""
        mask = self._masks[self.source[i]]
        if self.kind == "pan":
            full = self._view(i, mask, np.zeros_like(mask))
            return full, full
        if self.kind == "occluder":
            gt = mask.copy()
            gt[:, self.wall[i, 0]:self.wall[i, 1]] = False
            return gt, mask
        return mask, mask

    def gt(self, i: int) -> np.ndarray:
        """The ground truth of frame i alone (no image rendered)."""
        return self._render_masks(i)[0]

    def frame(self, i: int) -> SceneFrame:
        """Frame i rendered."""
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} of {len(self)}")
        j = int(self.source[i])
        picture, mask = self._images[j], self._masks[j]
        gt, full = self._render_masks(i)
        if self.kind == "occluder":
            image = picture.copy()
            x0, x1 = self.wall[i]
            if x1 > x0:
                first = x0 - int(self.wall_left[i])  # the wall may be partly outside the view
                image[:, x0:x1] = self._texture[:, first:first + (x1 - x0)]
                # A dark edge, as a wall's side casts.
                for x in (x0, x1 - 1):
                    if 0 < x < self.width - 1:
                        image[:, max(0, x - 1):x + 2] //= 3
        elif self.kind == "pan":
            image = self._view(i, picture, self._texture)
        else:
            image = picture.copy()
            x = self.look_alike_x[i]
            if not np.isnan(x):
                patch, pmask = self._cutout
                x, y = int(x), self.look_alike_y
                ph, pw = pmask.shape
                xa, xb = max(0, x), min(self.width, x + pw)
                ya, yb = y, min(self.height, y + ph)
                if xb > xa and yb > ya:
                    sub = pmask[ya - y:yb - y, xa - x:xb - x] & ~mask[ya:yb, xa:xb]  # behind the object
                    region = image[ya:yb, xa:xb]
                    region[sub] = patch[ya - y:yb - y, xa - x:xb - x][sub]
        return SceneFrame(i, self.frame_names[i], int(round(i * NS_PER_S / self.fps)), image, gt, full)

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[SceneFrame]:
        return (self.frame(i) for i in range(len(self)))

    def stamp_ns(self, i: int) -> int:
        return int(round(i * NS_PER_S / self.fps))

    def hidden_episodes(self) -> list[tuple[int, int]]:
        """[start, end) of every run of hidden frames."""
        return runs(self.hidden)

    def write_masks(self, folder: str | Path) -> Path:
        """Every frame's ground truth as a 0/255 grey PNG named like the frame (what the oracle
        grounder reads)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(self.frame_names):
            gt, _ = self._render_masks(i)
            if not cv2.imwrite(str(folder / f"{name}.png"), gt.astype(np.uint8) * 255):
                raise OSError(f"cannot write {folder / name}.png")
        return folder

    def describe(self) -> dict:
        """What the scene is, for reports."""
        episodes = self.hidden_episodes()
        return {"scene": self.name, "sequence": self.sequence, "kind": self.kind, "command": self.command,
                "frames": len(self), "fps": self.fps, "size": [self.width, self.height],
                "hidden_frames": int(self.hidden.sum()),
                "hidden_episodes_s": [round((b - a) / self.fps, 3) for a, b in episodes],
                "split": "held_out" if self.sequence in HELD_OUT_SPLIT else
                         "development" if self.sequence in DEVELOPMENT_SPLIT else "other"}


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1-D boolean array."""
    padded = np.concatenate([[False], np.asarray(flags, bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def build_scene(root: str | Path, sequence: str, kind: str, config: Optional[SceneConfig] = None,
                command: Optional[str] = None) -> FollowingScene:
    """The scene of `kind` made from `sequence` under ROOT (DAVIS layout); the command is the
    sequence's referring expression in ROOT/expressions.json unless given."""
    config = config or SceneConfig()
    config.validate()
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {KINDS}")
    images, masks = load_source(Path(root), sequence, config.width)
    if command is None:
        command = command_for(Path(root), sequence)
    return FollowingScene(sequence, kind, command, images, masks, config)


def build_scenes(root: str | Path, sequences: Sequence[str], kinds: Sequence[str],
                 config: Optional[SceneConfig] = None) -> list[FollowingScene]:
    """Every scene of `kinds` made from `sequences` (names, or the splits' names in SPLITS:
    development, held_out, all), sequence by sequence. Raises ValueError for an unknown kind
    before anything is loaded."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown scene kind(s) {unknown}; choose from {KINDS}")
    names = [s for name in sequences for s in SPLITS.get(name, (name,))]
    return [build_scene(root, seq, kind, config) for seq in names for kind in kinds]
