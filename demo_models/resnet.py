"""ResNet demos: residual adds that tie channels across blocks, 1x1 projection shortcuts."""

from __future__ import annotations

import torch
from torch import nn


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with ``out + identity``; the add couples ``bn2`` with the block input.

    When stride or width changes, ``downsample`` (1x1 conv + BN) projects the identity, which
    breaks the coupling chain at that point (the add then ties ``bn2`` to ``downsample.1``).
    ReLUs are ``inplace=True`` as in torchvision.
    """

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = _conv3x3(in_ch, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(_conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride here, ResNet v1.5) -> 1x1 expand (x4), ``out + identity``.

    The inner width (conv1/conv2 outputs) is freely prunable; the expanded output is tied to
    the residual stream of the whole stage.
    """

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = _conv1x1(in_ch, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(_conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet: stem -> ``layer1..layerN`` (width doubles per stage) -> avgpool -> flatten -> fc.

    ``stem="cifar"`` is a single stride-1 3x3 conv (for 32x32 inputs); ``stem="imagenet"`` is
    the 7x7/2 conv + 3x3/2 maxpool of the original ResNet.
    """

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2),
        width: int = 16,
        bottleneck: bool = False,
        num_classes: int = 10,
        stem: str = "cifar",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        if stem == "cifar":
            self.conv1 = _conv3x3(in_channels, width)
            self.maxpool: nn.Module = nn.Identity()
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            raise ValueError(f"unknown stem {stem!r}; expected 'cifar' or 'imagenet'")
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        in_ch = width
        self.num_stages = len(layers)
        for i, n_blocks in enumerate(layers):
            stage_width = width * 2**i
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_ch, stage_width, stride))
                in_ch = stage_width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def build_resnet(**kwargs) -> ResNet:
    """Small CIFAR-style ResNet: BasicBlocks (2, 2, 2), width 16, 10 classes."""
    return ResNet(**kwargs)


def build_resnet50(**kwargs) -> ResNet:
    """Real ResNet-50 shape: Bottleneck (3, 4, 6, 3), width 64, ImageNet stem, 1000 classes."""
    cfg = dict(layers=(3, 4, 6, 3), width=64, bottleneck=True, num_classes=1000, stem="imagenet")
    cfg.update(kwargs)
    return ResNet(**cfg)
