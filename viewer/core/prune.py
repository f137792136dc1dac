"""Importance, plans, preview and apply: the ``Pruner``.

    >>> lm = load_model("demo:resnet")
    >>> session = Pruner(lm.model, lm.inputs)            # traces once, finds all groups
    >>> plan = session.plan(ratio=0.5, importance="l1")  # which units each group loses
    >>> session.preview(plan)["params"]                   # {"before": ..., "after": ...}
    >>> pruned = session.apply(plan)                     # a pruned copy; lm.model untouched
    >>> session.verify(pruned, plan)["masked_equivalence"]["max_abs_diff"]

A plan is plain data (group id -> removed unit ids) and can be saved as JSON. ``Pruner``
validates its groups with ``validate.GroupValidation`` and checks a pruned copy with
``verify.Verification``, both mixed into it; ``materialize`` makes the cuts real.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .arrays import unique
from .errors import DepViewError
from .forward import batch_shapes, copy_inputs, count, inputs_on_meta, is_real, run, taylor_grads
from .graph import Graph
from .groups import Group, all_groups, out_channel_dim, units_are_heads
from .handlers import Cut, cell_port, cell_width, node_cuts, picks_by_weight, rnn_key
from .materialize import get_attr, materialize, pruned_bytes, tensor_lookup
from .memory import check_room, gigabytes, room_for, tensor_bytes
from .modelconfig import build_from_config, fit_config, held_config
from .optypes import PICKS, OpGroup, OpType
from .plan import (
    IGNORE_SIDES,
    IMPORTANCE,
    READS_BATCH,
    SIDE_WORDS,
    Plan,
    SizeAttr,
    ignore_side,
    ignore_strings,
    is_ignored,
    is_pattern,
    match_pattern,
    parse_ignore,
    within,
)
from .positions import group_picks, picked_key, picked_width
from .spectralnorm import weight_of as sn_weight_of
from .text import counted, error_line
from .trace import MAX_LISTED, build_graph, eval_mode, output_nodes, output_path, plain_module
from .trees import flatten
from .validate import GroupValidation, sole_holders
from .verify import Verification
from .weightnorm import renormalizes, weight_of


def _fingerprint(model: nn.Module) -> tuple:
    """What a model's weights and buffers hold, cheaply: per tensor its storage, version,
    sum and (floating tensors) norm, as float64 reductions that copy nothing."""
    out = []
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            t = t.detach()
            norm = float(torch.linalg.vector_norm(t, dtype=torch.float64)) \
                if t.is_floating_point() and t.numel() else 0.0
            total = complex(t.sum(dtype=torch.complex128)) if t.is_complex() \
                else float(t.sum(dtype=torch.float64))
            out.append((t.data_ptr(), t._version, total, norm))
    return tuple(out)


def _kept(n: int, keep: int, round_to: int, multiple_of: int, least: int = 1) -> int:
    """How many of ``n`` units a group keeps when a ratio would keep ``keep``: at least one
    (at least ``least``: the experts a router picks), a multiple of ``round_to``, and a
    multiple of ``multiple_of`` removed (whole rounds of attention heads); rounded up, and
    ``n`` (nothing removed) when no count fits."""
    keep = max(1, least, keep)
    for k in range(keep, n):
        if k % round_to == 0 and (n - k) % multiple_of == 0:
            return k
    return n


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
        if not name.strip():  # (the path of a model's one output is "": not a name to give)
            raise DepViewError(f"a free output's name is empty: name one of the model's "
                               f"outputs ({shown}{', ...' if len(paths) > MAX_LISTED else ''})")
        node = graph.by_name.get(name)
        # (an older export's name of a NamedTuple output: ``[1]`` for ``features``)
        renamed = graph.info.get("renamed_outputs", {})
        if name.removeprefix("output.") in renamed:
            name = renamed[name.removeprefix("output.")]
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


def _check_graph_fits(model: nn.Module, graph: Graph) -> None:
    """A graph given to :class:`Pruner` must be this model's: every parameter it names with
    the shape it recorded (round 1's graph reused for round 2 planned cuts of channels the
    pruned model no longer has)."""
    table = tensor_lookup(model)
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
    for k, (_, _, t) in tensor_lookup(model).items():
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


class Pruner(GroupValidation, Verification):
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
        self._slice_list: list | None = None  # the graph's slices (see _slices)
        self._part_list: list | None = None  # ... and its slices' and splits' parts (_parts)
        #: tensor dim -> a slice or split of it whose bounds the forward computes from the
        #: width, as probes found (see _note_computed_bounds)
        self._computed_bounds: dict[tuple[int, int, int], str] = {}
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
        self._usage: tuple[tuple, dict[str, list | None]] | None = None  # picks' outputs

    # -- cuts -----------------------------------------------------------------------------
    def _tensor_table(self) -> dict[str, tuple[nn.Module, str, torch.Tensor]]:
        """:func:`tensor_lookup` of the model, made once: a plan's cuts read it for every
        group, once per validation probe (a walk over every module each time: YOLO-style
        models spent a fifth of their validation there). The model is not changed while a
        Pruner holds it, as its graph and validation already assume."""
        if self._table is None:
            self._table = tensor_lookup(self.model)
        return self._table

    def cuts(self, group: Group, units, joint: dict | None = None) -> list[Cut]:
        """Tensor cuts for removing ``units`` of ``group``. ``joint``: the members whose cuts
        pick positions by weight (:func:`picks_by_weight`) are not cut but their positions
        added to it, ``(node, side, dim, port) -> [positions, ...]``, for
        :meth:`plan_cuts` to cut once for every group of a plan."""
        units = np.asarray(sorted(units), dtype=np.int64)
        out: list[Cut] = []
        table = self._tensor_table()
        for m in group.members:
            pos = m.indices(units)
            if not len(pos):
                continue
            node = self.graph.nodes[m.node]
            if joint is not None and picks_by_weight(node, m.side):
                joint.setdefault((m.node, m.side, m.dim, m.port), []).append(pos)
                continue
            out += node_cuts(node, m.side, m.dim, pos,
                             lambda k: table[k][2] if k in table else None, m.port)
        return out + self._unread_twin_cuts(out)

    def plan_cuts(self, plan: Plan) -> list[Cut]:
        """The tensor cuts of every group of ``plan``. A layer that picks what to cut by
        weight (an nn.MultiheadAttention's inner dims, for the channels of its query) is cut
        once for the channels of all the groups that hold some: cut per group, two groups
        would each pick its least important dims, the same ones, and cut too few."""
        by_id = {g.id: g for g in self.groups}
        joint: dict[tuple[int, str, int, int], list[np.ndarray]] = {}
        out = []
        for gid, units in plan.removed.items():
            if gid not in by_id:
                raise DepViewError(f"plan names group {gid}, which this model does not have")
            out += self.cuts(by_id[gid], units, joint)
        table = self._tensor_table()
        picked = [cut for (nid, side, dim, port), parts in joint.items()
                  for cut in node_cuts(self.graph.nodes[nid], side, dim,
                                       np.sort(np.concatenate(parts)),
                                       lambda k: table[k][2] if k in table else None, port)]
        return out + picked + self._unread_twin_cuts(picked)

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
            side = ignore_side(m, self.graph.nodes[m.node], group, self.graph)
            if ignore and is_ignored(m, side, ignore):
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
        d["heads"] = units_are_heads(self.graph, group)  # what --round-to counts
        return d

    # -- importance -----------------------------------------------------------------------
    def importance(self, group: Group, criterion: str = "l1", seed: int = 0,
                   grads: dict[str, torch.Tensor] | None = None, batch=None) -> np.ndarray:
        """One score per unit (higher = more important), aggregated over the whole group.
        ``batch`` (None: the example inputs) is what Taylor and usage run the model on."""
        if criterion not in IMPORTANCE:
            raise DepViewError(f"unknown importance {criterion!r}; use one of "
                               f"{', '.join(IMPORTANCE)}")
        n = group.n_units
        if criterion == "random":
            return np.random.default_rng(seed * 100003 + group.id).random(n)
        if criterion == "usage":  # how often its units are picked; by L1 if nothing picks them
            used = self.usage_scores([group], batch)
            return used[group.id] if group.id in used else self.importance(group, "l1", seed)
        self._needs_weights(criterion)
        if criterion == "taylor" and grads is None:  # the gradients of the batch
            return self.taylor_scores([group], batch)[group.id]
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
        :func:`tensor_lookup` of the model."""
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
        together with ``global_``), keeping a multiple of ``round_to`` (of channels or heads;
        not of experts, which a router picks: their count has no alignment to keep) and at
        least one.
        ``ignore``: layer or module names (``fc:in``, ``layer1.0``, ``*.attn``) whose channels
        stay (:meth:`resolve_ignore`). ``overrides``: a ratio per group id or per layer or
        module name (``{"*.mlp": 0.5, 3: 0.2}``, :meth:`resolve_overrides`).
        ``batch`` (positional inputs as a tuple, or a dict) feeds the Taylor criterion; the
        example inputs are used when it is None."""
        _fraction("ratio", ratio)
        if not _number(round_to) or round_to != int(round_to) or round_to < 1:
            raise DepViewError(f"round_to must be a whole number >= 1, got {round_to!r}")
        round_to = int(round_to)
        if type(seed) is not int and not isinstance(seed, np.integer) or seed < 0:
            raise DepViewError(f"seed must be a whole number >= 0, got {seed!r}")
        ignore_set = self.resolve_ignore(ignore)
        given = overrides
        overrides = self.resolve_overrides(overrides, ignore_set)
        settings = {"ratio": ratio, "importance": importance, "global": global_,
                    "round_to": round_to, "ignore": ignore_strings(ignore_set),
                    "overrides": {str(k): v for k, v in sorted(overrides.items())}, "seed": seed}
        named = {k.strip(): v for k, v in (given or {}).items()
                 if isinstance(k, str) and not k.strip().isdigit()}
        if named:  # as the user gave them; "overrides" has the groups they set
            settings["override_names"] = named
        if self.free_outputs:
            settings["free_outputs"] = list(self.free_outputs)
        if importance in READS_BATCH:  # which inputs the scores came from
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
        used = self.usage_scores(prunable, batch) if importance == "usage" else {}
        if importance == "usage":  # ... or no op picking their units
            fell = [g.id for g in prunable if g.id not in used]
        if fell:
            settings["scored_by_l1"] = fell
        if importance == "taylor":
            scores = self.taylor_scores(prunable, batch)
            # no gradient reached them (code run without autograd), or only zeros: every
            # cut would tie, and the first units would go; their weights' L1 decides instead
            fell = [g.id for g in prunable if not scores[g.id].any()]
            if fell:
                settings["scored_by_l1"] = fell
                scores = {**scores, **{g.id: self.importance(g, "l1", seed)
                                       for g in prunable if g.id in fell}}
        elif importance == "usage":
            scores = {g.id: used[g.id] if g.id in used else self.importance(g, "l1", seed)
                      for g in prunable}
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
                                               1 if g.min_kept_why else round_to,
                                               g.multiple_of, g.min_kept)
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
                while k > 0 and ((g.n_units - k) % round_to or k % g.multiple_of):
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
            plan.skipped[gid] = f"{AT_PLANNED_WIDTH} ({kept} of {g.n_units} units kept) {err}"

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
        """The ``k`` least important units of ``g`` (``order``), except that each part whose
        size a module stores (:meth:`_sized_parts`: a split's part, a slice's range) keeps its
        most important unit, and so does a layer that holds only some of the group's units
        (one input of a concat): a part of width 0 would give a layer no channels, and
        :meth:`check_plan` refuses it."""
        chosen = [int(u) for u in order[:k]]
        parts: list[set[int]] = []
        for _what, key, at in self._sized_parts(g):
            pos, unit = g.tensors.get(key, (np.empty(0, dtype=np.int64),) * 2)
            inside = np.isin(pos, at)
            if inside.sum() == len(at):  # (one that other groups' positions keep from empty
                # is left to check_plan: they may keep it whatever this group removes)
                parts.append(set(unit[inside].tolist()))
        if g.multiple_of == 1:  # (whole rounds of heads cannot give one unit back)
            # a layer that holds only some of the units (one input of a concat) keeps one
            parts += [held for m in g.members
                      if len(held := set(unique(m.unit).tolist())) < g.n_units]
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
        # whole rounds only (a part given back may leave one short): the most important go
        # back, which empties no part
        while len(chosen) % g.multiple_of:
            chosen.remove(next(int(u) for u in order[::-1] if int(u) in chosen))
        return sorted(chosen)

    def _sized_parts(self, g: Group) -> dict[tuple[str, tuple[int, int, int], range],
                                             list[str]]:
        """The parts of the dims ``g`` shrinks that a layer may read alone, each as ``(what
        it is, its tensor dim, its positions there)`` -> the attributes that hold its size
        (:meth:`sets`): every part of a split into given sizes (a list may store them all,
        an int one of them, or a product: DBRX's ``num_key_value_heads * head_dim``) and
        every slice that does not span the dim (``x[:, :self.k]``: a bound's attribute
        counts the positions below it, a width's those inside). Their sizes follow as
        stored sizes, or the group is blocked. Emptied by a plan, such a part is 0 wide: an
        attribute set to 0, and a layer reading it with no channels."""
        out: dict[tuple[str, tuple[int, int, int], range], list[str]] = {}
        sets = self._sets.get(g.id, [])
        for node, key, at, k in self._parts():
            if key not in g.tensors:
                continue
            if k is None:
                step = f":{at.step}" if at.step != 1 else ""
                what = f"slice [{at.start}:{at.stop}{step}] of '{node.name}'"
            else:
                what = f"part {k} of '{node.name}'"
            labels = out.setdefault((what, key, at), [])
            for r in sets:
                if r.node != node.id and r.tensor != key:
                    continue
                if r.sizes and r.node == node.id or r.tensor == (node.id, k, key[2]) or \
                        r.span is not None and r.tensor == key and at.step == 1 and \
                        r.span[1] in (at.start, at.stop) and r.span[0] in (0, at.start):
                    if r.label not in labels:
                        labels.append(r.label)
        return out

    def _check_parts(self, plan: Plan, by_id: dict[int, Group]) -> None:
        """Refuse a plan that removes every position of a split's part or a slice's range
        (:meth:`_sized_parts`), named with the attributes that hold its size: one would be
        set to 0 (a list of sizes could not be set at all), and a layer that reads the part
        would have no channels (``Conv2d(0, 4)``, whose forward fails)."""
        for gid in plan.removed:
            g = by_id[gid]
            parts = self._sized_parts(g)
            if not parts:
                continue
            removed = self._removed_at(plan, {key for _, key, _ in parts})
            for (what, key, at), labels in parts.items():
                if at and removed[key] >= set(at):
                    held = f" (sized by {', '.join(labels)})" if labels else ""
                    raise DepViewError(f"plan removes all of {what} in group {gid} "
                                       f"('{g.root}'){held}: it would have no channels left "
                                       "(keep one of its units)")

    def _needs_weights(self, criterion: str) -> None:
        if not is_real(self.model):
            raise DepViewError(f"importance {criterion!r} reads weights, and this model is on "
                               "the meta device (no values): use 'random' to preview it, or "
                               "load it on cpu")

    def _batch_cache(self, attr: str, inputs) -> dict:
        """The dict kept in ``self.<attr>`` for results computed on ``inputs``, emptied
        when the inputs (or a weight or buffer) changed since: its key holds the input tensors
        themselves, compared by identity and kept alive so that another batch can never reuse
        their ids, their in-place version counters, and the model's :func:`_fingerprint`."""
        held = tuple(t for _, t in flatten(inputs))
        key = (held, tuple(t._version for t in held), _fingerprint(self.model))
        got = getattr(self, attr)
        old = got[0] if got is not None else None
        if old is None or len(old[0]) != len(held) or \
                any(a is not b for a, b in zip(old[0], held, strict=True)) or old[1:] != key[1:]:
            setattr(self, attr, (key, {}))
        return getattr(self, attr)[1]  # this call's own dict, even if another thread replaces it

    def taylor_scores(self, groups: list[Group], batch=None) -> dict[int, np.ndarray]:
        """Taylor scores of ``groups`` on ``batch`` (None: the example inputs). The gradients
        take a forward and a backward pass on a copy of the model, so the scores are kept
        until the batch (or a weight or buffer) changes: tensors' in-place version counters
        are part of the key, so a batch changed in place is not mistaken for the old one, and
        so are the weights' and buffers' sums and norms (an edit through ``.data`` leaves the
        version counter as it was)."""
        self._needs_weights("taylor")
        inputs = self.inputs if batch is None else batch
        cache = self._batch_cache("_taylor", inputs)
        missing = [g for g in groups if id(g) not in cache or cache[id(g)][0] is not g]
        if missing:
            grads = taylor_grads(self.model, inputs)
            for g in missing:
                cache[id(g)] = (g, self.importance(g, "taylor", grads=grads))
        return {g.id: cache[id(g)][1] for g in groups}

    def usage_scores(self, groups: list[Group], batch=None) -> dict[int, np.ndarray]:
        """For the groups whose units an op picks (a router's ``topk`` over its experts,
        :func:`positions.group_picks`), how many times each unit is picked on ``batch``
        (None: the example inputs), over every token and every such op: one trace of the
        model. Groups nothing picks are left out."""
        picks = {g.id: group_picks(self.graph, g) for g in groups}
        names = {p.name for ps in picks.values() for p, _ in ps}
        if not names:
            return {}
        if not is_real(self.model):
            raise DepViewError("importance 'usage' runs the model, and this model is on the "
                               "meta device (no values): load it on cpu")
        inputs = self.inputs if batch is None else batch
        keep = self._batch_cache("_usage", inputs)  # (one trace per batch: a sensitivity
        if not names <= set(keep):  # run plans once per group)
            got: dict[str, list | None] = dict.fromkeys(names)
            build_graph(self.model, inputs, keep=got)
            keep.update(got)
        out = {}
        for g in groups:
            if not picks[g.id]:
                continue
            score = np.zeros(g.n_units)
            for pick, _ in picks[g.id]:
                got = keep[pick.name]
                if got is None:
                    raise DepViewError(f"'{pick.name}' did not run on the batch: it takes "
                                       "another path through the model than the example inputs")
                key, width = picked_key(self.graph, pick), picked_width(self.graph, pick)
                ids = got[PICKS[pick.target]].flatten().long()
                counts = torch.bincount(ids.clamp(0, width), minlength=width + 1).numpy()
                pos, unit = g.tensors[key]
                np.add.at(score, unit, counts[pos])
            out[g.id] = score
        return out

    def _names(self) -> set[str]:
        """Every name an ignore or override may give: nodes, modules and the modules holding
        them (``layer1`` holds ``layer1.0``)."""
        known = set(self.graph.by_name) | {n.module for n in self.graph.nodes}
        for path in list(known):
            parts = path.split(".")
            known.update(".".join(parts[:i]) for i in range(1, len(parts)))
        return known

    @staticmethod
    def _no_such_name(what: str, name: str, known: set[str]) -> DepViewError:
        close = [k for k in sorted(known) if len(k) >= 3 and (name in k or k in name)]
        close = list(dict.fromkeys(close + difflib.get_close_matches(
            name, sorted(k for k in known if k), n=3)))[:3]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return DepViewError(f"{what} names no layer of this model: {name!r}{hint}")

    def resolve_ignore(self, ignore) -> set[tuple[str, str]]:
        """Ignores as (name, side) pairs (:func:`parse_ignore`), each wildcard pattern
        replaced by the outermost layers and modules it matches that hold channels a group
        prunes (``*.attn`` -> every block's ``attn``), then checked (:meth:`check_names`)."""
        pairs = ignore if isinstance(ignore, set) and all(
            isinstance(i, tuple) for i in ignore) else parse_ignore(ignore)
        out: set[tuple[str, str]] = set()
        patterns: dict[str, set[str]] = defaultdict(set)
        for name, side in pairs:
            if is_pattern(name):
                patterns[name].add(side)
            else:
                out.add((name, side))
        known = self._names() if patterns else set()
        for name, sides in sorted(patterns.items()):
            hits = match_pattern(name, known)
            if not hits:
                raise DepViewError(f"ignore {name!r} matches no layer or module of this model")
            kept = [h for h in hits if self.holds_channels(h, sides)]
            if not kept:
                shown = ", ".join(hits[:MAX_LISTED]) + (", ..." if len(hits) > MAX_LISTED
                                                        else "")
                given = ignore_strings({(name, s) for s in sides})
                what = " or ".join(SIDE_WORDS[s] for s in IGNORE_SIDES if s in sides) \
                    if len(sides) < len(IGNORE_SIDES) else "channels"
                raise DepViewError(f"ignore {', '.join(given)!r}: what it matches ({shown}) "
                                   f"holds no {what} a group prunes")
            out |= {(h, s) for h in kept for s in sides}
        self.check_names(out, {})
        return out

    def resolve_overrides(self, overrides, ignore: set[tuple[str, str]] = frozenset()
                          ) -> dict[int, float]:
        """Override keys as group ids. A key is a group id (an int, or its decimal string as
        ``settings.overrides`` stores it) or a layer or module name, which may be a wildcard
        pattern (:meth:`groups_named`). A group named by several keys takes the ratio of its
        id, else of the most specific name (more dots; a plain name before a pattern); two
        equally specific names giving it different ratios are an error."""
        if overrides is None:
            return {}
        if not isinstance(overrides, Mapping):
            raise DepViewError("overrides must be a dict {group id or layer name: ratio}, got "
                               f"{type(overrides).__name__}")
        ids: dict[int, float] = {}
        claims: dict[int, list[tuple[tuple[int, bool], str, float]]] = defaultdict(list)
        for k, r in overrides.items():
            if isinstance(k, str) and k.strip().isdigit() or \
                    type(k) is int or isinstance(k, np.integer):
                ids[int(k)] = r
                _fraction(f"override ratio for group {int(k)}", r)
            elif isinstance(k, str) and k.strip():
                name = k.strip()
                _fraction(f"override ratio for {name}", r)
                for gid in self.groups_named(name, ignore):
                    claims[gid].append(((name.count("."), not is_pattern(name)), name, r))
            else:
                raise DepViewError("override keys are group ids (whole numbers) or layer "
                                   f"names, got {k!r}")
        out: dict[int, float] = {}
        for gid, named in sorted(claims.items()):
            if gid in ids:
                continue
            top = max(rank for rank, _, _ in named)
            best = {(n, r) for rank, n, r in named if rank == top}
            if len({r for _, r in best}) > 1:
                given = " and ".join(f"{n}={r:g}" for n, r in sorted(best))
                root = next(g.root for g in self.groups if g.id == gid)
                raise DepViewError(f"override gives group {gid} ('{root}') two ratios, "
                                   f"{given}: give it one with {gid}=R")
            out[gid] = next(iter(best))[1]
        out.update(ids)
        self._check_override_ids(out, ignore)
        return out

    def groups_named(self, name: str, ignore: set[tuple[str, str]] = frozenset()) -> list[int]:
        """The ids of the pruned groups a layer or module name sets the ratio of: those rooted
        at it or inside it (``layer2`` -> the groups the groups command lists with a root in
        layer2; ``h.0.mlp`` -> its hidden units), else, for a layer that roots no group,
        the group of its output channels (``layer1.0.conv2`` -> the residual stream it
        writes). ``name`` may be a wildcard pattern (``*.mlp``: every block's MLP).
        Groups that are not pruned are left out; naming only such groups is an error."""
        hits = self._hits("override", name)
        nodes = self.graph.by_name
        chosen = [g for g in self.groups
                  if within(g.root, hits) or within(nodes[g.root].module, hits)] or \
            [g for g in self.groups if any(m.side != "in" and (
                within(m.node_name, hits) or within(m.module, hits)) for m in g.members)]
        if not chosen:
            raise DepViewError(f"override {name!r}: it holds no channels a group prunes (an "
                               "activation or other op without weights); name the layers "
                               "around it, or the module that holds them")
        why = {g.id: self.reason(g, ignore) for g in chosen}
        ok = [g.id for g in chosen if not why[g.id] and g.n_units > 1]
        if not ok:
            g = chosen[0]
            what = f"group {g.id} ('{g.root}'), which is not" if len(chosen) == 1 else \
                f"{counted(len(chosen), 'group')}, none of them"
            raise DepViewError(f"override {name!r} names {what} pruned: "
                               f"{why[g.id] or g.reason}")
        return ok

    def _hits(self, what: str, name: str) -> set[str]:
        """The layers and modules ``name`` gives: itself, or what a pattern matches (the
        outermost); one that names nothing is an error that says ``what`` gave it."""
        known = self._names()
        if is_pattern(name):
            hits = set(match_pattern(name, known))
            if not hits:
                raise DepViewError(f"{what} {name!r} matches no layer or module of this model")
            return hits
        if name in known and name:
            return {name}
        raise self._no_such_name(what, name, known)

    def groups_holding(self, name: str, what: str = "layer") -> dict[int, list[str]]:
        """Every group that holds channels of the layer or module ``name`` (or of what a
        pattern matches), with the sides it holds there, in group order:
        ``{0: ["in", "out"], 4: ["out"]}``. Answers "why is this layer (not) pruned": each
        group's reason says."""
        hits = self._hits(what, name)
        out: dict[int, list[str]] = {}
        for g in self.groups:
            sides = {m.side for m in g.members
                     if within(m.node_name, hits) or within(m.module, hits)}
            if sides:
                out[g.id] = sorted(sides, key=("out", "param", "in").index)
        return out

    def check_names(self, ignore: set[tuple[str, str]], overrides: dict[int, float]) -> None:
        """An ignore or override that names nothing would silently do nothing: refuse it."""
        known = self._names()
        for name in sorted({n for n, _ in ignore} - known):
            base, _, side = name.rpartition(":")
            if base and base in known and not side.isdigit():  # (a reused layer's calls are "fc:1")
                raise DepViewError(f"ignore {name!r}: unknown side {side!r} (use "
                                   f"{base}:in, {base}:out, {base}:cell for an LSTM's cell "
                                   f"units, or {base} for all)")
            raise self._no_such_name("ignore", name, known)
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
        self._check_override_ids(overrides, ignore)

    def _check_override_ids(self, overrides: dict[int, float],
                            ignore: set[tuple[str, str]]) -> None:
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
        return any(is_ignored(m, side, {(name, side)}) for g in self.groups for m in g.members
                   if (side := ignore_side(m, self.graph.nodes[m.node], g, self.graph)) in sides)

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
        renamed = self.graph.info.get("renamed_outputs", {})  # (an older plan's names)
        if sorted(renamed.get(n, n) for n in made) != sorted(self.free_outputs):
            raise DepViewError(f"the plan was made with free outputs {list(made)}, this "
                               f"pruner has {self.free_outputs}: make it with the same "
                               "(free_outputs=..., --free-output)")

    def check_plan(self, plan: Plan) -> None:
        """Refuse a plan that names no group of this model, a unit a group does not have,
        every unit of a group (a layer with no channels), fewer units kept than the group's
        ``min_kept``, a count that is not a multiple of its ``multiple_of`` (attention heads:
        ``embed_dim`` must stay divisible by ``num_heads``), a unit that is all a layer holds
        of the group (:func:`sole_holders`: validation never removes one, and the layer would
        keep none of its channels; groups removed one unit at a time), every unit of a
        split's part or a slice's range (:meth:`_check_parts`, naming the attributes that size
        it), or a group that cannot be pruned (the reason is given; a plan made by
        :meth:`plan` never does any of these), or one made with other free outputs
        (:meth:`_check_free_outputs`)."""
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
            if g.n_units - len(set(units)) < g.min_kept:
                raise DepViewError(f"plan keeps {g.n_units - len(set(units))} of the "
                                   f"{g.n_units} units of group {gid} ('{g.root}'), which "
                                   f"needs {g.min_kept}: {g.min_kept_why}")
            why = self.reason(g, ignore) if units else ""
            if why:
                raise DepViewError(f"plan prunes group {gid} ('{g.root}'), which cannot be "
                                   f"pruned: {why}")
            if len(set(units)) % g.multiple_of:
                raise DepViewError(f"plan removes {counted(len(set(units)), 'unit')} of group "
                                   f"{gid} ('{g.root}'), which loses units in multiples of "
                                   f"{g.multiple_of} ({'; '.join(g.multiple_why)})")
            alone = sole_holders(g) if g.multiple_of == 1 else {}
            u = next((u for u in sorted(set(units)) if u in alone), None)
            if u is not None:
                raise DepViewError(f"plan removes unit {u} of group {gid} ('{g.root}'), the "
                                   f"only one of it '{alone[u]}' holds: that layer would keep "
                                   "none of the group's channels, which validation never "
                                   "tries (a plan made by plan() keeps such a unit)")
        self._check_parts(plan, by_id)
        for module, (proj, cell, _) in self._lstmp_widths(plan.removed).items():
            if cell <= proj:
                raise DepViewError(f"plan keeps {cell} cell units of '{module}' and "
                                   f"{proj} projection units: an LSTM needs hidden_size > "
                                   "proj_size")

    # -- applying -------------------------------------------------------------------------
    def changes(self, plan: Plan) -> dict[str, dict[int, np.ndarray]]:
        """state_dict key -> {dim: removed positions}, over all groups of the plan."""
        acc: dict[str, dict[int, set]] = defaultdict(lambda: defaultdict(set))
        for cut in self.plan_cuts(plan):
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

    def param_widths(self, plan: Plan) -> dict[int, dict[int, tuple[int, int]]]:
        """node id -> {dim: (width before, after)} for the bare parameters and persistent
        buffers of every group (a class token, a position table, a layer scale read as a
        tensor), whether or not the plan cuts them: the rows beside the layers' in
        :meth:`preview`."""
        lost: dict[int, dict[int, tuple[int, set[int]]]] = defaultdict(dict)
        for g in self.groups:
            for m in g.members:
                if m.side != "param":
                    continue
                width = int(self.graph.nodes[m.node].out_shapes[0][m.dim])
                entry = lost[m.node].setdefault(m.dim, (width, set()))
                if g.id in plan.removed:
                    entry[1].update(m.indices(plan.removed[g.id]).tolist())
        return {nid: {d: (w, w - len(gone)) for d, (w, gone) in sorted(dims.items())}
                for nid, dims in lost.items()}

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
        if config and device != "meta" and is_real(pruned):
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
                    return m(*copy_inputs(args), **copy_inputs(kwargs))

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
        widths, bare = self.widths(plan), self.param_widths(plan)
        layers = []
        for n in self.graph.nodes:
            for dim, (w, w_new) in bare.get(n.id, {}).items():
                # a bare parameter (a class token, a position table): its width along each
                # coupled dim, named with the dim when it has several
                layers.append({"name": n.name + (f" (dim {dim})" if len(bare[n.id]) > 1
                                                 else ""),
                               "op_type": n.op_type.value, "before": w, "after": w_new})
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
        if self._meta_ok or not is_real(self.model):
            try:
                return count(self.apply(plan, device="meta"), inputs_on_meta(self.inputs))
            except (RuntimeError, NotImplementedError) as exc:
                # a pruned model that fails on meta for another reason is broken
                if not is_real(self.model) or ("meta" not in str(exc) and plan.removed):
                    raise
                result = count(self.apply(plan, config=False), self.inputs)
                if "meta" not in str(exc):  # the unpruned model fails on meta, runs for real
                    self._meta_ok = False
                return result
        return count(self.apply(plan, config=False), self.inputs)


#: how ``plan.skipped`` says a group left the plan because the model broke at its planned width
AT_PLANNED_WIDTH = "at the planned width"


def width_note(plan: Plan, groups: list[Group]) -> str:
    """Says which prunable groups the plan left whole because the model broke at their
    planned width ("" for none): validation shrinks a group by one unit, and a size that
    moves only further on (a router's token counts) shows only there."""
    hits = sorted((gid, why) for gid, why in plan.skipped.items()
                  if why.startswith(AT_PLANNED_WIDTH))
    if not hits:
        return ""
    roots = {g.id: g.root for g in groups}
    gid, why = hits[0]
    many = len(hits) > 1
    return (f"{counted(len(hits), 'prunable group')} left whole{'; the first,' if many else ':'}"
            f" '{roots.get(gid, gid)}', {why}")


def floor_note(plan: Plan) -> str:
    """Says which LSTMs with ``proj_size`` kept more cell units than the ratio asked ("" for
    none): ``hidden_size`` stays above ``proj_size``."""
    floors = plan.settings.get("cells_above_projection") or {}
    if not isinstance(floors, dict) or not floors:
        return ""
    kept = ", ".join(f"'{m}' {n}" for m, n in sorted(floors.items()))
    return (f"cell units kept above the projection's width, as an LSTM needs: {kept}")


#: the node types that read a tensor of the model as it is (a bare parameter or buffer)
_SOURCE_TENSORS = frozenset((OpType.PARAMETER, OpType.BUFFER))


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
            calls.setdefault(name, (copy_inputs(args), copy_inputs(kwargs)))
        handles.append(model.get_submodule(name).register_forward_pre_hook(pre,
                                                                           with_kwargs=True))
    try:
        run(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return calls
