"""The driver contract: the few per-batch operations a broker backend implements.

Modelled on gocloud.dev/pubsub's driver package. Everything hard (batching,
retries, ack bookkeeping, flush, close, error wrapping) lives once in the
portable layer (`publisher.py`, `subscriber.py`); a driver only moves batches
to and from its broker and classifies its own errors. Drivers never retry:
they say whether an error is retryable and the portable layer decides.

Every backend is one module or package in `drivers/` whose name is its URL
scheme (`drivers/kafka/` serves `kafka://`); the portable layer finds it by
that name, so adding a backend edits nothing else. Each has the same shape
(`fashionstream.pubsub.drivers.DriverModule`):

    # Constants and URL grammar: importable without the backend's client library,
    # so URL validation and help texts work in any install.
    SCHEME: str                        # "mem", "kafka", "gcppubsub": the module's own name
    EXTRA: str | None                  # the extra that installs the client library ("kafka"); None: none needed
    CLOUDEVENTS_PREFIX: str            # attribute prefix of the CloudEvents binding: "ce_" (Kafka headers), "ce-"
    BROKER_URL_FORM: str               # for help texts: "kafka://HOST:PORT[,HOST:PORT...]"
    TOPIC_QUERY_PARAMS: frozenset[str]           # query parameters a topic URL may carry
    SUBSCRIPTION_QUERY_PARAMS: frozenset[str]    # ... a subscription URL may carry ("group", "subscription")
    NATIVE_ACK_DEADLINES: bool         # False (Kafka): the portable layer emulates ack deadlines
    API_BROKER_TYPE: str               # its name in `PubSubAPI(broker_type)`: "Kafka", "GooglePubSub", "Memory"
    def check_broker_url(url: ParsedURL) -> None                       # InvalidArgument unless a broker URL
    def topic_url(broker: ParsedURL, topic: str) -> str
    def subscription_url(broker: ParsedURL, topic: str, subscription: str) -> str
    def resource_names(url: ParsedURL) -> tuple[str | None, str | None]   # (topic, subscription); checks the URL
    def topic_reference(reference: str, url: ParsedURL) -> str          # admin: short topic name of a reference
    def api_config(config: dict[str, Any]) -> ApiConfig                 # PubSubAPI: takes its keys out of config

    # Opening: the client library is imported here, not at module level.
    def open_topic_driver(url: ParsedURL, options: dict[str, object]) -> TopicDriver
    def open_subscription_driver(url: ParsedURL, options: dict[str, object],
                                 flow: FlowControl | None = None) -> SubscriptionDriver   # see FlowControl
    def open_admin_driver(url: ParsedURL, options: dict[str, object]) -> AdminDriver

A backend passes when `tests/pubsub_conformance.py` passes on it.

Conventions the portable layer relies on:

- The portable layer parses every URL with `resource_names` (which raises
  InvalidArgument for a URL outside the driver's grammar: a bad port, a
  missing topic) and checks its query parameters against TOPIC_QUERY_PARAMS /
  SUBSCRIPTION_QUERY_PARAMS before calling a driver, and removes its own
  portable options (batch_size, linger, max_in_flight, send_timeout,
  ack_deadline, max_outstanding, receive_batch_size, ...) from `options`;
  what is left are native client options, which a driver passes to its client
  or rejects with `errors.InvalidArgument`.
- `open_*_driver` has no driver object yet to classify errors with, so it
  raises `fashionstream.pubsub.errors` exceptions itself (NotFound,
  InvalidArgument, Unavailable), built with `errors.from_code` from its own
  classification, with the native error chained. An ImportError of the client
  library while opening becomes `MissingExtra` naming `EXTRA`.
- `TopicDriver.send_batch` may be called from several threads at once
  (concurrent in-flight batches). A `SubscriptionDriver` is called from one
  thread at a time (whichever thread has the subscriber's turn: a receiving
  caller or the subscriber's worker); `close` comes after the last turn.
- `AdminDriver` methods take short names, never URLs: "images", "service".
  The driver adds what its URL says (Kafka: the bootstrap servers; Pub/Sub:
  the project). For Kafka, `create_subscription(group, topic=...)` only checks
  that the topic exists (consumer groups need no creation); for `mem` the
  subscription belongs to `topic`.
- `open_subscription_driver` gets the subscriber's `FlowControl`: the most
  messages and body bytes it holds (buffered + delivered, not yet acked). The
  subscriber enforces both itself by not fetching while either is reached; a
  driver uses them to size what its client fetches or prefetches on its own
  (Kafka: librdkafka's fetch and queue limits) or what a pushing broker may
  send (Pub/Sub StreamingPull's flow control), so that memory stays bounded
  below the subscriber too. None (a driver opened directly, as in tests): the
  portable defaults, `SubscriberSettings().flow_control()`.
- A `SubscriptionDriver` whose broker has its own ack deadlines may also have
  `lease_seconds` (the deadline, in seconds) and `extend_leases(ack_ids)` (give
  those messages another deadline from now, Pub/Sub's ModifyAckDeadline): the
  subscriber then renews the lease of a message held past half its deadline.
- An `AdminDriver` may also have `name`, `error_code(error)` and
  `is_retryable(error)` like the other drivers; `fashionstream.pubsub.admin`
  then wraps and retries its errors the same way (without them, native errors
  become a plain `PubSubError` and are not retried).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, Protocol, runtime_checkable

from fashionstream.pubsub.errors import ErrorCode
from fashionstream.pubsub.message import Message


@dataclass(frozen=True)
class ParsedURL:
    """A broker URL split into the parts drivers need.

    `kafka://127.0.0.1:9092/images?group=service` ->
        scheme="kafka", host="127.0.0.1:9092", path="images", query={"group": "service"}
    `gcppubsub://projects/P/topics/images` ->
        scheme="gcppubsub", host="projects", path="P/topics/images", query={}
    `mem://images?subscription=service` ->
        scheme="mem", host="images", path="", query={"subscription": "service"}
    """

    raw: str
    scheme: str
    host: str
    path: str
    query: Mapping[str, str]


@dataclass(frozen=True)
class FlowControl:
    """What a subscriber holds at most: buffered plus delivered-but-unacked messages, and their body bytes.

    A message larger than `max_bytes` is still delivered, alone. Made from the portable options
    `max_outstanding` and `max_outstanding_bytes`.
    """

    max_messages: int
    max_bytes: int


#: The subscription (Kafka: consumer group) `PubSubAPI.receive` uses when the config names none.
API_DEFAULT_SUBSCRIPTION = "fashionstream"


@dataclass(frozen=True)
class ApiConfig:
    """What `PubSubAPI(broker_type, **config)` needs from a backend, made by its `api_config(config)`."""

    broker_url: str
    #: The subscription `receive(source)` reads topic `source` as. None: `source` names the subscription
    #: itself, and the backend's subscription URLs do not contain the topic (Pub/Sub).
    subscription: str | None
    #: Default of the facade's `create_missing`: create topics and subscriptions on first use.
    create_missing: bool = False


#: The attributes of a message that has none: one shared, read-only mapping instead of a dict per message.
NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})


class OutgoingMessage(NamedTuple):
    """One message to send: what `Publisher.send_batch` takes and `TopicDriver.send_batch` receives.

    `OutgoingMessage(b"...", {"content-type": "image/png"}, key="camera-7")`. A tuple, so a
    plain `(data, attributes, key)` tuple is the same thing, and a driver reads it without a
    copy. The publisher hands drivers `bytes` data, a `dict` of str (or `NO_ATTRIBUTES`) and a
    str or None key, checked and copied from what the caller passed.
    """

    data: bytes
    attributes: Mapping[str, str] = NO_ATTRIBUTES
    key: str | None = None


#: What `SubscriptionDriver.receive_batch` returns: the very `Message` the caller receives, built
#: once by the driver (positional: `Message(data, attributes, key, id, ack_id, publish_time,
#: delivery_attempt)`); the subscriber attaches itself when it hands the message out. `ack_id` is
#: opaque to the portable layer, which gives it back unchanged to `send_acks` / `send_nacks`; it
#: must be hashable so acks can be de-duplicated. `publish_time` may be a `datetime` or POSIX
#: seconds (a float, turned into a datetime only if the caller reads it).
IncomingMessage = Message


@runtime_checkable
class TopicDriver(Protocol):
    """Sends batches to one topic."""

    #: Human-readable name used in error messages, e.g. "kafka topic 'images' at 127.0.0.1:9092".
    name: str

    def send_batch(self, messages: Sequence[OutgoingMessage], timeout: float) -> list[str]:
        """Send all messages; return one broker-assigned id per message, in order.

        Return only once the broker has confirmed every message (durably accepted).
        Raise the native error on failure; never retry.
        """
        ...

    def is_retryable(self, error: BaseException) -> bool:
        """True if sending the same batch again may succeed."""
        ...

    def error_code(self, error: BaseException) -> ErrorCode:
        """Classify a native error raised by this driver."""
        ...

    def close(self) -> None:
        """Release native resources. Called once, after the last send_batch."""
        ...


@runtime_checkable
class SubscriptionDriver(Protocol):
    """Receives batches from one subscription (Pub/Sub) or consumer group (Kafka)."""

    name: str

    def receive_batch(self, max_messages: int, timeout: float) -> list[IncomingMessage]:
        """Return between 0 and max_messages messages, waiting at most `timeout` seconds.

        An empty list means nothing arrived in time; it is not an error.
        """
        ...

    def send_acks(self, ack_ids: Sequence[Hashable]) -> None:
        """Acknowledge messages; acking an already-acked id is harmless."""
        ...

    def can_nack(self) -> bool:
        """True if the broker supports negative acknowledgement (possibly emulated)."""
        ...

    def send_nacks(self, ack_ids: Sequence[Hashable]) -> None:
        """Ask for prompt redelivery of these messages."""
        ...

    def is_retryable(self, error: BaseException) -> bool: ...

    def error_code(self, error: BaseException) -> ErrorCode: ...

    def close(self) -> None:
        """Stop receiving. Unacked messages must be redelivered to another consumer later."""
        ...


@runtime_checkable
class AdminDriver(Protocol):
    """Creates and deletes topics and subscriptions. Used by `fashionstream.pubsub.admin`."""

    def create_topic(self, topic: str, *, partitions: int = 1, replication_factor: int | None = None) -> bool:
        """Create `topic` if missing. Return True if it was created, False if it existed.

        `replication_factor` None: the broker's default (managed Kafka services refuse 1).
        """
        ...

    def create_subscription(
        self,
        subscription: str,
        *,
        topic: str,
        ack_deadline_s: int = 30,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
    ) -> bool:
        """Create `subscription` on `topic` if missing (Kafka: checks the topic; groups need no creation)."""
        ...

    def topic_exists(self, topic: str) -> bool:
        """Whether `topic` exists now (the service checks that its topics have not vanished)."""
        ...

    def delete_topic(self, topic: str) -> None: ...

    def delete_subscription(self, subscription: str) -> None: ...

    def close(self) -> None: ...


__all__ = [
    "API_DEFAULT_SUBSCRIPTION",
    "AdminDriver",
    "ApiConfig",
    "ErrorCode",
    "FlowControl",
    "NO_ATTRIBUTES",
    "IncomingMessage",
    "OutgoingMessage",
    "ParsedURL",
    "SubscriptionDriver",
    "TopicDriver",
]
