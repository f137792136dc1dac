"""Server-side session state: LRU eviction, shared models, start-up-only specs, layouts."""

from __future__ import annotations

import threading

import pytest

from viewer.app.state import (
    ModelEntry,
    SessionExpiredError,
    SessionStore,
    make_stage,
    picker_entries,
)
from viewer.core.errors import DepViewError
from viewer.core.export import round_entry


def test_picker_entries_put_startup_models_first_and_list_each_spec_once():
    entries = picker_entries([ModelEntry("demo:vit"), ModelEntry("pkg.mod:Net", ("1x3",))])
    specs = [e.spec for e in entries]
    assert specs[:2] == ["demo:vit", "pkg.mod:Net"]
    assert "demo:resnet" in specs and len(specs) == len(set(specs))


def test_sessions_are_lru_bounded_and_evicted_ones_say_so():
    store = SessionStore(max_sessions=2)
    a, b, c = (store.session(x, create=True) for x in "abc")
    assert len(store) == 2 and store.was_evicted("a")
    assert store.session("b") is b and store.session("c") is c
    with pytest.raises(SessionExpiredError, match="expired"):
        store.session("a")
    assert store.session("a", create=True) is not a  # a page that reloads starts over


def test_session_without_id_is_an_error():
    with pytest.raises(DepViewError, match="reload"):
        SessionStore().session(None)


def test_base_models_are_built_once_and_shared():
    store = SessionStore()
    out = []
    threads = [threading.Thread(target=lambda: out.append(store.base("demo:cnn")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in out}) == 1
    base = out[0]
    assert base.stage.summary["nodes"] == len(base.stage.graph.nodes)
    assert base.output_layers == ["fc"] and base.source["spec"] == "demo:cnn"


def test_only_offered_specs_can_be_loaded():
    store = SessionStore()
    with pytest.raises(DepViewError, match="only the listed models"):
        store.base("os:system")
    assert store.source_refusal({"spec": "demo:resnet"}) is None
    assert "does not offer" in store.source_refusal({"spec": "evil.module:attr"})
    # the hint is the command the export recorded (with its inputs), not an order to run it
    # (the file names the code)
    why = store.source_refusal({"spec": "specs.py:llama", "inputs": ["1x64:int64"],
                                "kwargs": {"layers": 2}})
    assert "built with --model specs.py:llama --input 1x64:int64 --kwargs " \
        "'{\"layers\": 2}' (start a server with that only if you trust" in why, why
    why = store.source_refusal({"spec": "llava", "inputs": ["input_ids=1x24:int64"],
                                "input_file": "/data/x.safetensors"})
    assert "built with --model llava --input-file /data/x.safetensors (" in why, why
    # an image and its tokens made for a vision-language model are made again, not shapes
    why = store.source_refusal({"spec": "llava", "inputs": ["input_ids=1x20:int64"],
                                "guessed_inputs": "an image and its 16 image tokens"})
    assert "built with --model llava (" in why, why
    store2 = SessionStore([ModelEntry("pkg.mod:Net", kwargs='{"width": 4}')])
    assert store2.source_refusal({"spec": "pkg.mod:Net", "kwargs": {"width": 4}}) is None
    # the spec is offered, only its kwargs differ: say so, and how to start the server
    why = store2.source_refusal({"spec": "pkg.mod:Net", "kwargs": {"width": 4000}})
    assert "with kwargs {\"width\": 4000}" in why and "builds it with {\"width\": 4}" in why
    assert "--kwargs '{\"width\": 4000}'" in why
    # a demo's kwargs set its size: an upload may not ask for a bigger one than is offered
    why = store.source_refusal({"spec": "demo:cnn", "kwargs": {"width": 512}})
    assert why and "with kwargs {\"width\": 512}" in why and "builds it with {}" in why
    assert store.source_refusal({"spec": "demo:cnn", "kwargs": {}}) is None


def test_views_are_cached_per_stage_and_collapse_set():
    store = SessionStore(max_visible=10)
    stage = store.base("demo:cnn").stage  # 18 ops: more than 10, so modules collapse
    v1 = store.view(stage, None)
    assert v1.collapsed and v1.n_nodes <= 10
    assert store.view(stage, None) is v1
    assert store.view(stage, ()) is not v1 and not store.view(stage, ()).collapsed


def test_make_stage_and_round_entry_match_the_export_format():
    store = SessionStore()
    base = store.base("demo:cnn")
    pruner = base.stage.pruner
    plan = pruner.plan(0.5, "l1")
    pruned = pruner.apply(plan)
    entry = round_entry(pruner, plan, pruned)
    assert set(entry) == {"tensors", "renormalized", "attrs", "plan", "groups"}
    stage = make_stage(pruned, base.inputs, base.output_layers, plan)
    assert stage.summary["params"] == sum(p.numel() for p in pruned.parameters())
    assert stage.summary["params"] < base.stage.summary["params"]


def test_concurrent_sessions_keep_the_lru_consistent():
    store = SessionStore(max_sessions=8)
    ids = [f"s{i}" for i in range(64)]

    def worker(chunk):
        for sid in chunk:
            store.session(sid, create=True)

    threads = [threading.Thread(target=worker, args=(ids[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 8
    assert sum(store.was_evicted(s) for s in ids) == 56


def test_a_session_the_server_never_made_says_the_server_restarted():
    # after a restart every page's id is unknown: "it keeps the 16 most recent" blamed
    # other pages for it
    with pytest.raises(SessionExpiredError, match="restarted") as caught:
        SessionStore().session("from-before-the-restart")
    assert "16 most recent" not in str(caught.value)


def test_an_action_of_a_page_showing_another_stage_than_its_session_is_refused():
    # a duplicated tab shares its page's session: after the other tab picked a model, this
    # tab's Apply pruned that model while this tab showed its own
    from viewer.app.callbacks.model import graph_rev, load_entry
    from viewer.app.state import StalePageError

    store = SessionStore()
    load_entry(store, "s", "demo:cnn")
    session = store.session("s")
    shown = graph_rev(session)  # what this tab drew
    assert session.shown(shown, "the Apply") is session
    assert session.shown(None, "the Apply") is session  # (nothing drawn yet)
    load_entry(store, "s", "demo:norms")  # the other tab
    with pytest.raises(StalePageError, match="out of date .*: the Apply was not done; "
                                             "reload the page"):
        session.shown(shown, "the Apply")
    assert session.shown(graph_rev(session), "the Apply") is session
