"""Stylesheet overlays: highlight rules change only the stylesheet, never the elements."""

from __future__ import annotations

import pytest

from viewer.app import charts, styles
from viewer.app.viewmodel import build_view
from viewer.core.groups import group_of
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


def test_group_rules_highlight_members_and_label_edges_with_ranges(densenet):
    graph, view = densenet
    before = [dict(e["data"]) for e in view.elements]
    group = group_of(graph, "stem")
    rules = styles.group_rules(view, graph, group, "n1", removed=[0, 1])
    assert rules[0] == styles.fade_others()[0]
    members = next(r for r in rules if r["style"].get("border-color") == styles.HIGHLIGHT)
    assert "#n1" in members["selector"]
    # the concat after the first dense layer carries 24 channels; the stem owns 0–15
    cat = graph.by_name["features.0.0.cat"]
    edge = view.tensor_edges[(cat.id, 0)][0]
    label = next(r for r in rules if r["selector"] == f"#{edge}")["style"]["label"]
    assert label == "[0–15] of 24 · −2"
    assert rules[-1] == {"selector": "#n1", "style": {"opacity": 1, "border-width": 5,
                                                      "border-color": styles.SELECTED}}
    assert [e["data"] for e in view.elements] == before  # elements untouched


def test_group_rules_without_group_only_mark_the_selection(densenet):
    graph, view = densenet
    assert styles.group_rules(view, graph, None, None) == []
    assert len(styles.group_rules(view, graph, None, "m0")) == 1


def test_preview_rules_annotate_new_widths(densenet):
    graph, view = densenet
    rules = styles.preview_rules(view, graph, {"stem": {"out": 12}})
    (rule,) = rules
    assert rule["selector"] == "#" + view.rep[graph.by_name["stem"].id]
    assert rule["style"]["label"].endswith("⇒ 3→12")


def test_preview_rules_mark_collapsed_modules_holding_pruned_layers():
    lm = load_model("demo:densenet")
    graph = build_graph(lm.model, lm.inputs)
    view = build_view(graph, collapsed={"features.0"})
    rules = styles.preview_rules(view, graph, {"features.0.0.conv1": {"out": 20, "in": 16}})
    assert rules == [{"selector": f"#{view.module_ids['features.0']}",
                      "style": {"border-color": styles.PRUNED}}]


def test_chart_placeholders_say_what_will_appear():
    fig = charts.width_figure(None)
    assert "Preview" in fig.layout.annotations[0].text
    fig = charts.width_figure([{"name": "a", "before": 8, "after": 4}])
    assert [t.name for t in fig.data] == ["before", "after"]
