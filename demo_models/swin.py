"""Tiny Swin demo: window partition, hand-written window attention, shifted windows, merging."""

from __future__ import annotations

import torch
from torch import nn


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """``(B, H, W, C) -> (B * nW, ws * ws, C)`` via ``view`` / ``permute`` / ``reshape``."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """``(B * nW, ws * ws, C) -> (B, H, W, C)``, the inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def _relative_position_index(ws: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    flat = coords.flatten(1)  # (2, N)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    rel = rel + (ws - 1)
    return rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]  # (N, N)


def _shift_attn_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    img_mask = torch.zeros(1, h, w, 1)
    cnt = 0
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for hs in bands:
        for wsl in bands:
            img_mask[:, hs, wsl, :] = cnt
            cnt += 1
    mask_windows = window_partition(img_mask, ws).squeeze(-1)  # (nW, N)
    mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    """Hand-written attention inside each window.

    ``qkv`` Linear -> ``reshape(B_, N, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)`` ->
    ``(q * scale) @ k.transpose(-2, -1)`` + relative position bias gathered from the
    ``relative_position_bias_table`` Parameter (``((2ws-1)^2, heads)``: its columns are tied to
    heads) by the fixed ``relative_position_index`` buffer -> optional shift mask -> softmax ->
    ``@ v`` -> ``transpose(1, 2).reshape(B_, N, C)`` -> ``proj``.
    """

    def __init__(self, dim: int, window_size: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", _relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(-1, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj(x)


class SwinBlock(nn.Module):
    """``x + window_reverse(attn(window_partition(roll(norm1(x)))))``, then ``x + mlp(norm2(x))``
    on a ``(B, H, W, C)`` tensor; ``torch.roll`` by ``-shift`` / ``+shift`` for shifted blocks,
    whose fixed attention mask is a non-persistent buffer."""

    def __init__(
        self,
        dim: int,
        resolution: int,
        heads: int,
        window_size: int,
        shift: int,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        if resolution <= window_size:  # one window covers everything: no shifting
            window_size, shift = resolution, 0
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        mask = _shift_attn_mask(resolution, resolution, window_size, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        ws, s = self.window_size, self.shift
        shortcut = x
        x = self.norm1(x)
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        x = self.attn(window_partition(x, ws), self.attn_mask)
        x = window_reverse(x, ws, h, w)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """``torch.cat`` of ``x[:, 0::2, 0::2, :]``, ``x[:, 1::2, 0::2, :]``, ``x[:, 0::2, 1::2, :]``,
    ``x[:, 1::2, 1::2, :]`` on the last dim (4C, channel ``c`` appears 4 times) -> LayerNorm ->
    Linear 4C -> 2C (bias-free)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x[:, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, :]
        x3 = x[:, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1)
        return self.reduction(self.norm(x))


class SwinTransformer(nn.Module):
    """patch-embed Conv2d -> ``permute(0, 2, 3, 1)`` -> LayerNorm -> stage (W-MSA, SW-MSA) ->
    PatchMerging -> stage -> LayerNorm -> ``mean(dim=(1, 2))`` -> ``head``."""

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 2,
        embed_dim: int = 16,
        depths: tuple[int, ...] = (2, 2),
        heads: tuple[int, ...] = (2, 4),
        window_size: int = 4,
        mlp_ratio: float = 2.0,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.patch_norm = nn.LayerNorm(embed_dim)
        res = image_size // patch_size
        dim = embed_dim
        layers: list[nn.Module] = []
        for i, (depth, n_heads) in enumerate(zip(depths, heads, strict=True)):
            if i > 0:
                layers.append(PatchMerging(dim))
                dim, res = dim * 2, res // 2
            blocks = [
                SwinBlock(
                    dim, res, n_heads, window_size, 0 if j % 2 == 0 else window_size // 2, mlp_ratio
                )
                for j in range(depth)
            ]
            layers.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        x = self.patch_norm(x)
        x = self.features(x)
        x = self.norm(x)
        return self.head(x.mean(dim=(1, 2)))


def build_swin(**kwargs) -> SwinTransformer:
    return SwinTransformer(**kwargs)
