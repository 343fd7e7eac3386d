"""The built-in grounder: a command turned into maps and point prompts with no learned model.

Owns `BuiltinGrounder`, `BuiltinGrounderConfig`, the word lists it understands and
`parse_command`; the motion cue (camera motion and object-motion energy) is builtin_motion's. It is the fallback for machines without model weights, and it does not
understand language: it reads a few kinds of cue words from the command (colour, position, size,
motion), turns each into a map over the keyframes, multiplies them with a generic prior for "the
main object of the clip", and reads point prompts off the result. A command with no cue word it
knows gets the prior alone.

The prior is what unsupervised video object segmentation assumes about a clip's main object:
its colours differ from those along the image border (the border is mostly background), it
moves independently of the camera, and it tends to be near the centre of the frame. Motion is
measured after compensating the camera: an affine map (or a homography) between consecutive
keyframes fitted to ORB matches with RANSAC, then the residual colour difference of the aligned
frames. Between keyframes a fraction of a second apart the perspective part of a homography is
small, and its two extra degrees of freedom mostly fit noise or the moving object, hence the
affine default.

Maps: `maps` answers the command over the full prior; `frame_maps` over the appearance prior
alone (each keyframe on its own, no motion); `video_maps` over the motion prior (absent when no
object motion is measured). Colour, position and size words shape all three; motion words the
two that see motion.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np

from steerseg_ros.frame import Frame
from steerseg_ros.grounding.base import Grounder, GroundingError, GroundingResult, clean_command
from steerseg_ros.grounding.builtin_motion import motion_maps
from steerseg_ros.grounding.prompts import points_from_maps

# ---- vocabulary -------------------------------------------------------------------------------
# Written from general word classes, not from any data set's commands.


@dataclass(frozen=True)
class ColourRegion:
    """A colour name as a soft region of HSV space. hue in degrees (None: achromatic, any hue),
    hue_width the Gaussian half-width in degrees; sat and val are (low, high) in [0, 1]."""

    hue: Optional[float]
    hue_width: float
    sat: tuple[float, float]
    val: tuple[float, float]


# The eleven basic colour terms (Berlin & Kay) plus a few common extra names. Hue centres are the
# usual ones of the HSV circle; brown is a dark orange, pink a light desaturated red-magenta.
COLOURS: dict[str, ColourRegion] = {
    "red": ColourRegion(0, 15, (0.35, 1), (0.2, 1)),
    "orange": ColourRegion(28, 10, (0.45, 1), (0.5, 1)),
    "yellow": ColourRegion(55, 12, (0.35, 1), (0.5, 1)),
    "gold": ColourRegion(45, 12, (0.3, 1), (0.35, 1)),
    "green": ColourRegion(120, 35, (0.2, 1), (0.12, 1)),
    "cyan": ColourRegion(185, 15, (0.25, 1), (0.2, 1)),
    "blue": ColourRegion(220, 25, (0.25, 1), (0.12, 1)),
    "purple": ColourRegion(275, 22, (0.2, 1), (0.12, 1)),
    "pink": ColourRegion(330, 22, (0.15, 0.75), (0.55, 1)),
    "brown": ColourRegion(25, 18, (0.25, 1), (0.08, 0.6)),
    "beige": ColourRegion(38, 15, (0.12, 0.45), (0.55, 1)),
    "black": ColourRegion(None, 0, (0, 1), (0, 0.22)),
    "white": ColourRegion(None, 0, (0, 0.18), (0.72, 1)),
    "grey": ColourRegion(None, 0, (0, 0.2), (0.22, 0.75)),
    "silver": ColourRegion(None, 0, (0, 0.2), (0.45, 0.9)),
}
COLOUR_SYNONYMS = {
    "gray": "grey", "golden": "gold", "violet": "purple", "magenta": "pink", "turquoise": "cyan",
    "teal": "cyan", "tan": "beige", "navy": "blue", "crimson": "red", "scarlet": "red",
    "reddish": "red", "bluish": "blue", "greenish": "green", "yellowish": "yellow",
    "brownish": "brown", "greyish": "grey", "grayish": "grey", "blackish": "black",
    "whitish": "white", "orangish": "orange", "pinkish": "pink", "purplish": "purple",
}

# Position words -> a canonical position. "front"/"near" mean closer to the camera, which for
# objects on the ground plane is lower in the image and larger.
POSITIONS = {
    "left": "left", "leftmost": "left", "right": "right", "rightmost": "right",
    "top": "top", "upper": "top", "uppermost": "top", "topmost": "top", "highest": "top",
    "bottom": "bottom", "lower": "bottom", "lowest": "bottom", "bottommost": "bottom",
    "middle": "middle", "centre": "middle", "center": "middle", "central": "middle",
    "front": "near", "near": "near", "nearer": "near", "nearest": "near", "closest": "near",
    "closer": "near", "foreground": "near",
    "back": "far", "far": "far", "farther": "far", "farthest": "far", "further": "far",
    "furthest": "far", "behind": "far", "background": "far", "distant": "far",
}
SIZES = {
    "largest": "large", "biggest": "large", "big": "large", "large": "large", "larger": "large",
    "bigger": "large", "huge": "large", "giant": "large", "enormous": "large",
    "smallest": "small", "small": "small", "smaller": "small", "tiny": "small", "tiniest": "small",
    "little": "small",
    "tallest": "tall", "tall": "tall", "taller": "tall",
}


def _verb_forms(*bases: str) -> set[str]:
    """The -ing and -ed forms of regular verbs, with and without a doubled final consonant (a few
    non-words are generated; harmless for matching). Bare and -s forms are left out: many are
    also nouns ("bike", "waves") or imperatives addressed to the robot ("follow")."""
    forms: set[str] = set()
    for b in bases:
        forms |= {b + "ing", b + "ed"}
        if b.endswith("e"):
            forms |= {b[:-1] + "ing", b + "d"}
        if b.endswith("y"):
            forms.add(b[:-1] + "ied")
        if b[-1] not in "aeiouyw":
            forms |= {b + b[-1] + "ing", b + b[-1] + "ed"}
    return forms


# Verbs of self-propelled motion and of moving in place (dancing, spinning).
MOTION_WORDS = _verb_forms(
    "move", "walk", "run", "ride", "jump", "swim", "fly", "dance", "drive", "roll", "climb",
    "crawl", "skate", "ski", "surf", "cycle", "bike", "race", "chase", "turn", "spin", "fall",
    "slide", "hop", "leap", "gallop", "trot", "jog", "sprint", "rush", "hurry", "travel",
    "cross", "approach", "enter", "leave", "follow", "flee", "wave", "swing", "shake", "kick",
    "throw", "bounce", "dive", "glide", "march", "wander", "accelerate", "speed", "play",
) | {"ran", "rode", "swam", "flew", "drove", "fell", "spun", "slid", "leapt", "sped", "moves",
     "runs", "walks", "swims", "flies", "jumps", "climbs", "crawls", "dances", "motion", "mobile"}
FAST_WORDS = {"fastest", "faster", "fast", "quickest", "quickly", "quick", "rapid", "rapidly", "speeding"}
STATIC_WORDS = {"still", "stationary", "static", "motionless", "parked", "stopped", "unmoving",
                "idle", "immobile", "resting"}
NEGATIONS = {"not", "never", "no", "isn't", "aren't", "doesn't", "don't", "without"}

# For the head-noun heuristic.
DETERMINERS = {"the", "a", "an", "this", "that", "these", "those", "my", "your", "his", "her",
               "its", "our", "their", "some", "any", "each", "every", "one's"}
PHRASE_ENDS = {
    # prepositions
    "in", "on", "at", "with", "without", "by", "from", "to", "of", "next", "beside", "besides",
    "over", "under", "across", "along", "through", "into", "onto", "past", "around", "between",
    "among", "above", "below", "for", "about", "against", "like", "inside", "outside", "near",
    "behind", "toward", "towards", "up", "down", "off", "out", "wearing", "holding",
    # relatives and auxiliaries
    "that", "who", "which", "whose", "where", "whom", "is", "are", "was", "were", "be", "being",
    "been", "has", "have", "had", "can", "could", "will", "would", "may", "might", "should",
    "does", "do", "did",
}
# Words a command to a robot starts with before naming the target ("please go to the ...").
REQUEST_WORDS = {"please", "follow", "track", "find", "segment", "show", "get", "go", "look",
                 "watch", "point", "pick", "grab", "fetch", "bring", "locate", "highlight",
                 "select", "mark", "detect", "see", "keep", "me", "up", "to", "at", "for",
                 "toward", "towards", "on", "now", "and", "can", "you"}
GENERIC_NOUNS = {"one", "ones", "thing", "things", "object", "objects", "it", "something", "stuff",
                 "item", "target"}
CONJUNCTIONS = {"and", "or", "&", "but"}


@dataclass
class ParsedCommand:
    """The cues `parse_command` found. Each list holds canonical names; `cue_words` the command's
    own words that produced them, in order."""

    text: str
    tokens: list[str]
    colours: list[str] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)
    motion: Optional[str] = None  # "moving", "fast" or "static"
    class_word: str = "object"
    cue_words: list[str] = field(default_factory=list)

    @property
    def has_cues(self) -> bool:
        return bool(self.colours or self.positions or self.sizes or self.motion)


def _tokenize(text: str) -> list[str]:
    # Words (hyphenated and apostrophe words kept whole) and the punctuation that ends a phrase.
    return re.findall(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[,.;:!?]", text.lower())


def _is_cue(word: str) -> bool:
    return (word in COLOURS or word in COLOUR_SYNONYMS or word in POSITIONS or word in SIZES
            or word in MOTION_WORDS or word in FAST_WORDS or word in STATIC_WORDS)


def _nouns(words: list[str]) -> list[str]:
    return [w for w in words if not _is_cue(w) and w not in CONJUNCTIONS and "-" not in w and not w.isdigit()]


def _head_noun(tokens: list[str]) -> str:
    """The head noun of the first noun phrase: past the leading request words and determiners
    ("please follow the"), the last word before the phrase ends (a preposition, relative
    pronoun, auxiliary, a verb in -ing/-ed after a noun, or punctuation) that is not a cue word
    or a modifier. "object" when there is none or it is a pronoun such as "one"."""
    i = 0
    while i < len(tokens) and (tokens[i] in REQUEST_WORDS or tokens[i] in DETERMINERS):
        i += 1
    span: list[str] = []
    for t in tokens[i:]:
        if not t[0].isalnum():
            break
        ends = t in PHRASE_ENDS or (len(t) > 4 and t.endswith(("ing", "ed")) and bool(_nouns(span)))
        # A cue word that is also a preposition ("near", "behind") modifies a noun still to come.
        if ends and (_nouns(span) or not _is_cue(t)):
            break
        span.append(t)
    nouns = _nouns(span)
    if not nouns or nouns[-1] in GENERIC_NOUNS:
        return "object"
    return nouns[-1]


def parse_command(command: str) -> ParsedCommand:
    """The cue words of a command. Hyphenated words are looked into part by part
    ("dark-blue"), and a motion word after a negation ("not moving") counts as static."""
    tokens = _tokenize(command)
    parsed = ParsedCommand(command, tokens, class_word=_head_noun(tokens))
    motions: list[str] = []
    for n, token in enumerate(tokens):
        for word in token.split("-"):
            negated = any(t in NEGATIONS or t.endswith("n't") for t in tokens[max(0, n - 2):n])
            if word in COLOURS or word in COLOUR_SYNONYMS:
                name = COLOUR_SYNONYMS.get(word, word)
                if name not in parsed.colours:
                    parsed.colours.append(name)
            elif word in POSITIONS:
                if POSITIONS[word] not in parsed.positions:
                    parsed.positions.append(POSITIONS[word])
            elif word in SIZES:
                if SIZES[word] not in parsed.sizes:
                    parsed.sizes.append(SIZES[word])
            elif word in STATIC_WORDS:
                motions.append("static")
            elif negated and word in MOTION_WORDS:
                motions.append("static")
                word = "not " + word
            elif word in FAST_WORDS:
                motions.append("fast")
            elif word in MOTION_WORDS:
                motions.append("moving")
            else:
                continue
            parsed.cue_words.append(word)
    # One motion cue: "fast" refines "moving"; "static" only when nothing says it moves.
    if "fast" in motions:
        parsed.motion = "fast"
    elif "moving" in motions:
        parsed.motion = "moving"
    elif "static" in motions:
        parsed.motion = "static"
    return parsed


# ---- configuration ----------------------------------------------------------------------------


@dataclass
class BuiltinGrounderConfig:
    """Settings of the built-in (model-free) grounder."""

    cell_px: int = field(default=28, metadata={
        "help": "Grid cell size of the maps in pixels (28 is a Qwen-VL token: 854x480 gives 30x17)."})
    work_px_per_cell: int = field(default=4, metadata={
        "help": "Working resolution of the per-pixel cues, in pixels per grid cell."})
    motion_width: int = field(default=200, metadata={
        "help": "Keyframes are halved while at least twice this wide to estimate camera motion."})
    camera_model: str = field(default="affine", metadata={
        "help": "Camera motion model between keyframes: affine, similarity, homography or none."})
    orb_features: int = field(default=200, metadata={
        "help": "ORB features per keyframe for the camera motion estimate."})
    min_motion: float = field(default=10.0, metadata={
        "help": "Residual colour difference (CIE Lab delta E) below which no object motion is "
                "measured."})
    prior_motion_weight: float = field(default=0.5, metadata={
        "help": "Share of the motion map in the prior (the rest is border colour contrast)."})
    centre_weight: float = field(default=0.3, metadata={
        "help": "Strength of the centre bias in the prior, 0 (none) to 1."})
    centre_sigma: float = field(default=0.35, metadata={
        "help": "Width of the centre bias as a fraction of the image size."})
    prior_floor: float = field(default=0.2, metadata={
        "help": "Lowest weight the prior gives a pixel, so a cue word can win where the prior is weak."})
    cue_floor: float = field(default=0.1, metadata={
        "help": "Lowest weight a cue word gives a pixel or candidate region that does not match it."})
    region_threshold: float = field(default=0.3, metadata={
        "help": "Candidate regions for position and size words: the map above this fraction of "
                "its frame's range."})
    point_threshold: float = field(default=0.8, metadata={
        "help": "Map cells at or above this value become point prompts."})
    max_points: int = field(default=8, metadata={"help": "Most point prompts per grounding."})
    point_min_separation: int = field(default=1, metadata={
        "help": "A point within this many cells of a better one on its keyframe is dropped (0: none)."})

    def validate(self) -> None:
        if self.cell_px < 1:
            raise ValueError(f"cell_px must be >= 1, got {self.cell_px}")
        if not 1 <= self.work_px_per_cell <= 16:
            raise ValueError(f"work_px_per_cell must be in [1, 16], got {self.work_px_per_cell}")
        if self.motion_width < 32:
            raise ValueError(f"motion_width must be >= 32, got {self.motion_width}")
        if self.camera_model not in ("homography", "affine", "similarity", "none"):
            raise ValueError("camera_model must be homography, affine, similarity or none, "
                             f"got {self.camera_model!r}")
        if self.orb_features < 10:
            raise ValueError(f"orb_features must be >= 10, got {self.orb_features}")
        if self.min_motion <= 0:
            raise ValueError(f"min_motion must be > 0, got {self.min_motion}")
        for name in ("prior_motion_weight", "centre_weight", "prior_floor", "cue_floor",
                     "point_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.region_threshold < 1.0:
            raise ValueError(f"region_threshold must be in (0, 1), got {self.region_threshold}")
        if self.centre_sigma <= 0:
            raise ValueError(f"centre_sigma must be > 0, got {self.centre_sigma}")
        if self.max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {self.max_points}")
        if self.point_min_separation < 0:
            raise ValueError(f"point_min_separation must be >= 0, got {self.point_min_separation}")


# ---- per-pixel cues ---------------------------------------------------------------------------


def _soft_range(x: np.ndarray, low: float, high: float, softness: float = 0.05) -> np.ndarray:
    out = np.ones_like(x)
    if low > 0:
        out *= 1.0 / (1.0 + np.exp(-(x - low) / softness))
    if high < 1:
        out *= 1.0 / (1.0 + np.exp(-(high - x) / softness))
    return out


def colour_likelihood(hsv: np.ndarray, name: str) -> np.ndarray:
    """How well each pixel matches a colour name, in [0, 1]. hsv: (..., 3) float32 as OpenCV
    gives for float RGB in [0, 1] (hue in degrees, saturation and value in [0, 1])."""
    region = COLOURS[name]
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    out = _soft_range(s, *region.sat) * _soft_range(v, *region.val)
    if region.hue is not None:
        d = np.abs(h - region.hue) % 360.0
        d = np.minimum(d, 360.0 - d)
        out *= np.exp(-0.5 * (d / region.hue_width) ** 2)
    return out.astype(np.float32)


def border_contrast(lab: np.ndarray, band: float = 0.1, samples: int = 32) -> np.ndarray:
    """Saliency from the background-border prior: the Lab distance from each pixel's colour to the
    nearest colour sampled along each image side, averaged over the three sides farthest from it
    (an object may touch one side). Normalised to [0, 1] by its 99th percentile."""
    h, w = lab.shape[:2]
    b = max(1, int(round(band * min(h, w))))
    pixels = lab.reshape(-1, 3).astype(np.float32)
    sides = []
    for side in (lab[:b], lab[-b:], lab[:, :b], lab[:, -b:]):
        side = side.reshape(-1, 3)
        sides.append(side[np.linspace(0, len(side) - 1, samples).round().astype(int)])
    refs = np.concatenate(sides).astype(np.float32)  # (4 * samples, 3)
    # Laid out (reference, pixel) so that the reductions run over a leading axis, and summed
    # channel by channel: a matrix product with an inner size of 3 is slower through BLAS.
    d2 = sum((refs[:, c, None] - pixels[None, :, c]) ** 2 for c in range(3))
    nearest = np.sqrt(d2.reshape(4, samples, -1).min(1))  # (side, pixel)
    d = ((nearest.sum(0) - nearest.min(0)) / 3.0).reshape(h, w)
    scale = float(np.percentile(d, 99))
    return np.clip(d / scale, 0.0, 1.0) if scale > 1e-6 else np.zeros_like(d)


def centre_bias(h: int, w: int, sigma: float) -> np.ndarray:
    y = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    x = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2) / sigma ** 2)


# ---- the grounder -----------------------------------------------------------------------------


class BuiltinGrounder(Grounder):
    """Model-free grounding from colour, position, size and motion words over a generic prior.

    A fallback, not a language model: it ignores every word it does not list, cannot relate two
    objects ("the man next to the red car" reads as red), and its prior favours whatever stands
    out from the image border and moves differently from the camera.
    """

    name = "builtin"

    def __init__(self, config: Optional[BuiltinGrounderConfig] = None):
        self.config = config or BuiltinGrounderConfig()
        self.config.validate()

    # -- grid and images --
    def grid_shape(self, width: int, height: int) -> tuple[int, int]:
        """(Hg, Wg) of the maps for a keyframe of this size."""
        c = self.config.cell_px
        return max(1, int(round(height / c))), max(1, int(round(width / c)))

    def _motion_image(self, image: np.ndarray) -> np.ndarray:
        # Halving with pyrDown is several times faster than one area resize by a non-integer
        # factor at this size, and low-pass filters just as well.
        while image.shape[1] >= 2 * self.config.motion_width and image.shape[0] >= 64:
            image = cv2.pyrDown(image)
        return image

    # -- candidate regions for position and size words --
    def _region_weights(self, pixel_map: np.ndarray, parsed: ParsedCommand) -> np.ndarray:
        """Weights (h, w) from position and size words, judged per candidate region: the
        connected parts of the map above `region_threshold` of its range. The region that fits
        a word best gets 1, the worst `cue_floor`; pixels outside every region get `cue_floor`."""
        cfg = self.config
        lo, hi = float(pixel_map.min()), float(pixel_map.max())
        if hi - lo < 1e-6:
            return np.ones_like(pixel_map)
        fg = (pixel_map >= lo + cfg.region_threshold * (hi - lo)).astype(np.uint8)
        n, labels, stats, centroids = cv2.connectedComponentsWithStats(fg, connectivity=8)
        h, w = pixel_map.shape
        min_area = max(1, int(0.002 * h * w))
        regions = [r for r in range(1, n) if stats[r, cv2.CC_STAT_AREA] >= min_area]
        if not regions:
            return np.ones_like(pixel_map)
        area = np.array([stats[r, cv2.CC_STAT_AREA] for r in regions], np.float64) / (h * w)
        cx = np.array([centroids[r][0] for r in regions]) / w
        cy = np.array([centroids[r][1] for r in regions]) / h
        bottom = np.array([stats[r, cv2.CC_STAT_TOP] + stats[r, cv2.CC_STAT_HEIGHT] for r in regions]) / h
        height = np.array([stats[r, cv2.CC_STAT_HEIGHT] for r in regions]) / h
        fits: dict[str, np.ndarray] = {
            "left": -cx, "right": cx, "top": -cy, "bottom": cy,
            "middle": -np.hypot(cx - 0.5, cy - 0.5),
            # Nearer objects stand lower in the image and look larger.
            "near": bottom + np.sqrt(area), "far": -(bottom + np.sqrt(area)),
            "large": np.log(area), "small": -np.log(area), "tall": height,
        }
        weight = np.ones(len(regions))
        for word in parsed.positions + parsed.sizes:
            f = fits[word]
            spread = f.max() - f.min()
            rel = (f - f.min()) / spread if spread > 1e-9 else np.ones_like(f)
            weight *= cfg.cue_floor + (1 - cfg.cue_floor) * rel
        lut = np.full(n, cfg.cue_floor, np.float32)
        lut[regions] = weight
        return lut[labels]

    def _answer(self, prior: np.ndarray, colour: Optional[np.ndarray], motion_cue: Optional[np.ndarray],
                parsed: ParsedCommand) -> np.ndarray:
        """The command's map (K, h, w) at the working resolution over a prior: a product of the
        prior and each cue, every factor floored so that no single one can veto a pixel."""
        cfg = self.config
        out = cfg.prior_floor + (1 - cfg.prior_floor) * prior
        for cue in (colour, motion_cue):
            if cue is not None:
                out = out * (cfg.cue_floor + (1 - cfg.cue_floor) * cue)
        if parsed.positions or parsed.sizes:
            out = np.stack([m * self._region_weights(m, parsed) for m in out])
        return out

    def _to_grid(self, maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """Area-pooled to the grid, min-max normalised over all keyframes together."""
        hg, wg = grid
        pooled = np.stack([cv2.resize(m, (wg, hg), interpolation=cv2.INTER_AREA) for m in maps])
        lo, hi = float(pooled.min()), float(pooled.max())
        if hi - lo < 1e-9:
            return np.zeros_like(pooled, dtype=np.float32)
        return ((pooled - lo) / (hi - lo)).astype(np.float32)

    @staticmethod
    def _saliency(lab: np.ndarray) -> np.ndarray:
        # At half the working resolution: border contrast is the costliest per-pixel cue, and
        # it is smoothed anyway.
        h, w = lab.shape[:2]
        small = cv2.resize(lab, (max(8, w // 2), max(8, h // 2)), interpolation=cv2.INTER_AREA)
        contrast = cv2.GaussianBlur(border_contrast(small), (3, 3), 0)
        return cv2.resize(contrast, (w, h), interpolation=cv2.INTER_LINEAR)

    @staticmethod
    def _keyframe_size(keyframes: list[Frame]) -> tuple[int, int]:
        """(width, height) the keyframes share; GroundingError when there are none, one is not an
        RGB image, or their sizes differ."""
        if not keyframes:
            raise GroundingError("no keyframes to ground on")
        for f in keyframes:
            if f.image.ndim != 3 or f.image.shape[2] != 3 or f.image.dtype != np.uint8 or 0 in f.image.shape:
                raise GroundingError(f"keyframe {f.seq}: expected a non-empty HxWx3 uint8 image, "
                                     f"got {f.image.dtype} {f.image.shape}")
        sizes = {(f.width, f.height) for f in keyframes}
        if len(sizes) > 1:
            raise GroundingError(f"keyframes differ in size: {sorted(sizes)}")
        return sizes.pop()

    def _cue_maps(self, parsed: ParsedCommand, rgb: list[np.ndarray], centre: np.ndarray, saliency: np.ndarray,
                  motion: Optional[np.ndarray]):
        """(pixels, frame_pixels, video_pixels or None, motion_cue or None): the command's maps
        at the working resolution over the full, the appearance and the motion prior."""
        cfg = self.config
        colour = None
        if parsed.colours:
            hsv = np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2HSV) for x in rgb])
            colour = np.max([colour_likelihood(hsv, c) for c in parsed.colours], axis=0)
            colour = np.stack([cv2.GaussianBlur(c, (3, 3), 0) for c in colour])
        motion_cue = None
        if parsed.motion and motion is not None:
            motion_cue = {"moving": motion, "fast": motion ** 2, "static": 1.0 - motion}[parsed.motion]

        appearance_prior = centre * saliency
        frame_pixels = self._answer(appearance_prior, colour, None, parsed)
        video_pixels = None
        if motion is not None:
            mixed = centre * ((1 - cfg.prior_motion_weight) * saliency + cfg.prior_motion_weight * motion)
            pixels = self._answer(mixed, colour, motion_cue, parsed)
            video_pixels = self._answer(centre * motion, colour, motion_cue, parsed)
        else:
            pixels = frame_pixels
        return pixels, frame_pixels, video_pixels, motion_cue

    def ground(self, keyframes: Sequence[Frame], command: str) -> GroundingResult:
        cfg = self.config
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        command = clean_command(command)
        keyframes = list(keyframes)
        width, height = self._keyframe_size(keyframes)
        grid = self.grid_shape(width, height)
        work_h, work_w = grid[0] * cfg.work_px_per_cell, grid[1] * cfg.work_px_per_cell

        def lap(stage: str, since: float) -> float:
            now = time.perf_counter()
            timings[stage] = now - since
            return now

        t = time.perf_counter()
        parsed = parse_command(command)
        t = lap("parse", t)

        motion_images = [self._motion_image(f.image) for f in keyframes]
        rgb = [cv2.resize(m, (work_w, work_h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
               for m in motion_images]
        labs = [cv2.cvtColor(x, cv2.COLOR_RGB2Lab) for x in rgb]
        t = lap("prepare", t)

        saliency = np.stack([self._saliency(lab) for lab in labs])
        centre = (1 - cfg.centre_weight) + cfg.centre_weight * centre_bias(work_h, work_w, cfg.centre_sigma)
        t = lap("prior", t)

        motion, motion_note = motion_maps(cfg, motion_images, labs)
        t = lap("motion", t)

        pixels, frame_pixels, video_pixels, motion_cue = self._cue_maps(parsed, rgb, centre, saliency, motion)
        t = lap("cues", t)

        maps = self._to_grid(pixels, grid)
        frame_maps = self._to_grid(frame_pixels, grid)
        video_maps = self._to_grid(video_pixels, grid) if video_pixels is not None else None
        points = points_from_maps(maps, (width, height), cfg.point_threshold, cfg.max_points,
                                  cfg.point_min_separation)
        t = lap("points", t)
        timings["total"] = time.perf_counter() - t_start

        result = GroundingResult(
            command=command, backend=self.name, keyframes=keyframes, maps=maps, points=points,
            frame_maps=frame_maps, video_maps=video_maps, class_word=parsed.class_word,
            attributes=self._used_words(parsed, motion_cue),
            generated_text=self._describe(parsed, motion, motion_cue, motion_note), timings=timings)
        result.validate()
        return result

    @staticmethod
    def _used_words(parsed: ParsedCommand, motion_cue) -> list[str]:
        # Motion words count only where motion was measured; every other cue word is always used.
        if motion_cue is not None:
            return list(parsed.cue_words)
        last = [w.split()[-1] for w in parsed.cue_words]
        return [w for w, x in zip(parsed.cue_words, last)
                if not (x in MOTION_WORDS or x in FAST_WORDS or x in STATIC_WORDS)]

    @staticmethod
    def _describe(parsed: ParsedCommand, motion, motion_cue, motion_note: str) -> str:
        cues = []
        if parsed.colours:
            cues.append("colour " + "/".join(parsed.colours))
        if parsed.positions:
            cues.append("position " + "+".join(parsed.positions))
        if parsed.sizes:
            cues.append("size " + "+".join(parsed.sizes))
        if parsed.motion:
            ignored = "" if motion_cue is not None else " (ignored: no motion measured)"
            cues.append(f"motion {parsed.motion}{ignored}")
        prior = "border colour contrast" + (" + object motion" if motion is not None else "")
        prior += " + centre bias"
        return (f"built-in fallback grounder (no language model): target '{parsed.class_word}'; "
                f"cues: {', '.join(cues) if cues else 'none understood, prior alone'}; "
                f"prior: {prior}; {motion_note}")
