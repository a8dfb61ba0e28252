"""bench/soak.py: its flatness criteria on made-up samples (a leak fails, a passing peak does not), then the
script itself for one minute on Kafka, which must exit 0 with every request answered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # bench/ scripts import each other as top-level modules

import soak  # noqa: E402

ID_BYTES = 150.0
RATE = 100.0  # images/s: a tenth of a minute's ids are 6,000 × ID_BYTES ≈ 0.9 MB of expected growth


def samples(
    rss: Any = lambda t: 100.0, fds: Any = lambda t: 25, threads: Any = lambda t: 24, lag: Any = lambda t: 50
) -> list[soak.Sample]:
    return [soak.Sample(float(t), rss(t), fds(t), threads(t), 0.0, lag=lag(t)) for t in range(0, 601, 5)]


def broken(made: list[soak.Sample], lost: int = 0) -> list[str]:
    summary = soak.summarise(made, RATE, ID_BYTES)
    return soak.violations(summary, {"sent": 60_000, "lost": lost}, max_rss_growth_mb=10.0)


def test_flat_samples_meet_the_criteria() -> None:
    assert broken(samples()) == []


def test_a_short_peak_of_fds_and_threads_is_no_leak() -> None:
    # The topic check opens an admin client every 15 s for a moment.
    peaks = samples(fds=lambda t: 28 if t % 15 == 0 else 25, threads=lambda t: 26 if t % 15 == 0 else 24)
    assert broken(peaks) == []


def test_a_leaked_fd_or_thread_fails() -> None:
    assert any("fds" in line for line in broken(samples(fds=lambda t: 25 + t // 100)))
    assert any("threads" in line for line in broken(samples(threads=lambda t: 24 + (t > 400))))


def test_memory_growth_beyond_the_remembered_ids_fails_and_within_them_passes() -> None:
    expected_mb_per_s = RATE * ID_BYTES / 2**20
    assert broken(samples(rss=lambda t: 100 + expected_mb_per_s * t)) == []
    leak = broken(samples(rss=lambda t: 100 + expected_mb_per_s * t + 0.03 * t))  # +14 MB over the last 80 %
    assert len(leak) == 1 and "RSS grew" in leak[0]


def test_memory_is_not_judged_while_the_service_falls_behind() -> None:
    behind = samples(rss=lambda t: 100 + 0.1 * t, lag=lambda t: 30 * t)  # 30 messages/s more than it answers
    assert soak.summarise(behind, RATE, ID_BYTES)["kept_up"] is False
    assert broken(behind) == []  # inconclusive (the script exits 2), not a leak
    assert soak.summarise(samples(), RATE, ID_BYTES)["kept_up"] is True


def test_a_lost_request_fails() -> None:
    assert broken(samples(), lost=1) == ["1 of 60000 requests never answered"]


@pytest.mark.kafka
@pytest.mark.slow
def test_one_minute_soak_on_kafka_is_flat(kafka_bootstrap: str, tmp_path: Path) -> None:
    output = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), "--broker", f"kafka://{kafka_bootstrap}", "--duration", "60",
         "--rate", str(RATE), "--interval", "2", "--output", str(output)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["violations"] == []
    delivery = report["delivery"]
    assert delivery["sent"] == delivery["answered"] == 6000 and delivery["lost"] == 0
    assert delivery["dead_lettered"] == 0
    summary = report["summary"]
    assert summary["window_samples"] >= 20  # sampled through the run, not once at the end
    assert summary["rss_mb"]["growth_beyond_id_memory"] < 10
    for name in ("fds", "threads"):
        assert summary[name]["floor_at_end"] <= summary[name]["floor_after_warm_up"]
