"""Serve options: model options after a --model belong to it, before any --model to all."""

from __future__ import annotations

import argparse
import re

import pytest
import torch

from viewer.app.args import add_serve_arguments, entries_from_args
from viewer.app.state import ModelEntry, SessionStore
from viewer.core.errors import DepViewError


def _entries(argv: list[str]) -> list[ModelEntry]:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return entries_from_args(parser.parse_args(argv))


def test_options_after_a_model_apply_to_that_model_only():
    # a user's model with its input shape next to a demo that knows its own inputs
    e = _entries(["--model", "net.py:Net", "--input", "1x128:int64", "--input", "1x128:bool",
                  "--kwargs", '{"w": 2}', "--seed", "3", "--model", "demo:resnet",
                  "--model", "demo:llama", "--device", "meta", "--weights", "w.safetensors"])
    assert [x.spec for x in e] == ["net.py:Net", "demo:resnet", "demo:llama"]
    net, resnet, llama = e
    assert net.inputs == ("1x128:int64", "1x128:bool") and net.kwargs == '{"w": 2}'
    assert net.seed == 3 and net.device == "cpu" and net.weights is None
    assert resnet == ModelEntry("demo:resnet")  # nothing of the others leaked into it
    assert llama.device == "meta" and llama.weights == "w.safetensors" and llama.inputs == ()


def test_options_before_the_first_model_are_shared_and_can_be_overridden():
    e = _entries(["--input", "1x3x32x32", "--seed", "5", "--model", "a.py:A",
                  "--model", "b.py:B", "--input", "1x3x64x64", "--seed", "6"])
    assert [(x.inputs, x.seed) for x in e] == [(("1x3x32x32",), 5), (("1x3x64x64",), 6)]
    # no --model at all: the shared options are kept for a spec given another way
    ns = argparse.Namespace(model=["demo:vit"], input=["1x3x16x16"], kwargs="",
                            weights=None, device="cpu")  # a Namespace built by hand
    assert entries_from_args(ns)[0].inputs == ("1x3x16x16",)


def test_a_spec_given_twice():
    assert len(_entries(["--model", "demo:cnn", "--model", "demo:cnn"])) == 1
    with pytest.raises(DepViewError, match="given twice with different options"):
        _entries(["--model", "demo:cnn", "--model", "demo:cnn", "--seed", "1"])


def test_bad_option_values_are_refused_by_the_parser(capsys):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    for argv in (["--model", "demo:cnn", "--device", "cuda"], ["--seed", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert "invalid" in capsys.readouterr().err


def test_the_seed_reaches_the_weights_and_the_given_inputs():
    def built(seed, inputs=()):
        store = SessionStore([ModelEntry("demo:cnn", inputs=inputs, seed=seed)])
        base = store.base("demo:cnn")
        return base.inputs, dict(base.stage.model.state_dict())

    (x0, w0), (_, w0b), (x1, w1) = built(0), built(0), built(1)
    assert all(torch.equal(w0[k], w0b[k]) for k in w0)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0 if w0[k].is_floating_point())
    # a demo keeps its own example inputs; inputs given as shapes are drawn from the seed
    assert all(torch.equal(a, b) for a, b in zip(x0, x1, strict=True))
    (s0, _), (s1, _) = built(0, ("1x3x32x32",)), built(1, ("1x3x32x32",))
    assert not torch.equal(s0[0], s1[0])


def test_the_cli_serve_command_uses_the_same_options(monkeypatch):
    from viewer import cli
    from viewer.app import main

    seen = {}
    monkeypatch.setattr(main, "run", lambda **kw: seen.update(kw))
    assert cli.main(["serve", "--model", "net.py:Net", "--input", "1x8", "--model",
                     "demo:cnn"]) == 0
    assert [(m.spec, m.inputs) for m in seen["models"]] == [("net.py:Net", ("1x8",)),
                                                            ("demo:cnn", ())]


def test_a_bare_spec_opens_that_model(monkeypatch, capsys, tmp_path):
    from viewer import cli
    from viewer.app import main

    seen = {}
    monkeypatch.setattr(main, "run", lambda **kw: seen.update(kw))
    assert cli.main(["net.py:Net", "--input", "1x8", "--port", "9003"]) == 0
    assert [(m.spec, m.inputs) for m in seen["models"]] == [("net.py:Net", ("1x8",))]
    assert seen["port"] == 9003
    (tmp_path / "my-llama").mkdir()  # a model (or export) directory, with no colon
    assert cli.main([str(tmp_path / "my-llama")]) == 0
    assert [m.spec for m in seen["models"]] == [str(tmp_path / "my-llama")]
    # a path that is not there is still meant as a model: the load says it is not there
    assert cli.main([str(tmp_path / "my-lama")]) == 0
    assert [m.spec for m in seen["models"]] == [str(tmp_path / "my-lama")]
    with pytest.raises(SystemExit):  # a mistyped command is still an error, not a model
        cli.main(["prun", "demo:cnn"])
    assert "invalid choice: 'prun'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--model", "demo:cnn", "--seed", "-1"],
    ["--seed", "18446744073709551616", "--model", "demo:cnn"],  # 2**64, shared
    ["--model", "demo:cnn", "--model", "demo:vit", "--seed", "99999999999999999999"],
])
def test_a_seed_out_of_range_is_one_line_error(argv, monkeypatch, capsys):
    # the app's parser took any int: numpy refused a negative seed only when the model was
    # built, and `python -m viewer.app.main` started serving with one
    seed = argv[argv.index("--seed") + 1]
    said = f"bad --seed {seed}: use a whole number from 0 to 2**64 - 1"
    with pytest.raises(DepViewError, match=re.escape(said)):
        _entries(argv)
    from viewer import cli
    from viewer.app import main

    served = []
    monkeypatch.setattr(main, "run", lambda **kw: served.append(kw))
    for entry_point in (cli.main, main.main):  # python -m viewer, python -m viewer.app.main
        assert entry_point(argv) == 2 and not served
        assert capsys.readouterr().err == f"error: {said}\n"


def test_an_input_file_belongs_to_its_model_and_loads_its_inputs(tmp_path):
    from safetensors.torch import save_file

    from viewer.app.callbacks.model import load_entry

    save_file({"0": torch.randn(2, 3, 32, 32)}, str(tmp_path / "x.safetensors"))
    e = _entries(["--model", "demo:cnn", "--input-file", str(tmp_path / "x.safetensors"),
                  "--model", "demo:resnet"])
    assert e[0].input_file == str(tmp_path / "x.safetensors") and e[1].input_file is None
    assert _entries(["--model", "demo:cnn", "--dtype", "bfloat16"])[0].dtype == "bfloat16"
    store = SessionStore(e)
    load_entry(store, "sid", "demo:cnn")
    base = store.session("sid").base
    assert base.inputs[0].shape == (2, 3, 32, 32)  # (the demo's own is 1x3x32x32)
    assert base.source["inputs"] == ["2x3x32x32:float32"]


@pytest.mark.parametrize("port, why", [("99999", "must be from 1 to 65535, got 99999"),
                                       ("0", "must be from 1 to 65535, got 0"),
                                       ("http", "not a whole number: 'http'")])
def test_a_bad_port_is_one_line_before_any_model_loads(port, why, monkeypatch, capsys):
    # (Dash asserted it, after the model had loaded: "unexpected AssertionError")
    from viewer import cli
    from viewer.app import main

    monkeypatch.setattr(main, "run", lambda **kw: pytest.fail("the server started"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--model", "demo:cnn", "--port", port])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: argument --port: {why} (see 'python -m viewer serve --help')"]
