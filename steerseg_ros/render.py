"""Drawing what the node publishes: the label mask image and the overlay image for RViz.

Owns the colour of each track id and the label value of each track in the mask image.
"""
from __future__ import annotations

import colorsys
from typing import Iterable, Protocol

import cv2
import numpy as np


class Drawable(Protocol):
    id: int
    label_value: int
    label: str
    score: float
    mask: np.ndarray


def label_value(track_id: int) -> int:
    """Value of a track's pixels in the mono8 label image: 1..255, 0 is background."""
    return (track_id - 1) % 255 + 1


def colour_bgr(track_id: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per id (golden-ratio hue steps)."""
    hue = (track_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def label_image(shape: tuple[int, int], tracks: Iterable[Drawable]) -> np.ndarray:
    """HxW uint8: 0 background, each track's mask painted with its label value (in order)."""
    out = np.zeros(shape, np.uint8)
    for t in tracks:
        if t.mask is not None:
            out[t.mask] = t.label_value
    return out


def overlay(image_rgb: np.ndarray, tracks: Iterable[Drawable], alpha: float = 0.5) -> np.ndarray:
    """The camera image (BGR out) with masks tinted, outlined, and labelled '#id label score'."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    for t in tracks:
        if t.mask is None or not t.mask.any():
            continue
        colour = colour_bgr(t.id)
        m = t.mask
        out[m] = (out[m] * (1 - alpha) + np.array(colour, np.float32) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, 2, cv2.LINE_AA)
        ys, xs = np.nonzero(m)
        x, y = int(xs.min()), max(int(ys.min()) - 6, 14)
        text = f"#{t.id} {t.label} {t.score:.2f}".strip()
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    return out
