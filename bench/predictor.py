"""Predictor throughput: images/s at batch 1, 32 and 256, ONNX Runtime vs torch eager, same run.

    python bench/predictor.py                          # the shipped model, 2 threads each
    python bench/predictor.py --model models/fashion-cnn.onnx --seconds 5 --threads 2

Both paths start from uint8 (N, 28, 28) test images and include normalisation and softmax, so
the numbers compare the runtimes and not the pre-processing. The torch model is the plain
`nn.Module` rebuilt from the card's architecture with the weights of the exported TorchScript
file (bit-identical to the ONNX file's). Writes bench/results/predictor.json and prints a table.
Expect a few thousand images/s at batch 256 for the ~28 M MAC FashionCNN on 2 cores; numbers move
with other load on the machine, so the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fashionstream.classifier.fashion_mnist_files import load_split
from fashionstream.classifier.predictor import Predictor, resolve_model_files

RESULTS = Path(__file__).resolve().parent / "results" / "predictor.json"


def torch_eager(card: dict, onnx_path: Path) -> torch.nn.Module:
    """The card's net class with the TorchScript file's weights, in eager mode."""
    import importlib

    module_name, _, class_name = card["architecture"]["class_path"].rpartition(".")
    lit_class = getattr(importlib.import_module(module_name), class_name)
    hparams = card["training"]["hyper_parameters"]
    net = lit_class(**hparams).net.eval()
    scripted = torch.jit.load(str(onnx_path.parent / card["torchscript_file"]))
    net.load_state_dict(scripted.state_dict())
    return net


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


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=".onnx or .card.json (default: shipped)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per cell")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.model, threads=args.threads)
    onnx_path, _ = resolve_model_files(args.model)
    net = torch_eager(predictor.card, onnx_path)
    mean, std = predictor.card["input"]["mean"], predictor.card["input"]["std"]
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
        "macs": predictor.card.get("macs"),
        "threads": args.threads,
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },  # fmt: skip
        "versions": {"onnxruntime": __import__("onnxruntime").__version__, "torch": torch.__version__},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
