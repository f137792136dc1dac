"""Cutting tensors: a plan's kept indices made real in a copy of the model.

``materialize(model, graph, changes, widths)`` index-selects every changed tensor
(parameters, buffers, plain tensor attributes) of a copy and sets the module attributes that
follow the new widths; ``tree_copy`` is the deep copy it works on (shared tensors stay
shared).
"""

from __future__ import annotations

import copy
import copyreg
import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from .graph import Graph
from .handlers import REFRESH, REFRESH_LOOKED_INTO
from .modelconfig import held_config
from .optypes import classify
from .prunemask import refresh_masked
from .spectralnorm import refresh_hooked, sigma, u_keeping
from .trace import eval_mode, module_attrs, plain_tensors
from .weakcache import per_class
from .weightnorm import g_after_cut, refresh_hooked_weights, renormalizes


def tensor_lookup(model: nn.Module) -> dict[str, tuple[nn.Module, str, torch.Tensor]]:
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


def _plain(mod: nn.Module, name: str) -> bool:
    """Is ``mod``'s tensor ``name`` a plain attribute, neither parameter nor buffer?"""
    return name not in mod._parameters and name not in mod._buffers


def pruned_bytes(model: nn.Module, changes: dict[str, dict[int, np.ndarray]]) -> int:
    """Bytes :func:`materialize` allocates for a copy of ``model`` that loses ``changes``:
    every tensor that holds data, each once, at its pruned size."""
    total, seen = 0, set()
    for key, (_, _, t) in tensor_lookup(model).items():
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
    table = tensor_lookup(model)
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
            new = laid_out_like(new, t) if dims else new.clone()
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
        pruned = tree_copy(model, memo)
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
                refresh = REFRESH_LOOKED_INTO.get(type(mod)) or REFRESH[classify(mod)]
                refresh(mod, widths.get(path, {}))
    for path, values in (attrs or {}).items():
        for k, v in values.items():
            set_attr(mods[path], k, v)
    drop_train_caches(pruned)  # (the unpruned copies validation compares with too)
    return pruned


def drop_train_caches(model: nn.Module) -> None:
    """Let each module whose class has its own ``train`` empty what it caches for eval:
    Hugging Face's LeViT (and timm's LeViT, EfficientFormer and EfficientViT, by their code)
    keep their attention biases in a dict per device once run in eval mode, and empty it
    when set to train. A pruned copy
    would read the biases of the old head count. Not torch's own ``train``s, nor a Hugging
    Face model's (``PreTrainedModel.train`` swaps in hub kernels), nor any module holding
    one; a ``train`` that fails is left be. Each is then set back to the mode it was in
    (what its ``train`` does for that mode, such as fusing branches for eval, is done
    again), and every module's flag and every parameter's ``requires_grad`` are given back
    (a ``train`` may freeze stages)."""
    own = [m for m in model.modules() if _caching_train(type(m))]
    if not own:
        return
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    was = dict(modes)
    for m in own:
        if all(not _unsafe_train(type(c)) for c in m.modules()):
            try:
                with torch.no_grad():
                    m.train(True)
                    m.train(was[m])  # (what its train does for the mode it was in, again)
            except Exception:  # noqa: BLE001, S110 (a cache left is what we had)
                pass
    for m, mode in modes:
        m.training = mode
    for p, grad in grads:
        if p.requires_grad != grad:
            p.requires_grad_(grad)


@per_class  # (every copy validation makes walks every module)
def _caching_train(cls: type) -> bool:
    """Whether ``cls`` has a ``train`` of its own that may empty a cache."""
    return cls.train is not nn.Module.train and not _unsafe_train(cls)


@per_class
def _unsafe_train(cls: type) -> bool:
    """Whether ``cls`` overrides ``train`` with torch's or Hugging Face's models' own (never
    a cache's)."""
    where = getattr(cls.train, "__module__", None) or ""
    return cls.train is not nn.Module.train and (
        where.startswith("torch.") or where == "transformers.modeling_utils")


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


def get_attr(mod: nn.Module, attr: str, *default):
    """``mod.attr``, or for ``config.name`` the attribute of the config object it holds
    (``default``, when given, for one it does not have)."""
    owner, _, name = attr.rpartition(".")
    return getattr(getattr(mod, owner) if owner else mod, name, *default)


def set_attr(mod: nn.Module, attr: str, value) -> None:
    owner, _, name = attr.rpartition(".")
    setattr(getattr(mod, owner) if owner else mod, name, value)


#: values a deep copy returns as they are
_ATOMS = frozenset({int, float, bool, complex, str, bytes, type(None), type(Ellipsis), range,
                    torch.dtype, torch.device, torch.layout, torch.memory_format})

#: module class -> whether :func:`tree_copy` may copy it itself (see there)
_PLAIN_MODULES: dict[type, bool] = {}


def tree_copy(obj, memo: dict):
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
            y[k if type(k) in _ATOMS else tree_copy(k, memo)] = tree_copy(v, memo)
        return y
    if cls is list:  # (LeViT keeps lists of 10^5 ints: no call per plain item)
        y = memo[id(obj)] = []
        y.extend([v if type(v) in _ATOMS else tree_copy(v, memo) for v in obj])
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
            y.__setstate__({k: tree_copy(v, memo) for k, v in state.items()})
            return y
    return copy.deepcopy(obj, memo)


def laid_out_like(new: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
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
    """module path -> {attribute: new value} for public scalar attributes that changed.
    Text is left out: pruning changes sizes, never text, and a model tuned after pruning may
    have changed some (Hugging Face sets ``config.problem_type`` on the first forward given
    labels), which a reload could not set on the model it rebuilds."""
    out = {}
    owners = config_owners(original)
    pm = dict(pruned.named_modules())
    for name, mod in original.named_modules():
        if name not in pm:
            continue
        a, b = module_attrs(mod), module_attrs(pm[name])
        diff = {k: v for k, v in b.items() if a.get(k) != v and not _text(v)}
        ca, cb = held_config(mod), held_config(pm[name])
        if ca is not None and cb is not None and owners[id(ca)] == name:
            # a config object the layers share (Hugging Face's): under its first holder
            was = module_attrs(ca)  # (any object's public values, lists as lists)
            diff.update({f"config.{k}": v for k, v in module_attrs(cb).items()
                         if was.get(k) != v and not _text(v)})
        if diff:
            out[name] = diff
    return out


def _text(v) -> bool:
    return isinstance(v, str) or isinstance(v, list) and any(isinstance(x, str) for x in v)


def config_owners(model: nn.Module) -> dict[int, str]:
    """id(config) -> the first module path (``named_modules`` order) holding it: the name its
    attributes go by (``config.num_attention_heads`` under ``""``), as candidates and in
    plan.json alike."""
    out: dict[int, str] = {}
    for name, m in model.named_modules():
        if (c := held_config(m)) is not None:
            out.setdefault(id(c), name)
    return out
