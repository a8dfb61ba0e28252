"""The whole pipeline in one process: produce N labelled images, serve them, consume the answers.

By default the images are the sample shipped with the package (`--source sample`) and the broker
is `mem://`, so nothing else is needed: no dataset, no download, no broker. `--source test` sends
the full test split instead. With a real broker the same run goes through it, creating topics and
subscriptions first. The consumer and dead-letter readers use subscriptions unique to the run,
so old messages from earlier runs do not count.

`DemoWatch` serves the page of `fashionstream watch` from the demo's own process (`demo --watch`):
the one way to watch `mem://`, whose embedded broker no other process can reach.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fashionstream.pipeline import cloudevents
from fashionstream.pipeline.config import DemoConfig
from fashionstream.pipeline.consumer import Tally, read_predictions
from fashionstream.pipeline.handler import ModelHandler
from fashionstream.pipeline.metrics import ServiceMetrics
from fashionstream.pipeline.producer import ProduceSummary, SourceImage, labelled_images, produce
from fashionstream.pipeline.service import ModelService
from fashionstream.pipeline.topology import Topology
from fashionstream.pipeline.watch import WatchState
from fashionstream.pipeline.watch_feed import WatchFeed, WatchSubscriptions, open_subscribers
from fashionstream.pubsub import Publisher, Subscriber, admin, open_subscription, open_topic

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


@dataclass
class _Clients:
    """The six clients of a demo run: the service's three, the producer's, and the two readers."""

    service_in: Subscriber
    predictions_out: Publisher
    dead_out: Publisher
    images_out: Publisher
    predictions_in: Subscriber
    dead_in: Subscriber


def run_demo(
    config: DemoConfig,
    *,
    topology: Topology | None = None,
    handler: ModelHandler[Any] | None = None,
    progress: Any | None = None,
    metrics: ServiceMetrics | None = None,
    before_sending: Callable[[Topology], None] | None = None,
) -> DemoResult:
    """Run the demo described by `config`; `topology` overrides the standard topic names (tests use unique ones).

    `before_sending(topology)` is called once the topics exist and before the first image is sent
    (`DemoWatch.follow` creates the watch's subscriptions there, so that it sees the whole run).
    """
    run_id = uuid.uuid4().hex[:8]
    base = topology or Topology(config.broker)
    topology = dataclasses.replace(base, consumer_subscription=f"{base.consumer_subscription}-demo-{run_id}")
    dlq_subscription = f"{topology.dead_letters.replace('.', '-')}-demo-{run_id}"
    topology.create(
        subscriptions=(
            (topology.images, topology.service_subscription),
            (topology.predictions, topology.consumer_subscription),
            (topology.dead_letters, dlq_subscription),
        ),
        options=config.admin_options(),
    )
    # Encoded before the clock starts: the demo times the pipeline, not PNG encoding.
    images = list(labelled_images(config.source, config.count))
    try:
        if before_sending is not None:
            before_sending(topology)
        with ExitStack() as stack:
            clients = _open_clients(stack, config, topology, dlq_subscription)
            return _run(config, topology, clients, handler or config.model_handler(),
                        images, progress, metrics)  # fmt: skip
    finally:
        _delete_quietly(
            config.admin_options(),
            topology.predictions_subscription_url,
            topology.subscription(topology.dead_letters, dlq_subscription),
        )


def _open_clients(stack: ExitStack, config: DemoConfig, topology: Topology, dlq_subscription: str) -> _Clients:
    sub, pub = config.subscriber_options(), config.publisher_options()
    # The service's own subscription is opened as `serve` opens it (its byte cap included).
    service_sub = config.service_config(topology).subscriber_options()
    return _Clients(
        service_in=stack.enter_context(open_subscription(topology.images_subscription_url, **service_sub)),
        predictions_out=stack.enter_context(open_topic(topology.topic(topology.predictions), **pub)),
        dead_out=stack.enter_context(open_topic(topology.topic(topology.dead_letters), **pub)),
        images_out=stack.enter_context(open_topic(topology.topic(topology.images), **pub)),
        predictions_in=stack.enter_context(open_subscription(topology.predictions_subscription_url, **sub)),
        dead_in=stack.enter_context(
            open_subscription(topology.subscription(topology.dead_letters, dlq_subscription), **sub)
        ),
    )


def _run(
    config: DemoConfig,
    topology: Topology,
    clients: _Clients,
    handler: ModelHandler[Any],
    images: list[SourceImage],
    progress: Any | None,
    metrics: ServiceMetrics | None,
) -> DemoResult:
    """Start the service and the producer on threads, read answers until all are in, stop the service."""
    service = ModelService(
        config.service_config(topology), handler, clients.service_in, clients.predictions_out, clients.dead_out,
        metrics=metrics,
    )  # fmt: skip
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,), name="model-service", daemon=True)
    worker.start()
    started = time.perf_counter()
    live = ProduceSummary()  # filled while sending: the reader needs ids, labels and send times as they go
    done_sending = threading.Event()

    def send() -> None:
        try:
            produce(clients.images_out, images, topology.flavour, fmt=config.format, rate=config.rate,
                    progress=progress, summary=live)  # fmt: skip
        finally:
            done_sending.set()

    sender = threading.Thread(target=send, name="producer", daemon=True)
    sender.start()
    tally = Tally(expected=live.expected, sent_at=live.sent_at)
    dead_ids = _collect_answers(clients, tally, live, done_sending, deadline=time.monotonic() + config.timeout)
    elapsed = (tally.last_at or time.perf_counter()) - started
    sender.join(timeout=5)
    stop.set()
    worker.join(timeout=10)
    return _result(live if done_sending.is_set() else ProduceSummary(), tally, dead_ids, service.model_id, elapsed)


def _collect_answers(
    clients: _Clients, tally: Tally, live: ProduceSummary, done_sending: threading.Event, deadline: float
) -> set[str]:
    """Read predictions and dead letters until every sent id has one of them (or the deadline); the dead ids."""
    dead_ids: set[str] = set()

    def done() -> bool:
        if time.monotonic() > deadline:
            return True
        if not done_sending.is_set():
            return False
        mine = set(live.ids)
        answered = sum(1 for i in tally.answered if i in mine)
        return answered + len(dead_ids & mine) >= live.sent

    while not done():
        read_predictions(clients.predictions_in, tally, until=done, idle_timeout=0.25)
        for message in clients.dead_in.receive_batch(max_messages=500, timeout=0.05):
            dead_ids.add(cloudevents.attribute(message.attributes, "id") or message.key or message.id)
            message.ack()
    return dead_ids


def _result(summary: ProduceSummary, tally: Tally, dead_ids: set[str], model_id: str, elapsed: float) -> DemoResult:
    sent_ids = set(summary.ids)
    answered_ids = {i for i in tally.answered if i in sent_ids}
    expected = summary.expected
    correct = sum(1 for i in answered_ids if tally.answered[i].prediction.label == expected.get(i, -1))
    scored = sum(1 for i in answered_ids if i in expected)
    seconds = max(1e-9, elapsed)
    return DemoResult(
        sent=len(sent_ids),
        answered=len(answered_ids),
        lost=len(sent_ids - answered_ids - dead_ids),
        duplicates=tally.duplicates,
        dead_lettered=len(dead_ids & sent_ids),
        accuracy=correct / scored if scored else None,
        throughput_img_s=len(answered_ids) / seconds,
        latency_ms=tally.latency(),
        model=model_id,
        seconds=seconds,
        tally=tally,
        sent_ids=list(summary.ids),
        dead_letter_ids=dead_ids,
    )


def _delete_quietly(options: dict[str, Any], *subscription_urls: str) -> None:
    """Remove the run's own subscriptions so they do not pile up messages on a real broker."""
    for url in subscription_urls:
        try:
            admin.delete_subscription(url, **options)
        except Exception as error:  # noqa: BLE001 - clean-up only; the demo's result stands
            log.debug("could not delete %s: %s", url, error)


class DemoWatch:
    """The page of `fashionstream watch` served by the demo itself, on its broker and topics (`demo --watch`).

    `serve()` starts the page on 127.0.0.1 (empty until the readers start); `follow(topology)`, which
    `run_demo` calls once the topics exist and before anything is sent, creates the watch's own
    subscriptions, unique to the run like the demo's readers', and starts its readers; `wait()` keeps
    serving until a stop signal (or until a reader fails, see `errors`); `close()` stops the page and the
    readers and deletes the subscriptions. A new Kafka consumer group starts at a topic's oldest
    message, so the readers skip what the broker accepted before the run (`SINCE_MARGIN_S` earlier, for
    clocks that disagree a little): the page shows this run, as the summary does.
    """

    HOST = "127.0.0.1"
    START_TIMEOUT_S = 30.0
    SINCE_MARGIN_S = 1.0

    def __init__(self, config: DemoConfig) -> None:
        # aiohttp comes with the `watch` extra: imported here, before anything is sent, so that a missing
        # extra ends the command with the line naming it instead of a traceback after the run.
        from fashionstream.pipeline.watch_page import serve

        self._serve_page = serve
        self.config = config
        self.state, self.lock, self.stop = WatchState(), threading.Lock(), threading.Event()
        self.feed = WatchFeed(self.state, self.lock, self.stop)
        self.prefix = f"watch-demo-{uuid.uuid4().hex[:8]}"
        self.port: int | None = None
        self._stack = ExitStack()
        self._subscriptions: WatchSubscriptions | None = None
        self._server: threading.Thread | None = None
        self._server_errors: list[BaseException] = []

    @property
    def url(self) -> str:
        return f"http://{self.HOST}:{self.port}/"

    @property
    def errors(self) -> list[BaseException]:
        """What stopped the page or a reader early (the broker went away, a subscription was deleted)."""
        return self._server_errors + self.feed.errors

    def serve(self) -> str:
        """Start the page on its own thread; its URL once it listens. An OSError when the port is taken."""
        listening = threading.Event()

        def ready(port: int) -> None:
            self.port = port
            listening.set()

        def run() -> None:
            try:
                asyncio.run(self._serve_page(self.state, self.lock, self.stop, self.HOST, self.config.watch_port,
                                             ready))  # fmt: skip
            except BaseException as error:  # noqa: BLE001 - handed to the command's thread
                self._server_errors.append(error)
                self.stop.set()
                listening.set()

        self._server = threading.Thread(target=run, name="watch-page", daemon=True)
        self._server.start()
        if not listening.wait(self.START_TIMEOUT_S):
            raise TimeoutError(f"the watch page did not start listening within {self.START_TIMEOUT_S:.0f} s")
        if self.port is None:
            raise self._server_errors[0]
        return self.url

    def follow(self, topology: Topology) -> None:
        """Create the watch's subscriptions on `topology`'s three topics and start reading them."""
        subscriptions = WatchSubscriptions.of(topology, self.prefix)
        self._subscriptions = subscriptions  # before creating them: `close` deletes whatever came to exist
        self.feed.since = datetime.now(UTC) - timedelta(seconds=self.SINCE_MARGIN_S)
        subscriptions.create(topology, self.config.admin_options())
        self.feed.start(open_subscribers(self._stack, subscriptions, self.config.subscriber_options()))

    def wait(self, until: threading.Event) -> None:
        """Keep serving until `until` is set (a stop signal) or the page or a reader fails."""
        while not until.wait(0.2) and not self.stop.is_set():
            pass

    def close(self) -> None:
        self.stop.set()
        if self._server is not None:
            self._server.join(timeout=10)
        self.feed.join()
        self._stack.close()
        if self._subscriptions is not None:
            # A Kafka consumer group can be deleted only once its members have left: after the close above.
            _delete_quietly(self.config.admin_options(), *self._subscriptions.urls())
