"""Downloads: the pruned checkpoint directory as a zip, the graph JSON and the groups JSON."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from dash import Input, Output, State, ctx, dcc, no_update

from viewer.core.errors import DepViewError

from .. import ids
from ..state import SessionStore
from .common import error_message, message


def _slug(session) -> str:
    spec = session.base.source.get("spec", "model") if session.base else "model"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in spec).strip("-")


def checkpoint_zip(store: SessionStore, sid: str) -> tuple[bytes, str]:
    """The current round's export directory (model.safetensors, plan.json, report.json, ...)
    zipped in memory: ``(bytes, filename)``. Reloadable with ``load_pruned``, no pickle."""
    from viewer.core.export import export_dir, zip_dir

    session = store.session(sid)
    with session.lock:
        if len(session.stages) < 2:
            raise DepViewError("nothing to download yet: apply a pruning round first")
        prev, cur = session.stages[-2], session.stages[-1]
        with tempfile.TemporaryDirectory() as tmp:
            out = export_dir(prev.pruner, cur.plan, cur.model, Path(tmp) / "export",
                             session.base.source, cur.verification,
                             history=session.history_rounds())
            data = zip_dir(out)
        return data, f"{_slug(session)}-pruned-round{len(session.stages) - 1}.zip"


def graph_json(store: SessionStore, sid: str) -> tuple[str, str]:
    """The current graph as the documented JSON schema."""
    session = store.session(sid)
    with session.lock:
        text = json.dumps(session.stage.graph.to_dict(), indent=1)
        return text, f"{_slug(session)}-graph.json"


def groups_json(store: SessionStore, sid: str) -> tuple[str, str]:
    """Every group of the current model with its members, index lists and reason."""
    session = store.session(sid)
    with session.lock:
        pruner = session.stage.pruner
        ignore = {tuple(x.rsplit(":", 1)) for x in session.ignore}
        rows = [pruner.group_dict(g, ignore) for g in pruner.groups]
        spec = session.base.source.get("spec") if session.base else None
        text = json.dumps({"spec": spec, "groups": rows}, indent=1)
        return text, f"{_slug(session)}-groups.json"


def register(app, store: SessionStore) -> None:
    @app.callback(
        Output(ids.DOWNLOAD_FILE, "data"),
        Output(ids.MESSAGE, "children", allow_duplicate=True),
        Input(ids.DOWNLOAD, "n_clicks"),
        Input(ids.DOWNLOAD_GRAPH, "n_clicks"),
        Input(ids.DOWNLOAD_GROUPS, "n_clicks"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_download(_z, _g, _r, sid):
        trig = ctx.triggered_id
        try:
            if trig == ids.DOWNLOAD:
                data, name = checkpoint_zip(store, sid)
                return dcc.send_bytes(data, name), message(f"Downloaded {name}.", "ok")
            text, name = (graph_json if trig == ids.DOWNLOAD_GRAPH else groups_json)(store, sid)
            return dcc.send_string(text, name), no_update
        except Exception as exc:
            return no_update, error_message(exc)
