"""Receiving from one Pub/Sub subscription: polled Pull (default) or StreamingPull (`pull="streaming"`).

Polled Pull asks with return_immediately and pauses between empty answers: 1 ms
doubling to 10 ms while messages flow (one arrived within the last second), 5 ms
doubling to 100 ms when idle. Never a Pull with a short RPC deadline: a Pull the
client gives up on may still lease messages on the server, which then stay
invisible for a whole ack deadline (measured on the emulator: a 0.1 s deadline
under load cut throughput from ~3,000 to ~300 msg/s). A Pull can limit only
the number of messages, not their bytes: the subscriber asks for as many as its
byte room holds at the size of the previous fetch's largest message.

StreamingPull keeps one bidirectional stream open: the service pushes messages
as they arrive, up to the flow-control limits of unacked messages and bytes
(the subscriber's `max_outstanding` and `max_outstanding_bytes`), and a reader
thread puts them in a queue that `receive_batch` takes from. Acks go on the stream as requests (no call and no
answer per batch), nacks as ModifyAckDeadline(0); an empty request every 30 s
keeps an idle stream open, as google-cloud-pubsub does. A stream that fails or
ends is reported once by `receive_batch` (the portable layer retries what is
retryable) and the next call opens a new one. Messages the stream brought that
nobody took are handed back (ModifyAckDeadline 0) at close.

Why Pull is the default: measured on the emulator in one run (docs/pubsub.md),
Pull was ahead in both latency at a low rate and CPU per message at a high one;
the emulator answers a stream with 100 messages about every 50 ms, which caps a
stream at ~2,000 msg/s and adds 25-50 ms. Google recommends StreamingPull on
the real service, where this cannot be measured here: select it there with
`open_subscription(url, pull="streaming")`.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.pubsub_v1 import SubscriberClient
from google.pubsub_v1.types import PullResponse, StreamingPullRequest, StreamingPullResponse

from fashionstream.pubsub import errors
from fashionstream.pubsub.driver import FlowControl, IncomingMessage, ParsedURL
from fashionstream.pubsub.drivers.gcppubsub import client, resource_path
from fashionstream.pubsub.drivers.gcppubsub.errors import classify, retryable
from fashionstream.pubsub.errors import ErrorCode
from fashionstream.pubsub.subscriber import SubscriberSettings

#: Acknowledge / ModifyAckDeadline requests are limited to 512 KB; ack ids are ~200 bytes at most.
MAX_ACK_IDS = 1000
#: The most messages one Pull returns.
MAX_PULL_MESSAGES = 1000
#: RPC deadline of one Pull; it answers at once (return_immediately), so this only bounds a stuck service.
PULL_DEADLINE_S = 30.0
#: Polled Pull: (first, longest) pause between empty answers while messages flow, and when idle.
PULL_PAUSES_FLOWING = (0.001, 0.01)
PULL_PAUSES_IDLE = (0.005, 0.1)
#: Seconds after the last message during which messages count as flowing.
FLOWING_S = 1.0
#: Seconds between the empty requests that keep an idle stream open.
HEARTBEAT_S = 30.0
#: How each `pull` option value receives.
PULL_MODES = ("streaming", "polling")

_RAW_STREAMING_PULL_REQUEST = StreamingPullRequest.pb()


class _Stream:
    """One StreamingPull call: a request queue feeding it, a reader thread draining it into `inbox`."""

    def __init__(self, driver: GcpSubscriptionDriver) -> None:
        self.inbox = driver._inbox
        self.arrived = driver._arrived
        self.requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.error: BaseException | None = None  # why the stream ended; set by the reader (under `arrived`)
        self.ended = False
        initial = StreamingPullRequest(
            subscription=driver._subscription,
            stream_ack_deadline_seconds=driver._ack_deadline_s,
            max_outstanding_messages=driver._flow.max_messages,
            max_outstanding_bytes=driver._flow.max_bytes,
            client_id=uuid.uuid4().hex,
        )
        self.responses = driver._client.streaming_pull(requests=self._requests(initial), retry=None, timeout=None)
        self.reader = threading.Thread(target=self._read, name="pubsub-stream-reader", daemon=True)
        self.reader.start()

    def _requests(self, initial: StreamingPullRequest) -> Iterator[StreamingPullRequest]:
        """What the stream sends (gRPC's own thread iterates this): the initial request, then acks and heartbeats."""
        yield initial
        while True:
            try:
                request = self.requests.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                request = StreamingPullRequest()  # heartbeat
            if request is None:
                return
            yield request

    def _read(self) -> None:
        error: BaseException | None = None
        try:
            for response in self.responses:
                received = StreamingPullResponse.pb(response).received_messages
                if received:
                    with self.arrived:
                        self.inbox.extend(received)
                        self.arrived.notify()
        except BaseException as err:  # noqa: BLE001 - reported by receive_batch, on the caller's thread
            error = err
        with self.arrived:
            self.error = error or _stream_ended()
            self.ended = True
            self.arrived.notify_all()

    def send(self, request: Any) -> None:
        self.requests.put(request)

    def stop(self) -> None:
        # Half-close first: the service then ends the stream. Cancelled without that, the
        # emulator went on leasing new messages to the dead stream, invisible to every consumer.
        self.requests.put(None)
        self.reader.join(2.0)
        if self.reader.is_alive():
            self.responses.cancel()  # type: ignore[attr-defined]
            self.reader.join(2.0)


class GcpSubscriptionDriver:
    """Receives from one Pub/Sub subscription."""

    def __init__(self, url: ParsedURL, options: dict[str, object], flow: FlowControl | None = None) -> None:
        self._subscription = resource_path(url, "subscriptions")
        options = dict(options)
        pull = options.pop("pull", "polling")
        if pull not in PULL_MODES:
            raise errors.InvalidArgument(f"option pull must be one of {', '.join(PULL_MODES)}, got {pull!r}")
        self._streaming = pull == "streaming"
        self._address = client.address(options)
        self.name = f"Pub/Sub subscription {self._subscription!r} ({self._address})"
        self._client = client.make_client(SubscriberClient, options, self.name, also_accepted=("pull",))
        found: list[Any] = []
        try:
            client.check_exists(
                lambda: found.append(
                    self._client.get_subscription(
                        subscription=self._subscription, timeout=client.METADATA_TIMEOUT_S, retry=None
                    )
                ),
                f"opening {self.name}",
                self._subscription,
                self._address,
            )
        except BaseException:
            client.close_client(self._client)
            raise
        # The stream's deadline is the subscription's (10 s, the service's default, if it could not be read).
        self._ack_deadline_s = (found[0].ack_deadline_seconds if found else 0) or 10
        # StreamingPull's flow control: the service stops pushing while the stream holds this much unacked.
        self._flow = flow or SubscriberSettings().flow_control()
        # What a lease lasts, and what `extend_leases` extends it by: the portable layer renews leases
        # of messages held past a fraction of it.
        self.lease_seconds = float(self._ack_deadline_s)
        self._inbox: collections.deque[Any] = collections.deque()  # raw ReceivedMessages from the stream
        self._arrived = threading.Condition()
        self._stream: _Stream | None = None
        self._last_message_at = float("-inf")  # polled Pull: when a Pull last brought messages
        self._closed = False

    def receive_batch(self, max_messages: int, timeout: float) -> list[IncomingMessage]:
        if not self._streaming:
            return self._pull(max_messages, timeout)
        stream = self._stream or self._open_stream()
        deadline = time.monotonic() + timeout
        inbox = self._inbox
        with self._arrived:
            while not inbox:
                if stream.ended:
                    self._stream = None  # the next call opens a new stream
                    raise stream.error or _stream_ended()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._arrived.wait(remaining)
            if len(inbox) <= max_messages:
                taken = list(inbox)
                inbox.clear()
            else:
                take = inbox.popleft
                taken = [take() for _ in range(max_messages)]
        return [_incoming(received) for received in taken]

    def _open_stream(self) -> _Stream:
        if self._closed:
            raise RuntimeError(f"{self.name}: closed")
        self._stream = _Stream(self)
        return self._stream

    def _pull(self, max_messages: int, timeout: float) -> list[IncomingMessage]:
        """One polled receive: Pull answering at once, repeated with back-off until `timeout`."""
        now = time.monotonic()
        deadline = now + timeout
        # While messages flow, the next one is seen within a few ms; an idle subscription is
        # asked ten times a second (a Pull costs the client a few hundred µs of CPU).
        flowing = now - self._last_message_at < FLOWING_S
        pause, longest = PULL_PAUSES_FLOWING if flowing else PULL_PAUSES_IDLE
        while True:
            try:
                with warnings.catch_warnings():
                    # The client deprecates return_immediately; the module docstring says why it is used here.
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
                self._last_message_at = time.monotonic()
                # The raw protobuf, not proto-plus wrappers: reading fields through the wrappers
                # (a datetime conversion, a map copy, ...) doubled the client's CPU per message.
                return [_incoming(received) for received in PullResponse.pb(response).received_messages]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(pause, remaining))  # back off so an idle subscriber does not spin
            pause = min(pause * 2, longest)

    def send_acks(self, ack_ids: Sequence[Hashable]) -> None:
        stream = self._stream
        for start in range(0, len(ack_ids), MAX_ACK_IDS):
            chunk = [str(a) for a in ack_ids[start : start + MAX_ACK_IDS]]
            if stream is not None and not stream.ended:
                # On the stream: no call and no answer per batch. A stream that breaks before
                # sending it loses the ack, which only means a redelivery.
                stream.send(StreamingPullRequest.wrap(_RAW_STREAMING_PULL_REQUEST(ack_ids=chunk)))
                continue
            self._client.acknowledge(
                subscription=self._subscription, ack_ids=chunk, timeout=client.METADATA_TIMEOUT_S, retry=None
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
                timeout=client.METADATA_TIMEOUT_S,
                retry=None,
            )

    def extend_leases(self, ack_ids: Sequence[Hashable]) -> None:
        """Give these held messages another ack deadline from now, so they are not redelivered meanwhile."""
        for start in range(0, len(ack_ids), MAX_ACK_IDS):
            self._client.modify_ack_deadline(
                subscription=self._subscription,
                ack_ids=[str(a) for a in ack_ids[start : start + MAX_ACK_IDS]],
                ack_deadline_seconds=self._ack_deadline_s,
                timeout=client.METADATA_TIMEOUT_S,
                retry=None,
            )

    def is_retryable(self, error: BaseException) -> bool:
        return retryable(error)

    def error_code(self, error: BaseException) -> ErrorCode:
        return classify(error)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()
        with self._arrived:
            unclaimed = [received.ack_id for received in self._inbox]
            self._inbox.clear()
        if unclaimed:
            # Brought by the stream but never handed out: back for prompt redelivery, best effort
            # (otherwise they come back after the ack deadline).
            try:  # noqa: SIM105 - the client is closed next either way
                self.send_nacks(unclaimed)
            except gexc.GoogleAPICallError:
                pass
        client.close_client(self._client)


def _stream_ended() -> BaseException:
    """What a stream the service ended without an error is reported as: retryable, like an unavailable service."""
    return gexc.ServiceUnavailable("the StreamingPull stream ended")  # type: ignore[no-untyped-call]


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
        stamp.seconds + stamp.nanos / 1e9 if message.HasField("publish_time") else None,
        # The service counts deliveries only on subscriptions with a dead-letter policy; 0 means "not counted".
        received.delivery_attempt or None,
    )


__all__ = ["GcpSubscriptionDriver"]
