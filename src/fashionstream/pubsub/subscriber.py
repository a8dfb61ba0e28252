"""`Subscriber`: the portable receiving side, written once for every backend.

One worker thread per subscriber does all the talking to the driver (so a
driver never sees two threads at once): it sends the acks and nacks collected
since its last turn, nacks messages whose emulated ack deadline passed, and
prefetches the next batch into a buffer that `receive` / `receive_batch` /
iteration take from. Prefetch is bounded: the buffer holds at most
`receive_batch_size` messages and buffer plus unacked messages at most
`max_outstanding`, so a slow consumer does not hoard messages whose broker
deadline is ticking.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import IncomingMessage, SubscriptionDriver
from fashionstream.pubsub.message import Message
from fashionstream.pubsub.retry import backoff_delays, call_with_retries, wrap_error

log = logging.getLogger(__name__)

#: Options `open_subscription` consumes itself; every other option goes to the driver.
SUBSCRIBER_OPTIONS = frozenset(
    {"ack_deadline", "max_outstanding", "receive_batch_size", "poll_interval", "retry_timeout"}
)

# Used as the ack deadline on backends without native deadlines when none is given (Pub/Sub's default is 10-600 s).
DEFAULT_EMULATED_ACK_DEADLINE = 30.0


@dataclass(frozen=True)
class SubscriberSettings:
    """Portable subscriber options (see docs/pubsub.md)."""

    # Seconds a delivered message may stay unacked before it is nacked for redelivery. None: the
    # broker's own deadline (mem, Pub/Sub), or 30 s emulated on backends without deadlines (Kafka).
    ack_deadline: float | None = None
    max_outstanding: int = 1000  # buffered + delivered-but-unacked messages at most
    receive_batch_size: int = 100  # messages asked of the driver per call
    poll_interval: float = 0.1  # seconds one driver receive call may wait; also the ack batching period
    retry_timeout: float = 30.0  # seconds of retryable driver errors before receive() reports them

    def __post_init__(self) -> None:
        for name in ("max_outstanding", "receive_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise errors.InvalidArgument(f"subscriber option {name} must be a positive int, got {value!r}")
        for name in ("poll_interval", "retry_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise errors.InvalidArgument(f"subscriber option {name} must be seconds > 0, got {value!r}")
        if self.ack_deadline is not None and (not isinstance(self.ack_deadline, int | float) or self.ack_deadline <= 0):
            raise errors.InvalidArgument(
                f"subscriber option ack_deadline must be seconds > 0, got {self.ack_deadline!r}"
            )


class Subscriber:
    """Receives messages from one subscription or consumer group. Open with `open_subscription(url)`.

    Thread-safe: several threads may receive and ack at once.
    """

    def __init__(
        self,
        driver: SubscriptionDriver,
        settings: SubscriberSettings | None = None,
        *,
        native_ack_deadlines: bool = True,
    ) -> None:
        self._driver = driver
        self._settings = settings = settings or SubscriberSettings()
        self._can_nack = bool(driver.can_nack())
        # Emulate deadlines when asked explicitly, or by default where the broker has none.
        deadline = settings.ack_deadline
        if deadline is None and not native_ack_deadlines:
            deadline = DEFAULT_EMULATED_ACK_DEADLINE
        self._ack_deadline = deadline if self._can_nack else None
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # signalled when the buffer fills, on error and on close
        self._buffer: collections.deque[IncomingMessage] = collections.deque()
        self._outstanding: dict[Hashable, Message] = {}
        self._deadlines: collections.deque[tuple[float, list[Message]]] = collections.deque()
        self._pending_acks: list[Hashable] = []
        self._pending_nacks: list[Hashable] = []
        self._error: errors.PubSubError | None = None
        self._error_is_final = False
        self._closed = False
        self._stop = threading.Event()
        # The worker sleeps on _wake when the buffer is full; takers and ackers set it only while
        # _starved, so the common path costs no extra lock.
        self._wake = threading.Event()
        self._starved = False
        self._worker = threading.Thread(target=self._work, name="pubsub-receive", daemon=True)
        self._worker.start()

    @property
    def name(self) -> str:
        """What this subscriber receives from, e.g. "mem subscription 'service' on topic 'images'"."""
        return self._driver.name

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Message:
        """The next message; waits up to `timeout` seconds (forever if None).

        Raises Timeout if none arrived in time, Closed after close(), or the broker's
        error (NotFound, Unavailable, ...) if receiving failed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while True:
                self._raise_if_closed()
                if self._buffer:
                    if self._starved:
                        self._starved = False  # one wake-up per stall, not one per message
                        self._wake.set()
                    return self._deliver(1)[0]
                if self._error is not None:
                    raise self._error
                if deadline is None:
                    self._ready.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise errors.Timeout(f"no message from {self._driver.name} within {timeout} s")
                    self._ready.wait(remaining)

    def receive_batch(self, max_messages: int = 100, timeout: float | None = None) -> list[Message]:
        """Up to `max_messages` messages: what is available once at least one is, or [] after `timeout`."""
        if max_messages < 1:
            raise errors.InvalidArgument(f"max_messages must be at least 1, got {max_messages}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while True:
                self._raise_if_closed()
                if self._buffer:
                    count = min(max_messages, len(self._buffer))
                    if self._starved:
                        self._starved = False  # one wake-up per stall, not one per message
                        self._wake.set()
                    return self._deliver(count)
                if self._error is not None:
                    raise self._error
                if deadline is None:
                    self._ready.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return []
                    self._ready.wait(remaining)

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until the subscriber is closed (from another thread, say)."""
        while True:
            try:
                yield self.receive()
            except errors.Closed:
                return

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Send pending acks, hand unacked messages back for redelivery, release the driver.

        Messages received but not acked are not acked: the broker delivers them
        again (promptly where the backend can nack). Later receives raise Closed;
        acks after close are ignored. Calling close twice is harmless.
        """
        with self._ready:
            if self._closed:
                return
            self._closed = True
            self._ready.notify_all()
        self._stop.set()
        self._wake.set()
        self._worker.join(self._settings.retry_timeout + 5.0)
        try:
            self._driver.close()
        except Exception as err:
            raise wrap_error(self._driver, err, "closing") from err

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Subscriber({self._driver.name}{', closed' if self._closed else ''})"

    # -- called by Message -------------------------------------------------------------------

    def _settle(self, message: Message, ack: bool) -> None:
        if not ack and not self._can_nack:
            raise errors.InvalidArgument(
                f"{self._driver.name} cannot nack; leave the message unacked and it is redelivered "
                "after the ack deadline"
            )
        with self._lock:
            if message._done:
                return
            message._done = True
            if self._closed:
                return  # the driver is gone; the broker redelivers it
            self._outstanding.pop(message._ack_id, None)
            (self._pending_acks if ack else self._pending_nacks).append(message._ack_id)
            if self._starved:
                self._starved = False
                self._wake.set()

    # -- internals (lock held where noted) ---------------------------------------------------

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise errors.Closed(
                f"subscriber for {self._driver.name} is closed; open a new one with open_subscription()"
            )

    def _deliver(self, count: int) -> list[Message]:
        """Take `count` buffered messages and wrap them for the caller (lock held)."""
        take, outstanding = self._buffer.popleft, self._outstanding
        messages: list[Message] = []
        for _ in range(count):
            incoming = take()
            message = Message(
                data=incoming.data,
                attributes=incoming.attributes,
                key=incoming.key,
                id=incoming.id,
                ack_id=incoming.ack_id,
                publish_time=incoming.publish_time,
                delivery_attempt=incoming.delivery_attempt,
                sink=self,
            )
            outstanding[incoming.ack_id] = message
            messages.append(message)
        if self._ack_deadline is not None:
            # One deadline per delivered batch, not per message: they share it.
            self._deadlines.append((time.monotonic() + self._ack_deadline, messages))
        return messages

    def _expire(self, now: float) -> list[Hashable]:
        """Nack delivered messages whose emulated deadline passed (lock held).

        Deadlines are equal for all messages, so delivery order is deadline order.
        """
        expired: list[Hashable] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, messages = self._deadlines.popleft()
            for message in messages:
                if not message._done:
                    message._done = True
                    self._outstanding.pop(message._ack_id, None)
                    expired.append(message._ack_id)
        return expired

    def _work(self) -> None:
        """The worker thread: settle, then fetch; repeat until closed."""
        settings = self._settings
        next_delay = backoff_delays(maximum=2.0)
        failing_since: float | None = None
        while not self._stop.is_set():
            with self._lock:
                acks, self._pending_acks = self._pending_acks, []
                nacks, self._pending_nacks = self._pending_nacks, []
                nacks.extend(self._expire(time.monotonic()))
                room = min(
                    settings.receive_batch_size - len(self._buffer),
                    settings.max_outstanding - len(self._buffer) - len(self._outstanding),
                )
                final_error = self._error_is_final
                self._starved = room <= 0
            self._send_settlements(acks, nacks)
            if room <= 0 or final_error:
                self._wake.wait(settings.poll_interval)
                self._wake.clear()
                continue
            try:
                batch = self._driver.receive_batch(room, settings.poll_interval)
            except Exception as err:
                now = time.monotonic()
                retryable = self._retryable(err)
                if failing_since is None:
                    failing_since = now
                if not retryable or now - failing_since >= settings.retry_timeout:
                    with self._ready:
                        self._error = wrap_error(self._driver, err, "receiving from")
                        self._error_is_final = not retryable
                        self._ready.notify_all()
                self._stop.wait(next_delay())
                continue
            if failing_since is not None:
                failing_since = None
                next_delay = backoff_delays(maximum=2.0)
                with self._lock:
                    self._error = None
            if batch:
                with self._ready:
                    self._buffer.extend(batch)
                    self._ready.notify_all()
        self._shut_down()

    def _shut_down(self) -> None:
        """Last turn of the worker: flush acks, hand back everything not acked."""
        with self._lock:
            acks, self._pending_acks = self._pending_acks, []
            nacks, self._pending_nacks = self._pending_nacks, []
            # Prefetched messages nobody saw, and delivered ones nobody settled, go back now
            # rather than after a deadline: this consumer is leaving.
            nacks.extend(m.ack_id for m in self._buffer)
            self._buffer.clear()
            for message in self._outstanding.values():
                message._done = True
                nacks.append(message._ack_id)
            self._outstanding.clear()
        self._send_settlements(acks, nacks if self._can_nack else [])

    def _send_settlements(self, acks: Sequence[Hashable], nacks: Sequence[Hashable]) -> None:
        """Send acks and nacks, retrying briefly. A lost ack only means a redelivery, so failures are logged."""
        driver = self._driver
        for ids, send, what in ((acks, driver.send_acks, "acks"), (nacks, driver.send_nacks, "nacks")):
            if not ids:
                continue
            try:
                call_with_retries(
                    lambda _remaining, send=send, ids=ids: send(ids),  # type: ignore[misc]
                    is_retryable=driver.is_retryable,
                    total_timeout=min(10.0, self._settings.retry_timeout),
                )
            except Exception as err:
                log.warning("%d %s for %s not sent (they will be redelivered): %s", len(ids), what, driver.name, err)

    def _retryable(self, err: BaseException) -> bool:
        try:
            return bool(self._driver.is_retryable(err))
        except Exception:
            return False
