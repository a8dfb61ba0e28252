"""A private Kafka broker for tests that stop, kill or reconfigure one: `scripts/services` with its own state.

The shared broker (KAFKA_BOOTSTRAP_SERVERS, usually 127.0.0.1:9092) serves every other test at the same
time, so tests that restart a broker, wipe its data or turn on authentication start their own: the same
launcher users run, with its own XDG_CACHE_HOME (pid files, logs, data) and free ports. Kafka's jars are
linked from the user's cache when they are already there, so no second Maven download is needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "services"
KAFKA_VERSION = os.environ.get("FASHIONSTREAM_KAFKA_VERSION", "4.1.1")


def require_java() -> None:
    """Fail under CI (the set-up is broken there), skip elsewhere, when Java cannot run a broker."""
    if shutil.which("java") is None:
        message = "Java is not installed, so no private Kafka broker can be started"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(message)


def free_port_run(count: int = 3) -> int:
    """A port P such that P .. P + count - 1 are all free on 127.0.0.1.

    A broker uses P (plain), P + 1 (controller) and, started with --secure, P + 2 (SASL_SSL).
    """
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + count - 1 > 65535:
            continue
        if all(_bindable(port + i) for i in range(1, count)):
            return port
    raise RuntimeError(f"no {count} adjacent free ports found on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fashionstream"


class OwnKafka:
    """One broker run by `scripts/services` under `root` (its XDG_CACHE_HOME) on free ports."""

    def __init__(self, root: Path, extra_env: dict[str, str] | None = None) -> None:
        require_java()
        self.root = root
        self.port = free_port_run()
        self.address = f"127.0.0.1:{self.port}"
        cache = root / "fashionstream"
        cache.mkdir(parents=True, exist_ok=True)
        jars = _user_cache() / f"kafka-{KAFKA_VERSION}"
        if (jars / "libs" / ".complete").exists() and not (cache / jars.name).exists():
            (cache / jars.name).symlink_to(jars)
        self.env = {
            **os.environ,
            "XDG_CACHE_HOME": str(root),
            "KAFKA_BOOTSTRAP_SERVERS": self.address,
            **(extra_env or {}),
        }

    @property
    def state_dir(self) -> Path:
        return self.root / "fashionstream" / "services"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "kafka" / "data"

    def cluster_id(self) -> str | None:
        try:
            lines = (self.data_dir / "meta.properties").read_text().splitlines()
        except OSError:
            return None
        return next((line.split("=", 1)[1] for line in lines if line.startswith("cluster.id=")), None)

    def services(self, *args: str, timeout: float = 240) -> str:
        """Run `scripts/services ARGS` for this broker; its output, or an assertion error with the log."""
        result = subprocess.run(
            [sys.executable, str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AssertionError(
                f"scripts/services {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def start(self, *flags: str) -> str:
        return self.services("start", "kafka", *flags)

    def stop(self) -> str:
        return self.services("stop", "kafka")

    def pid(self) -> int | None:
        try:
            return int((self.state_dir / "kafka.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL the broker's process group, as a crash or an OOM kill would; returns once the process is gone."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)
            # The broker is not this process's child, so it stays in /proc until init reaps it; a
            # `start` before then finds it "still running" and waits for it to answer.
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.state_dir / "kafka.log").read_text(errors="replace")[-4000:]
        return "(no log)"

    def close(self) -> None:
        """Stop the broker if it still runs; never raises (used in fixture teardown)."""
        with contextlib.suppress(Exception):
            self.stop()
