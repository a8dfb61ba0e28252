"""The producer: labelled Fashion-MNIST images or image files -> the `images` topic.

Each image gets a fresh unique id (the Kafka key and CloudEvents id), and the
true label as `expected_label` when it is known (the shipped sample, the test split),
so that the consumer can score the model live. A count beyond what a source holds
repeats the source; the fresh ids keep every message distinct.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fashionstream.classifier.png import write_plain_grey
from fashionstream.pipeline import contract
from fashionstream.pipeline.cloudevents import Flavour
from fashionstream.pipeline.config import IMAGE_SETS
from fashionstream.pubsub.publisher import PublisherSettings

IMAGE_SUFFIXES = {".png": contract.PNG, ".jpg": contract.JPEG, ".jpeg": contract.JPEG}


@dataclass(frozen=True)
class SourceImage:
    data: bytes
    content_type: str
    expected_label: int | None = None
    name: str = ""


def png_bytes(pixels: npt.NDArray[np.uint8]) -> bytes:
    """(28, 28) uint8 grey pixels as a PNG file, in the plain form the service decodes fastest."""
    return write_plain_grey(pixels)


def _image_set(name: str) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    if name == "sample":
        from fashionstream.classifier.sample import load_sample

        return load_sample()  # shipped with the package: no dataset needed
    if name == "test":
        from fashionstream.classifier.fashion_mnist_files import load_split

        return load_split("test")
    raise ValueError(f"no image set {name!r}; expected one of {', '.join(IMAGE_SETS)}")


def labelled_images(image_set: str, count: int | None = None, offset: int = 0) -> Iterator[SourceImage]:
    """One of `config.IMAGE_SETS` as PNGs with their labels: all of it once, or `count`, repeating it as needed."""
    images, labels = _image_set(image_set)
    stop = len(images) if count is None else offset + count
    for position in range(offset, stop):
        index = position % len(images)
        yield SourceImage(png_bytes(images[index]), contract.PNG, int(labels[index]), f"{image_set}[{index}]")


def labelled_test_images(count: int | None = None, offset: int = 0) -> Iterator[SourceImage]:
    """The full Fashion-MNIST test split (10,000 images; see `labelled_images`)."""
    return labelled_images("test", count, offset)


def file_images(paths: Sequence[str | Path]) -> Iterator[SourceImage]:
    """Image files, and the image files directly inside any directory given (sorted)."""
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"{path}: no .png/.jpg/.jpeg files in this directory")
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
        for file in files:
            yield SourceImage(file.read_bytes(), IMAGE_SUFFIXES.get(file.suffix.lower(), contract.PNG), None, str(file))


def sources(spec: Sequence[str], count: int | None) -> Iterator[SourceImage]:
    """`["test"]` or `["sample"]` -> that image set; anything else -> files/directories. Cycles up to `count`."""
    if len(spec) == 1 and spec[0] in IMAGE_SETS:
        yield from labelled_images(spec[0], count)
        return
    produced = 0
    while count is None or produced < count:
        before = produced
        for image in file_images(spec):
            if count is not None and produced >= count:
                return
            yield image
            produced += 1
        if count is None or produced == before:
            return


@dataclass
class ProduceSummary:
    sent: int = 0
    confirmed: int = 0
    failed: int = 0
    seconds: float = 0.0
    ids: list[str] = field(default_factory=list)
    expected: dict[str, int] = field(default_factory=dict)
    # When each request was handed to the publisher: the latency origin for formats without a `time`.
    sent_at: dict[str, datetime] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.confirmed / self.seconds if self.seconds > 0 else 0.0


def encode(image: SourceImage, flavour: Flavour, fmt: str, request_id: str | None = None) -> contract.EncodedMessage:
    """`image` as a request in format `fmt` ("cloudevents" or "json", see `config.REQUEST_FORMATS`)."""
    if fmt == "json":
        return contract.encode_json_request(image.data, request_id)
    return contract.encode_request(
        image.data,
        flavour,
        request_id=request_id,
        content_type=image.content_type,
        expected_label=image.expected_label,
    )


#: A paced producer wakes at most this often (the publisher's linger): what fell due since the last
#: wake goes out as one batch. Each wake and each batch cost thread hand-overs in this process and in
#: the Kafka client: paced at 512 images/s the producer used about 0.7 ms of CPU per image, flat out
#: about 0.2. Slower than one message per tick, each still goes out alone, at its time.
PACING_TICK_S = PublisherSettings.linger


def produce(
    publisher: Any,
    images: Iterable[SourceImage],
    flavour: Flavour,
    *,
    fmt: str = "cloudevents",
    rate: float | None = None,
    progress: Any | None = None,
    flush_timeout: float = 60.0,
    summary: ProduceSummary | None = None,
) -> ProduceSummary:
    """Send every image; wait until the broker confirmed them all (or `flush_timeout`).

    Flat out, each image goes to `publisher.send`, and the publisher gathers batches. Paced at
    `rate` images/s, the images due at each wake (`PACING_TICK_S`) go out together with
    `send_batch`, without the publisher's linger: nothing else would come to join them in time.
    Pass `summary` to watch it fill while sending (the demo's consumer reads `expected`/`sent_at` live).
    """
    summary = summary if summary is not None else ProduceSummary()
    futures: list[tuple[Future[Any], int]] = []  # each with how many requests it confirms
    due: list[tuple[bytes, dict[str, str], str | None]] = []

    def send_due() -> None:
        if due:
            futures.append((publisher.send_batch(list(due)), len(due)))
            due.clear()

    started = time.perf_counter()
    woke = started
    for index, image in enumerate(images):
        if index == 0:
            # The pace (and `summary.seconds`) starts with the first image, not before the source made it:
            # loading the test set takes ~85 ms, and the images due meanwhile would go out as one burst.
            started = woke = time.perf_counter()
        if rate:
            # Paced against the start time, not per message, so slow sends do not accumulate drift.
            at = started + index / rate
            if at > time.perf_counter():
                send_due()
                delay = max(at, woke + PACING_TICK_S) - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                woke = time.perf_counter()
        encoded = encode(image, flavour, fmt)
        assert encoded.key is not None
        # Recorded before sending so a fast answer never arrives before its bookkeeping.
        summary.ids.append(encoded.key)
        summary.sent_at[encoded.key] = datetime.now(UTC)
        if image.expected_label is not None:
            summary.expected[encoded.key] = image.expected_label
        if rate:
            due.append((encoded.data, encoded.attributes, encoded.key))
        else:
            futures.append((publisher.send(encoded.data, encoded.attributes, key=encoded.key), 1))
        summary.sent += 1
        if progress is not None:
            progress.update(1)
    send_due()
    publisher.flush(flush_timeout)
    for future, count in futures:
        try:
            future.result(timeout=max(0.1, flush_timeout - (time.perf_counter() - started)))
            summary.confirmed += count
        except Exception:  # noqa: BLE001 - counted and reported, the rest still count
            summary.failed += count
    summary.seconds = time.perf_counter() - started
    return summary
