"""Checks, while the service runs, that its topics still exist; recreates them only when asked to.

A Kafka cluster replaced under a running service (a new cluster, or one whose data was lost) comes
back without the topics. The Kafka consumer then simply receives nothing and the producer holds its
messages until they time out: nothing fails loudly, so without a check the service would look
healthy while it answers nobody. Every `interval` seconds this thread asks the broker whether the
three topics exist: while one is missing, `Health` carries a "topics" problem (/readyz fails, and
/livez once nothing has been confirmed for the stall timeout). With `--create-topics` the topics and
the service's subscription are created again instead, as at start-up; without it the service never
creates anything, so a mistyped broker address cannot litter a cluster with topics.
"""

from __future__ import annotations

import logging
import threading

from fashionstream.pipeline.config import ServiceConfig
from fashionstream.pipeline.metrics import Health
from fashionstream.pubsub import admin

log = logging.getLogger("fashionstream.serve")


def create_service_topics(config: ServiceConfig) -> None:
    """Create the service's three topics and its subscription on `images` where missing."""
    topology = config.topology()
    topology.create(
        subscriptions=((topology.images, topology.service_subscription),),
        options=config.admin_options(),
        **config.topic_creation(),
    )


class TopicCheck:
    """A daemon thread that checks the topics every `config.topic_check_interval` seconds (see the module doc)."""

    def __init__(self, config: ServiceConfig, health: Health) -> None:
        self.config = config
        self.health = health
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="topic-check", daemon=True)

    def start(self) -> TopicCheck:
        if self.config.topic_check_interval > 0:
            self._thread.start()
        return self

    def close(self) -> None:
        # Not joined: a check may wait on an unreachable broker for a while, and shutdown must stay quick.
        self._stop.set()

    def missing(self) -> list[str]:
        """The service's topics that do not exist now (raises when the broker cannot be asked)."""
        topology = self.config.topology()
        names = (topology.images, topology.predictions, topology.dead_letters)
        options = self.config.admin_options()
        return [name for name in names if not admin.topic_exists(topology.topic(name), **options)]

    def check(self) -> None:
        """One round: look, recreate if allowed, and record the outcome in `health`."""
        was = self.health.problems().get("topics")
        try:
            missing = self.missing()
            if self.config.create_topics and (missing or "receive" in self.health.problems()):
                # A receive problem may be a deleted subscription (Pub/Sub): creating is idempotent.
                create_service_topics(self.config)
                if missing:
                    log.warning("recreated missing topics %s (--create-topics)", ", ".join(missing))
                missing = self.missing()
        except Exception as error:  # noqa: BLE001 - an unreachable broker is reported, not fatal
            problem = f"could not check the topics: {type(error).__name__}: {error}"
        else:
            if not missing:
                if was is not None:
                    log.info("topics present again: %s", was)
                self.health.resolved("topics")
                return
            problem = f"missing topics {', '.join(missing)}" + (
                "" if self.config.create_topics else " (serve --create-topics would recreate them)"
            )
        problem = problem[:300]  # as Health keeps it
        if problem != was:
            log.warning("%s", problem)
        self.health.problem("topics", problem)

    def _run(self) -> None:
        while not self._stop.wait(self.config.topic_check_interval):
            self.check()
