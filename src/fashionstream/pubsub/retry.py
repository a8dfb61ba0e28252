"""Retry policy and error wrapping shared by the publisher, subscriber and admin helpers.

Drivers never retry; they only say whether an error is retryable and what it
means (`ErrorCode`). This module turns that classification into one of the
`fashionstream.pubsub.errors` exceptions (through the one table there), with
the native error chained and a message that names the topic or subscription
and suggests the fix.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from fashionstream.pubsub import errors
from fashionstream.pubsub.errors import ErrorCode

T = TypeVar("T")


class ClassifiesErrors(Protocol):
    """What error wrapping needs from a driver: a name and a classifier."""

    name: str

    def error_code(self, error: BaseException) -> ErrorCode: ...


def classify(driver: ClassifiesErrors, error: BaseException) -> ErrorCode:
    """The driver's code for `error`; a driver that fails to classify gets UNKNOWN, not a crash."""
    if isinstance(error, errors.PubSubError):
        return errors.code_of(error)
    try:
        return driver.error_code(error)
    except Exception:  # a buggy classifier must not hide the original error
        return ErrorCode.UNKNOWN


def wrap_error(driver: ClassifiesErrors, error: BaseException, action: str) -> errors.PubSubError:
    """A portable exception for `error`, whose message names the driver and the action.

    The caller raises it `from error` so the native error stays in the chain.
    Errors that are already portable pass through unchanged.
    """
    if isinstance(error, errors.PubSubError):
        return error
    detail = str(error) or type(error).__name__
    return errors.from_code(classify(driver, error), f"{action} {driver.name} failed: {detail}", error)


def backoff_delays(initial: float = 0.05, maximum: float = 2.0, multiplier: float = 2.0) -> Callable[[], float]:
    """A function returning the next sleep of an exponential backoff with full jitter.

    Jitter keeps many clients that failed together from retrying in lock-step.
    """
    state = {"ceiling": initial}

    def next_delay() -> float:
        ceiling = state["ceiling"]
        state["ceiling"] = min(maximum, ceiling * multiplier)
        return random.uniform(ceiling / 2, ceiling)

    return next_delay


def call_with_retries(
    fn: Callable[[float], T],
    *,
    is_retryable: Callable[[BaseException], bool],
    total_timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call `fn(remaining_seconds)` until it succeeds, a non-retryable error, or `total_timeout`.

    Raises the last native error; the caller wraps it.
    """
    deadline = clock() + total_timeout
    next_delay = backoff_delays()
    while True:
        remaining = deadline - clock()
        try:
            return fn(max(remaining, 0.001))
        except Exception as err:
            if not _safe_retryable(is_retryable, err):
                raise
            delay = next_delay()
            if clock() + delay >= deadline:
                raise
            sleep(delay)


def _safe_retryable(is_retryable: Callable[[BaseException], bool], err: BaseException) -> bool:
    try:
        return bool(is_retryable(err))
    except Exception:
        return False
