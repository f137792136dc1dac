"""Downloads: the checkpoint zip is fetched once from its route and reloads without pickle;
graph and groups JSON."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from viewer.app import main
from viewer.app.callbacks import export as cb
from viewer.app.callbacks.model import load_entry
from viewer.app.callbacks.prune import apply_round
from viewer.app.downloads import Downloads
from viewer.app.state import ModelEntry, SessionStore
from viewer.core.errors import DepViewError

export = pytest.importorskip("viewer.core.export")
SETTINGS = {"importance": "l1", "ratio": 0.4, "global_": False, "round_to": 1}


@pytest.fixture
def store():
    s = SessionStore()
    load_entry(s, "sid", "demo:cnn")
    return s


@pytest.fixture
def downloads():
    d = Downloads()
    yield d
    d.close()


@pytest.fixture
def app():
    """The app with a session "sid" that applied one round of demo:cnn."""
    app = main.create_app([ModelEntry("demo:cnn")])
    load_entry(app._depview_store, "sid", "demo:cnn")
    apply_round(app._depview_store, "sid", SETTINGS)
    yield app
    app._depview_downloads.close()


def _fetch(downloads: Downloads, token: str) -> bytes:
    f, _, size = downloads.take(token)
    with f:
        data = f.read()
    assert len(data) == size
    return data


def _reload(data: bytes, tmp_path):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(tmp_path)
    return export.load_pruned(tmp_path)


def _same_outputs(model, store, sid="sid"):
    pruned = store.session(sid).stage.model
    x = store.session(sid).base.inputs
    with torch.no_grad():
        assert torch.allclose(model(*x), pruned(*x), atol=1e-6)


def test_checkpoint_needs_an_applied_round(store, downloads):
    with pytest.raises(DepViewError, match="apply a pruning round first"):
        cb.prepare_checkpoint(store, downloads, "sid")
    assert len(downloads) == 0


def test_checkpoint_zip_reloads_to_the_pruned_model(store, downloads, tmp_path):
    apply_round(store, "sid", SETTINGS)
    ck = cb.prepare_checkpoint(store, downloads, "sid")
    assert ck.filename == "demo-cnn-pruned-round1.zip"
    assert ck.files == ("model.safetensors", "plan.json", "report.json")  # no model.pt2
    assert ck.pt2 == {"written": False, "reason": "not requested"}
    data = _fetch(downloads, ck.token)
    assert len(data) == ck.size
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == list(ck.files)
        # the weights are stored as they are (they barely deflate), the JSON is deflated
        assert zf.getinfo("model.safetensors").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("plan.json").compress_type == zipfile.ZIP_DEFLATED
        assert json.loads(zf.read("report.json"))["pt2"]["reason"] == "not requested"
    _same_outputs(_reload(data, tmp_path), store)
    assert downloads.take(ck.token) is None  # once
    assert not any(downloads.root.iterdir())  # no file left behind


def test_a_timed_rounds_checkpoint_reports_its_timing(store, downloads, monkeypatch):
    from viewer.app.callbacks import prune

    apply_round(store, "sid", SETTINGS)
    figures = {"before_ms": 2.0, "after_ms": 1.0, "speedup": 2.0, "rounds": 7,
               "runs_per_round": 25, "threads": 2, "device": "cpu"}
    monkeypatch.setattr(prune, "compare_speed", lambda before, after, inputs: dict(figures))
    assert "2.00× as fast" in prune.time_round(store, "sid")
    ck = cb.prepare_checkpoint(store, downloads, "sid")
    with zipfile.ZipFile(io.BytesIO(_fetch(downloads, ck.token))) as zf:
        assert json.loads(zf.read("report.json"))["timing"] == figures


def test_the_pt2_checkpoint_holds_the_torch_export_program(store, downloads, tmp_path):
    apply_round(store, "sid", SETTINGS)
    stage = store.session("sid").stage.key
    ck = cb.prepare_checkpoint(store, downloads, "sid", pt2=True, stage=stage)
    assert ck.filename == "demo-cnn-pruned-round1-pt2.zip" and ck.pt2["written"]
    data = _fetch(downloads, ck.token)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert "model.pt2" in zf.namelist()
        assert zf.getinfo("model.pt2").compress_type == zipfile.ZIP_STORED  # a zip already
        zf.extract("model.pt2", tmp_path / "pt2")
    program = torch.export.load(str(tmp_path / "pt2" / "model.pt2")).module()
    _same_outputs(program, store)
    _same_outputs(_reload(data, tmp_path / "dir"), store)
    # an offer made for an earlier stage is refused once the session moved on
    apply_round(store, "sid", {**SETTINGS, "ratio": 0.3})
    with pytest.raises(DepViewError, match="changed since"):
        cb.prepare_checkpoint(store, downloads, "sid", pt2=True, stage=stage)


def test_a_pt2_that_cannot_be_written_sends_nothing_again_and_says_why(app, monkeypatch):
    store, downloads = app._depview_store, app._depview_downloads
    first = cb.checkpoint_answer(app, store, downloads, "sid").to_plotly_json()
    assert "Checkpoint ready" in first["props"]["children"][0] and len(downloads) == 1
    monkeypatch.setattr(export, "_try_export_pt2", lambda *a: {
        "written": False, "reason": "torch.export failed: RuntimeError: no"})
    stage = store.session("sid").stage.key
    msg = cb.checkpoint_answer(app, store, downloads, "sid", pt2_for=stage).to_plotly_json()
    assert msg["props"]["children"] == ("No model.pt2: torch.export failed: RuntimeError: no. "
                                        "The checkpoint you downloaded is complete without it.")
    assert "msg-warn" in msg["props"]["className"]
    assert len(downloads) == 0 and not any(downloads.root.iterdir())  # nothing to fetch


def test_the_ready_message_links_the_file_and_offers_model_pt2():
    ck = cb.Checkpoint("tok", "m.zip", 54_512_000, ("model.safetensors", "plan.json"), "k",
                       {"written": False, "reason": "not requested"})
    msg = cb.ready_message("/_depview/download/tok", ck).to_plotly_json()
    link, offer = msg["props"]["children"][1], msg["props"]["children"][3]
    assert link.href == "/_depview/download/tok" and link.download == "m.zip"
    assert link.className == cb.AUTO_LINK  # assets/depview.js follows it
    assert "54.5 MB" in msg["props"]["children"][2]
    assert offer.id == {"type": "download-pt2", "stage": "k"}
    failed = cb.Checkpoint("tok", "m.zip", 10, ("model.safetensors",), "k",
                           {"written": False, "reason": "torch.export failed: X"})
    msg = cb.ready_message("/u", failed).to_plotly_json()
    assert "msg-warn" in msg["props"]["className"]
    assert "No model.pt2: torch.export failed: X." in msg["props"]["children"]


def test_two_rounds_export_composes_the_history(store, downloads, tmp_path):
    apply_round(store, "sid", SETTINGS)
    apply_round(store, "sid", {**SETTINGS, "ratio": 0.3})
    ck = cb.prepare_checkpoint(store, downloads, "sid")
    assert ck.filename.endswith("round2.zip")
    data = _fetch(downloads, ck.token)
    plan = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("plan.json"))
    assert len(plan["rounds"]) == 2
    _same_outputs(_reload(data, tmp_path), store)


def test_the_route_sends_the_zip_once_and_it_reloads(app, tmp_path):
    store, downloads = app._depview_store, app._depview_downloads
    ck = cb.prepare_checkpoint(store, downloads, "sid")
    url = downloads.url(app, ck.token)
    assert url == f"/_depview/download/{ck.token}" and len(ck.token) >= 40
    client = app.server.test_client()
    assert client.head(url).status_code == 405  # a HEAD (a link checker) does not spend it
    resp = client.get(url)
    assert resp.status_code == 200 and resp.mimetype == "application/zip"
    assert resp.headers["Content-Disposition"] == f"attachment; filename={ck.filename}"
    assert int(resp.headers["Content-Length"]) == ck.size == len(resp.data)
    assert resp.headers["Cache-Control"] == "no-store"
    _same_outputs(_reload(resp.data, tmp_path), store)
    assert not any(downloads.root.iterdir())  # deleted once sent
    again = client.get(url)  # a link works once
    assert again.status_code == 404
    assert again.mimetype == "text/plain" and again.text.count("\n") == 1
    assert "unknown, already used or expired" in again.text


def test_the_route_refuses_unknown_and_expired_tokens(app):
    store, downloads = app._depview_store, app._depview_downloads
    client = app.server.test_client()
    for bad in ("nope", "x" * 43):
        resp = client.get(f"/_depview/download/{bad}")
        assert resp.status_code == 404 and resp.text.count("\n") <= 1
    now = [0.0]
    downloads._clock = lambda: now[0]
    ck = cb.prepare_checkpoint(store, downloads, "sid")
    now[0] += downloads.ttl + 1
    resp = client.get(downloads.url(app, ck.token))
    assert resp.status_code == 404 and "expired" in resp.text
    assert not any(downloads.root.iterdir())  # an expired file is deleted


def test_a_session_fetches_only_its_own_files(app, tmp_path):
    store, downloads = app._depview_store, app._depview_downloads
    load_entry(store, "other", "demo:resnet")
    apply_round(store, "other", SETTINGS)
    mine = cb.prepare_checkpoint(store, downloads, "sid")
    theirs = cb.prepare_checkpoint(store, downloads, "other")
    assert mine.token != theirs.token
    client = app.server.test_client()
    plan = json.loads(zipfile.ZipFile(io.BytesIO(
        client.get(downloads.url(app, mine.token)).data)).read("plan.json"))
    assert plan["source"]["spec"] == "demo:cnn"
    plan = json.loads(zipfile.ZipFile(io.BytesIO(
        client.get(downloads.url(app, theirs.token)).data)).read("plan.json"))
    assert plan["source"]["spec"] == "demo:resnet"
    # a session's new file revokes its previous one: one waiting file per session
    first = cb.prepare_checkpoint(store, downloads, "sid")
    second = cb.prepare_checkpoint(store, downloads, "sid")
    assert client.get(downloads.url(app, first.token)).status_code == 404
    assert len(list(downloads.root.iterdir())) == 1
    assert client.get(downloads.url(app, second.token)).status_code == 200


def test_downloads_keep_at_most_max_files_and_close_removes_them(tmp_path):
    d = Downloads(max_files=2)
    tokens = []
    for i in range(3):
        (tmp_path / f"{i}.zip").write_bytes(b"x" * i)
        tokens.append(d.add(f"s{i}", tmp_path / f"{i}.zip", f"{i}.zip"))
    assert len(d) == 2 and d.take(tokens[0]) is None  # the oldest went
    root = d.root
    d.close()
    assert not root.exists() and d.take(tokens[2]) is None


def test_graph_and_groups_json(store):
    text, name = cb.graph_json(store, "sid")
    g = json.loads(text)
    assert name == "demo-cnn-graph.json" and len(g["nodes"]) == 18 and "op_types" in g
    text, name = cb.groups_json(store, "sid")
    groups = json.loads(text)["groups"]
    assert name == "demo-cnn-groups.json"
    assert all({"id", "members", "reason", "prunable"} <= set(r) for r in groups)
    assert any(not r["prunable"] and r["reason"] for r in groups)  # the output layer
    apply_round(store, "sid", SETTINGS)  # after a round, the names say which model
    assert cb.graph_json(store, "sid")[1] == "demo-cnn-pruned-round1-graph.json"
    assert cb.groups_json(store, "sid")[1] == "demo-cnn-pruned-round1-groups.json"


@pytest.mark.parametrize("spec, slug", [
    ("demo:resnet50", "demo-resnet50"),
    ("torchvision.models:resnet50", "torchvision-models-resnet50"),
    ("/home/me/nets/my_models.py:Net", "my_models-Net"),  # the file, not its whole path
    ("nets/models.py:build", "models-build"),
    ("C:\\Users\\me\\models.py:Net", "models-Net"),
    ("", "model"), (None, "model"),
])
def test_download_names_come_from_the_spec_without_its_directories(spec, slug):
    from viewer.app.callbacks.common import spec_slug

    assert spec_slug(spec) == slug


def test_graph_json_is_strict_when_an_op_holds_minus_inf(tmp_path):
    # masked_fill(mask, -inf) keeps -inf in the graph's attrs: json.dumps wrote -Infinity
    from conftest import file_session

    s = file_session(tmp_path, (
        "import torch\nclass M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(4, 6)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x).masked_fill(x[:, :1] > 9, float('-inf'))\n"), ("2x4",))

    def strict(c):
        raise ValueError(c)

    g = json.loads(cb.graph_json(s, "sid")[0], parse_constant=strict)
    assert any("-Infinity" in json.dumps(n["attrs"]) for n in g["nodes"])
    json.loads(cb.groups_json(s, "sid")[0], parse_constant=strict)


def test_an_export_directory_given_at_start_up_opens_for_another_round(tmp_path, downloads):
    # an export too large for the browser (GPT-2's 414 MB zip) is opened from disk instead:
    # `python -m viewer --model DIR`, as the CLI takes it
    from viewer.app.callbacks import prune as pcb
    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model
    from viewer.core.trace import build_graph

    lm = load_model("demo:cnn")
    pruner = Pruner(lm.model, lm.inputs, graph=build_graph(lm.model, lm.inputs),
                    output_layers=lm.output_layers)
    plan = pruner.plan(0.5, "l1")
    pruned = pruner.apply(plan)
    folder = export.export_dir(pruner, plan, pruned, tmp_path / "cnn-export", lm.source)
    store = SessionStore([ModelEntry(str(folder))])
    assert load_entry(store, "s", str(folder)) == ""
    session = store.session("s")
    x = session.base.inputs
    with torch.no_grad():
        assert torch.equal(session.stage.model(*x), pruned(*x))
    assert session.base.description == "export cnn-export: demo:cnn pruned in 1 round"
    text = apply_round(store, "s", {**SETTINGS, "ratio": 0.3})
    assert text.startswith("Round 2 applied")
    assert pcb.undo(store, "s") == "Undone: back to the export (after round 1)."
    apply_round(store, "s", {**SETTINGS, "ratio": 0.3})
    data = _fetch(downloads, cb.prepare_checkpoint(store, downloads, "s").token)
    assert len(json.loads(zipfile.ZipFile(io.BytesIO(data)).read("plan.json"))["rounds"]) == 2
    _same_outputs(_reload(data, tmp_path / "r2"), store, "s")  # rebuilt from the original
    # it brings its own inputs and weights: options that would change them are refused
    for entry in (ModelEntry(str(folder), inputs=("1x3x8x8",)),
                  ModelEntry(str(folder), device="meta")):
        with pytest.raises(DepViewError, match="is an export directory: it brings its own "
                                               "model and inputs"):
            SessionStore([entry]).base(str(folder))
    # but it may be given its weights tuned since (fine-tuning between rounds)
    from safetensors.torch import save_file

    with torch.no_grad():
        tuned = {k: v + 0.01 if v.is_floating_point() else v
                 for k, v in pruned.state_dict().items()}
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    store = SessionStore([ModelEntry(str(folder), weights=str(tmp_path / "tuned.safetensors"))])
    assert load_entry(store, "t", str(folder)) == ""
    session = store.session("t")
    assert torch.equal(session.stage.model.state_dict()["fc1.weight"], tuned["fc1.weight"])
    assert session.base.history[-1]["tuned"] is True
    assert pcb.first_stage(session) == "the export (after round 1, its weights tuned since)"
    apply_round(store, "t", {**SETTINGS, "ratio": 0.3})
    data = _fetch(downloads, cb.prepare_checkpoint(store, downloads, "t").token)
    rounds = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("plan.json"))["rounds"]
    assert [r.get("tuned") for r in rounds] == [True, None]


TIED_LM = """
import torch

class TiedLM(torch.nn.Module):
    # an embedding and an LM head sharing one weight, as GPT-2's wte and lm_head
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 16)
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 16)
        self.head = torch.nn.Linear(16, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        h = self.emb(x)
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))
"""


def test_the_ready_message_says_tied_weights_are_stored_once_per_name(downloads, tmp_path):
    # model.safetensors holds emb.weight and head.weight, one tensor in the model, twice
    (tmp_path / "tied.py").write_text(TIED_LM)
    spec = f"{tmp_path / 'tied.py'}:TiedLM"
    s = SessionStore([ModelEntry(spec, inputs=("1x4:int64",))])
    load_entry(s, "sid", spec)
    apply_round(s, "sid", SETTINGS)
    ck = cb.prepare_checkpoint(s, downloads, "sid")
    pruned = s.session("sid").stage.model
    assert ck.tied == (("emb.weight", "head.weight"),)
    assert ck.tied_bytes == pruned.emb.weight.numel() * 4
    text = cb.ready_message("/u", ck).to_plotly_json()["props"]["children"][3]
    assert text == ("Tied weights are stored once per name in model.safetensors (the format "
                    "cannot share a tensor; load_pruned keeps them tied): emb.weight = "
                    f"head.weight, {cb.fmt_bytes(ck.tied_bytes)} more. ")
    model = _reload(_fetch(downloads, ck.token), tmp_path / "out")
    assert model.head.weight is model.emb.weight  # what the message promises
    # a model without ties says nothing of them
    untied = cb.Checkpoint("tok", "m.zip", 10, ("model.safetensors",), "k",
                           {"written": False, "reason": "not requested"})
    assert "Tied" not in str(cb.ready_message("/u", untied).to_plotly_json())


CONFIG_MODEL = '''
import json
import torch

class Config:
    def __init__(self, width=16):
        self.width = width

    def to_json_string(self):
        return json.dumps(vars(self))

class M(torch.nn.Module):
    def __init__(self, config=None):
        super().__init__()
        self.config = config or Config()
        self.a = torch.nn.Linear(4, self.config.width)
        self.b = torch.nn.Linear(self.config.width, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))
'''


def test_a_model_built_from_a_config_gets_it_fitted_and_in_the_checkpoint(tmp_path, downloads):
    # Hugging Face's way: the class built from its config object alone. The round says what
    # it set, the checkpoint carries config.json, and the model it builds is the pruned one
    from conftest import file_session

    store = file_session(tmp_path, CONFIG_MODEL, ("2x4",))
    text = apply_round(store, "sid", SETTINGS)
    assert text.endswith("; config sizes set to width=10."), text
    session = store.session("sid")
    assert session.stages[0].model.config.width == 16  # the loaded model's is not changed
    # the history keeps saying it after the message is gone
    from viewer.app.callbacks.prune import history

    assert "config sizes set to width=10" in json.dumps(history(session)[0].to_plotly_json(),
                                                         default=str)
    ck = cb.prepare_checkpoint(store, downloads, "sid")
    assert "config.json" in ck.files
    with zipfile.ZipFile(io.BytesIO(_fetch(downloads, ck.token))) as zf:
        assert json.loads(zf.read("config.json")) == {"width": 10, "architectures": ["M"]}
        assert json.loads(zf.read("report.json"))["config"] == {
            "written": True, "file": "config.json", "changed": {"width": 10}}
    pruned = session.stage.model
    built = type(pruned)(type(pruned.config)(width=10))
    built.load_state_dict(pruned.state_dict())
    x = session.base.inputs
    with torch.no_grad():
        assert torch.equal(built(*x), pruned(*x))


def test_an_in_process_hf_export_opens_at_start_up_and_its_upload_says_how(tmp_path, downloads):
    """A model built in-process records no spec: the server opens its export directory
    (``--model DIR``: the Hugging Face class is built from the config plan.json holds) for
    another round, and refuses the same export uploaded, saying to start it that way."""
    import base64

    from viewer.app.callbacks.model import load_upload
    from viewer.core.prune import Pruner

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, bos_token_id=0, eos_token_id=0)).eval()
    ids = torch.randint(0, 100, (1, 8))
    pruner = Pruner(model, (ids,))
    plan = pruner.plan(0.5, "l1")
    pruned = pruner.apply(plan)
    folder = export.export_dir(pruner, plan, pruned, tmp_path / "llama-export")
    with pytest.raises(DepViewError, match=r"^llama.zip: this export's model was built "
                                           r"in-process .*start the server with --model DIR"):
        zipped = base64.b64encode(export.zip_dir(folder)).decode()
        load_upload(SessionStore(), "s", f"data:application/zip;base64,{zipped}", "llama.zip")
    store = SessionStore([ModelEntry(str(folder))])
    assert load_entry(store, "s", str(folder)) == ""
    session = store.session("s")
    assert session.base.description == ("export llama-export: LlamaForCausalLM (built "
                                        "in-process) pruned in 1 round")
    with torch.no_grad():
        assert torch.equal(session.stage.model(ids).logits, pruned(ids).logits)
    assert apply_round(store, "s", {**SETTINGS, "ratio": 0.3}).startswith("Round 2 applied")
    data = _fetch(downloads, cb.prepare_checkpoint(store, downloads, "s").token)
    again = _reload(data, tmp_path / "r2")  # no spec: from plan.json's hf_config
    with torch.no_grad():
        assert torch.equal(again(ids).logits, session.stage.model(ids).logits)
