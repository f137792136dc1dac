"""U-Net demo: encoder/decoder with transposed-conv upsampling and skip concatenation."""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> ReLU) x 2."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
        )


class UNet(nn.Module):
    """enc1 -> pool -> enc2 -> pool -> bottleneck; decoder: ``nn.ConvTranspose2d`` (whose
    weight is laid out ``(in, out, kh, kw)``, the reverse of Conv2d) ->
    ``torch.cat([skip, up], dim=1)`` -> DoubleConv; 1x1 ``head`` to ``num_classes``.

    Exercises: skip connections whose channels land at an offset inside the decoder's
    concatenated input, and ConvTranspose2d's transposed weight layout.
    """

    def __init__(self, base: int = 8, num_classes: int = 2, in_channels: int = 3) -> None:
        super().__init__()
        self.enc1 = DoubleConv(in_channels, base)
        self.pool1 = nn.MaxPool2d(2)
        self.enc2 = DoubleConv(base, base * 2)
        self.pool2 = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(base * 2, base * 4)
        self.up2 = nn.ConvTranspose2d(base * 4, base * 2, 2, stride=2)
        self.dec2 = DoubleConv(base * 4, base * 2)
        self.up1 = nn.ConvTranspose2d(base * 2, base, 2, stride=2)
        self.dec1 = DoubleConv(base * 2, base)
        # sub-pixel refinement: 1x1 conv to 4*base, PixelShuffle(2) (4 channels -> 1 channel
        # at 2x resolution), then a stride-2 conv back to the input resolution
        self.expand = nn.Conv2d(base, base * 4, 1)
        self.shuffle = nn.PixelShuffle(2)
        self.down = nn.Conv2d(base, base, 2, stride=2)
        self.head = nn.Conv2d(base, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(self.pool1(s1))
        x = self.bottleneck(self.pool2(s2))
        x = self.dec2(torch.cat([s2, self.up2(x)], dim=1))
        x = self.dec1(torch.cat([s1, self.up1(x)], dim=1))
        x = x + self.down(self.shuffle(self.expand(x)))
        return self.head(x)


def build_unet(**kwargs) -> UNet:
    return UNet(**kwargs)
