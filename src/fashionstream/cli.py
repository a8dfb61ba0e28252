"""The `fashionstream` command: one entry point, one subcommand per job.

Each subcommand lives in the package that owns it and exposes
`main(argv: list[str]) -> int`. It is imported only when chosen, so that
`fashionstream serve` never imports torch and `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from fashionstream import __version__


@dataclass(frozen=True)
class Subcommand:
    name: str
    summary: str
    run: Callable[[list[str]], int]


def _train(argv: list[str]) -> int:
    from fashionstream.classifier.train import main

    return main(argv)


def _export(argv: list[str]) -> int:
    from fashionstream.classifier.export import main

    return main(argv)


def _evaluate(argv: list[str]) -> int:
    from fashionstream.classifier.evaluate import main

    return main(argv)


def _predict(argv: list[str]) -> int:
    from fashionstream.classifier.predict_cli import main

    return main(argv)


def _serve(argv: list[str]) -> int:
    from fashionstream.pipeline.cli import serve_main

    return serve_main(argv)


def _produce(argv: list[str]) -> int:
    from fashionstream.pipeline.cli import produce_main

    return produce_main(argv)


def _consume(argv: list[str]) -> int:
    from fashionstream.pipeline.cli import consume_main

    return consume_main(argv)


def _demo(argv: list[str]) -> int:
    from fashionstream.pipeline.cli import demo_main

    return demo_main(argv)


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("demo", "run producer, model service and consumer in one process (embedded broker by default)", _demo),
    Subcommand("serve", "run the model service: images topic -> micro-batched inference -> predictions topic", _serve),
    Subcommand("produce", "send Fashion-MNIST test images or image files to the images topic", _produce),
    Subcommand("consume", "print predictions as they arrive, with running accuracy and latency", _consume),
    Subcommand("train", "train a classifier (LightningCLI: fit/validate/test, --config, class_path)", _train),
    Subcommand("export", "export a checkpoint to ONNX + TorchScript with a model card", _export),
    Subcommand("evaluate", "measure a model's accuracy on the 10k Fashion-MNIST test set", _evaluate),
    Subcommand("predict", "classify image files with the shipped (or a given) model", _predict),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashionstream",
        description="Streaming Fashion-MNIST image classification over Kafka, Google Cloud Pub/Sub "
        "or an embedded broker. Run `fashionstream COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Quick start: `fashionstream demo` classifies 2,000 test images through the embedded broker.",
    )
    parser.add_argument("--version", action="version", version=f"fashionstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in SUBCOMMANDS:
        # add_help=False: the subcommand's own parser answers `--help` with its real options.
        sub.add_parser(command.name, help=command.summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    by_name = {command.name: command for command in SUBCOMMANDS}
    if args and args[0] in by_name:
        return by_name[args[0]].run(args[1:])
    parser = build_parser()
    parser.parse_args(args)  # handles --help / --version / unknown commands and exits
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
