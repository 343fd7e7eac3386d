"""The colour camera's model (intrinsics, distortion, per-pixel rays) and depth images in metres.

ROS-free (numpy + OpenCV): the node's ROS layer turns `sensor_msgs/CameraInfo` and depth
`Image` messages into the plain values these functions take.

Frames: every 3D value is in the colour camera's optical frame (x right, y down, z forward,
metres), as `sensor_msgs/CameraInfo` defines it. Depth images are Z-depth (distance along the
optical axis), registered to the colour camera, as RGB-D drivers publish them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence, Tuple

import cv2
import numpy as np

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")
DEPTH_ENCODINGS = ("16UC1", "32FC1")


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


def check_depth_size(camera: CameraModel, width: int, height: int) -> None:
    """Raise ValueError unless a depth image of `width` x `height` fits `camera` (its size, or
    the same aspect scaled)."""
    if not camera.same_aspect(width, height):
        raise ValueError(f"depth size {width}x{height} is not the colour camera's {camera.width}x{camera.height} "
                         "or the same aspect scaled")
