"""Trace a model into a typed :class:`~viewer.core.graph.Graph` by running it once.

How: a :class:`torch.overrides.TorchFunctionMode` sees every torch-level call with its real
arguments (also under ``torch.no_grad()`` and on the ``meta`` device), and two global module
hooks keep a stack of the model's running modules (in this thread only). A module the type
tables know (Conv2d, LSTM, MHA, a registered custom layer, ...) becomes one atomic node and the
calls inside its forward are skipped; any other module is looked through, so its functional
ops become virtual nodes that record the module whose forward ran them. Each tensor an op
makes remembers the ``(node, port)`` that made it; tensors nobody made (parameters, buffers,
``arange``) get a source node on first use, found by id afterwards. Each call is kept as it
was made and recorded after it ran: at once on a real device, in long batches on ``meta``
(where holding tensors costs nothing; in one tight loop recording cost about half as much, by
hand measurement). On ``meta`` a call identical to an earlier one (same function and
arguments, inputs of the same shapes, strides and dtypes) gets a fresh tensor like the earlier
result instead of running torch's meta kernel again, which is Python and costs 100-300 us: a 7B
decoder's 32 layers repeat the same calls (views and in-place ops always run).

    >>> g = build_graph(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), torch.randn(1, 3, 8, 8))
    >>> [n.op_type.name for n in g.nodes]
    ['INPUT', 'CONV', 'ELEMENTWISE', 'OUTPUT']
"""

from __future__ import annotations

import gc
import inspect
import sys
import threading
import types
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from threading import get_ident

import torch
from torch import nn
from torch._C import _pop_torch_function_stack, _push_on_torch_function_stack
from torch.nn import functional as F
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.nn.parameter import UninitializedTensorMixin
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_map

from . import meta as M
from .describe import DESCRIBERS, NAMED_DESCRIBERS, describe
from .errors import DepViewError
from .graph import Edge, Graph, Node
from .optypes import (
    DIM_ARGS,
    FILLS,
    IGNORED_FUNCTIONS,
    PRE_HOOKED,
    TO_NUMPY,
    OpGroup,
    OpType,
    class_decides,
    classify_function,
    custom_layer,
    function_name,
    match_module,
)
from .prunemask import masked_names
from .spectralnorm import ORIGINAL, spectral_norm_names
from .trees import LEAVES, flatten, renamed_outputs, tensors_in
from .weakcache import per_class
from .weightnorm import MAGNITUDE_NAMES, weight_norm_names

Path = str


_UNSET = object()


#: torch's table of global forward hooks given kwargs, which their handles do not clean up
_KWARGS_HOOKS: dict = getattr(torch.nn.modules.module, "_global_forward_hooks_with_kwargs", {})


#: The argument types :meth:`_Tracer.record_function` keeps as an elementwise op's numbers
_NUMBERS = (int, float)
#: ops whose other tensor argument gives only a dtype and device (``x.type_as(y)``)
_DTYPE_FROM = frozenset({"type_as", "to"})


_DTYPE_NAMES: dict[torch.dtype, str] = {}


_TO_NUMPY = frozenset({"numpy", "__array__"})


def _same_tensors(a, b) -> bool:
    x, y = tensors_in(a, []), tensors_in(b, [])
    return len(x) == len(y) and all(p is q for p, q in zip(x, y, strict=True))


def _type_name(v) -> str:
    t = type(v)
    return "None" if v is None else "a " + (t.__name__ if t.__module__ == "builtins"
                                            else f"{t.__module__.split('.')[0]}.{t.__name__}")


def _looks_like_data(v) -> bool:
    """None, an array or a list of numbers: what a user may have meant as a tensor when the
    forward then fails (ints, strings and flags are a model's ordinary options)."""
    if v is None or hasattr(v, "__array__"):
        return True
    return isinstance(v, (list, tuple)) and bool(v) and isinstance(v[0], (list, float))


def _dtype(t: torch.Tensor) -> str:
    dtype = t.dtype
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


class _MetaCalls(TorchFunctionMode):
    """The mode inside an atomic module traced on meta: it records nothing, but a call made
    before with the same arguments reuses that call's result (:meth:`_Tracer.call_on_meta`)."""

    def __init__(self, tracer: _Tracer):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        info = _FUNCTIONS.get(func, _UNSET)
        if info is _UNSET:
            info = _FUNCTIONS[func] = _function_info(func)
        if info is not None and info[4] and not (kwargs and "out" in kwargs):
            return self.tracer.call_on_meta(func, args, kwargs or {})
        return func(*args, **kwargs) if kwargs else func(*args)


class _Tracer(TorchFunctionMode):
    def __init__(self, model: nn.Module, autograd: bool = False):
        super().__init__()
        self.model = model
        self.autograd = autograd  # record each op's autograd node name
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        # Each tensor an op makes carries (token, node id, port) in a Python attribute: no
        # activation is kept alive by the tracer (holding them all would make tracing allocate
        # afresh), and the token tells this trace's tags from a stale one or another thread's.
        self.token = object()
        # node name -> copies of its outputs, for the names a caller asks for (build_graph's
        # ``keep``: the expert ids a router picks, for the ``usage`` importance)
        self.keep: dict[str, list[torch.Tensor] | None] | None = None
        # node name -> a function changing its outputs in place as the op returns, before
        # anything reads them (build_graph's ``edit``: an oracle's router scores)
        self.edit: dict[str, Callable[[list[torch.Tensor]], None]] | None = None
        # Sources (inputs, parameters, buffers, constants) are found by id instead, holding
        # the tensor so the id stays its own: another trace in another thread may share them,
        # and its tag would hide this one's. So are tensors that take no attributes.
        self.by_id: dict[int, tuple[torch.Tensor, int, int]] = {}
        # fills (optypes.FILLS) by id, not kept alive, with their module and version counter: a
        # source node is made if something reads one, named after its factory
        self.fills: dict[int, tuple[weakref.ref, str, str, int | None]] = {}
        self.fill_nodes: list[tuple[torch.Tensor, Node, int]] = []  # fills made nodes
        self.sources: list[torch.Tensor] = []
        self.names: set[str] = set()
        self.suffix: dict[str, int] = {}  # next "_i" to try per taken name
        # One walk for what named_modules/named_parameters/named_buffers
        # (remove_duplicate=False) give: a module's last path, a tensor's first name.
        self.module_names: dict[int, str] = {}
        self.param_names: dict[int, str] = {}
        self.buffer_names: dict[int, str] = {}
        self.persistent: set[int] = set()  # buffers the state_dict holds
        # the modules and tensors those ids are of, held for the trace: a buffer the forward
        # replaces (SeamlessM4T's conformer extends its position table: ``self.pe = ...``)
        # would be freed, and a tensor made later under its id taken for it (a decoder's
        # empty cache named ``speech_encoder.encoder.embed_positions.pe``, now and then)
        self.held: list[nn.Module | torch.Tensor] = []
        # id -> (tensor, name) of the modules' public plain tensor attributes (see
        # plain_tensors), as they are before the forward: one the forward sets itself
        # (self.state = torch.zeros(b, self.hidden)) is what it made, not a table
        self.plain_names: dict[int, tuple[torch.Tensor, str]] = {}
        self.classes: set[type] = set()  # (whose caches clear_method_caches empties)
        for path, m in model.named_modules(remove_duplicate=False):
            self.module_names[id(m)] = path
            self.held.append(m)  # (a module the forward swaps out, as a tensor)
            self.classes.add(type(m))
            prefix = f"{path}." if path else ""
            for k, p in m._parameters.items():
                if p is not None:
                    self.param_names.setdefault(id(p), prefix + k)
                    self.held.append(p)
            for k, b in m._buffers.items():
                if b is not None:
                    self.buffer_names.setdefault(id(b), prefix + k)
                    self.held.append(b)
                    if k not in m._non_persistent_buffers_set:
                        self.persistent.add(id(b))
            for k, v in m.__dict__.items():
                if type(v) is torch.Tensor and k[0] != "_":
                    self.plain_names.setdefault(id(v), (v, prefix + k))
        # Per-trace lookups: a module's table type is looked up once, not on every call
        # (a function's, once per process: see _FUNCTIONS).
        self.module_types: dict[int, OpType | None] = {}
        self.class_types: dict[type, OpType | None] = {}  # where the class alone decides
        self.reopen: set[type] = set()  # classes to look into (see _OPENED)
        # (module, path, atomic, args, exception being handled at the call): the
        # arguments are kept (the caller holds them anyway) so input shapes are only read when
        # a forward fails
        self.stack: list[tuple[nn.Module, str, bool, tuple, BaseException | None]] = []
        self.atomic_depth = 0
        self.calls: dict[int, int] = {}
        self.failure: str | None = None
        self.busy = False
        self.paused: list = []
        self.thread = get_ident()
        # Ops are recorded in batches: each call appends its raw arguments and results here,
        # and :meth:`flush` turns a batch into nodes in one tight loop (about half the cost of
        # recording each op in between the model's own Python). Held tensors stay alive
        # until then, so a batch is short on real devices and long on ``meta``; the module
        # the op ran in is read at the call (``mod``).
        self.pending: list[tuple] = []
        self.limit = _BATCH
        self.mod = ""  # the module of the op being recorded (for constants it finds)
        # On meta, results of calls already made with the same arguments (see _meta_key):
        # None when not tracing on meta
        self.results: dict | None = None
        self.no_results: set = set()  # functions that returned something other than tensors
        self.meta_calls = _MetaCalls(self)  # the mode inside atomic modules, on meta
        self.reused = 0  # calls answered from ``results``
        # in-place writes through a slice of a traced tensor (``y.narrow(1, 0, 2).zero_()``),
        # by the (node, port) that made the tensor: a WRITE node goes in before its next read
        self.view_writes: dict[tuple[int, int], list[tuple]] = {}

    # -- naming ---------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        if name not in self.names:
            self.names.add(name)
            return name
        # names are never released, so every suffix below the last one handed out is taken
        i = self.suffix.get(name, 1)
        while f"{name}_{i}" in self.names:
            i += 1
        self.suffix[name] = i + 1
        self.names.add(f"{name}_{i}")
        return f"{name}_{i}"

    def seal_fills(self) -> None:
        """A fill written to after it was first read (``m.narrow(0, 0, 4).mul_(3)`` once a view
        of ``m`` was taken) no longer holds one value everywhere: its node becomes a plain
        constant, which blocks the groups that reach it."""
        changed = [node for t, node, version in self.fill_nodes if _version(t) != version]
        self.fill_nodes.clear()
        if not changed:  # (most traces: no pass over the edges)
            return
        readers: dict[int, list[int]] = defaultdict(list)
        written_by: set[int] = set()  # nodes whose result a WRITE node put into a region
        for e in self.edges:
            readers[e.source].append(e.target)
            if e.target_port == 1 and self.nodes[e.target].target == M.WRITE:
                written_by.add(e.source)

        def copied_into(r: int) -> bool:
            # a slice of the fill that only copies wrote to (``out[..., :n].copy_(a)``, as
            # DeepSeek's ``new_empty`` key is filled), or that nothing reads (``out=`` wrote
            # it without reading it): each write has its WRITE node
            view = self.nodes[r]
            return view.op_type in (OpType.SLICE, OpType.SPLIT, OpType.UNBIND) and \
                all(self.nodes[w].target in _COPY_WRITES and w in written_by
                    for w in readers[r])

        def copied_over(r: int) -> bool:
            # ``buf.copy_(a)`` (or ``fill_``, ``zero_``) on the whole fill: its values are
            # the argument's, and every later read goes through that node
            return self.nodes[r].target in _COPY_WRITES and \
                self.nodes[r].attrs.get("inplace") is True

        for node in changed:
            # read only by ``fill[index] = value``, through slices copied into or by a copy
            # over it: every later read went through those writes' nodes, which know what
            # they wrote where (an in-place op such as ``normal_`` would not: its values are
            # no fill's)
            if not all(self.nodes[r].target in ("setitem", M.WRITE) or copied_into(r) or
                       copied_over(r) for r in readers[node.id]):
                node.target = "constant"

    def _unread_fill(self, t) -> bool:
        """``t`` is a fill (:data:`optypes.FILLS`) as it was made, which no node reads yet."""
        fill = self.fills.get(id(t)) if isinstance(t, torch.Tensor) else None
        return fill is not None and fill[0]() is t and fill[3] is not None \
            and _version(t) == fill[3] and getattr(t, "_depview_src", None) is None \
            and id(t) not in self.by_id

    def current_module(self) -> str:
        return self.stack[-1][1] if self.stack else ""

    def flush(self) -> None:
        """Record the pending calls, in call order."""
        pending, self.pending = self.pending, []
        record_function, record_module = self.record_function, self.record_module
        for entry in pending:
            self.mod = entry[-1]
            if entry[0] is None:
                record_module(*entry[1:-1])
            else:
                record_function(*entry[:-1])

    # -- nodes and edges ------------------------------------------------------------------
    def add_node(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor], name: str,
                 op_type: OpType, module: str, target: str, meta: object | None = None,
                 **fields) -> Node:
        # the tracer's hot path (once per op): one pass over the inputs
        token = self.token
        srcs, in_shapes, dtypes = [], [], []
        view_writes = self.view_writes
        for t in inputs:
            tag = getattr(t, "_depview_src", None)
            if tag is None or tag[0] is not token:
                tag = self.source_of(t)  # (a source too may have been written through a view)
            if view_writes and (tag[1], tag[2]) in view_writes:
                tag = self.written(t, tag)
            srcs.append(tag)
            in_shapes.append(tuple(t.shape))
            dtypes.append(_dtype(t))
        nid = len(self.nodes)  # after source_of, which may add source nodes first
        in_shapes = tuple(in_shapes)
        node = Node(nid, name, op_type, module, target, meta, in_shapes,
                    tuple([tuple(t.shape) for t in outputs]), **fields)
        self.nodes.append(node)
        append = self.edges.append
        for port, src in enumerate(srcs):
            append(Edge(src[1], src[2], nid, port, in_shapes[port], dtypes[port]))
        for port, t in enumerate(outputs):
            if not srcs:  # a source node
                self.by_id[id(t)] = (t, nid, port)
                continue
            try:
                t._depview_src = (token, nid, port)
            except (AttributeError, RuntimeError):  # exotic tensor types without a __dict__
                self.by_id[id(t)] = (t, nid, port)
        if self.keep is not None and name in self.keep:
            self.keep[name] = [t.detach().clone() for t in outputs]
        if self.edit is not None and name in self.edit:
            self.edit[name](outputs)
        return node

    def view_written(self, w: torch.Tensor, tag: tuple, node: Node) -> None:
        """``node`` wrote ``w`` (a view, made by the node ``tag`` names) in place: remember
        the write for the next read of the tensor ``w`` views. When ``w`` is a slice, split
        part or unbound part of it, the write knows its region; through any other view (a
        reshape, a slice of a slice) it does not, and blocks every group through it."""
        base = getattr(w._base, "_depview_src", None)  # the tensor that owns the memory
        if base is not None and base[0] is not self.token:
            base = None
        entry = (tuple(w.shape), _dtype(w))
        maker = self.nodes[tag[1]]
        meta, port = maker.meta, tag[2]
        if isinstance(meta, M.SliceMeta) and not meta.advanced:
            region = meta
        elif isinstance(meta, M.SplitMeta):
            ndim = len(maker.in_shapes[0])
            off = meta.offsets[port]
            region = M.SliceMeta(maker.in_shapes[0], maker.out_shapes[port], tuple(range(ndim)),
                                 (M.DimSlice(meta.dim, off, off + meta.sizes[port], 1),))
        elif isinstance(meta, M.UnbindMeta):
            region = M.SliceMeta(maker.in_shapes[0], maker.out_shapes[port], tuple(
                None if d == meta.dim else d - (d > meta.dim)
                for d in range(len(maker.in_shapes[0]))), (), ((meta.dim, port),))
        else:
            region = None
        sliced = None
        if region is not None:
            for e in reversed(self.edges):  # the sliced tensor: the maker's input 0
                if e.target == maker.id and e.target_port == 0:
                    sliced = (e.source, e.source_port)
                    self.view_writes.setdefault(sliced, []).append(
                        (region, node.id, *entry, None))
                    break
        if base is not None and (base[1], base[2]) != sliced:
            self.view_writes.setdefault((base[1], base[2]), []).append(
                (None, node.id, *entry, None))
        written = [k for k in (sliced, base and (base[1], base[2])) if k is not None]
        self.earlier_views(written, node.id, entry, _version(w))

    def earlier_views(self, keys: list[tuple[int, int]], wid: int, entry: tuple,
                      version: int | None) -> None:
        """Views of the written tensors made before the write (``v = y.view(b, -1)``, then
        ``y[:, :2].zero_()``) read the new values: a write with no region for each, taken
        only if the tensor read later does share the memory (its version counter is past the
        write's; a reshape that copied has its own)."""
        if version is None:
            return
        seen = set(keys)
        while keys:
            key = keys.pop()
            for e in self.edges:
                if (e.source, e.source_port) != key or e.target >= wid:
                    continue
                view = self.nodes[e.target]
                if view.op_type in OpGroup.WHOLE_VIEWS and (view.id, 0) not in seen:
                    seen.add((view.id, 0))
                    keys.append((view.id, 0))
                    self.view_writes.setdefault((view.id, 0), []).append(
                        (None, wid, *entry, version))

    def written(self, t: torch.Tensor, tag: tuple) -> tuple:
        """A WRITE node (``x[region] = value``, see :class:`SetItemMeta`) for each write
        through a view of ``t`` since it was made; returns ``t``'s new tag."""
        src, shape, dtype = tag, tuple(t.shape), _dtype(t)
        for region, wid, w_shape, w_dtype, need in self.view_writes.pop((tag[1], tag[2])):
            if need is not None and (_version(t) or 0) < need:
                continue  # a copy made before the write, not a view: the write is not in it
            mod = self.nodes[wid].module
            nid = len(self.nodes)
            self.nodes.append(Node(nid, self.unique(f"{mod}.{M.WRITE}" if mod else M.WRITE),
                                   OpType.ELEMENTWISE, mod, M.WRITE,
                                   M.SetItemMeta(region, 1), (shape, w_shape), (shape,)))
            self.edges.append(Edge(src[1], src[2], nid, 0, shape, dtype))
            self.edges.append(Edge(wid, 0, nid, 1, w_shape, w_dtype))
            src = (self.token, nid, 0)
        try:
            t._depview_src = src
        except (AttributeError, RuntimeError):
            self.by_id[id(t)] = (t, src[1], src[2])
        return src

    def source_of(self, t: torch.Tensor) -> tuple[object, int, int]:
        """``(token, node, port)``: what made ``t``, adding a PARAMETER/BUFFER/CONSTANT node
        if new."""
        tag = getattr(t, "_depview_src", None)
        if tag is not None and tag[0] is self.token:
            return tag
        hit = self.by_id.get(id(t))
        if hit is not None and hit[0] is t:
            return self.token, hit[1], hit[2]
        if id(t) in self.param_names:
            key = self.param_names[id(t)]
            node = self.add_node([], [t], self.unique(key), OpType.PARAMETER,
                                 key.rpartition(".")[0], "parameter", params={"": key},
                                 param_shapes={"": tuple(t.shape)})
        elif id(t) in self.buffer_names:
            key = self.buffer_names[id(t)]
            # a persistent buffer is state saved with the weights (a frozen BatchNorm's
            # scale and statistics), cut as a bare parameter is: params; a non-persistent one
            # is a table the module recomputes at init (rotary inv_freq, a sinusoidal position
            # table), named in buffers: cut only where nothing else reads it (see
            # Graph.read_once)
            state = {"params": {"": key}, "param_shapes": {"": tuple(t.shape)}} \
                if id(t) in self.persistent else {"buffers": {"": key}}
            node = self.add_node([], [t], self.unique(key), OpType.BUFFER,
                                 key.rpartition(".")[0], "buffer", **state)
        elif (plain := self.plain_attribute(t)) is not None:
            # a table a module keeps as a plain attribute (VideoMAE's sinusoid positions):
            # made at init as a non-persistent buffer is, and cut as one (no state_dict
            # holds either)
            node = self.add_node([], [t], self.unique(plain), OpType.BUFFER,
                                 plain.rpartition(".")[0], "buffer", buffers={"": plain})
        else:
            mod, what = self.mod, "constant"
            fill = self.fills.get(id(t))
            # named after its factory, in the module it ran in; a fill written to since (an
            # index set, a fill_ through a view) holds other values somewhere: a constant
            if fill is not None and fill[0]() is t and fill[3] is not None \
                    and _version(t) == fill[3]:
                what, mod = fill[1], fill[2]
            node = self.add_node([], [t], self.unique(f"{mod}.{what}" if mod else what),
                                 OpType.CONSTANT, mod, what)
            if what != "constant":  # checked again once the forward is done (see seal_fills)
                self.fill_nodes.append((t, node, fill[3]))
        self.sources.append(t)  # an in-place op may tag it: untagged again at the end
        return self.token, node.id, 0

    def plain_attribute(self, t: torch.Tensor) -> str | None:
        """The name (``path.attr``, its first) of the module attribute that held ``t``
        itself as a plain tensor before the forward, else None."""
        hit = self.plain_names.get(id(t))
        return hit[1] if hit is not None and hit[0] is t else None

    # -- module hooks ---------------------------------------------------------------------
    def module_type(self, module: nn.Module) -> OpType | None:
        found = self.module_types.get(id(module), _UNSET)
        if found is _UNSET:
            cls = type(module)
            found = self.class_types.get(cls, _UNSET)
            if found is _UNSET:
                found = None if cls in _OPENED else match_module(module)
                if class_decides(module):
                    self.class_types[cls] = found
            self.module_types[id(module)] = found
        return found

    def pre_hook(self, module: nn.Module, args):
        # A global hook: it sees every module any code calls while the trace runs. Only this
        # thread's calls of the model's own modules count. Reads no tensor, so it cannot come
        # back through __torch_function__.
        if self.busy or get_ident() != self.thread:
            return None
        path = self.module_names.get(id(module))
        if path is None:  # not a submodule of the model: its ops count as the caller's
            return None
        if self.atomic_depth:
            self.atomic_depth += 1  # inside an atomic module: keep depth balanced
            self.stack.append((module, "", False, args, sys.exc_info()[1]))
            return None
        atomic = self.module_type(module) is not None
        self.stack.append((module, path, atomic, args, sys.exc_info()[1]))
        if atomic:
            self.atomic_depth += 1
            # nothing inside an atomic module is recorded: step out of the way of its ops
            # (what torch.overrides._pop_mode_temporarily does, without a generator per call)
            self.paused.append(_pop_torch_function_stack())
            if self.pending and self.module_type(module) is OpType.CUSTOMIZED:
                # a user's layer may reshape its input in place, unseen: record what came
                # before it (torch's own layers do not)
                self.flush()
            if self.results is not None:
                # on meta its ops still reuse results (a LayerNorm's meta kernel is Python:
                # 1.6 ms a call, a CPU one takes 13 us)
                _push_on_torch_function_stack(self.meta_calls)
        return None

    def post_hook(self, module: nn.Module, args, *rest):
        # global, with kwargs: ``(module, args, kwargs, output)`` after a forward returns,
        # ``(module, args, output)`` when it raised (torch's always-call path)
        if self.busy or not self.stack or self.stack[-1][0] is not module \
                or get_ident() != self.thread:
            return None
        kwargs, output = rest if len(rest) == 2 else ({}, rest[0])
        self.busy = True
        try:
            _, path, atomic, in_args, handled = self.stack.pop()
            if self.atomic_depth > 0:
                self.atomic_depth -= 1
            if atomic and self.results is not None and self.paused:
                _pop_torch_function_stack()  # pre_hook's meta_calls
            try:
                # the forward raised: an exception other than the one being handled (if any)
                # when the module was called (a trace may run inside an ``except`` block)
                if sys.exc_info()[1] not in (None, handled):
                    if self.failure is None:
                        # (a global pre-hook sees positional arguments only)
                        shapes = [list(t.shape) for t in tensors_in(in_args, [])]
                        path = self.module_names.get(id(module), "")
                        given = (f"with input shapes {shapes}" if shapes
                                 else "with its inputs given by keyword" if not in_args
                                 else "with no tensor input")
                        self.failure = (f"in module '{path or '<root>'}' "
                                        f"({type(module).__name__}) {given}")
                elif atomic:
                    if not isinstance(output, torch.Tensor) and \
                            self.module_type(module) in OpGroup.ONE_TENSOR and \
                            _own_forward(type(module)):
                        # a layer that returns more than the torch layer it extends does
                        # (PhiMoE's router, an nn.Linear, also picks experts): build_graph
                        # traces again, looking into it
                        self.reopen.add(type(module))
                    hooked = False
                    if module._forward_pre_hooks and not _same_tensors(args, in_args):
                        # its own pre-hook (run after DepView's, while DepView steps aside)
                        # changed its inputs unseen: the layer reads what it was given
                        args, hooked = in_args, True
                    # flushed while the mode is still paused: reading shapes and grad_fn
                    # does not come back through __torch_function__
                    shape_only = _shape_only_inputs(module, args, kwargs) if \
                        self.module_type(module) is OpType.EMBED and \
                        _own_forward(type(module)) else ()
                    self.pending.append((None, module, args, kwargs, output, hooked,
                                         shape_only, self.current_module()))
                    if len(self.pending) >= self.limit:
                        self.flush()
            finally:
                if atomic and self.paused:
                    _push_on_torch_function_stack(self.paused.pop())
        finally:
            self.busy = False
        return None

    def record_module(self, module: nn.Module, args, kwargs, output,
                      hooked: bool = False, shape_only: tuple[int, ...] = ()) -> None:
        path = self.module_names.get(id(module), type(module).__name__)
        call = self.calls.get(id(module), 0)
        self.calls[id(module)] = call + 1
        name = self.unique(path if call == 0 else f"{path}:{call}")
        params, pshapes = {}, {}
        for k, p in _named(module, "_parameters"):
            # tied/shared parameters: use the model-wide canonical name
            params[k] = self.param_names.get(id(p), f"{path}.{k}" if path else k)
            pshapes[k] = tuple(p.shape)
        buffers = {k: f"{path}.{k}" if path else k for k, _ in _named(module, "_buffers")}
        ins = tensors_in(args, [])
        if kwargs:
            tensors_in(kwargs, ins)
        outs = [output] if isinstance(output, torch.Tensor) else tensors_in(output, [])
        cls = type(module)
        op_type = self.module_type(module)
        custom = custom_layer(module) if op_type is OpType.CUSTOMIZED else None
        if hooked:  # one opaque node: what its pre-hook did to the inputs is unknown
            op_type, custom = OpType.CUSTOMIZED, PRE_HOOKED
        # an in-place layer (ReLU(inplace=True)) returns the tensor it wrote; Identity, and
        # Dropout in eval mode, return it unwritten
        written = outs[0] if len(outs) == 1 and ins and outs[0] is ins[0] \
            and getattr(module, "inplace", False) is True else None
        tag = getattr(written, "_depview_src", None) if written is not None else None
        node = self.add_node(
            ins, outs, name, op_type, path, f"module:{cls.__module__}.{cls.__qualname__}",
            params=params, buffers=buffers, param_shapes=pshapes,
            grad_fn=_grad_fn(outs) if self.autograd else None,
            call=call, attrs=module_attrs(module),
            custom=custom,
            own_forward=_own_forward(cls) if op_type is not OpType.CUSTOMIZED else None,
            weight_norm=weight_norm_names(module) if MAGNITUDE_NAMES & params.keys() else None,
            spectral_norm=spectral_norm_names(module) if ORIGINAL in params or
            "weight_orig" in params else None,
            prune_masked=masked_names(module) if any(k.endswith("_orig") for k in params)
            else (),
            shape_only=shape_only,
        )
        if written is not None:
            node.attrs = {"inplace": True}  # its result is its input, read through that
        if tag is not None and tag[0] is self.token and written._base is not None:
            self.view_written(written, tag, node)

    # -- functional ops -------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        # No busy flag here: torch takes this mode off its stack while this method runs, so the
        # tracer's own tensor calls below do not come back in.
        info = _FUNCTIONS.get(func, _UNSET)
        if info is _UNSET:
            info = _FUNCTIONS[func] = _function_info(func)
        if info is None:  # size(), dim(), ... make no graph value
            return func(*args, **kwargs) if kwargs else func(*args)
        writes_out = kwargs is not None and "out" in kwargs
        if self.pending and (info[3] or writes_out):
            self.flush()  # it changes a tensor's shape in place: record what came before
        if (info[0] == "setitem" or info[5] and info[0] in _COPY_WRITES) \
                and not (self.busy or self.atomic_depth) and args \
                and self._unread_fill(args[0]):
            # the first write into a fill (an FNO's ``out = torch.zeros(...)`` then
            # ``out[:, :, :m, :m] = ...``, or ``buf.copy_(a)``): the write reads the fill as
            # it was made, so its node is made now, before the write changes it (see
            # seal_fills)
            self.flush()
            self.source_of(args[0])
        if self.results is not None and info[4] and not writes_out:
            out = self.call_on_meta(func, args, kwargs)
        else:
            out = func(*args, **kwargs) if kwargs else func(*args)
        if self.busy or self.atomic_depth:
            return out
        if info[0] in FILLS:  # a source: a CONSTANT node made when something reads it
            if isinstance(out, torch.Tensor):
                self.fills[id(out)] = (weakref.ref(out), info[0], self.current_module(),
                                       _version(out))
            return out
        if type(out) in LEAVES and info[0] != "setitem":  # x.shape, x.device, ...
            return out
        recorded = out  # the caller gets ``out`` itself
        if self.limit > 1:
            # recorded later: copy the call's own lists (``torch.cat(features)``), the model
            # may append to them before then
            for a in args:
                if type(a) is list:
                    args = tuple(list(a) if type(a) is list else a for a in args)
                    break
            if kwargs:
                kwargs = {k: list(v) if type(v) is list else v for k, v in kwargs.items()}
            if type(out) is list:
                recorded = list(out)
        self.pending.append((func, info, args, kwargs or {}, recorded,
                             self.current_module()))
        if len(self.pending) >= self.limit:
            self.flush()
        return out

    def call_on_meta(self, func, args, kwargs):
        """``func(*args, **kwargs)`` on meta tensors, or a fresh result like the one an
        identical earlier call gave (same function, input shapes, strides and dtypes, same other
        arguments): torch's meta kernels are Python, and the 32 layers of a decoder repeat the
        same calls."""
        func = _META_STANDINS.get(func, func)
        tensors: list[torch.Tensor] = []
        key = None if func in self.no_results else _meta_key(func, args, kwargs, tensors)
        if key is None:
            return func(*args, **kwargs) if kwargs else func(*args)
        made = self.results.get(key)
        if made is None:
            out = func(*args, **kwargs) if kwargs else func(*args)
            made = _result_template(out, tensors)
            if made is None:  # x.shape, x.device, ...: not worth a key next time
                self.no_results.add(func)
            else:
                self.results[key] = made
            return out
        if made is _UNCACHEABLE:
            return func(*args, **kwargs) if kwargs else func(*args)
        self.reused += 1
        kind, parts = made
        outs = [tensors[p] if type(p) is int else
                torch.empty_strided(p[0], p[1], dtype=p[2], device="meta") for p in parts]
        return outs[0] if kind is None else kind(outs)

    def record_function(self, func, info, args, kwargs, out) -> None:
        name, op_type, meta, _, _, in_place = info
        # outputs first: most calls that return no tensor (x.shape, x.device) stop here
        if name == "setitem":  # in-place write: the written tensor is the new value
            outs = [args[0]] if args else []
        elif isinstance(out, torch.Tensor):
            outs = [out]
        elif type(out) in LEAVES:
            return
        else:
            outs = tensors_in(out, [])
        if not outs and name in _TO_NUMPY and args:
            # the values leave for numpy, out of sight (and may come back as a new tensor):
            # one opaque node that reads them, so the groups that reach it say so
            self.add_node(tensors_in(args[:1], []), [], self.unique(
                f"{self.mod}.{name}" if self.mod else name), OpType.CUSTOMIZED, self.mod,
                name, custom=TO_NUMPY)
            return
        if not outs:
            return
        ins = tensors_in(args, [])
        if kwargs:  # (``out=`` is written, not read)
            tensors_in({k: v for k, v in kwargs.items() if k != "out"} if "out" in kwargs
                     else kwargs, ins)
        if not ins:
            return
        if name in _DTYPE_FROM:  # x.type_as(y), x.to(y): y gives a dtype, not values
            del ins[1:]
        if meta is None:
            try:
                meta = describe(op_type, name, func, args, kwargs, ins, outs)
            except Exception:  # metadata is best effort; never break the user's forward
                meta = M.OpMeta(name)
        mod = self.mod
        # (a write's tag names the view's maker until add_node tags the written tensor anew)
        written = outs[0] if (in_place or kwargs.get("inplace") is True) and args \
            and outs[0] is args[0] else None
        # ``out=`` a slice: the call writes that region of the sliced tensor, as a write does
        into = outs[0] if written is None and kwargs and kwargs.get("out") is outs[0] \
            and outs[0]._base is not None else None
        view = written if written is not None else into
        tag = getattr(view, "_depview_src", None) if view is not None else None
        node = self.add_node(ins, outs, self.unique(f"{mod}.{name}" if mod else name), op_type,
                             mod, name, meta)
        if op_type is OpType.ELEMENTWISE:
            # the plain numbers it computes with (``scores / 2.83``): validation compares them
            # with the pruned model's, where one read from a width (``q.size(-1) ** 0.5``) moves
            nums = [a for a in args if type(a) in _NUMBERS]
            if kwargs:
                nums += [v for v in kwargs.values() if type(v) in _NUMBERS]
            if nums:
                node.attrs = {"scalars": tuple(nums)}
                if args and type(args[0]) in _NUMBERS or \
                        getattr(func, "__name__", "").startswith("__r"):
                    # ``2 ** x``, ``1 / x`` (``__rpow__``, named ``pow`` as ``x ** 2`` is): a
                    # zero input gives 1 or inf there (see rules.nonzero_by)
                    node.attrs["number_first"] = True
        if name == "topk" and (args[3] if len(args) > 3 else kwargs.get("largest")) is False:
            # ``topk(k, largest=False)`` picks the smallest (a bool: not among the scalars)
            node.attrs = {**node.attrs, "smallest": True}
        if written is not None:
            # its result is its input, read through that
            node.attrs = {**node.attrs, "inplace": True}
        if tag is not None and tag[0] is self.token and view._base is not None:
            self.view_written(view, tag, node)
        if self.autograd:
            node.grad_fn = _grad_fn(outs)


#: tensor queries that read no values
_METADATA = frozenset({
    "shape", "size", "dim", "ndim", "ndimension", "numel", "nelement", "dtype", "device",
    "layout", "is_floating_point", "is_complex", "is_contiguous", "stride", "storage_offset",
    "element_size", "requires_grad", "is_cuda", "is_meta", "get_device", "__len__"})


class _ValueReads(TorchFunctionMode):
    """Notes which of the watched tensors (by id -> input position) a call reads beyond
    their shape, dtype and device."""

    def __init__(self, watch: dict[int, int]):
        super().__init__()
        self.watch, self.read = watch, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if function_name(func) not in _METADATA:
            for t in tensors_in((args, kwargs), []):
                if id(t) in self.watch:
                    self.read.add(self.watch[id(t)])
        return func(*args, **kwargs)


def _shape_only_inputs(module: nn.Module, args, kwargs) -> tuple[int, ...]:
    """The floating inputs of an ``nn.Embedding`` subclass that its own forward reads for
    their shape only. An embedding reads integer indices: given floats, its own forward
    does something else with them (BART's position embedding, given
    ``inputs_embeds[:, :, -1]``, takes their length). Found by running that forward again,
    on copies, under a mode that notes which of them its calls read; () if it fails."""
    ins = tensors_in(args, []) + (tensors_in(kwargs, []) if kwargs else [])
    if not any(t.is_floating_point() for t in ins):
        return ()
    args, kwargs = tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t,
                            (args, dict(kwargs or {})))
    copies = tensors_in(args, []) + (tensors_in(kwargs, []) if kwargs else [])
    spy = _ValueReads({id(t): i for i, t in enumerate(copies)})
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), spy:
            module(*args, **kwargs)
    except Exception:
        return ()
    return tuple(i for i, t in enumerate(copies)
                 if t.is_floating_point() and i not in spy.read)


def _own_forward(cls: type) -> str | None:
    """The class name when ``cls`` subclasses a torch layer and replaces its forward (BiT's
    ``StdConv2d`` standardises its weight first), else None."""
    if cls.__module__.startswith("torch."):
        return None
    for base in cls.__mro__[1:]:
        if base.__module__.startswith("torch.nn.") and base is not nn.Module:
            return cls.__name__ if cls.forward is not base.forward else None
    return None


#: Subclasses of torch layers (:func:`_own_forward`) whose own forward returned more than
#: the one tensor their layer returns, in this process: a rule for the layer cannot say
#: where its other outputs' channels go, so the tracer records the ops inside them instead.
#: Found by a trace, which :func:`build_graph` then runs again.
_OPENED: weakref.WeakSet[type] = weakref.WeakSet()


def _grouped_mm_standin(func):
    def run(*args, **kwargs):
        """``grouped_mm`` on meta tensors. Torch's meta kernel takes bf16 only (the CUDA
        kernel's rule) where the CPU kernel takes float32 too: when it refuses, a tensor of
        the result's shape is all a trace needs."""
        try:
            return func(*args, **kwargs)
        except RuntimeError:
            names = ("mat_a", "mat_b", "offs")
            a, b, offs = (args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names))
            grouped = b if b.dim() == 3 else a if a.dim() == 3 else None
            if offs is not None and grouped is not None and offs.shape[0] != grouped.shape[0]:
                # as the real kernel: an expert count that did not follow the experts
                raise RuntimeError("matrix batch sizes have to match") from None
            if a.dim() == 2 and b.dim() == 3:
                shape = (a.shape[0], b.shape[2])
            elif a.dim() == 3 and b.dim() == 3:
                shape = (b.shape[0], a.shape[1], b.shape[2])
            elif a.dim() == 2 and b.dim() == 2 and offs is not None:
                shape = (offs.shape[0], a.shape[0], b.shape[1])
            elif a.dim() == 3 and b.dim() == 2:
                shape = (a.shape[1], b.shape[1])
            else:
                raise
            dtype = kwargs.get("out_dtype") or a.dtype
            return torch.empty(shape, dtype=dtype, device="meta")
    return run


#: Functions traced on the meta device through a stand-in (same name, same graph node).
_META_STANDINS = {f: _grouped_mm_standin(f) for f in
                  (getattr(F, "grouped_mm", None), getattr(torch, "_grouped_mm", None)) if f}


#: :func:`_function_info` of every function traced so far in this process: it depends on the
#: function alone, and looking it up anew made a tenth of a tiny model's trace
_FUNCTIONS: dict = {}


def _function_info(func) -> tuple[str, OpType, object | None, bool, bool, bool] | None:
    """``(name, op type, metadata, reshapes in place, results reusable on meta, writes its
    first argument in place)`` of a
    torch-level function, or None for functions that make no graph value (``size``, ``dim``).
    The metadata is given only when it depends on the name alone (it is frozen, so nodes may
    share it); otherwise :func:`describe` makes it."""
    if func in IGNORED_FUNCTIONS:
        return None
    name = function_name(func)
    op_type = OpType.PERMUTE if name in ("T", "mT", "H", "mH") else classify_function(func)
    per_call = op_type in DESCRIBERS or name in DIM_ARGS or name in NAMED_DESCRIBERS
    meta = None if per_call else describe(op_type, name, func, (), {}, [], [])
    raw = getattr(func, "__name__", "")
    in_place = name.endswith("_") or (raw.endswith("_") and not raw.endswith("__")) \
        or name == "setitem"
    reuse = not in_place and op_type not in OpGroup.VIEWS
    return name, op_type, meta, raw in _RESHAPES_IN_PLACE, reuse, in_place


#: A result not reused (views are not: cheap on meta already, and not fresh tensors)
_UNCACHEABLE = object()


#: Plain argument types a result may depend on by value (their type is part of the key too:
#: ``x * 1`` and ``x * 1.0`` differ for an integer ``x``).
_KEY_LEAVES = frozenset({int, float, bool, complex, str, type(None), type(Ellipsis),
                         torch.dtype, torch.device, torch.layout, torch.memory_format})


def _meta_key(func, args, kwargs, tensors: list) -> tuple | None:
    """What the result of ``func(*args, **kwargs)`` on meta tensors can depend on: the
    function, grad mode, each tensor's shape, strides, storage offset, dtype and whether it
    requires grad, and every other argument by type and value. None when an argument is
    anything else (a tensor not on meta, an object) or no tensor is given; ``tensors``
    receives the tensors, in order."""
    parts: list = [func, torch.is_grad_enabled()]
    if not _key_parts(args, parts, tensors):
        return None
    if kwargs:
        for k, v in kwargs.items():
            parts.append(k)
            if not _key_parts((v,), parts, tensors):
                return None
    return tuple(parts) if tensors else None


def _key_parts(items, parts: list, tensors: list) -> bool:
    for a in items:
        ta = type(a)
        if ta is torch.Tensor or ta is nn.Parameter:
            if not a.is_meta or a.layout is not torch.strided:
                return False
            tensors.append(a)
            parts.append((a.shape, a.stride(), a.storage_offset(), a.dtype, a.requires_grad))
        elif ta in _KEY_LEAVES:
            parts.append(ta)
            parts.append(a)
        elif ta is tuple or ta is list or ta is torch.Size:
            parts.append(ta)
            parts.append(len(a))
            if not _key_parts(a, parts, tensors):
                return False
        elif ta is slice:
            parts.append(ta)
            if not _key_parts((a.start, a.stop, a.step), parts, tensors):
                return False
        else:
            return False
    return True


def _result_template(out, tensors: list):
    """How to make a result like ``out`` again: ``(container type or None, parts)``, a part
    being the index of an input returned as it is or ``(shape, strides, dtype)`` of a fresh
    tensor. None when ``out`` holds no tensor, ``_UNCACHEABLE`` for other results (a view, a
    tensor needing grad, a named tuple)."""
    if type(out) is torch.Tensor:
        kind, outs = None, (out,)
    elif (type(out) is tuple or type(out) is list) and out \
            and all(type(o) is torch.Tensor for o in out):
        if len({id(o) for o in out}) < len(out):  # one tensor twice: keep it that way
            return _UNCACHEABLE
        kind, outs = type(out), out
    else:
        return None if type(out) in LEAVES else _UNCACHEABLE
    parts: list = []
    for o in outs:
        for i, t in enumerate(tensors):
            if o is t:
                parts.append(i)
                break
        else:
            if not o.is_meta or o.requires_grad or o.storage_offset() \
                    or o.layout is not torch.strided or (o._is_view() and _aliases(o, tensors)):
                return _UNCACHEABLE
            parts.append((o.shape, o.stride(), o.dtype))
    return kind, parts


def _aliases(view: torch.Tensor, tensors: list) -> bool:
    """Is ``view`` a view of one of ``tensors`` (or of what they view)? A view of a tensor
    the call made itself (meta's ``linear`` on 3-d input returns its ``addmm`` result
    viewed) shares memory with nothing the caller holds: a fresh tensor stands in for it."""
    base = view._base
    return any(t is base or t._base is base for t in tensors)


#: In-place ops that change a tensor's shape (or swap its data): pending records read shapes
#: when flushed, so they are flushed before one of these runs.
_RESHAPES_IN_PLACE = frozenset({
    "resize_", "resize_as_", "set_", "__set__", "t_", "transpose_", "swapdims_", "swapaxes_",
    "squeeze_", "unsqueeze_", "as_strided_", "__setstate__"})


#: Pending records per flush. Held tensors stay alive until their flush: on a real device that
#: keeps the allocator from reusing their memory (a ResNet-50 trace got slower even at 4), on
#: ``meta`` they have no memory at all.
_BATCH, _BATCH_META = 1, 4096


#: In-place ops whose written values come from their arguments alone (not from the tensor
#: they write): a region of a fill written by them holds what they were given.
_COPY_WRITES = frozenset({"copy", "fill", "zero", "setitem"})


def _named(module: nn.Module, members: str):
    """``module.named_parameters()`` (``members="_parameters"``) or ``named_buffers()``
    (``"_buffers"``): same names, order and de-duplication, without the generator stack over
    ``named_modules`` for a module that has no children (most atomic modules)."""
    if module._modules:
        return (module.named_parameters() if members == "_parameters"
                else module.named_buffers())
    seen: set[int] = set()
    out = []
    for k, v in getattr(module, members).items():
        if v is not None and id(v) not in seen:
            seen.add(id(v))
            out.append((k, v))
    return out


def output_nodes(graph: Graph) -> list[Node]:
    """The graph's OUTPUT nodes, in the order of the flattened outputs."""
    return [n for n in graph.nodes if n.op_type is OpType.OUTPUT]


def output_path(node: Node) -> str:
    """An OUTPUT node's path in the flattened outputs (``logits``; "" for a lone tensor),
    from the name :func:`build_graph` gave it."""
    return node.name.removeprefix("output").removeprefix(".")


def plain_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``module``'s public attributes that hold a plain tensor, neither parameter nor buffer
    (VideoMAE's ``position_embeddings``, a sinusoid table set in ``__init__``). (The tracer
    reads them so too, in its walk over the modules.)"""
    return [(k, v) for k, v in vars(module).items()
            if type(v) is torch.Tensor and not k.startswith("_")]


def module_attrs(module: nn.Module) -> dict:
    """Public scalar attributes (``out_channels``, ``num_heads``, ...), JSON-ready."""
    out = {}
    for k, v in vars(module).items():
        if k[:1] == "_" or k == "training":  # most of a module's __dict__ is private
            continue
        if isinstance(v, _SCALARS):
            out[k] = v
        elif isinstance(v, (tuple, list)) and len(v) <= MAX_LISTED:  # (splits = [8, 8, 8])
            for x in v:
                if not isinstance(x, _SCALARS):
                    break
            else:  # every item is a scalar
                out[k] = list(v)
    return out


_SCALARS = (bool, int, float, str)


#: longest list or tuple attribute taken as a value (a size per part or stage), not data
MAX_LISTED = 8


def _grad_fn(outs) -> str | None:
    for t in outs:
        if isinstance(t, torch.Tensor) and t.grad_fn is not None:
            return type(t.grad_fn).__name__
    return None


# --------------------------------------------------------------------------------------------
# Inputs, eval mode and the entry point.


def arg_names(model: nn.Module) -> list[str]:
    """The names ``model.forward`` takes, in order ([] when it has no signature)."""
    try:
        return list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return []


def _takes_keywords_only(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes no input by position (``def forward(self, **inputs)``,
    or keyword-only parameters), so inputs given in order cannot reach it."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return not any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
                   for p in params)


def _name_inputs(names: list[str], args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    """The model's input tensors named after ``forward``'s parameters (``names``)."""
    named = []
    for i, a in enumerate(args):
        base = names[i] if i < len(names) and names[i] not in ("args", "kwargs") else f"input{i}"
        named += flatten(a, base)
    named += flatten(kwargs)
    return named


def _version(t: torch.Tensor) -> int | None:
    """``t``'s version counter (bumped by every in-place write, also through a view); None
    for an inference-mode tensor, which keeps none."""
    try:
        return t._version
    except RuntimeError:
        return None


def _compiled(module: nn.Module) -> bool:
    """Is ``module`` the wrapper ``torch.compile`` returns?"""
    return type(module).__name__ == "OptimizedModule"


def plain_module(model):
    """The module a ``torch.compile`` wrapper runs (its ``_orig_mod``), else ``model`` as it
    is: traced through the wrapper, dynamo would compile DepView's own hooks (and recompile
    them at every module), and every name would start with ``_orig_mod.``."""
    orig = getattr(model, "_orig_mod", None)
    if isinstance(orig, nn.Module) and _compiled(model):
        return orig
    return model


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the duration, each module's flag restored afterwards (even on
    error): a forward DepView runs never updates BatchNorm statistics and never drops units
    at random. The flags are set directly, so a ``train()`` override is not called.

    A ``torch.compile``'d submodule runs eagerly meanwhile: compiled, dynamo would compile
    DepView's hooks into it and recompile at every module (14-55 s for a small block)."""
    # only the modules in train mode are touched, through their __dict__ (Module.__setattr__
    # costs a few microseconds a call: a tenth of a tiny model's forward for its ~20 modules)
    modules = list(model.modules())
    training = [m for m in modules if m.training]
    compiled = any(_compiled(m) for m in modules)
    if training or _EVAL_HELD:  # (flags first: a holder registers before it clears them)
        training = _hold_eval(modules)
    kept = _hold_buffers(modules)
    try:
        if compiled:
            with torch.compiler.set_stance("force_eager"), warnings.catch_warnings():
                # (torch warns that global hooks fire twice, for the wrapper and its module)
                warnings.filterwarnings("ignore", r"Using `torch\.compile\(module\)` when")
                yield
        else:
            yield
    finally:
        _release_buffers(kept)
        if training:
            _release_eval(training)


#: id(module) -> how many eval_mode calls hold it, for modules some call found in train mode
#: (two threads tracing one model: the second sees the flags the first cleared, and must not
#: take them for the model's own, nor the first restore them while the second still runs)
_EVAL_HELD: dict[int, int] = {}


_EVAL_LOCK = threading.Lock()


def _hold_eval(modules: list[nn.Module]) -> list[nn.Module]:
    """Clear the training flag of ``modules`` in train mode, or held by another call; return
    the modules this call holds."""
    held = []
    with _EVAL_LOCK:
        for m in modules:
            if id(m) in _EVAL_HELD:
                _EVAL_HELD[id(m)] += 1
            elif m.training:
                _EVAL_HELD[id(m)] = 1
                m.__dict__["training"] = False
            else:
                continue
            held.append(m)
    return held


def _release_eval(held: list[nn.Module]) -> None:
    """Undo :func:`_hold_eval`: the last call holding a module sets it back to train mode."""
    with _EVAL_LOCK:
        for m in held:
            n = _EVAL_HELD[id(m)] - 1
            if n:
                _EVAL_HELD[id(m)] = n
            else:
                del _EVAL_HELD[id(m)]
                m.__dict__["training"] = True


#: id(module) -> [how many eval_mode calls hold it, {name: (the dict holding it (_buffers or
#: _parameters), the tensor, a copy of its values)}] as the first of them found it (see
#: :func:`_hold_buffers`)
_BUFFERS_HELD: dict[int, list] = {}


def _hold_buffers(modules: list[nn.Module]) -> list[nn.Module]:
    """Keep the buffers of ``modules`` as they are, for :func:`_release_buffers` to put back:
    some modules write theirs in eval mode too (``torch.ao`` observers and fake quantization
    record the ranges they see, an RL policy's running normaliser its mean), so every forward
    DepView ran would change the user's model, and the original would not be the model the
    pruned copy is compared with. A buffer not yet initialised (``nn.LazyBatchNorm2d``) is
    left to its first forward. So is an embedding's weight when it has ``max_norm``: its
    looked-up rows are renormalised in place on every forward, eval mode too."""
    held = []
    with _EVAL_LOCK:
        for m in modules:
            written = _written_in_eval(m)
            if not written:
                continue
            entry = _BUFFERS_HELD.get(id(m))
            if entry is None:
                with _unseen():
                    kept = {k: (where, t, copy) for where, k in written
                            if (t := where[k]) is not None and t.device.type != "meta"
                            and not isinstance(t, UninitializedTensorMixin)
                            and (copy := _copy(t)) is not None}
                if not kept:
                    continue
                entry = _BUFFERS_HELD[id(m)] = [0, kept]
            entry[0] += 1
            held.append(m)
    return held


@contextmanager
def _unseen() -> Iterator[None]:
    """Torch ops that no mode sees: keeping the buffers is not part of the forward that a
    tracer or ``FlopCounterMode`` around ``eval_mode`` records."""
    with torch._C.DisableTorchFunction(), _disable_current_modes():
        yield


@per_class
def _torch_layer(cls: type) -> bool:
    """Whether ``cls`` is one of torch's own layers (``torch.nn.modules``): none of them writes
    a buffer in eval mode (BatchNorm's statistics, most of a CNN's buffers, only in train
    mode), so theirs need not be kept; a subclass defined elsewhere may."""
    return cls.__module__.startswith("torch.nn.modules.")


def _written_in_eval(m: nn.Module) -> list[tuple[dict, str]]:
    """(the dict holding it, its name) of each tensor ``m`` may write in eval mode: the
    buffers of a module that is not one of torch's own, and the weight of an
    ``nn.Embedding`` or ``nn.EmbeddingBag`` with ``max_norm``."""
    # (keys(): a TorchScript module's BufferDict iterates otherwise)
    out = [] if _torch_layer(type(m)) else [(m._buffers, k) for k in m._buffers.keys()]
    if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.max_norm is not None:
        out.append((m._parameters, "weight"))
    return out


def _release_buffers(held: list[nn.Module]) -> None:
    """Undo :func:`_hold_buffers`: the last call holding a module puts each buffer object back
    in its place, with the values (and shape) it had."""
    if not held:
        return
    with _EVAL_LOCK, _unseen(), torch.no_grad():
        for m in held:
            entry = _BUFFERS_HELD[id(m)]
            entry[0] -= 1
            if entry[0]:
                continue
            del _BUFFERS_HELD[id(m)]
            for k, (where, t, values) in entry[1].items():
                if where.get(k) is not t:  # (``self.buf = new`` in the forward)
                    where[k] = t
                # (values compared, not version counters: ``torch.ao``'s fused observer
                # kernel writes its ranges without counting up)
                try:
                    if t.shape == values.shape and torch.equal(t, values):
                        continue
                    if t.shape == values.shape:
                        t.copy_(values)  # (views of the buffer see it too)
                    else:
                        t.set_(values)
                except RuntimeError:  # (a layout that cannot: left as the forward left it)
                    continue


def _copy(t: torch.Tensor) -> torch.Tensor | None:
    """A copy of ``t``'s values, or None for a tensor that cannot be copied (a subclass
    whose clone fails)."""
    try:
        return t.detach().clone()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


#: module class -> the functools caches its methods keep (see :func:`clear_method_caches`)
_METHOD_CACHES: weakref.WeakKeyDictionary[type, tuple] = weakref.WeakKeyDictionary()


#: module name -> the functools caches of the functions it defines
_MODULE_CACHES: dict[str, list] = {}


def _method_caches(cls: type) -> tuple:
    """The ``functools.lru_cache`` objects of a module class's methods and static methods,
    and of the functions the Python module that defines it (or a base class) defines: the
    function itself, or one its wrapper closes over (Hugging Face's
    ``compile_compatible_method_lru_cache``, which DINOv3 puts on a module-level function).
    torch's own classes keep none."""
    found = []
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] in ("torch", "builtins"):
            continue
        found += _caches_in(vars(klass).values())
        name = klass.__module__
        if name not in _MODULE_CACHES:
            module = vars(sys.modules[name]) if name in sys.modules else {}
            # (its own functions only: a cache imported from elsewhere, as an "is X
            # installed" check, is not the model's)
            _MODULE_CACHES[name] = _caches_in(
                v for v in list(module.values()) if _defined_in(v, name))
        found += _MODULE_CACHES[name]
    return tuple({id(c): c for c in found}.values())


def _defined_in(value: object, module: str) -> bool:
    """Is ``value`` a function (not a class, not a module) the Python module ``module``
    defines? (A lazy module proxy's ``__getattr__`` may import or raise: not asked.)"""
    if isinstance(value, (type, types.ModuleType)):
        return False
    try:
        return getattr(value, "__module__", None) == module
    except Exception:  # noqa: BLE001
        return False


def _caches_in(values) -> list:
    """The functools caches among ``values`` (functions, static and class methods), or
    closed over by one of them."""
    found = []
    for value in values:
        func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if not callable(func):
            continue
        cells = getattr(func, "__closure__", None) or ()
        found += [obj for obj in [func, *(_cell(c) for c in cells)] if _is_cache(obj)]
    return found


def _cell(cell) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # (a cell not filled yet)
        return None


def _is_cache(obj: object) -> bool:
    """Is ``obj`` a functools cache (``cache_clear`` and ``cache_info``)?"""
    try:
        return callable(getattr(obj, "cache_clear", None)) and \
            callable(getattr(obj, "cache_info", None))
    except Exception:  # noqa: BLE001 (an object whose __getattr__ raises something else)
        return False


def clear_method_caches(classes: Iterable[type]) -> None:
    """Empty the caches of the methods of these module classes (and of the functions their
    Python modules define), so that every trace computes what a first forward computes. A
    table a method caches class-wide (RT-DETR's and DETR's sine position embeddings,
    anchors, DINOv3's patch coordinates: ``compile_compatible_method_lru_cache``) is
    computed by the first trace and handed back to the next from the cache: a probe's trace
    then runs other ops than the first trace, which validation takes for control flow that
    reads sizes. Caches are what they are for speed: emptying one changes no result."""
    for cls in classes:
        caches = _METHOD_CACHES.get(cls)
        if caches is None:
            caches = _METHOD_CACHES[cls] = _method_caches(cls)
        for cache in caches:
            cache.cache_clear()


#: Where torch keeps its quantized layers (``quantize_dynamic``, ``convert``): their weights
#: are packed for int8 kernels, no parameters. (QAT layers, ``torch.ao.nn.qat``, are float
#: layers with fake quantization, and reference layers keep float weights: not these; nor is
#: ``FloatFunctional``, the float adds and cats of a model made ready to be quantized.)
_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized.", "torch.nn.quantized.",
                       "torch.ao.nn.intrinsic.quantized.", "torch.nn.intrinsic.quantized.")


def _quantized_class(cls: type) -> bool:
    where = cls.__module__ + "."
    return where.startswith(_QUANTIZED_PACKAGES) and ".reference." not in where \
        and cls.__name__ != "FloatFunctional"


def quantized_layer(model: nn.Module, classes: Iterable[type] | None = None) -> str | None:
    """Which of the model's layers is quantized, in words (``"'fc' (Linear of torch.ao
    quantization)"``): the first module of torch's quantized packages other than a reference
    layer. None when no layer is. ``classes``: the model's module classes, when known (the
    tracer's walk collects them), so that a model without any is not walked again."""
    if classes is not None and not any(_quantized_class(c) for c in classes):
        return None
    for name, mod in model.named_modules():
        if _quantized_class(type(mod)):
            what = f"'{name}'" if name else "the model"
            return f"{what} ({type(mod).__name__} of torch.ao quantization)"
    return None


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a KeyboardInterrupt unwound (its context chain holds
    one): a Ctrl-C that landed inside torch's dispatch, whose mode stack then fails."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def build_graph(model: nn.Module, example_inputs=(), example_kwargs: dict | None = None,
                autograd: bool = False, meta_results: dict | None = None,
                keep: dict | None = None, edit: dict | None = None,
                result: list | None = None) -> Graph:
    """Run ``model`` once on the example inputs and return its typed graph.

    ``example_inputs`` is a tensor, a tuple of positional arguments (which may nest lists and
    dicts of tensors), or a dict of keyword arguments. The model is not changed (hooks are
    removed afterwards, even on error; it runs in eval mode, see :func:`eval_mode`). Works on
    the ``meta`` device.

    The forward runs under ``torch.no_grad()`` unless ``autograd=True``, which also records
    each op's autograd node name (``CatBackward0``) at the cost of a slower trace.

    On meta, a call made again with the same arguments (function, shapes, strides, dtypes,
    other values) reuses the first call's result shapes instead of running torch's meta
    kernel, many of which are Python. ``meta_results`` is a dict to keep those results in
    across traces (validation traces one model many times, each pruned a little differently);
    by default each trace starts empty.

    ``keep`` maps node names to None: each named node's outputs are stored there (detached
    copies), as the trace runs. ``edit`` maps node names to functions that change the named
    node's outputs (a list of tensors) in place as the op returns, before any later op
    reads them (on a real device, where each op is recorded as it returns); ``result``, if
    given, receives what the forward returned.

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
    model = plain_module(model)
    if isinstance(model, torch.jit.ScriptModule):
        raise DepViewError(
            f"the model is a TorchScript module ({type(model).__name__}), whose ops run where "
            "DepView cannot see them: give the eager nn.Module (script it after pruning)")

    tracer = _Tracer(model, autograd and torch.is_grad_enabled())
    tracer.keep, tracer.edit = keep, edit
    quantized = quantized_layer(model, tracer.classes)
    if quantized is not None:
        raise DepViewError(
            f"{quantized} is quantized (int8 tensors, weights packed for int8 kernels), "
            "which DepView cannot prune: give the float model, and quantize it after pruning")
    clear_method_caches(tracer.classes)  # (the classes of the tracer's walk of the modules)
    params = arg_names(model)
    named = _name_inputs(params, args, kwargs)
    # an input named as a module or a parameter (``self.x`` beside ``forward(x)``) is the one
    # renamed: a layer keeps the name --override, --ignore and plan.json know it by
    # (an argument's name has no dot: only the model's own attributes can be it)
    for name, t in named:
        name = name or "input"
        held = name in model._modules or name in model._parameters or name in model._buffers
        tracer.add_node([], [t], tracer.unique(f"input.{name}" if held else name),
                        OpType.INPUT, "", "input")
    # on meta nothing is allocated: record in long batches (with autograd, one by one: an
    # in-place op changes its input's grad_fn)
    probe = next(iter(model.parameters()), named[0][1] if named else None)
    if not tracer.autograd and probe is not None and probe.device.type == "meta":
        tracer.limit = _BATCH_META
        tracer.results = {} if meta_results is None else meta_results
    # Global module hooks: registering two hooks on every module costs more than a tiny
    # model's whole forward; the hooks themselves skip other threads and other models.
    # (TorchScript submodules never call them: they are opaque.)
    handles = [register_module_forward_pre_hook(tracer.pre_hook),
               register_module_forward_hook(tracer.post_hook, with_kwargs=True,
                                            always_call=True)]
    # The tracer makes a few objects per op (nodes, edges, tags); with the cyclic collector on,
    # they set off collections that walk all of torch's objects (about a tenth of a 7B build).
    # They hold no cycles; tensors are freed by reference counting as usual, and any cyclic
    # garbage of the forward waits for the next collection after the trace.
    collect = gc.isenabled()
    gc.disable()
    try:
        # (eval mode outside the tracer: it keeps the buffers with torch ops of its own)
        with eval_mode(model), tracer, \
                torch.set_grad_enabled(autograd and torch.is_grad_enabled()):
            output = model(*args, **kwargs)
        tracer.flush()
    except Exception as exc:
        if _interrupted(exc):  # (Ctrl-C inside a dispatch: torch's mode stack then fails)
            raise KeyboardInterrupt from exc
        where = tracer.failure or f"in {type(model).__name__}.forward"
        # torch's "... got (NoneType, ...), but expected one of:" lists the signatures below
        first = (str(exc).strip().splitlines() or [""])[0].removesuffix(
            ", but expected one of:")
        shapes = [list(t.shape) for _, t in _name_inputs(params, args, kwargs)]
        given = f"model inputs {shapes}"
        # (None is an ordinary value of an optional input: named only when no tensor came)
        others = [f"{k} is {_type_name(v)}" for k, v in enumerate(args)
                  if not isinstance(v, torch.Tensor) and _looks_like_data(v)
                  and (v is not None or not shapes)]
        if others:  # a numpy array or a nested list given where a tensor was meant
            given += f"; input {others[0]}, not a tensor"
        if args and isinstance(exc, TypeError) and _takes_keywords_only(model):
            first += (" (its forward takes its inputs by name: give them as a dict, or as "
                      "--input NAME=SHAPE)")
        if "'indices'" in first and any(t.is_floating_point() for _, t in
                                        _name_inputs(params, args, kwargs)):
            first += " (ids need an integer dtype: --input SHAPE:int64)"
        raise DepViewError(
            f"model forward failed {where} ({given}): {type(exc).__name__}: {first}"
        ) from exc
    finally:
        for h in handles:
            h.remove()
            # torch's remove() leaves the hook's id in this table: left there, every later
            # torch.compile'd module call in the process warns of global hooks
            _KWARGS_HOOKS.pop(h.id, None)
        if collect:
            gc.enable()

    outs = flatten(output)
    if not outs:
        raise DepViewError(f"{type(model).__name__}.forward returned no tensors")
    for path, t in outs:  # (named so that output_path gives the path back)
        tracer.add_node([t], [], tracer.unique(f"output.{path}" if path else "output"),
                        OpType.OUTPUT, "", "output")
    # read again, not reused: the forward may have changed its input containers
    inputs = _name_inputs(params, args, kwargs)
    tracer.seal_fills()
    kept = [t for _, t in outs + inputs] + tracer.sources
    for t in kept:  # tensors the caller keeps: leave no attribute behind
        t.__dict__.pop("_depview_src", None)
    tracer.by_id.clear()
    tracer.fills.clear()
    if tracer.reopen - set(_OPENED):
        _OPENED.update(tracer.reopen)
        return build_graph(model, example_inputs, example_kwargs, autograd, meta_results, keep,
                           edit, result)
    if result is not None:
        result.append(output)
    return Graph(
        tracer.nodes, tracer.edges,
        info={"model": type(model).__name__,
              "inputs": [list(t.shape) for _, t in inputs],
              "outputs": {p or "output": list(t.shape) for p, t in outs},
              "device": str(next(iter(model.parameters()), torch.empty(0)).device),
              # (only for NamedTuple outputs: what older exports called them)
              **({"renamed_outputs": renamed} if (renamed := renamed_outputs(output)) else {})},
    )
