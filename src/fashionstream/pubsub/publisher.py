"""`Publisher`: the portable sending side, written once for every backend.

`send()` validates the message, creates its future and puts it on a queue;
that is the whole per-message cost on the caller's thread. A dispatcher
thread groups queued messages into batches (a batch closes when it is full or
`linger` seconds after its first message) and hands each batch to a pool of
`max_in_flight` sender threads, so several round trips to the broker overlap.
A sender retries retryable driver errors with backoff until `send_timeout`,
then resolves every future of the batch with the broker's id or one wrapped error.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import TracebackType

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import OutgoingMessage, TopicDriver
from fashionstream.pubsub.retry import call_with_retries, wrap_error

log = logging.getLogger(__name__)

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
    max_in_flight: int = 4  # batches being sent at the same time
    send_timeout: float = 30.0  # seconds per batch, retries included
    # Messages waiting for a batch at most; send() blocks (up to send_timeout) beyond it, so a producer
    # faster than its broker does not grow memory without bound (librdkafka's default queue is 100,000 too).
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


_Item = tuple[OutgoingMessage, "Future[str]"]


class _FlushMarker:
    """Put on the queue by flush(): the dispatcher answers with the batches in flight at that point."""

    __slots__ = ("in_flight",)

    def __init__(self) -> None:
        self.in_flight: Future[list[Future[None]]] = Future()


_STOP = object()


class Publisher:
    """Sends messages to one topic. Open with `fashionstream.pubsub.open_topic(url)`.

    Thread-safe: any number of threads may call `send` at once.
    """

    def __init__(self, driver: TopicDriver, settings: PublisherSettings | None = None) -> None:
        self._driver = driver
        self._settings = settings or PublisherSettings()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._room = threading.Condition(threading.Lock())  # signalled when the backlog shrinks
        self._waiting_for_room = False
        self._in_flight: set[Future[None]] = set()
        self._slots = threading.BoundedSemaphore(self._settings.max_in_flight)
        self._senders = ThreadPoolExecutor(self._settings.max_in_flight, thread_name_prefix="pubsub-send")
        self._dispatcher = threading.Thread(target=self._dispatch, name="pubsub-batcher", daemon=True)
        self._dispatcher.start()

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
            raise errors.Closed(f"publisher for {self._driver.name} is closed; open a new one with open_topic()")
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
        if key is not None and type(key) is not str:
            raise errors.InvalidArgument(f"message key must be str or None, got {type(key).__name__}")
        if self._queue.qsize() >= self._settings.max_queued:
            self._wait_for_room()
        future: Future[str] = Future()
        self._queue.put((OutgoingMessage(data, attributes, key), future))
        return future

    def _wait_for_room(self) -> None:
        """Block the sender until the backlog is below max_queued (back-pressure), or time out."""
        deadline = time.monotonic() + self._settings.send_timeout
        with self._room:
            while self._queue.qsize() >= self._settings.max_queued:
                if self._closed:
                    raise errors.Closed(f"publisher for {self._driver.name} is closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.Timeout(
                        f"{self._driver.name}: {self._queue.qsize()} messages still queued after "
                        f"{self._settings.send_timeout} s; the broker is not keeping up (is it reachable?)"
                    )
                self._waiting_for_room = True
                self._room.wait(min(remaining, 0.05))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent before this call is confirmed or failed.

        Raises Timeout if that takes longer than `timeout` seconds. Send errors are
        not raised here; they are in each message's future.
        """
        if not self._dispatcher.is_alive():
            return
        started = time.monotonic()
        marker = _FlushMarker()
        self._queue.put(marker)
        try:
            in_flight = marker.in_flight.result(timeout)
            remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            _, not_done = wait(in_flight, remaining)
        except TimeoutError as err:
            raise errors.Timeout(f"flushing {self._driver.name} did not finish within {timeout} s") from err
        if not_done:
            raise errors.Timeout(
                f"flushing {self._driver.name}: {len(not_done)} batch(es) still unconfirmed after {timeout} s"
            )

    def close(self, timeout: float | None = None) -> None:
        """Flush, then release the driver. Later sends raise Closed. Calling close twice is harmless.

        `timeout` bounds the flush (default: send_timeout plus a margin); Timeout is
        raised if messages were still unconfirmed, after the publisher was closed anyway.
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
            self._queue.put(_STOP)
            self._dispatcher.join()
            self._senders.shutdown(wait=False, cancel_futures=True)
            # A send() that passed the closed check just before close() can land after _STOP.
            self._fail_leftovers()
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

    def _dispatch(self) -> None:
        """Form batches from the queue and submit them; runs on the dispatcher thread."""
        settings = self._settings
        carry: _Item | None = None  # a message that did not fit in the previous batch
        while True:
            # Take a sender slot before forming the batch: while every sender is busy,
            # messages pile up in the queue and the next batch comes out bigger.
            self._slots.acquire()
            first: object = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                self._slots.release()
                return
            if isinstance(first, _FlushMarker):
                self._slots.release()
                first.in_flight.set_result(self._snapshot_in_flight())
                continue
            batch: list[_Item] = [first]  # type: ignore[list-item]
            size = len(batch[0][0].data)
            close_at = time.monotonic() + settings.linger
            marker: _FlushMarker | None = None
            stop = False
            while len(batch) < settings.batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    remaining = close_at - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if item is _STOP:
                    stop = True
                    break
                if isinstance(item, _FlushMarker):
                    marker = item  # a flush closes the batch now instead of lingering
                    break
                message_item: _Item = item  # type: ignore[assignment]
                size += len(message_item[0].data)
                if size > settings.max_batch_bytes:
                    carry = message_item
                    break
                batch.append(message_item)
            self._submit(batch)
            if self._waiting_for_room:
                with self._room:
                    self._waiting_for_room = False
                    self._room.notify_all()
            if marker is not None:
                marker.in_flight.set_result(self._snapshot_in_flight())
            if stop:
                if carry is not None:
                    self._slots.acquire()
                    self._submit([carry])
                return

    def _snapshot_in_flight(self) -> list[Future[None]]:
        with self._lock:
            return list(self._in_flight)

    def _submit(self, batch: list[_Item]) -> None:
        """Start sending `batch` on a sender thread; the caller holds one sender slot."""
        future = self._senders.submit(self._send_batch, batch)
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(lambda done: self._batch_done(done, batch))

    def _batch_done(self, future: Future[None], batch: list[_Item]) -> None:
        with self._lock:
            self._in_flight.discard(future)
        self._slots.release()
        if future.cancelled():  # close() gave up on it: its messages must not wait forever
            closed = errors.Closed(f"publisher for {self._driver.name} was closed before sending")
            for _, fut in batch:
                _resolve(fut, None, closed)

    def _send_batch(self, batch: list[_Item]) -> None:
        """Send one batch with retries and resolve its futures; runs on a sender thread."""
        messages = [msg for msg, _ in batch]
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
            for _, fut in batch:
                _resolve(fut, None, wrapped)
            return
        for (_, fut), message_id in zip(batch, ids, strict=True):
            # A caller may have cancelled its future; the message went out anyway (it was already
            # queued), and a cancelled future cannot take a result. Checking here instead of
            # set_running_or_notify_cancel() per message keeps the hot path one lock shorter.
            try:  # noqa: SIM105 - try/except is cheaper than contextlib.suppress on this per-message path
                fut.set_result(message_id)
            except InvalidStateError:
                pass

    def _fail_leftovers(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _FlushMarker):
                item.in_flight.set_result([])
            elif isinstance(item, tuple):
                _resolve(item[1], None, errors.Closed(f"publisher for {self._driver.name} was closed before sending"))


def _resolve(future: Future[str], result: str | None, error: BaseException | None) -> None:
    """Set a future's outcome unless the caller cancelled it."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or "")
    except InvalidStateError:
        pass
