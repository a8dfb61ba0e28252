"""The `kafka://` backend: Apache Kafka through confluent-kafka (librdkafka).

URLs: `kafka://HOST:PORT[,HOST:PORT...]` (the broker, for admin), `kafka://HOST:PORT/TOPIC` (topic)
and `kafka://HOST:PORT/TOPIC?group=GROUP` (subscription = consumer group GROUP reading TOPIC).
Credentials and TLS settings are native options (`sasl.username`, `ssl.ca.location`, ...), never
part of the URL, so a URL can be logged and shown.

Guarantees and how they are kept:

- Publishing: the producer is idempotent with acks=all, so a retried batch never reorders or
  duplicates inside the broker; `send_batch` returns only when every delivery report came back.
  Message keys pick the partition, so messages with one key keep their order.
- At-least-once receiving: offsets are committed by hand, never automatically. For each partition
  the driver remembers the offsets it handed out; the committed offset only moves past a message
  once it *and every message before it* is acked (`offsets.PartitionOffsets`). An acked message
  behind an unacked one therefore does not commit anything, and a consumer that dies loses no
  unacked message.
- Nack: Kafka has no per-message nack, so the partition is rewound (`seek`) to the lowest nacked
  offset; the messages after it come again too (duplicates are allowed by at-least-once).
- Kafka has no ack deadline: the portable layer emulates it (`NATIVE_ACK_DEADLINES = False`)
  by nacking messages held too long.
- Kafka counts no deliveries and has no dead-letter policy: the driver counts each offset's
  nacks while its partition is assigned here (`delivery_attempt`), and with the options
  `dead_letter_topic` / `max_delivery_attempts` moves a message that failed that often to the
  dead-letter topic (see `subscription`). The count starts again in a new process or owner.

Native options (any librdkafka property such as `linger.ms`, `security.protocol`, `sasl.*`) are
passed to the client as given and never logged.

This package's `__init__` is the URL grammar and the module shape, importable without
confluent-kafka; the modules that use the client are imported when a driver is opened:
`errors` (what each native error means), `client` (configuration, logging, the topic check shared
by all clients), `offsets` (the commit bookkeeping), `topic`, `subscription`, `admin`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fashionstream.pubsub.driver import API_DEFAULT_SUBSCRIPTION, ApiConfig, FlowControl, ParsedURL
from fashionstream.pubsub.errors import InvalidArgument
from fashionstream.pubsub.urls import check_port, parse_reference, safe_url

if TYPE_CHECKING:
    from fashionstream.pubsub.drivers.kafka.admin import KafkaAdminDriver
    from fashionstream.pubsub.drivers.kafka.subscription import KafkaSubscriptionDriver
    from fashionstream.pubsub.drivers.kafka.topic import KafkaTopicDriver

SCHEME = "kafka"
EXTRA = "kafka"
CLOUDEVENTS_PREFIX = "ce_"  # the CloudEvents Kafka protocol binding: headers `ce_<attribute>`
BROKER_URL_FORM = "kafka://HOST:PORT[,HOST:PORT...]"
TOPIC_QUERY_PARAMS: frozenset[str] = frozenset()
SUBSCRIPTION_QUERY_PARAMS: frozenset[str] = frozenset({"group"})
NATIVE_ACK_DEADLINES = False
API_BROKER_TYPE = "Kafka"

#: Where `PubSubAPI("Kafka")` connects without bootstrap_servers=... or $KAFKA_BOOTSTRAP_SERVERS.
DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"


# ---------------------------------------------------------------- URLs


def bootstrap_servers(url: ParsedURL) -> str:
    """The `HOST:PORT[,HOST:PORT...]` part of a kafka:// URL, checked: a host in each, ports 1-65535."""
    if not url.host:
        raise InvalidArgument(
            f"{safe_url(url.raw)!r} names no broker; expected {BROKER_URL_FORM}/TOPIC, e.g. kafka://127.0.0.1:9092/images"
        )
    if "@" in url.host:
        raise InvalidArgument(
            f"{safe_url(url.raw)!r}: credentials do not go in a kafka:// URL; pass them as options "
            "(sasl.username, sasl.password)"
        )
    for server in url.host.split(","):
        host, port = _split_server(server)
        if not host:
            raise InvalidArgument(f"{safe_url(url.raw)!r} has an empty broker address; expected {BROKER_URL_FORM}")
        if port is not None:
            check_port(port, url.raw)
    return url.host


def _split_server(server: str) -> tuple[str, str | None]:
    """('host', 'port' or None) of 'host:port', 'host' or '[IPv6]:port'."""
    if server.startswith("["):
        end = server.find("]")
        rest = server[end + 1 :]
        return server[: end + 1], (rest[1:] if rest.startswith(":") else rest or None)
    host, colon, port = server.partition(":")
    return host, (port if colon else None)


def topic_name(url: ParsedURL) -> str:
    """The one topic a topic or subscription URL names."""
    topic = resource_names(url)[0]
    if topic is None:
        raise InvalidArgument(
            f"{safe_url(url.raw)!r} must name a topic after the broker address, e.g. kafka://127.0.0.1:9092/images"
        )
    return topic


def check_broker_url(url: ParsedURL) -> None:
    """A broker URL is `kafka://HOST:PORT[,HOST:PORT...]` with nothing after the address."""
    if not url.host:
        raise InvalidArgument(
            f"broker URL {safe_url(url.raw)!r} names no bootstrap server; expected {BROKER_URL_FORM}, "
            "e.g. kafka://127.0.0.1:9092"
        )
    bootstrap_servers(url)
    if url.path.strip("/"):
        raise InvalidArgument(
            f"broker URL {safe_url(url.raw)!r} names a topic; expected {BROKER_URL_FORM} (topics are named separately)"
        )


def topic_url(broker: ParsedURL, topic: str) -> str:
    return f"kafka://{bootstrap_servers(broker)}/{topic}"


def subscription_url(broker: ParsedURL, topic: str, subscription: str) -> str:
    """A subscription is consumer group `subscription` reading `topic`."""
    return f"{topic_url(broker, topic)}?{urlencode({'group': subscription})}"


def resource_names(url: ParsedURL) -> tuple[str | None, str | None]:
    """(topic, consumer group) of `kafka://HOST:PORT/TOPIC?group=GROUP`; either may be missing."""
    bootstrap_servers(url)
    topic = url.path.strip("/")
    if "/" in topic:
        raise InvalidArgument(
            f"{safe_url(url.raw)!r} must name one topic after the broker address, e.g. kafka://127.0.0.1:9092/images"
        )
    return topic or None, url.query.get("group") or None


def topic_reference(reference: str, url: ParsedURL) -> str:
    """The topic named by `reference`: a topic name or a kafka:// topic URL."""
    parsed = parse_reference(reference, SCHEME)
    return reference if parsed is None else topic_name(parsed)


def api_config(config: dict[str, Any]) -> ApiConfig:
    """`PubSubAPI("Kafka", bootstrap_servers=..., group_id=...)`: receive(topic) reads as consumer group group_id.

    bootstrap_servers defaults to $KAFKA_BOOTSTRAP_SERVERS, then 127.0.0.1:9092.
    """
    servers = config.pop("bootstrap_servers", None) or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    group = str(config.pop("group_id", API_DEFAULT_SUBSCRIPTION))
    return ApiConfig(f"kafka://{servers or DEFAULT_BOOTSTRAP_SERVERS}", group)


# ---------------------------------------------------------------- module shape


def open_topic_driver(url: ParsedURL, options: dict[str, object]) -> KafkaTopicDriver:
    from fashionstream.pubsub.drivers.kafka.topic import KafkaTopicDriver

    return KafkaTopicDriver(url, options)


def open_subscription_driver(
    url: ParsedURL, options: dict[str, object], flow: FlowControl | None = None
) -> KafkaSubscriptionDriver:
    from fashionstream.pubsub.drivers.kafka.subscription import KafkaSubscriptionDriver

    return KafkaSubscriptionDriver(url, options, flow)


def open_admin_driver(url: ParsedURL, options: dict[str, object]) -> KafkaAdminDriver:
    from fashionstream.pubsub.drivers.kafka.admin import KafkaAdminDriver

    return KafkaAdminDriver(url, options)


__all__ = [
    "API_BROKER_TYPE",
    "BROKER_URL_FORM",
    "CLOUDEVENTS_PREFIX",
    "DEFAULT_BOOTSTRAP_SERVERS",
    "EXTRA",
    "NATIVE_ACK_DEADLINES",
    "SCHEME",
    "SUBSCRIPTION_QUERY_PARAMS",
    "TOPIC_QUERY_PARAMS",
    "api_config",
    "bootstrap_servers",
    "check_broker_url",
    "open_admin_driver",
    "open_subscription_driver",
    "open_topic_driver",
    "resource_names",
    "subscription_url",
    "topic_name",
    "topic_reference",
    "topic_url",
]
