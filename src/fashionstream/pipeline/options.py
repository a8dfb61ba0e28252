"""Command-line plumbing shared by serve/produce/consume/demo: env-var defaults and logging.

Every option `--some-option` can also be set as `FASHIONSTREAM_SOME_OPTION`
(the command line wins). This suits containers, where configuration arrives as
environment variables (see deploy/).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

ENV_PREFIX = "FASHIONSTREAM_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def apply_env_defaults(parser: argparse.ArgumentParser, environ: dict[str, str] | None = None) -> None:
    """Replace each option's default with FASHIONSTREAM_<DEST> when that variable is set.

    Values go through the option's own `type`, so a bad value fails exactly like
    a bad command-line value, naming the variable.
    """
    env = dict(os.environ if environ is None else environ)
    for action in parser._actions:  # argparse offers no public iterator over options
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        name = env_name(action.dest)
        if name not in env:
            continue
        raw = env[name]
        value: Any
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction | argparse.BooleanOptionalAction):
            lowered = raw.strip().lower()
            if lowered not in _TRUE | _FALSE:
                parser.error(f"{name}={raw!r}: use true/false")
            value = lowered in _TRUE
        elif action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction):
            value = raw.split()
        else:
            try:
                value = action.type(raw) if callable(action.type) else raw
            except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
                parser.error(f"{name}={raw!r}: {error}")
        action.default = value
    parser.epilog = (
        (parser.epilog or "") + f"\nEvery option can also be set as {ENV_PREFIX}<OPTION> "
        "(upper case, dashes as underscores), e.g. FASHIONSTREAM_BROKER."
    ).strip()


def parse_client_options(pairs: list[str] | None) -> dict[str, object]:
    """`["session.timeout.ms=6000", "ack_deadline=60"]` -> options for open_topic / open_subscription.

    Numbers become int or float (the portable options are validated as numbers;
    librdkafka takes either); anything else stays a string.
    """
    options: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"client option {pair!r}: expected KEY=VALUE")
        parsed: object = value
        for convert in (int, float):
            try:
                parsed = convert(value)
                break
            except ValueError:
                continue
        options[key.strip()] = parsed
    return options


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra=` fields."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
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
    import time

    logging.Formatter.converter = time.gmtime  # UTC timestamps, matching the "Z" suffix


def add_logging_options(parser: argparse.ArgumentParser, default_level: str = "info") -> None:
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format (stderr)")
    parser.add_argument("--log-level", default=default_level, choices=("debug", "info", "warning", "error"))
