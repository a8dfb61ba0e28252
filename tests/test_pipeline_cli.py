"""The commands' plumbing: FASHIONSTREAM_* variables, broker URLs, and produce/consume end to end on mem://."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fashionstream.pipeline import cli
from fashionstream.pipeline.model import PredictorModel
from fashionstream.pipeline.options import apply_env_defaults, parse_client_options
from fashionstream.pipeline.service import ModelService, ServiceConfig
from fashionstream.pipeline.topology import Topology, subscription_url, topic_url
from fashionstream.pubsub import open_subscription, open_topic


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The commands point the root logger at the (captured) stderr; put it back so later tests' threads
    do not log into a closed capture stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_every_option_can_come_from_the_environment() -> None:
    parser = cli.serve_parser()
    apply_env_defaults(
        parser,
        {
            "FASHIONSTREAM_BROKER": "kafka://k:9092",
            "FASHIONSTREAM_MAX_BATCH_SIZE": "32",
            "FASHIONSTREAM_MAX_WAIT_MS": "7.5",
            "FASHIONSTREAM_CREATE_TOPICS": "true",
            "FASHIONSTREAM_SUBSCRIBER_OPTION": "session.timeout.ms=6000 ack_deadline=60",
            "FASHIONSTREAM_LOG_FORMAT": "json",
        },
    )
    args = parser.parse_args([])
    assert args.broker == "kafka://k:9092"
    assert args.max_batch_size == 32 and args.max_wait_ms == 7.5
    assert args.create_topics is True
    assert args.log_format == "json"
    assert parse_client_options(args.subscriber_option) == {"session.timeout.ms": 6000, "ack_deadline": 60}
    # the command line still wins
    assert parser.parse_args(["--max-batch-size", "8"]).max_batch_size == 8
    assert "FASHIONSTREAM_" in (parser.epilog or "")


@pytest.mark.parametrize(
    "environ",
    [
        {"FASHIONSTREAM_MAX_BATCH_SIZE": "zero"},
        {"FASHIONSTREAM_MAX_BATCH_SIZE": "0"},
        {"FASHIONSTREAM_CREATE_TOPICS": "maybe"},
    ],
)
def test_a_bad_variable_fails_like_a_bad_option(environ: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.serve_parser()
    with pytest.raises(SystemExit):
        apply_env_defaults(parser, environ)
        parser.parse_args([])
    assert next(iter(environ)) in capsys.readouterr().err  # the message names the variable


def test_broker_urls_become_topic_and_subscription_urls() -> None:
    assert topic_url("mem://", "images") == "mem://images"
    assert subscription_url("mem://", "images", "model-service") == "mem://images?subscription=model-service"
    assert topic_url("kafka://127.0.0.1:9092", "images") == "kafka://127.0.0.1:9092/images"
    assert subscription_url("kafka://127.0.0.1:9092/", "images", "svc") == "kafka://127.0.0.1:9092/images?group=svc"
    assert topic_url("gcppubsub://projects/p1", "images.dlq") == "gcppubsub://projects/p1/topics/images.dlq"
    assert subscription_url("gcppubsub://projects/p1", "images", "svc") == "gcppubsub://projects/p1/subscriptions/svc"
    for bad in ("redis://x", "kafka://", "gcppubsub://p1", "gcppubsub://projects/", "kafka://h:1?sasl=x"):
        with pytest.raises(ValueError, match="broker URL"):
            Topology(bad)


def test_serve_without_a_broker_is_a_usage_error(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    monkeypatch.delenv("FASHIONSTREAM_BROKER", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.serve_main([])
    assert exit_info.value.code == 2
    assert "--broker" in capsys.readouterr().err


def test_produce_and_consume_commands_over_mem(capsys: pytest.CaptureFixture[str], unique_name: Any) -> None:
    """`produce` sends labelled test images, the service answers, `consume --jsonl` prints each answer once."""
    topology = Topology("mem://", images=unique_name("images"), predictions=unique_name("predictions"),
                        dead_letters=unique_name("dlq"))  # fmt: skip
    topology.create()
    model = PredictorModel()
    config = ServiceConfig(broker="mem://", images_topic=topology.images, predictions_topic=topology.predictions,
                           dead_letter_topic=topology.dead_letters)  # fmt: skip
    stop = threading.Event()
    with (
        open_subscription(topology.images_subscription_url) as service_in,
        open_topic(topology.topic(topology.predictions)) as out,
        open_topic(topology.topic(topology.dead_letters)) as dead,
    ):
        worker = threading.Thread(target=ModelService(config, model, service_in, out, dead).run, args=(stop,))
        worker.start()
        try:
            assert cli.produce_main(["--broker", "mem://", "--topic", topology.images, "--count", "120",
                                     "--no-progress"]) == 0  # fmt: skip
            produced = capsys.readouterr().out
            assert "sent 120, confirmed 120, failed 0" in produced
            # the same 20 images again, as the original system's JSON: different ids, so new answers
            assert cli.produce_main(["--broker", "mem://", "--topic", topology.images, "--count", "20",
                                     "--format", "seed-json", "--no-progress"]) == 0  # fmt: skip
            capsys.readouterr()
            code = cli.consume_main(
                ["--broker", "mem://", "--topic", topology.predictions, "--subscription",
                 topology.consumer_subscription, "--jsonl", "--count", "140", "--timeout", "30"]
            )  # fmt: skip
        finally:
            stop.set()
            worker.join(timeout=10)
    assert code == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert len(lines) == 140 and len({p["id"] for p in lines}) == 140
    assert sum(1 for p in lines if p["expected_label"] is not None) == 120  # seed-json carries no label
    summary = json.loads(captured.err.strip().splitlines()[-1])
    assert summary["answered"] == 140 and summary["duplicates"] == 0
    assert summary["accuracy"] > float(model.card["test"]["accuracy"]) - 0.1
