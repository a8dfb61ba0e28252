"""`Subscriber`: the portable receiving side, written once for every backend.

Whoever needs the driver takes a *turn* with it, one thread at a time, so a
driver never sees two threads at once. A turn sends the acks and nacks
collected since the last one, nacks messages whose emulated ack deadline
passed, and fetches a batch into the buffer that `receive` / `receive_batch` /
iteration take from. A caller that finds the buffer empty takes the turn
itself, on its own thread, and gets what the driver returned without a
hand-over between threads (measured with Kafka, a hand-over to a fetching
thread doubled the CPU per received message). A caller that finds another
thread in a turn waits until that turn brings messages or ends.

The subscriber's worker thread takes turns only for what no caller does: it
sends acks and nacks that waited `SETTLE_INTERVAL` without a turn, nacks
messages past their emulated deadline, and fetches ahead while no caller has
fetched for `poll_interval`, so an idle consumer finds messages waiting and a
Kafka consumer keeps polling. Fetching is bounded: the buffer holds at most
`receive_batch_size` messages and buffer plus unacked messages at most
`max_outstanding`, so a slow consumer does not hoard messages whose broker
deadline is ticking.

Memory is bounded the same way, in bytes: no fetch starts while the bodies of
buffered plus unacked messages reach `max_outstanding_bytes`, and a fetch asks
for no more messages than the remaining room holds at the size of the largest
message of the previous fetch (the first fetch asks for one; every fetch for at
least one, so a message larger than the cap still comes, alone). So what it
holds stays below the cap plus about one message. A message's body is released
as soon as it is acked or nacked: the subscriber keeps no reference to a
settled message, whatever its ack deadline. The driver gets the same limits
when it is opened (`driver.FlowControl`) to bound what its client prefetches
below this layer.

Latency: a caller waiting in `receive` / `receive_batch` returns as soon as a
turn brings a message. A turn waits in the driver for at most `poll_interval`,
and for at most `SETTLE_INTERVAL` while messages are buffered or delivered and
unsettled, so an ack reaches the broker within a few milliseconds even while
another thread waits for messages: brokers that hold back the next message of
a key until the previous one is acked (mem, ordered Pub/Sub) depend on that.
A caller's own turn sends its acks before it asks for more.

Leases: on a broker with its own ack deadline that lets a lease be extended (a driver with
`lease_seconds` and `extend_leases`, Pub/Sub), a message held (buffered or delivered, not
settled) for `RENEW_FRACTION` of that deadline has its lease extended in the next turn, and
again each time that much more passes, so a slow batch is not redelivered to another consumer
while it is being worked on. An emulated `ack_deadline` still ends it: an expired message is
nacked and no longer renewed.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import FlowControl, SubscriptionDriver
from fashionstream.pubsub.message import Message
from fashionstream.pubsub.retry import backoff_delays, call_with_retries, wrap_error

log = logging.getLogger(__name__)

#: Options `open_subscription` consumes itself; every other option goes to the driver.
SUBSCRIBER_OPTIONS = frozenset(
    {"ack_deadline", "max_outstanding", "max_outstanding_bytes", "receive_batch_size", "poll_interval", "retry_timeout"}
)

#: Default of `max_outstanding_bytes`, like the Pub/Sub client's flow control (`max_bytes`, 100 MB).
DEFAULT_MAX_OUTSTANDING_BYTES = 64 * 1024 * 1024

# Used as the ack deadline on backends without native deadlines when none is given (Pub/Sub's default is 10-600 s).
DEFAULT_EMULATED_ACK_DEADLINE = 30.0

#: Longest wait in one driver call while messages are buffered or delivered and unsettled, and how
#: long acks and nacks wait for a caller's turn before the worker sends them (module docstring).
SETTLE_INTERVAL = 0.005

#: Fraction of the broker's ack deadline a message may be held before its lease is extended: half
#: leaves the other half for the extension to reach the broker.
RENEW_FRACTION = 0.5


@dataclass(frozen=True)
class SubscriberSettings:
    """Portable subscriber options (see docs/pubsub.md)."""

    # Seconds a delivered message may stay unacked before it is nacked for redelivery. None: the
    # broker's own deadline (mem, Pub/Sub), or 30 s emulated on backends without deadlines (Kafka).
    ack_deadline: float | None = None
    max_outstanding: int = 1000  # buffered + delivered-but-unacked messages at most
    # Body bytes of those messages at most: fetching stops at this until acks free room.
    max_outstanding_bytes: int = DEFAULT_MAX_OUTSTANDING_BYTES
    receive_batch_size: int = 100  # messages asked of the driver per call
    poll_interval: float = 0.1  # seconds one driver receive call may wait at most
    retry_timeout: float = 30.0  # seconds of retryable driver errors before receive() reports them

    def __post_init__(self) -> None:
        for name in ("max_outstanding", "max_outstanding_bytes", "receive_batch_size"):
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

    def flow_control(self) -> FlowControl:
        """The limits the driver is opened with."""
        return FlowControl(self.max_outstanding, self.max_outstanding_bytes)


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
        self._settle_wait = min(settings.poll_interval, SETTLE_INTERVAL)
        # Lease renewal (module docstring): fetched batches' ack ids, oldest first, with when to renew them.
        lease = getattr(driver, "lease_seconds", None) if hasattr(driver, "extend_leases") else None
        self._renew_after = lease * RENEW_FRACTION if lease else None
        self._leases: collections.deque[tuple[float, list[Hashable]]] = collections.deque()
        # Everything below is guarded by _lock; _ready (on the same lock) is signalled when a turn
        # brings messages or ends, on a final error and on close, while anyone waits on it.
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._waiters = 0  # threads waiting on _ready
        self._buffer: collections.deque[Message] = collections.deque()
        self._outstanding: dict[Hashable, Message] = {}
        self._held_bytes = 0  # body bytes of _buffer and _outstanding
        # Largest body of the latest fetch: how many messages the byte room holds. Until a fetch shows
        # the sizes, a message may fill the cap, so the first fetch asks for one message.
        self._size_hint = settings.max_outstanding_bytes
        # Emulated ack deadlines: each delivered message carries its own (`_due`), and _outstanding
        # (only unsettled messages, in delivery order, so in deadline order) is looked through when
        # the oldest one it held when last looked at may have passed.
        self._next_due = float("inf")
        self._pending_acks: list[Hashable] = []
        self._pending_nacks: list[Hashable] = []
        self._pending_since = 0.0  # when the oldest pending ack or nack was recorded
        self._in_turn = False  # a thread is in a turn with the driver
        self._receivers = 0  # callers inside receive / receive_batch
        self._caller_fetched_at = float("-inf")  # the last fetch in a caller's turn
        self._error: errors.PubSubError | None = None
        self._error_is_final = False
        self._failing_since: float | None = None
        self._next_delay = backoff_delays(maximum=2.0)
        self._closed = False
        self._stop = threading.Event()  # set by close(): ends back-off sleeps
        # The worker sleeps on _wake; a first pending ack sets it while the worker sleeps long.
        self._wake = threading.Event()
        self._worker_sleeps_long = False
        self._worker = threading.Thread(target=self._work, name="pubsub-receive", daemon=True)
        self._worker.start()

    @property
    def name(self) -> str:
        """What this subscriber receives from, e.g. "mem subscription 'service' on topic 'images'"."""
        return self._driver.name

    @property
    def held_bytes(self) -> int:
        """Body bytes of the messages buffered here or delivered and not yet acked or nacked."""
        return self._held_bytes

    def backlog(self) -> dict[str, int] | None:
        """Messages the broker still holds for this subscription, by partition; None where it cannot say.

        A driver offers this with an optional `backlog()` method (Kafka does: high watermark minus
        committed offset of each partition assigned here). Safe to call from any thread.
        """
        backlog = getattr(self._driver, "backlog", None)
        return backlog() if backlog is not None and not self._closed else None

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Message:
        """The next message; waits up to `timeout` seconds (forever if None).

        Raises Timeout if none arrived in time, Closed after close(), or the broker's
        error (NotFound, Unavailable, ...) if receiving failed.
        """
        messages = self._receive(1, timeout)
        if not messages:
            raise errors.Timeout(f"no message from {self._driver.name} within {timeout} s")
        return messages[0]

    def receive_batch(self, max_messages: int = 100, timeout: float | None = None) -> list[Message]:
        """Up to `max_messages` messages: what is available once at least one is, or [] after `timeout`."""
        if max_messages < 1:
            raise errors.InvalidArgument(f"max_messages must be at least 1, got {max_messages}")
        return self._receive(max_messages, timeout)

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until the subscriber is closed (from another thread, say)."""
        while True:
            try:
                yield self.receive()
            except errors.Closed:
                return

    def _receive(self, max_messages: int, timeout: float | None) -> list[Message]:
        """Deliver from the buffer; when it is empty, take a turn to fill it, or wait for another's."""
        with self._lock:
            if self._buffer and not self._closed:
                return self._deliver(min(max_messages, len(self._buffer)))  # the usual case: at once
            self._receivers += 1  # while a caller is here, the worker leaves fetching to it
        try:
            return self._receive_as_receiver(max_messages, timeout)
        finally:
            with self._lock:
                self._receivers -= 1

    def _receive_as_receiver(self, max_messages: int, timeout: float | None) -> list[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True  # even timeout=0 gets one turn, without waiting in the driver
        while True:
            with self._lock:
                self._raise_if_closed()
                if self._buffer:
                    return self._deliver(min(max_messages, len(self._buffer)))
                if self._error is not None:
                    raise self._error
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0 and not first:
                    return []
                first = False
                if self._in_turn:
                    # Another thread is in the driver; its turn brings messages or ends soon.
                    self._wait_ready(remaining)
                    continue
                self._in_turn = True
                wait = self._settle_wait if self._outstanding else self._settings.poll_interval
                if remaining is not None:
                    wait = min(wait, max(remaining, 0.0))
            if not self._take_turn(wait, fetch=True, caller=True, max_sleep=remaining):
                # No room to fetch (too many unacked messages) or a back-off: let acks come in.
                with self._lock:
                    self._wait_ready(self._settle_wait if remaining is None else min(remaining, self._settle_wait))

    def _wait_ready(self, timeout: float | None) -> None:
        """Wait on _ready (lock held)."""
        self._waiters += 1
        try:
            self._ready.wait(timeout)
        finally:
            self._waiters -= 1

    # -- acknowledging many at once ---------------------------------------------------------

    def ack(self, messages: Iterable[Message]) -> None:
        """Acknowledge every message in `messages`: `message.ack()` on each, under one lock.

        The first of ack / nack still wins per message, so messages acked or nacked before
        are left as they are, and acking twice is harmless.
        """
        self._settle_all(messages, True)

    def nack(self, messages: Iterable[Message]) -> None:
        """Ask for prompt redelivery of every message in `messages` not acked or nacked yet.

        Raises InvalidArgument on a backend that cannot nack, like `message.nack()`.
        """
        self._settle_all(messages, False)

    def _settle_all(self, messages: Iterable[Message], ack: bool) -> None:
        if not ack and not self._can_nack:
            raise self._cannot_nack()
        others: list[Message] = []
        with self._lock:
            closed = self._closed
            if not (self._pending_acks or self._pending_nacks):
                self._note_first_pending()
            pending = self._pending_acks if ack else self._pending_nacks
            forget = self._outstanding.pop
            released = 0
            for message in messages:
                if message._sink is not self:
                    others.append(message)  # another subscriber's, or never delivered: settled on its own
                    continue
                if message._done:
                    continue
                message._done = True
                if closed:
                    continue  # the driver is gone; the broker redelivers it
                ack_id = message._ack_id
                tracked = forget(ack_id, None)
                if tracked is not None:  # the entry's own bytes: a redelivery may have taken its place
                    released += len(tracked.data)
                pending.append(ack_id)
            self._held_bytes -= released
        for message in others:
            if ack:
                message.ack()
            else:
                message.nack()

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Send pending acks, hand unacked messages back for redelivery, release the driver.

        Messages received but not acked are not acked: the broker delivers them
        again (promptly where the backend can nack). Later receives raise Closed;
        acks after close are ignored. Calling close twice is harmless.
        """
        with self._lock:
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
            raise self._cannot_nack()
        with self._lock:
            if message._done:
                return
            message._done = True
            if self._closed:
                return  # the driver is gone; the broker redelivers it
            if not (self._pending_acks or self._pending_nacks):
                self._note_first_pending()
            tracked = self._outstanding.pop(message._ack_id, None)
            if tracked is not None:
                self._held_bytes -= len(tracked.data)
            (self._pending_acks if ack else self._pending_nacks).append(message._ack_id)

    def _cannot_nack(self) -> errors.InvalidArgument:
        return errors.InvalidArgument(
            f"{self._driver.name} cannot nack; leave the message unacked and it is redelivered after the ack deadline"
        )

    # -- internals (lock held where noted) ---------------------------------------------------

    def _note_first_pending(self) -> None:
        """The first ack or nack since the last turn is about to be recorded (lock held)."""
        self._pending_since = time.monotonic()
        if self._worker_sleeps_long:
            self._worker_sleeps_long = False
            self._wake.set()  # the worker recomputes when to send it

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise errors.Closed(
                f"subscriber for {self._driver.name} is closed; open a new one with open_subscription()"
            )

    def _deliver(self, count: int) -> list[Message]:
        """Take `count` buffered messages and hand them to the caller: they are now outstanding (lock held)."""
        buffer, outstanding = self._buffer, self._outstanding
        if count == len(buffer):
            messages = list(buffer)
            buffer.clear()
        else:
            take = buffer.popleft
            messages = [take() for _ in range(count)]
        tracked = len(outstanding)
        if self._ack_deadline is None:
            for message in messages:
                message._sink = self
                outstanding[message._ack_id] = message
        else:
            due = time.monotonic() + self._ack_deadline
            for message in messages:
                message._sink = self
                message._due = due
                outstanding[message._ack_id] = message
            if due < self._next_due:
                self._next_due = due
        if len(outstanding) != tracked + count:
            # A redelivery (Kafka, after a rewind) took the place of an earlier delivery with the same
            # ack id, whose bytes left with it. Rare, so counted again rather than looked up per message.
            self._held_bytes = sum(len(m.data) for m in buffer) + sum(len(m.data) for m in outstanding.values())
        return messages

    def _expire(self, now: float) -> list[Hashable]:
        """Nack delivered messages whose emulated deadline passed (lock held).

        Deadlines are equal for all messages, so delivery order (the order of _outstanding)
        is deadline order. Settled messages are not kept for this: at a high rate, holding
        every message until its deadline cost memory and most of the CPU per message.
        """
        if self._next_due > now:
            return []
        expired: list[Hashable] = []
        self._next_due = float("inf")
        for ack_id, message in self._outstanding.items():
            if message._due > now:
                self._next_due = message._due  # the oldest still running
                break
            message._done = True
            self._held_bytes -= len(message.data)
            expired.append(ack_id)
        for ack_id in expired:
            del self._outstanding[ack_id]
        return expired

    def _due_leases(self, now: float) -> list[Hashable]:
        """Ack ids of held messages whose lease is due for renewal; they are due again later (lock held)."""
        assert self._renew_after is not None
        leases, due = self._leases, []
        buffered: set[Hashable] | None = None
        while leases and leases[0][0] <= now:
            _, ack_ids = leases.popleft()
            if buffered is None:
                buffered = {m._ack_id for m in self._buffer}
            held = [a for a in ack_ids if a in self._outstanding or a in buffered]
            if held:
                due.extend(held)
                leases.append((now + self._renew_after, held))
        return due

    def _extend_leases(self, ack_ids: list[Hashable]) -> None:
        """Extend leases, retrying briefly; one that fails only means a possible redelivery, so it is logged."""
        driver = self._driver
        try:
            call_with_retries(
                lambda _remaining: driver.extend_leases(ack_ids),  # type: ignore[attr-defined]
                is_retryable=driver.is_retryable,
                total_timeout=min(10.0, self._settings.retry_timeout),
            )
        except Exception as err:
            log.warning(
                "leases of %d messages of %s not extended (they may be redelivered): %s", len(ack_ids), driver.name, err
            )

    def _room(self) -> int:
        """How many messages a fetch may bring now (lock held)."""
        settings, buffered = self._settings, len(self._buffer)
        room = min(settings.receive_batch_size - buffered, settings.max_outstanding - buffered - len(self._outstanding))
        free_bytes = settings.max_outstanding_bytes - self._held_bytes
        if free_bytes <= 0:
            return 0
        return min(room, max(1, free_bytes // self._size_hint))

    def _take_turn(self, wait: float, *, fetch: bool, caller: bool, max_sleep: float | None = None) -> bool:
        """One turn with the driver, by the thread that set _in_turn: settle, then fetch.

        Returns False if it could not fetch (no room, a final error) or the fetch failed.
        """
        fetched = False
        try:
            fetched = self._turn(wait, fetch, caller, max_sleep)
        finally:
            with self._lock:
                self._in_turn = False
                if self._waiters:
                    self._ready.notify_all()
        return fetched

    def _turn(self, wait: float, fetch: bool, caller: bool, max_sleep: float | None) -> bool:
        with self._lock:
            acks, self._pending_acks = self._pending_acks, []
            nacks, self._pending_nacks = self._pending_nacks, []
            if self._next_due != float("inf"):
                nacks.extend(self._expire(time.monotonic()))
            renew = self._due_leases(time.monotonic()) if self._leases else []
            room = self._room()
            fetch = fetch and room > 0 and not self._error_is_final and not self._closed
        self._send_settlements(acks, nacks)
        if renew:
            self._extend_leases(renew)
        if not fetch:
            return False
        try:
            batch = self._driver.receive_batch(room, wait)
        except Exception as err:
            self._failed(err, max_sleep)
            return False
        with self._lock:
            if self._failing_since is not None:
                self._failing_since = None
                self._next_delay = backoff_delays(maximum=2.0)
                self._error = None
            if caller:
                self._caller_fetched_at = time.monotonic()
            if batch:
                self._buffer.extend(batch)
                sizes = [len(message.data) for message in batch]
                self._held_bytes += sum(sizes)
                self._size_hint = max(1, max(sizes))  # empty bodies: still one message per byte of room
                if self._renew_after is not None:
                    self._leases.append((time.monotonic() + self._renew_after, [m._ack_id for m in batch]))
                if self._waiters:
                    self._ready.notify_all()
        return True

    def _failed(self, err: Exception, max_sleep: float | None) -> None:
        """A fetch failed: report it if it is final or has lasted retry_timeout, then back off."""
        now = time.monotonic()
        retryable = self._retryable(err)
        with self._lock:
            if self._failing_since is None:
                self._failing_since = now
            if not retryable or now - self._failing_since >= self._settings.retry_timeout:
                self._error = wrap_error(self._driver, err, "receiving from")
                self._error_is_final = not retryable
                if self._waiters:
                    self._ready.notify_all()
            delay = self._next_delay()
        # Still in the turn, so no other thread hammers a failing broker meanwhile.
        self._stop.wait(delay if max_sleep is None else min(delay, max(max_sleep, 0.0)))

    def _work(self) -> None:
        """The worker thread: take the turns no caller takes (module docstring); shut down at close."""
        poll, settle = self._settings.poll_interval, self._settle_wait
        while True:
            with self._lock:
                if self._closed:
                    break
                self._wake.clear()  # cleared before the state is read: a later change sets it again
                now = time.monotonic()
                go, fetch, sleep = self._worker_plan(now, poll, settle)
                if go:
                    self._in_turn = True
                    wait = settle if self._buffer or self._outstanding else poll
                else:
                    # With no caller about, the first ack must not wait out a long sleep. Active
                    # callers settle in their own turns, and the worker wakes on its timer.
                    self._worker_sleeps_long = sleep > settle and now - self._caller_fetched_at >= poll
            if go:
                self._take_turn(wait, fetch=fetch, caller=False)
            else:
                self._wake.wait(sleep)
        with self._lock:
            self._worker_sleeps_long = False
            while self._in_turn:  # a caller's turn ends within poll_interval
                self._wait_ready(None)
            self._in_turn = True
        self._shut_down()

    def _worker_plan(self, now: float, poll: float, settle: float) -> tuple[bool, bool, float]:
        """(take a turn now, fetch in it, else how long to sleep) for the worker (lock held)."""
        due = float("inf")
        if self._pending_acks or self._pending_nacks:
            due = self._pending_since + settle
        due = min(due, self._next_due)
        if self._leases:
            due = min(due, self._leases[0][0])
        # Fetching is for callers: the worker fetches ahead only while none is receiving or has
        # fetched within poll_interval (one busy processing a batch comes back for the next).
        can_fetch = not self._receivers and not self._error_is_final and self._room() > 0
        fetch_at = self._caller_fetched_at + poll if can_fetch else float("inf")
        if self._in_turn:
            return False, False, poll  # the thread in the turn settles what is pending at its next turn
        if min(due, fetch_at) <= now:
            return True, fetch_at <= now, 0.0
        return False, False, min(poll, max(min(due, fetch_at) - now, 0.0005))

    def _shut_down(self) -> None:
        """Last turn, by the worker: flush acks, hand back everything not acked."""
        with self._lock:
            acks, self._pending_acks = self._pending_acks, []
            nacks, self._pending_nacks = self._pending_nacks, []
            # Prefetched messages nobody saw, and delivered ones nobody settled, go back now
            # rather than after a deadline: this consumer is leaving.
            nacks.extend(m._ack_id for m in self._buffer)
            self._buffer.clear()
            for message in self._outstanding.values():
                message._done = True
                nacks.append(message._ack_id)
            self._outstanding.clear()
            self._held_bytes = 0
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
