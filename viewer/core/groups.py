"""Pruning groups: which positions of which tensors must go together.

The model: a *unit* is one prunable choice (one channel, one head, ...). Starting from a layer
whose output channels are born there (a conv, a linear, an embedding, ...), each output channel
is a unit. Units flow as ``(unit, position)`` pairs along one dim of each tensor, through every
op by the rule of its :class:`OpType` (:data:`RULES`), forward and backward: through concat
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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from .errors import DepViewError
from .graph import Graph, Node
from .handlers import (
    CUTS,
    cell_port,
    cell_width,
    conv_width,
    mha_separate,
    node_cuts,
    rnn_cell,
    rnn_hidden,
)
from .meta import (
    WRITE,
    ConcatMeta,
    DimSlice,
    EinsumMeta,
    ElementwiseMeta,
    ExpandMeta,
    MatmulMeta,
    MhaCallMeta,
    PadMeta,
    PermuteMeta,
    ReduceMeta,
    ReshapeMeta,
    SetItemMeta,
    SliceMeta,
    SolveMeta,
    SplitMeta,
    StridedMeta,
    UnbindMeta,
    WindowsMeta,
)
from .optypes import (
    CHANNEL_SHUFFLES,
    COMPLEX_VIEWS,
    FILLS,
    INDEX_OUTPUTS,
    MASKED_SCATTERS,
    PAIR_REDUCTIONS,
    SEQUENCE_PACKING,
    SHAPE_NORMS,
    OpGroup,
    OpType,
    conv_prunes_whole_groups,
    gn_prunes_whole_groups,
)

IntArray = np.ndarray
TensorKey = tuple[int, int, int]  # (node id, output port, dim)


class Flow(NamedTuple):
    """Pairs moving across a node: to its ``side`` ("in"/"out") ``port`` along ``dim``."""

    side: str
    port: int
    dim: int
    units: IntArray
    pos: IntArray


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
        return np.unique(self.pos[hit[self.unit]])


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

    @property
    def prunable(self) -> bool:
        return not self.reasons and self.n_units > 1

    @property
    def reason(self) -> str:
        if self.reasons:
            return "; ".join(dict.fromkeys(self.reasons))
        if self.n_units <= 1:
            return "only one unit: removing it would remove the whole tensor"
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
                 "side": m.side, "dim": m.dim, "width": int(len(np.unique(m.pos)))}
            if m.port:
                d["port"] = m.port
            if with_indices:
                d["indices"] = [int(i) for i in np.unique(m.pos)]
            members.append(d)
        return {"id": self.id, "root": self.root, "root_side": self.root_side,
                "channels": self.n_units, "members": members, "prunable": self.prunable,
                "reason": self.reason, "exact": self.exact, "multiple_of": self.multiple_of,
                "multiple_why": "; ".join(self.multiple_why)}


# --------------------------------------------------------------------------------------------
# Helpers for rules.


def _fwd_dim(out_ndim: int, in_ndim: int, d: int) -> int:
    return d + out_ndim - in_ndim  # broadcasting aligns shapes on the right


def _norm(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


class _Ctx:
    """What a rule may do besides returning flows: record members and reasons."""

    def __init__(self, search: _Search):
        self.search = search

    def member(self, node: Node, side: str, dim: int, units: IntArray, pos: IntArray,
               port: int = 0) -> None:
        self.search.add_member(node, side, dim, units, pos, port)

    def block(self, reason: str) -> None:
        """The group is not prunable: for the units of the batch a rule is being given (the
        pairs that reached what blocks), or for all units when no batch is."""
        s = self.search
        s.reasons.append(reason)
        if s.cur is None:
            s.whole_blocked = True
        else:
            s.blocked.append(s.batches[s.cur][1])

    def multiple_of(self, n: int, why: str) -> None:
        """Units go in multiples of ``n``; ``why`` says so in words."""
        self.search.multiple = math.lcm(self.search.multiple, int(n))
        if why not in self.search.multiple_why:
            self.search.multiple_why.append(why)

    def inexact(self, note: str) -> None:
        self.search.stats_notes.append(note)

    def opaque(self, note: str) -> None:
        """Inexact for all DepView knows: a layer's own forward, which no rule reads."""
        self.search.stats_notes.append(note)
        self.search.opaque_notes.add(note)

    def merge(self, units: IntArray) -> None:
        self.search.union_all(units)


Rule = Callable[[Graph, Node, str, int, int, IntArray, IntArray, _Ctx], list[Flow]]


def _source_block(what: str) -> Rule:
    def rule(g, node, side, port, dim, units, pos, ctx):
        ctx.block(f"it reaches {what} '{node.name}'")
        return []
    return rule


def _output_rule(g, node, side, port, dim, units, pos, ctx):
    """A model output blocks the group, unless the user let its width change (a detector's
    hidden states beside its logits and boxes: see ``Pruner(free_outputs=...)``)."""
    if node.id not in g.free_outputs:
        ctx.block(f"it reaches the model output '{node.name}'")
    return []


def _constant_rule(g, node, side, port, dim, units, pos, ctx):
    """A tensor made inside forward blocks the group, unless a fill (``torch.zeros(b,
    self.hidden)``) made it: the same value everywhere fits any width, and the size it was
    made with is one validation must see follow (:func:`fixed_sizes`)."""
    if node.target not in FILLS:
        shape = list(node.out_shapes[0]) if node.out_shapes else []
        ctx.block(f"it reaches a tensor computed inside forward '{node.name}' {shape} from "
                  "neither inputs nor weights (a position or frequency table, a mask): its "
                  "values do not follow a pruned width")
    return []


def _channel_dim(shape) -> int:
    return 1 if len(shape) >= 2 else 0


# --- layers whose channels are born (out) and consumed (in) -------------------------------


def _layer_rule(out_dim: Callable[[Node], int], in_dim: Callable[[Node], int],
                passthrough: bool = False) -> Rule:
    """Conv/linear-like: ``out_dim`` of output 0 and ``in_dim`` of input 0 are channel dims.
    Other dims pass straight through when input and output agree on them (linear on tokens).
    ``passthrough`` couples in and out channels index by index (norms, depthwise convs)."""

    def rule(g, node, side, port, dim, units, pos, ctx):
        if port != 0:
            return []
        if node.own_forward:
            _own_forward_note(node, ctx)
        if not node.in_shapes:  # called without a tensor: a position embedding given a size
            if side == "out" and dim == _norm(out_dim(node), len(node.out_shapes[0])):
                ctx.member(node, side, dim, units, pos)
            return []
        nd_in, nd_out = len(node.in_shapes[0]), len(node.out_shapes[0])
        od, id_ = _norm(out_dim(node), nd_out), _norm(in_dim(node), nd_in)
        if side == "out" and dim == od or side == "in" and dim == id_:
            ctx.member(node, side, dim, units, pos)
            if passthrough:
                other = "in" if side == "out" else "out"
                ctx.member(node, other, id_ if side == "out" else od, units, pos)
                return [Flow(other, 0, id_ if side == "out" else od, units, pos)]
            return []
        # a non-channel dim: passes through if both sides have it with the same size
        other = "in" if side == "out" else "out"
        od2 = dim - nd_out + nd_in if side == "out" else dim + nd_out - nd_in
        shapes_from = node.out_shapes[0] if side == "out" else node.in_shapes[0]
        shapes_to = node.in_shapes[0] if side == "out" else node.out_shapes[0]
        same = 0 <= od2 < len(shapes_to) and shapes_to[od2] == shapes_from[dim] \
            and nd_in == nd_out
        if node.op_type in (OpType.LINEAR, OpType.LN, OpType.PRELU, OpType.EMBED):
            return [Flow(other, 0, od2, units, pos)] if same else []
        if dim == 0:  # the batch
            return [Flow(other, 0, od2, units, pos)] if same else []
        if same and _pointwise(node, dim):  # a 1x1 kernel: position i reads position i
            return [Flow(other, 0, od2, units, pos)]
        verb = "normalises over" if node.op_type in (OpType.IN, OpType.GN) else \
            "slides a kernel over"
        return _window_dim(node, same, verb, ctx, [Flow(other, 0, od2, units, pos)])

    return rule


def _pointwise(node: Node, dim: int) -> bool:
    """Does a conv read position i of a spatial ``dim`` only at position i (kernel 1, stride
    1)?"""
    k = dim - 1 - _conv_channel(node, len(node.in_shapes[0]))  # ([N,] C, spatial...)
    ks, st = node.attrs.get("kernel_size"), node.attrs.get("stride")
    return isinstance(ks, (list, tuple)) and isinstance(st, (list, tuple)) and \
        0 <= k < len(ks) and ks[k] == 1 and st[k] == 1


def _window_dim(node: Node, same: bool, verb: str, ctx: _Ctx, flows: list[Flow]) -> list[Flow]:
    """The tracked dim is one a layer reads through a window (a conv's length, a pool's
    width): a position then sees its neighbours, which pruning changes. With the size kept
    (stride 1, "same" padding: ECA-Net's conv over channels) the group is inexact; a window
    that changes the size blocks it. Norms with per-instance statistics are inexact."""
    if node.op_type is OpType.BN:  # per channel in eval: position i stays position i
        return flows if same else []
    if not same:
        ctx.block(f"'{node.name}' {verb} the pruned dim and changes its size")
        return []
    ctx.inexact(f"'{node.name}' {verb} the pruned dim")
    return flows


def _own_forward_note(node: Node, ctx: _Ctx) -> None:
    ctx.opaque(f"'{node.name}' ({node.own_forward}) replaces the forward of the torch layer it "
                f"extends: DepView prunes it as a {node.op_type.name} and cannot check what its "
                "own forward computes")


def _conv_channel(node: Node, ndim: int) -> int:
    """A conv's channel dim in a tensor of ``ndim`` dims: 1 with a batch (N, C, spatial...),
    0 for an unbatched input (C, spatial...), which torch's convs take too."""
    ks = node.attrs.get("kernel_size")
    if isinstance(ks, (list, tuple)):
        spatial = len(ks)
    elif len(node.in_shapes) > 1 and len(node.in_shapes[1]) >= 3:  # F.conv2d(x, w): w's rank
        spatial = len(node.in_shapes[1]) - 2
    else:
        return 1
    return 0 if ndim == spatial + 1 else 1


def _conv_out(node: Node) -> int:
    return _conv_channel(node, len(node.out_shapes[0]))


def _conv_in(node: Node) -> int:
    return _conv_channel(node, len(node.in_shapes[0])) if node.in_shapes else 1


def _grouped_conv_rule(base: Rule) -> Rule:
    """Grouped convolutions: every group must keep the same width, so a unit removes the
    channel at the same offset of every group (channels c and c + k*C/groups merge). With one
    input channel per group (a depthwise conv with a channel multiplier, or a transposed
    conv upsampling each channel alone) a unit is a whole group instead: input channel g and
    its outputs, and ``groups`` shrinks."""

    def rule(g, node, side, port, dim, units, pos, ctx):
        groups = int(node.attrs.get("groups", 1))
        c = _conv_channel(node, len(node.in_shapes[0])) if node.in_shapes else 1
        if groups == 1 or port != 0 or dim != c:
            return base(g, node, side, port, dim, units, pos, ctx)
        if conv_prunes_whole_groups(conv_width(node, "in"), groups):
            co = conv_width(node, "out") // groups
            grp = pos if side == "in" else pos // co
            out_pos = (grp[:, None] * co + np.arange(co)[None, :]).reshape(-1)
            out_units = np.repeat(units, co)
            ctx.member(node, "in", c, units, grp)
            ctx.member(node, "out", c, out_units, out_pos)
            flows = [Flow("out", 0, c, out_units, out_pos)]  # the whole group's outputs
            return flows + [Flow("in", 0, c, units, grp)] if side == "out" else flows
        width = conv_width(node, side)
        per = width // groups
        if per == 1:
            ctx.block(f"'{node.name}' has one {'input' if side == 'in' else 'output'} channel "
                      f"per group (groups={groups}): removing one would remove a group")
            return []
        pos_all = ((pos % per)[:, None] + per * np.arange(groups)[None, :]).reshape(-1)
        units_all = np.repeat(units, groups)
        ctx.member(node, side, dim, units_all, pos_all)
        return [Flow(side, 0, dim, units_all, pos_all)]

    return rule


def _gn_rule() -> Rule:
    base = _layer_rule(lambda n: 1, lambda n: 1, passthrough=True)

    def rule(g, node, side, port, dim, units, pos, ctx):
        if port == 0 and dim == 1:
            # GroupNorm(G, C) needs each group to keep the same width: a unit must remove the
            # channel at the same offset of every group (channels c and c + k*C/G are merged).
            c = node.in_shapes[0][1]
            groups = int(node.attrs.get("num_groups", 1))
            per = c // groups
            if gn_prunes_whole_groups(c, groups):  # a unit is one whole group of channels
                pos_all = (pos // per)[:, None] * per + np.arange(per)[None, :]
                units_all = np.repeat(units, per)
                took = np.bincount(pos // per)  # positions that came, per norm group
                whole = per
            else:  # a unit is the same offset in every group
                ctx.inexact(f"'{node.name}' (GroupNorm) normalises over pruned channels")
                pos_all = (pos % per)[:, None] + per * np.arange(groups)[None, :]
                units_all = np.repeat(units, groups)
                took, whole = np.bincount(pos % per), groups
            pos_all = pos_all.reshape(-1)
            flows = base(g, node, side, port, dim, units_all, pos_all, ctx)
            if not ((took == 0) | (took == whole)).all():
                # the channels a unit takes with it are channels of the tensor it came by,
                # too: when a group of the norm straddles a concat's parts (a UNet's skip
                # joined to the upsampled map, 32 + 16 channels in groups of 6), the other
                # part's channels join the unit there as well (positions come once each)
                flows.append(Flow(side, 0, dim, units_all, pos_all))
            return flows
        return base(g, node, side, port, dim, units, pos, ctx)

    return rule


def _ln_rule(g, node, side, port, dim, units, pos, ctx):
    """LayerNorm/RMSNorm over the trailing ``normalized_shape`` dims: positions pass through;
    on a normalised dim the layer is a member, with its affine tensors or without (then the
    member only says its ``normalized_shape`` shrinks: ``LayerNorm(d, elementwise_affine=
    False)``, whose last dim alone can follow, see ``handlers._refresh_ln``)."""
    if port != 0:
        return []
    if node.own_forward:
        _own_forward_note(node, ctx)
    shape = node.in_shapes[0]
    nd = len(shape)
    w = node.param_shapes.get("weight") or node.param_shapes.get("bias")
    n_norm = len(w) if w else len(node.attrs.get("normalized_shape") or (1,))
    other = "in" if side == "out" else "out"
    if dim >= nd - n_norm:
        if not w and dim != nd - 1:
            ctx.block(f"'{node.name}' has no weight and normalises over the pruned dim before "
                      "its last: DepView cannot update its normalized_shape there")
            return []
        ctx.inexact(f"'{node.name}' normalises over pruned channels")
        ctx.member(node, "out", dim, units, pos)
        ctx.member(node, "in", dim, units, pos)
    return [Flow(other, 0, dim, units, pos)]


def _recurrent_rule(g, node, side, port, dim, units, pos, ctx):
    shape = node.in_shapes[port] if side == "in" else node.out_shapes[port]
    if dim != len(shape) - 1:
        return []
    # with proj_size, h (outputs, h_n, h0) is the projection's proj_size wide, while the
    # cell state c (c_n, c0) is hidden_size wide: two kinds of units, two groups
    hidden = rnn_hidden(node)
    cell = _cell_state_ports(node)
    if node.own_forward:  # a LayerNorm-LSTM cell extending nn.LSTMCell, say
        _own_forward_note(node, ctx)
    if (side, port) in cell:  # the cell units: every gate's rows, weight_hr's columns
        c_out = cell[0][1]
        ctx.member(node, "out", len(node.out_shapes[c_out]) - 1, units, pos, port=c_out)
        ends = {("out", p): s for p, s in enumerate(node.out_shapes)} | \
            {("in", p): s for p, s in enumerate(node.in_shapes)}
        return [Flow(s, p, len(ends[s, p]) - 1, units, pos) for s, p in cell
                if (s, p) != (side, port)]
    if side == "in" and port == 0:
        ctx.member(node, "in", dim, units, pos)
        return []
    # the hidden units: output 0's features are [forward hidden | reverse hidden] for
    # bidirectional models (both directions share hidden_size, so unit h of one direction is
    # unit h of the other); h_n / c_n and the initial states h0 / c0 (inputs 1, 2) have
    # hidden_size last
    pos_h = pos % hidden
    bidir = any(k.endswith("_reverse") for k in node.params)
    p_all = np.concatenate([pos_h, pos_h + hidden]) if bidir else pos_h
    u_all = np.concatenate([units, units]) if bidir else units
    ctx.member(node, "out", len(node.out_shapes[0]) - 1, u_all, p_all)
    flows = []
    # (a PackedSequence comes and goes as its data (N, features) and 1-D batch sizes and
    # sort indices, which carry no features)
    for p_out, shape_out in enumerate(node.out_shapes):
        if (side == "in" or p_out != port) and len(shape_out) >= 2 and ("out", p_out) not in cell:
            wide = shape_out[-1] != hidden
            flows.append(Flow("out", p_out, len(shape_out) - 1, u_all if wide else units,
                              p_all if wide else pos_h))
    for p_in in range(1, len(node.in_shapes)):
        if (side == "out" or p_in != port) and len(node.in_shapes[p_in]) >= 2 and \
                ("in", p_in) not in cell:
            flows.append(Flow("in", p_in, len(node.in_shapes[p_in]) - 1, units, pos_h))
    return flows


def _cell_state_ports(node: Node) -> tuple:
    """The ports of an LSTM with ``proj_size`` that carry its cell state (``c_n``, and ``c0``
    when the call gives ``(h0, c0)``): ``hidden_size`` wide, not the projection's width."""
    c_out = cell_port(node)
    if c_out is None:
        return ()
    full = cell_width(node)
    ports = [("out", c_out)]
    ins = node.in_shapes
    if len(ins) >= 3 and len(ins[-1]) in (2, 3) and ins[-1][:-1] == ins[-2][:-1] and \
            ins[-1][-1] == full:
        ports.append(("in", len(ins) - 1))
    return tuple(ports)


def _custom_rule(g, node, side, port, dim, units, pos, ctx):
    entry = node.custom
    if entry.opaque:
        ctx.block(f"'{node.name}' {entry.opaque}")
        return []
    if port != 0:
        return []
    shape = node.in_shapes[0] if side == "in" else node.out_shapes[0]
    cd = _norm(entry.in_channel_dim if side == "in" else entry.out_channel_dim, len(shape))
    if dim != cd:
        return []
    ctx.member(node, side, dim, units, pos)
    if entry.passthrough:
        other = "out" if side == "in" else "in"
        oshape = node.out_shapes[0] if side == "in" else node.in_shapes[0]
        od = _norm(entry.out_channel_dim if side == "in" else entry.in_channel_dim, len(oshape))
        ctx.member(node, other, od, units, pos)
        return [Flow(other, 0, od, units, pos)]
    return []


def _parameter_rule(g, node, side, port, dim, units, pos, ctx):
    ctx.member(node, "param", dim, units, pos)
    return []




def _buffer_rule(g, node, side, port, dim, units, pos, ctx):
    """A persistent buffer (in the state_dict: a frozen BatchNorm's weight, bias and
    statistics, multiplied into the map) is cut along the dim as a bare parameter is. So is
    a non-persistent one (a table its module recomputes at init, as a sinusoidal position
    table) that the model reads once (:meth:`Graph.read_once`); one that several ops read (a
    rotary frequency table every layer's q and k meet) blocks."""
    if node.params or node.buffers and g.read_once(node.id):
        return _parameter_rule(g, node, side, port, dim, units, pos, ctx)
    ctx.block(f"it reaches the buffer '{node.name}', a table made at init that several ops "
              "read: its values cannot follow one group's width")
    return []


# --- virtual ops ------------------------------------------------------------------------------


def _elementwise_rule(g, node, side, port, dim, units, pos, ctx):
    """Broadcasting ops: index i of every full-size input is index i of the output."""
    outs = node.out_shapes
    if not outs:
        return []
    out = outs[0]
    meta = node.meta
    if isinstance(meta, SetItemMeta):
        return _setitem_rule(node, side, port, dim, units, pos, ctx)
    if isinstance(meta, StridedMeta):
        return _strided_rule(node, side, port, dim, units, pos, ctx)
    if isinstance(meta, SolveMeta):
        return _solve_rule(node, side, port, dim, units, pos, ctx)
    if node.target in SEQUENCE_PACKING:
        return _features_last_rule(node, side, port, dim, units, pos, ctx)
    if node.target in COMPLEX_VIEWS:
        return _complex_view_rule(node, side, port, dim, units, pos, ctx)
    if node.target in PAIR_REDUCTIONS:
        return _pair_reduction_rule(node, side, port, dim, units, pos, ctx)
    if node.target in MASKED_SCATTERS:
        return _masked_scatter_rule(node, side, port, dim, units, pos, ctx)
    if node.target in CHANNEL_SHUFFLES:
        return _channel_shuffle_rule(node, side, dim, units, pos, ctx)
    if isinstance(meta, ElementwiseMeta) and meta.moves and any(
            0 < len(s) < len(out) for s in node.in_shapes) and _indexed_along(node, out):
        # a 1-D index (index_add, index_select) is not broadcast onto the output's last dim
        return _along_dim_rule(node, side, port, dim, units, pos, ctx)
    # sanity: every input must broadcast to the output, or we do not know this op
    for s in node.in_shapes:
        pairs = zip(s[::-1], out[::-1], strict=False)
        if len(s) > len(out) or any(a not in (1, b) for a, b in pairs):
            if s != () and len(s) > 0:
                if _indexed_along(node, out):
                    return _along_dim_rule(node, side, port, dim, units, pos, ctx)
                if isinstance(node.meta, ElementwiseMeta) and node.meta.halves:
                    return _halves_rule(node, side, dim, units, pos, ctx)
                ctx.block(f"'{node.name}' ({node.target}) changes shape in a way DepView does "
                          "not model")
                return []
    od = dim if side == "out" else _fwd_dim(len(out), len(node.in_shapes[port]), dim)
    if isinstance(meta, ElementwiseMeta) and od in meta.moves:
        ctx.block(f"'{node.name}' ({node.target}) moves positions along the pruned dim")
        return []
    if isinstance(meta, ElementwiseMeta) and od in meta.mixes:
        if _returns_positions(g, node, ctx):
            return []
        ctx.inexact(f"'{node.name}' ({node.target}) mixes positions along the pruned dim")
    if side == "in":
        if node.in_shapes[port][dim] == 1 and out[od] != 1:
            # a broadcast input along the tracked dim: its one position feeds all of them
            ctx.merge(units)
            pos = np.zeros(0, dtype=np.int64)
            return []
    flows = [Flow("out", p, od, units, pos) for p in range(len(outs))
             if (side, port) != ("out", p) and len(outs[p]) == len(out)]
    for p, s in enumerate(node.in_shapes):
        if side == "in" and p == port:
            continue
        d = od - (len(out) - len(s))
        if d < 0 or s[d] == 1:
            continue  # broadcast along this dim: nothing of this input is coupled
        flows.append(Flow("in", p, d, units, pos))
    return flows


def _channel_shuffle_rule(node, side, dim, units, pos, ctx):
    """``channel_shuffle(x, g)``: ``x.view(b, g, n, ...).transpose(1, 2)`` flattened back, so
    input channel i (group i // n, offset i % n) is output channel (i % n) * g + i // n. The
    pruned shuffle still makes g groups, which must keep the same width: a unit removes one
    offset from every group, as a grouped conv's channels do. Other dims pass through."""
    other = "out" if side == "in" else "in"
    if dim != 1:
        return [Flow(other, 0, dim, units, pos)]
    scalars = node.attrs.get("scalars") or ()
    c = node.in_shapes[0][1]
    if len(scalars) != 1 or not isinstance(scalars[0], int) or scalars[0] < 1 or \
            c % scalars[0]:
        ctx.block(f"'{node.name}' ({node.target}): DepView could not read its groups")
        return []
    groups, n = scalars[0], c // scalars[0]
    if n == 1:
        ctx.block(f"'{node.name}' shuffles one channel per group (groups={groups}): removing "
                  "one would remove a group")
        return []
    offset = pos % n if side == "in" else pos // groups
    units = np.repeat(units, groups)
    ins = (offset[:, None] + n * np.arange(groups)[None, :]).reshape(-1)
    outs = (offset[:, None] * groups + np.arange(groups)[None, :]).reshape(-1)
    return [Flow("in", 0, 1, units, ins), Flow("out", 0, 1, units, outs)]


def _features_last_rule(node, side, port, dim, units, pos, ctx):
    """``optypes.SEQUENCE_PACKING``: the last dim of the data in (input 0) is the last dim of the
    data out (output 0); the 1-D sizes carry no features, and other dims are regathered."""
    shape = node.in_shapes[port] if side == "in" else node.out_shapes[port]
    if port != 0 or dim != len(shape) - 1:
        ctx.block(f"'{node.name}' ({node.target}) regathers the pruned dim")
        return []
    if side == "in":
        return [Flow("out", 0, len(node.out_shapes[0]) - 1, units, pos)]
    return [Flow("in", 0, len(node.in_shapes[0]) - 1, units, pos)]


def _complex_view_rule(node, side, port, dim, units, pos, ctx):
    """``optypes.COMPLEX_VIEWS``: dim d of the real tensor is dim d of the complex one, but for
    the last dim of the real one, which holds the (real, imaginary) pair: a group there is
    blocked. ``view_as_complex`` takes that dim in, ``view_as_real`` gives it out."""
    real_side = "in" if node.target == "view_as_complex" else "out"
    real = node.in_shapes[0] if real_side == "in" else node.out_shapes[0]
    if port != 0 or side == real_side and dim == len(real) - 1:
        ctx.block(f"'{node.name}' ({node.target}) pairs real and imaginary parts along the "
                  "pruned dim")
        return []
    return [Flow("out" if side == "in" else "in", 0, dim, units, pos)]


def _pair_reduction_rule(node, side, port, dim, units, pos, ctx):
    """``optypes.PAIR_REDUCTIONS``: ``F.cosine_similarity(a, b, dim)`` on two tensors of one
    shape: position i of a is position i of b; the dim it reduces (``meta.mixes``) is gone
    from the output, and a group there is inexact (the norms change); every other dim is the
    output's, in order."""
    a, out = node.in_shapes[0], node.out_shapes[0]
    meta = node.meta
    if len(node.in_shapes) != 2 or node.in_shapes[1] != a or len(out) != len(a) - 1 \
            or not isinstance(meta, ElementwiseMeta) or len(meta.mixes) != 1:
        ctx.block(f"'{node.name}' ({node.target}) changes shape in a way DepView does not model")
        return []
    r = meta.mixes[0]
    if side == "out":
        d = dim + (dim >= r)
        return [Flow("in", 0, d, units, pos), Flow("in", 1, d, units, pos)]
    flows = [Flow("in", 1 - port, dim, units, pos)]
    if dim == r:
        ctx.inexact(f"'{node.name}' ({node.target}) reduces over pruned channels")
        return flows
    return flows + [Flow("out", 0, dim - (dim > r), units, pos)]


def _masked_scatter_rule(node, side, port, dim, units, pos, ctx):
    """``optypes.MASKED_SCATTERS``: ``self.masked_scatter(mask, source)`` keeps self's shape
    (dim d of the output is self's d). Where the mask is broadcast along every dim from
    some k on (``(b, l, 1)`` against ``(b, l, d)``: whole rows), each masked row takes the
    next row of ``source``, whose trailing dims are self's from k on, position for
    position: a VLM's image features written into its text embeddings keep their hidden
    dim. A dim before k (which rows are written) or one the mask varies along blocks."""
    out = node.out_shapes[0]
    n = len(out)
    if len(node.in_shapes) != 3 or tuple(node.in_shapes[0]) != tuple(out):
        ctx.block(f"'{node.name}' ({node.target}) changes shape in a way DepView does not model")
        return []
    mask, src = node.in_shapes[1], node.in_shapes[2]
    m = (1,) * (n - len(mask)) + tuple(mask)
    k = n
    while k > 0 and m[k - 1] == 1:
        k -= 1
    lead = len(src) - (n - k)  # source dims before the ones that match self's from k on
    if side == "out" or port == 0:
        od = dim
    elif port == 2:
        od = dim - lead + k
    else:
        od = -1  # the mask itself
    if od < k or lead < 0 or tuple(src[lead:]) != tuple(out[k:]):
        ctx.block(f"'{node.name}' ({node.target}) writes rows chosen by a mask along the pruned "
                  "dim")
        return []
    flows = [] if side == "out" else [Flow("out", 0, od, units, pos)]
    if not (side == "in" and port == 0):
        flows.append(Flow("in", 0, od, units, pos))
    if not (side == "in" and port == 2):
        flows.append(Flow("in", 2, od - k + lead, units, pos))
    return flows


def _solve_rule(node, side, port, dim, units, pos, ctx):
    """A linear solve (:class:`SolveMeta`), ``X = A^-1 B``: each column of ``B`` (each row
    with ``left=False``) is solved alone, so that dim of ``B`` is ``X``'s, position for
    position (a gated delta rule's value and key head dims: HF OLMo-Hybrid); the batch dims
    broadcast across ``A``, ``B`` and ``X`` as elementwise ops do; the system's own dims mix
    every position, and a group there is blocked."""
    x = node.out_shapes[0]
    n = len(x)
    a, b = (node.in_shapes + ((), ()))[:2]
    if len(node.in_shapes) != 2 or n < 2 or len(a) < 2 or len(b) < 2 or (
            len(b) == len(a) - 1 and b[:-1] == a[:-2] and b[-1] == a[-1]):
        # (``linalg.solve(A, B)`` with B a batch of vectors, whose last dim is the system's:
        # not told apart from a matrix here, so not modelled)
        ctx.block(f"'{node.name}' ({node.target}) changes shape in a way DepView does not model")
        return []
    shapes = {("out", 0): x, ("in", 0): a, ("in", 1): b}
    own = shapes.get((side, port))
    od = dim + n - len(own) if own is not None else -1
    free = n - 1 if node.meta.left else n - 2  # X's dim solved position by position
    if od < 0 or od >= n - 2 and (od != free or (side, port) == ("in", 0)):
        ctx.block(f"'{node.name}' ({node.target}) solves a linear system along the pruned dim")
        return []
    flows = []
    for (s2, p2), shape in shapes.items():
        d = od - (n - len(shape))
        if (s2, p2) == (side, port) or d < 0 or shape[d] == 1 or od >= n - 2 and p2 == 0 \
                and s2 == "in":
            continue  # the arrival, a broadcast dim, or A's side of the solved dim
        if side == "in" and own[dim] == 1 and shape[d] != 1:
            ctx.merge(units)  # a broadcast operand's one position feeds all of them
            return []
        flows.append(Flow(s2, p2, d, units, pos))
    return flows


def _strided_rule(node, side, port, dim, units, pos, ctx):
    """``as_strided``: a dim it reads position for position (:class:`StridedMeta`) keeps its
    positions (Longformer's overlapping chunks keep the head dim); any other blocks."""
    carries = node.meta.carries
    to = dict(carries) if side == "in" else {j: d for d, j in carries}
    if side == "in" and port != 0 or dim not in to:
        ctx.block(f"'{node.name}' ({node.target}) changes shape in a way DepView does not "
                  "model")
        return []
    return [Flow("out" if side == "in" else "in", 0, to[dim], units, pos)]


def _setitem_rule(node, side, port, dim, units, pos, ctx):
    """``x[index] = value`` (or an in-place op on a slice of ``x``: the tracer's ``write``
    node): the written ``x`` (input 0, output 0) keeps every position; a dim
    the index takes whole couples ``value``'s matching (non-broadcast) dim; a bool mask shaped
    as ``x`` couples position by position. A write at fixed positions of the tracked dim
    (``x[:, 2] = 0``, ``x[:, :4] = y``) blocks: pruning would move it to other channels."""
    meta: SetItemMeta = node.meta
    r = meta.region
    if r is None:
        ctx.block(f"'{node.name}' writes into a tensor through a view DepView does not follow "
                  "(a slice of a slice, a reshape)" if node.target == WRITE else
                  f"'{node.name}' writes into a tensor through an index DepView does not model")
        return []
    v = meta.value
    v_shape = node.in_shapes[v] if v is not None else ()
    if side == "out" or port == 0:
        d = dim
    elif port == v:
        od = dim + len(r.out_shape) - len(v_shape)  # broadcast from the right into x[index]
        if od not in r.dim_map:  # (a dim the index made, or a leading size-1 dim)
            ctx.block(f"'{node.name}' writes the tracked dim of its value where DepView cannot "
                      "follow it")
            return []
        d = r.dim_map.index(od)
    elif meta.mask and dim < meta.mask and port in meta.index:
        d = dim
    else:
        ctx.block(f"'{node.name}' indexes with a tensor that is coupled to the group")
        return []
    if meta.mask and d < meta.mask:
        if v is not None and math.prod(v_shape) > 1:
            ctx.block(f"'{node.name}' writes a tensor of values at the positions of a mask")
            return []
        flows = [Flow("in", p, d, units, pos) for p in meta.index]
    elif d in r.gathered or d in dict(r.selects) or any(s.dim == d for s in r.slices):
        ctx.block(f"'{node.name}' writes at fixed positions of the pruned dim (x[:, 2] = ..., "
                  "x[:, :2].zero_()): pruning would move the write onto other channels")
        return []
    else:
        flows = []
        od = r.dim_map[d]
        vd = od - (len(r.out_shape) - len(v_shape)) if v is not None else -1
        if vd >= 0 and v_shape[vd] != 1:
            flows.append(Flow("in", v, vd, units, pos))
        elif side == "in" and port == v:
            ctx.merge(units)  # a broadcast value: its one position feeds all of them
            return []
    flows += [Flow("in", 0, d, units, pos), Flow("out", 0, d, units, pos)]
    return [f for f in flows if (f.side, f.port) != (side, port)]


def _indexed_along(node: Node, out: tuple[int, ...]) -> bool:
    """An op that reads or writes other positions along its dims (``index_add``,
    ``index_select``, ``gather``, ``scatter``), whose tensors may differ from the output
    there: every input is a 1-D index, or as wide as the output on every other dim."""
    meta = node.meta
    if not (isinstance(meta, ElementwiseMeta) and meta.moves):
        return False
    return all(len(s) <= 1 or len(s) == len(out) and all(
        a == b or a == 1 or d in meta.moves for d, (a, b) in enumerate(zip(s, out, strict=True)))
        for s in node.in_shapes)


def _along_dim_rule(node, side, port, dim, units, pos, ctx):
    """:func:`_indexed_along` ops: on a dim they do not index, position i of every tensor as
    wide as the output is position i of the output (``index_add(0, idx, src)`` keeps the
    channels of ``self`` and ``src``); the indexed dim and the 1-D indices block."""
    out = node.out_shapes[0]
    shape = out if side == "out" else node.in_shapes[port]
    if len(shape) != len(out) or dim in node.meta.moves:
        ctx.block(f"'{node.name}' ({node.target}) moves positions along the pruned dim")
        return []
    tensors = [("out", p, s) for p, s in enumerate(node.out_shapes)] + \
        [("in", p, s) for p, s in enumerate(node.in_shapes)]
    flows = []
    for sd, p, s in tensors:
        if (sd, p) == (side, port) or len(s) != len(out) or s[dim] == 1 and shape[dim] != 1:
            continue  # the arrival itself, an index, or broadcast along the dim
        if s[dim] != shape[dim]:
            ctx.block(f"'{node.name}' ({node.target}) reads part of the pruned dim")
            return []
        flows.append(Flow(sd, p, dim, units, pos))
    return flows


def _halves_rule(node, side, dim, units, pos, ctx):
    """GLU: output i is input i times sigmoid(input i + n) along the halved dim, so input
    positions i and i + n are one unit with output i; other dims pass through."""
    d, a, out = node.meta.halves[0], node.in_shapes[0], node.out_shapes[0]
    if len(a) != len(out) or a[d] != 2 * out[d]:
        ctx.block(f"'{node.name}' ({node.target}) changes shape in a way DepView does not model")
        return []
    if dim != d:
        return [Flow("out" if side == "in" else "in", 0, dim, units, pos)]
    n = out[d]
    if side == "in":  # the other half of the pair joins the unit
        return [Flow("out", 0, d, units, pos % n), Flow("in", 0, d, units, (pos + n) % (2 * n))]
    return [Flow("in", 0, d, np.concatenate([units, units]), np.concatenate([pos, pos + n]))]


def _unreadable(node: Node, ctx: _Ctx, kind: type) -> bool:
    if not isinstance(node.meta, kind):
        ctx.block(f"'{node.name}' ({node.target}): DepView could not read its arguments")
        return True
    return False


def _concat_rule(g, node, side, port, dim, units, pos, ctx):
    meta = node.meta
    if _unreadable(node, ctx, ConcatMeta):
        return []
    offs = meta.offsets
    if side == "in":
        nd_in = len(node.in_shapes[port])
        if meta.stacked:
            od = dim if dim < meta.dim else dim + 1
            flows = [Flow("out", 0, od, units, pos)]
            flows += [Flow("in", p, dim, units, pos) for p in range(len(node.in_shapes))
                      if p != port]
            return flows
        if dim == meta.dim:
            return [Flow("out", 0, dim, units, pos + offs[port])]
        flows = [Flow("out", 0, dim, units, pos)]
        flows += [Flow("in", p, dim, units, pos) for p in range(len(node.in_shapes))
                  if p != port and len(node.in_shapes[p]) == nd_in]
        return flows
    if meta.stacked:
        if dim == meta.dim:
            ctx.block(f"'{node.name}' stacks tensors along the tracked dim")
            return []
        d = dim if dim < meta.dim else dim - 1
        return [Flow("in", p, d, units, pos) for p in range(len(node.in_shapes))]
    if dim == meta.dim:
        flows = []
        for p, (o, s) in enumerate(zip(offs, meta.sizes, strict=True)):
            m = (pos >= o) & (pos < o + s)
            if m.any():
                flows.append(Flow("in", p, dim, units[m], pos[m] - o))
        return flows
    return [Flow("in", p, dim, units, pos) for p in range(len(node.in_shapes))]


def _split_rule(g, node, side, port, dim, units, pos, ctx):
    meta = node.meta
    if _unreadable(node, ctx, SplitMeta):
        return []
    offs = meta.offsets
    if dim == meta.dim and meta.computed:
        # torch computes the cut points from the width: every part must lose the same
        # relative positions, so position r of one part is position r of all parts.
        if len(set(meta.sizes)) > 1:
            ctx.block(f"'{node.name}' splits into uneven parts whose sizes torch computes")
            return []
        size = meta.sizes[0]
        rel = pos if side == "out" else pos % size  # a part's positions are its own
        flows = [Flow("out", p, dim, units, rel) for p in range(len(meta.sizes))
                 if (side, port) != ("out", p)]
        allp = (rel[:, None] + np.asarray(offs)[None, :]).reshape(-1)
        return flows + [Flow("in", 0, dim, np.repeat(units, len(offs)), allp)]
    if side == "in":
        if dim == meta.dim:
            flows = []
            for p, (o, s) in enumerate(zip(offs, meta.sizes, strict=True)):
                m = (pos >= o) & (pos < o + s)
                if m.any():
                    flows.append(Flow("out", p, dim, units[m], pos[m] - o))
            return flows
        return [Flow("out", p, dim, units, pos) for p in range(len(node.out_shapes))]
    if dim == meta.dim:
        return [Flow("in", 0, dim, units, pos + offs[port])]
    flows = [Flow("in", 0, dim, units, pos)]
    flows += [Flow("out", p, dim, units, pos) for p in range(len(node.out_shapes)) if p != port]
    return flows


def _unbind_rule(g, node, side, port, dim, units, pos, ctx):
    if _unreadable(node, ctx, UnbindMeta):
        return []
    ud = node.meta.dim
    if side == "in":
        if dim == ud:
            ctx.block(f"'{node.name}' unbinds the tracked dim: its parts cannot be removed")
            return []
        d = dim if dim < ud else dim - 1
        return [Flow("out", p, d, units, pos) for p in range(len(node.out_shapes))]
    d = dim if dim < ud else dim + 1
    flows = [Flow("in", 0, d, units, pos)]
    flows += [Flow("out", p, dim, units, pos) for p in range(len(node.out_shapes)) if p != port]
    return flows


def _slice_rule(g, node, side, port, dim, units, pos, ctx):
    meta = node.meta
    if meta is None or not hasattr(meta, "dim_map"):
        ctx.block(f"'{node.name}' indexes in a way DepView does not model")
        return []
    if port != 0:
        if side == "in":
            ctx.block(f"'{node.name}' indexes with a tensor that is coupled to the group")
        return []
    sl = {s.dim: s for s in meta.slices}
    sel = dict(meta.selects)
    if side == "in":
        if dim in meta.gathered:
            ctx.block(f"'{node.name}' gathers along the tracked dim with a tensor index")
            return []
        if dim in sel:
            if (pos == sel[dim]).any():
                ctx.block(f"'{node.name}' selects one index of the tracked dim")
            return []
        od = meta.dim_map[dim]
        if dim in sl:
            s = sl[dim]
            m = (pos >= s.start) & (pos < s.stop) & ((pos - s.start) % s.step == 0)
            if not m.any():
                return []
            return [Flow("out", 0, od, units[m], (pos[m] - s.start) // s.step)]
        return [Flow("out", 0, od, units, pos)]
    if dim in meta.adv_dims:
        ctx.block(f"'{node.name}' gathers along the tracked dim with a tensor index")
        return []
    in_dim = meta.dim_map.index(dim) if dim in meta.dim_map else None
    if in_dim is None:
        return []  # a new axis (None index)
    if in_dim in sl:
        s = sl[in_dim]
        return [Flow("in", 0, in_dim, units, s.start + pos * s.step)]
    return [Flow("in", 0, in_dim, units, pos)]


def dim_groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair up dims of two shapes with equal numel into row-major regroupings.

    >>> dim_groups((2, 12, 5), (2, 3, 4, 5))
    [([0], [0]), ([1], [1, 2]), ([2], [3])]
    """
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        gi, gj = [i], [j]
        pa, pb = a[i], b[j]
        i += 1
        j += 1
        while pa != pb:
            if pa < pb:
                if i >= len(a):
                    break
                gi.append(i)
                pa *= a[i]
                i += 1
            else:
                if j >= len(b):
                    break
                gj.append(j)
                pb *= b[j]
                j += 1
        groups.append((gi, gj))
    if groups:
        groups[-1][0].extend(range(i, len(a)))
        groups[-1][1].extend(range(j, len(b)))
    return groups


def map_reshape(a, b, dim, units, pos, inferred: int | None = None,
                copies: frozenset = frozenset()):
    """Map pairs on ``dim`` of shape ``a`` to one dim of shape ``b`` (row-major regrouping).

    Returns ``(out_dim, units, pos)``. When the tracked dim splits into several dims, the
    output dim is the one where each unit stays a whole slab; if none is, the dim left to
    torch (``-1`` in the call), else the largest dim that is not a broadcast copy
    (``copies``); units sharing a position on it merge (e.g. the channels of one head).
    """
    return _map_reshape(a, b, dim, units, pos, inferred, copies)[:3]


def _map_reshape(a, b, dim, units, pos, inferred=None, copies=frozenset(), outer=False,
                 inner=False):
    """:func:`map_reshape`, plus whether ``b`` keeps the tracked dim's data in one dim (then
    every position of ``b`` there comes from exactly one position of ``dim``). ``outer``
    picks the outermost candidate dim instead of the largest where neither the slabs nor a
    ``-1`` decide (a split into (heads, head_dim) then prunes whole heads). ``inner`` picks
    the innermost even where a ``-1`` would decide (head dims, when whole heads merge every
    unit: see :func:`_search_or_unfollowed`)."""
    for gi, gj in dim_groups(tuple(a), tuple(b)):
        if dim not in gi:
            continue
        if len(gi) == 1 and len(gj) == 1:
            return gj[0], units, pos, True  # this dim is kept as it is
        ga = [a[k] for k in gi]
        gb = [b[k] for k in gj]
        k = gi.index(dim)
        stride_a = math.prod(ga[k + 1:])
        n_other = 1
        # flat offsets (within the group) of every combination of the other input dims
        other_off = np.zeros(1, dtype=np.int64)
        for t, size in enumerate(ga):
            if t != k:
                n_other *= size
                step = np.arange(size, dtype=np.int64) * math.prod(ga[t + 1:])
                other_off = (other_off[:, None] + step[None, :]).reshape(-1)
        flats = pos[:, None] * stride_a + other_off[None, :]  # (n_pairs, n_other)
        big = [t for t, s in enumerate(gb) if s > 1]
        if len(big) <= 1:
            t = big[0] if big else len(gj) - 1
            stride_b = math.prod(gb[t + 1:])
            coords = (flats // stride_b) % gb[t]
            return gj[t], np.repeat(units, coords.shape[1]), coords.reshape(-1), True
        total = math.prod(gb)
        choice = None
        for t in big:
            if n_other != total // gb[t]:
                continue
            coords = (flats // math.prod(gb[t + 1:])) % gb[t]
            if (coords == coords[:, :1]).all():
                return gj[t], units, coords[:, 0], False
        regather = _regathering_dim(big, gb, flats, units)
        if regather is not None:
            choice = regather
        elif inferred is not None and not inner and outer < OVER_INFERRED and inferred in gj \
                and b[inferred] > 1:
            choice = gj.index(inferred)
        else:
            real = [t for t in big if gj[t] not in copies] or big
            # a dim on which every pair has the same coordinate holds none of them apart
            # (qkv's (3, heads, head_dim) seen from q alone: q is all at 0 on the 3)
            real = [t for t in real if not _one_coord(flats, gb, t)] or real
            if outer:  # (past the outermost of three or more: see outer_alternative)
                choice = sorted(real)[1 if outer == PAST_OUTERMOST and len(real) > 2 else 0]
            else:
                choice = max(real) if inner else max(real, key=lambda t: (gb[t], -t))
        stride_b = math.prod(gb[choice + 1:])
        coords = (flats // stride_b) % gb[choice]
        return gj[choice], np.repeat(units, coords.shape[1]), coords.reshape(-1), False
    raise DepViewError(f"reshape {a} -> {b}: dim {dim} not found")


def _one_coord(flats: np.ndarray, gb: list[int], t: int) -> bool:
    """Do all of ``flats`` (flat offsets in a group of dims of sizes ``gb``) lie at one
    coordinate of dim ``t``?"""
    coords = (flats // math.prod(gb[t + 1:])) % gb[t]
    return bool(coords.size) and bool((coords == coords.flat[0]).all())


def _regathering_dim(big: list[int], gb: list[int], flats: np.ndarray,
                     units: np.ndarray) -> int | None:
    """A dim of the new shape on which each unit's several copies meet again, one position
    per unit, shared with no other unit: channels an earlier reshape merged with the batch
    (ShuffleNetV2's ``reshape(b * c // 2, 2, h * w)``, then ``reshape(2, -1, c // 2, h, w)``)
    come back to their own dim there; the ``-1`` dim is the batch."""
    u = np.repeat(units, flats.shape[1])
    if len(u) == 0 or flats.shape[1] == 1 and len(np.unique(units)) == len(units):
        return None  # one position per unit already: no copies to meet (a heads split)
    span = int(u.max()) + 1
    for t in big:
        coords = ((flats // math.prod(gb[t + 1:])) % gb[t]).reshape(-1)
        pairs = np.unique(coords * span + u)  # (position, unit), encoded
        if len(pairs) < len(coords) and len(np.unique(pairs // span)) == len(pairs):
            return t
    return None


#: Op types whose rule also reads the node that produced their input 0 (the reshape rule looks
#: for an expand before it); the reuse of groups across repeated blocks compares those too.
READS_INPUT_PRODUCER = frozenset({OpType.RESHAPE})


def _reshape_rule(g, node, side, port, dim, units, pos, ctx):
    if port != 0:  # view_as(other), reshape_as(other): other gives the shape, not the data
        return []
    meta = node.meta
    if _unreadable(node, ctx, ReshapeMeta):
        return []
    a, b = (meta.in_shape, meta.out_shape) if side == "in" else (meta.out_shape, meta.in_shape)
    inferred = meta.inferred if side == "in" else None
    copies: frozenset = frozenset()
    if side == "out":  # going back: dims an expand made from size 1 carry no data of their own
        edges = g.in_edges.get(node.id, [])
        src = g.nodes[edges[0].source] if edges else None
        if src is not None and src.op_type is OpType.EXPAND:
            ea, eb = src.in_shapes[0], src.out_shapes[0]
            copies = frozenset(d for d in range(len(eb))
                               if d - (len(eb) - len(ea)) < 0 or ea[d - (len(eb) - len(ea))] == 1
                               and eb[d] > 1)
    d, u, p, whole = _map_reshape(a, b, dim, units, pos, inferred, copies, ctx.search.outer,
                                  ctx.search.inner)
    if len(p) > b[d]:
        # units landing on one position merge (the channels of one head): merge them here and
        # carry one unit per position, so the slab sent back is not repeated per unit
        rep = np.full(b[d], -1, dtype=np.int64)
        rep[p] = u
        ctx.search.union_pairs(u, rep[p])
        p = np.nonzero(rep >= 0)[0]
        u = rep[p]
    flows = [Flow("out" if side == "in" else "in", 0, d, u, p)]
    if u is units or whole:  # kept, or spread over one dim: nothing to send back
        return flows
    # A unit that had to grow to a whole slab of the new dim (a head, a shuffle column) owns
    # the rest of that slab on this side too: send the completed slab back.
    d2, u2, p2 = map_reshape(b, a, d, u, p)
    if d2 == dim and len(p2) > len(pos):
        flows.append(Flow(side, 0, dim, u2, p2))
    return flows


def _permute_rule(g, node, side, port, dim, units, pos, ctx):
    if _unreadable(node, ctx, PermuteMeta):
        return []
    perm = node.meta.perm
    if side == "in":
        return [Flow("out", 0, perm.index(dim), units, pos)]
    return [Flow("in", 0, perm[dim], units, pos)]


def _expand_rule(g, node, side, port, dim, units, pos, ctx):
    a, b = node.in_shapes[0], node.out_shapes[0]
    if port != 0:
        return []
    if not isinstance(node.meta, ExpandMeta):  # repeat_interleave by a tensor of counts
        ctx.block(f"'{node.name}' ({node.target}) repeats by counts DepView cannot read")
        return []
    if node.meta.copies and not _copied_from_one(node, side, dim):
        return _copies_rule(node, side, dim, units, pos)
    if side == "in":
        od = _fwd_dim(len(b), len(a), dim)
        if a[dim] == 1 and b[od] != 1:
            ctx.merge(units)
            return []
        return [Flow("out", 0, od, units, pos)]
    d = dim - (len(b) - len(a))
    if d < 0 or a[d] != b[dim]:
        return []
    return [Flow("in", 0, d, units, pos)]


def _copied_from_one(node: Node, side: str, dim: int) -> bool:
    """Does a repeat/tile/repeat_interleave grow a dim of size 1 along ``dim`` (its input's
    dim for ``side="in"``, its output's for ``"out"``)? Then it broadcasts, as expand does:
    HF Mamba2 with one group repeats its B and C ``(b, l, 1, n)`` over the heads
    (``repeat_interleave(num_heads // n_groups, dim=2)``), and a head can go without the
    group it reads; as copies of one position, every head would be one unit."""
    a, b = node.in_shapes[0], node.out_shapes[0]
    off = len(b) - len(a)
    d, od = (dim, dim + off) if side == "in" else (dim - off, dim)
    return 0 <= d < len(a) and a[d] == 1 and b[od] != 1


def _copies_rule(node, side, dim, units, pos):
    """repeat/tile (position p is copied to p + k * size) and repeat_interleave (p to
    p * r + j): every copy belongs to the unit of its source position."""
    a, b = node.in_shapes[0], node.out_shapes[0]
    off = len(b) - len(a)  # repeat may add leading dims
    interleave = node.meta.copies == "interleave"
    if side == "in":
        od = dim + off
        r = b[od] // a[dim]
        if r == 1:
            return [Flow("out", 0, od, units, pos)]
        k = np.arange(r, dtype=np.int64)[None, :]
        p_all = pos[:, None] * r + k if interleave else pos[:, None] + a[dim] * k
        return [Flow("out", 0, od, np.repeat(units, r), p_all.reshape(-1))]
    d = dim - off
    if d < 0:
        return []  # a new leading dim holds whole copies, no position of the input
    r = b[dim] // a[d]
    return [Flow("in", 0, d, units, pos // r if interleave else pos % a[d])]


def _pixel_shuffle_rule(g, node, side, port, dim, units, pos, ctx):
    if dim != len(node.in_shapes[0]) - 3 or port != 0:
        return []  # only the channel dim (N, C, H, W) is modelled
    if node.meta is not None:
        factor, unshuffle = node.meta.factor, node.meta.unshuffle
    else:  # nn.PixelShuffle / nn.PixelUnshuffle modules
        unshuffle = "downscale_factor" in node.attrs
        factor = node.attrs.get("downscale_factor", node.attrs.get("upscale_factor", 1))
    r2 = int(factor) ** 2
    fold = (side == "in") != unshuffle  # in->out of shuffle, or out->in of unshuffle
    other = "out" if side == "in" else "in"
    if fold:
        return [Flow(other, 0, dim, units, pos // r2)]
    p_all = (pos[:, None] * r2 + np.arange(r2)[None, :]).reshape(-1)
    return [Flow(other, 0, dim, np.repeat(units, r2), p_all)]


def _unfold_rule(g, node, side, port, dim, units, pos, ctx):
    """``F.unfold`` ((N,) C, H, W) -> ((N,) C*k*k, L) and ``F.fold`` back: channel c is the k*k
    rows c*k*k .. c*k*k + k*k - 1 of the patch dim (the pixel-shuffle mapping with k*k for
    r*r; k*k read from the shapes); the batch passes; the planes and L are where the kernel
    slides. ``Tensor.unfold``: :func:`_windows_rule`."""
    if port != 0:
        return []
    if isinstance(node.meta, WindowsMeta):
        return _windows_rule(node, side, dim, units, pos, ctx)
    a, b = node.in_shapes[0], node.out_shapes[0]
    unfold = len(b) == len(a) - 1
    ca, cb = (len(a) - 3, len(b) - 2) if unfold else (len(a) - 2, len(b) - 3)
    here, there = (ca, cb) if side == "in" else (cb, ca)
    other = "out" if side == "in" else "in"
    if ca == 1 and dim == 0:  # the batch
        return [Flow(other, 0, 0, units, pos)]
    if dim != here or min(a[ca], b[cb]) <= 0:
        ctx.block(f"'{node.name}' ({node.target}) slides a kernel over the pruned dim")
        return []
    kk = b[cb] // a[ca] if unfold else a[ca] // b[cb]
    if (side == "in") == unfold:  # a channel to its k*k rows
        rows = (pos[:, None] * kk + np.arange(kk)[None, :]).reshape(-1)
        return [Flow(other, 0, there, np.repeat(units, kk), rows)]
    return [Flow(other, 0, there, units, pos // kk)]  # rows to their channel: one unit


def _windows_rule(node, side, dim, units, pos, ctx):
    """``Tensor.unfold(d, size, step)``: (N, C, H, W).unfold(2, 3, 1) -> (N, C, H - 2, W, 3).
    Every dim but ``d`` keeps its place and its positions; along ``d`` each window reads
    ``size`` neighbours, held by the new last dim, so a group on either is blocked."""
    meta: WindowsMeta = node.meta
    if dim == meta.dim or side == "out" and dim == len(node.out_shapes[0]) - 1:
        ctx.block(f"'{node.name}' (Tensor.unfold) takes windows of {meta.size} along the "
                  "pruned dim: a window would hold other channels once some are removed")
        return []
    return [Flow("out" if side == "in" else "in", 0, dim, units, pos)]


def _spatial_rule(g, node, side, port, dim, units, pos, ctx):
    """Pooling and resizing keep N and C and resize the rest; padding keeps every dim it does
    not pad. A max pool's indices (``return_indices``: its second output) and a max unpool's
    (its second input) are positions within each channel's plane: they keep N and C as the
    values do (SegNet's encoder channels reach its decoder only through them), and block a
    group on a dim of the plane."""
    if node.target == "grid_sample":
        return _grid_sample_flows(node, side, port, dim, units, pos, ctx)
    pads = _pads(node)
    if pads is None:  # pooling / resizing: N and C kept, the rest resized
        nd = len(node.in_shapes[0])
        tensors = [("out", p) for p in range(len(node.out_shapes))] + \
            [("in", p) for p, s in enumerate(node.in_shapes) if len(s) == nd]
        if (side, port) not in tensors:
            return []
        if dim > 1 and len(tensors) > 2:
            ctx.block(f"'{node.name}' ({node.target}) pools with indices, positions in the "
                      "plane of the pruned dim")
            return []
        if dim > 1:
            a, b = node.in_shapes[0], node.out_shapes[0]
            same = len(a) == len(b) and a[dim] == b[dim]
            return _window_dim(node, same, "pools or resizes", ctx,
                               [Flow("out" if side == "in" else "in", 0, dim, units, pos)])
        return [Flow(sd, p, dim, units, pos) for sd, p in tensors if (sd, p) != (side, port)]
    if port != 0:
        return []
    if _norm(dim, len(node.in_shapes[0])) in _padded_dims(pads, len(node.in_shapes[0])):
        ctx.block(f"'{node.name}' pads the pruned dim")
        return []
    return [Flow("out" if side == "in" else "in", 0, dim, units, pos)]


def _grid_sample_flows(node, side, port, dim, units, pos, ctx) -> list[Flow]:
    """``F.grid_sample(x, grid)``: out ``(N, C, *grid.shape[1:-1])`` samples each channel of
    x at the grid's points. N is every tensor's dim 0; C is x's and out's dim 1 alone; the
    grid's point dims are out's dims 2..; x's plane and the grid's coordinates (its last dim)
    are positions and where to read them: a group there is blocked (STN, deformable
    sampling: the localisation layer's 2 coordinate channels)."""
    if len(node.in_shapes) < 2 or side == "in" and port > 1:
        return []
    nd = len(node.in_shapes[0])
    d = _norm(dim, len(node.out_shapes[0]) if side == "out" else len(node.in_shapes[port]))
    at = {("in", 0): [], ("in", 1): [], ("out", 0): []}  # the same dim on the other tensors
    if d == 0:
        at = {k: [0] for k in at}
    elif side == "in" and port == 1 and d == nd - 1:
        ctx.block(f"'{node.name}' (grid_sample) reads its sampling coordinates from the "
                  "pruned dim")
        return []
    elif side == "in" and port == 0 and d >= 2:
        ctx.block(f"'{node.name}' (grid_sample) samples positions along the pruned dim")
        return []
    elif d == 1 and (side, port) != ("in", 1):
        at[("in", 0)], at[("out", 0)] = [1], [1]
    else:  # a point dim: the grid's d (from 1) is out's d + 1
        g = d if (side, port) == ("in", 1) else d - 1
        at[("in", 1)], at[("out", 0)] = [g], [g + 1]
    return [Flow(sd, p, x, units, pos) for (sd, p), xs in at.items() for x in xs
            if (sd, p) != (side, port)]


def _pads(node: Node) -> tuple[int, ...] | None:
    """The (left, right) pad pairs of ``F.pad`` or a padding module (``nn.ZeroPad2d``), else
    None."""
    if isinstance(node.meta, PadMeta):
        return node.meta.pads
    if node.target.startswith("module:torch.nn.modules.padding."):
        pad = node.attrs.get("padding")
        return tuple(pad) if isinstance(pad, (list, tuple)) else None
    return None


def _padded_dims(pads: tuple[int, ...], ndim: int) -> set[int]:
    """Dims whose size or positions the pads change: pair i pads dim ``ndim - 1 - i``."""
    return {ndim - 1 - i for i in range(len(pads) // 2) if pads[2 * i] or pads[2 * i + 1]}


def _matmul_dims(node: Node):
    """(a_port, b_port, a_shape, b_shape, out_shape, linear?) of a matmul-family node."""
    name = node.target
    ins = node.in_shapes
    if name in ("addmm", "baddbmm"):
        return 1, 2, ins[1], ins[2], node.out_shapes[0], False
    return 0, 1, ins[0], ins[1], node.out_shapes[0], name == "linear"


#: Ops whose metadata spells them out as an einsum (:class:`EinsumMeta`): ``tensordot(a, b,
#: ([1], [0]))`` is ``abc,bd->acd``; ``cdist(a, b)`` sums over the features of both
#: (``...pm,...rm->...pr``: a feature removed from both adds nothing to any distance);
#: ``F.bilinear(x1, x2, w, b)`` is ``...i,...j,kij,k->...k`` (the bias shares the outputs')
_EINSUMS = frozenset({"einsum", "tensordot", "cdist", "bilinear"})


def _einsum_rule(node, side, port, dim, units, pos, ctx):
    """Every dim that carries the tracked dim's letter is coupled to it: in the other
    operands (a contracted letter: both sides of the sum) and in the output."""
    if _unreadable(node, ctx, EinsumMeta):
        return []
    meta = node.meta
    letter = (meta.out if side == "out" else meta.terms[port])[dim]
    places = [("in", p, d, node.in_shapes[p]) for p, t in enumerate(meta.terms)
              for d, c in enumerate(t) if c == letter]
    places += [("out", 0, d, node.out_shapes[0]) for d, c in enumerate(meta.out) if c == letter]
    if sum(1 for s, p, _, _ in places if (s, p) == (side, port)) > 1:
        ctx.block(f"'{node.name}' ({meta.equation}) takes a diagonal of the pruned dim")
        return []
    size = (node.out_shapes[0] if side == "out" else node.in_shapes[port])[dim]
    return [Flow(s, p, d, units, pos) for s, p, d, shape in places
            if (s, p) != (side, port) and shape[d] == size]  # size-1 dims broadcast


#: ``F.grouped_mm(a, b, offs)`` as mixture-of-experts layers call it, a (rows, K) @ b (experts,
#: K, N) -> (rows, N): which (side, port, dim) each (side, port, dim) is coupled to.
_GROUPED_MM = {("in", 0, 1): ("in", 1, 1), ("in", 1, 1): ("in", 0, 1),
               ("in", 1, 2): ("out", 0, 1), ("out", 0, 1): ("in", 1, 2),
               ("in", 0, 0): ("out", 0, 0), ("out", 0, 0): ("in", 0, 0)}


def _grouped_mm_rule(node, side, port, dim, units, pos, ctx):
    """Rows of ``a`` are split among the experts by ``offs``; K and N couple as in a matmul.
    The expert dim is read through ``offs`` (token counts), so experts are not removed."""
    ins = node.in_shapes
    if not (len(ins) == 3 and len(ins[0]) == 2 and len(ins[1]) == 3
            and len(node.out_shapes[0]) == 2):
        ctx.block(f"'{node.name}' (grouped_mm) groups its operands in a way DepView does not "
                  "model")
        return []
    to = _GROUPED_MM.get((side, port, dim))
    if to is None:
        what = "the expert offsets" if port == 2 else "the expert dim"
        ctx.block(f"'{node.name}' (grouped_mm) has the pruned channels on {what}; DepView "
                  "does not remove experts")
        return []
    if dim != 0 and isinstance(node.meta, MatmulMeta) and node.meta.align > 1:
        ctx.multiple_of(node.meta.align, "grouped_mm needs rows of 16 bytes")
    return [Flow(to[0], to[1], to[2], units, pos)]


def _matmul_rule(g, node, side, port, dim, units, pos, ctx):
    if node.target in _EINSUMS:
        return _einsum_rule(node, side, port, dim, units, pos, ctx)
    if node.target == "grouped_mm" and len(node.in_shapes) != 2:  # (E,M,K) @ (E,K,N): a bmm
        return _grouped_mm_rule(node, side, port, dim, units, pos, ctx)
    pa, pb, a, b, out, linear = _matmul_dims(node)
    no = len(out)
    if len(a) < 2 and not linear or len(b) < 1 or len(b) < 2 and not linear:
        ctx.block(f"'{node.name}' is a vector product; DepView does not model it")
        return []
    flows: list[Flow] = []
    # addmm/baddbmm's bias (input 0) is added to the product, broadcast: every output dim it
    # is not broadcast along is one of its dims
    biases = [] if linear else [p for p in range(len(node.in_shapes)) if p not in (pa, pb)]

    def batch(src_shape, d, skip):
        od = d + no - len(src_shape)
        res = [] if skip == "out" else [Flow("out", 0, od, units, pos)]
        for p, s in ((pa, a), (pb, b)):
            if skip == p or (linear and p == pb):
                continue
            dd = od - (no - len(s))
            if dd >= 0 and s[dd] != 1:
                res.append(Flow("in", p, dd, units, pos))
        return res + to_bias(od)

    def to_bias(od):
        res = []
        for p in biases:
            s = node.in_shapes[p]
            d = od - (no - len(s))
            if d >= 0 and s[d] != 1:  # (not broadcast along it)
                res.append(Flow("in", p, d, units, pos))
        return res

    def from_out(od):  # the operand dims output dim ``od`` is made of (and the bias's)
        if od == no - 1:
            return [Flow("in", pb, len(b) - 1, units, pos)] + to_bias(od)
        if od == no - 2:
            return [Flow("in", pa, len(a) - 2, units, pos)] + to_bias(od)
        return batch(out, od, "out")

    if linear:  # out = x @ W.T (+ bias): W is (out, in)
        bias_port = 2 if len(node.in_shapes) > 2 else None
        if side == "in" and port == pa:
            if dim == len(a) - 1:
                return [Flow("in", pb, 1, units, pos)]
            return [Flow("out", 0, dim + no - len(a), units, pos)]
        if side == "in" and port == pb:
            if dim == 1:
                return [Flow("in", pa, len(a) - 1, units, pos)]
            flows = [Flow("out", 0, no - 1, units, pos)]
            if bias_port is not None:
                flows.append(Flow("in", bias_port, 0, units, pos))
            return flows
        if side == "in" and port == bias_port:
            return [Flow("out", 0, no - 1, units, pos), Flow("in", pb, 0, units, pos)]
        if side == "out":
            if dim == no - 1:
                flows = [Flow("in", pb, 0, units, pos)]
                if bias_port is not None:
                    flows.append(Flow("in", bias_port, 0, units, pos))
                return flows
            return [Flow("in", pa, dim - (no - len(a)), units, pos)]
        return []

    if side == "in" and port in biases:
        # the output's dim and all it couples, at once: the pairs that reach the output from
        # here never come back through this op (b1 of addmm(b1, x, w1) reached w2's rows but
        # not w1's columns)
        od = dim + no - len(node.in_shapes[port])
        return [Flow("out", 0, od, units, pos)] + \
            [f for f in from_out(od) if (f.side, f.port) != ("in", port)]
    if side == "in" and port == pa:
        if dim == len(a) - 1:
            return [Flow("in", pb, len(b) - 2, units, pos)]
        if dim == len(a) - 2:
            return [Flow("out", 0, no - 2, units, pos)] + to_bias(no - 2)
        return batch(a, dim, pa)
    if side == "in" and port == pb:
        if dim == len(b) - 2:
            return [Flow("in", pa, len(a) - 1, units, pos)]
        if dim == len(b) - 1:
            return [Flow("out", 0, no - 1, units, pos)] + to_bias(no - 1)
        return batch(b, dim, pb)
    return from_out(dim)


def _attention_rule(g, node, side, port, dim, units, pos, ctx):
    """sdpa(q (..., L, E), k (..., S, E), v (..., S, Ev)) -> (..., L, Ev)."""
    if isinstance(node.meta, MhaCallMeta):
        return _mha_call_rule(g, node, side, port, dim, units, pos, ctx)
    if len(node.in_shapes) < 3:
        return []
    q, k, v = node.in_shapes[:3]
    out = node.out_shapes[0]
    nd = len(out)
    if side == "in" and port > 2:
        s = node.in_shapes[port]
        if dim >= len(s) - 2:
            ctx.block(f"'{node.name}' takes an attention mask coupled to the group")
            return []
        if dim + nd - len(s) < 0:
            return []
    # an additive mask or bias (BEiT's relative position bias) broadcasts against the scores
    # (..., L, S): its batch dims (heads) are the heads of q and the output
    shapes = {0: q, 1: k, 2: v, **{p: node.in_shapes[p] for p in range(3, len(node.in_shapes))
                                   if len(node.in_shapes[p]) >= 3}}
    shape = shapes[port] if side == "in" else out
    last, second = len(shape) - 1, len(shape) - 2
    if dim == last:
        if side == "in" and port < 2 and getattr(node.meta, "scale", 0) is None:
            ctx.inexact(f"'{node.name}' attention scale 1/sqrt(head_dim) changes with the "
                        "width (no scale= passed)")
        if side == "out" or port == 2:
            return [Flow("in", 2, len(v) - 1, units, pos)] if side == "out" else \
                [Flow("out", 0, nd - 1, units, pos)]
        return [Flow("in", 1 - port, len(shapes[1 - port]) - 1, units, pos)]
    if dim == second:
        if side == "out":
            return [Flow("in", 0, len(q) - 2, units, pos)]
        if port == 0:
            return [Flow("out", 0, nd - 2, units, pos)]
        return [Flow("in", 3 - port, len(shapes[3 - port]) - 2, units, pos)]  # k <-> v
    # batch dims (heads): with grouped-query attention q has n_rep heads per kv head
    od = dim + nd - len(shape)
    flows: list[Flow] = []
    if not (side == "out"):
        flows.append(Flow("out", 0, od, units, pos))
    hq = out[od]
    for p, s in shapes.items():
        if side == "in" and p == port:
            continue
        d = od - (nd - len(s))
        if d < 0 or s[d] == 1:
            continue
        src_n = shape[dim]
        if s[d] == src_n:
            flows.append(Flow("in", p, d, units, pos))
        elif s[d] < src_n:  # to a kv input from q/out: heads fold
            flows.append(Flow("in", p, d, units, pos // (src_n // s[d])))
        else:  # from kv to q
            r = s[d] // src_n
            p_all = (pos[:, None] * r + np.arange(r)[None, :]).reshape(-1)
            flows.append(Flow("in", p, d, np.repeat(units, r), p_all))
    if side == "in" and shape[dim] != hq and port != 0:
        r = hq // shape[dim]
        p_all = (pos[:, None] * r + np.arange(r)[None, :]).reshape(-1)
        flows = [f for f in flows if not (f.side == "out")]
        flows.append(Flow("out", 0, od, np.repeat(units, r), p_all))
    return flows


def _mha_call_rule(g, node, side, port, dim, units, pos, ctx):
    """``F.multi_head_attention_forward(query (L, N, E), key, value, E, num_heads, ...)``
    given its projections as tensors: ``in_proj_weight`` (3E, E) and ``in_proj_bias`` (3E),
    or ``q/k/v_proj_weight`` (E, E), (E, Ek), (E, Ev); ``out_proj_weight`` (Eo, E) and
    ``out_proj_bias`` (Eo); an ``attn_mask`` (N * num_heads, L, S) has a heads dim.

    torch asserts that q's projection is square, so the inner width (the rows of the q, k and
    v projections, the columns of out_proj) is the query's width E: inner channel i goes with
    query channel i (any pairing keeps the widths equal; this one keeps the rule exact). The
    inner channels are cut into heads of E / num_heads, so a unit is a whole head, and
    ``embed_dim_to_check`` and ``num_heads`` are sizes the call is given (see
    :func:`fixed_sizes`). With one head its dim shrinks instead (the 1/sqrt(head_dim) scale
    changes: inexact). A packed ``in_proj_weight`` shares its columns between query, key and
    value; separate k/v projections read the key's and value's own widths. The output's
    width is out_proj's rows, a group of its own."""
    meta, ins = node.meta, node.in_shapes
    at = meta.port
    query = mha_call_query(node)
    if query is None or len(ins[query[0]]) not in (2, 3) or query[1] % query[2]:
        ctx.block(f"'{node.name}' (multi_head_attention_forward) has a query DepView does not "
                  "read")
        return []
    if any(at(n) is not None for n in ("bias_k", "bias_v", "static_k", "static_v")):
        ctx.block(f"'{node.name}' (multi_head_attention_forward) is given bias_k/bias_v or "
                  "static keys, which DepView does not prune")
        return []
    q, e, heads = query
    hd = e // heads
    n_batch = ins[q][1] if len(ins[q]) == 3 else 1

    def shape(name: str) -> tuple[int, ...] | None:
        p = at(name)
        return ins[p] if p is not None else None

    packed = not meta.separate and shape("in_proj_weight") is not None and \
        len(shape("in_proj_weight")) == 2
    # which index space the arrival is in: the embed/inner channels, the output channels, a
    # separate key's or value's own columns, or the heads
    kind = None
    if side == "out":
        if port == 0 and dim == len(node.out_shapes[0]) - 1:
            kind, at_pos = "out", pos
        elif port == 1 and len(node.out_shapes[1]) == 4 and dim == 1:
            kind, at_pos = "heads", pos
    else:
        name = next((n for n, p in meta.ports if p == port), "")
        shp = ins[port]
        last = len(shp) - 1
        if name == "query" and dim == last or packed and name in ("key", "value") and \
                dim == last or name == "in_proj_weight" and dim == 1 or \
                name == "q_proj_weight" and dim == 1:
            kind, at_pos = "embed", pos
        elif name in ("key", "value") and dim == last:
            kind, at_pos = name, pos
        elif name in ("k_proj_weight", "v_proj_weight") and dim == 1:
            kind, at_pos = ("key" if name[0] == "k" else "value"), pos
        elif name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                      "in_proj_bias") and dim == 0 or name == "out_proj_weight" and dim == 1:
            kind, at_pos = "embed", pos % e
        elif name in ("out_proj_weight", "out_proj_bias") and dim == 0:
            kind, at_pos = "out", pos
        elif name == "attn_mask" and len(shp) == 3 and dim == 0 and shp[0] == n_batch * heads:
            kind, at_pos = "heads", pos % heads
    if kind is None:
        ctx.block(f"'{node.name}' (multi_head_attention_forward): DepView follows its embed, "
                  "head and output widths, not this dim")
        return []

    def flows_to(targets, u, p) -> list[Flow]:
        """(side, argument, dim, offsets): ``p`` at each offset along that dim (the q, k
        and v thirds of a packed projection); arguments not given are skipped."""
        out = []
        for sd, name, d, offsets in targets:
            tp = 0 if sd == "out" else at(name)
            if tp is None or sd == "in" and len(ins[tp]) <= d:
                continue
            out.append(Flow(sd, tp, d, np.tile(u, len(offsets)),
                            np.concatenate([p + o for o in offsets])))
        return out

    if kind == "out":
        return flows_to([("out", "", len(node.out_shapes[0]) - 1, (0,)),
                         ("in", "out_proj_weight", 0, (0,)), ("in", "out_proj_bias", 0, (0,))],
                        units, at_pos)
    if kind in ("key", "value"):
        return flows_to([("in", kind, len(ins[at(kind)]) - 1, (0,)),
                         ("in", f"{kind[0]}_proj_weight", 1, (0,))], units, at_pos)
    if kind == "heads":  # head h: its whole slab of inner channels
        units = np.repeat(units, hd)
        at_pos = (at_pos[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
    if heads > 1:  # a unit is a whole head: merge the units of one head, complete its slab
        h = at_pos // hd
        order = np.argsort(h, kind="stable")
        hs, us = h[order], units[order]
        same = hs[1:] == hs[:-1]
        if same.any():
            ctx.search.union_pairs(us[1:][same], us[:-1][same])
        first = np.concatenate(([True], ~same))
        hs, reps = hs[first], us[first]
        units = np.repeat(reps, hd)
        at_pos = (hs[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
    else:
        hs, reps = np.zeros(1, dtype=np.int64), units[:1]
        ctx.inexact(f"'{node.name}' (multi_head_attention_forward) scales by "
                    "1/sqrt(head_dim), which changes with the width of its one head")
    if len(node.out_shapes) > 1 and len(node.out_shapes[1]) == 3 and heads > 1 and \
            g.consumers.get((node.id, 1)):
        ctx.inexact(f"'{node.name}' (multi_head_attention_forward) averages its attention "
                    "weights over the heads")
    inner = (0, e, 2 * e)
    targets = [("in", "query", len(ins[q]) - 1, (0,)), ("in", "in_proj_bias", 0, inner),
               ("in", "out_proj_weight", 1, (0,))]
    if packed:
        targets += [("in", "key", len(ins[at("key")]) - 1, (0,)),
                    ("in", "value", len(ins[at("value")]) - 1, (0,)),
                    ("in", "in_proj_weight", 1, (0,)), ("in", "in_proj_weight", 0, inner)]
    else:
        targets += [("in", "q_proj_weight", 1, (0,))] + \
            [("in", f"{x}_proj_weight", 0, (0,)) for x in "qkv"]
    flows = flows_to(targets, units, at_pos)
    mask = shape("attn_mask")
    if heads > 1 and mask is not None and len(mask) == 3 and mask[0] == n_batch * heads:
        flows.append(Flow("in", at("attn_mask"), 0, np.tile(reps, n_batch),
                          (np.arange(n_batch)[:, None] * heads + hs[None, :]).reshape(-1)))
    if heads > 1 and len(node.out_shapes) > 1 and len(node.out_shapes[1]) == 4:
        flows.append(Flow("out", 1, 1, reps, hs))
    return flows


def mha_call_query(node: Node) -> tuple[int, int, int] | None:
    """``(port, width, num_heads)`` of the query of a ``multi_head_attention_forward`` call,
    or None for any other node (or a call given no query, or no heads)."""
    meta = node.meta
    if not isinstance(meta, MhaCallMeta) or meta.num_heads < 1:
        return None
    q = meta.port("query")
    if q is None or not node.in_shapes[q]:
        return None
    return q, node.in_shapes[q][-1], meta.num_heads


def _affine_ports(node: Node, meta) -> list[int]:
    """The inputs of ``F.layer_norm``/``F.rms_norm`` (weight, bias) shaped like the
    normalised dims: they lose the positions those dims lose."""
    if meta.op not in SHAPE_NORMS:
        return []
    norm = node.in_shapes[0][len(node.in_shapes[0]) - len(meta.dims):]
    return [p for p in range(1, len(node.in_shapes)) if node.in_shapes[p] == norm]


def _returns_positions(g: Graph, node: Node, ctx: _Ctx) -> bool:
    """Blocks the group when ``node`` returns positions along the pruned dim that something
    reads (:data:`optypes.INDEX_OUTPUTS`: ``x.argmax(-1)``, the indices of ``x.max(1)``):
    pruning renumbers them, so a predicted class id would silently name another class."""
    p = INDEX_OUTPUTS.get(node.target)
    if p is None or p >= len(node.out_shapes) or not g.consumers.get((node.id, p)):
        return False
    ctx.block(f"'{node.name}' ({node.target}) returns positions along the pruned dim: pruning "
              "would change what they point to")
    return True


def _reduction_rule(g, node, side, port, dim, units, pos, ctx):
    meta = node.meta
    if meta is None or not hasattr(meta, "dims"):
        return []
    if meta.op in ("max", "min") and len(node.in_shapes) > 1:
        # torch.max(a, b) is torch.maximum(a, b): b's channels are a's
        return _elementwise_rule(g, node, side, port, dim, units, pos, ctx)
    a, b = node.in_shapes[0], node.out_shapes[0]
    affine = _affine_ports(node, meta) if len(node.in_shapes) > 1 else []
    if affine and (port in affine if side == "in" else port == 0 and dim in meta.dims):
        # an affine tensor of a layer norm, or its output: the input, the output and the
        # other affine tensors along the normalised dims
        off = len(a) - len(meta.dims)
        d = dim + off if side == "in" else dim
        ctx.inexact(f"'{node.name}' ({node.target}) reduces over pruned channels")
        flows = [Flow("in", p, d - off, units, pos) for p in affine
                 if not (side == "in" and p == port)]
        flows.append(Flow("in", 0, d, units, pos))
        if side == "in":
            flows.append(Flow("out", 0, d, units, pos))
        return flows
    if port != 0:
        return []
    if side == "in":
        if dim in meta.dims:
            if _returns_positions(g, node, ctx):
                return []
            ctx.inexact(f"'{node.name}' ({node.target}) reduces over pruned channels")
            flows = [Flow("in", p, dim - (len(a) - len(meta.dims)), units, pos)
                     for p in affine]
            if meta.keepdim and len(b) == len(a) and b[dim] == a[dim]:
                return flows + [Flow("out", p, dim, units, pos)
                                for p in range(len(node.out_shapes))]
            return flows  # reduced away: fewer terms in the reduction, shapes unaffected
        od = dim if meta.keepdim or len(b) == len(a) else dim - sum(d < dim for d in meta.dims)
        return [Flow("out", p, od, units, pos) for p in range(len(node.out_shapes))]
    if meta.keepdim or len(b) == len(a):
        d = dim
    else:
        kept = [d for d in range(len(a)) if d not in meta.dims]
        d = kept[dim]
    if d in meta.dims and not (len(b) == len(a) and b[dim] == a[dim]):
        return []
    flows = [Flow("in", 0, d, units, pos)]
    flows += [Flow("out", p, dim, units, pos) for p in range(len(node.out_shapes)) if p != port]
    return flows


def _functional_conv(base: Rule) -> Rule:
    """``F.conv1d/2d/3d(x, w, b)`` on tensors of the model's own (a conv written without
    nn.Conv2d, a weight-standardised one): the call owns nothing and reads its widths from
    ``w``, so its output channels are ``w``'s rows and ``b``, its input channels ``w``'s
    columns. Those tensors' PARAMETER nodes are the members. A grouped call blocks; other dims
    follow the module rule (``base``)."""

    def rule(g, node, side, port, dim, units, pos, ctx):
        ins = node.in_shapes
        if _functional_depthwise(node) and (side == "out" and dim == 1 or side == "in" and (
                port == 0 and dim == 1 or port in (1, 2) and dim == 0)):
            # F.conv1d(x, w (C, 1, k), b, groups=C): channel c of x is row c of w and b, and
            # channel c of the output; ``groups`` must follow (given as x.shape[1] it does,
            # a number stored elsewhere shows in validation)
            keys = [("out", 0, 1), ("in", 0, 1), ("in", 1, 0)] + \
                ([("in", 2, 0)] if len(ins) > 2 and len(ins[2]) == 1 else [])
            return [Flow(sd, p, d, units, pos) for sd, p, d in keys if (sd, p) != (side, port)]
        if _functional_depthwise(node) and side == "in" and port > 0:
            ctx.block(f"'{node.name}' reads the pruned dim of its weight as a kernel")
            return []
        if len(ins) < 2 or len(ins[1]) != len(ins[0]) or ins[0][1] != ins[1][1]:
            ctx.block(f"'{node.name}' is a grouped functional {node.target} call; DepView "
                      "prunes grouped convs called as modules")
            return []
        bias = len(ins) > 2 and len(ins[2]) == 1
        if side == "out" and dim == 1 or side == "in" and port in (1, 2) and dim == 0:
            flows = [Flow("out", 0, 1, units, pos)] if side == "in" else []
            flows += [Flow("in", p, 0, units, pos) for p in ((1, 2) if bias else (1,))
                      if not (side == "in" and p == port)]
            return flows
        if side == "in" and dim == 1 and port in (0, 1):
            return [Flow("in", 1 - port, 1, units, pos)]
        if side == "in" and port > 0:
            ctx.block(f"'{node.name}' reads the pruned dim of its weight as a kernel")
            return []
        return base(g, node, side, port, dim, units, pos, ctx)

    return rule


def _functional_embedding_rule(node, side, port, dim, units, pos, ctx):
    """``F.embedding(ids, weight)`` / ``F.embedding_bag(ids, weight, ...)`` with a weight of
    the model's own (a bare table, or one computed from buffers: a codebook): the output's
    last dim is the table's columns (a bag's sum, mean or max keeps each column apart; so
    does ``max_norm``, whose row norms see zeroed columns as the pruned ones). The rows are
    picked by token ids: never pruned."""
    out_d = len(node.out_shapes[0]) - 1
    if side == "out" and port == 0 and dim == out_d:
        return [Flow("in", 1, 1, units, pos)]
    if side == "in" and port == 1 and dim == 1:
        return [Flow("out", 0, out_d, units, pos)]
    if side == "in" and port == 1:
        ctx.block(f"'{node.name}' picks rows of its table by token ids: the vocabulary is "
                  "never pruned")
    elif side == "in" and port > 1:  # a bag's offsets or per-sample weights
        ctx.block(f"'{node.name}' reads input {port} as bag offsets or weights, not channels")
    elif node.in_shapes[0] == node.out_shapes[0][:-1]:
        # the ids' dims (batch, sequence) are the output's leading dims, one for one
        return [Flow("in" if side == "out" else "out", 0, dim, units, pos)]
    else:  # a bag: its ids' positions are summed into one row
        ctx.block(f"'{node.name}' ({node.target}) mixes positions along dim {dim}")
    return []


def _functional_depthwise(node: Node) -> bool:
    """A functional conv with one input channel per group and one output per group."""
    ins, outs = node.in_shapes, node.out_shapes
    return len(ins) >= 2 and len(ins[1]) == len(ins[0]) and ins[1][1] == 1 and \
        ins[0][1] == ins[1][0] == outs[0][1] > 1


def _modules_only(rule: Rule) -> Rule:
    """Layer rules apply to module calls; a functional ``F.conv2d(x, w)`` owns no module
    whose attributes could follow, so a group reaching one is not prunable (except a
    functional conv, see :func:`_functional_conv`)."""
    functional = _functional_conv(rule)

    def wrapped(g, node, side, port, dim, units, pos, ctx):
        if not node.is_module and node.op_type is OpType.CONV:
            return functional(g, node, side, port, dim, units, pos, ctx)
        if not node.is_module and node.op_type is OpType.EMBED:
            return _functional_embedding_rule(node, side, port, dim, units, pos, ctx)
        if not node.is_module:
            ctx.block(f"'{node.name}' is a functional {node.target} call; DepView prunes "
                      "layers called as modules")
            if side == "out" or port == 0:  # shown in the group, so the block can be seen
                ctx.member(node, side, dim, units, pos)
            return []
        return rule(g, node, side, port, dim, units, pos, ctx)

    return wrapped


def _mha_rule(g, node, side, port, dim, units, pos, ctx):
    """nn.MultiheadAttention: the query width, the key/value widths (packed in_proj) and the
    inner q/k/v width are all ``embed_dim``. Input column i is coupled to the same column for
    q, k and v inputs; the output width is coupled to the inputs by count only: removing k
    channels removes k / num_heads inner dims from every head (chosen by their own weights).
    With ``kdim``/``vdim`` (cross-attention on a memory of another width) the key and value
    are read by weights of their own (``k_proj_weight``/``v_proj_weight`` columns): their
    widths are groups of their own, which end there; the query and output are as above."""
    shape = node.in_shapes[port] if side == "in" else node.out_shapes[port]
    e = int(node.attrs.get("embed_dim", 0))
    separate = mha_separate(node)
    if separate and side == "in" and port in (1, 2):
        if dim == len(shape) - 1:
            ctx.member(node, "in", dim, units, pos, port)
        return []
    if dim != len(shape) - 1 or shape[-1] != e or (side == "out" and port != 0):
        return []
    heads = int(node.attrs.get("num_heads", 1))
    ctx.multiple_of(heads, "attention heads")
    ctx.inexact(f"'{node.name}' attention scale 1/sqrt(head_dim) changes with the width")
    mside = "in" if side == "in" else "out"
    ctx.member(node, mside, dim, units, pos)
    ctx.search.mha_sides.setdefault(node.id, set()).add(mside)
    return [Flow("in", p, len(node.in_shapes[p]) - 1, units, pos) for p in range(3)
            if p < len(node.in_shapes) and node.in_shapes[p] and node.in_shapes[p][-1] == e
            and not (side == "in" and p == port) and not (separate and p)]


#: How units cross each op type. One entry per OpType (a test checks it is complete).
#: Rules read a node's fields listed in ``_Repeats.fp``, the graph's ``in_edges`` and
#: ``consumers`` (and, for :data:`READS_INPUT_PRODUCER`, input 0's producer), and nothing
#: else: the reuse of groups across repeated blocks relies on it.
RULES: dict[OpType, Rule] = {
    OpType.INPUT: _source_block("the model input"),
    OpType.OUTPUT: _output_rule,
    OpType.BUFFER: _buffer_rule,
    OpType.CONSTANT: _constant_rule,
    OpType.PARAMETER: _parameter_rule,
    OpType.CONV: _modules_only(_grouped_conv_rule(_layer_rule(_conv_out, _conv_in))),
    OpType.DEPTHWISE_CONV: _layer_rule(_conv_out, _conv_in, passthrough=True),
    OpType.CONV_TRANSPOSE: _modules_only(_grouped_conv_rule(_layer_rule(_conv_out, _conv_in))),
    OpType.BN: _modules_only(_layer_rule(lambda n: 1, lambda n: 1, passthrough=True)),
    OpType.IN: _layer_rule(lambda n: 1, lambda n: 1, passthrough=True),
    OpType.GN: _gn_rule(),
    OpType.LN: _ln_rule,
    OpType.PRELU: _layer_rule(lambda n: _channel_dim(n.in_shapes[0]),
                              lambda n: _channel_dim(n.in_shapes[0]), passthrough=True),
    OpType.LINEAR: _layer_rule(lambda n: -1, lambda n: -1),
    OpType.EMBED: _modules_only(_layer_rule(lambda n: -1, lambda n: 10**6)),
    OpType.MHA: _mha_rule,
    OpType.LSTM: _recurrent_rule,
    OpType.GRU: _recurrent_rule,
    OpType.RNN: _recurrent_rule,
    OpType.CUSTOMIZED: _custom_rule,
    OpType.CONCAT: _concat_rule,
    OpType.SPLIT: _split_rule,
    OpType.UNBIND: _unbind_rule,
    OpType.SLICE: _slice_rule,
    OpType.RESHAPE: _reshape_rule,
    OpType.PERMUTE: _permute_rule,
    OpType.EXPAND: _expand_rule,
    OpType.PIXEL_SHUFFLE: _pixel_shuffle_rule,
    OpType.UNFOLD: _unfold_rule,
    OpType.SPATIAL: _spatial_rule,
    OpType.MATMUL: _matmul_rule,
    OpType.ATTENTION: _attention_rule,
    OpType.REDUCTION: _reduction_rule,
    OpType.ELEMENTWISE: _elementwise_rule,
}


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
        # units that reached what blocks the group (see _Ctx.block); True: every unit
        self.blocked: list[IntArray] = []
        self.whole_blocked = False
        self.stats_notes: list[str] = []
        self.opaque_notes: set[str] = set()  # those of them that only a run can settle
        self.multiple = 1
        self.multiple_why: list[str] = []
        self.mha_sides: dict[int, set[str]] = {}
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
            for e in self.g.consumers.get((nid, port), ()):
                t = nodes[e.target]
                got.append((t, "in", e.target_port, RULES[t.op_type],
                            (e.target, "in", e.target_port)))
            self.link_cache[(nid, port)] = got
        return got

    def run(self, ctx: _Ctx) -> None:
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

    def _visit(self, ctx: _Ctx, key: TensorKey, b: int, via, links: list[tuple]) -> None:
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
        return _conv_out(node)
    if t is OpType.PARAMETER and len(node.out_shapes[0]) in (4, 5):
        # a 4-D/5-D parameter is laid out channels-first, as the maps it meets: a position
        # table added to a feature map, a weight given to F.conv2d (its last dim is a
        # kernel's width, not channels)
        return 1
    if t in _ROOT_LAST_DIM:
        return len(node.out_shapes[0]) - 1
    if t is OpType.CUSTOMIZED and not node.custom.opaque:
        return _norm(node.custom.out_channel_dim, len(node.out_shapes[0]))
    return None


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
        return _conv_in(node)
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
    ctx = _Ctx(s)
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
            code = np.unique(p.astype(np.int64) * (n + 1) + label[u])
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
    grp.stats_notes = list(dict.fromkeys(s.stats_notes))
    grp.exact = not grp.stats_notes
    grp.opaque_only = not grp.exact and set(grp.stats_notes) <= s.opaque_notes
    grp.multiple_of = s.multiple
    grp.multiple_why = s.multiple_why
    for nid, sides in s.mha_sides.items():
        if len(sides) == 1:  # width in and out must change together: both in this group
            grp.reasons.append(f"'{graph.nodes[nid].name}' (nn.MultiheadAttention) has its "
                               "input and output widths in different groups; they must shrink "
                               "together")
    _check_multiple(grp)
    if blocked is not None and s.blocked and not s.whole_blocked and \
            len(grp.reasons) == len(dict.fromkeys(s.reasons)):  # no reason for all units
        bad = np.unique(label[np.concatenate(s.blocked)])
        if len(bad) < grp.n_units:
            blocked.append(bad)
    if trail is not None:
        trail.extend(s.cls)
        trail.extend(s.invalid)
    return grp


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
                     grp.multiple_of, list(grp.multiple_why), grp.opaque_only)
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
    msg = (str(exc).splitlines() or [""])[0]
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


#: ``outer`` of :func:`_map_reshape` that also overrides a ``-1``, and that also skips the
#: outermost of three or more candidate dims: see :func:`outer_alternative`
OVER_INFERRED, PAST_OUTERMOST = 2, 3


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
    pos = np.unique(group.tensors[key][0])
    modes = (OVER_INFERRED, PAST_OUTERMOST) if over_inferred else (True,)
    alt = None
    for outer in modes:
        try:
            found = _search(graph, root, "out", d, pos, group.id, outer=outer)
        except (DepViewError, IndexError, ValueError):  # a rule failed: no alternative
            continue
        same = found.n_units == group.n_units and \
            [(m.node, m.side, m.dim) for m in found.members] == \
            [(m.node, m.side, m.dim) for m in group.members]
        if not same:
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
        found = [np.unique(p).astype(np.int64) for p in parts]
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
            held = np.unique(got[0])
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
                                 nid in self.g.free_outputs)
        return f

    @staticmethod
    def key(node: Node, port: int, dim: int) -> tuple:
        return node.op_type, node.target, node.out_shapes, port, dim

    def add(self, node: Node, port: int, dim: int, grp: Group, trail: list[TensorKey]) -> None:
        sharing = self.g.sharing
        if grp.reasons or grp.stats_notes or any(m.node in sharing for m in grp.members):
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
    for (nid, port, dim), (pos, unit) in group.tensors.items():
        shapes = graph.nodes[nid].out_shapes
        if port >= len(shapes) or not 0 < dim < len(shapes[port]) - 2 or not len(pos):
            continue
        if any(graph.nodes[e.target].op_type in (OpType.ATTENTION, OpType.MATMUL)
               for e in graph.consumers.get((nid, port), ())):
            seen[unit] = True
            if seen.all():
                return True
    return False


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
