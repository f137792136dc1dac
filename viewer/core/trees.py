"""Tensors inside nested inputs and outputs (tuples, lists, dicts, dataclasses, Hugging
Face ``ModelOutput``): found, named by key path, cast."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass

import torch


def map_tensors(inputs, fn):
    """``inputs`` (a tensor, a tuple or list of positional inputs, or a dict of keyword
    inputs) with ``fn`` applied to each tensor, also inside a dict argument (``--input
    batch.image=...`` gives ``{"batch": {"image": ...}}``); anything else as it is."""
    def conv(t):
        if isinstance(t, dict):
            return {k: conv(v) for k, v in t.items()}
        return fn(t) if isinstance(t, torch.Tensor) else t
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(conv(t) for t in inputs) if type(inputs) in (tuple, list) \
            else tuple(conv(t) for t in inputs)
    return conv(inputs)


def floats_as(inputs, dtype: torch.dtype):
    """``inputs`` (see :func:`map_tensors`) with every floating tensor cast to ``dtype``:
    example inputs for a model run in another precision."""
    return map_tensors(inputs, lambda t: t.to(dtype) if t.is_floating_point() else t)


def flatten(obj, path: str = "", named: bool = True) -> list[tuple[str, torch.Tensor]]:
    """Tensors inside nested tuples/lists/dicts/dataclasses (HF ``ModelOutput`` is a dict),
    with readable key paths: ``[("logits", t), ("hidden_states[0]", t2)]``. A NamedTuple's
    items are named by field (``features``), as a dataclass's are; ``named=False`` gives
    them by index (``[1]``), as DepView named them before (records of older exports)."""
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    out: list[tuple[str, torch.Tensor]] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out += flatten(v, f"{path}.{k}" if path else str(k), named)
    elif named and isinstance(obj, tuple) and _fields(obj):
        for k, v in zip(_fields(obj), obj, strict=True):
            out += flatten(v, f"{path}.{k}" if path else k, named)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += flatten(v, f"{path}[{i}]", named)
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            out += flatten(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name,
                           named)
    return out


def _fields(obj: tuple) -> tuple[str, ...] | None:
    """A NamedTuple's (or ``collections.namedtuple``'s) field names, one per item, or a
    struct sequence's (``torch.return_types.max``: ``values``, ``indices``); None for any
    other tuple."""
    names = getattr(type(obj), "_fields", None) or getattr(type(obj), "__match_args__", None)
    if isinstance(names, tuple) and len(names) == len(obj) and \
            all(isinstance(k, str) for k in names):
        return names
    return None


def renamed_outputs(out) -> dict[str, str]:
    """``{name before: name now}`` for the outputs in ``out`` whose key path :func:`flatten`
    spells otherwise than DepView did before NamedTuple fields were named (``[1]`` ->
    ``features``): what reads an older export's records maps its names by this. Empty for
    most models."""
    return {(a or "output"): (b or "output")
            for (a, _), (b, _) in zip(flatten(out, named=False), flatten(out), strict=True)
            if a != b}


#: Argument types that never hold a tensor (a ``torch.Size`` is a tuple of ints).
LEAVES = frozenset({int, float, bool, complex, str, type(None), type(Ellipsis), slice,
                    torch.dtype, torch.device, torch.Size, torch.layout, torch.memory_format})


def tensors_in(obj, out: list) -> list:
    """Append the tensors :func:`flatten` finds in ``obj`` to ``out``, in the same order.

    The tracer calls this on every op's arguments and results, so the common shapes (a tensor,
    a tuple/list/dict of tensors and scalars) skip building key paths and the ABC checks."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif type(obj) in LEAVES:
        pass
    elif type(obj) is tuple or type(obj) is list:
        for v in obj:
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif type(v) not in LEAVES:
                tensors_in(v, out)
    elif type(obj) is dict:
        tensors_in(tuple(obj.values()), out)
    else:
        out += [t for _, t in flatten(obj)]
    return out
