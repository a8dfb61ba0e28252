"""`scripts/services`, the broker launcher the test command depends on: the parts that can be checked offline."""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

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
