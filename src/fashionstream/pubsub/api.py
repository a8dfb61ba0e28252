"""`PubSubAPI`: the original system's interface, `send(topic, message)` / `receive(name)`, on the portable layer.

For code written against the original `PubSubAPI(broker_type, **config)`:

    api = PubSubAPI("Kafka", bootstrap_servers="127.0.0.1:9092", group_id="service")
    api.send("images", {"id": "1", "image": "..."})      # dict -> JSON body, like the original
    for body in api.receive("images", max_messages=10):  # decoded JSON (dict) or raw bytes, acked
        ...
    api.close()

New code should use `open_topic` / `open_subscription`, which expose
batching, futures and explicit acks. The facade keeps one publisher per topic
and one subscriber per source, and closes them all on `close()`.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from fashionstream.pubsub import admin
from fashionstream.pubsub.errors import InvalidArgument
from fashionstream.pubsub.message import Message
from fashionstream.pubsub.publisher import PUBLISHER_OPTIONS, Publisher
from fashionstream.pubsub.subscriber import SUBSCRIBER_OPTIONS, Subscriber

BROKER_TYPES = ("Kafka", "GooglePubSub", "Memory")


class PubSubAPI:
    """One broker, addressed by short topic / subscription names.

    broker_type and config:
      "Kafka":        bootstrap_servers (default $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092),
                      group_id (consumer group of receive(); default "fashionstream"),
                      any librdkafka option, e.g. **{"security.protocol": "SASL_SSL"}.
      "GooglePubSub": project_id (default $PUBSUB_PROJECT_ID or $GOOGLE_CLOUD_PROJECT), client options.
      "Memory":       subscription (name used by receive(); default "fashionstream").
    Common: create_missing (create topics / subscriptions on first use; default True for Memory only),
    and the portable options of open_topic / open_subscription (linger, ack_deadline, ...).
    """

    def __init__(self, broker_type: str, **config: Any) -> None:
        if broker_type not in BROKER_TYPES:
            raise InvalidArgument(f"unknown broker_type {broker_type!r}; accepted: {', '.join(BROKER_TYPES)}")
        self.broker_type = broker_type
        self._create_missing = bool(config.pop("create_missing", broker_type == "Memory"))
        if broker_type == "Kafka":
            self._servers = str(
                config.pop("bootstrap_servers", os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
            )
            self._group = str(config.pop("group_id", "fashionstream"))
        elif broker_type == "GooglePubSub":
            project = config.pop("project_id", None) or os.environ.get("PUBSUB_PROJECT_ID")
            project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
            if not project:
                raise InvalidArgument("GooglePubSub needs project_id=... (or $PUBSUB_PROJECT_ID)")
            self._project = str(project)
        else:
            self._subscription = str(config.pop("subscription", "fashionstream"))
        self._topic_options = {k: v for k, v in config.items() if k not in SUBSCRIBER_OPTIONS}
        self._subscription_options = {k: v for k, v in config.items() if k not in PUBLISHER_OPTIONS}
        self._lock = threading.Lock()
        self._publishers: dict[str, Publisher] = {}
        self._subscribers: dict[str, Subscriber] = {}

    # -- URLs ----------------------------------------------------------------------------------

    def topic_url(self, topic: str) -> str:
        if self.broker_type == "Kafka":
            return f"kafka://{self._servers}/{topic}"
        if self.broker_type == "GooglePubSub":
            return f"gcppubsub://projects/{self._project}/topics/{topic}"
        return f"mem://{topic}"

    def subscription_url(self, source: str) -> str:
        """Kafka and Memory: `source` is the topic; GooglePubSub: it is the subscription."""
        if self.broker_type == "Kafka":
            return f"kafka://{self._servers}/{source}?group={self._group}"
        if self.broker_type == "GooglePubSub":
            return f"gcppubsub://projects/{self._project}/subscriptions/{source}"
        return f"mem://{source}?subscription={self._subscription}"

    # -- the original interface -----------------------------------------------------------------

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
        bodies = []
        for message in self.receive_messages(source, max_messages, timeout, topic=topic):
            bodies.append(_decode(message.data))
            message.ack()
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
                    if self.broker_type == "Memory":
                        # mem subscriptions only see what is published after they exist: make the
                        # facade's subscription now so send-then-receive works as in the original.
                        admin.create_subscription(self.subscription_url(topic))
                publisher = self._publishers[topic] = open_topic(url, **self._topic_options)
            return publisher

    def _subscriber(self, source: str, topic: str | None) -> Subscriber:
        from fashionstream.pubsub import open_subscription

        with self._lock:
            subscriber = self._subscribers.get(source)
            if subscriber is None:
                url = self.subscription_url(source)
                if self._create_missing:
                    if self.broker_type == "GooglePubSub":
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
