"""Lease renewal on Pub/Sub: a message held longer than the ack deadline is not redelivered meanwhile.

On the emulator, with the shortest ack deadline it allows (10 s): one consumer holds a message
for twice that before acking it, while a second consumer of the same subscription keeps asking.
Without renewal the message goes to the second consumer once the first deadline passes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from conftest import Backend, Emulator
from fashionstream.pubsub import open_subscription
from pubsub_conformance import send_all

ACK_DEADLINE_S = 10  # the emulator's (and Pub/Sub's) minimum
HOLD_S = 2 * ACK_DEADLINE_S + 2


@pytest.fixture
def backend_gcp(pubsub_emulator: Emulator) -> Iterator[Backend]:
    made = Backend("gcp", f"gcppubsub://projects/{pubsub_emulator.project}", project=pubsub_emulator.project)
    yield made
    made.cleanup()


@pytest.mark.gcp
@pytest.mark.parametrize("pull", ["polling", "streaming"])
def test_a_message_held_past_the_ack_deadline_is_not_redelivered(backend_gcp: Backend, pull: str) -> None:
    topic = backend_gcp.new_topic()
    sub_url = backend_gcp.new_subscription(topic, ack_deadline_s=ACK_DEADLINE_S)
    send_all(topic, [b"slow"])
    with open_subscription(sub_url, pull=pull) as holder:
        held = holder.receive(timeout=60)
        assert held.data == b"slow"
        received_at = time.monotonic()
        # The second consumer joins only once the message is held: a streaming pull opened earlier may be
        # the one the emulator hands the message to, and then the holder would never see it.
        with open_subscription(sub_url, pull=pull) as other:
            stolen = []
            while time.monotonic() - received_at < HOLD_S:  # the slow batch, still being worked on
                stolen += other.receive_batch(10, timeout=1.0)
                stolen += holder.receive_batch(10, timeout=0.1)
            held.ack()
            stolen += other.receive_batch(10, timeout=3.0)
    assert [m.data for m in stolen] == [], f"redelivered while held: {[m.delivery_attempt for m in stolen]}"
