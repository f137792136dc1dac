"""How units cross each op type: one rule per :class:`OpType` (:data:`RULES`).

A rule is given the pairs ``(unit, position)`` that reached one side of a node along one dim,
and returns where they go next (:class:`Flow`: a side, port and dim of the same node, with the
positions mapped: a concat's offset, a split's range, a reshape's H*W features per channel).
It may also record the node as a member of the group, block the group with a reason in words,
ask for multiples (heads, GroupNorm groups), mark it inexact, or merge units (a view that
splits D into (H, d) makes each head one unit), through its :class:`RuleContext`. The search
that drives the rules and makes groups of what they record is in :mod:`groups`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .arrays import unique
from .errors import DepViewError
from .graph import Graph, Node
from .handlers import cell_port, cell_width, conv_width, mha_separate, rnn_hidden
from .meta import (
    WRITE,
    ConcatMeta,
    CountsMeta,
    EinsumMeta,
    ElementwiseMeta,
    ExpandMeta,
    MatmulMeta,
    MhaCallMeta,
    PadMeta,
    PermuteMeta,
    ReshapeMeta,
    SetItemMeta,
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
    GATHERS,
    INDEX_OUTPUTS,
    KEEPS_ZERO,
    MASKED_SCATTERS,
    MOVES_VALUES,
    PAIR_REDUCTIONS,
    PICKS,
    SCATTERS,
    SEQUENCE_PACKING,
    SHAPE_NORMS,
    ZERO_REDUCTIONS,
    OpType,
    conv_prunes_whole_groups,
    gn_prunes_whole_groups,
)
from .positions import pick_dim, picked_key, picks_at, position_reads

if TYPE_CHECKING:
    from .groups import _Search


IntArray = np.ndarray
TensorKey = tuple[int, int, int]  # (node id, output port, dim)


class Flow(NamedTuple):
    """Pairs moving across a node: to its ``side`` ("in"/"out") ``port`` along ``dim``."""

    side: str
    port: int
    dim: int
    units: IntArray
    pos: IntArray


def _fwd_dim(out_ndim: int, in_ndim: int, d: int) -> int:
    return d + out_ndim - in_ndim  # broadcasting aligns shapes on the right


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


class RuleContext:
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

    def exact_if_zero(self, key: TensorKey, note: str) -> None:
        """Exact only if the group's positions of tensor dim ``key`` are zero in the masked
        original (a sum over them: a zeroed channel adds nothing, but one a sigmoid made 0.5
        adds 0.5); else inexact with ``note``. Decided when the search is done, by
        :func:`nonzero_by`: the ops that made the tensor are known only then."""
        self.search.zero_checks.append(((key,), note))

    def exact_if_one_zero(self, keys: Iterable[TensorKey], note: str) -> None:
        """Exact only if at least one of the tensor dims ``keys`` is zero at the group's
        positions in the masked original: a contraction of two tensors over them (``q @
        k.T`` over removed head dims) adds a product per position, which one zero factor
        makes 0, and two activations that do not keep 0 at 0 (sigmoids) do not; else
        inexact with ``note``. (For a sum that needs every operand zero, a distance, call
        :meth:`exact_if_zero` once per operand.)"""
        self.search.zero_checks.append((tuple(keys), note))

    def opaque(self, note: str) -> None:
        """Inexact for all DepView knows: a layer's own forward, which no rule reads."""
        self.search.stats_notes.append(note)
        self.search.opaque_notes.add(note)

    def merge(self, units: IntArray) -> None:
        self.search.union_all(units)

    def jump(self, key: TensorKey, units: IntArray, pos: IntArray) -> None:
        """The pairs go on at tensor dim ``key`` of another node, which values couple to
        this one, not a tensor of the graph (:mod:`viewer.core.positions`)."""
        self.search.arrive(*key, units, pos)

    def keep_at_least(self, key: TensorKey, n: int, why: str) -> None:
        """At least ``n`` positions of tensor dim ``key`` must stay (``topk`` picks ``n``);
        ``why`` says so in words. The group turns it into units (``groups._least_units``)."""
        self.search.min_kept.append((key, int(n), why))


Rule = Callable[[Graph, Node, str, int, int, IntArray, IntArray, RuleContext], list[Flow]]


def _source_block(what: str) -> Rule:
    def rule(g, node, side, port, dim, units, pos, ctx):
        ctx.block(f"it reaches {what} '{node.name}'")
        return []
    return rule


#: how the OUTPUT rule's reason begins (:func:`output_of_reason` reads the name back)
OUTPUT_BLOCK = "it reaches the model output '"


def output_of_reason(reason: str) -> str | None:
    """The OUTPUT node a reason of the OUTPUT rule names (None for another reason).

        >>> output_of_reason("it reaches the model output 'output.logits'")
        'output.logits'
    """
    if not reason.startswith(OUTPUT_BLOCK):
        return None
    return reason[len(OUTPUT_BLOCK):].split("'", 1)[0]


def _output_rule(g, node, side, port, dim, units, pos, ctx):
    """A model output blocks the group, unless the user let its width change (a detector's
    hidden states beside its logits and boxes: see ``Pruner(free_outputs=...)``; which
    outputs could be: :func:`groups.held_by_outputs`)."""
    if node.id not in g.free_outputs:
        ctx.block(f"{OUTPUT_BLOCK}{node.name}'")
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
            if side == "out" and dim == norm_dim(out_dim(node), len(node.out_shapes[0])):
                ctx.member(node, side, dim, units, pos)
            return []
        nd_in, nd_out = len(node.in_shapes[0]), len(node.out_shapes[0])
        od, id_ = norm_dim(out_dim(node), nd_out), norm_dim(in_dim(node), nd_in)
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


def _window_dim(node: Node, same: bool, verb: str, ctx: RuleContext,
                flows: list[Flow]) -> list[Flow]:
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


def _own_forward_note(node: Node, ctx: RuleContext) -> None:
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


def conv_out_dim(node: Node) -> int:
    return _conv_channel(node, len(node.out_shapes[0]))


def conv_in_dim(node: Node) -> int:
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


def _rnn_places(node: Node) -> dict[tuple[str, int, int], str] | None:
    """What each dim but the features of an RNN's (or cell's) tensors is: ``"time"`` (input
    0's and output 0's steps), ``"batch"`` (theirs and the states'), ``"layers"`` (the
    states' layers times directions), by ``(side, port, dim)``; None for a packed sequence
    (its data's rows are every sequence's steps, counted by its batch sizes)."""
    ends = [("in", p, s) for p, s in enumerate(node.in_shapes)] + \
        [("out", p, s) for p, s in enumerate(node.out_shapes)]
    if any(len(s) == 1 for _, p, s in ends if p) and len(node.in_shapes[0]) == 2 and \
            not node.target.endswith("Cell"):
        return None
    places = {}
    for side, p, s in ends:
        nd = len(s)
        if node.target.endswith("Cell"):  # (N, H_in) -> (N, H), states (N, H)
            if nd == 2:
                places[side, p, 0] = "batch"
        elif p == 0:  # (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched
            if nd == 3:
                t, b = (1, 0) if node.attrs.get("batch_first") else (0, 1)
                places[side, p, t], places[side, p, b] = "time", "batch"
            elif nd == 2:
                places[side, p, 0] = "time"
        elif nd >= 2:  # h0/c0, h_n/c_n: (layers * directions, N, H) or (layers * dirs, H)
            places[side, p, 0] = "layers"
            if nd == 3:
                places[side, p, 1] = "batch"
    return places


def _rnn_positions(node, side, port, dim, units, pos, ctx):
    """An RNN's time steps (input 0's and output 0's: fewer steps, a state carried across
    fewer of them: inexact) and batch (every tensor's: exact) are coupled by index."""
    places = _rnn_places(node)
    if places is None:
        ctx.block(f"'{node.name}' runs a packed sequence over the pruned dim; DepView does not "
                  "prune its steps")
        return []
    role = places.get((side, port, dim))
    if role is None:
        return []
    if role == "layers":
        ctx.block(f"'{node.name}' holds its layers' states along the pruned dim")
        return []
    if role == "time":
        ctx.inexact(f"'{node.name}' carries its state across pruned time steps")
    return _same_role(node, places, side, port, dim, units, pos)


def _recurrent_rule(g, node, side, port, dim, units, pos, ctx):
    shape = node.in_shapes[port] if side == "in" else node.out_shapes[port]
    if dim != len(shape) - 1:
        return _rnn_positions(node, side, port, dim, units, pos, ctx)
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
    cd = norm_dim(entry.in_channel_dim if side == "in" else entry.out_channel_dim, len(shape))
    if dim != cd:
        return []
    ctx.member(node, side, dim, units, pos)
    if entry.passthrough:
        other = "out" if side == "in" else "in"
        oshape = node.out_shapes[0] if side == "in" else node.in_shapes[0]
        od = norm_dim(entry.out_channel_dim if side == "in" else entry.in_channel_dim, len(oshape))
        if oshape[od] != shape[dim]:  # a wrong registration: channel i cannot be channel i
            widths = (shape[dim], oshape[od]) if side == "in" else (oshape[od], shape[dim])
            ctx.block(f"'{node.name}' is registered with passthrough=True (its output channel "
                      f"i is its input channel i), but its input has {widths[0]} channels "
                      f"and its output {widths[1]}")
            return []
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
    if node.target in PAIR_REDUCTIONS and (
            not isinstance(meta, ElementwiseMeta) or meta.mixes):  # (a loss, unreduced: below)
        return _pair_reduction_rule(node, side, port, dim, units, pos, ctx)
    if node.target in MASKED_SCATTERS:
        return _masked_scatter_rule(node, side, port, dim, units, pos, ctx)
    if node.target in CHANNEL_SHUFFLES:
        return _channel_shuffle_rule(node, side, dim, units, pos, ctx)
    if isinstance(meta, CountsMeta):
        return _counts_rule(g, node, side, port, dim, units, pos, ctx)
    if node.target in PICKS and side == "in" and port == 0 and \
            _picked(g, node, dim, units, pos, ctx):
        return []
    if node.target in GATHERS and side == "in" and port == 0 and isinstance(
            meta, ElementwiseMeta) and meta.moves == (dim,):  # scores.gather(1, picked ids)
        e = g.in_edges[node.id][0]
        if _to_pick(g, node, 1, (e.source, e.source_port, dim), units, pos, ctx):
            return []
    if node.target in SCATTERS and (side == "out" or port == 0) and isinstance(
            meta, ElementwiseMeta) and meta.moves == (dim,) and len(node.out_shapes) == 1 \
            and _to_pick(g, node, 1, (node.id, 0, dim), units, pos, ctx):
        # written at picked positions (mask.scatter_(1, picked ids, 1)): along that dim the
        # output is the input, position for position
        return [Flow("in", 0, dim, units, pos)] if side == "out" else \
            [Flow("out", 0, dim, units, pos)]
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
        if _returns_positions(g, node, ctx, units, pos):
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


def _picked(g, node, dim, units, pos, ctx) -> bool:
    """The group reached the dim whose positions ``node`` returns (``topk`` over a router's
    expert logits): when every op that reads them reads position v as value v (counts per
    expert, ``bias[ids]``; see :mod:`viewer.core.positions`), the units go on to those
    dims, and at least as many as the op picks must stay; when another op reads them as
    numbers, the group is blocked. Top k values alone are a reduction to k of them (the
    positions unread). False (the caller decides) when nothing reads an argmax's positions."""
    if dim is None or pick_dim(node) != dim:
        return False
    reads = position_reads(g, node)
    if not reads.readers and not reads.other and node.target != "topk":
        return False
    width = node.in_shapes[0][dim]
    odd = [g.nodes[k[0]] for k in reads.readers if g.nodes[k[0]].out_shapes[k[1]][k[2]] != width]
    if reads.other or odd:
        first = reads.other[0] if reads.other else None
        what = f"the model returns ('{first.name}')" if first is not None and \
            first.op_type is OpType.OUTPUT else \
            f"'{first.name}' ({first.target}) reads as numbers" if first is not None else \
            f"'{odd[0].name}' ({odd[0].target}) reads with room for another count of them"
        ctx.block(f"'{node.name}' ({node.target}) returns positions along the pruned dim that "
                  f"{what}: pruning would change what they point to")
        return True
    k, before, taken = _picks_count(node), _picked_before(g, node), _picked_before_count(g, node)
    e = g.in_edges[node.id][0]
    ctx.keep_at_least((e.source, e.source_port, dim), k + taken,
                      f"'{node.name}' ({node.target}) picks {k} of them" +
                      (f" besides the {taken} that {_names(before)} picked"
                       if before else ""))
    ctx.inexact(f"'{node.name}' ({node.target}) picks among the pruned channels")
    for key in reads.readers:
        ctx.jump(key, units, pos)
    return True


def _picks_count(pick: Node) -> int:
    """How many positions ``pick`` returns per row: ``topk``'s k, one for an argmax."""
    return pick.out_shapes[0][pick_dim(pick)] if pick.target == "topk" else 1


def _picked_before(g: Graph, pick: Node) -> list[Node]:
    """The picks whose positions were written into ``pick``'s input just before it (PhiMoE's
    router writes ``-inf`` at its first expert, ``torch.scatter(scores, -1, ids, -inf)``,
    and picks its second among the rest): those positions are taken, so ``pick`` needs as
    many more to pick from."""
    e = g.in_edges[pick.id][0]
    src = g.nodes[e.source]
    edges = g.in_edges.get(src.id, ())
    if src.target not in SCATTERS or e.source_port != 0 or len(edges) < 2:
        return []
    return picks_at(g, edges[1].source, edges[1].source_port)


def _picked_before_count(g: Graph, pick: Node) -> int:
    return sum(_picks_count(p) + _picked_before_count(g, p) for p in _picked_before(g, pick))


def _names(nodes: list[Node]) -> str:
    return " and ".join(f"'{n.name}' ({n.target})" for n in nodes)


def _to_pick(g, node, port, key, units, pos, ctx) -> bool:
    """The group reached tensor dim ``key``, which ``node`` reads as the values of its input
    ``port``: positions ops picked (:func:`positions.picks_at`). The units go back to the
    dims they picked them from (which sends them on to every reader, :func:`_picked`);
    False if no such op is found."""
    edges = g.in_edges.get(node.id, ())
    if port >= len(edges):
        return False
    picks = picks_at(g, edges[port].source, edges[port].source_port)
    if not picks or any(key not in position_reads(g, p).readers for p in picks):
        return False
    for pick in picks:
        ctx.jump(picked_key(g, pick), units, pos)
    return True


def _counts_rule(g, node, side, port, dim, units, pos, ctx):
    """``histc``/``bincount``/``one_hot`` (:class:`CountsMeta`): position v of the output's
    counted dim is value v of the input, positions an op picked (a router's experts); the
    other dims of ``one_hot`` are its input's."""
    meta = node.meta
    if side == "out" and dim == meta.dim:
        if not _to_pick(g, node, 0, (node.id, 0, dim), units, pos, ctx):
            ctx.block(f"'{node.name}' ({node.target}) counts values along the pruned dim that "
                      "are not positions DepView can follow")
        return []
    if meta.op == "one_hot" and port == 0:
        return [Flow("out" if side == "in" else "in", 0, dim, units, pos)]
    ctx.block(f"'{node.name}' ({node.target}) reads the pruned dim's values as numbers")
    return []


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
    """``optypes.PAIR_REDUCTIONS``: ``F.cosine_similarity(a, b, dim)``,
    ``F.pairwise_distance(a, b)`` or a reduced loss (``F.mse_loss(a, b)``) on two tensors of
    one shape: position i of a is position i of b; the dims it reduces (``meta.mixes``: one,
    or every dim for a loss) are gone from the output (or kept with size 1: ``keepdim=True``),
    and a group there is inexact (the norms, the mean change); every other dim is the
    output's, in order."""
    a, out = node.in_shapes[0], node.out_shapes[0]
    meta = node.meta
    reduced = meta.mixes if isinstance(meta, ElementwiseMeta) else ()
    kept = len(out) == len(a) and all(out[r] == 1 for r in reduced)  # keepdim=True
    if len(node.in_shapes) != 2 or node.in_shapes[1] != a or not reduced \
            or not (kept or len(out) == len(a) - len(reduced)):
        ctx.block(f"'{node.name}' ({node.target}) changes shape in a way DepView does not model")
        return []

    def out_dim(d):  # the output's dim of input dim d (d not reduced)
        return d if kept else d - sum(r < d for r in reduced)

    if side == "out":
        if kept and dim in reduced:
            ctx.block(f"'{node.name}' ({node.target}) reduces the pruned dim to one value")
            return []
        d = next(d for d in range(len(a)) if d not in reduced and out_dim(d) == dim)
        return [Flow("in", 0, d, units, pos), Flow("in", 1, d, units, pos)]
    flows = [Flow("in", 1 - port, dim, units, pos)]
    if dim in reduced:
        ctx.inexact(f"'{node.name}' ({node.target}) reduces over pruned channels")
        return flows
    return flows + [Flow("out", 0, out_dim(dim), units, pos)]


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


def _unreadable(node: Node, ctx: RuleContext, kind: type) -> bool:
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
            e = g.in_edges[node.id][0]
            if not _to_pick(g, node, 1, (e.source, e.source_port, dim), units, pos, ctx):
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


#: ``outer`` of :func:`_map_reshape` that also overrides a ``-1``, and that also skips the
#: outermost of three or more candidate dims: see :func:`groups.outer_alternative`
OVER_INFERRED, PAST_OUTERMOST = 2, 3


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
    if len(u) == 0 or flats.shape[1] == 1 and len(unique(units)) == len(units):
        return None  # one position per unit already: no copies to meet (a heads split)
    span = int(u.max()) + 1
    for t in big:
        coords = ((flats // math.prod(gb[t + 1:])) % gb[t]).reshape(-1)
        pairs = unique(coords * span + u)  # (position, unit), encoded
        if len(pairs) < len(coords) and len(unique(pairs // span)) == len(pairs):
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
    if not interleave and _whole_copies(units, pos, a[d]):
        # each unit holds whole copies (Llama 4 repeats its tokens once per expert,
        # ``x.repeat(n_experts, 1)``, and an expert's scores weigh its copy): fewer copies
        # lose no position of the input
        return []
    return [Flow("in", 0, d, units, pos // r if interleave else pos % a[d])]


def _whole_copies(units: IntArray, pos: IntArray, n: int) -> bool:
    """Do ``pos`` (positions of a tiled dim, copy k holding ``k * n .. k * n + n - 1``)
    cover whole copies, each copy in one unit only?"""
    copy = pos // n
    pairs = np.unique(np.stack([copy, units]), axis=1)
    if len(np.unique(pairs[0])) != pairs.shape[1]:
        return False  # a copy split between units
    return len(np.unique(np.stack([pos, units]), axis=1)[0]) == pairs.shape[1] * n


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
    if norm_dim(dim, len(node.in_shapes[0])) in _padded_dims(pads, len(node.in_shapes[0])):
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
    d = norm_dim(dim, len(node.out_shapes[0]) if side == "out" else len(node.in_shapes[port]))
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


def _in_key(g: Graph, node: Node, port: int, dim: int) -> TensorKey | None:
    """The tensor dim that input ``port`` of ``node`` reads at its dim ``dim``."""
    e = next((e for e in g.in_edges.get(node.id, ()) if e.target_port == port), None)
    return None if e is None else (e.source, e.source_port, dim)


def _contracts(g: Graph, node: Node, ctx: RuleContext, places: list[tuple[int, int]],
               every: bool = False) -> None:
    """The group's positions of the inputs ``places`` (``(port, dim)``) are summed over in
    products (a matmul's inner dim): exact only if one of them is zero there in the masked
    original (``every``: all of them, as in a distance, where a zero row counts against the
    other's value)."""
    keys = [k for p, d in places if (k := _in_key(g, node, p, d)) is not None]
    note = f"'{node.name}' ({node.target}) sums {'' if every else 'products '}over pruned " \
        "channels"
    if len(keys) < len(places):
        ctx.inexact(note)
    elif every:
        for k in keys:
            ctx.exact_if_zero(k, note)
    else:
        ctx.exact_if_one_zero(keys, note)


#: Ops whose metadata spells them out as an einsum (:class:`EinsumMeta`): ``tensordot(a, b,
#: ([1], [0]))`` is ``abc,bd->acd``; ``cdist(a, b)`` sums over the features of both
#: (``...pm,...rm->...pr``: a feature removed from both adds nothing to any distance);
#: ``F.bilinear(x1, x2, w, b)`` is ``...i,...j,kij,k->...k`` (the bias shares the outputs');
#: ``torch.outer(a, b)`` (``ger``) is ``i,j->ij``
_EINSUMS = frozenset({"einsum", "tensordot", "cdist", "bilinear", "outer", "ger"})


def _einsum_rule(g, node, side, port, dim, units, pos, ctx):
    """Every dim that carries the tracked dim's letter is coupled to it: in the other
    operands (a contracted letter: both sides of the sum) and in the output. A letter the
    output lacks is summed over: exact only if an operand holding it is zero there (every
    one, for ``cdist``)."""
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
    if letter not in meta.out:
        _contracts(g, node, ctx, [(p, d) for _, p, d, shape in places if shape[d] == size],
                   every=node.target == "cdist")
    return [Flow(s, p, d, units, pos) for s, p, d, shape in places
            if (s, p) != (side, port) and shape[d] == size]  # size-1 dims broadcast


#: ``F.grouped_mm(a, b, offs)`` as mixture-of-experts layers call it, a (rows, K) @ b (experts,
#: K, N) -> (rows, N): which (side, port, dim) each (side, port, dim) is coupled to.
_GROUPED_MM = {("in", 0, 1): ("in", 1, 1), ("in", 1, 1): ("in", 0, 1),
               ("in", 1, 2): ("out", 0, 1), ("out", 0, 1): ("in", 1, 2),
               ("in", 0, 0): ("out", 0, 0), ("out", 0, 0): ("in", 0, 0),
               ("in", 1, 0): ("in", 2, 0), ("in", 2, 0): ("in", 1, 0)}


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
        return _einsum_rule(g, node, side, port, dim, units, pos, ctx)
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
                _contracts(g, node, ctx, [(pa, dim), (pb, 1)])
                return [Flow("in", pb, 1, units, pos)]
            return [Flow("out", 0, dim + no - len(a), units, pos)]
        if side == "in" and port == pb:
            if dim == 1:
                _contracts(g, node, ctx, [(pa, len(a) - 1), (pb, 1)])
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
            _contracts(g, node, ctx, [(pa, dim), (pb, len(b) - 2)])
            return [Flow("in", pb, len(b) - 2, units, pos)]
        if dim == len(a) - 2:
            return [Flow("out", 0, no - 2, units, pos)] + to_bias(no - 2)
        return batch(a, dim, pa)
    if side == "in" and port == pb:
        if dim == len(b) - 2:
            _contracts(g, node, ctx, [(pa, len(a) - 1), (pb, dim)])
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
        if side == "in" and port < 2:
            if getattr(node.meta, "scale", 0) is None:
                ctx.inexact(f"'{node.name}' attention scale 1/sqrt(head_dim) changes with "
                            "the width (no scale= passed)")
            else:  # (the scores: q·k over the pruned dims)
                _contracts(g, node, ctx, [(0, len(q) - 1), (1, len(k) - 1)])
        if side == "out" or port == 2:
            return [Flow("in", 2, len(v) - 1, units, pos)] if side == "out" else \
                [Flow("out", 0, nd - 1, units, pos)]
        return [Flow("in", 1 - port, len(shapes[1 - port]) - 1, units, pos)]
    if dim == second:
        if side == "out":
            return [Flow("in", 0, len(q) - 2, units, pos)]
        if port == 0:  # (a query's row is its own: fewer queries, the same rows)
            return [Flow("out", 0, nd - 2, units, pos)]
        # fewer keys: every query's softmax normalises over fewer scores (a removed key's,
        # zeroed in the masked original, still has exp(0) there)
        ctx.inexact(f"'{node.name}' normalises its attention softmax over the key "
                    "positions, which are pruned")
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


def _returns_positions(g: Graph, node: Node, ctx: RuleContext, units: IntArray,
                       pos: IntArray) -> bool:
    """Blocks the group when ``node`` returns positions along the pruned dim that something
    reads (:data:`optypes.INDEX_OUTPUTS`: ``x.argmax(-1)``, the indices of ``x.max(1)``):
    pruning renumbers them, so a predicted class id would silently name another class.
    Positions read only as positions of another tensor's dim (:func:`_picked`) carry the
    group there instead."""
    p = INDEX_OUTPUTS.get(node.target)
    if p is None or p >= len(node.out_shapes) or not g.consumers.get((node.id, p)):
        return False
    if _picked(g, node, pick_dim(node), units, pos, ctx):
        return True  # read as positions (a router's top-1 expert): carried to their readers
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
            if _returns_positions(g, node, ctx, units, pos):
                return []
            note = f"'{node.name}' ({node.target}) reduces over pruned channels"
            if not meta.exact:
                ctx.inexact(note)
            elif g.in_edges.get(node.id):  # (a sum or a p-norm: zeroed channels add nothing)
                e = g.in_edges[node.id][0]
                ctx.exact_if_zero((e.source, e.source_port, dim), note)
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
    if d in meta.dims:
        # reached from its output (a softmax's probabilities contracted with v over the
        # pruned key positions): the pairs go on to the input, whose rule is not called for
        # them (nothing goes back through the op it came by), so it is decided here
        note = f"'{node.name}' ({node.target}) reduces over pruned channels"
        if not meta.exact:
            ctx.inexact(note)
        elif g.in_edges.get(node.id):
            ctx.exact_if_zero((g.in_edges[node.id][0].source,
                               g.in_edges[node.id][0].source_port, d), note)
    flows = [Flow("in", 0, d, units, pos)]
    flows += [Flow("out", p, dim, units, pos) for p in range(len(node.out_shapes)) if p != port]
    return flows


# --- which of a group's tensors the masked original zeroes ------------------------------------


def nonzero_by(g: Graph, keys: Iterable[TensorKey], zeroed: set[tuple[int, int]]
               ) -> dict[TensorKey, str]:
    """For each tensor dim ``keys`` of a group: "" when the masked original (see
    ``Pruner.masked_model``) holds zeros at the group's positions of it, else the name of the
    op that made them non-zero. The masked original zeroes the *weights* of the members
    (``zeroed``: ``(node id, dim)`` of their outputs whose writers are zeroed: a layer's
    rows and bias, a bare parameter), not activations, so a tensor further on is zero only
    if every op on the way keeps 0 at 0: ``relu``, a product, a move, a sum (not a sigmoid,
    an ``exp``, a constant or a bias added). Ops are visited in node order (the order they
    ran), each from what its inputs in the group gave."""
    held: dict[tuple[int, int], list[TensorKey]] = {}
    for k in keys:
        held.setdefault(k[:2], []).append(k)
    why: dict[TensorKey, str] = {}
    for key in sorted(k for ks in held.values() for k in ks):
        nid, _, dim = key
        node = g.nodes[nid]
        if (nid, dim) in zeroed:
            why[key] = ""
            continue
        ins: dict[int, str] = {}  # input port in the group -> why it is not zero ("": it is)
        for p, e in enumerate(g.in_edges.get(nid, ())):
            ks = held.get((e.source, e.source_port))
            if ks:  # (a tensor met later in the order: not known, so not zero)
                ins[p] = next((why.get(k, node.name) for k in ks if why.get(k, node.name)), "")
        zero = {p for p, w in ins.items() if not w}
        if _keeps_zero(node, dim, zero, set(ins)):
            why[key] = ""
        elif zero != set(ins) and _keeps_zero(node, dim, set(ins), set(ins)):
            why[key] = next(w for w in ins.values() if w)  # (an input was not zero already)
        else:
            why[key] = node.name
    return why


def _matmul_bias(node: Node) -> int | None:
    """The port of what a matmul-family node adds to its product (addmm's input, linear's
    and bilinear's bias; None: nothing), from the operand ports :func:`_matmul_dims` and
    :data:`_EINSUMS` give."""
    if node.target in _EINSUMS:
        return 3 if node.target == "bilinear" else None
    pa, pb, *_, linear = _matmul_dims(node)
    rest = [p for p in range(len(node.in_shapes)) if p not in (pa, pb)]
    return 2 if linear else rest[0] if rest else None


def _keeps_zero(node: Node, dim: int, zero: set[int], held: set[int]) -> bool:
    """Is ``node``'s output dim ``dim`` zero at the group's positions when its inputs at the
    ports ``zero`` are (``held``: the ports whose tensors are in the group at all; the other
    inputs are broadcast along ``dim`` or not tensors of the group: taken as non-zero)?"""
    t, n_in = node.op_type, len(node.in_shapes)
    if t is OpType.CONSTANT:  # (a fill: torch.zeros(b, self.hidden))
        return node.target in ("zeros", "new_zeros")
    if not held:
        return False
    if t in MOVES_VALUES:
        return zero == held and getattr(node.meta, "value", None) is None
    if t is OpType.ELEMENTWISE:
        return _elementwise_keeps_zero(node, zero, n_in)
    if t is OpType.MATMUL:
        bias = _matmul_bias(node)
        if node.target == "cdist" or bias is not None and bias < n_in and bias not in zero:
            return False  # (a distance to a zero row is the other row's norm)
        return bool(zero - {bias})
    if t is OpType.ATTENTION:  # its output's last dim is v's
        return not isinstance(node.meta, MhaCallMeta) and 2 in zero and \
            dim == len(node.out_shapes[0]) - 1
    if t is OpType.REDUCTION:
        if node.target in ("max", "min") and n_in > 1:  # torch.maximum
            return zero == set(range(n_in))
        return node.target in ZERO_REDUCTIONS and 0 in zero
    if t in (OpType.LINEAR, OpType.CONV, OpType.CONV_TRANSPOSE, OpType.DEPTHWISE_CONV):
        if n_in > 1:  # F.conv2d(x, w, b) on the model's own tensors: w's rows, b
            return bool(zero & {0, 1}) and (n_in < 3 or 2 in zero)
        return 0 in zero and "bias" not in node.params  # (along a dim it does not mix)
    return False


def _elementwise_keeps_zero(node: Node, zero: set[int], n_in: int) -> bool:
    """:func:`_keeps_zero` of an elementwise op, by name and number arguments."""
    name = node.target.rpartition(".")[2].lower() if node.is_module else node.target
    nums = node.attrs.get("scalars", ())
    first = 0 in zero and not node.attrs.get("number_first")
    if name in ("mul", "multiply"):
        return bool(zero)
    if name in ("div", "truediv", "true_divide", "divide", "floordiv", "floor_divide"):
        return first  # (not 1 / x)
    if name in ("pow", "float_power"):  # x ** 2, not 2 ** x nor x ** 0
        return first and bool(nums) and all(s > 0 for s in nums)
    if name in ("add", "sub", "subtract"):
        return zero == set(range(n_in)) and all(s == 0 for s in nums)
    if name == "masked_fill":  # (x, mask): filled with 0
        return 0 in zero and n_in == 2 and nums == (0,)
    if name in ("clamp", "clip", "clamp_min", "clamp_max") and n_in == 1 and 0 in zero:
        if name == "clamp_min" or name == "clamp_max":
            return len(nums) == 1 and (nums[0] <= 0 if name == "clamp_min" else nums[0] >= 0)
        # (one bound alone is not told min from max: only 0 is safe either way)
        return len(nums) == 2 and nums[0] <= 0 <= nums[1] or nums == (0,)
    if name == "hardtanh" and node.is_module:
        return 0 in zero and node.attrs.get("min_val", -1) <= 0 <= node.attrs.get("max_val", 1)
    return 0 in zero and name in KEEPS_ZERO


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
    q, k and v inputs; the output width must follow: removing k channels removes
    k / num_heads inner dims from every head (chosen by their own weights) and output
    channels paired with the input's by index, as a residual pairs them (so a query that
    pools the stream without one, SigLIP's head, is in the stream's group too).
    With ``kdim``/``vdim`` (cross-attention on a memory of another width) the key and value
    are read by weights of their own (``k_proj_weight``/``v_proj_weight`` columns): their
    widths are groups of their own, which end there; the query and output are as above."""
    shape = node.in_shapes[port] if side == "in" else node.out_shapes[port]
    e = int(node.attrs.get("embed_dim", 0))
    if side == "in" and port > 2 or side == "out" and port == 1 or \
            shape and dim != len(shape) - 1:
        return _mha_positions(node, side, port, dim, units, pos, ctx)
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
    ctx.member(node, side, dim, units, pos)
    flows = [Flow("in", p, len(node.in_shapes[p]) - 1, units, pos) for p in range(3)
             if p < len(node.in_shapes) and node.in_shapes[p] and node.in_shapes[p][-1] == e
             and not (side == "in" and p == port) and not (separate and p)]
    if side == "in":  # (arriving at the output, the inputs' search comes back in here)
        od = len(node.out_shapes[0]) - 1
        ctx.member(node, "out", od, units, pos)
        flows.append(Flow("out", 0, od, units, pos))
    return flows


def _mha_places(node: Node) -> dict[tuple[str, int, int], str]:
    """What each dim but the features of an ``nn.MultiheadAttention``'s tensors is, by
    ``(side, port, dim)``: ``"query"`` (the query's positions, the output's, the attention
    weights' rows), ``"key"`` (the key's and value's positions, the weights' columns) or
    ``"batch"``; ``"heads"``: the weights' heads (``average_attn_weights=False``)."""
    ins, outs = node.in_shapes, node.out_shapes
    batched = len(ins[0]) == 3
    seq, batch = (1, 0) if node.attrs.get("batch_first") else (0, 1)
    if not batched:
        seq, batch = 0, None
    places = {}
    for p, role in ((0, "query"), (1, "key"), (2, "key")):
        if p < len(ins):
            places["in", p, seq] = role
            if batch is not None:
                places["in", p, batch] = "batch"
    places["out", 0, seq] = "query"
    if batch is not None:
        places["out", 0, batch] = "batch"
    if len(outs) > 1 and len(outs[1]) >= 2:  # the attention weights: (N, [heads,] L, S)
        w = outs[1]
        places["out", 1, len(w) - 2], places["out", 1, len(w) - 1] = "query", "key"
        if batched:
            places["out", 1, 0] = "batch"
        if len(w) - batched == 3:
            places["out", 1, len(w) - 3] = "heads"
    return places


def _mha_positions(node, side, port, dim, units, pos, ctx):
    """An ``nn.MultiheadAttention``'s query positions go with the output's (each query's row
    is its own: exact), its key and value positions together (the softmax normalises over
    them: inexact), its batch with every tensor's; a mask over them (``attn_mask``,
    ``key_padding_mask``) blocks the group."""
    places = _mha_places(node)
    role = places.get((side, port, dim))
    if side == "in" and port > 2:
        ctx.block(f"'{node.name}' takes an attention mask coupled to the group")
        return []
    if role in (None, "heads"):
        ctx.block(f"'{node.name}' has the pruned channels on "
                  + ("its attention weights' heads" if role else "a dim DepView does not model"))
        return []
    if len(node.in_shapes) > 3:
        ctx.block(f"'{node.name}' takes an attention mask over the pruned positions")
        return []
    if role == "key":
        ctx.inexact(f"'{node.name}' normalises its attention softmax over the key positions, "
                    "which are pruned")
    return _same_role(node, places, side, port, dim, units, pos)


def _same_role(node, places, side, port, dim, units, pos) -> list[Flow]:
    """Flows to every other place of ``places`` with the role of ``(side, port, dim)`` and
    its size (a size-1 dim broadcasts)."""
    role = places[side, port, dim]
    shapes = {"in": node.in_shapes, "out": node.out_shapes}
    size = shapes[side][port][dim]
    return [Flow(s, p, d, units, pos) for (s, p, d), r in places.items()
            if r == role and (s, p, d) != (side, port, dim) and shapes[s][p][d] == size]


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
    OpType.CONV: _modules_only(_grouped_conv_rule(_layer_rule(conv_out_dim, conv_in_dim))),
    OpType.DEPTHWISE_CONV: _layer_rule(conv_out_dim, conv_in_dim, passthrough=True),
    OpType.CONV_TRANSPOSE: _modules_only(_grouped_conv_rule(
        _layer_rule(conv_out_dim, conv_in_dim))),
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
