"""Tensors whose values are positions along a dim of another tensor, and where they are read.

A mixture-of-experts router picks experts with ``topk`` over its logits: the indices it
returns are positions along the logits' expert dim. The experts layer reads them as positions
along its weights' expert dim: ``histc`` counts the tokens each expert got, and those counts'
offsets split ``grouped_mm``'s rows among the stacked expert weights; ``bias[ids]`` takes each
token's expert bias. Removing expert ``e`` from the router's logits must remove it from
those weights too, though no tensor of the graph joins the two dims: they are coupled through
values. :func:`position_reads` follows the positions an op picks to the dims that read them (a
*reader*: position ``v`` of its dim stands for value ``v``), and :func:`picked_at` goes back
from such a reader to the op that picked them. The rules (:mod:`viewer.core.rules`) use both
to carry a group from the picked dim to its readers and back.
"""

from __future__ import annotations

from typing import NamedTuple

from .graph import Graph, Node
from .meta import CountsMeta, ElementwiseMeta, ReduceMeta, SliceMeta
from .optypes import GATHERS, KEEPS_VALUES, ORDERS, PICKS, SCATTERS, OpType

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


def position_reads(g: Graph, node: Node, carriers: list | None = None) -> Reads:
    """Where the positions ``node`` (an op of :data:`optypes.PICKS`) returns are read,
    through ops that keep values (:func:`_keeps`). ``carriers``, if given, receives the
    tensors ``(node id, port)`` that carry them there (the app draws them)."""
    readers: list[TensorKey] = []
    other: list[Node] = []
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
            elif _keeps(t, e.target_port):
                todo.append((t.id, 0))
            elif not (t.target in ORDERS and e.target_port == 0):
                other.append(t)
    return Reads(readers, other)


def picked_at(g: Graph, nid: int, port: int) -> Node | None:
    """The op of :data:`optypes.PICKS` whose positions tensor ``(nid, port)`` holds, through
    ops that keep values, or None."""
    seen = set()
    while nid not in seen:
        seen.add(nid)
        node = g.nodes[nid]
        if node.target in PICKS and PICKS[node.target] == port and pick_dim(node) is not None:
            return node
        edges = g.in_edges.get(nid, ())
        if port != 0 or not edges or not _keeps(node, 0):
            return None
        nid, port = edges[0].source, edges[0].source_port
    return None


def picked_key(g: Graph, pick: Node) -> TensorKey:
    """The tensor dim whose positions ``pick`` returns: its input's picked dim."""
    e = g.in_edges[pick.id][0]
    return e.source, e.source_port, pick_dim(pick)


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
