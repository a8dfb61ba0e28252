"""What `fashionstream watch` knows about the stream: requests joined to their predictions, in bounded memory.

The watch reads three topics through its own subscriptions: requests (`images`), answers
(`predictions`) and refusals (`images.dlq`). A request and its answer arrive on different topics
in either order, so `WatchState` joins them by id: a request's thumbnail waits for its prediction,
and a prediction that comes first shows at once and gets its thumbnail when the request turns up.

Every collection here has a fixed bound, so the watch can run for months on a busy stream:

- the grid holds the latest `grid_size` answers;
- thumbnails waiting for their prediction: at most `max_waiting` (oldest dropped first);
- ids remembered to recognise a duplicate answer (at-least-once delivery): at most `remember_ids`;
  a duplicate of an answer older than that is counted again (the counters are a view, not an audit);
- the charts: one bucket per second for `window_s` seconds, each keeping at most
  `latency_samples` latencies (a uniform reservoir sample);
- dead letters: at most `max_reasons` reasons, `latest_per_reason` each.

No threads, no sleeps and an injected clock: readers call `add_*` under their own lock, and
`snapshot()` returns plain JSON-ready data for the page.
"""

from __future__ import annotations

import base64
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fashionstream.classifier.fashion_mnist_files import CLASS_NAMES
from fashionstream.pipeline import cloudevents, contract
from fashionstream.pipeline.contract import PredictionEvent

CLASS_COUNT = 10
GRID_SIZE = 48
WINDOW_S = 300  # the charts cover the last five minutes
OTHER_REASON = "other"  # dead letters whose reason is beyond the first `max_reasons` distinct ones


@dataclass
class Tile:
    """One answered image on the grid."""

    id: str
    label: int
    class_name: str
    confidence: float
    expected_label: int | None
    model: str
    thumbnail: bytes | None  # a 28×28 PNG, or None until (unless) the request is seen

    @property
    def wrong(self) -> bool:
        return self.expected_label is not None and self.expected_label != self.label

    def as_dict(self) -> dict[str, Any]:
        image = None if self.thumbnail is None else "data:image/png;base64," + base64.b64encode(self.thumbnail).decode()
        return {
            "id": self.id,
            "label": self.label,
            "class_name": self.class_name,
            "confidence": round(self.confidence, 4),
            "expected_label": self.expected_label,
            "wrong": self.wrong,
            "model": self.model,
            "image": image,
        }


@dataclass
class _Second:
    """Answers read during one second of the watch's clock, with a sample of their latencies."""

    second: int
    answered: int = 0
    seen_latencies: int = 0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class DeadLetterNote:
    id: str
    detail: str
    time: str | None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    # Linear interpolation between closest ranks, as numpy's default does.
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class WatchState:
    """The joined, bounded view of the stream (see the module docstring for the bounds)."""

    def __init__(
        self,
        *,
        grid_size: int = GRID_SIZE,
        window_s: int = WINDOW_S,
        max_waiting: int = 4096,
        remember_ids: int = 100_000,
        latency_samples: int = 200,
        max_reasons: int = 32,
        latest_per_reason: int = 5,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.grid_size = grid_size
        self.window_s = window_s
        self.max_waiting = max_waiting
        self.remember_ids = remember_ids
        self.latency_samples = latency_samples
        self.max_reasons = max_reasons
        self.latest_per_reason = latest_per_reason
        self._clock = clock
        self._rng = rng or random.Random(0)
        self.grid: deque[Tile] = deque()
        self.waiting: OrderedDict[str, bytes] = OrderedDict()  # request id -> thumbnail, until its answer comes
        self.answered_ids: OrderedDict[str, None] = OrderedDict()
        self.seconds: deque[_Second] = deque()
        self.dead_letters: dict[str, int] = {}
        self.latest_dead: dict[str, deque[DeadLetterNote]] = {}
        self.models: OrderedDict[str, int] = OrderedDict()  # model id -> answers, most recent model last
        self.confusion = [[0] * CLASS_COUNT for _ in range(CLASS_COUNT)]  # [expected][predicted]
        self.requests = 0
        self.unreadable_requests = 0  # refused by the contract: the service dead-letters them too
        self.answered = 0
        self.duplicates = 0
        self.invalid_predictions = 0
        self.scored = 0
        self.correct = 0
        self.version = 0  # bumped on every change, so the page is sent only what is new

    # -- input ------------------------------------------------------------------------------------

    def add_request(self, request_id: str, thumbnail: bytes | None) -> None:
        """A request read from `images`; `thumbnail` is None for a request whose image cannot be shown."""
        self.requests += 1
        self.version += 1
        if thumbnail is None:
            return
        for tile in self.grid:
            if tile.id == request_id:  # its answer came first
                tile.thumbnail = thumbnail
                return
        if request_id in self.answered_ids:
            return  # answered and already off the grid: nothing left to show it on
        self.waiting[request_id] = thumbnail
        self.waiting.move_to_end(request_id)
        while len(self.waiting) > self.max_waiting:
            self.waiting.popitem(last=False)

    def add_unreadable_request(self) -> None:
        self.requests += 1
        self.unreadable_requests += 1
        self.version += 1

    def add_prediction(self, event: PredictionEvent, received: datetime | None = None) -> bool:
        """An answer read from `predictions`; False for a duplicate (an id answered before)."""
        self.version += 1
        if event.id in self.answered_ids:
            self.duplicates += 1
            return False
        self.answered_ids[event.id] = None
        while len(self.answered_ids) > self.remember_ids:
            self.answered_ids.popitem(last=False)
        self.answered += 1
        prediction = event.prediction
        if event.expected_label is not None and 0 <= event.expected_label < CLASS_COUNT:
            self.scored += 1
            self.correct += int(event.expected_label == prediction.label)
            self.confusion[event.expected_label][prediction.label] += 1
        self.models[event.model] = self.models.pop(event.model, 0) + 1
        while len(self.models) > 16:  # model ids change rarely; keep the recent ones
            self.models.popitem(last=False)
        self._count(event, received)
        tile = Tile(
            event.id,
            prediction.label,
            prediction.class_name,
            prediction.confidence,
            event.expected_label,
            event.model,
            self.waiting.pop(event.id, None),
        )
        self.grid.appendleft(tile)  # newest first
        while len(self.grid) > self.grid_size:
            self.grid.pop()
        return True

    def add_invalid_prediction(self) -> None:
        self.invalid_predictions += 1
        self.version += 1

    def add_dead_letter(self, attributes: Mapping[str, str], key: str | None = None) -> None:
        """A refusal read from `images.dlq`: its reason, id and detail come from its attributes."""
        self.version += 1
        reason = attributes.get(contract.ERROR) or "unknown"
        if reason not in self.dead_letters and len(self.dead_letters) >= self.max_reasons:
            reason = OTHER_REASON
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1
        note = DeadLetterNote(
            id=cloudevents.attribute(attributes, "id") or key or "",
            detail=attributes.get(contract.ERROR_DETAIL, ""),
            time=attributes.get("error_time"),
        )
        self.latest_dead.setdefault(reason, deque(maxlen=self.latest_per_reason)).appendleft(note)

    def _count(self, event: PredictionEvent, received: datetime | None) -> None:
        now = self._clock()
        second = int(now)
        if not self.seconds or self.seconds[-1].second != second:
            self.seconds.append(_Second(second))
        self._trim(second)
        bucket = self.seconds[-1]
        bucket.answered += 1
        sent = cloudevents.parse_time(event.request_time)
        if sent is None:
            return
        at = received or datetime.fromtimestamp(now, UTC)
        latency = max(0.0, (at - sent).total_seconds() * 1000.0)
        # Reservoir sampling: every latency of the second has the same chance to be kept.
        bucket.seen_latencies += 1
        if len(bucket.latencies_ms) < self.latency_samples:
            bucket.latencies_ms.append(latency)
        else:
            slot = self._rng.randrange(bucket.seen_latencies)
            if slot < self.latency_samples:
                bucket.latencies_ms[slot] = latency

    def _trim(self, second: int) -> None:
        while self.seconds and self.seconds[0].second <= second - self.window_s:
            self.seconds.popleft()

    # -- output -----------------------------------------------------------------------------------

    def series(self) -> list[dict[str, Any]]:
        """Per second of the window: answers per second and latency p50/p99 (ms); seconds without answers are 0."""
        now = int(self._clock())
        self._trim(now)
        by_second = {b.second: b for b in self.seconds}
        out = []
        for second in range(now - self.window_s + 1, now + 1):
            bucket = by_second.get(second)
            samples = bucket.latencies_ms if bucket else []
            out.append(
                {
                    "t": second,
                    "images_per_s": bucket.answered if bucket else 0,
                    "p50_ms": _percentile(samples, 0.50),
                    "p99_ms": _percentile(samples, 0.99),
                }
            )
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data."""
        latest_model = next(reversed(self.models)) if self.models else None
        return {
            "version": self.version,
            "counters": {
                "requests": self.requests,
                "unreadable_requests": self.unreadable_requests,
                "answered": self.answered,
                "duplicates": self.duplicates,
                "invalid_predictions": self.invalid_predictions,
                "dead_lettered": sum(self.dead_letters.values()),
                "scored": self.scored,
                "correct": self.correct,
                "accuracy": self.correct / self.scored if self.scored else None,
            },
            "grid": [tile.as_dict() for tile in self.grid],
            "confusion": [row[:] for row in self.confusion] if self.scored else None,
            "models": [{"id": model, "answers": count} for model, count in self.models.items()],
            "latest_model": latest_model,
            "dead_letters": {
                reason: {
                    "count": count,
                    "latest": [note.__dict__ for note in self.latest_dead.get(reason, ())],
                }
                for reason, count in sorted(self.dead_letters.items(), key=lambda item: -item[1])
            },
            "series": self.series(),
            "window_s": self.window_s,
            "class_names": list(CLASS_NAMES),
        }
