"""`PubSubAPI`: a `send(topic, message)` / `receive(name)` facade over the portable layer.

For code written against the `PubSubAPI(broker_type, **config)` interface:

    api = PubSubAPI("Kafka", bootstrap_servers="127.0.0.1:9092", group_id="service")
    api.send("images", {"id": "1", "image": "..."})      # dict -> JSON body
    for body in api.receive("images", max_messages=10):  # decoded JSON (dict) or raw bytes, acked
        ...
    api.close()

New code should use `open_topic` / `open_subscription`, which expose
batching, futures and explicit acks. The facade keeps one publisher per topic
and one subscriber per source, and closes them all on `close()`. Each backend's
driver says what its `broker_type` is called and which config keys it reads
(`api_config` in `drivers/<scheme>`).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from fashionstream.pubsub import admin
from fashionstream.pubsub.broker import parse_broker
from fashionstream.pubsub.drivers import api_driver
from fashionstream.pubsub.errors import InvalidArgument
from fashionstream.pubsub.message import Message
from fashionstream.pubsub.publisher import PUBLISHER_OPTIONS, Publisher
from fashionstream.pubsub.subscriber import SUBSCRIBER_OPTIONS, Subscriber


class PubSubAPI:
    """One broker, addressed by short topic / subscription names.

    broker_type and config (each driver's `api_config` reads its own keys):
      "Kafka":        bootstrap_servers (default $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092),
                      group_id (consumer group of receive(); default "fashionstream"),
                      any librdkafka option, e.g. **{"security.protocol": "SASL_SSL"}.
      "GooglePubSub": project_id (default $PUBSUB_PROJECT_ID or $GOOGLE_CLOUD_PROJECT), client options.
      "Memory":       subscription (name used by receive(); default "fashionstream").
    Common: create_missing (create topics / subscriptions on first use; the default is the
    backend's: on for Memory only), and the portable options of open_topic / open_subscription
    (linger, ack_deadline, ...).
    """

    def __init__(self, broker_type: str, **config: Any) -> None:
        driver = api_driver(broker_type)
        settings = driver.api_config(config)  # takes the backend's own keys out of config
        self.broker_type = broker_type
        self.broker = parse_broker(settings.broker_url)
        # None: receive(source) names a subscription; else it names a topic read as this subscription.
        self._subscription = settings.subscription
        self._create_missing = bool(config.pop("create_missing", settings.create_missing))
        self._topic_options = {k: v for k, v in config.items() if k not in SUBSCRIBER_OPTIONS}
        self._subscription_options = {k: v for k, v in config.items() if k not in PUBLISHER_OPTIONS}
        self._lock = threading.Lock()
        self._publishers: dict[str, Publisher] = {}
        self._subscribers: dict[str, Subscriber] = {}

    # -- URLs ----------------------------------------------------------------------------------

    def topic_url(self, topic: str) -> str:
        return self.broker.topic_url(topic)

    def subscription_url(self, source: str, topic: str | None = None) -> str:
        """The URL receive(source) reads: topic `source` as the configured subscription, or subscription `source`."""
        if self._subscription is not None:
            return self.broker.subscription_url(source, self._subscription)
        # Such backends' subscription URLs do not contain the topic (see `ApiConfig.subscription`).
        return self.broker.subscription_url(topic or source, source)

    # -- send / receive -------------------------------------------------------------------------

    def send(
        self, topic: str, message: dict[str, Any] | bytes | str, attributes: dict[str, str] | None = None
    ) -> Future[str]:
        """Send `message` (a dict goes as a JSON body, a str as UTF-8); returns the message-id future."""
        if isinstance(message, dict):
            data = json.dumps(message, separators=(",", ":")).encode()
        elif isinstance(message, str):
            data = message.encode()
        elif isinstance(message, bytes | bytearray):
            data = bytes(message)
        else:
            raise InvalidArgument(f"message must be a dict, str or bytes, got {type(message).__name__}")
        return self._publisher(topic).send(data, attributes)

    def receive(self, source: str, max_messages: int = 1, timeout: float = 1.0, topic: str | None = None) -> list[Any]:
        """Up to `max_messages` message bodies, acked: JSON decoded where it parses, bytes otherwise.

        `source` is the topic on Kafka (group `group_id`) and Memory, the subscription on
        GooglePubSub (`topic` is then needed only to create it when create_missing is on).
        Returns [] if nothing arrived within `timeout` seconds.
        """
        subscriber = self._subscriber(source, topic)
        messages = subscriber.receive_batch(max_messages, timeout)
        bodies = [_decode(message.data) for message in messages]
        subscriber.ack(messages)
        return bodies

    def receive_messages(
        self, source: str, max_messages: int = 1, timeout: float = 1.0, topic: str | None = None
    ) -> list[Message]:
        """Like receive(), but returns `Message` objects that the caller acks."""
        return self._subscriber(source, topic).receive_batch(max_messages, timeout)

    def flush(self, timeout: float | None = None) -> None:
        with self._lock:
            publishers = list(self._publishers.values())
        for publisher in publishers:
            publisher.flush(timeout)

    def close(self) -> None:
        """Flush and close every publisher and subscriber opened by this facade."""
        with self._lock:
            closing: list[Publisher | Subscriber] = [*self._publishers.values(), *self._subscribers.values()]
            self._publishers.clear()
            self._subscribers.clear()
        for thing in closing:
            thing.close()

    def __enter__(self) -> PubSubAPI:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _publisher(self, topic: str) -> Publisher:
        from fashionstream.pubsub import open_topic

        with self._lock:
            publisher = self._publishers.get(topic)
            if publisher is None:
                url = self.topic_url(topic)
                if self._create_missing:
                    admin.create_topic(url)
                    if self._subscription is not None:
                        # A subscription only sees what is published after it exists (mem, Pub/Sub):
                        # make the facade's subscription now, so send-then-receive works.
                        admin.create_subscription(self.subscription_url(topic))
                publisher = self._publishers[topic] = open_topic(url, **self._topic_options)
            return publisher

    def _subscriber(self, source: str, topic: str | None) -> Subscriber:
        from fashionstream.pubsub import open_subscription

        with self._lock:
            subscriber = self._subscribers.get(source)
            if subscriber is None:
                url = self.subscription_url(source, topic)
                if self._create_missing:
                    if self._subscription is None:  # `source` is a subscription: its topic must be named
                        if topic is None:
                            raise InvalidArgument(f"creating subscription {source!r} needs topic=...")
                        admin.create_topic(self.topic_url(topic))
                    else:
                        admin.create_topic(self.topic_url(source))
                    admin.create_subscription(url, topic=topic)
                subscriber = self._subscribers[source] = open_subscription(url, **self._subscription_options)
            return subscriber


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return data
