"""Downloads: the pruned checkpoint directory as a zip, the graph JSON and the groups JSON.

The checkpoint is not sent through the callback (base64 inside its JSON response: 138 MB of
JSON and about 20 s for a pruned ResNet-50). The callback writes the zip to a file, registers
it with :class:`~viewer.app.downloads.Downloads` and answers with a message holding a one-time
link; a client-side callback follows that link, so the browser downloads the file natively.
The zip leaves ``model.pt2`` out unless asked: ``torch.export`` takes most of the time an
export needs and its program holds the weights a second time. The message offers it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dash import ALL, ClientsideFunction, Input, Output, State, ctx, dcc, html, no_update

from viewer.core.errors import DepViewError
from viewer.core.export import dumps

from .. import ids
from ..downloads import Downloads
from ..state import SessionStore
from .common import error_message, spec_slug

#: the class of the link a client-side callback follows as soon as the message shows it
#: (assets/depview.js, ``download``)
AUTO_LINK = "dv-download"


def _slug(session) -> str:
    return spec_slug(session.base.source.get("spec") if session.base else None)


def _stage_slug(session) -> str:
    """``demo-cnn`` for the loaded model, ``demo-cnn-pruned-round2`` after a round (or for an
    opened export): a file name says which model it describes."""
    from .prune import round_number

    n = round_number(session)
    return f"{_slug(session)}-pruned-round{n}" if n else _slug(session)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint zip waiting in :class:`Downloads`: fetch it once with ``token``."""

    token: str
    filename: str
    size: int  #: bytes
    files: tuple[str, ...]  #: what the zip holds
    stage: str  #: key of the stage it exports
    pt2: dict  #: report.json's ``pt2`` entry: written, or why not
    #: state_dict names that hold one tensor (tied weights: GPT-2's wte and lm_head), which
    #: model.safetensors stores once per name
    tied: tuple[tuple[str, ...], ...] = ()
    tied_bytes: int = 0  #: what the extra copies of tied tensors add to model.safetensors


def tied_names(model) -> tuple[tuple[str, ...], int]:
    """The state_dict names of ``model`` that hold one tensor (weights tied between modules),
    in groups in state_dict order, and the bytes their copies add to a file that stores each
    name on its own, as safetensors does (it refuses tensors that share memory).

        >>> tied_names(gpt2)
        ((('transformer.wte.weight', 'lm_head.weight'),), 154389504)
    """
    held: dict[tuple, list[str]] = {}
    size: dict[tuple, int] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if t.device.type == "meta":  # no storage to compare
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
               t.dtype)
        held.setdefault(key, []).append(name)
        size[key] = t.numel() * t.element_size()
    tied = tuple((k, tuple(v)) for k, v in held.items() if len(v) > 1)
    return tuple(v for _k, v in tied), sum(size[k] * (len(v) - 1) for k, v in tied)


def prepare_checkpoint(store: SessionStore, downloads: Downloads, sid: str, pt2: bool = False,
                       stage: str | None = None) -> Checkpoint:
    """Write the current round's export directory (model.safetensors, plan.json,
    report.json, and model.pt2 when ``pt2`` and the model exports) as a zip and hand it to
    ``downloads`` for this session. Reloadable with ``load_pruned``, no pickle.
    ``stage`` (a stage key) refuses to export anything but that stage.

    The export runs without the session lock (clicks on the graph are not kept waiting): it
    only reads the two stages, which never change once made."""
    from viewer.core.export import export_dir, write_zip

    session = store.session(sid)
    with session.lock:
        if len(session.stages) < 2:
            raise DepViewError("nothing to download yet: apply a pruning round first")
        prev, cur = session.stages[-2], session.stages[-1]
        if stage is not None and cur.key != stage:
            raise DepViewError("the model changed since that offer: press Checkpoint (.zip) "
                               "again")
        source, history = session.base.source, session.history_rounds()
        name = _stage_slug(session)  # a checkpoint exists from round 1 on
    tied, tied_bytes = tied_names(cur.model)
    name += "-pt2.zip" if pt2 else ".zip"
    with tempfile.TemporaryDirectory(dir=downloads.root) as tmp:  # same disk: a rename
        out = export_dir(prev.pruner, cur.plan, cur.model, Path(tmp) / "export", source,
                         cur.verification, history=history, pt2=pt2, timing=cur.timing)
        report = json.loads((out / "report.json").read_text())
        files = tuple(sorted(f.name for f in out.iterdir()))
        path = write_zip(out, Path(tmp) / name)
        size = path.stat().st_size
        token = downloads.add(sid, path, name)  # moved out before the directory goes
    return Checkpoint(token, name, size, files, cur.key, report["pt2"], tied, tied_bytes)


def fmt_bytes(n: int) -> str:
    """``54_512_000`` -> ``"54.5 MB"``."""
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def ready_message(url: str, ck: Checkpoint) -> html.Div:
    """The message that hands over a checkpoint: a link the page follows at once (it is
    also there to click, should the browser have blocked the automatic download) and, for a
    zip without model.pt2, the offer to add one."""
    parts: list = ["Checkpoint ready: ",
                   html.A(ck.filename, href=url, download=ck.filename, className=AUTO_LINK),
                   f" ({fmt_bytes(ck.size)}: {', '.join(sorted(ck.files))}; the link works "
                   "once). "]
    kind = "ok"
    if ck.tied:
        parts.append(tied_text(ck) + " ")
    if ck.pt2.get("reason") == "not requested":
        parts.append(html.Button(
            "add model.pt2", id={"type": ids.DOWNLOAD_PT2, "stage": ck.stage},
            className="btn small", n_clicks=0,
            title="the same zip plus model.pt2, a torch.export program of the pruned model: "
                  "about twice the size, and torch.export takes a while"))
    elif not ck.pt2.get("written"):
        kind = "warn"
        parts.append(f"No model.pt2: {ck.pt2.get('reason')}.")
    return html.Div(parts, className=f"msg msg-{kind}", role="status")


def tied_text(ck: Checkpoint, most: int = 3) -> str:
    """What the message says about tied weights in ``model.safetensors``.

        >>> tied_text(ck)  # a pruned GPT-2
        'Tied weights are stored once per name in model.safetensors (the format cannot share
        a tensor; load_pruned keeps them tied): transformer.wte.weight = lm_head.weight, 154.4
        MB more.'
    """
    shown = "; ".join(" = ".join(names) for names in ck.tied[:most])
    if len(ck.tied) > most:
        shown += f"; and {len(ck.tied) - most} more"
    return ("Tied weights are stored once per name in model.safetensors (the format cannot "
            f"share a tensor; load_pruned keeps them tied): {shown}, "
            f"{fmt_bytes(ck.tied_bytes)} more.")


def checkpoint_answer(app, store: SessionStore, downloads: Downloads, sid: str,
                      pt2_for: str | None = None) -> html.Div:
    """The message for a press of Checkpoint (.zip) or, with ``pt2_for`` (a stage key), of
    "add model.pt2": the link to the prepared zip, or why there is no model.pt2 (then nothing
    is downloaded: the zip would be the one the user already has)."""
    ck = prepare_checkpoint(store, downloads, sid, pt2=pt2_for is not None, stage=pt2_for)
    if pt2_for is not None and not ck.pt2.get("written"):
        downloads.discard(ck.token)
        return no_pt2_message(ck)
    return ready_message(downloads.url(app, ck.token), ck)


def no_pt2_message(ck: Checkpoint) -> html.Div:
    """The answer to "add model.pt2" when torch.export did not take the model: nothing is
    downloaded again (the zip would be the one the user has)."""
    return html.Div(f"No model.pt2: {ck.pt2.get('reason')}. The checkpoint you downloaded is "
                    "complete without it.", className="msg msg-warn", role="status")


def graph_json(store: SessionStore, sid: str) -> tuple[str, str]:
    """The current graph as the documented JSON schema."""
    session = store.session(sid)
    with session.lock:
        text = dumps(session.stage.graph.to_dict(), indent=1)  # strict: -inf as "-Infinity"
        return text, f"{_stage_slug(session)}-graph.json"


def groups_json(store: SessionStore, sid: str) -> tuple[str, str]:
    """Every group of the current model with its members, index lists and reason."""
    session = store.session(sid)
    with session.lock:
        pruner = session.stage.pruner
        ignore = session.ignored()
        rows = [pruner.group_dict(g, ignore) for g in pruner.groups]
        spec = session.base.source.get("spec") if session.base else None
        out = {"spec": spec, "groups": rows}
        if pruner.free_outputs:  # (as groups --json writes them)
            out["free_outputs"] = pruner.free_outputs
        text = dumps(out, indent=1)
        return text, f"{_stage_slug(session)}-groups.json"


def register(app, store: SessionStore, downloads: Downloads) -> None:
    @app.callback(
        Output(ids.DOWNLOAD_FILE, "data"),
        Output(ids.MESSAGE, "children", allow_duplicate=True),
        Input(ids.DOWNLOAD, "n_clicks"),
        Input({"type": ids.DOWNLOAD_PT2, "stage": ALL}, "n_clicks"),
        Input(ids.DOWNLOAD_GRAPH, "n_clicks"),
        Input(ids.DOWNLOAD_GROUPS, "n_clicks"),
        State(ids.GRAPH_REV, "data"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_download(_z, _pt2, _g, _r, rev, sid):
        trig = ctx.triggered_id
        try:
            if not isinstance(trig, dict) or ctx.triggered[0]["value"]:  # (a click)
                store.session(sid).shown(rev, "the download")
            if trig in (ids.DOWNLOAD_GRAPH, ids.DOWNLOAD_GROUPS):
                make = graph_json if trig == ids.DOWNLOAD_GRAPH else groups_json
                text, name = make(store, sid)
                return dcc.send_string(text, name), no_update
            if trig == ids.DOWNLOAD:
                stage = None
            elif isinstance(trig, dict) and ctx.triggered[0]["value"]:
                stage = trig["stage"]  # "add model.pt2" in the message of that stage's zip
            else:  # the offer was drawn or removed, not clicked
                return no_update, no_update
            return no_update, checkpoint_answer(app, store, downloads, sid, stage)
        except Exception as exc:
            return no_update, error_message(exc)

    # the browser follows the one-time link of a ready message (a native download)
    app.clientside_callback(
        ClientsideFunction("depview", "download"),
        Output(ids.FIT_DONE, "data", allow_duplicate=True),
        Input(ids.MESSAGE, "children"),
        prevent_initial_call=True,
    )
