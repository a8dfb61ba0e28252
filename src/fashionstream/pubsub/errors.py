"""One exception hierarchy for every backend, and the one table from a driver's `ErrorCode` to it.

The portable layer wraps each native error in one of these, chaining the
original (`raise NotFound(...) from native_error`), so callers catch
`fashionstream.pubsub.PubSubError` whatever the broker. Drivers classify their
native errors as an `ErrorCode`; `from_code` turns a code into the exception,
both where the portable layer wraps a driver's error and where a driver raises
one itself while opening (when there is no driver object yet to classify with).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """A driver's classification of one of its native errors."""

    UNKNOWN = "unknown"
    NOT_FOUND = "not_found"  # topic / subscription / group does not exist
    ALREADY_EXISTS = "already_exists"
    TIMEOUT = "timeout"  # deadline passed without an answer
    UNAVAILABLE = "unavailable"  # broker unreachable or temporarily failing
    INVALID_ARGUMENT = "invalid_argument"  # bad option, message too large, ...
    PERMISSION_DENIED = "permission_denied"
    CLOSED = "closed"  # the native client was already closed


class PubSubError(Exception):
    """Base class of every error raised by fashionstream.pubsub.

    `message` says what failed; `hint`, when there is one, what a user can do about it. The
    text of the exception is both; a command line may show `message` with a hint of its own.
    """

    def __init__(self, message: str = "", *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


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


class InvalidArgument(PubSubError, ValueError):
    """A bad URL, option or message (for example one too large for the broker).

    Also a ValueError, so code that validates input (a CLI, a config loader)
    can catch bad broker URLs without knowing this package.
    """


class PermissionDenied(PubSubError):
    """The credentials do not allow this operation."""


class MissingExtra(PubSubError, ImportError):
    """A backend's client library is not installed; the message names the extra to install."""


#: The exception each code becomes. Exactly one class per code, so an exception maps back to its code.
EXCEPTION_FOR_CODE: dict[ErrorCode, type[PubSubError]] = {
    ErrorCode.UNKNOWN: PubSubError,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.ALREADY_EXISTS: AlreadyExists,
    ErrorCode.TIMEOUT: Timeout,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.INVALID_ARGUMENT: InvalidArgument,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.CLOSED: Closed,
}

# What a user can do about it. Worded to make sense wherever the error surfaces (Python, the CLI,
# a container's log): no function names, no repository scripts; the CLI adds its own flag hints.
_HINT_FOR_CODE: dict[ErrorCode, str] = {
    ErrorCode.NOT_FOUND: "check the name, or create it first",
    ErrorCode.UNAVAILABLE: "is the broker running and reachable at that address?",
    ErrorCode.TIMEOUT: "the broker did not answer in time; check that it is running, or raise the timeout",
    ErrorCode.PERMISSION_DENIED: "check the credentials passed as options",
}


def code_of(error: PubSubError) -> ErrorCode:
    """The code a portable exception stands for (UNKNOWN for subclasses outside the table)."""
    for code, cls in EXCEPTION_FOR_CODE.items():
        if type(error) is cls:
            return code
    return ErrorCode.UNKNOWN


def from_code(code: ErrorCode, message: str, cause: BaseException | None = None) -> PubSubError:
    """The portable exception for `code`: `message`, the code's hint, and `cause` chained.

    The caller raises it (`raise from_code(...) from cause` or plainly; the
    cause is set either way), so the native error stays in the traceback.
    """
    error = EXCEPTION_FOR_CODE[code](message, hint=_HINT_FOR_CODE.get(code, ""))
    error.__cause__ = cause
    return error
