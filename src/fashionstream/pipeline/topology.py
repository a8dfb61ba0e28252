"""The pipeline's topic and subscription names on one broker, and creating them.

The commands take one broker URL (`--broker`) plus names; `fashionstream.pubsub` wants one URL
per topic or subscription. `Topology` asks the broker's driver for those URLs (each driver owns
its URL grammar) and creates what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fashionstream.pipeline.cloudevents import Flavour
from fashionstream.pubsub import Broker, admin, parse_broker

log = logging.getLogger(__name__)

IMAGES = "images"
PREDICTIONS = "predictions"
DEAD_LETTERS = "images.dlq"
SERVICE_SUBSCRIPTION = "model-service"
CONSUMER_SUBSCRIPTION = "predictions-consumer"
#: The dead-letter policy of the service's subscription moves a request after this many deliveries:
#: Pub/Sub's maximum, so that the service (`--max-delivery-attempts`) gives up first, with a reason.
#: The policy is there because only with one does Pub/Sub count deliveries (`delivery_attempt`).
BROKER_MAX_DELIVERY_ATTEMPTS = 100


@dataclass(frozen=True)
class Topology:
    """The pipeline's topics and subscriptions on one broker; a bad broker URL fails here, at once."""

    broker: str
    images: str = IMAGES
    predictions: str = PREDICTIONS
    dead_letters: str = DEAD_LETTERS
    service_subscription: str = SERVICE_SUBSCRIPTION
    consumer_subscription: str = CONSUMER_SUBSCRIPTION
    _parsed: Broker = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_parsed", parse_broker(self.broker))

    @property
    def flavour(self) -> Flavour:
        """How CloudEvents attributes are spelled on this broker (its driver says)."""
        return Flavour(self._parsed.cloudevents_prefix)

    def topic(self, name: str) -> str:
        return self._parsed.topic_url(name)

    def subscription(self, topic: str, name: str) -> str:
        return self._parsed.subscription_url(topic, name)

    @property
    def images_subscription_url(self) -> str:
        return self.subscription(self.images, self.service_subscription)

    @property
    def predictions_subscription_url(self) -> str:
        return self.subscription(self.predictions, self.consumer_subscription)

    def create(
        self,
        *,
        partitions: int = 1,
        replication_factor: int | None = None,
        subscriptions: tuple[tuple[str, str], ...] | None = None,
        ack_deadline_s: int = 30,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Create the three topics and the given (topic, subscription) pairs if missing.

        Defaults to the service's subscription on `images` and the consumer's on `predictions`.
        The service's subscription gets a dead-letter policy to `dead_letters` (see
        `BROKER_MAX_DELIVERY_ATTEMPTS`); an existing subscription keeps its own.
        `partitions` / `replication_factor` (None: the broker's default) apply to Kafka topics;
        `options` are native client options (credentials) for the admin client.
        """
        native = dict(options or {})
        for name in (self.images, self.predictions, self.dead_letters):
            created = admin.create_topic(
                self.topic(name), partitions=partitions, replication_factor=replication_factor, **native
            )
            log.info("topic %s %s", name, "created" if created else "exists")
        pairs = subscriptions
        if pairs is None:
            pairs = ((self.images, self.service_subscription), (self.predictions, self.consumer_subscription))
        for topic, sub in pairs:
            policy: dict[str, Any] = {}
            if (topic, sub) == (self.images, self.service_subscription):
                policy = {"dead_letter_topic": self.dead_letters, "max_delivery_attempts": BROKER_MAX_DELIVERY_ATTEMPTS}
            created = admin.create_subscription(
                self.subscription(topic, sub), topic=topic, ack_deadline_s=ack_deadline_s, **policy, **native
            )
            log.info("subscription %s on %s %s", sub, topic, "created" if created else "exists")
