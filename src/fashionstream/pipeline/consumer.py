"""The consumer side: read predictions, drop duplicates by id, keep score.

`Tally` is the bookkeeping (used by `fashionstream consume` and the demo):
answered ids, duplicates, accuracy when the expected label is known (from the
prediction itself, or from what the caller says it sent), and end-to-end
latency from the request's `time` to the moment the prediction was read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from fashionstream.pipeline import contract
from fashionstream.pipeline.cloudevents import parse_time
from fashionstream.pipeline.contract import PredictionEvent


def percentiles(values: list[float], points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{p}": float("nan") for p in points}
    array = np.asarray(values)
    return {f"p{p}": float(np.percentile(array, p)) for p in points}


@dataclass
class Tally:
    """Running totals over a stream of predictions."""

    expected: Mapping[str, int] = field(default_factory=dict)
    sent_at: Mapping[str, datetime] = field(default_factory=dict)  # latency origin when a prediction lacks one
    answered: dict[str, PredictionEvent] = field(default_factory=dict)
    duplicates: int = 0
    invalid: int = 0
    correct: int = 0
    scored: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None

    def add(self, event: PredictionEvent, received: datetime | None = None) -> bool:
        """Record one prediction; False if its id was already answered (a duplicate)."""
        now = time.perf_counter()
        if event.id in self.answered:
            self.duplicates += 1
            return False
        self.answered[event.id] = event
        self.first_at = self.first_at if self.first_at is not None else now
        self.last_at = now
        expected = event.expected_label
        if expected is None:
            expected = self.expected.get(event.id)
        if expected is not None:
            self.scored += 1
            self.correct += int(expected == event.prediction.label)
        sent = parse_time(event.request_time) or self.sent_at.get(event.id)
        if sent is not None:
            delta = ((received or datetime.now(UTC)) - sent).total_seconds() * 1000.0
            self.latencies_ms.append(max(0.0, delta))
        return True

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None

    def latency(self) -> dict[str, float]:
        return percentiles(self.latencies_ms)


def read_predictions(
    subscriber: Any,
    tally: Tally,
    *,
    until: Callable[[], bool],
    idle_timeout: float | None,
    on_new: Callable[[PredictionEvent], None] | None = None,
    batch: int = 500,
) -> None:
    """Receive and ack predictions until `until()` or nothing arrived for `idle_timeout` seconds."""
    idle_since = time.monotonic()
    while not until():
        messages = subscriber.receive_batch(max_messages=batch, timeout=0.2)
        if not messages:
            if idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
                return
            continue
        idle_since = time.monotonic()
        received = datetime.now(UTC)
        for message in messages:
            try:
                prediction = contract.decode_prediction(message.data)
            except (ValueError, json.JSONDecodeError, UnicodeDecodeError):
                tally.invalid += 1
            else:
                if tally.add(prediction, received) and on_new is not None:
                    on_new(prediction)
            message.ack()


def table_header() -> str:
    return f"{'id':<36}  {'label':<12} {'conf':>6}  {'expected':<12} {'ok':<2}"


def table_row(event: PredictionEvent, class_names: tuple[str, ...] | None = None) -> str:
    expected, prediction = event.expected_label, event.prediction
    expected_name = "" if expected is None else (class_names[expected] if class_names else str(expected))
    ok = "" if expected is None else ("✓" if event.correct else "✗")
    return (
        f"{event.id[:36]:<36}  {prediction.class_name[:12]:<12} {prediction.confidence:6.3f}  "
        f"{expected_name[:12]:<12} {ok}"
    )
