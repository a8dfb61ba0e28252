"""`fashionstream serve | produce | consume | demo`: from options to calls, and the process life cycle.

The options of each command are its configuration dataclass (config.py); the work lives in
service.py, producer.py, consumer.py and demo.py. This module installs signal handlers, opens
the broker clients and prints results. Failures a user can cause (broker unreachable, topic
missing, no model) are turned into one line by the `fashionstream` entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import TYPE_CHECKING

from fashionstream.pipeline.config import ConsumeConfig, DemoConfig, ProduceConfig, ServiceConfig, WatchConfig
from fashionstream.pipeline.logs import configure_logging
from fashionstream.pipeline.options import add_options, load

if TYPE_CHECKING:
    from fashionstream.pubsub.publisher import Publisher

log = logging.getLogger("fashionstream")


def _parser(prog: str, description: str, config_class: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"fashionstream {prog}", description=description)
    add_options(parser, config_class)
    return parser


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: finishing the work in hand, then exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


# --------------------------------------------------------------------------- serve


def serve_parser() -> argparse.ArgumentParser:
    return _parser(
        "serve", "Run the model service: images -> micro-batched ONNX inference -> predictions.", ServiceConfig
    )


def serve_main(argv: list[str]) -> int:
    config = load(ServiceConfig, serve_parser(), argv)
    configure_logging(config.log_format, config.log_level)
    from fashionstream.pipeline.metrics import Health, MetricsServer, ServiceMetrics
    from fashionstream.pipeline.reload import RELOAD_PATH, reload_action
    from fashionstream.pipeline.service import ModelService
    from fashionstream.pipeline.topic_check import TopicCheck, create_service_topics
    from fashionstream.pubsub import open_subscription, open_topic

    topology = config.topology()
    # Installed before the (slow) start-up so an early SIGTERM still exits cleanly.
    stop = _stop_on_signals()
    services: list[ModelService] = []  # the reload triggers reach the service through this once it exists
    # SIGHUP reloads the model (and no longer ends the process, its default); before the model has
    # loaded there is nothing to replace, so it is ignored.
    signal.signal(signal.SIGHUP, lambda signum, frame: services[0].reloader.signal() if services else None)
    if config.create_topics:
        create_service_topics(config)
    metrics, health = ServiceMetrics(), Health(stall_after_s=config.stall_timeout)
    actions = {RELOAD_PATH: reload_action(lambda: services[0].reloader if services else None)}
    server = MetricsServer(metrics.registry, health, config.metrics_host, config.metrics_port, actions).start()
    publisher_options = config.publisher_options()
    try:
        with (
            open_subscription(topology.images_subscription_url, **config.subscriber_options()) as subscriber,
            _closed_quickly(open_topic(topology.topic(topology.predictions), **publisher_options)) as predictions,
            _closed_quickly(open_topic(topology.topic(topology.dead_letters), **publisher_options)) as dead_letters,
        ):
            handler = config.model_handler()
            service = ModelService(config, handler, subscriber, predictions, dead_letters, metrics=metrics,
                                   health=health)  # fmt: skip
            services.append(service)
            metrics.watch_backlog(subscriber.backlog)
            # A plain line on stdout so scripts and tests can find a port picked with --metrics-port 0.
            print(
                f"fashionstream serve: metrics on http://{config.metrics_host}:{server.port}/metrics "
                f"health on /livez (= /healthz) and /readyz; model {service.model_id}",
                flush=True,
            )
            log.info("metrics listening", extra={"port": server.port})
            topic_check = TopicCheck(config, health).start()
            try:
                stats = service.run(stop)
            finally:
                topic_check.close()
    finally:
        server.close()
    log.info("exit", extra={"received": stats.received, "predicted": stats.predicted, "acked": stats.acked,
                            "dead_lettered": sum(stats.dead_lettered.values())})  # fmt: skip
    return 0


#: Seconds a publisher may still wait for confirmations when `serve` closes it. The service's own
#: shutdown already waited --shutdown-timeout for its answers, and what is still unconfirmed is
#: redelivered (its request was not acked); so this stays short, and SIGTERM ends the process within
#: Kubernetes' default 30 s grace period even while a topic has vanished or the broker is away.
PUBLISHER_CLOSE_TIMEOUT_S = 1.0


@contextlib.contextmanager
def _closed_quickly(publisher: Publisher) -> Iterator[Publisher]:
    """`publisher`, closed with PUBLISHER_CLOSE_TIMEOUT_S on the way out instead of its own flush timeout."""
    try:
        yield publisher
    finally:
        from fashionstream.pubsub.errors import PubSubError

        try:
            publisher.close(timeout=PUBLISHER_CLOSE_TIMEOUT_S)
        except PubSubError as error:
            log.warning("closing %s: %s", publisher.name, error)


# --------------------------------------------------------------------------- produce


def produce_parser() -> argparse.ArgumentParser:
    return _parser("produce", "Send Fashion-MNIST test images or image files to the images topic.", ProduceConfig)


def produce_main(argv: list[str]) -> int:
    config = load(ProduceConfig, produce_parser(), argv)
    configure_logging(config.log_format, config.log_level)
    from tqdm import tqdm

    from fashionstream.pipeline.producer import produce, sources
    from fashionstream.pipeline.topology import Topology
    from fashionstream.pubsub import admin, open_topic

    topology = Topology(config.broker, images=config.topic)
    url = topology.topic(config.topic)
    if config.create_topics:
        admin.create_topic(url, **config.topic_creation(), **config.admin_options())
    with (
        open_topic(url, **config.publisher_options()) as publisher,
        tqdm(total=config.count, unit="img", disable=not config.progress, file=sys.stderr) as bar,
    ):
        summary = produce(publisher, sources(config.source, config.count), topology.flavour, fmt=config.format,
                          rate=config.rate, progress=bar)  # fmt: skip
    if config.ids_file:
        with open(config.ids_file, "w", encoding="utf-8") as out:
            out.writelines(f"{i}\n" for i in summary.ids)
    print(
        f"sent {summary.sent}, confirmed {summary.confirmed}, failed {summary.failed} "
        f"to {url} in {summary.seconds:.2f}s ({summary.rate:.0f} img/s)"
    )
    return 0 if summary.failed == 0 else 1


# --------------------------------------------------------------------------- consume


def consume_parser() -> argparse.ArgumentParser:
    return _parser("consume", "Print predictions as they arrive, with running accuracy and latency.", ConsumeConfig)


def consume_main(argv: list[str]) -> int:
    config = load(ConsumeConfig, consume_parser(), argv)
    configure_logging(config.log_format, config.log_level)
    from fashionstream.classifier.fashion_mnist_files import CLASS_NAMES
    from fashionstream.pipeline.consumer import Tally, read_predictions, table_header, table_row
    from fashionstream.pipeline.contract import PredictionEvent
    from fashionstream.pipeline.topology import Topology
    from fashionstream.pubsub import admin, open_subscription

    topology = Topology(config.broker, predictions=config.topic, consumer_subscription=config.subscription)
    if config.create_topics:
        admin.create_topic(topology.topic(config.topic), **config.topic_creation(), **config.admin_options())
        admin.create_subscription(topology.predictions_subscription_url, topic=config.topic,
                                  **config.admin_options())  # fmt: skip
    stop = _stop_on_signals()
    tally = Tally()
    started = time.perf_counter()

    def show(event: PredictionEvent) -> None:
        if config.quiet:
            return
        if config.jsonl:
            print(event.to_json().decode(), flush=True)
            return
        line = table_row(event, CLASS_NAMES)
        if tally.accuracy is not None and len(tally.answered) % 100 == 0:
            lat = tally.latency()
            line += (
                f"   [{len(tally.answered)} answered, accuracy {tally.accuracy:.2%}, "
                f"p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms]"
            )
        print(line, flush=True)

    def finished() -> bool:
        return stop.is_set() or (config.count is not None and len(tally.answered) >= config.count)

    with open_subscription(topology.predictions_subscription_url, **config.subscriber_options()) as subscriber:
        if not config.jsonl and not config.quiet:
            print(table_header(), flush=True)
        read_predictions(subscriber, tally, until=finished, idle_timeout=config.timeout, on_new=show)
    summary = {
        "answered": len(tally.answered),
        "duplicates": tally.duplicates,
        "invalid": tally.invalid,
        "accuracy": tally.accuracy,
        "latency_ms": tally.latency() if tally.latencies_ms else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if config.jsonl:
        print(json.dumps(summary), file=sys.stderr)
    else:
        print(_summary_text(summary))
    return 0


def _summary_text(summary: Mapping[str, object]) -> str:
    lines = [f"answered {summary['answered']}  duplicates {summary['duplicates']}  invalid {summary['invalid']}"]
    accuracy = summary["accuracy"]
    if isinstance(accuracy, float):
        lines.append(f"accuracy {accuracy:.2%}")
    latency = summary["latency_ms"]
    if isinstance(latency, dict):
        lines.append("latency " + "  ".join(f"{k} {v:.1f} ms" for k, v in latency.items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------- demo


def demo_parser() -> argparse.ArgumentParser:
    return _parser("demo", "Produce, serve and consume N test images in one process, then print a summary.", DemoConfig)


def demo_main(argv: list[str]) -> int:
    config = load(DemoConfig, demo_parser(), argv)
    configure_logging(config.log_format, config.log_level)
    if config.watch:
        return _demo_watched(config)
    from fashionstream.pipeline.demo import run_demo

    result = run_demo(config)
    doc = result.as_dict()
    print(json.dumps(doc) if config.json else _demo_text(config, result.model, doc))
    return 0 if doc["lost"] == 0 else 1


def _demo_watched(config: DemoConfig) -> int:
    """`demo --watch`: the page first (its URL the first line on stdout), then the run and its summary, then the
    page alone until SIGINT/SIGTERM. With --json, stdout is the URL line and the JSON object, nothing else."""
    import os

    from fashionstream.pipeline.demo import DemoWatch, run_demo
    from fashionstream.pubsub.urls import safe_url

    watch = DemoWatch(config)  # without the `watch` extra this fails here, before anything is sent
    try:
        try:
            url = watch.serve()
        except OSError as error:
            reason = os.strerror(error.errno).lower() if error.errno else str(error)
            print(
                f"fashionstream demo: error: the watch page cannot listen on {DemoWatch.HOST}:{config.watch_port}: "
                f"{reason} (--watch-port picks another port, 0 a free one)",
                file=sys.stderr,
            )
            return 1
        # The line `fashionstream watch` prints, so scripts and tests find a port picked with --watch-port 0.
        print(f"fashionstream watch: page on {url} watching {safe_url(config.broker)}", flush=True)
        result = run_demo(config, before_sending=watch.follow)
        # From here SIGINT/SIGTERM end the page cleanly; installed before the summary, which a script may
        # answer at once with SIGTERM.
        stop = _stop_on_signals()
        doc = result.as_dict()
        print(json.dumps(doc) if config.json else _demo_text(config, result.model, doc), flush=True)
        print(f"page still on {url}: Ctrl-C to stop", file=sys.stderr if config.json else sys.stdout, flush=True)
        watch.wait(stop)
    finally:
        watch.close()
    if watch.errors:
        raise watch.errors[0]
    return 0 if doc["lost"] == 0 else 1


def _ms(value: object) -> str:
    return f"{value:.1f} ms" if isinstance(value, float) else "n/a"


def _demo_text(config: DemoConfig, model: str, doc: Mapping[str, object]) -> str:
    latency = doc["latency_ms"]
    assert isinstance(latency, dict)
    accuracy = doc["accuracy"]
    accuracy_text = f"{accuracy:.2%}" if isinstance(accuracy, float) else "n/a"
    if config.rate is None:
        # Every image is queued at once, so most of each image's latency is its wait behind the others.
        latency_note = "(all images sent at once: mostly time spent queueing; --rate R shows latency under load R)"
    else:
        latency_note = f"(sent at {config.rate:g} images/s)"
    return (
        f"fashionstream demo over {config.broker} with model {model}\n"
        f"  sent           {doc['sent']}\n"
        f"  answered       {doc['answered']}\n"
        f"  lost           {doc['lost']}\n"
        f"  duplicates     {doc['duplicates']}\n"
        f"  dead-lettered  {doc['dead_lettered']}\n"
        f"  accuracy       {accuracy_text}\n"
        f"  throughput     {doc['throughput_img_s']:.0f} images/s\n"
        f"  latency        p50 {_ms(latency['p50'])}   p95 {_ms(latency['p95'])}   p99 {_ms(latency['p99'])}\n"
        f"                 {latency_note}"
    )


# --------------------------------------------------------------------------- watch


def watch_parser() -> argparse.ArgumentParser:
    return _parser(
        "watch",
        "Serve a live web page of the stream: the latest images with their predictions, throughput, latency, "
        "dead letters, accuracy and the model that answered.",
        WatchConfig,
    )


def watch_main(argv: list[str]) -> int:
    config = load(WatchConfig, watch_parser(), argv)
    configure_logging(config.log_format, config.log_level)
    import asyncio
    from contextlib import ExitStack

    from fashionstream.pipeline.watch import WatchState
    from fashionstream.pipeline.watch_feed import WatchFeed, WatchSubscriptions, open_subscribers
    from fashionstream.pipeline.watch_page import serve
    from fashionstream.pubsub import parse_broker
    from fashionstream.pubsub.urls import safe_url

    if parse_broker(config.broker).scheme == "mem":
        # The embedded broker lives inside one process: a watch process of its own would see an empty broker.
        print(
            "fashionstream watch: error: mem:// is the embedded broker of one process, so a separate watch sees "
            "nothing; `fashionstream demo --watch` serves this page from inside the demo's process, or watch a "
            "stream on Kafka (kafka://) or Pub/Sub (gcppubsub://)",
            file=sys.stderr,
        )
        return 2
    topology = config.topology()
    if config.create_topics:
        topology.create(subscriptions=(), options=config.admin_options(), **config.topic_creation())
    subscriptions = WatchSubscriptions.of(topology, config.subscription)
    subscriptions.create(topology, config.admin_options())
    stop = _stop_on_signals()
    state, lock = WatchState(), threading.Lock()
    feed = WatchFeed(state, lock, stop)

    def ready(port: int) -> None:
        # A plain line on stdout so scripts and tests can find a port picked with --port 0.
        print(f"fashionstream watch: page on http://{config.host}:{port}/ watching {safe_url(config.broker)}",
              flush=True)  # fmt: skip

    with ExitStack() as stack:
        feed.start(open_subscribers(stack, subscriptions, config.subscriber_options()))
        try:
            asyncio.run(serve(state, lock, stop, config.host, config.port, ready))
        finally:
            stop.set()
            feed.join()
    if feed.errors:
        raise feed.errors[0]
    return 0
