"""What every Pub/Sub client of this driver shares: construction, the emulator, and the check that a resource exists."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError
from google.pubsub_v1 import PublisherClient, SubscriberClient

from fashionstream.pubsub import errors
from fashionstream.pubsub.drivers.gcppubsub.errors import classify
from fashionstream.pubsub.errors import ErrorCode

#: How long opening a topic or subscription waits for the service to confirm it exists.
METADATA_TIMEOUT_S = 10.0

_CLIENT_OPTIONS = frozenset({"credentials", "client_options", "transport", "client_info"})

T = TypeVar("T")

# gRPC's default caps a received message at 4 MB. A Pull answer holds up to MAX_PULL_MESSAGES messages
# of up to 10 MB each, so on a capped channel a few large messages make every Pull fail and the
# subscription stalls for good. The clients' own channel to Google lifts both caps; the one they open
# to the emulator does not, so the driver opens that one itself with the same options.
_UNCAPPED_CHANNEL = (("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1))


def portable(error: BaseException, message: str) -> errors.PubSubError:
    """A `fashionstream.pubsub.errors` exception for `error`, used where no driver object classifies it yet."""
    return errors.from_code(classify(error), f"{message}: {getattr(error, 'message', None) or error}", error)


def address(options: dict[str, object]) -> str:
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


def client_kwargs(options: dict[str, object], also_accepted: tuple[str, ...] = ()) -> dict[str, Any]:
    """The client constructor's arguments; `also_accepted`: the caller's own options, for the error message."""
    unknown = sorted(set(options) - _CLIENT_OPTIONS)
    if unknown:
        accepted = ", ".join(sorted(_CLIENT_OPTIONS | set(also_accepted)))
        raise errors.InvalidArgument(f"unknown Pub/Sub option(s) {', '.join(unknown)}; accepted: {accepted}")
    kwargs: dict[str, Any] = dict(options)
    if os.environ.get("PUBSUB_EMULATOR_HOST") and "credentials" not in kwargs and "transport" not in kwargs:
        # The generated clients open a plain-text channel to the emulator by themselves, but still
        # look for Google credentials unless told there are none.
        kwargs["credentials"] = AnonymousCredentials()  # type: ignore[no-untyped-call]
    return kwargs


def _emulator_transport(factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with a gRPC transport to the emulator whose channel has no message-size caps."""
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    get_transport_class = getattr(factory, "get_transport_class", None)
    if not emulator or "transport" in kwargs or get_transport_class is None:
        return kwargs
    channel = grpc.insecure_channel(emulator, options=_UNCAPPED_CHANNEL)
    rest = {key: value for key, value in kwargs.items() if key != "credentials"}  # a transport brings its own
    return {**rest, "transport": get_transport_class("grpc")(channel=channel)}


def make_client(
    factory: Callable[..., T], options: dict[str, object], what: str, also_accepted: tuple[str, ...] = ()
) -> T:
    try:
        return factory(**_emulator_transport(factory, client_kwargs(options, also_accepted)))
    except errors.PubSubError:
        raise
    except DefaultCredentialsError as err:
        # The most common first-run failure: say where credentials come from, not just the class name.
        raise errors.PermissionDenied(
            f"no Google Cloud credentials for {what}",
            hint="set GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default login`, use "
            "Workload Identity, or set PUBSUB_EMULATOR_HOST to use the emulator",
        ) from err
    except Exception as err:  # bad option types, ...
        # The message never includes option values, so credentials cannot leak through it.
        raise errors.InvalidArgument(f"cannot create the Pub/Sub client for {what}: {type(err).__name__}") from err


def check_exists(fetch: Callable[[], object], what: str, resource: str, address: str) -> None:
    """Raise NotFound / Unavailable unless `fetch` (a Get RPC) finds `resource`.

    A publisher or subscriber may lack the permission to *read* its topic or subscription;
    then the check is skipped and the first send or receive tells.
    """
    try:
        fetch()
    except gexc.NotFound as err:
        kind = "topic" if "/topics/" in resource else "subscription"
        raise errors.from_code(
            ErrorCode.NOT_FOUND, f"{what}: {kind} {resource!r} does not exist on {address}", err
        ) from err
    except (gexc.PermissionDenied, gexc.Forbidden):
        return
    except gexc.GoogleAPICallError as err:
        raise portable(err, f"{what}: no good answer from {address}") from err


def close_client(client: PublisherClient | SubscriberClient) -> None:
    client.transport.close()  # type: ignore[no-untyped-call]
