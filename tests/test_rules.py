"""Rules: how units cross each op type (viewer/core/rules.py), called as the stateless
functions they are, on nodes of real traces."""

import numpy as np
import pytest
import torch
from torch import nn

from viewer.core.optypes import OpType
from viewer.core.rules import RULES, dim_groups, map_reshape
from viewer.core.trace import build_graph


def test_dim_groups():
    assert dim_groups((2, 12, 5), (2, 3, 4, 5)) == [([0], [0]), ([1], [1, 2]), ([2], [3])]
    assert dim_groups((1, 64, 4, 4), (1, 1024)) == [([0], [0]), ([1, 2, 3], [1])]


def test_map_reshape_flatten_gives_hw_blocks():
    d, u, p = map_reshape((1, 4, 2, 3), (1, 24), 1, np.array([0, 2]), np.array([1, 3]))
    assert d == 1
    assert p.tolist() == [6, 7, 8, 9, 10, 11, 18, 19, 20, 21, 22, 23]
    assert u.tolist() == [0] * 6 + [2] * 6


def test_map_reshape_head_split_uses_inferred_dim():
    # D=8 -> (H=2, d=4) with H left to torch (-1): channels of one head land on one unit slot
    d, u, p = map_reshape((1, 5, 8), (1, 5, 2, 4), 2, np.arange(8), np.arange(8), inferred=2)
    assert d == 2 and p.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


class CatThenSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)  # 4 + 6 channels
        p, q = torch.split(y, [7, 3], 1)
        return p.sum() + q.sum()


def _flows(node, side, port, dim, pos):
    pos = np.asarray(pos)
    units = np.arange(len(pos))
    out = RULES[node.op_type](None, node, side, port, dim, units, pos, None)
    return [(f.side, f.port, f.dim, f.units.tolist(), f.pos.tolist()) for f in out]


def test_concat_rule_shifts_positions_by_each_inputs_offset():
    g = build_graph(CatThenSplit().eval(), (torch.randn(1, 3, 2, 2),))
    cat = next(n for n in g.nodes if n.op_type is OpType.CONCAT)
    assert cat.meta.offsets == (0, 4)
    # channels 1 and 5 of b's output are channels 5 and 9 of the concat
    assert _flows(cat, "in", 1, 1, [1, 5]) == [("out", 0, 1, [0, 1], [5, 9])]
    # backward: concat channels 3 and 4 belong to a (3) and b (0)
    assert _flows(cat, "out", 0, 1, [3, 4]) == [("in", 0, 1, [0], [3]), ("in", 1, 1, [1], [0])]
    # another dim passes through to the output and to the other input unchanged
    assert _flows(cat, "in", 0, 2, [1]) == [("out", 0, 2, [0], [1]), ("in", 1, 2, [0], [1])]


def test_split_rule_takes_each_part_its_own_range():
    g = build_graph(CatThenSplit().eval(), (torch.randn(1, 3, 2, 2),))
    split = next(n for n in g.nodes if n.op_type is OpType.SPLIT)
    assert split.meta.sizes == (7, 3)
    # input channels 6 and 7 fall in part 0 (6) and part 1 (0)
    assert _flows(split, "in", 0, 1, [6, 7]) == [("out", 0, 1, [0], [6]),
                                                   ("out", 1, 1, [1], [0])]
    # backward from part 1: its channel 2 is input channel 9
    assert _flows(split, "out", 1, 1, [2]) == [("in", 0, 1, [0], [9])]


def test_whole_copies_of_a_tiled_dim():
    from viewer.core.rules import _whole_copies

    a = np.array
    assert _whole_copies(a([0, 0, 1, 1]), a([0, 1, 2, 3]), 2)  # copy 0 unit 0, copy 1 unit 1
    assert _whole_copies(a([5, 5]), a([4, 5]), 2)  # copy 2 only
    assert not _whole_copies(a([0, 1, 0, 1]), a([0, 1, 2, 3]), 2)  # copies split
    assert not _whole_copies(a([0]), a([0]), 2)  # half a copy


class _MyLinear(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i))

    def forward(self, x):
        return x @ self.weight.t()


class _TwoOfThem(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.w, self.b = _MyLinear(8, 32), nn.Parameter(torch.ones(32)), _MyLinear(32, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x) * self.w))


def test_a_custom_layer_wrongly_registered_as_passthrough_blocks_its_groups_saying_so():
    # passthrough=True says output channel i is input channel i: of an 8 -> 32 layer that
    # cannot be, and its groups ran past the widths (IndexError inside all_groups)
    from viewer.core.groups import all_groups
    from viewer.core.optypes import register_layer, unregister_layer

    register_layer(_MyLinear, in_dims={"weight": 1}, out_dims={"weight": 0},
                   in_channel_dim=-1, out_channel_dim=-1, passthrough=True)
    try:
        groups = all_groups(build_graph(_TwoOfThem(), (torch.randn(3, 8),)))
    finally:
        unregister_layer(_MyLinear)
    a = next(g for g in groups if g.root == "a")
    assert "'a' is registered with passthrough=True (its output channel i is its input " \
           "channel i), but its input has 8 channels and its output 32" in a.reason


def _prune_units_025(model, inputs, root, exact, output_layers=()):
    """The group rooted at ``root`` of ``model`` (seeded, eval), checked prunable with the
    ``exact`` flag expected, and the masked-equivalence verdict of removing its units 0, 2
    and 5."""
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(model.eval(), inputs, output_layers=list(output_layers))
    g = next(grp for grp in p.groups if grp.root == root)
    assert g.prunable and g.exact == exact, g.stats_notes
    plan = Plan({g.id: [0, 2, 5]})
    return g, p.verify(p.apply(plan), plan)["masked_equivalence"]


class _SumAfter(nn.Module):
    """A conv's channels, summed over after an op: the sum is exact only if the op keeps a
    channel the masked original zeroes at zero."""

    OPS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "exp": torch.exp,
           "square": lambda y: y ** 2, "two_to_the": lambda y: 2 ** y,
           "plus_one": lambda y: y + 1, "times_param": None, "linear_on_w": None,
           "linear_on_w_no_bias": None,
           "pad_one": lambda y: nn.functional.pad(y, (1, 1), value=1.0)}

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.c, self.d = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.lw = nn.Linear(5, 5, bias=op != "linear_on_w_no_bias")
        self.s = nn.Parameter(torch.randn(8, 1, 1))

    def forward(self, x):
        y = self.c(x)
        if self.op == "times_param":
            y = y * self.s
        elif self.op.startswith("linear_on_w"):  # a Linear over W: its bias reaches every channel
            y = self.lw(y)
        else:
            y = self.OPS[self.op](y)
        return self.d(y).mean((2, 3), keepdim=True) * y.sum(1, keepdim=True).mean(
            (2, 3), keepdim=True)


@pytest.mark.parametrize("op, culprit", [
    ("relu", None), ("square", None), ("times_param", None), ("linear_on_w_no_bias", None),
    ("sigmoid", "sigmoid"), ("exp", "exp"), ("two_to_the", "pow"), ("plus_one", "add"),
    ("linear_on_w", "lw"), ("pad_one", "pad"),
])
def test_a_sum_over_channels_is_exact_only_if_the_ops_before_it_keep_zero(op, culprit):
    # the masked original zeroes the producer's weights, not its activations: sigmoid(0) =
    # 0.5 (a Linear's bias over W, 2 ** 0, 0 + 1, a pad filled with 1) left each removed
    # channel adding to the sum, the group said exact and masked equivalence failed
    g, v = _prune_units_025(_SumAfter(op), (torch.randn(2, 3, 4, 5),), "c", culprit is None)
    if culprit is None:
        assert v["ok"], v
    else:
        assert g.stats_notes == [f"'sum' (sum) reduces over pruned channels that '{culprit}' "
                                 "does not keep at zero (it maps 0 to another value), so a "
                                 "removed channel still counts there"]
        assert "does not keep at zero" in v["skipped"], v


class _Contraction(nn.Module):
    """Two activations made from one input, contracted over their channels: a matmul, an
    einsum, sdpa's scores (scale given), a distance. The sum of products is exact only if a
    factor the masked original zeroes is zero (both, for a distance)."""

    def __init__(self, form, left, right):
        super().__init__()
        self.form, self.left, self.right = form, left, right
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)
        self.o = nn.Linear(4, 3)

    def forward(self, x):  # (N, L, 8)
        f = {"relu": torch.relu, "sigmoid": torch.sigmoid, "id": lambda y: y}
        q, k = f[self.left](self.q(x)), f[self.right](self.k(x))
        if self.form == "matmul":
            a = q @ k.transpose(-1, -2)
        elif self.form == "einsum":
            a = torch.einsum("nld,nmd->nlm", q, k)
        elif self.form == "cdist":
            a = torch.cdist(q, k)
        else:
            a = nn.functional.scaled_dot_product_attention(q, k, self.v(x), scale=0.3)
        return self.o(a)


@pytest.mark.parametrize("form, left, right, culprits", [
    ("matmul", "id", "id", None), ("matmul", "relu", "sigmoid", None),
    ("matmul", "sigmoid", "sigmoid", ["sigmoid", "sigmoid_1"]),
    ("einsum", "sigmoid", "relu", None),
    ("einsum", "sigmoid", "sigmoid", ["sigmoid", "sigmoid_1"]),
    ("sdpa", "id", "id", None), ("sdpa", "sigmoid", "sigmoid", ["sigmoid", "sigmoid_1"]),
    ("cdist", "relu", "id", None), ("cdist", "relu", "sigmoid", ["sigmoid"]),
])
def test_a_contraction_of_two_activations_is_exact_only_if_one_factor_keeps_zero(
        form, left, right, culprits):
    # sigmoid(q) @ sigmoid(k).T over removed channels adds 0.5 * 0.5 per removed channel in
    # the masked original, which zeroes the producers' weights: the group said exact and
    # masked equivalence failed (a distance needs both sides zero: |0 - 0.5| counts)
    g, v = _prune_units_025(_Contraction(form, left, right), (torch.randn(2, 4, 8),), "q",
                            culprits is None, ["o"])
    if culprits is None:
        assert v["ok"], v
        return
    target = {"matmul": "matmul", "einsum": "einsum", "cdist": "cdist",
              "sdpa": "scaled_dot_product_attention"}[form]
    names = " and ".join(f"'{c}'" for c in culprits)
    verb = "do not keep at zero (they map" if len(culprits) > 1 else \
        "does not keep at zero (it maps"
    sums = "sums over" if form == "cdist" else "sums products over"
    assert g.stats_notes == [f"'{target}' ({target}) {sums} pruned channels that "
                             f"{names} {verb} 0 to another value), so a removed channel "
                             "still counts there"], g.stats_notes
    assert "keep at zero" in v["skipped"], v


class _TokensOf(nn.Module):
    """A conv's 16 channels made 16 tokens of width 8, then read by a GRU as its time steps
    or by an nn.MultiheadAttention as its queries or keys (the other side: 2 learnt
    tokens), with or without a key padding mask."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.other = nn.Parameter(torch.randn(1, 2, 8))
        self.head = nn.Linear(16 * 8 if how in ("gru", "query") else 2 * 8, 3)

    def forward(self, x):
        t = self.conv(x).sum(3)  # (N, 16, 8)
        o = self.other.expand(x.shape[0], -1, -1)
        if self.how == "gru":
            y = self.gru(t)[0]
        elif self.how == "query":
            y = self.mha(t, o, o, need_weights=False)[0]
        elif self.how == "key":
            y = self.mha(o, t, t, need_weights=False)[0]
        else:  # (a mask over the keys)
            y = self.mha(o, t, t, key_padding_mask=t[:, :, 0] > 5, need_weights=False)[0]
        return self.head(y.flatten(1))


@pytest.mark.parametrize("how, note", [
    ("gru", "'gru' carries its state across pruned time steps"),
    ("query", None),
    ("key", "'mha' normalises its attention softmax over the key positions, which are "
            "pruned"),
])
def test_channels_made_time_steps_or_tokens_follow_through_the_rnn_or_attention(how, note):
    # the group ended at the GRU's or the MHA's input (their rules looked at the features
    # only): the GRU's outputs kept 16 steps for a head reading 16 (the pruned copy failed),
    # and keys made of removed channels were exact (masked equivalence failed)
    g, v = _prune_units_025(_TokensOf(how), (torch.randn(2, 3, 8, 8),), "conv", note is None)
    assert ("head", "in", 1) in {(m.node_name, m.side, m.dim) for m in g.members} or \
        how == "key"
    if note is None:
        assert v["ok"], v
    else:
        assert g.stats_notes == [note] and "inexact" in v["skipped"], (g.stats_notes, v)


def test_a_mask_over_tokens_the_group_prunes_blocks_it():
    from viewer.core.groups import all_groups

    groups = all_groups(build_graph(_TokensOf("masked").eval(), (torch.randn(2, 3, 8, 8),)))
    g = next(grp for grp in groups if grp.root == "conv")
    assert "'mha' takes an attention mask coupled to the group" in g.reasons or \
        "'mha' takes an attention mask over the pruned positions" in g.reasons, g.reasons


class _KeyTokens(nn.Module):
    """Tokens made by a Linear over the sequence (a token mixer), then attended to: pruning
    its outputs prunes the key positions a softmax normalises over."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.tok = nn.Linear(5, 4)
        self.q, self.k, self.v = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.head = nn.Linear(24, 3)

    def forward(self, x):  # (N, D, L)
        t = self.tok(x).transpose(1, 2)
        q, k, v = self.q(t), self.k(t), self.v(t)
        if self.mode == "sdpa":
            o = nn.functional.scaled_dot_product_attention(q, k, v, scale=0.5)
        else:
            o = torch.softmax(q @ k.transpose(-2, -1) * 0.5, -1) @ v
        return self.head((t + o).flatten(1))


@pytest.mark.parametrize("mode, note", [
    ("sdpa", "'scaled_dot_product_attention' normalises its attention softmax over the key "
             "positions, which are pruned"),
    ("matmul", "'softmax' (softmax) reduces over pruned channels"),
])
def test_pruning_the_keys_a_softmax_normalises_over_is_inexact(mode, note):
    # sdpa's rule took k/v's sequence dim as exact, and the softmax reached from its output
    # (probs @ v) never said it normalises over the pruned positions: masked equivalence
    # failed on a group marked exact
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(_KeyTokens(mode).eval(), (torch.randn(2, 6, 5),))
    g = next(grp for grp in p.groups if grp.root == "tok")
    assert not g.exact and note in g.stats_notes, g.stats_notes
    # the query projection's channels (the softmax's other dims) stay exact
    assert next(grp for grp in p.groups if grp.root == "v").exact
