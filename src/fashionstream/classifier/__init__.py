"""Part 1 — the Fashion-MNIST classifier: data, nets, training CLI, export and the Predictor.

Torch-free (serving) modules, safe to import in the model service:
  card                 `ModelCard`: the typed model card JSON written by export, read by everything else
  fashion_mnist_files  find, verify and read the IDX files (numpy only)
  predictor            `Predictor`: ONNX Runtime + `ModelCard` → `Prediction`s; `InvalidImageError`
  evaluate, predict_cli  the `fashionstream evaluate` / `fashionstream predict` commands

Training modules (need the `train` extra: torch, lightning):
  nets      plain nn.Modules (`FashionCNN`, `PatchCNN`, `ResNet`) and the MAC counter
  data      Lightning data modules (`ImageDataModule` base, `FashionMNIST`)
  module    Lightning wrappers with the training recipe; `build_classifier` from a recorded class path
  train     `fashionstream train` (LightningCLI)
  export    `fashionstream export` → ONNX + TorchScript + model card; `load_checkpoint`
  quantize  int8 copy of an exported model (ONNX Runtime static quantisation; needs onnx, not torch)
  reports   per-run plots and tables

This file imports nothing, so `import fashionstream.classifier` never pulls in torch.
"""
