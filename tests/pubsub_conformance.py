"""The pub/sub conformance suite: what "a working driver" means, written once.

`ConformanceCases` holds the cases as test methods over a `backend` fixture
(see conftest.py); `test_pubsub_conformance.py` runs them against mem, Kafka
and the Pub/Sub emulator. A new backend passes when this class passes on it.

Every case makes its own uniquely named topic and subscription, so cases never
see each other's messages. Waits are bounded (RECEIVE_TIMEOUT) but never timed
assertions: a slow broker makes a case slower, not red.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import wait
from typing import Any

import pytest

from fashionstream.pubsub import (
    Closed,
    InvalidArgument,
    Message,
    NotFound,
    OutgoingMessage,
    Subscriber,
    admin,
    open_subscription,
    open_topic,
)

RECEIVE_TIMEOUT = 60.0  # seconds; generous because Kafka group joins take a few seconds


def receive_exactly(sub: Subscriber, count: int, *, ack: bool = True) -> list[Message]:
    """Receive `count` messages (acking them unless told not to); fail with what arrived if fewer come."""
    got: list[Message] = []
    deadline = time.monotonic() + RECEIVE_TIMEOUT
    while len(got) < count and time.monotonic() < deadline:
        batch = sub.receive_batch(count - len(got), timeout=1.0)
        for message in batch:
            if ack:
                message.ack()
        got.extend(batch)
    assert len(got) == count, f"received {len(got)} of {count} messages within {RECEIVE_TIMEOUT} s"
    return got


def send_all(url: str, bodies: list[bytes], **kwargs: Any) -> list[str]:
    """Send `bodies` and wait for every id."""
    with open_topic(url) as pub:
        futures = [pub.send(body, **kwargs) for body in bodies]
        return [f.result(timeout=RECEIVE_TIMEOUT) for f in futures]


class ConformanceCases:
    """Subclass in a test module (`class TestX(ConformanceCases): pass`) to run on the `backend` fixture."""

    def test_round_trip_with_attributes_and_key(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        with open_topic(topic) as pub:
            message_id = pub.send(b"hello", attributes={"kind": "greeting", "n": "1"}, key="k1").result(60)
        assert isinstance(message_id, str) and message_id
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            (message,) = receive_exactly(sub, 1)
        assert message.data == b"hello"
        assert message.attributes == {"kind": "greeting", "n": "1"}
        assert message.key == "k1"
        assert message.id
        assert message.delivery_attempt in (None, 1)

    def test_binary_and_non_utf8_bodies(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        bodies = [bytes(range(256)), b"\xff\xfe\xfd\x00\x80", b"\x00" * 100, "naïve ☃".encode("utf-16")]
        send_all(topic, bodies)
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            got = receive_exactly(sub, len(bodies))
        assert sorted(m.data for m in got) == sorted(bodies)

    def test_empty_body_with_attribute(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        send_all(topic, [b""], attributes={"empty": "yes"})
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            (message,) = receive_exactly(sub, 1)
        assert message.data == b""
        assert message.attributes == {"empty": "yes"}

    def test_odd_unicode_attribute_values(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        attributes = {
            "emoji": "😀🚀",
            "cjk": "日本語のテキスト",
            "combining": "e\u0301",
            "zero_width": "a\u200bb",
            "newline": "line\nbreak\ttab",
            "quotes": "\"'`",
            "empty": "",
            "rtl": "\u05e9\u05dc\u05d5\u05dd",
        }
        send_all(topic, [b"x"], attributes=attributes)
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            (message,) = receive_exactly(sub, 1)
        assert message.attributes == attributes

    def test_one_megabyte_message(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        body = os.urandom(1_000_000)
        send_all(topic, [body])
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            (message,) = receive_exactly(sub, 1)
        assert message.data == body

    def test_byte_cap_stops_fetching_until_acks_free_room(self, backend: Any) -> None:
        """max_outstanding_bytes: unacked bodies stop fetching at the cap; acks free room; a larger one comes alone."""
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        cap = 250_000
        bodies = [bytes([i]) * 100_000 for i in range(5)] + [b"L" * 400_000]  # the last alone is over the cap
        send_all(topic, bodies)
        options = {**backend.subscriber_options, "max_outstanding_bytes": cap}
        with open_subscription(sub_url, **options) as sub:
            held: list[Message] = []
            while batch := sub.receive_batch(10, timeout=3.0):  # nothing acked: it must stop by itself
                held.extend(batch)
            received = sum(len(m.data) for m in held)
            assert held and sub.held_bytes == received
            # It stopped because the cap was reached, and the last fetch began below it.
            assert received >= cap and received - len(held[-1].data) < cap, [len(m.data) for m in held]
            got = list(held)
            sub.ack(held)
            assert sub.held_bytes == 0  # acked bodies are no longer held
            while len(got) < len(bodies):  # acks free room: the rest comes, the 400 kB one too
                batch = sub.receive_batch(10, timeout=RECEIVE_TIMEOUT)
                assert batch, f"received {len(got)} of {len(bodies)}"
                assert sub.held_bytes <= cap + 400_000
                sub.ack(batch)
                got.extend(batch)
            assert sub.held_bytes == 0
        assert sorted(m.data for m in got) == sorted(bodies)

    def test_two_subscriptions_each_receive_everything(self, backend: Any) -> None:
        topic = backend.new_topic()
        first = backend.new_subscription(topic)
        second = backend.new_subscription(topic)
        bodies = [f"m{i}".encode() for i in range(20)]
        send_all(topic, bodies)
        for url in (first, second):
            with open_subscription(url, **backend.subscriber_options) as sub:
                got = receive_exactly(sub, len(bodies))
            assert sorted(m.data for m in got) == sorted(bodies), url

    def test_two_consumers_of_one_subscription_split_the_work(self, backend: Any) -> None:
        topic = backend.new_topic(partitions=2)  # Kafka splits work by partition
        sub_url = backend.new_subscription(topic)
        consumers = [open_subscription(sub_url, **backend.subscriber_options) for _ in range(2)]
        received: list[list[Message]] = [[], []]
        stop = threading.Event()

        def consume(index: int) -> None:
            while not stop.is_set():
                try:
                    batch = consumers[index].receive_batch(50, timeout=0.5)
                except Closed:
                    return
                for message in batch:
                    message.ack()
                received[index].extend(batch)

        threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(2)]
        for thread in threads:
            thread.start()
        try:
            with open_topic(topic) as pub:
                # Warm up until both consumers got something: then the group (Kafka) is settled
                # and no rebalance can hand a message to both.
                deadline = time.monotonic() + RECEIVE_TIMEOUT
                n = 0
                while not all(received) and time.monotonic() < deadline:
                    pub.send(b"warm-up", attributes={"phase": "warm-up"}, key=f"w{n % 8}").result(30)
                    n += 1
                    time.sleep(0.2)
                assert all(received), "one consumer never received anything: the work was not split"
                bodies = [f"job-{i}".encode() for i in range(200)]
                wait([pub.send(body, attributes={"phase": "work"}, key=f"k{i % 16}") for i, body in enumerate(bodies)])
            deadline = time.monotonic() + RECEIVE_TIMEOUT
            while time.monotonic() < deadline:
                work = [m.data for part in received for m in list(part) if m.attributes.get("phase") == "work"]
                if len(set(work)) == len(bodies):
                    break
                time.sleep(0.2)
            time.sleep(1.0)  # let any duplicate show up before counting
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
            for consumer in consumers:
                consumer.close()
        work_counts = Counter(m.data for part in received for m in part if m.attributes.get("phase") == "work")
        assert set(work_counts) == set(bodies), f"missing: {sorted(set(bodies) - set(work_counts))[:5]}"
        twice = [body for body, c in work_counts.items() if c > 1]
        assert not twice, f"processed more than once: {twice[:5]}"
        per_consumer = [sum(1 for m in part if m.attributes.get("phase") == "work") for part in received]
        assert sum(per_consumer) == len(bodies)

    def test_nack_redelivers(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        send_all(topic, [b"again"])
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            first = sub.receive(timeout=RECEIVE_TIMEOUT)
            first.nack()
            second = sub.receive(timeout=RECEIVE_TIMEOUT)
            second.ack()
        assert second.data == b"again"
        if first.delivery_attempt is not None and second.delivery_attempt is not None:
            assert second.delivery_attempt > first.delivery_attempt

    def test_message_failing_max_delivery_attempts_moves_to_the_dead_letter_topic(self, backend: Any) -> None:
        topic = backend.new_topic()
        dead = backend.new_topic(prefix="dead")
        dead_sub_url = backend.new_subscription(dead)
        sub_url = backend.new_subscription(topic, dead_letter_topic=dead, max_delivery_attempts=5)
        send_all(topic, [b"poison", b"fine"], attributes={"kind": "test"})
        attempts: list[int | None] = []
        moved: list[Message] = []
        options = {**backend.subscriber_options, **backend.dead_letter_options(dead, 5)}
        with (
            open_subscription(sub_url, **options) as sub,
            open_subscription(dead_sub_url, **backend.subscriber_options) as dead_sub,
        ):
            deadline = time.monotonic() + RECEIVE_TIMEOUT
            while not moved and time.monotonic() < deadline:
                for message in sub.receive_batch(10, timeout=0.5):
                    if message.data == b"poison":
                        attempts.append(message.delivery_attempt)
                        message.nack()
                    else:
                        message.ack()
                moved = dead_sub.receive_batch(10, timeout=0.2)
            for message in moved:
                message.ack()
            # Given up on: it is not delivered again.
            later = sub.receive_batch(10, timeout=3.0)
        assert [m.data for m in moved] == [b"poison"], f"dead-lettered: {moved}, after attempts {attempts}"
        assert moved[0].attributes.items() >= {"kind": "test"}.items()
        assert attempts == [1, 2, 3, 4, 5]
        assert [m.data for m in later] == []

    def test_unacked_message_comes_back_after_consumer_closes(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        send_all(topic, [b"not acked"])
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            assert sub.receive(timeout=RECEIVE_TIMEOUT).data == b"not acked"  # and never acked
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            again = sub.receive(timeout=RECEIVE_TIMEOUT)
            again.ack()
        assert again.data == b"not acked"

    def test_double_ack_is_harmless_and_nack_after_ack_is_ignored(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        with open_topic(topic) as pub, open_subscription(sub_url, **backend.subscriber_options) as sub:
            pub.send(b"first").result(60)
            message = sub.receive(timeout=RECEIVE_TIMEOUT)
            message.ack()
            message.ack()
            message.nack()  # ignored: the ack came first
            pub.send(b"second").result(60)
            following = sub.receive(timeout=RECEIVE_TIMEOUT)
            following.ack()
        assert (message.data, following.data) == (b"first", b"second")

    def test_order_is_kept_per_key(self, backend: Any) -> None:
        # Many small batches of interleaved keys, all sent without waiting: several batches holding
        # the same keys are in flight at once, so a publisher that sends them concurrently (or lets a
        # retried batch be overtaken) delivers some key out of order.
        topic = backend.new_topic(partitions=3)
        sub_url = backend.new_subscription(topic)
        keys = [f"key-{k}" for k in range(16)]
        count = 4000
        # Switching threads every 10 µs instead of 5 ms lets concurrent batches interleave even on
        # a broker that confirms fast (without it the Kafka case passed on the broken publisher).
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        try:
            with open_topic(topic, batch_size=20, linger=0, max_in_flight=4) as pub:
                futures = [
                    pub.send(f"{i}".encode(), attributes={"seq": str(i)}, key=keys[i % len(keys)]) for i in range(count)
                ]
                for future in futures:
                    future.result(RECEIVE_TIMEOUT)
        finally:
            sys.setswitchinterval(switch_interval)
        # Brokers that hold a key back while its previous message is unacked (mem, ordered Pub/Sub)
        # deliver one message per key per ack round trip: send acks often.
        with open_subscription(sub_url, **backend.subscriber_options, max_outstanding=2000, poll_interval=0.01) as sub:
            got = receive_exactly(sub, count)
        seen: dict[str, list[int]] = defaultdict(list)
        for message in got:
            assert message.key is not None
            seen[message.key].append(int(message.attributes["seq"]))
        assert set(seen) == set(keys)
        for key, sequence in seen.items():
            inversions = sum(1 for a, b in zip(sequence, sequence[1:], strict=False) if b < a)
            assert inversions == 0, f"key {key}: {inversions} messages arrived before an earlier one"
            assert len(sequence) == count // len(keys), f"key {key}: {len(sequence)} messages (duplicates?)"

    def test_ten_thousand_sent_then_close_all_received(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        count = 10_000
        pub = open_topic(topic)
        futures = [pub.send(f"{i:05d}".encode()) for i in range(count)]
        pub.close()  # close alone must deliver everything queued
        assert all(f.done() and f.exception() is None for f in futures)
        with open_subscription(sub_url, **backend.subscriber_options, max_outstanding=2000) as sub:
            got = receive_exactly(sub, count)
        assert len({m.data for m in got}) == count

    def test_send_and_receive_after_close_raise_closed(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        pub = open_topic(topic)
        pub.close()
        pub.close()  # twice is harmless
        with pytest.raises(Closed):
            pub.send(b"late")
        sub = open_subscription(sub_url, **backend.subscriber_options)
        sub.close()
        with pytest.raises(Closed):
            sub.receive(timeout=1)
        with pytest.raises(Closed):
            sub.receive_batch(10, timeout=1)
        assert list(sub) == []  # iteration ends at once on a closed subscriber

    # -- batches: send_batch, Subscriber.ack / nack ------------------------------------------

    def test_batch_send_returns_ids_in_order_and_all_arrive_with_attributes_and_keys(self, backend: Any) -> None:
        topic = backend.new_topic(partitions=2)
        sub_url = backend.new_subscription(topic)
        batch: list[Any] = [OutgoingMessage(f"b{i}".encode(), {"n": str(i)}, f"k{i % 3}") for i in range(30)]
        batch += [(b"plain tuple", None, None), (b"short tuple", {"n": "31"})]  # the tuple forms
        with open_topic(topic) as pub:
            ids = pub.send_batch(batch).result(RECEIVE_TIMEOUT)
        assert isinstance(ids, list) and len(ids) == len(batch)
        assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == len(ids)
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            got = receive_exactly(sub, len(batch))
        by_body = {m.data: m for m in got}
        assert set(by_body) == {item[0] for item in batch}
        for item, message_id in zip(batch, ids, strict=True):
            data, attributes, key = (*item, None, None)[:3]
            message = by_body[data]
            assert message.id == message_id, "ids come back in the order the batch was given"
            assert message.attributes == (attributes or {})
            assert message.key == key
        for key in ("k0", "k1", "k2"):
            sequence = [int(m.attributes["n"]) for m in got if m.key == key]
            assert sequence == sorted(sequence), f"key {key} out of order: {sequence}"

    def test_batch_send_to_a_missing_topic_fails_its_one_future(self, backend: Any) -> None:
        topic = backend.new_topic()
        # A topic deleted after the publisher opened it: the whole batch fails with one error.
        with open_topic(topic, send_timeout=5) as pub:
            pub.send(b"while it exists").result(RECEIVE_TIMEOUT)
            admin.delete_topic(topic)
            future = pub.send_batch([OutgoingMessage(b"a"), OutgoingMessage(b"b", key="k")])
            with pytest.raises(NotFound, match=backend.topic_of(topic)):
                future.result(RECEIVE_TIMEOUT)

    def test_send_batch_after_close_raises_closed(self, backend: Any) -> None:
        pub = open_topic(backend.new_topic())
        pub.close()
        with pytest.raises(Closed):
            pub.send_batch([OutgoingMessage(b"late")])

    def test_batch_ack_means_no_redelivery(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        send_all(topic, [f"acked-{i}".encode() for i in range(10)])
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            sub.ack(receive_exactly(sub, 10, ack=False))
        # Had the acks not arrived, close() would have handed the ten back for redelivery at once.
        send_all(topic, [b"marker"])
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            first = sub.receive(timeout=RECEIVE_TIMEOUT)
            first.ack()
            later = sub.receive_batch(100, timeout=2.0)
        assert first.data == b"marker"
        assert [m.data for m in later] == []

    def test_batch_nack_redelivers(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        bodies = [f"again-{i}".encode() for i in range(3)]
        send_all(topic, bodies)
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            sub.nack(receive_exactly(sub, 3, ack=False))
            again = receive_exactly(sub, 3, ack=False)
            sub.ack(again)
        assert sorted(m.data for m in again) == bodies

    def test_single_and_batch_acks_mix_and_repeats_are_harmless(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        send_all(topic, [f"mixed-{i}".encode() for i in range(6)])
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            got = receive_exactly(sub, 6, ack=False)
            got[0].ack()
            sub.ack(got[:3])  # got[0] a second time
            sub.ack(got)
            sub.ack(got)  # every one a second or third time
            got[1].ack()
            got[2].nack()  # ignored: acked first
            sub.nack(got[3:])  # ignored: acked first
        send_all(topic, [b"marker"])
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            first = sub.receive(timeout=RECEIVE_TIMEOUT)
            first.ack()
            later = sub.receive_batch(100, timeout=2.0)
        assert first.data == b"marker"
        assert [m.data for m in later] == []

    def test_unknown_query_parameter_is_invalid_argument(self, backend: Any) -> None:
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic)
        with pytest.raises(InvalidArgument, match="bogus"):
            open_topic(f"{topic}?bogus=1")
        separator = "&" if "?" in sub_url else "?"
        with pytest.raises(InvalidArgument, match="bogus"):
            open_subscription(f"{sub_url}{separator}bogus=1")

    def test_missing_topic_raises_not_found_naming_it(self, backend: Any, unique_name: Any) -> None:
        missing = unique_name("missing-topic")
        with pytest.raises(NotFound, match=missing), open_topic(backend.topic_url(missing)) as pub:
            pub.send(b"nowhere").result(60)

    def test_missing_subscription_raises_not_found_naming_it(self, backend: Any, unique_name: Any) -> None:
        # Kafka groups need no creation, so there the missing thing is the subscribed topic.
        topic = unique_name("missing-topic")
        subscription = unique_name("missing-sub")
        url = backend.subscription_url(topic, subscription)
        with pytest.raises(NotFound) as caught, open_subscription(url, **backend.subscriber_options) as sub:
            sub.receive(timeout=RECEIVE_TIMEOUT)
        text = str(caught.value)
        assert subscription in text or topic in text, text


# The consumer that gets killed: receives one message, reports it, then waits to be SIGKILLed.
_KILLED_CONSUMER = """
import json, sys, time
from fashionstream.pubsub import open_subscription
url, options = sys.argv[1], json.loads(sys.argv[2])
sub = open_subscription(url, **options)
message = sub.receive(timeout=120)
print(json.dumps({"data": message.data.decode()}), flush=True)
time.sleep(600)
"""


class ExternalConformanceCases:
    """Cases that need a broker outside this process; run on the `external_backend` fixture."""

    def test_unacked_message_comes_back_after_consumer_is_killed(self, external_backend: Any) -> None:
        backend = external_backend
        topic = backend.new_topic()
        sub_url = backend.new_subscription(topic, ack_deadline_s=10)
        send_all(topic, [b"orphan"])
        child = subprocess.Popen(
            [sys.executable, "-c", _KILLED_CONSUMER, sub_url, json.dumps(backend.subscriber_options)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = child.stdout.readline() if child.stdout else ""
            assert line, f"the child consumer exited without receiving (exit code {child.poll()})"
            assert json.loads(line)["data"] == "orphan"
        finally:
            child.send_signal(signal.SIGKILL)  # no close, no ack, no goodbye
            child.wait(30)
        with open_subscription(sub_url, **backend.subscriber_options) as sub:
            again = sub.receive(timeout=RECEIVE_TIMEOUT)
            again.ack()
        assert again.data == b"orphan"
