"""`fashionstream predict IMAGE...`: classify image files with the shipped (or a given) model.

    fashionstream predict shoe.png shirt.jpg
    fashionstream predict --model models/my-cnn.onnx --json *.png

Any size, mode and format Pillow reads is accepted (converted to 28×28 grey, see `predictor`): these
are the user's own files, so the model service's PNG/JPEG-only rule for network input does not apply.
The model expects a light item on a dark background like Fashion-MNIST, `--invert` flips dark-on-light
photos. One line per file; a file that is not a usable image is reported and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fashionstream.classifier.predictor import InvalidImageError, Predictor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fashionstream predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--model", help=".onnx file or its .card.json (default: the shipped model)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--invert", action="store_true", help="invert grey levels (dark item on light background)")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    predictor = Predictor.load(args.model, threads=args.threads)
    failed = 0
    for path in args.images:
        try:
            pixels = predictor.to_pixels(path.read_bytes(), formats=None)
            if args.invert:
                pixels = 255 - pixels
            pred = predictor.predict_pixels(pixels[None])[0]
        except (OSError, InvalidImageError) as exc:
            failed += 1
            reason = exc.reason if isinstance(exc, InvalidImageError) else "unreadable"
            if args.json:
                print(json.dumps({"file": str(path), "error": reason, "detail": str(exc)}))
            else:
                print(f"{path}: error: {exc}", file=sys.stderr)
            continue
        if args.json:
            print(
                json.dumps(
                    {
                        "file": str(path),
                        "label": pred.label,
                        "class_name": pred.class_name,
                        "confidence": pred.confidence,
                        "model": predictor.model_id,
                    }
                )
            )
        else:
            print(f"{path}: {pred.class_name} ({pred.confidence:.1%})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
