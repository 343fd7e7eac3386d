"""Image conversion between sensor_msgs and numpy: round trips for every encoding the node
accepts (raw and compressed), padded rows, and a clear, keyed rejection of bad messages."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytestmark = pytest.mark.ros

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from steerseg_ros.ros.image_conversion import (ENCODINGS, ImageConversionError, array_to_image,  # noqa: E402
                                               compressed_to_rgb, image_to_array, image_to_rgb,
                                               rgb_to_compressed, rgb_to_image)
from steerseg_ros.ros.messages import header_at, ns_to_stamp, stamp_to_ns  # noqa: E402


@pytest.fixture(scope="module")
def rgb():
    """A small image with distinct channels, edges and odd sizes (so byte order mistakes show)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image[5:20, 10:30] = (250, 10, 120)
    return image


def _wire(msg):
    """The message as a subscriber in another process receives it."""
    return deserialize_message(serialize_message(msg), type(msg))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_round_trip_is_exact(rgb, encoding):
    header = header_at(1_700_000_000_123_456_789, "camera_optical")
    msg = _wire(rgb_to_image(rgb, encoding, header))
    assert (msg.encoding, msg.height, msg.width) == (encoding, 37, 53)
    assert msg.step == 53 * ENCODINGS[encoding][0]
    assert msg.header.frame_id == "camera_optical"
    assert stamp_to_ns(msg.header.stamp) == 1_700_000_000_123_456_789
    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


def test_channel_order_is_respected(rgb):
    """A pure red pixel stays red whichever encoding carries it."""
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    bgr = array_to_image(red[..., ::-1].copy(), "bgr8")
    assert bytes(bgr.data[:3]) == b"\x00\x00\xff"
    np.testing.assert_array_equal(image_to_rgb(bgr), red)


def test_mono8_round_trip(rgb):
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    msg = _wire(array_to_image(grey, "mono8"))
    np.testing.assert_array_equal(image_to_array(msg), grey)
    out = image_to_rgb(msg)
    assert out.shape == rgb.shape
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)
    # rgb_to_image to mono8 is the usual luma conversion
    np.testing.assert_array_equal(image_to_array(rgb_to_image(rgb, "mono8")), grey)


def test_label_mask_values_survive(rgb):
    label = np.zeros((37, 53), np.uint8)
    label[3:9, 4:10] = 1
    label[20:30, 30:50] = 255
    np.testing.assert_array_equal(image_to_array(_wire(array_to_image(label, "mono8"))), label)


@pytest.mark.parametrize("encoding", ["bgr8", "mono8", "rgba8"])
def test_padded_rows(rgb, encoding):
    """step larger than width x channels (drivers pad rows to alignment) is read correctly."""
    channels = ENCODINGS[encoding][0]
    source = rgb_to_image(rgb, encoding)
    pixels = image_to_array(source)
    pad = 7
    rows = pixels.reshape(37, 53 * channels)
    padded = np.concatenate([rows, np.full((37, pad), 99, np.uint8)], axis=1)
    msg = Image(height=37, width=53, encoding=encoding, step=53 * channels + pad)
    msg.data = padded.tobytes()
    np.testing.assert_array_equal(image_to_rgb(msg), image_to_rgb(source))


def test_converted_image_is_writable_and_independent(rgb):
    msg = rgb_to_image(rgb, "rgb8")
    out = image_to_rgb(msg)
    out[:] = 0
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "png"])
def test_conversion_into_given_memory_equals_a_fresh_conversion(rgb, encoding):
    """The node converts each frame into the memory of an old one (FrameBuffer.spare): the
    pixels are the same as a fresh conversion's, whatever was there before; memory of another
    size is not used."""
    msg = _wire(rgb_to_compressed(rgb, "png") if encoding == "png" else rgb_to_image(rgb, encoding))
    convert = compressed_to_rgb if encoding == "png" else image_to_rgb
    fresh = convert(msg)
    old = np.full_like(rgb, 77)
    into = convert(msg, old)
    assert into is old
    np.testing.assert_array_equal(into, fresh)
    other = np.zeros((37, 54, 3), np.uint8)
    elsewhere = convert(msg, other)
    assert not np.shares_memory(elsewhere, other) and not other.any()
    np.testing.assert_array_equal(elsewhere, fresh)


def test_png_round_trip_is_exact(rgb):
    msg = _wire(rgb_to_compressed(rgb, "png", header_at(5, "cam")))
    assert "png" in msg.format and msg.header.frame_id == "cam"
    np.testing.assert_array_equal(compressed_to_rgb(msg), rgb)


def test_jpeg_round_trip_is_close():
    # A smooth image: JPEG's loss on it is small, and a channel swap would not be.
    yy, xx = np.mgrid[0:64, 0:96]
    smooth = np.stack([xx * 2, yy * 3, 255 - xx * 2], axis=-1).astype(np.uint8)
    msg = _wire(rgb_to_compressed(smooth, "jpeg", jpeg_quality=95))
    assert "jpeg" in msg.format
    out = compressed_to_rgb(msg)
    assert out.shape == smooth.shape
    assert np.abs(out.astype(int) - smooth.astype(int)).mean() < 3.0


def test_compressed_from_other_tools_formats(rgb):
    """image_transport writes "bgr8; jpeg compressed bgr8"; other drivers write just "jpeg"."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    for fmt in ("png", "rgb8; png compressed bgr8", ""):
        msg = CompressedImage(format=fmt)
        msg.data = data.tobytes()
        np.testing.assert_array_equal(compressed_to_rgb(msg), rgb)


def _raw(encoding="bgr8", height=4, width=5, step=None, data=None, is_bigendian=0):
    channels = ENCODINGS.get(encoding, (3, None))[0]
    step = width * channels if step is None else step
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=is_bigendian)
    msg.data = bytes(height * step) if data is None else data
    return msg


@pytest.mark.parametrize("msg, reason", [
    (_raw("16UC1", step=10), "encoding"),
    (_raw("32FC1", step=20), "encoding"),
    (_raw("yuv422", step=10), "encoding"),
    (_raw(height=0), "zero_size"),
    (_raw(width=0, data=b""), "zero_size"),
    (_raw(step=14), "step"),
    (_raw(data=bytes(4 * 15 - 1)), "short_data"),
    (_raw(data=b""), "short_data"),
    (_raw(is_bigendian=7), "endianness"),
    (_raw(height=100_000, width=100_000, step=300_000, data=b""), "too_large"),
])
def test_bad_raw_images_are_rejected_with_a_reason(msg, reason):
    with pytest.raises(ImageConversionError) as info:
        image_to_rgb(msg)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)
    assert str(info.value)  # a readable message for the log


def test_big_endian_flag_is_harmless_for_byte_images(rgb):
    msg = rgb_to_image(rgb, "bgr8")
    msg.is_bigendian = 1
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@pytest.mark.parametrize("fmt, data, reason", [
    ("jpeg", b"", "zero_size"),
    ("jpeg", b"not an image at all", "decode"),
    ("tiff", b"II*\x00", "format"),
])
def test_bad_compressed_images_are_rejected(fmt, data, reason):
    msg = CompressedImage(format=fmt)
    msg.data = data
    with pytest.raises(ImageConversionError) as info:
        compressed_to_rgb(msg)
    assert info.value.reason == reason


def test_publishing_checks_shapes(rgb):
    with pytest.raises(ImageConversionError):
        array_to_image(rgb, "mono8")
    with pytest.raises(ImageConversionError):
        array_to_image(rgb.astype(np.float32), "rgb8")
    with pytest.raises(ImageConversionError):
        rgb_to_image(rgb, "16UC1")
    with pytest.raises(ImageConversionError):
        rgb_to_compressed(rgb, "webp")


def test_stamps_round_trip():
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_700_000_000_123_456_789):
        stamp = ns_to_stamp(ns)
        assert 0 <= stamp.nanosec < 1_000_000_000
        assert stamp_to_ns(stamp) == ns
    assert isinstance(header_at(5, "x"), Header)


def _png_of_zeros(width, height):
    """A valid greyscale PNG of zeros, built a row at a time (a 9000x9000 one is 80 kB; making
    it with an encoder would allocate the whole image first)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _jpeg_claiming(width, height):
    """A small real JPEG whose frame header (SOF0) claims another size."""
    ok, data = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    data = bytearray(data.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize("make", [lambda: _png_of_zeros(9000, 9000), lambda: _jpeg_claiming(9000, 9000)],
                         ids=["png", "jpeg"])
def test_huge_compressed_images_are_refused_from_their_header_without_decoding(make, monkeypatch):
    """A 77 kB PNG of 9000x9000 pixels raised the node's memory by 300 MB before it was refused:
    the size must come from the header, and the decoder must never run."""
    import steerseg_ros.ros.image_conversion as conversion

    data = make()
    assert len(data) < 200_000
    decoded = []
    monkeypatch.setattr(conversion.cv2, "imdecode", lambda *a: decoded.append(a) or None)
    msg = CompressedImage(format="png")
    msg.data = data
    with pytest.raises(ImageConversionError) as info:
        compressed_to_rgb(msg)
    assert info.value.reason == "too_large"
    assert "9000x9000" in str(info.value)
    assert not decoded, "the image was decoded before its size was checked"


def test_a_small_handmade_png_still_decodes():
    msg = CompressedImage(format="png")
    msg.data = _png_of_zeros(40, 30)
    out = compressed_to_rgb(msg)
    assert out.shape == (30, 40, 3) and not out.any()
