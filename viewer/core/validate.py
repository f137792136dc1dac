"""Validation: each group is pruned alone on a copy (meta when large) and run before a
plan may use it.

A group whose probe fails is not prunable, with the reason in words; on the way the
search tries what would let it run: module attributes or config entries that hold a width
(``head_dim``, ``split_size``), whole heads instead of head dims, joining groups whose
widths the code ties. ``GroupValidation`` is mixed into ``Pruner`` (it reads the pruner's
model, graph, groups and inputs).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import re
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .arrays import unique
from .errors import DepViewError
from .forward import copy_inputs, inputs_on_meta, is_real, run
from .graph import Graph, Node
from .groups import (
    Group,
    Member,
    fixed_sizes,
    fixed_slices,
    outer_alternative,
    part_alternative,
    same_members,
    slice_spans,
    split_blocked,
    split_sizes,
    split_width,
    units_are_heads,
)
from .materialize import config_owners, materialize
from .memory import MemoryShortError, out_of_memory, tensor_bytes
from .meta import DimSlice, SliceMeta, SplitMeta
from .modelconfig import held_config
from .optypes import OpGroup, OpType
from .plan import Plan, SizeAttr
from .rules import mha_call_query
from .text import error_line, first_line
from .trace import MAX_LISTED, build_graph


def _analogous_choice(found: list[SizeAttr],
                      repaired: list[tuple[list[SizeAttr], list[SizeAttr]]]
                      ) -> list[SizeAttr] | None:
    """The attributes of ``found`` that mirror the choice made for an earlier group whose
    candidates were the same attributes of the same sizes, read by nodes at one fixed id
    offset (the same block one layer on); None if no earlier group is such a mirror. The
    latest repaired group is tried first."""
    for cands, choice in reversed(repaired):
        if choice and _mirrors(cands, found):
            return [b for a, b in zip(cands, found, strict=True) if a in choice]
    return None


def _only_needed(found: list[SizeAttr], runs: Callable[[list[SizeAttr]], bool],
                 keep: Callable[[SizeAttr], bool] = lambda r: False) -> list[SizeAttr]:
    """``found`` without each item (in order, ``keep`` ones never) the model runs without:
    nothing is set that a probe did not need."""
    for r in [x for x in found if not keep(x)]:
        rest = [x for x in found if x != r]
        if runs(rest):
            found = rest
    return found


def _kind(r: SizeAttr) -> tuple[str, str]:
    """An attribute with its module's layer numbers blanked: ``head_dim`` of every
    ``model.layers.<i>.self_attn`` is one kind."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "#", r.module), r.attr


def _singles(found: list[SizeAttr]) -> list[list[SizeAttr]]:
    """Each candidate alone, in order, except that an attribute of every layer (a kind read
    by several modules: each layer's ``num_key_value_heads`` in a group joined across
    layers) goes as one: one layer's alone cannot make a joined group run, and Phi-3-mini's
    32 layers made 69 such probes."""
    by_kind: dict[tuple[str, str], list[SizeAttr]] = defaultdict(list)
    for r in found:
        by_kind[_kind(r)].append(r)
    out, done = [], set()
    for r in found:
        k = _kind(r)
        if len({x.module for x in by_kind[k]}) == 1:
            out.append([r])
        elif k not in done:
            done.add(k)
            out.append(by_kind[k])
    return out


def _fewest_kinds(found: list[SizeAttr], runs: Callable[[list[SizeAttr]], bool]
                  ) -> list[SizeAttr] | None:
    """When setting every candidate breaks the model and no single one is enough (Phi-3's
    joined heads need ``config.num_attention_heads`` and each layer's
    ``num_key_value_heads``, while ``config.num_hidden_layers``, equal to a part's size too,
    must stay): the candidates without one kind (:func:`_kind`), else two kinds together,
    then without each further kind the model runs without. None if nothing tried runs."""
    # the module's own attributes before its config's (which tiny test configs fill with
    # sizes that divide everything)
    kinds = sorted(dict.fromkeys(_kind(r) for r in found),
                   key=lambda k: k[1].startswith("config."))
    tries = [[k for k in kinds if k != drop] for drop in kinds] if len(kinds) > 2 else []
    if len(kinds) <= _PAIRED_KINDS:
        tries += [[a, b] for i, a in enumerate(kinds) for b in kinds[i + 1:]]
    for keep in tries:
        rest = [r for r in found if _kind(r) in keep]
        if runs(rest):
            for k in keep:
                fewer = [r for r in rest if _kind(r) != k]
                if fewer and runs(fewer):
                    rest = fewer
            return rest
    return None


#: :func:`_fewest_kinds` tries pairs of kinds up to this many kinds (66 pairs)
_PAIRED_KINDS = 12


def _mirrors(cands: list[SizeAttr], found: list[SizeAttr]) -> bool:
    """Are ``found`` the same attributes, of the same sizes, as ``cands``, read by nodes at
    one fixed id offset (the same block one layer on)?"""
    if len(cands) != len(found) or not found:
        return False
    delta = found[0].node - cands[0].node
    return delta != 0 and all(
        a.attr == b.attr and a.size == b.size and a.parts == b.parts and a.sizes == b.sizes
        and a.boxed == b.boxed and a.index == b.index and a.span == b.span
        and b.node - a.node == delta
        and b.tensor == (a.tensor[0] + delta, *a.tensor[1:])
        for a, b in zip(cands, found, strict=True))


#: Added to a validation failure of view/reshape: the usual cause, and the usual rewrite.
_VIEW_HINT = ("; a size given to view/reshape did not follow the pruned width (code that reads "
              "it from another tensor, B, T, C = x.shape, keeps the old one; -1 or a module "
              "attribute follows)")


def _not_run_hint(found: list[SizeAttr], by_analogy: bool) -> str:
    """What a failing group's reason adds when module attributes equal to the size it
    shrinks were set to the new size and the model still failed."""
    by_module: dict[str, list[str]] = {}
    for r in found:
        attrs = by_module.setdefault(r.module or "<root>", [])
        if r.attr not in attrs:
            attrs.append(r.attr)
    names = "; ".join(f"{m}: {', '.join(a)}" for m, a in list(by_module.items())[:2])
    if len(by_module) > 2:
        names += f" (+{len(by_module) - 2} modules)"
    where = " (as in the same block one layer back)" if by_analogy else ""
    return (f"; setting the attributes equal to that size ({names}) to the new size did not "
            f"make it run either{where}: another group may read the same attribute")


def _probe_units(group: Group, end: str) -> list[int]:
    """The units validation removes: the first or the last (one step of ``multiple_of``),
    each in a run of its own. A fixed slice (``x[:, 4:]``, ``x[:, :12]``, GhostNet's
    ``cat(...)[:, :oup]``) still runs when a channel past its end goes and breaks when the
    first goes; a split at a computed middle (``x[:, :c]`` with ``c = x.shape[1] // 2``, read
    as fixed numbers) still runs when the first goes and breaks when the last does. Both in
    one run can hide either (the sizes happen to agree again).

    A unit that is all a layer holds of the group (the one channel left to one part of a
    split after an earlier round) is never removed by a plan (see :func:`sole_holders`,
    :meth:`Pruner._keep_every_part`, :meth:`Pruner.check_plan`), so the probe takes the next
    unit from that end."""
    m = group.multiple_of
    if m != 1:
        return list(range(m)) if end == "first" else \
            list(range(group.n_units - m, group.n_units))
    sole = _sole_units(group)
    order = range(group.n_units) if end == "first" else range(group.n_units - 1, -1, -1)
    return [next((u for u in order if u not in sole), order[0])]


def _sole_units(group: Group) -> set[int]:
    """The units that are all a layer holds of the group (see :func:`_probe_units`)."""
    return set(sole_holders(group))


def sole_holders(group: Group) -> dict[int, str]:
    """Unit -> the name of a layer that holds that unit of the group and no other (the
    head that reads one channel of a window over two layers' channels, the one channel an
    earlier round left to a split's part): validation never removes such a unit, as it
    would leave that layer none of the group's channels (``Conv2d(0, 4)``, an empty
    ``LayerNorm``), and a plan may not (:meth:`Pruner.check_plan`). Empty for a group of
    one unit."""
    out: dict[int, str] = {}
    if group.n_units > 1:
        for mem in group.members:
            if len(held := unique(mem.unit)) == 1:
                out.setdefault(int(held[0]), mem.node_name)
    return out


#: a slice of a dim a group may shrink: ``(the slice node, its slice of that dim, the sliced
#: tensor dim)``
SliceAt = tuple[Node, DimSlice, tuple[int, int, int]]


def _inner_runs(group: Group, slices: list[SliceAt]) -> list[list[int]]:
    """The units of the probes validation runs after the first and the last unit's
    (:func:`_probe_units`) when the group passes through slices of a dim it shrinks
    (``slices``: the graph's, see :meth:`GroupValidation._slices`), one run each: for every
    such slice, a unit before its start, one it reads, one its step skips and one past its
    stop, wherever the group has one there that no earlier probe removed. Those two need
    not reach a slice's parts at all: a slice strictly inside the dim (``x[:, a:b]``, 0 < a,
    b < C) has neither unit inside it (``x[:, self.a:self.a + 2]`` passed, ``a`` set right for
    the first unit, and a plan removing a unit inside broke the pruned forward), and a slice
    of a slice (``x.narrow(1, self.start, 3)[:, self.a:self.b]``) holds neither the first
    unit of the dim nor a unit before its own start, so a plan removing one broke the
    inner slice's start, which no probe had moved. Each run is one unit (its run of
    ``multiple_of``), never one a layer holds alone; [] when every part is reached."""
    m, n = group.multiple_of, group.n_units
    sole = _sole_units(group) if m == 1 else set()
    covered = {*_probe_units(group, "first"), *_probe_units(group, "last")}
    runs: list[list[int]] = []
    for _node, s, key in slices:
        if key not in group.tensors:
            continue
        pos, unit = group.tensors[key]
        within = (pos >= s.start) & (pos < s.stop)
        read = within & ((pos - s.start) % s.step == 0)
        for part in (pos < s.start, read, within & ~read, pos >= s.stop):
            units = unique(unit[part]).tolist()
            if not units or covered.intersection(units):
                continue
            u = next((u for u in units if u not in sole), None)
            if u is None:
                continue
            run = list(range(u - u % m, min(u - u % m + m, n))) if m != 1 else [u]
            runs.append(run)
            covered.update(run)
    return runs


def _aligned_names(first: Graph, later: Graph) -> dict[str, str]:
    """Node names of ``first`` (the trace the groups were found on) in ``later``, a trace of
    the same model run again, where they differ: a value computed on the first call only and
    cached for the next (BEiT's relative position index, in a cache every copy shares) is
    missing from later traces, so later names of that module are numbered differently
    (``getitem_7`` is ``getitem_2``). Each node of ``later`` is matched to the next node of
    ``first`` with the same module, op, target and shapes (a source node of ``later`` with
    no match is the cached value); empty when the names agree."""
    if len(first.nodes) == len(later.nodes):
        return {}

    def call(n):
        return n.module, n.op_type, n.target, n.in_shapes, n.out_shapes

    out, i, nodes = {}, 0, first.nodes
    for b in later.nodes:
        key = call(b)
        j = i
        while j < len(nodes) and call(nodes[j]) != key:
            j += 1
        if j == len(nodes):
            if b.op_type in OpGroup.SOURCES:
                continue  # the cached value itself, now a tensor the trace did not make
            return {}  # not a trace with calls left out: compare names as they are
        if nodes[j].name != b.name:
            out[nodes[j].name] = b.name
        i = j + 1
    return out


def _stale_cache_hint(pruned: nn.Module, table: dict, changes: dict) -> str:
    """A likely cause of a failed probe: a module of the pruned copy holds, in a plain
    attribute (not a parameter or buffer, so no cut reaches it), a tensor of the shape one
    of its own cut tensors had before: a value its forward computed once and keeps (Mimi's
    codebook, divided out of its buffers on the first call). "" when none does."""
    old: dict[str, set[tuple[int, ...]]] = defaultdict(set)
    for key in changes:
        if key in table:
            path, _, _name = key.rpartition(".")
            old[path].add(tuple(table[key][2].shape))
    for path, mod in pruned.named_modules():
        shapes = old.get(path)
        for attr, v in vars(mod).items() if shapes else ():
            if isinstance(v, torch.Tensor) and tuple(v.shape) in shapes:
                name = f"{path}.{attr}" if path else attr
                return (f"; '{name}' keeps a tensor of the width before pruning in a plain "
                        "attribute, no parameter or buffer (a value an earlier forward "
                        "computed and cached?): the pruned model reads it unchanged")
    return ""


def _slice_hint(graph: Graph, gs: list[Group], computed: dict | None = None) -> str:
    """A likely cause of a failed probe: a slice of the pruned dim whose bounds stay numbers
    (Phi-3's ``qkv[..., :query_pos]`` with ``query_pos`` from the config every layer shares),
    while the positions it should cut moved. "" when the groups pass through no such slice
    but those of tensor dims in ``computed`` (bounds a probe saw follow the width)."""
    for g in gs:
        for node, s in fixed_slices(graph, g):
            e = graph.in_edges[node.id][0]
            if (e.source, e.source_port, s.dim) in (computed or {}):
                continue
            step = f":{s.step}" if s.step != 1 else ""
            return (f"; '{node.name}' slices [{s.start}:{s.stop}{step}] of the pruned dim: "
                    "bounds written in the code or computed from a config (one every layer "
                    "shares) do not follow the kept channels")
    return ""


_NUMBER_MOVED = "a number the forward derives from a width"
#: a probe's error that says only a number moved (see :func:`_moved`): the op that moved it
_ONLY_NUMBER_MOVED = re.compile(
    r"when this group shrinks, '(?P<name>[^']+)' computes with [^:]* instead of [^:]*: "
    + re.escape(_NUMBER_MOVED))


def _moved_why(node: Node) -> str:
    """The likely cause of a size that moved at ``node``: a reshape's ``-1`` took the lost
    channels; any other op made a tensor whose size was computed from values the pruned
    weights change (HF VITS: the waveform's length is the sum of predicted durations)."""
    if node.op_type is OpType.RESHAPE:
        return "a -1 in a view?"
    return ("a size computed from values the pruned weights change, as a length the model "
            "predicts?")


def _moved(before: Graph, after: Graph, owned: dict[tuple[str, int, int], int | None],
           numbers: bool = True,
           reads: dict[str, list[tuple[int, np.ndarray, list[int], DimSlice]]] | None = None
           ) -> str:
    """Why the pruned model's trace ``after`` is not ``before`` shrunk only where the groups
    own positions, ``owned`` as (node name, port, dim) ("" when it is): a ``view(b, -1,
    heads, head_dim)`` that still runs can hand the lost channels to its ``-1`` dim, mixing
    tokens without any error. Where ``owned`` gives a count (a layer's own output), it must
    lose exactly that many positions: a layer whose forward slices its weight by a fixed
    size (a slimmable ``F.linear(x, self.weight[:self.active_out])``) keeps its width, or
    takes rows it never used, and breaks only when more units go. With ``numbers``, the
    plain numbers elementwise ops compute with (and an attention's ``scale=``) must not move
    either: ``scores / math.sqrt(q.size(-1))``, or a ``math.sqrt(self.head_dim)`` whose
    attribute pruning sets, would rescale what the removed channels leave (not checked for
    groups already marked inexact, whose changes are known). ``reads``
    (:meth:`GroupValidation._slice_reads`, by node name): the positions each slice of a
    pruned dim must read, which its width alone does not show (:func:`_slice_moved`)."""
    if [n.name for n in after.nodes] != [n.name for n in before.nodes]:
        return "when this group shrinks, the model runs other ops (its control flow reads sizes)"
    for a, b in zip(before.nodes, after.nodes, strict=True):
        for port, (sa, sb) in enumerate(zip(a.out_shapes, b.out_shapes, strict=False)):
            if len(sa) != len(sb) or any(x != y and (a.name, port, d) not in owned
                                         for d, (x, y) in enumerate(zip(sa, sb, strict=True))):
                return (f"when this group shrinks, '{a.name}' gives {list(sb)} instead of "
                        f"{list(sa)}: a size the group does not own moved ({_moved_why(a)})")
            for d, (x, y) in enumerate(zip(sa, sb, strict=True)):
                lost = owned.get((a.name, port, d))
                if lost is not None and y != x - lost:
                    return (f"when this group shrinks, '{a.name}' gives {y} channels on dim "
                            f"{d} instead of {x - lost}: its forward does not follow its "
                            "pruned weight (it slices the weight by a fixed size, "
                            "weight[:n]?)")
        for dim, kept, want, s in (reads or {}).get(a.name, ()):
            # (after its sizes: a slice whose width moved says so, as it did before)
            why = _slice_moved(b, dim, kept, want, s)
            if why:
                return why
    for a, b in zip(before.nodes, after.nodes, strict=True):
        was, now = _head_dim(a), _head_dim(b)
        if was and now != was:
            # it runs with any num_heads that divides the width: heads of another size
            # mix the channels of the heads that stay
            return (f"when this group shrinks, '{a.name}' (multi_head_attention_forward) cuts "
                    f"its width into heads of {now} channels instead of {was}: the num_heads it "
                    "is given did not follow the heads removed")
    if numbers:
        for a, b in zip(before.nodes, after.nodes, strict=True):
            na, nb = _numbers(a), _numbers(b)
            if na != nb and (len(na) != len(nb) or not all(
                    x == y or x != x and y != y  # (NaN == NaN here)
                    for x, y in zip(na, nb, strict=True))):
                was, now = (", ".join(f"{x:.4g}" for x in v) for v in (na, nb))
                return (f"when this group shrinks, '{a.name}' computes with {now} instead of "
                        f"{was}: {_NUMBER_MOVED} (an attention scale 1/sqrt(head_dim)?) "
                        "changes, so pruning would change more than these channels")
    return ""


def _slice_moved(node: Node, dim: int, kept: np.ndarray, want: list[int], was: DimSlice) -> str:
    """Why ``node``, a slice in the pruned model's trace, does not read ``want`` on ``dim``
    (positions before pruning; ``kept``: those the pruned dim holds, in order), "" when it
    does, or when its input's width is not ``kept``'s (the sizes check says why)."""
    meta = node.meta
    if not isinstance(meta, SliceMeta) or len(meta.in_shape) <= dim or \
            meta.in_shape[dim] != len(kept):
        return ""
    s = next((s for s in meta.slices if s.dim == dim), DimSlice(dim, 0, len(kept), 1))
    if [int(kept[i]) for i in range(s.start, s.stop, s.step)] == want:
        return ""
    step = f":{s.step}" if s.step != 1 else ""
    if was.step == 1:  # the bounds that read them: the kept positions below each old bound
        lo, hi = (int(np.searchsorted(kept, b)) for b in (was.start, was.stop))
        should = f"[{lo}:{hi}]"
    else:
        should = f"the kept channels of [{was.start}:{was.stop}:{was.step}]"
    return (f"when this group shrinks, '{node.name}' slices [{s.start}:{s.stop}{step}] of the "
            f"pruned dim instead of {should}: its bounds do not follow the kept channels "
            "(numbers written in the code, or computed from a config every layer shares?)")


def _head_dim(node: Node) -> float | None:
    """The head width of a ``multi_head_attention_forward`` call with several heads (its
    query's width over ``num_heads``), else None."""
    query = mha_call_query(node)
    return query[1] / query[2] if query is not None and query[2] > 1 else None


def _numbers(node: Node) -> tuple:
    """The plain numbers an op computes with: an elementwise op's number arguments, an
    attention's explicit ``scale``."""
    if node.op_type is OpType.ATTENTION:
        scale = getattr(node.meta, "scale", None)
        return () if scale is None else (scale,)
    return node.attrs.get("scalars", ()) if node.op_type is OpType.ELEMENTWISE else ()


def attribute_reads(model: nn.Module, inputs) -> dict[str, set[str]]:
    """Run ``model`` (a throwaway copy: its modules' classes are swapped for the run) once
    and log which of their public attributes its modules' code reads: module path -> names
    read. Only modules whose class is not torch's own (torch's layers' attributes are set
    by their handlers) and that hold public attributes are logged; a class that cannot be
    subclassed, or a module whose class cannot be swapped, is left out (absent: nothing
    known of it)."""
    log: dict[int, tuple[set[str], set[str]]] = {}  # id(module) -> (watched, read)
    made: dict[type, type | None] = {}
    swapped: list[tuple[nn.Module, type, str]] = []
    for path, mod in model.named_modules():
        cls = type(mod)
        watch = {k for k in vars(mod) if not k.startswith("_")}
        if cls.__module__.startswith("torch.") or not watch:
            continue
        if cls not in made:
            def getattribute(self, name, _get=cls.__getattribute__):
                entry = log.get(id(self))
                if entry is not None and name in entry[0]:
                    entry[1].add(name)
                return _get(self, name)

            try:
                made[cls] = type(cls.__name__, (cls,), {"__getattribute__": getattribute,
                                                        "__module__": cls.__module__})
            except Exception:  # noqa: BLE001 (a class that refuses subclasses)
                made[cls] = None
        if made[cls] is None:
            continue
        try:
            mod.__class__ = made[cls]
        except TypeError:
            continue
        log[id(mod)] = (watch, set())
        swapped.append((mod, cls, path))
    try:
        run(model, inputs)
    finally:
        for mod, cls, _ in swapped:
            mod.__class__ = cls
    return {path: log[id(mod)][1] for mod, _, path in swapped}


def _raising_modules(exc: BaseException, model: nn.Module) -> tuple[str, ...]:
    """The paths of ``model``'s modules whose own code is on ``exc``'s traceback (a frame
    whose ``self`` is one of them), innermost first."""
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    tb = exc.__traceback__
    while tb is not None:
        me = tb.tb_frame.f_locals.get("self")
        if me is not None and id(me) in names:
            out.append(names[id(me)])
        tb = tb.tb_next
    return tuple(reversed(dict.fromkeys(out)))


def _raised_at(exc: BaseException) -> str:
    """Where an exception without a message (a bare ``assert``) was raised: the file, line and
    code of the innermost frame."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    f = tb[-1]
    return f"at {Path(f.filename).name}:{f.lineno}: {(f.line or '').strip()[:120]}"


#: how the reasons of groups whose channels another group prunes begin: a joined group's
#: other parts, a whole-heads retry that found another group's heads
_JOINED = "pruned with group "

_TAKEN = "as whole heads, its channels are group "

#: said of a group that fails whose channels a prunable group holds
_ELSEWHERE = "its channels are pruned all the same, by group"


def _scope(layer: str) -> str:
    """The module a layer sits in: its path without the last name."""
    return layer.rpartition(".")[0]


def _shares_a_layer(a: Group, b: Group) -> bool:
    """Do ``a`` and ``b`` share a layer other than ``a``'s root? (An attention and the stream
    it reads and writes share its projections; the previous stage's stream shares only the
    layer that makes ``a``'s channels from it.)"""
    held = {m.node for m in a.members if m.node_name != a.root}
    return any(m.node in held for m in b.members)


def _joined_reason(into: Group, why: str) -> str:
    """The reason of a group whose channels the joined group ``into`` prunes."""
    return f"{_JOINED}#{into.id} ('{into.root}'), whose units it shares: {why}"


def _unit_kinds(g: Group) -> tuple[np.ndarray, np.ndarray] | None:
    """The units of ``g`` made one when unit i of every kind is (see
    :meth:`Pruner._pair_unit_kinds`): for each unit of the kinds of the most common size,
    its new label (the others' entries are unused), and the units of the other kinds. None
    unless two or more kinds have one size of at least 2 units. A unit's kind is the set of
    tensors it reaches."""
    reach: list[set] = [set() for _ in range(g.n_units)]
    for key, (_, unit) in g.tensors.items():
        for u in unique(unit):
            reach[int(u)].add(key)
    kinds: dict[frozenset, list[int]] = {}
    for u, keys in enumerate(reach):
        kinds.setdefault(frozenset(keys), []).append(u)
    by_size: dict[int, list[list[int]]] = defaultdict(list)
    for us in kinds.values():
        by_size[len(us)].append(us)
    # the size whose kinds hold the most units (the larger size on a tie)
    n = max((n for n, ks in by_size.items() if n >= 2 and len(ks) >= 2),
            key=lambda n: (n * len(by_size[n]), n), default=None)
    if n is None:
        return None
    label = np.zeros(g.n_units, dtype=np.int64)
    for us in by_size[n]:
        label[us] = np.arange(n)
    rest = [u for m, ks in by_size.items() if m != n for us in ks for u in us]
    return label, np.array(sorted(rest), dtype=np.int64)


def _relabelled(g: Group, label: np.ndarray) -> Group:
    """``g`` with unit u renamed ``label[u]`` (units given one label become one)."""
    def new(unit: np.ndarray) -> np.ndarray:
        out = label[unit]
        out.flags.writeable = False
        return out

    return dataclasses.replace(
        g, n_units=int(label.max()) + 1,
        members=[dataclasses.replace(m, unit=new(m.unit)) for m in g.members],
        tensors={key: (pos, new(unit)) for key, (pos, unit) in g.tensors.items()},
        reasons=list(g.reasons), stats_notes=list(g.stats_notes),
        multiple_why=list(g.multiple_why))


def _bundled(g: Group, k: int) -> Group:
    """``g`` with every ``k`` consecutive units made one (``g.n_units`` a multiple of ``k``):
    units ``k*i .. k*i+k-1`` become unit i."""
    if k == 1:
        return g
    return _relabelled(g, np.arange(g.n_units, dtype=np.int64) // k)


def _joined(a: Group, b: Group) -> Group:
    """One group of two with as many units: unit i of ``b`` is unit i of ``a`` (see
    :meth:`Pruner._join_shared_sizes`), in ``a``'s place and id."""
    def cat(x: tuple[np.ndarray, np.ndarray], y: tuple[np.ndarray, np.ndarray]):
        pos, unit = np.concatenate([x[0], y[0]]), np.concatenate([x[1], y[1]])
        order = np.argsort(pos, kind="stable")
        pos, unit = pos[order], unit[order]
        pos.flags.writeable = unit.flags.writeable = False
        return pos, unit

    members: dict[tuple[int, str, int, int], Member] = {}
    for m in a.members + b.members:
        key = (m.node, m.side, m.dim, m.port)
        if key in members:
            old = members[key]
            pos, unit = cat((old.pos, old.unit), (m.pos, m.unit))
            members[key] = dataclasses.replace(m, pos=pos, unit=unit)
        else:
            members[key] = m
    tensors = dict(a.tensors)
    for k, v in b.tensors.items():
        tensors[k] = cat(tensors[k], v) if k in tensors else v
    exact = a.exact and b.exact
    return Group(a.id, a.root, a.root_side, a.n_units,
                 sorted(members.values(), key=lambda m: (m.node, m.side, m.port)), tensors, [],
                 exact, a.stats_notes + b.stats_notes, a.multiple_of,
                 list(dict.fromkeys(a.multiple_why + b.multiple_why)),
                 not exact and (a.exact or a.opaque_only) and (b.exact or b.opaque_only),
                 *max((a.min_kept, a.min_kept_why), (b.min_kept, b.min_kept_why)))


def _overlap(a: Group, b: Group) -> bool:
    """Do two groups claim a position of the same tensor dim?"""
    return any(np.intersect1d(a.tensors[k][0], b.tensors[k][0]).size
               for k in a.tensors.keys() & b.tensors.keys())


def _mirrored(a: Group, b: Group) -> bool:
    """Is ``b`` group ``a`` one block on: the same members (op types, sides, dims, widths) at
    one fixed node id offset, with as many units?"""
    if len(a.members) != len(b.members) or a.n_units != b.n_units or not a.members:
        return False
    delta = b.members[0].node - a.members[0].node
    return delta != 0 and all(
        y.node - x.node == delta and x.side == y.side and x.dim == y.dim
        and x.op_type == y.op_type and len(x.pos) == len(y.pos)
        for x, y in zip(a.members, b.members, strict=True))


#: validation may probe a model of at most this many bytes of tensors on real tensors (a
#: pruned copy is made per probe); larger ones always run on meta
REAL_PROBE_BYTES = 16 << 20


#: ... and whose traced ops output at most this many elements in all (a real forward's cost
#: grows with them, a meta one's does not)
REAL_PROBE_ELEMENTS = 50_000_000

#: a probe that ran real copies of a model of at least this many bytes collects them at once
COLLECT_BYTES = 64 << 20


def _activation_elements(graph: Graph) -> int:
    return sum(math.prod(s) for n in graph.nodes for s in n.out_shapes)


def _equal_items(v, value: int) -> list[int]:
    """The indices of the int items equal to ``value`` when ``v`` is a list or tuple no
    longer than plan.json records (an attribute's stored sizes), else none."""
    if type(v) not in (list, tuple) or len(v) > MAX_LISTED:
        return []
    return [i for i, x in enumerate(v) if type(x) is int and x == value]


class GroupValidation:
    """The validation half of ``Pruner`` (see the module), mixed into it: it reads the
    pruner's ``model``, ``inputs``, ``graph`` and ``groups``, keeps its results in the
    pruner's caches (``_validated``, ``_probe_results``, ...), and cuts with its ``cuts``,
    ``changes``, ``widths`` and ``size_attrs``."""

    def validate_groups(self) -> dict[int, str]:
        """Shrink each structurally prunable group by its first unit, then by its last (and,
        through slices of its dim, by a unit in each part of them those two did not reach:
        :func:`_inner_runs`; through a slice or split whose bounds the forward computes from
        the width, by the most units a plan may remove: :meth:`_several_units`), on the meta
        device and run the model; a group whose pruned model fails or reads
        other positions (a hard-coded view/split size or slice, ...: :func:`_moved`) is
        marked not prunable with the error. Cached.

        A failing group that shrinks a ``split(size)`` or an explicit ``view``/``reshape`` size
        gets one more chance: the size may be a module attribute (GPT-2's ``split_size``,
        BLOOM's ``head_dim``). The attributes of the module that ran the op which equal the
        size are candidates; the fewest that make the model run when set to the new size
        become the group's :class:`SizeAttr` (see :meth:`sets`), which every apply then sets.
        Nothing is set that the model ran without. A group still broken is retried with the
        reshapes the shapes leave open split at their outer dim (:func:`outer_alternative`:
        whole heads instead of head dims); the retry takes the group's place and id only if
        it runs and overlaps no other prunable group.

        All pending groups are first shrunk together in one run; only when that fails are they
        split in halves (down to single groups) to find the ones that break the model, so a
        model whose groups are all fine costs one meta forward instead of one per group.

        On meta many ops are Python shape inference (an add 0.2 ms, a LayerNorm 1.6 ms, the
        first time a probe's traces make that call: see :func:`build_graph`), and a recurrent
        layer runs step by step (a GRU over 100 steps: about 1 s per probe): a small model
        with real weights runs a pruned copy for real faster (the RNN demo's validation:
        27 ms against 307 ms). A real probe copies the model's tensors, so the larger model
        is faster on meta (GPT-2 small pruned to 156 MB: 1.9 s against 6 s; ConvNeXt-T,
        106 MB: 1.4 s against 2.9 s; at 19 MB, MobileViT, they are even). So a model with at
        most ``REAL_PROBE_BYTES`` of tensors and ``REAL_PROBE_ELEMENTS`` activation elements
        in its trace runs every probe for real; larger ones run on meta. The choice depends on the
        model alone, never on timings, so validation stays deterministic; a real run checks
        at least what a meta one does. (Previews still count MACs on meta: torch's fused CPU
        kernels for LSTM and attention hide their matmuls from the flop counter.)

        A group the validation changes (made inexact, swapped for its retry, joined with
        another) stays the object that was in ``groups`` before, updated in place
        (:meth:`_keep_held`): a caller holding it (``for g in pruner.groups: pruner.reason(g)``,
        whose first call validates) reads what the plans use."""
        held = {g.id: g for g in self.groups}

        def attempt(gs: list[Group], sets: dict[int, list[SizeAttr]] | None = None) -> str:
            """The groups shrunk by their first units, then by their last, then those through
            slices by a unit in each part of them not reached yet (:func:`_inner_runs`), then
            those through computed bounds by the most units a plan may remove
            (:meth:`_several_units`: known once a probe above moved them); "" if all run."""
            for end in self._probe_ends(gs):
                err = probe(gs, sets, end)
                if err:
                    return err
            return ""

        def probe(gs: list[Group], sets: dict[int, list[SizeAttr]] | None, end: str) -> str:
            units = {g.id: u for g in gs if (u := self._probe_units(g, end))}
            if not units:
                return ""
            err = self._probe(Plan(units), [g for g in gs if g.id in units], sets)
            return err + self._several_hint(gs, units) if err and end == "several" else err

        repaired: list[tuple[list[SizeAttr], list[SizeAttr]]] = []  # (candidates, choice)
        unrepaired: list[list[SizeAttr]] = []  # candidates none of which made a group run
        # group id -> the stored sizes that did not make it run, and whether that was seen on
        # the same block one layer back: the reason says so (a size two groups read, as PVT's
        # attention_head_size for q/k and for v, cannot follow one of them)
        not_run: dict[int, tuple[list[SizeAttr], bool]] = {}

        def repair(g: Group) -> bool:
            """A group that fails alone: if it shrinks a split or view size that equals integer
            attributes of the module that ran it, find the fewest of those that, set to the
            new size, make the model run (all of them first, or else each alone; then drop
            each one the model runs without). A group whose candidates mirror a repaired
            group's (the same block one layer on: :func:`_analogous_choice`) tries that
            group's choice first and keeps it if the model runs: two probes instead of five
            or more per layer (HF GPT-2's 12 attention groups)."""
            found = self._size_attr_candidates(g)
            if not found:
                return False
            like = _analogous_choice(found, repaired)
            if like and not attempt([g], {g.id: like}):
                # the next layer of a repaired block: the same choice, shifted, runs
                self._sets[g.id] = like
                repaired.append((found, like))
                return True
            if any(_mirrors(c, found) for c in unrepaired):
                not_run[g.id] = (found, True)
                return False  # the same block one layer back: none of these made it run
            candidates = found
            # attributes equal to the sizes first: the divisors of a slice's or a split
            # part's range (``span``) are many, and a few of them break what those fix
            # (HF Mamba2's conv_dim and ssm_state_size)
            plain = [r for r in found if r.span is None]
            if plain and len(plain) < len(found) and not attempt([g], {g.id: plain}):
                found = plain
            elif attempt([g], {g.id: found}):
                # setting them all breaks something else (an equal attribute read elsewhere):
                # one of them alone may be it
                single = next((rs for rs in _singles(found) if not attempt([g], {g.id: rs})),
                              None)
                if single is None:
                    # or the fewest kinds that run (each one the same attribute of every
                    # layer of a joined group), already as few as run: one item for each
                    # attribute (the slice bounds that gave it equal values), if that runs
                    def runs(rs: list[SizeAttr]) -> bool:
                        return not attempt([g], {g.id: rs})

                    kinds = None
                    if plain and len(plain) < len(found):
                        # the attributes equal to the sizes first, here too: a divisor
                        # candidate may set an attribute to a value its equal-size one
                        # contradicts (HF Bamba's ssm_state_size, whose mixer loses whole
                        # heads and state dims, beside a chunk_size of the same size)
                        kinds = _fewest_kinds(plain, runs)
                    if kinds is None:
                        kinds = _fewest_kinds(found, runs)
                    if kinds is not None:
                        first: dict[tuple[str, str], SizeAttr] = {}
                        for r in kinds:
                            first.setdefault((r.module, r.attr), r)
                        one = list(first.values())
                        self._sets[g.id] = kinds if attempt([g], {g.id: one}) else one
                        repaired.append((candidates, self._sets[g.id]))
                        return True
                if single is None:
                    unrepaired.append(found)
                    not_run[g.id] = (found, False)
                    return False
                found = single
            # none needed at all (a residual stream that failed only beside other groups):
            # one probe, instead of one per candidate (two per layer of a decoder)
            if len(set(found)) > 1 and not attempt([g], {g.id: []}):
                found = []
            # a norm's shape read with the weight the group prunes (ConvNeXt's LayerNorm2d:
            # F.layer_norm(x, self.normalized_shape, self.weight)) must follow: not dropped
            members = {m.module for m in g.members}
            found = _only_needed(found, lambda rs: not attempt([g], {g.id: rs}),
                                 keep=lambda r: r.boxed and r.module in members)
            self._sets[g.id] = found
            repaired.append((candidates, found))
            return True

        swapped: dict[int, tuple[Group, str]] = {}  # id -> (group as found, its error)
        unprobed: set[int] = set()  # swapped ids whose retry was not run (see try_outer)

        def try_outer(g: Group, err: str) -> bool:
            """A group that stays broken: try, in its place, the same root's group with the
            reshapes the shapes leave open split at their outer dim (whole heads); then, if
            that gives none or it fails, with the ``-1`` of a reshape split there too:
            ``view(b, t, self.h, -1)`` leaves the head dim to its ``-1``, and whole heads
            run once ``h`` follows (their scale ``1/sqrt(q.size(-1))`` stays)."""
            first = outer_alternative(self.graph, g)
            if first is not None and try_alt(g, err, first):
                return True
            alt = outer_alternative(self.graph, g, over_inferred=True)
            if alt is None or first is not None and same_members(alt, first):
                return False
            return try_alt(g, err, alt)

        def try_alt(g: Group, err: str, alt: Group) -> bool:
            if alt.reasons or alt.n_units <= 1:
                return False
            i = self.groups.index(g)
            self.groups[i] = alt
            had = not_run.get(g.id)  # (the alternative's own repair may overwrite it)
            if any(o.id in swapped and o.id < alt.id and not self._validated.get(o.id)
                   and _overlap(alt, o) for o in self.groups):
                # whole heads an earlier group's retry prunes (an attention's v after its
                # q): this one yields to it below, unprobed, and is probed only if that one
                # is undone (two probes less for each attention of a diffusers UNet)
                swapped[alt.id] = (g, err)
                unprobed.add(alt.id)
                return True
            if _analogous_choice(self._size_attr_candidates(alt), repaired):
                # the previous layer's retry needed its stored sizes: so will this one's
                fixed = repair(alt) or not attempt([alt])
            else:
                fixed = not attempt([alt]) or repair(alt)
            if fixed:
                swapped[alt.id] = (g, err)
                return True
            self.groups[i] = g
            # what the group as found failed with, not its alternative: a join of two
            # groups that share a stored size reads it (Table Transformer's head_dim, which
            # its q/k and its v both view by, where the whole-heads retry sets num_heads)
            if had is None:
                not_run.pop(g.id, None)
            else:
                not_run[g.id] = had
            return False

        raised_failed: list[list[SizeAttr]] = []  # what repair_raised tried in vain

        def repair_raised(g: Group) -> bool:
            """A group still broken after :func:`repair` and :func:`try_outer`: the size may
            be one that the code of the module that raised compares a width with
            (:meth:`_raised_candidates`). Those candidates are tried alone, then with the ones
            :func:`repair` found; when setting them moves the error into another module, that
            module's are added (up to 4 modules); then each one the model runs without is
            dropped."""
            first = self._size_attr_candidates(g)
            attempt([g])  # (a result kept from before) where the group's own error was raised
            at = self._raised_in
            for base in ([], first) if first else ([],):
                cands: list[SizeAttr] = []
                raised_in = at
                for _ in range(4):
                    new = [r for r in self._raised_candidates(g, raised_in)
                           if r not in cands and r not in base]
                    if not new or any(_mirrors(c, base + cands + new) for c in raised_failed):
                        break
                    cands += new
                    if not attempt([g], {g.id: base + cands}):
                        found = _only_needed(base + cands,
                                             lambda rs: not attempt([g], {g.id: rs}))
                        self._sets[g.id] = found
                        repaired.append((base + cands, found))
                        not_run.pop(g.id, None)
                        return True
                    raised_in = self._raised_in
                if cands:
                    raised_failed.append(base + cands)
            return False

        def with_stored_sizes(gs: list[Group]) -> bool:
            """A batch that fails may run once every size its groups shrink is set from the
            attributes it may have been read from (HF MobileViT: 9 groups, each with its
            attention's ``all_head_size``). Then each of those groups finds its own
            (:func:`repair`) instead of the batch being halved down to single groups; the
            others, which may have run only because another group's size was set, are checked
            again as a batch of their own."""
            found = {g.id: c for g in gs if (c := self._size_attr_candidates(g))}
            if not found or attempt(gs, found):
                return False
            rest = [g for g in gs if g.id not in found]
            for g in gs:
                if g.id in found:
                    if repair(g):
                        self._validated[g.id] = ""
                    else:
                        check([g])
            if rest:  # they ran with the others' sizes set: each group must run without them
                check(rest)
            return True

        failed: list[Group] = []  # groups that failed alone, every retry included

        def check(gs: list[Group]) -> None:
            if len(gs) > 1 and failed:
                # the same block one layer on as a group that failed alone (the v head dims
                # of every layer of a one-kv-head decoder): checked alone first, and the
                # rest as one batch, instead of failing every batch they are in until it is
                # halved down to groups run one by one (a 32-layer MQA Llama: 19 s, 5 s now)
                like = [g for g in gs if any(_mirrored(f, g) for f in failed)]
                if like and len(like) < len(gs):
                    for g in like:
                        check([g])
                    check([g for g in gs if g not in like])
                    return
            err = attempt(gs)
            if err and len(gs) == 1 and (repair(gs[0]) or try_outer(gs[0], err)
                                         or repair_raised(gs[0])):
                err = ""
            elif err and len(gs) == 1 and gs[0].id in not_run:
                err += _not_run_hint(*not_run[gs[0].id])
            if err and len(gs) > 1 and with_stored_sizes(gs):
                return
            if not err and len(gs) > 1:
                # a size read from another group's tensor (``reshape(B, C, -1)`` with ``C =
                # x.shape[2]``) follows when both shrink at once: a group that shrinks a size
                # written into a call must also run alone, and when one fails alone, the
                # others (the one whose width was read, unseen) must too
                alone = [g for g in gs if fixed_sizes(self.graph, g)]
                for g in alone:
                    check([g])
                coupled = any(self._validated.get(g.id) for g in alone)
                for g in gs:
                    if g not in alone:
                        if coupled:
                            check([g])
                        else:
                            self._validated[g.id] = ""
            elif not err or len(gs) == 1:
                for g in gs:
                    self._validated[g.id] = err
                if err:
                    failed.append(gs[0])
            elif len(gs) <= 8:  # few left: one run each is cheaper than halving further
                for g in gs:
                    check([g])
            else:
                half = len(gs) // 2
                check(gs[:half])
                check(gs[half:])

        self._validation_ran = True
        blocked = self._outer_instead_of_blocked()
        pending = [g for g in self.groups if g.id not in self._validated and not g.reason]
        if pending:
            check(pending)
        # an alternative must not share channels with another prunable group: the groups
        # stay a partition (two layers' alternatives that found the same heads keep one)
        for gid in sorted(swapped):
            i = next(k for k, g in enumerate(self.groups) if g.id == gid)
            alt = self.groups[i]
            for o in self.groups:
                if o.id == gid or o.reason or self._validated.get(o.id) or not _overlap(alt, o):
                    continue
                if o.id in swapped and o.id > gid:
                    continue  # that one yields to this one
                if o.id in swapped:
                    self._validated[gid] = (f"{_TAKEN}#{o.id}'s, "
                                            "which prunes them")
                    self._sets.pop(gid, None)  # (it prunes nothing: it sets nothing)
                else:
                    self.groups[i], self._validated[gid] = swapped[gid]
                    self._sets.pop(gid, None)
                break
            else:
                if gid in unprobed and (attempt([alt]) and not repair(alt)):
                    # (the retry it yielded to was undone: it runs on its own, or not at all)
                    self.groups[i], self._validated[gid] = swapped[gid]
                    self._sets.pop(gid, None)
        self._join_shared_sizes(not_run, attempt)
        if pending:  # (what this call validated: a later call finds nothing new to join)
            paired = self._pair_unit_kinds(attempt, repair)
            # a join may meet a width a module's own code checks (FocalNet's downsampling
            # patch embedding compares its input's channels with num_channels)
            self._join_tied_widths(attempt, lambda g: repair(g) or repair_raised(g), paired)
            self._part_instead(attempt, repair)
        # an alternative that does not run, not even joined (EVA's whole heads join its
        # stream, whose width reshape(B, N, C) reads): the group as found comes back
        for i, g in enumerate(self.groups):
            err = self._validated.get(g.id)
            if g.id in blocked and err and not err.startswith(_JOINED):
                self.groups[i] = blocked[g.id]
                del self._validated[g.id]
                self._sets.pop(g.id, None)
        self._inexact_where_a_number_moved(attempt)
        self._note_pruned_elsewhere()
        self._keep_held(held)
        return {k: v for k, v in self._validated.items() if v}

    def _keep_held(self, held: dict[int, Group]) -> None:
        """Put back in ``groups`` the objects ``held`` (id -> the group there before
        validation), each given the fields of the group now in its place. Validation swaps
        groups by ``dataclasses.replace`` and restores the one it had when a try fails, so
        it keeps working on copies; only its outcome is copied into the object callers may
        hold. The fields are shared, not copied: index arrays stay read-only and shared."""
        for i, g in enumerate(self.groups):
            old = held.get(g.id)
            if old is not None and old is not g:
                for f in dataclasses.fields(old):
                    setattr(old, f.name, getattr(g, f.name))
                self.groups[i] = old

    def _inexact_where_a_number_moved(self, attempt: Callable) -> None:
        """A group still blocked only because a number its forward derives from the width
        moved, once every retry above failed (a one-head attention's ``/ math.sqrt(
        k.size(-1))``, whose whole-heads retry has nothing to take), prunes as an inexact
        group, as the same default scale of ``F.scaled_dot_product_attention`` or
        ``nn.MultiheadAttention`` does: the pruned model runs, and differs from the masked
        original by that number. Only if it then runs with nothing else moved."""
        for i, g in enumerate(self.groups):
            m = _ONLY_NUMBER_MOVED.match(self._validated.get(g.id) or "")
            if m is None or not g.exact:
                continue
            note = (f"'{m['name']}' computes with a number the forward derives from the pruned "
                    "width (an attention scale 1/sqrt(head_dim)?)")
            self.groups[i] = dataclasses.replace(g, exact=False,
                                                 stats_notes=[*g.stats_notes, note])
            if attempt([self.groups[i]]):
                self.groups[i] = g
            else:
                self._validated[g.id] = ""

    def _note_pruned_elsewhere(self) -> None:
        """A group that failed validation whose channels a prunable group holds says so:
        XGLM's q/k head dims fail (v's view reads the same ``head_dim``), while whole heads
        of q, k and v prune as one group; the reason alone read as if those channels could
        not go at all."""
        ok = [g for g in self.groups if g.prunable and not self._validated.get(g.id)]
        for g in self.groups:
            err = self._validated.get(g.id)
            if not err or err.startswith((_JOINED, _TAKEN)) or _ELSEWHERE in err:
                continue
            o = next((o for o in ok if _overlap(g, o)), None)
            if o is not None:
                heads = " as whole heads" if units_are_heads(self.graph, o) else ""
                self._validated[g.id] = f"{err}; {_ELSEWHERE} #{o.id} ('{o.root}'){heads}"

    def _outer_instead_of_blocked(self) -> dict[int, Group]:
        """Put in the place (and id) of each group the search found blocked its outer
        alternative (:func:`outer_alternative` over ``-1`` too) when that one is not blocked
        and shares no channel with a group that is not: Falcon-40B's ``view(b, s,
        self.num_kv_heads, -1, head_dim)`` made the search follow the ``-1`` (each kv
        group's q heads, k and v), where ``[..., -2, :]`` selects k; whole kv groups pass.
        Validation then checks them as any group; returns id -> the blocked group, which
        comes back if its alternative does not run."""
        out: dict[int, Group] = {}
        for i, g in enumerate(self.groups):
            if not g.reasons or g.id in self._validated or g.n_units <= 1 or \
                    g.id in self._outer_tried:
                continue
            self._outer_tried.add(g.id)  # (plan() validates again: one search per group)
            alt = outer_alternative(self.graph, g, over_inferred=True)
            if alt is None or alt.reason:
                alt = part_alternative(self.graph, g) or alt
            if alt is None or alt.reason or any(
                    o is not g and not o.reason and _overlap(alt, o) for o in self.groups):
                continue
            out[g.id] = g
            self.groups[i] = alt
        return out

    def _join_shared_sizes(self, not_run: dict[int, tuple[list[SizeAttr], bool]],
                           attempt: Callable) -> None:
        """Two groups that each failed although the attribute of the size they shrink was set
        may shrink one size together: a non-local block's ``inter_channels`` is read for its
        g and for its theta/phi projections, PVT's ``attention_head_size`` for q/k and for v.
        Each alone breaks the other's reshape; pruned by the same number of units, with the
        attribute set, both follow. Such a pair (same unit count, an attribute in common)
        becomes one group, unit i of the first with unit i of the second (any pairing keeps
        the counts equal), in the first one's place and id, if the model runs; the second
        stays, not prunable, saying where its channels went. Found by validation, as the
        attributes are: nothing is joined that did not fail apart and run together."""
        by_id = {g.id: g for g in self.groups}
        fails = [gid for gid in sorted(not_run) if self._validated.get(gid) and gid in by_id]
        # an attribute more failing groups read (a config every layer shares: Phi-3's
        # num_attention_heads) cannot follow two of them: a pair is not tried for it (it
        # was, for each pair of layers); joining them all is _join_tied_widths' work
        readers = Counter(n for gid in fails for n in {(r.module, r.attr)
                                                       for r in not_run[gid][0]})
        joined: set[int] = set()
        for i, a_id in enumerate(fails):
            if a_id in joined:
                continue
            a, found_a = by_id[a_id], not_run[a_id][0]
            names = {(r.module, r.attr) for r in found_a if readers[(r.module, r.attr)] == 2}
            for b_id in fails[i + 1:]:
                b, found_b = by_id[b_id], not_run[b_id][0]
                shared = names & {(r.module, r.attr) for r in found_b}
                if b_id in joined or b.n_units != a.n_units or \
                        b.multiple_of != a.multiple_of or not shared:
                    continue
                both = _joined(a, b)
                found = found_a + [r for r in found_b if r not in found_a]
                at = next(k for k, g in enumerate(self.groups) if g.id == a_id)
                self.groups[at] = both
                if attempt([both], {a_id: found}):
                    self.groups[at] = a
                    continue
                # as a repair does: only what it needs, and one at least (what paired them)
                found = _only_needed(found, lambda rs, both=both, a_id=a_id:
                                     bool(rs) and not attempt([both], {a_id: rs}))
                self._sets[a_id] = found
                self._validated[a_id] = ""
                # (named by what was set: a candidate both had may not have been needed)
                what = ", ".join(sorted(f"{m}.{n}" if m else n for m, n in
                                        shared & {(r.module, r.attr) for r in found} or shared))
                self._validated[b_id] = _joined_reason(
                    a, f"both shrink the size {what} holds, so they lose the same number of "
                       "units")
                joined |= {a_id, b_id}
                break

    def _runs_instead(self, old: Group, new: Group, attempt: Callable,
                      repair: Callable) -> bool:
        """Put ``new`` in ``old``'s place (same id) and check it as any group is (first and
        last units), with the stored sizes a repair finds when it needs them. If the model
        does not run, ``old`` and its stored sizes are put back."""
        at = next(k for k, g in enumerate(self.groups) if g.id == old.id)
        self.groups[at] = new
        had = self._sets.get(old.id)
        if not attempt([new]) or repair(new):
            return True
        self.groups[at] = old
        if had is None:
            self._sets.pop(old.id, None)
        else:
            self._sets[old.id] = had
        return False

    def _part_instead(self, attempt: Callable, repair: Callable) -> None:
        """A group still broken after every other try, whose root's output a split takes
        apart: the group of its largest part alone (:func:`part_alternative`), in its place
        and id if the model runs with it and it shares no channel with a group that prunes.
        A fused multi-query projection viewed ``(..., -1, head_dim)`` and split ``[heads, 1,
        1]``: its q heads and the one k and v head were units alike, and removing k's or v's
        broke the split; the q rows alone prune by whole heads (their count set as a repair
        finds it), and the shared k and v stay."""
        by_id = {g.id: g for g in self.groups}
        for gid, err in sorted(self._validated.items()):
            g = by_id.get(gid)
            if not err or err.startswith((_JOINED, _TAKEN)) or g is None or g.reason or \
                    g.n_units < 2:
                continue
            alt = part_alternative(self.graph, g)
            if alt is None or any(o.id != gid and not o.reason and not self._validated.get(o.id)
                                  and _overlap(alt, o) for o in self.groups):
                continue
            if self._runs_instead(g, alt, attempt, repair):
                self._validated[gid] = ""

    def _pair_unit_kinds(self, attempt: Callable, repair: Callable
                         ) -> dict[int, tuple[Group, Group]]:
        """A broken group whose units are of several kinds, as many of each, each kind
        reaching its own tensors: a fused multi-query projection's q/k head dims (q's dim d
        in every head with k's dim d) and its v head dims, both sized by one stored
        ``kv_dim`` (``split((embed_dim, kv_dim, kv_dim))``). Removing units of one kind alone
        breaks the size the other reads; removing as many of each keeps it whole. So unit i
        of every kind becomes one unit, and the group is tried again (its stored sizes set
        as a repair finds them), in its place and id if the model runs.

        Units of other kinds (FocalNet's ``split(x, (C, C, focal_level + 1))``: q and
        context channels, 8 each, and one gate per level) leave as a group of their own,
        appended, validated alone. A paired group that still fails alone (its C is the
        stream's width) is returned, with those units, by id: :meth:`_join_tied_widths`
        tries it in the group's place."""
        by_id = {g.id: g for g in self.groups}
        alternatives: dict[int, tuple[Group, Group]] = {}
        for gid, err in sorted(self._validated.items()):
            g = by_id.get(gid)
            if not err or err.startswith((_JOINED, _TAKEN)) or g is None or g.reason or \
                    g.n_units < 4 or g.multiple_of != 1:
                continue
            kinds = _unit_kinds(g)
            if kinds is None:
                continue
            label, rest = kinds
            if not len(rest):
                if self._runs_instead(g, _relabelled(g, label), attempt, repair):
                    self._validated[gid] = ""
                continue
            paired, others = split_blocked(g, rest, g.id, len(self.groups))
            keep = np.ones(g.n_units, dtype=bool)
            keep[rest] = False
            paired = _relabelled(paired, label[keep])
            if self._runs_instead(g, paired, attempt, repair):
                self._validated[gid] = ""
                self._add_group(others, attempt)
            else:
                alternatives[gid] = (paired, others)
        return alternatives

    def _add_group(self, g: Group, attempt: Callable) -> None:
        """Append ``g`` (the next id) with its own validation: what a probe of it alone says."""
        g = dataclasses.replace(g, id=len(self.groups))
        self.groups.append(g)
        self._validated[g.id] = "" if g.reason else attempt([g])

    def _join_tied_widths(self, attempt: Callable, repair: Callable,
                          paired: dict[int, tuple[Group, Group]]) -> None:
        """Widths tied through a size read from a tensor's shape: nanoGPT's attention takes
        ``B, T, C = x.size()`` from the residual stream and views q, k and v as
        ``(B, T, n_head, C // n_head)``; timm's ends with ``reshape(B, N, C)``. Shrinking the
        stream alone, or one attention's head dims alone, breaks those views; shrinking the
        stream by ``n_head`` channels for every head dim each attention loses keeps them all
        whole. So a failed group (the anchor, most units first) is tried joined with every
        other failed group of one unit count that divides its own (most first): each
        anchor unit count / that count of its units bundled into one unit (its units
        ``k*i .. k*i+k-1`` with unit i of each other group), the stored sizes they read set
        as a repair finds them. The join takes the anchor's place and id only if the model
        runs with it (first and last units, as any group is checked); the others then say
        which group prunes their channels. A join that does not run is not tried again
        from one of its other groups of as many units. A group with units of several kinds
        joins as ``paired`` has it (:meth:`_pair_unit_kinds`); the units that left it then
        become a group of their own."""
        by_id = {g.id: g for g in self.groups}
        fails = [paired[gid][0] if gid in paired else g
                 for gid, err in sorted(self._validated.items())
                 if err and not err.startswith((_JOINED, _TAKEN))
                 and (g := by_id.get(gid)) is not None and not g.reason and g.n_units > 1]
        joined: set[int] = set()
        tried: set[int] = set()  # anchors of a join that did not run, and its other groups
        for a in sorted(fails, key=lambda g: (-g.n_units, g.id)):
            if a.id in joined or a.multiple_of != 1:
                continue
            sizes = sorted({g.n_units for g in fails if g.id not in joined | {a.id}
                            and a.n_units % g.n_units == 0}, reverse=True)
            for n in sizes:
                if n == a.n_units and a.id in tried:
                    # (a join of groups of its own count failed from another of them; one of
                    # fewer units may still join it: CoaT's stage streams, each with its own
                    # attention's head dims)
                    continue
                others = [g for g in fails if g.n_units == n and g.id not in joined | {a.id}]
                if len({g.multiple_of for g in others}) != 1:
                    continue
                # those that share a layer with the anchor first (the attentions a stage's
                # stream feeds, not a later stage's of as many head dims: DaViT, Twins), then
                # those under its own parent module (an attention's q and v: a VAE's encoder
                # and decoder attention are not tied to each other)
                linked = [b for b in others if _shares_a_layer(a, b)]
                near = [b for b in others if _scope(b.root) == _scope(a.root)]
                first = next((c for c in (linked, near) if c and len(c) < len(others) and
                              self._runs_instead(by_id[a.id], self._tied(a, c), attempt,
                                                 repair)), None)
                if first is not None:
                    others = first
                elif not self._runs_instead(by_id[a.id], self._tied(a, others), attempt,
                                            repair):
                    # the same join from another of as many units would fail alike (the
                    # layers of timm's ViT over an input that cannot shrink: one try, not one
                    # a layer); a smaller one may still join groups of its own
                    tried |= {b.id for b in others if b.n_units == a.n_units}
                    continue
                self._mark_joined(a, others, joined, paired, attempt)
                break
            else:
                # no join of one unit count ran: those of every count that share a layer
                # with the anchor, together (Twins' and PVT v2's attention: the stream, the
                # spatial reduction conv that reads it and the head dims, whose views all
                # take C from the stream's shape), each bundled to the fewest units
                linked = [g for g in fails if g.id not in joined | {a.id}
                          and a.n_units % g.n_units == 0 and g.multiple_of == 1
                          and _shares_a_layer(a, g)]
                fewest = min((g.n_units for g in linked), default=0)
                if len({g.n_units for g in linked}) > 1 and \
                        all(g.n_units % fewest == 0 for g in linked) and \
                        self._runs_instead(by_id[a.id], self._tied(a, linked), attempt, repair):
                    self._mark_joined(a, linked, joined, paired, attempt)

    def _mark_joined(self, a: Group, others: list[Group], joined: set[int],
                     paired: dict[int, tuple[Group, Group]], attempt: Callable) -> None:
        """``a``'s join with ``others`` ran (it holds ``a``'s place): ``a`` prunes, each of the
        others says which group prunes its channels."""
        self._validated[a.id] = ""
        for b in others:
            per = a.n_units // b.n_units
            self._validated[b.id] = _joined_reason(
                a, "alone, each breaks a view or split whose size follows the other's "
                   "width (read from its shape, as B, T, C = x.size(), or from an "
                   "attribute both read), so they shrink together"
                   + (f", {per} of #{a.id}'s channels for each unit of this group"
                      if per > 1 else ""))
        joined |= {a.id} | {b.id for b in others}
        for x in [a, *others]:  # (a paired group's other units: a group of their own)
            if x.id in paired:
                if x is not a:
                    self.groups[next(k for k, g in enumerate(self.groups)
                                     if g.id == x.id)] = x
                self._add_group(paired[x.id][1], attempt)

    @staticmethod
    def _tied(a: Group, others: list[Group]) -> Group:
        """``a`` joined with ``others``: every group's units bundled so that each has as many
        as the one with fewest, unit i of each with bundle i of ``a``."""
        fewest = min(b.n_units for b in others)
        both = _bundled(a, a.n_units // fewest)
        for b in others:
            both = _joined(both, _bundled(b, b.n_units // fewest))
        both.multiple_of = others[0].multiple_of
        return both

    def _probe(self, plan: Plan, gs: list[Group],
               sets: dict[int, list[SizeAttr]] | None = None) -> str:
        """:meth:`_run_probe`, once per plan, attribute values and groups: validation's
        repairs try many attribute sets, and different candidates often set the same values
        (an attribute read by four views is four candidates; HF GroupViT repeated 336 of its
        581 probes)."""
        try:
            attrs = self.size_attrs(plan, sets)
        except DepViewError:
            attrs = None  # (the probe says why)
        key = (tuple(sorted((k, tuple(v)) for k, v in plan.removed.items())),
               repr(sorted((m, sorted(a.items())) for m, a in attrs.items()))
               if attrs is not None else repr(sets),
               tuple(id(g) for g in gs))
        done = self._probe_results.get(key)
        if done is None:  # (the groups are kept with the result: their ids stay theirs)
            self._raised_in = ()
            msg = self._run_probe(plan, gs, sets)
            raised = self._raised_in
            exact = [g for g in gs if g.exact]
            if _NUMBER_MOVED in msg and 0 < len(exact) < len(gs):
                # an inexact group may move a number (the stream whose head dims an
                # attention scales by): it moved only if the exact groups alone move it
                ids = {g.id for g in exact}
                alone = self._probe(
                    Plan({k: v for k, v in plan.removed.items() if k in ids}, plan.settings),
                    exact, {k: v for k, v in sets.items() if k in ids} if sets else sets)
                if not alone:
                    msg = ""
            done = self._probe_results[key] = (tuple(gs), msg, raised)
        self._raised_in = done[2]
        return done[1]

    def _run_probe(self, plan: Plan, gs: list[Group],
                   sets: dict[int, list[SizeAttr]] | None = None) -> str:
        """Run the model pruned by ``plan`` (with the attributes its groups set, and ``sets``
        being tried) and compare its trace with the unpruned model's: "" when it runs and only
        the shapes ``gs`` own changed, else why not. Small models with real weights run for
        real, others on meta (see :meth:`validate_groups`); the unpruned traces are kept."""
        made: list[nn.Module] = []  # the pruned copies run
        try:
            return self._run_probe_in(plan, gs, sets, made)
        finally:
            if any(is_real(m) for m in made) and \
                    tensor_bytes(self.model) >= COLLECT_BYTES:
                # a real copy's reference cycles (a Hugging Face model's) hold its weights
                # until the cyclic collector runs, which big tensors do not set off: a
                # 150M-parameter model that runs only on real tensors held a copy more per
                # probe, 8 GB at the peak of its validation (2.2 GB collected so). The
                # young generations hold the copy: a full collection (walking all of torch's
                # objects) took 0.17 s a probe, this one less than the memory it frees saves
                del made[:]
                gc.collect(1)

    def _run_probe_in(self, plan: Plan, gs: list[Group], sets: dict[int, list[SizeAttr]] | None,
                      made: list[nn.Module]) -> str:
        st = self._probes
        if st is None:
            st = self._probes = {
                "meta_inputs": inputs_on_meta(self.inputs), "traced": [], "real_base": [],
                "names": {},  # id(baseline) -> its names of our nodes
                # meta results of calls made before, shared by all meta traces (see
                # build_graph): a probe changes a few widths, the rest of its calls repeat
                "meta_results": {},
                # probes run on real tensors: a small model with real weights
                "real": (is_real(self.model) and tensor_bytes(self.model) <= REAL_PROBE_BYTES
                         and _activation_elements(self.graph) <= REAL_PROBE_ELEMENTS)}
        meta_inputs, traced, real_base = st["meta_inputs"], st["traced"], st["real_base"]
        traced_meta = None  # the baseline, when the probe ran on meta

        def pruned(device: str | None) -> nn.Module:
            made.append(materialize(self.model, self.graph, changes, widths, device, attrs))
            return made[-1]

        def meta_graph() -> Graph | None:
            """The unpruned model traced on meta, what a pruned trace is compared with (code
            may take other paths on meta than on real tensors); None when a model with real
            weights does not run on meta at all: validation then runs on real tensors."""
            if not traced:
                if not self._meta_ok and is_real(self.model):
                    traced.append(None)
                    return None
                try:
                    traced.append(build_graph(
                        materialize(self.model, self.graph, {}, {}, "meta"), meta_inputs,
                        meta_results=st["meta_results"]))
                except DepViewError:
                    if not is_real(self.model):
                        raise
                    self._meta_ok = False
                    traced.append(None)
            return traced[0]

        def short_of_memory(exc: BaseException) -> str | None:
            """No room to run a copy for real (another job's peak, ``ulimit -v``): that says
            nothing about the group, and taken as its failure it set off repairs and joins
            that then "ran" (a layer's MLP joined to the next layer's heads). This probe and
            the rest run on meta; a model that cannot is not validated."""
            del made[:]
            gc.collect()  # (its reference cycles: see _run_probe)
            if st["real"] and self._meta_ok:
                st["real"] = False
                real_base.clear()
                return self._run_probe(plan, gs, sets)
            raise MemoryShortError(
                "not enough memory to run the pruned model that checks a group "
                f"({error_line(exc)}); free memory and try again") from None

        try:
            changes, widths = self.changes(plan), self.widths(plan)
            attrs = self.size_attrs(plan, sets)
            if st["real"]:
                # compared with a fresh copy run the same way, not with the first trace:
                # a module may cache something on its first real run (LeViT caches its
                # attention biases per device), and copies inherit the cache
                if not real_base:
                    real_base.append(build_graph(materialize(
                        self.model, self.graph, {}, {}, None), copy_inputs(self.inputs)))
                before, after = real_base[0], build_graph(pruned(None), copy_inputs(self.inputs))
            else:
                before, after = meta_graph(), None
                traced_meta = before
                if before is not None:
                    try:
                        after = build_graph(pruned("meta"), meta_inputs,
                                            meta_results=st["meta_results"])
                    except DepViewError as err:
                        exc = err.__cause__ or err
                        # data-dependent Python (``.item()``) cannot run on meta
                        if not isinstance(exc, (RuntimeError, NotImplementedError)) or \
                                "meta" not in str(exc) or not is_real(self.model):
                            raise exc from None
                if after is None:  # real tensors, compared with the first trace
                    before, after = self.graph, build_graph(pruned(None),
                                                            copy_inputs(self.inputs))
        except Exception as exc:
            if isinstance(exc, DepViewError):  # a traced forward failed: show its error
                exc = exc.__cause__ or exc
            if out_of_memory(exc):
                return short_of_memory(exc)
            if made:
                self._raised_in = _raising_modules(exc, made[-1])
            msg = first_line(exc)[:160] or _raised_at(exc)
            hint = _VIEW_HINT if "is invalid for input of size" in msg else \
                (made and _stale_cache_hint(made[-1], self._tensor_table(), changes)) or \
                _slice_hint(self.graph, gs, self._computed_bounds)
            return (f"the model's forward fails when this group shrinks "
                    f"({type(exc).__name__}: {msg}){hint}")
        if id(before) not in st["names"]:
            st["names"][id(before)] = _aligned_names(self.graph, before)
        exact = any(g.exact for g in gs)  # (an inexact group's numbers may move)
        names = st["names"][id(before)]
        moved = _moved(before, after, self._owned(gs, names, plan), exact,
                       self._slice_reads(gs, names, plan))
        if not moved:
            self._note_computed_bounds(before, after, gs, names, plan, sets)
        if moved and before is not traced_meta and is_real(self.model):
            # a size that moved on real tensors may be the data's: pruning the channels a
            # top-1 router reads changes which tokens ``x[mask]`` picks (and a loop over the
            # experts picked runs other ops). The original model with those channels zeroed
            # routes as the pruned one does; compared with it, only what the groups own may
            # move, and the same ops must run
            try:
                made.append(self._masked(plan))
                masked = build_graph(made[-1], copy_inputs(self.inputs))
            except Exception as exc:  # noqa: BLE001 (an allocation failing is not a verdict)
                cause = (exc.__cause__ or exc) if isinstance(exc, DepViewError) else exc
                if out_of_memory(cause):
                    return short_of_memory(cause)
                if isinstance(exc, DepViewError):
                    return moved
                raise
            names = _aligned_names(self.graph, masked)
            moved = _moved(masked, after, self._owned(gs, names, plan), exact,
                           self._slice_reads(gs, names, plan))
        return moved

    def _slices(self) -> list[SliceAt]:
        """Every slice of the graph that does not span its dim (what :func:`fixed_slices`
        finds for one group), made once: probes look them up for every group they run."""
        if self._slice_list is None:
            self._slice_list = []
            for node in self.graph.nodes:
                edges = self.graph.in_edges.get(node.id)
                if node.op_type is OpType.SLICE and isinstance(node.meta, SliceMeta) and edges:
                    e = edges[0]
                    self._slice_list += [(node, s, (e.source, e.source_port, s.dim))
                                         for s in node.meta.slices]
        return self._slice_list

    def _parts(self) -> list[tuple[Node, tuple[int, int, int], range, int | None]]:
        """The parts of tensor dims that slices (:meth:`_slices`) and splits into given
        sizes (:func:`split_sizes`) read, as ``(the slice or split, the tensor dim, its
        positions there, the split's output it is, None for a slice)``, made once."""
        if self._part_list is None:
            self._part_list = [(node, key, range(s.start, s.stop, s.step), None)
                               for node, s, key in self._slices()]
            for node in self.graph.nodes:
                meta, edges = node.meta, self.graph.in_edges.get(node.id)
                if node.op_type is OpType.SPLIT and node.target == "split" and edges and \
                        isinstance(meta, SplitMeta) and not meta.computed and \
                        len(meta.sizes) > 1:
                    key = (edges[0].source, edges[0].source_port, meta.dim)
                    ends = np.cumsum((0, *meta.sizes)).tolist()
                    self._part_list += [(node, key, range(ends[k], ends[k + 1]), k)
                                        for k in range(len(meta.sizes))]
        return self._part_list

    def _probe_ends(self, gs: list[Group]) -> list[str]:
        """The probes a group of ``gs`` may run, in order: "first", "last", "inside<k>" (the
        k-th of :func:`_inner_runs`), "several" (:meth:`_several_units`)."""
        inner = max((len(_inner_runs(g, self._slices())) for g in gs), default=0)
        return ["first", "last", *(f"inside{k}" for k in range(inner)), "several"]

    def _probe_units(self, group: Group, end: str) -> list[int]:
        """The units a probe removes: ``end`` "first" or "last" (:func:`_probe_units`),
        "inside<k>" (the k-th run of :func:`_inner_runs`) or "several"
        (:meth:`_several_units`); [] for a probe the group leaves out."""
        if end.startswith("inside"):
            runs = _inner_runs(group, self._slices())
            k = int(end[len("inside"):])
            return runs[k] if k < len(runs) else []
        if end == "several":
            return self._several_units(group)
        return _probe_units(group, end)

    def _several_units(self, group: Group) -> list[int]:
        """The most units a plan may remove from ``group`` (all but ``min_kept``, in steps of
        ``multiple_of``, keeping a unit of each part a layer reads alone: as
        :meth:`Pruner.plan` chooses them, the first units going first), when it passes
        through a slice or a split whose bounds the forward computed from the width
        (:meth:`_note_computed_bounds`: a probe moved them though no stored size was set);
        else []. CSPNet's ``c = x.shape[1] // 2; x[:, :c], x[:, c:]`` with only the first
        half prunable: 6 channels less one leave 5 // 2 = 2 = 3 - 1 by luck, both ends' probes
        run, and a plan removing two units read a channel of the other half."""
        if not self._computed_bounds or \
                not any(key in group.tensors for key in self._computed_bounds):
            return []
        n, m = group.n_units, group.multiple_of
        k = n - max(1, group.min_kept)
        k -= k % m
        if k <= m:  # (no more than the first probe removed)
            return []
        return self._keep_every_part(group, np.arange(n), k)

    def _several_hint(self, gs: list[Group], units: dict[int, list[int]]) -> str:
        """What a failed "several" probe adds to its error: which bounds are computed, and
        that one unit removed ran."""
        names = [name for key, name in self._computed_bounds.items()
                 if any(key in g.tensors for g in gs)]
        most = max(len(u) for u in units.values())
        return (f"; that is with {most} units removed at once (with one removed it ran): the "
                f"bounds of '{names[0]}' are computed by the forward from the width (c = "
                "x.shape[1] // 2?) and follow one unit removed, not more")

    def _note_computed_bounds(self, before: Graph, after: Graph, gs: list[Group],
                              names: dict[str, str], plan: Plan,
                              sets: dict[int, list[SizeAttr]] | None) -> None:
        """Note (in ``_computed_bounds``, tensor dim -> the slice or split) each slice or split
        into given sizes of a dim ``gs`` shrink whose bounds moved from ``before`` (the
        unpruned trace) to ``after`` (the model pruned by ``plan``, which ran as it should)
        though no stored size of the plan sets them: the forward computed them from the width
        (``x[:, :x.shape[1] // 2]``), and one unit removed says little of what more removed
        do. A bound at the dim's end, which moves with it, is not one."""
        chosen = {**self._sets, **(sets or {})}
        set_at = {r.node for gid in plan.removed for r in chosen.get(gid, [])}
        parts = [(node, key, k) for node, key, _at, k in self._parts()
                 if key not in self._computed_bounds and node.id not in set_at
                 and any(key in g.tensors for g in gs)]
        for node, key, k in parts:
            if key in self._computed_bounds:  # (another slice of it moved)
                continue
            name = names.get(node.name, node.name)
            a, b = before.by_name.get(name), after.by_name.get(name)
            kind = SliceMeta if k is None else SplitMeta
            if a is None or b is None or not isinstance(a.meta, kind) or \
                    not isinstance(b.meta, kind):
                continue
            if k is None:
                dim = key[2]
                was = next((s for s in a.meta.slices if s.dim == dim), None)
                now = next((s for s in b.meta.slices if s.dim == dim),
                           DimSlice(dim, 0, b.meta.in_shape[dim], 1)) \
                    if len(b.meta.in_shape) > dim else None
                if was is None or now is None:
                    continue
                width = b.meta.in_shape[dim]
                moved = 0 < was.start and now.start != min(was.start, width) or \
                    was.stop < a.meta.in_shape[dim] and now.stop != min(was.stop, width)
            else:
                moved = a.meta.sizes != b.meta.sizes
            if moved:
                self._computed_bounds[key] = node.name

    def _slice_reads(self, gs: list[Group], name: dict[str, str], plan: Plan
                     ) -> dict[str, list[tuple[int, np.ndarray, list[int], DimSlice]]]:
        """What each slice of a dim ``gs`` shrink must read once ``plan`` pruned them, by
        node name in another trace: ``(dim, the positions of the sliced dim that stay, as
        indices before pruning; those of them the slice read; the slice)``. Its width alone
        says too little: ``x[:, 3:5]`` keeps its two channels when a unit before it goes, and
        then reads channels 4 and 5; a bound stored in an attribute must move by the kept
        positions below it, which a wrong stored size or a number in the code does not."""
        gone: dict[tuple[int, int, int], set[int]] = defaultdict(set)
        mine = [(node, s, key) for node, s, key in self._slices()
                if any(key in g.tensors for g in gs)]
        for g in gs:
            units = plan.removed.get(g.id)
            for _node, _s, key in mine:
                if units is not None and key in g.tensors:
                    pos, unit = g.tensors[key]
                    gone[key].update(pos[np.isin(unit, units)].tolist())
        out: dict[str, list[tuple[int, np.ndarray, list[int], DimSlice]]] = defaultdict(list)
        for node, s, key in mine:
            lost = gone.get(key, set())
            kept = np.setdiff1d(np.arange(node.meta.in_shape[s.dim]), sorted(lost))
            want = [p for p in range(s.start, s.stop, s.step) if p not in lost]
            out[name.get(node.name, node.name)].append((s.dim, kept, want, s))
        return dict(out)

    def _owned(self, gs: list[Group], name: dict[str, str], plan: Plan
               ) -> dict[tuple[str, int, int], int | None]:
        """The tensor dims ``gs`` own, as (node name in another trace, port, dim), each with
        how many positions ``plan`` removes there when that is a layer's own output (a
        member's "out" side: its weight loses those rows, so its output must lose exactly
        those positions), else None."""
        def key(nid: int, port: int, dim: int) -> tuple[str, int, int]:
            n = self.graph.nodes[nid].name
            return name.get(n, n), port, dim

        owned: dict[tuple[str, int, int], int | None] = {
            key(*k): None for g in gs for k in g.tensors}
        lost: dict[tuple[str, int, int], set[int]] = defaultdict(set)
        for g in gs:
            units = plan.removed.get(g.id)
            if units is None:
                continue
            for m in g.members:
                if m.side == "out" and self.graph.nodes[m.node].is_module:
                    lost[key(m.node, m.port, m.dim)].update(m.indices(units).tolist())
            for k, (pos, unit) in g.tensors.items():
                # a slice's part loses what the plan removes inside its bounds: bounds that
                # moved wrong (a stored size set to the wrong value) cut other positions
                if self.graph.nodes[k[0]].op_type is OpType.SLICE:
                    lost[key(*k)].update(pos[np.isin(unit, units)].tolist())
        owned.update({k: len(v) for k, v in lost.items()})
        return owned

    def _size_attr_candidates(self, group: Group) -> list[SizeAttr]:
        """Public int attributes of the module that ran a call with a fixed size the group
        shrinks (:func:`fixed_sizes`), equal to that size, and its list or tuple attributes
        equal to a split's sizes (:func:`split_sizes`): what they may have been read from."""
        mods = dict(self.model.named_modules())
        canon = self._canonical_paths()
        out = []
        for node, key, size, parts in fixed_sizes(self.graph, group):
            # the width a view splits, held whole where the code divides it itself:
            # Deformable DETR's view(b, n, self.n_heads, self.d_model // self.n_heads)
            whole = split_width(self.graph, node, key[2]) \
                if node.op_type is OpType.RESHAPE and key[0] == node.id else None
            if whole is not None and (whole[0] not in group.tensors or whole[1] == size):
                whole = None
            for path in dict.fromkeys(canon.get(p) for p in [node.module, *self._callees(node)]):
                if path is not None:
                    out += self._stored_size(path, mods[path], node, key, size, parts)
                    out += self._config_items(mods[path], node, key, size, parts)
                    if whole is not None:
                        out += [SizeAttr(path, k, node.id, whole[0], whole[1])
                                for k, v in vars(mods[path]).items()
                                if not k.startswith("_") and type(v) is int and v == whole[1]]
        for node, key, lo, hi in slice_spans(self.graph, group):
            # a bound of a slice: Phi-3's qkv[..., :query_pos], with query_pos =
            # config.num_attention_heads * head_dim, and [query_pos:query_pos + kv * head_dim]
            if node.module in canon:
                node = dataclasses.replace(node, module=canon[node.module])
                out += self._span_candidates(group, node, key, lo, hi, mods,
                                             self._inside_a_window(key))
        for node, key, sizes in split_sizes(self.graph, group):
            path = canon.get(node.module)
            if path is None:
                continue
            attrs = [(k, v) for k, v in vars(mods[path]).items() if not k.startswith("_")]
            for k, v in attrs:
                if type(v) in (list, tuple) and tuple(v) == sizes:
                    out.append(SizeAttr(path, k, node.id, key, sum(sizes), len(sizes), sizes))
            if len(sizes) > 1:
                # sizes given one by one, split((self.embed_dim, self.kv_dim, self.kv_dim)):
                # an int attribute equal to a part's size may be that part's width (a part
                # of the group's tensors: the split's output ``i``); equal ones too, as
                # ultralytics' C2f splits (self.c, self.c): one attribute for both parts
                # holds once their units pair (:meth:`_pair_unit_kinds`)
                for i, size in enumerate(sizes):
                    part = (node.id, i, key[2])
                    if part not in group.tensors:
                        continue
                    equal = [SizeAttr(path, k, node.id, part, size)
                             for k, v in attrs if type(v) is int and v == size]
                    # or a part's size is a product: DBRX's num_key_value_heads * head_dim,
                    # whose count follows
                    start = sum(sizes[:i])
                    out += equal + [r for r in self._span_candidates(
                        group, dataclasses.replace(node, module=path), key, start,
                        start + size, mods)
                        if (r.module, r.attr) not in {(e.module, e.attr) for e in equal}]
        return [r for r in out if self._read(r)]

    def _canonical_paths(self) -> dict[str, str]:
        """Every path of a module (``named_modules`` without removing duplicates) -> the path
        ``named_modules`` gives it: a module shared by several parents (CoaT's convolutional
        position encoding, one per stage, held by each serial block) runs under the path of
        the block that called it, while its stored sizes are set by its first path."""
        if self._canon is None:
            first = {id(m): n for n, m in self.model.named_modules()}
            self._canon = {n: first[id(m)]
                           for n, m in self.model.named_modules(remove_duplicate=False)}
        return self._canon

    @staticmethod
    def _stored_size(path: str, mod: nn.Module, node: Node, key: tuple[int, int, int],
                     size: int, parts: int) -> list[SizeAttr]:
        """The attributes of module ``path`` that ``node``'s fixed ``size`` may be: ints equal
        to a part, or to the whole width a split divides itself, and list or tuple items."""
        out = []
        for k, v in vars(mod).items():
            if k.startswith("_"):
                continue
            if type(v) is int and v == size // parts:
                out.append(SizeAttr(path, k, node.id, key, size, parts))
            elif type(v) is int and parts > 1 and v == size and node.op_type is OpType.SPLIT:
                # the whole width, which the code divides into the parts' size itself:
                # split(x, self.expand_chs // 2) (CSPDarknet), split(x, self.in_channels
                # // self.num_paths) (SKNet)
                out.append(SizeAttr(path, k, node.id, key, size))
            else:  # normalized_shape = (hidden_size,), unflattened_size = (C, H, W)
                out += [SizeAttr(path, k, node.id, key, size, parts, boxed=True, index=i)
                        for i in _equal_items(v, size // parts)]
        return out

    def _config_items(self, mod: nn.Module, node: Node, key: tuple[int, int, int], size: int,
                      parts: int) -> list[SizeAttr]:
        """Items of the lists and tuples in the config object ``mod`` holds equal to a part of
        ``size``, named from the config's first holder (see :meth:`_int_attrs`): PVT v2's
        ``reshape(batch_size, -1, self.config.hidden_sizes[-1])``, the last stage's width,
        read by the model for its classifier. (The config's ints are not: a size that
        equals one is a module's own far more often, and each candidate costs probes.)"""
        cfg, owner = self._held_config(mod)
        if cfg is None:
            return []
        return [SizeAttr(owner, f"config.{k}", node.id, key, size, parts, boxed=True, index=i)
                for k, v in vars(cfg).items() if not k.startswith("_")
                for i in _equal_items(v, size // parts)]

    def _held_config(self, mod: nn.Module) -> tuple[object | None, str]:
        """The config object ``mod`` holds (None if none) and the path of its first holder,
        under which its attributes go by (``config.num_attention_heads`` under ``""``)."""
        cfg = held_config(mod)
        if cfg is None:
            return None, ""
        if self._config_owner is None:
            self._config_owner = config_owners(self.model)
        return cfg, self._config_owner[id(cfg)]

    def _callees(self, node: Node, hops: int = 4) -> list[str]:
        """Submodules of the module that ran ``node`` whose own ops made its input, a few of
        that module's own ops back, with the modules between: a helper method of a submodule
        called from the outer forward runs its ops as the outer module's, though it reads
        its own attributes (timm's ``RelPosMlp.get_bias``: ``self.mlp(coords).view(-1,
        self.num_heads)``, called from the model's forward)."""
        g, base = self.graph, node.module
        prefix = base + "." if base else ""
        depth = base.count(".") + 1 if base else 0
        out: dict[str, None] = {}
        frontier, seen = [node.id], {node.id}
        for _ in range(hops):
            nxt = []
            for nid in frontier:
                for e in g.in_edges.get(nid, ()):
                    src = g.nodes[e.source]
                    if src.id in seen:
                        continue
                    seen.add(src.id)
                    if src.module == base and not src.is_module:
                        nxt.append(src.id)
                    elif src.module.startswith(prefix) and src.module != base:
                        # (a layer called whole, as the LayerNorm before GPT-Neo's last
                        # view, is not one: the pruning sets its attributes itself)
                        parts = src.module.split(".")
                        out.update(dict.fromkeys(
                            ".".join(parts[:i]) for i in range(
                                depth + 1, len(parts) + (0 if src.is_module else 1))))
            frontier = nxt
        return list(out)

    def _read(self, r: SizeAttr) -> bool:
        """May the forward read ``r``'s attribute? False only for an attribute of a module
        whose reads were logged (:meth:`_reads`) and did not include it: setting one the
        forward never reads cannot make a probe run, and trying it costs probes (diffusers'
        ``Attention`` holds six ints equal to its width and reads none of them: its groups
        made 28 probes each in vain in SD 1.5's UNet). A config's attributes are kept."""
        if r.attr.startswith("config."):
            return True
        got = self._reads().get(r.module)
        return got is None or r.attr in got

    def _reads(self) -> dict[str, set[str]]:
        """module path -> the public attributes its code read in one forward of an
        unpruned copy (:func:`attribute_reads`), on the device the probes use; ``{}`` (no
        attribute left out) when that run fails. Run once, when validation first needs
        stored-size candidates."""
        if self._attr_reads is None:
            self._attr_reads = {}
            st = self._probes
            meta = st is not None and not st["real"]
            try:
                if meta:
                    copy = materialize(self.model, self.graph, {}, {}, "meta")
                    self._attr_reads = attribute_reads(copy, st["meta_inputs"])
                else:
                    copy = materialize(self.model, self.graph, {}, {}, None)
                    self._attr_reads = attribute_reads(copy, self.inputs)
            except Exception:  # noqa: BLE001 (a model that cannot run so: nothing left out)
                self._attr_reads = {}
        return self._attr_reads

    def _raised_candidates(self, group: Group, raised_in: tuple[str, ...]) -> list[SizeAttr]:
        """When a probe failed in a module's own code that compares a width with a size
        it stores (diffusers' ``Downsample2D``: ``assert x.shape[1] == self.channels``), no
        traced op shows where the size came from: the int attributes (:meth:`_int_attrs`)
        of the innermost module on the traceback that is not a layer DepView prunes (their
        attributes are set anyway), equal to the width of one of the group's tensors that
        enters the module."""
        mods = dict(self.model.named_modules())
        layers = {self.graph.nodes[m.node].module for m in group.members
                  if self.graph.nodes[m.node].is_module}
        path = next((p for p in raised_in if p in mods and p not in layers), None)
        if path is None:
            return []
        inside = (path + ".") if path else ""
        nodes = self.graph.nodes

        def local(nid: int) -> bool:
            return nodes[nid].module == path or nodes[nid].module.startswith(inside)

        # the widths of what enters the module (made outside it, read inside), as its
        # ``x.shape[1]``: not the sizes of its own reshapes (YOLO's DFL views its box
        # channels as ``(b, 4, self.c1, a)``: ``c1`` counts bins, which must stay whole)
        width: dict[int, tuple[int, int, int]] = {}  # old width -> its first tensor there
        for key in group.tensors:
            nid, port, dim = key
            if not local(nid) and any(local(e.target)
                                      for e in self.graph.consumers.get((nid, port), ())):
                width.setdefault(nodes[nid].out_shapes[port][dim], key)
        found = [SizeAttr(owner, k, width[v][0], width[v], v)
                 for owner, k, v in self._int_attrs(path, mods) if v in width]
        return [r for r in found if self._read(r)]

    def _inside_a_window(self, key: tuple[int, int, int]) -> bool:
        """Is tensor dim ``key`` a slice's output whose window starts past 0 on that dim
        (``x.narrow(1, self.start, 3)``)? A slice of it may start at 1 (``[:, self.a:]``, a
        unit of the window before it), which an attribute equal to 1 may hold."""
        src = self.graph.nodes[key[0]]
        meta = src.meta
        if src.op_type is not OpType.SLICE or not isinstance(meta, SliceMeta) or key[1]:
            return False
        return any(s.start > 0 and s.dim < len(meta.dim_map) and meta.dim_map[s.dim] == key[2]
                   for s in meta.slices)

    def _span_candidates(self, group: Group, node: Node, key: tuple[int, int, int], lo: int,
                         hi: int, mods: dict[str, nn.Module], ones: bool = False
                         ) -> list[SizeAttr]:
        """Int attributes (:meth:`_int_attrs`) that divide the size of positions ``[lo, hi)``
        of tensor dim ``key``, a count of equal parts of it (``num_key_value_heads`` of
        ``num_key_value_heads * head_dim``), each scaled by the range's kept share: only those
        that come out whole for every probe (the group's first unit, its last, and those
        in slices' parts: :meth:`_probe_units`). With ``ones``, a start of 1 may be an
        attribute equal to it (the module's own: a config holds many ones): the inner start
        of a slice of a slice (:meth:`_inside_a_window`). Elsewhere a bound of 1 is far more
        often computed (a rotary ``rotate_half``'s ``x[..., :d // 2]`` of 2 head dims) or
        written, and an attribute equal to 1 (``layer_idx``) cost probes in vain."""
        width = hi - lo
        pos, unit = group.tensors[key]
        inside = (pos >= lo) & (pos < hi)
        lost = [int(np.isin(unit[inside], units).sum())
                for end in self._probe_ends([group]) if (units := self._probe_units(group, end))]
        label = np.full(width, -1)
        label[pos[inside] - lo] = unit[inside]

        def whole(v: int) -> bool:
            """Does each of the ``v`` equal parts of the range hold one unit's positions
            only (a kv head's rows), so that the count goes down by whole parts? YOLO's
            ``4 * self.reg_max`` box channels hold a bin of each of 4 sides in every
            4 channels: ``reg_max`` counts bins interleaved across the parts, and halving
            it would halve the box range, not prune features."""
            rows = label.reshape(v, -1)
            return bool((rows >= 0).all() and (rows == rows[:, :1]).all())

        return [SizeAttr(owner, k, node.id, key, width, width // v, span=(lo, hi))
                for owner, k, v in self._int_attrs(node.module, mods)
                if (1 < v <= width or ones and v == width == 1 and lo == 0
                    and not k.startswith("config.")) and width % v == 0
                and all((width - n) % (width // v) == 0 for n in lost) and whole(v)]

    def _int_attrs(self, path: str, mods: dict[str, nn.Module]
                   ) -> list[tuple[str, str, int]]:
        """``(owner, attribute, value)`` for the public int attributes of module ``path`` and
        of the config object it holds (``self.config``, as Hugging Face layers do), the
        config's named from the first module that holds it (``config.num_attention_heads``
        on the model itself): every layer that shares it shares one attribute."""
        out, mod = [], mods[path]
        for k, v in vars(mod).items():
            if not k.startswith("_") and type(v) is int:
                out.append((path, k, v))
        cfg, owner = self._held_config(mod)
        if cfg is None:
            return out
        out += [(owner, f"config.{k}", v) for k, v in vars(cfg).items()
                if not k.startswith("_") and type(v) is int]
        return out
