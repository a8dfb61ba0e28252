"""Where the CPU goes per Kafka message: the portable layer, the Kafka driver, librdkafka, split by thread.

    scripts/services start && eval "$(scripts/services env)"
    .venv/bin/python bench/pubsub_breakdown.py                 # 3 x 30,000 messages of 1 KB; ~1 minute
    .venv/bin/python bench/pubsub_breakdown.py --gc-off        # the same with the cyclic GC disabled

Companion to bench/pubsub.py, which gives the totals: this one says which part of the API's cost is
the caller's thread (`send()`, `receive_batch()`, `ack()`), the driver's calls (timed with
`time.thread_time()` inside a wrapping driver), the publisher's lane threads beyond the driver
(resolving futures) and the rest of the process (librdkafka's own threads, the subscriber's worker
loop). The raw confluent-kafka loops of bench/pubsub.py run in the same rounds for reference.
Prints medians in µs of CPU per message; the numbers quoted in docs/benchmarks.md come from here.
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

from fashionstream.pubsub import Publisher, Subscriber, admin, parse_broker
from fashionstream.pubsub.drivers import kafka
from fashionstream.pubsub.urls import parse_url
from pubsub import RawKafka  # bench/pubsub.py, next to this file


class TimedDriver:
    """Forwards to a driver, adding up the calling thread's CPU time per method."""

    def __init__(self, driver: Any, timed: tuple[str, ...]) -> None:
        self._driver = driver
        self.cpu: dict[str, float] = dict.fromkeys(timed, 0.0)
        for name in timed:
            setattr(self, name, self._timed(name, getattr(driver, name)))

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            start = time.thread_time()
            try:
                return method(*args)
            finally:
                self.cpu[name] += time.thread_time() - start

        return call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)


def lane_cpu() -> float:
    """CPU seconds of the publisher's lane threads so far (they are named pubsub-send-N)."""
    return sum(
        time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        for t in threading.enumerate()
        if t.name.startswith("pubsub-send") and t.ident is not None
    )


def one_round(servers: str, count: int, payload: bytes, rows: dict[str, list[float]]) -> None:
    def add(name: str, seconds: float) -> None:
        rows.setdefault(name, []).append(seconds / count * 1e6)

    broker = parse_broker(f"kafka://{servers}")
    topic = f"breakdown-{uuid.uuid4().hex[:10]}"
    url = broker.topic_url(topic)
    admin.create_topic(url)
    try:
        driver = TimedDriver(kafka.open_topic_driver(parse_url(url), {}), ("send_batch",))
        pub = Publisher(driver)  # type: ignore[arg-type]
        process, caller = time.process_time(), time.thread_time()
        futures = [pub.send(payload) for _ in range(count)]
        pub.flush()
        caller, process = time.thread_time() - caller, time.process_time() - process
        lanes = lane_cpu()
        pub.close()
        del futures
        add("send: caller's thread (send() x N, flush)", caller)
        add("send: driver send_batch", driver.cpu["send_batch"])
        add("send: lane threads beyond the driver (resolving futures)", lanes - driver.cpu["send_batch"])
        add("send: rest (librdkafka threads)", process - caller - lanes)
        add("send: whole process", process)

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
            for name in sub_driver.cpu:
                sub_driver.cpu[name] = 0.0
            measured = count - received
            process, caller = time.process_time(), time.thread_time()
            while received < count:
                batch = sub.receive_batch(100, timeout=10)
                for message in batch:
                    message.ack()
                received += len(batch)
            caller, process = time.thread_time() - caller, time.process_time() - process
        scale = count / measured
        driver_cpu = sub_driver.cpu["receive_batch"] + sub_driver.cpu["send_acks"]
        add("receive: caller's thread (receive_batch, Message, ack)", caller * scale)
        add("receive: driver receive_batch + send_acks", driver_cpu * scale)
        add("receive: rest (worker loop, librdkafka threads)", (process - caller - driver_cpu) * scale)
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
        print(f"  {name:58s} {statistics.median(values):6.2f}   ({runs})")


if __name__ == "__main__":
    main()
