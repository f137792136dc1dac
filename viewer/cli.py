"""Command line: ``python -m viewer [serve|graph|groups|prune|sensitivity|check|demos] ...``.

Every command prints one clear line on bad input and exits with code 2; JSON goes to ``--json``
(a path, or ``-`` for stdout).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import threading
from collections import Counter
from contextlib import contextmanager, nullcontext, redirect_stdout
from pathlib import Path

from .app.args import add_model_options, add_serve_arguments, check_seeds
from .core.errors import DepViewError
from .core.plan import IMPORTANCE, READS_BATCH, l1_fallback_text
from .core.text import counted, first_line


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="demo:NAME, package.module:attr, path/file.py:attr, a "
                   "Hugging Face model directory (config.json + model.safetensors), "
                   "hf:ORG/NAME from the local hub cache, or an export directory")
    add_model_options(p)


#: the real stdout while a command with ``--json -`` runs (see :func:`_json_on_stdout`)
_JSON_STDOUT = None


@contextmanager
def _json_on_stdout():
    """With ``--json -`` stdout carries the JSON alone: what else is printed meanwhile (a
    model's own ``print`` in its ``__init__`` or forward) goes to stderr."""
    global _JSON_STDOUT
    _JSON_STDOUT = sys.stdout
    if sys.stdout is not None:
        sys.stdout.flush()
    saved = None
    # file descriptor 1 too (a C extension's printf, a subprocess the model runs), when
    # stdout is the process's own (not a caller's replacement, as a test's capture)
    if sys.stdout is not None and sys.stdout is sys.__stdout__:
        try:
            if sys.stdout.fileno() == 1:
                saved = os.dup(1)
                os.dup2(2, 1)
        except (OSError, ValueError, io.UnsupportedOperation):  # (no real stdout)
            saved = None
    if saved is not None:
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        _JSON_STDOUT = os.fdopen(saved, "w", encoding=encoding, closefd=False)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
        _JSON_STDOUT = None


def _write_json(obj, dest: str) -> None:
    from .core.export import dumps

    text = dumps(obj, indent=1)  # strict JSON: inf and nan spelled "Infinity", "NaN"
    if dest == "-":
        out = _JSON_STDOUT or sys.stdout
        out.write(text + "\n")
        out.flush()
        return
    try:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_text(text)
    except OSError as exc:
        raise DepViewError(f"cannot write {dest}: {exc.strerror or exc}") from None


def _check_json_dest(dest: str) -> None:
    """Refuse, before any work, a --json path that cannot be written: a directory, or a
    file standing where a parent directory should be."""
    from .core.export import check_creatable

    path = Path(dest)
    if not dest.strip():  # an unset $VAR: not the current directory
        raise DepViewError("--json is empty: give a file name (or - for stdout)")
    if path.is_dir():
        raise DepViewError(f"--json {dest} is a directory: give a file name (or - for stdout)")
    if not path.exists():
        check_creatable(path)
        return
    # an existing file is overwritten only when it is JSON, and none of an export's
    # (`graph net.py:Net --json net.py` replaced the model's own code)
    if path.name in ("plan.json", "report.json") and (path.parent / "model.safetensors").exists():
        raise DepViewError(f"--json {dest} is a file of the export in {path.parent}: give "
                           "another file name (it would be overwritten)")
    try:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
    except OSError as exc:
        raise DepViewError(f"cannot read --json {dest}: {exc.strerror or exc}") from None
    if head and head[:1] not in (b"{", b"["):
        raise DepViewError(f"--json {dest} exists and is not a JSON file: give another file "
                           "name (it would be overwritten)")


def _load(args):
    """The model SPEC names; or, when SPEC is an export directory, the pruned model in it, for
    another round (``args.history`` then holds its earlier rounds, for the new export)."""
    from dataclasses import replace

    from .core.export import export_folder, open_export
    from .core.spec import load_model

    args.history = None
    folder = export_folder(args.spec)
    if folder is not None:
        model, lm, plan = open_export(folder, args.device, inputs=args.input,
                                      input_file=args.input_file, kwargs=args.kwargs,
                                      weights=args.weights, dtype=args.dtype)
        args.history = list(plan.get("rounds") or [])
        return replace(lm, model=model)
    return load_model(args.spec, inputs=args.input, kwargs=args.kwargs, weights=args.weights,
                      device=args.device, seed=args.seed, input_file=args.input_file,
                      dtype=args.dtype)


def _table(header: list[str], rows: list[list], right: set[int] = frozenset()) -> str:
    """Rows as aligned text columns (``right``: columns aligned right); the last column is
    not padded."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        parts[-1] = r[-1].rjust(widths[-1]) if len(r) - 1 in right else r[-1]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _shapes(shapes: list) -> str:
    return ", ".join("x".join(map(str, s)) if s else "scalar" for s in shapes)


def graph_table(graph) -> str:
    """The graph as text: one line per op (its name, type, layer class and output shapes),
    then the count of each type."""
    rows = []
    for n in graph.nodes:
        target = n.target.partition(":")[2] if n.target.startswith("module:") else ""
        rows.append([n.id, n.name, n.op_type.value, target.rsplit(".", 1)[-1],
                     _shapes(n.out_shapes)])
    counts = Counter(n.op_type.value for n in graph.nodes)
    info = graph.info
    head = (f"{info.get('model', 'model')}: {counted(len(graph.nodes), 'op')}, "
            f"{counted(len(graph.edges), 'edge')}")
    return "\n".join([head, _table(["#", "name", "type", "layer", "output"], rows, {0}),
                      "types: " + ", ".join(f"{t} {c}" for t, c in counts.most_common())])


def groups_table(rows: list[dict], layer: str | None = None) -> str:
    """Groups as text: id, root, units, whether prunable, how many nodes it touches, and why
    not (or in what multiples its units go, and what else pruning it sets)."""
    out = []
    for g in rows:
        nodes = len({m["node"] for m in g["members"]})
        notes = [f"holds {layer} {'+'.join(g['holds'])}"] if g.get("holds") else []
        notes += [g["reason"]] if g["reason"] else []
        if not g["reason"] and g.get("multiple_of", 1) > 1:
            notes.append(f"in multiples of {g['multiple_of']} ({g['multiple_why']})")
        if not g["reason"] and g.get("min_kept", 1) > 1:
            notes.append(f"keeps at least {g['min_kept']} ({g['min_kept_why']})")
        if not g["reason"] and not g.get("exact", True):
            why = g["inexact_why"]  # (an inexact group has its notes)
            more = f" (+{len(why) - 1} more)" if len(why) > 1 else ""
            notes.append(f"inexact: {why[0]}{more}")
        if g.get("sets"):
            notes.append("sets " + ", ".join(g["sets"]))
        root = g["root"] if g.get("root_side", "out") == "out" else \
            f"{g['root']} ({g['root_side']})"  # (an LSTM's cell units beside its outputs)
        units = f"{g['channels']} heads" if g.get("heads") else g["channels"]
        out.append([g["id"], root, units, "yes" if g["prunable"] else "no",
                    nodes, "; ".join(notes)])
    n_ok = sum(g["prunable"] for g in rows)
    return "\n".join([_table(["id", "root", "units", "prunable", "members", "note"], out,
                             {0, 2, 4}),
                      f"{counted(len(rows), 'group')}, {n_ok} prunable"])


def cmd_graph(args) -> int:
    from .core.trace import build_graph

    lm = _load(args)
    graph = build_graph(lm.model, lm.inputs, autograd=not args.no_autograd)
    if args.json is None:
        print(graph_table(graph))
        return 0
    _write_json(graph.to_dict(), args.json)
    if args.json != "-":
        print(f"{len(graph.nodes)} nodes, {len(graph.edges)} edges -> {args.json}")
    return 0


FREE_OUTPUT_HELP = ("an output whose width may change (e.g. last_hidden_state beside a "
                    "detector's logits): groups that reach it are not blocked there; the "
                    "other outputs keep their shapes")


def _pruner(args, lm, validate: bool = True):
    from .core.prune import Pruner
    from .core.trace import build_graph

    graph = build_graph(lm.model, lm.inputs)
    return Pruner(lm.model, lm.inputs, graph=graph, output_layers=lm.output_layers,
                  validate=validate, free_outputs=args.free_output)


IGNORE_HELP = ("protect a layer's or module's channels (NAME:in its inputs, NAME:out its "
               "outputs; NAME may be a wildcard pattern like '*.attn'); repeatable")


def _add_keep_options(p: argparse.ArgumentParser) -> None:
    """--ignore and --free-output: what stays, as groups, prune and sensitivity take them."""
    p.add_argument("--ignore", action="append", default=[], metavar="NAME[:in|:out|:cell]",
                   help=IGNORE_HELP)
    p.add_argument("--free-output", action="append", default=[], metavar="NAME",
                   help=FREE_OUTPUT_HELP)


def cmd_groups(args) -> int:
    if args.layer is not None and not args.layer.strip():  # (an unset $VAR), before the load
        raise DepViewError("--layer is empty: give a layer or module name")
    lm = _load(args)
    pruner = _pruner(args, lm, validate=not args.no_validate)
    if not args.no_validate:  # on meta too: validation runs its forwards on meta
        pruner.validate_groups()
    ignore = pruner.resolve_ignore(args.ignore)
    holding = pruner.groups_holding(args.layer.strip(), "--layer") if args.layer else None
    rows = [pruner.group_dict(g, ignore, with_indices=not args.no_indices and bool(args.json))
            for g in pruner.groups if holding is None or g.id in holding]
    if holding is not None:
        for r in rows:  # which of its channels each group holds
            r["holds"] = holding[r["id"]]
    if args.json is None:
        note = _outputs_note(pruner)
        print(groups_table(rows, args.layer) + (f" ({note})" if note else ""))
        return 0
    out = {"spec": args.spec, "groups": rows}
    if holding is not None:
        out["layer"] = args.layer
    if pruner.free_outputs:
        out["free_outputs"] = pruner.free_outputs
    _write_json(out, args.json)
    if args.json != "-":
        n_ok = sum(r["prunable"] for r in rows)
        note = _outputs_note(pruner)
        print(f"{counted(len(rows), 'group')}, {n_ok} prunable -> {args.json}"
              + (f" ({note})" if note else ""))
    return 0


def cmd_sensitivity(args) -> int:
    from .core.sensitivity import sensitivity

    if args.device == "meta":
        raise DepViewError("sensitivity needs real weights: use --device cpu")
    batch = None
    if args.batch:
        from .core.spec import read_batch

        batch = read_batch(args.batch)
    lm = _load(args)
    pruner = _pruner(args, lm)
    rows = sensitivity(pruner, args.ratio, args.importance, ignore=args.ignore, batch=batch,
                       seed=args.seed)
    # (--input-file gives real data as the example inputs; shapes give made-up values)
    inputs = "batch" if batch is not None else "input file" if args.input_file else \
        "example inputs"
    if args.json is not None:
        _write_json({"spec": args.spec, "ratio": args.ratio, "importance": args.importance,
                     "inputs": inputs, "groups": rows}, args.json)
        if args.json != "-":
            print(f"{counted(len(rows), 'group')} pruned one at a time -> {args.json}")
        return 0
    table = [[r["id"], r["root"], r["units"], r["removed"], f"{r['params_removed']:,}",
              f"{r['output_change']:.3g}"]
             for r in sorted(rows, key=lambda r: (r["removed"] == 0, r["output_change"]))]
    on = {"batch": "the batch", "input file": "the --input-file inputs"}.get(
        inputs, "the example inputs (made up, not real data)")
    print(_table(["id", "root", "units", "removed", "params removed", "output change"],
                 table, {0, 2, 3, 4, 5}))
    print(f"each group pruned alone at {args.ratio:g} ({args.importance}); output change = "
          f"||y' - y|| / ||y|| on {on}; least sensitive first: give groups their own ratio "
          "with prune --override ID=R or NAME=R")
    return 0


def cmd_prune(args) -> int:
    from .core.export import check_out_dir, export_dir
    from .core.modelconfig import config_note
    from .core.prune import floor_note, width_note
    from .core.timing import compare_speed, speed_text
    from .core.verify import blind_note, masked_note, memory_note, run_failure, untraced_note

    if args.device == "meta":
        raise DepViewError("prune needs real weights: use --device cpu")
    if not args.out.strip():  # an unset $OUT would write the export into this directory
        raise DepViewError("--out is empty: give the export directory")
    check_out_dir(args.out)  # before the model is built and pruned
    overrides: dict[int | str, float] = {}
    for item in args.override:
        key, _, r = item.partition("=")
        key = key.strip()
        try:
            ratio = float(r)
        except ValueError:
            raise DepViewError(f"bad --override {item!r}: use GROUP_ID=RATIO or "
                               "NAME=RATIO") from None
        if not key:
            raise DepViewError(f"bad --override {item!r}: give a group id or a layer name "
                               "before '='")
        k = int(key) if key.isdigit() else key
        if k in overrides:
            what = f"group {k}" if isinstance(k, int) else repr(k)
            raise DepViewError(f"--override gives {what} twice ({k}={overrides[k]:g} and "
                               f"{item}): give each {'group' if isinstance(k, int) else 'name'}"
                               " once")
        overrides[k] = ratio
    lm = _load(args)
    pruner = _pruner(args, lm)
    batch = None
    if args.batch:
        from .core.spec import read_batch

        if args.importance not in READS_BATCH:
            raise DepViewError("--batch feeds the Taylor and usage importances: add "
                               "--importance taylor or usage")
        batch = read_batch(args.batch)
    plan = pruner.plan(args.ratio, args.importance, global_=args.global_, round_to=args.round_to,
                       ignore=args.ignore, overrides=overrides, seed=args.seed, batch=batch)
    pruned = pruner.apply(plan)
    verification = pruner.verify(pruned, plan)
    if not verification.get("forward"):
        raise run_failure(verification)
    timing = compare_speed(lm.model, pruned, lm.inputs) if args.time else None
    out = export_dir(pruner, plan, pruned, args.out, lm.source, verification,
                     history=args.history, timing=timing)
    report = json.loads((out / "report.json").read_text())
    p, m = report["params"], report["macs"]
    why = ""
    if not plan.removed:  # say why, on the same line: scripts read one line
        why = f" ({_nothing_pruned(args, pruner, plan, overrides)})"
    failed = masked_note(verification)
    notes = [n for n in (failed, memory_note(verification), blind_note(verification),
                         untraced_note(verification),
                         _l1_note(plan), _batch_note(args, lm, plan), floor_note(plan),
                         width_note(plan, pruner.groups),
                         config_note(report.get("config")),
                         _outputs_note(pruner), timing and speed_text(timing))
             if n]
    print(f"pruned {counted(report['units_removed'], 'unit')} in "
          f"{counted(report['groups_pruned'], 'group')}: "
          f"params {p['before']:,} -> {p['after']:,}, MACs {m['before']:,} -> {m['after']:,}"
          f" -> {out}{why}" + "".join(f" ({n})" for n in notes))
    return 1 if failed else 0


def _nothing_pruned(args, pruner, plan, overrides: dict) -> str:
    """Why a plan removes nothing: ratio 0, no group that may be pruned (the first reason),
    or every prunable group's share rounding down to 0 units."""
    if args.ratio == 0 and not overrides:
        return "ratio 0"
    if not pruner.groups:
        from .core.groups import no_groups_reason

        return f"nothing could be pruned: {no_groups_reason(pruner.graph)}"
    n_prunable = len(pruner.groups) - len(plan.skipped)
    if n_prunable <= 0:
        first = next(iter(plan.skipped.values()), "")
        return (f"nothing could be pruned: {counted(len(plan.skipped), 'group')} left alone"
                + (f"; the first: {first}" if first else ""))
    detail = [f"round-to {args.round_to}"] if args.round_to > 1 else []
    detail += ["ranked globally"] if args.global_ else []
    detail += [counted(n_prunable, "prunable group")]
    detail += [f"{len(plan.skipped)} left alone"] if plan.skipped else []
    fix = "raise the ratio or lower --round-to" if args.round_to > 1 else "raise the ratio"
    from .core.groups import units_are_heads

    # an attention group's units are heads: that is what its share (and --round-to) counts
    prunable = [g for g in pruner.groups if g.id not in plan.skipped]
    heads = sum(units_are_heads(pruner.graph, g) for g in prunable)
    units = "heads" if heads == len(prunable) else \
        "units (an attention group's units are heads)" if heads else "units"
    return (f"nothing pruned: every prunable group's share rounds to 0 {units} at ratio "
            f"{args.ratio:g} ({'; '.join(detail)}): {fix}")


def _outputs_note(pruner) -> str:
    """Says which outputs after the first alone keep groups from pruning: ``--free-output``
    lets those groups prune, if the outputs' widths may change."""
    from .core.groups import held_by_outputs

    held = held_by_outputs(pruner.graph, pruner.groups)
    if not held:
        return ""
    n = len({gid for ids in held.values() for gid in ids})
    return (f"{counted(n, 'group')} {'is' if n == 1 else 'are'} held only by the output"
            f"{'s' if len(held) > 1 else ''} {', '.join(held)}: --free-output NAME lets "
            f"{'it' if n == 1 else 'them'} prune, if {'its' if len(held) == 1 else 'their'} "
            "width may change")


def _batch_note(args, lm, plan) -> str:
    """Says that Taylor or usage scores came from the example inputs, made up unless read
    from a file (``--input-file``): ``--batch`` gives real data to score on."""
    if args.importance not in READS_BATCH or args.batch or lm.source.get("input_file") \
            or not plan.removed:
        return ""
    return (f"{args.importance}: scored on the example inputs, not real data: give --batch "
            "FILE for meaningful scores")


def _l1_note(plan) -> str:
    """Says which groups ``--importance bn``, ``taylor`` or ``usage`` scored by L1: they have
    no norm layer, no gradient reaching them, or no router picking their units."""
    imp = plan.settings.get("importance", "")
    return l1_fallback_text(imp, plan.settings.get("scored_by_l1"), label=imp)


def cmd_check(args) -> int:
    from .core.export import check_dir
    from .core.timing import speed_text
    from .core.verify import blind_note, masked_note, memory_note, untraced_note

    if not args.dir.strip():  # an unset $VAR: not the current directory
        raise DepViewError("check needs an export directory, got an empty path")
    res = check_dir(args.dir, spec=args.spec, time=args.time)
    if args.json:
        _write_json(res, args.json)
    if args.json != "-":  # (a JSON file: the line too, saying where it went)
        status = "OK" if res.get("ok") else "NOT CHECKED" if res.get("memory") else "FAILED"
        ran = {True: "ran", None: "not run"}.get(res.get("forward"), "failed")
        ran = "could not run" if res.get("memory") else ran
        v = res.get("verification") or {}
        notes = [*res.get("problems", []), masked_note(v), memory_note(v), blind_note(v),
                 untraced_note(v), *res.get("notes", []),
                 res.get("timing") and f"{speed_text(res['timing'])} as the original"]
        print(f"{status}: {res.get('model') or res['spec']} reloaded, forward {ran}"
              f", output shapes {res.get('output_shapes')}"
              + "".join(f" ({n})" for n in notes if n)
              + (f" -> {args.json}" if args.json else ""))
    return 0 if res.get("ok") else 1


def cmd_serve(args) -> int:
    from .app.main import cmd_serve as serve

    return serve(args)


def cmd_demos(args) -> int:
    import demo_models

    from .core.spec import spell_input

    rows = [{"name": d.name, "spec": f"demo:{d.name}", "description": d.description,
             "inputs": [spell_input(s, t) for s, t in d.input_specs]}
            for d in demo_models.DEMOS.values()]
    if args.json:
        _write_json({"demos": rows}, args.json)
        if args.json != "-":
            print(f"{len(rows)} demos -> {args.json}")
    else:
        for r in rows:
            print(f"demo:{r['name']:<12} {' '.join(r['inputs']):<22} {r['description']}")
    return 0


def _ratio(text: str) -> float:
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= r < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {r}")
    return r


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage wall)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


COMMANDS = ("graph", "groups", "prune", "sensitivity", "check", "demos", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m viewer",
        description="DepView: a PyTorch model as a typed dependency graph, pruned structurally.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("graph", help="trace a model and write its typed graph as JSON")
    _add_model_options(p)
    p.add_argument("--no-autograd", action="store_true",
                   help="trace under no_grad: faster, but no autograd node names")
    p.add_argument("--json", default=None, metavar="PATH|-",
                   help="write the graph as JSON (- for stdout); without it, a table of ops")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("groups", help="compute every pruning group and write them as JSON")
    _add_model_options(p)
    p.add_argument("--json", default=None, metavar="PATH|-",
                   help="write the groups as JSON (- for stdout); without it, a table")
    _add_keep_options(p)
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="only the groups that hold this layer's or module's channels (a "
                        "wildcard pattern too): why it is, or is not, pruned")
    p.add_argument("--no-indices", action="store_true", help="omit per-member index lists")
    p.add_argument("--no-validate", action="store_true",
                   help="skip the meta-device check that each group's pruned model still runs")
    p.set_defaults(func=cmd_groups)

    p = sub.add_parser("prune", help="prune a model and write an export directory")
    _add_model_options(p)
    p.add_argument("--ratio", type=_ratio, required=True, help="fraction of units to remove, "
                   "in [0, 1)")
    p.add_argument("--importance", default="l1", choices=IMPORTANCE)
    p.add_argument("--global", dest="global_", action="store_true",
                   help="rank units across all groups instead of a uniform ratio per group")
    _add_keep_options(p)
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="keep a multiple of N units per group")
    p.add_argument("--override", action="append", default=[], metavar="GROUP_ID=RATIO",
                   help="one group's ratio (ids as the groups command lists them), or "
                        "NAME=RATIO: the groups rooted in a layer or module (a wildcard "
                        "pattern like '*.mlp' too); repeatable")
    p.add_argument("--batch", default=None, metavar="FILE",
                   help="inputs for --importance taylor or usage (.safetensors, or a "
                        "weights-only .pt): "
                        "keys 0, 1, ... are positional inputs, other keys keyword inputs; "
                        "the example inputs are used without it")
    p.add_argument("--time", action="store_true",
                   help="time a forward of the model and of the pruned one, side by side, "
                        "and put the speed-up in the output line and report.json")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("sensitivity", help="prune each group alone and measure how much "
                       "the outputs change")
    _add_model_options(p)
    p.add_argument("--ratio", type=_ratio, default=0.5,
                   help="fraction of each group's units to remove (default 0.5)")
    p.add_argument("--importance", default="l1", choices=IMPORTANCE)
    _add_keep_options(p)
    p.add_argument("--batch", default=None, metavar="FILE",
                   help="real inputs to measure the change on, and to score taylor and "
                        "usage by (.safetensors, or a weights-only .pt; as prune --batch); "
                        "the example inputs without it")
    p.add_argument("--json", default=None, metavar="PATH|-",
                   help="write the rows as JSON (- for stdout); without it, a table")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("check", help="reload an export directory and run it")
    p.add_argument("dir")
    p.add_argument("--spec", default=None, metavar="SPEC",
                   help="the model's code, instead of the spec plan.json records")
    p.add_argument("--time", action="store_true",
                   help="also time its forward against the original model's, here")
    p.add_argument("--json", default=None, metavar="PATH|-")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demos", help="list the demo models")
    p.add_argument("--json", default=None, metavar="PATH|-")
    p.set_defaults(func=cmd_demos)

    p = sub.add_parser("serve", help="start the browser app (the default command)")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)
    return parser


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]  # bare `python -m viewer` starts the app
    elif argv[0] not in COMMANDS and (":" in argv[0] or "/" in argv[0]
                                      or Path(argv[0]).is_dir()):
        # `python -m viewer demo:vit` (or a model or export directory) opens that model
        argv = ["serve", "--model", *argv]
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a job's timeout, kill) unwinds as Ctrl-C does, so a half-written
        # export's staging directory is removed instead of left behind
        signal.signal(signal.SIGTERM, _terminated)
    try:
        check_seeds(args)
        if getattr(args, "json", None) not in (None, "-"):
            _check_json_dest(args.json)
        with _json_on_stdout() if getattr(args, "json", None) == "-" else nullcontext():
            return args.func(args)
    except DepViewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head` stopped reading: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error
        return 1                                                         # when Python exits)
    except Exception as exc:  # a bug or an unforeseen input: still one line, unless asked
        if os.environ.get("DEPVIEW_TRACEBACK"):
            raise
        first = first_line(str(exc))[:300]
        print(f"error: unexpected {type(exc).__name__}: {first} (set DEPVIEW_TRACEBACK=1 for "
              "the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
