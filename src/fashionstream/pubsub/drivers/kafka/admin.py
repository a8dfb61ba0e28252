"""Creating and deleting Kafka topics; a 'subscription' is a consumer group, which needs no creation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin re-exports it without declaring so

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import ParsedURL
from fashionstream.pubsub.drivers.kafka import bootstrap_servers, client
from fashionstream.pubsub.drivers.kafka.client import ClientLog, client_config, make_client
from fashionstream.pubsub.drivers.kafka.errors import classify, retryable
from fashionstream.pubsub.errors import ErrorCode

_log = logging.getLogger(__package__ or __name__)


class KafkaAdminDriver:
    """Creates and deletes topics; a 'subscription' is a consumer group, which needs no creation."""

    def __init__(self, url: ParsedURL, options: dict[str, object]) -> None:
        self._address = bootstrap_servers(url)
        self.name = f"kafka cluster at {self._address}"
        self._options = dict(options)
        # Never marked opened: each admin call reports its own failure, so connection errors stay at DEBUG.
        self._client_log = ClientLog(self.name)
        config = client_config(url, options, {}, self._client_log)
        self._admin: AdminClient = make_client(AdminClient, config, self.name)

    def _wait(self, future: Any, what: str, timeout: float | None = None) -> Any:
        """The result of an admin call; in slices, so that a refused login ends the wait at once."""
        timeout = client.METADATA_TIMEOUT_S + 5 if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                return future.result(timeout=max(0.0, min(client.REFUSAL_CHECK_S, deadline - time.monotonic())))
            except KafkaException as err:
                raise client.portable(err, f"{what} on {self.name}", self._options) from err
            except TimeoutError as err:  # concurrent.futures' timeout
                self._admin.poll(0)  # runs error_cb: a refused login arrives as an error event
                self._client_log.check_refused(f"{what} on {self.name}")
                if time.monotonic() >= deadline:
                    raise errors.Timeout(f"{what} on {self.name}: no answer within {timeout:.0f} s") from err

    def topic_exists(self, topic: str) -> bool:
        try:
            client.check_topic(self._admin, self._client_log, topic, self._address, f"looking up topic {topic!r}")
        except errors.NotFound:
            return False
        return True

    def create_topic(self, topic: str, *, partitions: int = 1, replication_factor: int | None = None) -> bool:
        new = NewTopic(
            topic,
            num_partitions=partitions,
            # -1 asks the broker for its default.replication.factor (brokers since Kafka 2.4).
            replication_factor=-1 if replication_factor is None else replication_factor,
            # 1 MB messages plus batch overhead must fit whatever the broker's default is.
            config={"max.message.bytes": str(client.MAX_MESSAGE_BYTES)},
        )
        future = self._admin.create_topics([new], operation_timeout=client.METADATA_TIMEOUT_S)[topic]
        try:
            self._wait(future, f"creating topic {topic!r}")
        except errors.AlreadyExists:
            return False
        # Creation is acknowledged by the controller before every broker's metadata shows it;
        # wait, so that opening the topic right after does not see NotFound.
        self._wait_until(lambda: self.topic_exists(topic), f"topic {topic!r} to appear")
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
        doing = f"creating consumer group {subscription!r}"
        client.check_topic(self._admin, self._client_log, topic, self._address, doing)
        if dead_letter_topic is not None:
            # Kafka keeps no settings for a group: the consumer applies the policy when it is opened with
            # the options dead_letter_topic and max_delivery_attempts. Here only the topic is checked.
            client.check_topic(self._admin, self._client_log, dead_letter_topic, self._address, doing)
            _log.debug(
                "consumer group %r: dead-lettering to %r applies to consumers opened with dead_letter_topic=%r "
                "and max_delivery_attempts=%d",
                subscription,
                dead_letter_topic,
                dead_letter_topic,
                max_delivery_attempts,
            )
        # The group itself comes to exist when a consumer joins; report whether it already had members or offsets.
        groups = self._admin.describe_consumer_groups([subscription], request_timeout=client.METADATA_TIMEOUT_S)
        future = groups[subscription]
        try:
            description = self._wait(future, f"describing consumer group {subscription!r}")
        except errors.NotFound:
            return True
        state = getattr(getattr(description, "state", None), "name", "")
        return state in ("DEAD", "UNKNOWN", "")

    def delete_topic(self, topic: str) -> None:
        future = self._admin.delete_topics([topic], operation_timeout=client.METADATA_TIMEOUT_S)[topic]
        self._wait(future, f"deleting topic {topic!r}")
        # Re-creating a topic of the same name right away fails while the deletion is in progress.
        self._wait_until(lambda: not self.topic_exists(topic), f"topic {topic!r} to disappear")

    def delete_subscription(self, subscription: str) -> None:
        groups = self._admin.delete_consumer_groups([subscription], request_timeout=client.METADATA_TIMEOUT_S)
        future = groups[subscription]
        self._wait(future, f"deleting consumer group {subscription!r}")

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        # AdminClient holds no state that needs flushing; dropping it closes its connections.
        pass

    def _wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + client.METADATA_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                raise errors.Timeout(f"{self.name}: timed out waiting for {what}")
            time.sleep(0.05)


__all__ = ["KafkaAdminDriver"]
