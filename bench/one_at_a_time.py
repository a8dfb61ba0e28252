"""The baseline the model service is measured against: one message at a time, the simplest thing that works.

    .venv/bin/python bench/one_at_a_time.py --bootstrap 127.0.0.1:9092 --topic images --output predictions

A plain confluent-kafka consumer with auto-commit reads the JSON form {"id", "image": base64 PNG},
decodes it with Pillow, classifies it with the TorchScript export of the shipped model at batch 1,
produces a JSON prediction and waits until the broker has it (flush) before taking the next
message: one message after another, each answer confirmed before moving on. It is what a first
version of such a service looks like; bench/pipeline.py runs it in the same run as
`fashionstream serve` to show what micro-batching, ONNX Runtime and the rest buy. Needs the
train extra (torch). Stops after --count answers or on SIGTERM, and prints its rate as JSON on stdout.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from confluent_kafka import Consumer, Producer
from PIL import Image

from fashionstream.classifier.card import ModelCard
from fashionstream.classifier.predictor import shipped_model_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output", required=True, help="topic for the predictions")
    parser.add_argument("--group", default="one-at-a-time")
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)

    onnx_path = shipped_model_path()
    card = ModelCard.read(onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".card.json"))
    assert card.torchscript_file is not None
    model = torch.jit.load(str(Path(onnx_path).with_name(card.torchscript_file))).eval()
    torch.set_num_threads(1)  # batch 1: more threads only add synchronisation
    mean, std = card.input.mean, card.input.std

    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": True})  # fmt: skip
    producer = Producer({"bootstrap.servers": args.bootstrap})
    consumer.subscribe([args.topic])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    answered, first = 0, None
    while answered < args.count and not stopping:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        first = first or time.perf_counter()
        request = json.loads(message.value())
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(request["image"]))).convert("L"), np.float32)
        x = torch.from_numpy((pixels / 255.0 - mean) / std)[None, None]  # (1, 1, 28, 28)
        with torch.no_grad():
            label = int(model(x).argmax(1))
        answer = {"id": request["id"], "label": label, "class_name": card.class_names[label]}
        producer.produce(args.output, json.dumps(answer).encode(), key=request["id"])
        producer.flush(30)
        answered += 1
    producer.flush(30)
    consumer.close()
    seconds = time.perf_counter() - (first or time.perf_counter())
    rate = answered / max(seconds, 1e-9)
    print(json.dumps({"answered": answered, "seconds": round(seconds, 2), "images_per_s": round(rate, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
