"""Publishing to one Kafka topic: an idempotent producer, one wait for every delivery report of a batch.

`send_batch` produces every message of the batch with its own delivery callback, then waits
for the batch's last report; one thread per producer serves the reports (it polls the
client, and the callbacks run there), for every lane at once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from fashionstream.pubsub.driver import OutgoingMessage, ParsedURL
from fashionstream.pubsub.drivers.kafka import bootstrap_servers, topic_name
from fashionstream.pubsub.drivers.kafka.client import (
    MAX_MESSAGE_BYTES,
    ClientLog,
    check_topic,
    client_config,
    make_client,
)
from fashionstream.pubsub.drivers.kafka.errors import classify, retryable
from fashionstream.pubsub.errors import ErrorCode
from fashionstream.pubsub.publisher import PublisherSettings

Headers = dict[str, str | bytes | None]

#: Longest wait, when opening, for the idempotent producer's id. librdkafka asks for it as soon as the
#: broker connection is up (the open's topic check makes it so) and has it a millisecond later; a
#: message produced before it arrives waits for librdkafka's next 500 ms timer instead (librdkafka
#: PR #5032), which put half a second on the first answers of every freshly opened producer. The
#: wait is bounded: past that timer the id has come anyway.
PRODUCER_ID_WAIT_S = 0.6


def _headers(attributes: Mapping[str, str]) -> Headers:
    """The attributes as the client's headers: the publisher's dict as it is, any other mapping copied."""
    return attributes if type(attributes) is dict else dict(attributes)


class KafkaTopicDriver:
    """Sends batches to one Kafka topic with an idempotent producer."""

    def __init__(self, url: ParsedURL, options: dict[str, object]) -> None:
        self._topic = topic_name(url)
        self._address = bootstrap_servers(url)
        self.name = f"kafka topic {self._topic!r} at {self._address}"
        self._client_log = ClientLog(f"kafka producer for {self._topic!r} at {self._address}", address=self._address)
        # The idempotent producer's id is reported only in librdkafka's "eos" debug log (a handful of
        # lines per producer, none per message): watched so that the open can wait for it.
        self._has_producer_id = threading.Event()
        self._client_log.watch = self._on_log_line
        config = client_config(
            url,
            options,
            {
                "enable.idempotence": True,
                "acks": "all",
                "message.max.bytes": MAX_MESSAGE_BYTES,
                # How long librdkafka keeps trying to deliver a message (its default: 5 minutes): the
                # publisher's default send_timeout. Longer, and a batch the publisher already reported
                # as failed could still be delivered once the broker is back, while its sender acts on
                # the failure (the model service nacks the request and answers it again: a duplicate
                # answer per message of the batch). A publisher with a longer send_timeout retries
                # the batch after librdkafka gave up on it (a retryable timeout).
                "message.timeout.ms": int(PublisherSettings.send_timeout * 1000),
                # The portable layer gathers batches already (its `linger`); librdkafka's default 5 ms
                # would come on top. 0 would send each message of a batch as it is produced (measured:
                # about three times the CPU per message); 1 ms lets a produced batch go as one.
                "linger.ms": 1,
                # The broker connections' state every 5 s: how an idle producer learns that an outage
                # it logged is over (`ClientLog.statistics`).
                "statistics.interval.ms": 5_000,
                "stats_cb": self._on_stats,
            },
            self._client_log,
        )
        idempotent = str(config.get("enable.idempotence")).lower() in ("true", "1")
        if idempotent:
            contexts = [c for c in str(config.get("debug", "")).split(",") if c]  # the caller's own, if any
            config["debug"] = ",".join(contexts if "eos" in contexts else [*contexts, "eos"])
        self._producer: Producer = make_client(Producer, config, self.name)
        check_topic(self._producer, self._client_log, self._topic, self._address, f"opening {self.name}")
        self._client_log.opened = True
        # Delivery reports are served by one thread for all lanes: a lane polling for its own
        # reports could sit out its poll timeout after another lane's poll served them.
        self._closing = threading.Event()
        self._reporter = threading.Thread(target=self._serve_reports, name="kafka-delivery-reports", daemon=True)
        self._reporter.start()
        if idempotent:
            # The reporting thread's polls serve the log lines; see PRODUCER_ID_WAIT_S.
            self._has_producer_id.wait(PRODUCER_ID_WAIT_S)

    @property
    def has_producer_id(self) -> bool:
        """Whether the idempotent producer has its id, so that a message sent now goes out at once."""
        return self._has_producer_id.is_set()

    def _on_log_line(self, facility: str, text: str) -> None:
        # "Idempotent producer state change WaitPID -> Assigned"; again after an epoch bump.
        if facility == "IDEMPSTATE" and text.endswith("-> Assigned"):
            self._has_producer_id.set()

    def _on_stats(self, stats_json: str) -> None:
        # Served by the reporting thread's poll, like the delivery callbacks. Parsed only when needed.
        if not self._client_log.disconnected:
            return
        with contextlib.suppress(ValueError):
            self._client_log.statistics(json.loads(stats_json))

    def _serve_reports(self) -> None:
        """Run delivery callbacks as reports come in (poll returns as soon as it served any)."""
        poll, closing = self._producer.poll, self._closing
        while not closing.is_set():
            poll(0.1)

    def send_batch(self, messages: Sequence[OutgoingMessage], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        count = len(messages)
        ids = [""] * count
        failures: list[KafkaError] = []
        done = threading.Event()
        # next() on itertools.count is atomic under the GIL: a lock-free completion counter for
        # callbacks that the reporting thread and a lane waiting for room may run at once.
        reported = itertools.count(1)
        producer, topic = self._producer, self._topic
        produce = producer.produce
        if not count:
            return ids
        for index, (data, attributes, key) in enumerate(messages):
            # Delivery reports carry no index, so each message gets its own callback (a function
            # with a default is the cheapest to make and to call); the raw client calls one per
            # message too. The attributes go as the headers dict, str values encoded by the client.
            def on_delivery(err: KafkaError | None, msg: Message, index: int = index) -> None:
                if err is None:
                    ids[index] = f"{topic}/{msg.partition()}/{msg.offset()}"
                elif not failures:
                    failures.append(err)
                if next(reported) == count:
                    done.set()

            headers = _headers(attributes) if attributes else None
            try:
                produce(topic, data, key, headers=headers, on_delivery=on_delivery)
            except BufferError:
                self._produce_when_room(data, key, headers, on_delivery, deadline, timeout)
        if not done.wait(max(deadline - time.monotonic(), 0.0)):
            # librdkafka holds messages for a topic that was deleted until message.timeout.ms, in
            # case it comes back: say NotFound (not worth a retry) rather than time out again.
            check_topic(
                self._producer, self._client_log, self._topic, self._address, f"sending to {self.name}", timeout=2.0
            )
            missing = sum(1 for i in ids if not i)
            raise TimeoutError(f"{self.name}: {missing} of {count} messages not confirmed within {timeout:.1f} s")
        if failures:
            raise KafkaException(failures[0])
        self._client_log.connected()  # the broker confirmed the batch: any connection outage is over
        return ids

    def _produce_when_room(
        self,
        data: bytes,
        key: str | None,
        headers: Headers | None,
        on_delivery: Callable[[KafkaError | None, Message], None],
        deadline: float,
        timeout: float,
    ) -> None:
        """Produce once the client's local queue has room: serving delivery reports makes room."""
        while True:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name}: local send queue still full after {timeout:.1f} s") from None
            self._producer.poll(0.05)
            try:
                self._producer.produce(self._topic, data, key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:
                continue

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        self._closing.set()
        self._reporter.join(5.0)
        # The publisher has flushed (or given up flushing) before closing the driver: what librdkafka
        # still holds is abandoned, e.g. answers to a topic that vanished, which it would otherwise
        # retry until message.timeout.ms. Purged, their reports fail at once and close stays quick.
        self._producer.purge()
        self._producer.flush(5.0)
        self._client_log.flush()  # the repeat counts still pending


__all__ = ["KafkaTopicDriver"]
