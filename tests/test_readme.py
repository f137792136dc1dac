"""The README's Python example runs as written (in a scratch directory)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "viewer.load_pruned" in code
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    model, pruned = scope["model"], scope["pruned"]
    assert (tmp_path / "out" / "plan.json").is_file()
    sd, ref = model.state_dict(), pruned.state_dict()
    assert sd.keys() == ref.keys() and all((sd[k] == ref[k]).all() for k in sd)
    assert "prunable" in capsys.readouterr().out
    # the second round reloads and checks as two rounds of the original
    from viewer.core.export import check_dir, load_pruned

    again = load_pruned(tmp_path / "out2")
    two = scope["p2"].apply(scope["plan2"])
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                  two.state_dict().values(), strict=True))
    res = check_dir(tmp_path / "out2")
    assert res["ok"] and not res["problems"], res
