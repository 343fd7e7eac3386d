"""An object's 3D estimate from its mask and the registered depth image: position, extent,
spread and surface points, robust to holes, flying pixels, occlusion edges and a mask that
spills onto the background, and how far off the position may be: the standard error of the
median and the mask-boundary term (how much the position moves when the mask's edge is a pixel
or two off, or when its pixels without depth are taken for the object).

Every 3D value is in the colour camera's optical frame (see depth.camera).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import cv2
import numpy as np

from steerseg_ros.depth.camera import CameraModel


@dataclass
class Object3D:
    """An object's 3D estimate in the camera's optical frame (metres).

    `n_valid` is the number of valid depth pixels the estimate used (a big mask is read on a
    grid, see EstimatorOptions.max_pixels). `position` is the per-axis median of the object's
    inlier surface points (the visible surface's centre, not the centre of the solid). `extent_min`/`extent_max` are the corners
    of a box from robust percentiles of those points, `size` its edge lengths. `std` is the
    per-axis robust spread (1.4826 x median absolute deviation). `stderr_axes` is the
    position's standard error per axis: the standard error of the median (independent pixels)
    and, added in quadrature, the mask-boundary term (EstimatorOptions.boundary_px: the largest
    move of the position when the mask's edge is that many pixels further in or out, plus the
    move when its pixels without usable depth are counted); `stderr` is their norm (metres).
    Measured on the synthetic RGB-D scene, the 3D error is within 2 x stderr on 90% or more of
    frames (test_depth_stderr.py); correlated depth noise (a sensor's bias over the whole
    object) is not in it. When `valid` is False, `reason` says why and the rest is zero.
    """

    valid: bool
    position: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    extent_min: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    extent_max: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    size: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    n_valid: int = 0
    std: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    stderr: float = 0.0
    reason: str = ""
    points: Optional[np.ndarray] = field(default=None, repr=False)
    stderr_axes: Tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class EstimatorOptions:
    """How `estimate_object_3d` picks a mask's inlier depth pixels."""

    erode_frac: float = 0.03        # erosion radius as a fraction of the mask box's shorter side
    erode_max_px: int = 6
    min_eroded_frac: float = 0.25   # keep the erosion only if it leaves this share of the mask (thin objects)
    edge_rel: float = 0.04          # a pixel whose depth differs from a 4-neighbour's by more than this
    edge_abs_m: float = 0.03        # fraction of its depth (and this many metres) is on a depth edge
    bin_rel: float = 0.01           # depth histogram bin: this fraction of the median depth ...
    bin_min_m: float = 0.005        # ... and at least this
    gap_rel: float = 0.05           # depth modes are separated by an empty stretch this long (relative) ...
    gap_min_m: float = 0.05         # ... and at least this
    empty_frac: float = 0.002       # a histogram bin with at most this share of the pixels counts as empty
    near_mode_frac: float = 0.3     # the nearest mode holding at least this share of the biggest one wins
    fill_holes: bool = True         # the object's pixels without usable depth count, on the inliers' plane
    fill_holes_in_mask: bool = False  # no-return pixels count in the whole mask (else only in its eroded core)
    reject_edges: bool = False      # drop depth-edge pixels from the position too (not only from the mode)
    percentiles: Tuple[float, float] = (5.0, 95.0)
    max_pixels: int = 4000          # bigger masks are read on a coarser grid, to bound the cost
    boundary_px: float = 2.0        # the mask's edge may be this many (mask) pixels off: its share of the stderr
    min_pixels: int = 10            # fewer valid inliers: invalid


def _invalid(reason: str, n: int = 0) -> Object3D:
    return Object3D(valid=False, n_valid=n, reason=reason)


def _bbox(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _depth_box(mask: np.ndarray, depth_shape: Tuple[int, int]) -> Optional[Tuple[int, int, int, int]]:
    """The mask's box (rows r0:r1, columns c0:c1) in depth pixels (covering it when the sizes
    differ), or None for an empty mask."""
    box = _bbox(mask)
    if box is None:
        return None
    if mask.shape == tuple(depth_shape):
        return box
    (mh, mw), (dh, dw) = mask.shape, depth_shape
    r0, r1, c0, c1 = box
    sy, sx = dh / mh, dw / mw
    return (int(math.floor(r0 * sy)), int(math.ceil(r1 * sy)), int(math.floor(c0 * sx)), int(math.ceil(c1 * sx)))


def _crop(mask: np.ndarray, depth_m: np.ndarray, y0: int, y1: int, x0: int, x1: int):
    """The depth's rows y0:y1 and columns x0:x1, and the mask resampled onto them."""
    if mask.shape == depth_m.shape:
        return depth_m[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    (mh, mw), (dh, dw) = mask.shape, depth_m.shape
    sy, sx = dh / mh, dw / mw
    # Nearest-neighbour sampling of the mask at each depth pixel's centre.
    ys = np.clip(((np.arange(y0, y1) + 0.5) / sy).astype(np.int64), 0, mh - 1)
    xs = np.clip(((np.arange(x0, x1) + 0.5) / sx).astype(np.int64), 0, mw - 1)
    return depth_m[y0:y1, x0:x1], mask[np.ix_(ys, xs)]


@dataclass
class _Inliers:
    """What the estimate is made of: `pts` (3xN inlier surface points), `filled` (3xM points for
    the object's pixels without usable depth, on the inliers' plane, or None), `n` (inlier
    pixels), and, for the mask-boundary term, the point sets the position would be the median
    of if the mask's edge were off: `inner` (bool over pts then filled: within the ring just
    inside the mask's edge), `outer` (3xK: the ring just outside it, in the object's depth band),
    `unknown` (3xU: the mask's other pixels without usable depth, on the plane); `ring_scale`
    turns a move for the ring read into one for EstimatorOptions.boundary_px."""

    pts: np.ndarray
    filled: Optional[np.ndarray]
    n: int
    inner: Optional[np.ndarray] = None
    on_edge: Optional[np.ndarray] = None
    outer: Optional[np.ndarray] = None
    unknown: Optional[np.ndarray] = None
    ring_scale: float = 1.0


def _inliers(mask: np.ndarray, depth_m: np.ndarray, camera: CameraModel, opt: EstimatorOptions,
             boundary: bool = False):
    """(_Inliers, "", n), or (None, reason, n). `boundary`: also the sets of the mask-boundary
    term (see _Inliers)."""
    m, depth_m, camera = _checked_inputs(mask, depth_m, camera)
    crop = _crop_on_grid(m, depth_m, opt, boundary)
    if crop is None:
        return None, "empty mask", 0
    d, mk, x0, y0, g, n_mask, ring = crop
    core = _eroded_core(mk, n_mask, opt)
    valid, edge, smooth = _depth_edges(d, opt)
    ys, xs = _mode_pixels(d, mk, core, edge, valid, opt)
    if ys.size < opt.min_pixels:
        return None, f"too few valid depth pixels in the mask ({ys.size} < {opt.min_pixels})", int(ys.size)
    if ys.size > opt.max_pixels:
        step = int(math.ceil(ys.size / opt.max_pixels))
        ys, xs = ys[::step], xs[::step]
    zlo, zhi = _near_mode_band(d[ys, xs], ys, xs, mk, core is mk, opt)

    # The position uses every valid mask pixel in that depth band, not only the eroded core's:
    # erosion eats thin parts (a neck, a handle) and would pull the median off the visible
    # surface's centre. Spill onto the background and most flying pixels fall outside the band.
    with np.errstate(invalid="ignore"):
        band = (d >= zlo) & (d <= zhi)
        if opt.reject_edges:
            band &= ~edge
    sel = mk & band
    ys, xs = np.nonzero(sel)
    n = int(ys.size)
    if n < opt.min_pixels:
        return None, f"too few depth inliers ({n} < {opt.min_pixels})", n
    holes = None
    if opt.fill_holes:
        # Pixels of the object with no usable depth: no return inside the mask's core, and
        # flying pixels (behind the object's band and continuous with no neighbour: mixed
        # returns along its silhouette, which on a thin part is most of it).
        with np.errstate(invalid="ignore"):
            holes = ((mk if opt.fill_holes_in_mask else core) & ~valid) | (mk & ~smooth & (d > zhi) & valid)
    rx, ry = camera.rays()
    grid = (g, x0, y0, rx, ry)
    n_holes = int(np.count_nonzero(holes)) if holes is not None else 0
    # One stride for depth pixels and holes alike keeps their shares (the median weighs them).
    step = int(math.ceil((n + n_holes) / opt.max_pixels)) if n + n_holes > opt.max_pixels else 1
    pts, plane = _back_project(d, ys[::step], xs[::step], grid, plane=True)
    filled = None
    if n_holes:
        hy, hx = np.nonzero(holes)
        filled = _on_plane(plane, hy[::step], hx[::step], grid, pts[2])
    found = _Inliers(pts, filled, int(pts.shape[1]))
    if ring is not None:
        _boundary_sets(found, d, mk, sel, valid & band, valid, edge, holes, ring, step, plane, grid)
    return found, "", found.n


def _boundary_sets(found: _Inliers, d, mk, sel, in_band, valid, edge, holes, ring, step, plane, grid) -> None:
    """The point sets of the mask-boundary term (see _Inliers), read with the same stride as the
    estimate's own points (`sel`: the inlier pixels, `holes`: the filled ones)."""
    width, found.ring_scale = ring
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    m8 = np.ascontiguousarray(mk).view(np.uint8)
    inner_px = mk & ~cv2.erode(m8, k, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)
    outer_px = cv2.dilate(m8, k).view(bool) & ~mk & in_band
    # Which of the estimate's points lie in the inner ring, in the order they were read.
    flags = [inner_px[sel][::step]]
    if found.filled is not None:
        flags.append(inner_px[holes][::step])
    found.inner = np.concatenate(flags)
    on_edge = [edge[sel][::step]]
    if found.filled is not None:
        on_edge.append(np.zeros(found.filled.shape[1], bool))
    found.on_edge = np.concatenate(on_edge)
    oy, ox = np.nonzero(outer_px)
    found.outer = _back_project(d, oy[::step], ox[::step], grid)
    unknown = mk & ~valid
    if holes is not None:
        unknown &= ~holes
    uy, ux = np.nonzero(unknown)
    if uy.size:
        found.unknown = _on_plane(plane, uy[::step], ux[::step], grid, found.pts[2])


def _checked_inputs(mask: np.ndarray, depth_m: np.ndarray, camera: CameraModel):
    """The mask as bool, the depth as float32 and the camera scaled to the depth's size; raises
    ValueError for shapes or sizes that do not fit."""
    mask = np.asarray(mask)
    depth_m = np.asarray(depth_m)
    if mask.ndim != 2 or depth_m.ndim != 2:
        raise ValueError(f"mask and depth must be 2-D, got {mask.shape} and {depth_m.shape}")
    if depth_m.dtype != np.float32:
        depth_m = depth_m.astype(np.float32)
    dh, dw = depth_m.shape
    if (dw, dh) != (camera.width, camera.height):
        camera = camera.scaled(dw, dh)  # raises ValueError for another aspect
    if mask.shape != depth_m.shape:
        mh, mw = mask.shape
        if not (abs(mw * dh / dw - mh) <= 1.0 and abs(mh * dw / dh - mw) <= 1.0):
            raise ValueError(f"mask size {mw}x{mh} is not the depth size {dw}x{dh} or the same aspect")
    m = mask if mask.dtype == bool else mask > 0
    return m, depth_m, camera


def _crop_on_grid(m: np.ndarray, depth_m: np.ndarray, opt: EstimatorOptions, boundary: bool = False):
    """The depth and mask cropped to the mask's box, read on a grid of stride g when the mask
    is big: (depth crop, mask crop, x0, y0, g, mask pixels on the grid, ring), or None for an
    empty mask. `ring` is None, or with `boundary` (width in grid cells, scale) of the
    mask-boundary term's ring (see _Inliers); the crop then reaches far enough around the mask
    for it, on the same grid."""
    box = _depth_box(m, depth_m.shape)
    if box is None:
        return None
    dh, dw = depth_m.shape
    r0, r1, c0, c1 = box
    y0, y1, x0, x1 = max(r0 - 1, 0), min(r1 + 1, dh), max(c0 - 1, 0), min(c1 + 1, dw)
    d, mk = _crop(m, depth_m, y0, y1, x0, x1)
    n_mask = int(np.count_nonzero(mk))
    if n_mask == 0:
        return None
    # A big mask is read on a regular grid (every g-th row and column: a lower-resolution depth
    # image of the same scene) so the cost stays bounded; a median over a few thousand pixels
    # is as good as over all of them.
    g = 1
    if n_mask > opt.max_pixels:
        g = int(math.ceil(math.sqrt(n_mask / opt.max_pixels)))
    ring = None
    if boundary and opt.boundary_px > 0:
        # The ring is read at least one grid cell wide; its move is scaled to boundary_px (a
        # ring's pull on the median grows with its width).
        cells = opt.boundary_px * (dw / m.shape[1]) / g
        width = max(1, int(round(cells)))
        ring = (width, cells / width)
        # Widened by whole grid cells (clipped at the image's edge to a whole number of them),
        # so the grid, and with it the estimate, stays the one the mask's box alone gives.
        k = width + 1
        y0, x0 = y0 - g * min(k, y0 // g), x0 - g * min(k, x0 // g)
        y1, x1 = min(y1 + g * k, dh), min(x1 + g * k, dw)
        d, mk = _crop(m, depth_m, y0, y1, x0, x1)
    if g > 1:
        d = np.ascontiguousarray(d[::g, ::g])
        mk = np.ascontiguousarray(mk[::g, ::g])
        n_mask = int(np.count_nonzero(mk))
    return d, mk, x0, y0, g, n_mask, ring


def _eroded_core(mk: np.ndarray, n_mask: int, opt: EstimatorOptions) -> np.ndarray:
    """The mask eroded, or the mask itself (the same object) when erosion would leave too little."""
    # Erode the mask so its edge (which spills onto whatever is behind) does not vote; a thin
    # object that erosion would wipe out keeps its whole mask and relies on the depth modes.
    b0, b1, b2, b3 = _bbox(mk)
    short = min(b1 - b0, b3 - b2)
    radius = min(opt.erode_max_px, int(round(opt.erode_frac * short)))
    core = mk
    if radius >= 1:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        eroded = cv2.erode(np.ascontiguousarray(mk).view(np.uint8), k, borderType=cv2.BORDER_CONSTANT,
                           borderValue=0).view(bool)
        if np.count_nonzero(eroded) >= opt.min_eroded_frac * n_mask:
            core = eroded
    return core


def _depth_edges(d: np.ndarray, opt: EstimatorOptions):
    """(valid, edge, smooth) per pixel: a usable depth; a depth jump against some 4-neighbour;
    continuity with some 4-neighbour."""
    # Depth edges: a pixel whose depth jumps against a 4-neighbour holds flying pixels (mixed
    # foreground/background returns) or sits on an occlusion boundary. NaN neighbours (holes)
    # do not count as edges (comparisons with NaN are False).
    with np.errstate(invalid="ignore"):
        valid = (d > 0) & (d < np.inf)  # a raw array may hold 0, NaN, inf or negatives for no return
        thr = np.maximum(opt.edge_rel * d, opt.edge_abs_m)
        edge = np.zeros(d.shape, dtype=bool)
        dx = np.abs(d[:, 1:] - d[:, :-1])
        dy = np.abs(d[1:, :] - d[:-1, :])
        ex = dx > np.minimum(thr[:, 1:], thr[:, :-1])
        ey = dy > np.minimum(thr[1:, :], thr[:-1, :])
        edge[:, 1:] |= ex
        edge[:, :-1] |= ex
        edge[1:, :] |= ey
        edge[:-1, :] |= ey
        # A flying pixel (a mixed return) jumps against every neighbour; a background pixel
        # next to the object jumps only towards it.
        smooth = np.zeros(d.shape, dtype=bool)
        cx = dx <= np.minimum(thr[:, 1:], thr[:, :-1])
        cy = dy <= np.minimum(thr[1:, :], thr[:-1, :])
        smooth[:, 1:] |= cx
        smooth[:, :-1] |= cx
        smooth[1:, :] |= cy
        smooth[:-1, :] |= cy
    return valid, edge, smooth


def _mode_pixels(d, mk, core, edge, valid, opt: EstimatorOptions):
    """(ys, xs) of the pixels that vote for the object's depth mode: the core's valid pixels
    off depth edges, or the mask's valid pixels when too few are left."""
    ys, xs = np.nonzero(core & ~edge & valid)
    if ys.size < opt.min_pixels:
        # Everything on an edge (a very thin or tiny object): use the valid mask pixels.
        ys, xs = np.nonzero(mk & valid)
    return ys, xs


def _near_mode_band(z, ys, xs, mk, whole_mask: bool, opt: EstimatorOptions):
    """(zlo, zhi): the depth band of the nearest dominant mode of depths `z` at pixels (ys, xs).
    `whole_mask`: the voters are the whole mask (erosion was not kept), so they are weighted by
    their distance inside it."""
    # The dominant near depth mode: a histogram of depth split at empty stretches; the nearest
    # mode with a good share of the pixels is the object (what lies behind it is the background
    # the mask spilled onto; a small near mode is noise or a thin occluder's edge).
    zmed = float(np.median(z))
    b = max(opt.bin_rel * zmed, opt.bin_min_m)
    zmin = float(z.min())
    nbins = int((float(z.max()) - zmin) / b) + 1
    if nbins > 4096:
        b = (float(z.max()) - zmin) / 4095.0
        nbins = 4096
    idx = ((z - zmin) / b).astype(np.int64)
    np.minimum(idx, nbins - 1, out=idx)
    counts = np.bincount(idx, minlength=nbins)
    occupied = np.flatnonzero(counts > opt.empty_frac * z.size)
    if occupied.size == 0:
        occupied = np.flatnonzero(counts)
    gap_bins = max(1, int(math.ceil(max(opt.gap_rel * zmed, opt.gap_min_m) / b)))
    breaks = np.flatnonzero(np.diff(occupied) > gap_bins)
    starts = np.concatenate([[occupied[0]], occupied[breaks + 1]])
    ends = np.concatenate([occupied[breaks], [occupied[-1]]])
    # Each mode's mass weighs its pixels by their distance inside the mask: a spill lies along
    # the mask's edge, the object under its middle (this matters for a thin object, whose
    # spill can outnumber it).
    # (Only needed where erosion kept the whole mask: an eroded core is already the middle.)
    if whole_mask:
        inside = cv2.distanceTransform(np.ascontiguousarray(mk).view(np.uint8), cv2.DIST_L2, 3)
        wcounts = np.bincount(idx, weights=inside[ys, xs], minlength=nbins)
    else:
        wcounts = counts.astype(np.float64)
    csum = np.concatenate([[0.0], np.cumsum(wcounts)])
    mass = csum[ends + 1] - csum[starts]
    pick = int(np.flatnonzero(mass >= opt.near_mode_frac * mass.max())[0])
    lo, hi = starts[pick], ends[pick]
    # Widened by half a gap: the eroded core may not reach the depths of the mask's thin parts.
    half_gap = 0.5 * gap_bins * b
    return zmin + lo * b - half_gap, zmin + (hi + 1) * b + half_gap


def _back_project(d, ys, xs, grid, plane: bool = False):
    """3xN points (one contiguous row per axis: the per-axis medians partition rows) of the crop
    pixels (ys, xs) at their depths; with `plane`, (points, the plane fitted to them: _plane)."""
    g, x0, y0, rx, ry = grid
    z = d[ys, xs]
    ys, xs = ys * g + y0, xs * g + x0
    pts = np.empty((3, ys.size), dtype=np.float32)
    pts[0] = rx[ys, xs]
    pts[1] = ry[ys, xs]
    coef = _plane(pts[0], pts[1], z) if plane else None
    pts[0] *= z
    pts[1] *= z
    pts[2] = z
    return (pts, coef) if plane else pts


def _plane(xn: np.ndarray, yn: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(a, b, c) of the plane Z = a + b x + c y over the normalised rays (xn, yn), fitted to the
    depths z by least squares (its 3x3 normal equations)."""
    x64, y64, z64 = xn.astype(np.float64), yn.astype(np.float64), z.astype(np.float64)
    sx, sy, sxx, syy, sxy = x64.sum(), y64.sum(), x64 @ x64, y64 @ y64, x64 @ y64
    ata = np.array([[z64.size, sx, sy], [sx, sxx, sxy], [sy, sxy, syy]])
    atb = np.array([z64.sum(), x64 @ z64, y64 @ z64])
    try:
        return np.linalg.solve(ata, atb)
    except np.linalg.LinAlgError:  # all inliers on one ray line: a constant depth
        return np.array([float(np.median(z64)), 0.0, 0.0])


def _on_plane(coef: np.ndarray, hy, hx, grid, z: np.ndarray) -> np.ndarray:
    """Points (3xM) for crop pixels (hy, hx) without usable depth, on the inliers' plane `coef`
    (depths clipped to the inliers' range `z`): a hole over part of the object would otherwise
    pull the median towards the part that has depth."""
    g, x0, y0, rx, ry = grid
    hy, hx = hy * g + y0, hx * g + x0
    out = np.empty((3, hy.size), dtype=np.float32)
    out[0] = rx[hy, hx]
    out[1] = ry[hy, hx]
    zh = coef[0] + coef[1] * out[0] + coef[2] * out[1]
    np.clip(zh, z.min(), z.max(), out=out[2])
    out[0] *= out[2]
    out[1] *= out[2]
    return out


def estimate_object_3d(mask: np.ndarray, depth_m: np.ndarray, camera: CameraModel,
                       max_points: int = 0, options: Optional[EstimatorOptions] = None,
                       **overrides) -> Object3D:
    """The 3D position, extent and spread of the object under `mask` (HxW bool, or nonzero)
    in `depth_m` (float32 metres, NaN for no return, registered to the colour camera).

    Mask, depth and camera may be at different sizes of the same aspect (the mask is sampled
    at the depth pixels, the camera scaled to the depth size). Robust to holes (NaN/0), flying
    pixels and occlusion edges (depth-gradient rejection), a mask edge spilling onto the
    background (erosion, and the nearest dominant depth mode), thin objects (erosion falls
    back to the whole mask). Back-projects through the camera model with its distortion.
    `max_points` > 0 also returns up to that many inlier points in `.points`.
    Keyword overrides set `EstimatorOptions` fields. Raises ValueError for sizes that do not
    match; returns an invalid Object3D (with its reason) when the mask has too little depth.
    """
    opt = options or EstimatorOptions()
    if overrides:
        opt = EstimatorOptions(**{**opt.__dict__, **overrides})
    found, reason, n = _inliers(mask, depth_m, camera, opt, boundary=True)
    if found is None:
        return _invalid(reason, n)
    pts, filled, n = found.pts, found.filled, found.n
    # Pixels without usable depth (filled on the inliers' plane) count for where the object is
    # and how big, not for the spread (they add none) or n_valid.
    every = pts if filled is None else np.concatenate([pts, filled], axis=1)
    pos = np.median(every, axis=1)
    lo, hi = np.percentile(every, opt.percentiles, axis=1)
    sigma = 1.4826 * np.median(np.abs(pts - pos[:, None]), axis=1)
    # Standard error of a median: sqrt(pi/2) sigma / sqrt(n) per axis.
    stderr_axes = np.hypot(1.2533 * sigma / math.sqrt(n), _boundary_error(found, every, pos))
    obj = Object3D(valid=True, position=tuple(float(v) for v in pos), extent_min=tuple(float(v) for v in lo),
                   extent_max=tuple(float(v) for v in hi), size=tuple(float(v) for v in hi - lo),
                   n_valid=n, std=tuple(float(v) for v in sigma), stderr=float(np.linalg.norm(stderr_axes)),
                   stderr_axes=tuple(float(v) for v in stderr_axes))
    if max_points > 0:
        obj.points = _downsample(pts, max_points)
    return obj


def _boundary_error(found: _Inliers, every: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The mask-boundary term per axis (zeros without one): how far the position (the median of
    `every`) moves when the mask's edge is off. The mask a tracker or a grounding gives is right
    to a pixel or two at best, and which of its pixels without depth are the object is a guess;
    the pixels that would join or leave move the median, most for a thin object (whose pixels
    are mostly edge) or one partly without depth. The largest move of: the inner ring leaving
    (the edge further in) and the outer ring's pixels in the object's depth band joining
    (further out), both scaled to EstimatorOptions.boundary_px, and the pixels on a depth edge
    leaving (mixed returns); in quadrature with the move when the mask's other pixels without
    depth join on the object's plane."""
    if found.inner is None:
        return np.zeros(3)
    # A median moves by rank: d points leaving below it (and u above) move it (d - u) / 2 places
    # up the sorted values, as many joining above (below) do. Reading those order statistics
    # costs one partial sort per axis, not a median of each changed set (a point that joins
    # between the old and the new median is not counted: a small error, in a small term).
    below, above = every < pos[:, None], every > pos[:, None]

    def leaving(flags: np.ndarray) -> np.ndarray:
        return (np.count_nonzero(below & flags, axis=1) - np.count_nonzero(above & flags, axis=1)) / 2.0

    def joining(points: Optional[np.ndarray]) -> np.ndarray:
        if points is None or points.shape[1] == 0:
            return np.zeros(3)
        return (np.count_nonzero(points > pos[:, None], axis=1) - np.count_nonzero(points < pos[:, None], axis=1)) / 2.0

    ring = [leaving(found.inner), joining(found.outer)]
    shifts = np.stack(ring + [leaving(found.on_edge), joining(found.unknown)])  # 4 x 3 rank moves
    n = every.shape[1]
    mid = (n - 1) // 2
    ranks = np.clip(mid + np.rint(shifts).astype(np.int64), 0, n - 1)
    moves = np.empty((4, 3))
    for axis in range(3):
        kth = np.unique(np.append(ranks[:, axis], mid))
        values = np.partition(every[axis], kth)
        moves[:, axis] = np.abs(values[ranks[:, axis]] - values[mid])
    edge = np.maximum(found.ring_scale * np.maximum(moves[0], moves[1]), moves[2])
    return np.hypot(edge, moves[3])


def _downsample(pts: np.ndarray, max_points: int) -> np.ndarray:
    """(N, 3) float32 from 3xN points, at most max_points of them, evenly spread."""
    if pts.shape[1] > max_points:
        pts = pts[:, np.linspace(0, pts.shape[1] - 1, max_points).round().astype(np.int64)]
    return np.ascontiguousarray(pts.T)


def object_points(mask: np.ndarray, depth_m: np.ndarray, camera: CameraModel, max_points: int = 2000,
                  options: Optional[EstimatorOptions] = None) -> np.ndarray:
    """The object's inlier surface points (the ones `estimate_object_3d` uses) as an (N, 3)
    float32 array in the camera's optical frame, N <= max_points (evenly subsampled);
    (0, 3) when there are none."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    found, _, _ = _inliers(mask, depth_m, camera, options or EstimatorOptions())
    if found is None:
        return np.zeros((0, 3), dtype=np.float32)
    return _downsample(found.pts, max_points)
