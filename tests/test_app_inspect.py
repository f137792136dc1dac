"""Inspector: node details, wrapper metadata, the clicked layer's group and its highlight."""

from __future__ import annotations

import dataclasses
import html as html_text
import json
import re

import numpy as np
import pytest
import torch

from viewer.app import styles
from viewer.app.callbacks import inspect as cb
from viewer.app.callbacks.graph import render
from viewer.app.callbacks.model import load_entry
from viewer.app.callbacks.prune import set_ignore
from viewer.app.state import SessionStore
from viewer.core.errors import DepViewError
from viewer.core.optypes import STYLES


def _text(component) -> str:
    """All text inside a Dash component tree."""
    return json.dumps(component, ensure_ascii=False, default=lambda c: c.to_plotly_json()
                      if hasattr(c, "to_plotly_json") else str(c))


@pytest.fixture(scope="module")
def store():
    s = SessionStore()
    for sid, spec in (("resnet", "demo:resnet"), ("densenet", "demo:densenet")):
        load_entry(s, sid, spec)
        render(s, sid, "new")
    return s


def _op(name):
    return {"kind": "op", "name": name}


def test_clicking_a_conv_shows_its_type_and_highlights_its_group(store):
    r = cb.inspect(store, "resnet", _op("layer1.0.conv1"))
    text = _text(r.details)
    assert "OpType.CONV" in text and "Conv2d" in text and "layer1.0.conv1.weight" in text
    view = store.session("resnet").view
    graph = store.session("resnet").stage.graph
    members = {view.rep[graph.by_name[n].id] for n in
               ("layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2")}
    assert members <= set(r.highlight["nodes"])
    assert r.highlight["selected"] == view.rep[graph.by_name["layer1.0.conv1"].id]
    assert r.selection == {"kind": "op", "name": "layer1.0.conv1", "side": "out",
                           "gid": r.group_value}
    assert "prunable" in _text(r.group_panel) and r.show_group


def test_in_side_shows_the_group_of_the_input_channels(store):
    out = cb.inspect(store, "resnet", _op("layer1.0.conv2"), "out")
    inn = cb.inspect(store, "resnet", _op("layer1.0.conv2"), "in")
    assert out.group_value != inn.group_value
    assert inn.group_value == cb.inspect(store, "resnet", _op("layer1.0.conv1")).group_value


def test_output_layer_group_says_why_it_is_not_prunable(store):
    r = cb.inspect(store, "resnet", _op("fc"))
    assert "not prunable" in _text(r.group_panel)
    assert "output" in _text(r.group_panel)
    # so does its entry in the group picker (a layer whose channels two groups hold, one
    # prunable, one not, offers both)
    assert r.group_options[0]["label"].endswith(" · not prunable")
    conv = cb.inspect(store, "resnet", _op("layer1.0.conv1"), details=False)
    assert "prunable" not in conv.group_options[0]["label"]


def test_clicking_a_concat_shows_offsets_and_a_segmented_bar(store):
    graph = store.session("densenet").stage.graph
    cat = next(n for n in graph.nodes if n.op_type.value == "concat")
    r = cb.inspect(store, "densenet", _op(cat.name))
    text = _text(r.details)
    assert "offsets" in text and "segbar" in text
    assert ", ".join(map(str, cat.meta.offsets)) in text
    # a concat belongs to several groups, one per input range: all offered, edge ranges shown
    assert len(r.group_options) >= 2
    assert any("[" in label for _eid, label in r.highlight["edges"])


def test_group_pick_switches_between_groups_of_a_concat(store):
    graph = store.session("densenet").stage.graph
    cat = next(n for n in graph.nodes if n.op_type.value == "concat")
    first = cb.inspect(store, "densenet", _op(cat.name))
    other = first.group_options[1]["value"]
    second = cb.inspect(store, "densenet", _op(cat.name), pick=other)
    assert second.group_value == other and second.highlight != first.highlight


def test_module_selection_shows_a_summary(store):
    r = cb.inspect(store, "resnet", {"kind": "module", "name": "layer1.0"})
    text = _text(r.details)
    assert "BasicBlock" in text and "ops inside" in text
    assert r.selection == {"kind": "module", "name": "layer1.0"} and not r.show_group
    # its ignore boxes (every layer inside, as --ignore layer1.0:out): shown, filled from the
    # session; no cell box where no LSTM with proj_size is inside
    assert r.show_module_ignore
    assert [o["value"] for o in cb.ignore_options(store, "resnet", r.selection)] == \
        ["out", "in"]
    store.session("resnet").ignore.add("layer1.0:in")
    try:
        assert cb.control_values(store, "resnet", r.selection) == (["in"], None)
    finally:
        store.session("resnet").ignore.clear()


def test_unknown_or_empty_selection_shows_nothing(store):
    assert cb.inspect(store, "resnet", None).details == []
    assert cb.inspect(store, "resnet", _op("no.such.layer")).details == []


def test_selection_from_tap():
    assert cb.selection_from_tap({"kind": "op", "name": "a.b", "id": "n3"}) == _op("a.b")
    assert cb.selection_from_tap({"kind": "module", "path": "a", "id": "m0"}) == \
        {"kind": "module", "name": "a"}
    assert cb.selection_from_tap(None) is None


def test_segment_bar_marks_the_group_ranges_and_the_cut():
    bar = cb.segment_bar([16, 8], [0, 16], "in", np.arange(12, 20), np.array([18, 19]))
    assert [s.className for s in bar.children] == ["seg seg-hit", "seg seg-hit"]
    assert "in1" in _text(bar) and "16–23" in _text(bar)
    own = [c for c in bar.children[0].children if getattr(c, "className", "") == "seg-own"]
    assert own[0].style == {"left": "75.00%", "width": "25.00%"}  # positions 12–15 of 16
    cut = [c for c in bar.children[1].children if getattr(c, "className", "") == "seg-cut"]
    assert cut[0].style == {"left": "25.00%", "width": "25.00%"}  # positions 18–19 of 16–23


def test_control_values_reflect_ignores_and_overrides(store):
    session = store.session("resnet")
    r = cb.inspect(store, "resnet", _op("layer1.0.conv1"))
    session.ignore.add("layer1.0.conv1:out")
    session.overrides[r.group_value] = 0.5
    try:
        assert cb.control_values(store, "resnet", r.selection) == (["out"], 0.5)
    finally:
        session.ignore.clear()
        session.overrides.clear()
    assert cb.control_values(store, "resnet", {"kind": "module", "name": "x"}) == ([], None)


def test_a_core_failure_computing_an_ad_hoc_group_is_reported_not_raised(store, monkeypatch):
    def boom(*_a, **_k):
        raise IndexError("index 49 is out of bounds")

    monkeypatch.setattr(cb, "group_of", boom)
    monkeypatch.setattr(cb, "groups_at", lambda *a: [])
    r = cb.inspect(store, "resnet", _op("layer1.0.add"))
    assert "no group could be computed" in _text(r.group_panel)
    assert r.details  # the node itself is still shown


def test_the_first_step_of_a_click_computes_the_highlight_without_the_panels(store):
    full = cb.inspect(store, "resnet", _op("layer1.0.conv1"))
    quick = cb.inspect(store, "resnet", _op("layer1.0.conv1"), details=False)
    assert quick.details == [] and quick.group_panel == []
    assert (quick.highlight, quick.selection, quick.group_options, quick.group_value) == \
        (full.highlight, full.selection, full.group_options, full.group_value)


def test_members_table_is_one_component_with_escaped_names(store):
    graph = store.session("resnet").stage.graph
    group = cb.group_of(graph, "layer1.0.conv1")
    table = cb.members_table(group)
    assert table.dangerously_allow_html
    assert table.children.count("<tr>") == len(group.members) + 1
    assert "layer1.0.bn1" in table.children and "\n\n" not in table.children
    odd = dataclasses.replace(group, members=[dataclasses.replace(
        group.members[0], node_name='<img src=x onerror="alert(1)">')])
    text = cb.members_table(odd).children
    assert "<img" not in text and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text


def _plain_ranges(pos) -> str:
    """Index ranges by a plain loop over the sorted positions (oracle)."""
    runs: list[list[int]] = []
    for x in sorted({int(x) for x in pos}):
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)


DASH, JOINED = "–", "\u2060–\u2060"  # no line break inside "12–13" on the page


def _reference_members_table(group) -> str:
    """The members table as first written, a sort and a Python loop per member."""
    esc = html_text.escape
    rows = ["<tr><th>member</th><th>side</th><th>dim</th><th>width</th><th>positions</th></tr>"]
    for m in group.members:
        pos = np.unique(m.pos)
        title = f"{m.node_name}: {STYLES[m.op_type].label}, module {m.module or '(root)'}"
        name = esc(m.node_name).replace(".", ".<wbr/>")
        rows.append(f'<tr><td title="{esc(title)}">{name}</td><td>{esc(m.side)}</td>'
                    f'<td>{int(m.dim)}</td><td>{len(pos)}</td>'
                    f'<td class="ranges">{esc(_plain_ranges(pos).replace(DASH, JOINED))}</td>'
                    '</tr>')
    return f'<table class="members">{"".join(rows)}</table>'


@pytest.mark.parametrize("name", ["densenet", "llama", "shufflenet"])
def test_members_table_of_every_group_equals_the_reference(demo_pruner, name):
    # concat slices (densenet), GQA's folded heads (llama), channel shuffles: every group
    _lm, pruner = demo_pruner(name)
    for group in pruner.groups:
        assert cb.members_table(group).children == _reference_members_table(group)
    # the demos' members own contiguous positions; give them gaps, repeats and disorder too
    rng = np.random.default_rng(0)
    group = max(pruner.groups, key=lambda g: len(g.members))
    odd_pos = ([], [7], rng.integers(0, 40, 30), rng.permutation(50),
               np.sort(rng.choice(4096, 1000, replace=False)),
               np.cumsum(rng.choice([1, 1, 3], 300)).astype(np.int32))
    odd = dataclasses.replace(group, members=[
        dataclasses.replace(m, pos=pos)
        for m, pos in zip(group.members[:len(odd_pos)], odd_pos, strict=True)])
    assert len(odd.members) == 6
    assert cb.members_table(odd).children == _reference_members_table(odd)


def test_group_highlight_labels_equal_the_reference(store):
    # every edge label of every group of a model whose concats cut tensors into ranges
    session = store.session("densenet")
    graph, view = session.stage.graph, session.view
    for group in session.stage.pruner.groups:
        got = dict(styles.group_highlight(view, graph, group, None)["edges"])
        for (nid, port, dim), (pos, _unit) in group.tensors.items():
            if not len(pos):
                continue
            width = graph.nodes[nid].out_shapes[port][dim]
            want = f"[{_plain_ranges(pos)}] of {width}" if len(pos) < width else \
                f"all {len(pos)}"
            for eid in view.tensor_edges.get((nid, port), ()):
                assert want in got[eid].split(" | ")


def test_a_group_that_sets_a_stored_split_size_says_so(fused_spec):
    from viewer.app.state import ModelEntry

    spec = fused_spec
    s = SessionStore([ModelEntry(spec, inputs=("2x8",))])
    load_entry(s, "f", spec)
    render(s, "f", "new")
    text = _text(cb.inspect(s, "f", _op("qkv")).group_panel)
    assert "Pruning also sets split_size" in text and "not prunable" not in text


def test_pad_and_einsum_metadata_are_drawn_for_humans():
    import torch

    from viewer.core.trace import build_graph

    class M(torch.nn.Module):
        def forward(self, x, s):
            return torch.einsum("...chw,c->...chw",
                                torch.nn.functional.pad(x, (1, 2, 0, 3)), s)

    g = build_graph(M(), (torch.randn(1, 2, 4, 4), torch.randn(2)))
    pad = _text(cb.meta_view(g.node("pad")))
    assert "dim 3" in pad and "+1 before, +2 after" in pad and "+0 before, +3 after" in pad
    ein = _text(cb.meta_view(g.node("einsum")))
    assert "...chw,c->...chw" in ein and "0chw,c->0chw" in ein


def test_ops_along_a_dim_say_which_dims():
    import torch

    from viewer.core.trace import build_graph

    class M(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1).flip(2)

    g = build_graph(M(), torch.randn(1, 2, 3))
    assert "mixes positions along" in _text(cb.meta_view(g.node("cumsum")))
    assert "moves positions along" in _text(cb.meta_view(g.node("flip"))) and \
        "dim 2" in _text(cb.meta_view(g.node("flip")))


def test_writes_and_slices_show_their_index_as_python_spells_it():
    # a write's metadata was drawn as a raw dict of its region
    import torch

    from viewer.core.trace import build_graph

    class M(torch.nn.Module):
        def forward(self, x):
            y = x * 2
            y[:, 2] = 0.0
            y[:, :, 1:3].zero_()
            y[y < 0] = 0.0
            return y[:, 1:5:2] + 1

    g = build_graph(M(), torch.randn(2, 6, 4))
    text = _text(cb.meta_view(g.node("setitem")))
    assert "writes" in text and "x[:, 2]" in text and "an index set" in text
    assert "value" in text and "a number" in text
    write = _text(cb.meta_view(g.node("write")))
    assert "x[:, :, 1:3]" in write and "a write through a view" in write and "input 1" in write
    mask = _text(cb.meta_view(g.node("setitem_1")))
    assert "x[mask]" in mask and "a bool tensor over the first 3 dims" in mask
    assert "x[:, 1:5:2]" in _text(cb.meta_view(g.node("getitem_1")))


def test_repeats_say_how_they_copy():
    import torch

    from viewer.core.trace import build_graph

    class M(torch.nn.Module):
        def forward(self, x):
            return x.repeat(1, 2) + x.repeat_interleave(2, dim=1)

    g = build_graph(M(), torch.randn(1, 3))
    assert "whole dim repeated" in _text(cb.meta_view(g.node("repeat")))
    assert "each position repeated in place" in _text(cb.meta_view(g.node("repeat_interleave")))


def test_after_a_preview_the_group_panel_says_which_units_go(store):
    from viewer.app.callbacks import prune as pcb

    pcb.run_preview(store, "resnet", pcb.parse_settings("l1", 0.5, "uniform", 1))
    try:
        r = cb.inspect(store, "resnet", _op("layer1.0.conv1"))
        plan = store.session("resnet").preview_plan
        removed = plan.removed[r.group_value]
        text = _text(r.group_panel)
        n = store.session("resnet").stage.pruner.groups[r.group_value].n_units
        assert 1 < len(removed) < n
        assert f"{len(removed)} of {n} units (units " in text
    finally:
        store.session("resnet").preview_plan = None


def test_a_router_group_says_how_many_experts_must_stay():
    s = SessionStore()
    load_entry(s, "moe", "demo:moe")
    render(s, "moe", "new")
    r = cb.inspect(s, "moe", _op("layers.0.mlp.router"))
    text = _text(r.group_panel)
    assert "keeps at least" in text and \
        "2 units ('layers.0.mlp.topk' (topk) picks 2 of them)" in text
    group = s.session("moe").stage.pruner.groups[r.group_value]
    assert {m.node_name for m in group.members} == {
        "layers.0.mlp.router", "layers.0.mlp.experts.gate_up", "layers.0.mlp.experts.down"}
    assert "edges carry the positions an op picked" in text
    lm_head = _text(cb.inspect(s, "moe", _op("lm_head")).group_panel)
    assert "keeps at least" not in lm_head and "picked ids" not in lm_head


def test_a_group_removed_in_steps_says_how_many_and_why():
    s = SessionStore()
    load_entry(s, "vit", "demo:vit")
    render(s, "vit", "new")
    text = _text(cb.inspect(s, "vit", _op("patch_embed")).group_panel)
    assert "removed in steps of" in text and "4 units (attention heads)" in text
    assert "removed in steps of" not in _text(cb.inspect(s, "vit", _op("head")).group_panel)


def test_the_group_panel_says_what_a_unit_spans_when_members_own_several_indices():
    from viewer.app.callbacks.inspect import unit_spans
    from viewer.app.state import SessionStore

    store = SessionStore()
    cnn = store.base("demo:cnn").stage.pruner.groups
    # the last conv's channels reach fc1 through a flatten: one unit is 4x4 input features
    flat = next(g for g in cnn if any(m.node_name == "fc1" and m.side == "in"
                                      for m in g.members))
    fc1 = next(m for m in flat.members if m.node_name == "fc1")
    per = len(set(fc1.pos.tolist())) // flat.n_units
    assert per > 1 and f"{per} of fc1 (in)" in unit_spans(flat)
    plain = next(g for g in cnn if g.root == "features.0")
    assert unit_spans(plain) == ""  # one index per unit everywhere: nothing to explain


def test_a_unit_span_that_differs_between_units_is_given_as_a_range():
    # a GroupNorm group of 6 straddles a concat of 32 + 16: the map's units are 5 whole
    # norm groups and the 2 channels of the straddling one (an average, 5.33, said nothing)
    import torch
    from torch import nn

    from viewer.app.callbacks.inspect import unit_spans
    from viewer.core.groups import all_groups
    from viewer.core.trace import build_graph

    class SkipJoin(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.skip = nn.Conv2d(3, 32, 1), nn.Conv2d(3, 16, 1)
            self.norm, self.out = nn.GroupNorm(8, 48), nn.Conv2d(48, 2, 1)

        def forward(self, x):
            return self.out(self.norm(torch.cat([self.up(x), self.skip(x)], 1)))

    x = torch.randn(1, 3, 4, 4)
    g = next(g for g in all_groups(build_graph(SkipJoin().eval(), x)) if g.root == "up")
    assert "2–6 of up (out)" in unit_spans(g) and "6 of norm (in)" in unit_spans(g)


def test_a_group_the_preview_left_at_its_width_says_why(store):
    from viewer.core.plan import Plan

    session = store.session("resnet")
    gid = cb.inspect(store, "resnet", _op("layer1.0.conv1")).group_value
    why = "at the planned width (2 of 16 units kept) the model runs other ops"
    session.preview_plan = Plan({}, {}, {}, {gid: why})
    try:
        text = _text(cb.inspect(store, "resnet", _op("layer1.0.conv1")).group_panel)
    finally:
        session.preview_plan = None
    assert "preview leaves it" in text and why in text and '"prunable"' in text


def test_an_empty_concat_input_is_shown_empty_not_as_a_negative_range():
    # HF Llama's DynamicCache concatenates onto an empty cache: "offsets 0, 0", "in0 0–-1"
    import torch

    from viewer.core.trace import build_graph

    class Cache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = torch.nn.Linear(8, 16)

        def forward(self, x):
            return torch.cat([torch.zeros(1, 0, 16), self.k(x)], dim=-2)

    g = build_graph(Cache(), torch.randn(1, 4, 8))
    text = _text(cb.meta_view(g.node("cat")))
    assert "in0 empty, 0" in text and "(empty)" in text
    assert "–-" not in text and "-1" not in text
    bar = cb.segment_bar([0, 4], [0, 0], "in")
    assert [s.className for s in bar.children] == ["seg seg-empty", "seg"]
    assert "0–3" in _text(bar.children[1])


def test_long_names_wrap_and_numbers_stay_whole(store):
    # HF names pushed the count and width columns behind a scrollbar: a module's own
    # parameters go by their local name (the full key in the tooltip), members' names may
    # wrap after their dots, and number cells are marked to keep one line
    graph = store.session("resnet").stage.graph
    details = cb.node_details(graph.by_name["layer1.0.bn1"], {})
    params = next(c for c in details if getattr(c, "className", "") == "params")
    first = params.children[1].children
    assert first[0].children == "weight" and first[0].title.startswith("layer1.0.bn1.weight")
    assert first[1].className == first[2].className == "n"
    table = cb.members_table(cb.group_of(graph, "layer1.0.conv1")).children
    assert "layer1.<wbr/>0.<wbr/>bn1" in table
    assert cb.breakable("a<b>.c") == "a&lt;b&gt;.<wbr/>c"


def test_a_weight_or_spectral_normalised_layer_says_how_its_weight_is_made():
    from torch import nn
    from torch.nn.utils import parametrizations

    from viewer.core.trace import build_graph

    model = nn.Sequential(parametrizations.weight_norm(nn.Conv1d(2, 4, 3)), nn.Conv1d(4, 2, 1))
    graph = build_graph(model, torch.randn(1, 2, 8))
    text = _text(cb.node_details(graph.by_name["0"], {}))
    assert "weight = g · v / ‖v‖ (weight_norm): g is parametrizations.weight.original0" in text
    assert "weight_norm" not in _text(cb.node_details(graph.by_name["1"], {}))
    sn = nn.Sequential(parametrizations.spectral_norm(nn.Conv1d(2, 4, 3)), nn.Conv1d(4, 2, 1))
    text = _text(cb.node_details(build_graph(sn.eval(), torch.randn(1, 2, 8)).by_name["0"], {}))
    assert "weight = W / σ (spectral_norm)" in text and "rescales u" in text
    import torch.nn.utils.prune as tp

    masked = nn.Sequential(tp.l1_unstructured(nn.Conv1d(2, 4, 3), "weight", 0.5))
    text = _text(cb.node_details(build_graph(masked.eval(), torch.randn(1, 2, 8)).by_name["0"],
                                 {}))
    assert "weight = weight_orig · weight_mask (torch.nn.utils.prune)" in text


def test_members_read_by_a_key_or_value_weight_say_which_input():
    from torch import nn

    from viewer.core.groups import group_of
    from viewer.core.trace import build_graph

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.mem = nn.Linear(4, 6)
            self.att = nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True)

        def forward(self, q, m):
            m = self.mem(m)
            return self.att(q, m, m)[0]

    graph = build_graph(Cross(), (torch.randn(1, 3, 8), torch.randn(1, 5, 4)))
    text = cb.members_table(group_of(graph, "mem")).children
    assert "<td>in (key)</td>" in text and "<td>in (value)</td>" in text


LSTMP = """import torch


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 12, proj_size=3, batch_first=True)
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.lstm(x)[0][:, -1])
"""


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_an_lstm_with_proj_size_offers_its_cell_units_group(tmp_path):
    from conftest import file_session

    store = file_session(tmp_path, LSTMP, ("1x5x4",))
    render(store, "sid", "new")
    r = cb.inspect(store, "sid", _op("lstm"))
    labels = [o["label"] for o in r.group_options]
    assert labels[0].startswith("#0 · lstm · 3 units")
    cell = next(o for o in r.group_options if "(cell)" in o["label"])
    assert cell["label"] == f"#{cell['value']} · lstm (cell) · 12 units"
    picked = cb.inspect(store, "sid", _op("lstm"), pick=cell["value"])
    text = _text(picked.group_panel)
    assert "lstm (cell)" in text and "out (cell)" in text
    # its cell units can be ignored apart from its outputs; a Linear offers no such box
    assert [o["value"] for o in cb.ignore_options(store, "sid", _op("lstm"))] == \
        ["out", "in", "cell"]
    assert [o["value"] for o in cb.ignore_options(store, "sid", _op("fc"))] == ["out", "in"]
    assert set_ignore(store, "sid", "lstm", ["cell"]) == \
        "Ignoring lstm's cell units: groups that would prune them are left alone."
    assert cb.control_values(store, "sid", _op("lstm")) == (["cell"], None)
    pruner = store.session("sid").stage.pruner
    ignored = store.session("sid").ignored()
    assert pruner.reason(pruner.groups[cell["value"]], ignored) == "'lstm' cell units are ignored"
    assert not pruner.reason(pruner.groups[0], ignored)  # the projection's units still go
    with pytest.raises(DepViewError, match="fc has no cell units of their own"):
        set_ignore(store, "sid", "fc", ["out", "cell"])
    assert store.session("sid").ignore == {"lstm:cell"}
    # a module holding it offers the cell box too
    assert "cell" in [o["value"] for o in cb.ignore_options(store, "sid", {"kind": "module",
                                                                          "name": "lstm"})]


def test_the_group_panel_explains_the_edge_labels(store):
    text = _text(cb.inspect(store, "resnet", _op("layer1.0.conv1")).group_panel)
    assert '\\"all 64\\" means it owns all 64' in text and "before → after" in text


def test_repeated_inexact_notes_collapse_into_one_line_per_kind():
    # a transformer's residual stream: one "normalises over pruned channels" per LayerNorm
    # (25 on GPT-2 small) was a wall of text; the demo ViT has 5 norms and 2 attentions
    s = SessionStore()
    load_entry(s, "vit", "demo:vit")
    render(s, "vit", "new")
    group = s.session("vit").stage.pruner.groups[0]
    assert len(group.stats_notes) == 7
    text = _text(cb.inspect(s, "vit", _op("patch_embed")).group_panel)
    assert ("5 LayerNorms normalise over pruned channels: blocks.0.norm1, blocks.0.norm2, "
            "blocks.1.norm1, … (+2)") in text
    assert ("attention scale 1/sqrt(head_dim) changes with the width in 2 "
            "MultiheadAttentions: blocks.0.attn, blocks.1.attn") in text
    assert "'blocks.0.norm1' normalises" not in text.split("title")[0]
    assert "Inexact: 5 LayerNorms" in text and "Maybe inexact" not in text  # (for sure)
    graph = s.session("vit").stage.graph
    # a note said once, and one the pattern does not know, stay as they are
    assert cb.collapse_notes(["'norm' normalises over pruned channels", "odd note",
                              "odd note"], graph) == [
        "'norm' normalises over pruned channels", "odd note"]
    # validation's note for a scale Python derives from a width (one per attention)
    moved = "computes with a number the forward derives from the pruned width (1/sqrt(d)?)"
    assert cb.collapse_notes([f"'a.div' {moved}", f"'b.div' {moved}"], graph) == [
        "2 ops compute with a number the forward derives from the pruned width (1/sqrt(d)?): "
        "a.div, b.div"]


def test_the_units_a_preview_removes_are_a_short_line_with_every_unit_on_hover():
    from viewer.core.plan import Plan

    s = SessionStore()
    load_entry(s, "vit", "demo:vit")
    render(s, "vit", "new")
    session = s.session("vit")
    gid = cb.inspect(s, "vit", _op("blocks.0.mlp.fc1")).group_value
    removed = list(range(0, 128, 3))  # 43 scattered units: 43 runs, as a magnitude cut gives
    session.preview_plan = Plan({gid: removed})
    r = cb.inspect(s, "vit", _op("blocks.0.mlp.fc1"))
    row = next(c for c in r.group_panel[2].children if "preview removes" in _text(c))
    cell = row.children[1].children
    assert cell.children.startswith("43 of 128 units (units 0, 3, 6, 9, ")
    assert cell.children.endswith(", 33, … and 31 more)")
    assert cell.title == "units removed: " + ", ".join(map(str, removed))
    session.preview_plan = Plan({gid: [5]})  # it said "1 of 128 unit"
    r = cb.inspect(s, "vit", _op("blocks.0.mlp.fc1"))
    row = next(c for c in r.group_panel[2].children if "preview removes" in _text(c))
    assert row.children[1].children.children == "1 of 128 units (unit 5)"
    assert styles.short_ranges([0, 1, 2, 3, 7, 9, 10, 11, 12, 20, 30], most=3) == \
        "0–3, 7, 9–12, … and 2 more"
    assert styles.short_ranges(range(5), most=1) == "0–4" and styles.short_ranges([]) == ""


def test_edge_labels_count_the_index_runs_past_a_few():
    # a group owning every third index of a tensor: the label on the graph stays short
    s = SessionStore()
    load_entry(s, "vit", "demo:vit")
    render(s, "vit", "new")
    session = s.session("vit")
    group = session.stage.pruner.groups[1]
    key = next(iter(group.tensors))
    pos, unit = group.tensors[key]
    odd = dataclasses.replace(group, tensors={key: (pos[::3], unit[::3])})
    labels = [t for _e, t in styles.group_highlight(session.view, session.stage.graph, odd,
                                                    None)["edges"]]
    width = session.stage.graph.nodes[key[0]].out_shapes[key[1]][key[2]]
    more = len(pos[::3]) - styles.EDGE_RUNS
    assert labels and all(t == f"[0, 3, 6, 9, 12, 15, … and {more} more] of {width}"
                          for t in labels)


def test_an_attention_group_says_its_units_are_heads():
    s = SessionStore()
    load_entry(s, "llama", "demo:llama")
    render(s, "llama", "new")
    text = _text(cb.inspect(s, "llama", _op("layers.0.attn.q_proj")).group_panel)
    # 8 query heads over 4 key/value heads: a unit is a kv head and its 2 query heads (it
    # read "4 attention heads" beside the model's 8)
    assert "4 (key/value heads, each with its 2 query heads: round to counts them)" in text
    assert "heads" not in _text(
        cb.inspect(s, "llama", _op("layers.0.mlp.gate_proj")).group_panel)
    load_entry(s, "swin", "demo:swin")  # plain heads
    render(s, "swin", "new")
    text = _text(cb.inspect(s, "swin", _op("features.0.0.attn.relative_position_bias_table"))
                 .group_panel)
    assert "2 (attention heads: round to counts heads)" in text


def test_a_layer_whose_units_are_partly_blocked_offers_both_groups(tmp_path):
    # its first 3 channels reach a table made at init (a non-persistent buffer two ops
    # read): one group of them, not prunable; the other 5 prune
    from conftest import file_session

    s = file_session(tmp_path, (
        "import torch\nclass M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)\n"
        "        self.register_buffer('scale', torch.ones(1, 3, 1, 1), persistent=False)\n"
        "        self.head = torch.nn.Conv2d(8, 5, 1)\n"
        "    def forward(self, x):\n"
        "        y = self.conv(x)\n"
        "        return self.head(torch.cat([y[:, :3] * self.scale + self.scale, y[:, 3:]],"
        " 1))\n"),
        ("1x3x8x8",))
    render(s, "sid", "new")
    r = cb.inspect(s, "sid", _op("conv"))
    assert [o["label"] for o in r.group_options] == [
        "#0 · conv · 5 units", "#1 · conv · 3 units · not prunable"]
    assert r.group_value == 0 and "prunable" in _text(r.group_panel)
    blocked = cb.inspect(s, "sid", _op("conv"), pick=1)
    assert "buffer 'scale'" in _text(blocked.group_panel)


def test_a_persistent_buffer_used_directly_is_shown_as_a_buffer_not_a_parameter(tmp_path):
    # a frozen norm's statistics are cut with its channels (as a bare parameter is) but are
    # no parameters: the inspector says "Buffer" and module boxes do not count them
    from conftest import file_session

    from viewer.app.viewmodel import node_params

    s = file_session(tmp_path, (
        "import torch\nclass M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)\n"
        "        self.register_buffer('running_var', torch.ones(8))\n"
        "        self.head = torch.nn.Conv2d(8, 5, 1)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.conv(x) * self.running_var.reshape(1, -1, 1, 1))\n"),
        ("1x3x8x8",))
    render(s, "sid", "new")
    text = _text(cb.inspect(s, "sid", _op("running_var")).details)
    assert "Buffer (in the state_dict)" in text and "Parameters" not in text
    graph = s.session("sid").stage.graph
    assert node_params(graph.by_name["running_var"]) == 0
    assert sum(node_params(n) for n in graph.nodes) == 8 * 3 * 9 + 8 + 5 * 8 + 5
    conv = cb.inspect(s, "sid", _op("conv"))
    assert "running_var" in _text(conv.group_panel) and "not prunable" not in _text(
        conv.group_panel)


def test_a_group_inexact_only_through_a_layers_own_forward_says_apply_checks_it(tmp_path):
    # timm's BatchNormAct2d: no rule reads its forward, but masked equivalence can
    from conftest import file_session

    s = file_session(tmp_path, (
        "import torch\nclass BNAct(torch.nn.BatchNorm2d):\n"
        "    def forward(self, x):\n"
        "        return torch.relu(torch.nn.functional.batch_norm(x, self.running_mean,"
        " self.running_var, self.weight, self.bias, False, 0.0, self.eps))\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.conv, self.bn = torch.nn.Conv2d(3, 8, 3, padding=1), BNAct(8)\n"
        "        self.head = torch.nn.Conv2d(8, 5, 1)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.bn(self.conv(x)))\n"),
        ("1x3x8x8",))
    render(s, "sid", "new")
    text = _text(cb.inspect(s, "sid", _op("conv")).group_panel)
    assert "Maybe inexact: " in text and "(BNAct) replaces the forward" in text
    assert "Masked equivalence checks it when you apply." in text


def test_a_table_made_at_init_is_shown_as_such_and_pruned_when_read_once(tmp_path):
    from conftest import file_session

    s = file_session(tmp_path, (
        "import torch\nclass M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)\n"
        "        self.register_buffer('table', torch.rand(8, 1, 1), persistent=False)\n"
        "        self.head = torch.nn.Conv2d(8, 5, 1)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.conv(x) * self.table)\n"),
        ("1x3x8x8",))
    render(s, "sid", "new")
    text = _text(cb.inspect(s, "sid", _op("table")).details)
    assert "Buffer (made at init, not in the state_dict)" in text and "[8×1×1]" in text
    conv = _text(cb.inspect(s, "sid", _op("conv")).group_panel)
    assert "table" in conv and "not prunable" not in conv


SHARED_NORM = """
import torch
from torch import nn

class ScaleNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight

class M(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.emb = nn.Embedding(50, d)
        self.norm = ScaleNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 32), nn.Linear(32, d)
        self.head = nn.Linear(d, 50)

    def forward(self, ids):
        h = self.norm(self.emb(ids))
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(self.norm(h))
"""


def test_each_call_of_a_module_is_a_box_to_inspect_collapse_and_ignore(tmp_path):
    from conftest import file_session

    from viewer.app.callbacks.graph import module_to_toggle
    from viewer.app.viewmodel import drawn_boxes, selected_layer

    store = file_session(tmp_path, SHARED_NORM, ("1x8:int64",))
    view, _ = render(store, "sid", "new")
    session = store.session("sid")
    graph = session.stage.graph
    assert {"norm", "norm:1"} <= set(view.module_ids)
    assert module_to_toggle(view, graph, _op("norm.mul_2")) == "norm:1"
    assert module_to_toggle(view, graph, _op("norm.mul")) == "norm"
    view, zoom = render(store, "sid", "toggle", "norm:1")
    assert view.collapsed == {"norm:1"} and zoom == view.module_ids["norm:1"]
    assert view.rep[graph.by_name["norm.mul"].id] != view.module_ids["norm:1"]

    sel = {"kind": "module", "name": "norm:1"}
    r = cb.inspect(store, "sid", sel)
    text = _text(r.details)
    assert "ScaleNorm" in text and r.show_module_ignore, text
    ops = sum(1 for b in drawn_boxes(graph) if b == "norm:1")
    assert ops == 6 and re.search(r'ops inside"\}.{0,120}"children": 6\}', text), text
    assert '"Elementwise ×5, Reduction ×1"' in text  # its own ops, not the first call's too
    # its ignore boxes act on the module, every call of it
    assert selected_layer(sel) == "norm" and selected_layer(_op("norm.mul_2")) == "norm.mul_2"
    set_ignore(store, "sid", selected_layer(sel), ["out"])
    assert session.ignore == {"norm:out"}
    assert cb.control_values(store, "sid", sel) == (["out"], None)
    assert cb.control_values(store, "sid", {"kind": "module", "name": "norm"}) == (["out"], None)


def test_clicking_a_router_weight_shows_its_experts_not_the_stream_it_reads():
    # a bare router weight (E, hidden) is in two groups: the stream (its columns) and the
    # experts it roots (its rows); the one rooted at it is shown first
    transformers = pytest.importorskip("transformers")
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=64, num_local_experts=4,
                                     num_experts_per_tok=2, max_position_embeddings=32)
    p = Pruner(transformers.MixtralForCausalLM(cfg).eval(),
               {"input_ids": torch.randint(0, 100, (1, 8))})
    node = p.graph.node("model.layers.0.mlp.gate.weight")
    shown, cands, _ = cb.resolve_group(p, node, "out", None)
    assert shown.root == node.name and shown.min_kept == 2
    assert [g.root for g in cands] == ["model.embed_tokens", node.name]
    assert cb.resolve_group(p, node, "out", cands[0].id)[0] is cands[0]  # (a pick wins)
