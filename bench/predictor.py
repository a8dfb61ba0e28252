"""Predictor throughput: images/s at batch 1, 32 and 256, ONNX Runtime vs torch eager, same run.

    python bench/predictor.py                          # the shipped model, 2 threads each
    python bench/predictor.py --model src/fashionstream/models/fashion-cnn.onnx --seconds 5 --threads 2
    python bench/predictor.py --seconds 0.3 --output /tmp/predictor.json   # a quick check, results kept

Both paths start from uint8 (N, 28, 28) test images and include normalisation and softmax, so
the numbers compare the runtimes and not the pre-processing. The torch model is the plain
`nn.Module` rebuilt from the card's architecture (`build_classifier`) with the weights of the exported
TorchScript file (bit-identical to the ONNX file's). Writes bench/results/predictor.json (or `--output`)
and prints a table.
Expect a few thousand images/s at batch 256 for the ~28 M MAC FashionCNN on 2 cores; numbers move
with other load on the machine, so the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fashionstream.classifier.card import ModelCard
from fashionstream.classifier.export import FlipTTA
from fashionstream.classifier.fashion_mnist_files import load_split
from fashionstream.classifier.module import build_classifier
from fashionstream.classifier.predictor import Predictor, resolve_model_files
from fashionstream.machine import describe_machine

RESULTS = Path(__file__).resolve().parent / "results" / "predictor.json"


def torch_eager(card: ModelCard, onnx_path: Path) -> torch.nn.Module:
    """The card's net class with the TorchScript file's weights, in eager mode."""
    if card.torchscript_file is None:
        raise SystemExit(f"{card.name} was exported without TorchScript (--torchscript false): no torch weights")
    net = build_classifier(card.architecture.class_path, card.training.hyper_parameters).net
    exported = FlipTTA(net) if card.tta_flip_baked_in else net  # the same module tree as the traced file
    with warnings.catch_warnings():  # torch marks torch.jit deprecated; the file is what export writes
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(onnx_path.parent / card.torchscript_file))
    exported.load_state_dict(scripted.state_dict())
    return exported.eval()


def rate(run, batch: np.ndarray, seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Images/s of run(batch), after a warm-up, over at least `seconds` (best of 3 windows)."""
    for _ in range(3):
        run(batch)
    best = 0.0
    for _ in range(3):
        n, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / 3:
            run(batch)
            n += len(batch)
        best = max(best, n / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=".onnx or .card.json (default: shipped)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per cell")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS, help="result JSON (default: %(default)s)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.model, threads=args.threads)
    onnx_path, _ = resolve_model_files(args.model)
    net = torch_eager(predictor.card, onnx_path)
    mean, std = predictor.card.input.mean, predictor.card.input.std
    images, _ = load_split("test")

    def run_torch(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = (torch.from_numpy(batch.astype(np.float32)) / 255 - mean) / std  # (N, 28, 28)
            return net(x.unsqueeze(1)).softmax(1).numpy()  # (N, 10)

    # The two paths must agree before their speed is worth comparing.
    assert np.abs(run_torch(images[:64]) - predictor.probabilities(images[:64])).max() < 1e-4

    rows = []
    for batch_size in (1, 32, 256):
        batch = images[:batch_size]
        ort_rate = rate(predictor.probabilities, batch, args.seconds)
        torch_rate = rate(run_torch, batch, args.seconds)
        rows.append({"batch": batch_size, "onnxruntime_images_per_s": round(ort_rate, 1),
                     "torch_eager_images_per_s": round(torch_rate, 1)})  # fmt: skip
        print(f"batch {batch_size:4d}: onnxruntime {ort_rate:9.0f} img/s   torch eager {torch_rate:9.0f} img/s")
    result = {
        "model": predictor.model_id,
        "macs": predictor.card.macs,
        "threads": args.threads,
        "machine": describe_machine("onnxruntime", "torch"),  # taken at the end: the load while measuring
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
