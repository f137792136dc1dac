"""Stylesheet overlays and the group highlight: they never change the elements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from viewer.app import charts, ids, styles
from viewer.app.viewmodel import build_view
from viewer.core.groups import group_of
from viewer.core.prune import Pruner
from viewer.core.spec import load_model
from viewer.core.trace import build_graph


@pytest.fixture(scope="module")
def densenet():
    lm = load_model("demo:densenet")
    graph = build_graph(lm.model, lm.inputs)
    return graph, build_view(graph)


def test_ranges():
    assert styles.ranges([0, 1, 2, 5, 7, 8]) == "0–2, 5, 7–8"
    assert styles.ranges([]) == ""


def _reference_ranges(pos) -> str:
    """The plain loop ``ranges`` was: the oracle for the vectorised one."""
    p = sorted({int(x) for x in pos})
    out, i = [], 0
    while i < len(p):
        j = i
        while j + 1 < len(p) and p[j + 1] == p[j] + 1:
            j += 1
        out.append(f"{p[i]}" if i == j else f"{p[i]}–{p[j]}")
        i = j + 1
    return ", ".join(out)


def _random_positions(rng: np.random.Generator) -> np.ndarray:
    """Index lists of every kind a group holds: empty, one, whole ranges, sparse, clumped
    runs, repeats, unsorted."""
    n = int(rng.choice([0, 1, 2, 3, 10, 100, 4096]))
    kind = rng.integers(5)
    if kind == 0:  # a contiguous block somewhere
        start = int(rng.integers(0, 50))
        return np.arange(start, start + n)
    if kind == 1:  # a random subset, sorted
        return np.sort(rng.choice(max(2 * n, 1), size=n, replace=False))
    if kind == 2:  # clumps: a few runs of random lengths
        return np.cumsum(rng.choice([1, 1, 1, 2, 5], size=n)) if n else np.arange(0)
    if kind == 3:  # repeats, unsorted
        return rng.integers(0, max(n, 1), size=n)
    return rng.permutation(n)  # a permutation of a whole range


def test_ranges_equals_the_plain_loop_on_random_index_lists():
    rng = np.random.default_rng(0)
    for _ in range(400):
        pos = _random_positions(rng)
        want = _reference_ranges(pos.tolist())
        # every form callers pass: arrays of any int dtype (read-only ones, as groups share
        # them), lists, sets, generators
        frozen = pos.astype(np.int32)
        frozen.flags.writeable = False
        for form in (pos, frozen, pos.tolist(), set(pos.tolist()), (int(x) for x in pos)):
            assert styles.ranges(form) == want


def test_runs_are_the_consecutive_runs_of_the_sorted_positions():
    assert styles.runs([8, 0, 1, 2, 5, 7, 1]) == [(0, 3), (5, 6), (7, 9)]
    assert styles.runs([]) == [] and styles.runs(np.array([3])) == [(3, 4)]
    rng = np.random.default_rng(1)
    for _ in range(200):
        pos = _random_positions(rng)
        got = styles.runs(pos)
        # the runs cover exactly the positions, each run is consecutive, and runs never touch
        assert sorted(set(pos.tolist())) == [i for a, b in got for i in range(a, b)]
        assert all(a < b for a, b in got)
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(got[:-1], got[1:], strict=True))


def test_sorted_unique_is_numpy_unique_and_keeps_a_sorted_array_as_it_is():
    rng = np.random.default_rng(2)
    for _ in range(200):
        pos = _random_positions(rng)
        got = styles.sorted_unique(pos)
        assert got.dtype == np.int64 and np.array_equal(got, np.unique(pos))
    done = np.arange(10, 4106)
    assert styles.sorted_unique(done) is done  # no copy, no sort


def test_group_highlight_marks_members_and_labels_edges_with_ranges(densenet):
    graph, view = densenet
    before = [dict(e["data"]) for e in view.elements]
    group = group_of(graph, "stem")
    stem = view.rep[graph.by_name["stem"].id]
    hl = styles.group_highlight(view, graph, group, stem, removed=[0, 1])
    assert hl["fade"] == styles.FADE_SELECTOR and hl["selected"] == stem
    assert stem in hl["nodes"]
    # the concat after the first dense layer carries 24 channels; the stem owns 0–15
    cat = graph.by_name["features.0.0.cat"]
    edge = view.tensor_edges[(cat.id, 0)][0]
    # with a preview the label says the tensor's width after the cut (was "· −2": cryptic)
    assert dict(hl["edges"])[edge] == "[0–15] of 24 → 22"
    stem_edge = view.tensor_edges[(graph.by_name["stem"].id, 0)][0]
    assert dict(hl["edges"])[stem_edge] == "16 → 14"
    plain = styles.group_highlight(view, graph, group, stem)
    assert dict(plain["edges"])[stem_edge] == "all 16"
    assert dict(plain["edges"])[edge] == "[0–15] of 24"
    # the ops the channels only pass through stay visible: the concats and the ReLUs after
    # the BNs, none of them a member (they own no weight)
    path = {view.data[e]["name"] for e in hl["path"]}
    assert path == {"features.0.0.cat", "features.0.1.cat", "features.0.2.cat",
                    "features.0.0.relu1", "features.0.1.relu1", "features.0.2.relu1",
                    "features.1.relu"}
    assert not set(hl["path"]) & set(hl["nodes"])
    assert [e["data"] for e in view.elements] == before  # elements untouched


def test_group_highlight_draws_the_picked_ids_a_router_group_crosses():
    # the experts' group reaches them from the router's logits through the ids topk picks,
    # which hold none of its channels: drawn, labelled "picked ids", or the highlight broke
    # off at topk and resumed at histc
    lm = load_model("demo:moe")
    graph = build_graph(lm.model, lm.inputs)
    view = build_view(graph)
    group = group_of(graph, "layers.0.mlp.router")
    hl = styles.group_highlight(view, graph, group, None)
    picked = [view.data[e]["source"] for e, text in hl["edges"] if text == "picked ids"]
    names = {view.data[n]["name"] for n in picked}
    assert names == {"layers.0.mlp.topk", "layers.0.mlp.experts.reshape",
                     "layers.0.mlp.experts.sort", "layers.0.mlp.experts.float"}
    path = {view.data[e]["name"] for e in hl["path"]}
    assert {"layers.0.mlp.topk", "layers.0.mlp.experts.sort",
            "layers.0.mlp.experts.histc"} <= path
    other = styles.group_highlight(view, graph, group_of(graph, "layers.0.mlp.experts.down"),
                                   None)
    assert "picked ids" not in {text for _e, text in other["edges"]}


def test_group_highlight_without_group_only_marks_the_selection(densenet):
    graph, view = densenet
    assert styles.group_highlight(view, graph, None, None) == styles.no_highlight()
    assert styles.group_highlight(view, graph, None, "m0") == {
        "selected": "m0", "fade": None, "nodes": [], "path": [], "edges": []}


def test_highlight_rules_style_every_class_the_browser_toggles():
    rules = {r["selector"]: r["style"] for r in styles.highlight_rules()}
    assert rules[f"node.{styles.MEMBER_CLASS}"]["border-color"] == styles.HIGHLIGHT
    assert rules[f".{styles.SELECTED_CLASS}"]["border-color"] == styles.SELECTED
    assert rules[f"edge.{styles.TENSOR_CLASS}"]["label"] == f"data({styles.TENSOR_LABEL})"
    assert rules[f".{styles.FADED_CLASS}"]["opacity"] == styles.FADED
    assert rules[f"node.{styles.PATH_CLASS}"]["opacity"] == 1
    # assets/depview.js names the same classes and edge data field
    js = (Path(__file__).parents[1] / "assets" / "depview.js").read_text()
    for name in (styles.FADED_CLASS, styles.MEMBER_CLASS, styles.PATH_CLASS,
                 styles.TENSOR_CLASS, styles.SELECTED_CLASS):
        assert f"'{name}'" in js
    assert f"LABEL = '{styles.TENSOR_LABEL}'" in js
    assert f"SHOWN = '{ids.SHOWN}'" in js  # the store the panels follow


def test_preview_rules_annotate_new_widths(densenet):
    graph, view = densenet
    rules = styles.preview_rules(view, graph, {"stem": {"out": 12}})
    (rule,) = rules
    assert rule["selector"] == "#" + view.rep[graph.by_name["stem"].id]
    assert rule["style"]["label"].endswith("⇒ 3→12")


def test_preview_rules_annotate_cut_bare_parameters():
    # oracle: the applied copy's class token; an uncut parameter keeps its label
    lm = load_model("demo:vit")
    pruner = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    view = build_view(pruner.graph)
    plan = pruner.plan(0.5)
    token = pruner.graph.by_name["cls_token"]
    width = pruner.apply(plan).cls_token.shape[-1]
    rules = styles.preview_rules(view, pruner.graph, {}, pruner.param_widths(plan))
    (rule,) = [r for r in rules if r["selector"] == "#" + view.rep[token.id]]
    assert rule["style"]["label"] == view.data[view.rep[token.id]]["label"] + f"\n⇒ 32→{width}"
    assert width < 32
    assert styles.preview_rules(view, pruner.graph, {}, {token.id: {2: (32, 32)}}) == []


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_preview_rules_show_an_lstm_cell_width():
    model = torch.nn.LSTM(4, 12, proj_size=3)
    graph = build_graph(model, torch.randn(5, 1, 4))
    view = build_view(graph)
    (rule,) = styles.preview_rules(view, graph, {"": {"cell": 6}})
    assert rule["style"]["label"].endswith("⇒ 4→3\ncell 12→6")


def test_preview_rules_mark_collapsed_modules_holding_pruned_layers():
    lm = load_model("demo:densenet")
    graph = build_graph(lm.model, lm.inputs)
    view = build_view(graph, collapsed={"features.0"})
    conv = graph.by_name["features.0.0.conv1"]
    cin, cout = styles.channels(conv)
    rules = styles.preview_rules(view, graph, {"features.0.0.conv1": {"out": 20, "in": 16}})
    eid = view.module_ids["features.0"]
    # the box says how much of it shrinks (it only changed colour: no width was to be seen)
    assert rules == [{"selector": f"#{eid}", "style": {
        "label": f"{view.data[eid]['label']}\n⇒ 1 layer: {cout}→20",
        "border-color": styles.PRUNED}}]
    # a layer whose widths do not change changes nothing
    assert styles.preview_rules(view, graph, {"features.0.0.conv1": {"out": cout,
                                                                     "in": cin}}) == []


def test_chart_placeholders_say_what_will_appear():
    fig = charts.width_figure(None)
    assert "Preview" in fig.layout.annotations[0].text
    fig = charts.width_figure([{"name": "a", "before": 8, "after": 4}])
    assert [t.name for t in fig.data] == ["before", "after"]
    assert fig.layout.yaxis.type == "linear"


def test_one_very_wide_layer_puts_the_width_chart_on_a_log_axis():
    # GPT-2's vocabulary head (50257) flattened its 768-wide layers to nothing
    layers = [{"name": f"h{i}", "before": 768, "after": 384} for i in range(24)]
    fig = charts.width_figure(layers + [{"name": "lm_head", "before": 50257, "after": 50257}])
    assert fig.layout.yaxis.type == "log" and "log scale" in fig.layout.title.text
    assert charts.width_figure(layers).layout.yaxis.type == "linear"


def test_no_op_type_is_drawn_in_the_highlight_colour():
    """A highlighted member gets a HIGHLIGHT border: on a fill of about that colour it would
    not show (GRU's fill was the highlight colour itself)."""
    from viewer.core.optypes import STYLES

    def rgb(c: str) -> np.ndarray:
        return np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)

    near = {t.name: s.color for t, s in STYLES.items()
            if np.linalg.norm(rgb(s.color) - rgb(styles.HIGHLIGHT)) < 50}
    assert near == {}
    css = (Path(__file__).parents[1] / "assets" / "style.css").read_text()
    assert f"--hl: {styles.HIGHLIGHT};" in css  # the page's highlight is the graph's
