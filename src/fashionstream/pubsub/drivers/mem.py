"""The `mem://` backend: an in-process broker with Pub/Sub-like semantics, for tests and demos.

One broker per process, shared by every thread. It behaves like a real broker
where the portable layer can tell the difference:

- Topics and subscriptions exist only once created (`admin.create_topic`,
  `admin.create_subscription`); opening or publishing to a missing one raises NotFound.
- A subscription gets every message published after it was created; the
  consumers of one subscription share its messages.
- A delivered message is outstanding until acked. It is delivered again after
  the subscription's ack deadline, at once after a nack, and at once when its
  consumer closes. `delivery_attempt` counts deliveries.
- With a dead-letter topic, a message that was delivered `max_delivery_attempts`
  times without an ack moves there instead of being delivered again.
- Ordering keys: while a message with key K is outstanding, later messages
  with key K wait (like Pub/Sub ordering keys or a Kafka partition).

URLs: `mem://` (the broker), `mem://images` (topic), `mem://images?subscription=service`
(subscription 'service' of topic 'images'; subscription names are per topic).
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import (
    API_DEFAULT_SUBSCRIPTION,
    ApiConfig,
    ErrorCode,
    FlowControl,
    IncomingMessage,
    OutgoingMessage,
    ParsedURL,
)
from fashionstream.pubsub.urls import parse_reference, safe_url

SCHEME = "mem"
EXTRA: str | None = None  # no client library: always available
CLOUDEVENTS_PREFIX = "ce-"  # messages carry string attributes like Pub/Sub's, so its binding fits
BROKER_URL_FORM = "mem:// (embedded, this process only)"
TOPIC_QUERY_PARAMS: frozenset[str] = frozenset()
SUBSCRIPTION_QUERY_PARAMS: frozenset[str] = frozenset({"subscription"})
NATIVE_ACK_DEADLINES = True
API_BROKER_TYPE = "Memory"


# ---------------------------------------------------------------- errors


class MemoryBrokerError(Exception):
    """The native error of this backend, carrying its own classification."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


def classify(error: BaseException) -> ErrorCode:
    """The portable meaning of a native error raised by this driver."""
    return error.code if isinstance(error, MemoryBrokerError) else ErrorCode.UNKNOWN


def retryable(error: BaseException) -> bool:
    """Never: nothing in an in-process broker gets better by waiting."""
    return False


# ---------------------------------------------------------------- URLs


def check_broker_url(url: ParsedURL) -> None:
    """The one mem broker is `mem://`: a URL naming a topic is not a broker URL."""
    if url.host or url.path:
        raise errors.InvalidArgument(
            f"{safe_url(url.raw)!r} is not a broker URL: it names a topic; the embedded broker is just mem://"
        )


def topic_url(broker: ParsedURL, topic: str) -> str:
    return f"mem://{topic}"


def subscription_url(broker: ParsedURL, topic: str, subscription: str) -> str:
    return f"mem://{topic}?{urlencode({'subscription': subscription})}"


def resource_names(url: ParsedURL) -> tuple[str | None, str | None]:
    """(topic, subscription) of `mem://TOPIC?subscription=NAME`; either may be missing."""
    if url.path:
        raise errors.InvalidArgument(
            f"{safe_url(url.raw)!r} is not a mem URL; expected mem://TOPIC or mem://TOPIC?subscription=NAME"
        )
    return url.host or None, url.query.get("subscription") or None


def topic_reference(reference: str, url: ParsedURL) -> str:
    """The topic named by `reference`: a topic name or a mem:// topic URL."""
    parsed = parse_reference(reference, SCHEME)
    if parsed is None:
        return reference
    topic = resource_names(parsed)[0]
    if topic is None:
        raise errors.InvalidArgument(f"{safe_url(reference)!r} names no topic")
    return topic


def api_config(config: dict[str, Any]) -> ApiConfig:
    """`PubSubAPI("Memory", subscription=...)`: receive(topic) reads it as `subscription`.

    Topics and subscriptions are created on first use by default: an embedded
    broker starts empty every time, so there is nothing to create beforehand.
    """
    subscription = str(config.pop("subscription", API_DEFAULT_SUBSCRIPTION))
    return ApiConfig("mem://", subscription, create_missing=True)


def _topic_name(url: ParsedURL) -> str:
    topic = resource_names(url)[0]
    if topic is None:
        raise errors.InvalidArgument(
            f"{safe_url(url.raw)!r} names no topic; expected mem://TOPIC or mem://TOPIC?subscription=NAME"
        )
    return topic


def _reject_options(options: dict[str, object]) -> None:
    if options:
        raise errors.InvalidArgument(
            f"unknown option(s) {', '.join(sorted(options))} for mem://: the in-memory backend takes only the "
            "portable options, no native ones"
        )


# ---------------------------------------------------------------- broker


@dataclass(frozen=True)
class _Record:
    seq: int
    id: str
    data: bytes
    attributes: Mapping[str, str]
    key: str | None
    publish_time: datetime


@dataclass
class _Entry:
    """One message as seen by one subscription."""

    record: _Record
    attempts: int = 0

    def __lt__(self, other: _Entry) -> bool:  # pending lists stay in publish order
        return self.record.seq < other.record.seq


@dataclass
class _Outstanding:
    entry: _Entry
    deadline: float
    consumer: int


@dataclass
class _Subscription:
    name: str
    topic: str
    ack_deadline: float
    dead_letter_topic: str | None
    max_delivery_attempts: int
    pending: list[_Entry] = field(default_factory=list)
    outstanding: dict[int, _Outstanding] = field(default_factory=dict)
    keys_out: set[str] = field(default_factory=set)


@dataclass
class _Topic:
    name: str
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    published: int = 0


class MemoryBroker:
    """The process-global broker. All state is guarded by one condition variable."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._topics: dict[str, _Topic] = {}
        self._seq = itertools.count()
        self._ack_ids = itertools.count(1)
        self._consumers = itertools.count(1)

    # -- admin -------------------------------------------------------------------------------

    def create_topic(self, topic: str) -> bool:
        with self._changed:
            if topic in self._topics:
                return False
            self._topics[topic] = _Topic(topic)
            return True

    def create_subscription(
        self,
        topic: str,
        subscription: str,
        *,
        ack_deadline_s: float = 30,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
    ) -> bool:
        with self._changed:
            owner = self._topic(topic)
            if subscription in owner.subscriptions:
                return False
            if dead_letter_topic is not None:
                self._topic(dead_letter_topic)
            owner.subscriptions[subscription] = _Subscription(
                subscription, topic, float(ack_deadline_s), dead_letter_topic, max_delivery_attempts
            )
            return True

    def topic_exists(self, topic: str) -> bool:
        with self._changed:
            return topic in self._topics

    def delete_topic(self, topic: str) -> None:
        with self._changed:
            self._topic(topic)
            del self._topics[topic]
            self._changed.notify_all()

    def delete_subscription(self, topic: str, subscription: str) -> None:
        with self._changed:
            self._subscription(topic, subscription)
            del self._topics[topic].subscriptions[subscription]
            self._changed.notify_all()

    def exists(self, topic: str, subscription: str | None = None) -> bool:
        with self._changed:
            owner = self._topics.get(topic)
            return owner is not None and (subscription is None or subscription in owner.subscriptions)

    # -- data path ---------------------------------------------------------------------------

    def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        now = datetime.now(UTC)
        with self._changed:
            owner = self._topic(topic)
            ids = []
            for message in messages:
                owner.published += 1
                record = _Record(
                    next(self._seq), str(owner.published), message.data, message.attributes, message.key, now
                )
                for sub in owner.subscriptions.values():
                    sub.pending.append(_Entry(record))  # seq only grows: appending keeps the order
                ids.append(record.id)
            self._changed.notify_all()
            return ids

    def new_consumer(self) -> int:
        return next(self._consumers)

    def receive(
        self, topic: str, subscription: str, consumer: int, max_messages: int, timeout: float
    ) -> list[IncomingMessage]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                sub = self._subscription(topic, subscription)
                now = time.monotonic()
                self._requeue_expired(sub, now)
                taken = self._take(sub, consumer, max_messages, now)
                if taken:
                    return taken
                wake = deadline
                if sub.outstanding:  # also wake when the next ack deadline passes
                    wake = min(wake, min(o.deadline for o in sub.outstanding.values()))
                if now >= deadline:
                    return []
                self._changed.wait(max(0.0, wake - now))

    def ack(self, topic: str, subscription: str, ack_ids: Sequence[Hashable]) -> None:
        with self._changed:
            sub = self._subscription(topic, subscription)
            for ack_id in ack_ids:
                held = sub.outstanding.pop(ack_id, None)  # type: ignore[call-overload]
                if held is not None:
                    self._release_key(sub, held.entry)
            self._changed.notify_all()

    def nack(self, topic: str, subscription: str, ack_ids: Sequence[Hashable]) -> None:
        with self._changed:
            sub = self._subscription(topic, subscription)
            for ack_id in ack_ids:
                held = sub.outstanding.pop(ack_id, None)  # type: ignore[call-overload]
                if held is not None:
                    self._requeue(sub, held.entry)
            self._changed.notify_all()

    def release_consumer(self, topic: str, subscription: str, consumer: int) -> None:
        """A consumer left: everything it held goes back to the subscription at once."""
        with self._changed:
            owner = self._topics.get(topic)
            sub = owner.subscriptions.get(subscription) if owner else None
            if sub is None:
                return
            for ack_id in [a for a, held in sub.outstanding.items() if held.consumer == consumer]:
                self._requeue(sub, sub.outstanding.pop(ack_id).entry)
            self._changed.notify_all()

    # -- internals (condition held) ----------------------------------------------------------

    def _topic(self, topic: str) -> _Topic:
        try:
            return self._topics[topic]
        except KeyError:
            raise MemoryBrokerError(f"mem topic {topic!r} does not exist", ErrorCode.NOT_FOUND) from None

    def _subscription(self, topic: str, subscription: str) -> _Subscription:
        try:
            return self._topic(topic).subscriptions[subscription]
        except KeyError:
            raise MemoryBrokerError(
                f"mem subscription {subscription!r} on topic {topic!r} does not exist", ErrorCode.NOT_FOUND
            ) from None

    def _release_key(self, sub: _Subscription, entry: _Entry) -> None:
        if entry.record.key is not None:
            sub.keys_out.discard(entry.record.key)

    def _requeue(self, sub: _Subscription, entry: _Entry) -> None:
        self._release_key(sub, entry)
        bisect.insort(sub.pending, entry)

    def _requeue_expired(self, sub: _Subscription, now: float) -> None:
        expired = [a for a, held in sub.outstanding.items() if held.deadline <= now]
        for ack_id in expired:
            self._requeue(sub, sub.outstanding.pop(ack_id).entry)

    def _take(self, sub: _Subscription, consumer: int, max_messages: int, now: float) -> list[IncomingMessage]:
        taken: list[IncomingMessage] = []
        kept: list[_Entry] = []  # entries skipped because their key is busy
        index = 0
        for index, entry in enumerate(sub.pending):  # noqa: B007 - index is used after the loop
            if len(taken) >= max_messages:
                break
            key = entry.record.key
            if key is not None and key in sub.keys_out:
                kept.append(entry)
                continue
            if sub.dead_letter_topic is not None and entry.attempts >= sub.max_delivery_attempts:
                dead = self._topics.get(sub.dead_letter_topic)
                if dead is not None:
                    record = entry.record
                    self._publish_locked(dead, OutgoingMessage(record.data, dict(record.attributes), record.key))
                continue  # moved (or dropped, if the dead-letter topic was deleted)
            entry.attempts += 1
            ack_id = next(self._ack_ids)
            sub.outstanding[ack_id] = _Outstanding(entry, now + sub.ack_deadline, consumer)
            if key is not None:
                sub.keys_out.add(key)
            record = entry.record
            taken.append(
                IncomingMessage(
                    record.data,
                    dict(record.attributes),  # each delivery gets its own: a consumer may change it
                    record.key,
                    record.id,
                    ack_id,
                    record.publish_time,
                    entry.attempts,
                )
            )
        else:
            index = len(sub.pending)
        sub.pending = kept + sub.pending[index:]
        return taken

    def _publish_locked(self, owner: _Topic, message: OutgoingMessage) -> None:
        owner.published += 1
        record = _Record(
            next(self._seq), str(owner.published), message.data, message.attributes, message.key, datetime.now(UTC)
        )
        for sub in owner.subscriptions.values():
            sub.pending.append(_Entry(record))


BROKER = MemoryBroker()


# ---------------------------------------------------------------- topic


class MemoryTopicDriver:
    """Publishes batches to one topic of the process-global broker."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.name = f"mem topic {topic!r}"

    def send_batch(self, messages: Sequence[OutgoingMessage], timeout: float) -> list[str]:
        return BROKER.publish(self.topic, messages)

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- subscription


class MemorySubscriptionDriver:
    """Receives from one subscription of the process-global broker, as one consumer."""

    def __init__(self, topic: str, subscription: str) -> None:
        self.topic = topic
        self.subscription = subscription
        self.name = f"mem subscription {subscription!r} on topic {topic!r}"
        self._consumer = BROKER.new_consumer()

    def receive_batch(self, max_messages: int, timeout: float) -> list[IncomingMessage]:
        return BROKER.receive(self.topic, self.subscription, self._consumer, max_messages, timeout)

    def send_acks(self, ack_ids: Sequence[Hashable]) -> None:
        BROKER.ack(self.topic, self.subscription, ack_ids)

    def can_nack(self) -> bool:
        return True

    def send_nacks(self, ack_ids: Sequence[Hashable]) -> None:
        BROKER.nack(self.topic, self.subscription, ack_ids)

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        BROKER.release_consumer(self.topic, self.subscription, self._consumer)


# ---------------------------------------------------------------- admin


class MemoryAdminDriver:
    """Creates and deletes topics and subscriptions; subscriptions belong to the admin URL's topic."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.name = f"mem topic {topic!r}"

    def create_topic(self, topic: str, *, partitions: int = 1, replication_factor: int | None = None) -> bool:
        return BROKER.create_topic(topic)

    def create_subscription(
        self,
        subscription: str,
        *,
        topic: str,
        ack_deadline_s: int = 30,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
    ) -> bool:
        return BROKER.create_subscription(
            topic,
            subscription,
            ack_deadline_s=ack_deadline_s,
            dead_letter_topic=dead_letter_topic,
            max_delivery_attempts=max_delivery_attempts,
        )

    def topic_exists(self, topic: str) -> bool:
        return BROKER.topic_exists(topic)

    def delete_topic(self, topic: str) -> None:
        BROKER.delete_topic(topic)

    def delete_subscription(self, subscription: str) -> None:
        BROKER.delete_subscription(self.topic, subscription)

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- module shape


def open_topic_driver(url: ParsedURL, options: dict[str, object]) -> MemoryTopicDriver:
    _reject_options(options)
    topic = _topic_name(url)
    if not BROKER.exists(topic):
        raise errors.from_code(ErrorCode.NOT_FOUND, f"mem topic {topic!r} does not exist")
    return MemoryTopicDriver(topic)


def open_subscription_driver(
    url: ParsedURL, options: dict[str, object], flow: FlowControl | None = None
) -> MemorySubscriptionDriver:
    # `flow` needs nothing here: the broker only hands over what a fetch asks for, and the
    # subscriber sizes its fetches within the limits.
    _reject_options(options)
    topic = _topic_name(url)
    subscription = url.query.get("subscription")
    if not subscription:
        raise errors.InvalidArgument(
            f"{safe_url(url.raw)!r} names no subscription; use mem://{topic}?subscription=NAME"
        )
    if not BROKER.exists(topic, subscription):
        raise errors.from_code(
            ErrorCode.NOT_FOUND, f"mem subscription {subscription!r} on topic {topic!r} does not exist"
        )
    return MemorySubscriptionDriver(topic, subscription)


def open_admin_driver(url: ParsedURL, options: dict[str, object]) -> MemoryAdminDriver:
    _reject_options(options)
    return MemoryAdminDriver(_topic_name(url))


__all__ = [
    "API_BROKER_TYPE",
    "BROKER",
    "BROKER_URL_FORM",
    "CLOUDEVENTS_PREFIX",
    "EXTRA",
    "NATIVE_ACK_DEADLINES",
    "SCHEME",
    "SUBSCRIPTION_QUERY_PARAMS",
    "TOPIC_QUERY_PARAMS",
    "MemoryAdminDriver",
    "MemoryBroker",
    "MemoryBrokerError",
    "MemorySubscriptionDriver",
    "MemoryTopicDriver",
    "api_config",
    "check_broker_url",
    "classify",
    "open_admin_driver",
    "open_subscription_driver",
    "open_topic_driver",
    "resource_names",
    "retryable",
    "subscription_url",
    "topic_reference",
    "topic_url",
]
