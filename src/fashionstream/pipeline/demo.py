"""The whole pipeline in one process: produce N test images, serve them, consume the answers.

On `mem://` (the default) nothing else is needed; with `kafka://...` or
`gcppubsub://projects/P` the same run goes through the real broker, creating
topics and subscriptions first. The consumer and dead-letter readers use
subscriptions unique to the run, so old messages from earlier runs do not count.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fashionstream.pipeline import contract
from fashionstream.pipeline.consumer import Tally, read_predictions
from fashionstream.pipeline.metrics import ServiceMetrics
from fashionstream.pipeline.model import PredictorModel, ServingModel
from fashionstream.pipeline.producer import ProduceSummary, labelled_test_images, produce
from fashionstream.pipeline.service import ModelService, ServiceConfig
from fashionstream.pipeline.topology import Topology

log = logging.getLogger("fashionstream.demo")


@dataclass
class DemoResult:
    sent: int
    answered: int
    lost: int
    duplicates: int
    dead_lettered: int
    accuracy: float | None
    throughput_img_s: float
    latency_ms: dict[str, float]
    model: str
    seconds: float
    tally: Tally
    sent_ids: list[str]
    dead_letter_ids: set[str]

    def as_dict(self) -> dict[str, Any]:
        """Exactly the keys the README promises for `fashionstream demo --json`."""

        def clean(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else round(x, 4)

        return {
            "sent": self.sent,
            "answered": self.answered,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "accuracy": clean(self.accuracy),
            "throughput_img_s": round(self.throughput_img_s, 1),
            "latency_ms": {k: clean(v) for k, v in self.latency_ms.items()},
        }


def run_demo(
    broker: str = "mem://",
    *,
    count: int = 2000,
    model: ServingModel | None = None,
    model_path: str | None = None,
    max_batch_size: int = 64,
    max_wait_ms: float = 20.0,
    fmt: str = "cloudevents",
    rate: float | None = None,
    timeout: float = 120.0,
    progress: Any | None = None,
    metrics: ServiceMetrics | None = None,
    topology: Topology | None = None,
    subscriber_options: dict[str, object] | None = None,
) -> DemoResult:
    """Run the demo; `topology` overrides the standard topic names (tests use unique ones)."""
    from fashionstream.pubsub import open_subscription, open_topic

    run_id = uuid.uuid4().hex[:8]
    base = topology or Topology(broker)
    broker = base.broker
    topology = dataclasses.replace(base, consumer_subscription=f"{base.consumer_subscription}-demo-{run_id}")
    sub_options = subscriber_options or {}
    dlq_subscription = f"{topology.dead_letters.replace('.', '-')}-demo-{run_id}"
    topology.create(
        subscriptions=(
            (topology.images, topology.service_subscription),
            (topology.predictions, topology.consumer_subscription),
            (topology.dead_letters, dlq_subscription),
        )
    )
    serving = model or PredictorModel(model_path)
    config = ServiceConfig(
        broker=broker,
        images_topic=topology.images,
        predictions_topic=topology.predictions,
        dead_letter_topic=topology.dead_letters,
        subscription=topology.service_subscription,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
    )
    stop = threading.Event()
    images = list(labelled_test_images(count))  # encode PNGs before the clock starts: the demo times the pipeline

    with (
        open_subscription(topology.images_subscription_url, **sub_options) as service_in,
        open_topic(topology.topic(topology.predictions)) as predictions_out,
        open_topic(topology.topic(topology.dead_letters)) as dead_out,
        open_subscription(topology.predictions_subscription_url, **sub_options) as predictions_in,
        open_subscription(topology.subscription(topology.dead_letters, dlq_subscription), **sub_options) as dead_in,
        open_topic(topology.topic(topology.images)) as images_out,
    ):
        service = ModelService(config, serving, service_in, predictions_out, dead_out, metrics=metrics)
        worker = threading.Thread(target=service.run, args=(stop,), name="model-service", daemon=True)
        worker.start()

        started = time.perf_counter()
        summary_box: dict[str, Any] = {}
        live = ProduceSummary()

        def send() -> None:
            summary_box["summary"] = produce(
                images_out, images, topology.flavour, fmt=fmt, rate=rate, progress=progress, summary=live
            )

        sender = threading.Thread(target=send, name="producer", daemon=True)
        sender.start()
        tally = Tally(expected=live.expected, sent_at=live.sent_at)
        dead_ids: set[str] = set()
        deadline = time.monotonic() + timeout

        def done() -> bool:
            summary: ProduceSummary | None = summary_box.get("summary")
            if time.monotonic() > deadline:
                return True
            if summary is None:
                return False
            mine = set(summary.ids)
            answered = sum(1 for i in tally.answered if i in mine)
            return answered + len(dead_ids & mine) >= summary.sent

        while not done():
            read_predictions(predictions_in, tally, until=done, idle_timeout=0.25)
            for message in dead_in.receive_batch(max_messages=500, timeout=0.05):
                dead_ids.add(contract.ce_get(message.attributes, "id") or message.key or message.id)
                message.ack()
        elapsed_end = tally.last_at or time.perf_counter()
        sender.join(timeout=5)
        stop.set()
        worker.join(timeout=10)

    _delete_quietly(
        topology.predictions_subscription_url, topology.subscription(topology.dead_letters, dlq_subscription)
    )
    summary = summary_box.get("summary")
    sent_ids = set(summary.ids) if summary else set()
    expected = live.expected
    answered_ids = {i for i in tally.answered if i in sent_ids}
    correct = sum(1 for i in answered_ids if tally.answered[i].label == expected.get(i, -1))
    scored = sum(1 for i in answered_ids if i in expected)
    seconds = max(1e-9, elapsed_end - started)
    return DemoResult(
        sent=len(sent_ids),
        answered=len(answered_ids),
        lost=len(sent_ids - answered_ids - dead_ids),
        duplicates=tally.duplicates,
        dead_lettered=len(dead_ids & sent_ids),
        accuracy=correct / scored if scored else None,
        throughput_img_s=len(answered_ids) / seconds,
        latency_ms=tally.latency(),
        model=serving.model_id,
        seconds=seconds,
        tally=tally,
        sent_ids=list(summary.ids) if summary else [],
        dead_letter_ids=dead_ids,
    )


def _delete_quietly(*subscription_urls: str) -> None:
    """Remove the run's own subscriptions so they do not pile up messages on a real broker."""
    from fashionstream.pubsub import admin

    for url in subscription_urls:
        try:
            admin.delete_subscription(url)
        except Exception as error:  # noqa: BLE001 - clean-up only; the demo's result stands
            log.debug("could not delete %s: %s", url, error)
