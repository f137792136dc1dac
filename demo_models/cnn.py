"""Plain CNN demo: the simplest chain of coupled layers."""

from __future__ import annotations

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """conv-BN-ReLU-maxpool x3 -> ``torch.flatten(x, 1)`` -> Linear -> ReLU -> Linear (``fc``).

    Exercises: conv -> BN -> next-conv channel coupling in a straight chain, and the flatten
    boundary, where each output channel of the last conv owns a contiguous block of
    ``H * W`` input features of ``fc1``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 64),
        hidden: int = 64,
        in_channels: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c = w
        self.features = nn.Sequential(*layers)
        spatial = image_size // 2 ** len(widths)
        self.fc1 = nn.Linear(c * spatial * spatial, hidden)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.fc(self.relu(self.fc1(x)))


def build_cnn(**kwargs) -> SimpleCNN:
    return SimpleCNN(**kwargs)
