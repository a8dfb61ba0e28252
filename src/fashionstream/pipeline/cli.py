"""`fashionstream serve | produce | consume | demo`: argument parsing and process life cycle.

The work itself lives in service.py, producer.py, consumer.py and demo.py;
this module turns options (command line or FASHIONSTREAM_* variables) into
calls, installs signal handlers and prints summaries.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType

from fashionstream.pipeline import contract
from fashionstream.pipeline.options import (
    add_logging_options,
    apply_env_defaults,
    configure_logging,
    parse_client_options,
)
from fashionstream.pipeline.topology import (
    CONSUMER_SUBSCRIPTION,
    DEAD_LETTERS,
    IMAGES,
    PREDICTIONS,
    SERVICE_SUBSCRIPTION,
    Topology,
)

log = logging.getLogger("fashionstream")

BROKER_HELP = "broker URL: mem:// (embedded, this process only), kafka://HOST:PORT or gcppubsub://projects/PROJECT"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"fashionstream {prog}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    apply_env_defaults(parser)
    return parser.parse_args(argv)


def _friendly_errors(command: str) -> Callable[[Callable[[list[str]], int]], Callable[[list[str]], int]]:
    """Turn the failures a user can cause (broker unreachable, topic missing, no model, no dataset)
    into one clear line and exit status 1 instead of a traceback."""

    def wrap(main: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        @functools.wraps(main)
        def run(argv: list[str]) -> int:
            from fashionstream.pubsub.errors import PubSubError

            try:
                return main(argv)
            except (PubSubError, FileNotFoundError, RuntimeError) as error:
                # RuntimeError covers the dataset reader's DatasetError; FileNotFoundError a missing model.
                log.debug("fatal", exc_info=True)
                print(f"fashionstream {command}: error: {error}", file=sys.stderr)
                return 1

        return run

    return wrap


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--subscriber-option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="option for open_subscription, repeatable: portable (ack_deadline=60) or native "
        "(session.timeout.ms=6000, sasl.mechanism=PLAIN ...)",
    )
    p.add_argument(
        "--publisher-option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="option for open_topic, repeatable: portable (linger=0.01) or native (compression.type=lz4 ...)",
    )


# --------------------------------------------------------------------------- serve


def serve_parser() -> argparse.ArgumentParser:
    p = _parser("serve", "Run the model service: images -> micro-batched ONNX inference -> predictions.")
    p.add_argument("--broker", required=False, default=None, help=BROKER_HELP + " (required)")
    p.add_argument("--images-topic", default=IMAGES)
    p.add_argument("--predictions-topic", default=PREDICTIONS)
    p.add_argument("--dead-letter-topic", default=DEAD_LETTERS)
    p.add_argument(
        "--subscription",
        default=SERVICE_SUBSCRIPTION,
        help="Kafka consumer group / Pub/Sub subscription; replicas sharing it split the work",
    )
    p.add_argument("--model", default=None, help="ONNX model path (default: the shipped model)")
    p.add_argument("--threads", type=_positive_int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--max-batch-size", type=_positive_int, default=64, help="images per model call at most")
    p.add_argument(
        "--max-wait-ms",
        type=_non_negative_float,
        default=20.0,
        help="longest time the oldest image of a batch waits for the batch to fill",
    )
    p.add_argument(
        "--max-message-bytes",
        type=_positive_int,
        default=contract.DEFAULT_MAX_MESSAGE_BYTES,
        help="larger requests are dead-lettered as too_large",
    )
    p.add_argument("--metrics-port", type=int, default=9100, help="port for /metrics and /healthz; 0 picks a free one")
    p.add_argument("--metrics-host", default="0.0.0.0")
    p.add_argument(
        "--shutdown-timeout",
        type=_non_negative_float,
        default=4.0,
        help="seconds to finish the in-flight batch after SIGTERM/SIGINT",
    )
    p.add_argument(
        "--create-topics",
        action="store_true",
        help="create the images, predictions and dead-letter topics and the subscription if missing",
    )
    _add_client_options(p)
    add_logging_options(p)
    return p


@_friendly_errors("serve")
def serve_main(argv: list[str]) -> int:
    parser = serve_parser()
    args = _parse(parser, argv)
    if not args.broker:
        parser.error("--broker (or FASHIONSTREAM_BROKER) is required, e.g. --broker kafka://127.0.0.1:9092")
    configure_logging(args.log_format, args.log_level)
    try:
        subscriber_options = parse_client_options(args.subscriber_option)
        publisher_options = parse_client_options(args.publisher_option)
    except ValueError as error:
        parser.error(str(error))

    from fashionstream.pipeline.metrics import Health, MetricsServer, ServiceMetrics
    from fashionstream.pipeline.model import PredictorModel
    from fashionstream.pipeline.service import ModelService, ServiceConfig
    from fashionstream.pubsub import open_subscription, open_topic

    config = ServiceConfig(
        broker=args.broker,
        images_topic=args.images_topic,
        predictions_topic=args.predictions_topic,
        dead_letter_topic=args.dead_letter_topic,
        subscription=args.subscription,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_message_bytes=args.max_message_bytes,
        shutdown_timeout_s=args.shutdown_timeout,
        create_topics=args.create_topics,
    )
    try:
        topology = config.topology()
    except ValueError as error:
        parser.error(str(error))

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: finishing the in-flight batch, then exiting", signal.Signals(signum).name)
        stop.set()

    # Installed before the (slow) model load so an early SIGTERM still exits cleanly.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if config.create_topics:
        topology.create(subscriptions=((topology.images, topology.service_subscription),))
    model = PredictorModel(args.model, threads=args.threads)
    metrics, health = ServiceMetrics(), Health()
    server = MetricsServer(metrics.registry, health, args.metrics_host, args.metrics_port).start()
    # A plain line on stdout so scripts and tests can find a port picked with --metrics-port 0.
    print(
        f"fashionstream serve: metrics on http://{args.metrics_host}:{server.port}/metrics "
        f"health on /healthz; model {model.model_id}",
        flush=True,
    )
    log.info("metrics listening", extra={"port": server.port})
    try:
        with (
            open_subscription(topology.images_subscription_url, **subscriber_options) as subscriber,
            open_topic(topology.topic(config.predictions_topic), **publisher_options) as predictions,
            open_topic(topology.topic(config.dead_letter_topic), **publisher_options) as dead_letters,
        ):
            service = ModelService(config, model, subscriber, predictions, dead_letters, metrics=metrics, health=health)
            stats = service.run(stop)
    finally:
        server.close()
    log.info(
        "exit",
        extra={
            "received": stats.received,
            "predicted": stats.predicted,
            "acked": stats.acked,
            "dead_lettered": sum(stats.dead_lettered.values()),
        },
    )
    return 0


# --------------------------------------------------------------------------- produce


def produce_parser() -> argparse.ArgumentParser:
    p = _parser("produce", "Send Fashion-MNIST test images or image files to the images topic.")
    p.add_argument("--broker", default=None, help=BROKER_HELP + " (required)")
    p.add_argument("--topic", default=IMAGES)
    p.add_argument(
        "--source",
        nargs="+",
        default=["test"],
        help="'test' (the Fashion-MNIST test split, with labels) or image files / directories",
    )
    p.add_argument("--count", type=_positive_int, default=None, help="how many images (default: all)")
    p.add_argument("--rate", type=_non_negative_float, default=None, help="images per second (default: flat out)")
    p.add_argument(
        "--format",
        dest="format",
        choices=("cloudevents", "seed-json"),
        default="cloudevents",
        help="CloudEvents binary mode, or the original system's JSON {id, image}",
    )
    p.add_argument("--create-topics", action="store_true", help="create the topic if missing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--ids-file", default=None, help="write the sent ids (one per line) to this file")
    add_logging_options(p, "warning")
    return p


@_friendly_errors("produce")
def produce_main(argv: list[str]) -> int:
    parser = produce_parser()
    args = _parse(parser, argv)
    if not args.broker:
        parser.error("--broker (or FASHIONSTREAM_BROKER) is required")
    configure_logging(args.log_format, args.log_level)
    from tqdm import tqdm

    from fashionstream.pipeline.producer import produce, sources
    from fashionstream.pubsub import admin, open_topic

    try:
        topology = Topology(args.broker, images=args.topic)
    except ValueError as error:
        parser.error(str(error))
    if args.create_topics:
        admin.create_topic(topology.topic(args.topic))
    total = args.count if args.count is not None else (10_000 if args.source == ["test"] else None)
    with (
        open_topic(topology.topic(args.topic)) as publisher,
        tqdm(total=total, unit="img", disable=args.no_progress, file=sys.stderr) as bar,
    ):
        summary = produce(
            publisher, sources(args.source, args.count), topology.flavour, fmt=args.format, rate=args.rate, progress=bar
        )
    if args.ids_file:
        with open(args.ids_file, "w", encoding="utf-8") as out:
            out.writelines(f"{i}\n" for i in summary.ids)
    print(
        f"sent {summary.sent}, confirmed {summary.confirmed}, failed {summary.failed} "
        f"to {topology.topic(args.topic)} in {summary.seconds:.2f}s ({summary.rate:.0f} img/s)"
    )
    return 0 if summary.failed == 0 else 1


# --------------------------------------------------------------------------- consume


def consume_parser() -> argparse.ArgumentParser:
    p = _parser("consume", "Print predictions as they arrive, with running accuracy and latency.")
    p.add_argument("--broker", default=None, help=BROKER_HELP + " (required)")
    p.add_argument("--topic", default=PREDICTIONS)
    p.add_argument("--subscription", default=CONSUMER_SUBSCRIPTION, help="Kafka group / Pub/Sub subscription")
    p.add_argument("--jsonl", action="store_true", help="one JSON prediction per line instead of a table")
    p.add_argument("--count", type=_positive_int, default=None, help="stop after this many distinct predictions")
    p.add_argument(
        "--timeout", type=_non_negative_float, default=None, help="stop after this many seconds without a new message"
    )
    p.add_argument("--create-topics", action="store_true", help="create the topic and subscription if missing")
    p.add_argument("--quiet", action="store_true", help="only the summary")
    add_logging_options(p, "warning")
    return p


@_friendly_errors("consume")
def consume_main(argv: list[str]) -> int:
    parser = consume_parser()
    args = _parse(parser, argv)
    if not args.broker:
        parser.error("--broker (or FASHIONSTREAM_BROKER) is required")
    configure_logging(args.log_format, args.log_level)
    from fashionstream.classifier.fashion_mnist_files import CLASS_NAMES
    from fashionstream.pipeline.consumer import Tally, read_predictions, table_header, table_row
    from fashionstream.pipeline.contract import Prediction
    from fashionstream.pubsub import open_subscription

    try:
        topology = Topology(args.broker, predictions=args.topic, consumer_subscription=args.subscription)
    except ValueError as error:
        parser.error(str(error))
    if args.create_topics:
        from fashionstream.pubsub import admin

        admin.create_topic(topology.topic(args.topic))
        admin.create_subscription(topology.predictions_subscription_url, topic=args.topic)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    tally = Tally()
    started = time.perf_counter()
    if not args.jsonl and not args.quiet:
        print(table_header(), flush=True)

    def show(prediction: Prediction) -> None:
        if args.quiet:
            return
        if args.jsonl:
            print(prediction.to_json().decode(), flush=True)
            return
        line = table_row(prediction, CLASS_NAMES)
        if tally.accuracy is not None and len(tally.answered) % 100 == 0:
            lat = tally.latency()
            line += (
                f"   [{len(tally.answered)} answered, accuracy {tally.accuracy:.2%}, "
                f"p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms]"
            )
        print(line, flush=True)

    def finished() -> bool:
        return stop.is_set() or (args.count is not None and len(tally.answered) >= args.count)

    with open_subscription(topology.predictions_subscription_url) as subscriber:
        read_predictions(subscriber, tally, until=finished, idle_timeout=args.timeout, on_new=show)
    elapsed = time.perf_counter() - started
    summary = {
        "answered": len(tally.answered),
        "duplicates": tally.duplicates,
        "invalid": tally.invalid,
        "accuracy": tally.accuracy,
        "latency_ms": tally.latency() if tally.latencies_ms else None,
        "seconds": round(elapsed, 2),
    }
    print(json.dumps(summary) if args.jsonl else _summary_text(summary), file=sys.stderr if args.jsonl else sys.stdout)
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


def _ms(value: object) -> str:
    return f"{value:.1f} ms" if isinstance(value, float) else "n/a"


def demo_parser() -> argparse.ArgumentParser:
    p = _parser("demo", "Produce, serve and consume N test images in one process, then print a summary.")
    p.add_argument("--broker", default="mem://", help=BROKER_HELP)
    p.add_argument("--count", type=_positive_int, default=2000, help="test images to send")
    p.add_argument("--model", default=None, help="ONNX model path (default: the shipped model)")
    p.add_argument("--max-batch-size", type=_positive_int, default=64)
    p.add_argument("--max-wait-ms", type=_non_negative_float, default=20.0)
    p.add_argument("--rate", type=_non_negative_float, default=None, help="images per second (default: flat out)")
    p.add_argument("--format", dest="format", choices=("cloudevents", "seed-json"), default="cloudevents")
    p.add_argument("--timeout", type=_non_negative_float, default=120.0, help="give up after this many seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text summary")
    add_logging_options(p, "warning")
    return p


@_friendly_errors("demo")
def demo_main(argv: list[str]) -> int:
    parser = demo_parser()
    args = _parse(parser, argv)
    configure_logging(args.log_format, args.log_level)
    from fashionstream.pipeline.demo import run_demo

    try:
        Topology(args.broker)
    except ValueError as error:
        parser.error(str(error))
    result = run_demo(
        args.broker,
        count=args.count,
        model_path=args.model,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        fmt=args.format,
        rate=args.rate,
        timeout=args.timeout,
    )
    doc = result.as_dict()
    if args.json:
        print(json.dumps(doc))
    else:
        lat = doc["latency_ms"]
        accuracy = "n/a" if doc["accuracy"] is None else f"{doc['accuracy']:.2%}"
        print(
            f"fashionstream demo over {args.broker} with model {result.model}\n"
            f"  sent           {doc['sent']}\n"
            f"  answered       {doc['answered']}\n"
            f"  lost           {doc['lost']}\n"
            f"  duplicates     {doc['duplicates']}\n"
            f"  dead-lettered  {doc['dead_lettered']}\n"
            f"  accuracy       {accuracy}\n"
            f"  throughput     {doc['throughput_img_s']:.0f} images/s\n"
            f"  latency        p50 {_ms(lat['p50'])}   p95 {_ms(lat['p95'])}   p99 {_ms(lat['p99'])}"
        )
    return 0 if doc["lost"] == 0 else 1
