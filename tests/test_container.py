"""The serving image (deploy/Dockerfile) built and run for real, and the compose file that uses it.

The image is built once per session with `scripts/container build`, from BASE_IMAGE (default here:
fashionstream-base:bookworm, made from Debian packages, so no image registry is needed). Then
`fashionstream serve` runs in a container on the host network against the real Kafka broker while
this test produces 500 test images and consumes the answers on the host: none may be lost, the
image's own HEALTHCHECK command must pass inside the container, and `stop` (SIGTERM) must end the
container with exit status 0 within 5 s. The image size, build time and stop time go to
bench/results/container.json when FASHIONSTREAM_RECORD_RESULTS=1 (docs/deployment.md shows them).

Podman or Docker, whichever `scripts/container engine` picks. Without either, or without a compose
tool for the compose check, these tests fail under CI=true and skip elsewhere, like the broker tests.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from conftest import broker_unavailable
from fashionstream.machine import describe_machine
from fashionstream.pipeline.consumer import Tally, read_predictions
from fashionstream.pipeline.producer import labelled_test_images, produce
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import admin, open_subscription, open_topic

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "container"
COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.yaml"
RESULTS = REPO_ROOT / "bench" / "results" / "container.json"
TEST_IMAGE = "localhost/fashionstream:test"
REQUESTS = 500
STOP_WITHIN_S = 5.0


def load_script() -> ModuleType:
    # The script has no .py suffix (it is run as a command), so it is loaded through an explicit source loader.
    loader = importlib.machinery.SourceFileLoader("fashionstream_container_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# Its names for the registry-free base image and for "this machine lacks an engine, root or debootstrap".
container_script = load_script()
LOCAL_BASE_IMAGE: str = container_script.LOCAL_BASE_IMAGE
MISSING_PREREQUISITE: int = container_script.MISSING_PREREQUISITE


@dataclass(frozen=True)
class Engine:
    """The container engine scripts/container uses, with the environment it needs (Podman's config file)."""

    name: str
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.name, *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr}")
        return result

    def inspect(self, what: str, name: str, template: str) -> str:
        return self.run(what, "inspect", "--format", template, name).stdout.strip()

    def version(self) -> str:
        return self.run("version", "--format", "{{.Client.Version}}").stdout.strip()


@dataclass(frozen=True)
class BuiltImage:
    engine: Engine
    name: str
    base_image: str
    build_s: float


@pytest.fixture(scope="session")
def engine() -> Engine:
    chosen = subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True)
    if chosen.returncode == MISSING_PREREQUISITE:
        broker_unavailable(chosen.stderr.strip())
    assert chosen.returncode == 0, chosen.stderr
    env = {}
    for line in chosen.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    return Engine(env.pop("CONTAINER_ENGINE"), env)


@pytest.fixture(scope="session")
def image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """deploy/Dockerfile built with scripts/container, once per session (layers are reused between sessions)."""
    base_image = os.environ.get("BASE_IMAGE") or LOCAL_BASE_IMAGE
    log = tmp_path_factory.mktemp("container") / "build.log"
    started = time.monotonic()
    with log.open("w") as out:
        built = subprocess.run(
            [str(SCRIPT), "build", "--image", TEST_IMAGE, "--base-image", base_image],
            env={**os.environ, "CONTAINER_ENGINE": engine.name},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
    build_s = time.monotonic() - started
    if built.returncode == MISSING_PREREQUISITE:
        broker_unavailable(log.read_text().strip().splitlines()[-1])
    assert built.returncode == 0, f"image build failed:\n{log.read_text()[-6000:]}"
    return BuiltImage(engine, TEST_IMAGE, base_image, build_s)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServiceContainer:
    """`fashionstream serve` in a container on the host network; removed by `close`."""

    def __init__(self, image: BuiltImage, topology: Topology, options: dict[str, object]) -> None:
        self.engine = image.engine
        self.name = f"fashionstream-test-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        command = [
            "run", "--detach", "--name", self.name, "--network", "host",
            # Locked down as deploy/k8s runs it: read-only root file system with a writable /tmp,
            # no capabilities, no privilege escalation.
            "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            # Configured the way a deployment does it: environment variables, the port included,
            # so the image's HEALTHCHECK follows it.
            "--env", f"FASHIONSTREAM_BROKER={topology.broker}",
            "--env", f"FASHIONSTREAM_METRICS_PORT={self.port}",
            image.name,
            "--images-topic", topology.images,
            "--predictions-topic", topology.predictions,
            "--dead-letter-topic", topology.dead_letters,
            "--subscription", topology.service_subscription,
        ]  # fmt: skip
        for key, value in options.items():
            command += ["--subscriber-option", f"{key}={value}"]
        self.engine.run(*command)

    def state(self, field: str) -> str:
        return self.engine.inspect("container", self.name, "{{.State." + field + "}}")

    def logs(self) -> str:
        result = self.engine.run("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-4000:]

    def healthz(self) -> tuple[int, str]:
        """GET /healthz from the host (the container shares the host network)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, str(error)

    def wait_healthy(self, timeout: float = 120) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.state("Running") != "true":
                raise AssertionError(f"the service container exited ({self.state('ExitCode')}):\n{self.logs()}")
            if self.healthz()[0] == 200:
                return time.monotonic() - started
            time.sleep(0.2)
        raise AssertionError(f"/healthz never answered 200 within {timeout:.0f} s:\n{self.logs()}")

    def exec(self, command: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        options = [f"--env={key}={value}" for key, value in (env or {}).items()]
        return self.engine.run("exec", *options, self.name, *command, check=False)

    def close(self) -> None:
        self.engine.run("rm", "--force", self.name, check=False)


@pytest.fixture
def kafka_topology(kafka_bootstrap: str, unique_name: Any) -> Iterator[Topology]:
    made = Topology(
        f"kafka://{kafka_bootstrap}",
        images=unique_name("images"),
        predictions=unique_name("predictions"),
        dead_letters=unique_name("images-dlq"),
        service_subscription=unique_name("model-service"),
        consumer_subscription=unique_name("consumer"),
    )
    made.create()
    yield made
    for topic, sub in ((made.images, made.service_subscription), (made.predictions, made.consumer_subscription)):
        with contextlib.suppress(Exception):
            admin.delete_subscription(made.subscription(topic, sub))
    for name in (made.images, made.predictions, made.dead_letters):
        with contextlib.suppress(Exception):
            admin.delete_topic(made.topic(name))


# Short Kafka session timeouts, as in the other process tests: a group rebalance takes seconds, not 45.
KAFKA_CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "auto.offset.reset": "earliest"}


@pytest.mark.slow
@pytest.mark.container
def test_image_runs_as_an_unprivileged_user_without_torch_and_serves_the_model_from_the_wheel(
    image: BuiltImage,
) -> None:
    engine = image.engine
    assert engine.inspect("image", image.name, "{{.Config.User}}") == "10001:10001"
    assert json.loads(engine.inspect("image", image.name, "{{json .Config.Entrypoint}}")) == ["fashionstream", "serve"]
    labels = json.loads(engine.inspect("image", image.name, "{{json .Config.Labels}}"))
    assert labels["org.opencontainers.image.version"] == container_script.project_version()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.title"] == "fashionstream"
    health = json.loads(engine.inspect("image", image.name, "{{json .Config.Healthcheck}}"))
    assert health and "/healthz" in " ".join(health["Test"]), f"no HEALTHCHECK on /healthz: {health}"

    probe = (
        "import importlib.util, fashionstream.classifier.predictor as p; "
        "print(p.default_model_path()); print(importlib.util.find_spec('torch') is not None)"
    )
    result = engine.run("run", "--rm", "--network", "host", "--entrypoint", "python", image.name, "-c", probe)
    model_path, has_torch = result.stdout.split()
    # The model is the wheel's package data, not a copy of the repository's models/ folder.
    assert model_path.startswith("/opt/venv/lib/") and model_path.endswith(".onnx"), model_path
    assert has_torch == "False"


@pytest.mark.slow
@pytest.mark.container
@pytest.mark.kafka
def test_container_serves_500_requests_over_kafka_and_stops_cleanly_on_sigterm(
    image: BuiltImage, kafka_topology: Topology
) -> None:
    topology = kafka_topology
    service = ServiceContainer(image, topology, KAFKA_CONSUMER)
    try:
        healthy_after = service.wait_healthy()
        status, body = service.healthz()
        assert status == 200 and json.loads(body)["status"] == "ok", body
        # The image's own HEALTHCHECK command, run where the engine runs it: inside the container.
        health = json.loads(image.engine.inspect("image", image.name, "{{json .Config.Healthcheck}}"))
        check = service.exec(health["Test"][1:])
        assert check.returncode == 0, f"HEALTHCHECK failed inside the container:\n{check.stderr}"
        # ... and it reports failure when nothing healthy answers (here: a port nothing listens on).
        assert service.exec(health["Test"][1:], env={"FASHIONSTREAM_METRICS_PORT": str(free_port())}).returncode != 0

        with open_topic(topology.topic(topology.images)) as publisher:
            summary = produce(publisher, labelled_test_images(REQUESTS), topology.flavour)
        assert summary.confirmed == REQUESTS, f"the broker confirmed {summary.confirmed} of {REQUESTS}"
        tally = Tally(expected=summary.expected, sent_at=summary.sent_at)
        with open_subscription(topology.predictions_subscription_url, **KAFKA_CONSUMER) as answers:
            read_predictions(answers, tally, until=lambda: len(tally.answered) >= REQUESTS, idle_timeout=90)
        missing = set(summary.ids) - set(tally.answered)
        assert not missing, f"{len(missing)} of {REQUESTS} requests never answered:\n{service.logs()}"
        assert set(tally.answered) == set(summary.ids)

        stopping = time.monotonic()
        image.engine.run("stop", "--time", "10", service.name, timeout=60)
        stop_s = time.monotonic() - stopping
        exit_code = int(service.state("ExitCode"))
        logs = service.logs()
    finally:
        service.close()

    assert exit_code == 0, f"exit status {exit_code} after SIGTERM:\n{logs}"
    assert '"message": "stopped"' in logs, logs
    assert stop_s < STOP_WITHIN_S, f"took {stop_s:.2f} s to stop after SIGTERM"

    size = int(image.engine.inspect("image", image.name, "{{.Size}}"))
    result = {
        "what": "serving image (deploy/Dockerfile) on the host network against Kafka: "
        f"{REQUESTS} test images produced and consumed on the host, then `stop` (SIGTERM); build_s is this "
        "session's `scripts/container build`, which reuses cached layers when the sources did not change",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "engine": f"{image.engine.name} {image.engine.version()}",
        "base_image": image.base_image,
        "image_size_bytes": size,
        "image_size_mb": round(size / 1e6, 1),
        "build_s": round(image.build_s, 1),
        "healthy_after_s": round(healthy_after, 2),
        "requests": REQUESTS,
        "answered": len(tally.answered),
        "lost": len(missing),
        "duplicates": tally.duplicates,
        "accuracy": tally.accuracy,
        "sigterm_exit_code": exit_code,
        "sigterm_exit_s": round(stop_s, 2),
        "machine": describe_machine(),
    }
    # A test run must not change tracked files: the committed figures are refreshed on request.
    if os.environ.get("FASHIONSTREAM_RECORD_RESULTS") == "1":
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nimage {image.name}: {size / 1e6:.1f} MB (base {image.base_image}), build {image.build_s:.0f} s; "
        f"healthy after {healthy_after:.1f} s; {len(tally.answered)}/{REQUESTS} answered, accuracy "
        f"{tally.accuracy:.4f}; SIGTERM -> exit {exit_code} in {stop_s:.2f} s"
    )


def compose_config_command() -> list[str]:
    """A command that validates a compose file and prints it resolved: podman-compose or Docker Compose.

    podman-compose has `config` from 1.1 on (Debian bookworm packages 1.0.3): the dev extra's copy in
    this environment comes first, then one on PATH.
    """
    candidates = [str(Path(sys.executable).parent / "podman-compose"), shutil.which("podman-compose")]
    for tool in filter(None, candidates):
        if Path(tool).is_file() and subprocess.run([tool, "config", "--help"], capture_output=True).returncode == 0:
            return [tool, "-f", str(COMPOSE_FILE), "config"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose", "-f", str(COMPOSE_FILE), "config"]
    broker_unavailable(
        "no compose tool with a `config` command: pip install 'podman-compose>=1.1', or install Docker Compose"
    )
    raise AssertionError("unreachable")


def compose_config(**env: str) -> dict[str, Any]:
    command = compose_config_command()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env={**os.environ, **env}
    )
    assert result.returncode == 0, f"{Path(command[0]).name} config rejected {COMPOSE_FILE}:\n{result.stderr}"
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def test_compose_file_runs_both_brokers_service_producer_consumer_and_prometheus_on_one_image() -> None:
    services = compose_config()["services"]
    assert set(services) >= {"kafka", "pubsub-emulator", "model-service", "producer", "consumer", "prometheus"}
    roles = ("model-service", "producer", "consumer")
    # One image, built from deploy/Dockerfile, for the three fashionstream roles; each runs its own command.
    assert {services[role]["image"] for role in roles} == {services["model-service"]["image"]}
    for role in roles:
        assert Path(services[role]["build"]["dockerfile"]).name == "Dockerfile", services[role]
        assert services[role]["environment"]["FASHIONSTREAM_BROKER"] == "kafka://kafka:9092"
    assert "entrypoint" not in services["model-service"]  # the image's own: fashionstream serve
    assert services["producer"]["entrypoint"][:2] == ["fashionstream", "produce"]
    assert services["consumer"]["entrypoint"][:2] == ["fashionstream", "consume"]
    # Prometheus reads deploy/prometheus.yml, which scrapes the service's metrics port.
    assert any(volume.startswith("./prometheus.yml:") for volume in services["prometheus"]["volumes"])
    scrape = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus.yml").read_text())
    discovered = [sd for job in scrape["scrape_configs"] for sd in job.get("dns_sd_configs", [])]
    assert any("model-service" in sd["names"] and sd["port"] == 9100 for sd in discovered), scrape


def test_compose_file_switches_every_role_to_pubsub_with_one_variable() -> None:
    broker = "gcppubsub://projects/fashionstream"
    services = compose_config(FASHIONSTREAM_BROKER=broker)["services"]
    for role in ("model-service", "producer", "consumer"):
        assert services[role]["environment"]["FASHIONSTREAM_BROKER"] == broker
        assert services[role]["environment"]["PUBSUB_EMULATOR_HOST"] == "pubsub-emulator:8085"
