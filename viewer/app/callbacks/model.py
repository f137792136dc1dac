"""Choosing a model: a picker entry (demos and start-up specs) or an uploaded export zip."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

from dash import Input, Output, State, ctx, html, no_update

from viewer.core.errors import DepViewError
from viewer.core.text import counted

from .. import ids
from ..state import Base, Session, SessionStore, make_stage
from .common import decode_upload, error_message, fmt_count, message

#: how many models' applied rounds a session keeps while another model is shown
SHELF_SIZE = 3
#: what the status beside the prune buttons says while a model loads (a large one, or one
#: whose groups need many checks, takes seconds: HF PVT about 9 s here)
BUSY_LOADING = "Loading the model: tracing it and checking its groups…"


#: what a page reloaded while an Apply of its session runs says
APPLY_RUNNING = ("An Apply started before the page reloaded is still running: reload again "
                 "in a moment to see its round.")


def _fresh(session: Session, base: Base, stages: list | None = None) -> None:
    session.base = base
    session.stages = stages or [base.stage]
    session.collapsed = None
    session.view = None
    session.overrides.clear()
    session.ignore.clear()
    session.reset_pruning_inputs()
    session.batch, session.batch_label = None, ""  # a batch fits the model it was given for


def load_entry(store: SessionStore, sid: str, spec: str) -> str:
    """Load a picker entry into the session (its history starts over). Returns a note for
    the message bar ("" when there is nothing to say)."""
    note = ""
    if store.was_evicted(sid):
        note = "This page's session had expired on the server; it starts over."
    session = store.session(sid, create=True)
    base = store.base(spec)
    with session.lock:
        if session.base is not None and session.base.entry_key == spec:
            return ""  # already shown (the picker set to it): its rounds stay
        note = " ".join(filter(None, [note, _switch(session, base)]))
    if weightless(base.stage.model):
        note = " ".join(filter(None, [note, (
            "This model is on the meta device, without weights: its graph and groups are "
            "real; previews use the 'random' importance; checkpoints need --device cpu.")]))
    return note


def _switch(session: Session, base: Base) -> str:
    """Show ``base``'s model. Rounds applied to the model left are kept (picking it again
    brings them back; an uploaded export's cannot be picked again: they are dropped, and the
    note says so); ``base``'s kept rounds come back. Returns a note ("" for none)."""
    notes = []
    left = session.base
    rounds = len(session.stages) - 1
    if left is not None and rounds:
        name = _label(left)
        if left.entry_key.startswith("upload:"):
            notes.append(f"Dropped the {_rounds(rounds)} applied to {name} (download a "
                         "checkpoint before switching to keep rounds).")
        else:
            session.shelf[left.entry_key] = list(session.stages)  # (never there: popped
            # below when it was shown, so it goes last, as the latest left)
            notes.append(f"{name} keeps its {_rounds(rounds)}: pick it again to go on from "
                         f"{'it' if rounds == 1 else 'them'}.")
            while len(session.shelf) > SHELF_SIZE:
                old, stages = session.shelf.popitem(last=False)
                notes.append(f"(Dropped the {_rounds(len(stages) - 1)} applied to {old}: "
                             f"rounds of at most {SHELF_SIZE} other models are kept.)")
    kept = session.shelf.pop(base.entry_key, None)
    _fresh(session, base, kept)
    if kept:
        notes.insert(0, f"Back to {base.entry_key} after its {_rounds(len(kept) - 1)} "
                        "(Reset goes back to the original).")
    return " ".join(notes)


def _label(base: Base) -> str:
    """How notes name a model: its picker entry, or "the uploaded x.zip"."""
    return f"the {uploaded_label(base.entry_key.removeprefix('upload:'))}" \
        if base.entry_key.startswith("upload:") else base.entry_key


def _rounds(n: int) -> str:
    return counted(n, "round")


def peek_source(data: bytes) -> dict:
    """plan.json's ``source`` from an export zip, read without loading anything."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DepViewError("the upload is not a zip file") from exc
    names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "plan.json"]
    if not names:
        raise DepViewError("the zip is not a DepView export (no plan.json)")
    from viewer.core.export import json_limit, read_zip_json

    weights = [i.file_size for i in zf.infolist()
               if i.filename.rsplit("/", 1)[-1] == "model.safetensors"]
    try:  # (bounded: a plan.json that unpacks to gigabytes is refused unpacked)
        plan = read_zip_json(zf, names[0], "the zip", json_limit(max(weights, default=0)))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DepViewError("plan.json in the zip is not valid JSON") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DepViewError(f"the zip is damaged: {exc}") from None
    source = plan.get("source") if isinstance(plan, dict) else None
    if not isinstance(source, dict) or "spec" not in source:
        raise DepViewError("plan.json in the zip names no source model")
    from viewer.core.export import plan_problem

    problem = plan_problem(plan)
    if problem:
        raise DepViewError(f"plan.json in the zip is damaged: {problem}")
    return source


def load_upload(store: SessionStore, sid: str, contents: str, filename: str | None) -> str:
    """Load an uploaded export zip (plan.json + model.safetensors; never pickle). The model
    it was pruned from must be one this server offers: nothing else is ever imported."""
    data = decode_upload(contents, filename)
    from viewer.core.export import read_export_zip

    try:  # every error names the file: the user may have dropped several in turn
        source = peek_source(data)
        refusal = store.source_refusal(source)
        if refusal:
            raise DepViewError(refusal)
        model, plan, lm = read_export_zip(data)
    except DepViewError as exc:
        raise DepViewError(f"{filename or 'the upload'}: {exc}") from None
    stage = make_stage(model, lm.inputs, lm.output_layers)
    rounds = list(plan.get("rounds") or [])
    base = Base(f"upload:{filename or 'export.zip'}", stage, lm.inputs, list(lm.output_layers),
                dict(plan["source"]), f"uploaded {filename or 'export'}: {source['spec']} "
                f"pruned in {_rounds(len(rounds))}", rounds)
    session = store.session(sid, create=True)
    with session.lock:
        note = _switch(session, base)
    n = len(rounds)
    return " ".join(filter(None, [f"Loaded {filename or 'the export'}: {source['spec']} "
                                  f"pruned in {_rounds(n)}.", note]))


def model_info(store: SessionStore, sid: str) -> list:
    """The header lines describing the current model (after the latest round, if any)."""
    session = store.session(sid)
    s = session.stage.summary
    desc = session.base.description if session.base else ""
    here = len(session.stages) - 1
    if here:
        rounds = f"{here} pruning round{'s' if here > 1 else ''}"
        desc += " — " if desc else ""
        desc += f"then {rounds} more" if session.base.history else f"after {rounds}"
    return [
        html.Span(desc, className="model-desc"),
        html.Span(f"{s['nodes']} ops · {s['edges']} tensors · {fmt_count(s['params'])} params · "
                  f"{s['groups']} groups ({s['prunable']} prunable)", className="model-stats"),
    ]


def importance_for(store: SessionStore, sid: str, current: str | None) -> str | None:
    """The importance to show for the current model: 'random' when the model has no weights
    (the meta device) and another criterion is picked; None to leave the choice alone."""
    no_weights = weightless(store.session(sid).stage.model)
    return "random" if no_weights and current != "random" else None


def weightless(model) -> bool:
    """Built on the meta device: shapes without values."""
    return any(p.device.type == "meta" for p in model.parameters())


def graph_rev(session: Session, keep_view: bool = False) -> dict:
    """The value written to the graph-rev store: changes whenever the current stage does.
    ``keep_view``: the same model in another round (apply, undo, reset): the graph keeps its
    viewport, so the part the user was looking at stays on screen."""
    return {"stage": session.stage.key, "n": len(session.stages), "nonce": uuid.uuid4().hex,
            "keep_view": keep_view}


def uploaded_label(filename: str | None) -> str:
    """What the picker shows while an uploaded export is loaded (it has no entry there)."""
    return f"uploaded {filename or 'export'}"


def picker_after_failure(store: SessionStore, sid: str) -> tuple:
    """Picker value and placeholder when picking a model failed: back to the model still
    drawn, labelled as it was when it loaded."""
    try:
        base = store.session(sid).base
    except DepViewError:
        base = None
    if base is None:
        return None, "pick a model"
    return _picker_for(store, base)


def _picker_for(store: SessionStore, base: Base) -> tuple:
    """Picker value and placeholder showing ``base``: its entry, or (having none) the label
    of the uploaded export."""
    if base.entry_key in store.entries:
        return base.entry_key, no_update
    return None, uploaded_label(base.entry_key.removeprefix("upload:"))


def choose_model(store: SessionStore, sid: str, spec: str | None, contents: str | None,
                 filename: str | None, upload: bool, initial: bool = False) -> tuple:
    """The model callback's outputs (graph rev, message, picker value, picker placeholder,
    upload contents) for a picked ``spec`` or, ``upload``, an uploaded zip. A load that fails
    changes nothing but the message (a failed pick puts the picker back); the upload box is
    always emptied, so that the same file can be opened again. ``initial``: the page was
    (re)loaded; a session that already shows a model (the page's id survives a reload in the
    tab's sessionStorage) keeps it with its rounds, and the picker shows it."""
    if initial:
        kept = _reloaded(store, sid)
        if kept is not None:
            return kept
    if (upload and not contents) or (not upload and not spec):
        return (no_update,) * 5  # this callback's own reset of the picker or the upload
    try:
        if upload:
            note, kind = load_upload(store, sid, contents, filename), "ok"
        else:
            note, kind = load_entry(store, sid, spec), "warn"
        # the picker shows what is loaded: nothing of its own after an upload (so that
        # picking the previous model again loads it)
        picker = (None, uploaded_label(filename)) if upload else (no_update,) * 2
        return graph_rev(store.session(sid)), message(note, kind) if note else None, \
            *picker, None
    except Exception as exc:
        picker = (no_update,) * 2 if upload else picker_after_failure(store, sid)
        return no_update, error_message(exc), *picker, None


def _reloaded(store: SessionStore, sid: str) -> tuple | None:
    """The model callback's outputs for a reloaded page whose session is still on the server
    (None otherwise): the same model and rounds, nothing rebuilt."""
    if not sid or store.was_evicted(sid):
        return None
    try:
        session = store.session(sid)
    except DepViewError:
        return None
    with session.lock:
        base, rounds, applying = session.base, len(session.stages) - 1, session.applying
    if base is None:
        return None
    picker = _picker_for(store, base)
    text = f"Reloaded: {_label(base)} with its {_rounds(rounds)}." if rounds else ""
    if applying:  # (its round lands in the session, unseen by this page till a reload)
        text = " ".join(filter(None, [text, APPLY_RUNNING]))
    note = message(text, "warn" if applying else "info") if text else None
    return graph_rev(session), note, *picker, None


def register(app, store: SessionStore) -> None:
    @app.callback(
        Output(ids.GRAPH_REV, "data"),
        Output(ids.MESSAGE, "children"),
        Output(ids.MODEL_PICKER, "value"),
        Output(ids.MODEL_PICKER, "placeholder"),
        Output(ids.UPLOAD, "contents"),
        Input(ids.MODEL_PICKER, "value"),
        Input(ids.UPLOAD, "contents"),
        State(ids.UPLOAD, "filename"),
        State(ids.SESSION, "data"),
        running=[(Output(ids.MODEL_PICKER, "disabled"), True, False),
                 (Output(ids.BUSY, "children"), BUSY_LOADING, "")],
    )
    def on_model(spec, contents, filename, sid):
        return choose_model(store, sid, spec, contents, filename,
                            ctx.triggered_id == ids.UPLOAD, initial=ctx.triggered_id is None)

    @app.callback(
        Output(ids.IMPORTANCE, "value"),
        Input(ids.GRAPH_REV, "data"),
        State(ids.IMPORTANCE, "value"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_model_importance(_rev, current, sid):
        try:
            choice = importance_for(store, sid, current)
        except Exception:
            return no_update
        return no_update if choice is None else choice

    @app.callback(
        Output(ids.MODEL_INFO, "children"),
        Input(ids.GRAPH_REV, "data"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_model_info(_rev, sid):
        try:
            return model_info(store, sid)
        except Exception:
            return no_update
