"""A corpus of hostile and odd requests, each with the outcome the contract promises for it.

`corpus(flavour)` returns 1,000+ `Case`s in 60+ kinds: images in every form a client might send
(answered), and every way a request can be wrong (dead-lettered with its `Reason`). The outcomes
follow docs/pipeline.md ("Message contract", "Dead letters"): the envelope is checked first
(`contract.decode_request`), then the image by its content (`Predictor.to_pixels`), so a GIF is
refused whatever it is labelled, and a JPEG labelled image/png is answered. A repeated request id is
answered again (at-least-once: duplicates are counted, never suppressed).

Every case has a unique `key` (the record key the test matches outcomes by); an answered case's
request id is its key, so its prediction comes back under it. Kinds whose bytes the broker cannot
carry differ by flavour: Kafka headers can hold bytes that are not UTF-8 (`raw_id`), Pub/Sub
attributes cannot, so there the id arrives as the text a lenient decoder makes of them (U+FFFD).

Tests reuse it: tests/test_hostile_corpus.py checks each expectation against the decode path in
process and sends the whole corpus through `fashionstream serve` on Kafka and the Pub/Sub emulator.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fashionstream.classifier.sample import load_sample
from fashionstream.pipeline import contract
from fashionstream.pipeline.cloudevents import CONTENT_TYPE, STRUCTURED_CONTENT_TYPE, Flavour
from fashionstream.reasons import Reason

ANSWERED = "answered"
PER_KIND = 16  # cases of each kind: with 60+ kinds, over 1,000 in all
DEEP = 10_000  # JSON nesting depth of the nesting bombs
OVERSIZE = contract.DEFAULT_MAX_MESSAGE_BYTES + 1024  # one KB over serve's default --max-message-bytes


@dataclass(frozen=True)
class Case:
    """One message to send and what must become of it."""

    kind: str
    key: str  # the record key; for answered cases also the request id
    body: bytes
    attributes: dict[str, str]
    expected: str  # ANSWERED or a `Reason` value
    raw_id: bytes | None = None  # Kafka only: the ce_id header as these bytes, which are not UTF-8
    # Answered cases whose pixels survive the encoding unchanged: the model must give the label it gives
    # these 28×28 grey pixels (None where the encoding is lossy, as JPEG is).
    same_as: np.ndarray | None = None

    @property
    def answered(self) -> bool:
        return self.expected == ANSWERED


# --------------------------------------------------------------------------- image files


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels), "PNG")


def sixteen_bit_png(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels.astype(np.uint16) * 257), "PNG")


def alpha_png(pixels: np.ndarray) -> bytes:
    """A white garment whose grey levels are all in the alpha channel: composited onto black it is the original."""
    white = Image.new("L", (28, 28), 255)
    return encode(Image.merge("LA", [white, Image.fromarray(pixels)]), "PNG")


def palette_png(pixels: np.ndarray) -> bytes:
    """A palette whose order is shuffled: the indices are not the grey levels, the palette says what they are."""
    order = np.random.default_rng(7).permutation(256)
    image = Image.fromarray(np.argsort(order).astype(np.uint8)[pixels], mode="P")
    image.putpalette(np.repeat(order, 3).astype(np.uint8).tobytes())
    return encode(image, "PNG")


def huge_dimension_png() -> bytes:
    """A valid 1×1 PNG whose header then claims 100000×100000 pixels (the shape of a decompression bomb)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", 100_000, 100_000)
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])))
    return bytes(data)


def truncated_png(seed: int) -> bytes:
    """Noise compresses badly, so a PNG of it has a long IDAT and a cut at two thirds lands in the pixels."""
    noisy = png(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8))
    return noisy[: len(noisy) * 2 // 3]


def random_bytes(seed: int, size: int = 600) -> bytes:
    """Random bytes that start like no image format (the first byte is never one a format's magic starts with)."""
    data = bytearray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    data[0] = 0x01
    return bytes(data)


def nested(depth: int = DEEP) -> bytes:
    return b"[" * depth + b"]" * depth


# --------------------------------------------------------------------------- the corpus


def corpus(flavour: Flavour, per_kind: int = PER_KIND) -> list[Case]:
    """Every kind, `per_kind` times, each case with a unique key; see the module docstring."""
    images, _ = load_sample()
    return [case for kind, make in _kinds(flavour).items() for case in _instances(kind, make, images, per_kind)]


def expected_counts(cases: list[Case]) -> dict[str, Counter[str]]:
    """key -> how many answers / dead letters of each reason that key must get (a duplicated id: two answers)."""
    counts: dict[str, Counter[str]] = {}
    for case in cases:
        counts.setdefault(case.key, Counter())[case.expected] += 1
    return counts


Maker = Callable[[str, str, np.ndarray, int], "Case | list[Case]"]  # (kind, key, pixels, index)


def _instances(kind: str, make: Maker, images: np.ndarray, per_kind: int) -> Iterator[Case]:
    for index in range(per_kind):
        key = f"{kind}-{index}"
        made = make(kind, key, images[(index * 37 + len(kind)) % len(images)], index)
        yield from made if isinstance(made, list) else [made]


def _kinds(flavour: Flavour) -> dict[str, Maker]:
    p = flavour.prefix

    def ce(body: bytes, key: str, **kw: object) -> dict[str, str]:
        return dict(contract.encode_request(body, flavour, request_id=key, **kw).attributes)  # type: ignore[arg-type]

    def binary(
        expected: str,
        body_of: Callable[[np.ndarray, int], bytes],
        content_type: str = contract.PNG,
        extra: dict[str, str] | None = None,
        same: bool = False,
    ) -> Maker:
        def make(kind: str, key: str, pixels: np.ndarray, index: int) -> Case:
            body = body_of(pixels, index)
            attributes = {**ce(body, key, content_type=content_type), **(extra or {})}
            return Case(kind, key, body, attributes, expected, same_as=pixels if same else None)

        return make

    def unchanged(
        expected: str,
        body_of: Callable[[np.ndarray, int], bytes],
        attributes_of: Callable[[str, bytes], dict[str, str]],
    ) -> Maker:
        def make(kind: str, key: str, pixels: np.ndarray, index: int) -> Case:
            body = body_of(pixels, index)
            return Case(kind, key, body, attributes_of(key, body), expected)

        return make

    def json_form(expected: str, doc_of: Callable[[str, np.ndarray], object], same: bool = False) -> Maker:
        def make(kind: str, key: str, pixels: np.ndarray, index: int) -> Case:
            body = json.dumps(doc_of(key, pixels)).encode()
            return Case(kind, key, body, {}, expected, same_as=pixels if same else None)

        return make

    def structured(expected: str, **members: object) -> Maker:
        def make(kind: str, key: str, pixels: np.ndarray, index: int) -> Case:
            event: dict[str, object] = {
                "specversion": "1.0",
                "id": key,
                "type": contract.REQUEST_TYPE,
                "source": "hostile-corpus",
                "datacontenttype": contract.PNG,
                "data_base64": b64(png(pixels)),
            }
            event.update(members)
            body = json.dumps({k: v for k, v in event.items() if v is not None}).encode()
            return Case(
                kind,
                key,
                body,
                {CONTENT_TYPE: STRUCTURED_CONTENT_TYPE},
                expected,
                same_as=pixels if expected == ANSWERED else None,
            )

        return make

    def image_doc(key: str, pixels: np.ndarray) -> dict[str, object]:
        return {"id": key, "image": b64(png(pixels))}

    def duplicated(kind: str, key: str, pixels: np.ndarray, index: int) -> list[Case]:
        body = png(pixels)
        return [Case(kind, key, body, ce(body, key), ANSWERED, same_as=pixels) for _ in range(2)]

    def not_utf8_id(kind: str, key: str, pixels: np.ndarray, index: int) -> Case:
        body = png(pixels)
        raw = b"\xff\xfe-" + key.encode()
        if flavour is Flavour.KAFKA:
            return Case(kind, key, body, ce(body, key), Reason.BAD_ATTRIBUTES, raw_id=raw)
        # Pub/Sub attributes are UTF-8 text: what reaches the service is a lenient decoder's reading of the bytes.
        return Case(kind, key, body, {**ce(body, key), f"{p}id": raw.decode("utf-8", "replace")}, Reason.BAD_ATTRIBUTES)

    def without(*names: str) -> Callable[[str, bytes], dict[str, str]]:
        def attributes_of(key: str, body: bytes) -> dict[str, str]:
            return {k: v for k, v in ce(body, key).items() if k.removeprefix(p) not in names}

        return attributes_of

    def garment_as(fmt: str, **options: object) -> Callable[[np.ndarray, int], bytes]:
        return lambda pixels, index: encode(Image.fromarray(pixels), fmt, **options)

    upscaled = garment_as_size(112, 112)
    R = Reason
    A = ANSWERED
    kinds: dict[str, Maker] = {
        # ---- answered: every image form a client may send
        "png_8bit": binary(A, lambda px, i: png(px), same=True),
        "png_16bit": binary(A, lambda px, i: sixteen_bit_png(px), same=True),
        "png_alpha": binary(A, lambda px, i: alpha_png(px), same=True),
        "png_palette": binary(A, lambda px, i: palette_png(px), same=True),
        "png_rgb": binary(A, lambda px, i: encode(Image.fromarray(px).convert("RGB"), "PNG"), same=True),
        "png_112px": binary(A, lambda px, i: upscaled(px)),
        "jpeg": binary(A, garment_as("JPEG", quality=95), contract.JPEG),
        "jpeg_labelled_png": binary(A, garment_as("JPEG", quality=95)),
        "raw_pixels": binary(A, lambda px, i: px.tobytes(), contract.RAW, same=True),
        "content_type_with_parameters": binary(A, lambda px, i: png(px), "Image/PNG; charset=binary", same=True),
        "no_content_type": unchanged(A, lambda px, i: png(px), without("content-type")),
        "no_type_no_specversion": unchanged(A, lambda px, i: png(px), without("type", "specversion")),
        "expected_label_not_a_number": binary(
            A, lambda px, i: png(px), extra={contract.EXPECTED_LABEL: "NaN"}, same=True
        ),
        "expected_label_out_of_range": binary(
            A, lambda px, i: png(px), extra={contract.EXPECTED_LABEL: "-1"}, same=True
        ),
        "utf8_id": _renamed(binary(A, lambda px, i: png(px), same=True), "größe-✓-"),
        "duplicate_id": duplicated,
        "json_form": json_form(A, image_doc, same=True),
        "json_form_nan_label": json_form(
            A, lambda k, px: {**image_doc(k, px), "expected_label": float("nan")}, same=True
        ),
        "json_in_binary_event": binary(
            A, lambda px, i: json.dumps({"id": "inner", "image": b64(png(px))}).encode(), contract.JSON, same=True
        ),
        "structured": structured(A),
        # ---- empty
        "empty_body": binary(R.EMPTY, lambda px, i: b""),
        "json_form_empty_image": json_form(R.EMPTY, lambda k, px: {"id": k, "image": ""}),
        "structured_empty_data": structured(R.EMPTY, data_base64=""),
        # ---- too large
        "body_over_max_message_bytes": binary(R.TOO_LARGE, lambda px, i: png(px) + bytes(OVERSIZE)),
        "huge_dimensions_in_tiny_png": binary(R.TOO_LARGE, lambda px, i: huge_dimension_png()),
        "json_form_over_max_message_bytes": json_form(
            R.TOO_LARGE, lambda k, px: {"id": k, "image": b64(bytes(OVERSIZE))}
        ),
        # ---- not an image / truncated / bad shape
        "random_bytes": binary(R.NOT_AN_IMAGE, lambda px, i: random_bytes(i)),
        "text_labelled_png": binary(R.NOT_AN_IMAGE, lambda px, i: b"this is not an image"),
        # Only the 8-byte signature: no header chunk, so no decoder can say what image it would be.
        "png_signature_only": binary(R.NOT_AN_IMAGE, lambda px, i: b"\x89PNG\r\n\x1a\n"),
        "truncated_png": binary(R.TRUNCATED, lambda px, i: truncated_png(i)),
        "png_1x1": binary(R.BAD_SHAPE, lambda px, i: encode(Image.new("L", (1, 1), 255), "PNG")),
        "png_7x7": binary(R.BAD_SHAPE, lambda px, i: encode(Image.new("L", (7, 7), 9), "PNG")),
        "png_aspect_5_to_1": binary(R.BAD_SHAPE, lambda px, i: encode(Image.new("L", (140, 28), 128), "PNG")),
        "raw_wrong_length": binary(R.BAD_SHAPE, lambda px, i: px.tobytes()[:-1], contract.RAW),
        # ---- formats other than PNG and JPEG, labelled as PNG and labelled honestly
        **{
            f"{fmt.lower()}_labelled_{label}": binary(
                R.UNSUPPORTED_CONTENT_TYPE,
                garment_as(fmt),
                contract.PNG if label == "png" else f"image/{fmt.lower()}",
            )
            for fmt in ("GIF", "BMP", "TIFF", "WEBP")
            for label in ("png", "honestly")
        },
        "gif_in_json_form": json_form(
            R.UNSUPPORTED_CONTENT_TYPE, lambda k, px: {"id": k, "image": b64(encode(Image.fromarray(px), "GIF"))}
        ),
        "text_html": binary(R.UNSUPPORTED_CONTENT_TYPE, lambda px, i: b"<html></html>", "text/html"),
        "structured_text_plain": structured(R.UNSUPPORTED_CONTENT_TYPE, datacontenttype="text/plain"),
        # ---- the event: type, spec version
        "ce_type_unknown": binary(
            R.UNSUPPORTED_EVENT, lambda px, i: png(px), extra={f"{p}type": "com.example.not-an-image.v9"}
        ),
        "ce_type_next_version": binary(
            R.UNSUPPORTED_EVENT, lambda px, i: png(px), extra={f"{p}type": "dev.fashionstream.image.v2"}
        ),
        "ce_specversion_0_3": binary(R.UNSUPPORTED_EVENT, lambda px, i: png(px), extra={f"{p}specversion": "0.3"}),
        "structured_specversion_number": structured(R.UNSUPPORTED_EVENT, specversion=1.0),
        "structured_type_unknown": structured(R.UNSUPPORTED_EVENT, type="x.y.z"),
        # ---- the id
        "ce_id_missing": unchanged(R.BAD_ATTRIBUTES, lambda px, i: png(px), without("id")),
        "ce_id_empty": binary(R.BAD_ATTRIBUTES, lambda px, i: png(px), extra={f"{p}id": "  "}),
        "ce_id_too_long": binary(
            R.BAD_ATTRIBUTES, lambda px, i: png(px), extra={f"{p}id": "x" * (contract.MAX_ID_CHARS + 1)}
        ),
        "id_not_utf8": not_utf8_id,
        "json_id_lone_surrogate": json_form(R.BAD_ATTRIBUTES, lambda k, px: {**image_doc(k, px), "id": "\udc80" + k}),
        "json_id_list": json_form(R.BAD_ATTRIBUTES, lambda k, px: {**image_doc(k, px), "id": [k]}),
        "json_id_nan": json_form(R.BAD_ATTRIBUTES, lambda k, px: {**image_doc(k, px), "id": float("nan")}),
        "structured_id_missing": structured(R.BAD_ATTRIBUTES, id=None),
        # ---- JSON that is not a request
        "json_id_missing": json_form(R.BAD_JSON, lambda k, px: {"image": b64(png(px))}),
        "json_bad_base64": json_form(R.BAD_JSON, lambda k, px: {"id": k, "image": "not base64!"}),
        "json_image_number": json_form(R.BAD_JSON, lambda k, px: {"id": k, "image": 12345}),
        "json_image_nan": json_form(R.BAD_JSON, lambda k, px: {"id": k, "image": float("nan")}),
        "json_array": json_form(R.BAD_JSON, lambda k, px: [k, b64(png(px))]),
        "json_cut_short": unchanged(R.BAD_JSON, lambda px, i: b'{"id": "x", "image": ', lambda k, b: {}),
        "json_nested_10000_deep": unchanged(
            R.BAD_JSON, lambda px, i: b'{"id": "d", "image": ' + nested() + b"}", lambda k, b: {}
        ),
        "structured_nested_10000_deep": unchanged(
            R.BAD_JSON,
            lambda px, i: b'{"id": "d", "data_base64": ' + nested() + b"}",
            lambda k, b: {CONTENT_TYPE: STRUCTURED_CONTENT_TYPE},
        ),
        "structured_not_json": unchanged(
            R.BAD_JSON, lambda px, i: b"{not json", lambda k, b: {CONTENT_TYPE: STRUCTURED_CONTENT_TYPE}
        ),
        "random_bytes_without_attributes": unchanged(R.BAD_JSON, lambda px, i: random_bytes(1000 + i), lambda k, b: {}),
    }
    return kinds


def _renamed(make: Maker, prefix: str) -> Maker:
    """`make`, with `prefix` put before each key (so the id itself carries the odd characters)."""

    def renamed(kind: str, key: str, pixels: np.ndarray, index: int) -> Case | list[Case]:
        return make(kind, prefix + key, pixels, index)

    return renamed


def garment_as_size(width: int, height: int) -> Callable[[np.ndarray], bytes]:
    return lambda pixels: encode(Image.fromarray(pixels).resize((width, height), Image.Resampling.NEAREST), "PNG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
