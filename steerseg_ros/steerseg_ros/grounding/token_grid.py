"""Where each visual token of a Qwen-VL model looks: token index -> (t, h, w) -> image pixels.

Owns `VisualGrid`, the LLM-token layout of one image or video item. A Qwen-VL vision tower cuts
the resized input into patch_size x patch_size patches (14 px for Qwen2/2.5-VL, 16 px for
Qwen3-VL), stacks temporal_patch_size consecutive frames into one patch (2; an image is its own
pair), and merges spatial_merge_size x spatial_merge_size neighbouring patches into one LLM
token. The LLM sees the tokens time step by time step, each step row by row: token k of an item
is at t = k // (h*w), row = (k // w) % h, column = k % w. Qwen2.5-VL's windowed vision attention
reorders tokens inside the tower and restores this order at its output; Qwen3-VL puts timestamp
text between the time steps of a video, which changes the sequence positions but not the order
of the visual tokens.

Because the model input is the whole image stretched to the resized size, token cell (r, c)
covers the same fraction of the original image: [c*W/w, (c+1)*W/w) x [r*H/h, (r+1)*H/h).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VisualGrid:
    """LLM token layout of one visual item.

    t, h, w: time steps, token rows and token columns. frames_per_step: input frames per time
    step (the temporal patch size for a video, 1 for an image). num_frames: real input frames
    (a video with an odd count is padded by repeating its last frame). pixel_hw: the (H, W) the
    item was resized to. cell_px: pixels of that resized input per token side.
    """

    t: int
    h: int
    w: int
    frames_per_step: int
    num_frames: int
    pixel_hw: tuple[int, int]
    cell_px: int

    @classmethod
    def from_patch_grid(cls, grid_thw: tuple[int, int, int], patch_size: int, merge_size: int,
                        temporal_patch_size: int, pixel_hw: tuple[int, int], num_frames: int) -> "VisualGrid":
        """From the processor's (t, h, w) patch grid (`image_grid_thw` / `video_grid_thw` row)."""
        gt, gh, gw = grid_thw
        if gh % merge_size or gw % merge_size:
            raise ValueError(f"patch grid {gh}x{gw} is not a multiple of the merge size {merge_size}")
        return cls(int(gt), gh // merge_size, gw // merge_size, temporal_patch_size, num_frames,
                   tuple(pixel_hw), patch_size * merge_size)

    @property
    def num_tokens(self) -> int:
        return self.t * self.h * self.w

    def token_thw(self) -> np.ndarray:
        """(num_tokens, 3) int: the (t, row, column) of each token, in the model's token order."""
        t, r, c = np.meshgrid(np.arange(self.t), np.arange(self.h), np.arange(self.w), indexing="ij")
        return np.stack([t.ravel(), r.ravel(), c.ravel()], axis=1)

    def frames_of_step(self, step: int) -> range:
        """Indices of the real input frames a time step covers."""
        first = step * self.frames_per_step
        return range(first, min(first + self.frames_per_step, self.num_frames))

    def cell_box(self, row: int, col: int, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of token cell (row, col) in an original image of (width, height)."""
        width, height = image_size
        return (col * width / self.w, row * height / self.h, (col + 1) * width / self.w, (row + 1) * height / self.h)

    def resized_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of token cell (row, col) in the resized model input, in pixels."""
        s = self.cell_px
        return col * s, row * s, (col + 1) * s, (row + 1) * s

    def to_volume(self, values) -> np.ndarray:
        """Per-token values in model order (num_tokens,) -> (t, h, w)."""
        values = np.asarray(values)
        if values.shape[0] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} token values, got {values.shape[0]}")
        return values.reshape(self.t, self.h, self.w)
