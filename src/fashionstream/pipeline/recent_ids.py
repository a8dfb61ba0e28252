"""The service's bounded memory of recent request ids, to count duplicates (never to suppress them).

At-least-once delivery means a request may be answered twice; counting how often that happens is
what `fashionstream_duplicates_total` is for. Remembering the last `capacity` ids by their 64-bit
hash rather than the id strings keeps a full memory of 200,000 ids at about 17 MB instead of the
~75 MB an ordered dict of the strings took in the running service: a deque slot, a set slot and an
int per id. Two different ids with the same hash would count one false duplicate; at 64 bits and
200,000 ids the chance is about 1 in 10⁹. Python's string hash is salted per process, which is fine:
the memory lives and dies with the process.
"""

from __future__ import annotations

from collections import deque


class RecentIds:
    """The last `capacity` distinct ids seen; `seen_before(id)` records one and says whether it was there."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._order: deque[int] = deque()  # oldest first; each hash once, so forgetting it is exact
        self._members: set[int] = set()

    def __len__(self) -> int:
        return len(self._members)

    def seen_before(self, request_id: str) -> bool:
        key = hash(request_id)
        if key in self._members:
            return True
        if len(self._order) >= self.capacity:
            self._members.discard(self._order.popleft())
        self._order.append(key)
        self._members.add(key)
        return False
