"""ShuffleNetV2 demo: chunk, concat and channel shuffle (a fixed channel permutation)."""

from __future__ import annotations

import torch
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``view(b, g, c//g, h, w)`` -> ``transpose(1, 2)`` -> ``view(b, -1, h, w)``."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


def _dw(ch: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(ch, ch, 3, stride=stride, padding=1, groups=ch, bias=False)


def _pw(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, bias=False)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit.

    stride 1: ``x1, x2 = x.chunk(2, dim=1)``; ``torch.cat((x1, branch2(x2)), 1)`` - x1 passes
    through untouched, so half the channels are tied to the unit input.
    stride 2: both branches consume the whole input; ``torch.cat((branch1(x), branch2(x)), 1)``.
    Both end with :func:`channel_shuffle`. Branches use depthwise 3x3 convs.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        bf = out_ch // 2
        if stride == 1 and in_ch != out_ch:
            raise ValueError("stride-1 ShuffleUnit needs in_ch == out_ch")
        if stride > 1:
            self.branch1 = nn.Sequential(
                _dw(in_ch, stride),
                nn.BatchNorm2d(in_ch),
                _pw(in_ch, bf),
                nn.BatchNorm2d(bf),
                nn.ReLU(),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            _pw(in_ch if stride > 1 else bf, bf),
            nn.BatchNorm2d(bf),
            nn.ReLU(),
            _dw(bf, stride),
            nn.BatchNorm2d(bf),
            _pw(bf, bf),
            nn.BatchNorm2d(bf),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """Stem conv -> stages of ShuffleUnits (first unit stride 2) -> conv5 1x1 ->
    ``x.mean([2, 3])`` -> fc."""

    def __init__(
        self,
        stages_repeats: tuple[int, ...] = (2, 2),
        stages_out: tuple[int, ...] = (24, 48, 96, 128),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(stages_out) != len(stages_repeats) + 2:
            raise ValueError("stages_out needs len(stages_repeats) + 2 entries")
        c = stages_out[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        )
        stages = []
        for repeats, out in zip(stages_repeats, stages_out[1:-1], strict=True):
            units = [ShuffleUnit(c, out, 2)]
            units += [ShuffleUnit(out, out, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            c = out
        self.stages = nn.Sequential(*stages)
        last = stages_out[-1]
        self.conv5 = nn.Sequential(_pw(c, last), nn.BatchNorm2d(last), nn.ReLU())
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stages(self.conv1(x)))
        x = x.mean([2, 3])
        return self.fc(x)


def build_shufflenet(**kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(**kwargs)
