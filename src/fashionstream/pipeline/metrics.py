"""Prometheus metrics and the small HTTP server for `/metrics` and `/healthz`.

Each service instance owns its own `CollectorRegistry`, so several services
(tests, the demo) can live in one process without clashing on metric names.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class ServiceStats:
    """A service's counts at one moment, read from its Prometheus counters (counted there only)."""

    received: int = 0
    predicted: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    nacked: int = 0
    duplicates: int = 0


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
            "fashionstream_redelivered", "Requests the broker says it delivered more than once", registry=r
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
        )

    def dead_letter_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for metric in self.dead_lettered.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["reason"]] = int(sample.value)
        return counts


class Health:
    """What /healthz reports: alive while the receive loop keeps turning."""

    def __init__(self, stale_after_s: float = 30.0) -> None:
        self.stale_after_s = stale_after_s
        self.started = False
        self.stopping = False
        self._last_beat = time.monotonic()
        self.detail: dict[str, Any] = {}

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def status(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self._last_beat
        ok = self.started and age < self.stale_after_s
        state = "stopping" if self.stopping else ("ok" if ok else ("starting" if not self.started else "stalled"))
        return ok, {"status": state, "last_loop_s": round(age, 3), **self.detail}


class MetricsServer:
    """Serves `/metrics` (Prometheus text format) and `/healthz` (JSON; 200 healthy, 503 not) on a thread."""

    def __init__(self, registry: CollectorRegistry, health: Health, host: str = "0.0.0.0", port: int = 0) -> None:
        registry_ref, health_ref = registry, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, code = generate_latest(registry_ref), CONTENT_TYPE_LATEST, 200
                elif path in ("/healthz", "/livez", "/readyz"):
                    ok, doc = health_ref.status()
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
