"""Where the CPU goes per Kafka message: the portable layer, the Kafka driver, librdkafka, split by thread.

    scripts/services start && eval "$(scripts/services env)"
    .venv/bin/python bench/pubsub_breakdown.py                 # 3 x 30,000 messages of 1 KB; ~1 minute
    .venv/bin/python bench/pubsub_breakdown.py --gc-off        # the same with the cyclic GC disabled

Companion to bench/pubsub.py, which gives the totals: this one says which part of the API's cost is
the caller's thread (`send()` / `send_batch()`, `receive_batch()`, `ack()`), the driver's calls
(timed with `time.thread_time()` inside a wrapping driver, per calling thread), the thread that
runs the Kafka delivery callbacks, the publisher's lane threads beyond the driver (resolving
futures) and the rest of the process (librdkafka's own threads, the subscriber's worker). Receiving
fetches on the caller's thread, so the driver's receive time is taken out of the caller's. The raw
confluent-kafka loops of bench/pubsub.py run in the same rounds for reference. Prints medians in µs
of CPU per message; the numbers quoted in docs/benchmarks.md come from here.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from fashionstream.pubsub import OutgoingMessage, Publisher, Subscriber, admin, parse_broker
from fashionstream.pubsub.drivers import kafka
from fashionstream.pubsub.urls import parse_url
from pubsub import RawKafka  # bench/pubsub.py, next to this file


class TimedDriver:
    """Forwards to a driver, adding up the calling thread's CPU time per method, and per thread."""

    def __init__(self, driver: Any, timed: tuple[str, ...]) -> None:
        self._driver = driver
        self.cpu: dict[str, float] = dict.fromkeys(timed, 0.0)
        self.by_thread: dict[str, float] = {}
        for name in timed:
            setattr(self, name, self._timed(name, getattr(driver, name)))

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            start = time.thread_time()
            try:
                return method(*args)
            finally:
                spent = time.thread_time() - start
                self.cpu[name] += spent
                thread = threading.current_thread().name
                self.by_thread[thread] = self.by_thread.get(thread, 0.0) + spent

        return call

    def reset(self) -> None:
        for name in self.cpu:
            self.cpu[name] = 0.0
        self.by_thread.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)


def thread_cpu(prefix: str) -> float:
    """CPU seconds so far of the live threads whose name starts with `prefix`."""
    return sum(
        time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        for t in threading.enumerate()
        if t.name.startswith(prefix) and t.ident is not None
    )


def one_round(servers: str, count: int, payload: bytes, rows: dict[str, list[float]]) -> None:
    def add(name: str, seconds: float) -> None:
        rows.setdefault(name, []).append(seconds / count * 1e6)

    broker = parse_broker(f"kafka://{servers}")
    topic = f"breakdown-{uuid.uuid4().hex[:10]}"
    url = broker.topic_url(topic)
    admin.create_topic(url)
    try:
        for path in ("send", "send_batch"):
            driver = TimedDriver(kafka.open_topic_driver(parse_url(url), {}), ("send_batch",))
            pub = Publisher(driver)  # type: ignore[arg-type]
            pub.send(b"warm-up").result()
            driver.reset()
            lanes, reports = thread_cpu("pubsub-send"), thread_cpu("kafka-delivery-reports")
            process, caller = time.process_time(), time.thread_time()
            if path == "send":
                futures = [pub.send(payload) for _ in range(count)]
            else:
                chunk = [OutgoingMessage(payload)] * 1000
                futures = [pub.send_batch(chunk) for _ in range(count // 1000)]
            pub.flush()
            assert all(f.exception() is None for f in futures)
            caller, process = time.thread_time() - caller, time.process_time() - process
            lanes, reports = thread_cpu("pubsub-send") - lanes, thread_cpu("kafka-delivery-reports") - reports
            pub.close()
            del futures
            add(f"{path}: caller's thread ({path}() x N, flush, checking futures)", caller)
            add(f"{path}: driver send_batch (produce, a callback per message)", driver.cpu["send_batch"])
            add(f"{path}: delivery callbacks (the reporting thread)", reports)
            add(f"{path}: lane threads beyond the driver (resolving futures)", lanes - driver.cpu["send_batch"])
            add(f"{path}: rest (librdkafka threads)", process - caller - lanes - reports)
            add(f"{path}: whole process", process)

        options = {"auto.offset.reset": "earliest"}
        sub_driver = TimedDriver(
            kafka.open_subscription_driver(parse_url(broker.subscription_url(topic, topic)), options),
            ("receive_batch", "send_acks"),
        )
        with Subscriber(sub_driver, native_ack_deadlines=False) as sub:  # type: ignore[arg-type]
            received = 0
            while received == 0:  # the group join is not timed
                batch = sub.receive_batch(100, timeout=60)
                for message in batch:
                    message.ack()
                received += len(batch)
            sub_driver.reset()
            measured = count - received
            process, caller = time.process_time(), time.thread_time()
            while received < count:
                batch = sub.receive_batch(100, timeout=10)
                sub.ack(batch)
                received += len(batch)
            caller, process = time.thread_time() - caller, time.process_time() - process
        scale = count / measured
        driver_cpu = sub_driver.cpu["receive_batch"] + sub_driver.cpu["send_acks"]
        beyond = caller - sub_driver.by_thread.get(threading.current_thread().name, 0.0)
        add("receive: caller's thread beyond the driver (receive_batch, Message, ack)", beyond * scale)
        add("receive: driver receive_batch + send_acks (any thread)", driver_cpu * scale)
        add("receive: rest (worker, librdkafka threads)", (process - beyond - driver_cpu) * scale)
        add("receive: whole process", process * scale)
    finally:
        admin.delete_topic(url)

    raw_topic = f"breakdown-raw-{uuid.uuid4().hex[:10]}"
    raw_url = broker.topic_url(raw_topic)
    admin.create_topic(raw_url)
    try:
        raw = RawKafka(servers, raw_topic, raw_topic)
        process = time.process_time()
        raw.send(count, payload)
        add("raw send: whole process", time.process_time() - process)
        process = time.process_time()
        raw.receive(count, payload)
        add("raw receive: whole process (group join included)", time.process_time() - process)
    finally:
        admin.delete_topic(raw_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=30_000, help="messages per round")
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median is printed")
    parser.add_argument("--gc-off", action="store_true", help="disable the cyclic garbage collector")
    args = parser.parse_args()
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    if args.gc_off:
        gc.disable()
    payload = os.urandom(args.size)
    rows: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        one_round(servers, args.count, payload, rows)
    print(f"µs of CPU per message, median of {args.repeat} x {args.count:,} (GC {'off' if args.gc_off else 'on'})")
    for name, values in rows.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:72s} {statistics.median(values):6.2f}   ({runs})")


if __name__ == "__main__":
    main()
