"""MicroBatcher and run_isolating_failures with a fake clock and fake inference (no broker, no model)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fashionstream.pipeline.batcher import Failed, MicroBatcher, run_isolating_failures


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1000.0


def test_batch_closes_when_full() -> None:
    clock = FakeClock()
    batcher: MicroBatcher[int] = MicroBatcher(3, 50, clock)
    assert batcher.add(1) is None
    assert batcher.add(2) is None
    assert batcher.room == 1
    assert batcher.add(3) == [1, 2, 3]
    assert len(batcher) == 0 and batcher.time_until_due() is None


def test_batch_closes_when_its_oldest_item_has_waited_max_wait() -> None:
    clock = FakeClock()
    batcher: MicroBatcher[str] = MicroBatcher(100, 50, clock)
    assert batcher.take_due() is None  # nothing open
    batcher.add("a")
    clock.advance(30)
    batcher.add("b")  # a newer item must not extend the oldest one's deadline
    assert batcher.time_until_due() == pytest.approx(0.020)
    clock.advance(19.9)
    assert batcher.take_due() is None
    clock.advance(0.1)
    assert batcher.take_due() == ["a", "b"]
    # the next batch's clock starts at its own first item
    clock.advance(1000)
    batcher.add("c")
    assert batcher.time_until_due() == pytest.approx(0.050)


def test_zero_wait_closes_at_once_and_flush_returns_the_partial_batch() -> None:
    clock = FakeClock()
    batcher: MicroBatcher[int] = MicroBatcher(10, 0, clock)
    batcher.add(1)
    assert batcher.take_due() == [1]
    slow: MicroBatcher[int] = MicroBatcher(10, 1000, clock)
    slow.add(1)
    slow.add(2)
    assert slow.flush() == [1, 2]
    assert slow.flush() == []


@pytest.mark.parametrize(("size", "wait"), [(0, 10), (1, -1)])
def test_invalid_settings(size: int, wait: float) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(size, wait)


class Doubler:
    """Fake inference: doubles numbers; refuses any batch containing a negative one (a poison input)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, batch: Sequence[int]) -> list[int]:
        self.batches.append(list(batch))
        if any(x < 0 for x in batch):
            raise ValueError(f"cannot take {min(batch)}")
        return [2 * x for x in batch]


def test_inference_answers_in_order_with_one_call() -> None:
    infer = Doubler()
    assert run_isolating_failures(infer, [1, 2, 3]) == [2, 4, 6]
    assert run_isolating_failures(infer, []) == []
    assert len(infer.batches) == 1


def test_one_poison_input_fails_alone_and_its_neighbours_are_answered() -> None:
    infer = Doubler()
    batch = list(range(16))
    batch[11] = -5
    results = run_isolating_failures(infer, batch)
    assert len(results) == 16
    failed = [i for i, r in enumerate(results) if isinstance(r, Failed)]
    assert failed == [11]
    assert "cannot take -5" in results[11].detail  # type: ignore[union-attr]
    assert [r for i, r in enumerate(results) if i != 11] == [2 * x for i, x in enumerate(batch) if i != 11]
    # bisection, not one call per item: 1 + 2 per level down to the culprit (log2 16 = 4 levels)
    assert len(infer.batches) == 1 + 2 * 4


def test_several_poison_inputs_and_a_wrong_output_count() -> None:
    results = run_isolating_failures(Doubler(), [-1, 2, -3, 4, 5])
    assert [isinstance(r, Failed) for r in results] == [True, False, True, False, False]

    def short(batch: Sequence[int]) -> list[int]:
        return [0] * (len(batch) - 1) if len(batch) > 1 else [7]

    # inference that drops outputs must not mis-assign answers: the batch is split until counts match
    assert run_isolating_failures(short, [1, 2, 3]) == [7, 7, 7]
