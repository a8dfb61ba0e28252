"""Unit tests of the portable layer: URLs, options, retries, batching, acks, admin, the PubSubAPI facade.

Broker behaviour shared by all backends is in the conformance suite; these
tests cover the logic around the driver, using the real mem:// broker, and a
scripted fake driver only where the point is how the portable layer reacts
to driver failures.
"""

from __future__ import annotations

import collections
import concurrent.futures
import gc
import sys
import threading
import time
import types
from collections.abc import Hashable, Sequence
from typing import Any

import pytest

from fashionstream.pubsub import (
    Closed,
    InvalidArgument,
    Message,
    MissingExtra,
    NotFound,
    Publisher,
    Subscriber,
    Timeout,
    Unavailable,
    admin,
    broker_url_help,
    drivers,
    errors,
    open_subscription,
    open_topic,
    parse_broker,
)
from fashionstream.pubsub.api import PubSubAPI
from fashionstream.pubsub.driver import ErrorCode, IncomingMessage, OutgoingMessage, ParsedURL
from fashionstream.pubsub.drivers import load_driver, mem, schemes
from fashionstream.pubsub.futures import SendFuture, fail_all, resolve_all
from fashionstream.pubsub.publisher import PublisherSettings
from fashionstream.pubsub.subscriber import SubscriberSettings
from fashionstream.pubsub.urls import parse_url, redact, safe_url


@pytest.fixture
def mem_topic(unique_name: Any) -> str:
    url = f"mem://{unique_name('t')}"
    admin.create_topic(url)
    return url


def mem_subscription(topic_url: str, name: str = "s", **kwargs: Any) -> str:
    url = f"{topic_url}?subscription={name}"
    admin.create_subscription(url, **kwargs)
    return url


# -- URLs and options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "scheme", "host", "path", "query"),
    [
        ("kafka://127.0.0.1:9092/images?group=service", "kafka", "127.0.0.1:9092", "images", {"group": "service"}),
        ("gcppubsub://projects/P/topics/images", "gcppubsub", "projects", "P/topics/images", {}),
        ("mem://Images?subscription=service", "mem", "Images", "", {"subscription": "service"}),
    ],
)
def test_parse_url_splits_like_the_contract_says(
    raw: str, scheme: str, host: str, path: str, query: dict[str, str]
) -> None:
    assert parse_url(raw) == ParsedURL(raw=raw, scheme=scheme, host=host, path=path, query=query)


def test_unknown_scheme_names_the_accepted_ones() -> None:
    with pytest.raises(InvalidArgument, match=r"'rabbit'.*gcppubsub://, kafka://, mem://"):
        open_topic("rabbit://images")


def test_not_a_url_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="not a broker URL"):
        open_topic("images")


def test_unknown_query_parameter_names_the_accepted_ones(mem_topic: str) -> None:
    with pytest.raises(InvalidArgument, match=r"colour.*accepted: subscription"):
        open_subscription(f"{mem_topic}?subscription=s&colour=red")
    with pytest.raises(InvalidArgument, match=r"group.*accepted: none"):
        open_topic(f"{mem_topic}?group=g")


def test_duplicate_query_parameter_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="twice"):
        parse_url("mem://t?subscription=a&subscription=b")


def test_unknown_native_option_on_mem_is_rejected(mem_topic: str) -> None:
    with pytest.raises(InvalidArgument, match="linger.ms"):
        open_topic(mem_topic, **{"linger.ms": 5})


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"linger": -1}, {"max_in_flight": 1.5}, {"send_timeout": 0}])
def test_bad_portable_publisher_option_is_rejected(mem_topic: str, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match=next(iter(options))):
        open_topic(mem_topic, **options)


def test_bad_portable_subscriber_option_is_rejected(mem_topic: str) -> None:
    with pytest.raises(InvalidArgument, match="ack_deadline"):
        open_subscription(mem_subscription(mem_topic), ack_deadline=0)


def test_secrets_are_redacted() -> None:
    options = {"sasl.password": "hunter2", "bootstrap.servers": "h:9092", "api_token": "t0k", "credentials_file": "c"}
    assert redact(options) == {
        "sasl.password": "***",
        "bootstrap.servers": "h:9092",
        "api_token": "***",
        "credentials_file": "***",
    }
    shown = safe_url("kafka://user:hunter2@h:9092/images?group=g&sasl_password=x")
    assert "hunter2" not in shown and "=x" not in shown and "user" in shown


def test_missing_client_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real import machinery with confluent_kafka made unimportable: what a user without the extra sees.
    for name in [m for m in sys.modules if m.startswith("fashionstream.pubsub.drivers.kafka")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(MissingExtra, match=r"pip install 'fashionstream\[kafka\]'"):
        open_topic("kafka://127.0.0.1:9092/images")


# -- broker URLs and drivers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("broker_url", "topic_url", "subscription_url"),
    [
        ("mem://", "mem://images", "mem://images?subscription=svc"),
        ("kafka://127.0.0.1:9092", "kafka://127.0.0.1:9092/images", "kafka://127.0.0.1:9092/images?group=svc"),
        ("kafka://127.0.0.1:9092/", "kafka://127.0.0.1:9092/images", "kafka://127.0.0.1:9092/images?group=svc"),
        ("kafka://h1:9092,h2:9093", "kafka://h1:9092,h2:9093/images", "kafka://h1:9092,h2:9093/images?group=svc"),
        (
            "gcppubsub://projects/p1",
            "gcppubsub://projects/p1/topics/images",
            "gcppubsub://projects/p1/subscriptions/svc",
        ),
    ],
)
def test_broker_makes_the_urls_of_its_topics_and_subscriptions(
    broker_url: str, topic_url: str, subscription_url: str
) -> None:
    broker = parse_broker(broker_url)
    assert (broker.url, broker.scheme) == (broker_url, broker_url.split(":", 1)[0])
    assert broker.topic_url("images") == topic_url
    assert broker.subscription_url("images", "svc") == subscription_url
    assert admin.resource_names(parse_url(topic_url))[0] == "images"
    assert admin.resource_names(parse_url(subscription_url))[1] == "svc"


def test_the_pipeline_broker_urls() -> None:
    assert parse_broker("mem://").subscription_url("images", "model-service") == (
        "mem://images?subscription=model-service"
    )
    assert (
        parse_broker("gcppubsub://projects/p1").topic_url("images.dlq") == "gcppubsub://projects/p1/topics/images.dlq"
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://x",
        "kafka://",
        "gcppubsub://p1",
        "gcppubsub://projects/",
        "gcppubsub://projects/p1/topics/images",
        "kafka://h:1?sasl=x",
        "kafka://h:1/images",
        "kafka://h:99999",
        "kafka://h:abc",
        "mem://images",
        "localhost:9092",
    ],
)
def test_a_bad_broker_url_is_a_value_error_saying_broker_url(url: str) -> None:
    with pytest.raises(ValueError, match="broker URL") as caught:
        parse_broker(url)
    assert isinstance(caught.value, InvalidArgument)


def test_query_parameters_in_a_broker_url_point_to_options() -> None:
    with pytest.raises(InvalidArgument, match="options") as caught:
        parse_broker("kafka://h:1?sasl.password=hunter2")
    assert "hunter2" not in str(caught.value)


def test_cloudevents_prefix_is_the_binding_of_the_scheme() -> None:
    prefixes = {
        url: parse_broker(url).cloudevents_prefix for url in ("kafka://h:1", "gcppubsub://projects/p", "mem://")
    }
    assert prefixes == {"kafka://h:1": "ce_", "gcppubsub://projects/p": "ce-", "mem://": "ce-"}


def test_broker_url_help_lists_every_driver() -> None:
    text = broker_url_help()
    assert all(load_driver(scheme).BROKER_URL_FORM in text for scheme in schemes())
    assert "kafka://HOST:PORT[,HOST:PORT...]" in text and "gcppubsub://projects/PROJECT" in text and "mem://" in text


@pytest.mark.parametrize(
    "opening",
    [
        lambda: open_topic("kafka://127.0.0.1:99999/images"),
        lambda: open_subscription("kafka://127.0.0.1:abc/images?group=g"),
        lambda: open_topic("kafka://h1:9092,h2:0/images"),
        lambda: admin.create_topic("kafka://127.0.0.1:65536/images"),
        lambda: parse_broker("kafka://127.0.0.1:-1"),
    ],
)
def test_invalid_ports_are_refused_when_the_url_is_parsed(opening: Any) -> None:
    with pytest.raises(InvalidArgument, match=r"invalid port .* in 'kafka://"):
        opening()


@pytest.mark.parametrize(("scheme", "name"), [("kafka", "a/b"), ("kafka", ""), ("mem", "a?b"), ("gcppubsub", "a/b")])
def test_a_name_that_cannot_be_written_in_a_url_is_refused(scheme: str, name: str) -> None:
    broker = parse_broker({"kafka": "kafka://h:1", "mem": "mem://", "gcppubsub": "gcppubsub://projects/p"}[scheme])
    with pytest.raises(InvalidArgument, match="cannot be written"):
        broker.topic_url(name)


def test_schemes_are_the_names_of_the_driver_modules() -> None:
    assert schemes() == ("gcppubsub", "kafka", "mem")
    assert all(scheme == load_driver(scheme).SCHEME for scheme in schemes())


_FAKE_DRIVER = """
# A backend added as one module: the in-memory broker under another scheme.
from fashionstream.pubsub.driver import ApiConfig
from fashionstream.pubsub.drivers.mem import *  # noqa: F403

SCHEME = "fake"
BROKER_URL_FORM = "fake:// (a test double)"
API_BROKER_TYPE = "Fake"


def topic_url(broker, topic):
    return f"fake://{topic}"


def subscription_url(broker, topic, subscription):
    return f"fake://{topic}?subscription={subscription}"


def api_config(config):
    return ApiConfig("fake://", "fashionstream", create_missing=True)
"""


def test_a_new_driver_module_is_found_without_registering_it(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fake.py").write_text(_FAKE_DRIVER)
    monkeypatch.setattr(drivers, "__path__", [*drivers.__path__, str(tmp_path)])
    schemes.cache_clear()
    try:
        assert "fake" in schemes() and "fake://" in broker_url_help()
        broker = parse_broker("fake://")
        topic = broker.topic_url("t")
        admin.create_topic(topic)
        admin.create_subscription(broker.subscription_url("t", "s"))
        with open_topic(topic) as pub:
            pub.send(b"through a new backend").result(5)
        with open_subscription(broker.subscription_url("t", "s")) as sub:
            message = sub.receive(timeout=10)
            message.ack()
        assert message.data == b"through a new backend"
        assert PubSubAPI("Fake").topic_url("x") == "fake://x"
    finally:
        monkeypatch.undo()
        schemes.cache_clear()
        sys.modules.pop("fashionstream.pubsub.drivers.fake", None)


_CLIENTS = {
    "kafka": ("kafka://127.0.0.1:9092", ["confluent_kafka"], "kafka"),
    "gcppubsub": ("gcppubsub://projects/p", ["google.pubsub_v1", "google.api_core", "google.auth"], "gcp"),
}


@pytest.mark.parametrize("scheme", sorted(_CLIENTS))
def test_url_grammar_works_without_the_client_library(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    broker_url, client_modules, extra = _CLIENTS[scheme]
    for name in [m for m in sys.modules if m.startswith(f"fashionstream.pubsub.drivers.{scheme}")]:
        monkeypatch.delitem(sys.modules, name)
    for name in client_modules:
        monkeypatch.setitem(sys.modules, name, None)
    broker = parse_broker(broker_url)
    topic = broker.topic_url("images")
    assert admin.resource_names(parse_url(topic)) == ("images", None)
    assert extra == load_driver(scheme).EXTRA
    with pytest.raises(MissingExtra, match=rf"pip install 'fashionstream\[{extra}\]'"):
        open_topic(topic)
    with pytest.raises(MissingExtra, match=rf"pip install 'fashionstream\[{extra}\]'"):
        admin.create_topic(topic)


def test_our_own_missing_module_is_a_plain_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fashionstream.pubsub.drivers.kafka.topic", None)
    with pytest.raises(ImportError) as caught:
        open_topic("kafka://127.0.0.1:9092/images")
    assert not isinstance(caught.value, MissingExtra)


def test_every_error_code_has_one_exception_and_a_neutral_hint() -> None:
    classes = {code: type(errors.from_code(code, "x")) for code in ErrorCode}
    assert len(set(classes.values())) == len(ErrorCode)
    native = OSError("native")
    for code in ErrorCode:
        error = errors.from_code(code, "opening thing", native)
        assert errors.code_of(error) is code
        assert error.__cause__ is native
        assert str(error).startswith("opening thing")
        # Hints must make sense from the CLI, Python or a container: no call names, no repository scripts.
        assert "fashionstream." not in str(error) and "scripts/" not in str(error)


def test_admin_topic_references_on_kafka_and_mem() -> None:
    kafka_sub = parse_url("kafka://h:1/images?group=g")
    assert admin.topic_reference("kafka://h:1/images", kafka_sub) == "images"
    assert admin.topic_reference("images", kafka_sub) == "images"
    assert admin.topic_reference("mem://images", parse_url("mem://images?subscription=s")) == "images"
    with pytest.raises(InvalidArgument, match="dead_letter_topic.*not a kafka:// URL"):
        admin.topic_reference("mem://images", kafka_sub, "dead_letter_topic")


# -- Publisher -----------------------------------------------------------------------------------


def test_send_validates_data_attributes_and_key(mem_topic: str) -> None:
    with open_topic(mem_topic) as pub:
        with pytest.raises(InvalidArgument, match="bytes"):
            pub.send("text")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="str to str"):
            pub.send(b"x", {"n": 1})  # type: ignore[dict-item]
        with pytest.raises(InvalidArgument, match="key"):
            pub.send(b"x", key=7)  # type: ignore[arg-type]
        assert pub.send(bytearray(b"ok")).result(5)


class ScriptedTopic:
    """A topic driver whose send_batch raises the scripted errors first. Used to test retry logic."""

    name = "scripted topic 'x'"

    def __init__(self, failures: list[BaseException], barrier: threading.Barrier | None = None) -> None:
        self.failures = failures
        self.barrier = barrier
        self.batches: list[int] = []
        self.closed = False
        self.confirmed = 0
        self._lock = threading.Lock()

    def send_batch(self, messages: Sequence[OutgoingMessage], timeout: float) -> list[str]:
        if self.barrier is not None:
            self.barrier.wait()  # passes only when max_in_flight batches are in flight together
        with self._lock:
            self.batches.append(len(messages))
            if self.failures:
                raise self.failures.pop(0)
            start, self.confirmed = self.confirmed, self.confirmed + len(messages)
        return [str(start + i) for i in range(len(messages))]

    def is_retryable(self, error: BaseException) -> bool:
        return isinstance(error, ConnectionError)

    def error_code(self, error: BaseException) -> ErrorCode:
        if isinstance(error, ConnectionError):
            return ErrorCode.UNAVAILABLE
        return ErrorCode.NOT_FOUND if isinstance(error, LookupError) else ErrorCode.UNKNOWN

    def close(self) -> None:
        self.closed = True


def test_retryable_errors_are_retried() -> None:
    driver = ScriptedTopic([ConnectionError("blip"), ConnectionError("blip")])
    with Publisher(driver) as pub:
        assert pub.send(b"x").result(10) == "0"
    assert len(driver.batches) == 3
    assert driver.closed


def test_non_retryable_error_is_wrapped_with_name_and_cause() -> None:
    native = LookupError("no such topic")
    driver = ScriptedTopic([native])
    with Publisher(driver) as pub:
        error = pub.send(b"x").exception(10)
    assert isinstance(error, NotFound)
    assert "scripted topic 'x'" in str(error) and "no such topic" in str(error)
    assert error.__cause__ is native
    assert len(driver.batches) == 1


def test_retries_stop_at_send_timeout() -> None:
    driver = ScriptedTopic([ConnectionError("down")] * 1000)
    with Publisher(driver, PublisherSettings(send_timeout=0.3)) as pub:
        error = pub.send(b"x").exception(10)
    assert isinstance(error, Unavailable)


def test_batches_respect_batch_size_and_flush_sends_at_once() -> None:
    driver = ScriptedTopic([])
    pub = Publisher(driver, PublisherSettings(batch_size=10, linger=60))
    futures = [pub.send(b"x") for _ in range(25)]
    pub.flush(timeout=10)  # does not wait out the 60 s linger
    assert all(f.done() for f in futures)
    assert max(driver.batches) <= 10 and sum(driver.batches) == 25
    assert sorted(f.result() for f in futures) == sorted(str(i) for i in range(25))
    pub.close()


def test_batches_are_sent_concurrently() -> None:
    driver = ScriptedTopic([], barrier=threading.Barrier(4, timeout=10))
    with Publisher(driver, PublisherSettings(batch_size=1, max_in_flight=4, linger=0)) as pub:
        futures = [pub.send(b"x") for _ in range(4)]
        assert all(f.exception(15) is None for f in futures)


class RecordingTopic(ScriptedTopic):
    """Records the order messages are accepted in; a batch's first attempt fails (retryably) when told to."""

    def __init__(self, fail_first_attempt_of: set[bytes]) -> None:
        super().__init__([])
        self.fail_first_attempt_of = fail_first_attempt_of
        self.accepted: list[tuple[str | None, bytes]] = []

    def send_batch(self, messages: Sequence[OutgoingMessage], timeout: float) -> list[str]:
        with self._lock:
            if messages[0].data in self.fail_first_attempt_of:
                self.fail_first_attempt_of.discard(messages[0].data)
                raise ConnectionError("blip")  # retried after a backoff of 25-50 ms
            self.accepted.extend((m.key, m.data) for m in messages)
        time.sleep(0.001)  # a round trip, so batches overlap
        return super().send_batch(messages, timeout)


def test_a_retried_batch_is_not_overtaken_by_later_batches_of_its_key() -> None:
    # Batches of one message, four in flight: the batches after a failed one must wait for its retry.
    driver = RecordingTopic(fail_first_attempt_of={b"a-0", b"b-5"})
    sent = [(key, f"{key}-{i}".encode()) for i in range(30) for key in ("a", "b", "c")]
    with Publisher(driver, PublisherSettings(batch_size=1, max_in_flight=4, linger=0)) as pub:
        futures = [pub.send(body, key=key) for key, body in sent]
        assert all(f.exception(15) is None for f in futures)
    for key in ("a", "b", "c"):
        expected = [body for k, body in sent if k == key]
        assert [body for k, body in driver.accepted if k == key] == expected, key


class GatedTopic(ScriptedTopic):
    """Holds every batch until the gate opens: a broker that stopped answering."""

    def __init__(self) -> None:
        super().__init__([])
        self.gate = threading.Event()
        self.entered = threading.Event()

    def send_batch(self, messages: Sequence[OutgoingMessage], timeout: float) -> list[str]:
        self.entered.set()
        self.gate.wait(30)
        return super().send_batch(messages, timeout)


def test_send_blocks_then_times_out_when_the_backlog_is_full() -> None:
    driver = GatedTopic()
    settings = PublisherSettings(batch_size=1, max_in_flight=1, max_queued=1, linger=0, send_timeout=0.3)
    pub = Publisher(driver, settings)
    first = pub.send(b"1")  # taken by the only sender, which the gate holds
    assert driver.entered.wait(10)  # the first batch is inside the driver
    second = pub.send(b"2")  # waits in the queue: the backlog is now full
    with pytest.raises(Timeout, match="still queued"):
        pub.send(b"3")
    driver.gate.set()
    pub.close()
    assert first.result(10) and second.result(10)


def test_send_after_close_raises_closed_and_close_is_idempotent() -> None:
    pub = Publisher(ScriptedTopic([]))
    pub.close()
    pub.close()
    with pytest.raises(Closed, match="scripted topic"):
        pub.send(b"x")


# -- send_batch ----------------------------------------------------------------------------------


def test_send_batch_validates_every_message_before_queueing_any() -> None:
    driver = ScriptedTopic([])
    with Publisher(driver) as pub:
        for bad, match in [
            ([OutgoingMessage(b"ok"), OutgoingMessage("text")], "message 1 of the batch: .*bytes"),  # type: ignore[arg-type]
            ([(b"ok",), (b"x", {"n": 1})], "message 1 of the batch: .*str to str"),
            ([(b"x", None, 7)], "message 0 of the batch: .*key"),
            ([b"bare bytes"], "message 0 of the batch must be an OutgoingMessage"),
        ]:
            with pytest.raises(InvalidArgument, match=match):
                pub.send_batch(bad)
        assert pub.send_batch([]).result(5) == []
    assert driver.batches == []  # nothing of a refused batch was sent


def test_send_batch_resolves_to_ids_in_the_callers_order() -> None:
    driver = ScriptedTopic([])
    with Publisher(driver, PublisherSettings(batch_size=4, max_in_flight=3)) as pub:
        # Keys spread the batch over the lanes; the ids still come back in the batch's order.
        messages = [OutgoingMessage(f"{i}".encode(), key=f"k{i % 5}" if i % 2 else None) for i in range(25)]
        ids = pub.send_batch(messages).result(10)
    assert len(ids) == 25 and len(set(ids)) == 25
    assert sum(driver.batches) == 25 and max(driver.batches) <= 4


def test_send_batch_keeps_key_order_with_sends_and_retries() -> None:
    # A batch's messages of one key, and sends of that key before and after it, in one order,
    # although a batch of the key fails once and is retried.
    driver = RecordingTopic(fail_first_attempt_of={b"a-3"})
    with Publisher(driver, PublisherSettings(batch_size=2, max_in_flight=4, linger=0)) as pub:
        futures: list[Any] = [pub.send(b"a-0", key="a"), pub.send(b"b-0", key="b")]
        futures.append(pub.send_batch([(f"{k}-{i}".encode(), None, k) for i in range(1, 6) for k in ("a", "b", "c")]))
        futures.append(pub.send(b"a-6", key="a"))
        assert all(f.exception(15) is None for f in futures)
    for key in ("a", "b", "c"):
        order = [body for k, body in driver.accepted if k == key]
        assert order == sorted(order, key=lambda body: int(body.split(b"-")[1])), key


def test_send_batch_does_not_wait_for_linger() -> None:
    driver = ScriptedTopic([])
    with Publisher(driver, PublisherSettings(linger=600)) as pub:
        assert pub.send_batch([OutgoingMessage(b"now")]).result(30) == ["0"]


def test_one_failed_lane_fails_the_batch_future_with_one_error() -> None:
    driver = ScriptedTopic([LookupError("no such topic")])
    with Publisher(driver, PublisherSettings(max_in_flight=2)) as pub:
        error = pub.send_batch([(b"x", None, "k1"), (b"y", None, "k2")]).exception(10)
    assert isinstance(error, NotFound) and "scripted topic 'x'" in str(error)


def test_send_batch_larger_than_the_backlog_goes_in_pieces() -> None:
    driver = ScriptedTopic([])
    settings = PublisherSettings(batch_size=3, max_in_flight=2, max_queued=4, linger=0)
    with Publisher(driver, settings) as pub:
        ids = pub.send_batch([OutgoingMessage(f"{i}".encode()) for i in range(20)]).result(10)
    assert len(ids) == 20 and sum(driver.batches) == 20


def test_send_batch_times_out_when_the_backlog_stays_full() -> None:
    driver = GatedTopic()
    settings = PublisherSettings(batch_size=1, max_in_flight=1, max_queued=1, linger=0, send_timeout=0.3)
    pub = Publisher(driver, settings)
    first = pub.send(b"1")
    assert driver.entered.wait(10)
    second = pub.send(b"2")  # the backlog is full now
    with pytest.raises(Timeout, match="still queued"):
        pub.send_batch([OutgoingMessage(b"3")])  # nothing of it was queued: raised, not in a future
    driver.gate.set()
    pub.close()
    assert first.result(10) and second.result(10)


def test_send_batch_after_close_raises_closed() -> None:
    pub = Publisher(ScriptedTopic([]))
    pub.close()
    with pytest.raises(Closed, match="scripted topic"):
        pub.send_batch([OutgoingMessage(b"x")])


# -- the futures send() returns --------------------------------------------------------------------


def test_send_future_behaves_like_a_future_for_waiters_and_callbacks() -> None:
    waiting, late, cancelled, failing = SendFuture[str](), SendFuture[str](), SendFuture[str](), SendFuture[str]()
    seen: list[str] = []
    waiting.add_done_callback(lambda f: seen.append(f.result()))
    assert cancelled.cancel() and cancelled.cancelled()
    waiter = concurrent.futures.ThreadPoolExecutor(1).submit(waiting.result, 10)
    done_waiter = concurrent.futures.ThreadPoolExecutor(1).submit(
        concurrent.futures.wait, [waiting, late], 10, concurrent.futures.ALL_COMPLETED
    )
    time.sleep(0.05)  # let both start waiting (they pass either way)
    resolve_all([waiting, late, cancelled], ["a", "b", "c"])  # a cancelled future is skipped
    fail_all([failing], NotFound("gone"))
    assert waiter.result(10) == "a" and seen == ["a"]
    assert len(done_waiter.result(10).done) == 2
    assert late.done() and late.result() == "b" and late.exception() is None
    assert [f.result() for f in concurrent.futures.as_completed([late, waiting], timeout=10)] in (
        ["a", "b"],
        ["b", "a"],
    )
    late.add_done_callback(lambda f: seen.append(f.result()))  # on a done future: runs at once
    assert seen == ["a", "b"]
    assert isinstance(failing.exception(), NotFound)
    with pytest.raises(NotFound):
        failing.result()
    assert not SendFuture[str]().done()
    with pytest.raises(concurrent.futures.TimeoutError):
        SendFuture[str]().result(timeout=0.01)


# -- Subscriber ----------------------------------------------------------------------------------


def test_emulated_ack_deadline_redelivers(mem_topic: str) -> None:
    sub_url = mem_subscription(mem_topic, ack_deadline_s=600)  # the broker alone would wait 10 minutes
    with open_topic(mem_topic) as pub:
        pub.send(b"slow").result(5)
    driver = mem.open_subscription_driver(parse_url(sub_url), {})
    with Subscriber(driver, SubscriberSettings(ack_deadline=0.2), native_ack_deadlines=False) as sub:
        first = sub.receive(timeout=10)
        second = sub.receive(timeout=10)  # not acked in time: the portable layer nacked it
        assert first.acked_or_nacked
        first.ack()  # too late: ignored
        second.ack()
    assert (first.data, first.delivery_attempt, second.data, second.delivery_attempt) == (b"slow", 1, b"slow", 2)


def test_mem_native_ack_deadline_redelivers(mem_topic: str) -> None:
    sub_url = mem_subscription(mem_topic, ack_deadline_s=1)
    with open_topic(mem_topic) as pub:
        pub.send(b"late").result(5)
    with open_subscription(sub_url) as sub:
        sub.receive(timeout=10)
        again = sub.receive(timeout=30)
        again.ack()
    assert again.delivery_attempt == 2


def test_mem_dead_letter_after_max_delivery_attempts(mem_topic: str, unique_name: Any) -> None:
    dead_url = f"mem://{unique_name('dead')}"
    admin.create_topic(dead_url)
    dead_sub = mem_subscription(dead_url)
    sub_url = mem_subscription(mem_topic, dead_letter_topic=dead_url, max_delivery_attempts=2)
    with open_topic(mem_topic) as pub:
        pub.send(b"poison", {"why": "bad"}).result(5)
    with open_subscription(sub_url) as sub:
        sub.receive(timeout=10).nack()
        sub.receive(timeout=10).nack()
        assert sub.receive_batch(10, timeout=0.5) == []
    with open_subscription(dead_sub) as sub:
        dead = sub.receive(timeout=10)
        dead.ack()
    assert (dead.data, dead.attributes) == (b"poison", {"why": "bad"})


def test_mem_holds_back_a_key_while_its_earlier_message_is_outstanding(mem_topic: str) -> None:
    sub_url = mem_subscription(mem_topic)
    with open_topic(mem_topic) as pub:
        for body in (b"k-1", b"k-2"):
            pub.send(body, key="k").result(5)
        pub.send(b"other", key="o").result(5)
    with open_subscription(sub_url) as sub:
        first = sub.receive(timeout=10)
        other = sub.receive(timeout=10)
        assert (first.data, other.data) == (b"k-1", b"other")
        assert sub.receive_batch(10, timeout=0.5) == []  # k-2 waits for k-1
        first.nack()
        again = sub.receive(timeout=10)
        assert again.data == b"k-1"  # redelivered before k-2, not after
        again.ack()
        other.ack()
        assert sub.receive(timeout=10).data == b"k-2"


def test_close_flushes_acks(mem_topic: str) -> None:
    sub_url = mem_subscription(mem_topic)
    with open_topic(mem_topic) as pub:
        pub.send(b"once").result(5)
    with open_subscription(sub_url) as sub:
        sub.receive(timeout=10).ack()
    with open_subscription(sub_url) as sub:
        assert sub.receive_batch(10, timeout=0.5) == []


def test_deleted_subscription_surfaces_not_found(mem_topic: str) -> None:
    sub_url = mem_subscription(mem_topic, name="doomed")
    with open_subscription(sub_url) as sub:
        admin.delete_subscription(sub_url)
        with pytest.raises(NotFound, match="doomed"):
            sub.receive(timeout=10)


def test_iteration_ends_when_closed_from_another_thread(mem_topic: str) -> None:
    sub_url = mem_subscription(mem_topic)
    with open_topic(mem_topic) as pub:
        pub.send(b"a").result(5)
    sub = open_subscription(sub_url)
    seen = []
    for message in sub:
        seen.append(message.data)
        message.ack()
        threading.Thread(target=sub.close).start()
    assert seen == [b"a"]


class NoNackSubscription:
    """A subscription driver that cannot nack, to check what nack() then does."""

    name = "no-nack subscription"

    def __init__(self) -> None:
        self.sent = False

    def receive_batch(self, max_messages: int, timeout: float) -> list[IncomingMessage]:
        if self.sent:
            threading.Event().wait(timeout)
            return []
        self.sent = True
        return [IncomingMessage(data=b"x", attributes={}, key=None, id="1", ack_id=1)]

    def send_acks(self, ack_ids: Sequence[Hashable]) -> None:
        pass

    def can_nack(self) -> bool:
        return False

    def send_nacks(self, ack_ids: Sequence[Hashable]) -> None:
        raise AssertionError("never called when can_nack() is False")

    def is_retryable(self, error: BaseException) -> bool:
        return False

    def error_code(self, error: BaseException) -> ErrorCode:
        return ErrorCode.UNKNOWN

    def close(self) -> None:
        pass


def test_nack_on_a_backend_without_nack_is_an_error() -> None:
    with Subscriber(NoNackSubscription()) as sub:
        message = sub.receive(timeout=10)
        with pytest.raises(InvalidArgument, match="cannot nack"):
            message.nack()
        with pytest.raises(InvalidArgument, match="cannot nack"):
            sub.nack([message])
        message.ack()


class RecordingSubscription(NoNackSubscription):
    """Hands out `count` messages once, records which thread fetched and every ack, signalling each."""

    name = "recording subscription"

    def __init__(self, count: int = 3) -> None:
        super().__init__()
        self.count = count
        self.fetchers: set[str] = set()
        self.acked: list[Hashable] = []
        self.ack_arrived = threading.Event()

    def receive_batch(self, max_messages: int, timeout: float) -> list[IncomingMessage]:
        self.fetchers.add(threading.current_thread().name)
        if self.sent:
            threading.Event().wait(timeout)
            return []
        self.sent = True
        return [IncomingMessage(f"m{i}".encode(), {}, None, str(i), i) for i in range(self.count)]

    def send_acks(self, ack_ids: Sequence[Hashable]) -> None:
        self.acked.extend(ack_ids)
        self.ack_arrived.set()

    def can_nack(self) -> bool:
        return True

    def send_nacks(self, ack_ids: Sequence[Hashable]) -> None:
        pass


class EndlessSubscription(RecordingSubscription):
    """One new message per receive_batch call, for ever."""

    def receive_batch(self, max_messages: int, timeout: float) -> list[IncomingMessage]:
        self.fetchers.add(threading.current_thread().name)
        self.count += 1
        return [IncomingMessage(b"m", {}, None, str(self.count), self.count)]


def test_a_receiving_caller_fetches_on_its_own_thread() -> None:
    # No hand-over from a fetching thread: a caller that finds the buffer empty calls the driver.
    driver = EndlessSubscription()

    def receive_some() -> None:
        for _ in range(20):
            sub.ack(sub.receive_batch(10, timeout=10))

    with Subscriber(driver) as sub:
        caller = threading.Thread(target=receive_some, name="caller")
        caller.start()
        caller.join(10)
    assert "caller" in driver.fetchers


def test_an_ack_reaches_the_broker_while_another_thread_waits_for_messages() -> None:
    # poll_interval is long: an ack must not wait for it while a receiver sits in the driver.
    driver = RecordingSubscription()
    with Subscriber(driver, SubscriberSettings(poll_interval=60)) as sub:
        messages = sub.receive_batch(10, timeout=10)

        def wait_for_more() -> None:
            with pytest.raises(Closed):  # the subscriber closes under it at the end
                sub.receive_batch(10, timeout=30)

        waiter = threading.Thread(target=wait_for_more, daemon=True)
        waiter.start()
        messages[0].ack()
        assert driver.ack_arrived.wait(10), "the ack waited for the receiver's poll"
    assert driver.acked == [0]


def test_batch_ack_settles_each_message_once_and_other_subscribers_messages_through_their_own() -> None:
    first, second = RecordingSubscription(), RecordingSubscription()
    with Subscriber(first) as one, Subscriber(second) as two:
        ours, theirs = one.receive_batch(10, timeout=10), two.receive_batch(10, timeout=10)
        ours[0].nack()  # first settlement wins: the batch ack leaves it nacked
        one.ack([*ours, *ours, theirs[1]])
        assert all(m.acked_or_nacked for m in ours) and theirs[1].acked_or_nacked
        assert not theirs[0].acked_or_nacked
    assert sorted(first.acked) == [1, 2] and second.acked == [1]


def test_acks_after_close_are_ignored() -> None:
    driver = RecordingSubscription()
    sub = Subscriber(driver)
    messages = sub.receive_batch(10, timeout=10)
    sub.close()
    sub.ack(messages)
    messages[0].ack()
    assert driver.acked == []  # close() handed them back instead


def test_emulated_deadlines_do_not_keep_settled_messages(mem_topic: str) -> None:
    sub_url = mem_subscription(mem_topic, ack_deadline_s=600)
    with open_topic(mem_topic) as pub:
        pub.send_batch([OutgoingMessage(f"{i}".encode()) for i in range(50)]).result(5)
    with open_subscription(sub_url, ack_deadline=600) as sub:
        got: list[Any] = []
        while len(got) < 50:
            batch = sub.receive_batch(50, timeout=10)
            sub.ack(batch)
            got.extend(batch)
        # Settled messages are not kept until their deadline (at a high rate that was most of the cost).
        assert not _holds_any(vars(sub), {id(m) for m in got})


def _holds_any(container: Any, wanted: set[int], depth: int = 3) -> bool:
    """Whether `container` holds one of the objects with ids `wanted`, up to `depth` containers deep."""
    items = container.values() if isinstance(container, dict) else container
    for item in items:
        if id(item) in wanted:
            return True
        if depth and isinstance(item, list | tuple | dict | collections.deque) and _holds_any(item, wanted, depth - 1):
            return True
    return False


# -- admin ---------------------------------------------------------------------------------------


def test_admin_create_is_idempotent_and_checks_the_topic(unique_name: Any) -> None:
    url = f"mem://{unique_name('t')}"
    assert admin.create_topic(url) is True
    assert admin.create_topic(url) is False
    assert admin.create_subscription(f"{url}?subscription=s") is True
    assert admin.create_subscription(f"{url}?subscription=s") is False
    missing = unique_name("absent")
    with pytest.raises(NotFound, match=missing):
        admin.create_subscription(f"mem://{missing}?subscription=s")
    with pytest.raises(InvalidArgument, match="contradicts"):
        admin.create_subscription(f"{url}?subscription=s2", topic="other")


@pytest.mark.parametrize("reference", ["images", "projects/P/topics/images", "gcppubsub://projects/P/topics/images"])
def test_pubsub_topic_references_resolve_to_the_short_name(reference: str) -> None:
    url = parse_url("gcppubsub://projects/P/subscriptions/service")
    assert admin.resource_names(url) == (None, "service")
    assert admin.topic_reference(reference, url, "topic") == "images"


def test_pubsub_topic_in_another_project_is_rejected() -> None:
    url = parse_url("gcppubsub://projects/P/subscriptions/service")
    with pytest.raises(InvalidArgument, match="another project"):
        admin.topic_reference("projects/Q/topics/images", url, "topic")


# -- PubSubAPI facade ----------------------------------------------------------------------------


def test_pubsub_api_memory_round_trip(unique_name: Any) -> None:
    topic = unique_name("api")
    with PubSubAPI("Memory") as api:
        api.send(topic, {"id": "1", "image": "AAAA"}).result(5)
        api.send(topic, b"\x00raw").result(5)
        got = []
        while len(got) < 2:
            got.extend(api.receive(topic, max_messages=10, timeout=5))
    assert got == [{"id": "1", "image": "AAAA"}, b"\x00raw"]


def test_pubsub_api_makes_urls_from_its_config_through_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "h1:9093")
    monkeypatch.setenv("PUBSUB_PROJECT_ID", "p9")
    kafka_api = PubSubAPI("Kafka", group_id="svc")  # connects nowhere until the first send / receive
    assert kafka_api.topic_url("images") == "kafka://h1:9093/images"
    assert kafka_api.subscription_url("images") == "kafka://h1:9093/images?group=svc"
    assert PubSubAPI("Kafka", bootstrap_servers="h2:1").topic_url("t") == "kafka://h2:1/t"
    gcp_api = PubSubAPI("GooglePubSub")
    assert gcp_api.subscription_url("svc") == "gcppubsub://projects/p9/subscriptions/svc"
    assert PubSubAPI("Memory").subscription_url("t") == "mem://t?subscription=fashionstream"
    monkeypatch.delenv("PUBSUB_PROJECT_ID")
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    with pytest.raises(InvalidArgument, match="project_id"):
        PubSubAPI("GooglePubSub")


def test_pubsub_api_rejects_unknown_broker_type() -> None:
    with pytest.raises(InvalidArgument, match="GooglePubSub, Kafka, Memory"):
        PubSubAPI("RabbitMQ")


def test_pubsub_api_round_trip_on_every_backend(backend: Any) -> None:
    topic_url = backend.new_topic()
    sub_url = backend.new_subscription(topic_url)
    topic = backend.topic_of(topic_url)
    subscription = admin.resource_names(parse_url(sub_url))[1]
    if backend.name == "kafka":
        api = PubSubAPI(
            "Kafka", bootstrap_servers=backend.kafka_servers, group_id=subscription, **backend.subscriber_options
        )
        source = topic
    elif backend.name == "gcp":
        api = PubSubAPI("GooglePubSub", project_id=backend.project)
        source = subscription
    else:
        api = PubSubAPI("Memory", subscription=subscription, create_missing=False)
        source = topic
    with api:
        api.send(topic, {"id": "7", "image": "AAAA"}).result(60)
        got: list[Any] = []
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            got = api.receive(source, max_messages=10, timeout=1)
    assert got == [{"id": "7", "image": "AAAA"}]


def test_settled_messages_are_released_before_their_emulated_deadline(mem_topic: str) -> None:
    """Acked and nacked messages are dropped at once (not kept until the deadline), and leave the byte count."""
    sub_url = mem_subscription(mem_topic)
    with open_topic(mem_topic) as pub:
        for body in (b"a" * 1000, b"b" * 2000, b"c" * 3000):
            pub.send(body).result(5)
    driver = mem.open_subscription_driver(parse_url(sub_url), {})
    with Subscriber(driver, SubscriberSettings(ack_deadline=600), native_ack_deadlines=False) as sub:
        messages: list[Message] = []
        while len(messages) < 3:
            messages.extend(sub.receive_batch(3, timeout=10))
        assert sub.held_bytes == 6000
        acked, nacked, kept = sorted(messages, key=lambda m: m.data)
        acked.ack()
        nacked.nack()  # comes back as a new Message, which the worker may fetch ahead at any moment

        def holders(message: Message) -> list[Any]:
            """What refers to `message` besides this test's own list and frames."""
            return [r for r in gc.get_referrers(message) if r is not messages and not isinstance(r, types.FrameType)]

        assert holders(acked) == [] and holders(nacked) == []
        assert holders(kept) != []  # the check can see a holder: the subscriber's, until it is settled
        kept.ack()
        again = sub.receive(timeout=10)
        assert again.data == nacked.data and sub.held_bytes == len(again.data)
        again.ack()
        assert holders(kept) == [] and sub.held_bytes == 0
