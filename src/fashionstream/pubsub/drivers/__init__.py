"""Backends, one module or package per URL scheme, each with the shape described in `fashionstream.pubsub.driver`.

The name under `drivers/` is the scheme: `drivers/kafka/` serves `kafka://`,
`drivers/mem.py` serves `mem://`. Schemes are found by listing this package
(no imports), so a new backend is a new module here and nothing else.

Driver modules hold their URL grammar and constants without importing their
client library, so `mem://` works without confluent-kafka or
google-cloud-pubsub installed and every install can validate any URL. The
client library is imported when a topic, subscription or admin driver is
opened; if it is missing, `client_imports` reports the extra to install.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Iterator
from functools import cache
from typing import Any, Protocol, cast

from fashionstream.pubsub.driver import (
    AdminDriver,
    ApiConfig,
    FlowControl,
    ParsedURL,
    SubscriptionDriver,
    TopicDriver,
)
from fashionstream.pubsub.errors import InvalidArgument, MissingExtra


class DriverModule(Protocol):
    """What every module or package in this package provides (explained in `fashionstream.pubsub.driver`)."""

    # Constants: importable without the client library.
    SCHEME: str
    EXTRA: str | None
    CLOUDEVENTS_PREFIX: str
    BROKER_URL_FORM: str
    TOPIC_QUERY_PARAMS: frozenset[str]
    SUBSCRIPTION_QUERY_PARAMS: frozenset[str]
    NATIVE_ACK_DEADLINES: bool
    API_BROKER_TYPE: str

    # URL grammar: pure functions, importable without the client library.
    def check_broker_url(self, url: ParsedURL) -> None: ...

    def topic_url(self, broker: ParsedURL, topic: str) -> str: ...

    def subscription_url(self, broker: ParsedURL, topic: str, subscription: str) -> str: ...

    def resource_names(self, url: ParsedURL) -> tuple[str | None, str | None]: ...

    def topic_reference(self, reference: str, url: ParsedURL) -> str: ...

    def api_config(self, config: dict[str, Any]) -> ApiConfig: ...

    # Opening: these import the client library.
    def open_topic_driver(self, url: ParsedURL, options: dict[str, object]) -> TopicDriver: ...

    def open_subscription_driver(
        self, url: ParsedURL, options: dict[str, object], flow: FlowControl | None = None
    ) -> SubscriptionDriver: ...

    def open_admin_driver(self, url: ParsedURL, options: dict[str, object]) -> AdminDriver: ...


@cache
def schemes() -> tuple[str, ...]:
    """Every scheme a driver exists for, sorted: the public module and package names in this package."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def load_driver(scheme: str) -> DriverModule:
    """The driver module for `scheme`; InvalidArgument naming the accepted schemes for an unknown one."""
    if scheme not in schemes():
        raise InvalidArgument(
            f"unknown broker URL scheme {scheme!r}; accepted: {', '.join(s + '://' for s in schemes())}"
        )
    # No client library is imported here (see the module docstring): an ImportError is our own bug.
    return cast(DriverModule, importlib.import_module(f"{__name__}.{scheme}"))


def for_url(url: ParsedURL) -> DriverModule:
    """The driver of `url`, after checking `url` against that driver's grammar (ports, paths, names)."""
    module = load_driver(url.scheme)
    module.resource_names(url)
    return module


def api_driver(broker_type: str) -> DriverModule:
    """The driver whose `API_BROKER_TYPE` is `broker_type`; InvalidArgument naming the accepted ones."""
    modules = [load_driver(scheme) for scheme in schemes()]
    for module in modules:
        if broker_type == module.API_BROKER_TYPE:
            return module
    accepted = ", ".join(sorted(m.API_BROKER_TYPE for m in modules))
    raise InvalidArgument(f"unknown broker_type {broker_type!r}; accepted: {accepted}")


@contextlib.contextmanager
def client_imports(module: DriverModule) -> Iterator[None]:
    """Around opening a driver: a missing client library becomes MissingExtra naming the extra to install."""
    try:
        yield
    except ImportError as err:
        missing = err.name or ""
        # Our own module missing is a packaging bug, not a missing extra: let it surface as is.
        if isinstance(err, MissingExtra) or module.EXTRA is None or missing.startswith("fashionstream"):
            raise
        raise MissingExtra(
            f"the {module.SCHEME}:// backend needs the Python package {missing!r}, which is not installed; "
            f"install it with: pip install 'fashionstream[{module.EXTRA}]'"
        ) from err


def native_ack_deadlines(module: DriverModule) -> bool:
    """Whether the backend redelivers unacked messages by itself; absent means no (the safe choice)."""
    return bool(getattr(module, "NATIVE_ACK_DEADLINES", False))


__all__ = ["DriverModule", "api_driver", "client_imports", "for_url", "load_driver", "native_ack_deadlines", "schemes"]
