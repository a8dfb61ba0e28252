"""`Message`: one received message and its acknowledgement.

A message is acknowledged once: the first of `ack()` / `nack()` wins and the
rest are ignored, so a double ack is harmless and an ack after a nack does not
undo the redelivery. The actual acks travel to the broker in batches, sent by
the subscriber that delivered the message; `Subscriber.ack(messages)` settles
a whole batch under one lock, with the same rule.

Drivers build these objects themselves (`driver.IncomingMessage` is this
class), so receiving costs one object per message; the subscriber attaches
itself (`_sink`) when it hands a message to the caller.
"""

from __future__ import annotations

from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Protocol


class _AckSink(Protocol):
    """The subscriber side of acknowledgement (see `Subscriber._settle`)."""

    def _settle(self, message: Message, ack: bool) -> None: ...


class Message:
    """A received message.

    Attributes:
        data: the body, always bytes.
        attributes: string metadata sent with the message.
        key: the ordering key (Kafka message key / Pub/Sub ordering key), or None.
        id: the broker-assigned id (Kafka: "topic/partition/offset").
        publish_time: when the broker accepted it, if the broker says.
        delivery_attempt: 1 on first delivery, higher on redelivery; None if the broker does not count.
    """

    __slots__ = (
        "data", "attributes", "key", "id", "delivery_attempt", "_ack_id", "_stamp", "_sink", "_done", "_due",
    )  # fmt: skip

    _due: float  # monotonic time its emulated ack deadline passes; set on delivery where deadlines are emulated

    def __init__(
        self,
        data: bytes,
        attributes: dict[str, str],
        key: str | None,
        id: str,
        ack_id: Hashable,
        publish_time: datetime | float | None = None,
        delivery_attempt: int | None = None,
    ) -> None:
        # Positional parameters and no other work: drivers build one of these per received message.
        self.data = data
        self.attributes = attributes
        self.key = key
        self.id = id
        self._ack_id = ack_id
        self._stamp = publish_time  # a datetime, or POSIX seconds turned into one when read
        self.delivery_attempt = delivery_attempt
        self._sink: _AckSink | None = None
        self._done = False

    @property
    def publish_time(self) -> datetime | None:
        """When the broker accepted the message (timezone-aware UTC), or None if the broker does not say."""
        stamp = self._stamp
        if stamp is None or isinstance(stamp, datetime):
            return stamp
        # Drivers pass seconds: most callers never read the time, so the datetime is made on demand.
        when = datetime.fromtimestamp(stamp, tz=UTC)
        self._stamp = when
        return when

    @property
    def ack_id(self) -> Hashable:
        """The broker's handle for this delivery; opaque, used by the subscriber and its driver."""
        return self._ack_id

    def ack(self) -> None:
        """Acknowledge: the broker will not deliver this message again. Repeated calls are harmless."""
        if self._sink is not None and not self._done:
            self._sink._settle(self, True)

    def nack(self) -> None:
        """Ask for prompt redelivery. Ignored if the message was already acked or nacked.

        Raises InvalidArgument on a backend that cannot nack (then let the ack deadline pass instead).
        """
        if self._sink is not None and not self._done:
            self._sink._settle(self, False)

    @property
    def acked_or_nacked(self) -> bool:
        """True once ack() or nack() took effect (or the ack deadline passed on an emulated deadline)."""
        return self._done

    def __repr__(self) -> str:
        return (
            f"Message(id={self.id!r}, key={self.key!r}, attributes={self.attributes!r}, "
            f"data=<{len(self.data)} bytes>, delivery_attempt={self.delivery_attempt})"
        )
