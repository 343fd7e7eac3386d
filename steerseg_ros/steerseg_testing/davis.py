"""Where the DAVIS 2016 data lies and how a sequence of it is read: the one place the fixtures,
the benchmarks and the demos work the folder out.

The data folder `shared/` lies beside the checkout (`<repo>/../shared`) or wherever
STEERSEG_SHARED points; DAVIS 2016 val at 480p is its `data/davis16`
(JPEGImages/480p/<seq>/*.jpg, Annotations/480p/<seq>/*.png, expressions.json).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

# steerseg_ros/steerseg_testing/davis.py: three levels below the checkout (the colcon install
# links to these files, and resolve() follows the link).
REPO = Path(__file__).resolve().parents[2]


def shared_root() -> Path:
    """The shared data folder: STEERSEG_SHARED, else `<repo>/../shared`."""
    shared = os.environ.get("STEERSEG_SHARED")
    return Path(shared) if shared else REPO.parent / "shared"


def davis_root() -> Path:
    """The davis16 folder under the shared data folder (it may not exist)."""
    return shared_root() / "data" / "davis16"


def load_sequence(root: Path, sequence: str, count: Optional[int] = None,
                  step: int = 1) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(names, RGB frames, boolean ground-truth masks) of a DAVIS sequence: every `step`-th
    frame, the first `count` of those (default all). No frames (no such folder): empty lists."""
    frames_dir = root / "JPEGImages" / "480p" / sequence
    names = sorted(p.stem for p in frames_dir.glob("*.jpg"))[::step][:count]
    images = [cv2.cvtColor(cv2.imread(str(frames_dir / f"{n}.jpg")), cv2.COLOR_BGR2RGB) for n in names]
    masks = [cv2.imread(str(root / "Annotations" / "480p" / sequence / f"{n}.png"), cv2.IMREAD_GRAYSCALE) > 127
             for n in names]
    return names, images, masks
