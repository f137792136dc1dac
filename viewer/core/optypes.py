"""Operation types: the finite vocabulary every traced op is classified into.

Every node of a traced graph gets exactly one :class:`OpType`. Modules are classified by one
ordered rule table (:data:`MODULE_RULES`, first match wins, user-registered rules first);
functional ops by one lookup table keyed by the function object itself (:data:`FUNCTION_TYPES`).
Anything not in a table falls to :attr:`OpType.ELEMENTWISE` — but the group propagation for
ELEMENTWISE checks that shapes really are elementwise-compatible, so an unknown op that changes
shape stops a group instead of silently coupling the wrong channels.

Example::

    >>> classify(torch.nn.Conv2d(8, 8, 3, groups=8))
    <OpType.DEPTHWISE_CONV: 'depthwise_conv'>
    >>> classify(torch.nn.Conv2d(1, 1, 3))      # one channel is not "depthwise"
    <OpType.CONV: 'conv'>
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


class OpType(enum.Enum):
    """What an operation does to channels. Docstrings say why a type exists."""

    INPUT = "input"  #: a model input; groups touching it are not prunable
    OUTPUT = "output"  #: a model output; groups touching it are not prunable
    PARAMETER = "parameter"  #: an nn.Parameter used directly in forward (cls token, pos embed)
    BUFFER = "buffer"  #: a buffer used directly in forward: pruned if persistent (frozen BN)
    CONSTANT = "constant"  #: a tensor made inside forward (arange, zeros): blocks, unless a fill
    CONV = "conv"  #: Conv1/2/3d: out channels born here, in channels consumed
    DEPTHWISE_CONV = "depthwise_conv"  #: groups == in == out > 1: in and out channels coupled
    CONV_TRANSPOSE = "conv_transpose"  #: weight is (in, out/groups, ...): dims swapped vs CONV
    BN = "bn"  #: BatchNorm: per-channel, passes channels through
    LN = "ln"  #: LayerNorm / RMSNorm over trailing dims: per-channel affine, stats over channels
    GN = "gn"  #: GroupNorm: channels pass through but must stay divisible into groups
    IN = "in"  #: InstanceNorm: per-channel, passes channels through
    LINEAR = "linear"  #: Linear: out features born here, in features consumed
    PRELU = "prelu"  #: PReLU: per-channel (or one shared) slope, passes channels through
    EMBED = "embed"  #: Embedding/EmbeddingBag: embedding dims born here (weight dim 1)
    MHA = "mha"  #: nn.MultiheadAttention, atomic: query width is tied to embed_dim
    LSTM = "lstm"  #: nn.LSTM / nn.LSTMCell, atomic: hidden units span 4 gates
    GRU = "gru"  #: nn.GRU / nn.GRUCell, atomic: hidden units span 3 gates
    RNN = "rnn"  #: nn.RNN / nn.RNNCell, atomic: one gate
    CUSTOMIZED = "customized"  #: a user-registered layer type with its own channel rule
    CONCAT = "concat"  #: cat/stack: inputs occupy offsets of the output dim
    SPLIT = "split"  #: split/chunk/tensor_split: outputs are offset ranges of the input dim
    UNBIND = "unbind"  #: unbind: removes a dim, one output per index
    SLICE = "slice"  #: getitem/narrow/select: a sub-range (or one index) of some dims
    RESHAPE = "reshape"  #: view/reshape/flatten/unflatten/squeeze: row-major regrouping of dims
    PERMUTE = "permute"  #: permute/transpose: moves dims; channel dim index changes
    EXPAND = "expand"  #: expand/broadcast_to/repeat: size-1 dims grow or dims are copied
    PIXEL_SHUFFLE = "pixel_shuffle"  #: moves channel blocks of r*r into space (and back)
    UNFOLD = "unfold"  #: F.unfold/F.fold: channel c is rows c*k*k.. of the patch dim (and back);
    #: Tensor.unfold: windows along one dim, the other dims kept
    SPATIAL = "spatial"  #: pooling/unpooling/interpolate/grid_sample keep dims 0 and 1; pad
    #: keeps the rest
    MATMUL = "matmul"  #: matmul/bmm/linear-with-a-tensor/einsum/tensordot/cdist: contracts dims
    ATTENTION = "attention"  #: scaled_dot_product_attention: q·k contracted, v's dim carried;
    #: multi_head_attention_forward: the projections it is given, whole heads
    REDUCTION = "reduction"  #: sum/mean/softmax along dims: every output reads the whole dim
    ELEMENTWISE = "elementwise"  #: add/mul/activations: same index in, same index out

    def __repr__(self) -> str:  # stable, short reprs for docs and test ids
        return f"<OpType.{self.name}: {self.value!r}>"

    # Members are singletons compared by identity: hash them by identity too, in C, instead of
    # Enum's hash of the name in Python (tracing and groups look types up in dicts and sets
    # thousands of times per model).
    __hash__ = object.__hash__


class OpGroup:
    """Category sets, so call sites read ``if t in OpGroup.SOURCES`` instead of branching."""

    SOURCES = frozenset({OpType.INPUT, OpType.PARAMETER, OpType.BUFFER, OpType.CONSTANT})
    CONVS = frozenset({OpType.CONV, OpType.DEPTHWISE_CONV, OpType.CONV_TRANSPOSE})
    NORMS = frozenset({OpType.BN, OpType.LN, OpType.GN, OpType.IN})
    RECURRENT = frozenset({OpType.LSTM, OpType.GRU, OpType.RNN})
    #: Types traced as one opaque node: their internals are not recorded.
    COMPOSITE = frozenset({OpType.MHA, OpType.CUSTOMIZED}) | RECURRENT
    #: Ops made by wrapping a functional call (virtual nodes carrying metadata).
    VIRTUAL = frozenset(
        {
            OpType.CONCAT, OpType.SPLIT, OpType.UNBIND, OpType.SLICE, OpType.RESHAPE,
            OpType.PERMUTE, OpType.EXPAND, OpType.MATMUL, OpType.ATTENTION, OpType.REDUCTION,
            OpType.ELEMENTWISE, OpType.SPATIAL, OpType.PIXEL_SHUFFLE, OpType.UNFOLD,
        }
    )
    #: Virtual ops that return views of their input (a split's parts, a slice, a reshape).
    VIEWS = frozenset({OpType.SPLIT, OpType.UNBIND, OpType.SLICE, OpType.RESHAPE,
                       OpType.PERMUTE, OpType.EXPAND})
    #: ... of all of their input (``view``, ``permute``, ``expand``): a write to the input
    #: shows in them wherever it lands
    WHOLE_VIEWS = frozenset({OpType.RESHAPE, OpType.PERMUTE, OpType.EXPAND})
    #: Types whose tensors carry channels in dim 1 (N, C, ...) / in the last dim (..., C).
    CHANNEL_FIRST = frozenset({OpType.CONV, OpType.CONV_TRANSPOSE, OpType.DEPTHWISE_CONV,
                               OpType.BN, OpType.GN, OpType.IN})
    CHANNEL_LAST = frozenset({OpType.LINEAR, OpType.LN, OpType.EMBED, OpType.MHA})
    #: Torch layer types whose layer returns one tensor (a subclass returning more is looked
    #: into by the tracer).
    ONE_TENSOR = CONVS | NORMS | frozenset({OpType.LINEAR, OpType.PRELU, OpType.EMBED})
    #: Module types whose parameters a pruning plan can shrink.
    PARAMETRIC = (
        CONVS | NORMS | RECURRENT
        | frozenset({OpType.LINEAR, OpType.PRELU, OpType.EMBED, OpType.MHA, OpType.PARAMETER,
                     OpType.CUSTOMIZED})
    )


@dataclass(frozen=True)
class TypeStyle:
    """How a type is drawn and named in the app and the docs."""

    label: str
    color: str


#: One entry per OpType (a test checks it is complete).
STYLES: dict[OpType, TypeStyle] = {
    OpType.INPUT: TypeStyle("Input", "#6b7280"),
    OpType.OUTPUT: TypeStyle("Output", "#111827"),
    OpType.PARAMETER: TypeStyle("Parameter", "#a16207"),
    OpType.BUFFER: TypeStyle("Buffer", "#a8a29e"),
    OpType.CONSTANT: TypeStyle("Constant", "#d6d3d1"),
    OpType.CONV: TypeStyle("Conv", "#2563eb"),
    OpType.DEPTHWISE_CONV: TypeStyle("Depthwise conv", "#60a5fa"),
    OpType.CONV_TRANSPOSE: TypeStyle("Conv transpose", "#1e3a8a"),
    OpType.BN: TypeStyle("BatchNorm", "#16a34a"),
    OpType.LN: TypeStyle("LayerNorm/RMSNorm", "#4ade80"),
    OpType.GN: TypeStyle("GroupNorm", "#15803d"),
    OpType.IN: TypeStyle("InstanceNorm", "#86efac"),
    OpType.LINEAR: TypeStyle("Linear", "#7c3aed"),
    OpType.PRELU: TypeStyle("PReLU", "#f472b6"),
    OpType.EMBED: TypeStyle("Embedding", "#c026d3"),
    OpType.MHA: TypeStyle("MultiheadAttention", "#dc2626"),
    OpType.LSTM: TypeStyle("LSTM", "#7c2d12"),
    OpType.GRU: TypeStyle("GRU", "#9a3412"),
    OpType.RNN: TypeStyle("RNN", "#fdba74"),
    OpType.CUSTOMIZED: TypeStyle("Custom layer", "#0f766e"),
    OpType.CONCAT: TypeStyle("Concat", "#0891b2"),
    OpType.SPLIT: TypeStyle("Split", "#06b6d4"),
    OpType.UNBIND: TypeStyle("Unbind", "#22d3ee"),
    OpType.SLICE: TypeStyle("Slice", "#67e8f9"),
    OpType.RESHAPE: TypeStyle("Reshape", "#ca8a04"),
    OpType.PERMUTE: TypeStyle("Permute", "#eab308"),
    OpType.EXPAND: TypeStyle("Expand", "#fde047"),
    OpType.PIXEL_SHUFFLE: TypeStyle("PixelShuffle", "#facc15"),
    OpType.UNFOLD: TypeStyle("Unfold/fold", "#a3a635"),
    OpType.SPATIAL: TypeStyle("Pool/resize/pad", "#94a3b8"),
    OpType.MATMUL: TypeStyle("Matmul", "#e11d48"),
    OpType.ATTENTION: TypeStyle("Attention", "#be123c"),
    OpType.REDUCTION: TypeStyle("Reduction", "#9ca3af"),
    OpType.ELEMENTWISE: TypeStyle("Elementwise", "#cbd5e1"),
}


# --------------------------------------------------------------------------------------------
# Modules: one ordered rule table.


def _is_depthwise(m: nn.Module) -> bool:
    # A conv with one channel is not depthwise: groups must be > 1 and equal to both widths.
    return (
        isinstance(m, nn.modules.conv._ConvNd)
        and not isinstance(m, nn.modules.conv._ConvTransposeNd)
        and m.groups > 1
        and m.groups == m.in_channels == m.out_channels
    )


def _is_instance_of(*classes: type) -> Callable[[nn.Module], bool]:
    return lambda m: isinstance(m, classes)


def _is_hf_conv1d(m: nn.Module) -> bool:
    # Hugging Face GPT-2's Conv1D is a Linear with a transposed weight (in, out). Matched by
    # its class, resolved lazily so the core never imports transformers.
    mod = sys.modules.get("transformers.pytorch_utils")
    cls = getattr(mod, "Conv1D", None)
    return cls is not None and isinstance(m, cls)


_ACTIVATIONS = tuple(
    getattr(nn, n)
    for n in (
        "ReLU ReLU6 GELU SiLU Sigmoid Tanh Hardswish Hardsigmoid Hardtanh LeakyReLU ELU SELU "
        "CELU Mish Softplus Softsign Tanhshrink Threshold LogSigmoid Dropout Dropout1d Dropout2d "
        "Dropout3d AlphaDropout FeatureAlphaDropout Identity"
    ).split()
    if hasattr(nn, n)
)
_POOLS = tuple(
    getattr(nn, n)
    for n in (
        "MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d AdaptiveAvgPool1d "
        "AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d "
        "LPPool1d LPPool2d Upsample UpsamplingNearest2d UpsamplingBilinear2d ZeroPad1d ZeroPad2d "
        "ZeroPad3d ReflectionPad1d ReflectionPad2d ReplicationPad1d ReplicationPad2d "
        "ConstantPad1d ConstantPad2d ConstantPad3d"
    ).split()
    if hasattr(nn, n)
)
_LAYER_NORMS = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

Rule = tuple[Callable[[nn.Module], bool], OpType]
_LAYER_NORM_FORWARDS = frozenset(c.forward for c in _LAYER_NORMS)


def _is_plain_layer_norm(m: nn.Module) -> bool:
    """A LayerNorm/RMSNorm that runs torch's forward. A subclass with its own forward (timm's
    ``LayerNorm2d``, ConvNeXt V2's channels-first LayerNorm: permute, normalise, permute back)
    is looked into instead: its ``F.layer_norm`` call says which dim it normalises."""
    return isinstance(m, _LAYER_NORMS) and type(m).forward in _LAYER_NORM_FORWARDS


def gn_prunes_whole_groups(channels: int, groups: int) -> bool:
    """How a GroupNorm(G, C) is pruned. Whole groups (``num_groups`` shrinks; the other groups'
    statistics are untouched, so it is exact) when that gives at least as many units as the
    alternative, the same offset of every group (``num_groups`` stays; every group's
    statistics change: GroupNorm(1, C) can only be pruned this way)."""
    return groups >= channels // max(groups, 1)


def conv_prunes_whole_groups(in_channels: int, groups: int) -> bool:
    """How a grouped conv is pruned. With one input channel per group (a depthwise conv with
    a channel multiplier) a unit is a whole group: input channel g and its outputs, and
    ``groups`` shrinks. Otherwise the same offset of every group (``groups`` stays)."""
    return groups > 1 and in_channels == groups


#: Built-in module rules, in priority order. First match wins.
MODULE_RULES: tuple[Rule, ...] = (
    (_is_depthwise, OpType.DEPTHWISE_CONV),
    (_is_instance_of(nn.modules.conv._ConvTransposeNd), OpType.CONV_TRANSPOSE),
    (_is_instance_of(nn.modules.conv._ConvNd), OpType.CONV),
    (_is_instance_of(nn.modules.batchnorm._BatchNorm), OpType.BN),
    (_is_plain_layer_norm, OpType.LN),
    (_is_instance_of(nn.GroupNorm), OpType.GN),
    (_is_instance_of(nn.modules.instancenorm._InstanceNorm), OpType.IN),
    (_is_instance_of(nn.Linear), OpType.LINEAR),
    (_is_hf_conv1d, OpType.LINEAR),
    (_is_instance_of(nn.PReLU), OpType.PRELU),
    (_is_instance_of(nn.Embedding, nn.EmbeddingBag), OpType.EMBED),
    (_is_instance_of(nn.MultiheadAttention), OpType.MHA),
    (_is_instance_of(nn.LSTM, nn.LSTMCell), OpType.LSTM),
    (_is_instance_of(nn.GRU, nn.GRUCell), OpType.GRU),
    (_is_instance_of(nn.RNN, nn.RNNCell), OpType.RNN),
    (_is_instance_of(nn.PixelShuffle, nn.PixelUnshuffle), OpType.PIXEL_SHUFFLE),
    (_is_instance_of(nn.Unfold, nn.Fold), OpType.UNFOLD),
    (_is_instance_of(*_POOLS), OpType.SPATIAL),
    (_is_instance_of(*_ACTIVATIONS), OpType.ELEMENTWISE),
)


@dataclass(frozen=True)
class CustomLayer:
    """A user-registered layer type (see :func:`register_layer`).

    ``in_dims``/``out_dims`` map each parameter name to the dim that follows the layer's input
    or output channels, e.g. ``{"weight": 1}`` / ``{"weight": 0, "bias": 0}`` for a Linear-like
    layer. ``in_channel_dim``/``out_channel_dim`` say which dim of the input/output tensor carries
    channels (1 for NCHW, -1 for channels-last). ``passthrough`` means output channel i *is*
    input channel i (like a norm or depthwise op), so pruning one prunes the other.
    ``update`` is called after tensors are pruned to fix attributes (e.g. ``out_features``).
    ``opaque`` says why the layer cannot be looked into: every group that reaches it is
    blocked with that reason (built in for TorchScript modules).
    """

    cls: type
    in_dims: dict[str, int]
    out_dims: dict[str, int]
    in_channel_dim: int = 1
    out_channel_dim: int = 1
    passthrough: bool = False
    update: Callable[[nn.Module], None] | None = None
    opaque: str | None = None


_CUSTOM: list[CustomLayer] = []
#: TorchScript modules (``torch.jit.script``/``trace``) run their ops in TorchScript's own
#: interpreter, out of the tracer's sight: one atomic node that blocks the groups reaching it
_SCRIPTED = CustomLayer(torch.jit.ScriptModule, {}, {}, opaque=(
    "is a TorchScript module, whose ops DepView cannot see: prune the eager module and "
    "script it afterwards"))


#: A layer whose own forward pre-hook replaced its tensor inputs (``register_forward_pre_hook
#: (lambda m, inp: (inp[0][:, :4],))``; it runs after DepView's hook, while the tracer steps
#: aside for the layer): one atomic node reading the inputs the hook was given
PRE_HOOKED = CustomLayer(nn.Module, {}, {}, opaque=(
    "has a forward pre-hook of its own that changes its inputs, which DepView cannot see: "
    "do that in a forward instead"))


#: ``x.numpy()`` / ``np.asarray(x)`` in a forward: the values go where DepView cannot follow
TO_NUMPY = CustomLayer(nn.Module, {}, {}, opaque=(
    "hands its values to numpy, where DepView cannot follow them: keep that computation "
    "in torch"))


def register_layer(
    cls: type,
    *,
    in_dims: dict[str, int],
    out_dims: dict[str, int],
    in_channel_dim: int = 1,
    out_channel_dim: int = 1,
    passthrough: bool = False,
    update: Callable[[nn.Module], None] | None = None,
) -> CustomLayer:
    """Register a custom layer class as an atomic ``CUSTOMIZED`` node with its channel rule.

    Registered classes take priority over built-in rules. Example::

        class Scale(nn.Module):                       # y = x * w[None, :, None, None]
            def __init__(self, c): super().__init__(); self.w = nn.Parameter(torch.ones(c))
            def forward(self, x): return x * self.w[None, :, None, None]

        register_layer(Scale, in_dims={"w": 0}, out_dims={"w": 0}, passthrough=True)
    """
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"register_layer needs an nn.Module subclass, got {cls!r}")
    entry = CustomLayer(cls, dict(in_dims), dict(out_dims), in_channel_dim, out_channel_dim,
                        passthrough, update)
    unregister_layer(cls)
    _CUSTOM.append(entry)
    return entry


def unregister_layer(cls: type) -> None:
    """Forget a class registered with :func:`register_layer` (no error if it was not)."""
    _CUSTOM[:] = [c for c in _CUSTOM if c.cls is not cls]


def custom_layer(module: nn.Module) -> CustomLayer | None:
    """The registration that applies to ``module``, if any (most recent first)."""
    for entry in reversed(_CUSTOM):
        if isinstance(module, entry.cls):
            return entry
    return _SCRIPTED if isinstance(module, torch.jit.ScriptModule) else None


def class_decides(module: nn.Module) -> bool:
    """True if :func:`match_module` gives every instance of this module's class the same type
    (while the registrations stay the same): only the depthwise rule reads an instance."""
    return not isinstance(module, nn.modules.conv._ConvNd)


def match_module(module: nn.Module) -> OpType | None:
    """The type of a module the tables know, or None (then the tracer looks inside it)."""
    if custom_layer(module) is not None:
        return OpType.CUSTOMIZED
    for predicate, op_type in MODULE_RULES:
        if predicate(module):
            return op_type
    return None


def classify(module: nn.Module) -> OpType:
    """Classify a module. Exhaustive and deterministic; unknown modules are ELEMENTWISE."""
    found = match_module(module)
    return OpType.ELEMENTWISE if found is None else found


# --------------------------------------------------------------------------------------------
# Functions: one lookup table keyed by the function object the torch-function mode receives.

_T = torch.Tensor


def _resolve(names: str) -> list[Callable]:
    """Turn "torch.cat Tensor.view F.relu" into the function objects (skipping missing)."""
    roots = {"torch": torch, "Tensor": _T, "F": F}
    found = []
    for dotted in names.split():
        root, _, attr = dotted.partition(".")
        fn = roots[root]
        for part in attr.split("."):  # torch.linalg.vector_norm
            fn = getattr(fn, part, None)
        if fn is not None:
            found.append(fn)
    return found


_FUNCTION_NAMES: dict[OpType, str] = {
    OpType.CONCAT: "torch.cat torch.concat torch.concatenate torch.stack torch.hstack "
    "torch.vstack",
    OpType.SPLIT: "torch.split torch.chunk torch.tensor_split Tensor.split Tensor.chunk "
    "Tensor.tensor_split Tensor.split_with_sizes torch.split_with_sizes",
    OpType.UNBIND: "torch.unbind Tensor.unbind",
    OpType.SLICE: "Tensor.__getitem__ torch.narrow Tensor.narrow torch.select Tensor.select",
    OpType.RESHAPE: "Tensor.view Tensor.reshape torch.reshape torch.flatten Tensor.flatten "
    "Tensor.unflatten torch.unflatten Tensor.squeeze torch.squeeze Tensor.unsqueeze "
    "torch.unsqueeze Tensor.view_as Tensor.reshape_as",
    OpType.PERMUTE: "Tensor.permute torch.permute Tensor.transpose torch.transpose Tensor.t "
    "torch.t Tensor.movedim torch.movedim Tensor.swapaxes torch.swapaxes Tensor.swapdims "
    "torch.swapdims",
    OpType.EXPAND: "Tensor.expand Tensor.expand_as torch.broadcast_to Tensor.broadcast_to "
    "Tensor.repeat torch.tile Tensor.tile torch.repeat_interleave Tensor.repeat_interleave",
    OpType.UNFOLD: "F.unfold F.fold Tensor.unfold",
    OpType.PIXEL_SHUFFLE: "F.pixel_shuffle F.pixel_unshuffle torch.pixel_shuffle "
    "torch.pixel_unshuffle",
    OpType.SPATIAL: "F.max_pool1d F.max_pool2d F.max_pool3d F.avg_pool1d F.avg_pool2d "
    "F.avg_pool3d F.adaptive_avg_pool1d F.adaptive_avg_pool2d F.adaptive_avg_pool3d "
    "F.adaptive_max_pool1d F.adaptive_max_pool2d F.adaptive_max_pool3d F.interpolate "
    "F.upsample F.max_pool2d_with_indices F.adaptive_max_pool2d_with_indices F.pad "
    "F.max_unpool1d F.max_unpool2d F.max_unpool3d F.grid_sample",
    OpType.MATMUL: "torch.matmul torch.linalg.matmul Tensor.matmul Tensor.__matmul__ "
    "Tensor.__rmatmul__ torch.bmm "
    "Tensor.bmm torch.mm Tensor.mm F.linear torch.addmm Tensor.addmm torch.baddbmm Tensor.baddbmm "
    "torch.einsum torch.tensordot F.grouped_mm torch._grouped_mm torch.sparse.mm torch.spmm "
    "torch.sparse.addmm torch.smm Tensor.smm torch.cdist F.bilinear torch.outer Tensor.outer "
    "torch.ger Tensor.ger",
    OpType.ATTENTION: "F.scaled_dot_product_attention F.multi_head_attention_forward",
    OpType.REDUCTION: "torch.sum Tensor.sum torch.mean Tensor.mean torch.amax Tensor.amax "
    "torch.amin Tensor.amin torch.var Tensor.var torch.std Tensor.std torch.norm Tensor.norm "
    "torch.logsumexp Tensor.logsumexp torch.prod Tensor.prod F.softmax F.log_softmax F.softmin "
    "F.gumbel_softmax "
    "torch.softmax Tensor.softmax torch.log_softmax Tensor.log_softmax F.normalize F.layer_norm "
    "F.rms_norm F.group_norm torch.max Tensor.max torch.min Tensor.min torch.argmax "
    "Tensor.argmax torch.argmin Tensor.argmin torch.linalg.vector_norm torch.linalg.norm "
    "torch.nansum Tensor.nansum torch.nanmean Tensor.nanmean torch.median Tensor.median "
    "torch.nanmedian Tensor.nanmedian torch.mode Tensor.mode torch.kthvalue Tensor.kthvalue",
    # Conv / norm functionals used outside a module: recorded as ops so the graph is complete.
    OpType.CONV: "F.conv1d F.conv2d F.conv3d",
    OpType.CONV_TRANSPOSE: "F.conv_transpose1d F.conv_transpose2d F.conv_transpose3d",
    OpType.BN: "F.batch_norm",
    OpType.EMBED: "F.embedding F.embedding_bag",
}

#: Function object -> OpType. Anything else a traced model calls is ELEMENTWISE.
FUNCTION_TYPES: dict[Callable, OpType] = {
    fn: op for op, names in _FUNCTION_NAMES.items() for fn in _resolve(names)
}

#: Shape-keeping ops (ELEMENTWISE by default) that do not keep index i at index i along some
#: dims, by function name: (effect, where the dims are). ``"mixes"``: output i reads other
#: positions too (a group may still shrink that dim, inexactly); ``"moves"``: output i comes
#: from elsewhere (the group is blocked); ``"halves"``: output i is input i gated by input
#: i + n (GLU: the dim halves, positions i and i + n go together). Dims come from the
#: argument at ``pos``/``kw`` (an int, a list, or None for every dim), or are ``fixed``.
#: In-place spellings share a row: :func:`function_name` strips the trailing underscore
#: (``scatter_`` is ``scatter``).
DimArgs = tuple[str, int | None, str | None, object, tuple[int, ...]]
DIM_ARGS: dict[str, DimArgs] = {
    #         effect    pos   kw       default  fixed
    "cumsum": ("mixes", 1, "dim", None, ()),
    "cumprod": ("mixes", 1, "dim", None, ()),
    "cummax": ("mixes", 1, "dim", None, ()),
    "cummin": ("mixes", 1, "dim", None, ()),
    "logcumsumexp": ("mixes", 1, "dim", None, ()),
    "local_response_norm": ("mixes", None, None, None, (1,)),
    "flip": ("moves", 1, "dims", None, ()),
    "fliplr": ("moves", None, None, None, (1,)),
    "flipud": ("moves", None, None, None, (0,)),
    "roll": ("moves", 2, "dims", None, ()),
    "sort": ("moves", 1, "dim", -1, ()),
    "topk": ("moves", 2, "dim", -1, ()),  # (k = the whole dim keeps the shape: a sort)
    "argsort": ("moves", 1, "dim", -1, ()),
    "msort": ("moves", None, None, None, (0,)),
    "channel_shuffle": ("moves", None, None, None, (1,)),
    "native_channel_shuffle": ("moves", None, None, None, (1,)),
    "gather": ("moves", 1, "dim", None, ()),
    "scatter": ("moves", 1, "dim", None, ()),
    "scatter_add": ("moves", 1, "dim", None, ()),
    "scatter_reduce": ("moves", 1, "dim", None, ()),
    "index_select": ("moves", 1, "dim", None, ()),
    "index_add": ("moves", 1, "dim", None, ()),
    "index_copy": ("moves", 1, "dim", None, ()),
    "index_fill": ("moves", 1, "dim", None, ()),
    "take_along_dim": ("moves", 2, "dim", None, ()),
    "tril": ("moves", None, None, None, (-2, -1)),
    "glu": ("halves", 1, "dim", -1, ()),
    # reduces its dim of two same-shaped tensors to one similarity (a siamese net's score):
    # a group there couples both inputs, inexactly; see groups' _pair_reduction_rule
    "cosine_similarity": ("mixes", 2, "dim", 1, ()),
    "pairwise_distance": ("mixes", None, None, None, (-1,)),  # ||a - b + eps|| over the last dim
    # x[i + 1] - x[i] along dim (n times, after prepend/append): a position is two inputs'
    "diff": ("moves", 2, "dim", -1, ()),
    "triu": ("moves", None, None, None, (-2, -1)),
    # Fourier transforms: every frequency reads every position of the dims transformed, whose
    # size is the transform's length, so a group there is blocked (FNet's FFT over the hidden
    # dim); the other dims pass position by position (Hyena's or an FNO's channels), also when
    # the transformed dim changes size (rfft, n=, s=). fftn without dim: every dim.
    **{f"fft_{k}": ("moves", 2, "dim", -1, ()) for k in
       ("fft", "ifft", "rfft", "irfft", "hfft", "ihfft")},
    **{f"fft_{k}2": ("moves", 2, "dim", (-2, -1), ()) for k in
       ("fft", "ifft", "rfft", "irfft", "hfft", "ihfft")},
    **{f"fft_{k}n": ("moves", 2, "dim", None, ()) for k in
       ("fft", "ifft", "rfft", "irfft", "hfft", "ihfft")},
    "fft_fftshift": ("moves", 1, "dim", None, ()),
    "fft_ifftshift": ("moves", 1, "dim", None, ()),
}

#: Ops that return positions along the dims they act on, by function name: the output port
#: that holds them. ``argmax`` returns positions only; ``max(x, dim)``, ``median(x, dim)``,
#: ``mode``, ``kthvalue`` and ``cummax`` return (values, indices), and a call with one output
#: (``max(x)``, ``median(x)``, ``max(a, b)``) returns none.
#: Pruning that dim renumbers what the positions point at (a predicted class id), so a group
#: on it is blocked when those positions are read.
INDEX_OUTPUTS: dict[str, int] = {"argmax": 0, "argmin": 0, "max": 1, "min": 1, "cummax": 1,
                                 "cummin": 1, "median": 1, "nanmedian": 1, "mode": 1,
                                 "kthvalue": 1}

#: Ops whose output holds positions along their input's dim, as :data:`INDEX_OUTPUTS`, and
#: ``topk``'s indices: a router's choice of experts. Where those positions go decides what a
#: group along that dim does (:mod:`viewer.core.positions`).
PICKS: dict[str, int] = {"topk": 1, **INDEX_OUTPUTS}

#: Picks of the smallest value (the rest pick the largest; ``topk(largest=False)`` is told by
#: its node's ``attrs["smallest"]``): a position they must never pick is one whose value is
#: +inf (verification's oracle of removed experts, -inf for the rest).
PICKS_SMALLEST: frozenset[str] = frozenset({"argmin", "min", "kthvalue"})

#: Clamps whose plain bounds the graph holds in ``attrs.scalars``; ``clamp`` only with both
#: bounds (``clamp(max=n)`` alone is not told from ``clamp(min=n)``). A clamp that cuts no
#: valid position keeps positions (:mod:`viewer.core.positions`).
CLAMPS: frozenset[str] = frozenset({"clamp_max", "clamp_min", "clamp"})

#: Functions that hand on the values of their (first) input as they are, only retyped,
#: reshaped or reordered: positions stay positions through them (``ids.reshape(-1)``,
#: ``ids.float()``, ``sort``'s values).
KEEPS_VALUES: frozenset[str] = frozenset(
    {"to", "float", "double", "half", "bfloat16", "int", "long", "type", "clone", "contiguous",
     "detach", "sort", "msort"})

#: Functions that read values for their order only (``argsort``; ``sort``'s values are
#: kept, :data:`KEEPS_VALUES`): the positions they return (of the tokens, ordered by the
#: expert each picked) do not change when pruning renumbers positions, in order.
ORDERS: frozenset[str] = frozenset({"argsort"})

#: Functions that take ``input``'s entries at the positions ``index`` holds along one dim.
GATHERS: frozenset[str] = frozenset({"gather", "take_along_dim"})

#: Functions that write into ``input`` at the positions ``index`` (their second tensor)
#: holds along one dim (DeepSeek's router marks the routing groups it picked:
#: ``mask.scatter_(1, group_idx, 1)``); along that dim the output is the input.
SCATTERS: frozenset[str] = frozenset(
    {"scatter", "scatter_add", "scatter_reduce", "index_add", "index_copy", "index_fill"})

#: Factories whose result holds the same value everywhere (``torch.zeros(b, self.hidden)``, an
#: RNN's initial state): no op of the graph, but a CONSTANT source named after them whose width
#: a group may shrink, when the size it was given can follow (see ``groups.fixed_sizes``).
#: ``new_zeros`` reads nothing of its tensor but the dtype and device.
FILLS: frozenset[str] = frozenset(
    {"zeros", "ones", "full", "new_zeros", "new_ones", "new_full", "empty", "new_empty"})

#: Factories shaped like their tensor, reading nothing of its values: picked positions
#: given to one stay unread (``torch.empty_like(ids)``).
LIKE_FILLS: frozenset[str] = frozenset(
    {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
     "randint_like"})

#: Normalisers over the trailing ``normalized_shape`` dims, by function name: their weight and
#: bias are shaped like those dims, and the shape is written into the call.
SHAPE_NORMS: frozenset[str] = frozenset({"layer_norm", "rms_norm"})

#: Functions that regather the sequences of a batch, padded (B, T, F) <-> packed (N, F), and
#: keep the features last: a ``PackedSequence``'s data, with 1-D batch sizes (and lengths)
#: beside it. Elementwise by type; their rule lets only that last dim through.
SEQUENCE_PACKING: frozenset[str] = frozenset({"pack_padded_sequence", "pad_packed_sequence"})

#: Reductions of one dim of two same-shaped tensors to one value per position (a siamese
#: net's score), by function name. Elementwise by type (their ``DIM_ARGS`` entry says which
#: dim they mix); their rule couples both inputs position by position, inexactly there.
#: Losses of two same-shaped tensors taken position by position and then (``reduction=
#: "mean"`` or ``"sum"``) reduced over every dim, by function name: a VQ-VAE's commitment
#: loss, a distillation term computed inside forward. With ``reduction="none"`` they are
#: elementwise; reduced, they are pair reductions over every dim (see ``describe``).
POINTWISE_LOSSES: frozenset[str] = frozenset(
    {"mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "binary_cross_entropy",
     "binary_cross_entropy_with_logits", "soft_margin_loss"})

PAIR_REDUCTIONS: frozenset[str] = frozenset(
    {"cosine_similarity", "pairwise_distance"}) | POINTWISE_LOSSES

#: ``channel_shuffle(x, groups)`` by function name (``nn.ChannelShuffle``, ShuffleNet): channels
#: regrouped as ``x.view(b, groups, n, ...).transpose(1, 2)``. Elementwise by type, moving
#: positions along dim 1 (``DIM_ARGS``); their rule maps each channel to where it goes and
#: keeps the groups equal.
CHANNEL_SHUFFLES: frozenset[str] = frozenset({"channel_shuffle", "native_channel_shuffle"})

#: ``self.masked_scatter(mask, source)`` by function name: a vision-language model writes its
#: image features into the text embeddings so. Elementwise by type; their rule couples
#: source's trailing dims with self's where the mask is broadcast (whole rows).
MASKED_SCATTERS: frozenset[str] = frozenset({"masked_scatter", "masked_scatter_"})

#: Views between a last dim of 2 (real, imaginary) and complex numbers, by function name:
#: ``view_as_complex`` drops that dim and ``view_as_real`` appends it (Meta's Llama rotary
#: embedding, GFNet's filters). Elementwise by type; their rule keeps every other dim in place.
COMPLEX_VIEWS: frozenset[str] = frozenset({"view_as_complex", "view_as_real"})

#: Reductions whose ``dim`` is not their second argument or is not every dim when left out, by
#: function name: (position, default). A norm's order comes first (``torch.norm(x, 2, 1)``,
#: ``torch.linalg.vector_norm(x, 2, (1, 2))``), and so does ``kthvalue``'s k; ``mode`` and
#: ``kthvalue`` reduce the last dim by default, as ``gumbel_softmax`` (after tau, hard and eps)
#: does. Other reductions: (1, None), every dim.
REDUCE_DIMS: dict[str, tuple[int, int | None]] = {
    "norm": (2, None), "linalg_vector_norm": (2, None), "linalg_norm": (2, None),
    "kthvalue": (2, -1), "mode": (1, -1), "gumbel_softmax": (4, -1)}

#: Reductions a zero term leaves as they are (exact over pruned channels), by function name.
ZERO_FREE_REDUCTIONS = frozenset(("sum", "nansum"))
#: Types whose output at a position is input values moved there (or averaged, or a max): a
#: channel the masked original zeroes stays zero through them (``rules.nonzero_by``)
MOVES_VALUES = frozenset((OpType.CONCAT, OpType.SPLIT, OpType.UNBIND, OpType.SLICE,
                          OpType.RESHAPE, OpType.PERMUTE, OpType.EXPAND, OpType.PIXEL_SHUFFLE,
                          OpType.UNFOLD, OpType.SPATIAL))
#: Reductions that give 0 on zeros (along other dims; ``normalize`` along its own too)
ZERO_REDUCTIONS = frozenset(("sum", "nansum", "mean", "nanmean", "amax", "amin", "max", "min",
                             "var", "std", "norm", "linalg_vector_norm", "linalg_norm", "prod",
                             "median", "nanmedian", "mode", "kthvalue", "normalize"))
#: Elementwise functions (by function name) and activation modules (by lower-cased class name)
#: that map 0 to 0, reading their first input position by position or moving its values: a
#: channel the masked original zeroes stays zero through them, so a sum over it after them
#: still adds nothing (``rules.nonzero_by``). Not ``sigmoid`` (0.5), ``exp``, ``cos``,
#: ``softplus``, ``hardsigmoid``, ``threshold``: a zero-free reduction after them is inexact.
#: Binary ops and those whose number arguments decide (``mul``, ``add``, ``div``, ``pow``,
#: ``clamp``, ``masked_fill``) are read there.
KEEPS_ZERO: frozenset[str] = frozenset(
    {"relu", "relu6", "leaky_relu", "leakyrelu", "gelu", "silu", "tanh", "hardtanh", "hardswish",
     "elu", "selu", "celu", "mish", "softsign", "tanhshrink", "hardshrink", "softshrink",
     "prelu", "rrelu", "neg", "negative", "positive", "abs", "absolute", "sign", "sgn", "sin",
     "sinh", "tan", "atan", "arctan", "asin", "arcsin", "asinh", "arcsinh", "atanh", "arctanh",
     "erf", "erfinv", "expm1", "log1p", "sqrt", "square", "round", "floor", "ceil", "trunc",
     "fix", "frac", "nan_to_num", "deg2rad", "rad2deg", "conj", "identity", "dropout",
     "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "alphadropout",
     "feature_alpha_dropout", "featurealphadropout", "cumsum", "cumprod", "cummax", "cummin",
     "flip", "fliplr", "flipud", "roll", "tril", "triu", "gather", "index_select",
     "take_along_dim", "channel_shuffle", "native_channel_shuffle", "glu",
     "view_as_real", "view_as_complex", "type_as", "as_strided"}) | KEEPS_VALUES

#: The p-norms, by function name: (position, keyword, default) of their order; exact only
#: for an order p >= 0 (p = 0 counts the nonzeros, inf takes the largest magnitude; a
#: negative order, or -inf, the smallest: a zero changes it).
NORM_ORDERS: dict[str, tuple[int, str, float]] = {
    "normalize": (1, "p", 2.0), "norm": (1, "p", 2.0), "linalg_vector_norm": (1, "ord", 2.0)}

#: Tensor methods/functions that never produce a new graph value worth a node.
IGNORED_FUNCTIONS: frozenset = frozenset(
    _resolve(
        "Tensor.size Tensor.dim Tensor.numel Tensor.item Tensor.tolist Tensor.__len__ "
        "Tensor.__format__ Tensor.__repr__ Tensor.__bool__ Tensor.__iter__ Tensor.data_ptr "
        "Tensor.stride Tensor.is_contiguous Tensor.requires_grad_ "
        "Tensor.__hash__ Tensor.__index__ Tensor.__int__ Tensor.__float__ Tensor.dim_order"
    )
)


def classify_function(func: Callable) -> OpType:
    """Classify a torch-level function; unknown functions are ELEMENTWISE."""
    try:
        return FUNCTION_TYPES.get(func, OpType.ELEMENTWISE)
    except TypeError:  # unhashable callables
        return OpType.ELEMENTWISE


def function_name(func: Callable) -> str:
    """A short, stable name for a torch-level function ("add", "cat", "getitem")."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # property getters such as Tensor.T
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", "get")
    name = name.strip("_")
    if name.startswith("r") and name[1:] in _REFLECTED:
        name = name[1:]
    if name.startswith("i") and name[1:] in _REFLECTED:
        name = name[1:] + "_"
    return name


_REFLECTED = {"add", "sub", "mul", "truediv", "floordiv", "matmul", "pow", "and", "or", "xor",
              "mod", "div"}
