"""Replacing the served model while the service runs: load and check the new one beside the old, swap between batches.

Three triggers ask for a reload of the configured model file: SIGHUP, a change of the model's
files on disk (polled every `model_poll_interval` seconds), and `POST /admin/reload-model` on the
metrics server. A trigger only asks. One background thread loads the candidate and checks it while
the old model keeps serving; the service's loop takes a checked model between two batches
(`ModelReloader.take`), so each batch is answered by exactly one model, and the swap itself drops
no message and answers none twice: it touches no message at all.

A candidate is refused, with a log line, and the old model keeps serving when it fails to load
(missing or corrupt file, a card that does not match), when the handler's `check_model` finds
it does not fit (input shape, classes), or when the smoke batch fails: a few images of the shipped
sample must give one finite probability distribution each.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashionstream.pipeline.handler import ModelHandler, Pixels, ReloadableModelHandler

log = logging.getLogger("fashionstream.serve.reload")

RELOAD_PATH = "/admin/reload-model"  # the metrics server's POST route that asks for a reload
# How long that POST waits for the answer: loading and checking take well under a second for the
# shipped model; the margin is for a large model on a busy machine.
RELOAD_WAIT_S = 120.0
SMOKE_IMAGES = 8  # images of the shipped sample each candidate must classify before it may serve
_TICK_S = 0.2  # how often the reload thread looks for a request; bounds how late SIGHUP is noticed

# What a reload came to: "swapped" (the new model serves now), "unchanged" (the files hold the model
# already serving) or "refused" (the old model keeps serving); with the model id and, if refused, why.
ReloadResult = dict[str, str]
Fingerprint = tuple[tuple[str, int, int], ...]  # (path, mtime_ns, size) of each model file; -1s if missing


class ModelRefused(ValueError):
    """A candidate model that may not serve; the message says why."""


@dataclass
class LoadedModel:
    """A model that passed its checks, with what the service shows about it."""

    model: Any
    model_id: str
    info: dict[str, str]
    waiting: list[Future[ReloadResult]] = field(default_factory=list)  # requests answered when it serves

    def serving(self) -> None:
        """Called by the service once this model answers: resolves the requests that asked for it."""
        for future in self.waiting:
            if not future.done():
                future.set_result({"result": "swapped", "model": self.model_id})


def smoke_pixels() -> list[Pixels]:
    """The first `SMOKE_IMAGES` images of the sample shipped with the package, each (28, 28) uint8."""
    from fashionstream.classifier.sample import load_sample

    images, _ = load_sample()
    return [image.copy() for image in images[:SMOKE_IMAGES]]


def describe(handler: ModelHandler[Any], model: Any) -> LoadedModel:
    """`model` with its id and card facts (none for a handler that cannot replace its model)."""
    info = handler.model_info(model) if isinstance(handler, ReloadableModelHandler) else {}
    return LoadedModel(model, handler.model_id(model), info)


def check(handler: ModelHandler[Any], model: Any, smoke: Sequence[Pixels]) -> None:
    """Raise `ModelRefused` unless `model` fits the handler's checks and classifies the smoke batch."""
    if isinstance(handler, ReloadableModelHandler):
        try:
            handler.check_model(model)
        except ValueError as error:
            raise ModelRefused(str(error)) from error
    try:
        predictions = list(handler.run_inference(smoke, model))
    except Exception as error:  # noqa: BLE001 - whatever the runtime raises, the model cannot serve
        raise ModelRefused(f"smoke batch of {len(smoke)} images failed: {type(error).__name__}: {error}") from error
    if len(predictions) != len(smoke):
        raise ModelRefused(f"smoke batch of {len(smoke)} images gave {len(predictions)} predictions")
    for prediction in predictions:
        probabilities = prediction.probabilities
        if not all(math.isfinite(p) and p >= 0 for p in probabilities) or abs(sum(probabilities) - 1) > 1e-3:
            raise ModelRefused(f"smoke batch: {probabilities} is not a probability distribution")
        if not 0 <= prediction.label < len(probabilities):
            raise ModelRefused(f"smoke batch: label {prediction.label} outside the {len(probabilities)} classes")


def fingerprint(files: Sequence[Path]) -> Fingerprint:
    """What changes when any model file is replaced, rewritten or removed (no file is read)."""
    marks = []
    for path in files:
        try:
            stat = path.stat()
            marks.append((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            marks.append((str(path), -1, -1))
    return tuple(marks)


class ModelReloader:
    """Loads and checks replacement models on its own thread; the service takes them between batches.

    `request()` is for the admin endpoint (a future of the result), `signal()` for SIGHUP (only
    sets a flag, so it is safe in a signal handler), and with `poll_interval` > 0 the thread also
    reloads when the model files change and then stay unchanged for one more interval (so a file
    still being copied is not loaded half-written).
    """

    def __init__(
        self,
        handler: ModelHandler[Any],
        *,
        poll_interval: float = 0.0,
        smoke: Callable[[], Sequence[Pixels]] = smoke_pixels,
        on_result: Callable[[str], None] = lambda result: None,
    ) -> None:
        """Create it before the first model loads, so that a change of the files meanwhile counts as one."""
        self.handler = handler
        self.current_id = ""  # the model serving now; the service sets it once the first model has loaded
        self._poll_interval = poll_interval
        self._smoke = smoke
        self._on_result = on_result  # told "unchanged" or "refused"; the service counts "swapped" itself
        self._files: Callable[[], list[Path]] = (
            handler.model_files if isinstance(handler, ReloadableModelHandler) else list
        )
        self._seen = self._fingerprint()  # the files as last loaded (or refused)
        self._lock = threading.Lock()
        self._requests: list[Future[ReloadResult]] = []
        self._signalled = False
        self._ready: LoadedModel | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, name="model-reload", daemon=True)

    def start(self) -> ModelReloader:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    # -- triggers

    def signal(self) -> None:
        """Ask for a reload from a signal handler: no lock, no allocation, just a flag."""
        self._signalled = True

    def request(self) -> Future[ReloadResult]:
        """Ask for a reload; the future gives the result once the model serves or is refused."""
        future: Future[ReloadResult] = Future()
        with self._lock:
            self._requests.append(future)
        return future

    # -- the service's side

    def take(self) -> LoadedModel | None:
        """A checked model to serve from the next batch on, if one is waiting; call between batches."""
        if self._ready is None:  # the common case, read without the lock: the loop asks every turn
            return None
        with self._lock:
            ready, self._ready = self._ready, None
            if ready is not None:
                self.current_id = ready.model_id
            return ready

    # -- the reload thread

    def _fingerprint(self) -> Fingerprint:
        try:
            return fingerprint(self._files())
        except Exception:  # noqa: BLE001 - e.g. a card unreadable mid-copy: compare as "changed"
            return ()

    def _work(self) -> None:
        last_poll = time.monotonic()
        previous = self._seen
        while not self._closed.wait(_TICK_S):
            trigger = None
            if self._signalled:
                self._signalled = False
                trigger = "SIGHUP"
            with self._lock:
                waiting, self._requests = self._requests, []
            if waiting:
                trigger = trigger or "POST /admin/reload-model"
            now = time.monotonic()
            if self._poll_interval > 0 and now - last_poll >= self._poll_interval:
                last_poll = now
                current = self._fingerprint()
                # Changed since the last load, and the same as one interval ago: the copy has finished.
                if current != self._seen and current == previous:
                    trigger = trigger or "model file changed"
                previous = current
            if trigger is not None:
                self._reload(trigger, waiting)

    def _reload(self, trigger: str, waiting: list[Future[ReloadResult]]) -> None:
        seen = self._fingerprint()
        started = time.perf_counter()
        try:
            model = self.handler.load_model()
            candidate = describe(self.handler, model)
            with self._lock:
                serving = self._ready.model_id if self._ready is not None else self.current_id
            if candidate.model_id == serving:
                self._seen = seen
                log.info("model reload: unchanged", extra={"trigger": trigger, "model": serving})
                self._on_result("unchanged")
                _answer(waiting, {"result": "unchanged", "model": serving})
                return
            check(self.handler, model, self._smoke())
        except Exception as error:  # noqa: BLE001 - any failure refuses the candidate, never the service
            self._seen = seen  # not retried until the files change again
            detail = f"{type(error).__name__}: {error}" if not isinstance(error, ModelRefused) else str(error)
            log.error(
                "model reload refused; the current model keeps serving",
                extra={"trigger": trigger, "model": self.current_id, "error": detail[:500]},
            )
            self._on_result("refused")
            _answer(waiting, {"result": "refused", "model": self.current_id, "error": detail})
            return
        self._seen = seen
        log.info(
            "model reload: checked, swapping between batches",
            extra={"trigger": trigger, "model": candidate.model_id, "seconds": round(time.perf_counter() - started, 3)},
        )
        with self._lock:
            if self._ready is not None:  # a newer model replaces one not yet taken: its requests follow
                candidate.waiting.extend(self._ready.waiting)
            candidate.waiting.extend(waiting)
            self._ready = candidate


def _answer(waiting: list[Future[ReloadResult]], result: ReloadResult) -> None:
    for future in waiting:
        if not future.done():
            future.set_result(result)


def reload_action(reloader: Callable[[], ModelReloader | None]) -> Callable[[], tuple[int, dict[str, Any]]]:
    """The POST route's action: ask for a reload and answer with its result.

    200 swapped or unchanged, 422 refused (the old model serves on), 503 while the service starts,
    504 when no answer came within `RELOAD_WAIT_S`. Nothing is read from the request: it reloads
    the configured model file, so the endpoint cannot be used to load an arbitrary file.
    """

    def act() -> tuple[int, dict[str, Any]]:
        current = reloader()
        if current is None:
            return 503, {"result": "not ready", "error": "the service is still starting; try again"}
        try:
            result = current.request().result(timeout=RELOAD_WAIT_S)
        except FutureTimeout:
            return 504, {"result": "pending", "error": f"no result within {RELOAD_WAIT_S:.0f} s; see the log"}
        return (422 if result["result"] == "refused" else 200), dict(result)

    return act
