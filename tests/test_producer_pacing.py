"""`produce` pacing: what falls due within one tick goes out as one batch, slower rates send each alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from fashionstream.pipeline.cloudevents import Flavour
from fashionstream.pipeline.producer import PACING_TICK_S, SourceImage, labelled_test_images, produce


class RecordingPublisher:
    """Confirms everything at once and records each call: (time, how many messages, which call)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int, str]] = []

    def _done(self, result: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(result)
        return future

    def send(self, data: bytes, attributes: dict[str, str] | None = None, key: str | None = None) -> Future[Any]:
        self.calls.append((time.perf_counter(), 1, "send"))
        return self._done("id")

    def send_batch(self, messages: list[tuple[bytes, dict[str, str], str | None]]) -> Future[Any]:
        self.calls.append((time.perf_counter(), len(messages), "send_batch"))
        return self._done(["id"] * len(messages))

    def flush(self, timeout: float | None = None) -> None:
        pass


def test_a_fast_pace_sends_what_fell_due_in_a_tick_as_one_batch() -> None:
    publisher = RecordingPublisher()
    rate = 4 / PACING_TICK_S  # about four images per tick
    summary = produce(publisher, list(labelled_test_images(200)), Flavour.KAFKA, rate=rate)
    assert summary.confirmed == summary.sent == 200
    assert {kind for _, _, kind in publisher.calls} == {"send_batch"}  # no linger on top of the pacing
    assert sum(n for _, n, _ in publisher.calls) == 200
    assert len(publisher.calls) < 100  # grouped: a wake per tick, not per image
    gaps = [b[0] - a[0] for a, b in zip(publisher.calls, publisher.calls[1:], strict=False)]
    assert min(gaps) >= PACING_TICK_S * 0.7  # less only by the time to encode a tick's images
    assert summary.seconds >= 0.9 * 200 / rate  # still paced: never faster than the rate


def test_a_slow_pace_sends_each_image_alone_at_its_time() -> None:
    publisher = RecordingPublisher()
    rate = 0.5 / PACING_TICK_S  # one image every two ticks
    summary = produce(publisher, list(labelled_test_images(20)), Flavour.KAFKA, rate=rate)
    assert summary.confirmed == 20
    assert [n for _, n, _ in publisher.calls] == [1] * 20
    assert publisher.calls[-1][0] - publisher.calls[0][0] >= 0.95 * 19 / rate


def test_flat_out_leaves_batching_to_the_publisher() -> None:
    publisher = RecordingPublisher()
    summary = produce(publisher, labelled_test_images(50), Flavour.KAFKA)
    assert summary.confirmed == 50
    assert {kind for _, _, kind in publisher.calls} == {"send"}


def test_the_pace_starts_with_the_first_image_not_before_the_source_made_it() -> None:
    images = list(labelled_test_images(40))

    def slow_to_start() -> Iterator[SourceImage]:
        time.sleep(0.2)  # like loading a data set: 0.2 s at this rate is 160 images due at once
        yield from images

    publisher = RecordingPublisher()
    rate = 4 / PACING_TICK_S
    summary = produce(publisher, slow_to_start(), Flavour.KAFKA, rate=rate)
    assert summary.confirmed == 40
    assert max(n for _, n, _ in publisher.calls) <= 8  # about one tick's images per batch, no start-up burst
    assert summary.seconds >= 0.9 * 39 / rate  # paced from the first image, not counting the source's start
