"""Running a model on its example inputs: input copies, meta stand-ins, FLOPs
(``FlopCounterMode``) and first-order Taylor gradients."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .errors import DepViewError
from .materialize import tree_copy
from .memory import check_room, tensor_bytes
from .text import first_line
from .trace import build_graph, eval_mode
from .trees import flatten, map_tensors


def is_real(model: nn.Module) -> bool:
    """Does ``model`` hold data (its parameters are not on the meta device)?"""
    p = next(iter(model.parameters()), None)
    return p is None or p.device.type != "meta"


def copy_inputs(inputs):
    """The example inputs cloned: a probe's forward may change its inputs in place."""
    return map_tensors(inputs, torch.Tensor.clone)


def inputs_on_meta(inputs):
    """Meta stand-ins of the example inputs: same shapes and dtypes, no data."""
    return map_tensors(inputs, lambda t: torch.empty_like(t, device="meta"))


def run(model: nn.Module, inputs):
    """``model`` on (a copy of) ``inputs``, in eval mode: a forward that changes its input in
    place must not change what the next run is compared on. Random numbers drawn inside the
    forward (ViT-MAE's masking noise) are drawn from one fixed seed, so the original, pruned
    and masked models draw the same ones; the caller's random state is left as it was."""
    inputs = copy_inputs(inputs)
    with torch.no_grad(), eval_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if isinstance(inputs, dict):
            return model(**inputs)
        return model(*inputs)


def run_edited(model: nn.Module, inputs, edit: dict):
    """:func:`run`, traced, with the outputs of the graph nodes ``edit`` names changed in
    place by its functions as each op returns (:func:`build_graph`'s ``edit``): the
    original model that never picks the removed experts, their router scores set to -inf
    (:mod:`viewer.core.verify`). As slow as a graph build."""
    got: list = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        build_graph(model, copy_inputs(inputs), edit=edit, result=got)
    return got[0]


def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten._grouped_mm``, which FlopCounterMode does not count: each output
    element is a dot product over K, except that a 2-D @ 2-D product split along K by
    ``offs`` (one output slab per group) spends K on all its slabs together."""
    flops = 2 * a_shape[-1] * math.prod(out_shape)
    return flops // out_shape[0] if len(a_shape) == 2 and len(b_shape) == 2 else flops


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None,
                         **kwargs) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu``, the kernel
    ``F.scaled_dot_product_attention`` runs on CPU tensors, which FlopCounterMode does not
    count (it counts the same attention on the meta device): q @ k^T and the weights @ v,
    by torch's own formula for the other attention kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


#: Ops FlopCounterMode has no formula for (mixture-of-experts layers call grouped_mm;
#: attention on CPU tensors runs a kernel of its own)
_EXTRA_FLOPS = {op: fn for op, fn in
                [(getattr(torch.ops.aten, "_grouped_mm", None), _grouped_mm_flops),
                 (getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None),
                  _cpu_attention_flops)] if op}


def count(model: nn.Module, inputs) -> dict:
    """Parameters (unique tensors) and MACs of one forward (FlopCounterMode FLOPs / 2).
    ``model`` is a copy: its parameters stop requiring grad (FlopCounterMode's module tracker
    hooks every tensor that requires grad, and a view of a parameter made under no_grad, as
    ``latents.expand(b, -1, -1)``, requires grad without a grad_fn: it asserts)."""
    model.requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS)
    for m in model.modules():
        # (nn.TransformerEncoder with a padding mask runs its layers on nested tensors, whose
        # ops the counter does not see: it counted 0 MACs for them; a flag of the copy's)
        if isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False
    with counter:
        run(model, inputs)
    return {"params": int(params), "macs": int(counter.get_total_flops() // 2)}


def batch_shapes(inputs) -> list | dict:
    """Input shapes, to record (and show) which batch a plan was scored on."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, dict):
        return {k: batch_shapes(v) if isinstance(v, dict) else list(getattr(v, "shape", ()))
                for k, v in inputs.items()}
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
    of the squared outputs (of their magnitudes, for complex outputs).

    The model itself is not changed (a copy runs the backward pass)."""
    need = 2 * tensor_bytes(model)
    check_room(need, "Taylor importance (a copy of the model and its gradients)",
               "use l1, l2 or bn, which need no copy")
    m = tree_copy(model, {})
    m.zero_grad(set_to_none=True)
    for p in m.parameters():  # frozen weights (fine-tuning a head) are scored too
        if p.is_floating_point() or p.is_complex():
            p.requires_grad_(True)
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    # floating inputs require grad (a clone of a leaf that does: changing it in place is
    # allowed): torch.utils.checkpoint's reentrant mode runs its layers without autograd
    # unless one of its inputs requires grad, and their weights got no gradient at all
    inputs = map_tensors(inputs, lambda t: t.detach().requires_grad_(True).clone()
                         if t.is_floating_point() else t)
    given = inputs.values() if isinstance(inputs, dict) else inputs
    if any(isinstance(t, torch.Tensor) and t.numel() == 0 for t in given):
        raise DepViewError("Taylor importance: the batch is empty (a tensor with 0 elements)")
    try:
        with torch.enable_grad(), eval_mode(m):  # no dropout: the same batch, the same plan
            out = m(*inputs) if not isinstance(inputs, dict) else m(**inputs)
            loss = _own_loss(out)
            if loss is None:
                loss = sum(t.float().pow(2).mean() if t.is_floating_point() else
                           t.abs().pow(2).mean() for _, t in flatten(out)
                           if t.is_floating_point() or t.is_complex())
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                raise DepViewError("the model's outputs have no gradient to score units with")
            loss.backward()
    except DepViewError:
        raise
    except Exception as exc:
        first = first_line(exc)[:300]
        raise DepViewError(f"Taylor importance: the model's forward and backward on the batch "
                           f"failed: {type(exc).__name__}: {first}") from exc
    grads = {k: p.grad.detach() for k, p in m.named_parameters() if p.grad is not None}
    bad = next((k for k, g in grads.items() if not bool(g.isfinite().all())), None)
    if bad is not None:
        raise DepViewError(f"Taylor importance: the gradient of {bad} holds nan or inf (is the "
                           "batch empty, or does it hold nan or inf?)")
    return grads
