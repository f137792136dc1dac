"""Export a pruned model as a directory anyone can reload without pickle, and reload it.

Layout of an export directory::

    model.safetensors   the pruned state_dict (tied tensors stored under each name)
    plan.json           source spec + kept indices per tensor dim + changed module attributes
    report.json         params/MACs before and after, output shapes, verification
    model.pt2           torch.export program, when the model exports (report says if not)
    config.json         a Hugging Face model's config, when it describes the pruned model
    inputs.safetensors  the example inputs of a model built in-process (no spec makes them)

Every pruned tensor equals the original tensor index-selected along the dims in plan.json::

    pruned[key] == original[key].index_select(d0, kept["0"]).index_select(d1, kept["1"]) ...

:func:`load_pruned` rebuilds the original architecture from the spec, applies exactly that
slicing and those attributes, then loads the weights strictly.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import DepViewError
from .forward import run
from .handlers import REFRESH, SELF_DESCRIBING
from .materialize import (
    attr_changes,
    get_attr,
    laid_out_like,
    refresh_computed_weights,
    set_attr,
    tensor_lookup,
    tree_copy,
)
from .memory import check_room, out_of_memory, tensor_bytes
from .modelconfig import build_from_config, head_dim_settable, held_config, state_shapes
from .optypes import classify
from .plan import Plan
from .prune import Pruner
from .spec import (
    HALF_DTYPES,
    LoadedModel,
    hf_class_and_config,
    load_error_detail,
    load_model,
    locate_spec,
    read_state_dict,
    spell_input,
)
from .spectralnorm import row_dim, v_of
from .spectralnorm import weight_of as sn_weight_of
from .text import error_line, first_line
from .trees import flatten, renamed_outputs
from .weightnorm import weight_of

FORMAT = "depview-pruned/1"
FILES = ("model.safetensors", "plan.json", "report.json")
#: the example inputs of an export of a model built in-process (no spec to make them from)
INPUTS_FILE = "inputs.safetensors"
#: the most a JSON file of an export (plan.json, report.json, config.json) may hold, read
#: whole: 256 MiB, or the size of its weights file when that is larger. plan.json holds
#: about 10 bytes per kept index (one a line), a few for each weight: ResNet-50's is 2.3
#: MB beside 100 MB of weights. A 2 GB plan.json took 4.4 GB to read
JSON_MIN_LIMIT = 256 << 20
#: a zip member that unpacks to more than this many times its packed size, and to more than
#: :data:`ZIP_RATIO_FROM` bytes, is refused unpacked (a zip bomb): float weights deflate by
#: about 11%, JSON about 25 times; runs of one byte deflate 1000 times
ZIP_MAX_RATIO = 200
ZIP_RATIO_FROM = 64 << 20


def _versions() -> dict:
    import safetensors

    return {"torch": torch.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version(), "depview": _depview_version()}


def _depview_version() -> str:
    try:
        from importlib.metadata import version

        return version("depview")
    except Exception:
        return "unknown"


#: how strict JSON spells the floats JSON has no number for (JavaScript's names)
NONFINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def json_safe(obj):
    """``obj`` with every float JSON cannot hold (inf, -inf, nan) spelled as the string
    ``"Infinity"``, ``"-Infinity"`` or ``"NaN"``, and numpy scalars and tuples made plain:
    ``json.dumps(json_safe(x), allow_nan=False)`` is strict JSON."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if f != f:
            return "NaN"
        if f in (float("inf"), float("-inf")):
            return "Infinity" if f > 0 else "-Infinity"
        return f
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj, **kw) -> str:
    """``json.dumps`` writing strict JSON (see :func:`json_safe`)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kw)


def json_float(value) -> float:
    """A number read back from DepView's JSON: a number, or a :data:`NONFINITE` spelling.
    Raises ValueError on anything else (a bool too)."""
    if isinstance(value, str) and value in NONFINITE:
        return NONFINITE[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as safetensors takes it: a tensor whose memory a name before it holds
    (tied weights) as a copy of its own, which safetensors requires; the others as they are
    (a copy of each doubled a large model's memory while it was written)."""
    out, held = {}, set()
    for k, v in model.state_dict().items():
        t = v.detach().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[k] = t.clone() if ptr in held or not t.numel() else t
        held.add(ptr)
    return out


def _in_stored_dtype(weights: dict[str, torch.Tensor], dtype: str | None, tuned: bool
                     ) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The pruned weights in ``dtype``: the half-precision dtype the model ran in
    (``source["run_dtype"]``), or else the one the original's weights file stored
    (``source["dtype"]``; the model ran as float32), and what report.json says about it
    (None: neither is half precision). Pruning only selects values, so the float32
    tensors hold exactly half-precision values and the cast loses nothing; it is checked,
    and when any value would change (weights tuned in float32) they stay float32."""
    if dtype not in HALF_DTYPES:
        return weights, None
    dt = HALF_DTYPES[dtype]
    cast = {k: t.to(dt) if t.dtype == torch.float32 else t for k, t in weights.items()}
    changed = next((k for k, t in weights.items()
                    if t.dtype == torch.float32 and not torch.equal(cast[k].float(), t)), None)
    if changed is not None:
        why = "tuned in float32" if tuned else "not the original's values"
        return weights, {"written": "float32", "reason": f"'{changed}' holds values {dtype} "
                         f"cannot hold ({why}): written as float32, as the model ran"}
    return cast, {"written": dtype}


def export_dir(pruner: Pruner, plan: Plan, pruned: nn.Module, out_dir: str | Path,
               source: dict | None = None, verification: dict | None = None,
               history: list[dict] | None = None, pt2: bool = True,
               tuned: bool = False, timing: dict | None = None) -> Path:
    """Write the export directory for ``pruned`` (made by ``pruner.apply(plan)``).

    ``source`` is :attr:`LoadedModel.source`; None (or no ``"spec"`` in it) for a model built
    in-process: plan.json then records ``"spec": null`` and the example inputs are written to
    ``inputs.safetensors`` (tensors, and plain values beside them in its metadata); a
    Hugging Face model's config goes in ``source.hf_config``, which :func:`load_pruned` builds
    it from (or from a fitted ``config.json``); any other model reloads from the code you
    name (``spec=``).
    ``history`` lists earlier rounds' plan.json entries when the pruner's model was itself a
    pruned model (several rounds).
    ``pt2=False`` skips ``model.pt2``: ``torch.export`` is most of the time an export takes,
    and the program holds a second copy of the weights (``report.json`` says it was skipped).
    ``tuned=True``: ``pruned`` was trained after ``apply`` (fine-tuning to recover accuracy),
    so its weights are no longer the original's at the kept indices: masked equivalence is
    skipped, the round says ``"tuned": true``, and ``check`` does not compare the tensors with
    the original's (the shapes, the reload and the recorded outputs are still checked).
    ``timing`` (:func:`timing.compare_speed` of the model pruned and ``pruned``) goes in
    ``report.json`` as it is. A model of other shapes than ``apply`` gives, or one that
    does not run, is refused before anything is written; a directory made for the export
    is removed again when it fails.
    """
    state = pruned.state_dict()
    if any(t.device.type == "meta" for t in state.values()):
        raise DepViewError("this model is on the meta device: it has no weights to export; "
                           "load it on cpu to export a checkpoint")
    quantized = next((k for k, t in state.items() if t.is_quantized), None)
    if quantized is not None:
        raise DepViewError(f"'{quantized}' is a quantized tensor "
                           f"({str(state[quantized].dtype).removeprefix('torch.')}), which "
                           "safetensors cannot hold: export the float model, and quantize "
                           "the pruned one")
    _check_applied(pruner, plan, state)
    made = not Path(out_dir).exists()
    out = _prepare_out(Path(out_dir))
    try:
        return _write_export(pruner, plan, pruned, out, source, verification, history, pt2,
                             tuned, timing)
    except BaseException:
        if made:  # (a directory this call made, left empty: nothing was written)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _check_applied(pruner: Pruner, plan: Plan, state: dict[str, torch.Tensor]) -> None:
    """Refuse, before anything is written, a model whose tensors are not the shapes
    ``pruner.apply(plan)`` gives (the original, a copy pruned by another plan): plan.json
    would describe tensors the weights file does not hold, and the export would not
    reload."""
    pruner.check_plan(plan)  # (a plan it cannot have made: its one-line error)
    kept = pruner.kept(plan)
    for key, t in pruner.model.state_dict().items():
        want = list(t.shape)
        for d, idx in kept.get(key, {}).items():
            want[int(d)] = len(idx)
        got = state.get(key)
        if got is None or list(got.shape) != want:
            have = "missing" if got is None else f"{list(got.shape)}"
            raise DepViewError(f"the model given is not the one pruner.apply(plan) makes: its "
                               f"'{key}' is {have}, the plan makes it {want} (export the copy "
                               "apply returned for this plan)")


def _write_export(pruner: Pruner, plan: Plan, pruned: nn.Module, out: Path,
                  source: dict | None, verification: dict | None, history: list[dict] | None,
                  pt2: bool, tuned: bool, timing: dict | None) -> Path:
    """:func:`export_dir` once its arguments are checked and ``out`` exists."""
    from safetensors.torch import save_file

    # (a later round's pruner holds a pruned model: its config is not the original's)
    source = _recorded_source(source, pruner.inputs, None if history else pruner.model)
    if verification is None:
        verification = pruner.verify(pruned, plan, masked=not tuned)
    if verification.get("forward") is False:  # (no outputs to record, nothing to reload)
        raise DepViewError("the pruned model does not run on the example inputs: "
                           f"{verification.get('error') or 'its forward failed'}")
    if tuned:
        verification = {**verification, "masked_equivalence": {
            "skipped": "the weights were tuned after pruning"}}
    preview = pruner.preview(plan)
    rounds = list(history or []) + [round_entry(pruner, plan, pruned)]
    if tuned:
        rounds[-1]["tuned"] = True
    plan_json = {"format": FORMAT, "source": source, "versions": _versions(), "rounds": rounds}
    # single-round exports also expose the documented top-level keys
    plan_json["tensors"] = rounds[-1]["tensors"] if len(rounds) == 1 else _compose(rounds)
    plan_json["renormalized"] = {g: v for r in rounds for g, v in r.get("renormalized", {}).items()}
    plan_json["attrs"] = _merge_attrs(rounds)
    # written next to the directory's files first, then moved over them together: an export
    # that fails half-way leaves an earlier export whole, never a mix of two
    try:
        stage = Path(tempfile.mkdtemp(prefix=".depview-", dir=out))
    except OSError as exc:
        raise DepViewError(f"cannot write to {out}: {exc.strerror or exc}") from None
    # (a model run in half precision is written in it; one run as float32 in the half
    # precision its weights file stored, which holds exactly its values)
    weights, stored = _in_stored_dtype(_state_dict(pruned),
                                       source.get("run_dtype") or source.get("dtype"), tuned)
    try:
        save_file(weights, str(stage / "model.safetensors"), metadata={"format": FORMAT})
        (stage / "plan.json").write_text(dumps(plan_json, indent=1))
        # safetensors writes its file readable by its owner alone (0600); give it the mode
        # any file written here gets (the umask's), as the JSON files have
        shutil.copymode(stage / "plan.json", stage / "model.safetensors")
        report = {
            "params": preview["params"], "macs": preview["macs"],
            "output_shapes": verification.get("output_shapes"),
            "verification": verification,
            "groups_pruned": len(plan.removed), "units_removed": plan.n_removed,
            "pt2": (_try_export_pt2(pruned, pruner.inputs, stage / "model.pt2") if pt2 else
                    {"written": False, "reason": "not requested"}),
        }
        if report["pt2"].get("written"):  # (check compares it; never loads it: pickle)
            report["pt2"]["sha256"] = _sha256(stage / "model.pt2")
        config = _write_config(pruner, pruned, stage / "config.json",
                               None if stored is None or "reason" in stored else
                               stored["written"])
        if config is not None:
            report["config"] = config
        if stored is not None:
            report["dtype"] = stored
        if timing is not None:
            report["timing"] = timing
        if source["spec"] is None or source.get("input_file") or source.get("guessed_inputs"):
            # (nothing to remake them from, or their values matter: an image's tokens)
            report["inputs"] = _write_inputs(pruner.inputs, stage / INPUTS_FILE)
        report["weights_sha256"] = _sha256(stage / "model.safetensors")
        report["output_digest"] = output_digest(run(pruned, pruner.inputs), pruner.inputs)
        (stage / "report.json").write_text(dumps(report, indent=1, default=str))
        with _signals_held():  # (a Ctrl-C now would leave a mix of two exports)
            for name in ("model.pt2", "config.json", INPUTS_FILE):  # an earlier export's
                if not (stage / name).exists():                    # are not kept
                    (out / name).unlink(missing_ok=True)
            for f in sorted(stage.iterdir()):
                os.replace(f, out / f.name)
    except OSError as exc:
        raise DepViewError(f"writing the export to {out} failed: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C (SIGINT) and SIGTERM wait while the block runs, then act: the files of an
    export are moved over an earlier one together or not at all. (Only the main thread
    sets signal handlers; elsewhere, the app's, nothing changes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda n, _frame: got.append(n)) for s in held}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if got:
            signal.raise_signal(got[0])


def _write_config(pruner: Pruner, pruned: nn.Module, path: Path, dtype: str | None = None
                  ) -> dict | None:
    """Write ``config.json`` (Hugging Face's format, as ``save_pretrained`` writes it) when the
    pruned model's config describes it, so ``from_pretrained`` of the export directory builds
    the pruned model; what report.json says about it. None if the model holds no config.
    ``dtype``: the dtype the weights were written in, when not the model's (float32), so
    ``from_pretrained`` builds the model in it, as it built the original."""
    # the verdict of the apply that made ``pruned``, else (another Pruner's copy, or
    # apply(config=False)) a check of the config it holds, which changes nothing
    fit = pruner.config_fit_of(pruned) or pruner.fit_config(pruned, search=False)
    if fit is None:
        return None
    if "modules" in fit:  # held by parts of the model: each part saves its own
        return {"written": False, "modules": fit["modules"],
                "reason": "the model holds no config of its own, only its parts do"}
    if "reason" in fit:
        return {"written": False, "reason": fit["reason"]}
    cfg = held_config(pruned)
    if not callable(getattr(cfg, "to_json_string", None)):
        return {"written": False, "changed": fit["changed"],
                "reason": f"{type(cfg).__name__} has no to_json_string() to write it with"}
    data = _config_data(pruned)
    if dtype:
        data.update({k: dtype for k in ("dtype", "torch_dtype") if k in data} or
                    {"dtype": dtype})
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return {"written": True, "file": path.name, "changed": fit["changed"]}


def _config_data(model: nn.Module) -> dict:
    """The model's config as ``save_pretrained`` writes it to config.json: its JSON, with the
    model's class in ``architectures``."""
    data = json.loads(held_config(model).to_json_string())
    data["architectures"] = [type(model).__name__]
    return data


def _hf_class(model: nn.Module) -> bool:
    """Whether ``model`` is a model class ``transformers`` exports, holding its config (so a
    reload can build it from the config, as ``from_pretrained`` does)."""
    tf = sys.modules.get("transformers")
    cls = type(model)
    return tf is not None and isinstance(getattr(tf, "PreTrainedModel", None), type) and \
        issubclass(cls, tf.PreTrainedModel) and getattr(tf, cls.__name__, None) is cls and \
        callable(getattr(held_config(model), "to_json_string", None))


def _rebuilds(model: nn.Module, data: dict) -> bool:
    """Whether the class a config's data names, built from that data (on meta) as a reload
    builds it, has ``model``'s tensor shapes."""
    try:
        built = _hf_model(data, "the config", "", device="meta")
    except DepViewError:
        return False
    return state_shapes(built) == state_shapes(model)


def _dotted(inputs: dict) -> dict:
    """Keyword inputs with a dict argument's tensors under dotted names (``batch.image``, as
    ``--input`` names them), when the dicts hold tensors only; else ``inputs`` as given."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, dict) and v and all(isinstance(x, (torch.Tensor, dict))
                                             for x in v.values()):
            out.update({f"{k}.{sub}": t for sub, t in _dotted(v).items()})
        else:
            out[k] = v
    return out


def _write_inputs(inputs, path: Path) -> dict:
    """Write the example inputs of a model built in-process as a batch file (positional
    inputs named 0, 1, ...; keyword inputs by name: :func:`~viewer.core.spec.read_batch`
    reads it), for ``check`` to run the reloaded model on; what report.json says of it."""
    from safetensors.torch import save_file

    named = (_dotted(inputs) if isinstance(inputs, dict) else
             {str(i): t for i, t in enumerate(inputs)} if isinstance(inputs, (tuple, list))
             else {})
    tensors = {k: t for k, t in named.items() if isinstance(t, torch.Tensor)}
    # plain values beside the tensors (``scale=2.0``, ``use_cache=False``) go in the metadata
    values = {k: v for k, v in named.items() if k not in tensors}
    if not tensors or not all(isinstance(k, str) for k in named) or not all(
            v is None or isinstance(v, (bool, int, float, str)) for v in values.values()):
        return {"written": False, "reason": "the example inputs are not a tuple or dict of "
                                            "tensors and plain values (numbers, strings, "
                                            "booleans, None): check cannot run the model"}
    # (safetensors keeps keys sorted: the order, which keyword inputs are passed and hashed
    # in, goes in the metadata)
    meta = {"order": json.dumps(list(named))}
    if values:
        meta["values"] = json.dumps(values)
    save_file({k: t.detach().cpu().clone() for k, t in tensors.items()}, str(path),
              metadata=meta)
    shutil.copymode(path.parent / "plan.json", path)
    return {"written": True, "file": path.name}


def _recorded_source(source: dict | None, inputs, model: nn.Module | None = None) -> dict:
    """``source`` as plan.json records it: ``weights`` as an absolute path (as ``file``), so
    ``check`` finds the original's weights from any directory, and, for a demo, whether the
    example inputs were the demo's own (``demo_inputs``: they are not made from ``inputs``,
    whose integers a demo draws in its own range). A model built in-process (no source, or
    no spec in it) gets ``"spec": None``, and, when ``model`` (the original) is a Hugging Face
    model class, its config as ``hf_config`` (config.json's form), to build it from."""
    source = dict(source or {})
    if not source.get("spec"):
        source["spec"] = None
        if "hf_config" not in source and model is not None and _hf_class(model):
            data = _config_data(model)
            if _rebuilds(model, data):  # (a pruned model whose config was not fitted: not)
                source["hf_config"] = data
        return source
    if source.get("weights"):
        source["weights"] = str(Path(source["weights"]).resolve())
    spec = str(source.get("spec", ""))
    if spec.startswith("demo:"):
        source["demo_inputs"] = _demo_inputs_of(spec, inputs) is not None
    return source


def _demo_inputs_of(spec: str, inputs):
    """The demo's own example inputs when ``inputs`` are exactly those (None otherwise)."""
    import demo_models

    try:
        own = tuple(demo_models.get_demo(spec[5:]).make_inputs("cpu"))
    except ValueError:
        return None
    mine, theirs = flatten(inputs), flatten(own)
    if len(mine) != len(theirs) or any(
            a != b or x.shape != y.shape or x.dtype != y.dtype or x.device.type == "meta"
            or not torch.equal(x.detach().cpu(), y)
            for (a, x), (b, y) in zip(mine, theirs, strict=True)):
        return None
    return own


def check_out_dir(out: str | Path) -> Path:
    """Refuse, before any work, an export directory :func:`export_dir` could not write:
    see :func:`_prepare_out`. Nothing is created."""
    out = Path(out)
    if out.exists():  # a directory is checked for foreign files, a file refused
        return _prepare_out(out)
    check_creatable(out)
    return out


def check_creatable(path: str | Path) -> None:
    """Raise a one-line :class:`DepViewError` when ``path`` (which does not exist) could not
    be created: its nearest existing ancestor is a file, or a directory this process cannot
    write to. Nothing is created."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DepViewError(f"cannot create {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DepViewError(f"cannot create {path}: {parent} is not writable")


def _prepare_out(out: Path) -> Path:
    """The export directory, made if need be. One that holds files named as an export's but
    not written by DepView is refused: they would be overwritten."""
    if out.exists() and not out.is_dir():
        raise DepViewError(f"{out} is a file: the export needs a directory (--out DIR)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DepViewError(f"cannot create {out}: {exc.strerror or exc}") from None
    # (every file an export may write: an earlier export's extra ones are removed)
    ours = [f for f in (*FILES, "model.pt2", "config.json", INPUTS_FILE) if (out / f).exists()]
    if ours:
        try:
            fmt = read_json(out / "plan.json").get("format")
        except (OSError, ValueError, AttributeError):
            fmt = None
        if fmt != FORMAT:
            raise DepViewError(f"{out} holds {', '.join(ours)} that DepView did not write; "
                               "pick another --out (they would be overwritten)")
    return out


def round_entry(pruner: Pruner, plan: Plan, pruned: nn.Module) -> dict:
    """One pruning round as plan.json records it: kept indices per tensor dim (relative to
    the round's input model), changed attributes, the plan and the groups it pruned."""
    return {
        "tensors": pruner.kept(plan),
        "renormalized": pruner.renormalized(plan),
        "attrs": attr_changes(pruner.model, pruned),
        "plan": plan.to_dict(),
        "groups": {str(gid): {"root": pruner.groups[gid].root, "removed_units": units}
                   for gid, units in plan.removed.items()},
    }


def _compose(rounds: list[dict]) -> dict:
    """Kept indices relative to the ORIGINAL tensors after several rounds."""
    total: dict[str, dict[str, list[int]]] = {}
    for rnd in rounds:
        for key, dims in rnd["tensors"].items():
            cur = total.setdefault(key, {})
            for d, kept in dims.items():
                if d in cur:
                    base = np.asarray(cur[d])
                    cur[d] = [int(x) for x in base[np.asarray(kept, dtype=np.int64)]]
                else:
                    cur[d] = list(kept)
    return total


def _merge_attrs(rounds: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for rnd in rounds:
        for mod, attrs in rnd.get("attrs", {}).items():
            out.setdefault(mod, {}).update(attrs)
    return out


def _try_export_pt2(model: nn.Module, inputs, path: Path) -> dict:
    """Write ``model.pt2`` if ``torch.export`` takes the model. Its warnings (RNN weight
    lists, ...) go into the report instead of the user's terminal, and what it prints to
    stderr (the whole traced graph when data-dependent control flow stops it) is dropped."""
    with warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stderr(io.StringIO()), _torch_logs_caught() as logged:
        warnings.simplefilter("always")
        try:
            # torch.export runs the module with its parameters swapped for fake tensors: a
            # copy keeps another thread's forward on ``model`` (the app's) from meeting them;
            # the program is the inference one (eval mode), as every other DepView forward
            model = copy.deepcopy(model).eval()
            if isinstance(inputs, dict):
                ep = torch.export.export(model, (), dict(inputs))
            else:
                ep = torch.export.export(model, tuple(inputs))
            torch.export.save(ep, str(path))
            res = {"written": True, "file": path.name}
        except Exception as exc:
            first = first_line(exc)
            first = first if len(first) <= 200 else first[:199] + "…"
            res = {"written": False,
                   "reason": f"torch.export failed: {type(exc).__name__}: {first}"}
            if "cache_utils" in first:  # a Hugging Face LM returning its KV cache
                res["reason"] += (" (a Hugging Face model returns its KV cache unless built "
                                  "with use_cache=False in its config; that one exports)")
    notes = list(dict.fromkeys(first_line(w.message)[:200]
                               for w in caught))
    notes += [n for n in dict.fromkeys(logged) if n not in notes]
    if notes:
        res["warnings"] = notes
    return res


@contextlib.contextmanager
def _torch_logs_caught():
    """Keep what torch's loggers log from this thread (``W... symbolic_shapes.py ...] Unable
    to find user code corresponding to {u0}`` during ``torch.export``) off the terminal: torch
    gives its loggers their own stderr handlers, which ``redirect_stderr`` does not reach.
    Yields the list that receives the first line of each warning or worse; other threads'
    records still go out."""
    import logging
    import threading

    me = threading.get_ident()
    logged: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.thread != me:
            return True
        if record.levelno >= logging.WARNING:
            try:
                text = record.getMessage()
            except Exception:
                text = str(record.msg)
            logged.append(first_line(text)[:200])
        return False

    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "torch" or name.startswith("torch.")]
    handlers = {id(h): h for lg in loggers for h in lg.handlers}
    for h in handlers.values():
        h.addFilter(keep)
    try:
        yield logged
    finally:
        for h in handlers.values():
            h.removeFilter(keep)


@contextlib.contextmanager
def unzipped(path: str | Path, digests: dict | None = None):
    """``(directory, (folder of the zip,))`` for an export given as a zip (what the app's
    Checkpoint button downloads), its files in a temporary directory while the block runs
    (see :func:`_export_files`), and a model file the spec names looked for beside the zip.
    Any other path: ``(path, ())``. ``digests``, a dict, receives the SHA-256 of the zip's
    ``model.pt2`` (hashed as it is read, never unpacked to disk nor loaded)."""
    p = Path(path)
    if not (p.is_file() and p.suffix.lower() == ".zip"):
        yield p, ()
        return
    with _export_files(p, str(path), f"{path} is not a readable zip file",
                       digests=digests) as tmp:
        yield tmp, (p.resolve().parent,)


@contextlib.contextmanager
def _export_files(source, name: str, not_zip: str, max_bytes: int | None = None,
                  digests: dict | None = None):
    """The files of an export zip (``source``: a path or a file object) that an export is
    read from (plan.json, report.json, model.safetensors, inputs.safetensors: no code, no
    pickle), streamed into a temporary directory that lives while the block runs. A
    DepViewError raised in the block names the zip (``name``), not that directory.
    Before a byte is unpacked, what the zip declares is checked: a JSON file above
    :func:`json_limit` of its weights, a member packed like a zip bomb
    (:func:`zip_member_problem`), more than ``max_bytes`` in all, or more than the
    temporary directory has free, is refused in one line; then each member is read no
    further than the size it declared. ``digests``: see :func:`unzipped`."""
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile:
        raise DepViewError(not_zip) from None
    except OSError as exc:
        raise DepViewError(f"{not_zip} ({error_line(exc)})") from None
    with zf, tempfile.TemporaryDirectory() as tmp:
        infos = {Path(i.filename).name: i for i in zf.infolist() if not i.is_dir()}
        if "plan.json" not in infos or "model.safetensors" not in infos:
            raise DepViewError(f"{name} is not a DepView export (needs plan.json and "
                               "model.safetensors)")
        if max_bytes is not None and sum(i.file_size for i in zf.infolist()) > max_bytes:
            raise DepViewError(f"{name} is too large")
        limit = json_limit(infos["model.safetensors"].file_size)
        wanted = [f for f in (*FILES, INPUTS_FILE) if f in infos]
        hashed = ["model.pt2"] if digests is not None and "model.pt2" in infos else []
        for fname in wanted + hashed:
            problem = zip_member_problem(infos[fname], name,
                                         limit if fname.endswith(".json") else None)
            if problem:
                raise DepViewError(problem)
        need = sum(infos[f].file_size for f in wanted)
        free = shutil.disk_usage(tmp).free
        if need > free:
            raise DepViewError(f"{name} unpacks to {size_text(need)}, and the temporary "
                               f"directory {Path(tmp).parent} has {size_text(free)} free: "
                               "free space there (or set TMPDIR), or unzip it yourself")
        try:
            for fname in wanted:  # (inputs: safetensors, never a pickle)
                with zf.open(infos[fname]) as src, open(Path(tmp) / fname, "wb") as dst:
                    _read_bounded(src, infos[fname], name, dst.write)
            for fname in hashed:  # (a program torch.export.load would unpickle: hashed only)
                h = hashlib.sha256()
                with zf.open(infos[fname]) as src:
                    _read_bounded(src, infos[fname], name, h.update)
                digests[fname] = h.hexdigest()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DepViewError(f"{name} is damaged: {error_line(exc)}") from None
        try:
            yield Path(tmp)
        except DepViewError as exc:  # name the zip, not a directory that is about to go
            text = str(exc).replace(f"{tmp}{os.sep}", f"{name}'s ").replace(tmp, name)
            raise DepViewError(text) from None


def json_limit(weights_bytes: int) -> int:
    """The most an export's JSON file may hold, beside weights of ``weights_bytes``: see
    :data:`JSON_MIN_LIMIT`."""
    return max(JSON_MIN_LIMIT, weights_bytes)


def size_text(n: int) -> str:
    """``n`` bytes in words: ``"2.0 GB"``, ``"256 MB"``, ``"12 kB"``, ``"10 bytes"``."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n // scale} {unit}"
    return f"{n} bytes"


def too_large(what: str, size: int, limit: int) -> DepViewError:
    """The one-line refusal of a JSON file of an export larger than ``limit``."""
    return DepViewError(f"{what} is {size_text(size)}: more than the {size_text(limit)} a "
                        "JSON file of this export may hold (the larger of 256 MB and the size "
                        "of its model.safetensors); refused unread")


def read_json(path: Path, limit: int | None = None):
    """The JSON in the file ``path``, refused (one line, naming it and its size) before it is
    read when it holds more than ``limit`` bytes (by default :func:`json_limit` of the
    ``model.safetensors`` beside it). Raises what :func:`json.loads` raises on bad JSON."""
    if limit is None:
        try:
            limit = json_limit((path.parent / "model.safetensors").stat().st_size)
        except OSError:
            limit = json_limit(0)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise too_large(str(path), size, limit)
        data = f.read(limit + 1)  # (one that grows meanwhile is read no further)
    if len(data) > limit:
        raise too_large(str(path), len(data), limit)
    return json.loads(data)


def zip_member_problem(info: zipfile.ZipInfo, name: str, limit: int | None) -> str:
    """Why the zip member ``info`` of the zip ``name`` may not be unpacked ("" if it may),
    from what the zip declares, before a byte is decompressed: a JSON file (``limit``: its
    most, see :func:`json_limit`; None for another file) that unpacks to more, or any member
    that unpacks to more than :data:`ZIP_MAX_RATIO` times its packed size (a zip bomb)."""
    what = f"{name}'s {Path(info.filename).name}"
    if limit is not None and info.file_size > limit:
        return str(too_large(what, info.file_size, limit))
    if info.file_size > ZIP_RATIO_FROM and \
            info.file_size > ZIP_MAX_RATIO * max(info.compress_size, 1):
        return (f"{what} would unpack to {size_text(info.file_size)} from "
                f"{size_text(info.compress_size)} ({info.file_size // max(info.compress_size, 1)}"
                " times as large: no export's file packs so tightly, a zip bomb?); refused "
                "unpacked")
    return ""


def read_zip_json(zf: zipfile.ZipFile, member: str, name: str, limit: int):
    """The JSON of the zip member ``member`` of the zip ``name``, refused before it is
    unpacked (see :func:`zip_member_problem`) and read no further than it says it holds."""
    info = zf.getinfo(member)
    problem = zip_member_problem(info, name, limit)
    if problem:
        raise DepViewError(problem)
    with zf.open(info) as src:
        return json.loads(_read_bounded(src, info, name, None))


def _read_bounded(src, info: zipfile.ZipInfo, name: str, sink) -> bytes:
    """Read the zip member ``src`` (``info``) in blocks into ``sink`` (a callable; None:
    return the bytes), stopping with a one-line error past the size it declared (zipfile
    stops there too, and checks the CRC: this says so in words)."""
    parts, got = [], 0
    while block := src.read(16 << 20):
        got += len(block)
        if got > info.file_size:
            raise DepViewError(f"{name}'s {Path(info.filename).name} holds more than the "
                               f"{size_text(info.file_size)} the zip declares: it is damaged")
        if sink is None:
            parts.append(block)
        else:
            sink(block)
    return b"".join(parts)


def export_path(path: str | Path) -> Path:
    """An export directory, also when given as its plan.json."""
    p = Path(path)
    if p.is_file():
        if p.name == "plan.json":
            return p.parent
        raise DepViewError(f"{path} is a file, not a DepView export directory")
    return p


def read_report(path: Path) -> dict | None:
    """An export's report.json (None if there is none), checked for the parts check reads."""
    p = path / "report.json"
    if not p.is_file():
        return None
    try:
        report = read_json(p)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DepViewError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(report, dict) or not isinstance(report.get("params", {}), dict) or \
            not isinstance(report.get("verification") or {}, dict) or \
            not isinstance(report.get("weights_sha256") or "", str):
        raise DepViewError(f"{p} is damaged: 'params' and 'verification' must be objects")
    pt2 = report.get("pt2")
    if pt2 is not None and not (isinstance(pt2, dict) and
                                isinstance(pt2.get("written", False), bool) and
                                isinstance(pt2.get("sha256") or "", str)):
        raise DepViewError(f"{p} is damaged: 'pt2' must be an object whose 'written' is true "
                           "or false and whose 'sha256' is a string")
    problem = _verification_problem(report.get("verification") or {})
    if problem:
        raise DepViewError(f"{p} is damaged: {problem}")
    report.setdefault("params", {})
    return report


def _verification_problem(v: dict) -> str:
    """What is wrong with report.json's ``verification`` for ``check`` to read it ("" if
    nothing); its numbers that strict JSON spells as strings (``"NaN"``) become floats."""
    me = v.get("masked_equivalence")
    if me is not None:
        if not isinstance(me, dict):
            return "'verification.masked_equivalence' must be an object"
        for key in ("max_abs_diff", "rel_diff"):
            if key in me:
                try:
                    me[key] = json_float(me[key])
                except ValueError:
                    return f"'verification.masked_equivalence.{key}' must be a number"
        if type(me.get("nonfinite_mismatches", 0)) is not int:
            return "'verification.masked_equivalence.nonfinite_mismatches' must be an integer"
        if not isinstance(me.get("ok", True), bool):
            return "'verification.masked_equivalence.ok' must be true or false"
        part = me.get("exact_groups")
        if part is not None:
            if not isinstance(part, dict) or not isinstance(part.get("ok", True), bool):
                return ("'verification.masked_equivalence.exact_groups' must be an object "
                        "whose 'ok' is true or false")
            for key in ("max_abs_diff", "rel_diff"):
                if key in part:
                    try:
                        part[key] = json_float(part[key])
                    except ValueError:
                        return (f"'verification.masked_equivalence.exact_groups.{key}' must "
                                "be a number")
    untraced = v.get("untraced")
    if untraced is not None and not (isinstance(untraced, list)
                                     and all(isinstance(n, str) for n in untraced)):
        return "'verification.untraced' must be a list of parameter names"
    branches = v.get("train_branches")
    if branches is not None and not (isinstance(branches, list)
                                     and all(isinstance(n, str) for n in branches)):
        return "'verification.train_branches' must be a list of names"
    return ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_plan(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise DepViewError(f"no such directory: {path}")
    if p.is_dir():
        p = p / "plan.json"
    if not p.is_file():
        raise DepViewError(f"no plan.json in {path}: not a DepView export directory")
    try:
        plan = read_json(p)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DepViewError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        fmt = plan.get("format") if isinstance(plan, dict) else None
        raise DepViewError(f"{p} is not a DepView export (format {fmt!r})")
    problem = plan_problem(plan)
    if problem:
        raise DepViewError(f"{p} is damaged: {problem}")
    return plan


def plan_problem(plan: dict) -> str:
    """What is structurally wrong with a plan.json ("" if nothing): the parts a reload reads
    must have the types :func:`export_dir` writes."""
    src = plan.get("source")
    if not isinstance(src, dict) or "spec" not in src or \
            not isinstance(src["spec"], (str, type(None))):
        return "'source' must be an object with the model's 'spec' (null: built in-process)"
    if not isinstance(src.get("hf_config", {}), dict):
        return "'source.hf_config' must be an object (a Hugging Face config)"
    if not isinstance(src.get("kwargs") or {}, dict) or \
            not isinstance(src.get("inputs") or [], list) or \
            not all(isinstance(i, str) for i in src.get("inputs") or []):
        return "'source' must hold 'kwargs' as an object and 'inputs' as a list of shapes"
    if type(src.get("seed", 0)) is not int or src.get("seed", 0) < 0:
        return "'source.seed' must be an integer of 0 or more"
    tensors = plan.get("tensors", {})
    if not isinstance(tensors, dict) or not all(
            isinstance(dims, dict) and all(isinstance(k, list) and d.lstrip("-").isdigit()
                                           for d, k in dims.items())
            for dims in tensors.values()):
        return "'tensors' must map each tensor to {dim: [kept indices]}"
    attrs = plan.get("attrs", {})
    if not isinstance(attrs, dict) or not all(isinstance(a, dict) for a in attrs.values()):
        return "'attrs' must map each module to {attribute: value}"
    rounds = plan.get("rounds", [])
    if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
        return "'rounds' must be a list of rounds"
    return ""


def _plain_attr(mod: nn.Module, key: str, value) -> bool:
    """plan.json may only set what :func:`~viewer.core.prune.attr_changes` records: existing
    public attributes holding numbers, strings or lists of them (an uploaded plan is data)."""
    scalar = (bool, int, float, str)
    ok_value = isinstance(value, scalar) or (
        isinstance(value, list) and all(isinstance(x, scalar) for x in value))
    if isinstance(key, str) and key.startswith("config."):  # the config object it holds
        mod, key = held_config(mod), key.removeprefix("config.")
        if mod is None:
            return False
        if key == "head_dim" and head_dim_settable(mod):  # (Phi3 has no such attribute)
            return type(value) is int and value > 0
    if not (ok_value and isinstance(key, str) and not key.startswith("_") and key in vars(mod)):
        return False
    old = getattr(mod, key)
    if isinstance(old, (nn.Module, torch.Tensor)):
        return False
    # the kind it had: a number stays a number (bool and int are one kind), a list or tuple a
    # list (plan.json stores a tuple as a list)
    listy = (list, tuple)
    if isinstance(old, listy) or isinstance(value, listy):
        return isinstance(old, listy) and isinstance(value, listy)
    return isinstance(old, str) == isinstance(value, str)


def _check_kept(key: str, d, kept, shape, where: str = "") -> None:
    """plan.json's kept indices must be increasing positions inside the tensor's dim
    (``where``: which round's, when not the composed ones)."""
    try:
        dim = int(d)
        ok = 0 <= dim < len(shape) and all(type(i) is int for i in kept) and \
            all(0 <= a < b for a, b in zip(kept, kept[1:], strict=False)) and \
            (not kept or 0 <= kept[0] and kept[-1] < shape[dim])
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DepViewError(f"plan.json's kept indices{where} for {key!r} dim {d} do not fit "
                           f"its shape {list(shape)}: the plan is damaged or from another model")


def _check_rounds(plan: dict, table: dict) -> None:
    """Each round's kept indices fit the tensor as the rounds before left it, and together the
    rounds give plan.json's own ``tensors`` and ``attrs``. A later round's export is made from
    the rounds (an uploaded zip goes on from them), so a damaged round is refused here, not
    in the next export."""
    rounds = plan.get("rounds") or []
    if not rounds and (plan.get("tensors") or plan.get("attrs")):
        raise DepViewError("plan.json lists no rounds for its kept indices: the plan is "
                           "damaged")
    shapes = {key: list(t.shape) for key, (_, _, t) in table.items()}
    for i, rnd in enumerate(rounds, 1):
        tensors, attrs = rnd.get("tensors"), rnd.get("attrs", {})
        if not isinstance(tensors, dict) or not all(isinstance(v, dict) for v in tensors.values()) \
                or not isinstance(attrs, dict) or \
                not all(isinstance(a, dict) for a in attrs.values()):
            raise DepViewError(f"plan.json's round {i} must map tensors to {{dim: [kept indices]}} "
                               "and modules to {attribute: value}")
        for key, dims in tensors.items():
            if key not in shapes:
                raise DepViewError(f"plan.json's round {i} names tensor {key!r}, which the "
                                   "model lacks")
            for d, kept in dims.items():
                _check_kept(key, d, kept, shapes[key], f" in round {i}")
                shapes[key][int(d)] = len(kept)
    if rounds and (_compose(rounds) != plan.get("tensors", {})
                   or _merge_attrs(rounds) != plan.get("attrs", {})):
        raise DepViewError("plan.json's rounds do not add up to its kept indices and "
                           "attributes: the plan is damaged")


def reshape_like_plan(model: nn.Module, plan: dict, rounds: bool = False) -> nn.Module:
    """Slice a freshly built original model's tensors as plan.json says and set the changed
    attributes, in place. Weights are loaded afterwards. ``rounds``: check first that the
    plan's rounds add up to it (a plan.json read from a file)."""
    table = tensor_lookup(model)
    if rounds:
        _check_rounds(plan, table)
    done: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for key, dims in plan.get("tensors", {}).items():
            if key not in table:
                raise DepViewError(f"plan.json names tensor {key!r}, which the model lacks")
            mod, attr, t = table[key]
            if id(t) not in done:
                new = t.detach()
                for d, kept in sorted(dims.items(), key=lambda kv: int(kv[0])):
                    _check_kept(key, d, kept, new.shape)
                    new = new.index_select(int(d), torch.as_tensor(kept, dtype=torch.long))
                new = laid_out_like(new, t)  # (a channels_last model's weights stay so)
                if isinstance(t, nn.Parameter):
                    new = nn.Parameter(new.clone(), requires_grad=t.requires_grad)
                done[id(t)] = new
            setattr(mod, attr, done[id(t)])
        # tied aliases of a replaced tensor point at the same new tensor
        for mod, attr, t in table.values():
            if id(t) in done and getattr(mod, attr) is not done[id(t)]:
                setattr(mod, attr, done[id(t)])
    refresh_computed_weights(model)  # (the attributes are checked against the weights)
    mods = dict(model.named_modules())
    for name, attrs in plan.get("attrs", {}).items():
        mod = mods.get(name)
        if mod is None:
            raise DepViewError(f"plan.json names module {name!r}, which the model lacks")
        for k, v in attrs.items():
            if not _plain_attr(mod, k, v):
                raise DepViewError(f"plan.json sets {name}.{k} to {str(v)[:40]!r}, which is not "
                                   "a public scalar attribute of that module, or not of "
                                   "the kind it holds")
            # (a list as JSON: a tuple again unless the module held a list)
            old = get_attr(mod, k, None)  # (None: a config's head_dim it never had)
            set_attr(mod, k, v if not isinstance(v, list) or isinstance(old, list) else tuple(v))
        if hasattr(mod, "_init_flat_weights"):
            mod._init_flat_weights()
        _check_attrs(name, mod, attrs)
    return model


def _check_attrs(name: str, mod: nn.Module, attrs: dict) -> None:
    """A layer's attributes in plan.json must be those its sliced tensors give it (what
    pruning set): ``out_channels: 5`` beside a weight of 4 rows is a damaged plan.json."""
    typ = classify(mod)
    if typ not in SELF_DESCRIBING:
        return
    # (its own __dict__: the refresh sets attributes on the copy; not copy.copy, which a
    # layer with a parametrization refuses)
    probe = object.__new__(type(mod))
    probe.__dict__.update(mod.__dict__)
    REFRESH[typ](probe, {})
    for k in attrs:
        want, have = getattr(probe, k, None), getattr(mod, k, None)
        if isinstance(want, list):
            want = tuple(want)
        if isinstance(have, list):
            have = tuple(have)
        if want != have:
            raise DepViewError(f"plan.json sets {name}.{k} to {have!r}, but its tensors give "
                               f"{want!r}: plan.json is damaged")



def rebuild(path: str | Path, search: bool = True, originals: dict | None = None,
            spec: str | None = None, near: tuple[Path, ...] = (),
            unpruned: list | None = None) -> tuple[nn.Module, LoadedModel]:
    """The pruned model of an export directory, plus the original's :class:`LoadedModel`
    (example inputs, output layers), building the original only once.

    A model file the spec names relative to where ``prune`` ran is looked for from here, then
    in the export directory and its parent, then at the absolute path ``prune`` recorded.
    ``search=False`` (uploads: their plan.json is not trusted) looks only from here.

    ``originals``, a dict, receives the original model's tensors that plan.json slices,
    before slicing, when the original's values can be rebuilt (its factory's seeded weights,
    or the weights file it was loaded from, if it is still there): ``check`` compares them
    with the pruned ones. It gets ``"unavailable"`` (why not) otherwise.

    The recorded spec must look like model code (:func:`viewer.core.spec.recorded_refusal`):
    plan.json can be edited. ``spec`` builds the original from code you name instead (with the
    recorded kwargs and inputs).

    ``unpruned``, a list, receives a copy of the original model before it is reshaped (``check
    --time`` times the pruned model against it); it stays empty for a model built in-process,
    whose export holds no original to build."""
    path = export_path(path)
    plan = read_plan(path)
    src = plan["source"]
    recorded = spec is None
    spec = src["spec"] if spec is None else spec
    if spec is None:
        return _rebuild_in_process(path, plan, search, originals)
    if search and recorded:
        # (an unzipped export's temporary directory holds no code: beside the zip instead)
        spec = locate_spec(spec, [*(near or (path, path.parent)),
                                  *(src[k] for k in ("file", "dir", "module_dir")
                                    if src.get(k))])
    weights = None
    example = None
    inputs = src.get("inputs") or None
    if src.get("input_file") or src.get("guessed_inputs"):
        # given as a file (real data), or made with values that matter (an image's tokens
        # among the ids): the copy the export holds
        example, inputs = _recorded_inputs(path), None
        if example is None:
            made = f"from {src['input_file']}" if src.get("input_file") else \
                src["guessed_inputs"]
            raise DepViewError(f"{path} lacks {INPUTS_FILE}, the example inputs its model was "
                               f"pruned on ({made})")
    if src["spec"] is None:  # built in-process, its code named now: its recorded inputs
        example = _recorded_inputs(path)
        if originals is not None:
            originals["unavailable"] = ("the original's weights were not recorded (the "
                                        "model was built in-process)")
    elif originals is not None and src.get("weights"):
        # an absolute path since it is recorded so; an older export's relative one is looked
        # for from here, then beside the export directory
        found = [w for w in (Path(src["weights"]), path.parent / src["weights"]) if w.is_file()]
        if found:
            weights = str(found[0])
        else:
            originals["unavailable"] = (f"the original's weights file {src['weights']} is not "
                                        "here")
    if _own_demo_inputs(src) and spec.startswith("demo:"):
        inputs = None  # load_model gives a demo its own inputs (other code named: recorded)
    lm = load_model(spec, inputs=inputs, kwargs=src.get("kwargs"),
                    weights=weights, device="cpu", seed=src.get("seed", 0), recorded=recorded,
                    example=example, dtype=src.get("run_dtype"))
    if example is not None and src["spec"] is not None:
        # inputs read from the export's copy: where they came from, so that an export of a
        # later round keeps a copy too (it recorded no inputs, and could not be reloaded)
        lm.source.update({k: src[k] for k in ("input_file", "guessed_inputs", "inputs")
                          if src.get(k)})
    if originals is not None and "unavailable" not in originals:
        # (no copies: reshape_like_plan puts new tensors in the model and leaves these be; a
        # copy of a 7B model's cut tensors took 13 GB more)
        table = tensor_lookup(lm.model)
        originals.update({k: table[k][2].detach() for k in plan.get("tensors", {})
                          if k in table})
        # (a g rescaled but not cut keeps its tensor, which the weights are loaded into:
        # a copy, of a vector)
        # (and a spectral norm's v, which its rescaled u is checked with)
        renorm = list(_renormalized(plan))
        originals.update({k: table[k][2].detach().clone()
                          for k in renorm + [v_of(k) for k in renorm if v_of(k)]
                          if k in table and k not in originals})
    if unpruned is not None:
        check_room(tensor_bytes(lm.model), "a copy of the original model to time against",
                   "check without --time")
        unpruned.append(tree_copy(lm.model, {}).eval())
    # the example inputs were drawn before reshaping, so they match the original model's
    model = reshape_like_plan(lm.model, plan, rounds=True)
    sd = read_state_dict(path / "model.safetensors")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise DepViewError(f"weights in {path} do not fit the rebuilt model: "
                           f"{load_error_detail(exc)}") from exc
    return model.eval(), lm


def _recorded_inputs(path: Path) -> tuple | dict | None:
    """The example inputs an export of an in-process model recorded (None: none were)."""
    from safetensors import safe_open

    from .spec import batch_from, read_batch

    f = path / INPUTS_FILE
    if not f.is_file():
        return None
    try:
        with safe_open(str(f), "pt") as sf:
            meta = sf.metadata() or {}
            values = json.loads(meta.get("values", "{}"))
            order = json.loads(meta.get("order", "[]"))
            tensors = {k: sf.get_tensor(k) for k in sf.keys()} if values else None
    except Exception:  # (read_batch below says what is wrong with the file itself)
        values, order, tensors = {}, [], None
    if not isinstance(values, dict) or not values or tensors is None:
        batch = read_batch(f)
    else:  # plain values recorded beside the tensors
        batch = batch_from({**tensors, **{k: torch.zeros(1) for k in values}}, str(f))
        if isinstance(batch, tuple):
            batch = tuple(values.get(str(i), t) for i, t in enumerate(batch))
        else:
            batch = {k: values.get(k, t) for k, t in batch.items()}
    if isinstance(batch, dict) and isinstance(order, list) and \
            sorted(map(str, order)) == sorted(batch):
        batch = {k: batch[k] for k in order}
    return batch


def _rebuild_in_process(path: Path, plan: dict, search: bool, originals: dict | None
                        ) -> tuple[nn.Module, LoadedModel]:
    """:func:`rebuild` of an export whose model was built in-process (plan.json records no
    spec). A Hugging Face model is built as ``from_pretrained`` would build it, from a model
    class ``transformers`` exports, with no download and no remote code: the pruned model
    from the export's ``config.json`` (written only when the model built from it, given the
    pruned weights, computes exactly what the pruned model did), which never holds the
    full-size original in memory; else the original from plan.json's ``hf_config``
    (recorded at export), reshaped by the plan. Its
    :class:`LoadedModel` holds the pruned model and the recorded example inputs (None if
    there were none)."""
    why = f"{path} records no model spec (its model was built in-process)"
    named = "pass the model's code: load_pruned(path, spec='my_models.py:build'), check --spec"
    if not search:  # an upload: its files may not name a class to build
        raise DepViewError(f"{why}: only a server started with --model DIR can open it")
    src = plan["source"]
    cfg_file = path / "config.json"
    if cfg_file.is_file():  # the pruned model itself: no full-size original in memory
        try:
            data = read_json(cfg_file)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DepViewError(f"{cfg_file} is not readable JSON: {exc}") from None
        model = _hf_model(data, str(cfg_file), named)
    elif isinstance(src.get("hf_config"), dict):
        model = reshape_like_plan(_hf_model(src["hf_config"], "plan.json's hf_config", named),
                                  plan, rounds=True)
    else:
        later = (" (a later round's export made in Python needs the first round's source: "
                 "export_dir(..., source=<round 1's plan.json>['source'], history=...))"
                 if len(plan.get("rounds") or []) > 1 else "")
        raise DepViewError(f"{why} and holds no config to build it from: {named}{later}")
    sd = read_state_dict(path / "model.safetensors")
    dtypes = {t.dtype for t in sd.values() if t.is_floating_point()}
    if len(dtypes) == 1:  # (from_pretrained keeps the saved dtype too)
        model.to(dtypes.pop())
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise DepViewError(f"weights in {path} do not fit the model its config describes: "
                           f"{load_error_detail(exc)}") from exc
    if originals is not None:
        originals["unavailable"] = ("the original's weights were not recorded (the model "
                                    "was built in-process)")
    model.eval()
    return model, LoadedModel(model, _recorded_inputs(path), dict(src), [],
                              type(model).__name__)


def _hf_model(data: dict, where: str, named: str, device: str = "cpu") -> nn.Module:
    """The Hugging Face model class a config's ``architectures`` names, built from it on
    ``device`` (weights allocated, not drawn): see :func:`viewer.core.spec.hf_class_and_config`."""
    cls, cfg = hf_class_and_config(data, where, named)
    model = build_from_config(cls, cfg, device)
    if model is None:
        raise DepViewError(f"{cls.__name__} cannot be built from {where}")
    return model


def _own_demo_inputs(src: dict) -> bool:
    """Whether an export's example inputs were its demo's own: plan.json says so
    (``demo_inputs``), or, in an export from before it did, its inputs are the demo's shapes
    and dtypes (what ``prune demo:X`` without ``--input`` records)."""
    spec = str(src.get("spec", ""))
    if not spec.startswith("demo:"):
        return False
    if "demo_inputs" in src:
        return src["demo_inputs"] is True
    import demo_models

    try:
        demo = demo_models.get_demo(spec[5:])
    except ValueError:
        return False
    own = [spell_input(s, d) for s, d in demo.input_specs]
    return (src.get("inputs") or []) == own


def load_pruned(path: str | Path, device: str = "cpu", spec: str | None = None) -> nn.Module:
    """Rebuild a pruned model from an export directory, with no pickle: the original
    architecture from the recorded spec (or ``spec``, model code you name), reshaped by the
    plan, then the safetensors weights. ``device`` is where the model goes (``"cpu"``,
    ``"cuda"``, ...): one this machine does not have is a one-line error, before anything is
    built."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DepViewError(f"bad device {device!r}: {first_line(exc)}"
                           ) from None
    available = getattr(torch, dev.type, None)
    if dev.type not in ("cpu", "meta") and not (
            hasattr(available, "is_available") and available.is_available()):
        raise DepViewError(f"device {device!r} is not available on this machine "
                           "(torch sees none): load on cpu")
    with unzipped(path) as (folder, near):
        model = rebuild(folder, spec=spec, near=near)[0]
    try:
        return model.to(dev)
    except (AssertionError, RuntimeError) as exc:
        raise DepViewError(f"cannot move the pruned model to {device!r}: "
                           f"{first_line(exc)}") from None


def check_dir(path: str | Path, spec: str | None = None, time: bool = False) -> dict:
    """Reload an export, run forward on the recorded inputs and compare with report.json
    (output shapes, parameter count, the SHA-256s of the weights file and of ``model.pt2``,
    which is never loaded, and the outputs recorded at export), and the pruned tensors with
    the original's at plan.json's kept indices when the original's values can be rebuilt.
    ``problems`` lists what failed, in words. ``spec`` names the model's code instead of the
    recorded spec (see :func:`rebuild`). ``path`` may
    be the zip the app's Checkpoint button gives (see :func:`unzipped`). ``time``: also time
    its forward against the original's on this machine (``timing``, as
    :func:`timing.compare_speed` gives it; over every round of a several-round export)."""
    digests: dict = {}
    with unzipped(path, digests) as (folder, near):
        res = _check(folder, spec, near, time, digests if near else None)
    if near:
        res["dir"] = str(path)
    return res


def _check(path: Path, spec: str | None, near: tuple[Path, ...], time: bool = False,
           zipped: dict | None = None) -> dict:
    """:func:`check_dir` of the directory ``path``; ``zipped``: the SHA-256s of files read
    from the zip it was unpacked from (see :func:`unzipped`), None for a directory."""
    path = export_path(path)
    plan = read_plan(path)
    report = read_report(path)
    originals: dict = {}
    unpruned: list | None = [] if time else None
    model, lm = rebuild(path, originals=originals, spec=spec, near=near, unpruned=unpruned)
    src_spec = spec or plan["source"]["spec"]
    res: dict = {"dir": str(path), "spec": src_spec, "reload": True,
                 "problems": [], "notes": []}
    problems, notes = res["problems"], res["notes"]
    if src_spec is None:
        res["model"] = f"{type(model).__name__} (built in-process)"
    if lm.inputs is None:  # an in-process model's inputs that were not tensors
        res["forward"] = None  # (not run)
        res["ok"] = False
        problems.append(f"the export recorded no example inputs ({INPUTS_FILE}): the model "
                        "was not run")
        return res
    try:
        out = run(model, lm.inputs)
        res["forward"] = True
        res["output_shapes"] = {p or "output": list(t.shape) for p, t in flatten(out)}
    except Exception as exc:
        res["forward"] = False
        res["error"] = error_line(exc)
        res["ok"] = False
        if out_of_memory(exc):  # (says nothing of the checkpoint)
            res["memory"] = True
            problems.append(f"there was not enough memory to run it ({res['error']}); free "
                            "memory and check again")
        else:
            problems.append(f"its forward fails ({res['error']})")
        return res
    if report is None:
        problems.append("report.json is missing: nothing to compare the model with")
    else:
        renamed = renamed_outputs(out)  # (an older report names NamedTuple items by index)
        res["shapes_match_report"] = _renamed(report.get("output_shapes"), renamed) == \
            res["output_shapes"]
        if not res["shapes_match_report"]:
            problems.append(f"output shapes differ from report.json's "
                            f"{report.get('output_shapes')}")
        res["params"] = sum(p.numel() for p in model.parameters())
        res["params_match_report"] = report["params"].get("after") == res["params"]
        if not res["params_match_report"]:
            problems.append(f"{res['params']} parameters, report.json says "
                            f"{report['params'].get('after')}")
        if report.get("weights_sha256"):  # exports before it was recorded have none
            res["weights_match_report"] = \
                report["weights_sha256"] == _sha256(path / "model.safetensors")
            if not res["weights_match_report"]:
                problems.append("model.safetensors is not the file report.json describes "
                                "(its SHA-256 differs)")
        else:
            notes.append("report.json records no SHA-256 of the weights: not compared")
        _check_pt2(report, path, zipped, res)
        digest = report.get("output_digest")
        if isinstance(digest, dict) and isinstance(digest.get("outputs"), dict):
            if digest.get("inputs_sha256") != _inputs_sha256(lm.inputs):
                notes.append("the example inputs rebuilt here are not the export's: outputs "
                             "not compared")
            else:
                res["outputs_match_report"] = _same_outputs(
                    _renamed(digest["outputs"], renamed),
                    output_digest(out, lm.inputs)["outputs"])
                if not res["outputs_match_report"]:
                    problems.append("its outputs differ from those recorded at export")
        else:
            notes.append("report.json records no outputs: they were not compared")
        res["verification"] = report.get("verification")
    tuned = [i + 1 for i, r in enumerate(plan.get("rounds") or [])
             if isinstance(r, dict) and r.get("tuned") is True]
    if tuned:
        notes.append(f"tuned after pruning (round {', '.join(map(str, tuned))}): the tensors "
                     "are not compared with the original's at the kept indices")
    elif "unavailable" in originals:
        notes.append(f"{originals['unavailable']}: kept indices not checked")
    else:
        # (by name, not by state_dict: a non-persistent buffer read once is cut too)
        now = tensor_lookup(model)
        renorm = _renormalized(plan)
        bad = [k for k, dims in plan.get("tensors", {}).items() if k in originals and
               k not in renorm and not torch.equal(_kept_of(originals[k], dims), now[k][2])]
        bad += [g for g, v in renorm.items() if not _same_weight(g, v, originals, now, plan)]
        res["tensors_match_original"] = not bad
        if bad:
            since = (" (or the original's weights file changed since the export)"
                     if plan["source"].get("weights") else
                     " (was the model it pruned a pruned model already? export_dir then "
                     "needs history=, the earlier rounds)"
                     if len(plan.get("rounds") or []) == 1 else "")
            problems.append(f"'{bad[0]}' is not the original's tensor at plan.json's kept "
                            f"indices{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}"
                            f"{since}")
    if unpruned:
        from .timing import compare_speed

        res["timing"] = compare_speed(unpruned.pop(), model, lm.inputs)
    elif time:
        notes.append("not timed: the export holds no original to time against (its model "
                     "was built in-process)")
    masked = (res.get("verification") or {}).get("masked_equivalence") or {}
    part = masked.get("exact_groups") or {}  # the exact groups pruned alone (see verify)
    res["ok"] = not problems and masked.get("ok", True) and part.get("ok", True)
    return res


def _check_pt2(report: dict, path: Path, zipped: dict | None, res: dict) -> None:
    """Compare ``model.pt2`` with the SHA-256 report.json records of it (``pt2.sha256``),
    into ``res`` (``pt2_match_report``, a problem or a note). It is never loaded:
    ``torch.export.load`` unpickles what the program holds (``torch.load(...,
    weights_only=False)`` of pickled weights and constants, ``pickle.loads`` of opaque
    objects), and a hash needs no trust in the file."""
    rec = report.get("pt2") or {}
    want = rec.get("sha256")
    written = rec.get("written") is True or bool(want)
    if zipped is not None:
        have = zipped.get("model.pt2")
    else:
        have = _sha256(path / "model.pt2") if (path / "model.pt2").is_file() else None
    if have is None:
        if written:
            res["notes"].append("report.json says model.pt2 was written, but it is not here: "
                                "not compared")
    elif not written:
        res["pt2_match_report"] = False
        res["problems"].append("model.pt2 is not this export's: report.json says none was "
                               "written")
    elif not want:  # (exports before it was recorded)
        res["notes"].append("report.json records no SHA-256 of model.pt2: not compared")
    else:
        res["pt2_match_report"] = have == want
        if have != want:
            res["problems"].append("model.pt2 is not the file report.json describes (its "
                                   "SHA-256 differs)")


def _renormalized(plan: dict) -> dict[str, str]:
    """plan.json's rescaled weight-norm magnitudes, ``g`` key -> ``v`` key (a damaged entry
    is not one)."""
    got = plan.get("renormalized")
    return {g: v for g, v in got.items() if isinstance(g, str) and isinstance(v, str)} \
        if isinstance(got, dict) else {}


def _same_weight(g: str, v: str, originals: dict, now: dict, plan: dict) -> bool:
    """Is the weight ``g * v / ||v||`` of a rescaled layer the original's at plan.json's
    kept indices of ``v``, to ``g``'s precision (``g`` was rescaled, then rounded)? For a
    spectral norm (``g`` its ``u``, ``v`` its ``W``): is ``W / sigma`` (spectralnorm.py)?"""
    sv = v_of(g)
    if sv is not None:
        keys = (v, g, sv)  # W, u, v
        if not all(k in originals and k in now for k in keys):
            return False
        dim = row_dim(now[g][0])
        if dim is None:
            return False
        want = _kept_of(sn_weight_of(*(originals[k] for k in keys), dim),
                        plan.get("tensors", {}).get(v, {}))
        have = sn_weight_of(*(now[k][2] for k in keys), dim)
    elif g not in originals or v not in originals or g not in now or v not in now:
        return False
    else:
        want = _kept_of(weight_of(originals[g], originals[v]),
                        plan.get("tensors", {}).get(v, {}))
        have = weight_of(now[g][2], now[v][2])
    if want.shape != have.shape:
        return False
    eps = torch.finfo(now[g][2].dtype).eps if now[g][2].is_floating_point() else 0.0
    return torch.allclose(have, want, rtol=8 * eps, atol=8 * eps * float(want.abs().max()))


def _kept_of(t: torch.Tensor, dims: dict) -> torch.Tensor:
    for d, kept in sorted(dims.items(), key=lambda kv: int(kv[0])):
        t = t.index_select(int(d), torch.as_tensor(kept, dtype=torch.long))
    return t


def _inputs_sha256(inputs) -> str:
    """SHA-256 of the example inputs' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    # (by index, as before NamedTuple items were named: older reports' hashes stay right)
    for name, t in flatten(inputs, named=False):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


#: values of each output report.json keeps for ``check`` to compare with
DIGEST_SAMPLES = 16


def output_digest(out, inputs) -> dict:
    """What ``check`` compares a reloaded model's forward with: the inputs' SHA-256 and, per
    output, the sum of its finite values and of their absolute values, up to 16 evenly
    spaced values, and, when it holds any, how many of its values are ``nan``, ``inf`` and
    ``-inf`` (``nonfinite``; masked logits). A non-finite sample is spelled ``"NaN"``,
    ``"Infinity"`` or ``"-Infinity"`` (see :func:`json_safe`), so the digest is strict JSON."""
    outs = {}
    for name, t in flatten(out):
        v = t.detach().cpu().double().reshape(-1)
        idx = torch.linspace(0, max(len(v) - 1, 0), min(DIGEST_SAMPLES, len(v))).long()
        finite = torch.isfinite(v)
        fv = v[finite]
        entry = {"sum": float(fv.sum()), "abs_sum": float(fv.abs().sum()),
                 "sample": json_safe(v[idx].tolist())}
        if not bool(finite.all()):
            entry["nonfinite"] = {"nan": int(v.isnan().sum()), "inf": int(v.isposinf().sum()),
                                  "-inf": int(v.isneginf().sum())}
        outs[name or "output"] = json_safe(entry)
    return {"inputs_sha256": _inputs_sha256(inputs), "outputs": outs}


def _legacy_sums(entry: dict) -> list[float]:
    """``sum`` and ``abs_sum`` as digests before ``nonfinite`` computed them, over every
    value: what an older report.json recorded."""
    nf = entry.get("nonfinite") or {}
    nan, pos, neg = nf.get("nan", 0), nf.get("inf", 0), nf.get("-inf", 0)
    s, a = json_float(entry["sum"]), json_float(entry["abs_sum"])
    if nan or (pos and neg):
        s = float("nan")
    elif pos or neg:
        s = float("inf") if pos else float("-inf")
    if nan:
        a = float("nan")
    elif pos or neg:
        a = float("inf")
    return [s, a]


def _renamed(recorded, renamed: dict[str, str]):
    """A report's dict by output name with each name an older DepView gave a NamedTuple's
    item (``[1]``) changed to today's (``features``): see :func:`renamed_outputs`."""
    if not renamed or not isinstance(recorded, dict):
        return recorded
    return {renamed.get(k, k): v for k, v in recorded.items()}


def _same_outputs(want: dict, got: dict) -> bool:
    """The digests agree up to float noise (another thread count sums in another order);
    non-finite values must be the same ones in the same places."""
    if set(want) != set(got):
        return False
    for k, w in want.items():
        g = got[k]
        try:
            ws = np.asarray([json_float(x) for x in w["sample"]], float)
            sums = np.asarray([json_float(w["sum"]), json_float(w["abs_sum"])], float)
            if "nonfinite" in w or np.isfinite(sums).all():
                if (w.get("nonfinite") or {}) != (g.get("nonfinite") or {}):
                    return False
                gsums = [json_float(g["sum"]), json_float(g["abs_sum"])]
            else:  # an older digest: its sums ran over inf and nan too
                gsums = _legacy_sums(g)
        except (KeyError, TypeError, ValueError):
            return False
        gs = np.asarray([json_float(x) for x in g["sample"]], float)
        if ws.shape != gs.shape:
            return False
        if not np.allclose(sums, gsums, rtol=1e-4, atol=1e-6 * _finite_scale([gsums[1]]),
                           equal_nan=True):
            return False
        if not np.allclose(ws, gs, rtol=1e-4, atol=1e-5 * _finite_scale(gs), equal_nan=True):
            return False
    return True


def _finite_scale(values) -> float:
    """The largest finite magnitude among ``values`` (outputs may hold -inf or NaN)."""
    v = np.abs(np.asarray(values, float))
    v = v[np.isfinite(v)]
    return max(float(v.max()) if len(v) else 0.0, 1e-30)


#: files a zip stores as they are: float weights barely deflate (by 11% in 10 s for a pruned
#: ResNet-50), and a .pt2 is a zip already. JSON deflates well (its plan.json: 2.3 MB -> 95 kB).
STORED_SUFFIXES = (".safetensors", ".pt2")


def _zip_into(path: str | Path, target) -> None:
    with zipfile.ZipFile(target, "w") as zf:
        for f in sorted(Path(path).iterdir()):
            if f.is_file():
                stored = f.suffix in STORED_SUFFIXES
                zf.write(f, f.name, zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)


def write_zip(path: str | Path, dest: str | Path) -> Path:
    """Zip the export directory ``path`` into the file ``dest`` (weights stored, JSON
    deflated); ``read_export_zip`` and an unzip followed by ``load_pruned`` read it."""
    _zip_into(path, dest)
    return Path(dest)


def zip_dir(path: str | Path) -> bytes:
    """The export directory as zip bytes, as :func:`write_zip` writes them."""
    buf = io.BytesIO()
    _zip_into(path, buf)
    return buf.getvalue()


def export_folder(spec: str) -> Path | None:
    """``spec`` as an export directory (``prune --out`` wrote it: it holds plan.json), or
    None for any other SPEC (``demo:NAME``, ``module:attr``, ``file.py:attr``)."""
    folder = Path(spec)
    if ":" in spec or not spec.strip() or not folder.is_dir() or \
            not (folder / "plan.json").is_file():
        return None
    return folder


def open_export(folder: str | Path, device: str = "cpu", *, inputs=None, input_file=None,
                kwargs=None, weights=None, dtype: str | None = None
                ) -> tuple[nn.Module, LoadedModel, dict]:
    """An export directory given as SPEC (to the CLI or the app): its pruned model, the
    original's :class:`LoadedModel` (the example inputs: the widths in and out are the
    original's) and plan.json (its ``rounds`` so far). The model options the caller was
    also given (``inputs`` ... ``dtype``, as :func:`load_model` takes them) are refused: the
    export brings its own; except ``weights``, a state_dict of the pruned model tuned since
    (fine-tuning between rounds): it is loaded into the pruned model, and when any tensor
    differs from the export's, the last round is marked ``"tuned": true`` (with
    ``tuned_weights``, the file's absolute path) in the plan returned, so that the next
    export records it and ``check`` does not compare its tensors with the original's."""
    given = [o for o, v in (("--input", inputs), ("--input-file", input_file),
                            ("--kwargs", kwargs),
                            ("--dtype", (dtype or "float32") != "float32"),
                            ("--device", device != "cpu")) if v]
    if given:  # (its weights load on cpu)
        raise DepViewError(f"{folder} is an export directory: it brings its own model and "
                           f"inputs ({', '.join(given)} cannot apply)")
    model, lm = rebuild(folder)
    if lm.inputs is None:
        raise DepViewError(f"{folder} recorded no example inputs ({INPUTS_FILE}): its model "
                           "cannot be traced")
    plan = read_plan(folder)
    if weights is not None:
        from safetensors import safe_open

        from .spec import load_weights

        load_weights(model, weights)
        now = model.state_dict()
        rounds = list(plan.get("rounds") or [])
        # compared with the export's file a tensor at a time (no copy of the whole model)
        with safe_open(str(export_path(folder) / "model.safetensors"), "pt") as f:
            tuned = any(k in now and not torch.equal(f.get_tensor(k).to(now[k].dtype), now[k])
                        for k in f.keys())
        if rounds and tuned:
            rounds[-1] = {**rounds[-1], "tuned": True,
                          "tuned_weights": str(Path(weights).resolve())}
            plan = {**plan, "rounds": rounds}
    return model, lm, plan


def read_export_zip(data: bytes, max_bytes: int = 2 << 30
                    ) -> tuple[nn.Module, dict, LoadedModel]:
    """Load an uploaded export zip: only plan.json, report.json, model.safetensors and
    inputs.safetensors are read (no pickle, no code from the zip). Returns (model,
    plan.json, the original's LoadedModel with its example inputs)."""
    with _export_files(io.BytesIO(data), "the zip", "the upload is not a zip file",
                       max_bytes) as tmp:
        plan = read_plan(tmp)
        model, lm = rebuild(tmp, search=False)
        return model, plan, lm
