"""Image conversion between sensor_msgs and numpy, for the encodings the node accepts.

Owns the checks a camera message must pass before the pipeline sees it and the reason keys its
rejections are counted under. Written with numpy and OpenCV because the PyPI `cv_bridge` is
broken (ROS 1 code with a fake compiled part: it crashes under numpy 2 and fails on colour
images with OpenCV 5), and because the conversions themselves are a few lines each.

Raw images in: bgr8, rgb8, bgra8, rgba8, mono8 -> HxWx3 uint8 RGB (the pipeline's format).
Raw images out: any of those encodings from an HxWxC uint8 array (the label mask is mono8, the
overlay bgr8). Compressed images: JPEG and PNG, both directions. Depth images in: 16UC1
(millimetres) and 32FC1 (metres) -> HxW uint16 / float32 in native byte order (the units are
the caller's business: steerseg_ros.depth.depth_to_metres).
"""
from __future__ import annotations

import array as _array
import sys
from typing import Optional

import io
import warnings

import cv2
import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

# encoding -> (channels, OpenCV conversion to RGB; None when already RGB)
ENCODINGS: dict[str, tuple[int, Optional[int]]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}
# RGB -> encoding, for publishing an RGB array in another encoding.
_FROM_RGB: dict[str, Optional[int]] = {
    "rgb8": None,
    "bgr8": cv2.COLOR_RGB2BGR,
    "rgba8": cv2.COLOR_RGB2RGBA,
    "bgra8": cv2.COLOR_RGB2BGRA,
    "mono8": cv2.COLOR_RGB2GRAY,
}
COMPRESSED_FORMATS = {"jpeg": ".jpg", "png": ".png"}

# A sanity bound on the pixel count: a corrupted header must not make us allocate gigabytes.
MAX_PIXELS = 8192 * 8192
# Pillow warns about images over its own limit (89 M pixels) when it reads their header; ours
# (MAX_PIXELS, 67 M) is lower and refuses them with a counted rejection, so the warning is noise.
warnings.filterwarnings("ignore", category=PILImage.DecompressionBombWarning)


class ImageConversionError(ValueError):
    """A message that cannot be turned into an image. `reason` is a short key for counting
    (e.g. "encoding", "zero_size", "short_data")."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _check_header(height: int, width: int) -> None:
    if height == 0 or width == 0:
        raise ImageConversionError("zero_size", f"image is {width}x{height}")
    if height * width > MAX_PIXELS:
        raise ImageConversionError("too_large", f"image is {width}x{height}, over {MAX_PIXELS} pixels")


def image_to_array(msg: Image) -> np.ndarray:
    """The message's pixels as HxWxC uint8 in the message's own channel order (HxW for mono8),
    a read-only view on the message data where no copy is needed."""
    encoding = msg.encoding.lower()
    if encoding not in ENCODINGS:
        raise ImageConversionError(
            "encoding", f"unsupported encoding {msg.encoding!r}; expected one of {sorted(ENCODINGS)}")
    channels = ENCODINGS[encoding][0]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_header(height, width)
    # Byte order only matters for multi-byte channels, and every accepted encoding has one byte
    # per channel; anything but 0/1 is a corrupted header.
    if msg.is_bigendian not in (0, 1):
        raise ImageConversionError("endianness", f"is_bigendian is {msg.is_bigendian}, not 0 or 1")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageConversionError(
            "step", f"step {step} is smaller than width x channels = {width} x {channels} = {row_bytes}")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < height * step:
        raise ImageConversionError(
            "short_data", f"data has {data.size} bytes, fewer than height x step = {height} x {step} = {height * step}")
    # Rows may be padded (step > width x channels): view the rows, then drop the padding.
    rows = data[:height * step].reshape(height, step)[:, :row_bytes]
    if channels == 1:
        return rows
    return rows.reshape(height, width, channels)


# Depth encodings (REP 118): encoding -> pixel dtype (little-endian; byte-swapped for big-endian
# messages).
DEPTH_ENCODINGS: dict[str, np.dtype] = {"16uc1": np.dtype("<u2"), "32fc1": np.dtype("<f4")}


def depth_image_to_array(msg: Image) -> tuple[np.ndarray, str]:
    """(HxW array, canonical encoding "16UC1" or "32FC1") from a depth image message, in native
    byte order: a read-only view on the message data where no copy is needed."""
    encoding = msg.encoding.upper()
    if encoding.lower() not in DEPTH_ENCODINGS:
        raise ImageConversionError(
            "encoding", f"unsupported depth encoding {msg.encoding!r}; expected 16UC1 (mm) or 32FC1 (m)")
    dtype = DEPTH_ENCODINGS[encoding.lower()]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_header(height, width)
    if msg.is_bigendian not in (0, 1):
        raise ImageConversionError("endianness", f"is_bigendian is {msg.is_bigendian}, not 0 or 1")
    row_bytes = width * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            "step", f"step {step} is smaller than width x {dtype.itemsize} bytes = {row_bytes}")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < height * step:
        raise ImageConversionError(
            "short_data", f"data has {data.size} bytes, fewer than height x step = {height} x {step} = {height * step}")
    rows = data[:height * step].reshape(height, step)[:, :row_bytes]
    pixels = rows.view(dtype.newbyteorder(">") if msg.is_bigendian else dtype).reshape(height, width)
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return pixels, encoding


def depth_array_to_image(depth: np.ndarray, header: Optional[Header] = None) -> Image:
    """A 16UC1 (uint16, millimetres) or 32FC1 (float32, metres) depth image message."""
    encodings = {np.dtype(np.uint16): ("16UC1", 2), np.dtype(np.float32): ("32FC1", 4)}
    if depth.ndim != 2 or depth.dtype not in encodings:
        raise ImageConversionError("dtype", f"expected an HxW uint16 or float32 depth array, got {depth.dtype} {depth.shape}")
    encoding, size = encodings[depth.dtype]
    height, width = depth.shape
    _check_header(height, width)
    msg = Image(height=height, width=width, encoding=encoding, step=width * size)
    if header is not None:
        msg.header = header
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.data = _byte_array(np.ascontiguousarray(depth).view(np.uint8))
    return msg


def image_to_rgb(msg: Image, out: Optional[np.ndarray] = None) -> np.ndarray:
    """HxWx3 uint8 RGB from a bgr8, rgb8, bgra8, rgba8 or mono8 image message (an array the
    caller owns, independent of the message's buffer). `out`: memory to convert into (used when
    its shape is the image's; see FrameBuffer.spare)."""
    pixels = image_to_array(msg)
    conversion = ENCODINGS[msg.encoding.lower()][1]
    out = _usable(out, pixels.shape[:2])
    if conversion is None:
        if out is None:
            return np.array(pixels)
        np.copyto(out, pixels)
        return out
    return _convert(np.ascontiguousarray(pixels), conversion, out)


def _usable(out: Optional[np.ndarray], height_width: tuple[int, ...]) -> Optional[np.ndarray]:
    """`out` when an RGB image of that size can be written into it as it is, else None."""
    if (out is None or out.shape != (*height_width, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous
            or not out.flags.writeable):
        return None
    return out


def _convert(pixels: np.ndarray, conversion: int, out: Optional[np.ndarray]) -> np.ndarray:
    if out is None:
        return cv2.cvtColor(pixels, conversion)
    return cv2.cvtColor(pixels, conversion, out)  # OpenCV writes into a dst of the right size and type


def array_to_image(array: np.ndarray, encoding: str, header: Optional[Header] = None) -> Image:
    """An image message holding `array` (HxW or HxWxC uint8, already in `encoding`'s channel
    order)."""
    encoding = encoding.lower()
    if encoding not in ENCODINGS:
        raise ImageConversionError("encoding", f"cannot publish encoding {encoding!r}")
    channels = ENCODINGS[encoding][0]
    if array.dtype != np.uint8:
        raise ImageConversionError("dtype", f"expected uint8 pixels, got {array.dtype}")
    shape_channels = 1 if array.ndim == 2 else (array.shape[2] if array.ndim == 3 else -1)
    if shape_channels != channels:
        raise ImageConversionError(
            "channels", f"{encoding} needs {channels} channel(s), got an array of shape {array.shape}")
    height, width = array.shape[:2]
    _check_header(height, width)
    msg = Image(check_fields=True)  # see _byte_array
    if header is not None:
        msg.header = header
    msg.height, msg.width = height, width
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = width * channels
    msg.data = _byte_array(array)
    return msg


class ImageBuffer:
    """Message memory reused frame after frame for one published image: an array.array('B')
    (what rclpy keeps message data in) and a numpy view of it to draw into, so the image is
    drawn straight into the message instead of being copied there. Safe because rclpy's
    publish serialises the message before it returns: reuse the buffer only for the next frame,
    after the message holding it has been published."""

    def __init__(self):
        self.data = _array.array("B")
        self.shape: tuple[int, ...] = ()

    def view(self, shape: tuple[int, ...]) -> np.ndarray:
        """The buffer as a uint8 array of `shape` (contents undefined; reallocated on a new shape)."""
        size = int(np.prod(shape))
        if len(self.data) != size:
            self.data = _array.array("B", bytes(size))
        self.shape = tuple(shape)
        return np.frombuffer(self.data, np.uint8).reshape(shape)

    def message(self, encoding: str, header: Optional[Header] = None) -> Image:
        """An image message whose data is this buffer (as drawn through the last `view`)."""
        channels = ENCODINGS[encoding][0]
        height, width = self.shape[:2]
        if (len(self.shape) == 2 and channels != 1) or (len(self.shape) == 3 and self.shape[2] != channels):
            raise ImageConversionError("channels", f"{encoding} needs {channels} channel(s), the buffer is {self.shape}")
        _check_header(height, width)
        msg = Image(check_fields=True)  # see _byte_array: keeps the buffer itself, uncopied
        if header is not None:
            msg.header = header
        msg.height, msg.width, msg.encoding, msg.is_bigendian = height, width, encoding, 0
        msg.step = width * channels
        msg.data = self.data
        return msg


def _byte_array(pixels: np.ndarray) -> _array.array:
    """The pixels as the array.array('B') rclpy keeps message data in, with one copy. Assigning
    the numpy array itself converts element by element (about 50x slower); bytes would be
    copied twice (tobytes, then into an array.array). The message must be made with
    check_fields=True: without it rclpy's setter copies even an array.array('B') once more
    (array.array('B', value)); with it the array is kept as given."""
    data = _array.array("B")
    data.frombytes(np.ascontiguousarray(pixels).data)
    return data


def rgb_to_image(rgb: np.ndarray, encoding: str = "bgr8", header: Optional[Header] = None) -> Image:
    """An image message from HxWx3 RGB pixels, converted to `encoding`."""
    encoding = encoding.lower()
    if encoding not in _FROM_RGB:
        raise ImageConversionError("encoding", f"cannot publish encoding {encoding!r}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageConversionError("channels", f"expected HxWx3 RGB pixels, got shape {rgb.shape}")
    conversion = _FROM_RGB[encoding]
    pixels = rgb if conversion is None else cv2.cvtColor(rgb, conversion)
    return array_to_image(pixels, encoding, header)


def compressed_to_rgb(msg: CompressedImage, out: Optional[np.ndarray] = None) -> np.ndarray:
    """HxWx3 uint8 RGB from a JPEG or PNG CompressedImage (format strings such as "jpeg",
    "png" or image_transport's "bgr8; jpeg compressed bgr8" are accepted). `out`: as for
    image_to_rgb."""
    fmt = msg.format.lower()
    if fmt and not any(name in fmt for name in ("jpeg", "jpg", "png")):
        raise ImageConversionError("format", f"unsupported compressed format {msg.format!r}; expected jpeg or png")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ImageConversionError("zero_size", "compressed image has no data")
    # The size comes from the header before anything is decoded: a small PNG can hold a huge
    # image (77 kB of zeros decode to 9000x9000 pixels, 243 MB).
    width, height = compressed_size(data)
    _check_header(height, width)
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageConversionError("decode", f"could not decode {data.size} bytes as {msg.format or 'an image'}")
    _check_header(decoded.shape[0], decoded.shape[1])
    return _convert(decoded, cv2.COLOR_BGR2RGB, _usable(out, decoded.shape[:2]))


def compressed_size(data) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG from its header alone (nothing is decoded). Raises
    ImageConversionError ("decode") for data that is neither."""
    # Pillow's open() reads only the header (PNG: IHDR; JPEG: the markers up to the frame
    # header); pixels are decoded only on load(), which is never called here.
    try:
        with PILImage.open(io.BytesIO(memoryview(data)), formats=("PNG", "JPEG")) as image:
            return image.size
    except PILImage.DecompressionBombError as e:  # over twice Pillow's own pixel limit
        raise ImageConversionError("too_large", f"compressed image is too large: {e}") from e
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise ImageConversionError(
            "decode", f"{len(memoryview(data))} bytes are not a PNG or JPEG image ({type(e).__name__}: {e})") from e


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", header: Optional[Header] = None,
                      jpeg_quality: int = 90) -> CompressedImage:
    """A CompressedImage (JPEG or PNG) from HxWx3 RGB pixels."""
    fmt = fmt.lower()
    if fmt not in COMPRESSED_FORMATS:
        raise ImageConversionError("format", f"cannot compress to {fmt!r}; expected one of {sorted(COMPRESSED_FORMATS)}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageConversionError("channels", f"expected HxWx3 uint8 RGB pixels, got {rgb.dtype} {rgb.shape}")
    _check_header(rgb.shape[0], rgb.shape[1])
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(COMPRESSED_FORMATS[fmt], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ImageConversionError("encode", f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    # image_transport's convention: "<pixel encoding>; <codec> compressed <encoding>".
    msg.format = f"bgr8; {fmt} compressed bgr8"
    msg.data = _byte_array(encoded)
    return msg
