"""The inspector: what a clicked node is, and the pruning group it belongs to.

Clicking an op shows its type, module class, parameters, shapes and wrapper metadata (a concat
as a segmented bar of its inputs' offset ranges, ...), and highlights the pruning group of its
output channels (or input channels, with the in/out toggle) on the graph: the members, and the
index ranges the group owns on every tensor it touches, which is how a cut through a concat or a
split shows. A group that cannot be pruned says why.
"""

from __future__ import annotations

import html as html_text
import math
import re
from dataclasses import dataclass, field

import numpy as np
from dash import ClientsideFunction, Input, Output, State, ctx, dcc, html, no_update

from viewer.core.errors import DepViewError
from viewer.core.graph import Graph, Node
from viewer.core.groups import Group, group_of, held_by_outputs, query_heads_per_unit
from viewer.core.handlers import INPUT_NAMES, OUTPUT_NAMES, cell_port
from viewer.core.meta import (
    WRITE,
    ConcatMeta,
    EinsumMeta,
    ElementwiseMeta,
    ExpandMeta,
    MatmulMeta,
    OpMeta,
    PadMeta,
    PermuteMeta,
    PixelShuffleMeta,
    ReduceMeta,
    ReshapeMeta,
    SetItemMeta,
    SliceMeta,
    SplitMeta,
    UnbindMeta,
    meta_to_dict,
)
from viewer.core.optypes import STYLES, OpType
from viewer.core.plan import IGNORE_SIDES
from viewer.core.prune import Pruner
from viewer.core.trace import output_nodes, output_path

from .. import ids, styles
from ..state import Session, SessionStore
from ..viewmodel import (
    View,
    container_of,
    module_path,
    node_params,
    selected_layer,
    shape_text,
    text_color,
)
from .common import error_message, error_text, fmt_count


@dataclass
class Inspection:
    """Everything the inspector callback writes."""

    details: list = field(default_factory=list)
    group_panel: list = field(default_factory=list)
    highlight: dict = field(default_factory=styles.no_highlight)
    selection: dict | None = None
    group_options: list[dict] = field(default_factory=list)
    group_value: int | None = None
    show_group: bool = False
    show_module_ignore: bool = False  #: a module holding channels: its ignore boxes
    show_free_output: bool = False  #: an output of a model with several: its "free" box


# --------------------------------------------------------------------------------------------
# Which groups a node's channels belong to.


def groups_at(pruner: Pruner, node: Node, side: str) -> list[Group]:
    """The model's groups holding ``node``'s output (``side="out"``) or input channels:
    groups it is a member of first; for ops that are no member (an add, a concat), the groups
    owning positions of its output / input tensors. Several groups can share a concat's
    output, one per input range."""
    want = ("out", "param") if side == "out" else ("in",)
    hits = [g for g in pruner.groups
            if any(m.node == node.id and m.side in want for m in g.members)]
    if hits:
        return hits
    if side == "out":
        keys = {(node.id, p) for p in range(len(node.out_shapes))}
    else:
        keys = {(e.source, e.source_port) for e in pruner.graph.in_edges.get(node.id, [])}
    return [g for g in pruner.groups if any((k[0], k[1]) in keys for k in g.tensors)]


def resolve_group(pruner: Pruner, node: Node, side: str,
                  pick: int | None) -> tuple[Group | None, list[Group], str]:
    """(shown group, all candidate groups, note): the one picked, else the one rooted at the
    node (a router's weight: its experts, not the stream its columns read), else the first.
    With no model group touching the node, a group is computed for it on the spot (it is
    then not one the plan can prune)."""
    cands = groups_at(pruner, node, side)
    if cands:
        chosen = next((g for g in cands if g.id == pick), None) or \
            next((g for g in cands if g.root == node.name), cands[0])
        return chosen, cands, ""
    try:
        g = group_of(pruner.graph, node.name, side)
    except DepViewError as exc:
        return None, [], str(exc)
    except Exception as exc:  # the core could not follow these channels: say so, keep serving
        return None, [], f"no group could be computed from here ({error_text(exc)})"
    return g, [], "no pruning group of the model holds these channels; computed from here"


# --------------------------------------------------------------------------------------------
# Small renderers.


def _kv(rows: list[tuple[str, object]], cls: str = "kv") -> html.Table:
    return html.Table([html.Tr([html.Th(k), html.Td(v)]) for k, v in rows], className=cls)


def _shapes(shapes) -> str:
    return ", ".join(f"[{shape_text(s)}]" for s in shapes) or "—"


def segment_bar(sizes: list[int], offsets: list[int], prefix: str,
                hit: np.ndarray | None = None, cut: np.ndarray | None = None) -> html.Div:
    """A bar split into segments proportional to ``sizes``, each labelled with its offset
    range. The highlighted group's positions (``hit``) are drawn as orange strips under the
    segments they fall in, and the positions a preview removes (``cut``) as red strips."""
    total = sum(sizes) or 1
    hit = np.asarray(hit if hit is not None else [], dtype=np.int64)
    cut = np.asarray(cut if cut is not None else [], dtype=np.int64)
    segs = []
    for k, (size, off) in enumerate(zip(sizes, offsets, strict=True)):
        if not size:  # an empty input (a cache that starts empty): no range to show
            segs.append(html.Div(
                [html.Span(f"{prefix}{k}", className="seg-name"),
                 html.Span("(empty)", className="seg-range")],
                className="seg seg-empty", title=f"{prefix}{k}: empty — 0 channels",
                style={"flexGrow": 0, "flexBasis": 0, "minWidth": "12%"}))
            continue
        mine = hit[(hit >= off) & (hit < off + size)]
        gone = cut[(cut >= off) & (cut < off + size)]
        title = f"{prefix}{k}: [{off}, {off + size}) — {size} channels"
        if len(mine):
            title += f"; group owns {styles.short_ranges(mine)}"
        if len(gone):
            title += f"; preview removes {len(gone)}"
        marks = [html.Div(className=cls, style={"left": f"{100 * (a - off) / size:.2f}%",
                                                "width": f"{100 * (b - a) / size:.2f}%"})
                 for cls, arr in (("seg-own", mine), ("seg-cut", gone))
                 for a, b in styles.runs(arr)]
        segs.append(html.Div(
            [html.Span(f"{prefix}{k}", className="seg-name"),
             html.Span(f"{off}–{off + size - 1}", className="seg-range"), *marks],
            className="seg" + (" seg-hit" if len(mine) else ""), title=title,
            style={"flexGrow": size, "flexBasis": 0,
                   "minWidth": f"{max(2, 100 * size / total):.0f}%"
                   if size / total < 0.06 else 0}))
    return html.Div(segs, className="segbar")


def offsets_text(sizes, offsets, prefix: str) -> str:
    """Where each part starts; an empty part (size 0) starts nowhere and says so.

    >>> offsets_text([0, 16], [0, 0], "in")
    'in0 empty, 0'
    """
    return ", ".join(f"{prefix}{k} empty" if not size else str(off)
                     for k, (size, off) in enumerate(zip(sizes, offsets, strict=True)))


def meta_view(node: Node, hit: np.ndarray | None = None,
              cut: np.ndarray | None = None) -> list:
    """The wrapper metadata of a virtual node, drawn for humans."""
    m = node.meta
    if m is None:
        return []
    out: list = []
    if isinstance(m, ConcatMeta):
        out += [_kv([("concat dim", m.dim), ("sizes", ", ".join(map(str, m.sizes))),
                     ("offsets", offsets_text(m.sizes, m.offsets, "in")),
                     ("stacked", "yes" if m.stacked else "no")]),
                segment_bar(list(m.sizes), list(m.offsets), "in", hit, cut)]
    elif isinstance(m, SplitMeta):
        out += [_kv([("split dim", m.dim), ("sizes", ", ".join(map(str, m.sizes))),
                     ("offsets", offsets_text(m.sizes, m.offsets, "out")),
                     ("sizes computed by torch", "yes" if m.computed else "no")]),
                segment_bar(list(m.sizes), list(m.offsets), "out", hit, cut)]
    elif isinstance(m, SliceMeta):
        rows = [("index", m.index_text())]
        rows += [(f"dim {s.dim}", f"{s.start}:{s.stop}:{s.step}") for s in m.slices]
        rows += [(f"dim {d}", f"index {i} (dim removed)") for d, i in m.selects]
        rows += [("in → out", f"[{shape_text(m.in_shape)}] → [{shape_text(m.out_shape)}]")]
        if m.advanced:
            rows.append(("advanced index", "yes (data-dependent positions)"))
        out.append(_kv(rows))
    elif isinstance(m, ReshapeMeta):
        rows = [("op", m.op), ("in → out", f"[{shape_text(m.in_shape)}] → "
                                           f"[{shape_text(m.out_shape)}]")]
        if m.inferred is not None:
            rows.append(("inferred (-1) dim", m.inferred))
        out.append(_kv(rows))
    elif isinstance(m, PermuteMeta):
        out.append(_kv([("op", m.op), ("perm", str(tuple(m.perm))),
                        ("in → out", f"[{shape_text(m.in_shape)}] → "
                                     f"[{shape_text(m.out_shape)}]")]))
    elif isinstance(m, ExpandMeta):
        out.append(_kv([("op", m.op), ("in → out", f"[{shape_text(m.in_shape)}] → "
                                                   f"[{shape_text(m.out_shape)}]")]
                       + ([("copies", "whole dim repeated" if m.copies == "tile" else
                            "each position repeated in place")] if m.copies else [])))
    elif isinstance(m, UnbindMeta):
        out.append(_kv([("unbind dim", m.dim), ("outputs", m.n)]))
    elif isinstance(m, PixelShuffleMeta):
        out.append(_kv([("factor", m.factor), ("direction",
                                               "unshuffle" if m.unshuffle else "shuffle")]))
    elif isinstance(m, MatmulMeta):
        out.append(_kv([("op", m.op), ("a @ b", f"[{shape_text(m.a_shape)}] @ "
                                               f"[{shape_text(m.b_shape)}]"),
                        ("out", f"[{shape_text(m.out_shape)}]")]))
    elif isinstance(m, EinsumMeta):
        spelled = f"{','.join(m.terms)}->{m.out}"
        out.append(_kv([("equation", m.equation)] + (
            [("spelled out", spelled)] if spelled != m.equation.replace(" ", "") else [])))
    elif isinstance(m, PadMeta):
        nd = len(node.in_shapes[0]) if node.in_shapes else len(m.pads) // 2
        out.append(_kv([("op", m.op), ("mode", m.mode)] + [
            (f"dim {nd - 1 - i}", f"+{m.pads[2 * i]} before, +{m.pads[2 * i + 1]} after")
            for i in range(len(m.pads) // 2)]))
    elif isinstance(m, ReduceMeta):
        out.append(_kv([("op", m.op), ("dims", str(tuple(m.dims))),
                        ("keepdim", "yes" if m.keepdim else "no")]))
    elif isinstance(m, ElementwiseMeta):
        rows = [("op", m.op)]
        if m.mixes:
            rows.append(("mixes positions along", ", ".join(f"dim {d}" for d in m.mixes)))
        if m.moves:
            rows.append(("moves positions along", ", ".join(f"dim {d}" for d in m.moves)))
        out.append(_kv(rows))
    elif isinstance(m, SetItemMeta):
        what = ("a write through a view, by the op on input 1" if node.target == WRITE
                else "an index set")
        index = "x[mask]" if m.mask else m.region.index_text() if m.region else \
            "an index DepView does not model"
        rows = [("writes", index), ("kind", what),
                ("value", f"input {m.value}" if m.value is not None else "a number")]
        if m.mask:
            rows.append(("mask", f"a bool tensor over the first {m.mask} dims"))
        out.append(_kv(rows))
    elif isinstance(m, OpMeta):
        out.append(_kv([("op", m.op)]))
    else:  # a metadata class this panel does not know yet: show its fields
        d = meta_to_dict(m) or {}
        out.append(_kv([(k, str(v)) for k, v in d.items()]))
    return [html.H4("Metadata")] + out


def module_class(node: Node) -> str:
    """``"module:torch.nn.modules.conv.Conv2d"`` -> ``"Conv2d"`` (functional ops: the call)."""
    if node.is_module:
        return node.target.removeprefix("module:").rsplit(".", 1)[-1]
    return ""


def node_details(node: Node, stage_classes: dict[str, str], hit: np.ndarray | None = None,
                 cut: np.ndarray | None = None) -> list:
    """Name, type, class, parameters, shapes, attributes and metadata of one op."""
    st = STYLES[node.op_type]
    where = container_of(node)
    head = [
        html.H3(node.name, className="insp-name"),
        html.Div([html.Span(st.label, className="badge",
                            style={"background": st.color, "color": text_color(st.color)}),
                  html.Span(f"OpType.{node.op_type.name}", className="optype")],
                 className="insp-type"),
    ]
    rows: list[tuple[str, object]] = []
    if node.is_module:
        rows.append(("module class", node.target.removeprefix("module:")))
    else:
        rows.append(("call", node.target))
    if where:
        rows.append(("inside", f"{where} ({stage_classes.get(where, '?')})"))
    if node.call:
        rows.append(("call #", f"{node.call} (module reused: parameters shared)"))
    rows += [("inputs", _shapes(node.in_shapes)), ("outputs", _shapes(node.out_shapes))]
    if node.grad_fn:
        rows.append(("autograd node", node.grad_fn))
    out = head + [_kv(rows)]
    buffer = node.op_type is OpType.BUFFER
    # a non-persistent buffer (a table its module makes at init) is named in buffers
    made_at_init = buffer and not node.params and bool(node.buffers)
    if node.params or made_at_init:
        # (a persistent buffer used directly, a frozen norm's statistics, is no parameter)
        prow = [html.Tr([html.Th("buffer" if buffer else "param"), html.Th("shape"),
                         html.Th("count")])]
        shapes = {"": node.out_shapes[0]} if made_at_init else node.param_shapes
        for local, key in (node.buffers if made_at_init else node.params).items():
            shape = shapes.get(local, ())
            # a module's own parameters by their local name (the module is named above); a
            # parameter it shares from elsewhere (tied weights) by its full key
            own = bool(local) and key == f"{node.module}.{local}"
            prow.append(html.Tr([html.Td(local if own else key, className="name",
                                         title=f"{key} (local name: {local or '(self)'})"),
                                 html.Td(f"[{shape_text(shape)}]", className="n"),
                                 html.Td(fmt_count(math.prod(shape)), className="n")]))
        total = sum(math.prod(s) for s in shapes.values()) if buffer else node_params(node)
        prow.append(html.Tr([html.Th("total"), html.Td(""),
                             html.Th(fmt_count(total), className="n")]))
        title = ("Buffer (made at init, not in the state_dict)" if made_at_init else
                 "Buffer (in the state_dict)" if buffer else "Parameters")
        out += [html.H4(title), html.Table(prow, className="params")]
        if node.weight_norm:
            g, v = node.weight_norm
            out.append(html.P(f"weight = g · v / ‖v‖ (weight_norm): g is {g}, v is {v}. "
                              "Where pruning cuts v along a dim its norm is taken over, g "
                              "is rescaled, so the kept weights keep their values.",
                              className="hint"))
        if node.spectral_norm:
            out.append(html.P("weight = W / σ (spectral_norm), σ = u · (W v) with the "
                              "stored singular vectors u, v (re-estimated at each training "
                              "forward). Pruning cuts W and u or v, and rescales u so that σ "
                              "and the kept weights keep their values.", className="hint"))
        for name in node.prune_masked:
            out.append(html.P(f"{name} = {name}_orig · {name}_mask (torch.nn.utils.prune): "
                              "pruning cuts both alike, and importance reads the masked "
                              f"{name}.", className="hint"))
    if node.attrs:
        out += [html.Details([html.Summary(f"Attributes ({len(node.attrs)})"),
                              _kv([(k, str(v)) for k, v in node.attrs.items()])])]
    out += meta_view(node, hit, cut)
    return out


def module_details(session: Session, view: View, path: str) -> list:
    """Summary of a module (compound box or collapsed node)."""
    graph = session.stage.graph
    inside = [n for n in graph.nodes if view.boxes[n.id] == path
              or view.boxes[n.id].startswith(path + ".")]
    cls = session.stage.module_classes.get(module_path(path), "")
    kinds: dict[str, int] = {}
    for n in inside:
        kinds[STYLES[n.op_type].label] = kinds.get(STYLES[n.op_type].label, 0) + 1
    collapsed = path in view.collapsed
    return [
        html.H3(path, className="insp-name"),
        html.Div([html.Span("module", className="badge badge-module"),
                  html.Span(cls, className="optype")], className="insp-type"),
        _kv([("ops inside", len(inside)),
             ("parameters", fmt_count(sum(node_params(n) for n in inside))),
             ("state", "collapsed" if collapsed else "expanded"),
             ("types", ", ".join(f"{k} ×{v}" for k, v in sorted(kinds.items(),
                                                               key=lambda kv: -kv[1])))]),
        html.P("Double-click the module (or use ⊞/⊟ above the graph) to "
               f"{'expand' if collapsed else 'collapse'} it.", className="hint"),
    ]


def unit_spans(group: Group, most: int = 3) -> str:
    """What a unit is when some member owns several indices per unit (a flatten after a
    conv, heads, an interleaved layout), in words; "" when every member owns one per unit."""
    n = max(group.n_units, 1)
    wide = [(m, len(styles.sorted_unique(m.pos))) for m in group.members]
    wide = [(m, w) for m, w in wide if w > n]
    if not wide:
        return ""

    def per_unit(m) -> str:
        """Indices each unit owns there: one count, or the fewest-most when units differ (a
        UNet stem's two units: 4 and 12 channels, where its norm groups straddle)."""
        counts = np.bincount(m.unit)
        counts = counts[counts > 0]
        lo, hi = int(counts.min()), int(counts.max())
        return str(lo) if lo == hi else f"{lo}–{hi}"

    shown = ", ".join(f"{per_unit(m)} of {m.node_name} ({m.side})" for m, _ in wide[:most])
    k = len(wide) - most
    more = f" and more in {k} other member{'s' if k > 1 else ''}" if k > 0 else ""
    return (f"A unit is what a plan removes at once; each of these {n} spans several indices "
            f"in some members: {shown}{more}.")


def group_panel(pruner: Pruner, group: Group, model_group: bool, note: str,
                session: Session, removed: list[int] | None) -> list:
    """The group's status, reason and members with the index ranges each owns."""
    ignore = session.ignored()
    reason = pruner.reason(group, ignore) if model_group else group.reason
    head = f"Group #{group.id}" if model_group else "Ad-hoc group"
    status = html.Div(
        [html.Span("prunable" if not reason else "not prunable",
                   className="ok" if not reason else "bad"),
         html.Span(f" — {reason}" if reason else "")], className="group-status")
    units = group.n_units
    per = query_heads_per_unit(pruner.graph, group)  # what round_to counts here
    if per > 1:  # grouped-query attention: a unit is a kv head with its query heads
        units = f"{units} (key/value heads, each with its {per} query heads: round to " \
                "counts them)"
    elif per:
        units = f"{units} (attention heads: round to counts heads)"
    rows = [("root", f"{group.root} ({group.root_side})"), ("units", units)]
    if group.multiple_of > 1:
        rows.append(("removed in steps of", f"{group.multiple_of} units "
                                            f"({'; '.join(group.multiple_why)})"))
    if group.min_kept > 1:
        rows.append(("keeps at least", f"{group.min_kept} units ({group.min_kept_why})"))
    if model_group and group.id in session.overrides:
        rows.append(("override ratio", session.overrides[group.id]))
    if removed:
        which = "unit" if len(removed) == 1 else "units"
        # ~920 scattered units of a residual stream: a short form here, every index on hover
        # (and in plan.json of the checkpoint once applied)
        rows.append(("preview removes", html.Span(
            f"{len(removed)} of {group.n_units} {'unit' if group.n_units == 1 else 'units'} "
            f"({which} {unbroken(styles.short_ranges(removed, REMOVED_RUNS))})",
            title=f"{which} removed: {styles.ranges(removed)}")))
    plan = session.preview_plan
    left = plan.skipped.get(group.id) if model_group and plan is not None and not reason else None
    if left:  # prunable, but not at the width the preview's ratio gives it
        rows.append(("preview leaves it", left))
    out = [html.H4(head), status, _kv(rows)]
    held = held_by_outputs(pruner.graph, [group]) if model_group and reason else {}
    if held:  # only outputs after the first hold it: one click lets each change width
        out.append(html.Div([html.Button(f"Let '{path or 'output'}' change width",
                                         id={"type": ids.FREE_HELD, "output": path},
                                         className="btn small")
                             for path in held] +
                            [html.Span(" the groups are found again", className="hint")],
                            className="free-held"))
    spans = unit_spans(group)
    if spans:
        out.append(html.P(spans, className="hint"))
    if note:
        out.append(html.P(note, className="hint"))
    if model_group and pruner.sets(group):
        out.append(html.P("Pruning also sets " + ", ".join(pruner.sets(group)) + " (a size "
                          "its forward reads: a split, a view, a slice's bounds, a norm's "
                          "shape, a tensor it makes, a width its code checks) to the new "
                          "size.", className="hint"))
    if not group.exact:
        # (a layer's own forward only: verification's masked equivalence settles it)
        out.append(html.P(("Maybe inexact: " if group.opaque_only else "Inexact: ")
                          + "; ".join(collapse_notes(group.stats_notes, pruner.graph))
                          + (". Masked equivalence checks it when you apply."
                             if group.opaque_only else ""),
                          className="hint warn", title="\n".join(group.stats_notes)))
    out += [html.H4(f"Members ({len(group.members)})"), members_table(group),
            html.P(styles.EDGE_LABELS + (styles.PICKED_LEGEND if styles.picked_ids(
                pruner.graph, group) else ""), className="hint edge-legend")]
    return out


#: how many index runs the "preview removes" line spells out before it counts the rest
REMOVED_RUNS = 12
#: how many names a collapsed note gives as examples
NOTE_EXAMPLES = 3
#: a note's verb as its plural subject needs it ("25 LayerNorms normalise ...")
_PLURAL_VERBS = {"normalises": "normalise", "reduces": "reduce", "mixes": "mix",
                 "slides": "slide", "replaces": "replace",
                 "computes": "compute"}
_NOTE = re.compile(r"'(?P<name>[^']+)' (?:\((?P<tag>[^()]*)\) )?(?P<rest>.+)", re.S)


def _kind(node: Node | None) -> str:
    """What a note's subject is, to count it: a module's class, or the function it calls."""
    if node is None:
        return "op"
    return module_class(node) or f"{node.target.rsplit('.', 1)[-1]} call"


def collapse_notes(notes: list[str], graph: Graph, most: int = NOTE_EXAMPLES) -> list[str]:
    """The core's notes (``"'h.0.ln_1' normalises over pruned channels"``, one per layer),
    with repeats of one kind collapsed into one line that counts them and names the first few
    in graph order. A note said once stays as it is.

        >>> collapse_notes(["'h.0.ln_1' normalises over pruned channels",
        ...                 "'h.0.ln_2' normalises over pruned channels"], graph, most=1)
        ['2 LayerNorms normalise over pruned channels: h.0.ln_1, … (+1)']
    """
    kinds: dict[tuple, list[str]] = {}  # (tag, rest) -> names, in order of first note
    plain: dict[tuple, str] = {}
    for note in notes:
        m = _NOTE.fullmatch(note)
        key = (m["tag"], m["rest"]) if m else (None, note)
        kinds.setdefault(key, []).append(m["name"] if m else "")
        plain.setdefault(key, note)
    out = []
    for (tag, rest), names in kinds.items():
        if len(names) == 1 or not all(names):
            out.append(plain[(tag, rest)])
            continue
        # in graph order (the core notes the last norm of a residual stream second)
        names = sorted(names, key=lambda n: graph.by_name[n].id if n in graph.by_name else 0)
        found = {_kind(graph.by_name.get(n)) for n in names}
        kind = found.pop() if len(found) == 1 else "layer"
        many = f"{len(names)} {kind}s"
        shown = ", ".join(names[:most]) + (f", … (+{len(names) - most})"
                                           if len(names) > most else "")
        verb, _, tail = rest.partition(" ")
        if verb in _PLURAL_VERBS:
            out.append(f"{many} {_PLURAL_VERBS[verb]} {tail}: {shown}")
        else:  # no verb to agree with: say where it happens
            out.append(f"{rest} in {many}: {shown}")
    return out


def unbroken(ranges: str) -> str:
    """Index ranges for the page: a line may break after a comma, never inside "12–13"
    (word joiners around the dash; browsers break after an en dash otherwise)."""
    return ranges.replace("–", "\u2060–\u2060")


def breakable(name: str) -> str:
    """A dotted name as escaped HTML that may wrap after its dots, so a long Hugging Face name
    takes two lines instead of pushing the numbers out of the table. Spelled ``<wbr/>``: the
    markdown component silently drops a whole table holding a bare ``<wbr>``."""
    return ".<wbr/>".join(html_text.escape(part) for part in name.split("."))


def _side_text(m) -> str:
    """A member's side, and which input for one of several read by weights of their own
    (``nn.MultiheadAttention``'s key and value with ``kdim``/``vdim``), or which output for
    units of another kind (an LSTM's cell state with ``proj_size``)."""
    if not m.port:
        return m.side
    names = (OUTPUT_NAMES if m.side == "out" else INPUT_NAMES).get(m.op_type, ())
    return f"{m.side} ({names[m.port] if m.port < len(names) else m.port})"


def members_table(group: Group) -> dcc.Markdown:
    """The group's members and the index ranges each owns, as one HTML table in **one**
    component. A residual stream has hundreds of members, and every Dash component on the page
    costs the renderer time on every later callback (each row as html.Tr/Td components made
    each click on a 32-layer decoder about a second slower). Every value is HTML-escaped."""
    esc = html_text.escape
    rows = ["<tr><th>member</th><th>side</th><th>dim</th><th>width</th><th>positions</th></tr>"]
    for m in group.members:
        pos = styles.sorted_unique(m.pos)
        title = f"{m.node_name}: {STYLES[m.op_type].label}, module {m.module or '(root)'}"
        rows.append(f'<tr><td title="{esc(title)}">{breakable(m.node_name)}</td>'
                    f'<td>{esc(_side_text(m))}</td><td>{int(m.dim)}</td><td>{len(pos)}</td>'
                    f'<td class="ranges">{esc(unbroken(styles.ranges(pos)))}</td></tr>')
    # one line: a blank line would end the HTML block the markdown parser passes through raw
    return dcc.Markdown(f'<table class="members">{"".join(rows)}</table>',
                        dangerously_allow_html=True, className="members-wrap")


# --------------------------------------------------------------------------------------------
# The callback's logic.


def selection_from_tap(data: dict | None) -> dict | None:
    """A Cytoscape ``tapNodeData`` dict -> the selection stored in the page."""
    if not data:
        return None
    if data.get("kind") == "module":
        return {"kind": "module", "name": data.get("path")}
    return {"kind": "op", "name": data.get("name")}


def inspect(store: SessionStore, sid: str, selection: dict | None, side: str = "out",
            pick: int | None = None, details: bool = True) -> Inspection:
    """Inspector contents, group highlight and control values for a selection. With
    ``details=False`` the panels (``details``, ``group_panel``) are left empty: the click's
    first callback only needs the highlight, and the browser draws it sooner without them."""
    session = store.session(sid)
    res = Inspection()
    with session.lock:
        view = session.view
        if view is None or not selection:
            return res
        stage = session.stage
        graph: Graph = stage.graph
        if selection.get("kind") == "module":
            path = selection.get("name", "")
            if path not in view.module_ids:
                return res
            eid = view.module_ids[path]
            if details:
                res.details = module_details(session, view, path)
            res.highlight = styles.group_highlight(view, graph, None,
                                                   eid if eid in view.data else None)
            res.selection = {"kind": "module", "name": path}
            res.show_module_ignore = bool(path) and \
                stage.pruner.holds_channels(module_path(path))
            return res
        node = graph.by_name.get(selection.get("name", ""))
        if node is None:  # gone after a pruning round or another model
            return res
        side = side if side in ("in", "out") else "out"
        group, cands, note = resolve_group(stage.pruner, node, side, pick)
        model_group = bool(cands)
        removed = None
        if group is not None and model_group and session.preview_plan is not None:
            removed = session.preview_plan.removed.get(group.id)
        if details:
            hit, cut = _bar_marks(graph, node, group, removed)
            res.details = node_details(node, stage.module_classes, hit, cut)
        res.selection = {"kind": "op", "name": node.name, "side": side,
                         "gid": group.id if (group is not None and model_group) else None}
        res.show_free_output = node.op_type is OpType.OUTPUT and \
            len(output_nodes(graph)) > 1
        res.highlight = styles.group_highlight(view, graph, group, view.rep.get(node.id),
                                               removed or ())
        res.show_group = True
        if group is None:
            if details:
                res.group_panel = [html.P(note or "no channels to group here",
                                          className="hint")]
            return res
        if details:
            res.group_panel = group_panel(stage.pruner, group, model_group, note, session,
                                          removed)
        # validation ran when the stage was made: a reason is a lookup here
        ignore = session.ignored()
        res.group_options = [{"label": f"#{g.id} · {g.root}"
                              + (f" ({g.root_side})" if g.root_side == "cell" else "")
                              + f" · {g.n_units} units"
                              + (" · not prunable" if stage.pruner.reason(g, ignore) else ""),
                              "value": g.id} for g in cands]
        res.group_value = group.id if model_group else None
        return res


def _bar_marks(graph: Graph, node: Node, group: Group | None,
               removed: list[int] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The group's positions on the tensor a segment bar draws — a concat's output, a split's
    input — and those of them a preview removes (``removed`` units)."""
    if group is None or not isinstance(node.meta, (ConcatMeta, SplitMeta)):
        return None, None
    if isinstance(node.meta, ConcatMeta):
        key = (node.id, 0, node.meta.dim)
    else:
        edges = graph.in_edges.get(node.id)
        if not edges:
            return None, None
        key = (edges[0].source, edges[0].source_port, node.meta.dim)
    found = group.tensors.get(key)
    if found is None:
        return None, None
    pos, unit = np.asarray(found[0]), np.asarray(found[1])
    cut = pos[np.isin(unit, np.asarray(removed or [], dtype=np.int64))]
    return pos, cut


def control_values(store: SessionStore, sid: str,
                   selection: dict | None) -> tuple[list[str], float | None]:
    """The ignore checkboxes and override ratio to show for a selection: a layer's group's,
    or the ratio every group rooted in a module has (None if they differ or have none)."""
    sel = selection or {}
    if sel.get("kind") not in ("op", "module"):
        return [], None
    session = store.session(sid)
    with session.lock:
        name = selected_layer(sel)
        ignore = [s for s in IGNORE_SIDES if f"{name}:{s}" in session.ignore]
        if sel.get("kind") == "op":
            return ignore, session.overrides.get(sel.get("gid"))
        try:
            gids = session.stage.pruner.groups_named(name, session.ignored())
        except DepViewError:  # no pruned group starts in it
            return ignore, None
        ratios = {session.overrides.get(g) for g in gids}
        return ignore, ratios.pop() if len(ratios) == 1 else None


def is_free_output(store: SessionStore, sid: str, selection: dict | None) -> bool:
    """Is the selection a model output the current stage lets change width?"""
    sel = selection or {}
    if sel.get("kind") != "op":
        return False
    session = store.session(sid)
    with session.lock:
        stage = session.stage
        node = stage.graph.by_name.get(sel.get("name", ""))
        return node is not None and node.op_type is OpType.OUTPUT and \
            output_path(node) in stage.pruner.free_outputs


def ignore_options(store: SessionStore, sid: str, selection: dict | None) -> list[dict]:
    """The ignore checkboxes for a selection (a layer, or a module: every layer inside):
    outputs and inputs, and the cell units of an LSTM with ``proj_size`` (a group of their
    own). None for a model input or output: it holds no channels of its own (an output has
    its "free" box instead)."""
    options = [{"label": "ignore outputs", "value": "out"},
               {"label": "ignore inputs", "value": "in"}]
    sel = selection or {}
    if sel.get("kind") in ("op", "module"):
        session = store.session(sid)
        with session.lock:
            stage, name = session.stage, selected_layer(sel)
            if sel["kind"] == "op":
                node = stage.graph.by_name.get(name)
                if node is not None and node.op_type in (OpType.INPUT, OpType.OUTPUT):
                    return []
                cells = node is not None and cell_port(node) is not None
            else:  # (a module: any LSTM with proj_size inside)
                cells = bool(name) and stage.pruner.holds_channels(name, ["cell"])
        if cells:
            options.append({"label": "ignore cell units", "value": "cell"})
    return options


def register(app, store: SessionStore) -> None:
    # A click is answered in two steps so the graph shows the group before the browser spends
    # its time rendering the panels: first the selection and its highlight (a small answer
    # the browser draws by toggling classes, not by a stylesheet swap, which would restyle and
    # redraw every element); once that frame is drawn, the browser sets SHOWN, and the panels
    # (inspector, group controls, score chart) follow from it.
    @app.callback(
        Output(ids.STYLE_GROUP, "data"),
        Output(ids.SELECTION, "data"),
        Output(ids.GROUP_PICK, "options"),
        Output(ids.GROUP_PICK, "value"),
        Output(ids.GROUP_PICK, "style"),
        Output(ids.GROUP_CONTROLS, "style"),
        Output(ids.GROUP_EDIT, "style"),
        Output(ids.MODULE_CONTROLS, "style"),
        Output(ids.OUTPUT_CONTROLS, "style"),
        Output(ids.MESSAGE, "children", allow_duplicate=True),
        Input(ids.GRAPH, "tapNodeData"),
        Input(ids.GROUP_SIDE, "value"),
        Input(ids.GROUP_PICK, "value"),
        Input(ids.VIEW_REV, "data"),
        Input(ids.PREVIEW_REV, "data"),
        Input(ids.DESELECT, "data"),
        State(ids.SELECTION, "data"),
        State(ids.GRAPH_REV, "data"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_select(tap, side, pick, _view_rev, _prev_rev, _deselect, selection, rev, sid):
        trig = ctx.triggered_id
        if trig == ids.GRAPH:
            selection = selection_from_tap(tap)
            pick = None
        elif trig == ids.DESELECT:  # the background clicked, or Escape: nothing inspected
            selection = None
        elif trig == ids.GROUP_SIDE:
            pick = None
        try:
            if trig in (ids.GRAPH, ids.GROUP_SIDE, ids.GROUP_PICK):  # (the user's, not a redraw)
                store.session(sid).shown(rev, "the selection")
            r = inspect(store, sid, selection, side or "out", pick, details=False)
        except Exception as exc:
            return (no_update,) * 9 + (error_message(exc),)
        # several groups share this tensor (a concat's output): offer the choice
        pick_style = {"display": "block" if len(r.group_options) > 1 else "none"}
        # (an override or an ignore needs a group: an output, a layer's side without one)
        has_group = bool(r.selection and r.selection.get("gid") is not None)
        return (r.highlight, r.selection, r.group_options, r.group_value, pick_style,
                {"display": "block" if r.show_group else "none"},
                {"display": "block" if has_group else "none"},
                {"display": "block" if r.show_module_ignore else "none"},
                {"display": "block" if r.show_free_output else "none"}, no_update)

    app.clientside_callback(
        ClientsideFunction("depview", "highlight"),
        Output(ids.FIT_DONE, "data", allow_duplicate=True),
        Input(ids.STYLE_GROUP, "data"),
        State(ids.SELECTION, "data"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output(ids.INSPECTOR, "children"),
        Output(ids.GROUP_PANEL, "children"),
        Output(ids.MESSAGE, "children", allow_duplicate=True),
        Input(ids.SHOWN, "data"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_inspect(selection, sid):
        sel = selection or {}
        try:  # the selection names the side and group on_select resolved
            r = inspect(store, sid, selection, sel.get("side") or "out", sel.get("gid"))
        except Exception as exc:
            return no_update, no_update, error_message(exc)
        details = r.details or [html.P("Click a node to inspect it.", className="hint")]
        return details, r.group_panel, no_update

    @app.callback(
        Output(ids.IGNORE_TOGGLE, "options"),
        Output(ids.IGNORE_TOGGLE, "value"),
        Output(ids.OVERRIDE_RATIO, "value"),
        Output(ids.MODULE_IGNORE, "options"),
        Output(ids.MODULE_IGNORE, "value"),
        Output(ids.MODULE_RATIO, "value"),
        Output(ids.FREE_OUTPUT, "value"),
        Input(ids.SHOWN, "data"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_selection(selection, sid):
        try:
            options = ignore_options(store, sid, selection)
            ignore, ratio = control_values(store, sid, selection)
            free = ["free"] if is_free_output(store, sid, selection) else []
        except Exception:
            return no_update, [], None, no_update, [], None, []
        if (selection or {}).get("kind") == "module":  # (the layer boxes are hidden)
            return no_update, [], None, options, ignore, ratio, free
        return options, ignore, ratio, no_update, [], None, free
