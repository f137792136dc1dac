"""Browser benchmark for DepView: first graph and click -> group highlight in headless Chromium.

Run from the repository root::

    python benchmarks/bench_browser.py                         # resnet50, vit, llama32
    python benchmarks/bench_browser.py --models resnet50 --json out.json
    python benchmarks/bench_browser.py --profile               # + where the time goes

For each model a server is started in a subprocess (``python -m viewer serve --model SPEC`` on a
free 127.0.0.1 port; the model is built before the port opens, so build time is not measured)
and a fresh headless Chromium (/usr/bin/chromium + /usr/bin/chromedriver, the flags of
tests/conftest.py) opens the page. The model is the first picker entry, so the page selects it
by itself: what is measured is **navigation -> graph drawn**, not a picker change.

* first graph: ``performance.now()`` in the page (0 = navigation start) at the second animation
  frame after ``window.cy`` first holds nodes, i.e. after Cytoscape has drawn them. An
  instrumentation script (CDP ``Page.addScriptToEvaluateOnNewDocument``) polls once per frame
  and logs every ``/_dash-*`` fetch, so the time splits into page load, Dash round trips and
  client-side rendering. Load 1 is cold (empty browser cache); later loads reuse the cache.
  The target applies to the cold load.
* click -> highlight: a real pointer click (as tests/test_browser.py does: centre the node at
  zoom 1, click its rendered position) on conv/linear nodes, timed from Cytoscape's ``tap``
  event to the second animation frame after the graph reached its **final highlighted state**:
  the clicked node carries the inspector's "selected" style (5px red border) *and* the set of
  elements drawn in the group colour (member nodes' borders, the edges carrying the group's
  tensors) is the one the page shows once it has gone quiet (no Dash request in flight or
  answered for 300 ms) — and stays so. Every animation frame after the tap records that
  state, so a partial highlight (only the selected border, only the nodes, the previous
  click's group) never counts, whichever way the app draws it (stylesheet or classes).
  Where fewer conv/linear nodes are drawn than clicks wanted (the collapsed 32-layer
  decoder), collapsed modules are first expanded by double-click.

``--profile`` adds, after the measured steps: a V8 CPU profile (self time per script) of one
more click and of a cold load in a new browser, the cost of one Cytoscape stylesheet swap on
its own, and the server-side callback work timed directly in this process (view build,
inspect, JSON encoding; no HTTP).

Targets print as PASS/MISS; the exit status is always 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODELS = {  # key -> (spec, factory kwargs JSON)
    "resnet50": ("demo:resnet50", ""),
    "vit": ("demo:vit", ""),
    "llama32": ("demo:llama", '{"n_layers": 32}'),
}
TARGET_FIRST = {"resnet50": 2.0, "vit": 2.0, "llama32": 4.0}  # seconds, cold load
TARGET_CLICK = 0.200  # seconds, median click -> highlight
CLICK_TYPES = ("conv", "linear", "depthwise_conv", "conv_transpose")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1400,900")
SELECTED_RGB = "rgb(220,38,38)"  # styles.SELECTED as Cytoscape reports it
HIGHLIGHT_RGB = "rgb(249,115,22)"  # styles.HIGHLIGHT

# Runs before any page script: per-frame detection of the first drawn graph and a log of
# Dash's requests (url, outputs, start, headers received, body read, bytes).
INSTRUMENT = r"""
(function () {
  var dv = window.__dv = {net: [], long: []};
  try { performance.setResourceTimingBufferSize(5000); } catch (e) {}
  try {
    new PerformanceObserver(function (list) {
      list.getEntries().forEach(function (e) { dv.long.push([e.startTime, e.duration]); });
    }).observe({type: 'longtask', buffered: true});
  } catch (e) {}
  /* fetch records joined with Resource Timing (network-thread times, not delayed by a busy
   * main thread): rec.rs/rec.re = request sent / response fully received */
  dv.joined = function () {
    var res = performance.getEntriesByType('resource').filter(function (e) {
      return e.name.indexOf('_dash-') >= 0; }), used = {};
    return dv.net.map(function (rec) {
      var best = -1, gap = 50;
      res.forEach(function (e, i) {
        var g = Math.abs(e.startTime - rec.t0);
        if (!used[i] && e.name.indexOf(rec.url) >= 0 && g < gap) { best = i; gap = g; }
      });
      var out = Object.assign({}, rec);
      if (best >= 0) { used[best] = true; out.rs = res[best].requestStart || res[best].startTime;
                       out.re = res[best].responseEnd; }
      return out;
    });
  };
  var of = window.fetch;
  window.fetch = function (input, init) {
    var url = String((input && input.url) || input);
    if (url.indexOf('_dash-') < 0) { return of.apply(this, arguments); }
    var rec = {url: url.replace(/^.*\/(_dash-[^?]*).*$/, '$1'), t0: performance.now()};
    try { rec.out = JSON.parse(init.body).output; } catch (e) { rec.out = null; }
    dv.net.push(rec);
    return of.apply(this, arguments).then(function (r) {
      rec.t1 = performance.now();
      r.clone().text().then(function (t) { rec.t2 = performance.now(); rec.bytes = t.length; });
      return r;
    }, function (e) { rec.t1 = performance.now(); rec.err = String(e); throw e; });
  };
  function tick() {
    var cy = window.cy;
    if (cy && dv.cy === undefined) { dv.cy = performance.now(); }
    if (cy && cy.nodes().length > 0) {
      dv.nodes = performance.now();
      requestAnimationFrame(function () { requestAnimationFrame(function () {
        dv.painted = performance.now();
      }); });
      return;
    }
    requestAnimationFrame(tick);
  }
  requestAnimationFrame(tick);
})();
"""

# Arms the click timer, brings the node into view (zoom 1, centred) and returns its position.
# From the tap on, every animation frame records the highlight state when it changed:
# "S" if the clicked node carries the selected style, then the ids of the nodes whose border
# and the edges whose line are drawn in the group colour.
ARM_CLICK = r"""
var id = arguments[0], graphId = arguments[1], SEL = arguments[2], HL = arguments[3];
var cy = window.cy, n = cy.getElementById(id);
var rec = window.__dvClick = {id: id, netFrom: window.__dv.net.length, frames: [],
                              changes: []};
if (window.__dvTap) { cy.removeListener('tap', 'node', window.__dvTap); }
window.__dvTap = function (e) { rec.tap = performance.now(); rec.tapped = e.target.id(); };
cy.one('tap', 'node', window.__dvTap);
function state() {
  var m = cy.getElementById(id), lit = [], nodes = 0;
  var sel = m.style('border-width') === '5px' && m.style('border-color') === SEL;
  cy.nodes().forEach(function (x) {
    if (x.style('border-color') === HL) { lit.push(x.id()); nodes++; } });
  cy.edges().forEach(function (x) { if (x.style('line-color') === HL) { lit.push(x.id()); } });
  return {sig: (sel ? 'S|' : '-|') + lit.join(','), sel: sel, nodes: nodes,
          edges: lit.length - nodes};
}
function tick() {
  if (rec.cancel) { return; }
  if (rec.tap !== undefined) {
    var st = state(), last = rec.changes[rec.changes.length - 1];
    rec.frames.push(performance.now());
    if (!last || last.sig !== st.sig) { st.frame = rec.frames.length - 1; rec.changes.push(st); }
    if (st.sel) { rec.sel = true; }
  }
  requestAnimationFrame(tick);
}
requestAnimationFrame(tick);
cy.stop(); cy.zoom(1); cy.center(n);
var r = document.getElementById(graphId).getBoundingClientRect();
var p = n.renderedPosition();
return [r.left + p.x, r.top + p.y];
"""

# The final highlight state of a click: when it was first drawn and stayed (frame times, ms).
CLICK_RESULT = r"""
var rec = window.__dvClick, f = rec.frames, last = rec.changes[rec.changes.length - 1];
rec.cancel = true;
return {id: rec.id, tapped: rec.tapped, tap: rec.tap, netFrom: rec.netFrom,
        sel: !!(last && last.sel), nodes: last ? last.nodes : 0, edges: last ? last.edges : 0,
        states: rec.changes.length, seen: last ? f[last.frame] : null,
        painted: last && last.frame + 2 < f.length ? f[last.frame + 2] : null};
"""

COUNTS = r"""
var cy = window.cy;
return {all: cy.nodes().length,
        drawn: cy.nodes().filter(function (n) { return n.isChildless(); }).length,
        ops: cy.nodes('.op').length, collapsed: cy.nodes('.collapsed').length,
        edges: cy.edges().length};
"""

CANDIDATES = r"""
var types = arguments[0];
return window.cy.nodes('.op').filter(function (n) {
  return types.indexOf(n.data('op_type')) >= 0; })
  .map(function (n) { return {id: n.id(), name: n.data('name'), type: n.data('op_type'),
                              y: n.position('y')}; });
"""

COLLAPSED = r"""
return window.cy.nodes('.collapsed').map(function (n) {
  return {id: n.id(), path: n.data('path'), y: n.position('y'), x: n.position('x')}; });
"""

# Quiet: no Dash request in flight, none answered in the last 300 ms, no animation running.
QUIET = r"""
var net = (window.__dv || {}).net || [], now = performance.now(), last = 0;
for (var i = 0; i < net.length; i++) {
  if (net[i].t2 === undefined && net[i].err === undefined) { return false; }
  last = Math.max(last, net[i].t2 || net[i].t1);
}
return !!window.cy && now - last > 300 && !window.cy.animated();
"""


# Cost of one stylesheet swap in Cytoscape alone (a legend, search or preview overlay; a click
# only toggles classes): re-apply the current stylesheet, then wait for the next frame.
RESTYLE = r"""
var cy = window.cy, done = arguments[arguments.length - 1], ss = cy.style().json();
var t0 = performance.now();
cy.style().fromJson(ss).update();
var t1 = performance.now();
requestAnimationFrame(function () { requestAnimationFrame(function () {
  done({sync_s: (t1 - t0) / 1000, frame_s: (performance.now() - t0) / 1000,
        rules: ss.length, elements: cy.elements().length}); }); });
"""


class BenchError(Exception):
    """A step failed (timeout, crash): reported in the table, the run goes on."""


# --------------------------------------------------------------------------------------------
# Server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m viewer serve`` for one model, in a subprocess; log in a temp file."""

    def __init__(self, spec: str, kwargs: str, timeout: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tempfile.NamedTemporaryFile(prefix="depview-bench-", suffix=".log",
                                               delete=False)
        cmd = [sys.executable, "-m", "viewer", "serve", "--model", spec,
               "--host", "127.0.0.1", "--port", str(self.port)]
        if kwargs:
            cmd += ["--kwargs", kwargs]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"server exited with {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)  # polling interval of the readiness check (not a measurement)
        raise BenchError(f"server not ready after {timeout:g} s (model build too slow?): "
                         f"{self.tail()}")

    def tail(self, n: int = 5) -> str:
        try:
            lines = Path(self.log.name).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


# --------------------------------------------------------------------------------------------
# Browser


_SCRATCH = tempfile.TemporaryDirectory(prefix="depview-bench-browser-")


def make_driver(chromium: str, chromedriver: str, timeout: float):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    # chromium stopped by quit() leaves a singleton socket folder in TMPDIR: give it one
    # that is removed when this script ends
    service = Service(chromedriver, env={**os.environ, "TMPDIR": _SCRATCH.name})
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(timeout)
    driver.set_script_timeout(timeout)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": INSTRUMENT})
    return driver


def until(driver, fn, timeout: float, what: str, poll: float = 0.02):
    """Poll ``fn(driver)`` until truthy; BenchError naming ``what`` (and page errors) else."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=poll).until(fn)
    except TimeoutException:
        raise BenchError(f"timed out after {timeout:g} s waiting for {what}"
                         f"{console_errors(driver)}") from None


def console_errors(driver) -> str:
    try:
        errs = [e.get("message", "")[:200] for e in driver.get_log("browser")]
    except Exception:
        return ""
    return f" (browser console: {' | '.join(errs[-3:])})" if errs else ""


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def short_out(out: str | None) -> str:
    """Dash output spec ``..graph.elements...legend.children..`` -> ``graph.elements+5``."""
    if not out:
        return "?"
    parts = [p for p in out.strip(".").split("...") if p]
    head = parts[0].split("@")[0] if parts else "?"
    return head + (f"+{len(parts) - 1}" if len(parts) > 1 else "")


def req(r: dict, since: float = 0.0) -> dict:
    """A joined fetch record in seconds (relative to ``since`` ms): sent, network done (the
    response fully received, Resource Timing), handed to JS (fetch promise resolved)."""
    ms = 1e-3
    done = r.get("re") or r.get("t1") or r["t0"]
    return {"out": short_out(r.get("out")), "sent_s": (r["t0"] - since) * ms,
            "net_s": (done - r["t0"]) * ms,
            "blocked_s": max(0.0, ((r.get("t1") or done) - done) * ms),
            "bytes": r.get("bytes")}


def long_tasks(dv_long: list, start: float, end: float) -> dict:
    """Main-thread tasks > 50 ms overlapping [start, end] (ms): count, total s, largest."""
    hits = [(t, d) for t, d in dv_long if t < end and t + d > start]
    big = max(hits, key=lambda x: x[1], default=None)
    return {"n": len(hits), "total_s": sum(d for _, d in hits) * 1e-3,
            "largest_s": big[1] * 1e-3 if big else 0.0,
            "largest_at_s": (big[0] - start) * 1e-3 if big else None}


def first_graph(driver, url: str, spec: str, timeout: float) -> dict:
    """Navigate and wait until the graph is drawn; times in seconds from navigation start."""
    from selenium.common.exceptions import TimeoutException

    t0 = time.perf_counter()
    try:
        driver.get(url)
    except TimeoutException:
        raise BenchError(f"{url} did not load within {timeout:g} s") from None
    until(driver, lambda d: d.execute_script("return (window.__dv || {}).painted;"), timeout,
          f"the graph of {spec} to be drawn (window.cy with nodes)")
    wall = time.perf_counter() - t0
    dv = js(driver, "var d = window.__dv; return {cy: d.cy, nodes: d.nodes, painted: d.painted,"
                    " net: d.joined(), long: d.long,"
                    " nav: performance.getEntriesByType('navigation')[0].toJSON()};")
    picker = js(driver, "var e = document.getElementById(arguments[0]);"
                        " return e ? e.innerText : '';", "model-picker")
    if spec not in picker:
        raise BenchError(f"the model picker shows {picker!r}, not {spec!r}")
    update = [r for r in dv["net"] if r.get("url") == "_dash-update-component"
              and r["t0"] <= dv["nodes"]]
    elements = [r for r in update if r.get("out") and "graph.elements" in r["out"]]
    ms = 1e-3
    return {
        "s": dv["painted"] * ms, "wall_s": wall,
        "dom_s": dv["nav"].get("domContentLoadedEventEnd", 0) * ms,
        "first_callback_s": update[0]["t0"] * ms if update else None,
        "elements": req(elements[-1]) if elements else None,
        "nodes_s": dv["nodes"] * ms,
        "requests": [req(r) for r in update],
        "long_tasks": long_tasks(dv["long"], 0.0, dv["painted"]),
    }


def cpu_profile(driver, action, top: int = 6) -> list[tuple[str, float]]:
    """Run ``action()`` under the V8 sampling profiler (CDP); self time per script, seconds.
    ``(program)`` is mostly parsing/compiling, layout and paint outside JS."""
    driver.execute_cdp_cmd("Profiler.enable", {})
    driver.execute_cdp_cmd("Profiler.setSamplingInterval", {"interval": 200})
    driver.execute_cdp_cmd("Profiler.start", {})
    try:
        action()
    finally:
        prof = driver.execute_cdp_cmd("Profiler.stop", {})["profile"]
    nodes = {n["id"]: n["callFrame"] for n in prof["nodes"]}
    self_us: dict[str, float] = {}
    for sample, dt in zip(prof["samples"], prof["timeDeltas"][1:] + [0], strict=True):
        cf = nodes[sample]
        name = re.sub(r"\.v\d[\w.@]*?(\.min)?\.js$", ".js",
                      cf["url"].split("?")[0].rsplit("/", 1)[-1]) or cf["functionName"] or "?"
        if name != "(idle)":
            self_us[name] = self_us.get(name, 0.0) + dt
    return [(k, v * 1e-6) for k, v in sorted(self_us.items(), key=lambda kv: -kv[1])[:top]]


def settle(driver, timeout: float) -> None:
    until(driver, lambda d: d.execute_script(QUIET), timeout,
          "the page to go quiet (Dash requests finished, no animation)", poll=0.05)


def pointer(driver, x: float, y: float, double: bool = False) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(x), int(y))
    if double:
        actions.pointer_action.double_click()
    else:
        actions.pointer_action.click()
    actions.perform()


def expand_for_candidates(driver, want: int, timeout: float, max_expand: int = 6) -> list[str]:
    """Double-click collapsed modules (topmost first) until ``want`` conv/linear nodes are
    drawn. Returns the expanded module paths."""
    expanded: list[str] = []
    while len(js(driver, CANDIDATES, list(CLICK_TYPES))) < want and len(expanded) < max_expand:
        mods = sorted(js(driver, COLLAPSED), key=lambda m: (m["y"], m["x"]))
        if not mods:
            break
        m = mods[0]
        before = js(driver, "return window.cy.nodes('.op').length;")
        x, y = js(driver, "var cy = window.cy, n = cy.getElementById(arguments[0]);"
                          " cy.stop(); cy.zoom(1); cy.center(n);"
                          " var r = document.getElementById(arguments[1]).getBoundingClientRect();"
                          " var p = n.renderedPosition(); return [r.left + p.x, r.top + p.y];",
                  m["id"], "graph")
        pointer(driver, x, y, double=True)
        until(driver, lambda d, b=before: d.execute_script(
            "return window.cy.nodes('.op').length;") > b, timeout,
            f"module {m['path']} to expand after a double-click")
        settle(driver, timeout)
        expanded.append(m["path"])
    return expanded


def spread(items: list, k: int) -> list:
    if len(items) <= k:
        return list(items)
    step = (len(items) - 1) / (k - 1) if k > 1 else 0
    return [items[round(i * step)] for i in range(k)]


def click_highlight(driver, node: dict, timeout: float) -> dict:
    """One click on ``node``; seconds from Cytoscape's tap to the final highlight drawn (the
    selected style and the group colour on exactly the elements the quiet page shows)."""
    for attempt in range(2):
        x, y = js(driver, ARM_CLICK, node["id"], "graph", SELECTED_RGB, HIGHLIGHT_RGB)
        t0 = time.perf_counter()
        pointer(driver, x, y)
        try:
            until(driver, lambda d: d.execute_script(
                "var r = window.__dvClick; return r.tap !== undefined &&"
                " (r.tapped !== r.id || r.sel === true);"), timeout,
                f"{node['name']} to be selected after a click")
            wall = time.perf_counter() - t0
            settle(driver, timeout)  # every callback the click started has answered
            until(driver, lambda d: d.execute_script(  # two more frames drawn since then
                "var r = window.__dvClick, c = r.changes[r.changes.length - 1];"
                " return !c || c.frame + 2 < r.frames.length;"), timeout,
                "two animation frames after the page went quiet")
        finally:
            rec = js(driver, CLICK_RESULT)
        if rec.get("tapped") == node["id"]:
            break
        if attempt:
            raise BenchError(f"the click on {node['name']} hit {rec.get('tapped')}")
        settle(driver, timeout)
    if not rec["sel"] or rec["painted"] is None:
        raise BenchError(f"{node['name']} did not keep the selected style after a click")
    page = js(driver, "return {net: window.__dv.joined(), long: window.__dv.long};")
    net = [r for r in page["net"][rec["netFrom"]:]
           if r.get("url") == "_dash-update-component" and r["t0"] <= rec["seen"]]
    ms = 1e-3
    return {"name": node["name"], "type": node["type"], "s": (rec["painted"] - rec["tap"]) * ms,
            "seen_s": (rec["seen"] - rec["tap"]) * ms, "wall_s": wall,
            "members_lit": rec["nodes"], "edges_lit": rec["edges"], "states": rec["states"],
            "requests": [req(r, rec["tap"]) for r in net],
            "long_tasks": long_tasks(page["long"], rec["tap"], rec["seen"])}


def bench_model(key: str, args) -> dict:
    spec, kwargs = MODELS[key]
    res: dict = {"model": key, "spec": spec, "kwargs": kwargs, "error": None}
    server = driver = None
    try:
        server = Server(spec, kwargs, args.startup_timeout)
        res["server_startup_s"] = server.startup_s
        driver = make_driver(args.chromium, args.chromedriver, args.timeout)
        loads = []
        for i in range(args.loads):
            loads.append(first_graph(driver, server.url, spec, args.timeout))
            if i == 0:
                res["counts"] = js(driver, COUNTS)
                info = js(driver, "var e = document.getElementById('model-info');"
                                  " return e ? e.innerText : '';")
                found = re.search(r"([\d,]+) ops", info)
                res["total_ops"] = int(found.group(1).replace(",", "")) if found else None
            settle(driver, args.timeout)
        res["loads"] = loads
        res["first_graph_s"] = loads[0]["s"]
        res["first_graph_warm_s"] = (statistics.median(x["s"] for x in loads[1:])
                                     if len(loads) > 1 else None)
        res["expanded"] = expand_for_candidates(driver, args.clicks, args.timeout)
        cands = js(driver, CANDIDATES, list(CLICK_TYPES))
        cands.sort(key=lambda c: (c["y"], c["name"]))
        if not cands:
            raise BenchError("no conv/linear node is drawn to click")
        clicks = []
        for node in spread(cands, args.clicks):
            clicks.append(click_highlight(driver, node, args.timeout))
            settle(driver, args.timeout)
        res["clicks"] = clicks
        res["click_median_s"] = statistics.median(c["s"] for c in clicks)
        res["click_max_s"] = max(c["s"] for c in clicks)
        if args.profile:  # after the measured steps: profiling slows the page down
            res["restyle"] = driver.execute_async_script(RESTYLE)
            again = [c for c in spread(cands, args.clicks) if c["name"] != clicks[-1]["name"]]
            if again:
                res["cpu_click"] = cpu_profile(
                    driver, lambda: click_highlight(driver, again[0], args.timeout))
                settle(driver, args.timeout)
            # a cold load in a new browser (new profile dir: no HTTP or V8 code cache); the
            # profiler is started on a same-origin page so it survives the navigation
            driver.quit()
            driver = make_driver(args.chromium, args.chromedriver, args.timeout)
            driver.get(server.url + "_dash-dependencies")
            box: list = []
            res["cpu_load"] = cpu_profile(driver, lambda: box.append(
                first_graph(driver, server.url, spec, args.timeout)))
            res["cpu_load_s"] = box[0]["s"] if box else None
    except BenchError as exc:
        res["error"] = str(exc)
    except Exception as exc:  # selenium/driver failures: report, go on with the next model
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        res["error"] = f"{type(exc).__name__}: {first}"
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        if server is not None:
            server.stop()
    return res


# --------------------------------------------------------------------------------------------
# Server-side profile (in this process): the callbacks' work, timed directly.


def _best(fn, reps: int = 5):
    out, best = None, float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def profile_model(key: str, click_names: list[str]) -> dict:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from dash._utils import to_json

    from viewer.app.callbacks import graph as cb_graph
    from viewer.app.callbacks import inspect as cb_inspect
    from viewer.app.callbacks import model as cb_model
    from viewer.app.state import ModelEntry, SessionStore
    from viewer.app.viewmodel import build_view, default_collapsed

    spec, kwargs = MODELS[key]
    store = SessionStore([ModelEntry(spec, kwargs=kwargs)])
    t = time.perf_counter()
    store.base(spec)
    out = {"model_build_s": time.perf_counter() - t}
    sid = store.new_id()
    out["load_entry_s"], _ = _best(lambda: cb_model.load_entry(store, sid, spec))
    stage = store.session(sid).stage
    out["default_collapsed_s"], col = _best(lambda: default_collapsed(stage.graph,
                                                                      store.max_visible))
    out["build_view_s"], view = _best(lambda: build_view(stage.graph, col, stage.module_classes))
    cb_graph.render(store, sid, "new")
    out["legend_s"], leg = _best(lambda: cb_graph.legend(view))
    out["elements_json_s"], body = _best(lambda: to_json(
        {"elements": view.elements, "legend": leg, "info": cb_graph.view_info(view)}))
    out["elements_json_bytes"] = len(body)
    out["model_info_s"], _ = _best(lambda: cb_model.model_info(store, sid))
    inspects = []
    for name in click_names:
        sel = {"kind": "op", "name": name}
        # a click's two callbacks: the selection and its highlight, then the panels
        t_sel, q = _best(lambda s=sel: cb_inspect.inspect(store, sid, s, details=False))
        t_hl_json, _ = _best(lambda q=q: to_json([q.highlight, q.selection, q.group_options]))
        t_ins, r = _best(lambda s=q.selection: cb_inspect.inspect(store, sid, s, s["side"],
                                                                  s["gid"]))
        t_json, _ = _best(lambda r=r: to_json([r.details, r.group_panel]))
        inspects.append({"name": name, "select_s": t_sel, "select_json_s": t_hl_json,
                         "inspect_s": t_ins, "inspect_json_s": t_json,
                         "lit": len(q.highlight["nodes"]) + len(q.highlight["edges"])})
    out["inspect"] = inspects
    return out


# --------------------------------------------------------------------------------------------
# Report


def fmt_s(x: float | None) -> str:
    return "—" if x is None else (f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s")


def verdict(x: float | None, target: float) -> str:
    return "—" if x is None else ("PASS" if x <= target else "MISS")


def report(results: list[dict]) -> None:
    head = ["model", "ops total", "drawn", "cy nodes", "first graph", "(warm)", "target",
            "", "click→hl med", "(max)", "target", ""]
    rows = []
    for r in results:
        c = r.get("counts") or {}
        key = r["model"]
        rows.append([
            key, str(r.get("total_ops") or "—"), str(c.get("drawn", "—")),
            str(c.get("all", "—")), fmt_s(r.get("first_graph_s")),
            fmt_s(r.get("first_graph_warm_s")), f"≤ {TARGET_FIRST[key]:g} s",
            verdict(r.get("first_graph_s"), TARGET_FIRST[key]),
            fmt_s(r.get("click_median_s")), fmt_s(r.get("click_max_s")),
            f"≤ {TARGET_CLICK * 1000:.0f} ms", verdict(r.get("click_median_s"), TARGET_CLICK)])
    widths = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head))
    print(line.format(*["-" * w for w in widths]))
    for row in rows:
        print(line.format(*row))
    print("\nfirst graph = navigation start -> graph drawn (cold browser cache; warm = median "
          "of later loads); drawn = childless Cytoscape nodes after the default collapse, "
          "cy nodes also counts expanded module boxes")
    for r in results:
        print(f"\n[{r['model']}] {r['spec']}{' ' + r['kwargs'] if r['kwargs'] else ''}")
        if r.get("error"):
            print(f"  ERROR: {r['error']}")
        if "server_startup_s" in r:
            print(f"  server start (model build, not measured above): "
                  f"{r['server_startup_s']:.1f} s")
        if r.get("loads"):
            f, e = r["loads"][0], r["loads"][0]["elements"] or {}
            lt = f["long_tasks"]
            print(f"  cold load: DOMContentLoaded {fmt_s(f['dom_s'])}, first callback sent "
                  f"{fmt_s(f['first_callback_s'])}; elements sent {fmt_s(e.get('sent_s'))}, "
                  f"server+network {fmt_s(e.get('net_s'))} ({(e.get('bytes') or 0) / 1024:.0f} "
                  f"KiB), then waited {fmt_s(e.get('blocked_s'))} for the main thread; nodes in "
                  f"cy {fmt_s(f['nodes_s'])}, drawn {fmt_s(f['s'])} (python wall "
                  f"{fmt_s(f['wall_s'])})")
            print(f"  main thread before draw: {lt['n']} long tasks, {fmt_s(lt['total_s'])}; "
                  f"largest {fmt_s(lt['largest_s'])} at {fmt_s(lt['largest_at_s'])}")
            print("  requests (sent @ms + server/network ms [+ main-thread wait]): " + ", ".join(
                f"{q['out']} @{q['sent_s'] * 1000:.0f}+{q['net_s'] * 1000:.0f}"
                f"[+{q['blocked_s'] * 1000:.0f}]" for q in f["requests"]))
        if r.get("expanded"):
            print(f"  expanded by double-click first: {', '.join(r['expanded'])}")
        for c in r.get("clicks", []):
            lt = c["long_tasks"]
            rts = ", ".join(f"{q['out']} @{q['sent_s'] * 1000:.0f}+{q['net_s'] * 1000:.0f}"
                            f"[+{q['blocked_s'] * 1000:.0f}]" for q in c["requests"])
            print(f"  click {c['name']} ({c['type']}): {fmt_s(c['s'])} (final state from "
                  f"{fmt_s(c['seen_s'])} after {c['states'] - 1} changes: {c['members_lit']} "
                  f"nodes, {c['edges_lit']} edges lit; long tasks "
                  f"{fmt_s(lt['total_s'])}); requests after tap: {rts}")
        for label, k in (("cpu, cold load (new browser)", "cpu_load"),
                         ("cpu, one click", "cpu_click")):
            if r.get(k):
                extra = f" [drawn at {fmt_s(r['cpu_load_s'])} under the profiler]" \
                    if k == "cpu_load" and r.get("cpu_load_s") else ""
                print(f"  {label}{extra}: " + ", ".join(f"{n} {fmt_s(t)}" for n, t in r[k]))
        p = r.get("profile")
        if r.get("restyle"):
            x = r["restyle"]
            print(f"  Cytoscape stylesheet swap alone ({x['rules']} rules, {x['elements']} "
                  f"elements): {fmt_s(x['sync_s'])} sync, {fmt_s(x['frame_s'])} to drawn")
        if r.get("profile_error"):
            print(f"  server profile failed: {r['profile_error']}")
        if p:
            print(f"  server profile: load_entry {fmt_s(p['load_entry_s'])}, default_collapsed "
                  f"{fmt_s(p['default_collapsed_s'])}, build_view {fmt_s(p['build_view_s'])}, "
                  f"legend {fmt_s(p['legend_s'])}, elements to_json "
                  f"{fmt_s(p['elements_json_s'])} ({p['elements_json_bytes'] / 1024:.0f} KiB), "
                  f"model_info {fmt_s(p['model_info_s'])}")
            for i in p["inspect"]:
                print(f"    click {i['name']}: highlight {fmt_s(i['select_s'])} + to_json "
                      f"{fmt_s(i['select_json_s'])} ({i['lit']} elements); panels "
                      f"{fmt_s(i['inspect_s'])} + to_json {fmt_s(i['inspect_json_s'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--loads", type=int, default=3, help="page loads per model (1st cold)")
    parser.add_argument("--clicks", type=int, default=5, help="nodes clicked per model")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per browser wait")
    parser.add_argument("--startup-timeout", type=float, default=300.0,
                        help="seconds for a server to build its model and open its port")
    parser.add_argument("--profile", action="store_true",
                        help="also time the server-side callback work in this process")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--chromedriver",
                        default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    args = parser.parse_args(argv)
    args.loads, args.clicks = max(1, args.loads), max(1, args.clicks)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}",
              file=sys.stderr)
        return 0
    for path in (args.chromium, args.chromedriver):
        if not Path(path).is_file():
            print(f"not found: {path} (install chromium and chromium-driver; this script never "
                  "downloads a browser)", file=sys.stderr)
            return 0
    results = []
    for key in keys:
        print(f"... {key}", file=sys.stderr, flush=True)
        r = bench_model(key, args)
        if args.profile:
            try:
                r["profile"] = profile_model(key, [c["name"] for c in r.get("clicks", [])])
            except Exception as exc:
                r["profile_error"] = f"{type(exc).__name__}: {exc}"
        results.append(r)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    except Exception as exc:  # a bug here must not look like a failed benchmark run
        print(f"bench_browser failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(0)
