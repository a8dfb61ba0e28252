"""Receiving from one Kafka topic as a member of one consumer group, committing only acked offsets.

Kafka keeps no delivery count and no dead-letter policy, so the driver keeps both for the
partitions assigned to it: `delivery_attempt` is one more than the times this consumer saw the
message nacked (or its ack deadline pass), and with the options `dead_letter_topic` (and
`max_delivery_attempts`, default 5) a message that failed that many times is published to the
dead-letter topic and acked instead of being delivered again. The count lives in this process:
it starts again from 1 when the partition moves to another consumer or the process restarts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Hashable, Sequence
from typing import Any, cast

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, TopicPartition

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import FlowControl, IncomingMessage, OutgoingMessage, ParsedURL
from fashionstream.pubsub.drivers.kafka import bootstrap_servers, resource_names, topic_name
from fashionstream.pubsub.drivers.kafka.client import (
    ClientLog,
    check_topic,
    client_config,
    make_client,
)
from fashionstream.pubsub.drivers.kafka.errors import DENIED, NOT_FOUND, classify, retryable
from fashionstream.pubsub.drivers.kafka.offsets import PartitionOffsets
from fashionstream.pubsub.drivers.kafka.topic import KafkaTopicDriver
from fashionstream.pubsub.errors import ErrorCode
from fashionstream.pubsub.subscriber import SubscriberSettings
from fashionstream.pubsub.urls import safe_url

_log = logging.getLogger(__package__ or __name__)

# Options the driver sets itself because at-least-once depends on them.
_CONSUMER_FIXED = {"enable.auto.commit": False, "enable.auto.offset.store": False}

#: librdkafka fetches from the broker on its own threads, ahead of the subscriber, into a local
#: queue. One fetch and that queue each hold at most this share of the subscriber's byte cap
#: (`FlowControl.max_bytes`), so what librdkafka holds stays well below what the subscriber
#: holds: with `serve`'s default cap (16 x --max-message-bytes) a fetch brings about one request
#: of the largest accepted size.
PREFETCH_SHARE = 16
#: ... but never less than this per fetch: smaller fetches cost a round trip per few messages;
MIN_FETCH_BYTES = 64 * 1024
#: and never more than librdkafka allows for max.partition.fetch.bytes and message.max.bytes.
MAX_FETCH_BYTES = 1_000_000_000


def fetch_limits(flow: FlowControl) -> dict[str, int]:
    """librdkafka's fetch and prefetch-queue limits for a subscriber holding at most `flow.max_bytes`.

    A record batch larger than the fetch limit still comes, alone (Kafka returns the first batch of
    a fetch whatever its size, so an oversize message is never stuck); librdkafka then holds that
    one batch. `receive.message.max.bytes` keeps librdkafka's default (100 MB, at least
    fetch.max.bytes + 512): a response carrying such a batch is larger than fetch.max.bytes, and
    one larger than receive.message.max.bytes would fail on every try.
    """
    fetch = min(max(flow.max_bytes // PREFETCH_SHARE, MIN_FETCH_BYTES), MAX_FETCH_BYTES)
    return {
        "fetch.max.bytes": fetch,
        "max.partition.fetch.bytes": fetch,
        "queued.max.messages.kbytes": max(1, fetch // 1024),
        # While that queue is full librdkafka waits this long before it looks again (default 1 s): with
        # a queue this small it is often full, and a 1 s wait capped an oversize flood at ~1 message/s.
        "fetch.queue.backoff.ms": 10,
        # librdkafka requires fetch.max.bytes >= message.max.bytes (a consumer sends no large requests).
        "message.max.bytes": max(1000, fetch),
    }


# The group session, for the classic group protocol (Kafka 4's `group.protocol=consumer` keeps it on
# the broker, `group.consumer.session.timeout.ms`, and refuses these two options).
_CLASSIC_SESSION: dict[str, object] = {
    # How long the group waits for a member that stopped heart-beating, and, on the member's
    # side, how long it keeps its partitions without an answer from the group coordinator.
    # Kafka's own default, 45 s, because the second use decides what a broker restart
    # costs: a member that runs out of session (a restart takes seconds, loading the group
    # state more: 10 s is often too short) drops its partitions and rejoins, and then
    # receives again everything it processed since its last accepted commit: 644
    # duplicate answers for one such outage in tests/test_kafka_outage.py. The price: a member killed
    # without leaving the group (SIGKILL, OOM) holds its partitions for up to 45 s; one
    # that stops cleanly leaves at once (`close`). Set session.timeout.ms lower with
    # --subscriber-option where fast failover matters more than riding out broker restarts.
    "session.timeout.ms": 45_000,
    # Heartbeats also carry news of a rebalance: each second, so joining members get their
    # share within seconds whatever the session timeout.
    "heartbeat.interval.ms": 1_000,
}


def _session_defaults(options: dict[str, object]) -> dict[str, object]:
    return {} if str(options.get("group.protocol", "classic")).lower() == "consumer" else _CLASSIC_SESSION


# Ack ids are (topic, partition, offset) tuples.

#: Acked offsets go to the broker at most this often (asynchronously; at once, and waited for, when
#: partitions are revoked or the consumer closes). Each commit is a request the broker handles: after
#: every small batch at 100 images/s, the pipeline's commits cost the broker about a fifth of its CPU.
#: A crash may redeliver what was acked within the last interval, which at-least-once allows.
COMMIT_INTERVAL_S = 0.1
#: Deliveries of a message before it is dead-lettered, as Pub/Sub's default.
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
#: Prefixes of the native options the dead-letter producer shares with the consumer (connection, credentials).
_SHARED_OPTION_PREFIXES = ("security.", "sasl.", "ssl.", "client.", "socket.", "broker.", "bootstrap.")
#: Seconds a dead letter may take to be confirmed before the message is delivered as usual instead.
DEAD_LETTER_TIMEOUT_S = 30.0


class KafkaSubscriptionDriver:
    """Receives from one topic as a member of one consumer group, committing only acked offsets."""

    def __init__(self, url: ParsedURL, options: dict[str, object], flow: FlowControl | None = None) -> None:
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
        options = dict(options)
        dead_letter_topic = options.pop("dead_letter_topic", None)
        self._max_attempts = _max_attempts(options.pop("max_delivery_attempts", DEFAULT_MAX_DELIVERY_ATTEMPTS))
        fixed = sorted(k for k in _CONSUMER_FIXED if k in options)
        if fixed:
            raise errors.InvalidArgument(
                f"option(s) {', '.join(fixed)} cannot be set: the driver commits offsets itself, only past acked "
                "messages (at-least-once)"
            )
        self._client_log = ClientLog(f"kafka consumer of {self._topic!r} at {self._address}", address=self._address)
        config = client_config(
            url,
            options,
            {
                # A new group reads the topic from the start, like a subscription created before the sends.
                "auto.offset.reset": "earliest",
                **_session_defaults(options),
                **fetch_limits(flow or SubscriberSettings().flow_control()),
                "on_commit": self._on_commit,
                # librdkafka's statistics carry each partition's high watermark and committed offset:
                # the source of `backlog()`, and the broker connections' state (`ClientLog.statistics`).
                # Every 5 s, a scrape interval's worth of freshness.
                "statistics.interval.ms": 5_000,
                "stats_cb": self._on_stats,
            },
            self._client_log,
        )
        config.update(_CONSUMER_FIXED)
        config["group.id"] = group
        self._consumer: Consumer = make_client(Consumer, config, self.name)
        self._partitions: dict[tuple[str, int], PartitionOffsets] = {}
        self._lag: dict[str, int] = {}  # from the latest statistics; replaced whole, never mutated
        self._next_commit = 0.0  # monotonic time from which an asynchronous commit may go (COMMIT_INTERVAL_S)
        self._commit_waiting = False  # acks arrived since the last commit, which was too recent
        self._closed = False
        try:
            check_topic(self._consumer, self._client_log, self._topic, self._address, f"opening {self.name}")
            self._consumer.subscribe(
                [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
        except BaseException:
            self._consumer.close()  # serves the events queued while opening
            self._client_log.flush()
            raise
        self._client_log.opened = True
        self._dead_letters: KafkaTopicDriver | None = None
        if dead_letter_topic is not None:
            try:
                self._dead_letters = self._open_dead_letters(url, str(dead_letter_topic), options)
            except BaseException:
                self.close()
                raise

    def _open_dead_letters(self, url: ParsedURL, topic: str, options: dict[str, object]) -> KafkaTopicDriver:
        if not topic or "/" in topic:
            raise errors.InvalidArgument(f"option dead_letter_topic must be a topic name, got {topic!r}")
        shared = {k: v for k, v in options.items() if k.startswith(_SHARED_OPTION_PREFIXES)}
        dead = ParsedURL(f"kafka://{self._address}/{topic}", "kafka", self._address, topic, {})
        return KafkaTopicDriver(dead, shared)

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
        else:
            self._client_log.connected()  # the group coordinator answered: any connection outage is over

    def _commit_soon(self) -> None:
        """Commit every partition's acked prefix asynchronously, or, within COMMIT_INTERVAL_S of the last
        commit, leave it to the first receive or ack after the interval."""
        now = time.monotonic()
        if now < self._next_commit:
            self._commit_waiting = True
            return
        self._next_commit = now + COMMIT_INTERVAL_S
        self._commit_waiting = False
        self._commit(list(self._partitions), asynchronous=True)

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

    # -- optional: how far behind the group is

    def backlog(self) -> dict[str, int]:
        """High watermark minus committed offset of each partition assigned here, keyed by partition number.

        From librdkafka's statistics (`_on_stats`, every 5 s), not from calls on the consumer: those
        would wait for the receiving thread's poll, and this is asked from the metrics server's thread.
        A partition without a known watermark yet is left out; one without a commit yet counts from
        its oldest message, where a new group starts.
        """
        return dict(self._lag)

    def _on_stats(self, stats_json: str) -> None:
        # Served inside consume()/poll() on the receiving thread, like the rebalance callbacks.
        try:
            stats = json.loads(stats_json)
            self._client_log.statistics(stats)
            partitions = stats["topics"][self._topic]["partitions"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # the topic is not in this report (not assigned yet): keep the last figures
        lag: dict[str, int] = {}
        for number, stats in partitions.items():
            if (self._topic, int(number)) not in self._partitions:
                continue  # "-1" (librdkafka's unassigned bucket) and partitions of other members
            high, committed = stats.get("hi_offset", -1), stats.get("committed_offset", -1)
            if committed < 0:
                # The group has committed nothing here yet, so it starts at the oldest message
                # (auto.offset.reset=earliest, the default above): all of the partition is to do.
                committed = stats.get("lo_offset", -1)
            if high >= 0 and committed >= 0:
                lag[number] = max(0, high - committed)
        self._lag = lag

    # -- driver protocol

    def receive_batch(self, max_messages: int, timeout: float) -> list[IncomingMessage]:
        if self._closed:
            raise RuntimeError(f"{self.name}: consumer closed")
        if self._commit_waiting:
            self._commit_soon()
        consumer, wanted = self._consumer, max(1, max_messages)
        # consume() with a timeout waits for a full batch; a caller waiting for messages wants the
        # first one at once. So: what is already fetched, else one message as soon as it comes,
        # then whatever came with it.
        raw = consumer.consume(num_messages=wanted, timeout=0)
        if not raw and timeout > 0:
            first = consumer.poll(timeout)
            if first is not None:
                raw = [first]
                if wanted > 1:
                    raw.extend(consumer.consume(num_messages=wanted - 1, timeout=0))
        out: list[IncomingMessage] = []
        # Hot loop (every message passes here): names bound once, the partition's bookkeeping
        # looked up once per run of messages from one partition, offsets recorded per run.
        partitions, append, no_time = self._partitions, out.append, TIMESTAMP_NOT_AVAILABLE
        runs: list[tuple[PartitionOffsets, list[int]]] = []
        failures: dict[int, int] = {}  # the current partition's failure counts (usually empty)
        topic = self._topic  # the consumer is subscribed to this topic only
        current = -1  # the partition of the run being read
        offsets: list[int] | None = None
        for msg in raw:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal() or err.code() in NOT_FOUND or err.code() in DENIED:
                    raise KafkaException(err)
                self._client_log.error(err)  # transient; librdkafka keeps retrying
                continue
            partition, offset = msg.partition(), msg.offset()
            if partition is None or offset is None:
                continue  # only error events lack these, and they were handled above
            if partition != current:
                current = partition
                state = partitions.get((topic, partition))
                offsets = None
                if state is not None:
                    offsets = []
                    runs.append((state, offsets))
                    failures = state.failures
            if offsets is None:  # a message of a partition revoked meanwhile: its next owner gets it
                continue
            offsets.append(offset)
            headers = msg.headers()
            raw_key = msg.key()
            kind, millis = msg.timestamp()
            append(
                IncomingMessage(
                    msg.value() or b"",  # None for a tombstone
                    _attributes(headers) if headers else {},
                    raw_key.decode("utf-8", "replace") if raw_key is not None else None,
                    f"{topic}/{partition}/{offset}",
                    (topic, partition, offset),
                    millis / 1000 if kind != no_time else None,
                    failures.get(offset, 0) + 1 if failures else 1,  # counted here: Kafka does not
                )
            )
        for state, run in runs:
            state.deliver_all(run)
        if self._dead_letters is not None and any(state.failures for state, _ in runs):
            out = self._dead_letter_exhausted(out)
        return out

    def _dead_letter_exhausted(self, messages: list[IncomingMessage]) -> list[IncomingMessage]:
        """Publish messages that failed `max_delivery_attempts` times to the dead-letter topic and ack them.

        Returns the rest. If the dead-letter topic does not confirm, the messages are delivered as
        usual (nothing is lost) and the next failure tries again.
        """
        assert self._dead_letters is not None
        limit = self._max_attempts
        exhausted = [m for m in messages if (m.delivery_attempt or 1) > limit]
        if not exhausted:
            return messages
        try:
            self._dead_letters.send_batch(
                [OutgoingMessage(m.data, m.attributes, m.key) for m in exhausted], DEAD_LETTER_TIMEOUT_S
            )
        except Exception as err:  # noqa: BLE001 - delivered instead: a failed dead letter must not lose them
            _log.warning(
                "%s: %d messages failed %d times but could not be dead-lettered to %s; delivering them again: %s",
                self.name,
                len(exhausted),
                limit,
                self._dead_letters.name,
                err,
            )
            return messages
        _log.info(
            "%s: %d messages failed %d times, moved to %s", self.name, len(exhausted), limit, self._dead_letters.name
        )
        self.send_acks([m._ack_id for m in exhausted])
        moved = {id(m) for m in exhausted}
        return [m for m in messages if id(m) not in moved]

    def send_acks(self, ack_ids: Sequence[Hashable]) -> None:
        moved = False
        partitions = self._partitions
        for key, offsets in _by_partition(ack_ids).items():
            state = partitions.get(key)
            # Acks for partitions no longer ours, or for deliveries already rewound, change nothing.
            if state is not None and state.ack_all(offsets):
                moved = True
        if moved:
            # Asynchronous: the next poll serves the result; a lost commit only means redelivery.
            self._commit_soon()

    def can_nack(self) -> bool:
        return True

    def send_nacks(self, ack_ids: Sequence[Hashable]) -> None:
        lowest: dict[tuple[str, int], int] = {}
        for key, offsets in _by_partition(ack_ids).items():
            state = self._partitions.get(key)
            if state is None:
                continue  # no longer ours
            live = state.outstanding.intersection(offsets)  # others were already rewound past
            if live:
                state.failed(sorted(live))
                lowest[key] = min(live)
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
        if self._dead_letters is not None:
            self._dead_letters.close()
        self._commit(list(self._partitions), asynchronous=False)
        # Leaves the group at once, so the partitions (and their unacked messages) move on without
        # waiting for the session timeout.
        self._consumer.close()
        self._client_log.flush()  # the repeat counts still pending


def _max_attempts(value: object) -> int:
    """The `max_delivery_attempts` option as a positive int (it may come as text from a command line)."""
    try:
        attempts = int(str(value))
    except ValueError:
        attempts = 0
    if attempts < 1:
        raise errors.InvalidArgument(f"option max_delivery_attempts must be a positive whole number, got {value!r}")
    return attempts


def _by_partition(ack_ids: Sequence[Hashable]) -> dict[tuple[str, int], list[int]]:
    """The offsets of `ack_ids` grouped by (topic, partition), in the order given."""
    groups: dict[tuple[str, int], list[int]] = {}
    current = -1  # the partition of the run being read (the driver reads one topic)
    offsets: list[int] = []
    try:
        # Ack ids only ever come from receive_batch, so unpacking is the whole check.
        for topic, partition, offset in cast("Sequence[tuple[str, int, int]]", ack_ids):
            if partition != current:
                current = partition
                offsets = groups.setdefault((topic, partition), [])
            offsets.append(offset)
    except (TypeError, ValueError):
        bad = next((a for a in ack_ids if not (isinstance(a, tuple) and len(a) == 3)), None)
        raise ValueError(f"not a kafka ack id: {bad!r}") from None
    return groups


def _attributes(headers: Any) -> dict[str, str]:
    """Headers as attributes: text; headers written by other producers may not be UTF-8, or may be null."""
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v or "" for k, v in pairs}


__all__ = ["KafkaSubscriptionDriver"]
