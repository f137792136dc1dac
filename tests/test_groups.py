import copy
import math

import numpy as np
import pytest
import torch
from conftest import ALL_DEMOS
from torch import nn
from torch.nn import functional as F

from viewer.core.errors import DepViewError
from viewer.core.groups import all_groups, group_of, split_blocked
from viewer.core.optypes import OpType
from viewer.core.trace import build_graph


class _Parts(nn.Module):
    """A projection viewed into heads and taken apart: by heads (``split`` or, per head,
    ``unflatten(-2, (heads, 3)).unbind(-2)``), or along the sequence (no parts)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.proj = nn.Linear(8, 24)

    def forward(self, x):
        y = self.proj(x).view(1, 5, -1, 4)  # 6 heads of 4
        if self.how == "split":
            a, b, c = y.split([4, 1, 1], dim=2)
        elif self.how == "unbind":
            a, b, c = y.unflatten(2, (2, 3)).unbind(3)
        else:
            a, b, c = y.split([3, 1, 1], dim=1)
        return a.sum() + b.sum() + c.sum()


@pytest.mark.parametrize("how,parts", [
    ("split", [range(16), range(16, 20), range(20, 24)]),
    # head h holds (q, k, v) of 4 each: q is positions 0-3 and 12-15
    ("unbind", [[*range(0, 4), *range(12, 16)], [*range(4, 8), *range(16, 20)],
                [*range(8, 12), *range(20, 24)]]),
    ("sequence", []),  # each part holds every channel: nothing to take apart
])
def test_root_parts_are_the_channels_each_output_of_the_split_holds(how, parts):
    from viewer.core.groups import _root_parts

    g = build_graph(_Parts(how), (torch.randn(1, 5, 8),))
    root = g.node("proj")
    assert [p.tolist() for p in _root_parts(g, root, 2)] == [list(r) for r in parts]

def test_resnet_stem_group_spans_residual_stream(demo_pruner):
    _, p = demo_pruner("resnet")
    g = group_of(p.graph, "conv1")
    names = {(m.node_name, m.side) for m in g.members}
    # the stem's channels are the residual stream of stage 1: both blocks' adds couple them
    assert {("conv1", "out"), ("bn1", "out"), ("layer1.0.conv1", "in"), ("layer1.0.bn2", "out"),
            ("layer1.0.conv2", "out"), ("layer1.1.conv2", "out"),
            ("layer2.0.downsample.0", "in")} <= names
    assert g.prunable and g.n_units == 16


def test_densenet_concat_offsets(demo_pruner):
    _, p = demo_pruner("densenet")
    g = group_of(p.graph, "features.0.0.conv2")  # growth 8, appended after 16 stem channels
    m = g.member("features.0.1.norm1", "in")
    assert m.indices(range(8)).tolist() == list(range(16, 24))
    later = g.member("features.0.2.norm1", "in")
    assert later.indices([0, 7]).tolist() == [16, 23]


def test_flatten_maps_channel_to_hw_features(demo_pruner):
    _, p = demo_pruner("cnn")
    g = group_of(p.graph, "features.8")
    fc1 = g.member("fc1", "in")
    hw = p.graph.node("flatten").in_shapes[0][2] * p.graph.node("flatten").in_shapes[0][3]
    assert fc1.indices([3]).tolist() == list(range(3 * hw, 4 * hw))


def test_in_side_group_is_the_producers_group(demo_pruner):
    _, p = demo_pruner("cnn")
    assert {m.node_name for m in group_of(p.graph, "fc1", "in").members} == \
        {m.node_name for m in group_of(p.graph, "features.8").members}


def test_llama_gqa_heads_fold_to_kv_groups(demo_pruner):
    _, p = demo_pruner("llama")
    g = group_of(p.graph, "layers.0.attn.q_proj")
    hd = 64 // 8
    assert g.n_units == 4 and g.prunable  # 4 kv heads, each with 2 query heads
    q = g.member("layers.0.attn.q_proj", "out")
    k = g.member("layers.0.attn.k_proj", "out")
    assert q.indices([1]).tolist() == list(range(2 * hd, 4 * hd))  # query heads 2 and 3
    assert k.indices([1]).tolist() == list(range(hd, 2 * hd))  # kv head 1
    assert g.member("layers.0.attn.o_proj", "in").indices([1]).tolist() == q.indices([1]).tolist()


def test_shufflenet_channel_shuffle_couples_both_halves(demo_pruner):
    _, p = demo_pruner("shufflenet")
    g = group_of(p.graph, "stages.0.0.branch1.2")
    assert g.prunable
    # a unit removes one channel from each branch of the concat (the shuffle's two rows)
    cat = p.graph.node("stages.0.0.cat")
    pos, unit = g.tensors[(cat.id, 0, 1)]
    sizes = cat.meta.sizes
    for u in np.unique(unit):
        owned = pos[unit == u]
        assert (owned < sizes[0]).sum() == (owned >= sizes[0]).sum()


def test_mha_residual_stream_is_prunable_in_multiples_of_heads(demo_pruner):
    _, p = demo_pruner("vit")
    g = group_of(p.graph, "patch_embed")
    assert g.prunable and g.multiple_of == 4 and not g.exact
    assert g.multiple_why == ["attention heads"]
    assert g.to_dict()["multiple_why"] == "attention heads"
    assert {m.node_name for m in g.members} >= {"cls_token", "pos_embed", "blocks.0.gamma1",
                                               "blocks.0.attn", "blocks.1.norm2", "head"}
    assert {m.side for m in g.members if m.node_name == "blocks.0.attn"} == {"in", "out"}


def test_output_layer_group_is_not_prunable(demo_pruner):
    _, p = demo_pruner("resnet")
    g = group_of(p.graph, "fc")
    assert not g.prunable and "model output" in g.reason


def test_all_groups_partition_and_are_deterministic(demo_pruner):
    # (swin is left out on purpose: its attention has two axes over one tensor, whole heads
    # and head dims, and each gets its own, overlapping group)
    for name in ("densenet", "shufflenet", "llama", "mobilenet", "unet"):
        _, p = demo_pruner(name)
        seen = {}
        for g in p.groups:
            for key, (pos, _) in g.tensors.items():
                arr = seen.setdefault(key, np.zeros(p.graph.nodes[key[0]].out_shapes[key[1]]
                                                    [key[2]], int))
                assert not arr[pos].any(), f"{name}: {key} in two groups"
                arr[pos] = 1
        again = all_groups(p.graph)
        assert [(g.root, g.n_units, len(g.members)) for g in again] == \
            [(g.root, g.n_units, len(g.members)) for g in p.groups]


def test_tied_embedding_and_lm_head_share_one_group():
    from conftest import TiedLM

    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, ids = TiedLM().eval(), torch.randint(0, 20, (1, 4))
    p = Pruner(model, (ids,))
    assert p.graph.node("head").params["weight"] == "emb.weight"
    # head's input columns are emb's embedding dim (one tensor): cutting them shrinks emb's
    # output, which mid reads, so mid's inputs go too
    grp = group_of(p.graph, "mid")
    assert {(m.node_name, m.side) for m in grp.members} == \
        {("mid", "out"), ("head", "in"), ("emb", "out"), ("mid", "in")}
    assert [g.root for g in p.groups] == ["emb", "head"]  # emb's group is mid's: one group
    # head's outputs are emb's vocabulary: said in those words (was "in a way DepView does
    # not follow")
    assert "'head' shares its rows with the vocabulary of 'emb'" in p.groups[1].reason
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.emb.weight.shape == (20, 4) and pruned.head.weight is pruned.emb.weight
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_a_module_called_twice_loses_the_same_channels_in_both_calls():
    """YOLO-style necks run one block on two inputs: both calls' channels are one tensor's."""
    from viewer.core.prune import Pruner

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.shared = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6))
            self.c, self.d = nn.Conv2d(6, 4, 1), nn.Conv2d(6, 5, 1)
            self.head = nn.Conv2d(9, 2, 1)

        def forward(self, x):
            return self.head(torch.cat([self.c(self.shared(self.a(x))),
                                        self.d(self.shared(self.b(x)))], 1))

    torch.manual_seed(0)
    model, x = Twice().eval(), torch.randn(1, 3, 8, 8)
    model.shared[1].running_mean.uniform_(-1, 1)
    p = Pruner(model, (x,))
    out = group_of(p.graph, "shared.0")
    assert {(m.node_name, m.side) for m in out.members} == {
        ("shared.0", "out"), ("shared.0:1", "out"), ("shared.1", "out"), ("shared.1", "in"),
        ("shared.1:1", "out"), ("shared.1:1", "in"), ("c", "in"), ("d", "in")}
    inp = group_of(p.graph, "a")  # a's and b's channels both feed the shared conv's inputs
    assert {(m.node_name, m.side) for m in inp.members} == {
        ("a", "out"), ("b", "out"), ("shared.0", "in"), ("shared.0:1", "in")}
    assert "shared.0:1" not in [g.root for g in p.groups]  # its channels are shared.0's
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.shared[0].weight.shape == (3, 4, 3, 3)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


@pytest.mark.parametrize("side", ["in", "out"])
def test_group_of_bad_side_and_name(demo_pruner, side):
    from viewer.core.errors import DepViewError

    _, p = demo_pruner("cnn")
    with pytest.raises(KeyError, match="no node named"):
        group_of(p.graph, "nope", side)
    with pytest.raises(DepViewError):
        group_of(p.graph, "fc1", "sideways")


def test_an_embeddings_input_has_no_channels_to_group(demo_pruner):
    # its ids' positions were offered as 16 "units" of a group with no members
    from viewer.core.errors import DepViewError

    _, p = demo_pruner("llama")
    with pytest.raises(DepViewError, match="^'embed_tokens' reads ids .rows of its table., not "
                                           "channels: its input has none to group$"):
        group_of(p.graph, "embed_tokens", "in")
    assert group_of(p.graph, "embed_tokens", "out").n_units > 1


@pytest.mark.parametrize("name", ["swin", "llama", "shufflenet", "vit", "slicing", "rnn"])
def test_group_of_any_node_never_crashes(demo_pruner, name):
    """Every node, both sides: a group or a one-line DepViewError, never another exception."""
    from viewer.core.errors import DepViewError

    _, p = demo_pruner(name)
    for node in p.graph.nodes:
        for side in ("in", "out"):
            try:
                g = group_of(p.graph, node.name, side)
                assert g.id == -1
            except DepViewError as exc:
                assert "\n" not in str(exc)


def test_a_functional_conv_call_hands_its_channels_to_the_tensors_it_is_given():
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 1)
            self.w = nn.Parameter(torch.randn(4, 8, 1, 1))

        def forward(self, x):
            return torch.nn.functional.conv2d(self.stem(x), self.w)

    g = build_graph(Fn(), torch.randn(1, 3, 4, 4))
    grp = group_of(g, "stem")
    assert grp.prunable
    assert grp.member("w", "param").dim == 1  # the weight's columns read stem's channels
    own = next(x for x in all_groups(g) if x.root == "conv2d")
    assert [(m.node_name, m.side, m.dim) for m in own.members] == [("w", "param", 0)]
    assert not own.prunable and "model output" in own.reason


def test_a_parameter_is_never_rooted_on_a_dim_it_is_broadcast_along():
    # ConvNeXt V2's GRN gamma and beta are (1, 1, 1, C) on a channels-last map: each got a
    # group of its dim 1, "1 unit, not prunable: only one unit", in every block
    class Grn(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Linear(8, 4)
            # channels last, broadcast along the rest; and a scalar gain
            self.gamma, self.scale = nn.Parameter(torch.randn(1, 1, 1, 8)), \
                nn.Parameter(torch.ones(1))

        def forward(self, x):
            y = self.conv(x).permute(0, 2, 3, 1) * self.gamma * self.scale
            return self.head(y.mean((1, 2)))

    groups = all_groups(build_graph(Grn(), torch.randn(1, 3, 4, 4)))
    assert [grp.root for grp in groups] == ["conv", "head"]
    assert groups[0].prunable and groups[0].member("gamma", "param").dim == 3


def test_a_4d_parameter_is_rooted_at_its_channels_not_at_a_spatial_or_kernel_dim():
    from viewer.core.prune import Pruner

    class PosConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.pos = nn.Parameter(torch.randn(1, 8, 6, 6))  # a position table on a map
            self.w = nn.Parameter(torch.randn(4, 8, 3, 3))  # a weight given to F.conv2d
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            y = self.conv(x) + self.pos
            z = F.conv2d(y, self.w, padding=1)
            return self.head(y.mean((2, 3))), z

    torch.manual_seed(0)
    m = PosConv().eval()
    x = torch.randn(2, 3, 6, 6)
    g = build_graph(m, x)
    groups = all_groups(g)
    # each parameter is cut along its channels, never the 6 positions or 3 kernel taps
    dims = {(mm.node_name, mm.dim) for grp in groups for mm in grp.members if mm.side == "param"}
    assert dims == {("pos", 1), ("w", 1), ("w", 0)}
    by_root = {grp.root: grp for grp in groups}
    # pos's channels and the F.conv2d weight's input channels are the conv's: one group
    assert "pos" not in by_root and "w" not in by_root
    conv = by_root["conv"]
    assert conv.member("pos", "param").dim == 1 and conv.member("w", "param").dim == 1
    # the weight's rows are the call's output channels, which the model returns
    out = by_root["conv2d"]
    assert out.member("w", "param").dim == 0 and "model output" in out.reason
    # without the functional conv, the table is pruned with the conv and the pruned model is
    # the original with those channels zeroed
    class PosOnly(PosConv):
        def forward(self, x):
            return self.head((self.conv(x) + self.pos).mean((2, 3)))

    m = PosOnly().eval()
    del m.w
    p = Pruner(m, (x,), output_layers=["head"])
    grp = next(grp for grp in p.groups if grp.root == "conv")
    assert grp.prunable and grp.member("pos", "param").dim == 1
    plan = p.plan(0.5, "l1")
    pruned = p.apply(plan)
    assert pruned.pos.shape == (1, 4, 6, 6)
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]


# --- reuse across repeated blocks: the same groups as searching every root -------------------


def canonical(groups) -> list:
    """Everything a group says, in plain values (the oracle for reuse == full search)."""
    return [(g.id, g.root, g.root_side, g.n_units, g.reasons, g.stats_notes, g.exact,
             g.multiple_of,
             [(m.node, m.node_name, m.module, m.op_type, m.side, m.dim, m.pos.tolist(),
               m.unit.tolist(), m.port) for m in g.members],
             sorted((k, p.tolist(), u.tolist()) for k, (p, u) in g.tensors.items()))
            for g in groups]


@pytest.mark.parametrize("name", ALL_DEMOS + ["resnet50"])
def test_reused_groups_equal_a_search_from_every_root(demo_pruner, name):
    _, p = demo_pruner(name)
    assert canonical(all_groups(p.graph)) == canonical(all_groups(p.graph, reuse=False))


class _LSTMPBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 10, proj_size=6, batch_first=True)
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        return self.norm(x + self.lstm(x)[0])


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_reused_groups_of_repeated_lstm_cell_units_equal_a_full_search():
    # the cell units' groups start at the LSTM's output 2 (c_n), not 0: a repeat must be
    # found from the same port
    model = nn.Sequential(_LSTMPBlock(), _LSTMPBlock(), _LSTMPBlock(), nn.Linear(6, 2))
    g = build_graph(model, torch.randn(1, 4, 6))
    groups = all_groups(g)
    assert canonical(groups) == canonical(all_groups(g, reuse=False))
    cells = [grp for grp in groups if grp.root_side == "cell"]
    assert [grp.root for grp in cells] == ["0.lstm", "1.lstm", "2.lstm"]
    assert all(grp.prunable and grp.n_units == 10 for grp in cells)
    assert [(m.node_name, m.side, m.port) for m in cells[1].members] == [("1.lstm", "out", 2)]


class _Block(nn.Module):
    """Two heads-split projections concatenated; ``variant`` changes only what the graph's
    shapes cannot show: which dim of the head split is left to torch, or the concat order."""

    def __init__(self, variant: str = ""):
        super().__init__()
        self.variant = variant
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.out = nn.Linear(32, 16)

    def forward(self, x):
        ha, hb = self.a(x), self.b(x)
        if self.variant == "heads":
            ha = ha.view(1, 5, 4, -1).relu().reshape(1, 5, 16)
        else:
            ha = ha.view(1, 5, -1, 4).relu().reshape(1, 5, 16)
        hb = hb.relu()
        both = torch.cat([hb, ha] if self.variant == "order" else [ha, hb], dim=-1)
        return x + self.out(both)


def test_reuse_only_where_the_block_really_repeats():
    torch.manual_seed(0)
    model = nn.Sequential(_Block(), _Block(), _Block("heads"), _Block(), _Block("order"),
                          nn.Linear(16, 3))
    g = build_graph(model, torch.randn(1, 5, 16))
    groups = all_groups(g)
    assert canonical(groups) == canonical(all_groups(g, reuse=False))
    by_root = {grp.root: grp for grp in groups}
    a0, a1, a2, a3, a4 = (by_root[f"{i}.a"] for i in range(5))
    # heads of 4 channels; in block 2 the split leaves the other dim to torch: other units
    assert a0.n_units == 4 and a2.n_units == 4
    assert a0.members[0].unit.tolist() != a2.members[0].unit.tolist()
    # repeats share their arrays with the group they were made from (read-only); the blocks
    # whose metadata or wiring differ were searched afresh
    assert a1.members[0].pos is a0.members[0].pos
    assert a3.members[0].pos is a0.members[0].pos
    assert a2.members[0].pos is not a0.members[0].pos
    assert a4.members[0].pos is not a0.members[0].pos
    assert [m.node_name for m in a3.members] == [m.node_name.replace("0.", "3.", 1)
                                                 for m in a0.members]
    for grp in (a0, a1):  # results are read-only: a repeat shares its template's arrays
        with pytest.raises(ValueError, match="read-only"):
            grp.members[0].pos[0] = 7
        with pytest.raises(ValueError, match="read-only"):
            next(iter(grp.tensors.values()))[1][0] = 7


class PadEinsum(nn.Module):
    """Channels through F.pad (on H, W only), a padding module, a channel scale written as an
    einsum and an einsum that contracts channels with a weight."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.s = nn.Parameter(torch.rand(8) + 0.5)
        self.pad = nn.ZeroPad2d(1)
        self.b = nn.Conv2d(8, 8, 1)
        self.w = nn.Parameter(torch.randn(8, 6))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = torch.nn.functional.pad(self.a(x), (1, 1, 2, 0), mode="reflect")
        y = torch.einsum("bchw,c->bchw", y, self.s)
        y = self.b(self.pad(y))
        return self.head(torch.einsum("bchw,cd->bd", y, self.w))


def test_pad_and_einsum_carry_channels_and_prune_exactly():
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = PadEinsum().eval(), torch.randn(2, 3, 6, 6)
    p = Pruner(model, (x,))
    a = group_of(p.graph, "a")
    assert {(m.node_name, m.side) for m in a.members} == \
        {("a", "out"), ("s", "param"), ("b", "in")} and a.prunable
    b = group_of(p.graph, "b")
    assert {(m.node_name, m.side, m.dim) for m in b.members} == {("b", "out", 1),
                                                                  ("w", "param", 0)}
    d = group_of(p.graph, "w", "out")  # the einsum's output letter d: w's dim 1, head's input
    assert {(m.node_name, m.side, m.dim) for m in d.members} == {("w", "param", 1),
                                                                  ("head", "in", 1)}
    plan = p.plan(0.5)
    assert len(plan.removed) == 3
    pruned = p.apply(plan)
    assert pruned.s.shape == (4,) and pruned.w.shape == (4, 3)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_padding_the_pruned_dim_or_an_einsum_diagonal_blocks():
    class PadChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(10, 4, 1)

        def forward(self, x):
            return self.b(torch.nn.functional.pad(self.a(x), (0, 0, 0, 0, 1, 1)))

    g = build_graph(PadChannels(), torch.randn(1, 3, 4, 4))
    assert "'pad' pads the pruned dim" in group_of(g, "a").reason

    class Diagonal(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(3, 4)

        def forward(self, x):
            y = self.l(x)
            return torch.einsum("bii->bi", y[:, :, None] * y[:, None, :])

    g = build_graph(Diagonal(), torch.randn(2, 3))
    assert "takes a diagonal of the pruned dim" in group_of(g, "l").reason


def test_flatten_and_softmax_modules_are_looked_through():
    class Mods(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.soft = nn.Softmax(dim=1)  # over the channels: allowed, inexact
            self.b = nn.Conv2d(4, 4, 1)
            self.flat = nn.Flatten()
            self.fc = nn.Linear(4 * 2 * 3, 5)

        def forward(self, x):
            return self.fc(self.flat(self.b(self.soft(self.a(x)))))

    g = build_graph(Mods(), torch.randn(1, 3, 2, 3))
    a = group_of(g, "a")
    assert a.prunable and not a.exact and ("b", "in") in {(m.node_name, m.side)
                                                          for m in a.members}
    b = group_of(g, "b")  # channel 1 of b is features 6..11 of fc: nn.Flatten's own flatten
    assert b.prunable and b.exact and b.member("fc", "in").indices([1]).tolist() == \
        list(range(6, 12))


class DimOps(nn.Module):
    """One conv per op, each op applied along the channel dim or along W."""

    def __init__(self, op: str, dim: int):
        super().__init__()
        self.op, self.dim = op, dim
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y, d = self.a(x), self.dim
        y = {"cumsum": lambda: torch.cumsum(y, d), "flip": lambda: torch.flip(y, [d]),
             "roll": lambda: torch.roll(y, 1, d), "sort": lambda: torch.sort(y, d)[0],
             "gather": lambda: torch.gather(y, d, torch.zeros_like(y, dtype=torch.long))}[
            self.op]()
        return self.b(y)


@pytest.mark.parametrize("op, dim, expect", [
    ("cumsum", 1, "inexact"), ("flip", 1, "blocked"), ("roll", 1, "blocked"),
    ("sort", 1, "blocked"), ("gather", 1, "blocked"),
    ("cumsum", 3, "exact"), ("flip", 3, "exact"), ("roll", 3, "exact"), ("sort", 3, "exact"),
    ("gather", 3, "exact"),
])
def test_ops_that_mix_or_move_positions_along_a_dim(op, dim, expect):
    # They keep shapes, so the broadcasting rule alone would call them channel-preserving.
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = DimOps(op, dim).eval(), torch.randn(1, 3, 4, 4)
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.root == "a")
    if expect == "blocked":
        assert "moves positions along the pruned dim" in g.reason
        return
    assert g.prunable and g.exact == (expect == "exact")
    plan = Plan({g.id: [1, 4]})
    v = p.verify(p.apply(plan), plan)
    assert v["forward"]
    if expect == "exact":  # along W the channels stay where they are: masked equivalence
        assert v["masked_equivalence"]["ok"], v
    else:
        assert "cumsum" in v["masked_equivalence"]["skipped"]


class Reduced(nn.Module):
    """A reduction over the channels beside the channels themselves: ``op`` of y added to a
    conv of y (a normalisation feeds the conv)."""

    def __init__(self, op):
        super().__init__()
        self.op, self.a, self.b = op, nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        if self.op.startswith("normalize"):
            p = float(self.op.removeprefix("normalize") or 2)
            return self.b(F.normalize(y, p=p, dim=1))
        reduce = {"sum": lambda: y.sum(1, keepdim=True),
                  "vector_norm": lambda: torch.linalg.vector_norm(y, dim=1, keepdim=True),
                  "norm1": lambda: y.norm(p=1, dim=1, keepdim=True),
                  "norm-1": lambda: torch.linalg.vector_norm(y, ord=-1, dim=1, keepdim=True),
                  "mean": lambda: y.mean(1, keepdim=True),
                  "amax": lambda: y.amax(1, keepdim=True),
                  "logsumexp": lambda: y.logsumexp(1, keepdim=True)}[self.op]
        return self.b(y) + reduce()


@pytest.mark.parametrize("op, exact", [
    ("sum", True), ("vector_norm", True), ("norm1", True), ("normalize", True),
    ("normalize1", True), ("normalizeinf", True),
    ("norm-1", False), ("normalize-inf", False), ("mean", False), ("amax", False),
    ("logsumexp", False),
])
def test_a_reduction_a_zero_adds_nothing_to_is_exact(op, exact):
    # a sum or a p-norm (p >= 0) over the channels: the removed channels, zeroed, add
    # nothing, so masked equivalence holds and is checked; a mean, a max, a negative order
    # are changed by a zero (inexact: checked only by running)
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(Reduced(op).eval(), (torch.randn(2, 3, 4, 4),))
    g = next(grp for grp in p.groups if grp.root == "a")
    assert g.prunable and g.exact == exact, g.stats_notes
    plan = Plan({g.id: [1, 4, 6]})
    v = p.verify(p.apply(plan), plan)
    if exact:
        assert v["masked_equivalence"]["ok"], v
    else:
        assert "reduces over pruned channels" in v["masked_equivalence"]["skipped"]


class Shuffled(nn.Module):
    """ShuffleNet's channel shuffle between two convs: ``nn.ChannelShuffle`` (torch's
    channel_shuffle op), or the same written by hand as views and a transpose."""

    def __init__(self, by_hand: bool):
        super().__init__()
        self.by_hand = by_hand
        self.a, self.b = nn.Conv2d(3, 12, 1), nn.Conv2d(12, 2, 1)
        self.shuffle = nn.ChannelShuffle(3)

    def forward(self, x):
        y = self.a(x)
        if self.by_hand:
            b, c, h, w = y.shape
            y = y.view(b, 3, c // 3, h, w).transpose(1, 2).reshape(b, c, h, w)
        else:
            y = self.shuffle(y)
        return self.b(y)


def test_channel_shuffle_keeps_its_groups_equal_as_the_same_shuffle_by_hand_does():
    # was blocked ("moves positions along the pruned dim"); the oracle is the view/transpose
    # form, which the reshape and permute rules already followed
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 4)
    op, hand = (Pruner(Shuffled(by_hand).eval(), (x,)) for by_hand in (False, True))
    g_op, g_hand = (next(g for g in p.groups if g.root == "a") for p in (op, hand))
    assert not op.reason(g_op) and g_op.exact and g_op.n_units == 4  # 12 channels, 3 groups
    plan = Plan({g_op.id: [1, 2]})  # offsets 1 and 2 of every group: 4 -> 2 per group
    assert op.kept(plan) == hand.kept(Plan({g_hand.id: [1, 2]}))
    assert op.kept(plan)["b.weight"]["1"] == [0, 1, 2, 9, 10, 11]  # out = offset * 3 + group
    pruned = op.apply(plan)
    v = op.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    assert pruned.shuffle.groups == 3 and pruned.a.out_channels == 6


class Positions(nn.Module):
    """An op that may return positions along the hidden dim (``dim`` 1) or along the tokens
    (``dim`` 0), read by the rest of the model."""

    def __init__(self, op: str, dim: int):
        super().__init__()
        self.op, self.dim = op, dim
        self.a = nn.Linear(3, 8)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        h, d, fc = torch.relu(self.a(x)), self.dim, self.fc
        ops = {  # with d = 1 the result is (5, 1), with d = 0 one value per hidden channel
            "argmax": lambda: fc(h) * h.argmax(d, keepdim=True) if d else fc(h * h.argmax(0)),
            "argmin": lambda: fc(h) * torch.argmin(h, d, keepdim=True),
            "max": lambda: fc(h) * torch.max(h, d, keepdim=True)[1] if d else
            fc(h * torch.max(h, 0)[1]),
            "max values": lambda: fc(h) * torch.max(h, d, keepdim=True)[0],
            "median": lambda: fc(h) * torch.median(h, d, keepdim=True)[1] if d else
            fc(h * h.median(0).indices),
            "mode": lambda: fc(h) * h.mode(d, keepdim=True).indices if d else
            fc(h * torch.mode(h, 0)[1]),
            "kthvalue": lambda: fc(h) * torch.kthvalue(h, 2, d, keepdim=True)[1] if d else
            fc(h * h.kthvalue(2, dim=0).indices),
            "median values": lambda: fc(h) * h.median(d, keepdim=True).values,
            "cummax": lambda: fc(h * h.cummax(d).indices),
            "topk": lambda: fc(h.topk(8, d)[0]),
        }
        return ops[self.op]()


@pytest.mark.parametrize("op, dim, expect", [
    ("argmax", 1, "blocked"), ("argmin", 1, "blocked"), ("max", 1, "blocked"),
    ("cummax", 1, "blocked"), ("topk", 1, "kept"), ("max values", 1, "inexact"),
    ("argmax", 0, "exact"), ("max", 0, "exact"),
    # median/mode/kthvalue were unknown ops that change shape: every group through them blocked
    ("median", 1, "blocked"), ("mode", 1, "blocked"), ("kthvalue", 1, "blocked"),
    ("median values", 1, "inexact"), ("median", 0, "exact"), ("mode", 0, "exact"),
    ("kthvalue", 0, "exact"),
])
def test_ops_that_return_positions_along_the_pruned_dim_block_it(op, dim, expect):
    # A wrapper returning net(x).argmax(-1) had its classes cut from 10 to 7: the class ids
    # it returned named other classes, silently.
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = Positions(op, dim).eval(), torch.randn(5, 3)
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.root == "a")
    if expect == "blocked":
        assert f"'{op}' ({op}) returns positions along the pruned dim" in g.reason
        return
    if expect == "kept":  # its top 8 values of 8 channels (positions unread): all stay
        assert g.reason == "all 8 units must stay: 'topk' (topk) picks 8 of them"
        return
    assert g.prunable and g.exact == (expect == "exact"), g.reason
    plan = Plan({g.id: [1, 4]})
    v = p.verify(p.apply(plan), plan)
    assert v["forward"]
    if expect == "exact":  # positions along the tokens: the pruned model gives the same ids
        assert v["masked_equivalence"]["ok"], v
    else:
        assert "reduces over pruned channels" in v["masked_equivalence"]["skipped"]


@pytest.mark.parametrize("op", [torch.max, torch.min])
def test_max_of_two_tensors_couples_their_channels(op):
    # torch.max(a, b) was taken for a reduction of a alone: b's layer was another group, and
    # either group pruned alone failed ("The size of tensor a (5) must match ... (6)")
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    class TwoBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.c(op(self.a(x), self.b(x)))

    torch.manual_seed(0)
    p = Pruner(TwoBranch().eval(), (torch.randn(5, 4),))
    g = next(grp for grp in p.groups if grp.root == "a")
    assert {m.node_name for m in g.members} == {"a", "b", "c"} and g.exact
    plan = Plan({g.id: [1, 4]})
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_parametrized_weights_block_with_the_way_out():
    """A parametrization other than weight_norm and spectral_norm (which prune:
    test_weightnorm.py, test_spectralnorm.py) computes a weight DepView cannot cut: the group
    says so and what to call."""
    from torch.nn.utils import parametrize

    from viewer.core.prune import Pruner

    class Symmetric(nn.Module):  # (a user's parametrization)
        def forward(self, w):
            return (w + w.flip(0)) / 2

    class SN(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv1d(4, 16, 3, padding=1)
            parametrize.register_parametrization(self.a, "weight", Symmetric())
            self.b = nn.Conv1d(16, 4, 3, padding=1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model, x = SN().eval(), torch.randn(1, 4, 10)
    reason = group_of(build_graph(model, x), "a").reason
    assert "'a' computes a weight through a parametrization other than weight_norm" in reason
    assert "remove_parametrizations" in reason
    parametrize.remove_parametrizations(model.a, "weight")  # what the reason says to do
    p = Pruner(model, (x,))
    plan = p.plan(0.5)
    assert plan.removed
    v = p.verify(p.apply(plan), plan)
    assert v["masked_equivalence"]["ok"], v


def test_a_weight_a_pre_hook_computes_from_weight_orig_blocks_with_the_way_out():
    """A forward pre-hook computing ``weight`` from ``weight_orig`` in a way DepView does not
    follow (it follows torch.nn.utils.prune's masks and spectral_norm: test_prunemask.py,
    test_spectralnorm.py): the group says what to do (it was 'prunable' until validation
    failed)."""
    from viewer.core.prune import Pruner

    def doubled(module, _inputs):
        module.weight = module.weight_orig * 2

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    conv = model[0]
    conv.weight_orig = nn.Parameter(conv.weight.detach().clone())
    del conv._parameters["weight"]
    handle = conv.register_forward_pre_hook(doubled)
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        p = Pruner(model, (x,))
    g = next(g for g in p.groups if g.root == "0")
    assert "'0' computes its weight in a forward pre-hook (from weight_orig" in g.reason
    assert "make the weight a plain parameter first" in g.reason
    handle.remove()  # what the reason says to do
    conv.weight = nn.Parameter(conv.weight_orig.detach() * 2)
    del conv._parameters["weight_orig"]
    p = Pruner(model, (x,))
    plan = p.plan(0.5)
    assert plan.removed
    v = p.verify(p.apply(plan), plan)
    assert v["masked_equivalence"]["ok"], v


class Copies(nn.Module):
    """Channel copies: repeat (a's channel i feeds b's inputs i and i + 8) and grouped-query
    attention written with repeat_interleave (each kv head serves two query heads)."""

    def __init__(self, d=16, heads=4, kv=2):
        super().__init__()
        self.heads, self.kv, self.hd = heads, kv, d // heads
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(16, 4, 1)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, kv * self.hd)
        self.v = nn.Linear(d, kv * self.hd)
        self.o = nn.Linear(d, d)

    def forward(self, x, t):
        y = self.b(self.a(x).repeat(1, 2, 1, 1)).mean((2, 3))
        bsz, s, _ = t.shape
        q = self.q(t).view(bsz, s, -1, self.hd).transpose(1, 2)
        k = self.k(t).view(bsz, s, -1, self.hd).transpose(1, 2)
        v = self.v(t).view(bsz, s, -1, self.hd).transpose(1, 2)
        r = self.heads // self.kv
        att = nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(r, dim=1), torch.repeat_interleave(v, r, 1), scale=0.5)
        return y, t + self.o(att.transpose(1, 2).reshape(bsz, s, -1))


def test_repeat_and_repeat_interleave_copy_channels_exactly():
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = Copies().eval(), (torch.randn(1, 3, 4, 4), torch.randn(2, 5, 16))
    p = Pruner(model, x)
    a = next(g for g in p.groups if g.root == "a")
    assert a.prunable and a.member("b", "in").indices([1]).tolist() == [1, 9]
    kv = next(g for g in p.groups if g.root == "q")  # q is the first root of its group
    assert kv.n_units == 2 and {m.node_name for m in kv.members} >= {"q", "k", "v", "o"}
    assert kv.member("q", "out").indices([1]).tolist() == list(range(8, 16))  # heads 2, 3
    plan = Plan({a.id: [1, 6], kv.id: [0]})
    pruned = p.apply(plan)
    assert pruned.b.in_channels == 12 and pruned.k.out_features == 4
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


class DenseExperts(nn.Module):
    """Llama 4's experts in miniature: every expert runs on its own copy of the tokens
    (``x.repeat(n_experts, 1)``), weighed by its score, and their outputs are summed."""

    def __init__(self, d=6, hidden=5, n_experts=3):
        super().__init__()
        self.scorer = nn.Linear(d, n_experts)
        self.w = nn.Parameter(torch.randn(n_experts, d, hidden))
        self.out = nn.Linear(hidden, 2)

    def forward(self, x):  # x: (tokens, d)
        scores = self.scorer(x).sigmoid()
        copies = x.repeat(scores.shape[1], 1) * scores.t().reshape(-1, 1)
        y = torch.bmm(copies.view(self.w.shape[0], -1, x.shape[1]), self.w)
        return self.out(y.sum(0))


def test_a_tiled_dim_whose_copies_a_group_owns_whole_loses_copies_not_positions():
    # each expert weighs whole copies of the tokens: removing it removes its copy, and the
    # tokens stay (was: the copies mapped back to the tokens, merging every expert with
    # the model's input)
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = DenseExperts().eval(), torch.randn(4, 6)
    p = Pruner(model, (x,))
    experts = next(g for g in p.groups if any(m.node_name == "w" for m in g.members))
    assert {(m.node_name, m.dim) for m in experts.members} == {
        ("scorer", 1), ("w", 0)} and experts.n_units == 3 and not p.reason(experts)
    plan = Plan({experts.id: [1]})
    pruned = p.apply(plan)
    assert pruned.w.shape == (2, 6, 5) and pruned.scorer.out_features == 2
    with torch.no_grad():  # the masked model: expert 1's weights and score row zeroed
        torch.testing.assert_close(pruned(x), p.masked_model(plan)(x), rtol=0, atol=1e-6)


class OneGroupScan(nn.Module):
    """HF Mamba2's mixer in miniature: one projection split into the heads ``x``, one
    group's state ``b`` and a per-head step ``dt``; ``dt`` scales the heads of ``x``, and
    ``b`` (a dim of size 1 for its one group) is repeated over the heads with
    ``repeat_interleave`` before it meets them."""

    def __init__(self):
        super().__init__()
        self.proj, self.out = nn.Linear(8, 4 * 6 + 5 + 4), nn.Linear(4 * 6, 8)
        self.sizes = [24, 5, 4]

    def forward(self, t):
        bsz, n, _ = t.shape
        x, b, dt = self.proj(t).split(self.sizes, dim=-1)
        x = x.reshape(bsz, n, -1, 6) * dt[..., None]
        b = b.view(bsz, n, 1, -1).repeat_interleave(x.shape[2], dim=2)
        s = torch.einsum("blhn,blhp->bhpn", b, x)
        return self.out(torch.einsum("blhn,bhpn->blhp", b, s).reshape(bsz, n, -1))


def test_repeat_interleave_of_one_group_broadcasts_and_heads_stay_units():
    # the repeat made every head a copy of the group's one position: all heads one unit.
    # It broadcasts now, as expand does. And the view split at the head dims (the default:
    # the larger) met dt's whole heads, which merged every head into one unit beside the
    # state dims: such a lumped group is searched again split at whole heads
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, t = OneGroupScan().eval(), torch.randn(1, 3, 8)
    p = Pruner(model, (t,))
    g = next(g for g in p.groups if g.root == "proj")
    assert not p.reason(g) and g.n_units == 4 + 5 and p.sets(g) == ["sizes"]
    proj = g.member("proj", "out")
    heads = sorted({int(u) for u in proj.unit[proj.pos >= 29]})  # the units dt holds
    assert len(heads) == 4 and proj.indices([heads[1]]).tolist() == [*range(6, 12), 30]
    states = [u for u in range(g.n_units) if u not in heads]
    assert proj.indices(states).tolist() == list(range(24, 29))
    # heads and state dims: not every unit is a head (what round_to would count)
    from viewer.core.groups import units_are_heads

    assert not units_are_heads(p.graph, g)
    assert units_are_heads(p.graph, split_blocked(g, np.array(states), 0, 1)[0])
    plan = Plan({g.id: [heads[1], states[3]]})
    pruned = p.apply(plan)
    assert pruned.proj.out_features == 33 - 6 - 1 - 1 and pruned.out.in_features == 18
    assert pruned.sizes == [18, 4, 3]
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


class StackedExperts(nn.Module):
    """DBRX's experts: each weight stacks every expert's ``(ffn, hidden)`` rows in one
    parameter, viewed ``(-1, ffn, hidden)`` and indexed by a tensor (the experts a router
    picked) in a loop."""

    def __init__(self, experts=3, ffn=6, hidden=8):
        super().__init__()
        self.ffn, self.hidden = ffn, hidden
        self.w1 = nn.Parameter(torch.randn(experts * ffn, hidden))
        self.w2 = nn.Parameter(torch.randn(experts * ffn, hidden))

    def forward(self, x):
        out = torch.zeros_like(x)
        for e in torch.arange(self.w1.shape[0] // self.ffn).nonzero():
            w1 = self.w1.view(-1, self.ffn, self.hidden)[e[0]]
            w2 = self.w2.view(-1, self.ffn, self.hidden)[e[0]]
            out = out + torch.relu(x @ w1.T) @ w2
        return out


def test_stacked_expert_weights_prune_their_hidden_units_in_every_expert():
    # the contracted dim reached the matmul through a view and an index, which the search
    # for such dims did not follow; and the view's -1 made the experts the units, which the
    # tensor index blocks: the hidden units (the inner dim) prune instead
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = StackedExperts().eval(), torch.randn(5, 8)
    p = Pruner(model, (x,))
    # (w1's last dim, the stream, reaches the model's input and output: blocked)
    g = next(g for g in p.groups if g.root == "w1" and not p.reason(g))
    assert g.n_units == 6
    assert g.member("w1").indices([2]).tolist() == [2, 8, 14]  # unit 2 of every expert
    assert g.member("w2").indices([2]).tolist() == [2, 8, 14]
    plan = Plan({g.id: [2, 5]})
    pruned = p.apply(plan)
    assert pruned.w1.shape == (12, 8) and pruned.ffn == 4
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


class TinyVLM(nn.Module):
    """A vision-language model's merge: a projector's image features written into the text
    embeddings at the image tokens with ``masked_scatter`` (HF LLaVA, Qwen2-VL, ...);
    ``per_channel`` makes a mask that varies along the hidden dim instead."""

    def __init__(self, per_channel: bool = False):
        super().__init__()
        self.embed, self.vis = nn.Embedding(10, 8), nn.Linear(6, 8)
        self.mlp, self.out = nn.Linear(8, 16), nn.Linear(16, 3)
        self.per_channel = per_channel

    def forward(self, ids, patches):
        h = self.embed(ids)
        mask = (ids == 9).unsqueeze(-1)
        if self.per_channel:
            mask = mask & (torch.arange(8) % 2 == 0)
        h = h.masked_scatter(mask, self.vis(patches))
        return self.out(torch.relu(self.mlp(h)))


def test_masked_scatter_couples_the_written_rows_hidden_dim():
    # it was an unknown elementwise op that blocked the text stream of every VLM: "changes
    # shape in a way DepView does not model"
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    ids, patches = torch.tensor([[9, 9, 1, 2, 3, 4]]), torch.randn(2, 6)
    p = Pruner(TinyVLM().eval(), (ids, patches))
    g = next(g for g in p.groups if g.root == "embed")
    assert not p.reason(g) and g.n_units == 8
    assert {(m.node_name, m.side) for m in g.members} == {
        ("embed", "out"), ("vis", "out"), ("mlp", "in")}
    plan = Plan({g.id: [1, 6]})
    pruned = p.apply(plan)
    assert pruned.vis.out_features == 6 and pruned.embed.embedding_dim == 6
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    # a mask along the hidden dim picks which channels each row takes: blocked
    g = build_graph(TinyVLM(per_channel=True).eval(), (ids, torch.randn(1, 6)))
    assert "writes rows chosen by a mask along the pruned dim" in group_of(g, "embed").reason


class Solved(nn.Module):
    """A gated delta rule's chunk step in miniature (HF OLMo-Hybrid): each head's values
    solved through a unit lower-triangular system over the sequence with
    ``torch.linalg.solve_triangular``. ``how="rows"`` solves ``X A = B`` with the head dims
    as rows; ``how="mix"`` makes the head dims the system's own."""

    def __init__(self, how: str = "columns"):
        super().__init__()
        self.v, self.o = nn.Linear(5, 2 * 4), nn.Linear(8, 3)
        self.how = how

    def forward(self, x):
        b, n, _ = x.shape
        v = self.v(x).view(b, n, 2, -1).transpose(1, 2)  # (b, heads, n, head_dim)
        a = torch.eye(n) + torch.tril(torch.full((n, n), 0.5), -1)
        if self.how == "columns":
            y = torch.linalg.solve_triangular(a, v, upper=False, unitriangular=True)
        elif self.how == "rows":
            y = torch.linalg.solve_triangular(a.T, v.transpose(-1, -2), upper=True,
                                              left=False).transpose(-1, -2)
        else:
            m = torch.eye(4) + torch.tril(torch.full((4, 4), 0.5), -1)
            y = torch.linalg.solve_triangular(m, v.transpose(-1, -2), upper=False)
            y = y.transpose(-1, -2)
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("how", ["columns", "rows"])
def test_solve_triangular_keeps_the_dim_it_solves_position_by_position(how):
    # it was an unknown elementwise op that blocked: "changes shape in a way DepView does
    # not model"
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(Solved(how).eval(), (torch.randn(1, 6, 5),))
    g = next(g for g in p.groups if g.root == "v")
    assert not p.reason(g) and g.n_units == 4  # head dims, in both heads
    plan = Plan({g.id: [1]})
    pruned = p.apply(plan)
    assert pruned.v.out_features == 6 and pruned.o.in_features == 6
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    # the head dims as the system's own dims: each solved value mixes all of them
    g = build_graph(Solved("mix").eval(), (torch.randn(1, 6, 5),))
    assert "solves a linear system along the pruned dim" in group_of(g, "v").reason
    # linalg.solve with a batch of vectors (the system's dim last): not modelled
    class Vectors(nn.Module):
        def __init__(self):
            super().__init__()
            self.v = nn.Linear(5, 4)

        def forward(self, x):  # (b, 4) solved against one (b, 4, 4) system each
            return torch.linalg.solve(torch.eye(4) + x[:, :4, None] * 0.1, self.v(x))

    g = build_graph(Vectors().eval(), (torch.randn(2, 5),))
    assert "changes shape in a way DepView does not model" in group_of(g, "v").reason


def test_repeat_interleave_by_a_tensor_blocks():
    class Var(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)

        def forward(self, x):
            return self.a(x).repeat_interleave(torch.tensor([1, 2, 1, 1]), dim=1)

    g = build_graph(Var(), torch.randn(2, 3))
    assert "repeats by counts DepView cannot read" in group_of(g, "a").reason


class Experts(nn.Module):
    """A mixture of experts written as Hugging Face writes it: fused 3-D expert weights, the
    token rows sorted by expert and multiplied with ``F.grouped_mm``."""

    def __init__(self, dim=16, hidden=32, n_experts=4, top_k=2):
        super().__init__()
        self.n_experts, self.top_k = n_experts, top_k
        self.proj_in = nn.Linear(8, dim)
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.gate_up = nn.Parameter(torch.randn(n_experts, 2 * hidden, dim) * 0.2)
        self.down = nn.Parameter(torch.randn(n_experts, dim, hidden) * 0.2)
        self.proj_out = nn.Linear(dim, 8)

    def route(self, h):
        return self.router(h).softmax(-1).topk(self.top_k, dim=-1)

    def forward(self, x):  # x: (tokens, 8)
        h = self.proj_in(x)
        weights, experts = self.route(h)
        order = torch.argsort(experts.reshape(-1), stable=True)
        rows = h[order // self.top_k]
        counts = torch.histc(experts.reshape(-1).float(), bins=self.n_experts, min=0,
                             max=self.n_experts - 1)
        offs = torch.cumsum(counts, 0).to(torch.int32)
        gate, up = F.grouped_mm(rows, self.gate_up.transpose(1, 2), offs=offs).chunk(2, dim=-1)
        y = F.grouped_mm(F.silu(gate) * up, self.down.transpose(1, 2), offs=offs)
        y = y[torch.argsort(order)] * weights.reshape(-1, 1)
        return self.proj_out(y.view(len(x), self.top_k, -1).sum(1) + h)


def test_grouped_mm_experts_prune_their_width_in_16_byte_steps():
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = Experts().eval(), torch.randn(6, 8)
    p = Pruner(model, (x,))
    hidden = group_of(p.graph, "down")  # the experts' hidden width: down's dim 2
    assert {(m.node_name, m.side, m.dim) for m in hidden.members} == \
        {("down", "param", 2), ("gate_up", "param", 1)}
    assert hidden.member("gate_up").indices([3]).tolist() == [3, 35]  # gate and up halves
    width = group_of(p.graph, "proj_in")
    assert {(m.node_name, m.side, m.dim) for m in width.members} >= \
        {("proj_in", "out", 1), ("router", "in", 1), ("gate_up", "param", 2),
         ("down", "param", 1), ("proj_out", "in", 1)}
    # float32 rows of grouped_mm must stay multiples of 16 bytes: 4 channels at a time
    assert hidden.multiple_of == width.multiple_of == 4
    assert hidden.multiple_why == ["grouped_mm needs rows of 16 bytes"]
    assert not any(m.dim == 0 for g in (hidden, width) for m in g.members)  # experts stay
    # torch's meta kernel of grouped_mm takes bf16 only: traces on meta use a stand-in, and
    # a preview (which runs the model, not a trace) counts on real tensors
    plan = p.plan(0.3, overrides={"router": 0})  # every expert stays (see the next test)
    assert {len(v) for v in plan.removed.values()} == {8, 4}  # 9.6 -> 8 of 32, 4.8 -> 4 of 16
    fresh = Pruner(model, (x,), graph=p.graph)  # a preview before any validation
    preview = fresh.preview(plan)
    assert preview == p.preview(plan)
    # FlopCounterMode has no grouped_mm formula; DepView gives it one. 12 rows (6 tokens, 2
    # experts each) through (16 -> 64) and (32 -> 16), besides the three linears
    assert preview["macs"]["before"] == 6 * 8 * 16 + 6 * 16 * 4 + 12 * 16 * 64 + 12 * 32 * 16 \
        + 6 * 16 * 8
    assert preview["macs"]["after"] == 6 * 8 * 12 + 6 * 12 * 4 + 12 * 12 * 48 + 12 * 24 * 12 \
        + 6 * 12 * 8
    pruned = p.apply(plan)
    assert pruned.gate_up.shape == (4, 48, 12) and pruned.down.shape == (4, 12, 24)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def _without_experts(model: nn.Module, router: nn.Module, removed: list[int]):
    """The oracle of expert pruning: ``model`` whose ``router`` can never pick the experts
    ``removed`` (their logits -inf: no softmax weight, never in the top k)."""
    def hook(_m, _args, out):
        out = out.clone()
        out[..., removed] = float("-inf")
        return out
    return router.register_forward_hook(hook)


def _router_group(model: nn.Module, x: torch.Tensor):
    """A Pruner of ``model`` on ``x`` and the group rooted at its ``router``."""
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(model.eval(), (x,))
    return p, next(g for g in p.groups if g.root == "router")


def test_grouped_mm_experts_are_removed_with_the_router_rows_that_pick_them():
    # the router's topk returns positions along its logits, which the layer reads as expert
    # ids (histc counts per expert -> grouped_mm offsets): expert e's router row and its
    # weights go together. Was "DepView does not remove experts"
    from viewer.core.groups import _search
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = Experts(), torch.randn(6, 8)
    p, experts = _router_group(model, x)
    assert {(m.node_name, m.side, m.dim) for m in experts.members} == {
        ("router", "out", 1), ("gate_up", "param", 0), ("down", "param", 0)}
    assert experts.n_units == 4 and not p.reason(experts) and not experts.exact
    assert (experts.min_kept, experts.min_kept_why) == (2, "'topk' (topk) picks 2 of them")
    # from the experts' side the same group
    again = _search(p.graph, p.graph.node("gate_up"), "out", 0, np.arange(4), -1)
    assert {(m.node_name, m.dim) for m in again.members} == \
        {(m.node_name, m.dim) for m in experts.members}
    assert p.sets(experts) == ["n_experts"]  # histc(bins=self.n_experts) follows
    plan = Plan({experts.id: [0, 2]})
    pruned = p.apply(plan)
    assert pruned.router.out_features == pruned.n_experts == 2 and model.n_experts == 4
    assert pruned.gate_up.shape == (2, 64, 16) and pruned.down.shape == (2, 16, 32)
    assert torch.equal(pruned.gate_up, model.gate_up[[1, 3]])
    # verification's oracle: the masked model run with the router's scores -inf at the
    # removed experts; it tells a model pruned of the wrong experts (checked all the same,
    # reported skipped: such a difference may be a router doing more than pick)
    before = copy.deepcopy(model.state_dict())
    me = p.verify(pruned, plan)["masked_equivalence"]
    assert me["ok"] and me["max_abs_diff"] < 1e-6 and me["never_picked"].startswith(
        "1 pruned group removes units a router picks (experts)"), me
    me = p.verify(p.apply(Plan({experts.id: [1, 3]})), plan)["masked_equivalence"]
    assert "ok" not in me and "(checked all the same: max |diff|" in me["skipped"] and \
        "so the router does more with them than pick among them" in me["skipped"], me
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())
    with torch.no_grad():
        handle = _without_experts(model, model.router, [0, 2])
        want = model(x)
        handle.remove()
        assert not torch.equal(want, model(x))  # (the oracle masks something)
        torch.testing.assert_close(pruned(x), want, rtol=0, atol=1e-6)
    # the top 2 must stay: a ratio keeps them, a plan that would not is refused
    assert len(p.plan(0.9).removed[experts.id]) == 2
    # --round-to counts channels: an expert count has nothing to align (it kept all 4)
    rounded = p.plan(0.5, round_to=8)
    assert len(rounded.removed[experts.id]) == 2
    assert all(len(u) % 8 == 0 for gid, u in rounded.removed.items() if gid != experts.id)
    with pytest.raises(DepViewError, match=r"plan keeps 1 of the 4 units of group \d+ "
                       r"\('router'\), which needs 2: 'topk' \(topk\) picks 2 of them"):
        p.apply(Plan({experts.id: [0, 1, 2]}))
    one = Pruner(Experts(n_experts=2).eval(), (x,))  # as many experts as it picks
    assert one.reason(group_of(one.graph, "router")) == \
        "all 2 units must stay: 'topk' (topk) picks 2 of them"


class SparseMixer(nn.Linear):
    """PhiMoE's router: an ``nn.Linear`` whose own forward also picks two experts with two
    ``max`` calls, the second after writing -inf at the first (``torch.scatter``), and joins
    their ids with ``torch.cat``."""

    def forward(self, h):
        scores = super().forward(h)
        top1, first = scores.max(-1, keepdim=True)
        top2, second = torch.scatter(scores, -1, first, float("-inf")).max(-1, keepdim=True)
        return torch.cat([top1, top2], -1).softmax(-1), torch.cat([first, second], -1)


class MixedExperts(Experts):
    def __init__(self):
        super().__init__()
        self.router = SparseMixer(16, self.n_experts)

    def route(self, h):
        return self.router(h)


def test_a_router_extending_nn_linear_is_looked_into_and_its_two_picks_keep_two_experts():
    # an nn.Linear subclass returning more than a Linear does was one LINEAR node: its
    # rows were a group of their own (pruning them left every expert in place, and the
    # ids it returned pointing elsewhere). Traced again looking into it, its two max
    # calls, joined by cat, pick among the experts, the second among what the first left
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = MixedExperts().eval(), torch.randn(6, 8)
    p = Pruner(model, (x,))
    assert "router" not in p.graph.by_name  # (no module node: the ops inside it)
    assert p.graph.node("router.linear").op_type is OpType.MATMUL
    (experts,) = [g for g in p.groups if g.min_kept > 1]
    assert {(m.node_name, m.dim) for m in experts.members} == {
        ("router.weight", 0), ("router.bias", 0), ("gate_up", 0), ("down", 0)}
    assert experts.n_units == 4 and not p.reason(experts)
    assert experts.min_kept_why == \
        "'router.max_1' (max) picks 1 of them besides the 1 that 'router.max' (max) picked"
    plan = Plan({experts.id: [0, 2]})
    pruned = p.apply(plan)
    assert pruned.router.out_features == 2 and model.router.out_features == 4
    never = copy.deepcopy(model)  # the oracle: a router bias of -inf never picks them
    never.router.bias.data[[0, 2]] = float("-inf")
    with torch.no_grad():
        assert not torch.equal(never(x), model(x))
        torch.testing.assert_close(pruned(x), never(x), rtol=0, atol=1e-6)
    with pytest.raises(DepViewError, match="which needs 2: 'router.max_1'"):
        p.apply(Plan({experts.id: [0, 1, 2]}))
    me = p.verify(pruned, plan)["masked_equivalence"]
    assert me["ok"] and "never_picked" in me, me
    ids = []  # usage counts both picks: the ids the router returns, per expert
    handle = model.router.register_forward_hook(lambda _m, _a, out: ids.append(out[1]))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert p.importance(experts, "usage").tolist() == \
        torch.bincount(ids[0].flatten(), minlength=4).tolist()


class RoutedByNumber(Experts):
    """Experts whose router's ids are also compared with a number: expert 0 is special."""

    def forward(self, x):
        h = self.proj_in(x)
        _, experts = self.router(h).softmax(-1).topk(self.top_k, dim=-1)
        first = (experts == 0).any(-1, keepdim=True)  # renumbering would change which
        counts = torch.histc(experts.reshape(-1).float(), bins=self.n_experts, min=0,
                             max=self.n_experts - 1)
        return self.proj_out(h * first + counts.sum())


def test_picked_positions_read_as_numbers_block_the_experts():
    g = build_graph(RoutedByNumber().eval(), torch.randn(6, 8))
    assert "'topk' (topk) returns positions along the pruned dim that 'eq' (eq) reads as " \
        "numbers: pruning would change what they point to" in group_of(g, "router").reason

    class Returned(nn.Module):  # the ids are an output: the user reads them
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h), h.topk(2, -1)[1]

    g = build_graph(Returned().eval(), torch.randn(3, 4))
    assert group_of(g, "a").reason == "'topk' (topk) returns positions along the pruned dim " \
        "that the model returns ('output.[1]'): pruning would change what they point to"


class SwitchExperts(nn.Module):
    """Top-1 routing as Switch Transformers: the argmax expert, one-hot, every expert
    computed densely (an einsum over the stacked weights) and the picked one kept."""

    def __init__(self, dim=8, hidden=12, n_experts=4):
        super().__init__()
        self.n_experts = n_experts
        self.router = nn.Linear(dim, n_experts)
        self.w = nn.Parameter(torch.randn(n_experts, dim, hidden) * 0.3)
        self.out = nn.Linear(hidden, 3)

    def forward(self, x):
        logits = self.router(x)
        pick = F.one_hot(logits.argmax(-1), num_classes=self.n_experts).unsqueeze(-1)
        every = torch.einsum("td,edh->teh", x, self.w)
        return self.out((every * pick).sum(1) * logits.softmax(-1).max(-1, keepdim=True)[0])


def test_top1_router_with_one_hot_removes_experts_exactly_as_masked_logits():
    from viewer.core.plan import Plan

    torch.manual_seed(0)
    model, x = SwitchExperts(), torch.randn(10, 8)
    p, experts = _router_group(model, x)
    assert {(m.node_name, m.side, m.dim) for m in experts.members} == {
        ("router", "out", 1), ("w", "param", 0)}
    assert (experts.min_kept, experts.min_kept_why) == (1, "'argmax' (argmax) picks 1 of them")
    assert not p.reason(experts)
    assert p.sets(experts) == ["n_experts"]  # one_hot(num_classes=self.n_experts)
    plan = Plan({experts.id: [1, 2]})
    pruned = p.apply(plan)
    assert pruned.w.shape == (2, 8, 12) and pruned.n_experts == 2
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]  # (argmax: -inf never picked)
    with torch.no_grad():
        handle = _without_experts(model, model.router, [1, 2])
        want = model(x)
        handle.remove()
        torch.testing.assert_close(pruned(x), want, rtol=0, atol=1e-6)

    class ByColumns(nn.Module):  # (M, K) @ (K, N) split along K: one product per expert
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 12)
            self.b = nn.Parameter(torch.randn(12, 4))

        def forward(self, x):
            offs = torch.tensor([4, 8, 12], dtype=torch.int32)
            return F.grouped_mm(self.a(x), self.b, offs=offs).sum(0)

    g = build_graph(ByColumns(), torch.randn(8, 6))
    assert "'grouped_mm' (grouped_mm) groups its operands in a way DepView does not model" in \
        group_of(g, "a").reason


class ReshapeAs(nn.Module):
    """LeViT's MLPLayerWithBN: ``bn(h.flatten(0, 1)).reshape_as(h)`` takes only h's shape."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.b = nn.Linear(8, 5)

    def forward(self, x):
        h = self.a(x)
        return self.b(self.bn(h.flatten(0, 1)).reshape_as(h))


def test_reshape_as_reads_only_the_shape_of_its_second_operand():
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = ReshapeAs().eval(), torch.randn(2, 3, 6)
    model.bn.running_mean.uniform_(-1, 1)
    p = Pruner(model, (x,))
    a = group_of(p.graph, "a")
    assert {(m.node_name, m.side) for m in a.members} == \
        {("a", "out"), ("bn", "out"), ("bn", "in"), ("b", "in")} and a.prunable
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert pruned.bn.num_features == 4 and v["masked_equivalence"]["ok"], v


def test_a_rule_that_fails_leaves_one_group_unprunable_and_the_others_standing(monkeypatch):
    from viewer.core import rules as G
    from viewer.core.optypes import OpType

    g = build_graph(ReshapeAs().eval(), torch.randn(2, 3, 6))
    rule = G.RULES[OpType.BN]

    def broken(graph, node, *args):
        if node.name == "bn":
            raise IndexError("index 9 is out of bounds")
        return rule(graph, node, *args)

    monkeypatch.setitem(G.RULES, OpType.BN, broken)
    groups = all_groups(g)
    a = next(x for x in groups if x.root == "a")
    assert a.reason == ("DepView could not follow these channels (IndexError: index 9 is out "
                        "of bounds)")
    assert [(m.node_name, m.side) for m in a.members] == [("a", "out")]
    assert next(x for x in groups if x.root == "b").reason  # the model output, as before


def test_a_weight_picked_by_a_tensor_index_follows_the_right_dim():
    """``w[expert]`` with a 0-d tensor drops dim 0 (the eager mixture-of-experts loop)."""
    from viewer.core.prune import Pruner

    class PickExpert(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 8)
            self.w = nn.Parameter(torch.randn(3, 5, 8))

        def forward(self, x):
            h = self.a(x)
            expert = h.sum(0).argmax() % 3  # data picks the expert
            return F.linear(h, self.w[expert])

    torch.manual_seed(0)
    model, x = PickExpert().eval(), torch.randn(4, 6)
    p = Pruner(model, (x,))
    a = group_of(p.graph, "a")
    assert {(m.node_name, m.side, m.dim) for m in a.members} == {("a", "out", 1),
                                                                  ("w", "param", 2)}
    experts = group_of(p.graph, "w")  # the last dim again: the same group
    assert experts.member("w").dim == 2


DEPTHWISE_X2 = '''
from torch import nn


class Net(nn.Module):
    """A depthwise conv with a channel multiplier: 8 groups of 1 input and 2 outputs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.b(self.bn(self.dw(self.a(x))))
'''


def test_a_depthwise_conv_with_a_multiplier_loses_whole_groups(tmp_path, monkeypatch):
    from viewer.core.export import export_dir, load_pruned
    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model

    (tmp_path / "dw.py").write_text(DEPTHWISE_X2)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    lm = load_model("dw.py:Net", inputs=["1x3x8x8"])
    lm.model.bn.running_mean.uniform_(-1, 1)
    p = Pruner(lm.model, lm.inputs)
    a = group_of(p.graph, "a")  # input channel 3 of dw is its group 3: outputs 6 and 7
    assert a.prunable and a.n_units == 8
    assert a.member("dw", "in").indices([3]).tolist() == [3]
    assert a.member("dw", "out").indices([3]).tolist() == [6, 7]
    assert a.member("b", "in").indices([3]).tolist() == [6, 7]
    assert [g.root for g in p.groups] == ["a", "b"]  # dw's outputs are a's group
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert (pruned.dw.groups, pruned.dw.in_channels, pruned.dw.out_channels) == (4, 4, 8)
    assert pruned.dw.weight.shape == (8, 1, 3, 3)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source)
    reloaded = load_pruned(out)
    assert reloaded.dw.groups == 4
    with torch.no_grad():
        assert torch.equal(reloaded(*lm.inputs), pruned(*lm.inputs))


UPSAMPLER = '''
from torch import nn


class Net(nn.Module):
    """A per-channel learned upsampler: a transposed conv with one input channel per group
    (and ``mult`` outputs per group)."""

    def __init__(self, mult=1):
        super().__init__()
        self.a = nn.Conv1d(2, 8, 3, padding=1)
        self.up = nn.ConvTranspose1d(8, 8 * mult, 4, stride=2, padding=1, groups=8)
        self.b = nn.Conv1d(8 * mult, 3, 3, padding=1)

    def forward(self, x):
        return self.b(self.up(self.a(x).relu()).relu())
'''


@pytest.mark.parametrize("mult", [1, 2])
def test_a_transposed_conv_with_one_input_channel_per_group_loses_whole_groups(
        mult, tmp_path, monkeypatch):
    # it was "one output channel per group: removing one would remove a group" (blocked)
    from viewer.core.export import export_dir, load_pruned
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model

    (tmp_path / "up.py").write_text(UPSAMPLER)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    lm = load_model("up.py:Net", inputs=["1x2x10"], kwargs={"mult": mult})
    model, x = lm.model, lm.inputs[0]
    p = Pruner(model, (x,))
    a = next(g for g in p.groups if g.root == "a")
    assert not p.reason(a) and a.n_units == 8
    assert a.member("up", "out").indices([3]).tolist() == list(range(3 * mult, 4 * mult))
    drop = [1, 3, 4, 6]
    keep = torch.tensor([0, 2, 5, 7])
    keep_out = torch.cat([k * mult + torch.arange(mult) for k in keep])
    plan = Plan({a.id: drop})
    pruned = p.apply(plan)
    up = pruned.up
    assert (up.groups, up.in_channels, up.out_channels) == (4, 4, 4 * mult)
    # oracle: the same network built by hand from the kept tensors
    ref = nn.ConvTranspose1d(4, 4 * mult, 4, stride=2, padding=1, groups=4)
    with torch.no_grad():
        ref.weight.copy_(model.up.weight[keep])
        ref.bias.copy_(model.up.bias[keep_out])
        h = F.conv1d(x, model.a.weight[keep], model.a.bias[keep], padding=1).relu()
        want = F.conv1d(ref(h).relu(), model.b.weight[:, keep_out], model.b.bias, padding=1)
        torch.testing.assert_close(pruned(x), want)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source, pt2=False)
    again = load_pruned(out)
    assert again.up.groups == 4
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))


FUNCTIONAL_EMBEDDING = '''
import torch
import torch.nn.functional as F
from torch import nn


class Table(nn.Module):
    """A bare table read by F.embedding (or F.embedding_bag), and with ``tied`` by F.linear
    as the vocabulary head (nanoGPT-style)."""

    def __init__(self, bag=False, tied=False):
        super().__init__()
        self.bag, self.tied = bag, tied
        self.wte = nn.Parameter(torch.randn(50, 16) / 4)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, ids):
        if self.bag:
            x = F.embedding_bag(ids, self.wte, mode="mean")
        else:
            x = F.embedding(ids, self.wte, padding_idx=0, max_norm=1.0)
        x = x + self.fc2(self.fc1(x).relu())
        return F.linear(x, self.wte) if self.tied else self.head(x)
'''


@pytest.mark.parametrize("bag, tied", [(False, False), (True, False), (False, True)])
def test_a_functional_embedding_hands_its_width_to_the_table_columns(bag, tied, tmp_path,
                                                                      monkeypatch):
    # it was "a functional embedding call; DepView prunes layers called as modules"
    from viewer.core.export import export_dir, load_pruned
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model

    (tmp_path / "table.py").write_text(FUNCTIONAL_EMBEDDING)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    lm = load_model("table.py:Table", inputs=["2x7:int64"], kwargs={"bag": bag, "tied": tied})
    model, ids = lm.model, lm.inputs[0]
    p = Pruner(model, (ids,))
    g = next(grp for grp in p.groups if grp.root == "wte")
    assert not p.reason(g) and g.n_units == 16
    assert g.member("wte", "param").dim == 1
    assert g.member("fc1", "in").indices([3]).tolist() == [3]
    # the rows (tokens) are never a group
    assert not any(grp.n_units == 50 and not p.reason(grp) for grp in p.groups)
    drop = [0, 2, 3, 9, 10, 15]
    keep = torch.tensor([i for i in range(16) if i not in drop])
    plan = Plan({g.id: drop})
    pruned = p.apply(plan)
    assert torch.equal(pruned.wte, model.wte[:, keep].detach())
    assert torch.equal(pruned.fc1.weight, model.fc1.weight[:, keep])
    # oracle: the original with the dropped columns zeroed in every tensor that holds them
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.wte[:, drop] = 0
        masked.fc1.weight[:, drop] = 0
        masked.fc2.weight[drop] = 0
        masked.fc2.bias[drop] = 0
        masked.head.weight[:, drop] = 0
        torch.testing.assert_close(pruned(ids), masked(ids))
        assert not torch.allclose(pruned(ids), model(ids), atol=1e-4)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source, pt2=False)
    with torch.no_grad():
        assert torch.equal(load_pruned(out)(ids), pruned(ids))


CODEBOOK = '''
import torch
import torch.nn.functional as F
from torch import nn


class VQ(nn.Module):
    """An EMA vector quantizer as codecs keep one: ``embed`` is read (distances, F.embedding);
    ``embed_avg`` and ``cluster_size`` only by training updates."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv1d(2, 8, 3, padding=1)
        self.register_buffer("embed", torch.randn(16, 8))
        self.register_buffer("embed_avg", torch.randn(16, 8))
        self.register_buffer("cluster_size", torch.ones(16))
        self.register_buffer("other", torch.randn(16, 8))  # read: not a twin
        self.dec = nn.Conv1d(8, 2, 3, padding=1)
        # integer copies a quantized mode would read (I-BERT's QuantLinear keeps them)
        for conv in (self.enc, self.dec):
            conv.register_buffer("weight_integer", torch.randn_like(conv.weight))
            conv.register_buffer("bias_integer", torch.randn_like(conv.bias))

    def forward(self, x):
        z = self.enc(x).transpose(1, 2)  # (B, T, 8)
        codes = torch.cdist(z, (self.embed + 0 * self.other)[None]).argmin(-1)
        return self.dec(F.embedding(codes, self.embed).transpose(1, 2))
'''


def test_an_unread_buffer_beside_a_cut_tensor_of_its_shape_is_cut_with_it(tmp_path,
                                                                          monkeypatch):
    # embed_avg (training's running average) was left at the old width beside the pruned
    # embed, and I-BERT's weight_integer beside its weight: from_pretrained of such a
    # checkpoint refuses it, the code that reads them fails
    from viewer.core.export import export_dir, load_pruned
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model

    (tmp_path / "vq.py").write_text(CODEBOOK)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    lm = load_model("vq.py:VQ", inputs=["1x2x6"])
    model, x = lm.model, lm.inputs[0]
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.root == "enc")
    assert {m.node_name for m in g.members} >= {"enc", "embed", "other", "dec"}
    cuts = {(c.key, c.dim) for c in p.cuts(g, [1, 5])}
    assert {("embed", 1), ("embed_avg", 1), ("other", 1)} <= cuts
    assert {("enc.weight_integer", 0), ("enc.bias_integer", 0), ("dec.weight_integer", 1)} <= cuts
    assert not any(k in ("cluster_size", "dec.bias_integer") for k, _ in cuts)
    plan = Plan({g.id: [1, 5]})
    pruned = p.apply(plan)
    keep = [0, 2, 3, 4, 6, 7]
    assert torch.equal(pruned.embed_avg, model.embed_avg[:, keep])
    assert torch.equal(pruned.enc.weight_integer, model.enc.weight_integer[keep])
    assert torch.equal(pruned.dec.weight_integer, model.dec.weight_integer[:, keep])
    assert pruned.cluster_size.shape == (16,) and pruned.dec.bias_integer.shape == (2,)
    # the codebook is data its distances read: the masked model zeroes it too (left whole,
    # the removed features still counted in the distances and masked equivalence failed)
    me = p.verify(pruned, plan)["masked_equivalence"]
    assert me["ok"] and "buffers_zeroed" in me, me
    assert "buffers_zeroed" not in p.verify(p.apply(Plan({})), Plan({}))["masked_equivalence"]
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source, pt2=False)
    again = load_pruned(out)
    assert torch.equal(again.embed_avg, pruned.embed_avg)
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))


def test_index_add_keeps_the_channels_of_what_it_adds():
    """Message passing (a graph network; the eager mixture-of-experts loop): index_add along
    the rows keeps the channels of the tensor and the rows it adds."""
    from viewer.core.prune import Pruner

    class MessagePassing(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.msg, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x, src, dst):
            h = self.lin(x)
            agg = torch.zeros_like(h).index_add(0, dst, self.msg(h[src]))
            return self.out(torch.relu(agg + h))

    torch.manual_seed(0)
    x, src, dst = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 2, 3,
                                                                                    4, 0, 2])
    p = Pruner(MessagePassing().eval(), (x, src, dst))
    grp = group_of(p.graph, "lin")
    assert {(m.node_name, m.side) for m in grp.members} == \
        {("lin", "out"), ("msg", "in"), ("msg", "out"), ("out", "in")} and grp.prunable
    rows = _search_rows(p.graph)  # the rows (nodes, edges) are indexed: a group there blocks
    assert "'index_add' (index_add) moves positions along the pruned dim" in rows.reason
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert pruned.msg.weight.shape == (4, 4) and v["masked_equivalence"]["ok"], v
    # as many nodes and edges as channels: the 1-D index must not broadcast onto them
    src, dst = torch.arange(8), (torch.arange(8) + 1) % 8
    p = Pruner(MessagePassing().eval(), (torch.randn(8, 4), src, dst))
    assert group_of(p.graph, "lin").prunable


def _search_rows(graph):
    from viewer.core.groups import _search

    node = graph.node("msg")
    return _search(graph, node, "out", 0, np.arange(node.out_shapes[0][0]), -1)


def test_a_tie_between_calls_of_an_attention_layer_blocks_with_one_reason():
    class AttendTwice(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(6, 8), nn.Linear(8, 3)
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            h = self.inp(x)
            h = h + self.att(h, h, h)[0]
            return self.out(h + self.att(h, h, h)[0])

    g = build_graph(AttendTwice().eval(), torch.randn(1, 5, 6))
    assert group_of(g, "inp").reason == ("'att' and 'att:1' share their weights; DepView cannot "
                                         "follow such a tie for a MHA layer")


class ECA(nn.Module):
    """ECA-Net: a Conv1d slides along the channels of the pooled descriptor."""

    def __init__(self, pool_channels=False):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.b = nn.Conv2d(8 if pool_channels else 16, 4, 1)
        self.pool_channels = pool_channels

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.pool_channels:  # channel pairs averaged: (b, hw, 16) -> (b, hw, 8)
            y = F.adaptive_avg_pool1d(h.flatten(2).transpose(1, 2), 8)
            return self.b(y.transpose(1, 2).reshape(len(x), 8, *h.shape[2:]))
        y = self.conv(h.mean((2, 3), keepdim=True).squeeze(-1).transpose(-1, -2))
        return self.b(h * y.transpose(-1, -2).unsqueeze(-1).sigmoid())


def test_a_window_over_the_channels_makes_the_group_inexact_or_blocks_it():
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(ECA().eval(), (torch.randn(1, 3, 8, 8),))
    g = group_of(p.graph, "a")  # pruning changes which neighbours each channel's conv sees
    assert g.prunable and not g.exact
    assert "'conv' slides a kernel over the pruned dim" in g.stats_notes
    plan = p.plan(0.5)
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and "slides a kernel" in v["masked_equivalence"]["skipped"]
    pooled = build_graph(ECA(pool_channels=True).eval(), torch.randn(1, 3, 8, 8))
    assert group_of(pooled, "a").reason == ("'adaptive_avg_pool1d' pools or resizes the pruned "
                                            "dim and changes its size")


def test_a_torch_layer_subclass_with_its_own_forward_is_pruned_but_not_called_exact():
    """BiT's StdConv2d standardises each filter over its inputs before the conv: pruning its
    inputs changes that, which the conv's table cannot know."""
    from viewer.core.prune import Pruner

    class StdConv2d(nn.Conv2d):
        def forward(self, x):
            w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                             training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), StdConv2d(16, 4, 3, padding=1)
            self.plain = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.plain(self.b(torch.relu(self.a(x))))

    torch.manual_seed(0)
    p = Pruner(Net().eval(), (torch.randn(1, 3, 8, 8),))
    assert p.graph.node("b").own_forward == "StdConv2d"
    assert p.graph.node("a").own_forward is p.graph.node("plain").own_forward is None
    g = group_of(p.graph, "a")
    assert g.prunable and not g.exact and g.stats_notes == [
        "'b' (StdConv2d) replaces the forward of the torch layer it extends: DepView prunes it "
        "as a CONV and cannot check what its own forward computes"]
    assert g.opaque_only  # (nothing else makes it inexact: the outputs may say it is exact)
    plan = p.plan(0.5)
    v = p.verify(p.apply(plan), plan)
    # ... and they do not: its standardisation sees the inputs it lost
    skipped = v["masked_equivalence"]["skipped"]
    assert v["forward"] and "replaces the forward" in skipped and "checked all the same" in skipped


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's norm + activation: its own forward calls F.batch_norm, then the activation
    (``mix``: and adds the mean over the channels, which no per-channel layer does)."""

    def __init__(self, n, mix=False):
        super().__init__(n)
        self.mix = mix

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         False, 0.0, self.eps)
        return torch.relu(x + x.mean(1, keepdim=True) if self.mix else x)


class NormActNet(nn.Module):
    def __init__(self, mix=False, ln=False):
        super().__init__()
        self.a, self.na = nn.Conv2d(3, 8, 3, padding=1), BatchNormAct2d(8, mix)
        self.b, self.nb = nn.Conv2d(8, 8, 3, padding=1), BatchNormAct2d(8)
        self.c = nn.Conv2d(8, 6, 1)
        self.ln = nn.GroupNorm(1, 8) if ln else nn.Identity()  # (over channels: inexact)

    def forward(self, x):
        return self.c(self.nb(self.b(self.ln(self.na(self.a(x))))))


@pytest.mark.parametrize("mix, ln", [(False, False), (True, False), (False, True)])
def test_groups_inexact_only_through_a_layers_own_forward_are_checked_by_the_outputs(mix, ln):
    # timm's BatchNormAct2d made every group of a timm CNN inexact: masked equivalence was
    # skipped for all of them, though the outputs can tell whether its forward keeps the
    # channels apart
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(NormActNet(mix, ln).eval(), (torch.randn(2, 3, 8, 8),))
    first, second = (next(g for g in p.groups if g.root == r) for r in "ab")
    assert not first.exact and first.opaque_only != ln and second.opaque_only
    plan = p.plan(0.5)
    assert set(plan.removed) == {first.id, second.id}
    me = p.verify(p.apply(plan), plan)["masked_equivalence"]
    if not mix and not ln:
        assert me["ok"] and me["max_abs_diff"] < 1e-5, me
        assert me["own_forward"].startswith("2 pruned groups hold a layer with its own forward")
    elif mix:  # the mean over the channels shows: said, and the check falls back on nothing
        assert "checked all the same" in me["skipped"] and "exact_groups" not in me, me
    else:  # the norm over the channels is inexact for sure; the other group is checked,
        # and counted there, not among the inexact ones (it said "2 ... (and more)")
        assert me["skipped"].startswith("1 pruned group is inexact: 'na'") and \
            "(and more)" not in me["skipped"], me
        part = me["exact_groups"]
        assert part["ok"] and part["groups"] == 1 and part["own_forward"] == 1, me


class SharedDepthwise(nn.Module):
    """One depthwise conv run on two maps (CoaT's position encodings, shared by blocks)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([self.dw(self.a(x)), self.dw(self.b(x))], 1))


def test_a_depthwise_conv_called_twice_ties_the_channels_of_both_maps():
    # before: "'dw' and 'dw:1' share their weights; DepView cannot follow such a tie for a
    # DEPTHWISE_CONV layer": both maps blocked
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(SharedDepthwise().eval(), (torch.randn(2, 3, 8, 8),))
    g = next(grp for grp in p.groups if grp.root == "a")
    assert not p.reason(g) and g.n_units == 8
    assert {m.node_name for m in g.members} >= {"a", "b", "dw", "dw:1", "head"}
    assert np.array_equal(g.member("a", "out").unit, g.member("b", "out").unit)
    assert not any(grp.root == "b" for grp in p.groups)  # (b's channels are a's group's)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.dw.weight.shape == (4, 1, 3, 3) and pruned.head.in_channels == 8
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_glu_pairs_the_two_halves_it_multiplies():
    """Conformer's convolution module: pointwise conv to 2C, GLU back to C, depthwise conv."""
    from viewer.core.prune import Pruner

    class ConvModule(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.pw1, self.glu = nn.Conv1d(c, 2 * c, 1), nn.GLU(dim=1)
            self.dw = nn.Conv1d(c, c, 3, padding=1, groups=c)
            self.bn, self.pw2 = nn.BatchNorm1d(c), nn.Conv1d(c, 4, 1)

        def forward(self, x):
            return self.pw2(F.silu(self.bn(self.dw(self.glu(self.pw1(x))))))

    torch.manual_seed(0)
    model = ConvModule().eval()
    model.bn.running_mean.uniform_(-1, 1)
    p = Pruner(model, (torch.randn(2, 16, 10),))
    g = group_of(p.graph, "pw1")
    assert g.prunable and g.n_units == 16 and g.exact
    assert g.member("pw1").indices([3]).tolist() == [3, 19]  # value 3 and its gate 3 + 16
    assert {(m.node_name, m.side) for m in g.members} >= {("dw", "in"), ("bn", "out"),
                                                          ("pw2", "in")}
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert pruned.pw1.out_channels == 16 and v["masked_equivalence"]["ok"], v


def test_a_pointwise_conv_keeps_a_spatial_dim_exactly_and_a_norm_over_it_does_not():
    from viewer.core.groups import _search

    class Spatial(nn.Module):  # a group along the last dim of a (1, C, H, W) table
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.randn(1, 4, 6, 6))
            self.gn, self.c = nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.c(self.gn(x + self.pos))

    g = build_graph(Spatial().eval(), torch.randn(1, 4, 6, 6))
    grp = _search(g, g.node("pos"), "out", 3, np.arange(6), -1)
    assert grp.stats_notes == ["'gn' normalises over the pruned dim"]  # not 'c' (1x1)


class SkipJoin(nn.Module):
    """A UNet's up block: the upsampled map (32 channels) joined to a skip (16), normalised
    in 8 groups of 6: group 5 holds the map's channels 30, 31 and the skip's 0-3."""

    def __init__(self):
        super().__init__()
        self.up, self.skip = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1)
        self.norm, self.out = nn.GroupNorm(8, 48), nn.Conv2d(48, 2, 1)

    def forward(self, x):
        return self.out(self.norm(torch.cat([self.up(x), self.skip(x)], 1)))


def test_a_group_norm_group_straddling_a_concat_takes_both_parts_channels():
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    m, x = SkipJoin().eval(), torch.randn(1, 3, 8, 8)
    groups = all_groups(build_graph(m, x))
    g = next(g for g in groups if g.root == "up")
    by = {(mm.node_name, mm.side): mm for mm in g.members}
    # the straddling group's six channels are one unit: the map's 30, 31 and the skip's 0-3
    up, skip, norm = by[("up", "out")], by[("skip", "out")], by[("norm", "in")]
    unit = dict(zip(up.pos.tolist(), up.unit.tolist(), strict=True))
    assert unit[30] == unit[31] == skip.unit[skip.pos.tolist().index(0)]
    # every unit is whole groups of the norm, and each position has its source's unit
    src = {**{p: u for p, u in unit.items()},
           **{32 + p: u for p, u in zip(skip.pos.tolist(), skip.unit.tolist(), strict=True)}}
    assert {p: u for p, u in zip(norm.pos.tolist(), norm.unit.tolist(), strict=True)} == \
        {p: src[p] for p in norm.pos.tolist()}
    for u in set(norm.unit.tolist()):
        assert len({p // 6 for p in norm.pos[norm.unit == u].tolist()}) * 6 == \
            int((norm.unit == u).sum())
    # and it prunes: the other groups of the norm stay whole, masked equivalence holds
    p = Pruner(m, x, groups=groups)
    assert not p.reason(g)
    plan = p.plan(0.5, "l1")
    pruned = p.apply(plan)
    assert pruned.norm.num_channels == pruned.norm.num_groups * 6 < 48
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]


class Seq2Seq(nn.Module):
    """The encoder's final hidden state is the decoder's initial one: one group of hidden
    units spans both GRUs."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 12)
        self.enc = nn.GRU(12, 24, batch_first=True)
        self.dec = nn.GRU(12, 24, batch_first=True)
        self.out = nn.Linear(24, 30)

    def forward(self, src, tgt):
        _, h = self.enc(self.emb(src))
        y, _ = self.dec(self.emb(tgt), h)
        return self.out(y)


def test_an_rnn_initial_state_from_another_rnn_couples_their_hidden_units():
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model = Seq2Seq().eval()
    x = (torch.randint(0, 30, (2, 5)), torch.randint(0, 30, (2, 4)))
    p = Pruner(model, x)
    g = next(grp for grp in p.groups if grp.root == "enc")
    sides = {(m.node_name, m.side) for m in g.members}
    assert {("enc", "out"), ("dec", "out"), ("out", "in")} <= sides
    assert not p.reason(g) and g.n_units == 24
    assert all(grp.root != "dec" for grp in p.groups)  # no second group for the decoder
    plan = Plan({g.id: list(range(0, 24, 3))})
    pruned = p.apply(plan)
    assert pruned.enc.hidden_size == pruned.dec.hidden_size == 16
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


class FunctionalNorms(nn.Module):
    """nanoGPT's LayerNorm (F.layer_norm with the module's own weight and bias) and an RMS
    norm written with F.rms_norm: their affine tensors lose what the normalised dim loses."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 32)
        self.ln_w, self.ln_b = nn.Parameter(torch.rand(32) + 0.5), nn.Parameter(torch.randn(32))
        self.b = nn.Linear(32, 16)
        self.rms_w = nn.Parameter(torch.rand(16) + 0.5)
        self.c = nn.Linear(16, 2)

    def forward(self, x):
        h = F.layer_norm(self.a(x), self.ln_w.shape, self.ln_w, self.ln_b)
        h = F.rms_norm(self.b(F.gelu(h)), self.rms_w.shape, self.rms_w)
        return self.c(F.gelu(h))


def test_functional_layer_norm_weights_join_the_group_of_their_input():
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = FunctionalNorms().eval(), torch.randn(3, 8)
    p = Pruner(model, (x,))
    roots = {g.root: g for g in p.groups}
    assert set(roots) == {"a", "b", "c"}  # no group of its own for a norm's weight
    for root, params in (("a", {"ln_w", "ln_b"}), ("b", {"rms_w"})):
        g = roots[root]
        assert {m.node_name for m in g.members if m.side == "param"} == params
        assert not p.reason(g) and not g.exact  # normalising over pruned channels
    plan = Plan({roots["a"].id: [0, 5, 9], roots["b"].id: [1, 2]})
    pruned = p.apply(plan)
    assert pruned.ln_w.shape == pruned.ln_b.shape == (29,) and pruned.rms_w.shape == (14,)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["shapes_kept"], v


_NO_AFFINE = {
    "layer_norm": lambda d: nn.LayerNorm(d, elementwise_affine=False),
    "layer_norm_2d": lambda d: nn.LayerNorm((3, d), elementwise_affine=False),
    "rms_norm": lambda d: nn.RMSNorm(d, elementwise_affine=False),
}


@pytest.mark.parametrize("norm", list(_NO_AFFINE))
def test_a_norm_without_weights_shrinks_its_normalized_shape(norm):
    # A weight-less LayerNorm was no member of its group: its normalized_shape kept the old
    # width and the group was blocked ("Given normalized_shape=[32] ... got [2, 31]")
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), _NO_AFFINE[norm](32), nn.Linear(32, 4)).eval()
    x = torch.randn(2, 3, 8)
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.root == "0")
    assert not p.reason(g) and not g.exact  # statistics over fewer channels
    plan = Plan({g.id: [1, 4, 30]})
    pruned = p.apply(plan)
    assert tuple(pruned[1].normalized_shape)[-1] == 29
    # the oracle: the same model built by hand at 29 channels
    keep = [i for i in range(32) if i not in (1, 4, 30)]
    hand = nn.Sequential(nn.Linear(8, 29), _NO_AFFINE[norm](29), nn.Linear(29, 4)).eval()
    with torch.no_grad():
        hand[0].weight.copy_(model[0].weight[keep])
        hand[0].bias.copy_(model[0].bias[keep])
        hand[2].weight.copy_(model[2].weight[:, keep])
        hand[2].bias.copy_(model[2].bias)
        assert torch.allclose(pruned(x), hand(x), atol=1e-6)


def test_a_norm_without_weights_over_the_pruned_dim_before_its_last_blocks_it():
    model = nn.Sequential(nn.Conv1d(3, 8, 1), nn.LayerNorm((8, 5), elementwise_affine=False),
                          nn.Conv1d(8, 2, 1))
    g = group_of(build_graph(model, torch.randn(2, 3, 5)), "0")
    assert "'1' has no weight and normalises over the pruned dim before its last" in g.reason


class FunctionalConvs(nn.Module):
    """Convs written with F.conv2d on the module's own tensors, one of them grouped."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(8, 3, 3, 3)), nn.Parameter(torch.randn(8))
        self.w2 = nn.Parameter(torch.randn(8, 2, 3, 3))  # groups=4
        self.w3 = nn.Parameter(torch.randn(6, 8, 1, 1))
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
        g = F.conv2d(h, self.w2, padding=1, groups=4)
        return self.head(F.relu(F.conv2d(h + g, self.w3)))


def test_a_functional_conv_prunes_the_tensors_it_is_given():
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = FunctionalConvs().eval(), torch.randn(2, 3, 6, 6)
    p = Pruner(model, (x,))
    by_params = {frozenset(m.node_name for m in g.members if m.side == "param"): g
                 for g in p.groups}
    mid = by_params[frozenset({"w1", "b1", "w3"})]  # w1's rows, b1, w3's columns
    assert "grouped functional conv2d" in p.reason(mid)
    out = next(g for g in p.groups if {m.node_name for m in g.members} >= {"w3", "head"})
    assert not p.reason(out)
    plan = Plan({out.id: [1, 4]})
    pruned = p.apply(plan)
    assert pruned.w3.shape == (4, 8, 1, 1) and pruned.head.in_channels == 4
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_an_rnn_cell_with_its_own_forward_is_pruned_as_a_cell_but_marked_inexact():
    class ScaledCell(nn.GRUCell):
        def forward(self, x, h=None):
            return super().forward(x * 0.5, h)

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell, self.out = ScaledCell(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = None
            for t in range(x.shape[1]):
                h = self.cell(x[:, t], h)
            return self.out(h)

    g = build_graph(Loop().eval(), torch.randn(2, 3, 4))
    hidden = next(grp for grp in all_groups(g) if grp.root == "cell")
    assert hidden.n_units == 8 and hidden.prunable and not hidden.exact
    assert any("ScaledCell" in n for n in hidden.stats_notes)


class WritesInPlace(nn.Module):
    """``y[index] = value`` on a conv's output, in the ways models write it."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c3 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        y = self.c1(x)
        if self.how == "one channel":
            y[:, 2] = 5.0
        elif self.how == "first channels":
            y[:, :4] = self.c3(x)[:, :4]
        elif self.how == "tensor index":
            y[:, torch.tensor([1, 3])] = 0
        elif self.how == "mask of values":
            y[y < 0] = y[y < 0] * 0.1
        elif self.how == "mask":
            y[y < 0] = 0
        elif self.how == "one row":
            y[:, :, 0] = 0
        elif self.how == "one row of another conv":
            y[:, :, 0] = self.c3(x)[:, :, 1]
        elif self.how == "everything":
            y[:] = self.c3(x)
        return self.c2(y)


@pytest.mark.parametrize("how, coupled", [
    ("one channel", None), ("first channels", None), ("tensor index", None),
    ("mask of values", None), ("mask", {"c1", "c2"}), ("one row", {"c1", "c2"}),
    ("one row of another conv", {"c1", "c2", "c3"}), ("everything", {"c1", "c2", "c3"})])
def test_a_write_into_a_tensor_follows_its_index(how, coupled):
    """A write at fixed channels blocks the group (pruning would move the write onto other
    channels: the pruned model computes something else); a write that takes the channels
    whole keeps them, and couples its value's channels. Oracle: masked equivalence."""
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = WritesInPlace(how).eval(), torch.randn(2, 3, 6, 6)
    p = Pruner(model, (x,))
    g = next(g for g in p.groups if g.root == "c1")
    if coupled is None:
        assert not g.prunable and "setitem" in g.reason
        return
    assert g.prunable and {m.node_name for m in g.members} == coupled
    plan = p.plan(0.5)
    assert plan.removed
    res = p.verify(p.apply(plan), plan)
    assert res["forward"] and res["masked_equivalence"]["ok"], res


class WritesThroughAView(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.c1(x)
        if self.how == "narrow":
            y.narrow(1, 0, 2).zero_()
        elif self.how == "chunk":
            y.chunk(2, dim=1)[1].mul_(3.0)
        elif self.how == "unbind":
            y.unbind(1)[5].fill_(1.0)
        elif self.how == "then in place":
            y[:, :2].zero_()
            y.relu_()
        elif self.how == "one row":
            y[:, :, 0].zero_()
        elif self.how == "a slice of a slice":  # region not followed: blocks every group
            y[:, :, 1:][:, :, 0].zero_()
        elif self.how == "an in-place layer":
            self.act(y[:, :4])
        elif self.how == "an in-place function":
            F.relu(y[:, :4], inplace=True)
        elif self.how == "a reshape":
            y.view(y.shape[0], 2, -1).mul_(2.0)
        return self.c2(y)


@pytest.mark.parametrize("how, prunable", [
    ("narrow", False), ("chunk", False), ("unbind", False), ("then in place", False),
    ("one row", True), ("a slice of a slice", False), ("a reshape", False),
    ("an in-place layer", False), ("an in-place function", False)])
def test_an_in_place_op_on_a_slice_writes_the_sliced_tensor(how, prunable):
    """``y.narrow(1, 0, 2).zero_()`` writes y's first two channels: a later read of ``y`` goes
    through a ``write`` node, which blocks a group on the written dim (it pruned through, and
    the pruned model zeroed other channels) and keeps one it takes whole."""
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = WritesThroughAView(how).eval(), torch.randn(2, 3, 6, 6)
    p = Pruner(model, (x,))
    write = [n for n in p.graph.nodes if n.target == "write"]
    assert len(write) == 1 and [e.source for e in p.graph.in_edges[write[0].id]][0] \
        == p.graph.by_name["c1"].id
    g = next(g for g in p.groups if g.root == "c1")
    assert g.prunable == prunable, p.reason(g)
    if not prunable:
        assert "write" in p.reason(g)
        return
    plan = p.plan(0.5)
    assert plan.removed
    res = p.verify(p.apply(plan), plan)
    assert res["masked_equivalence"]["ok"], res


class SizedPositions(nn.Embedding):
    """Hugging Face's learned/sinusoidal position embeddings (RoFormer, BlenderbotSmall):
    called with the input's shape, it makes its positions inside and takes no tensor."""

    def forward(self, shape: torch.Size):
        return super().forward(torch.arange(shape[1]))


def test_a_layer_called_without_a_tensor_roots_its_group():
    # its rule read the shape of an input it does not have (IndexError, "DepView could not
    # follow these channels"), for every group reaching it
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(50, 16), SizedPositions(10, 16)
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

        def forward(self, ids):
            return self.fc2(torch.relu(self.fc1(self.tok(ids) + self.pos(ids.shape))))

    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(Net().eval(), (torch.randint(0, 50, (2, 6)),))
    g = next(g for g in p.groups if g.root == "tok")
    assert not g.reason and {m.node_name for m in g.members} == {"tok", "pos", "fc1"}
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.pos.embedding_dim == 8 and pruned.tok.embedding_dim == 8
    assert p.verify(pruned, plan)["forward"]


@pytest.mark.parametrize("how", ["type_as", "to"])
def test_a_tensor_that_only_gives_a_dtype_is_not_coupled(how):
    # x.type_as(y) was an elementwise op of x and y: y's shape blocked x's group (HF Funnel)
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 16), nn.Linear(16, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.relu(h.type_as(x) if how == "type_as" else h.to(x)))

    g = group_of(build_graph(Net(), torch.randn(4, 3)), "a")
    assert g.prunable and {m.node_name for m in g.members} == {"a", "b"}


def test_a_layer_that_returns_its_input_is_not_a_write():
    # Identity and eval-mode Dropout return the very tensor they were given: on a slice,
    # that is no write to the sliced tensor (a "write" node blocked the group)
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 16), nn.Linear(16, 2)
            self.drop, self.ident = nn.Dropout(0.1), nn.Identity()

        def forward(self, x):
            h = self.a(x)
            first = self.ident(self.drop(h[:, :8]))
            return self.b(h) + first.sum(-1, keepdim=True)

    g = build_graph(Net().eval(), torch.randn(4, 3))
    assert not [n for n in g.nodes if n.target == "write"]
    assert group_of(g, "a").prunable


@pytest.mark.parametrize("copy", [False, True])
def test_a_view_made_before_a_write_sees_it_a_copy_does_not(copy):
    # v = y.flatten(2), then y[:, :2].zero_(): v reads the zeroed channels, which the graph
    # (v made from y before the write) did not show: the group pruned through, and the pruned
    # model zeroed two other channels
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.fc, self.out = nn.Conv2d(3, 8, 1), nn.Linear(4, 3), nn.Linear(24, 2)

        def forward(self, x):
            y = self.c1(x)
            v = y.flatten(2).clone() if copy else y.flatten(2)
            y[:, :2].zero_()
            return self.out(self.fc(v).flatten(1))

    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(Net().eval(), (torch.randn(2, 3, 2, 2),))
    g = next(g for g in p.groups if g.root == "c1")
    writes = [n for n in p.graph.nodes if n.target == "write"]
    if copy:
        assert not writes and g.prunable
        plan = p.plan(0.5)
        assert plan.removed and p.verify(p.apply(plan), plan)["masked_equivalence"]["ok"]
    else:
        assert [p.graph.nodes[e.source].name for e in p.graph.in_edges[writes[0].id]][0] \
            == "flatten"
        assert not g.prunable and "writes into a tensor through a view" in g.reason


class ChunkReachedFromItsParts(nn.Module):
    """``side`` is traced first, so its group reaches the chunk from part 2's side (ProphetNet's
    ``hidden_states.chunk(1 + ngram, 1)`` did so through its decoder)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 12)
        self.side = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        s = self.side(x)
        a, b, c = self.fc(x).chunk(3, dim=-1)
        return self.head(s + c + b + a)


def test_a_chunk_reached_from_a_later_part_keeps_that_parts_positions():
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    m, x = ChunkReachedFromItsParts().eval(), torch.randn(2, 4)
    p = Pruner(m, (x,))
    owners = [g for g in p.groups if any(mm.node_name == "side" for mm in g.members)]
    assert len(owners) == 1  # was also alone in a group blocked by an IndexError
    g = owners[0]
    assert not p.reason(g) and g.n_units == 4
    # position r of every part goes with unit r of side: fc rows r, 4 + r, 8 + r
    fc = g.member("fc")
    assert sorted(fc.indices([1]).tolist()) == [1, 5, 9]
    plan = Plan({g.id: [1, 2]})
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"]


class CrossAttention(nn.Module):
    """Queries from latents attend to a memory of another width (kdim = vdim = 12), read by
    k_proj_weight / v_proj_weight of their own; ``residual``: the queries' stream goes on."""

    def __init__(self, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.kv, self.q = nn.Linear(6, 12), nn.Linear(6, 32)
        self.att = nn.MultiheadAttention(32, 4, kdim=12, vdim=12, batch_first=True)
        self.o = nn.Linear(32, 2)

    def forward(self, x, lat):
        kv = torch.relu(self.kv(x))
        h = self.q(lat)
        a = self.att(h, kv, kv, need_weights=False)[0]
        return self.o(h + a if self.residual else a)


def test_mha_with_its_own_key_width_prunes_the_memory_through_its_key_and_value_weights():
    # was blocked ("kdim/vdim different from embed_dim: not supported"), and so was every
    # group reaching the attention
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, inputs = CrossAttention().eval(), (torch.randn(2, 7, 6), torch.randn(2, 3, 6))
    p = Pruner(model, inputs)
    kv = next(grp for grp in p.groups if grp.root == "kv")
    assert not p.reason(kv) and kv.exact and kv.n_units == 12
    att = [m for m in kv.members if m.node_name == "att"]
    assert [(m.side, m.port) for m in att] == [("in", 1), ("in", 2)]
    assert [d.get("port") for d in kv.to_dict()["members"] if d["node"] == "att"] == [1, 2]
    # the queries' width and the output's are coupled by count; paired by index, they are
    # one group without a residual too (were two, each blocked: "input and output widths in
    # different groups"), and no channel is in two groups
    q = next(grp for grp in p.groups if grp.root == "q")
    assert not p.reason(q) and q.multiple_of == 4
    assert {(m.node_name, m.side) for m in q.members} >= {("att", "in"), ("att", "out"),
                                                           ("o", "in")}
    assert [grp.root for grp in p.groups] == ["kv", "q", "o"]
    plan = Plan({q.id: [0, 9, 18, 27]})  # one inner dim of each head
    pruned = p.apply(plan)
    assert (pruned.att.embed_dim, pruned.att.head_dim, pruned.o.in_features) == (28, 7, 28)
    masked = p.masked_model(plan)  # (scaled as the pruned model's 1/sqrt(head_dim) is)
    with torch.no_grad():
        masked.att.q_proj_weight *= math.sqrt(8 / 7)
        masked.att.in_proj_bias[:32] *= math.sqrt(8 / 7)
        torch.testing.assert_close(pruned(*inputs), masked(*inputs), atol=1e-5, rtol=1e-5)
    plan = Plan({kv.id: [0, 3, 4, 10]})
    pruned = p.apply(plan)
    keep = [1, 2, 5, 6, 7, 8, 9, 11]
    assert (pruned.att.kdim, pruned.att.vdim, pruned.att.embed_dim) == (8, 8, 32)
    assert torch.equal(pruned.att.k_proj_weight, model.att.k_proj_weight[:, keep])
    assert torch.equal(pruned.att.v_proj_weight, model.att.v_proj_weight[:, keep])
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_mha_with_its_own_key_width_loses_query_heads_dims_with_its_stream():
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model = CrossAttention(residual=True).eval()
    x, lat = torch.randn(2, 7, 6), torch.randn(2, 3, 6)
    p = Pruner(model, (x, lat))
    g = next(grp for grp in p.groups if grp.root == "q")
    assert not p.reason(g) and g.multiple_of == 4
    assert {(m.node_name, m.side) for m in g.members} >= {("att", "in"), ("att", "out")}
    plan = Plan({g.id: [0, 9, 18, 27]})  # 4 of 32 channels: one inner dim of each head
    pruned = p.apply(plan)
    assert (pruned.att.embed_dim, pruned.att.head_dim, pruned.att.kdim) == (28, 7, 12)
    assert pruned.att.q_proj_weight.shape == (28, 28)
    assert pruned.att.k_proj_weight.shape == pruned.att.v_proj_weight.shape == (28, 12)
    # the oracle: the masked model, its queries scaled so that q.k / sqrt(8) over the kept
    # dims is q.k / sqrt(7) as the pruned model computes it (the only inexact step)
    masked = p.masked_model(plan)
    with torch.no_grad():
        masked.att.q_proj_weight *= math.sqrt(8 / 7)
        masked.att.in_proj_bias[:32] *= math.sqrt(8 / 7)
        torch.testing.assert_close(pruned(x, lat), masked(x, lat), atol=1e-5, rtol=1e-5)


class OutInWeight(nn.Module):
    """A weight stored (out, in) as torch's layers store theirs, used as ``x @ W.t()``."""

    def __init__(self):
        super().__init__()
        self.inp, self.fc2 = nn.Linear(4, 8), nn.Linear(32, 3)
        self.W = nn.Parameter(torch.randn(32, 8))

    def forward(self, x):
        return self.fc2(F.relu(self.inp(x) @ self.W.t()))


class KANLayer(nn.Module):
    """Chebyshev-KAN coefficients (in, out, degree) contracted by einsum."""

    def __init__(self):
        super().__init__()
        self.inp, self.fc2 = nn.Linear(4, 8), nn.Linear(32, 3)
        self.coeffs = nn.Parameter(torch.randn(8, 32, 4))
        self.register_buffer("ar", torch.arange(4))

    def forward(self, x):
        t = torch.tanh(self.inp(x)).unsqueeze(-1).expand(-1, -1, 4).acos()
        return self.fc2(F.relu(torch.einsum("bid,iod->bo", (t * self.ar).cos(), self.coeffs)))


@pytest.mark.parametrize("cls, weight, dim", [(OutInWeight, "W", 0), (KANLayer, "coeffs", 1)])
def test_a_bare_weight_creates_channels_along_a_dim_that_is_not_its_last(cls, weight, dim):
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    m, x = cls().eval(), torch.randn(3, 4)
    p = Pruner(m, (x,))
    # the 32 hidden units fc2 reads had no group at all
    hidden = [g for g in p.groups if any(mm.node_name == "fc2" and mm.side == "in"
                                         for mm in g.members)]
    assert len(hidden) == 1 and hidden[0].n_units == 32 and not p.reason(hidden[0])
    assert hidden[0].member(weight).dim == dim
    plan = Plan({hidden[0].id: list(range(0, 32, 2))})
    pruned = p.apply(plan)
    assert getattr(pruned, weight).shape[dim] == 16 and pruned.fc2.in_features == 16
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]
    assert [(g.root, g.n_units) for g in all_groups(p.graph, reuse=False)] == \
        [(g.root, g.n_units) for g in p.groups]


class MegviiShuffle(nn.Module):
    """The official ShuffleNetV2 channel split: even channels to one branch, odd to the other,
    by a reshape that merges channel pairs with the batch."""

    def __init__(self):
        super().__init__()
        self.stem, self.branch = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        x = x.reshape(b * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
        return self.head(torch.cat((x[0], self.branch(x[1])), 1))


@pytest.mark.parametrize("batch", [1, 2, 4])
def test_channels_merged_with_the_batch_come_back_whatever_the_batch(batch):
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(MegviiShuffle().eval(), (torch.randn(batch, 3, 8, 8),))
    stem = p.groups[0]
    # pairs (2i, 2i+1) of the stem go together; at batch >= 2 the -1 dim (the batch) took
    # the channels and the stem was one unit reaching the output
    assert stem.root == "stem" and stem.n_units == 8 and not p.reason(stem)
    assert sorted(stem.member("stem").indices([3]).tolist()) == [6, 7]
    plan = p.plan(0.5)
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"]


class FunctionalDepthwise(nn.Module):
    """Mamba's causal conv: the layer's weight given to F.conv1d with groups=C."""

    def __init__(self, c=8):
        super().__init__()
        self.inp, self.out = nn.Linear(4, c), nn.Linear(c, 4)
        self.conv1d = nn.Conv1d(c, c, 3, groups=c, padding=2)

    def forward(self, x):
        h = self.inp(x).transpose(1, 2)
        h = F.conv1d(h, self.conv1d.weight, self.conv1d.bias, padding=2, groups=h.shape[1])
        return self.out(h[..., :x.shape[1]].transpose(1, 2))


def test_a_functional_depthwise_conv_prunes_its_channels_and_its_layer_follows():
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(FunctionalDepthwise().eval(), (torch.randn(2, 6, 4),))
    g = p.groups[0]
    # was blocked: "a grouped functional conv1d call"
    assert g.root == "inp" and g.n_units == 8 and not p.reason(g)
    assert {(m.node_name, m.dim) for m in g.members} >= {("conv1d.weight", 0),
                                                         ("conv1d.bias", 0)}
    plan = Plan({g.id: [1, 4, 6]})
    pruned = p.apply(plan)
    # the layer was never called, yet its attributes follow its weight
    c = pruned.conv1d
    assert (c.in_channels, c.out_channels, c.groups, tuple(c.weight.shape)) == (5, 5, 5,
                                                                                (5, 1, 3))
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]


class PositionTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(self.a(x) + torch.sin(torch.arange(8.0) / 3))


def test_a_table_made_inside_forward_is_named_with_its_shape_and_what_it_is():
    g = build_graph(PositionTable().eval(), torch.randn(2, 4))
    assert all_groups(g)[0].reason == (
        "it reaches a tensor computed inside forward 'constant' [8] from neither inputs nor "
        "weights (a position or frequency table, a mask): its values do not follow a pruned "
        "width")


class SparseGCN(nn.Module):
    """Kipf's GCN with a sparse adjacency: sparse.mm(A, X) mixes nodes, keeps features."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x, adj):
        return self.l2(torch.sparse.mm(adj, F.relu(torch.spmm(adj, self.l1(x)))))


def test_a_sparse_matmul_passes_the_features_it_does_not_contract():
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    a = (torch.rand(10, 10) > 0.6).float() + torch.eye(10)
    p = Pruner(SparseGCN().eval(), (torch.randn(10, 8), (a / a.sum(1, keepdim=True)).to_sparse()))
    hidden = p.groups[0]
    # was blocked: "changes shape in a way DepView does not model"
    assert hidden.root == "l1" and hidden.n_units == 16 and not p.reason(hidden)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.l2.in_features == 8 and p.verify(pruned, plan)["masked_equivalence"]["ok"]


class SegNet(nn.Module):
    """SegNet: the decoder unpools with the encoder's max pool indices. ``how``: functional,
    modules, or a linear over the width before the pool (its group is on the plane)."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.e1, self.e2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.pool, self.unpool = nn.MaxPool2d(2, 2, return_indices=True), nn.MaxUnpool2d(2, 2)
        self.w, self.o = nn.Linear(8, 8), nn.Conv2d(16, 2, 1)

    def forward(self, x):
        x = F.relu(self.e1(x))
        if self.how == "width":
            x = self.w(x)
        if self.how == "functional":
            p, idx = F.max_pool2d(x, 2, 2, return_indices=True)
            return self.o(F.max_unpool2d(F.relu(self.e2(p)), idx, 2, 2))
        p, idx = self.pool(x)
        return self.o(self.unpool(F.relu(self.e2(p)), idx, output_size=x.size()))


@pytest.mark.parametrize("how", ["functional", "modules"])
def test_max_unpool_indices_keep_the_channels_of_the_pooled_values(how):
    # The encoder's group was blocked by its own probe: "Expected shape of indices to be same
    # as that of the input tensor"; the indices are positions within each channel's plane
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = SegNet(how).eval(), torch.randn(2, 3, 8, 8)
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.root == "e1")
    assert not p.reason(g) and g.exact
    # channel c of the indices is channel c of the unpooled values: e1 and e2 lose the same
    assert g.member("e2", "out").indices([3]).tolist() == [3]
    plan = Plan({g.id: [0, 3, 9]})
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_max_pool_indices_block_a_group_on_the_pooled_plane():
    g = group_of(build_graph(SegNet("width"), torch.randn(2, 3, 8, 8)), "w")
    assert "'pool' (module:torch.nn.modules.pooling.MaxPool2d) pools with indices" in g.reason


class SpatialTransformer(nn.Module):
    """An STN: a localisation conv gives 2 coordinate channels; F.grid_sample reads the
    features there. ``plane``: a linear over the width before the sampling."""

    def __init__(self, plane=False):
        super().__init__()
        self.plane = plane
        self.c1, self.loc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 2, 3, padding=1)
        self.w, self.c2 = nn.Linear(16, 16), nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.c1(x))
        grid = torch.tanh(self.loc(h)).permute(0, 2, 3, 1)
        if self.plane:
            h = self.w(h)
        return self.c2(F.grid_sample(h, grid, align_corners=False))


def test_grid_sample_keeps_the_channels_it_samples_and_blocks_its_coordinates():
    # every group through it was blocked: "changes shape in a way DepView does not model"
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(SpatialTransformer().eval(), (torch.randn(2, 3, 16, 16),))
    g = next(grp for grp in p.groups if grp.root == "c1")
    assert not p.reason(g) and g.exact
    assert {(m.node_name, m.side) for m in g.members} == {("c1", "out"), ("loc", "in"),
                                                          ("c2", "in")}
    loc = next(grp for grp in p.groups if grp.root == "loc")
    assert "'grid_sample' (grid_sample) reads its sampling coordinates from the pruned dim" \
        in p.reason(loc)
    plan = p.plan(0.5)
    assert list(plan.removed) == [g.id]
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    plane = group_of(build_graph(SpatialTransformer(plane=True), torch.randn(2, 3, 16, 16)),
                     "w")
    assert "'grid_sample' (grid_sample) samples positions along the pruned dim" in plane.reason


class VendoredConv1D(nn.Module):
    """Hugging Face GPT-2's Conv1D copied into a user's code: a Linear stored (in, out) and
    run as ``torch.addmm``, which DepView does not know as a layer."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


class AddmmMLP(nn.Module):
    """Two layers written as ``addmm`` (or ``baddbmm``) of bare parameters, or of
    :class:`VendoredConv1D` in a residual block."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        if how == "conv1d":
            self.inp, self.out = nn.Linear(5, 16), nn.Linear(16, 3)
            self.c_fc, self.c_proj = VendoredConv1D(48, 16), VendoredConv1D(16, 48)
            return
        self.w1, self.b1 = nn.Parameter(torch.randn(10, 32)), nn.Parameter(torch.randn(32))
        self.w2, self.b2 = nn.Parameter(torch.randn(32, 4)), nn.Parameter(torch.randn(4))

    def forward(self, x):
        if self.how == "conv1d":
            h = self.inp(x)
            return self.out(h + self.c_proj(torch.relu(self.c_fc(h))))
        if self.how == "addmm":
            return torch.addmm(self.b2, torch.tanh(torch.addmm(self.b1, x, self.w1)), self.w2)
        w1 = self.w1.expand(x.size(0), -1, -1)
        h = torch.tanh(torch.baddbmm(self.b1.view(1, 1, -1), x.unsqueeze(1), w1))
        return (h @ self.w2 + self.b2).squeeze(1)


@pytest.mark.parametrize("how", ["addmm", "baddbmm", "conv1d"])
def test_an_addmm_bias_is_one_group_with_the_matrix_columns_and_the_output(how):
    # The group rooted at b1 of addmm(b1, x, w1) held b1 and w2's rows but not w1's columns:
    # listed prunable, and its pruned model failed
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    x = torch.randn(2, 6, 5) if how == "conv1d" else torch.randn(2, 10)
    p = Pruner(AddmmMLP(how).eval(), (x,))
    groups = [g for g in p.groups if not p.reason(g)]
    hidden = {("c_fc.bias", 0), ("c_fc.weight", 1), ("c_proj.weight", 0)} if how == "conv1d" \
        else {("b1", 0), ("w1", 1), ("w2", 0)}
    assert any({(m.node_name, m.dim) for m in g.members} == hidden for g in groups)
    if how == "conv1d":  # the residual stream holds c_proj's bias and c_fc's rows
        stream = next(g for g in groups if g.root == "inp")
        assert {("c_proj.bias", 0), ("c_fc.weight", 0)} <= {(m.node_name, m.dim)
                                                            for m in stream.members}
    for g in groups:
        plan = Plan({g.id: [0, 3]})
        v = p.verify(p.apply(plan), plan)
        assert v["forward"] and v["masked_equivalence"]["ok"], (g.root, v)


@torch.jit.script
def _first4(x: torch.Tensor) -> torch.Tensor:
    return x[:, :4]


class UnseenSlice(nn.Module):
    """c2 reads channels 0..3 of c1 through code the trace cannot see."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)
        if how == "prehook":
            self.c2.register_forward_pre_hook(lambda m, inp: (inp[0][:, :4],))

    def forward(self, x):
        y = F.relu(self.c1(x))
        if self.how == "script":
            y = _first4(y)
        elif self.how == "numpy":
            y = torch.from_numpy(y.detach().numpy()[:, :4].copy())
        return self.head(F.relu(self.c2(y)).mean((2, 3)))


@pytest.mark.parametrize("how", ["prehook", "script", "numpy"])
def test_channels_read_by_code_the_trace_cannot_see_block_their_group(how):
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    m = UnseenSlice(how).eval()
    p = Pruner(m, (torch.randn(2, 3, 8, 8),))
    g = next(grp for grp in p.groups if grp.root == "c1")
    # was prunable, and removing c1's channel 0 changed what c2 read (masked equivalence
    # failed); now: blocked, saying where the channels went out of sight
    assert p.reason(g) == {
        "prehook": "'c2' has a forward pre-hook of its own that changes its inputs, which "
                   "DepView cannot see: do that in a forward instead",
        "script": "'relu' [2, 8, 8, 8] is read by nothing DepView traced, and 'constant' "
                  "[2, 4, 8, 8] comes from nowhere it traced: code it cannot see (a "
                  "TorchScript function?) seems to make one from the other",
        "numpy": "'numpy' hands its values to numpy, where DepView cannot follow them: keep "
                 "that computation in torch"}[how]
    plan = p.plan(0.5)
    assert g.id not in plan.removed
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"]
    # the oracle: that prune, forced by a pruner that did not see the dead end, is wrong
    blind = Pruner(m, (torch.randn(2, 3, 8, 8),), groups=[
        type(g)(**{**g.__dict__, "reasons": []})])
    forced = Plan({g.id: [0]})
    assert not blind.verify(blind.apply(forced), forced)["masked_equivalence"]["ok"]


def test_an_in_place_write_nothing_reads_again_is_not_a_dead_end():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.c1(x)
            z = self.out(y)
            y.relu_()  # y is not read again
            return z

    g = build_graph(Net().eval(), torch.randn(1, 3, 4, 4))
    assert group_of(g, "c1").prunable


class UnbatchedConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.g = nn.Conv2d(8, 8, 1, groups=2)
        self.t = nn.ConvTranspose2d(8, 6, 2, 2)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        return self.head(F.relu(self.t(self.g(self.dw(F.relu(self.c1(x)))))).mean((-2, -1)))


def test_convs_given_an_unbatched_input_find_their_channels_on_dim_0():
    from viewer.core.prune import Pruner

    def groups(x):
        torch.manual_seed(0)
        p = Pruner(UnbatchedConvs().eval(), (x,))
        plan = p.plan(0.5)
        v = p.verify(p.apply(plan), plan)
        assert v["forward"] and v["masked_equivalence"]["ok"]
        return [(g.root, g.n_units, p.reason(g)) for g in p.groups], \
            [(m.node_name, m.dim) for m in p.groups[0].members]

    unbatched, members = groups(torch.randn(3, 10, 12))
    batched, _ = groups(torch.randn(2, 3, 10, 12))
    # the same groups either way (were groups of H = 10 rows on dim 1, all blocked)
    assert unbatched == batched
    assert ("c1", 0) in members and ("g", 0) in members


def test_detach_passes_channels_through():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)).detach()[:, :6].sum(-1, keepdim=True)
                          .expand(-1, 8))

    g = build_graph(Net().eval(), torch.randn(2, 4))
    # detach was ignored: its result a tensor from nowhere, and a's group lost the slice
    assert [n.name for n in g.nodes if n.target == "detach"] == ["detach"]
    reached = {g.nodes[k[0]].name for k in group_of(g, "a").tensors}
    assert {"detach", "getitem"} <= reached


def test_an_in_place_copy_into_a_cache_from_nowhere_is_not_an_unseen_detour():
    # Mamba's conv_state.copy_(...): a cache tensor the trace did not see made, written in
    # place and not read again
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)
            self.cache = [torch.zeros(2, 8)]  # not a buffer: made outside the trace

        def forward(self, x):
            h = self.a(x)
            self.cache[0].copy_(h)
            return self.b(h)

    g = build_graph(Net().eval(), torch.randn(2, 4))
    # blocked by the copy into a fixed-width tensor, not as a detour through unseen code
    assert group_of(g, "a").reasons == ["it reaches a tensor computed inside forward "
                                        "'constant' [2, 8] from neither inputs nor weights (a "
                                        "position or frequency table, a mask): its values do "
                                        "not follow a pruned width"]


class PatchNet(nn.Module):
    """T2T-ViT / involution style: patches of a feature map (F.unfold) read by a linear, and
    an nn.Unfold -> nn.Fold round trip between two convs."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 9, 16)
        self.c2 = nn.Conv2d(8, 6, 1)
        self.unf, self.fold = nn.Unfold(3, padding=1), nn.Fold((8, 8), 3, padding=1)
        self.c3 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        h = self.c(x)
        y = self.fc(F.unfold(h, 3, padding=1).transpose(1, 2))  # (B, L, 16)
        z = self.c3(self.fold(self.unf(self.c2(h))))  # (B, 4, 8, 8)
        return y.sum((1, 2)) + z.sum((1, 2, 3))


def test_unfold_and_fold_map_each_channel_to_its_k_by_k_patch_rows():
    # F.unfold was an unknown op: every group through it was blocked ("changes shape")
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    m, x = PatchNet().eval(), torch.randn(2, 3, 8, 8)
    p = Pruner(m, (x,))
    by_root = {g.root: g for g in p.groups}
    g = by_root["c"]
    assert not p.reason(g) and g.n_units == 8
    fc_in = g.member("fc", "in")
    assert fc_in.indices([1]).tolist() == list(range(9, 18))  # channel 1: its 9 patch rows
    for root, units in (("c", [1, 5]), ("c", [0, 2, 3, 7]), ("c2", [0, 4])):
        grp = by_root[root]
        assert not p.reason(grp)
        plan = Plan({grp.id: units})
        v = p.verify(p.apply(plan), plan)
        assert v["masked_equivalence"]["ok"], (root, v)
    # fc's input rows are one unit per channel: a group rooted at fc's inputs is c's
    assert all(m.node_name != "fc" or m.side == "in" for m in g.members)


def _half_pruned(p, g=None, removed: int | None = None) -> nn.Module:
    """The model of ``p`` pruned by its ratio 0.5 plan, checked: group ``g`` lost ``removed``
    units (when given), and the pruned model runs and is masked-equivalent to the original."""
    plan = p.plan(0.5)
    if removed is not None:
        assert len(plan.removed[g.id]) == removed
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    return pruned


def _pruner(model: nn.Module, x: torch.Tensor):
    from viewer.core.prune import Pruner

    return Pruner(model.eval(), (x,))


class Windows(nn.Module):
    """``Tensor.unfold``: sliding windows along H (``how="slide"``), p x p patches along H and
    W read by a linear (``"patches"``), or windows along the channels (``"channels"``)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear({"slide": 8 * 3, "patches": 8 * 4, "channels": 2 * 3}[how], 5)

    def forward(self, x):
        h = self.c(x)
        if self.how == "slide":  # (B, 8, 6, 8, 3): the windows' mean over W, per row
            return self.fc(h.unfold(2, 3, 1).mean(3).permute(0, 2, 1, 3).flatten(2))
        if self.how == "patches":  # (B, 8, 4, 4, 2, 2) -> (B, 16 patches, 8 * 2 * 2)
            patches = h.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5)
            return self.fc(patches.reshape(x.shape[0], 16, -1))
        return self.fc(h.unfold(1, 2, 3).mean((2, 3)).flatten(1))  # (B, 3, 8, 8, 2)


@pytest.mark.parametrize("how", ["slide", "patches"])
def test_tensor_unfold_keeps_the_channels_in_place(how):
    # Tensor.unfold was an unknown op that changes shape: every group through it was blocked
    torch.manual_seed(0)
    p = _pruner(Windows(how), torch.randn(2, 3, 8, 8))
    g = next(grp for grp in p.groups if grp.root == "c")
    assert not p.reason(g) and g.exact and g.n_units == 8
    rows = {"slide": 3, "patches": 4}[how]  # channel 1: its rows of the linear's input
    assert g.member("fc", "in").indices([1]).tolist() == list(range(rows, 2 * rows))
    plan = p.plan(0.5)
    assert len(plan.removed[g.id]) == 4
    pruned = p.apply(plan)
    assert pruned.c.out_channels == 4 and pruned.fc.in_features == 4 * rows
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_tensor_unfold_along_the_channels_blocks_with_the_reason():
    torch.manual_seed(0)
    p = _pruner(Windows("channels"), torch.randn(2, 3, 8, 8))
    g = next(grp for grp in p.groups if grp.root == "c")
    assert "'unfold' (Tensor.unfold) takes windows of 2 along the pruned dim" in p.reason(g)


class TensorDot(nn.Module):
    """``torch.tensordot`` contracting a linear's output with a bare weight, ``dims`` given as
    paired lists or as a count."""

    def __init__(self, dims):
        super().__init__()
        self.dims = dims
        self.a = nn.Linear(4, 8)
        self.w = nn.Parameter(torch.randn(8, 6))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.relu(torch.tensordot(self.a(x), self.w, dims=self.dims)))


@pytest.mark.parametrize("dims", [([2], [0]), 1, ([-1], [-2])])
def test_tensordot_couples_its_contracted_dims_as_an_einsum_does(dims):
    # tensordot was an unknown op that changes shape: both groups through it were blocked
    torch.manual_seed(0)
    p = _pruner(TensorDot(dims), torch.randn(2, 5, 4))
    a = group_of(p.graph, "a")
    assert {(m.node_name, m.side, m.dim) for m in a.members} == {("a", "out", 2),
                                                                  ("w", "param", 0)}
    d = group_of(p.graph, "w", "out")  # the kept dim of w: the head's input
    assert {(m.node_name, m.side, m.dim) for m in d.members} == {("w", "param", 1),
                                                                  ("head", "in", 2)}
    assert not p.reason(a) and not p.reason(d) and a.exact and d.exact
    plan = p.plan(0.5)
    assert sorted(len(u) for u in plan.removed.values()) == [3, 4]
    pruned = p.apply(plan)
    assert pruned.w.shape == (4, 3)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


class Medians(nn.Module):
    """A per-channel statistic over a feature map's pixels: median, mode or k-th value."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = self.c(x).flatten(2)
        stat = {"median": lambda: h.median(2), "mode": lambda: torch.mode(h, 2),
                "kthvalue": lambda: torch.kthvalue(h, 5, 2)}[self.op]()
        # the indices are positions among the pixels, one per channel, as the values are
        return self.fc(stat.values * stat.indices)


@pytest.mark.parametrize("op", ["median", "mode", "kthvalue"])
def test_median_mode_and_kthvalue_over_pixels_keep_the_channels(op):
    # they were unknown ops that change shape: every group through them was blocked
    torch.manual_seed(0)
    p = _pruner(Medians(op), torch.randn(2, 3, 8, 8))
    g = next(grp for grp in p.groups if grp.root == "c")
    assert not p.reason(g) and g.exact and g.n_units == 8
    pruned = _half_pruned(p, g, 4)
    assert pruned.fc.in_features == 4


class Fourier(nn.Module):
    """FFTs in a block: over the hidden dim (FNet's token mixing, written without norms) or
    over time, a long convolution by rfft/irfft with n = 2L (Hyena, an FNO's channels)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a = nn.Linear(4, 8)
        self.filt = nn.Parameter(torch.randn(8, 6))
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # x: (batch, time 6, features 4)
        h = self.a(x)
        if self.how == "hidden":
            h = h + torch.fft.fft(h, dim=-1).real
        else:
            u = h.transpose(1, 2)
            y = torch.fft.irfft(torch.fft.rfft(u, n=12) * torch.fft.rfft(self.filt, n=12), n=12)
            h = y[..., :6].transpose(1, 2)
        return self.head(torch.relu(h))


def test_an_fft_over_the_pruned_dim_blocks_it():
    # the FFT was elementwise (same shape): the group was pruned and masked equivalence failed
    torch.manual_seed(0)
    p = _pruner(Fourier("hidden"), torch.randn(2, 6, 4))
    g = next(grp for grp in p.groups if grp.root == "a")
    assert "'fft_fft' (fft_fft) moves positions along the pruned dim" in p.reason(g)
    plan = p.plan(0.5)
    v = p.verify(p.apply(plan), plan)
    assert g.id not in plan.removed and v["masked_equivalence"]["ok"], v


def test_channels_pass_through_an_fft_over_time():
    # rfft/irfft change the size of the dim they transform: 'changes shape' blocked the group
    torch.manual_seed(0)
    p = _pruner(Fourier("time"), torch.randn(2, 6, 4))
    g = next(grp for grp in p.groups if grp.root == "a")
    assert {(m.node_name, m.side, m.dim) for m in g.members} == {
        ("a", "out", 2), ("filt", "param", 0), ("head", "in", 2)}
    assert not p.reason(g) and g.exact
    pruned = _half_pruned(p, g, 4)
    assert pruned.filt.shape == (4, 6)


class SpectralConv(nn.Module):
    """An FNO layer: the lowest ``modes`` frequencies mixed by complex weights, written into a
    zero tensor of every frequency (``then``: what else happens to that tensor first)."""

    def __init__(self, then: str = ""):
        super().__init__()
        self.then = then
        self.lift = nn.Conv1d(3, 8, 1)
        self.w = nn.Parameter(torch.randn(8, 6, 3, dtype=torch.cfloat) / 8)
        self.skip = nn.Conv1d(8, 6, 1)
        self.head = nn.Conv1d(6, 2, 1)

    def forward(self, x):
        h = self.lift(x)
        hf = torch.fft.rfft(h)
        out = torch.zeros(x.shape[0], self.w.shape[1], hf.shape[-1], dtype=torch.cfloat,
                          device=x.device)
        if self.then == "noise":
            out.normal_()  # no longer zeros: its values are not the fill's
        out[:, :, :3] = torch.einsum("bix,iox->box", hf[:, :, :3], self.w)
        y = torch.fft.irfft(out, n=x.shape[-1])
        return self.head(F.gelu(y + self.skip(h)))


def test_a_fill_written_by_an_index_follows_the_written_channels():
    # the write was recorded after it ran, when the zeros were no longer a pristine fill: a
    # plain constant, which blocked the output channels of the spectral weights
    torch.manual_seed(0)
    p = _pruner(SpectralConv(), torch.randn(2, 3, 10))
    g = next(grp for grp in p.groups if grp.root == "skip")
    assert {(m.node_name, m.side, m.dim) for m in g.members} == {
        ("skip", "out", 1), ("head", "in", 1), ("w", "param", 1)}
    assert not p.reason(g) and g.exact
    pruned = _half_pruned(p, g, 3)
    assert pruned.w.shape == (4, 3, 3) and pruned.head.in_channels == 3


def test_a_fill_changed_in_place_before_its_write_stays_a_constant():
    torch.manual_seed(0)
    p = _pruner(SpectralConv("noise"), torch.randn(2, 3, 10))
    g = next(grp for grp in p.groups if grp.root == "skip")
    assert "it reaches a tensor computed inside forward" in p.reason(g)


class EmptyKey(nn.Module):
    """DeepSeek's ``expand_kv``: a key made with ``new_empty`` (its sizes read from a tensor)
    and filled through two slices with ``copy_``; ``then`` is what else happens first."""

    def __init__(self, factory: str = "new_empty", then: str = ""):
        super().__init__()
        self.factory, self.then = factory, then
        self.a, self.b, self.c = nn.Conv1d(3, 8, 1), nn.Conv1d(3, 8, 1), nn.Conv1d(8, 4, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        n = a.shape[-1]
        key = getattr(a, self.factory)(*a.shape[:-1], 2 * n)
        if self.then == "noise":
            key[..., :n].normal_()
        key[..., :n].copy_(a)
        key[..., n:].copy_(b)
        return self.c(key)


@pytest.mark.parametrize("factory", ["new_empty", "new_zeros"])
def test_a_fill_copied_into_through_slices_carries_what_was_copied(factory):
    # the copies through slices of the fill were not seen by the later read (c read the fill
    # as made), and the fill, written to, became a constant: a, b and c were blocked
    torch.manual_seed(0)
    p = _pruner(EmptyKey(factory), torch.randn(2, 3, 5))
    g = next(grp for grp in p.groups if grp.root == "a")
    assert {(m.node_name, m.side) for m in g.members} == {("a", "out"), ("b", "out"),
                                                           ("c", "in")}
    assert not p.reason(g)
    assert [n.target for n in p.graph.nodes if n.op_type is OpType.CONSTANT] == [factory]
    pruned = _half_pruned(p, g, 4)
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.c.in_channels) == (4, 4, 4)


class OutIntoSlices(nn.Module):
    """Two sequences joined along time by ``out=`` calls into two slices of a zeros tensor."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv1d(3, 8, 1), nn.Conv1d(3, 8, 1), nn.Conv1d(8, 4, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        n = a.shape[2]
        y = a.new_zeros(a.shape[0], a.shape[1], n + b.shape[2])
        torch.mul(torch.relu(a), 2.0, out=y[..., :n])
        torch.add(b, 1.0, out=y[..., n:])
        return self.c(y)


def test_an_out_call_into_a_slice_is_a_write_the_next_read_sees():
    # the writes were unseen: c read the zeros as made (a constant once written), a's and
    # b's channels reached nothing, and c's group was blocked by that constant
    torch.manual_seed(0)
    p = _pruner(OutIntoSlices(), torch.randn(2, 3, 5))
    assert [n.target for n in p.graph.nodes if n.op_type is OpType.CONSTANT] == ["new_zeros"]
    c_in = p.graph.in_edges[p.graph.by_name["c"].id][0]
    assert p.graph.nodes[c_in.source].target == "write"
    g = next(grp for grp in p.groups if grp.root == "a")
    assert not p.reason(g)
    assert {(m.node_name, m.side) for m in g.members} == {("a", "out"), ("b", "out"),
                                                           ("c", "in")}
    pruned = _half_pruned(p, g, 4)
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.c.in_channels) == (4, 4, 4)


class CopiedOver(nn.Module):
    """A buffer made with ``empty`` and overwritten whole with ``copy_``; its width is the
    layer's ``out_features`` (follows a prune) or a literal (does not)."""

    def __init__(self, literal: bool):
        super().__init__()
        self.literal = literal
        self.a, self.b = nn.Linear(6, 12), nn.Linear(12, 3)

    def forward(self, x):
        width = 12 if self.literal else self.a.out_features
        buf = torch.empty(x.shape[0], width)
        buf.copy_(self.a(x))
        return self.b(torch.relu(buf))


def test_a_fill_copied_over_whole_carries_what_was_copied():
    # the fill, changed by the copy, was a constant that blocked a's group
    torch.manual_seed(0)
    p = _pruner(CopiedOver(literal=False), torch.randn(2, 6))
    g = next(grp for grp in p.groups if grp.root == "a")
    assert not p.reason(g)
    pruned = _half_pruned(p, g, 6)
    assert (pruned.a.out_features, pruned.b.in_features) == (6, 6)
    # a literal width cannot follow: validation says so
    p = _pruner(CopiedOver(literal=True), torch.randn(2, 6))
    p.validate_groups()
    g = next(grp for grp in p.groups if grp.root == "a")
    assert "forward fails" in p.reason(g)


def test_a_concat_written_into_slices_along_the_channels_stays_blocked():
    # (README Known limits) the bounds follow the widths here, but nothing checks that they
    # move with the kept channels: a literal y[:, 2:5] would run at the pruned width too
    class ByHand(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv1d(3, 8, 1), nn.Conv1d(3, 6, 1), nn.Conv1d(14, 4, 1)

        def forward(self, x):
            a, b = self.a(x), self.b(x)
            n = a.shape[1]
            y = a.new_zeros(a.shape[0], n + b.shape[1], a.shape[2])
            y[:, :n] = a
            torch.add(b, 1.0, out=y[:, n:])
            return self.c(y)

    p = _pruner(ByHand(), torch.randn(2, 3, 5))
    for root in "ab":
        g = next(grp for grp in p.groups if grp.root == root)
        assert "writes at fixed positions of the pruned dim" in p.reason(g)


def test_a_fill_a_random_write_reached_through_a_slice_stays_a_constant():
    p = _pruner(EmptyKey("new_zeros", "noise"), torch.randn(2, 3, 5))
    g = next(grp for grp in p.groups if grp.root == "a")
    assert "computed inside forward" in p.reason(g)


class Prototypes(nn.Module):
    """A prototypical network: class prototypes are mean embeddings of the support set, and
    a query's logits are its negative distances to them (``torch.cdist``)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 32)
        self.emb = nn.Linear(32, 16)

    def embed(self, x):
        return self.emb(torch.relu(self.a(x)))

    def forward(self, support, query):
        protos = self.embed(support).view(3, 2, -1).mean(1)
        return -torch.cdist(self.embed(query), protos)


def test_cdist_sums_over_the_features_of_both_sets():
    # cdist was an unknown op that changes shape: the embedding's group was blocked
    torch.manual_seed(0)
    from viewer.core.prune import Pruner
    p = Pruner(Prototypes().eval(), (torch.randn(6, 10), torch.randn(5, 10)))
    g = next(grp for grp in p.groups if grp.root == "emb")
    assert {(m.node_name, m.side, m.dim) for m in g.members} == {
        ("emb", "out", 1), ("emb:1", "out", 1)}
    assert not p.reason(g) and g.exact and g.n_units == 16
    pruned = _half_pruned(p, g, 8)
    assert pruned.emb.out_features == 8


class OuterScaled(nn.Module):
    """A weight scaled by the outer product of a row and a column gain (``torch.outer``)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.w = nn.Parameter(torch.randn(16, 8))
        self.g_out, self.g_in = nn.Parameter(torch.rand(16)), nn.Parameter(torch.rand(8))
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        w = self.w * torch.outer(self.g_out, self.g_in)
        return self.out(torch.relu(F.linear(torch.relu(self.inp(x)), w)))


def test_outer_couples_each_vector_with_its_dim_of_the_product():
    # torch.outer was an unknown op that changes shape: both groups through it were blocked
    torch.manual_seed(0)
    p = _pruner(OuterScaled(), torch.randn(4, 5))
    rows, cols = (next(grp for grp in p.groups if grp.root == r) for r in ("g_out", "g_in"))
    assert {(m.node_name, m.side, m.dim) for m in rows.members} == {
        ("g_out", "param", 0), ("w", "param", 0), ("out", "in", 1)}
    assert {(m.node_name, m.side, m.dim) for m in cols.members} == {
        ("g_in", "param", 0), ("w", "param", 1), ("inp", "out", 1)}
    assert not p.reason(rows) and not p.reason(cols) and rows.exact and cols.exact
    pruned = _half_pruned(p, cols, 4)
    assert pruned.w.shape == (8, 4) and pruned.g_out.shape == (8,) and \
        pruned.g_in.shape == (4,) and pruned.out.in_features == 8


class BilinearHead(nn.Module):
    """``nn.Bilinear`` over two embeddings (a neural tensor network's relation score)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(4, 8)
        self.bil = nn.Bilinear(16, 8, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, x, y):
        return self.out(torch.relu(self.bil(torch.relu(self.a(x)), torch.relu(self.b(y)))))


def test_bilinear_couples_each_input_with_its_dim_of_the_weight():
    # F.bilinear was an unknown op that changes shape: every group through it was blocked
    torch.manual_seed(0)
    from viewer.core.prune import Pruner
    p = Pruner(BilinearHead().eval(), (torch.randn(4, 6), torch.randn(4, 4)))
    members = {g.root: {(m.node_name, m.side, m.dim) for m in g.members} for g in p.groups}
    assert members["a"] == {("a", "out", 1), ("bil.weight", "param", 1)}
    assert members["b"] == {("b", "out", 1), ("bil.weight", "param", 2)}
    assert members["bil.bias"] == {("bil.weight", "param", 0), ("bil.bias", "param", 0),
                                   ("out", "in", 1)}
    assert all(not p.reason(g) and g.exact for g in p.groups if g.root != "out")
    pruned = _half_pruned(p)
    assert pruned.bil.weight.shape == (6, 8, 4) and pruned.bil.bias.shape == (6,)


class SoftChoice(nn.Module):
    """A soft choice over a layer's outputs: softmin, or a Gumbel-softmax (a discrete VAE's
    sampled code, seeded so that every run draws the same noise)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = self.a(x)
        if self.how == "softmin":
            return self.b(F.softmin(h, dim=-1))
        torch.manual_seed(0)
        return self.b(F.gumbel_softmax(h, tau=0.5, dim=-1))


@pytest.mark.parametrize("how", ["softmin", "gumbel_softmax"])
def test_softmin_and_gumbel_softmax_normalise_over_their_dim(how):
    # they were elementwise: the group was pruned as exact and masked equivalence failed
    torch.manual_seed(0)
    p = _pruner(SoftChoice(how), torch.randn(3, 8))
    g = next(grp for grp in p.groups if grp.root == "a")
    assert not p.reason(g) and not g.exact
    assert f"'{how}' ({how}) reduces over pruned channels" in g.stats_notes
    plan = p.plan(0.5)
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["shapes_kept"] and "inexact" in v["masked_equivalence"]["skipped"]


class GlobalFilter(nn.Module):
    """GFNet's global filter: a learned filter stored as (real, imaginary) pairs, viewed as
    complex numbers, multiplies the feature map's 2-D spectrum, read back as pairs."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 1)
        self.cw = nn.Parameter(torch.randn(4, 3, 8, 2))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.fft.rfft2(self.c(x).permute(0, 2, 3, 1), dim=(1, 2))
        y = torch.view_as_real(y * torch.view_as_complex(self.cw))
        return self.head(y.mean((1, 2, 4)))


def test_complex_views_keep_every_dim_but_the_real_imaginary_pair():
    # view_as_complex/view_as_real were unknown ops that change shape: the group was blocked
    torch.manual_seed(0)
    p = _pruner(GlobalFilter(), torch.randn(2, 3, 4, 4))
    g = next(grp for grp in p.groups if grp.root == "c")
    assert {(m.node_name, m.side, m.dim) for m in g.members} == {
        ("c", "out", 1), ("cw", "param", 2), ("head", "in", 1)}
    assert not p.reason(g) and g.exact
    pruned = _half_pruned(p)
    assert pruned.cw.shape == (4, 3, 4, 2)

    class Pair(nn.Module):  # a layer's two outputs read as one complex number
        def __init__(self):
            super().__init__()
            self.p = nn.Linear(4, 2)

        def forward(self, x):
            return torch.view_as_real(torch.view_as_complex(self.p(x)) * 1j)

    pair = group_of(build_graph(Pair().eval(), torch.randn(3, 4)), "p")
    assert "'view_as_complex' (view_as_complex) pairs real and imaginary parts along the " \
        "pruned dim" in pair.reason


class LinalgMatmul(nn.Module):
    """``torch.linalg.matmul``, torch.matmul's alias (another function object)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.w = nn.Parameter(torch.randn(8, 5))
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.relu(torch.linalg.matmul(self.a(x), self.w)))


def test_linalg_matmul_contracts_as_matmul_does():
    # it was an unknown op that changes shape: both groups through it were blocked
    torch.manual_seed(0)
    p = _pruner(LinalgMatmul(), torch.randn(4, 6))
    members = {g.root: {(m.node_name, m.side, m.dim) for m in g.members} for g in p.groups}
    assert members["a"] == {("a", "out", 1), ("w", "param", 0)}
    assert members["w"] == {("w", "param", 1), ("out", "in", 1)}
    plan = p.plan(0.5)
    assert sorted(len(u) for u in plan.removed.values()) == [2, 4]
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


class Siamese(nn.Module):
    """One encoder on two inputs, scored by the cosine similarity of the embeddings, or by
    their distance (``F.pairwise_distance``, its reduced dim kept with ``keepdim``)."""

    def __init__(self, score: str = "cosine"):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12))
        self.score = score

    def forward(self, x, y):
        a, b = self.enc(x), self.enc(y)
        if self.score == "cosine":
            return F.cosine_similarity(a, b, dim=-1)
        return F.pairwise_distance(a, b, keepdim=self.score == "distance_keepdim")


@pytest.mark.parametrize("score", ["cosine", "distance", "distance_keepdim"])
def test_pair_reductions_couple_both_embeddings_inexactly(score):
    # each was an op that changes shape: the embedding's group was blocked
    torch.manual_seed(0)
    from viewer.core.prune import Pruner
    p = Pruner(Siamese(score).eval(), (torch.randn(4, 8), torch.randn(4, 8)))
    op = "cosine_similarity" if score == "cosine" else "pairwise_distance"
    emb = next(grp for grp in p.groups if grp.root == "enc.2")
    assert {(m.node_name, m.side, m.dim) for m in emb.members} == {
        ("enc.2", "out", 1), ("enc.2:1", "out", 1)}
    assert not p.reason(emb) and not emb.exact
    assert f"'{op}' ({op}) reduces over pruned channels" in emb.stats_notes
    plan = p.plan(0.5)
    assert len(plan.removed[emb.id]) == 6
    pruned = p.apply(plan)
    assert pruned.enc[2].out_features == 6
    v = p.verify(pruned, plan)
    assert v["forward"] and v["shapes_kept"], v
    hidden = next(grp for grp in p.groups if grp.root == "enc.0")
    exact = p.plan_from_dict({"removed": {str(hidden.id): [0, 3, 5]}})
    v = p.verify(p.apply(exact), exact)
    assert v["masked_equivalence"]["ok"], v


class VectorQuantizer(nn.Module):
    """A VQ-VAE bottleneck: the nearest code by ``torch.cdist``, a commitment loss
    (``F.mse_loss``, or another pointwise loss reduced as ``reduction`` says) computed inside
    forward and returned beside the reconstruction, the straight-through estimator."""

    def __init__(self, loss: str = "mse_loss", reduction: str = "mean"):
        super().__init__()
        self.enc, self.dec = nn.Linear(8, 16), nn.Linear(16, 8)
        self.code = nn.Parameter(torch.randn(10, 16))
        self.loss, self.reduction = getattr(F, loss), reduction

    def forward(self, x):
        z = self.enc(x)
        q = self.code[torch.cdist(z, self.code).argmin(-1)]
        loss = self.loss(z, q.detach(), reduction=self.reduction)
        return self.dec(z + (q - z).detach()), loss


@pytest.mark.parametrize("loss,reduction", [("mse_loss", "mean"), ("l1_loss", "sum"),
                                            ("smooth_l1_loss", "mean"), ("mse_loss", "none")])
def test_loss_in_forward_couples_its_two_tensors(loss, reduction):
    # a loss reduced to one value was an op that changes shape: the codes' group was blocked
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    p = _pruner(VectorQuantizer(loss, reduction), x)
    g = next(grp for grp in p.groups if grp.root == "enc")
    assert {(m.node_name, m.side, m.dim) for m in g.members} == {
        ("enc", "out", 1), ("code", "param", 1), ("dec", "in", 1)}
    if reduction == "none":  # the loss keeps the codes' width, and it is an output
        assert p.reason(g) == "it reaches the model output 'output.[1]'"
        return
    assert not p.reason(g) and not g.exact
    assert f"'{loss}' ({loss}) reduces over pruned channels" in g.stats_notes
    # the codebook's entries are a group too: argmin's positions pick rows of the codebook
    # (``code[ids]``), so a code's distance and its row go together
    codes = next(grp for grp in p.groups if grp.root == "code")
    assert {(m.node_name, m.dim) for m in codes.members} == {("code", 0)} and codes.prunable
    assert "'argmin' (argmin) picks among the pruned channels" in codes.stats_notes
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.code.shape == (5, 8) and pruned.enc.out_features == 8
    v = p.verify(pruned, plan)
    assert v["forward"] and v["shapes_kept"], v
    kept = [i for i in range(16) if i not in plan.removed[g.id]]  # the codes' kept columns
    rows = [i for i in range(10) if i not in plan.removed[codes.id]]
    assert torch.equal(pruned.code, p.model.code[rows][:, kept])
    assert torch.equal(pruned.enc.weight, p.model.enc.weight[kept])
    # codes removed alone: the original whose distances to them are +inf never picks them
    from viewer.core.plan import Plan

    alone = Plan({codes.id: plan.removed[codes.id]})
    me = p.verify(p.apply(alone), alone)["masked_equivalence"]
    assert me["ok"] and "never_picked" in me, me


class Differences(nn.Module):
    """``torch.diff`` of a linear's features along the sequence (``prepend`` another linear's
    first step: both share the feature dim), or along the features themselves."""

    def __init__(self, along: str):
        super().__init__()
        self.a, self.p = nn.Linear(8, 16), nn.Linear(8, 16)
        self.out = nn.Linear(16 if along == "steps" else 15, 2)
        self.along = along

    def forward(self, x):
        if self.along == "steps":
            d = torch.diff(self.a(x), n=2, dim=1, prepend=self.p(x[:, :1]))
            return self.out(d.sum(1))
        return self.out(torch.diff(self.a(x)))


def test_diff_keeps_other_dims_and_blocks_its_own():
    # torch.diff was an unknown op that changes shape: every group through it was blocked
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    p = _pruner(Differences("steps"), x)
    g = next(grp for grp in p.groups if grp.root == "a")
    assert {(m.node_name, m.side, m.dim) for m in g.members} == {
        ("a", "out", 2), ("p", "out", 2), ("out", "in", 1)}
    assert not p.reason(g) and g.exact
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.a.out_features == pruned.p.out_features == pruned.out.in_features == 8
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    p = _pruner(Differences("features"), x)
    g = next(grp for grp in p.groups if grp.root == "a")
    assert p.reason(g) == "'diff' (diff) moves positions along the pruned dim"


class PartlyBlocked(nn.Module):
    """conv's first 3 channels are scaled and shifted by a table its module makes at init (a
    non-persistent buffer that two ops read: they reach it, not prunable), the
    other 5 only feed ``head`` (prunable); ``out`` also returns the last 2 channels, sliced
    by a fixed start (``"fixed"``: ``y[:, 6:]``) or from the end (``"end"``: ``y[:, -2:]``)."""

    def __init__(self, out: str = ""):
        super().__init__()
        self.out = out
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("scale", torch.rand(1, 3, 1, 1) + 0.5, persistent=False)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = self.conv(x)
        z = self.head(torch.cat([y[:, :3] * self.scale + self.scale, y[:, 3:]], 1))
        if self.out:
            return z, y[:, 6:] if self.out == "fixed" else y[:, -2:]
        return z


def _channels(g, name: str) -> list[int]:
    return np.unique(g.member(name, "out").pos).tolist()


@pytest.mark.parametrize("out", ["", "fixed", "end"])
def test_units_that_reach_a_blocker_split_off_and_the_rest_prune(out):
    # before, one buffer (or one model output) reached by some channels blocked them all
    torch.manual_seed(0)
    model, x = PartlyBlocked(out).eval(), torch.randn(1, 3, 8, 8)
    g = build_graph(model, x)
    whole = group_of(g, "conv")
    assert not whole.prunable and whole.n_units == 8  # on the spot: one group, blocked
    parts = [grp for grp in all_groups(g) if grp.root == "conv"]
    assert [grp.id for grp in parts] == [0, 1]
    free, blocked = parts
    tail = [6, 7] if out else []
    assert _channels(free, "conv") == [c for c in range(3, 8) if c not in tail]
    assert sorted(_channels(blocked, "conv")) == [0, 1, 2] + tail
    assert free.prunable and free.n_units == 5 - len(tail)
    assert not blocked.prunable and blocked.n_units == 3 + len(tail)
    assert any("buffer 'scale'" in r for r in blocked.reasons)
    assert any("model output" in r for r in blocked.reasons) == bool(out)
    # the two parts hold exactly the whole group's pairs, each unit renumbered in order
    for m in whole.members:
        got = np.concatenate([grp.member(m.node_name, m.side).pos for grp in parts])
        assert sorted(got.tolist()) == sorted(m.pos.tolist())
    for grp in parts:
        for m in grp.members:
            assert np.unique(m.unit).tolist() == list(range(grp.n_units))
    p = _pruner(model, x)
    if out == "fixed":  # pruning below the fixed start moves what y[:, 6:] returns
        assert "instead of [1, 2, 8, 8]" in p.reason(p.groups[0])
        assert p.plan(0.5).removed == {}
        return
    k = free.n_units // 2
    pruned = _half_pruned(p, p.groups[0], k)
    assert pruned.conv.out_channels == 8 - k and torch.equal(pruned.scale, model.scale)
    removed = free.member("conv", "out").indices(p.plan(0.5).removed[0])
    assert set(removed.tolist()) <= set(_channels(free, "conv"))


def test_member_indices_are_the_positions_of_the_units_asked_for():
    # (a lookup table instead of np.isin, which sorted both arrays on every call)
    from viewer.core.groups import Member
    from viewer.core.optypes import OpType

    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(0, 30))
        pos, unit = rng.integers(0, 50, n), rng.integers(0, 10, n)
        m = Member(0, "a", "a", OpType.CONV, "out", 1, pos, unit)
        asked = rng.integers(-2, 14, int(rng.integers(0, 6)))
        got = m.indices(asked)
        assert got.tolist() == np.unique(pos[np.isin(unit, asked)]).tolist()
        assert got.dtype == np.int64
    assert m.indices([]).tolist() == [] and m.indices(list(asked)).dtype == np.int64


class FunctionalMHA(nn.Module):
    """A block calling ``F.multi_head_attention_forward`` itself with a packed in_proj and a
    residual add (no norm: the group is exact), then an MLP and a head."""

    def __init__(self, e: int = 32, heads: int = 4):
        super().__init__()
        self.embed_dim, self.num_heads = e, heads
        self.inp = nn.Linear(6, e)
        self.in_proj_weight = nn.Parameter(torch.randn(3 * e, e) / e ** 0.5)
        self.in_proj_bias = nn.Parameter(torch.randn(3 * e) * 0.1)
        self.out_proj = nn.Linear(e, e)
        self.fc1, self.fc2 = nn.Linear(e, 2 * e), nn.Linear(2 * e, e)
        self.head = nn.Linear(e, 3)

    def forward(self, x):  # (N, L, 6)
        h = self.inp(x).transpose(0, 1)  # (L, N, E)
        a, _ = F.multi_head_attention_forward(
            h, h, h, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            None, None, False, 0.0, self.out_proj.weight, self.out_proj.bias, training=False,
            need_weights=False)
        h = h + a
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h.mean(0))


class AttentionPool2d(nn.Module):
    """OpenAI CLIP's ResNet attention pooling: separate q/k/v weights, biases concatenated,
    ``embed_dim_to_check`` read from the input, ``num_heads`` stored."""

    def __init__(self, side: int, e: int, heads: int, out: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(side ** 2 + 1, e) / e ** 0.5)
        self.k_proj, self.q_proj, self.v_proj = (nn.Linear(e, e) for _ in range(3))
        self.c_proj = nn.Linear(e, out)
        self.num_heads = heads

    def forward(self, x):
        x = x.flatten(start_dim=2).permute(2, 0, 1)  # NCHW -> (HW)NC
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :]
        x, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads, q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=False, need_weights=False)
        return x.squeeze(0)


class ClipLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32)
        self.attnpool = AttentionPool2d(4, 32, 4, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(F.relu(self.attnpool(x)))


def test_functional_multi_head_attention_prunes_whole_heads_and_its_num_heads_follows():
    # before, its weights arrived as bare parameters and every group through it was blocked
    # ("changes shape in a way DepView does not model")
    torch.manual_seed(0)
    model, x = FunctionalMHA().eval(), torch.randn(2, 5, 6)
    p = _pruner(model, x)
    g = p.groups[0]
    assert g.root == "inp" and g.prunable and g.n_units == 4  # the residual stream, by heads
    sides = {(m.node_name, m.side, m.dim) for m in g.members}
    assert {("in_proj_weight", "param", 0), ("in_proj_weight", "param", 1),
            ("in_proj_bias", "param", 0), ("out_proj.weight", "param", 1),
            ("out_proj.weight", "param", 0), ("fc1", "in", 2), ("fc2", "out", 2)} <= sides
    rows = next(m for m in g.members if m.node_name == "in_proj_weight" and m.dim == 0)
    # head 1 (channels 8-15) owns its q, k and v rows
    assert rows.indices([1]).tolist() == [*range(8, 16), *range(40, 48), *range(72, 80)]
    # the call is given embed_dim and num_heads: both follow (a num_heads that stayed 4 ran
    # too, cutting the 16 channels left into heads of 4)
    assert not p.reason(g)  # (validation finds the attributes)
    assert p.sets(g) == ["embed_dim", "num_heads"]
    pruned = _half_pruned(p, g, 2)
    assert (pruned.embed_dim, pruned.num_heads) == (16, 2)
    assert pruned.in_proj_weight.shape == (48, 16)


def test_clip_attention_pooling_prunes_the_heads_of_the_channels_it_pools():
    torch.manual_seed(0)
    model, x = ClipLike().eval(), torch.randn(2, 3, 16, 16)
    p = _pruner(model, x)
    g = next(g for g in p.groups if g.root == "conv2")
    assert g.prunable and g.n_units == 4
    assert {"attnpool.positional_embedding", "attnpool.q_proj.weight",
            "attnpool.k_proj.bias", "attnpool.c_proj.weight"} <= \
        {m.node_name for m in g.members}
    assert not p.reason(g)
    assert p.sets(g) == ["attnpool.num_heads"]
    out = next(g for g in p.groups if g.root == "attnpool.c_proj.bias")  # c_proj's rows
    assert out.prunable and out.n_units == 24
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    # the default tolerance let heads of the wrong size through (5e-5 from near-uniform
    # attention): these prunes are exact to rounding
    assert v["masked_equivalence"]["max_abs_diff"] < 1e-6, v
    assert pruned.attnpool.num_heads == 2 and pruned.conv2.out_channels == 16


class FunctionalMHAVariants(nn.Module):
    """``F.multi_head_attention_forward`` as code calls it: packed or separate projections
    (a cross-attention whose keys have their own width), a zero attention row, a key
    padding mask, a learned (N * heads, L, S) mask, its per-head weights read, one head, an
    unbatched (L, E) query."""

    def __init__(self, how: str, e: int = 32, kd: int = 24):
        super().__init__()
        self.how, self.e, self.heads = how, e, 1 if how == "one head" else 4
        cross = how == "cross"
        self.inp, self.kin = nn.Linear(6, e), nn.Linear(6, kd)
        self.q, self.o, self.head = nn.Linear(e, e), nn.Linear(e, e), nn.Linear(e, 3)
        self.k, self.v = nn.Linear(kd if cross else e, e), nn.Linear(kd if cross else e, e)
        self.in_proj_weight = nn.Parameter(torch.randn(3 * e, e) / e ** 0.5)
        self.in_proj_bias = nn.Parameter(torch.randn(3 * e) * 0.1)
        self.mask = nn.Parameter(torch.randn(2 * self.heads, 5, 5) * 0.1)

    def forward(self, x):  # (N=2, L=5, 6)
        h = self.inp(x).transpose(0, 1)
        kw = {"training": False, "need_weights": self.how == "weights",
              "average_attn_weights": False}
        if self.how == "cross":
            kv = self.kin(x).transpose(0, 1)
            a, _ = F.multi_head_attention_forward(
                h, kv, kv, self.e, self.heads, None,
                torch.cat([self.q.bias, self.k.bias, self.v.bias]), None, None, False, 0.0,
                self.o.weight, self.o.bias, use_separate_proj_weight=True,
                q_proj_weight=self.q.weight, k_proj_weight=self.k.weight,
                v_proj_weight=self.v.weight, **kw)
            return self.head((h + a).mean(0))
        q = h[:, 0] if self.how == "unbatched" else h
        a, w = F.multi_head_attention_forward(
            q, q, q, self.e, self.heads, self.in_proj_weight, self.in_proj_bias, None, None,
            self.how == "zero attn", 0.0, self.o.weight, self.o.bias,
            attn_mask=self.mask if self.how == "mask" else None,
            key_padding_mask=torch.zeros(2, 5, dtype=torch.bool)
            if self.how == "padding" else None, **kw)
        if self.how == "unbatched":
            a = a[:, None].expand(-1, 2, -1)
        if self.how == "weights":
            a = a + w.amax((1, 2, 3))[None, :, None]
        return self.head((h + a).mean(0))


@pytest.mark.parametrize("how", ["cross", "zero attn", "padding", "mask", "weights",
                                 "one head", "unbatched"])
def test_functional_multi_head_attention_as_code_calls_it_prunes_exactly(how):
    torch.manual_seed(0)
    p = _pruner(FunctionalMHAVariants(how).eval(), torch.randn(2, 5, 6))
    g = p.groups[0]
    assert g.root == "inp" and not p.reason(g)
    assert g.n_units == (32 if how == "one head" else 4)  # heads, or one head's channels
    assert p.sets(g) == (["e"] if how == "one head" else ["e", "heads"])
    if how == "cross":  # the keys' own width: a group of its own, by kin's channels
        assert next(x for x in p.groups if x.root == "kin").n_units == 24
    if how == "mask":  # the learned mask loses the heads: rows n * heads + h
        m = g.member("mask", "param")
        assert m.indices([1]).tolist() == [1, 5]
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["shapes_kept"], v
    if how == "weights":  # (N, heads, L, S) loses the heads too; amax over them: inexact
        mha = p.graph.by_name["multi_head_attention_forward"]
        assert (mha.id, 1, 1) in g.tensors and not g.exact
    elif how == "one head":  # its 1/sqrt(head_dim) scale changes: inexact, not compared
        assert not g.exact
    else:
        me = v["masked_equivalence"]
        assert me["ok"] and me["max_abs_diff"] < 1e-6, v


class SharedTable(nn.Module):
    """Two layers scaled by one table made from a non-persistent buffer (a rotary cos
    table every layer reads, from ``inv_freq``), or shifted by one zeros fill (whose size
    both must follow)."""

    def __init__(self, fill: bool):
        super().__init__()
        self.fill = fill
        self.register_buffer("freq", torch.rand(8), persistent=False)
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(16, 2)

    def forward(self, x):
        if self.fill:
            z = x.new_zeros(1, 8)
            return self.c(torch.cat([self.a(x) + z, self.b(x) + z], -1))
        t = self.freq.cos()
        return self.c(torch.cat([self.a(x) * t, self.b(x) * t], -1))


def test_a_table_made_from_a_buffer_does_not_carry_a_blocked_group_into_other_readers():
    # a's group reached b through the table, so b (covered) started no group of its own:
    # in a decoder, every later layer's q_proj was left without one
    g = build_graph(SharedTable(fill=False).eval(), (torch.randn(2, 4),))
    fixed = {n.name for n in g.nodes if g.fixed_value(n.id)}
    assert fixed == {"freq", "cos"}  # the buffer and the table, not the products or layers
    groups = {grp.root: grp for grp in all_groups(g)}
    assert set(groups) == {"a", "b", "c"}
    for name in "ab":
        assert any("freq" in r for r in groups[name].reasons)
        assert {m.node_name for m in groups[name].members} == {name, "c"}
    assert group_of(g, "a").tensors.keys() == groups["a"].tensors.keys()


class Tables(nn.Module):
    """A stream shifted by a position table made at init (a non-persistent buffer): read
    once through a slice (``"once"``), twice (``"twice"``: added, then multiplied in), or
    through a table computed from it that two layers read (``"shared"``)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.register_buffer("pe", torch.rand(16, 8), persistent=False)
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        pe = self.pe[: x.shape[1]]
        h = self.a(x) + pe
        if self.how == "twice":
            h = h * self.pe[: x.shape[1]]
        elif self.how == "shared":
            t = pe.sin()
            return self.c(self.b(h * t) * t)
        return self.c(torch.relu(self.b(h)))


@pytest.mark.parametrize("how", ["once", "twice", "shared"])
def test_a_table_made_at_init_and_read_once_is_cut_with_its_group(how):
    # before, any non-persistent buffer blocked: a sinusoidal position table added to the
    # stream once (M2M100, XGLM, CTRL, Falcon-H1's mup_vector) kept the stream whole
    torch.manual_seed(0)
    model, x = Tables(how).eval(), torch.randn(2, 5, 4)
    g = build_graph(model, x)
    pe = g.node("pe")
    assert pe.buffers == {"": "pe"} and not pe.params  # not state_dict, named all the same
    assert g.read_once(pe.id) == (how == "once")
    stream = next(grp for grp in all_groups(g) if grp.root == "a")
    if how != "once":
        assert not stream.prunable and any("buffer 'pe'" in r for r in stream.reasons)
        return
    assert stream.prunable and stream.member("pe", "param").dim == 1
    p = _pruner(model, x)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    kept = sorted(set(range(8)) - set(plan.removed[stream.id]))
    assert torch.equal(pruned.pe, model.pe[:, kept]) and model.pe.shape == (16, 8)
    assert "pe" not in pruned.state_dict()  # still not state: a table made at init
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_a_fill_two_layers_read_still_ties_them():
    # the fill blocks nothing, so the readers it couples stay one group
    g = build_graph(SharedTable(fill=True).eval(), (torch.randn(2, 4),))
    groups = all_groups(g)
    a = next(grp for grp in groups if grp.root == "a")
    assert not a.reasons and {m.node_name for m in a.members} >= {"a", "b", "c"}
    assert not any(grp.root == "b" for grp in groups)


class Chunked(nn.Module):
    """HF Longformer's chunking: overlapping chunks of the sequence made with ``as_strided``
    (strides from the tensor's own), the head dim kept; ``over="channels"`` makes windows
    over the channels instead (each channel read by two windows)."""

    def __init__(self, over: str = "seq", w: int = 2):
        super().__init__()
        self.q, self.k, self.o = nn.Linear(5, 8), nn.Linear(5, 8), nn.Linear(8, 3)
        self.over, self.w = over, w

    def chunk(self, x):  # (b, seq, d) -> (b, seq // w - 1, 2w, d)
        size, stride = list(x.size()), list(x.stride())
        if self.over == "channels":  # (b, seq, d) -> (b, seq, d - 1, 2)
            return x.as_strided(size[:2] + [size[2] - 1, 2], stride + [1])
        size[1] = size[1] // self.w - 1
        size.insert(2, 2 * self.w)
        stride.insert(1, stride[1] * self.w)
        return x.as_strided(size=size, stride=stride)

    def forward(self, x):
        q, k = self.chunk(self.q(x)), self.chunk(self.k(x))
        if self.over == "channels":
            return self.o((q * k).sum(-1).mean(1).repeat(1, 2)[:, :8])
        a = torch.einsum("bcxd,bcyd->bcxy", q, k).softmax(-1)
        return self.o(torch.einsum("bcxy,bcyd->bcxd", a, self.chunk(self.q(x))).mean((1, 2)))


def test_as_strided_keeps_a_dim_it_reads_position_for_position():
    # before, every as_strided blocked: "changes shape in a way DepView does not model"
    from viewer.core.meta import StridedMeta
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model, x = Chunked().eval(), torch.randn(2, 8, 5)
    g = build_graph(model, (x,))
    strided = [n for n in g.nodes if n.target == "as_strided"]
    assert len(strided) == 3
    # (b, 8, 8) -> (b, 3, 4, 8): the head dim (2) is output dim 3; the sequence overlaps
    assert all(n.meta == StridedMeta(((0, 0), (2, 3))) for n in strided)
    q = group_of(g, "q")
    assert not q.reasons and q.n_units == 8
    assert {(strided[0].id, 0, 3), (strided[2].id, 0, 3)} <= set(q.tensors)
    p = Pruner(model, (x,))
    plan = p.plan(0.5)
    assert plan.removed.keys() >= {p.groups[0].id}
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    # windows over the channels read each channel twice: blocked, as before
    g = build_graph(Chunked("channels").eval(), (x,))
    node = next(n for n in g.nodes if n.target == "as_strided")
    assert node.meta == StridedMeta(((0, 0), (1, 1)))
    assert any("as_strided" in r and "does not model" in r for r in group_of(g, "q").reasons)


def test_no_groups_reason_names_a_torchscript_layer_that_hides_the_weights():
    from viewer.core.groups import no_groups_reason

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.jit.script(nn.Sequential(nn.Linear(4, 8), nn.ReLU()))

        def forward(self, x):
            return self.inner(x)

    x = torch.randn(2, 4)
    g = build_graph(Wrapper().eval(), (x,))
    assert no_groups_reason(g).startswith("'inner' is a TorchScript module, whose ops DepView "
                                          "cannot see")
    # its output roots a group, blocked with that reason (its readers' inputs are in one)
    (only,) = all_groups(g)
    assert only.root == "inner" and only.reason.startswith("'inner' is a TorchScript module")
    g = build_graph(nn.ReLU(), (x,))
    assert no_groups_reason(g) == "the model has no layer with channels to prune"


def test_a_view_read_for_its_shape_only_does_not_block_the_stream():
    # BART's encoder gives its position embedding inputs_embeds[:, :, -1], for the length:
    # the select of one channel blocked the whole embedding stream
    from conftest import EmbedsThenPositions, PositionsFromLength, PositionsFromValues

    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    ids = torch.randint(0, 20, (2, 6))
    model = EmbedsThenPositions(PositionsFromLength).eval()
    p = Pruner(model, (ids,), output_layers=["head"])
    stream = next(g for g in p.groups if g.root == "tok")
    assert not p.reason(stream) and "getitem" not in {m.node_name for m in stream.members}
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.pos.weight.shape == (6, 4)
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]
    # one that reads the values it is given stays blocked at the select
    p = Pruner(EmbedsThenPositions(PositionsFromValues).eval(), (ids,), output_layers=["head"])
    stream = next(g for g in p.groups if g.root == "tok")
    assert "'getitem' selects one index of the tracked dim" in p.reason(stream)


class ShuffleV1(nn.Module):
    """ShuffleNet V1's unit: grouped 1x1 conv -> channel shuffle -> grouped 1x1 conv."""

    def __init__(self, g: int):
        super().__init__()
        self.g = g
        self.gc1 = nn.Conv2d(32, 16, 1, groups=g, bias=False)
        self.gc2 = nn.Conv2d(16, 32, 1, groups=g, bias=False)

    def forward(self, x):
        out = F.relu(self.gc1(x))
        b, c, h, w = out.shape
        out = out.reshape(b, self.g, c // self.g, h, w).permute(0, 2, 1, 3, 4).reshape(
            b, c, h, w)
        return self.gc2(out)


@pytest.mark.parametrize("g, units", [(2, 4), (4, 1)])
def test_shufflenet_v1_units_keep_every_group_balanced_or_say_why_they_cannot(g, units):
    # with 4 groups the reason was "only one unit" for a 16-channel group
    from viewer.core.prune import Pruner

    p = Pruner(ShuffleV1(g).eval(), (torch.randn(1, 32, 4, 4),))
    grp = next(x for x in p.groups if x.root == "gc1")
    assert grp.n_units == units
    if units > 1:
        plan = p.plan(0.5)
        v = p.verify(p.apply(plan), plan)
        assert plan.removed[grp.id] and v["masked_equivalence"]["ok"], v
    else:
        assert grp.reason == ("its 16 channels make one unit: the ops it reaches tie each to "
                              "all the others, so removing one would remove the whole tensor")
