"""The drawing node: owns the pixels for people. It draws the overlay image and the RViz markers
from what the tracker node publishes (the label mask and the tracks) and the camera image,
matched by stamp, in its own process, so that drawing never takes time from the tracking path
and the tracker's output does not depend on whether it runs (as yolo_ros's debug node).

Owns `DrawerNode` (the lifecycle node `steerseg_drawer`), `StampMatcher` (the pairing of the
three streams) and `main()`. It draws with the same functions the tracker node uses when it
draws itself (`render.overlay_labels`, `messages.markers_from_tracks`), so both give the same
overlay for the same inputs. It subscribes to its inputs only while something subscribes to
the overlay or the markers (checked every second): an idle drawing node costs nothing, not even
the camera stream's transport.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from steerseg_ros import render
from steerseg_ros.config_checks import check_finite
from steerseg_msgs.msg import TrackArray
from steerseg_ros.ros import main_loop, parameters
from steerseg_ros.ros.image_conversion import (ImageBuffer, ImageConversionError, array_to_image, compressed_to_rgb,
                                               image_to_array, image_to_rgb)
from steerseg_ros.ros.messages import MarkerConfig, drawn_tracks, markers_from_tracks, stamp_to_ns
from steerseg_ros.ros.node_base import NodeBase, input_qos, validate_camera_options
from steerseg_ros.ros.node_config import declare, read_config

NODE_NAME = "steerseg_drawer"
PARTS = ("image", "mask", "tracks")


@dataclass
class DrawerConfig:
    """The drawing node's settings (each field's help text is in its metadata)."""

    autostart: bool = field(default=False, metadata={"help": (
        "Configure and activate at start-up without a lifecycle manager.")})
    image_transport: str = field(default="raw", metadata={"help": (
        "raw: the camera's sensor_msgs/Image on `image`; compressed: sensor_msgs/CompressedImage on "
        "`image/compressed` (as the tracker node's parameter of the same name).")})
    image_qos: str = field(default="sensor_data", metadata={"help": (
        "QoS of the camera subscription: sensor_data (best effort) or reliable.")})
    overlay_alpha: float = field(default=0.5, metadata={"help": "Opacity of the mask tint in the overlay image."})
    queue_size: int = field(default=30, metadata={"help": (
        "Stamps waiting for their other parts (camera image, mask, tracks). The camera image comes "
        "first and the mask once the tracker has processed that frame: cover the tracker's latency "
        "at camera rate. Frames the tracker skipped never complete and leave this queue, counted.")})
    draw_unsubscribed: bool = field(default=False, metadata={"help": (
        "Subscribe and draw even when nothing subscribes to the overlay or the markers.")})
    stats_period_s: float = field(default=5.0, metadata={"help": (
        "Publish /diagnostics this often (seconds); 0: never. Takes effect at the next configure.")})

    def validate(self) -> None:
        check_finite(self)
        validate_camera_options(self)
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if self.stats_period_s < 0:
            raise ValueError(f"stats_period_s must be >= 0, got {self.stats_period_s}")


class StampMatcher:
    """Groups messages of several streams by exact stamp: `add` returns the group once every
    part of a stamp has arrived. Each stream comes in stamp order, so a stamp that completes
    ends every older incomplete one (a camera frame the tracker skipped); at most `capacity`
    stamps wait, the oldest leaving first. Both are counted in `dropped`.

    message_filters' TimeSynchronizer does this in ROS, but it does not install on these machines
    (it is not on PyPI); this is the few lines of it that the drawing node needs."""

    def __init__(self, parts: tuple[str, ...], capacity: int):
        self.parts = parts
        self.capacity = capacity
        self.dropped = 0
        self._waiting: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()

    def add(self, part: str, stamp_ns: int, msg: Any) -> Optional[dict[str, Any]]:
        group = self._waiting.get(stamp_ns)
        if group is None:
            group = self._waiting[stamp_ns] = {}
            while len(self._waiting) > self.capacity:
                self._waiting.popitem(last=False)
                self.dropped += 1
        group[part] = msg
        if len(group) < len(self.parts):
            return None
        for stamp in list(self._waiting):
            del self._waiting[stamp]
            if stamp == stamp_ns:
                break
            self.dropped += 1
        return group

    def __len__(self) -> int:
        return len(self._waiting)

    def clear(self) -> None:
        self._waiting.clear()


def draw(image_msg: Any, mask_msg: Image, tracks_msg: TrackArray, overlay_alpha: float,
         marker_config: MarkerConfig, buffer: Optional[ImageBuffer] = None) -> tuple[Image, MarkerArray]:
    """The overlay image message (bgr8, drawn into `buffer`'s memory when given) and the markers
    for one matched frame, stamped as the mask. Raises ImageConversionError for an image it
    cannot read and ValueError when the mask and the image differ in size."""
    rgb = compressed_to_rgb(image_msg) if isinstance(image_msg, CompressedImage) else image_to_rgb(image_msg)
    labels = image_to_array(mask_msg)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ImageConversionError("encoding", f"the mask is {mask_msg.encoding}, expected mono8")
    tracks = drawn_tracks(tracks_msg.tracks)
    header = mask_msg.header
    if buffer is not None:
        render.overlay_labels(rgb, labels, tracks, overlay_alpha, out=buffer.view(rgb.shape))
        overlay = buffer.message("bgr8", header)
    else:
        overlay = array_to_image(render.overlay_labels(rgb, labels, tracks, overlay_alpha), "bgr8", header)
    markers = markers_from_tracks(tracks, tracks_msg.header, (rgb.shape[1], rgb.shape[0]), marker_config)
    return overlay, markers


def static_specs() -> list[parameters.ParamSpec]:
    return parameters.specs(DrawerConfig, "") + parameters.specs(MarkerConfig, "markers")


def write_default_params(path: str) -> None:
    """Write the drawing node's parameters file with every default (config/drawer.yaml)."""
    header = (
        "Parameters of the drawing node, every one at its default (generated by\n"
        "steerseg_ros.ros.drawer_node.write_default_params; test_drawer_node checks that it still matches).")
    with open(path, "w") as f:
        f.write(parameters.render_yaml(f"/**/{NODE_NAME}", static_specs(), header))


class DrawerNode(NodeBase):
    DIAGNOSTICS_NAME = "drawing"

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        for spec in static_specs():
            declare(self, spec)
        self._config, self._markers = self._read_config()
        self._matcher = StampMatcher(PARTS, self._config.queue_size)
        self._pubs: dict[str, Any] = {}
        self._subs: list = []
        self._overlay_buffer = ImageBuffer()
        self._watch_timer = None

    def _takes_effect(self, name: str) -> str:
        """Every setting is read at activate, the matcher's queue and the stats timer at
        configure: a change says so in its set result (NodeBase)."""
        if name == "autostart":
            return "start"
        return "configure" if name in ("queue_size", "stats_period_s") else "activate"

    def _read_config(self) -> tuple[DrawerConfig, MarkerConfig]:
        return read_config(self, DrawerConfig), read_config(self, MarkerConfig, "markers")

    # ---- lifecycle (transitions guarded by lifecycle.GuardedTransitions) ----------------------
    def _configure(self) -> None:
        self._error = None
        self._config, self._markers = self._read_config()
        self._matcher = StampMatcher(PARTS, self._config.queue_size)
        self._start_stats_timer(self._config.stats_period_s)
        self._lifecycle = "inactive"

    def _activate(self) -> None:
        self._config, self._markers = self._read_config()
        images_out = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self._pubs = {"overlay": self.create_publisher(Image, "overlay", images_out),
                      "markers": self.create_publisher(MarkerArray, "markers", QoSProfile(
                          depth=10, reliability=ReliabilityPolicy.RELIABLE))}
        self._watch_timer = self.create_timer(1.0, self._watch)
        self._lifecycle = "active"
        self._watch()
        self.get_logger().info(f"active: drawing {self.resolve_topic_name('overlay')} and "
                               f"{self.resolve_topic_name('markers')} from {self.resolve_topic_name('mask')}, "
                               f"{self.resolve_topic_name('tracks')} and the camera")

    def _deactivate(self) -> None:
        if self._watch_timer is not None:
            self.destroy_timer(self._watch_timer)
            self._watch_timer = None
        self._unsubscribe()
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}
        if self._lifecycle == "active":
            self._lifecycle = "inactive"

    def _cleanup(self) -> None:
        self._deactivate()
        self._stop_stats_timer()
        self._lifecycle = "unconfigured"

    # ---- inputs -------------------------------------------------------------------------------
    def _watched(self) -> bool:
        return self._config.draw_unsubscribed or any(p.get_subscription_count() > 0 for p in self._pubs.values())

    def _watch(self) -> None:
        """Subscribe while someone watches the overlay or the markers; unsubscribe otherwise."""
        if self._lifecycle != "active":
            return
        if self._watched() and not self._subs:
            self._subscribe()
        elif not self._watched() and self._subs:
            self._unsubscribe()

    def _subscribe(self) -> None:
        config = self._config
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        camera_qos = input_qos(config.image_qos)
        if config.image_transport == "compressed":
            camera = self.create_subscription(CompressedImage, "image/compressed", lambda m: self._on("image", m),
                                              camera_qos)
        else:
            camera = self.create_subscription(Image, "image", lambda m: self._on("image", m), camera_qos)
        self._subs = [camera,
                      self.create_subscription(Image, "mask", lambda m: self._on("mask", m),
                                               QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)),
                      self.create_subscription(TrackArray, "tracks", lambda m: self._on("tracks", m), reliable)]
        self._count("subscribed")

    def _unsubscribe(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self._matcher.clear()

    def counters(self) -> dict[str, int]:
        return {**super().counters(), "unmatched": self._matcher.dropped}

    def _on(self, part: str, msg: Any) -> None:
        self._count(f"received.{part}")
        group = self._matcher.add(part, stamp_to_ns(msg.header.stamp), msg)
        if group is None or not self._pubs:
            return
        try:
            overlay, markers = draw(group["image"], group["mask"], group["tracks"], self._config.overlay_alpha,
                                    self._markers, self._overlay_buffer)
        except (ImageConversionError, ValueError) as e:
            self._count("rejected")
            # Name the inputs (as remapped): the user must see which of their topics is wrong.
            inputs = ", ".join(sub.topic_name for sub in self._subs)
            self.get_logger().warning(f"cannot draw the frame at {stamp_to_ns(msg.header.stamp) / 1e9:.6f} s from "
                                      f"{inputs}: {e}", throttle_duration_sec=5.0)
            return
        self._pubs["overlay"].publish(overlay)
        self._pubs["markers"].publish(markers)
        self._count("drawn")

    # ---- diagnostics --------------------------------------------------------------------------
    def _status(self, counts: dict) -> tuple[int, str, dict]:
        if counts.get("rejected"):
            level, message = DiagnosticStatus.WARN, f"{counts['rejected']} frames could not be drawn"
        else:
            level, message = DiagnosticStatus.OK, self._lifecycle
        values = {"lifecycle": self._lifecycle, "subscribed_now": bool(self._subs), "waiting": len(self._matcher),
                  **counts}
        return level, message, values


def main(args: Optional[list[str]] = None) -> int:
    """Run the drawing node until SIGINT or SIGTERM (both end it with exit code 0)."""
    return main_loop.run(DrawerNode, SingleThreadedExecutor, args)


if __name__ == "__main__":
    raise SystemExit(main())
