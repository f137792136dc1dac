"""Importance, plans, preview, apply and verification.

    >>> lm = load_model("demo:resnet")
    >>> session = Pruner(lm.model, lm.inputs)            # traces once, finds all groups
    >>> plan = session.plan(ratio=0.5, importance="l1")  # which units each group loses
    >>> session.preview(plan)["params"]                   # {"before": ..., "after": ...}
    >>> pruned = session.apply(plan)                     # a pruned copy; lm.model untouched
    >>> session.verify(pruned, plan)["masked_equivalence"]["max_abs_diff"]

A plan is plain data (group id -> removed unit ids) and can be saved as JSON.
"""

from __future__ import annotations

import copy
import copyreg
import dataclasses
import difflib
import math
import re
import traceback
import weakref
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import DepViewError
from .graph import Graph, Node
from .groups import (
    Group,
    Member,
    all_groups,
    fixed_sizes,
    fixed_slices,
    mha_call_query,
    out_channel_dim,
    outer_alternative,
    part_alternative,
    slice_spans,
    split_blocked,
    split_sizes,
    split_width,
    units_are_heads,
)
from .handlers import REFRESH, Cut, cell_port, cell_width, node_cuts, rnn_key
from .memory import (
    MemoryShortError,
    check_room,
    gigabytes,
    out_of_memory,
    room_for,
    tensor_bytes,
)
from .modelconfig import build_from_config, fit_config, held_config
from .optypes import OpGroup, OpType, classify
from .prunemask import refresh_masked
from .spectralnorm import refresh_hooked, sigma, spectral_norms, u_keeping
from .spectralnorm import weight_of as sn_weight_of
from .text import counted, error_line
from .trace import (
    MAX_LISTED,
    build_graph,
    eval_mode,
    flatten,
    floats_as,
    module_attrs,
    output_nodes,
    output_path,
    plain_module,
    plain_tensors,
)
from .weightnorm import (
    g_after_cut,
    normed_dims,
    refresh_hooked_weights,
    renormalizes,
    rescaled,
    weight_norms,
    weight_of,
)

IMPORTANCE = ("l1", "l2", "bn", "random", "taylor")


@dataclass
class Plan:
    """Which units of which groups go. ``removed[group_id] = sorted unit ids``."""

    removed: dict[int, list[int]]
    settings: dict = field(default_factory=dict)
    scores: dict[int, list[float]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)  # group id -> why it was left alone

    def to_dict(self) -> dict:
        return {"settings": self.settings,
                "removed": {str(k): v for k, v in self.removed.items()},
                "skipped": {str(k): v for k, v in self.skipped.items()}}

    @property
    def n_removed(self) -> int:
        return sum(len(v) for v in self.removed.values())


@dataclass(frozen=True)
class SizeAttr:
    """A module attribute that a traced shape op read a fixed size from: GPT-2's
    ``split_size`` (``split(self.split_size)``), BLOOM's ``head_dim`` (``view(b, s,
    self.num_heads, 3, self.head_dim)``). Pruning that dim must set the attribute to the new size,
    or the pruned model splits or reshapes by the old one. Found by validation, never guessed:
    see :meth:`Pruner.validate_groups`. The new value is the new size of ``tensor`` (``size``
    before pruning) divided by ``parts``. With ``sizes``, the attribute is a list (or tuple)
    of a split's part sizes, ``torch.split(x, self.splits, 1)``: each becomes its part's kept
    width."""

    module: str  #: module path
    attr: str
    node: int  #: the split or reshape node
    tensor: tuple[int, int, int]  #: the tensor dim whose size it is: (node, port, dim)
    size: int
    parts: int = 1
    sizes: tuple[int, ...] = ()  #: a split's part sizes, when the attribute holds them all
    #: the attribute is a list or tuple holding the size as its item ``index``
    #: (``normalized_shape = (hidden,)``, ``nn.Unflatten``'s ``unflattened_size = (C, H, W)``)
    boxed: bool = False
    index: int = 0
    #: the size is that of positions ``[lo, hi)`` of ``tensor``'s dim (a slice's bound or
    #: width, Phi-3's ``qkv[..., :query_pos]``), not the whole dim: the new value counts the
    #: kept ones there
    span: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        return f"{self.module}.{self.attr}" if self.module else self.attr


def _fingerprint(model: nn.Module) -> tuple:
    """What a model's weights and buffers hold, cheaply: per tensor its storage, version,
    sum and (floating tensors) norm, as float64 reductions that copy nothing."""
    out = []
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            t = t.detach()
            norm = float(torch.linalg.vector_norm(t, dtype=torch.float64)) \
                if t.is_floating_point() and t.numel() else 0.0
            out.append((t.data_ptr(), t._version, float(t.sum(dtype=torch.float64)), norm))
    return tuple(out)


def _kept(n: int, keep: int, round_to: int, multiple_of: int) -> int:
    """How many of ``n`` units a group keeps when a ratio would keep ``keep``: at least one,
    a multiple of ``round_to``, and a multiple of ``multiple_of`` removed (whole rounds of
    attention heads); rounded up, and ``n`` (nothing removed) when no count fits."""
    keep = max(1, keep)
    for k in range(keep, n):
        if k % round_to == 0 and (n - k) % multiple_of == 0:
            return k
    return n


def _group_ids(overrides) -> dict[int, float]:
    """Override keys as group ids: ints, or their decimal strings (``plan.json``'s
    ``settings.overrides`` stores them so); anything else is refused."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise DepViewError("overrides must be a dict {group id: ratio}, got "
                           f"{type(overrides).__name__}")
    out = {}
    for k, r in overrides.items():
        if isinstance(k, str) and k.strip().isdigit():
            out[int(k)] = r
        elif type(k) is int or isinstance(k, np.integer):
            out[int(k)] = r
        else:
            raise DepViewError(f"override keys are group ids (whole numbers), got {k!r}")
    return out



IGNORE_SIDES = ("in", "out", "cell")  # what an ignore protects: NAME:in, NAME:out, NAME:cell
SIDE_WORDS = {"in": "inputs", "out": "outputs", "cell": "cell units"}


def parse_ignore(items) -> set[tuple[str, str]]:
    """``["fc", "layer1.0.conv1:out"]`` -> {("fc", "in"), ("fc", "out"), ("fc", "cell"),
    ("layer1.0.conv1", "out")}: a bare name ignores every side (``cell``: the cell units of an
    LSTM with ``proj_size``, see :func:`ignore_side`)."""
    out: set[tuple[str, str]] = set()
    if isinstance(items, str):
        items = [items]  # one name, not its letters
    if items is not None and not isinstance(items, Iterable):
        raise DepViewError(f"ignore is a list of layer names, got {items!r}")
    for it in items or ():
        if not isinstance(it, str):
            raise DepViewError(f"ignore is a list of layer names, got {it!r} in it")
        name, sep, side = it.rpartition(":")
        if not sep or side not in IGNORE_SIDES:  # (a reused layer's calls are "fc:1")
            name, side = it, ""
        out |= {(name, s) for s in ([side] if side else IGNORE_SIDES)}
    return out


def ignore_strings(ignore: set[tuple[str, str]]) -> list[str]:
    """The ignores as :func:`parse_ignore` reads them back, sorted: a name ignored on every
    side is written bare (``plan.json``'s ``settings.ignore``)."""
    sides: dict[str, set[str]] = defaultdict(set)
    for name, side in ignore:
        sides[name].add(side)
    out: list[str] = []
    for name, s in sides.items():
        out += [name] if s >= set(IGNORE_SIDES) else [f"{name}:{side}" for side in s]
    return sorted(out)


def ignore_side(m: Member, node: Node) -> str:
    """The side of member ``m`` (of ``node``) an ignore names: "in" for its input channels,
    "cell" for an LSTM's cell units (``c_n``'s port, :func:`handlers.cell_port`: an LSTM with
    ``proj_size``), "out" for its other outputs and for a bare parameter."""
    if m.side == "in":
        return "in"
    return "cell" if m.port and m.port == cell_port(node) else "out"


def _tensor_lookup(model: nn.Module) -> dict[str, tuple[nn.Module, str, torch.Tensor]]:
    """state_dict key -> (owning module, attribute name, tensor), aliases included; and
    the public plain tensor attributes (:func:`plain_tensors`), which no state_dict holds,
    under the same kind of name."""
    table = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        prefix = f"{mname}." if mname else ""
        for n, p in mod._parameters.items():
            if p is not None:
                table[prefix + n] = (mod, n, p)
        for n, b in mod._buffers.items():
            if b is not None:
                table[prefix + n] = (mod, n, b)
        for n, t in plain_tensors(mod):
            table[prefix + n] = (mod, n, t)
    return table


def free_output_paths(graph: Graph, names: Iterable[str]) -> list[str]:
    """The output paths ``names`` give, in output order: each a path (``logits``), a node
    name (``output.logits``), or what holds several (``vision_model_output``: every output
    under it; ``hidden_states``: each ``hidden_states[i]``). A name that is no output, or
    freeing every output (nothing would be left to check the pruned model against), is an
    error."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        return []
    paths = [output_path(n) for n in output_nodes(graph)]
    shown = ", ".join(p or "output" for p in paths[:MAX_LISTED])
    chosen = set()
    for name in names:
        if not isinstance(name, str):
            raise DepViewError(f"a free output is named by a string, got {name!r}")
        node = graph.by_name.get(name)
        if name in paths:
            hits = [name]
        elif node is not None and node.op_type is OpType.OUTPUT:
            hits = [output_path(node)]
        else:
            key = name.removeprefix("output.")
            hits = [p for p in paths if key and p.startswith((f"{key}.", f"{key}["))]
        if not hits:
            raise DepViewError(f"free output {name!r} is not an output of this model "
                               f"(its outputs: {shown}"
                               f"{', ...' if len(paths) > MAX_LISTED else ''})")
        chosen.update(hits)
    if len(chosen) == len(paths):
        raise DepViewError("every output of the model would be free: at least one must keep "
                           "its shape (the pruned model is checked against it)")
    return [p for p in paths if p in chosen]


def _plain(mod: nn.Module, name: str) -> bool:
    """Is ``mod``'s tensor ``name`` a plain attribute, neither parameter nor buffer?"""
    return name not in mod._parameters and name not in mod._buffers


def _check_graph_fits(model: nn.Module, graph: Graph) -> None:
    """A graph given to :class:`Pruner` must be this model's: every parameter it names with
    the shape it recorded (round 1's graph reused for round 2 planned cuts of channels the
    pruned model no longer has)."""
    table = _tensor_lookup(model)
    for node in graph.nodes:
        for local, key in node.params.items():
            want = node.param_shapes.get(local)
            got = tuple(table[key][2].shape) if key in table else None
            if want is not None and got != tuple(want):
                have = "no such tensor" if got is None else f"{list(got)}"
                raise DepViewError(f"the graph given is not this model's: it has {key} of shape "
                                   f"{list(want)}, the model {have} (build the graph of the "
                                   "model you prune, or leave graph= out)")


def _aliases(model: nn.Module) -> dict[str, list[str]]:
    """canonical key -> every state_dict key naming the same tensor (tied weights)."""
    by_id: dict[int, list[str]] = defaultdict(list)
    for k, (_, _, t) in _tensor_lookup(model).items():
        by_id[id(t)].append(k)
    return {ks[0]: ks for ks in by_id.values()} | {k: ks for ks in by_id.values() for k in ks}


def _number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _fraction(what: str, x) -> None:
    if not _number(x):
        raise DepViewError(f"{what} must be a number in [0, 1), got {x!r} "
                           f"({type(x).__name__})")
    if not 0 <= x < 1:
        raise DepViewError(f"{what} must be in [0, 1), got {x}")


class Pruner:
    """One model, its graph and groups; plans, previews, applies and verifies.

    The model given is never modified: ``apply`` returns a pruned deep copy. A
    ``torch.compile``'d model is pruned as the module it wraps (the copy is not compiled).
    """

    def __init__(self, model: nn.Module, inputs, graph: Graph | None = None,
                 groups: list[Group] | None = None, output_layers: list[str] = (),
                 validate: bool = True, free_outputs: Iterable[str] = ()):
        self.model = plain_module(model)  # a torch.compile'd model: the module it wraps
        if isinstance(inputs, dict):
            self.inputs = dict(inputs)  # keyword inputs (e.g. input_ids, attention_mask)
        else:
            self.inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        self.graph = graph if graph is not None else build_graph(self.model, self.inputs)
        if graph is not None:
            _check_graph_fits(self.model, graph)
        #: the outputs (their paths: ``logits``, ``encoder_last_hidden_state``) whose width
        #: may change, as the user asked; the others keep their shapes
        self.free_outputs = free_output_paths(self.graph, free_outputs)
        if self.free_outputs:  # (a graph of its own: the caller's may be shared)
            self.graph = dataclasses.replace(self.graph, free_outputs=frozenset(
                n.id for n in output_nodes(self.graph) if output_path(n) in self.free_outputs))
        # a list of its own: validation may put a group's whole-heads alternative in its place
        self.groups = list(groups) if groups is not None else all_groups(self.graph)
        self.output_layers = list(output_layers)
        known = set(self.graph.by_name) | {n.module for n in self.graph.nodes}
        for name in self.output_layers:
            if name not in known:  # it would protect nothing, silently
                raise DepViewError(f"output_layers names no layer of this model: {name!r}")
        #: False: :meth:`reason` and plans do not run :meth:`validate_groups` by themselves
        #: (the groups command's --no-validate), so a group's reason is its structure's alone
        self.validate = validate
        self._validation_ran = False
        self._validated: dict[int, str] = {}
        self._probes: dict | None = None  # what validation's probes compare with (_probe)
        self._width_checks: dict[tuple, dict[int, str]] = {}  # plan -> groups failing in it
        #: (plan, attributes, group ids) -> (the groups, what _run_probe said, the modules
        #: whose own code raised, innermost first)
        self._probe_results: dict[tuple, tuple[tuple, str, tuple[str, ...]]] = {}
        self._raised_in: tuple[str, ...] = ()  # ... of the last probe that ran or was looked up
        #: module path -> the attributes its forward read in one run (see :meth:`_reads`)
        self._attr_reads: dict[str, set[str]] | None = None
        self._outputs: list | None = None  # the unpruned outputs (see _original_outputs)
        self._canon: dict[str, str] | None = None  # module path -> its named_modules path
        self._sets: dict[int, list[SizeAttr]] = {}  # group id -> attributes it must update
        self._config_owner: dict[int, str] | None = None  # id(config) -> first module path
        self._outer_tried: set[int] = set()  # blocked groups whose outer alternative was tried
        self._before: dict | None = None
        #: what the last real :meth:`apply` did to the model's config (see :meth:`fit_config`)
        self.config_fit: dict | None = None
        # pruned copy -> its config_fit (an app's sessions share a stage's Pruner: another
        # thread's apply may come between one apply and its reading config_fit)
        self._fits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # False once the unpruned model failed on the meta device (a kernel whose meta version
        # rejects what the real one takes): previews and validation then use real tensors
        self._meta_ok = True
        self._untraced: list[str] | None = None
        self._read_keys: set[str] | None = None  # tensors traced ops read as such
        self._table: dict[str, tuple[nn.Module, str, torch.Tensor]] | None = None
        # Taylor scores of the last batch: ((its tensors, their versions, the weights'
        # versions), {id(group): (group, scores)})
        self._taylor: tuple[tuple, dict[int, tuple[Group, np.ndarray]]] | None = None

    # -- cuts -----------------------------------------------------------------------------
    def _tensor_table(self) -> dict[str, tuple[nn.Module, str, torch.Tensor]]:
        """:func:`_tensor_lookup` of the model, made once: a plan's cuts read it for every
        group, once per validation probe (a walk over every module each time: YOLO-style
        models spent a fifth of their validation there). The model is not changed while a
        Pruner holds it, as its graph and validation already assume."""
        if self._table is None:
            self._table = _tensor_lookup(self.model)
        return self._table

    def cuts(self, group: Group, units) -> list[Cut]:
        """Tensor cuts for removing ``units`` of ``group``."""
        units = np.asarray(sorted(units), dtype=np.int64)
        out: list[Cut] = []
        table = self._tensor_table()
        for m in group.members:
            pos = m.indices(units)
            if len(pos):
                out += node_cuts(self.graph.nodes[m.node], m.side, m.dim, pos,
                                  lambda k: table[k][2] if k in table else None, m.port)
        return out + self._unread_twin_cuts(out)

    def _unread_twin_cuts(self, cuts: list[Cut]) -> list[Cut]:
        """Cuts of the buffers that sit beside a cut tensor in the same module with the same
        shape, which no cut holds and no traced op reads as a bare tensor: a vector
        quantizer's running average ``embed_avg`` beside its codebook ``embed``, which only
        training reads; I-BERT's ``weight_integer`` beside its ``weight``, which only its
        quantized mode reads. Left whole, the checkpoint holds both widths
        (``from_pretrained`` refuses it, and the code that reads them fails)."""
        table = self._tensor_table()
        read = self._read_keys_now()
        if self.graph.spectral_norms:  # (not a copy of the read keys per call otherwise)
            # (a spectral norm's u and v are cut by their own rule: of a square weight they
            # have one shape, but v's entries are columns)
            read = read | {k for u, v, _ in self.graph.spectral_norms.values() for k in (u, v)}
        out, done = [], {(c.key, c.dim) for c in cuts}
        for cut in cuts:
            entry = table.get(cut.key)
            if entry is None:
                continue
            mod, name, t = entry
            prefix = cut.key[:len(cut.key) - len(name)]
            for other, b in mod._buffers.items():
                key = prefix + other
                if b is None or (key, cut.dim) in done or key in read or \
                        b.shape != t.shape or key not in table:
                    continue
                done.add((key, cut.dim))
                out.append(dataclasses.replace(cut, key=key))
        return out

    def _read_keys_now(self) -> set[str]:
        """The state_dict keys of the tensors traced ops read as bare tensors (parameters and
        buffers a module does not hide: an atomic layer lists all its buffers, read or not)."""
        if self._read_keys is None:
            self._read_keys = {k for n in self.graph.nodes if n.op_type in _SOURCE_TENSORS
                               for k in (*n.params.values(), *n.buffers.values())}
        return self._read_keys

    def reason(self, group: Group, ignore: set[tuple[str, str]] = frozenset()) -> str:
        """Why a group cannot be pruned ("" if it can). The first call validates every group
        (:meth:`validate_groups`, once), unless the Pruner was made with ``validate=False``."""
        return self._reason(group, ignore, self.validate)

    def _reason(self, group: Group, ignore: set[tuple[str, str]], validate: bool) -> str:
        if validate and not self._validation_ran:
            self.validate_groups()
        if group.reason:
            return group.reason
        for m in group.members:
            side = ignore_side(m, self.graph.nodes[m.node])
            if ignore and _ignored(m, side, ignore):
                return f"'{m.node_name}' {SIDE_WORDS[side]} are ignored"
            if m.side == "out" and m.module in self.output_layers:
                return f"'{m.module}' is the model's output layer"
        return self._validated.get(group.id, "")

    def sets(self, group: Group) -> list[str]:
        """Module attributes pruning this group also sets (``["h.0.attn.split_size"]``)."""
        return list(dict.fromkeys(r.label for r in self._sets.get(group.id, [])))

    def group_dict(self, group: Group, ignore: set[tuple[str, str]] = frozenset(),
                   with_indices: bool = True) -> dict:
        """The group as the documented JSON (``groups`` command, app download)."""
        d = group.to_dict(with_indices=with_indices)
        d["reason"] = self.reason(group, ignore)
        d["prunable"] = not d["reason"] and group.n_units > 1
        d["sets"] = self.sets(group)
        return d

    # -- importance -----------------------------------------------------------------------
    def importance(self, group: Group, criterion: str = "l1", seed: int = 0,
                   grads: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        """One score per unit (higher = more important), aggregated over the whole group."""
        if criterion not in IMPORTANCE:
            raise DepViewError(f"unknown importance {criterion!r}; use one of "
                               f"{', '.join(IMPORTANCE)}")
        n = group.n_units
        if criterion == "random":
            return np.random.default_rng(seed * 100003 + group.id).random(n)
        self._needs_weights(criterion)
        if criterion == "taylor" and grads is None:  # the gradients of the example inputs
            return self.taylor_scores([group])[group.id]
        table = self._tensor_table()
        if criterion == "bn" and not self._bn_scale(group, table):
            return self.importance(group, "l1", seed)
        scores = np.zeros(n)
        bn_only = criterion == "bn"
        # (tensor, dim) -> its positions already scored: a tensor two members cut (tied
        # weights, a module called twice) counts once, as it is removed once
        counted: dict[tuple[int, int], np.ndarray] = {}
        norms, spectral = self.graph.weight_norms, self.graph.spectral_norms
        masks = self.graph.prune_masks
        magnitudes = set(norms.values())
        for m in group.members:
            if bn_only and m.op_type not in OpGroup.NORMS:
                continue
            if not len(m.pos) or m.op_type is OpType.BUFFER:
                continue  # (statistics, a frozen norm's scale: state, not importance)
            node = self.graph.nodes[m.node]
            all_pos = np.arange(int(m.pos.max()) + 1)
            unit_at = np.full(len(all_pos), -1)
            unit_at[m.pos] = m.unit
            for cut in node_cuts(node, m.side, m.dim, all_pos, None, m.port):
                if cut.key not in table or "running" in cut.key or not cut.aligned:
                    continue
                t = table[cut.key][2].detach()
                if t.device.type == "meta":
                    continue
                if criterion != "taylor" and cut.key in norms:  # weight-normalised: the
                    t = weight_of(table[norms[cut.key]][2], t)  # weight it computes...
                elif criterion != "taylor" and cut.key in spectral:  # (W / sigma)
                    u_key, v_key, rows = spectral[cut.key]
                    t = sn_weight_of(t, table[u_key][2], table[v_key][2], rows)
                elif cut.key in masks:  # (torch.nn.utils.prune: what the mask leaves)
                    t = t * table[masks[cut.key]][2].to(t.dtype)
                elif criterion != "taylor" and cut.key in magnitudes:
                    continue  # ... holds g's magnitudes
                if criterion == "taylor":
                    g = grads.get(cut.key)
                    if g is None:
                        continue
                    t = (t * g).abs()
                if bn_only and not cut.key.endswith("weight"):
                    continue
                # |t| before the cast: a complex weight (an FNO's spectral weights) scored by
                # its modulus, not by the real part a cast to float keeps
                t = t.abs().float() if criterion != "l2" else t.abs().float().pow(2)
                per = t.transpose(0, cut.dim).reshape(t.shape[cut.dim], -1).sum(1).numpy()
                # each position of the tensor, and the channel (member position) it is of:
                # a recurrent layer's unit owns a row in every gate
                at = np.asarray(cut.positions)
                of = at if cut.origin is None else all_pos[cut.origin]
                keep = at < len(per)
                at, of = at[keep], of[keep]
                units = unit_at[np.minimum(of, len(unit_at) - 1)]
                units[of >= len(unit_at)] = -1
                done = counted.setdefault((id(table[cut.key][2]), cut.dim),
                                          np.zeros(len(per), bool))
                keep = (units >= 0) & ~done[at]
                done[at[keep]] = True
                np.add.at(scores, units[keep], per[at[keep]])
        return scores

    def _bn_scale(self, group: Group, table: dict) -> bool:
        """Does the group hold a norm layer's scale (``weight``) with a nonzero entry, which
        the ``bn`` importance scores by? Groups without one are scored by ``l1``. ``table``:
        :func:`_tensor_lookup` of the model."""
        for m in group.members:
            if m.op_type not in OpGroup.NORMS:
                continue
            key = self.graph.nodes[m.node].params.get("weight")
            t = table.get(key, (None, None, None))[2] if key else None
            if t is not None and t.device.type != "meta" and bool(t.detach().abs().sum() > 0):
                return True
        return False

    # -- plans ----------------------------------------------------------------------------
    def plan(self, ratio: float = 0.5, importance: str = "l1", global_: bool = False,
             round_to: int = 1, ignore=(), overrides: dict[int, float] | None = None,
             seed: int = 0, validate: bool = True, batch=None) -> Plan:
        """Choose units to remove: ``ratio`` of every prunable group (or of all units ranked
        together with ``global_``), keeping a multiple of ``round_to`` and at least one.
        ``batch`` (positional inputs as a tuple, or a dict) feeds the Taylor criterion; the
        example inputs are used when it is None."""
        _fraction("ratio", ratio)
        if not _number(round_to) or round_to != int(round_to) or round_to < 1:
            raise DepViewError(f"round_to must be a whole number >= 1, got {round_to!r}")
        round_to = int(round_to)
        if type(seed) is not int and not isinstance(seed, np.integer):
            raise DepViewError(f"seed must be a whole number, got {seed!r}")
        overrides = _group_ids(overrides)
        for gid, r in overrides.items():
            _fraction(f"override ratio for group {gid}", r)
        ignore_set = ignore if isinstance(ignore, set) and all(
            isinstance(i, tuple) for i in ignore) else parse_ignore(ignore)
        self.check_names(ignore_set, overrides)
        settings = {"ratio": ratio, "importance": importance, "global": global_,
                    "round_to": round_to, "ignore": ignore_strings(ignore_set),
                    "overrides": {str(k): v for k, v in overrides.items()}, "seed": seed}
        if self.free_outputs:
            settings["free_outputs"] = list(self.free_outputs)
        if importance == "taylor":  # which inputs the scores came from
            settings["batch"] = "example inputs" if batch is None else batch_shapes(batch)
        validate = validate and self.validate
        if validate:
            self.validate_groups()
        why = {g.id: self._reason(g, ignore_set, validate) for g in self.groups}
        prunable = [g for g in self.groups if not why[g.id]]
        skipped = {gid: w for gid, w in why.items() if w}
        fell: list[int] = []
        if importance == "bn":  # say which groups had no norm scale to score by
            table = self._tensor_table()
            fell = [g.id for g in prunable if not self._bn_scale(g, table)]
            if fell:
                settings["scored_by_l1"] = fell
        if importance == "taylor":
            scores = self.taylor_scores(prunable, batch)
        else:
            scores = {g.id: self.importance(g, "l1" if g.id in fell else importance, seed)
                      for g in prunable}
        n_remove: dict[int, int] = {}
        if global_:
            pool = []
            for g in prunable:
                s = scores[g.id]
                norm = s / (s.mean() + 1e-12) if s.any() else s
                pool += [(float(v), g.id) for v in norm]
            budget = int(ratio * len(pool))
            counts: dict[int, int] = defaultdict(int)
            for _, gid in sorted(pool)[:budget]:
                counts[gid] += 1
            n_remove = {g.id: counts[g.id] for g in prunable}
        else:
            n_remove = {g.id: int(math.floor(g.n_units * ratio)) for g in prunable}
        for g in prunable:
            if g.id in overrides:
                n_remove[g.id] = int(math.floor(g.n_units * overrides[g.id]))
            n_remove[g.id] = g.n_units - _kept(g.n_units, g.n_units - n_remove[g.id],
                                               round_to, g.multiple_of)
        removed = {}
        for g in prunable:
            k = n_remove[g.id]
            if k:
                order = np.argsort(scores[g.id], kind="stable")
                removed[g.id] = self._keep_every_part(g, order, k)
        floors = self._cells_above_projections(removed, scores, round_to)
        if floors:  # (the ratio asked for fewer: say so)
            settings["cells_above_projection"] = floors
        plan = Plan(removed, settings, {k: [float(x) for x in v] for k, v in scores.items()},
                    skipped)
        if validate:
            self._check_widths(plan)
        return plan

    def _lstmp_widths(self, removed: dict[int, list[int]]
                      ) -> dict[str, tuple[int, int, list[int]]]:
        """module -> (projection units kept, cell units kept, ids of the groups that cut its
        cell units) for every LSTM with ``proj_size`` that ``removed`` shrinks: read from the
        cuts of its layer-0 ``weight_hr`` (rows: projection units, columns: cell units), as
        the LSTM's handler makes them."""
        hr = {n.params[rnn_key(n, "weight_hr")]: n for n in self.graph.nodes
              if n.op_type is OpType.LSTM and cell_port(n) is not None}
        if not hr:
            return {}
        by_id = {g.id: g for g in self.groups}
        gone: dict[str, tuple[set[int], set[int], list[int]]] = {}
        for gid, units in removed.items():
            for cut in self.cuts(by_id[gid], units):
                node = hr.get(cut.key)
                if node is not None:
                    rows, cols, gids = gone.setdefault(node.module, (set(), set(), []))
                    (rows if cut.dim == 0 else cols).update(int(p) for p in cut.positions)
                    if cut.dim == 1:
                        gids.append(gid)
        shapes = {n.module: n.param_shapes[rnn_key(n, "weight_hr")] for n in hr.values()}
        return {mod: (shapes[mod][0] - len(rows), shapes[mod][1] - len(cols),
                      list(dict.fromkeys(gids))) for mod, (rows, cols, gids) in gone.items()}

    def _cells_above_projections(self, removed: dict[int, list[int]],
                                 scores: dict[int, np.ndarray], round_to: int
                                 ) -> dict[str, int]:
        """An LSTM needs ``hidden_size > proj_size`` (torch's kernel tells the two apart by
        the widths of h and c: equal, it reads the weights as an LSTM's without projection,
        and the forward fails). Where ``removed`` would keep no more cell units than
        projection units (the projection's group ignored, or at a lower ratio), its cell
        groups give units back, most important first, till one more cell unit than
        projection units is kept (a multiple of ``round_to``); in place. Returns the modules
        that kept more this way, each with the cell units it keeps."""
        by_id = {g.id: g for g in self.groups}
        floors: dict[str, int] = {}
        for module, (_, _, gids) in self._lstmp_widths(removed).items():
            for gid in gids:
                proj, cell, _ = self._lstmp_widths(removed)[module]
                if cell > proj or gid not in removed:
                    break
                g = by_id[gid]
                k = len(removed[gid]) - (proj + 1 - cell)
                while k > 0 and (g.n_units - k) % round_to:
                    k -= 1
                order = np.argsort(scores[gid], kind="stable")
                if k > 0:
                    removed[gid] = self._keep_every_part(g, order, k)
                else:
                    del removed[gid]
                node = next(n for n in self.graph.nodes if n.module == module and
                            n.op_type is OpType.LSTM)
                floors[module] = self._lstmp_widths(removed).get(
                    module, (0, cell_width(node), []))[1]
        return floors

    def _check_widths(self, plan: Plan) -> None:
        """Validation shrinks each group by one unit; a plan shrinks it further, and a width
        may take the model down another path: HF Hiera's ``if self.hidden_size !=
        self.hidden_size_output`` skips a projection once the attribute DepView sets reaches
        the other's value, and the pruned model runs, computing something else. So the plan
        itself is probed the same way (one run when it is fine); a group that breaks the
        model at its planned width leaves the plan, with the reason, in ``skipped``."""
        by_id = {g.id: g for g in self.groups}
        key = tuple(sorted((k, tuple(v)) for k, v in plan.removed.items()))
        bad = self._width_checks.get(key)
        if bad is None:
            bad = self._width_checks[key] = self._failing_widths(plan, by_id)
        for gid, err in sorted(bad.items()):
            g = by_id[gid]
            kept = g.n_units - len(plan.removed.pop(gid))
            err = err.replace("when this group shrinks, ", "").replace(
                " when this group shrinks", "")
            plan.skipped[gid] = f"at the planned width ({kept} of {g.n_units} units kept) {err}"

    def _failing_widths(self, plan: Plan, by_id: dict[int, Group]) -> dict[int, str]:
        bad: dict[int, str] = {}

        def run(gids: list[int]) -> str:
            return self._probe(Plan({k: plan.removed[k] for k in gids}),
                               [by_id[k] for k in gids])

        def check(gids: list[int]) -> None:
            err = run(gids)
            if not err:
                return
            if len(gids) == 1:
                bad[gids[0]] = err
                return
            half = len(gids) // 2
            check(gids[:half])
            check(gids[half:])
            ok = [k for k in gids if k not in bad]
            if len(ok) == len(gids) or (len(ok) > 1 and run(ok)):
                # each half runs, together they do not: add one group at a time
                kept: list[int] = []
                for k in ok:
                    err = run(kept + [k])
                    if err:
                        bad[k] = f"{err}, together with other groups of the plan"
                    else:
                        kept.append(k)

        if plan.removed:
            check(sorted(plan.removed))
        return bad

    def _keep_every_part(self, g: Group, order: np.ndarray, k: int) -> list[int]:
        """The ``k`` least important units of ``g`` (``order``), except that a split whose part
        sizes a module stores (:attr:`SizeAttr.sizes`) keeps its most important unit of each
        part, and so does a layer that holds only some of the group's units (one input of a
        concat): a part of width 0 would give a layer no channels."""
        chosen = [int(u) for u in order[:k]]
        parts: list[set[int]] = []
        for r in self._sets.get(g.id, []):
            if not r.sizes:
                continue
            pos, unit = g.tensors[r.tensor]
            start = 0
            for size in r.sizes:
                parts.append(set(unit[(pos >= start) & (pos < start + size)].tolist()))
                start += size
        if g.multiple_of == 1:  # (whole rounds of heads cannot give one unit back)
            # a layer that holds only some of the units (one input of a concat) keeps one
            parts += [held for m in g.members
                      if len(held := set(np.unique(m.unit).tolist())) < g.n_units]
        for part in parts:
            if part and part <= set(chosen):
                best = next(int(u) for u in order[::-1] if int(u) in part)
                chosen.remove(best)
        # the units given back are made up from the next least important ones that empty no
        # part (a UNet stem's group of 2 units, one of them all an upsampler holds, loses the
        # other instead of nothing)
        for u in order[k:]:
            if len(chosen) >= k:
                break
            if all(not part or not part <= {*chosen, int(u)} for part in parts):
                chosen.append(int(u))
        return sorted(chosen)

    def _needs_weights(self, criterion: str) -> None:
        if not _real(self.model):
            raise DepViewError(f"importance {criterion!r} reads weights, and this model is on "
                               "the meta device (no values): use 'random' to preview it, or "
                               "load it on cpu")

    def taylor_scores(self, groups: list[Group], batch=None) -> dict[int, np.ndarray]:
        """Taylor scores of ``groups`` on ``batch`` (None: the example inputs). The gradients
        take a forward and a backward pass on a copy of the model, so the scores are kept
        until the batch (or a weight or buffer) changes: tensors' in-place version counters
        are part of the key, so a batch changed in place is not mistaken for the old one, and
        so are the weights' and buffers' sums and norms (an edit through ``.data`` leaves the
        version counter as it was)."""
        self._needs_weights("taylor")
        inputs = self.inputs if batch is None else batch
        held = tuple(t for _, t in flatten(inputs))
        key = (held, tuple(t._version for t in held), _fingerprint(self.model))
        old = self._taylor[0] if self._taylor is not None else None
        # the key holds the tensors themselves: compared by identity, and kept alive so that
        # another batch can never reuse their ids
        if old is None or len(old[0]) != len(held) or \
                any(a is not b for a, b in zip(old[0], held, strict=True)) or old[1:] != key[1:]:
            self._taylor = (key, {})
        cache = self._taylor[1]  # this call's own dict, even if another thread replaces it
        missing = [g for g in groups if id(g) not in cache or cache[id(g)][0] is not g]
        if missing:
            grads = taylor_grads(self.model, inputs)
            for g in missing:
                cache[id(g)] = (g, self.importance(g, "taylor", grads=grads))
        return {g.id: cache[id(g)][1] for g in groups}

    def check_names(self, ignore: set[tuple[str, str]], overrides: dict[int, float]) -> None:
        """An ignore or override that names nothing would silently do nothing: refuse it."""
        known = set(self.graph.by_name) | {n.module for n in self.graph.nodes}
        for path in list(known):  # and the modules holding them (``layer1`` holds layer1.0)
            parts = path.split(".")
            known.update(".".join(parts[:i]) for i in range(1, len(parts)))
        for name in sorted({n for n, _ in ignore} - known):
            base, _, side = name.rpartition(":")
            if base and base in known and not side.isdigit():  # (a reused layer's calls are "fc:1")
                raise DepViewError(f"ignore {name!r}: unknown side {side!r} (use "
                                   f"{base}:in, {base}:out, {base}:cell for an LSTM's cell "
                                   f"units, or {base} for all)")
            close = [k for k in sorted(known) if len(k) >= 3 and (name in k or k in name)]
            close = list(dict.fromkeys(close + difflib.get_close_matches(
                name, sorted(k for k in known if k), n=3)))[:3]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise DepViewError(f"ignore names no layer of this model: {name!r}{hint}")
        sides: dict[str, set[str]] = defaultdict(set)
        for name, side in ignore:
            sides[name].add(side)
        for name in sorted(sides):
            if not name:
                raise DepViewError("ignore needs a layer or module name, got an empty one")
            if not self.holds_channels(name):
                raise DepViewError(f"ignore {name!r}: it holds no channels a group prunes (an "
                                   "activation or other op without weights); name the layers "
                                   "around it, or the module that holds them")
            if sides[name] == {"cell"} and not self.holds_channels(name, ("cell",)):
                raise DepViewError(f"ignore '{name}:cell': it has no cell units of their own "
                                   "(only an LSTM with proj_size has: its hidden_size, beside "
                                   f"the outputs' proj_size); use {name}:out")
        ids = {g.id for g in self.groups}
        for gid in sorted(set(overrides) - ids):
            raise DepViewError(f"override names no group: {gid} (group ids are 0 to "
                               f"{len(self.groups) - 1}; see the groups command)")
        for g in self.groups:
            why = self.reason(g, ignore) if g.id in overrides else ""
            if why:  # its ratio would silently do nothing
                raise DepViewError(f"override names group {g.id} ('{g.root}'), which is not "
                                   f"pruned: {why}")

    def holds_channels(self, name: str, sides: Iterable[str] = IGNORE_SIDES) -> bool:
        """Does the layer or module ``name`` hold channels some group prunes on one of
        ``sides`` (so that ignoring it protects something)? An activation does not."""
        sides = set(sides)
        return any(_ignored(m, side, {(name, side)}) for g in self.groups for m in g.members
                   if (side := ignore_side(m, self.graph.nodes[m.node])) in sides)

    def plan_from_dict(self, d: dict) -> Plan:
        """A plan from its JSON form (``plan.json``'s ``removed``), checked against this model's
        groups (see :meth:`check_plan`)."""
        if not isinstance(d, dict) or not isinstance(d.get("removed", {}), dict):
            got = type(d.get("removed") if isinstance(d, dict) else d).__name__
            raise DepViewError("a plan is a dict with \"removed\": {group id: [unit ids]}, got "
                               f"{'a ' + got + ' for removed' if isinstance(d, dict) else got}")
        for key in ("settings", "skipped"):
            if not isinstance(d.get(key, {}), dict):
                raise DepViewError(f"a plan's {key!r} is a dict, got {type(d[key]).__name__}")
        removed = {}
        for k, v in d.get("removed", {}).items():
            if not (type(k) is int or isinstance(k, str) and k.strip().isdigit()):
                raise DepViewError(f"a plan's group ids are whole numbers, got {k!r}")
            if not isinstance(v, (list, tuple)) or \
                    any(type(u) is not int and not isinstance(u, np.integer) for u in v):
                raise DepViewError(f"a plan removes a list of unit ids (whole numbers) from each "
                                   f"group; group {k} has {v!r}"[:200])
            if v:  # (an empty list removes nothing: not a pruned group)
                removed[int(k)] = [int(u) for u in v]
        try:
            plan = Plan(removed, d.get("settings", {}), {},
                        {int(k): v for k, v in d.get("skipped", {}).items()})
        except (TypeError, ValueError) as exc:
            raise DepViewError(f"a plan's group ids are integers: {exc}") from exc
        self.check_plan(plan)
        return plan

    def _check_free_outputs(self, settings: dict) -> None:
        """Refuse a plan made with other free outputs than this pruner's: group ids follow
        them (the same id may name another group). A plan that says nothing of how it was
        made (a hand-written one, no ``ratio``) is taken as made here."""
        if "free_outputs" not in settings and "ratio" not in settings:
            return
        made = settings.get("free_outputs", [])
        if not isinstance(made, (list, tuple)) or not all(isinstance(n, str) for n in made):
            raise DepViewError("a plan's settings.free_outputs is a list of output names, got "
                               f"{made!r}"[:200])
        if sorted(made) != sorted(self.free_outputs):
            raise DepViewError(f"the plan was made with free outputs {list(made)}, this "
                               f"pruner has {self.free_outputs}: make it with the same "
                               "(free_outputs=..., --free-output)")

    def check_plan(self, plan: Plan) -> None:
        """Refuse a plan that names no group of this model, a unit a group does not have,
        every unit of a group (a layer with no channels), or a group that cannot be pruned
        (the reason is given; a plan made by :meth:`plan` never does any of these), or one
        made with other free outputs (:meth:`_check_free_outputs`)."""
        if not isinstance(plan, Plan):
            raise DepViewError(f"expected a Plan, got {type(plan).__name__} (a plan.json dict "
                               "goes through plan_from_dict)")
        if self.validate and not self._validation_ran:  # (it may put groups in others' place)
            self.validate_groups()
        self._check_free_outputs(plan.settings)
        by_id = {g.id: g for g in self.groups}
        ignore = parse_ignore(plan.settings.get("ignore", ()))
        self.check_names(ignore, {})
        for gid, units in plan.removed.items():
            g = by_id.get(gid)
            if g is None:
                raise DepViewError(f"plan names group {gid}, which this model does not have "
                                   f"(group ids are 0 to {len(self.groups) - 1})")
            if any(isinstance(u, (bool, np.bool_)) or not isinstance(u, (int, np.integer))
                   for u in units):
                raise DepViewError(f"plan removes {units!r} from group {gid}: unit ids are whole "
                                   "numbers"[:200])
            twice = sorted(u for u, n in Counter(units).items() if n > 1)
            if twice:
                raise DepViewError(f"plan removes unit {twice[0]} of group {gid} ('{g.root}') "
                                   "more than once")
            bad = sorted({u for u in units if not 0 <= u < g.n_units})
            if bad:
                raise DepViewError(f"plan removes unit {bad[0]} of group {gid} ('{g.root}'), "
                                   f"which has {counted(g.n_units, 'unit')} (0 to "
                                   f"{g.n_units - 1})")
            if len(set(units)) >= g.n_units:
                raise DepViewError(f"plan removes all {g.n_units} units of group {gid} "
                                   f"('{g.root}'): its layers would have no channels left")
            why = self.reason(g, ignore) if units else ""
            if why:
                raise DepViewError(f"plan prunes group {gid} ('{g.root}'), which cannot be "
                                   f"pruned: {why}")
        for module, (proj, cell, _) in self._lstmp_widths(plan.removed).items():
            if cell <= proj:
                raise DepViewError(f"plan keeps {cell} cell units of '{module}' and "
                                   f"{proj} projection units: an LSTM needs hidden_size > "
                                   "proj_size")

    # -- applying -------------------------------------------------------------------------
    def changes(self, plan: Plan) -> dict[str, dict[int, np.ndarray]]:
        """state_dict key -> {dim: removed positions}, over all groups of the plan."""
        by_id = {g.id: g for g in self.groups}
        acc: dict[str, dict[int, set]] = defaultdict(lambda: defaultdict(set))
        for gid, units in plan.removed.items():
            if gid not in by_id:
                raise DepViewError(f"plan names group {gid}, which this model does not have")
            for cut in self.cuts(by_id[gid], units):
                acc[cut.key][cut.dim].update(int(p) for p in cut.positions)
        return {k: {d: np.asarray(sorted(v), dtype=np.int64) for d, v in dims.items()}
                for k, dims in acc.items()}

    def widths(self, plan: Plan) -> dict[str, dict[str, int]]:
        """module path -> {"in"/"out": new channel count} for layers a plan touches; also
        "cell" for an LSTM with ``proj_size`` whose cell units (``hidden_size``) it prunes."""
        by_id = {g.id: g for g in self.groups}
        # a layer after a concat is a member of several groups, each owning some of its
        # channels: its width loses what all of them remove
        lost: dict[tuple[str, str], tuple[int, set[int]]] = {}
        for gid, units in plan.removed.items():
            g = by_id[gid]
            for m in g.members:
                if m.side == "param" or m.port and m.side == "in":  # (a layer's width is
                    continue  # its first input's)
                node = self.graph.nodes[m.node]
                shape = node.in_shapes[0] if m.side == "in" else node.out_shapes[m.port]
                side = ignore_side(m, node)  # (an LSTM's c_n: "cell")
                entry = lost.setdefault((node.module, side), (shape[m.dim], set()))
                entry[1].update(m.indices(units).tolist())
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for (module, side), (width, gone) in lost.items():
            out[module][side] = width - len(gone)
        return out

    def apply(self, plan: Plan, device: str | None = None, config: bool = True) -> nn.Module:
        """A pruned copy of the model. ``device="meta"`` builds it without memory (for
        previews); otherwise tensors are index-selected from the original.

        ``config``: a model built from a config object (Hugging Face's ``model.config``) gets
        the sizes in its copy of the config set to the pruned ones, when some values rebuild
        it exactly (see :func:`~viewer.core.modelconfig.fit_config`); :attr:`config_fit`
        then says what changed, or why the config was left as it was."""
        self.check_plan(plan)
        changes = self.changes(plan)
        if device != "meta":  # (one line now, not the kernel's kill half-way through)
            check_room(pruned_bytes(self.model, changes), "the pruned copy",
                       "free memory (close other programs), or prune more")
        pruned = materialize(self.model, self.graph, changes, self.widths(plan),
                             device, self.size_attrs(plan))
        if config and device != "meta" and _real(pruned):
            self.config_fit = self._fits[pruned] = self.fit_config(pruned)
        return pruned

    def config_fit_of(self, pruned: nn.Module) -> dict | None:
        """What :meth:`apply` did to the config of ``pruned``, a copy it returned (None for
        another model, or one without a config)."""
        return self._fits.get(pruned)

    def fit_config(self, pruned: nn.Module, search: bool = True) -> dict | None:
        """Fit ``pruned``'s config to its sizes (see :func:`fit_config`); the fitted config is
        kept only if the model built from it, given the pruned weights, computes exactly what
        ``pruned`` does on the example inputs. None if the model holds no config.
        ``search=False`` only checks that the config ``pruned`` holds describes it (export
        does, to write it), changing nothing.

        A model that holds no config it is built from but has parts that do (your module
        around a Hugging Face model: ``self.backbone = LlamaModel(config)``) gets each
        outermost such part's config fitted, checked on what that part computed in the
        pruned model's forward: ``{"modules": {"backbone": {"changed": {...}}}}``.

        The check builds a model of ``pruned``'s size from the config: without the memory
        for it, the config is left as it was and the reason says so."""
        if held_config(self.model) is not None or config_parts(self.model):
            need = tensor_bytes(pruned)
            room, free = room_for(need)
            if not room:
                return {"reason": f"not enough memory to check a fitted config (a model built "
                                  f"from it needs about {gigabytes(need)}, and this machine "
                                  f"has {gigabytes(free)} free)"}
        try:
            return self._fit_configs(pruned, search)
        except Exception as exc:  # an extra: never the reason an apply fails
            return {"reason": f"fitting the config failed: {error_line(exc)}"}

    def _fit_configs(self, pruned: nn.Module, search: bool) -> dict | None:
        if held_config(self.model) is not None:
            fit = self._fit_part(self.model, pruned, lambda m: run(m, self.inputs), search)
            if fit is not None:  # (None: a config of yours the class is not built from)
                return fit
        parts = config_parts(self.model)
        if not parts:
            return None
        calls = _first_calls(pruned, self.inputs, parts)
        fits = {}
        for name in parts:
            if name not in calls:
                fits[name] = {"reason": "the example inputs never reach it"}
                continue
            args, kwargs = calls[name]

            def call(m: nn.Module, args=args, kwargs=kwargs):
                with torch.no_grad(), eval_mode(m), torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    return m(*_copied(args), **_copied(kwargs))

            fit = self._fit_part(self.model.get_submodule(name), pruned.get_submodule(name),
                                 call, search)
            if fit is not None:
                fits[name] = fit
        return {"modules": fits} if fits else None

    @staticmethod
    def _fit_part(original: nn.Module, pruned: nn.Module, call, search: bool) -> dict | None:
        """:func:`fit_config` of one model (or part) whose outputs ``call(module)`` gives."""
        try:
            want = [t for _, t in flatten(call(pruned))]
            return fit_config(original, pruned, _computes(pruned, call, want), search)
        except Exception as exc:  # an extra: never the reason an apply fails
            return {"reason": f"fitting the config failed: {error_line(exc)}"}

    def size_attrs(self, plan: Plan, extra: dict[int, list[SizeAttr]] | None = None
                   ) -> dict[str, dict[str, int]]:
        """module path -> {attribute: new value} for the :class:`SizeAttr` of the plan's
        groups (``extra`` adds candidates being tried): each one's tensor dim's new size
        divided by its number of parts."""
        sets = {**self._sets, **(extra or {})}
        wanted = [r for gid in plan.removed for r in sets.get(gid, [])]
        if not wanted:
            return {}
        removed = self._removed_at(plan, {r.tensor for r in wanted})
        out: dict[str, dict[str, int]] = defaultdict(dict)
        items: dict[tuple[str, str, int], int] = {}  # (module, attribute, item) -> value
        for r in wanted:
            if r.sizes:
                value = self._part_widths(r, removed[r.tensor])
                if out[r.module].get(r.attr, value) != value:
                    raise DepViewError(f"cannot set {r.label}: two groups of the plan need "
                                       f"{out[r.module][r.attr]} and {value}")
                out[r.module][r.attr] = value
                continue
            if r.span is None:
                width = r.size - len(removed[r.tensor])
            else:
                lo, hi = r.span
                width = r.size - sum(1 for i in removed[r.tensor] if lo <= i < hi)
            value = width // r.parts
            if width % r.parts:
                raise DepViewError(f"cannot set {r.label}: the plan leaves "
                                   f"'{self.graph.nodes[r.node].name}' {width} positions "
                                   f"for {r.parts} equal parts")
            if r.boxed:  # one item of a list or tuple: other items may be set by others
                item = (r.module, r.attr, r.index)
                if items.setdefault(item, value) != value:
                    raise DepViewError(f"cannot set item {r.index} of {r.label}: two groups of"
                                       f" the plan need {items[item]} and {value}")
                value = self._boxed(r, value, out[r.module].get(r.attr))
            elif out[r.module].get(r.attr, value) != value:
                raise DepViewError(f"cannot set {r.label}: two groups of the plan need "
                                   f"{out[r.module][r.attr]} and {value}")
            out[r.module][r.attr] = value
        return dict(out)

    def _removed_at(self, plan: Plan, keys: set[tuple[int, int, int]]
                    ) -> defaultdict[tuple[int, int, int], set[int]]:
        """Tensor dim (node, port, dim) -> the positions ``plan`` removes there, for
        ``keys``, over all its groups."""
        by_id = {g.id: g for g in self.groups}
        removed: defaultdict[tuple[int, int, int], set[int]] = defaultdict(set)
        for gid, units in plan.removed.items():
            tensors = by_id[gid].tensors
            for key in keys & tensors.keys():
                pos, unit = tensors[key]
                removed[key].update(pos[np.isin(unit, units)].tolist())
        return removed

    def _stored(self, r: SizeAttr):
        """The value the model's module holds in ``r``'s attribute."""
        return get_attr(dict(self.model.named_modules())[r.module], r.attr)

    def _boxed(self, r: SizeAttr, value: int, current=None) -> list[int] | tuple[int, ...]:
        """The attribute's list or tuple with item ``r.index`` set to ``value`` (``current``:
        the value other items of the plan already set, else the stored one)."""
        stored = self._stored(r)
        items = list(stored if current is None else current)
        items[r.index] = value
        return items if isinstance(stored, list) else tuple(items)

    def _part_widths(self, r: SizeAttr, removed: set[int]) -> list[int] | tuple[int, ...]:
        """The new part sizes of a split whose sizes attribute ``r`` holds, in its own type."""
        new, start = [], 0
        for k, size in enumerate(r.sizes):
            kept = size - sum(1 for i in removed if start <= i < start + size)
            if kept == 0:
                raise DepViewError(f"cannot set {r.label}: the plan removes all of part {k} "
                                   f"of '{self.graph.nodes[r.node].name}'")
            new.append(kept)
            start += size
        return tuple(new) if isinstance(self._stored(r), tuple) else new

    def kept(self, plan: Plan) -> dict[str, dict[str, list[int]]]:
        """state_dict key -> {dim: kept indices}: the slicing invariant of plan.json."""
        table = self._tensor_table()
        aliases = _aliases(self.model)
        out = {}
        for key, dims in self.changes(plan).items():
            t = table[key][2]
            entry = {str(d): [int(i) for i in np.setdiff1d(np.arange(t.shape[d]), rem)]
                     for d, rem in sorted(dims.items())}
            for k in aliases.get(key, [key]):
                out[k] = entry
        return out

    def renormalized(self, plan: Plan) -> dict[str, str]:
        """The magnitudes ``g`` a plan rescales (weightnorm.py), each -> its direction ``v``,
        and the ``u`` of spectral norms (spectralnorm.py), each -> its weight ``W``:
        state_dict keys. Not index-selects of the original: plan.json lists them apart."""
        changes = self.changes(plan)
        table = self._tensor_table()
        out = {g: v for v, g in self.graph.weight_norms.items()
               if v in changes and renormalizes(table[g][2].shape, table[v][2].ndim,
                                                changes[v])}
        out.update({u: w for w, (u, _, _) in self.graph.spectral_norms.items() if w in changes})
        return out

    # -- preview and verification ---------------------------------------------------------
    def preview(self, plan: Plan) -> dict:
        """Params and MACs before -> after and per-layer widths, without touching the model
        (the pruned copy is built on the meta device)."""
        if self._before is None:
            self._before = self._count(Plan({}))
        before = self._before
        try:
            after = self._count(plan)
        except Exception as exc:
            raise DepViewError(f"the pruned model does not run: {error_line(exc)}") from exc
        widths = self.widths(plan)
        layers = []
        for n in self.graph.nodes:
            if not n.is_module or n.call or not n.params:
                continue
            d = out_channel_dim(n)
            w_out = n.out_shapes[0][d] if d is not None else 0
            layers.append({"name": n.name, "op_type": n.op_type.value, "before": int(w_out),
                           "after": int(widths.get(n.module, {}).get("out", w_out))})
            if cell_port(n) is not None:  # an LSTM's hidden_size beside its proj_size
                w_cell = cell_width(n)
                layers.append({"name": f"{n.name} (cell)", "op_type": n.op_type.value,
                               "before": int(w_cell),
                               "after": int(widths.get(n.module, {}).get("cell", w_cell))})
        return {"params": {"before": before["params"], "after": after["params"]},
                "macs": {"before": before["macs"], "after": after["macs"]},
                "layers": layers, "removed_units": plan.n_removed,
                "groups_pruned": len(plan.removed)}

    def _count(self, plan: Plan) -> dict:
        """Params/MACs of the pruned model, built on meta; real tensors if the model runs
        data-dependent Python (``.item()``) that meta tensors cannot, or does not run on meta
        at all."""
        if self._meta_ok or not _real(self.model):
            try:
                return count(self.apply(plan, device="meta"), _to_meta(self.inputs))
            except (RuntimeError, NotImplementedError) as exc:
                # a pruned model that fails on meta for another reason is broken
                if not _real(self.model) or ("meta" not in str(exc) and plan.removed):
                    raise
                result = count(self.apply(plan, config=False), self.inputs)
                if "meta" not in str(exc):  # the unpruned model fails on meta, runs for real
                    self._meta_ok = False
                return result
        return count(self.apply(plan, config=False), self.inputs)

    def validate_groups(self) -> dict[int, str]:
        """Shrink each structurally prunable group by its first unit, then by its last, on
        the meta device and run the model; a group whose pruned model fails (a hard-coded
        view/split size or slice, ...) is marked not prunable with the error. Cached.

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
        kernels for LSTM and attention hide their matmuls from the flop counter.)"""
        def attempt(gs: list[Group], sets: dict[int, list[SizeAttr]] | None = None) -> str:
            """The groups shrunk by their first units, then by their last ("" if both run)."""
            return probe(gs, sets, "first") or probe(gs, sets, "last")

        def probe(gs: list[Group], sets: dict[int, list[SizeAttr]] | None, end: str) -> str:
            return self._probe(Plan({g.id: _probe_units(g, end) for g in gs}), gs, sets)

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
            reshapes the shapes leave open split at their outer dim (whole heads)."""
            alt = outer_alternative(self.graph, g)
            if alt is None or alt.reasons or alt.n_units <= 1:
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

        def check(gs: list[Group]) -> None:
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
        self._note_pruned_elsewhere()
        return {k: v for k, v in self._validated.items() if v}

    def _note_pruned_elsewhere(self) -> None:
        """A group that failed validation whose channels a prunable group holds says so:
        XGLM's q/k head dims fail (v's view reads the same ``head_dim``), while whole heads
        of q, k and v prune as one group; the reason alone read as if those channels could
        not go at all."""
        ok = [g for g in self.groups if not g.reasons and not self._validated.get(g.id)]
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
        st = self._probes
        if st is None:
            st = self._probes = {
                "meta_inputs": _to_meta(self.inputs), "traced": [], "real_base": [],
                "names": {},  # id(baseline) -> its names of our nodes
                # meta results of calls made before, shared by all meta traces (see
                # build_graph): a probe changes a few widths, the rest of its calls repeat
                "meta_results": {},
                # probes run on real tensors: a small model with real weights
                "real": (_real(self.model) and _tensor_bytes(self.model) <= REAL_PROBE_BYTES
                         and _activation_elements(self.graph) <= REAL_PROBE_ELEMENTS)}
        meta_inputs, traced, real_base = st["meta_inputs"], st["traced"], st["real_base"]
        traced_meta = None  # the baseline, when the probe ran on meta
        made: list[nn.Module] = []  # the pruned copy being run

        def pruned(device: str | None) -> nn.Module:
            made.append(materialize(self.model, self.graph, changes, widths, device, attrs))
            return made[-1]

        def meta_graph() -> Graph | None:
            """The unpruned model traced on meta, what a pruned trace is compared with (code
            may take other paths on meta than on real tensors); None when a model with real
            weights does not run on meta at all: validation then runs on real tensors."""
            if not traced:
                if not self._meta_ok and _real(self.model):
                    traced.append(None)
                    return None
                try:
                    traced.append(build_graph(
                        materialize(self.model, self.graph, {}, {}, "meta"), meta_inputs,
                        meta_results=st["meta_results"]))
                except DepViewError:
                    if not _real(self.model):
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
                        self.model, self.graph, {}, {}, None), _copied(self.inputs)))
                before, after = real_base[0], build_graph(pruned(None), _copied(self.inputs))
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
                                "meta" not in str(exc) or not _real(self.model):
                            raise exc from None
                if after is None:  # real tensors, compared with the first trace
                    before, after = self.graph, build_graph(pruned(None),
                                                            _copied(self.inputs))
        except Exception as exc:
            if isinstance(exc, DepViewError):  # a traced forward failed: show its error
                exc = exc.__cause__ or exc
            if out_of_memory(exc):
                return short_of_memory(exc)
            if made:
                self._raised_in = _raising_modules(exc, made[-1])
            msg = (str(exc).strip().splitlines() or [""])[0][:160] or _raised_at(exc)
            hint = _VIEW_HINT if "is invalid for input of size" in msg else \
                (made and _stale_cache_hint(made[-1], self._tensor_table(), changes)) or \
                _slice_hint(self.graph, gs)
            return (f"the model's forward fails when this group shrinks "
                    f"({type(exc).__name__}: {msg}){hint}")
        if id(before) not in st["names"]:
            st["names"][id(before)] = _aligned_names(self.graph, before)
        exact = any(g.exact for g in gs)  # (an inexact group's numbers may move)
        moved = _moved(before, after, self._owned(gs, st["names"][id(before)], plan), exact)
        if moved and before is not traced_meta and _real(self.model):
            # a size that moved on real tensors may be the data's: pruning the channels a
            # top-1 router reads changes which tokens ``x[mask]`` picks (and a loop over the
            # experts picked runs other ops). The original model with those channels zeroed
            # routes as the pruned one does; compared with it, only what the groups own may
            # move, and the same ops must run
            try:
                masked = build_graph(self._masked(plan), _copied(self.inputs))
            except Exception as exc:  # noqa: BLE001 (an allocation failing is not a verdict)
                cause = (exc.__cause__ or exc) if isinstance(exc, DepViewError) else exc
                if out_of_memory(cause):
                    return short_of_memory(cause)
                if isinstance(exc, DepViewError):
                    return moved
                raise
            moved = _moved(masked, after,
                           self._owned(gs, _aligned_names(self.graph, masked), plan), exact)
        return moved

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
                out += self._span_candidates(group, node, key, lo, hi, mods)
        for node, key, sizes in split_sizes(self.graph, group):
            path = canon.get(node.module)
            if path is None:
                continue
            attrs = [(k, v) for k, v in vars(mods[path]).items() if not k.startswith("_")]
            for k, v in attrs:
                if type(v) in (list, tuple) and tuple(v) == sizes:
                    out.append(SizeAttr(path, k, node.id, key, sum(sizes), len(sizes), sizes))
            if len(set(sizes)) > 1:
                # sizes given one by one, split((self.embed_dim, self.kv_dim, self.kv_dim)):
                # an int attribute equal to a part's size may be that part's width (a part
                # of the group's tensors: the split's output ``i``)
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

    def _span_candidates(self, group: Group, node: Node, key: tuple[int, int, int], lo: int,
                         hi: int, mods: dict[str, nn.Module]) -> list[SizeAttr]:
        """Int attributes (:meth:`_int_attrs`) that divide the size of positions ``[lo, hi)``
        of tensor dim ``key``, a count of equal parts of it (``num_key_value_heads`` of
        ``num_key_value_heads * head_dim``), each scaled by the range's kept share: only those
        that come out whole for both probes (the group's first unit, then its last)."""
        width = hi - lo
        pos, unit = group.tensors[key]
        inside = (pos >= lo) & (pos < hi)
        lost = [int(np.isin(unit[inside], _probe_units(group, end)).sum())
                for end in ("first", "last")]
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
                if 1 < v <= width and width % v == 0
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

    def masked_model(self, plan: Plan) -> nn.Module:
        """The original model with every tensor slice the plan removes zeroed, both the weights
        that write a removed channel and those that read it: its outputs must equal the pruned
        model's (masked equivalence). Zeroing the writers too matters where two activations
        are contracted (q·k over a removed head dim): no weight reads that sum. Buffers
        (statistics, a frozen norm's scale) are left as they are: with the writers and
        readers zeroed they change nothing, and a zeroed variance under ``rsqrt`` would
        make the removed channel NaN, which a zeroed reader does not hide."""
        return self._masked(plan, share=False)

    def _masked(self, plan: Plan, share: bool = True, float32: bool = False,
                buffers: bool = False) -> nn.Module:
        """:meth:`masked_model`; ``share``: the parameters no cut touches are the original's
        own (read-only use: the checks run it), so a check of a plan that leaves the
        embeddings alone does not copy them. ``float32``: a float32 copy (of a model run in
        half precision), sharing nothing. ``buffers``: the buffers that ops read as bare
        tensors are zeroed too (a vector quantizer's codebook, whose removed features would
        otherwise still count in its distances)."""
        cuts = self._masked_cuts(plan)
        memo = _float32_memo(self.model) if float32 else \
            self._shared_params(cuts) if share else {}
        shared = set() if float32 else set(memo)  # (before the copy, which adds to the memo)
        masked = _tree_copy(self.model, memo)
        table = _tensor_lookup(masked)
        with torch.no_grad():
            read = self._read_keys_now() if buffers else ()
            for cut in cuts:
                mod, name, t = table[cut.key]
                if name in mod._parameters or cut.key in read:
                    if id(t) in shared:  # (never: a shared parameter is one no cut touches)
                        raise AssertionError(f"masked copy would zero the original {cut.key}")
                    t.index_fill_(cut.dim, torch.as_tensor(cut.positions), 0)
            original = self._tensor_table()
            for v_key, g_key in _zeroed_norms(self.graph.weight_norms, cuts).items():
                g, v = table[g_key][2], table[v_key][2]
                g.copy_(rescaled(g, original[v_key][2], v, normed_dims(g.shape, v.ndim)))
            cut_keys = {c.key for c in cuts}
            for w_key, (u_key, v_key, dim) in self.graph.spectral_norms.items():
                if w_key in cut_keys:  # (its sigma, as the pruned copy keeps it)
                    u = table[u_key][2]
                    u.copy_(u_keeping(sigma(*(original[k][2] for k in (w_key, u_key, v_key)),
                                            dim), table[w_key][2], u, table[v_key][2], dim))
        return masked

    def _made_at(self) -> dict[str, str]:
        """For :func:`layer_by_layer`: each parameter the graph sees read, by its
        state_dict key, with the module whose call holds every read of it: the atomic layer
        reading it (``nn.MultiheadAttention`` for its ``out_proj.weight``), or, for a
        parameter read as a bare tensor, the modules whose forwards ran the ops reading it."""
        g, at = self.graph, {}
        for node in g.nodes:
            if not node.params:
                continue
            if node.op_type is OpType.PARAMETER:
                readers = [g.nodes[e.target] for e in g.consumers.get((node.id, 0), ())]
                # (a module called on it is called from its parent's forward)
                where = [r.module.rpartition(".")[0] if r.is_module else r.module
                         for r in readers] or [""]
            else:
                where = [node.module]
            for key in node.params.values():
                for w in where:
                    at[key] = _common_module(at.get(key, w), w)
        return at

    def _cuts_read_buffers(self, plan: Plan) -> bool:
        """Does the plan cut a buffer that ops read as a bare tensor?"""
        read, table = self._read_keys_now(), self._tensor_table()
        return any(c.key in read and table[c.key][1] in table[c.key][0]._buffers
                   for c in self._masked_cuts(plan))

    def _masked_cuts(self, plan: Plan) -> list[Cut]:
        """The cuts of a plan, as the masked model zeroes them: all but a weight-normalised
        layer's ``v`` along ``g``'s own dim (zeroing ``g`` there zeroes those weights; zeroing
        ``v`` too would make them 0/0). Its ``g`` is rescaled after ``v``'s other cuts, as
        :func:`materialize` does (:func:`_zeroed_norms`)."""
        by_id = {g.id: g for g in self.groups}
        cuts = [cut for gid, units in plan.removed.items() for cut in self.cuts(by_id[gid], units)]
        norms = self.graph.weight_norms
        if not norms:
            return cuts
        table = self._tensor_table()
        return [c for c in cuts if c.key not in norms or c.dim in normed_dims(
            table[norms[c.key]][2].shape, table[c.key][2].ndim)]

    def _shared_params(self, cuts: list[Cut]) -> dict[int, nn.Parameter]:
        """deepcopy memo mapping each parameter no cut touches (under any of its names: tied
        weights) to itself (a weight-normalised layer's ``g`` is touched when its ``v`` is)."""
        table = self._tensor_table()
        keys = {c.key for c in cuts} | set(_zeroed_norms(self.graph.weight_norms, cuts).values())
        cut = {id(table[k][2]) for k in keys if k in table}
        return {id(t): t for mod, name, t in table.values()
                if name in mod._parameters and id(t) not in cut}

    def _masked_bytes(self, plan: Plan) -> int:
        """Bytes :meth:`_masked` allocates: the model less the parameters it shares."""
        shared = self._shared_params(self._masked_cuts(plan))
        return tensor_bytes(self.model) - sum(t.numel() * t.element_size()
                                              for t in shared.values() if not t.is_meta)

    def _masked_in_float32(self, plan: Plan, pruned: nn.Module, half: torch.dtype,
                           res: dict, pruned_out: list) -> dict:
        """Masked equivalence of a model run in ``half`` precision, whose check there
        (``res``) was off by more than float32's tolerance: run again in float32, layer by
        layer (:func:`layer_by_layer`), or, when that cannot be done, on float32 copies of
        the masked and the pruned model, or skipped, saying why."""
        name = str(half).removeprefix("torch.")
        inputs = floats_as(self.inputs, torch.float32)
        # layer by layer first: float32 copies of both models hold four times a bfloat16
        # model's bytes (the 688M Llama peaked at 6.9 GB with them, 3.95 GB without, in the
        # same 11.5 s); the pruned model first (its outputs tell a NaN read in the masked one)
        out_p, why = self._run_by_layer(pruned, [], torch.float32, inputs, pruned_out)
        out_m = None
        if out_p is not None:
            out_m, why = self._run_by_layer(self.model, self._masked_cuts(plan),
                                            torch.float32, inputs, out_p)
            if out_m is not None:
                out_m = self._kept_of_free(plan, out_m)
        how = "in float32, each layer made as it ran"
        if out_m is None:
            need = 2 * (tensor_bytes(self.model) + tensor_bytes(pruned))  # (as float32)
            short = _no_room_for("checking it on float32 copies", need)
            if short:
                return {"skipped": f"in {name} the outputs differ by {res['rel_diff']:.2%} "
                                   f"of their largest, its rounding or a wrong group; "
                                   f"{short}{why}",
                        "memory": True, "max_abs_diff": res["max_abs_diff"],
                        "rel_diff": res["rel_diff"]}
            masked = self._masked(plan, float32=True)
            ours = _tree_copy(pruned, _float32_memo(pruned))
            out_m = self._kept_of_free(plan, flatten(run(masked, inputs)))
            out_p = flatten(run(ours, inputs))
            del masked, ours
            how = "on float32 copies"
        out, _ = _compared(out_m, out_p)
        out["in_float32"] = (f"in {name} the outputs differed by {res['rel_diff']:.2%} of "
                             f"their largest: checked again {how}")
        return out

    def _run_by_layer(self, model: nn.Module, cuts: list[Cut], dtype: torch.dtype | None,
                      inputs, compared: list | None = None) -> tuple[list | None, str]:
        """The flattened outputs of ``model`` (the original or a pruned copy) run as a
        :func:`layer_by_layer` copy, or None and why not (to follow a "not enough memory"
        text): it would not fit either, its forward failed, or it read a parameter
        outside the call that makes it (its outputs NaN where ``compared``'s are not)."""
        lbl = layer_by_layer(model, cuts, dtype, self._made_at())
        if lbl is None:
            return None, ("; nor can it be masked layer by layer as it runs: a cut touches "
                          "a parameter that is not floating")
        if not room_for(lbl.peak_bytes)[0]:
            return None, (f"; masking it layer by layer as it runs needs about "
                          f"{gigabytes(lbl.peak_bytes)}")
        try:
            out = flatten(run(lbl.model, inputs))
        except Exception as exc:
            return None, f"; masking it layer by layer as it ran failed: {error_line(exc)}"
        if compared is not None and _read_unmade(out, compared):
            return None, ("; masking it layer by layer as it runs cannot be done: the model "
                          "reads a layer's weights outside that layer's call")
        return out, ""

    def untraced(self) -> list[str]:
        """Parameters no traced op used: code the example inputs did not run (a branch not
        taken, an expert no token was routed to). Pruning leaves them as they are, so the
        pruned model may fail on inputs that reach them."""
        if self._untraced is None:
            held = {k for n in self.graph.nodes if n.params for k in n.params.values()}
            self._untraced = [name for name, _ in self.model.named_parameters()
                              if name not in held]
        return self._untraced

    def verify(self, pruned: nn.Module, plan: Plan, masked: bool = True) -> dict:
        """Forward on the example inputs, output shapes kept, and masked equivalence (when
        every pruned group is exact: no norm or softmax over pruned channels). ``untraced``
        lists parameters the example inputs never reached (see :meth:`untraced`)."""
        self.check_plan(plan)
        res: dict = {"forward": False, "shapes_kept": False}
        if plan.removed and self.untraced():
            res["untraced"] = list(self.untraced())
        try:
            out_p = run(pruned, self.inputs)
            res["forward"] = True
        except Exception as exc:
            res["error"] = error_line(exc)
            if out_of_memory(exc):  # (no room to run it says nothing of the pruning)
                res["memory"] = True
            return res
        fo, fp = self._original_outputs(), flatten(out_p)
        res["output_shapes"] = {p or "output": list(t.shape) for p, t in fp}
        free = set(self.free_outputs)
        res["shapes_kept"] = len(fo) == len(fp) and all(
            a.shape == b.shape for (path, a), (_, b) in zip(fo, fp, strict=True)
            if path not in free)
        if free:  # (the masked check compares them at the positions the plan keeps)
            res["free_outputs"] = list(self.free_outputs)
        by_id = {g.id: g for g in self.groups}
        inexact = [gid for gid in plan.removed if not by_id[gid].exact]
        # inexact only through a layer's own forward (timm's BatchNormAct2d): the outputs
        # can tell whether it keeps channels apart, so those groups are checked as exact
        # ones are, and a difference there only says the check cannot be made
        opaque = {gid for gid in inexact if by_id[gid].opaque_only}
        if not res["shapes_kept"]:
            res["masked_equivalence"] = {"skipped": "the output shapes changed"}
            return res
        if not masked:
            res["masked_equivalence"] = {"skipped": "not asked for"}
            return res
        checks = _real(self.model)
        tried = None
        if checks and set(inexact) <= opaque:
            short = _no_room_for("a masked copy of the model", self._masked_bytes(plan))
            check = self._masked_equivalence(plan, fp, pruned, short)
            if "ok" not in check:  # (no room for it, even layer by layer)
                res["masked_equivalence"] = check
                return res
            if check["ok"] or not opaque:
                if opaque:
                    check["own_forward"] = (
                        f"{counted(len(opaque), 'pruned group')} "
                        f"{'holds' if len(opaque) == 1 else 'hold'} a layer with its own "
                        "forward, which these outputs show keeps the channels apart")
                res["masked_equivalence"] = check
                return res
            tried = check

        def skipped(named: list[int]) -> str:
            first = by_id[named[0]]
            return (f"{counted(len(named), 'pruned group')} "
                    f"{'is' if len(named) == 1 else 'are'} inexact: "
                    f"{first.stats_notes[0] if first.stats_notes else ''}"
                    f"{' (and more)' if len(named) > 1 else ''}"
                    + (f" (checked all the same: max |diff| {tried['max_abs_diff']:.3g}, so "
                       "such a layer's forward mixes channels, or normalises over them)"
                       if tried else ""))

        # the groups inexact only through a layer's own forward are checked with the exact
        # ones below (unless the whole plan's check just failed on them): counted there when
        # that check passes
        res["masked_equivalence"] = {
            "skipped": skipped([gid for gid in inexact if gid not in opaque or not checks
                                or tried is not None] or inexact)
            if inexact else "model has no real weights"}
        if not (checks and inexact):
            return res
        # a transformer's residual stream is inexact (its norms see the lost channels),
        # which skipped the check for every plan that pruned it: the exact groups are still
        # checked, pruned alone, on a copy of their own; with the groups whose layers have
        # their own forward first, unless the whole plan's check just failed on them
        exact = {gid: u for gid, u in plan.removed.items() if by_id[gid].exact}
        wider = {gid: u for gid, u in plan.removed.items() if by_id[gid].exact or
                 gid in opaque and tried is None}
        part = None
        if len(wider) > len(exact):
            part = self._alone(plan, wider)
            if part.get("ok"):  # (counted among the exact ones, which they proved to be)
                part["own_forward"] = len(wider) - len(exact)
            else:
                part = None
        if part is None and exact:
            part = self._alone(plan, exact)
        if opaque and (part is None or not part.get("own_forward")):
            res["masked_equivalence"]["skipped"] = skipped(inexact)
        if part is not None:
            res["masked_equivalence"]["exact_groups"] = part
        return res

    def _alone(self, plan: Plan, removed: dict[int, list[int]]) -> dict:
        """Masked equivalence of ``removed``, some of ``plan``'s groups, pruned alone."""
        part = Plan(removed, dict(plan.settings))
        alone = pruned_bytes(self.model, self.changes(part))
        short = _no_room_for("these groups pruned alone", alone)
        if short:
            return {"groups": len(removed), "skipped": short, "memory": True}
        short = _no_room_for("these groups pruned alone and a masked copy of the model",
                             alone + self._masked_bytes(part))
        try:
            model = self.apply(part, config=False)
            check = self._masked_equivalence(part, flatten(run(model, self.inputs)), model,
                                             short)
        except Exception as exc:  # (the whole plan ran: say what this part did)
            if out_of_memory(exc):  # the machine's lack, not the groups': no verdict
                return {"groups": len(removed), "memory": True,
                        "skipped": f"not enough memory: {error_line(exc)}"}
            check = {"ok": False, "error": error_line(exc)}
        return {"groups": len(removed), **check}

    def _original_outputs(self) -> list:
        """The unpruned model's outputs on the example inputs, flattened (run once: the
        model is never changed)."""
        if self._outputs is None:
            self._outputs = flatten(run(self.model, self.inputs))
        return self._outputs

    def _kept_of_free(self, plan: Plan, outs: list) -> list:
        """``outs`` (flattened outputs at the unpruned widths: the original's, a masked
        copy's) with each free output cut to the positions ``plan`` keeps, as the pruned
        model makes it."""
        if not self.free_outputs:
            return outs
        got = []
        for (path, t), node in zip(outs, output_nodes(self.graph), strict=True):
            if node.id in self.graph.free_outputs and plan.removed:
                e = self.graph.in_edges[node.id][0]
                keys = [(e.source, e.source_port, d) for d in range(t.dim())]
                removed = self._removed_at(plan, set(keys))
                for d, key in enumerate(keys):
                    if removed.get(key):
                        keep = np.setdiff1d(np.arange(t.shape[d]), sorted(removed[key]))
                        t = t.index_select(d, torch.as_tensor(keep, device=t.device))
            got.append((path, t))
        return got

    def _masked_equivalence(self, plan: Plan, pruned_out: list,
                            pruned: nn.Module | None = None, short: str = "") -> dict:
        """The outputs ``pruned_out`` (flattened) of the model pruned by ``plan`` against
        those of the original with the removed channels' consumers zeroed. ``blind``: the
        zeroing left every output exactly as the original's, so the check could not fail
        (a head initialised to zeros, as some timm models' are without weights).
        ``short``: why a masked copy of the model does not fit: the weights are masked
        layer by layer as the model runs (:func:`layer_by_layer`; ``by_layer`` says so), or
        the check is skipped (``memory``) when that cannot be done either."""
        if short:
            out_m, why = self._run_by_layer(self.model, self._masked_cuts(plan), None,
                                            self.inputs, pruned_out)
            if out_m is None:
                return {"skipped": f"{short}{why}", "memory": True}
        else:
            out_m = flatten(run(self._masked(plan), self.inputs))
        out_m = self._kept_of_free(plan, out_m)
        res, pairs = _compared(out_m, pruned_out)
        if not res["ok"] and not short and self._cuts_read_buffers(plan):
            # buffers stay unzeroed (a zeroed variance under rsqrt is NaN), but a codebook
            # read by a distance is data: the removed features count there unless zeroed
            out_b = self._kept_of_free(
                plan, flatten(run(self._masked(plan, buffers=True), self.inputs)))
            res_b, pairs_b = _compared(out_b, pruned_out)
            if res_b["ok"]:
                res, pairs, out_m = res_b, pairs_b, out_b
                res["buffers_zeroed"] = ("the masked model zeroes the buffers the model reads "
                                         "as data too (with them unzeroed it differed)")
        if short:
            res["by_layer"] = f"{short}: each layer's weights were masked as it ran"
        half = next((a.dtype for a, _ in pairs if a.dtype in HALF_DTYPES), None)
        if half is not None and not res["ok"] and pruned is not None:
            # a model run in half precision: the masked model's sums hold zeros the pruned
            # one's lack, which moves where the kernels round (1.4% of the largest logit of
            # a 12-layer Llama in bfloat16; in float16 a sum may overflow in one of them
            # only), and two swapped channels move the small ResNet demo's outputs by less
            # (0.7-0.95%): no tolerance tells them apart, float32 does
            return self._masked_in_float32(plan, pruned, half, res, pruned_out)
        if plan.removed and pairs and all(
                torch.equal(a, o) for (_, a), (_, o) in zip(
                    out_m, self._kept_of_free(plan, self._original_outputs()), strict=True)
                if a.is_floating_point()):
            res["blind"] = ("zeroing the removed channels left the outputs exactly as they "
                            "were, so this check could not fail (a layer initialised to "
                            "zeros?)")
        return res


def _ignored(m: Member, side: str, ignore: set[tuple[str, str]]) -> bool:
    """Is ``side`` of member ``m`` ignored: its node or module named, or a module holding it
    (``layer1.0`` protects ``layer1.0.conv1``)?"""
    if (m.node_name, side) in ignore or (m.module, side) in ignore:
        return True
    parts = m.module.split(".")
    return any((".".join(parts[:i]), side) in ignore for i in range(1, len(parts)))


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


def _finite_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest |a - b| where both are finite (masked logits hold -inf in both: -inf - -inf
    is nan, which failed a correct prune)."""
    a, b = a.double(), b.double()
    both = a.isfinite() & b.isfinite()
    return float((a[both] - b[both]).abs().max()) if both.any() else 0.0


def _finite_max(a: torch.Tensor) -> float:
    """The largest finite |a| (0 if none)."""
    a = a.double()[a.isfinite()]
    return float(a.abs().max()) if a.numel() else 0.0


def _nonfinite_mismatches(a: torch.Tensor, b: torch.Tensor) -> int:
    """Entries that are inf or nan in one of ``a``, ``b`` and not the same in the other."""
    a, b = a.double(), b.double()
    same = (a == b) | (a.isnan() & b.isnan())
    return int((~(a.isfinite() & b.isfinite()) & ~same).sum())


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
    split after an earlier round) is never removed by a plan (see
    :meth:`Pruner._keep_every_part`), so the probe takes the next unit from that end."""
    m = group.multiple_of
    if m != 1:
        return list(range(m)) if end == "first" else \
            list(range(group.n_units - m, group.n_units))
    sole = {int(held[0]) for mem in group.members
            if len(held := np.unique(mem.unit)) == 1 and group.n_units > 1}
    order = range(group.n_units) if end == "first" else range(group.n_units - 1, -1, -1)
    return [next((u for u in order if u not in sole), order[0])]


#: half precisions a model may run in (``load_model(dtype=...)``)
HALF_DTYPES = (torch.bfloat16, torch.float16)


def _compared(out_m: list, out_p: list) -> tuple[dict, list]:
    """Masked equivalence's verdict on the flattened outputs of the masked and the pruned
    model (``max_abs_diff``, ``rel_diff`` to the largest output, ``ok`` within float32's
    tolerance, ``nonfinite_mismatches``: inf or nan in one where the other has something
    else), and the floating output pairs compared."""
    pairs = [(a, b) for (_, a), (_, b) in zip(out_m, out_p, strict=True)
             if a.is_floating_point()]
    diff = max((_finite_diff(a, b) for a, b in pairs), default=0.0)
    odd = sum(_nonfinite_mismatches(a, b) for a, b in pairs)
    scale = max([_finite_max(a) for a, _ in pairs] + [1e-12])
    res = {"max_abs_diff": diff, "rel_diff": diff / scale,
           "ok": diff <= 1e-4 * max(1, scale) and not odd}
    if odd:
        res["nonfinite_mismatches"] = odd
    return res, pairs


def _float32_memo(model: nn.Module) -> dict[int, torch.Tensor]:
    """deepcopy memo mapping each floating tensor of ``model`` to a float32 copy of it (a
    copy even when it is float32 already: the copy may be zeroed)."""
    memo: dict[int, torch.Tensor] = {}
    for _, _, t in _tensor_lookup(model).values():
        if id(t) not in memo and t.is_floating_point():
            new = t.detach().to(torch.float32, copy=True)
            memo[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) \
                if isinstance(t, nn.Parameter) else new
    return memo


#: what a model copied layer by layer reads where a parameter it holds is not made: NaN,
#: so a read from outside the holding module's call shows in the outputs
_UNMADE = float("nan")


class LayerByLayer(NamedTuple):
    """A copy of a model that makes its parameters one layer at a time (see
    :func:`layer_by_layer`) and the most bytes of them alive at once."""

    model: nn.Module
    peak_bytes: int


def layer_by_layer(model: nn.Module, cuts: Iterable[Cut] = (),
                   dtype: torch.dtype | None = None,
                   made_at: Mapping[str, str] | None = None) -> LayerByLayer | None:
    """A copy of ``model`` that holds none of the parameters it changes: each parameter a cut
    touches (zeroed at the cut's positions) and, with ``dtype``, each floating one (cast to
    it) is made when the module holding it is called and dropped when that call returns;
    the other parameters are the original's own. Masked equivalence on a model too large for
    a masked copy: the copy costs the largest chain of nested modules' own parameters, not
    the model (a 7B decoder in bfloat16: 13 GB for a masked copy; this, in float32, about
    0.5 GB, its embedding).

    ``made_at`` maps a state_dict key to the module (by name) whose call makes it instead,
    an ancestor of its holder: ``nn.MultiheadAttention`` reads ``out_proj.weight`` itself,
    and a parameter read as a bare tensor (a class token) is read in some ancestor's
    forward (:meth:`Pruner._made_at` gives them from the graph). Outside the call that makes
    it, such a parameter is NaN of the right shape, dtype and device (one number, expanded):
    code that reads its values elsewhere gets NaN outputs, which :func:`_read_unmade` tells.
    Buffers (and plain tensor attributes) are copied (as ``dtype`` when floating) and never
    zeroed, as in :meth:`Pruner.masked_model`. None when a cut touches a parameter that is not
    floating (no NaN to mark it).

    >>> copy = layer_by_layer(model, pruner._masked_cuts(plan), made_at=pruner._made_at())
    >>> run(copy.model, inputs)  # == run(pruner.masked_model(plan), inputs)
    """
    table = _tensor_lookup(model)
    zeroed: dict[int, list[Cut]] = defaultdict(list)
    cuts = list(cuts)
    for cut in cuts:
        mod, name, t = table[cut.key]
        if name not in mod._parameters:  # (left as they are, as in Pruner.masked_model)
            continue
        if not t.is_floating_point():
            return None
        zeroed[id(t)].append(cut)
    # a weight-normalised layer's g is made with its v, then rescaled by v's zeroed norms
    norms = _zeroed_norms(weight_norms(model), cuts)
    for g_key in norms.values():
        zeroed.setdefault(id(table[g_key][2]), [])
    partner = {(g.rpartition(".")[0], g.rpartition(".")[2]): v.rpartition(".")[2]
               for v, g in norms.items()}
    memo: dict[int, torch.Tensor] = {}
    unmade: dict[int, tuple[torch.Tensor, torch.dtype]] = {}  # id(original) -> its NaN
    copied = 0  # bytes of the buffers cast
    for mod, name, t in table.values():
        if id(t) in memo:
            continue
        want = dtype if dtype is not None and t.is_floating_point() else t.dtype
        if name not in mod._parameters:  # (a buffer, or a plain tensor attribute)
            if want != t.dtype:  # (buffers stay copies: a forward may write its own)
                memo[id(t)] = t.detach().to(want, copy=True)
                copied += memo[id(t)].numel() * memo[id(t)].element_size()
        elif id(t) in zeroed or want != t.dtype:
            memo[id(t)] = nn.Parameter(torch.full((), _UNMADE, dtype=want, device=t.device)
                                       .expand(t.shape), requires_grad=False)
            unmade[id(t)] = (memo[id(t)], want)
        else:
            memo[id(t)] = t
    copy = _tree_copy(model, memo)
    modules = dict(copy.named_modules(remove_duplicate=False))
    for w_key, (u_key, v_key, dim) in spectral_norms(model).items():
        w_cuts = zeroed.get(id(table[w_key][2]))
        if w_cuts:  # its u (the copy's own buffer) keeps its sigma, as in the masked copy
            w, u, v = (table[k][2] for k in (w_key, u_key, v_key))
            w_zeroed = w.detach().clone()
            for cut in w_cuts:
                w_zeroed.index_fill_(cut.dim, torch.as_tensor(cut.positions, device=w.device), 0)
            holder, name = modules[u_key.rpartition(".")[0]], u_key.rpartition(".")[2]
            setattr(holder, name, u_keeping(sigma(w, u, v, dim), w_zeroed, u, v, dim)
                    .to(getattr(holder, name).dtype))
    # module that makes them -> [(holder, name, original, its NaN, dtype, cuts)]
    makes: dict[str, list[tuple]] = defaultdict(list)
    for key, (mod, name, t) in table.items():
        if id(t) in unmade and name in mod._parameters:
            holder = key.rpartition(".")[0]
            at = _common_module(holder, (made_at or {}).get(key, holder))
            makes[at].append((modules[holder], name, t, *unmade[id(t)], zeroed.get(id(t), []),
                              partner.get((holder, name))))
    own = {at: sum(t.numel() * dt.itemsize for _, _, t, _, dt, _, _ in entries)
           for at, entries in makes.items()}

    def peak(name: str, mod: nn.Module) -> int:
        return own.get(name, 0) + max((peak(f"{name}.{n}" if name else n, c)
                                       for n, c in mod.named_children()), default=0)

    for at, entries in makes.items():
        # (first: a pre-hook of its own, the old weight_norm, reads them)
        modules[at].register_forward_pre_hook(_make_on_call(entries), prepend=True)
        modules[at].register_forward_hook(_unmake_on_return(entries), always_call=True)
    return LayerByLayer(copy, peak("", copy) + copied)


def _zeroed_norms(norms: Mapping[str, str], cuts: Iterable[Cut]) -> dict[str, str]:
    """The weight-normalised layers (``v`` key -> ``g`` key) whose ``v`` a masked copy
    zeroes entries of: their ``g`` is rescaled after the zeroing (:meth:`Pruner._masked_cuts`
    leaves out the cuts along ``g``'s own dim)."""
    return {c.key: norms[c.key] for c in cuts if c.key in norms} if norms else {}


def _common_module(a: str, b: str) -> str:
    """The innermost module holding both modules ``a`` and ``b`` (by name; "" the root)."""
    pa, pb = a.split(".") if a else [], b.split(".") if b else []
    n = 0
    while n < min(len(pa), len(pb)) and pa[n] == pb[n]:
        n += 1
    return ".".join(pa[:n])


def _make_on_call(entries: list[tuple]) -> Callable:
    def make(_mod: nn.Module, _args) -> None:
        with torch.no_grad():
            made = {}
            for holder, name, t, _, want, cuts, _ in entries:
                value = t.detach().to(want, copy=True)
                for cut in cuts:
                    value.index_fill_(cut.dim, torch.as_tensor(cut.positions,
                                                               device=value.device), 0)
                made[id(holder), name] = (t, value)
            for holder, name, t, _, _, _, v_name in entries:
                if v_name is not None:  # a weight-normalised g: rescaled as in _masked
                    (v, v_zeroed), g = made[id(holder), v_name], made[id(holder), name][1]
                    g.copy_(rescaled(g, v, v_zeroed, normed_dims(t.shape, v.ndim)))
            for holder, name, *_ in entries:
                holder._parameters[name] = nn.Parameter(made[id(holder), name][1],
                                                        requires_grad=False)
    return make


def _unmake_on_return(entries: list[tuple]) -> Callable:
    def unmake(_mod: nn.Module, _args, _out) -> None:
        for holder, name, _, nan, *_ in entries:
            holder._parameters[name] = nan
    return unmake


def _read_unmade(out_copy: list, out_other: list) -> bool:
    """Whether outputs of a :func:`layer_by_layer` copy hold NaN where the model it is
    compared with has a number: a parameter read outside its holder's call."""
    return any(a.is_floating_point() and bool((torch.isnan(a) & ~torch.isnan(b)).any())
               for (_, a), (_, b) in zip(out_copy, out_other, strict=True)
               if a.shape == b.shape)


def _no_room_for(what: str, need: int) -> str:
    """Why a check that needs ``need`` bytes more is skipped ("" when they fit)."""
    room, free = room_for(need)
    return "" if room else (f"not enough memory: {what} needs about {gigabytes(need)}, and "
                            f"this machine has {gigabytes(free)} free")


def memory_note(verification: dict) -> str:
    """Says that masked equivalence was not checked for want of memory ("" otherwise)."""
    me = verification.get("masked_equivalence") or {}
    part = me.get("exact_groups") if isinstance(me.get("exact_groups"), dict) else {}
    for d in (me, part):
        if d.get("memory"):
            return f"masked equivalence not checked: {d['skipped']}"
    return ""


def run_failure(verification: dict) -> DepViewError:
    """The one-line error for a pruned model whose forward failed in :meth:`Pruner.verify`:
    short of memory (try again with more free), or its forward fails (a pruning bug, or the
    model's code read a size that did not follow)."""
    if verification.get("memory"):
        return MemoryShortError(f"not enough memory to run the pruned model "
                                f"({verification.get('error')}); free memory and try again")
    return DepViewError(f"the pruned model fails to run: {verification.get('error')}")


def floor_note(plan: Plan) -> str:
    """Says which LSTMs with ``proj_size`` kept more cell units than the ratio asked ("" for
    none): ``hidden_size`` stays above ``proj_size``."""
    floors = plan.settings.get("cells_above_projection") or {}
    if not isinstance(floors, dict) or not floors:
        return ""
    kept = ", ".join(f"'{m}' {n}" for m, n in sorted(floors.items()))
    return (f"cell units kept above the projection's width, as an LSTM needs: {kept}")


def masked_note(verification: dict) -> str:
    """Says that masked equivalence failed ("" when it passed or was skipped): the pruned
    model runs but is not the original with the removed channels zeroed, so a group is
    wrong."""
    me = verification.get("masked_equivalence") or {}
    part = me.get("exact_groups") if isinstance(me.get("exact_groups"), dict) else {}
    if not part.get("ok", True):
        why = part.get("error") or f"max |diff| {part.get('max_abs_diff', 0):.3g}"
        return (f"masked equivalence of the {counted(part.get('groups', 0), 'exact group')} "
                f"pruned alone FAILED: {why}; one of them is wrong")
    if me.get("ok", True):
        return ""
    odd = me.get("nonfinite_mismatches")
    odd = f", {odd} {'entry' if odd == 1 else 'entries'} inf or nan in only one" if odd else ""
    return (f"masked equivalence FAILED: max |diff| {me.get('max_abs_diff', 0):.3g}{odd}; the "
            "pruned model is not the original with the removed channels zeroed")


def blind_note(verification: dict) -> str:
    """Says that masked equivalence passed only because it could not fail ("" otherwise):
    zeroing the removed channels left the outputs exactly as they were."""
    me = verification.get("masked_equivalence") or {}
    part = me.get("exact_groups") if isinstance(me.get("exact_groups"), dict) else {}
    why = me.get("blind") or part.get("blind")
    return f"note: masked equivalence tells nothing here: {why}" if why else ""


def untraced_note(verification: dict) -> str:
    """A warning about parameters the example inputs never reached ("" when none)."""
    names = verification.get("untraced") or []
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (f"warning: {len(names)} parameter(s) never ran on the example inputs ({shown}) and "
            "were not pruned: inputs that reach them may fail")


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


def _slice_hint(graph: Graph, gs: list[Group]) -> str:
    """A likely cause of a failed probe: a slice of the pruned dim whose bounds stay numbers
    (Phi-3's ``qkv[..., :query_pos]`` with ``query_pos`` from the config every layer shares),
    while the positions it should cut moved. "" when the groups pass through no such slice."""
    for g in gs:
        for node, s in fixed_slices(graph, g):
            step = f":{s.step}" if s.step != 1 else ""
            return (f"; '{node.name}' slices [{s.start}:{s.stop}{step}] of the pruned dim: "
                    "bounds written in the code or computed from a config (one every layer "
                    "shares) do not follow the kept channels")
    return ""


_NUMBER_MOVED = "a number the forward derives from a width"


def _moved_why(node: Node) -> str:
    """The likely cause of a size that moved at ``node``: a reshape's ``-1`` took the lost
    channels; any other op made a tensor whose size was computed from values the pruned
    weights change (HF VITS: the waveform's length is the sum of predicted durations)."""
    if node.op_type is OpType.RESHAPE:
        return "a -1 in a view?"
    return ("a size computed from values the pruned weights change, as a length the model "
            "predicts?")


def _moved(before: Graph, after: Graph, owned: dict[tuple[str, int, int], int | None],
           numbers: bool = True) -> str:
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
    groups already marked inexact, whose changes are known)."""
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
        for u in np.unique(unit):
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
                 not exact and (a.exact or a.opaque_only) and (b.exact or b.opaque_only))


def _overlap(a: Group, b: Group) -> bool:
    """Do two groups claim a position of the same tensor dim?"""
    return any(np.intersect1d(a.tensors[k][0], b.tensors[k][0]).size
               for k in a.tensors.keys() & b.tensors.keys())


#: the node types that read a tensor of the model as it is (a bare parameter or buffer)
_SOURCE_TENSORS = frozenset((OpType.PARAMETER, OpType.BUFFER))


#: validation may probe a model of at most this many bytes of tensors on real tensors (a
#: pruned copy is made per probe); larger ones always run on meta
REAL_PROBE_BYTES = 16 << 20


#: ... and whose traced ops output at most this many elements in all (a real forward's cost
#: grows with them, a meta one's does not)
REAL_PROBE_ELEMENTS = 50_000_000


def _activation_elements(graph: Graph) -> int:
    return sum(math.prod(s) for n in graph.nodes for s in n.out_shapes)


def _tensor_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _real(model: nn.Module) -> bool:
    p = next(iter(model.parameters()), None)
    return p is None or p.device.type != "meta"


def _each_tensor(inputs, fn):
    """``inputs`` (a tuple, or a dict of keyword inputs) with ``fn`` applied to each tensor."""
    def conv(t):
        return fn(t) if isinstance(t, torch.Tensor) else t
    if isinstance(inputs, dict):
        return {k: conv(v) for k, v in inputs.items()}
    return tuple(conv(t) for t in inputs)


def _copied(inputs):
    """The example inputs cloned: a probe's forward may change its inputs in place."""
    return _each_tensor(inputs, torch.Tensor.clone)


def _to_meta(inputs):
    return _each_tensor(inputs, lambda t: torch.empty_like(t, device="meta"))


def run(model: nn.Module, inputs):
    """``model`` on (a copy of) ``inputs``, in eval mode: a forward that changes its input in
    place must not change what the next run is compared on. Random numbers drawn inside the
    forward (ViT-MAE's masking noise) are drawn from one fixed seed, so the original, pruned
    and masked models draw the same ones; the caller's random state is left as it was."""
    inputs = _copied(inputs)
    with torch.no_grad(), eval_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if isinstance(inputs, dict):
            return model(**inputs)
        return model(*inputs)


def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten._grouped_mm``, which FlopCounterMode does not count: each output
    element is a dot product over K, except that a 2-D @ 2-D product split along K by
    ``offs`` (one output slab per group) spends K on all its slabs together."""
    flops = 2 * a_shape[-1] * math.prod(out_shape)
    return flops // out_shape[0] if len(a_shape) == 2 and len(b_shape) == 2 else flops


#: Ops FlopCounterMode has no formula for (mixture-of-experts layers call grouped_mm).
_EXTRA_FLOPS = {op: fn for op, fn in
                [(getattr(torch.ops.aten, "_grouped_mm", None), _grouped_mm_flops)] if op}


def count(model: nn.Module, inputs) -> dict:
    """Parameters (unique tensors) and MACs of one forward (FlopCounterMode FLOPs / 2).
    ``model`` is a copy: its parameters stop requiring grad (FlopCounterMode's module tracker
    hooks every tensor that requires grad, and a view of a parameter made under no_grad, as
    ``latents.expand(b, -1, -1)``, requires grad without a grad_fn: it asserts)."""
    model.requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS)
    with counter:
        run(model, inputs)
    return {"params": int(params), "macs": int(counter.get_total_flops() // 2)}


def batch_shapes(inputs) -> list | dict:
    """Input shapes, to record (and show) which batch a plan was scored on."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, dict):
        return {k: list(getattr(v, "shape", ())) for k, v in inputs.items()}
    return [list(getattr(v, "shape", ())) for v in inputs]


def _own_loss(out) -> torch.Tensor | None:
    """A scalar ``loss`` the model returned (attribute or key), if it has a gradient."""
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    if isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.requires_grad:
        return loss
    return None


def taylor_grads(model: nn.Module, inputs) -> dict[str, torch.Tensor]:
    """Gradients of a loss for first-order Taylor scores: the model's own ``loss`` output
    when it returns one (a Hugging Face model given ``labels``), else a surrogate, the mean
    of the squared outputs.

    The model itself is not changed (a copy runs the backward pass)."""
    need = 2 * tensor_bytes(model)
    check_room(need, "Taylor importance (a copy of the model and its gradients)",
               "use l1, l2 or bn, which need no copy")
    m = _tree_copy(model, {})
    m.zero_grad(set_to_none=True)
    for p in m.parameters():  # frozen weights (fine-tuning a head) are scored too
        if p.is_floating_point():
            p.requires_grad_(True)
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    given = inputs.values() if isinstance(inputs, dict) else inputs
    if any(isinstance(t, torch.Tensor) and t.numel() == 0 for t in given):
        raise DepViewError("Taylor importance: the batch is empty (a tensor with 0 elements)")
    try:
        with torch.enable_grad(), eval_mode(m):  # no dropout: the same batch, the same plan
            out = m(*inputs) if not isinstance(inputs, dict) else m(**inputs)
            loss = _own_loss(out)
            if loss is None:
                loss = sum(t.float().pow(2).mean() for _, t in flatten(out)
                           if t.is_floating_point())
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                raise DepViewError("the model's outputs have no gradient to score units with")
            loss.backward()
    except DepViewError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise DepViewError(f"Taylor importance: the model's forward and backward on the batch "
                           f"failed: {type(exc).__name__}: {first}") from exc
    grads = {k: p.grad.detach() for k, p in m.named_parameters() if p.grad is not None}
    bad = next((k for k, g in grads.items() if not bool(g.isfinite().all())), None)
    if bad is not None:
        raise DepViewError(f"Taylor importance: the gradient of {bad} holds nan or inf (is the "
                           "batch empty, or does it hold nan or inf?)")
    return grads


def pruned_bytes(model: nn.Module, changes: dict[str, dict[int, np.ndarray]]) -> int:
    """Bytes :func:`materialize` allocates for a copy of ``model`` that loses ``changes``:
    every tensor that holds data, each once, at its pruned size."""
    total, seen = 0, set()
    for key, (_, _, t) in _tensor_lookup(model).items():
        if id(t) not in seen and not t.is_meta:
            seen.add(id(t))
            shape = list(t.shape)
            for d, rem in changes.get(key, {}).items():
                shape[d] -= len(rem)
            total += math.prod(shape) * t.element_size()
    return total


def materialize(model: nn.Module, graph: Graph, changes: dict[str, dict[int, np.ndarray]],
                widths: dict[str, dict[str, int]], device: str | None = None,
                attrs: dict[str, dict[str, int]] | None = None) -> nn.Module:
    """A deep copy of ``model`` whose tensors lost ``changes`` and whose attributes follow
    (the atomic modules' own, and ``attrs``: module path -> {attribute: value}).

    With ``device="meta"`` no tensor data is copied at all (the memo of deepcopy maps every
    tensor to an empty meta tensor of its new shape).
    """
    table = _tensor_lookup(model)
    memo: dict[int, object] = {}
    for key, (mod, name, t) in table.items():
        if id(t) in memo:
            continue
        dims = changes.get(key, {})
        if not dims and _plain(mod, name):
            continue  # (copied as it was: a plain attribute keeps its data on meta too)
        if device == "meta" and not (dims and _plain(mod, name)):
            shape = list(t.shape)
            for d, rem in dims.items():
                shape[d] -= len(rem)
            new = torch.empty(shape, dtype=t.dtype, device="meta")
        else:
            new = t.detach()
            for d, rem in dims.items():
                keep = np.setdiff1d(np.arange(t.shape[d]), rem)
                new = new.index_select(d, torch.as_tensor(keep, device=t.device))
            new = _laid_out_like(new, t) if dims else new.clone()
        if isinstance(t, nn.Parameter):
            new = nn.Parameter(new, requires_grad=t.requires_grad)
        memo[id(t)] = new
    if device != "meta":
        _renormalize(table, memo, graph, changes)
    if any(n.custom is not None and n.custom.opaque for n in graph.nodes):
        # a TorchScript module copies itself, past the memo, and under grad mode its copies'
        # parameters come out as non-leaf clones (requires_grad_ then fails): copy without
        # grad, and give its parameters their flags back
        with torch.no_grad():
            pruned = copy.deepcopy(model, memo)
        flags = {k: p.requires_grad for k, p in model.named_parameters()}
        for k, p in pruned.named_parameters():
            if p.requires_grad != flags.get(k, p.requires_grad):
                p.requires_grad_(flags[k])
    else:
        pruned = _tree_copy(model, memo)
    if graph.weight_norms or graph.spectral_norms or graph.prune_masks:
        refresh_computed_weights(pruned)  # (the attributes below are read from the weight)
    mods = dict(pruned.named_modules())
    touched = {key.rpartition(".")[0] for key in changes} | set(widths)
    seen = set()
    # (in eval mode: reading a spectral-normalised weight in training mode runs a power
    # iteration, which would change the u and v just cut and rescaled)
    with eval_mode(pruned):
        for node in graph.nodes:
            if node.module in touched and node.is_module and node.module not in seen:
                seen.add(node.module)
                mod = mods.get(node.module)
                if mod is not None:
                    REFRESH[node.op_type](mod, widths.get(node.module, {}))
        for path in sorted(touched - seen):
            # a layer whose weight the forward used without calling it (F.conv1d(x,
            # self.conv1d.weight, ...)): its attributes follow its tensors all the same
            mod = mods.get(path)
            if mod is not None and path:
                REFRESH[classify(mod)](mod, widths.get(path, {}))
    for path, values in (attrs or {}).items():
        for k, v in values.items():
            set_attr(mods[path], k, v)
    return pruned


def refresh_computed_weights(model: nn.Module) -> None:
    """Recompute each weight a forward pre-hook keeps in a plain attribute (the older
    ``weight_norm`` and ``spectral_norm``, ``torch.nn.utils.prune``'s masks): between calls it
    is the last call's, the full-size one after a cut, and layers' attributes are read from
    it."""
    refresh_hooked_weights(model)
    refresh_hooked(model)
    refresh_masked(model)


def _renormalize(table: dict, memo: dict, graph: Graph,
                 changes: dict[str, dict[int, np.ndarray]]) -> None:
    """Give each weight-normalised layer whose ``v`` lost a normed dim's positions the
    rescaled ``g`` that keeps its weight the original's at the kept indices (weightnorm.py),
    and each spectral-normalised layer whose weight was cut the rescaled ``u`` that keeps its
    sigma (spectralnorm.py)."""
    for w_key, (u_key, v_key, dim) in graph.spectral_norms.items():
        if not changes.get(w_key) or not {w_key, u_key, v_key} <= table.keys():
            continue
        w, u, v = table[w_key][2], table[u_key][2], table[v_key][2]
        with torch.no_grad():
            memo[id(u)] = u_keeping(sigma(w, u, v, dim), memo[id(w)], memo[id(u)],
                                    memo[id(v)], dim)
    for v_key, g_key in graph.weight_norms.items():
        removed = changes.get(v_key)
        if not removed or g_key not in table or v_key not in table:
            continue
        g, v = table[g_key][2], table[v_key][2]
        if not renormalizes(g.shape, v.ndim, removed):
            continue
        with torch.no_grad():
            new = g_after_cut(g, memo[id(g)], v, memo[id(v)], removed)
        memo[id(g)] = nn.Parameter(new, requires_grad=g.requires_grad) \
            if isinstance(g, nn.Parameter) else new


def _equal_items(v, value: int) -> list[int]:
    """The indices of the int items equal to ``value`` when ``v`` is a list or tuple no
    longer than plan.json records (an attribute's stored sizes), else none."""
    if type(v) not in (list, tuple) or len(v) > MAX_LISTED:
        return []
    return [i for i, x in enumerate(v) if type(x) is int and x == value]


def get_attr(mod: nn.Module, attr: str):
    """``mod.attr``, or for ``config.name`` the attribute of the config object it holds."""
    owner, _, name = attr.rpartition(".")
    return getattr(getattr(mod, owner) if owner else mod, name)


def set_attr(mod: nn.Module, attr: str, value) -> None:
    owner, _, name = attr.rpartition(".")
    setattr(getattr(mod, owner) if owner else mod, name, value)


#: values a deep copy returns as they are
_ATOMS = frozenset({int, float, bool, complex, str, bytes, type(None), type(Ellipsis), range,
                    torch.dtype, torch.device, torch.layout, torch.memory_format})
#: module class -> whether :func:`_tree_copy` may copy it itself (see there)
_PLAIN_MODULES: dict[type, bool] = {}


def _tree_copy(obj, memo: dict):
    """``copy.deepcopy(obj, memo)``, 3-4x faster for a tree of modules (GPT-2 small on meta:
    8 ms against 29 ms; validation copies the model once per probe).

    ``deepcopy`` reconstructs every module, and each of its dozen hook and parameter
    ``OrderedDict``s, through ``__reduce_ex__``; here a module whose class keeps object's
    reduction (no ``__deepcopy__``, ``__reduce__``/``__reduce_ex__``, ``__getnewargs__``,
    ``__slots__`` or copyreg entry of its own) is copied as deepcopy's ``_reconstruct`` copies
    it: a new object, then its ``__setstate__`` (torch's or its class's: Conv2d, LSTM,
    MultiheadAttention and Upsample have their own) given its ``__getstate__`` dict, copied.
    So are dicts, plain ``OrderedDict``s, lists and sets of plain values; anything else goes
    to ``copy.deepcopy`` with the same memo."""
    cls = type(obj)
    if cls in _ATOMS:
        return obj
    y = memo.get(id(obj), memo)
    if y is not memo:
        return y
    if cls is dict or (cls is OrderedDict and not obj.__dict__):
        y = memo[id(obj)] = cls()
        for k, v in obj.items():
            y[k if type(k) in _ATOMS else _tree_copy(k, memo)] = _tree_copy(v, memo)
        return y
    if cls is list:  # (LeViT keeps lists of 10^5 ints: no call per plain item)
        y = memo[id(obj)] = []
        y.extend([v if type(v) in _ATOMS else _tree_copy(v, memo) for v in obj])
        return y
    if cls is tuple and all(type(v) in _ATOMS for v in obj):  # a conv's kernel_size, ...
        return obj  # (deepcopy returns such a tuple itself, unmemoised)
    if cls is set and all(type(v) in _ATOMS for v in obj):  # _non_persistent_buffers_set
        y = memo[id(obj)] = set(obj)
        return y
    plain = _PLAIN_MODULES.get(cls)
    if plain is None:
        plain = _PLAIN_MODULES[cls] = (
            issubclass(cls, nn.Module) and cls not in copyreg.dispatch_table
            and cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
            and getattr(cls, "__deepcopy__", None) is None
            and getattr(cls, "__getnewargs_ex__", None) is None
            and getattr(cls, "__getnewargs__", None) is None and not copyreg._slotnames(cls))
    if plain:
        state = obj.__getstate__()
        if type(state) is dict:
            y = memo[id(obj)] = cls.__new__(cls)
            y.__setstate__({k: _tree_copy(v, memo) for k, v in state.items()})
            return y
    return copy.deepcopy(obj, memo)


def _laid_out_like(new: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``new``, cut from ``t``, in ``t``'s memory layout: ``index_select`` returns a
    contiguous tensor, so a model converted with ``.to(memory_format=torch.channels_last)``
    came back with contiguous weights (its convs then convert them on every call). The dims
    keep the order of their strides, as ``clone()`` keeps an uncut tensor's."""
    if t.dim() < 2 or t.is_contiguous():
        return new
    try:
        order = t.dim_order()
    except RuntimeError:  # strides that no order of the dims gives (an expanded tensor)
        return new
    return torch.empty_permuted(new.shape, order, dtype=new.dtype,
                                device=new.device).copy_(new)


def attr_changes(original: nn.Module, pruned: nn.Module) -> dict[str, dict]:
    """module path -> {attribute: new value} for public scalar attributes that changed."""
    out = {}
    owners = config_owners(original)
    pm = dict(pruned.named_modules())
    for name, mod in original.named_modules():
        if name not in pm:
            continue
        a, b = module_attrs(mod), module_attrs(pm[name])
        diff = {k: v for k, v in b.items() if a.get(k) != v}
        ca, cb = held_config(mod), held_config(pm[name])
        if ca is not None and cb is not None and owners[id(ca)] == name:
            # a config object the layers share (Hugging Face's): under its first holder
            was = module_attrs(ca)  # (any object's public values, lists as lists)
            diff.update({f"config.{k}": v for k, v in module_attrs(cb).items()
                         if was.get(k) != v})
        if diff:
            out[name] = diff
    return out


def _computes(pruned: nn.Module, call, want: list) -> Callable[[nn.Module | None], bool]:
    """The check :func:`fit_config` keeps a config by: whether a model built from it, given
    ``pruned``'s weights, gives exactly ``want`` (``pruned``'s outputs) through ``call``."""

    def same(built: nn.Module | None) -> bool:
        if built is None:
            return False
        try:
            weights = pruned.state_dict()
            if set(dict(built.named_buffers())) - set(built.state_dict()):
                # buffers made at init and not saved (rotary frequencies, a sinusoidal
                # table): from_pretrained makes them from the config, so must this
                # check; the others are the pruned weights, assigned
                device = next(iter(weights.values())).device if weights else "cpu"
                built = build_from_config(type(built), held_config(built), device)
            built.load_state_dict(weights, strict=True, assign=True)
            got = [t for _, t in flatten(call(built))]
        except Exception:  # (a meta tensor left, a forward that fails)
            return False
        return len(got) == len(want) and all(
            a.shape == b.shape and torch.equal(a, b) for a, b in zip(got, want, strict=True))

    return same


def config_parts(model: nn.Module) -> list[str]:
    """The outermost submodules holding a config (each config object once, none the model's
    own): the Hugging Face models inside a module of yours."""
    out: list[str] = []
    seen: set[int] = set()
    for name, m in model.named_modules():
        c = held_config(m)
        if c is None or id(c) in seen or any(name.startswith(f"{p}.") for p in out):
            continue
        seen.add(id(c))
        if name:
            out.append(name)
    return out


def _first_calls(model: nn.Module, inputs, names: list[str]) -> dict[str, tuple]:
    """name -> (args, kwargs) of each named submodule's first call in a forward of
    ``model`` on ``inputs`` (copies of the tensors it was given)."""
    calls: dict[str, tuple] = {}
    handles = []
    for name in names:
        def pre(_m, args, kwargs, name=name):
            calls.setdefault(name, (_copied(args), _copied(kwargs)))
        handles.append(model.get_submodule(name).register_forward_pre_hook(pre,
                                                                           with_kwargs=True))
    try:
        run(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return calls


def config_owners(model: nn.Module) -> dict[int, str]:
    """id(config) -> the first module path (``named_modules`` order) holding it: the name its
    attributes go by (``config.num_attention_heads`` under ``""``), as candidates and in
    plan.json alike."""
    out: dict[int, str] = {}
    for name, m in model.named_modules():
        if (c := held_config(m)) is not None:
            out.setdefault(id(c), name)
    return out
