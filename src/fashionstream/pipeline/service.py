"""The model service: `images` -> micro-batched inference -> `predictions` (or `images.dlq`).

One thread runs the loop: receive what fits in the open batch, wait at most
until that batch is due, classify (a large batch on a model thread, see below),
publish. Delivery is at-least-once by
construction: an input is acked only after the broker has confirmed its
prediction or dead letter (the publish future resolved). If publishing fails the
input is nacked and comes back; if the process dies, unacked inputs come back to
another instance. A restarted service may therefore answer a request twice; the
duplicate carries the same id and CloudEvents id, so consumers can drop it.

Hostile inputs never stop the loop: anything that cannot be decoded goes to the
dead-letter topic with a reason, and a batch that fails in the model is bisected
until the failing input is alone (`run_isolating_failures`).

Nor does an input that cannot be answered for another reason (a poison message): after
`max_delivery_attempts` failed attempts it is dead-lettered as `too_many_attempts`, with the
count and the last error, instead of coming back for ever. Only failures that can be the
input's fault count: the broker refusing its answer (`InvalidArgument`, say too large), an
unforeseen publish error, or the input coming back unacked (a crash, an ack deadline passed).
The broker's `delivery_attempt` says how often it was delivered before where the broker counts
(Pub/Sub with a dead-letter policy; the Kafka driver, for this process); the service counts
its own nacks besides, by message id.

Infrastructure failures say nothing about the input (`INFRASTRUCTURE_ERRORS`: the broker
unreachable or timing out, the topic missing, the client closed, permission denied): the input
is nacked without counting, and the service waits a little longer before each next receive
while they last (`MAX_OUTAGE_BACKOFF_S`), so that an outage does not turn good requests into
dead letters. The broker counts those nacks as deliveries too, so they are remembered per
message id and subtracted from its `delivery_attempt`. That memory lives in this process: a
replica restarted during a long outage sees the broker's whole count, and a request may then be
dead-lettered as `too_many_attempts` (with the count and the last error, so it can be sent
again; never lost); on Pub/Sub an outage long enough to reach the subscription's own
dead-letter policy (`topology.BROKER_MAX_DELIVERY_ATTEMPTS`) ends the same way, moved there by
Pub/Sub itself.

The model is reached through one `ModelHandler` (load, decode an image, run a batch);
everything around it (batching, bisection, metrics, dead letters) is the service's. A batch of
`PARALLEL_BATCH` images or more is classified on one of `threads` model threads while the loop
reads and decodes the next (up to `threads` batches at once). Giving one batch at a time both
cores left one idle while the loop's Python (receiving, decoding, answering) ran; on 2 cores with
Kafka this way drains a backlog 10-20 % faster and runs the whole pipeline flat out 20-30 % faster
(docs/benchmarks.md). Smaller batches, which mean the model keeps up, are classified on the loop's
own thread at once. Answers go out in the order batches were taken.
It can be replaced while serving (`reload`): checked on another thread, swapped between two
batches, so a reload drops no input and answers none twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from fashionstream.classifier.predictor import Prediction
from fashionstream.pipeline import contract
from fashionstream.pipeline.batcher import Failed, MicroBatcher, run_isolating_failures
from fashionstream.pipeline.cloudevents import parse_time
from fashionstream.pipeline.config import PARALLEL_BATCH, ServiceConfig
from fashionstream.pipeline.contract import Request
from fashionstream.pipeline.handler import ModelHandler, Pixels
from fashionstream.pipeline.metrics import Health, ServiceMetrics, ServiceStats
from fashionstream.pipeline.outage import Outage
from fashionstream.pipeline.recent_ids import RecentIds
from fashionstream.pipeline.reload import ModelReloader, describe
from fashionstream.pubsub import errors
from fashionstream.reasons import InvalidInput, Reason

#: Request ids the service remembers to count duplicates: redeliveries after a crash or a rebalance come
#: within seconds to minutes, and 200,000 ids cover over a minute at the service's top speed. Bounded, so
#: their memory stops growing once this many have been seen (about 17 MB, see `RecentIds`).
REMEMBERED_IDS = 200_000

log = logging.getLogger("fashionstream.serve")

#: Publish failures that say nothing about the messages published: they are nacked without counting
#: an attempt (module docstring). InvalidArgument (the broker refused the message) and anything
#: unforeseen do count. TimeoutError: a wait for confirmation ran out without a broker's answer.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    errors.Unavailable,
    errors.Timeout,
    errors.NotFound,
    errors.Closed,
    errors.PermissionDenied,
    TimeoutError,
)
#: Longest wait before the next receive while publishing fails for infrastructure reasons: each
#: wait doubles from 0.1 s, so an outage costs about a dozen nacks a request per minute, not several
#: a second, and Pub/Sub's own dead-letter policy (100 deliveries, `topology`) takes over 8 minutes
#: to reach; answers flow again at most this long after the outage ends.
MAX_OUTAGE_BACKOFF_S = 5.0


class InboundMessage(Protocol):
    """The part of `fashionstream.pubsub.Message` the service uses."""

    @property
    def data(self) -> bytes: ...
    @property
    def attributes(self) -> dict[str, str]: ...
    @property
    def key(self) -> str | None: ...
    @property
    def id(self) -> str: ...
    @property
    def delivery_attempt(self) -> int | None: ...
    def ack(self) -> None: ...
    def nack(self) -> None: ...


class Sender(Protocol):
    """The part of `fashionstream.pubsub.Publisher` the service uses."""

    def send(self, data: bytes, attributes: dict[str, str] | None = None, key: str | None = None) -> Future[str]: ...
    def send_batch(self, messages: Iterable[tuple[bytes, dict[str, str], str | None]]) -> Future[list[str]]: ...
    def flush(self, timeout: float | None = None) -> Any: ...
    def close(self) -> None: ...


class Receiver(Protocol):
    """The part of `fashionstream.pubsub.Subscriber` the service uses."""

    def receive_batch(self, max_messages: int, timeout: float) -> list[Any]: ...
    def ack(self, messages: Iterable[Any]) -> None: ...
    def nack(self, messages: Iterable[Any]) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Pending:
    """Inputs whose answers went out in one publish call; acked (or nacked) together once `future` resolves.

    A classified batch is one `send_batch` and one ack call: per-message futures and acks cost as much
    CPU as the rest of the service's work around an image.
    """

    messages: list[InboundMessage]
    future: Future[Any]
    reason: Reason | None  # None for predictions, else why they were dead-lettered
    request_times: list[datetime | None]


@dataclass
class _Item:
    message: InboundMessage
    request: Request
    pixels: Pixels


Outcomes = list[Prediction | Failed]


@dataclass
class _Classifying:
    """A batch on a model thread: its outcomes and inference time come with `future`."""

    batch: list[_Item]
    model_id: str  # the model it was given to; a reload meanwhile does not change its answers' id
    future: Future[tuple[Outcomes, float]]


class ModelService:
    """Runs the pipeline loop over already-open clients (the CLI and the demo open them)."""

    def __init__(
        self,
        config: ServiceConfig,
        handler: ModelHandler[Any],
        subscriber: Receiver,
        predictions: Sender,
        dead_letters: Sender,
        *,
        metrics: ServiceMetrics | None = None,
        health: Health | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.handler = handler
        # Created before the model loads, so that a change of its files meanwhile still causes a reload.
        self.reloader = ModelReloader(handler, poll_interval=config.model_poll_interval, on_result=self._count_reload)
        self.model = handler.load_model()
        self.model_id = handler.model_id(self.model)
        self.subscriber = subscriber
        self.predictions = predictions
        self.dead_letters = dead_letters
        self.metrics = metrics or ServiceMetrics()
        self.health = health or Health()
        self._receiving = Outage("receive", f"receiving from {config.images_topic!r}", log, self.health)
        self._publishing = Outage("publish", "publishing answers", log, self.health)
        self.health.detail = {"model": self.model_id}
        self.metrics.set_model(self.model_id, describe(handler, self.model).info)
        self.reloader.current_id = self.model_id
        self.flavour = config.topology().flavour
        self._batcher: MicroBatcher[_Item] = MicroBatcher(config.max_batch_size, config.max_wait_ms, clock)
        self._pending: deque[_Pending] = deque()
        self._model_threads = config.model_threads()
        # Large batches are classified here while the loop reads the next (module docstring).
        self._model_pool = (
            ThreadPoolExecutor(self._model_threads, thread_name_prefix="model") if self._model_threads > 1 else None
        )
        self._classifying: deque[_Classifying] = deque()
        self._pending_messages = 0  # inputs in self._pending, for back-pressure (max_in_flight)
        # Ids answered recently, to count (not suppress) duplicates: at-least-once means re-answering is correct.
        self._seen = RecentIds(REMEMBERED_IDS)
        # Broker message id -> (failed attempts, last error), for inputs nacked by this process.
        self._failures: OrderedDict[str, tuple[int, str]] = OrderedDict()
        # Broker message id -> nacks of it by this process for infrastructure failures, which the
        # broker's delivery_attempt counts but which were not the message's fault.
        self._outage_nacks: OrderedDict[str, int] = OrderedDict()

    @property
    def stats(self) -> ServiceStats:
        return self.metrics.stats()

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> ServiceStats:
        """Serve until `stop` is set, then finish the in-flight batch, ack what was confirmed, return."""
        self.health.started = True
        log.info(
            "serving",
            extra={
                "model": self.model_id,
                "broker": self.config.broker,
                "batch": self.config.max_batch_size,
                "wait_ms": self.config.max_wait_ms,
            },
        )
        backoff = 0.0
        outage_backoff = 0.0  # while publishing fails for infrastructure reasons (module docstring)
        self.reloader.start()
        while not stop.is_set():
            self.health.beat()
            self._swap_model()
            # An open batch never waits for input: if nothing more is ready it is classified now. While
            # answers await confirmation the wait is short, so their inputs are acked soon after: until
            # then they count against the subscriber's caps (--max-outstanding-bytes), which a flood of
            # large requests reaches after a few.
            if len(self._batcher) or self._classifying:
                timeout = 0.0  # a batch on a model thread is waited for below, so that its answers go out at once
            elif self._pending:
                timeout = min(self.config.poll_timeout, self.config.confirm_poll_timeout)
            else:
                timeout = self.config.poll_timeout
            try:
                messages = self.subscriber.receive_batch(max_messages=self._batcher.room, timeout=timeout)
                backoff = 0.0
                self._receiving.succeeded()
            except Exception as error:  # noqa: BLE001 - a broker hiccup must not kill the service
                backoff = min(max(backoff * 2, 0.1), 2.0)
                self._receiving.failed(error)  # logged when the outage starts and when it ends
                stop.wait(backoff)
                continue
            # One timestamp per receive (not per message): how long what arrives had waited in the broker.
            self.metrics.backlog_age.received(messages, timeout > 0)
            if not messages and len(self._batcher) == 0 and self._pending_messages == 0:
                self.health.idle()  # nothing waits: an idle, healthy service is making progress
            if messages:  # counted once per receive: each counter update takes a lock
                self.metrics.messages_in.inc(len(messages))
                self.metrics.in_flight.inc(len(messages))
            for message in messages:
                full = self._accept(message)
                if full:
                    self._process(full)
            # Continuous batching: the open batch goes to the model as soon as no more input is ready
            # (an idle service answers at once), or when its oldest image has waited max_wait_ms while
            # input kept trickling in. Under load, input piles up while the model runs, so the next
            # batches are fuller by themselves, up to max_batch_size.
            ready = self._batcher.take_due() or (self._batcher.flush() if not messages else None)
            if ready:
                self._process(ready)
            if self._classifying:
                self._finish_classified(wait=0.0 if messages else self.config.confirm_poll_timeout)
            if self._reap(block=self._pending_messages > self.config.max_in_flight):
                outage_backoff = min(max(outage_backoff * 2, 0.1), MAX_OUTAGE_BACKOFF_S)
                stop.wait(outage_backoff)
            elif not self._publishing.ongoing:
                outage_backoff = 0.0
        self.reloader.close()
        self._shutdown()
        if self._model_pool is not None:
            self._model_pool.shutdown()
        return self.stats

    def _swap_model(self) -> None:
        """Serve the model the reloader has checked, if any; called between batches, so each batch has one model."""
        loaded = self.reloader.take()
        if loaded is None:
            return
        previous = self.model_id
        self.model, self.model_id = loaded.model, loaded.model_id
        self.health.detail = {**self.health.detail, "model": self.model_id}
        self.metrics.set_model(self.model_id, loaded.info)
        self._count_reload("swapped")
        log.info("model swapped", extra={"model": self.model_id, "previous": previous})
        loaded.serving()

    def _count_reload(self, result: str) -> None:
        self.metrics.model_reloads.labels(result=result).inc()

    def _shutdown(self) -> None:
        """Stop pulling (the caller did), finish and publish the open batch, ack what the broker confirms."""
        self.health.stopping = True
        deadline = time.monotonic() + self.config.shutdown_timeout
        last = self._batcher.flush()
        if last:
            self._process(last)
        while self._classifying:
            self._answer(self._classifying.popleft())
        for sender in (self.predictions, self.dead_letters):
            try:
                sender.flush(max(0.1, deadline - time.monotonic()))
            except Exception as error:  # noqa: BLE001 - unconfirmed inputs are simply not acked
                log.warning("flush failed during shutdown: %s", error)
        while self._pending and time.monotonic() < deadline:
            self._reap(block=True, timeout=max(0.01, deadline - time.monotonic()))
        if self._pending:
            # Not acked -> the broker redelivers them to the next instance: late, never lost.
            log.warning("%d answers unconfirmed at shutdown; their requests will be redelivered", len(self._pending))
        stats = self.stats
        log.info("stopped", extra={"received": stats.received, "acked": stats.acked})

    # ------------------------------------------------------------------ steps

    def _accept(self, message: InboundMessage) -> list[_Item] | None:
        if self._redelivered(message):
            self.metrics.redelivered.inc()
            failed = self._failed_attempts(message)
            if failed >= self.config.max_delivery_attempts:
                self._give_up(message, failed)
                return None
        try:
            request = contract.decode_request(
                message.data, message.attributes, max_message_bytes=self.config.max_message_bytes
            )
            pixels = self.handler.to_pixels(request)
        except InvalidInput as error:
            self._dead_letter(message, error.reason, error.detail)
            return None
        except Exception as error:  # noqa: BLE001 - an unforeseen decoder failure is still a bad input
            self._dead_letter(message, Reason.NOT_AN_IMAGE, f"{type(error).__name__}: {error}")
            return None
        self._note_id(request.id)
        return self._batcher.add(_Item(message, request, pixels))

    def _redelivered(self, message: InboundMessage) -> bool:
        """Whether `message` was delivered before, for any reason, as far as the broker or this process knows."""
        if (message.delivery_attempt or 1) > 1:
            return True
        return message.id in self._failures or message.id in self._outage_nacks

    def _failed_attempts(self, message: InboundMessage) -> int:
        """How often answering `message` failed before: the broker's count or this process's, whichever is more.

        The broker's count is its earlier deliveries less those this process nacked for
        infrastructure failures (module docstring).
        """
        broker = (message.delivery_attempt or 1) - 1
        if self._outage_nacks:
            broker -= self._outage_nacks.get(message.id, 0)
        if not self._failures:
            return max(broker, 0)
        ours = self._failures.get(message.id)
        return max(broker, ours[0] if ours else 0, 0)

    def _give_up(self, message: InboundMessage, failed: int, last_error: str | None = None) -> None:
        """Dead-letter a poison message: it failed `failed` times, as many as allowed."""
        if last_error is None:
            known = self._failures.get(message.id)
            last_error = known[1] if known else "delivered again each time without being acked (crash or timeout)"
        log.warning("giving up on message %s after %d failed attempts: %s", message.id, failed, last_error)
        self._dead_letter(message, Reason.TOO_MANY_ATTEMPTS, f"{failed} failed attempts; last: {last_error}", failed)

    def _note_failure(self, message: InboundMessage, error: str) -> int:
        """Count one more failed attempt at `message`; return how many it has now."""
        failed = self._failed_attempts(message) + 1
        self._failures[message.id] = (failed, error)
        self._failures.move_to_end(message.id)
        if len(self._failures) > REMEMBERED_IDS:
            self._failures.popitem(last=False)
        return failed

    def _note_outage_nack(self, message: InboundMessage) -> None:
        """Remember one more nack of `message` that was not its fault (an infrastructure failure)."""
        self._outage_nacks[message.id] = self._outage_nacks.get(message.id, 0) + 1
        self._outage_nacks.move_to_end(message.id)
        if len(self._outage_nacks) > REMEMBERED_IDS:
            self._outage_nacks.popitem(last=False)

    def _forget(self, messages: list[InboundMessage]) -> None:
        """Drop what is remembered about messages that are settled for good (acked)."""
        for memory in (self._failures, self._outage_nacks):
            if memory:
                for message in messages:
                    memory.pop(message.id, None)

    def _note_id(self, request_id: str) -> None:
        if self._seen.seen_before(request_id):
            self.metrics.duplicates.inc()

    def _process(self, batch: list[_Item]) -> None:
        """Classify `batch`: a small one now on this thread, a large one on a model thread (answered later).

        Answers go out in the order batches were taken, so that after a reload no answer of the old
        model follows one of the new: a small batch classified while larger ones are still on model
        threads waits for theirs.
        """
        if self._model_pool is None or len(batch) < PARALLEL_BATCH:
            classified = self._classify(batch, self.model)
            if not self._classifying:
                self._publish_answers(batch, *classified, self.model_id)
                return
            done: Future[tuple[Outcomes, float]] = Future()
            done.set_result(classified)
            self._classifying.append(_Classifying(batch, self.model_id, done))
            return
        # Every model thread busy: answer the oldest batches (in order) until one is free. Batches
        # classified already (small ones waiting for their turn) do not hold a model thread.
        while sum(not classifying.future.done() for classifying in self._classifying) >= self._model_threads:
            self._answer(self._classifying.popleft())
        future = self._model_pool.submit(self._classify, batch, self.model)
        self._classifying.append(_Classifying(batch, self.model_id, future))

    def _classify(self, batch: list[_Item], model: Any) -> tuple[Outcomes, float]:
        """The model's outcome for each input (bisecting a failing batch) and the seconds it took."""
        started = time.perf_counter()
        outcomes = run_isolating_failures(
            lambda pixels: self.handler.run_inference(pixels, model), [item.pixels for item in batch]
        )
        return outcomes, time.perf_counter() - started

    def _finish_classified(self, wait: float) -> None:
        """Answer the batches the model threads have finished, in order, waiting up to `wait` s for the oldest."""
        if wait > 0:
            wait_for_futures([self._classifying[0].future], timeout=wait)
        while self._classifying and self._classifying[0].future.done():
            self._answer(self._classifying.popleft())

    def _answer(self, classifying: _Classifying) -> None:
        outcomes, seconds = classifying.future.result()
        self._publish_answers(classifying.batch, outcomes, seconds, classifying.model_id)

    def _publish_answers(self, batch: list[_Item], outcomes: Outcomes, seconds: float, model_id: str) -> None:
        """Send the answers of a classified batch as one publish, and dead-letter what the model failed on."""
        self.metrics.inference_seconds.observe(seconds)
        self.metrics.batch_size.observe(len(batch))
        answered: list[InboundMessage] = []
        answers: list[tuple[Request, Prediction]] = []
        request_times: list[datetime | None] = []
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Failed):
                log.warning("model failed on request %s alone: %s", item.request.id, outcome.detail)
                self._dead_letter(item.message, Reason.MODEL_ERROR, outcome.detail)
                continue
            answered.append(item.message)
            answers.append((item.request, outcome))
            request_times.append(parse_time(item.request.time))
        if answered:
            outgoing = contract.encode_predictions(answers, model_id, self.flavour)
            future = self._publish(lambda: self.predictions.send_batch(outgoing))
            self._track(_Pending(answered, future, None, request_times))

    def _dead_letter(self, message: InboundMessage, reason: Reason, detail: str, attempts: int | None = None) -> None:
        log.info("dead letter", extra={"reason": str(reason), "detail": detail[:200], "message_id": message.id})
        encoded = contract.encode_dead_letter(
            message.data,
            message.attributes,
            message.key,
            reason,
            detail,
            flavour=self.flavour,
            message_id=message.id,
            max_body_bytes=self.config.max_message_bytes,
            attempts=attempts,
        )
        future = self._publish(lambda: self.dead_letters.send(encoded.data, encoded.attributes, key=encoded.key))
        self._track(_Pending([message], future, reason, [None]))

    @staticmethod
    def _publish(send: Callable[[], Future[Any]]) -> Future[Any]:
        try:
            return send()
        except Exception as error:  # noqa: BLE001 - turn a synchronous send failure into a failed future
            failed: Future[Any] = Future()
            failed.set_exception(error)
            return failed

    def _track(self, pending: _Pending) -> None:
        self._pending.append(pending)
        self._pending_messages += len(pending.messages)
        pending.future.add_done_callback(self._publish_done)

    def _publish_done(self, future: Future[Any]) -> None:
        """Health and outage logging from a publish result (on the publisher's thread; acks stay in `_reap`)."""
        error = future.exception()
        if error is None:
            self._publishing.succeeded()
            self.health.progress()
        else:
            self._publishing.failed(error)

    def _reap(self, *, block: bool, timeout: float | None = None) -> int:
        """Ack inputs whose answers are confirmed; nack those whose publish failed.

        Runs on the loop's thread so acks never race the subscriber. With `block`,
        first waits for the oldest pending answer (backpressure / shutdown). Returns how
        many publish calls failed for infrastructure reasons (`INFRASTRUCTURE_ERRORS`).
        """
        if block and self._pending:
            with contextlib.suppress(FutureTimeout):
                self._pending[0].future.exception(timeout=timeout or self.config.publish_timeout)
        still: deque[_Pending] = deque()
        failures: list[BaseException] = []
        outages = 0
        exhausted: list[tuple[InboundMessage, int, str]] = []
        now = datetime.now(UTC)
        for pending in self._pending:
            if not pending.future.done():
                still.append(pending)
                continue
            count = len(pending.messages)
            self._pending_messages -= count
            self.metrics.in_flight.dec(count)
            error = pending.future.exception()
            if error is not None:
                failures.append(error)
                if isinstance(error, INFRASTRUCTURE_ERRORS):
                    outages += 1
                    retry = pending.messages
                    for message in retry:
                        self._note_outage_nack(message)
                else:
                    retry = self._count_failures(pending, f"{type(error).__name__}: {error}", exhausted)
                self._settle(self.subscriber.nack, retry)
                self.metrics.nacked.inc(len(retry))
                continue
            self._forget(pending.messages)
            self._settle(self.subscriber.ack, pending.messages)
            self.metrics.acked.inc(count)
            if pending.reason is None:
                self.metrics.messages_out.inc(count)
                for request_time in pending.request_times:
                    if request_time is not None:
                        self.metrics.latency_seconds.observe(max(0.0, (now - request_time).total_seconds()))
            else:
                self.metrics.dead_lettered.labels(reason=str(pending.reason)).inc(count)
        self._pending = still
        for message, failed, detail in exhausted:
            self.metrics.in_flight.inc()  # in flight again, until its dead letter is confirmed
            self._give_up(message, failed, detail)
        if failures:
            # One line per turn, not per message: a broker outage would otherwise flood the log.
            log.warning(
                "%d publish calls failed; their requests will be redelivered: %s",
                len(failures),
                failures[0],
            )
        return outages

    def _count_failures(
        self, pending: _Pending, error: str, exhausted: list[tuple[InboundMessage, int, str]]
    ) -> list[InboundMessage]:
        """Count a failed attempt at each input of `pending`: return those to nack, put the rest in `exhausted`.

        An input whose dead letter could not be published is nacked whatever its count: the
        dead-letter topic is failing, so dead-lettering it again now would fail too.
        """
        retry: list[InboundMessage] = []
        for message in pending.messages:
            failed = self._note_failure(message, error)
            if pending.reason is None and failed >= self.config.max_delivery_attempts:
                exhausted.append((message, failed, error))
            else:
                retry.append(message)
        return retry

    @staticmethod
    def _settle(action: Callable[[list[InboundMessage]], None], messages: list[InboundMessage]) -> None:
        try:
            action(messages)
        except Exception as error:  # noqa: BLE001 - a failed ack means a redelivery, never a crash
            log.warning("ack/nack failed; the broker will redeliver: %s", error)
