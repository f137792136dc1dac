"""The view-model: core Graph -> Cytoscape elements, collapse, layout. No Dash involved."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from viewer.app import viewmodel as vm
from viewer.core.optypes import STYLES, OpType
from viewer.core.spec import load_model
from viewer.core.trace import build_graph


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))) + x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.cat([x[:, :4], x[:, 4:]], 1).mean((2, 3)))


@pytest.fixture(scope="module")
def graph():
    return build_graph(Net().eval(), torch.randn(1, 3, 8, 8))


def _nodes(view):
    return [e for e in view.elements if "source" not in e["data"]]


def test_build_view_draws_every_op_with_type_colour(graph):
    view = vm.build_view(graph)
    ops = [e for e in _nodes(view) if e["data"]["kind"] == "op"]
    assert len(ops) == len(graph.nodes)
    for e in ops:
        node = graph.by_name[e["data"]["name"]]
        assert e["data"]["color"] == STYLES[node.op_type].color
        assert e["data"]["op_type"] == node.op_type.value
        assert "position" in e and set(e["position"]) == {"x", "y"}
    conv = next(e for e in ops if e["data"]["name"] == "stem")
    assert conv["data"]["label"] == "stem\nConv 3→8"
    assert view.types["conv"] == 3


def test_build_view_nests_modules_as_compound_nodes(graph):
    view = vm.build_view(graph, module_classes={"blocks": "Sequential", "blocks.0": "Block"})
    data = view.data
    assert data[view.module_ids["blocks.0"]]["parent"] == view.module_ids["blocks"]
    conv = data[view.rep[graph.by_name["blocks.0.conv"].id]]
    assert conv["parent"] == view.module_ids["blocks.0"]
    add = data[view.rep[graph.by_name["blocks.0.add"].id]]  # functional op in Block.forward
    assert add["parent"] == view.module_ids["blocks.0"]
    assert data[view.module_ids["blocks.0"]]["label"] == "blocks.0 · Block"
    assert "parent" not in data[view.rep[graph.by_name["stem"].id]]  # root-level module


def test_ids_are_css_safe_and_unique(graph):
    view = vm.build_view(graph, collapsed={"blocks.1"})
    ids = [e["data"]["id"] for e in view.elements]
    assert len(ids) == len(set(ids))
    assert all(i[0] in "nme" and i[1:].isdigit() for i in ids)


def test_edges_carry_shape_labels_and_tensor_map(graph):
    view = vm.build_view(graph)
    edges = [e["data"] for e in view.elements if "source" in e["data"]]
    stem = graph.by_name["stem"]
    eids = view.tensor_edges[(stem.id, 0)]
    assert eids and all(view.data[e]["label"] == "1×8×8×8" for e in eids)
    assert {e["source"] for e in edges} <= set(view.data)


def test_collapsed_module_is_one_summary_node(graph):
    view = vm.build_view(graph, collapsed={"blocks.0"})
    mid = view.module_ids["blocks.0"]
    inside = [n for n in graph.nodes if n.name.startswith("blocks.0.")]
    assert {view.rep[n.id] for n in inside} == {mid}
    d = view.data[mid]
    assert d["collapsed"] and d["n_ops"] == len(inside)
    assert d["params"] == sum(p.numel() for p in Block(8).parameters())
    # no self-loops; the collapsed node is wired to what is outside
    edges = [e["data"] for e in view.elements if "source" in e["data"]]
    assert all(e["source"] != e["target"] for e in edges)
    assert any(e["target"] == mid for e in edges) and any(e["source"] == mid for e in edges)


def test_outermost_collapsed_module_wins(graph):
    view = vm.build_view(graph, collapsed={"blocks", "blocks.0"})
    assert view.rep[graph.by_name["blocks.0.conv"].id] == view.module_ids["blocks"]
    assert view.module_ids["blocks.0"] not in view.data  # hidden inside "blocks"


def test_default_collapsed_keeps_drawn_nodes_under_the_limit(graph):
    assert vm.default_collapsed(graph, max_visible=1000) == frozenset()
    col = vm.default_collapsed(graph, max_visible=len(graph.nodes) - 2)
    assert col and vm.visible_count(graph, col) <= len(graph.nodes) - 2
    # the deepest depth that fits: blocks.0 and blocks.1 rather than blocks
    assert col == {"blocks.0", "blocks.1"}


def test_layout_is_layered_top_to_bottom(graph):
    view = vm.build_view(graph)
    pos = {e["data"]["id"]: e["position"] for e in _nodes(view) if "position" in e}
    for e in view.elements:
        d = e["data"]
        if "source" in d:
            assert pos[d["source"]]["y"] < pos[d["target"]]["y"]


def test_layered_positions_make_room_for_module_boxes():
    plain = vm.layered_positions(3, [(0, 1), (1, 2)])
    boxed = vm.layered_positions(3, [(0, 1), (1, 2)], [(), ("m0",), ()])
    assert plain[1][1] - plain[0][1] == vm.Y_GAP
    assert boxed[1][1] - boxed[0][1] == vm.Y_GAP + vm.BOX_PAD
    assert boxed[2][1] - boxed[1][1] == vm.Y_GAP + vm.BOX_PAD


def test_channels_and_width_line(graph):
    stem, head = graph.by_name["stem"], graph.by_name["head"]
    assert vm.channels(stem) == (3, 8)
    assert vm.channels(head) == (8, 4)
    cat = next(n for n in graph.nodes if n.op_type is OpType.CONCAT)
    assert vm.out_channel_dim(cat) == 1
    assert vm.width_line(cat) == "Concat [8,8,8]"


def test_short_name_and_helpers():
    assert vm.short_name("layer1.0.conv1", "layer1.0") == "conv1"
    assert len(vm.short_name("x" * 60, "")) == vm.MAX_NAME
    assert vm.ancestors("a.b.c") == ["a", "a.b", "a.b.c"] and vm.ancestors("") == []
    assert vm.shape_text((1, 64, 8, 8)) == "1×64×8×8" and vm.shape_text(()) == "scalar"
    assert vm.text_color("#111827") == "#ffffff" and vm.text_color("#fde047") == "#111827"


def test_viewmodel_never_imports_dash(monkeypatch):
    for mod in [m for m in sys.modules if m == "viewer.app.viewmodel"]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "dash", None)  # importing dash now fails
    import importlib

    importlib.import_module("viewer.app.viewmodel")


def test_an_embedding_is_drawn_as_vocab_to_dim_not_sequence_length_to_dim():
    lm = load_model("demo:llama")  # 16 tokens in, a 256-word vocabulary, 64 wide
    g = build_graph(lm.model, lm.inputs)
    emb = next(n for n in g.nodes if n.op_type is OpType.EMBED)
    assert emb.in_shapes[0][-1] == 16
    assert vm.channels(emb) == (256, 64) and vm.width_line(emb) == "Embedding 256→64"
