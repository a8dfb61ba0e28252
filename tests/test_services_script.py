"""`scripts/services`, the broker launcher the test command depends on: the parts that can be checked offline."""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import time
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from own_kafka import OwnKafka

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "services"


def load_services() -> ModuleType:
    # The script has no .py suffix (it is run as a command), so it is loaded through an explicit source loader.
    loader = importlib.machinery.SourceFileLoader("fashionstream_services_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_kafka_cluster_ids_never_start_with_a_dash_so_storage_format_accepts_them() -> None:
    # One random id in 64 starts with "-", which Kafka's StorageTool parses as an option; CI failed on one.
    # 4,000 draws would include ~60 such ids if the launcher did not redraw them.
    services = load_services()
    ids = [services.kafka_cluster_id() for _ in range(4000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids)
    assert {len(base64.urlsafe_b64decode(i + "==")) for i in ids} == {16}  # a 128-bit UUID, as Kafka expects


def _write_and_read_back(
    address: str, topic: str, payload: bytes | None, options: dict[str, str] | None = None
) -> list[bytes]:
    """Create `topic` and write `payload` to it when one is given; then every message the topic holds.

    `options`: the client settings of a secured listener (SASL_SSL) at `address`.
    """
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    config = {"bootstrap.servers": address, **(options or {})}
    if payload is not None:
        admin = AdminClient(config)  # kept alive until the future resolves
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
        producer = Producer(config)
        producer.produce(topic, payload)
        assert producer.flush(30) == 0
    consumer = Consumer({**config, "group.id": f"check-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        received: list[bytes] = []
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                received.append(message.value())
        return received
    finally:
        consumer.close()


def _topics(address: str) -> set[str]:
    from confluent_kafka.admin import AdminClient

    return set(AdminClient({"bootstrap.servers": address}).list_topics(timeout=30).topics)


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_keeps_its_data_across_stop_and_start_until_an_explicit_reset(tmp_path: Path) -> None:
    # A private broker (own cache dir and ports): the shared one must never be stopped or wiped.
    broker = OwnKafka(tmp_path)
    try:
        out = broker.start()
        assert "formatted new storage" in out
        first_id = broker.cluster_id()
        assert first_id
        topic = f"kept-{uuid.uuid4().hex[:8]}"
        assert _write_and_read_back(broker.address, topic, b"still here") == [b"still here"]

        broker.stop()
        # Started again with the secured listener: storage formatted without a SCRAM user gets one
        # through the admin API, and a SASL_SSL client reads what the plain one wrote.
        out = broker.start("--secure")
        assert "reusing the data" in out and "creating the SCRAM user" in out, out
        assert broker.cluster_id() == first_id
        assert _write_and_read_back(broker.address, topic, None) == [b"still here"]
        env = dict(line.removeprefix("export ").split("=", 1) for line in broker.services("env").splitlines())
        password = Path(env["KAFKA_SECURE_PASSWORD_FILE"]).read_text().strip()
        login = {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": env["KAFKA_SECURE_MECHANISM"],
            "sasl.username": env["KAFKA_SECURE_USERNAME"],
            "sasl.password": password,
            "ssl.ca.location": env["KAFKA_SECURE_CA_FILE"],
        }
        assert _write_and_read_back(env["KAFKA_SECURE_BOOTSTRAP_SERVERS"], topic, None, login) == [b"still here"]
        # A plain start of the running secured broker keeps it; --secure is refused only for a plain one.
        assert "already running" in broker.start()

        out = broker.start("--reset")  # stops the running broker, deletes its data, starts a new cluster
        assert "formatted new storage" in out, out
        assert broker.cluster_id() not in (None, first_id)
        assert topic not in _topics(broker.address)
        assert "KAFKA_SECURE" not in broker.services("env")  # started plain this time
        with pytest.raises(AssertionError, match="was started without --secure"):
            broker.start("--secure")

        broker.services("reset")
        assert broker.pid() is None and not broker.data_dir.exists()
    finally:
        broker.close()
