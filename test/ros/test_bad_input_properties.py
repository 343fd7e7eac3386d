"""Property-based tests (hypothesis) of what comes in from outside: camera messages (raw, every
encoding and others, random sizes, steps, data lengths and flags; compressed, PNG and JPEG of
random sizes, truncated and corrupted, with any format string) and commands (any text). Every
input gives a converted image or command, or a clean rejection (ImageConversionError,
GroundingError) with a reason; no other exception escapes, and what is accepted is what the
pipeline expects."""
from __future__ import annotations

import unicodedata

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from steerseg_ros.grounding.base import GroundingError, clean_command

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- commands -------------------------------------------------------------------------------
# Every code point, surrogates and control characters included (a Python caller can pass them;
# ROS strings can carry control characters).
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60)


@FAST
@given(text=any_text | st.sampled_from(["", " ", "\t\n", "\x00", "a\x1b[31mred\x1b[0m", "\ud800cup"]),
       max_chars=st.integers(1, 80))
@example(text="the cup\x00", max_chars=80)
@example(text="\x1b]0;pwned\x07the cup", max_chars=80)
def test_a_command_is_cleaned_or_refused(text, max_chars):
    try:
        cleaned = clean_command(text, max_chars)
    except GroundingError as e:
        assert str(e)
        return
    assert cleaned and cleaned == cleaned.strip() and "  " not in cleaned
    assert cleaned == " ".join(cleaned.split())
    assert len(cleaned) <= max_chars
    # what goes to the logs, the tokenizer and the GroundingResult message
    assert not any(unicodedata.category(c) == "Cc" for c in cleaned), repr(cleaned)
    cleaned.encode("utf-8")
    assert clean_command(cleaned, max_chars) == cleaned  # cleaning twice changes nothing


@FAST
@given(value=st.one_of(st.none(), st.integers(), st.binary(max_size=10), st.lists(st.text(max_size=3))))
def test_a_command_that_is_not_text_is_refused(value):
    with pytest.raises(GroundingError):
        clean_command(value)


# ---- images ---------------------------------------------------------------------------------
pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
pytestmark = pytest.mark.ros

from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from steerseg_ros.ros.image_conversion import (ENCODINGS, MAX_PIXELS, ImageConversionError,  # noqa: E402
                                               compressed_size, compressed_to_rgb, image_to_array, image_to_rgb)

encodings = st.sampled_from(sorted(ENCODINGS)) | st.sampled_from(["BGR8", "16UC1", "32FC1", "yuv422", "", "bgr8 "]) \
    | st.text(max_size=8)
sizes = st.integers(0, 40) | st.sampled_from([2**16, 2**31, 2**32 - 1])


@st.composite
def raw_images(draw):
    encoding = draw(encodings)
    height, width = draw(sizes), draw(sizes)
    channels = ENCODINGS.get(encoding.lower(), (3, None))[0]
    natural = width * channels
    step = draw(st.sampled_from([natural, natural + 1, natural + 7, max(0, natural - 1), 0]) | st.integers(0, 2**32 - 1))
    full = height * step
    length = draw(st.sampled_from([full, full + 3, max(0, full - 1), 0]) | st.integers(0, 4096))
    length = min(length, 1 << 16)  # a message is only as long as what was sent
    msg = Image(height=height, width=width, encoding=encoding, step=min(step, 2**32 - 1),
                is_bigendian=draw(st.integers(0, 255)))
    msg.data = draw(st.binary(min_size=length, max_size=length)) if length <= 256 else bytes(length)
    return msg


@FAST
@given(msg=raw_images())
def test_a_raw_image_is_converted_or_rejected_with_a_reason(msg):
    try:
        rgb = image_to_rgb(msg)
    except ImageConversionError as e:
        assert e.reason and str(e)
        return
    assert rgb.dtype == np.uint8 and rgb.shape == (msg.height, msg.width, 3)
    assert rgb.flags.writeable and rgb.flags.c_contiguous
    assert 0 < msg.height * msg.width <= MAX_PIXELS


@FAST
@given(msg=raw_images())
def test_a_seed_mask_is_read_or_rejected_with_a_reason(msg):
    try:
        pixels = image_to_array(msg)
    except ImageConversionError as e:
        assert e.reason
        return
    assert pixels.shape[:2] == (msg.height, msg.width)


@st.composite
def compressed_images(draw):
    """A real PNG or JPEG of a random size and content, then maybe truncated or corrupted, with
    any format string."""
    kind = draw(st.sampled_from([".png", ".jpg"]))
    height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    channels = draw(st.sampled_from([1, 3, 4])) if kind == ".png" else draw(st.sampled_from([1, 3]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    if draw(st.booleans()) and kind == ".png":
        pixels = pixels.astype(np.uint16) * 257  # 16-bit PNG
    ok, encoded = cv2.imencode(kind, pixels.squeeze(-1) if channels == 1 else pixels)
    assert ok
    data = bytearray(encoded.tobytes())
    damage = draw(st.sampled_from(["none", "truncate", "flip", "both"]))
    if damage in ("truncate", "both"):
        data = data[:draw(st.integers(0, len(data)))]
    if damage in ("flip", "both") and data:
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    fmt = draw(st.sampled_from(["png", "jpeg", "jpg", "", "bgr8; jpeg compressed bgr8", "rgb8; png compressed bgr8",
                                "tiff", "JPEG"]) | st.text(max_size=12))
    msg = CompressedImage(format=fmt)
    msg.data = bytes(data)
    return msg


@FAST
@given(msg=compressed_images())
def test_a_compressed_image_is_converted_or_rejected_with_a_reason(msg):
    try:
        rgb = compressed_to_rgb(msg)
    except ImageConversionError as e:
        assert e.reason and str(e)
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    # the size checked before decoding is the size decoded
    width, height = compressed_size(np.frombuffer(msg.data, np.uint8))
    assert rgb.shape[0] * rgb.shape[1] == width * height


@FAST
@given(data=st.binary(max_size=300), fmt=st.sampled_from(["png", "jpeg", ""]))
def test_random_bytes_as_a_compressed_image_are_rejected_with_a_reason(data, fmt):
    msg = CompressedImage(format=fmt)
    msg.data = data
    try:
        compressed_to_rgb(msg)
    except ImageConversionError as e:
        assert e.reason
