"""Rate limiting for one Kafka client's log lines: each line once per window, with a count of its repeats.

While a broker is unreachable librdkafka retries the connection up to twenty times a second and
reports every attempt with the same words. `LineThrottle` prints such a line once, counts its
repeats, and reports the count when the line's window ends (noticed at the client's next line),
when the client says the problem is over (`end`), or when the client closes:
"... (repeated 57 times in 30 s)". A cap on the lines a client may
print in one second catches what the deduplication cannot, lines that differ every time.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import NamedTuple

#: How long an identical line stays quiet after it was printed. librdkafka's reconnect backoff
#: grows to 10 s (`reconnect.backoff.max.ms`), so a window of several backoffs turns a broker that
#: stays away into one line and one count per half-minute; a reader still sees within 30 s that
#: the problem persists (and that it stopped: no count follows).
REPEAT_WINDOW_S = 30.0
#: Most lines one client prints in one second; the rest are dropped and counted. One failure
#: produces a handful of distinct lines (the error itself, "all brokers down", a rebalance), so 5
#: never hides the first report of a new problem, while a client whose lines never repeat exactly
#: still cannot flood the terminal or a log collector's ingestion quota.
MAX_LINES_PER_S = 5

# Parts of librdkafka's messages that change from one report of the same problem to the next.
_VOLATILE = (
    (re.compile(r"\bafter \d+ms\b"), "after Nms"),
    (re.compile(r"\b\d+ identical error\(s\) suppressed\b"), "N identical error(s) suppressed"),
)


def normalize(message: str) -> str:
    """`message` with its volatile parts (durations, librdkafka's own repeat counters) replaced."""
    for pattern, replacement in _VOLATILE:
        message = pattern.sub(replacement, message)
    return message


class Line(NamedTuple):
    """One line to print: the logger's name, the level, the text."""

    logger: str
    level: int
    text: str


@dataclass(slots=True)
class _Printed:
    line: Line
    since: float  # when it was printed: its window runs from here
    repeats: int = 0  # identical lines suppressed since
    last: float = 0.0  # when the latest of them came


def _span(seconds: float) -> str:
    # Under a second mostly means events that queued up until the client was next polled: no
    # telling when they happened, so no duration.
    return "" if seconds < 1 else f" in {seconds:.0f} s"


class LineThrottle:
    """Decides which of one client's log lines to print. Thread-safe; the clock is injectable for tests.

    `offer` takes a line with the key that says which lines are the same and returns what to print
    now: counts of earlier lines whose window ended, then the line itself unless it repeats a line
    printed less than `window_s` ago or the client already printed `max_per_s` lines this second.
    """

    def __init__(
        self,
        name: str,
        window_s: float = REPEAT_WINDOW_S,
        max_per_s: int = MAX_LINES_PER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name  # names the client in the line that counts dropped lines
        self.window_s = window_s
        self.max_per_s = max_per_s
        self._clock = clock
        # Lines printed within their window, oldest first (a line printed again moves to the end).
        self._printed: dict[Hashable, _Printed] = {}
        self._second = -math.inf  # start of the current one-second slot of the cap
        self._in_second = 0
        self._dropped = 0  # lines over the cap since the last report of them
        self._dropped_line: Line | None = None  # the loudest of them: the report's logger and level
        self._lock = threading.Lock()  # librdkafka calls back on whichever thread polls the client

    def offer(self, key: Hashable, line: Line) -> list[Line]:
        with self._lock:
            now = self._clock()
            out = self._ended(now, keep=key)
            printed = self._printed.get(key)
            if printed is not None and now - printed.since < self.window_s:
                printed.repeats += 1
                printed.last = now
                return out
            if printed is not None:
                del self._printed[key]
                if printed.repeats:  # again after a window with repeats in it: one line says both
                    out.append(self._repeated(printed, printed.repeats + 1, now - printed.since))
                    self._printed[key] = _Printed(line, now)
                    return out
            if now - self._second >= 1:
                out.extend(self._dropped_report())
                self._second, self._in_second = now, 0
            if self._in_second >= self.max_per_s:
                self._dropped += 1
                if self._dropped_line is None or line.level > self._dropped_line.level:
                    self._dropped_line = line
                return out
            self._in_second += 1
            self._printed[key] = _Printed(line, now)
            out.append(line)
            return out

    def flush(self) -> list[Line]:
        """The counts still pending, as when the client closes; afterwards every line is new again."""
        with self._lock:
            out = self._ended(math.inf, keep=None)
            out.extend(self._dropped_report())
            return out

    def end(self, which: Callable[[Hashable], bool]) -> list[Line]:
        """End the windows of the lines whose key `which` accepts, now: their counts, and they are new again.

        For a problem known to be over (the broker answers again): its count is printed when it
        ended, not minutes later when the client closes, and its next occurrence is news.
        """
        with self._lock:
            out: list[Line] = []
            for key in [key for key in self._printed if which(key)]:
                printed = self._printed.pop(key)
                if printed.repeats:
                    out.append(self._repeated(printed, printed.repeats, printed.last - printed.since))
            return out

    def _ended(self, now: float, keep: Hashable | None) -> list[Line]:
        """Forget the lines whose window ended by `now` (but `keep`), with the counts of their repeats."""
        ended = []
        for key, printed in self._printed.items():
            if now - printed.since < self.window_s:
                break  # the rest were printed later
            if key != keep:
                ended.append(key)
        out: list[Line] = []
        for key in ended:
            printed = self._printed.pop(key)
            if printed.repeats:
                out.append(self._repeated(printed, printed.repeats, printed.last - printed.since))
        return out

    @staticmethod
    def _repeated(printed: _Printed, count: int, seconds: float) -> Line:
        times = "once" if count == 1 else f"{count} times"
        return printed.line._replace(text=f"{printed.line.text} (repeated {times}{_span(seconds)})")

    def _dropped_report(self) -> list[Line]:
        if not self._dropped or self._dropped_line is None:
            return []
        report = self._dropped_line._replace(
            text=f"{self.name}: {self._dropped} more log line(s) dropped (over {self.max_per_s} a second)"
        )
        self._dropped, self._dropped_line = 0, None
        return [report]


__all__ = ["MAX_LINES_PER_S", "REPEAT_WINDOW_S", "Line", "LineThrottle", "normalize"]
