"""Per-run reports: training-curve PNG, confusion-matrix PNG, per-class precision/recall table.

Written into the run directory (`runs/<name>/version_N/`) by the training command:
`training_curve.png` after fit (from Lightning's metrics.csv), and after the test pass
`confusion_matrix.png`, `per_class.md` and `test_metrics.json`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def read_metrics(csv_path: Path) -> dict[str, list[tuple[int, float]]]:
    """Lightning's CSVLogger rows → {metric: [(epoch, value), ...]} (one sparse row per log call)."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            epoch = int(float(row.get("epoch") or 0))
            for key, value in row.items():
                if key in ("epoch", "step") or value in ("", None):
                    continue
                series.setdefault(key, []).append((epoch, float(value)))
    return series


def plot_training_curve(csv_path: Path, out_path: Path) -> None:
    """Loss and accuracy per epoch for training and validation."""
    series = read_metrics(csv_path)
    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train/loss", "val/loss"):
        if key in series:
            ax_loss.plot(*zip(*series[key], strict=True), marker=".", label=key)
    for key in ("train/acc", "val/acc", "val/acc_tta"):
        if key in series:
            ax_acc.plot(*zip(*series[key], strict=True), marker=".", label=key)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class_table(cm: np.ndarray, class_names: tuple[str, ...]) -> list[dict[str, float | int | str]]:
    rows: list[dict[str, float | int | str]] = []
    for i, name in enumerate(class_names):
        tp = int(cm[i, i])
        support, predicted = int(cm[i].sum()), int(cm[:, i].sum())
        rows.append(
            {
                "class": name,
                "precision": tp / predicted if predicted else 0.0,
                "recall": tp / support if support else 0.0,
                "support": support,
            }
        )
    return rows


def write_test_reports(run_dir: Path, preds: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    cm = confusion_matrix(preds, labels, len(class_names))
    table = per_class_table(cm, class_names)
    lines = ["| class | precision | recall | support |", "|---|---:|---:|---:|"]
    lines += [f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['support']} |" for r in table]
    (run_dir / "per_class.md").write_text("\n".join(lines) + "\n")
    accuracy = float((preds == labels).mean())
    (run_dir / "test_metrics.json").write_text(
        json.dumps({"accuracy": accuracy, "n": int(len(labels)), "per_class": table}, indent=2) + "\n"
    )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(cm, cmap="Blues")
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if count > cm.max() / 2 else "k")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=f"test confusion matrix (accuracy {accuracy:.4f})")
    fig.tight_layout()
    fig.savefig(run_dir / "confusion_matrix.png", dpi=100)
    plt.close(fig)
