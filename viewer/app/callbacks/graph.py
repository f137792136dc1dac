"""The drawn graph: elements (with collapse/expand), legend, search, stylesheet, fit, images."""

from __future__ import annotations

import time
from fnmatch import fnmatchcase

from dash import ALL, ClientsideFunction, Input, Output, State, ctx, html, no_update

from viewer.core.optypes import STYLES, OpType
from viewer.core.plan import is_pattern
from viewer.core.text import counted

from .. import ids, styles
from ..state import SessionStore
from ..viewmodel import View, ancestors, module_path
from .common import error_message, message, spec_slug

MAX_HITS = 200  #: search hits highlighted at most


def top_modules(view: View) -> frozenset[str]:
    """Modules directly under the root (what "collapse all" collapses)."""
    return frozenset(p for p in view.module_ids if "." not in p)


def module_to_toggle(view: View, graph, selection: dict | None) -> str | None:
    """The module a toggle acts on: the selected module itself, or the module holding the
    selected op (so toggling an op collapses its box)."""
    if not selection:
        return None
    if selection.get("kind") == "module":
        return selection.get("name")
    node = graph.by_name.get(selection.get("name", ""))
    if node is None:
        return None
    path = view.boxes[node.id]
    return path or None


def render(store: SessionStore, sid: str, action: str = "new",
           path: str | None = None) -> tuple[View, str | None]:
    """Recompute the drawn view for an action: ``new`` (new graph: default collapse),
    ``toggle`` a module ``path``, ``expand-all``, ``collapse-all``. Returns the view and the
    element to zoom to afterwards (the toggled module), if any."""
    session = store.session(sid)
    with session.lock:
        stage = session.stage
        zoom = None
        current = store.view(stage, session.collapsed)
        if action == "new":
            view = current
        elif action == "toggle" and path:
            col = set(current.collapsed)
            if path in col:
                col.discard(path)
            else:
                col.add(path)
                # collapsing hides deeper collapsed modules; forget them so expanding later
                # shows the module's ops
                col = {p for p in col if p == path or not p.startswith(path + ".")}
            view = store.view(stage, col)
            zoom = view.module_ids.get(path)
            if zoom is not None and zoom not in view.data:  # inside a collapsed ancestor
                zoom = next((view.module_ids[a] for a in ancestors(path)
                             if view.module_ids.get(a) in view.data), None)
        elif action == "expand-all":
            view = store.view(stage, ())
        elif action == "collapse-all":
            view = store.view(stage, top_modules(current))
        else:
            view = current
        session.view = view
        session.collapsed = view.collapsed
        return view, zoom


def legend(view: View, active: str | None = None) -> list:
    """One button per op type present (swatch, label, count), in the enum's order; the one
    the legend highlights (``active``) marked as pressed."""
    items = []
    for t in OpType:
        n = view.types.get(t.value)
        if not n:
            continue
        st = STYLES[t]
        items.append(html.Button(
            [html.Span(className="swatch", style={"background": st.color}),
             html.Span(st.label), html.Span(f"{n}", className="count")],
            id={"type": ids.LEGEND_ITEM, "op": t.value}, className=legend_class(t.value, active),
            title=f"highlight every {st.label} node ({t.value})", n_clicks=0,
            **{"aria-pressed": legend_pressed(t.value, active)}))
    return items


def legend_class(op: str, active: str | None) -> str:
    """A legend button's class: pressed (``active``) while its type is highlighted."""
    return "legend-item active" if op == active else "legend-item"


def legend_pressed(op: str, active: str | None) -> str:
    """A legend button's ``aria-pressed``: what its class shows, for screen readers."""
    return "true" if op == active else "false"


def legend_after(view: View, trig, round_rev: dict | None, current: dict | None):
    """The legend highlight a new drawing keeps: none for another model (a type picked on the
    last one would fade the new graph for no visible reason) or when the type is not drawn
    any more (no button would be left to clear it); else the same. Returns (the op type
    highlighted, the store's new value or None to leave it)."""
    op = (current or {}).get("op")
    if not op:
        return None, None
    other_model = trig == ids.GRAPH_REV and not (round_rev or {}).get("keep_view")
    if other_model or not view.types.get(op):
        return None, {"op": None, "rules": []}
    return op, None


def view_info(view: View) -> str:
    n_col = len(view.collapsed)
    txt = f"{view.n_nodes} drawn"
    if n_col:
        txt += f" · {n_col} module{'s' if n_col > 1 else ''} collapsed"
    return txt


def type_names(t: OpType) -> set[str]:
    """What a search for an op type may say, lower case: its value and each alternative of
    its label (``"LayerNorm/RMSNorm"`` -> ``layernorm``, ``rmsnorm`` and the whole label)."""
    label = STYLES[t].label.lower()
    return {t.value, label, *(a.strip() for a in label.split("/"))}


def node_class(node) -> str:
    """The class of the module an op ran as (``"Conv2d"``), lower case; "" for a function."""
    return node.target.removeprefix("module:").rsplit(".", 1)[-1].lower() \
        if node.is_module else ""


def search(store: SessionStore, sid: str, query: str | None) -> tuple[list[str], str]:
    """Element ids matching ``query``, case-insensitively: a substring of a node name, module
    path or module class (``"Conv2d"``, ``"GPT2Attention"``), or an op type by its name or
    any alternative of its label (``"LayerNorm"`` and ``"RMSNorm"`` both find
    ``LayerNorm/RMSNorm``); a query with ``*`` or ``?`` is a wildcard pattern that must match
    a whole name, path or class (``*.mlp``: every block's MLP, as ``--override`` reads it);
    and a one-line summary. One pass over the nodes and one over the modules: ~10 ms on a
    5000-node graph."""
    q = (query or "").strip().lower()
    if not q:
        return [], ""
    session = store.session(sid)
    view, stage = session.view, session.stage
    if view is None:
        return [], ""
    if is_pattern(q):
        def found(*texts: str) -> bool:
            return any(fnmatchcase(t.lower(), q) for t in texts)
        types = set()
    else:
        def found(*texts: str) -> bool:
            return any(q in t.lower() for t in texts)
        types = {t for t in OpType if q in type_names(t)}
    hits = [n.id for n in stage.graph.nodes
            if n.op_type in types or found(n.name, node_class(n))]
    els = view.elements_of(hits)
    classes = stage.module_classes
    mods = [eid for p, eid in view.module_ids.items()
            if found(p, module_path(p), classes.get(module_path(p), ""))]
    els = list(dict.fromkeys(els + [eid for eid in mods if eid in view.data]))
    if not els:
        return [], f"no match for {query.strip()!r}"
    shown = els[:MAX_HITS]
    more = f" (first {MAX_HITS} shown)" if len(els) > MAX_HITS else ""
    what = [counted(n, kind) for n, kind in ((len(hits), "op"), (len(mods), "module")) if n]
    verb = "matches" if len(hits) + len(mods) == 1 else "match"
    return shown, f"{' and '.join(what)} {verb}, {len(els)} drawn{more}"


def image_request(kind: str, name: str) -> dict:
    """The Cytoscape ``generateImage`` value that downloads the view as PNG or SVG."""
    opts = {"full": True, "bg": "#ffffff"}
    if kind == "png":
        opts["scale"] = 2
    return {"type": kind, "action": "download", "filename": name, "options": opts}


def register(app, store: SessionStore) -> None:
    @app.callback(
        Output(ids.GRAPH, "elements"),
        Output(ids.LEGEND, "children"),
        Output(ids.VIEW_INFO, "children"),
        Output(ids.VIEW_REV, "data"),
        Output(ids.ZOOM_TARGET, "data"),
        Output(ids.MESSAGE, "children", allow_duplicate=True),
        Output(ids.STYLE_LEGEND, "data", allow_duplicate=True),
        Input(ids.GRAPH_REV, "data"),
        Input(ids.DBLTAP, "data"),
        Input(ids.TOGGLE_MODULE, "n_clicks"),
        Input(ids.EXPAND_ALL, "n_clicks"),
        Input(ids.COLLAPSE_ALL, "n_clicks"),
        State(ids.SELECTION, "data"),
        State(ids.VIEW_REV, "data"),
        State(ids.STYLE_LEGEND, "data"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_view(round_rev, dbl, _t, _e, _c, selection, view_rev, legend_style, sid):
        trig = ctx.triggered_id
        try:
            path = None
            if trig == ids.GRAPH_REV:
                action = "new"
            elif trig in (ids.DBLTAP, ids.TOGGLE_MODULE):
                session = store.session(sid)
                sel = {"kind": dbl.get("kind"), "name": dbl.get("name")} \
                    if trig == ids.DBLTAP and dbl else selection
                if session.view is None:
                    return (no_update,) * 7
                path = module_to_toggle(session.view, session.stage.graph, sel)
                if not path:
                    return (no_update,) * 5 + (message(
                        "Select a module (or a node inside one) to collapse or expand.",
                        "warn"), no_update)
                action = "toggle"
            else:
                action = trig
            view, zoom = render(store, sid, action, path)
            rev = (view_rev or 0) + 1
            # a new graph opens at a readable zoom at its top; a toggled module is zoomed to
            # ``n``: the browser waits until Cytoscape holds all elements before placing
            target = {"ids": [zoom], "n": len(view.elements)} if zoom else \
                {"top": True, "n": len(view.elements)}
            if trig == ids.GRAPH_REV and (round_rev or {}).get("keep_view"):
                target = no_update  # another round of the same model: stay where the user is
            note = no_update
            if action == "expand-all" and view.n_nodes > store.max_visible:
                note = message(f"Drawing all {view.n_nodes} ops: the page may be slow; "
                               "'Collapse all' brings it back.", "warn")
            active, reset = legend_after(view, trig, round_rev, legend_style)
            return (view.elements, legend(view, active), view_info(view), rev, target, note,
                    no_update if reset is None else reset)
        except Exception as exc:
            return (no_update,) * 5 + (error_message(exc), no_update)

    @app.callback(
        Output(ids.STYLE_LEGEND, "data"),
        Output({"type": ids.LEGEND_ITEM, "op": ALL}, "className"),
        Output({"type": ids.LEGEND_ITEM, "op": ALL}, "aria-pressed"),
        Output(ids.DESELECT, "data", allow_duplicate=True),
        Input({"type": ids.LEGEND_ITEM, "op": ALL}, "n_clicks"),
        State(ids.STYLE_LEGEND, "data"),
        prevent_initial_call=True,
    )
    def on_legend(clicks, current):
        trig = ctx.triggered_id
        items = [o["id"]["op"] for o in ctx.outputs_list[1]]
        if not isinstance(trig, dict) or not any(clicks or []):
            return no_update, [no_update] * len(items), [no_update] * len(items), no_update
        op = trig.get("op")
        if current and current.get("op") == op:
            op = None  # a second click clears
        # a selection's fade would hide the type picked: picking one clears the selection
        return ({"op": op, "rules": styles.type_rules(op)},
                [legend_class(o, op) for o in items], [legend_pressed(o, op) for o in items],
                time.time() if op else no_update)

    @app.callback(
        Output(ids.STYLE_SEARCH, "data"),
        Output(ids.SEARCH_INFO, "children"),
        Output(ids.ZOOM_TARGET, "data", allow_duplicate=True),
        Input(ids.SEARCH, "value"),
        Input(ids.VIEW_REV, "data"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def on_search(query, _rev, sid):
        try:
            hits, info = search(store, sid, query)
        except Exception as exc:
            return {"rules": []}, error_message(exc), no_update
        # (search: Enter in the box then picks a hit, assets/depview.js)
        zoom = {"ids": hits, "search": True} if hits and ctx.triggered_id == ids.SEARCH \
            else no_update
        return {"rules": styles.search_rules(hits)}, info, zoom

    # composed in the browser (the inspected group is drawn by toggling classes: see inspect)
    app.clientside_callback(
        ClientsideFunction("depview", "compose"),
        Output(ids.GRAPH, "stylesheet"),
        Input(ids.STYLE_BASE, "data"),
        Input(ids.STYLE_LEGEND, "data"),
        Input(ids.STYLE_PREVIEW, "data"),
        Input(ids.STYLE_SEARCH, "data"),
    )
    @app.callback(
        Output(ids.GRAPH, "generateImage"),
        Input(ids.EXPORT_PNG, "n_clicks"),
        Input(ids.EXPORT_SVG, "n_clicks"),
        State(ids.MODEL_PICKER, "value"),
        prevent_initial_call=True,
    )
    def on_image(_p, _s, spec):
        name = "depview-" + (spec_slug(spec) if spec else "graph")
        return image_request("png" if ctx.triggered_id == ids.EXPORT_PNG else "svg", name)

    app.clientside_callback(
        ClientsideFunction("depview", "bind"),
        Output(ids.FIT_DONE, "data"),
        Input(ids.GRAPH, "elements"),
    )
    app.clientside_callback(
        ClientsideFunction("depview", "fit"),
        Output(ids.FIT_DONE, "data", allow_duplicate=True),
        Input(ids.FIT, "n_clicks"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        ClientsideFunction("depview", "zoomTo"),
        Output(ids.FIT_DONE, "data", allow_duplicate=True),
        Input(ids.ZOOM_TARGET, "data"),
        prevent_initial_call=True,
    )
