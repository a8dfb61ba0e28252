"""fashionstream.pubsub: one publish/subscribe API over Kafka, Google Cloud Pub/Sub and an in-memory broker.

    from fashionstream.pubsub import open_topic, open_subscription

    with open_topic("kafka://127.0.0.1:9092/images") as topic:
        topic.send(b"hello", attributes={"kind": "greeting"}).result()
        topic.send_batch([OutgoingMessage(b"a"), OutgoingMessage(b"b", key="k")]).result()  # [id, id]
    with open_subscription("kafka://127.0.0.1:9092/images?group=service") as sub:
        message = sub.receive(timeout=10)
        message.ack()
        batch = sub.receive_batch(100, timeout=1)
        sub.ack(batch)                              # one call for many

Code configured with one broker makes its topic and subscription URLs with
`parse_broker`:

    broker = parse_broker("kafka://127.0.0.1:9092")
    open_topic(broker.topic_url("images"))

The portable layer (`Publisher`, `Subscriber`) owns batching, retries, ack
bookkeeping, flush and close; backends in `drivers/` only move batches and own
their URL grammar. Guide: docs/pubsub.md.
"""

from __future__ import annotations

import logging
from typing import Any

from fashionstream.pubsub.broker import Broker, broker_url_help, parse_broker
from fashionstream.pubsub.driver import OutgoingMessage
from fashionstream.pubsub.drivers import client_imports, for_url, native_ack_deadlines
from fashionstream.pubsub.errors import (
    AlreadyExists,
    Closed,
    InvalidArgument,
    MissingExtra,
    NotFound,
    PermissionDenied,
    PubSubError,
    Timeout,
    Unavailable,
)
from fashionstream.pubsub.message import Message
from fashionstream.pubsub.publisher import PUBLISHER_OPTIONS, Publisher, PublisherSettings
from fashionstream.pubsub.subscriber import SUBSCRIBER_OPTIONS, Subscriber, SubscriberSettings
from fashionstream.pubsub.urls import check_query, parse_url, redact, safe_url

log = logging.getLogger(__name__)


def _split_options(options: dict[str, Any], portable: frozenset[str]) -> tuple[dict[str, Any], dict[str, object]]:
    ours = {k: v for k, v in options.items() if k in portable}
    native = {k: v for k, v in options.items() if k not in portable}
    return ours, native


def open_topic(url: str, **options: Any) -> Publisher:
    """A `Publisher` for the topic named by `url`.

    Portable options: batch_size, max_batch_bytes, linger, max_in_flight,
    send_timeout. Any other option goes to the backend's client (for Kafka,
    librdkafka settings such as `**{"linger.ms": 5}`).
    """
    parsed = parse_url(url)
    module = for_url(parsed)
    check_query(parsed, module.TOPIC_QUERY_PARAMS, "topic")
    portable, native = _split_options(options, PUBLISHER_OPTIONS)
    settings = PublisherSettings(**portable)  # validate before connecting anywhere
    log.debug("opening topic %s with native options %s", safe_url(url), redact(native))
    try:
        with client_imports(module):
            driver = module.open_topic_driver(parsed, native)
    except (PubSubError, ImportError):  # an ImportError here is a packaging bug of ours: shown as is
        raise
    except Exception as err:
        raise PubSubError(f"opening topic {safe_url(url)} failed: {err}") from err
    return Publisher(driver, settings)


def open_subscription(url: str, **options: Any) -> Subscriber:
    """A `Subscriber` for the subscription (Kafka: consumer group) named by `url`.

    Portable options: ack_deadline, max_outstanding, max_outstanding_bytes,
    receive_batch_size, poll_interval, retry_timeout. Any other option goes to
    the backend's client.
    """
    parsed = parse_url(url)
    module = for_url(parsed)
    check_query(parsed, module.SUBSCRIPTION_QUERY_PARAMS, "subscription")
    portable, native = _split_options(options, SUBSCRIBER_OPTIONS)
    settings = SubscriberSettings(**portable)
    log.debug("opening subscription %s with native options %s", safe_url(url), redact(native))
    try:
        with client_imports(module):
            driver = module.open_subscription_driver(parsed, native, settings.flow_control())
    except (PubSubError, ImportError):  # an ImportError here is a packaging bug of ours: shown as is
        raise
    except Exception as err:
        raise PubSubError(f"opening subscription {safe_url(url)} failed: {err}") from err
    return Subscriber(driver, settings, native_ack_deadlines=native_ack_deadlines(module))


__all__ = [
    "AlreadyExists",
    "Broker",
    "Closed",
    "InvalidArgument",
    "Message",
    "MissingExtra",
    "NotFound",
    "OutgoingMessage",
    "PermissionDenied",
    "PubSubError",
    "Publisher",
    "Subscriber",
    "Timeout",
    "Unavailable",
    "broker_url_help",
    "open_subscription",
    "open_topic",
    "parse_broker",
]
