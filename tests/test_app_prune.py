"""Pruning feature: settings, preview, apply with verification, history, overrides, ignores."""

from __future__ import annotations

import json
import re
import sys

import pytest
from conftest import TWO_OUTPUTS_FILE

from viewer.app import charts, ids
from viewer.app.callbacks import prune as cb
from viewer.app.callbacks.export import groups_json
from viewer.app.callbacks.graph import render
from viewer.app.callbacks.inspect import ignore_options, inspect, is_free_output
from viewer.app.callbacks.model import load_entry
from viewer.app.state import ModelEntry, SessionStore
from viewer.core.errors import DepViewError
from viewer.core.timing import speed_text

SETTINGS = {"importance": "l1", "ratio": 0.5, "global_": False, "round_to": 1}


def _text(component) -> str:
    """All text inside a Dash component tree."""
    return json.dumps(component, ensure_ascii=False, default=lambda c: c.to_plotly_json()
                      if hasattr(c, "to_plotly_json") else str(c))


@pytest.fixture
def store():
    s = SessionStore()
    load_entry(s, "sid", "demo:resnet")
    render(s, "sid", "new")
    return s


def test_parse_settings_accepts_controls_values():
    assert cb.parse_settings("l2", "0.25", "global", "4") == {
        "importance": "l2", "ratio": 0.25, "global_": True, "round_to": 4}
    assert cb.parse_settings("l1", 0, "uniform", 1)["round_to"] == 1
    # the boxes are text: any ratio typed, not only multiples of a browser "step"
    assert cb.parse_settings("l1", " 0.33 ", "uniform", "1")["ratio"] == 0.33
    assert cb.parse_settings("l1", "0.33", "uniform", " 8 ")["round_to"] == 8


@pytest.mark.parametrize("args, msg", [
    (("l1", 1.0, "uniform", 1), r"ratio must be in \[0, 1\), got 1.0"),
    (("l1", -0.1, "uniform", 1), r"ratio must be in \[0, 1\)"),
    (("l1", None, "uniform", 1), "ratio must be a number"),
    (("l1", " ", "uniform", 1), "ratio must be a number in \\[0, 1\\), got an empty box"),
    (("l1", "0.3", "uniform", "2.5"), "round to must be a whole number"),
    (("l1", "0.3", "uniform", "eight"), "round to must be a whole number"),
    (("l1", "nan", "uniform", 1), r"ratio must be in \[0, 1\)"),
    (("l1", "abc", "uniform", 1), "ratio must be a number"),
    (("magic", 0.5, "uniform", 1), "importance must be one of"),
    (("l1", 0.5, "uniform", 0), "round to must be >= 1"),
    (("l1", 0.5, "uniform", 2.5), "round to must be a whole number"),
    # an empty box is an error in both boxes, never silently read as 0 or 1
    (("l1", "0.3", "uniform", " "), r"round to must be a whole number >= 1 \(1: no "
                                    r"rounding\), got an empty box"),
    (("l1", "0.3", "uniform", None), "round to .* got an empty box"),
])
def test_parse_settings_rejects_bad_values_with_one_line(args, msg):
    with pytest.raises(DepViewError, match=msg) as info:
        cb.parse_settings(*args)
    assert "\n" not in str(info.value)


def test_preview_reports_params_macs_and_widths_without_touching_the_model(store):
    session = store.session("sid")
    before = {k: v.clone() for k, v in session.stage.model.state_dict().items()}
    pv = cb.run_preview(store, "sid", SETTINGS)
    assert pv["params"]["after"] < pv["params"]["before"]
    assert pv["macs"]["after"] < pv["macs"]["before"]
    assert any(r["after"] < r["before"] for r in pv["layers"])
    assert session.preview_plan is not None
    after = session.stage.model.state_dict()
    assert all((before[k] == after[k]).all() for k in before)
    params, macs, extra = cb.summary_lines(pv)
    assert "→" in params and "%" in macs and "units removed" in extra
    one = cb.summary_lines({**pv, "removed_units": 1, "groups_pruned": 1})[2]
    assert one.startswith("1 unit removed from 1 group") and "groups" not in one
    rules = cb.preview_rules(store, "sid")
    assert rules and any("⇒" in r["style"].get("label", "") for r in rules)


def test_time_forward_times_the_last_round_against_the_model_it_pruned(store, monkeypatch):
    with pytest.raises(DepViewError, match="nothing to time yet: apply a pruning round first"):
        cb.time_round(store, "sid")
    cb.apply_round(store, "sid", SETTINGS)
    session = store.session("sid")
    seen, real = [], cb.compare_speed

    def spy(before, after, inputs):
        seen.append((before, after, inputs))
        return real(before, after, inputs, rounds=3)

    monkeypatch.setattr(cb, "compare_speed", spy)
    text = cb.time_round(store, "sid")
    assert seen == [(session.stages[0].model, session.stages[1].model, session.base.inputs)]
    t = session.stage.timing
    assert t["rounds"] == 3 and t["before_ms"] > 0 and t["after_ms"] > 0
    assert text == f"Round 1: {speed_text(t, unicode=True)} as the model it pruned (3 rounds " \
                   "side by side)."
    assert "×" in text and "→" in text
    assert speed_text(t, unicode=True) in _text(cb.history(session))
    # the next round is not timed until asked; the first keeps its figures
    cb.apply_round(store, "sid", {**SETTINGS, "ratio": 0.2})
    assert session.stage.timing is None and session.stages[1].timing is t
    assert _text(cb.history(session)).count(" as fast") == 1

    def undo_meanwhile(before, after, inputs):  # the user pressed Undo while it ran
        cb.undo(store, "sid")
        return real(before, after, inputs, rounds=1)

    monkeypatch.setattr(cb, "compare_speed", undo_meanwhile)
    with pytest.raises(DepViewError, match="the model changed while it was timed"):
        cb.time_round(store, "sid")
    assert session.stages[1].timing is t


def test_a_modules_ratio_sets_every_group_rooted_in_it(store):
    from viewer.app.callbacks.inspect import control_values

    session = store.session("sid")
    pruner = session.stage.pruner
    inside = pruner.groups_named("layer2")
    assert [pruner.groups[g].root for g in inside] == \
        ["layer2.0.conv1", "layer2.0.conv2", "layer2.1.conv1"]
    module = {"kind": "module", "name": "layer2"}
    text = cb.set_module_override(store, "sid", "layer2", " 0.75 ")
    assert text == f"3 groups in layer2 will lose 75% of their units " \
                   f"({', '.join(f'#{g}' for g in inside)})."
    assert session.overrides == dict.fromkeys(inside, 0.75)
    assert control_values(store, "sid", module) == ([], 0.75)
    plan = cb.make_plan(session, {**SETTINGS, "ratio": 0.25})
    assert {g: len(u) / pruner.groups[g].n_units for g, u in plan.removed.items()
            if g in inside} == dict.fromkeys(inside, 0.75)
    assert plan.removed == pruner.plan(0.25, overrides={"layer2": 0.75}).removed
    # one group set apart: the module's box shows no single ratio
    cb.set_override(store, "sid", inside[0], "0.5")
    assert control_values(store, "sid", module) == ([], None)
    assert cb.set_module_override(store, "sid", "layer2", None).startswith(
        "Overrides of the groups in layer2 removed")
    assert session.overrides == {}
    # a module where no pruned group starts: its set button is disabled and says why
    assert cb.module_override_block(store, "sid", module) == ""
    assert "which is not pruned: it reaches the model output" in cb.module_override_block(
        store, "sid", {"kind": "module", "name": "fc"})
    assert cb.module_override_block(store, "sid", {"kind": "op", "name": "fc"}) == ""
    for name, ratio, msg in (("layer1.0.relu", "0.5", "holds no channels a group prunes"),
                             ("fc", "0.5", "which is not pruned"),
                             ("layer2", "1.5", r"ratio inside must be in \[0, 1\)"),
                             ("layer2", "", "ratio inside must be a number"),
                             (None, "0.5", "select a module first")):
        with pytest.raises(DepViewError, match=msg):
            cb.set_module_override(store, "sid", name, ratio)
    assert session.overrides == {}


def test_sensitivity_prunes_each_group_alone_with_the_sessions_ignores(store):
    session = store.session("sid")
    pruner = session.stage.pruner
    rows, text = cb.run_sensitivity(store, "sid", {**SETTINGS, "ratio": 0.5})
    assert [r["id"] for r in rows] == [g.id for g in pruner.groups if not pruner.reason(g)]
    ran = sorted(rows, key=lambda r: r["output_change"])
    assert text == (f"Sensitivity at 0.5 on the example inputs: {len(rows)} groups pruned one "
                    f"at a time; least #{ran[0]['id']} {ran[0]['root']} "
                    f"({ran[0]['output_change']:.3g}), most #{ran[-1]['id']} "
                    f"{ran[-1]['root']} ({ran[-1]['output_change']:.3g}).")
    cb.set_ignore(store, "sid", "layer1", ["out"])
    rows, _ = cb.run_sensitivity(store, "sid", {**SETTINGS, "ratio": 0.5})
    assert [r["id"] for r in rows] == [g.id for g in pruner.groups
                                       if not pruner.reason(g, session.ignored())]
    assert len(rows) < len(ran)
    rows, text = cb.run_sensitivity(store, "sid", {**SETTINGS, "ratio": 0.01})
    assert text == "At 0.01 no group loses a unit: raise the ratio."


def test_apply_pushes_a_verified_stage_and_undo_reset_go_back(store):
    session = store.session("sid")
    original = session.stage
    preview = cb.run_preview(store, "sid", SETTINGS)
    text = cb.apply_round(store, "sid", SETTINGS)
    assert text.startswith("Round 1 applied") and "forward ok" in text
    # the MACs the preview showed, as the preview showed them
    _, macs, _ = cb.summary_lines(preview)
    assert f"MACs {macs};" in text and preview["macs"]["after"] < preview["macs"]["before"]
    assert len(session.stages) == 2 and session.stage.verification["shapes_kept"]
    assert session.stage.summary["params"] < original.summary["params"]
    # round 2 is planned on the pruned model's own pruner
    text = cb.apply_round(store, "sid", {**SETTINGS, "ratio": 0.2})  # (no preview first)
    assert re.search(r"MACs [\d.]+[kMG]? → [\d.]+[kMG]? \(−\d", text), text
    assert len(session.stages) == 3
    assert session.stage.summary["params"] < session.stages[1].summary["params"]
    hist = cb.history(session)
    assert len(hist[0].children) == 3
    assert cb.undo(store, "sid").startswith("Undone")
    assert len(session.stages) == 2
    assert cb.reset(store, "sid") == "Reset to the original model."
    assert session.stages == [original]
    with pytest.raises(DepViewError, match="nothing to undo"):
        cb.undo(store, "sid")


def test_apply_refuses_an_empty_plan_and_keeps_state(store):
    with pytest.raises(DepViewError, match="removes nothing"):
        cb.apply_round(store, "sid", {**SETTINGS, "ratio": 0.0})
    assert len(store.session("sid").stages) == 1


def test_apply_short_of_memory_refuses_or_masks_layer_by_layer_and_says_so(store,
                                                                         monkeypatch):
    # the machine's memory, not a crashed server: a pruned copy that does not fit is one
    # line with the stages as they were; one that fits but leaves no room for the masked
    # copy is applied, masked layer by layer, and its text says so
    from viewer.core import memory

    session = store.session("sid")
    size = memory.tensor_bytes(session.stage.model)
    monkeypatch.setattr(memory, "available_memory", lambda: size // 100)
    with pytest.raises(DepViewError, match=r"^the pruned copy needs about .* GB free: free "
                                           r"[^;]*$"):  # (no round held: nothing to free)
        cb.apply_round(store, "sid", SETTINGS)
    assert len(session.stages) == 1
    from viewer.core.materialize import pruned_bytes

    p = session.stage.pruner
    need = pruned_bytes(p.model, p.changes(p.plan(0.5, "l1")))  # (the plan Apply makes)
    monkeypatch.setattr(memory, "available_memory", lambda: need)
    text = cb.apply_round(store, "sid", SETTINGS)
    assert text.startswith("Round 1 applied") and "forward ok, output shapes kept, masked " \
        "equivalence ok (max |Δ| " in text and ", masked layer by layer for want of " \
        "memory)" in text
    assert len(session.stages) == 2
    # a round held here and one on another page: the refusal says what frees memory, where
    other = store.session("other", create=True)
    load_entry(store, "other", "demo:resnet")
    cb.apply_round(store, "other", SETTINGS)
    monkeypatch.setattr(memory, "available_memory", lambda: 1)
    with pytest.raises(DepViewError) as err:
        cb.apply_round(store, "sid", SETTINGS)
    assert str(err.value).endswith(
        "; this page holds 1 pruned round (0.0 GB): Undo or Reset frees it; other pages hold "
        "1 pruned round (0.0 GB)")
    assert len(session.stages) == 2 and len(other.stages) == 2
    assert store.held_rounds("sid") == {
        "page": (1, memory.tensor_bytes(session.stage.model)), "shelf": (0, 0),
        "others": (1, memory.tensor_bytes(other.stage.model))}
    load_entry(store, "sid", "demo:cnn")  # (its resnet round waits on the shelf)
    assert store.held_rounds("sid")["page"] == (0, 0)
    assert store.held_rounds("sid")["shelf"][0] == 1
    assert store.memory_hint("sid").startswith("models this page left hold 1 pruned round (")


def test_no_room_to_run_the_applied_model_is_a_memory_line_with_the_pages_hint(store,
                                                                              monkeypatch):
    # it said "the pruned model fails to run: RuntimeError: DefaultCPUAllocator: ...", as
    # if the pruning were wrong, and named nothing that frees memory
    import viewer.core.verify as verify_mod

    cb.apply_round(store, "sid", SETTINGS)
    real_run = verify_mod.run

    def run(model, inputs):
        if sys._getframe(1).f_code.co_name == "verify":
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 1024 bytes.")
        return real_run(model, inputs)

    monkeypatch.setattr(verify_mod, "run", run)
    with pytest.raises(DepViewError) as err:
        cb.apply_round(store, "sid", SETTINGS)
    assert str(err.value).startswith(
        "not enough memory to run the pruned model (RuntimeError: DefaultCPUAllocator: can't "
        "allocate memory: you tried to allocate 1024 bytes.); free memory and try again; "
        "this page holds 1 pruned round ("), str(err.value)
    assert len(store.session("sid").stages) == 2  # (as they were)


def test_apply_of_a_model_nothing_can_be_pruned_in_says_why(tmp_path):
    # "raise the ratio, or un-ignore layers" was the advice for a model with no groups too
    from conftest import file_session

    store = file_session(tmp_path, "import torch\nclass M(torch.nn.Module):\n"
                                   "    def forward(self, x):\n        return x * 2\n",
                         ("1x4",))
    with pytest.raises(DepViewError, match="^nothing can be pruned: the model has no layer with "
                                           "channels to prune$"):
        cb.apply_round(store, "sid", SETTINGS)
    # its weights in a TorchScript submodule: that is why, not a lack of layers
    store = file_session(tmp_path, "import torch\nclass M(torch.nn.Module):\n"
                                   "    def __init__(self):\n        super().__init__()\n"
                                   "        self.inner = torch.jit.script(torch.nn.Linear(4, 2))\n"
                                   "    def forward(self, x):\n        return self.inner(x)\n",
                         ("1x4",))
    with pytest.raises(DepViewError, match="^no group of this model can be pruned; the first: "
                                           "'inner' is a TorchScript module, whose ops DepView "
                                           "cannot see"):
        cb.apply_round(store, "sid", SETTINGS)
    store = file_session(tmp_path, "import torch\nM = lambda: torch.nn.Linear(4, 2)\n",
                         ("1x4",))
    with pytest.raises(DepViewError, match="^no group of this model can be pruned; the first: "
                                           "it reaches the model output"):
        cb.apply_round(store, "sid", SETTINGS)


def test_ignoring_an_op_without_channels_is_refused_and_changes_nothing(store):
    # a ticked "ignore outputs" on a ReLU was stored; every preview then failed ("holds no
    # channels a group prunes"), where before it had silently done nothing
    with pytest.raises(DepViewError, match="layer1.0.relu holds no channels a group prunes"):
        cb.set_ignore(store, "sid", "layer1.0.relu", ["out"])
    session = store.session("sid")
    assert not session.ignore
    assert cb.make_plan(session, SETTINGS).removed
    assert cb.set_ignore(store, "sid", "layer1.0.relu", []).endswith("no longer ignored.")


def test_a_module_is_ignored_as_every_layer_inside(store):
    # the app ignored one layer at a time; a module (a collapsed block, a stage) had no boxes
    session = store.session("sid")
    pruner = session.stage.pruner
    inside = {g.id for g in pruner.groups if any(
        m.module.startswith("layer2.") and m.side == "out" for m in g.members)}
    assert inside and inside <= set(cb.make_plan(session, SETTINGS).removed)
    assert cb.set_ignore(store, "sid", "layer2", ["out"]) == \
        "Ignoring layer2's outputs: groups that would prune them are left alone."
    plan = cb.make_plan(session, SETTINGS)
    assert not inside & set(plan.removed) and plan.removed  # the others still prune
    assert all(plan.skipped[g].endswith("outputs are ignored") for g in inside)
    assert plan.settings["ignore"] == ["layer2:out"]
    assert cb.set_ignore(store, "sid", "layer2", []) == "layer2 is no longer ignored."
    with pytest.raises(DepViewError, match="select a node first"):
        cb.set_ignore(store, "sid", "layer9", ["out"])


def test_overrides_and_ignores_change_the_plan(store):
    session = store.session("sid")
    pruner = session.stage.pruner
    gid = next(g.id for g in pruner.groups if g.root == "layer1.0.conv1")
    assert "50%" in cb.set_override(store, "sid", gid, 0.5)
    assert cb.set_ignore(store, "sid", "layer2.0.conv1", ["out"]) == \
        "Ignoring layer2.0.conv1's outputs: groups that would prune them are left alone."
    plan = cb.make_plan(session, {**SETTINGS, "ratio": 0.25})
    n = next(g.n_units for g in pruner.groups if g.id == gid)
    assert len(plan.removed[gid]) == n // 2
    ignored = next(g.id for g in pruner.groups if g.root == "layer2.0.conv1")
    assert ignored not in plan.removed and "ignored" in plan.skipped[ignored]
    info = cb.plan_info(session)
    assert len(info[0].children) == 2
    # an apply clears them (they name this stage's groups); the history keeps them; an undo
    # brings them back, so Apply again makes the same round
    removed = cb.apply_round(store, "sid", {**SETTINGS, "ratio": 0.25})
    assert not session.overrides and not session.ignore
    line = cb.history(session)[0].children[1].children[1]
    assert f"group #{gid} at 50%" in line and "ignoring layer2.0.conv1:out" in line
    assert cb.undo(store, "sid") == "Undone: back to the original model."
    assert session.overrides == {gid: 0.5} and session.ignore == {"layer2.0.conv1:out"}
    assert cb.apply_round(store, "sid", {**SETTINGS, "ratio": 0.25}) == removed
    cb.undo(store, "sid")
    assert "removed" in cb.set_override(store, "sid", gid, None)
    with pytest.raises(DepViewError, match=r"\[0, 1\)"):
        cb.set_override(store, "sid", gid, 1.5)
    with pytest.raises(DepViewError, match="select a node"):
        cb.set_override(store, "sid", None, 0.5)
    # "set" with an empty or junk box is an error that keeps the override; only "clear" clears
    cb.set_override(store, "sid", gid, "0.33")
    for junk in ("", "abc", "1.5"):
        with pytest.raises(DepViewError, match="override ratio must"):
            cb.set_override(store, "sid", gid, junk)
    assert session.overrides == {gid: 0.33}


def test_a_setting_change_clears_the_preview_it_would_contradict(store):
    cb.run_preview(store, "sid", SETTINGS)
    assert cb.preview_rules(store, "sid")
    assert cb.clear_preview(store, "sid") is True
    assert store.session("sid").preview_plan is None and cb.preview_rules(store, "sid") == []
    assert cb.clear_preview(store, "sid") is False  # nothing to clear: the page is left alone


def test_preview_and_apply_plan_without_holding_the_session(store, monkeypatch):
    """Clicks on the graph (which take the session lock) are answered while a slow plan is
    computed; a plan whose inputs changed meanwhile is dropped, not stored or applied."""
    import threading

    session = store.session("sid")
    pruner = session.stage.pruner
    real = type(pruner).preview
    seen = {}

    def preview(self, plan, **kw):
        t = threading.Thread(target=lambda: seen.setdefault(
            "free", session.lock.acquire(timeout=5) and (session.lock.release() or True)))
        t.start()
        t.join()
        if seen.get("meddle"):
            session.overrides[next(iter(plan.removed))] = 0.1  # "set" clicked meanwhile
        return real(self, plan, **kw)

    monkeypatch.setattr(type(pruner), "preview", preview)
    cb.run_preview(store, "sid", SETTINGS)
    assert seen["free"] is True and session.preview_plan is not None
    session.reset_pruning_inputs()
    seen["meddle"] = True
    with pytest.raises(DepViewError, match="the preview was dropped: its pruning settings "
                                           "changed meanwhile"):
        cb.run_preview(store, "sid", SETTINGS)
    assert session.preview_plan is None


def test_an_apply_dropped_because_another_model_was_picked_says_which(store, monkeypatch):
    # "press the button again" after a pick meanwhile would have pruned the new model
    session = store.session("sid")
    pruner = session.stage.pruner
    real = type(pruner).apply

    def apply(self, plan, **kw):
        load_entry(store, "sid", "demo:cnn")  # picked while the Apply runs
        return real(self, plan, **kw)

    monkeypatch.setattr(type(pruner), "apply", apply)
    with pytest.raises(DepViewError, match=r"the Apply was dropped: another model was picked "
                                           r"meanwhile \(demo:resnet is no longer shown\)"):
        cb.apply_round(store, "sid", SETTINGS)
    assert session.base.entry_key == "demo:cnn" and len(session.stages) == 1
    assert session.applying == 0


def test_group_scores_follow_the_preview_plan(store):
    session = store.session("sid")
    gid = next(g.id for g in session.stage.pruner.groups if g.root == "layer1.0.conv1")
    sel = {"kind": "op", "name": "layer1.0.conv1", "gid": gid}
    scores, removed, title = cb.group_scores(store, "sid", sel, SETTINGS)  # before a preview
    assert len(scores) == 16 and len(removed) == 8 and "8 of 16" in title
    assert title.endswith("cut at ratio 0.5 (not previewed)")
    cb.run_preview(store, "sid", {**SETTINGS, "ratio": 0.25})
    scores, removed, title = cb.group_scores(store, "sid", sel, SETTINGS)
    assert title.endswith("4 of 16 units cut by the preview")
    assert removed == session.preview_plan.removed[gid] and len(removed) == 4
    fig = charts.score_figure(scores, removed, "t")
    assert fig.data[0].marker.color.count("#ef4444") == 4
    assert cb.group_scores(store, "sid", {"gid": None}, SETTINGS)[0] is None


def test_a_huge_group_that_is_not_pruned_draws_no_score_chart(store, monkeypatch):
    # GPT-2's tied LM head: 50257 bars for "0 of 50257 units cut" froze the tab ~50 s
    session = store.session("sid")
    out = next(g for g in session.stage.pruner.groups if session.stage.pruner.reason(g))
    sel = {"kind": "op", "name": out.root, "gid": out.id}
    assert cb.group_scores(store, "sid", sel, SETTINGS)[0] is not None  # small: drawn
    monkeypatch.setattr(cb, "NAMED_SCORE_LIMIT", out.n_units - 1)
    scores, removed, title = cb.group_scores(store, "sid", sel, SETTINGS)
    assert scores is None and removed == [] and "is not pruned" in title


def test_taylor_scores_show_on_click_before_a_preview(store):
    session = store.session("sid")
    pruner = session.stage.pruner
    gid = next(g.id for g in pruner.groups if g.root == "layer1.0.conv1")
    sel = {"kind": "op", "name": "layer1.0.conv1", "gid": gid}
    taylor = {**SETTINGS, "importance": "taylor"}
    scores, removed, title = cb.group_scores(store, "sid", sel, taylor)
    assert len(scores) == 16 and len(removed) == 8 and "taylor importance" in title
    # the same scores the plan will use (the pruner kept them)
    assert list(scores) == cb.make_plan(session, taylor).scores[gid]


def test_verification_text():
    v = {"forward": True, "shapes_kept": True,
         "masked_equivalence": {"ok": True, "max_abs_diff": 1e-8}}
    assert cb.verification_text(v) == ("forward ok, output shapes kept, masked equivalence ok "
                                       "(max |Δ| 1e-08)")
    assert cb.verification_text(None) == "not verified"
    v["masked_equivalence"]["in_float32"] = "in bfloat16 the outputs differed by 1.36% ..."
    assert cb.verification_text(v).endswith("masked equivalence ok (max |Δ| 1e-08, checked in "
                                            "float32)")
    v["masked_equivalence"]["by_layer"] = "not enough memory: a masked copy ..."
    assert cb.verification_text(v).endswith("(max |Δ| 1e-08, checked in float32, masked layer "
                                            "by layer for want of memory)")
    v["masked_equivalence"] = {"skipped": "1 pruned group is inexact", "exact_groups": {
        "groups": 2, "ok": True, "max_abs_diff": 0.0, "by_layer": "not enough memory: ..."}}
    assert cb.verification_text(v).endswith("masked equivalence of the 2 exact groups alone ok "
                                            "(max |Δ| 0, masked layer by layer for want of "
                                            "memory)")
    v["masked_equivalence"] = {"ok": True, "max_abs_diff": 0.0, "never_picked": "2 ..."}
    assert cb.verification_text(v).endswith("masked equivalence ok (max |Δ| 0, removing "
                                            "experts as if their router never picked them)")
    v["masked_equivalence"] = {"skipped": "1 pruned group is inexact", "exact_groups": {
        "groups": 6, "ok": True, "max_abs_diff": 0.0, "never_picked": 2}}
    assert cb.verification_text(v).endswith("masked equivalence of the 6 exact groups alone ok "
                                            "(max |Δ| 0, 2 of them removing experts as if "
                                            "their router never picked them)")


def _upload(tensors: dict) -> str:
    import base64

    from safetensors.torch import save

    return "data:application/octet-stream;base64," + base64.b64encode(save(tensors)).decode()


def test_a_taylor_batch_upload_scores_the_plan_and_is_checked_first(store):
    import torch

    taylor = {**SETTINGS, "importance": "taylor"}
    session = store.session("sid")
    assert "example inputs" in cb.batch_info(store, "sid")
    plain = cb.make_plan(session, taylor)
    assert plain.settings["batch"] == "example inputs"
    g = torch.Generator().manual_seed(1)
    text = cb.load_batch(store, "sid", _upload({"0": torch.randn(6, 3, 32, 32, generator=g)}),
                         "real.safetensors")
    assert "real.safetensors 0: 6x3x32x32" in text and "real.safetensors" in \
        cb.batch_info(store, "sid")
    scored = cb.make_plan(session, taylor)
    assert scored.settings["batch"] == [[6, 3, 32, 32]] and scored.scores != plain.scores
    # bad uploads: one line each, and the batch in use stays
    bad = [(_upload({"0": torch.randn(2, 5)}), "x.safetensors", "does not fit the model"),
           (_upload({"0": torch.randn(2, 5)}), "x.pt", "as a .safetensors file"),
           ("data:;base64," + "bm90IHNhZmV0ZW5zb3Jz", "y.safetensors", "not a valid safetensors"),
           (_upload({"0": torch.randn(1), "x": torch.randn(1)}), "z.safetensors", "mixes")]
    for contents, name, msg in bad:
        with pytest.raises(DepViewError, match=msg) as info:
            cb.load_batch(store, "sid", contents, name)
        assert "\n" not in str(info.value)
        assert session.batch_label.startswith("real.safetensors")
    cb.clear_batch(store, "sid")
    assert cb.make_plan(session, taylor).scores == plain.scores
    cb.load_batch(store, "sid", _upload({"0": torch.randn(6, 3, 32, 32, generator=g)}),
                  "real.safetensors")
    # the batch survives a pruning round (same inputs) and goes with a new model
    cb.apply_round(store, "sid", taylor)
    assert session.batch is not None and session.stage.plan.settings["batch"] == [[6, 3, 32, 32]]
    load_entry(store, "sid", "demo:cnn")
    assert session.batch is None and "example inputs" in cb.batch_info(store, "sid")


def test_taylor_scores_on_a_model_without_weights_say_why():
    from viewer.app.state import ModelEntry

    s = SessionStore([ModelEntry("demo:cnn", device="meta")])
    load_entry(s, "m", "demo:cnn")
    pruner = s.session("m").stage.pruner
    g = next(g for g in pruner.groups if g.root == "features.0")
    scores, removed, title = cb.group_scores(s, "m", {"kind": "op", "gid": g.id},
                                             {**SETTINGS, "importance": "taylor"})
    assert scores is None and removed == [] and "meta device" in title


def test_the_preview_says_when_groups_lose_nothing_and_why(store):
    plain = cb.summary_lines(cb.run_preview(store, "sid", SETTINGS))[2]
    assert "lose nothing" not in plain
    # resnet's 16-channel groups at 0.5 lose 8 units: rounded to 16, they lose none
    coarse = cb.run_preview(store, "sid", {**SETTINGS, "round_to": 16})
    n = coarse["kept_whole"]
    assert n > 0 and n == sum(1 for g in store.session("sid").stage.pruner.groups
                              if g.n_units == 16 and g.id not in coarse["skipped"])
    assert f"{n} prunable groups lose nothing (the ratio rounds down to 0 units in " \
           f"multiples of 16)" in cb.summary_lines(coarse)[2]


def test_the_bn_importance_says_which_groups_it_scored_by_l1():
    # demo:cnn's hidden Linear group has no norm layer: BN scale falls back to L1 for it
    s = SessionStore()
    load_entry(s, "sid", "demo:cnn")
    render(s, "sid", "new")
    bn = {**SETTINGS, "importance": "bn"}
    pv = cb.run_preview(s, "sid", bn)
    assert len(pv["scored_by_l1"]) == 1 and pv["n_scored"] > 1
    assert "BN scale: 1 group has no norm layer and was scored by L1" in \
        cb.summary_lines(pv)[2]
    assert "L1" not in cb.summary_lines(cb.run_preview(s, "sid", SETTINGS))[2]
    text = cb.apply_round(s, "sid", bn)
    assert text.endswith("; BN scale: 1 group has no norm layer and was scored by L1.")
    history = str(cb.history(s.session("sid")))
    assert "bn 50% uniform, 1 group without a norm layer scored by L1" in history
    assert cb.l1_fallback_text("bn", [4, 7], n_scored=2) == \
        "BN scale: no group has a norm layer: all 2 were scored by L1"
    assert cb.l1_fallback_text("bn", []) == "" and cb.l1_fallback_text("bn", None) == ""


def test_one_group_that_loses_nothing_is_named_in_the_singular(store):
    pv = cb.run_preview(store, "sid", {**SETTINGS, "global_": True})
    one = cb.summary_lines({**pv, "kept_whole": 1})[2]
    assert "1 prunable group loses nothing (none of its units ranks below the global " \
           "cut)" in one
    two = cb.summary_lines({**pv, "kept_whole": 2})[2]
    assert "2 prunable groups lose nothing (none of their units ranks" in two
    # in multiples of 8 a group with 7 units below the cut loses none: the rounding says why
    pv = cb.run_preview(store, "sid", {**SETTINGS, "global_": True, "round_to": 8})
    eight = cb.summary_lines({**pv, "kept_whole": 2})[2]
    assert "(fewer than 8 of their units rank below the global cut, and cuts are made in " \
           "multiples of 8)" in eight


def test_a_count_that_does_not_move_says_unchanged():
    from viewer.app.callbacks.common import change

    assert change(1200, 1200) == "1.20k (unchanged)"
    assert change(1200, 600) == "1.20k → 600 (−50.0%)"


def test_an_override_on_a_group_that_is_not_pruned_is_refused(store):
    # it was accepted, and then every preview failed ("override names group N, which is not
    # pruned") until the user found the clear button
    session = store.session("sid")
    pruner = session.stage.pruner
    blocked = next(g for g in pruner.groups if not g.prunable)
    with pytest.raises(DepViewError, match=f"group #{blocked.id} is not pruned, so it takes "
                                           "no ratio: "):
        cb.set_override(store, "sid", blocked.id, 0.5)
    assert not session.overrides
    assert cb.make_plan(session, SETTINGS).removed


def test_ignoring_the_layer_of_an_overridden_group_drops_its_override(store):
    session = store.session("sid")
    pruner = session.stage.pruner
    gid = next(g.id for g in pruner.groups if g.root == "layer2.0.conv1")
    cb.set_override(store, "sid", gid, 0.5)
    text = cb.set_ignore(store, "sid", "layer2.0.conv1", ["out"])
    assert text.endswith(f"The override of group #{gid} was removed: that group is no longer "
                         "pruned.")
    assert not session.overrides
    plan = cb.make_plan(session, SETTINGS)  # failed before: the override named a kept group
    assert gid not in plan.removed and plan.removed
    # another override stays
    other = next(g.id for g in pruner.groups if g.root == "layer1.0.conv1")
    cb.set_override(store, "sid", other, 0.25)
    assert "override" not in cb.set_ignore(store, "sid", "layer2.0.conv1", [])
    assert session.overrides == {other: 0.25}


def test_the_override_controls_say_why_a_group_takes_no_ratio(store):
    session = store.session("sid")
    pruner = session.stage.pruner
    blocked = next(g for g in pruner.groups if not g.prunable)
    why = cb.override_block(store, "sid", {"kind": "op", "name": blocked.root,
                                           "gid": blocked.id})
    assert why.startswith(f"group #{blocked.id} is not pruned: ")
    ok = next(g for g in pruner.groups if g.root == "layer2.0.conv1")
    sel = {"kind": "op", "name": ok.root, "gid": ok.id}
    assert cb.override_block(store, "sid", sel) == ""
    cb.set_ignore(store, "sid", "layer2.0.conv1", ["out"])  # now kept whole: no ratio
    assert "ignored" in cb.override_block(store, "sid", sel)
    assert cb.override_block(store, "sid", {"kind": "module", "name": "layer1"}) == ""


def test_the_rounding_message_says_heads_for_attention_groups():
    # round_to counts an attention group's units, which are heads (README): 4 heads rounded
    # to multiples of 8 keep all 4, and the message said "0 units"
    s = SessionStore()
    load_entry(s, "sid", "demo:llama")
    render(s, "sid", "new")
    pv = cb.run_preview(s, "sid", {**SETTINGS, "round_to": 8})
    assert pv["kept_whole"] == pv["kept_whole_heads"] == 2  # the two layers' q/k/v heads
    assert "2 prunable groups lose nothing (the ratio rounds down to 0 heads in multiples " \
           "of 8)" in cb.summary_lines(pv)[2]
    # rounded to 64, the 64-channel residual stream keeps all too: units and heads both
    pv = cb.run_preview(s, "sid", {**SETTINGS, "round_to": 64})
    assert (pv["kept_whole"], pv["kept_whole_heads"]) == (3, 2)
    assert "3 prunable groups lose nothing (the ratio rounds down to 0 units in multiples " \
           "of 64; an attention group's units are heads)" in cb.summary_lines(pv)[2]


def test_a_new_round_clears_the_score_chart_until_the_selection_is_shown_again(monkeypatch):
    # after Apply the chart kept the preview's "230 of 768 units cut by the preview" for
    # ~5 s on GPT-2 (until the new graph was drawn and the selection shown again)
    from types import SimpleNamespace

    from viewer.app import ids, main
    from viewer.app.state import ModelEntry

    app = main.create_app([ModelEntry("demo:cnn")])
    scores = app.callback_map[f"{ids.SCORE_CHART_BOX}.children"]
    assert ids.GRAPH_REV in [i["id"] for i in scores["inputs"]]
    on_scores = scores["callback"].__wrapped__
    monkeypatch.setattr(cb, "ctx", SimpleNamespace(triggered_id=ids.GRAPH_REV))
    box = on_scores({"kind": "op", "name": "features.0", "gid": 0}, 2, "l1", "0.5",
                    "uniform", "1", "sid")
    assert box.children == cb.SCORES_REDRAWN and box.className == "chart-hint"
    nothing = on_scores(None, 1, "l1", "0.5", "uniform", "1", "sid")  # no layer selected
    assert nothing.children == charts.SCORE_HINT
    app._depview_downloads.close()


def test_the_preview_says_when_an_lstm_keeps_more_cell_units_than_asked():
    preview = {"params": {"before": 10, "after": 8}, "macs": {"before": 10, "after": 8},
               "removed_units": 3, "groups_pruned": 1,
               "floor": "cell units kept above the projection's width, as an LSTM needs: "
                        "'lstm' 17"}
    assert cb.summary_lines(preview)[2].endswith("; cell units kept above the projection's "
                                                 "width, as an LSTM needs: 'lstm' 17")
    # so does a group the plan left whole at its planned width
    preview["width"] = "1 prunable group left whole: 'inp', at the planned width (16 of 32)"
    assert cb.summary_lines(preview)[2].endswith("'lstm' 17; 1 prunable group left whole: "
                                                 "'inp', at the planned width (16 of 32)")



def _buttons(tree) -> list:
    """The components with a dict id in a Dash component tree (a group panel)."""
    found = []

    def walk(c):
        if isinstance(c, (list, tuple)):
            for x in c:
                walk(x)
        elif hasattr(c, "to_plotly_json"):
            if isinstance(getattr(c, "id", None), dict):
                found.append(c)
            walk(getattr(c, "children", None))

    walk(tree)
    return found


def test_a_group_held_only_by_an_output_offers_to_free_it(tmp_path):
    # the stem's group says it reaches the feature map; its panel has a button that frees
    # that output, the first (the logits) never gets one
    (tmp_path / "net.py").write_text(TWO_OUTPUTS_FILE)
    spec = f"{tmp_path / 'net.py'}:Net"
    store = SessionStore([ModelEntry(spec, inputs=("1x3x6x6",))])
    load_entry(store, "sid", spec)
    render(store, "sid", "new")
    panel = inspect(store, "sid", {"kind": "op", "name": "stem"}, "out", None).group_panel
    [button] = _buttons(panel)
    assert button.id == {"type": ids.FREE_HELD, "output": "features"}
    assert button.children == "Let 'features' change width"
    head = inspect(store, "sid", {"kind": "op", "name": "head"}, "out", None).group_panel
    assert not _buttons(head)  # (held by the logits)
    assert cb.free_held_output(store, "sid", "features") == \
        "Output 'features' may now change width: 1 of 2 groups prunable (before: 0)."
    panel = inspect(store, "sid", {"kind": "op", "name": "stem"}, "out", None).group_panel
    assert not _buttons(panel)  # prunable now
    with pytest.raises(DepViewError, match="'feats' is not an output of this model"):
        cb.free_held_output(store, "sid", "feats")


def test_a_model_output_set_free_lets_its_groups_prune(tmp_path):
    # the stem's group reaches the feature map the model returns: blocked, until the user
    # lets that output change width (the other keeps its shape)
    (tmp_path / "net.py").write_text(TWO_OUTPUTS_FILE)
    spec = f"{tmp_path / 'net.py'}:Net"
    store = SessionStore([ModelEntry(spec, inputs=("1x3x6x6",))])
    load_entry(store, "sid", spec)
    session = store.session("sid")
    base = session.stage
    with pytest.raises(DepViewError, match="no group of this model can be pruned"):
        cb.apply_round(store, "sid", SETTINGS)
    assert cb.set_free_output(store, "sid", "output.features", True) == \
        "Output 'features' may now change width: 1 of 2 groups prunable (before: 0)."
    assert session.stage is not base and base.pruner.free_outputs == []  # (shared: kept)
    assert [li.children for li in cb.plan_info(session)[0].children] == \
        ["free output features"]
    assert cb.set_free_output(store, "sid", "output.features", True) == ""  # (no change)
    text, _ = groups_json(store, "sid")  # (the groups JSON download names them too)
    assert json.loads(text)["free_outputs"] == ["features"]
    # the inspector shows the box for an output (of a model with several), checked
    render(store, "sid", "new")
    sel = {"kind": "op", "name": "output.features"}
    assert inspect(store, "sid", sel, "out", None, details=False).show_free_output
    assert is_free_output(store, "sid", sel)
    assert not is_free_output(store, "sid", {"kind": "op", "name": "output.logits"})
    assert ignore_options(store, "sid", sel) == []  # (an output: no ignore boxes)
    assert ignore_options(store, "sid", {"kind": "op", "name": "x"}) == []  # (nor the input)
    assert not inspect(store, "sid", {"kind": "op", "name": "stem"}, "out", None,
                       details=False).show_free_output
    with pytest.raises(DepViewError, match="select a model output first"):
        cb.set_free_output(store, "sid", "stem", True)
    with pytest.raises(DepViewError, match="every output of the model would be free"):
        cb.set_free_output(store, "sid", "output.logits", True)
    text = cb.apply_round(store, "sid", SETTINGS)
    assert text.startswith("Round 1 applied: 4 units removed from 1 group"), text
    assert "masked equivalence ok" in text
    line = cb.history(session)[0].children[1].children[1]
    assert "free outputs features" in line
    assert session.stage.pruner.free_outputs == []  # (a new round starts with none)
    assert cb.undo(store, "sid") == "Undone: back to the original model."
    assert session.stage.pruner.free_outputs == ["features"]
    assert cb.set_free_output(store, "sid", "output.features", False) == \
        "Output 'features' keeps its shape again: 0 of 2 groups prunable (before: 1)."
