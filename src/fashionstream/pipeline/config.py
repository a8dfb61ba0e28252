"""The configuration of every pipeline command, each default written once.

`serve`, `produce`, `consume` and `demo` are configured by the dataclasses below. Each field
is at once a Python attribute, a command-line flag, a FASHIONSTREAM_* variable and a key of a
`--config` TOML file (see `options`). Groups shared by several commands (broker and client
options, model, batching, logging) are written once and mixed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fashionstream.classifier.predictor import default_threads
from fashionstream.classifier.sample import SAMPLE_SIZE
from fashionstream.pipeline import contract
from fashionstream.pipeline.logs import LOG_FORMATS, LOG_LEVELS
from fashionstream.pipeline.options import OptionError, option
from fashionstream.pipeline.topology import (
    CONSUMER_SUBSCRIPTION,
    DEAD_LETTERS,
    IMAGES,
    PREDICTIONS,
    SERVICE_SUBSCRIPTION,
    Topology,
)
from fashionstream.pubsub import broker_url_help

if TYPE_CHECKING:
    from fashionstream.pipeline.handler import OnnxModelHandler

BROKER_HELP = f"broker URL: {broker_url_help()}"
REQUEST_FORMATS = ("cloudevents", "json")
# The labelled Fashion-MNIST images a command can send (`producer.labelled_images`): the sample
# ships inside the package, so the demo runs offline; the test split needs the dataset.
IMAGE_SETS = ("sample", "test")
IMAGE_SET_HELP = (
    f"sample: the first {SAMPLE_SIZE:,d} test images, shipped with the package; "
    "test: the full test split, which needs the dataset (downloaded when not found)"
)
# The service holds at most this many requests of the largest accepted size (--max-outstanding-bytes):
# 4 MiB with the default --max-message-bytes, about 4,000 Fashion-MNIST requests. On Kafka a fetch
# then brings about one request of that size (the driver's `PREFETCH_SHARE` of the cap).
HELD_LARGEST_REQUESTS = 16
REQUEST_FORMAT_HELP = (
    "cloudevents: CloudEvents binary mode, the image as the body; json: the JSON form "
    '{"id": ..., "image": "<base64 PNG>"} without attributes'
)


def read_option_files(files: Mapping[str, Any]) -> dict[str, str]:
    """{KEY: the content of FILE} for each KEY=FILE, without one trailing line ending.

    Secret files usually end with a newline (`echo secret > file`), which is not part of the secret.
    The content is never put in an error message; the file's name is.
    """
    values: dict[str, str] = {}
    for key, path in files.items():
        try:
            text = Path(str(path)).read_text(encoding="utf-8")
        except OSError as error:
            raise OptionError(f"client option file for {key}: cannot read {path}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise OptionError(f"client option file for {key}: {path} is not UTF-8 text") from None
        value = text.removesuffix("\n").removesuffix("\r")
        if not value:
            raise OptionError(f"client option file for {key}: {path} is empty")
        values[key] = value
    return values


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """Where the broker is and the credentials every client needs: the same for every command."""

    TITLE: ClassVar[str] = "broker"
    FIRST: ClassVar[bool] = True  # listed first in --help: nothing works without it

    broker: str = option("", BROKER_HELP, required=True, metavar="URL")
    client_option: dict[str, Any] = option(
        {}, "native client option for every client, e.g. security.protocol=SASL_SSL or sasl.username=NAME"
    )
    client_option_file: dict[str, Any] = option(
        {},
        "native client option for every client whose value is a file's content, e.g. "
        "sasl.password=/run/secrets/kafka-password (a mounted secret; one trailing newline is dropped)",
        file_values=True,
    )

    def __post_init__(self) -> None:
        # A missing secret file or a key given twice stops the command at start-up, naming the file.
        self.client_options()

    def client_options(self) -> dict[str, Any]:
        """The native options of every client: `client_option`, and the files of `client_option_file` read now.

        The files are read whenever a client is opened, so the secrets never sit in this object
        (which is printed, compared and copied) and a rotated secret file is used from the next open.
        """
        twice = sorted(set(self.client_option) & set(self.client_option_file))
        if twice:
            raise OptionError(
                f"client option {', '.join(twice)} is given both as a value and as a file; give it one way"
            )
        return {**self.client_option, **read_option_files(self.client_option_file)}

    def admin_options(self) -> dict[str, Any]:
        """Keyword options for `fashionstream.pubsub.admin` (creating topics needs the same credentials)."""
        return self.client_options()


@dataclass(frozen=True, kw_only=True)
class PublisherConfig(BrokerConfig):
    TITLE: ClassVar[str] = "broker"

    publisher_option: dict[str, Any] = option(
        {}, "option for the publishers only: portable (linger=0.01) or native (compression.type=lz4)"
    )

    def publisher_options(self) -> dict[str, Any]:
        """Keyword options for `open_topic`: the shared client options, then the publisher's own."""
        return {**self.client_options(), **self.publisher_option}


@dataclass(frozen=True, kw_only=True)
class SubscriberConfig(BrokerConfig):
    TITLE: ClassVar[str] = "broker"

    subscriber_option: dict[str, Any] = option(
        {}, "option for the subscribers only: portable (ack_deadline=60) or native (session.timeout.ms=6000)"
    )

    def subscriber_options(self) -> dict[str, Any]:
        """Keyword options for `open_subscription`: the shared client options, then the subscriber's own."""
        return {**self.client_options(), **self.subscriber_option}


@dataclass(frozen=True, kw_only=True)
class ClientConfig(PublisherConfig, SubscriberConfig):
    """Both kinds of client: a command that publishes and subscribes."""


@dataclass(frozen=True, kw_only=True)
class TopicCreationConfig:
    """Creating what a command needs when it is missing, sized so that replicas can share the work."""

    TITLE: ClassVar[str] = "topic creation"

    create_topics: bool = option(False, "create the topics and the subscription this command uses if missing")
    # A Kafka consumer group gives each partition to one member: a topic's partition count caps how
    # many replicas get work. 12 divides evenly among 1, 2, 3, 4, 6 and 12 replicas.
    partitions: int = option(12, "partitions of each topic created (Kafka; an existing topic keeps its own)", minimum=1)
    replication_factor: int | None = option(
        None, "replicas of each partition created (Kafka)", minimum=1, default_text="the broker's default"
    )

    def topic_creation(self) -> dict[str, Any]:
        """Keyword arguments for `Topology.create` / `admin.create_topic`."""
        return {"partitions": self.partitions, "replication_factor": self.replication_factor}


#: Batches of at least this many images are classified on the model's own threads while the service's
#: loop reads and decodes the next; smaller ones on the loop's thread at once. A small batch means the
#: model keeps up, and handing it to another thread would only add a wake-up to its latency.
PARALLEL_BATCH = 32


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which exported model answers, and how many CPU threads it may use."""

    TITLE: ClassVar[str] = "model"
    model: str | None = option(
        None,
        "ONNX model file, its .card.json, or the name of a shipped model (fashion-cnn, fashion-cnn-int8)",
        default_text="the shipped model",
    )
    threads: int | None = option(
        None,
        f"threads the model runs on: batches of {PARALLEL_BATCH} images or more are classified up to this many "
        "at a time, one ONNX Runtime thread each, while the service reads and decodes the next; smaller "
        "batches at once on the service's own thread",
        minimum=1,
        default_text="2, or 1 on a 1-core machine",
    )

    def model_threads(self) -> int:
        """How many batches may be classified at once (`threads`, by default 2 where there are 2 cores)."""
        return self.threads or default_threads()

    def model_handler(self) -> OnnxModelHandler:
        """The handler of `model` for the service: one ONNX Runtime thread per batch, since the service runs
        up to `model_threads()` batches at once. One thread spends 10-20 % less CPU per image than two at
        every batch size (2-core AMD EPYC, batches of 1 to 256), and leaves a core to the service's loop."""
        from fashionstream.pipeline.handler import OnnxModelHandler

        return OnnxModelHandler(self.model, threads=1)


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """Continuous batching: a batch goes to the model when no more input is ready, when it is full, or
    when its oldest image has waited max_wait_ms while input kept arriving."""

    TITLE: ClassVar[str] = "micro-batching"
    max_batch_size: int = option(64, "images per model call at most", minimum=1)
    max_wait_ms: float = option(
        20.0,
        "upper bound on how long the oldest image of a batch waits while input keeps arriving; "
        "an idle service classifies at once",
        minimum=0,
    )


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    TITLE: ClassVar[str] = "logging"

    log_format: str = option("text", "log line format on stderr; json: one object per line", choices=LOG_FORMATS)
    log_level: str = option("info", "least important log level shown", choices=LOG_LEVELS)


@dataclass(frozen=True, kw_only=True)
class ClientLoggingConfig(LoggingConfig):
    """The client commands print their own results; only warnings and errors go to the log."""

    TITLE: ClassVar[str] = "logging"
    log_level: str = option("warning", "least important log level shown", choices=LOG_LEVELS)


@dataclass(frozen=True, kw_only=True)
class ServiceConfig(ClientConfig, TopicCreationConfig, ModelConfig, BatchConfig, LoggingConfig):
    """Every `fashionstream serve` option."""

    TITLE: ClassVar[str] = "service"

    images_topic: str = option(IMAGES, "topic the requests arrive on")
    predictions_topic: str = option(PREDICTIONS, "topic the predictions go to")
    dead_letter_topic: str = option(DEAD_LETTERS, "topic unanswerable requests go to, with the reason")
    subscription: str = option(
        SERVICE_SUBSCRIPTION, "Kafka consumer group / Pub/Sub subscription; replicas sharing it split the work"
    )
    max_message_bytes: int = option(
        contract.DEFAULT_MAX_MESSAGE_BYTES, "larger requests are dead-lettered as too_large", minimum=1
    )
    max_outstanding_bytes: int | None = option(
        None,
        "request bytes received and not yet answered (acked) at most: receiving pauses at this until answers "
        "free room, so a flood of large requests cannot exhaust memory (a single larger request still comes, alone)",
        minimum=1,
        default_text=f"{HELD_LARGEST_REQUESTS} x --max-message-bytes",
    )
    max_in_flight: int = option(
        512, "answers awaiting broker confirmation before the service stops taking new requests", minimum=1
    )
    # Pub/Sub's default; a request that keeps failing (a poison message) must not go round for ever.
    max_delivery_attempts: int = option(
        5,
        "failed attempts to answer a request (its answer refused, or it came back unacked) before it is "
        "dead-lettered as too_many_attempts; outages (broker unreachable, topic missing) do not count; "
        "Kafka: counted in this process only",
        minimum=1,
    )
    metrics_port: int = option(9100, "port of /metrics and /healthz; 0 picks a free one", minimum=0)
    metrics_host: str = option("0.0.0.0", "address /metrics and /healthz listen on")
    # Polling costs one stat() per model file per interval; 5 s puts a new model in service within ~10 s.
    model_poll_interval: float = option(
        5.0,
        "seconds between checks of the model files for a change, which reloads the model; "
        "0: reload only on SIGHUP or POST /admin/reload-model",
        minimum=0,
    )
    # Kubernetes' default grace period is 30 s and the service promises to exit within 5 s of
    # SIGTERM: 4 s to finish the open batch leave a margin for closing the broker clients.
    shutdown_timeout: float = option(4.0, "seconds to finish the in-flight batch after SIGTERM/SIGINT", minimum=0)
    publish_timeout: float = option(30.0, "seconds an answer may wait for broker confirmation", above=0)
    # A restart cures what the service cannot see (a client stuck on a vanished cluster); 5 minutes
    # rides out a broker restart or a rebalance without restarting healthy replicas.
    stall_timeout: float = option(
        300.0,
        "seconds without a confirmed answer, while input waits or something is wrong, before /livez fails; 0: never",
        minimum=0,
    )
    topic_check_interval: float = option(
        15.0,
        "seconds between checks that the topics exist (/readyz fails while one is missing; "
        "--create-topics recreates it); 0: no checks",
        minimum=0,
    )
    # Not an option: the longest receive wait, which bounds how fast a stop signal is noticed.
    poll_timeout: float = 0.1
    # Not an option: the receive wait while answers await broker confirmation (`ModelService.run`).
    confirm_poll_timeout: float = 0.005

    def outstanding_bytes(self) -> int:
        """The subscriber's byte cap (`max_outstanding_bytes`): --max-outstanding-bytes or its default."""
        return self.max_outstanding_bytes or HELD_LARGEST_REQUESTS * self.max_message_bytes

    def subscriber_options(self) -> dict[str, Any]:
        """The shared options with the byte cap; an explicit --subscriber-option max_outstanding_bytes=N stays."""
        options = super().subscriber_options()
        if self.max_outstanding_bytes is not None or "max_outstanding_bytes" not in options:
            options["max_outstanding_bytes"] = self.outstanding_bytes()
        return options

    def topology(self) -> Topology:
        return Topology(
            self.broker,
            images=self.images_topic,
            predictions=self.predictions_topic,
            dead_letters=self.dead_letter_topic,
            service_subscription=self.subscription,
        )


@dataclass(frozen=True, kw_only=True)
class ProduceConfig(PublisherConfig, TopicCreationConfig, ClientLoggingConfig):
    """Every `fashionstream produce` option."""

    TITLE: ClassVar[str] = "producing"

    topic: str = option(IMAGES, "topic to send the images to")
    source: tuple[str, ...] = option(
        ("test",),
        f"'test' (the Fashion-MNIST test split) or 'sample' (its first {SAMPLE_SIZE:,d}, shipped with the package), "
        "both with labels, or image files / directories",
        metavar="SOURCE",
    )
    count: int | None = option(
        None, "how many images; the source is repeated to reach it", minimum=1, default_text="all"
    )
    rate: float | None = option(None, "images per second", above=0, default_text="flat out")
    format: str = option("cloudevents", REQUEST_FORMAT_HELP, choices=REQUEST_FORMATS)
    progress: bool = option(True, "show a progress bar on stderr")
    ids_file: str | None = option(None, "write the sent ids to this file, one per line")


@dataclass(frozen=True, kw_only=True)
class ConsumeConfig(SubscriberConfig, TopicCreationConfig, ClientLoggingConfig):
    """Every `fashionstream consume` option."""

    TITLE: ClassVar[str] = "consuming"

    topic: str = option(PREDICTIONS, "topic to read predictions from")
    subscription: str = option(CONSUMER_SUBSCRIPTION, "Kafka consumer group / Pub/Sub subscription")
    jsonl: bool = option(False, "print one JSON prediction per line instead of a table")
    count: int | None = option(None, "stop after this many distinct predictions", minimum=1, default_text="never")
    timeout: float | None = option(
        None, "stop after this many seconds without a new prediction", above=0, default_text="never"
    )
    quiet: bool = option(False, "print only the summary")


@dataclass(frozen=True, kw_only=True)
class DemoConfig(ClientConfig, ModelConfig, BatchConfig, ClientLoggingConfig):
    """Every `fashionstream demo` option."""

    TITLE: ClassVar[str] = "demo run"

    broker: str = option("mem://", BROKER_HELP, metavar="URL")
    source: str = option("sample", IMAGE_SET_HELP, choices=IMAGE_SETS)
    count: int = option(1000, "images to send; the source is repeated to reach it", minimum=1)
    rate: float | None = option(None, "images per second", above=0, default_text="all at once")
    format: str = option("cloudevents", REQUEST_FORMAT_HELP, choices=REQUEST_FORMATS)
    timeout: float = option(120.0, "give up after this many seconds", above=0)
    json: bool = option(False, "print one JSON object instead of the text summary")
    watch: bool = option(
        False,
        "serve the live page of `fashionstream watch` for this run, in this process (so mem:// too), on "
        "127.0.0.1: its URL is the first line printed, and after the summary the page stays up until Ctrl-C "
        "or SIGTERM",
    )
    watch_port: int = option(8000, "port of the --watch page; 0 picks a free one", minimum=0)

    def service_config(self, topology: Topology) -> ServiceConfig:
        """The configuration of the demo's own model service on `topology`."""
        return ServiceConfig(
            broker=topology.broker,
            client_option=self.client_option,
            client_option_file=self.client_option_file,
            publisher_option=self.publisher_option,
            subscriber_option=self.subscriber_option,
            model=self.model,
            threads=self.threads,
            max_batch_size=self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            images_topic=topology.images,
            predictions_topic=topology.predictions,
            dead_letter_topic=topology.dead_letters,
            subscription=topology.service_subscription,
        )


@dataclass(frozen=True, kw_only=True)
class WatchConfig(SubscriberConfig, TopicCreationConfig, ClientLoggingConfig):
    """Every `fashionstream watch` option."""

    TITLE: ClassVar[str] = "watching"

    images_topic: str = option(IMAGES, "topic the requests arrive on")
    predictions_topic: str = option(PREDICTIONS, "topic the predictions go to")
    dead_letter_topic: str = option(DEAD_LETTERS, "topic unanswerable requests go to")
    subscription: str = option(
        "watch",
        "prefix of the watch's own subscriptions (Kafka: consumer groups), one per topic, NAME-<topic>; "
        "two watches of one stream need different names or they split the messages",
    )
    host: str = option("127.0.0.1", "address the page listens on")
    port: int = option(8765, "port of the page; 0 picks a free one", minimum=0)

    def topology(self) -> Topology:
        return Topology(
            self.broker,
            images=self.images_topic,
            predictions=self.predictions_topic,
            dead_letters=self.dead_letter_topic,
        )


COMMANDS: dict[str, type] = {
    "serve": ServiceConfig,
    "produce": ProduceConfig,
    "consume": ConsumeConfig,
    "demo": DemoConfig,
    "watch": WatchConfig,
}

if __name__ == "__main__":
    # `python -m fashionstream.pipeline.config` prints the option tables of docs/pipeline.md.
    from fashionstream.pipeline.options import options_markdown

    for command, config_class in COMMANDS.items():
        print(f"<!-- options: {command} -->\n{options_markdown(config_class)}\n<!-- options: end -->\n")
