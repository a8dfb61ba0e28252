"""Training time-to-accuracy from finished `fashionstream train` runs (no training here).

    python bench/train_speed.py runs/fashion-cnn/version_0 [more run dirs...]

Reads each run's metrics.csv (validation accuracy and `time/elapsed_s`, the wall time since fit
start, logged every epoch), command.txt, config.yaml and test_metrics.json, and writes
bench/results/train_speed.json plus docs/img/train_speed.png (validation accuracy against wall
time). Time-to-accuracy is on the *validation* split — the test set is read once, at the end.
Runs on a shared 2-core machine are slowed by whatever else runs: the JSON records the machine,
and wall times are an upper bound for an idle box.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from fashionstream.classifier.reports import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.90, 0.92, 0.93, 0.94, 0.95)


def summarise(run_dir: Path) -> dict:
    series = read_metrics(run_dir / "metrics.csv")
    elapsed = dict(series.get("time/elapsed_s", []))  # epoch -> seconds since fit start
    val = dict(series.get("val/acc", []))
    curve = [{"epoch": e, "elapsed_s": round(elapsed[e], 1), "val_acc": round(val[e], 4)} for e in sorted(val)
             if e in elapsed]  # fmt: skip
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    test_file = run_dir / "test_metrics.json"
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine())  # fmt: skip
    return {
        "run": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir),
        "command": (run_dir / "command.txt").read_text().strip(),
        "model": config["model"]["class_path"],
        "seed": config.get("seed_everything"),
        "epochs": len(curve),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "accelerator": "cpu", "threads": config.get("threads")},
        "wall_s": curve[-1]["elapsed_s"] if curve else None,
        "test_accuracy": json.loads(test_file.read_text())["accuracy"] if test_file.is_file() else None,
        "best_val_acc": max(val.values()) if val else None,
        "time_to_val_acc_s": {
            f"{t:.2f}": next((c["elapsed_s"] for c in curve if c["val_acc"] >= t), None) for t in THRESHOLDS
        },
        "curve": curve,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="finished run directories (runs/NAME/version_N)")
    args = parser.parse_args(argv)
    missing = [d for d in args.run_dirs if not (d / "metrics.csv").is_file()]
    if missing:
        parser.error(f"no metrics.csv in {', '.join(map(str, missing))}: pass finished `fashionstream train` run dirs")
    runs = [summarise(d.resolve()) for d in args.run_dirs]
    out = ROOT / "bench" / "results" / "train_speed.json"
    out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(f"wrote {out}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        label = f"{run['run']} (test {run['test_accuracy']:.4f})" if run["test_accuracy"] else run["run"]
        minutes = [c["elapsed_s"] / 60 for c in run["curve"]]
        ax.plot(minutes, [c["val_acc"] for c in run["curve"]], marker=".", label=label)
    ax.axhline(0.94, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="wall time since fit start (min, 2 shared CPU cores)", ylabel="validation accuracy (EMA)",
           title="time to accuracy", ylim=(0.85, 0.96))  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
    fig.savefig(ROOT / "docs" / "img" / "train_speed.png", dpi=100)
    for run in runs:
        print(f"{run['run']}: {run['epochs']} epochs, {run['wall_s']} s, best val {run['best_val_acc']:.4f}, "
              f"test {run['test_accuracy']}, time to val acc {run['time_to_val_acc_s']}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
