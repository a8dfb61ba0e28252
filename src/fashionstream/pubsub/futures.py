"""`SendFuture`: the `concurrent.futures.Future` that `Publisher.send` returns, made cheap to create.

A plain `Future()` allocates a `threading.Condition` (with its RLock, deque and
bound methods) and two lists: about a dozen objects the cyclic garbage
collector tracks, per sent message, most of them never used because nobody
waits on most futures. A producer holding the futures of a large backlog then
pays for rescanning them in every full collection; measured with Kafka, this
was most of the per-message cost of `send`.

`SendFuture` is a `Future` whose state starts in class attributes, so creating
one allocates nothing else. Its condition and lists come into being, all at
once, the first time anything touches them: `result()`, `exception()`,
`done()`, `add_done_callback()`, `cancel()`, `concurrent.futures.wait()`,
`as_completed()`, asyncio's `wrap_future()`. The publisher resolves futures
with `resolve_all` / `fail_all`: a future nothing has touched takes its result
without a lock; any other takes the ordinary `set_result` path, which
notifies waiters and runs callbacks. Both sides decide under one module lock
(`_CREATE`), so a waiter either sees the result or is woken by it.

This relies on the attribute names CPython's `concurrent.futures.Future` has
used since Python 3.2 (`_condition`, `_state`, `_result`, `_exception`,
`_waiters`, `_done_callbacks`); tests/test_pubsub_portable.py checks the
behaviours above on it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import FINISHED, PENDING
from typing import Any, TypeVar

T = TypeVar("T")

# Guards the switch of a future from lazy (no condition yet) to ordinary, against resolve_all.
_CREATE = threading.Lock()
_LAZY_PARTS = frozenset({"_condition", "_waiters", "_done_callbacks"})


class SendFuture(Future[T]):
    """A `Future` that creates its lock and lists on first use; see the module docstring."""

    # The state of a new, untouched future, read from the class until set on the instance.
    _state: str = PENDING
    _result: Any = None
    _exception: BaseException | None = None
    _lazy = True  # no condition yet: resolve_all may set the result without a lock

    def __init__(self) -> None:  # Future.__init__ would allocate what this class defers
        pass

    # A resolved future never changes again, so its outcome is read without the lock: checking
    # every future after a flush then allocates nothing.

    def done(self) -> bool:
        return self._state == FINISHED or super().done()

    def result(self, timeout: float | None = None) -> T:
        if self._state == FINISHED:
            if self._exception is not None:
                raise self._exception
            return self._result  # type: ignore[no-any-return]
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        return super().exception(timeout)

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes not set yet: the condition and lists, created together.
        if name not in _LAZY_PARTS:
            raise AttributeError(name)
        with _CREATE:
            if self._lazy:
                self._condition = threading.Condition()
                self._waiters: list[Any] = []
                self._done_callbacks: list[Any] = []
                self._lazy = False
        return object.__getattribute__(self, name)


def resolve_all(futures: Iterable[Future[T]], results: Iterable[T]) -> None:
    """Give each future its result, in pairs; cancelled futures are skipped."""
    touched: list[tuple[Future[T], T]] = []
    with _CREATE:
        for future, result in zip(futures, results, strict=True):
            if type(future) is SendFuture and future._lazy:
                # Nobody waits, has a callback or cancelled it: nothing to notify.
                future._result = result
                future._state = FINISHED
            else:
                touched.append((future, result))
    for future, result in touched:
        try:  # noqa: SIM105 - try/except is cheaper than contextlib.suppress in this loop
            future.set_result(result)
        except InvalidStateError:  # the caller cancelled it; the message went out anyway
            pass


def fail_all(futures: Iterable[Future[T]], error: BaseException) -> None:
    """Fail every future with `error`; cancelled futures are skipped."""
    touched: list[Future[T]] = []
    with _CREATE:
        for future in futures:
            if type(future) is SendFuture and future._lazy:
                future._exception = error
                future._state = FINISHED
            else:
                touched.append(future)
    for future in touched:
        try:  # noqa: SIM105
            future.set_exception(error)
        except InvalidStateError:
            pass


__all__ = ["SendFuture", "fail_all", "resolve_all"]
