"""The CLI as a user runs it: a real subprocess, JSON on stdout, one-line errors, exit 2."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LAZY_FILE, TWO_OUTPUTS_FILE, MaskedLogits


def cli(*args, check=True, cwd=None):
    """``python -m viewer ARGS`` (from ``cwd``: the package found from the repository)."""
    env = None if cwd is None else {
        **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
            str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-m", "viewer", *args], capture_output=True, text=True,
                         timeout=300, cwd=cwd, env=env)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_graph_json_schema():
    out = json.loads(cli("graph", "demo:densenet", "--json", "-").stdout)
    assert set(out) >= {"nodes", "edges", "info", "op_types"}
    node = next(n for n in out["nodes"] if n["op_type"] == "concat")
    assert set(node) >= {"id", "name", "op_type", "module", "meta", "in_shapes", "out_shapes"}
    assert node["meta"]["kind"] == "concat" and node["meta"]["offsets"][0] == 0
    assert set(out["edges"][0]) >= {"source", "target", "shape"}


def test_demos_lists_every_demo():
    import demo_models

    rows = json.loads(cli("demos", "--json", "-").stdout)["demos"]
    assert [r["name"] for r in rows] == list(demo_models.DEMOS)


def test_groups_prune_check(tmp_path):
    groups = json.loads(cli("groups", "demo:resnet", "--json", "-").stdout)["groups"]
    g = groups[0]
    assert set(g) >= {"root", "channels", "members", "prunable", "reason", "sets"}
    assert set(g["members"][0]) == {"node", "module", "side", "indices", "op_type", "dim",
                                    "width"}
    assert any(not x["prunable"] and x["reason"] for x in groups)
    res = cli("prune", "demo:resnet", "--ratio", "0.5", "--importance", "l2", "--round-to", "4",
              "--out", str(tmp_path / "out"))
    assert "params" in res.stdout
    assert json.loads(cli("check", str(tmp_path / "out"), "--json", "-").stdout)["ok"]


@pytest.mark.parametrize("args, msg", [
    (["prune", "demo:cnn", "--ratio", "1.5", "--out", "x"], "must be in [0, 1)"),
    (["graph", "demo:nope", "--json", "-"], "unknown demo model"),
    (["graph", "no/such/file.py:M", "--json", "-"], "model file not found"),
    (["graph", "torch.nn:Linear", "--kwargs", '{"in_features": 4, "out_features": 2}',
      "--input", "1x5", "--json", "-"], "model forward failed"),
    (["check", "/nonexistent/dir"], "no such directory: /nonexistent/dir"),
    (["prune", "demo:cnn", "--ratio", "0.5", "--ignore", "fc9", "--out", "x"],
     "ignore names no layer of this model: 'fc9'"),
    (["groups", "demo:cnn", "--ignore", "nosuch:in", "--json", "-"], "names no layer"),
    (["groups", "demo:cnn", "--ignore", "fc:sideways", "--json", "-"],
     "ignore 'fc:sideways': unknown side 'sideways' (use fc:in, fc:out, fc:cell for an "
     "LSTM's cell units, or fc for all)"),
    (["graph", "demo:cnn", "--input", "100000x100000x100000", "--json", "-"],
     "cannot make an example input of shape 100000x100000x100000 (float32)"),
    (["graph", "demo:cnn", "--input", "(1,3,32,32", "--json", "-"],
     "bad --input '(1,3,32,32': expected a shape like 1x3x224x224"),
    (["graph", "demo:cnn", "--input", "1x3x32x32:", "--json", "-"],
     "bad --input '1x3x32x32:': nothing after ':'"),
    (["prune", "demo:cnn", "--ratio", "0.5", "--override", "99=0.2", "--out", "x"],
     "override names no group: 99"),
    (["prune", "demo:cnn", "--ratio", "0.5", "--override", "features.99=0.2", "--out", "x"],
     "override names no layer of this model: 'features.99'"),
    (["prune", "demo:cnn", "--ratio", "0.5", "--override", "=0.2", "--out", "x"],
     "bad --override '=0.2': give a group id or a layer name before '='"),
    (["prune", "demo:cnn", "--ratio", "0.5", "--override", "features=half", "--out", "x"],
     "bad --override 'features=half': use GROUP_ID=RATIO or NAME=RATIO"),
    (["prune", "demo:cnn", "--ratio", "0.5", "--batch", "b.pt", "--out", "x"],
     "--batch feeds the Taylor and usage importances"),
    (["prune", "demo:cnn", "--ratio", "0.5", "--importance", "taylor", "--batch", "none.pt",
      "--out", "x"], "batch file not found"),
])
def test_bad_input_is_one_line_exit_2(args, msg):
    res = cli(*args, check=False)
    assert res.returncode == 2
    assert msg in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr


def test_usage_scores_count_the_experts_a_batch_picks(tmp_path):
    from safetensors.torch import save_file

    batch = tmp_path / "tokens.safetensors"
    save_file({"0": torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(3))},
              str(batch))
    made_up = cli("prune", "demo:moe", "--ratio", "0.5", "--importance", "usage", "--out",
                  str(tmp_path / "a")).stdout
    assert "(usage: 5 groups have no router picking their units and were scored by L1)" \
        in made_up and "(usage: scored on the example inputs, not real data" in made_up
    real = cli("prune", "demo:moe", "--ratio", "0.5", "--importance", "usage", "--batch",
               str(batch), "--out", str(tmp_path / "b")).stdout
    assert "not real data" not in real
    plans = [json.loads((tmp_path / d / "plan.json").read_text())["rounds"][0]["plan"]
             for d in "ab"]
    assert plans[0]["settings"]["batch"] == "example inputs"
    assert plans[1]["settings"]["batch"] == [[4, 16]]
    from safetensors.torch import load_file

    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model

    lm = load_model("demo:moe")  # the same plan in process, on the same tokens
    want = Pruner(lm.model, lm.inputs).plan(0.5, "usage", batch=(load_file(batch)["0"],))
    assert plans[1]["removed"] == {str(k): v for k, v in want.removed.items()}


def test_taylor_scores_come_from_the_batch_file(tmp_path):
    from safetensors.torch import save_file

    note = "(taylor: scored on the example inputs, not real data: give --batch FILE for " \
        "meaningful scores)"

    def kept(batch=None, inputs=()):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        extra = ["--batch", str(batch)] if batch else []
        res = cli("prune", "demo:cnn", "--ratio", "0.5", "--importance", "taylor", *extra,
                  *inputs, "--out", str(out))
        # the line says when the scores came from made-up inputs (not a batch, not a file)
        assert (note in res.stdout) == (not batch and not inputs), res.stdout
        plan = json.loads((out / "plan.json").read_text())
        return plan["tensors"], plan["rounds"][0]["plan"]["settings"]["batch"]

    g = torch.Generator().manual_seed(0)
    save_file({"0": torch.randn(8, 3, 32, 32, generator=g)}, str(tmp_path / "a.safetensors"))
    save_file({"0": torch.randn(8, 3, 32, 32, generator=g) * 4 + 2},
              str(tmp_path / "b.safetensors"))
    t0, s0 = kept()
    ta, sa = kept(tmp_path / "a.safetensors")
    tb, sb = kept(tmp_path / "b.safetensors")
    assert s0 == "example inputs" and sa == sb == [[8, 3, 32, 32]]
    kept(inputs=["--input-file", str(tmp_path / "a.safetensors")])  # real inputs: no note
    assert len({json.dumps(t, sort_keys=True) for t in (t0, ta, tb)}) == 3  # different scores
    save_file({"0": torch.randn(2, 5)}, str(tmp_path / "bad.safetensors"))
    res = cli("prune", "demo:cnn", "--ratio", "0.5", "--importance", "taylor", "--batch",
              str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "x"), check=False)
    assert res.returncode == 2 and "Taylor importance" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_json_path_that_cannot_be_written_and_empty_inputs_are_one_line(tmp_path):
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    for args, msg in [
        (["groups", "demo:nope", "--json", str(a_file / "g.json")], "is a file"),
        (["graph", "demo:nope", "--json", str(tmp_path)], "is a directory"),
        (["prune", "demo:resnet", "--input", "0x3x32x32", "--ratio", "0.5", "--out",
          str(tmp_path / "o")], "every size must be at least 1"),
    ]:
        res = cli(*args, check=False)
        assert res.returncode == 2 and msg in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    res = cli("demos", "--json", str(tmp_path / "d" / "demos.json"))
    assert res.stdout.strip().endswith("demos.json") and len(res.stdout.splitlines()) == 1
    assert json.loads((tmp_path / "d" / "demos.json").read_text())["demos"]


def test_an_out_dir_that_cannot_take_the_export_is_refused_before_any_work(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "plan.json").write_text("my plan")
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    for out, msg in [(mine, "holds plan.json that DepView did not write"),
                     (a_file, "is a file: the export needs a directory"),
                     (a_file / "sub", "cannot create"), ]:
        # an unknown model: the --out check comes first, before the model is built
        res = cli("prune", "demo:nope", "--ratio", "0.5", "--out", str(out), check=False)
        assert res.returncode == 2 and msg in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert (mine / "plan.json").read_text() == "my plan" and a_file.read_text() == "x"


def test_a_prune_that_removes_nothing_says_why(tmp_path):
    res = cli("prune", "torch.nn:Linear", "--kwargs", '{"in_features": 4, "out_features": 2}',
              "--input", "1x4", "--ratio", "0.5", "--out", str(tmp_path / "a"))
    assert len(res.stdout.strip().splitlines()) == 1
    assert "pruned 0 units in 0 groups" in res.stdout and "nothing could be pruned: 1 group left " \
        "alone; the first: it reaches the model output" in res.stdout
    res = cli("prune", "demo:cnn", "--ratio", "0", "--out", str(tmp_path / "b"))
    assert res.stdout.strip().endswith("(ratio 0)")
    res = cli("prune", "torch.nn:ReLU", "--input", "1x4", "--ratio", "0.5", "--out",
              str(tmp_path / "c"))  # (no groups at all: it said "0 groups left alone")
    assert res.stdout.strip().endswith("(nothing could be pruned: the model has no layer with "
                                       "channels to prune)")
    f = tmp_path / "scripted.py"  # the weights in a TorchScript submodule, which hides them
    f.write_text("import torch\nclass M(torch.nn.Module):\n    def __init__(self):\n"
                 "        super().__init__()\n"
                 "        self.inner = torch.jit.script(torch.nn.Linear(4, 2))\n"
                 "    def forward(self, x):\n        return self.inner(x)\n")
    res = cli("prune", f"{f}:M", "--input", "1x4", "--ratio", "0.5", "--out", str(tmp_path / "d"))
    assert res.stdout.strip().endswith("(nothing could be pruned: 1 group left alone; the first: "
                                       "'inner' is a TorchScript module, whose ops DepView cannot "
                                       "see: prune the eager module and script it afterwards; it "
                                       "reaches the model output 'output')"), res.stdout


def test_an_empty_spec_is_bad_input_not_the_current_directory(tmp_path):
    out = tmp_path / "e"  # run from inside an export directory, "" opened it
    cli("prune", "demo:cnn", "--ratio", "0.3", "--out", str(out))
    for command in (["graph", ""], ["groups", "  "], ["prune", "", "--ratio", "0.3", "--out",
                                                       str(tmp_path / "x")]):
        res = cli(*command, check=False, cwd=out)
        assert res.returncode == 2 and res.stderr.strip() == (
            "error: the model SPEC is empty: give demo:NAME, package.module:attr, "
            "path/file.py:attr or a model directory"), res.stderr


def test_json_on_stdout_is_json_alone_when_the_model_prints(tmp_path):
    f = tmp_path / "chatty.py"
    # (a subprocess the model runs, or C code's printf, writes to file descriptor 1, which
    # Python's redirect of sys.stdout does not reach)
    f.write_text("import os, torch\nclass M(torch.nn.Sequential):\n    def __init__(self):\n"
                 "        print('hello from init')\n        os.system('echo from a shell')\n"
                 "        os.write(1, b'a raw write\\n')\n"
                 "        super().__init__(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))\n"
                 "    def forward(self, x):\n        print('hello from forward')\n"
                 "        return super().forward(x)\n")
    for command in ("graph", "groups"):
        res = cli(command, f"{f}:M", "--input", "1x4", "--json", "-")
        assert json.loads(res.stdout), res.stdout  # (it began with the model's hellos)
        assert "hello from init" in res.stderr and "hello from forward" in res.stderr
        assert "from a shell" in res.stderr and "a raw write" in res.stderr


def _prune_file(tmp_path, text: str):
    """``prune model.py:make --input 2x8 --ratio 0.5 --out tmp_path/out`` of ``text``."""
    f = tmp_path / "model.py"
    f.write_text(text)
    return cli("prune", f"{f}:make", "--input", "2x8", "--ratio", "0.5", "--out",
               str(tmp_path / "out"), check=False)


def test_sigterm_ends_a_command_as_ctrl_c_does(tmp_path):
    # a job's time limit sends SIGTERM, which skipped the export's clean-up (its staging
    # directory stayed in --out); it now unwinds, exit status 128 + 15
    res = _prune_file(tmp_path, "import os, signal, torch\nclass M(torch.nn.Sequential):\n"
                      "    def __init__(self):\n        super().__init__(torch.nn.Linear(8, 16),"
                      " torch.nn.Linear(16, 4))\n    def forward(self, x):\n"
                      "        os.kill(os.getpid(), signal.SIGTERM)\n"
                      "        return super().forward(x)\nmake = M\n")
    assert res.returncode == 143, res.stderr


def test_json_never_overwrites_a_file_that_is_not_json(tmp_path):
    # `graph net.py:Net --json net.py` replaced the model's code; `check DIR --json
    # DIR/report.json` the export's report
    code = tmp_path / "net.py"
    code.write_text("print('mine')\n")
    res = cli("graph", "demo:cnn", "--json", str(code), check=False)
    assert res.returncode == 2 and "exists and is not a JSON file" in res.stderr
    assert code.read_text() == "print('mine')\n"
    out = tmp_path / "out"
    cli("prune", "demo:cnn", "--ratio", "0.5", "--out", str(out))
    report = (out / "report.json").read_text()
    res = cli("check", str(out), "--json", str(out / "report.json"), check=False)
    assert res.returncode == 2 and "is a file of the export" in res.stderr
    assert (out / "report.json").read_text() == report
    again = tmp_path / "check.json"  # a JSON file of its own: written, and written again
    for _ in range(2):
        res = cli("check", str(out), "--json", str(again))
        assert res.stdout.startswith("OK: demo:cnn reloaded") and \
            res.stdout.strip().endswith(f"-> {again}")  # (it printed nothing)
        assert json.loads(again.read_text())["ok"]


def test_a_quantized_model_is_a_one_line_error(tmp_path):
    # its export failed on the dtypes in its state_dict: "unexpected AttributeError"
    res = _prune_file(tmp_path, "import torch, warnings\nwarnings.simplefilter('ignore')\n"
                      "def make():\n    net = torch.nn.Sequential(torch.nn.Linear(8, 16), "
                      "torch.nn.ReLU(), torch.nn.Linear(16, 4))\n"
                      "    return torch.ao.quantization.quantize_dynamic(net.eval(), "
                      "{torch.nn.Linear}, dtype=torch.qint8)\n")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: '0' (Linear of torch.ao quantization) is quantized (int8 tensors, weights "
        "packed for int8 kernels), which DepView cannot prune: give the float model, and "
        "quantize it after pruning")
    assert not (tmp_path / "out").exists()


def test_unexpected_errors_are_one_line_too(tmp_path):
    f = tmp_path / "odd.py"
    f.write_text("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
                 "        return x\n")
    (tmp_path / "out").write_text("a file where a directory is expected")
    res = cli("prune", f"{f}:M", "--input", "1x4", "--ratio", "0.5", "--out",
              str(tmp_path / "out"), check=False)
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_groups_on_the_meta_device_are_validated_like_on_cpu():
    def reasons(*extra):
        rows = json.loads(cli("groups", "demo:slicing", "--no-indices", *extra,
                              "--json", "-").stdout)["groups"]
        return {g["root"]: g["reason"] for g in rows}

    meta = reasons("--device", "meta")
    # qkv and glu fail alone (both read self.channels) and are pruned together
    assert not meta["qkv"] and meta["glu"].startswith("pruned with group #1 ('qkv')")
    assert "tensor_split" in meta["conv_a.0"]
    # the same groups blocked for the same kind of reason; the error inside the brackets is
    # the kernel's, and a small model's validation may probe on real tensors (other wording)
    def kinds(found):
        return {root: why.split(" (")[0] for root, why in found.items()}

    assert kinds(meta) == kinds(reasons())


UNTRACED = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.aux = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.aux(h) if x.sum() > 1e9 else self.b(h)  # aux: a branch never taken
'''


def test_prune_warns_on_its_line_about_parameters_the_inputs_never_reached(tmp_path):
    (tmp_path / "net.py").write_text(UNTRACED)
    res = subprocess.run([sys.executable, "-m", "viewer", "prune", "net.py:Net", "--input",
                          "2x8", "--ratio", "0.5", "--out", "out"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 1
    assert "(warning: 2 parameter(s) never ran on the example inputs (aux.weight, aux.bias)" \
        in res.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verification"]["untraced"] == ["aux.weight", "aux.bias"]


def test_a_failed_masked_equivalence_is_said_by_prune_and_check_and_exits_1(tmp_path,
                                                                              monkeypatch,
                                                                              capsys):
    """A group DepView got wrong shows as a pruned model that runs but differs from the
    masked original: prune and check must not print their usual success."""
    from viewer.cli import main
    from viewer.core.prune import Pruner

    verify = Pruner.verify

    def wrong(self, pruned, plan, masked=True):  # as if a group were wrong
        with torch.no_grad():
            next(pruned.parameters()).add_(1.0)
        return verify(self, pruned, plan, masked)

    monkeypatch.setattr(Pruner, "verify", wrong)
    out = tmp_path / "out"
    assert main(["prune", "demo:cnn", "--ratio", "0.5", "--out", str(out)]) == 1
    line = capsys.readouterr().out
    assert line.startswith("pruned ") and "(masked equivalence FAILED: max |diff| " in line
    monkeypatch.undo()
    assert main(["check", str(out)]) == 1
    line = capsys.readouterr().out
    assert line.startswith("FAILED: demo:cnn reloaded, forward ran") and \
        "masked equivalence FAILED" in line


def test_check_says_on_its_line_which_check_failed(tmp_path, capsys):
    # the line said only "FAILED: ... forward ran, output shapes ..."
    from viewer.cli import main

    out = tmp_path / "out"
    assert main(["prune", "demo:cnn", "--ratio", "0.5", "--out", str(out)]) == 0
    capsys.readouterr()
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-9] ^= 0x40
    (out / "model.safetensors").write_bytes(bytes(data))
    assert main(["check", str(out)]) == 1
    line = capsys.readouterr().out
    assert line.startswith("FAILED: demo:cnn reloaded, forward ran")
    assert "(model.safetensors is not the file report.json describes (its SHA-256 " \
           "differs))" in line


def run_in(cwd, *args):
    return subprocess.run([sys.executable, "-m", "viewer", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


MASKED_LOGITS = "import torch\n\n\n" + inspect.getsource(MaskedLogits)


def test_every_json_the_cli_writes_is_strict_when_outputs_hold_inf(tmp_path):
    # -inf logits: report.json's digest and `check --json` held -Infinity (not JSON)
    (tmp_path / "mlog.py").write_text(MASKED_LOGITS)
    spec = ["mlog.py:MaskedLogits", "--input", "2x4"]
    graph = _strict(run_in(tmp_path, "graph", *spec, "--json", "-").stdout)
    assert "-Infinity" in json.dumps(graph)  # masked_fill's scalar, spelled as a string
    res = run_in(tmp_path, "prune", *spec, "--ratio", "0.5", "--out", "out")
    assert res.returncode == 0, res.stderr
    for f in ("plan.json", "report.json"):
        _strict((tmp_path / "out" / f).read_text())
    res = run_in(tmp_path, "check", "out", "--json", "-")
    assert res.returncode == 0, res.stderr
    checked = _strict(res.stdout)
    assert checked["ok"] and checked["outputs_match_report"] is True, checked


def test_check_compares_the_outputs_of_a_demo_with_integer_inputs(tmp_path):
    # rebuild drew the tokens in [0, 2) from source.inputs: "outputs not compared", exit 0
    out = str(tmp_path / "rnn")
    cli("prune", "demo:rnn", "--ratio", "0.3", "--out", out)
    res = json.loads(cli("check", out, "--json", "-").stdout)
    assert res["ok"] and res["outputs_match_report"] is True and not res["notes"], res


def test_a_prune_that_rounds_every_group_to_nothing_says_so(tmp_path):
    # it blamed the one group that reaches the output, the first of those left alone
    res = cli("prune", "demo:cnn", "--ratio", "0.01", "--out", str(tmp_path / "a"))
    line = res.stdout.strip()
    assert len(line.splitlines()) == 1 and "pruned 0 units in 0 groups" in line
    assert "(nothing pruned: every prunable group's share rounds to 0 units at ratio 0.01 " \
           "(4 prunable groups; 1 left alone): raise the ratio)" in line
    res = cli("prune", "demo:cnn", "--ratio", "0.5", "--round-to", "64", "--out",
              str(tmp_path / "b"))
    assert "rounds to 0 units at ratio 0.5 (round-to 64; 4 prunable groups; 1 left alone): " \
           "raise the ratio or lower --round-to)" in res.stdout
    assert "reaches the model output" not in res.stdout


def test_nothing_pruned_says_an_attention_groups_units_are_heads(tmp_path):
    # 20% of 4 heads rounds to 0 heads; "0 units" read as if 20% of the channels had
    res = cli("prune", "demo:llama", "--ratio", "0.2", "--ignore", "embed_tokens", "--ignore",
              "layers.0.mlp", "--ignore", "layers.1.mlp", "--out", str(tmp_path / "a"))
    assert "every prunable group's share rounds to 0 heads at ratio 0.2 (2 prunable groups; " \
           "4 left alone): raise the ratio)" in res.stdout
    res = cli("prune", "demo:llama", "--ratio", "0.2", "--round-to", "64", "--out",
              str(tmp_path / "b"))
    assert "rounds to 0 units (an attention group's units are heads) at ratio 0.2 " \
           "(round-to 64; 5 prunable groups; 1 left alone)" in res.stdout


def test_empty_paths_are_refused_not_taken_for_this_directory(tmp_path):
    # an unset $OUT: the export went into the current directory, exit 0
    for args, msg in [
        (["prune", "demo:cnn", "--ratio", "0.5", "--out", ""], "--out is empty"),
        (["graph", "demo:cnn", "--json", ""], "--json is empty"),
        (["check", ""], "check needs an export directory, got an empty path"),
    ]:
        res = run_in(tmp_path, *args)
        assert res.returncode == 2 and msg in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", ["99999999999999999999", "-1", "18446744073709551616"])
def test_a_seed_out_of_range_is_one_line_exit_2(seed):
    res = cli("graph", "demo:cnn", "--seed", seed, "--json", "-", check=False)
    assert res.returncode == 2, res.stderr
    assert f"bad --seed {seed}: use a whole number from 0 to 2**64 - 1" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_check_of_a_report_with_a_damaged_verification_is_one_line_exit_2(tmp_path):
    out = tmp_path / "out"
    cli("prune", "demo:cnn", "--ratio", "0.5", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    report["verification"]["masked_equivalence"] = "bad"
    (out / "report.json").write_text(json.dumps(report))
    res = cli("check", str(out), check=False)
    assert res.returncode == 2 and "report.json is damaged: 'verification.masked_equivalence' " \
        "must be an object" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_check_says_when_model_pt2_is_not_the_exports_and_refuses_a_huge_plan_json(tmp_path):
    out = tmp_path / "out"
    cli("prune", "demo:cnn", "--ratio", "0.5", "--out", str(out))
    assert json.loads((out / "report.json").read_text())["pt2"]["sha256"]
    pt2 = (out / "model.pt2").read_bytes()
    (out / "model.pt2").write_bytes(pt2[:100] + bytes([pt2[100] ^ 1]) + pt2[101:])
    res = cli("check", str(out), check=False)
    assert res.returncode == 1 and res.stdout.startswith("FAILED: demo:cnn reloaded") and \
        "(model.pt2 is not the file report.json describes (its SHA-256 differs))" in res.stdout
    res = json.loads(cli("check", str(out), "--json", "-", check=False).stdout)
    assert res["pt2_match_report"] is False and not res["ok"]
    # a plan.json of 2 GB (it took 4.4 GB of memory to read): one line, unread
    with open(out / "plan.json", "r+b") as f:  # (sparse: no disk, no time)
        f.truncate(2 << 30)
    res = cli("check", str(out), check=False)
    assert res.returncode == 2 and res.stderr.strip() == (
        f"error: {out / 'plan.json'} is 2.0 GB: more than the 256 MB a JSON file of this "
        "export may hold (the larger of 256 MB and the size of its model.safetensors); "
        "refused unread"), res.stderr


def test_check_of_a_missing_or_plain_directory_says_which(tmp_path):
    res = cli("check", str(tmp_path / "typo"), check=False)
    assert res.returncode == 2 and res.stderr.strip() == f"error: no such directory: " \
        f"{tmp_path / 'typo'}"
    res = cli("check", str(tmp_path), check=False)
    assert res.returncode == 2 and res.stderr.strip() == f"error: no plan.json in {tmp_path}: " \
        "not a DepView export directory"


def test_graph_and_groups_without_json_print_tables_of_what_the_json_holds():
    graph = json.loads(cli("graph", "demo:vit", "--json", "-").stdout)
    lines = cli("graph", "demo:vit").stdout.splitlines()
    assert lines[0] == f"VisionTransformer: {len(graph['nodes'])} ops, {len(graph['edges'])} edges"
    rows = [line.split() for line in lines[2:-1]]
    assert [(int(r[0]), r[1], r[2]) for r in rows] == [
        (n["id"], n["name"], n["op_type"]) for n in graph["nodes"]]
    conv = next(r for r in rows if r[1] == "patch_embed")
    assert conv[3:] == ["Conv2d", "1x32x8x8"]
    types = dict(t.rsplit(" ", 1) for t in lines[-1].removeprefix("types: ").split(", "))
    assert sum(map(int, types.values())) == len(graph["nodes"]) and types["mha"] == "2"
    groups = json.loads(cli("groups", "demo:vit", "--json", "-").stdout)["groups"]
    lines = cli("groups", "demo:vit").stdout.splitlines()
    assert lines[0].split() == ["id", "root", "units", "prunable", "members", "note"]
    assert lines[-1] == f"{len(groups)} groups, {sum(g['prunable'] for g in groups)} prunable"
    for g, line in zip(groups, lines[1:-1], strict=True):
        cells = line.split(None, 5)
        assert cells[:5] == [str(g["id"]), g["root"], str(g["channels"]),
                             "yes" if g["prunable"] else "no",
                             str(len({m["node"] for m in g["members"]}))]
        assert (g["reason"] or "") in (cells[5:] or [""])[0]
    assert "in multiples of 4 (attention heads)" in lines[1]
    # (nn.MultiheadAttention loses head dims, not heads: see README's known limits)
    assert not any(g["heads"] for g in groups)
    assert "it reaches the model output 'output'" in lines[-2]


def test_groups_of_a_router_say_how_many_experts_stay():
    res = cli("groups", "demo:moe", "--layer", "layers.1.mlp.router", "--json", "-")
    stream, g = json.loads(res.stdout)["groups"]  # its inputs' group, its outputs'
    assert stream["holds"] == ["in"] and g["holds"] == ["out"]
    assert g["root"] == "layers.1.mlp.router" and g["channels"] == 8 and g["prunable"]
    assert (g["min_kept"], g["min_kept_why"]) == (2, "'layers.1.mlp.topk' (topk) picks 2 of them")
    assert g["sets"] == ["layers.1.mlp.experts.n_experts"]
    assert {(m["node"], m["dim"]) for m in g["members"]} >= {
        ("layers.1.mlp.experts.gate_up", 0), ("layers.1.mlp.experts.down", 0)}
    line = cli("groups", "demo:moe", "--layer", "layers.1.mlp.router").stdout.splitlines()[2]
    assert "keeps at least 2 ('layers.1.mlp.topk' (topk) picks 2 of them)" in line


def test_groups_layer_keeps_the_groups_that_hold_its_channels():
    every = json.loads(cli("groups", "demo:resnet", "--no-indices", "--json", "-").stdout)[
        "groups"]
    out = json.loads(cli("groups", "demo:resnet", "--no-indices", "--layer", "fc", "--json",
                         "-").stdout)
    got = out["groups"]
    assert out["layer"] == "fc" and [g.pop("holds") for g in got] == [["in"], ["out"]]
    assert got == [g for g in every if any(m["module"] == "fc" for m in g["members"])]
    assert "layer" not in json.loads(cli("groups", "demo:resnet", "--no-indices", "--json",
                                         "-").stdout)
    lines = cli("groups", "demo:resnet", "--layer", "fc").stdout.splitlines()
    assert [line.split()[1] for line in lines[1:-1]] == [g["root"] for g in got]
    assert lines[-2].endswith("holds fc out; it reaches the model output 'output'")
    assert lines[1].endswith("holds fc in")
    res = cli("groups", "demo:resnet", "--layer", "fc9", check=False)
    assert res.returncode == 2 and res.stderr.startswith(
        "error: --layer names no layer of this model: 'fc9'")
    res = cli("groups", "demo:resnet", "--layer", " ", check=False)
    assert res.returncode == 2 and res.stderr.strip() == \
        "error: --layer is empty: give a layer or module name"


def test_sensitivity_lists_each_group_pruned_alone_least_sensitive_first(tmp_path):
    from safetensors.torch import save_file

    out = json.loads(cli("sensitivity", "demo:cnn", "--ratio", "0.25", "--json", "-").stdout)
    assert (out["ratio"], out["importance"], out["inputs"]) == (0.25, "l1", "example inputs")
    groups = json.loads(cli("groups", "demo:cnn", "--no-indices", "--json", "-").stdout)[
        "groups"]
    assert [r["id"] for r in out["groups"]] == [g["id"] for g in groups if g["prunable"]]
    assert all(r["removed"] == r["units"] // 4 and r["output_change"] > 0
               for r in out["groups"])
    lines = cli("sensitivity", "demo:cnn", "--ratio", "0.25").stdout.splitlines()
    assert lines[0].split() == ["id", "root", "units", "removed", "params", "removed", "output",
                                "change"]
    changes = [float(line.split()[-1]) for line in lines[1:-1]]
    assert changes == sorted(changes) and len(changes) == len(out["groups"])
    assert lines[-1].startswith("each group pruned alone at 0.25 (l1)")
    save_file({"0": torch.randn(1, 3, 32, 32)}, str(tmp_path / "x.safetensors"))
    res = cli("sensitivity", "demo:cnn", "--input-file", str(tmp_path / "x.safetensors"))
    assert "on the --input-file inputs;" in res.stdout.splitlines()[-1]
    res = cli("sensitivity", "demo:cnn", "--device", "meta", check=False)
    assert res.returncode == 2 and "sensitivity needs real weights" in res.stderr
    save_file({"0": torch.zeros(1, 5)}, str(tmp_path / "b.safetensors"))
    res = cli("sensitivity", "demo:cnn", "--batch", str(tmp_path / "b.safetensors"),
              check=False)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("error: the model's forward on the batch failed: ")


def test_the_groups_table_names_a_groups_side_when_it_is_not_the_outputs():
    from viewer.cli import groups_table

    row = {"id": 1, "root": "lstm", "root_side": "cell", "channels": 16, "prunable": True,
           "reason": "", "members": [{"node": "lstm"}], "multiple_of": 1, "exact": True,
           "sets": []}
    lines = groups_table([{**row, "id": 0, "root_side": "out", "channels": 6}, row,
                          {**row, "id": 2, "root": "attn.q", "root_side": "out",
                           "channels": 4, "heads": True}])
    assert lines.splitlines()[1].split()[:2] == ["0", "lstm"]
    assert lines.splitlines()[2].split()[:4] == ["1", "lstm", "(cell)", "16"]
    assert lines.splitlines()[3].split()[:4] == ["2", "attn.q", "4", "heads"]


def test_the_groups_table_says_why_a_group_is_inexact():
    # it printed "changes statistics over its channels" for any cause: a softmax, an
    # attention scale, a LocalResponseNorm
    from viewer.cli import groups_table
    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model

    lm = load_model("demo:vit")
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    rows = [g.to_dict(with_indices=False) | {"prunable": not p.reason(g), "reason": p.reason(g)}
            for g in p.groups]
    stream = next(r for r in rows if r["root"] == "patch_embed")
    assert not stream["exact"] and "'blocks.0.norm1' normalises over pruned channels" in \
        stream["inexact_why"]
    line = next(ln for ln in groups_table(rows).splitlines() if "patch_embed" in ln)
    assert f"inexact: {stream['inexact_why'][0]} (+{len(stream['inexact_why']) - 1} more)" \
        in line
    assert all(r["inexact_why"] == [] for r in rows if r["exact"])


def test_prune_with_time_puts_the_speed_up_in_its_line_and_report(tmp_path):
    res = run_in(tmp_path, "prune", "demo:cnn", "--ratio", "0.5", "--time", "--out", "out")
    assert res.returncode == 0, res.stderr
    t = json.loads((tmp_path / "out" / "report.json").read_text())["timing"]
    assert set(t) == {"before_ms", "after_ms", "speedup", "rounds", "runs_per_round",
                      "threads", "device"}
    # (fewer rounds than 7 when the machine is slow: timing.BUDGET_S)
    assert t["before_ms"] > 0 and t["after_ms"] > 0 and 3 <= t["rounds"] <= 7
    assert f"(forward {t['before_ms']:.3g} ms -> {t['after_ms']:.3g} ms on " \
           f"{t['threads']} thread" in res.stdout
    assert f"{t['speedup']:.2f}x as fast)" in res.stdout
    # without it, nothing is timed
    res = run_in(tmp_path, "prune", "demo:cnn", "--ratio", "0.5", "--out", "out2")
    assert "timing" not in json.loads((tmp_path / "out2" / "report.json").read_text())
    assert "as fast" not in res.stdout


def test_an_override_given_twice_for_one_group_is_refused(tmp_path):
    res = run_in(tmp_path, "prune", "demo:cnn", "--ratio", "0.5", "--override", "0=0.2",
                 "--override", "0=0.3", "--out", "out")
    assert res.returncode == 2
    assert res.stderr.strip() == "error: --override gives group 0 twice (0=0.2 and 0=0.3): " \
                                 "give each group once"
    assert list(tmp_path.iterdir()) == []
    res = run_in(tmp_path, "prune", "demo:cnn", "--ratio", "0.5", "--override", "features=0.2",
                 "--override", " features=0.3", "--out", "out")
    assert res.stderr.strip() == "error: --override gives 'features' twice (features=0.2 and  " \
                                 "features=0.3): give each name once"


def test_overrides_and_ignores_by_name_and_pattern_reach_plan_json(tmp_path):
    res = run_in(tmp_path, "prune", "demo:resnet", "--ratio", "0.25", "--override", "layer2=0.75",
                 "--override", "layer2.0.conv1=0.5", "--ignore", "*.downsample", "--out", "out")
    assert res.returncode == 0, res.stderr
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())["rounds"][0]["plan"]
    st = plan["settings"]
    assert st["ignore"] == ["layer2.0.downsample", "layer3.0.downsample"]
    assert st["override_names"] == {"layer2": 0.75, "layer2.0.conv1": 0.5}
    groups = json.loads(run_in(tmp_path, "groups", "demo:resnet", "--no-indices", "--ignore",
                               "*.downsample", "--json", "-").stdout)["groups"]
    by_root = {g["root"]: g for g in groups}
    assert st["overrides"] == {str(by_root["layer2.0.conv1"]["id"]): 0.5,
                               str(by_root["layer2.1.conv1"]["id"]): 0.75}
    # the streams the downsample layers read (the stem's) and write (layer2.0.conv2's) are
    # ignored: not overridden
    for root in ("conv1", "layer2.0.conv2"):
        assert "downsample" in by_root[root]["reason"] and not by_root[root]["prunable"]
    n = {g["id"]: g["channels"] for g in groups}
    assert {int(k): len(v) / n[int(k)] for k, v in plan["removed"].items()} == {
        by_root["layer1.0.conv1"]["id"]: 0.25,
        by_root["layer1.1.conv1"]["id"]: 0.25, by_root["layer2.0.conv1"]["id"]: 0.5,
        by_root["layer2.1.conv1"]["id"]: 0.75, by_root["layer3.0.conv1"]["id"]: 0.25,
        by_root["layer3.1.conv1"]["id"]: 0.25}
    assert json.loads(cli("check", str(tmp_path / "out"), "--json", "-").stdout)["ok"]


BRANCHY = '''
import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.a, self.b, self.l2 = (nn.Linear(8, 32), nn.Linear(32, 32),
                                            nn.Linear(32, 32), nn.Linear(32, 4))

    def forward(self, x):
        h = torch.relu(self.l1(x))
        h = self.a(h) if x.sum() > 0 else self.b(h)
        return self.l2(torch.relu(h))
'''


def test_prune_prints_its_one_line_and_no_torch_log_line(tmp_path):
    # "W... symbolic_shapes.py:...] Unable to find user code corresponding to {u0}" from
    # torch.export's loggers went to stderr beside prune's line
    (tmp_path / "net.py").write_text(BRANCHY)
    res = run_in(tmp_path, "prune", "net.py:Branchy", "--input", "1x8", "--ratio", "0.5",
                 "--out", "out")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and len(res.stdout.strip().splitlines()) == 1


def test_prune_says_when_bn_importance_scored_groups_by_l1(tmp_path):
    res = cli("prune", "demo:cnn", "--ratio", "0.3", "--importance", "bn", "--out",
              str(tmp_path / "o"))
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert plan["rounds"][0]["plan"]["settings"]["scored_by_l1"] == [3]
    assert res.stdout.strip().endswith("(bn: 1 group has no norm layer and was scored by L1)")


def test_an_export_directory_prunes_again_as_a_second_round(tmp_path):
    # the CLI had no way to prune a pruned model again: a SPEC could not name an export
    import json

    from viewer.core.export import load_pruned

    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    cli("prune", "demo:resnet", "--ratio", "0.3", "--out", str(r1))
    line = cli("prune", str(r1), "--ratio", "0.3", "--out", str(r2)).stdout
    first = json.loads((r1 / "report.json").read_text())["params"]["after"]
    assert f"params {first:,} -> " in line  # round 2 starts from round 1's model
    plan = json.loads((r2 / "plan.json").read_text())
    assert len(plan["rounds"]) == 2 and plan["source"]["spec"] == "demo:resnet"
    assert cli("check", str(r2)).stdout.startswith("OK: demo:resnet")
    again = load_pruned(r2)
    assert sum(p.numel() for p in again.parameters()) == \
        json.loads((r2 / "report.json").read_text())["params"]["after"]
    res = cli("prune", str(r1), "--input", "1x3", "--ratio", "0.3", "--out",
              str(tmp_path / "r3"), check=False)
    assert res.returncode == 2 and "is an export directory" in res.stderr


def test_a_hugging_face_model_directory_prunes_and_reloads_from_elsewhere(tmp_path):
    tf = pytest.importorskip("transformers")
    from conftest import save_tiny_llama

    save_tiny_llama(tmp_path / "llama")
    res = run_in(tmp_path, "prune", "llama", "--ratio", "0.5", "--out", "out")
    assert res.returncode == 0, res.stderr
    assert "written to config.json" in res.stdout and res.stderr == ""  # (no transformers logs)
    loaded = subprocess.run([sys.executable, "-c", "import sys; from viewer.core.spec import "
                             "load_model; load_model('llama'); print(sorted(m for m in "
                             "sys.modules if m.split('.')[0] == 'diffusers'))"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert loaded.stdout == "[]\n", loaded.stderr  # (quieting diffusers' log imports it: 2 s)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # the relative spec is found at the directory prune recorded
    checked = json.loads(run_in(elsewhere, "check", "../out", "--json", "-").stdout)
    assert checked["ok"] and checked["tensors_match_original"] and checked["spec"] == "llama"
    from viewer.core.export import load_pruned

    pruned = load_pruned(tmp_path / "out")
    again = tf.LlamaForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():  # (from_pretrained maps the file: kernels may round the last bit
        # of unaligned weights differently, so equal to float32's precision, not bit-exact)
        torch.testing.assert_close(pruned(ids).logits, again(ids).logits, rtol=0, atol=1e-6)
    assert again.config.hidden_size < 32


def test_a_hub_model_loads_from_the_local_cache_only(tmp_path):
    tf = pytest.importorskip("transformers")
    def cached(repo, sub=""):  # a snapshot laid out as huggingface_hub lays it out
        snap = tmp_path / "cache" / f"models--acme--{repo}" / "snapshots" / "abc123"
        tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2,
                                         n_positions=32)).save_pretrained(snap / sub)
        (snap.parents[1] / "refs").mkdir()
        (snap.parents[1] / "refs" / "main").write_text("abc123")
        return snap

    snap = cached("tiny-gpt2")
    (cached("pipe", "text_encoder") / "model_index.json").write_text("{}")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "0"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "viewer", *args], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path, env=env)

    res = run("prune", "hf:acme/tiny-gpt2", "--ratio", "0.5", "--out", "out")
    assert res.returncode == 0 and "written to config.json" in res.stdout, res.stderr
    assert json.loads((tmp_path / "out" / "plan.json").read_text())["source"]["dir"] == \
        str(snap)
    assert json.loads(run("check", "out", "--json", "-").stdout)["ok"]
    for spec, msg in (("hf:acme/other", "hf:acme/other: not in the local Hugging Face cache "
                       "(DepView never downloads: fetch it first with `hf download "
                       "acme/other`, or give its directory)"),
                      ("hf:acme/tiny-gpt2@v2", "`hf download acme/tiny-gpt2 --revision v2`"),
                      ("hf:a//b", "'a//b' is not a repository id"),
                      ("hf:acme/pipe", "hf:acme/pipe is a diffusers pipeline: name one of its "
                                       "models, hf:acme/pipe/text_encoder")):
        res = run("graph", spec, "--json", "-")
        assert res.returncode == 2 and msg in res.stderr and res.stderr.count("\n") == 1
    assert run("graph", "hf:acme/pipe/text_encoder", "--json", "-").returncode == 0


def test_an_export_whose_model_directory_is_gone_says_where_it_looked(tmp_path):
    pytest.importorskip("transformers")
    from conftest import save_tiny_llama

    save_tiny_llama(tmp_path / "llama")
    assert run_in(tmp_path, "prune", "llama", "--ratio", "0.5", "--out", "out").returncode == 0
    (tmp_path / "llama").rename(tmp_path / "moved")
    res = run_in(tmp_path, "check", "out")
    assert res.returncode == 2 and res.stderr == (
        f"error: model directory not found: llama (looked in {tmp_path / 'llama'}, "
        f"{tmp_path / 'out' / 'llama'})\n")


EMBEDDING_MODEL = """
import torch

class E(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 16)
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 5)

    def forward(self, ids, scale):
        return self.fc2(torch.relu(self.fc1(self.emb(ids)))) * scale
"""


def test_input_file_prunes_on_real_data_and_the_export_keeps_it(tmp_path):
    # token ids over the whole vocabulary (--input 2x7:int64 draws 0 and 1 only): the
    # export holds them, so check reruns on them after the user's file is gone
    from safetensors.torch import load_file, save_file

    (tmp_path / "emb.py").write_text(EMBEDDING_MODEL)
    ids = torch.randint(0, 100, (2, 7))
    save_file({"0": ids, "1": torch.tensor([2.0])}, str(tmp_path / "x.safetensors"))
    out = tmp_path / "out"
    res = cli("prune", str(tmp_path / "emb.py") + ":E", "--input-file",
              str(tmp_path / "x.safetensors"), "--ratio", "0.5", "--out", str(out))
    assert res.stdout.startswith("pruned 24 units in 2 groups")
    plan = json.loads((out / "plan.json").read_text())
    assert plan["source"]["inputs"] == ["2x7:int64", "1:float32"]
    assert torch.equal(load_file(str(out / "inputs.safetensors"))["0"], ids)
    (tmp_path / "x.safetensors").unlink()
    res = run_in(tmp_path.parent, "check", str(out))
    assert res.stdout.startswith("OK: ") and "[2, 7, 5]" in res.stdout
    res = cli("prune", str(out), "--input-file", "x.pt", "--ratio", "0.5", "--out",
              str(tmp_path / "b"), check=False)
    assert res.returncode == 2 and "(--input-file cannot apply)" in res.stderr
    # a second round from the export keeps the copy too (it recorded no inputs, and neither
    # check nor load_pruned could rebuild it)
    cli("prune", str(out), "--ratio", "0.3", "--out", str(tmp_path / "r2"))
    assert torch.equal(load_file(str(tmp_path / "r2" / "inputs.safetensors"))["0"], ids)
    res = run_in(tmp_path.parent, "check", str(tmp_path / "r2"))
    assert res.stdout.startswith("OK: ") and "[2, 7, 5]" in res.stdout, res.stderr


def test_a_second_round_prunes_the_weights_tuned_since_the_first(tmp_path):
    # prune, fine-tune the pruned model in your own loop, prune again from the export with
    # the tuned weights: the usual iterative pruning (it said "--weights cannot apply")
    from safetensors.torch import load_file, save_file

    from viewer import load_pruned

    cli("prune", "demo:resnet", "--ratio", "0.5", "--out", str(tmp_path / "r1"))
    model = load_pruned(tmp_path / "r1")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tuned = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    res = run_in(tmp_path, "prune", "r1", "--weights", "tuned.safetensors", "--ratio", "0.3",
                 "--out", "r2")
    assert res.returncode == 0 and res.stdout.startswith("pruned "), res.stderr
    rounds = json.loads((tmp_path / "r2" / "plan.json").read_text())["rounds"]
    assert rounds[0]["tuned"] is True
    assert rounds[0]["tuned_weights"] == str(tmp_path / "tuned.safetensors")
    assert "tuned" not in rounds[1]
    # round 2's tensors are the tuned ones at its kept indices
    now = load_file(str(tmp_path / "r2" / "model.safetensors"))
    for key, dims in rounds[1]["tensors"].items():
        t = tuned[key]
        for dim, kept in dims.items():
            t = t.index_select(int(dim), torch.tensor(kept))
        assert torch.equal(now[key], t), key
    res = cli("check", str(tmp_path / "r2"))
    assert res.stdout.startswith("OK: ") and "tuned after pruning (round 1)" in res.stdout
    # --time: against the original, over both rounds, on this machine
    res = cli("check", str(tmp_path / "r2"), "--time", "--json", "-")
    t = json.loads(res.stdout)["timing"]
    assert 3 <= t["rounds"] <= 7 and t["before_ms"] > 0 and t["after_ms"] > 0
    res = cli("check", str(tmp_path / "r2"), "--time")
    assert res.stdout.startswith("OK: ") and "x as fast as the original)" in res.stdout
    assert "timing" not in json.loads(cli("check", str(tmp_path / "r2"), "--json", "-").stdout)
    # --ratio 0: the tuned model as an export, pruned no further
    res = run_in(tmp_path, "prune", "r1", "--weights", "tuned.safetensors", "--ratio", "0",
                 "--out", "r1t")
    assert res.stdout.startswith("pruned 0 units") and "(ratio 0)" in res.stdout
    assert load_file(str(tmp_path / "r1t" / "model.safetensors")).keys() == tuned.keys()
    assert all(torch.equal(t, tuned[k]) for k, t in
               load_file(str(tmp_path / "r1t" / "model.safetensors")).items())
    assert cli("check", str(tmp_path / "r1t")).stdout.startswith("OK: ")
    # the export's own weights are not tuned ones: the rounds stay checkable
    res = run_in(tmp_path, "prune", "r1", "--weights", "r1/model.safetensors", "--ratio",
                 "0.3", "--out", "same")
    rounds = json.loads((tmp_path / "same" / "plan.json").read_text())["rounds"]
    assert not any("tuned" in r for r in rounds)
    assert json.loads(cli("check", str(tmp_path / "same"), "--json", "-").stdout)[
        "tensors_match_original"]
    # weights of another model are one line
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    res = run_in(tmp_path, "prune", "r1", "--weights", "other.safetensors", "--ratio", "0.3",
                 "--out", "bad")
    assert res.returncode == 2 and res.stderr.startswith(
        "error: weights other.safetensors do not fit the model: missing [")
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_prune_in_bfloat16_writes_it_and_reloads_bit_exact(tmp_path):
    # a float32 checkpoint run in bfloat16 (half the memory): the export's weights and its
    # config.json are bfloat16, and load_pruned and from_pretrained give the same model
    transformers = pytest.importorskip("transformers")
    from conftest import save_tiny_llama
    from safetensors import safe_open

    from viewer import load_pruned

    folder = save_tiny_llama(tmp_path / "llama")
    out = tmp_path / "out"
    res = cli("prune", str(folder), "--dtype", "bfloat16", "--ratio", "0.5", "--out", str(out))
    assert res.stdout.startswith("pruned ") and "written to config.json" in res.stdout
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    report = json.loads((out / "report.json").read_text())
    assert report["dtype"] == {"written": "bfloat16"}
    assert json.loads((out / "plan.json").read_text())["source"]["run_dtype"] == "bfloat16"
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert cli("check", str(out)).stdout.startswith("OK: ")
    ours = load_pruned(out)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert next(ours.parameters()).dtype == theirs.dtype == torch.bfloat16
    x = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        assert torch.equal(ours(x).logits, theirs(x).logits)
    res = cli("prune", str(out), "--dtype", "bfloat16", "--ratio", "0.5", "--out",
              str(tmp_path / "b"), check=False)
    assert res.returncode == 2 and "(--dtype cannot apply)" in res.stderr


def test_no_room_to_run_the_pruned_model_is_said_as_memory_not_as_a_failure(tmp_path,
                                                                             monkeypatch,
                                                                             capsys):
    # it said "the pruned model fails to run: RuntimeError: DefaultCPUAllocator: ..." and
    # check "FAILED: ... forward failed": read as a pruning bug
    import viewer.core.export as export_mod
    import viewer.core.verify as verify_mod
    from viewer.cli import main

    def no_room_in(caller, real_run):
        def run(model, inputs):
            if sys._getframe(1).f_code.co_name == caller:
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                                   "allocate 1024 bytes.")
            return real_run(model, inputs)
        return run

    out = tmp_path / "out"
    monkeypatch.setattr(verify_mod, "run", no_room_in("verify", verify_mod.run))
    assert main(["prune", "demo:cnn", "--ratio", "0.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: not enough memory to run the pruned model (RuntimeError: "
                   "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1024 "
                   "bytes.); free memory and try again"), err
    assert not out.exists()
    monkeypatch.undo()
    assert main(["prune", "demo:cnn", "--ratio", "0.5", "--out", str(out)]) == 0
    capsys.readouterr()
    monkeypatch.setattr(export_mod, "run", no_room_in("_check", export_mod.run))
    assert main(["check", str(out)]) == 1
    line = capsys.readouterr().out
    assert line.startswith("NOT CHECKED: demo:cnn reloaded, forward could not run") and \
        "(there was not enough memory to run it (RuntimeError: DefaultCPUAllocator" in line
    assert "FAILED" not in line


LSTMP = '''import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 32, batch_first=True, proj_size=16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.lstm(x)[0][:, -1])
'''


def test_prune_ignores_an_lstms_outputs_and_says_its_cell_units_stayed_above_them(tmp_path):
    (tmp_path / "net.py").write_text(LSTMP)
    res = subprocess.run([sys.executable, "-m", "viewer", "prune", "net.py:Net", "--input",
                          "1x5x6", "--ratio", "0.5", "--ignore", "lstm:out", "--out", "out"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 1
    assert "(cell units kept above the projection's width, as an LSTM needs: 'lstm' 17)" \
        in res.stdout
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["rounds"][0]["plan"]["settings"]["ignore"] == ["lstm:out"]


def test_prune_frees_an_output_by_name_and_check_reloads_it(tmp_path):
    (tmp_path / "net.py").write_text(TWO_OUTPUTS_FILE)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "viewer", *args], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)

    res = run("prune", "net.py:Net", "--input", "1x3x6x6", "--ratio", "0.5", "--out", "a")
    assert res.returncode == 0 and "nothing" in res.stdout.lower(), res.stdout + res.stderr
    assert res.stdout.rstrip().endswith("(1 group is held only by the output features: "
                                        "--free-output NAME lets it prune, if its width may "
                                        "change)"), res.stdout
    res = run("prune", "net.py:Net", "--input", "1x3x6x6", "--ratio", "0.5",
              "--free-output", "features", "--out", "b")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("pruned 4 units in 1 group")
    plan = json.loads((tmp_path / "b" / "plan.json").read_text())
    assert plan["rounds"][0]["plan"]["settings"]["free_outputs"] == ["features"]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["output_shapes"] == {"logits": [1, 4], "features": [1, 4, 6, 6]}
    assert run("check", "b").returncode == 0
    res = run("groups", "net.py:Net", "--input", "1x3x6x6", "--json", "g.json")
    assert res.stdout.strip() == ("2 groups, 0 prunable -> g.json (1 group is held only by the "
                                  "output features: --free-output NAME lets it prune, if its "
                                  "width may change)"), res.stdout
    out = json.loads(run("groups", "net.py:Net", "--input", "1x3x6x6", "--free-output",
                         "features", "--json", "-").stdout)
    assert out["free_outputs"] == ["features"]
    assert out["groups"][0]["prunable"] and not out["groups"][1]["prunable"]
    bad = run("prune", "net.py:Net", "--input", "1x3x6x6", "--ratio", "0.5",
              "--free-output", "feats", "--out", "c")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "free output 'feats' is not an output of this model" in bad.stderr
    assert not (tmp_path / "c").exists()


def test_a_model_of_lazy_layers_prunes_and_checks(tmp_path):
    f = tmp_path / "lazy.py"
    f.write_text(LAZY_FILE)
    out = tmp_path / "out"
    res = cli("prune", f"{f}:M", "--input", "2x10", "--ratio", "0.5", "--out", str(out))
    assert res.stdout.startswith("pruned 8 units in 1 group: params 244 -> 124"), res.stdout
    res = cli("check", str(out))
    assert res.stdout.startswith("OK:"), res.stdout


DICT_ARG_FILE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.meta = nn.Conv2d(3, 8, 3), nn.Linear(6, 4)
        self.head = nn.Linear(12, 5)

    def forward(self, batch):
        f = self.conv(batch["image"]).mean((2, 3))
        return self.head(torch.cat([f, self.meta(batch["meta"])], 1))
"""


def test_a_forward_that_takes_a_dict_gets_its_keys_as_dotted_inputs(tmp_path):
    # forward(self, batch) reading batch["image"]: no --input could give it (NAME had to be
    # an identifier; a dict in a batch file was "does not hold a batch")
    from safetensors.torch import save_file

    (tmp_path / "net.py").write_text(DICT_ARG_FILE)
    save_file({"batch.image": torch.randn(2, 3, 8, 8), "batch.meta": torch.randn(2, 6)},
              str(tmp_path / "b.safetensors"))
    torch.save({"batch": {"image": torch.randn(2, 3, 8, 8), "meta": torch.randn(2, 6)}},
               tmp_path / "b.pt")
    (tmp_path / "elsewhere").mkdir()

    def run(*args, cwd=tmp_path):
        return subprocess.run([sys.executable, "-m", "viewer", *args], capture_output=True,
                              text=True, timeout=300, cwd=cwd)

    shapes = ["--input", "batch.image=1x3x8x8", "--input", "batch.meta=1x6"]
    for out, given in (("a", shapes), ("b", ["--input-file", "b.safetensors"]),
                       ("c", ["--input-file", "b.pt", "--importance", "taylor"]),
                       ("d", [*shapes, "--importance", "taylor", "--batch", "b.pt"])):
        res = run("prune", "net.py:Net", *given, "--ratio", "0.5", "--out", out)
        assert res.returncode == 0 and res.stdout.startswith("pruned 6 units in 2 groups"), \
            res.stdout + res.stderr
        res = run("check", str(tmp_path / out), cwd=tmp_path / "elsewhere")
        assert res.returncode == 0 and res.stdout.startswith("OK"), res.stdout + res.stderr
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert plan["source"]["inputs"] == ["batch.image=1x3x8x8:float32",
                                        "batch.meta=1x6:float32"]
    graph = json.loads(run("graph", "net.py:Net", *shapes, "--json", "-").stdout)
    assert [n["name"] for n in graph["nodes"] if n["op_type"] == "input"] == \
        ["batch.image", "batch.meta"]
    res = run("graph", "net.py:Net", "--input", "batch=1x6", "--input", "batch.image=1x3x8x8",
              "--json", "-")
    assert res.returncode == 2 and res.stderr.strip() == (
        "error: --input names 'batch' and 'batch.image': one input cannot be a tensor and "
        "hold another"), res.stderr
    torch.save({"batch": {"image": torch.zeros(0, 3, 8, 8)}}, tmp_path / "e.pt")
    res = run("graph", "net.py:Net", "--input-file", "e.pt", "--json", "-")
    assert "input batch.image is empty" in res.stderr, res.stderr
