"""Shared pytest fixtures: real brokers, unique names, and a `backend` fixture over mem / Kafka / Pub/Sub.

Fixtures for any test that talks to a broker (the pub/sub conformance suite,
pipeline tests, ...):

- `kafka_bootstrap` (session): "host:port" of a running Kafka broker, from
  KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092), checked with a metadata
  request that must answer within a few seconds.
- `pubsub_emulator` (session): an `Emulator(host, project)` for the Pub/Sub
  emulator, from PUBSUB_EMULATOR_HOST (default 127.0.0.1:8085) and
  PUBSUB_PROJECT_ID (default "fashionstream-test"); it also sets
  PUBSUB_EMULATOR_HOST for the client library.
  When a broker is unreachable these fixtures FAIL the test if CI=true and skip
  it otherwise (so a laptop without Kafka can still run the rest).
- `unique_name` (function): a factory of collision-free names, `unique_name("images")`
  -> "images-3f2a9c1d7e"; runs never see each other's topics.
- `backend` (function, parametrized "mem", "kafka", "gcp" with marks kafka / gcp):
  a `Backend` around one broker URL (`backend.broker_url`: "mem://",
  "kafka://127.0.0.1:9092", "gcppubsub://projects/P") that makes topic and
  subscription URLs with `fashionstream.pubsub.parse_broker` (the drivers' own
  URL rules) and creates topics and subscriptions through
  `fashionstream.pubsub.admin`, deleting them after the test:

      def test_round_trip(backend):
          topic = backend.new_topic()                    # URL of a fresh topic
          sub = backend.new_subscription(topic)          # URL of a fresh subscription on it
          with open_topic(topic) as pub: pub.send(b"x").result()
          with open_subscription(sub, **backend.subscriber_options) as s: s.receive(timeout=30).ack()

  `backend.subscriber_options` holds the native options a test consumer should
  use (Kafka: short session timeouts so group rebalances take seconds), and
  `backend.dead_letter_options(dead_topic_url, n)` what a consumer of a subscription
  made with a dead-letter topic must be opened with (Kafka only; the others keep it).
- `external_backend`: like `backend` but only "kafka" and "gcp", for cases that
  need a broker outside this process (a consumer killed in a subprocess).

Select backends with markers: `pytest -m "not kafka and not gcp"` runs mem only.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from fashionstream.pubsub import Broker, admin, parse_broker
from fashionstream.pubsub.urls import parse_url

KAFKA_DEFAULT = "127.0.0.1:9092"
EMULATOR_DEFAULT = "127.0.0.1:8085"
PROJECT_DEFAULT = "fashionstream-test"


def broker_unavailable(message: str) -> None:
    """Fail under CI (a missing broker there is a broken set-up), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of a Kafka broker that answered a metadata request."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", KAFKA_DEFAULT)
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        broker_unavailable("confluent-kafka is not installed: pip install 'fashionstream[kafka]'")
    try:
        AdminClient({"bootstrap.servers": servers}).list_topics(timeout=5)
    except Exception as err:
        broker_unavailable(
            f"no Kafka broker answers at {servers} ({err}); start one with `scripts/services start` "
            "or set KAFKA_BOOTSTRAP_SERVERS"
        )
    return servers


@dataclass(frozen=True)
class Emulator:
    host: str
    project: str


@pytest.fixture(scope="session")
def pubsub_emulator() -> Emulator:
    """The Pub/Sub emulator's address and the project id tests use."""
    host = os.environ.get("PUBSUB_EMULATOR_HOST", EMULATOR_DEFAULT)
    project = os.environ.get("PUBSUB_PROJECT_ID", PROJECT_DEFAULT)
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=3) as response:
            response.read()
    except Exception as err:
        broker_unavailable(
            f"no Pub/Sub emulator answers at {host} ({err}); start it with `scripts/services start` "
            "or set PUBSUB_EMULATOR_HOST"
        )
    # google-cloud-pubsub talks to the emulator only when this variable is set.
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    return Emulator(host, project)


def _new_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """A factory of names unique to this test run: unique_name("images") -> "images-3f2a9c1d7e"."""
    return _new_name


@dataclass
class Backend:
    """One broker as tests see it: URL makers, fresh topics and subscriptions, options for consumers."""

    name: str  # "mem", "kafka" or "gcp"
    broker_url: str  # "mem://", "kafka://127.0.0.1:9092", "gcppubsub://projects/P"
    kafka_servers: str = ""  # "host:port" on Kafka
    project: str = ""  # the project on Pub/Sub
    subscriber_options: dict[str, object] = field(default_factory=dict)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    # -- URLs ------------------------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        return parse_broker(self.broker_url)

    def topic_url(self, topic: str) -> str:
        return self.broker.topic_url(topic)

    def subscription_url(self, topic: str, subscription: str) -> str:
        """URL of `subscription` on `topic` (Pub/Sub URLs name only the subscription)."""
        return self.broker.subscription_url(topic, subscription)

    @staticmethod
    def topic_of(topic_url: str) -> str:
        """The short topic name of a topic URL."""
        topic = admin.resource_names(parse_url(topic_url))[0]
        assert topic is not None, f"{topic_url!r} names no topic"
        return topic

    # -- resources -------------------------------------------------------------------------------

    def new_topic(self, prefix: str = "topic", partitions: int = 1) -> str:
        """Create a uniquely named topic, deleted after the test; returns its URL."""
        url = self.topic_url(_new_name(prefix))
        admin.create_topic(url, partitions=partitions)
        self._cleanups.append(lambda: admin.delete_topic(url))
        return url

    def new_subscription(
        self,
        topic_url: str,
        prefix: str = "sub",
        ack_deadline_s: int = 10,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
    ) -> str:
        """Create a uniquely named subscription on the topic, deleted after the test; returns its URL.

        Messages published after this call reach it (on Kafka: the group starts at the earliest offset).
        """
        topic = self.topic_of(topic_url)
        url = self.subscription_url(topic, _new_name(prefix))
        admin.create_subscription(
            url,
            topic=topic,
            ack_deadline_s=ack_deadline_s,
            dead_letter_topic=dead_letter_topic,
            max_delivery_attempts=max_delivery_attempts,
        )
        self._cleanups.append(lambda: admin.delete_subscription(url))
        return url

    def dead_letter_options(self, dead_letter_topic_url: str, max_delivery_attempts: int) -> dict[str, object]:
        """What `open_subscription` needs so that a subscription made with a dead-letter topic uses it.

        Kafka keeps no subscription settings, so its consumer is told when it opens the group;
        mem and Pub/Sub keep the policy `new_subscription` set on the subscription.
        """
        if self.name != "kafka":
            return {}
        return {
            "dead_letter_topic": self.topic_of(dead_letter_topic_url),
            "max_delivery_attempts": max_delivery_attempts,
        }

    def cleanup(self) -> None:
        # Subscriptions first, then topics: reverse creation order.
        for undo in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                undo()
        self._cleanups.clear()


def _make_backend(name: str, request: pytest.FixtureRequest) -> Backend:
    if name == "mem":
        return Backend("mem", "mem://")
    if name == "kafka":
        servers: str = request.getfixturevalue("kafka_bootstrap")
        # Short session timeouts: a killed consumer's partitions move within seconds, not 45 s.
        options: dict[str, object] = {
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "auto.offset.reset": "earliest",
        }
        return Backend("kafka", f"kafka://{servers}", kafka_servers=servers, subscriber_options=options)
    emulator: Emulator = request.getfixturevalue("pubsub_emulator")
    return Backend("gcp", f"gcppubsub://projects/{emulator.project}", project=emulator.project)


BACKEND_PARAMS = [
    pytest.param("mem", id="mem"),
    pytest.param("kafka", id="kafka", marks=pytest.mark.kafka),
    pytest.param("gcp", id="gcp", marks=pytest.mark.gcp),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each test using it runs once per backend: mem, kafka, gcp."""
    made = _make_backend(request.param, request)
    yield made
    made.cleanup()


@pytest.fixture(params=BACKEND_PARAMS[1:])
def external_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Kafka and Pub/Sub only: brokers that outlive the test process."""
    made = _make_backend(request.param, request)
    yield made
    made.cleanup()
