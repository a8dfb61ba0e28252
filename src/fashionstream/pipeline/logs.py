"""Log lines for the commands: human-readable text, or one JSON object per line for log collectors."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


#: Cloud Logging's severities for Python's levels, highest first (see `severity`).
_SEVERITIES = (
    (logging.CRITICAL, "CRITICAL"),
    (logging.ERROR, "ERROR"),
    (logging.WARNING, "WARNING"),
    (logging.INFO, "INFO"),
)


def severity(levelno: int) -> str:
    """The `severity` of a line at `levelno`: the name of the highest standard level not above it.

    Google Cloud Logging takes a JSON line's `severity` field as the entry's severity; a custom
    level between two standard ones takes the lower one's name, anything below INFO is DEBUG.
    """
    return next((name for level, name in _SEVERITIES if levelno >= level), "DEBUG")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, severity, level, logger, message and any `extra=` fields."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "severity": severity(record.levelno),
            "level": record.levelname.lower(),  # Python's name for the level, custom levels included
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD:
                doc[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class TextFormatter(logging.Formatter):
    """Human-readable lines; `extra=` fields appended as key=value."""

    _STANDARD = JsonFormatter._STANDARD

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in vars(record).items() if k not in self._STANDARD]
        return f"{line} {' '.join(extras)}" if extras else line


def configure_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime  # UTC timestamps, matching the "Z" suffix
