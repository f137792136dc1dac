"""Model choice: picker entries and uploaded export zips (callback logic as plain functions)."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest

from viewer.app.callbacks import model as cb
from viewer.app.state import ModelEntry, SessionStore
from viewer.core.errors import DepViewError


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _contents(data: bytes) -> str:
    return "data:application/zip;base64," + base64.b64encode(data).decode()


def test_load_entry_starts_a_fresh_history():
    store = SessionStore()
    assert cb.load_entry(store, "s1", "demo:cnn") == ""
    session = store.session("s1")
    assert len(session.stages) == 1 and session.base.entry_key == "demo:cnn"
    assert cb.graph_rev(session)["stage"] == session.stage.key
    info = cb.model_info(store, "s1")
    assert "ops" in info[1].children and "groups" in info[1].children


def test_the_header_of_a_users_model_names_its_class_and_its_rounds(tmp_path):
    from viewer.app.callbacks import prune as pcb

    f = tmp_path / "nets.py"
    f.write_text("import torch\nclass Net(torch.nn.Sequential):\n    def __init__(self):\n"
                 "        super().__init__(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))\n")
    store = SessionStore([ModelEntry(f"{f}:Net", inputs=("1x4",))])
    assert cb.load_entry(store, "s", f"{f}:Net") == ""
    assert cb.model_info(store, "s")[0].children == "Net"
    pcb.apply_round(store, "s", pcb.parse_settings("random", "0.5", "uniform", "1"))
    assert cb.model_info(store, "s")[0].children == "Net — after 1 pruning round"


def test_load_entry_after_eviction_says_the_session_started_over():
    store = SessionStore(max_sessions=1)
    cb.load_entry(store, "a", "demo:cnn")
    cb.load_entry(store, "b", "demo:cnn")  # evicts "a"
    assert "expired" in cb.load_entry(store, "a", "demo:cnn")


def test_unknown_picker_value_is_refused():
    with pytest.raises(DepViewError, match="only the listed models"):
        cb.load_entry(SessionStore(), "s", "some.module:thing")


def test_upload_rejects_junk_with_one_line_errors():
    store = SessionStore()
    with pytest.raises(DepViewError, match="^weights.pt: the upload is not a zip"):
        cb.load_upload(store, "s", _contents(b"hello"), "weights.pt")  # any type reaches us
    with pytest.raises(DepViewError, match="no plan.json"):
        cb.load_upload(store, "s", _contents(_zip({"a.txt": b"x"})), "x.zip")
    with pytest.raises(DepViewError, match="^x.zip: the file is empty$"):
        cb.load_upload(store, "s", "data:application/zip;base64,", "x.zip")


def test_an_uploaded_plan_json_that_unpacks_to_more_than_an_export_holds_is_refused(
        monkeypatch):
    # the page sends up to 200 MB: its plan.json, deflated a thousand times, was unpacked
    # whole into memory before anything was checked
    from viewer.core import export

    monkeypatch.setattr(export, "JSON_MIN_LIMIT", 1 << 20)
    plan = {"format": "depview-pruned/1", "source": {"spec": "demo:cnn", "kwargs": {}}}
    padded = json.dumps(plan).encode() + b" " * (2 << 20)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("plan.json", padded)
        zf.writestr("model.safetensors", b"")
    data = buf.getvalue()
    assert len(data) < len(padded) // 100
    with pytest.raises(DepViewError) as err:
        cb.load_upload(SessionStore(), "s", _contents(data), "bomb.zip")
    assert str(err.value).startswith("bomb.zip: the zip's plan.json is 2.0 MB: more than the "
                                     "1.0 MB a JSON file of this export may hold")
    monkeypatch.undo()  # (the same plan.json, within the bound, is read)
    assert cb.peek_source(data)["spec"] == "demo:cnn"


def test_upload_never_imports_a_spec_the_server_was_not_started_with():
    plan = {"format": "depview-pruned/1", "source": {"spec": "os:system", "kwargs": {}}}
    data = _zip({"plan.json": json.dumps(plan).encode(), "model.safetensors": b""})
    with pytest.raises(DepViewError, match="^evil.zip: .*does not offer"):
        cb.load_upload(SessionStore(), "s", _contents(data), "evil.zip")


def test_upload_of_a_real_export_loads_the_pruned_model(tmp_path):
    export = pytest.importorskip("viewer.core.export")
    store = SessionStore()
    base = store.base("demo:cnn")
    pruner = base.stage.pruner
    plan = pruner.plan(0.5, "l1")
    pruned = pruner.apply(plan)
    out = export.export_dir(pruner, plan, pruned, tmp_path / "e", base.source)
    note = cb.load_upload(store, "s", _contents(export.zip_dir(out)), "cnn.zip")
    assert "demo:cnn" in note
    session = store.session("s")
    assert session.stage.summary["params"] == sum(p.numel() for p in pruned.parameters())
    assert len(session.base.history) == 1  # the uploaded round, for later exports
    # rounds made here go on from the export's: round 2, and the header says so once
    from viewer.app.callbacks import prune as pcb

    text = pcb.apply_round(store, "s", pcb.parse_settings("l1", "0.3", "uniform", "1"))
    assert text.startswith("Round 2 applied")
    desc = cb.model_info(store, "s")[0].children
    assert desc.count("round") == 2 and "pruned in 1 round — then 1 pruning round more" in desc
    hist = pcb.history(session)[0].children
    assert "after round 1" in hist[0].children and hist[1].children[0].children == "round 2: "
    assert pcb.undo(store, "s") == "Undone: back to the uploaded export (after round 1)."


def test_upload_refuses_a_bigger_demo_and_rounds_that_do_not_add_up(tmp_path):
    """A zip is data: its kwargs may not make the server build a demo bigger than it offers,
    and a round edited by hand is refused when opened (a later export is made from it)."""
    store = SessionStore()
    export, out = _cnn_export(store, tmp_path)
    doc = json.loads((out / "plan.json").read_text())

    def upload(edit) -> str:
        d = json.loads(json.dumps(doc))
        edit(d)
        (out / "plan.json").write_text(json.dumps(d))
        with pytest.raises(DepViewError) as err:
            cb.load_upload(store, "s", _contents(export.zip_dir(out)), "x.zip")
        return str(err.value)

    why = upload(lambda d: d["source"].update(kwargs={"width": 512}))
    assert why.startswith("x.zip: ") and "with kwargs {\"width\": 512}" in why
    key = next(iter(doc["tensors"]))
    why = upload(lambda d: d["rounds"][0]["tensors"][key].update({"0": [0, 999]}))
    assert why.startswith("x.zip: plan.json's kept indices in round 1") and "\n" not in why
    assert store.session("s", create=True).base is None  # nothing loaded


def test_a_failed_load_puts_the_picker_back_on_the_model_still_drawn():
    store = SessionStore()
    assert cb.picker_after_failure(store, "new") == (None, "pick a model")
    cb.load_entry(store, "s", "demo:cnn")
    with pytest.raises(DepViewError):
        cb.load_entry(store, "s", "demo:nope")
    assert cb.picker_after_failure(store, "s")[0] == "demo:cnn"
    assert store.session("s").base.entry_key == "demo:cnn"  # still the model drawn


def test_a_huge_model_on_the_meta_device_is_browsed_without_its_weights():
    # `serve --device meta` on a 7B shape would need ~28 GB with weights; on meta it needs none
    import argparse

    from viewer.app.callbacks import prune as pcb
    from viewer.app.callbacks.export import prepare_checkpoint
    from viewer.app.downloads import Downloads
    from viewer.app.main import entries_from_args
    kwargs = '{"dim": 1024, "n_layers": 4, "n_heads": 16, "n_kv_heads": 4, "ffn_hidden": 2816}'
    args = argparse.Namespace(model=["demo:llama"], input=[], kwargs=kwargs, weights=None,
                              device="meta")
    s = SessionStore(entries_from_args(args))
    note = cb.load_entry(s, "m", "demo:llama")
    assert "meta device" in note and "'random'" in note
    assert cb.importance_for(s, "m", "l1") == "random"  # the picker switches to what works
    assert cb.importance_for(s, "m", "random") is None
    stage = s.session("m").stage
    assert all(p.device.type == "meta" for p in stage.model.parameters())
    assert stage.summary["prunable"] > 0
    with pytest.raises(DepViewError, match="meta device"):
        pcb.run_preview(s, "m", pcb.parse_settings("l1", 0.5, "uniform", 1))
    preview = pcb.run_preview(s, "m", pcb.parse_settings("random", 0.5, "uniform", 1))
    assert preview["params"]["after"] < preview["params"]["before"]
    pcb.apply_round(s, "m", pcb.parse_settings("random", 0.5, "uniform", 1))
    with pytest.raises(DepViewError, match="no weights to export"):
        prepare_checkpoint(s, Downloads(), "m")


def test_a_model_with_weights_keeps_the_chosen_importance():
    s = SessionStore()
    cb.load_entry(s, "c", "demo:cnn")
    assert cb.importance_for(s, "c", "l1") is None


def _cnn_export(store, tmp_path):
    """demo:cnn pruned at 0.5 and exported: (the export module, the directory)."""
    export = pytest.importorskip("viewer.core.export")
    base = store.base("demo:cnn")
    plan = base.stage.pruner.plan(0.5, "l1")
    return export, export.export_dir(base.stage.pruner, plan, base.stage.pruner.apply(plan),
                                     tmp_path / "e", base.source)


def test_an_upload_whose_weights_do_not_fit_says_which_tensor_not_a_temp_path(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    store = SessionStore()
    export, out = _cnn_export(store, tmp_path)
    sd = load_file(str(out / "model.safetensors"))
    name = next(k for k, v in sd.items() if v.dim() == 4)
    sd[name] = torch.zeros(1, *sd[name].shape[1:])
    save_file(sd, str(out / "model.safetensors"))
    with pytest.raises(DepViewError) as info:
        cb.load_upload(store, "s", _contents(export.zip_dir(out)), "t.zip")
    text = str(info.value)
    assert f"size mismatch for {name}" in text and "\n" not in text
    assert "the zip" in text and "/tmp" not in text and str(tmp_path) not in text
    assert text.startswith("t.zip: ")  # named, as every other upload error
    (out / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(DepViewError, match="^t.zip: the zip's model.safetensors is not a valid"):
        cb.load_upload(store, "s", _contents(export.zip_dir(out)), "t.zip")


def test_a_failed_upload_changes_nothing_not_even_the_pickers_label(tmp_path):
    # after opening an export, a garbage zip changed the label "uploaded cnn.zip" to "cnn.zip"
    from dash import no_update

    store = SessionStore()
    export, out = _cnn_export(store, tmp_path)
    good = _contents(export.zip_dir(out))
    rev, _msg, value, label, emptied = cb.choose_model(store, "s", None, good, "cnn.zip", True)
    assert rev["stage"] == store.session("s").stage.key
    assert (value, label, emptied) == (None, "uploaded cnn.zip", None)
    stage = store.session("s").stage
    for junk in (_contents(b"not a zip"), _contents(_zip({"a.txt": b"x"}))):
        rev, msg, value, label, emptied = cb.choose_model(store, "s", None, junk, "bad.zip",
                                                          True)
        assert rev is no_update and value is no_update and label is no_update
        assert emptied is None and "msg-error" in msg.className
        assert store.session("s").stage is stage
    # a failed pick puts the picker back on the upload, with the label it had
    *_, value, label, _ = cb.choose_model(store, "s", "demo:nope", None, None, False)
    assert (value, label) == (None, "uploaded cnn.zip")


def _round(store, sid):
    from viewer.app.callbacks import prune as pcb

    return pcb.apply_round(store, sid, pcb.parse_settings("l1", "0.3", "uniform", "1"))


def test_switching_models_keeps_the_rounds_applied_to_the_one_left():
    # picking another model dropped the applied rounds without a word
    store = SessionStore()
    cb.load_entry(store, "s", "demo:cnn")
    _round(store, "s")
    pruned = store.session("s").stage
    note = cb.load_entry(store, "s", "demo:norms")
    assert note == "demo:cnn keeps its 1 round: pick it again to go on from it."
    assert len(store.session("s").stages) == 1
    note = cb.load_entry(store, "s", "demo:cnn")
    assert note.startswith("Back to demo:cnn after its 1 round (Reset goes back")
    session = store.session("s")
    assert len(session.stages) == 2 and session.stage is pruned
    assert cb.load_entry(store, "s", "demo:cnn") == ""  # the picker set to it: kept as is
    assert session.stage is pruned


def test_a_session_keeps_the_rounds_of_a_few_models_and_says_which_it_drops():
    store = SessionStore()
    names = ["demo:cnn", "demo:norms", "demo:rnn", "demo:slicing"]
    for name in names:
        cb.load_entry(store, "s", name)
        _round(store, "s")
    note = cb.load_entry(store, "s", "demo:vit")
    assert note.endswith(f"(Dropped the 1 round applied to demo:cnn: rounds of at most "
                         f"{cb.SHELF_SIZE} other models are kept.)")
    assert list(store.session("s").shelf) == names[1:]
    assert cb.load_entry(store, "s", "demo:cnn") == ""  # a fresh start


def test_rounds_applied_to_an_upload_are_dropped_with_a_note(tmp_path):
    store = SessionStore()
    export, out = _cnn_export(store, tmp_path)
    cb.load_upload(store, "s", _contents(export.zip_dir(out)), "cnn.zip")
    _round(store, "s")
    assert cb.load_entry(store, "s", "demo:cnn") == (
        "Dropped the 1 round applied to the uploaded cnn.zip (download a checkpoint before "
        "switching to keep rounds).")


def test_a_reloaded_page_gets_its_session_back_with_its_rounds():
    store = SessionStore()
    cb.load_entry(store, "s", "demo:norms")
    _round(store, "s")
    pruned = store.session("s").stage
    # the page's initial call names the picker's default model, not the one on screen
    rev, note, picker, _placeholder, upload = cb.choose_model(
        store, "s", "demo:resnet", None, None, upload=False, initial=True)
    assert store.session("s").stage is pruned and rev["stage"] == pruned.key
    assert picker == "demo:norms" and upload is None
    assert note.children == "Reloaded: demo:norms with its 1 round."
    # a page with a new (or expired) id loads the default as before
    rev, *_ = cb.choose_model(store, "new", "demo:resnet", None, None, upload=False,
                              initial=True)
    assert store.session("new").base.entry_key == "demo:resnet"


def test_a_hugging_face_model_directory_is_offered_and_pruned(tmp_path):
    tf = pytest.importorskip("transformers")
    from viewer.app.callbacks import prune as pcb

    tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2,
                                     n_positions=32)).save_pretrained(tmp_path / "tiny-gpt2")
    spec = str(tmp_path / "tiny-gpt2")
    store = SessionStore([ModelEntry(spec)])
    assert cb.load_entry(store, "s", spec) == ""
    assert cb.model_info(store, "s")[0].children == "GPT2LMHeadModel from tiny-gpt2"
    text = pcb.apply_round(store, "s", pcb.parse_settings("l1", "0.5", "uniform", "1"))
    assert text.startswith("Round 1 applied") and "config sizes set to n_embd=8" in text


def test_a_page_reloaded_while_an_apply_runs_says_so():
    # the round landed in the session after the reload, unseen: the page showed the round
    # before it with nothing running
    store = SessionStore()
    cb.load_entry(store, "s", "demo:cnn")
    store.session("s").applying = 1
    _rev, note, *_ = cb.choose_model(store, "s", "demo:resnet", None, None, upload=False,
                                     initial=True)
    assert note.children == cb.APPLY_RUNNING and "msg-warn" in note.className
