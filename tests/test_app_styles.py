"""Stylesheet overlays and the group highlight: they never change the elements."""

from __future__ import annotations

from pathlib import Path

import pytest

from viewer.app import charts, ids, styles
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


def test_group_highlight_marks_members_and_labels_edges_with_ranges(densenet):
    graph, view = densenet
    before = [dict(e["data"]) for e in view.elements]
    group = group_of(graph, "stem")
    hl = styles.group_highlight(view, graph, group, "n1", removed=[0, 1])
    assert hl["fade"] == styles.FADE_SELECTOR and hl["selected"] == "n1"
    assert "n1" in hl["nodes"]
    # the concat after the first dense layer carries 24 channels; the stem owns 0–15
    cat = graph.by_name["features.0.0.cat"]
    edge = view.tensor_edges[(cat.id, 0)][0]
    assert dict(hl["edges"])[edge] == "[0–15] of 24 · −2"
    assert [e["data"] for e in view.elements] == before  # elements untouched


def test_group_highlight_without_group_only_marks_the_selection(densenet):
    graph, view = densenet
    assert styles.group_highlight(view, graph, None, None) == styles.no_highlight()
    assert styles.group_highlight(view, graph, None, "m0") == {
        "selected": "m0", "fade": None, "nodes": [], "edges": []}


def test_highlight_rules_style_every_class_the_browser_toggles():
    rules = {r["selector"]: r["style"] for r in styles.highlight_rules()}
    assert rules[f"node.{styles.MEMBER_CLASS}"]["border-color"] == styles.HIGHLIGHT
    assert rules[f".{styles.SELECTED_CLASS}"]["border-color"] == styles.SELECTED
    assert rules[f"edge.{styles.TENSOR_CLASS}"]["label"] == f"data({styles.TENSOR_LABEL})"
    assert rules[f".{styles.FADED_CLASS}"]["opacity"] == styles.FADED
    # assets/depview.js names the same classes and edge data field
    js = (Path(__file__).parents[1] / "assets" / "depview.js").read_text()
    for name in (styles.FADED_CLASS, styles.MEMBER_CLASS, styles.TENSOR_CLASS,
                 styles.SELECTED_CLASS):
        assert f"'{name}'" in js
    assert f"LABEL = '{styles.TENSOR_LABEL}'" in js
    assert f"SHOWN = '{ids.SHOWN}'" in js  # the store the panels follow


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
