"""Plain `nn.Module` image classifiers for 1×28×28 inputs, and a multiply-accumulate counter.

Every net takes a normalised float batch (B, 1, 28, 28) and returns logits (B, num_classes); the
Lightning wrapper (`module.py`) adds the loss, schedule and EMA, and export needs only these classes.

    python -m fashionstream.classifier.nets       # prints params and MACs of every model

- `ResNet`: a ResNet-18-shaped net (BasicBlocks [2, 2, 2, 2]) adapted to 28×28 greyscale: a 3×3
  stride-1 stem and no max-pool. Accurate but ~0.5 G MACs per image at width 64; width 16 with
  blocks [2, 3, 3] is the ResNet-20-like candidate for long GPU training (27.4 M MACs).
- `FashionCNN`: designed for cheap serving (≤ 30 M MACs): full resolution only for two thin
  convolutions, then residual stages at 14×14 and 7×7 where channels are cheap.
- `PatchCNN`: FashionCNN's later stages behind a space-to-depth stem, nothing at 28×28: the fastest
  to train on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3×3 convolution (no bias: BatchNorm supplies it), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def max_mean_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2C): global max and mean pooling side by side.

    Max keeps small strong cues (a strap, a heel), mean the overall shape.
    """
    return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)


class Residual(nn.Module):
    """x + f(x) with f two conv-bn-relu layers at constant width and resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FashionCNN(nn.Module):
    """Small residual CNN for cheap serving.

    Shapes for the default widths (16, 32, 48, 112), about 28 M MACs:
    (B,1,28,28) -stem-> (B,16,28,28) -conv,pool-> (B,32,14,14) -conv-> (B,48,14,14) -res-> -pool->
    (B,48,7,7) -conv-> (B,112,7,7) -res-> -global max+mean-> (B,224) -linear-> (B,10)
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int, int] = (16, 32, 48, 112),
        residual_stages: tuple[bool, bool] = (True, True),
        dropout: float = 0.0,
    ) -> None:
        """
        Args:
            num_classes: number of output logits.
            widths: channels of the 28×28 stem, the 28×28 conv before the first pool, the 14×14 stage
                and the 7×7 stage. MACs grow roughly with the square of these. A stem width of 0 leaves
                the stem out (a single 28×28 conv), which trains ~20 % faster on a CPU.
            residual_stages: whether the 14×14 and 7×7 stages get a two-conv residual block.
            dropout: dropout before the classifier head.
        """
        super().__init__()
        w0, w1, w2, w3 = widths
        # w0 == 0 drops the stem: one full-resolution conv instead of two. At 28×28 the BatchNorm and ReLU
        # passes over large activations, not the MACs, dominate CPU training time, so this is the cheap cut.
        full_res = [conv_bn(1, w0), conv_bn(w0, w1)] if w0 else [conv_bn(1, w1)]  # (B, w1, 28, 28)
        self.features = nn.Sequential(
            *full_res,
            nn.MaxPool2d(2),  # (B, w1, 14, 14)
            conv_bn(w1, w2),  # (B, w2, 14, 14)
            Residual(w2) if residual_stages[0] else nn.Identity(),
            nn.MaxPool2d(2),  # (B, w2, 7, 7)
            conv_bn(w2, w3),  # (B, w3, 7, 7)
            Residual(w3) if residual_stages[1] else nn.Identity(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(max_mean_pool(self.features(x))))  # features: (B, C, 7, 7)


class PatchCNN(nn.Module):
    """FashionCNN's two later stages behind a space-to-depth stem: no work at all at 28×28.

    Each 2×2 pixel patch becomes 4 channels of a 14×14 image (lossless), so the first 3×3 conv sees a
    6×6 pixel window. On a CPU the 28×28 layers cost far more time than their MACs suggest (BatchNorm
    and ReLU passes over the largest activations), so this trains ~1.4× faster per epoch than FashionCNN.

    (B,1,28,28) -unshuffle-> (B,4,14,14) -conv-> (B,w0,14,14) -res-> -pool-> (B,w0,7,7) -conv-> (B,w1,7,7)
    -res-> -global max+mean-> (B,2·w1) -linear-> (B,10)
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int] = (64, 128), dropout: float = 0.0) -> None:
        """
        Args:
            num_classes: number of output logits.
            widths: channels of the 14×14 and the 7×7 stage.
            dropout: dropout before the classifier head.
        """
        super().__init__()
        w0, w1 = widths
        self.features = nn.Sequential(
            nn.PixelUnshuffle(2),  # (B, 4, 14, 14)
            conv_bn(4, w0),  # (B, w0, 14, 14)
            Residual(w0),
            nn.MaxPool2d(2),  # (B, w0, 7, 7)
            conv_bn(w0, w1),  # (B, w1, 7, 7)
            Residual(w1),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * w1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(max_mean_pool(self.features(x))))  # features: (B, w1, 7, 7)


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3×3 convs, projection shortcut when shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-18 layout for 28×28 greyscale: a stride-1 3×3 stem, no max-pool.

    (B,1,28,28) -stem-> (B,w,28,28) -stage1-> (B,w,28,28) -stage2-> (B,2w,14,14) -stage3-> (B,4w,7,7)
    -stage4-> (B,8w,4,4) -mean-> (B,8w) -linear-> (B,10)
    """

    def __init__(self, num_classes: int = 10, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        """
        Args:
            num_classes: number of output logits.
            width: channels of the first stage; each later stage doubles it (64 gives ResNet-18's 11 M params).
            blocks: basic blocks per stage; the first stage keeps the resolution, each later one halves it.
        """
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        c_in = width
        for stage, n in enumerate(blocks):
            c_out = width * 2**stage
            for i in range(n):
                layers.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))  # (B, 8w, 4, 4)
        return self.head(x.mean(dim=(2, 3)))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 28, 28)) -> int:
    """Multiply-accumulates for one image, counted by forward hooks on Conv2d and Linear layers.

    Convolutions: output elements × (in_channels / groups) × kernel area; linear: in × out.
    Norms, activations, pooling and additions are ignored (they are a few % at most here).
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output[0].numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += output[0].numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


if __name__ == "__main__":
    for net in (FashionCNN(), PatchCNN(), ResNet()):
        print(f"{type(net).__name__:12s} params {count_params(net):>11,d}  MACs {count_macs(net):>13,d}")
