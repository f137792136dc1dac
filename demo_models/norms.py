"""Normalisation zoo demo: GroupNorm, InstanceNorm, per-channel and shared PReLU."""

from __future__ import annotations

import torch
from torch import nn


class ChannelScale(nn.Module):
    """A user-defined per-channel scale, registered with :func:`viewer.register_layer` so the
    tracer treats it as one CUSTOMIZED node whose channels pass straight through."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[None, :, None, None]


def _register() -> None:
    try:
        from viewer.core.optypes import register_layer
    except ImportError:  # demo_models also works without DepView installed
        return
    register_layer(ChannelScale, in_dims={"scale": 0}, out_dims={"scale": 0},
                   passthrough=True)


_register()


class NormsNet(nn.Module):
    """conv -> GroupNorm(4, C) -> PReLU(C) -> conv/2 -> InstanceNorm2d(affine) -> PReLU() ->
    conv/2 -> GroupNorm(4, C) -> PReLU(C) -> avgpool -> flatten -> fc.

    Exercises: GroupNorm (per-channel affine params, but statistics over groups of channels:
    pruning must keep channel counts divisible by ``num_groups``), InstanceNorm2d with
    ``affine=True`` (per-channel weight/bias, no running stats), PReLU with one weight per
    channel (prunable with the conv) and with a single shared weight (not prunable).
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = (16, 32, 32),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(4, c1)
        self.act1 = nn.PReLU(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
        self.in2 = nn.InstanceNorm2d(c2, affine=True)
        self.act2 = nn.PReLU()
        self.scale2 = ChannelScale(c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(4, c3)
        self.act3 = nn.PReLU(c3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.gn1(self.conv1(x)))
        x = self.scale2(self.act2(self.in2(self.conv2(x))))
        x = self.act3(self.gn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_norms(**kwargs) -> NormsNet:
    return NormsNet(**kwargs)
