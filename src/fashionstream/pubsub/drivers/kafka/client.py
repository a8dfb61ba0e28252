"""What every Kafka client of this driver shares: configuration, logging, and the check that a topic exists."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import ParsedURL
from fashionstream.pubsub.drivers.kafka import bootstrap_servers
from fashionstream.pubsub.drivers.kafka.client_log import Line, LineThrottle, normalize
from fashionstream.pubsub.drivers.kafka.errors import CONNECTION, LOGIN_REFUSED, NOT_FOUND, TLS_FAILED, classify
from fashionstream.pubsub.errors import ErrorCode
from fashionstream.pubsub.urls import is_secret, safe_url

#: How long opening a topic or subscription waits for the broker's metadata before giving up. A
#: reachable broker answers in milliseconds; a wrong address must be reported within 10 s of a
#: command's start, process start-up included.
METADATA_TIMEOUT_S = 8.0
#: Largest message the clients accept; the topics created by `create_topic` allow the same.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
#: How often a wait for the broker (opening a client, an admin call) looks for a refused login or
#: TLS handshake. librdkafka retries those forever and only reports them as events; looking every
#: half second turns a wrong password into an error within about a second instead of a timeout.
REFUSAL_CHECK_S = 0.5

_log = logging.getLogger(__package__ or __name__)
_librdkafka_log = logging.getLogger(f"{__package__}.librdkafka")

# Options the driver sets itself from the URL.
_FROM_URL = frozenset({"bootstrap.servers", "group.id"})


class ClientLog:
    """Where one client's librdkafka log lines and error events go: Python logging, without the flood.

    While no broker answers, librdkafka retries the connection up to twenty times a second and
    reports every failed attempt: opening a topic at a wrong address would print hundreds of
    lines before the one error that explains them. Every line passes a `LineThrottle` (each
    distinct line once per window, then a count of its repeats; a cap per second), and
    connection failures go to DEBUG while the client is being opened (the open then fails with
    Unavailable naming the address), to WARNING afterwards. librdkafka calls these methods on
    whichever thread polls the client; the throttle is thread-safe.
    """

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic, address: str | None = None) -> None:
        self.what = what
        #: The broker address the client talks to: an outage seen by several clients of one process ends
        #: for all of them when any of them hears from that broker again (`connected`).
        self.address = address
        #: Set once the client is open: connection failures are then news, not the reason the open fails.
        self.opened = False
        #: The first refused login or failed TLS handshake: no retry helps, so a wait for the broker
        #: stops at once with this reason (`check_refused`).
        self.refused: KafkaError | None = None
        #: Values of the client's secret options, blanked in every line (`scrub`); set by `client_config`.
        self.secrets: tuple[str, ...] = ()
        #: A connection error came since the broker last answered (see `connected`).
        self._disconnected = False
        self._throttle = LineThrottle(what, clock=clock)
        #: Called with (facility, text) for every log line, before any filtering: how a driver hears of a
        #: client state that librdkafka reports only in its log (the idempotent producer's id, `topic`).
        self.watch: Callable[[str, str], None] | None = None

    def log(self, level: int, fmt: str, *args: object) -> None:
        """librdkafka's log lines (confluent-kafka's `logger` interface: fmt "%s [%s] %s", facility first)."""
        facility = args[0] if args else ""
        if self.watch is not None and args:
            self.watch(str(facility), str(args[-1]))
        if facility == "FAIL":
            # librdkafka reports each failed broker connection twice, in one go: as this FAIL line
            # and as an error event (`error` below) with the same words. The error event is the one
            # kept: it carries the error code, which tells a broker that is away (expected while
            # opening: the open fails with Unavailable) from a refused login or a fatal error, and
            # it is also how "all brokers down" and a consumer's transient errors arrive.
            return
        if _librdkafka_log.isEnabledFor(level):  # lines nobody shows must not use up the cap
            message = normalize(str(args[-1])) if args else fmt  # the text after facility and client name
            self._print(
                (_librdkafka_log.name, level, facility, message),
                Line(_librdkafka_log.name, level, fmt % args if args else fmt),
            )

    def error(self, err: KafkaError) -> None:
        """librdkafka's error events (`error_cb`), and transient errors a consumer returns."""
        refusal = err.code() in LOGIN_REFUSED or err.code() in TLS_FAILED
        if refusal and self.refused is None:
            self.refused = err
        # Transport errors are retried by librdkafka itself; they explain a later timeout. A refusal
        # while opening is the error the open fails with (`check_refused`), so it is not said twice.
        connection = err.code() in CONNECTION
        if connection and not self._disconnected:
            self._disconnected = True
            with _OUTAGES_LOCK:
                _OUTAGES.add(self)
        quiet = not self.opened and (connection or refusal)
        level = logging.DEBUG if quiet else logging.WARNING
        if _log.isEnabledFor(level):
            key = (_ERROR_EVENT, level, err.code(), normalize(err.str()))
            self._print(key, Line(_log.name, level, f"{self.what}: {err}"))

    def check_refused(self, what: str) -> None:
        """Raise PermissionDenied if the broker refused this client's login or TLS handshake.

        librdkafka's reason names the broker's address ("sasl_ssl://HOST:PORT/bootstrap: ...").
        """
        err = self.refused
        if err is None:
            return
        detail = self.scrub(err.str())
        if err.code() in TLS_FAILED:
            message = f"{what}: TLS handshake failed: {detail}"
            hint = "check ssl.ca.location (the CA that signed the broker's certificate) and security.protocol"
        else:
            message = f"{what}: authentication failed: {detail}"
            hint = "check sasl.username, sasl.password and sasl.mechanism"
        error = errors.PermissionDenied(message, hint=hint)
        error.__cause__ = KafkaException(err)
        raise error

    def scrub(self, text: str) -> str:
        """`text` with this client's secret option values blanked."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    @property
    def disconnected(self) -> bool:
        """Whether a connection error came since the broker last answered."""
        return self._disconnected

    def connected(self) -> None:
        """The broker answered (a delivery confirmed, a commit accepted): a connection outage is over.

        Its connection errors' repeat counts are printed now, closing the outage in the log, rather
        than at the next such error or at close, where a burst of stale warnings would follow a
        stream that has long been healthy. Cheap while there was no outage: called per batch.
        """
        self._end_outage()
        if _OUTAGES and self.address is not None:
            # A client with nothing to send or commit (the dead-letter producer of a healthy stream)
            # hears nothing itself for a while; the broker it waits for answered this client.
            with _OUTAGES_LOCK:
                siblings = [log for log in _OUTAGES if log.address == self.address]
            for log in siblings:
                log._end_outage()

    def _end_outage(self) -> None:
        if not self._disconnected:
            return
        self._disconnected = False
        with _OUTAGES_LOCK:
            _OUTAGES.discard(self)
        self._emit(self._throttle.end(_is_connection_error))

    def statistics(self, stats: Mapping[str, Any]) -> None:
        """librdkafka's periodic statistics (`stats_cb`, parsed): a broker connection is up again.

        The signal for a client with nothing to send or commit, such as the dead-letter producer of
        a healthy stream, which would otherwise keep its outage's counts until it closes.
        """
        if not self._disconnected:
            return
        brokers = stats.get("brokers") if isinstance(stats, Mapping) else None
        if isinstance(brokers, dict) and any(
            isinstance(b, dict) and b.get("state") == "UP" and b.get("nodeid", -1) >= 0 for b in brokers.values()
        ):  # the bootstrap entry (nodeid -1) may stay down after the real broker answered
            self.connected()

    def flush(self) -> None:
        """Print the repeat counts still pending: when the client closes."""
        with _OUTAGES_LOCK:
            _OUTAGES.discard(self)
        self._emit(self._throttle.flush())

    def _print(self, key: tuple[object, ...], line: Line) -> None:
        self._emit(self._throttle.offer(key, line))

    def _emit(self, lines: list[Line]) -> None:
        for logger, level, text in lines:
            logging.getLogger(logger).log(level, "%s", self.scrub(text))


#: The clients of this process in a connection outage (a connection error since their broker last
#: answered): `ClientLog.connected` ends theirs too when their broker answers another client.
_OUTAGES: set[ClientLog] = set()
_OUTAGES_LOCK = threading.Lock()

_ERROR_EVENT = "error event"  # first part of an error event's throttle key; log lines' keys start with a logger


def _is_connection_error(key: object) -> bool:
    """Whether a throttle key (see `ClientLog.error`) is that of a broker connection error."""
    return isinstance(key, tuple) and key[0] == _ERROR_EVENT and key[2] in CONNECTION


def scrub(text: str, options: Mapping[str, object]) -> str:
    """`text` with the values of secret options blanked, for librdkafka messages that quote config values."""
    for key, value in options.items():
        if is_secret(key) and isinstance(value, str) and value:
            text = text.replace(value, "***")
    return text


def portable(error: BaseException, message: str, options: Mapping[str, object] | None = None) -> errors.PubSubError:
    """A `fashionstream.pubsub.errors` exception for `error`, used where no driver object classifies it yet."""
    return errors.from_code(classify(error), f"{message}: {scrub(str(error), options or {})}", error)


def client_config(
    url: ParsedURL, options: Mapping[str, object], defaults: Mapping[str, object], log: ClientLog
) -> dict[str, Any]:
    """Defaults, then the caller's native options, with the broker address from the URL."""
    clashes = sorted(_FROM_URL & set(options))
    if clashes:
        raise errors.InvalidArgument(
            f"option(s) {', '.join(clashes)} come from the URL ({safe_url(url.raw)!r}: broker address and "
            "?group=); remove them from the options"
        )
    for key in options:
        if not isinstance(key, str):
            raise errors.InvalidArgument(f"Kafka option names must be strings, got {key!r}")
    config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers(url), **defaults, **options}
    # librdkafka logs through Python logging instead of writing to stderr.
    config.setdefault("logger", log)
    config.setdefault("error_cb", log.error)
    log.secrets = tuple(str(v) for k, v in options.items() if is_secret(k) and isinstance(v, str) and v)
    return config


def make_client(factory: Callable[[dict[str, Any]], Any], config: dict[str, Any], what: str) -> Any:
    try:
        return factory(config)
    except (KafkaException, ValueError, TypeError) as err:
        # Messages quote the offending property, possibly with its value: scrub secrets.
        raise errors.InvalidArgument(f"invalid Kafka option for {what}: {scrub(str(err), config)}") from err


def check_topic(client: Any, log: ClientLog, topic: str, address: str, what: str, timeout: float | None = None) -> int:
    """Raise NotFound / Unavailable / PermissionDenied unless `topic` exists; return its partition count.

    Without this a missing topic would only show up as a delivery failure after librdkafka's
    metadata propagation wait (30 s), an unreachable broker as silence, and a wrong password as
    a timeout: the wait is cut into REFUSAL_CHECK_S slices, and after each the client's events are
    served (`poll`), so a refused login ends it with the broker's reason.
    """
    timeout = METADATA_TIMEOUT_S if timeout is None else timeout  # read at call time: tests lower it
    deadline = time.monotonic() + timeout
    while True:
        try:
            metadata = client.list_topics(
                topic=topic, timeout=max(0.0, min(REFUSAL_CHECK_S, deadline - time.monotonic()))
            )
            log.refused = None  # the broker let us in after all (a refusal during a broker restart)
            break
        except KafkaException as err:
            # Runs error_cb: a refused login arrives as an error event. A consumer is checked before
            # it subscribes, so this poll cannot take (and lose) a message.
            client.poll(0)
            log.check_refused(what)
            if time.monotonic() >= deadline:
                raise errors.from_code(
                    ErrorCode.UNAVAILABLE,
                    f"{what}: no answer from Kafka at {address} within {timeout:.0f} s ({err})",
                    err,
                ) from err
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        native = KafkaException(info.error) if info is not None and info.error is not None else None
        if native is None or native.args[0].code() in NOT_FOUND:
            raise errors.from_code(
                ErrorCode.NOT_FOUND, f"{what}: topic {topic!r} does not exist on {address}", native
            ) from native
        raise portable(native, f"{what}: metadata for topic {topic!r} at {address}")
    return len(info.partitions)
