"""A short Kafka broker outage mid-stream: nothing lost, few duplicates, a quiet log, a quick clean stop.

A private broker (the shared one serves other tests) is killed with SIGKILL while images stream
through producer -> `fashionstream serve` (a real process) -> consumer, stays down for a few
seconds and is started again on its data, as after a crash and a restart by a supervisor. The
service and the test's clients run on the Kafka driver's defaults, as a user's would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fashionstream.pipeline.consumer import Tally, read_predictions
from fashionstream.pipeline.producer import ProduceSummary, labelled_test_images, produce
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import open_subscription, open_topic
from fashionstream.pubsub.errors import Unavailable
from own_kafka import OwnKafka
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.usefixtures("no_orphans")]

REQUESTS = 3000
RATE = 150.0  # images/s: a 20 s stream, so the outage falls well inside it
#: Duplicate answers allowed: those the service had taken in but not yet committed when the broker died
#: and that come again anyway (a publish that times out is nacked and rewinds its partition).
MAX_DUPLICATES = 100
DOWN_S = 5.0  # how long the broker stays dead before it is started again (the restart adds its own seconds)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[OwnKafka]:
    own = OwnKafka(tmp_path / "kafka")
    try:
        own.start()
        yield own
    finally:
        own.close()


def create_when_coordinator_ready(topology: Topology) -> None:
    """Create the topics and groups; a fresh broker creates its offsets topic first, which on a busy machine
    can outlast one admin call's retries (COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            topology.create()
            return
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def log_records(path: Path) -> list[dict[str, object]]:
    """The service's JSON log lines (stderr also carries the odd non-JSON line: kept as text)."""
    records: list[dict[str, object]] = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"message": line})
    return records


def test_a_short_broker_outage_loses_nothing_and_stays_quiet(broker: OwnKafka, tmp_path: Path) -> None:
    topology = Topology(f"kafka://{broker.address}")
    create_when_coordinator_ready(topology)
    service = ServiceProcess(topology, {}, tmp_path / "service.log")
    service.wait_healthy()
    tally = Tally()
    summary = ProduceSummary()
    # The default send_timeout (30 s) is shorter than a broker restart on a busy test machine can be; this
    # test is about the service and the consumer, so its producer waits the outage out.
    publisher = open_topic(topology.topic(topology.images), send_timeout=120)

    def send() -> None:
        with publisher:
            produce(publisher, labelled_test_images(REQUESTS), topology.flavour, rate=RATE, summary=summary)

    def done() -> bool:
        return not producer.is_alive() and set(summary.ids) <= set(tally.answered)

    producer = threading.Thread(target=send, daemon=True)
    with open_subscription(topology.predictions_subscription_url) as answers:
        producer.start()
        read_predictions(answers, tally, until=lambda: len(tally.answered) >= 600, idle_timeout=60)
        answered_at_kill = len(tally.answered)
        lines_before = len(log_records(service.log_path))
        broker.kill()
        killed = time.monotonic()
        time.sleep(DOWN_S)
        broker.start()  # returns once the broker answers again
        outage_s = time.monotonic() - killed
        read_predictions(answers, tally, until=done, idle_timeout=90)
        during = log_records(service.log_path)[lines_before:]
        redelivered = service.metric("fashionstream_redelivered_total")
        stop_from = len(log_records(service.log_path))
        assert service.stop() == 0, service.logs()
        at_stop = log_records(service.log_path)[stop_from:]

    print(
        f"\nbroker killed after {answered_at_kill} of {REQUESTS} answers, answering again {outage_s:.1f} s later; "
        f"duplicate answers {tally.duplicates}, redelivered to the service {redelivered:.0f}; "
        f"service log lines from the kill to the end of the stream {len(during)}, at stop {len(at_stop)}"
    )
    for record in during + [{"message": "(SIGTERM)"}] + at_stop:
        print("  ", record.get("time", ""), record.get("level", ""), str(record.get("message", ""))[:300])
    assert answered_at_kill < REQUESTS // 2, "the broker died after most of the stream: not a mid-stream outage"
    assert summary.confirmed == REQUESTS, f"{summary.failed} sends failed"
    missing = set(summary.ids) - set(tally.answered)
    assert not missing, f"{len(missing)} requests never answered"
    # What follows holds for an outage shorter than the consumer group's session timeout (45 s, the
    # driver's default) less the time the restarted broker takes to load the group's state.
    assert outage_s < 35, f"the broker took {outage_s:.0f} s to come back: too long for a short-outage test"
    messages = [str(record.get("message", "")) for record in during]
    assert not [m for m in messages if "session timed out" in m or "revok" in m], "the service lost its partitions"
    assert tally.duplicates <= MAX_DUPLICATES
    # Each Kafka client of the service (images consumer, answers and dead-letter producers) logs each
    # distinct connection error once and its count once the broker is back; plus the outage lines of
    # the service itself. Measured: 22-25 lines for a 36 s outage (one line per error per 30 s beyond).
    assert len(during) <= 40, messages
    # The counts of an outage are printed when it ends, not saved up for the stop.
    assert [r for r in at_stop if r.get("level") not in ("info", "debug")] == [], at_stop
