"""Runs the conformance suite (tests/pubsub_conformance.py) on mem, Kafka and the Pub/Sub emulator.

pytest tests/test_pubsub_conformance.py                 # all three (Kafka/Pub/Sub skip if absent, fail if CI=true)
pytest tests/test_pubsub_conformance.py -k mem          # the embedded broker only
"""

from __future__ import annotations

from pubsub_conformance import ConformanceCases, ExternalConformanceCases


class TestConformance(ConformanceCases):
    """Every case, once per backend (the `backend` fixture is parametrized)."""


class TestExternalConformance(ExternalConformanceCases):
    """Cases needing a broker outside this process: Kafka and Pub/Sub."""
