"""The config object a model is built from (Hugging Face's ``model.config``), made to
describe the pruned model.

A Hugging Face model is rebuilt from its config alone (``type(model)(config)``, and
``from_pretrained`` of a saved model): a pruned copy whose config still says
``hidden_size=768`` rebuilds the unpruned shapes, and loading its weights fails or, with
``ignore_mismatched_sizes``, silently starts from random ones. :func:`fit_config` sets the
config's integer sizes of a pruned copy to values that rebuild exactly its tensor shapes and
module attributes, checked by building the model from them on the meta device; when no
values do (layers pruned to different widths, heads whose size the config ties to the
stream), the config is left as it was and the reason is given.

    >>> fit = fit_config(model, pruned)     # pruned made by Pruner.apply
    >>> fit                                  # {"changed": {"hidden_size": 16, ...}}
    >>> type(model)(pruned.config)           # builds the pruned shapes

Torch only: the config is duck-typed (an object with integer attributes the model class's
constructor takes as its one argument).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .text import first_line
from .trace import MAX_LISTED, module_attrs

#: candidate values tried one key at a time, then combined (each try is one meta build)
MAX_CANDIDATES = 64
#: configs at most built on meta by one search (a fit takes 10-30; one that finds none
#: could take hundreds: EfficientNet's 382, 9 s on its tiny config)
MAX_BUILDS = 160
#: configs at most checked by running the model built from them (two forwards each)
MAX_CHECKS = 6
#: pairs of changes by one factor a stuck search tries at most (each one meta build)
MAX_PAIRS = 24


def held_config(mod: nn.Module):
    """The config object a module holds as ``self.config`` (Hugging Face layers share the
    model's), or None."""
    cfg = vars(mod).get("config")
    if cfg is None or isinstance(cfg, (nn.Module, torch.Tensor)) or not hasattr(cfg, "__dict__"):
        return None
    return cfg


def size_keys(cfg, prefix: str = "", depth: int = 0) -> dict[str, int]:
    """The config's public integer attributes (not bools): the sizes it may give. An item of
    a list or tuple of integers (a width per stage: ``hidden_sizes = [16, 32]``) is one too,
    as ``"hidden_sizes.1"``, in lists as long as plan.json records (:func:`module_attrs`).
    So are the sizes of the configs it holds (a vision-language model's ``text_config``), as
    ``"text_config.hidden_size"``, two levels deep."""
    out = {}
    for k, v in vars(cfg).items():
        if k.startswith("_"):
            continue
        if type(v) is int:
            out[f"{prefix}{k}"] = v
        elif isinstance(v, (list, tuple)) and 0 < len(v) <= MAX_LISTED \
                and all(type(x) is int for x in v):
            out.update({f"{prefix}{k}.{i}": x for i, x in enumerate(v)})
        elif depth < MAX_NESTED and _sub_config(cfg, v):
            out.update(size_keys(v, f"{prefix}{k}.", depth + 1))
    return out


#: how deep :func:`size_keys` looks into the configs a config holds
MAX_NESTED = 2


def implied_head_dims(cfg, prefix: str = "", depth: int = 0) -> dict[str, int]:
    """``head_dim`` of the config (and of the configs it holds, as :func:`size_keys` names
    them) where it gives none (unset or None) but has ``hidden_size`` and
    ``num_attention_heads``: the value the model's attention then uses, hidden_size /
    heads. A size the search may set (Mixtral, Phi, Cohere, Granite read
    ``config.head_dim`` when given): a pruned stream whose heads kept their size needs it."""
    out = {}
    hidden, heads = getattr(cfg, "hidden_size", None), getattr(cfg, "num_attention_heads", None)
    if head_dim_settable(cfg) and heads > 0 and hidden % heads == 0:
        out[f"{prefix}head_dim"] = hidden // heads
    for k, v in vars(cfg).items():
        if not k.startswith("_") and depth < MAX_NESTED and _sub_config(cfg, v):
            out.update(implied_head_dims(v, f"{prefix}{k}.", depth + 1))
    return out


def head_dim_settable(cfg) -> bool:
    """Whether the config leaves its ``head_dim`` to hidden_size / heads (unset, or None),
    having both: a size a fit may set (:func:`implied_head_dims`), so a plan.json may too."""
    return getattr(cfg, "head_dim", None) is None and \
        type(getattr(cfg, "hidden_size", None)) is int and \
        type(getattr(cfg, "num_attention_heads", None)) is int


def _sub_config(cfg, v) -> bool:
    """Whether ``v``, an attribute of config ``cfg``, is a config itself: an instance of a
    class ``cfg``'s class derives from (Hugging Face's ``PreTrainedConfig``)."""
    return hasattr(v, "__dict__") and not isinstance(v, (type, nn.Module, torch.Tensor)) and \
        any(isinstance(v, c) for c in type(cfg).__mro__ if c is not object)


def _path(key: str) -> tuple[list[str], int | None]:
    """A :func:`size_keys` key as (attribute path, list item or None)."""
    parts = key.split(".")
    return (parts[:-1], int(parts[-1])) if parts[-1].isdigit() else (parts, None)


def _owner(cfg, names: list[str]):
    for n in names[:-1]:
        cfg = getattr(cfg, n)
    return cfg


def set_size(cfg, key: str, value: int) -> None:
    """Set one of :func:`size_keys`' sizes (an item: a new list or tuple with it changed)."""
    names, item = _path(key)
    obj, name = _owner(cfg, names), names[-1]
    if item is None:
        setattr(obj, name, value)
        return
    old = getattr(obj, name)
    new = list(old)
    new[item] = value
    setattr(obj, name, type(old)(new))


#: an attribute the config does not have (an implied ``head_dim`` is put back as that)
_ABSENT = object()


def _raw(cfg, key: str):
    """What the config holds at ``key`` (a path), ``_ABSENT`` when it has no such attribute
    of its own."""
    names, _ = _path(key)
    return vars(_owner(cfg, names)).get(names[-1], _ABSENT)


def _changed(cfg, cfg0) -> dict:
    """The config's sizes that differ from the original's, a list of sizes as a whole."""
    now, was = size_keys(cfg), size_keys(cfg0)
    out = {}
    for k, v in now.items():
        if was.get(k) != v:
            names, _ = _path(k)
            value = getattr(_owner(cfg, names), names[-1])
            out[".".join(names)] = list(value) if isinstance(value, tuple) else value
    return out


def build_from_config(cls: type, cfg, device: str | torch.device = "meta") -> nn.Module | None:
    """``cls(cfg)`` on the meta device (no memory, no weight init cost), or on ``device`` with
    its weights allocated but not drawn (:class:`_NoRandomFill`); None if the constructor
    fails. Leaves torch's random state and the logs as they were."""
    quiet = logging.getLogger("transformers")  # (its warnings, once per candidate tried)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    real = torch.device(device).type != "meta"
    try:
        with torch.random.fork_rng(devices=[]), torch.device(device), \
                _NoRandomFill() if real else contextlib.nullcontext(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(cfg)
    except Exception:  # a constructor that does not take these values
        return None
    finally:
        quiet.setLevel(level)


#: in-place random fills (weight init draws): Tensor methods, and init functions by name
#: (``torch.nn.init``'s, and wrappers such as Hugging Face's ``transformers.initialization``,
#: dispatch to a mode as themselves): the tensor is left as allocated
_RANDOM_METHODS = frozenset(getattr(torch.Tensor, n) for n in (
    "uniform_", "normal_", "random_", "bernoulli_", "exponential_", "geometric_",
    "log_normal_", "cauchy_"))
_RANDOM_INITS = frozenset({"uniform_", "normal_", "trunc_normal_", "kaiming_uniform_",
                           "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                           "orthogonal_", "sparse_"})


#: functions whose random draws are made for real: they loop until the draws fall in a range
#: (rejection sampling), which a tensor left as allocated may never do. torch's
#: ``trunc_normal_`` does not dispatch to a mode as itself, so only its draws are seen.
_DRAWS_LOOPED = frozenset(f.__code__ for f in (
    getattr(torch.nn.init, "_no_grad_trunc_normal_", None),) if f is not None)


class _NoRandomFill(TorchFunctionMode):
    """Skips the random fills of weight init while a model is built for real: the check that
    builds it loads the pruned weights over them, and drawing them took most of the build
    (3.6 s of a 246M-parameter LLaMA's, measured by hand; 0.02 s without). Buffers computed
    from the config (rotary frequencies) are made as they would be. A function mode is
    per thread, so another thread's model init is untouched. Draws made by rejection
    sampling (:data:`_DRAWS_LOOPED`: a ViT's ``trunc_normal_``) are made for real: skipped,
    a tensor's leftover memory could keep the sampler looping for ever."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in _RANDOM_METHODS or getattr(func, "__name__", None) in _RANDOM_INITS) \
                and sys._getframe(1).f_code not in _DRAWS_LOOPED:
            filled = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(filled, torch.Tensor):
                return filled
        return func(*args, **kwargs)


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the model's state_dict (no data read: meta works)."""
    return {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}


def _attrs(model: nn.Module) -> dict[tuple[str, str], object]:
    return {(name, k): v for name, m in model.named_modules() for k, v in module_attrs(m).items()}


def _differences(built: nn.Module | None, shapes: dict, attrs: dict, kept: dict,
                 noise: set) -> tuple[int, int]:
    """How far ``built`` is from the pruned model: (tensors missing, extra or of another
    shape, plus attributes pruning set that ``built`` has otherwise; attributes pruning kept
    that ``built`` has otherwise). The first must reach 0. The second breaks ties: a
    correct config can differ there only in attributes the forward never reads (LlamaMLP's
    ``hidden_size``, which pruning leaves stale), a wrong one also in those it does (LLaMA's
    ``head_dim`` when the heads were taken for narrower ones). ``noise`` lists attributes
    that differ already between the unpruned model and its rebuild (set while running)."""
    if built is None:
        return (1 << 30, 0)
    got = state_shapes(built)
    n = len(got.keys() ^ shapes.keys()) + sum(got[k] != s for k, s in shapes.items() if k in got)
    have = _attrs(built)
    n += sum(have.get(k) != v for k, v in attrs.items() if k not in noise)
    return n, sum(have.get(k) != v for k, v in kept.items() if k not in noise)


def _candidates(keys: dict[str, int], pairs: set[tuple[int, int]]) -> list[tuple[str, int]]:
    """(key, new value) for each size key that a changed width could be a multiple of: a
    width ``d`` made of ``d / v`` parts of ``v`` becomes ``d2`` with parts of ``d2 * v / d``
    (heads * head_dim -> fewer heads; an ffn width -> itself)."""
    out = set()
    for key, v in keys.items():
        if v <= 0:
            continue
        for d, d2 in pairs:
            if d % v == 0 and (d2 * v) % d == 0 and 0 < d2 * v // d != v:
                out.add((key, d2 * v // d))
    # (a config's own sizes before those of the configs it holds, up to MAX_CANDIDATES)
    return sorted(out, key=lambda kv: (len(_path(kv[0])[0]), kv))


def _sync_stale(pruned: nn.Module, built: nn.Module, old: dict, noise: set) -> None:
    """Give the pruned model's attributes that pruning left at their old value the value a
    model built from the fitted config has (LlamaMLP's unread ``hidden_size``), so that it
    prints as ``from_pretrained`` of its export would build it."""
    mods, theirs = dict(pruned.named_modules()), dict(built.named_modules())
    for (path, k), v in _attrs(built).items():
        if (path, k) not in noise and path in mods and old.get((path, k), v) != v \
                and module_attrs(mods[path]).get(k) == old[(path, k)]:
            setattr(mods[path], k, getattr(theirs[path], k))


def fit_config(original: nn.Module, pruned: nn.Module,
               same: Callable[[nn.Module], bool] | None = None,
               search: bool = True) -> dict | None:
    """Set the integer sizes of ``pruned``'s config (its own copy: the original's config is
    not touched) so that ``type(pruned)(pruned.config)`` builds the pruned model's tensor
    shapes and the attributes pruning set. ``same(built)``, given the model built on meta from
    the fitted config, loads the pruned weights into it and says whether it computes what
    the pruned model does; the values are kept only if it does.

    Returns None when the model holds no config, or one its class is not built from alone
    (``cls(config)`` fails), ``{"changed": {key: new value}}`` (the
    config's sizes that now differ from the original's), or ``{"reason": ...}`` when the
    config cannot describe the pruned model; the config is then left as it was.
    ``search=False`` changes nothing: it only says whether the config describes it now."""
    cfg, cfg0 = held_config(pruned), held_config(original)
    if cfg is None or cfg0 is None:
        return None
    if cfg is cfg0:
        return {"reason": "the pruned model shares the original's config object"}
    cls = type(original)
    ref = build_from_config(cls, cfg0)
    if ref is None:  # a config the model holds, but not one it is built from alone
        return None
    if state_shapes(ref) != state_shapes(original):
        return {"reason": f"{cls.__name__}({type(cfg0).__name__}) does not rebuild the model "
                          "it was pruned from, so no config can describe the pruned one (a "
                          "layer changed after it was built, or an earlier round whose "
                          "config was left as it was)"}
    old_attrs = _attrs(original)
    noise = {k for k, v in old_attrs.items() if _attrs(ref).get(k, v) != v}
    shapes, now = state_shapes(pruned), _attrs(pruned)
    attrs = {k: v for k, v in now.items() if old_attrs.get(k) != v}
    kept = {k: v for k, v in now.items() if k not in attrs}
    implied = implied_head_dims(cfg)  # (sizes it may set that it does not give)
    keys = {**size_keys(cfg), **implied}
    # what each key holds now: an implied one its raw value (None, or no attribute at all)
    before: dict = {**keys, **{k: _raw(cfg, k) for k in implied}}

    def put(key: str, value) -> None:
        if value is _ABSENT:
            names, _ = _path(key)
            vars(_owner(cfg, names)).pop(names[-1], None)
        else:
            set_size(cfg, key, value)

    scores: dict[frozenset, tuple[int, int]] = {}

    def score(values: dict[str, int]) -> tuple[int, int]:
        memo = frozenset(values.items())
        if memo not in scores and len(scores) >= MAX_BUILDS:
            return (1 << 30, 0)  # (the search's budget is spent: as if it did not build)
        if memo not in scores:
            for k, v in values.items():
                set_size(cfg, k, v)
            try:
                scores[memo] = _differences(build_from_config(cls, cfg), shapes, attrs, kept,
                                            noise)
            finally:
                for k in values:
                    put(k, before[k])
        return scores[memo]

    start = score({})
    if start[0] and not search:
        return {"reason": f"its {type(cfg).__name__} does not rebuild it ({start[0]} tensor "
                          "shapes or layer attributes differ)"}
    single: dict[tuple[str, int], tuple[int, int]] = {}
    if start[0]:
        old = state_shapes(original)
        pairs = {(a, b) for k, s in shapes.items() if k in old and len(old[k]) == len(s)
                 for a, b in zip(old[k], s, strict=True) if a != b}
        pairs |= {(old_attrs[k], v) for k, v in attrs.items()
                  if type(v) is int and type(old_attrs.get(k)) is int}
        # (and each implied head_dim kept as it is: a stream pruned with whole heads kept)
        found = _candidates(keys, pairs)[:MAX_CANDIDATES] + list(implied.items())
        single = {c: score(dict([c])) for c in found}
    # each change that brings some shapes closer alone, those that upset the fewest
    # attributes first: fewer heads of the same head_dim before a narrower head_dim (both
    # shrink LLaMA's q_proj, only one leaves its head_dim as pruning did); passes repeat
    # while one helps
    # (then those that help only with others: Qwen2's fewer heads once its hidden_size is
    # smaller, as its head_dim is hidden_size / heads)
    ranked = sorted(single.items(), key=lambda kv: (kv[1][1], kv[1][0], kv[0]))
    order = [c for c, s in ranked if s[0] < start[0]] + [c for c, s in ranked
                                                        if s[0] >= start[0]]

    def pairs(chosen: dict, banned: frozenset):
        """Two changes by one factor, neither of which helps alone: fewer heads and fewer kv
        heads (StableLM: its head size follows hidden_size / heads, so a smaller hidden_size
        alone gave every shape, as 4 heads of 4 where the pruned model runs 2 of 8)."""
        moves = [(k, v) for k, v in order if k not in chosen and k not in banned]
        for i, (k1, v1) in enumerate(moves):
            for k2, v2 in moves[i + 1:]:
                if k1 != k2 and v1 * keys[k2] == v2 * keys[k1]:
                    yield {k1: v1, k2: v2}

    def greedy(banned: frozenset = frozenset()) -> tuple[dict[str, int], tuple[int, int]]:
        chosen: dict[str, int] = {}
        best, more = start, bool(start[0])
        while more:
            more = False
            for key, value in order:
                if key in chosen or key in banned:
                    continue
                trial = score({**chosen, key: value})
                if trial < best:
                    chosen[key], best, more = value, trial, True
            for pair in itertools.islice(pairs(chosen, banned), MAX_PAIRS) \
                    if best[0] and not more else ():
                trial = score({**chosen, **pair})
                if trial < best:
                    chosen.update(pair)
                    best, more = trial, True
                    break
            # a change taken early that a later one made wrong goes again: PVT v2's
            # mlp_ratios.1 = 4 halved its MLP before hidden_sizes.1 = 32 did, and with both
            # the MLP was a quarter (its ratio stays 8 when both widths halve)
            for key in list(chosen) if best[0] else ():
                trial = score({k: v for k, v in chosen.items() if k != key})
                if trial < best:
                    del chosen[key]
                    best, more = trial, True
        return chosen, best

    chosen, best = greedy()
    for key in list(chosen) if best[0] else ():  # stuck: without each of its changes
        other, b = greedy(frozenset({key}))  # (Gemma 3: fewer heads of 8, not more of 4)
        if b < best:
            chosen, best = other, b
        if not best[0]:
            break
    if best[0]:
        for k, v in chosen.items():
            set_size(cfg, k, v)
        example = _first_difference(build_from_config(cls, cfg), shapes, attrs, noise)
        for k in chosen:
            put(k, before[k])
        spent = f"; {MAX_BUILDS} configs tried" if len(scores) >= MAX_BUILDS else ""
        return {"reason": f"no values of {type(cfg).__name__}'s sizes rebuild the pruned "
                          f"model: with the closest ({_listed(chosen, 4)}) {example}, and "
                          f"{best[0] - 1} more differ (layers pruned to different widths, or "
                          "sizes the config ties together, as head size = hidden size / "
                          f"heads{spent})"}

    def attempts():
        yield from _alternatives(chosen, single, score)
        for key in chosen:  # the first answer does not compute the same: without each of
            other, b = greedy(frozenset({key}))  # its changes (Gemma 2: fewer heads of 8,
            if not b[0]:  # not as many heads of 4)
                yield other

    tried: list[dict[str, int]] = []
    refused = ""  # (what the config class said of sizes that rebuild the pruned model)
    validated = not refusal(cfg0)  # (an original its own class refuses: not asked again)
    for values in attempts():
        if values in tried:
            continue
        for k in keys:
            put(k, values.get(k, before[k]))
        built = build_from_config(cls, cfg)
        if validated and (why := refusal(cfg)):
            refused = refused or f"({_listed(values)}): {why}"
        elif same is None or same(built):
            for k in implied:  # (a head_dim hidden_size / heads gives anyway: left unset)
                if k in values:
                    put(k, before[k])
                    if implied_head_dims(cfg).get(k) != values[k]:
                        put(k, values[k])
            if search:
                _sync_stale(pruned, built, old_attrs, noise)
            return {"changed": _changed(cfg, cfg0)}
        tried.append(values)
        if len(tried) >= MAX_CHECKS:
            break
    for k in keys:
        put(k, before[k])
    if refused:  # (from_pretrained of such a config.json fails)
        return {"reason": f"{type(cfg).__name__} refuses the sizes that rebuild the pruned "
                          f"model {refused.removesuffix('.')} (--round-to can keep sizes to "
                          "multiples it accepts)"}
    return {"reason": f"a model built from {type(cfg).__name__} with the pruned sizes "
                      f"({_listed(tried[0])}) does not compute what the pruned model does"}


def refusal(cfg) -> str:
    """Why a Hugging Face config's own validation refuses its values now ("" if it does
    not, or has none): transformers' configs check that ``hidden_size`` is a multiple of the
    heads when one is made or loaded (``from_pretrained``), not when a size is set."""
    check = getattr(cfg, "validate", None)
    if not callable(check) or not type(cfg).__module__.startswith("transformers"):
        return ""
    try:
        check()
    except Exception as exc:  # (a strict dataclass's validation error, a ValueError)
        return first_line(str(exc))
    return ""


def _alternatives(chosen: dict[str, int], single: dict, score, most: int = 4):
    """``chosen``, then (built only if it was not the one) the configs one more change away
    that still rebuild every shape, fewest upset attributes first: GPT-2's ``n_head``
    changes no shape (its head_dim follows), so only the check that runs the model tells
    2 heads of 8 from 4 of 4."""
    yield chosen
    more = []
    for (key, value) in single:
        if key not in chosen and not (s := score({**chosen, key: value}))[0]:
            more.append((s[1], key, value))
    for _, key, value in sorted(more)[:most - 1]:
        yield {**chosen, key: value}


def config_note(fit: dict | None) -> str:
    """One clause on what pruning did to the config (an apply's :attr:`Pruner.config_fit`, or
    report.json's ``config``), or "" when there is nothing to say."""
    if not fit:
        return ""
    if "modules" in fit:  # the configs of a model's parts (see Pruner.fit_config)
        return "; ".join(f"{name}'s {note}" for name, part in fit["modules"].items()
                         if (note := config_note(part)))
    if "reason" in fit and not fit.get("changed"):
        return f"{'config.json not written' if 'written' in fit else 'config left as it was'}:" \
               f" {fit['reason']}"
    if not fit.get("changed"):
        return ""
    said = f"config sizes set to {_listed(fit['changed'])}"
    if fit.get("written"):
        return f"{said}, written to {fit.get('file', 'config.json')}"
    if "reason" in fit:  # fitted, but not written (a config without to_json_string)
        return f"{said} (not written: {fit['reason']})"
    return said


def _first_difference(built: nn.Module | None, shapes: dict, attrs: dict, noise: set) -> str:
    """The first tensor or attribute of ``built`` that is not the pruned model's, in words."""
    if built is None:
        return "the model does not build"
    got = state_shapes(built)
    for k, s in shapes.items():
        if got.get(k) != s:
            return f"{k} would be {_shape(got.get(k))}, pruned it is {_shape(s)}"
    for k in got.keys() - shapes.keys():
        return f"{k} would be there, pruned it is not"
    have = _attrs(built)
    for (path, k), v in attrs.items():
        if (path, k) not in noise and have.get((path, k)) != v:
            return f"{path}.{k} would be {have.get((path, k))!r}, pruned it is {v!r}"
    return "nothing differs"


def _shape(s) -> str:
    return "missing" if s is None else "(" + ", ".join(map(str, s)) + ")"


def _listed(values: dict[str, int], most: int | None = None) -> str:
    """``k=v`` pairs, the first ``most`` of them and how many more (a reason stays one
    readable line: D-FINE's closest config changes 24 sizes)."""
    pairs = [f"{k}={v}" for k, v in values.items()]
    if most is not None and len(pairs) > most:
        pairs = pairs[:most] + [f"and {len(pairs) - most} more"]
    return ", ".join(pairs) or "unchanged"
