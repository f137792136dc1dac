"""Graph feature: rendering with collapse/expand, legend, search, stylesheet, images."""

from __future__ import annotations

import pytest

from viewer.app import styles
from viewer.app.callbacks import graph as cb
from viewer.app.callbacks.model import load_entry
from viewer.app.state import SessionStore


@pytest.fixture
def store():
    s = SessionStore(max_visible=40)  # resnet's 55 ops: the blocks start collapsed
    load_entry(s, "sid", "demo:resnet")
    return s


def test_render_new_graph_collapses_big_models(store):
    view, zoom = cb.render(store, "sid", "new")
    assert zoom is None and view.collapsed and view.n_nodes <= 40
    assert store.session("sid").view is view
    assert "collapsed" in cb.view_info(view)


def test_toggle_expands_a_collapsed_module_and_zooms_to_it(store):
    view, _ = cb.render(store, "sid", "new")
    path = sorted(view.collapsed)[0]
    expanded, zoom = cb.render(store, "sid", "toggle", path)
    assert path not in expanded.collapsed
    assert zoom == expanded.module_ids[path]
    assert expanded.data[zoom].get("compound")  # now a box with its ops inside
    again, _ = cb.render(store, "sid", "toggle", path)
    assert path in again.collapsed


def test_expand_all_and_collapse_all(store):
    cb.render(store, "sid", "new")
    full, _ = cb.render(store, "sid", "expand-all")
    assert not full.collapsed and full.n_nodes == len(store.session("sid").stage.graph.nodes)
    top, _ = cb.render(store, "sid", "collapse-all")
    assert top.collapsed == cb.top_modules(full)


def test_module_to_toggle_uses_the_module_or_the_ops_parent(store):
    view, _ = cb.render(store, "sid", "expand-all")
    graph = store.session("sid").stage.graph
    assert cb.module_to_toggle(view, graph, {"kind": "module", "name": "layer1"}) == "layer1"
    assert cb.module_to_toggle(view, graph, {"kind": "op", "name": "layer1.0.conv1"}) \
        == "layer1.0"
    assert cb.module_to_toggle(view, graph, {"kind": "op", "name": "conv1"}) is None  # root
    assert cb.module_to_toggle(view, graph, None) is None


def test_legend_lists_present_types_with_counts(store):
    view, _ = cb.render(store, "sid", "new")
    items = cb.legend(view)
    ops = [i.id["op"] for i in items]
    assert "conv" in ops and "concat" not in ops
    conv = items[ops.index("conv")]
    assert conv.children[-1].children == str(view.types["conv"])
    # the type the legend highlights shows as pressed
    assert [i.className for i in cb.legend(view, "conv")].count("legend-item active") == 1
    assert cb.legend(view, "conv")[ops.index("conv")].className == "legend-item active"
    pressed = [i.to_plotly_json()["props"]["aria-pressed"] for i in cb.legend(view, "conv")]
    assert pressed.count("true") == 1 and pressed[ops.index("conv")] == "true"


def test_a_legend_highlight_ends_with_its_model_or_its_type(store):
    """Kept while the same model is drawn again (a round, a collapse); cleared for another
    model, or when its type is no longer drawn (no button would be left to clear it)."""
    from viewer.app import ids

    view, _ = cb.render(store, "sid", "new")
    on = {"op": "conv", "rules": [{"selector": "x"}]}
    assert cb.legend_after(view, ids.GRAPH_REV, {"keep_view": True}, on) == ("conv", None)
    assert cb.legend_after(view, ids.COLLAPSE_ALL, None, on) == ("conv", None)
    assert cb.legend_after(view, ids.GRAPH_REV, {"keep_view": False}, on) == \
        (None, {"op": None, "rules": []})
    assert cb.legend_after(view, ids.DBLTAP, None, {"op": "concat"}) == \
        (None, {"op": None, "rules": []})  # (this model draws no concat)
    assert cb.legend_after(view, ids.GRAPH_REV, None, None) == (None, None)


def test_search_by_name_and_by_type(store):
    cb.render(store, "sid", "expand-all")
    view = store.session("sid").view
    hits, info = cb.search(store, "sid", "layer2.0.conv")
    assert hits == [view.rep[store.session("sid").stage.graph.by_name[n].id]
                    for n in ("layer2.0.conv1", "layer2.0.conv2")]
    assert info.startswith("2 ops")
    hits, _ = cb.search(store, "sid", "BatchNorm")  # a type label
    assert len(hits) == view.types["bn"]
    assert cb.search(store, "sid", "  ") == ([], "")
    assert cb.search(store, "sid", "nothing-like-this")[1].startswith("no match")
    # a wildcard pattern matches whole names, as --override and --ignore read it
    graph = store.session("sid").stage.graph
    hits, info = cb.search(store, "sid", "LAYER*.0.CONV1")
    assert hits == [view.rep[graph.by_name[f"layer{i}.0.conv1"].id] for i in (1, 2, 3)]
    assert info.startswith("3 ops")
    hits, info = cb.search(store, "sid", "*.downsample")
    assert hits == [view.module_ids[f"layer{i}.0.downsample"] for i in (2, 3)]
    assert info.startswith("2 modules")
    assert cb.search(store, "sid", "conv*")[0] == [view.rep[n.id] for n in graph.nodes
                                                    if n.name == "conv1" or
                                                    n.target.endswith(".Conv2d")]
    assert cb.search(store, "sid", "*.conv9")[1] == "no match for '*.conv9'"


def test_search_hits_inside_collapsed_modules_point_at_the_module(store):
    view, _ = cb.render(store, "sid", "new")
    hits, _ = cb.search(store, "sid", "layer1.0.conv1")
    assert hits and all(h in view.data for h in hits)


def test_overlay_rules():
    # composition (base first, overlays after) happens in the browser: depview.compose
    assert styles.search_rules(["n1"])[-1]["selector"] == "#n1"
    assert styles.type_rules("conv") and all("selector" in r for r in styles.type_rules("conv"))
    assert styles.type_rules(None) == [] and styles.search_rules([]) == []


def test_image_request_downloads_png_or_svg():
    png = cb.image_request("png", "depview-demo-resnet")
    assert png["type"] == "png" and png["action"] == "download" and png["options"]["full"]
    assert cb.image_request("svg", "x")["type"] == "svg"


def test_render_without_a_model_is_a_clear_error():
    s = SessionStore()
    s.session("empty", create=True)
    with pytest.raises(Exception, match="no model loaded"):
        cb.render(s, "empty", "new")


def test_search_matches_each_alternative_of_a_type_label_and_class_names():
    s = SessionStore()
    load_entry(s, "vit", "demo:vit")
    view, _ = cb.render(s, "vit", "expand-all")
    graph = s.session("vit").stage.graph
    lns = view.elements_of(n.id for n in graph.nodes if n.op_type.value == "ln")
    assert len(lns) == 5
    # the label is "LayerNorm/RMSNorm": "LayerNorm" found nothing
    for q in ("LayerNorm", "layernorm", "RMSNORM", "LayerNorm/RMSNorm", "ln"):
        assert cb.search(s, "vit", q)[0] == lns, q
    # a module class: of an op's own module, and of the module boxes
    mha = view.elements_of(n.id for n in graph.nodes if n.op_type.value == "mha")
    assert cb.search(s, "vit", "MultiheadAttention")[0] == mha and len(mha) == 2
    conv = cb.search(s, "vit", "conv2d")
    assert conv[0] == [view.rep[graph.by_name["patch_embed"].id]]
    seq, info = cb.search(s, "vit", "sequential")  # the box of 'blocks', named otherwise
    assert seq == [view.module_ids["blocks"]] and info == "1 module matches, 1 drawn"
    assert cb.search(s, "vit", "Norm")[0] == lns  # a substring of the class, as of a name


def test_search_on_a_5000_node_graph_is_fast_and_deterministic(store):
    import dataclasses
    import time
    from types import SimpleNamespace

    from viewer.core.graph import Graph

    stage = store.session("sid").stage
    small = stage.graph.nodes
    nodes = [dataclasses.replace(small[i % len(small)], id=i,
                                 name=f"copy{i // len(small)}.{small[i % len(small)].name}")
             for i in range(5000)]
    big = Graph(nodes, [])
    rep = {n.id: f"n{n.id}" for n in nodes}
    session = store.session("sid")
    session.stages = [SimpleNamespace(graph=big, module_classes=stage.module_classes)]
    session.view = SimpleNamespace(
        rep=rep, data=set(rep.values()), module_ids={},
        elements_of=lambda ids: list(dict.fromkeys(rep[i] for i in ids if i in rep)))
    t = time.perf_counter()
    first = [cb.search(store, "sid", q) for q in ("Conv2d", "layernorm", "layer3", "relu")]
    took = time.perf_counter() - t
    assert first == [cb.search(store, "sid", q) for q in ("Conv2d", "layernorm", "layer3",
                                                          "relu")]
    n_conv = sum(n.op_type.value == "conv" for n in nodes)
    assert first[0][1] == f"{n_conv} ops match, {n_conv} drawn (first {cb.MAX_HITS} shown)"
    assert first[0][0] == [f"n{n.id}" for n in nodes if n.op_type.value == "conv"][:200]
    assert took < 0.4, took  # ~20 ms for the four here; a shared 2-core machine varies
