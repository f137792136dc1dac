"""The typed graph: nodes (typed ops), edges (tensors with shapes), and its JSON form.

A tensor is identified by the ``(node id, output port)`` that produced it; every consumer of
that tensor has one :class:`Edge` from it. Node ids are positions in :attr:`Graph.nodes`, in
execution order (a topological order).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from .meta import meta_to_dict
from .optypes import STYLES, OpType

Shape = tuple[int, ...]


#: ops that give a view of their input and compute nothing
_VIEWS = frozenset((OpType.SLICE, OpType.RESHAPE, OpType.PERMUTE))


class Edge(NamedTuple):
    """A tensor flowing from ``source``'s output ``source_port`` into ``target``'s input
    ``target_port``. (A named tuple: a trace makes one per op input.)"""

    source: int
    source_port: int
    target: int
    target_port: int
    shape: Shape
    dtype: str


@dataclass
class Node:
    """One op of the traced model.

    ``name`` is unique: the module path for module nodes (``layer1.0.conv1``; a reused module's
    later calls get ``:1``, ``:2``), ``<module>.<op>`` for functional ops (``layer1.0.add``).
    ``module`` is the module path of the module itself (module nodes) or of the module whose
    forward ran the op (functional nodes; ``""`` is the root). ``params`` maps the node's local
    parameter names to state_dict keys (a PARAMETER node uses the local name ``""``).
    """

    id: int
    name: str
    op_type: OpType
    module: str
    target: str
    meta: object | None = None
    in_shapes: tuple[Shape, ...] = ()
    out_shapes: tuple[Shape, ...] = ()
    params: dict[str, str] = field(default_factory=dict)
    buffers: dict[str, str] = field(default_factory=dict)  #: local buffer name -> state key
    param_shapes: dict[str, Shape] = field(default_factory=dict)
    grad_fn: str | None = None
    call: int = 0
    attrs: dict = field(default_factory=dict)  #: public scalar attributes of the module
    custom: object | None = field(default=None, repr=False)  #: CustomLayer registration
    #: a subclass of a torch layer that defines its own forward (BiT's StdConv2d): its class
    own_forward: str | None = None
    #: ``(g, v)``, the local names of the magnitude and direction of a weight that weight
    #: normalisation computes (``weight = g * v / ||v||``), or None
    weight_norm: tuple[str, str] | None = None
    #: ``(W, u, v, dim)``: the local names of a spectral-normalised weight and its singular
    #: vectors, and the dim its matrix has as rows (``weight = W / u.(W v)``), or None
    spectral_norm: tuple[str, str, str, int] | None = None
    #: the tensors (``"weight"``, ``"bias"``) a ``torch.nn.utils.prune`` mask computes as
    #: ``NAME_orig * NAME_mask`` (see :mod:`viewer.core.prunemask`)
    prune_masked: tuple[str, ...] = ()
    #: the inputs (by port) a layer's own forward reads for their shape only, never their
    #: values (BART's position embedding is given ``inputs_embeds[:, :, -1]`` for its length)
    shape_only: tuple[int, ...] = ()

    @property
    def is_module(self) -> bool:
        """True for nodes made from an ``nn.Module`` call (not functional ops or sources)."""
        return self.target.startswith("module:")

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "op_type": self.op_type.value,
            "module": self.module,
            "target": self.target,
            "meta": meta_to_dict(self.meta),
            "in_shapes": [list(s) for s in self.in_shapes],
            "out_shapes": [list(s) for s in self.out_shapes],
            "params": {k: {"name": v, "shape": list(self.param_shapes.get(k, ()))}
                       for k, v in self.params.items()},
            "grad_fn": self.grad_fn,
            "call": self.call,
            "attrs": self.attrs,
            "own_forward": self.own_forward,
            "weight_norm": list(self.weight_norm) if self.weight_norm else None,
            "spectral_norm": list(self.spectral_norm) if self.spectral_norm else None,
            "prune_masked": list(self.prune_masked),
            "shape_only": list(self.shape_only),
        }


@dataclass
class Graph:
    """A traced model. Build with :func:`viewer.build_graph`."""

    nodes: list[Node]
    edges: list[Edge]
    info: dict = field(default_factory=dict)
    #: ids of the OUTPUT nodes whose width may change (``Pruner(free_outputs=...)``): a
    #: group that reaches one is not blocked there
    free_outputs: frozenset[int] = frozenset()

    @cached_property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    @cached_property
    def output_ids(self) -> tuple[int, ...]:
        """The OUTPUT nodes' ids, in the order of the flattened outputs."""
        return tuple(n.id for n in self.nodes if n.op_type is OpType.OUTPUT)

    @cached_property
    def weight_norms(self) -> dict[str, str]:
        """state_dict key of each weight-normalised layer's direction ``v`` -> its magnitude
        ``g``'s (see :mod:`viewer.core.weightnorm`)."""
        return {n.params[n.weight_norm[1]]: n.params[n.weight_norm[0]]
                for n in self.nodes if n.weight_norm}

    @cached_property
    def spectral_norms(self) -> dict[str, tuple[str, str, int]]:
        """state_dict key of each spectral-normalised layer's weight ``W`` -> the keys of its
        ``u`` and ``v`` and its row dim (see :mod:`viewer.core.spectralnorm`)."""
        out = {}
        for n in self.nodes:
            if n.spectral_norm:
                w, u, v, dim = n.spectral_norm
                out[n.params[w]] = (n.buffers[u], n.buffers[v], dim)
        return out

    @cached_property
    def prune_masks(self) -> dict[str, str]:
        """state_dict key of each ``torch.nn.utils.prune``-masked tensor's ``_orig`` -> its
        ``_mask``'s (see :mod:`viewer.core.prunemask`)."""
        return {n.params[f"{k}_orig"]: n.buffers[f"{k}_mask"]
                for n in self.nodes for k in n.prune_masked}

    @cached_property
    def in_edges(self) -> dict[int, list[Edge]]:
        """Edges into each node, sorted by input port."""
        d: dict[int, list[Edge]] = defaultdict(list)
        for e in self.edges:
            d[e.target].append(e)
        for lst in d.values():
            lst.sort(key=lambda e: e.target_port)
        return d

    @cached_property
    def consumers(self) -> dict[tuple[int, int], list[Edge]]:
        """Edges out of each tensor ``(node, port)``."""
        d: dict[tuple[int, int], list[Edge]] = defaultdict(list)
        for e in self.edges:
            d[(e.source, e.source_port)].append(e)
        return d

    @cached_property
    def shape_read(self) -> frozenset[int]:
        """Views (slice, select, reshape, permute) whose result is read for its shape only,
        by layers' own forwards (:attr:`Node.shape_only`): a pruned width changes nothing
        they give, so groups pass them by (BART's ``inputs_embeds[:, :, -1]``, which its
        position embedding reads for the sequence length)."""
        out = set()
        for n in self.nodes:
            if n.op_type in _VIEWS:
                es = [e for p in range(len(n.out_shapes))
                      for e in self.consumers.get((n.id, p), ())]
                if es and all(e.target_port in self.nodes[e.target].shape_only for e in es):
                    out.add(n.id)
        return frozenset(out)

    @cached_property
    def unknown_sources(self) -> list[Node]:
        """Tensors that appeared in the forward from no traced op and are not fills
        (``torch.zeros``): computed by code the trace does not see, or cached outside it."""
        return [n for n in self.nodes if n.op_type is OpType.CONSTANT
                and n.target == "constant" and n.out_shapes and len(n.out_shapes[0]) > 1]

    def fixed_value(self, nid: int) -> bool:
        """Does no model input and no parameter reach node ``nid``'s outputs? True for
        buffers, tensors made inside forward, and what is computed from those alone (a
        rotary cos/sin table, a causal mask). Worked out on demand, up the node's inputs
        until one decides, and remembered."""
        memo = self._fixed
        got = memo.get(nid)
        if got is not None:
            return got
        nodes, in_edges = self.nodes, self.in_edges
        stack = [nid]
        while stack:
            cur = stack[-1]
            if cur in memo:
                stack.pop()
                continue
            n = nodes[cur]
            t = n.op_type
            value: bool | None
            if t is OpType.BUFFER and not n.params or t is OpType.CONSTANT:
                value = True  # (a persistent buffer is state, as a parameter is)
            elif n.params or t is OpType.INPUT or t is OpType.PARAMETER or \
                    not in_edges.get(cur):
                value = False
            else:
                value, later = True, None
                for e in in_edges[cur]:
                    v = memo.get(e.source)
                    if v is False:
                        value = False
                        break
                    if v is None and later is None:
                        later = e.source
                if value and later is not None:
                    stack.append(later)  # decide that input first, then look again
                    continue
            memo[cur] = value
            stack.pop()
        return memo[nid]

    @cached_property
    def _fixed(self) -> dict[int, bool]:
        return {}

    def read_once(self, nid: int) -> bool:
        """Does node ``nid``'s value reach the rest of the model through one input of one op,
        followed through what is computed from fixed values alone (``pe[:, :n]``,
        ``pe * 2``)? A sinusoidal position table added to the stream once is read once; a
        rotary frequency table whose cos/sin every layer reads is not. Nothing but that one
        op sees a table read once, so its columns can go with the channels it meets there."""
        memo = self._once
        if nid not in memo:
            seen, stack, exits = {nid}, [nid], 0
            while stack and exits < 2:
                cur = stack.pop()
                for port in range(len(self.nodes[cur].out_shapes)):
                    for e in self.consumers.get((cur, port), ()):
                        if not self.fixed_value(e.target):
                            exits += 1
                        elif e.target not in seen:
                            seen.add(e.target)
                            stack.append(e.target)
            memo[nid] = exits == 1
        return memo[nid]

    @cached_property
    def _once(self) -> dict[int, bool]:
        return {}

    @cached_property
    def sharing(self) -> dict[int, list[int]]:
        """Nodes holding a tensor that other nodes hold too (a module called twice, weights
        tied between modules, a layer's weight also used functionally): node id -> the ids
        of those other nodes."""
        first: dict[str, int] = {}  # tensor -> its first holder
        shared: dict[str, list[int]] = {}
        for n in self.nodes:
            if n.params or n.buffers:
                for key in [*n.params.values(), *n.buffers.values()]:
                    i = first.setdefault(key, n.id)
                    if i != n.id:
                        shared.setdefault(key, [i]).append(n.id)
        out: dict[int, set[int]] = defaultdict(set)
        for ids in shared.values():
            for i in ids:
                out[i].update(j for j in ids if j != i)
        return {i: sorted(js) for i, js in out.items()}

    def node(self, key: int | str) -> Node:
        """A node by id or by name (raises KeyError naming close matches)."""
        if isinstance(key, int):
            return self.nodes[key]
        try:
            return self.by_name[key]
        except KeyError:
            close = [n for n in self.by_name if key in n][:5]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"no node named {key!r}{hint}") from None

    def predecessors(self, node_id: int) -> list[int]:
        return [e.source for e in self.in_edges.get(node_id, [])]

    def successors(self, node_id: int) -> list[int]:
        out = []
        for port in range(len(self.nodes[node_id].out_shapes)):
            out += [e.target for e in self.consumers.get((node_id, port), [])]
        return out

    def count(self) -> dict[str, int]:
        """How many nodes of each OpType (only types that occur)."""
        c: dict[str, int] = defaultdict(int)
        for n in self.nodes:
            c[n.op_type.value] += 1
        return dict(c)

    def to_dict(self) -> dict:
        """The documented JSON schema (see README, "Graph JSON")."""
        return {
            "info": self.info,
            "op_types": {t.value: {"label": s.label, "color": s.color} for t, s in STYLES.items()},
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [
                {"source": e.source, "source_port": e.source_port, "target": e.target,
                 "target_port": e.target_port, "shape": list(e.shape), "dtype": e.dtype}
                for e in self.edges
            ],
        }
