"""The commit bookkeeping of one partition: what makes Kafka receiving at-least-once.

Pure (no client, no broker), so it is tested on its own.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Which offsets of one partition were handed out, which are acked, and how far it is safe to commit.

    Offsets are remembered in delivery order (increasing). The head of that sequence moves on only
    while its first offset is acked, so the commit position never passes an unacked message.
    Kafka offsets may have gaps (compaction, transaction markers); only delivered offsets count.
    """

    __slots__ = ("delivered", "outstanding", "acked", "commit_position", "committed")

    def __init__(self) -> None:
        self.delivered: deque[int] = deque()
        self.outstanding: set[int] = set()
        self.acked: set[int] = set()
        self.commit_position: int | None = None  # next offset to commit (first not-yet-acked)
        self.committed: int | None = None  # last position sent to the broker

    def deliver(self, offset: int) -> None:
        if self.delivered and offset <= self.delivered[-1]:
            # The consumer went back (a seek we did not expect, an offset reset): forget what follows.
            self.rewind(offset)
        self.delivered.append(offset)
        self.outstanding.add(offset)

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
            return True
        self.acked.add(offset)
        moved = False
        while self.delivered and self.delivered[0] in self.acked:
            head = self.delivered.popleft()
            self.acked.discard(head)
            self.commit_position = head + 1
            moved = True
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
