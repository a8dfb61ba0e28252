"""Prometheus metrics and the small HTTP server for `/metrics` and `/healthz`.

Each service instance owns its own `CollectorRegistry`, so several services
(tests, the demo) can live in one process without clashing on metric names.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fashionstream.reasons import Reason

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# The backlog age is the largest seen over the last 1-2 windows of this length (see `BacklogAge`).
_BACKLOG_HOLD_S = 2.0
# Time constant of the exponentially weighted rate of acked requests behind the backlog estimate.
_ACK_RATE_WINDOW_S = 30.0
# Labels of fashionstream_model_info besides `model` (the id predictions carry): what a handler's
# `model_info` reports, from the model card. A handler that cannot say one leaves it empty.
MODEL_INFO_FIELDS = ("name", "created_utc", "test_accuracy", "params", "macs", "quantization")
# An action of the HTTP server's POST routes: (HTTP status, JSON document to answer with).
Action = Callable[[], tuple[int, dict[str, Any]]]


@dataclass
class ServiceStats:
    """A service's counts at one moment, read from its Prometheus counters (counted there only)."""

    received: int = 0
    predicted: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    nacked: int = 0
    duplicates: int = 0
    redelivered: int = 0


class ServiceMetrics:
    """The model service's counters and histograms: the one count of everything the service does."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_in = Counter("fashionstream_messages_in", "Requests received from the images topic", registry=r)
        self.messages_out = Counter("fashionstream_predictions_out", "Predictions confirmed by the broker", registry=r)
        self.dead_lettered = Counter(
            "fashionstream_dead_lettered", "Requests sent to the dead-letter topic", ["reason"], registry=r
        )
        self.acked = Counter(
            "fashionstream_acked", "Requests acknowledged after their answer was confirmed", registry=r
        )
        self.nacked = Counter(
            "fashionstream_nacked", "Requests handed back for redelivery because publishing failed", registry=r
        )
        self.duplicates = Counter(
            "fashionstream_duplicates",
            "Requests whose id this instance had already answered (redelivery after a crash or a re-send)",
            registry=r,
        )
        self.redelivered = Counter(
            "fashionstream_redelivered",
            "Requests delivered again after a failed attempt (nacked, or unacked past the ack deadline), as far as "
            "the broker (Pub/Sub: delivery_attempt) or this process (Kafka) knows",
            registry=r,
        )
        self.batch_size = Histogram(
            "fashionstream_batch_size", "Images per model call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "fashionstream_inference_seconds", "Model time per batch", buckets=_INFERENCE_BUCKETS, registry=r
        )
        self.latency_seconds = Histogram(
            "fashionstream_end_to_end_latency_seconds",
            "From the request's CloudEvents time to its prediction being confirmed",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("fashionstream_in_flight", "Requests received but not yet acked", registry=r)
        self.model_info = Gauge(
            "fashionstream_model_info",
            "The model answering now (value 1), with facts from its card",
            ["model", *MODEL_INFO_FIELDS],
            registry=r,
        )
        self.model_reloads = Counter(
            "fashionstream_model_reloads",
            "Attempts to replace the model while serving, by result (swapped, unchanged, refused)",
            ["result"],
            registry=r,
        )
        # How far behind the service is, on every broker: the loop reports each receive to
        # `backlog_age`; both gauges are computed when Prometheus scrapes.
        self.backlog_age = BacklogAge()
        r.register(_BacklogAgeCollector(self.backlog_age, self.acked))
        # Every series exists from the start, at 0: a rate() or an alert over them needs a first sample
        # before the first failure, and a dashboard shows 0 rather than "no data".
        for reason in Reason:
            self.dead_lettered.labels(reason=str(reason))
        for result in ("swapped", "unchanged", "refused"):
            self.model_reloads.labels(result=result)
        # The standard process (CPU, memory, open files), platform (Python version) and GC collectors,
        # on this registry, since the service does not use the global one.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)

    def set_model(self, model_id: str, info: Mapping[str, str]) -> None:
        """Show `model_id` as the one model answering now (the previous one's series is removed)."""
        self.model_info.clear()
        self.model_info.labels(model_id, *(info.get(name, "") for name in MODEL_INFO_FIELDS)).set(1)

    def watch_backlog(self, backlog: Callable[[], Mapping[str, int] | None]) -> None:
        """Export `backlog()` (messages waiting in the broker, by partition) at every scrape."""
        self.registry.register(_BacklogCollector(backlog))

    def stats(self) -> ServiceStats:
        """The counters as plain numbers (for summaries and tests)."""

        def count(name: str) -> int:
            return int(self.registry.get_sample_value(name) or 0)

        return ServiceStats(
            received=count("fashionstream_messages_in_total"),
            predicted=count("fashionstream_predictions_out_total"),
            dead_lettered=self.dead_letter_counts(),
            acked=count("fashionstream_acked_total"),
            nacked=count("fashionstream_nacked_total"),
            duplicates=count("fashionstream_duplicates_total"),
            redelivered=count("fashionstream_redelivered_total"),
        )

    def dead_letter_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for metric in self.dead_lettered.collect():
            for sample in metric.samples:
                # Every reason's series exists from the start; only those that happened are counts.
                if sample.name.endswith("_total") and sample.value > 0:
                    counts[sample.labels["reason"]] = int(sample.value)
        return counts


class _BacklogCollector(Collector):
    """fashionstream_consumer_lag_messages, asked of the subscriber when Prometheus scrapes.

    Asked at scrape time rather than kept up to date by the loop: the figure is as fresh as the
    scrape, and the serving loop does no extra work for it.
    """

    def __init__(self, backlog: Callable[[], Mapping[str, int] | None]) -> None:
        self._backlog = backlog

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "fashionstream_consumer_lag_messages",
            "Messages of the images topic not yet done by this instance's consumer group: the partition's high "
            "watermark minus its committed offset, for each partition assigned here (Kafka only)",
            labels=["partition"],
        )
        try:
            lag = self._backlog()
        except Exception as error:  # noqa: BLE001 - a scrape during shutdown or a broker hiccup: no sample
            log.debug("consumer lag unavailable: %s", error)
            lag = None
        for partition, value in sorted((lag or {}).items()):
            family.add_metric([partition], value)
        yield family


class BacklogAge:
    """How long the requests the service receives had waited in the broker: its backlog, in seconds.

    No broker API tells a subscriber how many messages wait on a Pub/Sub subscription, but every
    message says when it was published (Pub/Sub's publish time, Kafka's record timestamp), and the
    age of what arrives now is how far behind the service is (Google's own backlog signal is the
    age of the oldest unacked message). The loop calls `received` after every receive; it looks at
    one timestamp per receive, the first message's (the subscriber hands messages out in the
    order they arrived), so a batch costs one clock read and a comparison, never work per message
    (about 2 µs a receive; taking the oldest of a batch of 32 would cost about 33 µs, 1 µs a message).

    A batch's age is held: the figure is the largest of the current window of `hold_s` seconds and
    the window before, so consecutive batches from partitions that are behind by different amounts
    read as the worst of them rather than whichever came last. A receive that waited for input and
    came back empty means nothing waits: the age is 0 from then on. A receive that did not wait
    (the service had an open batch to classify) proves nothing and changes nothing.

    The age is the service's clock minus the broker's (Pub/Sub) or the producer's (Kafka's
    CreateTime) timestamp, so clock skew adds to it; a negative age reads as 0.
    """

    def __init__(self, hold_s: float = _BACKLOG_HOLD_S, clock: Callable[[], float] = time.time) -> None:
        self.hold_s = hold_s
        self._clock = clock
        # Written by the serving loop only; a scrape reads them (plain float attributes: atomic).
        self._current = 0.0  # the largest age received in the open window
        self._previous = 0.0  # the largest age of the window before it
        self._window_end = 0.0

    def received(self, messages: Sequence[Any], waited: bool) -> None:
        """Note one receive's result (`waited`: it was allowed to wait for input). Called once per receive."""
        if not messages:
            if waited:
                self._current = self._previous = 0.0
            return
        stamp = getattr(messages[0], "publish_time", None)
        if stamp is None:  # a broker that does not say: no figure from this batch
            return
        now = self._clock()
        age = now - stamp.timestamp()
        if now >= self._window_end:
            # A new window; the one that closed is kept for one more window, unless it ended long ago.
            self._previous = self._current if now < self._window_end + self.hold_s else 0.0
            self._current = age
            self._window_end = now + self.hold_s
        elif age > self._current:
            self._current = age

    def seconds(self) -> float:
        """The backlog age to report now (0 once nothing waits)."""
        return max(0.0, self._current, self._previous)


def _counter_total(counter: Counter) -> float:
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                return float(sample.value)
    return 0.0


class _BacklogAgeCollector(Collector):
    """fashionstream_backlog_age_seconds and fashionstream_backlog_estimate_messages, at scrape time.

    The estimate is the age times the recent rate of acked requests: the requests that arrived in
    the time the service is behind by, assuming they arrived about as fast as the service has been
    answering. The rate is an exponentially weighted average with a time constant of `window_s`,
    updated from the acked counter at each scrape (weighted by the time between scrapes, so any
    scrape interval gives the same average), and counted from the service's start rather than from
    an assumed 0 before it.
    """

    def __init__(
        self,
        age: BacklogAge,
        acked: Counter,
        window_s: float = _ACK_RATE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._age = age
        self._acked = acked
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()  # scrapes come on the HTTP server's threads
        self._last = clock()
        self._count = _counter_total(acked)
        self._weighted = 0.0  # the weighted sum of rates
        self._weight = 0.0  # the sum of their weights: 1 - exp(-time since start / window_s)

    def ack_rate(self) -> float:
        """Requests acked per second, averaged over about `window_s` seconds."""
        with self._lock:
            now, count = self._clock(), _counter_total(self._acked)
            elapsed = now - self._last
            if elapsed > 0:
                keep = math.exp(-elapsed / self._window_s)
                self._weighted = self._weighted * keep + (count - self._count) / elapsed * (1 - keep)
                self._weight = self._weight * keep + (1 - keep)
                self._last, self._count = now, count
            return self._weighted / self._weight if self._weight > 0 else 0.0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = self._age.seconds()
        rate = self.ack_rate()
        yield GaugeMetricFamily(
            "fashionstream_backlog_age_seconds",
            "How long the requests received last had waited in the broker (receive time minus publish time, "
            "the largest over the last 2-4 s); 0 once a receive finds nothing waiting. Any broker",
            value=age,
        )
        yield GaugeMetricFamily(
            "fashionstream_backlog_estimate_messages",
            "Estimated requests waiting: fashionstream_backlog_age_seconds times the rate of acked requests "
            "(exponentially weighted, 30 s). An estimate from timestamps, not a count; Kafka's exact figure "
            "is fashionstream_consumer_lag_messages. Any broker",
            value=age * rate,
        )


class Health:
    """What the probes report: liveness (/livez, also /healthz) and readiness (/readyz).

    Ready: started, not stopping, and nothing known to be wrong. The service names each problem
    (`problem("receive", ...)`: the broker refuses to deliver; "publish": an answer could not be
    published; "topics": a topic is missing) and clears it when the trouble is over; while any is
    set, a load balancer or an autoscaler should not count on this replica.

    Alive: the receive loop keeps turning (`beat`) and the service makes progress. Progress is an
    answer confirmed by the broker, or an idle turn (no input, nothing in hand) while nothing is
    wrong. So a service with input waiting, or with a problem, that confirms nothing for
    `stall_after_s` seconds is reported dead, and its orchestrator restarts it; an idle healthy
    service is never. A restart is the right cure for what the service cannot see (a client stuck
    on a vanished cluster); `stall_after_s` 0 turns the check off.
    """

    def __init__(self, stale_after_s: float = 30.0, stall_after_s: float = 0.0) -> None:
        self.stale_after_s = stale_after_s
        self.stall_after_s = stall_after_s
        self.started = False
        self.stopping = False
        now = time.monotonic()
        self._last_beat = now
        self._last_progress = now
        # Written from the loop, the publisher's callback threads and the topic check: a dict
        # assignment or deletion is atomic, and readers copy it first.
        self._problems: dict[str, str] = {}
        self.detail: dict[str, Any] = {}

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def problem(self, name: str, detail: str) -> None:
        """Record what keeps the service from receiving or answering (one entry per kind)."""
        self._problems[name] = detail[:300]

    def resolved(self, name: str) -> None:
        self._problems.pop(name, None)

    def problems(self) -> dict[str, str]:
        return dict(self._problems)

    def progress(self) -> None:
        """An answer was confirmed: the service is getting work done."""
        self._last_progress = time.monotonic()

    def idle(self) -> None:
        """A turn found no input and nothing in hand: progress, as long as nothing is known to be wrong."""
        if not self._problems:
            self._last_progress = time.monotonic()

    def status(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: (alive, the JSON document the probe answers with)."""
        now = time.monotonic()
        age = now - self._last_beat
        stalled_s = now - self._last_progress
        stalled = self.stall_after_s > 0 and stalled_s >= self.stall_after_s
        ok = self.started and age < self.stale_after_s and not stalled
        if self.stopping:
            state = "stopping"
        elif not self.started:
            state = "starting"
        else:
            state = "ok" if ok else "stalled"
        doc = {"status": state, "last_loop_s": round(age, 3), "no_progress_s": round(stalled_s, 3)}
        return ok, {**doc, "problems": self.problems(), **self.detail}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: (ready, the JSON document the probe answers with)."""
        problems = self.problems()
        ready = self.started and not self.stopping and not problems
        if self.stopping:
            state = "stopping"
        elif not self.started:
            state = "starting"
        else:
            state = "ready" if ready else "not ready"
        return ready, {"status": state, "problems": problems, **self.detail}


class MetricsServer:
    """Serves `/metrics` (Prometheus text format; `?name[]=` picks series), `/livez` = `/healthz` and
    `/readyz` (JSON; 200 yes, 503 no; see `Health`) on a thread.

    `actions` are POST routes (path -> action), e.g. the model reload; each answers with JSON.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Health,
        host: str = "0.0.0.0",
        port: int = 0,
        actions: Mapping[str, Action] | None = None,
    ) -> None:
        registry_ref, health_ref, actions_ref = registry, health, dict(actions or {})

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                action = actions_ref.get(path)
                if action is None:
                    code, doc = 404, {"error": f"no POST route {path}; routes: {sorted(actions_ref)}"}
                else:
                    code, doc = action()
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path, _, query = self.path.partition("?")
                if path == "/metrics":
                    # `?name[]=a&name[]=b` returns only those series, as Prometheus' own client does: a
                    # watcher polling one counter often then does not pay for reading /proc each time.
                    names = parse_qs(query).get("name[]")
                    chosen = registry_ref.restricted_registry(names) if names else registry_ref
                    body, ctype, code = generate_latest(chosen), CONTENT_TYPE_LATEST, 200
                elif path in ("/healthz", "/livez", "/readyz"):
                    ok, doc = health_ref.readiness() if path == "/readyz" else health_ref.status()
                    body, ctype, code = json.dumps(doc).encode(), "application/json", 200 if ok else 503
                else:
                    body, ctype, code = b"not found; try /metrics or /healthz\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not worth a log line
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
