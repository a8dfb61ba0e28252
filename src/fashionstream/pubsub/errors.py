"""One exception hierarchy for every backend.

The portable layer wraps each native error in one of these, chaining the
original (`raise NotFound(...) from native_error`), so callers catch
`fashionstream.pubsub.PubSubError` whatever the broker.
"""

from __future__ import annotations


class PubSubError(Exception):
    """Base class of every error raised by fashionstream.pubsub."""


class NotFound(PubSubError):
    """A topic, subscription or group does not exist. The message names it."""


class AlreadyExists(PubSubError):
    """A topic or subscription that was to be created exists already."""


class Closed(PubSubError):
    """The publisher or subscriber was closed; no more sends or receives."""


class Timeout(PubSubError):
    """An operation did not finish within its time limit."""


class Unavailable(PubSubError):
    """The broker could not be reached or kept failing; the message names its address."""


class InvalidArgument(PubSubError):
    """A bad URL, option or message (for example one too large for the broker)."""


class PermissionDenied(PubSubError):
    """The credentials do not allow this operation."""


class MissingExtra(PubSubError, ImportError):
    """A backend's client library is not installed; the message names the extra to install."""
