"""Pruning groups: which positions of which tensors must go together.

The model: a *unit* is one prunable choice (one channel, one head, ...). Starting from a layer
whose output channels are born there (a conv, a linear, an embedding, ...), each output channel
is a unit. Units flow as ``(unit, position)`` pairs along one dim of each tensor, through every
op by the rule of its :class:`OpType` (:data:`rules.RULES`), forward and backward: through concat
offsets, split ranges, slices, reshapes (a channel feeding a linear through ``flatten`` occupies
H*W input features), residual adds, matmuls and attention. When two units land on one position
they are merged (union-find): this is how heads appear (a ``view`` splitting D into (H, d) merges
each head's d channels into one unit) and how a channel shuffle couples channels across
branches. The search visits every (tensor, dim, position) once, so all groups of a model cost
time linear in the graph size times its widths. :func:`all_groups` searches a repeated block
(a decoder layer, a ResNet bottleneck) once and shifts that group to the repeats, after checking
node by node that the repeat reads exactly the same (:class:`_Repeats`).

    >>> g = build_graph(model, x)
    >>> grp = group_of(g, "layer1.0.conv1")           # out channels by default
    >>> grp.n_units, grp.prunable, [m.node_name for m in grp.members]
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from .arrays import unique
from .errors import DepViewError
from .graph import Graph, Node
from .handlers import CUTS, cell_port, node_cuts, rnn_cell
from .meta import (
    ConcatMeta,
    CountsMeta,
    DimSlice,
    ReduceMeta,
    ReshapeMeta,
    SetItemMeta,
    SliceMeta,
    SplitMeta,
    UnbindMeta,
)
from .optypes import FILLS, SHAPE_NORMS, OpGroup, OpType
from .rules import (
    OVER_INFERRED,
    PAST_OUTERMOST,
    READS_INPUT_PRODUCER,
    RULES,
    IntArray,
    RuleContext,
    TensorKey,
    conv_in_dim,
    conv_out_dim,
    mha_call_query,
    nonzero_by,
    norm_dim,
    output_of_reason,
)
from .text import first_line
from .trace import output_path


@dataclass
class Member:
    """One layer (or parameter) in a group. ``side`` is "out" (its output channels), "in" (its
    input channels) or "param" (a bare nn.Parameter, along ``dim``). ``pos[i]`` is a position
    of that side that unit ``unit[i]`` owns; a unit may own several positions. ``port``: the
    input whose channels an "in" member holds, when the layer reads several inputs through
    weights of their own (``nn.MultiheadAttention``'s key 1 and value 2 with ``kdim``/``vdim``);
    0 otherwise."""

    node: int
    node_name: str
    module: str
    op_type: OpType
    side: str
    dim: int
    pos: IntArray
    unit: IntArray
    port: int = 0

    def indices(self, units: IntArray | list[int]) -> IntArray:
        """Positions owned by the given units, sorted."""
        units = np.asarray(units, dtype=np.int64)
        units = units[units >= 0]
        if not len(units) or not len(self.unit):
            return np.empty(0, dtype=np.int64)
        # a table of the wanted units (np.isin sorts both arrays: ~70 us a call, and a plan's
        # cuts make one per member of every group, once per validation probe)
        hit = np.zeros(max(int(self.unit.max()), int(units.max())) + 1, dtype=bool)
        hit[units] = True
        return unique(self.pos[hit[self.unit]])


@dataclass
class Group:
    """All that must be pruned together. ``n_units`` choices; ``prunable`` with ``reasons``."""

    id: int
    root: str
    root_side: str
    n_units: int
    members: list[Member]
    tensors: dict[TensorKey, tuple[IntArray, IntArray]]  # (pos, unit) on every tensor visited
    reasons: list[str] = field(default_factory=list)
    exact: bool = True  # False when pruning changes statistics (norm over channels, softmax)
    stats_notes: list[str] = field(default_factory=list)
    multiple_of: int = 1  # units must be removed in multiples of this (e.g. MHA num_heads)
    multiple_why: list[str] = field(default_factory=list)  # why, in words
    #: inexact only because a layer replaces the forward of the torch layer it extends
    #: (timm's BatchNormAct2d): no rule knows what it computes, but masked equivalence can
    #: tell whether it keeps channels apart (see Pruner.verify)
    opaque_only: bool = False
    #: at least this many units must stay (a router's ``topk`` picks that many experts);
    #: ``min_kept_why`` says so, and is set whenever an op picks the units (an argmax: 1)
    min_kept: int = 1
    min_kept_why: str = ""

    @property
    def prunable(self) -> bool:
        return not self.reasons and self.n_units > max(1, self.min_kept)

    @property
    def reason(self) -> str:
        if self.reasons:
            return "; ".join(dict.fromkeys(self.reasons))
        if self.n_units <= 1:
            width = max((len(unique(m.pos)) for m in self.members), default=1)
            if width > 1:  # (ShuffleNet V1's grouped convs across a shuffle, a feature cross)
                return (f"its {width} channels make one unit: the ops it reaches tie each "
                        "to all the others, so removing one would remove the whole tensor")
            return "only one unit: removing it would remove the whole tensor"
        if self.n_units <= self.min_kept:
            return f"all {self.n_units} units must stay: {self.min_kept_why}"
        return ""

    def member(self, node_name: str, side: str | None = None) -> Member:
        for m in self.members:
            if m.node_name == node_name and (side is None or m.side == side):
                return m
        raise KeyError(f"{node_name} ({side}) is not in group {self.id}")

    def to_dict(self, with_indices: bool = True) -> dict:
        members = []
        for m in self.members:
            d = {"node": m.node_name, "module": m.module, "op_type": m.op_type.value,
                 "side": m.side, "dim": m.dim, "width": int(len(unique(m.pos)))}
            if m.port:
                d["port"] = m.port
            if with_indices:
                d["indices"] = [int(i) for i in unique(m.pos)]
            members.append(d)
        return {"id": self.id, "root": self.root, "root_side": self.root_side,
                "channels": self.n_units, "members": members, "prunable": self.prunable,
                "reason": self.reason, "exact": self.exact,
                "inexact_why": list(self.stats_notes), "multiple_of": self.multiple_of,
                "multiple_why": "; ".join(self.multiple_why), "min_kept": self.min_kept,
                "min_kept_why": self.min_kept_why}


# --------------------------------------------------------------------------------------------
# The search.


def _untied(node: Node) -> bool:
    """Layers whose cuts are not the member's own positions (gates, packed heads, a grouped
    conv's per-group columns): a tie between two of their calls is not followed (except
    between calls of one RNN cell, see :meth:`_Search.tie`). A depthwise conv's cuts are its
    channels' own rows: a module called on several maps (CoaT's shared position encodings)
    ties them."""
    return node.op_type in (OpType.MHA, OpType.LSTM, OpType.GRU, OpType.RNN) or \
        int(node.attrs.get("groups", 1)) > 1 and node.op_type is not OpType.DEPTHWISE_CONV


class _Search:
    """One propagation from a root. Tensors joined by ops that pass pairs through unchanged
    (elementwise, norms, permutes, the input side of a linear, ...) form a *class* sharing
    one owner array: pairs claimed once on a class are handed to its other tensors without
    being claimed again. A *batch* is the pairs newly claimed on a class by one arrival; each
    tensor of the class processes each batch once."""

    def __init__(self, graph: Graph, n_units: int, link_cache: dict | None = None,
                 outer: bool | int = False, inner: bool = False):
        self.g = graph
        self.outer = outer  # ambiguous reshapes split at their outer dim (see _map_reshape)
        self.inner = inner  # ... at their inner dim, even where a -1 says otherwise
        self.parent = np.arange(n_units, dtype=np.int64)
        self.merged = False  # any union yet?
        self.cls: dict[TensorKey, int] = {}  # tensor -> class
        self.invalid: list[TensorKey] = []  # pairs sent to a dim the tensor does not have
        self.owner: list[IntArray] = []  # per class: unit at each position (-1: none yet)
        self.stamp: list[IntArray] = []
        self.cls_batches: list[list[int]] = []
        self.batches: list[tuple[int, IntArray, IntArray]] = []  # (class, units, pos)
        self.seen: dict[TensorKey, set[int]] = {}
        self.cur: int | None = None  # the batch whose pairs a rule is being given
        self.link_cache: dict[tuple[int, int], list[tuple]] = link_cache \
            if link_cache is not None else {}
        self.reasons: list[str] = []
        # units that reached what blocks the group (see RuleContext.block); True: every unit
        self.blocked: list[IntArray] = []
        self.whole_blocked = False
        self.stats_notes: list[str] = []
        self.opaque_notes: set[str] = set()  # those of them that only a run can settle
        self.multiple = 1
        self.multiple_why: list[str] = []
        self.min_kept: list[tuple[TensorKey, int, str]] = []  # RuleContext.keep_at_least
        # RuleContext.exact_if_zero/exact_if_one_zero: (tensor dims one of which must be
        # zero at the group's positions, note)
        self.zero_checks: list[tuple[tuple[TensorKey, ...], str]] = []
        # member -> batch ids it holds whole, and other (units, pos) chunks
        self.members: dict[tuple[int, str, int, int], tuple[list[int], list]] = {}
        self.queue: deque = deque()

    # union-find over units
    def find(self, u: IntArray) -> IntArray:
        """Roots of units ``u`` (vectorised), compressing the paths it walked."""
        p = self.parent
        r = p[u]
        while True:
            rr = p[r]
            if np.array_equal(rr, r):
                break
            r = rr
        p[u] = r
        return r

    def union_pairs(self, a: IntArray, b: IntArray) -> None:
        """Merge units a[i] and b[i] for all i, vectorised: link each pair's larger root to
        its smaller one (``minimum.at`` keeps the smallest when a root is linked several
        times); pairs whose link lost to a smaller one go round again."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        while len(a):
            ra, rb = self.find(a), self.find(b)
            diff = ra != rb
            if not diff.any():
                return
            if not diff.all():
                ra, rb = ra[diff], rb[diff]
            hi, lo = np.maximum(ra, rb), np.minimum(ra, rb)
            self.merged = True
            np.minimum.at(self.parent, hi, lo)
            lost = self.parent[hi] != lo
            if not lost.any():
                return
            a, b = hi[lost], lo[lost]

    def union_all(self, units: IntArray) -> None:
        if len(units) > 1:
            self.union_pairs(units[:-1], units[1:])

    def add_member(self, node, side, dim, units, pos, port=0):
        batches, chunks = self.members.setdefault((node.id, side, dim, port), ([], []))
        b = self.cur
        if b is not None and units is self.batches[b][1] and pos is self.batches[b][2]:
            batches.append(b)  # the whole batch: resolved from its class at the end
        else:
            chunks.append((units, pos))
        if node.id in self.g.sharing:
            self.tie(node, side, dim, units, pos, port)

    def tie(self, node, side, dim, units, pos, port=0):
        """``node`` shares a tensor with other nodes (a module called twice, tied weights):
        the channels its member cuts from that tensor are cut for them too, so the pairs go
        to the side of each other node that the same tensor dim belongs to. A tie it cannot
        follow blocks every unit of the group."""
        n_reasons = len(self.reasons)
        self._tie(self.g, node, side, dim, units, pos, port)
        if len(self.reasons) > n_reasons:
            self.whole_blocked = True

    def _tie(self, g, node, side, dim, units, pos, port):
        others = g.sharing[node.id]
        if port and side == "out" and node.op_type is OpType.LSTM:  # its cell units
            for oid in others:
                other = g.nodes[oid]
                c = cell_port(other)
                if c is None or other.params != node.params:
                    self.reasons.append(f"'{node.name}' shares its weights with "
                                        f"'{other.name}' in a way DepView does not follow")
                else:
                    self.arrive(oid, c, len(other.out_shapes[c]) - 1, units, pos)
            return
        if rnn_cell(node):  # every call of a cell: the same hidden units and input features
            for oid in others:
                other = g.nodes[oid]
                if not rnn_cell(other) or other.params != node.params:
                    self.reasons.append(f"'{node.name}' shares its weights with "
                                        f"'{other.name}' in a way DepView does not follow")
                elif side == "in":
                    e = g.in_edges[oid][0]
                    self.arrive(e.source, e.source_port, len(other.in_shapes[0]) - 1, units,
                                pos)
                else:
                    self.arrive(oid, 0, len(other.out_shapes[0]) - 1, units, pos)
            return
        if _untied(node):
            a, b = sorted((node.name, g.nodes[others[0]].name))  # one text from either side
            self.reasons.append(f"'{a}' and '{b}' share their weights; DepView cannot follow "
                                f"such a tie for a {node.op_type.name} layer")
            return
        for cut in node_cuts(node, side, dim, pos, None, port):
            for oid in others:
                other = g.nodes[oid]
                if cut.key not in other.params.values() and cut.key not in \
                        other.buffers.values():
                    continue
                to = self._tied_side(other, cut.key, cut.dim, pos)
                if to is None and other.op_type is OpType.EMBED and cut.dim == 0:
                    self.reasons.append(f"'{node.name}' shares its rows with the vocabulary "
                                        f"of '{other.name}' (tied weights: tokens are never "
                                        "pruned)")
                elif to is None:
                    self.reasons.append(f"'{node.name}' shares '{cut.key}' with "
                                        f"'{other.name}' in a way DepView does not follow")
                elif to[0] == "in":
                    e = g.in_edges[oid][0]
                    self.arrive(e.source, e.source_port, to[1], units, pos)
                else:
                    self.arrive(oid, 0, to[1], units, pos)

    def _tied_side(self, other: Node, key: str, pdim: int, pos) -> tuple[str, int] | None:
        """The side and dim of ``other`` whose member would cut dim ``pdim`` of tensor ``key``
        at the same positions, or None."""
        if other.op_type is OpType.PARAMETER or other.op_type is OpType.BUFFER:
            return "param", pdim
        if _untied(other):
            return None
        for side in ("out", "in"):
            d = out_channel_dim(other) if side == "out" else in_channel_dim(other)
            if d is None or side == "in" and not self.g.in_edges.get(other.id):
                continue
            for c in CUTS[other.op_type](other, side, d, pos):
                if c.key == key and c.dim == pdim and np.array_equal(c.positions, pos):
                    return side, d
        return None

    def _valid(self, key: TensorKey) -> bool:
        shape = self.g.nodes[key[0]].out_shapes[key[1]]
        return 0 <= key[2] < len(shape)

    def arrive(self, node_id: int, port: int, dim: int, units: IntArray, pos: IntArray,
               via: tuple | None = None, distinct: bool = False):
        """Pairs arrive on tensor (node_id, port) along dim: claim the new ones on its class,
        merge units that land on a taken position, and queue the rest as a new batch.
        ``distinct``: the caller knows no position occurs twice in ``pos``."""
        if len(pos) == 0:
            return
        key = (node_id, port, dim)
        c = self.cls.get(key)
        if c is None:
            if not self._valid(key):
                self.invalid.append(key)
                return
            c = self._new_class(key)
            if distinct:  # nothing to merge: claim and queue
                self.owner[c][pos] = units
                self._queue_batch(c, key, units, pos, via)
                return
        own = self.owner[c]
        prev = own[pos]
        taken = prev >= 0
        if taken.any():
            clash = taken & (prev != units)
            if clash.any():
                self.union_pairs(prev[clash], units[clash])
            pos, units = pos[~taken], units[~taken]
            if not len(pos):
                return
        # claim the new positions; a position twice in this arrival keeps its last writer and
        # merges the others into it (no sort needed: a stamp array marks the last writer)
        own[pos] = units
        got = own[pos]
        differ = got != units
        if differ.any():
            self.union_pairs(got[differ], units[differ])
        stamp = self.stamp[c]
        idx = np.arange(len(pos))
        stamp[pos] = idx
        last = stamp[pos] == idx
        if not last.all():
            pos, got = pos[last], got[last]
        self._queue_batch(c, key, got, pos, via)

    def _queue_batch(self, c: int, key: TensorKey, units: IntArray, pos: IntArray, via):
        b = len(self.batches)
        self.batches.append((c, units, pos))
        self.cls_batches[c].append(b)
        self.seen.setdefault(key, set()).add(b)
        self.queue.append((key, b, via))

    def _new_class(self, key: TensorKey) -> int:
        width = self.g.nodes[key[0]].out_shapes[key[1]][key[2]]
        c = len(self.owner)
        self.owner.append(np.full(width, -1, dtype=np.int64))
        self.stamp.append(np.empty(width, dtype=np.int64))
        self.cls_batches.append([])
        self.cls[key] = c
        return c

    def _pass(self, key: TensorKey, b: int, via: tuple) -> bool:
        """Hand batch ``b`` unchanged to tensor ``key``: True if done (the tensor is, or now
        joins, the batch's class), False if it belongs to another class (claim it there)."""
        c = self.cls.get(key)
        if c is None:
            if not self._valid(key):
                self.invalid.append(key)
                return True
            c = self.cls[key] = self.batches[b][0]
            self.seen[key] = {b}
            self.queue.append((key, b, via))
            return True
        if c != self.batches[b][0]:
            return False
        seen = self.seen[key]
        if b not in seen:
            seen.add(b)
            self.queue.append((key, b, via))
        return True

    def links(self, nid: int, port: int) -> list[tuple]:
        """The ops touching tensor (nid, port): its producer ("out") and its consumers ("in"),
        as ``(node, side, port, rule, tag)``; ``tag`` is the ``via`` of pairs they send."""
        got = self.link_cache.get((nid, port))
        if got is None:
            nodes = self.g.nodes
            node = nodes[nid]
            got = [(node, "out", port, RULES[node.op_type], (nid, "out", port))]
            skip = self.g.shape_read
            for e in self.g.consumers.get((nid, port), ()):
                if e.target in skip:
                    continue  # its result is read for its shape only
                t = nodes[e.target]
                got.append((t, "in", e.target_port, RULES[t.op_type],
                            (e.target, "in", e.target_port)))
            self.link_cache[(nid, port)] = got
        return got

    def run(self, ctx: RuleContext) -> None:
        """Follow the queued pairs through every op until nothing new arrives.

        From a tensor no model input and no parameter reaches (a rotary cos/sin table that
        every layer reads), the pairs go back to its producer at once, but on to its other
        readers only once the queue is empty, and only when they are not all blocked by
        then (the table's source blocks them): a blocked group gains nothing there, and
        would take in every layer's q and k, whose own roots then start no group."""
        fixed = self.g.fixed_value
        deferred: list[tuple] = []
        while True:
            while self.queue:
                key, b, via = self.queue.popleft()
                links = self.links(key[0], key[1])
                if len(links) > 1 and fixed(key[0]):
                    deferred.append((key, b, via, links[1:]))
                    links = links[:1]
                self._visit(ctx, key, b, via, links)
            if not deferred or self.whole_blocked:
                return
            bad = set(self.find(np.concatenate(self.blocked)).tolist()) if self.blocked \
                else set()
            pending, deferred = deferred, []
            for key, b, via, links in pending:
                if not set(self.find(self.batches[b][1]).tolist()) <= bad:
                    self._visit(ctx, key, b, via, links)

    def _visit(self, ctx: RuleContext, key: TensorKey, b: int, via, links: list[tuple]) -> None:
        """Give batch ``b``, which arrived on tensor ``key``, to the ops in ``links``."""
        g, batches, in_edges = self.g, self.batches, self.g.in_edges
        nid, port, dim = key
        _, units, pos = batches[b]
        for node, side, nport, rule, tag in links:
            # never send pairs straight back through the op they came from: reshape-like
            # maps are not exactly invertible once units have been coarsened
            if tag == via:
                continue
            self.cur = b
            flows = rule(g, node, side, nport, dim, units, pos, ctx)
            self.cur = None
            for f in flows:
                if f.side == "out":
                    to, via2 = (node.id, f.port, f.dim), (node.id, "out", f.port)
                else:
                    edges = in_edges.get(node.id, ())
                    if f.port >= len(edges):
                        continue
                    e = edges[f.port]
                    to, via2 = (e.source, e.source_port, f.dim), (node.id, "in", f.port)
                # passed through unchanged: hand the batch on without claiming it again
                if f.units is units and f.pos is pos and self._pass(to, b, via2):
                    continue
                self.arrive(*to, f.units, f.pos, via2)


#: For each layer type: the dim of its output that carries the channels it creates.
def root_dim(node: Node) -> int | None:
    """The output dim whose channels this node creates, or None if it creates none."""
    if not node.out_shapes or not node.out_shapes[0]:
        return None
    t = node.op_type
    if t is OpType.CONV or t is OpType.CONV_TRANSPOSE:
        return conv_out_dim(node)
    if t is OpType.PARAMETER:
        return _parameter_dim(node.out_shapes[0])
    if t in _ROOT_LAST_DIM:
        return len(node.out_shapes[0]) - 1
    if t is OpType.CUSTOMIZED and not node.custom.opaque:
        return norm_dim(node.custom.out_channel_dim, len(node.out_shapes[0]))
    if t is OpType.CUSTOMIZED:  # (opaque: its group is blocked, and says why; without one
        return _guess_dim(node, node.out_shapes[0])  # its readers' inputs were in none)
    return None


def _parameter_dim(shape: tuple[int, ...]) -> int | None:
    """The dim of a bare parameter whose channels it creates: dim 1 of a 4-D/5-D one, laid
    out channels-first as the maps it meets (a position table added to a feature map, a
    weight given to F.conv2d, whose last dim is a kernel's width), else the last; None when
    that dim has size 1 (ConvNeXt V2's GRN gamma, (1, 1, 1, C), is broadcast along it: its
    group said only "only one unit"; its C are its block's channels, which that group
    holds). Not another dim instead: LeViT's (heads, 1) attention biases would root a group
    of heads beside the attention's own."""
    d = 1 if len(shape) in (4, 5) else len(shape) - 1
    return d if shape[d] > 1 else None


_ROOT_LAST_DIM = tuple(OpGroup.RECURRENT) + (OpType.LINEAR, OpType.EMBED, OpType.MHA,
                                              OpType.PARAMETER)


_ROOT_TYPES = frozenset((OpType.CONV, OpType.CONV_TRANSPOSE, OpType.CUSTOMIZED)
                       + _ROOT_LAST_DIM)


def _with_cell_roots(roots: list[tuple[Node, int, int]]) -> list[tuple[Node, int, int]]:
    """``roots`` with, after each LSTM that has ``proj_size``, its cell units (``c_n``'s
    hidden_size, :func:`cell_port`): a second kind of unit, in a group of its own."""
    out = []
    for node, port, d in roots:
        out.append((node, port, d))
        c = cell_port(node) if node.op_type is OpType.LSTM else None
        if c is not None:
            out.append((node, c, len(node.out_shapes[c]) - 1))
    return out


def _contracted_weight_dims(graph: Graph, roots: list[tuple[Node, int]]
                            ) -> list[tuple[Node, int]]:
    """The other dims of bare parameters that a matmul, einsum or functional linear takes
    (through transposes): a weight stored (out, in) and used as ``x @ W.t()``, or a KAN
    layer's (in, out, degree) coefficients, creates channels along a dim that is not its
    last. Rooted after every other root, so each starts a group only if none reached it, and
    kept only if it can be pruned (a MoE's expert dim, a graph layer's input features would
    add blocked groups that say nothing new)."""
    first = {node.id: d for node, d in roots}
    out = []
    for node in graph.nodes:
        if node.op_type is not OpType.PARAMETER or node.id not in first or \
                len(node.out_shapes[0]) < 2 or not _contracted(graph, node.id):
            continue
        out += [(node, d) for d, size in enumerate(node.out_shapes[0])
                if d != first[node.id] and size > 1]
    return out


def _contracted(graph: Graph, nid: int) -> bool:
    """Does the tensor ``nid`` makes reach a matmul, einsum or linear, through permutes,
    views and slices (DBRX's experts: ``w1.view(-1, ffn_hidden_size, hidden_size)[i].T``)?"""
    todo, seen = [nid], set()
    while todo:
        for e in graph.consumers.get((todo.pop(), 0), ()):
            t = graph.nodes[e.target].op_type
            if t in (OpType.MATMUL, OpType.LINEAR):
                return True
            if t in _TOWARD_CONTRACTION and e.target not in seen:
                seen.add(e.target)
                todo.append(e.target)
    return False


_TOWARD_CONTRACTION = frozenset((OpType.PERMUTE, OpType.RESHAPE, OpType.SLICE))


_CONVS = frozenset((OpType.CONV, OpType.CONV_TRANSPOSE, OpType.DEPTHWISE_CONV))


def _guess_dim(node: Node, shape: tuple[int, ...]) -> int:
    if node.op_type in OpGroup.CHANNEL_FIRST or (
            len(shape) in (4, 5) and node.op_type not in OpGroup.CHANNEL_LAST):
        return 1
    return len(shape) - 1


def in_channel_dim(node: Node) -> int | None:
    """The dim of input 0 that carries channels (None without inputs). Layers know theirs;
    for other ops it is a guess: 1 for 4-D/5-D tensors, else the last dim."""
    if not node.in_shapes or not node.in_shapes[0]:
        return None
    if node.op_type in _CONVS:
        return conv_in_dim(node)
    return _guess_dim(node, node.in_shapes[0])


def out_channel_dim(node: Node) -> int | None:
    """The dim of output 0 that carries channels (None without outputs): the dim a layer
    creates, a concat's or split's dim, else the same guess as :func:`in_channel_dim`."""
    if not node.out_shapes or not node.out_shapes[0]:
        return None
    if isinstance(node.meta, (ConcatMeta, SplitMeta)):
        return node.meta.dim
    d = root_dim(node)
    return d if d is not None else _guess_dim(node, node.out_shapes[0])


def _search(graph: Graph, root: Node, side: str, dim: int, pos: IntArray,
            gid: int, link_cache: dict | None = None, trail: list | None = None,
            outer: bool | int = False, blocked: list | None = None, inner: bool = False,
            port: int = 0) -> Group:
    """The group of ``pos`` on ``dim`` of ``root``'s output ``port`` (``side="out"``) or
    input 0. An LSTM's cell state port (:func:`cell_port`) gives a group whose
    ``root_side`` is "cell".
    ``trail``, if given, receives every tensor key the search visited. ``blocked``, if
    given, receives the sorted labels of the units that reached what blocks the group when
    those are some of its units, not all, and nothing else blocks it (see
    :func:`split_blocked`)."""
    n = len(pos)
    s = _Search(graph, n, link_cache, outer, inner)
    ctx = RuleContext(s)
    units = np.arange(n, dtype=np.int64)
    if side == "out":
        s.arrive(root.id, port, dim, units, pos, distinct=True)
    else:
        e = graph.in_edges[root.id][0]
        s.arrive(e.source, e.source_port, dim, units, pos, distinct=True)
    s.run(ctx)
    # final units: union-find roots renumbered 0..k-1 in order of their smallest member
    # (a root is always the smallest unit of its set: union_pairs links to the smaller root)
    if s.merged:
        roots = s.find(units)
        label = np.cumsum(roots == units)[roots] - 1
    else:
        label = units
    resolved: dict[int, tuple[IntArray, IntArray]] = {}

    def of_class(c: int) -> tuple[IntArray, IntArray]:
        """(sorted positions, their labels) of every pair claimed on class ``c``."""
        if c not in resolved:
            own = s.owner[c]
            p = np.nonzero(own >= 0)[0]
            resolved[c] = (p, label[own[p]])
        return resolved[c]

    members = []
    for (nid, mside, mdim, mport), (bids, chunks) in s.members.items():
        node = graph.nodes[nid]
        bids = list(dict.fromkeys(bids))
        classes = {s.batches[b][0] for b in bids}
        if not chunks and len(classes) == 1:
            # whole batches of one class: their positions are disjoint, no dedup needed
            c = classes.pop()
            if len(bids) == len(s.cls_batches[c]):
                p, lab = of_class(c)
            else:
                p = np.concatenate([s.batches[b][2] for b in bids])
                lab = label[np.concatenate([s.batches[b][1] for b in bids])]
                order = np.argsort(p, kind="stable")
                p, lab = p[order], lab[order]
        else:
            chunks = [(s.batches[b][1], s.batches[b][2]) for b in bids] + chunks
            u = np.concatenate([c[0] for c in chunks])
            p = np.concatenate([c[1] for c in chunks])
            # unique (position, unit) pairs via one 1-D key: far faster than unique(axis=1)
            code = unique(p.astype(np.int64) * (n + 1) + label[u])
            p, lab = code // (n + 1), code % (n + 1)
        members.append(Member(nid, node.name, node.module, node.op_type, mside, mdim, p, lab,
                              mport))
    members.sort(key=lambda m: (m.node, m.side, m.port))
    tensors = {k: of_class(c) for k, c in s.cls.items()}
    # a group is a result: read-only, so the groups made from it for repeated blocks
    # (:class:`_Repeats`) can share its arrays
    for m in members:
        m.pos.flags.writeable = m.unit.flags.writeable = False
    for p, lab in resolved.values():
        p.flags.writeable = lab.flags.writeable = False
    grp = Group(gid, root.name, "cell" if port else side, int(label.max()) + 1 if n else 0,
                members, tensors, list(dict.fromkeys(s.reasons)))
    unseen = _unseen_detour(graph, s.cls)
    if unseen:
        grp.reasons.append(unseen)
    bent = [graph.nodes[m.node].name for m in members if _parametrized(graph.nodes[m.node])]
    if bent:  # a user's parametrization: the weight is computed, not stored
        names = ", ".join(f"'{n}'" for n in dict.fromkeys(bent))
        grp.reasons.append(f"{names} compute{'s' if len(set(bent)) == 1 else ''} a weight "
                           "through a parametrization other than weight_norm and "
                           "spectral_norm (orthogonal, a user's, spectral_norm of a 1-D "
                           "weight, ...): remove it first with "
                           "torch.nn.utils.parametrize.remove_parametrizations")
    for nid in dict.fromkeys(m.node for m in members):
        why = _hooked_weight(graph.nodes[nid])
        if why:
            grp.reasons.append(f"'{graph.nodes[nid].name}' computes its weight in a forward "
                               f"pre-hook ({why})")
    if s.zero_checks:
        s.stats_notes += _nonzero_notes(graph, s)
    grp.stats_notes = list(dict.fromkeys(s.stats_notes))
    grp.exact = not grp.stats_notes
    grp.opaque_only = not grp.exact and set(grp.stats_notes) <= s.opaque_notes
    grp.multiple_of = s.multiple
    grp.multiple_why = s.multiple_why
    grp.min_kept, grp.min_kept_why = _least_units(s.min_kept, grp)
    _check_multiple(grp)
    if blocked is not None and s.blocked and not s.whole_blocked and \
            len(grp.reasons) == len(dict.fromkeys(s.reasons)):  # no reason for all units
        bad = unique(label[np.concatenate(s.blocked)])
        if len(bad) < grp.n_units:
            blocked.append(bad)
    if trail is not None:
        trail.extend(s.cls)
        trail.extend(s.invalid)
    return grp


def _nonzero_notes(graph: Graph, s: _Search) -> list[str]:
    """The notes of the zero-free reductions (a sum, a p-norm over the group's dim: see
    :meth:`RuleContext.exact_if_zero`) whose input is not zero at the group's positions in
    the masked original, which zeroes the members' weights only: an op on the way that
    maps 0 to something else (a sigmoid, a bias added along another dim) leaves the removed
    channels there to count in the reduction, and the pruned model lacks them."""
    # outputs whose writers the masked original zeroes: a layer's (its rows, its bias), a
    # bare parameter's; a member without weights (a norm without an affine one) zeroes none
    zeroed = {(nid, dim) for nid, side, dim, _ in s.members
              if side == "param" or side == "out" and graph.nodes[nid].params}
    why = nonzero_by(graph, s.cls, zeroed)
    notes = []
    for keys, note in s.zero_checks:
        ops = [why.get(k) for k in keys]  # ("": zero there; None: a tensor the group does
        if "" in ops:                     # not hold)
            continue
        made = list(dict.fromkeys(op for op in ops if op))
        if len(made) == 1:
            notes.append(f"{note} that '{made[0]}' does not keep at zero (it maps 0 to "
                         "another value), so a removed channel still counts there")
        elif made:
            names = " and ".join(f"'{op}'" for op in made)
            notes.append(f"{note} that {names} do not keep at zero (they map 0 to another "
                         "value), so a removed channel still counts there")
        else:
            notes.append(f"{note}, which DepView cannot tell are zero there")
    return notes


def _least_units(picks: list[tuple[TensorKey, int, str]], grp: Group) -> tuple[int, str]:
    """How many units of ``grp`` must stay so that every op that picks ``k`` positions of a
    tensor of it (``(key, k, why)``, :meth:`RuleContext.keep_at_least`) keeps ``k`` to pick
    from, whichever units go: a unit may hold several of its positions (DeepSeek's routing
    groups, each several experts), so the fewest units whose positions reach ``k`` counting
    the smallest first, plus every unit that holds none there. 1 and "" without picks."""
    least, why = 1, ""
    for key, k, w in picks:
        got = grp.tensors.get(key)
        if got is None:
            continue
        per = np.bincount(got[1], minlength=grp.n_units)
        held = np.sort(per[per > 0])
        need = int(np.searchsorted(np.cumsum(held), k)) + 1 + int((per == 0).sum())
        if need > least or not why:
            least, why = max(need, least), w
    return min(least, max(grp.n_units, 1)), why


def _check_multiple(grp: Group) -> None:
    """Block a group whose units go in multiples as large as its unit count."""
    if grp.multiple_of > 1 and grp.multiple_of >= grp.n_units:
        grp.reasons.append(f"units must be removed in multiples of {grp.multiple_of} "
                           f"({'; '.join(grp.multiple_why)}), but there are only {grp.n_units}")


def split_blocked(grp: Group, bad: IntArray, free_id: int, blocked_id: int
                  ) -> tuple[Group, Group]:
    """A group whose reasons hold for some of its units only (``bad``: the units that reached
    what blocks it: a model output, a buffer, an index select), as two groups: the other
    units, which touch nothing that blocks and so can be pruned, and the blocked ones with
    the reasons. Units are independent by construction, so the two parts' members and
    positions are the group's, divided by unit (each part's units renumbered in order)."""
    is_bad = np.zeros(grp.n_units, dtype=bool)
    is_bad[bad] = True
    parts = []
    for gid, want in ((free_id, False), (blocked_id, True)):
        keep = is_bad == want
        renum = np.cumsum(keep) - 1

        def cut(p: IntArray, u: IntArray, keep=keep, renum=renum) -> tuple[IntArray, IntArray]:
            sel = keep[u]
            p, u = p[sel], renum[u[sel]]
            p.flags.writeable = u.flags.writeable = False
            return p, u

        members = []
        for m in grp.members:
            p, u = cut(m.pos, m.unit)
            if len(p):
                members.append(replace(m, pos=p, unit=u))
        tensors = {}
        for k, (p, u) in grp.tensors.items():
            p, u = cut(p, u)
            if len(p):
                tensors[k] = (p, u)
        part = Group(gid, grp.root, grp.root_side, int(keep.sum()), members, tensors,
                     list(grp.reasons) if want else [], grp.exact, list(grp.stats_notes),
                     grp.multiple_of, list(grp.multiple_why), grp.opaque_only, grp.min_kept,
                     grp.min_kept_why)
        if not want:
            _check_multiple(part)
        parts.append(part)
    return parts[0], parts[1]


def _unseen_detour(graph: Graph, keys) -> str | None:
    """Channels that leave through code the trace cannot see (a ``torch.jit.script``
    function) and come back as a tensor from nowhere: a traced tensor of the group that
    nothing traced reads, and a tensor made inside forward of its shape but along the
    group's dim. Without this, the group pruned through, and what came back was sliced from
    other channels (masked equivalence failed)."""
    unknown = graph.unknown_sources
    if not unknown:
        return None
    consumers = graph.consumers
    for nid, port, dim in keys:
        node = graph.nodes[nid]
        if consumers.get((nid, port)) or len(node.out_shapes) != 1 or \
                node.attrs.get("inplace") is True or isinstance(node.meta, SetItemMeta):
            continue  # (an in-place write's result is its input, read through that)
        shape = node.out_shapes[0]
        for u in unknown:
            other = u.out_shapes[0]
            if len(other) == len(shape) and all(a == b for d, (a, b) in
                                                enumerate(zip(shape, other, strict=True))
                                                if d != dim):
                return (f"'{node.name}' {list(shape)} is read by nothing DepView traced, and "
                        f"'{u.name}' {list(other)} comes from nowhere it traced: code it "
                        "cannot see (a TorchScript function?) seems to make one from the "
                        "other")
    return None


def _unfollowed(graph: Graph, root: Node, dim: int, pos: IntArray, gid: int,
                exc: Exception, port: int = 0) -> Group:
    """The group of a root whose channels a rule failed to follow (a structure the rules do
    not model): the root alone, not prunable, saying so. The model's other groups stand."""
    pos = np.asarray(pos, dtype=np.int64)
    units = np.arange(len(pos), dtype=np.int64)
    for a in (pos, units):
        a.flags.writeable = False
    side = "param" if root.op_type is OpType.PARAMETER else "out"
    member = Member(root.id, root.name, root.module, root.op_type, side, dim, pos, units, port)
    msg = first_line(exc)
    return Group(gid, root.name, "cell" if port else "out", len(pos), [member],
                 {(root.id, port, dim): (pos, units)},
                 [f"DepView could not follow these channels ({type(exc).__name__}: {msg})"])


def _search_or_unfollowed(graph: Graph, root: Node, dim: int, pos: IntArray, gid: int,
                          link_cache: dict, trail: list | None = None,
                          blocked: list | None = None, inner_if_blocked: bool = False,
                          port: int = 0) -> Group:
    """The group of ``pos`` on ``dim`` of ``root``'s output ``port`` (or, if a rule fails, the root
    alone, saying why). A group of one unit from several channels is searched again with every
    ambiguous reshape split at its inner dim (:func:`_map_reshape`'s ``inner``), which is kept
    when it has more units: multi-query attention views q with ``-1`` heads over one shared k,
    whose head dims meet q's in every head. Whole q heads (the ``-1``) and head dims (the
    contraction with k) cross, and merge every unit; q's head dims alone do not.
    ``inner_if_blocked`` (a weight's contracted dim, :func:`_contracted_weight_dims`): a blocked
    group is searched so too, and kept if nothing blocks it: DBRX stacks its experts' weights as
    ``(experts * ffn, hidden)`` and views them ``(-1, ffn, hidden)``, whose ``-1`` would make
    the experts the units (each one picked by a tensor index: blocked)."""
    key = (root.id, port, dim)
    try:
        found, seen = [], []
        grp = _search(graph, root, "out", dim, pos, gid, link_cache, found, blocked=seen,
                      port=port)
        retry = None
        if grp.n_units == 1 and len(pos) > 1 and not grp.reasons:
            retry = {"inner": True}
        elif grp.n_units > 1 and not grp.reasons and _lumped(grp, key):
            retry = {"outer": True}
        elif inner_if_blocked and grp.reasons and len(pos) > 1:
            retry = {"inner": True}
        if retry is not None:
            found2, seen2 = [], []
            alt = _search(graph, root, "out", dim, pos, gid, link_cache, found2,
                          blocked=seen2, port=port, **retry)
            if grp.reasons:
                better = not alt.reasons
            elif "outer" in retry:
                better = alt.n_units > grp.n_units and not alt.reasons and \
                    not _lumped(alt, key)
            else:
                better = alt.n_units > 1
            # the choice read what both searches read: a repeat of the block must agree on
            # all of it (see _Repeats)
            found += found2
            if better:
                grp, seen = alt, seen2
            elif "inner" in retry and grp.n_units == 1 and not grp.reasons:
                # nor at the inner dim: at the outer one (DeepSeek's routing groups view the
                # experts (groups, experts per group), and its group mask, broadcast over each
                # group, merges a group's experts: whole groups are the units)
                found3, seen3 = [], []
                alt = _search(graph, root, "out", dim, pos, gid, link_cache, found3,
                              blocked=seen3, port=port, outer=True)
                found += found3
                if alt.n_units > 1 and not alt.reasons:
                    grp, seen = alt, seen3
    except (DepViewError, IndexError, ValueError) as exc:
        return _unfollowed(graph, root, dim, pos, gid, exc, port)
    if trail is not None:
        trail += found
    if blocked is not None:
        blocked += seen
    return grp


def _lumped(grp: Group, key: TensorKey) -> bool:
    """Does one unit of a group of several own more than half of the root's channels? Then
    reshapes split at their inner dim (the default) have merged what per-head parameters
    hold apart: HF Mamba2's heads, whose ``dt``, ``A`` and ``D`` are one per head, meet the
    head dims of ``view(b, l, num_heads, head_dim)``, and every head became one unit beside
    the state dims. Splitting at the outer dim (whole heads) keeps them apart."""
    got = grp.tensors.get(key)
    if got is None or grp.n_units >= len(got[1]):  # (one channel a unit: a CNN's groups)
        return False
    return int(np.bincount(got[1]).max()) * 2 > len(got[1])


def _parametrized(node: Node) -> bool:
    """Does a parametrization other than weight or spectral normalisation (which the cuts
    follow, see weightnorm.py and spectralnorm.py) compute one of ``node``'s tensors?"""
    return not node.weight_norm and not node.spectral_norm and \
        any(k.startswith("parametrizations.") for k in node.params)


def _hooked_weight(node: Node) -> str | None:
    """How ``node``'s weight is computed by a forward pre-hook that keeps the real tensor
    under another name, one DepView does not follow (it follows torch.nn.utils.prune's masks
    and the old spectral_norm and weight_norm): what to do first, or None."""
    if not node.params or "weight" in node.params or node.spectral_norm or \
            "weight" in node.prune_masked:
        return None
    if "weight_orig" in node.params:
        return ("from weight_orig, in a way DepView does not follow: make the weight a plain "
                "parameter first (remove the hook and keep what it computes)")
    return None


def freeable(graph: Graph, node: Node) -> bool:
    """May this output be offered as free: an output after the first (the prediction, by
    convention: ``logits``), not free yet, while another would stay kept."""
    outs = graph.output_ids
    return node.id != outs[0] and node.id not in graph.free_outputs and \
        len(outs) - len(graph.free_outputs) > 1


def held_by_outputs(graph: Graph, groups: list[Group]) -> dict[str, list[int]]:
    """The outputs that alone keep groups from pruning, each an output that may be set free
    (:func:`freeable`): output path -> ids of the groups whose every reason is such an
    output (a group two outputs hold is listed under both). The CLI's prune line names them
    and the app's group panel offers to free them.

        >>> held_by_outputs(graph, all_groups(graph))   # a small Whisper
        {'encoder_last_hidden_state': [1]}
    """
    out: dict[str, list[int]] = {}
    for g in groups:
        names = [output_of_reason(r) for r in g.reasons]
        if not names or None in names:
            continue
        nodes = [graph.by_name[n] for n in dict.fromkeys(names)]
        if all(freeable(graph, n) for n in nodes):
            for n in nodes:
                out.setdefault(output_path(n), []).append(g.id)
    return out


def no_groups_reason(graph: Graph) -> str:
    """Why a graph has no pruning group at all, in words: the weights sit in a layer DepView
    cannot look into (a TorchScript submodule), or no layer makes channels.

        >>> no_groups_reason(build_graph(Wrapper(torch.jit.script(mlp)), x))
        "'inner' is a TorchScript module, whose ops DepView cannot see: ..."
    """
    for n in graph.nodes:
        custom = n.custom if n.op_type is OpType.CUSTOMIZED else None
        if custom is not None and custom.opaque and n.params:
            return f"'{n.name}' {custom.opaque}"
    return "the model has no layer with channels to prune"


def group_of(graph: Graph, node: str | int, side: str = "out") -> Group:
    """The pruning group of a node's output (``side="out"``) or input (``"in"``) channels,
    computed on the spot from this node (its id is -1: it is not one of :func:`all_groups`).

    For ``"in"`` the group is the one its input tensor's channels belong to. For functional
    ops the channel dim is a guess (1 for 4-D tensors, else the last); look a node up among
    :func:`all_groups` by ``Group.tensors`` to find the groups that really own its tensors.
    """
    n = graph.node(node)
    if side not in ("in", "out"):
        raise DepViewError(f"side must be 'in' or 'out', not {side!r}")
    if side == "out":
        d = out_channel_dim(n)
        if d is None:
            raise DepViewError(f"'{n.name}' has no output channels")
        width = n.out_shapes[0][d]
    else:
        d = in_channel_dim(n)
        if d is None or not graph.in_edges.get(n.id):
            raise DepViewError(f"'{n.name}' has no inputs")
        if n.op_type is OpType.EMBED:  # (its dim 1 was taken for channels: token positions)
            raise DepViewError(f"'{n.name}' reads ids (rows of its table), not channels: its "
                               "input has none to group")
        width = n.in_shapes[0][d]
    try:
        return _search(graph, n, side, d, np.arange(width, dtype=np.int64), -1)
    except (IndexError, ValueError) as exc:  # a structure the rules do not model
        raise DepViewError(f"cannot follow the channels of '{n.name}' ({side}, dim {d}): "
                           f"{type(exc).__name__}: {exc}") from exc


def fixed_sizes(graph: Graph, group: Group) -> list[tuple[Node, TensorKey, int, int]]:
    """Sizes written into traced calls that the group shrinks: ``split(size)`` (the part size
    of equal parts), the explicit sizes of ``view``/``reshape``/``unflatten`` (not the
    ``-1``), the ``normalized_shape`` of ``F.layer_norm``/``F.rms_norm`` and the sizes of a fill
    (``torch.zeros(layers, b, self.hidden)``, see ``optypes.FILLS``). Each as
    ``(node, tensor dim, its size before pruning, parts)``: after pruning the call needs the
    tensor dim's new size divided by ``parts``, which Python code must compute or store."""
    out = []
    for node in graph.nodes:
        meta = node.meta
        if (node.op_type is OpType.SPLIT and node.target == "split"
                and isinstance(meta, SplitMeta) and meta.computed and len(set(meta.sizes)) == 1
                and graph.in_edges.get(node.id)):
            e = graph.in_edges[node.id][0]
            key = (e.source, e.source_port, meta.dim)
            if key in group.tensors:
                out.append((node, key, node.in_shapes[0][meta.dim], len(meta.sizes)))
        elif (node.op_type is OpType.RESHAPE and node.target in ("view", "reshape")
              and isinstance(meta, ReshapeMeta)):
            out += [(node, (node.id, 0, d), size, 1) for d, size in enumerate(meta.out_shape)
                    if d != meta.inferred and (node.id, 0, d) in group.tensors]
        elif (node.op_type is OpType.RESHAPE and node.target == "unflatten"
              and isinstance(meta, ReshapeMeta)):  # nn.Unflatten(1, (C, H, W))
            out += [(node, (node.id, 0, d), meta.out_shape[d], 1)
                    for d in _unflattened_dims(meta)
                    if d != meta.inferred and (node.id, 0, d) in group.tensors]
        elif (node.op_type is OpType.REDUCTION and isinstance(meta, ReduceMeta)
              and meta.op in SHAPE_NORMS):  # normalized_shape=(self.dim,)
            out += [(node, (node.id, 0, d), node.out_shapes[0][d], 1) for d in meta.dims
                    if (node.id, 0, d) in group.tensors]
        elif (query := mha_call_query(node)) is not None:
            # embed_dim_to_check is the query's width, num_heads that width over head_dim
            port, width, heads = query
            e = graph.in_edges[node.id][port]
            key = (e.source, e.source_port, len(node.in_shapes[port]) - 1)
            if key in group.tensors:
                out += [(node, key, width, 1)]
                if heads > 1:
                    out += [(node, key, width, width // heads)]
        elif isinstance(meta, CountsMeta) and (node.id, 0, meta.dim) in group.tensors:
            # histc(ids, bins=self.num_experts): the experts a router can pick
            out.append((node, (node.id, 0, meta.dim), node.out_shapes[0][meta.dim], 1))
        elif node.op_type is OpType.CONSTANT and node.target in FILLS:
            out += [(node, (node.id, 0, d), size, 1) for d, size in enumerate(node.out_shapes[0])
                    if (node.id, 0, d) in group.tensors]
    return out


def split_width(graph: Graph, node: Node, dim: int) -> tuple[TensorKey, int] | None:
    """For a ``view``/``reshape`` output ``dim`` that one input dim was split into, with the
    dims beside it (``view(b, n, self.heads, self.dim // self.heads)``): that input dim's key
    and width, which code may hold and divide itself. None for any other regrouping."""
    meta, edges = node.meta, graph.in_edges.get(node.id)
    if not isinstance(meta, ReshapeMeta) or not edges:
        return None
    a, b = meta.in_shape, meta.out_shape
    k = len(b) - len(a) + 1
    for d in range(len(a)):
        if k > 1 and d <= dim < d + k and b[:d] == a[:d] and b[d + k:] == a[d + 1:] \
                and math.prod(b[d:d + k]) == a[d]:
            return (edges[0].source, edges[0].source_port, d), a[d]
    return None


def _unflattened_dims(meta: ReshapeMeta) -> list[int]:
    """The output dims an ``unflatten`` call wrote sizes for: those that one input dim
    became, found from the shapes (every split point that fits, when several do)."""
    a, b = meta.in_shape, meta.out_shape
    k = len(b) - len(a) + 1
    out: list[int] = []
    for d in range(len(a)):
        if b[:d] == a[:d] and b[d + k:] == a[d + 1:] and math.prod(b[d:d + k]) == a[d]:
            out += [i for i in range(d, d + k) if i not in out]
    return out


def fixed_slices(graph: Graph, group: Group) -> list[tuple[Node, DimSlice]]:
    """Slices of a dim the group shrinks that do not span it (``qkv[..., :query_pos]``):
    ``(node, the slice)``. Their bounds were numbers when traced; after pruning they must
    follow the kept positions, which code that computes them from a config does not do."""
    out = []
    for node in graph.nodes:
        meta = node.meta
        edges = graph.in_edges.get(node.id)
        if node.op_type is not OpType.SLICE or not isinstance(meta, SliceMeta) or not edges:
            continue
        e = edges[0]
        out += [(node, s) for s in meta.slices
                if (e.source, e.source_port, s.dim) in group.tensors
                and (s.start, s.stop, s.step) != (0, meta.in_shape[s.dim], 1)]
    return out


def slice_spans(graph: Graph, group: Group) -> list[tuple[Node, TensorKey, int, int]]:
    """The position ranges whose sizes the bounds of :func:`fixed_slices` may have been
    computed from, as ``(node, the sliced tensor dim, lo, hi)``: a slice ``[a:b]`` of a dim
    of size n gives ``[0:a]`` and ``[0:b]`` (a bound is an offset: Phi-3's ``query_pos``) and
    ``[a:b]`` (a width: ``num_key_value_heads * head_dim``), each of positive size < n;
    steps other than 1 give none."""
    out = []
    for node, s in fixed_slices(graph, group):
        if s.step != 1:
            continue
        e = graph.in_edges[node.id][0]
        key = (e.source, e.source_port, s.dim)
        n = node.meta.in_shape[s.dim]
        for lo, hi in ((0, s.start), (0, s.stop), (s.start, s.stop)):
            if 0 < hi - lo < n and (node, key, lo, hi) not in out:
                out.append((node, key, lo, hi))
    return out


def split_sizes(graph: Graph, group: Group) -> list[tuple[Node, TensorKey, tuple[int, ...]]]:
    """Splits into given sizes (``torch.split(x, self.splits, 1)``, timm's ``MixedConv2d``)
    whose split dim the group shrinks: ``(node, the split tensor dim, the sizes)``. After
    pruning, each size must be its part's kept width, which Python code must store."""
    out = []
    for node in graph.nodes:
        meta = node.meta
        if (node.op_type is OpType.SPLIT and node.target == "split"
                and isinstance(meta, SplitMeta) and not meta.computed and len(meta.sizes) > 1
                and graph.in_edges.get(node.id)):
            e = graph.in_edges[node.id][0]
            key = (e.source, e.source_port, meta.dim)
            if key in group.tensors:
                out.append((node, key, meta.sizes))
    return out


def same_members(a: Group, b: Group) -> bool:
    """Whether two groups take the same units of the same tensors' dims."""
    return a.n_units == b.n_units and [(m.node, m.side, m.dim) for m in a.members] == \
        [(m.node, m.side, m.dim) for m in b.members]


def outer_alternative(graph: Graph, group: Group, over_inferred: bool = False) -> Group | None:
    """The same root's group when every reshape whose split the shapes leave open takes its
    outer dim (whole heads instead of head dims: ``view(b, -1, self.num_heads,
    self.head_dim)`` leaves it open), or None when that gives the same group.
    ``over_inferred``: also where a ``-1`` would decide (Falcon-40B's ``view(b, s,
    self.num_kv_heads, -1, head_dim)``, whose ``-1`` holds a kv group's q heads, k and v);
    and if that gives no group or a blocked one, once more with the second outermost of
    splits into three or more dims: a fused projection's ``reshape(seq, 3, heads, -1)``
    (Qwen2-VL's vision attention), whose outermost dim is q, k or v, which ``unbind``
    takes apart."""
    root = graph.by_name[group.root]
    d = root_dim(root)
    if group.root_side != "out" or d is None:
        return None
    key = (root.id, 0, d)
    if key not in group.tensors:
        return None
    pos = unique(group.tensors[key][0])
    modes = (OVER_INFERRED, PAST_OUTERMOST) if over_inferred else (True,)
    alt = None
    for outer in modes:
        try:
            found = _search(graph, root, "out", d, pos, group.id, outer=outer)
        except (DepViewError, IndexError, ValueError):  # a rule failed: no alternative
            continue
        if not same_members(found, group):
            alt = found
            if not found.reasons:
                break
    return alt


#: the most elements an index array :func:`_root_parts` follows may have (its regroupings
#: copy it: 64 MB at most); a larger root output is not taken apart
_PARTS_MAX_ELEMENTS = 1 << 24


def _root_parts(graph: Graph, root: Node, dim: int) -> list[IntArray]:
    """The positions of ``root``'s output ``dim`` that each output of the first split or
    unbind taking that output apart holds, when nothing but row-major regroupings (view,
    reshape, flatten, unflatten) lies between and the parts hold disjoint positions:
    Falcon-7B's ``query_key_value`` viewed ``(..., -1, head_dim)`` and split ``[num_heads,
    1, 1]`` gives its q rows, k rows and v rows. Empty when there is no such split."""
    shape = root.out_shapes[0] if root.out_shapes else ()
    if not shape or math.prod(shape) > _PARTS_MAX_ELEMENTS:
        return []
    n = shape[dim]
    at = [1] * len(shape)
    at[dim] = n
    idx = np.broadcast_to(np.arange(n, dtype=np.int32).reshape(at), shape)
    key = (root.id, 0)
    for _ in range(16):
        cons = graph.consumers.get(key, [])
        if len(cons) != 1:
            return []
        node = graph.nodes[cons[0].target]
        meta = node.meta
        if isinstance(meta, ReshapeMeta) and tuple(meta.in_shape) == idx.shape:
            idx = idx.reshape(meta.out_shape)
            key = (node.id, 0)
            continue
        if isinstance(meta, SplitMeta) and sum(meta.sizes) == idx.shape[meta.dim]:
            parts = [np.take(idx, range(o, o + s), axis=meta.dim)
                     for o, s in zip(meta.offsets, meta.sizes, strict=True)]
        elif isinstance(meta, UnbindMeta) and meta.n == idx.shape[meta.dim]:
            parts = [np.take(idx, [k], axis=meta.dim) for k in range(meta.n)]
        else:
            return []
        found = [unique(p).astype(np.int64) for p in parts]
        if len(found) < 2 or sum(len(p) for p in found) != n:  # (a part reads every unit)
            return []
        return found
    return []


def part_alternative(graph: Graph, group: Group) -> Group | None:
    """For a group of a root whose output a split takes apart (:func:`_root_parts`), a group
    of one part's positions alone that is not blocked, has several units, and stays within
    that part, largest part first; else None. In Falcon-7B's fused multi-query attention
    the search from every row of ``query_key_value`` meets the one k head that ``repeat_kv``
    copies to every q head (whole heads merge into one unit) and the rotary table (head dims
    are blocked); the q rows alone are whole q heads, which the k and v rows, shared by all
    of them, do not join."""
    root = graph.by_name[group.root]
    d = root_dim(root)
    if group.root_side != "out" or d is None:
        return None
    parts = sorted(_root_parts(graph, root, d), key=len, reverse=True)
    wider = None  # the first that reaches other parts whole, but not all of them
    for part in parts:
        if len(part) < 2:
            continue
        for outer in (False, True):
            try:
                found = _search(graph, root, "out", d, part, group.id, outer=outer)
            except (DepViewError, IndexError, ValueError):
                continue
            got = found.tensors.get((root.id, 0, d))
            if found.reasons or found.n_units <= 1 or got is None:
                continue
            held = unique(got[0])
            if np.array_equal(held, part):
                return found
            # MobileViTV2's linear attention: split [1, d, d], its keys times its values;
            # the query's one channel (a score) cannot go, the key/value pairs can
            covered = [q for q in parts if np.isin(q, held).any()]
            if wider is None and len(covered) < len(parts) and \
                    sum(len(q) for q in covered) == len(held) and \
                    all(np.isin(q, held).all() for q in covered):
                wider = found
    return wider


class _Template:
    """A group found by a full search, kept to be reused for a root that repeats its block."""

    def __init__(self, root: int, group: Group, trail: list[TensorKey], port: int = 0):
        self.root = root
        self.port = port  # the root's output port
        self.group = group
        self.trail = trail
        self.tensors: list[tuple[int, int]] | None = None  # visited; filled when first needed
        self.nodes: list[int] = []  # nodes a rule ran on
        self.inputs: list[tuple[int, list[tuple[int, int, int, bool]]]] = []
        self.producers: list[int] = []  # nodes whose input 0's producer a rule reads


class _Repeats:
    """Reuse of groups across repeated blocks (the 32 layers of a decoder, the bottlenecks of a
    ResNet stage).

    A search is a deterministic function of what it reads: the fields rules look at (type,
    target, metadata, shapes, attributes, parameter names and shapes) of the nodes it runs
    rules on, the consumers of every tensor it visits, and the input edges of those nodes
    (which tensor each port reads, when pairs are sent there; the reshape rule also reads its
    input's producer). If all of these agree at a fixed node-id offset ``delta`` (names aside;
    an input the group never reaches, like RoPE tables shared by every layer, may be the same
    node), the search from ``root + delta`` gives the same group shifted by ``delta``:
    :meth:`find` checks exactly that before reusing one. Only groups with no reasons and no
    notes are reused (those texts name nodes)."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.fps: dict[int, tuple] = {}
        self.templates: dict[tuple, list[_Template]] = {}

    def fp(self, nid: int) -> tuple:
        """Every field of a node that a rule may read (not its name or module)."""
        f = self.fps.get(nid)
        if f is None:
            n = self.g.nodes[nid]
            f = self.fps[nid] = (n.op_type, n.target, n.meta, n.in_shapes, n.out_shapes,
                                 n.attrs, n.param_shapes, tuple(n.params), n.custom,
                                 n.own_forward, nid in self.g.sharing,
                                 nid in self.g.free_outputs, nid in self.g.shape_read,
                                 n.shape_only)
        return f

    @staticmethod
    def key(node: Node, port: int, dim: int) -> tuple:
        return node.op_type, node.target, node.out_shapes, port, dim

    def add(self, node: Node, port: int, dim: int, grp: Group, trail: list[TensorKey]) -> None:
        sharing = self.g.sharing
        if grp.reasons or grp.stats_notes or grp.min_kept_why or \
                any(m.node in sharing for m in grp.members):
            return  # texts name nodes; ties reach nodes at no fixed offset
        self.templates.setdefault(self.key(node, port, dim), []).append(
            _Template(node.id, grp, trail, port))

    def _prepare(self, t: _Template) -> None:
        g = self.g
        t.tensors = list(dict.fromkeys((k[0], k[1]) for k in t.trail))
        visited = set(t.tensors)
        nodes = dict.fromkeys(k[0] for k in t.tensors)
        for k in t.tensors:
            for e in g.consumers.get(k, ()):
                nodes[e.target] = None
        t.nodes = list(nodes)
        t.inputs = [(nid, [(e.source, e.source_port, e.target_port,
                            (e.source, e.source_port) in visited)
                           for e in g.in_edges.get(nid, ())]) for nid in t.nodes]
        t.producers = [nid for nid in t.nodes if g.nodes[nid].op_type in READS_INPUT_PRODUCER
                       and g.in_edges.get(nid)]

    def _near(self, t: _Template, delta: int) -> bool:
        """A cheap first look: the root and the consumers of its output agree."""
        fp, consumers = self.fp, self.g.consumers
        if fp(t.root) != fp(t.root + delta):
            return False
        a, b = consumers.get((t.root, t.port), ()), consumers.get((t.root + delta, t.port), ())
        if len(a) != len(b):
            return False
        for x, y in zip(a, b, strict=True):
            if (x.target + delta != y.target or x.target_port != y.target_port
                    or fp(x.target) != fp(y.target)):
                return False
        return True

    def _same(self, t: _Template, delta: int) -> bool:
        g, fp = self.g, self.fp
        n_nodes = len(g.nodes)
        for nid in t.nodes:
            if not 0 <= nid + delta < n_nodes or fp(nid) != fp(nid + delta):
                return False
        in_edges, consumers = g.in_edges, g.consumers
        for nid, edges in t.inputs:
            other = in_edges.get(nid + delta, ())
            if len(edges) != len(other):
                return False
            for (src, sport, tport, reached), y in zip(edges, other, strict=True):
                if sport != y.source_port or tport != y.target_port:
                    return False
                if reached and src + delta != y.source:
                    return False
        for nid in t.producers:
            if fp(in_edges[nid][0].source) != fp(in_edges[nid + delta][0].source):
                return False
        for nid, port in t.tensors:
            a, b = consumers.get((nid, port), ()), consumers.get((nid + delta, port), ())
            if len(a) != len(b):
                return False
            for x, y in zip(a, b, strict=True):
                if x.target + delta != y.target or x.target_port != y.target_port:
                    return False
        return True

    def find(self, node: Node, port: int, dim: int, gid: int) -> Group | None:
        """The group of ``node``'s whole output ``port``'s ``dim`` made from a verified
        repeat, or None."""
        for t in reversed(self.templates.get(self.key(node, port, dim), ())[-3:]):
            delta = node.id - t.root
            if not self._near(t, delta):
                continue
            if t.tensors is None:
                self._prepare(t)
            if self._same(t, delta):
                return self._shifted(t, delta, gid, node)
        return None

    def _shifted(self, t: _Template, delta: int, gid: int, root: Node) -> Group:
        nodes = self.g.nodes
        src = t.group
        members = []
        for m in src.members:
            n = nodes[m.node + delta]
            members.append(Member(n.id, n.name, n.module, m.op_type, m.side, m.dim, m.pos,
                                  m.unit, m.port))
        tensors = {(k[0] + delta, k[1], k[2]): v for k, v in src.tensors.items()}
        grp = Group(gid, root.name, src.root_side, src.n_units, members, tensors, [],
                    src.exact, [], src.multiple_of, src.multiple_why)
        return grp


def units_are_heads(graph: Graph, group: Group) -> bool:
    """Whether a group's units are attention heads (or, with grouped-query attention, a kv
    head and its query heads): each unit owns positions on a dim of an attention or matmul
    operand that is neither of the two the op works on: the heads dim of q, k or v, ``(B,
    heads, L, head_dim)``. A plan's ``round_to`` then counts heads. (HF Mamba2's mixer group
    holds whole heads and state dims: its units are not all heads.)"""
    seen = np.zeros(group.n_units, dtype=bool)
    for unit in _head_dim_units(graph, group):
        seen[unit] = True
        if seen.all():
            return True
    return False


def query_heads_per_unit(graph: Graph, group: Group) -> int:
    """Of a group whose units are heads (:func:`units_are_heads`), how many positions a unit
    holds on a heads dim at most: 1 for plain heads, n_rep with grouped-query attention (a
    kv head and its query heads), 0 if its units are not heads."""
    if not units_are_heads(graph, group):
        return 0
    return max(int(np.bincount(unit).max()) for unit in _head_dim_units(graph, group))


def _head_dim_units(graph: Graph, group: Group):
    """The units of the group's positions on each tensor it reaches on a heads dim: a dim
    of an attention or matmul operand that is neither of the two the op works on."""
    for (nid, port, dim), (pos, unit) in group.tensors.items():
        shapes = graph.nodes[nid].out_shapes
        if port >= len(shapes) or not 0 < dim < len(shapes[port]) - 2 or not len(pos):
            continue
        if any(graph.nodes[e.target].op_type in (OpType.ATTENTION, OpType.MATMUL)
               for e in graph.consumers.get((nid, port), ())):
            yield unit


def all_groups(graph: Graph, reuse: bool = True) -> list[Group]:
    """Every group of the model, each once, in the order of their root layers.

    Roots are layers that create channels (conv, linear, embedding, recurrent, custom) and
    bare parameters; a root whose channels already belong to a group starts no new one. A
    group whose blockers only some of its units reach is returned as two groups with the
    same root (:func:`split_blocked`): first the other units, prunable, then those units.
    ``reuse`` (default) lets a root that repeats an earlier root's block, checked node by node
    (:class:`_Repeats`), take that group shifted instead of searching again; ``False`` searches
    every root (the same result, slower; the tests compare the two).
    """
    roots = [(node, 0, d) for node in graph.nodes
             if node.op_type in _ROOT_TYPES and (d := root_dim(node)) is not None]
    extra = _contracted_weight_dims(graph, [(node, d) for node, _, d in roots])
    roots = _with_cell_roots(roots) + [(node, 0, d) for node, d in extra]
    extra_keys = {(node.id, d) for node, d in extra}
    root_keys = {(node.id, port, d) for node, port, d in roots}
    covered: dict[TensorKey, np.ndarray] = {}  # root tensors: positions some group owns
    groups: list[Group] = []
    link_cache: dict = {}
    repeats = _Repeats(graph) if reuse else None
    for node, port, d in roots:
        cov = covered.get((node.id, port, d))
        grp = None
        blocked: list[IntArray] = []
        if cov is None:
            if repeats is not None:
                grp = repeats.find(node, port, d, len(groups))
            if grp is None:
                trail: list[TensorKey] = []
                pos = np.arange(node.out_shapes[port][d], dtype=np.int64)
                grp = _search_or_unfollowed(graph, node, d, pos, len(groups), link_cache,
                                            trail, blocked, (node.id, d) in extra_keys, port)
                if repeats is not None:
                    repeats.add(node, port, d, grp, trail)
        else:
            pos = np.nonzero(~cov)[0]
            if len(pos) == 0:
                continue
            grp = _search_or_unfollowed(graph, node, d, pos, len(groups), link_cache,
                                        blocked=blocked, port=port)
        parts = [grp]
        if blocked:  # some units reach what blocks: the others form a prunable group
            parts = list(split_blocked(grp, blocked[0], len(groups), len(groups) + 1))
        if (node.id, d) in extra_keys:
            # an expert dim, a width the model input gives: no blocked group to show (a
            # prunable part comes first, so its id is already the next one)
            parts = [p for p in parts if not p.reasons]
        groups += parts
        for key in root_keys.intersection(grp.tensors):
            arr = covered.get(key)
            if arr is None:
                arr = covered[key] = np.zeros(graph.nodes[key[0]].out_shapes[key[1]][key[2]],
                                              bool)
            arr[grp.tensors[key][0]] = True
    return groups
