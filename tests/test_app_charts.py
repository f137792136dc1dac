"""Prune-panel charts: the score chart draws what the plain per-bar version drew."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from viewer.app import charts


def _reference_score_figure(scores, removed=(), title=""):
    """The score chart as it was first written, one validated colour name per bar: the
    oracle for the fast one."""
    s = np.asarray(list(scores) if scores is not None else [], dtype=float)
    if not len(s):
        return charts.placeholder(title or "Click a layer to see its group's importance "
                                           "scores", 70)
    gone = {int(u) for u in removed}
    order = np.argsort(s, kind="stable")
    cut = sum(1 for u in order if int(u) in gone)
    fig = go.Figure()
    fig.add_bar(x=list(range(len(order))), y=s[order].tolist(), showlegend=False,
                marker_color=["#ef4444" if int(u) in gone else "#64748b" for u in order],
                marker_line_width=0, hovertext=[f"unit {int(u)}" for u in order])
    if 0 < cut < len(order):
        fig.add_vline(x=cut - 0.5, line_dash="dash", line_color="#dc2626")
    fig.update_layout(height=200, margin={"l": 40, "r": 8, "t": 28, "b": 20},
                      title={"text": title, "font": {"size": 12}}, template="plotly_white",
                      xaxis={"title": None, "showticklabels": False}, yaxis={"title": None})
    if len(order) > charts.DENSE_BARS:  # bars that touch: no gaps
        fig.update_layout(bargap=0)
    return fig


def _bar_colours(bar) -> list[str]:
    """The colour each bar is drawn in: its colour name, or its number looked up in the
    marker's colour scale (which runs from cmin to cmax)."""
    colour = bar.marker.color
    if all(isinstance(c, str) for c in colour):
        return list(colour)
    lo, hi = bar.marker.cmin, bar.marker.cmax
    stops = {lo + float(at) * (hi - lo): name for at, name in bar.marker.colorscale}
    return [stops[float(c)] for c in colour]


def _drawn(fig: go.Figure) -> dict:
    """What the chart shows, whatever arrays carry it."""
    out = {"layout": fig.layout.to_plotly_json(), "traces": []}
    for t in fig.data:
        out["traces"].append({
            "type": t.type, "showlegend": t.showlegend, "x": np.asarray(t.x).tolist(),
            "y": np.asarray(t.y, dtype=float).tolist(),
            "hovertext": [str(h) for h in t.hovertext], "colours": _bar_colours(t)})
    return out


def _random_case(rng: np.random.Generator, n: int):
    # ties (rounded scores) test the stable order; cuts at random, not only the lowest
    scores = np.round(rng.random(n), int(rng.integers(1, 4)))
    k = int(rng.integers(0, n + 1))
    pick = rng.choice(n, size=k, replace=False) if rng.random() < 0.5 else np.argsort(
        scores, kind="stable")[:k]
    return scores, [int(u) for u in pick]


@pytest.mark.parametrize("n", [1, 2, 16, charts.NAMED_COLOUR_BARS,
                               charts.NAMED_COLOUR_BARS + 1, 4096])
def test_score_figure_draws_what_the_per_bar_reference_drew(n):
    rng = np.random.default_rng(n)
    big = n > 1000  # the reference takes about 0.2 s per 1000 bars
    for _ in range(1 if big else 3):
        scores, removed = _random_case(rng, n)
        for form in (scores,) if big else (scores, scores.tolist()):
            got = charts.score_figure(form, removed, "group #3")
            want = _reference_score_figure(form, removed, "group #3")
            assert _drawn(got) == _drawn(want)


def test_score_figure_edge_cases_match_the_reference():
    s = np.array([0.3, 0.1, 0.2, 0.1])
    for removed in ([], [0, 1, 2, 3], [1], np.array([1, 3]), range(2)):
        assert _drawn(charts.score_figure(s, removed, "t")) == \
            _drawn(_reference_score_figure(s, removed, "t"))
    # no scores: the placeholder, titled
    for empty in (None, []):
        assert charts.score_figure(empty, [], "no weights").to_plotly_json() == \
            _reference_score_figure(empty, [], "no weights").to_plotly_json()


def test_many_bars_carry_numbers_few_bars_colour_names():
    few = charts.score_figure(np.arange(8.0), [0, 1])
    assert list(few.data[0].marker.color).count(charts.CUT_COLOUR) == 2
    many = charts.score_figure(np.arange(4096.0), range(100))
    assert many.data[0].marker.color.dtype == np.uint8
    assert int(np.sum(many.data[0].marker.color)) == 100


@pytest.mark.parametrize("n", [8, charts.DENSE_BARS, charts.DENSE_BARS + 1, 920, 4096])
def test_many_unit_scores_draw_touching_bars_without_outlines(n):
    # 920 units of a residual stream drew a nearly white chart: the template's white bar
    # outlines and the gaps between bars were wider than the bars
    fig = charts.score_figure(np.linspace(0, 1, n), range(n // 3), "t")
    bar = fig.data[0]
    assert bar.marker.line.width == 0
    assert fig.layout.bargap == (0 if n > charts.DENSE_BARS else None)
    assert set(_bar_colours(bar)) == {charts.KEPT_COLOUR, charts.CUT_COLOUR}


def test_a_long_score_chart_title_wraps_instead_of_running_off_the_panel():
    title = "group #0: l1 importance, 161 of 538 units cut at ratio 0.3 (not previewed)"
    fig = charts.score_figure(np.arange(538.0), range(161), title)
    assert fig.layout.title.text == ("group #0: l1 importance, 161 of 538 units cut at<br>"
                                     "ratio 0.3 (not previewed)")
    assert (fig.layout.height, fig.layout.margin.t) == (215, 43)  # room for the second line
    short = charts.score_figure(np.arange(8.0), [], "group #3")
    assert (short.layout.title.text, short.layout.height) == ("group #3", 200)


def test_sensitivity_figure_puts_the_least_sensitive_group_first():
    rows = [{"id": 0, "root": "conv1", "units": 16, "removed": 8, "params_removed": 10,
             "output_change": 0.3},
            {"id": 1, "root": "fc1", "units": 4, "removed": 0, "params_removed": 0,
             "output_change": 0.0},
            {"id": 2, "root": "conv2", "units": 16, "removed": 8, "params_removed": 20,
             "output_change": 0.1}]
    fig = charts.sensitivity_figure(rows, 0.5)
    (bar,) = fig.data
    assert list(bar.y) == ["#2 conv2", "#0 conv1"] and list(bar.x) == [0.1, 0.3]
    assert fig.layout.yaxis.autorange == "reversed"  # the first row on top
    assert "at 0.5" in fig.layout.title.text
    assert "no group loses a unit" in charts.sensitivity_figure(rows[1:2], 0.1).layout[
        "annotations"][0]["text"]
