"""The backlog gauges every broker gets: `fashionstream_backlog_age_seconds` and `..._estimate_messages`.

Unit tests drive `BacklogAge` and the estimate's rate with hand-set clocks. The real-broker test
runs `fashionstream serve` on Kafka and on the Pub/Sub emulator, stops it with SIGSTOP while
3,000 requests (real Fashion-MNIST images) are published, lets it go, and reads /metrics every
50 ms: while the backlog drains the age must be over 2 s and the estimate above 0, and both must
be 0 once every request has been acked.

Set FASHIONSTREAM_BACKLOG_RESULT=path.json to keep the figures (one JSON line per broker).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from fashionstream.pipeline.metrics import BacklogAge, ServiceMetrics, _BacklogAgeCollector
from fashionstream.pipeline.producer import encode, labelled_test_images
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import open_topic
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name
from topologies import delete_topology, unique_topology

REQUESTS = 3000
STOPPED_S = 3.0


class Stamped:
    """A received message as far as the backlog gauges look at it."""

    def __init__(self, posix: float | None) -> None:
        self.publish_time = None if posix is None else datetime.fromtimestamp(posix, tz=UTC)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------------- unit


def test_age_is_the_first_messages_wait_and_0_once_a_waiting_receive_is_empty() -> None:
    clock = Clock()
    age = BacklogAge(hold_s=2.0, clock=clock)
    assert age.seconds() == 0
    age.received([Stamped(clock.now - 5.0), Stamped(clock.now - 1.0)], waited=True)
    assert age.seconds() == pytest.approx(5.0)
    # A receive that did not wait (an open batch) proves nothing: the figure is held.
    age.received([], waited=False)
    assert age.seconds() == pytest.approx(5.0)
    age.received([], waited=True)
    assert age.seconds() == 0


def test_age_is_the_largest_of_the_last_two_windows() -> None:
    clock = Clock()
    age = BacklogAge(hold_s=2.0, clock=clock)
    age.received([Stamped(clock.now - 10.0)], waited=True)  # a partition far behind
    clock.now += 0.5
    age.received([Stamped(clock.now - 0.01)], waited=False)  # one that is not
    assert age.seconds() == pytest.approx(10.0)
    clock.now += 2.0  # a new window: the last one is still held
    age.received([Stamped(clock.now - 0.01)], waited=False)
    assert age.seconds() == pytest.approx(10.0)
    clock.now += 2.0  # and one more: only recent batches count
    age.received([Stamped(clock.now - 0.02)], waited=False)
    assert age.seconds() == pytest.approx(0.02)
    clock.now += 10.0  # after a long gap the old window is dropped at once
    age.received([Stamped(clock.now - 0.03)], waited=False)
    assert age.seconds() == pytest.approx(0.03)


def test_age_ignores_unknown_publish_times_and_reads_skew_as_0() -> None:
    clock = Clock()
    age = BacklogAge(clock=clock)
    age.received([Stamped(None)], waited=True)
    assert age.seconds() == 0
    age.received([Stamped(clock.now + 3.0)], waited=True)  # a producer clock ahead of ours
    assert age.seconds() == 0


def test_estimate_is_age_times_the_weighted_ack_rate() -> None:
    wall, mono = Clock(), Clock(0.0)
    age = BacklogAge(clock=wall)
    acked = Counter("acked", "acked", registry=CollectorRegistry())
    collector = _BacklogAgeCollector(age, acked, window_s=30.0, clock=mono)

    def sample() -> dict[str, float]:
        return {family.name: family.samples[0].value for family in collector.collect()}

    assert sample() == {"fashionstream_backlog_age_seconds": 0, "fashionstream_backlog_estimate_messages": 0}
    # 100 acks a second for 60 s, scraped at irregular intervals: the rate is 100/s however often it is read.
    for step in [0.05, 15.0, 1.0, 0.2, 13.75, 30.0]:
        mono.now += step
        acked.inc(100 * step)
        assert collector.ack_rate() == pytest.approx(100.0)
    age.received([Stamped(wall.now - 4.0)], waited=True)
    assert sample() == pytest.approx(
        {"fashionstream_backlog_age_seconds": 4.0, "fashionstream_backlog_estimate_messages": 400.0}
    )
    # Acks stop: the rate falls with a 30 s time constant (averaged over the 90 s since the start).
    mono.now += 30.0
    assert collector.ack_rate() == pytest.approx(100.0 * (math.exp(-1) - math.exp(-3)) / (1 - math.exp(-3)))
    age.received([], waited=True)
    assert sample() == {"fashionstream_backlog_age_seconds": 0, "fashionstream_backlog_estimate_messages": 0}


def test_service_metrics_export_both_gauges_from_the_start() -> None:
    metrics = ServiceMetrics()
    assert metrics.registry.get_sample_value("fashionstream_backlog_age_seconds") == 0
    assert metrics.registry.get_sample_value("fashionstream_backlog_estimate_messages") == 0


# ----------------------------------------------------------------------------- real brokers


@pytest.fixture
def topology(external_backend: Any, unique_name: Any) -> Iterator[Topology]:
    made = unique_topology(external_backend.broker_url, unique_name)
    # Two partitions on Kafka, so the age covers batches from partitions behind by different amounts.
    made.create(partitions=2, subscriptions=((made.images, made.service_subscription),), ack_deadline_s=30)
    yield made
    delete_topology(made)


def scrape(service: ServiceProcess) -> dict[str, float]:
    _, text = service.get("/metrics")
    wanted = (
        "fashionstream_backlog_age_seconds",
        "fashionstream_backlog_estimate_messages",
        "fashionstream_acked_total",
    )
    return {
        name: float(line.split()[-1]) for line in text.splitlines() for name in wanted if line.startswith(name + " ")
    }


@pytest.mark.slow
@pytest.mark.usefixtures("no_orphans")
def test_backlog_age_and_estimate_rise_while_a_backlog_drains_and_fall_to_0(
    external_backend: Any, topology: Topology, tmp_path: Path
) -> None:
    service = ServiceProcess(topology, external_backend.subscriber_options, tmp_path / "serve.log")
    service.wait_healthy()
    # Kafka: the group must own its partitions before the flood, or the first receives wait for that.
    time.sleep(3.0 if external_backend.name == "kafka" else 0.5)
    assert scrape(service)["fashionstream_backlog_age_seconds"] == 0
    encoded = [encode(image, topology.flavour, "cloudevents") for image in labelled_test_images(REQUESTS)]

    with open_topic(topology.topic(topology.images)) as publisher:
        service.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            for start in range(0, REQUESTS, 500):
                chunk = encoded[start : start + 500]
                publisher.send_batch([(e.data, e.attributes, e.key) for e in chunk]).result(timeout=60)
            published_s = time.monotonic() - stopped
            time.sleep(max(0.0, STOPPED_S - published_s))
        finally:
            service.proc.send_signal(signal.SIGCONT)
    resumed = time.monotonic()

    samples: list[tuple[float, dict[str, float]]] = []
    done_at: float | None = None
    deadline = resumed + 120
    while time.monotonic() < deadline:
        sample = scrape(service)
        now = time.monotonic()
        samples.append((now - resumed, sample))
        if done_at is None and sample["fashionstream_acked_total"] >= REQUESTS:
            done_at = now
        if done_at is not None and now - done_at > 2.0:
            break
        time.sleep(0.05)
    logs = service.logs()
    assert service.stop() == 0, logs
    assert done_at is not None, f"acked {samples[-1][1]['fashionstream_acked_total']} of {REQUESTS}:\n{logs}"

    draining = [s for _, s in samples if s["fashionstream_acked_total"] < REQUESTS]
    peak_age = max(s["fashionstream_backlog_age_seconds"] for _, s in samples)
    peak_estimate = max(s["fashionstream_backlog_estimate_messages"] for _, s in samples)
    # The first sample after every request was acked at which both gauges read 0.
    settled = next(
        (
            t
            for t, s in samples
            if s["fashionstream_acked_total"] >= REQUESTS
            and s["fashionstream_backlog_age_seconds"] == 0
            and s["fashionstream_backlog_estimate_messages"] == 0
        ),
        None,
    )
    figures = {
        "broker": external_backend.name,
        "requests": REQUESTS,
        "stopped_s": round(resumed - stopped, 2),
        "published_s": round(published_s, 2),
        "drained_s": round(done_at - resumed, 2),
        "peak_age_s": round(peak_age, 2),
        "peak_estimate": round(peak_estimate),
        "draining_samples": len(draining),
        "zero_after_drain_s": None if settled is None else round(settled - (done_at - resumed), 2),
        "end": samples[-1][1],
    }
    print(json.dumps(figures))
    if out := os.environ.get("FASHIONSTREAM_BACKLOG_RESULT"):
        with open(out, "a") as results:
            results.write(json.dumps(figures) + "\n")
    assert draining, "no sample while the backlog drained"
    assert max(s["fashionstream_backlog_age_seconds"] for s in draining) > 2.0, figures
    assert max(s["fashionstream_backlog_estimate_messages"] for s in draining) > 0, figures
    end = samples[-1][1]
    assert end["fashionstream_backlog_age_seconds"] == 0, figures
    assert end["fashionstream_backlog_estimate_messages"] == 0, figures
    assert settled is not None, figures


def test_metrics_endpoint_returns_only_the_series_asked_for_by_name() -> None:
    """`/metrics?name[]=...` (Prometheus' client convention): a poller of one counter gets that counter only."""
    import urllib.request

    from fashionstream.pipeline.metrics import Health, MetricsServer

    metrics = ServiceMetrics()
    metrics.acked.inc(7)
    server = MetricsServer(metrics.registry, Health(), "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(base + "?name[]=fashionstream_acked_total", timeout=10) as response:
            chosen = response.read().decode()
        with urllib.request.urlopen(base, timeout=10) as response:
            everything = response.read().decode()
    finally:
        server.close()
    samples = [line for line in chosen.splitlines() if not line.startswith("#")]
    assert samples == ["fashionstream_acked_total 7.0"]
    assert "fashionstream_messages_in_total" in everything and "process_cpu_seconds_total" in everything
