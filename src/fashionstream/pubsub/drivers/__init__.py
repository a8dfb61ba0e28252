"""Backends, one module per URL scheme, each with the shape described in `fashionstream.pubsub.driver`.

Driver modules are imported only when a URL with their scheme is opened, so
`mem://` works without confluent-kafka or google-cloud-pubsub installed, and
a missing client library is reported as the extra to install.
"""

from __future__ import annotations

import importlib
from typing import Protocol, cast

from fashionstream.pubsub.driver import AdminDriver, ParsedURL, SubscriptionDriver, TopicDriver
from fashionstream.pubsub.errors import InvalidArgument, MissingExtra


class DriverModule(Protocol):
    """What every module in this package provides (see `fashionstream.pubsub.driver`)."""

    SCHEME: str
    TOPIC_QUERY_PARAMS: frozenset[str]
    SUBSCRIPTION_QUERY_PARAMS: frozenset[str]
    NATIVE_ACK_DEADLINES: bool

    def open_topic_driver(self, url: ParsedURL, options: dict[str, object]) -> TopicDriver: ...

    def open_subscription_driver(self, url: ParsedURL, options: dict[str, object]) -> SubscriptionDriver: ...

    def open_admin_driver(self, url: ParsedURL, options: dict[str, object]) -> AdminDriver: ...


# scheme -> (module in this package, extra that installs its client library or None)
_BACKENDS: dict[str, tuple[str, str | None]] = {
    "mem": ("memory", None),
    "kafka": ("kafka", "kafka"),
    "gcppubsub": ("gcp", "gcp"),
}

SCHEMES: tuple[str, ...] = tuple(sorted(_BACKENDS))


def load_driver(scheme: str) -> DriverModule:
    """The driver module for `scheme`; InvalidArgument for unknown schemes, MissingExtra for missing clients."""
    try:
        module_name, extra = _BACKENDS[scheme]
    except KeyError:
        raise InvalidArgument(
            f"unknown broker URL scheme {scheme!r}; accepted: {', '.join(s + '://' for s in SCHEMES)}"
        ) from None
    qualified = f"{__name__}.{module_name}"
    try:
        module = importlib.import_module(qualified)
    except ImportError as err:
        missing = err.name or ""
        # Our own module missing is a packaging bug, not a missing extra: let it surface as is.
        if extra is None or missing.startswith("fashionstream"):
            raise
        raise MissingExtra(
            f"the {scheme}:// backend needs the Python package {missing!r}, which is not installed; "
            f"install it with: pip install 'fashionstream[{extra}]'"
        ) from err
    return cast(DriverModule, module)


def native_ack_deadlines(module: DriverModule) -> bool:
    """Whether the backend redelivers unacked messages by itself; absent means no (the safe choice)."""
    return bool(getattr(module, "NATIVE_ACK_DEADLINES", False))


__all__ = ["DriverModule", "SCHEMES", "load_driver", "native_ack_deadlines"]
