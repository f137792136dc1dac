"""Command line: ``python -m viewer [serve|graph|groups|prune|check|demos] ...``.

Every command prints one clear line on bad input and exits with code 2; JSON goes to ``--json``
(a path, or ``-`` for stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .core.errors import DepViewError


def _add_model_options(p: argparse.ArgumentParser, spec_required: bool = True) -> None:
    if spec_required:
        p.add_argument("spec", help="demo:NAME, package.module:attr or path/file.py:attr")
    p.add_argument("--input", action="append", default=[], metavar="SHAPE[:DTYPE]",
                   help="example input shape, e.g. 1x3x224x224 or 1x16:int64 (repeatable)")
    p.add_argument("--kwargs", default="", metavar="JSON", help="keyword arguments for the factory")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="state_dict to load (.safetensors, or .pt/.pth loaded weights-only)")
    p.add_argument("--device", default="cpu", choices=["cpu", "meta"])
    p.add_argument("--seed", type=int, default=0, help="seed for weights and example inputs")


def _write_json(obj, dest: str) -> None:
    text = json.dumps(obj, indent=1)
    if dest == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_text(text)


def _load(args):
    from .core.spec import load_model

    return load_model(args.spec, inputs=args.input, kwargs=args.kwargs, weights=args.weights,
                      device=args.device, seed=args.seed)


def cmd_graph(args) -> int:
    from .core.trace import build_graph

    lm = _load(args)
    graph = build_graph(lm.model, lm.inputs)
    _write_json(graph.to_dict(), args.json)
    if args.json != "-":
        print(f"{len(graph.nodes)} nodes, {len(graph.edges)} edges -> {args.json}")
    return 0


def cmd_demos(args) -> int:
    import demo_models

    rows = [{"name": d.name, "spec": f"demo:{d.name}", "description": d.description,
             "inputs": ["x".join(map(str, s)) + f":{t}" for s, t in d.input_specs]}
            for d in demo_models.DEMOS.values()]
    if args.json:
        _write_json({"demos": rows}, args.json)
    else:
        for r in rows:
            print(f"demo:{r['name']:<12} {' '.join(r['inputs']):<22} {r['description']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m viewer",
        description="DepView: a PyTorch model as a typed dependency graph, pruned structurally.")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("graph", help="trace a model and write its typed graph as JSON")
    _add_model_options(p)
    p.add_argument("--json", required=True, metavar="PATH|-")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("demos", help="list the demo models")
    p.add_argument("--json", default=None, metavar="PATH|-")
    p.set_defaults(func=cmd_demos)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except DepViewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
