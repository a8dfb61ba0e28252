"""Pub/sub throughput: `fashionstream.pubsub` against the raw client libraries, per backend.

    scripts/services start && eval "$(scripts/services env)"
    .venv/bin/python bench/pubsub.py                       # mem, kafka, gcp; ~2 minutes
    .venv/bin/python bench/pubsub.py --backends kafka --count 50000 --repeat 5
    .venv/bin/python bench/pubsub.py --update-docs         # also rewrite the table in docs/benchmarks.md

For each backend it measures messages per second for 1 KB messages, sending and receiving (with
one ack per message), once through this API (`open_topic` / `open_subscription`) and once through
the raw client in the same run:

- Kafka: confluent-kafka `Producer` (idempotent, acks=all, as the driver) / `Consumer.consume` +
  asynchronous `commit` per batch (manual commits, as the driver).
- Pub/Sub: google-cloud-pubsub `PublisherClient.publish` futures / `SubscriberClient.pull` +
  `acknowledge` (synchronous pull, as the driver).
- mem: the embedded broker has no raw client; the API alone is reported.

The raw clients get the same batch sizes as the API's defaults (publish batches of up to 1,000
messages with 5 ms linger; 100 messages per receive call), so the difference is the cost of the
layer, not of a different configuration. Each measurement runs `--repeat` times on fresh topics,
alternating which side goes first; the median is reported. Receiving is timed from the first
message to the last, so joining a consumer group is not counted.

Output: bench/results/pubsub.json (machine, date, counts, every rate, medians, overhead %) and a
markdown table on stdout. Expected on a 2-core machine: Kafka tens of thousands of messages/s
both ways; the Pub/Sub emulator a few thousand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fashionstream.machine import describe_machine
from fashionstream.pubsub import admin, open_subscription, open_topic, parse_broker

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "pubsub.json"
DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_START = "<!-- bench/pubsub.py: start -->"
DOCS_END = "<!-- bench/pubsub.py: end -->"
RECEIVE_BATCH = 100  # the API's default receive_batch_size, used for the raw clients too
PUBLISH_BATCH = 1000  # the API's default batch_size
RECEIVE_DEADLINE_S = 300.0

Measure = Callable[[int, bytes], float]


def _payload(size: int) -> bytes:
    return os.urandom(size)


def _receive_rate(times: list[float], expected: int, what: str) -> float:
    """Messages/s from the first message to the last; fails loudly if messages went missing."""
    if len(times) < expected:
        raise RuntimeError(f"{what}: received only {len(times)} of {expected} messages")
    return (len(times) - 1) / (times[-1] - times[0])


# ---------------------------------------------------------------- the API (any backend)


class ApiSide:
    """Sends and receives through fashionstream.pubsub, on one topic + subscription URL pair."""

    def __init__(self, topic_url: str, subscription_url: str, subscriber_options: dict[str, object]) -> None:
        self.topic_url, self.subscription_url = topic_url, subscription_url
        self.subscriber_options = subscriber_options

    def send(self, count: int, payload: bytes) -> float:
        with open_topic(self.topic_url) as pub:
            start = time.perf_counter()
            futures = [pub.send(payload) for _ in range(count)]
            pub.flush()
            elapsed = time.perf_counter() - start
        wait(futures)
        failed = [f for f in futures if f.exception() is not None]
        if failed:
            raise RuntimeError(f"API send: {len(failed)} sends failed, first: {failed[0].exception()}")
        return count / elapsed

    def receive(self, count: int, payload: bytes) -> float:
        times: list[float] = []
        deadline = time.monotonic() + RECEIVE_DEADLINE_S
        with open_subscription(self.subscription_url, **self.subscriber_options) as sub:
            while len(times) < count and time.monotonic() < deadline:
                for message in sub.receive_batch(RECEIVE_BATCH, timeout=1.0):
                    message.ack()
                    times.append(time.perf_counter())
        return _receive_rate(times, count, "API receive")


# ---------------------------------------------------------------- raw Kafka


class RawKafka:
    def __init__(self, servers: str, topic: str, group: str) -> None:
        self.servers, self.topic, self.group = servers, topic, group

    def send(self, count: int, payload: bytes) -> float:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.servers, "enable.idempotence": True, "acks": "all"})
        # Connect before timing, as open_topic does (it checks the topic's metadata).
        producer.list_topics(self.topic, timeout=10)
        failures: list[object] = []

        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                failures.append(err)

        start = time.perf_counter()
        for _ in range(count):
            while True:
                try:
                    producer.produce(self.topic, payload, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)
        producer.flush()
        elapsed = time.perf_counter() - start
        if failures:
            raise RuntimeError(f"raw Kafka send: {len(failures)} failed, first: {failures[0]}")
        return count / elapsed

    def receive(self, count: int, payload: bytes) -> float:
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                "bootstrap.servers": self.servers,
                "group.id": self.group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([self.topic])
        times: list[float] = []
        deadline = time.monotonic() + RECEIVE_DEADLINE_S
        try:
            while len(times) < count and time.monotonic() < deadline:
                messages = consumer.consume(RECEIVE_BATCH, timeout=1.0)
                for message in messages:
                    if message.error() is None:
                        message.value()  # the least a consumer does with a message: take its body
                        times.append(time.perf_counter())
                if messages:
                    consumer.commit(asynchronous=True)
        finally:
            consumer.close()
        return _receive_rate(times, count, "raw Kafka receive")


# ---------------------------------------------------------------- raw Pub/Sub


class RawPubSub:
    def __init__(self, topic_path: str, subscription_path: str) -> None:
        self.topic_path, self.subscription_path = topic_path, subscription_path

    def send(self, count: int, payload: bytes) -> float:
        from google.cloud import pubsub_v1

        client = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(
                max_messages=PUBLISH_BATCH, max_bytes=4 * 1024 * 1024, max_latency=0.005
            )
        )
        try:
            start = time.perf_counter()
            futures = [client.publish(self.topic_path, payload) for _ in range(count)]
            for future in futures:
                future.result(timeout=120)
            elapsed = time.perf_counter() - start
        finally:
            client.stop()
        return count / elapsed

    def receive(self, count: int, payload: bytes) -> float:
        from google.api_core import exceptions
        from google.cloud import pubsub_v1

        client = pubsub_v1.SubscriberClient()
        times: list[float] = []
        deadline = time.monotonic() + RECEIVE_DEADLINE_S
        try:
            while len(times) < count and time.monotonic() < deadline:
                try:
                    response = client.pull(
                        subscription=self.subscription_path, max_messages=RECEIVE_BATCH, timeout=5.0, retry=None
                    )
                except exceptions.DeadlineExceeded:
                    continue
                if not response.received_messages:
                    continue
                for received in response.received_messages:
                    _ = received.message.data  # the least a consumer does with a message: take its body
                    times.append(time.perf_counter())
                client.acknowledge(
                    subscription=self.subscription_path, ack_ids=[m.ack_id for m in response.received_messages]
                )
        finally:
            client.close()
        return _receive_rate(times, count, "raw Pub/Sub receive")


# ---------------------------------------------------------------- one backend


def _fresh_pair(backend: str, kafka: str, project: str) -> tuple[str, str, str, str, str]:
    """(topic URL, subscription URL, short topic, short subscription, project) freshly created."""
    topic = f"bench-{uuid.uuid4().hex[:10]}"
    sub = f"{topic}-sub"
    broker_url = {"mem": "mem://", "kafka": f"kafka://{kafka}", "gcp": f"gcppubsub://projects/{project}"}[backend]
    broker = parse_broker(broker_url)
    topic_url, sub_url = broker.topic_url(topic), broker.subscription_url(topic, sub)
    admin.create_topic(topic_url)
    # Kafka groups need no creation (the admin call would only check the topic).
    if backend != "kafka":
        admin.create_subscription(sub_url, topic=topic, ack_deadline_s=60)
    return topic_url, sub_url, topic, sub, project


def _cleanup(backend: str, topic_url: str, sub_url: str) -> None:
    for undo in (lambda: admin.delete_subscription(sub_url), lambda: admin.delete_topic(topic_url)):
        try:
            undo()
        except Exception as err:  # leftovers on a test broker are harmless; say so and go on
            print(f"  (cleanup of {backend} {topic_url}: {err})", file=sys.stderr)


def run_backend(backend: str, count: int, size: int, repeat: int, kafka: str, project: str) -> dict[str, Any]:
    payload = _payload(size)
    rates: dict[str, dict[str, list[float]]] = {"send": {"api": [], "raw": []}, "receive": {"api": [], "raw": []}}
    cpu: dict[str, dict[str, list[float]]] = {"send": {"api": [], "raw": []}, "receive": {"api": [], "raw": []}}
    for round_ in range(repeat):
        api_topic, api_sub, *_ = _fresh_pair(backend, kafka, project)
        raw_topic, raw_sub, raw_topic_name, raw_sub_name, _ = _fresh_pair(backend, kafka, project)
        api = ApiSide(api_topic, api_sub, {})
        raw: RawKafka | RawPubSub | None = None
        if backend == "kafka":
            raw = RawKafka(kafka, raw_topic_name, raw_sub_name)
        elif backend == "gcp":
            raw = RawPubSub(
                f"projects/{project}/topics/{raw_topic_name}", f"projects/{project}/subscriptions/{raw_sub_name}"
            )
        sides: list[tuple[str, Any]] = [("api", api)] + ([("raw", raw)] if raw is not None else [])
        if round_ % 2 == 1:  # alternate who goes first, so warm-up and drift hit both sides alike
            sides.reverse()
        try:
            for phase in ("send", "receive"):
                for side_name, side in sides:
                    # CPU time of this process (all its threads) is what the client side costs; unlike
                    # msg/s it hardly depends on what else the shared machine is doing.
                    cpu_start = time.process_time()
                    rate = getattr(side, phase)(count, payload)
                    cpu_us = (time.process_time() - cpu_start) / count * 1e6
                    rates[phase][side_name].append(rate)
                    cpu[phase][side_name].append(cpu_us)
                    print(
                        f"  {backend:5s} {phase:7s} {side_name}: {rate:10,.0f} msg/s {cpu_us:6.1f} us CPU/msg",
                        file=sys.stderr,
                    )
        finally:
            _cleanup(backend, api_topic, api_sub)
            _cleanup(backend, raw_topic, raw_sub)
    result: dict[str, Any] = {}
    for phase, sides_rates in rates.items():
        entry: dict[str, Any] = {}
        for side_name, values in sides_rates.items():
            if values:
                cpu_values = cpu[phase][side_name]
                entry[side_name] = {
                    "rates": [round(v, 1) for v in values],
                    "median": round(statistics.median(values), 1),
                    "cpu_us_per_msg": [round(v, 2) for v in cpu_values],
                    "cpu_us_per_msg_median": round(statistics.median(cpu_values), 2),
                }
        if "raw" in entry:
            api_median, raw_median = entry["api"]["median"], entry["raw"]["median"]
            # Positive: the API is slower than the raw client by this share of the raw rate.
            entry["overhead_pct"] = round(100.0 * (raw_median - api_median) / raw_median, 1)
            api_cpu, raw_cpu = entry["api"]["cpu_us_per_msg_median"], entry["raw"]["cpu_us_per_msg_median"]
            entry["cpu_overhead_pct"] = round(100.0 * (api_cpu - raw_cpu) / raw_cpu, 1)
        result[phase] = entry
    return result


# ---------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    """The machine description every result file shares, plus the librdkafka the Kafka numbers depend on."""
    info = describe_machine("confluent-kafka", "google-cloud-pubsub")
    info["load_average_at_start"] = info.pop("load_average")  # paired with load_average_at_end
    with contextlib.suppress(ImportError):
        import confluent_kafka

        info["librdkafka"] = confluent_kafka.libversion()[0]
    return info


def markdown(report: dict[str, Any]) -> str:
    rows = [
        "| backend | direction | this API (msg/s) | raw client (msg/s) | API overhead (rate) "
        "| API CPU (µs/msg) | raw CPU (µs/msg) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backend, result in report["results"].items():
        for phase in ("send", "receive"):
            entry = result[phase]
            raw = f"{entry['raw']['median']:,.0f}" if "raw" in entry else "n/a (no raw client)"
            overhead = f"{entry['overhead_pct']:+.1f} %" if "overhead_pct" in entry else "n/a"
            api_cpu = f"{entry['api']['cpu_us_per_msg_median']:.1f}"
            raw_cpu = f"{entry['raw']['cpu_us_per_msg_median']:.1f}" if "raw" in entry else "n/a"
            rows.append(
                f"| {backend} | {phase} | {entry['api']['median']:,.0f} | {raw} | {overhead} | {api_cpu} | {raw_cpu} |"
            )
    config = report["config"]
    rows.append("")
    rows.append(
        f"{config['count']:,} messages of {config['size']} bytes per measurement, median of {config['repeat']} "
        f"runs; {report['machine'].get('cores')} CPUs ({report['machine'].get('cpu', '?')}), load average "
        f"{report['machine']['load_average_at_start']} at start; {report['date']}. "
        "Overhead = (raw - API) / raw; negative means the API was faster. CPU = this client process's CPU "
        "time per message (all threads, connecting included; not the broker's)."
    )
    return "\n".join(rows)


def update_docs(table: str, command: str) -> None:
    block = f"{DOCS_START}\n```\n{command}\n```\n\n{table}\n{DOCS_END}"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if DOCS_START in text and DOCS_END in text:
        before, rest = text.split(DOCS_START, 1)
        after = rest.split(DOCS_END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n## Pub/sub throughput\n\n" + block + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="mem,kafka,gcp", help="comma-separated: mem, kafka, gcp")
    parser.add_argument("--count", type=int, default=20_000, help="messages per measurement")
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite the table in {DOCS.relative_to(ROOT)}")
    args = parser.parse_args()
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    project = os.environ.get("PUBSUB_PROJECT_ID", "fashionstream-test")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - {"mem", "kafka", "gcp"})
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; choose from mem, kafka, gcp")
    if "gcp" in backends and not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("note: PUBSUB_EMULATOR_HOST is not set, so gcp runs against real Google Cloud Pub/Sub", file=sys.stderr)

    report: dict[str, Any] = {
        "benchmark": "pubsub throughput",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "config": {"count": args.count, "size": args.size, "repeat": args.repeat, "receive_batch": RECEIVE_BATCH},
        "brokers": {
            "kafka": kafka if "kafka" in backends else None,
            "pubsub": os.environ.get("PUBSUB_EMULATOR_HOST") if "gcp" in backends else None,
        },  # fmt: skip
        "results": {},
    }
    started = time.monotonic()
    for backend in backends:
        print(f"{backend}: {args.repeat} x {args.count:,} messages of {args.size} bytes", file=sys.stderr)
        report["results"][backend] = run_backend(backend, args.count, args.size, args.repeat, kafka, project)
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    print(table)
    if args.update_docs:
        command = (
            'scripts/services start && eval "$(scripts/services env)"\n.venv/bin/python bench/pubsub.py '
            + " ".join(a for a in sys.argv[1:])
        )
        update_docs(table, command.strip())
    print(f"results: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
