"""How camera frames and seed masks reach the tracker node's pipeline.

Owns the one-slot mailbox that keeps only the newest camera message (`LatestMailbox`), the
processing thread that takes from it (`FrameThread`), the conversion of a camera message into
the pipeline's frame memory (`incoming_rgb`), and the seed masks waiting for their frame
(`SeedQueue`).
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from steerseg_ros.streaming.pipeline import Pipeline, PipelineOutput, SeedRejected
from steerseg_ros.ros.image_conversion import ImageConversionError, compressed_to_rgb, image_to_array, image_to_rgb
from steerseg_ros.ros.messages import stamp_to_ns

# How many seed masks may wait for their frame.
MAX_PENDING_SEEDS = 4


def incoming_rgb(msg, pipeline: Pipeline) -> np.ndarray:
    """A camera message (Image or CompressedImage) as the HxWx3 RGB frame the pipeline takes,
    converted into the memory of a frame that left the pipeline's buffer where there is one (a
    fresh array per frame costs its page faults: FrameBuffer.spare)."""
    if isinstance(msg, CompressedImage):
        latest = pipeline.buffer.latest()  # its size is only known once decoded: guess the last one's
        return compressed_to_rgb(msg, pipeline.buffer.spare(latest.image.shape) if latest is not None else None)
    return image_to_rgb(msg, pipeline.buffer.spare((int(msg.height), int(msg.width), 3)))


class LatestMailbox:
    """A one-slot mailbox: `put` replaces an item not yet taken (the caller counts it as
    dropped), so the consumer always gets the newest one."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        """Leave `item`; True when it replaced one that was never taken."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> Any:
        """The newest item (None after `timeout` seconds or once closed)."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self._item = None


class FrameThread:
    """The processing thread: hands the newest camera message to `handle(kind, msg)`, and
    between frames calls `apply_parameters` once `parameters_changed` is set. A frame that
    raises is counted (`internal_errors`) and logged; the thread goes on."""

    def __init__(self, handle: Callable[[str, Any], None], apply_parameters: Callable[[], None],
                 count: Callable[..., None], logger):
        self._handle = handle
        self._apply_parameters = apply_parameters
        self._count = count
        self._logger = logger
        self._mailbox = LatestMailbox()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.parameters_changed = threading.Event()

    def put(self, kind: str, msg) -> bool:
        """Leave a camera message; True when it replaced one not yet processed (dropped)."""
        return self._mailbox.put((kind, msg))

    def start(self) -> None:
        self._stop.clear()
        self._mailbox.reopen()
        self._thread = threading.Thread(target=self._run, name="steerseg-processing", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread (at most 10 s); drops a message not yet taken."""
        self._stop.set()
        self._mailbox.close()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            if self._thread.is_alive():
                self._logger.warning("the processing thread did not stop within 10 s")
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._mailbox.take(timeout=0.2)
            if self.parameters_changed.is_set():
                self.parameters_changed.clear()
                self._apply_parameters()
            if item is None:
                continue
            try:
                self._handle(*item)
            except Exception as e:  # the node keeps running whatever one frame does
                self._count("internal_errors")
                self._logger.error(f"processing a frame failed: {type(e).__name__}: {e}")



class CameraTransportWatch:
    """Frames published only on the other image transport's topic (JPEG on .../compressed while
    image_transport is raw, or the reverse) would be ignored without a word: while the node
    waits for its first frame since activate and the ROS graph shows a publisher on the other
    transport's topic but none on its own, say so once, naming both topics (`warning` stays set,
    for /diagnostics, until a frame arrives)."""

    def __init__(self, node):
        self._node = node
        self.warning: Optional[str] = None

    def _topics(self, transport: str) -> tuple[str, str]:
        """The resolved camera topic of `transport`, and the other transport's."""
        raw, compressed = self._node.resolve_topic_name("image"), self._node.resolve_topic_name("image/compressed")
        return (compressed, raw) if transport == "compressed" else (raw, compressed)

    def check(self, transport: str, waiting: bool) -> Optional[str]:
        """`waiting`: active with no frame received since activate. Looked up in the graph."""
        if not waiting:
            self.warning = None
            return None
        configured, other = self._topics(transport)
        graph = self._node.get_publishers_info_by_topic
        if not graph(other) or graph(configured):
            return self.warning
        if self.warning is None:
            wanted = "compressed" if transport == "raw" else "raw"
            self.warning = (f"no camera frame on {configured} (image_transport {transport}), but {other} has a "
                            f"publisher: set image_transport to {wanted} (launch argument "
                            f"image_transport:={wanted}) and re-activate")
            self._node.get_logger().warning(self.warning)
        return self.warning


@dataclass
class _Seed:
    stamp_ns: int  # 0: the newest frame
    mask: np.ndarray
    label: str
    # Frames processed while it waited for its own. A seed whose frame never comes (a stamp in
    # the future, another clock) expires after a buffer's worth of frames: by then a frame
    # with its stamp would have left the buffer anyway.
    frames_waited: int = 0


class SeedQueue:
    """Seed masks (the `seed_mask` topic) waiting for their frame to be processed. `reject`
    and `count` report to the node's counters."""

    def __init__(self, reject: Callable[[str, str], None], count: Callable[..., None]):
        self._reject = reject
        self._count = count
        self._seeds: collections.deque[_Seed] = collections.deque()

    def add(self, msg: Image) -> None:
        """Queue a seed mask message (executor thread), or reject it."""
        try:
            if msg.encoding.lower() != "mono8":
                raise ImageConversionError("encoding", f"a seed mask must be mono8, got {msg.encoding!r}")
            mask = image_to_array(msg) > 0
        except ImageConversionError as e:
            self._reject(f"seed.{e.reason}", str(e))
            return
        if not mask.any():
            self._reject("seed.empty", "seed mask is empty")
            return
        if len(self._seeds) >= MAX_PENDING_SEEDS:
            self._seeds.popleft()
            self._reject("seed.overflow", f"more than {MAX_PENDING_SEEDS} seed masks waiting; dropped the oldest")
        self._seeds.append(_Seed(stamp_to_ns(msg.header.stamp), mask, ""))

    def clear(self) -> None:
        self._seeds.clear()

    def apply(self, pipeline: Pipeline, output: PipelineOutput) -> None:
        """Seed tracks from waiting seed masks whose frame has been processed; the others wait
        (a seed whose frame is still to come does not hold up those behind it) until they
        expire."""
        # Only this thread takes seeds out; the executor thread may append meanwhile.
        for _ in range(len(self._seeds)):
            seed = self._seeds.popleft()
            if seed.stamp_ns > output.frame.stamp_ns:  # its frame has not arrived yet
                seed.frames_waited += 1
                if seed.frames_waited > pipeline.config.buffer_size:
                    self._reject("seed.expired", (
                        f"no frame with the seed mask's stamp {seed.stamp_ns / 1e9:.6f} s arrived within "
                        f"{pipeline.config.buffer_size} frames (newest {output.frame.stamp_ns / 1e9:.6f} s)"))
                else:
                    self._seeds.append(seed)
                continue
            try:
                view = pipeline.seed_mask(seed.mask, seed.stamp_ns or None, seed.label)
            except SeedRejected as e:
                self._reject(f"seed.{e.reason}", str(e))
                continue
            self._count("seeds")
            output.tracks.append(view)
