"""The `gcppubsub://` backend: Google Cloud Pub/Sub (or its emulator) through google-cloud-pubsub.

URLs: `gcppubsub://projects/PROJECT` (the broker, for admin), `gcppubsub://projects/PROJECT/topics/TOPIC`
and `gcppubsub://projects/PROJECT/subscriptions/SUB`. A subscription is bound to its topic when it
is created, so its URL names only the subscription.

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

This package's `__init__` is the URL grammar and the module shape, importable without
google-cloud-pubsub; the modules that use the client are imported when a driver is opened:
`errors` (what each native error means), `client` (client construction and the existence check
shared by all drivers), `topic`, `subscription`, `admin`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fashionstream.pubsub.driver import ApiConfig, FlowControl, ParsedURL
from fashionstream.pubsub.errors import InvalidArgument
from fashionstream.pubsub.urls import parse_reference, safe_url

if TYPE_CHECKING:
    from fashionstream.pubsub.drivers.gcppubsub.admin import GcpAdminDriver
    from fashionstream.pubsub.drivers.gcppubsub.subscription import GcpSubscriptionDriver
    from fashionstream.pubsub.drivers.gcppubsub.topic import GcpTopicDriver

SCHEME = "gcppubsub"
EXTRA = "gcp"
CLOUDEVENTS_PREFIX = "ce-"  # the CloudEvents Google Cloud Pub/Sub binding: attributes `ce-<attribute>`
BROKER_URL_FORM = "gcppubsub://projects/PROJECT"
TOPIC_QUERY_PARAMS: frozenset[str] = frozenset()
SUBSCRIPTION_QUERY_PARAMS: frozenset[str] = frozenset()
NATIVE_ACK_DEADLINES = True
API_BROKER_TYPE = "GooglePubSub"

_KINDS = ("topics", "subscriptions")


# ---------------------------------------------------------------- URLs


def _parts(url: ParsedURL) -> list[str]:
    """[PROJECT] or [PROJECT, KIND, NAME] of a gcppubsub:// URL, checked."""
    parts = url.path.rstrip("/").split("/")
    if (
        url.host != "projects"
        or not parts[0]
        or not (len(parts) == 1 or (len(parts) == 3 and parts[1] in _KINDS and parts[2]))
    ):
        raise InvalidArgument(
            f"{safe_url(url.raw)!r} is not a Pub/Sub URL; expected gcppubsub://projects/PROJECT/topics/NAME "
            "or gcppubsub://projects/PROJECT/subscriptions/NAME"
        )
    return parts


def project(url: ParsedURL) -> str:
    """The project every gcppubsub:// URL names."""
    return _parts(url)[0]


def resource_path(url: ParsedURL, kind: str) -> str:
    """The full resource path, e.g. 'projects/P/topics/images', checking the URL names a `kind`."""
    parts = url.path.rstrip("/").split("/")
    if url.host != "projects" or len(parts) != 3 or parts[1] != kind or not parts[0] or not parts[2]:
        example = f"gcppubsub://projects/PROJECT/{kind}/NAME"
        raise InvalidArgument(f"{safe_url(url.raw)!r} does not name a Pub/Sub {kind[:-1]}; expected {example}")
    return f"projects/{'/'.join(parts)}"


def check_broker_url(url: ParsedURL) -> None:
    """A broker URL names a project and nothing in it: `gcppubsub://projects/PROJECT`."""
    parts = url.path.rstrip("/").split("/")
    if url.host != "projects" or len(parts) != 1 or not parts[0]:
        raise InvalidArgument(
            f"broker URL {safe_url(url.raw)!r} must be {BROKER_URL_FORM}, e.g. gcppubsub://projects/demo"
        )


def topic_url(broker: ParsedURL, topic: str) -> str:
    return f"gcppubsub://projects/{project(broker)}/topics/{topic}"


def subscription_url(broker: ParsedURL, topic: str, subscription: str) -> str:
    """The subscription's URL; `topic` is not part of it (a subscription is bound to its topic at creation)."""
    return f"gcppubsub://projects/{project(broker)}/subscriptions/{subscription}"


def resource_names(url: ParsedURL) -> tuple[str | None, str | None]:
    """(topic, None) of a topic URL, (None, subscription) of a subscription URL, (None, None) of a project URL."""
    parts = _parts(url)
    if len(parts) == 1:
        return None, None
    return (parts[2], None) if parts[1] == "topics" else (None, parts[2])


def topic_reference(reference: str, url: ParsedURL) -> str:
    """The topic named by `reference` in the project of `url`.

    A short name ('images'), a resource path ('projects/P/topics/images') or a
    topic URL ('gcppubsub://projects/P/topics/images'); the last two must be in
    the project of `url`, as the admin driver creates everything there.
    """
    if reference.startswith("projects/"):
        reference = f"{SCHEME}://{reference}"
    parsed = parse_reference(reference, SCHEME)
    if parsed is None:
        return reference
    topic = resource_names(parsed)[0]
    if topic is None:
        raise InvalidArgument(f"{safe_url(reference)!r} names no topic")
    if project(parsed) != project(url):
        raise InvalidArgument(f"{safe_url(reference)!r} is in another project than {safe_url(url.raw)!r}")
    return topic


def api_config(config: dict[str, Any]) -> ApiConfig:
    """`PubSubAPI("GooglePubSub", project_id=...)`: receive(source) names a subscription.

    project_id defaults to $PUBSUB_PROJECT_ID, then $GOOGLE_CLOUD_PROJECT.
    """
    project_id = config.pop("project_id", None) or os.environ.get("PUBSUB_PROJECT_ID")
    project_id = project_id or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project_id:
        raise InvalidArgument(f"{API_BROKER_TYPE} needs project_id=... (or $PUBSUB_PROJECT_ID)")
    return ApiConfig(f"gcppubsub://projects/{project_id}", None)


# ---------------------------------------------------------------- module shape


def open_topic_driver(url: ParsedURL, options: dict[str, object]) -> GcpTopicDriver:
    from fashionstream.pubsub.drivers.gcppubsub.topic import GcpTopicDriver

    return GcpTopicDriver(url, options)


def open_subscription_driver(
    url: ParsedURL, options: dict[str, object], flow: FlowControl | None = None
) -> GcpSubscriptionDriver:
    from fashionstream.pubsub.drivers.gcppubsub.subscription import GcpSubscriptionDriver

    return GcpSubscriptionDriver(url, options, flow)


def open_admin_driver(url: ParsedURL, options: dict[str, object]) -> GcpAdminDriver:
    from fashionstream.pubsub.drivers.gcppubsub.admin import GcpAdminDriver

    return GcpAdminDriver(url, options)


__all__ = [
    "API_BROKER_TYPE",
    "BROKER_URL_FORM",
    "CLOUDEVENTS_PREFIX",
    "EXTRA",
    "NATIVE_ACK_DEADLINES",
    "SCHEME",
    "SUBSCRIPTION_QUERY_PARAMS",
    "TOPIC_QUERY_PARAMS",
    "api_config",
    "check_broker_url",
    "open_admin_driver",
    "open_subscription_driver",
    "open_topic_driver",
    "project",
    "resource_names",
    "resource_path",
    "subscription_url",
    "topic_reference",
    "topic_url",
]
