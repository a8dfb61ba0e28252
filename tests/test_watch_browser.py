"""The page of `fashionstream watch` in a real browser shows what the stream carried.

On the embedded broker: `fashionstream demo --watch` serves the page from its own process, and what
the page shows once the run is over (answers, accuracy, model) must agree with the demo's summary.

On real Kafka and on the Pub/Sub emulator: `fashionstream watch` and `fashionstream serve` run as
separate processes on fresh topics, 200 labelled Fashion-MNIST test images and one body that is
not an image are sent, and a plain consumer reads the predictions and the dead letter. Headless
chromium (Debian's, driven by Playwright) then opens the page, and what it shows must agree with
what the consumer read and with `/state`: the counters, the latest 48 answers (ids, classes,
confidences, wrong-marks, thumbnails), the accuracy and the confusion matrix, the model id, the
dead letter under its reason with its detail, and charts that have something drawn.

Set FASHIONSTREAM_WATCH_SCREENSHOT=path.png to keep a screenshot of the page (docs/img/watch.png
is one, from the Kafka run: `pytest tests/test_watch_browser.py -k kafka`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fashionstream.classifier.predictor import Predictor
from fashionstream.pipeline import cloudevents, contract
from fashionstream.pipeline.consumer import Tally, read_predictions
from fashionstream.pipeline.producer import ProduceSummary, SourceImage, labelled_test_images, produce
from fashionstream.pipeline.topology import Topology
from fashionstream.pipeline.watch import GRID_SIZE
from fashionstream.pubsub import Message, admin, open_subscription, open_topic
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name

pytestmark = [pytest.mark.usefixtures("no_orphans"), pytest.mark.browser, pytest.mark.slow]

IMAGES = 200
RATE = 50.0  # images/s: a few seconds of stream, so the charts have more than one point
MISSES_AT = (3, 14, 26, 39)  # places (from the end of the stream) of images the model gets wrong
HOSTILE_BODY = b"this is not an image at all"
HOSTILE_REASON = "not_an_image"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_ENV = "FASHIONSTREAM_WATCH_SCREENSHOT"
VIEWPORT = {"width": 1280, "height": 900}


def browser_unavailable(message: str) -> None:
    """Fail under CI (a missing browser there is a broken set-up), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def sync_playwright() -> Callable[[], Any]:
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        browser_unavailable("playwright is not installed: pip install 'fashionstream[dev]'")
    if not CHROMIUM.exists():
        browser_unavailable(f"no chromium at {CHROMIUM}: apt-get install chromium")
    return start


class StdoutLines:
    """The lines a child process prints on stdout, read on a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float, logs: Callable[[], str]) -> str:
        """The first line that contains `text`, once printed; fails when the process ends or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None
            if exited:
                self._reader.join(timeout=5)  # what it printed before exiting
            found = next((line for line in list(self.lines) if text in line), None)
            if found is not None:
                return found
            if exited or time.monotonic() > deadline:
                raise AssertionError(f"no line with {text!r} (rc={self.proc.poll()}): {self.lines}\n{logs()}")
            time.sleep(0.05)


PAGE_LINE = "page on http://"  # `fashionstream watch: page on http://HOST:PORT/ watching BROKER`


def page_url(line: str) -> str:
    return "http://" + line.split(PAGE_LINE, 1)[1].split()[0]


def page_state(url: str) -> dict[str, Any]:
    """The page's `/state`: the snapshot it draws, as JSON."""
    with urllib.request.urlopen(url + "state", timeout=5) as response:
        doc: dict[str, Any] = json.loads(response.read())
        return doc


def shown_when_drawn(page: Any, url: str, timeout: float = 30) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the page shows, `/state`) once the page has drawn the snapshot `/state` returns."""
    deadline = time.monotonic() + timeout
    while True:
        state = page_state(url)
        shown: dict[str, Any] = page.evaluate(READ_PAGE)
        if shown["version"] == state["version"]:
            return shown, state
        assert time.monotonic() < deadline, f"the page stays at version {shown['version']}: {state}"
        page.wait_for_timeout(250)


class WatchProcess:
    """`fashionstream watch` in a subprocess, on a port it picks; knows the page's URL once it listens."""

    def __init__(self, topology: Topology, prefix: str, log_path: Path) -> None:
        command = [
            sys.executable, "-m", "fashionstream.cli", "watch",
            "--broker", topology.broker,
            "--images-topic", topology.images,
            "--predictions-topic", topology.predictions,
            "--dead-letter-topic", topology.dead_letters,
            "--subscription", prefix,
            "--host", "127.0.0.1", "--port", "0",
            "--log-level", "info",
        ]  # fmt: skip
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True, env=os.environ.copy()
        )
        self.url = page_url(StdoutLines(self.proc).wait_for(PAGE_LINE, timeout=60, logs=self.logs))

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def state(self) -> dict[str, Any]:
        return page_state(self.url)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        finally:
            self._log.close()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes this test started; any still running at the end (a failed test) are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in reversed(started):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def stream(external_backend: Any, unique_name: Any) -> Iterator[tuple[Topology, str]]:
    """Fresh topics, the service's and consumer's subscriptions, and one on the dead letters (its URL) for the test."""
    made = Topology(
        external_backend.broker_url,
        images=unique_name("images"),
        predictions=unique_name("predictions"),
        dead_letters=unique_name("images-dlq"),
        service_subscription=unique_name("model-service"),
        consumer_subscription=unique_name("consumer"),
    )
    dead_letter_subscription = unique_name("dead-letters")
    pairs = (
        (made.images, made.service_subscription),
        (made.predictions, made.consumer_subscription),
        (made.dead_letters, dead_letter_subscription),
    )
    made.create(subscriptions=pairs, ack_deadline_s=10)
    yield made, made.subscription(made.dead_letters, dead_letter_subscription)
    for topic, sub in pairs:
        with contextlib.suppress(Exception):
            admin.delete_subscription(made.subscription(topic, sub))
    for name in (made.images, made.predictions, made.dead_letters):
        with contextlib.suppress(Exception):
            admin.delete_topic(made.topic(name))


def with_misses_last(images: list[SourceImage]) -> tuple[list[SourceImage], int]:
    """`images` with a few that the shipped model gets wrong moved among the last 48, so the grid shows misses."""
    predictions = Predictor.load(threads=1).predict_batch([image.data for image in images])
    misses = [image for image, p in zip(images, predictions, strict=True) if p.label != image.expected_label]
    assert misses, "the shipped model gets every one of these images right: no wrong-mark to show"
    moved = misses[: len(MISSES_AT)]
    ordered = [image for image in images if all(image is not miss for miss in moved)]
    for miss, from_end in zip(moved, MISSES_AT, strict=False):
        ordered.insert(len(ordered) - from_end, miss)
    return ordered, len(moved)


def read_dead_letters(url: str, options: dict[str, object], want: int, timeout: float) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    with open_subscription(url, **options) as subscriber:
        while len(got) < want and time.monotonic() < deadline:
            for message in subscriber.receive_batch(max_messages=100, timeout=0.5):
                message.ack()
                got.append(message)
    return got


CHART_BASELINE = 112.0  # the y of a zero in the page's charts (SVG units)


def chart_heights(path: str) -> list[float]:
    """The y of each point of an SVG path of the page's charts ("M0,112L1.3,60.2...")."""
    return [float(point.split(",")[1]) for point in path.replace("L", "M").split("M") if point]


# Everything the page shows that the test checks, read from the DOM (what a person sees).
READ_PAGE = """() => {
  const text = (id) => document.getElementById(id).textContent;
  const tiles = [...document.querySelectorAll("#grid .tile")].map((tile) => ({
    id: tile.dataset.id,
    cls: tile.dataset.class,
    shown: tile.querySelector(".class").textContent,
    conf: tile.querySelector(".conf").textContent,
    wrong: tile.classList.contains("wrong"),
    mark: tile.querySelector(".mark") !== null,
    expected: tile.querySelector(".expected") ? tile.querySelector(".expected").textContent : null,
    image: tile.querySelector("img") ? tile.querySelector("img").getAttribute("src") : null,
  }));
  const reasons = {};
  for (const node of document.querySelectorAll("#dead-letters .reason")) {
    reasons[node.dataset.reason] = {
      title: node.querySelector("h3").firstChild.textContent,
      count: node.querySelector(".count").textContent,
      notes: [...node.querySelectorAll("li")].map((li) => ({id: li.dataset.id, text: li.textContent})),
    };
  }
  const table = document.getElementById("confusion");
  const confusion = table ? [...table.querySelectorAll("tr")].slice(1).map(
    (row) => [...row.querySelectorAll("td")].map((cell) => cell.textContent)) : null;
  const paths = (id) => [...document.querySelectorAll("#" + id + " path")].map((p) => p.getAttribute("d"));
  return {
    version: Number(document.body.dataset.version),
    connection: text("connection"),
    counters: {requests: text("requests"), answered: text("answered"), dead_lettered: text("dead-lettered"),
               duplicates: text("duplicates"), accuracy: text("accuracy"), scored: text("scored")},
    latest_model: text("latest-model"),
    tiles, reasons, confusion,
    rate_paths: paths("rate-chart"), latency_paths: paths("latency-chart"),
  };
}"""

DONE = f"""() => document.getElementById("answered").textContent === "{IMAGES}"
  && document.getElementById("requests").textContent === "{IMAGES + 1}"
  && document.getElementById("dead-lettered").textContent === "1"
  && [...document.querySelectorAll("#grid .tile")].every((tile) => tile.querySelector("img"))"""


def test_watch_page_shows_what_the_consumer_read(
    sync_playwright: Callable[[], Any],  # first: without a browser nothing else is started
    external_backend: Any,
    stream: tuple[Topology, str],
    unique_name: Any,
    children: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    topology, dead_letter_subscription = stream
    started = time.monotonic()
    prefix = unique_name("watch")
    # The watch first: its subscriptions must exist before anything is sent (Pub/Sub delivers only what follows).
    watch = WatchProcess(topology, prefix, tmp_path / "watch.log")
    children.append(watch.proc)
    watch_subscriptions = [
        topology.subscription(topic, f"{prefix}-{topic}")
        for topic in (topology.images, topology.predictions, topology.dead_letters)
    ]
    service = ServiceProcess(topology, external_backend.subscriber_options, tmp_path / "serve.log")
    children.append(service.proc)
    try:
        service.wait_healthy()

        # 100 labelled images, the hostile body, 100 more: the refusal sits inside the stream.
        images, missed = with_misses_last(list(labelled_test_images(IMAGES)))
        hostile_id = unique_name("hostile")
        summary = ProduceSummary()
        with open_topic(topology.topic(topology.images)) as publisher:
            produce(publisher, images[: IMAGES // 2], topology.flavour, rate=RATE, summary=summary)
            hostile = contract.encode_request(HOSTILE_BODY, topology.flavour, request_id=hostile_id)
            publisher.send(hostile.data, hostile.attributes, key=hostile.key).result(timeout=30)
            produce(publisher, images[IMAGES // 2 :], topology.flavour, rate=RATE, summary=summary)
        assert summary.failed == 0 and len(summary.ids) == IMAGES
        sent_png = dict(zip(summary.ids, (image.data for image in images), strict=True))

        tally = Tally(expected=summary.expected)
        with open_subscription(topology.predictions_subscription_url, **external_backend.subscriber_options) as answers:
            read_predictions(answers, tally, until=lambda: len(tally.answered) >= IMAGES, idle_timeout=60)
        assert set(tally.answered) == set(summary.ids), service.logs()
        dead = read_dead_letters(
            dead_letter_subscription,
            external_backend.subscriber_options,
            want=1,
            timeout=60,
        )
        assert len(dead) == 1, f"{len(dead)} dead letters read:\n{service.logs()}"
        assert cloudevents.attribute(dead[0].attributes, "id") == hostile_id
        assert dead[0].attributes[contract.ERROR] == HOSTILE_REASON
        detail = dead[0].attributes[contract.ERROR_DETAIL]
        assert detail
        streamed = time.monotonic() - started

        # What the consumer read, in the page's terms.
        answered = list(tally.answered.values())  # in the order read
        correct = sum(event.expected_label == event.prediction.label for event in answered)
        assert tally.scored == IMAGES and tally.correct == correct
        accuracy = correct / IMAGES
        confusion = [[0] * 10 for _ in range(10)]
        for event in answered:
            assert event.expected_label is not None
            confusion[event.expected_label][event.prediction.label] += 1
        (model,) = {event.model for event in answered}

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(watch.url)
                page.wait_for_function(DONE, timeout=60_000)
                # The page and /state agree once the page has drawn the snapshot /state returns.
                shown, state = shown_when_drawn(page, watch.url)
                if path := os.environ.get(SCREENSHOT_ENV):
                    page.screenshot(path=path, full_page=True)
            finally:
                browser.close()
        browsed = time.monotonic() - started - streamed

        # Counters: the page, /state and the consumer agree.
        counters = state["counters"]
        assert shown["connection"] == "live"
        assert shown["counters"] == {
            "requests": str(IMAGES + 1),
            "answered": str(len(tally.answered)),
            "dead_lettered": str(len(dead)),
            "duplicates": str(counters["duplicates"]),
            "accuracy": f"{100 * accuracy:.2f} %",
            "scored": str(IMAGES),
        }, shown["counters"]
        assert counters["requests"] == IMAGES + 1 and counters["unreadable_requests"] == 0
        assert counters["answered"] == len(tally.answered) == IMAGES
        assert counters["dead_lettered"] == 1 and counters["invalid_predictions"] == 0
        assert counters["scored"] == IMAGES and counters["correct"] == correct
        assert counters["accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert shown["latest_model"] == state["latest_model"] == model
        assert state["models"] == [{"id": model, "answers": IMAGES}]

        # The grid: the latest answers, newest first, each as the consumer read it, with its own image.
        tiles = shown["tiles"]
        assert len(tiles) == GRID_SIZE
        assert [tile["id"] for tile in tiles] == [tile["id"] for tile in state["grid"]]
        if external_backend.name == "kafka":
            # One partition of predictions: the watch reads them in the consumer's order, so the images the
            # shipped model gets wrong, sent among the last, are on the grid.
            assert [tile["id"] for tile in tiles] == [event.id for event in reversed(answered)][:GRID_SIZE]
            assert any(tile["wrong"] for tile in tiles), f"none of {missed} misses shown"
        for tile in tiles:
            event = tally.answered[tile["id"]]
            prediction = event.prediction
            assert tile["cls"] == tile["shown"] == prediction.class_name, tile
            assert tile["conf"].endswith(" %")
            # /state keeps 4 decimals of the confidence, the page shows that as a percentage with one.
            kept = next(shown_tile["confidence"] for shown_tile in state["grid"] if shown_tile["id"] == tile["id"])
            assert abs(kept - prediction.confidence) <= 0.00005 + 1e-12, (kept, prediction)
            assert abs(float(tile["conf"][:-2]) - 100 * kept) <= 0.05 + 1e-9, (tile, kept)
            wrong = event.expected_label != prediction.label
            assert tile["wrong"] == tile["mark"] == wrong, tile
            assert tile["expected"] == (f"was {state['class_names'][event.expected_label]}" if wrong else None)
            assert tile["image"] == "data:image/png;base64," + base64.b64encode(sent_png[tile["id"]]).decode()

        # Accuracy's detail: the confusion matrix as the consumer's predictions against their labels.
        assert state["confusion"] == confusion
        assert shown["confusion"] == [[str(count) if count else "" for count in row] for row in confusion]

        # The hostile body, under its reason, with the service's own explanation.
        assert list(shown["reasons"]) == [HOSTILE_REASON]
        refusal = shown["reasons"][HOSTILE_REASON]
        assert refusal["title"] == HOSTILE_REASON and refusal["count"] == "1"
        assert refusal["notes"] == [{"id": hostile_id, "text": f"{hostile_id} {detail}"}]
        assert state["dead_letters"][HOSTILE_REASON]["count"] == 1
        assert state["dead_letters"][HOSTILE_REASON]["latest"][0]["detail"] == detail

        # Charts: every answer counted in the window, and lines drawn from it.
        assert sum(second["images_per_s"] for second in state["series"]) == IMAGES
        assert any(second["p50_ms"] is not None for second in state["series"])
        (rate_path,) = shown["rate_paths"]
        assert min(chart_heights(rate_path)) < CHART_BASELINE, rate_path
        p50_path, p99_path = shown["latency_paths"]
        assert len(chart_heights(p50_path)) >= 2 and len(chart_heights(p99_path)) >= 2, shown["latency_paths"]

        assert service.stop() == 0, service.logs()
        assert watch.stop() == 0, watch.logs()
    finally:
        # A consumer group is deleted only once the watch has left it.
        if watch.proc.poll() is None:
            watch.proc.kill()
            watch.proc.wait(timeout=10)
        for url in watch_subscriptions:
            with contextlib.suppress(Exception):
                admin.delete_subscription(url)
    print(
        f"\n{external_backend.name}: {IMAGES} images + 1 hostile streamed and read in {streamed:.1f} s, "
        f"page checked in {browsed:.1f} s; accuracy {100 * accuracy:.2f} %"
    )


DEMO_IMAGES = 200
DEMO_RATE = 100.0  # images/s: two seconds of stream, with the page already open


def demo_summary(lines: list[str]) -> dict[str, str]:
    """The figures of `fashionstream demo`'s text summary: the model from its first line, then one per row."""
    (header,) = [line for line in lines if line.startswith("fashionstream demo over ")]
    figures = {"model": header.rsplit(" with model ", 1)[1]}
    for line in lines[lines.index(header) + 1 :]:
        name, _, value = line.strip().partition(" ")
        if name in ("sent", "answered", "lost", "duplicates", "dead-lettered", "accuracy"):
            figures[name] = value.strip()
    return figures


def test_demo_watch_page_agrees_with_the_demo_summary(
    sync_playwright: Callable[[], Any], children: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """`demo --watch` on mem://: the page, served by the demo's own process, shows the run the summary reports."""
    started = time.monotonic()
    log_path = tmp_path / "demo.log"
    command = [
        sys.executable, "-m", "fashionstream.cli", "demo", "--watch", "--watch-port", "0",
        "--count", str(DEMO_IMAGES), "--rate", f"{DEMO_RATE:g}",
    ]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=os.environ.copy())
    children.append(proc)

    def logs() -> str:
        return log_path.read_text()[-4000:]

    stdout = StdoutLines(proc)
    first = stdout.wait_for(PAGE_LINE, timeout=60, logs=logs)
    assert stdout.lines[0] == first, stdout.lines  # the URL comes first, before the run
    assert first.startswith("fashionstream watch: page on http://127.0.0.1:") and first.endswith(" watching mem://")
    url = page_url(first)
    done = f"""() => document.getElementById("answered").textContent === "{DEMO_IMAGES}"
      && [...document.querySelectorAll("#grid .tile")].every((tile) => tile.querySelector("img"))"""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url)
            page.wait_for_function(done, timeout=60_000)
            still_on = stdout.wait_for("Ctrl-C to stop", timeout=60, logs=logs)
            shown, state = shown_when_drawn(page, url)
        finally:
            browser.close()
    browsed = time.monotonic() - started
    assert still_on == f"page still on {url}: Ctrl-C to stop"
    assert proc.poll() is None, "the page must outlive the summary"

    summary = demo_summary(stdout.lines)
    assert summary["sent"] == summary["answered"] == str(DEMO_IMAGES), summary
    assert summary["lost"] == summary["duplicates"] == summary["dead-lettered"] == "0", summary
    # The page, /state and the summary agree: answers, accuracy, model.
    counters = state["counters"]
    assert shown["connection"] == "live"
    assert shown["counters"]["answered"] == summary["answered"] == str(counters["answered"])
    assert shown["counters"]["requests"] == shown["counters"]["scored"] == str(DEMO_IMAGES)
    assert shown["counters"]["dead_lettered"] == shown["counters"]["duplicates"] == "0"
    assert summary["accuracy"].endswith("%") and shown["counters"]["accuracy"].endswith(" %")
    accuracy = float(summary["accuracy"][:-1])  # the summary's two decimals, as the page shows it
    assert float(shown["counters"]["accuracy"][:-2]) == pytest.approx(accuracy, abs=1e-9), (shown, summary)
    assert 100 * counters["accuracy"] == pytest.approx(accuracy, abs=0.005 + 1e-9)
    assert counters["correct"] == round(accuracy * DEMO_IMAGES / 100)
    assert shown["latest_model"] == state["latest_model"] == summary["model"]
    assert state["models"] == [{"id": summary["model"], "answers": DEMO_IMAGES}]
    assert len(shown["tiles"]) == GRID_SIZE and all(tile["image"] for tile in shown["tiles"])

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, logs()
    print(
        f"\ndemo --watch on mem://: {DEMO_IMAGES} images answered and the page checked in {browsed:.1f} s; "
        f"accuracy {accuracy:.2f} %, model {summary['model']}"
    )
