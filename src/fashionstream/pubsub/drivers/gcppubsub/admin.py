"""Creating and deleting Pub/Sub topics and subscriptions in one project."""

from __future__ import annotations

import os

from google.api_core import exceptions as gexc
from google.pubsub_v1 import PublisherClient, SubscriberClient
from google.pubsub_v1.types import DeadLetterPolicy, Subscription, Topic

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import ParsedURL
from fashionstream.pubsub.drivers.gcppubsub import client, project
from fashionstream.pubsub.drivers.gcppubsub.errors import classify, retryable
from fashionstream.pubsub.errors import ErrorCode


class GcpAdminDriver:
    """Creates and deletes topics and subscriptions in one project."""

    def __init__(self, url: ParsedURL, options: dict[str, object]) -> None:
        self._project = project(url)
        options = dict(options)
        ordering = options.pop("message_ordering", None)
        if ordering is not None and not isinstance(ordering, bool):
            raise errors.InvalidArgument(f"option message_ordering must be True or False, got {ordering!r}")
        # See the module docstring: ordering on by default, except on the emulator, which leaks a
        # spinning thread per ordering key of every ordered subscription.
        self._message_ordering = ordering if ordering is not None else not os.environ.get("PUBSUB_EMULATOR_HOST")
        self._address = client.address(options)
        self.name = f"Pub/Sub project {self._project!r} ({self._address})"
        self._publisher = client.make_client(PublisherClient, options, self.name)
        self._subscriber = client.make_client(SubscriberClient, options, self.name)

    def _topic_path(self, topic: str) -> str:
        return topic if topic.startswith("projects/") else f"projects/{self._project}/topics/{topic}"

    def _subscription_path(self, subscription: str) -> str:
        if subscription.startswith("projects/"):
            return subscription
        return f"projects/{self._project}/subscriptions/{subscription}"

    def topic_exists(self, topic: str) -> bool:
        path = self._topic_path(topic)
        try:
            self._publisher.get_topic(request={"topic": path}, timeout=client.METADATA_TIMEOUT_S, retry=None)
        except gexc.NotFound:
            return False
        except gexc.GoogleAPICallError as err:
            raise client.portable(err, f"looking up topic {path!r} on {self._address}") from err
        return True

    def create_topic(self, topic: str, *, partitions: int = 1, replication_factor: int | None = None) -> bool:
        # Pub/Sub has neither partitions nor a replication factor to choose: both are ignored.
        path = self._topic_path(topic)
        try:
            self._publisher.create_topic(request=Topic(name=path), timeout=client.METADATA_TIMEOUT_S, retry=None)
        except gexc.AlreadyExists:
            return False
        except gexc.GoogleAPICallError as err:
            raise client.portable(err, f"creating topic {path!r} on {self._address}") from err
        return True

    def create_subscription(
        self,
        subscription: str,
        *,
        topic: str,
        ack_deadline_s: int = 30,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
    ) -> bool:
        path = self._subscription_path(subscription)
        request = Subscription(
            name=path,
            topic=self._topic_path(topic),
            ack_deadline_seconds=ack_deadline_s,
            # Messages published with a key (ordering key) are then delivered in order per key.
            enable_message_ordering=self._message_ordering,
        )
        if dead_letter_topic is not None:
            request.dead_letter_policy = DeadLetterPolicy(
                dead_letter_topic=self._topic_path(dead_letter_topic), max_delivery_attempts=max_delivery_attempts
            )
        try:
            self._subscriber.create_subscription(request=request, timeout=client.METADATA_TIMEOUT_S, retry=None)
        except gexc.AlreadyExists:
            return False
        except gexc.NotFound as err:
            dead = f" or dead-letter topic {self._topic_path(dead_letter_topic)!r}" if dead_letter_topic else ""
            raise errors.from_code(
                ErrorCode.NOT_FOUND,
                f"creating subscription {path!r}: topic {self._topic_path(topic)!r}{dead} does not exist on "
                f"{self._address}",
                err,
            ) from err
        except gexc.GoogleAPICallError as err:
            raise client.portable(err, f"creating subscription {path!r} on {self._address}") from err
        return True

    def delete_topic(self, topic: str) -> None:
        path = self._topic_path(topic)
        try:
            self._publisher.delete_topic(topic=path, timeout=client.METADATA_TIMEOUT_S, retry=None)
        except gexc.GoogleAPICallError as err:
            raise client.portable(err, f"deleting topic {path!r} on {self._address}") from err

    def delete_subscription(self, subscription: str) -> None:
        path = self._subscription_path(subscription)
        try:
            self._subscriber.delete_subscription(subscription=path, timeout=client.METADATA_TIMEOUT_S, retry=None)
        except gexc.GoogleAPICallError as err:
            raise client.portable(err, f"deleting subscription {path!r} on {self._address}") from err

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        client.close_client(self._publisher)
        client.close_client(self._subscriber)


__all__ = ["GcpAdminDriver"]
