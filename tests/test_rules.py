"""Rules: how units cross each op type (viewer/core/rules.py), called as the stateless
functions they are, on nodes of real traces."""

import numpy as np
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
