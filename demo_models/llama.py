"""Llama-style decoder demo: RMSNorm, grouped-query attention with RoPE, SwiGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class RMSNorm(nn.Module):
    """``x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight`` (hand-written)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat((-x2, x1), -1)`` where ``x1, x2`` are the two halves of the last dim (slicing)."""
    half = x.shape[-1] // 2
    x1 = x[..., :half]
    x2 = x[..., half:]
    return torch.cat((-x2, x1), dim=-1)


def rotary_cos_sin(
    seq_len: int, head_dim: int, theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape ``(seq_len, head_dim)``, computed on ``device`` (no buffers)."""
    exponent = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / theta**exponent
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, n_kv, T, hd) -> (B, n_kv * n_rep, T, hd)`` by ``x[:, :, None].expand().reshape()``."""
    b, n_kv, t, hd = x.shape
    return x[:, :, None].expand(b, n_kv, n_rep, t, hd).reshape(b, n_kv * n_rep, t, hd)


class Attention(nn.Module):
    """Grouped-query attention: q has ``n_heads`` heads, k/v have ``n_kv_heads`` that are each
    shared by ``n_heads // n_kv_heads`` query heads (repeat_kv); RoPE pairs dims ``i`` and
    ``i + head_dim/2`` inside every head; causal ``F.scaled_dot_product_attention``.

    Exercises: head-structured pruning (whole heads only), q heads grouped onto kv heads, and
    o_proj's input columns tied to q heads.
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        if dim % n_heads or n_heads % n_kv_heads:
            raise ValueError("need dim % n_heads == 0 and n_heads % n_kv_heads == 0")
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = dim // n_heads
        self.n_rep = n_heads // n_kv_heads
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        k = repeat_kv(k, self.n_rep)
        v = repeat_kv(v, self.n_rep)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(out)


class SwiGLU(nn.Module):
    """``down_proj(F.silu(gate_proj(x)) * up_proj(x))``: gate and up outputs are coupled."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """``h = x + attn(attn_norm(x))``; ``h + mlp(mlp_norm(h))``."""

    def __init__(
        self, dim: int, n_heads: int, n_kv_heads: int, ffn_hidden: int, eps: float
    ) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim, eps)
        self.attn = Attention(dim, n_heads, n_kv_heads)
        self.mlp_norm = RMSNorm(dim, eps)
        self.mlp = SwiGLU(dim, ffn_hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x), cos, sin)
        return h + self.mlp(self.mlp_norm(h))


class Llama(nn.Module):
    """``embed_tokens`` -> decoder layers -> RMSNorm -> ``lm_head``; logits ``(B, T, vocab)``.

    The residual stream ties the embedding columns, every RMSNorm weight, every o_proj /
    down_proj output row and the lm_head input columns into one group. RoPE cos/sin are
    computed in ``forward`` from ``torch.arange(T, device=...)``, so the 7B shape builds and
    runs on ``torch.device("meta")``. ``max_seq`` is recorded but not enforced.
    ``tie_embeddings=True`` shares ``lm_head.weight`` with ``embed_tokens.weight``.
    """

    def __init__(
        self,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 8,
        n_kv_heads: int = 4,
        ffn_hidden: int = 128,
        vocab: int = 256,
        max_seq: int = 64,
        rope_theta: float = 10000.0,
        eps: float = 1e-6,
        tie_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.head_dim = dim // n_heads
        self.max_seq = max_seq
        self.rope_theta = rope_theta
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            DecoderLayer(dim, n_heads, n_kv_heads, ffn_hidden, eps) for _ in range(n_layers)
        )
        self.norm = RMSNorm(dim, eps)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(tokens)
        cos, sin = rotary_cos_sin(
            tokens.shape[1], self.head_dim, self.rope_theta, h.device, h.dtype
        )
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.lm_head(self.norm(h))


def build_llama(**kwargs) -> Llama:
    return Llama(**kwargs)
