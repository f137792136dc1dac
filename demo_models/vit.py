"""Tiny ViT demo: tokens, class token concat, position embedding, nn.MultiheadAttention."""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with layer scale.

    ``x + gamma1 * attn(norm1(x))`` and ``x + gamma2 * mlp(norm2(x))``: the ``gamma``
    parameters (shape ``(D,)``) multiply the branch elementwise before the residual add, so
    they are tied to the embedding dimension like LayerNorm weights. ``nn.MultiheadAttention``
    packs q/k/v into one ``in_proj_weight`` of shape ``(3D, D)`` (heads are slices of it).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, init_values: float = 0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.gamma1 = nn.Parameter(torch.full((dim,), init_values))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma2 = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.gamma1 * self.attn(h, h, h, need_weights=False)[0]
        x = x + self.gamma2 * self.mlp(self.norm2(x))
        return x


class VisionTransformer(nn.Module):
    """patch-embed Conv2d -> ``flatten(2).transpose(1, 2)`` -> ``torch.cat((cls, x), dim=1)``
    with ``cls_token.expand(B, -1, -1)`` -> ``+ pos_embed`` -> blocks -> LayerNorm ->
    ``x[:, 0]`` -> ``head``.

    Exercises: conv output channels becoming the token embedding dim, parameters (cls token,
    pos embedding) that are tied to the embedding dim, concat along the *token* dim (which
    must not be confused with a channel concat), and token selection by indexing.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        x = x + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def build_vit(**kwargs) -> VisionTransformer:
    return VisionTransformer(**kwargs)
