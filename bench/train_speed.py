"""Training runs → bench/results JSON and the two plots in the docs (no training here).

    python bench/train_speed.py runs/cpu-10min/version_*  runs/fashion-cnn/version_1 ...
    python bench/train_speed.py --from-results            # redraw from bench/results/train_runs/*.json
    python bench/train_speed.py --from-results --update-docs   # also rewrite the tables in docs/benchmarks.md

For each finished `fashionstream train fit` run directory this reads `run_summary.json` (machine,
seed, epochs, fit wall time, params, MACs, test accuracy with and without flip TTA; written by the
training command) and `metrics.csv` (validation accuracy and wall time per epoch), and writes

- `bench/results/train_runs/<run name>.json`: one file per run, kept across invocations, so results
  from other machines (a GPU box) can be added by copying their JSON in;
- `bench/results/train_speed.json`: every run plus one row per recipe (the command without its
  seed) with the mean and spread over seeds;
- `docs/img/train_speed.png`: validation accuracy against training wall time, one line per run;
- `docs/img/accuracy_vs_macs.png`: test accuracy against MACs per image, one point per run and the
  recipe means.

Time-to-accuracy is on the validation split; the test set is read once per run, after training. Runs
trained on all 60 k images (`--data.val_size 0`) have no validation curve: the time plot shows their
test accuracy at the end of fit as a star.
Wall times on a shared 2-core machine are upper bounds: the JSON records machine and threads.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from docs_markers import replace_between_markers  # noqa: E402  (bench/ is the script's folder)
from fashionstream.classifier.reports import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RUNS_DIR = RESULTS / "train_runs"
THRESHOLDS = (0.90, 0.92, 0.93, 0.94, 0.95)


def summarise(run_dir: Path) -> dict:
    """One run's JSON: the training command's run_summary.json plus its validation curve."""
    summary_file = run_dir / "run_summary.json"
    series = read_metrics(run_dir / "metrics.csv")
    run = json.loads(summary_file.read_text()) if summary_file.is_file() else summary_of_older_run(run_dir, series)
    elapsed = dict(series.get("time/elapsed_s", []))  # epoch -> seconds since fit start
    val = dict(series.get("val/acc", []))
    run["curve"] = [{"epoch": e, "elapsed_s": round(elapsed[e], 1), "val_acc": round(val[e], 4)}
                    for e in sorted(val) if e in elapsed]  # fmt: skip
    run["time_to_val_acc_s"] = {
        f"{t:.2f}": next((c["elapsed_s"] for c in run["curve"] if c["val_acc"] >= t), None) for t in THRESHOLDS
    }
    run["name"] = f"{run_dir.parent.name}-{run_dir.name}-{run['machine']['host']}"
    run["run_dir"] = str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir)
    return run


def summary_of_older_run(run_dir: Path, series: dict[str, list[tuple[int, float]]]) -> dict:
    """Runs trained before `run_summary.json` existed: rebuild it from config.yaml, metrics.csv and the net."""
    import os
    import platform

    import yaml

    from fashionstream.classifier.module import build_classifier
    from fashionstream.classifier.nets import count_macs, count_params
    from fashionstream.machine import cpu_name

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    net = build_classifier(config["model"]["class_path"], config["model"]["init_args"]).net
    tests = {k: v[-1][1] for k, v in series.items() if k.startswith("test/")}
    elapsed = series.get("time/elapsed_s", [])
    return {
        "command": (run_dir / "command.txt").read_text().strip(),
        "model": config["model"]["class_path"],
        "model_args": config["model"]["init_args"],
        "params": count_params(net),
        "macs": count_macs(net),
        "seed": config.get("seed_everything"),
        "max_epochs": config["trainer"].get("max_epochs"),
        "epochs_run": len(elapsed),
        "batch_size": config["data"]["init_args"].get("batch_size"),
        "precision": config["trainer"].get("precision"),
        # This machine, taken to be the one that trained the run; not its load or versions, which are today's.
        "machine": {
            "host": platform.node(),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": config.get("threads"),
            "accelerator": "cpu",
            "gpu": None,
        },  # fmt: skip
        "fit_wall_s": round(elapsed[-1][1], 1) if elapsed else None,  # last validation: a slight underestimate
        "best_val_acc": max((v for _, v in series.get("val/acc", [])), default=None),
        "test_acc": tests.get("test/acc"),
        "test_acc_tta": tests.get("test/acc_tta"),
        "rebuilt_from_metrics": True,
    }


# Options that change where a run writes or what it prints, not what it trains.
_NOT_RECIPE = ("seed_everything", "trainer.logger.init_args.save_dir", "trainer.logger.init_args.name",
               "trainer.enable_progress_bar", "trainer.default_root_dir")  # fmt: skip


def recipe_of(command: str) -> str:
    """The command without its seed and output options: runs that differ only in those are one recipe."""
    for option in _NOT_RECIPE:
        command = re.sub(rf"\s*--{re.escape(option)}[ =]\S+", "", command)
    return command.strip()


def group_by_recipe(runs: list[dict]) -> list[dict]:
    # A config file can change between runs of the same command line, so the resolved net, epoch count,
    # batch size and short-run augmentation options are part of the recipe's name.
    # The short name labels the recipe in the MAC plot: the net (class name left out for FashionCNN),
    # epochs and the options that most change accuracy.
    groups: dict[tuple[str, int], list[dict]] = {}
    short_names: dict[str, str] = {}
    for run in runs:
        net = f"{run['model'].rsplit('.', 1)[-1]} {run['model_args'].get('widths', '')}".strip()
        recipe = f"{recipe_of(run['command'])} → {net}, {run['max_epochs']} epochs, batch {run['batch_size']}"
        short = f"{net.removeprefix('FashionCNN ')}, {run['max_epochs']} epochs"
        data = run.get("data_args") or {}  # recorded since the augmentation options below existed
        if data.get("alternate_flips"):
            recipe += ", alternate flips"
        if data.get("erase"):
            recipe += f", erase {data['erase']}"
            short += f", erase {data['erase']}"
        if data.get("val_size") == 0:
            recipe += ", all 60 k training images (no validation)"
            short += " on all 60 k"
        if data.get("progressive_resize"):
            recipe += f", resize {json.dumps(data['progressive_resize'], separators=(',', ':'))}"
        groups.setdefault((recipe, run["macs"]), []).append(run)
        short_names[recipe] = short
    rows = []
    for (recipe, _), members in groups.items():
        tests = [r["test_acc"] for r in members if r.get("test_acc") is not None]
        ttas = [r["test_acc_tta"] for r in members if r.get("test_acc_tta") is not None]
        walls = [r["fit_wall_s"] for r in members]
        rows.append({
            "recipe": recipe,
            "short_name": short_names[recipe],
            "accelerator": members[0]["machine"]["gpu"] or members[0]["machine"]["cpu"],
            "macs": members[0]["macs"],
            "params": members[0]["params"],
            "seeds": sorted(r["seed"] for r in members),
            "test_acc_mean": round(statistics.mean(tests), 4) if tests else None,
            "test_acc_min": min(tests, default=None),
            "test_acc_max": max(tests, default=None),
            "test_acc_tta_mean": round(statistics.mean(ttas), 4) if ttas else None,
            "fit_wall_s_mean": round(statistics.mean(walls), 1),
            "fit_wall_s_max": max(walls),
        })  # fmt: skip
    return sorted(rows, key=lambda g: (g["macs"], g["recipe"]))


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_time(runs: list[dict], out: Path) -> None:
    plt = _plt()
    columns = 1 + len(runs) // 32  # about 32 legend rows fit beside a 4.5-inch plot; more go in a new column
    fig, ax = plt.subplots(figsize=(7 + 4 * columns, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # tab10 repeats colours past ten runs
    for run in sorted(runs, key=lambda r: r["name"]):
        minutes = [c["elapsed_s"] / 60 for c in run["curve"]]
        test = f", test {run['test_acc']:.4f}" if run.get("test_acc") else ""
        label = f"{run['name']} ({run['macs'] / 1e6:.1f} M MACs{test})"
        if run["curve"]:
            ax.plot(minutes, [c["val_acc"] for c in run["curve"]], marker=".", linewidth=1, label=label)
        elif run.get("test_acc") and run.get("fit_wall_s"):  # trained without a validation set (val_size 0)
            ax.plot([run["fit_wall_s"] / 60], [run["test_acc"]], marker="*", markersize=11, linestyle="none", zorder=5,
                    label=f"{label}, ★ = test, no validation set")  # fmt: skip
    ax.axhline(0.94, color="grey", linestyle="--", linewidth=0.8)
    ax.axvline(10, color="grey", linestyle=":", linewidth=0.8)
    # Log time axis: 10-minute CPU recipes and hour-long runs (and seconds-long GPU runs) in one view.
    ax.set_xscale("log")
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set(xlabel="training wall time since fit start (min, log scale)",
           ylabel="validation accuracy (EMA weights;\n★: test, runs on all 60 k)",
           title="accuracy against training time", ylim=(0.85, 0.96))  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=columns)  # beside: curves fill the plot
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_macs(runs: list[dict], groups: list[dict], out: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    tested = [r for r in runs if r.get("test_acc") is not None]
    ax.scatter([r["macs"] / 1e6 for r in tested], [r["test_acc"] for r in tested], s=14, color="tab:blue",
               alpha=0.6, label="one run (no TTA)")  # fmt: skip
    measured = [g for g in groups if g["test_acc_mean"] is not None]
    three_seeds = [g for g in measured if len(g["seeds"]) >= 3]  # an accuracy target is met by a mean over 3+ seeds

    # A frontier: the recipes that no other recipe beats by being at least as cheap and more accurate. Only
    # frontier recipes are labelled (the table lists every recipe): labels for all of them crowd at 23.8 M.
    def frontier(pool: list[dict]) -> list[dict]:
        return [g for g in pool if not any(o["macs"] <= g["macs"] and o["test_acc_mean"] > g["test_acc_mean"]
                                           for o in pool)]  # fmt: skip

    any_front, three_front = frontier(measured), frontier(three_seeds)
    labelled = any_front + [g for g in three_front if g not in any_front]
    for front, style, name in (
        (any_front, "-", "frontier, any number of seeds"),
        (three_front, "--", "frontier, 3+ seeds"),
    ):
        steps = sorted(front, key=lambda g: g["macs"])
        if steps:
            xs = [g["macs"] / 1e6 for g in steps] + [max(30, steps[-1]["macs"] / 1e6)]  # flat up to the budget
            ys = [g["test_acc_mean"] for g in steps] + [steps[-1]["test_acc_mean"]]
            ax.step(xs, ys, where="post", linestyle=style, color="tab:red", linewidth=0.8, alpha=0.6, label=name)
    for g in measured:
        solid = len(g["seeds"]) >= 3
        ax.scatter([g["macs"] / 1e6], [g["test_acc_mean"]], marker="D", s=40, color="tab:red",
                   facecolors="tab:red" if solid else "white", zorder=3)  # fmt: skip
        if g not in labelled:
            continue
        seeds = "" if solid else f", {len(g['seeds'])} seed{'s' * (len(g['seeds']) > 1)}"
        label = f"{g['short_name']}, {g['fit_wall_s_mean'] / 60:.0f} min{seeds}"
        ax.annotate(label, (g["macs"] / 1e6, g["test_acc_mean"]), fontsize=6, xytext=(6, 3), textcoords="offset points",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})  # fmt: skip
    ax.scatter([], [], marker="D", color="tab:red", label="recipe mean, 3+ seeds")
    ax.scatter([], [], marker="D", color="tab:red", facecolors="white", label="recipe mean, 1-2 seeds")
    # An export with flip-TTA baked in runs the net twice per image, so its accuracy belongs at twice the MACs.
    with_tta = [g for g in measured if g["test_acc_tta_mean"] is not None]
    ax.scatter([2 * g["macs"] / 1e6 for g in with_tta], [g["test_acc_tta_mean"] for g in with_tta], marker="^", s=30,
               color="tab:grey", facecolors="white", label="recipe mean with flip-TTA, at its 2× MACs")  # fmt: skip
    ax.axhline(0.955, color="grey", linestyle="--", linewidth=0.8)
    ax.axvline(30, color="grey", linestyle=":", linewidth=0.8)
    accs = [r["test_acc"] for r in tested] + [0.955]
    x_max = 1.15 * max([30e6] + [r["macs"] for r in runs] + [2 * g["macs"] for g in with_tta]) / 1e6
    ax.set(xlabel="MACs per image (millions)", ylabel="test accuracy (10 k images)",
           title="accuracy against model cost", xlim=(0, x_max), ylim=(min(accs) - 0.004, 0.96))  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")  # the top left holds the frontier's labels
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench/train_speed.py: start -->", "<!-- bench/train_speed.py: end -->"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def markdown_tables(runs: list[dict], groups: list[dict]) -> str:
    """Recipe means over seeds, then every run; written between the markers in docs/benchmarks.md."""
    lines = [
        "| recipe (command without seed and output options) | MACs | seeds | fit wall time, mean (max) "
        "| test acc, mean (min–max) | with flip-TTA, mean | machine |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for g in groups:
        spread = f"({_pct(g['test_acc_min'])} – {_pct(g['test_acc_max'])})" if len(g["seeds"]) > 1 else ""
        lines.append(
            f"| `{g['recipe']}` | {g['macs'] / 1e6:.1f} M | {', '.join(map(str, g['seeds']))} "
            f"| {g['fit_wall_s_mean']:.0f} s ({g['fit_wall_s_max']:.0f} s) | {_pct(g['test_acc_mean'])} {spread} "
            f"| {_pct(g['test_acc_tta_mean'])} | {g['accelerator']} |"
        )
    lines += [
        "",
        "| run | model | MACs | seed | epochs | batch | precision | fit wall time | best val | test | test flip-TTA |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r.get("finished_at") or "", r["name"])):  # rebuilt older runs first
        lines.append(
            f"| {r['name']} | {r['model'].rsplit('.', 1)[-1]} {r['model_args'].get('widths', '')} "
            f"| {r['macs'] / 1e6:.1f} M | {r['seed']} | {r['epochs_run']} | {r['batch_size']} | {r['precision']} "
            f"| {r['fit_wall_s']:.0f} s | {_pct(r['best_val_acc'])} | {_pct(r['test_acc'])} "
            f"| {_pct(r['test_acc_tta'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="*", type=Path, help="finished run directories (runs/NAME/version_N)")
    parser.add_argument("--from-results", action="store_true", help="only redraw from bench/results/train_runs")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the tables in docs/benchmarks.md")
    args = parser.parse_args(argv)
    if not args.run_dirs and not args.from_results:
        parser.error("pass finished run directories, or --from-results")
    missing = [d for d in args.run_dirs if not (d / "metrics.csv").is_file()]
    if missing:
        parser.error(f"no metrics.csv in {', '.join(map(str, missing))}: pass finished `fashionstream train` run dirs")
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    for run_dir in args.run_dirs:
        run = summarise(run_dir.resolve())
        (RUNS_DIR / f"{run['name']}.json").write_text(json.dumps(run, indent=2) + "\n")
    runs = [json.loads(p.read_text()) for p in sorted(RUNS_DIR.glob("*.json"))]
    groups = group_by_recipe(runs)
    (RESULTS / "train_speed.json").write_text(json.dumps({"recipes": groups, "runs": runs}, indent=2) + "\n")
    (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
    plot_time(runs, ROOT / "docs" / "img" / "train_speed.png")
    plot_macs(runs, groups, ROOT / "docs" / "img" / "accuracy_vs_macs.png")
    print(f"{len(runs)} runs in {RUNS_DIR.relative_to(ROOT)}; wrote bench/results/train_speed.json and 2 plots")
    if args.update_docs:
        replace_between_markers(DOCS, START, END, markdown_tables(runs, groups))
        print(f"updated {DOCS.relative_to(ROOT)}")
    print(f"{'MACs':>7} {'seeds':>9} {'test mean':>9} {'TTA mean':>9} {'wall s':>7}  recipe")
    for g in groups:
        print(f"{g['macs'] / 1e6:6.1f}M {str(g['seeds']):>9} {g['test_acc_mean'] or float('nan'):9.4f} "
              f"{g['test_acc_tta_mean'] or float('nan'):9.4f} {g['fit_wall_s_mean']:7.1f}  {g['recipe']}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
