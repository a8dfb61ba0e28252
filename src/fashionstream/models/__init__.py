"""The default model, shipped inside the package: `fashion-cnn.onnx` and its card `fashion-cnn.card.json`.

The Predictor, `fashionstream serve`, `demo`, `evaluate` and `predict` use it when neither `--model`
nor $FASHIONSTREAM_MODEL names another, so an installed wheel classifies without any download.

To serve another model, export it anywhere (`fashionstream export --output_dir DIR`) and pass
`--model DIR/NAME.onnx` or set FASHIONSTREAM_MODEL. To replace the shipped model itself, export into
this folder with `--name fashion-cnn` and rebuild the wheel; the card's SHA-256 ties it to its .onnx
file, so the pair must be replaced together.

`fashion-cnn.torchscript.pt` (named by the card) stays in the source tree for torch users and the
benchmarks; the wheel leaves it out because serving never loads torch (pyproject.toml's package data).
This file imports nothing: it only makes the folder a package that `importlib.resources` can find.
"""
