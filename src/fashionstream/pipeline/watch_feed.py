"""The watch's readers: its own subscriptions on `images`, `predictions` and `images.dlq`, feeding a `WatchState`.

The watch must never take work from the model service, so it reads through subscriptions (Kafka:
consumer groups) of its own, named `<prefix>-<topic>`: every message reaches both the service and
the watch. It acks what it has read at once: its subscriptions are its own, so an ack moves only its
own position. Messages are decoded with the pipeline's contract (`decode_request`,
`decode_prediction`, the dead-letter attributes); request images are redrawn as 28×28 PNGs by the
classifier's own image reader, so the browser only ever sees images this process has re-encoded.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fashionstream.classifier.predictor import Predictor
from fashionstream.pipeline import contract
from fashionstream.pipeline.contract import PredictionEvent
from fashionstream.pipeline.producer import png_bytes
from fashionstream.pipeline.topology import Topology
from fashionstream.pipeline.watch import WatchState
from fashionstream.pubsub import Message, Subscriber, admin, open_subscription
from fashionstream.reasons import InvalidInput

log = logging.getLogger("fashionstream.watch")

RECEIVE_BATCH = 500
POLL_S = 0.2  # the longest receive wait, which bounds how fast a stop is noticed


def thumbnail(message: Message) -> tuple[str, bytes | None] | None:
    """(id, 28×28 PNG or None when the image cannot be shown) of a request; None when it is no request at all."""
    try:
        request = contract.decode_request(message.data, message.attributes)
    except contract.InvalidRequest:
        return None
    try:
        pixels = Predictor.to_pixels(request.image, raw=request.raw)  # (28, 28) uint8
    except InvalidInput:
        return request.id, None
    return request.id, png_bytes(pixels)


@dataclass(frozen=True)
class WatchSubscriptions:
    """The watch's own subscription URLs on the three topics."""

    images: str
    predictions: str
    dead_letters: str

    @classmethod
    def of(cls, topology: Topology, prefix: str) -> WatchSubscriptions:
        return cls(
            *(topology.subscription(topic, f"{prefix}-{topic}") for topic in
              (topology.images, topology.predictions, topology.dead_letters))
        )  # fmt: skip

    def create(self, topology: Topology, options: dict[str, Any]) -> None:
        """Create the subscriptions if missing (Pub/Sub and mem need them before messages arrive; Kafka groups need
        nothing)."""
        for url, topic in zip(self.urls(), (topology.images, topology.predictions, topology.dead_letters), strict=True):
            created = admin.create_subscription(url, topic=topic, **options)
            log.info("watch subscription on %s %s", topic, "created" if created else "exists")

    def urls(self) -> tuple[str, str, str]:
        return self.images, self.predictions, self.dead_letters


class WatchFeed:
    """Three reader threads, one per subscription, updating `state` under `lock` until `stop` is set.

    A reader that fails (the broker went away for good, a subscription was deleted) records its error
    and sets `stop`, so the command exits with that error instead of showing a frozen page.

    With `since`, messages the broker accepted before that time are read and acked but not shown:
    `demo --watch` shows its own run, while a new Kafka consumer group starts at a topic's oldest message.
    """

    def __init__(
        self, state: WatchState, lock: threading.Lock, stop: threading.Event, since: datetime | None = None
    ) -> None:
        self.state = state
        self.lock = lock
        self.stop = stop
        self.since = since
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

    def start(self, subscribers: tuple[Subscriber, Subscriber, Subscriber]) -> None:
        images, predictions, dead_letters = subscribers
        for name, subscriber, handle in (
            ("watch-images", images, self._on_requests),
            ("watch-predictions", predictions, self._on_predictions),
            ("watch-dead-letters", dead_letters, self._on_dead_letters),
        ):
            thread = threading.Thread(target=self._read, args=(subscriber, handle), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float = 10.0) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _read(self, subscriber: Subscriber, handle: Callable[[list[Message]], None]) -> None:
        try:
            while not self.stop.is_set():
                messages = subscriber.receive_batch(max_messages=RECEIVE_BATCH, timeout=POLL_S)
                if messages:
                    shown = messages if self.since is None else [m for m in messages if self._recent(m)]
                    if shown:
                        handle(shown)
                    subscriber.ack(messages)
        except Exception as error:  # noqa: BLE001 - reported by the command, which then exits
            log.error("reading %s failed: %s", subscriber.name, error)
            self.errors.append(error)
            self.stop.set()

    def _recent(self, message: Message) -> bool:
        """Whether `message` came at or after `since` (a message without a publish time counts as recent)."""
        published = message.publish_time
        return self.since is None or published is None or published >= self.since

    def _on_requests(self, messages: list[Message]) -> None:
        # Image decoding happens outside the lock: the page's snapshots need not wait for it.
        decoded = [thumbnail(message) for message in messages]
        with self.lock:
            for item in decoded:
                if item is None:
                    self.state.add_unreadable_request()
                else:
                    self.state.add_request(*item)

    def _on_predictions(self, messages: list[Message]) -> None:
        received = datetime.now(UTC)
        events: list[PredictionEvent | None] = []
        for message in messages:
            try:
                events.append(contract.decode_prediction(message.data))
            except (ValueError, json.JSONDecodeError, UnicodeDecodeError):
                events.append(None)
        with self.lock:
            for event in events:
                if event is None:
                    self.state.add_invalid_prediction()
                else:
                    self.state.add_prediction(event, received)

    def _on_dead_letters(self, messages: list[Message]) -> None:
        with self.lock:
            for message in messages:
                self.state.add_dead_letter(message.attributes, message.key)


def open_subscribers(
    stack: ExitStack, subscriptions: WatchSubscriptions, options: dict[str, Any]
) -> tuple[Subscriber, Subscriber, Subscriber]:
    images, predictions, dead_letters = (
        stack.enter_context(open_subscription(url, **options)) for url in subscriptions.urls()
    )
    return images, predictions, dead_letters
