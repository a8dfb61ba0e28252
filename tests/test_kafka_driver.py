"""Driver-level tests of the Kafka backend against a real broker (`scripts/services start`).

The portable conformance suite covers the behaviour users see; these tests pin down what only the
Kafka driver does: committing offsets strictly behind unacked messages, rewinding on nack, failing
fast on missing topics and unreachable brokers, and the bookkeeping itself (`PartitionOffsets`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from fashionstream.pubsub import Message, errors, open_subscription, open_topic
from fashionstream.pubsub.driver import ErrorCode, FlowControl, IncomingMessage, OutgoingMessage, ParsedURL
from fashionstream.pubsub.drivers import kafka
from fashionstream.pubsub.drivers.kafka import client as kafka_client
from fashionstream.pubsub.drivers.kafka import errors as kafka_errors
from fashionstream.pubsub.drivers.kafka.admin import KafkaAdminDriver
from fashionstream.pubsub.drivers.kafka.offsets import PartitionOffsets
from fashionstream.pubsub.drivers.kafka.subscription import KafkaSubscriptionDriver, fetch_limits
from fashionstream.pubsub.urls import parse_url


@pytest.fixture
def bootstrap(request: pytest.FixtureRequest) -> str:
    """The broker address: the shared `kafka_bootstrap` fixture when conftest has it, else the environment."""
    try:
        return str(request.getfixturevalue("kafka_bootstrap"))
    except pytest.FixtureLookupError:
        address = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not address:
            pytest.fail(
                "KAFKA_BOOTSTRAP_SERVERS is not set; run `scripts/services start` and `eval $(scripts/services env)`"
            )
        return address


@pytest.fixture
def admin(bootstrap: str) -> Iterator[KafkaAdminDriver]:
    driver = kafka.open_admin_driver(parse_url(f"kafka://{bootstrap}"), {})
    yield driver
    driver.close()


@pytest.fixture
def topic(admin: KafkaAdminDriver) -> Iterator[str]:
    name = f"test-kafka-driver-{uuid.uuid4().hex[:10]}"
    assert admin.create_topic(name, partitions=1) is True
    yield name
    admin.delete_topic(name)


def _url(bootstrap: str, topic: str, group: str | None = None) -> ParsedURL:
    return parse_url(f"kafka://{bootstrap}/{topic}" + (f"?group={group}" if group else ""))


def _receive(sub: KafkaSubscriptionDriver, count: int, timeout: float = 30.0) -> list[IncomingMessage]:
    """Exactly `count` messages, or fail after `timeout` (joining a group takes a few seconds)."""
    got: list[IncomingMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += sub.receive_batch(count - len(got), 0.5)
    assert len(got) == count, f"received {len(got)} of {count} messages"
    return got


def _send(bootstrap: str, topic: str, bodies: list[bytes]) -> list[str]:
    pub = kafka.open_topic_driver(_url(bootstrap, topic), {})
    try:
        return pub.send_batch([OutgoingMessage(data=b) for b in bodies], 30.0)
    finally:
        pub.close()


pytestmark = pytest.mark.kafka


def test_round_trip_keeps_body_key_attributes_and_ids(bootstrap: str, topic: str) -> None:
    pub = kafka.open_topic_driver(_url(bootstrap, topic), {"linger.ms": 1})
    big = bytes(range(256)) * 4096  # 1 MiB, every byte value
    ids = pub.send_batch(
        [
            OutgoingMessage(data=b"\xff\x00\xfe not utf-8", attributes={"k": "välue ✓", "empty": ""}, key="kéy"),
            OutgoingMessage(data=big),
        ],
        30.0,
    )
    pub.close()
    assert ids == [f"{topic}/0/0", f"{topic}/0/1"]
    sub = kafka.open_subscription_driver(_url(bootstrap, topic, "g-roundtrip"), {})
    try:
        first, second = _receive(sub, 2)
        assert (first.data, first.attributes, first.key, first.id) == (
            b"\xff\x00\xfe not utf-8",
            {"k": "välue ✓", "empty": ""},
            "kéy",
            f"{topic}/0/0",
        )
        assert second.data == big and second.key is None and second.attributes == {}
        assert first.publish_time is not None and first.publish_time.tzinfo is not None
        assert first.delivery_attempt == 1  # counted by the driver: the first delivery in this process
        sub.send_acks([first.ack_id, second.ack_id])
    finally:
        sub.close()


def test_acked_messages_behind_an_unacked_one_are_not_committed(bootstrap: str, topic: str) -> None:
    _send(bootstrap, topic, [b"m0", b"m1", b"m2"])
    url = _url(bootstrap, topic, "g-commit")

    sub = kafka.open_subscription_driver(url, {})
    m0, m1, m2 = _receive(sub, 3)
    sub.send_acks([m1.ack_id, m2.ack_id])  # m0 stays unacked: nothing may be committed
    sub.close()

    sub = kafka.open_subscription_driver(url, {})
    again = _receive(sub, 3)
    assert [m.data for m in again] == [b"m0", b"m1", b"m2"]
    sub.send_acks([m.ack_id for m in again])
    sub.close()

    # Everything acked: a new member of the group starts after m2.
    _send(bootstrap, topic, [b"m3"])
    sub = kafka.open_subscription_driver(url, {})
    try:
        (m3,) = _receive(sub, 1)
        assert m3.data == b"m3"
        sub.send_acks([m3.ack_id])
    finally:
        sub.close()


def test_the_consumer_group_protocol_can_be_chosen_and_keeps_its_session_on_the_broker(
    bootstrap: str, topic: str
) -> None:
    # With group.protocol=consumer (Kafka 4) librdkafka refuses session.timeout.ms and
    # heartbeat.interval.ms: the driver's classic-protocol defaults must then stay out.
    _send(bootstrap, topic, [b"m0", b"m1"])
    sub = kafka.open_subscription_driver(_url(bootstrap, topic, "g-848"), {"group.protocol": "consumer"})
    try:
        got = _receive(sub, 2)
        assert [m.data for m in got] == [b"m0", b"m1"]
        sub.send_acks([m.ack_id for m in got])
    finally:
        sub.close()


def test_commit_advances_to_the_first_unacked_message(bootstrap: str, topic: str) -> None:
    _send(bootstrap, topic, [b"a", b"b", b"c", b"d"])
    url = _url(bootstrap, topic, "g-partial")
    sub = kafka.open_subscription_driver(url, {})
    a, b, c, d = _receive(sub, 4)
    sub.send_acks([a.ack_id, b.ack_id, d.ack_id])  # commit position 2: c is the first unacked
    sub.close()
    sub = kafka.open_subscription_driver(url, {})
    try:
        assert [m.data for m in _receive(sub, 2)] == [b"c", b"d"]
    finally:
        sub.close()


def test_a_commit_within_the_interval_waits_and_goes_with_the_next_receive(bootstrap: str, topic: str) -> None:
    """Commits go at most every COMMIT_INTERVAL_S; one that waited is sent without another ack."""
    from fashionstream.pubsub.drivers.kafka import subscription as kafka_subscription

    _send(bootstrap, topic, [b"a", b"b"])
    sub = kafka.open_subscription_driver(_url(bootstrap, topic, "g-interval"), {})
    try:
        a, b = _receive(sub, 2)
        sub.send_acks([a.ack_id])  # the first commit goes at once (position 1)
        sub.send_acks([b.ack_id])  # the second is within the interval: it waits
        partition = [TopicPartition(topic, 0)]
        assert sub._consumer.committed(partition, timeout=10)[0].offset != 2
        time.sleep(kafka_subscription.COMMIT_INTERVAL_S)
        deadline = time.monotonic() + 10
        while sub._consumer.committed(partition, timeout=10)[0].offset != 2:
            assert time.monotonic() < deadline, "the waiting commit was never sent"
            assert sub.receive_batch(1, 0.05) == []  # receiving sends it, and serves its result
    finally:
        sub.close()


def test_nack_rewinds_the_partition_to_the_nacked_message(bootstrap: str, topic: str) -> None:
    _send(bootstrap, topic, [b"x0", b"x1", b"x2"])
    sub = kafka.open_subscription_driver(_url(bootstrap, topic, "g-nack"), {})
    try:
        x0, x1, x2 = _receive(sub, 3)
        sub.send_acks([x0.ack_id])
        sub.send_nacks([x1.ack_id])
        again = _receive(sub, 2)
        # Redelivery starts at the nacked offset; what followed it comes again too.
        assert [m.data for m in again] == [b"x1", b"x2"]
        assert again[0].id == x1.id
        sub.send_acks([m.ack_id for m in again])
        sub.send_acks([x2.ack_id])  # an ack of a rewound delivery is harmless
    finally:
        sub.close()


def test_held_bytes_return_to_zero_after_a_rewind_redelivers_messages_still_held(bootstrap: str, topic: str) -> None:
    """A nack rewinds the partition: later messages come again with the ack ids of deliveries not yet settled."""
    bodies = [bytes([i]) * 1000 for i in range(3)]
    _send(bootstrap, topic, bodies)
    url = f"kafka://{bootstrap}/{topic}?group=g-held"
    with open_subscription(url) as sub:
        first: list[Message] = []
        deadline = time.monotonic() + 30
        while len(first) < 3 and time.monotonic() < deadline:
            first += sub.receive_batch(3, timeout=0.5)
        assert [m.data for m in first] == bodies
        first[0].nack()  # the two behind it, delivered and unsettled, come again too
        again: list[Message] = []
        deadline = time.monotonic() + 30
        while len(again) < 3 and time.monotonic() < deadline:
            again += sub.receive_batch(3, timeout=0.5)
        assert [m.data for m in again] == bodies
        sub.ack(first[1:] + again)
        assert sub.held_bytes == 0


def test_delivery_attempt_counts_the_nacks_of_that_message_only(bootstrap: str, topic: str) -> None:
    """Kafka counts nothing: the driver does, and a message redelivered only because the partition was
    rewound behind a nacked one did not fail."""
    _send(bootstrap, topic, [b"x0", b"x1"])
    sub = kafka.open_subscription_driver(_url(bootstrap, topic, "g-attempts"), {})
    try:
        first = _receive(sub, 2)
        assert [m.delivery_attempt for m in first] == [1, 1]
        sub.send_nacks([first[0].ack_id])
        second = _receive(sub, 2)
        sub.send_nacks([second[0].ack_id])
        third = _receive(sub, 2)
        assert [(m.data, m.delivery_attempt) for m in third] == [(b"x0", 3), (b"x1", 1)]
        sub.send_acks([m.ack_id for m in third])
    finally:
        sub.close()


def test_missing_topic_is_not_found_for_topic_and_subscription(bootstrap: str) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(errors.NotFound, match=missing):
        kafka.open_topic_driver(_url(bootstrap, missing), {})
    with pytest.raises(errors.NotFound, match=missing):
        kafka.open_subscription_driver(_url(bootstrap, missing, "g"), {})


def test_unreachable_broker_is_unavailable_naming_the_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_client, "METADATA_TIMEOUT_S", 1.0)
    with pytest.raises(errors.Unavailable, match=r"127\.0\.0\.1:1\b"):
        kafka.open_topic_driver(parse_url("kafka://127.0.0.1:1/images"), {})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_broker_gives_one_clear_error_not_a_log_flood(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # librdkafka retries a refused connection ~20 times a second and reports each attempt; the user
    # should see one Unavailable naming the address, not hundreds of log lines.
    address = f"127.0.0.1:{_free_port()}"
    caplog.set_level(logging.DEBUG)
    for opening in (
        lambda: open_topic(f"kafka://{address}/images"),
        lambda: open_subscription(f"kafka://{address}/images?group=g"),
    ):
        started = time.monotonic()
        with pytest.raises(errors.Unavailable, match=re.escape(address)):
            opening()
        assert time.monotonic() - started < 12  # the 10 s metadata wait, then the error
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) <= 2, [r.getMessage() for r in loud]
    assert any(r.levelno == logging.DEBUG and address in r.getMessage() for r in caplog.records)  # kept, quietly
    stderr = capfd.readouterr().err
    assert len(stderr.splitlines()) <= 2, stderr


def test_an_opened_producer_has_its_id_and_keeps_the_callers_debug_contexts(bootstrap: str, topic: str) -> None:
    """A message produced before the idempotent producer's id waits for a 500 ms timer: the open waits instead."""
    pub = kafka.open_topic_driver(_url(bootstrap, topic), {"debug": "broker"})
    try:
        assert pub.has_producer_id
        assert pub.send_batch([OutgoingMessage(data=b"first")], 10.0)[0].startswith(f"{topic}/0/")
    finally:
        pub.close()


def test_too_large_message_is_invalid_argument_and_not_retryable(bootstrap: str, topic: str) -> None:
    pub = kafka.open_topic_driver(_url(bootstrap, topic), {})
    try:
        with pytest.raises(Exception) as caught:
            pub.send_batch([OutgoingMessage(data=b"x" * (kafka_client.MAX_MESSAGE_BYTES + 1))], 10.0)
        assert pub.error_code(caught.value) is ErrorCode.INVALID_ARGUMENT
        assert pub.is_retryable(caught.value) is False
    finally:
        pub.close()


@pytest.mark.parametrize(
    ("code", "expected"),
    [("COORDINATOR_LOAD_IN_PROGRESS", True), ("_TIMED_OUT", True), ("UNKNOWN_TOPIC_OR_PART", False),
     ("MSG_SIZE_TOO_LARGE", False)],
)  # fmt: skip
def test_a_portable_error_is_retried_as_its_native_cause_would_be(code: str, expected: bool) -> None:
    """The admin client reports librdkafka errors as portable ones; a fresh broker's loading coordinator is retried."""
    native = KafkaException(KafkaError(getattr(KafkaError, code)))
    portable = kafka_client.portable(native, "describing consumer group 'g'")
    portable.__cause__ = native  # as `raise portable(...) from err` sets it
    assert kafka_errors.retryable(native) is expected
    assert kafka_errors.retryable(portable) is expected


def test_options_that_would_break_at_least_once_are_refused(bootstrap: str, topic: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="enable.auto.commit"):
        kafka.open_subscription_driver(_url(bootstrap, topic, "g"), {"enable.auto.commit": True})
    with pytest.raises(errors.InvalidArgument, match="bootstrap.servers"):
        kafka.open_topic_driver(_url(bootstrap, topic), {"bootstrap.servers": "elsewhere:9092"})
    with pytest.raises(errors.InvalidArgument, match="no consumer group"):
        kafka.open_subscription_driver(_url(bootstrap, topic), {})


def test_bad_native_option_is_invalid_argument_without_the_secret(bootstrap: str, topic: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        kafka.open_topic_driver(_url(bootstrap, topic), {"sasl.password": "hunter2", "no.such.property": "1"})
    assert "no.such.property" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_admin_create_is_idempotent_and_subscription_checks_the_topic(admin: KafkaAdminDriver, topic: str) -> None:
    assert admin.create_topic(topic) is False  # exists already
    assert admin.create_subscription("fresh-group", topic=topic) is True
    with pytest.raises(errors.NotFound, match="nope-"):
        admin.create_subscription("g", topic=f"nope-{uuid.uuid4().hex[:6]}")
    with pytest.raises(errors.NotFound):
        admin.delete_topic(f"nope-{uuid.uuid4().hex[:6]}")


# ---------------------------------------------------------------- bookkeeping without a broker


@pytest.mark.parametrize("cap", [1, 250_000, 4 * 2**20, 64 * 2**20, 2**40])
def test_fetch_limits_follow_the_byte_cap_and_librdkafka_accepts_them(cap: int) -> None:
    from confluent_kafka import Consumer

    limits = fetch_limits(FlowControl(max_messages=1000, max_bytes=cap))
    fetch = limits["fetch.max.bytes"]
    assert limits["max.partition.fetch.bytes"] == fetch and limits["queued.max.messages.kbytes"] * 1024 <= fetch
    assert fetch <= max(cap // 16, 64 * 1024)  # librdkafka holds at most two of these, or one oversize batch
    if cap == 4 * 2**20:  # serve's default cap (16 x the default --max-message-bytes): one such request a fetch
        assert fetch == 256 * 1024
    # librdkafka's own rules (fetch.max.bytes >= message.max.bytes, ranges): the consumer can be made
    Consumer({"bootstrap.servers": "127.0.0.1:9", "group.id": "limits", **limits}).close()


def test_partition_offsets_commit_only_the_contiguous_acked_prefix() -> None:
    state = PartitionOffsets()
    for offset in (5, 6, 8, 9):  # 7 is a gap (e.g. a transaction marker): never delivered
        state.deliver(offset)
    assert state.ack(6) is False and state.pending_commit() is None
    assert state.ack(6) is False  # double ack changes nothing
    assert state.ack(5) is True and state.pending_commit() == 7
    state.committed = 7
    assert state.ack(9) is False and state.pending_commit() is None
    assert state.ack(8) is True and state.pending_commit() == 10


def test_partition_offsets_rewind_forgets_later_deliveries() -> None:
    state = PartitionOffsets()
    for offset in range(4):
        state.deliver(offset)
    state.ack(2)
    state.rewind(1)
    assert list(state.delivered) == [0] and state.outstanding == {0} and not state.acked
    assert state.ack(2) is False  # a stale ack of a rewound delivery
    state.deliver(1)
    assert state.ack(0) is True and state.pending_commit() == 1
    assert state.ack(1) is True and state.pending_commit() == 2


def test_partition_offsets_count_failures_until_committed_past() -> None:
    state = PartitionOffsets()
    state.deliver_all([0, 1, 2])
    state.failed([1])
    state.rewind(1)
    state.deliver_all([1, 2])
    state.failed([1])
    assert (state.attempt(0), state.attempt(1), state.attempt(2)) == (1, 3, 1)
    assert state.ack_all([0, 1]) is True
    assert state.failures == {}  # committed past: never delivered to this group again


def test_rebalance_hands_unacked_messages_to_the_new_owner(bootstrap: str, admin: KafkaAdminDriver) -> None:
    name = f"test-kafka-rebalance-{uuid.uuid4().hex[:8]}"
    admin.create_topic(name, partitions=2)
    try:
        pub = kafka.open_topic_driver(_url(bootstrap, name), {})
        # Keys spread the messages over both partitions.
        pub.send_batch([OutgoingMessage(data=f"m{i}".encode(), key=f"key-{i}") for i in range(20)], 30.0)
        pub.close()
        url = _url(bootstrap, name, "g-rebalance")
        options: dict[str, object] = {"session.timeout.ms": 6000}
        first = kafka.open_subscription_driver(url, options)
        got = _receive(first, 20)  # owns both partitions; acks only the first message of each
        heads: dict[int, IncomingMessage] = {}
        for message in got:
            heads.setdefault(int(message.id.split("/")[1]), message)
        first.send_acks([m.ack_id for m in heads.values()])

        second = kafka.open_subscription_driver(url, options)
        taken: list[IncomingMessage] = []
        deadline = time.monotonic() + 30
        # Both must poll for the group to rebalance; `first` then gives one partition up.
        while not taken and time.monotonic() < deadline:
            first.receive_batch(10, 0.2)
            taken = second.receive_batch(20, 0.2)
        assert taken, "the second consumer never got a partition"
        moved = int(taken[0].id.split("/")[1])
        # The new owner starts right after the acked head: the unacked rest comes again.
        unacked = [m for m in got if int(m.id.split("/")[1]) == moved and m is not heads[moved]]
        taken += _receive(second, len(unacked) - len(taken), timeout=10) if len(taken) < len(unacked) else []
        assert [m.id for m in taken] == [m.id for m in unacked]
        # Acks of the old delivery from the consumer that lost the partition change nothing.
        first.send_acks([m.ack_id for m in unacked])
        second.close()
        first.close()
    finally:
        admin.delete_topic(name)


def test_partition_offsets_in_bulk_match_one_at_a_time() -> None:
    state = PartitionOffsets()
    state.deliver_all([5, 6, 8, 9])  # one fetched run; 7 is a gap
    assert state.ack_all([6, 6, 42]) is False and state.pending_commit() is None  # 42: never delivered
    assert state.ack_all([9, 5]) is True and state.pending_commit() == 7  # any order
    assert state.ack_all([8]) is True and state.pending_commit() == 10
    state.deliver_all([10, 11])
    state.deliver_all([11, 12])  # the consumer went back to 11: what followed it is forgotten
    assert list(state.delivered) == [10, 11, 12]
    assert state.ack_all([10, 11, 12]) is True and state.pending_commit() == 13
