"""Embed a model card's essentials in its .onnx file, so that the file alone can be served.

    python -m fashionstream.classifier.embed src/fashionstream/models/fashion-cnn.onnx   # the file and its card
    python -m fashionstream.classifier.embed models/my-cnn.card.json                     # the same, by the card

`fashionstream export` and `fashionstream quantize` embed as they write; this command brings a model
written without them into line. It puts the card's `EmbeddedCard` into the file's `metadata_props`
(replacing any `fashionstream.` entries, keeping other tools' entries) and changes nothing else: it
checks that the file without those entries is the same bytes as before and that the model's outputs
on the 1,000 shipped sample images are bit for bit the same, and puts the original file back if
either is not so. The file's SHA-256 changes, so the card's `model_sha256` is updated, and so is the
`quantization.source_sha256` of any card beside it made from this file (the graph it was made from
is unchanged). Embedding the same card twice gives the same bytes.

Needs the `onnx` package (the `train` extra); reading the metadata back needs only ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fashionstream.classifier.card import METADATA_PREFIX, ModelCard, ModelCardError
from fashionstream.classifier.predictor import model_input, resolve_model_files
from fashionstream.classifier.sample import load_sample


def _set_entries(model: Any, entries: dict[str, str]) -> None:
    """Replace the `fashionstream.` entries of an onnx ModelProto's metadata_props by `entries` (in order)."""
    kept = [(prop.key, prop.value) for prop in model.metadata_props if not prop.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        model.metadata_props.add(key=key, value=value)


def strip_metadata(model_bytes: bytes) -> bytes:
    """A model file's bytes without its `fashionstream.` metadata entries: what embedding leaves unchanged."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    _set_entries(model, {})
    return bytes(model.SerializeToString())


def embed(onnx_path: Path, card: ModelCard) -> ModelCard:
    """Write `card`'s essentials into the .onnx file at `onnx_path`; returns the card with the file's new SHA-256.

    The caller writes the returned card (the card's other fields are taken as they are).
    """
    import onnx

    model = onnx.load_from_string(onnx_path.read_bytes())
    _set_entries(model, card.embedded().to_metadata())
    data = bytes(model.SerializeToString())
    # Written beside and renamed into place: a reader never sees half a model.
    partial = onnx_path.with_name(onnx_path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, onnx_path)
    return dataclasses.replace(card, model_sha256=hashlib.sha256(data).hexdigest())


def _outputs(model_bytes: bytes, card: ModelCard, pixels: np.ndarray) -> np.ndarray:
    """The model's raw outputs for uint8 pixels (n, 28, 28), on one thread (the same kernels each time)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {card.input.name: model_input(pixels, card.input)})  # (n, C)
    return np.asarray(scores)


def embed_card(model: str | None = None) -> Path:
    """Embed a model's card in its .onnx file, check that the model is unchanged, and update the card(s).

    Args:
        model: the .onnx file or its .card.json (default: the shipped model).

    Returns:
        The path of the model's card.
    """
    onnx_path, card_path = resolve_model_files(model)
    card = ModelCard.read(card_path)
    before = onnx_path.read_bytes()
    if hashlib.sha256(before).hexdigest() != card.model_sha256:
        raise ModelCardError(
            f"{onnx_path} does not match its card {card_path} (SHA-256): embed only a card in the model it describes"
        )
    pixels, _ = load_sample()  # (1000, 28, 28) uint8, real test images
    expected = _outputs(before, card, pixels)
    embedded = embed(onnx_path, card)
    after = onnx_path.read_bytes()
    if strip_metadata(after) != strip_metadata(before) or not np.array_equal(_outputs(after, card, pixels), expected):
        onnx_path.write_bytes(before)
        raise RuntimeError(f"embedding the card changed the model in {onnx_path}; the original file is restored")
    embedded.write(card_path)
    updated = [card_path]
    for other_path in sorted(card_path.parent.glob("*.card.json")):
        other = ModelCard.read(other_path)
        source = other.quantization  # an int8 card names the fp32 file it was made from
        if source and (source.source_onnx_file, source.source_sha256) == (onnx_path.name, card.model_sha256):
            quantization = dataclasses.replace(source, source_sha256=embedded.model_sha256)
            dataclasses.replace(other, quantization=quantization).write(other_path)
            updated.append(other_path)
    print(
        f"embedded {len(card.embedded().to_metadata())} metadata entries in {onnx_path} "
        f"(SHA-256 {card.model_sha256[:12]}… → {embedded.model_sha256[:12]}…; graph and outputs on "
        f"{len(pixels):,d} images unchanged); updated {', '.join(str(p) for p in updated)}"
    )
    return card_path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fashionstream.classifier.embed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model", nargs="?", help=".onnx file or its .card.json (default: the shipped model)")
    embed_card(parser.parse_args(sys.argv[1:] if argv is None else argv).model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
