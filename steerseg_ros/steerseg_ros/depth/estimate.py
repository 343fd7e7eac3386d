"""Depth and 3D: the colour camera's model, depth images in metres, depth-to-colour pairing by
stamp, and an object's 3D position, extent and points from its mask and the registered depth.

ROS-free (numpy + OpenCV): the node's ROS layer turns `sensor_msgs/CameraInfo` and depth
`Image` messages into the plain values these functions take, and the offline tools and tests
use the same code.

Frames: every 3D value is in the colour camera's optical frame (x right, y down, z forward,
metres), as `sensor_msgs/CameraInfo` defines it. Depth images are Z-depth (distance along the
optical axis), registered to the colour camera, as RGB-D drivers publish them.
"""
from __future__ import annotations

import bisect
import functools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")
# Coefficient counts OpenCV accepts for the pinhole models (k1 k2 p1 p2 [k3 [k4 k5 k6 [s1..s4 [tx ty]]]]).
_PINHOLE_D_LENGTHS = (4, 5, 8, 12, 14)
DEPTH_ENCODINGS = ("16UC1", "32FC1")


# --------------------------------------------------------------------------------------------
# Camera model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class CameraModel:
    """The colour camera's intrinsics and distortion (as in `sensor_msgs/CameraInfo`).

    `K` is 3x3 float64, `D` the distortion coefficients in OpenCV's order (for
    "equidistant": k1..k4, OpenCV's fisheye model). Both arrays are read-only.
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    distortion_model: str = "plumb_bob"
    frame_id: str = ""

    def __post_init__(self):
        K = np.array(self.K, dtype=np.float64).reshape(3, 3)
        D = np.array(self.D, dtype=np.float64).reshape(-1)
        K.setflags(write=False)
        D.setflags(write=False)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "D", D)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        _validate_camera(self)

    @classmethod
    def from_camera_info_fields(cls, width: int, height: int, k: Sequence[float], d: Sequence[float],
                                distortion_model: str, frame_id: str = "") -> "CameraModel":
        """From `sensor_msgs/CameraInfo` fields (`k` is the 9 row-major values of K).

        An empty `d` (drivers of already rectified cameras publish one) means no distortion,
        as in ROS's image_geometry. Raises ValueError with the reason for a model that cannot
        be used (zero or non-finite K, zero size, a D length the model does not have, an
        unknown distortion model).
        """
        k = np.asarray(list(k), dtype=np.float64)
        if k.size != 9:
            raise ValueError(f"camera_info K must have 9 values, got {k.size}")
        d = np.asarray(list(d), dtype=np.float64)
        model = str(distortion_model).strip()
        if d.size == 0:
            # No distortion: store it as the plain pinhole model with zero coefficients.
            d = np.zeros(4 if model == "equidistant" else 5)
            if model in ("", "none"):
                model = "plumb_bob"
        return cls(width=width, height=height, K=k.reshape(3, 3), D=d, distortion_model=model,
                   frame_id=str(frame_id))

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def has_distortion(self) -> bool:
        return bool(np.any(self.D != 0.0))

    def key(self) -> tuple:
        """A hashable identity (for caches)."""
        return (self.width, self.height, self.K.tobytes(), self.D.tobytes(), self.distortion_model)

    def same_aspect(self, width: int, height: int) -> bool:
        """Whether an image of `width` x `height` is this camera's image, scaled (to 1 pixel)."""
        if width <= 0 or height <= 0:
            return False
        return (abs(width * self.height / self.width - height) <= 1.0
                and abs(height * self.width / self.height - width) <= 1.0)

    def scaled(self, width: int, height: int) -> "CameraModel":
        """The same camera for an image of the same aspect at another size (a depth image
        published at half resolution, say). Distortion acts on normalised coordinates, so D is
        unchanged; K scales about the pixel corners (the half-pixel convention OpenCV's resize
        uses)."""
        width, height = int(width), int(height)
        if (width, height) == (self.width, self.height):
            return self
        if not self.same_aspect(width, height):
            raise ValueError(f"image size {width}x{height} is not the camera's {self.width}x{self.height} "
                             "or the same aspect scaled")
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[0, 1] *= sx
        K[1, 1] *= sy
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return CameraModel(width=width, height=height, K=K, D=self.D.copy(),
                           distortion_model=self.distortion_model, frame_id=self.frame_id)

    def without_distortion(self) -> "CameraModel":
        return CameraModel(width=self.width, height=self.height, K=self.K.copy(), D=np.zeros_like(self.D),
                           distortion_model=self.distortion_model, frame_id=self.frame_id)

    def rays(self) -> Tuple[np.ndarray, np.ndarray]:
        """Per-pixel normalised, undistorted coordinates (x/z, y/z) as two HxW float32 arrays:
        pixel (u, v) with depth z is the point (x[v, u] * z, y[v, u] * z, z). Computed once per
        camera with OpenCV's undistortion and cached: per frame, back-projection is a lookup."""
        return _rays(self.key())

    def project(self, points: np.ndarray) -> np.ndarray:
        """Project Nx3 camera-frame points to Nx2 pixels through the distorted model."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 1, 3)
        if pts.shape[0] == 0:
            return np.zeros((0, 2))
        zero = np.zeros(3)
        if self.distortion_model == "equidistant":
            uv, _ = cv2.fisheye.projectPoints(pts, zero, zero, self.K, self.D)
        else:
            uv, _ = cv2.projectPoints(pts, zero, zero, self.K, self.D)
        return uv.reshape(-1, 2)

    def undistort_pixels(self, uv: np.ndarray) -> np.ndarray:
        """Nx2 pixels to Nx2 normalised undistorted coordinates (x/z, y/z)."""
        pts = np.ascontiguousarray(np.asarray(uv, dtype=np.float64).reshape(-1, 1, 2))
        if pts.shape[0] == 0:
            return np.zeros((0, 2))
        if self.distortion_model == "equidistant":
            out = cv2.fisheye.undistortPoints(pts, self.K, self.D)
        elif not self.has_distortion:
            out = cv2.undistortPoints(pts, self.K, None)
        else:
            # The default 5 iterations leave millimetres of error at the corners of a strongly
            # distorted lens; iterate to convergence (this runs once per camera, see rays()).
            criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)
            out = cv2.undistortPoints(pts, self.K, self.D, None, None, None, criteria)
        return out.reshape(-1, 2)


def _validate_camera(cam: CameraModel) -> None:
    if cam.width <= 0 or cam.height <= 0:
        raise ValueError(f"camera_info size must be positive, got {cam.width}x{cam.height}")
    if not np.all(np.isfinite(cam.K)):
        raise ValueError(f"camera_info K has non-finite values: {cam.K.reshape(-1).tolist()}")
    if not (cam.K[0, 0] > 0 and cam.K[1, 1] > 0):
        raise ValueError(f"camera_info K has a zero or negative focal length (fx={cam.K[0, 0]}, fy={cam.K[1, 1]}): "
                         "an uncalibrated camera publishes K all zeros")
    if not (cam.K[2, 2] == 1.0 and cam.K[2, 0] == 0.0 and cam.K[2, 1] == 0.0):
        raise ValueError(f"camera_info K's last row must be [0, 0, 1], got {cam.K[2].tolist()}")
    if not np.all(np.isfinite(cam.D)):
        raise ValueError(f"camera_info D has non-finite values: {cam.D.tolist()}")
    n = cam.D.size
    if cam.distortion_model == "equidistant":
        if n != 4:
            raise ValueError(f"camera_info D for 'equidistant' must have 4 values (k1..k4), got {n}")
    elif cam.distortion_model == "plumb_bob":
        if n not in (4, 5):
            raise ValueError(f"camera_info D for 'plumb_bob' must have 5 values (k1 k2 p1 p2 k3), got {n}")
    elif cam.distortion_model == "rational_polynomial":
        if n not in (8, 12, 14):
            raise ValueError(f"camera_info D for 'rational_polynomial' must have 8 values "
                             f"(k1 k2 p1 p2 k3 k4 k5 k6), got {n}")
    else:
        raise ValueError(f"camera_info distortion model {cam.distortion_model!r} is not supported "
                         f"(one of {', '.join(DISTORTION_MODELS)})")


@functools.lru_cache(maxsize=8)
def _rays(key: tuple) -> Tuple[np.ndarray, np.ndarray]:
    width, height, kb, db, model = key
    cam = CameraModel(width=width, height=height, K=np.frombuffer(kb, dtype=np.float64).reshape(3, 3),
                      D=np.frombuffer(db, dtype=np.float64), distortion_model=model)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    xy = cam.undistort_pixels(np.stack([u.ravel(), v.ravel()], axis=1))
    x = xy[:, 0].reshape(height, width).astype(np.float32)
    y = xy[:, 1].reshape(height, width).astype(np.float32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


# --------------------------------------------------------------------------------------------
# Depth images
# --------------------------------------------------------------------------------------------

def depth_to_metres(array: np.ndarray, encoding: str) -> np.ndarray:
    """A depth image as HxW float32 metres, with no-return pixels (0, NaN, inf, negative) NaN.

    "16UC1" is millimetres (0 = no return), "32FC1" metres (the REP 118 encodings). Raises
    ValueError for another encoding or a wrong shape or dtype.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise ValueError(f"depth image must be HxW (one channel), got shape {a.shape}")
    if encoding == "16UC1":
        if a.dtype != np.uint16:
            raise ValueError(f"16UC1 depth must be uint16, got {a.dtype}")
        out = a.astype(np.float32) * np.float32(0.001)
        out[a == 0] = np.nan
        return out
    if encoding == "32FC1":
        if a.dtype != np.float32:
            raise ValueError(f"32FC1 depth must be float32, got {a.dtype}")
        out = a.astype(np.float32, copy=True)
        out[~(np.isfinite(out) & (out > 0))] = np.nan
        return out
    raise ValueError(f"depth encoding {encoding!r} is not supported (one of {', '.join(DEPTH_ENCODINGS)}: "
                     "16UC1 millimetres or 32FC1 metres)")


# --------------------------------------------------------------------------------------------
# Pairing depth with colour by stamp
# --------------------------------------------------------------------------------------------

class DepthPairer:
    """Pairs each colour frame with the depth frame of the same stamp, or the nearest one
    within `tolerance_ns`; each depth frame pairs at most once.

    Written by hand because `message_filters` (whose ApproximateTimeSynchronizer is the
    reference for these semantics) is not installable on these machines: it ships with ROS
    distributions, not on PyPI. This is the small part the node needs: a bounded queue of
    depth frames sorted by stamp, and a lookup that can wait a little for a late depth frame.

    Stamps are assumed to rise on each stream (as a camera driver publishes them); a depth
    frame older than a colour frame already served minus the tolerance can never pair and is
    dropped (`depth_unpaired`); a full queue drops its oldest (`depth_dropped_full`).
    """

    COUNTERS = ("paired_exact", "paired_nearest", "colour_unpaired", "depth_unpaired", "depth_dropped_full")

    def __init__(self, tolerance_ns: int = 20_000_000, capacity: int = 30, idle_s: float = 1.0):
        if tolerance_ns < 0:
            raise ValueError(f"tolerance_ns must be >= 0, got {tolerance_ns}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.tolerance_ns = int(tolerance_ns)
        self.capacity = int(capacity)
        self._stamps: list = []
        self._frames: list = []
        self._last_colour_ns: Optional[int] = None
        # No depth for idle_s seconds (wall clock): the stream is off, and take() does not wait
        # for it (a colour frame must not pay the timeout when the depth camera is gone).
        self.idle_s = float(idle_s)
        self._last_add: Optional[float] = None
        self._cond = threading.Condition()
        self._counters: Dict[str, int] = {name: 0 for name in self.COUNTERS}

    def __len__(self) -> int:
        with self._cond:
            return len(self._stamps)

    @property
    def counters(self) -> Dict[str, int]:
        with self._cond:
            return dict(self._counters)

    def add(self, stamp_ns: int, depth) -> None:
        """Queue a depth frame (any object: an array, a message) under its stamp."""
        stamp_ns = int(stamp_ns)
        with self._cond:
            self._last_add = time.monotonic()
            if self._last_colour_ns is not None and stamp_ns < self._last_colour_ns - self.tolerance_ns:
                # Too old for any colour frame still to come.
                self._counters["depth_unpaired"] += 1
                return
            i = bisect.bisect_right(self._stamps, stamp_ns)
            if i > 0 and self._stamps[i - 1] == stamp_ns:
                self._frames[i - 1] = depth  # a repeated stamp replaces the frame
                self._cond.notify_all()
                return
            self._stamps.insert(i, stamp_ns)
            self._frames.insert(i, depth)
            while len(self._stamps) > self.capacity:
                self._stamps.pop(0)
                self._frames.pop(0)
                self._counters["depth_dropped_full"] += 1
            self._cond.notify_all()

    def take(self, colour_stamp_ns: int, timeout_s: float = 0.0):
        """The depth frame for the colour frame stamped `colour_stamp_ns`, or None (the frame
        goes on in 2D). Waits up to `timeout_s` while the best partner may still arrive: until
        the exact stamp is there or a depth frame at or after the colour stamp has come (later
        ones can only be farther). Does not wait when no depth frame came in the last `idle_s`
        seconds (no depth stream)."""
        t = int(colour_stamp_ns)
        with self._cond:
            live = self._last_add is not None and time.monotonic() - self._last_add <= self.idle_s
            if timeout_s > 0 and live:
                self._cond.wait_for(lambda: bool(self._stamps) and self._stamps[-1] >= t, timeout=timeout_s)
            best = self._nearest(t)
            if self._last_colour_ns is None or t > self._last_colour_ns:
                self._last_colour_ns = t
            if best is None:
                self._counters["colour_unpaired"] += 1
                self._drop_stale(t)
                return None
            stamp = self._stamps.pop(best)
            depth = self._frames.pop(best)
            self._counters["paired_exact" if stamp == t else "paired_nearest"] += 1
            self._drop_stale(t)
            return depth

    def _nearest(self, t: int) -> Optional[int]:
        if not self._stamps:
            return None
        i = bisect.bisect_left(self._stamps, t)
        best, best_dt = None, None
        for j in (i - 1, i):
            if 0 <= j < len(self._stamps):
                dt = abs(self._stamps[j] - t)
                if dt <= self.tolerance_ns and (best_dt is None or dt < best_dt):
                    best, best_dt = j, dt
        return best

    def _drop_stale(self, t: int) -> None:
        limit = t - self.tolerance_ns
        n = bisect.bisect_left(self._stamps, limit)
        if n:
            del self._stamps[:n]
            del self._frames[:n]
            self._counters["depth_unpaired"] += n

    def clear(self) -> None:
        with self._cond:
            self._stamps.clear()
            self._frames.clear()
            self._last_colour_ns = None


# --------------------------------------------------------------------------------------------
# An object in 3D
# --------------------------------------------------------------------------------------------

@dataclass
class Object3D:
    """An object's 3D estimate in the camera's optical frame (metres).

    `n_valid` is the number of valid depth pixels the estimate used (a big mask is read on a
    grid, see EstimatorOptions.max_pixels). `position` is the per-axis median of the object's
    inlier surface points (the visible surface's centre, not the centre of the solid). `extent_min`/`extent_max` are the corners
    of a box from robust percentiles of those points, `size` its edge lengths. `std` is the
    per-axis robust spread (1.4826 x median absolute deviation) and `stderr` the standard error
    of the position (metres, the norm of the per-axis standard errors of the medians; it
    assumes independent pixels, so it is optimistic for correlated depth noise: gate on it
    relatively, or on `n_valid`). When `valid` is False, `reason` says why and the rest is
    zero.
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
    min_pixels: int = 10            # fewer valid inliers: invalid


def _invalid(reason: str, n: int = 0) -> Object3D:
    return Object3D(valid=False, n_valid=n, reason=reason)


def _bbox(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _crop_to_depth(mask: np.ndarray, depth_m: np.ndarray, margin: int):
    """The mask's box (plus margin) in depth pixels: the depth crop, the mask resampled onto
    it, and the crop's origin (x0, y0) in the depth image."""
    mh, mw = mask.shape
    dh, dw = depth_m.shape
    box = _bbox(mask)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    if (mh, mw) == (dh, dw):
        y0, y1 = max(r0 - margin, 0), min(r1 + margin, dh)
        x0, x1 = max(c0 - margin, 0), min(c1 + margin, dw)
        return depth_m[y0:y1, x0:x1], mask[y0:y1, x0:x1], x0, y0
    sy, sx = dh / mh, dw / mw
    y0, y1 = max(int(math.floor(r0 * sy)) - margin, 0), min(int(math.ceil(r1 * sy)) + margin, dh)
    x0, x1 = max(int(math.floor(c0 * sx)) - margin, 0), min(int(math.ceil(c1 * sx)) + margin, dw)
    # Nearest-neighbour sampling of the mask at each depth pixel's centre.
    ys = np.clip(((np.arange(y0, y1) + 0.5) / sy).astype(np.int64), 0, mh - 1)
    xs = np.clip(((np.arange(x0, x1) + 0.5) / sx).astype(np.int64), 0, mw - 1)
    return depth_m[y0:y1, x0:x1], mask[np.ix_(ys, xs)], x0, y0


def _inliers(mask: np.ndarray, depth_m: np.ndarray, camera: CameraModel, opt: EstimatorOptions):
    """((3xN float32 inlier surface points, 3xM points filled for pixels without usable depth
    or None), "", N), or (None, reason, n)."""
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
    crop = _crop_to_depth(m, depth_m, margin=1)
    if crop is None:
        return None, "empty mask", 0
    d, mk, x0, y0 = crop
    n_mask = int(np.count_nonzero(mk))
    if n_mask == 0:
        return None, "empty mask", 0
    # A big mask is read on a regular grid (every g-th row and column: a lower-resolution depth
    # image of the same scene) so the cost stays bounded; a median over a few thousand pixels
    # is as good as over all of them.
    g = 1
    if n_mask > opt.max_pixels:
        g = int(math.ceil(math.sqrt(n_mask / opt.max_pixels)))
        d = np.ascontiguousarray(d[::g, ::g])
        mk = np.ascontiguousarray(mk[::g, ::g])
        n_mask = int(np.count_nonzero(mk))

    # Erode the mask so its edge (which spills onto whatever is behind) does not vote; a thin
    # object that erosion would wipe out keeps its whole mask and relies on the depth modes.
    h, w = mk.shape
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
        sel = core & ~edge & valid
    ys, xs = np.nonzero(sel)
    if ys.size < opt.min_pixels:
        # Everything on an edge (a very thin or tiny object): use the valid mask pixels.
        ys, xs = np.nonzero(mk & valid)
        if ys.size < opt.min_pixels:
            return None, f"too few valid depth pixels in the mask ({ys.size} < {opt.min_pixels})", int(ys.size)
    if ys.size > opt.max_pixels:
        step = int(math.ceil(ys.size / opt.max_pixels))
        ys, xs = ys[::step], xs[::step]
    z = d[ys, xs]

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
    if core is mk:
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
    zlo, zhi = zmin + lo * b - half_gap, zmin + (hi + 1) * b + half_gap

    # The position uses every valid mask pixel in that depth band, not only the eroded core's:
    # erosion eats thin parts (a neck, a handle) and would pull the median off the visible
    # surface's centre. Spill onto the background and most flying pixels fall outside the band.
    with np.errstate(invalid="ignore"):
        sel = mk & (d >= zlo) & (d <= zhi)
        if opt.reject_edges:
            sel &= ~edge
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
    n_holes = int(np.count_nonzero(holes)) if holes is not None else 0
    step = 1
    if n + n_holes > opt.max_pixels:
        # One stride for depth pixels and holes alike keeps their shares (the median weighs them).
        step = int(math.ceil((n + n_holes) / opt.max_pixels))
        ys, xs = ys[::step], xs[::step]
        n = int(ys.size)
    z = d[ys, xs]
    ys, xs = ys * g + y0, xs * g + x0
    rx, ry = camera.rays()
    # Points as 3xN (one contiguous row per axis: the per-axis medians partition rows).
    pts = np.empty((3, n), dtype=np.float32)
    pts[0] = rx[ys, xs]
    pts[1] = ry[ys, xs]
    filled = _fill_holes(holes, step, g, x0, y0, rx, ry, pts[0], pts[1], z) if n_holes else None
    pts[0] *= z
    pts[1] *= z
    pts[2] = z
    return (pts, filled), "", n


def _fill_holes(holes, step, g, x0, y0, rx, ry, xn, yn, z):
    """Points (3xM) for the object's pixels without usable depth, on the plane fitted to the
    inliers (normalised rays xn, yn and depths z): a hole over part of the object would
    otherwise pull the median towards the part that has depth."""
    hy, hx = np.nonzero(holes)
    hy, hx = hy[::step] * g + y0, hx[::step] * g + x0
    # Z = a + b x + c y over the normalised rays: least squares by its 3x3 normal equations.
    x64, y64, z64 = xn.astype(np.float64), yn.astype(np.float64), z.astype(np.float64)
    sx, sy, sxx, syy, sxy = x64.sum(), y64.sum(), x64 @ x64, y64 @ y64, x64 @ y64
    ata = np.array([[z64.size, sx, sy], [sx, sxx, sxy], [sy, sxy, syy]])
    atb = np.array([z64.sum(), x64 @ z64, y64 @ z64])
    try:
        coef = np.linalg.solve(ata, atb)
    except np.linalg.LinAlgError:  # all inliers on one ray line: a constant depth
        coef = np.array([float(np.median(z)), 0.0, 0.0])
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
    found, reason, n = _inliers(mask, depth_m, camera, opt)
    if found is None:
        return _invalid(reason, n)
    pts, filled = found
    # Pixels without usable depth (filled on the inliers' plane) count for where the object is
    # and how big, not for the spread (they add none) or n_valid.
    every = pts if filled is None else np.concatenate([pts, filled], axis=1)
    pos = np.median(every, axis=1)
    lo, hi = np.percentile(every, opt.percentiles, axis=1)
    sigma = 1.4826 * np.median(np.abs(pts - pos[:, None]), axis=1)
    # Standard error of a median: sqrt(pi/2) sigma / sqrt(n) per axis.
    stderr = float(np.linalg.norm(1.2533 * sigma / math.sqrt(n)))
    obj = Object3D(valid=True, position=tuple(float(v) for v in pos), extent_min=tuple(float(v) for v in lo),
                   extent_max=tuple(float(v) for v in hi), size=tuple(float(v) for v in hi - lo),
                   n_valid=n, std=tuple(float(v) for v in sigma), stderr=stderr)
    if max_points > 0:
        obj.points = _downsample(pts, max_points)
    return obj


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
    return _downsample(found[0], max_points)


def check_depth_size(camera: CameraModel, width: int, height: int) -> None:
    """Raise ValueError unless a depth image of `width` x `height` fits `camera` (its size, or
    the same aspect scaled)."""
    if not camera.same_aspect(width, height):
        raise ValueError(f"depth size {width}x{height} is not the colour camera's {camera.width}x{camera.height} "
                         "or the same aspect scaled")
