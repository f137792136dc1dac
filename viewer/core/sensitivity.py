"""How much each group matters: every prunable group pruned alone, and the change in the
model's outputs it makes. A guide for per-group ratios (``--override``): prune hard where the
outputs barely move, gently where they jump.

    >>> rows = sensitivity(pruner, ratio=0.5)
    >>> min(rows, key=lambda r: r["output_change"])["root"]
"""

from __future__ import annotations

import math

import torch

from .errors import DepViewError
from .forward import run
from .plan import READS_BATCH
from .prune import Pruner
from .text import error_line
from .trees import flatten


def output_change(before, after) -> float:
    """Relative L2 change between two runs' floating outputs, all outputs together:
    ``||after - before|| / ||before||`` (0: the same outputs; 1: as large as the outputs)."""
    return _change(flatten(before), flatten(after))


def _change(before: list, after: list) -> float:
    """:func:`output_change` of flattened outputs."""
    num = den = 0.0
    for (_, a), (_, b) in zip(before, after, strict=True):
        if a.is_floating_point() or a.is_complex():
            a, b = a.detach().double(), b.detach().double()
            num += float((b - a).abs().pow(2).sum())
            den += float(a.abs().pow(2).sum())
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def sensitivity(pruner: Pruner, ratio: float = 0.5, importance: str = "l1", ignore=(),
                batch=None, seed: int = 0) -> list[dict]:
    """Each prunable group pruned alone at ``ratio`` (the units ``importance`` ranks lowest;
    ``round_to`` 1, the group's own multiple kept), in group order: ``{"id", "root", "units",
    "removed", "params_removed", "output_change"}``, the change measured on ``batch`` (real
    inputs, positional as a tuple or named as a dict) or on the example inputs. A group whose
    share rounds to 0 units is listed with ``removed`` 0 and not run. The model is not
    changed: each prune is a copy."""
    inputs = pruner.inputs if batch is None else batch
    try:
        reference = run(pruner.model, inputs)
    except Exception as exc:
        raise DepViewError(f"the model's forward on the batch failed: {error_line(exc)}"
                           ) from exc
    before = sum(p.numel() for p in pruner.model.parameters())
    ignore_set = pruner.resolve_ignore(ignore)
    rows = []
    for g in pruner.groups:
        if pruner.reason(g, ignore_set) or g.n_units < 2:
            continue
        plan = pruner.plan(0.0, importance, ignore=ignore_set, overrides={g.id: ratio},
                           seed=seed, batch=batch if importance in READS_BATCH else None)
        row = {"id": g.id, "root": g.root, "units": g.n_units,
               "removed": len(plan.removed.get(g.id, [])), "params_removed": 0,
               "output_change": 0.0}
        if row["removed"]:
            pruned = pruner.apply(plan, config=False)
            row["params_removed"] = before - sum(p.numel() for p in pruned.parameters())
            with torch.no_grad():  # (a free output, narrower: at the positions it keeps)
                row["output_change"] = _change(pruner.kept_of_free(plan, flatten(reference)),
                                               flatten(run(pruned, inputs)))
            del pruned
        rows.append(row)
    return rows
