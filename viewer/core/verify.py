"""Verification of a pruned copy: forward on the example inputs, output shapes kept, and
masked equivalence (the original with the removed channels' consumers zeroed gives the
pruned model's outputs). ``Verification`` is mixed into ``Pruner``; ``layer_by_layer`` runs
two models side by side when one does not fit beside the other.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .errors import DepViewError
from .forward import is_real, run, run_edited
from .handlers import Cut
from .materialize import pruned_bytes, tensor_lookup, tree_copy
from .memory import MemoryShortError, gigabytes, out_of_memory, room_for, tensor_bytes
from .optypes import OpType
from .plan import Plan
from .positions import score_keys
from .spectralnorm import sigma, spectral_norms, u_keeping
from .text import counted, error_line
from .trace import output_nodes
from .trees import flatten, floats_as
from .weakcache import per_class
from .weightnorm import normed_dims, rescaled, weight_norms


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
    for _, _, t in tensor_lookup(model).values():
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
    table = tensor_lookup(model)
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
    copy = tree_copy(model, memo)
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


def _never_picked_note(n: int) -> str:
    return (f"{counted(n, 'pruned group')} {'removes' if n == 1 else 'remove'} units a "
            "router picks (experts): compared with the original model never picking them "
            "(their router scores -inf)")


def _run_masked(masked: nn.Module, inputs, edits: dict):
    """The masked model's output on ``inputs``: :func:`run`, or with
    :meth:`Verification._never_picked`'s edits, :func:`run_edited`."""
    return run_edited(masked, inputs, _guarded(masked, edits)) if edits else run(masked, inputs)


def _guarded(model: nn.Module, edits: dict) -> dict[str, Callable]:
    """:meth:`Verification._never_picked`'s edits as :func:`run_edited` takes them. An
    output sharing memory with one of ``model``'s tensors (which a masked copy may share
    with the loaded model) is left alone: the oracle may change what the model computes,
    never what it holds."""
    held = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}

    def edit(entries):
        def run(outs: list[torch.Tensor]) -> None:
            for port, dim, positions, fill in entries:
                t = outs[port] if port < len(outs) else None
                if t is None or not t.is_floating_point() or \
                        t.untyped_storage().data_ptr() in held or \
                        any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape, strict=True)):
                    continue  # (an expanded tensor: one write would land in many places)
                t.index_fill_(dim, torch.as_tensor(positions, device=t.device), fill)
        return run

    return {name: edit(entries) for name, entries in edits.items()}


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
    """Warnings about code the checks never ran ("" when none): parameters the example
    inputs never reached, and forwards that branch on ``self.training`` (traced and checked
    in eval mode only)."""
    names = verification.get("untraced") or []
    notes = []
    if names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        notes.append(f"warning: {len(names)} parameter(s) never ran on the example inputs "
                     f"({shown}) and were not pruned: inputs that reach them may fail")
    branches = verification.get("train_branches") or []
    if branches:
        shown = ", ".join(branches[:3]) + (", ..." if len(branches) > 3 else "")
        notes.append(f"warning: {shown} branch{'es' if len(branches) == 1 else ''} on "
                     "self.training: only the eval-mode branch was traced and checked; in "
                     "train mode the pruned model may pair channels the trace never coupled")
    return "; ".join(notes)


#: the packages whose modules branch on ``self.training`` only for dropout, noise or
#: gradient checkpointing (every Hugging Face attention does): not warned about
_LIBRARIES = ("torch", "transformers", "diffusers", "timm", "torchvision", "torchaudio")


@per_class
def _branches_on_training(cls: type) -> bool:
    """Whether ``cls.forward``'s own code has an ``if`` (or ``x if c else y``) on
    ``self.training``, as a VAE's reparameterisation does."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.forward)))
    except (OSError, TypeError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.IfExp)) and any(
                isinstance(n, ast.Attribute) and n.attr == "training" and
                isinstance(n.value, ast.Name) and n.value.id == "self"
                for n in ast.walk(node.test)):
            return True
    return False


class Verification:
    """The verification half of ``Pruner`` (see the module), mixed into it: it reads the
    pruner's ``model``, ``inputs``, ``graph``, ``groups`` and ``free_outputs``, and builds what
    it compares through the pruner's ``apply`` and ``cuts``."""

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
        masked = tree_copy(self.model, memo)
        table = tensor_lookup(masked)
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

    def _never_picked(self, plan: Plan) -> dict[str, list[tuple[int, int, list[int], float]]]:
        """The oracle of removed experts, for the plan's groups whose units a router picks:
        node name -> ``(port, dim, positions, value)`` to set in its output as the masked
        model runs (:func:`positions.score_keys`: the router's scores at the removed experts
        -inf, so it never picks them). Empty when the plan removes no such units."""
        by_id = {g.id: g for g in self.groups}
        keys = [kf for gid in plan.removed if by_id[gid].min_kept_why
                for kf in score_keys(self.graph, by_id[gid])]
        removed = self._removed_at(plan, {k for k, _ in keys})
        edits: dict[str, list[tuple[int, int, list[int], float]]] = defaultdict(list)
        for (nid, port, dim), fill in keys:
            if removed.get((nid, port, dim)):
                edits[self.graph.nodes[nid].name].append(
                    (port, dim, sorted(removed[(nid, port, dim)]), fill))
        return dict(edits)

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
        cuts = self.plan_cuts(plan)
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
        edit = self._never_picked(plan)
        out_p, why = (None, "; nor layer by layer: the oracle of removed experts edits the "
                      "router's scores") if edit else \
            self._run_by_layer(pruned, [], torch.float32, inputs, pruned_out)
        out_m = None
        if out_p is not None:
            out_m, why = self._run_by_layer(self.model, self._masked_cuts(plan),
                                            torch.float32, inputs, out_p)
            if out_m is not None:
                out_m = self.kept_of_free(plan, out_m)
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
            ours = tree_copy(pruned, _float32_memo(pruned))
            out_m = self.kept_of_free(plan, flatten(_run_masked(masked, inputs, edit)))
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

    def train_branches(self) -> list[str]:
        """``Class.forward`` of the model's own modules that branch on ``self.training``
        (:func:`_branches_on_training`; not those of torch and the libraries in
        :data:`_LIBRARIES`): DepView traces and checks eval mode only, so what the train-mode
        branch couples (a VAE's ``mu`` and ``logvar`` in ``mu + eps * exp(logvar / 2)``) is
        neither grouped nor checked."""
        out = []
        for cls in dict.fromkeys(type(m) for m in self.model.modules()):
            if cls.__module__.split(".")[0] not in _LIBRARIES and _branches_on_training(cls):
                out.append(f"{cls.__name__}.forward")
        return out

    def verify(self, pruned: nn.Module, plan: Plan, masked: bool = True) -> dict:
        """Forward on the example inputs, output shapes kept, and masked equivalence (when
        every pruned group is exact: no norm or softmax over pruned channels; groups of
        experts are compared with the original never picking the removed ones, see
        :meth:`_never_picked`). ``untraced``
        lists parameters the example inputs never reached (see :meth:`untraced`)."""
        self.check_plan(plan)
        res: dict = {"forward": False, "shapes_kept": False}
        if plan.removed and self.untraced():
            res["untraced"] = list(self.untraced())
        if plan.removed and (branches := self.train_branches()):
            res["train_branches"] = branches
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
        # groups of experts (units a router picks): inexact, since another expert is picked
        # in a removed one's place, but the original model that never picks them is an
        # oracle (:meth:`_never_picked`): checked as exact ones are, and a difference there
        # only says the check cannot be made, as above
        picked = {gid for gid in inexact if gid not in opaque and by_id[gid].min_kept_why
                  and score_keys(self.graph, by_id[gid])}
        checkable = opaque | picked
        if not res["shapes_kept"]:
            res["masked_equivalence"] = {"skipped": "the output shapes changed"}
            return res
        if not masked:
            res["masked_equivalence"] = {"skipped": "not asked for"}
            return res
        checks = is_real(self.model)
        tried = None
        if checks and set(inexact) <= checkable:
            short = _no_room_for("a masked copy of the model", self._masked_bytes(plan))
            check = self._masked_equivalence(plan, fp, pruned, short)
            if "ok" not in check:  # (no room for it, even layer by layer)
                res["masked_equivalence"] = check
                return res
            if check["ok"] or not checkable:
                if opaque:
                    check["own_forward"] = (
                        f"{counted(len(opaque), 'pruned group')} "
                        f"{'holds' if len(opaque) == 1 else 'hold'} a layer with its own "
                        "forward, which these outputs show keeps the channels apart")
                if picked:
                    check["never_picked"] = _never_picked_note(len(picked))
                res["masked_equivalence"] = check
                return res
            tried = check

        def skipped(named: list[int]) -> str:
            first = by_id[named[0]]
            why = ("the router does more with them than pick among them" if
                   set(named) <= picked else
                   "such a layer's forward mixes channels, or normalises over them")
            return (f"{counted(len(named), 'pruned group')} "
                    f"{'is' if len(named) == 1 else 'are'} inexact: "
                    f"{first.stats_notes[0] if first.stats_notes else ''}"
                    f"{' (and more)' if len(named) > 1 else ''}"
                    + (f" (checked all the same: max |diff| {tried['max_abs_diff']:.3g}, so "
                       f"{why})" if tried else ""))

        # the groups inexact only through a layer's own forward are checked with the exact
        # ones below (unless the whole plan's check just failed on them): counted there when
        # that check passes
        res["masked_equivalence"] = {
            "skipped": skipped([gid for gid in inexact if gid not in checkable or not checks
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
                 gid in checkable and tried is None}
        part, joined = None, False
        if len(wider) > len(exact):
            part = self._alone(plan, wider)
            if part.get("ok"):  # (counted among the exact ones, which they proved to be)
                joined = True
                if n := len(opaque & wider.keys()):
                    part["own_forward"] = n
                if n := len(picked & wider.keys()):
                    part["never_picked"] = n
            else:
                part = None
        if part is None and exact:
            part = self._alone(plan, exact)
        if checkable and not joined:
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

    def kept_of_free(self, plan: Plan, outs: list) -> list:
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
        edit = self._never_picked(plan)
        if short and edit:
            return {"skipped": f"{short}; nor can it be masked layer by layer as it runs: "
                               "the oracle of removed experts edits the router's scores",
                    "memory": True}
        if short:
            out_m, why = self._run_by_layer(self.model, self._masked_cuts(plan), None,
                                            self.inputs, pruned_out)
            if out_m is None:
                return {"skipped": f"{short}{why}", "memory": True}
        else:
            out_m = flatten(_run_masked(self._masked(plan), self.inputs, edit))
        out_m = self.kept_of_free(plan, out_m)
        res, pairs = _compared(out_m, pruned_out)
        if not res["ok"] and not short and self._cuts_read_buffers(plan):
            # buffers stay unzeroed (a zeroed variance under rsqrt is NaN), but a codebook
            # read by a distance is data: the removed features count there unless zeroed
            out_b = self.kept_of_free(plan, flatten(
                _run_masked(self._masked(plan, buffers=True), self.inputs, edit)))
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
                    out_m, self.kept_of_free(plan, self._original_outputs()), strict=True)
                if a.is_floating_point()):
            res["blind"] = ("zeroing the removed channels left the outputs exactly as they "
                            "were, so this check could not fail (a layer initialised to "
                            "zeros?)")
        return res
