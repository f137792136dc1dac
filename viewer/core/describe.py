"""Metadata of functional ops, read from their real calls at trace time.

:func:`describe` gives the frozen dataclass of :mod:`viewer.core.meta` a virtual node carries
(concat sizes, split sizes, a view's shapes and the dim torch inferred, a slice's region, a
matmul's contracted dims, ...), from the arguments and results the tracer saw: one builder
per op type in :data:`DESCRIBERS`, and per elementwise function name in
:data:`NAMED_DESCRIBERS`.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch

from . import meta as M
from .optypes import (
    DIM_ARGS,
    NORM_ORDERS,
    POINTWISE_LOSSES,
    REDUCE_DIMS,
    SHAPE_NORMS,
    ZERO_FREE_REDUCTIONS,
    OpType,
    function_name,
)
from .trees import tensors_in


def _arg(args, kwargs, pos: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else default


def _norm(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def describe(op_type: OpType, name: str, func, args, kwargs, ins, outs) -> object:
    """Metadata of one functional op, from its real arguments and results.

    Types without a row in :data:`DESCRIBERS` get metadata from the name alone (the tracer
    makes it once per function and shares it: the dataclasses are frozen)."""
    fn = DESCRIBERS.get(op_type)
    if fn is not None:
        return fn(name, func, args, kwargs, ins, outs)
    if op_type is not OpType.ELEMENTWISE:
        return M.OpMeta(name)
    fn = NAMED_DESCRIBERS.get(name)
    if fn is not None:
        return fn(name, func, args, kwargs, ins, outs)
    if name in DIM_ARGS and ins:
        return _dim_args_meta(name, args, kwargs, ins[0].dim())
    return M.ElementwiseMeta(name)


def _solve_meta(name, func, args, kwargs, ins, outs) -> M.SolveMeta:
    """Which side ``A`` multiplies ``X`` from in ``linalg.solve_triangular(A, B, *, upper,
    left=True)`` and ``linalg.solve(A, B, *, left=True)``: a keyword argument only."""
    return M.SolveMeta(bool(kwargs.get("left", True)))


def _strided_meta(name, func, args, kwargs, ins, outs) -> M.StridedMeta:
    """Which dims of ``x`` the view ``y = x.as_strided(...)`` reads position for position
    (see :class:`~viewer.core.meta.StridedMeta`), from both tensors' strides and offsets."""
    if not ins or not outs:
        return M.StridedMeta(())
    x, y = ins[0], outs[0]
    shape, stride = tuple(x.shape), tuple(x.stride())
    # dense, one element each: an address is one index of x, digit by digit (by stride)
    order = sorted((st, n) for st, n in zip(stride, shape, strict=True) if n > 1)
    span = 1
    for st, n in order:
        if st != span:
            return M.StridedMeta(())
        span *= n
    base = y.storage_offset() - x.storage_offset()
    carries = []
    for d, (st, n) in enumerate(zip(stride, shape, strict=True)):
        if n <= 1:
            continue
        outs = [j for j, (s2, z) in enumerate(zip(y.stride(), y.shape, strict=True))
                if s2 == st and z == n]
        if len(outs) != 1:
            continue
        whole = st * n  # (a multiple of it leaves dim d's digit alone)
        low = base % whole
        for j, (s2, z) in enumerate(zip(y.stride(), y.shape, strict=True)):
            if j != outs[0] and z > 1 and s2 % whole:
                low += (z - 1) * s2
        if base >= 0 and low < st:
            carries.append((d, outs[0]))
    return M.StridedMeta(tuple(carries))


def _dim_args_meta(name: str, args, kwargs, ndim: int) -> M.ElementwiseMeta:
    """Which dims a shape-keeping op mixes or moves (see :data:`DIM_ARGS`)."""
    effect, pos, kw, default, fixed = DIM_ARGS[name]
    if pos is None:
        dims = fixed
    else:
        given = _arg(args, kwargs, pos, kw, default)
        if name == "flip" and len(args) > pos + 1:  # x.flip(0, 2): dims as varargs
            given = args[pos:]
        if given is None:  # roll/take_along_dim without dims: over the flattened tensor
            dims = tuple(range(ndim))
        else:
            dims = tuple(given) if isinstance(given, (list, tuple)) else (int(given),)
    dims = tuple(sorted({_norm(int(d), max(ndim, 1)) for d in dims}))
    return M.ElementwiseMeta(name, **{effect: dims})


def _concat_meta(name, func, args, kwargs, ins, outs) -> M.ConcatMeta:
    y = outs[0]
    tensors = list(args[0]) if args else list(kwargs.get("tensors", ()))
    dim = _arg(args, kwargs, 1, "dim", kwargs.get("axis", 0))
    stacked = name == "stack"
    if name == "hstack":
        dim = 0 if tensors[0].dim() == 1 else 1
    elif name == "vstack":
        dim = 0
    dim = _norm(dim, y.dim())
    # legacy torch.cat skips 1-D empty tensors (HF caches start from one): size 0
    sizes = tuple(1 if stacked else 0 if t.dim() == 1 and t.numel() == 0 else
                  int(t.shape[dim]) for t in tensors)
    return M.ConcatMeta(dim, sizes, stacked)


def _split_meta(name, func, args, kwargs, ins, outs) -> M.SplitMeta:
    dim = _norm(_arg(args, kwargs, 2, "dim", 0), ins[0].dim())
    how = _arg(args, kwargs, 1, "split_size_or_sections",
               kwargs.get("chunks", kwargs.get("indices_or_sections",
                                               kwargs.get("split_size"))))
    computed = name == "chunk" or isinstance(how, int)
    return M.SplitMeta(dim, tuple(int(t.shape[dim]) for t in outs), computed)


def _unbind_meta(name, func, args, kwargs, ins, outs) -> M.UnbindMeta:
    return M.UnbindMeta(_norm(_arg(args, kwargs, 1, "dim", 0), ins[0].dim()), len(outs))


def _reshape_meta(name, func, args, kwargs, ins, outs) -> M.ReshapeMeta:
    x, y = ins[0], outs[0]
    return M.ReshapeMeta(name, tuple(x.shape), tuple(y.shape), _inferred(name, args, y))


def _permute_meta(name, func, args, kwargs, ins, outs) -> M.PermuteMeta:
    x, y = ins[0], outs[0]
    perm = _plain_perm(name, args, kwargs, x.dim())
    if perm is None:
        perm = _perm(func, args, kwargs, x)
    return M.PermuteMeta(name, tuple(x.shape), tuple(y.shape), perm)


def _expand_meta(name, func, args, kwargs, ins, outs) -> M.ExpandMeta | M.OpMeta:
    shapes = (tuple(ins[0].shape), tuple(outs[0].shape))
    if name in ("repeat", "tile"):
        return M.ExpandMeta(name, *shapes, copies="tile")
    if name == "repeat_interleave":  # an int count along a given dim; else data-dependent
        reps, dim = _arg(args, kwargs, 1, "repeats"), _arg(args, kwargs, 2, "dim")
        if type(reps) is not int or dim is None:
            return M.OpMeta(name)
        return M.ExpandMeta(name, *shapes, copies="interleave")
    return M.ExpandMeta(name, *shapes)


def _pixel_shuffle_meta(name, func, args, kwargs, ins, outs) -> M.PixelShuffleMeta:
    return M.PixelShuffleMeta(int(_arg(args, kwargs, 1, "upscale_factor",
                                       kwargs.get("downscale_factor", 1))),
                              "unshuffle" in name)


def _unfold_meta(name, func, args, kwargs, ins, outs) -> M.WindowsMeta | M.OpMeta:
    if func is not torch.Tensor.unfold:  # F.unfold / F.fold: patches, read from the shapes
        return M.OpMeta(name)
    dim = _norm(int(_arg(args, kwargs, 1, "dimension")), max(ins[0].dim(), 1))
    return M.WindowsMeta(name, dim, int(_arg(args, kwargs, 2, "size")),
                         int(_arg(args, kwargs, 3, "step")))


def _spatial_meta(name, func, args, kwargs, ins, outs) -> M.PadMeta | M.OpMeta:
    if name != "pad":
        return M.OpMeta(name)
    pads = tuple(int(p) for p in _arg(args, kwargs, 1, "pad", ()))
    mode = str(_arg(args, kwargs, 2, "mode", "constant"))
    value = _arg(args, kwargs, 3, "value")
    # (a non-zero fill puts values into a channel the masked original zeroes: rules.nonzero_by)
    value = float(value) if mode == "constant" and isinstance(value, (int, float)) and value \
        else None
    return M.PadMeta(name, pads, mode, value)


def _matmul_meta(name, func, args, kwargs, ins, outs) -> M.MatmulMeta | M.EinsumMeta | M.OpMeta:
    if name == "einsum":
        eq = _arg(args, kwargs, 0, "equation")
        if not isinstance(eq, str):  # the sublist form: einsum(a, [0, 1], b, [1, 2])
            return M.OpMeta(name)
        return _einsum_meta(eq, [t.dim() for t in ins], outs[0].dim())
    if name == "tensordot":
        pairs = _tensordot_dims(_arg(args, kwargs, 2, "dims", 2), ins[0].dim(), ins[1].dim())
        if pairs is None or ins[0].dim() + ins[1].dim() > 52:  # a tensor of dims; no letters
            return M.OpMeta(name)
        return _tensordot_meta(*pairs, ins[0].dim(), ins[1].dim())
    if name == "cdist":  # distances between rows: a sum over the features of both
        return _einsum_meta("...pm,...rm->...pr", [t.dim() for t in ins[:2]], outs[0].dim())
    if name in ("outer", "ger"):  # two vectors: every pair of their entries
        return _einsum_meta("i,j->ij", [t.dim() for t in ins[:2]], outs[0].dim())
    if name == "bilinear":  # nn.Bilinear: y_k = x1 W_k x2 (+ b_k)
        eq = "...i,...j,kij" + (",k" if len(ins) > 3 else "") + "->...k"
        return _einsum_meta(eq, [t.dim() for t in ins], outs[0].dim())
    if name in ("addmm", "baddbmm"):
        a, b = ins[1], ins[2]
    else:
        a, b = ins[0], ins[1]
    align = max(1, 16 // a.element_size()) if name == "grouped_mm" else 1
    return M.MatmulMeta(name, tuple(a.shape), tuple(b.shape), tuple(outs[0].shape), align)


def _einsum_meta(equation: str, ndims: list[int], out_ndim: int) -> M.EinsumMeta:
    """Spell out an einsum equation: ``"...ij,jk"`` on 3-D and 2-D operands becomes terms
    ``("0ij", "jk")`` and output ``"0ik"`` (ellipsis dims, right-aligned like broadcasting,
    get the digits ``0``, ``1``, ...)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    raw = lhs.split(",")
    if len(raw) != len(ndims):
        raise ValueError(f"einsum {equation!r} names {len(raw)} operands, got {len(ndims)}")
    n_ell = max([nd - (len(t) - 3) for t, nd in zip(raw, ndims, strict=True) if "..." in t],
                default=0)
    ell = "".join(str(i) for i in range(n_ell))

    def expand(term: str, nd: int) -> str:
        if "..." not in term:
            return term
        k = nd - (len(term) - 3)
        return term.replace("...", ell[n_ell - k:] if k else "")

    terms = tuple(expand(t, nd) for t, nd in zip(raw, ndims, strict=True))
    if arrow:
        out = rhs.replace("...", ell)
    else:  # implicit output: ellipsis dims, then the letters used once, alphabetically
        letters = "".join(terms)
        out = ell + "".join(sorted(c for c in set(letters) if c.isalpha()
                                   and letters.count(c) == 1))
    if len(out) != out_ndim or any(len(t) != nd for t, nd in zip(terms, ndims, strict=True)):
        raise ValueError(f"einsum {equation!r} does not match its operands")
    return M.EinsumMeta(equation, terms, out)


def _tensordot_dims(dims, nda: int, ndb: int) -> tuple[list[int], list[int]] | None:
    """``torch.tensordot``'s ``dims`` as two lists of paired dims: an int n pairs a's last n
    dims with b's first n, in order; two lists (or ints) pair them as given."""
    if isinstance(dims, int):
        return list(range(nda - dims, nda)), list(range(dims))
    if not isinstance(dims, (list, tuple)) or len(dims) != 2:
        return None
    da, db = ([d] if isinstance(d, int) else list(d) for d in dims)
    if not all(isinstance(d, int) for d in da + db):
        return None
    return [_norm(d, nda) for d in da], [_norm(d, ndb) for d in db]


def _tensordot_meta(da: list[int], db: list[int], nda: int, ndb: int) -> M.EinsumMeta:
    """``torch.tensordot`` is the einsum that gives a's dims ``da`` the letters of b's dims
    ``db`` and keeps the others, a's then b's, in order: ``tensordot(a, b, ([1], [0]))`` on a
    3-D a and a 2-D b is ``abc,bd->acd``."""
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    ta = [next(letters) for _ in range(nda)]
    tb = [next(letters) for _ in range(ndb)]
    for i, j in zip(da, db, strict=True):
        tb[j] = ta[i]
    out = "".join(c for d, c in enumerate(ta) if d not in da) + \
        "".join(c for d, c in enumerate(tb) if d not in db)
    terms = ("".join(ta), "".join(tb))
    return M.EinsumMeta(f"{terms[0]},{terms[1]}->{out}", terms, out)


def _reduce_meta(name, func, args, kwargs, ins, outs) -> M.ReduceMeta:
    x, y = ins[0], outs[0]
    # (a norm's order comes first: torch.norm(x, 2, 1); kthvalue's k: kthvalue(x, k, dim))
    pos, default = REDUCE_DIMS.get(name, (1, None))
    dim = _arg(args, kwargs, pos, "dim", default)
    if isinstance(dim, torch.Tensor) or name in SHAPE_NORMS:
        dim = None
    if name in SHAPE_NORMS:
        shape = _arg(args, kwargs, 1, "normalized_shape", ())
        dims = tuple(range(x.dim() - len(shape), x.dim()))
    elif name == "group_norm":
        dims = tuple(range(1, x.dim()))
    elif dim is None:
        dims = tuple(range(x.dim()))
    else:
        dims = tuple(sorted(_norm(d, x.dim()) for d in
                            (dim if isinstance(dim, (list, tuple)) else (dim,))))
    return M.ReduceMeta(name, dims, tuple(y.shape)[: x.dim()] == tuple(x.shape)[: y.dim()]
                        and y.dim() == x.dim(), _zero_adds_nothing(name, args, kwargs))


def _zero_adds_nothing(name: str, args, kwargs) -> bool:
    """Whether a zero along its dims leaves the reduction ``name`` as it is (its
    :class:`ReduceMeta` is exact). ``torch.norm``'s matrix orders ("fro" over two dims is
    the 2-norm of all of them; "nuc" is not elementwise) count only as a 2-norm."""
    if name in ZERO_FREE_REDUCTIONS:
        return True
    if name not in NORM_ORDERS:
        return False
    pos, key, default = NORM_ORDERS[name]
    order = _arg(args, kwargs, pos, key, default)
    if order is None or order == "fro":
        order = 2.0
    return isinstance(order, (int, float)) and not isinstance(order, bool) and order >= 0


def _inferred(name: str, args, y: torch.Tensor) -> int | None:
    """Which output dim the call left to torch (-1): its size follows the tensor's size."""
    if name in ("view", "reshape"):
        shape = args[1:] if name == "view" or len(args) > 2 else args[1:]
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = shape[0]
        for i, s in enumerate(shape):
            if isinstance(s, int) and s == -1:
                return i
    if name == "unflatten" and len(args) > 2:
        dim = _norm(args[1], y.dim() - len(args[2]) + 1)
        for i, s in enumerate(args[2]):
            if s == -1:
                return dim + i
    return None


def _plain_perm(name: str, args, kwargs, ndim: int) -> tuple[int, ...] | None:
    """The permutation of the two common spellings, read from the arguments:
    ``transpose(x, d0, d1)`` (``swapaxes``, ``swapdims``) and ``permute(x, *dims)`` /
    ``permute(x, dims)`` with int dims. None for anything else (then :func:`_perm` probes)."""
    if kwargs or ndim == 0:
        return None
    if name in ("transpose", "swapaxes", "swapdims") and len(args) == 3:
        d0, d1 = args[1], args[2]
        if type(d0) is int and type(d1) is int and -ndim <= d0 < ndim and -ndim <= d1 < ndim:
            perm = list(range(ndim))
            perm[d0], perm[d1] = perm[d1], perm[d0]
            return tuple(perm)
    elif name == "permute" and len(args) > 1:
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        if len(dims) == ndim and all(type(d) is int for d in dims):
            return tuple(_norm(d, ndim) for d in dims)
    return None


def _perm(func, args, kwargs, x: torch.Tensor) -> tuple[int, ...]:
    # Every permute-family op only reorders strides: run it on a meta tensor whose strides are
    # all distinct and read back which input dim each output dim came from.
    strides = tuple(range(1, x.dim() + 1))
    probe = torch.empty_strided(tuple(x.shape), strides, device="meta")
    with torch._C.DisableTorchFunction():
        name = function_name(func)
        if name in ("T", "mT", "H", "mH"):
            res = getattr(probe, name)
        else:
            res = func(probe, *args[1:], **kwargs)
    return tuple(strides.index(s) for s in res.stride())


def _slice_meta(name, func, args, kwargs, ins, outs) -> M.SliceMeta:
    x, y = ins[0], outs[0]
    shape = tuple(x.shape)
    if name == "narrow":
        dim = _norm(_arg(args, kwargs, 1, "dim"), x.dim())
        start = int(_arg(args, kwargs, 2, "start"))
        start = _norm(start, shape[dim])
        length = int(_arg(args, kwargs, 3, "length"))
        return M.SliceMeta(shape, tuple(y.shape), tuple(range(x.dim())),
                           (M.DimSlice(dim, start, start + length, 1),))
    if name == "select":
        dim = _norm(_arg(args, kwargs, 1, "dim"), x.dim())
        idx = _norm(int(_arg(args, kwargs, 2, "index")), shape[dim])
        dim_map = tuple(None if d == dim else (d if d < dim else d - 1) for d in range(x.dim()))
        return M.SliceMeta(shape, tuple(y.shape), dim_map, (), ((dim, idx),))
    index = args[1]
    items = index if isinstance(index, tuple) else (index,)
    meta = _index_meta(shape, tuple(y.shape), items)
    return meta if meta is not None else M.OpMeta(name)


def _index_meta(shape: tuple[int, ...], out: tuple[int, ...] | None,
                items) -> M.SliceMeta | None:
    """``x[items]`` as torch lays it out: ints select (the dim goes), slices keep their dim,
    ``None`` adds one; tensor and list indices (``advanced``) broadcast together to one block
    of dims that takes the place of the first of them when they are adjacent, else goes
    first. A bool mask consumes as many dims as it has and gives one. None when the layout
    does not give the real output shape ``out`` (an indexing form this does not model); with
    ``out=None``, the layout's own shape is taken (a write ``x[items] = v`` has no result)."""
    def n_dims(it) -> int:  # input dims an item consumes
        if isinstance(it, torch.Tensor) and it.dtype == torch.bool:
            return max(it.dim(), 1)
        return 0 if it is None or it is Ellipsis else 1

    def scalar(it) -> bool:  # torch selects with a 0-d integer tensor as with an int
        return isinstance(it, (int, torch.SymInt)) or (
            isinstance(it, torch.Tensor) and it.dim() == 0 and it.dtype != torch.bool)

    def advanced(it) -> bool:
        return not scalar(it) and (isinstance(it, (torch.Tensor, list)) or (
            isinstance(it, tuple) and not isinstance(it, torch.Size)))

    n_consuming = sum(n_dims(it) for it in items)
    expanded = []
    for it in items:
        if it is Ellipsis:
            expanded += [slice(None)] * (len(shape) - n_consuming)
        else:
            expanded.append(it)
    expanded += [slice(None)] * (len(shape) - sum(n_dims(it) for it in expanded))
    try:
        shapes = [(int(it.sum()),) if isinstance(it, torch.Tensor) and it.dtype == torch.bool
                  else tuple(it.shape) if isinstance(it, torch.Tensor)
                  else tuple(torch.as_tensor(it).shape)
                  for it in expanded if advanced(it)]
        # (torch's broadcast_shapes is Python: most indexing, x[..., :d], has no such item)
        block = torch.broadcast_shapes(*shapes) if shapes else ()
    except (RuntimeError, TypeError, ValueError):
        return None
    # layout without the ints (torch selects them first): which places are advanced
    rest = [it for it in expanded if not scalar(it)]
    places = [i for i, it in enumerate(rest) if advanced(it)]
    adjacent = not places or places == list(range(places[0], places[-1] + 1))
    block_at = None if not places else (places[0] if adjacent else 0)
    dim_map: list[int | None] = []
    slices, selects, gathered = [], [], []
    sizes: dict[int, int] = {}  # output dim -> the size the layout gives it
    d_in = d_out = 0
    if block_at == 0 and not adjacent:
        d_out = len(block)
    adv_dims: tuple[int, ...] = ()
    k = 0  # position among ``rest``
    for it in expanded:
        if scalar(it):
            if isinstance(it, torch.Tensor):  # its value is data
                gathered.append(d_in)
            else:
                selects.append((d_in, _norm(int(it), shape[d_in])))
            dim_map.append(None)
            d_in += 1
            continue
        if k == block_at:
            start = d_out if adjacent else 0
            adv_dims = tuple(range(start, start + len(block)))
            sizes.update(zip(adv_dims, block, strict=True))
            if adjacent:
                d_out += len(block)
        k += 1
        if it is None:
            sizes[d_out] = 1
            d_out += 1
        elif isinstance(it, slice):
            a, b, step = it.indices(shape[d_in])
            if (a, b, step) != (0, shape[d_in], 1):
                slices.append(M.DimSlice(d_in, a, b, step))
            sizes[d_out] = len(range(a, b, step))
            dim_map.append(d_out)
            d_in += 1
            d_out += 1
        else:  # tensor / list index: data-dependent positions
            for _ in range(n_dims(it)):
                gathered.append(d_in)
                dim_map.append(None)
                d_in += 1
    if out is None:
        out = tuple(sizes.get(d, -1) for d in range(d_out))
    if d_in != len(shape) or tuple(sizes.get(d, -1) for d in range(len(out))) != out \
            or -1 in out:
        return None
    return M.SliceMeta(shape, out, tuple(dim_map), tuple(slices), tuple(selects),
                       bool(gathered), tuple(gathered), adv_dims)


def _setitem_meta(name, func, args, kwargs, ins, outs) -> M.SetItemMeta:
    if len(args) < 3 or not isinstance(args[0], torch.Tensor):
        return M.SetItemMeta(None)
    index, value = args[1], args[2]
    items = index if isinstance(index, tuple) else (index,)
    try:
        region = _index_meta(tuple(args[0].shape), None, items)
    except Exception:  # a mask on meta has no count: not modelled
        region = None
    n_index = len(tensors_in(index, []))
    value_port = len(ins) - 1 if isinstance(value, torch.Tensor) else None
    mask = items[0] if len(items) == 1 else None
    k = mask.dim() if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool \
        and tuple(mask.shape) == tuple(args[0].shape[:mask.dim()]) else 0
    return M.SetItemMeta(region, value_port, tuple(range(1, 1 + n_index)), k)


def _attention_meta(name, func, args, kwargs, ins, outs) -> M.AttentionMeta | M.MhaCallMeta:
    if name == "multi_head_attention_forward":
        return _mha_call_meta(name, func, args, kwargs)
    scale = _arg(args, kwargs, 6, "scale")
    return M.AttentionMeta(name, None if scale is None else float(scale))


@cache
def _parameter_names(func) -> tuple[str, ...]:
    return tuple(inspect.signature(func).parameters)


def _mha_call_meta(name, func, args, kwargs) -> M.MhaCallMeta:
    """Which port holds which argument: the tracer numbers a call's tensors in the order it
    meets them, positional arguments first, then keyword arguments as given."""
    names = _parameter_names(func)
    given = [(names[i], a) for i, a in enumerate(args)] + list(kwargs.items())
    ports = tuple((n, p) for p, (n, _) in
                  enumerate((n, a) for n, a in given if isinstance(a, torch.Tensor)))
    return M.MhaCallMeta(name, ports, int(_arg(args, kwargs, 4, "num_heads")),
                         bool(_arg(args, kwargs, 17, "use_separate_proj_weight", False)))


def _loss_meta(name, func, args, kwargs, ins, outs) -> M.ElementwiseMeta:
    """A loss of two tensors (:data:`POINTWISE_LOSSES`) reduces every dim unless its result
    keeps the input's shape (``reduction="none"``): read from the result, not the arguments
    (``reduction``, or the older ``size_average``/``reduce``, at several positions)."""
    if not ins or not outs or outs[0].dim() >= ins[0].dim():
        return M.ElementwiseMeta(name)
    return M.ElementwiseMeta(name, mixes=tuple(range(ins[0].dim())))


def _counts_meta(name, func, args, kwargs, ins, outs) -> M.CountsMeta | M.ElementwiseMeta:
    """Where ``histc``/``bincount``/``one_hot`` put value ``v`` (see :class:`CountsMeta`)."""
    if not ins or not outs:
        return M.ElementwiseMeta(name)
    y = outs[0]
    if name == "one_hot":
        return M.CountsMeta(name, y.dim() - 1, True)
    if name == "bincount":
        return M.CountsMeta(name, 0, int(_arg(args, kwargs, 2, "minlength", 0)) == y.shape[0])
    bins = int(_arg(args, kwargs, 1, "bins", 100))
    lo, hi = _arg(args, kwargs, 2, "min", 0), _arg(args, kwargs, 3, "max", 0)
    return M.CountsMeta(name, 0, bins > 1 and float(lo) == 0 and float(hi) == bins - 1)


#: Elementwise ops whose metadata comes from their arguments (each call), by name.
NAMED_DESCRIBERS = {
    **{loss: _loss_meta for loss in POINTWISE_LOSSES},
    "setitem": _setitem_meta,
    "as_strided": _strided_meta,
    "linalg_solve_triangular": _solve_meta,
    "linalg_solve": _solve_meta,
    **{op: _counts_meta for op in ("histc", "bincount", "one_hot")},
}


#: Op types whose metadata is read from the call's arguments and results.
DESCRIBERS = {
    OpType.CONCAT: _concat_meta,
    OpType.SPLIT: _split_meta,
    OpType.UNBIND: _unbind_meta,
    OpType.SLICE: _slice_meta,
    OpType.RESHAPE: _reshape_meta,
    OpType.PERMUTE: _permute_meta,
    OpType.EXPAND: _expand_meta,
    OpType.PIXEL_SHUFFLE: _pixel_shuffle_meta,
    OpType.UNFOLD: _unfold_meta,
    OpType.MATMUL: _matmul_meta,
    OpType.ATTENTION: _attention_meta,
    OpType.REDUCTION: _reduce_meta,
    OpType.SPATIAL: _spatial_meta,
}
