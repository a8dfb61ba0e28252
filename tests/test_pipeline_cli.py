"""The commands' plumbing: options from flags, variables and files, one-line errors, and produce/consume on mem://."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fashionstream.classifier.predictor import Predictor
from fashionstream.cli import _user_error, main
from fashionstream.pipeline import cli
from fashionstream.pipeline.config import COMMANDS, ServiceConfig
from fashionstream.pipeline.handler import OnnxModelHandler
from fashionstream.pipeline.options import fields_of, flag_name, load, options_markdown
from fashionstream.pipeline.service import ModelService
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import open_subscription, open_topic, parse_broker


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The commands point the root logger at the (captured) stderr; put it back so later tests' threads
    do not log into a closed capture stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def serve_config(argv: list[str], environ: dict[str, str]) -> ServiceConfig:
    return load(ServiceConfig, cli.serve_parser(), argv, environ)


def test_every_option_can_come_from_the_environment() -> None:
    environ = {
        "FASHIONSTREAM_BROKER": "kafka://k:9092",
        "FASHIONSTREAM_MAX_BATCH_SIZE": "32",
        "FASHIONSTREAM_MAX_WAIT_MS": "7.5",
        "FASHIONSTREAM_CREATE_TOPICS": "true",
        "FASHIONSTREAM_SUBSCRIBER_OPTION": "session.timeout.ms=6000 ack_deadline=60",
        "FASHIONSTREAM_LOG_FORMAT": "json",
    }
    config = serve_config([], environ)
    assert config.broker == "kafka://k:9092"
    assert config.max_batch_size == 32 and config.max_wait_ms == 7.5
    assert config.create_topics is True
    assert config.log_format == "json"
    assert config.subscriber_option == {"session.timeout.ms": 6000, "ack_deadline": 60}
    # the command line still wins
    assert serve_config(["--max-batch-size", "8"], environ).max_batch_size == 8
    assert serve_config(["--no-create-topics"], environ).create_topics is False
    assert "FASHIONSTREAM_" in (cli.serve_parser().epilog or "")


@pytest.mark.parametrize(
    "environ",
    [
        {"FASHIONSTREAM_MAX_BATCH_SIZE": "zero"},
        {"FASHIONSTREAM_MAX_BATCH_SIZE": "0"},
        {"FASHIONSTREAM_CREATE_TOPICS": "maybe"},
    ],
)
def test_a_bad_variable_fails_like_a_bad_option(environ: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve_config([], {"FASHIONSTREAM_BROKER": "mem://", **environ})
    assert next(iter(environ)) in capsys.readouterr().err  # the message names the variable


def test_a_config_file_sets_options_below_the_environment_and_the_command_line(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(
        'broker = "kafka://k:9092"\nmax_batch_size = 16\nmax_wait_ms = 5\n'
        '[client_option]\n"security.protocol" = "SASL_SSL"\n"sasl.password" = "hunter2"\n'
    )
    config = serve_config(["--config", str(path)], {})
    assert (config.broker, config.max_batch_size, config.max_wait_ms) == ("kafka://k:9092", 16, 5.0)
    # the serve command's byte cap (16 x --max-message-bytes) joins the shared client options
    assert config.subscriber_options() == {
        "security.protocol": "SASL_SSL",
        "sasl.password": "hunter2",
        "max_outstanding_bytes": 16 * 256 * 1024,
    }
    assert serve_config(["--config", str(path)], {"FASHIONSTREAM_MAX_BATCH_SIZE": "8"}).max_batch_size == 8
    assert serve_config(["--config", str(path), "--max-batch-size", "4"], {}).max_batch_size == 4
    # --print-config writes a file that reads back to the same options, secrets redacted
    with pytest.raises(SystemExit) as exit_info:
        serve_config(["--config", str(path), "--print-config"], {})
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "hunter2" not in printed and "max_batch_size = 16" in printed
    again = tmp_path / "again.toml"
    again.write_text(printed)
    assert serve_config(["--config", str(again)], {}).max_wait_ms == 5.0
    # an unknown key is refused, naming the file and the accepted keys
    path.write_text("max_batch = 3\n")
    with pytest.raises(SystemExit):
        serve_config(["--config", str(path)], {})
    assert "max_batch" in capsys.readouterr().err


def test_a_client_option_can_come_from_a_secret_file_which_is_read_but_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("s3cr3t with spaces\n")  # `echo ... > file` ends with a newline, not part of the secret
    flags = ["--broker", "kafka://k:9092", "--client-option", "sasl.username=svc"]
    config = serve_config([*flags, "--client-option-file", f"sasl.password={secret}"], {})
    expected = {"sasl.username": "svc", "sasl.password": "s3cr3t with spaces"}
    assert config.publisher_options() == config.admin_options() == expected
    assert {k: v for k, v in config.subscriber_options().items() if k.startswith("sasl.")} == expected
    assert "s3cr3t" not in repr(config)  # read when a client opens, not kept in the configuration
    # the variable form, as a container gets it
    from_env = serve_config(flags, {"FASHIONSTREAM_CLIENT_OPTION_FILE": f"sasl.password={secret}"})
    assert from_env.publisher_options() == expected
    # a rotated secret is used by the next client opened
    secret.write_text("rotated")
    assert config.subscriber_options()["sasl.password"] == "rotated"

    # --print-config shows the file's name (not a secret) and never its content; it reads back
    with pytest.raises(SystemExit):
        serve_config([*flags, "--client-option-file", f"sasl.password={secret}", "--print-config"], {})
    printed = capsys.readouterr().out
    assert "rotated" not in printed and f'"sasl.password" = "{secret}"' in printed
    (tmp_path / "again.toml").write_text(printed)
    assert serve_config(["--config", str(tmp_path / "again.toml")], {}).subscriber_options()["sasl.password"] == (
        "rotated"
    )

    # a missing or empty file, or a key given both ways, stops the command at start-up naming the file
    (tmp_path / "empty").write_text("\n")
    for extra, says in (
        (["--client-option-file", f"sasl.password={tmp_path / 'missing'}"], "missing: No such file"),
        (["--client-option-file", f"sasl.password={tmp_path / 'empty'}"], "empty is empty"),
        (["--client-option-file", f"sasl.username={secret}"], "sasl.username is given both"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            serve_config([*flags, *extra], {})
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert says in err and "rotated" not in err


def test_help_prints_each_default_once() -> None:
    text = cli.serve_parser().format_help()
    assert "(default: None)" not in text
    assert "(required) (default" not in text
    assert text.count("(default: 64)") == 1
    for config_class in COMMANDS.values():
        for field in fields_of(config_class):
            assert field.spec.help, f"{config_class.__name__}.{field.name} has no help"
            assert flag_name(field.name) in text or config_class is not ServiceConfig


def test_broker_urls_become_topic_and_subscription_urls() -> None:
    def topic_url(broker: str, topic: str) -> str:
        return Topology(broker).topic(topic)

    def subscription_url(broker: str, topic: str, subscription: str) -> str:
        return Topology(broker).subscription(topic, subscription)

    assert topic_url("mem://", "images") == "mem://images"
    assert subscription_url("mem://", "images", "model-service") == "mem://images?subscription=model-service"
    assert topic_url("kafka://127.0.0.1:9092", "images") == "kafka://127.0.0.1:9092/images"
    assert subscription_url("kafka://127.0.0.1:9092/", "images", "svc") == "kafka://127.0.0.1:9092/images?group=svc"
    assert topic_url("gcppubsub://projects/p1", "images.dlq") == "gcppubsub://projects/p1/topics/images.dlq"
    assert subscription_url("gcppubsub://projects/p1", "images", "svc") == "gcppubsub://projects/p1/subscriptions/svc"
    for bad in (
        "redis://x",
        "kafka://",
        "gcppubsub://p1",
        "gcppubsub://projects/",
        "kafka://h:1?sasl=x",
        "kafka://h:x",
    ):
        with pytest.raises(ValueError, match="broker URL"):
            Topology(bad)
    assert parse_broker("kafka://127.0.0.1:9092").cloudevents_prefix == Topology("kafka://h:1").flavour.prefix


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
    card = Predictor.load().card
    config = ServiceConfig(broker="mem://", images_topic=topology.images, predictions_topic=topology.predictions,
                           dead_letter_topic=topology.dead_letters)  # fmt: skip
    stop = threading.Event()
    with (
        open_subscription(topology.images_subscription_url) as service_in,
        open_topic(topology.topic(topology.predictions)) as out,
        open_topic(topology.topic(topology.dead_letters)) as dead,
    ):
        service = ModelService(config, OnnxModelHandler(), service_in, out, dead)
        worker = threading.Thread(target=service.run, args=(stop,))
        worker.start()
        try:
            assert cli.produce_main(["--broker", "mem://", "--topic", topology.images, "--count", "120",
                                     "--no-progress"]) == 0  # fmt: skip
            produced = capsys.readouterr().out
            assert "sent 120, confirmed 120, failed 0" in produced
            # the same 20 images again, in the JSON form: different ids, so new answers
            assert cli.produce_main(["--broker", "mem://", "--topic", topology.images, "--count", "20",
                                     "--format", "json", "--no-progress"]) == 0  # fmt: skip
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
    assert sum(1 for p in lines if p["expected_label"] is not None) == 120  # the JSON form carries no label
    summary = json.loads(captured.err.strip().splitlines()[-1])
    assert summary["answered"] == 140 and summary["duplicates"] == 0
    assert summary["accuracy"] > card.test.accuracy - 0.1


def test_docs_list_every_option_as_the_code_defines_it() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "pipeline.md").read_text()
    for command, config_class in COMMANDS.items():
        block = f"<!-- options: {command} -->\n{options_markdown(config_class)}\n<!-- options: end -->"
        assert block in doc, f"docs/pipeline.md's {command} table is stale: python -m fashionstream.pipeline.config"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_missing_topic_is_one_line_naming_the_flag_that_creates_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_command(["consume", "--broker", "mem://", "--topic", "nowhere-to-be-found"], capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("fashionstream consume: error:")
    assert "nowhere-to-be-found" in lines[0] and "--create-topics" in lines[0]


def test_an_unreachable_kafka_broker_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, lines = run_command(
        ["produce", "--broker", f"kafka://127.0.0.1:{free_port()}", "--count", "1", "--no-progress"], capsys
    )
    took = time.monotonic() - started
    assert code == 1
    assert len(lines) == 1 and "127.0.0.1" in lines[0] and "--broker" in lines[0], lines
    assert took < 15, f"{took:.1f} s to report an unreachable broker"  # wide margin over the driver's wait


@pytest.mark.parametrize("broker", ["kafka://h:99999", "kafka://h:port", "redis://h", "kafka://h:1?sasl.password=x"])
def test_a_bad_broker_url_is_refused_before_anything_connects(broker: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_command(["produce", "--broker", broker], capsys)
    assert code == 1
    assert len(lines) == 1 and "broker URL" in lines[0]
    assert "sasl.password=x" not in lines[0]


def test_a_missing_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "no-such-model.onnx")
    for argv in (["evaluate", "--model", missing], ["predict", "--model", missing, str(tmp_path)]):
        code, lines = run_command(argv, capsys)
        assert code == 1
        assert len(lines) == 1 and "no-such-model.onnx" in lines[0], lines


def test_training_without_the_train_extra_names_the_extra() -> None:
    message = _user_error("train", ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert message is not None and "pip install 'fashionstream[train]'" in message
    assert _user_error("serve", RuntimeError("a bug")) is None  # bugs keep their traceback


def read_lines(proc: subprocess.Popen[str], count: int, timeout: float) -> list[str]:
    """Up to `count` lines of `proc`'s stdout, as many as come within `timeout` seconds."""
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        while len(lines) < count and (line := proc.stdout.readline()):
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return lines


def test_demo_watch_prints_the_page_url_first_and_serves_the_run(tmp_path: Path) -> None:
    """`demo --watch --json`: the URL line, then the JSON summary; /state counts the same run; SIGTERM exits 0."""
    pytest.importorskip("aiohttp")
    command = [sys.executable, "-m", "fashionstream.cli", "demo", "--watch", "--watch-port", "0", "--count", "50",
               "--json"]  # fmt: skip
    stderr = tmp_path / "demo.err"
    with stderr.open("w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=os.environ.copy())
    try:
        lines = read_lines(proc, 2, timeout=120)
        assert len(lines) == 2, (lines, stderr.read_text())
        assert lines[0].startswith("fashionstream watch: page on http://127.0.0.1:"), lines
        url = "http://" + lines[0].split("page on http://", 1)[1].split()[0]
        doc = json.loads(lines[1])
        assert doc["sent"] == doc["answered"] == 50 and doc["lost"] == 0
        with urllib.request.urlopen(url + "state", timeout=5) as response:
            state = json.loads(response.read())
        counters = state["counters"]
        assert counters["requests"] == counters["answered"] == counters["scored"] == doc["answered"]
        assert counters["dead_lettered"] == doc["dead_lettered"] and counters["duplicates"] == doc["duplicates"]
        assert counters["accuracy"] == pytest.approx(doc["accuracy"], abs=5e-5)
        assert state["latest_model"]
        assert proc.poll() is None, "the page must outlive the summary"
        assert f"page still on {url}: Ctrl-C to stop" in stderr.read_text()  # --json keeps it off stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, stderr.read_text()
        assert proc.stdout is not None and proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_demo_watch_without_aiohttp_names_the_extra(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if the `watch` extra were not installed
    monkeypatch.delitem(sys.modules, "fashionstream.pipeline.watch_page", raising=False)
    code, lines = run_command(["demo", "--watch"], capsys)
    assert code == 1
    assert len(lines) == 1 and "pip install 'fashionstream[watch]'" in lines[0], lines


def test_demo_watch_on_a_taken_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("aiohttp")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = run_command(["demo", "--watch", "--watch-port", str(port)], capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("fashionstream demo: error:") and str(port) in lines[0], lines
    assert "--watch-port" in lines[0]


def test_watch_refuses_mem_and_points_to_demo_watch(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("aiohttp")
    code, lines = run_command(["watch", "--broker", "mem://"], capsys)
    assert code == 2
    assert len(lines) == 1 and "fashionstream demo --watch" in lines[0], lines


def test_the_byte_cap_follows_max_message_bytes_unless_given() -> None:
    base = {"FASHIONSTREAM_BROKER": "mem://"}
    assert serve_config(["--max-message-bytes", "1000"], base).subscriber_options()["max_outstanding_bytes"] == 16_000
    given = serve_config(["--max-outstanding-bytes", "5000"], base)
    assert given.subscriber_options()["max_outstanding_bytes"] == 5000
    # a portable subscriber option set directly stays, unless --max-outstanding-bytes says otherwise
    direct = ["--subscriber-option", "max_outstanding_bytes=7000"]
    assert serve_config(direct, base).subscriber_options()["max_outstanding_bytes"] == 7000
    both = serve_config([*direct, "--max-outstanding-bytes", "5000"], base)
    assert both.subscriber_options()["max_outstanding_bytes"] == 5000
