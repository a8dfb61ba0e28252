"""Pipeline benchmark, as deployed: `produce`, `serve` and `consume` as separate processes on a real broker.

    scripts/services start && eval "$(scripts/services env)"
    .venv/bin/python bench/pipeline.py --broker kafka://127.0.0.1:9092 --update-docs
    .venv/bin/python bench/pipeline.py --broker gcppubsub://projects/$PUBSUB_PROJECT_ID --skip-baseline

Measured in one run, so the ratios hold even on a shared, noisy machine:

1. **ceiling**: ONNX Runtime alone on the shipped model (this process, the Predictor as the service
   uses it), images/s at batch 256 and batch 1, measured before the other runs and again after them,
   the better of the two kept;
2. **drain**: N test images preloaded, then `fashionstream serve` alone (no consumer running):
   images/s from its first ack to its last, read from its /metrics every 50 ms;
3. **flat out**: `consume` waiting, `produce` sends N images as fast as it can, `serve` in between:
   images/s from the first send to the consumer's exit after the last answer;
4. **load sweep**: the same paced at 90 %, 50 % and 10 % of the flat-out rate and at 100 images/s:
   end-to-end latency (the request's CloudEvents `time`, set by the producer, to the moment the
   consumer reads the answer) p50 / p95 / p99;
5. **one at a time** (Kafka only): bench/one_at_a_time.py, the simplest service (JSON + base64,
   TorchScript batch 1, auto-commit, each answer's delivery awaited), and `serve` draining the same
   JSON messages.

Each process's CPU seconds are read from the kernel (wait4 when it exits, /proc when the clock
starts), so CPU per image of the producer (start-up included: it is a command run per batch of
images), the service and the consumer (start-up excluded: they run for days) are reported too.
Results: bench/results/pipeline.json (pipeline-SCHEME.json for other brokers), the table in
docs/benchmarks.md (--update-docs) and docs/img/latency_vs_load_SCHEME.png. Numbers, not
assertions: run it on an otherwise idle machine (it says how busy it was at the start).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docs_markers import replace_between_markers  # noqa: E402  (bench/ is the script's folder)
from fashionstream.classifier.fashion_mnist_files import load_split
from fashionstream.classifier.predictor import Predictor
from fashionstream.machine import describe_machine
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import admin

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"


def results_path(scheme: str) -> Path:
    return ROOT / "bench" / "results" / ("pipeline.json" if scheme == "kafka" else f"pipeline-{scheme}.json")


def plot_path(scheme: str) -> Path:
    return ROOT / "docs" / "img" / f"latency_vs_load_{scheme}.png"


def markers(scheme: str) -> tuple[str, str]:
    """Each broker's table has its own place in docs/benchmarks.md."""
    return f"<!-- bench/pipeline.py {scheme}: start -->", f"<!-- bench/pipeline.py {scheme}: end -->"


CLI = [sys.executable, "-m", "fashionstream.cli"]
LOAD_FRACTIONS = (0.9, 0.5, 0.1)
LIGHT_LOAD = 100.0  # images/s
SWEEP_SECONDS = 15.0  # each paced run lasts about this long


@dataclass
class Finished:
    """A child process that exited: its status, output and the CPU seconds it used."""

    returncode: int
    stdout: str
    stderr: str
    cpu_s: float


def cpu_of(pid: int) -> float:
    """CPU seconds process `pid` has used so far (utime + stime from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> Finished:
    """Wait for `proc` and read its CPU time from the kernel (wait4), which Popen.wait would discard."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.communicate()
    return Finished(proc.returncode, stdout, stderr, usage.ru_utime + usage.ru_stime)


class Service:
    """`fashionstream serve` in its own process."""

    def __init__(self, topology: Topology, extra: Sequence[str] = ()) -> None:
        self.proc = start([*CLI, "serve", "--broker", topology.broker, "--images-topic", topology.images,
                           "--predictions-topic", topology.predictions, "--dead-letter-topic", topology.dead_letters,
                           "--subscription", topology.service_subscription, "--metrics-host", "127.0.0.1",
                           "--metrics-port", "0", "--log-level", "warning", *extra])  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "metrics on http://" not in line:
            raise RuntimeError(f"serve did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.port = int(line.split("metrics on http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.port}/metrics?name[]={name}"  # one series: a full scrape costs the service CPU
        with urllib.request.urlopen(url, timeout=30) as response:
            for raw in response.read().decode().splitlines():
                if raw.startswith(name + " "):
                    return float(raw.split()[-1])
        return 0.0

    def cpu_s(self) -> float:
        """CPU seconds used so far, to leave start-up out of per-image figures."""
        return cpu_of(self.proc.pid)

    def stop(self) -> Finished:
        self.proc.send_signal(signal.SIGTERM)
        return finish(self.proc, timeout=30)


def fresh_topology(broker: str) -> Topology:
    run = uuid.uuid4().hex[:8]
    topology = Topology(broker, images=f"images-bench-{run}", predictions=f"predictions-bench-{run}",
                        dead_letters=f"images-dlq-bench-{run}", service_subscription=f"model-service-{run}",
                        consumer_subscription=f"consumer-{run}")  # fmt: skip
    topology.create(partitions=1)
    return topology


def remove(topology: Topology) -> None:
    for topic, sub in ((topology.images, topology.service_subscription),
                       (topology.predictions, topology.consumer_subscription)):  # fmt: skip
        with contextlib.suppress(Exception):
            admin.delete_subscription(topology.subscription(topic, sub))
    for name in (topology.images, topology.predictions, topology.dead_letters):
        with contextlib.suppress(Exception):
            admin.delete_topic(topology.topic(name))


def produce(topology: Topology, count: int, rate: float | None = None, fmt: str = "cloudevents") -> Finished:
    command = [*CLI, "produce", "--broker", topology.broker, "--topic", topology.images, "--count", str(count),
               "--format", fmt, "--no-progress"] + (["--rate", f"{rate:.3f}"] if rate else [])  # fmt: skip
    done = finish(start(command))
    if done.returncode != 0:
        raise RuntimeError(f"produce failed: {done.stderr[-2000:]}")
    return done


# --------------------------------------------------------------------------- measurements


def ceiling() -> dict[str, float]:
    """ONNX Runtime alone: images/s of Predictor.probabilities, best of 3 rounds of 2 s each.

    At batch 256 the better of two ways to use the cores: one session with its default intra-op
    threads, and one single-thread session per core called at once from as many threads (the way
    the service classifies large batches); at batch 1 the first.
    """
    images, _ = load_split("test")
    batch = images[:256]
    shared, single = Predictor.load(), Predictor.load(threads=1)
    cores = min(2, os.cpu_count() or 1)

    def rate(predictor: Predictor, images: Any, callers: int) -> float:
        counts = [0] * callers
        stop_at = time.perf_counter() + 2.0

        def call(index: int) -> None:
            while time.perf_counter() < stop_at:
                predictor.probabilities(images)
                counts[index] += len(images)

        started = time.perf_counter()
        threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts) / (time.perf_counter() - started)

    result = {
        "batch_256_one_session": max(rate(shared, batch, 1) for _ in range(3)),
        "batch_256_one_thread_per_core": max(rate(single, batch, cores) for _ in range(3)),
        "batch_1": max(rate(shared, images[:1], 1) for _ in range(3)),
    }
    result["batch_256"] = max(result["batch_256_one_session"], result["batch_256_one_thread_per_core"])
    return {key: round(value, 1) for key, value in result.items()}


def drain(broker: str, count: int, fmt: str = "cloudevents") -> dict[str, Any]:
    """`serve` alone on `count` preloaded images: images/s from its first ack to its last."""
    topology = fresh_topology(broker)
    try:
        produce(topology, count, fmt=fmt)
        service = Service(topology)
        started_cpu = service.cpu_s()
        # Polled every 50 ms, not faster: each scrape takes the service's GIL. The rate is taken between
        # the first sample after its first ack and the last sample before its last, so the polling
        # interval does not blur the ends.
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            acked = service.metric("fashionstream_acked_total")
            samples.append((time.perf_counter(), acked))
            if acked >= count:
                break
            time.sleep(0.05)
        stopped = service.stop()
    finally:
        remove(topology)
    during = [(t, acked) for t, acked in samples if 0 < acked < count]
    if len(during) < 2 or samples[-1][1] < count:
        raise RuntimeError(f"the service did not drain the topic (acked {samples[-1][1] if samples else 0:.0f})")
    (first, first_acked), (last, last_acked) = during[0], during[-1]
    return {"images": count, "format": fmt, "images_per_s": round((last_acked - first_acked) / (last - first), 1),
            "service_cpu_ms_per_image": round(1000 * (stopped.cpu_s - started_cpu) / count, 3)}  # fmt: skip


def end_to_end(broker: str, count: int, rate: float | None) -> dict[str, Any]:
    """consume waiting, produce `count` images (flat out or at `rate`), serve in between."""
    topology = fresh_topology(broker)
    try:
        service = Service(topology)
        consumer = start([*CLI, "consume", "--broker", broker, "--topic", topology.predictions, "--subscription",
                          topology.consumer_subscription, "--count", str(count), "--jsonl", "--quiet"])  # fmt: skip
        time.sleep(3.0)  # both have joined their groups before the clock starts
        service_cpu_before = service.cpu_s()
        consumer_cpu_before = cpu_of(consumer.pid)
        launched = time.perf_counter()
        produced = produce(topology, count, rate)
        produce_exited = time.perf_counter()
        consumed = finish(consumer)
        ended = time.perf_counter()
        served = service.stop()
    finally:
        remove(topology)
    summary = json.loads(consumed.stderr.strip().splitlines()[-1])
    # The clock starts at the first send, not at the launch of `produce`: its start-up (imports, the test
    # images, the broker connection: over a second) is no part of the pipeline's rate.
    first_send = produce_exited - sending_seconds(produced.stdout)
    return {
        "offered_rate": rate,
        "images": count,
        "answered": summary["answered"],
        "images_per_s": round(summary["answered"] / (ended - first_send), 1),
        "images_per_s_from_launch": round(summary["answered"] / (ended - launched), 1),
        "latency_ms": summary["latency_ms"],
        "cpu_ms_per_image": {
            "produce": round(1000 * produced.cpu_s / count, 3),
            "serve": round(1000 * (served.cpu_s - service_cpu_before) / count, 3),
            "consume": round(1000 * (consumed.cpu_s - consumer_cpu_before) / count, 3),
        },
    }


def sending_seconds(produce_stdout: str) -> float:
    """How long `produce` took from its first send to its last confirmation, from its summary line
    ("sent N, confirmed N, failed 0 to URL in 2.01s (4966 img/s)")."""
    match = re.search(r" in ([0-9.]+)s \(", produce_stdout)
    if match is None:
        raise RuntimeError(f"no send time in the output of produce: {produce_stdout[-500:]!r}")
    return float(match.group(1))


def one_at_a_time(broker: str, count: int) -> dict[str, Any]:
    """The one-message-at-a-time baseline and `serve` on the same JSON messages."""
    topology = fresh_topology(broker)
    servers = broker.removeprefix("kafka://").rstrip("/")
    try:
        produce(topology, count, fmt="json")
        done = finish(start([sys.executable, str(ROOT / "bench" / "one_at_a_time.py"), "--bootstrap", servers,
                             "--topic", topology.images, "--output", topology.predictions, "--count", str(count),
                             "--group", f"one-at-a-time-{uuid.uuid4().hex[:6]}"]))  # fmt: skip
    finally:
        remove(topology)
    if done.returncode != 0:
        raise RuntimeError(f"one_at_a_time.py failed: {done.stderr[-2000:]}")
    baseline = json.loads(done.stdout.strip().splitlines()[-1])
    service = drain(broker, count, fmt="json")
    return {"baseline_images_per_s": baseline["images_per_s"], "service_images_per_s": service["images_per_s"],
            "speed_up": round(service["images_per_s"] / baseline["images_per_s"], 1)}  # fmt: skip


# --------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    ceil = report["ceiling"]["batch_256"]
    lines = [
        f"ONNX Runtime alone (ceiling): **{ceil:.0f} images/s** at batch 256, "
        f"{report['ceiling']['batch_1']:.0f} at batch 1 (the better of a measurement before the runs, "
        f"{report['ceiling_measurements'][0]['batch_256']:.0f}, and one after, "
        f"{report['ceiling_measurements'][1]['batch_256']:.0f}).",
        "",
        f"- `serve` draining {report['drain']['images']:,d} preloaded images: **{report['drain']['images_per_s']:.0f} "
        f"images/s = {report['drain']['images_per_s'] / ceil:.0%} of the ceiling** "
        f"({report['drain']['service_cpu_ms_per_image']:.2f} ms CPU per image in the service)",
        f"- flat out end to end: **{report['flat_out']['images_per_s']:.0f} images/s = "
        f"{report['flat_out']['images_per_s'] / ceil:.0%} of the ceiling**",
    ]
    if report.get("one_at_a_time"):
        base = report["one_at_a_time"]
        lines.append(
            f"- one message at a time (JSON, TorchScript batch 1): {base['baseline_images_per_s']:.0f} images/s; "
            f"`serve` on the same messages {base['service_images_per_s']:.0f}: **{base['speed_up']:.1f}×**"
        )
    lines += ["", "| offered load | images/s | p50 ms | p95 ms | p99 ms | CPU ms/image: produce | serve | consume |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for run in [report["flat_out"], *report["sweep"]]:
        lat, cpu = run["latency_ms"], run["cpu_ms_per_image"]
        load = "flat out" if run["offered_rate"] is None else f"{run['offered_rate']:.0f}/s ({run['label']})"
        lines.append(
            f"| {load} | {run['images_per_s']:.0f} | {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} "
            f"| {cpu['produce']:.3f} | {cpu['serve']:.3f} | {cpu['consume']:.3f} |"
        )
    machine = report["machine"]
    lines.append(
        f"\n{report['date']}, broker `{report['broker']}`, {machine['cpu']}, {machine['cores']} cores "
        f"(load average at start {machine['load_average'][0]}), `{report['command']}`."
    )
    return "\n".join(lines)


def plot(report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(report["sweep"], key=lambda r: r["images_per_s"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
        ax.plot([r["images_per_s"] for r in runs], [r["latency_ms"][key] for r in runs], style, label=key)
    ax.set(xlabel="images/s (paced)", ylabel="end-to-end latency, ms", yscale="log",
           title=f"request to answer, separate processes, {report['broker'].split('://')[0]}")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    path = plot_path(report["broker"].split("://")[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="kafka://127.0.0.1:9092")
    parser.add_argument("--images", type=int, default=10_000, help="images for the drain and flat-out runs")
    parser.add_argument("--skip-baseline", action="store_true", help="no one-at-a-time run (it needs Kafka and torch)")
    parser.add_argument("--output", type=Path, help="results JSON (default: bench/results/pipeline[-SCHEME].json)")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the table and plot in docs/")
    args = parser.parse_args(argv)
    scheme = args.broker.split("://")[0]
    output: Path = args.output or results_path(scheme)
    report: dict[str, Any] = {
        "command": "python bench/pipeline.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "broker": args.broker,
        "machine": describe_machine("onnxruntime", "confluent-kafka", "google-cloud-pubsub"),
    }
    report["ceiling"] = ceiling()
    print(f"ceiling {report['ceiling']}", file=sys.stderr)
    report["drain"] = drain(args.broker, args.images)
    print(f"drain {report['drain']}", file=sys.stderr)
    report["flat_out"] = end_to_end(args.broker, args.images, None)
    print(f"flat out {report['flat_out']}", file=sys.stderr)
    flat = report["flat_out"]["images_per_s"]
    report["sweep"] = []
    for label, rate in [*((f"{f:.0%}", f * flat) for f in LOAD_FRACTIONS), ("light", LIGHT_LOAD)]:
        count = int(min(args.images, max(500, rate * SWEEP_SECONDS)))
        run = end_to_end(args.broker, count, rate) | {"label": label}
        report["sweep"].append(run)
        print(f"{label} {run}", file=sys.stderr)
    if not args.skip_baseline and args.broker.startswith("kafka://"):
        report["one_at_a_time"] = one_at_a_time(args.broker, min(args.images, 2000))
        print(f"one at a time {report['one_at_a_time']}", file=sys.stderr)
    # Measured again at the end and the better of the two kept: one slow moment of a shared machine during
    # the first measurement would otherwise make every ratio to the ceiling look better than it is.
    report["ceiling_measurements"] = [report["ceiling"], ceiling()]
    report["ceiling"] = {key: max(m[key] for m in report["ceiling_measurements"]) for key in report["ceiling"]}
    print(f"ceiling {report['ceiling']} (of {report['ceiling_measurements']})", file=sys.stderr)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    print(table)
    if args.update_docs:
        replace_between_markers(DOCS, *markers(scheme), table)
        plot(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
