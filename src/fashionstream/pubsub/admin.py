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
from fashionstream.pubsub.drivers import load_driver
from fashionstream.pubsub.retry import call_with_retries, wrap_error
from fashionstream.pubsub.urls import check_query, parse_url, safe_url

T = TypeVar("T")

#: Seconds an admin operation may take, retries of retryable errors included.
ADMIN_TIMEOUT = 30.0


def resource_names(url: ParsedURL) -> tuple[str | None, str | None]:
    """(topic, subscription) named by a URL of any scheme; either may be None."""
    if url.scheme == "mem":
        return url.host or None, url.query.get("subscription") or None
    if url.scheme == "kafka":
        return url.path or None, url.query.get("group") or None
    if url.scheme == "gcppubsub":
        kind, name = _gcp_resource(url)
        return (name, None) if kind == "topics" else (None, name)
    raise errors.InvalidArgument(f"unknown broker URL scheme {url.scheme!r} in {safe_url(url.raw)!r}")


def _gcp_resource(url: ParsedURL) -> tuple[str, str]:
    """('topics' | 'subscriptions', name) of gcppubsub://projects/P/{topics|subscriptions}/NAME."""
    parts = url.path.split("/")
    if url.host != "projects" or len(parts) != 3 or parts[1] not in ("topics", "subscriptions") or not parts[2]:
        raise errors.InvalidArgument(
            f"{safe_url(url.raw)!r} is not a Pub/Sub URL; expected gcppubsub://projects/PROJECT/topics/NAME "
            "or gcppubsub://projects/PROJECT/subscriptions/NAME"
        )
    return parts[1], parts[2]


def _topic_reference(reference: str, url: ParsedURL, what: str) -> str:
    """Short topic name from a name, a 'projects/P/topics/T' path or a topic URL of the same backend."""
    if "://" in reference:
        ref_url = parse_url(reference)
        if ref_url.scheme != url.scheme:
            raise errors.InvalidArgument(f"{what} {safe_url(reference)!r} is not a {url.scheme}:// URL")
        topic, _ = resource_names(ref_url)
        if topic is None:
            raise errors.InvalidArgument(f"{what} {safe_url(reference)!r} names no topic")
        if url.scheme == "gcppubsub" and ref_url.path.split("/")[0] != url.path.split("/")[0]:
            raise errors.InvalidArgument(f"{what} {reference!r} is in another project than {url.raw!r}")
        return topic
    if reference.startswith("projects/"):
        return _topic_reference("gcppubsub://" + reference, url, what) if url.scheme == "gcppubsub" else reference
    return reference


def _open(url: str, options: dict[str, object]) -> tuple[ParsedURL, AdminDriver]:
    parsed = parse_url(url)
    module = load_driver(parsed.scheme)
    check_query(parsed, module.TOPIC_QUERY_PARAMS | module.SUBSCRIPTION_QUERY_PARAMS, "admin")
    try:
        return parsed, module.open_admin_driver(parsed, dict(options))
    except errors.PubSubError:
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


def create_topic(url: str, partitions: int = 1, replication_factor: int = 1, **options: object) -> bool:
    """Create the topic of `url` if missing; True if created. `partitions` / `replication_factor`: Kafka only."""

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
    deadline and dead-letter settings do not apply). `dead_letter_topic` is a
    name or topic URL of the same backend and must exist.
    """

    def op(parsed: ParsedURL, driver: AdminDriver) -> bool:
        url_topic, subscription = resource_names(parsed)
        subscription = _require(subscription, "subscription (mem: ?subscription=, kafka: ?group=)", parsed)
        chosen = _topic_reference(topic, parsed, "topic") if topic is not None else url_topic
        if chosen is None:
            raise errors.InvalidArgument(f"create_subscription({safe_url(url)!r}) needs topic=..., e.g. topic='images'")
        if url_topic is not None and chosen != url_topic:
            raise errors.InvalidArgument(
                f"topic={topic!r} contradicts the topic {url_topic!r} named in {safe_url(url)!r}"
            )
        dead = _topic_reference(dead_letter_topic, parsed, "dead_letter_topic") if dead_letter_topic else None
        return driver.create_subscription(
            subscription,
            topic=chosen,
            ack_deadline_s=ack_deadline_s,
            dead_letter_topic=dead,
            max_delivery_attempts=max_delivery_attempts,
        )

    return _run(url, options, "creating", op)


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
