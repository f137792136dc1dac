import copy
import dataclasses
import inspect
import json
import math
import re
import warnings
import weakref
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ALL_DEMOS,
    FeaturesAndLogits,
    TiedWidthNet,
    tiny_pruner,
    validated,
)
from torch import nn

from viewer.core.errors import DepViewError
from viewer.core.export import export_dir, load_pruned
from viewer.core.groups import held_by_outputs
from viewer.core.optypes import OpType
from viewer.core.plan import IMPORTANCE, Plan, l1_fallback_text, parse_ignore
from viewer.core.prune import Pruner, floor_note
from viewer.core.spec import load_model
from viewer.core.trace import output_nodes


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ALL_DEMOS)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_prune_every_demo_runs_keeps_shape_and_drops_params(demo_pruner, name, ratio):
    lm, p = demo_pruner(name)
    for crit in IMPORTANCE:
        plan = p.plan(ratio, crit, seed=1)
        assert plan.removed, f"{name}: nothing prunable"
        pruned = p.apply(plan)
        v = p.verify(pruned, plan, masked=False)
        assert v["forward"] and v["shapes_kept"], (crit, v)
        assert v["masked_equivalence"] == {"skipped": "not asked for"}, v
        assert sum(t.numel() for t in pruned.parameters()) < \
            sum(t.numel() for t in lm.model.parameters())


def _widths_of(module, side):
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return module.num_features
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        return module.in_channels if side == "in" else module.out_channels
    if isinstance(module, torch.nn.Linear):
        return module.in_features if side == "in" else module.out_features
    return None


@pytest.mark.parametrize("name", ["densenet", "resnet", "unet", "shufflenet", "mobilenet"])
def test_preview_widths_are_the_applied_models(demo_pruner, name):
    # oracle: the pruned model's own attributes; a layer after a concat is in several groups
    _, p = demo_pruner(name)
    plan = p.plan(0.3, "l1")
    pruned = dict(p.apply(plan).named_modules())
    checked = 0
    for module, sides in p.widths(plan).items():
        for side, width in sides.items():
            real = _widths_of(pruned[module], side)
            if real is not None:
                assert width == real, (module, side)
                checked += 1
    assert checked > 10
    # the preview's per-layer output widths (the width chart, the graph's "⇒" labels)
    shown = 0
    for row in p.preview(plan)["layers"]:
        real = _widths_of(pruned.get(row["name"]), "out")
        if real is not None:
            assert row["after"] == real, row
            shown += 1
    assert shown > 5


class BareMatrices(nn.Module):
    # weights kept as bare parameters and read by matmuls: w2 is in two groups, one per dim
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(6, 16))
        self.w2 = nn.Parameter(torch.randn(16, 12))
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(torch.relu(torch.relu(x @ self.w1) @ self.w2))


@pytest.mark.parametrize("name", ["vit", "llama", "bare"])
def test_preview_rows_of_bare_parameters_are_the_applied_tensors(demo_pruner, name):
    # oracle: the pruned copy's own tensors, along the dim the row names
    if name == "bare":
        torch.manual_seed(0)
        p = Pruner(BareMatrices(), [torch.randn(3, 6)])
    else:
        p = demo_pruner(name)[1]
    plan = p.plan(0.5)
    pruned = p.apply(plan).state_dict()
    keys = {n.name: n.params[""] for n in p.graph.nodes if n.op_type is OpType.PARAMETER}
    rows = [r for r in p.preview(plan)["layers"] if r["op_type"] == "parameter"]
    for r in rows:
        param, _, dim = r["name"].partition(" (dim ")
        dims = [int(dim.rstrip(")"))] if dim else \
            [d for d, w in enumerate(p.graph.by_name[param].out_shapes[0]) if w == r["before"]]
        assert any(pruned[keys[param]].shape[d] == r["after"] for d in dims), r
    assert sum(r["after"] < r["before"] for r in rows) >= 2
    if name == "vit":  # the class token and the position table shrink with the stream
        assert {"cls_token", "pos_embed"} <= {r["name"] for r in rows}
    if name == "bare":
        assert {r["name"] for r in rows} == {"w1", "w2 (dim 0)", "w2 (dim 1)"}
        assert all(r["after"] < r["before"] for r in rows)


@pytest.mark.parametrize("name", ALL_DEMOS)
def test_every_pruned_tensor_is_an_index_select_of_the_original(demo_pruner, name):
    lm, p = demo_pruner(name)
    plan = p.plan(0.5)
    pruned = p.apply(plan).state_dict()
    orig = lm.model.state_dict()
    kept = p.kept(plan)
    assert kept
    for key, t in orig.items():
        expect = t
        for d, idx in sorted(kept.get(key, {}).items(), key=lambda kv: int(kv[0])):
            expect = expect.index_select(int(d), torch.as_tensor(idx))
        assert torch.equal(pruned[key], expect), key


def test_pruned_tensors_keep_their_memory_format_dtype_device_and_grad_flag():
    # a channels_last model came back from apply with contiguous conv weights (index_select
    # returns contiguous tensors): its convs then converted them on every call
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1),
                          nn.ReLU(), nn.Conv2d(8, 4, 3)).double()
    model = model.to(memory_format=torch.channels_last).eval()
    model[3].weight.requires_grad_(False)  # a frozen layer stays frozen
    x = torch.randn(2, 3, 8, 8, dtype=torch.double).to(memory_format=torch.channels_last)
    p = Pruner(model, (x,))
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    before, after = model.state_dict(keep_vars=True), pruned.state_dict(keep_vars=True)
    cut = [k for k in before if after[k].shape != before[k].shape]
    assert {"0.weight", "3.weight", "5.weight"} <= set(cut)
    for k, t in after.items():
        old = before[k]
        assert (t.dtype, t.device, t.requires_grad, type(t)) == \
            (old.dtype, old.device, old.requires_grad, type(old)), k
        if t.dim() == 4:
            assert t.is_contiguous(memory_format=torch.channels_last), (k, t.stride())
    assert not pruned[3].weight.requires_grad and pruned[0].weight.requires_grad
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_preview_and_apply_never_touch_the_model(demo_pruner):
    lm, p = demo_pruner("densenet")
    before = _state(lm.model)
    plan = p.plan(0.5)
    pv = p.preview(plan)
    p.apply(plan)
    p.verify(p.apply(plan), plan)
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert pv["params"]["after"] < pv["params"]["before"]
    assert pv["macs"]["after"] < pv["macs"]["before"]
    conv = next(layer for layer in pv["layers"] if layer["name"] == "stem")
    assert conv["after"] == conv["before"] - len(plan.removed[0])


def test_macs_come_from_flop_counter(demo_pruner):
    _, p = demo_pruner("cnn")
    pv = p.preview(Plan({}))
    # conv 3->16 3x3 on 32x32: 16*3*9*1024 MACs, plus later layers
    assert pv["macs"]["before"] == pv["macs"]["after"] >= 16 * 3 * 9 * 32 * 32


class _MaskedEncoder(nn.Module):
    """nn.TransformerEncoder as its docs show it: nested tensors on (the default) and a
    padding mask, which puts its layers on nested tensors in eval mode."""

    def __init__(self, nested: bool = True):
        super().__init__()
        self.emb = nn.Embedding(40, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested)
        self.fc = nn.Linear(32, 3)

    def forward(self, ids):
        return self.fc(self.enc(self.emb(ids), src_key_padding_mask=ids == 0).mean(1))


def test_macs_of_a_transformer_encoder_with_a_padding_mask_count_its_layers():
    # its layers ran on nested tensors, which FlopCounterMode does not see: 192 MACs, the
    # last Linear's alone
    ids = torch.randint(1, 40, (2, 9))
    ids[0, -3:] = 0
    by_hand = 2 * (2 * 9 * 32 * 96 + 2 * 9 * 32 * 32      # in and out projections
                   + 2 * (2 * 4 * 9 * 9 * 8)             # scores and their values
                   + 2 * (2 * 9 * 32 * 64)) + 2 * 32 * 3  # feed-forward; head
    previews = []
    for nested in (True, False):
        torch.manual_seed(0)
        p = Pruner(_MaskedEncoder(nested).eval(), (ids,))
        previews.append(p.preview(p.plan(0.5)))
    assert previews[0]["macs"]["before"] == by_hand
    assert previews[0]["macs"] == previews[1]["macs"]  # (no nested tensors there at all)
    assert previews[0]["macs"]["after"] < by_hand


def test_attention_on_cpu_tensors_counts_its_macs_as_on_meta():
    # F.scaled_dot_product_attention on CPU runs a kernel FlopCounterMode has no formula
    # for: q @ k^T and the weights @ v counted 0 on real tensors, but counted on meta (a
    # Mixtral's MACs moved with --dtype)
    from viewer.core.forward import count

    class Attend(nn.Module):
        def forward(self, q, k, v, mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 5)
    mask = torch.zeros(6, 10)
    by_hand = 2 * 4 * 6 * 10 * 8 + 2 * 4 * 6 * 10 * 5  # scores, then their values
    real = count(Attend(), (q, k, v, mask))["macs"]
    meta = count(Attend(), tuple(t.to("meta") for t in (q, k, v, mask)))["macs"]
    assert real == meta == by_hand


def test_plan_is_deterministic(demo_pruner):
    _, p = demo_pruner("mobilenet")
    for crit in IMPORTANCE:
        assert p.plan(0.4, crit, seed=3).removed == p.plan(0.4, crit, seed=3).removed


def test_l1_removes_the_smallest_units(demo_pruner):
    _, p = demo_pruner("cnn")
    plan = p.plan(0.5, "l1")
    g = p.groups[0]
    scores = np.asarray(plan.scores[g.id])
    removed = plan.removed[g.id]
    kept = sorted(set(range(g.n_units)) - set(removed))
    assert scores[removed].max() <= scores[kept].min()


class Recurrent(torch.nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn, self.fc = cls(6, 5, batch_first=True), torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


@pytest.mark.parametrize("cls, gates", [(torch.nn.LSTM, 4), (torch.nn.GRU, 3)])
@pytest.mark.parametrize("crit", ["l1", "l2"])
def test_a_recurrent_units_score_counts_its_rows_in_every_gate(cls, gates, crit):
    # (only the first gate's rows were counted: half an LSTM unit's weights or less)
    torch.manual_seed(0)
    model, x = Recurrent(cls).eval(), torch.randn(2, 4, 6)
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.root == "rnn")
    r = model.rnn

    def mag(t):
        return t.detach().abs() if crit == "l1" else t.detach().pow(2)

    # unit i: its row in each gate of weight_ih, weight_hh and both biases, its weight_hh
    # column, and its fc column
    want = sum(mag(t).reshape(gates, 5, -1).sum((0, 2)) for t in
               (r.weight_ih_l0, r.weight_hh_l0, r.bias_ih_l0, r.bias_hh_l0))
    want = want + mag(r.weight_hh_l0).sum(0) + mag(model.fc.weight).sum(0)
    order = [int(u) for _, u in sorted(zip(g.members[0].pos, g.members[0].unit, strict=True))]
    np.testing.assert_allclose(p.importance(g, crit)[order], want.numpy(), rtol=1e-5)


class TiedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.mid, self.lm = torch.nn.Embedding(11, 8), torch.nn.Linear(8, 8), \
            torch.nn.Linear(8, 11, bias=False)
        self.lm.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        return self.lm(h + self.mid(h))


def test_a_tensor_two_members_cut_is_scored_once():
    # a tied weight (or a module called twice) was summed once per member that cuts it
    torch.manual_seed(0)
    model, ids = TiedLM().eval(), torch.randint(0, 11, (2, 5))
    p = Pruner(model, (ids,))
    g = next(grp for grp in p.groups if grp.root == "emb")
    assert {(m.node_name, m.side) for m in g.members} >= {("emb", "out"), ("lm", "in")}
    w = model.mid.weight.detach().abs()
    want = (model.emb.weight.detach().abs().sum(0) + w.sum(0) + w.sum(1)
            + model.mid.bias.detach().abs())
    np.testing.assert_allclose(p.importance(g, "l1"), want.numpy(), rtol=1e-5)


class MHANet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.head = torch.nn.Linear(4, 12), torch.nn.Linear(12, 3)
        self.att = torch.nn.MultiheadAttention(12, 3, batch_first=True)

    def forward(self, x):
        h = self.inp(x)
        return self.head(h + self.att(h, h, h)[0])


@pytest.mark.parametrize("ratio, round_to, kept", [(0.5, 2, 6), (0.3, 2, 12), (0.7, 2, 6),
                                                   (0.5, 4, 12), (0.5, 1, 6), (0.9, 3, 3)])
def test_round_to_and_whole_rounds_of_heads_hold_together(ratio, round_to, kept):
    # 12 units, removed 3 at a time (one per head): the kept count was rounded to round_to
    # and then cut to whole rounds, which broke round_to (ratio 0.5, round_to 4: kept 9)
    torch.manual_seed(0)
    p = Pruner(MHANet().eval(), (torch.randn(2, 5, 4),))
    g = next(grp for grp in p.groups if grp.root == "inp")
    assert (g.n_units, g.multiple_of) == (12, 3)
    plan = p.plan(ratio, round_to=round_to)
    assert g.n_units - len(plan.removed.get(g.id, [])) == kept


def test_ignores_and_overrides_take_the_forms_plans_store(demo_pruner):
    _, p = demo_pruner("cnn")
    listed = p.plan(0.5, ignore=["features.4"])
    # a set of names was taken for parsed (name, side) pairs: "c" and "s" were names
    assert p.plan(0.5, ignore={"features.4"}).removed == listed.removed
    assert p.plan(0.5, ignore={"features.4:out"}).settings["ignore"] == ["features.4:out"]
    # settings.overrides stores its keys as strings: they were "no group"
    assert p.plan(0.5, overrides={"1": 0.25}).removed == p.plan(0.5, overrides={1: 0.25}).removed
    for key in (True, 1.0, "", " "):
        with pytest.raises(DepViewError, match="override keys are group ids"):
            p.plan(0.5, overrides={key: 0.25})
    blocked = next(g for g in p.groups if p.reason(g))
    with pytest.raises(DepViewError, match=f"override names group {blocked.id} .* not pruned: "):
        p.plan(0.5, overrides={blocked.id: 0.25})  # was silently ignored


def _ratios(p, plan) -> dict[int, float]:
    """The share of each group's units a plan removes."""
    return {g.id: len(plan.removed.get(g.id, [])) / g.n_units for g in p.groups}


def test_an_override_by_name_sets_the_groups_rooted_in_it(demo_pruner):
    _, p = demo_pruner("resnet")
    in_layer2 = {g.id for g in p.groups if g.root.startswith("layer2.")}
    assert len(in_layer2) == 3  # layer2.0.conv1, its stream (layer2.0.conv2), layer2.1.conv1
    plan = p.plan(0.25, overrides={"layer2": 0.75})
    r = _ratios(p, plan)
    assert {g for g, x in r.items() if x == 0.75} == in_layer2
    assert all(r[g.id] == 0.25 for g in p.groups if g.id not in in_layer2 and not p.reason(g))
    assert plan.settings["overrides"] == {str(g): 0.75 for g in sorted(in_layer2)}
    assert plan.settings["override_names"] == {"layer2": 0.75}
    # the same as naming the ids; the more specific name wins, and an id wins over any name
    assert plan.removed == p.plan(0.25, overrides=dict.fromkeys(in_layer2, 0.75)).removed
    conv1 = next(g.id for g in p.groups if g.root == "layer2.0.conv1")
    r = _ratios(p, p.plan(0.25, overrides={"layer2": 0.75, "layer2.0.conv1": 0.5}))
    assert r[conv1] == 0.5 and all(r[g] == 0.75 for g in in_layer2 - {conv1})
    r = _ratios(p, p.plan(0.25, overrides={"layer2.0.conv1": 0.5, conv1: 0.125}))
    assert r[conv1] == 0.125
    # a layer that roots no group sets the group of its outputs (layer1.0.conv2 writes the
    # stem's residual stream)
    stream = next(g for g in p.groups if any(m.node_name == "layer1.0.conv2" and m.side == "out"
                                             for m in g.members))
    assert stream.root == "conv1"
    assert _ratios(p, p.plan(0.25, overrides={"layer1.0.conv2": 0.5}))[stream.id] == 0.5


def test_an_override_pattern_sets_every_match_and_conflicts_are_named(demo_pruner):
    _, p = demo_pruner("llama")
    mlps = {g.id for g in p.groups if g.root.endswith(".mlp.gate_proj")}
    heads = {g.id for g in p.groups if g.root.endswith(".attn.q_proj")}
    assert len(mlps) == len(heads) == 2
    plan = p.plan(0.25, overrides={"*.mlp": 0.5, "layers.*.attn": 0.5})
    r = _ratios(p, plan)
    assert all(r[g] == 0.5 for g in mlps | heads) and r[0] == 0.25
    assert plan.settings["override_names"] == {"*.mlp": 0.5, "layers.*.attn": 0.5}
    # a plain name beats a pattern as specific as it; more dots beat fewer
    r = _ratios(p, p.plan(0.25, overrides={"layers.*": 0.5, "layers.1": 0.75}))
    one = {g.id for g in p.groups if g.root.startswith("layers.1.")}
    assert all(r[g] == (0.75 if g in one else 0.5) for g in mlps | heads)
    with pytest.raises(DepViewError, match=r"override gives group \d+ \('layers.0.mlp.gate_proj'"
                                           r"\) two ratios, \*.mlp=0.5 and layers.\*=0.75: "):
        p.plan(0.25, overrides={"*.mlp": 0.5, "layers.*": 0.75})
    with pytest.raises(DepViewError, match="override 'nothing.*' matches no layer or module"):
        p.plan(0.25, overrides={"nothing.*": 0.5})
    # the groups JSON says which units are heads (what --round-to counts)
    assert {g.id for g in p.groups if p.group_dict(g, with_indices=False)["heads"]} == heads


def test_groups_holding_a_layer_say_which_of_its_channels_each_holds(demo_pruner):
    _, p = demo_pruner("resnet")
    stem = next(g.id for g in p.groups if g.root == "conv1")
    stream2 = next(g.id for g in p.groups if g.root == "layer2.0.conv2")
    # the downsample reads the stem's stream and writes stage 2's (its BN's inputs too)
    assert p.groups_holding("layer2.0.downsample") == {stem: ["in"], stream2: ["out", "in"]}
    assert p.groups_holding("layer2.0.downsample.0") == {stem: ["in"], stream2: ["out"]}
    # the oracle: every group with a member in the module, none without
    for name in ("layer3", "layer1.0.conv2", "fc"):
        assert set(p.groups_holding(name)) == {
            g.id for g in p.groups
            if any(m.module == name or m.module.startswith(name + ".") for m in g.members)}
    both = [p.groups_holding(f"layer{i}.0.downsample") for i in (2, 3)]
    assert p.groups_holding("layer*.0.downsample") == {
        g: sorted(set(both[0].get(g, [])) | set(both[1].get(g, [])), key=["out", "in"].index)
        for g in sorted({*both[0], *both[1]})}
    with pytest.raises(DepViewError, match="--layer names no layer of this model: 'layer9'"):
        p.groups_holding("layer9", "--layer")


@pytest.mark.parametrize("name, msg", [
    ("layer9", "override names no layer of this model: 'layer9'; did you mean"),
    ("layer1.0.relu", "override 'layer1.0.relu': it holds no channels a group prunes"),
    ("fc", "override 'fc' names group 9 ('fc'), which is not pruned: it reaches the model "
           "output"),
])
def test_an_override_name_that_sets_nothing_is_refused(demo_pruner, name, msg):
    _, p = demo_pruner("resnet")
    with pytest.raises(DepViewError, match=re.escape(msg)):
        p.plan(0.5, overrides={name: 0.25})
    with pytest.raises(DepViewError, match="override ratio for layer1 must be"):
        p.plan(0.5, overrides={"layer1": 1.5})


def test_a_wildcard_ignore_protects_what_it_matches(demo_pruner):
    _, p = demo_pruner("resnet")
    plan = p.plan(0.5, ignore=["*.downsample"])
    named = p.plan(0.5, ignore=["layer2.0.downsample", "layer3.0.downsample"])
    assert plan.removed == named.removed and plan.settings == named.settings
    assert plan.removed != p.plan(0.5).removed
    # the outermost matches, on the side given
    plan = p.plan(0.5, ignore=["layer*.0:in"])
    assert plan.settings["ignore"] == ["layer1.0:in", "layer2.0:in", "layer3.0:in"]
    with pytest.raises(DepViewError, match=r"ignore '\*.gelu\*' matches no layer or module"):
        p.plan(0.5, ignore=["*.gelu*"])
    with pytest.raises(DepViewError, match=r"ignore '\*relu\*': what it matches \(layer1.0.relu, "
                                           r".*, \.\.\.\) holds no channels a group prunes"):
        p.plan(0.5, ignore=["*relu*"])
    with pytest.raises(DepViewError, match=r"ignore '\*.downsample:cell': .* holds no cell "):
        p.plan(0.5, ignore=["*.downsample:cell"])
    # the groups command's JSON sees the same ignores
    assert p.resolve_ignore(["*.downsample"]) == p.resolve_ignore(
        ["layer2.0.downsample", "layer3.0.downsample"])


def test_the_bn_importance_says_which_groups_it_scored_by_l1(demo_pruner):
    _, p = demo_pruner("cnn")  # its conv groups have a BatchNorm, fc1's has none
    plan = p.plan(0.5, "bn")
    fc1 = next(g for g in p.groups if g.root == "fc1")
    assert plan.settings["scored_by_l1"] == [fc1.id]
    np.testing.assert_array_equal(plan.scores[fc1.id], p.importance(fc1, "l1"))
    assert "scored_by_l1" not in p.plan(0.5, "l1").settings


class ConcatIntoGroups(torch.nn.Module):
    """Two layers concatenated (6 + 4 channels) into a conv of 2 groups: 5 units (channel j
    and j + 5), ca holding all 5 and cb units 1-4; unit 0, ca's alone, matters most."""

    def __init__(self):
        super().__init__()
        self.ca, self.cb = torch.nn.Conv2d(3, 6, 1), torch.nn.Conv2d(3, 4, 1)
        self.gc = torch.nn.Conv2d(10, 4, 3, padding=1, groups=2)
        with torch.no_grad():
            self.ca.weight[[0, 5]] *= 100

    def forward(self, x):
        return self.gc(torch.cat([self.ca(x), self.cb(x)], 1))


def test_a_high_ratio_keeps_a_unit_in_every_layer_of_a_group():
    # ratio 0.8 kept a unit that lay in ca alone: cb had no channels left, and the width
    # check then dropped the whole group from the plan
    torch.manual_seed(0)
    model, x = ConcatIntoGroups().eval(), torch.randn(1, 3, 5, 5)
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.root == "ca")
    assert {m.node_name for m in g.members} >= {"ca", "cb"}
    for ratio in (0.8, 0.9):
        plan = p.plan(ratio)
        assert g.id in plan.removed and g.id not in plan.skipped, plan.skipped
        # the ratio's 4 units still go: cb's most important unit stays, ca's own goes instead
        assert len(plan.removed[g.id]) == 4 and 0 in plan.removed[g.id]
        pruned = p.apply(plan)
        assert pruned.ca.out_channels >= 1 and pruned.cb.out_channels >= 1
        assert p.verify(pruned, plan)["masked_equivalence"]["ok"]


def test_round_to_keeps_multiples(demo_pruner):
    _, p = demo_pruner("resnet")
    plan = p.plan(0.3, round_to=8)
    for gid, units in plan.removed.items():
        assert (p.groups[gid].n_units - len(units)) % 8 == 0


def test_global_ranking_uses_one_budget(demo_pruner):
    _, p = demo_pruner("resnet")
    plan = p.plan(0.5, global_=True)
    total = sum(g.n_units for g in p.groups if not p.reason(g))
    assert abs(plan.n_removed - total // 2) <= len(plan.removed)
    assert len({len(v) / p.groups[k].n_units for k, v in plan.removed.items()}) > 1


def test_overrides_and_ignore_in_vs_out(demo_pruner):
    _, p = demo_pruner("resnet")
    assert parse_ignore(["fc", "conv1:out"]) == {("fc", "in"), ("fc", "out"), ("fc", "cell"),
                                                 ("conv1", "out")}
    plan = p.plan(0.5, overrides={1: 0.25})
    assert len(plan.removed[1]) == p.groups[1].n_units // 4
    # ignoring layer1.0.conv2's inputs blocks the group feeding it, not the group it feeds
    g_in = next(g for g in p.groups if any(m.node_name == "layer1.0.conv2" and m.side == "in"
                                            for m in g.members))
    g_out = next(g for g in p.groups if any(m.node_name == "layer1.0.conv2" and m.side == "out"
                                             for m in g.members))
    plan = p.plan(0.5, ignore=["layer1.0.conv2:in"])
    assert g_in.id not in plan.removed and g_out.id in plan.removed
    assert "inputs are ignored" in plan.skipped[g_in.id]
    plan = p.plan(0.5, ignore=["layer1.0.conv2:out"])
    assert g_in.id in plan.removed and g_out.id not in plan.removed


class _OwnWeights(nn.Module):
    """Layers that call F.linear, F.bilinear and F.conv1d on their own weights."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(12, 24), nn.Linear(12, 20)
        self.w = nn.Parameter(torch.randn(16, 24) / 5)  # F.linear: (out, in)
        self.bil = nn.Bilinear(16, 20, 8)  # (out, in1, in2)
        self.c = nn.Parameter(torch.randn(6, 8, 1) / 3)  # F.conv1d: (out, in, k)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(F.linear(F.relu(self.a(x)), self.w))
        y = F.relu(self.bil(h, F.relu(self.b(x))))
        y = F.relu(F.conv1d(y[:, :, None], self.c))[:, :, 0]
        return self.out(y)


@pytest.mark.parametrize("name, reads, writes", [("w", ["a"], ["w"]),
                                                 ("bil", ["w", "b"], ["bil.bias"]),
                                                 ("c", ["bil.bias"], ["conv1d"])])
def test_ignoring_a_functional_layers_inputs_or_outputs_takes_its_weights_dims_apart(
        name, reads, writes):
    # its weight's every dim was "out": --ignore w:in protected nothing, and w:out also
    # blocked the group its columns read
    p = Pruner(_OwnWeights().eval(), (torch.randn(2, 12),))
    roots = {g.root: g.id for g in p.groups}
    for side, blocked in (("in", reads), ("out", writes)):
        plan = p.plan(0.5, ignore=[f"{name}:{side}"])
        assert {g for g in roots if roots[g] in plan.skipped and "ignored" in
                plan.skipped[roots[g]]} == set(blocked), (side, plan.skipped)


def test_a_looked_into_bilinear_layers_sizes_follow_its_weight(tmp_path):
    # nn.Bilinear is run as F.bilinear on its weight: the weight was pruned, but
    # in1_features/in2_features/out_features kept their old values (its repr lied, and code
    # reading them, a new nn.Bilinear(m.in1_features, ...), built the old size)
    import viewer

    torch.manual_seed(0)
    model = _OwnWeights().eval()
    p = Pruner(model, (torch.randn(2, 12),))
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    b = pruned.bil
    assert (b.out_features, b.in1_features, b.in2_features) == tuple(b.weight.shape) != \
        (8, 16, 20)
    assert model.bil.in1_features == 16  # (the loaded model is not changed)
    out = viewer.export_dir(p, plan, pruned, tmp_path / "out", pt2=False)
    back = viewer.load_pruned(out, spec=f"{__file__}:_OwnWeights")
    assert (back.bil.out_features, back.bil.in1_features, back.bil.in2_features) == \
        tuple(b.weight.shape)


class _TwoIntoAttention(nn.Module):
    """An nn.MultiheadAttention whose query is two layers' channels side by side: two
    groups, each holding some of its query channels."""

    def __init__(self, heads):
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 6)
        self.mha = nn.MultiheadAttention(10, heads, batch_first=True, kdim=8, vdim=8)
        self.head = nn.Linear(10, 4)

    def forward(self, x):
        q = torch.cat([self.a(x), self.b(x)], dim=2)
        return self.head(self.mha(q, x, x, need_weights=False)[0])


@pytest.mark.parametrize("heads, units", [(1, [0]), (1, [1, 3]), (2, [0, 2])])
def test_two_groups_sharing_an_attention_cut_different_inner_dims(heads, units):
    # each group cut "the least important inner dims of each head" on its own: both picked
    # the same ones, and a plan of both cut 1 q_proj row for 2 query channels (the pruned
    # copy failed: "expecting query weights shape of (8, 8), but got (9, 8)")
    torch.manual_seed(0)
    p = Pruner(_TwoIntoAttention(heads).eval(), (torch.randn(2, 5, 8),))
    ga, gb = (next(g for g in p.groups if g.root == r) for r in ("a", "b"))
    assert not p.reason(ga) and not p.reason(gb)
    rows = [[c.positions.tolist() for c in p.cuts(g, units)  # (each alone picks the same
             if c.key == "mha.q_proj_weight" and c.dim == 0] for g in (ga, gb)]  # least
    assert rows[0] == rows[1]                                                    # important)
    plan = Plan({ga.id: units, gb.id: units})
    pruned = p.apply(plan)
    e = 10 - 2 * len(units)
    assert tuple(pruned.mha.q_proj_weight.shape) == (e, e) and pruned.mha.embed_dim == e
    assert tuple(pruned.mha.k_proj_weight.shape) == (e, 8)
    assert p.changes(plan)["mha.q_proj_weight"][0].size == 2 * len(units)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["shapes_kept"], v


def test_ignoring_a_block_protects_every_layer_in_it(demo_pruner):
    # `--ignore layer1.0` was accepted and protected nothing (only members whose own module
    # was named matched); naming an activation or "" was accepted too
    _, p = demo_pruner("resnet")
    plan = p.plan(0.5, ignore=["layer1.0"])
    inside = {g.id for g in p.groups
              if any(m.module.startswith("layer1.0.") for m in g.members)}
    assert inside and not inside & set(plan.removed)
    assert all("are ignored" in plan.skipped[gid] for gid in inside)
    assert set(p.plan(0.5).removed) - set(plan.removed) == inside
    # a side applies to every layer in the block: conv1's group leaves layer1.0 only as
    # conv2's inputs
    g1 = next(g for g in p.groups if g.root == "layer1.0.conv1")
    assert g1.id in p.plan(0.5, ignore=["layer1.0:in"]).skipped
    assert g1.id in p.plan(0.5, ignore=["layer1.0:out"]).skipped
    assert g1.id in p.plan(0.5, ignore=["layer2:in"]).removed
    for bad, said in (("layer1.0.relu", "holds no channels a group prunes"),
                      ("", "needs a layer or module name")):
        with pytest.raises(DepViewError, match=said):
            p.plan(0.5, ignore=[bad])
    with pytest.raises(DepViewError, match="names no layer"):
        p.plan(0.5, ignore=["layer1.0.conv"])  # a prefix of a name is not a module


@pytest.mark.parametrize("ratio", [1.5, -0.1, 1.0])
def test_bad_ratio_is_one_clear_error(demo_pruner, ratio):
    _, p = demo_pruner("cnn")
    with pytest.raises(DepViewError, match="ratio must be in"):
        p.plan(ratio)


@pytest.mark.parametrize("kw, said", [({"ratio": "0.5"}, "ratio must be a number in"),
                                      ({"ratio": True}, "ratio must be a number in"),
                                      ({"round_to": "8"}, "round_to must be a whole number"),
                                      ({"round_to": 2.5}, "round_to must be a whole number"),
                                      ({"overrides": {0: "0.3"}}, "override ratio for group 0 "
                                                                  "must be a number"),
                                      ({"seed": "a"}, "seed must be a whole number"),
                                      ({"seed": -1}, "seed must be a whole number >= 0"),
                                      ({"ignore": 5}, "ignore is a list of layer names"),
                                      ({"ignore": [5]}, "ignore is a list of layer names")])
def test_a_setting_of_the_wrong_type_is_one_clear_error(demo_pruner, kw, said):
    _, p = demo_pruner("cnn")
    with pytest.raises(DepViewError, match=said):
        p.plan(**{"ratio": 0.5, **kw})


@pytest.mark.parametrize("removed, said", [
    ({"0": [100]}, r"removes unit 100 of group 0 \('0'\), which has 8 units \(0 to 7\)"),
    ({"0": [-1]}, "removes unit -1 of group 0"),
    ({"0": list(range(8))}, "removes all 8 units of group 0"),
    ({"1": [0]}, "prunes group 1 \\('2'\\), which cannot be pruned: it reaches the model output"),
    ({"7": [0]}, "names group 7, which this model does not have"),
    ({"0": ["a"]}, "a list of unit ids \\(whole numbers\\)"),
])
def test_a_plan_the_model_cannot_take_is_refused_in_one_line(removed, said):
    p = tiny_pruner()
    assert [g.root for g in p.groups] == ["0", "2"]  # the hidden units, the output layer
    with pytest.raises(DepViewError, match=said):
        p.apply(p.plan_from_dict({"removed": removed}))
    # the same plan made by hand is refused by apply itself (no layer of width 0, no output
    # width changed, no unit silently ignored)
    if removed != {"0": ["a"]}:
        with pytest.raises(DepViewError, match=said):
            p.apply(Plan({int(k): v for k, v in removed.items()}))
    for bad in (None, {"removed": {}}):
        with pytest.raises(DepViewError, match="expected a Plan"):
            p.apply(bad)
    with pytest.raises(DepViewError, match="expected a Plan"):
        p.verify(p.model, None)


class SizedParts(nn.Module):
    """Six channels in two parts, 2 and 4, whose size a module attribute holds: an int
    (``split([self.s0, C - self.s0])``), a list (``split(self.sizes)``), a slice bound read
    by a conv (``cat([conv(x[:, :self.k]), x[:, self.k:]])``) or read by no layer
    (``cat([x[:, :self.k] * 2, x[:, self.k:]])``)."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.s0, self.sizes, self.k = how, 2, [2, 4], 2
        self.c = nn.Conv2d(3, 6, 1)
        self.fa, self.fb = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1)
        self.o = nn.Conv2d({"int": 4, "list": 4, "slice": 8}.get(how, 6), 3, 1)

    def forward(self, x):
        y = self.c(x)
        if self.how in ("int", "list"):
            sizes = [self.s0, y.shape[1] - self.s0] if self.how == "int" else self.sizes
            a, b = y.split(sizes, 1)
            y = self.fa(a) * torch.sigmoid(self.fb(b))
        elif self.how == "slice":
            y = torch.cat([self.fa(y[:, :self.k]), y[:, self.k:]], 1)
        else:
            y = torch.cat([y[:, :self.k] * 2, y[:, self.k:]], 1)
        return self.o(y)


@pytest.mark.parametrize("how, attr, part0, part1", [
    ("int", "s0", "part 0 of 'split'", "part 1 of 'split'"),
    ("list", "sizes", "part 0 of 'split'", "part 1 of 'split'"),
    ("slice", "k", "slice [0:2] of 'getitem'", "slice [2:6] of 'getitem_1'"),
    ("scaled", "k", "slice [0:2] of 'getitem'", "slice [2:6] of 'getitem_1'")])
def test_a_plan_that_empties_a_part_sized_by_an_attribute_is_refused(how, attr, part0, part1):
    """A hand-made plan removing all of part 0 was taken by plan_from_dict and apply, which
    set an int attribute to 0 and left ``Conv2d(0, 4)``: a raw RuntimeError in the pruned
    forward (a list of sizes was refused by apply alone). check_plan refuses it in one line
    naming the part and the attribute, and plan() keeps a unit of every part."""
    model, x = SizedParts(how).eval(), torch.randn(2, 3, 5, 5)
    with torch.no_grad():  # part 0's channels the least important: plan() would take them
        model.c.weight[:2] *= 0.01
    p = Pruner(model, (x,))
    g = next(g for g in p.groups if g.root == "c")
    assert not p.reason(g) and p.sets(g) == [attr]
    for units, part in (([0, 1], part0), ([2, 3, 4, 5], part1)):
        said = re.escape(f"plan removes all of {part} in group {g.id} ('c')")
        err = _refused_everywhere(p, g.id, units, said)
        if part == part0:
            assert f"(sized by {attr})" in err
    for ratio in (0.5, 0.7, 0.9):
        plan = p.plan(ratio)
        left = set(range(6)) - set(plan.removed.get(g.id, []))
        assert left & {0, 1} and left & {2, 3, 4, 5}, plan.removed
        pruned = p.apply(plan)
        assert p.verify(pruned, plan)["masked_equivalence"]["ok"]


def _refused_everywhere(p, gid: int, units: list[int], said: str) -> str:
    """Removing ``units`` of group ``gid`` is refused in one line matching ``said`` by
    plan_from_dict, check_plan and apply alike; the message."""
    for check in (lambda: p.plan_from_dict({"removed": {str(gid): units}}),
                  lambda: p.check_plan(Plan({gid: units})),
                  lambda: p.apply(Plan({gid: units}))):
        with pytest.raises(DepViewError, match=said) as err:
            check()
        assert "\n" not in str(err.value)
    return str(err.value)


class HeadsOnTheStream(nn.Module):
    """A Linear's stream read by an ``nn.MultiheadAttention`` with 2 heads: its group loses
    units in multiples of 2 (``embed_dim`` must stay divisible by ``num_heads``)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc(x)
        return self.head(h + self.mha(h, h, h, need_weights=False)[0])


def test_a_plan_that_removes_part_of_a_round_of_heads_is_refused():
    """A hand-made plan removing 1 unit of the stream of a 2-head attention was taken by
    check_plan and apply, and the pruned copy failed (``embed_dim`` 7 for 2 heads). A count
    that is not a multiple of the group's ``multiple_of`` is refused in one line naming the
    group and why; every other count runs, and plans made with ratios and overrides (as the
    app and the CLI make them) remove whole rounds."""
    torch.manual_seed(0)
    p = Pruner(HeadsOnTheStream().eval(), (torch.randn(2, 5, 4),), output_layers=["head"])
    g = next(g for g in p.groups if g.root == "fc")
    assert not p.reason(g) and g.multiple_of == 2
    for k in range(1, g.n_units):
        units = list(range(k))
        if k % 2:
            _refused_everywhere(p, g.id, units, re.escape(
                f"plan removes {k} unit{'s' * (k > 1)} of group {g.id} ('fc'), which loses "
                "units in multiples of 2 (attention heads)"))
        else:
            plan = Plan({g.id: units})
            v = p.verify(p.apply(plan), plan)
            assert v["forward"] and v["shapes_kept"], v
    for ratio, overrides in ((0.3, None), (0.5, None), (0.9, None), (0.5, {"fc": 0.3}),
                             (0.5, {g.id: 0.4}), (0.2, {"fc": 0.7})):
        plan = p.plan(ratio, overrides=overrides)
        assert plan.removed[g.id] and len(plan.removed[g.id]) % 2 == 0, (ratio, overrides)
        p.check_plan(plan)


class ThreeParts(nn.Module):
    """A conv's 6 channels split into three parts of 2 (``y.split(self.sizes, 1)``), each
    read by a conv of its own."""

    def __init__(self):
        super().__init__()
        self.sizes = [2, 2, 2]
        self.c = nn.Conv2d(3, 6, 1)
        self.a, self.b, self.d = (nn.Conv2d(2, 4, 1) for _ in range(3))

    def forward(self, x):
        p, q, r = self.c(x).split(self.sizes, 1)
        return self.a(p) + self.b(q) + self.d(r)


def test_a_plan_that_keeps_a_unit_of_every_part_still_removes_whole_rounds():
    """A plan keeps the most important unit of a part it would empty and makes the count
    up from units that empty no part; when each unit left would empty one, it fell one
    short: an odd count for a group removed in steps of 2 (as attention heads are), which
    check_plan refuses. It now gives back the rest of a round instead."""
    torch.manual_seed(0)
    model = ThreeParts().eval()
    with torch.no_grad():  # channel 1 (of part 0) and 3 (of part 1) the most important
        model.c.weight[[1, 3]] *= 100
    p = Pruner(model, (torch.randn(2, 3, 4, 4),))
    g = next(g for g in p.groups if g.root == "c")
    assert not p.reason(g) and p.sets(g) == ["sizes"]
    assert len(p.plan(0.9).removed[g.id]) == 3  # (one unit of each part stays)
    g.multiple_of, g.multiple_why = 2, ["rounds of 2"]
    plan = p.plan(0.9)
    removed = plan.removed[g.id]
    assert len(removed) == 2, removed
    assert all(set(range(2 * i, 2 * i + 2)) - set(removed) for i in range(3)), removed
    p.check_plan(plan)
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


class WindowOverTwoLayers(nn.Module):
    """Two layers' channels joined, a window of 2 over them read by one layer: a's channel 3
    and b's channel 0, each all that layer holds of its group. The window's bounds are
    written in the code or held as attributes; the layer reading it is a Linear, or a
    LayerNorm before it (emptied, a ``LayerNorm(1)`` of the other group's channel alone)."""

    def __init__(self, bounds: str, reader: str):
        super().__init__()
        self.bounds, self.lo, self.hi = bounds, 3, 5
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)
        self.norm = nn.LayerNorm(2) if reader == "norm" else nn.Identity()
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        t = torch.cat([self.a(x), self.b(x)], dim=1)
        window = t[:, 3:5] if self.bounds == "literal" else t[:, self.lo:self.hi]
        return self.head(self.norm(window))


@pytest.mark.parametrize("bounds", ["literal", "attributes"])
@pytest.mark.parametrize("reader", ["linear", "norm"])
def test_a_unit_a_layer_holds_alone_is_refused_by_check_plan(bounds, reader):
    """Validation never removes a unit that is all a layer holds of its group, and plan()
    keeps it, yet check_plan and apply took a hand-made plan removing it: the window read a
    channel of b that should have gone with it, and the pruned forward failed. Every unit
    removed alone and in pairs is now either refused in one line naming the layer, or
    gives a copy that runs with masked equivalence."""
    torch.manual_seed(0)
    p = Pruner(WindowOverTwoLayers(bounds, reader).eval(), (torch.randn(2, 8),),
               output_layers=["head"])
    g = next(g for g in p.groups if g.root == "b")
    assert not p.reason(g)
    holder = "norm" if reader == "norm" else "head"
    refused = []
    for units in [[u] for u in range(4)] + [[u, v] for u in range(4) for v in range(u + 1, 4)]:
        plan = Plan({g.id: units})
        try:
            p.check_plan(plan)
        except DepViewError as exc:
            assert "\n" not in str(exc)
            assert str(exc) == (f"plan removes unit 0 of group {g.id} ('b'), the only one of it "
                                f"'{holder}' holds: that layer would keep none of the group's "
                                "channels, which validation never tries (a plan made by "
                                "plan() keeps such a unit)")
            refused.append(units)
            continue
        v = p.verify(p.apply(plan), plan)
        assert v["forward"], (units, v)
        if g.exact:
            assert v["masked_equivalence"]["ok"], (units, v)
    assert refused == [[0], [0, 1], [0, 2], [0, 3]]
    for ratio in (0.3, 0.5, 0.9):
        plan = p.plan(ratio)
        assert 0 not in plan.removed.get(g.id, [])
        p.check_plan(plan)


def test_unknown_importance(demo_pruner):
    _, p = demo_pruner("cnn")
    with pytest.raises(DepViewError, match="unknown importance"):
        p.plan(0.5, "magic")


def test_a_second_round_prunes_a_split_whose_first_part_kept_one_channel(demo_pruner):
    # round 1 at 0.3 leaves split_sizes [1, 12]: validation removed the first unit, the one
    # channel of part 0 that a plan always keeps, the forward failed and round 2 found
    # qkv/glu blocked
    lm, p = demo_pruner("slicing")
    plan = p.plan(0.3)
    once = p.apply(plan)
    assert once.split_sizes[0] == 1
    q = Pruner(once, lm.inputs, output_layers=lm.output_layers)
    q.validate_groups()
    qkv = next(g for g in q.groups if g.root == "qkv")
    assert not q.reason(qkv) and q.sets(qkv) == ["channels", "split_sizes"]
    plan2 = q.plan(0.3)
    twice = q.apply(plan2)
    assert twice.split_sizes[0] == 1 and twice.channels < once.channels
    v = q.verify(twice, plan2)
    assert v["masked_equivalence"]["ok"] and v["masked_equivalence"]["max_abs_diff"] < 1e-6


def test_the_slicing_demos_qkv_and_glu_prune_together_through_the_size_both_read(demo_pruner):
    # self.channels sizes the qkv view and bounds the GLU's slices: each failed alone, so
    # both stayed blocked; pruned together with it set, both follow
    _, p = demo_pruner("slicing")
    p.validate_groups()
    qkv, glu = (next(g for g in p.groups if g.root == r) for r in ("qkv", "glu"))
    assert not p.reason(qkv) and p.sets(qkv) == ["channels", "split_sizes"]
    assert p.reason(glu).startswith(f"pruned with group #{qkv.id} ('qkv')")
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.channels == pruned.glu.out_channels // 2 == pruned.qkv.out_channels // 3 \
        == 16 - len(plan.removed[qkv.id]) and sum(pruned.split_sizes) == pruned.channels
    v = p.verify(pruned, plan)
    assert v["masked_equivalence"]["ok"] and v["masked_equivalence"]["max_abs_diff"] < 1e-6


def test_attributes_follow_the_tensors(demo_pruner):
    _, p = demo_pruner("rnn")
    plan = p.plan(0.5)
    m = p.apply(plan)
    assert m.lstm.hidden_size == m.lstm.weight_hh_l0.shape[1] < 32
    assert m.gru.input_size == m.lstm.hidden_size
    assert m.rnn.hidden_size * 2 == m.fc.in_features
    assert m.embedding.embedding_dim == m.lstm.input_size


class GroupedNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=4)  # grouped
        self.m = nn.Conv2d(12, 24, 3, padding=1, groups=12)  # depthwise with multiplier 2
        self.t = nn.ConvTranspose2d(24, 8, 2, stride=2, groups=2)  # grouped transposed
        self.b = nn.BatchNorm2d(8)
        self.o = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.o(self.b(self.t(self.m(self.g(self.a(x))))))


def test_grouped_convs_prune_evenly_per_group():
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    p = Pruner(GroupedNet().eval(), (torch.randn(1, 3, 8, 8),))
    reasons = {g.root: p.reason(g) for g in p.groups}
    assert reasons == {"a": "", "g": "", "t": "", "o": "it reaches the model output 'output'"}
    g = next(x for x in p.groups if x.root == "g")
    # a unit is an offset in g's 4 groups (3 units); each g output is one of m's groups (m has
    # one input per group, multiplier 2): m loses whole groups, t the same offset of its 2
    assert g.n_units == 3 and g.member("m", "out").indices([0]).tolist() == [0, 1, 6, 7, 12,
                                                                             13, 18, 19]
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.g.weight.shape == (8, 1, 3, 3) and pruned.g.groups == 4
    assert (pruned.m.in_channels, pruned.m.out_channels, pruned.m.groups) == (8, 16, 8)
    assert pruned.t.in_channels == 16 and pruned.t.out_channels == 4
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]


def test_mha_prunes_every_head_evenly(demo_pruner):
    lm, p = demo_pruner("vit")
    plan = p.plan(0.3)  # 32 * 0.3 = 9 units -> rounded down to 8 (multiples of 4 heads)
    resid = p.groups[0]
    assert len(plan.removed[resid.id]) == 8
    m = p.apply(plan)
    attn = m.blocks[0].attn
    assert (attn.embed_dim, attn.head_dim, attn.num_heads) == (24, 6, 4)
    assert attn.in_proj_weight.shape == (72, 24) and attn.out_proj.weight.shape == (24, 24)
    assert m.cls_token.shape[-1] == m.pos_embed.shape[-1] == m.blocks[1].gamma2.shape[0] == 24
    # the kept inner dims are an index-select of the original, per head
    orig = lm.model.blocks[0].attn.in_proj_weight
    kept_rows = p.kept(plan)["blocks.0.attn.in_proj_weight"]["0"]
    assert len(kept_rows) == 72 and all(len([r for r in kept_rows if h * 8 <= r % 32 < h * 8 + 8])
                                        == 18 for h in range(4))
    sub = orig[kept_rows][:, p.kept(plan)["blocks.0.attn.in_proj_weight"]["1"]]
    assert torch.equal(sub, attn.in_proj_weight)
    assert p.verify(m, plan)["shapes_kept"]


class MHABlock(nn.Module):
    """A residual attention block; ``add_bias_kv`` appends learned rows (1, 1, E) to the
    projected keys and values."""

    def __init__(self, add_bias_kv: bool):
        super().__init__()
        self.inp, self.out = nn.Linear(6, 16), nn.Linear(16, 3)
        self.mha = nn.MultiheadAttention(16, 4, add_bias_kv=add_bias_kv)
        if add_bias_kv:  # (torch initialises them with a normal, make sure no one is zero)
            torch.nn.init.uniform_(self.mha.bias_k, 0.5, 1.0)
            torch.nn.init.uniform_(self.mha.bias_v, 0.5, 1.0)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.mha(h, h, h)[0])


class TextEncoder(nn.Module):
    """torch's own transformer encoder (MultiheadAttention, LayerNorms, the FFN) over token
    embeddings with a learned position table, as a user writes a text classifier."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(50, d)
        self.pos = nn.Parameter(torch.randn(1, 16, d))
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=64, batch_first=True,
                                           dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids) + self.pos[:, :ids.shape[1]]).mean(1))


class Translator(nn.Module):
    """``nn.Transformer``: encoder and decoder, cross-attention from the decoder."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.src, self.tgt = nn.Linear(8, d), nn.Linear(8, d)
        self.tf = nn.Transformer(d, 4, 2, 2, dim_feedforward=64, batch_first=True,
                                 dropout=0.0)
        self.out = nn.Linear(d, 8)

    def forward(self, s, t):
        return self.out(self.tf(self.src(s), self.tgt(t)))


def test_torch_transformer_layers_prune_and_run_on_their_fast_path():
    torch.manual_seed(0)
    model, ids = TextEncoder().eval(), torch.randint(0, 50, (2, 16))
    p = Pruner(model, (ids,), output_layers=["head"])
    plan = p.plan(0.5)
    stream = next(g for g in p.groups if g.root == "embed")
    assert stream.prunable and stream.multiple_of == 4  # the 4 heads keep equal dims
    assert len(plan.removed) == 3  # the stream and each layer's FFN
    pruned = p.apply(plan)
    layer = pruned.encoder.layers[1]
    attn = layer.self_attn
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (16, 4, 4)
    assert attn.in_proj_weight.shape == (48, 16) and layer.linear1.out_features == 32
    assert layer.norm2.normalized_shape == (16,) and pruned.pos.shape == (1, 16, 16)
    v = p.verify(pruned, plan)
    assert v["shapes_kept"] and v["masked_equivalence"]["exact_groups"]["ok"], v
    # without grad torch runs each encoder layer as one fused op, which checks the widths
    with torch.no_grad(), torch.profiler.profile() as prof:
        fused = pruned(ids)
    assert any(e.name == "aten::_transformer_encoder_layer_fwd" for e in prof.events())
    assert torch.allclose(fused, pruned(ids), atol=1e-5)

    torch.manual_seed(0)
    model = Translator().eval()
    s, t = torch.randn(2, 5, 8), torch.randn(2, 7, 8)
    p = Pruner(model, (s, t), output_layers=["out"])
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.tf.decoder.layers[0].multihead_attn.embed_dim == 16
    v = p.verify(pruned, plan)
    assert v["shapes_kept"] and v["masked_equivalence"]["exact_groups"]["ok"], v


@pytest.mark.parametrize("add_bias_kv", [True, False])
def test_mha_bias_kv_loses_the_inner_dims_of_keys_and_values(add_bias_kv):
    # bias_k/bias_v were not cut: the residual group was blocked by a raw torch size error
    torch.manual_seed(0)
    model, x = MHABlock(add_bias_kv).eval(), torch.randn(5, 2, 6)
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.root == "inp")
    assert not p.reason(g)
    plan = Plan({g.id: [0, 5, 6, 11]})  # one inner dim of each of the 4 heads: 4 -> 3
    pruned = p.apply(plan)
    assert pruned.mha.head_dim == 3
    if add_bias_kv:
        rows = p.kept(plan)["mha.in_proj_weight"]["0"]  # q | k | v rows kept
        inner = [r - 16 for r in rows if 16 <= r < 32]  # the kept inner dims of k
        assert torch.equal(pruned.mha.bias_k, model.mha.bias_k[:, :, inner])
        assert torch.equal(pruned.mha.bias_v, model.mha.bias_v[:, :, inner])
    # the oracle: the masked model, its queries scaled so that q.k / sqrt(4) over the kept
    # dims is q.k / sqrt(3) as the pruned model computes it (the only inexact step)
    masked = p.masked_model(plan)
    with torch.no_grad():
        masked.mha.in_proj_weight[:16] *= math.sqrt(4 / 3)
        masked.mha.in_proj_bias[:16] *= math.sqrt(4 / 3)
        assert torch.allclose(pruned(x), masked(x), atol=1e-5)


def test_taylor_uses_the_given_batch(demo_pruner):
    _, p = demo_pruner("cnn")
    a = p.plan(0.5, "taylor", batch=(torch.randn(4, 3, 32, 32),))
    b = p.plan(0.5, "taylor", batch=(torch.randn(4, 3, 32, 32) * 3 + 1,))
    assert a.scores != b.scores
    assert all(len(v) == len(a.scores[k]) for k, v in b.scores.items())


def test_taylor_scores_frozen_weights_too_and_refuses_a_nan_or_empty_batch():
    # requires_grad=False weights had no gradient and were skipped: a frozen group scored all
    # zeros and lost units 0..k-1; a nan in the batch gave nan scores that planned all the same
    from demo_models import get_demo

    demo = get_demo("cnn")
    torch.manual_seed(0)
    a = demo.build().eval()
    b = copy.deepcopy(a)
    b.requires_grad_(False)
    x = (torch.randn(4, 3, 32, 32),)
    sa = Pruner(a, x).plan(0.5, "taylor").scores
    sb = Pruner(b, x).plan(0.5, "taylor").scores
    assert sa == sb and all(np.any(np.asarray(v) > 0) for v in sb.values())
    assert not any(t.requires_grad for t in b.parameters())  # the user's flags are theirs
    p = Pruner(a, x)
    bad = torch.randn(4, 3, 32, 32)
    bad[0, 0, 0, 0] = float("nan")
    for batch, said in (((bad,), "holds nan or inf"),
                        ((torch.randn(0, 3, 32, 32),), "the batch is empty")):
        with pytest.raises(DepViewError, match=said):
            p.plan(0.5, "taylor", batch=batch)


def test_complex_weights_plan_without_a_warning():
    # the weights' fingerprint summed complex tensors as float64: "Casting complex values to
    # real discards the imaginary part" on every Taylor plan
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8, dtype=torch.cfloat), nn.Linear(8, 2, dtype=torch.cfloat))
    x = (torch.randn(3, 4, dtype=torch.cfloat),)
    p = Pruner(net.eval(), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = p.plan(0.5, "taylor")
    pruned = p.apply(plan)
    assert pruned[0].out_features == 4 and pruned[0].weight.dtype == torch.cfloat
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


class GN(torch.nn.Module):
    def __init__(self, groups: int, c: int = 16):
        super().__init__()
        self.a = torch.nn.Conv2d(3, c, 1)
        self.gn = torch.nn.GroupNorm(groups, c)
        self.b = torch.nn.Conv2d(c, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.gn(self.a(x))))


@pytest.mark.parametrize("groups, units, exact, groups_after", [
    (4, 4, True, 2),     # 4 groups of 4: whole groups go, the others' statistics stay
    (16, 16, True, 8),   # one channel per group (wav2vec2's first layer)
    (2, 8, False, 2),    # 2 groups of 8: the same offset of both groups goes
    (1, 16, False, 1),   # GroupNorm(1, C): only per-channel, statistics change
])
def test_groupnorm_loses_whole_groups_when_that_is_finer(tmp_path, groups, units, exact,
                                                         groups_after):
    torch.manual_seed(0)
    model, x = GN(groups).eval(), torch.randn(2, 3, 4, 4)
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.root == "a")
    assert (g.n_units, g.exact, p.reason(g)) == (units, exact, "")
    plan = Plan({g.id: list(range(units // 2))})
    pruned = p.apply(plan)
    assert (pruned.gn.num_groups, pruned.gn.num_channels) == (groups_after, 8)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["shapes_kept"]
    if exact:  # removing whole groups is exact: masked equivalence holds
        assert v["masked_equivalence"]["ok"], v
    out = export_dir(p, plan, pruned, tmp_path / "gn", {"spec": "in-process"})
    attrs = json.loads((out / "plan.json").read_text())["attrs"]["gn"]  # what a reload sets
    assert attrs["num_channels"] == 8 and attrs.get("num_groups", groups) == groups_after


class WithLoss(torch.nn.Module):
    """Returns its own loss when given labels, like a Hugging Face model."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x, labels=None):
        logits = self.fc(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


class _NoGradStem(nn.Module):
    """Layers whose weights get no gradient in a plain backward: a reentrant checkpoint on
    the raw input (``reentrant``), or code run under ``torch.no_grad()``."""

    def __init__(self, reentrant: bool):
        super().__init__()
        self.reentrant = reentrant
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.fc1, self.fc = nn.Linear(16, 24), nn.Linear(24, 4)

    def forward(self, x):
        if self.reentrant:
            from torch.utils.checkpoint import checkpoint

            h = checkpoint(self.stem, x, use_reentrant=True)
        else:
            with torch.no_grad():
                h = self.stem(x)
        return self.fc(F.relu(self.fc1(h.mean((2, 3)))))


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
def test_taylor_scores_layers_a_plain_backward_misses_or_says_it_fell_back_to_l1():
    # all-zero scores tied, and the group lost its first units, silently
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 8, 8),)
    p = Pruner(_NoGradStem(True).eval(), x)
    plan = p.plan(0.5, "taylor")
    stem = next(g for g in p.groups if g.root == "stem.0")
    assert np.asarray(plan.scores[stem.id]).any() and "scored_by_l1" not in plan.settings
    p = Pruner(_NoGradStem(False).eval(), x)
    plan = p.plan(0.5, "taylor")
    stem = next(g for g in p.groups if g.root == "stem.0")
    assert plan.settings["scored_by_l1"] == [stem.id]
    assert plan.scores[stem.id] == p.plan(0.5, "l1").scores[stem.id]
    assert l1_fallback_text("taylor", plan.settings["scored_by_l1"]) == \
        "Taylor: 1 group has no gradient reaching it and was scored by L1"


def test_taylor_uses_the_models_own_loss_when_it_returns_one():
    from viewer.core.forward import taylor_grads

    torch.manual_seed(0)
    m = WithLoss()
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    ref = torch.autograd.grad(torch.nn.functional.cross_entropy(m.fc(x), y), m.fc.weight)[0]
    got = taylor_grads(m, {"x": x, "labels": y})
    assert torch.allclose(got["fc.weight"], ref)
    # without labels: the surrogate, the mean of the squared outputs
    sur = torch.autograd.grad(m.fc(x).pow(2).mean(), m.fc.weight)[0]
    assert torch.allclose(taylor_grads(m, {"x": x})["fc.weight"], sur)
    assert m.fc.weight.grad is None  # the model itself never ran a backward


def test_taylor_with_labels_on_a_hugging_face_model():
    transformers = pytest.importorskip("transformers")
    from viewer.core.forward import taylor_grads

    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, vocab_size=50, num_labels=3)
    m = transformers.BertForSequenceClassification(cfg).eval()
    ids, labels = torch.randint(0, 50, (4, 8)), torch.tensor([0, 1, 2, 1])
    loss = m(input_ids=ids, labels=labels).loss
    ref = torch.autograd.grad(loss, m.classifier.weight)[0]
    got = taylor_grads(m, {"input_ids": ids, "labels": labels})
    assert torch.allclose(got["classifier.weight"], ref, atol=1e-6)


def _counting_taylor(monkeypatch):
    """demo:cnn, a fresh Pruner for it, and a list that grows by one per gradient pass."""
    import viewer.core.prune as P

    lm = load_model("demo:cnn")
    calls: list[int] = []
    real = P.taylor_grads
    monkeypatch.setattr(P, "taylor_grads", lambda m, x: calls.append(1) or real(m, x))
    return lm, P.Pruner(lm.model, lm.inputs), calls


def test_taylor_scores_are_reused_until_the_batch_or_a_weight_changes(monkeypatch):
    import viewer.core.prune as P

    lm, p, calls = _counting_taylor(monkeypatch)
    batch = (torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)
    a = p.plan(0.5, "taylor", batch=batch)
    b = p.plan(0.3, "taylor", batch=batch, global_=True)  # other settings: same scores
    assert len(calls) == 1 and a.scores == b.scores
    p.plan(0.5, "taylor")  # the example inputs: another batch
    assert len(calls) == 2
    batch[0].mul_(3).add_(1)  # the same object, changed in place
    c = p.plan(0.5, "taylor", batch=batch)
    assert len(calls) == 3 and c.scores != a.scores
    model = copy.deepcopy(lm.model)  # a weight changed in place (the Pruner's own copy)
    q = P.Pruner(model, lm.inputs, graph=p.graph)
    d1 = q.plan(0.5, "taylor", batch=batch)
    with torch.no_grad():
        model.features[0].weight.mul_(-2)
    d2 = q.plan(0.5, "taylor", batch=batch)
    assert len(calls) == 5 and d1.scores != d2.scores
    # through .data, which keeps the version counter (the scores were stale), and a buffer
    model.features[0].weight.data[0].mul_(100)
    d3 = q.plan(0.5, "taylor", batch=batch)
    assert len(calls) == 6 and d3.scores != d2.scores
    model.features[1].running_var.data.mul_(4)
    q.plan(0.5, "taylor", batch=batch)
    assert len(calls) == 7
    # and a cached plan equals a fresh Pruner's plan
    fresh = P.Pruner(lm.model, lm.inputs, graph=p.graph).plan(0.5, "taylor", batch=batch)
    assert fresh.scores == p.plan(0.5, "taylor", batch=batch).scores


def test_taylor_importance_of_one_group_shares_the_kept_scores(monkeypatch):
    _, p, calls = _counting_taylor(monkeypatch)
    plan = p.plan(0.5, "taylor")  # the example inputs
    g = next(g for g in p.groups if g.id in plan.scores)
    assert list(p.importance(g, "taylor")) == plan.scores[g.id] and len(calls) == 1


class Latents(torch.nn.Module):
    """Perceiver-style learned latents: a view of a parameter fed straight to a layer."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.latents = nn.Parameter(torch.randn(4, 16))
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(16), nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        lat = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        return x + self.fc2(torch.relu(self.fc1(self.ln(lat))))


def test_a_preview_counts_a_model_that_feeds_a_view_of_a_parameter_to_a_layer():
    # FlopCounterMode hooks tensors that require grad; such a view, made under no_grad,
    # requires grad without a grad_fn, and its hook asserted
    p = Pruner(Latents().eval(), (torch.randn(2, 4, 16),))
    plan = p.plan(0.5)
    preview = p.preview(plan)
    assert preview["macs"]["before"] == 2 * 4 * (16 * 32 + 32 * 16)
    assert preview["macs"]["after"] == 2 * 4 * (8 * 16 + 16 * 16)  # latents 16 -> 8, fc1 -> 16
    assert all(t.requires_grad for t in p.model.parameters())  # the user's model untouched


def test_ghostnet_cut_to_its_width_after_the_concat_is_not_prunable():
    class Ghost(torch.nn.Module):  # GhostNet: cat(primary, cheap)[:, :oup], 7 + 14 -> 20
        def __init__(self):
            super().__init__()
            nn = torch.nn
            self.primary = nn.Conv2d(8, 7, 1)
            self.cheap = nn.Conv2d(7, 14, 3, padding=1, groups=7)
            self.head = nn.Conv2d(20, 4, 1)

        def forward(self, x):
            x1 = self.primary(x)
            return self.head(torch.cat([x1, self.cheap(x1)], 1)[:, :20])

    torch.manual_seed(0)
    p = Pruner(Ghost().eval(), (torch.randn(1, 8, 6, 6),))
    g = next(x for x in p.groups if x.root == "primary")
    assert g.n_units == 7 and not g.reason  # structurally: a channel and its 2 cheap ones
    for seed in range(3):  # but the fixed [:, :20] breaks almost every choice: validation says
        plan = p.plan(0.3, "random", seed=seed)
        assert g.id not in plan.removed and "forward fails" in p.reason(g)


def test_every_other_channel_sliced_prunes_an_even_and_an_odd_channel_together():
    """``x[:, ::2]``: removing one channel shifts which channels the slice takes (fails);
    the read channels and the dropped ones are two kinds of 8 units, and removing as many of
    each (channels 2k and 2k+1) keeps it taking the kept even ones."""
    class Sliced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 16, 1), torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x))[:, ::2])

    torch.manual_seed(0)
    model, x = Sliced().eval(), torch.randn(1, 3, 4, 4)
    g = Pruner(model, (x,), validate=False).groups[0]
    with pytest.raises(RuntimeError):  # oracle: one channel alone breaks the model
        Pruner(model, (x,), validate=False).apply(Plan({g.id: [0]}))(x)
    p = Pruner(model, (x,))
    for ratio, importance in ((0.3, "l1"), (0.5, "random"), (0.7, "l2")):
        plan = p.plan(ratio, importance, seed=1)
        g = p.groups[0]
        assert g.n_units == 8 and not p.reason(g)
        assert g.member("a", "out").indices(plan.removed[g.id]).tolist() == \
            sorted(c for u in plan.removed[g.id] for c in (2 * u, 2 * u + 1))
        v = p.verify(p.apply(plan), plan)
        assert v["masked_equivalence"]["ok"] and v["masked_equivalence"]["max_abs_diff"] < 1e-6


def test_a_split_at_a_middle_computed_from_the_width_prunes_both_halves_alike():
    """CSPNet writes ``c = x.shape[1] // 2; x[:, :c], x[:, c:]``: the trace sees fixed
    numbers. Removing the first channel keeps the halves agreeing with the plan; removing
    the last does not. Validation removes each end in a run of its own, finds the group
    broken, and pairs channel i of the first half with channel i of the second: c follows."""
    class CSP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            nn = torch.nn
            self.expand, self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(8, 8, 1), \
                nn.Conv2d(16, 4, 1)

        def forward(self, x):
            h = self.expand(x)
            c = h.shape[1] // 2
            return self.b(torch.cat([self.a(h[:, :c]), h[:, c:]], 1))

    torch.manual_seed(0)
    model, x = CSP().eval(), torch.randn(1, 3, 4, 4)
    g = next(g for g in Pruner(model, (x,), validate=False).groups if g.root == "expand")
    with pytest.raises(RuntimeError):  # oracle: the last channel alone breaks the model
        Pruner(model, (x,), validate=False).apply(Plan({g.id: [g.n_units - 1]}))(x)
    p = Pruner(model, (x,))
    plan = p.plan(0.5, "random", seed=3)
    g = next(g for g in p.groups if g.root == "expand")
    assert g.n_units == 8 and not p.reason(g)
    removed = g.member("expand", "out").indices(plan.removed[g.id])
    assert (removed < 8).sum() == (removed >= 8).sum() == 4
    pruned = p.apply(plan)
    assert pruned.a.in_channels == 4 and pruned.b.in_channels == 8
    v = p.verify(pruned, plan)
    assert v["masked_equivalence"]["ok"] and v["masked_equivalence"]["max_abs_diff"] < 1e-6


class HeadDimAttention(torch.nn.Module):
    """timm-style attention with ``-1`` for the head dim: pruning a group shrinks every head's
    q/k width, and sdpa's default scale 1/sqrt(head_dim) follows it unless ``scale`` is set."""

    def __init__(self, scale=None):
        super().__init__()
        self.qkv, self.proj, self.heads, self.scale = torch.nn.Linear(16, 48), \
            torch.nn.Linear(16, 16), 2, scale

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return x + self.proj(y.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("scale", [None, 0.5])
def test_sdpa_default_scale_makes_a_head_dim_group_inexact(scale):
    torch.manual_seed(0)
    model, x = HeadDimAttention(scale).eval(), torch.randn(2, 5, 16)
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.root == "qkv")
    assert g.n_units == 8 and not p.reason(g)  # head dims, both heads alike
    assert g.exact == (scale is not None)
    if scale is None:
        assert any("1/sqrt(head_dim)" in n for n in g.stats_notes), g.stats_notes
    plan = Plan({g.id: [1, 6]})
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["shapes_kept"]
    if scale is None:  # without the note, masked equivalence "failed" (rel. diff ~1e-2)
        assert "inexact" in v["masked_equivalence"]["skipped"]
    else:
        assert v["masked_equivalence"]["ok"], v


def test_a_model_in_train_mode_is_traced_and_verified_in_eval_mode_and_left_as_it_was():
    # BatchNorm in train mode updates its running statistics on every forward, and dropout
    # draws at random: the user's model would change, and masked equivalence would fail
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Dropout(0.5), torch.nn.Conv2d(8, 4, 3))
    model[3].eval()  # a mixed state must come back as it was, module by module
    x = torch.randn(2, 3, 10, 10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    p = Pruner(model, (x,))
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    p.preview(plan)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    assert all(torch.equal(state[k], t) for k, t in model.state_dict().items())
    assert [m.training for m in model.modules()] == flags
    assert [m.training for m in pruned.modules()] == flags  # the copy keeps the user's modes


class RunningNorm(nn.Module):
    """An RL policy's observation normaliser: it updates its statistics on every forward,
    in eval mode too (in place, and by assigning a new count)."""

    def __init__(self, n):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("count", torch.tensor(0.0))

    def forward(self, x):
        self.mean.mul_(0.5).add_(0.5 * x.mean(0))
        self.count = self.count + 1
        return x - self.mean


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(state[k], now[k]) for k in now)


@pytest.mark.parametrize("kind", ["running-normaliser", "qat", "embedding-max-norm"])
def test_a_model_that_writes_its_buffers_in_eval_mode_is_left_as_it_was(kind):
    # each forward DepView ran wrote the buffers: the user's model changed, and the original
    # verification compared with was not the model the pruned copy came from
    torch.manual_seed(0)
    if kind == "qat":  # torch.ao's observers record activation ranges, in eval mode too
        import torch.ao.quantization as q
        model = nn.Sequential(q.QuantStub(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16),
                              nn.ReLU(), nn.Linear(16, 3), q.DeQuantStub())
        model.train()
        model.qconfig = q.get_default_qat_qconfig("fbgemm")
        model = q.prepare_qat(model)
        model(torch.randn(8, 6))
        model.eval()
    elif kind == "embedding-max-norm":  # renormalises the rows it looks up, in place
        model = nn.Sequential(nn.Embedding(20, 16, max_norm=1.0), nn.Linear(16, 16),
                              nn.Tanh(), nn.Linear(16, 3)).eval()
    else:
        model = nn.Sequential(RunningNorm(6), nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16),
                              nn.Tanh(), nn.Linear(16, 3)).eval()
    x = torch.randint(0, 20, (4, 6)) if kind == "embedding-max-norm" else \
        torch.randn(4, 6) * 3 + 1
    state = _state(model)
    expected = model(x.clone())
    model.load_state_dict(state)
    p = Pruner(model, (x,))
    plan = p.plan(0.5)
    p.preview(plan)
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert _same_state(model, state)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    assert torch.equal(model(x.clone()), expected)  # (the first forward from that state)
    model.load_state_dict(state)
    if kind == "embedding-max-norm":  # the pruned copy's rows are the original's, kept
        assert torch.equal(pruned[0].weight, state["0.weight"][:, p.kept(plan)["0.weight"]["1"]])
    if kind != "qat":  # (QAT: a layer faking per-channel quantization blocks its group)
        assert plan.n_removed > 0


RNN_FILE = """
import torch
from torch import nn


class TutorialLSTM(nn.Module):
    # the initial states every LSTM tutorial writes: zeros sized from module attributes
    def __init__(self, hidden_size=16, num_layers=2):
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.lstm = nn.LSTM(6, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, 3)

    def forward(self, x):
        h0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size).to(x.device)
        c0 = x.new_zeros(self.num_layers, x.size(0), self.hidden_size)
        out, _ = self.lstm(x, (h0, c0))
        return self.fc(out[:, -1, :])


class CellDecoder(nn.Module):
    # nn.LSTMCell stepped in a loop, fed its own last prediction
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.cell = nn.LSTMCell(8, 16)
        self.gru = nn.GRUCell(16, 12)  # no state on the first step: the cell makes zeros
        self.out = nn.Linear(12, 20)

    def forward(self, tok):
        h = c = torch.zeros(tok.shape[0], self.cell.hidden_size)
        g, y, logits = None, tok[:, 0], []
        for _ in range(4):
            h, c = self.cell(self.emb(y), (h, c))
            g = self.gru(h, g)
            logits.append(self.out(g))
            y = logits[-1].argmax(-1)
        return torch.stack(logits, 1)


class LiteralGRU(nn.Module):
    # the same with a literal size: nothing can follow it
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 16, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        out, _ = self.gru(x, torch.zeros(2, x.size(0), 16))
        return self.fc(out[:, -1])
"""


class PackedTagger(torch.nn.Module):
    """The usual NLP recipe: embed, pack the padded batch, run the LSTM, pad it back."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 6)
        self.lstm = torch.nn.LSTM(6, 8, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(16, 2)

    def forward(self, ids, lens):
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(self.emb(ids), lens, batch_first=True,
                                      enforce_sorted=False)
        y, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True)
        return self.fc(y)


class ScaledStdConv2d(torch.nn.Conv2d):
    """timm's NFNet conv: its own forward standardises the weight and scales each output
    channel by a ``gain`` of its own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = torch.nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        w = torch.nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1), None,
                                           None, training=True, eps=1e-6)
        return self._conv_forward(x, w.reshape_as(self.weight) * self.gain, self.bias)


def test_a_per_channel_parameter_a_layer_subclass_adds_loses_the_channels():
    # gain kept 8 rows beside a 6-row weight: every group through it was blocked ("The size
    # of tensor a (7) must match the size of tensor b (8)")
    torch.manual_seed(0)
    model = torch.nn.Sequential(ScaledStdConv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 6, 6)
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.root == "0")
    assert not p.reason(g)
    pruned = p.apply(Plan({g.id: [1, 3]}))
    assert pruned[0].gain.shape == (6, 1, 1, 1)
    keep = [0, 2, 4, 5, 6, 7]
    torch.testing.assert_close(pruned[0](x), model[0](x)[:, keep])


def test_an_lstm_over_a_packed_sequence_prunes():
    # its hidden group was blocked by an IndexError (hidden units sent to the 1-D batch
    # sizes), and the embedding's by pack_padded_sequence ("changes shape")
    torch.manual_seed(0)
    model = PackedTagger().eval()
    ids, lens = torch.randint(0, 20, (3, 5)), torch.tensor([3, 5, 2])
    p = Pruner(model, (ids, lens))
    plan = p.plan(0.5)
    assert {p.groups[g].root for g in plan.removed} == {"emb", "lstm"}
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


class ProjectedLSTM(torch.nn.Module):
    """An LSTMP as speech models use it: ``proj_size`` projects each step's hidden state, so
    the outputs, h0 and h_n are ``proj_size`` wide and the cell state ``hidden_size`` wide."""

    def __init__(self, layers: int, bidirectional: bool, state: bool, hidden=32, proj=16):
        super().__init__()
        d = 2 if bidirectional else 1
        self.inp = torch.nn.Linear(6, 8)
        self.lstm = torch.nn.LSTM(8, hidden, num_layers=layers, batch_first=True,
                                  bidirectional=bidirectional, proj_size=proj)
        self.state = state
        if state:
            self.h0 = torch.nn.Parameter(torch.randn(layers * d, 1, proj) / 4)
            self.c0 = torch.nn.Parameter(torch.randn(layers * d, 1, hidden) / 4)
        self.fc = torch.nn.Linear(proj * d, 3)

    def forward(self, x):
        y, _ = self.lstm(self.inp(x), (self.h0, self.c0) if self.state else None)
        return self.fc(y[:, -1])


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("layers, bidirectional, state, hidden, proj",
                         [(1, False, False, 32, 16), (2, True, False, 32, 16),
                          (2, False, True, 32, 16), (1, True, True, 24, 8)])
def test_an_lstm_with_proj_size_loses_projection_units(layers, bidirectional, state, hidden,
                                                        proj, tmp_path, monkeypatch):
    # every group through it was blocked ("uses proj_size, which is not supported"); in the
    # first case the cell state (hidden 32) is as wide as both directions' h (2 x 16)
    (tmp_path / "lstmp.py").write_text("import torch\n\n\n" + inspect.getsource(ProjectedLSTM))
    monkeypatch.chdir(tmp_path)
    kwargs = dict(layers=layers, bidirectional=bidirectional, state=state, hidden=hidden,
                  proj=proj)
    lm = load_model("lstmp.py:ProjectedLSTM", inputs=["1x5x6"], kwargs=kwargs)
    model, x = lm.model, lm.inputs[0]
    p = Pruner(model, (x,))
    p.validate_groups()
    g = next(grp for grp in p.groups if grp.root == ("h0" if state else "lstm"))
    assert not p.reason(g) and g.n_units == proj
    if state:  # the cell state's units are a group of their own (see the next test)
        c0 = next(grp for grp in p.groups if grp.root == "c0")
        assert not p.reason(c0) and c0.n_units == hidden and c0.root_side == "out"
    plan = Plan({g.id: list(range(0, proj, 2))})
    pruned = p.apply(plan)
    lstm = pruned.lstm
    assert (lstm.proj_size, lstm.hidden_size, lstm.input_size) == (proj // 2, hidden, 8)
    assert lstm.weight_hr_l0.shape == (proj // 2, hidden)
    assert lstm.weight_hh_l0.shape == (4 * hidden, proj // 2)
    if layers > 1:
        assert lstm.weight_ih_l1.shape == (4 * hidden, proj // 2 * (2 if bidirectional else 1))
    assert model.lstm.proj_size == proj  # the model given is untouched
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source, pt2=False)
    again = load_pruned(out)  # rebuilt from the spec and plan.json, no pickle
    assert again.lstm.proj_size == proj // 2
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))


class CellReadingLSTM(ProjectedLSTM):
    """Reads the last layer's cell state c_n besides the outputs."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.cfc = torch.nn.Linear(self.lstm.hidden_size, 3)

    def forward(self, x):
        y, (_, c) = self.lstm(self.inp(x), (self.h0, self.c0) if self.state else None)
        return self.fc(y[:, -1]) + self.cfc(c[-1])


def _lstm_cell_cut_by_hand(lstm: torch.nn.LSTM, keep: torch.Tensor) -> dict:
    """The state_dict an LSTM with proj_size has when only the cell units ``keep`` stay:
    each gate's rows of keep (gates i, f, g, o stacked), weight_hr's columns."""
    hidden, out = lstm.hidden_size, {}
    rows = torch.cat([gate * hidden + keep for gate in range(4)])
    for k, t in lstm.state_dict().items():
        out[k] = t[:, keep] if k.startswith("weight_hr") else \
            t[rows] if k.startswith(("weight_ih", "weight_hh", "bias")) else t
    return out


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("layers, bidirectional, state, reads_cell",
                         [(1, False, False, False), (2, True, False, False),
                          (2, False, True, False), (2, True, True, True),
                          (1, False, False, True)])
def test_an_lstm_with_proj_size_loses_cell_units(layers, bidirectional, state, reads_cell,
                                                 tmp_path, monkeypatch):
    # the cell units (hidden_size: every gate's rows, weight_hr's columns, c0 and c_n) were
    # "not supported": only the projection's units could go
    hidden, proj = 24, 8
    cls = CellReadingLSTM if reads_cell else ProjectedLSTM
    (tmp_path / "lstmp.py").write_text("import torch\n\n\n" + inspect.getsource(ProjectedLSTM)
                                       + "\n\n" + inspect.getsource(CellReadingLSTM))
    monkeypatch.chdir(tmp_path)
    kwargs = dict(layers=layers, bidirectional=bidirectional, state=state, hidden=hidden,
                  proj=proj)
    lm = load_model(f"lstmp.py:{cls.__name__}", inputs=["1x5x6"], kwargs=kwargs)
    model, x = lm.model, lm.inputs[0]
    p = Pruner(model, (x,))
    g = next(grp for grp in p.groups if grp.n_units == hidden and any(
        m.node_name == "lstm" and m.port for m in grp.members))
    assert not p.reason(g), p.reason(g)
    assert g.root == ("c0" if state else "lstm")
    assert g.root_side == ("out" if state else "cell")
    lstm_m = next(m for m in g.members if m.node_name == "lstm")
    assert (lstm_m.side, lstm_m.port) == ("out", 2)
    # the projection's units are another group
    assert any(grp.n_units == proj and grp is not g for grp in p.groups)
    assert {m.node_name for m in g.members} == {"lstm"} | ({"c0"} if state else set()) | \
        ({"cfc"} if reads_cell else set())
    drop = [1, 4, 5, 11, 20]
    keep = torch.tensor([i for i in range(hidden) if i not in drop])
    plan = Plan({g.id: drop})
    pruned = p.apply(plan)
    lstm = pruned.lstm
    assert (lstm.hidden_size, lstm.proj_size) == (hidden - len(drop), proj)
    assert model.lstm.hidden_size == hidden  # the model given is untouched
    expected = _lstm_cell_cut_by_hand(model.lstm, keep)
    got = lstm.state_dict()
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    if state:
        assert torch.equal(pruned.c0, model.c0[..., keep])
    if reads_cell:
        assert torch.equal(pruned.cfc.weight, model.cfc.weight[:, keep])
    # oracle of the masked equivalence, by hand: the original with the dropped units' gate
    # rows zeroed (c stays 0 there, so h reads nothing from them) gives the pruned output
    masked = copy.deepcopy(model)
    rows = torch.cat([gate * hidden + torch.tensor(drop) for gate in range(4)])
    with torch.no_grad():
        for k, t in masked.lstm.named_parameters():
            if k.startswith(("weight_ih", "weight_hh", "bias")):
                t[rows] = 0
        if state:
            masked.c0[..., drop] = 0
        assert torch.allclose(pruned(x), masked(x), atol=1e-6)
        assert not torch.allclose(pruned(x), model(x), atol=1e-3)  # (the test can fail)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source, pt2=False)
    again = load_pruned(out)
    assert again.lstm.hidden_size == hidden - len(drop)
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))
    # the preview shows the cell width beside the projection's
    assert p.widths(plan)["lstm"] == {"cell": hidden - len(drop)}
    rows = {r["name"]: r for r in p.preview(plan)["layers"]}
    assert (rows["lstm (cell)"]["before"], rows["lstm (cell)"]["after"]) == \
        (hidden, hidden - len(drop))
    assert rows["lstm"]["before"] == rows["lstm"]["after"] == proj * (2 if bidirectional else 1)
    # both groups at once: the plan's uniform ratio
    both = p.plan(0.5)
    assert g.id in both.removed
    v = p.verify(p.apply(both), both)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_an_lstmp_ignores_its_outputs_and_its_cell_units_apart(tmp_path, monkeypatch):
    # "lstm:out" kept both groups (the projection's and the cell units'); one could not be
    # kept without the other but by a per-group ratio of 0
    (tmp_path / "lstmp.py").write_text("import torch\n\n\n" + inspect.getsource(ProjectedLSTM))
    monkeypatch.chdir(tmp_path)
    lm = load_model("lstmp.py:ProjectedLSTM", inputs=["1x5x6"],
                    kwargs=dict(layers=2, bidirectional=False, state=False))
    p = Pruner(lm.model, lm.inputs)
    proj = next(g for g in p.groups if g.root == "lstm" and g.root_side == "out")
    cell = next(g for g in p.groups if g.root == "lstm" and g.root_side == "cell")
    both = {proj.id, cell.id}
    assert both <= set(p.plan(0.5).removed)
    for ignore, kept in (["lstm:out"], {proj.id}), (["lstm:cell"], {cell.id}), \
            (["lstm"], both), (["lstm:out", "lstm:cell"], both), (["lstm:in"], set()):
        plan = p.plan(0.5, ignore=ignore)
        assert both - set(plan.removed) == kept, ignore
        assert "planned width" not in str(plan.skipped), ignore
        assert plan.settings["ignore"] == sorted(ignore)  # as parse_ignore reads it back
        assert parse_ignore(plan.settings["ignore"]) == parse_ignore(ignore)
    assert p.reason(cell, parse_ignore(["lstm:cell"])) == "'lstm' cell units are ignored"
    assert p.reason(proj, parse_ignore(["lstm:out"])) == "'lstm' outputs are ignored"
    assert p.plan(0.5, ignore=["lstm", "inp"]).settings["ignore"] == ["inp", "lstm"]
    with pytest.raises(DepViewError, match="ignore 'inp:cell': it has no cell units of their "
                                           "own .*; use inp:out"):
        p.plan(0.5, ignore=["inp:cell"])
    # torch's LSTM needs hidden_size > proj_size (equal, its kernel reads the weights as an
    # LSTM's without projection: "ArrayRef size 10 not divisible by stride 4"): with the
    # projection kept, the cell group was skipped with that error; it keeps 17 cell units now
    plan = p.plan(0.5, ignore=["lstm:out"])
    assert len(plan.removed[cell.id]) == 32 - 17 and not plan.skipped.get(cell.id)
    # and says so (the prune line and the app's preview show this note)
    assert plan.settings["cells_above_projection"] == {"lstm": 17}
    assert floor_note(plan) == ("cell units kept above the projection's width, as an LSTM "
                                "needs: 'lstm' 17")
    assert "cells_above_projection" not in p.plan(0.5).settings and not floor_note(p.plan(0.5))
    assert len(p.plan(0.5, overrides={proj.id: 0}).removed[cell.id]) == 32 - 17
    assert len(p.plan(0.5, ignore=["lstm:out"], round_to=8).removed[cell.id]) == 32 - 24
    assert len(p.plan(0.9).removed[cell.id]) == 32 - 4  # (above the projection's 2: kept)
    pruned = p.apply(plan)
    assert (pruned.lstm.hidden_size, pruned.lstm.proj_size) == (17, 16)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    with pytest.raises(DepViewError, match="plan keeps 16 cell units of 'lstm' and 16 "
                                           "projection units: an LSTM needs hidden_size > "
                                           "proj_size"):
        p.apply(Plan({cell.id: list(range(16))}))
    # a plan stored with the cell side ignored is refused when it prunes them anyway
    bad = Plan({cell.id: [0]}, settings={"ignore": ["lstm:cell"]})
    with pytest.raises(DepViewError, match="cannot be pruned: 'lstm' cell units are ignored"):
        p.apply(bad)


def test_rnn_initial_states_made_with_zeros_follow_the_hidden_units(tmp_path, monkeypatch):
    (tmp_path / "rnns.py").write_text(RNN_FILE)
    monkeypatch.chdir(tmp_path)
    lm = load_model("rnns.py:TutorialLSTM", inputs=["2x5x6"])
    p = Pruner(lm.model, lm.inputs)
    g = next(grp for grp in p.groups if grp.root == "lstm")
    zeros = {n.target for n in p.graph.nodes if n.op_type is OpType.CONSTANT}
    assert zeros == {"zeros", "new_zeros"}  # the fills are named sources, not ops
    plan = p.plan(0.5)  # validates: the model runs only when hidden_size follows
    assert not p.reason(g) and g.n_units == 16
    assert p.sets(g) == ["hidden_size"]  # the attribute the zeros were sized from
    pruned = p.apply(plan)
    assert (pruned.hidden_size, pruned.lstm.hidden_size, pruned.fc.in_features) == (8, 8, 8)
    assert lm.model.hidden_size == 16  # the model given is untouched
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source)
    again = load_pruned(out)
    assert again.hidden_size == 8
    with torch.no_grad():
        assert torch.equal(again(*lm.inputs), pruned(*lm.inputs))

    lm = load_model("rnns.py:LiteralGRU", inputs=["2x5x6"])
    p = Pruner(lm.model, lm.inputs)
    p.validate_groups()
    g = next(grp for grp in p.groups if grp.root == "gru")
    assert "forward fails when this group shrinks" in p.reason(g)
    assert "hidden" in p.reason(g)  # torch's own words: "Expected hidden size ..."


def test_rnn_cells_stepped_in_a_loop_prune_and_reload(tmp_path, monkeypatch):
    (tmp_path / "rnns.py").write_text(RNN_FILE)
    monkeypatch.chdir(tmp_path)
    lm = load_model("rnns.py:CellDecoder", inputs=["2x3:int64"])
    p = Pruner(lm.model, lm.inputs)
    cells = [n for n in p.graph.nodes if n.op_type in (OpType.LSTM, OpType.GRU)]
    assert len(cells) == 8  # one atomic node per step, sharing the cell's weights
    by_root = {g.root: g for g in p.groups}
    lstm, gru = by_root["cell"], by_root["gru"]  # the first call of each roots its group
    assert (lstm.n_units, gru.n_units) == (16, 12)
    assert {m.node_name for m in lstm.members if m.side == "out"} == \
        {n.name for n in cells if n.op_type is OpType.LSTM}  # every step's hidden units
    plan = p.plan(0.5)
    assert set(plan.removed) == {lstm.id, gru.id, by_root["emb"].id}
    pruned = p.apply(plan)
    assert (pruned.cell.hidden_size, pruned.cell.input_size, pruned.gru.input_size,
            pruned.gru.hidden_size) == (8, 4, 8, 6)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    again = load_pruned(export_dir(p, plan, pruned, tmp_path / "out", lm.source))
    with torch.no_grad():
        assert torch.equal(again(*lm.inputs), pruned(*lm.inputs))


def test_a_compiled_model_is_pruned_as_the_module_it_wraps():
    # traced through torch.compile's wrapper, dynamo compiled DepView's hooks (seconds of
    # recompiles and warnings) and every name started with "_orig_mod."
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3)).eval()
    model, x = torch.compile(plain, backend="eager"), torch.randn(1, 3, 8, 8)
    p = Pruner(model, (x,))
    assert p.model is plain and [g.root for g in p.groups] == ["0", "2"]
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned[0].out_channels == 4 and plain[0].out_channels == 8
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]


def test_a_compiled_submodule_runs_eagerly_in_every_depview_forward():
    # compiled, dynamo compiled DepView's hooks into the block and recompiled at every
    # module: a minute for a small model, with a warning per call
    compiled: list = []

    def backend(gm, example_inputs):
        compiled.append(gm)
        return gm.forward

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.head = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1)
            self.block = torch.compile(torch.nn.Sequential(
                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8)), backend=backend)

        def forward(self, x):
            return self.head(torch.relu(self.block(self.stem(x))) + x.mean(1, keepdim=True))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "global hooks fire twice" warning
        p = Pruner(model, (x,))
        plan = p.plan(0.5)
        pruned = p.apply(plan)
        v = p.verify(pruned, plan)
    assert not compiled and plan.removed and v["masked_equivalence"]["ok"]
    assert "block._orig_mod.0" in p.graph.by_name
    model(x)  # the stance is back: outside DepView the block compiles as before
    assert compiled


_INDEX_CACHE: dict = {}


class BiasedHeads(torch.nn.Module):
    """Attention with a learned per-head bias passed to sdpa as its mask, gathered from a
    table by a relative-position index that, as in Hugging Face's BEiT, is computed on the
    first call only and cached where every copy of the model finds it."""

    def __init__(self, d: int = 16, heads: int = 4, n: int = 5):
        super().__init__()
        self.heads, self.n = heads, n
        self.qkv, self.o = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.table = torch.nn.Parameter(torch.randn(2 * n - 1, heads))

    def index(self):
        if self.n not in _INDEX_CACHE:
            r = torch.arange(self.n)
            _INDEX_CACHE[self.n] = (r[:, None] - r[None, :] + self.n - 1).reshape(-1)
        return _INDEX_CACHE[self.n]

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.table[self.index()].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.5)
        return x + self.o(y.transpose(1, 2).reshape(b, n, -1))


def test_an_attention_bias_joins_the_heads_and_a_first_call_cache_does_not_break_validation():
    _INDEX_CACHE.clear()
    torch.manual_seed(0)
    model, x = BiasedHeads().eval(), torch.randn(2, 5, 16)
    p = Pruner(model, (x,))  # the first trace computes the index; later ones find it cached
    heads = next(g for g in p.groups if any(m.node_name == "table" for m in g.members))
    assert heads.member("table", "param").dim == 1  # the bias table's heads column
    assert {m.node_name for m in heads.members} >= {"qkv", "o", "table"}
    assert heads.n_units == 4  # whole heads: the view leaves head dims to its -1
    assert not p.validate_groups()  # a trace run again names the gather differently
    assert p.sets(heads) == ["heads"]
    plan = Plan({heads.id: [3]})
    pruned = p.apply(plan)
    assert (pruned.table.shape, pruned.heads, pruned.qkv.out_features) == ((9, 3), 3, 36)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_a_fill_written_to_before_it_is_read_is_a_constant_that_blocks():
    class Masked(torch.nn.Module):
        def __init__(self, write):
            super().__init__()
            self.c1, self.c2, self.ch, self.write = torch.nn.Conv2d(3, 8, 1), \
                torch.nn.Conv2d(8, 4, 1), 8, write

        def forward(self, x):
            m = torch.ones(self.ch)
            self.write(m)
            return self.c2(self.c1(x) * m.view(1, -1, 1, 1))

    def set_index(m):
        m[0] = 0.0

    def through_a_view(m):
        m.narrow(0, 0, 4).mul_(3.0)

    for write in (set_index, through_a_view):
        p = Pruner(Masked(write).eval(), (torch.randn(2, 3, 4, 4),))
        g = next(grp for grp in p.groups if grp.root == "c1")
        if write is set_index:
            # the fill, read only by m[0] = 0, stays a fill: that write blocks, at a fixed
            # position of the pruned dim
            assert "writes at fixed positions of the pruned dim" in p.reason(g)
            made = "ones"
        else:
            # the write through the view is read as a write at fixed positions too; the fill,
            # changed by an op that reads it (mul_), is a constant
            assert "writes at fixed positions of the pruned dim" in p.reason(g)
            made = "constant"
        assert [n.target for n in p.graph.nodes if n.op_type.value == "constant"] \
            == [made], write.__name__
    # left as made, the same fill is uniform: the group prunes (its size follows self.ch)
    p = Pruner(Masked(lambda m: None).eval(), (torch.randn(2, 3, 4, 4),))
    g = next(grp for grp in p.groups if grp.root == "c1")
    plan = p.plan(0.5)
    assert not p.reason(g) and p.sets(g) == ["ch"] and g.id in plan.removed
    assert p.verify(p.apply(plan), plan)["masked_equivalence"]["ok"]


def test_a_functional_conv1d_weight_is_never_cut_along_its_kernel():
    class K(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.post = torch.nn.Parameter(torch.randn(6, 3, 4)), torch.nn.Conv1d(6, 2, 1)

        def forward(self, x):
            return self.post(torch.nn.functional.conv1d(x, self.w, padding=2))

    torch.manual_seed(0)
    p = Pruner(K().eval(), (torch.randn(2, 3, 10),))
    kernel = next(g for g in p.groups if g.root == "w")  # a 3-D parameter: rooted at its last dim
    assert "as a kernel" in p.reason(kernel)
    plan = p.plan(0.5)
    assert kernel.id not in plan.removed and plan.removed
    pruned = p.apply(plan)
    assert pruned.w.shape[2] == 4 and p.verify(pruned, plan)["masked_equivalence"]["ok"]


def test_taylor_scores_run_in_eval_mode_for_a_model_passed_in_train_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.Dropout(0.5), torch.nn.Linear(16, 2))  # train mode
    x = torch.randn(1, 4)  # batch of one: BatchNorm1d refuses it in train mode
    p = Pruner(model, (x,))
    batch = (torch.randn(1, 4),)
    plans = [p.plan(0.5, "taylor", batch=batch).removed for _ in range(2)]
    assert plans[0] == plans[1]  # no dropout: the same batch gives the same plan
    assert model.training


class Recommender(torch.nn.Module):
    """DLRM-style: bags of sparse ids (1-D ids with offsets, per-sample weights) and a bag
    of another table with max pooling, concatenated with a dense MLP's output."""

    def __init__(self):
        super().__init__()
        self.users = torch.nn.EmbeddingBag(30, 8, mode="sum")
        self.items = torch.nn.EmbeddingBag(20, 6, mode="max")
        self.dense = torch.nn.Linear(4, 8)
        self.top = torch.nn.Sequential(torch.nn.Linear(22, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 1))

    def forward(self, ids, offsets, weights, item_ids, dense):
        u = self.users(ids, offsets, per_sample_weights=weights)
        return self.top(torch.cat([u, self.items(item_ids), torch.relu(self.dense(dense))], 1))


def test_embedding_bags_lose_embedding_dims():
    # an EmbeddingBag was an unknown op whose output shape blocked its group
    torch.manual_seed(0)
    ids, offsets = torch.randint(0, 30, (10,)), torch.tensor([0, 3, 7])
    inputs = (ids, offsets, torch.rand(10), torch.randint(0, 20, (3, 4)), torch.randn(3, 4))
    model = Recommender().eval()
    p = Pruner(model, inputs)
    users = next(g for g in p.groups if g.root == "users")
    assert users.prunable and {m.node_name for m in users.members} == {"users", "top.0"}
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.users.embedding_dim == 4 and pruned.items.embedding_dim == 3
    assert pruned.top[0].in_features == 11
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


class Top1Experts(torch.nn.Module):
    """Switch-style routing by boolean masks: how many tokens ``x[m]`` picks is the data's."""

    def __init__(self, d=16, n=2):
        super().__init__()
        self.inp, self.router = torch.nn.Linear(8, d), torch.nn.Linear(d, n)
        self.experts = torch.nn.ModuleList([torch.nn.Linear(d, d) for _ in range(n)])
        self.head = torch.nn.Linear(d, 3)

    def forward(self, x):
        x = self.inp(x)
        gate, idx = torch.softmax(self.router(x), -1).max(-1)
        out = torch.zeros_like(x)
        for e, ex in enumerate(self.experts):
            m = idx == e
            out[m] = gate[m].unsqueeze(-1) * ex(x[m])
        return self.head(x + out)


def test_token_counts_the_routing_picks_may_change_when_the_router_input_is_pruned():
    torch.manual_seed(0)
    m, x = Top1Experts().eval(), torch.randn(24, 8)
    p = Pruner(m, (x,))
    width = p.groups[0]
    assert width.root == "inp" and width.n_units == 16
    # the router reads the width: pruning it moves tokens between experts (x[m] gave 8
    # rows, then 7), which the pruned model does exactly as the masked original does
    assert p.reason(width) == ""
    plan = p.plan(0.5)
    assert width.id in plan.removed
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"]


def test_a_graph_or_output_layer_of_another_model_is_refused(demo_pruner):
    # round 1's graph reused for round 2 planned cuts of channels the pruned model no longer
    # has: apply did nothing and verify raised an IndexError
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    with pytest.raises(DepViewError, match="the graph given is not this model's"):
        Pruner(pruned, lm.inputs, graph=p.graph)
    Pruner(lm.model, lm.inputs, graph=p.graph)  # its own graph is fine
    with pytest.raises(DepViewError, match="output_layers names no layer"):
        Pruner(lm.model, lm.inputs, output_layers=["no_such_fc"])


@pytest.mark.parametrize("d, said", [
    ({"removed": {"0": [1, 1, 2]}}, "removes unit 1 of group 0 .* more than once"),
    ({"removed": {"0": "12"}}, "list of unit ids"),  # was units 1 and 2
    ({"removed": {"0": [2.9]}}, "list of unit ids"),  # was unit 2
    ({"removed": {"0": [True]}}, "list of unit ids"),  # was unit 1
    ({"removed": {"x": [1]}}, "group ids are whole numbers"),
    ({"removed": [1]}, "got a list for removed"),
    ({"removed": {"0": [1]}, "settings": "x"}, "'settings' is a dict"),
    ({"removed": {"0": [1]}, "settings": {"ignore": 5}}, "ignore is a list of layer names"),
    ({"removed": {"0": [1]}, "settings": {"ignore": ["nope"]}}, "ignore names no layer"),
    ({"removed": {"0": [1]}, "settings": {"free_outputs": 5}}, "free_outputs is a list"),
    ({"removed": {"0": [1]}, "settings": {"free_outputs": ["x"]}}, "made with free outputs"),
])
def test_a_hand_made_plan_with_odd_units_is_refused(demo_pruner, d, said):
    # duplicates were accepted (report.json said 3 units removed where 2 were), strings,
    # floats and bools became unit ids
    _, p = demo_pruner("cnn")
    with pytest.raises(DepViewError, match=said):
        p.plan_from_dict(d)
    with pytest.raises(DepViewError, match="more than once"):
        p.apply(Plan({0: [3, 3]}))


def test_an_empty_unit_list_is_no_pruned_group(demo_pruner):
    _, p = demo_pruner("cnn")
    plan = p.plan_from_dict({"removed": {"0": [], "1": [2]}})
    assert plan.removed == {1: [2]} and p.preview(plan)["groups_pruned"] == 1


class SlimLinear(nn.Linear):
    """A slimmable network's layer: built at its widest, it runs on the first ``active_in``
    inputs and ``active_out`` outputs, slicing its weight by those sizes in forward."""

    def __init__(self, i: int, o: int, active_in: int | None = None,
                 active_out: int | None = None):
        super().__init__(i, o)
        self.active_in, self.active_out = active_in or i, active_out or o

    def forward(self, x):
        return nn.functional.linear(x, self.weight[:self.active_out, :self.active_in],
                                    self.bias[:self.active_out])


class Slimmable(nn.Module):
    def __init__(self, active: int):
        super().__init__()
        self.a = SlimLinear(4, 8, active_out=active)
        self.b = SlimLinear(8, 8, active_in=active)
        self.c = nn.Linear(8, 3)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("active", [5, 6])
def test_a_layer_that_slices_its_weight_by_a_fixed_size_is_not_prunable(active):
    # with 5 of its 8 rows active, removing one unit ran (weight[:5] of 7 rows: still 5
    # outputs, one of them a row never used), and a hand-made plan removing 2 or more failed
    # only at verify with torch's matmul error; with 6 active every plan ran, computing with
    # rows the model never used
    torch.manual_seed(0)
    p = Pruner(Slimmable(active).eval(), (torch.randn(5, 4),))
    g = next(grp for grp in p.groups if grp.root == "a")
    said = (f"when this group shrinks, 'a' gives {active} channels on dim 1 instead of "
            f"{active - 1}: its forward does not follow its pruned weight")
    assert said in p.reason(g)
    assert g.id not in p.plan(0.5).removed
    # a hand-made plan is refused up front, in one line: by plan_from_dict, and by apply
    with pytest.raises(DepViewError, match="which cannot be pruned: " + re.escape(said)):
        p.plan_from_dict({"removed": {str(g.id): [0, 1, 2, 3]}})
    with pytest.raises(DepViewError, match="which cannot be pruned: " + re.escape(said)):
        p.apply(Plan({g.id: [0, 1, 2, 3]}))


def test_a_layer_that_slices_its_weight_at_full_width_prunes_as_its_masked_model():
    # weight[:8] of a weight with fewer rows takes them all: the forward follows the pruning
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    p = Pruner(Slimmable(8).eval(), (x,))
    g = next(grp for grp in p.groups if grp.root == "a")
    assert not p.reason(g)
    plan = p.plan_from_dict({"removed": {str(g.id): [0, 2, 3, 6, 7]}})
    pruned = p.apply(plan)
    assert pruned.a.weight.shape == (3, 4) and pruned.b.weight.shape == (8, 3)
    with torch.no_grad():  # (masked equivalence is skipped: the forward is the layer's own)
        assert torch.allclose(pruned(x), p.masked_model(plan)(x), atol=1e-6)


class ComplexFilter(nn.Module):
    """A long convolution by FFT whose filter is stored as complex frequencies (FNO, GFNet)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        c = torch.arange(8.0)[:, None].expand(8, 7)
        # small real parts that fall with the channel, imaginary parts that grow with it
        self.wf = nn.Parameter(torch.complex(0.01 * (8 - c), c))
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # (batch, time 6, features 4)
        u = self.a(x).transpose(1, 2)
        y = torch.fft.irfft(torch.fft.rfft(u, n=12) * self.wf, n=12)[..., :6]
        return self.head(y.transpose(1, 2))


@pytest.mark.parametrize("importance", ["l1", "l2"])
def test_a_complex_weight_is_scored_by_its_modulus(importance):
    # a cast to float kept the real parts only: the plan removed channels 4..7, the largest
    torch.manual_seed(0)
    model = ComplexFilter().eval()
    with torch.no_grad():
        model.a.weight.fill_(0.1), model.a.bias.zero_(), model.head.weight.fill_(0.1)
    p = Pruner(model, (torch.randn(2, 6, 4),))
    g = next(grp for grp in p.groups if grp.root == "a")
    plan = p.plan(0.5, importance)
    assert plan.removed[g.id] == [0, 1, 2, 3]
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


class KeepsItsOwnCopy(nn.Module):
    """Copies itself its own way: the tree copy must leave that to it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.copied = 0

    def __deepcopy__(self, memo):
        new = KeepsItsOwnCopy()
        new.fc.load_state_dict(self.fc.state_dict())
        new.copied = self.copied + 1
        memo[id(self)] = new
        return new


class ManyKinds(nn.Module):
    """A module tree with the values a deep copy meets: a block used twice, tied weights, a
    config-like object, lists, sets, tuples, a plain tensor attribute, a bound method."""

    def __init__(self):
        super().__init__()
        block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.a, self.b = block, block
        self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight
        self.cfg = type("Cfg", (), {})()
        self.cfg.sizes = [4, 4]
        self.cfg.ids = {1: "one"}
        self.names = ["a", ("b", [1])]
        self.kinds = {"x", "y"}
        self.table = torch.arange(3)
        self.own = KeepsItsOwnCopy()
        self.act = self.a.forward
        self.register_buffer("scale", torch.ones(4), persistent=False)


def _shape_of(x, seen: dict, path: str = ""):
    """What a copy must reproduce, by value, with objects shared where the original shares
    them (the first path an object was met on stands for it)."""
    if type(x) in (int, float, bool, str, type(None)):
        return x
    if isinstance(x, weakref.ref):  # an LSTM's flat weights: the copy's own parameters
        return ("weakref", _shape_of(x(), seen, f"{path}()"))
    if id(x) in seen:
        return ("same as", seen[id(x)])
    seen[id(x)] = path
    if isinstance(x, torch.Tensor):
        return (type(x).__name__, tuple(x.shape), str(x.dtype), x.tolist())
    if isinstance(x, dict):
        return (type(x).__name__, [(k, _shape_of(v, seen, f"{path}[{k!r}]"))
                                   for k, v in x.items()])
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [_shape_of(v, seen, f"{path}[{i}]") for i, v in enumerate(x)])
    if isinstance(x, set):
        return ("set", sorted(x))
    if callable(x) and hasattr(x, "__self__"):  # a bound method: its object, copied
        return ("method", x.__name__, _shape_of(x.__self__, seen, f"{path}.__self__"))
    if hasattr(x, "__dict__"):
        return (type(x).__name__, [(k, _shape_of(v, seen, f"{path}.{k}"))
                                   for k, v in vars(x).items()])
    return repr(x)


def _objects(x, out: dict) -> dict:
    """Every object reachable from ``x`` that a copy must not share, by id."""
    if type(x) in (int, float, bool, str, type(None)) or id(x) in out:
        return out
    out[id(x)] = x
    items = (x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple, set))
             else [x.__self__] if callable(x) and hasattr(x, "__self__")
             else vars(x).values() if hasattr(x, "__dict__") and not isinstance(x, type)
             else [])
    for v in items:
        _objects(v, out)
    return out


@pytest.mark.parametrize("make", [
    ManyKinds, lambda: load_model("demo:swin").model, lambda: load_model("demo:rnn").model,
    lambda: load_model("demo:vit").model, lambda: load_model("demo:unet").model,
    lambda: pytest.importorskip("transformers").GPT2LMHeadModel(
        pytest.importorskip("transformers").GPT2Config(
            vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16))])
def test_the_tree_copy_of_a_model_is_what_deepcopy_makes(make):
    """materialize copies the model once per validation probe: its faster copy must make
    what ``copy.deepcopy`` makes (same values, same sharing inside, nothing shared with the
    original but plain values; a class that copies itself its own way does so)."""
    from viewer.core.materialize import tree_copy

    torch.manual_seed(0)
    m = make()
    ours, theirs = tree_copy(m, {}), copy.deepcopy(m)
    assert _shape_of(ours, {}) == _shape_of(theirs, {})
    original = _objects(m, {})
    shared = [type(o).__name__ for i, o in _objects(ours, {}).items()
              if i in original and not isinstance(o, (type, tuple, frozenset))
              and not callable(o)]
    assert not shared
    if isinstance(m, ManyKinds):
        assert ours.a is ours.b and ours.head.weight is ours.emb.weight
        assert ours.act.__self__ is ours.a and ours.own.copied == 1


UNFLATTEN_FILE = '''
import torch
from torch import nn


class Decoder(nn.Module):
    """A VAE/GAN decoder's start: a linear layer unflattened into channels, nn.Unflatten's
    tuple holding the channel count (and, in the second, a spatial size equal to it)."""

    def __init__(self, side=4):
        super().__init__()
        self.fc = nn.Linear(16, 8 * side * side)
        self.unf = nn.Unflatten(1, (8, side, side))
        self.conv = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, z):
        return self.head(torch.relu(self.conv(self.unf(self.fc(z)))))


def square():
    return Decoder(side=8)
'''


@pytest.mark.parametrize("attr", ["Decoder", "square"])
def test_an_unflatten_size_tuple_follows_the_channels_it_holds(tmp_path, monkeypatch, attr):
    """``nn.Unflatten(1, (8, 4, 4))`` after a linear layer: the group of the linear's output
    (8 channels of 16 features each) runs only if item 0 of ``unflattened_size`` becomes the
    new channel count; validation finds that item (not the spatial 8s of ``(8, 8, 8)``),
    apply sets it, and the export reloads with it."""
    (tmp_path / "decoders.py").write_text(UNFLATTEN_FILE)
    monkeypatch.chdir(tmp_path)
    lm = load_model(f"decoders.py:{attr}", inputs=["2x16"])
    p = Pruner(lm.model, lm.inputs, output_layers=["head"])
    g = next(grp for grp in p.groups if grp.root == "fc")
    plan = p.plan(0.5)
    assert not p.reason(g) and g.n_units == 8 and len(plan.removed[g.id]) == 4
    assert [(r.attr, r.index) for r in p._sets[g.id]] == [("unflattened_size", 0)]
    pruned = p.apply(plan)
    side = lm.model.unf.unflattened_size[1]
    assert pruned.unf.unflattened_size == (4, side, side)
    assert lm.model.unf.unflattened_size == (8, side, side)  # the model given is untouched
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    again = load_pruned(export_dir(p, plan, pruned, tmp_path / "out", lm.source))
    assert again.unf.unflattened_size == (4, side, side)
    with torch.no_grad():
        assert torch.equal(again(*lm.inputs), pruned(*lm.inputs))
    # an item two groups would set to different values is refused, not set by the last one
    conv = next(grp for grp in p.groups if grp.root == "conv")
    (r,) = p._sets[g.id]
    key = next(k for k in conv.tensors if k[0] == p.graph.node("conv").id)
    p._sets[conv.id] = [dataclasses.replace(r, tensor=key, size=6)]
    with pytest.raises(DepViewError, match="cannot set item 0 of unf.unflattened_size: two "
                                           "groups of the plan need"):
        p.size_attrs(Plan({g.id: [0, 1, 2, 3], conv.id: [0]}))
    # the same for a plain int attribute, and a width that its parts do not divide
    p._sets = {g.id: [dataclasses.replace(r, boxed=False)],
               conv.id: [dataclasses.replace(r, boxed=False, tensor=key, size=6)]}
    with pytest.raises(DepViewError, match="cannot set unf.unflattened_size: two groups of "
                                           "the plan need 4 and 5"):
        p.size_attrs(Plan({g.id: [0, 1, 2, 3], conv.id: [0]}))
    p._sets = {g.id: [dataclasses.replace(r, parts=3)]}
    with pytest.raises(DepViewError, match="the plan leaves 'unf.unflatten' 4 positions for "
                                           "3 equal parts"):
        p.size_attrs(Plan({g.id: [0, 1, 2, 3]}))


def test_a_free_output_lets_the_groups_that_reach_it_prune_and_is_checked_at_kept_indices():
    torch.manual_seed(0)
    model, x = FeaturesAndLogits().eval(), torch.randn(2, 3, 6, 6)
    p = Pruner(model, (x,))
    assert p.reason(p.groups[0]) == "it reaches the model output 'output.features'"
    assert p.reason(p.groups[2]) == "it reaches the model output 'output.logits'"
    # an output after the first may be offered as free; the first (the prediction) is not
    assert held_by_outputs(p.graph, p.groups) == {"features": [p.groups[0].id]}
    p = Pruner(model, (x,), free_outputs=["features"])
    stream = p.groups[0]
    assert stream.root == "stem" and not p.reason(stream)
    assert p.reason(p.groups[2]) == "it reaches the model output 'output.logits'"
    plan = p.plan(0.5)
    assert plan.settings["free_outputs"] == ["features"] and plan.removed[stream.id]
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert v["shapes_kept"] and v["free_outputs"] == ["features"]
    assert v["output_shapes"] == {"logits": [2, 4], "features": [2, 4, 6, 6]}
    assert v["masked_equivalence"]["ok"], v
    # the oracle, by hand: the original with the removed channels' readers zeroed gives
    # the pruned outputs, the freed one at the channels kept
    gone = stream.member("stem", "out").indices(plan.removed[stream.id])
    hidden = p.groups[1].member("block.0", "out").indices(plan.removed[1])
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.block[0].weight[:, gone] = 0
        masked.head.weight[:, gone] = 0
        masked.block[2].weight[:, hidden] = 0
        want, got = masked(x), pruned(x)
        kept = np.setdiff1d(np.arange(8), gone)
        assert torch.allclose(got["features"], want["features"][:, kept], atol=1e-6)
        assert torch.allclose(got["logits"], want["logits"], atol=1e-6)
        # and the check fails when a kept channel of the freed output is wrong
        pruned.stem.bias[0] += 1
    assert not p.verify(pruned, plan)["masked_equivalence"]["ok"]
    assert model.stem.out_channels == 8  # (the loaded model is untouched)
    # its plan.json form reads back only where the same outputs are free (group ids follow)
    d = {"removed": {str(k): v for k, v in plan.removed.items()}, "settings": plan.settings}
    assert p.plan_from_dict(d).removed == plan.removed
    with pytest.raises(DepViewError, match=r"the plan was made with free outputs "
                                           r"\['features'\], this pruner has \[\]"):
        Pruner(model, (x,)).plan_from_dict(d)
    assert Pruner(model, (x,)).plan_from_dict({"removed": {"1": [0]}}).removed == {1: [0]}
    with pytest.raises(DepViewError, match="this pruner has \\['features'\\]"):
        p.apply(Pruner(model, (x,)).plan(0.5))  # (a Plan made without them, as such)


def test_free_outputs_are_named_by_path_or_node_and_never_all_of_them():
    model, x = FeaturesAndLogits().eval(), torch.randn(1, 3, 6, 6)
    assert Pruner(model, (x,), free_outputs=["output.features"]).free_outputs == ["features"]
    with pytest.raises(DepViewError, match=r"free output 'feats' is not an output of this "
                                           r"model \(its outputs: logits, features\)"):
        Pruner(model, (x,), free_outputs=["feats"])
    with pytest.raises(DepViewError, match="every output of the model would be free"):
        Pruner(model, (x,), free_outputs=["features", "logits"])
    # an empty name (an unset $VAR) named a one-output model's only output, whose path is ""
    with pytest.raises(DepViewError, match=r"a free output's name is empty: name one of the "
                                           r"model's outputs \(logits, features\)"):
        Pruner(model, (x,), free_outputs=[""])


class TupleFeaturesAndLogits(FeaturesAndLogits):
    """:class:`FeaturesAndLogits` returning a NamedTuple (as torchvision's GoogLeNet does)."""

    class Out(NamedTuple):
        logits: torch.Tensor
        features: torch.Tensor

    def forward(self, x):
        return self.Out(**super().forward(x))


def test_named_tuple_outputs_are_named_by_field_and_take_their_older_names():
    # they were output.[0] and output.[1]: "--free-output [1]" was how to free the features
    model, x = TupleFeaturesAndLogits().eval(), torch.randn(1, 3, 6, 6)
    p = Pruner(model, (x,), free_outputs=["features"])
    assert [n.name for n in output_nodes(p.graph)] == ["output.logits", "output.features"]
    assert p.graph.info["renamed_outputs"] == {"[0]": "logits", "[1]": "features"}
    assert "renamed_outputs" not in Pruner(FeaturesAndLogits().eval(), (x,)).graph.info
    for older in ("[1]", "output.[1]"):  # an older export's names of it
        assert Pruner(model, (x,), free_outputs=[older]).free_outputs == ["features"]
    plan = p.plan(0.5)
    assert plan.settings["free_outputs"] == ["features"]
    made_before = dict(plan.to_dict(), settings={**plan.settings, "free_outputs": ["[1]"]})
    assert p.plan_from_dict(made_before).removed == plan.removed
    with pytest.raises(DepViewError, match="made with free outputs"):
        p.plan_from_dict(dict(made_before, settings={**plan.settings,
                                                     "free_outputs": ["[0]"]}))
    v = p.verify(p.apply(plan), plan)
    assert v["shapes_kept"] and v["masked_equivalence"]["ok"], v
    assert v["free_outputs"] == ["features"] and list(v["output_shapes"]) == ["logits",
                                                                             "features"]


class NestedOutputs(nn.Module):
    """Outputs nested as CLIP's are (``vision_model_output.last_hidden_state``) and a tuple
    of hidden states as ``output_hidden_states`` gives."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h1 = self.a(x)
        h2 = self.b(torch.relu(h1))
        return {"logits": self.head(h2), "vision": {"last": h2, "pooled": h2.mean(1)},
                "hidden_states": (h1, h2)}


def test_a_free_output_name_may_hold_several_outputs():
    from viewer.core.prune import free_output_paths
    from viewer.core.trace import build_graph

    graph = build_graph(NestedOutputs(), (torch.randn(2, 3, 4),))
    assert free_output_paths(graph, ["vision"]) == ["vision.last", "vision.pooled"]
    assert free_output_paths(graph, ["output.hidden_states", "vision.last"]) == \
        ["vision.last", "hidden_states[0]", "hidden_states[1]"]
    with pytest.raises(DepViewError, match="free output 'vis' is not an output"):
        free_output_paths(graph, ["vis"])  # (a prefix of a name is no holder of it)
    p = Pruner(NestedOutputs().eval(), (torch.randn(2, 3, 4),),
               free_outputs=["vision", "hidden_states"])
    assert [p.reason(g) for g in p.groups] == ["", "", "it reaches the model output "
                                               "'output.logits'"]


class ScaledAttention(nn.Module):
    """HF Longformer's attention, densely: q scaled by 1/sqrt(head_dim) by hand (a number
    the forward derives from a width), q/k/v split by the stream's width and viewed with the
    stored ``head_dim``, the output viewed back to the stream's width."""

    def __init__(self, c: int = 16, heads: int = 2):
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.n_head, self.head_dim = heads, c // heads

    def forward(self, x):
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(c, dim=2)
        q = q / math.sqrt(self.head_dim)
        q, k, v = (z.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
                   for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class NormedTiedWidthNet(TiedWidthNet):
    def __init__(self):
        super().__init__(ScaledAttention, 16)
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        x = self.embed(x)
        for attn, mlp in zip(self.blocks, self.mlps, strict=True):
            x = x + attn(self.norm(x))
            x = x + mlp(x)
        return self.head(x)


def test_a_plan_keeps_exact_groups_beside_an_inexact_one_whose_width_moves_a_scale():
    # the stream (normalised: inexact) joins the head dims, so its prune moves the scale
    # 1/sqrt(head dim); validated alone that is allowed. The plan's check ran it with the
    # MLPs, whose exactness turned the number check on: each MLP was skipped, "together
    # with other groups of the plan", though the stream moved the number
    model, x, p = validated(NormedTiedWidthNet, 2, 6, 5)
    stream = p.groups[0]
    assert stream.root == "embed" and not p.reason(stream) and not stream.exact
    mlps = [g.id for g in p.groups if g.root.startswith("mlps.")]
    assert len(mlps) == 2
    plan = p.plan(0.5)
    assert not plan.skipped.keys() & set(mlps), plan.skipped
    assert set(plan.removed) == {stream.id, *mlps}
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["exact_groups"]["ok"], v
    assert pruned.mlps[0][0].out_features == 16


class MultiQuery(nn.Module):
    """StarCoder's (HF GPTBigCode) multi-query attention: one fused projection split into q
    and one shared k and v by three stored sizes, q viewed with ``-1`` heads."""

    def __init__(self, c: int = 16, heads: int = 4):
        super().__init__()
        self.embed_dim, self.head_dim = c, c // heads
        self.kv_dim = self.head_dim
        self.c_attn = nn.Linear(c, c + 2 * self.kv_dim)
        self.c_proj = nn.Linear(c, c)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.c_attn(x).unsqueeze(1).split((self.embed_dim, self.kv_dim,
                                                      self.kv_dim), dim=3)
        q = q.view(b, t, -1, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, scale=0.5)  # k, v broadcast over heads
        return self.c_proj(y.transpose(1, 2).reshape(b, t, -1))


class FrozenBatchNorm2d(nn.Module):
    """torchvision's (and HF DETR's) frozen BatchNorm: affine and statistics as persistent
    buffers, applied by hand."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("weight", torch.rand(n) + 0.5)
        self.register_buffer("bias", torch.randn(n))
        self.register_buffer("running_mean", torch.randn(n))
        self.register_buffer("running_var", torch.rand(n) + 0.5)

    def forward(self, x):
        w, b = self.weight.reshape(1, -1, 1, 1), self.bias.reshape(1, -1, 1, 1)
        rv, rm = self.running_var.reshape(1, -1, 1, 1), self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + 1e-5).rsqrt()
        return x * scale + (b - rm * scale)


class FrozenBNNet(nn.Module):
    """A residual pair of convs with frozen norms; ``table``: the stream is also scaled and
    shifted by a non-persistent buffer (a table the module makes at init, read by two ops),
    which blocks it."""

    def __init__(self, table: bool = False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), FrozenBatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), FrozenBatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 6, 1, bias=False), FrozenBatchNorm2d(6)
        self.conv4 = nn.Conv2d(6, 8, 1)
        self.register_buffer("table", torch.rand(1, 8, 1, 1) + 0.5, persistent=False)
        self.use_table = table
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x))) + x
        x = x + self.conv4(torch.relu(self.bn3(self.conv3(x))))
        if self.use_table:
            x = x * self.table + self.table
        return self.head(x.mean((2, 3)))


def test_a_frozen_batchnorms_persistent_buffers_are_pruned_with_their_channels():
    # before, every group that reached a buffer was blocked: a detection backbone with
    # frozen BatchNorm (torchvision's, HF DETR's) could not be pruned at all
    model, x, p = validated(FrozenBNNet, 2, 3, 8, 8)
    stream, inner = p.groups[0], p.groups[1]
    assert stream.root == "conv1" and not p.reason(stream)
    assert {m.node_name for m in stream.members if m.side == "param"} == {
        f"bn{i}.{b}" for i in (1, 2) for b in ("weight", "bias", "running_mean",
                                                "running_var")}
    assert inner.root == "conv3" and not p.reason(inner)
    # statistics and a frozen scale are state, not importance: the scores ignore them
    before = p.importance(stream, "l1")
    model.bn1.running_var[0] = 1e6
    assert np.array_equal(p.importance(stream, "l1"), before)
    model.bn1.running_var[0] = 1.0
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    assert v["masked_equivalence"]["max_abs_diff"] < 1e-5
    kept = stream.member("conv1", "out").indices(
        sorted(set(range(8)) - set(plan.removed[0]))).tolist()
    bn = pruned.bn1
    assert set(bn._buffers) == {"weight", "bias", "running_mean", "running_var"}
    assert not list(bn.parameters())  # still buffers
    assert torch.equal(bn.running_var, model.bn1.running_var[kept])
    assert pruned.bn3.weight.shape == (3,)
    assert model.bn1.weight.shape == (8,)  # the loaded model is untouched
    # a non-persistent buffer (a table made at init, as rotary inv_freq) that two ops read
    # still blocks (read once, it is cut: test_export's sinusoidal table)
    blocked = Pruner(FrozenBNNet(table=True).eval(), (x,)).groups[0]
    assert blocked.root == "conv1" and "it reaches the buffer 'table'" in blocked.reason


def test_multi_query_attention_prunes_head_dims_paired_with_the_shared_values():
    torch.manual_seed(0)
    model, x = MultiQuery().eval(), torch.randn(2, 5, 16)
    # the search: whole q heads (the -1) crossed k's head dims and merged every unit (one
    # unit: "removing it would remove the whole tensor"); with q split at its head dims,
    # q/k dims and v dims are two kinds of 4 units
    raw = Pruner(model, (x,), validate=False).groups[0]
    assert raw.root == "c_attn" and raw.n_units == 8
    # the stored kv_dim sizes k and v alike: validation pairs q/k dim i with v dim i
    p = Pruner(model, (x,))
    p.validate_groups()
    g = p.groups[0]
    assert g.n_units == 4 and not p.reason(g)
    assert p.sets(g) == ["embed_dim", "head_dim", "kv_dim"]
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert v["masked_equivalence"]["ok"] and v["masked_equivalence"]["max_abs_diff"] < 1e-6
    assert (pruned.head_dim, pruned.kv_dim, pruned.embed_dim) == (2, 2, 8)
    assert pruned.c_attn.out_features == 8 + 2 * 2 and pruned.c_proj.in_features == 8


class FusedMultiQuery(nn.Module):
    """Falcon-7B's multi-query attention without its rotary table: one projection viewed
    ``(..., -1, head_dim)`` and split into ``heads`` q heads and the one k and v head they
    share, behind a residual stream."""

    def __init__(self, c: int = 32, heads: int = 4):
        super().__init__()
        self.heads, self.head_dim = heads, c // heads
        self.inp = nn.Linear(c, c)
        self.qkv = nn.Linear(c, (heads + 2) * self.head_dim, bias=False)
        self.out = nn.Linear(c, c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        x = self.inp(x)
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, -1, self.head_dim).split([self.heads, 1, 1], dim=-2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        shape = (b, self.heads, s, self.head_dim)
        a = F.scaled_dot_product_attention(q, k.expand(shape), v.expand(shape))
        return self.head(x + self.out(a.transpose(1, 2).reshape(b, s, -1)))


def test_a_fused_multi_query_projection_prunes_whole_query_heads_and_keeps_the_shared_kv():
    torch.manual_seed(0)
    model, x = FusedMultiQuery().eval(), torch.randn(2, 6, 32)
    # the search: q heads, k's head and v's head are six units alike; removing k's or v's
    # empties its part of the split, which no stored size can mend
    raw = Pruner(model, (x,), validate=False).groups[1]
    assert raw.root == "qkv" and raw.n_units == 6
    p = Pruner(model, (x,))
    p.validate_groups()
    g = next(g for g in p.groups if g.root == "qkv")
    assert g.id == raw.id and g.n_units == 4 and not p.reason(g) and p.sets(g) == ["heads"]
    qkv = next(m for m in g.members if m.node_name == "qkv")
    assert sorted(qkv.pos) == list(range(32))  # the q rows: k's and v's 16 stay
    plan = p.plan(0.5)
    assert plan.removed[g.id] and g.id not in plan.skipped
    pruned = p.apply(plan)
    assert pruned.heads == 2 and pruned.qkv.out_features == (2 + 2) * 8
    assert pruned.out.in_features == 16
    v = p.verify(pruned, plan)  # (the stream's group too: no norm, all exact)
    assert v["masked_equivalence"]["ok"] and v["masked_equivalence"]["max_abs_diff"] < 1e-6, v
    # a plan of the heads alone: the original with those heads' q rows zeroed
    alone = Plan({g.id: [0, 3]})
    with torch.no_grad():
        diff = (p.apply(alone)(x) - p.masked_model(alone)(x)).abs().max()
    assert diff < 1e-6


def test_yolo_demo_prunes_all_but_its_head_outputs_to_a_quarter_of_its_parameters(demo_pruner):
    # what README's demo list says of it
    lm, p = demo_pruner("yolo")
    assert len(p.groups) == 54
    assert sorted(g.root for g in p.groups if p.reason(g)) == [
        "detect.cv2.0.2", "detect.cv3.0.2", "detect.dfl.conv"]
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    kept = sum(t.numel() for t in pruned.parameters()) / \
        sum(t.numel() for t in lm.model.parameters())
    assert 0.24 < kept < 0.26
    v = p.verify(pruned, plan)
    assert v["masked_equivalence"]["ok"] and v["masked_equivalence"]["max_abs_diff"] < 1e-5


def test_usage_importance_counts_how_often_the_router_picks_each_expert(monkeypatch):
    # the expert groups are scored by how many tokens pick each expert on the batch (one
    # trace, kept while the batch and the weights stay); groups nothing picks fall to L1
    import viewer.core.prune as prune_mod

    lm = load_model("demo:moe")
    p = Pruner(lm.model, lm.inputs)
    routers = {g.id: g.root for g in p.groups if g.root.endswith("mlp.router")}
    assert len(routers) == 2

    def picks(tokens) -> dict[str, list[int]]:  # the oracle: the routers' top 2, by hand
        logits = []
        hooks = [lm.model.get_submodule(r).register_forward_hook(
            lambda _m, _a, out: logits.append(out)) for r in routers.values()]
        with torch.no_grad():
            lm.model(tokens)
        for h in hooks:
            h.remove()
        return [torch.bincount(x.softmax(-1).topk(2, -1)[1].flatten(), minlength=8).tolist()
                for x in logits]

    traces = []
    real = prune_mod.build_graph
    monkeypatch.setattr(prune_mod, "build_graph",
                        lambda *a, **k: traces.append(1) or real(*a, **k))
    plan = p.plan(0.5, "usage")
    assert [plan.scores[gid] for gid in routers] == picks(*lm.inputs)
    assert sorted(plan.settings["scored_by_l1"]) == sorted(
        g.id for g in p.groups if g.id in plan.scores and g.id not in routers)
    for gid in routers:  # the least picked experts go
        order = np.argsort(plan.scores[gid], kind="stable")
        assert plan.removed[gid] == sorted(order[:4].tolist())
    assert plan.settings["batch"] == "example inputs"
    p.plan(0.3, "usage")
    assert len(traces) == 1  # (the picks of that batch were kept)
    other = (torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1)),)
    by_batch = p.plan(0.5, "usage", batch=other)
    assert [by_batch.scores[gid] for gid in routers] == picks(*other) and len(traces) == 2
    assert by_batch.settings["batch"] == [[2, 24]]
    gid = next(iter(routers))
    assert p.importance(p.groups[gid], "usage").tolist() == plan.scores[gid]
    stream = p.groups[0]  # nothing picks its units: L1, as the plan scored it
    assert p.importance(stream, "usage").tolist() == p.importance(stream, "l1").tolist()
    with torch.device("meta"):
        empty = load_model("demo:moe", device="meta")
    with pytest.raises(DepViewError, match="importance 'usage' runs the model, and this "
                       "model is on the meta device"):
        Pruner(empty.model, empty.inputs, validate=False).plan(0.5, "usage")
