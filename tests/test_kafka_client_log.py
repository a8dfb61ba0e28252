"""The Kafka clients' log lines: librdkafka's repeats throttled, one report per failure; `severity` in JSON logs."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pytest

from fashionstream.pipeline.logs import JsonFormatter, severity
from fashionstream.pubsub.drivers.kafka.client_log import (
    MAX_LINES_PER_S,
    REPEAT_WINDOW_S,
    Line,
    LineThrottle,
    normalize,
)

UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: every connection attempt is refused at once
KAFKA_LOGGERS = "fashionstream.pubsub.drivers.kafka"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _line(text: str, level: int = logging.WARNING) -> Line:
    return Line("test", level, text)


def _texts(lines: list[Line]) -> list[str]:
    return [line.text for line in lines]


# -- LineThrottle


def test_defaults_are_the_named_constants() -> None:
    throttle = LineThrottle("client")
    assert (throttle.window_s, throttle.max_per_s) == (REPEAT_WINDOW_S, MAX_LINES_PER_S)


def test_a_repeated_line_is_printed_once_then_counted_when_it_comes_again_after_the_window() -> None:
    clock = Clock()
    throttle = LineThrottle("client", window_s=30, clock=clock)
    assert _texts(throttle.offer("refused", _line("refused"))) == ["refused"]
    for _ in range(57):
        clock.now += 0.5
        assert throttle.offer("refused", _line("refused")) == []
    clock.now = 1000.0 + 31
    # One line says both: the line again and how often it came since it was printed.
    assert _texts(throttle.offer("refused", _line("refused"))) == ["refused (repeated 58 times in 31 s)"]
    clock.now += 1
    assert throttle.offer("refused", _line("refused")) == []  # a new window began with that line


def test_a_line_seen_again_only_after_its_window_is_printed_plainly() -> None:
    clock = Clock()
    throttle = LineThrottle("client", window_s=30, clock=clock)
    throttle.offer("a", _line("a"))
    clock.now += 45
    assert _texts(throttle.offer("a", _line("a"))) == ["a"]


def test_the_count_comes_with_the_next_line_after_the_window_ends() -> None:
    clock = Clock()
    throttle = LineThrottle("client", window_s=30, clock=clock)
    throttle.offer("a", _line("a"))
    clock.now += 2
    throttle.offer("a", _line("a"))
    clock.now += 1
    assert _texts(throttle.offer("b", _line("b"))) == ["b"]  # a's window is still open
    clock.now = 1000.0 + 30
    assert _texts(throttle.offer("c", _line("c"))) == ["a (repeated once in 2 s)", "c"]


def test_distinct_lines_are_printed_each_and_keep_their_level_and_logger() -> None:
    clock = Clock()
    throttle = LineThrottle("client", clock=clock)
    first = Line("one", logging.DEBUG, "x")
    second = Line("two", logging.ERROR, "y")
    assert throttle.offer("x", first) == [first]
    assert throttle.offer("y", second) == [second]
    throttle.offer("y", second)
    assert throttle.flush() == [Line("two", logging.ERROR, "y (repeated once)")]


def test_flush_reports_pending_counts_and_forgets_the_lines() -> None:
    clock = Clock()
    throttle = LineThrottle("client", clock=clock)
    throttle.offer("a", _line("a"))
    for _ in range(3):
        clock.now += 2
        throttle.offer("a", _line("a"))
    throttle.offer("b", _line("b"))  # never repeated: nothing to report
    assert _texts(throttle.flush()) == ["a (repeated 3 times in 6 s)"]
    assert throttle.flush() == []
    assert _texts(throttle.offer("a", _line("a"))) == ["a"]


def test_a_client_prints_at_most_the_cap_a_second_and_counts_the_rest() -> None:
    clock = Clock()
    throttle = LineThrottle("kafka producer", window_s=30, max_per_s=5, clock=clock)
    printed = []
    for index in range(8):
        level = logging.ERROR if index == 6 else logging.INFO
        printed += throttle.offer(index, _line(f"line {index}", level))
        clock.now += 0.1
    assert _texts(printed) == [f"line {i}" for i in range(5)]
    clock.now = 1000.0 + 1
    report, line = throttle.offer("later", _line("later"))
    assert report == Line("test", logging.ERROR, "kafka producer: 3 more log line(s) dropped (over 5 a second)")
    assert line.text == "later"
    # A dropped line was never printed: it is not a repeat when it comes again.
    assert _texts(throttle.offer(7, _line("line 7"))) == ["line 7"]


def test_flush_reports_lines_dropped_by_the_cap() -> None:
    throttle = LineThrottle("c", max_per_s=1, clock=Clock())
    throttle.offer("a", _line("a"))
    throttle.offer("b", _line("b"))
    assert _texts(throttle.flush()) == ["c: 1 more log line(s) dropped (over 1 a second)"]


def test_lines_from_many_threads_print_once_and_are_all_counted() -> None:
    throttle = LineThrottle("client", clock=Clock())
    printed: list[Line] = []
    start = threading.Barrier(8)

    def offer() -> None:
        start.wait()
        for _ in range(500):
            printed.extend(throttle.offer("same", _line("same")))  # list.extend is atomic

    threads = [threading.Thread(target=offer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _texts(printed) == ["same"]
    assert _texts(throttle.flush()) == [f"same (repeated {8 * 500 - 1} times)"]


def test_normalize_strips_what_changes_between_reports_of_one_problem() -> None:
    one = "b:9092/1: Connect to ipv4#10.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)"
    two = "b:9092/1: Connect to ipv4#10.0.0.1:9092 failed: Connection refused (after 1503ms in state CONNECT)"
    assert normalize(one) == normalize(two)
    assert normalize("down (after 3ms in state UP, 12 identical error(s) suppressed)") == normalize(
        "down (after 9ms in state UP, 3 identical error(s) suppressed)"
    )
    assert normalize("1/3 brokers are down") != normalize("3/3 brokers are down")  # not a volatile part


# -- ClientLog: librdkafka's two callbacks


def _kafka_error(code_name: str, text: str) -> Any:  # a confluent_kafka.KafkaError
    kafka = pytest.importorskip("confluent_kafka")
    return kafka.KafkaError(getattr(kafka.KafkaError, code_name), text)


def test_client_log_prints_a_connection_failure_once_not_as_log_line_and_error_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("confluent_kafka")
    from fashionstream.pubsub.drivers.kafka.client import ClientLog

    caplog.set_level(logging.DEBUG)
    clock = Clock()
    log = ClientLog("kafka producer for 'images' at b:9092", clock=clock)
    log.opened = True
    for attempt in range(20):
        text = f"b:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed: Connection refused (after {attempt}ms)"
        # librdkafka reports each failure as a FAIL log line and as an error event with the same words.
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", text)
        log.error(_kafka_error("_TRANSPORT", text))
        clock.now += 0.05
    log.flush()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "Connection refused" in messages[0] and caplog.records[0].levelno == logging.WARNING
    assert messages[1].endswith("(repeated 19 times)"), messages[1]


def test_end_reports_and_forgets_only_the_lines_it_is_asked_about() -> None:
    clock = Clock()
    throttle = LineThrottle("client", clock=clock)
    for _ in range(3):
        throttle.offer("refused", _line("refused"))
        throttle.offer("slow", _line("slow"))
    clock.now += 2
    assert _texts(throttle.end(lambda key: key == "refused")) == ["refused (repeated 2 times)"]
    assert _texts(throttle.offer("refused", _line("refused"))) == ["refused"]  # news again
    assert _texts(throttle.offer("slow", _line("slow"))) == []  # still within its window


def test_a_connection_outage_is_counted_when_the_broker_answers_again_not_at_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # While the broker is away librdkafka reports each reconnect attempt; once it is back it says nothing.
    # Without an end signal the counts waited for the client to close, and every client of a long-healthy
    # service then printed its outage's warnings at shutdown.
    pytest.importorskip("confluent_kafka")
    from fashionstream.pubsub.drivers.kafka.client import ClientLog

    caplog.set_level(logging.DEBUG)
    clock = Clock()
    log = ClientLog("kafka producer for 'images.dlq' at b:9092", clock=clock)
    log.opened = True
    for _ in range(40):
        log.error(_kafka_error("_TRANSPORT", "b:9092/bootstrap: Connect failed: Connection refused"))
        log.error(_kafka_error("_ALL_BROKERS_DOWN", "1/1 brokers are down"))
        log.error(_kafka_error("_MSG_TIMED_OUT", "a message timed out"))  # not a connection error
        clock.now += 0.2
    log.statistics({"brokers": {"b:9092/bootstrap": {"nodeid": -1, "state": "DOWN"}}})  # still away
    assert len(caplog.records) == 3
    log.statistics(
        {"brokers": {"b:9092/bootstrap": {"nodeid": -1, "state": "DOWN"}, "b:9092/1": {"nodeid": 1, "state": "UP"}}}
    )
    back = [r.getMessage() for r in caplog.records[3:]]
    assert len(back) == 2 and all("(repeated 39 times in 8 s)" in m for m in back), back
    log.connected()  # a delivery confirmed: nothing more to say
    log.statistics({"brokers": {"b:9092/1": {"nodeid": 1, "state": "UP"}}})
    caplog.clear()
    log.flush()  # closing: only the count of the other error, still in its window, remains
    closing = [r.getMessage() for r in caplog.records]
    assert len(closing) == 1 and "a message timed out" in closing[0], closing
    assert closing[0].endswith("(repeated 39 times in 8 s)"), closing


def test_client_log_keeps_connection_failures_quiet_until_the_client_is_open(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("confluent_kafka")
    from fashionstream.pubsub.drivers.kafka.client import ClientLog

    caplog.set_level(logging.DEBUG)
    log = ClientLog("c", clock=Clock())
    log.error(_kafka_error("_TRANSPORT", "refused"))
    log.opened = True
    log.error(_kafka_error("_TRANSPORT", "refused"))  # news now: printed again
    log.error(_kafka_error("_AUTHENTICATION", "bad password"))
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.WARNING, logging.WARNING]


def test_a_refused_login_while_opening_is_one_error_without_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("confluent_kafka")
    from fashionstream.pubsub import errors
    from fashionstream.pubsub.drivers.kafka.client import ClientLog

    caplog.set_level(logging.DEBUG)
    log = ClientLog("c", clock=Clock())
    log.secrets = ("hunter2",)  # as client_config sets them from the secret options
    log.check_refused("opening c")  # nothing refused yet: no error
    # Quoted here only to prove the scrubbing; librdkafka's login errors do not quote the password.
    log.error(_kafka_error("_AUTHENTICATION", "SASL authentication error: bad login hunter2"))
    with pytest.raises(errors.PermissionDenied, match="opening c: authentication failed") as caught:
        log.check_refused("opening c")
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
    assert "sasl.password" in str(caught.value)  # the hint names the options to check
    # While opening, the refusal is the open's error, so the log line is DEBUG; afterwards it is news.
    log.opened = True
    log.error(_kafka_error("_AUTHENTICATION", "SASL authentication error: bad login hunter2 again"))
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.WARNING]
    assert not [r for r in caplog.records if "hunter2" in r.getMessage()]


def test_client_log_lines_nobody_shows_do_not_use_up_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("confluent_kafka")
    from fashionstream.pubsub.drivers.kafka.client import ClientLog

    caplog.set_level(logging.INFO)
    log = ClientLog("c", clock=Clock())
    for index in range(3 * MAX_LINES_PER_S):
        log.log(logging.DEBUG, "%s [%s] %s", "BROKER", "rdkafka#producer-1", f"debug {index}")
    log.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "rdkafka#producer-1", "a setting is ignored")
    assert [r.getMessage() for r in caplog.records] == ["CONFWARN [rdkafka#producer-1] a setting is ignored"]


# -- real clients against an unreachable broker


def _kafka_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(KAFKA_LOGGERS)]


def test_opening_at_an_unreachable_broker_logs_a_few_lines_not_hundreds(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("confluent_kafka")
    from fashionstream.pubsub import errors, open_subscription
    from fashionstream.pubsub.drivers.kafka import client

    # A consumer keeps retrying the connection for the whole metadata wait (about 20 attempts a
    # second here) and reports each attempt twice; they come out when the failed open closes it.
    monkeypatch.setattr(client, "METADATA_TIMEOUT_S", 5.0)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(errors.Unavailable, match=UNREACHABLE):
        open_subscription(f"kafka://{UNREACHABLE}/images?group=g")
    messages = [r.getMessage() for r in _kafka_records(caplog)]
    assert len(messages) <= 10, messages
    assert any("Connection refused" in m and UNREACHABLE in m for m in messages), messages
    assert any("(repeated " in m for m in messages), messages  # the attempts were counted, not lost


def test_an_open_client_whose_broker_goes_away_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    kafka = pytest.importorskip("confluent_kafka")
    from fashionstream.pubsub.drivers.kafka.client import ClientLog, client_config, make_client
    from fashionstream.pubsub.urls import parse_url

    caplog.set_level(logging.DEBUG)
    log = ClientLog(f"kafka producer for 'images' at {UNREACHABLE}")
    log.opened = True  # as if the broker had answered the open and then gone away
    config = client_config(parse_url(f"kafka://{UNREACHABLE}/images"), {}, {}, log)
    producer = make_client(kafka.Producer, config, "producer")
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        producer.poll(0.1)  # serves the log lines and error events, as the driver's report thread does
    log.flush()
    records = _kafka_records(caplog)
    messages = [r.getMessage() for r in records]
    assert len(messages) <= 10, messages
    refused = [r for r in records if "Connection refused" in r.getMessage()]
    assert refused and refused[0].levelno == logging.WARNING and UNREACHABLE in refused[0].getMessage()
    assert not any(r.name.endswith(".librdkafka") and "Connection refused" in r.getMessage() for r in records)


# -- JSON log lines


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (logging.DEBUG, "DEBUG"),
        (logging.INFO, "INFO"),
        (logging.WARNING, "WARNING"),
        (logging.ERROR, "ERROR"),
        (logging.CRITICAL, "CRITICAL"),
        (5, "DEBUG"),  # custom levels take the standard level below them
        (25, "INFO"),
        (60, "CRITICAL"),
    ],
)
def test_severity_names_cloud_loggings_levels(level: int, expected: str) -> None:
    assert severity(level) == expected


def test_json_log_lines_carry_severity_and_level() -> None:
    record = logging.makeLogRecord(
        {"name": "fashionstream.x", "levelno": logging.WARNING, "levelname": "WARNING", "msg": "m %d", "args": (1,)}
    )
    doc = json.loads(JsonFormatter().format(record))
    assert doc["severity"] == "WARNING"
    assert doc["level"] == "warning"
    assert doc["message"] == "m 1" and doc["logger"] == "fashionstream.x"


def test_an_outage_ends_for_every_client_of_the_broker_when_any_of_them_hears_from_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An idle client (the dead-letter producer of a healthy stream) hears nothing of its own for a while
    # after the broker is back; the answers producer's confirmed delivery ends its outage too.
    pytest.importorskip("confluent_kafka")
    from fashionstream.pubsub.drivers.kafka.client import ClientLog

    caplog.set_level(logging.DEBUG)
    clock = Clock()
    idle = ClientLog("kafka producer for 'images.dlq' at b:9092", clock=clock, address="b:9092")
    busy = ClientLog("kafka producer for 'predictions' at b:9092", clock=clock, address="b:9092")
    elsewhere = ClientLog("kafka producer for 'x' at c:9092", clock=clock, address="c:9092")
    for log in (idle, busy, elsewhere):
        log.opened = True
    for _ in range(10):
        for log in (idle, busy, elsewhere):
            log.error(_kafka_error("_TRANSPORT", "Connect failed: Connection refused"))
        clock.now += 0.2
    caplog.clear()
    busy.connected()  # a delivery of the predictions producer was confirmed
    ended = [r.getMessage() for r in caplog.records]
    assert len(ended) == 2 and all("(repeated 9 times" in m for m in ended), ended
    assert {m.split(":")[0] for m in ended} == {busy.what.split(":")[0], idle.what.split(":")[0]}
    caplog.clear()
    idle.flush()  # closing later: nothing stale left
    assert caplog.records == []
    elsewhere.flush()  # another broker's outage is not ended by this one
    assert len(caplog.records) == 1 and "c:9092" in caplog.records[0].getMessage()
