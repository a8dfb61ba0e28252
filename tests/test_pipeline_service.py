"""The service's acknowledgement logic, with a hand-driven broker and a fake model.

What is under test is the bookkeeping around the broker: an input is acked only
after the broker confirmed its answer, nacked when the publish fails, and a stop
finishes the open batch. Real-broker behaviour is covered in test_pipeline_e2e.py
and test_pipeline_service_process.py; here the fakes let the test decide exactly
when the "broker" confirms.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

import numpy as np

from fashionstream.classifier.predictor import Prediction
from fashionstream.pipeline import contract
from fashionstream.pipeline.cloudevents import Flavour
from fashionstream.pipeline.config import PARALLEL_BATCH, ServiceConfig
from fashionstream.pipeline.contract import Request
from fashionstream.pipeline.handler import Pixels
from fashionstream.pipeline.service import ModelService
from fashionstream.pubsub import errors
from fashionstream.reasons import InvalidInput, Reason


class FakeMessage:
    def __init__(self, data: bytes, attributes: dict[str, str], key: str | None) -> None:
        self.data, self.attributes, self.key = data, attributes, key
        self.id = key or "?"
        self.delivery_attempt: int | None = 1
        self.acked = self.nacked = False

    def ack(self) -> None:
        self.acked = True

    def nack(self) -> None:
        self.nacked = True


class FakeReceiver:
    def __init__(self, messages: list[FakeMessage]) -> None:
        self.queue = list(messages)
        self.lock = threading.Lock()

    def receive_batch(self, max_messages: int, timeout: float) -> list[FakeMessage]:
        with self.lock:
            taken, self.queue = self.queue[:max_messages], self.queue[max_messages:]
        if not taken:
            time.sleep(min(timeout, 0.01))
        return taken

    def ack(self, messages: Iterable[FakeMessage]) -> None:
        for message in messages:
            message.ack()

    def nack(self, messages: Iterable[FakeMessage]) -> None:
        for message in messages:
            message.nack()

    def close(self) -> None:
        pass


class HeldSender:
    """A topic whose confirmations the test releases by hand."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, str], str | None, Future[str]]] = []
        self.lock = threading.Lock()

    def send(self, data: bytes, attributes: dict[str, str] | None = None, key: str | None = None) -> Future[str]:
        future: Future[str] = Future()
        with self.lock:
            self.sent.append((data, dict(attributes or {}), key, future))
        return future

    def send_batch(self, messages: Iterable[tuple[bytes, dict[str, str], str | None]]) -> Future[list[str]]:
        """One future for the batch, resolved once the test has confirmed each message in it."""
        parts = [self.send(data, attributes, key) for data, attributes, key in messages]
        whole: Future[list[str]] = Future()

        def settle(_: Future[str]) -> None:
            if whole.done() or not all(part.done() for part in parts):
                return
            errors = [part.exception() for part in parts if part.exception() is not None]
            with contextlib.suppress(InvalidStateError):  # two callbacks may finish together
                if errors:
                    whole.set_exception(errors[0])  # type: ignore[arg-type]
                else:
                    whole.set_result([part.result() for part in parts])

        for part in parts:
            part.add_done_callback(settle)
        return whole

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def confirm_all(self) -> None:
        with self.lock:
            for *_, future in self.sent:
                if not future.done():
                    future.set_result("ok")


class FakeHandler:
    """Every image is class 3; a body of b'bad' is not an image."""

    loads = 0

    def load_model(self) -> str:
        FakeHandler.loads += 1
        return "fake"

    def model_id(self, model: str) -> str:
        return "fake@1"

    def to_pixels(self, request: Request) -> Pixels:
        if request.image == b"bad":
            raise InvalidInput(Reason.NOT_AN_IMAGE, "fake: not an image")
        return np.zeros((28, 28), dtype=np.uint8)

    def run_inference(self, batch: Sequence[Pixels], model: str) -> list[Prediction]:
        return [Prediction(3, "Dress", 0.9, (0.0, 0.0, 0.0, 0.9, 0.1, 0, 0, 0, 0, 0)) for _ in batch]


def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def make(messages: list[FakeMessage], **config: Any) -> tuple[ModelService, HeldSender, HeldSender]:
    predictions, dead = HeldSender(), HeldSender()
    settings = ServiceConfig(**{"broker": "mem://", "max_batch_size": 4, "max_wait_ms": 5, **config})
    loads = FakeHandler.loads
    service = ModelService(settings, FakeHandler(), FakeReceiver(messages), predictions, dead)
    assert FakeHandler.loads == loads + 1  # the service loads its model once, at start
    return service, predictions, dead


def requests(n: int, bad: int | None = None) -> list[FakeMessage]:
    out = []
    for i in range(n):
        encoded = contract.encode_request(b"bad" if i == bad else b"png", Flavour.PUBSUB, request_id=f"r{i}")
        out.append(FakeMessage(encoded.data, encoded.attributes, encoded.key))
    return out


def test_inputs_are_acked_only_after_the_broker_confirms_their_answers() -> None:
    messages = requests(10, bad=6)
    service, predictions, dead = make(messages)
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    try:
        assert wait_for(lambda: len(predictions.sent) == 9 and len(dead.sent) == 1)
        time.sleep(0.05)  # the loop keeps turning; nothing is confirmed yet
        assert not any(m.acked or m.nacked for m in messages)
        dead.confirm_all()
        assert wait_for(lambda: messages[6].acked)
        assert not any(m.acked for i, m in enumerate(messages) if i != 6)
        predictions.confirm_all()
        assert wait_for(lambda: all(m.acked for m in messages))
    finally:
        stop.set()
        worker.join(timeout=5)
    assert not any(m.nacked for m in messages)
    assert service.model_id == "fake@1"
    assert [key for _, _, key, _ in predictions.sent] == [f"r{i}" for i in range(10) if i != 6]
    assert all(b'"model":"fake@1"' in data for data, *_ in predictions.sent)
    letter = dead.sent[0]
    assert letter[1]["error"] == "not_an_image" and letter[0] == b"bad" and letter[2] == "r6"
    assert (
        service.stats.acked == 10
        and service.stats.predicted == 9
        and service.stats.dead_lettered == {"not_an_image": 1}
    )


def test_a_failed_publish_nacks_the_input_for_redelivery() -> None:
    messages = requests(3)
    service, predictions, _ = make(messages, max_batch_size=1)  # one input per publish call
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    try:
        assert wait_for(lambda: len(predictions.sent) == 3)
        predictions.sent[1][3].set_exception(RuntimeError("broker said no"))
        predictions.sent[0][3].set_result("ok")
        predictions.sent[2][3].set_result("ok")
        assert wait_for(lambda: messages[1].nacked and messages[0].acked and messages[2].acked)
    finally:
        stop.set()
        worker.join(timeout=5)
    assert not messages[1].acked
    assert service.stats.nacked == 1 and service.stats.acked == 2


def test_a_batch_is_acked_only_when_every_answer_in_it_is_confirmed() -> None:
    """A batch's answers go out in one publish call: one failure nacks the whole batch (redelivered, re-answered)."""
    messages = requests(3)
    service, predictions, _ = make(messages, max_batch_size=3)
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    try:
        assert wait_for(lambda: len(predictions.sent) == 3)
        predictions.sent[0][3].set_result("ok")
        predictions.sent[2][3].set_result("ok")
        time.sleep(0.05)
        assert not any(m.acked or m.nacked for m in messages)  # the batch is not settled yet
        predictions.sent[1][3].set_exception(RuntimeError("broker said no"))
        assert wait_for(lambda: all(m.nacked for m in messages))
    finally:
        stop.set()
        worker.join(timeout=5)
    assert not any(m.acked for m in messages)
    assert service.stats.nacked == 3 and service.stats.acked == 0


def test_stop_with_answers_in_flight_acks_the_confirmed_and_leaves_the_rest_unacked() -> None:
    messages = requests(3)
    predictions, dead = HeldSender(), HeldSender()
    # One input per batch, so each answer is its own publish call and can be confirmed alone.
    config = ServiceConfig(broker="mem://", max_batch_size=1, max_wait_ms=60_000, shutdown_timeout=0.5)
    service = ModelService(config, FakeHandler(), FakeReceiver(messages), predictions, dead)
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    assert wait_for(lambda: service.stats.received == 3)
    assert not any(m.acked for m in messages)  # nothing is confirmed yet

    # Confirm whatever gets published during shutdown, except the last answer.
    def confirm_first_two() -> None:
        if wait_for(lambda: len(predictions.sent) == 3):
            for *_, future in predictions.sent[:2]:
                future.set_result("ok")

    confirmer = threading.Thread(target=confirm_first_two)
    confirmer.start()
    started = time.monotonic()
    stop.set()
    worker.join(timeout=5)
    took = time.monotonic() - started
    confirmer.join()
    assert not worker.is_alive()
    assert [m.acked for m in messages] == [True, True, False]  # the unconfirmed one will be redelivered
    assert took < 3.0  # bounded by shutdown_timeout (0.5 s), with a wide margin for a busy machine


def test_repeated_ids_are_counted_as_duplicates_and_still_answered() -> None:
    messages = requests(3) + requests(2)  # r0 and r1 again, as after a crash
    service, predictions, _ = make(messages)
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    try:
        assert wait_for(lambda: len(predictions.sent) == 5)
        predictions.confirm_all()
        assert wait_for(lambda: all(m.acked for m in messages))
    finally:
        stop.set()
        worker.join(timeout=5)
    assert service.stats.duplicates == 2


class RecordingHandler(FakeHandler):
    """FakeHandler that remembers the size of every batch the model saw."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def run_inference(self, batch: Sequence[Pixels], model: str) -> list[Prediction]:
        self.batches.append(len(batch))
        return super().run_inference(batch, model)


def run_until_answered(receiver: FakeReceiver, handler: RecordingHandler, count: int, **config: Any) -> HeldSender:
    predictions, dead = HeldSender(), HeldSender()
    settings = ServiceConfig(broker="mem://", **config)
    service = ModelService(settings, handler, receiver, predictions, dead)
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    try:
        assert wait_for(lambda: len(predictions.sent) == count)
        predictions.confirm_all()  # so that the stop does not wait for confirmations
    finally:
        stop.set()
        worker.join(timeout=5)
    return predictions


def test_a_lone_request_is_classified_at_once_not_after_the_batch_window() -> None:
    # A one-minute window: waiting for it would fail the test; the idle service must not wait at all.
    handler = RecordingHandler()
    run_until_answered(FakeReceiver(requests(1)), handler, 1, max_batch_size=64, max_wait_ms=60_000)
    assert handler.batches == [1]


def test_batches_grow_with_the_input_that_is_waiting() -> None:
    # 40 requests already waiting: the model sees full batches, not one image at a time.
    handler = RecordingHandler()
    run_until_answered(FakeReceiver(requests(40)), handler, 40, max_batch_size=16, max_wait_ms=60_000)
    assert handler.batches == [16, 16, 8]


class GatedHandler(FakeHandler):
    """FakeHandler whose large batches wait for `release`; it records each call's size and thread."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[tuple[int, str]] = []
        self.lock = threading.Lock()

    def run_inference(self, batch: Sequence[Pixels], model: str) -> list[Prediction]:
        with self.lock:
            self.calls.append((len(batch), threading.current_thread().name))
        if len(batch) >= PARALLEL_BATCH:
            assert self.release.wait(5.0)
        return super().run_inference(batch, model)


def test_large_batches_are_classified_on_model_threads_while_the_loop_goes_on() -> None:
    handler = GatedHandler()
    predictions, dead = HeldSender(), HeldSender()
    settings = ServiceConfig(broker="mem://", max_batch_size=PARALLEL_BATCH, max_wait_ms=5, threads=2)
    messages = requests(3 * PARALLEL_BATCH + 4)
    service = ModelService(settings, handler, FakeReceiver(messages), predictions, dead)
    stop = threading.Event()
    loop = threading.Thread(target=service.run, args=(stop,), name="loop")
    loop.start()
    try:
        # Two batches on the two model threads at once, both held: the loop is not waiting on either.
        assert wait_for(lambda: len(handler.calls) >= 2)
        time.sleep(0.05)
        assert [size for size, _ in handler.calls[:2]] == [PARALLEL_BATCH, PARALLEL_BATCH]
        assert all(name.startswith("model") for _, name in handler.calls[:2])
        assert len(handler.calls) == 2 and not predictions.sent  # a third batch waits for a free model thread
        handler.release.set()
        assert wait_for(lambda: len(predictions.sent) == len(messages))
        predictions.confirm_all()
        assert wait_for(lambda: all(m.acked for m in messages))
    finally:
        stop.set()
        loop.join(timeout=5)
    # The last, small batch ran at once on the loop's own thread.
    assert (4, "loop") in handler.calls
    assert sorted(key for *_, key, _ in predictions.sent) == sorted(m.key for m in messages)


def test_answers_keep_the_order_batches_were_taken_in() -> None:
    """A small batch classified at once waits for a larger one taken before it (model order after a reload)."""
    handler = GatedHandler()
    predictions, dead = HeldSender(), HeldSender()
    settings = ServiceConfig(broker="mem://", max_batch_size=PARALLEL_BATCH, max_wait_ms=5, threads=2)
    messages = requests(PARALLEL_BATCH + 4)
    service = ModelService(settings, handler, FakeReceiver(messages), predictions, dead)
    stop = threading.Event()
    loop = threading.Thread(target=service.run, args=(stop,), name="loop")
    loop.start()
    try:
        assert wait_for(lambda: (4, "loop") in handler.calls)  # the small batch is classified meanwhile...
        time.sleep(0.05)
        assert not predictions.sent  # ...but not answered before the large one
        handler.release.set()
        assert wait_for(lambda: len(predictions.sent) == len(messages))
    finally:
        stop.set()
        predictions.confirm_all()
        loop.join(timeout=5)
    assert [key for *_, key, _ in predictions.sent] == [m.key for m in messages]


def test_a_stop_answers_the_batches_still_on_model_threads() -> None:
    handler = GatedHandler()
    predictions, dead = HeldSender(), HeldSender()
    settings = ServiceConfig(broker="mem://", max_batch_size=PARALLEL_BATCH, max_wait_ms=5, threads=2)
    messages = requests(PARALLEL_BATCH)
    service = ModelService(settings, handler, FakeReceiver(messages), predictions, dead)
    stop = threading.Event()
    loop = threading.Thread(target=service.run, args=(stop,))
    loop.start()
    assert wait_for(lambda: len(handler.calls) == 1)
    stop.set()
    time.sleep(0.1)
    assert loop.is_alive()  # the shutdown waits for the batch on the model thread
    handler.release.set()
    assert wait_for(lambda: len(predictions.sent) == PARALLEL_BATCH)
    predictions.confirm_all()
    loop.join(timeout=5)
    assert not loop.is_alive()
    assert all(m.acked for m in messages)


class TricklingReceiver(FakeReceiver):
    """One message per call, always: input that never stops arriving."""

    def receive_batch(self, max_messages: int, timeout: float) -> list[FakeMessage]:
        return super().receive_batch(1, timeout)


def test_under_a_steady_trickle_the_batch_window_bounds_the_wait() -> None:
    clock = [0.0]

    def tick() -> float:  # every look at the clock is 1 ms later: a 5 ms window closes after 5 requests
        clock[0] += 0.001
        return clock[0]

    handler = RecordingHandler()
    predictions, dead = HeldSender(), HeldSender()
    settings = ServiceConfig(broker="mem://", max_batch_size=64, max_wait_ms=5)
    service = ModelService(settings, handler, TricklingReceiver(requests(30)), predictions, dead, clock=tick)
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    try:
        assert wait_for(lambda: len(predictions.sent) == 30)
        predictions.confirm_all()
    finally:
        stop.set()
        worker.join(timeout=5)
    assert max(handler.batches) < 30 and sum(handler.batches) == 30  # closed by the window, not by size
    assert len(handler.batches) > 2


def test_recent_ids_count_repeats_within_capacity_and_forget_the_oldest() -> None:
    from fashionstream.pipeline.recent_ids import RecentIds

    recent = RecentIds(3)
    assert [recent.seen_before(i) for i in ("a", "b", "a", "c")] == [False, False, True, False]
    assert recent.seen_before("d") is False  # "a" is forgotten now: only the last 3 distinct ids are kept
    assert len(recent) == 3 and recent.seen_before("a") is False and recent.seen_before("d") is True


class RedeliveringReceiver(FakeReceiver):
    """A broker that delivers a nacked message again at once, under the same id, without counting deliveries."""

    def nack(self, messages: Iterable[FakeMessage]) -> None:
        for message in messages:
            message.nack()
            again = FakeMessage(message.data, message.attributes, message.key)
            again.id, again.delivery_attempt = message.id, None
            with self.lock:
                self.queue.append(again)


def test_a_request_whose_answer_keeps_failing_is_dead_lettered_at_the_last_attempt() -> None:
    predictions, dead = HeldSender(), HeldSender()
    settings = ServiceConfig(broker="mem://", max_batch_size=1, max_wait_ms=5, max_delivery_attempts=3)
    service = ModelService(settings, FakeHandler(), RedeliveringReceiver(requests(1)), predictions, dead)
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    try:
        for attempt in range(1, 4):
            assert wait_for(lambda attempt=attempt: len(predictions.sent) == attempt)
            predictions.sent[-1][3].set_exception(RuntimeError(f"refused #{attempt}"))
        assert wait_for(lambda: len(dead.sent) == 1)
        dead.confirm_all()
        assert wait_for(lambda: service.stats.acked == 1)
    finally:
        stop.set()
        worker.join(timeout=5)
    data, attributes, key, _ = dead.sent[0]
    assert (attributes["error"], attributes["delivery_attempts"], key) == ("too_many_attempts", "3", "r0")
    assert "refused #3" in attributes["error_detail"]
    assert len(predictions.sent) == 3  # not tried a fourth time
    stats = service.stats
    assert (stats.received, stats.nacked, stats.redelivered, stats.acked) == (3, 2, 2, 1)
    assert stats.dead_lettered == {"too_many_attempts": 1}


def test_a_request_the_broker_delivered_after_max_attempts_failed_is_dead_lettered_unanswered() -> None:
    """Pub/Sub counts deliveries that ended without an ack (a crash, an ack deadline): the service believes it."""
    (message,) = requests(1)
    message.delivery_attempt = 6  # five deliveries before this one were never acked
    service, predictions, dead = make([message], max_delivery_attempts=5)
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    try:
        assert wait_for(lambda: len(dead.sent) == 1)
        dead.confirm_all()
        assert wait_for(lambda: message.acked)
    finally:
        stop.set()
        worker.join(timeout=5)
    assert predictions.sent == []  # not given to the model again
    assert dead.sent[0][1]["error"] == "too_many_attempts" and dead.sent[0][1]["delivery_attempts"] == "5"
    assert service.stats.redelivered == 1


class CountingRedeliveringReceiver(FakeReceiver):
    """Like Pub/Sub with a dead-letter policy: a nacked message comes back with `delivery_attempt` one higher."""

    def nack(self, messages: Iterable[FakeMessage]) -> None:
        for message in messages:
            message.nack()
            again = FakeMessage(message.data, message.attributes, message.key)
            again.id, again.delivery_attempt = message.id, (message.delivery_attempt or 1) + 1
            with self.lock:
                self.queue.append(again)


def test_infrastructure_failures_do_not_count_as_attempts_even_where_the_broker_counts_them() -> None:
    """A topic missing or a broker unreachable for many rounds: the request is answered once it works again."""
    predictions, dead = HeldSender(), HeldSender()
    settings = ServiceConfig(broker="mem://", max_batch_size=1, max_wait_ms=5, max_delivery_attempts=2)
    service = ModelService(settings, FakeHandler(), CountingRedeliveringReceiver(requests(1)), predictions, dead)
    outage = [errors.NotFound("topic gone"), errors.Unavailable("down"), errors.Timeout("slow"), TimeoutError()]
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    try:
        for attempt in range(1, 7):  # three times the budget, every kind of infrastructure failure
            assert wait_for(lambda attempt=attempt: len(predictions.sent) == attempt, timeout=10)
            predictions.sent[-1][3].set_exception(outage[attempt % len(outage)])
        assert wait_for(lambda: len(predictions.sent) == 7, timeout=10)
        predictions.confirm_all()
        assert wait_for(lambda: service.stats.acked == 1)
    finally:
        stop.set()
        worker.join(timeout=5)
    assert dead.sent == []
    stats = service.stats
    assert (stats.received, stats.nacked, stats.redelivered, stats.predicted) == (7, 6, 6, 1)


def test_a_refused_answer_still_counts_between_infrastructure_failures() -> None:
    """InvalidArgument is the message's own fault: two of them exhaust a budget of 2 despite outages around them."""
    predictions, dead = HeldSender(), HeldSender()
    settings = ServiceConfig(broker="mem://", max_batch_size=1, max_wait_ms=5, max_delivery_attempts=2)
    service = ModelService(settings, FakeHandler(), CountingRedeliveringReceiver(requests(1)), predictions, dead)
    failures = [errors.Unavailable("down"), errors.InvalidArgument("too large"), errors.NotFound("gone")]
    failures.append(errors.InvalidArgument("too large again"))
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,))
    worker.start()
    try:
        for attempt, failure in enumerate(failures, start=1):
            assert wait_for(lambda attempt=attempt: len(predictions.sent) == attempt, timeout=10)
            predictions.sent[-1][3].set_exception(failure)
        assert wait_for(lambda: len(dead.sent) == 1, timeout=10)
        dead.confirm_all()
        assert wait_for(lambda: service.stats.acked == 1)
    finally:
        stop.set()
        worker.join(timeout=5)
    attributes = dead.sent[0][1]
    assert (attributes["error"], attributes["delivery_attempts"]) == ("too_many_attempts", "2")
    assert "too large again" in attributes["error_detail"]
    assert len(predictions.sent) == 4
