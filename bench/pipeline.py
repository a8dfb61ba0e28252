"""Pipeline benchmark: images/s and end-to-end latency through producer -> service -> consumer.

    .venv/bin/python bench/pipeline.py                       # mem:// only
    .venv/bin/python bench/pipeline.py --broker mem:// --broker kafka://127.0.0.1:9092 \
        --broker gcppubsub://projects/fashionstream-test     # (emulator: export PUBSUB_EMULATOR_HOST)

For each broker and each --max-batch-size it runs the demo (N test images sent
flat out, one service, one consumer, all in this process) and records
throughput and latency percentiles; batch size 1 classifies one image at a
time. Results go to bench/results/pipeline.json and a
Markdown table is printed (paste it into docs/pipeline.md). Numbers, not
assertions: they depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fashionstream.classifier.predictor import Predictor
from fashionstream.machine import describe_machine
from fashionstream.pipeline.config import DemoConfig
from fashionstream.pipeline.demo import run_demo
from fashionstream.pipeline.handler import OnnxModelHandler
from fashionstream.pipeline.topology import Topology


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", action="append", default=None, help="repeatable; default mem://")
    parser.add_argument("--batch-size", type=int, action="append", default=None, help="repeatable; default 1 16 64")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=None, help="images/s sent (default flat out: latency = queueing)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting; the best throughput is kept")
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pipeline.json"))
    args = parser.parse_args(argv)
    brokers = args.broker or ["mem://"]
    sizes = args.batch_size or [1, 16, 64]
    model_id = Predictor.load(args.model).model_id
    handler = OnnxModelHandler(args.model)
    rows = []
    for broker in brokers:
        for size in sizes:
            best = None
            for repeat in range(args.repeats):
                suffix = f"bench-{int(time.time())}-{size}-{repeat}"
                topology = Topology(
                    broker,
                    images=f"images-{suffix}",
                    predictions=f"predictions-{suffix}",
                    dead_letters=f"images-dlq-{suffix}",
                    service_subscription=f"model-service-{suffix}",
                )
                config = DemoConfig(
                    broker=broker, source="test", count=args.count, max_batch_size=size, rate=args.rate, timeout=300
                )
                result = run_demo(config, topology=topology, handler=handler)
                _delete(topology)
                doc = result.as_dict()
                print(f"{broker:<40} batch {size:>3}  run {repeat}: {json.dumps(doc)}", file=sys.stderr)
                if best is None or doc["throughput_img_s"] > best["throughput_img_s"]:
                    best = doc
            assert best is not None
            rows.append({"broker": broker.split("://")[0], "max_batch_size": size, "rate": args.rate, **best})
    report = {
        "what": "demo pipeline in one process: producer (flat out) -> service -> consumer, shipped model",
        "count": args.count,
        "model": model_id,
        "machine": describe_machine("onnxruntime", "confluent-kafka", "google-cloud-pubsub"),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        "| broker | max batch | sent at | images/s | latency p50 ms | p95 ms | p99 ms | accuracy | lost | duplicates |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        lat = row["latency_ms"]
        print(
            f"| {row['broker']} | {row['max_batch_size']} | {row['rate'] or 'flat out'} "
            f"| {row['throughput_img_s']:.0f} | {lat['p50']:.0f} "
            f"| {lat['p95']:.0f} | {lat['p99']:.0f} | {row['accuracy']:.4f} | {row['lost']} | {row['duplicates']} |"
        )
    return 0


def _delete(topology: Topology) -> None:
    from fashionstream.pubsub import admin

    for call in (
        lambda: admin.delete_subscription(topology.images_subscription_url),
        *(lambda name=name: admin.delete_topic(topology.topic(name)) for name in
          (topology.images, topology.predictions, topology.dead_letters)),
    ):  # fmt: skip
        try:
            call()
        except Exception as error:  # noqa: BLE001 - clean-up only
            print(f"clean-up: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
