"""Driver-level tests of the Pub/Sub backend against the real emulator (`scripts/services start`).

The conformance suite covers what users see; these pin down what only this driver does: splitting
large batches into several Publish requests without losing order, delivery attempts under a
dead-letter policy, receiving with StreamingPull (`pull="streaming"`; the suite runs the default
polled Pull), and clear errors for unreachable services and bad options.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import FlowControl, IncomingMessage, OutgoingMessage
from fashionstream.pubsub.drivers import gcppubsub as gcp
from fashionstream.pubsub.drivers.gcppubsub import client as gcp_client
from fashionstream.pubsub.drivers.gcppubsub import topic as gcp_topic
from fashionstream.pubsub.drivers.gcppubsub.admin import GcpAdminDriver
from fashionstream.pubsub.drivers.gcppubsub.subscription import GcpSubscriptionDriver
from fashionstream.pubsub.urls import parse_url

pytestmark = pytest.mark.gcp


@pytest.fixture
def project(pubsub_emulator: Any) -> str:
    return str(pubsub_emulator.project)


@pytest.fixture
def admin(project: str) -> Iterator[GcpAdminDriver]:
    driver = gcp.open_admin_driver(parse_url(f"gcppubsub://projects/{project}"), {})
    yield driver
    driver.close()


@pytest.fixture
def topic(admin: GcpAdminDriver) -> Iterator[str]:
    name = f"gcp-driver-{uuid.uuid4().hex[:10]}"
    assert admin.create_topic(name) is True
    yield name
    admin.delete_topic(name)


def _subscription(admin: GcpAdminDriver, topic: str, **kwargs: Any) -> str:
    name = f"gcp-driver-sub-{uuid.uuid4().hex[:10]}"
    assert admin.create_subscription(name, topic=topic, **kwargs) is True
    return name


def _receive(sub: GcpSubscriptionDriver, count: int, timeout: float = 30.0) -> list[IncomingMessage]:
    got: list[IncomingMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        batch = sub.receive_batch(count - len(got), 1.0)
        sub.send_acks([m.ack_id for m in batch])
        got += batch
    assert len(got) == count, f"received {len(got)} of {count} messages"
    return got


def test_a_batch_larger_than_one_publish_request_keeps_order_per_key(
    admin: GcpAdminDriver, project: str, topic: str
) -> None:
    # Real message ordering, which the driver leaves off on the emulator by default (see drivers/gcppubsub);
    # three keys cost the emulator three threads.
    ordered_admin = gcp.open_admin_driver(parse_url(f"gcppubsub://projects/{project}"), {"message_ordering": True})
    subscription = _subscription(ordered_admin, topic)
    ordered_admin.close()
    count = gcp_topic.MAX_PUBLISH_MESSAGES * 2 + 17  # three Publish requests
    pub = gcp.open_topic_driver(parse_url(f"gcppubsub://projects/{project}/topics/{topic}"), {})
    try:
        ids = pub.send_batch([OutgoingMessage(data=str(i).encode(), key=f"k{i % 3}") for i in range(count)], 60.0)
    finally:
        pub.close()
    assert len(ids) == count and len(set(ids)) == count
    sub = gcp.open_subscription_driver(parse_url(f"gcppubsub://projects/{project}/subscriptions/{subscription}"), {})
    try:
        got = _receive(sub, count, timeout=60.0)
    finally:
        sub.close()
    for key in ("k0", "k1", "k2"):
        sequence = [int(m.data) for m in got if m.key == key]
        assert sequence == sorted(sequence) and len(sequence) == len(range(int(key[1]), count, 3))
    admin.delete_subscription(subscription)


def test_chunks_respect_the_request_size_limit() -> None:
    big = OutgoingMessage(data=b"x" * (4 * 1024 * 1024))
    chunks = list(gcp_topic._chunks([big, big, big, OutgoingMessage(data=b"small")]))
    assert [len(c) for c in chunks] == [2, 2]
    assert list(gcp_topic._chunks([])) == []


def test_delivery_attempt_counts_under_a_dead_letter_policy(admin: GcpAdminDriver, project: str, topic: str) -> None:
    dead_letter = f"gcp-driver-dlq-{uuid.uuid4().hex[:8]}"
    admin.create_topic(dead_letter)
    subscription = _subscription(admin, topic, dead_letter_topic=dead_letter, max_delivery_attempts=5)
    pub = gcp.open_topic_driver(parse_url(f"gcppubsub://projects/{project}/topics/{topic}"), {})
    pub.send_batch([OutgoingMessage(data=b"again")], 30.0)
    pub.close()
    sub = gcp.open_subscription_driver(parse_url(f"gcppubsub://projects/{project}/subscriptions/{subscription}"), {})
    try:
        attempts = []
        deadline = time.monotonic() + 30
        while len(attempts) < 2 and time.monotonic() < deadline:
            for message in sub.receive_batch(1, 1.0):
                attempts.append(message.delivery_attempt)
                if len(attempts) == 1:
                    sub.send_nacks([message.ack_id])
                else:
                    sub.send_acks([message.ack_id])
        assert attempts == [1, 2]
    finally:
        sub.close()
        admin.delete_subscription(subscription)
        admin.delete_topic(dead_letter)


def test_without_a_dead_letter_policy_delivery_attempt_is_unknown(
    admin: GcpAdminDriver, project: str, topic: str
) -> None:
    subscription = _subscription(admin, topic)
    pub = gcp.open_topic_driver(parse_url(f"gcppubsub://projects/{project}/topics/{topic}"), {})
    pub.send_batch([OutgoingMessage(data=b"once", attributes={"a": "b"})], 30.0)
    pub.close()
    sub = gcp.open_subscription_driver(parse_url(f"gcppubsub://projects/{project}/subscriptions/{subscription}"), {})
    try:
        (message,) = _receive(sub, 1)
        assert message.delivery_attempt is None
        assert message.attributes == {"a": "b"} and message.key is None
        assert message.publish_time is not None and message.publish_time.tzinfo is not None
    finally:
        sub.close()
        admin.delete_subscription(subscription)


def test_streaming_pull_receives_acks_and_nacks(admin: GcpAdminDriver, project: str, topic: str) -> None:
    subscription = _subscription(admin, topic, ack_deadline_s=30)
    url = parse_url(f"gcppubsub://projects/{project}/subscriptions/{subscription}")
    pub = gcp.open_topic_driver(parse_url(f"gcppubsub://projects/{project}/topics/{topic}"), {})
    pub.send_batch([OutgoingMessage(data=f"s{i}".encode(), attributes={"i": str(i)}) for i in range(5)], 30.0)
    sub = gcp.open_subscription_driver(url, {"pull": "streaming"}, FlowControl(max_messages=100, max_bytes=1 << 20))
    try:
        first = _receive_unacked(sub, 5)
        assert sorted(m.data for m in first) == [f"s{i}".encode() for i in range(5)]
        assert all(m.attributes == {"i": m.data.decode()[1:]} and m.publish_time is not None for m in first)
        sub.send_nacks([first[0].ack_id])  # comes back
        sub.send_acks([m.ack_id for m in first[1:]])  # on the stream
        (again,) = _receive_unacked(sub, 1)
        assert again.data == first[0].data
        sub.send_acks([again.ack_id])
        pub.send_batch([OutgoingMessage(data=b"unclaimed")], 30.0)
        deadline = time.monotonic() + 30
        while not sub._inbox and time.monotonic() < deadline:  # the stream brought it; nobody took it
            time.sleep(0.05)
    finally:
        sub.close()  # hands the unclaimed message back at once
        pub.close()
    polled = gcp.open_subscription_driver(url, {})
    try:
        (left,) = _receive(polled, 1)  # only the unclaimed one: the acks on the stream held
        assert left.data == b"unclaimed"
        assert polled.receive_batch(10, 1.0) == []
    finally:
        polled.close()
        admin.delete_subscription(subscription)


def test_a_broken_stream_is_reported_once_then_reopened(admin: GcpAdminDriver, project: str, topic: str) -> None:
    subscription = _subscription(admin, topic)
    url = parse_url(f"gcppubsub://projects/{project}/subscriptions/{subscription}")
    sub = gcp.open_subscription_driver(url, {"pull": "streaming"})
    try:
        assert sub.receive_batch(10, 0.2) == []
        assert sub._stream is not None
        sub._stream.send(None)  # half-closed: the service ends the stream
        with pytest.raises(Exception) as caught:  # noqa: PT011 - whatever the stream ended with
            for _ in range(50):
                sub.receive_batch(10, 0.2)
        assert sub.is_retryable(caught.value)  # the portable layer retries it
        pub = gcp.open_topic_driver(parse_url(f"gcppubsub://projects/{project}/topics/{topic}"), {})
        pub.send_batch([OutgoingMessage(data=b"after")], 30.0)
        pub.close()
        (message,) = _receive(sub, 1)  # a new stream
        assert message.data == b"after"
    finally:
        sub.close()
        admin.delete_subscription(subscription)


def test_pull_option_must_be_a_known_mode(project: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="streaming, polling"):
        gcp.open_subscription_driver(parse_url(f"gcppubsub://projects/{project}/subscriptions/s1"), {"pull": "push"})


def _receive_unacked(sub: GcpSubscriptionDriver, count: int, timeout: float = 30.0) -> list[IncomingMessage]:
    got: list[IncomingMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += sub.receive_batch(count - len(got), 1.0)
    assert len(got) == count, f"received {len(got)} of {count} messages"
    return got


def test_admin_create_is_idempotent_and_missing_topics_are_not_found(admin: GcpAdminDriver, topic: str) -> None:
    assert admin.create_topic(topic) is False
    missing = f"nope-{uuid.uuid4().hex[:8]}"
    with pytest.raises(errors.NotFound, match=missing):
        admin.create_subscription(f"sub-{missing}", topic=missing)
    with pytest.raises(errors.NotFound):
        admin.delete_topic(missing)


def test_unreachable_emulator_is_unavailable_naming_the_address(monkeypatch: pytest.MonkeyPatch, project: str) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    monkeypatch.setattr(gcp_client, "METADATA_TIMEOUT_S", 2.0)
    with pytest.raises((errors.Unavailable, errors.Timeout), match=r"127\.0\.0\.1:1\b"):
        gcp.open_topic_driver(parse_url(f"gcppubsub://projects/{project}/topics/anything"), {})


def test_message_ordering_option_must_be_a_bool(project: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="message_ordering"):
        gcp.open_admin_driver(parse_url(f"gcppubsub://projects/{project}"), {"message_ordering": "yes"})


def test_unknown_option_and_bad_url_are_invalid_argument(project: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="linger.ms"):
        gcp.open_topic_driver(parse_url(f"gcppubsub://projects/{project}/topics/t1"), {"linger.ms": 5})
    with pytest.raises(errors.InvalidArgument, match="does not name a Pub/Sub topic"):
        gcp.open_topic_driver(parse_url(f"gcppubsub://projects/{project}/subscriptions/s1"), {})
