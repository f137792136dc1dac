"""DenseNet demo: channel concatenation that keeps growing the feature map."""

from __future__ import annotations

import torch
from torch import nn


class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-conv1x1-BN-ReLU-conv3x3 producing ``growth`` channels, then
    ``torch.cat([x, new], 1)``.

    Exercises: concat along channels (each output channel range belongs to a different
    producer) and BN/conv consumers whose input channels span several producers.
    """

    def __init__(self, in_ch: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        inner = bn_size * growth
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, inner, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(inner, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(self.relu1(self.norm1(x)))
        new = self.conv2(self.relu2(self.norm2(new)))
        return torch.cat([x, new], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (compress) -> 2x2 avgpool between dense blocks."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.norm(x))))


class DenseNet(nn.Module):
    """Stem conv -> dense block -> transition -> dense block -> BN-ReLU -> pool -> flatten -> fc.

    With the defaults: 16 -> 40 channels in block 1, 20 after the transition, 44 after block 2.
    """

    def __init__(
        self,
        growth: int = 8,
        block_layers: tuple[int, ...] = (3, 3),
        num_init: int = 16,
        compression: float = 0.5,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, num_init, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        c = num_init
        for i, n in enumerate(block_layers):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            blocks.append(nn.Sequential(*layers))
            if i != len(block_layers) - 1:
                out = int(c * compression)
                blocks.append(Transition(c, out))
                c = out
        self.features = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))
        x = self.pool(self.relu(self.norm(x)))
        return self.fc(torch.flatten(x, 1))


def build_densenet(**kwargs) -> DenseNet:
    return DenseNet(**kwargs)
