"""Soak test: `produce` → `serve` → `consume` as separate processes for minutes, watching the service for leaks.

    scripts/services start && eval "$(scripts/services env)"
    .venv/bin/python bench/soak.py --broker kafka://127.0.0.1:9092 --update-docs          # 10 minutes
    .venv/bin/python bench/soak.py --duration 60 --rate 100 --output /tmp/soak.json       # a quick check
    .venv/bin/python bench/soak.py --from-results bench/results/soak.json                 # redraw the docs

The producer sends at half of the flat-out rate (given with --rate as the full rate's half, or measured
first with a short flat-out run), so the service keeps up and a leak, not a backlog, is what would grow.
Every --interval seconds the service's resident memory, open file descriptors and threads are read
from /proc/<pid>. At the end every sent id must have been answered.

Flatness criteria, fixed before any run (the first 20 % of the run is warm-up: the model's arenas, the
broker clients' buffers and Python's allocator pools fill there, so it is left out):

* RSS growth over the last 80 % of the run (least-squares slope × that span), less what the service's
  bounded memory of recent request ids (`service.REMEMBERED_IDS`, kept to count duplicates) is expected
  to add in that span, under --max-rss-growth-mb (10 MB). The bytes per remembered id are measured here
  with tracemalloc on the same structure; the ids remembered are taken as rate × time, up to the bound.
  A leak of even a hundred bytes per request would exceed this within minutes;
* open file descriptors and threads back to their level after warm-up: the lowest value in the last
  tenth of the run not above the lowest in the first tenth after warm-up. A leaked socket, file or
  thread never goes away, so the floor rises; short peaks (the periodic topic check opens an admin
  client for a moment) come and go and are reported, not failed;
* no request lost: every id the producer sent is answered on the predictions topic.

The criteria judge a service that keeps up. One that falls behind (the machine got busier than when the
rate was set) holds the backlog in its broker client's prefetch queue, whose memory grows with the
backlog, not with a leak: when the Kafka consumer lag after warm-up exceeds KEEP_UP_S seconds of load,
the run is inconclusive. The process exits 1 when a criterion is violated (and says which), 2 when the
run is inconclusive, 0 otherwise. Results: the samples
and a summary in bench/results/soak.json (--output), with --update-docs a table in docs/benchmarks.md
and the plot docs/img/soak.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docs_markers import replace_between_markers  # noqa: E402  (bench/ is the script's folder)
from fashionstream.machine import describe_machine
from fashionstream.pipeline.recent_ids import RecentIds
from fashionstream.pipeline.service import REMEMBERED_IDS
from pipeline import CLI, cpu_of, end_to_end, finish, fresh_topology, remove  # noqa: E402  (bench/pipeline.py)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "img" / "soak.png"
MARKERS = "<!-- bench/soak.py: start -->", "<!-- bench/soak.py: end -->"
WARM_UP = 0.2  # the leading fraction of the run left out of the flatness criteria
INCONCLUSIVE = "the service fell behind, so its broker client held a growing backlog"
KEEP_UP_S = 10.0  # the service kept up when its consumer lag stayed under this many seconds of load
FLAT_OUT_IMAGES = 3000  # images in the short flat-out run that sets the rate when --rate is not given


@dataclass(frozen=True)
class Sample:
    """One reading of the service process: from /proc, then (after, so that the scrape's socket is not
    counted) its acked requests and consumer lag from /metrics; None where the scrape failed or, for
    the lag, the broker has none (Pub/Sub)."""

    t_s: float  # seconds since the producer started
    rss_mb: float
    fds: int
    threads: int
    cpu_s: float
    acked: int | None = None
    lag: int | None = None
    load1: float | None = None  # the machine's 1-minute load average: how much else was running

    @staticmethod
    def of(pid: int, port: int, t_s: float) -> Sample:
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        rss_kb = int(status["VmRSS"].split()[0])
        fds, threads, cpu_s = len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"]), cpu_of(pid)
        text = scrape(port)
        acked = total(text, "fashionstream_acked_total") if text is not None else None
        lag = total(text, "fashionstream_consumer_lag_messages") if text is not None else None
        return Sample(
            t_s=round(t_s, 2),
            rss_mb=round(rss_kb / 1024, 2),
            fds=fds,
            threads=threads,
            cpu_s=round(cpu_s, 2),
            acked=None if acked is None else int(acked),
            lag=None if lag is None else int(lag),
            load1=round(os.getloadavg()[0], 2),
        )


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute; 0 for fewer than two points."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    if var_t == 0:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var_t


def bytes_per_remembered_id() -> float:
    """Heap bytes per id in the service's memory of recent ids (`RecentIds`), filled with uuid4 strings."""
    count = 20_000
    ids = [str(uuid.uuid4()) for _ in range(count)]  # made before measuring: the service does not keep them
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        remembered = RecentIds(REMEMBERED_IDS)
        for request_id in ids:
            remembered.seen_before(request_id)
        return (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()


def summarise(samples: list[Sample], rate: float, id_bytes: float) -> dict[str, Any]:
    """Start, end, peak and the last-80 % slope of each quantity sampled, and the floors of fds and threads."""
    end_s = samples[-1].t_s
    window_start = samples[0].t_s + WARM_UP * (end_s - samples[0].t_s)
    window = [s for s in samples if s.t_s >= window_start]
    span_min = (window[-1].t_s - window[0].t_s) / 60 if len(window) > 1 else 0.0
    tenth = max(1, len(window) // 10)
    out: dict[str, Any] = {"window_start_s": round(window_start, 1), "window_samples": len(window)}
    for name in ("rss_mb", "fds", "threads"):
        values = [getattr(s, name) for s in samples]
        in_window = [getattr(s, name) for s in window]
        slope = slope_per_minute([(s.t_s, getattr(s, name)) for s in window])
        out[name] = {
            "start": values[0],
            "end": values[-1],
            "peak": max(values),
            "window_min": min(in_window),
            "window_max": max(in_window),
            "floor_after_warm_up": min(in_window[:tenth]),
            "floor_at_end": min(in_window[-tenth:]),
            "slope_per_min": round(slope, 4),
            "window_growth": round(slope * span_min, 3),
        }

    def remembered(t_s: float) -> float:
        return min(rate * t_s, REMEMBERED_IDS)

    expected = (remembered(window[-1].t_s) - remembered(window[0].t_s)) * id_bytes / 2**20
    out["rss_mb"]["expected_id_memory_growth"] = round(expected, 3)
    out["rss_mb"]["growth_beyond_id_memory"] = round(out["rss_mb"]["window_growth"] - expected, 3)
    out["bytes_per_remembered_id"] = round(id_bytes, 1)
    lags = [s.lag for s in window if s.lag is not None]
    out["lag"] = {"window_max": max(lags), "end": lags[-1]} if lags else None
    out["kept_up"] = max(lags) <= rate * KEEP_UP_S if lags else None
    return out


def violations(summary: dict[str, Any], delivery: dict[str, int], max_rss_growth_mb: float) -> list[str]:
    """The flatness criteria in the module docstring, as sentences naming what broke them."""
    broken = []
    rss = summary["rss_mb"]
    # Memory is judged only while the service kept up (see the module docstring); fds, threads and losses always.
    if summary["kept_up"] is not False and rss["growth_beyond_id_memory"] >= max_rss_growth_mb:
        broken.append(
            f"RSS grew {rss['window_growth']:.1f} MB over the last 80 % of the run "
            f"({rss['slope_per_min']:.2f} MB/min), "
            f"{rss['growth_beyond_id_memory']:.1f} MB beyond the {rss['expected_id_memory_growth']:.1f} MB "
            f"expected for remembered ids; the limit is {max_rss_growth_mb} MB"
        )
    for name in ("fds", "threads"):
        row = summary[name]
        if row["floor_at_end"] > row["floor_after_warm_up"]:
            broken.append(
                f"{name} did not return to their level after warm-up: at least {row['floor_at_end']} at the end, "
                f"{row['floor_after_warm_up']} after warm-up"
            )
    if delivery["lost"]:
        broken.append(f"{delivery['lost']} of {delivery['sent']} requests never answered")
    return broken


def scrape(port: int) -> str | None:
    """The service's /metrics text, None when it does not answer within 10 s (a sample is not worth more)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text: str = response.read().decode()
            return text
    except OSError:
        return None


def total(text: str, name: str) -> float | None:
    """The sum of a metric's samples over all its labels; None when it has none."""
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{"))]
    return sum(values) if values else None


def start_service(topology: Any, log: Path) -> tuple[subprocess.Popen[str], int]:
    """`serve` with its log in a file (a pipe nobody reads would block it within minutes); returns its port."""
    proc = subprocess.Popen(
        [*CLI, "serve", "--broker", topology.broker, "--images-topic", topology.images,
         "--predictions-topic", topology.predictions, "--dead-letter-topic", topology.dead_letters,
         "--subscription", topology.service_subscription, "--metrics-host", "127.0.0.1", "--metrics-port", "0",
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # its only stdout line; nothing more is written there
    if "metrics on http://" not in line:
        proc.kill()
        raise RuntimeError(f"serve did not start: {line!r}\n{log.read_text()[-2000:]}")
    return proc, int(line.split("metrics on http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def soak(broker: str, rate: float, duration: float, interval: float, work: Path) -> dict[str, Any]:
    """Run the pipeline at `rate` for `duration` seconds; the samples and the delivery counts."""
    count = max(1, round(rate * duration))
    topology = fresh_topology(broker)
    service = None
    try:
        service, port = start_service(topology, work / "serve.log")
        consumer = subprocess.Popen(
            [*CLI, "consume", "--broker", broker, "--topic", topology.predictions, "--subscription",
             topology.consumer_subscription, "--count", str(count), "--timeout", "120", "--jsonl"],
            stdout=(work / "predictions.jsonl").open("w"), stderr=(work / "consume.log").open("w"), text=True,
        )  # fmt: skip
        time.sleep(3.0)  # the consumer has joined its group before the first request
        producer = subprocess.Popen(
            [*CLI, "produce", "--broker", broker, "--topic", topology.images, "--source", "sample", "--count",
             str(count), "--rate", f"{rate:.3f}", "--no-progress", "--ids-file", str(work / "sent.txt")],
            stdout=(work / "produce.log").open("w"), stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        started = time.monotonic()
        samples = [Sample.of(service.pid, port, 0.0)]
        # Sampled while the load lasts: the producer's run is the soak.
        while producer.poll() is None:
            time.sleep(max(0.0, started + len(samples) * interval - time.monotonic()))
            samples.append(Sample.of(service.pid, port, time.monotonic() - started))
        if producer.returncode != 0:
            raise RuntimeError(f"produce failed:\n{(work / 'produce.log').read_text()[-2000:]}")
        consumed = finish(consumer, timeout=300)
        dead_lettered = total(scrape(port) or "", "fashionstream_dead_lettered_total") or 0
    finally:
        if service is not None:
            service.send_signal(signal.SIGTERM)
            finish(service, timeout=30)
        remove(topology)
    sent = set((work / "sent.txt").read_text().split())
    answered = set()
    for line in (work / "predictions.jsonl").read_text().splitlines():
        answered.add(json.loads(line)["id"])
    if consumed.returncode != 0:
        raise RuntimeError(f"consume failed:\n{(work / 'consume.log').read_text()[-2000:]}")
    tally = json.loads((work / "consume.log").read_text().strip().splitlines()[-1])  # its summary line
    delivery = {
        "sent": len(sent),
        "answered": len(sent & answered),
        "lost": len(sent - answered),
        "duplicates": int(tally.get("duplicates", 0)),
        "dead_lettered": int(dead_lettered),
    }
    return {"samples": [vars(s) for s in samples], "delivery": delivery, "latency_ms": tally.get("latency_ms")}


def flat_out_rate(broker: str) -> float:
    """Images/s end to end when the producer sends as fast as it can (bench/pipeline.py's flat-out run)."""
    return float(end_to_end(broker, FLAT_OUT_IMAGES, None)["images_per_s"])


# --------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    s, d, m = report["summary"], report["delivery"], report["machine"]
    rows = [
        ("RSS, MB", s["rss_mb"], "{:.1f}"),
        ("open file descriptors", s["fds"], "{:d}"),
        ("threads", s["threads"], "{:d}"),
    ]
    lines = [
        "| service | start | end | peak | slope over the last 80 %, per minute | growth over the last 80 % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row, fmt in rows:
        lines.append(
            f"| {name} | {fmt.format(row['start'])} | {fmt.format(row['end'])} | {fmt.format(row['peak'])} "
            f"| {row['slope_per_min']:+.3f} | {row['window_growth']:+.2f} |"
        )
    rss = s["rss_mb"]
    lines += [
        "",
        f"RSS growth after warm-up {rss['window_growth']:+.1f} MB, of which {rss['expected_id_memory_growth']:.1f} MB "
        f"is the bounded memory of recent request ids ({s['bytes_per_remembered_id']:.0f} bytes each, up to "
        f"{REMEMBERED_IDS:,d} ids): {rss['growth_beyond_id_memory']:+.1f} MB beyond it "
        f"(limit {report['criteria']['max_rss_growth_mb']:.0f} MB).",
    ]
    if s["lag"] is not None:
        lines[-1] += f" The service's consumer lag after warm-up peaked at {s['lag']['window_max']:,d} messages."
    verdict = "all criteria met" if not report["violations"] else "VIOLATED: " + "; ".join(report["violations"])
    if not report["violations"] and s["kept_up"] is False:
        verdict = f"inconclusive: {INCONCLUSIVE}"
    loads = [x["load1"] for x in report["samples"] if x.get("load1") is not None]
    words = shlex.split(report["command"])
    if "--conditions" in words:  # said in its own sentence below
        del words[words.index("--conditions") : words.index("--conditions") + 2]
    lines += [
        "",
        f"{report['duration_s'] / 60:.0f} minutes at {report['rate']:.0f} images/s ({report['rate_source']}): "
        f"sent {d['sent']:,d}, answered {d['answered']:,d}, lost {d['lost']}, duplicates {d['duplicates']}, "
        f"dead-lettered {d['dead_lettered']}; **{verdict}**.",
        "",
        f"{report['date']}, broker `{report['broker']}`, {m['cpu']}, {m['cores']} cores (load average at start "
        f"{m['load_average'][0]}, during the run {min(loads):.1f}-{max(loads):.1f}), `{shlex.join(words)}`. "
        f"{report['conditions']}",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    minutes = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    panels = (("rss_mb", "RSS, MB"), ("fds", "open fds"), ("threads", "threads"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        ax.plot(minutes, [s[key] for s in samples], "-", lw=1.2)
        ax.axvline(report["summary"]["window_start_s"] / 60, color="grey", ls=":", lw=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"serve under {report['rate']:.0f} images/s on {report['broker'].split('://')[0]} "
                      "(dotted: end of warm-up)")  # fmt: skip
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="kafka://127.0.0.1:9092")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--rate", type=float, help="images/s to send (default: half of a measured flat-out rate)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=10.0, help="RSS growth allowed after warm-up")
    parser.add_argument("--conditions", default="", help="a sentence on what else the machine was doing")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the table and plot in docs/")
    parser.add_argument("--from-results", type=Path, help="no run: redraw the table and plot from this results JSON")
    args = parser.parse_args(argv)
    if args.from_results:
        report = json.loads(args.from_results.read_text())
        replace_between_markers(DOCS, *MARKERS, markdown(report))
        plot(report)
        return 0
    report: dict[str, Any] = {
        "command": shlex.join(["python", "bench/soak.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d"),
        "broker": args.broker,
        "machine": describe_machine("onnxruntime", "confluent-kafka", "google-cloud-pubsub"),
        "conditions": args.conditions,
        "duration_s": args.duration,
        "interval_s": args.interval,
        "criteria": {
            "warm_up_fraction": WARM_UP,
            "max_rss_growth_mb": args.max_rss_growth_mb,
            "rss_growth": "least-squares growth after warm-up, less the expected growth of remembered ids",
            "fds_and_threads": "lowest value in the last tenth not above the lowest in the first tenth after warm-up",
            "lost": 0,
        },
    }
    if args.rate is None:
        flat = flat_out_rate(args.broker)
        report["flat_out_images_per_s"] = flat
        report["rate"], report["rate_source"] = flat / 2, f"half of {flat:.0f} images/s measured flat out"
        print(f"flat out {flat:.0f} images/s; soaking at {flat / 2:.0f}", file=sys.stderr)
    else:
        report["rate"], report["rate_source"] = args.rate, "given"
    with tempfile.TemporaryDirectory(prefix="soak-") as work:
        run = soak(args.broker, report["rate"], args.duration, args.interval, Path(work))
    report["delivery"], report["latency_ms"] = run["delivery"], run["latency_ms"]
    report["summary"] = summarise([Sample(**s) for s in run["samples"]], report["rate"], bytes_per_remembered_id())
    report["violations"] = violations(report["summary"], report["delivery"], args.max_rss_growth_mb)
    report["samples"] = run["samples"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    print(table)
    if args.update_docs:
        replace_between_markers(DOCS, *MARKERS, table)
        plot(report)
    for problem in report["violations"]:
        print(f"soak: {problem}", file=sys.stderr)
    if report["violations"]:
        return 1
    if report["summary"]["kept_up"] is False:
        print(f"soak: inconclusive: {INCONCLUSIVE}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
