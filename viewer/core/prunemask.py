"""Layers that ``torch.nn.utils.prune`` masks, and how structural pruning follows the masks.

``torch.nn.utils.prune`` (``l1_unstructured``, ``ln_structured``, ``global_unstructured``, a
custom method) keeps a tensor's values as ``weight_orig`` (a parameter) and a 0/1
``weight_mask`` (a buffer), and a forward pre-hook computes ``weight = weight_orig *
weight_mask`` at every call. Cutting ``weight`` cuts both along the same dim at the same
positions, so the pruned layer's weight is the original's at the kept indices, masked as it
was. Importance scores the masked weight: the channels ``ln_structured`` zeroed score 0 and
go first, so a plan at the ratio torch masked removes them for real. The masks stay on the
pruned copy (``prune.remove`` makes them permanent).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.prune import BasePruningMethod


def masked_names(module: nn.Module) -> tuple[str, ...]:
    """The tensors of ``module`` (``("weight", "bias")``) a ``torch.nn.utils.prune`` hook
    computes from ``NAME_orig`` and ``NAME_mask``.

    >>> import torch.nn.utils.prune as tp
    >>> masked_names(tp.l1_unstructured(nn.Linear(4, 2), "weight", amount=0.5))
    ('weight',)
    """
    names = [h._tensor_name for h in module._forward_pre_hooks.values()
             if isinstance(h, BasePruningMethod)]
    return tuple(n for n in dict.fromkeys(names) if f"{n}_orig" in module._parameters
                 and f"{n}_mask" in module._buffers)


def refresh_masked(model: nn.Module) -> None:
    """Recompute each masked tensor (``weight = weight_orig * weight_mask``): the hook sets it
    at every call, so between calls it is the last call's (the full-size one, after a
    prune). The layers' attributes are read from it."""
    for mod in model.modules():
        for hook in mod._forward_pre_hooks.values():
            if isinstance(hook, BasePruningMethod) and hook._tensor_name in masked_names(mod):
                with torch.no_grad():
                    setattr(mod, hook._tensor_name, hook.apply_mask(mod))
