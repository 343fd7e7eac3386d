"""Drawing what the node publishes: the label mask image and the overlay image for RViz.

Owns the colour of each track id, the label value of each track in the mask image, and the
overlay drawn either from the tracks' own masks (offline tools) or from the label mask and the
tracks (the nodes: what the drawing node receives is all it needs).
"""
from __future__ import annotations

import colorsys
from typing import Iterable, Optional, Protocol

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


def label_image(shape: tuple[int, int], tracks: Iterable[Drawable], out: Optional[np.ndarray] = None) -> np.ndarray:
    """HxW uint8: 0 background, each track's mask painted with its label value (in order).
    `out`: an HxW uint8 array to paint into (e.g. the memory of the message that will carry it)."""
    if out is None:
        out = np.zeros(shape, np.uint8)
    else:
        if out.shape != tuple(shape) or out.dtype != np.uint8:
            raise ValueError(f"out must be a {tuple(shape)} uint8 array, got {out.dtype} {out.shape}")
        out.fill(0)
    for t in tracks:
        if t.mask is not None:
            np.copyto(out, t.label_value, where=t.mask)
    return out


def mask_u8(mask: np.ndarray) -> np.ndarray:
    """An HxW uint8 0/1 view of a boolean mask (a copy only when the mask is not contiguous
    bool), the form OpenCV's mask functions take."""
    if mask.dtype == bool and mask.flags.c_contiguous:
        return mask.view(np.uint8)
    return (np.asarray(mask) != 0).astype(np.uint8)


def mask_geometry(mask: np.ndarray) -> tuple[int, tuple[int, int, int, int], tuple[float, float]]:
    """(area, (x, y, width, height) of the bounding box, (x, y) centroid) of a mask; zeros when
    it is empty. OpenCV's boundingRect and moments, several times faster than np.nonzero on a
    camera-sized mask (this runs for every track on every frame)."""
    m = mask_u8(mask)
    x, y, w, h = cv2.boundingRect(m)
    if w == 0:
        return 0, (0, 0, 0, 0), (0.0, 0.0)
    moments = cv2.moments(m[y:y + h, x:x + w], binaryImage=True)
    area = moments["m00"]
    return int(area), (x, y, w, h), (x + moments["m10"] / area, y + moments["m01"] / area)


class Labelled(Protocol):
    """What the overlay needs of a track drawn from a label image: a Track message or a
    TrackView both fit."""
    id: int
    label_value: int
    label: str
    score: float


def overlay(image_rgb: np.ndarray, tracks: Iterable[Drawable], alpha: float = 0.5,
            out: Optional[np.ndarray] = None) -> np.ndarray:
    """The camera image (BGR out) with masks tinted, outlined, and labelled '#id label score'.
    Each track is drawn inside its mask's bounding box only, which keeps the cost per frame a
    small fraction of a tracker step. `out`: an HxWx3 uint8 array to draw into (e.g. the
    memory of the message that will carry it), else a new one."""
    out = _bgr_copy(image_rgb, out)
    for t in tracks:
        if t.mask is not None:
            _draw_track(out, mask_u8(t.mask), t, alpha)
    return out


def overlay_labels(image_rgb: np.ndarray, labels: np.ndarray, tracks: Iterable[Labelled], alpha: float = 0.5,
                   out: Optional[np.ndarray] = None) -> np.ndarray:
    """The overlay drawn from what the node publishes: the camera image, the label mask (each
    track's pixels hold its label_value) and the tracks to draw. Both the tracker node (drawing
    in its own process) and the drawing node call this, so the two give the same pixels."""
    if labels.shape != image_rgb.shape[:2]:
        raise ValueError(f"the label image is {labels.shape[1]}x{labels.shape[0]}, "
                         f"the camera image {image_rgb.shape[1]}x{image_rgb.shape[0]}")
    out = _bgr_copy(image_rgb, out)
    for t in tracks:
        _draw_track(out, (labels == t.label_value).view(np.uint8), t, alpha)
    return out


def _bgr_copy(image_rgb: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    if out is not None and (out.shape != image_rgb.shape or out.dtype != np.uint8):
        raise ValueError(f"out must be a {image_rgb.shape} uint8 array, got {out.dtype} {out.shape}")
    return cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR, dst=out)


def _draw_track(out: np.ndarray, m: np.ndarray, t: Labelled, alpha: float) -> None:
    """Tint, outline and label one track's mask `m` (HxW uint8 0/1) in `out`, in place."""
    x, y, w, h = cv2.boundingRect(m)
    if w == 0:
        return
    colour = colour_bgr(t.id)
    roi = out[y:y + h, x:x + w]
    inside = m[y:y + h, x:x + w]
    tint = np.empty_like(roi)
    tint[:] = colour
    cv2.addWeighted(roi, 1.0 - alpha, tint, alpha, 0.0, dst=tint)
    cv2.copyTo(tint, inside, roi)  # writes through the view into `out`
    contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
    # LINE_8, not LINE_AA: antialiasing a long outline costs more than the rest together.
    cv2.drawContours(out, contours, -1, colour, 2, cv2.LINE_8)
    text = f"#{t.id} {t.label} {t.score:.2f}".replace("  ", " ")
    org = (x, max(y - 6, 14))
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
