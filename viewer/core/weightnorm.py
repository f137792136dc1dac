"""Layers whose weight is computed by weight normalisation, and how pruning keeps them exact.

``torch.nn.utils.parametrizations.weight_norm`` (and the older ``torch.nn.utils.weight_norm``,
a forward pre-hook) stores a layer's weight as a magnitude ``g`` and a direction ``v``::

    weight = g * v / ||v||

with the norm taken over every dim where ``g`` has size 1 (all of them when ``g`` is a scalar):
the rows of a conv for the default ``dim=0``, each kernel tap for wav2vec2's positional conv
(``dim=2``). Cutting ``v`` along the dim ``g`` keeps (``g``'s own dim) drops whole normalised
slices: ``g`` loses the same indices and what is left is unchanged. Cutting ``v`` along a
normed dim would renormalise what is left (the kept weights grow by ``||v|| / ||v'||``), so
``g`` is rescaled with it::

    g' = g * ||v'|| / ||v||      # then g' * v' / ||v'|| == g * v' / ||v||

and the pruned layer's weight is the original's weight at the kept indices, as for any other
layer. ``g'`` is then not an index-select of ``g``: plan.json lists it under ``renormalized``.
Other parametrizations (``spectral_norm``, a user's) are not handled: their groups are blocked.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import _WeightNorm as _WeightNormFn
from torch.nn.utils.weight_norm import WeightNorm as _WeightNormHook

#: the local names of (g, v) under each way torch wraps a weight
_PARAMETRIZED = ("parametrizations.weight.original0", "parametrizations.weight.original1")
_HOOKED = ("weight_g", "weight_v")
#: the local name of g, either way: a layer holding neither is not weight-normalised
MAGNITUDE_NAMES = frozenset((_PARAMETRIZED[0], _HOOKED[0]))


def weight_norm_names(module: nn.Module) -> tuple[str, str] | None:
    """The local names ``(g, v)`` of ``module.weight`` when weight normalisation computes it
    and nothing else does; else None.

    >>> weight_norm_names(torch.nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 4, 3)))
    ('parametrizations.weight.original0', 'parametrizations.weight.original1')
    """
    plist = getattr(module, "parametrizations", None)
    if plist is not None:
        fns = plist["weight"] if "weight" in plist else ()
        ok = len(plist) == 1 and len(fns) == 1 and isinstance(fns[0], _WeightNormFn)
        return _PARAMETRIZED if ok else None
    hooks = [h for h in module._forward_pre_hooks.values() if _old_weight_norm(h)]
    return _HOOKED if hooks and "weight_g" in module._parameters else None


def _old_weight_norm(hook) -> bool:
    return isinstance(hook, _WeightNormHook) and hook.name == "weight"


def weight_norms(model: nn.Module) -> dict[str, str]:
    """Every weight-normalised layer of ``model``: the state_dict key of its ``v`` -> its
    ``g``'s (as :attr:`Graph.weight_norms` gives them for the layers a forward called)."""
    out = {}
    for path, mod in model.named_modules():
        names = weight_norm_names(mod)
        if names is not None:
            g, v = (f"{path}.{n}" if path else n for n in names)
            out[v] = g
    return out


def normed_dims(g_shape: tuple[int, ...] | torch.Size, ndim: int) -> tuple[int, ...]:
    """The dims of ``v`` its norm is taken over: where ``g`` has size 1 (all for a scalar)."""
    if len(g_shape) == 0:
        return tuple(range(ndim))
    return tuple(d for d in range(ndim) if g_shape[d] == 1)


def _norm(v: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    # (no normed dim: a 1-D v normalised per entry, whose norm is its absolute value)
    v = v.detach().double()
    return torch.linalg.vector_norm(v, dim=dims, keepdim=True) if dims else v.abs()


def rescaled(g: torch.Tensor, v_from: torch.Tensor, v_to: torch.Tensor,
             dims: tuple[int, ...]) -> torch.Tensor:
    """``g * ||v_to|| / ||v_from||``, norms over ``dims`` (:func:`normed_dims` of the
    original ``g``): the magnitude that gives ``v_to``'s entries the scale they had in
    ``v_from`` (``v_to``: with entries cut or zeroed). A slice whose norm was zero keeps its
    ``g``."""
    old, new = _norm(v_from, dims), _norm(v_to, dims)
    ratio = torch.where(old > 0, new / torch.where(old > 0, old, 1), 1.0)
    return (g.detach().double() * ratio.reshape(g.shape)).to(g.dtype)


def weight_of(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The weight ``g * v / ||v||`` (in float64: for comparisons and importance)."""
    dims = normed_dims(g.shape, v.ndim)
    return v.detach().double() * (g.detach().double().reshape(
        [1] * v.ndim if g.ndim == 0 else g.shape) / _norm(v, dims))


def renormalizes(g_shape, v_ndim: int, dims) -> bool:
    """Does cutting ``v`` along ``dims`` change its norms, so that ``g`` is rescaled?"""
    normed = normed_dims(g_shape, v_ndim)
    return any(int(d) in normed for d in dims)


def own_dims(g_shape, v_ndim: int) -> tuple[int, ...]:
    """The dims of ``v`` that ``g`` has too (its own: cut in both, no norm changes)."""
    normed = normed_dims(g_shape, v_ndim)
    return tuple(d for d in range(v_ndim) if d not in normed)


def g_after_cut(g: torch.Tensor, g_cut: torch.Tensor, v: torch.Tensor, v_cut: torch.Tensor,
                removed: dict[int, object]) -> torch.Tensor:
    """``g`` of a layer whose ``v`` lost ``removed`` ({dim: positions}; ``g_cut``, ``v_cut``:
    ``g`` and ``v`` already index-selected): rescaled by the norms ``v`` had on the rows it
    kept."""
    rows = v.detach()
    for d in own_dims(g.shape, v.ndim):
        if d in removed:
            keep = torch.ones(v.shape[d], dtype=torch.bool)
            keep[torch.as_tensor(removed[d], dtype=torch.long)] = False
            rows = rows.index_select(d, keep.nonzero().flatten().to(v.device))
    return rescaled(g_cut, rows, v_cut, normed_dims(g.shape, v.ndim))


def refresh_hooked_weights(model: nn.Module) -> None:
    """Recompute ``weight`` of each layer the older ``torch.nn.utils.weight_norm`` wraps: its
    pre-hook sets it at every call, so between calls it is the last call's (the full-size
    weight, after a prune). The layers' attributes are read from it."""
    for mod in model.modules():
        for hook in mod._forward_pre_hooks.values():
            if _old_weight_norm(hook) and "weight_g" in mod._parameters:
                with torch.no_grad():
                    mod.weight = hook.compute_weight(mod)
