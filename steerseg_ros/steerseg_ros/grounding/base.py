"""The grounding interface: keyframes + a command in, maps and point prompts out.

Owns `Grounder` (what every grounding backend implements), `GroundingResult`, `PointPrompt`,
the errors a backend raises, and the command checks every backend shares.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from steerseg_ros.frame import Frame

MAX_COMMAND_CHARS = 1000
# Every Unicode control character (category Cc: C0, DEL, C1) to a space.
_CONTROL_TO_SPACE = {c: " " for c in (*range(0x20), *range(0x7F, 0xA0))}


class GroundingError(RuntimeError):
    """Grounding could not run (bad command, model failure); the pipeline logs it and goes on."""


class ModelUnavailableError(GroundingError):
    """The model's weights are not on disk and cannot be downloaded. The message names the model
    and says how to get it."""


def clean_command(text: str, max_chars: int = MAX_COMMAND_CHARS) -> str:
    """The command with control characters (NUL, terminal escapes; Unicode category Cc) turned
    into spaces, surrounding white space removed and runs of white space folded. Raises
    GroundingError for an empty command, one longer than `max_chars`, or text that is not valid
    Unicode (lone surrogates, which no message or tokenizer can encode)."""
    if not isinstance(text, str):
        raise GroundingError(f"command must be text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise GroundingError(f"command is {len(text)} characters long; the limit is {max_chars}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise GroundingError(f"command is not valid text: {e.reason} at character {e.start}") from None
    # Control characters would reach the logs (a terminal obeys escape sequences) and the model.
    cleaned = " ".join(text.translate(_CONTROL_TO_SPACE).split())
    if not cleaned:
        raise GroundingError("command is empty")
    return cleaned


@dataclass
class PointPrompt:
    """A point on one keyframe where the grounding map is high (pixel coordinates). `mask`: the
    object's mask there when the backend segments it itself (SAM 3's instances, frame-sized
    bool); target selection then takes it instead of asking the tracker for one."""

    keyframe_index: int
    x: float
    y: float
    score: float
    positive: bool = True
    mask: Optional[np.ndarray] = field(default=None, repr=False)


@dataclass
class GroundingResult:
    """What one grounding produced.

    maps: (K, Hg, Wg) float32 in [0, 1], the final map for each keyframe on the backend's grid
        (the LLM token grid for the model backends); cell (i, j) covers the image rectangle
        [j*W/Wg, (j+1)*W/Wg) x [i*H/Hg, (i+1)*H/Hg).
    frame_maps / video_maps: the two granularities before fusion where the backend has them,
        frame_maps (K, Hf, Wf) and video_maps (K, Hv, Wv), already aligned to the keyframes.
    points: point prompts in keyframe pixel coordinates, in the backend's order (the model
        backends: keyframe by keyframe, each in row-major order, as DecAF lists them; the
        built-in one: best first); target selection ranks them by score itself.
    candidate_scores / chosen_points: filled by target selection (steerseg_ros.streaming.selection): the
        score of the candidate each point gave (NaN where none was made), and the indices of
        the points whose candidates became tracks.
    in_view: the backend's answer to "is the object in view on these keyframes": None where
        it cannot say (it then always points somewhere, as an attention map does); False: not
        in view, and the result's points are not used (no track, not the best wrong guess);
        True: in view. `in_view_score` is the evidence behind it (a probability in [0, 1]
        where the backend has one, NaN otherwise).
    """

    command: str
    backend: str
    keyframes: list[Frame]
    maps: np.ndarray
    points: list[PointPrompt]
    frame_maps: Optional[np.ndarray] = None
    video_maps: Optional[np.ndarray] = None
    class_word: str = ""
    attributes: list[str] = field(default_factory=list)
    generated_text: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    candidate_scores: list[float] = field(default_factory=list)
    chosen_points: list[int] = field(default_factory=list)
    in_view: Optional[bool] = None
    in_view_score: float = float("nan")

    @property
    def keyframe_stamps_ns(self) -> list[int]:
        return [f.stamp_ns for f in self.keyframes]

    def validate(self) -> None:
        k = len(self.keyframes)
        if self.maps.ndim != 3 or self.maps.shape[0] != k:
            raise GroundingError(f"maps must be (K={k}, H, W), got {self.maps.shape}")
        for p in self.points:
            if not 0 <= p.keyframe_index < k:
                raise GroundingError(f"point on keyframe {p.keyframe_index} of {k}")


class Grounder(ABC):
    """A grounding backend. `ground` may be slow; it runs in the pipeline's worker thread and
    must not touch tracker state. Backends load their model in `__init__` (raising
    ModelUnavailableError when weights are missing)."""

    name: str = "grounder"

    @abstractmethod
    def ground(self, keyframes: Sequence[Frame], command: str) -> GroundingResult:
        """Ground `command` (already cleaned) on `keyframes` (oldest first, at least one)."""

    def close(self) -> None:
        """Release the model (optional)."""
