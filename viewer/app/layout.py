"""The page: header (model picker, upload), graph with toolbar and legend, and a side panel
with the inspector, pruning controls and preview, and history/export.

:func:`page` is called on every page load, so each load gets a new session id.
"""

from __future__ import annotations

import dash_cytoscape as cyto
from dash import dcc, html

from viewer.core.plan import IMPORTANCE

from . import charts, ids
from .callbacks.common import MAX_UPLOAD
from .state import ModelEntry, SessionStore
from .styles import base_stylesheet, highlight_rules

#: the pruning settings a user typed survive a reload of the page (as its session does: the
#: tab's sessionStorage)
KEPT = {"persistence": True, "persistence_type": "session"}

#: the override "set" button's tooltip (a group that is not pruned shows why instead)
OVERRIDE_SET_TITLE = "prune this group by its own ratio"
#: a module's "set" button's tooltip (a module where no pruned group starts shows why)
MODULE_RATIO_TITLE = "prune every group that starts in this module by its own ratio (as " \
    "--override MODULE=R)"

IMPORTANCE_LABELS = {"l1": "L1 magnitude", "l2": "L2 magnitude", "bn": "BatchNorm scale",
                     "random": "random", "taylor": "Taylor (1st order)",
                     "usage": "usage (how often a router picks)"}


def _button(label: str, id_: str, title: str, cls: str = "btn", **kw) -> html.Button:
    return html.Button(label, id=id_, title=title, className=cls, n_clicks=0, **kw)


def header(entries: list[ModelEntry], default: str) -> html.Header:
    options = [{"label": e.title, "value": e.spec, "title": e.description} for e in entries]
    return html.Header([
        html.Div([html.Span("DepView", className="brand"),
                  html.Span("dependency graph · structural pruning", className="tagline")],
                 className="brand-box"),
        dcc.Dropdown(id=ids.MODEL_PICKER, options=options, value=default, clearable=False,
                     searchable=True, className="picker"),
        dcc.Upload(id=ids.UPLOAD, children=html.Button(
            "Open export (.zip)", className="btn", title="load a pruned checkpoint this tool "
            "exported (plan.json + model.safetensors; no pickle)"),
            # no accept=: a dropped file of another type would vanish without a word; the
            # server names what is wrong with it instead
            max_size=MAX_UPLOAD, className="upload"),
        html.Div(id=ids.MODEL_INFO, className="model-info"),
    ], className="header")


def graph_panel() -> html.Div:
    toolbar = html.Div([
        # searched once typing pauses (Enter is not needed)
        dcc.Input(id=ids.SEARCH, type="search", placeholder="find layer, class or type",
                  debounce=0.4, className="search"),
        html.Div([
            _button("Fit", ids.FIT, "fit the whole graph in view"),
            _button("⊞/⊟ module", ids.TOGGLE_MODULE,
                    "collapse or expand the selected module (or the module of the selected "
                    "node); double-click does the same"),
            _button("Expand all", ids.EXPAND_ALL, "draw every op"),
            _button("Collapse all", ids.COLLAPSE_ALL, "collapse the top-level modules"),
            _button("PNG", ids.EXPORT_PNG, "download the graph as PNG"),
            _button("SVG", ids.EXPORT_SVG, "download the graph as SVG"),
        ], className="tool-buttons"),
        # after the buttons, so that a search's result line never moves them
        html.Span(id=ids.SEARCH_INFO, className="search-info"),
        html.Span(id=ids.VIEW_INFO, className="view-info"),
    ], className="toolbar")
    graph = cyto.Cytoscape(
        id=ids.GRAPH, elements=[], stylesheet=base_stylesheet() + highlight_rules(),
        layout={"name": "preset", "fit": False, "animate": False},
        style={"width": "100%", "height": "100%"}, minZoom=0.03, maxZoom=4,
        boxSelectionEnabled=False, responsive=True, className="cy")
    return html.Div([
        toolbar,
        html.Div([dcc.Loading(
            html.Div([graph, dcc.Store(id=ids.GRAPH_REV)], className="graph-box"),
            id=ids.GRAPH_LOADING, type="circle", delay_show=250,
            target_components={ids.GRAPH: "elements", ids.GRAPH_REV: "data"},
            overlay_style={"visibility": "visible", "opacity": 0.55},
            parent_className="graph-loading"),
            # assets/depview.js fills and shows it after a Fit too small to read
            html.Div(id=ids.FIT_HINT, className="fit-hint", style={"display": "none"})],
            className="graph-wrap"),
        html.Div(id=ids.LEGEND, className="legend"),
    ], className="graph-panel")


def inspector_card() -> html.Section:
    return html.Section([
        html.H2("Inspector"),
        html.Div([html.P("Click a node to inspect it.", className="hint")], id=ids.INSPECTOR),
        html.Div([
            dcc.Checklist(id=ids.MODULE_IGNORE, value=[], inline=True,
                          options=[{"label": "ignore outputs", "value": "out"},
                                   {"label": "ignore inputs", "value": "in"}],
                          className="ignore"),
            html.P("Every layer inside keeps these channels (as --ignore MODULE:out/:in).",
                   className="hint"),
            html.Div([
                html.Label("ratio inside"),
                dcc.Input(id=ids.MODULE_RATIO, type="text", inputMode="decimal",
                          placeholder="0–1", className="num"),
                _button("set", ids.MODULE_RATIO_SET, MODULE_RATIO_TITLE, "btn small"),
                _button("clear", ids.MODULE_RATIO_CLEAR, "use the global ratio for the groups "
                        "rooted in this module", "btn small"),
            ], className="group-edit"),
            html.P("The groups that start inside prune by this ratio (as --override MODULE=R).",
                   className="hint"),
        ], id=ids.MODULE_CONTROLS, style={"display": "none"}),
        html.Div([
            dcc.Checklist(id=ids.FREE_OUTPUT, value=[], inline=True,
                          options=[{"label": "free: its width may change", "value": "free"}],
                          className="ignore"),
            html.P("Groups that reach a free output are not blocked there; the other outputs "
                   "keep their shapes (as --free-output NAME).", className="hint"),
        ], id=ids.OUTPUT_CONTROLS, style={"display": "none"}),
        html.Div([
            html.Div([
                html.H4("Pruning group", className="inline"),
                dcc.RadioItems(id=ids.GROUP_SIDE, value="out", inline=True,
                               options=[{"label": "output channels", "value": "out"},
                                        {"label": "input channels", "value": "in"}],
                               className="side-toggle"),
            ], className="group-head"),
            dcc.Dropdown(id=ids.GROUP_PICK, options=[], value=None, clearable=False,
                         placeholder="group", className="group-pick",
                         style={"display": "none"}),
            html.Div(id=ids.GROUP_PANEL),
            html.Div([
                html.Label("override ratio"),
                dcc.Input(id=ids.OVERRIDE_RATIO, type="text", inputMode="decimal",
                          placeholder="0–1", className="num"),
                _button("set", ids.OVERRIDE_SET, OVERRIDE_SET_TITLE,
                        "btn small"),
                _button("clear", ids.OVERRIDE_CLEAR, "use the global ratio for this group",
                        "btn small"),
                dcc.Checklist(id=ids.IGNORE_TOGGLE, value=[], inline=True,
                              options=[{"label": "ignore outputs", "value": "out"},
                                       {"label": "ignore inputs", "value": "in"}],
                              className="ignore"),
            ], id=ids.GROUP_EDIT, className="group-edit"),
        ], id=ids.GROUP_CONTROLS, style={"display": "none"}),
    ], className="card")


def prune_card() -> html.Section:
    controls = html.Div([
        html.Label(["importance", dcc.Dropdown(
            id=ids.IMPORTANCE, value="l1", clearable=False, **KEPT,
            options=[{"label": IMPORTANCE_LABELS.get(k, k), "value": k} for k in IMPORTANCE])],
            className="ctl ctl-wide"),
        # text boxes, parsed on the server: a number box would hand the page None for any
        # value off its step (0.33) and for a half-typed one, and the user would never know
        html.Label(["ratio", dcc.Input(id=ids.RATIO, type="text", inputMode="decimal", **KEPT,
                                       value="0.3", className="num")], className="ctl"),
        html.Label(["round to", dcc.Input(id=ids.ROUND_TO, type="text", inputMode="numeric", **KEPT,
                                          value="1", className="num")], className="ctl"),
        dcc.RadioItems(id=ids.MODE, value="uniform", inline=True, className="ctl mode", **KEPT,
                       options=[{"label": "uniform per group", "value": "uniform"},
                                {"label": "global ranking", "value": "global"}]),
    ], className="controls")
    batch = html.Div([
        dcc.Upload(id=ids.BATCH_UPLOAD, max_size=MAX_UPLOAD,  # any type: the server says why
                   className="batch-upload", children=html.Button(
                       "Batch (.safetensors)", className="btn small",
                       title="inputs to score units on: tensors named 0, 1, ... (positional) "
                             "or by argument name")),
        _button("example inputs", ids.BATCH_CLEAR, "score on the example inputs again",
                "btn small"),
        dcc.Loading(html.Div(id=ids.BATCH_INFO, className="hint"), type="dot",
                    delay_show=250, parent_className="batch-info-box"),  # a forward runs
    ], id=ids.BATCH_ROW, className="batch-row", style={"display": "none"})
    buttons = html.Div([
        _button("Preview", ids.PREVIEW, "compute the plan and its effect (model untouched)",
                "btn primary"),
        _button("Apply", ids.APPLY, "prune a copy, verify it and continue from it",
                "btn danger"),
        _button("Undo", ids.UNDO, "drop the last round", disabled=True),
        _button("Reset", ids.RESET, "back to the original model", disabled=True),
        _button("Sensitivity", ids.SENSITIVITY, "prune each group alone at this ratio and "
                "chart how far the outputs move: where to prune harder (a ratio per group "
                "from the inspector)"),
        html.Span(id=ids.BUSY, className="busy", role="status"),
    ], className="buttons")
    numbers = html.Div([
        html.Div([html.Span("params", className="num-label"),
                  html.Span("—", id=ids.PREVIEW_PARAMS, className="num-value")]),
        html.Div([html.Span("MACs", className="num-label"),
                  html.Span("—", id=ids.PREVIEW_MACS, className="num-value")]),
    ], className="numbers")
    figs = [html.Div(charts.mount(ids.WIDTH_CHART, None, charts.WIDTH_HINT),
                     id=ids.WIDTH_CHART_BOX),
            html.Div(charts.mount(ids.SCORE_CHART, None, charts.SCORE_HINT),
                     id=ids.SCORE_CHART_BOX)]
    return html.Section([
        html.H2("Prune"),
        controls,
        batch,
        html.Div(id=ids.PLAN_INFO, className="plan-info"),
        buttons,
        dcc.Loading(html.Div([numbers] + figs, id=ids.PREVIEW_PANEL), type="dot",
                    delay_show=250, overlay_style={"visibility": "visible", "opacity": 0.5}),
        html.Div(charts.mount(ids.SENSITIVITY_CHART, None, charts.SENSITIVITY_HINT),
                 id=ids.SENSITIVITY_BOX),
    ], className="card")


def history_card() -> html.Section:
    return html.Section([
        html.H2("History & export"),
        html.Div(id=ids.HISTORY),
        dcc.Loading(html.Div([
            _button("Checkpoint (.zip)", ids.DOWNLOAD, "the pruned model as an export "
                    "directory: model.safetensors + plan.json + report.json", "btn primary",
                    disabled=True),
            _button("Time forward", ids.TIME_FORWARD, "time a forward of the last round's "
                    "model against the model it pruned, side by side", disabled=True),
            _button("Graph JSON", ids.DOWNLOAD_GRAPH, "the current typed graph"),
            _button("Groups JSON", ids.DOWNLOAD_GROUPS, "every pruning group with members"),
            dcc.Download(id=ids.DOWNLOAD_FILE),
        ], className="buttons"), type="dot", delay_show=250,
            target_components={ids.DOWNLOAD_FILE: "data"},
            overlay_style={"visibility": "visible", "opacity": 0.5}),
    ], className="card")


def stores(sid: str) -> list:
    return [
        # kept in the tab's sessionStorage: a reload finds its session (and rounds) again
        dcc.Store(id=ids.SESSION, data=sid, storage_type="session"),
        dcc.Store(id=ids.VIEW_REV, data=0),
        dcc.Store(id=ids.SELECTION),
        dcc.Store(id=ids.SHOWN),
        dcc.Store(id=ids.PREVIEW_REV, data=0),
        dcc.Store(id=ids.DBLTAP),
        dcc.Store(id=ids.DESELECT),
        dcc.Store(id=ids.ZOOM_TARGET),
        dcc.Store(id=ids.FIT_DONE),
        dcc.Store(id=ids.STYLE_GROUP),
        dcc.Store(id=ids.STYLE_BASE, data={"rules": base_stylesheet(),
                                           "last": highlight_rules()}),
        dcc.Store(id=ids.STYLE_PREVIEW),
        dcc.Store(id=ids.STYLE_LEGEND),
        dcc.Store(id=ids.STYLE_SEARCH),
    ]


def page(store: SessionStore, default: str) -> html.Div:
    """The whole page for one load (a new session id each time)."""
    entries = list(store.entries.values())
    return html.Div([
        *stores(store.new_id()),
        header(entries, default),
        html.Div(id=ids.MESSAGE, className="message-bar"),
        html.Main([
            graph_panel(),
            html.Aside([inspector_card(), prune_card(), history_card()], className="side"),
        ], className="main"),
    ], className="app")
