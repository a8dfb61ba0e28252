"""Unique topic and subscription names for one test on a real broker, and their removal afterwards.

Tests share the brokers (and each other's run), so every test gets its own names; what it created is
deleted when it ends, whatever already went away.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import admin


def unique_topology(broker_url: str, unique_name: Callable[[str], str], consumer: str = "consumer") -> Topology:
    """A `Topology` whose topics and subscriptions are named for this test only (nothing is created)."""
    return Topology(
        broker_url,
        images=unique_name("images"),
        predictions=unique_name("predictions"),
        dead_letters=unique_name("images-dlq"),
        service_subscription=unique_name("model-service"),
        consumer_subscription=unique_name(consumer),
    )


def delete_topology(made: Topology, extra_subscriptions: Iterable[tuple[str, str]] = ()) -> None:
    """Delete the service's and the consumer's subscriptions, `extra_subscriptions` ((topic, name) pairs),
    then the three topics; what does not exist (never created, or already deleted) is skipped."""
    pairs = [(made.images, made.service_subscription), (made.predictions, made.consumer_subscription)]
    for topic, sub in [*pairs, *extra_subscriptions]:
        with contextlib.suppress(Exception):
            admin.delete_subscription(made.subscription(topic, sub))
    for name in (made.images, made.predictions, made.dead_letters):
        with contextlib.suppress(Exception):
            admin.delete_topic(made.topic(name))
