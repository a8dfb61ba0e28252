"""Publishing to one Kafka topic: an idempotent producer, one wait for every delivery report of a batch."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence

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
        self._topic = topic_name(url)
        self._address = bootstrap_servers(url)
        self.name = f"kafka topic {self._topic!r} at {self._address}"
        self._client_log = ClientLog(f"kafka producer for {self._topic!r} at {self._address}")
        config = client_config(
            url,
            options,
            {
                "enable.idempotence": True,
                "acks": "all",
                "message.max.bytes": MAX_MESSAGE_BYTES,
                # A send that cannot be delivered fails after this long instead of the default 5 minutes.
                "message.timeout.ms": 60_000,
            },
            self._client_log,
        )
        self._producer: Producer = make_client(Producer, config, self.name)
        check_topic(self._producer, self._topic, self._address, f"opening {self.name}")
        self._client_log.opened = True

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


__all__ = ["KafkaTopicDriver"]
