"""Mixture-of-experts decoder demo: the Llama layers with a Mixtral-style sparse MLP.

Each token's router picks ``top_k`` of ``n_experts`` experts (softmax, ``topk``, the top-k
weights renormalised). The experts' SwiGLU weights are stacked in 3-D parameters and run as
Hugging Face runs them: token rows sorted by expert, ``histc`` counts per expert, and
``F.grouped_mm`` over the offsets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .llama import Attention, RMSNorm, rotary_cos_sin


class Experts(nn.Module):
    """``n_experts`` SwiGLU experts: ``gate_up`` (experts, 2 * hidden, dim) and ``down``
    (experts, dim, hidden), each token row multiplied by its expert's weights.

    Exercises: whole experts removed with the router rows that pick them (the ids reach the
    weights through ``histc`` and ``grouped_mm``'s offsets, not through a tensor), and hidden
    units removed alike in every expert, in steps of 16 bytes (``grouped_mm``'s rows).
    """

    def __init__(self, dim: int, hidden: int, n_experts: int) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.gate_up = nn.Parameter(torch.randn(n_experts, 2 * hidden, dim) * dim**-0.5)
        self.down = nn.Parameter(torch.randn(n_experts, dim, hidden) * hidden**-0.5)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        top_k = ids.shape[-1]
        flat, order = torch.sort(ids.reshape(-1), stable=True)
        rows = x[order // top_k]
        counts = torch.histc(flat.float(), bins=self.n_experts, min=0, max=self.n_experts - 1)
        offs = torch.cumsum(counts, 0).to(torch.int32)
        gate, up = F.grouped_mm(rows, self.gate_up.transpose(1, 2), offs=offs).chunk(2, dim=-1)
        y = F.grouped_mm(F.silu(gate) * up, self.down.transpose(1, 2), offs=offs)
        y = y[torch.argsort(order)] * weights.reshape(-1, 1)
        return y.view(x.shape[0], top_k, -1).sum(1)


class SparseMoE(nn.Module):
    """``router`` logits -> softmax -> ``topk`` -> experts, as Mixtral."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = Experts(dim, hidden, n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = x.reshape(-1, d)
        weights, ids = self.router(h).softmax(-1).topk(self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        return self.experts(h, ids, weights).reshape(b, t, d)


class MoELayer(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, hidden: int, n_experts: int,
                 top_k: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = Attention(dim, n_heads, n_kv_heads)
        self.mlp_norm = RMSNorm(dim)
        self.mlp = SparseMoE(dim, hidden, n_experts, top_k)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x), cos, sin)
        return h + self.mlp(self.mlp_norm(h))


class MoE(nn.Module):
    """``embed_tokens`` -> MoE decoder layers -> RMSNorm -> ``lm_head``."""

    def __init__(self, dim: int = 32, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2,
                 hidden: int = 32, n_experts: int = 8, top_k: int = 2, vocab: int = 128) -> None:
        super().__init__()
        self.head_dim = dim // n_heads
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(MoELayer(dim, n_heads, n_kv_heads, hidden, n_experts, top_k)
                                    for _ in range(n_layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(tokens)
        cos, sin = rotary_cos_sin(tokens.shape[1], self.head_dim, 10000.0, h.device, h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.lm_head(self.norm(h))


def build_moe(**kwargs) -> MoE:
    return MoE(**kwargs)
