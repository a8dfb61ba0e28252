"""The `kafka://` backend: Apache Kafka through confluent-kafka (librdkafka).

URLs: `kafka://HOST:PORT[,HOST:PORT...]/TOPIC` (topic) and `kafka://HOST:PORT/TOPIC?group=GROUP`
(subscription = consumer group GROUP reading TOPIC). Admin URLs need only the host part.

Guarantees and how they are kept:

- Publishing: the producer is idempotent with acks=all, so a retried batch never reorders or
  duplicates inside the broker; `send_batch` returns only when every delivery report came back.
  Message keys pick the partition, so messages with one key keep their order.
- At-least-once receiving: offsets are committed by hand, never automatically. For each partition
  the driver remembers the offsets it handed out; the committed offset only moves past a message
  once it *and every message before it* is acked. An acked message behind an unacked one therefore
  does not commit anything, and a consumer that dies loses no unacked message.
- Nack: Kafka has no per-message nack, so the partition is rewound (`seek`) to the lowest nacked
  offset; the messages after it come again too (duplicates are allowed by at-least-once).
- Kafka has no ack deadline: the portable layer emulates it (`NATIVE_ACK_DEADLINES = False`)
  by nacking messages held too long.

Native options (any librdkafka property such as `linger.ms`, `security.protocol`, `sasl.*`) are
passed to the client as given and never logged.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin re-exports it without declaring so

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import ErrorCode, IncomingMessage, OutgoingMessage, ParsedURL
from fashionstream.pubsub.urls import is_secret

SCHEME = "kafka"
TOPIC_QUERY_PARAMS: frozenset[str] = frozenset()
SUBSCRIPTION_QUERY_PARAMS: frozenset[str] = frozenset({"group"})
NATIVE_ACK_DEADLINES = False

#: How long opening a topic or subscription waits for the broker's metadata before giving up.
METADATA_TIMEOUT_S = 10.0
#: Largest message the clients accept; the topics created by `create_topic` allow the same.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024

_log = logging.getLogger(__name__)

# Options the driver sets itself from the URL or needs for its guarantees.
_FROM_URL = frozenset({"bootstrap.servers", "group.id"})
_CONSUMER_FIXED = {"enable.auto.commit": False, "enable.auto.offset.store": False}


# ---------------------------------------------------------------- errors


def _code(name: str) -> int | None:
    # Some codes exist only in newer librdkafka versions; a missing one is simply not mapped.
    value = getattr(KafkaError, name, None)
    return value if isinstance(value, int) else None


def _codes(*names: str) -> frozenset[int]:
    return frozenset(c for c in map(_code, names) if c is not None)


_NOT_FOUND = _codes("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION", "GROUP_ID_NOT_FOUND")
_ALREADY_EXISTS = _codes("TOPIC_ALREADY_EXISTS")
_UNAVAILABLE = _codes(
    "_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_QUEUE_FULL", "LEADER_NOT_AVAILABLE",
    "NOT_LEADER_FOR_PARTITION", "NOT_LEADER_OR_FOLLOWER", "BROKER_NOT_AVAILABLE", "NOT_ENOUGH_REPLICAS",
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS",
    "NOT_COORDINATOR", "_WAIT_COORD", "NETWORK_EXCEPTION", "KAFKA_STORAGE_ERROR", "REBALANCE_IN_PROGRESS",
)  # fmt: skip
_TIMEOUT = _codes("_MSG_TIMED_OUT", "_TIMED_OUT", "_TIMED_OUT_QUEUE", "REQUEST_TIMED_OUT")
_INVALID = _codes(
    "MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "INVALID_CONFIG", "_INVALID_ARG",
    "INVALID_TOPIC_EXCEPTION", "INVALID_PARTITIONS", "INVALID_REPLICATION_FACTOR", "INVALID_REQUEST",
    "POLICY_VIOLATION", "NON_EMPTY_GROUP", "INVALID_RECORD",
)  # fmt: skip
_DENIED = _codes(
    "TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED",
    "SASL_AUTHENTICATION_FAILED", "_AUTHENTICATION", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
)  # fmt: skip
_CLOSED = _codes("_DESTROY")


def _kafka_error(error: BaseException) -> KafkaError | None:
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return error.args[0]
    return None


def classify(error: BaseException) -> ErrorCode:
    """The portable meaning of a native error raised by this driver."""
    kerr = _kafka_error(error)
    if kerr is not None:
        code = kerr.code()
        for codes, result in (
            (_NOT_FOUND, ErrorCode.NOT_FOUND),
            (_ALREADY_EXISTS, ErrorCode.ALREADY_EXISTS),
            (_UNAVAILABLE, ErrorCode.UNAVAILABLE),
            (_TIMEOUT, ErrorCode.TIMEOUT),
            (_INVALID, ErrorCode.INVALID_ARGUMENT),
            (_DENIED, ErrorCode.PERMISSION_DENIED),
            (_CLOSED, ErrorCode.CLOSED),
        ):
            if code in codes:
                return result
        return ErrorCode.UNKNOWN
    if isinstance(error, TimeoutError):  # our own wait for delivery reports ran out
        return ErrorCode.TIMEOUT
    if isinstance(error, BufferError):  # librdkafka's local queue is full
        return ErrorCode.UNAVAILABLE
    if isinstance(error, RuntimeError) and "closed" in str(error).lower():  # "Consumer closed"
        return ErrorCode.CLOSED
    return ErrorCode.UNKNOWN


def retryable(error: BaseException) -> bool:
    """Transient broker trouble is worth another try; a missing topic or a bad message is not."""
    kerr = _kafka_error(error)
    if kerr is not None:
        if kerr.fatal():  # the idempotent producer is unusable; only a new client helps
            return False
        return classify(error) in (ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT) or (
            kerr.retriable() and kerr.code() not in _NOT_FOUND
        )
    return isinstance(error, (TimeoutError, BufferError))


def _scrub(text: str, options: Mapping[str, object]) -> str:
    """`text` with the values of secret options blanked, for librdkafka messages that quote config values."""
    for key, value in options.items():
        if is_secret(key) and isinstance(value, str) and value:
            text = text.replace(value, "***")
    return text


def _portable(error: BaseException, message: str, options: Mapping[str, object] | None = None) -> errors.PubSubError:
    """A `fashionstream.pubsub.errors` exception for `error`, used where no driver object classifies it yet."""
    cls: type[errors.PubSubError] = {
        ErrorCode.NOT_FOUND: errors.NotFound,
        ErrorCode.ALREADY_EXISTS: errors.AlreadyExists,
        ErrorCode.UNAVAILABLE: errors.Unavailable,
        ErrorCode.TIMEOUT: errors.Timeout,
        ErrorCode.INVALID_ARGUMENT: errors.InvalidArgument,
        ErrorCode.PERMISSION_DENIED: errors.PermissionDenied,
        ErrorCode.CLOSED: errors.Closed,
    }.get(classify(error), errors.PubSubError)
    detail = _scrub(str(error), options or {})
    wrapped = cls(f"{message}: {detail}")
    wrapped.__cause__ = error
    return wrapped


# ---------------------------------------------------------------- configuration


def _bootstrap(url: ParsedURL) -> str:
    if not url.host:
        raise errors.InvalidArgument(
            f"{url.raw!r} names no broker; expected kafka://HOST:PORT/TOPIC, e.g. kafka://127.0.0.1:9092/images"
        )
    return url.host


def _topic(url: ParsedURL) -> str:
    topic = url.path.strip("/")
    if not topic or "/" in topic:
        raise errors.InvalidArgument(
            f"{url.raw!r} must name exactly one topic after the broker address, e.g. kafka://127.0.0.1:9092/images"
        )
    return topic


def _client_config(url: ParsedURL, options: Mapping[str, object], defaults: Mapping[str, object]) -> dict[str, Any]:
    """Defaults, then the caller's native options, with the broker address from the URL."""
    clashes = sorted(_FROM_URL & set(options))
    if clashes:
        raise errors.InvalidArgument(
            f"option(s) {', '.join(clashes)} come from the URL ({url.raw!r}: broker address and ?group=); "
            "remove them from the options"
        )
    for key in options:
        if not isinstance(key, str):
            raise errors.InvalidArgument(f"Kafka option names must be strings, got {key!r}")
    config: dict[str, Any] = {"bootstrap.servers": _bootstrap(url), **defaults, **options}
    # librdkafka logs through Python logging instead of writing to stderr.
    config.setdefault("logger", logging.getLogger("fashionstream.pubsub.kafka.librdkafka"))
    return config


def _make_client(factory: Callable[[dict[str, Any]], Any], config: dict[str, Any], what: str) -> Any:
    try:
        return factory(config)
    except (KafkaException, ValueError, TypeError) as err:
        # Messages quote the offending property, possibly with its value: scrub secrets.
        raise errors.InvalidArgument(f"invalid Kafka option for {what}: {_scrub(str(err), config)}") from err


def _check_topic(client: Any, topic: str, address: str, what: str, timeout: float | None = None) -> int:
    """Raise NotFound / Unavailable unless `topic` exists; return its partition count.

    Without this a missing topic would only show up as a delivery failure after librdkafka's
    metadata propagation wait (30 s), and an unreachable broker as silence.
    """
    timeout = METADATA_TIMEOUT_S if timeout is None else timeout  # read at call time: tests lower it
    try:
        metadata = client.list_topics(topic=topic, timeout=timeout)
    except KafkaException as err:
        raise errors.Unavailable(
            f"{what}: no answer from Kafka at {address} within {timeout:.0f} s ({err}); is the broker running "
            "and reachable at that address? (`scripts/services status`)"
        ) from err
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        native = KafkaException(info.error) if info is not None and info.error is not None else None
        if native is None or native.args[0].code() in _NOT_FOUND:
            raise errors.NotFound(
                f"{what}: topic {topic!r} does not exist on {address}; create it first "
                "(fashionstream.pubsub.admin.create_topic)"
            ) from native
        raise _portable(native, f"{what}: metadata for topic {topic!r} at {address}")
    return len(info.partitions)


def _log_error(what: str) -> Callable[[KafkaError], None]:
    def on_error(err: KafkaError) -> None:
        # Transport errors are retried by librdkafka itself; they only explain a later timeout.
        _log.warning("%s: %s", what, err)

    return on_error


# ---------------------------------------------------------------- topic


class _PendingBatch:
    """Delivery reports of one `send_batch` call; callbacks may run on any thread that polls."""

    def __init__(self, size: int) -> None:
        self.ids: list[str] = [""] * size
        self.size = size
        self.error: KafkaError | None = None
        self.done = threading.Event()
        # next() on itertools.count is atomic under the GIL: a lock-free completion counter for
        # callbacks that several polling threads may run at once.
        self._reported = itertools.count(1)
        if size == 0:
            self.done.set()

    @property
    def remaining(self) -> int:
        """Messages without a confirmed id (not reported yet, or failed): for the timeout message."""
        return sum(1 for i in self.ids if not i)

    def callback(self, index: int) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                if self.error is None:
                    self.error = err
            else:
                self.ids[index] = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
            if next(self._reported) == self.size:
                self.done.set()

        return on_delivery


class KafkaTopicDriver:
    """Sends batches to one Kafka topic with an idempotent producer."""

    def __init__(self, url: ParsedURL, options: dict[str, object]) -> None:
        self._topic = _topic(url)
        self._address = _bootstrap(url)
        self.name = f"kafka topic {self._topic!r} at {self._address}"
        config = _client_config(
            url,
            options,
            {
                "enable.idempotence": True,
                "acks": "all",
                "message.max.bytes": MAX_MESSAGE_BYTES,
                # A send that cannot be delivered fails after this long instead of the default 5 minutes.
                "message.timeout.ms": 60_000,
                "error_cb": _log_error(f"kafka producer for {self._topic!r} at {self._address}"),
            },
        )
        self._producer: Producer = _make_client(Producer, config, self.name)
        _check_topic(self._producer, self._topic, self._address, f"opening {self.name}")

    def send_batch(self, messages: Sequence[OutgoingMessage], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        batch = _PendingBatch(len(messages))
        producer, topic = self._producer, self._topic
        for index, message in enumerate(messages):
            headers: list[tuple[str, str | bytes | None]] | None = (
                [(k, v.encode()) for k, v in message.attributes.items()] if message.attributes else None
            )
            key = message.key.encode() if message.key is not None else None
            while True:
                try:
                    producer.produce(topic, message.data, key, headers=headers, on_delivery=batch.callback(index))
                    break
                except BufferError:
                    # The local queue is full: serving delivery reports makes room.
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"{self.name}: local send queue still full after {timeout:.1f} s") from None
                    producer.poll(0.05)
        # Delivery callbacks run inside poll(); other threads' polls may serve ours, hence the short waits.
        while not batch.done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name}: {batch.remaining} of {len(messages)} messages not confirmed within {timeout:.1f} s"
                )
            producer.poll(min(remaining, 0.02))
        if batch.error is not None:
            raise KafkaException(batch.error)
        return batch.ids

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        # send_batch already waited for every report; this only drains stragglers of failed batches.
        self._producer.flush(5.0)


# ---------------------------------------------------------------- subscription


class _PartitionOffsets:
    """Which offsets of one partition were handed out, which are acked, and how far it is safe to commit.

    Offsets are remembered in delivery order (increasing). The head of that sequence moves on only
    while its first offset is acked, so the commit position never passes an unacked message.
    Kafka offsets may have gaps (compaction, transaction markers); only delivered offsets count.
    """

    __slots__ = ("delivered", "outstanding", "acked", "commit_position", "committed")

    def __init__(self) -> None:
        self.delivered: deque[int] = deque()
        self.outstanding: set[int] = set()
        self.acked: set[int] = set()
        self.commit_position: int | None = None  # next offset to commit (first not-yet-acked)
        self.committed: int | None = None  # last position sent to the broker

    def deliver(self, offset: int) -> None:
        if self.delivered and offset <= self.delivered[-1]:
            # The consumer went back (a seek we did not expect, an offset reset): forget what follows.
            self.rewind(offset)
        self.delivered.append(offset)
        self.outstanding.add(offset)

    def ack(self, offset: int) -> bool:
        """Mark `offset` acked; True if the commit position moved. Unknown or repeated acks change nothing."""
        if offset not in self.outstanding:
            return False
        self.outstanding.discard(offset)
        delivered = self.delivered
        if delivered[0] == offset and not self.acked:
            # The usual case, acks in delivery order: the head moves by one.
            delivered.popleft()
            self.commit_position = offset + 1
            return True
        self.acked.add(offset)
        moved = False
        while self.delivered and self.delivered[0] in self.acked:
            head = self.delivered.popleft()
            self.acked.discard(head)
            self.commit_position = head + 1
            moved = True
        return moved

    def rewind(self, offset: int) -> None:
        """Forget deliveries at or after `offset`: the partition is read again from there."""
        while self.delivered and self.delivered[-1] >= offset:
            dropped = self.delivered.pop()
            self.outstanding.discard(dropped)
            self.acked.discard(dropped)

    def pending_commit(self) -> int | None:
        if self.commit_position is not None and self.commit_position != self.committed:
            return self.commit_position
        return None


AckId = tuple[str, int, int]  # (topic, partition, offset)


class KafkaSubscriptionDriver:
    """Receives from one topic as a member of one consumer group, committing only acked offsets."""

    def __init__(self, url: ParsedURL, options: dict[str, object]) -> None:
        self._topic = _topic(url)
        self._address = _bootstrap(url)
        group = url.query.get("group", "")
        if not group:
            raise errors.InvalidArgument(
                f"{url.raw!r} names no consumer group; add ?group=NAME, e.g. kafka://{self._address}/{self._topic}"
                "?group=service"
            )
        self._group = group
        self.name = f"kafka group {group!r} on topic {self._topic!r} at {self._address}"
        fixed = sorted(k for k in _CONSUMER_FIXED if k in options)
        if fixed:
            raise errors.InvalidArgument(
                f"option(s) {', '.join(fixed)} cannot be set: the driver commits offsets itself, only past acked "
                "messages (at-least-once)"
            )
        config = _client_config(
            url,
            options,
            {
                # A new group reads the topic from the start, like a subscription created before the sends.
                "auto.offset.reset": "earliest",
                # Partitions of a dead consumer move on after 10 s rather than the default 45 s.
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
                "fetch.max.bytes": 4 * MAX_MESSAGE_BYTES,
                "error_cb": _log_error(f"kafka consumer of {self._topic!r} at {self._address}"),
                "on_commit": self._on_commit,
            },
        )
        config.update(_CONSUMER_FIXED)
        config["group.id"] = group
        self._consumer: Consumer = _make_client(Consumer, config, self.name)
        self._partitions: dict[tuple[str, int], _PartitionOffsets] = {}
        self._closed = False
        try:
            _check_topic(self._consumer, self._topic, self._address, f"opening {self.name}")
            self._consumer.subscribe(
                [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
        except BaseException:
            self._consumer.close()
            raise

    # -- rebalance callbacks: they run inside consume() / close(), on the subscriber's thread

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions[(tp.topic, tp.partition)] = _PartitionOffsets()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what is safe while we still own the partitions; unacked messages go to the next owner.
        self._commit([(tp.topic, tp.partition) for tp in partitions], asynchronous=False)
        for tp in partitions:
            self._partitions.pop((tp.topic, tp.partition), None)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group already gave them away (session timed out): committing now would fail or be wrong.
        for tp in partitions:
            self._partitions.pop((tp.topic, tp.partition), None)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            # Harmless for correctness: a later commit supersedes it, and uncommitted messages only come again.
            _log.warning("%s: offset commit failed: %s", self.name, err)

    def _commit(self, keys: Sequence[tuple[str, int]], *, asynchronous: bool) -> None:
        offsets = []
        for key in keys:
            state = self._partitions.get(key)
            position = state.pending_commit() if state is not None else None
            if state is not None and position is not None:
                offsets.append(TopicPartition(key[0], key[1], position))
                state.committed = position
        if not offsets:
            return
        if asynchronous:
            self._consumer.commit(offsets=offsets, asynchronous=True)
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:
            # Revoke and close commit synchronously and must not fail: the worst case is redelivery.
            _log.warning("%s: offset commit failed: %s", self.name, err)

    # -- driver protocol

    def receive_batch(self, max_messages: int, timeout: float) -> list[IncomingMessage]:
        if self._closed:
            raise RuntimeError(f"{self.name}: consumer closed")
        raw = self._consumer.consume(num_messages=max(1, max_messages), timeout=max(0.0, timeout))
        out: list[IncomingMessage] = []
        # Hot loop (every message passes here): names bound once.
        partitions, append = self._partitions, out.append
        for msg in raw:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal() or err.code() in _NOT_FOUND or err.code() in _DENIED:
                    raise KafkaException(err)
                _log.warning("%s: %s", self.name, err)  # transient; librdkafka keeps retrying
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if topic is None or partition is None or offset is None:
                continue  # only error events lack these, and they were handled above
            state = partitions.get((topic, partition))
            if state is None:  # a message of a partition revoked meanwhile: its next owner gets it
                continue
            state.deliver(offset)
            append(_incoming(msg, topic, partition, offset))
        return out

    def send_acks(self, ack_ids: Sequence[Hashable]) -> None:
        moved: set[tuple[str, int]] = set()
        partitions = self._partitions
        for ack_id in ack_ids:
            topic, partition, offset = _split_ack_id(ack_id)
            key = (topic, partition)
            state = partitions.get(key)
            # Acks for partitions no longer ours, or for deliveries already rewound, change nothing.
            if state is not None and state.ack(offset):
                moved.add(key)
        if moved:
            # Asynchronous: the next poll serves the result; a lost commit only means redelivery.
            self._commit(sorted(moved), asynchronous=True)

    def can_nack(self) -> bool:
        return True

    def send_nacks(self, ack_ids: Sequence[Hashable]) -> None:
        lowest: dict[tuple[str, int], int] = {}
        for ack_id in ack_ids:
            topic, partition, offset = _split_ack_id(ack_id)
            state = self._partitions.get((topic, partition))
            if state is None or offset not in state.outstanding:
                continue  # no longer ours, or already rewound past it
            key = (topic, partition)
            lowest[key] = min(offset, lowest.get(key, offset))
        for (topic, partition), offset in lowest.items():
            self._partitions[(topic, partition)].rewind(offset)
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as err:
                # Typically the partition was just revoked; it was never committed past `offset`,
                # so its next owner delivers the message again.
                _log.warning("%s: could not rewind partition %d to offset %d: %s", self.name, partition, offset, err)

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._commit(list(self._partitions), asynchronous=False)
        # Leaves the group at once, so the partitions (and their unacked messages) move on without
        # waiting for the session timeout.
        self._consumer.close()


def _split_ack_id(ack_id: Hashable) -> AckId:
    # Ack ids only ever come from _incoming, so unpacking is the whole check.
    try:
        topic, partition, offset = ack_id  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"not a kafka ack id: {ack_id!r}") from None
    return topic, partition, offset  # type: ignore[has-type]


def _incoming(msg: Message, topic: str, partition: int, offset: int) -> IncomingMessage:
    headers = msg.headers()
    if headers:
        # Attributes are text; headers written by other producers may not be UTF-8, or may be null.
        pairs = headers.items() if isinstance(headers, dict) else headers
        attributes = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v or "" for k, v in pairs}
    else:
        attributes = {}
    raw_key = msg.key()
    kind, millis = msg.timestamp()
    return IncomingMessage(
        msg.value() or b"",  # None for a tombstone
        attributes,
        raw_key.decode("utf-8", "replace") if raw_key is not None else None,
        f"{topic}/{partition}/{offset}",
        (topic, partition, offset),
        datetime.fromtimestamp(millis / 1000, tz=UTC) if kind != TIMESTAMP_NOT_AVAILABLE else None,
        None,  # delivery_attempt: Kafka does not count deliveries
    )


# ---------------------------------------------------------------- admin


class KafkaAdminDriver:
    """Creates and deletes topics; a 'subscription' is a consumer group, which needs no creation."""

    def __init__(self, url: ParsedURL, options: dict[str, object]) -> None:
        self._address = _bootstrap(url)
        self.name = f"kafka cluster at {self._address}"
        self._options = dict(options)
        config = _client_config(url, options, {})
        self._admin: AdminClient = _make_client(AdminClient, config, self.name)

    def _wait(self, future: Any, what: str, timeout: float = METADATA_TIMEOUT_S + 5) -> Any:
        try:
            return future.result(timeout=timeout)
        except KafkaException as err:
            raise _portable(err, f"{what} on {self.name}", self._options) from err
        except TimeoutError as err:  # concurrent.futures' timeout
            raise errors.Timeout(f"{what} on {self.name}: no answer within {timeout:.0f} s") from err

    def _topic_exists(self, topic: str) -> bool:
        try:
            _check_topic(self._admin, topic, self._address, f"looking up topic {topic!r}")
        except errors.NotFound:
            return False
        return True

    def create_topic(self, topic: str, *, partitions: int = 1, replication_factor: int = 1) -> bool:
        new = NewTopic(
            topic,
            num_partitions=partitions,
            replication_factor=replication_factor,
            # 1 MB messages plus batch overhead must fit whatever the broker's default is.
            config={"max.message.bytes": str(MAX_MESSAGE_BYTES)},
        )
        future = self._admin.create_topics([new], operation_timeout=METADATA_TIMEOUT_S)[topic]
        try:
            self._wait(future, f"creating topic {topic!r}")
        except errors.AlreadyExists:
            return False
        # Creation is acknowledged by the controller before every broker's metadata shows it;
        # wait, so that opening the topic right after does not see NotFound.
        self._wait_until(lambda: self._topic_exists(topic), f"topic {topic!r} to appear")
        return True

    def create_subscription(
        self,
        subscription: str,
        *,
        topic: str,
        ack_deadline_s: int = 30,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
    ) -> bool:
        if dead_letter_topic is not None:
            # As documented in fashionstream.pubsub.admin: Kafka has no broker-side dead-letter policy.
            _log.warning(
                "kafka has no dead-letter policy; ignoring dead_letter_topic=%r for group %r (publish failed "
                "messages to a dead-letter topic yourself)",
                dead_letter_topic,
                subscription,
            )
        _check_topic(self._admin, topic, self._address, f"creating consumer group {subscription!r}")
        # The group itself comes to exist when a consumer joins; report whether it already had members or offsets.
        future = self._admin.describe_consumer_groups([subscription], request_timeout=METADATA_TIMEOUT_S)[subscription]
        try:
            description = self._wait(future, f"describing consumer group {subscription!r}")
        except errors.NotFound:
            return True
        state = getattr(getattr(description, "state", None), "name", "")
        return state in ("DEAD", "UNKNOWN", "")

    def delete_topic(self, topic: str) -> None:
        future = self._admin.delete_topics([topic], operation_timeout=METADATA_TIMEOUT_S)[topic]
        self._wait(future, f"deleting topic {topic!r}")
        # Re-creating a topic of the same name right away fails while the deletion is in progress.
        self._wait_until(lambda: not self._topic_exists(topic), f"topic {topic!r} to disappear")

    def delete_subscription(self, subscription: str) -> None:
        future = self._admin.delete_consumer_groups([subscription], request_timeout=METADATA_TIMEOUT_S)[subscription]
        self._wait(future, f"deleting consumer group {subscription!r}")

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        # AdminClient holds no state that needs flushing; dropping it closes its connections.
        pass

    def _wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + METADATA_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                raise errors.Timeout(f"{self.name}: timed out waiting for {what}")
            time.sleep(0.05)


# ---------------------------------------------------------------- module shape


def open_topic_driver(url: ParsedURL, options: dict[str, object]) -> KafkaTopicDriver:
    return KafkaTopicDriver(url, options)


def open_subscription_driver(url: ParsedURL, options: dict[str, object]) -> KafkaSubscriptionDriver:
    return KafkaSubscriptionDriver(url, options)


def open_admin_driver(url: ParsedURL, options: dict[str, object]) -> KafkaAdminDriver:
    return KafkaAdminDriver(url, options)


__all__ = [
    "SCHEME",
    "TOPIC_QUERY_PARAMS",
    "SUBSCRIPTION_QUERY_PARAMS",
    "NATIVE_ACK_DEADLINES",
    "KafkaTopicDriver",
    "KafkaSubscriptionDriver",
    "KafkaAdminDriver",
    "classify",
    "retryable",
    "open_topic_driver",
    "open_subscription_driver",
    "open_admin_driver",
]
