"""What each native Kafka error means: librdkafka error codes -> `ErrorCode`, and which are worth a retry."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from fashionstream.pubsub.errors import ErrorCode, PubSubError


def _code(name: str) -> int | None:
    # Some codes exist only in newer librdkafka versions; a missing one is simply not mapped.
    value = getattr(KafkaError, name, None)
    return value if isinstance(value, int) else None


def _codes(*names: str) -> frozenset[int]:
    return frozenset(c for c in map(_code, names) if c is not None)


NOT_FOUND = _codes("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION", "GROUP_ID_NOT_FOUND")
ALREADY_EXISTS = _codes("TOPIC_ALREADY_EXISTS")
UNAVAILABLE = _codes(
    "_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_QUEUE_FULL", "LEADER_NOT_AVAILABLE",
    "NOT_LEADER_FOR_PARTITION", "NOT_LEADER_OR_FOLLOWER", "BROKER_NOT_AVAILABLE", "NOT_ENOUGH_REPLICAS",
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS",
    "NOT_COORDINATOR", "_WAIT_COORD", "NETWORK_EXCEPTION", "KAFKA_STORAGE_ERROR", "REBALANCE_IN_PROGRESS",
)  # fmt: skip
TIMEOUT = _codes("_MSG_TIMED_OUT", "_TIMED_OUT", "_TIMED_OUT_QUEUE", "REQUEST_TIMED_OUT")
INVALID = _codes(
    "MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "INVALID_CONFIG", "_INVALID_ARG",
    "INVALID_TOPIC_EXCEPTION", "INVALID_PARTITIONS", "INVALID_REPLICATION_FACTOR", "INVALID_REQUEST",
    "POLICY_VIOLATION", "NON_EMPTY_GROUP", "INVALID_RECORD",
)  # fmt: skip
DENIED = _codes(
    "TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED",
    "SASL_AUTHENTICATION_FAILED", "_AUTHENTICATION", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
)  # fmt: skip
CLOSED = _codes("_DESTROY")
#: The broker connection failing: librdkafka reconnects by itself and reports every failed attempt.
CONNECTION = _codes("_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE")
#: The broker refused this client's login (SASL: wrong password, user or mechanism).
LOGIN_REFUSED = _codes("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED")
#: The TLS handshake failed (e.g. a broker certificate that the configured CA does not vouch for).
TLS_FAILED = _codes("_SSL")

_TABLE = (
    (NOT_FOUND, ErrorCode.NOT_FOUND),
    (ALREADY_EXISTS, ErrorCode.ALREADY_EXISTS),
    (UNAVAILABLE, ErrorCode.UNAVAILABLE),
    (TIMEOUT, ErrorCode.TIMEOUT),
    (INVALID, ErrorCode.INVALID_ARGUMENT),
    (DENIED, ErrorCode.PERMISSION_DENIED),
    (CLOSED, ErrorCode.CLOSED),
)


def kafka_error(error: BaseException) -> KafkaError | None:
    """The librdkafka error inside a KafkaException, if `error` is one."""
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return error.args[0]
    return None


def classify(error: BaseException) -> ErrorCode:
    """The portable meaning of a native error raised by this driver."""
    kerr = kafka_error(error)
    if kerr is not None:
        code = kerr.code()
        for codes, result in _TABLE:
            if code in codes:
                return result
        return ErrorCode.UNKNOWN
    if isinstance(error, TimeoutError):  # our own wait for delivery reports ran out
        return ErrorCode.TIMEOUT
    if isinstance(error, BufferError):  # librdkafka's local queue is full
        return ErrorCode.UNAVAILABLE
    if isinstance(error, RuntimeError) and "closed" in str(error).lower():  # "Consumer closed"
        return ErrorCode.CLOSED
    return ErrorCode.UNKNOWN


def retryable(error: BaseException) -> bool:
    """Transient broker trouble is worth another try; a missing topic or a bad message is not.

    A portable error that this driver raised from a native one is judged by that native error: the
    admin client turns librdkafka's errors into portable ones at once, and a coordinator still loading
    on a freshly started broker (COORDINATOR_LOAD_IN_PROGRESS) must be retried, not reported.
    """
    if isinstance(error, PubSubError) and error.__cause__ is not None:
        return retryable(error.__cause__)
    kerr = kafka_error(error)
    if kerr is not None:
        if kerr.fatal():  # the idempotent producer is unusable; only a new client helps
            return False
        return classify(error) in (ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT) or (
            kerr.retriable() and kerr.code() not in NOT_FOUND
        )
    return isinstance(error, (TimeoutError, BufferError))
