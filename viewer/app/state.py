"""Server-side state: per-browser-session models, graphs, pruners and pruning history.

Models never go into the page. Each page load gets a random session id (kept in a
``dcc.Store``); callbacks look the :class:`Session` up here. The store keeps the most recently
used ``max_sessions`` sessions (LRU); a callback from an evicted session gets
:class:`SessionExpiredError`, whose message the page shows. Dash serves callbacks from several
threads: the store's maps are guarded by one lock and each session has its own lock, held by a
callback for as long as it works on that session.

Original models are built once per :class:`ModelEntry` and shared read-only between sessions
(pruning always works on copies); so are their graphs, groups and drawn layouts.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from viewer.core.errors import DepViewError
from viewer.core.graph import Graph
from viewer.core.memory import gigabytes, tensor_bytes
from viewer.core.plan import Plan
from viewer.core.prune import Pruner
from viewer.core.text import counted
from viewer.core.trace import build_graph

from .viewmodel import DEFAULT_MAX_VISIBLE, View, build_view, default_collapsed

DEFAULT_SPEC = "demo:resnet"


@dataclass(frozen=True)
class ModelEntry:
    """A model the picker offers: a spec given at start-up (or a demo) and how to build it.

    Only these specs are ever imported; the browser can only choose among them.
    """

    spec: str
    inputs: tuple[str, ...] = ()
    kwargs: str = ""
    weights: str | None = None
    label: str = ""
    description: str = ""
    device: str = "cpu"  #: "meta": browse a model too large to hold (no weights)
    seed: int = 0  #: seed for the weights a factory initialises and the example inputs
    input_file: str | None = None  #: the example inputs themselves (a batch file)
    dtype: str = "float32"  #: what the model runs in ("bfloat16": a model twice as large)

    @property
    def title(self) -> str:
        return self.label or self.spec


def demo_entries() -> list[ModelEntry]:
    """One entry per demo model, in the registry's order."""
    import demo_models

    return [ModelEntry(f"demo:{d.name}", label=f"demo:{d.name}", description=d.description)
            for d in demo_models.DEMOS.values()]


def picker_entries(extra: Iterable[ModelEntry] | None = None) -> list[ModelEntry]:
    """Models named at start-up first, then the demos (a spec appears once)."""
    out: dict[str, ModelEntry] = {}
    for e in list(extra or []) + demo_entries():
        out.setdefault(e.spec, e)
    return list(out.values())


class SessionExpiredError(DepViewError):
    """The page's session was evicted (or the server restarted)."""


class StalePageError(DepViewError):
    """The page shows a model or round its session has left (see :meth:`Session.shown`)."""


@dataclass
class Stage:
    """One model in a session's history: the original (or uploaded) model, or the result of
    a pruning round. ``plan`` and ``round`` describe the round that made it from the stage
    before (``round`` is that round's plan.json entry, for multi-round exports)."""

    key: str
    model: nn.Module
    graph: Graph
    pruner: Pruner
    module_classes: dict[str, str]
    plan: Plan | None = None
    verification: dict | None = None
    round: dict | None = None
    summary: dict = field(default_factory=dict)
    #: what the round did to the model's config (:attr:`Pruner.config_fit`)
    config: dict | None = None
    #: the round's forward timed against the stage before (:func:`timing.compare_speed`),
    #: once the user asked for it
    timing: dict | None = None


@dataclass
class Base:
    """What is shared between sessions for one model: its first stage and where it came
    from (``source`` is :attr:`LoadedModel.source`; ``history`` lists plan.json rounds of an
    uploaded export)."""

    entry_key: str
    stage: Stage
    inputs: object
    output_layers: list[str]
    source: dict
    description: str = ""
    history: list[dict] = field(default_factory=list)


def _export_base(entry: ModelEntry, folder: Path) -> Base:
    """A start-up ``--model DIR``: the pruned model of an export directory on the original's
    example inputs, with its rounds so far (as an uploaded zip of it, without the browser:
    a large export is read from disk). The recorded source is rebuilt: the user named it."""
    from viewer.core.export import open_export

    model, lm, plan = open_export(folder, entry.device, inputs=entry.inputs,
                                  input_file=entry.input_file, kwargs=entry.kwargs,
                                  weights=entry.weights, dtype=entry.dtype)
    rounds = list(plan.get("rounds") or [])
    stage = make_stage(model, lm.inputs, lm.output_layers)
    return Base(entry.spec, stage, lm.inputs, list(lm.output_layers), dict(plan["source"]),
                entry.description or f"export {folder.name}: "
                f"{plan['source']['spec'] or type(model).__name__ + ' (built in-process)'} "
                f"pruned in {counted(len(rounds), 'round')}", rounds)


@dataclass
class Session:
    """One browser page's state."""

    sid: str
    lock: threading.RLock = field(default_factory=threading.RLock)
    base: Base | None = None
    stages: list[Stage] = field(default_factory=list)
    collapsed: frozenset[str] | None = None  #: None: the default for the graph's size
    view: View | None = None
    preview_plan: Plan | None = None
    preview: dict | None = None
    overrides: dict[int, float] = field(default_factory=dict)
    ignore: set[str] = field(default_factory=set)  #: "name:out" / "name:in"
    batch: object | None = None  #: uploaded inputs for the Taylor importance (None: examples)
    batch_label: str = ""
    #: picker entry -> the stages of a model left with applied rounds (picking it again
    #: brings them back), least recently left first
    shelf: OrderedDict[str, list[Stage]] = field(default_factory=OrderedDict)
    #: Applies running on this session now: they work without the session lock, and a page
    #: reloaded meanwhile says that one is still running
    applying: int = 0

    @property
    def stage(self) -> Stage:
        if not self.stages:
            raise DepViewError("no model loaded: pick one in the model list")
        return self.stages[-1]

    def shown(self, rev: dict | None, what: str) -> Session:
        """This session, for ``what`` (an action: "the Apply") of a page whose graph-rev store
        holds ``rev``: raises :class:`StalePageError` when the page shows another stage than
        the session's current one (a second tab of the page, which shares its session, picked
        a model or applied a round; or a round landed after the page reloaded), so that
        nothing acts on a model the page does not show. ``rev`` None: the page has drawn no
        model yet."""
        if rev is None:
            return self
        with self.lock:
            current = self.stages[-1].key if self.stages else None
        if current != rev["stage"]:
            raise StalePageError(f"this page is out of date (its session changed in another "
                                 f"tab, or a round finished after the page reloaded): {what} "
                                 "was not done; reload the page to see the session's model")
        return self

    def ignored(self) -> set[tuple[str, str]]:
        """The ignores as the pruner takes them: ``{("layer1.0.conv1", "out"), ...}``."""
        return {tuple(x.rsplit(":", 1)) for x in self.ignore}

    def reset_pruning_inputs(self) -> None:
        self.preview_plan = None
        self.preview = None

    def history_rounds(self) -> list[dict]:
        """plan.json rounds before the current stage's round (uploaded ones first)."""
        rounds = list(self.base.history) if self.base else []
        return rounds + [s.round for s in self.stages[1:-1] if s.round]


def make_stage(model: nn.Module, inputs, output_layers: list[str], plan: Plan | None = None,
               verification: dict | None = None, round_: dict | None = None,
               config: dict | None = None) -> Stage:
    """Trace ``model``, find its groups (checked on the meta device) and wrap it as a stage."""
    graph = build_graph(model, inputs, autograd=True)  # grad_fn names for the inspector
    pruner = Pruner(model, inputs, graph=graph, output_layers=output_layers)
    try:
        pruner.validate_groups()
    except Exception:  # validation needs a meta-device forward; without it groups stay as found
        pass
    classes = {name: type(m).__name__ for name, m in model.named_modules() if name}
    params = sum(p.numel() for p in model.parameters())
    summary = {"nodes": len(graph.nodes), "edges": len(graph.edges), "params": int(params),
               "groups": len(pruner.groups),
               "prunable": sum(1 for g in pruner.groups if not pruner.reason(g))}
    return Stage(uuid.uuid4().hex, model, graph, pruner, classes, plan, verification, round_,
                 summary, config)


def with_free_outputs(stage: Stage, free: list[str]) -> Stage:
    """``stage`` with its groups found again, the outputs ``free`` (paths) free to change
    width (see ``Pruner(free_outputs=...)``); the model and its graph are the same."""
    old = stage.pruner
    pruner = Pruner(stage.model, old.inputs, graph=stage.graph, output_layers=old.output_layers,
                    free_outputs=free)
    try:
        pruner.validate_groups()
    except Exception:  # (as make_stage: without validation the groups stay as found)
        pass
    summary = {**stage.summary, "groups": len(pruner.groups),
               "prunable": sum(1 for g in pruner.groups if not pruner.reason(g))}
    return replace(stage, pruner=pruner, summary=summary)


class SessionStore:
    """LRU-bounded sessions plus shared, LRU-bounded original models and layouts."""

    def __init__(self, entries: Iterable[ModelEntry] | None = None, max_sessions: int = 16,
                 max_models: int = 8, max_views: int = 64,
                 max_visible: int = DEFAULT_MAX_VISIBLE):
        self.entries: dict[str, ModelEntry] = {e.spec: e for e in picker_entries(entries)}
        self.max_sessions = max_sessions
        self.max_models = max_models
        self.max_views = max_views
        self.max_visible = max_visible
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._bases: OrderedDict[str, Base] = OrderedDict()
        self._base_locks: dict[str, threading.Lock] = {}
        self._views: OrderedDict[tuple[str, frozenset[str]], View] = OrderedDict()

    # -- sessions ---------------------------------------------------------------------------
    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def session(self, sid: str | None, create: bool = False) -> Session:
        """The session ``sid``. Unknown ids get a new session when ``create`` (page load,
        model pick); otherwise an evicted one raises :class:`SessionExpiredError`."""
        if not sid:
            raise DepViewError("the page has no session id: reload the page")
        with self._lock:
            s = self._sessions.get(sid)
            if s is not None:
                self._sessions.move_to_end(sid)
                return s
            if not create and sid in self._evicted:
                raise SessionExpiredError(
                    f"this page's session expired on the server (it keeps the "
                    f"{self.max_sessions} most recent): pick a model or reload the page")
            if not create:  # (never made here: the server restarted since the page loaded)
                raise SessionExpiredError(
                    "the server does not know this page's session (it was restarted since "
                    "the page loaded?): reload the page")
            s = self._sessions[sid] = Session(sid)
            self._evicted.pop(sid, None)
            while len(self._sessions) > self.max_sessions:
                old, _ = self._sessions.popitem(last=False)
                self._evicted[old] = None
            while len(self._evicted) > 10 * self.max_sessions:
                self._evicted.popitem(last=False)
            return s

    def held_rounds(self, sid: str) -> dict[str, tuple[int, int]]:
        """The pruned rounds the server holds in memory, as (rounds, bytes): ``page`` on
        ``sid``'s current model, ``shelf`` on models that page left (picking them brings
        them back), ``others`` on every other page. What an Apply short of memory tells."""
        with self._lock:
            sessions = list(self._sessions.values())
        held = {"page": [0, 0], "shelf": [0, 0], "others": [0, 0]}
        for s in sessions:
            # (no session lock: another page's Apply may hold its own for a minute; a copy
            # of a list or of a dict's values is one step under the GIL)
            kept = [("page" if s.sid == sid else "others", st) for st in list(s.stages)[1:]]
            kept += [("shelf" if s.sid == sid else "others", st)
                     for stages in list(s.shelf.values()) for st in list(stages)[1:]]
            for where, st in kept:
                held[where][0] += 1
                held[where][1] += tensor_bytes(st.model)
        return {k: (n, b) for k, (n, b) in held.items()}

    def was_evicted(self, sid: str) -> bool:
        with self._lock:
            return sid in self._evicted

    def memory_hint(self, sid: str) -> str:
        """What frees memory for an Apply that did not fit: the rounds held, and where ("" when
        none is held)."""
        held = self.held_rounds(sid)
        say = {"page": "this page holds {}: Undo or Reset frees {}",
               "shelf": "models this page left hold {}: pick them and Reset to free {}",
               "others": "other pages hold {}"}
        return "; ".join(
            say[k].format(f"{counted(n, 'pruned round')} ({gigabytes(b)})",
                          "it" if n == 1 else "them")
            for k, (n, b) in held.items() if n)

    def __len__(self) -> int:
        return len(self._sessions)

    # -- shared original models -------------------------------------------------------------
    def base(self, spec: str) -> Base:
        """The original model of a picker entry, built once (raises DepViewError for a spec
        that was not offered: the browser cannot make the server import anything else)."""
        entry = self.entries.get(spec)
        if entry is None:
            raise DepViewError(f"unknown model {spec!r}: only the listed models can be loaded")
        with self._lock:
            hit = self._bases.get(spec)
            if hit is not None:
                self._bases.move_to_end(spec)
                return hit
            lock = self._base_locks.setdefault(spec, threading.Lock())
        with lock:  # one build per model even when two pages ask at once
            with self._lock:
                if spec in self._bases:
                    return self._bases[spec]
            from viewer.core.export import export_folder

            folder = export_folder(entry.spec)
            if folder is not None:
                base = _export_base(entry, folder)
            else:
                from viewer.core.spec import load_model

                lm = load_model(entry.spec, inputs=list(entry.inputs) or None,
                                kwargs=entry.kwargs or None, weights=entry.weights,
                                device=entry.device, seed=entry.seed,
                                input_file=entry.input_file, dtype=entry.dtype)
                stage = make_stage(lm.model, lm.inputs, lm.output_layers)
                base = Base(spec, stage, lm.inputs, list(lm.output_layers), dict(lm.source),
                            entry.description or lm.description)
            with self._lock:
                self._bases[spec] = base
                while len(self._bases) > self.max_models:
                    self._bases.popitem(last=False)
            return base

    def source_refusal(self, source: dict) -> str | None:
        """Why an uploaded export's recorded source may not be rebuilt here (None: it may).
        Only demos and the specs given at start-up, with the same factory kwargs, are
        importable: the upload's plan.json is not trusted to name code."""
        if source.get("spec") is None:
            return ("this export's model was built in-process (its plan.json names no spec to "
                    "build it from): unzip it and start the server with --model DIR")
        spec = str(source.get("spec", ""))
        kwargs = source.get("kwargs") or {}
        entry = self.entries.get(spec)
        if entry is None:
            inputs = "" if spec.startswith("demo:") else "".join(
                f" --input {x}" for x in source.get("inputs") or [] if isinstance(x, str))
            if isinstance(source.get("input_file"), str):  # (the zip holds a copy of it)
                inputs = f" --input-file {source['input_file']}"
            elif source.get("guessed_inputs"):  # (made again: an image and its tokens)
                inputs = ""
            kw = f" --kwargs '{json.dumps(kwargs)}'" if kwargs else ""
            # (the command comes from the file: the user is told so, not told to run it)
            return (f"this export was pruned from {spec!r}, which this server does not offer; "
                    f"its plan.json says it was built with --model {spec}{inputs}{kw} "
                    "(start a server with that only if you trust the code it names)")
        # a demo too: its kwargs set its size (a zip must not make the server build a bigger
        # model than it offers)
        want = json.loads(entry.kwargs) if entry.kwargs else {}
        if kwargs == want:
            return None
        return (f"this export was pruned from {spec} with kwargs {json.dumps(kwargs)}, but "
                f"this server builds it with {json.dumps(want)}: a server started with "
                f"--model {spec} --kwargs '{json.dumps(kwargs)}' would load it")

    # -- layouts ----------------------------------------------------------------------------
    def view(self, stage: Stage, collapsed: Iterable[str] | None) -> View:
        """The drawn view of a stage (cached per stage and collapse set). ``None`` means the
        default collapse for the graph's size."""
        col = (default_collapsed(stage.graph, self.max_visible) if collapsed is None
               else frozenset(collapsed))
        key = (stage.key, col)
        with self._lock:
            hit = self._views.get(key)
            if hit is not None:
                self._views.move_to_end(key)
                return hit
        v = build_view(stage.graph, col, stage.module_classes)
        with self._lock:
            self._views[key] = v
            while len(self._views) > self.max_views:
                self._views.popitem(last=False)
        return v
