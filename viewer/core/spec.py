"""Model specs: turn ``demo:resnet``, ``pkg.module:attr``, ``path/file.py:attr``, a Hugging Face
model directory or ``hf:ORG/NAME`` (local cache) into a model and example inputs,
reproducibly (the same spec, kwargs, inputs and seed give the same model).

    >>> lm = load_model("demo:cnn")
    >>> type(lm.model).__name__, [tuple(t.shape) for t in lm.inputs]
    ('SmallCNN', [(1, 3, 32, 32)])
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import inspect
import json
import math
import os
import re
import sys
import sysconfig
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from . import memory
from .errors import DepViewError
from .forward import run
from .materialize import drop_train_caches
from .text import error_line, first_line
from .trace import arg_names, plain_module
from .trees import flatten, floats_as, map_tensors

DTYPES = {
    "float32": torch.float32, "float": torch.float32, "float16": torch.float16,
    "half": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "int": torch.int32,
    "bool": torch.bool,
}
#: the spellings of a shape ``--input`` takes: ``1x3x224x224``, and as Python prints one,
#: ``1,3,224,224``, ``(1, 3, 224, 224)`` (``(4,)`` for one dim) or ``[1, 3, 224, 224]``
_DIMS = r"[0-9]+(?:[ \t]*,[ \t]*[0-9]+)*"
_SHAPE = re.compile(rf"[0-9]+(?:x[0-9]+)*|{_DIMS}|\([ \t]*{_DIMS}[ \t]*,?[ \t]*\)"
                    rf"|\[[ \t]*{_DIMS}[ \t]*,?[ \t]*\]")
_EXPECTED_SHAPE = ("expected a shape like 1x3x224x224, 1,3,224,224 or (1, 3, 224, 224), "
                   "then :DTYPE if not float32 (1x16:int64)")


def input_name(text: str) -> tuple[str | None, str]:
    """``"decoder_input_ids=1x8:int64"`` -> ("decoder_input_ids", "1x8:int64"): a keyword
    input; ``"1x8:int64"`` -> (None, "1x8:int64"), a positional one."""
    name, eq, rest = text.strip().partition("=")
    if not eq:
        return None, text
    if not all(part.isidentifier() for part in name.strip().split(".")):
        raise DepViewError(f"bad --input {text!r}: {name.strip()!r} is not an argument name "
                           "(use NAME=SHAPE[:DTYPE], e.g. decoder_input_ids=1x8:int64, or "
                           "NAME.KEY=SHAPE for a dict argument)")
    return name.strip(), rest


def nested_inputs(names: list[str], tensors) -> dict:
    """Keyword inputs by name, a dotted name filling a dict argument: ``batch.image`` and
    ``batch.meta`` give ``{"batch": {"image": ..., "meta": ...}}`` (``forward(self,
    batch)`` reads ``batch["image"]``)."""
    out: dict = {}
    for name, t in zip(names, tensors, strict=True):
        *outer, last = name.split(".")
        at = out
        for depth, key in enumerate(outer):
            at = at.setdefault(key, {})
            if not isinstance(at, dict):
                raise DepViewError(f"--input names {'.'.join(outer[:depth + 1])!r} and "
                                   f"{name!r}: one input cannot be a tensor and hold another")
        if last in at:
            raise DepViewError(f"--input names {name!r} and what it holds: one input cannot "
                               "be a tensor and hold another")
        at[last] = t
    return out


def parse_input(text: str) -> tuple[tuple[int, ...], str]:
    """``"1x3x224x224"`` -> ((1, 3, 224, 224), "float32"); ``"1x16:int64"`` -> int64. The
    shape may be spelled as Python prints one (``1,3,224,224``, ``(1, 3, 224, 224)``,
    ``(4,)``, ``[1, 3]``); anything else (``1x3:``, ``(1,3``, ``1x3 :int64``) is refused
    with what was expected. A keyword input's name (``input_ids=1x16:int64``) is left to
    :func:`input_name`.

    >>> parse_input("ids=(2, 8):int64")
    ((2, 8), 'int64')
    """
    shape_s, colon, dtype = input_name(text)[1].strip().partition(":")
    if not _SHAPE.fullmatch(shape_s):
        raise DepViewError(f"bad --input {text!r}: {_EXPECTED_SHAPE}")
    if colon and not dtype:
        raise DepViewError(f"bad --input {text!r}: nothing after ':' (give a dtype, as in "
                           "1x16:int64, or leave out the ':' for float32)")
    dtype = dtype or "float32"
    dims = [int(d) for d in re.findall(r"[0-9]+", shape_s)]
    if 0 in dims:
        raise DepViewError(f"bad --input {text!r}: every size must be at least 1 (an empty "
                           "tensor cannot show how channels flow)")
    if dtype not in DTYPES:
        raise DepViewError(f"bad --input {text!r}: unknown dtype {dtype!r}; "
                           f"use one of {', '.join(sorted(DTYPES))}")
    return tuple(dims), dtype


def make_tensor(shape, dtype: str, device, gen: torch.Generator) -> torch.Tensor:
    """A deterministic example tensor: normal floats, ints in [0, 2), bools all True."""
    dt = DTYPES[dtype]
    size = "x".join(map(str, shape))
    numel = math.prod(shape)
    if numel >= 2 ** 63:  # (torch counts elements in int64: an overflow TypeError else)
        raise DepViewError(f"cannot make an example input of shape {size}: it has more "
                           "elements than a tensor can hold")
    if str(device) == "meta":
        return torch.empty(shape, dtype=dt, device="meta")
    # (floats are drawn as float32, then cast) a forward needs several times its inputs:
    # one that takes over a quarter of the free memory is refused before it is made, where
    # making it took a minute and 21 GB before the forward failed
    need = numel * (4 + dt.itemsize if dt.is_floating_point and dt != torch.float32 else
                    dt.itemsize)
    fits, free = memory.room_for(4 * need)
    if not fits:
        raise DepViewError(f"cannot make an example input of shape {size} ({dtype}): it "
                           f"takes {memory.gigabytes(need)}, and a forward on it several "
                           f"times that; this machine has {memory.gigabytes(free)} free: "
                           "give a smaller --input shape")
    try:
        if dt.is_floating_point:
            return torch.randn(shape, generator=gen).to(dt).to(device)
        if dt == torch.bool:
            return torch.ones(shape, dtype=dt, device=device)
        return torch.randint(0, 2, shape, generator=gen, dtype=dt).to(device)
    except (RuntimeError, MemoryError) as exc:  # a shape too large for this machine
        raise DepViewError(f"cannot make an example input of shape {size} ({dtype}): "
                           f"{error_line(exc)}") from None


@dataclass
class LoadedModel:
    """A model with its example inputs and everything needed to rebuild it (``source``)."""

    model: nn.Module
    inputs: tuple
    source: dict
    output_layers: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def label(self) -> str:
        return self.source["spec"]


#: endings of files that hold weights (or a pickled or scripted model), never code
_WEIGHT_FILES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt", ".pt2", ".onnx")


def _resolve_attr(spec: str):
    target, sep, attr = spec.rpartition(":")
    if spec.lower().endswith(_WEIGHT_FILES):
        raise DepViewError(
            f"{spec!r} is a saved file, not model code: DepView builds the model from its code "
            "(demo:NAME, package.module:attr or path/file.py:attr) and loads its weights with "
            "--weights (.safetensors, or a .pt/.pth state_dict)")
    if not sep or not target or not attr:
        folder = Path(spec)
        if (folder / "model_index.json").is_file():
            parts = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file())
            raise DepViewError(f"{spec} is a diffusers pipeline: name one of its models' "
                               f"directories ({', '.join(parts) or 'none holds a config.json'})")
        if (folder / "adapter_config.json").is_file():
            raise DepViewError(f"{spec} holds a PEFT adapter, not a model: merge it into its "
                               "base model (merge_and_unload()) and save_pretrained that")
        if folder.is_dir():
            raise DepViewError(
                f"{spec} is a directory but neither a Hugging Face model (no config.json) nor "
                "a DepView export (no plan.json)")
        if folder.is_file() and spec.lower().endswith(".zip"):
            raise DepViewError(f"{spec} is a zip: unzip it and give its directory (an export "
                               "directory is a SPEC); check and load_pruned read the zip as "
                               "it is, and the app opens it with Open export (.zip)")
        if folder.is_file() and spec.endswith(".py"):
            raise DepViewError(f"{spec} is model code: name the model in it, e.g. "
                               f"{spec}:MyModel (a class, or a function that returns one)")
        if not folder.exists() and ("/" in spec or os.sep in spec):  # (a mistyped path)
            raise DepViewError(f"no such directory: {spec}")
        raise DepViewError(
            f"bad model spec {spec!r}: use demo:NAME, package.module:attr, path/file.py:attr, "
            "a Hugging Face model directory or an export directory")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise DepViewError(f"model file not found: {target}")
        name = f"_depview_user_{abs(hash(str(path.resolve())))}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        # its own directory first, for the duration of the import: a model file that imports
        # a helper module beside it (``from blocks import Block``) works from any directory
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)
        try:
            mod_spec.loader.exec_module(module)
        except ImportError as exc:
            if "relative import" not in str(exc) or package_of(path) is None:
                raise DepViewError(f"importing {target} failed: {type(exc).__name__}: "
                                   f"{exc}") from exc
            sys.modules.pop(name, None)  # (half run: its package's import replaces it)
            module = _import_in_package(path, target)  # (``from .blocks import Block``)
        except Exception as exc:
            raise DepViewError(f"importing {target} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if folder in sys.path:
                sys.path.remove(folder)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise DepViewError(f"cannot import module {target!r}: {type(exc).__name__}: "
                               f"{first_line(exc)}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DepViewError(f"{target} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def package_of(path: Path) -> tuple[Path, list[str]] | None:
    """``(root, dotted parts)`` of a Python file inside a package (its folder, and each one
    above up to ``root``, holds an ``__init__.py``): ``models/vit/net.py`` ->
    ``(<dir above models>, ["models", "vit", "net"])``. None for a file in no package."""
    path = path.resolve()
    parts = [] if path.stem == "__init__" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return (folder, parts) if folder != path.parent else None


def _import_in_package(path: Path, target: str):
    """The module of ``path`` imported as a submodule of its package (see :func:`package_of`),
    so that its relative imports resolve. The package is imported under a name of its own
    (not its real one: an installed package of the same name, or another project's, would
    be taken for it), afresh each time, as a model file is."""
    root, parts = package_of(path)
    top = root / parts[0]
    alias = f"_depview_pkg_{abs(hash(str(top)))}"
    for key in [k for k in sys.modules if k == alias or k.startswith(alias + ".")]:
        del sys.modules[key]
    sys.path.insert(0, str(root))  # (its absolute imports of itself: ``from models import x``)
    try:
        spec = importlib.util.spec_from_file_location(
            alias, top / "__init__.py", submodule_search_locations=[str(top)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[alias] = package
        spec.loader.exec_module(package)
        return importlib.import_module(".".join([alias, *parts[1:]]))
    except Exception as exc:
        raise DepViewError(f"importing {target} (as {'.'.join(parts)}, in the package at "
                           f"{top}) failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if str(root) in sys.path:
            sys.path.remove(str(root))


#: Installed packages whose functions build models (torchvision's ``resnet50``, timm's
#: ``create_model``): a spec recorded in a plan.json may name them (see
#: :func:`recorded_refusal`); DepView's own demos too, wherever they are installed
_MODEL_ZOOS = frozenset({"torchvision", "timm", "torchaudio", "demo_models"})


def _installed_dirs() -> list[Path]:
    """The standard library's and the installed packages' folders."""
    import site

    paths = sysconfig.get_paths()
    found = [paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    with contextlib.suppress(AttributeError):  # (a virtualenv's old site module lacks them)
        found += [*site.getsitepackages(), site.getusersitepackages()]
    return [Path(p).resolve() for p in dict.fromkeys(found) if p]


def _own_code(func) -> bool:
    """Whether ``func`` is defined in the user's own code: a file outside the standard
    library and the installed packages (an editable install of one's own package is)."""
    try:
        where = inspect.getsourcefile(func) or inspect.getfile(func)
    except TypeError:  # (built in: no file)
        return False
    if not where:
        return False
    path = Path(where).resolve()
    return not any(path.is_relative_to(d) for d in _installed_dirs())


def recorded_refusal(spec: str, obj: object = None) -> str | None:
    """Why a spec read from an export's plan.json, which anyone can edit, may not be built
    (None: it may). Loading an export imports the model code its plan.json names, so the spec
    must look like model code: a demo, a model file, or a module outside the standard library
    whose attribute is an ``nn.Module`` class or instance, or a Python function (a factory)
    of the user's own code (not of the standard library or an installed package, whose
    functions may unpickle, evaluate or run what their arguments say: ``os:system``,
    ``torch:load``, ``sympy:sympify``) or of a model zoo (torchvision, timm, torchaudio).
    ``obj`` is what the spec resolved to, once imported."""
    if spec.startswith("demo:"):
        return None
    target = spec.rpartition(":")[0]
    top = target.split(".")[0]
    why = (f"plan.json names {spec!r} as the model's code, which is not model code: refused "
           "(an edited or untrusted export?); pass the model's spec yourself to load it")
    if not target.endswith(".py") and (top in sys.stdlib_module_names or top == "builtins"):
        return why
    if obj is None or isinstance(obj, nn.Module) or \
            (isinstance(obj, type) and issubclass(obj, nn.Module)):
        return None
    func = getattr(obj, "__func__", obj)  # a classmethod factory: its function
    if not inspect.isfunction(func):
        return why
    if (getattr(func, "__module__", "") or "").split(".")[0] in _MODEL_ZOOS or _own_code(func):
        return None
    return (f"plan.json names {spec!r} as the model's code, which is not model code: refused "
            "(a function of an installed package, which may load, evaluate or run what its "
            "arguments say, is not called from a file anyone can edit; an edited or untrusted "
            "export?); pass the model's spec yourself to load it")


def load_model(
    spec: str,
    *,
    inputs: list[str] | None = None,
    kwargs: dict | str | None = None,
    weights: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    recorded: bool = False,
    example: tuple | dict | None = None,
    input_file: str | None = None,
    dtype: str | None = None,
) -> LoadedModel:
    """Build the model a spec names, with example inputs, in eval mode: ``demo:NAME``,
    ``package.module:attr``, ``path/file.py:attr``, a Hugging Face (transformers or
    diffusers) model directory, or ``hf:ORG/NAME[/SUBFOLDER][@REVISION]`` from the local hub
    cache.

    ``inputs`` are shape strings (see :func:`parse_input`); demo models know their own.
    ``weights`` is a ``.safetensors`` or ``.pt``/``.pth`` state_dict, loaded without pickle.
    ``recorded``: the spec was read from an export's plan.json, not given by the user: it
    must look like model code (:func:`recorded_refusal`) before it is imported and called.
    ``example``: the example inputs themselves (an export's recorded ones), instead of
    ``inputs``. ``input_file``: a batch file (:func:`read_batch`) holding them: real data
    (token ids of a real text, an image with its image tokens) instead of shapes.
    ``dtype``: what the model runs in, ``"float32"`` (the default) or, to hold a model twice
    as large, ``"bfloat16"``/``"float16"``; floating example inputs follow it.
    """
    if not isinstance(spec, str):
        raise DepViewError(f"load_model takes a SPEC string (demo:NAME, path/file.py:attr, a "
                           f"model directory), not {type(spec).__name__}: for a model object, "
                           "call build_graph(model, inputs) or Pruner(model, inputs)")
    if not spec.strip():  # (not the current directory, which Path("") names)
        raise DepViewError("the model SPEC is empty: give demo:NAME, package.module:attr, "
                           "path/file.py:attr or a model directory")
    if recorded and (why := recorded_refusal(spec)):
        raise DepViewError(why)
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs) if kwargs.strip() else {}
        except json.JSONDecodeError as exc:
            raise DepViewError(f"--kwargs is not valid JSON: {exc}") from exc
        if not isinstance(kwargs, dict):
            raise DepViewError("--kwargs must be a JSON object, e.g. '{\"width\": 32}'")
    kwargs = dict(kwargs or {})
    if device not in ("cpu", "meta"):
        raise DepViewError(f"unsupported device {device!r}: use cpu or meta")
    if weights and device == "meta":
        raise DepViewError("--weights cannot be loaded on the meta device; use --device cpu")
    input_specs = [parse_input(s) for s in inputs or []]
    names = [input_name(s)[0] for s in inputs or []]
    if any(n is None for n in names) and any(names):
        raise DepViewError("--input: give every input a name (NAME=SHAPE) or none; the "
                           "model is called with positional or with keyword inputs, not both")
    if len(set(names)) < len(names) and any(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise DepViewError(f"--input names {twice!r} twice")

    if (dtype or "float32") not in RUN_DTYPES:
        raise DepViewError(f"unsupported dtype {dtype!r}: use {', '.join(RUN_DTYPES)}")
    run_dtype = RUN_DTYPES[dtype or "float32"]
    if input_file is not None:
        if inputs:
            raise DepViewError("--input and --input-file both give the example inputs: give "
                               "one of them")
        example = read_inputs(input_file, device)
    with torch.random.fork_rng(devices=[]):  # seeded for the factory; the caller's RNG
        lm = _load_model(spec, kwargs, weights, device, seed, input_specs, recorded, example,
                         names if any(names) else None, run_dtype)
    if input_file is not None:  # (described for the reader; an export keeps them whole)
        lm.source["inputs"] = describe_inputs(lm.inputs)
        lm.source["input_file"] = str(Path(input_file).resolve())
    return lm


def read_inputs(path: str | Path, device: str = "cpu") -> tuple | dict:
    """Example inputs from a batch file (see :func:`read_batch`), on ``device``; bfloat16 and
    float16 ones as float32, as models run by default (an image saved in half precision; a
    model run in half precision then casts them to its own dtype)."""
    inputs = batch_from(_read_tensors(path, "input"), str(path))

    return map_tensors(inputs, lambda t: t.to(
        device, torch.float32 if t.dtype in HALF_DTYPES.values() else t.dtype))


def spell_input(shape, dtype: str, name: str | None = None) -> str:
    """An input as ``--input`` spells it: ``"1x16:int64"``, ``"input_ids=1x16:int64"``."""
    return (f"{name}=" if name else "") + "x".join(map(str, shape)) + f":{dtype}"


def describe_inputs(inputs: tuple | dict) -> list[str]:
    """``["input_ids=1x16:int64", ...]``: example inputs as ``--input`` spells shapes."""
    items = flatten(inputs) if isinstance(inputs, dict) else ((None, t) for t in inputs)
    return [spell_input(t.shape, str(t.dtype).removeprefix("torch."), k) for k, t in items]


def _initialize_lazy(model: nn.Module, example) -> None:
    """Lazy layers (``nn.LazyLinear``, ``nn.LazyConv2d``, ...) take their weights' shapes from
    their first forward: run it here, on copies of the example inputs and from a fixed seed
    (:func:`forward.run`), so that a rebuild from the same spec (``load_pruned``, ``check``)
    draws the same weights, and everything after sees a model with real shapes."""
    if not any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()
               for m in model.modules()):
        return
    try:
        run(model, example)
    except Exception as exc:
        raise DepViewError("model forward failed (it is run once to initialise the model's "
                           f"lazy layers): {error_line(exc)}") from exc


def _load_model(spec: str, kwargs: dict, weights: str | None, device: str, seed: int,
                input_specs: list, recorded: bool, given=None, names=None,
                run_dtype: torch.dtype = torch.float32) -> LoadedModel:
    torch.manual_seed(seed)
    demo = None
    output_layers: list[str] = []
    description = ""
    folder = None
    guessed = None
    if spec.startswith("demo:"):
        import demo_models

        try:
            demo = demo_models.get_demo(spec[5:])
        except ValueError as exc:
            raise DepViewError(str(exc)) from None
        model = _build(spec, demo.build, kwargs, device)
        description = demo.description
        if demo.output_layer:
            output_layers = [demo.output_layer]
    elif (folder := hub_snapshot(spec) or hf_folder(spec)) is not None:
        model, stored = _hf_folder_model(folder, kwargs, weights, device, run_dtype)
        where = spec[3:].partition("@")[0] if spec.startswith("hf:") else \
            folder.resolve().name
        description = f"{type(model).__name__} from {where}"
        if not input_specs and given is None:
            given, guessed = _hf_image_text(model, device, seed)
            if given is not None:  # (a vision-language model)
                description += f" (on {guessed})"
            else:
                input_specs, names = _hf_inputs(model, folder, device)
                if guessed:  # (a vision-language model run on token ids alone)
                    description += f" (text only: {guessed})"
    else:
        factory = _resolve_attr(spec)
        if recorded and (why := recorded_refusal(spec, factory)):
            raise DepViewError(why)
        model = _build(spec, factory, kwargs, device)
    model = plain_module(model)  # a torch.compile'd model: the module it wraps
    model.eval()
    description = description or type(model).__name__  # the header line of the app
    if run_dtype != torch.float32:
        description += f" (run in {str(run_dtype).removeprefix('torch.')})"
    if folder is None:  # (a directory's model came with its weights' dtype)
        stored = load_weights(model, weights) if weights else None
        if run_dtype != torch.float32:
            model.to(run_dtype)

    gen = torch.Generator().manual_seed(seed)
    if given is not None:
        example = given
    elif input_specs:
        example = tuple(make_tensor(s, d, device, gen) for s, d in input_specs)
        if names:  # keyword inputs, in the order given
            example = nested_inputs(names, example)
    elif demo is not None:
        example = tuple(demo.make_inputs(device))
        input_specs = [(tuple(s), d) for s, d in demo.input_specs]
    else:
        raise DepViewError(f"{spec} needs example inputs: pass --input SHAPE[:DTYPE], "
                           "e.g. --input 1x3x224x224")
    if run_dtype != torch.float32:  # (a float32 image fed to a bfloat16 conv fails)
        example = floats_as(example, run_dtype)
    _initialize_lazy(model, example)
    # the forwards run here (inputs guessed for a model directory, lazy layers) leave what a
    # layer caches for eval (LeViT's attention biases per device): the trace would read the
    # cache, not the parameter, and miss the link (its biases "never ran on the inputs")
    drop_train_caches(model)
    source = {
        "spec": spec,
        "kwargs": kwargs,
        "inputs": [spell_input(s, d, n) for n, (s, d) in
                   zip(names or [None] * len(input_specs), input_specs, strict=True)],
        "weights": str(weights) if weights else None,
        "seed": seed,
    }
    target = spec.rpartition(":")[0]
    if target.endswith(".py"):  # where the file was, for a reload from another directory
        source["file"] = str(Path(target).resolve())
    elif demo is None and folder is None and (where := _module_dir(target)) is not None:
        source["module_dir"] = where  # (the same, for a module of the user's own)
    if folder is not None:  # (the same, for a model directory)
        source["dir"] = str(folder.resolve())
    if guessed and given is not None:  # (values that matter: an export keeps them whole)
        source["inputs"] = describe_inputs(example)
        source["guessed_inputs"] = guessed
    if stored:
        source["dtype"] = stored
    if run_dtype != torch.float32:
        source["run_dtype"] = str(run_dtype).removeprefix("torch.")
    return LoadedModel(model, example, source, output_layers, description)


def _build(spec: str, factory, kwargs: dict, device: str) -> nn.Module:
    """The model a factory (a class, a function or a module instance) gives."""
    try:
        with torch.device(device):
            if isinstance(factory, nn.Module):
                if kwargs:
                    raise DepViewError(f"{spec} is a module instance; --kwargs cannot apply")
                # a copy: weights loaded, eval mode and a later reshape (load_pruned) must
                # not change the object the module holds for its other users
                model = copy.deepcopy(factory).to(device)
            elif callable(factory):
                model = factory(**kwargs)
            else:
                raise DepViewError(f"{spec} is not a class, factory or nn.Module")
    except DepViewError:
        raise
    except Exception as exc:
        raise DepViewError(f"building {spec} failed: {error_line(exc)}{_kwargs_hint(exc)}"
                           ) from exc
    if not isinstance(model, nn.Module):
        raise DepViewError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    return model


def _kwargs_hint(exc: BaseException) -> str:
    """How to give the arguments a factory says it misses (Python's ``TypeError: f()
    missing 1 required positional argument: 'width'``), else ""."""
    found = re.search(r"missing \d+ required (?:positional|keyword-only) arguments?: (.+)$",
                      str(exc)) if isinstance(exc, TypeError) else None
    if found is None:
        return ""
    names = re.findall(r"'(\w+)'", found.group(1))
    example = ", ".join(f'"{n}": ...' for n in names)
    return f" (give {'it' if len(names) == 1 else 'them'} with --kwargs '{{{example}}}')"


def hf_folder(spec: str) -> Path | None:
    """``spec`` as a Hugging Face model directory (what ``save_pretrained`` writes, or a hub
    snapshot already on disk: config.json, and no plan.json, which would make it a DepView
    export), or None."""
    folder = Path(spec)
    if ":" in spec or not folder.is_dir() or not (folder / "config.json").is_file() or \
            (folder / "plan.json").is_file():
        return None
    return folder


def hub_snapshot(spec: str) -> Path | None:
    """``hf:ORG/NAME[/SUBFOLDER][@REVISION]``: the model's snapshot directory in the local
    Hugging Face cache (``HF_HUB_CACHE``), never downloaded, or the subfolder of it that
    holds one model of a pipeline (``hf:ORG/NAME/unet``); None for any other spec."""
    if not spec.startswith("hf:"):
        return None
    path, _, revision = spec[3:].partition("@")
    repo, sub = "/".join(path.split("/")[:2]), "/".join(path.split("/")[2:])
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DepViewError(f"{spec} names a Hugging Face hub model: install transformers "
                           "to load it") from None
    try:
        folder = Path(snapshot_download(repo, revision=revision or None,
                                        local_files_only=True))
    except Exception as exc:
        if "Repo id" in str(exc) or "repo_id" in str(exc):
            raise DepViewError(f"{spec}: {path!r} is not a repository id (use "
                               "hf:ORG/NAME[/SUBFOLDER][@REVISION])") from None
        fetch = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
        raise DepViewError(f"{spec}: not in the local Hugging Face cache (DepView never "
                           f"downloads: fetch it first with `{fetch}`, or give its "
                           "directory)") from None
    folder = folder / sub if sub else folder
    if not (folder / "config.json").is_file():
        if (folder / "model_index.json").is_file():
            parts = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file())
            raise DepViewError(f"{spec} is a diffusers pipeline: name one of its models, "
                               f"{', '.join(f'hf:{repo}/{p}' for p in parts) or '(none)'}")
        raise DepViewError(f"{spec}: its cached snapshot {folder} holds no config.json")
    return folder


def hf_class_and_config(data: dict, where: str, named: str):
    """The model class a config names, and the config built from ``data`` (None for a
    diffusers config, which its class's ``from_config`` reads as it is): transformers'
    ``architectures``, or diffusers' ``_class_name`` (:func:`_library`). Only a model class
    the library itself exports is used: no code is imported from anywhere else (no remote
    code). Floats JSON has no number for come as ``to_json_string`` writes them
    (``{"__float__": "Infinity"}``) and are read back as ``from_pretrained`` reads them.
    ``where`` names the config in errors; ``named`` says what to do instead."""
    library = _library(data)
    if library == "diffusers":
        name = data["_class_name"]
    else:
        archs = data.get("architectures") if isinstance(data, dict) else None
        name = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) \
            else None
        if name is None:
            raise DepViewError(f"{where} names no architecture: {named}")
    try:
        lib = importlib.import_module(library)
    except ImportError:
        raise DepViewError(f"{where} describes a {library} {name}: install {library} to load "
                           f"it, or {named}") from None
    try:
        cls = getattr(lib, str(name), None)
    except Exception:  # (a model whose extra dependency is missing)
        cls = None
    base = lib.ModelMixin if library == "diffusers" else lib.PreTrainedModel
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise DepViewError(f"{where} names {name!r}, which is not a model class of "
                           f"{library} {lib.__version__}: {named}")
    if library == "diffusers":
        return cls, None
    try:
        decode = getattr(cls.config_class, "_decode_special_floats", None)
        cfg = cls.config_class.from_dict(decode(data) if callable(decode) else data)
    except Exception as exc:
        raise DepViewError(f"{where} is not a {cls.config_class.__name__}: "
                           f"{error_line(exc)}") from None
    return cls, cfg


#: weight files of a Hugging Face model directory that only unpickling (or another
#: framework) reads: never loaded
_PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5",
                    "flax_model.msgpack", "diffusion_pytorch_model.bin")
#: the safetensors weights of a model directory, by the library that wrote it (one file, or
#: the index of its shards)
_WEIGHT_NAMES = {"transformers": "model", "diffusers": "diffusion_pytorch_model"}


def _library(data) -> str:
    """Which library wrote a model directory's config.json: diffusers names its class in
    ``_class_name``, transformers in ``architectures``."""
    return "diffusers" if isinstance(data, dict) and "_class_name" in data and \
        "architectures" not in data else "transformers"


def _weight_files(folder: Path, library: str) -> list[str] | None:
    """The safetensors files holding a model directory's weights (None: there are none)."""
    stem = _WEIGHT_NAMES[library]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            return sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return [index.name]  # (from_pretrained says what is wrong with it)
    return [f"{stem}.safetensors"] if (folder / f"{stem}.safetensors").is_file() else None


def load_error_detail(exc: BaseException, width: int = 200) -> str:
    """One line from ``load_state_dict``'s error, whose first line only says "Error(s) in
    loading state_dict for X:": its first finding, and how many more there are.

    >>> load_error_detail(RuntimeError("Error(s) in loading state_dict for M:\\n\\t"
    ...     'Missing key(s) in state_dict: "a". \\n\\tsize mismatch for b: copying ...'))
    'Missing key(s) in state_dict: "a". (and 1 more problem)'
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) < 2:
        return (lines or [type(exc).__name__])[0][:width]
    first = lines[1] if len(lines[1]) <= width else lines[1][:width - 1] + "…"
    more = len(lines) - 2
    return first + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _hf_folder_model(folder: Path, kwargs: dict, weights: str | None, device: str,
                     run_dtype: torch.dtype = torch.float32) -> tuple[nn.Module, str | None]:
    """The model of a Hugging Face model directory (transformers' or diffusers'): the class
    its config.json names (:func:`hf_class_and_config`) through ``from_pretrained``, from
    its safetensors weights only, as ``run_dtype`` (float32), with no download; on
    ``meta``, built from the config alone. Also the weights' half-precision dtype
    (:func:`stored_dtype`; None on meta), read with their sizes from the safetensors
    headers."""
    from .modelconfig import build_from_config

    given = [o for o, v in (("--kwargs", kwargs), ("--weights", weights)) if v]
    if given:
        raise DepViewError(f"{folder} is a Hugging Face model directory: it brings its own "
                           f"config and weights ({', '.join(given)} cannot apply; edit its "
                           "config.json instead)")
    where = f"{folder / 'config.json'}"
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DepViewError(f"{where} is not valid JSON: {exc}") from None
    library = _library(data)
    if device != "meta" and _weight_files(folder, library) is None:
        pickled = [n for n in _PICKLED_WEIGHTS if (folder / n).is_file()]
        if pickled:
            raise DepViewError(
                f"{folder} holds its weights as {pickled[0]}, which DepView never loads (a "
                "pickle or another framework's file): save them as safetensors (load the "
                "model yourself, then model.save_pretrained(DIR)), or use --device meta")
        raise DepViewError(f"{folder} holds no weights ({_WEIGHT_NAMES[library]}.safetensors);"
                           " use --device meta to see the architecture without them")
    if device != "meta":
        missing = [n for n in _weight_files(folder, library) if not (folder / n).is_file()]
        if missing:  # (an index naming shards not there: from_pretrained's KeyError 'metadata')
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DepViewError(f"{folder}'s weights index names {missing[0]}, which is not in "
                               f"the directory{more}: copy every shard beside it")
    tensors = _folder_tensors(folder, library) if device != "meta" else None
    if tensors:
        _check_fits_in_memory(folder, tensors, run_dtype)
    with _quiet_hf(library):  # (its warnings about the config, its progress bars)
        cls, cfg = hf_class_and_config(data, where, (
            'add "architectures": ["<the transformers model class>"] to it'
            if library == "transformers" else "its _class_name must be a diffusers model"))
        if tensors is not None:  # (weights to compare with: a config alone builds as it says)
            _check_config_fits_weights(where, data, cls, cfg, tensors)
        try:
            if device == "meta" and cfg is None:
                with torch.device("meta"):
                    return cls.from_config(data).to(run_dtype).eval(), None
            if device == "meta":
                model = build_from_config(cls, cfg, "meta")
                if model is None:
                    raise DepViewError(f"{cls.__name__} cannot be built from {where}")
                # (as from_pretrained gives it: the inputs are tried)
                return model.to(run_dtype).eval(), None
            if cfg is None:
                model, info = cls.from_pretrained(
                    folder, local_files_only=True, use_safetensors=True,
                    torch_dtype=run_dtype, output_loading_info=True)
            else:
                model, info = cls.from_pretrained(
                    folder, config=cfg, local_files_only=True, use_safetensors=True,
                    dtype=run_dtype, ignore_mismatched_sizes=True,
                    output_loading_info=True)
        except DepViewError:
            raise
        except Exception as exc:  # (diffusers raises load_state_dict's error on a mismatch)
            text = str(exc).strip()
            detail = load_error_detail(exc) if text.startswith("Error(s) in loading") else \
                first_line(text)
            raise DepViewError(f"loading {folder} failed: {type(exc).__name__}: "
                               f"{detail}") from exc
    # what from_pretrained would fill with random values: refused, as --weights is strict
    wrong = sorted(info.get("mismatched_keys") or [])
    if wrong:
        key, *shapes = wrong[0]
        sizes = " in the file, ".join("x".join(map(str, s_)) for s_ in shapes)
        raise DepViewError(f"the weights in {folder} do not fit its config.json: {key} is "
                           f"{sizes} by the config ({len(wrong)} tensors differ)")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        listed = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DepViewError(f"the weights in {folder} lack {len(missing)} of {cls.__name__}'s "
                           f"tensors ({listed}): they would be random")
    return model, stored_dtype(d for d, _, _ in tensors or [])


@contextlib.contextmanager
def _quiet_hf(*libraries: str):
    """``libraries``' logs (transformers', diffusers') at errors only and their progress
    bars off, then as they were; by default those already imported (importing diffusers
    only to quiet it would take seconds)."""
    with contextlib.ExitStack() as stack:
        for lib in libraries or [n for n in ("transformers", "diffusers") if n in sys.modules]:
            try:
                log = importlib.import_module(f"{lib}.utils.logging")
            except ImportError:
                continue
            level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
            log.set_verbosity_error()
            log.disable_progress_bar()
            stack.callback(log.enable_progress_bar if bars else log.disable_progress_bar)
            stack.callback(log.set_verbosity, level)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield


def _image_input(cfg, any_size: bool = False) -> tuple[str, tuple[int, ...], str] | None:
    """``pixel_values`` of one image of the size a config (or its ``vision_config``) says;
    ``any_size``: 224x224 when it says none (a convnet's takes any)."""
    for c in (cfg, getattr(cfg, "vision_config", None)):
        size = _height_width(c, ("image_size",))
        if size is not None:
            return "pixel_values", (1, _channels(c), *size), "float32"
    if any_size and cfg is not None:
        return "pixel_values", (1, _channels(cfg), 224, 224), "float32"
    return None


def _video_input(cfg, name: str) -> tuple[str, tuple[int, ...], str] | None:
    """``name`` as one clip of the frames and size a video model's config says, (1, frames,
    channels, height, width); None when it names no frame count."""
    frames = next((v for k in ("num_frames", "frames_per_clip")
                   if isinstance(v := getattr(cfg, k, None), int) and v > 0), None)
    size = _height_width(cfg, ("image_size", "crop_size"))
    if frames is None or size is None:
        return None
    return name, (1, frames, _channels(cfg), *size), "float32"


def _height_width(cfg, keys: tuple[str, ...]) -> tuple[int, int] | None:
    """The first of ``keys`` a config sets to a size (an int, or [height, width])."""
    for k in keys:
        size = getattr(cfg, k, None)
        size = (size, size) if isinstance(size, int) else size
        if isinstance(size, (list, tuple)) and len(size) == 2 and \
                all(isinstance(v, int) and v > 0 for v in size):
            return tuple(size)
    return None


def _channels(cfg) -> int:
    """A config's image channels (``num_channels``, or timm-style ``in_chans``), else 3."""
    return next((v for k in ("num_channels", "in_chans")
                 if isinstance(v := getattr(cfg, k, None), int)), 3)


def _hf_input_candidates(model: nn.Module) -> list[list[tuple[str, tuple[int, ...], str]]]:
    """The example inputs to try, in order, for a Hugging Face model given none, each a list
    of (name, shape, dtype): its main input (16 token ids; one image of the config's size;
    a Whisper-style spectrogram of the length its encoder takes, an AST one of its
    ``max_length``, wav2vec2-BERT's 50 stacked frames, Speech2Text's 64 filterbank frames;
    one second of 16 kHz audio; a video model's clip of the frames its config says, then one
    image; a time series of its ``context_length`` steps of its ``num_input_channels``),
    with 16 ``decoder_input_ids`` for an encoder-decoder; for a model that reads text and
    images (CLIP), the tokens alone, then with an image."""
    cfg = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    params = set(arg_names(model))
    first = None
    if main == "input_ids":
        first = ("input_ids", (1, 16), "int64")
    elif main in ("pixel_values", "pixel_values_videos") and (video := _video_input(cfg, main)):
        # a video model (VideoMAE, TimeSformer, ViViT, V-JEPA 2): one clip; then one image
        image = _image_input(cfg, any_size=True) if main == "pixel_values" else None
        return [[video], *([[image]] if image else [])]
    elif main == "pixel_values":
        first = _image_input(cfg, any_size=True)
    elif main == "past_values" and all(isinstance(getattr(cfg, k, None), int) for k in (
            "context_length", "num_input_channels")):  # PatchTST, PatchTSMixer
        first = ("past_values", (1, cfg.context_length, cfg.num_input_channels), "float32")
    elif main == "input_features" and isinstance(getattr(cfg, "num_mel_bins", None), int) \
            and isinstance(getattr(cfg, "max_source_positions", None), int):
        first = ("input_features", (1, cfg.num_mel_bins, 2 * cfg.max_source_positions),
                 "float32")
    elif main == "input_features" and \
            isinstance(getattr(cfg, "feature_projection_input_dim", None), int):
        # wav2vec2-BERT: stacked filterbank frames, (batch, frames, features)
        first = ("input_features", (1, 50, cfg.feature_projection_input_dim), "float32")
    elif main == "input_features" and \
            isinstance(getattr(cfg, "input_feat_per_channel", None), int):
        # Speech2Text: filterbank frames, (batch, frames, features x channels); 64 frames
        channels = getattr(cfg, "input_channels", 1)
        first = ("input_features", (1, 64, cfg.input_feat_per_channel * (
            channels if isinstance(channels, int) else 1)), "float32")
    elif main == "input_values" and isinstance(getattr(cfg, "num_mel_bins", None), int) \
            and isinstance(getattr(cfg, "max_length", None), int):
        # the Audio Spectrogram Transformer: a spectrogram, (batch, max_length, mel bins)
        first = ("input_values", (1, cfg.max_length, cfg.num_mel_bins), "float32")
    elif main == "input_values":
        first = ("input_values", (1, 16000), "float32")
    if first is None:
        return []
    extra = [("decoder_input_ids", (1, 16), "int64")] if \
        getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" in params else []
    out = [[first, *extra]]
    if main == "input_ids" and "pixel_values" in params and (image := _image_input(cfg)):
        out.append([first, image, *extra])
    return out


def _hf_image_text(model: nn.Module, device: str, seed: int) -> tuple[dict | None, str | None]:
    """For a vision-language model given no inputs: token ids holding an image's tokens and
    the image (:mod:`viewer.core.vlminputs`), and what they are ("an image and its 16 image
    tokens"); or None and why it ran on no image (None, None: not such a model, or on
    ``meta``, where nothing can count its image features)."""
    from .vlminputs import NoImageInputsError, image_text_inputs, image_token, wants_image

    if device == "meta" or not wants_image(model):
        return None, None
    own = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    def run_once(m, x):
        with torch.no_grad(), torch.random.fork_rng(devices=[]), _quiet_hf():
            m(**floats_as(x, own))

    try:
        example = image_text_inputs(model, torch.Generator().manual_seed(seed), run_once)
    except NoImageInputsError as exc:
        return None, f"it ran on no image DepView made ({exc}); give one with --input-file"
    n = int((example["input_ids"] == image_token(model.config)).sum())
    return example, f"an image and its {n} image tokens, made up"


def _hf_inputs(model: nn.Module, folder: Path, device: str
               ) -> tuple[list[tuple[tuple[int, ...], str]], list[str] | None]:
    """Example inputs (shapes and dtypes, and their names; None: positional) for a Hugging
    Face model directory given none: the first of :func:`_hf_input_candidates` the model
    runs on (one forward each, on ``device``), named when there are several; otherwise a
    one-line error that says what was tried."""
    tried = []
    own = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    for cand in _hf_input_candidates(model):
        gen = torch.Generator().manual_seed(0)
        example = floats_as({n: make_tensor(s, d, device, gen) for n, s, d in cand}, own)
        failure = None
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]), _quiet_hf():
                model(**example) if len(cand) > 1 else model(*example.values())
        except Exception as exc:
            failure = error_line(exc)
        if failure is None:
            return [(s, d) for _, s, d in cand], [n for n, _, _ in cand] if len(cand) > 1 \
                else None
        tried.append((cand, failure))
    name = getattr(model, "main_input_name", None)
    if not tried:
        raise DepViewError(f"{folder} needs example inputs: its {type(model).__name__} reads "
                           f"{name or 'inputs DepView cannot guess'}; pass them with --input "
                           "[NAME=]SHAPE[:DTYPE]")
    said = "; ".join(" ".join(f"{n}={'x'.join(map(str, s))}:{d}" for n, s, d in cand)
                     for cand, _ in tried)
    raise DepViewError(f"{folder}: its {type(model).__name__} did not run on the inputs "
                       f"DepView tried ({said}): {tried[0][1][:200]}; pass its inputs with "
                       "--input NAME=SHAPE[:DTYPE], or with --input-file FILE where their "
                       "values matter (Siglip2's spatial_shapes)")


def _module_dir(target: str) -> str | None:
    """The folder the top package of module ``target`` was imported from (``models.net`` ->
    the folder holding ``models/``) when it is the user's code, not an installed package:
    ``check`` and ``load_pruned`` look there when they run from another directory."""
    top = sys.modules.get(target.partition(".")[0])
    where = getattr(top, "__file__", None)
    if not where:
        return None
    where = Path(where).resolve()
    folder = where.parent.parent if where.name == "__init__.py" else where.parent
    installed = {"site-packages", "dist-packages"} & set(folder.parts)
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    if installed or folder == stdlib or stdlib in folder.parents:
        return None
    return str(folder)


def _module_file(target: str, folder: Path) -> Path | None:
    """The file of module ``target`` (``models.net``) under ``folder``, if it is there."""
    parts = target.split(".")
    for f in (folder.joinpath(*parts).with_suffix(".py"), folder.joinpath(*parts, "__init__.py")):
        if f.is_file():
            return f
    return None


def locate_spec(spec: str, candidates: list[str | Path]) -> str:
    """``spec`` itself when it names a module, or a file that exists from here; otherwise the
    spec rewritten to the first existing file among ``candidates`` (each a file, or a
    directory to look for the spec's file name in). A Hugging Face model directory as spec
    is looked for the same way (a candidate that is that directory, or holds one of its
    name). Raises naming every place looked in."""
    if ":" not in spec:
        if Path(spec).is_dir():
            return spec
        name = Path(spec).name
        looked = [str(Path(spec).resolve())]
        for c in candidates:
            for f in (Path(c), Path(c) / name):
                if f.name != name or not f.parent.is_dir():
                    continue
                if hf_folder(str(f)) is not None:
                    return str(f)
                if str(f.resolve()) not in looked:
                    looked.append(str(f.resolve()))
        raise DepViewError(f"model directory not found: {spec} (looked in "
                           f"{', '.join(looked)})")
    target, _, attr = spec.rpartition(":")
    if not target.endswith(".py"):
        try:  # (finds its top package without importing anything)
            found = importlib.util.find_spec(target.partition(".")[0]) is not None
        except (ImportError, ValueError):
            found = False
        if not found:  # a module of the user's own, run from another directory
            for c in candidates:
                f = _module_file(target, Path(c)) if Path(c).is_dir() else None
                if f is not None:
                    return f"{f}:{attr}"
        return spec
    if Path(target).is_file():
        return spec
    looked = [str(Path(target).resolve())]
    for c in candidates:
        f = Path(c)
        if f.is_dir():
            f = f / Path(target).name
        if f.is_file():
            return f"{f}:{attr}"
        looked.append(str(f))
    raise DepViewError(f"model file not found: {target} (looked in {', '.join(looked)})")


def _read_tensors(path: str | Path, what: str):
    """What a ``.safetensors`` file (a dict) or a weights-only ``.pt``/``.pth`` holds; never
    pickle. ``what`` names the file in errors ("weights", "batch")."""
    path = Path(path)
    if path.is_dir():
        raise DepViewError(f"{what} file {path} is a directory: give the file in it")
    if not path.is_file():
        raise DepViewError(f"{what} file not found: {path}")
    with path.open("rb") as fh:
        head = fh.read(9)
    # recognised by content, not only by name: safetensors starts with an 8-byte header
    # length and then JSON; torch.save writes a zip ("PK"), older versions a pickle (0x80)
    torch_saved = head.startswith(b"PK") or head.startswith(b"\x80")
    if path.suffix == ".safetensors" or not torch_saved and head[8:9] == b"{":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise DepViewError(f"{path} is not a valid safetensors file: {exc}") from exc
    if not torch_saved:
        raise DepViewError(f"{path} is neither a .safetensors file nor a file written by "
                           "torch.save")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ...": not the user's
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "TorchScript" in str(exc):
            raise DepViewError(
                f"{path} is a TorchScript archive (torch.jit.save), not a state_dict: save "
                "the eager model's weights with torch.save(model.state_dict(), path), or "
                "scripted.state_dict() if it only exists scripted") from exc
        raise DepViewError(f"{path} is not a weights-only checkpoint (it would need pickled "
                           f"code or objects, which are never loaded): "
                           f"{_unpickler_finding(exc)}") from exc


_SAVE_STATE = "save model.state_dict(), not the model, or use .safetensors"


def _unpickler_finding(exc: BaseException) -> str:
    """What torch's weights-only unpickler found, from its long message: the line after
    "WeightsUnpickler error:" (``Unsupported global: GLOBAL os.system ...``), else its first."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:  # torch >= 2.6: "Trying to load unsupported GLOBAL posix.system whose ..."
        if "unsupported GLOBAL" in ln:
            return (ln.removeprefix("Trying to load ").split(" whose ", 1)[0] +
                    f" (refused, never run: {_SAVE_STATE})")[:300]
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error:" in ln:
            rest = ln.split("WeightsUnpickler error:", 1)[1].strip()
            found = rest or (lines[i + 1] if i + 1 < len(lines) else "")
            found = found.split(" Please use", 1)[0]  # torch's advice, to allow the class
            if "Unsupported global" in found:
                found += f" ({_SAVE_STATE})"
            elif "Unsupported operand" in found:  # a pickle protocol torch.save never writes
                found += (" (not a torch.save file of tensors: save model.state_dict() with "
                          "torch.save, or use .safetensors)")
            if found:
                return found[:300]
    return (lines or [type(exc).__name__])[0][:200]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a weights-only ``.pt``/``.pth`` (never pickle)."""
    obj = _read_tensors(path, "weights")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DepViewError(f"{path} does not hold a state_dict of tensors")
    return obj


def read_batch(path: str | Path) -> tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
    """A batch of model inputs (for the Taylor importance), never unpickled.

    A ``.safetensors`` file or a dict in a ``.pt`` file whose keys are ``0``, ``1``, ... gives
    positional inputs; keys that are names (``input_ids``, ``attention_mask``) give keyword
    inputs. A ``.pt`` file may also hold one tensor or a list of tensors (positional).
    """
    return batch_from(_read_tensors(path, "batch"), str(path))


def batch_from_safetensors(data: bytes, name: str = "the batch") -> tuple | dict:
    """:func:`read_batch` for the bytes of a ``.safetensors`` file (an upload)."""
    from safetensors.torch import load

    try:
        obj = load(data)
    except Exception as exc:
        first = first_line(exc)[:200]
        raise DepViewError(f"{name} is not a valid safetensors file: {first}") from exc
    return batch_from(obj, name)


def batch_from(obj, name: str) -> tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
    """Model inputs from loaded tensors: see :func:`read_batch`. A tensor with no elements
    (a batch of 0 rows) is refused: scores on it would all be 0."""
    if isinstance(obj, dict) and any(isinstance(v, dict) for v in obj.values()):
        # a dict argument: torch.save({"batch": {"image": x, "meta": y}}) (its names are
        # checked as flat ones are, below)
        obj = dict(flatten(obj))
    tensors = list(obj.items()) if isinstance(obj, dict) else list(enumerate(
        obj if isinstance(obj, (list, tuple)) else [obj]))
    for key, t in tensors:
        if isinstance(t, torch.Tensor) and t.numel() == 0:
            raise DepViewError(f"{name}: input {key} is empty (shape "
                               f"{'x'.join(map(str, t.shape))}); a batch needs at least one "
                               "sample")
    if isinstance(obj, torch.Tensor):
        return (obj,)
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        return tuple(obj)
    if isinstance(obj, dict) and all(isinstance(k, int) and k >= 0 for k in obj):
        obj = {str(k): v for k, v in obj.items()}  # torch.save({0: x, 1: y})
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise DepViewError(f"{name} does not hold a batch: save a tensor, a list of tensors "
                           "or a dict of named tensors")
    if all(k.isdigit() for k in obj):
        order = sorted(obj, key=int)
        if [int(k) for k in order] != list(range(len(order))):
            raise DepViewError(f"{name}: positional inputs must be named 0, 1, ..., got "
                               f"{', '.join(order)}")
        return tuple(obj[k] for k in order)
    if any(k.isdigit() for k in obj):
        raise DepViewError(f"{name} mixes positional (0, 1, ...) and named inputs; use one kind")
    if any("." in k for k in obj):  # ``batch.image``: a key of the dict argument ``batch``
        if not all(part.isidentifier() for k in obj for part in k.split(".")):
            raise DepViewError(f"{name}: input names are argument names, or NAME.KEY for a "
                               f"key of a dict argument; got {', '.join(obj)}"[:300])
        return nested_inputs(list(obj), list(obj.values()))
    return dict(obj)



#: what a model may run in (``--dtype``): float32, or half precision to hold one twice as
#: large (masked equivalence then allows for its rounding: see viewer.core.prune)
RUN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: half-precision dtypes a weights file may store, which an export writes back (see
#: :func:`stored_dtype`)
HALF_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32",
                       "F64": "float64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def stored_dtype(dtypes) -> str | None:
    """The half-precision dtype (``"bfloat16"`` or ``"float16"``) every floating tensor of a
    weights file has, given their dtypes (names or ``torch.dtype``); None when they are
    float32, mixed, or there are none. The model is loaded as float32 all the same; an export
    writes its floating tensors back in this dtype (exactly: pruning only selects values)."""
    names = {str(d).removeprefix("torch.") for d in dtypes}
    floating = {n for n in names if "float" in n}
    return next(iter(floating)) if len(floating) == 1 and floating <= set(HALF_DTYPES) else None


#: the largest header safetensors itself reads (a larger length is a broken file)
_MAX_HEADER = 100_000_000


def _folder_tensors(folder: Path, library: str) -> list[tuple[str, int, str]] | None:
    """(dtype, element count, name) of every tensor in a model directory's safetensors files,
    read from their headers (no tensor is loaded); None when they cannot be read that way."""
    out = []
    try:
        for name in _weight_files(folder, library) or []:
            with (folder / name).open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if size > min(_MAX_HEADER, (folder / name).stat().st_size - 8):
                    return None  # (not a safetensors file: from_pretrained says so)
                header = json.loads(fh.read(size))
            for k, v in header.items():
                if k != "__metadata__":
                    numel = 1
                    for n in v["shape"]:
                        numel *= int(n)
                    out.append((_SAFETENSORS_DTYPES.get(v.get("dtype"), "other"), numel,
                                str(k)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # (from_pretrained reads them: an unusual layout only loses these)
    return out


def _check_fits_in_memory(folder: Path, tensors: list[tuple[str, int, str]],
                          run_dtype: torch.dtype = torch.float32) -> None:
    """Refuse, before loading, a model directory whose weights (``tensors``: see
    :func:`_folder_tensors`) as ``run_dtype`` would not fit in the memory this machine has
    free: the load would be killed half-way, minutes later."""
    size = run_dtype.itemsize
    hint = "use --device meta to see its graph and groups without the weights" + (
        ", or --dtype bfloat16 to hold it in half the memory" if size == 4 else "")
    memory.check_room(sum(n * (size if "float" in d else 8) for d, n, _ in tensors),
                      f"{folder} as {str(run_dtype).removeprefix('torch.')}", hint)


#: config.json fields that count the blocks a model builds, each with weights of its own
_LAYER_FIELDS = frozenset({"num_hidden_layers", "n_layer", "n_layers", "num_layers",
                           "encoder_layers", "decoder_layers", "num_encoder_layers",
                           "num_decoder_layers", "layers_per_block"})
#: a config may ask for up to 4 times the blocks its weights number, plus 64 (ALBERT's 12
#: layers share one block's weights), and describe up to 4 times the parameters they hold,
#: plus 2**20 (a head tied to the embedding, parameters a class leaves out of its file)
_MORE_BLOCKS, _MORE_PARAMS = (4, 64), (4, 1 << 20)


def _layer_fields(data, prefix: str = "") -> list[tuple[str, int]]:
    """``(dotted name, value)`` of every :data:`_LAYER_FIELDS` field of a config's JSON,
    its sub-configs' (``text_config.num_hidden_layers``) too."""
    out = []
    for key, value in (data.items() if isinstance(data, dict) else ()):
        if key in _LAYER_FIELDS and type(value) is int:
            out.append((f"{prefix}{key}", value))
        elif isinstance(value, dict):
            out += _layer_fields(value, f"{prefix}{key}.")
    return out


def numbered_blocks(names) -> int:
    """How many blocks the longest numbered list among tensor names holds (the distinct
    numbers after one prefix: a list's blocks are numbered 0, 1, ...).

    >>> numbered_blocks(["h.0.attn.weight", "h.1.attn.weight", "h.1.mlp.0.weight", "wte"])
    2
    """
    seen: dict[str, set[str]] = {}
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if re.fullmatch(r"[0-9]+", part):
                seen.setdefault(".".join(parts[:i]), set()).add(part.lstrip("0") or "0")
    return max((len(v) for v in seen.values()), default=0)


def _check_config_fits_weights(where: str, data: dict, cls, cfg,
                               tensors: list[tuple[str, int, str]]) -> None:
    """Refuse, before the model is built, a config.json that would build far more than the
    weights beside it hold (``n_layer: 100000`` beside a one-layer model built for
    minutes, then failed for the tensors the weights lack). First, for nothing but the
    headers' names: a layer count (:data:`_LAYER_FIELDS`) far above the blocks the weights
    number (:func:`numbered_blocks`), named; then the parameters of the model built on meta
    (no memory, 40 ms for a 7B LLaMA's shape) against those the weights hold (a
    quantized checkpoint, whose tensors pack several values each, is not counted)."""
    held = sum(n for _, n, _ in tensors)
    blocks = numbered_blocks(name for _, _, name in tensors)
    most = _MORE_BLOCKS[0] * blocks + _MORE_BLOCKS[1]
    over = [(f, v) for f, v in _layer_fields(data) if v > most]
    if over:
        field_, value = over[0]
        raise DepViewError(f"{where} asks for {field_}={value}, but the weights beside it "
                           f"hold {blocks} numbered block{'s' if blocks != 1 else ''} "
                           f"({held:,} parameters): it would build far more than they hold "
                           f"(is {field_} a typo, or the config of another model?)")
    if isinstance(data, dict) and "quantization_config" in data:
        return
    try:
        if cfg is None:  # (diffusers: its class reads the config's JSON)
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = cls.from_config(data)
        else:  # (a copy: a constructor may set things on the config it is given)
            from .modelconfig import build_from_config

            model = build_from_config(cls, copy.deepcopy(cfg), "meta")
    except Exception:  # (from_pretrained says what is wrong with it)
        return
    if model is None:
        return
    built = sum(p.numel() for p in model.parameters())
    if built > _MORE_PARAMS[0] * held + _MORE_PARAMS[1]:
        raise DepViewError(f"{where} describes a {cls.__name__} of {built:,} parameters, "
                           f"but the weights beside it hold {held:,}: it would build far "
                           "more than they hold (is it the config of another model?)")


def _unwrapped(sd: dict[str, torch.Tensor], keys: set[str]) -> dict[str, torch.Tensor]:
    """``sd`` with the prefix its every key shares taken off when the model's own ``keys``
    are what is left: a state_dict saved from a wrapper of the model, as
    ``nn.DataParallel`` and DDP save it (``module.``), a Lightning checkpoint of a module
    that holds it (``model.``) or a ``torch.compile``'d model (``_orig_mod.``); or with the
    prefix every model key has put on, when the model wraps what was saved (a factory that
    returns ``Wrapper(net)`` given ``net``'s state_dict). Otherwise ``sd`` as it is."""
    out = sd
    for _ in range(3):  # (DDP of a compiled model: module._orig_mod.)
        if set(out) == keys or not out:
            break
        first = next(iter(out)).split(".", 1)[0] + "."
        if not all(k.startswith(first) for k in out):
            break
        out = {k[len(first):]: v for k, v in out.items()}
    if set(out) != keys and keys and sd:  # the other way: the model wraps what was saved
        first = next(iter(keys)).split(".", 1)[0] + "."
        if all(k.startswith(first) for k in keys) and {first + k for k in sd} == keys:
            return {first + k: v for k, v in sd.items()}
    return out if set(out) == keys else sd


def _with_tied(sd: dict, model: nn.Module) -> dict:
    """``sd`` with the names it lacks of tensors ``model`` ties to a name it has (GPT-2's
    ``lm_head.weight`` is ``transformer.wte.weight``): ``save_model`` and ``save_pretrained``
    store a tied tensor once, under one of its names."""
    names: dict[int, list[str]] = {}
    for name, t in (*model.named_parameters(remove_duplicate=False),
                    *model.named_buffers(remove_duplicate=False)):
        names.setdefault(id(t), []).append(name)
    filled = dict(sd)
    for tied in names.values():
        held = next((n for n in tied if n in sd), None)
        if held is not None:
            filled.update({n: sd[held] for n in tied if n not in sd})
    return filled


def load_weights(model: nn.Module, path: str | Path) -> str | None:
    """Load a state_dict into ``model`` strictly, with a one-line error on mismatch; the
    file's half-precision dtype (:func:`stored_dtype`), if it has one. A tensor the model
    ties under several names may be stored under one of them."""
    sd = _with_tied(_unwrapped(read_state_dict(path), set(model.state_dict())), model)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        missing = sorted(set(model.state_dict()) - set(sd))
        unexpected = sorted(set(sd) - set(model.state_dict()))
        detail = str(exc).splitlines()
        shape_err = next((ln.strip() for ln in detail if "size mismatch" in ln), "")
        part = next((first for first in {k.split(".", 1)[0] + "." for k in unexpected}
                     if {k[len(first):] for k in sd if k.startswith(first)} ==
                     set(model.state_dict())), None)
        hint = (f" (its tensors under '{part}' are this model's, beside others: save "
                "that part alone)") if part and not shape_err else ""
        raise DepViewError(
            f"weights {path} do not fit the model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}{'; ' + shape_err if shape_err else ''}{hint}") from exc
    return stored_dtype(t.dtype for t in sd.values())
