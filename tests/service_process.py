"""`fashionstream serve` as a subprocess, started exactly as a user would, for tests that kill and restart it.

Shared by the process tests (crash, graceful stop) and the scale-out tests (several replicas).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from fashionstream.pipeline.topology import Topology


class ServiceProcess:
    """`fashionstream serve` in a subprocess; knows its metrics port once the model is loaded.

    Every instance is registered in `started` so the fixture kills any still running when a test
    fails half-way (an orphaned service would go on eating the shared CPUs).
    """

    started: list[ServiceProcess] = []

    def __init__(
        self, topology: Topology, options: dict[str, object], log_path: Path, extra_args: Sequence[str] = ()
    ) -> None:
        command = [
            sys.executable, "-m", "fashionstream.cli", "serve",
            "--broker", topology.broker,
            "--images-topic", topology.images,
            "--predictions-topic", topology.predictions,
            "--dead-letter-topic", topology.dead_letters,
            "--subscription", topology.service_subscription,
            "--max-batch-size", "32",
            "--metrics-host", "127.0.0.1", "--metrics-port", "0",
            "--log-format", "json",
        ]  # fmt: skip
        for key, value in options.items():
            command += ["--subscriber-option", f"{key}={value}"]
        command += list(extra_args)
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True, env=os.environ.copy()
        )
        ServiceProcess.started.append(self)  # before anything can fail, so `no_orphans` can kill it
        self.port = self._wait_for_port(timeout=90)

    def _wait_for_port(self, timeout: float) -> int:
        found: list[int] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if "metrics on http://" in line and not found:
                    found.append(int(line.split("metrics on http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"service did not start (rc={self.proc.poll()}):\n{self.logs()}")
            time.sleep(0.05)
        return found[0]

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metric(self, name: str) -> float:
        _, text = self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{name} not in /metrics")

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/healthz")[0] == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"/healthz never became 200:\n{self.logs()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        finally:
            self._log.close()


@pytest.fixture
def no_orphans() -> Iterator[None]:
    """Kill any service a failed test left running: an orphan would go on eating the shared CPUs."""
    yield
    while ServiceProcess.started:
        service = ServiceProcess.started.pop()
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(timeout=10)
