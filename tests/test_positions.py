"""Positions an op picks and the dims that read them (viewer/core/positions.py), on small
graphs: which picks a tensor holds, where their positions are read, and how many positions a
chain of picks needs."""

import math

import torch
from torch import nn

from viewer.core.groups import all_groups, group_of
from viewer.core.positions import picks_at, position_reads, score_keys
from viewer.core.trace import build_graph


class TwoPicks(nn.Module):
    """Two picks along one expert dim joined by ``torch.cat``, counted per expert by
    ``histc``; ``extra`` joins a third part that is not picked (a padding id, here 0)."""

    def __init__(self, extra: bool = False, experts: int = 4):
        super().__init__()
        self.extra, self.experts = extra, experts
        self.router = nn.Linear(6, experts)
        self.out = nn.Linear(experts, 3)

    def forward(self, x):
        scores = self.router(x)
        first = scores.argmax(-1, keepdim=True)
        second = torch.scatter(scores, -1, first, float("-inf")).argmax(-1, keepdim=True)
        parts = [first, second] + ([torch.zeros_like(first)] if self.extra else [])
        ids = torch.cat(parts, -1)
        counts = torch.histc(ids.float(), bins=self.experts, min=0, max=self.experts - 1)
        return self.out(scores * counts)


def _node(g, name):
    return g.node(name)


def test_picks_at_goes_back_through_a_cat_of_picked_positions_to_every_pick():
    g = build_graph(TwoPicks().eval(), torch.randn(5, 6))
    cat = _node(g, "cat")
    assert [n.name for n in picks_at(g, cat.id, 0)] == ["argmax", "argmax_1"]
    float_ = _node(g, "float")  # (through a cast too)
    assert [n.name for n in picks_at(g, float_.id, 0)] == ["argmax", "argmax_1"]
    # the first pick's positions reach histc through the cat, as the second's do (the
    # scatter writes at the first's)
    for name, readers in (("argmax", ["scatter", "histc"]), ("argmax_1", ["histc"])):
        reads = position_reads(g, _node(g, name))
        assert [g.nodes[k[0]].name for k in reads.readers] == readers, name
        assert not reads.other


def test_a_cat_with_a_part_that_was_not_picked_holds_no_positions():
    g = build_graph(TwoPicks(extra=True).eval(), torch.randn(5, 6))
    assert picks_at(g, _node(g, "cat").id, 0) == []
    reads = position_reads(g, _node(g, "argmax"))
    # read as numbers: blocks (zeros_like reads only their shape)
    assert [n.name for n in reads.other] == ["cat"]
    assert "'cat' (cat) reads as numbers" in group_of(g, "router").reason


def test_a_pick_among_what_earlier_picks_left_keeps_as_many_more():
    g = build_graph(TwoPicks().eval(), torch.randn(5, 6))
    grp = group_of(g, "router")
    assert not grp.reason and grp.n_units == 4
    assert (grp.min_kept, grp.min_kept_why) == (
        2, "'argmax_1' (argmax) picks 1 of them besides the 1 that 'argmax' (argmax) picked")

    class ThenTop2(TwoPicks):  # topk(2), then one more among the rest: 3 stay
        def forward(self, x):
            scores = self.router(x)
            top = scores.topk(2, -1).indices
            third = torch.scatter(scores, -1, top, float("-inf")).argmax(-1, keepdim=True)
            ids = torch.cat([top, third], -1)
            counts = torch.histc(ids.float(), bins=self.experts, min=0, max=self.experts - 1)
            return self.out(scores * counts)

    g = build_graph(ThenTop2(experts=5).eval(), torch.randn(5, 6))
    grp = group_of(g, "router")
    assert (grp.min_kept, grp.min_kept_why) == (
        3, "'argmax' (argmax) picks 1 of them besides the 2 that 'topk' (topk) picked")
    g = build_graph(ThenTop2(experts=3).eval(), torch.randn(5, 6))
    assert group_of(g, "router").reason.startswith("all 3 units must stay")


class Biased(TwoPicks):
    """A router with a learned prior per expert (a weight, viewed ``unsqueeze(0)``) and a
    0/1 mask made from its first pick (``scatter`` into zeros), as DeepSeek-V3's router
    masks the routing groups it did not pick."""

    def __init__(self):
        super().__init__()
        self.prior = nn.Parameter(torch.randn(self.experts))

    def forward(self, x):
        scores = self.router(x).sigmoid() + self.prior.unsqueeze(0)
        first = scores.argmax(-1, keepdim=True)
        mask = torch.zeros_like(scores).scatter(-1, first, 1.0)
        second = scores.masked_fill(mask.bool(), float("-inf")).argmax(-1, keepdim=True)
        ids = torch.cat([first, second], -1)
        counts = torch.histc(ids.float(), bins=self.experts, min=0, max=self.experts - 1)
        return self.out(scores * counts)


def test_score_keys_are_the_scores_on_the_way_to_the_picks_never_a_weight_or_a_mask():
    # the verification oracle sets these to -inf at the removed experts: a weight's memory
    # would change the model (and the loaded one, whose untouched weights a masked copy
    # shares); a mask made from the picks holds no scores
    g = build_graph(Biased().eval(), torch.randn(5, 6))
    grp = group_of(g, "router")
    assert not grp.reason
    assert [(g.nodes[nid].name, dim, fill) for (nid, _, dim), fill in score_keys(g, grp)] == [
        ("router", 1, -math.inf), ("sigmoid", 1, -math.inf), ("add", 1, -math.inf),
        ("masked_fill", 1, -math.inf)]
    assert {g.nodes[k[0]].name for k in grp.tensors} >= {"prior", "unsqueeze", "scatter"}

    class Nearest(nn.Module):  # a codebook read by argmin: its removed entries +inf
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 4)
            self.code = nn.Parameter(torch.randn(5, 4))

        def forward(self, x):
            return self.code[torch.cdist(self.proj(x), self.code).argmin(-1)]

    g = build_graph(Nearest().eval(), torch.randn(3, 6))
    keys = score_keys(g, next(x for x in all_groups(g) if x.min_kept_why))
    assert [(g.nodes[nid].name, fill) for (nid, _, _), fill in keys] == [("cdist", math.inf)]


class Guarded(nn.Module):
    """Expert ids clamped before they index per-expert scales, as Ergo guards them
    (``ids.clamp_max(self.num_experts - 1)``); ``bound`` sets the clamp's bound."""

    def __init__(self, bound: int, experts: int = 4):
        super().__init__()
        self.bound = bound
        self.router = nn.Linear(6, experts)
        self.scale = nn.Parameter(torch.randn(experts, 6))

    def forward(self, x):
        ids = self.router(x).topk(2, -1).indices
        return x[:, None] * self.scale[ids.clamp_max(self.bound)]


def test_a_clamp_that_cuts_no_valid_position_keeps_positions_and_one_that_does_blocks():
    g = build_graph(Guarded(bound=3).eval(), torch.randn(5, 6))
    grp = group_of(g, "router")
    assert not grp.reason and {(m.node_name, m.dim) for m in grp.members} == {
        ("router", 1), ("scale", 0)}
    assert [n.name for n in picks_at(g, g.node("clamp_max").id, 0)] == ["topk"]
    g = build_graph(Guarded(bound=2).eval(), torch.randn(5, 6))  # expert 3 read as 2
    assert picks_at(g, g.node("clamp_max").id, 0) == []
    assert "'clamp_max' (clamp_max) reads as numbers" in group_of(g, "router").reason


def test_a_pick_of_the_smallest_is_oracled_with_plus_inf():
    # topk(largest=False) (a bool, not among the recorded scalars) and kthvalue pick the
    # smallest: the removed experts must be +inf to be never picked; plain topk gets -inf
    class Smallest(nn.Module):
        def __init__(self, how: str):
            super().__init__()
            self.how = how
            self.router = nn.Linear(6, 4)
            self.scale = nn.Parameter(torch.randn(4, 6))

        def forward(self, x):
            s = self.router(x)
            ids = s.topk(2, -1, False).indices if self.how == "positional" else \
                torch.topk(s, 2, dim=-1, largest=False).indices if self.how == "kw" else \
                s.kthvalue(2, -1).indices[:, None] if self.how == "kth" else \
                s.topk(2, -1).indices
            return x[:, None] * self.scale[ids]

    for how, fill in (("positional", math.inf), ("kw", math.inf), ("kth", math.inf),
                      ("largest", -math.inf)):
        g = build_graph(Smallest(how).eval(), torch.randn(3, 6))
        keys = score_keys(g, group_of(g, "router"))
        assert [(g.nodes[nid].name, f) for (nid, _, _), f in keys] == [("router", fill)], how
    # and verification checks such a model pruned of experts with it: ok as masked
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(Smallest("kw").eval(), (torch.randn(5, 6),))
    experts = next(x for x in p.groups if x.root == "router")
    plan = Plan({experts.id: [1, 2]})
    me = p.verify(p.apply(plan), plan)["masked_equivalence"]
    assert me["ok"] and me["max_abs_diff"] < 1e-6 and "never_picked" in me, me
