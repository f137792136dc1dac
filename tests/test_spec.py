import pickle

import pytest
import torch
from conftest import LAZY_FILE
from torch import nn

from viewer.core.errors import DepViewError
from viewer.core.spec import load_model, parse_input, read_batch, read_state_dict
from viewer.core.trees import flatten


def test_parse_input():
    assert parse_input("1x3x224x224") == ((1, 3, 224, 224), "float32")
    assert parse_input("1x16:int64") == ((1, 16), "int64")
    # as Python prints a shape (it was "expected a shape like 1x3x224x224")
    assert parse_input("1,3,224,224") == parse_input("(1, 3, 224, 224)") == \
        parse_input("[1,3,224,224]") == ((1, 3, 224, 224), "float32")
    assert parse_input("ids=(2, 8):int64") == ((2, 8), "int64") and parse_input("(4,)") == \
        ((4,), "float32")
    for bad in ("1x", "axb", "1x3:complex", "", "1,,3", "1, 3, x", "(1 3)"):
        with pytest.raises(DepViewError, match="--input"):
            parse_input(bad)


@pytest.mark.parametrize("text", [
    "1x3x8x8", "1,3,8,8", "1, 3, 8, 8", "(1, 3, 8, 8)", "(1,3,8,8)", "[1, 3, 8, 8]",
    "( 1, 3, 8, 8 )", "(1, 3, 8, 8,)", " 1x3x8x8 ", "x=1x3x8x8", "x = (1, 3, 8, 8)",
    "batch.image=[1,3,8,8]"])
def test_parse_input_takes_every_documented_spelling_of_a_shape(text):
    assert parse_input(text) == ((1, 3, 8, 8), "float32")
    assert parse_input(text.rstrip() + ":int64") == ((1, 3, 8, 8), "int64")


@pytest.mark.parametrize("text, says", [
    # '1x3x8x8:' and '(1,3,8,8' were taken as 1x3x8x8 float32: a typo ran on made-up inputs
    ("1x3x8x8:", r"nothing after ':' \(give a dtype, as in 1x16:int64"),
    ("(1,3,8,8", "expected a shape like 1x3x224x224, 1,3,224,224 or \\(1, 3, 224, 224\\)"),
    ("1,3,8,8)", "expected a shape like"), ("[1,3,8,8)", "expected a shape like"),
    ("((1,3,8,8))", "expected a shape like"), ("(1x3x8x8)", "expected a shape like"),
    ("1x3x8x8,", "expected a shape like"), ("1X3", "expected a shape like"),
    ("1 x 3", "expected a shape like"), ("1x3 :int64", "expected a shape like"),
    ("1x3: int64", "unknown dtype ' int64'"), ("1x3:int64:", "unknown dtype 'int64:'"),
    ("\u0661x3", "expected a shape like"), ("()", "expected a shape like"),
    ("x=", "expected a shape like"), ("1x0x8", "every size must be at least 1"),
])
def test_parse_input_refuses_any_other_spelling_in_one_line(text, says):
    with pytest.raises(DepViewError, match=says) as err:
        parse_input(text)
    assert str(err.value).startswith(f"bad --input {text!r}: ") and "\n" not in str(err.value)


def test_demo_spec_knows_its_inputs():
    lm = load_model("demo:rnn")
    assert lm.inputs[0].dtype == torch.int64 and lm.source["inputs"] == ["1x12:int64"]
    assert lm.output_layers == ["fc"]


def test_package_and_file_specs(tmp_path):
    lm = load_model("torch.nn:Linear", kwargs='{"in_features": 4, "out_features": 2}',
                    inputs=["3x4"])
    assert isinstance(lm.model, nn.Linear) and lm.inputs[0].shape == (3, 4)
    assert lm.description == "Linear"  # the app's header names the class of a user's model
    f = tmp_path / "mymodel.py"
    f.write_text("import torch\nnet = torch.nn.Sequential(torch.nn.Linear(4, 3))\n"
                 "def make(width=5):\n    return torch.nn.Linear(4, width)\n")
    assert isinstance(load_model(f"{f}:net", inputs=["1x4"]).model, nn.Sequential)
    assert load_model(f"{f}:make", kwargs={"width": 7}, inputs=["1x4"]).model.out_features == 7


@pytest.mark.parametrize("spec, msg", [
    ("resnet", "bad model spec"),
    ("demo:nope", "unknown demo model"),
    ("no_such_pkg_xyz:Model", "cannot import module"),
    ("torch.nn:NoSuchThing", "has no attribute"),
    ("missing/file.py:Model", "model file not found"),
    ("missing/llama-dir", "^no such directory: missing/llama-dir$"),  # (a mistyped path)
    ("resnet50.pth", "is a saved file, not model code: .* weights with --weights"),
    ("ckpt/model.safetensors", "is a saved file"),
    ("", "^the model SPEC is empty"),
    (nn.Linear(4, 2), "^load_model takes a SPEC string .*, not Linear: for a model object, "
                      r"call build_graph\(model, inputs\) or Pruner\(model, inputs\)$"),
])
def test_bad_specs_are_one_line(spec, msg):
    with pytest.raises(DepViewError, match=msg) as err:
        load_model(spec, inputs=["1x4"])
    assert "\n" not in str(err.value)


def test_a_model_file_named_without_its_model_says_how_to_name_it(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    with pytest.raises(DepViewError) as err:
        load_model(str(f), inputs=["1x4"])
    assert str(err.value) == (f"{f} is model code: name the model in it, e.g. {f}:MyModel (a "
                              "class, or a function that returns one)")
    (tmp_path / "notes.txt").write_text("hi")  # (an existing file that is not code)
    with pytest.raises(DepViewError, match="^bad model spec"):
        load_model(str(tmp_path / "notes.txt"), inputs=["1x4"])


def test_needs_inputs_and_good_kwargs():
    with pytest.raises(DepViewError, match="needs example inputs"):
        load_model("torch.nn:Linear", kwargs={"in_features": 2, "out_features": 2})
    with pytest.raises(DepViewError, match="not valid JSON"):
        load_model("demo:cnn", kwargs="{width: 3")


def test_a_factory_missing_arguments_says_how_to_give_them(tmp_path):
    f = tmp_path / "nets.py"
    f.write_text("import torch\ndef mlp(width, depth, *, act):\n"
                 "    return torch.nn.Linear(4, width)\n")
    with pytest.raises(DepViewError) as err:
        load_model("torch.nn:Linear", inputs=["1x4"], kwargs={"in_features": 4})
    assert str(err.value) == (
        "building torch.nn:Linear failed: TypeError: Linear.__init__() missing 1 required "
        "positional argument: 'out_features' (give it with --kwargs '{\"out_features\": ...}')")
    with pytest.raises(DepViewError, match=r"""'width' and 'depth' \(give them with --kwargs """
                       r"""'\{"width": \.\.\., "depth": \.\.\.\}'\)$"""):
        load_model(f"{f}:mlp", inputs=["1x4"])
    with pytest.raises(DepViewError, match=r"""keyword-only argument: 'act' \(give it with """
                       r"""--kwargs '\{"act": \.\.\.\}'\)$"""):
        load_model(f"{f}:mlp", inputs=["1x4"], kwargs={"width": 2, "depth": 1})
    with pytest.raises(DepViewError) as err:  # another TypeError: no hint
        load_model(f"{f}:mlp", inputs=["1x4"], kwargs={"width": "2", "depth": 1, "act": 0})
    assert "--kwargs" not in str(err.value)


def test_weights_safetensors_and_weights_only_pt(tmp_path):
    from safetensors.torch import save_file

    lm = load_model("demo:cnn", seed=1)
    sd = lm.model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    torch.save(sd, tmp_path / "w.pt")
    for f in ("w.safetensors", "w.pt"):
        lm2 = load_model("demo:cnn", weights=str(tmp_path / f), seed=2)
        assert all(torch.equal(sd[k], v) for k, v in lm2.model.state_dict().items())


def test_weights_that_store_a_tied_tensor_once_load(tmp_path):
    # safetensors' save_model and Hugging Face's save_pretrained keep one name of a tied
    # tensor: it was "do not fit the model: missing ['lm_head.weight']"
    from conftest import TiedLM
    from safetensors.torch import save_file, save_model

    from viewer.core.spec import load_weights

    src, dst = TiedLM(), TiedLM()
    save_model(src, str(tmp_path / "tied.safetensors"))
    load_weights(dst, tmp_path / "tied.safetensors")
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())
    assert dst.head.weight is dst.emb.weight  # still tied
    # a tensor no other name holds is still missing
    sd = {k: v for k, v in src.state_dict().items() if k not in ("head.weight", "mid.bias")}
    save_file(sd, str(tmp_path / "short.safetensors"))
    with pytest.raises(DepViewError, match=r"missing \['mid.bias'\], unexpected \[\]"):
        load_weights(dst, tmp_path / "short.safetensors")


def test_weights_saved_from_a_wrapper_of_the_model_load(tmp_path):
    # DataParallel/DDP (module.), a Lightning checkpoint (state_dict -> model.), a compiled
    # model (_orig_mod.): each was "do not fit the model: missing [...], unexpected [...]"
    lm = load_model("demo:cnn", seed=1)
    sd = lm.model.state_dict()
    saved = {
        "ddp.pt": {f"module.{k}": v for k, v in sd.items()},
        "lightning.pt": {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3},
        "compiled.pt": {f"module._orig_mod.{k}": v for k, v in sd.items()},
    }
    for name, obj in saved.items():
        torch.save(obj, tmp_path / name)
        lm2 = load_model("demo:cnn", weights=str(tmp_path / name), seed=2)
        assert all(torch.equal(sd[k], v) for k, v in lm2.model.state_dict().items()), name
    # the other way: a model that wraps what was saved
    wrapped = nn.Sequential()
    wrapped.add_module("net", load_model("demo:cnn", seed=3).model)
    from viewer.core.spec import _unwrapped

    fitted = _unwrapped(sd, set(wrapped.state_dict()))
    wrapped.load_state_dict(fitted, strict=True)
    assert all(torch.equal(sd[k], wrapped.state_dict()[f"net.{k}"]) for k in sd)
    # a prefix is taken off only when what is left is exactly the model's: beside other
    # tensors, the error says where the model's are
    torch.save({**saved["ddp.pt"], "loss.weight": torch.ones(3)}, tmp_path / "more.pt")
    with pytest.raises(DepViewError, match=r"do not fit the model: .* \(its tensors under "
                                           r"'module\.' are this model's, beside others"):
        load_model("demo:cnn", weights=str(tmp_path / "more.pt"))
    half = dict(list(saved["ddp.pt"].items())[:-1])  # one tensor short: no guess
    torch.save(half, tmp_path / "half.pt")
    with pytest.raises(DepViewError, match=r"do not fit the model: missing \[") as err:
        load_model("demo:cnn", weights=str(tmp_path / "half.pt"))
    assert "its tensors under" not in str(err.value)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


class OsCall:
    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_pickles_are_never_unpickled(tmp_path):
    f = tmp_path / "evil.pt"
    with open(f, "wb") as fh:
        pickle.dump({"weight": Evil()}, fh)
    with pytest.raises(DepViewError, match="weights-only"):
        read_state_dict(f)
    # a whole module saved: what the unpickler refused, and what to save instead, on one line
    torch.save({"m": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")
    with pytest.raises(DepViewError, match=r"Unsupported global: GLOBAL torch.nn.modules.linear"
                       r".Linear .*\(save model.state_dict\(\), not the model") as err:
        read_state_dict(tmp_path / "module.pt")
    assert "\n" not in str(err.value) and "add_safe_globals" not in str(err.value)
    # a payload that calls a function (os.system in the wild): named, refused, never run
    torch.save({"w": OsCall()}, tmp_path / "payload.pt")
    with pytest.raises(DepViewError) as err:
        read_state_dict(tmp_path / "payload.pt")
    assert str(err.value).endswith("unsupported GLOBAL posix.getcwd (refused, never run: save "
                                   "model.state_dict(), not the model, or use .safetensors)")
    pickle.dump({"w": Evil()}, open(tmp_path / "p5.pt", "wb"), protocol=5)
    with pytest.raises(DepViewError, match=r"Unsupported operand \d+ \(not a torch.save file"):
        read_state_dict(tmp_path / "p5.pt")
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "scripted.pt"))
    with pytest.raises(DepViewError, match=r"is a TorchScript archive .*state_dict\(\)"):
        read_state_dict(tmp_path / "scripted.pt")
    with pytest.raises(DepViewError, match="do not fit"):
        torch.save({"nope": torch.zeros(1)}, tmp_path / "x.pt")
        load_model("demo:cnn", weights=str(tmp_path / "x.pt"))


def test_weights_files_are_recognised_by_their_content(tmp_path):
    from safetensors.torch import save_file

    sd = load_model("demo:cnn", seed=1).model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "named.pt"))
    got = read_state_dict(tmp_path / "named.pt")  # a safetensors file under another name
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    (tmp_path / "notes.pt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(DepViewError, match="neither a .safetensors file nor a file written by "
                                           "torch.save"):
        read_state_dict(tmp_path / "notes.pt")


def test_a_batch_file_is_read_as_positional_or_named_inputs_without_pickle(tmp_path):
    from safetensors.torch import save_file

    a, b = torch.randn(4, 3), torch.arange(4)
    save_file({"1": b, "0": a}, str(tmp_path / "pos.safetensors"))
    got = read_batch(tmp_path / "pos.safetensors")
    assert isinstance(got, tuple) and torch.equal(got[0], a) and torch.equal(got[1], b)
    save_file({"input_ids": b}, str(tmp_path / "named.safetensors"))
    got = read_batch(tmp_path / "named.safetensors")
    assert list(got) == ["input_ids"] and torch.equal(got["input_ids"], b)
    torch.save(a, tmp_path / "one.pt")
    torch.save([a, b], tmp_path / "list.pt")
    torch.save({1: b, 0: a}, tmp_path / "intkeys.pt")
    assert [t.shape for t in read_batch(tmp_path / "intkeys.pt")] == [a.shape, b.shape]
    assert torch.equal(read_batch(tmp_path / "one.pt")[0], a)
    assert [t.shape for t in read_batch(tmp_path / "list.pt")] == [a.shape, b.shape]
    bad = {"gap.safetensors": ({"0": a, "2": b}, "must be named 0, 1"),
           "mixed.safetensors": ({"0": a, "mask": b}, "mixes positional"),
           "text.pt": ("hello", "does not hold a batch"),
           "rows0.safetensors": ({"0": torch.randn(0, 3)}, "input 0 is empty .shape 0x3."),
           "named0.pt": ({"ids": b[:0]}, "input ids is empty")}
    for name, (obj, msg) in bad.items():
        f = tmp_path / name
        save_file(obj, str(f)) if name.endswith(".safetensors") else torch.save(obj, f)
        with pytest.raises(DepViewError, match=msg):
            read_batch(f)
    with pytest.raises(DepViewError, match="batch file not found"):
        read_batch(tmp_path / "nope.pt")
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump([Evil()], fh)
    with pytest.raises(DepViewError, match="weights-only"):
        read_batch(tmp_path / "evil.pt")


def test_meta_device_build():
    lm = load_model("demo:llama", device="meta",
                    kwargs={"dim": 1024, "n_layers": 2, "n_heads": 16, "n_kv_heads": 8})
    assert next(lm.model.parameters()).device.type == "meta"
    with pytest.raises(DepViewError, match="meta"):
        load_model("demo:cnn", device="meta", weights="x.pt")


def test_a_factory_returning_a_compiled_model_gives_the_module_it_wraps(tmp_path,
                                                                         monkeypatch):
    (tmp_path / "comp.py").write_text(
        "import torch\n"
        "def make():\n"
        "    return torch.compile(torch.nn.Linear(4, 2), backend='eager')\n")
    monkeypatch.chdir(tmp_path)
    lm = load_model("comp.py:make", inputs=["1x4"])
    assert type(lm.model) is torch.nn.Linear


def test_an_instance_spec_is_copied_not_changed(tmp_path, monkeypatch):
    (tmp_path / "held.py").write_text("import torch\nnet = torch.nn.Sequential("
                                      "torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)).train()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import held

    before = held.net[0].weight.clone()
    sd = {k: torch.ones_like(v) for k, v in held.net.state_dict().items()}
    torch.save(sd, tmp_path / "w.pt")
    lm = load_model("held:net", inputs=["1x4"], weights=str(tmp_path / "w.pt"))
    # weights, eval mode (and a later reshape by load_pruned) go to a copy: the module's
    # own object is as it was (it was the same object, loaded and put in eval mode)
    assert lm.model is not held.net and held.net.training
    assert torch.equal(held.net[0].weight, before) and torch.equal(lm.model[0].weight,
                                                                     sd["0.weight"])


@pytest.mark.parametrize("spec, kwargs", [
    ("os:system", {"command": "touch {marker}"}),
    ("subprocess:run", {"args": ["touch", "{marker}"]}),
    ("torch:load", {"f": "{marker}", "weights_only": False}),  # would unpickle
    ("torch.hub:load", {"repo_or_dir": "{marker}", "model": "x"}),  # would fetch code
    ("numpy:load", {"file": "{marker}", "allow_pickle": True}),
    ("torch.nn:functional.relu", {}),  # a function, but torch's
    # an installed package's function that evaluates its argument (a deny-list missed it)
    ("sympy:sympify", {"a": "__import__('os').system('touch {marker}')"}),
])
def test_an_edited_plan_json_cannot_name_code_that_is_not_a_model(tmp_path, spec, kwargs):
    # load_pruned/check import and call the spec plan.json records: `os:system` with
    # {"command": ...} ran the command before "not an nn.Module" was said
    import json

    from viewer.core.export import check_dir, export_dir, load_pruned
    from viewer.core.prune import Pruner

    lm = load_model("torch.nn:Linear", kwargs='{"in_features": 4, "out_features": 8}',
                    inputs=["2x4"])
    p = Pruner(lm.model, lm.inputs)
    plan = p.plan(0.0)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "out", lm.source)
    marker = tmp_path / "marker"
    doc = json.loads((out / "plan.json").read_text())
    doc["source"]["spec"] = spec
    doc["source"]["kwargs"] = json.loads(json.dumps(kwargs).replace("{marker}", str(marker)))
    (out / "plan.json").write_text(json.dumps(doc))
    for reload in (load_pruned, check_dir):
        with pytest.raises(DepViewError, match="not model code: refused") as info:
            reload(out)
        assert "\n" not in str(info.value)
    assert not marker.exists()
    # the user can say which code builds it (with the recorded factory kwargs)
    doc["source"]["kwargs"] = lm.source["kwargs"]
    (out / "plan.json").write_text(json.dumps(doc))
    again = load_pruned(out, spec="torch.nn:Linear")
    assert torch.equal(again.weight, lm.model.weight)
    assert check_dir(out, spec="torch.nn:Linear")["ok"]
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "viewer", "check", str(out), "--spec",
                          "torch.nn:Linear"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("OK: torch.nn:Linear"), res


def test_a_recorded_spec_may_be_a_model_class_instance_or_factory(tmp_path):
    from viewer.core.spec import recorded_refusal

    f = tmp_path / "mine.py"
    f.write_text("import torch\ndef make():\n    return torch.nn.Linear(2, 2)\n")
    assert recorded_refusal("demo:resnet") is None
    lm = load_model(f"{f}:make", inputs=["1x2"], recorded=True)
    assert isinstance(lm.model, nn.Linear)
    assert recorded_refusal("torch.nn:Linear", nn.Linear) is None
    assert recorded_refusal("demo_models:SmallCNN", nn.Linear(2, 2)) is None
    assert recorded_refusal("json:loads", __import__("json").loads)  # the standard library
    assert recorded_refusal("torch:load", torch.load)
    # an installed package's function is not called from plan.json, but a model zoo's is
    # (and DepView's demos' factories, wherever they are installed)
    sympy = pytest.importorskip("sympy")
    assert "not model code: refused" in recorded_refusal("sympy:sympify", sympy.sympify)
    from demo_models.cnn import build_cnn

    assert recorded_refusal("demo_models.cnn:build_cnn", build_cnn) is None


def test_a_model_file_that_imports_a_module_beside_it_loads_from_anywhere(tmp_path,
                                                                          monkeypatch):
    # `from blocks import Block` in proj/net.py failed unless run from proj/
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "blocks_depview_t.py").write_text(
        "import torch\nclass Block(torch.nn.Linear):\n    pass\n")
    (proj / "net.py").write_text(
        "import torch\nfrom blocks_depview_t import Block\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.a = Block(8, 4)\n"
        "    def forward(self, x):\n        return self.a(x)\n")
    monkeypatch.chdir(tmp_path)
    import sys

    before = list(sys.path)
    lm = load_model("proj/net.py:Net", inputs=["1x8"])
    assert type(lm.model.a).__name__ == "Block" and sys.path == before


def test_loading_a_model_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    load_model("demo:cnn")
    assert torch.equal(torch.rand(3), want)
    a, b = load_model("demo:cnn", seed=5), load_model("demo:cnn", seed=5)  # still seeded
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(),
                                                  b.model.state_dict().values(), strict=True))


def _hf_dir(tmp_path, name="gpt2"):
    """A tiny GPT-2 as ``save_pretrained`` writes it (config.json + model.safetensors)."""
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2,
                                             n_positions=32, bos_token_id=0, eos_token_id=0))
    model.save_pretrained(tmp_path / name)
    return model, tmp_path / name


def test_a_hugging_face_model_directory_loads_with_its_weights_and_inputs(tmp_path):
    model, folder = _hf_dir(tmp_path)
    lm = load_model(str(folder))
    assert type(lm.model) is type(model) and not lm.model.training
    sd = model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in lm.model.state_dict().items())
    assert [(tuple(x.shape), x.dtype) for x in lm.inputs] == [((1, 16), torch.int64)]
    assert lm.source["inputs"] == ["1x16:int64"] and lm.source["dir"] == str(folder.resolve())
    assert lm.description == "GPT2LMHeadModel from gpt2"
    lm.model(*lm.inputs)
    meta = load_model(str(folder), device="meta", inputs=["2x8:int64"])
    assert all(p.is_meta for p in meta.model.parameters()) and meta.inputs[0].shape == (2, 8)


def test_a_vision_model_directory_gets_an_image_of_its_configs_size(tmp_path):
    tf = pytest.importorskip("transformers")
    tf.ViTModel(tf.ViTConfig(image_size=24, patch_size=8, num_channels=2, hidden_size=16,
                             num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).save_pretrained(tmp_path / "vit")
    lm = load_model(str(tmp_path / "vit"))
    assert lm.inputs[0].shape == (1, 2, 24, 24) and lm.source["inputs"] == ["1x2x24x24:float32"]
    # a convnet's config gives no size: 224x224
    tf.ResNetModel(tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                   num_channels=1)).save_pretrained(tmp_path / "resnet")
    assert load_model(str(tmp_path / "resnet")).source["inputs"] == ["1x1x224x224:float32"]


def test_the_forward_that_guessed_a_directorys_inputs_leaves_no_eval_cache(tmp_path):
    # LeViT keeps attention_biases[:, idxs] per device once run in eval mode: the guessing
    # forward filled it, the trace read the cache, not the parameter, and every head group
    # was blocked ("the model's forward fails when this group shrinks")
    tf = pytest.importorskip("transformers")
    from viewer.core.prune import Pruner

    tf.LevitForImageClassification(tf.LevitConfig(
        image_size=32, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4],
        depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=4, patch_size=16,
    )).save_pretrained(tmp_path / "levit")
    lm = load_model(str(tmp_path / "levit"))
    attention = lm.model.levit.encoder.stages[0].layers[0].module
    assert type(attention).__name__ == "LevitAttention" and attention.attention_bias_cache == {}
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    heads = [g for g in p.groups if g.root.endswith("queries_keys_values.linear")]
    assert heads and all(not p.reason(g) for g in heads), [p.reason(g) for g in heads]
    plan = p.plan(0.5)
    assert p.verify(p.apply(plan), plan)["masked_equivalence"]["ok"]


def _edit_config(folder, **changes):
    import json

    data = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    (folder / "config.json").write_text(json.dumps(data))


def _drop_tensor(folder):
    from safetensors.torch import load_file, save_file

    sd = load_file(folder / "model.safetensors")
    sd.pop("transformer.ln_f.weight")
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("damage, options, msg", [
    (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"), {},
     "holds its weights as pytorch_model.bin, which DepView never loads"),
    (lambda f: (f / "model.safetensors").unlink(), {},
     r"holds no weights \(model.safetensors\); use --device meta"),
    (lambda f: _edit_config(f, architectures=None), {},
     'names no architecture: add "architectures"'),
    (lambda f: _edit_config(f, architectures=["os.system"]), {},
     "names 'os.system', which is not a model class of transformers"),
    (lambda f: (f / "config.json").write_text("{bad"), {}, "config.json is not valid JSON"),
    (lambda f: _edit_config(f, n_embd=8), {},
     r"do not fit its config.json: transformer.h.0.attn.c_attn.bias is 48 in the file, 24 by "
     r"the config \(16 tensors differ\)"),
    (_drop_tensor, {}, r"lack 1 of GPT2LMHeadModel's tensors \(transformer.ln_f.weight\): "
                       "they would be random"),
    (lambda f: None, {"kwargs": {"n_embd": 8}},
     r"a Hugging Face model directory: .* \(--kwargs cannot apply; edit its config.json"),
    (lambda f: (f / "config.json").unlink(), {},
     "is a directory but neither a Hugging Face model .no config.json. nor a DepView export"),
])
def test_a_broken_hugging_face_directory_is_one_line(tmp_path, damage, options, msg):
    _, folder = _hf_dir(tmp_path)
    damage(folder)
    with pytest.raises(DepViewError, match=msg) as err:
        load_model(str(folder), **options)
    assert "\n" not in str(err.value)


def test_a_directory_models_inputs_are_guessed_from_its_main_input_and_tried(tmp_path):
    tf = pytest.importorskip("transformers")
    tf.Wav2Vec2Model(tf.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_feat_extract_layers=2,
        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
    )).save_pretrained(tmp_path / "w2v")
    assert load_model(str(tmp_path / "w2v")).source["inputs"] == ["1x16000:float32"]
    assert load_model(str(tmp_path / "w2v"), inputs=["1x400"]).inputs[0].shape == (1, 400)
    # spectrograms: the Audio Spectrogram Transformer's (frames, mel bins), wav2vec2-BERT's
    # stacked frames (they said "did not run on ... input_values=1x16000" and "needs
    # example inputs")
    tf.ASTForAudioClassification(tf.ASTConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_length=32, num_mel_bins=16, num_labels=3)).save_pretrained(tmp_path / "ast")
    assert load_model(str(tmp_path / "ast")).source["inputs"] == ["1x32x16:float32"]
    tf.Wav2Vec2BertModel(tf.Wav2Vec2BertConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        output_hidden_size=16)).save_pretrained(tmp_path / "w2v-bert")
    assert load_model(str(tmp_path / "w2v-bert")).source["inputs"] == ["1x50x160:float32"]
    # CLIP reads text and images: the tokens alone fail, the tokens and an image run
    tf.CLIPModel(tf.CLIPConfig(
        text_config={"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 32,
                     "max_position_embeddings": 32},
        vision_config={"image_size": 16, "patch_size": 8, "hidden_size": 16,
                       "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 32},
        projection_dim=8)).save_pretrained(tmp_path / "clip")
    lm = load_model(str(tmp_path / "clip"))
    assert lm.source["inputs"] == ["input_ids=1x16:int64", "pixel_values=1x3x16x16:float32"]
    assert load_model(str(tmp_path / "clip"), device="meta").source["inputs"] == \
        lm.source["inputs"]
    # 16 tokens are more than this BERT's 8 positions: what was tried, and why it failed
    tf.BertModel(tf.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=8)).save_pretrained(tmp_path / "bert")
    with pytest.raises(DepViewError, match=r"bert: its BertModel did not run on the inputs "
                                           r"DepView tried \(input_ids=1x16:int64\): .*; pass "
                                           r"its inputs with --input NAME=SHAPE") as err:
        load_model(str(tmp_path / "bert"))
    assert "\n" not in str(err.value) and "or with --input-file FILE" in str(err.value)
    assert load_model(str(tmp_path / "bert"), inputs=["1x8:int64"]).inputs[0].shape == (1, 8)


@pytest.mark.parametrize("kind", ["video", "time-series", "speech2text"])
def test_a_video_time_series_or_filterbank_models_directory_gets_inputs_of_its_layout(
        tmp_path, kind):
    # VideoMAE reads (batch, frames, channels, height, width): the one image DepView tried
    # failed; PatchTST reads (batch, context_length steps, channels), Speech2Text (batch,
    # frames, features x channels): nothing was tried. The user had to find the shape
    tf = pytest.importorskip("transformers")
    if kind == "speech2text":
        model, expected = tf.Speech2TextForConditionalGeneration(tf.Speech2TextConfig(
            vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
            decoder_ffn_dim=32, input_feat_per_channel=20, max_source_positions=200,
        )), "input_features=1x64x20:float32"
    elif kind == "video":
        model, expected = tf.VideoMAEForVideoClassification(tf.VideoMAEConfig(
            image_size=16, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=16,
            num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3,
        )), "1x4x3x16x16:float32"
    else:
        model, expected = tf.PatchTSTForClassification(tf.PatchTSTConfig(
            context_length=16, patch_length=4, patch_stride=4, num_input_channels=2,
            d_model=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, num_targets=3,
        )), "1x16x2:float32"
    model.save_pretrained(tmp_path / kind)
    lm = load_model(str(tmp_path / kind))
    if kind == "speech2text":  # (an encoder-decoder: decoder ids too, by name)
        assert lm.source["inputs"] == [expected, "decoder_input_ids=1x16:int64"]
        assert lm.model(**lm.inputs).logits.shape == (1, 16, 50)
        return
    assert lm.source["inputs"] == [expected]
    assert [t.shape for _, t in flatten(lm.model(*lm.inputs))] == [(1, 3)]


def test_named_inputs_are_keyword_inputs_and_are_recorded_so(tmp_path):
    f = tmp_path / "two.py"
    f.write_text("import torch\nclass Two(torch.nn.Module):\n"
                 "    def __init__(self):\n        super().__init__()\n"
                 "        self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(2, 3)\n"
                 "    def forward(self, x=None, extra=None):\n"
                 "        return self.a(x) + self.b(extra)\n")
    lm = load_model(f"{f}:Two", inputs=["extra=1x2", "x=1x4"])
    assert list(lm.inputs) == ["extra", "x"] and lm.inputs["x"].shape == (1, 4)
    assert lm.source["inputs"] == ["extra=1x2:float32", "x=1x4:float32"]
    again = load_model(f"{f}:Two", inputs=lm.source["inputs"])  # (what a reload does)
    assert all(torch.equal(again.inputs[k], v) for k, v in lm.inputs.items())
    lm.model(**lm.inputs)
    for bad, msg in ((["x=1x4", "1x2"], "give every input a name .NAME=SHAPE. or none"),
                     (["x=1x4", "x=1x2"], "--input names 'x' twice"),
                     (["2x=1x4"], "'2x' is not an argument name"),
                     (["x=1x"], "expected a shape like")):
        with pytest.raises(DepViewError, match=msg):
            load_model(f"{f}:Two", inputs=bad)


def test_an_encoder_decoder_directory_gets_decoder_inputs_too(tmp_path):
    tf = pytest.importorskip("transformers")
    tf.T5ForConditionalGeneration(tf.T5Config(
        vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
        num_heads=2, decoder_start_token_id=0)).save_pretrained(tmp_path / "t5")
    lm = load_model(str(tmp_path / "t5"))
    assert lm.source["inputs"] == ["input_ids=1x16:int64", "decoder_input_ids=1x16:int64"]
    assert lm.model(**lm.inputs).logits.shape == (1, 16, 32)
    # Whisper: a spectrogram of the length its encoder's positions take, and decoder ids
    tf.WhisperForConditionalGeneration(tf.WhisperConfig(
        vocab_size=32, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=12, max_target_positions=32,
        decoder_start_token_id=0, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )).save_pretrained(tmp_path / "whisper")
    assert load_model(str(tmp_path / "whisper")).source["inputs"] == [
        "input_features=1x8x24:float32", "decoder_input_ids=1x16:int64"]


@pytest.mark.parametrize("data", [b"garbage\n", b"\x10\x00\x00\x00\x00\x00\x00\x00{",
                                  b""])
def test_a_directory_whose_weights_file_is_broken_is_one_line(tmp_path, data):
    # "garbage" read as a header length asked for 7e18 bytes: an unexpected MemoryError
    _, folder = _hf_dir(tmp_path)
    (folder / "model.safetensors").write_bytes(data)
    with pytest.raises(DepViewError, match=r"^loading .*gpt2 failed: \w+Error: "):
        load_model(str(folder))


def test_stored_dtype_is_one_half_precision_dtype_or_none():
    from viewer.core.spec import stored_dtype

    assert stored_dtype([torch.bfloat16, torch.int64]) == "bfloat16"
    assert stored_dtype(["float16", "int64"]) == "float16"
    for none in ([torch.float32], [torch.bfloat16, torch.float32], [torch.int64], []):
        assert stored_dtype(none) is None


def test_a_directory_too_large_for_free_memory_is_refused_before_loading(tmp_path,
                                                                           monkeypatch):
    from viewer.core import memory

    _, folder = _hf_dir(tmp_path)
    size = sum(p.numel() for p in load_model(str(folder)).model.state_dict().values()) * 4
    assert memory.available_memory() > size  # (this machine's, read for real)
    monkeypatch.setattr(memory, "available_memory", lambda: size // 10)
    with pytest.raises(DepViewError, match=r"gpt2 as float32 needs about 0.0 GB and this "
                                           r"machine has 0.0 GB free: use --device meta"):
        load_model(str(folder))
    assert all(p.is_meta for p in load_model(str(folder), device="meta").model.parameters())


def test_input_file_gives_the_example_inputs_themselves(tmp_path):
    from safetensors.torch import save_file

    ids = torch.randint(0, 50, (2, 5))
    save_file({"input_ids": ids, "attention_mask": torch.ones(2, 5, dtype=torch.int64)},
              str(tmp_path / "x.safetensors"))
    _, folder = _hf_dir(tmp_path)
    lm = load_model(str(folder), input_file=str(tmp_path / "x.safetensors"))
    assert list(lm.inputs) == ["attention_mask", "input_ids"]  # (safetensors sorts its keys)
    assert torch.equal(lm.inputs["input_ids"], ids)  # not guessed: these
    assert lm.source["inputs"] == ["attention_mask=2x5:int64", "input_ids=2x5:int64"]
    assert lm.source["input_file"] == str((tmp_path / "x.safetensors").resolve())
    torch.save([torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)], tmp_path / "x.pt")
    meta = load_model("demo:cnn", input_file=str(tmp_path / "x.pt"), device="meta")
    # (a half-precision image runs as float32, as the model does)
    assert meta.inputs[0].is_meta and meta.source["inputs"] == ["1x3x32x32:float32"]


@pytest.mark.parametrize("make, msg", [
    (None, r"^input file not found: .*nope"),
    (lambda f: f.write_bytes(b"hello"), r"is neither a \.safetensors file nor"),
    (lambda f: torch.save({"0": torch.zeros(0, 3)}, f), r"input 0 is empty"),
])
def test_a_bad_input_file_is_one_line(tmp_path, make, msg):
    f = tmp_path / "nope.pt"
    if make:
        make(f)
    with pytest.raises(DepViewError, match=msg):
        load_model("demo:cnn", input_file=str(f))
    with pytest.raises(DepViewError, match="--input and --input-file both give the example "):
        load_model("demo:cnn", input_file=str(f), inputs=["1x3x32x32"])


def test_dtype_runs_the_model_and_its_floating_inputs_in_half_precision(tmp_path):
    lm = load_model("demo:cnn", dtype="bfloat16")
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert lm.inputs[0].dtype == torch.bfloat16 and lm.source["run_dtype"] == "bfloat16"
    assert lm.description.endswith(" (run in bfloat16)")  # (the app's header says so)
    assert "run_dtype" not in load_model("demo:cnn").source  # (float32: as before)
    ids = load_model("demo:llama", dtype="float16")
    assert ids.inputs[0].dtype == torch.int64  # (token ids stay integers)
    meta = load_model("demo:cnn", dtype="float16", device="meta")
    assert next(meta.model.parameters()).dtype == torch.float16
    with pytest.raises(DepViewError, match="unsupported dtype 'int8': use float32, bfloat16"):
        load_model("demo:cnn", dtype="int8")


def test_a_directory_too_large_as_float32_suggests_half_precision(tmp_path, monkeypatch):
    from viewer.core import memory

    _, folder = _hf_dir(tmp_path)
    lm = load_model(str(folder), dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    size = sum(p.numel() for p in lm.model.state_dict().values())
    monkeypatch.setattr(memory, "available_memory", lambda: size * 3)  # (2 bytes: fits)
    with pytest.raises(DepViewError, match=r"as float32 needs about .*--device meta .*, or "
                                           r"--dtype bfloat16 to hold it in half the memory"):
        load_model(str(folder))
    load_model(str(folder), dtype="bfloat16")


def test_lazy_layers_are_initialised_by_one_seeded_forward(tmp_path):
    # a lazy model's weights were drawn at its first forward, outside the seeded build, so a
    # rebuild from the spec (check, load_pruned) drew others, and the rebuilt original read
    # uninitialised parameters ("Attempted to use an uninitialized parameter")
    f = tmp_path / "lazy.py"
    f.write_text(LAZY_FILE)
    one, two = (load_model(f"{f}:M", inputs=["2x10"]) for _ in range(2))
    assert type(one.model.a) is torch.nn.Linear and one.model.a.weight.shape == (16, 10)
    assert torch.equal(one.model.a.weight, two.model.a.weight)
    assert torch.equal(one.model.b.bias, two.model.b.bias)
    with pytest.raises(DepViewError, match=r"^model forward failed \(it is run once to "
                                           r"initialise the model's lazy layers\): "):
        load_model(f"{f}:M", inputs=["2x3x4:int64"])


def test_an_example_input_too_large_to_run_is_refused_before_it_is_made(monkeypatch):
    # 1x3x30000x30000 took a minute and 21 GB before the forward failed; one in a plan.json
    # got check killed for want of memory
    from viewer.core import memory

    with pytest.raises(DepViewError, match="more elements than a tensor can hold"):
        load_model("demo:cnn", inputs=["99999999999999999999x3"])
    monkeypatch.setattr(memory, "available_memory", lambda: 2**30)  # 1 GB free
    with pytest.raises(DepViewError, match=r"input of shape 1x3x8000x8000 \(float32\): it "
                                           r"takes 0\.7 GB, .* this machine has 1\.0 GB free"):
        load_model("demo:cnn", inputs=["1x3x8000x8000"])
    assert load_model("demo:cnn", inputs=["1x3x32x32"]).inputs[0].shape == (1, 3, 32, 32)


def test_a_weights_index_naming_a_missing_shard_says_which(tmp_path):
    # from_pretrained failed with "KeyError: 'metadata'"
    import json

    transformers = pytest.importorskip("transformers")
    d = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)).save_pretrained(d)
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(DepViewError, match="weights index names model-00001-of-00002."
                                           "safetensors, which is not in the directory"):
        load_model(str(d))


def test_a_directory_given_as_a_weights_or_batch_file_is_said_to_be_one(tmp_path):
    with pytest.raises(DepViewError, match=f"weights file {tmp_path} is a directory"):
        read_state_dict(tmp_path)
    with pytest.raises(DepViewError, match=f"batch file {tmp_path} is a directory"):
        read_batch(tmp_path)


@pytest.mark.parametrize("changes, says", [
    # n_layer 100000 beside one layer's weights built for minutes, then failed for the
    # tensors the weights lack
    ({"n_layer": 100000}, r"config.json asks for n_layer=100000, but the weights beside it "
                          r"hold 1 numbered block \(4,624 parameters\): it would build far "
                          r"more than they hold \(is n_layer a typo"),
    # as wide: a real model of 200M parameters allocated before its sizes were compared
    ({"n_embd": 4096}, r"config.json describes a GPT2LMHeadModel of 201,723,904 parameters, "
                       r"but the weights beside it hold 4,624: it would build far more"),
])
def test_a_config_that_would_build_far_more_than_its_weights_is_refused_unbuilt(
        tmp_path, monkeypatch, changes, says):
    tf = pytest.importorskip("transformers")
    _, folder = _hf_dir(tmp_path)
    _edit_config(folder, **changes)

    def never(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(tf.GPT2LMHeadModel, "from_pretrained", never)
    with pytest.raises(DepViewError, match=says) as err:
        load_model(str(folder))
    assert "\n" not in str(err.value)
    if "n_embd" in changes:  # without weights to compare with it builds as it says (on meta)
        meta = load_model(str(folder), device="meta", inputs=["1x4:int64"]).model
        assert meta.transformer.wte.weight.shape == (50, 4096)


def test_sharded_tied_and_shared_weights_are_not_taken_for_a_config_too_large(tmp_path):
    tf = pytest.importorskip("transformers")
    from viewer.core.spec import numbered_blocks

    assert numbered_blocks(["h.0.w", "h.1.w", "h.1.mlp.0.w", "wte"]) == 2
    assert numbered_blocks(["h.99999.w"]) == 1  # (one block, whatever its number)
    torch.manual_seed(0)
    # GPT-2's head is its embedding (stored once), its causal mask a buffer not stored,
    # and its weights in shards with their index
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=50, n_embd=16, n_layer=3, n_head=2,
                                            n_positions=32, bos_token_id=0, eos_token_id=0))
    gpt2.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    # ALBERT's 12 layers share the weights of one
    albert = tf.AlbertModel(tf.AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16,
                                            num_hidden_layers=12, num_attention_heads=2,
                                            intermediate_size=32, max_position_embeddings=32))
    albert.save_pretrained(tmp_path / "albert")
    for model, name in ((gpt2, "sharded"), (albert, "albert")):
        sd = model.state_dict()
        lm = load_model(str(tmp_path / name))
        assert all(torch.equal(v, sd[k]) for k, v in lm.model.state_dict().items())
