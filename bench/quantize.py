"""int8 against fp32: choosing the quantisation settings on validation, then throughput and test accuracy.

    .venv/bin/python bench/quantize.py sweep                 # settings compared on the validation split
    .venv/bin/python bench/quantize.py speed --update-docs   # fp32 vs the shipped int8 model, and the docs table
    .venv/bin/python bench/quantize.py speed --seconds 0.1 --rounds 1 --output /tmp/q.json   # a quick check

`sweep` quantises the fp32 model once per candidate setting (`fashionstream.classifier.quantize.Settings`)
with the same training images for calibration, and compares them on the 6,000 validation images of the
model's own train/validation split (never the test set): accuracy, agreement with the fp32 model's labels,
and images/s at batch 256 (2 threads) against fp32 in the same rounds. Writes
bench/results/quantize-sweep.json. This is how the defaults of `quantize` were chosen.

`speed` measures images/s of both models through the `Predictor` (normalisation and softmax included,
like serving) at batch 1, 32 and 256 with 1 and 2 ONNX Runtime threads. The two models alternate cell by
cell and the order flips each round, so a burst of load from other processes hits both; each figure is
the median over rounds. It also scores both on the full 10 k test set. Writes bench/results/quantize.json
and, with --update-docs, the table in docs/benchmarks.md. Expect about 2× at batch 256 on a CPU with
AVX-512 VNNI; int8 gains little or nothing on a CPU without VNNI. Both subcommands wait until the
1-minute load average is below --max-load before measuring, and record the load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from docs_markers import replace_between_markers  # noqa: E402  (bench/ is the script's folder)
from fashionstream.classifier.card import ModelCard
from fashionstream.classifier.evaluate import evaluate
from fashionstream.classifier.fashion_mnist_files import load_split, validation_split
from fashionstream.classifier.predictor import Predictor, resolve_model_files
from fashionstream.classifier.quantize import Settings, calibration_indices, quantize_onnx, sha256_file
from fashionstream.machine import describe_machine, int8_instructions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench/quantize.py: start -->", "<!-- bench/quantize.py: end -->"
INT8 = ROOT / "src" / "fashionstream" / "models" / "fashion-cnn-int8.onnx"

# The candidates, each against the defaults of `Settings` (QDQ, per-channel, MinMax, pre-processed):
# format, weight granularity, calibration method and size, pre-processing, what stays in float, and
# signed activations (the x86 int8 kernels want unsigned activations, signed weights).
CANDIDATES: tuple[tuple[Settings, int], ...] = (
    (Settings(), 1000),
    (Settings(per_channel=False), 1000),
    (Settings(calibration_method="Entropy"), 1000),
    (Settings(calibration_method="Percentile"), 1000),
    (Settings(), 2000),
    (Settings(preprocess=False), 1000),
    (Settings(exclude_first_conv=True), 1000),
    (Settings(format="QOperator"), 1000),
    (Settings(format="QOperator", per_channel=False), 1000),
    (Settings(activation_type="QInt8"), 1000),
)


def wait_for_quiet(max_load: float, patience_s: float = 600) -> float:
    """Block until the 1-minute load average is below `max_load`; returns it. Gives up after `patience_s`."""
    deadline = time.monotonic() + patience_s
    while (load := os.getloadavg()[0]) >= max_load:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"the 1-minute load average stayed at {load:.2f} ≥ {max_load}: measure on a quieter machine"
            )
        print(f"load average {load:.2f} ≥ {max_load}: waiting", file=sys.stderr)
        time.sleep(15)
    return load


def images_per_s(predictor: Predictor, batch: np.ndarray, seconds: float) -> float:
    """Images/s of `predictor.probabilities(batch)` over one window of at least `seconds`, after one warm-up call."""
    predictor.probabilities(batch)
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        predictor.probabilities(batch)
        n += len(batch)
    return n / elapsed


def scratch_predictor(onnx_path: Path, source: ModelCard, threads: int) -> Predictor:
    """A Predictor for a candidate file: the source's card with the candidate's file name and SHA-256."""
    card = dataclasses.replace(source, onnx_file=onnx_path.name, model_sha256=sha256_file(onnx_path))
    card.write(onnx_path.with_name(onnx_path.stem + ".card.json"))
    return Predictor.load(onnx_path, threads=threads)


def sweep(args: argparse.Namespace) -> None:
    source_path, source_card_path = resolve_model_files(args.model)
    source = ModelCard.read(source_card_path)
    train_images, train_labels = load_split("train")
    _, val_idx = validation_split(len(train_labels), args.val_size, args.split_seed)
    val_x, val_y = train_images[val_idx], train_labels[val_idx]  # never trained on, never the test set
    fp32 = Predictor.load(source_path, threads=2)
    fp32_labels = fp32.probabilities(val_x).argmax(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="quantize-sweep-") as scratch:
        candidates: list[Predictor] = []
        for i, (settings, count) in enumerate(CANDIDATES):
            path = Path(scratch) / f"candidate{i}.onnx"
            indices = calibration_indices(count, val_size=args.val_size, split_seed=args.split_seed)
            started = time.perf_counter()
            quantize_onnx(source_path, path, source, train_images[indices], settings)
            build_s = time.perf_counter() - started
            candidates.append(scratch_predictor(path, source, threads=2))
            labels = candidates[-1].probabilities(val_x).argmax(1)
            rows.append({
                "settings": dataclasses.asdict(settings),
                "describe": settings.describe(),
                "calibration_images": count,
                "val_accuracy": round(float((labels == val_y).mean()), 5),
                "val_accuracy_fp32": round(float((fp32_labels == val_y).mean()), 5),
                "agreement_with_fp32": round(float((labels == fp32_labels).mean()), 5),
                "file_bytes": path.stat().st_size,
                "build_s": round(build_s, 1),
            })  # fmt: skip
        # Speed: every candidate and fp32 in the same rounds, the order rotated each round, so that load
        # from other processes falls on all of them alike; each ratio is against fp32 of the same round.
        load_at_start = wait_for_quiet(args.max_load)
        batch = val_x[:256]
        everyone = [fp32, *candidates]
        rates: list[list[float]] = [[] for _ in everyone]
        for r in range(args.rounds):
            shift = r % len(everyone)
            for k in [*range(shift, len(everyone)), *range(shift)]:
                rates[k].append(images_per_s(everyone[k], batch, args.seconds))
        for row, candidate_rates in zip(rows, rates[1:], strict=True):
            ratios = [c / f for c, f in zip(candidate_rates, rates[0], strict=True)]
            row["speedup_batch256_2threads_median"] = round(statistics.median(ratios), 3)
            row["speedup_per_round"] = [round(x, 3) for x in ratios]
            print(
                f"{row['describe']:68s} n={row['calibration_images']:5d}  val {row['val_accuracy']:.4f} "
                f"(fp32 {row['val_accuracy_fp32']:.4f})  agree {row['agreement_with_fp32']:.4f}  "
                f"×{row['speedup_batch256_2threads_median']:.2f}  {row['file_bytes'] / 1e6:.2f} MB"
            )
    result = {
        "what": "int8 candidates on the validation split (6k training images the model never trained on)",
        "source_model": fp32.model_id,
        "validation": f"validation_split(60000, val_size={args.val_size}, split_seed={args.split_seed})",
        "load_average_1m_at_start_of_timing": round(load_at_start, 2),
        "fp32_images_per_s_median": round(statistics.median(rates[0]), 1),
        "machine": describe_machine("onnxruntime", "onnx"),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "candidates": rows,
    }
    output = args.output or RESULTS / "quantize-sweep.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")


def speed(args: argparse.Namespace) -> None:
    images, _ = load_split("test")
    models = {"fp32": args.model, "int8": args.int8}
    predictors = {(name, t): Predictor.load(path, threads=t) for name, path in models.items() for t in (1, 2)}
    cells = [(t, b) for t in (1, 2) for b in (1, 32, 256)]
    rates: dict[tuple[str, int, int], list[float]] = {(m, t, b): [] for m in models for t, b in cells}
    load_at_start = wait_for_quiet(args.max_load)
    for r in range(args.rounds):
        order = ("fp32", "int8") if r % 2 == 0 else ("int8", "fp32")
        for t, b in cells:
            for m in order:
                rates[(m, t, b)].append(images_per_s(predictors[(m, t)], images[:b], args.seconds))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    load_at_end = os.getloadavg()[0]
    rows = []
    for t, b in cells:
        fp32, int8 = (statistics.median(rates[(m, t, b)]) for m in models)
        paired = [i / f for f, i in zip(rates[("fp32", t, b)], rates[("int8", t, b)], strict=True)]
        rows.append({
            "threads": t, "batch": b,
            "fp32_images_per_s": round(fp32, 1), "int8_images_per_s": round(int8, 1),
            "ratio": round(int8 / fp32, 3), "ratio_per_round": [round(x, 3) for x in paired],
        })  # fmt: skip
        print(f"threads {t} batch {b:4d}: fp32 {fp32:8.0f}  int8 {int8:8.0f} img/s  ×{int8 / fp32:.2f}")
    accuracy = {}
    for name in models:
        result = evaluate(predictors[(name, 2)])
        accuracy[name] = {"model": result["model"], "test_accuracy": result["accuracy"], "n": result["n"]}
        print(f"{name}: test accuracy {result['accuracy']:.4f} on {result['n']} images ({result['model']})")
    files = {name: resolve_model_files(path)[0] for name, path in models.items()}
    result = {
        "what": "fp32 vs int8 through the Predictor (ONNX Runtime, normalisation and softmax included)",
        "method": f"cells interleaved fp32/int8, order flipped each round; median of {args.rounds} rounds "
        f"of {args.seconds} s windows",
        "models": {
            name: {**accuracy[name], "file": files[name].name, "bytes": files[name].stat().st_size} for name in models
        },
        "accuracy_loss_pp": round(100 * (accuracy["fp32"]["test_accuracy"] - accuracy["int8"]["test_accuracy"]), 2),
        "load_average_1m": {"start": round(load_at_start, 2), "end": round(load_at_end, 2)},
        "machine": describe_machine("onnxruntime"),
        "cpu_int8_instructions": int8_instructions(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows,
    }
    output = args.output or RESULTS / "quantize.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
    if args.update_docs:
        replace_between_markers(DOCS, START, END, markdown_table(result))
        print(f"updated {DOCS}")


def markdown_table(result: dict[str, Any]) -> str:
    fp32, int8 = result["models"]["fp32"], result["models"]["int8"]
    load = result["load_average_1m"]
    lines = [
        f"Measured {result['date_utc']} on a {result['machine']['cores']}-core {result['machine']['cpu']} "
        f"({', '.join(result['cpu_int8_instructions']) or 'no VNNI'}; 1-minute load average {load['start']} "
        f"before measuring, {load['end']} at the end, this benchmark's own threads included), onnxruntime "
        f"{result['machine'].get('onnxruntime')}; {result['method']}.",
        "",
        "| threads | batch | fp32 (images/s) | int8 (images/s) | int8 / fp32 | int8 / fp32, each round |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["results"]:
        rounds = row["ratio_per_round"]
        lines.append(
            f"| {row['threads']} | {row['batch']} | {row['fp32_images_per_s']:,.0f} | "
            f"{row['int8_images_per_s']:,.0f} | **{row['ratio']:.2f}×** | {min(rounds):.2f}–{max(rounds):.2f}× |"
        )
    lines += [
        "",
        "| model | file | size | test accuracy (10k) |",
        "|---|---|---:|---:|",
        f"| fp32 | `{fp32['file']}` | {fp32['bytes'] / 1e6:.2f} MB | {100 * fp32['test_accuracy']:.2f} % |",
        f"| int8 | `{int8['file']}` | {int8['bytes'] / 1e6:.2f} MB | {100 * int8['test_accuracy']:.2f} % |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sweep_parser = commands.add_parser("sweep", help="compare quantisation settings on the validation split")
    sweep_parser.add_argument("--val-size", type=int, default=6000, help="the source run's data.val_size")
    sweep_parser.add_argument("--split-seed", type=int, default=0, help="the source run's data.split_seed")
    sweep_parser.add_argument("--rounds", type=int, default=5)
    sweep_parser.add_argument("--seconds", type=float, default=1.0, help="measuring window per model and round")
    speed_parser = commands.add_parser("speed", help="fp32 vs int8 images/s and test accuracy")
    speed_parser.add_argument("--int8", default=str(INT8), help="the int8 .onnx or .card.json (default: shipped)")
    speed_parser.add_argument("--rounds", type=int, default=9)
    speed_parser.add_argument("--seconds", type=float, default=1.0, help="measuring window per cell and round")
    speed_parser.add_argument("--update-docs", action="store_true", help=f"rewrite the table in {DOCS.name}")
    for sub in (sweep_parser, speed_parser):
        sub.add_argument("--model", help="the fp32 .onnx or .card.json (default: the shipped model)")
        sub.add_argument("--max-load", type=float, default=1.0, help="wait until the 1-minute load is below this")
        sub.add_argument("--output", type=Path, help="result JSON (default: bench/results/quantize[-sweep].json)")
    args = parser.parse_args()
    if args.command == "sweep":
        sweep(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
