"""MicroBatcher and BatchInference with a fake clock and fake model handlers (no broker, no model)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fashionstream.pipeline.batcher import BatchInference, Failed, MicroBatcher


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


class DoublingHandler:
    """Fake model: doubles numbers; refuses any batch containing a negative one (a poison input)."""

    def __init__(self) -> None:
        self.loads = 0
        self.batches: list[list[int]] = []

    def load_model(self) -> str:
        self.loads += 1
        return "model-v1"

    def run_inference(self, batch: Sequence[int], model: str) -> list[int]:
        assert model == "model-v1"
        self.batches.append(list(batch))
        if any(x < 0 for x in batch):
            raise ValueError(f"cannot take {min(batch)}")
        return [2 * x for x in batch]


def test_inference_loads_once_and_answers_in_order() -> None:
    handler = DoublingHandler()
    inference = BatchInference(handler)
    assert inference.run([1, 2, 3]) == [2, 4, 6]
    assert inference.run([]) == []
    assert handler.loads == 1 and inference.model_calls == 1


def test_one_poison_input_fails_alone_and_its_neighbours_are_answered() -> None:
    handler = DoublingHandler()
    inference = BatchInference(handler)
    batch = list(range(16))
    batch[11] = -5
    results = inference.run(batch)
    assert len(results) == 16
    failed = [i for i, r in enumerate(results) if isinstance(r, Failed)]
    assert failed == [11]
    assert "cannot take -5" in results[11].detail  # type: ignore[union-attr]
    assert [r for i, r in enumerate(results) if i != 11] == [2 * x for i, x in enumerate(batch) if i != 11]
    # bisection, not one call per item: 1 + 2 per level down to the culprit (log2 16 = 4 levels)
    assert inference.model_calls == 1 + 2 * 4


def test_several_poison_inputs_and_a_wrong_output_count() -> None:
    handler = DoublingHandler()
    results = BatchInference(handler).run([-1, 2, -3, 4, 5])
    assert [isinstance(r, Failed) for r in results] == [True, False, True, False, False]

    class ShortHandler(DoublingHandler):
        def run_inference(self, batch: Sequence[int], model: str) -> list[int]:
            return [0] * (len(batch) - 1) if len(batch) > 1 else [7]

    # a handler that drops outputs must not mis-assign answers: the batch is split until counts match
    assert BatchInference(ShortHandler()).run([1, 2, 3]) == [7, 7, 7]
