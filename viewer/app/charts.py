"""Plotly figures of the prune panel (pure: data in, figure out) and where they mount."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

import numpy as np
import plotly.graph_objects as go
from dash import dcc, html

from .styles import PRUNED

WIDTH_HINT = "Preview to see each layer's width before → after"
SCORE_HINT = "Click a layer to see its group's importance scores"
KEPT_COLOUR, CUT_COLOUR = "#64748b", "#ef4444"  #: score bars of kept and of cut units
NAMED_COLOUR_BARS = 256  #: up to this many score bars, each bar's colour is a name
#: past this many score bars, the bars touch: the gaps between them (and the white outline the
#: plotly_white template draws round each bar) would be wider than the bars, and ~900 units of
#: a residual stream drew a nearly white chart
DENSE_BARS = 100
TITLE_CHARS = 52  #: a score chart's title wraps at this many characters (the panel's width)
LOG_WIDTHS = 20  #: a layer this many times the median width puts the width chart on a log axis


def mount(chart_id: str, fig: go.Figure | None, hint: str):
    """A dcc.Graph for a figure, or a plain-HTML hint without one. Charts are mounted only
    when they have data: the 4.8 MB Plotly bundle then stays off the first page load."""
    if fig is None:
        return html.Div(hint, className="chart-hint")
    return dcc.Graph(id=chart_id, figure=fig, config={"displayModeBar": False},
                     className="chart")


def placeholder(text: str, height: int) -> go.Figure:
    """An empty chart that says what will appear in it."""
    fig = go.Figure()
    fig.update_layout(height=height, margin={"l": 8, "r": 8, "t": 8, "b": 8},
                      template="plotly_white", xaxis={"visible": False},
                      yaxis={"visible": False},
                      annotations=[{"text": text, "showarrow": False, "x": 0.5, "y": 0.5,
                                    "xref": "paper", "yref": "paper",
                                    "font": {"color": "#64748b", "size": 12}}])
    return fig


def width_figure(layers: list[dict] | None) -> go.Figure:
    """Per-layer output widths before (grey) and after (purple) a plan, in graph order."""
    if not layers:
        return placeholder("Preview to see each layer's width before → after", 70)
    names = [r["name"] for r in layers]
    before = [r["before"] for r in layers]
    # one layer far wider than the rest (a language model's vocabulary head: 50257 against
    # 768) flattens every other bar to nothing on a linear axis
    log = min(before) > 0 and max(before) > LOG_WIDTHS * float(np.median(before))
    fig = go.Figure()
    fig.add_bar(x=names, y=before, name="before", marker_color="#cbd5e1")
    fig.add_bar(x=names, y=[r["after"] for r in layers], name="after", marker_color=PRUNED)
    title = "output width per layer" + (" (log scale)" if log else "")
    fig.update_layout(barmode="overlay", bargap=0.15, height=230,
                      margin={"l": 40, "r": 8, "t": 28, "b": 8},
                      title={"text": title, "font": {"size": 12}},
                      legend={"orientation": "h", "y": 1.14, "x": 1, "xanchor": "right"},
                      xaxis={"showticklabels": False, "title": None},
                      yaxis={"title": None, "type": "log" if log else "linear",
                             **({"dtick": 1} if log else {})},  # ticks at powers of 10
                      template="plotly_white")
    return fig


def score_figure(scores: Iterable[float] | None, removed: Iterable[int] = (),
                 title: str = "") -> go.Figure:
    """One group's unit scores sorted ascending; removed units red, the cut as a line. The
    bars have no outline, and past :data:`DENSE_BARS` no gaps: a filled profile.

    Up to :data:`NAMED_COLOUR_BARS` bars, each bar's colour is its name. Past that, the bars
    carry 0 (kept) or 1 (cut) and a two-colour scale draws those same two colours: Plotly
    checks a colour name against its CSS grammar one bar at a time (about 50 µs each, so
    0.2–0.4 s for a 4096-unit residual stream), and a numeric array in one step."""
    s = np.asarray(list(scores) if scores is not None else [], dtype=float)
    if not len(s):
        return placeholder(title or "Click a layer to see its group's importance scores", 70)
    order = np.argsort(s, kind="stable")
    gone = np.isin(order, np.asarray(list(removed), dtype=np.int64))  # per bar: a cut unit?
    cut = int(gone.sum())
    if len(order) <= NAMED_COLOUR_BARS:
        marker = {"color": np.where(gone, CUT_COLOUR, KEPT_COLOUR).tolist()}
    else:
        marker = {"color": gone.astype(np.uint8), "cmin": 0, "cmax": 1,
                  "colorscale": [[0, KEPT_COLOUR], [1, CUT_COLOUR]]}
    marker["line"] = {"width": 0}
    fig = go.Figure()
    # arrays, not lists: Plotly validates a list element by element
    fig.add_bar(x=np.arange(len(order)), y=s[order], showlegend=False, marker=marker,
                hovertext=np.char.add("unit ", order.astype(str)))
    if 0 < cut < len(order):
        fig.add_vline(x=cut - 0.5, line_dash="dash", line_color="#dc2626")
    # Plotly never wraps a title: "group #0: l1 importance, 161 of 538 units cut at ratio 0.3
    # (not previewed)" lost its end past the panel's edge
    lines = textwrap.wrap(title, TITLE_CHARS) or [""]
    more = 15 * (len(lines) - 1)
    fig.update_layout(height=200 + more, margin={"l": 40, "r": 8, "t": 28 + more, "b": 20},
                      title={"text": "<br>".join(lines), "font": {"size": 12}},
                      template="plotly_white",
                      xaxis={"title": None, "showticklabels": False}, yaxis={"title": None},
                      bargap=0 if len(order) > DENSE_BARS else None)
    return fig


SENSITIVITY_HINT = "Sensitivity prunes each group alone at the ratio and charts how far the " \
    "outputs move"


def sensitivity_figure(rows: list[dict], ratio: float) -> go.Figure:
    """Each group's output change when pruned alone (:func:`sensitivity`), least first, one
    horizontal bar a group, labelled ``#id root``; groups whose share rounds to no unit are
    left out."""
    rows = sorted((r for r in rows if r["removed"]), key=lambda r: r["output_change"])
    if not rows:
        return placeholder(f"at {ratio:g} no group loses a unit", 70)
    labels = [f"#{r['id']} {r['root']}" for r in rows]
    fig = go.Figure()
    fig.add_bar(x=[r["output_change"] for r in rows], y=labels, orientation="h",
                marker_color=PRUNED, showlegend=False,
                hovertext=[f"{r['removed']} of {r['units']} units, {r['params_removed']:,} "
                           "parameters" for r in rows])
    fig.update_layout(height=60 + 18 * len(rows), margin={"l": 8, "r": 8, "t": 28, "b": 20},
                      title={"text": f"output change, each group pruned alone at {ratio:g}",
                             "font": {"size": 12}},
                      template="plotly_white", bargap=0.2,
                      yaxis={"autorange": "reversed", "automargin": True,
                             "tickfont": {"size": 10}},
                      xaxis={"title": None})
    return fig
