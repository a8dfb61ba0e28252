"""Training-step time of FashionCNN at several widths, measured side by side in one process.

    python bench/train_step.py                                   # the widths the CPU recipe was chosen from
    python bench/train_step.py --widths 0,16,48,112 0,24,48,112 --batch 256 --update-docs

One step = bf16-autocast forward, label-smoothed cross-entropy, backward and an SGD-Nesterov update
on a random (B, 1, 28, 28) channels-last batch, as `fashionstream train` does on a CPU. The nets take
turns in rounds (warm-up steps, then a timed window per net per round), so drift in a shared machine's
speed hits all of them alike; the median window is reported. Writes bench/results/train_step.json and,
with --update-docs, the table in docs/benchmarks.md. This measures speed only; accuracy needs real runs.
A quick check that leaves the results alone: `--widths 0,8,8,16 --rounds 1 --steps 1 --output /tmp/step.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from docs_markers import replace_between_markers  # noqa: E402  (bench/ is the script's folder)
from fashionstream.classifier import nets  # noqa: E402
from fashionstream.machine import describe_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "train_step.json"
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench/train_step.py: start -->", "<!-- bench/train_step.py: end -->"
DEFAULT_WIDTHS = ["0,24,48,112", "0,16,48,112", "0,12,48,112", "0,16,40,96", "0,16,48,96", "0,16,32,112"]


def parse_widths(text: str) -> tuple[int, int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"widths need 4 comma-separated channel counts, got {text!r}")
    return values  # type: ignore[return-value]


def time_steps(widths: list[tuple[int, int, int, int]], batch: int, rounds: int, steps: int, bf16: bool) -> list[dict]:
    """Median milliseconds per training step of each net, the nets taking turns round by round."""
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    setups = []
    for w in widths:
        net = nets.FashionCNN(widths=w).to(memory_format=torch.channels_last)  # as the Lightning module does
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        setups.append((w, net, opt))

    def step(net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    windows: dict[tuple[int, ...], list[float]] = {w: [] for w in widths}
    for r in range(rounds + 1):  # round 0 only warms up (oneDNN picks and caches its kernels)
        for w, net, opt in setups:
            for _ in range(2):
                step(net, opt)
            started = time.perf_counter()
            for _ in range(steps):
                step(net, opt)
            if r:
                windows[w].append((time.perf_counter() - started) / steps * 1000)
        print(f"round {r}/{rounds}", file=sys.stderr)
    return [
        {
            "widths": list(w),
            "macs": nets.count_macs(net),
            "params": nets.count_params(net),
            "ms_per_step_median": round(statistics.median(windows[w]), 1),
            "ms_per_step_min": round(min(windows[w]), 1),
            "images_per_s": round(batch / statistics.median(windows[w]) * 1000),
        }
        for w, net, _ in setups
    ]


def markdown_table(report: dict) -> str:
    base = report["results"][0]["ms_per_step_median"]
    lines = [
        f"`{report['command']}` — batch {report['batch']}, {'bf16 autocast' if report['bf16'] else 'fp32'}, "
        f"{report['machine']['torch_threads']} threads ({report['machine']['cpu']}), median of {report['rounds']} "
        f"windows of {report['steps']} steps per net, nets taking turns; {report['date']}.",
        "",
        f"| FashionCNN widths | MACs | ms per step | images/s | time vs {report['results'][0]['widths']} |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['widths']} | {r['macs'] / 1e6:.1f} M | {r['ms_per_step_median']:.1f} | {r['images_per_s']:,d} "
            f"| {r['ms_per_step_median'] / base:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--widths",
        nargs="+",
        type=parse_widths,
        default=[parse_widths(w) for w in DEFAULT_WIDTHS],
        help="FashionCNN widths, one comma-separated group per net; the first is the baseline",
    )
    parser.add_argument("--batch", type=int, default=256, help="images per step")
    parser.add_argument("--rounds", type=int, default=10, help="timed windows per net")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed window")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite the table in {DOCS.relative_to(ROOT)}")
    parser.add_argument("--output", type=Path, default=RESULTS, help="result JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = time_steps(args.widths, args.batch, args.rounds, args.steps, bf16=not args.fp32)
    report = {
        "command": " ".join(["python bench/train_step.py", *argv]),
        "date": time.strftime("%Y-%m-%d"),
        "batch": args.batch,
        "bf16": not args.fp32,
        "rounds": args.rounds,
        "steps": args.steps,
        "machine": {**describe_machine("torch"), "torch_threads": torch.get_num_threads()},
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(report)
    print(table)
    if args.update_docs:
        replace_between_markers(DOCS, START, END, table)
        print(f"updated {DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
