"""Tiny Qwen-VL checkpoints shared by the test_vlm_* files: built once per test run (a few MB
each, about two seconds in all), saved to a temporary folder and loaded back through the same
code users run."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@functools.lru_cache(maxsize=1)
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="steerseg_vlm_tests_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.lru_cache(maxsize=1)
def tokenizer():
    from steerseg_testing.tiny_vlm import build_tokenizer

    return build_tokenizer()


@functools.lru_cache(maxsize=None)
def checkpoint(family: str) -> Path:
    """Folder of a tiny random `family` checkpoint (model, tokenizer, image processor, template)."""
    from steerseg_testing.tiny_vlm import build_tiny_checkpoint

    return build_tiny_checkpoint(_root() / family, family, tokenizer=tokenizer())


@functools.lru_cache(maxsize=None)
def grounder(family: str, mode: str = "decaf"):
    """A VLMGrounder on the tiny `family` checkpoint with a small token budget and short answers
    (a random model rarely stops on its own: DecAF's 128 answer tokens would only cost time)."""
    from steerseg_ros.grounding.vlm import VLMGrounder, VLMGrounderConfig

    return VLMGrounder(VLMGrounderConfig(model=str(checkpoint(family)), mode=mode, video_tokens_per_pair=48,
                                         cot_tokens=8, answer_tokens=6))


def random_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
