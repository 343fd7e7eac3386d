"""ROS 2 bags without ROS: read a recording's colour, depth and camera_info messages, and write
the synthetic RGB-D scene as a bag.

Owns the bag side of recorded robot data. `ros2 bag` is not installable on these machines;
the pure-Python `rosbags` library reads and writes rosbag2 bags (.mcap and .db3) with its own
message type store, so this module needs neither rclpy nor the message packages. The player
(`steerseg-play --bag`) publishes the raw CDR bytes read here, so what goes out over DDS is
byte for byte what was recorded (stamps included).

Messages come in the order they were recorded (the bag's log time, which is how a recorder
saw them arrive: nearly stamp order, and the order a live camera would deliver them).
Reading streams: nothing but the message at hand is held in memory.
"""
from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
DEPTH_ENCODINGS = ("16UC1", "32FC1")
NS_PER_S = 1_000_000_000

# The topic names the synthetic bag uses: those of a RealSense driver with aligned depth.
COLOUR_TOPIC = "/camera/camera/color/image_raw"
DEPTH_TOPIC = "/camera/camera/aligned_depth_to_color/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera/color/camera_info"


class BagError(ValueError):
    """A bag that cannot be used: missing, unreadable, or without the topics asked for."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * NS_PER_S + int(header.stamp.nanosec)


# ---- reading ----------------------------------------------------------------------------------

@dataclass
class BagTopics:
    """Which bag topic is the colour image, the depth image and the colour camera_info (None:
    not in the bag)."""

    colour: Optional[str] = None
    depth: Optional[str] = None
    camera_info: Optional[str] = None
    colour_type: str = IMAGE

    def selected(self) -> list[str]:
        return [t for t in (self.colour, self.depth, self.camera_info) if t]


@dataclass
class BagMessage:
    """One message: `role` is "colour", "depth" or "camera_info"; `raw` the recorded CDR bytes
    (what the player publishes); `log_ns` the bag's receive time, `stamp_ns` the header's."""

    role: str
    topic: str
    msgtype: str
    log_ns: int
    stamp_ns: int
    frame_id: str
    raw: bytes
    msg: object  # the deserialised message (rosbags' own classes)

    def restamped(self, stamp_ns: int) -> bytes:
        """The recorded bytes with header.stamp set to `stamp_ns` (a looping replay's later
        passes), everything else as recorded. Every message read here starts with its
        std_msgs/Header, so the stamp is the 8 bytes after the 4-byte CDR encapsulation header;
        only plain CDR (what rosbag2 records) is rewritten, checked against the stamp read."""
        encapsulation = self.raw[1] if len(self.raw) >= 12 and self.raw[0] == 0 else None
        if encapsulation not in (0, 1):  # CDR big / little endian
            raise BagError(f"cannot restamp a {self.msgtype} on {self.topic}: not plain CDR")
        layout = struct.Struct("<iI" if encapsulation else ">iI")
        sec, nanosec = layout.unpack_from(self.raw, 4)
        if sec * NS_PER_S + nanosec != self.stamp_ns:
            raise BagError(f"cannot restamp a {self.msgtype} on {self.topic}: its header is not where expected")
        out = bytearray(self.raw)
        layout.pack_into(out, 4, stamp_ns // NS_PER_S, stamp_ns % NS_PER_S)
        return bytes(out)

    def image(self) -> np.ndarray:
        """The pixels: HxWx3 uint8 RGB for colour, HxW uint16 (16UC1) or float32 (32FC1) for depth."""
        if self.msgtype == COMPRESSED:
            return decode_compressed(self.msg)
        return image_array(self.msg, rgb=self.role == "colour")


def open_reader(path: str | Path):
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = AnyReader([path], default_typestore=_typestore())
        reader.open()
    except Exception as e:  # rosbags raises its own errors for a bag it cannot read
        raise BagError(f"cannot read the bag {path}: {e}") from e
    return reader


def find_topics(path: str | Path, topics: Optional[Sequence[str]] = None) -> BagTopics:
    """The colour, depth and camera_info topics of a bag. With `topics`, only those are
    considered. An Image topic whose first message is 16UC1 or 32FC1 is depth, another Image
    (or a CompressedImage) topic is colour; the camera_info is the one next to the colour
    topic (same namespace) or the only one. Raises BagError when that is ambiguous or a
    topic asked for is not in the bag."""
    reader = open_reader(path)
    try:
        conns = {c.topic: c for c in reader.connections}
        if topics:
            missing = [t for t in topics if t not in conns]
            if missing:
                raise BagError(f"topics {missing} are not in the bag (it has {sorted(conns)})")
            conns = {t: conns[t] for t in topics}
        colour, depth, infos = [], [], []
        for topic, conn in conns.items():
            if conn.msgtype == CAMERA_INFO:
                infos.append(topic)
            elif conn.msgtype == COMPRESSED:
                # compressedDepth is not supported; a compressed colour stream is.
                if "compressedDepth" not in topic:
                    colour.append(topic)
            elif conn.msgtype == IMAGE:
                first = next(reader.messages(connections=[conn]), None)
                if first is None:
                    continue
                msg = reader.deserialize(first[2], conn.msgtype)
                (depth if msg.encoding in DEPTH_ENCODINGS else colour).append(topic)
        if len(colour) > 1:
            raise BagError(f"several colour image topics in the bag ({colour}): choose with --topics")
        if len(depth) > 1:
            raise BagError(f"several depth image topics in the bag ({depth}): choose with --topics")
        if not colour:
            raise BagError(f"no colour image topic in the bag (topics: {sorted(conns)})")
        info = None
        if len(infos) == 1:
            info = infos[0]
        elif infos:
            namespace = colour[0].rsplit("/", 1)[0]
            near = [t for t in infos if t.rsplit("/", 1)[0] == namespace]
            if len(near) != 1:
                raise BagError(f"several camera_info topics in the bag ({infos}): choose with --topics")
            info = near[0]
        return BagTopics(colour=colour[0], depth=depth[0] if depth else None, camera_info=info,
                         colour_type=conns[colour[0]].msgtype)
    finally:
        reader.close()


def read_bag(path: str | Path, topics: Optional[BagTopics] = None) -> Iterator[BagMessage]:
    """The bag's colour, depth and camera_info messages in recorded order (see the module
    docstring), each with its raw bytes and header stamp."""
    topics = topics or find_topics(path)
    roles = {topics.colour: "colour", topics.depth: "depth", topics.camera_info: "camera_info"}
    roles.pop(None, None)
    reader = open_reader(path)
    try:
        conns = [c for c in reader.connections if c.topic in roles]
        for conn, log_ns, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            yield BagMessage(role=roles[conn.topic], topic=conn.topic, msgtype=conn.msgtype, log_ns=int(log_ns),
                             stamp_ns=_stamp_ns(msg.header), frame_id=msg.header.frame_id, raw=bytes(raw), msg=msg)
    finally:
        reader.close()


def image_array(msg, rgb: bool = True) -> np.ndarray:
    """The pixels of a (rosbags) sensor_msgs/Image: colour encodings as HxWx3 uint8 RGB when
    `rgb`, 16UC1 as HxW uint16, 32FC1 as HxW float32 (byte order as the message says)."""
    import cv2

    enc = msg.encoding
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    layouts = {"rgb8": (3, np.uint8), "bgr8": (3, np.uint8), "rgba8": (4, np.uint8), "bgra8": (4, np.uint8),
               "mono8": (1, np.uint8), "16UC1": (1, np.uint16), "mono16": (1, np.uint16), "32FC1": (1, np.float32)}
    if enc not in layouts:
        raise BagError(f"image encoding {enc!r} is not supported (one of {', '.join(layouts)})")
    channels, dtype = layouts[enc]
    itemsize = np.dtype(dtype).itemsize
    data = np.asarray(msg.data, dtype=np.uint8)
    if h * w == 0 or step < w * channels * itemsize or data.size < h * step:
        raise BagError(f"image message {w}x{h} step {step} with {data.size} bytes is malformed")
    rows = data[:h * step].reshape(h, step)[:, :w * channels * itemsize]
    order = ">" if msg.is_bigendian else "<"
    pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order)).reshape(h, w, channels)
    pixels = pixels.astype(dtype, copy=False) if itemsize > 1 else pixels
    if channels == 1:
        return np.array(pixels[:, :, 0])
    if not rgb:
        return np.array(pixels)
    conv = {"rgb8": None, "bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB}[enc]
    return np.array(pixels) if conv is None else cv2.cvtColor(pixels, conv)


def decode_compressed(msg) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BagError(f"cannot decode a compressed image (format {msg.format!r})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def camera_info_fields(msg) -> dict:
    """The fields `depth.CameraModel.from_camera_info_fields` takes, from a CameraInfo message."""
    return {"width": int(msg.width), "height": int(msg.height), "k": [float(v) for v in msg.k],
            "d": [float(v) for v in msg.d], "distortion_model": str(msg.distortion_model),
            "frame_id": str(msg.header.frame_id)}


class BagFrameSource:
    """The colour frames of a bag as (name, BGR uint8) pairs, like tools.sources.FrameSource
    (names are frame numbers, zero-padded to five digits); `stamps()` gives their stamps."""

    def __init__(self, path: str | Path, topics: Optional[BagTopics] = None, limit: Optional[int] = None):
        self.path = Path(path)
        self.topics = topics or find_topics(self.path)
        self.limit = limit
        self._stamps = [m.stamp_ns for m in self._colour()]
        if limit is not None:
            self._stamps = self._stamps[:limit]
        if not self._stamps:
            raise BagError(f"no colour frames on {self.topics.colour} in {self.path}")

    def _colour(self) -> Iterator[BagMessage]:
        only = BagTopics(colour=self.topics.colour, colour_type=self.topics.colour_type)
        return read_bag(self.path, only)

    def __len__(self) -> int:
        return len(self._stamps)

    def stamps(self) -> list[int]:
        return list(self._stamps)

    def names(self) -> list[str]:
        return [f"{i:05d}" for i in range(len(self))]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        import cv2

        for i, m in enumerate(self._colour()):
            if i >= len(self):
                break
            yield f"{i:05d}", cv2.cvtColor(m.image(), cv2.COLOR_RGB2BGR)


# ---- writing ----------------------------------------------------------------------------------

STORAGES = ("mcap", "sqlite3")


def _writer(path: Path, storage: str, overwrite: bool):
    from rosbags.rosbag2 import StoragePlugin, Writer

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists (a bag is a folder; remove it or pass overwrite)")
        shutil.rmtree(path)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    return Writer(path, version=9, storage_plugin=plugin)


def _header(ts, stamp_ns: int, frame_id: str):
    Time = ts.types["builtin_interfaces/msg/Time"]
    Header = ts.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=int(stamp_ns // NS_PER_S), nanosec=int(stamp_ns % NS_PER_S)), frame_id=frame_id)


def image_msg(ts, array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """A (rosbags) sensor_msgs/Image from pixels already in `encoding`'s layout."""
    a = np.ascontiguousarray(array)
    h, w = a.shape[:2]
    row_bytes = a.strides[0]
    return ts.types[IMAGE](header=_header(ts, stamp_ns, frame_id), height=h, width=w, encoding=encoding,
                           is_bigendian=0, step=row_bytes, data=a.view(np.uint8).reshape(-1))


def camera_info_msg(ts, fields: dict, stamp_ns: int):
    CameraInfo = ts.types[CAMERA_INFO]
    ROI = ts.types["sensor_msgs/msg/RegionOfInterest"]
    return CameraInfo(header=_header(ts, stamp_ns, fields["frame_id"]), height=fields["height"],
                      width=fields["width"], distortion_model=fields["distortion_model"],
                      d=np.asarray(fields["d"], dtype=np.float64), k=np.asarray(fields["k"], dtype=np.float64),
                      r=np.asarray(fields["r"], dtype=np.float64), p=np.asarray(fields["p"], dtype=np.float64),
                      binning_x=0, binning_y=0, roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
