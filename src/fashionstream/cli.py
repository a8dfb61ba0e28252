"""The `fashionstream` command: one entry point, one subcommand per job.

Each subcommand lives in the package that owns it and exposes `main(argv: list[str]) -> int`.
It is imported only when chosen, so that `fashionstream serve` never imports torch and `--help`
stays fast. Every subcommand runs inside the same error wrapper: a failure the user can cause
(broker unreachable, topic missing, no model, a missing extra) prints one line that names the
thing and the fix, and exits 1, instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fashionstream import __version__

if TYPE_CHECKING:
    from fashionstream.pubsub.errors import PubSubError

log = logging.getLogger("fashionstream")

# Imported by `fashionstream train` / `export` and installed only by the `train` extra.
_TRAIN_MODULES = frozenset({"torch", "lightning", "jsonargparse", "onnx", "onnxscript", "matplotlib", "yaml"})


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


def _quantize(argv: list[str]) -> int:
    from fashionstream.classifier.quantize import main

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


def _watch(argv: list[str]) -> int:
    from fashionstream.pipeline.cli import watch_main

    return watch_main(argv)


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("demo", "run producer, model service and consumer in one process (embedded broker by default)", _demo),
    Subcommand("serve", "run the model service: images topic -> micro-batched inference -> predictions topic", _serve),
    Subcommand("produce", "send Fashion-MNIST test images or image files to the images topic", _produce),
    Subcommand("consume", "print predictions as they arrive, with running accuracy and latency", _consume),
    Subcommand("watch", "a live web page of the stream: latest images and predictions, rates, dead letters", _watch),
    Subcommand("train", "train a classifier (LightningCLI: fit/validate/test, --config, class_path)", _train),
    Subcommand("export", "export a checkpoint to ONNX + TorchScript with a model card", _export),
    Subcommand("quantize", "int8 copy of an exported model (ONNX Runtime static quantisation)", _quantize),
    Subcommand("evaluate", "measure a model's accuracy on the 10k Fashion-MNIST test set", _evaluate),
    Subcommand("predict", "classify image files with the shipped (or a given) model", _predict),
)


# --------------------------------------------------------------------------- errors


def _broker_error(error: PubSubError) -> str:
    """A broker error with the hint a command-line user needs: the flag to change (the one table of them).

    Errors without a flag to name (bad credentials: the driver's hint says where they come from) keep
    the library's own hint.
    """
    from fashionstream.pubsub import errors

    flag_hints: tuple[tuple[type[PubSubError], str], ...] = (
        (errors.NotFound, "pass --create-topics to create the topics and subscriptions, or check their names"),
        (errors.Unavailable, "check --broker, and that the broker runs and is reachable from here"),
        (errors.Timeout, "check --broker, and that the broker runs and is reachable from here"),
    )
    for kind, hint in flag_hints:
        if isinstance(error, kind):
            return f"{error.message} ({hint})"
    return str(error)


def _user_error(command: str, error: BaseException) -> str | None:
    """One line for a failure the user can cause and fix; None for a bug, which keeps its traceback."""
    from fashionstream.classifier.card import ModelCardError
    from fashionstream.classifier.fashion_mnist_files import DatasetError
    from fashionstream.pubsub.errors import MissingExtra, PubSubError

    if isinstance(error, MissingExtra):
        return str(error)
    if isinstance(error, ImportError) and (error.name or "").split(".")[0] in _TRAIN_MODULES:
        return (
            f"`fashionstream {command}` needs the training libraries (PyTorch, Lightning), which are not "
            f"installed ({error.name} is missing); install them with: pip install 'fashionstream[train]'"
        )
    if isinstance(error, ImportError) and (error.name or "").split(".")[0] == "onnxruntime":
        return "serving a model needs ONNX Runtime; install it with: pip install 'fashionstream[serve]'"
    if isinstance(error, ImportError) and (error.name or "").split(".")[0] == "aiohttp":
        return "the watch page needs aiohttp, its web server; install it with: pip install 'fashionstream[watch]'"
    if isinstance(error, PubSubError):
        return _broker_error(error)
    # A missing model or image file, a card that does not fit its model, a missing or corrupt dataset.
    if isinstance(error, FileNotFoundError | ModelCardError | DatasetError):
        return str(error)
    return None


def run_subcommand(command: Subcommand, argv: list[str]) -> int:
    """Run one subcommand inside the error wrapper."""
    try:
        return command.run(argv)
    except KeyboardInterrupt:
        return 130  # the shell's code for "stopped by Ctrl-C"; the user knows why
    except BrokenPipeError:
        # The reader went away (`fashionstream demo | head`): nothing more to say to it. Point stdout at
        # /dev/null so that flushing it at exit does not raise again, and exit as a killed writer would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:
        message = _user_error(command.name, error)
        if message is None:
            raise
        log.debug("fatal", exc_info=True)
        print(f"fashionstream {command.name}: error: {message}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashionstream",
        description="Streaming Fashion-MNIST image classification over Kafka, Google Cloud Pub/Sub "
        "or an embedded broker. Run `fashionstream COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Quick start: `fashionstream demo` classifies 1,000 test images (shipped with the package) "
        "through the embedded broker.",
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
        return run_subcommand(by_name[args[0]], args[1:])
    parser = build_parser()
    parser.parse_args(args)  # handles --help / --version / unknown commands and exits
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
