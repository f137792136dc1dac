"""Metadata carried by virtual (functional-op) nodes: frozen, complete at trace time.

Every class turns into JSON with :func:`meta_to_dict`. Dims are always normalised to be
non-negative and relative to the *input* tensor of the op (for CONCAT, the output).

    >>> ConcatMeta(dim=1, sizes=(16, 8, 8)).offsets
    (0, 16, 24)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import accumulate

Shape = tuple[int, ...]


def _offsets(sizes: tuple[int, ...]) -> tuple[int, ...]:
    return (0, *accumulate(sizes))[:-1]


@dataclass(frozen=True)
class ConcatMeta:
    """``torch.cat``/``stack``: input k occupies ``[offsets[k], offsets[k] + sizes[k])`` of
    ``dim`` in the output. ``stacked`` means each input got a new dim of size 1 first."""

    dim: int
    sizes: tuple[int, ...]
    stacked: bool = False

    @property
    def offsets(self) -> tuple[int, ...]:
        return _offsets(self.sizes)


@dataclass(frozen=True)
class SplitMeta:
    """``split``/``chunk``/``tensor_split``: output k is ``[offsets[k], +sizes[k])`` of ``dim``.

    ``computed`` is True when torch derived the sizes from the tensor (``chunk(2)``,
    ``split(8)``, ``tensor_split(3)``): after pruning, the cut points move with the width."""

    dim: int
    sizes: tuple[int, ...]
    computed: bool = False

    @property
    def offsets(self) -> tuple[int, ...]:
        return _offsets(self.sizes)


@dataclass(frozen=True)
class UnbindMeta:
    """``unbind``: output k is index k of ``dim``, which disappears."""

    dim: int
    n: int


@dataclass(frozen=True)
class DimSlice:
    """One input dim kept as ``range(start, stop, step)``."""

    dim: int
    start: int
    stop: int
    step: int


@dataclass(frozen=True)
class SliceMeta:
    """``x[...]``/``narrow``/``select``.

    ``dim_map[i]`` is the output dim of input dim ``i`` (None when an integer or a tensor index
    consumed it).
    ``slices`` lists only non-trivial slices; ``selects`` the ``(dim, index)`` pairs removed;
    ``advanced`` is True when a tensor/list index was used (then indices are data-dependent).
    The single-slice case reads as ``meta.dim, meta.start, meta.stop, meta.step``.
    """

    in_shape: Shape
    out_shape: Shape
    dim_map: tuple[int | None, ...]
    slices: tuple[DimSlice, ...] = ()
    selects: tuple[tuple[int, int], ...] = ()
    advanced: bool = False
    gathered: tuple[int, ...] = ()  #: input dims indexed by a tensor/list (data-dependent)
    adv_dims: tuple[int, ...] = ()  #: output dims those indices give (their broadcast shape)

    @property
    def dim(self) -> int | None:
        if self.slices:
            return self.slices[0].dim
        return self.selects[0][0] if self.selects else None

    @property
    def start(self) -> int | None:
        if self.slices:
            return self.slices[0].start
        return self.selects[0][1] if self.selects else None

    @property
    def stop(self) -> int | None:
        if self.slices:
            return self.slices[0].stop
        return self.selects[0][1] + 1 if self.selects else None

    @property
    def step(self) -> int | None:
        return self.slices[0].step if self.slices else (1 if self.selects else None)

    def index_text(self, name: str = "x") -> str:
        """The index as Python spells it, dim by dim: ``x[:, :, 0]``, ``x[:, 2:6]``, ``x[t]``
        for a tensor index (trailing whole dims left out)."""
        sl = {s.dim: s for s in self.slices}
        sel = dict(self.selects)
        items = []
        for d in range(len(self.in_shape)):
            if d in sel:
                items.append(str(sel[d]))
            elif d in sl:
                s = sl[d]
                items.append(f"{s.start}:{s.stop}" + (f":{s.step}" if s.step != 1 else ""))
            elif d in self.gathered:
                items.append("t")
            else:
                items.append(":")
        while items and items[-1] == ":":
            items.pop()
        return f"{name}[{', '.join(items) or ':'}]"


@dataclass(frozen=True)
class ReshapeMeta:
    """view/reshape/flatten/unflatten/squeeze/unsqueeze: a row-major regrouping of dims."""

    op: str
    in_shape: Shape
    out_shape: Shape
    inferred: int | None = None  #: output dim given as -1 in the call (its size is computed)


@dataclass(frozen=True)
class PermuteMeta:
    """permute/transpose: output dim ``i`` is input dim ``perm[i]``."""

    op: str
    in_shape: Shape
    out_shape: Shape
    perm: tuple[int, ...]


@dataclass(frozen=True)
class ExpandMeta:
    """expand/broadcast_to: size-1 dims (and new leading dims) grow. ``copies`` is
    ``"tile"`` for ``repeat``/``tile`` (the whole dim is copied: position p is also
    p + k * size) and ``"interleave"`` for ``repeat_interleave`` (p becomes p * r ... p * r +
    r - 1)."""

    op: str
    in_shape: Shape
    out_shape: Shape
    copies: str = ""


@dataclass(frozen=True)
class PixelShuffleMeta:
    """pixel_shuffle (``unshuffle=False``): output channel c reads input channels
    ``[c*r*r, (c+1)*r*r)``; pixel_unshuffle is the reverse."""

    factor: int
    unshuffle: bool


@dataclass(frozen=True)
class WindowsMeta:
    """``Tensor.unfold(dim, size, step)``: ``dim`` becomes the window count, and a new last
    dim holds each window's ``size`` positions; every other dim keeps its place.

        >>> torch.zeros(2, 8, 6).unfold(2, 3, 1).shape  # WindowsMeta("unfold", 2, 3, 1)
        torch.Size([2, 8, 4, 3])
    """

    op: str
    dim: int
    size: int
    step: int


@dataclass(frozen=True)
class MatmulMeta:
    """matmul family: ``a @ b``; for ``op == "linear"`` b is a weight ``(out, in)``.
    ``align``: the widths of the multiplied dims must stay multiples of this (``grouped_mm``
    needs rows of 16 bytes)."""

    op: str
    a_shape: Shape
    b_shape: Shape
    out_shape: Shape
    align: int = 1


@dataclass(frozen=True)
class ReduceMeta:
    """A reduction or a normaliser along ``dims``; ``keepdim`` when the output keeps them;
    ``exact`` when a zero along them adds nothing (a sum, a p-norm with p >= 0, a tensor
    divided by one): channels zeroed there and channels removed give the same result."""

    op: str
    dims: tuple[int, ...]
    keepdim: bool
    exact: bool = False


@dataclass(frozen=True)
class ElementwiseMeta:
    """An op that maps index i of every (broadcast) input to index i of the output, except
    along ``mixes`` (output i also reads other positions: ``cumsum``) and ``moves`` (output i
    comes from another position: ``flip``, ``roll``, ``sort``, ``gather``)."""

    op: str
    mixes: tuple[int, ...] = ()
    moves: tuple[int, ...] = ()
    halves: tuple[int, ...] = ()  #: output i is input i gated by input i + n (GLU)


@dataclass(frozen=True)
class CountsMeta:
    """An op that turns values into positions: ``histc``, ``bincount`` and ``one_hot`` give
    position ``v`` along output ``dim`` to the value ``v`` (a mixture-of-experts layer counts
    the tokens each expert got, the ids a router's ``topk`` picked). ``exact`` when value
    ``v`` lands on position ``v`` for every value the output has room for (``histc`` with
    ``min=0`` and ``max=bins - 1``, ``bincount`` whose ``minlength`` is its width)."""

    op: str
    dim: int
    exact: bool


@dataclass(frozen=True)
class EinsumMeta:
    """``torch.einsum``: one letter per dim of every operand (``terms``) and of the output
    (``out``), with ``...`` spelled out as ``0``, ``1``, ... and an implicit output made
    explicit. A letter shared by two places couples those dims."""

    equation: str
    terms: tuple[str, ...]
    out: str


@dataclass(frozen=True)
class PadMeta:
    """``F.pad``: ``pads`` as passed, (left, right) pairs from the last dim backwards;
    ``value``: what a constant pad fills with when it is not 0 (None: 0)."""

    op: str
    pads: tuple[int, ...]
    mode: str = "constant"
    value: float | None = None


@dataclass(frozen=True)
class AttentionMeta:
    """``F.scaled_dot_product_attention``: ``scale`` as passed; ``None`` means torch's
    default ``1/sqrt(E)``, which changes when q's and k's last dim shrinks."""

    op: str
    scale: float | None


@dataclass(frozen=True)
class MhaCallMeta:
    """``F.multi_head_attention_forward`` called directly (HF WavLM, OpenAI CLIP's
    ``AttentionPool2d``): which input port holds each of its tensors (``ports``: argument
    name -> port, for the tensors given), ``num_heads`` and whether q, k and v have their own
    projection weights (``separate``) instead of one packed ``in_proj_weight``."""

    op: str
    ports: tuple[tuple[str, int], ...]
    num_heads: int
    separate: bool

    def port(self, name: str) -> int | None:
        return next((p for n, p in self.ports if n == name), None)


#: The target of the node the tracer adds where an in-place op on a view wrote its tensor
#: (metadata: :class:`SetItemMeta`, the value being the written view)
WRITE = "write"


@dataclass(frozen=True)
class SetItemMeta:
    """``x[index] = value``, in place: the node's output is ``x`` as written. ``region`` lays
    out ``x[index]`` (None when DepView does not model the index); ``value`` is the input port
    of a tensor value (None for a number) and ``index`` the ports of tensor indices. ``mask``
    is k when the index is one bool tensor shaped as ``x``'s first k dims (``x[x < 0] = 0``:
    position by position), else 0."""

    region: SliceMeta | None
    value: int | None = None
    index: tuple[int, ...] = ()
    mask: int = 0


@dataclass(frozen=True)
class StridedMeta:
    """``x.as_strided(size, stride, offset)``: ``carries`` pairs an input dim with the
    output dim that reads it position for position (output index i on it is input index i
    for every output element): the same stride and size, and every other stride and the
    offset, relative to ``x``'s, either a multiple of the dim's span (stride times size)
    or below its stride altogether. Longformer's overlapping chunks keep the head dim this
    way. Worked out only for an ``x`` whose elements are laid out densely, one each."""

    carries: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SolveMeta:
    """``torch.linalg.solve_triangular(A, B)`` / ``torch.linalg.solve(A, B)``: ``left``
    (the default) solves ``A X = B``, each column of ``B`` alone; ``left=False`` solves
    ``X A = B``, each row alone."""

    left: bool = True


@dataclass(frozen=True)
class OpMeta:
    """Other functional ops: the op name only."""

    op: str


Meta = (
    ConcatMeta | SplitMeta | UnbindMeta | SliceMeta | ReshapeMeta | PermuteMeta | ExpandMeta
    | PixelShuffleMeta | WindowsMeta | MatmulMeta | ReduceMeta | EinsumMeta | PadMeta
    | ElementwiseMeta | CountsMeta | AttentionMeta | SetItemMeta | StridedMeta | SolveMeta | OpMeta
)


def meta_to_dict(meta: object | None) -> dict | None:
    """JSON-ready dict with a ``kind`` field and derived properties (``offsets``)."""
    if meta is None:
        return None
    d = dataclasses.asdict(meta)
    for name in ("offsets",):
        if hasattr(meta, name):
            d[name] = list(getattr(meta, name))
    d["kind"] = type(meta).__name__.removesuffix("Meta").lower()
    return _jsonable(d)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
