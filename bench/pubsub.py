"""Pub/sub cost and latency: `fashionstream.pubsub` against the raw client libraries, per backend.

    scripts/services start && eval "$(scripts/services env)"
    .venv/bin/python bench/pubsub.py                       # mem, kafka, gcp; ~3 minutes (--repeat 7: ~5)
    .venv/bin/python bench/pubsub.py --backends kafka --count 50000 --repeat 5
    .venv/bin/python bench/pubsub.py --update-docs         # also rewrite the table in docs/benchmarks.md

Throughput: for each backend, CPU per message and messages per second for 1 KB messages, sending
(until every message is confirmed) and receiving (every message acked), through this API on two
paths and through the raw client, in the same run:

- API, per message: `send()` and its future per message; `receive()` and `message.ack()` per message.
- API, batch: `send_batch()` of 1,000 messages, one future each; `receive_batch(100)` and one
  `subscriber.ack(batch)`.
- raw Kafka: confluent-kafka `Producer.produce` + `poll(0)` per message, one delivery callback
  (idempotent, acks=all, linger.ms=1, as the driver) / `Consumer.consume(100)` + `value()` + one
  asynchronous `commit` per batch (manual commits, as the driver).
- raw Pub/Sub: google-cloud-pubsub `PublisherClient.publish` futures (batches of 1,000, 5 ms
  latency) / `SubscriberClient.pull(100)` + `acknowledge` per batch. On Pub/Sub the API also receives
  with StreamingPull (`pull="streaming"`), for the choice between the two (docs/pubsub.md).
- mem: the embedded broker has no raw client; the API alone is reported.

The raw clients get the API's batch sizes (1,000 messages per publish batch, 100 per receive
call), so the difference is the cost of the layer, not of another configuration. Each measurement
runs `--repeat` times on fresh topics, the order of the sides rotating between rounds; medians are
reported. CPU is this process's CPU time (all threads) over the whole side: opening, sending or
receiving, closing; msg/s is timed from the first message to the last (so not a group join).

Latency: one publisher `send()`s 1 KB messages at a fixed low rate (`--latency-rate`, 100 msg/s on
Kafka and mem, half that on Pub/Sub) while a subscriber waits in `receive_batch` and acks; the time
from `send()` to the message coming out of `receive_batch` is recorded for every message (p50,
p99 over all rounds), with the process's CPU per message meanwhile. On Pub/Sub for both the polled
Pull (the default) and StreamingPull.

Output: bench/results/pubsub.json (machine, date, settings, every run, medians, ratios) and a
markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fashionstream.machine import describe_machine
from fashionstream.pubsub import (
    OutgoingMessage,
    Timeout,
    admin,
    open_subscription,
    open_topic,
    parse_broker,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "pubsub.json"
DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_START = "<!-- bench/pubsub.py: start -->"
DOCS_END = "<!-- bench/pubsub.py: end -->"
RECEIVE_BATCH = 100  # the API's default receive_batch_size, used for the raw clients too
PUBLISH_BATCH = 1000  # the API's default batch_size
RAW_KAFKA_PRODUCER = {"enable.idempotence": True, "acks": "all", "linger.ms": 1}  # the driver's settings
RECEIVE_DEADLINE_S = 300.0
SEND_PATHS = ("api", "api-batch", "raw")
RECEIVE_PATHS = ("api", "api-batch", "raw")
PATH_NAMES = {
    "api": "API, per message",
    "api-batch": "API, batch",
    "api-batch-streaming": "API, batch, StreamingPull",
    "raw": "raw client",
}


def _receive_rate(times: list[float], expected: int, what: str) -> float:
    """Messages/s from the first message to the last; fails loudly if messages went missing."""
    if len(times) < expected:
        raise RuntimeError(f"{what}: received only {len(times)} of {expected} messages")
    return (len(times) - 1) / max(times[-1] - times[0], 1e-9)


def _check_sent(futures: list[Any], what: str) -> None:
    """Every message's outcome, as a producer checks it after flush() (the raw side checks in its callback)."""
    failed = [f for f in futures if f.exception() is not None]
    if failed:
        raise RuntimeError(f"{what}: {len(failed)} sends failed, first: {failed[0].exception()}")


# ---------------------------------------------------------------- the API (any backend)


class ApiSide:
    """Sends and receives through fashionstream.pubsub on one topic + subscription, one path."""

    def __init__(self, topic_url: str, subscription_url: str, options: dict[str, object], batch: bool) -> None:
        self.topic_url, self.subscription_url = topic_url, subscription_url
        self.options, self.batch = options, batch

    def send(self, count: int, payload: bytes) -> float:
        with open_topic(self.topic_url) as pub:
            start = time.perf_counter()
            if self.batch:
                chunk = [OutgoingMessage(payload)] * PUBLISH_BATCH
                starts = range(0, count, PUBLISH_BATCH)
                futures = [pub.send_batch(chunk[: min(PUBLISH_BATCH, count - i)]) for i in starts]
            else:
                futures = [pub.send(payload) for _ in range(count)]
            pub.flush()
            elapsed = time.perf_counter() - start
        _check_sent(futures, "API send")
        return count / elapsed

    def receive(self, count: int, payload: bytes) -> float:
        times: list[float] = []
        deadline = time.monotonic() + RECEIVE_DEADLINE_S
        with open_subscription(self.subscription_url, **self.options) as sub:
            while len(times) < count and time.monotonic() < deadline:
                if self.batch:
                    batch = sub.receive_batch(RECEIVE_BATCH, timeout=1.0)
                    sub.ack(batch)
                    now = time.perf_counter()
                    times.extend(now for _ in batch)
                    continue
                try:
                    message = sub.receive(timeout=1.0)
                except Timeout:
                    continue
                message.ack()
                times.append(time.perf_counter())
        return _receive_rate(times, count, "API receive")


# ---------------------------------------------------------------- raw Kafka


class RawKafka:
    def __init__(self, servers: str, topic: str, group: str) -> None:
        self.servers, self.topic, self.group = servers, topic, group

    def send(self, count: int, payload: bytes) -> float:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.servers, **RAW_KAFKA_PRODUCER})
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


def _broker_url(backend: str, kafka: str, project: str) -> str:
    return {"mem": "mem://", "kafka": f"kafka://{kafka}", "gcp": f"gcppubsub://projects/{project}"}[backend]


def _fresh_pair(backend: str, kafka: str, project: str) -> tuple[str, str, str, str]:
    """(topic URL, subscription URL, short topic, short subscription), freshly created."""
    topic = f"bench-{uuid.uuid4().hex[:10]}"
    sub = f"{topic}-sub"
    broker = parse_broker(_broker_url(backend, kafka, project))
    topic_url, sub_url = broker.topic_url(topic), broker.subscription_url(topic, sub)
    admin.create_topic(topic_url)
    # Kafka groups need no creation (the admin call would only check the topic).
    if backend != "kafka":
        admin.create_subscription(sub_url, topic=topic, ack_deadline_s=60)
    return topic_url, sub_url, topic, sub


def _cleanup(backend: str, topic_url: str, sub_url: str) -> None:
    undo: list[Callable[[], None]] = [lambda: admin.delete_topic(topic_url)]
    if backend != "kafka":
        undo.insert(0, lambda: admin.delete_subscription(sub_url))
    for step in undo:
        try:
            step()
        except Exception as err:  # leftovers on a test broker are harmless; say so and go on
            print(f"  (cleanup of {backend} {topic_url}: {err})", file=sys.stderr)


def _sides(backend: str, kafka: str, project: str) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, str]]]:
    """Send sides and receive sides of one round, each on its own fresh topic; and what to clean up."""
    send_sides: dict[str, Any] = {}
    receive_sides: dict[str, Any] = {}
    created: list[tuple[str, str]] = []
    paths = [p for p in SEND_PATHS if backend != "mem" or p != "raw"]
    for path in paths:
        topic_url, sub_url, topic, sub = _fresh_pair(backend, kafka, project)
        created.append((topic_url, sub_url))
        if path == "raw":
            side: Any = (
                RawKafka(kafka, topic, sub)
                if backend == "kafka"
                else RawPubSub(f"projects/{project}/topics/{topic}", f"projects/{project}/subscriptions/{sub}")
            )
        else:
            side = ApiSide(topic_url, sub_url, {}, batch=path == "api-batch")
        send_sides[path] = side
        receive_sides[path] = side
    if backend == "gcp":
        # The same batch path receiving with StreamingPull, from messages the batch path sent.
        topic_url, sub_url, topic, _ = _fresh_pair(backend, kafka, project)
        created.append((topic_url, sub_url))
        send_sides["api-batch-for-streaming"] = ApiSide(topic_url, sub_url, {}, batch=True)
        receive_sides["api-batch-streaming"] = ApiSide(topic_url, sub_url, {"pull": "streaming"}, batch=True)
    return send_sides, receive_sides, created


def run_backend(backend: str, count: int, size: int, repeat: int, kafka: str, project: str) -> dict[str, Any]:
    payload = os.urandom(size)
    runs: dict[str, dict[str, dict[str, list[float]]]] = {"send": {}, "receive": {}}
    for round_ in range(repeat):
        send_sides, receive_sides, created = _sides(backend, kafka, project)
        try:
            for phase, sides in (("send", send_sides), ("receive", receive_sides)):
                order = list(sides.items())
                shift = round_ % len(order)  # rotate who goes first: warm-up and drift hit every side alike
                for path, side in order[shift:] + order[:shift]:
                    # CPU time of this process (all its threads) is what the client side costs; unlike
                    # msg/s it hardly depends on what else the shared machine is doing.
                    cpu_start = time.process_time()
                    rate = getattr(side, phase)(count, payload)
                    cpu_us = (time.process_time() - cpu_start) / count * 1e6
                    if path.endswith("-for-streaming"):
                        continue  # only sends the messages the StreamingPull side receives
                    entry = runs[phase].setdefault(path, {"rates": [], "cpu": []})
                    entry["rates"].append(rate)
                    entry["cpu"].append(cpu_us)
                    print(
                        f"  {backend:5s} {phase:7s} {path:20s}: {rate:10,.0f} msg/s {cpu_us:6.1f} us CPU/msg",
                        file=sys.stderr,
                    )
        finally:
            for topic_url, sub_url in created:
                _cleanup(backend, topic_url, sub_url)
    result: dict[str, Any] = {}
    for phase, paths in runs.items():
        entry_out: dict[str, Any] = {}
        for path, values in paths.items():
            entry_out[path] = {
                "rates": [round(v, 1) for v in values["rates"]],
                "median": round(statistics.median(values["rates"]), 1),
                "cpu_us_per_msg": [round(v, 2) for v in values["cpu"]],
                "cpu_us_per_msg_median": round(statistics.median(values["cpu"]), 2),
            }
        if "raw" in entry_out:
            raw_cpu = entry_out["raw"]["cpu_us_per_msg_median"]
            for path, entry in entry_out.items():
                if path != "raw":
                    # Per message, this API's CPU as a multiple of the raw client's: 1.2 = 20 % more.
                    entry["cpu_ratio_to_raw"] = round(entry["cpu_us_per_msg_median"] / raw_cpu, 2)
        result[phase] = entry_out
    return result


# ---------------------------------------------------------------- latency


def measure_latency(
    backend: str, kafka: str, project: str, rate: float, count: int, options: dict[str, object]
) -> tuple[list[float], float]:
    """Seconds from send() to receive_batch() for `count` messages sent at `rate`; and CPU µs per message."""
    topic_url, sub_url, _, _ = _fresh_pair(backend, kafka, project)
    latencies: list[float] = []
    stop = threading.Event()
    filler = b"\0" * 1016  # 1 KB with the 8-byte send time

    def consume(sub: Any) -> None:
        while not stop.is_set():
            batch = sub.receive_batch(RECEIVE_BATCH, timeout=0.5)
            now = time.perf_counter()
            latencies.extend(now - struct.unpack_from("d", m.data)[0] for m in batch)
            sub.ack(batch)

    try:
        with open_subscription(sub_url, **options) as sub, open_topic(topic_url) as pub:
            consumer = threading.Thread(target=consume, args=(sub,), daemon=True)
            consumer.start()
            # Warm up until the subscriber sees messages (a Kafka group join takes seconds).
            deadline = time.monotonic() + 60
            while not latencies and time.monotonic() < deadline:
                pub.send(struct.pack("d", time.perf_counter())).result(30)
                time.sleep(0.1)
            time.sleep(0.5)
            latencies.clear()
            cpu = time.process_time()
            start = time.perf_counter()
            for i in range(count):
                pause = start + i / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                pub.send(struct.pack("d", time.perf_counter()) + filler)
            deadline = time.monotonic() + 30
            while len(latencies) < count and time.monotonic() < deadline:
                time.sleep(0.01)
            cpu_us = (time.process_time() - cpu) / count * 1e6
            stop.set()
            consumer.join(5)
    finally:
        _cleanup(backend, topic_url, sub_url)
    if len(latencies) < count:
        raise RuntimeError(f"{backend} latency: received {len(latencies)} of {count} messages")
    return latencies, cpu_us


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_latency(backend: str, rate: float, count: int, repeat: int, kafka: str, project: str) -> dict[str, Any]:
    variants: dict[str, dict[str, object]] = {"default": {}}
    if backend == "gcp":
        variants = {"polling": {}, "streaming": {"pull": "streaming"}}
    samples: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(repeat):
        order = list(variants.items())
        if round_ % 2:
            order.reverse()
        for name, options in order:
            latencies, cpu_us = measure_latency(backend, kafka, project, rate, count, options)
            samples[name].extend(latencies)
            cpu[name].append(cpu_us)
            print(
                f"  {backend:5s} latency {name:10s}: p50 {_percentile(latencies, 0.5) * 1e3:6.1f} ms, "
                f"p99 {_percentile(latencies, 0.99) * 1e3:6.1f} ms, {cpu_us:7.0f} us CPU/msg",
                file=sys.stderr,
            )
    return {
        name: {
            "rate": rate,
            "messages": len(values),
            "p50_ms": round(_percentile(values, 0.5) * 1e3, 2),
            "p90_ms": round(_percentile(values, 0.9) * 1e3, 2),
            "p99_ms": round(_percentile(values, 0.99) * 1e3, 2),
            "max_ms": round(max(values) * 1e3, 2),
            "cpu_us_per_msg": [round(v, 1) for v in cpu[name]],
            "cpu_us_per_msg_median": round(statistics.median(cpu[name]), 1),
        }
        for name, values in samples.items()
    }


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
        "| backend | direction | path | msg/s | API CPU (µs/msg) | raw CPU (µs/msg) | API / raw CPU |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for backend, result in report["results"].items():
        for phase in ("send", "receive"):
            entries = result[phase]
            raw = entries.get("raw")
            for path, entry in entries.items():
                if path == "raw":
                    continue
                raw_cpu = f"{raw['cpu_us_per_msg_median']:.1f}" if raw else "n/a"
                ratio = f"{entry['cpu_ratio_to_raw']:.2f}" if "cpu_ratio_to_raw" in entry else "n/a"
                rows.append(
                    f"| {backend} | {phase} | {PATH_NAMES[path]} | {entry['median']:,.0f} "
                    f"| {entry['cpu_us_per_msg_median']:.1f} | {raw_cpu} | {ratio} |"
                )
            if raw:
                rows.append(
                    f"| {backend} | {phase} | raw client | {raw['median']:,.0f} | | "
                    f"{raw['cpu_us_per_msg_median']:.1f} | |"
                )
    config = report["config"]
    rows.append("")
    rows.append(
        f"{config['count']:,} messages of {config['size']} bytes per measurement, median of {config['repeat']} "
        f"runs; {report['machine'].get('cores')} CPUs ({report['machine'].get('cpu', '?')}), load average "
        f"{report['machine']['load_average_at_start']} at start, {report['machine']['load_average_at_end']} at "
        f"end; {report['date']}. CPU = this client process's CPU time per message (all threads, opening and "
        "closing included; not the broker's). API / raw CPU: 1.20 means 20 % more CPU per message than the raw "
        "client in the same run."
    )
    if report.get("latency"):
        rows += [
            "",
            "| backend | receiving | rate (msg/s) | p50 (ms) | p99 (ms) | max (ms) | CPU (µs/msg) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for backend, variants in report["latency"].items():
            for name, entry in variants.items():
                rows.append(
                    f"| {backend} | {name} | {entry['rate']:g} | {entry['p50_ms']:.1f} | {entry['p99_ms']:.1f} "
                    f"| {entry['max_ms']:.1f} | {entry['cpu_us_per_msg_median']:,.0f} |"
                )
        rows.append("")
        rows.append(
            f"Latency: time from `send()` to the message leaving `receive_batch()`, {config['latency_count']} "
            f"messages of 1 KB per run at the rate shown, {config['repeat']} runs pooled; CPU = the process's "
            "CPU time (publisher and subscriber) per message during the run."
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
    parser.add_argument("--count", type=int, default=20_000, help="messages per throughput measurement")
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument(
        "--latency-rate", type=float, default=100.0, help="msg/s of the latency runs (halved on Pub/Sub); 0: skip"
    )
    parser.add_argument("--latency-count", type=int, default=300, help="messages per latency run")
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
        "benchmark": "pubsub cost and latency",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "config": {
            "count": args.count,
            "size": args.size,
            "repeat": args.repeat,
            "receive_batch": RECEIVE_BATCH,
            "publish_batch": PUBLISH_BATCH,
            "latency_rate": args.latency_rate,
            "latency_count": args.latency_count,
        },
        "brokers": {
            "kafka": kafka if "kafka" in backends else None,
            "pubsub": os.environ.get("PUBSUB_EMULATOR_HOST") if "gcp" in backends else None,
        },  # fmt: skip
        "results": {},
        "latency": {},
    }
    started = time.monotonic()
    for backend in backends:
        print(f"{backend}: {args.repeat} x {args.count:,} messages of {args.size} bytes", file=sys.stderr)
        report["results"][backend] = run_backend(backend, args.count, args.size, args.repeat, kafka, project)
        if args.latency_rate > 0:
            rate = args.latency_rate / 2 if backend == "gcp" else args.latency_rate
            report["latency"][backend] = run_latency(backend, rate, args.latency_count, args.repeat, kafka, project)
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
