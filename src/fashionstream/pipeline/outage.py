"""Broker trouble as two log lines instead of a flood: an outage is logged when it starts and when it ends.

While a broker is unreachable every receive or publish fails, several times a second; a line per
failure buries the few that matter and costs CPU of its own. An `Outage` logs the first failure
as a WARNING, counts the rest (DEBUG), and logs one line when the next call succeeds, with how
long it lasted and how many failures it swallowed. It also tells the readiness probe: while an
outage lasts, `Health` carries a problem under the outage's name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fashionstream.pipeline.metrics import Health


class Outage:
    """One kind of broker call (receiving, publishing) failing over a stretch of time. Thread-safe."""

    def __init__(
        self,
        name: str,
        what: str,
        logger: logging.Logger,
        health: Health | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name  # the Health problem's key: "receive", "publish"
        self.what = what  # how log lines name the calls: "receiving from kafka group 'service' ..."
        self._log = logger
        self._health = health
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the current outage began; None while all is well
        self._failures = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException) -> None:
        """A call failed: the first failure of an outage is logged, the rest are counted."""
        with self._lock:
            first = self._since is None
            if first:
                self._since = self._clock()
            self._failures += 1
        detail = f"{type(error).__name__}: {error}"
        if self._health is not None:
            self._health.problem(self.name, detail)
        if first:
            self._log.warning(
                "%s failed; retrying, and logging once more when it works again: %s",
                self.what,
                detail,
                extra={"outage": self.name, "outage_state": "started"},
            )
        else:
            self._log.debug("%s failed again: %s", self.what, detail)

    def succeeded(self) -> None:
        """A call worked: ends an outage (one log line), otherwise costs next to nothing."""
        if self._since is None:  # the usual case, without taking the lock
            return
        with self._lock:
            since, failures = self._since, self._failures
            if since is None:
                return
            self._since, self._failures = None, 0
        if self._health is not None:
            self._health.resolved(self.name)
        self._log.info(
            "%s works again after %.1f s; %d failed attempts in between (%d not logged)",
            self.what,
            self._clock() - since,
            failures,
            failures - 1,
            extra={"outage": self.name, "outage_state": "ended", "failures": failures},
        )
