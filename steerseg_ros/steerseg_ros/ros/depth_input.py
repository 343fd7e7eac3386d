"""The node's depth and camera_info inputs and its per-frame 3D step.

Owns `DepthConfig` (the parameters `depth.*`) and `DepthInput`: the checks a depth image or a
camera_info must pass (encoding, size against the colour image, a usable K) and the reason keys
its rejections are counted under, the pairing of depth images with colour frames by stamp
(`steerseg_ros.depth.DepthPairer`, a bounded queue: message_filters is not installable here),
and the 3D estimate of every live track on a paired frame (`steerseg_ros.depth`), run in the
processing thread after the tracker step, and the 3D jump check on its result (a track whose
position moves faster than `depth.max_speed_mps` has none on that frame: `depth.JumpCheck`).
Everything per pixel is numpy/OpenCV inside the core module; this file only picks what to
compute and counts what went wrong.

A frame without a depth partner, without a valid camera_info, or with a depth image that fails
its checks is published in 2D (the Track's has_position false): the 2D outputs never wait for
depth longer than `depth.wait_s`, and not at all while no depth is arriving.

Also what is wrong with the depth stream as a whole, said once rather than counted per frame:
depth that stopped arriving (normal for a node without depth), a steady offset between the
depth and colour stamps (which nearest-stamp pairing cannot see), and the depth of colour frames
the node itself dropped under load (counted apart, not as pairing faults). Its counters run on
over re-activations.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from steerseg_ros import depth as depth3d
from steerseg_ros.depth.motion import Jump, JumpCheck
from steerseg_ros.frame import NS_PER_S
from steerseg_ros.config_checks import check_finite
from steerseg_ros.streaming.pipeline import CONFIDENT_STATES, TrackState, TrackView
from steerseg_ros.ros.image_conversion import ImageConversionError, depth_image_to_array

# Without a depth image for this long, frames are no longer held back waiting for one, and
# depth counts as stopped (said once, not counted against every colour frame).
DEPTH_STALE_S = 1.0
# The depth/colour stamp offset is measured over this many recent depth images (each against the
# colour frame that arrived nearest to it), and warned about when it exceeds this share of the
# frame period.
OFFSET_WINDOW = 30
OFFSET_SHARE = 0.25
# The colour stamps the node received but never processed (its mailbox keeps the newest frame),
# kept to tell a depth image whose colour frame the node itself dropped from a pairing fault.
DROPPED_COLOUR_KEPT = 256

log = logging.getLogger(__name__)


@dataclass
class DepthConfig:
    """Depth and camera_info inputs (each field's help text is in its metadata)."""

    qos: str = field(default="sensor_data", metadata={"help": (
        "QoS of the depth and camera_info subscriptions: sensor_data (best effort, keep last 5) or "
        "reliable (reliable, keep last 5). Takes effect at the next activate.")})
    pairing_tolerance_s: float = field(default=0.02, metadata={"help": (
        "A depth image pairs with the colour frame of the same stamp, or else the nearest one "
        "within this many seconds (for drivers that do not stamp both alike); keep it under half "
        "the frame period, so that a frame never takes its neighbour's depth.")})
    wait_s: float = field(default=0.03, metadata={"help": (
        "How long a colour frame waits for its depth image when depth is arriving but this "
        "frame's has not come yet (seconds; 0: never wait).")})
    queue_size: int = field(default=8, metadata={"help": (
        "Depth images kept waiting for their colour frame (the oldest goes when full).")})
    object_points_max: int = field(default=2000, metadata={"help": (
        "Points per track on object_points (published only while something subscribes), "
        "downsampled evenly from the object's depth points.")})
    max_speed_mps: float = field(default=3.0, metadata={"help": (
        "A track whose 3D position moves faster than this between its frames (metres per second "
        "of camera time, in target_frame) has no position on that frame: the jump is logged, "
        "counted (depth.jumps) and its target re-grounded. Moves within 3 standard errors of the "
        "two positions always pass. Judged in target_frame: with the camera frame, the robot's "
        "own motion counts (turning at 1 rad/s moves an object 3 m away at 3 m/s), so name a "
        "world frame such as odom there, or raise this. 0: no check.")})

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
        if not (np.isfinite(self.max_speed_mps) and self.max_speed_mps >= 0):
            raise ValueError(f"depth.max_speed_mps must be >= 0 (0: no check), got {self.max_speed_mps}")


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


def _pairing_fault(reason: str, depth_topic: str, colour_topic: str, config: DepthConfig) -> str:
    """What a depth pairing rejection means, for its warning."""
    if reason == "depth.no_colour":
        return (f"depth images arrive on {depth_topic}, but no colour frames on {colour_topic} (for "
                f"{DEPTH_STALE_S:.0f} s or more): nothing to pair them with; check the camera topic")
    if reason == "depth.no_colour_partner":
        return ("a depth image found no processed colour frame within depth.pairing_tolerance_s = "
                f"{config.pairing_tolerance_s} s (its frame never came, or was dropped: see frames_dropped)")
    return f"depth images arrive faster than they pair (queue of {config.queue_size})"


class DepthInput:
    """Depth and camera_info in, per-track 3D out (see the module docstring). `reject(reason,
    text)` counts and logs a rejection (the node's), `count(key, n)` counts an event. on_depth
    and on_camera_info run in the executor's thread, estimate in the processing thread.
    `clock` (nanoseconds, monotonic) times arrivals: the stamp offset check and depth stopping."""

    def __init__(self, reject: Callable[[str, str], None], count: Callable[..., None],
                 clock: Callable[[], int] = time.monotonic_ns):
        self._reject = reject
        self._count = count
        self._clock = clock
        self._lock = threading.Lock()
        self.config = DepthConfig()
        self._pairer: Optional[depth3d.DepthPairer] = None
        # The counters of the pairers of earlier activations: the depth.* counters run on over
        # the node's life like every other counter.
        self._counter_base: collections.Counter = collections.Counter()
        # Received colour stamps not yet processed, and those the node dropped (see
        # DROPPED_COLOUR_KEPT).
        self._colour_pending: collections.deque = collections.deque(maxlen=DROPPED_COLOUR_KEPT)
        self._colour_dropped: collections.deque = collections.deque(maxlen=DROPPED_COLOUR_KEPT)
        self._offset = depth3d.StampOffset(OFFSET_WINDOW)  # the steady depth/colour stamp offset
        self.stamp_offset_ns: Optional[int] = None  # measured, once both streams have a window
        self.frame_period_ns: Optional[int] = None
        self._offset_warned = False
        self._depth_stopped = False
        # Unpaired depth images found to belong to dropped colour frames and not yet taken off
        # the pairer's depth_unpaired count (the two are read at slightly different moments).
        self._skip_credit = 0
        self._camera: Optional[depth3d.CameraModel] = None
        self._camera_key: Any = None
        self._last_depth = -1e9  # time.monotonic() of the newest depth image
        self._last_colour_ns: Optional[int] = None
        self._last_colour_arrival = -1e9  # time.monotonic() of the newest colour frame received
        # The resolved topic names, for the warnings (the node sets them at activate).
        self.colour_topic, self.depth_topic = "image", "depth"
        self._reported: dict[str, int] = {}
        self._warmed: set = set()  # (camera key, depth size) whose ray table is built
        self._jumps = JumpCheck(self.config.max_speed_mps)  # the processing thread's only

    def start(self, config: DepthConfig) -> None:
        """A fresh pairing queue with `config` (at activate)."""
        config.validate()
        with self._lock:
            if self._pairer is not None:
                self._counter_base.update(self._pairer.counters)
            self.config = config
            self._pairer = depth3d.DepthPairer(int(round(config.pairing_tolerance_s * NS_PER_S)), config.queue_size,
                                               idle_s=DEPTH_STALE_S)
            self._reported = {}
            self._last_depth = -1e9
            self._last_colour_ns = None
            self._depth_stopped = False
            self._colour_pending.clear()
            self._offset.clear()
            self._jumps.clear()
            self._jumps.max_speed_mps = config.max_speed_mps

    def apply_live(self, config: DepthConfig) -> None:
        """Take changed settings between frames (processing thread): the pairing tolerance and
        queue size, the wait and the point count apply at once; `qos` waits for the next
        activate (it is the subscriptions')."""
        config.validate()
        with self._lock:
            qos = self.config.qos
            self.config = config
            self.config.qos = qos
            pairer = self._pairer
        if pairer is not None:
            pairer.set_limits(int(round(config.pairing_tolerance_s * NS_PER_S)), config.queue_size)
        self._jumps.max_speed_mps = config.max_speed_mps

    # ---- input ------------------------------------------------------------------------------
    def note_colour(self, stamp_ns: int) -> None:
        """A colour frame stamped `stamp_ns` was received (executor thread, before the mailbox
        may drop it): for the stamp offset check and to know which frames the node dropped."""
        now = self._clock()
        with self._lock:
            self._colour_pending.append(stamp_ns)
            self._offset.colour(now, stamp_ns)

    def _check_offset(self) -> None:
        """Measure the steady depth/colour stamp offset (depth.StampOffset); warn once when it
        is over OFFSET_SHARE of the frame period."""
        with self._lock:
            measured = self._offset.measure()
            if measured is None:
                return
            self.stamp_offset_ns, self.frame_period_ns = measured
        offset, period = measured
        if period and abs(offset) > OFFSET_SHARE * period and not self._offset_warned:
            self._offset_warned = True
            log.warning(self.offset_warning())

    def offset_warning(self) -> Optional[str]:
        """What is wrong with the stamps, while the measured offset is over OFFSET_SHARE of the
        frame period; None otherwise."""
        offset, period = self.stamp_offset_ns, self.frame_period_ns
        if offset is None or not period or abs(offset) <= OFFSET_SHARE * period:
            return None
        return (f"depth on {self.depth_topic} is stamped {offset / 1e6:+.1f} ms from the colour frames on "
                f"{self.colour_topic} that arrive with it (median over {OFFSET_WINDOW} frames; frame period "
                f"{period / 1e6:.1f} ms): colour frames pair with another frame's depth or none. Fix the "
                "driver's stamps (or its sync setting)")

    def status_values(self) -> dict[str, str]:
        """What /diagnostics shows about the depth input beside the counters."""
        out = {}
        if self.stamp_offset_ns is not None:
            out["depth.stamp_offset_ms"] = f"{self.stamp_offset_ns / 1e6:.1f}"
        if self._last_depth >= 0:
            out["depth.receiving"] = "false" if self._depth_stopped else "true"
        return out

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
        now = self._clock()
        with self._lock:
            self._offset.depth(now, stamp)
        pairer.add(stamp, (pixels, encoding))
        self._last_depth = now / NS_PER_S
        if self._depth_stopped:
            self._depth_stopped = False
            log.info(f"depth is arriving again on {self.depth_topic}")
        self._report_pairer()
        self._check_offset()

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
        skipped = self._count_depth_of_dropped_frames(pairer)
        with self._lock:
            for key, reason in (("depth_unpaired", "depth.no_colour_partner"),
                                ("depth_dropped_full", "depth.queue_full")):
                new = int(counters.get(key, 0)) - self._reported.get(key, 0)
                if new > 0:
                    self._reported[key] = int(counters.get(key, 0))
                    if key == "depth_unpaired":  # not faults: counted as depth_of_dropped_frames
                        self._skip_credit += skipped
                        used = min(self._skip_credit, new)
                        self._skip_credit -= used
                        new -= used
                    if self._colour_missing():
                        # Not a pairing fault: the colour stream is absent (a wrong camera
                        # topic, or the camera stopped), so say that and where it was expected.
                        reason = "depth.no_colour"
                    for _ in range(new):
                        self._reject(reason, _pairing_fault(reason, self.depth_topic, self.colour_topic, self.config))

    def _count_depth_of_dropped_frames(self, pairer: depth3d.DepthPairer) -> int:
        """How many of the depth images the pairer gave up on since the last call belong to a
        colour frame the node received and dropped unprocessed (its mailbox keeps the newest
        frame under load): those are counted as depth_of_dropped_frames, not as pairing faults."""
        stamps = pairer.take_unpaired_stamps()
        if not stamps:
            return 0
        tolerance = pairer.tolerance_ns
        with self._lock:
            dropped = list(self._colour_dropped)
        n = sum(1 for s in stamps if any(abs(s - c) <= tolerance for c in dropped))
        if n:
            self._count("depth_of_dropped_frames", n)
        return n

    def _colour_processed(self, stamp_ns: int) -> None:
        """The colour frame `stamp_ns` reached the 3D step: the frames received before it and
        never processed were dropped by the node."""
        with self._lock:
            if stamp_ns not in self._colour_pending:
                return  # not noted on arrival (a caller other than the node)
            # In arrival order: everything received before this frame was dropped (stamps may
            # go back when a bag loops, so the order of arrival decides, not the stamps).
            while self._colour_pending:
                pending = self._colour_pending.popleft()
                if pending == stamp_ns:
                    break
                self._colour_dropped.append(pending)

    def counters(self) -> dict[str, int]:
        """The pairer's counters, as depth.<name>, summed over the node's activations."""
        pairer = self._pairer
        with self._lock:
            total = collections.Counter(self._counter_base)
        if pairer is not None:
            total.update(pairer.counters)
        return {f"depth.{k}": int(v) for k, v in total.items()}

    # ---- the 3D step ------------------------------------------------------------------------
    def _usable_depth(self, pixels: np.ndarray, encoding: str, colour_size: tuple[int, int]):
        """(depth in metres, camera) for a paired depth image, or None after counting why it
        cannot give 3D with this colour frame (no camera_info yet, sizes that do not match)."""
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
            return depth3d.depth_to_metres(pixels, encoding), camera
        except ValueError as e:
            self._reject("depth.encoding", str(e))
            return None

    def estimate(self, views: list[TrackView], stamp_ns: int, colour_size: tuple[int, int],
                 max_points: int = 0) -> Optional[Frame3D]:
        """The 3D of every live track on the colour frame `stamp_ns` of size (w, h), with up to
        `max_points` inlier points each when > 0; None when this frame has no usable depth (it
        is published in 2D)."""
        self.colour_arrived()  # a processed frame arrived, whoever calls this
        self._colour_processed(stamp_ns)
        pairer = self._pairer
        if pairer is None or self._last_depth < 0:
            return None  # no depth has arrived: the node runs as without depth
        if self._clock() / NS_PER_S - self._last_depth > DEPTH_STALE_S:
            # Depth stopped: the node runs as without depth (normal, not a fault per frame).
            if not self._depth_stopped:
                self._depth_stopped = True
                self._count("depth_stopped")
                log.warning(f"no depth image on {self.depth_topic} for {DEPTH_STALE_S:.0f} s: tracks go "
                            "out in 2D until depth arrives again")
            return None
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
        start = time.perf_counter()
        usable = self._usable_depth(*item, colour_size)
        if usable is None:
            return None
        depth_m, camera = usable
        objects = {}
        for view in views:
            if view.state not in CONFIDENT_STATES or view.mask is None:
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

    def check_motion(self, frame3d: Optional[Frame3D], views: list[TrackView],
                     stamp_ns: int) -> tuple[Optional[Frame3D], list[Jump]]:
        """The 3D jump check on this frame's estimates (`frame3d` as published: in target_frame),
        and the jumps it flagged. A flagged track's estimate is replaced by an invalid one (no
        position anywhere on this frame: Track.has_position false, no detection, pose,
        target_point, tf or points); the jump is logged once (naming the track, both positions
        and the speed) and counted as depth.jumps, each frame it withholds as depth.jump_frames.
        Tracks that ended are forgotten, whether or not this frame has 3D."""
        self._jumps.keep_only(v.id for v in views if v.state != TrackState.REPLACED)
        if frame3d is None:
            return None, []
        by_id = {v.id: v for v in views}
        objects, jumps = dict(frame3d.objects), []
        for track_id, obj in frame3d.objects.items():
            view = by_id.get(track_id)
            if view is None or not obj.valid:
                continue
            was_flagged = self._jumps.pending(track_id)
            jump = self._jumps.check(track_id, obj.position, stamp_ns, float(np.linalg.norm(obj.stderr)),
                                     grounded_ns=int(view.last_grounding_ns), target_id=int(view.target_id))
            if jump is None:
                if was_flagged:
                    log.info(f"track {track_id}: its 3D position is believed again")
                continue
            objects[track_id] = depth3d.Object3D(valid=False, n_valid=obj.n_valid, reason="3d jump")
            jumps.append(jump)
            self._count("depth.jump_frames")
            if jump.first:
                self._count("depth.jumps")
                log.warning(f"{jump.describe()} (over depth.max_speed_mps = {self._jumps.max_speed_mps:g}); no "
                            "position until it is back within reach or a grounding confirms it")
        if not jumps:
            return frame3d, []
        return Frame3D(frame3d.frame_id, objects, frame3d.seconds), jumps
