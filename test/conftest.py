"""Shared test fixtures: where the real test data is, and small loaders for it.

The data folder `shared/` lies beside the checkout (`<repo>/../shared`) or wherever
STEERSEG_SHARED points. Tests that need it skip, saying why, when it is absent.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "steerseg_ros"  # the ROS package: launch/, config/, the Python packages
# The helpers the test modules share (ros_processes, vlm_helpers) live in test/support.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
SHARED = Path(os.environ.get("STEERSEG_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
DAVIS = DATA / "davis16"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data not found at {path} (set STEERSEG_SHARED to the shared folder)")
    return path


@pytest.fixture(scope="session")
def davis_root() -> Path:
    """DAVIS 2016 val at 480p: JPEGImages/480p/<seq>/*.jpg, Annotations/480p/<seq>/*.png."""
    return _need(DAVIS)


@pytest.fixture(scope="session")
def davis_expressions(davis_root) -> dict:
    return json.loads((davis_root / "expressions.json").read_text())["videos"]


@pytest.fixture(scope="session")
def judo_root() -> Path:
    return _need(DATA / "cutie_judo")


@pytest.fixture(scope="session")
def bedroom_video() -> Path:
    return _need(DATA / "sam2_bedroom" / "bedroom.mp4")


def load_davis_frames(root: Path, seq: str, count: int, size: tuple[int, int]):
    """(Frames 30 fps apart, boolean masks) of a DAVIS sequence resized to `size` (width, height):
    what the trackers' tests feed them."""
    from steerseg_ros.frame import Frame

    _, images, masks = load_davis(root, seq, count)
    images = [cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in images]
    masks = [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 for m in masks]
    return [Frame(i, i * 33_333_333, im) for i, im in enumerate(images)], masks


def load_davis(root: Path, seq: str, count: int | None = None, step: int = 1):
    """(names, RGB frames, boolean ground-truth masks) of a DAVIS sequence."""
    from steerseg_testing.davis import load_sequence

    return load_sequence(root, seq, count, step)


# ---- the node over DDS ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def domain() -> int:
    """A random ROS domain per test module (ros_processes), so modules do not hear each other."""
    import ros_processes

    return ros_processes.random_domain_id()


@pytest.fixture
def recorder(domain):
    """The test's own DDS participant on `domain` (ros_processes.Recorder)."""
    import ros_processes

    r = ros_processes.Recorder(domain)
    yield r
    r.close()


# ---- model backends ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module: on the 2 shared cores of CI one thread is several
    times faster than two, and it fixes the order of arithmetic in concurrent tests."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sam2_checkpoint(tmp_path_factory) -> Path:
    """A tiny random SAM2 checkpoint (64 px input) saved to a folder, built once per run."""
    pytest.importorskip("transformers")
    from steerseg_testing.tiny_sam2 import save_random_sam2, tiny_config

    return save_random_sam2(tmp_path_factory.mktemp("sam2") / "tiny", tiny_config(64))
