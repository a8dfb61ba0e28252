"""Receiving from one Kafka topic as a member of one consumer group, committing only acked offsets."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Message, TopicPartition

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import IncomingMessage, ParsedURL
from fashionstream.pubsub.drivers.kafka import bootstrap_servers, resource_names, topic_name
from fashionstream.pubsub.drivers.kafka.client import (
    MAX_MESSAGE_BYTES,
    ClientLog,
    check_topic,
    client_config,
    make_client,
)
from fashionstream.pubsub.drivers.kafka.errors import DENIED, NOT_FOUND, classify, retryable
from fashionstream.pubsub.drivers.kafka.offsets import PartitionOffsets
from fashionstream.pubsub.errors import ErrorCode
from fashionstream.pubsub.urls import safe_url

_log = logging.getLogger(__package__ or __name__)

# Options the driver sets itself because at-least-once depends on them.
_CONSUMER_FIXED = {"enable.auto.commit": False, "enable.auto.offset.store": False}

AckId = tuple[str, int, int]  # (topic, partition, offset)


class KafkaSubscriptionDriver:
    """Receives from one topic as a member of one consumer group, committing only acked offsets."""

    def __init__(self, url: ParsedURL, options: dict[str, object]) -> None:
        self._topic = topic_name(url)
        self._address = bootstrap_servers(url)
        group = resource_names(url)[1]
        if not group:
            raise errors.InvalidArgument(
                f"{safe_url(url.raw)!r} names no consumer group; add ?group=NAME, e.g. "
                f"kafka://{self._address}/{self._topic}?group=service"
            )
        self._group = group
        self.name = f"kafka group {group!r} on topic {self._topic!r} at {self._address}"
        fixed = sorted(k for k in _CONSUMER_FIXED if k in options)
        if fixed:
            raise errors.InvalidArgument(
                f"option(s) {', '.join(fixed)} cannot be set: the driver commits offsets itself, only past acked "
                "messages (at-least-once)"
            )
        self._client_log = ClientLog(f"kafka consumer of {self._topic!r} at {self._address}")
        config = client_config(
            url,
            options,
            {
                # A new group reads the topic from the start, like a subscription created before the sends.
                "auto.offset.reset": "earliest",
                # Partitions of a dead consumer move on after 10 s rather than the default 45 s.
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
                "fetch.max.bytes": 4 * MAX_MESSAGE_BYTES,
                "on_commit": self._on_commit,
            },
            self._client_log,
        )
        config.update(_CONSUMER_FIXED)
        config["group.id"] = group
        self._consumer: Consumer = make_client(Consumer, config, self.name)
        self._partitions: dict[tuple[str, int], PartitionOffsets] = {}
        self._closed = False
        try:
            check_topic(self._consumer, self._topic, self._address, f"opening {self.name}")
            self._consumer.subscribe(
                [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
        except BaseException:
            self._consumer.close()
            raise
        self._client_log.opened = True

    # -- rebalance callbacks: they run inside consume() / close(), on the subscriber's thread

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions[(tp.topic, tp.partition)] = PartitionOffsets()

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
                if err.fatal() or err.code() in NOT_FOUND or err.code() in DENIED:
                    raise KafkaException(err)
                self._client_log.error(err)  # transient; librdkafka keeps retrying
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


__all__ = ["KafkaSubscriptionDriver"]
