"""Trace a model into a typed :class:`~viewer.core.graph.Graph` by running it once.

How: a :class:`torch.overrides.TorchFunctionMode` sees every torch-level call with its real
arguments (also under ``torch.no_grad()`` and on the ``meta`` device), and module pre/post
hooks keep a stack of running modules. A module the type tables know (Conv2d, LSTM, MHA, a
registered custom layer, ...) becomes one atomic node and the calls inside its forward are
skipped; any other module is looked through, so its functional ops become virtual nodes that
record the module whose forward ran them. Each tensor remembers the ``(node, port)`` that made
it; tensors nobody made (parameters, buffers, ``arange``) get a source node on first use.

    >>> g = build_graph(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), torch.randn(1, 3, 8, 8))
    >>> [n.op_type.name for n in g.nodes]
    ['INPUT', 'CONV', 'ELEMENTWISE', 'OUTPUT']
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from dataclasses import fields, is_dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, _pop_mode_temporarily

from . import meta as M
from .errors import DepViewError
from .graph import Edge, Graph, Node
from .optypes import (
    IGNORED_FUNCTIONS,
    OpType,
    classify_function,
    custom_layer,
    function_name,
    match_module,
)

Path = str


def flatten(obj, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """Tensors inside nested tuples/lists/dicts/dataclasses (HF ``ModelOutput`` is a dict),
    with readable key paths: ``[("logits", t), ("hidden_states[0]", t2)]``."""
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    out: list[tuple[str, torch.Tensor]] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out += flatten(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += flatten(v, f"{path}[{i}]")
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            out += flatten(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)
    return out


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


class _Tracer(TorchFunctionMode):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        # Each tensor carries (token, node id, port) in a Python attribute: no tensor is kept
        # alive by the tracer (holding every activation would make tracing allocate afresh),
        # and the token tells this trace's tags from a stale one.
        self.token = object()
        self.untaggable: dict[int, tuple[torch.Tensor, int, int]] = {}
        self.sources: list[torch.Tensor] = []
        self.names: set[str] = set()
        self.module_names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self.param_names: dict[int, str] = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            self.param_names.setdefault(id(p), n)
        self.buffer_names: dict[int, str] = {}
        for n, b in model.named_buffers(remove_duplicate=False):
            self.buffer_names.setdefault(id(b), n)
        self.stack: list[tuple[nn.Module, bool, tuple]] = []  # (module, atomic, input shapes)
        self.atomic_depth = 0
        self.calls: dict[int, int] = {}
        self.failure: str | None = None
        self.busy = False
        self.paused: list = []

    # -- naming ---------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        if name not in self.names:
            self.names.add(name)
            return name
        i = 1
        while f"{name}_{i}" in self.names:
            i += 1
        self.names.add(f"{name}_{i}")
        return f"{name}_{i}"

    def current_module(self) -> str:
        return self.module_names.get(id(self.stack[-1][0]), "") if self.stack else ""

    # -- nodes and edges ------------------------------------------------------------------
    def add_node(self, node_kwargs: dict, inputs: list[torch.Tensor], outputs) -> Node:
        srcs = [self.source_of(t) for t in inputs]  # may add source nodes first
        node = Node(id=len(self.nodes), **node_kwargs)
        node.in_shapes = tuple(tuple(t.shape) for t in inputs)
        node.out_shapes = tuple(tuple(t.shape) for t in outputs)
        self.nodes.append(node)
        for port, (t, (src, sport)) in enumerate(zip(inputs, srcs, strict=True)):
            self.edges.append(Edge(src, sport, node.id, port, tuple(t.shape), _dtype(t)))
        for port, t in enumerate(outputs):
            try:
                t._depview_src = (self.token, node.id, port)
            except (AttributeError, RuntimeError):  # exotic tensor types without a __dict__
                self.untaggable[id(t)] = (t, node.id, port)
        return node

    def source_of(self, t: torch.Tensor) -> tuple[int, int]:
        """The (node, port) that made ``t``, adding a PARAMETER/BUFFER/CONSTANT node if new."""
        tag = getattr(t, "_depview_src", None)
        if tag is not None and tag[0] is self.token:
            return tag[1], tag[2]
        hit = self.untaggable.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1], hit[2]
        if id(t) in self.param_names:
            key = self.param_names[id(t)]
            kw = dict(name=self.unique(key), op_type=OpType.PARAMETER,
                      module=key.rpartition(".")[0], target="parameter",
                      params={"": key}, param_shapes={"": tuple(t.shape)})
        elif id(t) in self.buffer_names:
            key = self.buffer_names[id(t)]
            kw = dict(name=self.unique(key), op_type=OpType.BUFFER,
                      module=key.rpartition(".")[0], target="buffer")
        else:
            mod = self.current_module()
            kw = dict(name=self.unique(f"{mod}.constant" if mod else "constant"),
                      op_type=OpType.CONSTANT, module=mod, target="constant")
        node = self.add_node(kw, [], [t])
        self.sources.append(t)  # the user's parameters/buffers: untagged again at the end
        return node.id, 0

    # -- module hooks ---------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args, kwargs):
        if self.busy:
            return None
        self.busy = True
        try:
            atomic = self.atomic_depth == 0 and match_module(module) is not None
            shapes = tuple(tuple(t.shape) for _, t in flatten((args, kwargs)))
            self.stack.append((module, atomic, shapes))
            if atomic:
                self.atomic_depth += 1
                # nothing inside an atomic module is recorded: step out of the way of its ops
                self.paused.append(_pop_mode_temporarily())
                self.paused[-1].__enter__()
            elif self.atomic_depth:
                self.atomic_depth += 1  # inside an atomic module: keep depth balanced
        finally:
            self.busy = False
        return None

    def post_hook(self, module: nn.Module, args, kwargs, output):
        if self.busy or not self.stack or self.stack[-1][0] is not module:
            return None
        self.busy = True
        try:
            _, atomic, shapes = self.stack.pop()
            inside = self.atomic_depth > 0
            if inside:
                self.atomic_depth -= 1
            if atomic and self.paused:
                self.paused.pop().__exit__(None, None, None)
            if sys.exc_info()[1] is not None:
                if self.failure is None:
                    path = self.module_names.get(id(module), "") or "<root>"
                    self.failure = (f"in module '{path}' ({type(module).__name__}) with input "
                                    f"shapes {[list(s) for s in shapes]}")
                return None
            if atomic:
                self.record_module(module, args, kwargs, output)
        finally:
            self.busy = False
        return None

    def record_module(self, module: nn.Module, args, kwargs, output) -> None:
        path = self.module_names.get(id(module), type(module).__name__)
        call = self.calls.get(id(module), 0)
        self.calls[id(module)] = call + 1
        name = self.unique(path if call == 0 else f"{path}:{call}")
        params = {k: f"{path}.{k}" if path else k for k, _ in module.named_parameters()}
        # tied/shared parameters: use the model-wide canonical name
        for k, p in module.named_parameters():
            params[k] = self.param_names.get(id(p), params[k])
        pshapes = {k: tuple(p.shape) for k, p in module.named_parameters()}
        buffers = {k: f"{path}.{k}" if path else k for k, _ in module.named_buffers()}
        ins = [t for _, t in flatten((args, kwargs))]
        outs = [t for _, t in flatten(output)]
        cls = type(module)
        self.add_node(
            dict(name=name, op_type=match_module(module), module=path,
                 target=f"module:{cls.__module__}.{cls.__qualname__}", params=params,
                 buffers=buffers, param_shapes=pshapes, grad_fn=_grad_fn(outs), call=call,
                 attrs=module_attrs(module), custom=custom_layer(module)),
            ins, outs,
        )

    # -- functional ops -------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.busy or self.atomic_depth or func in IGNORED_FUNCTIONS:
            return out
        self.busy = True
        try:
            self.record_function(func, args, kwargs, out)
        finally:
            self.busy = False
        return out

    def record_function(self, func, args, kwargs, out) -> None:
        ins = [t for _, t in flatten((args, kwargs))]
        if not ins:
            return
        name = function_name(func)
        if name == "setitem":  # in-place write: the written tensor is the new value
            outs = [args[0]]
        else:
            outs = [t for _, t in flatten(out)]
        if not outs:
            return
        op_type = classify_function(func)
        if name in ("T", "mT", "H", "mH"):
            op_type = OpType.PERMUTE
        try:
            meta = describe(op_type, name, func, args, kwargs, ins, outs)
        except Exception:  # metadata is best effort; never break the user's forward
            meta = M.OpMeta(name)
        mod = self.current_module()
        self.add_node(
            dict(name=self.unique(f"{mod}.{name}" if mod else name), op_type=op_type,
                 module=mod, target=name, meta=meta, grad_fn=_grad_fn(outs)),
            ins, outs,
        )


def module_attrs(module: nn.Module) -> dict:
    """Public scalar attributes (``out_channels``, ``num_heads``, ...), JSON-ready."""
    out = {}
    for k, v in vars(module).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, (bool, int, float, str)) or (
                isinstance(v, tuple) and len(v) <= 8
                and all(isinstance(x, (bool, int, float, str)) for x in v)):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _grad_fn(outs) -> str | None:
    for t in outs:
        if isinstance(t, torch.Tensor) and t.grad_fn is not None:
            return type(t.grad_fn).__name__
    return None


# --------------------------------------------------------------------------------------------
# Metadata, filled completely at trace time.


def _arg(args, kwargs, pos: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else default


def _norm(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def describe(op_type: OpType, name: str, func, args, kwargs, ins, outs) -> object:
    """Metadata of one functional op, from its real arguments and results."""
    x, y = ins[0], outs[0]
    if op_type is OpType.CONCAT:
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
    if op_type is OpType.SPLIT:
        dim = _norm(_arg(args, kwargs, 2, "dim", 0), x.dim())
        how = _arg(args, kwargs, 1, "split_size_or_sections",
                   kwargs.get("chunks", kwargs.get("indices_or_sections",
                                                   kwargs.get("split_size"))))
        computed = name == "chunk" or isinstance(how, int)
        return M.SplitMeta(dim, tuple(int(t.shape[dim]) for t in outs), computed)
    if op_type is OpType.UNBIND:
        return M.UnbindMeta(_norm(_arg(args, kwargs, 1, "dim", 0), x.dim()), len(outs))
    if op_type is OpType.SLICE:
        return _slice_meta(name, args, kwargs, x, y)
    if op_type is OpType.RESHAPE:
        return M.ReshapeMeta(name, tuple(x.shape), tuple(y.shape), _inferred(name, args, y))
    if op_type is OpType.PERMUTE:
        return M.PermuteMeta(name, tuple(x.shape), tuple(y.shape), _perm(func, args, kwargs, x))
    if op_type is OpType.EXPAND:
        return M.ExpandMeta(name, tuple(x.shape), tuple(y.shape))
    if op_type is OpType.PIXEL_SHUFFLE:
        return M.PixelShuffleMeta(int(_arg(args, kwargs, 1, "upscale_factor",
                                           kwargs.get("downscale_factor", 1))),
                                  "unshuffle" in name)
    if op_type is OpType.MATMUL:
        if name in ("addmm", "baddbmm"):
            a, b = ins[1], ins[2]
        else:
            a, b = ins[0], ins[1]
        return M.MatmulMeta(name, tuple(a.shape), tuple(b.shape), tuple(y.shape))
    if op_type is OpType.REDUCTION:
        dim = _arg(args, kwargs, 1, "dim", None)
        if isinstance(dim, torch.Tensor) or (name in ("layer_norm", "rms_norm")):
            dim = None
        if name in ("layer_norm", "rms_norm"):
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
                            and y.dim() == x.dim())
    if op_type is OpType.ELEMENTWISE:
        return M.ElementwiseMeta(name)
    return M.OpMeta(name)


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


def _slice_meta(name, args, kwargs, x: torch.Tensor, y: torch.Tensor) -> M.SliceMeta:
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
    n_consuming = sum(1 for it in items if it is not None and it is not Ellipsis
                      and not (isinstance(it, torch.Tensor) and it.dtype == torch.bool))
    dim_map: list[int | None] = []
    slices, selects, advanced, gathered = [], [], False, []
    d_in = d_out = 0
    for it in items:
        if it is None:
            d_out += 1
        elif it is Ellipsis:
            skip = x.dim() - n_consuming
            for _ in range(skip):
                dim_map.append(d_out)
                d_in += 1
                d_out += 1
        elif isinstance(it, slice):
            start, stop, step = it.indices(shape[d_in])
            if (start, stop, step) != (0, shape[d_in], 1):
                slices.append(M.DimSlice(d_in, start, stop, step))
            dim_map.append(d_out)
            d_in += 1
            d_out += 1
        elif isinstance(it, int) or (isinstance(it, torch.SymInt)):
            selects.append((d_in, _norm(int(it), shape[d_in])))
            dim_map.append(None)
            d_in += 1
        else:  # tensor / list index: data-dependent gather
            advanced = True
            gathered.append(d_in)
            dim_map.append(d_out)
            d_in += 1
            d_out += 1
    while d_in < x.dim():
        dim_map.append(d_out)
        d_in += 1
        d_out += 1
    return M.SliceMeta(shape, tuple(y.shape), tuple(dim_map), tuple(slices), tuple(selects),
                       advanced, tuple(gathered))


# --------------------------------------------------------------------------------------------


def _name_inputs(model: nn.Module, args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    try:
        names = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        names = []
    named = []
    for i, a in enumerate(args):
        base = names[i] if i < len(names) and names[i] not in ("args", "kwargs") else f"input{i}"
        named += flatten(a, base)
    named += flatten(kwargs)
    return named


def build_graph(model: nn.Module, example_inputs=(), example_kwargs: dict | None = None,
                autograd: bool = False) -> Graph:
    """Run ``model`` once on the example inputs and return its typed graph.

    ``example_inputs`` is a tensor, a tuple of positional arguments (which may nest lists and
    dicts of tensors), or a dict of keyword arguments. The model is not changed (hooks are
    removed afterwards, even on error). Works on the ``meta`` device.

    The forward runs under ``torch.no_grad()`` unless ``autograd=True``, which also records
    each op's autograd node name (``CatBackward0``) at the cost of a slower trace.

    Raises :class:`DepViewError` with one line naming the failing module and its input shapes
    when the forward raises.
    """
    if isinstance(example_inputs, torch.Tensor):
        args, kwargs = (example_inputs,), dict(example_kwargs or {})
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), {**example_inputs, **(example_kwargs or {})}
    else:
        args, kwargs = tuple(example_inputs), dict(example_kwargs or {})
    if not isinstance(model, nn.Module):
        raise DepViewError(f"expected an nn.Module, got {type(model).__name__}")

    tracer = _Tracer(model)
    for name, t in _name_inputs(model, args, kwargs):
        tracer.add_node(dict(name=tracer.unique(name or "input"), op_type=OpType.INPUT,
                             module="", target="input"), [], [t])
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(tracer.pre_hook, with_kwargs=True))
        handles.append(m.register_forward_hook(tracer.post_hook, with_kwargs=True,
                                               always_call=True))
    try:
        with tracer, torch.set_grad_enabled(autograd and torch.is_grad_enabled()):
            output = model(*args, **kwargs)
    except Exception as exc:
        where = tracer.failure or f"in {type(model).__name__}.forward"
        first = (str(exc).strip().splitlines() or [""])[0]
        shapes = [list(t.shape) for _, t in _name_inputs(model, args, kwargs)]
        raise DepViewError(
            f"model forward failed {where} (model inputs {shapes}): "
            f"{type(exc).__name__}: {first}"
        ) from exc
    finally:
        for h in handles:
            h.remove()

    outs = flatten(output)
    if not outs:
        raise DepViewError(f"{type(model).__name__}.forward returned no tensors")
    for path, t in outs:
        tracer.add_node(dict(name=tracer.unique(f"output.{path}" if path else "output"),
                             op_type=OpType.OUTPUT, module="", target="output"), [t], [])
    kept = [t for _, t in outs + _name_inputs(model, args, kwargs)] + tracer.sources
    for t in kept:  # tensors the caller keeps: leave no attribute behind
        t.__dict__.pop("_depview_src", None)
    tracer.untaggable.clear()
    return Graph(
        tracer.nodes, tracer.edges,
        info={"model": type(model).__name__,
              "inputs": [list(t.shape) for _, t in _name_inputs(model, args, kwargs)],
              "outputs": {p or "output": list(t.shape) for p, t in outs},
              "device": str(next(iter(model.parameters()), torch.empty(0)).device)},
    )
