"""Decoding: every common format and PIL mode becomes RGB; bad bytes raise InputError naming the problem."""

import io

import numpy as np
import pytest
from PIL import Image

from handler import ImageTooLargeError, InputError
from handler.images import decode_image, to_rgb


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_formats_decode_to_rgb(fmt):
    image = decode_image(encode(RGB, fmt))
    assert image.mode == "RGB" and image.size == (50, 30)


def test_bytearray_is_accepted():
    assert decode_image(bytearray(encode(RGB, "PNG"))).size == (50, 30)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16", "I", "F", "1"])
def test_modes_become_rgb(mode):
    if mode == "I;16":
        image = Image.fromarray((np.arange(1500).reshape(30, 50) * 40).astype(np.uint16))
        assert image.mode == "I;16"
    else:
        image = RGB.convert(mode)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (50, 30)


def test_16bit_uses_the_full_range():
    image = Image.fromarray(np.array([[0, 1000], [30000, 65535]], dtype=np.uint16))
    values = np.asarray(to_rgb(image))[..., 0]
    assert values.min() == 0 and values.max() == 255


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(RGB, "JPEG", exif=exif)
    assert decode_image(data).size == (30, 50)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"definitely not an image", "could not be decoded"),
        (encode(RGB, "PNG")[:60], "truncated"),
        (encode(RGB, "JPEG")[:200], "truncated"),
    ],
)
def test_bad_bytes_raise_input_error(data, message):
    with pytest.raises(InputError, match=message):
        decode_image(data)


def test_unsupported_format_is_named():
    with pytest.raises(InputError, match="unsupported image format ICO"):
        decode_image(encode(RGB.resize((32, 32)), "ICO"))


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageTooLargeError, match="over the limit of 1000 pixels"):
        decode_image(encode(RGB, "PNG"), max_pixels=1000)
    assert issubclass(ImageTooLargeError, InputError) and issubclass(InputError, ValueError)


def test_pillow_bomb_guard_stays_on(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageTooLargeError, match="decompression-bomb"):
        decode_image(encode(RGB, "PNG"))
