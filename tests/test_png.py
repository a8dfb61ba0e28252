"""The plain grey PNG writer and reader against Pillow, on real Fashion-MNIST images and damaged files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fashionstream.classifier.fashion_mnist_files import load_split
from fashionstream.classifier.png import read_plain_grey, write_plain_grey
from fashionstream.classifier.predictor import Predictor


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    return load_split("test")[0][:500]


def test_written_files_are_pngs_that_pillow_reads_to_the_same_pixels(test_images: np.ndarray) -> None:
    for pixels in test_images:
        data = write_plain_grey(pixels)
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (28, 28)
            assert np.array_equal(np.asarray(image), pixels)
        assert np.array_equal(read_plain_grey(data), pixels)


def test_predictor_reads_plain_and_pillow_written_pngs_alike(test_images: np.ndarray) -> None:
    for pixels in test_images[:100]:
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")  # filtered rows: the general decoder
        fast = read_plain_grey(buffer.getvalue())  # None where Pillow filtered any row
        assert fast is None or np.array_equal(fast, pixels)
        assert np.array_equal(Predictor.to_pixels(buffer.getvalue()), Predictor.to_pixels(write_plain_grey(pixels)))


def _pillow_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_anything_but_the_plain_form_is_left_to_the_general_decoder(test_images: np.ndarray) -> None:
    plain = write_plain_grey(test_images[0])
    flipped_crc = plain[:-13] + bytes([plain[-13] ^ 1]) + plain[-12:]  # last byte of IDAT's CRC
    rgb = _pillow_png(Image.fromarray(np.stack([test_images[0]] * 3, axis=-1), mode="RGB"))
    sixteen_bit = _pillow_png(Image.fromarray(test_images[0].astype(np.uint16) * 257))
    rows = np.zeros((28, 29), dtype=np.uint8)
    rows[:, 0] = 2  # "Up" filter on every row
    header = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))

    filtered = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes()))
    filtered += chunk(b"IEND", b"")
    for data in (plain[:-12], plain[:40], flipped_crc, rgb, sixteen_bit, filtered, b"", b"GIF89a", plain[8:]):
        assert read_plain_grey(data) is None


def test_size_limit_is_checked_before_decompressing() -> None:
    big = write_plain_grey(np.zeros((2000, 2000), dtype=np.uint8))
    assert read_plain_grey(big, max_pixels=28 * 28) is None
    assert read_plain_grey(big) is None  # 4 M pixels is over the default limit of 1 M
