"""Micro-batching and batch inference with culprit isolation.

Two pieces, both free of brokers and of any real model so they can be tested
with a fake clock and a fake inference function (the Apache Beam RunInference idea):

* `MicroBatcher` collects items; a batch closes when it holds `max_batch_size`
  items or when its *oldest* item has waited `max_wait_ms`. It never sleeps or
  starts threads: the caller asks `time_until_due()` how long it may block
  waiting for more input, then calls `take_due()`.
* `run_isolating_failures` runs a batch through an inference function and, when
  the batch fails, bisects it so that one poisonous input fails alone instead of
  its neighbours.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")

Clock = Callable[[], float]


class MicroBatcher(Generic[T]):
    """Groups items into batches closed by size or by the age of their oldest item."""

    def __init__(self, max_batch_size: int, max_wait_ms: float, clock: Clock = time.monotonic) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._clock = clock
        self._items: list[T] = []
        self._opened_at = 0.0  # clock reading when the first item of the open batch arrived

    def __len__(self) -> int:
        return len(self._items)

    @property
    def room(self) -> int:
        """How many more items the open batch takes before it is full."""
        return self.max_batch_size - len(self._items)

    def add(self, item: T) -> list[T] | None:
        """Add one item; return the batch if this item filled it, else None."""
        if not self._items:
            self._opened_at = self._clock()
        self._items.append(item)
        if len(self._items) >= self.max_batch_size:
            return self._close()
        return None

    def time_until_due(self) -> float | None:
        """Seconds until the open batch must close (0 if overdue); None when there is no open batch."""
        if not self._items:
            return None
        return max(0.0, self._opened_at + self.max_wait_s - self._clock())

    def take_due(self) -> list[T] | None:
        """The open batch if its oldest item has waited max_wait_ms, else None."""
        remaining = self.time_until_due()
        if remaining is None or remaining > 0:
            return None
        return self._close()

    def flush(self) -> list[T]:
        """Close the open batch now, whatever its age (shutdown); may be empty."""
        return self._close() if self._items else []

    def _close(self) -> list[T]:
        batch, self._items = self._items, []
        return batch


@dataclass(frozen=True)
class Failed:
    """The outcome for one input that failed in the model even when run alone."""

    error: BaseException

    @property
    def detail(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"


def run_isolating_failures(
    infer: Callable[[Sequence[InputT]], Sequence[OutputT]], batch: Sequence[InputT]
) -> list[OutputT | Failed]:
    """`infer(batch)`, and if the whole batch raises, each half again, down to single inputs.

    A batch of n with one poisonous input costs about 2*log2(n) extra calls, and every good
    input still gets its answer; an input that fails alone comes back as `Failed`.
    """
    if not batch:
        return []
    try:
        outputs = list(infer(batch))
        if len(outputs) != len(batch):
            raise RuntimeError(f"model returned {len(outputs)} outputs for {len(batch)} inputs")
        return list(outputs)
    except Exception as error:  # noqa: BLE001 - any model failure is isolated, never fatal
        if len(batch) == 1:
            return [Failed(error)]
    middle = len(batch) // 2
    return run_isolating_failures(infer, batch[:middle]) + run_isolating_failures(infer, batch[middle:])
