"""A synthetic RGB-D scene with known geometry, for testing the 3D estimate and the depth path.

Owns the scene: a textured object (a DAVIS object cut out by its ground-truth mask, on a flat
card) moving along a known 3D path in front of a textured background wall 1.2 m or more behind
it, seen through a pinhole camera WITH lens distortion. Rendering casts one ray per pixel
through the distorted model (each pixel's undistorted ray, checked against OpenCV's forward
projection), so colour, depth, mask and geometry agree exactly. Then the corruptions real
sensors and real masks bring, each on its own switch: depth noise growing with z^2
(stereo/ToF), holes (no-return blobs and speckle), flying pixels along the object's depth
edge, and an input mask that spills a few pixels onto the background.

The true position of each frame is the per-axis median of the object's visible surface
points (from the noise-free render): the visible surface's centre, which is what
`depth.estimate_object_3d` estimates (not the centre of the card, whose silhouette is
irregular).

ROS-free; `steerseg_ros.offline.bags` writes the scene as a ROS 2 bag.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from steerseg_ros.depth import CameraModel
from steerseg_testing import davis

CORRUPTIONS = ("noise", "holes", "flying", "spill")
NS_PER_S = 1_000_000_000


def default_camera(width: int = 640, height: int = 480, frame_id: str = "camera_color_optical_frame") -> CameraModel:
    """A wide-angle colour camera (about 70 degrees across) with strong barrel distortion
    (plumb_bob; pixels at the corners move about 70 px at 640x480), so that ignoring D shows."""
    s = width / 640.0
    K = np.array([[460.0 * s, 0.0, (width - 1) / 2.0 + 3.0 * s],
                  [0.0, 460.0 * s, (height - 1) / 2.0 - 2.0 * s],
                  [0.0, 0.0, 1.0]])
    D = np.array([-0.30, 0.11, 0.0008, -0.0006, -0.018])
    return CameraModel(width=width, height=height, K=K, D=D, distortion_model="plumb_bob", frame_id=frame_id)


@dataclass
class SceneConfig:
    """The scene and its corruptions (defaults: the scene the tests use)."""

    n_frames: int = 40
    fps: float = 30.0
    start_ns: int = 1_700_000_000 * NS_PER_S
    object_sequence: str = "blackswan"   # DAVIS sequence whose frame-0 object is cut out
    background_sequence: str = "cows"    # DAVIS frame tiled on the wall
    object_width_m: float = 0.40
    z_near_m: float = 1.0                # the path's depth goes from z_near to z_far and back
    z_far_m: float = 2.0
    wall_z_m: float = 3.4                # the wall's depth on the optical axis
    corruptions: Tuple[str, ...] = ()
    noise_k: float = 0.004               # per-pixel depth noise sigma = noise_k * z^2 (m): 4 mm at 1 m, 16 mm at 2 m
    noise_corr_k: float = 0.001          # spatially smooth part: sigma = noise_corr_k * z^2
    hole_blobs: int = 10                 # no-return ellipses per frame (5-40 px radii) ...
    hole_speckle: float = 0.02           # ... and this share of single pixels
    flying_band_px: int = 2              # flying pixels within this many pixels of the object's depth edge
    flying_share: float = 0.7            # share of the band's pixels that fly
    spill_px: int = 4                    # the input mask is the true mask dilated by this many pixels
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.corruptions) - set(CORRUPTIONS)
        if unknown:
            raise ValueError(f"unknown corruptions {sorted(unknown)} (known: {', '.join(CORRUPTIONS)})")


@dataclass
class SceneFrame:
    """One rendered frame. `rgb` is HxWx3 uint8 RGB; `depth_m` float32 metres with NaN where
    there is no return (after the corruptions); `depth_mm` the same as 16UC1 millimetres (0 =
    no return); `mask_true` the object's true silhouette, `mask` the input mask (spilled when
    that corruption is on); `position` the true 3D position (see the module docstring)."""

    index: int
    stamp_ns: int
    rgb: np.ndarray
    depth_m: np.ndarray
    depth_mm: np.ndarray
    mask_true: np.ndarray
    mask: np.ndarray
    position: np.ndarray
    depth_clean_m: np.ndarray = field(repr=False, default=None)

    @property
    def bgr(self) -> np.ndarray:
        return np.ascontiguousarray(self.rgb[:, :, ::-1])


def _read_object(root: Path, sequence: str) -> Tuple[np.ndarray, np.ndarray]:
    img_path = root / "JPEGImages" / "480p" / sequence / "00000.jpg"
    mask_path = root / "Annotations" / "480p" / sequence / "00000.png"
    img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if img is None or mask is None:
        raise FileNotFoundError(f"DAVIS frame or mask not found: {img_path}, {mask_path} "
                                "(give davis_root, the davis16 folder, or set STEERSEG_SHARED)")
    ys, xs = np.nonzero(mask > 127)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgb = cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_BGR2RGB)
    return rgb, (mask[y0:y1, x0:x1] > 127).astype(np.float32)


def _read_texture(root: Path, sequence: str) -> np.ndarray:
    path = root / "JPEGImages" / "480p" / sequence / "00000.jpg"
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"DAVIS frame not found: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return ry @ rx


class SyntheticRGBDScene:
    """Renders the scene frame by frame (`frame(i)`, or iterate)."""

    def __init__(self, config: Optional[SceneConfig] = None, camera: Optional[CameraModel] = None,
                 davis_root: Optional[Path] = None):
        self.config = config or SceneConfig()
        self.camera = camera or default_camera()
        root = Path(davis_root) if davis_root is not None else davis.davis_root()
        self._sprite, self._alpha = _read_object(root, self.config.object_sequence)
        self._texture = _read_texture(root, self.config.background_sequence)
        self._rx, self._ry = self._pixel_rays()

    def _pixel_rays(self) -> Tuple[np.ndarray, np.ndarray]:
        rx, ry = self.camera.rays()
        # The render is only as right as its rays: project them forward through OpenCV's
        # distorted model and check they land on their pixels.
        h, w = rx.shape
        step = 7
        ys, xs = np.mgrid[0:h:step, 0:w:step]
        pts = np.stack([rx[ys, xs].ravel(), ry[ys, xs].ravel(), np.ones(ys.size)], axis=1)
        uv = self.camera.project(pts)
        err = np.abs(uv - np.stack([xs.ravel(), ys.ravel()], axis=1)).max()
        if err > 0.01:
            raise RuntimeError(f"the camera's undistorted rays reproject {err:.3f} px off their pixels")
        return rx.astype(np.float64), ry.astype(np.float64)

    def __len__(self) -> int:
        return self.config.n_frames

    def __iter__(self) -> Iterator[SceneFrame]:
        for i in range(len(self)):
            yield self.frame(i)

    def stamp_ns(self, i: int) -> int:
        return self.config.start_ns + int(round(i * NS_PER_S / self.config.fps))

    def pose(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """The card's centre (3,) and rotation (3x3; columns: card right, card down, normal)."""
        c = self.config
        s = i / max(c.n_frames - 1, 1)
        z = 0.5 * (c.z_near_m + c.z_far_m) - 0.5 * (c.z_far_m - c.z_near_m) * math.cos(2 * math.pi * s)
        x = 0.42 * z * math.sin(2 * math.pi * s)
        y = 0.20 * z * math.sin(4 * math.pi * s + 0.5)
        yaw = math.radians(25.0) * math.sin(2 * math.pi * s + 1.0)
        pitch = math.radians(10.0) * math.cos(2 * math.pi * s)
        return np.array([x, y, z]), _rotation(yaw, pitch)

    def frame(self, i: int) -> SceneFrame:
        """Frame i: the wall and the card rendered, then the configured corruptions applied
        (flying pixels, noise, holes, then the spilled mask)."""
        c = self.config
        z_wall, wall_rgb = self._wall()
        z_obj, mask_true, obj_rgb = self._card(i, z_wall)
        rgb = np.where(mask_true[:, :, None], obj_rgb, wall_rgb).astype(np.uint8)
        depth = np.where(mask_true, z_obj, z_wall).astype(np.float32)
        position = self._true_position(depth, mask_true)

        rng = np.random.default_rng([c.seed, i])
        clean = depth.copy()
        mask = mask_true
        if "flying" in c.corruptions:
            depth = self._flying(depth, mask_true, z_wall, rng)
        if "noise" in c.corruptions:
            depth = self._noise(depth, rng)
        if "holes" in c.corruptions:
            depth = self._holes(depth, rng)
        if "spill" in c.corruptions:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * c.spill_px + 1, 2 * c.spill_px + 1))
            mask = cv2.dilate(mask_true.astype(np.uint8), k).astype(bool)
        depth_m = depth.astype(np.float32)
        depth_m[~(depth_m > 0)] = np.nan
        depth_mm = np.where(np.isfinite(depth_m), np.round(np.nan_to_num(depth_m) * 1000.0), 0)
        depth_mm = np.clip(depth_mm, 0, 65535).astype(np.uint16)
        return SceneFrame(index=i, stamp_ns=self.stamp_ns(i), rgb=rgb, depth_m=depth_m, depth_mm=depth_mm,
                          mask_true=mask_true, mask=mask, position=position, depth_clean_m=clean)

    def _wall(self) -> Tuple[np.ndarray, np.ndarray]:
        """The wall's depth per pixel and its textured image: a plane through (0, 0, wall_z)
        facing the camera, tilted a little."""
        rx, ry = self._rx, self._ry
        n_wall = np.array([0.12, 0.08, -1.0])
        n_wall /= np.linalg.norm(n_wall)
        p_wall = np.array([0.0, 0.0, self.config.wall_z_m])
        z_wall = (n_wall @ p_wall) / (n_wall[0] * rx + n_wall[1] * ry + n_wall[2])
        e1w = np.cross([0.0, 1.0, 0.0], n_wall)
        e1w /= np.linalg.norm(e1w)
        e2w = np.cross(n_wall, e1w)
        X, Y = rx * z_wall, ry * z_wall
        tex_px_per_m = 220.0
        wu = ((X - p_wall[0]) * e1w[0] + (Y - p_wall[1]) * e1w[1] + (z_wall - p_wall[2]) * e1w[2]) * tex_px_per_m
        wv = ((X - p_wall[0]) * e2w[0] + (Y - p_wall[1]) * e2w[1] + (z_wall - p_wall[2]) * e2w[2]) * tex_px_per_m
        th, tw = self._texture.shape[:2]
        wall_rgb = cv2.remap(self._texture, (wu + tw / 2).astype(np.float32), (wv + th / 2).astype(np.float32),
                             cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        return z_wall, wall_rgb

    def _card(self, i: int, z_wall: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The object in frame i: a card through its centre, textured with the DAVIS cut-out.
        Its depth per pixel (of the card's plane), its true silhouette, and its image."""
        rx, ry = self._rx, self._ry
        centre, R = self.pose(i)
        e1, e2, n = R[:, 0], R[:, 1], R[:, 2]
        denom = n[0] * rx + n[1] * ry + n[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            z_obj = (n @ centre) / denom
        sh, sw = self._alpha.shape
        width_m = self.config.object_width_m
        height_m = width_m * sh / sw
        dx, dy, dz = rx * z_obj - centre[0], ry * z_obj - centre[1], z_obj - centre[2]
        a = dx * e1[0] + dy * e1[1] + dz * e1[2]
        b = dx * e2[0] + dy * e2[1] + dz * e2[2]
        su = ((a / width_m + 0.5) * sw - 0.5).astype(np.float32)
        sv = ((b / height_m + 0.5) * sh - 0.5).astype(np.float32)
        alpha = cv2.remap(self._alpha, su, sv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        mask_true = (alpha > 0.5) & (z_obj > 0) & (z_obj < z_wall)
        obj_rgb = cv2.remap(self._sprite, su, sv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return z_obj, mask_true, obj_rgb

    def _true_position(self, depth: np.ndarray, mask_true: np.ndarray) -> np.ndarray:
        """The per-axis median of the object's visible surface points (see the module docstring)."""
        rx, ry = self._rx, self._ry
        ys, xs = np.nonzero(mask_true)
        zt = depth[ys, xs].astype(np.float64)
        return np.median(np.stack([rx[ys, xs] * zt, ry[ys, xs] * zt, zt], axis=1), axis=0)

    def _noise(self, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        h, w = depth.shape
        z2 = depth.astype(np.float64) ** 2
        white = rng.standard_normal((h, w)) * c.noise_k * z2
        # A smooth part (what stereo matching and ToF multipath give): a coarse random field,
        # upsampled, about unit variance.
        coarse = rng.standard_normal((6, 8)).astype(np.float32)
        smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float64)
        return depth + white + smooth * c.noise_corr_k * z2

    def _holes(self, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        h, w = depth.shape
        hole = np.zeros((h, w), np.uint8)
        for _ in range(c.hole_blobs):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(5, 41)), int(rng.integers(5, 41)))
            cv2.ellipse(hole, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        hole |= (rng.random((h, w)) < c.hole_speckle).astype(np.uint8)
        out = depth.copy()
        out[hole > 0] = np.nan
        return out

    def _flying(self, depth: np.ndarray, mask: np.ndarray, z_wall: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
        """Mixed returns along the object's silhouette: depths between the object and the wall."""
        c = self.config
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * c.flying_band_px + 1, 2 * c.flying_band_px + 1))
        m8 = mask.astype(np.uint8)
        band = (cv2.dilate(m8, k) > 0) & ~(cv2.erode(m8, k) > 0)
        fg = np.where(mask, depth, 0).astype(np.float32)
        fg_near = cv2.dilate(fg, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * c.flying_band_px + 3,) * 2))
        fly = band & (fg_near > 0) & (rng.random(depth.shape) < c.flying_share)
        alpha = rng.random(depth.shape)
        out = depth.copy()
        out[fly] = (alpha * fg_near + (1 - alpha) * z_wall)[fly]
        return out


def camera_info_fields(camera: CameraModel) -> dict:
    """The `sensor_msgs/CameraInfo` fields of a camera (P = K with a zero fourth column, R = I)."""
    P = np.zeros((3, 4))
    P[:, :3] = camera.K
    return {"width": camera.width, "height": camera.height, "distortion_model": camera.distortion_model,
            "d": [float(v) for v in camera.D], "k": [float(v) for v in camera.K.ravel()],
            "r": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], "p": [float(v) for v in P.ravel()],
            "frame_id": camera.frame_id}


def write_scene_bag(path: str | Path, scene, storage: str = "mcap", colour_encoding: str = "rgb8",
                    depth_encoding: str = "16UC1", depth_offset_ns: int = 0, depth_every: int = 1,
                    drop_depth: Sequence[int] = (), depth_latency_ns: int = 0, overwrite: bool = False,
                    topics=None) -> dict:
    """Write a `synthetic_rgbd.SyntheticRGBDScene` as a rosbag2 bag (a folder holding one
    .mcap or .db3 file and metadata.yaml): per frame a colour image, a depth image and the
    colour camera_info, stamped with the frame's stamp (depth shifted by `depth_offset_ns`,
    only every `depth_every`-th frame, none for the indices in `drop_depth`; its log time
    `depth_latency_ns` after the colour frame's, to record depth arriving late).
    Returns what was written: {"colour": [stamps], "depth": [stamps], "camera_info": [stamps],
    "path": the bag folder}."""
    from steerseg_ros.offline import bags  # rosbags: the bags extra

    if colour_encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"colour encoding must be rgb8 or bgr8, got {colour_encoding!r}")
    if depth_encoding not in bags.DEPTH_ENCODINGS:
        raise ValueError(f"depth encoding must be one of {bags.DEPTH_ENCODINGS}, got {depth_encoding!r}")
    topics = topics or bags.BagTopics(bags.COLOUR_TOPIC, bags.DEPTH_TOPIC, bags.CAMERA_INFO_TOPIC)
    path = Path(path)
    ts = bags._typestore()
    written = {"colour": [], "depth": [], "camera_info": [], "path": str(path)}
    fields = camera_info_fields(scene.camera)
    drop = set(drop_depth)
    with bags._writer(path, storage, overwrite) as writer:
        c_colour = writer.add_connection(topics.colour, bags.IMAGE, typestore=ts)
        c_depth = writer.add_connection(topics.depth, bags.IMAGE, typestore=ts)
        c_info = writer.add_connection(topics.camera_info, bags.CAMERA_INFO, typestore=ts)
        pending = []  # depth written late: (log_ns, stamp_ns, data)
        for f in scene:
            stamp = f.stamp_ns
            for log_ns, dstamp, data in [p for p in pending if p[0] <= stamp]:
                writer.write(c_depth, log_ns, data)
                written["depth"].append(dstamp)
            pending = [p for p in pending if p[0] > stamp]
            colour = f.rgb if colour_encoding == "rgb8" else f.bgr
            writer.write(c_info, stamp, ts.serialize_cdr(bags.camera_info_msg(ts, fields, stamp), bags.CAMERA_INFO))
            written["camera_info"].append(stamp)
            writer.write(c_colour, stamp, ts.serialize_cdr(
                bags.image_msg(ts, colour, colour_encoding, stamp, fields["frame_id"]), bags.IMAGE))
            written["colour"].append(stamp)
            if f.index % depth_every == 0 and f.index not in drop:
                depth = f.depth_mm if depth_encoding == "16UC1" else f.depth_m
                dstamp = stamp + depth_offset_ns
                data = ts.serialize_cdr(bags.image_msg(ts, depth, depth_encoding, dstamp, fields["frame_id"]), bags.IMAGE)
                if depth_latency_ns > 0:
                    pending.append((stamp + depth_latency_ns, dstamp, data))
                else:
                    writer.write(c_depth, max(dstamp, stamp), data)
                    written["depth"].append(dstamp)
        for log_ns, dstamp, data in pending:
            writer.write(c_depth, log_ns, data)
            written["depth"].append(dstamp)
    return written
