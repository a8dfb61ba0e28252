"""`fashionstream evaluate`: accuracy of an exported model on the full 10 k Fashion-MNIST test set.

    fashionstream evaluate                       # the shipped model (package data, fashionstream.models)
    fashionstream evaluate --model models/my-cnn.onnx --json

Runs through the same `Predictor` (ONNX Runtime, no torch) that the model service uses and prints
accuracy, per-class accuracy and images/s; `--json` prints one JSON object with `accuracy`,
`per_class`, `n`, `model`, `images_per_s`, `macs` and `params` (the last two from the model card).
A progress bar goes to stderr (so `--json` output on stdout stays one clean line); `--no-progress`
turns it off.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from fashionstream.classifier.fashion_mnist_files import load_split
from fashionstream.classifier.predictor import Predictor


def evaluate(
    predictor: Predictor, data_dir: str | None = None, batch_size: int = 500, progress: bool = False
) -> dict[str, Any]:
    """Accuracy, per-class accuracy and speed of `predictor` on the test set; `progress` shows a bar on stderr."""
    images, labels = load_split("test", data_dir)  # (10000, 28, 28) uint8, (10000,)
    probs = []
    started = time.perf_counter()
    with tqdm(total=len(images), unit="img", desc="evaluate", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            probs.append(predictor.probabilities(images[start : start + batch_size]))  # (b, C)
            bar.update(len(probs[-1]))
    seconds = time.perf_counter() - started
    pred = np.concatenate(probs).argmax(axis=1)
    per_class = {name: float((pred[labels == k] == k).mean()) for k, name in enumerate(predictor.class_names)}
    card = predictor.card
    return {
        "model": predictor.model_id,
        "accuracy": float((pred == labels).mean()),
        "n": int(len(labels)),
        "per_class": per_class,
        "images_per_s": round(len(labels) / seconds, 1),
        "batch_size": batch_size,
        "macs": card.macs,
        "params": card.params,
        "tta_flip_baked_in": card.tta_flip_baked_in,
        "card_test_accuracy": card.test.accuracy,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fashionstream evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=".onnx file or its .card.json (default: the shipped model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST files (default: search)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    predictor = Predictor.load(args.model, threads=args.threads)
    result = evaluate(predictor, args.data_dir, args.batch_size, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model     {result['model']}  ({result['params']:,} params, {result['macs']:,} MACs per image)")
    print(f"accuracy  {result['accuracy']:.4f} on {result['n']} test images, {result['images_per_s']:.0f} images/s")
    for name, acc in result["per_class"].items():
        print(f"  {name:12s} {acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
