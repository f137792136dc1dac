"""Channel slicing demo: unbind, plain slices, uneven split, tensor_split and unfold."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    )


class SlicingNet(nn.Module):
    """Four stages that each cut a conv's output channels apart in a different way.

    1. unbind: ``qkv`` conv to 3C -> ``x.view(b, 3, C, h, w).unbind(1)`` -> ``a * sigmoid(g)
       + c`` (channel i of the three parts is coupled: qkv channels i, C+i, 2C+i).
    2. plain slicing (GLU): ``glu`` conv to 2C -> ``y[:, :C] * torch.sigmoid(y[:, C:])``.
    3. uneven split: ``torch.split(x, [4, C - 4], dim=1)`` -> two convs -> ``torch.cat``.
    4. tensor_split: ``torch.tensor_split(x, 3, dim=1)`` (32 -> 11, 11, 10) -> three 1x1 convs
       to a common width -> summed.
    5. patches: ``F.unfold(x, 2, stride=2)`` (channel c -> its 4 patch rows 4c..4c+3, a
       space-to-depth as in T2T-ViT's soft split) -> viewed as a map -> a 1x1 conv.
    Then avgpool -> flatten -> fc.
    """

    def __init__(
        self, channels: int = 16, split_first: int = 4, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        c = channels
        self.channels = c
        self.stem = _conv_bn_relu(in_channels, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.glu = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.split_sizes = [split_first, c - split_first]
        self.conv_a = _conv_bn_relu(split_first, 2 * split_first)
        self.conv_b = _conv_bn_relu(c - split_first, 2 * (c - split_first))
        merged = 2 * c
        # tensor_split(merged, 3) sizes: the first (merged % 3) sections get one extra channel
        sizes = [merged // 3 + (1 if i < merged % 3 else 0) for i in range(3)]
        self.proj = nn.ModuleList(nn.Conv2d(n, merged, 1, stride=2) for n in sizes)
        self.bn = nn.BatchNorm2d(merged)
        self.relu = nn.ReLU()
        self.patch = nn.Conv2d(4 * merged, merged, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(merged, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, _, h, w = x.shape
        # 1. unbind
        q, k, v = self.qkv(x).view(b, 3, self.channels, h, w).unbind(1)
        x = q * torch.sigmoid(k) + v
        # 2. plain slicing
        y = self.glu(x)
        x = y[:, : self.channels] * torch.sigmoid(y[:, self.channels :])
        # 3. uneven split
        xa, xb = torch.split(x, self.split_sizes, dim=1)
        x = torch.cat([self.conv_a(xa), self.conv_b(xb)], dim=1)
        # 4. tensor_split
        p0, p1, p2 = torch.tensor_split(x, 3, dim=1)
        x = self.proj[0](p0) + self.proj[1](p1) + self.proj[2](p2)
        x = self.relu(self.bn(x))
        # 5. patches
        b, _, h, w = x.shape
        x = self.patch(F.unfold(x, 2, stride=2).view(b, -1, h // 2, w // 2))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_slicing(**kwargs) -> SlicingNet:
    return SlicingNet(**kwargs)
