"""Plotly figures of the prune panel (pure: data in, figure out) and where they mount."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import plotly.graph_objects as go
from dash import dcc, html

from .styles import PRUNED

WIDTH_HINT = "Preview to see each layer's width before → after"
SCORE_HINT = "Click a layer to see its group's importance scores"


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
    fig = go.Figure()
    fig.add_bar(x=names, y=[r["before"] for r in layers], name="before", marker_color="#cbd5e1")
    fig.add_bar(x=names, y=[r["after"] for r in layers], name="after", marker_color=PRUNED)
    fig.update_layout(barmode="overlay", bargap=0.15, height=230,
                      margin={"l": 40, "r": 8, "t": 28, "b": 8},
                      title={"text": "output width per layer", "font": {"size": 12}},
                      legend={"orientation": "h", "y": 1.14, "x": 1, "xanchor": "right"},
                      xaxis={"showticklabels": False, "title": None},
                      yaxis={"title": None}, template="plotly_white")
    return fig


def score_figure(scores: Iterable[float] | None, removed: Iterable[int] = (),
                 title: str = "") -> go.Figure:
    """One group's unit scores sorted ascending; removed units red, the cut as a line."""
    s = np.asarray(list(scores) if scores is not None else [], dtype=float)
    if not len(s):
        return placeholder(title or "Click a layer to see its group's importance scores", 70)
    gone = {int(u) for u in removed}
    order = np.argsort(s, kind="stable")
    cut = sum(1 for u in order if int(u) in gone)
    fig = go.Figure()
    fig.add_bar(x=list(range(len(order))), y=s[order].tolist(), showlegend=False,
                marker_color=["#ef4444" if int(u) in gone else "#64748b" for u in order],
                hovertext=[f"unit {int(u)}" for u in order])
    if 0 < cut < len(order):
        fig.add_vline(x=cut - 0.5, line_dash="dash", line_color="#dc2626")
    fig.update_layout(height=200, margin={"l": 40, "r": 8, "t": 28, "b": 20},
                      title={"text": title, "font": {"size": 12}}, template="plotly_white",
                      xaxis={"title": None, "showticklabels": False}, yaxis={"title": None})
    return fig
