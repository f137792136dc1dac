"""Tensors whose values are positions along a dim of another tensor, and where they are read.

A mixture-of-experts router picks experts with ``topk`` over its logits: the indices it
returns are positions along the logits' expert dim. The experts layer reads them as positions
along its weights' expert dim: ``histc`` counts the tokens each expert got, and those counts'
offsets split ``grouped_mm``'s rows among the stacked expert weights; ``bias[ids]`` takes each
token's expert bias. Removing expert ``e`` from the router's logits must remove it from
those weights too, though no tensor of the graph joins the two dims: they are coupled through
values. :func:`position_reads` follows the positions an op picks to the dims that read them (a
*reader*: position ``v`` of its dim stands for value ``v``), and :func:`picks_at` goes back
from such a reader to the op that picked them. The rules (:mod:`viewer.core.rules`) use both
to carry a group from the picked dim to its readers and back.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .graph import Graph, Node
from .meta import ConcatMeta, CountsMeta, ElementwiseMeta, ReduceMeta, SliceMeta
from .optypes import (
    CLAMPS,
    GATHERS,
    KEEPS_VALUES,
    LIKE_FILLS,
    ORDERS,
    PICKS,
    PICKS_SMALLEST,
    SCATTERS,
    OpGroup,
    OpType,
)

TensorKey = tuple[int, int, int]  # (node id, output port, dim)


class Reads(NamedTuple):
    """Where the positions an op picked are read: ``readers``, tensor dims whose position
    ``v`` stands for value ``v``, and ``other``, ops that read them some other way (a
    comparison with a number, arithmetic), which DepView cannot renumber."""

    readers: list[TensorKey]
    other: list[Node]


def _keeps(node: Node, port: int) -> bool:
    """Does ``node`` hand on the values of its input ``port`` at output 0, as they are
    (reshaped, retyped, reordered, some of them)?"""
    if port != 0:
        return False
    if node.op_type in (OpType.RESHAPE, OpType.PERMUTE, OpType.SLICE):
        return True
    return node.op_type is OpType.ELEMENTWISE and node.target in KEEPS_VALUES


def _clamp_keeps(g: Graph, node: Node, port: int, width: int) -> bool:
    """Is ``node`` a clamp of positions that cuts none of the ``width`` valid ones (Ergo's
    ``ids.clamp_max(self.num_experts - 1)``, a guard)? Then it keeps them: the pruned ids
    are fewer, and the bound, followed or not, still cuts none."""
    if port != 0 or node.target not in CLAMPS or len(g.in_edges.get(node.id, ())) != 1:
        return False
    sc = tuple(node.attrs.get("scalars") or ())
    if not all(isinstance(v, (int, float)) for v in sc):
        return False
    lo, hi = (None, sc[0]) if node.target == "clamp_max" and len(sc) == 1 else \
        (sc[0], None) if node.target == "clamp_min" and len(sc) == 1 else \
        sc if node.target == "clamp" and len(sc) == 2 else (1, 0)
    return (lo is None or lo <= 0) and (hi is None or hi >= width - 1)


def pick_dim(node: Node) -> int | None:
    """The input dim whose positions ``node`` returns (:data:`optypes.PICKS`), or None."""
    meta = node.meta
    if node.target not in PICKS or not node.in_shapes:
        return None
    if isinstance(meta, ElementwiseMeta) and len(meta.moves + meta.mixes) == 1:
        return (meta.moves + meta.mixes)[0]  # (topk moves its dim, cummax mixes it)
    if isinstance(meta, ReduceMeta) and len(meta.dims) == 1:
        return meta.dims[0]
    return None


def _reader(g: Graph, node: Node, port: int) -> TensorKey | None:
    """The tensor dim of ``node`` whose position v stands for value v of its input ``port``,
    if it reads that input so: counts (``histc``, ``bincount``, ``one_hot``) along their
    output dim, an index (``bias[ids]``, ``scores.gather(1, ids)``) along the dim it gathers
    of the tensor it indexes, or along the dim a scatter writes (``mask.scatter_(1, ids,
    1)``)."""
    meta = node.meta
    if isinstance(meta, CountsMeta) and port == 0 and meta.exact:
        return node.id, 0, meta.dim
    edges = g.in_edges.get(node.id, ())
    if isinstance(meta, SliceMeta) and port > 0 and len(meta.gathered) == 1 \
            and len(edges) == 2:
        e = edges[0]
        return e.source, e.source_port, meta.gathered[0]
    if node.target in GATHERS and port == 1 and isinstance(meta, ElementwiseMeta) \
            and len(meta.moves) == 1 and len(edges) == 2:  # scores.gather(1, ids)
        e = edges[0]
        return e.source, e.source_port, meta.moves[0]
    if node.target in SCATTERS and port == 1 and isinstance(meta, ElementwiseMeta) \
            and len(meta.moves) == 1:  # mask.scatter_(1, ids, 1): its output's dim
        return node.id, 0, meta.moves[0]
    return None


def _joins_picks(g: Graph, node: Node) -> bool:
    """Is ``node`` a ``torch.cat``/``stack`` of positions along one and the same dim, each
    part picked (PhiMoE's router picks its two experts with two ``max`` calls and joins
    their indices)? Then its values are positions too."""
    if not isinstance(node.meta, ConcatMeta):
        return False
    widths = set()
    for e in g.in_edges.get(node.id, ()):
        picks = picks_at(g, e.source, e.source_port)
        if not picks:
            return False
        widths.update(picked_width(g, p) for p in picks)
    return len(widths) == 1


def picked_width(g: Graph, pick: Node) -> int:
    """How many positions ``pick`` picks among: the size of its picked dim."""
    nid, port, dim = picked_key(g, pick)
    return g.nodes[nid].out_shapes[port][dim]


def position_reads(g: Graph, node: Node, carriers: list | None = None) -> Reads:
    """Where the positions ``node`` (an op of :data:`optypes.PICKS`) returns are read,
    through ops that keep values (:func:`_keeps`) and joins of picked positions
    (:func:`_joins_picks`). ``carriers``, if given, receives the tensors ``(node id, port)``
    that carry them there (the app draws them)."""
    readers: list[TensorKey] = []
    other: list[Node] = []
    width = node.in_shapes[0][pick_dim(node)]
    todo, seen = [(node.id, PICKS[node.target])], set()
    while todo:
        key = todo.pop()
        if carriers is not None:
            carriers.append(key)
        for e in g.consumers.get(key, ()):
            if e.target in g.shape_read or (e.target, e.target_port) in seen:
                continue
            seen.add((e.target, e.target_port))
            t = g.nodes[e.target]
            r = _reader(g, t, e.target_port)
            if r is not None:
                readers.append(r)
            elif _keeps(t, e.target_port) or _joins_picks(g, t) or \
                    _clamp_keeps(g, t, e.target_port, width):
                todo.append((t.id, 0))
            elif not (t.target in ORDERS and e.target_port == 0 or t.target in LIKE_FILLS):
                other.append(t)
    return Reads(readers, other)


def picks_at(g: Graph, nid: int, port: int) -> list[Node]:
    """The ops of :data:`optypes.PICKS` whose positions tensor ``(nid, port)`` holds, through
    ops that keep values and joins of such positions (every part picked), or [] when some of
    its values are not picked positions."""
    found: list[Node] = []
    clamps: list[Node] = []  # (checked against the picks' widths once they are found)
    todo, seen = [(nid, port)], set()
    while todo:
        nid, port = todo.pop()
        if (nid, port) in seen:
            continue
        seen.add((nid, port))
        node = g.nodes[nid]
        if node.target in PICKS and PICKS[node.target] == port and pick_dim(node) is not None:
            found.append(node)
            continue
        edges = g.in_edges.get(nid, ())
        if port != 0 or not edges:
            return []
        if isinstance(node.meta, ConcatMeta):
            todo += [(e.source, e.source_port) for e in edges]
        elif _keeps(node, 0) or node.target in CLAMPS:
            if node.target in CLAMPS:
                clamps.append(node)
            todo.append((edges[0].source, edges[0].source_port))
        else:
            return []
    if any(not _clamp_keeps(g, c, 0, picked_width(g, p)) for c in clamps for p in found):
        return []
    return sorted(found, key=lambda n: n.id)


def picked_key(g: Graph, pick: Node) -> TensorKey:
    """The tensor dim whose positions ``pick`` returns: its input's picked dim."""
    e = g.in_edges[pick.id][0]
    return e.source, e.source_port, pick_dim(pick)


def picks_smallest(pick: Node) -> bool:
    """Does ``pick`` pick the smallest values (``argmin``, ``min``, ``topk(largest=False)``)?"""
    return pick.target in PICKS_SMALLEST or bool(pick.attrs.get("smallest"))


def group_picks(g: Graph, group) -> list[tuple[Node, list[tuple[int, int]]]]:
    """The ops that pick ``group``'s units (a router's ``topk`` over its experts): each with
    the tensors ``(node id, port)`` that carry its positions to the group's readers."""
    out = []
    for nid, port, dim in group.tensors:
        for e in g.consumers.get((nid, port), ()):
            node = g.nodes[e.target]
            if node.target in PICKS and e.target_port == 0 and pick_dim(node) == dim:
                carriers: list[tuple[int, int]] = []
                reads = position_reads(g, node, carriers)
                if reads.readers and not reads.other and \
                        all(k in group.tensors for k in reads.readers):
                    out.append((node, carriers))
    return out


def score_keys(g: Graph, group) -> list[tuple[TensorKey, float]]:
    """The oracle of removing the units a router picks: the tensors of ``group`` on the way
    to its picks (:func:`group_picks`), from the op that makes the router's scores (a
    linear, a matmul) on, each with the value that keeps a position from being picked:
    -inf (+inf before an ``argmin``). With the removed positions set so, the original model
    never picks them and they take no share of a softmax, as in the pruned model. Tensors
    that are, or view, the model's own weights are never among them. [] when the group
    has no picks, or a tensor would need both values."""
    within: dict[tuple[int, int], list[TensorKey]] = {}
    for key in group.tensors:
        within.setdefault(key[:2], []).append(key)
    fills: dict[TensorKey, float] = {}
    for pick, _ in group_picks(g, group):
        fill = math.inf if picks_smallest(pick) else -math.inf
        todo = [picked_key(g, pick)]
        while todo:
            key = todo.pop()
            if key not in group.tensors or _of_source(g, key[0]):
                continue
            if key in fills:
                if fills[key] != fill:
                    return []
                continue
            fills[key] = fill
            node = g.nodes[key[0]]
            if node.op_type in (OpType.MATMUL, OpType.LINEAR):
                continue  # the scores are made here
            for e in g.in_edges.get(node.id, ()):
                # (not a mask made from the picks: a bool, or 0/1 as integers)
                if e.dtype.startswith(("float", "bfloat")):
                    todo += within.get((e.source, e.source_port), ())
    return sorted(fills.items())


def _of_source(g: Graph, nid: int) -> bool:
    """Is node ``nid``'s output a source (a weight, a buffer, an input), or a view or copy
    of one that may share its memory (``bias.unsqueeze(0)``, ``weight.float()``)?"""
    while True:
        node = g.nodes[nid]
        if node.op_type in OpGroup.SOURCES:
            return True
        edges = g.in_edges.get(nid, ())
        if len(edges) != 1 or not (node.op_type in OpGroup.VIEWS or
                                   node.target in KEEPS_VALUES):
            return False
        nid = edges[0].source
