"""Command-line options of ``serve``: which models the picker offers, and how to build each.

Model options (``--input``, ``--input-file``, ``--kwargs``, ``--weights``, ``--device``,
``--dtype``, ``--seed``) given after a ``--model`` belong to that model; given before the first
``--model``, they apply to every model that does not set its own. So one server can offer
models with different inputs::

    python -m viewer --model net.py:Net --input 1x3x64x64 --model demo:resnet   # resnet: its own

This module does not import Dash: the CLI builds its parser from it without loading the app.
"""

from __future__ import annotations

import argparse

from viewer.core.errors import DepViewError

#: model options and their defaults, before any --model
MODEL_OPTIONS = {"input": [], "input_file": None, "kwargs": "", "weights": None,
                 "device": "cpu", "dtype": "float32", "seed": 0}


class _ModelAction(argparse.Action):
    """``--model SPEC``: starts a new model; later model options attach to it."""

    def __call__(self, parser, namespace, value, option_string=None):
        specs = list(getattr(namespace, "model", None) or [])
        namespace.model = [*specs, value]
        per = list(getattr(namespace, "per_model", None) or [])
        namespace.per_model = [*per, {}]


class _ModelOption(argparse.Action):
    """A model option: the last ``--model``'s own if there is one, else the shared default.
    ``--input`` repeats (a model with several inputs); the others take their last value."""

    def __call__(self, parser, namespace, value, option_string=None):
        per = getattr(namespace, "per_model", None)
        repeat = self.dest == "input"
        if per:
            own = per[-1]
            own[self.dest] = [*own.get(self.dest, []), value] if repeat else value
        else:
            setattr(namespace, self.dest,
                    [*(getattr(namespace, self.dest, None) or []), value] if repeat else value)


def add_model_options(parser: argparse.ArgumentParser, per_model: bool = False) -> None:
    """``--input``/``--input-file``/``--kwargs``/``--weights``/``--device``/``--dtype``/
    ``--seed``, with the defaults of :data:`MODEL_OPTIONS`. ``per_model`` (serve): each
    attaches to the last ``--model``."""
    one = {"action": _ModelOption} if per_model else {}
    many = {"action": _ModelOption} if per_model else {"action": "append"}
    d = MODEL_OPTIONS
    parser.add_argument("--input", default=list(d["input"]), metavar="[NAME=]SHAPE[:DTYPE]",
                        help="example input shape, e.g. 1x3x224x224 or 1x16:int64 (repeat for "
                             "several inputs; NAME= makes it a keyword input, e.g. "
                             "decoder_input_ids=1x8:int64); demos know their own", **many)
    parser.add_argument("--input-file", default=d["input_file"], metavar="FILE",
                        help="the example inputs themselves, real data (.safetensors, or .pt "
                             "loaded weights-only: tensors named 0, 1, ... or by argument, "
                             "e.g. input_ids and pixel_values); instead of --input", **one)
    parser.add_argument("--kwargs", default=d["kwargs"], metavar="JSON",
                        help="keyword arguments for the model's factory", **one)
    parser.add_argument("--weights", default=d["weights"], metavar="FILE",
                        help="state_dict to load (.safetensors, or .pt/.pth loaded weights-only)",
                        **one)
    parser.add_argument("--device", default=d["device"], choices=["cpu", "meta"],
                        help="meta: build the model without weights (huge models)", **one)
    parser.add_argument("--dtype", default=d["dtype"], choices=["float32", "bfloat16", "float16"],
                        help="what the model runs in: float32, or half precision to hold a "
                             "model twice as large (exports are written in it)", **one)
    parser.add_argument("--seed", type=int, default=d["seed"],
                        help="seed for the weights and for inputs given as shapes", **one)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` options: ``--model`` (repeatable) with its model options, host, port."""
    parser.add_argument("--model", action=_ModelAction, default=[], metavar="SPEC",
                        help="add a model to the picker: demo:NAME, package.module:attr, "
                             "path/file.py:attr, a Hugging Face model directory, hf:ORG/NAME "
                             "(from the local cache) or an export directory (repeatable). Model "
                             "options after it apply to it alone; before the first --model, "
                             "to every model")
    parser.set_defaults(per_model=[])
    add_model_options(parser, per_model=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=8050)
    parser.add_argument("--debug", action="store_true")


def _port(text: str) -> int:
    """``--port``: a TCP port, checked before a model is loaded (Dash asserts it after)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 1 to 65535, got {port}")
    return port


def check_seeds(args: argparse.Namespace) -> None:
    """``--seed`` (serve: also each ``--model``'s own) in the range torch's and numpy's
    generators take, instead of their overflow error when the model is built (torch takes a
    negative seed, numpy does not)."""
    seeds = [getattr(args, "seed", 0)] + [o["seed"] for o in getattr(args, "per_model", [])
                                          if "seed" in o]
    for seed in seeds:
        if not 0 <= seed < 2 ** 64:
            raise DepViewError(f"bad --seed {seed}: use a whole number from 0 to 2**64 - 1")


def entries_from_args(args: argparse.Namespace) -> list:
    """The ``--model`` specs as picker entries, each with its own model options (falling back
    to the shared ones). A spec given twice with different options, or a seed out of range,
    is an error."""
    from .state import ModelEntry

    check_seeds(args)
    shared = {k: getattr(args, k, None) or default for k, default in MODEL_OPTIONS.items()}
    specs = list(getattr(args, "model", None) or ())
    per = list(getattr(args, "per_model", None) or [{} for _ in specs])
    entries: dict[str, ModelEntry] = {}
    for spec, own in zip(specs, per, strict=True):
        o = {**shared, **own}
        entry = ModelEntry(spec, inputs=tuple(o["input"]), kwargs=o["kwargs"],
                           weights=o["weights"], device=o["device"], seed=int(o["seed"]),
                           input_file=o["input_file"], dtype=o["dtype"])
        if entries.setdefault(spec, entry) != entry:
            raise DepViewError(f"--model {spec} is given twice with different options; "
                               "give it once")
    return list(entries.values())
