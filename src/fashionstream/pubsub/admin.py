"""Create and delete topics and subscriptions, by URL, on any backend.

    from fashionstream.pubsub import admin
    admin.create_topic("kafka://127.0.0.1:9092/images", partitions=3)
    admin.create_subscription("kafka://127.0.0.1:9092/images?group=service")
    admin.create_topic("gcppubsub://projects/P/topics/images")
    admin.create_subscription("gcppubsub://projects/P/subscriptions/service", topic="images")
    admin.create_topic("mem://images")
    admin.create_subscription("mem://images?subscription=service")

Where the subscription URL names its topic (`mem`, `kafka`) the `topic`
argument may be left out; on Pub/Sub it is required and may be a short name
("images"), a resource path ("projects/P/topics/images") or a topic URL, in
the subscription's project. Creating something that exists returns False.
Native options (Kafka admin client settings, Pub/Sub credentials) go in `**options`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import AdminDriver, ErrorCode, ParsedURL
from fashionstream.pubsub.drivers import DriverModule, client_imports, for_url
from fashionstream.pubsub.retry import call_with_retries, wrap_error
from fashionstream.pubsub.urls import check_query, parse_url, safe_url

T = TypeVar("T")

#: Seconds an admin operation may take, retries of retryable errors included.
ADMIN_TIMEOUT = 30.0


def resource_names(url: ParsedURL) -> tuple[str | None, str | None]:
    """(topic, subscription) named by a URL of any scheme, as its driver reads it; either may be None."""
    return for_url(url).resource_names(url)


def topic_reference(reference: str, url: ParsedURL, what: str = "topic") -> str:
    """The short topic name `reference` stands for, next to `url`, as its driver reads it.

    A short name, or what the backend also accepts (a topic URL of the same backend;
    on Pub/Sub a 'projects/P/topics/T' path, both in the project of `url`).
    """
    try:
        return for_url(url).topic_reference(reference, url)
    except errors.InvalidArgument as err:
        raise errors.InvalidArgument(f"{what}={safe_url(reference)!r}: {err}") from None


def _open(url: str, options: dict[str, object]) -> tuple[ParsedURL, AdminDriver]:
    parsed = parse_url(url)
    module: DriverModule = for_url(parsed)
    check_query(parsed, module.TOPIC_QUERY_PARAMS | module.SUBSCRIPTION_QUERY_PARAMS, "admin")
    try:
        with client_imports(module):
            return parsed, module.open_admin_driver(parsed, dict(options))
    except (errors.PubSubError, ImportError):  # an ImportError here is a packaging bug of ours: shown as is
        raise
    except Exception as err:
        raise errors.PubSubError(f"opening the admin client for {safe_url(url)} failed: {err}") from err


class _Named:
    """Adapts an admin driver for error wrapping; admin drivers may lack `name` / `error_code`."""

    def __init__(self, driver: AdminDriver, fallback_name: str) -> None:
        self.name: str = getattr(driver, "name", fallback_name)
        self._driver = driver

    def error_code(self, error: BaseException) -> ErrorCode:
        classify: Callable[[BaseException], ErrorCode] | None = getattr(self._driver, "error_code", None)
        return classify(error) if classify else ErrorCode.UNKNOWN

    def is_retryable(self, error: BaseException) -> bool:
        retryable: Callable[[BaseException], bool] | None = getattr(self._driver, "is_retryable", None)
        return bool(retryable(error)) if retryable else False


def _run(url: str, options: dict[str, object], action: str, op: Callable[[ParsedURL, AdminDriver], T]) -> T:
    parsed, driver = _open(url, options)
    named = _Named(driver, safe_url(url))
    try:
        return call_with_retries(
            lambda _remaining: op(parsed, driver), is_retryable=named.is_retryable, total_timeout=ADMIN_TIMEOUT
        )
    except Exception as err:
        raise wrap_error(named, err, action) from err
    finally:
        with contextlib.suppress(Exception):  # closing an admin client must not mask the result
            driver.close()


def _require(name: str | None, what: str, url: ParsedURL) -> str:
    if name is None:
        raise errors.InvalidArgument(f"{safe_url(url.raw)!r} names no {what}")
    return name


def create_topic(url: str, partitions: int = 1, replication_factor: int | None = None, **options: object) -> bool:
    """Create the topic of `url` if missing; True if created.

    `partitions` and `replication_factor` (None: the broker's default) apply to Kafka only; an
    existing topic keeps its own.
    """

    def op(parsed: ParsedURL, driver: AdminDriver) -> bool:
        topic = _require(resource_names(parsed)[0], "topic", parsed)
        return driver.create_topic(topic, partitions=partitions, replication_factor=replication_factor)

    return _run(url, options, "creating", op)


def create_subscription(
    url: str,
    topic: str | None = None,
    ack_deadline_s: int = 30,
    dead_letter_topic: str | None = None,
    max_delivery_attempts: int = 5,
    **options: object,
) -> bool:
    """Create the subscription of `url` on `topic` if missing; True if created.

    Kafka: checks the topic exists (consumer groups need no creation; the ack
    deadline does not apply, and Kafka keeps no dead-letter settings: its consumer
    applies them when opened with the options `dead_letter_topic` and
    `max_delivery_attempts`). `dead_letter_topic` is a name or topic URL of the
    same backend and must exist.
    """

    def op(parsed: ParsedURL, driver: AdminDriver) -> bool:
        url_topic, subscription = resource_names(parsed)
        subscription = _require(subscription, "subscription", parsed)
        chosen = topic_reference(topic, parsed, "topic") if topic is not None else url_topic
        if chosen is None:
            raise errors.InvalidArgument(f"create_subscription({safe_url(url)!r}) needs topic=..., e.g. topic='images'")
        if url_topic is not None and chosen != url_topic:
            raise errors.InvalidArgument(
                f"topic={topic!r} contradicts the topic {url_topic!r} named in {safe_url(url)!r}"
            )
        dead = topic_reference(dead_letter_topic, parsed, "dead_letter_topic") if dead_letter_topic else None
        return driver.create_subscription(
            subscription,
            topic=chosen,
            ack_deadline_s=ack_deadline_s,
            dead_letter_topic=dead,
            max_delivery_attempts=max_delivery_attempts,
        )

    return _run(url, options, "creating", op)


def topic_exists(url: str, **options: object) -> bool:
    """Whether the topic of `url` exists (errors other than its absence are raised)."""
    return _run(
        url,
        options,
        "looking up",
        lambda parsed, driver: driver.topic_exists(_require(resource_names(parsed)[0], "topic", parsed)),
    )


def delete_topic(url: str, **options: object) -> None:
    """Delete the topic of `url` (NotFound if it does not exist)."""
    _run(
        url,
        options,
        "deleting",
        lambda parsed, driver: driver.delete_topic(_require(resource_names(parsed)[0], "topic", parsed)),
    )


def delete_subscription(url: str, **options: object) -> None:
    """Delete the subscription of `url` (Kafka: the consumer group's committed offsets)."""
    _run(
        url,
        options,
        "deleting",
        lambda parsed, driver: driver.delete_subscription(_require(resource_names(parsed)[1], "subscription", parsed)),
    )
