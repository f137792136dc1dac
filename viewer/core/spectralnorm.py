"""Layers whose weight is divided by its spectral norm, and how pruning keeps them exact.

``torch.nn.utils.parametrizations.spectral_norm`` stores a layer's weight ``W`` (as
``parametrizations.weight.original``) and two buffers, ``u`` and ``v``, the singular vectors
its power iteration estimates. With ``W_mat`` the weight as a matrix (its dim ``dim``, 0 or
1 for a transposed conv, as rows, every other dim flattened into columns)::

    weight = W / sigma,    sigma = u . (W_mat v)

In eval mode ``u`` and ``v`` stay as stored; in training each forward first runs the power
iteration on them. Cutting ``W`` cuts ``u`` along the rows or ``v`` along the columns the cut
positions flatten to. What is left would give another ``sigma``, so ``u`` is rescaled to keep
the original's::

    u' = u_cut * sigma / (u_cut . (W'_mat v_cut))

and the pruned layer's weight is the original's weight at the kept indices, as for any other
layer (a submatrix's spectral norm is at most the matrix's: the layer stays 1-Lipschitz).
``u'`` is then not an index-select of ``u``: plan.json lists it under ``renormalized`` (with
its ``W``). The masked model rescales its ``u`` the same way after zeroing. Training the
pruned model re-estimates ``u`` and ``v`` from the smaller weight, as it would have. The
older ``torch.nn.utils.spectral_norm`` (a pre-hook; ``weight_orig``, ``weight_u``,
``weight_v``) is the same computation and is pruned the same way.
A 1-D weight (normalised by its norm, not this way) is not handled: its groups are blocked.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import _SpectralNorm
from torch.nn.utils.spectral_norm import SpectralNorm as _SpectralNormHook

#: the local names of W, u and v under the parametrization
ORIGINAL = "parametrizations.weight.original"
U, V = "parametrizations.weight.0._u", "parametrizations.weight.0._v"


def spectral_norm_names(module: nn.Module) -> tuple[str, str, str, int] | None:
    """``(W, u, v, dim)`` local names and the row dim when ``module.weight`` is computed by
    spectral normalisation alone, of a weight with 2 or more dims; else None. The older
    ``torch.nn.utils.spectral_norm`` (a forward pre-hook) keeps them as ``weight_orig``,
    ``weight_u`` and ``weight_v``.

    >>> sn = torch.nn.utils.parametrizations.spectral_norm
    >>> spectral_norm_names(sn(nn.Conv2d(2, 4, 3)))[3]
    0
    """
    hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, _SpectralNormHook)]
    if hooks:
        ok = len(hooks) == 1 and hooks[0].name == "weight" and \
            {"weight_u", "weight_v"} <= module._buffers.keys() and \
            "weight_orig" in module._parameters and not hasattr(module, "parametrizations")
        return ("weight_orig", "weight_u", "weight_v", int(hooks[0].dim)) if ok else None
    plist = getattr(module, "parametrizations", None)
    if plist is None or len(plist) != 1 or "weight" not in plist:
        return None
    fns = plist["weight"]
    if len(fns) != 1 or not isinstance(fns[0], _SpectralNorm) or \
            getattr(fns[0], "_u", None) is None:  # (a 1-D weight has no u: it is normalised)
        return None
    return ORIGINAL, U, V, int(fns[0].dim)


def spectral_norms(model: nn.Module) -> dict[str, tuple[str, str, int]]:
    """Every spectral-normalised layer of ``model``: the state_dict key of its ``W`` -> the
    keys of its ``u`` and ``v`` and its row dim (as :attr:`Graph.spectral_norms` gives them
    for the layers a forward called)."""
    out = {}
    for path, mod in model.named_modules():
        names = spectral_norm_names(mod)
        if names is not None:
            w, u, v = (f"{path}.{n}" if path else n for n in names[:3])
            out[w] = (u, v, names[3])
    return out


def v_of(u_key: str) -> str | None:
    """The state_dict key of ``v`` beside a spectral norm's ``u`` key (None: not one)."""
    for u, v in ((U, V), ("weight_u", "weight_v")):
        if u_key == u or u_key.endswith("." + u):
            return u_key[: -len(u)] + v
    return None


def row_dim(holder: nn.Module) -> int | None:
    """The row dim of the spectral norm whose ``u`` ``holder`` keeps (the parametrization,
    or the layer the older hook wraps), or None."""
    if isinstance(holder, _SpectralNorm):
        return int(holder.dim)
    names = spectral_norm_names(holder)
    return names[3] if names else None


def refresh_hooked(model: nn.Module) -> None:
    """Recompute ``weight`` of each layer the older ``torch.nn.utils.spectral_norm`` wraps,
    as eval mode computes it (no power iteration): its pre-hook sets it at every call, so
    between calls it is the last call's (the full-size weight, after a prune)."""
    for mod in model.modules():
        for hook in mod._forward_pre_hooks.values():
            if isinstance(hook, _SpectralNormHook) and spectral_norm_names(mod):
                with torch.no_grad():
                    setattr(mod, hook.name, hook.compute_weight(mod, do_power_iteration=False))


def columns(shape: tuple[int, ...], dim: int, d: int, pos) -> np.ndarray:
    """The columns of the weight's matrix (``shape``, rows along ``dim``) that the positions
    ``pos`` of dim ``d`` (not ``dim``) flatten to, sorted: the entries of ``v`` they meet."""
    others = [s for i, s in enumerate(shape) if i != dim]
    at = d if d < dim else d - 1
    idx = np.arange(int(np.prod(others))).reshape(others)
    return np.sort(np.take(idx, np.asarray(pos, dtype=np.int64), axis=at).ravel())


def _matrix(w: torch.Tensor, dim: int) -> torch.Tensor:
    return w.detach().double().movedim(dim, 0).flatten(1)


def sigma(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """``u . (W_mat v)`` in float64: what the layer divides its weight by in eval mode."""
    return torch.vdot(u.detach().double(), torch.mv(_matrix(w, dim), v.detach().double()))


def u_keeping(target: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
              dim: int) -> torch.Tensor:
    """``u`` scaled so that ``u . (W_mat v)`` is ``target`` (the original's sigma), in
    ``u``'s dtype. A sum of zero (every entry that carried it cut) leaves ``u`` as it is."""
    now = sigma(w, u, v, dim)
    scale = target / now if bool(now != 0) else torch.ones((), dtype=torch.float64)
    return (u.detach().double() * scale).to(u.dtype)


def weight_of(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """The weight ``W / sigma`` the layer computes in eval mode (in float64)."""
    return w.detach().double() / sigma(w, u, v, dim)
