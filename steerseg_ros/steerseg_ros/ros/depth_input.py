"""The node's depth and camera_info inputs and its per-frame 3D step.

Owns `DepthConfig` (the parameters `depth.*`) and `DepthInput`: the checks a depth image or a
camera_info must pass (encoding, size against the colour image, a usable K) and the reason keys
its rejections are counted under, the pairing of depth images with colour frames by stamp
(`steerseg_ros.depth.DepthPairer`, a bounded queue: message_filters is not installable here),
and the 3D estimate of every live track on a paired frame (`steerseg_ros.depth`), run in the
processing thread after the tracker step. Everything per pixel is numpy/OpenCV inside the core
module; this file only picks what to compute and counts what went wrong.

A frame without a depth partner, without a valid camera_info, or with a depth image that fails
its checks is published in 2D (the Track's has_position false): the 2D outputs never wait for
depth longer than `depth.wait_s`, and not at all while no depth is arriving.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from steerseg_ros import depth as depth3d
from steerseg_ros.frame import NS_PER_S
from steerseg_ros.config_checks import check_finite
from steerseg_ros.streaming.pipeline import TrackState, TrackView
from steerseg_ros.ros.image_conversion import ImageConversionError, depth_image_to_array

# Without a depth image for this long, frames are no longer held back waiting for one.
DEPTH_STALE_S = 1.0


@dataclass
class DepthConfig:
    """Depth and camera_info inputs (each field's help text is in its metadata)."""

    qos: str = field(default="sensor_data", metadata={"help": (
        "QoS of the depth and camera_info subscriptions: sensor_data (best effort, keep last 5) or "
        "reliable (reliable, keep last 5). Takes effect at the next activate.")})
    pairing_tolerance_s: float = field(default=0.02, metadata={"help": (
        "A depth image pairs with the colour frame of the same stamp, or else the nearest one "
        "within this many seconds (for drivers that do not stamp both alike); keep it under half "
        "the frame period, so that a frame never takes its neighbour's depth. Takes effect at the "
        "next activate.")})
    wait_s: float = field(default=0.03, metadata={"help": (
        "How long a colour frame waits for its depth image when depth is arriving but this "
        "frame's has not come yet (seconds; 0: never wait). Takes effect at the next activate.")})
    queue_size: int = field(default=8, metadata={"help": (
        "Depth images kept waiting for their colour frame (the oldest goes when full). Takes "
        "effect at the next activate.")})
    object_points_max: int = field(default=2000, metadata={"help": (
        "Points per track on object_points (published only while something subscribes), "
        "downsampled evenly from the object's depth points. Takes effect at the next activate.")})

    def validate(self) -> None:
        check_finite(self, "depth.")
        if self.qos not in ("sensor_data", "reliable"):
            raise ValueError(f"depth.qos must be sensor_data or reliable, got {self.qos!r}")
        if not (np.isfinite(self.pairing_tolerance_s) and self.pairing_tolerance_s >= 0):
            raise ValueError(f"depth.pairing_tolerance_s must be >= 0, got {self.pairing_tolerance_s}")
        if not (np.isfinite(self.wait_s) and 0 <= self.wait_s <= 1.0):
            raise ValueError(f"depth.wait_s must be in [0, 1], got {self.wait_s}")
        if not 1 <= self.queue_size <= 100:
            raise ValueError(f"depth.queue_size must be in [1, 100], got {self.queue_size}")
        if not 1 <= self.object_points_max <= 100_000:
            raise ValueError(f"depth.object_points_max must be in [1, 100000], got {self.object_points_max}")


@dataclass
class Frame3D:
    """The 3D step's result on one colour frame: per live track id its Object3D (valid or not,
    with its inlier points when they were asked for), in the optical frame `frame_id`
    (camera_info's)."""

    frame_id: str
    objects: dict[int, Any]
    seconds: float = 0.0  # the estimate's compute time (conversion and every track), no waiting

    def object_points(self) -> dict[int, np.ndarray]:
        """Each track with a valid estimate and points (asked for): its (N, 3) float32 points."""
        return {i: obj.points for i, obj in self.objects.items() if obj.valid and obj.points is not None}


def same_aspect(size: tuple[int, int], reference: tuple[int, int]) -> bool:
    """True when (w, h) is `reference` (w, h) scaled by one factor, up to a pixel of rounding."""
    w, h = size
    rw, rh = reference
    return w > 0 and h > 0 and abs(w * rh / rw - h) <= 1.0 and abs(h * rw / rh - w) <= 1.0


class DepthInput:
    """Depth and camera_info in, per-track 3D out (see the module docstring). `reject(reason,
    text)` counts and logs a rejection (the node's), `count(key, n)` counts an event. on_depth
    and on_camera_info run in the executor's thread, estimate in the processing thread."""

    def __init__(self, reject: Callable[[str, str], None], count: Callable[..., None]):
        self._reject = reject
        self._count = count
        self._lock = threading.Lock()
        self.config = DepthConfig()
        self._pairer: Optional[depth3d.DepthPairer] = None
        self._camera: Optional[depth3d.CameraModel] = None
        self._camera_key: Any = None
        self._last_depth = -1e9  # time.monotonic() of the newest depth image
        self._last_colour_ns: Optional[int] = None
        self._last_colour_arrival = -1e9  # time.monotonic() of the newest colour frame received
        # The resolved topic names, for the warnings (the node sets them at activate).
        self.colour_topic, self.depth_topic = "image", "depth"
        self._reported: dict[str, int] = {}
        self._warmed: set = set()  # (camera key, depth size) whose ray table is built

    def start(self, config: DepthConfig) -> None:
        """A fresh pairing queue with `config` (at activate)."""
        config.validate()
        with self._lock:
            self.config = config
            self._pairer = depth3d.DepthPairer(int(round(config.pairing_tolerance_s * NS_PER_S)), config.queue_size,
                                               idle_s=DEPTH_STALE_S)
            self._reported = {}
            self._last_depth = -1e9
            self._last_colour_ns = None

    # ---- input ------------------------------------------------------------------------------
    def colour_arrived(self) -> None:
        """A colour frame came in (before any dropping or checks; the executor's thread)."""
        self._last_colour_arrival = time.monotonic()

    def _colour_missing(self) -> bool:
        """No colour frame has arrived for DEPTH_STALE_S: depth then has nothing to pair with,
        whatever the pairer's counters say."""
        return time.monotonic() - self._last_colour_arrival > DEPTH_STALE_S

    def on_depth(self, msg: Image) -> None:
        self._count("depth_received")
        try:
            pixels, encoding = depth_image_to_array(msg)
        except ImageConversionError as e:
            self._reject(f"depth.{e.reason}", str(e))
            return
        pairer = self._pairer
        if pairer is None:
            return
        self._warm_camera((pixels.shape[1], pixels.shape[0]))
        stamp = int(msg.header.stamp.sec) * NS_PER_S + int(msg.header.stamp.nanosec)
        pairer.add(stamp, (pixels, encoding))
        self._last_depth = time.monotonic()
        self._report_pairer()

    def on_camera_info(self, msg: CameraInfo) -> None:
        key = (msg.width, msg.height, tuple(msg.k), tuple(msg.d), msg.distortion_model, msg.header.frame_id)
        if key == self._camera_key:
            return  # drivers repeat the same camera_info with every frame
        try:
            camera = depth3d.CameraModel.from_camera_info_fields(
                int(msg.width), int(msg.height), np.asarray(msg.k, dtype=np.float64),
                np.asarray(msg.d, dtype=np.float64), msg.distortion_model, msg.header.frame_id)
        except ValueError as e:
            self._reject("camera_info.invalid", f"camera_info unusable ({e}); 3D uses the last good one, if any")
            return
        with self._lock:
            self._camera, self._camera_key = camera, key
        self._count("camera_info_changes")

    def _warm_camera(self, depth_size: tuple[int, int]) -> None:
        """Build the camera's undistorted ray table for this depth size here, in the executor's
        thread, the first time the size is seen: it takes a third of a second at 640x480 (a
        second at 1280x720), which the processing thread would otherwise spend on one frame."""
        with self._lock:
            camera = self._camera
        if camera is None or (camera.key(), depth_size) in self._warmed or not camera.same_aspect(*depth_size):
            return
        camera.scaled(*depth_size).rays()  # cached by the core module
        with self._lock:
            self._warmed.add((camera.key(), depth_size))

    def _report_pairer(self) -> None:
        """Turn new depth images the pairer gave up on (no colour frame near their stamp, or
        pushed out of the full queue) into counted, logged rejections."""
        pairer = self._pairer
        if pairer is None:
            return
        counters = dict(pairer.counters)
        with self._lock:
            for key, reason in (("depth_unpaired", "depth.no_colour_partner"),
                                ("depth_dropped_full", "depth.queue_full")):
                new = int(counters.get(key, 0)) - self._reported.get(key, 0)
                if new > 0:
                    self._reported[key] = int(counters.get(key, 0))
                    if self._colour_missing():
                        # Not a pairing fault: the colour stream is absent (a wrong camera
                        # topic, or the camera stopped), so say that and where it was expected.
                        reason = "depth.no_colour"
                    for _ in range(new):
                        self._reject(reason, f"depth images arrive on {self.depth_topic}, but no colour frames "
                                     f"on {self.colour_topic} (for {DEPTH_STALE_S:.0f} s or more): nothing to pair "
                                     "them with; check the camera topic"
                                     if reason == "depth.no_colour" else
                                     "a depth image found no processed colour frame within "
                                     f"depth.pairing_tolerance_s = {self.config.pairing_tolerance_s} s "
                                     "(its frame never came, or was dropped: see frames_dropped)"
                                     if key == "depth_unpaired" else
                                     f"depth images arrive faster than they pair (queue of {self.config.queue_size})")

    def counters(self) -> dict[str, int]:
        """The pairer's counters, as depth.<name>."""
        pairer = self._pairer
        return {} if pairer is None else {f"depth.{k}": int(v) for k, v in dict(pairer.counters).items()}

    # ---- the 3D step ------------------------------------------------------------------------
    def estimate(self, views: list[TrackView], stamp_ns: int, colour_size: tuple[int, int],
                 max_points: int = 0) -> Optional[Frame3D]:
        """The 3D of every live track on the colour frame `stamp_ns` of size (w, h), with up to
        `max_points` inlier points each when > 0; None when this frame has no usable depth (it
        is published in 2D)."""
        self.colour_arrived()  # a processed frame arrived, whoever calls this
        pairer = self._pairer
        if pairer is None or self._last_depth < 0:
            return None  # no depth has arrived: the node runs as without depth
        if self._last_colour_ns is not None and stamp_ns < self._last_colour_ns:
            # The pipeline took a frame older than the last: its source restarted (a bag
            # looping). The pairer would refuse the new stream's depth as too old: start it over.
            pairer.clear()
            self._count("depth_restarts")
        self._last_colour_ns = stamp_ns
        item = pairer.take(stamp_ns, timeout_s=self.config.wait_s)  # no wait while depth is off
        self._report_pairer()
        if item is None:
            return None
        pixels, encoding = item
        start = time.perf_counter()
        with self._lock:
            camera = self._camera
        if camera is None:
            self._reject("depth.no_camera_info", "depth arrived but no valid camera_info yet: tracks stay 2D")
            return None
        depth_size = (pixels.shape[1], pixels.shape[0])
        if not same_aspect(depth_size, colour_size):
            self._reject("depth.size", f"depth is {depth_size[0]}x{depth_size[1]}, the colour image "
                         f"{colour_size[0]}x{colour_size[1]} (neither the same size nor the same aspect scaled)")
            return None
        if not same_aspect((camera.width, camera.height), colour_size):
            self._reject("camera_info.size", f"camera_info is for {camera.width}x{camera.height}, the colour "
                         f"image is {colour_size[0]}x{colour_size[1]}")
            return None
        try:
            depth_m = depth3d.depth_to_metres(pixels, encoding)
        except ValueError as e:
            self._reject("depth.encoding", str(e))
            return None
        objects = {}
        for view in views:
            if view.state not in (TrackState.TRACKING, TrackState.REGROUNDING) or view.mask is None:
                continue
            # The mask (colour size), depth and camera may differ in size at one aspect: the
            # estimator samples the mask at the depth pixels and scales the camera to them.
            try:
                objects[view.id] = depth3d.estimate_object_3d(view.mask, depth_m, camera, max_points=max_points)
            except ValueError as e:
                self._reject("depth.size", str(e))
                return None
        self._count("frames_3d")
        return Frame3D(camera.frame_id, objects, time.perf_counter() - start)
