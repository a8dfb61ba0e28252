"""The commit bookkeeping of one partition: what makes Kafka receiving at-least-once.

Pure (no client, no broker), so it is tested on its own.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence


class PartitionOffsets:
    """Which offsets of one partition were handed out, which are acked, and how far it is safe to commit.

    Offsets are remembered in delivery order (increasing). The head of that sequence moves on only
    while its first offset is acked, so the commit position never passes an unacked message.
    Kafka offsets may have gaps (compaction, transaction markers); only delivered offsets count.

    `failures` counts, per offset not yet committed past, how often it was nacked (explicitly, or
    because its ack deadline passed): Kafka keeps no such count, so this is the partition's only
    record of it, and it starts from nothing whenever the partition is assigned anew. Messages
    redelivered only because a nack rewound the partition behind them did not fail and are not
    counted.
    """

    __slots__ = ("delivered", "outstanding", "acked", "commit_position", "committed", "failures")

    def __init__(self) -> None:
        self.delivered: deque[int] = deque()
        self.outstanding: set[int] = set()
        self.acked: set[int] = set()
        self.commit_position: int | None = None  # next offset to commit (first not-yet-acked)
        self.committed: int | None = None  # last position sent to the broker
        self.failures: dict[int, int] = {}  # offset -> times nacked; only offsets nacked at least once

    def attempt(self, offset: int) -> int:
        """Which delivery (1, 2, ...) of `offset` the next one is: one more than its failures so far."""
        return self.failures.get(offset, 0) + 1

    def failed(self, offsets: Sequence[int]) -> None:
        """Count one failure for each of `offsets` (they were nacked)."""
        failures = self.failures
        for offset in offsets:
            failures[offset] = failures.get(offset, 0) + 1

    def _forget_failures_below(self, position: int) -> None:
        """Committed past: those offsets are never delivered by this group again."""
        if self.failures:
            self.failures = {o: n for o, n in self.failures.items() if o >= position}

    def deliver(self, offset: int) -> None:
        if self.delivered and offset <= self.delivered[-1]:
            # The consumer went back (a seek we did not expect, an offset reset): forget what follows.
            self.rewind(offset)
        self.delivered.append(offset)
        self.outstanding.add(offset)

    def deliver_all(self, offsets: Sequence[int]) -> None:
        """`deliver` for a run of increasing offsets, as one fetch returns them for a partition."""
        if not offsets:
            return
        if self.delivered and offsets[0] <= self.delivered[-1]:
            self.rewind(offsets[0])
        self.delivered.extend(offsets)
        self.outstanding.update(offsets)

    def ack_all(self, offsets: Sequence[int]) -> bool:
        """`ack` for many offsets in any order; True if the commit position moved."""
        delivered, count = self.delivered, len(offsets)
        if not self.acked and 0 < count <= len(delivered) and list(itertools.islice(delivered, count)) == offsets:
            # The usual case: the oldest deliveries, acked in order, all at once.
            self.delivered = deque(itertools.islice(delivered, count, None))
            self.outstanding.difference_update(offsets)
            self.commit_position = offsets[-1] + 1
            self._forget_failures_below(self.commit_position)
            return True
        fresh = self.outstanding.intersection(offsets)  # unknown, repeated and rewound ones change nothing
        if not fresh:
            return False
        self.outstanding.difference_update(fresh)
        acked = self.acked
        acked.update(fresh)
        # The head moves past the acked run at its front (all of it when acks come in delivery order).
        run = list(itertools.takewhile(acked.__contains__, self.delivered))
        if not run:
            return False
        take = self.delivered.popleft
        for _ in run:
            take()
        acked.difference_update(run)
        self.commit_position = run[-1] + 1
        self._forget_failures_below(self.commit_position)
        return True

    def ack(self, offset: int) -> bool:
        """Mark `offset` acked; True if the commit position moved. Unknown or repeated acks change nothing."""
        if offset not in self.outstanding:
            return False
        self.outstanding.discard(offset)
        delivered = self.delivered
        if delivered[0] == offset and not self.acked:
            # The usual case, acks in delivery order: the head moves by one.
            delivered.popleft()
            self.commit_position = offset + 1
            self._forget_failures_below(self.commit_position)
            return True
        self.acked.add(offset)
        moved = False
        while self.delivered and self.delivered[0] in self.acked:
            head = self.delivered.popleft()
            self.acked.discard(head)
            self.commit_position = head + 1
            moved = True
        if moved and self.commit_position is not None:
            self._forget_failures_below(self.commit_position)
        return moved

    def rewind(self, offset: int) -> None:
        """Forget deliveries at or after `offset`: the partition is read again from there."""
        while self.delivered and self.delivered[-1] >= offset:
            dropped = self.delivered.pop()
            self.outstanding.discard(dropped)
            self.acked.discard(dropped)

    def pending_commit(self) -> int | None:
        if self.commit_position is not None and self.commit_position != self.committed:
            return self.commit_position
        return None


__all__ = ["PartitionOffsets"]
