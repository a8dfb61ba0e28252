"""Scale-out benchmark: what one `fashionstream serve` replica delivers per core, and how replicas add up.

    .venv/bin/python bench/scaling.py --broker kafka://127.0.0.1:9092 --replicas 1 2 --update-docs

For each replica count R it creates a fresh topic with `--partitions` partitions, starts R
`fashionstream serve` processes (one ONNX Runtime thread each, one consumer group), waits until
all are healthy, then sends N test images flat out from this process and reads the N answers.
Measured per run:

- images/s: N over the time from the first image sent to the last answer read;
- CPU seconds the replicas spent (from /proc, start-up excluded): images per CPU-second is the
  per-core throughput, the figure that sizes a deployment, because it does not depend on how
  many cores this machine has or what else ran on them;
- each replica's peak resident memory (VmHWM), which sizes the pods' memory request.

The producer and the consumer run in this process and share the machine's cores with the
replicas, so wall-clock images/s on a small machine understates what the replicas do alone;
images per CPU-second does not. Results: bench/results/scaling.json and the table in
docs/scaling.md. Numbers, not assertions: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from docs_markers import replace_between_markers  # noqa: E402  (bench/ is the script's folder)
from fashionstream.machine import describe_machine
from fashionstream.pipeline.consumer import Tally, read_predictions
from fashionstream.pipeline.producer import labelled_test_images, produce
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import admin, open_subscription, open_topic

RESULTS = Path(__file__).parent / "results" / "scaling.json"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Replica:
    """One `fashionstream serve` process and what /proc says about it."""

    def __init__(self, topology: Topology, log: Path) -> None:
        command = [
            sys.executable, "-m", "fashionstream.cli", "serve", "--broker", topology.broker,
            "--images-topic", topology.images, "--predictions-topic", topology.predictions,
            "--dead-letter-topic", topology.dead_letters, "--subscription", topology.service_subscription,
            "--threads", "1", "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--log-level", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "fashionstream serve: metrics on http://127.0.0.1:PORT/metrics ..."
        if "metrics on http://" not in line:
            raise RuntimeError(f"replica did not start: {line!r}; see {log}")
        self.port = int(line.split("metrics on http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def run(broker: str, replicas: int, images: int, partitions: int, logs: Path) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    topology = Topology(broker, images=f"images-scale-{suffix}", predictions=f"predictions-scale-{suffix}",
                        dead_letters=f"images-dlq-scale-{suffix}", service_subscription=f"model-service-{suffix}",
                        consumer_subscription=f"consumer-{suffix}")  # fmt: skip
    topology.create(partitions=partitions)
    pictures = list(labelled_test_images(images))  # PNG-encoded before anything is timed
    started = [Replica(topology, logs / f"replica-{replicas}-{i}.log") for i in range(replicas)]
    try:
        deadline = time.monotonic() + 60
        while not all(r.healthy() for r in started):
            if time.monotonic() > deadline:
                raise RuntimeError("replicas did not become healthy within 60 s")
            time.sleep(0.2)
        time.sleep(3)  # let the group settle: every replica owns its partitions before the clock starts
        cpu_before = [r.cpu_seconds() for r in started]
        tally = Tally()
        with open_subscription(topology.predictions_subscription_url) as answers:
            t0 = time.perf_counter()
            sender = threading.Thread(target=lambda: _send(topology, pictures), name="producer", daemon=True)
            sender.start()
            read_predictions(answers, tally, until=lambda: len(tally.answered) >= images, idle_timeout=120)
            elapsed = (tally.last_at or time.perf_counter()) - t0
            sender.join(timeout=30)
        cpu = sum(r.cpu_seconds() - before for r, before in zip(started, cpu_before, strict=True))
        rss = [round(r.peak_rss_mb(), 1) for r in started]
    finally:
        for replica in started:
            replica.stop()
        for name in (topology.images, topology.predictions, topology.dead_letters):
            with contextlib.suppress(Exception):
                admin.delete_topic(topology.topic(name))
    return {
        "replicas": replicas,
        "partitions": partitions,
        "images": images,
        "answered": len(tally.answered),
        "seconds": round(elapsed, 2),
        "images_per_s": round(len(tally.answered) / elapsed, 1),
        "replica_cpu_s": round(cpu, 2),
        "images_per_cpu_s": round(len(tally.answered) / cpu, 1),
        "peak_rss_mb": rss,
    }


def _send(topology: Topology, pictures: list[Any]) -> None:
    with open_topic(topology.topic(topology.images)) as publisher:
        produce(publisher, pictures, topology.flavour)


# Replicas are sized to run at this fraction of their measured per-core throughput: the margin
# absorbs bursts and a replica's share moving to the others while one restarts.
TARGET_UTILISATION = 0.7


def sizing(report: dict[str, Any]) -> str:
    """Replicas, partitions and cores for 1 k, 10 k and 100 k images/s, derived from the measurement."""
    per_core = min(r["images_per_cpu_s"] for r in report["runs"])  # the least favourable run
    per_replica = per_core * TARGET_UTILISATION  # one replica = one core (one ONNX Runtime thread)
    rows = [
        f"Derived, not measured: one replica per core at {TARGET_UTILISATION:.0%} of the lowest measured "
        f"{per_core:.0f} images per CPU-second = {per_replica:.0f} images/s per replica; partitions twice the "
        "replicas, so the group can grow to absorb a backlog.",
        "",
        "| target images/s | replicas (= cores) | Kafka partitions of `images` |",
        "|---:|---:|---:|",
    ]
    for target in (1_000, 10_000, 100_000):
        replicas = max(1, math.ceil(target / per_replica))
        rows.append(f"| {target:,d} | {replicas} | {2 * replicas} |")
    return "\n".join(rows)


def markdown(report: dict[str, Any]) -> str:
    rows = [
        "| replicas | partitions | images | images/s (wall) | replica CPU s | images per CPU-second "
        "| peak RSS per replica (MB) |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in report["runs"]:
        rss = ", ".join(f"{m:.0f}" for m in r["peak_rss_mb"])
        rows.append(
            f"| {r['replicas']} | {r['partitions']} | {r['answered']} | {r['images_per_s']:.0f} | "
            f"{r['replica_cpu_s']:.1f} | {r['images_per_cpu_s']:.0f} | {rss} |"
        )
    machine = report["machine"]
    rows.append(
        f"\n{report['date']}, {machine['cpu']}, {machine['cores']} cores, broker {report['broker']}, "
        f"`{report['command']}`.\n"
    )
    rows.append(sizing(report))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="kafka://127.0.0.1:9092", help="a Kafka broker URL")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts to run")
    parser.add_argument("--images", type=int, default=6000, help="images per run")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--update-docs", action="store_true", help="rewrite the table in docs/scaling.md")
    args = parser.parse_args(argv)
    logs = Path("/tmp") / f"fashionstream-scaling-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    runs = [run(args.broker, r, args.images, args.partitions, logs) for r in args.replicas]
    report = {
        "command": "python bench/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "broker": args.broker,
        "machine": describe_machine("onnxruntime", "confluent-kafka"),
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    print(table)
    if args.update_docs:
        replace_between_markers(DOCS, "<!-- bench/scaling.py: start -->", "<!-- bench/scaling.py: end -->", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
