import io
import json
import re
import shutil
import sys
import warnings
import zipfile

import pytest
import torch

from viewer.core.errors import DepViewError
from viewer.core.export import (
    check_dir,
    export_dir,
    load_pruned,
    read_export_zip,
    reshape_like_plan,
    write_zip,
    zip_dir,
)
from viewer.core.plan import Plan
from viewer.core.prune import Pruner
from viewer.core.spec import load_model


@pytest.mark.parametrize("name", ["resnet", "densenet", "shufflenet", "rnn", "llama", "unet",
                                  "norms", "yolo"])
def test_export_reload_is_bit_exact(demo_pruner, tmp_path, name):
    lm, p = demo_pruner(name)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / name, lm.source)
    assert {f.name for f in out.iterdir()} >= {"model.safetensors", "plan.json", "report.json"}
    again = load_pruned(out)
    with torch.no_grad():
        assert torch.equal(pruned(*lm.inputs), again(*lm.inputs))
    assert str(again) == str(pruned)  # attributes (repr) follow
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["after"] == sum(t.numel() for t in again.parameters())
    assert report["verification"]["forward"] and report["verification"]["shapes_kept"]
    assert "written" in report["pt2"]
    assert check_dir(out)["ok"]


def test_plan_json_slicing_invariant(demo_pruner, tmp_path):
    lm, p = demo_pruner("mobilenet")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "m", lm.source)
    meta = json.loads((out / "plan.json").read_text())
    assert meta["source"]["spec"] == "demo:mobilenet"
    assert meta["versions"]["torch"] == torch.__version__
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    orig = lm.model.state_dict()
    for key, dims in meta["tensors"].items():
        t = orig[key]
        for d, kept in sorted(dims.items(), key=lambda kv: int(kv[0])):
            t = t.index_select(int(d), torch.tensor(kept))
        assert torch.equal(t, saved[key]), key
    assert meta["attrs"]["features.0.0"]["out_channels"] < 16


def test_two_rounds_compose(tmp_path):
    lm = load_model("demo:cnn")
    p1 = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan1 = p1.plan(0.5)
    m1 = p1.apply(plan1)
    out1 = export_dir(p1, plan1, m1, tmp_path / "r1", lm.source)
    p2 = Pruner(m1, lm.inputs, output_layers=lm.output_layers)
    plan2 = p2.plan(0.5)
    m2 = p2.apply(plan2)
    hist = json.loads((out1 / "plan.json").read_text())["rounds"]
    out2 = export_dir(p2, plan2, m2, tmp_path / "r2", lm.source, history=hist)
    again = load_pruned(out2)
    with torch.no_grad():
        assert torch.equal(again(*lm.inputs), m2(*lm.inputs))
    assert again.features[0].out_channels == 4  # 16 -> 8 -> 4
    # without history= the export holds round 2 alone, relative to the round-1 model: its
    # check fails, and says what may be missing
    forgot = export_dir(p2, plan2, m2, tmp_path / "forgot", lm.source, pt2=False)
    res = check_dir(forgot)
    assert not res["ok"] and "export_dir then needs history=" in res["problems"][0], res


def test_zip_roundtrip_and_bad_uploads(demo_pruner, tmp_path):
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "z", lm.source)
    model, meta, original = read_export_zip(zip_dir(out))
    assert original.source == lm.source
    with torch.no_grad():
        assert torch.equal(model(*lm.inputs), pruned(*lm.inputs))
    with pytest.raises(DepViewError, match="not a zip"):
        read_export_zip(b"hello")
    # inputs given as a file (--input-file) travel in the zip, and are the ones rebuilt on
    x = {"0": torch.randn(3, 3, 32, 32)}
    from safetensors.torch import save_file

    save_file(x, str(tmp_path / "x.safetensors"))
    lm2 = load_model("demo:cnn", input_file=str(tmp_path / "x.safetensors"))
    p2 = Pruner(lm2.model, lm2.inputs, output_layers=lm2.output_layers)
    plan2 = p2.plan(0.5)
    out2 = export_dir(p2, plan2, p2.apply(plan2), tmp_path / "z2", lm2.source)
    _, _, original = read_export_zip(zip_dir(out2))
    assert torch.equal(original.inputs[0], x["0"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("model.pt", b"\x80\x04pickle")
    with pytest.raises(DepViewError, match="not a DepView export"):
        read_export_zip(buf.getvalue())


def test_an_export_without_pt2_says_so_and_its_zip_stores_weights_as_they_are(demo_pruner,
                                                                              tmp_path):
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "z", lm.source, pt2=False)
    assert not (out / "model.pt2").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["pt2"] == {"written": False, "reason": "not requested"}
    path = write_zip(out, tmp_path / "z.zip")
    assert path.read_bytes() == zip_dir(out)  # the file and the bytes are the same zip
    with zipfile.ZipFile(path) as zf:
        kinds = {i.filename: i.compress_type for i in zf.infolist()}
    assert kinds == {"model.safetensors": zipfile.ZIP_STORED,
                     "plan.json": zipfile.ZIP_DEFLATED, "report.json": zipfile.ZIP_DEFLATED}
    model, _, _ = read_export_zip(path.read_bytes())
    with torch.no_grad():
        assert torch.equal(model(*lm.inputs), pruned(*lm.inputs))


def test_every_exported_file_gets_the_umask_mode_in_the_folder_and_in_its_zip(demo_pruner,
                                                                              tmp_path):
    # safetensors writes its file 0600: a checkpoint copied for another user (a shared
    # folder, a container) could not be read by them, though its JSON files could
    import os
    import stat

    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    old = os.umask(0o022)
    try:
        out = export_dir(p, plan, p.apply(plan), tmp_path / "z", lm.source, pt2=False)
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()}
    assert modes == dict.fromkeys(("model.safetensors", "plan.json", "report.json"), 0o644)
    with zipfile.ZipFile(io.BytesIO(zip_dir(out))) as zf:
        assert {i.filename: stat.S_IMODE(i.external_attr >> 16) for i in zf.infolist()} == modes


def test_an_export_never_overwrites_what_it_did_not_write(demo_pruner, tmp_path):
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(DepViewError, match=r"notes.txt is a file: the export needs a directory"):
        export_dir(p, plan, pruned, a_file, lm.source)
    with pytest.raises(DepViewError, match=r"^cannot create .*notes.txt/out: "):
        export_dir(p, plan, pruned, a_file / "out", lm.source)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "report.json").write_text('{"quarterly": true}')
    with pytest.raises(DepViewError, match=r"holds report.json that DepView did not write"):
        export_dir(p, plan, pruned, theirs, lm.source)
    assert [f.name for f in theirs.iterdir()] == ["report.json"]
    assert (theirs / "report.json").read_text() == '{"quarterly": true}'
    assert a_file.read_text() == "mine"
    # nor the files an export writes only sometimes (this one writes neither: an earlier
    # export's would be removed)
    for name in ("config.json", "inputs.safetensors"):
        other = tmp_path / name.split(".")[0]
        other.mkdir()
        (other / name).write_text("mine")
        with pytest.raises(DepViewError, match=f"holds {name} that DepView did not write"):
            export_dir(p, plan, pruned, other, lm.source)
        assert [f.name for f in other.iterdir()] == [name]
        assert (other / name).read_text() == "mine"


class _HoldsQuantized(torch.nn.Module):
    # a custom layer keeping its weight quantized (per tensor), dequantized in its forward
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 16)
        with warnings.catch_warnings():  # (torch deprecates quantized tensors)
            warnings.simplefilter("ignore")
            self.register_buffer("wq", torch.quantize_per_tensor(
                torch.randn(4, 16), 0.05, 0, torch.qint8))

    def forward(self, x):
        return torch.nn.functional.linear(torch.relu(self.a(x)), self.wq.dequantize())


def test_a_quantized_tensor_is_pruned_but_its_export_is_one_error_line(tmp_path):
    # safetensors has no quantized dtypes: the export failed with "unexpected KeyError:
    # torch.qint8" and no word of which tensor
    p = Pruner(_HoldsQuantized().eval(), (torch.randn(3, 8),))
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.wq.shape == (4, 8) and pruned.wq.is_quantized
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]
    with pytest.raises(DepViewError, match=r"^'wq' is a quantized tensor \(qint8\), which "
                                           r"safetensors cannot hold: export the float model"):
        export_dir(p, plan, pruned, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_per_channel_quantized_weight_blocks_its_group_with_the_reason():
    # (the README's known limit: index_select refuses per-channel quantized tensors)
    class PerChannel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 16)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.wq = torch.nn.Parameter(torch.quantize_per_channel(
                    torch.randn(4, 16), torch.full((4,), 0.05), torch.zeros(4, dtype=torch.long),
                    0, torch.qint8), requires_grad=False)

        def forward(self, x):
            return torch.nn.functional.linear(torch.relu(self.a(x)), self.wq.dequantize())

    p = Pruner(PerChannel().eval(), (torch.randn(3, 8),))
    p.validate_groups()
    (hidden,) = [g for g in p.groups if g.n_units == 16]
    assert "Only per_tensor quantized" in p.reason(hidden)
    assert p.plan(0.5).n_removed == 0


def test_exporting_again_into_an_export_replaces_it_whole(demo_pruner, tmp_path):
    lm, p = demo_pruner("cnn")
    out = tmp_path / "e"
    first = p.plan(0.5)
    export_dir(p, first, p.apply(first), out, lm.source)  # with model.pt2
    assert (out / "model.pt2").exists()
    (out / "README.txt").write_text("kept")  # the user's own file beside the export
    second = p.plan(0.3)
    pruned = p.apply(second)
    export_dir(p, second, pruned, out, lm.source, pt2=False)
    # no model.pt2 of the first plan beside the second plan's weights; no staging left over
    assert sorted(f.name for f in out.iterdir()) == ["README.txt", "model.safetensors",
                                                     "plan.json", "report.json"]
    with torch.no_grad():
        assert torch.equal(load_pruned(out)(*lm.inputs), pruned(*lm.inputs))


@pytest.mark.parametrize("damage, says", [
    ({"tensors": "x"}, "'tensors' must map each tensor"),
    ({"tensors": {"features.0.weight": "x"}}, "'tensors' must map each tensor"),
    ({"attrs": [1]}, "'attrs' must map each module"),
    ({"source": "x"}, "'source' must be an object"),
    ({"rounds": "x"}, "'rounds' must be a list"),
    ({"source": {"spec": "demo:cnn", "seed": "0"}}, "'source.seed' must be an integer"),
    ({"source": {"spec": "demo:cnn", "seed": -5}}, "'source.seed' must be an integer of 0"),
    ({"source": {"spec": "demo:cnn", "inputs": [5]}}, "'source' must hold 'kwargs' as an"),
    ({"tensors": {"features.0.weight": {"x": [0]}}}, "'tensors' must map each tensor"),
])
def test_a_damaged_plan_json_says_which_part(demo_pruner, tmp_path, damage, says):
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "e", lm.source, pt2=False)
    data = json.loads((out / "plan.json").read_text())
    (out / "plan.json").write_text(json.dumps({**data, **damage}))
    for reload in (load_pruned, check_dir):
        with pytest.raises(DepViewError, match=f"plan.json is damaged: {says}"):
            reload(out)


def test_load_pruned_errors(tmp_path):
    with pytest.raises(DepViewError, match="no plan.json"):
        load_pruned(tmp_path)
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(DepViewError, match="not valid JSON"):
        load_pruned(tmp_path)


MODEL_FILE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.b = nn.Conv2d(width, 4, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))
"""


def test_a_file_spec_export_reloads_from_another_directory_and_after_a_move(tmp_path,
                                                                           monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "net.py").write_text(MODEL_FILE)
    monkeypatch.chdir(work)
    lm = load_model("net.py:Net", inputs=["1x3x8x8"], kwargs={"width": 8})
    assert lm.source["spec"] == "net.py:Net"  # as the user typed it ...
    assert lm.source["file"] == str(work / "net.py")  # ... and where that was
    p = Pruner(lm.model, lm.inputs)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, work / "out", lm.source)

    def same(model):
        with torch.no_grad():
            assert torch.equal(model(*lm.inputs), pruned(*lm.inputs))

    monkeypatch.chdir(tmp_path)  # "net.py" means nothing from here
    same(load_pruned(out))  # found at the recorded absolute path
    assert check_dir(out)["ok"]

    # copied to another machine: the export directory with the model file beside it
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "net.py").write_text(MODEL_FILE)
    (work / "out").rename(moved / "out")
    (work / "net.py").unlink()
    same(load_pruned(moved / "out"))

    (moved / "net.py").unlink()
    with pytest.raises(DepViewError, match=r"model file not found: net.py \(looked in"):
        load_pruned(moved / "out")


BLOCK_FILE = """
from torch import nn

class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn(self.conv(x)).relu()
"""

PACKAGED_NET = """
from torch import nn

from .blocks import Block

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 8, 3), Block(8), nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))
"""


def _project(root):
    """A user's project: the package ``dvproj_models`` whose ``net.py`` imports a block
    relatively, as code in a package does."""
    pkg = root / "dvproj_models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "blocks.py").write_text(BLOCK_FILE)
    (pkg / "net.py").write_text(PACKAGED_NET)
    return pkg


def test_a_model_file_in_a_package_may_import_relatively(tmp_path, monkeypatch):
    # it failed: "importing dvproj_models/net.py failed: ImportError: attempted relative
    # import with no known parent package"
    pkg = _project(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    lm = load_model("dvproj_models/net.py:Net", inputs=["1x3x8x8"])
    assert type(lm.model).__name__ == "Net" and "dvproj_models" not in sys.modules
    p = Pruner(lm.model, lm.inputs)
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "out", lm.source, pt2=False)
    monkeypatch.chdir(tmp_path)
    assert check_dir(out)["ok"]
    # what it imports relatively must be there: one line that says what failed
    (pkg / "blocks.py").unlink()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(DepViewError, match=r"^importing dvproj_models/net.py \(as "
                                           r"dvproj_models.net, in the package at .*\) failed: "
                                           r"ModuleNotFoundError"):
        load_model("dvproj_models/net.py:Net", inputs=["1x3x8x8"])


def test_a_module_spec_of_the_users_own_reloads_from_another_directory(tmp_path, monkeypatch):
    # check and load_pruned ran from elsewhere: "cannot import module 'dvproj_models.net'"
    _project(tmp_path / "work")
    monkeypatch.syspath_prepend(str(tmp_path / "work"))  # (python -m runs from there so)
    lm = load_model("dvproj_models.net:Net", inputs=["1x3x8x8"])
    assert lm.source["module_dir"] == str(tmp_path / "work")
    assert "module_dir" not in load_model("demo:cnn").source  # (no user's module)
    assert "module_dir" not in load_model("torch.nn:Identity", inputs=["1x4"]).source
    p = Pruner(lm.model, lm.inputs)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source, pt2=False)
    sys.path.remove(str(tmp_path / "work"))
    for name in [k for k in sys.modules if k.startswith("dvproj_models")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.chdir(tmp_path)
    with torch.no_grad():
        assert torch.equal(load_pruned(out)(*lm.inputs), pruned(*lm.inputs))
    assert check_dir(out)["ok"]
    assert "dvproj_models" not in sys.modules  # (found as a file, under a name of its own)


FROZEN_FILE = """
import torch
from torch import nn

class Frozen(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.register_buffer("weight", torch.rand(n) + 0.5)
        self.register_buffer("running_var", torch.rand(n) + 0.5)

    def forward(self, x):
        return x * (self.weight * self.running_var.rsqrt()).reshape(1, -1, 1, 1)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.n = nn.Conv2d(3, 8, 3, padding=1), Frozen(8)
        self.b = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.n(self.a(x))))
"""


def _file_pruner(tmp_path, monkeypatch, text: str):
    """The model ``net.py:Net`` (``text``) loaded from ``tmp_path`` as a user names it."""
    (tmp_path / "net.py").write_text(text)
    monkeypatch.chdir(tmp_path)
    lm = load_model("net.py:Net", inputs=["1x3x8x8"])
    return lm, Pruner(lm.model, lm.inputs)


def test_pruned_persistent_buffers_reload_bit_exact(tmp_path, monkeypatch):
    # a frozen norm's buffers are state_dict tensors: plan.json records their kept indices
    lm, p = _file_pruner(tmp_path, monkeypatch, FROZEN_FILE)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source)
    tensors = json.loads((out / "plan.json").read_text())["tensors"]
    kept = tensors["n.running_var"]["0"]
    assert len(kept) == 4 and tensors["n.weight"]["0"] == kept == tensors["a.weight"]["0"]
    again = load_pruned(out)
    assert torch.equal(again.n.running_var, lm.model.n.running_var[kept])
    assert "running_var" in again.n._buffers
    with torch.no_grad():
        assert torch.equal(again(*lm.inputs), pruned(*lm.inputs))
    assert check_dir(out)["ok"]


SINUSOID_FILE = """
import math
import torch
from torch import nn

class Net(nn.Module):
    # a sinusoidal position table made at init, not saved with the weights (persistent=False)
    def __init__(self, d=8, n=16):
        super().__init__()
        pos = torch.arange(n).float()[:, None]
        freq = torch.exp(torch.arange(0, d, 2).float() * (-math.log(1e4) / d))
        pe = torch.zeros(n, d)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        self.register_buffer("pe", pe, persistent=False)
        self.embed, self.ff, self.head = nn.Linear(3, d), nn.Linear(d, d), nn.Linear(d, 2)

    def forward(self, x):
        h = self.embed(x) + self.pe[: x.shape[1]]
        return self.head(torch.relu(self.ff(h)) + h)
"""


def test_a_pruned_table_made_at_init_is_sliced_again_on_reload(tmp_path, monkeypatch):
    # the table is no state_dict tensor: plan.json records its kept indices all the same,
    # and load_pruned cuts the table the rebuilt model makes at init
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(SINUSOID_FILE)
    lm = load_model("net.py:Net", inputs=["2x5x3"])
    p = Pruner(lm.model, lm.inputs)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source)
    tensors = json.loads((out / "plan.json").read_text())["tensors"]
    kept = tensors["pe"]["1"]
    assert len(kept) == 4 and kept == tensors["embed.weight"]["0"]
    assert "pe" not in pruned.state_dict()
    again = load_pruned(out)
    assert torch.equal(again.pe, lm.model.pe[:, kept]) and "pe" in again._buffers
    with torch.no_grad():
        assert torch.equal(again(*lm.inputs), pruned(*lm.inputs))
    res = check_dir(out)
    assert res["ok"] and res["tensors_match_original"], res


def test_a_table_kept_as_a_plain_attribute_is_cut_and_cut_again_on_reload(tmp_path,
                                                                          monkeypatch):
    # VideoMAE keeps its sinusoid table as a plain attribute (no buffer at all): it was a
    # constant "computed inside forward", which blocked the stream; it is cut as the
    # non-persistent buffer above is
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(SINUSOID_FILE.replace(
        'self.register_buffer("pe", pe, persistent=False)', "self.pe = pe"))
    lm = load_model("net.py:Net", inputs=["2x5x3"])
    assert "pe" not in lm.model._buffers
    p = Pruner(lm.model, lm.inputs)
    g = p.groups[0]
    assert g.root == "embed" and not p.reason(g)
    assert "pe" in {m.node_name for m in g.members}
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert v["masked_equivalence"]["ok"], v
    assert pruned.pe.shape == (16, 4) and lm.model.pe.shape == (16, 8)
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source)
    tensors = json.loads((out / "plan.json").read_text())["tensors"]
    kept = tensors["pe"]["1"]
    assert len(kept) == 4 and kept == tensors["embed.weight"]["0"]
    again = load_pruned(out)
    assert torch.equal(again.pe, lm.model.pe[:, kept]) and "pe" not in again._buffers
    with torch.no_grad():
        assert torch.equal(again(*lm.inputs), pruned(*lm.inputs))
    res = check_dir(out)
    assert res["ok"] and res["tensors_match_original"], res


def test_an_uploaded_plan_cannot_point_the_server_at_another_file(tmp_path, monkeypatch):
    # plan.json from a browser is untrusted: its recorded absolute path is never followed
    lm, p = _file_pruner(tmp_path, monkeypatch, MODEL_FILE)
    plan = p.plan(0.5)
    data = zip_dir(export_dir(p, plan, p.apply(plan), tmp_path / "out", lm.source))
    assert read_export_zip(data)[0] is not None  # from the directory it was made in: fine
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(DepViewError, match="model file not found: net.py$"):
        read_export_zip(data)


def test_torch_export_warnings_go_to_the_report_not_the_terminal(demo_pruner, tmp_path):
    import warnings

    lm, p = demo_pruner("rnn")
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = export_dir(p, plan, pruned, tmp_path / "r", lm.source)
    pt2 = json.loads((out / "report.json").read_text())["pt2"]
    assert any("_flat_weights" in w for w in pt2["warnings"]), pt2  # torch warns about RNNs
    assert not [w for w in seen if "_flat_weights" in str(w.message)]


def test_what_torch_export_prints_when_it_fails_stays_off_the_terminal(tmp_path, capsys):
    """Data-dependent control flow stops torch.export, which then prints the whole traced
    graph to stderr; the report keeps the reason, the terminal gets nothing."""
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            if torch.nonzero(h[:, 0] > 0).numel() == 0:  # asks the data
                h = h * 2
            return self.b(h)

    torch.manual_seed(0)
    x = torch.randn(3, 4)
    p = Pruner(Branchy().eval(), (x,))
    plan = p.plan(0.5)
    capsys.readouterr()
    out = export_dir(p, plan, p.apply(plan), tmp_path / "b",
                     {"spec": None, "kwargs": {}, "inputs": ["3x4"]})
    pt2 = json.loads((out / "report.json").read_text())["pt2"]
    assert not pt2["written"] and pt2["reason"].startswith("torch.export failed: ")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kept", [[999], [3, 1], [-1], ["a"], 5])
def test_damaged_kept_indices_are_one_clear_error(demo_pruner, tmp_path, kept):
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "d", lm.source)
    doc = json.loads((out / "plan.json").read_text())
    key = next(iter(doc["tensors"]))
    doc["tensors"][key]["0"] = kept
    doc["rounds"][0]["tensors"][key]["0"] = kept  # (the round it came from, edited alike)
    (out / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(DepViewError, match="kept indices .* do not fit|plan.json is damaged: "
                                           "'tensors' must map each tensor"):
        load_pruned(out)


@pytest.mark.parametrize("edit", ["round", "top", "dup", "none", "no-attrs"])
def test_rounds_that_do_not_add_up_are_refused_on_reload(demo_pruner, tmp_path, edit):
    """A later round's export is made from plan.json's rounds (an uploaded zip goes on from
    them): a round edited out of its tensor's range, or apart from the kept indices it adds up
    to, is refused when the export is read, not in the next export."""
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "d", lm.source)
    load_pruned(out)  # as written: fine
    doc = json.loads((out / "plan.json").read_text())
    key = next(iter(doc["tensors"]))
    kept = doc["tensors"][key]["0"]
    if edit == "round":
        doc["rounds"][0]["tensors"][key]["0"] = kept[:-1] + [999]
    elif edit == "top":
        doc["tensors"][key]["0"] = kept[:-1] + [kept[-1] + 1]
    elif edit == "dup":  # the same channel twice, in the round and the composed indices alike
        doc["rounds"][0]["tensors"][key]["0"] = doc["tensors"][key]["0"] = [kept[0]] + kept[:-1]
    elif edit == "none":  # (a later round would start from none)
        doc["rounds"] = []
    else:  # (an unexpected KeyError)
        del doc["rounds"][0]["attrs"]
    (out / "plan.json").write_text(json.dumps(doc))
    match = {"round": f"kept indices in round 1 for '{key}' dim 0 do not fit",
             "top": "rounds do not add up to its kept indices",
             "dup": f"kept indices in round 1 for '{key}' dim 0 do not fit",
             "none": "plan.json lists no rounds for its kept indices",
             "no-attrs": "rounds do not add up to its kept indices and attributes"}[edit]
    with pytest.raises(DepViewError, match=re.escape(match)):
        load_pruned(out)


def test_a_demo_export_reloads_from_the_code_named_with_its_recorded_inputs(demo_pruner,
                                                                          tmp_path):
    """``spec=`` (``check --spec``) names other code for a demo's export: it gets the inputs
    plan.json recorded (it asked for --input, which check does not take)."""
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "e", lm.source)
    again = load_pruned(out, spec="demo_models.cnn:build_cnn")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 pruned.state_dict().values(), strict=True))
    assert check_dir(out, spec="demo_models.cnn:build_cnn")["ok"]


def test_a_channels_last_model_reloads_channels_last(tmp_path):
    # its export reloaded with contiguous conv weights (index_select's), as apply once did
    f = tmp_path / "cl.py"
    f.write_text("import torch\nfrom torch import nn\n"
                 "def make():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), "
                 "nn.Conv2d(8, 4, 3)).to(memory_format=torch.channels_last)\n")
    lm = load_model(f"{f}:make", inputs=["1x3x8x8"])
    p = Pruner(lm.model, lm.inputs)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    again = load_pruned(export_dir(p, plan, pruned, tmp_path / "e", lm.source))
    for k, t in again.state_dict().items():
        assert torch.equal(t, pruned.state_dict()[k])
        if t.dim() == 4:
            assert t.is_contiguous(memory_format=torch.channels_last), (k, t.stride())


def test_two_rounds_of_a_stored_split_size_reload(tmp_path, fused_spec):
    lm = load_model(fused_spec, inputs=["2x8"])
    p1 = Pruner(lm.model, lm.inputs)
    plan1 = p1.plan(0.5)
    m1 = p1.apply(plan1)
    out1 = export_dir(p1, plan1, m1, tmp_path / "r1", lm.source)
    p2 = Pruner(m1, lm.inputs)
    plan2 = p2.plan(0.5)
    m2 = p2.apply(plan2)
    hist = json.loads((out1 / "plan.json").read_text())["rounds"]
    out2 = export_dir(p2, plan2, m2, tmp_path / "r2", lm.source, history=hist)
    again = load_pruned(out2)
    assert (m1.split_size, m2.split_size, again.split_size) == (4, 2, 2)
    with torch.no_grad():
        assert torch.equal(again(*lm.inputs), m2(*lm.inputs))


@pytest.mark.parametrize("attrs", [{"_compiled_call_impl": "x"}, {"forward": 1},
                                   {"weight": 3}, {"out_channels": {"a": 1}}])
def test_plan_attrs_set_only_public_scalar_attributes(demo_pruner, tmp_path, attrs):
    # an uploaded plan.json is data: it cannot reach private state, methods or tensors
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "a", lm.source)
    doc = json.loads((out / "plan.json").read_text())
    doc["attrs"]["features.0"] = attrs
    _write_plan(out, doc)
    with pytest.raises(DepViewError, match="not a public scalar attribute"):
        load_pruned(out)


@pytest.mark.parametrize("attrs", [{"config._secret": 1}, {"config.missing": 1},
                                   {"config.heads": "3"}, {"config.heads": [1]},
                                   {"config.__class__": "x"}, {"nothing.heads": 1}])
def test_plan_attrs_reach_only_public_scalars_of_a_held_config(attrs):
    # "config.X" (Phi-3's num_attention_heads) sets an attribute of the config object a
    # module holds: only an existing public scalar, of the kind it holds
    import types

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace(heads=3, _secret=0)

    with pytest.raises(DepViewError, match="not a public scalar attribute"):
        reshape_like_plan(Holder(), {"attrs": {"": attrs}})
    model = Holder()
    reshape_like_plan(model, {"attrs": {"": {"config.heads": 2}}})
    assert model.config.heads == 2


def test_the_package_exports_the_pruning_api():
    # `viewer.load_pruned(path)` is the documented entry point (no pickle, bit-exact)
    import viewer
    from viewer.core import export, groups, prune

    assert viewer.load_pruned is export.load_pruned and viewer.export_dir is export.export_dir
    assert viewer.Pruner is prune.Pruner and viewer.all_groups is groups.all_groups
    assert set(viewer.__all__) <= set(dir(viewer))


MIXED_CONV = '''
import torch
from torch import nn


class Mixed(nn.Module):
    """timm's MixedConv2d: channels split by sizes stored on the module, one depthwise
    kernel size per part."""

    def __init__(self, as_tuple: bool = False):
        super().__init__()
        self.c0 = nn.Conv2d(3, 24, 1)
        self.splits = (4, 8, 12) if as_tuple else [4, 8, 12]
        self.dws = nn.ModuleList([nn.Conv2d(n, n, k, padding=k // 2, groups=n)
                                  for n, k in zip(self.splits, (3, 5, 7))])
        self.o = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        parts = torch.split(self.c0(x), self.splits, 1)
        return self.o(torch.cat([d(p) for d, p in zip(self.dws, parts)], 1))
'''


@pytest.mark.parametrize("as_tuple", [False, True])
def test_split_sizes_stored_as_a_list_follow_each_part_and_reload(tmp_path, as_tuple):
    # the group was blocked ("split_with_sizes expects split_sizes to sum exactly to ...")
    (tmp_path / "mixed.py").write_text(MIXED_CONV)
    lm = load_model(f"{tmp_path / 'mixed.py'}:Mixed", inputs=["1x3x8x8"],
                    kwargs={"as_tuple": as_tuple}, seed=0)
    p = Pruner(lm.model, lm.inputs)
    g = next(g for g in p.groups if g.root == "c0")
    plan = p.plan(0.5)
    assert p.sets(g) == ["splits"] and g.id in plan.removed
    pruned = p.apply(plan)
    kept = [d.out_channels for d in pruned.dws]
    assert list(pruned.splits) == kept and type(pruned.splits) is type(lm.model.splits)
    assert all(k >= 1 for k in kept) and sum(kept) == 24 - len(plan.removed[g.id])
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    # a plan keeps every part's most important unit (a part of width 0 leaves a conv with
    # no channels); a hand-made plan that empties one is refused, naming it
    assert all(d.out_channels >= 1 for d in p.apply(p.plan(0.95)).dws)
    with pytest.raises(DepViewError, match="removes all of part 0 of 'split'"):
        p.apply(Plan({g.id: [0, 1, 2, 3]}))
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source)
    again = load_pruned(out)
    assert again.splits == pruned.splits
    with torch.no_grad():
        assert torch.equal(again(*lm.inputs), pruned(*lm.inputs))


CROSS_STAGE = '''
import torch
from torch import nn


class CrossStage(nn.Module):
    """timm's CSPDarknet stage (``divide``) and SKNet's split input: a split whose size the
    code computes from a stored width, ``self.expand_chs // 2`` or ``// self.num_paths``."""

    def __init__(self, divide: str = "literal"):
        super().__init__()
        self.divide, self.num_paths = divide, 2
        self.expand_chs = 16
        self.conv_exp = nn.Conv2d(3, self.expand_chs, 1)
        self.block = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_transition = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.conv_exp(x)
        k = 2 if self.divide == "literal" else self.num_paths
        xs, xb = x.split(self.expand_chs // k, dim=1)
        return self.conv_transition(torch.cat([xs, self.block(xb)], 1))
'''


@pytest.mark.parametrize("divide", ["literal", "attribute"])
def test_a_split_size_divided_from_a_stored_width_follows_and_reloads(tmp_path, divide):
    # the group was blocked ("Invalid channel dimensions"): only an attribute equal to the
    # part's size was tried, not the whole width the code divides
    (tmp_path / "csp.py").write_text(CROSS_STAGE)
    lm = load_model(f"{tmp_path / 'csp.py'}:CrossStage", inputs=["1x3x8x8"],
                    kwargs={"divide": divide}, seed=0)
    p = Pruner(lm.model, lm.inputs)
    g = next(g for g in p.groups if g.root == "conv_exp")
    assert not p.reason(g) and p.sets(g) == ["expand_chs"]
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.expand_chs == pruned.conv_exp.out_channels == 8 and pruned.block.in_channels == 4
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source)
    assert json.loads((out / "plan.json").read_text())["attrs"][""]["expand_chs"] == 8
    again = load_pruned(out)
    with torch.no_grad():
        assert torch.equal(again(*lm.inputs), pruned(*lm.inputs))


LAYER_NORM_2D = '''
import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm over the channels of an NCHW map."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class OwnNorm(nn.Module):
    """OLMo's LayerNorm: no weights, its normalized_shape a 1-tuple stored on it."""

    def __init__(self, d):
        super().__init__()
        self.normalized_shape = (d,)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, None, None, 1e-5)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = LayerNorm2d(16)
        self.mlp = nn.Sequential(nn.Conv2d(16, 32, 1), nn.GELU(), nn.Conv2d(32, 16, 1))
        self.head = nn.Linear(16, 12)
        self.tail_norm = OwnNorm(12)
        self.out = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.mlp(self.norm(x))
        return self.out(torch.relu(self.tail_norm(self.head(x.mean((2, 3))))))
'''


def test_layer_norms_of_a_given_shape_follow_and_reload(tmp_path):
    # a LayerNorm subclass with its own forward was pruned as a LayerNorm over its input's
    # last dim (W of an NCHW map): validation blocked the stem's group; a normalized_shape
    # stored as a 1-tuple could not follow
    (tmp_path / "ln2d.py").write_text(LAYER_NORM_2D)
    lm = load_model(f"{tmp_path / 'ln2d.py'}:Net", inputs=["2x3x8x8"], seed=0)
    p = Pruner(lm.model, lm.inputs)
    stem = next(g for g in p.groups if g.root == "stem")
    head = next(g for g in p.groups if g.root == "head")
    plan = p.plan(0.5)
    assert not p.reason(stem) and not p.reason(head), (p.reason(stem), p.reason(head))
    assert p.sets(head) == ["tail_norm.normalized_shape"]
    pruned = p.apply(plan)
    assert pruned.norm.weight.shape == (8,) and pruned.norm.normalized_shape == (8,)
    assert pruned.tail_norm.normalized_shape == (6,)
    assert p.verify(pruned, plan)["forward"]
    again = load_pruned(export_dir(p, plan, pruned, tmp_path / "out", lm.source))
    assert again.norm.normalized_shape == (8,) and again.tail_norm.normalized_shape == (6,)
    with torch.no_grad():
        assert torch.equal(again(*lm.inputs), pruned(*lm.inputs))


def test_check_times_the_pruned_model_against_the_original(tmp_path, monkeypatch):
    from viewer.core import timing
    from viewer.core.export import check_dir

    lm = load_model("demo:cnn")
    n_original = sum(t.numel() for t in lm.model.parameters())
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "e", lm.source)
    seen = []

    def spy(before, after, inputs):
        seen.append((sum(t.numel() for t in before.parameters()),
                     sum(t.numel() for t in after.parameters()), before.training))
        return {"speedup": 2.0}

    monkeypatch.setattr(timing, "compare_speed", spy)
    res = check_dir(out, time=True)
    assert res["ok"] and res["timing"] == {"speedup": 2.0}
    assert seen == [(n_original, sum(t.numel() for t in pruned.parameters()), False)]
    assert "timing" not in check_dir(out) and len(seen) == 1  # only when asked


def test_check_tells_changed_weights_and_damaged_reports_and_takes_plan_json(tmp_path):
    from viewer.core.export import check_dir

    lm = load_model("demo:cnn")
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "e", lm.source)
    assert check_dir(out)["ok"] and check_dir(out / "plan.json")["ok"]
    report = json.loads((out / "report.json").read_text())
    assert len(report["weights_sha256"]) == 64
    # bytes of a weight changed, the file still well formed: check was OK before
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-9] ^= 0x40
    (out / "model.safetensors").write_bytes(bytes(data))
    res = check_dir(out)
    assert res["weights_match_report"] is False and res["ok"] is False
    for bad in ("{broken", "[]", '{"params": 5}'):
        (out / "report.json").write_text(bad)
        with pytest.raises(DepViewError, match="report.json is"):
            check_dir(out)
    with pytest.raises(DepViewError, match="is a file, not a DepView export directory"):
        check_dir(out / "report.json")


def test_plan_json_attrs_keep_their_kind(demo_pruner, tmp_path):
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "e", lm.source, pt2=False)
    data = json.loads((out / "plan.json").read_text())
    module, attrs = next(iter(data["attrs"].items()))
    key = next(k for k, v in attrs.items() if type(v) is int)
    data["attrs"][module][key] = [1, 2]  # a number turned list: was set, and check said OK
    _write_plan(out, data)
    with pytest.raises(DepViewError, match=key):
        load_pruned(out)


def _tamper(out, edit):
    data = json.loads((out / "plan.json").read_text())
    edit(data)
    _write_plan(out, data)


def _write_plan(out, data) -> None:
    """Write an edited plan.json of a one-round export, its round edited alike (a round apart
    from the kept indices and attributes it adds up to is refused first)."""
    data["rounds"][0].update(tensors=data["tensors"], attrs=data["attrs"])
    (out / "plan.json").write_text(json.dumps(data))


def test_check_says_which_check_failed_and_catches_a_plan_that_computes_otherwise(tmp_path):
    # each of these passed check (OK, exit 0), or failed it without saying why
    lm = load_model("demo:cnn")
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan = p.plan(0.5)
    base = export_dir(p, plan, p.apply(plan), tmp_path / "base", lm.source, pt2=False)
    res = check_dir(base)
    assert res["ok"] and not res["problems"], res["problems"]
    assert res["outputs_match_report"] and res["tensors_match_original"]

    def copy(name):
        out = tmp_path / name
        out.mkdir()
        for f in base.iterdir():
            (out / f.name).write_bytes(f.read_bytes())
        return out

    # an attribute its tensors contradict: a damaged plan.json, for load_pruned too
    out = copy("attr")
    _tamper(out, lambda d: d["attrs"]["features.0"].update(out_channels=5))
    with pytest.raises(DepViewError, match="features.0.out_channels to 5, but its tensors "
                                           "give 8: plan.json is damaged"):
        load_pruned(out)
    # an attribute no tensor describes, that changes what the model computes
    out = copy("padding")
    _tamper(out, lambda d: d["attrs"]["features.0"].update(dilation=[2, 2], padding=[2, 2]))
    res = check_dir(out)
    assert not res["ok"] and res["outputs_match_report"] is False
    assert res["problems"] == ["its outputs differ from those recorded at export"]
    # the removed channels' indices recorded as the kept ones: same shapes, same weights
    out = copy("kept")
    removed = sorted(set(range(16)) - set(json.loads((base / "plan.json").read_text())
                                              ["tensors"]["features.0.weight"]["0"]))

    def swap(d):
        d["tensors"]["features.0.weight"]["0"] = removed[:8]
    _tamper(out, swap)
    res = check_dir(out)
    assert res["tensors_match_original"] is False
    assert "'features.0.weight' is not the original's tensor" in res["problems"][0]
    out = copy("noreport")
    (out / "report.json").unlink()
    res = check_dir(out)
    assert not res["ok"] and res["problems"] == [
        "report.json is missing: nothing to compare the model with"]


def test_check_compares_kept_indices_with_the_weights_file_the_original_came_from(
        tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from viewer.cli import main

    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.Conv2d(8, 4, 1))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import net

    torch.manual_seed(123)  # other weights than the factory's seeded ones
    save_file(net.make().state_dict(), str(tmp_path / "w.safetensors"))
    assert main(["prune", "net.py:make", "--input", "1x3x8x8", "--weights", "w.safetensors",
                 "--ratio", "0.5", "--out", "exports/ex"]) == 0
    ex = tmp_path / "exports" / "ex"
    res = check_dir(ex)
    assert res["ok"] and res["tensors_match_original"] is True, res["problems"]
    # recorded as an absolute path, as source.file is: found from any directory (stored as
    # given, "w.safetensors", check from elsewhere skipped the kept-indices comparison)
    weights = str(tmp_path / "w.safetensors")
    assert json.loads((ex / "plan.json").read_text())["source"]["weights"] == weights
    monkeypatch.chdir(tmp_path / "exports")
    res = check_dir("ex")
    assert res["ok"] and res["tensors_match_original"] is True and not res["notes"], res
    (tmp_path / "w.safetensors").rename(tmp_path / "gone.safetensors")
    res = check_dir(ex)
    assert res["ok"] and "tensors_match_original" not in res
    assert res["notes"] == [f"the original's weights file {weights} is not here: kept "
                            "indices not checked"]
    # an export from before: its relative path is still looked for beside the directory
    (tmp_path / "gone.safetensors").rename(tmp_path / "exports" / "w.safetensors")
    _tamper(ex, lambda d: d["source"].update(weights="w.safetensors"))
    monkeypatch.chdir(tmp_path)
    assert check_dir(ex)["tensors_match_original"] is True


MASKED_LOGITS = """
import torch
from torch import nn

class MaskedLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 6)

    def forward(self, x):
        logits = self.fc2(torch.relu(self.fc1(x)))
        mask = torch.zeros(6, dtype=torch.bool)
        mask[0] = True
        return torch.log_softmax(logits.masked_fill(mask, float("-inf")), -1)
"""


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_outputs_with_inf_give_strict_json_and_are_compared_on_reload(tmp_path, monkeypatch):
    # masked logits: the digest's sums were -Infinity, written as invalid JSON
    (tmp_path / "mlog.py").write_text(MASKED_LOGITS)
    monkeypatch.chdir(tmp_path)
    lm = load_model("mlog.py:MaskedLogits", inputs=["2x4"])
    p = Pruner(lm.model, lm.inputs)
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "m", lm.source, pt2=False)
    _strict((out / "plan.json").read_text())
    report = _strict((out / "report.json").read_text())
    entry = report["output_digest"]["outputs"]["output"]
    assert entry["nonfinite"] == {"nan": 0, "inf": 0, "-inf": 2}
    assert entry["sample"][0] == "-Infinity" and isinstance(entry["sum"], float)
    res = check_dir(out)
    assert res["ok"] and res["outputs_match_report"] is True, res
    _strict(json.dumps(res, allow_nan=False))
    # a -inf recorded where the model gives a number is a difference
    entry["sample"][0] = -1.0
    (out / "report.json").write_text(json.dumps(report))
    assert check_dir(out)["outputs_match_report"] is False


def test_output_digests_compare_nan_and_inf_and_read_older_digests():
    from viewer.core.export import _same_outputs, output_digest

    t = torch.tensor([[1.0, float("-inf"), float("nan")], [2.0, 3.0, float("inf")]])
    new = output_digest(t, (t,))["outputs"]
    assert new["output"]["nonfinite"] == {"nan": 1, "inf": 1, "-inf": 1}
    assert new["output"]["sample"] == [1.0, "-Infinity", "NaN", 2.0, 3.0, "Infinity"]
    assert new["output"]["sum"] == 6.0 and new["output"]["abs_sum"] == 6.0  # finite values
    assert _same_outputs(new, output_digest(t.clone(), (t,))["outputs"])  # nan == nan here
    other = t.clone()
    other[0, 2] = float("inf")  # a nan become inf: the samples do not show it, the counts do
    assert not _same_outputs(new, output_digest(other, (t,))["outputs"])
    # what report.json held before: sums over every value, read back by Python's json
    old = {"output": {"sum": float("nan"), "abs_sum": float("nan"),
                      "sample": [1.0, float("-inf"), float("nan"), 2.0, 3.0, float("inf")]}}
    assert _same_outputs(old, new)
    old["output"]["sum"] = old["output"]["abs_sum"] = 0.0
    assert not _same_outputs(old, new)


@pytest.mark.parametrize("spec, seed, inputs", [
    ("demo:rnn", 0, None),  # int64 tokens: the demo draws them below its vocabulary
    ("demo:llama", 0, None),
    ("demo:cnn", 5, None),  # a seed reseeds --input shapes, never a demo's own inputs
    ("demo:rnn", 0, ["1x12:int64"]),  # inputs given as shapes: remade from them
])
def test_check_compares_the_outputs_of_a_demo_on_the_inputs_the_export_used(
        tmp_path, spec, seed, inputs):
    lm = load_model(spec, seed=seed, inputs=inputs)
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan = p.plan(0.3)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "d", lm.source, pt2=False)
    assert json.loads((out / "plan.json").read_text())["source"]["demo_inputs"] is (
        inputs is None)
    res = check_dir(out)
    assert res["ok"] and res["outputs_match_report"] is True and not res["notes"], res
    if inputs is None:  # an export from before plan.json said so: the demo's own too
        _tamper(out, lambda d: d["source"].pop("demo_inputs"))
        assert check_dir(out)["outputs_match_report"] is True


@pytest.mark.parametrize("damage, says", [
    ("bad", "'verification.masked_equivalence' must be an object"),
    ({"max_abs_diff": "x", "ok": False}, "masked_equivalence.max_abs_diff' must be a number"),
    ({"ok": "yes"}, "masked_equivalence.ok' must be true or false"),
])
def test_a_damaged_verification_in_report_json_is_one_clear_error(demo_pruner, tmp_path,
                                                                  damage, says):
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "v", lm.source, pt2=False)
    report = json.loads((out / "report.json").read_text())
    report["verification"]["masked_equivalence"] = damage
    (out / "report.json").write_text(json.dumps(report))
    with pytest.raises(DepViewError, match=f"report.json is damaged: .*{says}"):
        check_dir(out)


def test_load_pruned_on_a_device_this_machine_lacks_is_one_clear_error(demo_pruner, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "c", lm.source, pt2=False)
    with pytest.raises(DepViewError, match=r"^device 'cuda' is not available on this machine"):
        load_pruned(out, device="cuda")
    with pytest.raises(DepViewError, match=r"^bad device 'gpu'"):
        load_pruned(out, device="gpu")
    assert next(load_pruned(out, device="cpu").parameters()).device.type == "cpu"


def test_torch_export_log_lines_go_to_the_report_not_the_terminal(tmp_path, capfd):
    # torch's loggers write to stderr through their own handlers: redirect_stderr missed
    # "W... symbolic_shapes.py ...] Unable to find user code corresponding to {u0}"
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.a = torch.nn.Linear(8, 32), torch.nn.Linear(32, 32)
            self.b, self.l2 = torch.nn.Linear(32, 32), torch.nn.Linear(32, 4)

        def forward(self, x):
            h = torch.relu(self.l1(x))
            h = self.a(h) if x.sum() > 0 else self.b(h)
            return self.l2(torch.relu(h))

    torch.manual_seed(0)
    p = Pruner(Branchy().eval(), (torch.randn(1, 8),))
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    capfd.readouterr()
    out = export_dir(p, plan, pruned, tmp_path / "b", {"spec": None, "kwargs": {}})
    assert capfd.readouterr().err == ""
    pt2 = json.loads((out / "report.json").read_text())["pt2"]
    assert any("symbolic" in w or "user code" in w for w in pt2.get("warnings", [])), pt2


def test_a_model_tuned_after_pruning_exports_reloads_and_checks(tmp_path):
    # prune, fine-tune, export: check failed ("not the original's tensor at plan.json's kept
    # indices", masked equivalence FAILED), both true of a tuned model and neither a fault
    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model

    lm = load_model("demo:cnn")
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        pruned(*lm.inputs).pow(2).mean().backward()
        opt.step()
    pruned.eval()
    untuned = export_dir(p, plan, pruned, tmp_path / "plain", lm.source)
    assert not check_dir(untuned)["ok"]  # without saying so, it looks damaged
    out = export_dir(p, plan, pruned, tmp_path / "tuned", lm.source, tuned=True)
    res = check_dir(out)
    assert res["ok"] and not res["problems"] and res["outputs_match_report"], res
    assert any("tuned after pruning" in n for n in res["notes"])
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["masked_equivalence"] == {
        "skipped": "the weights were tuned after pruning"}
    assert json.loads((out / "plan.json").read_text())["rounds"][-1]["tuned"] is True
    again = load_pruned(out)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                  pruned.state_dict().values(), strict=True))


# -- a model built in-process (no spec) -------------------------------------------------------


def _hf_in_process(kind: str):
    """A Hugging Face model built in-process, its example inputs, and a Pruner of it."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (1, 8))
    if kind == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64,
            bos_token_id=0, eos_token_id=0))
        inputs = (ids,)
    elif kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=100, bos_token_id=0, eos_token_id=0))
        inputs = (ids,)
    elif kind == "mamba2":  # its config holds an infinity (time_step_limit = (0, inf))
        model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
            hidden_size=32, num_heads=8, head_dim=8, expand=2, state_size=8, n_groups=1,
            num_hidden_layers=2, vocab_size=100, chunk_size=8))
        assert model.config.time_step_limit[1] == float("inf")
        inputs = (ids,)
    else:  # keyword inputs
        model = transformers.BertForSequenceClassification(transformers.BertConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=100, max_position_embeddings=64))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    model.eval()
    return model, inputs, Pruner(model, inputs)


def _logits(model, inputs):
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    return out.logits


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert", "mamba2"])
def test_an_in_process_hf_model_exports_and_reloads_without_a_spec(tmp_path, kind):
    model, inputs, p = _hf_in_process(kind)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / kind)  # no source: built here
    src = json.loads((out / "plan.json").read_text())["source"]
    assert src["spec"] is None
    assert src["hf_config"]["architectures"] == [type(model).__name__]
    assert src["hf_config"] == json.loads(model.config.to_json_string()) | {
        "architectures": [type(model).__name__]}  # the original's, not the pruned one's
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"] == {"written": True, "file": "inputs.safetensors"}
    again = load_pruned(out)
    assert type(again) is type(model)
    assert torch.equal(_logits(again, inputs), _logits(pruned, inputs))
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in pruned.state_dict().items()}
    if kind == "gpt2":  # tied as from_pretrained ties them
        assert again.lm_head.weight is again.transformer.wte.weight
    res = check_dir(out, time=True)
    assert res["ok"] and res["forward"] and res["outputs_match_report"], res
    assert res["spec"] is None and res["model"] == f"{type(model).__name__} (built in-process)"
    assert any("not recorded" in n for n in res["notes"])
    assert "timing" not in res and "not timed: the export holds no original to time " \
        "against (its model was built in-process)" in res["notes"]
    # (a fitted config.json builds the pruned model; without one, the original's config in
    # plan.json builds the original, which the plan reshapes)
    assert (out / "config.json").is_file() == (kind != "mamba2")
    (out / "config.json").unlink(missing_ok=True)
    again = load_pruned(out)
    assert torch.equal(_logits(again, inputs), _logits(pruned, inputs))
    if kind == "gpt2":
        assert again.lm_head.weight is again.transformer.wte.weight
    assert torch.equal(_logits(model, inputs), _logits(p.model, inputs))  # (untouched)


def test_a_second_in_process_round_reloads_given_the_first_rounds_source(tmp_path):
    # a BERT classifier tuned with labels after round 1 (which sets config.problem_type),
    # then pruned again: round 2's widths are not a config's, so only round 1's source
    # (the original's config) can rebuild it; plan.json recorded the problem_type Hugging
    # Face's forward wrote, which the reload could not set ("not of the kind it holds")
    model, inputs, p = _hf_in_process("bert")
    plan = p.plan(0.5)
    tuned = p.apply(plan)
    tuned(**inputs, labels=torch.tensor([1])).loss.backward()
    assert tuned.config.problem_type == "single_label_classification"
    out1 = export_dir(p, plan, tuned, tmp_path / "r1", tuned=True, pt2=False)
    first = load_pruned(out1)
    p2 = Pruner(first, inputs)
    plan2 = p2.plan(0.3)
    second = p2.apply(plan2)
    r1 = json.loads((out1 / "plan.json").read_text())
    out2 = export_dir(p2, plan2, second, tmp_path / "r2", r1["source"], history=r1["rounds"],
                      pt2=False)
    (out2 / "config.json").unlink(missing_ok=True)  # (the original's config, reshaped)
    assert torch.equal(_logits(load_pruned(out2), inputs), _logits(second, inputs))
    assert check_dir(out2)["ok"]
    alone = export_dir(p2, plan2, second, tmp_path / "alone", history=r1["rounds"], pt2=False)
    (alone / "config.json").unlink(missing_ok=True)
    with pytest.raises(DepViewError, match="needs the first round's source"):
        load_pruned(alone)


def test_an_in_process_hf_export_whose_config_cannot_be_fitted_still_reloads(tmp_path, capsys):
    """Layers pruned to different widths: no config.json (no config describes them), but the
    original's config in plan.json rebuilds the original, which the plan reshapes; a second
    round through the CLI (prune DIR) keeps it and reloads too."""
    from viewer import cli

    model, inputs, p = _hf_in_process("llama")
    first = next(g.id for g in p.groups if g.root == "model.layers.0.mlp.gate_proj")
    plan = p.plan(0.5, overrides={first: 0.25})
    pruned = p.apply(plan)
    assert "reason" in p.config_fit_of(pruned)
    out = export_dir(p, plan, pruned, tmp_path / "one")
    assert not (out / "config.json").exists()
    again = load_pruned(out)
    assert torch.equal(_logits(again, inputs), _logits(pruned, inputs))
    assert cli.main(["prune", str(out), "--ratio", "0.3", "--out", str(tmp_path / "two")]) == 0
    two = load_pruned(tmp_path / "two")
    assert sum(t.numel() for t in two.parameters()) < sum(t.numel() for t in again.parameters())
    src = json.loads((tmp_path / "two" / "plan.json").read_text())["source"]
    assert src["spec"] is None and "hf_config" in src
    # a second round in Python without history: the pruner's model is round 1's, whose
    # config (not fitted) rebuilds the original's shapes: neither recorded nor written
    p2 = Pruner(pruned, inputs)
    plan2 = p2.plan(0.3)
    lone = export_dir(p2, plan2, p2.apply(plan2), tmp_path / "lone")
    assert "hf_config" not in json.loads((lone / "plan.json").read_text())["source"]
    assert not (lone / "config.json").exists()
    with pytest.raises(DepViewError, match="holds no config to build it from"):
        load_pruned(lone)
    assert check_dir(tmp_path / "two")["ok"]
    (tmp_path / "two" / "inputs.safetensors").unlink()  # nothing to run it on
    res = check_dir(tmp_path / "two")
    assert res["forward"] is None and not res["ok"]
    assert res["problems"] == ["the export recorded no example inputs (inputs.safetensors): "
                               "the model was not run"]
    capsys.readouterr()
    assert cli.main(["graph", str(tmp_path / "two"), "--json", "-"]) == 2
    assert "recorded no example inputs (inputs.safetensors): its model cannot be traced" in \
        capsys.readouterr().err


def test_an_in_process_hf_export_without_the_original_config_uses_config_json(tmp_path):
    """A second round in Python (history given, no source): the pruner's model is round 1's,
    so its config is not the original's and is not recorded; the fitted config.json of the
    round rebuilds the pruned model instead."""
    model, inputs, p = _hf_in_process("gpt2")
    plan = p.plan(0.5)
    one = export_dir(p, plan, p.apply(plan), tmp_path / "one")
    r1 = load_pruned(one)
    p2 = Pruner(r1, inputs)
    plan2 = p2.plan(0.5)
    pruned2 = p2.apply(plan2)
    assert "changed" in p2.config_fit_of(pruned2)
    rounds = json.loads((one / "plan.json").read_text())["rounds"]
    two = export_dir(p2, plan2, pruned2, tmp_path / "two", history=rounds)
    assert "hf_config" not in json.loads((two / "plan.json").read_text())["source"]
    assert (two / "config.json").is_file()
    assert torch.equal(_logits(load_pruned(two), inputs), _logits(pruned2, inputs))
    assert check_dir(two)["ok"]
    (two / "config.json").unlink()
    with pytest.raises(DepViewError, match=r"built in-process\) and holds no config to build "
                                           r"it from: pass the model's code"):
        load_pruned(two)


def test_an_in_process_torch_model_reloads_from_the_code_you_name(tmp_path):
    import demo_models

    torch.manual_seed(3)  # weights no spec's seed makes
    model = demo_models.get_demo("cnn").build().eval()
    inputs = (torch.randn(2, 3, 32, 32),)
    p = Pruner(model, inputs)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "cnn", {})
    assert json.loads((out / "plan.json").read_text())["source"] == {"spec": None}
    with pytest.raises(DepViewError, match="records no model spec.*pass the model's code"):
        load_pruned(out)
    again = load_pruned(out, spec="demo:cnn")
    with torch.no_grad():
        assert torch.equal(again(*inputs), pruned(*inputs))
    res = check_dir(out, spec="demo:cnn")  # on the recorded inputs, not the demo's
    assert res["ok"] and res["outputs_match_report"], res
    assert any("not recorded" in n for n in res["notes"])  # not the demo's seeded weights


SCALED_FILE = """
import torch

class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

    def forward(self, x, scale: float, relu: bool = True):
        h = self.a(x)
        return self.b(torch.relu(h) if relu else h) * scale
"""


@pytest.mark.parametrize("inputs", [(torch.randn(3, 4), 2.0),
                                    {"x": torch.randn(3, 4), "scale": 2.0, "relu": False}],
                         ids=["positional", "keyword"])
def test_plain_values_beside_the_inputs_are_recorded_and_reload(tmp_path, inputs):
    # a number or flag among the example inputs (scale=2.0, use_cache=False): the inputs
    # were not written, and load_pruned(DIR, spec=...) asked for --input, which it has not
    (tmp_path / "scaled.py").write_text(SCALED_FILE)
    sys.path.insert(0, str(tmp_path))
    try:
        from scaled import Scaled
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    p = Pruner(Scaled().eval(), inputs)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "s", pt2=False)
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["written"] is True
    spec = f"{tmp_path / 'scaled.py'}:Scaled"
    again = load_pruned(out, spec=spec)
    args, kwargs = (inputs, {}) if isinstance(inputs, tuple) else ((), inputs)
    with torch.no_grad():
        assert torch.equal(again(*args, **kwargs), pruned(*args, **kwargs))
    res = check_dir(out, spec=spec)  # run on the recorded inputs, scale and flag included
    assert res["ok"] and res["outputs_match_report"], res


def test_inputs_that_are_not_tensors_or_plain_values_are_not_written_and_it_says_why(
        tmp_path):
    class Listed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

        def forward(self, x, scales: list):
            return self.b(torch.relu(self.a(x))) * scales[0]

    torch.manual_seed(0)
    p = Pruner(Listed().eval(), (torch.randn(3, 4), [2.0]))
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "s", pt2=False)
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["written"] is False and "tensors and plain values" in \
        report["inputs"]["reason"]
    assert not (out / "inputs.safetensors").exists()
    with pytest.raises(DepViewError, match="records no model spec"):
        check_dir(out)


def test_an_export_of_a_model_apply_did_not_make_is_refused_before_anything_is_written(
        demo_pruner, tmp_path):
    # the original, or a copy pruned by another plan: plan.json would describe tensors the
    # weights file does not hold ("plan.json is damaged" on reload, of a sound plan.json)
    _, p = demo_pruner("cnn")
    plan, other = p.plan(0.5), p.plan(0.25)
    for model, has in ((p.model, "[16, 3, 3, 3]"), (p.apply(other), "[12, 3, 3, 3]")):
        with pytest.raises(DepViewError, match=re.escape(
                f"not the one pruner.apply(plan) makes: its 'features.0.weight' is {has}, the "
                "plan makes it [8, 3, 3, 3]")):
            export_dir(p, plan, model, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_an_export_of_a_copy_that_does_not_run_is_one_error_and_leaves_nothing(
        demo_pruner, tmp_path):
    _, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    pruned = p.apply(plan).to(torch.bfloat16)  # (cast after tuning: the inputs are float32)
    with pytest.raises(DepViewError, match="the pruned model does not run on the example "
                                           "inputs: RuntimeError: "):
        export_dir(p, plan, pruned, tmp_path / "new" / "out", tuned=True)
    assert not (tmp_path / "new" / "out").exists()
    mine = tmp_path / "mine"  # a directory the user had stays, with what it held
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(DepViewError, match="does not run"):
        export_dir(p, plan, pruned, mine, tuned=True)
    assert [f.name for f in mine.iterdir()] == ["notes.txt"]


def test_plan_json_spec_may_be_null_but_hf_config_must_be_an_object():
    from viewer.core.export import plan_problem

    assert plan_problem({"source": {"spec": None}}) == ""
    assert "must be an object with the model's 'spec'" in plan_problem({"source": {}})
    assert "hf_config" in plan_problem({"source": {"spec": None, "hf_config": [1]}})


def test_an_in_process_export_with_a_bad_config_is_a_one_line_error(tmp_path):
    """plan.json and config.json can be edited: a class that is not a transformers model, a
    config that is not JSON or names nothing, are each one line, and nothing is imported."""
    model, inputs, p = _hf_in_process("gpt2")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "g")
    meta = json.loads((out / "plan.json").read_text())
    fitted = (out / "config.json").read_text()
    (out / "config.json").unlink()  # (a written config.json is read first)

    def with_config(cfg) -> None:
        meta["source"]["hf_config"] = cfg
        (out / "plan.json").write_text(json.dumps(meta))

    good = dict(meta["source"]["hf_config"])
    for archs, why in ((["pipeline"], "'pipeline', which is not a model class of transformers"),
                       (["os.system"], "'os.system', which is not a model class"),
                       ([], "names no architecture"), (None, "names no architecture")):
        with_config({**good, "architectures": archs})
        with pytest.raises(DepViewError, match=why):
            load_pruned(out)
    with_config({**good, "n_embd": "wide"})
    with pytest.raises(DepViewError, match="plan.json's hf_config is not a GPT2Config: .*n_embd"):
        load_pruned(out)
    with_config({**good, "n_head": 5})  # 32 wide: no heads of 5
    with pytest.raises(DepViewError, match="GPT2LMHeadModel cannot be built from plan.json's "
                                           "hf_config"):
        load_pruned(out)
    with_config(good)
    assert torch.equal(_logits(load_pruned(out), inputs), _logits(p.apply(plan), inputs))
    (out / "config.json").write_text("{not json")  # read first, before hf_config
    with pytest.raises(DepViewError, match="config.json is not readable JSON"):
        load_pruned(out)
    (out / "config.json").write_text(json.dumps({**good, "architectures": ["GPT2LMHeadModel"],
                                                 "n_embd": 64}))
    with pytest.raises(DepViewError, match="weights in .* do not fit the model its config "
                                           "describes"):
        load_pruned(out)
    (out / "config.json").write_text(fitted)
    assert torch.equal(_logits(load_pruned(out), inputs), _logits(p.apply(plan), inputs))


def test_half_precision_weights_are_exported_in_their_own_dtype(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(0)
    base = load_model("demo:cnn").model
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v
               for k, v in base.state_dict().items()}, tmp_path / "w.safetensors")
    lm = load_model("demo:cnn", weights=str(tmp_path / "w.safetensors"))
    assert lm.source["dtype"] == "bfloat16"
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())  # it runs as float32
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "e", lm.source)
    with safe_open(out / "model.safetensors", "pt") as f:
        kinds = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert kinds == {"BF16", "I64"}  # (num_batches_tracked)
    assert json.loads((out / "report.json").read_text())["dtype"] == {"written": "bfloat16"}
    again = load_pruned(out)  # float32, exactly the pruned model: bf16 held its values
    with torch.no_grad():
        assert torch.equal(pruned(*lm.inputs), again(*lm.inputs))
    res = check_dir(out)
    assert res["ok"] and res["tensors_match_original"], res
    # values bf16 cannot hold (tuned in float32) stay float32, and the report says why
    with torch.no_grad():
        next(pruned.parameters()).add_(1e-3)
    tuned = export_dir(p, plan, pruned, tmp_path / "t", lm.source, tuned=True)
    said = json.loads((tuned / "report.json").read_text())["dtype"]
    assert said["written"] == "float32" and "tuned in float32" in said["reason"]
    assert check_dir(tuned)["ok"]
    # a float32 file records nothing
    save_file(base.state_dict(), tmp_path / "f.safetensors")
    assert "dtype" not in load_model("demo:cnn", weights=str(tmp_path / "f.safetensors")).source


def test_a_bfloat16_hugging_face_directory_exports_bfloat16_for_from_pretrained(tmp_path):
    tf = pytest.importorskip("transformers")
    from conftest import save_tiny_llama

    save_tiny_llama(tmp_path / "m", torch.bfloat16, max_shard_size="8KB")
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()  # (shards read too)
    lm = load_model(str(tmp_path / "m"))
    assert lm.source["dtype"] == "bfloat16"
    p = Pruner(lm.model, lm.inputs)
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "e", lm.source)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    again = tf.LlamaForCausalLM.from_pretrained(out)
    assert again.dtype == torch.bfloat16 and again.config.hidden_size < 32
    mine = load_pruned(out).to(torch.bfloat16).state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in again.state_dict().items())
    assert check_dir(out)["ok"]


NAMED_OUT = """
from typing import NamedTuple

import torch
from torch import nn

class Out(NamedTuple):
    logits: torch.Tensor
    features: torch.Tensor

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        f = self.body(torch.relu(self.stem(x)))
        return Out(self.head(f.mean((2, 3))), f)
"""


def test_check_reads_an_older_report_that_named_named_tuple_outputs_by_index(
        tmp_path, monkeypatch):
    # report.json names outputs as DepView did when it wrote it: before NamedTuple items were
    # named by field, check of such an export would say its output shapes differ
    lm, p = _file_pruner(tmp_path, monkeypatch, NAMED_OUT)
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "n", lm.source, pt2=False)
    report = json.loads((out / "report.json").read_text())
    assert list(report["output_shapes"]) == ["logits", "features"]
    assert list(report["output_digest"]["outputs"]) == ["logits", "features"]
    res = check_dir(out)
    assert res["ok"] and list(res["output_shapes"]) == ["logits", "features"], res

    def older(d: dict) -> dict:
        return {{"logits": "[0]", "features": "[1]"}[k]: v for k, v in d.items()}

    report["output_shapes"] = older(report["output_shapes"])
    report["output_digest"]["outputs"] = older(report["output_digest"]["outputs"])
    (out / "report.json").write_text(json.dumps(report))
    res = check_dir(out)
    assert res["ok"] and res["shapes_match_report"] and res["outputs_match_report"], res
    # and what it recorded is still compared: a wrong shape under an older name is caught
    report["output_shapes"]["[1]"] = [1, 7, 8, 8]
    (out / "report.json").write_text(json.dumps(report))
    res = check_dir(out)
    assert not res["ok"] and res["shapes_match_report"] is False, res


def test_the_apps_checkpoint_zip_loads_and_checks_as_it_is(tmp_path, monkeypatch):
    # load_pruned("checkpoint.zip") and check of it said "is a file, not a DepView export
    # directory": the zip had to be unzipped by hand first
    from viewer.core.export import zip_dir

    work = tmp_path / "work"
    work.mkdir()
    (work / "net.py").write_text(MODEL_FILE)
    monkeypatch.chdir(work)
    lm = load_model("net.py:Net", inputs=["1x3x8x8"])
    p = Pruner(lm.model, lm.inputs)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, work / "out", lm.source, pt2=False)
    moved = tmp_path / "elsewhere"  # another machine: the zip, and the model file beside it
    moved.mkdir()
    (moved / "checkpoint.zip").write_bytes(zip_dir(out))
    (moved / "net.py").write_text(MODEL_FILE)
    shutil.rmtree(work)
    monkeypatch.chdir(tmp_path)
    with torch.no_grad():
        assert torch.equal(load_pruned(moved / "checkpoint.zip")(*lm.inputs),
                           pruned(*lm.inputs))
    res = check_dir(moved / "checkpoint.zip")
    assert res["ok"] and res["dir"] == str(moved / "checkpoint.zip"), res
    # its errors name the zip, never the temporary directory it was read from
    (moved / "net.py").unlink()
    with pytest.raises(DepViewError) as err:
        load_pruned(moved / "checkpoint.zip")
    assert "model file not found: net.py" in str(err.value)
    assert "tmp" not in str(err.value).replace(str(tmp_path), ""), err.value
    (moved / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DepViewError, match=r"bad.zip is not a readable zip file"):
        load_pruned(moved / "bad.zip")
    with zipfile.ZipFile(moved / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(DepViewError, match=r"other.zip is not a DepView export \(needs "
                                           r"plan.json and model.safetensors\)"):
        check_dir(moved / "other.zip")


def test_a_ctrl_c_waits_until_the_exports_files_are_all_moved():
    # a Ctrl-C between two moves left the new model.pt2 beside the old weights and
    # plan.json, a mix of two exports that check passed
    import signal

    from viewer.core.export import _signals_held

    moved = []
    # (Python's own handler: a test run before this one may have set another)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with _signals_held():
                signal.raise_signal(signal.SIGINT)
                moved.append("all")
    finally:
        signal.signal(signal.SIGINT, before)
    assert moved == ["all"]


def test_check_says_what_a_report_without_digests_leaves_uncompared(demo_pruner, tmp_path):
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "out", lm.source, pt2=False)
    report = json.loads((out / "report.json").read_text())
    del report["output_digest"], report["weights_sha256"]
    (out / "report.json").write_text(json.dumps(report))
    res = check_dir(out)
    assert res["ok"] and "outputs_match_report" not in res  # (nothing to compare with)
    assert "report.json records no outputs: they were not compared" in res["notes"]
    assert "report.json records no SHA-256 of the weights: not compared" in res["notes"]


def _pt2_export(demo_pruner, tmp_path):
    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    return export_dir(p, plan, p.apply(plan), tmp_path / "out", lm.source)


def test_check_compares_model_pt2_with_its_sha256_and_never_loads_it(demo_pruner, tmp_path,
                                                                    monkeypatch):
    # check looked at model.safetensors only: a model.pt2 swapped for another program (which
    # torch.export.load would unpickle) passed
    import hashlib

    def never(*args, **kwargs):
        raise AssertionError("model.pt2 was loaded")

    monkeypatch.setattr(torch.export, "load", never)
    out = _pt2_export(demo_pruner, tmp_path)
    pt2 = out / "model.pt2"
    report = json.loads((out / "report.json").read_text())
    assert report["pt2"]["written"] and \
        report["pt2"]["sha256"] == hashlib.sha256(pt2.read_bytes()).hexdigest()
    res = check_dir(out)
    assert res["ok"] and res["pt2_match_report"] is True and not res["notes"], res
    zipped = tmp_path / "out.zip"
    write_zip(out, zipped)  # (the zip's model.pt2 is hashed as it is read, not unpacked)
    assert check_dir(zipped)["pt2_match_report"] is True
    good = pt2.read_bytes()
    pt2.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    write_zip(out, zipped)
    for where in (out, zipped):
        res = check_dir(where)
        assert not res["ok"] and res["pt2_match_report"] is False
        assert res["problems"] == ["model.pt2 is not the file report.json describes (its "
                                   "SHA-256 differs)"], res
    pt2.unlink()  # (a copy without the program: the rest is still the export)
    res = check_dir(out)
    assert res["ok"] and "pt2_match_report" not in res
    assert res["notes"] == ["report.json says model.pt2 was written, but it is not here: not "
                            "compared"]
    pt2.write_bytes(good)  # an export from before the SHA-256 was recorded
    del report["pt2"]["sha256"]
    (out / "report.json").write_text(json.dumps(report))
    assert check_dir(out)["notes"] == ["report.json records no SHA-256 of model.pt2: not "
                                       "compared"]
    report["pt2"] = {"written": False, "reason": "not requested"}  # a program put beside it
    (out / "report.json").write_text(json.dumps(report))
    res = check_dir(out)
    assert not res["ok"] and res["problems"] == ["model.pt2 is not this export's: report.json "
                                                 "says none was written"]
    report["pt2"] = {"written": True, "sha256": 5}
    (out / "report.json").write_text(json.dumps(report))
    with pytest.raises(DepViewError, match="report.json is damaged: 'pt2' must be an object"):
        check_dir(out)


def test_a_json_file_larger_than_an_export_may_hold_is_refused_unread(demo_pruner, tmp_path):
    # a 2 GB plan.json (padded) took 4.4 GB of memory to read before anything was checked
    from viewer.core.export import JSON_MIN_LIMIT

    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "out", lm.source, pt2=False)
    assert (out / "model.safetensors").stat().st_size < JSON_MIN_LIMIT
    for name in ("plan.json", "report.json"):
        keep = (out / name).read_bytes()
        with open(out / name, "r+b") as f:  # (sparse: no disk, no time)
            f.truncate(2 << 30)
        for call in (check_dir, load_pruned):
            if call is load_pruned and name == "report.json":
                continue  # (load_pruned does not read the report)
            with pytest.raises(DepViewError) as err:
                call(out)
            assert str(err.value) == (
                f"{out / name} is 2.0 GB: more than the 256 MB a JSON file of this export "
                "may hold (the larger of 256 MB and the size of its model.safetensors); "
                "refused unread")
        (out / name).write_bytes(keep)
    # one at the limit is read (whitespace is JSON): the size is what is bounded
    from viewer.core import export as export_mod

    limit = export_mod.json_limit(0)
    text = (out / "plan.json").read_bytes()
    assert export_mod.read_json(out / "plan.json", limit=len(text)) == json.loads(text)
    with pytest.raises(DepViewError, match=r"plan.json is .*: more than the 12 bytes"):
        export_mod.read_json(out / "plan.json", limit=12)
    assert limit == JSON_MIN_LIMIT and export_mod.json_limit(3 << 30) == 3 << 30


def test_a_zip_bomb_is_refused_from_what_the_zip_declares_before_it_is_unpacked(
        demo_pruner, tmp_path, monkeypatch):
    import zlib

    from viewer.core import export as export_mod

    lm, p = demo_pruner("cnn")
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "out", lm.source, pt2=False)

    def rezip(dest, **swap):
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(out.iterdir()):
                zf.writestr(f.name, swap.get(f.name.replace(".", "_"), f.read_bytes()))
        return dest

    # plan.json deflated from 300 MB of spaces (valid JSON) to 300 kB: its size is refused
    # from the zip's directory, unpacked
    spaces = (out / "plan.json").read_bytes() + b" " * (300 << 20)
    bomb = rezip(tmp_path / "plan-bomb.zip", plan_json=spaces)
    del spaces
    assert bomb.stat().st_size < 2 << 20
    inflated = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, mode="r", *args, **kwargs):
        if mode == "r":  # (a member read, not one written)
            inflated.append(getattr(name, "filename", name))
        return real_open(self, name, mode, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    for call in (check_dir, load_pruned, lambda z: read_export_zip(z.read_bytes())):
        with pytest.raises(DepViewError, match=r"plan-bomb.zip's plan.json is 300 MB: more "
                                               r"than the 256 MB a JSON file|^the zip's "
                                               r"plan.json is 300 MB: more than the 256 MB"):
            call(bomb)
    assert inflated == []  # nothing was unpacked
    # weights deflated 1000 times (runs of one byte): no export's file packs so tightly
    monkeypatch.setattr(export_mod, "ZIP_RATIO_FROM", 1 << 20)
    zeros = rezip(tmp_path / "zeros.zip", model_safetensors=bytes(8 << 20))
    with pytest.raises(DepViewError, match=r"zeros.zip's model.safetensors would unpack to "
                                           r"8.0 MB from [\d.]+ kB \(\d+ times as large: .* a "
                                           "zip bomb\\?\\); refused unpacked"):
        check_dir(zeros)
    assert inflated == [] and len(zlib.compress(bytes(8 << 20))) < 16 << 10
    # more than the temporary directory has free
    monkeypatch.setattr(export_mod.shutil, "disk_usage",
                        lambda _: type("U", (), {"free": 1000})())
    write_zip(out, tmp_path / "ok.zip")
    with pytest.raises(DepViewError, match=r"ok.zip unpacks to \d+ kB, and the temporary "
                                           r"directory .* has 1000 bytes free"):
        check_dir(tmp_path / "ok.zip")
    assert inflated == []
    monkeypatch.undo()
    assert check_dir(tmp_path / "ok.zip")["ok"]  # (the export itself is fine)
