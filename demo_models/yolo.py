"""YOLOv8-style detector demo, written out in plain torch (no ultralytics): the structures a
detector brings to structural pruning.

- ``Conv``: conv-BN-SiLU.
- ``C2f``: ``cv1(x).chunk(2, 1)``, bottlenecks appended to the list, one growing
  ``torch.cat(y, 1)`` into ``cv2`` (chunk splits whatever width it gets at its middle, so
  channel i of each half go together; the concat ties each part to its range of ``cv2``'s
  input).
- ``SPPF``: three chained max pools concatenated with their input.
- An FPN/PAN neck: ``nn.Upsample`` and concats of two pyramid levels, so a backbone stage's
  channels reach the head twice.
- ``Detect``: per level a box branch (``4 * reg_max`` channels) and a class branch (``nc``),
  concatenated, viewed as ``(b, no, -1)`` and concatenated over levels, split back into box
  and class channels; the box part goes through DFL (a softmax over ``reg_max`` bins, then a
  fixed 1x1 conv holding ``arange(reg_max)``), anchors are made inside forward from the
  feature maps' sizes. The head's last convs reach the output; its hidden convs prune.
"""

from __future__ import annotations

import torch
from torch import nn


class Conv(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1)
        self.cv2 = Conv(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss decoding: the expected bin of a softmax over ``c1`` bins."""

    def __init__(self, c1: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats: list[torch.Tensor], strides: list[float], offset: float = 0.5
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    points, stride_tensor = [], []
    for feat, stride in zip(feats, strides, strict=True):
        _, _, h, w = feat.shape
        sx = torch.arange(w, dtype=feat.dtype, device=feat.device) + offset
        sy = torch.arange(h, dtype=feat.dtype, device=feat.device) + offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=feat.dtype,
                                        device=feat.device))
    return torch.cat(points), torch.cat(stride_tensor)


class Detect(nn.Module):
    def __init__(self, nc: int, ch: tuple[int, ...], reg_max: int = 16) -> None:
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), reg_max
        self.no = nc + 4 * reg_max
        self.strides = [8.0, 16.0, 32.0][: self.nl]
        c2, c3 = max(16, ch[0] // 4, 4 * reg_max), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3),
                                               nn.Conv2d(c2, 4 * reg_max, 1)) for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3),
                                               nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(reg_max)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        b = x[0].shape[0]
        x = [torch.cat((self.cv2[i](xi), self.cv3[i](xi)), 1) for i, xi in enumerate(x)]
        anchors, strides = (a.transpose(0, 1) for a in make_anchors(x, self.strides))
        x_cat = torch.cat([xi.view(b, self.no, -1) for xi in x], 2)
        box, cls = x_cat.split((4 * self.reg_max, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        anchors = anchors.unsqueeze(0)
        dbox = torch.cat(((anchors - lt + anchors + rb) / 2, rb + lt), 1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1)  # (b, 4 + nc, anchors)


class YOLO(nn.Module):
    """Backbone (P3-P5), FPN/PAN neck, decoupled Detect head over three levels."""

    def __init__(self, width: int = 16, nc: int = 8, reg_max: int = 16) -> None:
        super().__init__()
        w = width
        self.b0 = Conv(3, w, 3, 2)
        self.b1 = Conv(w, 2 * w, 3, 2)
        self.b2 = C2f(2 * w, 2 * w, 1, True)
        self.b3 = Conv(2 * w, 4 * w, 3, 2)
        self.b4 = C2f(4 * w, 4 * w, 2, True)  # P3
        self.b5 = Conv(4 * w, 8 * w, 3, 2)
        self.b6 = C2f(8 * w, 8 * w, 2, True)  # P4
        self.b7 = Conv(8 * w, 8 * w, 3, 2)
        self.b8 = C2f(8 * w, 8 * w, 1, True)
        self.b9 = SPPF(8 * w, 8 * w)  # P5
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h12 = C2f(16 * w, 8 * w)
        self.h15 = C2f(12 * w, 4 * w)  # out P3
        self.h16 = Conv(4 * w, 4 * w, 3, 2)
        self.h18 = C2f(12 * w, 8 * w)  # out P4
        self.h19 = Conv(8 * w, 8 * w, 3, 2)
        self.h21 = C2f(16 * w, 8 * w)  # out P5
        self.detect = Detect(nc, (4 * w, 8 * w, 8 * w), reg_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b2(self.b1(self.b0(x)))
        p3 = self.b4(self.b3(x))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        h12 = self.h12(torch.cat([self.up(p5), p4], 1))
        o3 = self.h15(torch.cat([self.up(h12), p3], 1))
        o4 = self.h18(torch.cat([self.h16(o3), h12], 1))
        o5 = self.h21(torch.cat([self.h19(o4), p5], 1))
        return self.detect([o3, o4, o5])


def build_yolo(**kwargs) -> YOLO:
    return YOLO(**kwargs)
