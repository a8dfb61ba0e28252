"""What each native Pub/Sub error means: google.api_core exceptions -> `ErrorCode`, and which are worth a retry."""

from __future__ import annotations

from google.api_core import exceptions as gexc

from fashionstream.pubsub.errors import ErrorCode


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
