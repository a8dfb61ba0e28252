"""The `gcppubsub://` backend: Google Cloud Pub/Sub (or its emulator) through google-cloud-pubsub.

URLs: `gcppubsub://projects/PROJECT/topics/TOPIC` and `gcppubsub://projects/PROJECT/subscriptions/SUB`.
Admin URLs may be either, or just `gcppubsub://projects/PROJECT`.

The driver speaks the plain RPCs of the generated (GAPIC) clients, one call per batch, because the
portable layer already batches, retries and tracks acks; the high-level clients would add a
second layer of batching threads and futures doing the same:

- `send_batch` -> one Publish RPC per at most 1,000 messages / ~9 MB (the service's request limits);
  a message's key becomes its ordering key, so messages with one key keep their order on
  subscriptions created with message ordering (as `create_subscription` does).
- `receive_batch` -> synchronous Pull that answers at once, polled with back-off until the caller's
  timeout; an empty answer is "nothing yet", not an error.
- acks -> Acknowledge; nacks -> ModifyAckDeadline(0), which makes the message due at once.
- Ack deadlines are the service's own (`NATIVE_ACK_DEADLINES = True`); `delivery_attempt` is set
  by the service only on subscriptions with a dead-letter policy.

Message ordering: `create_subscription` enables it (per-key order on the real service) unless the
admin option `message_ordering=False` says otherwise. Against the emulator the default is off: the
emulator (0.8.x) starts a thread for every ordering key of an ordered subscription, never stops it,
and those threads keep spinning; measured here, one test hour with per-message keys left 15,000
threads and a load average above 3,000 on two cores. The emulator still delivers one subscription's
messages in publish order to a single consumer. Pass `message_ordering=True` to test real ordering.

With PUBSUB_EMULATOR_HOST set the client talks plain gRPC to the emulator without credentials.
Native options are passed to the client constructors (`credentials`, `client_options`,
`transport`, `client_info`) and never logged.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.pubsub_v1 import PublisherClient, SubscriberClient
from google.pubsub_v1.types import (
    DeadLetterPolicy,
    PublishRequest,
    PubsubMessage,
    PullResponse,
    Subscription,
    Topic,
)

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import ErrorCode, IncomingMessage, OutgoingMessage, ParsedURL

SCHEME = "gcppubsub"
TOPIC_QUERY_PARAMS: frozenset[str] = frozenset()
SUBSCRIPTION_QUERY_PARAMS: frozenset[str] = frozenset()
NATIVE_ACK_DEADLINES = True

#: How long opening a topic or subscription waits for the service to confirm it exists.
METADATA_TIMEOUT_S = 10.0
#: The Publish RPC accepts at most 1,000 messages and 10 MB per request; keep a margin for framing.
MAX_PUBLISH_MESSAGES = 1000
MAX_PUBLISH_BYTES = 9 * 1024 * 1024
#: Acknowledge / ModifyAckDeadline requests are limited to 512 KB; ack ids are ~200 bytes at most.
MAX_ACK_IDS = 1000
#: The most messages one Pull returns.
MAX_PULL_MESSAGES = 1000
#: RPC deadline of one Pull; it answers at once (return_immediately), so this only bounds a stuck service.
PULL_DEADLINE_S = 30.0

_log = logging.getLogger(__name__)

_RAW_MESSAGE = PubsubMessage.pb()
_RAW_PUBLISH_REQUEST = PublishRequest.pb()

_CLIENT_OPTIONS = frozenset({"credentials", "client_options", "transport", "client_info"})

T = TypeVar("T")


# ---------------------------------------------------------------- errors


def classify(error: BaseException) -> ErrorCode:
    """The portable meaning of a native error raised by this driver."""
    if isinstance(error, gexc.NotFound):
        return ErrorCode.NOT_FOUND
    if isinstance(error, (gexc.AlreadyExists, gexc.Conflict)):
        return ErrorCode.ALREADY_EXISTS
    if isinstance(error, (gexc.DeadlineExceeded, gexc.RetryError, TimeoutError)):
        return ErrorCode.TIMEOUT
    if isinstance(
        error, (gexc.ServiceUnavailable, gexc.TooManyRequests, gexc.ResourceExhausted, gexc.InternalServerError)
    ):
        return ErrorCode.UNAVAILABLE
    if isinstance(error, (gexc.InvalidArgument, gexc.FailedPrecondition, gexc.OutOfRange)):
        return ErrorCode.INVALID_ARGUMENT
    if isinstance(error, (gexc.PermissionDenied, gexc.Unauthenticated, gexc.Forbidden, gexc.Unauthorized)):
        return ErrorCode.PERMISSION_DENIED
    if isinstance(error, ValueError) and "closed channel" in str(error):  # gRPC after transport.close()
        return ErrorCode.CLOSED
    return ErrorCode.UNKNOWN


def retryable(error: BaseException) -> bool:
    """Transient service trouble is worth another try; NotFound, bad input and permissions are not."""
    if isinstance(error, (gexc.Aborted, gexc.Cancelled)):
        return True
    return classify(error) in (ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT)


def _portable(error: BaseException, message: str) -> errors.PubSubError:
    cls: type[errors.PubSubError] = {
        ErrorCode.NOT_FOUND: errors.NotFound,
        ErrorCode.ALREADY_EXISTS: errors.AlreadyExists,
        ErrorCode.UNAVAILABLE: errors.Unavailable,
        ErrorCode.TIMEOUT: errors.Timeout,
        ErrorCode.INVALID_ARGUMENT: errors.InvalidArgument,
        ErrorCode.PERMISSION_DENIED: errors.PermissionDenied,
        ErrorCode.CLOSED: errors.Closed,
    }.get(classify(error), errors.PubSubError)
    wrapped = cls(f"{message}: {getattr(error, 'message', None) or error}")
    wrapped.__cause__ = error
    return wrapped


# ---------------------------------------------------------------- URLs and clients


def _project(url: ParsedURL) -> str:
    project = url.path.split("/")[0]
    if url.host != "projects" or not project:
        raise errors.InvalidArgument(
            f"{url.raw!r} is not a Pub/Sub URL; expected gcppubsub://projects/PROJECT/topics/NAME "
            "or gcppubsub://projects/PROJECT/subscriptions/NAME"
        )
    return project


def _resource(url: ParsedURL, kind: str) -> str:
    """The full resource path, e.g. 'projects/P/topics/images', checking the URL names a `kind`."""
    parts = url.path.split("/")
    if url.host != "projects" or len(parts) != 3 or parts[1] != kind or not parts[0] or not parts[2]:
        example = f"gcppubsub://projects/PROJECT/{kind}/NAME"
        raise errors.InvalidArgument(f"{url.raw!r} does not name a Pub/Sub {kind[:-1]}; expected {example}")
    return f"projects/{url.path}"


def _address(options: dict[str, object]) -> str:
    """Where the client will connect, for error messages: 'the Pub/Sub emulator at H:P' or 'Pub/Sub at HOST'."""
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if emulator:
        return f"the Pub/Sub emulator at {emulator}"
    client_options = options.get("client_options")
    endpoint = (
        client_options.get("api_endpoint")
        if isinstance(client_options, dict)
        else getattr(client_options, "api_endpoint", None)
    )
    return f"Pub/Sub at {endpoint or 'pubsub.googleapis.com'}"


def _client_kwargs(options: dict[str, object]) -> dict[str, Any]:
    unknown = sorted(set(options) - _CLIENT_OPTIONS)
    if unknown:
        raise errors.InvalidArgument(
            f"unknown Pub/Sub option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(_CLIENT_OPTIONS))}"
        )
    kwargs: dict[str, Any] = dict(options)
    if os.environ.get("PUBSUB_EMULATOR_HOST") and "credentials" not in kwargs:
        # The generated clients open a plain-text channel to the emulator by themselves, but still
        # look for Google credentials unless told there are none.
        kwargs["credentials"] = AnonymousCredentials()  # type: ignore[no-untyped-call]
    return kwargs


def _make_client(factory: Callable[..., T], options: dict[str, object], what: str) -> T:
    try:
        return factory(**_client_kwargs(options))
    except errors.PubSubError:
        raise
    except Exception as err:  # bad option types, missing default credentials, ...
        # The message never includes option values, so credentials cannot leak through it.
        raise errors.InvalidArgument(f"cannot create the Pub/Sub client for {what}: {type(err).__name__}") from err


def _check_exists(fetch: Callable[[], object], what: str, resource: str, address: str) -> None:
    """Raise NotFound / Unavailable unless `fetch` (a Get RPC) finds `resource`.

    A publisher or subscriber may lack the permission to *read* its topic or subscription;
    then the check is skipped and the first send or receive tells.
    """
    try:
        fetch()
    except gexc.NotFound as err:
        kind = "topic" if "/topics/" in resource else "subscription"
        raise errors.NotFound(
            f"{what}: {kind} {resource!r} does not exist on {address}; create it first "
            f"(fashionstream.pubsub.admin.create_{kind})"
        ) from err
    except (gexc.PermissionDenied, gexc.Forbidden):
        return
    except gexc.GoogleAPICallError as err:
        raise _portable(err, f"{what}: no good answer from {address}; is it running and reachable?") from err


def _close_client(client: PublisherClient | SubscriberClient) -> None:
    client.transport.close()  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------- topic


def _chunks(messages: Sequence[OutgoingMessage]) -> Iterator[Sequence[OutgoingMessage]]:
    """Consecutive slices that each fit in one Publish request, in order."""
    start, size = 0, 0
    for index, message in enumerate(messages):
        cost = len(message.data) + sum(len(k) + len(v) for k, v in message.attributes.items()) + 64
        if index > start and (index - start >= MAX_PUBLISH_MESSAGES or size + cost > MAX_PUBLISH_BYTES):
            yield messages[start:index]
            start, size = index, 0
        size += cost
    if start < len(messages):
        yield messages[start:]


class GcpTopicDriver:
    """Publishes batches to one Pub/Sub topic."""

    def __init__(self, url: ParsedURL, options: dict[str, object]) -> None:
        self._topic = _resource(url, "topics")
        self._address = _address(options)
        self.name = f"Pub/Sub topic {self._topic!r} ({self._address})"
        self._client = _make_client(PublisherClient, options, self.name)
        try:
            _check_exists(
                lambda: self._client.get_topic(topic=self._topic, timeout=METADATA_TIMEOUT_S, retry=None),
                f"opening {self.name}",
                self._topic,
                self._address,
            )
        except BaseException:
            _close_client(self._client)
            raise

    def send_batch(self, messages: Sequence[OutgoingMessage], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        ids: list[str] = []
        # One request after another, never in parallel: a later chunk must not overtake an earlier
        # one, or messages with one ordering key would arrive out of order.
        for chunk in _chunks(messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: {len(messages) - len(ids)} messages not sent within {timeout:.1f} s")
            # Raw protobuf messages, wrapped once without a copy: building proto-plus messages
            # cost ~8 µs each, more than the rest of sending (measured with 1 KB messages).
            request = PublishRequest.wrap(
                _RAW_PUBLISH_REQUEST(
                    topic=self._topic,
                    messages=[
                        _RAW_MESSAGE(data=m.data, attributes=m.attributes, ordering_key=m.key or "") for m in chunk
                    ],
                )
            )
            response = self._client.publish(
                request=request, timeout=remaining, retry=None
            )  # the portable layer retries
            ids.extend(response.message_ids)
        return ids

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        _close_client(self._client)


# ---------------------------------------------------------------- subscription


class GcpSubscriptionDriver:
    """Pulls from one Pub/Sub subscription."""

    def __init__(self, url: ParsedURL, options: dict[str, object]) -> None:
        self._subscription = _resource(url, "subscriptions")
        self._address = _address(options)
        self.name = f"Pub/Sub subscription {self._subscription!r} ({self._address})"
        self._client = _make_client(SubscriberClient, options, self.name)
        try:
            _check_exists(
                lambda: self._client.get_subscription(
                    subscription=self._subscription, timeout=METADATA_TIMEOUT_S, retry=None
                ),
                f"opening {self.name}",
                self._subscription,
                self._address,
            )
        except BaseException:
            _close_client(self._client)
            raise

    def receive_batch(self, max_messages: int, timeout: float) -> list[IncomingMessage]:
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            try:
                # Never a short RPC deadline: a Pull the client gives up on may still lease messages
                # on the server, which then stay invisible for a whole ack deadline (measured on the
                # emulator: a 0.1 s deadline under load cut throughput from ~3,000 to ~300 msg/s).
                # So the Pull answers at once with what is there, under a generous deadline, and the
                # waiting for `timeout` happens here, between Pulls.
                with warnings.catch_warnings():
                    # The client deprecates return_immediately; above is why it is the right call here.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    response = self._client.pull(
                        request={
                            "subscription": self._subscription,
                            "max_messages": max(1, min(max_messages, MAX_PULL_MESSAGES)),
                            "return_immediately": True,
                        },
                        timeout=PULL_DEADLINE_S,
                        retry=None,
                    )
            except gexc.DeadlineExceeded:
                return []
            if response.received_messages:
                # The raw protobuf, not proto-plus wrappers: reading fields through the wrappers
                # (a datetime conversion, a map copy, ...) doubled the client's CPU per message.
                return [_incoming(received) for received in PullResponse.pb(response).received_messages]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(pause, remaining))  # back off so an idle subscriber does not spin
            pause = min(pause * 2, 0.1)

    def send_acks(self, ack_ids: Sequence[Hashable]) -> None:
        for start in range(0, len(ack_ids), MAX_ACK_IDS):
            self._client.acknowledge(
                subscription=self._subscription,
                ack_ids=[str(a) for a in ack_ids[start : start + MAX_ACK_IDS]],
                timeout=METADATA_TIMEOUT_S,
                retry=None,
            )

    def can_nack(self) -> bool:
        return True

    def send_nacks(self, ack_ids: Sequence[Hashable]) -> None:
        for start in range(0, len(ack_ids), MAX_ACK_IDS):
            # A zero ack deadline makes the message due for redelivery at once.
            self._client.modify_ack_deadline(
                subscription=self._subscription,
                ack_ids=[str(a) for a in ack_ids[start : start + MAX_ACK_IDS]],
                ack_deadline_seconds=0,
                timeout=METADATA_TIMEOUT_S,
                retry=None,
            )

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        # Unacked messages simply come back after their ack deadline.
        _close_client(self._client)


def _incoming(received: Any) -> IncomingMessage:
    """One IncomingMessage from a raw protobuf `ReceivedMessage`."""
    message = received.message
    stamp = message.publish_time
    return IncomingMessage(
        message.data,
        dict(message.attributes),
        message.ordering_key or None,
        message.message_id,
        received.ack_id,
        datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC) if message.HasField("publish_time") else None,
        # The service counts deliveries only on subscriptions with a dead-letter policy; 0 means "not counted".
        received.delivery_attempt or None,
    )


# ---------------------------------------------------------------- admin


class GcpAdminDriver:
    """Creates and deletes topics and subscriptions in one project."""

    def __init__(self, url: ParsedURL, options: dict[str, object]) -> None:
        self._project = _project(url)
        options = dict(options)
        ordering = options.pop("message_ordering", None)
        if ordering is not None and not isinstance(ordering, bool):
            raise errors.InvalidArgument(f"option message_ordering must be True or False, got {ordering!r}")
        # See the module docstring: ordering on by default, except on the emulator, which leaks a
        # spinning thread per ordering key of every ordered subscription.
        self._message_ordering = ordering if ordering is not None else not os.environ.get("PUBSUB_EMULATOR_HOST")
        self._address = _address(options)
        self.name = f"Pub/Sub project {self._project!r} ({self._address})"
        self._publisher = _make_client(PublisherClient, options, self.name)
        self._subscriber = _make_client(SubscriberClient, options, self.name)

    def _topic_path(self, topic: str) -> str:
        return topic if topic.startswith("projects/") else f"projects/{self._project}/topics/{topic}"

    def _subscription_path(self, subscription: str) -> str:
        if subscription.startswith("projects/"):
            return subscription
        return f"projects/{self._project}/subscriptions/{subscription}"

    def create_topic(self, topic: str, *, partitions: int = 1, replication_factor: int = 1) -> bool:
        # Pub/Sub has neither partitions nor a replication factor to choose: both are ignored.
        path = self._topic_path(topic)
        try:
            self._publisher.create_topic(request=Topic(name=path), timeout=METADATA_TIMEOUT_S, retry=None)
        except gexc.AlreadyExists:
            return False
        except gexc.GoogleAPICallError as err:
            raise _portable(err, f"creating topic {path!r} on {self._address}") from err
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
            self._subscriber.create_subscription(request=request, timeout=METADATA_TIMEOUT_S, retry=None)
        except gexc.AlreadyExists:
            return False
        except gexc.NotFound as err:
            raise errors.NotFound(
                f"creating subscription {path!r}: topic {self._topic_path(topic)!r}"
                f"{' or dead-letter topic ' + repr(self._topic_path(dead_letter_topic)) if dead_letter_topic else ''}"
                f" does not exist on {self._address}; create it first"
            ) from err
        except gexc.GoogleAPICallError as err:
            raise _portable(err, f"creating subscription {path!r} on {self._address}") from err
        return True

    def delete_topic(self, topic: str) -> None:
        path = self._topic_path(topic)
        try:
            self._publisher.delete_topic(topic=path, timeout=METADATA_TIMEOUT_S, retry=None)
        except gexc.GoogleAPICallError as err:
            raise _portable(err, f"deleting topic {path!r} on {self._address}") from err

    def delete_subscription(self, subscription: str) -> None:
        path = self._subscription_path(subscription)
        try:
            self._subscriber.delete_subscription(subscription=path, timeout=METADATA_TIMEOUT_S, retry=None)
        except gexc.GoogleAPICallError as err:
            raise _portable(err, f"deleting subscription {path!r} on {self._address}") from err

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        _close_client(self._publisher)
        _close_client(self._subscriber)


# ---------------------------------------------------------------- module shape


def open_topic_driver(url: ParsedURL, options: dict[str, object]) -> GcpTopicDriver:
    return GcpTopicDriver(url, options)


def open_subscription_driver(url: ParsedURL, options: dict[str, object]) -> GcpSubscriptionDriver:
    return GcpSubscriptionDriver(url, options)


def open_admin_driver(url: ParsedURL, options: dict[str, object]) -> GcpAdminDriver:
    return GcpAdminDriver(url, options)


__all__ = [
    "SCHEME",
    "TOPIC_QUERY_PARAMS",
    "SUBSCRIPTION_QUERY_PARAMS",
    "NATIVE_ACK_DEADLINES",
    "GcpTopicDriver",
    "GcpSubscriptionDriver",
    "GcpAdminDriver",
    "classify",
    "retryable",
    "open_topic_driver",
    "open_subscription_driver",
    "open_admin_driver",
]
