"""Pruning: settings, preview (numbers, charts, new widths on the graph), apply with
verification, history with undo/reset, and per-group overrides and ignores from the inspector.

Several rounds: each applied round's pruned copy is traced again and becomes the next round's
model (its Pruner is built on the pruned model). The models stay on the server.
"""

from __future__ import annotations

import math

import numpy as np
from dash import ALL, Input, Output, State, ctx, html, no_update

from viewer.core.errors import DepViewError
from viewer.core.export import round_entry
from viewer.core.forward import batch_shapes
from viewer.core.groups import no_groups_reason, units_are_heads
from viewer.core.memory import MemoryShortError
from viewer.core.modelconfig import config_note
from viewer.core.optypes import OpType
from viewer.core.plan import (
    FALLS_BACK,
    IGNORE_SIDES,
    IMPORTANCE,
    READS_BATCH,
    SIDE_WORDS,
    Plan,
    l1_fallback_text,
)
from viewer.core.prune import floor_note, width_note
from viewer.core.text import counted, first_line
from viewer.core.timing import compare_speed, speed_text
from viewer.core.trace import output_nodes, output_path
from viewer.core.verify import blind_note, run_failure, untraced_note

from .. import charts, ids, styles
from ..layout import MODULE_RATIO_TITLE, OVERRIDE_SET_TITLE
from ..state import Session, SessionStore, make_stage, with_free_outputs
from ..viewmodel import selected_layer
from .common import change, decode_upload, error_message, fmt_count, message
from .inspect import inspect
from .model import graph_rev, model_info, weightless


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_ratio(value, what: str = "ratio") -> float:
    """A ratio typed in a text box (or given as a number) -> float in [0, 1), else a one-line
    error. An empty box is an error too: it is never read as "no pruning".

    >>> parse_ratio(" 0.33 ")
    0.33
    """
    try:
        r = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        shown = "an empty box" if _blank(value) else repr(value)
        raise DepViewError(f"{what} must be a number in [0, 1), got {shown}") from None
    if math.isnan(r) or not 0 <= r < 1:
        shown = value.strip() if isinstance(value, str) else r
        raise DepViewError(f"{what} must be in [0, 1), got {shown}")
    return r


def parse_settings(importance: str | None, ratio, mode: str | None, round_to) -> dict:
    """Controls -> plan keyword arguments, with a clear one-line error for bad values. The
    ratio and round-to boxes are text: what the user typed arrives as typed. An empty box is
    an error for both (never silently read as 0 or 1); 1 in round-to means no rounding.

    >>> parse_settings("l1", "0.3", "global", "8")
    {'importance': 'l1', 'ratio': 0.3, 'global_': True, 'round_to': 8}
    """
    if importance not in IMPORTANCE:
        raise DepViewError(f"importance must be one of {', '.join(IMPORTANCE)}, "
                           f"got {importance!r}")
    r = parse_ratio(ratio)
    if _blank(round_to):
        raise DepViewError("round to must be a whole number >= 1 (1: no rounding), got an "
                           "empty box")
    try:
        f = float(round_to.strip() if isinstance(round_to, str) else round_to)
        rt = int(f)
        if f != rt:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise DepViewError(f"round to must be a whole number >= 1, got {round_to!r}") from None
    if rt < 1:
        raise DepViewError(f"round to must be >= 1, got {rt}")
    return {"importance": importance, "ratio": r, "global_": mode == "global", "round_to": rt}


def make_plan(session: Session, settings: dict) -> Plan:
    """The plan for the current stage with the session's overrides and ignores."""
    return _plan(_snapshot(session), settings)


def load_batch(store: SessionStore, sid: str, contents: str, filename: str | None) -> str:
    """Keep an uploaded ``.safetensors`` batch for the Taylor and usage importances
    (:data:`READS_BATCH`), after checking that the current model runs on it. A batch that
    does not fit leaves the previous one in use."""
    from viewer.core.forward import run
    from viewer.core.spec import batch_from_safetensors

    name = filename or "the upload"
    if not name.endswith(".safetensors"):
        raise DepViewError(f"{name}: upload the batch as a .safetensors file (tensors named "
                           "0, 1, ... for positional inputs, or by argument name)")
    batch = batch_from_safetensors(decode_upload(contents, name), name)
    session = store.session(sid)
    with session.lock:
        model = session.stage.model  # read-only: the forward below need not hold the session
    if weightless(model):
        raise DepViewError("the Taylor and usage importances need real weights; this model "
                           "is on the meta device")
    try:
        run(model, batch)
    except Exception as exc:
        first = first_line(exc)[:200]
        raise DepViewError(f"{name} does not fit the model: {type(exc).__name__}: "
                           f"{first}") from None
    label = f"{name} {_shapes_text(batch)}"
    with session.lock:
        session.batch, session.batch_label = batch, label
    return f"Taylor and usage scores now come from {label}; Preview to use it."


def _shapes_text(batch) -> str:
    shapes = batch_shapes(batch)
    items = shapes.items() if isinstance(shapes, dict) else enumerate(shapes)
    return ", ".join(f"{k}: {'x'.join(map(str, s))}" for k, s in items)


def clear_batch(store: SessionStore, sid: str) -> None:
    """Taylor and usage scores from the example inputs again."""
    session = store.session(sid)
    with session.lock:
        session.batch, session.batch_label = None, ""


def batch_info(store: SessionStore, sid: str) -> str:
    session = store.session(sid)
    return f"scored on {session.batch_label}" if session.batch is not None else \
        "scored on the example inputs (upload a batch of real data for meaningful scores)"


def _snapshot(session: Session) -> tuple:
    """What a plan depends on, taken under the session lock so that the (slow) planning can
    run without it: clicks on the graph are not kept waiting by a preview or an apply."""
    with session.lock:
        return (session.stage, sorted(session.ignore), dict(session.overrides), session.batch,
                session.base)


def _plan(snap: tuple, settings: dict) -> Plan:
    stage, ignore, overrides, batch, _base = snap
    return stage.pruner.plan(settings["ratio"], settings["importance"],
                             global_=settings["global_"], round_to=settings["round_to"],
                             ignore=ignore, overrides=overrides, batch=batch)


def _still_current(session: Session, snap: tuple, what: str) -> None:
    """Raise when the session moved on (another round, undo, a new model, a changed
    override) while ``what`` (a preview, an Apply) computed from ``snap`` was being made: its
    result is void, and the message says why (pressing the button again acts on the model
    then shown, which may be another one)."""
    stage, ignore, overrides, batch, base = _snapshot(session)
    if stage is snap[0] and batch is snap[3] and (ignore, overrides) == snap[1:3]:
        return
    if base is not snap[4]:
        name = snap[4].entry_key if snap[4] is not None else "the model"
        why = f"another model was picked meanwhile ({name} is no longer shown)"
    elif stage is not snap[0]:
        why = "the model changed meanwhile (another round, Undo or Reset)"
    else:
        why = "its pruning settings changed meanwhile"
    raise DepViewError(f"{what} was dropped: {why}; nothing was changed")


def run_preview(store: SessionStore, sid: str, settings: dict) -> dict:
    """Plan and preview (params, MACs, per-layer widths); the model is not touched."""
    session = store.session(sid)
    snap = _snapshot(session)
    plan = _plan(snap, settings)
    preview = snap[0].pruner.preview(plan)
    preview["skipped"] = dict(plan.skipped)
    # prunable groups the plan leaves whole: their share rounds down to 0 units
    whole = [g for g in snap[0].pruner.groups
             if g.id not in plan.removed and g.id not in plan.skipped]
    preview["kept_whole"] = len(whole)
    # of them, attention groups, whose units (and round_to) are heads
    preview["kept_whole_heads"] = sum(units_are_heads(snap[0].graph, g) for g in whole)
    preview["settings"] = dict(settings)
    # the 'bn' criterion scores groups without a norm layer by L1 instead: say which
    preview["scored_by_l1"] = list(plan.settings.get("scored_by_l1") or [])
    preview["importance"] = plan.settings.get("importance", "")
    preview["floor"] = floor_note(plan)  # (an LSTM kept more cell units than the ratio asked)
    preview["width"] = width_note(plan, snap[0].pruner.groups)  # (broke at its planned width)
    preview["n_scored"] = len(plan.scores)
    with session.lock:
        _still_current(session, snap, "the preview")
        session.preview_plan, session.preview = plan, preview
    return preview


def clear_preview(store: SessionStore, sid: str) -> bool:
    """Forget the preview (its settings changed); True when there was one."""
    session = store.session(sid)
    with session.lock:
        had = session.preview_plan is not None
        session.reset_pruning_inputs()
        return had


def round_number(session: Session, stage: int | None = None) -> int:
    """The round that made stage ``stage`` (default: the current one), counting the rounds
    of an uploaded export: its first round here is the export's last round + 1."""
    done = len(session.base.history) if session.base else 0
    return done + (len(session.stages) - 1 if stage is None else stage)


def apply_round(store: SessionStore, sid: str, settings: dict) -> str:
    """Prune a copy with the current settings, verify it, trace it and push it as the next
    stage. Overrides and ignores (which name this stage's groups) are cleared. The work runs
    without the session lock (``session.applying`` counts it meanwhile: a page reloaded then
    says so); the result is dropped if the session moved on meanwhile."""
    session = store.session(sid)
    with session.lock:
        session.applying += 1
    try:
        return _applied(store, sid, session, settings)
    finally:
        with session.lock:
            session.applying -= 1


def _applied(store: SessionStore, sid: str, session: Session, settings: dict) -> str:
    snap = _snapshot(session)
    with session.lock:
        base = session.base
    stage = snap[0]
    plan = _plan(snap, settings)
    if not plan.removed:
        if not stage.pruner.groups:
            raise DepViewError(f"nothing can be pruned: {no_groups_reason(stage.pruner.graph)}")
        if len(plan.skipped) == len(stage.pruner.groups):
            first = next(iter(plan.skipped.values()), "")
            raise DepViewError("no group of this model can be pruned"
                               + (f"; the first: {first}" if first else ""))
        raise DepViewError("this plan removes nothing: raise the ratio, or un-ignore layers")
    with session.lock:  # the preview of this very plan, if it was shown: its MACs
        shown = session.preview if session.preview_plan is not None and \
            session.preview_plan.removed == plan.removed else None
    try:
        macs = (shown or stage.pruner.preview(plan))["macs"]
        pruned = stage.pruner.apply(plan)
        config = stage.pruner.config_fit_of(pruned)
        verification = stage.pruner.verify(pruned, plan)
        if not verification.get("forward"):
            raise run_failure(verification)
    except MemoryShortError as exc:  # (what the pages hold is their users' to let go)
        hint = store.memory_hint(sid)
        raise MemoryShortError(f"{exc}; {hint}" if hint else str(exc)) from None
    new = make_stage(pruned, base.inputs, base.output_layers, plan, verification,
                     round_entry(stage.pruner, plan, pruned), config)
    with session.lock:
        _still_current(session, snap, "the Apply")
        session.stages.append(new)
        session.overrides.clear()
        session.ignore.clear()
        session.reset_pruning_inputs()
        n = round_number(session)
    before, after = stage.summary["params"], new.summary["params"]
    fell = l1_fallback_text(plan.settings.get("importance", ""),
                            plan.settings.get("scored_by_l1"), len(plan.scores))
    config = config_note(config)
    return (f"Round {n} applied: {counted(plan.n_removed, 'unit')} removed from "
            f"{counted(len(plan.removed), 'group')}; params {change(before, after)}, "
            f"MACs {change(macs['before'], macs['after'])}; "
            f"{verification_text(verification)}{f'; {fell}' if fell else ''}"
            f"{f'; {config}' if config else ''}.")


def time_round(store: SessionStore, sid: str) -> str:
    """Time a forward of the last round's model against the model that round pruned, side
    by side (:func:`compare_speed`), and keep the figures on its stage (the history shows
    them; its checkpoint's report.json holds them). Runs without the session lock; dropped
    if the session moved on meanwhile."""
    session = store.session(sid)
    with session.lock:
        if len(session.stages) < 2:
            raise DepViewError("nothing to time yet: apply a pruning round first")
        prev, cur = session.stages[-2], session.stages[-1]
        inputs = session.base.inputs
    t = compare_speed(prev.model, cur.model, inputs)
    with session.lock:
        if not session.stages or session.stages[-1] is not cur:
            raise DepViewError("the model changed while it was timed: press Time forward "
                               "again")
        cur.timing = t
        return f"Round {round_number(session)}: {speed_text(t, unicode=True)} as the model " \
               f"it pruned ({counted(t['rounds'], 'round')} side by side)."


def run_sensitivity(store: SessionStore, sid: str, settings: dict) -> tuple[list[dict], str]:
    """Each prunable group of the current stage pruned alone at the settings' ratio (with the
    session's ignores; measured on the uploaded batch when there is one), and a message naming
    the least and the most sensitive. Runs without the session lock."""
    from viewer.core.sensitivity import sensitivity

    session = store.session(sid)
    with session.lock:
        stage, ignore, batch = session.stage, sorted(session.ignore), session.batch
    ratio = settings["ratio"]
    rows = sensitivity(stage.pruner, ratio, settings["importance"], ignore=ignore,
                       batch=batch)
    ran = sorted((r for r in rows if r["removed"]), key=lambda r: r["output_change"])
    on = "the uploaded batch" if batch is not None else "the example inputs"
    if not ran:
        return rows, f"At {ratio:g} no group loses a unit: raise the ratio."
    lo, hi = ran[0], ran[-1]
    return rows, (f"Sensitivity at {ratio:g} on {on}: {counted(len(ran), 'group')} pruned one "
                  f"at a time; least #{lo['id']} {lo['root']} ({lo['output_change']:.3g}), "
                  f"most #{hi['id']} {hi['root']} ({hi['output_change']:.3g}).")


def _how_checked(me: dict) -> str:
    """How a masked equivalence check ran when not on a masked copy, as the app says it."""
    return (", checked in float32" if me.get("in_float32") else "") + \
        (", masked layer by layer for want of memory" if me.get("by_layer") else "") + \
        _experts_text(me.get("never_picked"))


def _experts_text(never_picked) -> str:
    """How groups of experts were checked (verify's ``never_picked``: a note, or in
    ``exact_groups`` how many of the groups checked remove experts)."""
    if not never_picked:
        return ""
    some = f" {never_picked} of them" if isinstance(never_picked, int) else ""
    return f",{some} removing experts as if their router never picked them"


def verification_text(v: dict | None) -> str:
    """``"forward ok, output shapes kept, masked equivalence ok (max |Δ| 1.5e-08)"``."""
    if not v:
        return "not verified"
    parts = ["forward ok" if v.get("forward") else f"forward FAILED ({v.get('error')})"]
    parts.append("output shapes kept" if v.get("shapes_kept") else "output shapes CHANGED")
    me = v.get("masked_equivalence") or {}
    if "ok" in me:
        parts.append(f"masked equivalence {'ok' if me['ok'] else 'FAILED'} "
                     f"(max |Δ| {me.get('max_abs_diff', 0):.2g}"
                     f"{_how_checked(me)})")
    elif me.get("skipped"):
        parts.append(f"masked equivalence skipped: {me['skipped']}")
        part = me.get("exact_groups") or {}
        if "ok" in part:  # the exact groups, pruned alone, were checked
            n = part.get("groups", 0)
            parts.append(f"masked equivalence of the {n} exact group{'s' if n != 1 else ''} "
                         f"alone {'ok' if part['ok'] else 'FAILED'}"
                         + (f" (max |Δ| {part['max_abs_diff']:.2g}"
                            f"{_how_checked(part)})"
                            if "max_abs_diff" in part else ""))
        elif part.get("skipped"):
            parts.append(f"masked equivalence of the exact groups alone skipped: "
                         f"{part['skipped']}")
    parts += [n for n in (blind_note(v), untraced_note(v)) if n]
    return ", ".join(parts)


def undo(store: SessionStore, sid: str) -> str:
    session = store.session(sid)
    with session.lock:
        if len(session.stages) < 2:
            raise DepViewError("nothing to undo: no pruning round applied")
        undone = session.stages.pop()
        session.reset_pruning_inputs()
        # the overrides and ignores of the undone round named this stage's groups: they are
        # in force again, so an Apply now makes the same round
        done = (undone.plan.settings if undone.plan else {}) or {}
        session.overrides = {int(k): float(v) for k, v in (done.get("overrides") or {}).items()}
        session.ignore = set(done.get("ignore") or ())
        back = first_stage(session) if len(session.stages) == 1 else \
            f"round {round_number(session)}"
        return f"Undone: back to {back}."


def reset(store: SessionStore, sid: str) -> str:
    session = store.session(sid)
    with session.lock:
        if len(session.stages) < 2:
            raise DepViewError("nothing to reset: no pruning round applied")
        session.stages[1:] = []
        session.overrides.clear()
        session.ignore.clear()
        session.reset_pruning_inputs()
        return f"Reset to {first_stage(session)}."


def set_override(store: SessionStore, sid: str, gid: int | None, ratio) -> str:
    """Give one group its own ratio. ``ratio=None`` removes the override (the "clear"
    button); a box left empty or holding junk is an error, never a silent clear."""
    session = store.session(sid)
    with session.lock:
        if gid is None:
            raise DepViewError("select a node of a prunable group first")
        if gid not in {g.id for g in session.stage.pruner.groups}:
            raise DepViewError(f"group {gid} does not exist in the current model")
        if ratio is None:
            session.overrides.pop(gid, None)
            return f"Override of group #{gid} removed."
        r = parse_ratio(ratio, "override ratio")
        pruner = session.stage.pruner
        why = pruner.reason(next(g for g in pruner.groups if g.id == gid), session.ignored())
        if why:  # its ratio would do nothing, and the plan refuses it: every preview failed
            raise DepViewError(f"group #{gid} is not pruned, so it takes no ratio: {why}")
        session.overrides[gid] = r
        return f"Group #{gid} will lose {r:.0%} of its units."


def set_module_override(store: SessionStore, sid: str, name: str | None, ratio) -> str:
    """Give every pruned group rooted in module ``name`` its own ratio (as ``prune
    --override NAME=R``: :meth:`Pruner.groups_named`); ``ratio=None`` removes their
    overrides."""
    session = store.session(sid)
    with session.lock:
        if not name:
            raise DepViewError("select a module first")
        gids = session.stage.pruner.groups_named(name, session.ignored())
        listed = ", ".join(f"#{g}" for g in gids)
        if ratio is None:
            for g in gids:
                session.overrides.pop(g, None)
            return f"Overrides of the groups in {name} removed ({listed})."
        r = parse_ratio(ratio, "ratio inside")
        session.overrides.update(dict.fromkeys(gids, r))
        return (f"{counted(len(gids), 'group')} in {name} will lose {r:.0%} of "
                f"{'their' if len(gids) > 1 else 'its'} units ({listed}).")


def set_ignore(store: SessionStore, sid: str, name: str | None, sides: list[str]) -> str:
    """Ignore (keep intact) a layer's outputs, inputs and/or (an LSTM with ``proj_size``) cell
    units: ``sides`` ⊆ {"out", "in", "cell"}. ``name`` may be a module: every layer inside."""
    session = store.session(sid)
    with session.lock:
        graph = session.stage.graph
        if not name or name not in graph.by_name and not any(
                n.module == name or n.module.startswith(name + ".") for n in graph.nodes):
            raise DepViewError("select a node first")
        if sides and not session.stage.pruner.holds_channels(name):
            raise DepViewError(f"{name} holds no channels a group prunes (an activation or "
                               "another op without weights): ignore the layers around it")
        if "cell" in (sides or []) and not session.stage.pruner.holds_channels(name, ["cell"]):
            raise DepViewError(f"{name} has no cell units of their own (only an LSTM with "
                               "proj_size has)")
        for s in IGNORE_SIDES:
            key = f"{name}:{s}"
            if s in (sides or []):
                session.ignore.add(key)
            else:
                session.ignore.discard(key)
        dropped = _void_overrides(session)
        kept = [SIDE_WORDS[s] for s in ("out", "in", "cell") if s in (sides or [])]
        if not kept:
            return f"{name} is no longer ignored."
        text = f"Ignoring {name}'s {' and '.join(kept)}: groups that would prune them are " \
               "left alone."
        if dropped:
            text += (f" The override{'s' if len(dropped) > 1 else ''} of "
                     f"{', '.join(f'group #{g}' for g in dropped)} "
                     f"{'were' if len(dropped) > 1 else 'was'} removed: "
                     f"{'those groups are' if len(dropped) > 1 else 'that group is'} "
                     "no longer pruned.")
        return text


def set_free_output(store: SessionStore, sid: str, name: str | None, free: bool) -> str:
    """Let model output ``name`` (its node) change width, or keep its shape again: the
    current stage's groups are found again (overrides, which name groups by id, are
    dropped)."""
    session = store.session(sid)
    with session.lock:
        stage = session.stage
        node = stage.graph.by_name.get(name or "")
        if node is None or node.op_type is not OpType.OUTPUT:
            raise DepViewError("select a model output first")
        path = output_path(node)
        was = stage.pruner.free_outputs
        frees = [p for p in was if p != path] + ([path] if free else [])
        if sorted(frees) == sorted(was):
            return ""
    new = with_free_outputs(stage, frees)  # (groups found and checked again: not locked)
    with session.lock:
        if session.stage is not stage:
            raise DepViewError("the model changed meanwhile: set it again")
        session.stages[-1] = new
        dropped = sorted(session.overrides)
        session.overrides.clear()
        session.reset_pruning_inputs()
    shown = path or "output"
    text = (f"Output '{shown}' may now change width" if free else
            f"Output '{shown}' keeps its shape again") + \
        f": {new.summary['prunable']} of {counted(new.summary['groups'], 'group')} prunable " \
        f"(before: {stage.summary['prunable']})."
    if dropped:
        text += (f" The groups were found again, so the override{'s' if len(dropped) > 1 else ''}"
                 f" of {', '.join(f'group #{g}' for g in dropped)} "
                 f"{'were' if len(dropped) > 1 else 'was'} removed.")
    return text


def free_held_output(store: SessionStore, sid: str, path: str) -> str:
    """The group panel's "let OUTPUT change width": :func:`set_free_output` for the output
    at ``path`` in the flattened outputs (the group shown is held only by it)."""
    session = store.session(sid)
    with session.lock:
        graph = session.stage.graph
    node = next((n for n in output_nodes(graph) if output_path(n) == path), None)
    if node is None:
        raise DepViewError(f"'{path}' is not an output of this model")
    return set_free_output(store, sid, node.name, True)


def _void_overrides(session: Session) -> list[int]:
    """Drop the overrides of groups the ignores now keep whole (the plan refuses a ratio for
    a group it does not prune); returns their ids. Called under the session lock."""
    pruner = session.stage.pruner
    ignore = session.ignored()
    dropped = [g.id for g in pruner.groups
               if g.id in session.overrides and pruner.reason(g, ignore)]
    for gid in dropped:
        del session.overrides[gid]
    return dropped


def override_block(store: SessionStore, sid: str, selection: dict | None) -> str:
    """Why the selected group takes no override ratio ("" when it does): it is not pruned
    (the "set" button is disabled and says why; "clear" stays, for an override set before)."""
    sel = selection or {}
    if sel.get("kind") != "op" or sel.get("gid") is None:
        return ""
    session = store.session(sid)
    with session.lock:
        pruner = session.stage.pruner
        group = next((g for g in pruner.groups if g.id == sel["gid"]), None)
        if group is None:
            return ""
        why = pruner.reason(group, session.ignored())
    return f"group #{group.id} is not pruned: {why}" if why else ""


def module_override_block(store: SessionStore, sid: str, selection: dict | None) -> str:
    """Why the selected module takes no ratio ("" when it does): no pruned group starts in
    it (its "set" button is disabled and says why)."""
    sel = selection or {}
    if sel.get("kind") != "module":
        return ""
    session = store.session(sid)
    with session.lock:
        try:
            session.stage.pruner.groups_named(selected_layer(sel), session.ignored())
        except DepViewError as exc:
            return str(exc)
    return ""


def plan_info(session: Session) -> list:
    """Overrides and ignores in force, for the prune panel."""
    items = [html.Li(f"group #{gid}: ratio {r}") for gid, r in sorted(session.overrides.items())]
    items += [html.Li(f"ignore {x}") for x in sorted(session.ignore)]
    if session.stages:
        items += [html.Li(f"free output {p or 'output'}")
                  for p in session.stage.pruner.free_outputs]
    if not items:
        return [html.Span("No overrides or ignores (set them from the inspector).",
                          className="hint")]
    return [html.Ul(items, className="plan-list")]


def settings_text(st_set: dict) -> str:
    """A round's settings as the history lists them: ``l1 30% uniform, round to 8,
    group #3 at 75%, ignoring fc:in`` (and, for the 'bn' and 'usage' importances, which groups
    they scored by L1)."""
    parts = [f"{st_set.get('importance', '?')} {st_set.get('ratio', 0):.0%} "
             f"{'global' if st_set.get('global') else 'uniform'}"]
    if (st_set.get("round_to") or 1) > 1:
        parts.append(f"round to {st_set['round_to']}")
    parts += [f"group #{gid} at {r:.0%}" for gid, r in (st_set.get("overrides") or {}).items()]
    if st_set.get("ignore"):
        parts.append("ignoring " + ", ".join(st_set["ignore"]))
    if st_set.get("free_outputs"):
        parts.append("free outputs " + ", ".join(st_set["free_outputs"]))
    fell = st_set.get("scored_by_l1")
    if fell:
        _, one, many = FALLS_BACK.get(st_set.get("importance"), FALLS_BACK["bn"])
        parts.append(f"{counted(len(fell), 'group')} without {one if len(fell) == 1 else many}"
                     " scored by L1")
    return ", ".join(parts)


def first_stage(session: Session, short: bool = False) -> str:
    """The first stage, the model or an opened export, as undo/reset name it ("the original
    model") or, ``short``, as the history lists it ("original")."""
    done = len(session.base.history) if session.base else 0
    if done:
        what = "uploaded export" if session.base.entry_key.startswith("upload:") else "export"
        tuned = ", its weights tuned since" if session.base.history[-1].get("tuned") else ""
        return f"{'' if short else 'the '}{what} (after round {done}{tuned})"
    return "original" if short else "the original model"


def history(session: Session) -> list:
    """One line per stage: the original, then each round with its settings and check."""
    rows = []
    for i, st in enumerate(session.stages):
        s = st.summary
        if i == 0:
            text = f"{first_stage(session, short=True)}: {fmt_count(s['params'])} params, " \
                   f"{s['nodes']} ops"
            rows.append(html.Li(text, className="hist-item"))
            continue
        how = settings_text((st.plan.settings if st.plan else {}) or {})
        rows.append(html.Li([
            html.B(f"round {round_number(session, i)}: "),
            f"{how} → {fmt_count(s['params'])} params, "
            f"{st.plan.n_removed if st.plan else 0} units removed",
            html.Div(verification_text(st.verification), className="hint"),
            *([html.Div(note, className="hint")] if (note := config_note(st.config)) else []),
            *([html.Div(speed_text(st.timing, unicode=True), className="hint timing")]
              if st.timing else [])],
            className="hist-item"))
    return [html.Ol(rows, className="history-list")]


# --------------------------------------------------------------------------------------------
# Charts.


#: a group that is not pruned and has more units than this shows no score chart
NAMED_SCORE_LIMIT = 4096


def group_scores(store: SessionStore, sid: str, selection: dict | None,
                 settings: dict | None) -> tuple[np.ndarray | None, list[int], str]:
    """The selected group's unit scores, the units to cut and a title: from the preview plan
    when there is one, else computed now with the current criterion and ratio."""
    gid = (selection or {}).get("gid")
    session = store.session(sid)
    with session.lock:  # what the scores depend on; they are computed after, unlocked
        pruner = session.stage.pruner
        group = next((g for g in pruner.groups if g.id == gid), None)
        plan, batch = session.preview_plan, session.batch
        ratio = session.overrides.get(gid, settings["ratio"]) if settings else 0.0
        ignore = session.ignored()
    if group is None:
        return None, [], ""
    why = pruner.reason(group, ignore)
    if why and group.n_units > NAMED_SCORE_LIMIT:
        # 50257 bars (a tied LM head) froze the tab for most of a minute, for no cut at all
        return None, [], f"group #{gid} is not pruned ({why[:120]}): no scores to show"
    from_preview = plan is not None and gid in plan.scores
    if from_preview:
        scores = np.asarray(plan.scores[gid])
        removed = list(plan.removed.get(gid, []))
        crit = plan.settings.get("importance", "")
    elif settings is None:
        return None, [], "fix the prune settings to see scores"
    else:
        crit = settings["importance"]
        try:  # Taylor, usage: a run once per batch (not holding the session), then kept by
            # the pruner, which stages share read-only
            scores = pruner.importance(group, crit, batch=batch)
        except DepViewError as exc:
            return None, [], str(exc)
        k = int(math.floor(group.n_units * ratio))
        removed = np.argsort(scores, kind="stable")[:k].tolist()
        if pruner.reason(group, ignore):
            removed = []
    how = "by the preview" if from_preview else f"at ratio {ratio:g} (not previewed)"
    return scores, removed, (f"group #{gid}: {crit} importance, {len(removed)} of "
                             f"{len(scores)} units cut {how}")


def preview_rules(store: SessionStore, sid: str) -> list[dict]:
    """New widths drawn on the graph for the current preview (none without one)."""
    session = store.session(sid)
    with session.lock:
        if session.preview_plan is None or session.view is None:
            return []
        st = session.stage
        plan = session.preview_plan
        return styles.preview_rules(session.view, st.graph, st.pruner.widths(plan),
                                    st.pruner.param_widths(plan))


def summary_lines(preview: dict) -> tuple[str, str, str]:
    p, m = preview["params"], preview["macs"]
    skipped = preview.get("skipped") or {}
    extra = (f"{counted(preview['removed_units'], 'unit')} removed from "
             f"{counted(preview['groups_pruned'], 'group')}")
    if skipped:
        extra += f"; {counted(len(skipped), 'group')} left alone"
    whole = preview.get("kept_whole") or 0
    if whole:
        st = preview.get("settings") or {}
        rt = st.get("round_to", 1)
        their = "their" if whole != 1 else "its"
        heads = preview.get("kept_whole_heads") or 0  # an attention group's units are heads
        units = "heads" if heads == whole else "units"
        why = ((f"fewer than {rt} of {their} units rank below the global cut, and cuts are "
                f"made in multiples of {rt}" if rt > 1 else
                f"none of {their} units ranks below the global cut") if st.get("global_") else
               f"the ratio rounds down to 0 {units}{f' in multiples of {rt}' if rt > 1 else ''}"
               + ("; an attention group's units are heads" if 0 < heads < whole else ""))
        extra += (f"; {whole} prunable group{'s lose' if whole != 1 else ' loses'} nothing "
                  f"({why})")
    fell = l1_fallback_text(preview.get("importance", ""), preview.get("scored_by_l1"),
                            preview.get("n_scored"))
    if fell:
        extra += f"; {fell}"
    for note in ("floor", "width"):
        if preview.get(note):
            extra += f"; {preview[note]}"
    return change(p["before"], p["after"]), change(m["before"], m["after"]), extra


#: what the status beside the buttons says while a preview or a round runs (a large model
#: takes seconds: GPT-2 small's apply ~7 s here, verifying and re-tracing the result)
BUSY_PREVIEW = "Previewing: planning, scoring and checking each group…"
BUSY_ROUND = "Working: pruning a copy, verifying it and tracing the result…"
BUSY_SENSITIVITY = "Measuring: pruning each group alone and running it…"

STALE_HINT = "Settings changed since the last preview: press Preview to see their effect."
SCORES_REDRAWN = "The model changed: the scores follow once its graph is drawn…"
GROUP_REDRAWN = "The model changed: its group follows once its graph is drawn…"


#: the buttons of the round callback, as its messages name them
ROUND_ACTIONS = {ids.APPLY: "Apply", ids.UNDO: "Undo", ids.RESET: "Reset"}


def _busy(button: str, text: str) -> list:
    """A long callback's ``running`` outputs: ``button`` disabled, ``text`` beside the
    buttons, while it runs."""
    return [(Output(button, "disabled"), True, False), (Output(ids.BUSY, "children"), text, "")]


def register(app, store: SessionStore) -> None:
    settings_state = [State(ids.IMPORTANCE, "value"), State(ids.RATIO, "value"),
                      State(ids.MODE, "value"), State(ids.ROUND_TO, "value")]

    settings_input = [Input(ids.IMPORTANCE, "value"), Input(ids.RATIO, "value"),
                      Input(ids.MODE, "value"), Input(ids.ROUND_TO, "value")]
    # what else a plan depends on: overrides/ignores (the plan list) and the Taylor batch
    edits = [Input(ids.PLAN_INFO, "children"), Input(ids.BATCH_INFO, "children")]

    @app.callback(
        Output(ids.PREVIEW_PARAMS, "children"),
        Output(ids.PREVIEW_MACS, "children"),
        Output(ids.PREVIEW_PANEL, "title"),
        Output(ids.WIDTH_CHART_BOX, "children"),
        Output(ids.PREVIEW_REV, "data"),
        Output(ids.MESSAGE, "children", allow_duplicate=True),
        Input(ids.PREVIEW, "n_clicks"),
        Input(ids.GRAPH_REV, "data"),
        *settings_input,
        *edits,
        State(ids.PREVIEW_REV, "data"),
        State(ids.SESSION, "data"),
        running=_busy(ids.PREVIEW, BUSY_PREVIEW),
        prevent_initial_call=True,
    )
    def on_preview(_n, graph, importance, ratio, mode, round_to, _plan_info, _batch, prev_rev,
                   sid):
        rev = (prev_rev or 0) + 1
        cleared = ("—", "—", "", charts.mount(ids.WIDTH_CHART, None, charts.WIDTH_HINT), rev)
        if ctx.triggered_id == ids.GRAPH_REV:  # a new model or round: the old preview is void
            return *cleared, no_update
        if ctx.triggered_id != ids.PREVIEW:  # a setting changed: the preview on screen (and
            # the widths drawn on the graph) would no longer be what Apply does
            try:
                had = clear_preview(store, sid)
            except Exception:
                had = False
            if not had:
                return (no_update,) * 6
            stale = charts.mount(ids.WIDTH_CHART, None, STALE_HINT)
            # the message bar said "Preview: params ..." of the void preview: replace it
            return "—", "—", STALE_HINT, stale, rev, message(STALE_HINT, "info")
        try:
            settings = parse_settings(importance, ratio, mode, round_to)
            store.session(sid).shown(graph, "the preview")
            pv = run_preview(store, sid, settings)
        except Exception as exc:
            return no_update, no_update, no_update, no_update, no_update, error_message(exc)
        params, macs, extra = summary_lines(pv)
        note = message(f"Preview: params {params}, MACs {macs}; {extra}.", "info")
        chart = charts.mount(ids.WIDTH_CHART, charts.width_figure(pv["layers"]),
                             charts.WIDTH_HINT)
        return params, macs, extra, chart, rev, note

    @app.callback(
        Output(ids.BATCH_ROW, "style"),
        Input(ids.IMPORTANCE, "value"),
    )
    def on_importance(importance):
        return {"display": "flex" if importance in READS_BATCH else "none"}

    @app.callback(
        Output(ids.BATCH_INFO, "children"),
        Output(ids.BATCH_UPLOAD, "contents"),
        Output(ids.MESSAGE, "children", allow_duplicate=True),
        Input(ids.BATCH_UPLOAD, "contents"),
        Input(ids.BATCH_CLEAR, "n_clicks"),
        Input(ids.GRAPH_REV, "data"),
        State(ids.BATCH_UPLOAD, "filename"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_batch(contents, _clear, rev, filename, sid):
        trig = ctx.triggered_id
        if trig == ids.BATCH_UPLOAD and not contents:
            return no_update, no_update, no_update  # the reset below
        note = no_update
        try:
            if trig != ids.GRAPH_REV:
                store.session(sid).shown(rev, "the batch change")
            if trig == ids.BATCH_UPLOAD:
                note = message(load_batch(store, sid, contents, filename), "ok")
            elif trig == ids.BATCH_CLEAR:
                clear_batch(store, sid)
            # cleared, so that uploading the same file again is seen
            return batch_info(store, sid), None, note
        except Exception as exc:
            return no_update, None, error_message(exc)

    @app.callback(
        Output(ids.STYLE_PREVIEW, "data"),
        Input(ids.PREVIEW_REV, "data"),
        Input(ids.VIEW_REV, "data"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_preview_style(_p, _v, sid):
        try:
            return {"rules": preview_rules(store, sid)}
        except Exception:
            return {"rules": []}

    @app.callback(
        Output(ids.SCORE_CHART_BOX, "children"),
        Input(ids.SHOWN, "data"),  # the selection once highlighted (also after a preview)
        Input(ids.GRAPH_REV, "data"),  # a round, undo, reset or model: the chart is void
        *settings_state,
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_scores(selection, _rev, importance, ratio, mode, round_to, sid):
        if ctx.triggered_id == ids.GRAPH_REV:
            # the new model's scores come with the selection, once the new graph is drawn
            # (seconds on GPT-2): till then the chart showed the old model's cut
            op = (selection or {}).get("kind") == "op"
            return charts.mount(ids.SCORE_CHART, None,
                                SCORES_REDRAWN if op else charts.SCORE_HINT)
        try:
            try:
                settings = parse_settings(importance, ratio, mode, round_to)
            except DepViewError:
                settings = None
            scores, removed, title = group_scores(store, sid, selection, settings)
            fig = charts.score_figure(scores, removed, title) if scores is not None and len(
                scores) else None
            return charts.mount(ids.SCORE_CHART, fig, title or charts.SCORE_HINT)
        except Exception:
            return no_update

    @app.callback(
        Output(ids.GRAPH_REV, "data", allow_duplicate=True),
        Output(ids.MESSAGE, "children", allow_duplicate=True),
        Input(ids.APPLY, "n_clicks"),
        Input(ids.UNDO, "n_clicks"),
        Input(ids.RESET, "n_clicks"),
        *settings_state,
        State(ids.GRAPH_REV, "data"),
        State(ids.SESSION, "data"),
        # (picking another model meanwhile would drop the Apply; a second click makes none)
        running=[(Output(ids.APPLY, "disabled"), True, False),
                 (Output(ids.MODEL_PICKER, "disabled"), True, False),
                 (Output(ids.UPLOAD, "disabled"), True, False),
                 *_busy(ids.PREVIEW, BUSY_ROUND)],
        prevent_initial_call=True,
    )
    def on_round(_a, _u, _r, importance, ratio, mode, round_to, rev, sid):
        trig = ctx.triggered_id
        try:
            store.session(sid).shown(rev, f"the {ROUND_ACTIONS[trig]}")
            if trig == ids.APPLY:
                text = apply_round(store, sid, parse_settings(importance, ratio, mode,
                                                              round_to))
                kind = "ok"
            elif trig == ids.UNDO:
                text, kind = undo(store, sid), "info"
            else:
                text, kind = reset(store, sid), "info"
            return graph_rev(store.session(sid), keep_view=True), message(text, kind)
        except Exception as exc:
            return no_update, error_message(exc)

    @app.callback(
        Output(ids.HISTORY, "children"),
        Output(ids.UNDO, "disabled"),
        Output(ids.RESET, "disabled"),
        Output(ids.DOWNLOAD, "disabled"),
        Output(ids.TIME_FORWARD, "disabled"),
        Input(ids.GRAPH_REV, "data"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_history(_rev, sid):
        try:
            session = store.session(sid)
            none = len(session.stages) < 2
            return history(session), none, none, none, none
        except Exception:
            return no_update, no_update, no_update, no_update, no_update

    @app.callback(
        Output(ids.SENSITIVITY_BOX, "children"),
        Output(ids.MESSAGE, "children", allow_duplicate=True),
        Input(ids.SENSITIVITY, "n_clicks"),
        Input(ids.GRAPH_REV, "data"),
        *settings_state,
        State(ids.SESSION, "data"),
        running=_busy(ids.SENSITIVITY, BUSY_SENSITIVITY),
        prevent_initial_call=True,
    )
    def on_sensitivity(_n, rev, importance, ratio, mode, round_to, sid):
        hint = charts.mount(ids.SENSITIVITY_CHART, None, charts.SENSITIVITY_HINT)
        if ctx.triggered_id == ids.GRAPH_REV:  # another model or round: its groups differ
            return hint, no_update
        try:
            settings = parse_settings(importance, ratio, mode, round_to)
            store.session(sid).shown(rev, "the sensitivity run")
            rows, text = run_sensitivity(store, sid, settings)
            fig = charts.sensitivity_figure(rows, settings["ratio"])
            return charts.mount(ids.SENSITIVITY_CHART, fig, ""), message(text, "info")
        except Exception as exc:
            return no_update, error_message(exc)

    @app.callback(
        Output(ids.HISTORY, "children", allow_duplicate=True),
        Output(ids.MESSAGE, "children", allow_duplicate=True),
        Input(ids.TIME_FORWARD, "n_clicks"),
        State(ids.GRAPH_REV, "data"),
        State(ids.SESSION, "data"),
        running=[(Output(ids.TIME_FORWARD, "disabled"), True, False),
                 (Output(ids.TIME_FORWARD, "children"), "Timing…", "Time forward")],
        prevent_initial_call=True,
    )
    def on_time(_n, rev, sid):
        try:
            store.session(sid).shown(rev, "the timing")
            text = time_round(store, sid)
            return history(store.session(sid)), message(text, "ok")
        except Exception as exc:
            return no_update, error_message(exc)

    @app.callback(
        Output(ids.OVERRIDE_RATIO, "disabled"),
        Output(ids.OVERRIDE_SET, "disabled"),
        Output(ids.OVERRIDE_SET, "title"),
        Output(ids.MODULE_RATIO, "disabled"),
        Output(ids.MODULE_RATIO_SET, "disabled"),
        Output(ids.MODULE_RATIO_SET, "title"),
        Input(ids.SHOWN, "data"),
        Input(ids.PLAN_INFO, "children"),  # an ignore can make the group unprunable
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_override_lock(selection, _info, sid):
        try:
            why = override_block(store, sid, selection)
            mod = module_override_block(store, sid, selection)
        except Exception:
            why = mod = ""
        return (bool(why), bool(why), why or OVERRIDE_SET_TITLE,
                bool(mod), bool(mod), mod or MODULE_RATIO_TITLE)

    @app.callback(
        Output(ids.PLAN_INFO, "children"),
        Output(ids.GROUP_PANEL, "children", allow_duplicate=True),
        Output(ids.MESSAGE, "children", allow_duplicate=True),
        Output(ids.MODEL_INFO, "children", allow_duplicate=True),
        Input(ids.OVERRIDE_SET, "n_clicks"),
        Input(ids.OVERRIDE_CLEAR, "n_clicks"),
        Input(ids.MODULE_RATIO_SET, "n_clicks"),
        Input(ids.MODULE_RATIO_CLEAR, "n_clicks"),
        Input(ids.IGNORE_TOGGLE, "value"),
        Input(ids.MODULE_IGNORE, "value"),
        Input(ids.FREE_OUTPUT, "value"),
        Input({"type": ids.FREE_HELD, "output": ALL}, "n_clicks"),
        Input(ids.GRAPH_REV, "data"),
        State(ids.OVERRIDE_RATIO, "value"),
        State(ids.MODULE_RATIO, "value"),
        State(ids.SELECTION, "data"),
        State(ids.GROUP_SIDE, "value"),
        State(ids.GROUP_PICK, "value"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_plan_edit(*args):
        got = plan_edit(*args)
        sid = args[-1]
        # a free output finds the groups again: the header's prunable count follows
        trig = ctx.triggered_id
        freed = trig == ids.FREE_OUTPUT or isinstance(trig, dict) and \
            trig.get("type") == ids.FREE_HELD
        if freed and got[2] is not no_update:
            try:
                return (*got, model_info(store, sid))
            except Exception:  # (the message already says what happened)
                pass
        return (*got, no_update)

    def plan_edit(_s, _c, _ms, _mc, ignore_sides, module_sides, free, _held, rev, ratio,
                  module_ratio, selection, side, pick, sid):
        trig = ctx.triggered_id
        sel = selection or {}
        try:
            text = ""
            session = store.session(sid)
            if trig != ids.GRAPH_REV:
                session.shown(rev, "the change")
            if trig == ids.OVERRIDE_SET:
                text = set_override(store, sid, sel.get("gid"), "" if ratio is None else ratio)
            elif trig == ids.OVERRIDE_CLEAR:
                text = set_override(store, sid, sel.get("gid"), None)
            elif trig in (ids.MODULE_RATIO_SET, ids.MODULE_RATIO_CLEAR):
                if sel.get("kind") != "module":
                    return no_update, no_update, no_update
                text = set_module_override(
                    store, sid, selected_layer(sel),
                    None if trig == ids.MODULE_RATIO_CLEAR else
                    "" if module_ratio is None else module_ratio)
            elif trig in (ids.IGNORE_TOGGLE, ids.MODULE_IGNORE):
                kind, sides = ("op", ignore_sides) if trig == ids.IGNORE_TOGGLE else \
                    ("module", module_sides)
                if sel.get("kind") != kind:
                    return no_update, no_update, no_update
                name = selected_layer(sel)
                current = [s for s in IGNORE_SIDES if f"{name}:{s}" in session.ignore]
                if sorted(current) == sorted(sides or []):
                    return no_update, no_update, no_update  # just showing the stored value
                text = set_ignore(store, sid, name, sides or [])
            elif trig == ids.FREE_OUTPUT:
                if sel.get("kind") != "op":
                    return no_update, no_update, no_update
                text = set_free_output(store, sid, sel.get("name"), "free" in (free or []))
                if not text:  # just showing the stored value
                    return no_update, no_update, no_update
            elif isinstance(trig, dict) and trig.get("type") == ids.FREE_HELD:
                if not ctx.triggered[0]["value"]:  # the button was drawn, not clicked
                    return no_update, no_update, no_update
                text = free_held_output(store, sid, trig["output"])
            panel = no_update
            if trig == ids.GRAPH_REV and sel.get("kind") == "op":
                # the new model's group comes with the selection once its graph is drawn
                # (seconds on GPT-2): till then the panel showed the old model's members
                panel = [html.P(GROUP_REDRAWN, className="hint")]
            elif sel.get("kind") == "op":
                panel = inspect(store, sid, sel, side or "out", pick).group_panel
            return plan_info(session), panel, message(text, "info") if text else no_update
        except Exception as exc:
            return no_update, no_update, error_message(exc)
