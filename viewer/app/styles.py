"""Cytoscape stylesheets and highlights: the static base, the overlays a callback swaps in,
and the group highlight the browser draws by toggling classes.

Highlighting never changes the element list, which the component would re-serialise whole. An
op type, search hits and new widths after a preview are stylesheet overlays (lists of
``{"selector", "style"}`` rules). The inspected group changes on every click, so it is no
stylesheet: re-applying one restyles and redraws every element (about 100 ms per frame in a
software-rendered browser), while toggling classes restyles only the elements that change.
:func:`group_highlight` says which elements get which class, and :func:`highlight_rules`, the
static rules for those classes, come after every overlay so the inspected group wins.
Every function here is pure.

Colours come from :data:`viewer.core.optypes.STYLES` (copied into each node's ``data.color`` by
the view-model), so this module names no op type colour itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from viewer.core.graph import Graph
from viewer.core.groups import Group
from viewer.core.handlers import cell_width
from viewer.core.positions import group_picks

from .viewmodel import View, channels

HIGHLIGHT = "#f97316"  #: group members and the tensors they own
SELECTED = "#dc2626"  #: the inspected element
SEARCH_HIT = "#db2777"
PRUNED = "#7c3aed"  #: layers a preview shrinks
FADED = 0.22
FADE_SELECTOR = "node.op, node.collapsed, edge"  #: what a highlight dims

#: classes assets/depview.js (``highlight``) puts on elements for a group highlight
FADED_CLASS, MEMBER_CLASS, PATH_CLASS, TENSOR_CLASS, SELECTED_CLASS = \
    "dv-faded", "dv-member", "dv-path", "dv-tensor", "dv-selected"
EDGE_RUNS = 6  #: index runs an edge label spells out; the rest it counts ("… and 40 more")
TENSOR_LABEL = "hl"  #: edge data field holding a highlighted edge's index ranges
#: the label of a highlighted edge that carries positions the group's channels picked
POSITIONS_LABEL = "picked ids"
#: what the labels of a highlighted group's edges mean, for the inspector
EDGE_LABELS = ("Orange edges carry this group's channels: \"all 64\" means it owns all 64 "
               "of the tensor, \"[0–15] of 24\" the indices it owns of 24; after a preview, "
               "\"64 → 20\" is the tensor's width before → after the cut.")
#: added when the group crosses picked ids (a router's experts)
PICKED_LEGEND = (" \"picked ids\" edges carry the positions an op picked (the experts a "
                 "router's topk chose): position e is expert e wherever they are read, so "
                 "its channels go on there.")


def base_stylesheet() -> list[dict]:
    """The static stylesheet: nodes coloured by their op type, compound module boxes,
    edges labelled with shapes once zoomed in enough to read them."""
    return [
        {"selector": "node", "style": {
            "shape": "round-rectangle", "height": 38, "label": "data(label)",
            "text-wrap": "wrap", "text-valign": "center", "text-halign": "center",
            "font-size": 10, "font-family": "Inter, system-ui, sans-serif",
            "border-width": 1, "border-color": "#475569", "min-zoomed-font-size": 5}},
        {"selector": "node.op", "style": {
            "width": "data(w)", "background-color": "data(color)", "color": "data(fg)"}},
        {"selector": "node.module", "style": {
            "background-color": "#f8fafc", "background-opacity": 0.55, "color": "#334155",
            "border-color": "#94a3b8", "border-style": "dashed", "border-width": 1,
            "text-valign": "top", "text-halign": "center", "font-size": 11, "padding": "14px",
            "shape": "round-rectangle", "font-weight": "bold"}},
        {"selector": "node.collapsed", "style": {
            "background-color": "#e2e8f0", "background-opacity": 1, "color": "#0f172a",
            "border-style": "double", "border-width": 4, "border-color": "#475569",
            "text-valign": "center", "height": 56, "font-weight": "normal", "font-size": 10,
            "width": "data(w)"}},
        {"selector": "edge", "style": {
            "width": 1.4, "line-color": "#94a3b8", "target-arrow-color": "#94a3b8",
            "target-arrow-shape": "triangle", "arrow-scale": 0.8, "curve-style": "bezier",
            "label": "data(label)", "font-size": 8, "color": "#475569",
            "min-zoomed-font-size": 9, "text-rotation": "autorotate",
            "text-background-color": "#ffffff", "text-background-opacity": 0.95,
            "text-background-padding": "2px",
            # the highlight's label box, hidden here: a class that changes fewer properties
            # restyles faster (a residual stream lights ~270 edges)
            "text-border-width": 1, "text-border-color": "#fdba74", "text-border-opacity": 0}},
        {"selector": "node:selected", "style": {"border-width": 3, "border-color": SELECTED}},
    ]


def _ids(ids: Iterable[str]) -> str:
    return ", ".join(f"#{i}" for i in dict.fromkeys(ids))


def fade_others() -> list[dict]:
    """Dim every op node and edge (highlight rules that follow bring some back)."""
    return [{"selector": FADE_SELECTOR, "style": {"opacity": FADED}}]


def highlight_rules() -> list[dict]:
    """The static rules of the classes a group highlight toggles (see :func:`group_highlight`).
    The browser keeps them last in the stylesheet."""
    return [
        {"selector": f".{FADED_CLASS}", "style": {"opacity": FADED}},
        {"selector": f"node.{MEMBER_CLASS}", "style": {
            "opacity": 1, "border-width": 4, "border-color": HIGHLIGHT}},
        {"selector": f"node.{PATH_CLASS}", "style": {
            "opacity": 1, "border-width": 2, "border-style": "dashed",
            "border-color": HIGHLIGHT}},
        {"selector": f"edge.{TENSOR_CLASS}", "style": {
            "opacity": 1, "line-color": HIGHLIGHT, "target-arrow-color": HIGHLIGHT,
            "width": 3.5, "label": f"data({TENSOR_LABEL})", "font-size": 10,
            "min-zoomed-font-size": 6, "color": "#9a3412", "text-rotation": "none",
            "text-border-opacity": 1}},
        {"selector": f".{SELECTED_CLASS}", "style": {
            "opacity": 1, "border-width": 5, "border-color": SELECTED}},
    ]


def sorted_unique(pos: Iterable[int]) -> np.ndarray:
    """Positions as a sorted 1-D int64 array without repeats. An array that already is one
    (a member's positions usually are) is returned as it is, without a copy.

        >>> sorted_unique([5, 0, 5, 2])
        array([0, 2, 5])
    """
    p = np.asarray(pos if isinstance(pos, np.ndarray) else list(pos))
    p = p.astype(np.int64, copy=False)
    if p.ndim != 1:
        p = p.reshape(-1)
    # one comparison pass instead of a sort: a residual stream's group has hundreds of
    # members of thousands of positions each, all sorted already
    if len(p) > 1 and not (p[1:] > p[:-1]).all():
        p = np.unique(p)
    return p


def runs(pos: Iterable[int]) -> list[tuple[int, int]]:
    """Positions (any order, repeats allowed) -> their runs of consecutive positions as
    sorted half-open ``(start, stop)`` pairs.

        >>> runs([8, 0, 1, 2, 5, 7, 1])
        [(0, 3), (5, 6), (7, 9)]
    """
    p = sorted_unique(pos)
    if not len(p):
        return []
    last = np.flatnonzero(p[1:] != p[:-1] + 1)  # a run ends where the next one is no +1
    starts = p[np.concatenate(([0], last + 1))]
    stops = p[np.concatenate((last, [len(p) - 1]))] + 1
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def ranges(pos: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0–2, 5, 7–8"`` (any order, repeats allowed)."""
    return _spell(runs(pos))


def _spell(rs: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}" if b == a + 1 else f"{a}–{b - 1}" for a, b in rs)


def short_ranges(pos: Iterable[int], most: int = 12) -> str:
    """:func:`ranges` cut after ``most`` runs, the rest counted: a line a person reads, where
    ``ranges`` of 920 scattered units would be ~600 items.

        >>> short_ranges([0, 1, 2, 3, 7, 9, 10, 11, 12, 20, 30], most=3)
        '0–3, 7, 9–12, … and 2 more'
    """
    r = runs(pos)
    if len(r) <= most:
        return _spell(r)
    return f"{_spell(r[:most])}, … and {sum(b - a for a, b in r[most:])} more"


def no_highlight(selected: str | None = None) -> dict:
    """A highlight of no group: only ``selected`` (if any) is marked, nothing dimmed."""
    return {"selected": selected or None, "fade": None, "nodes": [], "path": [], "edges": []}


def group_highlight(view: View, graph: Graph, group: Group | None, selected: str | None,
                    removed: Iterable[int] = ()) -> dict:
    """Which elements draw ``group`` and the selected element: the members (class
    ``dv-member``), the ops its channels pass through without owning any weight (a ReLU, a
    pooling, an add: ``dv-path``, so the chain between members stays readable), the edges
    carrying its tensors (``dv-tensor``, labelled with the index ranges the group owns on
    each, which is how cuts through concats and splits show: ``all 16`` when it owns every
    index, ``[0–15] of 24`` when only some; with a preview, the width after it: ``16 → 8``,
    ``[0–15] of 24 → 22``; :data:`EDGE_LABELS` says so in the page), the
    selected element (``dv-selected``) and, with a group, everything else dimmed (the
    ``fade`` selector). ``removed`` units (from a preview) are named on the edges.

        >>> group_highlight(view, graph, group_of(graph, "stem"), "n1")
        {'selected': 'n1', 'fade': 'node.op, node.collapsed, edge', 'nodes': ['n1', 'n2'],
         'path': ['n3'], 'edges': [['e1', '[0–15] of 24'], ...]}
    """
    out = no_highlight(selected)
    if group is None:
        return out
    edges: dict[str, list[str]] = {}
    removed = np.asarray(sorted(removed), dtype=np.int64)
    for (nid, port, _dim), (pos, unit) in group.tensors.items():
        if not len(pos):
            continue
        width = _width(graph, nid, port, _dim)
        whole = not width or len(pos) >= width
        text = f"all {len(pos)}" if whole else f"[{short_ranges(pos, EDGE_RUNS)}] of {width}"
        if len(removed):  # the tensor's width after the preview's cut
            lost = len(pos[np.isin(unit, removed)])
            text = f"{len(pos)} → {len(pos) - lost}" if whole else \
                f"{text} → {width - lost}"
        for eid in view.tensor_edges.get((nid, port), ()):
            edges.setdefault(eid, []).append(text)
    ids = picked_ids(graph, group)
    for key in ids:  # no channels of the group, but what joins its picked dim to the readers
        for eid in view.tensor_edges.get(key, ()):
            edges.setdefault(eid, []).append(POSITIONS_LABEL)
    out["fade"] = FADE_SELECTOR
    out["nodes"] = list(dict.fromkeys(view.elements_of(m.node for m in group.members)))
    members = set(out["nodes"])
    carriers = view.elements_of([nid for (nid, _port, _dim), (pos, _) in group.tensors.items()
                                 if len(pos)] + [nid for nid, _ in ids])
    out["path"] = [e for e in dict.fromkeys(carriers) if e not in members]
    out["edges"] = [[eid, " | ".join(dict.fromkeys(texts))] for eid, texts in edges.items()]
    return out


def picked_ids(graph: Graph, group: Group) -> list[tuple[int, int]]:
    """The tensors carrying positions that ops of the group picked (a router's expert ids,
    from its ``topk`` to the ``histc`` that counts them): the group crosses them by value
    (see :mod:`viewer.core.positions`), so they are drawn with it."""
    out: list[tuple[int, int]] = []
    for _pick, carriers in group_picks(graph, group):
        out += [k for k in carriers if k not in out]
    return out


def _width(graph: Graph, nid: int, port: int, dim: int) -> int | None:
    shapes = graph.nodes[nid].out_shapes
    if port < len(shapes) and dim < len(shapes[port]):
        return int(shapes[port][dim])
    return None


def type_rules(op_type: str | None) -> list[dict]:
    """Highlight every node of one op type (a legend click)."""
    if not op_type:
        return []
    return fade_others() + [{"selector": f'node[op_type = "{op_type}"]', "style": {
        "opacity": 1, "border-width": 4, "border-color": "#0f172a"}}]


def search_rules(ids: Iterable[str]) -> list[dict]:
    """Mark search hits."""
    ids = list(ids)
    if not ids:
        return []
    return [{"selector": _ids(ids), "style": {
        "border-width": 5, "border-color": SEARCH_HIT, "border-style": "solid", "opacity": 1}}]


def preview_rules(view: View, graph: Graph, widths: dict[str, dict[str, int]],
                  params: dict[int, dict[int, tuple[int, int]]] | None = None) -> list[dict]:
    """Annotate each drawn layer a plan shrinks with its new width (``⇒ 3→8``), and each
    drawn bare parameter it cuts (``params``: :meth:`Pruner.param_widths`) with its width
    before → after along each cut dim (``⇒ 32→16``)."""
    rules = []
    for nid, dims in (params or {}).items():
        eid = view.rep.get(nid)
        cut = [f"{w}→{new}" for w, new in dims.values() if new != w]
        if eid is None or not cut or view.data[eid].get("kind") != "op":
            continue  # (inside a collapsed module: its box counts layers)
        rules.append({"selector": f"#{eid}", "style": {
            "label": view.data[eid]["label"] + "\n⇒ " + ", ".join(cut), "height": 50,
            "border-width": 3, "border-color": PRUNED}})
    # collapsed module -> [layers narrowed, their output channels before, after]
    boxes: dict[str, list[int]] = {}
    for n in graph.nodes:
        w = widths.get(n.module)
        if not w or not n.is_module:
            continue
        eid = view.rep.get(n.id)
        if eid is None:
            continue
        cin, cout = channels(n)
        new_in, new_out = w.get("in", cin), w.get("out", cout)
        if view.data[eid].get("kind") != "op":  # drawn inside a collapsed module
            box = boxes.setdefault(eid, [0, 0, 0])
            box[0] += (new_in, new_out) != (cin, cout) or "cell" in w
            box[1] += cout or 0
            box[2] += new_out or 0
            continue
        if (new_in, new_out) == (cin, cout) and "cell" not in w:
            continue
        label = view.data[eid]["label"] + f"\n⇒ {new_in}→{new_out}"
        if "cell" in w:  # an LSTM with proj_size: its hidden_size too
            label += f"\ncell {cell_width(n)}→{w['cell']}"
        rules.append({"selector": f"#{eid}", "style": {
            "label": label, "height": 50 + 12 * ("cell" in w), "border-width": 3,
            "border-color": PRUNED}})
    for eid, (k, before, after) in sorted(boxes.items()):
        if not k:
            continue
        # the box names how much of it shrinks (its layers are not drawn to carry a width)
        # (short: the box is as wide as its other lines) "⇒ 10 layers: 320→230": how many
        # layers it narrows, and the sum of their output widths before → after
        what = f"{k} layer{'s' if k > 1 else ''}"
        what += f": {before}→{after}" if after != before else " narrower"
        rules.append({"selector": f"#{eid}", "style": {
            "label": f"{view.data[eid]['label']}\n⇒ {what}", "border-color": PRUNED}})
    return rules


