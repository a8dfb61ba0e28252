"""The pipeline against a Kafka broker that demands TLS and a SCRAM-SHA-512 login.

A private broker (`scripts/services start --secure` under its own state directory, see own_kafka.py)
has a SASL_SSL listener with a CA made at start-up and one SCRAM user. The commands run as a user
runs them, with the credentials in the environment and the password in a secret file:

- producer -> service -> consumer over SASL_SSL answers every image, and no process writes the
  password to its output, its log or /metrics;
- a service with a wrong password exits non-zero within seconds, saying that authentication
  failed, and commits no offset (the requests still wait for a service that may log in);
- opening a client with a wrong password or a CA that did not sign the broker's certificate fails
  at once with PermissionDenied saying which.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
from confluent_kafka.admin import AdminClient

from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import errors, open_subscription
from own_kafka import OwnKafka
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

IMAGES = 200


@dataclass(frozen=True)
class SecureBroker:
    """What `scripts/services env` says about the secured listener."""

    bootstrap: str
    mechanism: str
    username: str
    password_file: Path
    ca_file: Path
    env_output: str  # the whole `env` output, to check that it holds no password

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def admin(self) -> AdminClient:
        """A raw admin client with the right credentials, for looking behind the commands' backs."""
        return AdminClient(
            {
                "bootstrap.servers": self.bootstrap,
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": self.mechanism,
                "sasl.username": self.username,
                "sasl.password": self.password(),
                "ssl.ca.location": str(self.ca_file),
            }
        )

    def client_env(self, password_file: Path) -> dict[str, str]:
        """The environment of a fashionstream command using this listener, its password read from `password_file`."""
        options = (
            f"security.protocol=SASL_SSL sasl.mechanism={self.mechanism} "
            f"sasl.username={self.username} ssl.ca.location={self.ca_file}"
        )
        return {
            **os.environ,
            "FASHIONSTREAM_CLIENT_OPTION": options,
            "FASHIONSTREAM_CLIENT_OPTION_FILE": f"sasl.password={password_file}",
        }


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    broker = OwnKafka(tmp_path_factory.mktemp("secure-kafka"))
    try:
        broker.start("--secure")
        output = broker.services("env")
        exported = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in output.splitlines())
        secure = SecureBroker(
            bootstrap=exported["KAFKA_SECURE_BOOTSTRAP_SERVERS"],
            mechanism=exported["KAFKA_SECURE_MECHANISM"],
            username=exported["KAFKA_SECURE_USERNAME"],
            password_file=Path(exported["KAFKA_SECURE_PASSWORD_FILE"]),
            ca_file=Path(exported["KAFKA_SECURE_CA_FILE"]),
            env_output=output,
        )
        wait_for_group_coordinator(secure.admin())
        yield secure
    finally:
        broker.close()


def wait_for_group_coordinator(admin: AdminClient) -> None:
    """Wait until a new cluster's group coordinator answers (the first group request creates its topic).

    The commands give a group request 8 s, which a loaded test machine can need just for that
    first creation: that is a fresh broker's start-up, not what these tests are about.
    """
    deadline = time.monotonic() + 60
    while True:
        try:
            admin.describe_consumer_groups(["warm-up"], request_timeout=10)["warm-up"].result(15)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def fashionstream(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fashionstream.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def topology_for(broker: SecureBroker, name: Callable[[str], str]) -> Topology:
    return Topology(
        broker.url,
        images=name("images"),
        predictions=name("predictions"),
        dead_letters=name("dlq"),
        service_subscription=name("service"),
        consumer_subscription=name("consumer"),
    )


def produce(broker: SecureBroker, topology: Topology, ids_file: Path) -> None:
    # The password as a flag naming the file this time; the rest from the environment.
    env = broker.client_env(broker.password_file)
    del env["FASHIONSTREAM_CLIENT_OPTION_FILE"]
    result = fashionstream(
        ["produce", "--broker", broker.url, "--topic", topology.images, "--create-topics", "--partitions", "2",
         "--source", "sample", "--count", str(IMAGES), "--no-progress", "--ids-file", str(ids_file),
         "--client-option-file", f"sasl.password={broker.password_file}"],
        env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"confirmed {IMAGES}" in result.stdout
    assert broker.password() not in result.stdout + result.stderr


def test_secured_listener_is_described_without_its_password(secure_broker: SecureBroker) -> None:
    assert secure_broker.mechanism == "SCRAM-SHA-512"
    assert secure_broker.password_file.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert secure_broker.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert secure_broker.password() not in secure_broker.env_output


@pytest.mark.usefixtures("no_orphans")
def test_every_image_is_answered_over_sasl_ssl_and_the_password_is_never_shown(
    secure_broker: SecureBroker,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topology = topology_for(secure_broker, unique_name)
    produce(secure_broker, topology, tmp_path / "ids")
    sent = set((tmp_path / "ids").read_text().split())
    assert len(sent) == IMAGES

    # The service takes its whole configuration from the environment, as in a container.
    for key, value in secure_broker.client_env(secure_broker.password_file).items():
        monkeypatch.setenv(key, value)
    service = ServiceProcess(topology, {}, tmp_path / "service.log", extra_args=["--create-topics"])
    consumer = fashionstream(
        ["consume", "--broker", secure_broker.url, "--topic", topology.predictions,
         "--subscription", topology.consumer_subscription, "--create-topics",
         "--count", str(IMAGES), "--timeout", "60", "--jsonl"],
        secure_broker.client_env(secure_broker.password_file), timeout=90,
    )  # fmt: skip
    _, metrics = service.get("/metrics")
    assert service.stop() == 0
    assert consumer.returncode == 0, consumer.stderr
    answered = {json.loads(line)["id"] for line in consumer.stdout.splitlines()}
    assert answered == sent

    password = secure_broker.password()
    seen = {"service log": service.log_path.read_text(), "consumer": consumer.stdout + consumer.stderr,
            "/metrics": metrics}  # fmt: skip
    assert [where for where, text in seen.items() if password in text] == []


def test_a_wrong_password_stops_the_service_at_once_and_it_consumes_nothing(
    secure_broker: SecureBroker, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    topology = topology_for(secure_broker, unique_name)
    produce(secure_broker, topology, tmp_path / "ids")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password-4d8a\n")

    started = time.monotonic()
    result = fashionstream(
        ["serve", "--broker", secure_broker.url, "--create-topics", "--images-topic", topology.images,
         "--predictions-topic", topology.predictions, "--dead-letter-topic", topology.dead_letters,
         "--subscription", topology.service_subscription, "--metrics-port", "0"],
        secure_broker.client_env(wrong), timeout=60,
    )  # fmt: skip
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "authentication" in output.lower() and secure_broker.bootstrap in output, output
    assert "not-the-password-4d8a" not in output
    assert secure_broker.password() not in output
    # librdkafka retries a refused login forever; without looking for it the service would wait for
    # its metadata timeouts (13 s for creating the topics) before failing with "no answer".
    assert seconds < 10, f"the service took {seconds:.1f} s to give up:\n{output}"

    # Nothing was consumed: the service's group committed no offset on the images topic.
    request = [ConsumerGroupTopicPartitions(topology.service_subscription)]
    admin = secure_broker.admin()  # kept alive until the future resolves
    offsets = admin.list_consumer_group_offsets(request)[topology.service_subscription].result(30)
    assert [tp for tp in offsets.topic_partitions if tp.offset >= 0] == []


@pytest.mark.parametrize("refusal", ["password", "certificate"])
def test_a_refused_login_or_certificate_fails_opening_a_client_at_once(
    secure_broker: SecureBroker, unique_name: Callable[[str], str], tmp_path: Path, refusal: str
) -> None:
    options = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": secure_broker.mechanism,
        "sasl.username": secure_broker.username,
        "sasl.password": secure_broker.password(),
        "ssl.ca.location": str(secure_broker.ca_file),
    }
    if refusal == "password":
        options["sasl.password"] = "wrong-1c9e"
        expected = "authentication failed"
    else:  # a CA that did not sign the broker's certificate
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc",
             "-days", "1", "-subj", "/CN=another CA", "-keyout", str(tmp_path / "other.key"),
             "-out", str(tmp_path / "other.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
        options["ssl.ca.location"] = str(tmp_path / "other.pem")
        expected = "TLS handshake failed"
    url = f"{secure_broker.url}/{unique_name('refused')}?group={unique_name('group')}"

    started = time.monotonic()
    with pytest.raises(errors.PermissionDenied, match=expected) as caught:
        open_subscription(url, **options)
    # The refusal comes within one connection attempt; "no answer" would take the 8 s metadata timeout.
    assert time.monotonic() - started < 5
    assert "wrong-1c9e" not in str(caught.value) and secure_broker.password() not in str(caught.value)
