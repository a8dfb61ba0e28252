"""`Publisher`: the portable sending side, written once for every backend.

Messages travel in `max_in_flight` *lanes*. A lane is a pending list plus one
sender thread that sends the lane's batches strictly one after another,
retries included, so batches of one lane never overtake each other. A keyed
message always goes to the lane its key hashes to, which keeps per-key order
while the lanes together keep up to `max_in_flight` batches in flight; keyless
messages fill one lane's batch, then move on to the next lane.

`send()` validates the message, creates its future and appends both to its
lane's list under the lane's lock; that is the whole per-message cost on the
caller's thread (no queue, no extra thread hop). The lane's thread takes the
whole list as one batch when it is full or `linger` seconds after its first
message, sends it with retries on retryable driver errors until
`send_timeout`, and resolves every future of the batch with the broker's id
or one wrapped error.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from types import TracebackType

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import OutgoingMessage, TopicDriver
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


class _Lane:
    """One lane: messages waiting for a batch, and the counters flush() and the sender thread share.

    Every field is guarded by `lock`; the three conditions share it.
    """

    __slots__ = (
        "lock", "work", "room", "done", "messages", "futures", "nbytes", "first_at", "sleeping",
        "taken", "completed", "flush_upto", "room_waiters", "flush_waiters", "stopping", "thread",
    )  # fmt: skip

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)  # the sender waits here for messages
        self.room = threading.Condition(self.lock)  # send() waits here while the lane is full
        self.done = threading.Condition(self.lock)  # flush() waits here for batches to complete
        self.messages: list[OutgoingMessage] = []
        self.futures: list[Future[str]] = []
        self.nbytes = 0  # bytes of data in `messages`
        self.first_at = 0.0  # monotonic time the oldest waiting message arrived
        self.sleeping = False  # the sender waits on `work` and needs a notify to see a change
        self.taken = 0  # messages ever taken into a batch
        self.completed = 0  # messages whose future is resolved (taken or failed at close)
        self.flush_upto = 0  # a flush waits for the first `flush_upto` messages: do not linger
        self.room_waiters = 0
        self.flush_waiters = 0
        self.stopping = False
        self.thread: threading.Thread | None = None  # started with the lane's first message


class Publisher:
    """Sends messages to one topic. Open with `fashionstream.pubsub.open_topic(url)`.

    Thread-safe: any number of threads may call `send` at once. Messages with one key
    reach the broker in the order their `send` calls returned.
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

    def send(self, data: bytes, attributes: dict[str, str] | None = None, key: str | None = None) -> Future[str]:
        """Queue one message; the future resolves to the broker's message id or a PubSubError.

        Raises Closed after close(), InvalidArgument for data that is not bytes or
        attributes / key that are not str.
        """
        if self._closed:
            raise self._closed_error()
        if type(data) is not bytes:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise errors.InvalidArgument(
                    f"message data must be bytes, got {type(data).__name__}; encode text with .encode() first"
                )
            data = bytes(data)
        if attributes:
            for k, v in attributes.items():
                if type(k) is not str or type(v) is not str:
                    raise errors.InvalidArgument(
                        f"message attributes must map str to str, got {k!r}: {v!r} ({type(v).__name__})"
                    )
            attributes = dict(attributes)  # the caller may reuse its dict
        else:
            attributes = {}
        if key is None:
            index = self._keyless_lane
        elif type(key) is str:
            # hash() of a str is fixed for the life of the process: one key, one lane, one order.
            index = hash(key) % self._lane_count
        else:
            raise errors.InvalidArgument(f"message key must be str or None, got {type(key).__name__}")
        lane = self._lanes[index]
        future: Future[str] = Future()
        message = OutgoingMessage(data, attributes, key)
        with lane.lock:
            # Checked again under the lane's lock: close() flushes what is in the lanes once
            # _closed is set, so nothing may be added after that.
            if self._closed:
                raise self._closed_error()
            if len(lane.messages) >= self._lane_max_queued:
                self._wait_for_room(lane)
            messages = lane.messages
            messages.append(message)
            lane.futures.append(future)
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

    def _closed_error(self) -> errors.Closed:
        return errors.Closed(f"publisher for {self._driver.name} is closed; open a new one with open_topic()")

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
            for lane in self._lanes:
                # A sender stuck in the driver after a timed-out flush is not waited for: it fails
                # its lane's remaining messages with Closed once the driver call returns.
                if lane.thread is not None:
                    lane.thread.join(1.0)
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
                messages, futures = lane.messages, lane.futures
                if len(messages) > batch_size or lane.nbytes > max_bytes:
                    cut = _batch_end(messages, batch_size, max_bytes)
                    # The rest already waited its linger: its first_at stays in the past.
                    lane.messages, lane.futures = messages[cut:], futures[cut:]
                    messages, futures = messages[:cut], futures[:cut]
                    lane.nbytes -= sum(len(m.data) for m in messages)
                else:
                    lane.messages, lane.futures = [], []
                    lane.nbytes = 0
                lane.taken += len(messages)
                if lane.room_waiters:
                    lane.room.notify_all()
            try:
                self._send_batch(messages, futures)
            finally:
                with lane.lock:
                    lane.completed += len(messages)
                    if lane.flush_waiters:
                        lane.done.notify_all()

    def _send_batch(self, messages: list[OutgoingMessage], futures: list[Future[str]]) -> None:
        """Send one batch with retries and resolve its futures; runs on the lane's thread."""
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
            wrapped = wrap_error(driver, err, "sending to")
            for future in futures:
                _resolve(future, None, wrapped)
            return
        for future, message_id in zip(futures, ids, strict=True):
            # A caller may have cancelled its future; the message went out anyway (it was already
            # queued), and a cancelled future cannot take a result. Catching that here instead of
            # set_running_or_notify_cancel() per message keeps the hot path one lock shorter.
            try:  # noqa: SIM105 - try/except is cheaper than contextlib.suppress on this per-message path
                future.set_result(message_id)
            except InvalidStateError:
                pass

    def _fail_waiting(self, lane: _Lane) -> None:
        """Fail the messages still waiting in a lane at close (lane lock held)."""
        if not lane.messages:
            return
        closed = errors.Closed(f"publisher for {self._driver.name} was closed before sending")
        for future in lane.futures:
            _resolve(future, None, closed)
        lane.completed += len(lane.futures)
        lane.messages, lane.futures = [], []
        lane.nbytes = 0
        lane.done.notify_all()
        lane.room.notify_all()


def _batch_end(messages: list[OutgoingMessage], batch_size: int, max_bytes: int) -> int:
    """How many of the leading `messages` make one batch: at most batch_size, at most max_bytes (at least one)."""
    size = 0
    for index, message in enumerate(messages[:batch_size]):
        size += len(message.data)
        if size > max_bytes:
            return max(index, 1)
    return min(len(messages), batch_size)


def _resolve(future: Future[str], result: str | None, error: BaseException | None) -> None:
    """Set a future's outcome unless the caller cancelled it."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or "")
    except InvalidStateError:
        pass
