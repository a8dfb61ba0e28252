"""Topic and subscription names of the pipeline, and how a broker URL becomes their URLs.

The command line takes one broker URL (`mem://`, `kafka://host:port`,
`gcppubsub://projects/P`) plus names; `fashionstream.pubsub` wants one URL per
topic or subscription. `Topology` does that translation and creates what is missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from fashionstream.pipeline.contract import Flavour

log = logging.getLogger(__name__)

IMAGES = "images"
PREDICTIONS = "predictions"
DEAD_LETTERS = "images.dlq"
SERVICE_SUBSCRIPTION = "model-service"
CONSUMER_SUBSCRIPTION = "predictions-consumer"

SCHEMES = ("mem", "kafka", "gcppubsub")


def _split(broker: str) -> tuple[str, str, str, dict[str, str]]:
    """(scheme, authority, path, query) of a broker URL, validated."""
    parts = urlsplit(broker)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"broker URL {broker!r}: unknown scheme {parts.scheme!r}; use mem://, kafka://HOST:PORT "
            "or gcppubsub://projects/PROJECT"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if query:
        raise ValueError(
            f"broker URL {broker!r}: no query parameters here; pass native client options "
            "(SASL, SSL, timeouts) with --subscriber-option / --publisher-option KEY=VALUE"
        )
    if scheme == "kafka" and not parts.netloc:
        raise ValueError(f"broker URL {broker!r}: name the bootstrap server, e.g. kafka://127.0.0.1:9092")
    if scheme == "gcppubsub":
        project = f"{parts.netloc}{parts.path}".strip("/").split("/")
        if len(project) != 2 or project[0] != "projects" or not project[1]:
            raise ValueError(f"broker URL {broker!r}: use gcppubsub://projects/PROJECT_ID")
    return scheme, parts.netloc, parts.path.strip("/"), query


def _with_query(base: str, query: dict[str, str]) -> str:
    return f"{base}?{urlencode(query)}" if query else base


def topic_url(broker: str, topic: str) -> str:
    """`kafka://h:9092` + `images` -> `kafka://h:9092/images`."""
    scheme, netloc, path, query = _split(broker)
    if scheme == "mem":
        return _with_query(f"mem://{topic}", query)
    if scheme == "kafka":
        return _with_query(f"kafka://{netloc}/{topic}", query)
    return _with_query(f"gcppubsub://{netloc}/{path}/topics/{topic}", query)


def subscription_url(broker: str, topic: str, subscription: str) -> str:
    """The URL to receive `topic` as `subscription` (a Kafka consumer group, a Pub/Sub subscription)."""
    scheme, netloc, path, query = _split(broker)
    if scheme == "mem":
        return _with_query(f"mem://{topic}", {**query, "subscription": subscription})
    if scheme == "kafka":
        return _with_query(f"kafka://{netloc}/{topic}", {**query, "group": subscription})
    # A Pub/Sub subscription is bound to its topic at creation; its URL names only the subscription.
    return _with_query(f"gcppubsub://{netloc}/{path}/subscriptions/{subscription}", query)


@dataclass(frozen=True)
class Topology:
    """The pipeline's topics and subscriptions on one broker."""

    broker: str
    images: str = IMAGES
    predictions: str = PREDICTIONS
    dead_letters: str = DEAD_LETTERS
    service_subscription: str = SERVICE_SUBSCRIPTION
    consumer_subscription: str = CONSUMER_SUBSCRIPTION

    def __post_init__(self) -> None:
        _split(self.broker)  # fail early with a clear message

    @property
    def flavour(self) -> Flavour:
        return Flavour.for_broker(self.broker)

    @property
    def scheme(self) -> str:
        return _split(self.broker)[0]

    def topic(self, name: str) -> str:
        return topic_url(self.broker, name)

    def subscription(self, topic: str, name: str) -> str:
        return subscription_url(self.broker, topic, name)

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
        subscriptions: tuple[tuple[str, str], ...] | None = None,
        ack_deadline_s: int = 30,
    ) -> None:
        """Create the three topics and the given (topic, subscription) pairs if missing.

        Defaults to the service's subscription on `images` and the consumer's on
        `predictions`. Kafka groups need no creation; the admin helper only checks the topic.
        """
        from fashionstream.pubsub import admin

        for name in (self.images, self.predictions, self.dead_letters):
            created = admin.create_topic(self.topic(name), partitions=partitions)
            log.info("topic %s %s", name, "created" if created else "exists")
        pairs = (
            subscriptions
            if subscriptions is not None
            else (
                (self.images, self.service_subscription),
                (self.predictions, self.consumer_subscription),
            )
        )
        for topic, sub in pairs:
            created = admin.create_subscription(
                self.subscription(topic, sub), topic=topic, ack_deadline_s=ack_deadline_s
            )
            log.info("subscription %s on %s %s", sub, topic, "created" if created else "exists")
