"""`Publisher`: the portable sending side, written once for every backend.

Messages travel in `max_in_flight` *lanes*. A lane is a pending list plus one
sender thread that sends the lane's batches strictly one after another,
retries included, so batches of one lane never overtake each other. A keyed
message always goes to the lane its key hashes to, which keeps per-key order
while the lanes together keep up to `max_in_flight` batches in flight; keyless
messages fill one lane's batch, then move on to the next lane.

`send()` validates the message, creates its future and appends both to its
lane's list under the lane's lock; that is the whole per-message cost on the
caller's thread (no queue, no extra thread hop). `send_batch()` does the same
for many messages at once with one future for all: it appends each lane's
share of the batch in one go, with one *part* (where those messages' ids go in
the batch's result) standing in for the futures. The lane's thread takes the
whole list as one batch when it is full, when a flush or a `send_batch` asks
for it, or `linger` seconds after its first message; sends it with retries on
retryable driver errors until `send_timeout`; and resolves every future (and
part) of the batch with the broker's ids or one wrapped error.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import NO_ATTRIBUTES, OutgoingMessage, TopicDriver
from fashionstream.pubsub.futures import SendFuture, fail_all, resolve_all
from fashionstream.pubsub.retry import call_with_retries, wrap_error

#: Options `open_topic` consumes itself; every other option goes to the driver.
PUBLISHER_OPTIONS = frozenset(
    {"batch_size", "max_batch_bytes", "linger", "max_in_flight", "send_timeout", "max_queued"}
)


@dataclass(frozen=True)
class PublisherSettings:
    """Portable publisher options (see docs/pubsub.md)."""

    batch_size: int = 1000  # messages per batch at most
    max_batch_bytes: int = 4 * 1024 * 1024  # bytes of message data per batch at most (one larger message goes alone)
    linger: float = 0.005  # seconds a batch waits for more messages after its first one
    max_in_flight: int = 4  # batches being sent at the same time: the number of lanes
    send_timeout: float = 30.0  # seconds per batch, retries included
    # Messages waiting for a batch at most (split evenly between the lanes); send() blocks (up to
    # send_timeout) beyond it, so a producer faster than its broker does not grow memory without bound
    # (librdkafka's default queue is 100,000 too).
    max_queued: int = 100_000

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_batch_bytes", "max_in_flight", "max_queued"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise errors.InvalidArgument(f"publisher option {name} must be a positive int, got {value!r}")
        if not isinstance(self.linger, int | float) or self.linger < 0:
            raise errors.InvalidArgument(f"publisher option linger must be seconds >= 0, got {self.linger!r}")
        if not isinstance(self.send_timeout, int | float) or self.send_timeout <= 0:
            raise errors.InvalidArgument(
                f"publisher option send_timeout must be seconds > 0, got {self.send_timeout!r}"
            )


#: What `send_batch` takes per message: an `OutgoingMessage`, or a `(data, attributes, key)` tuple.
BatchItem = OutgoingMessage | tuple[Any, ...]

# Builds an OutgoingMessage from a 3-tuple in C, skipping the namedtuple's Python-level __new__.
_new_message = functools.partial(tuple.__new__, OutgoingMessage)


class _Batch:
    """One `send_batch` call: its future, and its ids put back in the caller's order as lanes report them."""

    __slots__ = ("future", "ids", "unresolved", "failed", "lock")

    def __init__(self, size: int) -> None:
        self.future: SendFuture[list[str]] = SendFuture()
        self.ids: list[str] = [""] * size
        self.unresolved = size
        self.failed = False
        self.lock = threading.Lock()

    def resolved(self, count: int) -> None:
        """`count` more ids are in place; the last ones resolve the future."""
        with self.lock:
            self.unresolved -= count
            if self.unresolved or self.failed:
                return
        resolve_all((self.future,), (self.ids,))

    def fail(self, error: BaseException) -> None:
        """The first failure of any of its messages fails the whole batch's future."""
        with self.lock:
            if self.failed:
                return
            self.failed = True
        fail_all((self.future,), error)


class _Part:
    """A run of one batch's messages, contiguous in one lane: where their ids go in the batch's result.

    In the lane's `sinks` list the part stands in for each of its messages (one reference per
    message), where `send()` puts a future. Only that lane's thread reads `taken`.
    """

    __slots__ = ("batch", "positions", "taken")

    def __init__(self, batch: _Batch, positions: Sequence[int]) -> None:
        self.batch = batch
        self.positions = positions  # indices into the batch, increasing; a range when contiguous
        self.taken = 0  # how many of them have their ids (or failed)

    def settle(self, ids: list[str], start: int) -> int:
        """Take ids for this part's next messages from ids[start:]; return the index after the last one taken."""
        count = min(len(self.positions) - self.taken, len(ids) - start)
        wanted = self.positions[self.taken : self.taken + count]
        out = self.batch.ids
        if type(wanted) is range:
            out[wanted.start : wanted.stop] = ids[start : start + count]
        else:
            for position, message_id in zip(wanted, ids[start : start + count], strict=True):
                out[position] = message_id
        self.taken += count
        self.batch.resolved(count)
        return start + count


Sink = Future[str] | _Part


class _Lane:
    """One lane: messages waiting for a batch, and the counters flush() and the sender thread share.

    Every field is guarded by `lock`; the three conditions share it.
    """

    __slots__ = (
        "lock", "work", "room", "done", "messages", "sinks", "nbytes", "first_at", "sleeping",
        "taken", "completed", "flush_upto", "room_waiters", "flush_waiters", "stopping", "thread",
    )  # fmt: skip

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)  # the sender waits here for messages
        self.room = threading.Condition(self.lock)  # send() waits here while the lane is full
        self.done = threading.Condition(self.lock)  # flush() waits here for batches to complete
        self.messages: list[OutgoingMessage] = []
        self.sinks: list[Sink] = []  # per message: its future (send) or its batch's part (send_batch)
        self.nbytes = 0  # bytes of data in `messages`
        self.first_at = 0.0  # monotonic time the oldest waiting message arrived
        self.sleeping = False  # the sender waits on `work` and needs a notify to see a change
        self.taken = 0  # messages ever taken into a batch
        self.completed = 0  # messages whose future is resolved (taken or failed at close)
        self.flush_upto = 0  # a flush or send_batch waits for the first `flush_upto` messages: do not linger
        self.room_waiters = 0
        self.flush_waiters = 0
        self.stopping = False
        self.thread: threading.Thread | None = None  # started with the lane's first message


class Publisher:
    """Sends messages to one topic. Open with `fashionstream.pubsub.open_topic(url)`.

    Thread-safe: any number of threads may call `send` and `send_batch` at once. Messages
    with one key reach the broker in the order they were handed to `send` / `send_batch`.
    """

    def __init__(self, driver: TopicDriver, settings: PublisherSettings | None = None) -> None:
        self._driver = driver
        self._settings = settings = settings or PublisherSettings()
        self._lock = threading.Lock()
        self._closed = False
        self._lanes = tuple(_Lane() for _ in range(settings.max_in_flight))
        self._lane_count = len(self._lanes)
        self._keyless_lane = 0  # where keyless messages go until that lane has a full batch waiting
        self._lane_max_queued = max(1, settings.max_queued // settings.max_in_flight)
        self._batch_size = settings.batch_size
        self._max_batch_bytes = settings.max_batch_bytes

    @property
    def name(self) -> str:
        """What this publisher sends to, e.g. "kafka topic 'images' at 127.0.0.1:9092"."""
        return self._driver.name

    def send(self, data: bytes, attributes: Mapping[str, str] | None = None, key: str | None = None) -> Future[str]:
        """Queue one message; the future resolves to the broker's message id or a PubSubError.

        Raises Closed after close(), InvalidArgument for data that is not bytes or
        attributes / key that are not str.
        """
        if self._closed:
            raise self._closed_error()
        if type(data) is not bytes:
            data = _as_bytes(data, "")
        attributes = _checked_attributes(attributes, "") if attributes else NO_ATTRIBUTES
        if key is None:
            index = self._keyless_lane
        elif type(key) is str:
            # hash() of a str is fixed for the life of the process: one key, one lane, one order.
            index = hash(key) % self._lane_count
        else:
            raise errors.InvalidArgument(f"message key must be str or None, got {type(key).__name__}")
        lane = self._lanes[index]
        future: SendFuture[str] = SendFuture()
        message = _new_message((data, attributes, key))
        with lane.lock:
            # Checked again under the lane's lock: close() flushes what is in the lanes once
            # _closed is set, so nothing may be added after that.
            if self._closed:
                raise self._closed_error()
            if len(lane.messages) >= self._lane_max_queued:
                self._wait_for_room(lane)
            messages = lane.messages
            messages.append(message)
            lane.sinks.append(future)
            lane.nbytes += len(data)
            waiting = len(messages)
            if waiting == 1:
                lane.first_at = time.monotonic()
                if lane.thread is None:
                    self._start_sender(lane, index)
            full = waiting >= self._batch_size or lane.nbytes >= self._max_batch_bytes
            # Wake the sender only for its first message (it then lingers) or a full batch.
            if lane.sleeping and (waiting == 1 or full):
                lane.sleeping = False
                lane.work.notify()
        if full and key is None:
            # A race here only sends a keyless message to another lane, which keyless messages allow.
            self._keyless_lane = (index + 1) % self._lane_count
        return future

    def send_batch(self, messages: Iterable[BatchItem]) -> Future[list[str]]:
        """Queue many messages at once; one future resolves to their ids, in order, or to one PubSubError.

        Each message is an `OutgoingMessage(data, attributes, key)` or a plain
        `(data, attributes, key)` tuple (attributes and key may be None or left out).
        Per message it means what `send` means, with the same lanes, so messages with one
        key keep their order, also relative to `send` calls. The batch does not wait for
        `linger`: its messages go out as soon as their lanes are free. The future fails
        if any message fails (others may have been sent).

        Raises Closed after close(), InvalidArgument (naming the message's position) for a
        malformed message, before anything is queued. Where the backlog is full it waits
        like `send` (back-pressure); if that times out, or the publisher is closed meanwhile,
        before any of the batch was queued, it raises Timeout / Closed, otherwise the
        future fails with it.
        """
        if self._closed:
            raise self._closed_error()
        checked, keyed = _checked_batch(messages)
        batch = _Batch(len(checked))
        if not checked:
            batch.resolved(0)
            return batch.future
        try:
            if keyed:
                self._enqueue_keyed(checked, batch)
            else:
                self._enqueue(checked, range(len(checked)), None, batch)
        except _PartlyQueued as partly:
            batch.fail(partly.error)
        return batch.future

    def _closed_error(self) -> errors.Closed:
        return errors.Closed(f"publisher for {self._driver.name} is closed; open a new one with open_topic()")

    def _enqueue_keyed(self, messages: list[OutgoingMessage], batch: _Batch) -> None:
        """Queue a batch holding keys: each lane gets its share in one run, keys in order."""
        lane_count, keyless = self._lane_count, self._keyless_lane
        shares: dict[int, list[int]] = {}
        for position, message in enumerate(messages):
            key = message.key
            index = keyless if key is None else hash(key) % lane_count
            share = shares.get(index)
            if share is None:
                shares[index] = [position]
            else:
                share.append(position)
        queued = False
        for index, positions in shares.items():
            try:
                self._enqueue([messages[p] for p in positions], positions, index, batch)
            except errors.PubSubError as error:
                if queued:
                    raise _PartlyQueued(error) from error
                raise
            queued = True

    def _enqueue(
        self, messages: list[OutgoingMessage], positions: Sequence[int], index: int | None, batch: _Batch
    ) -> None:
        """Append messages of one batch to lane `index` (keyless: to the keyless lanes, a full batch each).

        A run that does not fit the lane's backlog is appended in pieces, waiting for room in
        between. Raises Timeout / Closed if nothing was queued, _PartlyQueued otherwise.
        """
        start, total = 0, len(messages)
        batch_size, max_bytes = self._batch_size, self._max_batch_bytes
        while start < total:
            lane_index = self._keyless_lane if index is None else index
            lane = self._lanes[lane_index]
            with lane.lock:
                try:
                    if self._closed:
                        raise self._closed_error()
                    if len(lane.messages) >= self._lane_max_queued:
                        self._wait_for_room(lane)
                except errors.PubSubError as error:
                    if start:
                        raise _PartlyQueued(error) from error
                    raise
                waiting = len(lane.messages)
                stop = min(total, start + self._lane_max_queued - waiting)
                if index is None:
                    # Fill up this lane's batch (the one it is already gathering, or a new one), then the next lane.
                    stop = min(stop, start + batch_size - waiting % batch_size)
                chunk = messages if (start, stop) == (0, total) else messages[start:stop]
                lane.messages.extend(chunk)
                lane.sinks.extend(itertools.repeat(_Part(batch, positions[start:stop]), stop - start))
                lane.nbytes += sum([len(m.data) for m in chunk])
                if waiting == 0:
                    lane.first_at = time.monotonic()
                    if lane.thread is None:
                        self._start_sender(lane, lane_index)
                # The caller batched already: no lingering for more, as for a flush.
                lane.flush_upto = max(lane.flush_upto, lane.taken + len(lane.messages))
                if lane.sleeping:
                    lane.sleeping = False
                    lane.work.notify()
                full = len(lane.messages) >= batch_size or lane.nbytes >= max_bytes
            if index is None and full:
                self._keyless_lane = (lane_index + 1) % self._lane_count
            start = stop

    def _wait_for_room(self, lane: _Lane) -> None:
        """Block the caller (lane lock held) until the lane's backlog shrinks (back-pressure), or time out."""
        deadline = time.monotonic() + self._settings.send_timeout
        lane.room_waiters += 1
        try:
            while len(lane.messages) >= self._lane_max_queued:
                if self._closed or lane.stopping:
                    raise self._closed_error()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.Timeout(
                        f"{self._driver.name}: {len(lane.messages)} messages still queued after "
                        f"{self._settings.send_timeout} s; the broker is not keeping up (is it reachable?)"
                    )
                lane.room.wait(remaining)
        finally:
            lane.room_waiters -= 1

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent before this call is confirmed or failed.

        Raises Timeout if that takes longer than `timeout` seconds. Send errors are
        not raised here; they are in each message's future.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        targets: list[tuple[_Lane, int]] = []
        for lane in self._lanes:
            with lane.lock:
                target = lane.taken + len(lane.messages)
                if lane.completed >= target:
                    continue
                if target > lane.flush_upto:
                    lane.flush_upto = target  # the sender stops lingering for these
                    if lane.sleeping:
                        lane.sleeping = False
                        lane.work.notify()
                targets.append((lane, target))
        for lane, target in targets:
            with lane.lock:
                lane.flush_waiters += 1
                try:
                    while lane.completed < target:
                        if deadline is None:
                            lane.done.wait()
                            continue
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise errors.Timeout(
                                f"flushing {self._driver.name}: {target - lane.completed} message(s) "
                                f"still unconfirmed after {timeout} s"
                            )
                        lane.done.wait(remaining)
                finally:
                    lane.flush_waiters -= 1

    def close(self, timeout: float | None = None) -> None:
        """Flush, then release the driver. Later sends raise Closed. Calling close twice is harmless.

        `timeout` bounds the flush (default: send_timeout plus a margin); Timeout is
        raised if messages were still unconfirmed, after the publisher was closed anyway.
        Messages still waiting for a batch then fail with Closed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if timeout is None:
            timeout = self._settings.send_timeout + 5.0
        try:
            self.flush(timeout)
        finally:
            for lane in self._lanes:
                with lane.lock:
                    lane.stopping = True
                    lane.work.notify_all()
                    lane.room.notify_all()
            # A sender stuck in the driver after a timed-out flush is not waited for long: it fails
            # its lane's remaining messages with Closed once the driver call returns. One second for
            # all lanes together, so that closing stays quick however many lanes are stuck.
            joined_by = time.monotonic() + 1.0
            for lane in self._lanes:
                if lane.thread is not None:
                    lane.thread.join(max(0.0, joined_by - time.monotonic()))
            try:
                self._driver.close()
            except Exception as err:
                raise wrap_error(self._driver, err, "closing") from err

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Publisher({self._driver.name}{', closed' if self._closed else ''})"

    # -- internals ---------------------------------------------------------------------------

    def _start_sender(self, lane: _Lane, index: int) -> None:
        """Start the lane's sender thread (lane lock held)."""
        lane.thread = threading.Thread(target=self._run_lane, args=(lane,), name=f"pubsub-send-{index}", daemon=True)
        lane.thread.start()

    def _run_lane(self, lane: _Lane) -> None:
        """The lane's sender thread: take a batch, send it (retries included), resolve it; repeat."""
        linger = self._settings.linger
        batch_size, max_bytes = self._batch_size, self._max_batch_bytes
        while True:
            with lane.lock:
                while not lane.messages and not lane.stopping:
                    lane.sleeping = True
                    lane.work.wait()
                if lane.stopping:
                    lane.sleeping = False
                    self._fail_waiting(lane)
                    return
                # Linger for a fuller batch, unless it is full, a flush waits for it, or we are closing.
                close_at = lane.first_at + linger
                while (
                    len(lane.messages) < batch_size
                    and lane.nbytes < max_bytes
                    and lane.flush_upto <= lane.taken
                    and not lane.stopping
                ):
                    remaining = close_at - time.monotonic()
                    if remaining <= 0:
                        break
                    lane.sleeping = True
                    lane.work.wait(remaining)
                lane.sleeping = False
                messages, sinks = lane.messages, lane.sinks
                if len(messages) > batch_size or lane.nbytes > max_bytes:
                    cut = _batch_end(messages, batch_size, max_bytes)
                    # The rest already waited its linger: its first_at stays in the past.
                    lane.messages, lane.sinks = messages[cut:], sinks[cut:]
                    messages, sinks = messages[:cut], sinks[:cut]
                    lane.nbytes -= sum([len(m.data) for m in messages])
                else:
                    lane.messages, lane.sinks = [], []
                    lane.nbytes = 0
                lane.taken += len(messages)
                if lane.room_waiters:
                    lane.room.notify_all()
            try:
                self._send_batch(messages, sinks)
            finally:
                with lane.lock:
                    lane.completed += len(messages)
                    if lane.flush_waiters:
                        lane.done.notify_all()

    def _send_batch(self, messages: list[OutgoingMessage], sinks: list[Sink]) -> None:
        """Send one batch with retries and resolve its futures and parts; runs on the lane's thread."""
        driver = self._driver
        try:
            ids = call_with_retries(
                lambda remaining: driver.send_batch(messages, remaining),
                is_retryable=driver.is_retryable,
                total_timeout=self._settings.send_timeout,
            )
            if len(ids) != len(messages):
                raise errors.PubSubError(
                    f"driver for {driver.name} returned {len(ids)} ids for {len(messages)} messages (driver bug)"
                )
        except Exception as err:
            _fail_sinks(sinks, wrap_error(driver, err, "sending to"))
            return
        _settle_sinks(sinks, ids)

    def _fail_waiting(self, lane: _Lane) -> None:
        """Fail the messages still waiting in a lane at close (lane lock held)."""
        if not lane.messages:
            return
        _fail_sinks(lane.sinks, errors.Closed(f"publisher for {self._driver.name} was closed before sending"))
        lane.completed += len(lane.sinks)
        lane.messages, lane.sinks = [], []
        lane.nbytes = 0
        lane.done.notify_all()
        lane.room.notify_all()


class _PartlyQueued(Exception):
    """Raised inside send_batch when queueing failed after part of the batch was queued: fail the future."""

    def __init__(self, error: errors.PubSubError) -> None:
        super().__init__(str(error))
        self.error = error


def _settle_sinks(sinks: list[Sink], ids: list[str]) -> None:
    """Give each message of a sent batch its id: futures directly, parts into their batch's result."""
    if _Part not in set(map(type, sinks)):
        resolve_all(sinks, ids)  # type: ignore[arg-type]  # all futures: the per-message path
        return
    futures: list[Future[str]] = []
    future_ids: list[str] = []
    index, count = 0, len(ids)
    while index < count:
        sink = sinks[index]
        if type(sink) is _Part:
            index = sink.settle(ids, index)
        else:
            futures.append(sink)  # type: ignore[arg-type]
            future_ids.append(ids[index])
            index += 1
    resolve_all(futures, future_ids)


def _fail_sinks(sinks: list[Sink], error: errors.PubSubError) -> None:
    """Fail every future and batch with messages in a failed batch."""
    futures: list[Future[str]] = []
    batches: dict[int, _Batch] = {}
    for sink in sinks:
        if type(sink) is _Part:
            sink.taken += 1
            batches[id(sink.batch)] = sink.batch
        else:
            futures.append(sink)  # type: ignore[arg-type]
    fail_all(futures, error)
    for batch in batches.values():
        batch.fail(error)


def _checked_batch(messages: Iterable[BatchItem]) -> tuple[list[OutgoingMessage], bool]:
    """The batch as OutgoingMessages with bytes data, copied str attributes and str keys; and whether any has a key.

    Raises InvalidArgument naming the first malformed message's position.
    """
    checked: list[OutgoingMessage] = []
    append = checked.append
    keyed = False
    for position, message in enumerate(messages):
        if type(message) is OutgoingMessage:
            data, attributes, key = message
            # The usual message needs no change: bytes, no attributes, a str key or none.
            if type(data) is bytes and attributes is NO_ATTRIBUTES and (key is None or type(key) is str):
                keyed = keyed or key is not None
                append(message)
                continue
        elif isinstance(message, tuple) and 1 <= len(message) <= 3:
            data, attributes, key = (*message, None, None)[:3]
        else:
            raise errors.InvalidArgument(
                f"message {position} of the batch must be an OutgoingMessage or a (data, attributes, key) "
                f"tuple, got {type(message).__name__}"
            )
        where = f"message {position} of the batch: "
        if type(data) is not bytes:
            data = _as_bytes(data, where)
        attributes = _checked_attributes(attributes, where) if attributes else NO_ATTRIBUTES
        if key is not None:
            if type(key) is not str:
                raise errors.InvalidArgument(f"{where}message key must be str or None, got {type(key).__name__}")
            keyed = True
        append(_new_message((data, attributes, key)))
    return checked, keyed


def _as_bytes(data: object, where: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise errors.InvalidArgument(
            f"{where}message data must be bytes, got {type(data).__name__}; encode text with .encode() first"
        )
    return bytes(data)


def _checked_attributes(attributes: Mapping[str, str], where: str) -> dict[str, str]:
    """A copy (the caller may reuse its dict) after checking every name and value is a str."""
    if not isinstance(attributes, Mapping):
        raise errors.InvalidArgument(f"{where}message attributes must be a dict, got {type(attributes).__name__}")
    for k, v in attributes.items():
        if type(k) is not str or type(v) is not str:
            raise errors.InvalidArgument(
                f"{where}message attributes must map str to str, got {k!r}: {v!r} ({type(v).__name__})"
            )
    return dict(attributes)


def _batch_end(messages: list[OutgoingMessage], batch_size: int, max_bytes: int) -> int:
    """How many of the leading `messages` make one batch: at most batch_size, at most max_bytes (at least one)."""
    size = 0
    for index, message in enumerate(messages[:batch_size]):
        size += len(message.data)
        if size > max_bytes:
            return max(index, 1)
    return min(len(messages), batch_size)
