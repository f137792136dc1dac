"""What pruning a member of a group does to a layer's tensors and attributes, per OpType.

Two tables, one entry per OpType (a test checks both are complete):

* :data:`CUTS` — ``cuts(node, side, dim, positions) -> [Cut]``: which state_dict tensors lose
  which indices along which dim. Zeroing every cut of a plan in the original model gives its
  masked-equivalent model.
* :data:`REFRESH` — ``refresh(module, widths)`` re-derives a module's attributes
  (``out_channels``, ``num_features``, ``hidden_size``...) from its pruned tensors, so the pruned
  model runs and prints correctly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from .arrays import unique
from .graph import Node
from .optypes import OpGroup, OpType, conv_prunes_whole_groups, gn_prunes_whole_groups
from .spectralnorm import columns


@dataclass(frozen=True)
class Cut:
    """``key`` (a state_dict name) loses ``positions`` along ``dim``."""

    key: str
    dim: int
    positions: np.ndarray
    #: False: positions picked by weight (MHA's inner dims), no one channel's own
    aligned: bool = True
    #: for each of ``positions``, the index into the handler's ``pos`` of the channel it
    #: belongs to (None: ``positions`` are ``pos``, or channels of a grouped conv's one group)
    origin: np.ndarray | None = None


def _key(node: Node, local: str) -> str:
    return node.params.get(local) or node.buffers[local]


def _cuts(node: Node, spec: list[tuple[str, int]], pos, origin=None) -> list[Cut]:
    out = []
    for k, d in spec:
        if k in node.params or k in node.buffers:
            out.append(Cut(_key(node, k), d, pos, True, origin))
        elif k == "weight" and node.weight_norm:
            out += _weight_norm_cuts(node, d, pos, origin)
        elif k == "weight" and node.spectral_norm:
            out += _spectral_norm_cuts(node, d, pos, origin)
        elif k in node.prune_masked:  # (torch.nn.utils.prune: NAME_orig * NAME_mask)
            out += [Cut(node.params[f"{k}_orig"], d, pos, True, origin),
                    Cut(node.buffers[f"{k}_mask"], d, pos, False, origin)]
    return out


def _spectral_norm_cuts(node: Node, dim: int, pos, origin) -> list[Cut]:
    # weight = W / u.(W_mat v): W loses the positions, and u the rows or v the columns they
    # are of W's matrix (spectralnorm.py; u is rescaled after, which a Cut does not say).
    # Neither is a channel's weight: not scored (aligned False)
    w, u, v, rows = node.spectral_norm
    out = [Cut(node.params[w], dim, pos, True, origin)]
    if dim == rows:
        out.append(Cut(node.buffers[u], 0, pos, False))
    else:
        cols = columns(node.param_shapes[w], rows, dim, pos)
        out.append(Cut(node.buffers[v], 0, cols, False))
    return out


def _weight_norm_cuts(node: Node, dim: int, pos, origin) -> list[Cut]:
    # weight = g * v / ||v||: v loses the positions, and g with it along g's own dim (the
    # one where it is not 1); along a normed dim g keeps its size and is rescaled instead
    # (weightnorm.py), which a Cut does not say
    g, v = node.weight_norm
    out = [Cut(node.params[v], dim, pos, True, origin)]
    g_shape = node.param_shapes[g]
    if dim < len(g_shape) and g_shape[dim] > 1:
        out.append(Cut(node.params[g], dim, pos, True, origin))
    return out


def weight_shape(node: Node) -> tuple[int, ...] | None:
    """The shape of a layer's weight: stored, or computed by weight normalisation (``v``'s)."""
    w = node.param_shapes.get("weight")
    if w is None and node.weight_norm:
        return node.param_shapes[node.weight_norm[1]]
    if w is None and node.spectral_norm:
        return node.param_shapes[node.spectral_norm[0]]
    if w is None and "weight" in node.prune_masked:
        return node.param_shapes["weight_orig"]
    return w


def _group_local(node: Node, side: str, pos: np.ndarray) -> np.ndarray:
    """Positions within one group: a grouped conv's weight holds width/groups channels per
    row (or column) and every group loses the same offsets."""
    groups = int(node.attrs.get("groups", 1))
    if groups == 1:
        return pos
    return unique(pos % (conv_width(node, side) // groups))


def conv_width(node: Node, side: str) -> int:
    """A conv's input or output channel count, read from its weight (the activations may
    come without a batch dim). The groups' rules read it here too."""
    w = weight_shape(node)
    groups = int(node.attrs.get("groups", 1))
    if w is None:  # (a call without a weight of its own)
        return (node.in_shapes[0] if side == "in" else node.out_shapes[0])[1]
    if node.op_type is OpType.CONV_TRANSPOSE:  # (in, out / groups, ...)
        return w[0] if side == "in" else w[1] * groups
    return w[1] * groups if side == "in" else w[0]


def _per_output(node: Node, width: int, known: tuple[str, ...]) -> list[tuple[str, int]]:
    """Parameters a subclass with its own forward adds beside the layer's own (``known``),
    one entry per output channel: timm's ``ScaledStdConv2d`` ``gain``, (out, 1, 1, 1). They
    lose the output channels the weight loses."""
    if not node.own_forward:
        return []
    return [(k, 0) for k, s in node.param_shapes.items()
            if k not in known and "." not in k and s and s[0] == width
            and all(d == 1 for d in s[1:])]


def _conv(node, side, dim, pos):
    if side == "out":
        return _cuts(node, [("weight", 0), ("bias", 0),
                            *_per_output(node, conv_width(node, "out"), ("weight", "bias"))],
                     pos)
    if node.op_type is OpType.CONV and conv_prunes_whole_groups(
            conv_width(node, "in"), int(node.attrs.get("groups", 1))):
        return []  # its input channels leave with their groups' output rows
    return _cuts(node, [("weight", 1)], _group_local(node, "in", pos))


def _conv_transpose(node, side, dim, pos):
    # weight is (in, out/groups, ...)
    if side == "out":
        if conv_prunes_whole_groups(conv_width(node, "in"), int(node.attrs.get("groups", 1))):
            return _cuts(node, [("bias", 0)], pos)  # its weight rows go with its inputs
        return (_cuts(node, [("weight", 1)], _group_local(node, "out", pos))
                + _cuts(node, [("bias", 0)], pos))
    return _cuts(node, [("weight", 0)], pos)


def _per_channel(node, side, dim, pos):
    # norms, depthwise convs, PReLU: every per-channel tensor loses the channel, once
    if side == "in":
        return []
    names = ["weight", "bias", "running_mean", "running_var"]
    if node.op_type is OpType.PRELU and node.param_shapes.get("weight", (1,))[0] == 1:
        return []
    return _cuts(node, [(n, 0) for n in names], pos)


def _ln(node, side, dim, pos):
    if side == "in":
        return []
    w = node.param_shapes.get("weight") or node.param_shapes.get("bias")
    if not w:
        return []
    pdim = dim - (len(node.in_shapes[0]) - len(w))
    return _cuts(node, [("weight", pdim), ("bias", pdim)], pos)


def _linear(node, side, dim, pos):
    transposed = "nf" in node.attrs  # Hugging Face Conv1D stores weight as (in, out)
    if side == "out":
        width = (weight_shape(node) or (0, 0))[1 if transposed else 0]
        return _cuts(node, [("weight", 1 if transposed else 0), ("bias", 0),
                            *_per_output(node, width, ("weight", "bias"))], pos)
    return _cuts(node, [("weight", 0 if transposed else 1)], pos)


def _embed(node, side, dim, pos):
    return _cuts(node, [("weight", 1)], pos) if side == "out" else []


def rnn_cell(node: Node) -> bool:
    """An RNN cell (nn.LSTMCell, ...): one step, called once per step of a Python loop; its
    tensors carry no layer suffix."""
    return node.op_type in OpGroup.RECURRENT and "weight_hh" in node.params


def rnn_key(node: Node, name: str, layer: int = 0, suffix: str = "") -> str:
    """The local name of a recurrent layer's tensor: ``weight_hh_l1_reverse`` for nn.LSTM and
    its kin, ``weight_hh`` for a cell (one layer, one direction)."""
    return name if rnn_cell(node) else f"{name}_l{layer}{suffix}"


def rnn_hidden(node: Node) -> int:
    """The width of h: ``hidden_size``, or ``proj_size`` for an LSTM that has one."""
    return node.param_shapes[rnn_key(node, "weight_hh")][1]


def rnn_projected(node: Node) -> bool:
    """An LSTM with ``proj_size``: h is ``weight_hr``'s rows, the cell state its columns."""
    return "weight_hr_l0" in node.params


def cell_port(node: Node) -> int | None:
    """The output port of an LSTM with ``proj_size`` that carries its cell state ``c_n``
    (``hidden_size`` wide, the cell units; h is the projection's ``proj_size``), or None."""
    return len(node.out_shapes) - 1 if rnn_projected(node) and len(node.out_shapes) >= 3 \
        else None


def cell_width(node: Node) -> int:
    """An LSTM with ``proj_size``: its cell units' count (``hidden_size``, ``weight_hr``'s
    columns; see :func:`cell_port`)."""
    return node.param_shapes[rnn_key(node, "weight_hr")][1]


def _recurrent(gates: int):
    def cuts(node, side, dim, pos, port=0):
        hidden = rnn_hidden(node)
        layers = int(node.attrs.get("num_layers", 1))
        sfxs = ["", "_reverse"] if node.attrs.get("bidirectional") else [""]
        out: list[Cut] = []

        def key(name, layer, s):
            return rnn_key(node, name, layer, s)

        if side == "in":
            for s in sfxs:
                out += _cuts(node, [(key("weight_ih", 0, s), 1)], pos)
            return out
        if port:  # an LSTM with proj_size: its cell units (c_n's port), see cell_port
            h, first = np.unique(pos, return_index=True)
            rows = (np.arange(gates)[:, None] * cell_width(node) + h[None, :]).reshape(-1)
            row_of = np.tile(first, gates)
            for layer in range(layers):
                for s in sfxs:
                    out += _cuts(node, [(key("weight_ih", layer, s), 0),
                                        (key("bias_ih", layer, s), 0),
                                        (key("weight_hh", layer, s), 0),
                                        (key("bias_hh", layer, s), 0)], rows, row_of)
                    out += _cuts(node, [(key("weight_hr", layer, s), 1)], h, first)
            return out
        # (a bidirectional layer's output is [forward h | reverse h]: unit i is both)
        h, first = np.unique(pos % hidden, return_index=True)
        # every gate's row of each unit: (i, f, g, o) for an LSTM, (r, z, n) for a GRU
        rows = (np.arange(gates)[:, None] * hidden + h[None, :]).reshape(-1)
        # input features of layers >= 1 are [forward h | reverse h]
        cols_in = np.concatenate([h + k * hidden for k in range(len(sfxs))])
        row_of, col_of = np.tile(first, gates), np.tile(first, len(sfxs))
        proj = rnn_projected(node)
        for layer in range(layers):
            for s in sfxs:
                if proj:  # the projection's units: its rows, and where h is read
                    out += _cuts(node, [(key("weight_hr", layer, s), 0)], h, first)
                    out += _cuts(node, [(key("weight_hh", layer, s), 1)], h, first)
                    if layer > 0:
                        out += _cuts(node, [(key("weight_ih", layer, s), 1)], cols_in, col_of)
                    continue
                out += _cuts(node, [(key("weight_ih", layer, s), 0),
                                    (key("bias_ih", layer, s), 0),
                                    (key("weight_hh", layer, s), 0),
                                    (key("bias_hh", layer, s), 0)], rows, row_of)
                out += _cuts(node, [(key("weight_hh", layer, s), 1)], h, first)
                if layer > 0:
                    out += _cuts(node, [(key("weight_ih", layer, s), 1)], cols_in, col_of)
        return out
    return cuts


#: nn.MultiheadAttention's weights of its own per input, when ``kdim``/``vdim`` differ from
#: ``embed_dim``: (E, E), (E, kdim), (E, vdim); packed in ``in_proj_weight`` (3E, E) otherwise
_QKV = ("q_proj_weight", "k_proj_weight", "v_proj_weight")
#: the inputs, by port, of a layer that reads several through weights of their own
INPUT_NAMES: dict[OpType, tuple[str, ...]] = {OpType.MHA: ("query", "key", "value")}
#: the outputs, by port, of a layer whose outputs hold units of different kinds (an LSTM with
#: ``proj_size``: h is proj_size wide, the cell state c_n hidden_size, see cell_port)
OUTPUT_NAMES: dict[OpType, tuple[str, ...]] = {OpType.LSTM: ("output", "h_n", "cell")}


def mha_separate(node: Node) -> bool:
    """Does this ``nn.MultiheadAttention`` read its query, key and value through weights of
    their own (``kdim``/``vdim`` set), rather than one packed ``in_proj_weight``?"""
    return _QKV[0] in node.params


def _mha(node, side, dim, pos, tensors=None, port=0):
    # packed in_proj (3E, E) or q/k/v_proj_weight: columns read the inputs; rows are the
    # inner q|k|v dims
    e = int(node.attrs["embed_dim"])
    separate = mha_separate(node)
    if side == "in":
        return _cuts(node, [(_QKV[port] if separate else "in_proj_weight", 1)], pos)
    out = _cuts(node, [("out_proj.weight", 0), ("out_proj.bias", 0)], pos)
    heads = int(node.attrs["num_heads"])
    hd = e // heads
    per_head = len(pos) // heads
    if per_head == 0:
        return out
    # each head drops its per_head least important inner dims (L1 of q/k/v rows and the
    # out_proj column); without real weights, its last ones
    score = np.zeros(e)
    w_in = [tensors(node.params[k]) for k in (_QKV if separate else ("in_proj_weight",))] \
        if tensors else [None]
    w_out = tensors(node.params["out_proj.weight"]) if tensors else None
    if w_in[0] is not None and w_in[0].device.type != "meta":
        qkv = sum(w.detach().abs().float().reshape(-1, e, w.shape[-1]).sum((0, 2))
                  for w in w_in)
        score = (qkv + w_out.detach().abs().float().sum(0)).numpy()
    score = score + np.tile(np.arange(hd, 0, -1) * 1e-12, heads)  # ties: drop the last dims
    inner = np.sort(np.concatenate([
        h * hd + np.argsort(score[h * hd:(h + 1) * hd], kind="stable")[:per_head]
        for h in range(heads)]))
    rows = np.concatenate([inner + k * e for k in range(3)])
    if separate:
        out += [Cut(node.params[k], 0, inner, False) for k in _QKV]
    else:
        out += [Cut(node.params["in_proj_weight"], 0, rows, False)]
    if "in_proj_bias" in node.params:
        out += [Cut(node.params["in_proj_bias"], 0, rows, False)]
    out += [Cut(node.params["out_proj.weight"], 1, inner, False)]
    # add_bias_kv's bias_k/bias_v (1, 1, E) are rows appended to the projected keys and
    # values: they lose the inner dims k and v lose
    out += [Cut(node.params[k], 2, inner, False) for k in ("bias_k", "bias_v")
            if k in node.params]
    return out


def _custom(node, side, dim, pos):
    entry = node.custom
    dims = entry.in_dims if side == "in" else entry.out_dims
    return [Cut(_key(node, k), d, pos) for k, d in dims.items()]


def _parameter(node, side, dim, pos):
    # (a BUFFER node names its tensor in params when the state_dict holds it, else in
    # buffers: a table made at init, cut only where the model reads it once)
    return [Cut(_key(node, ""), dim, pos)]


def _none(node, side, dim, pos):
    return []


def _unsupported(node, side, dim, pos):
    raise ValueError(f"'{node.name}' ({node.op_type.name}) cannot be pruned")


CutFn = Callable[[Node, str, int, np.ndarray], list[Cut]]


def node_cuts(node: Node, side: str, dim: int, pos, tensors=None, port: int = 0) -> list[Cut]:
    """The cuts of one member: ``CUTS`` for its type, given the member's ``port`` where a
    layer holds channels of several tensors (nn.MultiheadAttention's key and value inputs,
    an LSTM's cell state) and ``tensors`` (state_dict key -> tensor, or None) where the
    indices are picked by weight (nn.MultiheadAttention's heads)."""
    fn = CUTS[node.op_type]
    if node.op_type is OpType.MHA:
        return fn(node, side, dim, pos, tensors, port)
    if port and node.op_type in OpGroup.RECURRENT:
        return fn(node, side, dim, pos, port)
    return fn(node, side, dim, pos)

def picks_by_weight(node: Node, side: str) -> bool:
    """Does this member's cut pick positions by weight rather than take the channels' own
    (nn.MultiheadAttention's output channels: the least important inner dims of each head)?
    Several groups holding channels of it must be cut at once, so that they pick different
    ones (:meth:`Pruner.plan_cuts`)."""
    return node.op_type is OpType.MHA and side == "out"


#: OpType -> which tensors lose which indices. Virtual ops own no tensors.
CUTS: dict[OpType, CutFn] = {
    OpType.INPUT: _unsupported,
    OpType.OUTPUT: _unsupported,
    OpType.BUFFER: _parameter,
    OpType.CONSTANT: _unsupported,
    OpType.PARAMETER: _parameter,
    OpType.CONV: _conv,
    OpType.DEPTHWISE_CONV: _per_channel,
    OpType.CONV_TRANSPOSE: _conv_transpose,
    OpType.BN: _per_channel,
    OpType.LN: _ln,
    OpType.GN: _per_channel,
    OpType.IN: _per_channel,
    OpType.LINEAR: _linear,
    OpType.PRELU: _per_channel,
    OpType.EMBED: _embed,
    OpType.MHA: _mha,
    OpType.LSTM: _recurrent(4),
    OpType.GRU: _recurrent(3),
    OpType.RNN: _recurrent(1),
    OpType.CUSTOMIZED: _custom,
    **{t: _none for t in (
        OpType.CONCAT, OpType.SPLIT, OpType.UNBIND, OpType.SLICE, OpType.RESHAPE,
        OpType.PERMUTE, OpType.EXPAND, OpType.PIXEL_SHUFFLE, OpType.UNFOLD, OpType.SPATIAL,
        OpType.MATMUL, OpType.ATTENTION, OpType.REDUCTION, OpType.ELEMENTWISE)},
}


# --------------------------------------------------------------------------------------------
# Attribute refresh: derive attributes from the (already pruned) tensors.

Widths = dict[str, int]  # {"in": new input channels, "out": new output channels}


def _refresh_conv(m: nn.Module, w: Widths) -> None:
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        if conv_prunes_whole_groups(m.in_channels, m.groups) and "in" in w:  # groups went
            m.groups = w["in"]
        m.in_channels = m.weight.shape[0]
        m.out_channels = m.weight.shape[1] * m.groups
    else:
        if conv_prunes_whole_groups(m.in_channels, m.groups) and "in" in w:  # groups went
            m.groups = w["in"]
        m.out_channels = m.weight.shape[0]
        m.in_channels = m.weight.shape[1] * m.groups


def _refresh_depthwise(m: nn.Module, w: Widths) -> None:
    m.groups = m.in_channels = m.out_channels = m.weight.shape[0]


def _refresh_norm(m: nn.Module, w: Widths) -> None:
    if getattr(m, "running_mean", None) is not None:
        m.num_features = m.running_mean.shape[0]
    elif getattr(m, "weight", None) is not None:
        m.num_features = m.weight.shape[0]
    elif "out" in w:
        m.num_features = w["out"]


def _refresh_gn(m: nn.Module, w: Widths) -> None:
    new = m.weight.shape[0] if m.weight is not None else w.get("out", m.num_channels)
    if gn_prunes_whole_groups(m.num_channels, m.num_groups):  # read before they change
        m.num_groups = new // (m.num_channels // m.num_groups)
    m.num_channels = new


def _refresh_ln(m: nn.Module, w: Widths) -> None:
    if getattr(m, "weight", None) is not None:
        m.normalized_shape = tuple(m.weight.shape)
    elif "out" in w:
        m.normalized_shape = (*tuple(m.normalized_shape)[:-1], w["out"])


def _refresh_linear(m: nn.Module, w: Widths) -> None:
    if hasattr(m, "nf"):  # Hugging Face Conv1D
        m.nf = m.weight.shape[1]
        return
    m.out_features, m.in_features = m.weight.shape


def _refresh_prelu(m: nn.Module, w: Widths) -> None:
    m.num_parameters = m.weight.numel()


def _refresh_embed(m: nn.Module, w: Widths) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


def _refresh_rnn(m: nn.Module, w: Widths) -> None:
    if isinstance(m, nn.RNNCellBase):
        m.input_size, m.hidden_size = m.weight_ih.shape[1], m.weight_hh.shape[1]
        return
    m.input_size = m.weight_ih_l0.shape[1]
    if getattr(m, "proj_size", 0):  # weight_hr: (proj_size, hidden_size)
        m.proj_size, m.hidden_size = m.weight_hr_l0.shape
    else:
        m.hidden_size = m.weight_hh_l0.shape[1]
    m._init_flat_weights()


def _refresh_mha(m: nn.Module, w: Widths) -> None:
    if m._qkv_same_embed_dim:
        e = m.in_proj_weight.shape[1]
        m.embed_dim = m.kdim = m.vdim = e
    else:  # (its own weights per input: the key and value widths are their own)
        e = m.embed_dim = m.q_proj_weight.shape[1]
        m.kdim, m.vdim = m.k_proj_weight.shape[1], m.v_proj_weight.shape[1]
    m.head_dim = e // m.num_heads
    m.out_proj.out_features, m.out_proj.in_features = m.out_proj.weight.shape


def _refresh_custom(m: nn.Module, w: Widths) -> None:
    from .optypes import custom_layer

    entry = custom_layer(m)
    if entry is not None and entry.update is not None:
        entry.update(m)


def _refresh_none(m: nn.Module, w: Widths) -> None:
    pass


#: OpType -> how a pruned module's attributes follow its tensors (``SELF_DESCRIBING``: the
#: types whose attributes follow from their tensors alone).
REFRESH: dict[OpType, Callable[[nn.Module, Widths], None]] = {
    OpType.CONV: _refresh_conv,
    OpType.CONV_TRANSPOSE: _refresh_conv,
    OpType.DEPTHWISE_CONV: _refresh_depthwise,
    OpType.BN: _refresh_norm,
    OpType.IN: _refresh_norm,
    OpType.GN: _refresh_gn,
    OpType.LN: _refresh_ln,
    OpType.LINEAR: _refresh_linear,
    OpType.PRELU: _refresh_prelu,
    OpType.EMBED: _refresh_embed,
    OpType.LSTM: _refresh_rnn,
    OpType.GRU: _refresh_rnn,
    OpType.RNN: _refresh_rnn,
    OpType.CUSTOMIZED: _refresh_custom,
    OpType.MHA: _refresh_mha,
    **{t: _refresh_none for t in OpType if t not in (OpType.MHA,
        OpType.CONV, OpType.CONV_TRANSPOSE, OpType.DEPTHWISE_CONV, OpType.BN, OpType.IN,
        OpType.GN, OpType.LN, OpType.LINEAR, OpType.PRELU, OpType.EMBED, OpType.LSTM,
        OpType.GRU, OpType.RNN, OpType.CUSTOMIZED)},
}

def _refresh_bilinear(m: nn.Module, w: Widths) -> None:
    m.out_features, m.in1_features, m.in2_features = m.weight.shape


#: torch modules DepView looks into (their ops are the graph's nodes) whose size attributes
#: follow their tensors all the same, by class: ``nn.Bilinear`` calls ``F.bilinear`` on its
#: weight (out, in1, in2).
REFRESH_LOOKED_INTO: dict[type, Callable[[nn.Module, Widths], None]] = {
    nn.Bilinear: _refresh_bilinear,
}

#: Layer types whose attributes follow from their tensors alone: all with a refresh of their
#: own but registered custom layers (their ``update`` is user code).
SELF_DESCRIBING: frozenset[OpType] = frozenset(
    t for t, fn in REFRESH.items() if fn not in (_refresh_none, _refresh_custom))
