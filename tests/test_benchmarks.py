"""The benchmark scripts still run (a smoke test: their figures are not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_core_runs_on_a_tiny_demo(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_core.py"),
                          "--models", "cnn", "--no-7b", "--reps", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "cnn" in res.stdout and "trace us/op" in res.stdout
    data = json.loads(out.read_text())
    (model,) = data["models"]
    assert model["n_nodes"] > 0 and set(model["times"]) >= {"forward", "build", "groups",
                                                              "plan", "apply", "export"}
    # the target ratios come from interleaved rounds, one per round
    assert set(model["ratios"]) == {"build_x_forward", "groups_x_build",
                                    "intercept_x_forward"}
    # the floor under the build: a forward seen through torch's hooks, doing nothing
    assert model["ratios"]["intercept_x_forward"] > 0 and "floor" in res.stdout
    assert len(model["all_times"]["forward"]) == len(model["all_times"]["build"]) >= 1


def test_bench_speedup_runs_on_a_tiny_demo(tmp_path):
    out = tmp_path / "speed.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_speedup.py"),
                          "--models", "cnn", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| cnn | 89.9k → " in res.stdout and "×** |" in res.stdout
    (row,) = json.loads(out.read_text())["models"]
    assert row["params"]["after"] < row["params"]["before"]
    assert set(row["timing"]) >= {"before_ms", "after_ms", "speedup"}


def test_bench_core_refuses_an_unknown_model():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_core.py"),
                          "--models", "cnn,nope", "--no-7b"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2 and "unknown model(s) nope; choose from cnn," in res.stderr


def test_bench_browser_has_a_working_cli():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_browser.py"), "--help"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0 and "--models" in res.stdout


def test_hf_sweep_runs_on_two_models_and_refuses_an_unknown_one(tmp_path):
    import pytest

    pytest.importorskip("transformers")
    out = tmp_path / "sweep.json"
    script = str(ROOT / "benchmarks" / "hf_sweep.py")
    res = subprocess.run([sys.executable, script, "--models", "gpt2,mamba2", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["gpt2", "mamba2"]
    assert all(r["reload_equal"] and r["check_ok"] for r in rows), rows
    assert "from_pretrained_equal" in rows[0]  # GPT-2's config fits; Mamba2's does not
    assert "2/2 reload bit-exact" in res.stdout
    res = subprocess.run([sys.executable, script, "--models", "nope"], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 2 and "unknown model(s) nope" in res.stderr
    # the same model saved as bfloat16 and loaded as a directory: its inputs guessed, its
    # export bfloat16, from_pretrained's weights those of the reload
    res = subprocess.run([sys.executable, script, "--models", "gpt2", "--from-dir", "bfloat16",
                          "--json", str(out)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["inputs"] == ["1x16:int64"] and row["written"] == "bfloat16", row
    assert row["reload_equal"] and row["check_ok"] and row["from_pretrained_equal"], row
    # and run in bfloat16 (prune --dtype bfloat16): the same, with masked equivalence
    res = subprocess.run([sys.executable, script, "--models", "gpt2", "--from-dir", "float32",
                          "--dtype", "bfloat16", "--json", str(out)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["written"] == "bfloat16" and row["masked"] == "ok", row
    assert row["reload_equal"] and row["check_ok"] and row["from_pretrained_equal"], row
    res = subprocess.run([sys.executable, script, "--dtype", "bfloat16"], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 2 and "--dtype needs --from-dir" in res.stderr


def test_type_sweep_runs_on_two_types_compares_and_refuses_an_unknown_one(tmp_path):
    import pytest

    pytest.importorskip("transformers")
    script = str(ROOT / "benchmarks" / "type_sweep.py")
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    res = subprocess.run([sys.executable, script, "--types", "llama,falcon", "--json",
                          str(first)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(first.read_text())
    assert set(rows) == {"llama", "falcon"} and all(
        r["prunable"] > 0 and r["masked"] in ("ok", "exact ok") for r in rows.values()), rows
    assert "2/2 built and pruned" in res.stdout
    # a row that differs from the earlier file is printed
    rows["llama"]["removed"] += 1
    first.write_text(json.dumps(rows))
    res = subprocess.run([sys.executable, script, "--types", "llama", "--json", str(second),
                          "--compare", str(first)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0 and "changed llama:" in res.stdout
    assert "1 of 1 compared rows changed" in res.stdout
    res = subprocess.run([sys.executable, script, "--types", "nope"], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 2 and "unknown model type(s) nope" in res.stderr
    # another task: its own auto class, config keys (Swin's lists per stage) and inputs
    res = subprocess.run([sys.executable, script, "--task", "image-classification", "--types",
                          "swin,t5"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 2 and "unknown model type(s) t5" in res.stderr
    res = subprocess.run([sys.executable, script, "--task", "image-classification", "--types",
                          "swin", "--json", str(first)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    swin = json.loads(first.read_text())["swin"]
    assert swin["prunable"] > 0 and swin["masked"] in ("ok", "exact ok"), swin
    # a type past its time is a row that says so: Perceiver's image classifier takes half a
    # minute even at the sweep's small sizes (a timeout raised inside validation was
    # swallowed, and it ran on)
    res = subprocess.run([sys.executable, script, "--task", "image-classification", "--types",
                          "perceiver", "--seconds", "2", "--json", str(first)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads(first.read_text())["perceiver"]
    assert row["error"] == "timeout after 2 s" and row["stage"] in ("config", "inputs",
                                                                    "DepView"), row
    # a vision-language model given an image and its tokens: LLaVA counts its features in
    # numbers ("tokens: 512, features: 512" for 16 image tokens of a 32-wide model)
    res = subprocess.run([sys.executable, script, "--task", "image-text-to-text", "--types",
                          "llava", "--json", str(first)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    llava = json.loads(first.read_text())["llava"]
    assert llava.get("prunable", 0) > 0 and llava["masked"] in ("ok", "exact ok"), llava
    assert "in DepView 0" in res.stdout


def test_type_sweep_rows_say_where_a_type_stopped():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import type_sweep
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert type_sweep._line("x", {"error": "E: no", "stage": "inputs"}).endswith(
        "error (inputs): E: no")
    assert type_sweep._line("x", {"error": "E: no"}).endswith("error: E: no")  # (older runs)


def test_fuzz_checks_a_few_random_nets(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import fuzz
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "fuzz.json"
    # (every net exported and reloaded, and pruned a second time: those paths run too)
    assert fuzz.main(["--seeds", "1-3", "--quiet", "--export-p", "1", "--second-p", "1",
                      "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["seeds"] == [1, 2, 3] and isinstance(data["findings"], list)
    counts = data["counts"]
    assert counts["nets"] + counts["discarded"] == 3 and counts["nets"] >= 2, counts
    assert counts["prunable"] > 0 and counts["plans"] > 0 and counts["exact_checked"] > 0
    assert counts["exports"] > 0
    for f in data["findings"]:  # (what a finding holds, whatever was found)
        assert {"seed", "what", "ops", "group", "plan", "detail"} <= set(f), f
    # the same seed gives the same net; the vocabulary can be narrowed
    assert fuzz.generate(5).lines == fuzz.generate(5).lines
    net = fuzz.generate(5, "conv,relu,add")
    assert set(net.ops_used) <= {"conv", "relu", "add", "branch"}, net.ops_used
