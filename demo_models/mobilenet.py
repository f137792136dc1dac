"""MobileNetV3-style demo: inverted residuals, depthwise convs, squeeze-excitation gates."""

from __future__ import annotations

import torch
from torch import nn

_ACTS = {"relu": nn.ReLU, "hardswish": nn.Hardswish}
_GATES = {"hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid}


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Conv2d (optionally grouped) -> BN -> activation (``act=None`` for a linear projection)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(_ACTS[act]())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """adaptive avgpool -> conv1x1 reduce -> ReLU -> conv1x1 expand -> gate -> ``x * gate``.

    The broadcast multiply couples the expand conv's output channels with the gated tensor's
    channels (and hence with the depthwise conv and the expand conv before it).
    """

    def __init__(self, ch: int, squeeze_ch: int, gate: str = "hardsigmoid") -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(ch, squeeze_ch, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze_ch, ch, 1)
        self.gate = _GATES[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return x * scale


class InvertedResidual(nn.Module):
    """expand 1x1 (skipped when ``exp_ch == in_ch``) -> depthwise kxk (``groups=exp_ch``) ->
    optional SE -> project 1x1 (linear); ``out + x`` when stride 1 and in == out."""

    def __init__(
        self,
        in_ch: int,
        exp_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        se_gate: str | None,
        act: str,
    ) -> None:
        super().__init__()
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if exp_ch != in_ch:
            layers.append(ConvBNAct(in_ch, exp_ch, 1, act=act))
        layers.append(ConvBNAct(exp_ch, exp_ch, kernel, stride, groups=exp_ch, act=act))
        if se_gate is not None:
            layers.append(SqueezeExcitation(exp_ch, _make_divisible(exp_ch // 4), se_gate))
        layers.append(ConvBNAct(exp_ch, out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res:
            out = out + x
        return out


# in, exp, out, kernel, stride, SE gate, activation
DEFAULT_CONFIG: tuple[tuple, ...] = (
    (16, 16, 16, 3, 1, "sigmoid", "relu"),  # no expand conv, SE (sigmoid), residual
    (16, 64, 24, 3, 2, None, "relu"),
    (24, 72, 24, 3, 1, None, "relu"),  # residual without SE
    (24, 96, 40, 5, 2, "hardsigmoid", "hardswish"),
    (40, 120, 40, 5, 1, "hardsigmoid", "hardswish"),  # residual around SE block
)


class MobileNet(nn.Module):
    """Stem 3x3/2 -> inverted residuals -> grouped (groups=2) 1x1 conv head -> avgpool ->
    flatten -> Linear -> Hardswish -> Dropout -> fc."""

    def __init__(
        self,
        config: tuple[tuple, ...] = DEFAULT_CONFIG,
        last_conv: int = 96,
        last_groups: int = 2,
        hidden: int = 128,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        first = config[0][0]
        layers: list[nn.Module] = [ConvBNAct(in_channels, first, 3, 2, act="hardswish")]
        layers += [InvertedResidual(*cfg) for cfg in config]
        # grouped, non-depthwise conv: each half of the outputs reads one half of the inputs
        layers.append(ConvBNAct(config[-1][2], last_conv, 1, groups=last_groups, act="hardswish"))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, hidden), nn.Hardswish(), nn.Dropout(0.2)
        )
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return self.fc(self.classifier(x))


def build_mobilenet(**kwargs) -> MobileNet:
    return MobileNet(**kwargs)
