"""Fuzz DepView's pruning with random small nets, each checked by an oracle of its own (a
script, not a test).

Run from the repository root::

    python benchmarks/fuzz.py --seeds 0-99                     # nets 0 to 99
    python benchmarks/fuzz.py --n 50 --start 1000 --quiet      # 50 nets from seed 1000
    python benchmarks/fuzz.py --seeds 7 --ops conv,bn,relu,add,cat   # a narrower vocabulary
    python benchmarks/fuzz.py --seeds 0-399 --json findings.json
    python benchmarks/fuzz.py --show 12                        # print net 12 and stop
    python benchmarks/fuzz.py --list-ops                       # the vocabulary

Each seed gives one random DAG of tensors (``build_net``: the same seed gives the same net,
weights and inputs): one or two inputs (an image, a sequence, a flat vector, token ids), up
to ~25 ops drawn from the vocabulary (``OPS``: convolutions of every kind, norms, linears,
activations, residual adds and products with broadcasting, concatenation, splits, slices,
reshapes and permutes, channel shuffles, pools, pads, resizes, reductions, contractions of
two activations, attention, recurrent layers, bare parameters), and a head layer on its
last tensor (two heads at times), passed as ``output_layers``. A net whose forward fails,
or whose outputs are not finite, is discarded and counted.

Then, per net: the ``Pruner`` is built twice (its groups must be the same); every prunable
group is pruned alone by a random strict subset of its units (respecting ``multiple_of``
and ``min_kept``), a few random groups together, every two groups that cut one tensor
position together (removing the units that hold it), now and then one unit of a group
whose ``multiple_of`` or ``min_kept`` forbids it (refused, or it must work), and by
``Pruner.plan`` at 0.5 (L1) and 0.3 (global, random scores; both previewed). Each plan is
checked against an oracle of this script's own:

1. ``apply`` works (or refuses with a ``DepViewError``) and the pruned copy runs;
2. its output shapes are the original's;
3. every tensor of the pruned ``state_dict`` is the original's index-selected at
   ``p.kept(plan)`` (the others unchanged), and every torch layer's size attributes
   (``out_channels``, ``in_features``, ...) describe its tensors;
4. for exact groups, the original with every weight slice ``p.changes(plan)`` names zeroed
   (writers and readers alike, buffers left) gives the pruned model's outputs (tolerance
   1e-4 of the largest output, as verify's; a difference of at most 1% of it is only counted
   as marginal), and ``p.verify``'s ``masked_equivalence`` says ok too;
5. no call into DepView raises anything but a ``DepViewError`` (a refusal, counted by kind:
   not a finding, except for a plan ``Pruner.plan`` made);
6. the original model's weights are unchanged afterwards.

Now and then (``--export-p``) a plan is exported (``export_dir``, with this file's
``build_net`` as the spec) and reloaded (``load_pruned``): the reload must give the pruned
outputs bit for bit; and (``--second-p``) the plan at 0.5 is followed by a second round, the
pruned copy's own ``Pruner`` and plan, applied and verified.

A finding holds the seed, the net's op list, the group, the plan, what failed and the
first lines of the message. A summary table ends the run; ``--json`` writes every finding.
The exit code is 0 whatever was found (a benchmark, not a test; ``tests/test_benchmarks.py``
checks that it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import random
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # (run as a script: the checkout's DepView, not an installed one)
    sys.path.insert(0, str(ROOT))

N = 2  # batch size of every input
VOCAB = 20  # token ids are drawn below this


# --------------------------------------------------------------------------------------------
# The ops' modules. Sizes a forward needs are read from the tensors' shapes where a model
# would compute them, or from the module's attributes (which DepView may have to set).


class Fn(nn.Module):
    """A parameter-free op ``kind`` with its settings as attributes (what ``desc`` prints)."""

    def __init__(self, kind: str, **attrs):
        super().__init__()
        self.kind = kind
        for k, v in attrs.items():
            setattr(self, k, v)
        self._names = list(attrs)

    def desc(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)}" for k in self._names)
        return f"{self.kind}({args})" if args else self.kind

    def forward(self, x, y=None):  # noqa: C901 (one branch per kind, as a table would be)
        k = self.kind
        if k == "relu":
            return F.relu(x)
        if k == "gelu":
            return F.gelu(x)
        if k == "silu":
            return F.silu(x)
        if k == "sigmoid":
            return torch.sigmoid(x)
        if k == "tanh":
            return torch.tanh(x)
        if k == "exp":
            return torch.exp(x.clamp(max=3.0))
        if k == "hardswish":
            return F.hardswish(x)
        if k == "square":
            return x ** 2
        if k == "pow2":
            return 2 ** x.clamp(max=4.0)
        if k == "addc":
            return x + self.c
        if k == "mulc":
            return x * self.c
        if k == "add":
            return x + y
        if k == "mul":
            return x * y
        if k == "sub":
            return x - y
        if k == "cat":
            return torch.cat([x, y], dim=self.dim)
        if k == "chunk":
            return tuple(torch.chunk(x, self.n, dim=self.dim))
        if k == "split":
            return tuple(torch.split(x, self.sizes, dim=self.dim))
        if k == "split_half":  # CSPNet's c = x.shape[1] // 2
            c = x.shape[self.dim] // 2
            return tuple(torch.split(x, [c, x.shape[self.dim] - c], dim=self.dim))
        if k == "unbind":  # (N, C, ...) -> n tensors of (N, C / n, ...)
            s = list(x.shape)
            return tuple(x.view(s[0], self.n, s[1] // self.n, *s[2:]).unbind(1))
        if k == "slice":
            return x[:, self.a:self.b]
        if k == "slice_last":
            return x[..., self.a:self.b]
        if k == "slice_half":
            return x[:, :x.shape[1] // 2]
        if k == "narrow":
            return x.narrow(self.dim, self.start, self.length)
        if k == "transpose":
            return x.transpose(self.d0, self.d1)
        if k == "permute":
            return x.permute(*self.perm)
        if k == "movedim":
            return torch.movedim(x, self.src, self.dst)
        if k == "flatten":
            return x.flatten(self.start)
        if k == "shuffle":  # ShuffleNet's channel shuffle
            b, c, h, w = x.shape
            return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(
                b, c, h, w)
        if k == "pixshuf":
            return F.pixel_shuffle(x, 2)
        if k == "pixunshuf":
            return F.pixel_unshuffle(x, 2)
        if k == "maxpool":
            return F.max_pool2d(x, 2)
        if k == "avgpool":
            return F.avg_pool2d(x, 2)
        if k == "adapool":
            return F.adaptive_avg_pool2d(x, self.size)
        if k == "adamaxpool":
            return F.adaptive_max_pool2d(x, self.size)
        if k == "pad":
            return F.pad(x, self.pad, value=self.value)
        if k == "interp":
            return F.interpolate(x, scale_factor=2.0, mode=self.mode)
        if k == "reduce":
            return _reduce(x, self.fn, self.dim, self.keepdim)
        if k == "matmul":  # two activations contracted: (.., L, K) @ (.., K, M)
            return x @ (y.transpose(-1, -2) if self.t else y)
        if k == "bmm":
            return torch.bmm(x, y.transpose(1, 2) if self.t else y)
        if k == "einsum":
            return torch.einsum(self.eq, x, y)
        if k == "toseq":  # (N, C, H, W) -> (N, HW, C)
            return x.flatten(2).transpose(1, 2)
        if k == "toimg":  # (N, L, D) with L = h * h -> (N, D, h, h)
            b, l_, d = x.shape
            h = math.isqrt(l_)
            return x.transpose(1, 2).reshape(b, d, h, h)
        if k == "tokpool":
            return x.mean(1) if self.how == "mean" else x[:, 0]
        if k == "unsq":
            return x.unsqueeze(1)
        if k == "unflat":  # (N, D) -> (N, D, 1, 1), broadcast against a map
            return x[:, :, None, None]
        if k == "viewseq":  # (N, D) -> (N, parts, D / parts)
            return x.view(x.shape[0], self.parts, -1)
        if k == "heads":  # (N, L, D) -> (N, L, h, D / h) -> mix over h -> (N, L, D)
            b, l_, d = x.shape
            t = x.view(b, l_, self.h, d // self.h)
            return (t * torch.softmax(t, dim=-1)).reshape(b, l_, d)
        if k == "glu":
            return F.glu(x, dim=-1)
        if k == "gate":  # a, b = chunk(2); a * sigmoid(b)
            a, b = x.chunk(2, dim=-1)
            return a * torch.sigmoid(b)
        if k == "gap":
            return x.mean((2, 3))
        if k == "cumsum":
            return torch.cumsum(x, dim=self.dim)
        if k == "repeat":  # (N, C, ...) -> (N, 2C, ...): tiled, or each channel twice
            if self.interleave:
                return x.repeat_interleave(2, dim=1)
            return x.repeat(1, 2, *([1] * (x.dim() - 2)))
        if k == "expand":  # a size-1 dim broadcast to n
            return x.expand(*[self.n if i == self.dim else -1 for i in range(x.dim())])
        if k == "stack":  # (N, C, ...) twice -> (N, 2, C, ...) -> (N, 2C, ...) or (N, C, ...)
            t = torch.stack([x, y], dim=self.dim)
            return t.flatten(1, 2) if self.how == "flatten" else t.sum(self.dim)
        if k == "flip":
            return x.flip(self.dim)
        if k == "roll":
            return torch.roll(x, 1, dims=self.dim)
        if k == "dropout":
            return F.dropout(x, 0.5, training=self.training)
        if k == "index":  # fixed channels picked by a list
            return x[:, self.idx]
        raise ValueError(f"unknown kind {k}")


def _reduce(x, fn: str, dim: int, keepdim: bool):
    if fn == "sum":
        return x.sum(dim, keepdim=keepdim)
    if fn == "mean":
        return x.mean(dim, keepdim=keepdim)
    if fn == "amax":
        return x.amax(dim, keepdim=keepdim)
    if fn == "norm":
        return torch.linalg.vector_norm(x, dim=dim, keepdim=keepdim)
    if fn == "logsumexp":
        return torch.logsumexp(x, dim, keepdim=keepdim)
    if fn == "softmax":
        return torch.softmax(x, dim)
    if fn == "normalize":
        return F.normalize(x, dim=dim)
    raise ValueError(fn)


class Gain(nn.Module):
    """``x * g`` or ``x + g`` with a bare parameter broadcast along the channels."""

    def __init__(self, shape: tuple[int, ...], add: bool):
        super().__init__()
        self.g = nn.Parameter(torch.randn(shape) * 0.5 + (0.0 if add else 1.0))
        self.add = add

    def desc(self) -> str:
        return f"{'+' if self.add else '*'}param{list(self.g.shape)}"

    def forward(self, x):
        return x + self.g if self.add else x * self.g


class FLinear(nn.Module):
    """``F.linear(x, W, b)`` with bare parameters, or ``x @ W.t()``."""

    def __init__(self, d_in: int, d_out: int, bias: bool, matmul: bool):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d_out, d_in) / math.sqrt(d_in))
        self.b = nn.Parameter(torch.randn(d_out) * 0.1) if bias else None
        self.matmul = matmul

    def desc(self) -> str:
        return (f"{'x@W.t()' if self.matmul else 'F.linear'}({self.w.shape[1]}->"
                f"{self.w.shape[0]}{', bias' if self.b is not None else ''})")

    def forward(self, x):
        if self.matmul:
            y = x @ self.w.t()
            return y if self.b is None else y + self.b
        return F.linear(x, self.w, self.b)


class ClsToken(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, d))

    def desc(self) -> str:
        return f"cls_token({self.cls.shape[-1]})"

    def forward(self, x):
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)


class PosEmb(nn.Module):
    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(shape) * 0.5)

    def desc(self) -> str:
        return f"pos_emb{list(self.pos.shape)}"

    def forward(self, x):
        return x + self.pos


class Perm(nn.Module):
    """A layer applied channels-last on a map: permute, layer, permute back (ConvNeXt)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def desc(self) -> str:
        return f"channels_last({_layer_desc(self.layer)})"

    def forward(self, x):
        return self.layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SeqConv(nn.Module):
    """A Conv1d over a sequence's tokens: (N, L, D) -> (N, L, D')."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.conv = conv

    def desc(self) -> str:
        return f"seq_{_layer_desc(self.conv)}"

    def forward(self, x):
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class SE(nn.Module):
    """Squeeze and excitation: x * sigmoid(fc2(relu(fc1(mean(x)))))."""

    def __init__(self, c: int, r: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)

    def desc(self) -> str:
        return f"se({self.fc1.in_channels}, {self.fc1.out_channels})"

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class Attention(nn.Module):
    """q, k, v projections, heads, attention (``sdpa`` or by hand), an output projection."""

    def __init__(self, d: int, heads: int, head_dim: int, d_out: int, how: str, fused: bool,
                 scale: float | None, view_by: str, causal: bool):
        super().__init__()
        inner = heads * head_dim
        self.fused = fused
        if fused:
            self.qkv = nn.Linear(d, 3 * inner)
        else:
            self.q, self.k, self.v = (nn.Linear(d, inner) for _ in range(3))
        self.o = nn.Linear(inner, d_out)
        self.num_heads, self.head_dim = heads, head_dim
        self.how, self.scale, self.view_by, self.causal = how, scale, view_by, causal

    def desc(self) -> str:
        return (f"attention({self.how}, heads={self.num_heads}x{self.head_dim}, "
                f"{'fused' if self.fused else 'q/k/v'}, scale={self.scale}, "
                f"view_by={self.view_by}{', causal' if self.causal else ''}, "
                f"out={self.o.out_features})")

    def _heads(self, t, b, l_):
        if self.view_by == "heads":
            t = t.view(b, l_, self.num_heads, -1)
        else:
            t = t.view(b, l_, -1, self.head_dim)
        return t.transpose(1, 2)

    def forward(self, x):
        b, l_, _ = x.shape
        if self.fused:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q, k, v = (self._heads(t, b, l_) for t in (q, k, v))
        if self.how == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, scale=self.scale, is_causal=self.causal)
        else:
            s = self.scale if self.scale is not None else 1.0 / math.sqrt(q.shape[-1])
            o = torch.softmax(q @ k.transpose(-2, -1) * s, dim=-1) @ v
        return self.o(o.transpose(1, 2).reshape(b, l_, -1))


class MHA(nn.Module):
    def __init__(self, d: int, heads: int, bias: bool, kdim: int | None):
        super().__init__()
        self.mha = nn.MultiheadAttention(d, heads, bias=bias, batch_first=True, kdim=kdim,
                                         vdim=kdim)

    def desc(self) -> str:
        m = self.mha
        return (f"mha({m.embed_dim}, heads={m.num_heads}"
                f"{', kdim=' + str(m.kdim) if m.kdim != m.embed_dim else ''})")

    def forward(self, x, y=None):
        kv = x if y is None else y
        return self.mha(x, kv, kv, need_weights=False)[0]


class RNN(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def desc(self) -> str:
        r = self.rnn
        return (f"{type(r).__name__.lower()}({r.input_size}->{r.hidden_size}, layers="
                f"{r.num_layers}{', bidir' if r.bidirectional else ''})")

    def forward(self, x):
        return self.rnn(x)[0]


class Head(nn.Module):
    """The output layer ``fc`` on what reaches it flattened, pooled, or as it is."""

    def __init__(self, how: str, fc: nn.Module):
        super().__init__()
        self.how, self.fc = how, fc

    def desc(self) -> str:
        return f"head({self.how}, {_layer_desc(self.fc)})"

    def forward(self, x):
        if self.how == "gap":
            x = x.mean((2, 3))
        elif self.how == "flatten":
            x = x.flatten(1)
        return self.fc(x)


class Twice(nn.Module):
    """One layer called twice: ``layer(act(layer(x)))`` (ALBERT's shared layer), or on two
    tensors, ``(layer(x), layer(y))``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def desc(self) -> str:
        return f"twice({_layer_desc(self.layer)})"

    def forward(self, x, y=None):
        if y is None:
            return self.layer(F.relu(self.layer(x)))
        return self.layer(x), self.layer(y)


class Unembed(nn.Module):
    """An output projection tied to an embedding's table: ``F.linear(x, emb.weight)``."""

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        self.emb = emb  # (the same module as the embedding's step: a tie)

    def desc(self) -> str:
        return f"unembed(tied to Embedding({self.emb.num_embeddings}, {self.emb.embedding_dim}))"

    def forward(self, x):
        return F.linear(x, self.emb.weight)


class Bilinear(nn.Module):
    def __init__(self, d1: int, d2: int, out: int):
        super().__init__()
        self.bil = nn.Bilinear(d1, d2, out)

    def desc(self) -> str:
        b = self.bil
        return f"Bilinear({b.in1_features}, {b.in2_features}->{b.out_features})"

    def forward(self, x, y):
        return self.bil(x, y)


def _layer_desc(m: nn.Module) -> str:
    if hasattr(m, "desc"):
        return m.desc()
    if isinstance(m, nn.Conv2d | nn.Conv1d | nn.ConvTranspose2d):
        extra = []
        if m.stride[0] != 1:
            extra.append(f"s{m.stride[0]}")
        if m.dilation[0] != 1:
            extra.append(f"d{m.dilation[0]}")
        if m.groups != 1:
            extra.append(f"g{m.groups}")
        if m.bias is None:
            extra.append("nobias")
        return (f"{type(m).__name__}({m.in_channels}->{m.out_channels}, k{m.kernel_size[0]}"
                f"{''.join(' ' + e for e in extra)})")
    if isinstance(m, nn.Linear):
        bias = "" if m.bias is not None else ", nobias"
        return f"Linear({m.in_features}->{m.out_features}{bias})"
    if isinstance(m, nn.GroupNorm):
        return f"GroupNorm({m.num_groups}, {m.num_channels})"
    if isinstance(m, nn.Embedding | nn.EmbeddingBag):
        return f"{type(m).__name__}({m.num_embeddings}, {m.embedding_dim})"
    return repr(m).replace("\n", " ")


class FuzzNet(nn.Module):
    """Steps run in order on a list of tensors (the inputs first); each step's module reads
    some of them and appends its outputs; the heads read the listed ones."""

    def __init__(self, ops: list[nn.Module], wiring: list[list[int]], heads: list[nn.Module],
                 outputs: list[int]):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.heads = nn.ModuleList(heads)
        self.wiring = [list(w) for w in wiring]
        self.outputs = list(outputs)

    def forward(self, *xs):
        env = list(xs)
        for op, ins in zip(self.ops, self.wiring, strict=True):
            out = op(*[env[i] for i in ins])
            env.extend(out if isinstance(out, tuple) else (out,))
        outs = tuple(h(env[i]) for h, i in zip(self.heads, self.outputs, strict=True))
        return outs[0] if len(outs) == 1 else outs


# --------------------------------------------------------------------------------------------
# The generator: each op is built for a tensor it is given, run at once on its real value
# (so every shape is known), and kept only if it runs.


@dataclass
class Net:
    seed: int
    model: FuzzNet
    inputs: tuple
    lines: list[str]  #: the op list, printable
    output_layers: list[str]
    ops_used: list[str]
    dropped: int = 0  #: ops that failed to run while the net was made


class _SkipError(Exception):
    """This op does not fit the tensor it was given."""


class Gen:
    def __init__(self, seed: int, allowed: set[str] | None):
        self.rng = random.Random(seed)
        self.allowed = allowed
        self.vals: list[torch.Tensor] = []
        self.names: list[str] = []
        self.used: Counter = Counter()  # tensor id -> times read
        self.ops: list[nn.Module] = []
        self.wiring: list[list[int]] = []
        self.lines: list[str] = []
        self.kinds: list[str] = []

    # -- helpers
    def r(self, *choices):
        return self.rng.choice(choices)

    def p(self, prob: float) -> bool:
        return self.rng.random() < prob

    def add(self, mod: nn.Module, ins: list[int], kind: str) -> list[int]:
        """Run ``mod`` on the tensors ``ins``; keep it and its outputs (their ids)."""
        mod.eval()
        with torch.no_grad():
            out = mod(*[self.vals[i] for i in ins])
        outs = out if isinstance(out, tuple) else (out,)
        for t in outs:
            if not torch.isfinite(t).all() or t.abs().max() > 1e4 or t.dim() < 2:
                raise _SkipError("not finite, too large or not batched")
        ids = list(range(len(self.vals), len(self.vals) + len(outs)))
        self.vals.extend(outs)
        for i in ins:
            self.used[i] += 1
        self.ops.append(mod)
        self.wiring.append(list(ins))
        self.kinds.append(kind)
        shapes = ", ".join(f"t{i}{list(self.vals[i].shape)}" for i in ids)
        self.lines.append(f"{shapes} = {_layer_desc(mod)}({', '.join(f't{i}' for i in ins)})")
        return ids

    def partners(self, x: int, ok) -> list[int]:
        return [i for i, t in enumerate(self.vals) if i != x and t.is_floating_point() and ok(t)]

    def branch_same(self, x: int) -> int:
        """A tensor shaped as ``x``, made from it by one layer (for a residual op)."""
        t = self.vals[x]
        if t.dim() == 4:
            c = t.shape[1]
            mod = nn.Conv2d(c, c, self.r(1, 3), padding="same", bias=self.p(0.5))
        else:
            d = t.shape[-1]
            mod = nn.Linear(d, d, bias=self.p(0.5))
        return self.add(mod, [x], "branch")[0]


def _div(n: int, rng: random.Random, low: int = 2) -> int | None:
    """A divisor of ``n`` at least ``low`` and below ``n`` (or None)."""
    ds = [d for d in range(low, n) if n % d == 0]
    return rng.choice(ds) if ds else None


def _width(g: Gen) -> int:
    return g.r(4, 6, 8, 8, 12, 16)


# Each op: (kinds of input it takes, weight, builder). A builder gets the generator and the
# input tensor's id, adds one or more steps, or raises _SkipError.
OPS: dict[str, tuple[tuple[str, ...], float, object]] = {}


def op(name: str, kinds: tuple[str, ...], weight: float = 1.0):
    def deco(fn):
        OPS[name] = (kinds, weight, fn)
        return fn
    return deco


@op("conv", ("img",), 4)
def _conv(g: Gen, x: int):
    c = g.vals[x].shape[1]
    k = g.r(1, 3, 3)
    return g.add(nn.Conv2d(c, _width(g), k, padding=k // 2, bias=g.p(0.7)), [x], "conv")


@op("gconv", ("img",), 1.5)
def _gconv(g: Gen, x: int):
    c = g.vals[x].shape[1]
    grp = _div(c, g.rng)
    if grp is None:
        raise _SkipError
    out = grp * g.r(1, 2, 3)
    return g.add(nn.Conv2d(c, out, 3, padding=1, groups=grp, bias=g.p(0.5)), [x], "gconv")


@op("dwconv", ("img",), 2)
def _dwconv(g: Gen, x: int):
    c = g.vals[x].shape[1]
    mult = g.r(1, 1, 2)
    return g.add(nn.Conv2d(c, c * mult, 3, padding=1, groups=c, bias=g.p(0.5)), [x], "dwconv")


@op("dilconv", ("img",), 1)
def _dilconv(g: Gen, x: int):
    c = g.vals[x].shape[1]
    return g.add(nn.Conv2d(c, _width(g), 3, padding=2, dilation=2), [x], "dilconv")


@op("sconv", ("img",), 1)
def _sconv(g: Gen, x: int):
    t = g.vals[x]
    if min(t.shape[2:]) < 4:
        raise _SkipError
    return g.add(nn.Conv2d(t.shape[1], _width(g), 3, stride=2, padding=1), [x], "sconv")


@op("convt", ("img",), 1.5)
def _convt(g: Gen, x: int):
    t = g.vals[x]
    c = t.shape[1]
    if max(t.shape[2:]) > 8 or g.p(0.3):
        mod = nn.ConvTranspose2d(c, _width(g), 3, padding=1, bias=g.p(0.5))
    else:
        grp = _div(c, g.rng) if g.p(0.3) else 1
        grp = grp or 1
        mod = nn.ConvTranspose2d(c, grp * g.r(1, 2), 2, stride=2, groups=grp)
    return g.add(mod, [x], "convt")


@op("conv1d", ("seq",), 1)
def _conv1d(g: Gen, x: int):
    d = g.vals[x].shape[-1]
    grp = (_div(d, g.rng) or 1) if g.p(0.3) else 1
    return g.add(SeqConv(nn.Conv1d(d, grp * g.r(2, 3, 4), 3, padding=1, groups=grp)), [x],
                 "conv1d")


def _bn(c: int, cls) -> nn.Module:
    bn = cls(c)
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_(1, 0.3)
        bn.bias.normal_(0, 0.3)
    return bn


@op("bn", ("img", "flat"), 3)
def _bnop(g: Gen, x: int):
    t = g.vals[x]
    return g.add(_bn(t.shape[1], nn.BatchNorm2d if t.dim() == 4 else nn.BatchNorm1d), [x], "bn")


@op("gn", ("img",), 1.5)
def _gn(g: Gen, x: int):
    c = g.vals[x].shape[1]
    grp = g.r(1, c, _div(c, g.rng) or c)
    return g.add(nn.GroupNorm(grp, c), [x], "gn")


@op("inorm", ("img",), 0.7)
def _inorm(g: Gen, x: int):
    t = g.vals[x]
    if t.shape[2] * t.shape[3] < 2:
        raise _SkipError
    return g.add(nn.InstanceNorm2d(t.shape[1], affine=g.p(0.5)), [x], "inorm")


@op("ln", ("img", "seq", "flat"), 2)
def _ln(g: Gen, x: int):
    t = g.vals[x]
    if t.dim() == 4 and g.p(0.25):
        return g.add(nn.LayerNorm(list(t.shape[1:])), [x], "ln")
    if t.dim() == 4:
        return g.add(Perm(nn.LayerNorm(t.shape[1])), [x], "ln")
    return g.add(nn.LayerNorm(t.shape[-1], elementwise_affine=g.p(0.85)), [x], "ln")


@op("rms", ("seq", "flat"), 1)
def _rms(g: Gen, x: int):
    return g.add(nn.RMSNorm(g.vals[x].shape[-1]), [x], "rms")


@op("linear", ("seq", "flat"), 4)
def _linear(g: Gen, x: int):
    d = g.vals[x].shape[-1]
    return g.add(nn.Linear(d, _width(g), bias=g.p(0.8)), [x], "linear")


@op("permlinear", ("img",), 1)
def _permlinear(g: Gen, x: int):
    return g.add(Perm(nn.Linear(g.vals[x].shape[1], _width(g))), [x], "permlinear")


@op("flinear", ("seq", "flat"), 1.5)
def _flinear(g: Gen, x: int):
    d = g.vals[x].shape[-1]
    return g.add(FLinear(d, _width(g), g.p(0.5), g.p(0.4)), [x], "flinear")


@op("embed", ("ids",), 5)
def _embed(g: Gen, x: int):
    if g.p(0.25):
        return g.add(nn.EmbeddingBag(VOCAB, _width(g), mode=g.r("mean", "sum")), [x], "embed")
    return g.add(nn.Embedding(VOCAB, _width(g)), [x], "embed")


for _a, _w in (("relu", 3), ("gelu", 1), ("silu", 1), ("sigmoid", 1), ("tanh", 1), ("exp", 0.5),
               ("hardswish", 0.7), ("square", 0.5), ("pow2", 0.4)):
    def _act(g: Gen, x: int, _a=_a):
        return g.add(Fn(_a), [x], _a)
    OPS[_a] = (("img", "seq", "flat"), _w, _act)


@op("addc", ("img", "seq", "flat"), 0.5)
def _addc(g: Gen, x: int):
    return g.add(Fn(g.r("addc", "mulc"), c=g.r(0.5, -1.0, 2.0)), [x], "addc")


def _channel_shape(t: torch.Tensor, g: Gen) -> tuple[int, ...]:
    if t.dim() == 4:
        return g.r((1, t.shape[1], 1, 1), (t.shape[1], 1, 1))
    return g.r((t.shape[-1],), (1,) * (t.dim() - 1) + (t.shape[-1],))


@op("gain", ("img", "seq", "flat"), 1.5)
def _gain(g: Gen, x: int):
    return g.add(Gain(_channel_shape(g.vals[x], g), add=False), [x], "gain")


@op("bias", ("img", "seq", "flat"), 0.7)
def _biasop(g: Gen, x: int):
    return g.add(Gain(_channel_shape(g.vals[x], g), add=True), [x], "bias")


def _binary(g: Gen, x: int, kind: str):
    t = g.vals[x]

    def fits(u):
        try:
            return u.dim() == t.dim() and torch.broadcast_shapes(t.shape, u.shape) == t.shape
        except RuntimeError:
            return False
    cands = g.partners(x, fits)
    y = g.rng.choice(cands) if cands and g.p(0.8) else g.branch_same(x)
    return g.add(Fn(kind), [x, y] if g.p(0.8) or g.vals[y].shape != t.shape else [y, x], kind)


for _b, _w in (("add", 4), ("mul", 1.5), ("sub", 0.7)):
    OPS[_b] = (("img", "seq", "flat"), _w, lambda g, x, _b=_b: _binary(g, x, _b))


@op("cat", ("img", "seq", "flat"), 3)
def _cat(g: Gen, x: int):
    t = g.vals[x]
    dim = 1 if t.dim() == 4 or g.p(0.3) else t.dim() - 1
    if t.dim() == 4 and g.p(0.15):
        dim = g.r(2, 3)

    def fits(u):
        return u.dim() == t.dim() and all(a == b for i, (a, b) in enumerate(
            zip(u.shape, t.shape, strict=True)) if i != dim)
    cands = g.partners(x, fits)
    if cands and g.p(0.7):
        y = g.rng.choice(cands)
    elif t.dim() == 4 and dim == 1:
        y = g.add(nn.Conv2d(t.shape[1], _width(g), 1), [x], "branch")[0]
    elif dim == t.dim() - 1:
        y = g.add(nn.Linear(t.shape[-1], _width(g)), [x], "branch")[0]
    else:
        y = g.branch_same(x)
    return g.add(Fn("cat", dim=dim), [x, y] if g.p(0.5) else [y, x], "cat")


@op("split", ("img", "seq", "flat"), 2)
def _split(g: Gen, x: int):
    t = g.vals[x]
    dim = 1 if t.dim() != 3 or g.p(0.3) else 2
    n = t.shape[dim]
    if n < 2:
        raise _SkipError
    how = g.r("chunk", "split", "split_half", "unbind")
    if how == "chunk":
        k = _div(n, g.rng) or 2
        mod = Fn("chunk", n=k, dim=dim)
    elif how == "split":
        a = g.rng.randrange(1, n)
        mod = Fn("split", sizes=[a, n - a], dim=dim)
    elif how == "split_half":
        mod = Fn("split_half", dim=dim)
    else:
        k = _div(t.shape[1], g.rng)
        if k is None or k > 4:
            raise _SkipError
        mod = Fn("unbind", n=k)
    return g.add(mod, [x], "split")


@op("slice", ("img", "seq", "flat"), 2)
def _slice(g: Gen, x: int):
    t = g.vals[x]
    n = t.shape[1]
    if n < 3:
        raise _SkipError
    how = g.r("slice", "slice_half", "narrow", "slice_last")
    if how == "slice_last":
        n = t.shape[-1]
        if n < 3:
            raise _SkipError
    a = g.rng.randrange(0, n - 1)
    b = g.rng.randrange(a + 1, n + 1)
    if how in ("slice", "slice_last"):
        mod = Fn(how, a=a, b=b)
    elif how == "narrow":
        mod = Fn("narrow", dim=1, start=a, length=b - a)
    else:
        mod = Fn("slice_half")
    return g.add(mod, [x], "slice")


@op("permute", ("img", "seq"), 1.5)
def _permute(g: Gen, x: int):
    t = g.vals[x]
    if t.dim() == 4:
        mod = g.r(Fn("transpose", d0=2, d1=3), Fn("permute", perm=[0, 1, 3, 2]),
                  Fn("movedim", src=1, dst=3), Fn("permute", perm=[0, 2, 3, 1]))
    else:
        mod = g.r(Fn("transpose", d0=1, d1=2), Fn("movedim", src=2, dst=1))
    return g.add(mod, [x], "permute")


@op("reshape", ("img", "seq", "flat"), 1.5)
def _reshape(g: Gen, x: int):
    t = g.vals[x]
    if t.dim() == 4:
        mod = g.r(Fn("flatten", start=1), Fn("toseq"), Fn("gap"), nn.Flatten())
    elif t.dim() == 3:
        if math.isqrt(t.shape[1]) ** 2 == t.shape[1] and g.p(0.5):
            mod = Fn("toimg")
        elif g.p(0.4) and (h := _div(t.shape[2], g.rng)):
            mod = Fn("heads", h=h)
        else:
            mod = g.r(Fn("tokpool", how="mean"), Fn("tokpool", how="first"),
                      Fn("flatten", start=1))
    else:
        parts = _div(t.shape[1], g.rng)
        mod = g.r(Fn("unsq"), Fn("unflat"), *([Fn("viewseq", parts=parts)] if parts else []))
    return g.add(mod, [x], "reshape")


@op("shuffle", ("img",), 1.5)
def _shuffle(g: Gen, x: int):
    grp = _div(g.vals[x].shape[1], g.rng)
    if grp is None:
        raise _SkipError
    return g.add(Fn("shuffle", groups=grp), [x], "shuffle")


@op("pixshuf", ("img",), 1)
def _pixshuf(g: Gen, x: int):
    t = g.vals[x]
    if t.shape[1] % 4 == 0 and (g.p(0.5) or t.shape[2] % 2):
        return g.add(Fn("pixshuf"), [x], "pixshuf")
    if t.shape[2] % 2 or t.shape[3] % 2:
        raise _SkipError
    return g.add(Fn("pixunshuf"), [x], "pixshuf")


@op("pool", ("img",), 2)
def _pool(g: Gen, x: int):
    t = g.vals[x]
    kind = g.r("maxpool", "avgpool", "adapool", "adamaxpool")
    if kind in ("maxpool", "avgpool"):
        if min(t.shape[2:]) < 2:
            raise _SkipError
        return g.add(Fn(kind), [x], "pool")
    return g.add(Fn(kind, size=g.r(1, 2)), [x], "pool")


@op("pad", ("img",), 0.7)
def _pad(g: Gen, x: int):
    pad = g.r((1, 1, 1, 1), (0, 1, 0, 1), (1, 1, 1, 1, 1, 0)) if g.p(0.9) else (0, 0, 0, 0, 1, 1)
    return g.add(Fn("pad", pad=pad, value=g.r(0.0, 0.0, 1.0)), [x], "pad")


@op("interp", ("img",), 1)
def _interp(g: Gen, x: int):
    if max(g.vals[x].shape[2:]) > 8:
        raise _SkipError
    return g.add(Fn("interp", mode=g.r("nearest", "bilinear")), [x], "interp")


@op("reduce", ("img", "seq", "flat"), 2)
def _reducer(g: Gen, x: int):
    t = g.vals[x]
    fn = g.r("sum", "mean", "amax", "norm", "logsumexp", "softmax", "normalize")
    dim = g.rng.randrange(1, t.dim())
    keepdim = fn in ("softmax", "normalize") or t.dim() == 2 or g.p(0.6)
    out = g.add(Fn("reduce", fn=fn, dim=dim, keepdim=keepdim), [x], "reduce")
    if keepdim and g.vals[out[0]].shape != t.shape and g.p(0.7):  # broadcast back on x
        out = g.add(Fn(g.r("mul", "add", "sub")), [x, out[0]], "reduce")
    return out


@op("cumsum", ("seq",), 0.4)
def _cumsum(g: Gen, x: int):
    return g.add(Fn("cumsum", dim=g.r(1, 2)), [x], "cumsum")


@op("matmul", ("seq",), 2)
def _matmul(g: Gen, x: int):
    t = g.vals[x]
    kind = g.r("matmul", "bmm", "einsum")
    t_ = g.p(0.6)  # x @ y.T over the last dims, else x @ y
    want = 2 if t_ else 1

    def fits(u):
        return u.dim() == 3 and u.shape[0] == t.shape[0] and u.shape[want] == t.shape[2]
    cands = g.partners(x, fits)
    if cands and g.p(0.7):
        y = g.rng.choice(cands)
    elif t_:
        y = g.add(nn.Linear(t.shape[2], t.shape[2]), [x], "branch")[0]
    else:
        y = g.add(Fn("transpose", d0=1, d1=2), [x], "branch")[0]
    if kind == "einsum":
        mod = Fn("einsum", eq="bld,bmd->blm" if t_ else "bld,bdm->blm")
    else:
        mod = Fn(kind, t=t_)
    return g.add(mod, [x, y], "matmul")


@op("attention", ("seq",), 2)
def _attention(g: Gen, x: int):
    d = g.vals[x].shape[-1]
    heads, hd = g.r(1, 2, 4), g.r(2, 4)
    scale = g.r(None, None, 0.5)
    return g.add(Attention(d, heads, hd, g.r(d, _width(g)), g.r("sdpa", "sdpa", "manual"),
                           g.p(0.3), scale, g.r("heads", "head_dim"), g.p(0.2)), [x],
                 "attention")


@op("mha", ("seq",), 1.5)
def _mha(g: Gen, x: int):
    t = g.vals[x]
    d = t.shape[-1]
    heads = g.r(*[h for h in (1, 2, 4) if d % h == 0])
    cross = [i for i in g.partners(x, lambda u: u.dim() == 3 and u.shape[0] == t.shape[0])]
    if cross and g.p(0.3):
        y = g.rng.choice(cross)
        kdim = g.vals[y].shape[-1]
        return g.add(MHA(d, heads, g.p(0.7), kdim), [x, y], "mha")
    return g.add(MHA(d, heads, g.p(0.7), None), [x], "mha")


@op("rnn", ("seq",), 1.2)
def _rnn(g: Gen, x: int):
    d = g.vals[x].shape[-1]
    cls = g.r(nn.LSTM, nn.GRU)
    return g.add(RNN(cls(d, g.r(4, 6, 8), num_layers=g.r(1, 1, 2), batch_first=True,
                         bidirectional=g.p(0.3))), [x], "rnn")


@op("clstoken", ("seq",), 1)
def _cls(g: Gen, x: int):
    return g.add(ClsToken(g.vals[x].shape[-1]), [x], "clstoken")


@op("posemb", ("seq", "img"), 1)
def _posemb(g: Gen, x: int):
    t = g.vals[x]
    return g.add(PosEmb((1, *t.shape[1:])), [x], "posemb")


@op("se", ("img",), 1)
def _se(g: Gen, x: int):
    c = g.vals[x].shape[1]
    return g.add(SE(c, max(2, c // 2)), [x], "se")


@op("glu", ("seq", "flat"), 1)
def _glu(g: Gen, x: int):
    if g.vals[x].shape[-1] % 2:
        raise _SkipError
    return g.add(Fn(g.r("glu", "gate")), [x], "glu")


@op("twice", ("img", "seq", "flat"), 1)
def _twice(g: Gen, x: int):
    t = g.vals[x]
    if t.dim() == 4:
        c = t.shape[1]
        layer = g.r(nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1, bias=False))
    else:
        layer = nn.Linear(t.shape[-1], t.shape[-1])
    same = g.partners(x, lambda u: u.shape == t.shape)
    if same and g.p(0.4):  # one layer on two tensors
        return g.add(Twice(layer), [x, g.rng.choice(same)], "twice")
    return g.add(Twice(layer), [x], "twice")


@op("unembed", ("seq",), 1.5)
def _unembed(g: Gen, x: int):
    d = g.vals[x].shape[-1]
    embs = [m for m in g.ops if isinstance(m, nn.Embedding) and m.embedding_dim == d]
    if not embs:
        raise _SkipError
    return g.add(Unembed(g.rng.choice(embs)), [x], "unembed")


@op("bilinear", ("seq", "flat"), 0.7)
def _bilinear(g: Gen, x: int):
    t = g.vals[x]
    cands = g.partners(x, lambda u: u.shape[:-1] == t.shape[:-1])
    if not cands:
        raise _SkipError
    y = g.rng.choice(cands)
    return g.add(Bilinear(t.shape[-1], g.vals[y].shape[-1], _width(g)), [x, y], "bilinear")


@op("repeat", ("img", "seq", "flat"), 1)
def _repeat(g: Gen, x: int):
    t = g.vals[x]
    if t.shape[1] == 1 or g.p(0.2):
        ones = [i for i in range(1, t.dim()) if t.shape[i] == 1]
        if not ones:
            raise _SkipError
        return g.add(Fn("expand", dim=g.rng.choice(ones), n=g.r(2, 4)), [x], "repeat")
    if t.shape[1] > 16:
        raise _SkipError
    return g.add(Fn("repeat", interleave=g.p(0.5)), [x], "repeat")


@op("stack", ("img", "seq", "flat"), 1)
def _stack(g: Gen, x: int):
    t = g.vals[x]
    same = g.partners(x, lambda u: u.shape == t.shape)
    y = g.rng.choice(same) if same and g.p(0.7) else g.branch_same(x)
    how = g.r("flatten", "sum")
    return g.add(Fn("stack", dim=1 if how == "flatten" else g.r(1, 2), how=how), [x, y],
                 "stack")


@op("flip", ("img", "seq", "flat"), 0.7)
def _flip(g: Gen, x: int):
    t = g.vals[x]
    return g.add(Fn(g.r("flip", "roll"), dim=g.rng.randrange(1, t.dim())), [x], "flip")


@op("dropout", ("img", "seq", "flat"), 0.4)
def _dropout(g: Gen, x: int):
    return g.add(Fn("dropout"), [x], "dropout")


@op("index", ("img", "seq", "flat"), 0.5)
def _index(g: Gen, x: int):
    n = g.vals[x].shape[1]
    if n < 2:
        raise _SkipError
    idx = g.rng.sample(range(n), g.rng.randint(1, n))
    return g.add(Fn("index", idx=idx), [x], "index")


#: what an input is read by first, most of the time
STEMS = {"conv", "gconv", "dwconv", "sconv", "linear", "flinear", "embed", "permlinear"}


def _head(g: Gen, x: int, k: int) -> tuple[nn.Module, str]:
    """The output layer for tensor ``x``: the module and the layer's name under it."""
    t = g.vals[x]
    out = g.r(3, 4, 5)
    if t.dim() == 4 and g.p(0.5):
        return nn.Conv2d(t.shape[1], out, 1), f"heads.{k}"
    if t.dim() == 4:
        return Head("gap", nn.Linear(t.shape[1], out)), f"heads.{k}.fc"
    if t.dim() in (2, 3):
        return nn.Linear(t.shape[-1], out), f"heads.{k}"
    return Head("flatten", nn.Linear(t[0].numel(), out)), f"heads.{k}.fc"


INPUTS = {"img": lambda gen: torch.randn(N, 3, 8, 8, generator=gen),
          "img6": lambda gen: torch.randn(N, 4, 6, 6, generator=gen),
          "seq": lambda gen: torch.randn(N, 4, 8, generator=gen),
          "flat": lambda gen: torch.randn(N, 12, generator=gen),
          "ids": lambda gen: torch.randint(0, VOCAB, (N, 4), generator=gen)}


def _kind(t: torch.Tensor) -> str:
    if not t.is_floating_point():
        return "ids"
    return {4: "img", 3: "seq", 2: "flat"}.get(t.dim(), "other")


def _vocab(ops: str | list[str] | None) -> set[str] | None:
    if ops is None or ops == "":
        return None
    names = ops.split(",") if isinstance(ops, str) else list(ops)
    unknown = sorted(set(names) - set(OPS))
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(OPS)}")
    return set(names)


def generate(seed: int, ops: str | list[str] | None = None) -> Net:
    """Net ``seed`` over the vocabulary ``ops`` (names of :data:`OPS`; None: all of them)."""
    allowed = _vocab(ops)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Gen(seed, allowed)
        gen = torch.Generator().manual_seed(seed)
        kinds = [g.r("img", "img", "img6", "seq", "seq", "flat", "ids", "ids")]
        if g.p(0.2):
            kinds.append(g.r("img", "seq", "ids", "flat"))
        if allowed is not None and "embed" not in allowed:
            kinds = [k if k != "ids" else "seq" for k in kinds]
        inputs = tuple(INPUTS[k](gen) for k in kinds)
        g.vals = list(inputs)
        g.lines = [f"t{i}{list(t.shape)}{'' if t.is_floating_point() else ' ids'} = input"
                   for i, t in enumerate(inputs)]
        n_ops = g.rng.randint(4, 24)
        dropped, tries = 0, 0
        while len(g.ops) < n_ops and tries < 4 * n_ops + 20:
            tries += 1
            floats = [i for i, t in enumerate(g.vals) if t.is_floating_point()]
            ids_in = [i for i, t in enumerate(g.vals) if not t.is_floating_point()
                      and not g.used[i]]
            fresh = [i for i in floats if not g.used[i]]
            if ids_in and (not floats or g.p(0.8)):
                x = ids_in[0]
            elif fresh and g.p(0.6):
                x = g.rng.choice(fresh[-3:])
            elif floats:
                x = g.rng.choice(floats[-4:]) if g.p(0.7) else g.rng.choice(floats)
            else:
                break
            kind = _kind(g.vals[x])
            names = [n for n, (ks, _, _) in OPS.items() if kind in ks
                     and (allowed is None or n in allowed)]
            if not names:
                if kind == "ids":  # (no embedding allowed: this input stays unread)
                    g.used[x] += 1
                continue
            if x < len(inputs) and not g.used[x] and g.p(0.8):  # a stem layer first
                names = [n for n in names if n in STEMS] or names
            name = g.rng.choices(names, [OPS[n][1] for n in names])[0]
            mark = (len(g.vals), len(g.ops), len(g.lines), dict(g.used))
            try:
                OPS[name][2](g, x)
            except _SkipError:
                _undo(g, mark)
            except Exception:  # (an op that does not fit: a size that does not divide)
                dropped += 1
                _undo(g, mark)
        floats = [i for i, t in enumerate(g.vals) if t.is_floating_point() and t.dim() >= 2]
        fresh = [i for i in floats if not g.used[i]]
        last = (fresh or floats)[-1]
        heads, outputs, names = [], [], []
        for i in [last] + ([g.rng.choice(fresh[:-1])] if len(fresh) > 1 and g.p(0.5) else []):
            mod, name = _head(g, i, len(heads))
            heads.append(mod)
            outputs.append(i)
            names.append(name)
            g.lines.append(f"out{len(heads) - 1} = {_layer_desc(mod)}(t{i})  [{name}]")
        model = FuzzNet(g.ops, g.wiring, heads, outputs).eval()
    return Net(seed, model, inputs, g.lines, names, sorted(set(g.kinds)), dropped)


def _undo(g: Gen, mark) -> None:
    nv, no, nl, used = mark
    del g.vals[nv:]
    del g.ops[no:]
    del g.wiring[no:]
    del g.kinds[no:]
    del g.lines[nl:]
    g.used = Counter(used)


def build_net(seed: int = 0, ops: str | None = None) -> nn.Module:
    """The model of net ``seed`` (a spec for ``load_model``/``load_pruned``:
    ``benchmarks/fuzz.py:build_net`` with ``{"seed": 3}``)."""
    return generate(seed, ops).model


# --------------------------------------------------------------------------------------------
# The oracle.


class _TimeoutError(BaseException):  # (not an Exception: DepView's handlers must not swallow it)
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(_sig, _frame):
        raise _TimeoutError(f"over {seconds:g} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _run(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        return _flat(model(*inputs))


def _diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    """(max |a - b|, largest |a|) over the outputs; inf when shapes or finiteness differ."""
    diff, scale = 0.0, 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return math.inf, 1.0
        fx, fy = torch.isfinite(x), torch.isfinite(y)
        if not torch.equal(fx, fy):
            return math.inf, 1.0
        if fx.any():
            diff = max(diff, float((x[fx] - y[fx]).abs().max()))
            scale = max(scale, float(x[fx].abs().max()))
    return diff, scale


def masked_copy(model: nn.Module, changes: dict) -> nn.Module:
    """A copy of ``model`` whose parameters are zeroed at every position ``changes`` names
    (``{state_dict key: {dim: removed positions}}``, ``Pruner.changes``): the writers and
    the readers of every removed channel. Buffers stay (a zeroed running variance would make
    a removed channel NaN that its zeroed readers then do not hide)."""
    masked = copy.deepcopy(model)
    params = dict(masked.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for key, dims in changes.items():
            t = params.get(key)
            if t is None:
                continue
            for dim, pos in dims.items():
                t.index_fill_(int(dim), torch.as_tensor(list(pos), dtype=torch.long), 0.0)
    return masked


def _index_selected(original: dict, pruned: dict, kept: dict) -> str:
    """'' when every pruned tensor is the original's at the kept indices (and the tensors
    no cut names are unchanged), else what differs first."""
    if set(original) != set(pruned):
        return (f"state_dict keys differ: {sorted(set(original) ^ set(pruned))[:4]}")
    for key, t in original.items():
        want = t
        for dim, idx in sorted((kept.get(key) or {}).items(), key=lambda kv: int(kv[0])):
            want = want.index_select(int(dim), torch.as_tensor(idx, dtype=torch.long))
        got = pruned[key]
        if want.shape != got.shape:
            return f"{key}: shape {list(got.shape)}, expected {list(want.shape)}"
        if not torch.equal(want, got):
            return f"{key}: values are not the original's at the kept indices"
    return ""


def _stale_attrs(model: nn.Module) -> str:
    """'' when every torch layer's size attributes describe its tensors (a pruned copy's
    ``out_channels``, ``in_features``, ``num_features``, ...), else the first that does
    not."""
    for name, m in model.named_modules():
        checks = []
        if isinstance(m, nn.ConvTranspose2d):
            w = m.weight
            checks = [("in_channels", w.shape[0]), ("out_channels", w.shape[1] * m.groups)]
        elif isinstance(m, nn.Conv1d | nn.Conv2d):
            w = m.weight
            checks = [("out_channels", w.shape[0]), ("in_channels", w.shape[1] * m.groups)]
        elif isinstance(m, nn.Linear):
            checks = [("out_features", m.weight.shape[0]), ("in_features", m.weight.shape[1])]
        elif isinstance(m, nn.Bilinear):
            checks = [("out_features", m.weight.shape[0]), ("in1_features", m.weight.shape[1]),
                      ("in2_features", m.weight.shape[2])]
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            t = m.weight if m.weight is not None else m.running_mean
            if t is not None:
                checks = [("num_features", t.shape[0])]
        elif isinstance(m, nn.GroupNorm) and m.weight is not None:
            checks = [("num_channels", m.weight.shape[0])]
        elif isinstance(m, nn.LayerNorm | nn.RMSNorm) and m.weight is not None:
            checks = [("normalized_shape", tuple(m.weight.shape))]
        elif isinstance(m, nn.Embedding | nn.EmbeddingBag):
            checks = [("num_embeddings", m.weight.shape[0]), ("embedding_dim", m.weight.shape[1])]
        elif isinstance(m, nn.MultiheadAttention):
            e = m.out_proj.weight.shape[0]
            checks = [("embed_dim", e), ("head_dim", e // m.num_heads),
                      ("kdim", m.k_proj_weight.shape[1] if m.k_proj_weight is not None else e)]
        elif isinstance(m, nn.LSTM | nn.GRU):
            checks = [("input_size", m.weight_ih_l0.shape[1]),
                      ("hidden_size", m.weight_hh_l0.shape[1])]
        for attr, want in checks:
            got = getattr(m, attr)
            if (tuple(got) if isinstance(got, list | tuple) else got) != want:
                return f"{name or type(m).__name__}.{attr} = {got}, its tensors say {want}"
    return ""


@dataclass
class Case:
    """One plan checked on one net."""

    label: str
    removed: dict[int, list[int]]
    exact: bool
    groups: list[str] = field(default_factory=list)


@dataclass
class Stats:
    nets: int = 0
    discarded: int = 0
    groups: int = 0
    prunable: int = 0
    plans: int = 0
    refused: int = 0
    exact_checked: int = 0
    marginal: int = 0
    exports: int = 0
    rounds2: int = 0
    timeouts: int = 0
    seconds: float = 0.0
    refusals: Counter = field(default_factory=Counter)
    marginal_seeds: set = field(default_factory=set)
    ops: Counter = field(default_factory=Counter)


class Fuzzer:
    def __init__(self, ops=None, quiet: bool = False, export_p: float = 0.1,
                 seconds: float = 120.0, second_p: float = 0.3):
        self.second_p = second_p
        self.ops = ops
        self.quiet = quiet
        self.export_p = export_p
        self.seconds = seconds
        self.findings: list[dict] = []
        self._seen: dict[tuple, dict] = {}
        self.stats = Stats()

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def finding(self, net: Net, what: str, case: Case | None = None, exc: BaseException | None
                = None, detail: str = "", group: str = "") -> None:
        key = (net.seed, what, _shape_of(detail), _shape_of(str(exc)[:200]) if exc else "")
        if what.startswith("pruned layer's attribute"):
            key = (net.seed, what, detail.partition(".")[0])  # (one per net and layer)
        if key in self._seen:  # (the same failure in another plan of this net)
            self._seen[key]["repeats"] += 1
            return
        f = {"seed": net.seed, "what": what, "ops": net.lines, "repeats": 0,
             "group": group or (", ".join(case.groups) if case else ""),
             "plan": {str(k): v for k, v in case.removed.items()} if case else None,
             "case": case.label if case else None, "detail": detail}
        if exc is not None:
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            f["error"] = f"{type(exc).__name__}: {first}"
            tb = traceback.extract_tb(exc.__traceback__)
            f["traceback"] = [f"{Path(fr.filename).name}:{fr.lineno} {fr.name}"
                              for fr in tb[-6:]]
        self.findings.append(f)
        self._seen[key] = f
        print(f"  FINDING seed {net.seed} [{what}] {f['group']} {f['plan'] or ''} "
                 f"{f.get('error', '')} {detail}"[:400], flush=True)

    # -- one net
    def run_seed(self, seed: int) -> None:
        from viewer import DepViewError

        t0 = time.perf_counter()
        try:
            net = generate(seed, self.ops)
            out = _run(net.model, net.inputs)
            if not all(torch.isfinite(o).all() for o in out):
                raise ValueError("outputs not finite")
        except Exception as exc:
            self.stats.discarded += 1
            self.log(f"seed {seed}: discarded ({type(exc).__name__}: {exc})"[:200])
            return
        self.stats.nets += 1
        self.stats.ops.update(net.ops_used)
        before = {k: v.clone() for k, v in net.model.state_dict().items()}
        try:
            with _time_limit(self.seconds):
                self._check_net(net, out, DepViewError)
        except _TimeoutError as exc:
            self.stats.timeouts += 1
            self.finding(net, "timeout", detail=str(exc))
        after = net.model.state_dict()
        if any(not torch.equal(before[k], after[k]) for k in before):
            self.finding(net, "original model changed")
        dt = time.perf_counter() - t0
        self.stats.seconds += dt
        self.log(f"seed {seed}: {len(net.lines)} lines, {dt:.1f} s")

    def _guard(self, net: Net, what: str, fn, dv_error, case: Case | None = None):
        """``fn()``, or None after a refusal (a DepViewError) or a finding (anything else)."""
        try:
            return fn(), None
        except dv_error as exc:
            msg = str(exc).splitlines()[0] if str(exc) else ""
            self.stats.refused += 1
            self.stats.refusals[f"{what}: {_shape_of(msg)}"] += 1
            return None, msg
        except _TimeoutError:
            raise
        except Exception as exc:
            self.finding(net, f"raw {type(exc).__name__} in {what}", case, exc)
            return None, "raw"

    def _check_net(self, net: Net, out: list[torch.Tensor], dv_error) -> None:
        from viewer import Pruner

        rng = random.Random(net.seed * 7919 + 1)

        def make():
            p = Pruner(net.model, net.inputs, output_layers=net.output_layers)
            sig = _signature(p)  # (validates the groups: reason() of each)
            return p, sig
        (res, _) = self._guard(net, "Pruner", make, dv_error)
        if res is None:
            return
        p, sig = res
        res2, _ = self._guard(net, "Pruner (again)", make, dv_error)
        if res2 is not None and res2[1] != sig:
            diff = next((f"{a} != {b}" for a, b in zip(sig, res2[1], strict=False) if a != b),
                        f"{len(sig)} groups != {len(res2[1])}")
            self.finding(net, "groups differ between two builds", detail=diff[:300])
        self.stats.groups += len(p.groups)
        prunable = [g for g in p.groups if not p.reason(g)]
        self.stats.prunable += len(prunable)
        cases = []
        for g in prunable:
            for _ in range(2 if g.n_units > 3 else 1):
                units = _random_units(g, rng)
                if units:
                    cases.append(Case(f"group {g.id}", {g.id: units}, g.exact, [_gname(g)]))
        if len(prunable) >= 2:
            for _ in range(3):
                some = rng.sample(prunable, rng.randint(2, min(4, len(prunable))))
                removed = {g.id: u for g in some if (u := _random_units(g, rng))}
                if removed:
                    cases.append(Case("combination", removed, all(g.exact for g in some),
                                      [_gname(g) for g in some]))
        if rng.random() < 0.15:  # a plan that breaks multiple_of or min_kept: refused, or works
            odd = [g for g in prunable if g.multiple_of > 1 or g.min_kept > 1]
            if odd:
                g = rng.choice(odd)
                cases.append(Case(f"group {g.id} (unaligned)", {g.id: [0]}, g.exact,
                                  [_gname(g)]))
        cases += self._overlap_cases(net, p, prunable, dv_error)
        by_id = {g.id: g for g in p.groups}
        for label, kw in (("plan(0.5, l1)", dict(ratio=0.5)),
                          ("plan(0.3, random, global)", dict(ratio=0.3, importance="random",
                                                            global_=True, seed=net.seed))):
            plan, _ = self._guard(net, label, lambda kw=kw: p.plan(**kw), dv_error)
            if plan is not None and plan.removed:
                self._guard(net, f"preview of {label}", lambda plan=plan: p.preview(plan),
                            dv_error)
                gs = [by_id[i] for i in plan.removed]
                cases.append(Case(label, dict(plan.removed), all(g.exact for g in gs),
                                  [_gname(g) for g in gs]))
        export = rng.randrange(len(cases)) if cases and rng.random() < self.export_p else -1
        for i, case in enumerate(cases):
            self._check_case(net, p, case, out, dv_error, i == export)

    def _overlap_cases(self, net: Net, p, prunable: list, dv_error) -> list[Case]:
        """Plans of two prunable groups that cut one tensor position (each removing the
        units that hold it): such groups may be fine (two dims flattened into one are cut
        by both), or not (a plan of both cuts it once, where each expected its own), which
        the checks of these plans tell."""
        owner: dict[tuple, tuple[int, int]] = {}
        pairs: dict[tuple[int, int], tuple[int, int]] = {}
        for g in prunable:
            if g.n_units > 64:
                continue
            for u in range(g.n_units):
                cuts, _ = self._guard(net, "cuts", lambda g=g, u=u: p.cuts(g, [u]), dv_error)
                for c in cuts or ():
                    for i in c.positions:
                        o = owner.setdefault((c.key, c.dim, int(i)), (g.id, u))
                        if o[0] != g.id:
                            pairs.setdefault((o[0], g.id), (o[1], u))
        by_id = {g.id: g for g in prunable}
        cases = []
        for (a, b), (ua, ub) in list(pairs.items())[:2]:
            removed = {gid: units for gid, u in ((a, ua), (b, ub))
                       if (units := _units_with(by_id[gid], u))}
            if len(removed) == 2:
                cases.append(Case(f"overlap of #{a} and #{b}", removed,
                                  by_id[a].exact and by_id[b].exact,
                                  [_gname(by_id[a]), _gname(by_id[b])]))
        return cases

    def _check_case(self, net: Net, p, case: Case, out: list[torch.Tensor], dv_error,
                    export: bool) -> None:
        from viewer.core.plan import Plan

        self.stats.plans += 1
        plan = Plan({k: sorted(v) for k, v in case.removed.items()})
        pruned, why = self._guard(net, "apply", lambda: p.apply(plan), dv_error, case)
        if pruned is None:
            if why != "raw" and case.label.startswith("plan("):  # its own plan, refused
                self.finding(net, "apply refuses Pruner.plan's plan", case, detail=why)
            return
        try:
            got = _run(pruned, net.inputs)
        except Exception as exc:
            self.finding(net, "pruned model fails", case, exc)
            return
        if len(got) != len(out) or any(a.shape != b.shape for a, b in zip(got, out,
                                                                          strict=False)):
            self.finding(net, "output shapes changed", case, detail=str(
                [list(t.shape) for t in got]) + " != " + str([list(t.shape) for t in out]))
            return
        stale = _stale_attrs(pruned)
        if stale:
            self.finding(net, "pruned layer's attribute is stale", case, detail=stale)
        kept, _ = self._guard(net, "kept", lambda: p.kept(plan), dv_error, case)
        changes, _ = self._guard(net, "changes", lambda: p.changes(plan), dv_error, case)
        if kept is not None:
            bad = _index_selected(net.model.state_dict(), pruned.state_dict(), kept)
            if bad:
                self.finding(net, "pruned tensor is not an index-select", case, detail=bad)
        v, _ = self._guard(net, "verify", lambda: p.verify(pruned, plan), dv_error, case)
        if v is not None:
            if not v.get("forward") or not v.get("shapes_kept"):
                self.finding(net, "verify: forward or shapes failed", case,
                             detail=str({k: v.get(k) for k in ("forward", "shapes_kept",
                                                               "error")}))
            me = v.get("masked_equivalence", {})
            if case.exact and me.get("ok") is not True:
                self.finding(net, "verify: masked equivalence not ok on exact groups", case,
                             detail=json.dumps(me, default=str)[:300])
            part = me.get("exact_groups")
            if not case.exact and isinstance(part, dict) and part.get("ok") is False:
                self.finding(net, "verify: exact_groups not ok", case,
                             detail=json.dumps(part, default=str)[:300])
        if case.exact and changes is not None:
            self.stats.exact_checked += 1
            diff, scale = _diff(_run(masked_copy(net.model, changes), net.inputs), got)
            # equal: within verify's own tolerance; different: over 1% of the largest output
            # (and over 1e-4, float32's noise on the small sums); marginal in between
            if diff > max(1e-2 * scale, 1e-4):
                ok = (v or {}).get("masked_equivalence", {}).get("ok")
                self.finding(net, "oracle: masked original != pruned on exact groups", case,
                             detail=f"max |diff| {diff:.3g} (largest output {scale:.3g}); "
                                    f"verify ok={ok}")
            elif diff > 1e-4 * max(1.0, scale):
                self.stats.marginal += 1
                self.stats.marginal_seeds.add(net.seed)
            elif v is not None and v.get("masked_equivalence", {}).get("ok") is False:
                self.finding(net, "verify says not ok, the oracle says equal", case,
                             detail=json.dumps(v["masked_equivalence"], default=str)[:300])
        if export:
            self._check_export(net, p, plan, pruned, got, case, dv_error)
        if case.label.startswith("plan(0.5") and random.Random(net.seed).random() < \
                self.second_p:
            self._check_round2(net, pruned, got, case, dv_error)

    def _check_round2(self, net: Net, pruned: nn.Module, got: list[torch.Tensor], case: Case,
                      dv_error) -> None:
        """A second round: the pruned copy's own Pruner, its plan at 0.5, applied and
        verified (exact plans: masked equivalence ok)."""
        from viewer import Pruner

        self.stats.rounds2 += 1
        p2, _ = self._guard(net, "Pruner (round 2)", lambda: Pruner(
            pruned, net.inputs, output_layers=net.output_layers), dv_error, case)
        if p2 is None:
            return
        plan2, _ = self._guard(net, "plan (round 2)", lambda: p2.plan(0.5), dv_error, case)
        if plan2 is None or not plan2.removed:
            return
        by_id = {g.id: g for g in p2.groups}
        case2 = Case(f"round 2 after {case.label}", dict(plan2.removed),
                     all(by_id[i].exact for i in plan2.removed),
                     [_gname(by_id[i]) for i in plan2.removed])
        pruned2, why = self._guard(net, "apply (round 2)", lambda: p2.apply(plan2), dv_error,
                                   case2)
        if pruned2 is None:
            if why != "raw":
                self.finding(net, "apply refuses Pruner.plan's plan", case2, detail=why)
            return
        v, _ = self._guard(net, "verify (round 2)", lambda: p2.verify(pruned2, plan2),
                           dv_error, case2)
        if v is None:
            return
        me = v.get("masked_equivalence", {})
        if not v.get("forward") or not v.get("shapes_kept"):
            self.finding(net, "verify: forward or shapes failed", case2,
                         detail=str(v.get("error")))
        elif case2.exact and me.get("ok") is not True:
            self.finding(net, "verify: masked equivalence not ok on exact groups", case2,
                         detail=json.dumps(me, default=str)[:300])

    def _check_export(self, net, p, plan, pruned, got, case, dv_error) -> None:
        import viewer
        from viewer.core.spec import describe_inputs

        self.stats.exports += 1
        with tempfile.TemporaryDirectory() as tmp:
            source = {"spec": f"{Path(__file__).resolve()}:build_net",
                      "kwargs": {"seed": net.seed, "ops": ",".join(sorted(self.ops))
                                 if self.ops else None},
                      "inputs": describe_inputs(net.inputs), "weights": None, "seed": 0,
                      "file": str(Path(__file__).resolve())}
            d = Path(tmp) / "out"
            res, _ = self._guard(net, "export_dir", lambda: viewer.export_dir(
                p, plan, pruned, d, source, pt2=False), dv_error, case)
            if res is None:
                return
            model, why = self._guard(net, "load_pruned", lambda: viewer.load_pruned(d),
                                     dv_error, case)
            if model is None:
                if why != "raw":
                    self.finding(net, "load_pruned refuses an export", case, detail=why)
                return
            try:
                again = _run(model, net.inputs)
            except Exception as exc:
                self.finding(net, "reloaded model fails", case, exc)
                return
            if len(again) != len(got) or not all(torch.equal(a, b) for a, b in zip(
                    again, got, strict=False)):
                self.finding(net, "reload is not bit-exact", case,
                             detail=f"max |diff| {_diff(again, got)[0]:.3g}")


def _shape_of(msg: str) -> str:
    """A refusal's message with its numbers and quoted names blanked (to count kinds)."""
    import re

    msg = re.sub(r"'[^']*'", "'…'", msg)
    return re.sub(r"\d+", "N", msg)[:110]


def _gname(g) -> str:
    return f"#{g.id} {g.root}{'' if g.exact else ' (inexact)'} n={g.n_units}" + \
        (f" multiple_of={g.multiple_of}" if g.multiple_of > 1 else "") + \
        (f" min_kept={g.min_kept}" if g.min_kept > 1 else "")


def _signature(p) -> list[tuple]:
    out = []
    for g in p.groups:
        why = p.reason(g)
        members = tuple((m.node_name, m.side, m.dim, m.port, tuple(int(i) for i in m.pos),
                         tuple(int(i) for i in m.unit)) for m in g.members)
        out.append((g.id, g.root, g.root_side, g.n_units, g.exact, tuple(g.stats_notes),
                    g.multiple_of, g.min_kept, why, members))
    return out


def _units_with(g, u: int) -> list[int]:
    """The fewest units of ``g`` a plan may remove that hold unit ``u`` ([] if none)."""
    m = max(1, g.multiple_of)
    start = min(u - u % m, g.n_units - m)
    units = list(range(start, start + m))
    return units if g.n_units - m >= max(1, g.min_kept) else []


def _random_units(g, rng: random.Random) -> list[int]:
    """A random non-empty strict subset of ``g``'s units, removing a multiple of
    ``multiple_of`` and keeping at least ``min_kept`` ([] when none fits)."""
    m, n = max(1, g.multiple_of), g.n_units
    keep_least = max(1, g.min_kept)
    counts = [k for k in range(m, n - keep_least + 1, m)]
    if not counts:
        return []
    k = rng.choice(counts) if rng.random() < 0.7 else counts[0]
    return sorted(rng.sample(range(n), k))


# --------------------------------------------------------------------------------------------


def _seeds(args) -> list[int]:
    if args.seeds:
        out = []
        for part in args.seeds.split(","):
            a, _, b = part.partition("-")
            out += list(range(int(a), int(b or a) + 1))
        return out
    return list(range(args.start, args.start + args.n))


def summary(fz: Fuzzer, seeds: list[int]) -> str:
    s = fz.stats
    lines = [f"{len(seeds)} seeds: {s.nets} nets checked, {s.discarded} discarded (forward "
             f"failed), {s.groups} groups ({s.prunable} prunable), {s.plans} plans "
             f"({s.exact_checked} exact ones checked by the oracle, {s.marginal} marginal), "
             f"{s.refused} refusals (DepViewError), {s.exports} exports, {s.rounds2} second "
             f"rounds, {s.timeouts} "
             f"timeouts, {s.seconds:.0f} s"]
    if s.marginal_seeds:
        lines.append(f"marginal masked differences in seeds "
                     f"{', '.join(map(str, sorted(s.marginal_seeds)[:20]))}")
    if s.refusals:
        lines += ["", "refusals by kind:"]
        lines += [f"  {n:4d}  {k}" for k, n in s.refusals.most_common(12)]
    by_what = Counter(f["what"] for f in fz.findings)
    lines += ["", "| what | findings | seeds |", "|---|---|---|"]
    for what, n in by_what.most_common():
        seeds_of = sorted({f["seed"] for f in fz.findings if f["what"] == what})
        shown = ", ".join(map(str, seeds_of[:8])) + (", ..." if len(seeds_of) > 8 else "")
        lines.append(f"| {what} | {n} | {shown} |")
    lines += ["", f"FINDINGS: {len(fz.findings)} (in {len({f['seed'] for f in fz.findings})} "
                  f"nets)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", help="seeds to run: 0-99, or 3,5,10-12")
    ap.add_argument("--n", type=int, default=20, help="how many seeds (without --seeds)")
    ap.add_argument("--start", type=int, default=0, help="the first seed (without --seeds)")
    ap.add_argument("--ops", help="comma-separated op names to draw from (default: all; "
                                  "--list-ops lists them)")
    ap.add_argument("--json", metavar="PATH", help="write the findings and counts as JSON")
    ap.add_argument("--quiet", action="store_true", help="print only findings and the summary")
    ap.add_argument("--export-p", type=float, default=0.1,
                    help="chance that a net's plan is exported and reloaded (default 0.1)")
    ap.add_argument("--second-p", type=float, default=0.3,
                    help="chance that a net's plan at 0.5 is followed by a second round "
                         "(default 0.3)")
    ap.add_argument("--seconds", type=float, default=120,
                    help="time limit per net; a net past it is a finding (0: none)")
    ap.add_argument("--show", type=int, metavar="SEED", help="print one net's op list and stop")
    ap.add_argument("--list-ops", action="store_true", help="print the vocabulary and stop")
    args = ap.parse_args(argv)
    if args.list_ops:
        for name, (kinds, w, _) in OPS.items():
            print(f"{name:10s} on {'/'.join(kinds):14s} weight {w:g}")
        return 0
    try:
        ops = _vocab(args.ops)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.show is not None:
        net = generate(args.show, ops)
        print("\n".join(net.lines))
        print(f"output_layers={net.output_layers}")
        return 0
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    seeds = _seeds(args)
    fz = Fuzzer(sorted(ops) if ops else None, args.quiet, args.export_p, args.seconds,
                args.second_p)
    for k, seed in enumerate(seeds):
        try:
            fz.run_seed(seed)
        except Exception as exc:  # (the fuzzer's own bug: say so, go on)
            print(f"seed {seed}: fuzzer error {type(exc).__name__}: {exc}", file=sys.stderr)
            traceback.print_exc()
        if args.json and (k % 20 == 19 or k == len(seeds) - 1):  # (a killed run keeps most)
            _write_json(args.json, fz, seeds[:k + 1], ops)
    print(summary(fz, seeds), flush=True)
    return 0


def _write_json(path: str, fz: Fuzzer, seeds: list[int], ops) -> None:
    s = fz.stats
    Path(path).write_text(json.dumps({
        "seeds": seeds, "ops": ops and sorted(ops),
        "counts": {k: getattr(s, k) for k in ("nets", "discarded", "groups", "prunable",
                                              "plans", "refused", "exact_checked", "marginal",
                                              "exports", "rounds2", "timeouts")},
        "refusals": dict(s.refusals), "ops_used": dict(s.ops),
        "marginal_seeds": sorted(s.marginal_seeds),
        "findings": fz.findings}, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
