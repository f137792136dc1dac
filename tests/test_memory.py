"""viewer.core.memory: free memory read as the kernel and a container's cgroup give it, and
what a copy of a model needs; and the places that refuse, or skip a check, for want of it."""

import pytest
import torch
from torch import nn

from viewer.core import memory
from viewer.core.errors import DepViewError

GB = 2**30


def _kernel(tmp_path, monkeypatch, cgroup_line: str, files: dict[str, str],
            meminfo_gb: int = 20):
    """A fake /proc and /sys/fs/cgroup under ``tmp_path`` (``files``: path -> text)."""
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {meminfo_gb * 2**20}"
                                  " kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    for rel, text in files.items():
        (cg / rel).parent.mkdir(parents=True, exist_ok=True)
        (cg / rel).write_text(text)
    monkeypatch.setattr(memory, "PROC", proc)
    monkeypatch.setattr(memory, "CGROUP", cg)
    monkeypatch.setitem(__import__("sys").modules, "psutil", None)  # (read /proc/meminfo)


def test_available_memory_without_a_cgroup_limit_is_meminfo(tmp_path, monkeypatch):
    _kernel(tmp_path, monkeypatch, "0::/", {"memory.max": "max\n", "memory.current": "5\n"})
    assert memory.available_memory() == 20 * GB


def test_a_cgroup_v2_limit_counts_usage_less_inactive_file_pages(tmp_path, monkeypatch):
    # a container limited to 8 GB using 6 GB, 2 GB of which page cache the kernel can drop
    _kernel(tmp_path, monkeypatch, "0::/docker/abc", {
        "docker/abc/memory.max": f"{8 * GB}\n", "docker/abc/memory.current": f"{6 * GB}\n",
        "docker/abc/memory.stat": f"anon {4 * GB}\ninactive_file {2 * GB}\nactive_file 7\n"})
    assert memory.available_memory() == 4 * GB


def test_an_unlimited_inner_cgroup_falls_to_its_parents_limit(tmp_path, monkeypatch):
    _kernel(tmp_path, monkeypatch, "0::/a/b", {
        "a/b/memory.max": "max\n", "a/b/memory.current": "1\n",
        "a/memory.max": f"{3 * GB}\n", "a/memory.current": f"{1 * GB}\n"})
    assert memory.available_memory() == 2 * GB


def test_a_cgroup_v1_limit_is_read_and_its_no_limit_number_ignored(tmp_path, monkeypatch):
    v1 = "memory/memory.limit_in_bytes"
    _kernel(tmp_path, monkeypatch, "4:memory:/\n3:cpu,cpuacct:/", {
        v1: f"{5 * GB}\n", "memory/memory.usage_in_bytes": f"{2 * GB}\n",
        "memory/memory.stat": f"cache 9\ntotal_inactive_file {1 * GB}\n"})
    assert memory.available_memory() == 4 * GB
    (tmp_path / "cgroup" / v1).write_text("9223372036854771712\n")
    assert memory.available_memory() == 20 * GB


def test_available_memory_is_none_when_nothing_can_be_read(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "PROC", tmp_path / "none")
    monkeypatch.setattr(memory, "CGROUP", tmp_path / "none")
    monkeypatch.setitem(__import__("sys").modules, "psutil", None)
    assert memory.available_memory() is None
    memory.check_room(10**18, "anything")  # unknown: taken as room, not refused


def test_available_memory_reads_this_machine():
    free = memory.available_memory()
    assert free is not None and 0 < free < 2**50


def test_tensor_bytes_counts_each_tensor_with_data_once():
    lin = nn.Linear(10, 20)  # 200 + 20 floats
    model = nn.Sequential(lin, nn.BatchNorm1d(20), lin)  # (shared: once)
    assert memory.tensor_bytes(model) == (220 + 2 * 20 + 2 * 20) * 4 + 8  # + num_batches
    assert memory.tensor_bytes(model.half()) == (220 + 80) * 2 + 8
    assert memory.tensor_bytes(nn.Linear(10, 20, device="meta")) == 0


def test_check_room_is_one_line_with_sizes(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 3 * GB // 2)
    memory.check_room(GB, "a copy")
    with pytest.raises(DepViewError, match=r"^a copy needs about 2.0 GB and this machine has "
                                           r"1.5 GB free: do less$"):
        memory.check_room(2 * GB, "a copy", "do less")


# --- where it is used -----------------------------------------------------------------------

def _cnn():
    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model

    lm = load_model("demo:cnn")
    return lm, Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)


def test_apply_without_room_for_the_pruned_copy_is_one_line_and_changes_nothing(monkeypatch):
    from viewer.core.materialize import pruned_bytes

    lm, p = _cnn()
    plan = p.plan(0.5, "l1")
    need = pruned_bytes(lm.model, p.changes(plan))
    assert need == sum(t.numel() * t.element_size() for t in p.apply(plan).state_dict().values())
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    monkeypatch.setattr(memory, "available_memory", lambda: need - 1)
    with pytest.raises(DepViewError, match=r"^the pruned copy needs about 0.0 GB and this "
                                           r"machine has 0.0 GB free: free memory"):
        p.apply(plan)
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in before.items())
    p.apply(plan, device="meta")  # (a preview's copy takes no memory: not refused)


def test_masked_equivalence_without_room_for_its_copy_masks_layer_by_layer(monkeypatch):
    from viewer.core.verify import layer_by_layer, masked_note, memory_note

    lm, p = _cnn()
    plan = p.plan(0.5, "l1")
    pruned = p.apply(plan)
    full = p.verify(pruned, plan)["masked_equivalence"]
    peak = layer_by_layer(lm.model, p._masked_cuts(plan)).peak_bytes
    assert full["ok"] and "by_layer" not in full and peak < p._masked_bytes(plan)
    # room to make one layer's masked weights at a time, not for a masked copy of the model
    monkeypatch.setattr(memory, "available_memory", lambda: peak)
    v = p.verify(pruned, plan)
    me = v["masked_equivalence"]
    assert me["ok"] and me["max_abs_diff"] == full["max_abs_diff"] and me["by_layer"] == (
        "not enough memory: a masked copy of the model needs about 0.0 GB, and this machine "
        "has 0.0 GB free: each layer's weights were masked as it ran")
    assert memory_note(v) == "" and masked_note(v) == ""
    with torch.no_grad():  # (a wrong pruned model still fails it)
        pruned.features[4].weight[[0, 1]] = pruned.features[4].weight[[1, 0]]
    bad = p.verify(pruned, plan)["masked_equivalence"]
    assert not bad["ok"] and bad["by_layer"]


def test_masked_equivalence_without_room_even_layer_by_layer_is_skipped_and_said(
        monkeypatch):
    from viewer.core.verify import layer_by_layer, masked_note, memory_note

    lm, p = _cnn()
    plan = p.plan(0.5, "l1")
    pruned = p.apply(plan)
    peak = layer_by_layer(lm.model, p._masked_cuts(plan)).peak_bytes
    monkeypatch.setattr(memory, "available_memory", lambda: peak - 1)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["shapes_kept"]
    me = v["masked_equivalence"]
    assert me["memory"] and "ok" not in me and me["skipped"].startswith(
        "not enough memory: a masked copy of the model needs about 0.0 GB, and this machine ")
    assert me["skipped"].endswith("; masking it layer by layer as it runs needs about 0.0 GB")
    assert memory_note(v).startswith("masked equivalence not checked: not enough memory")
    assert masked_note(v) == ""  # (not a failure: exit 0)
    monkeypatch.undo()
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]


def test_the_exact_groups_alone_check_masks_by_layer_or_is_skipped_without_room(monkeypatch):
    # a transformer's residual stream is inexact: its exact groups are checked pruned alone,
    # which needs a pruned copy and a masked copy (or room to mask it layer by layer)
    from viewer.core.materialize import pruned_bytes
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model
    from viewer.core.verify import masked_note, memory_note

    lm = load_model("demo:llama")
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan = p.plan(0.5, "l1")
    pruned = p.apply(plan)
    full = p.verify(pruned, plan)["masked_equivalence"]
    assert full["exact_groups"]["ok"]  # (the check this test takes memory from)
    # room for those groups pruned alone, not with a masked copy: masked layer by layer
    exact = Plan({k: u for k, u in plan.removed.items()
                  if next(g for g in p.groups if g.id == k).exact}, plan.settings)
    alone = pruned_bytes(lm.model, p.changes(exact))
    assert alone + p._masked_bytes(exact) > memory.tensor_bytes(lm.model)
    monkeypatch.setattr(memory, "available_memory", lambda: memory.tensor_bytes(lm.model))
    part = p.verify(pruned, plan)["masked_equivalence"]["exact_groups"]
    assert part["ok"] and part["max_abs_diff"] == full["exact_groups"]["max_abs_diff"]
    assert part["by_layer"].startswith("not enough memory: these groups pruned alone and a "
                                       "masked copy of the model needs about")
    # room for neither: skipped, and said
    monkeypatch.setattr(memory, "available_memory", lambda: alone - 1)
    part = p.verify(pruned, plan)["masked_equivalence"]["exact_groups"]
    assert part["memory"] and part["skipped"].startswith(
        "not enough memory: these groups pruned alone needs about")
    assert memory_note({"masked_equivalence": {"exact_groups": part}})
    # room by the count, but an allocation fails (a process under ``ulimit -v``, another
    # job's peak): skipped for want of memory, not a failure of the groups (it said FAILED)
    monkeypatch.undo()
    oom = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                       "can't allocate memory: you tried to allocate 234881024 bytes.")
    monkeypatch.setattr(p, "apply", lambda *a, **k: (_ for _ in ()).throw(oom))
    v = p.verify(pruned, plan)
    part = v["masked_equivalence"]["exact_groups"]
    assert part["memory"] and "ok" not in part and "can't allocate memory" in part["skipped"]
    assert masked_note(v) == "" and memory_note(v).startswith(
        "masked equivalence not checked: not enough memory: RuntimeError: [enforce fail")
    # any other error of the groups pruned alone is theirs
    monkeypatch.setattr(p, "apply", lambda *a, **k: (_ for _ in ()).throw(ValueError("x")))
    assert p.verify(pruned, plan)["masked_equivalence"]["exact_groups"]["ok"] is False


def test_taylor_without_room_for_a_copy_and_its_gradients_is_one_line(monkeypatch):
    lm, p = _cnn()
    monkeypatch.setattr(memory, "available_memory",
                        lambda: 2 * memory.tensor_bytes(lm.model) - 1)
    with pytest.raises(DepViewError, match=r"^Taylor importance \(a copy of the model and its "
                                           r"gradients\) needs about .* use l1, l2 or bn"):
        p.plan(0.5, "taylor")


def test_a_config_is_left_unfitted_without_room_to_check_it(monkeypatch):
    transformers = pytest.importorskip("transformers")
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32)).eval()
    p = Pruner(model, {"input_ids": torch.randint(0, 64, (1, 8))})
    plan = p.plan(0.5, "l1")
    pruned = p.apply(plan)
    assert p.config_fit_of(pruned).get("changed")  # (fitted when there is room)
    monkeypatch.setattr(memory, "available_memory", lambda: memory.tensor_bytes(pruned) - 1)
    fit = p.fit_config(pruned)
    assert fit["reason"].startswith("not enough memory to check a fitted config (a model "
                                    "built from it needs about 0.0 GB")


def test_prune_says_on_its_line_that_masked_equivalence_was_not_checked(tmp_path,
                                                                       monkeypatch, capsys):
    from viewer.cli import main
    from viewer.core.materialize import pruned_bytes

    lm, p = _cnn()  # the CLI's plan, computed here for its size
    need = pruned_bytes(lm.model, p.changes(p.plan(0.5, "l1")))
    # (room for the pruned copy; not for the masked one, even made layer by layer)
    monkeypatch.setattr(memory, "available_memory", lambda: need)
    assert main(["prune", "demo:cnn", "--ratio", "0.5", "--out", str(tmp_path / "o")]) == 0
    line = capsys.readouterr().out
    assert line.startswith("pruned ") and "(masked equivalence not checked: not enough " \
        "memory: a masked copy of the model needs about 0.0 GB, and this machine has 0.0 " \
        "GB free; masking it layer by layer as it runs needs about 0.0 GB)" in line


def test_the_masked_check_shares_the_parameters_no_cut_touches_and_changes_none():
    # a plan that leaves the embeddings alone (only the MLPs' hidden units): the masked copy
    # the check runs shares them with the original instead of copying them, and needs less
    transformers = pytest.importorskip("transformers")
    from viewer.core.plan import Plan
    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = Pruner(model, {"input_ids": torch.randint(0, 64, (1, 8))})
    full = p.plan(0.5, "l1")
    mlp = [g.id for g in p.groups if g.id in full.removed and
           all(".mlp." in m.module for m in g.members)]
    assert mlp
    plan = Plan({gid: full.removed[gid] for gid in mlp}, full.settings)
    masked = p._masked(plan)
    assert masked.transformer.wte.weight is model.transformer.wte.weight  # (tied: lm_head's)
    assert masked.transformer.h[0].mlp.c_fc.weight is not model.transformer.h[0].mlp.c_fc.weight
    assert p.masked_model(plan).transformer.wte.weight is not model.transformer.wte.weight
    assert p._masked_bytes(plan) < memory.tensor_bytes(model) - 64 * 32 * 4 + 1
    assert p.verify(p.apply(plan), plan)["masked_equivalence"]["ok"]
    # the whole plan cuts the stream, so the tied embedding too: nothing of it is shared
    assert p._masked(full).transformer.wte.weight is not model.transformer.wte.weight
    assert p.verify(p.apply(full), full)["masked_equivalence"]["exact_groups"]["ok"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_out_of_memory_is_an_allocation_the_machine_could_make_with_more_room():
    alloc = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
    assert memory.out_of_memory(MemoryError())
    assert memory.out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert memory.out_of_memory(RuntimeError(alloc + "you tried to allocate 234881024 bytes."))
    # more than the machine has at all: a size gone wrong (a broadcast a bug made), not room
    assert not memory.out_of_memory(RuntimeError(alloc + f"you tried to allocate {10**15} "
                                                         "bytes."))
    assert not memory.out_of_memory(RuntimeError("shape '[1, 8]' is invalid for input"))
    assert not memory.out_of_memory(ValueError("can't allocate memory"))


def _real_probes_out_of_memory(monkeypatch):
    """Every validation probe that runs the pruned copy on real tensors fails to allocate."""
    import viewer.core.validate as validate_mod

    real_build = validate_mod.build_graph

    def build(model, inputs, *a, **k):
        flat = inputs.values() if isinstance(inputs, dict) else inputs
        if any(isinstance(t, torch.Tensor) and not t.is_meta for t in flat):
            raise DepViewError("model forward failed") from RuntimeError(
                "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1024 bytes.")
        return real_build(model, inputs, *a, **k)

    monkeypatch.setattr(validate_mod, "build_graph", build)


def test_a_validation_probe_short_of_memory_runs_on_meta_or_stops_with_one_line(monkeypatch):
    # taken as the group's failure, an allocation that failed set off repairs and joins
    # that then ran: a MoE model's MLP joined to the next layer's heads (caught by masked
    # equivalence, as FAILED). It says nothing about the group
    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model

    lm = load_model("demo:llama")
    want = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    want.validate_groups()
    assert want._probes["real"]  # (a small model with weights: its probes run for real)
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers, validate=False)
    stuck = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers, validate=False)
    _real_probes_out_of_memory(monkeypatch)
    p.validate_groups()
    assert not p._probes["real"]  # the rest ran on meta, and found what real probes found
    assert [(g.root, g.n_units, p.reason(g)) for g in p.groups] == \
        [(g.root, g.n_units, want.reason(g)) for g in want.groups]
    # a model that cannot run on meta has nowhere else to run them: one line, no verdict
    stuck._meta_ok = False
    with pytest.raises(memory.MemoryShortError, match=r"^not enough memory to run the pruned "
                       r"model that checks a group \(RuntimeError: DefaultCPUAllocator"):
        stuck.validate_groups()


def test_the_masked_retrace_of_a_probe_short_of_memory_is_no_verdict(monkeypatch):
    # a probe whose sizes moved on real tensors (a top-1 router's token counts) is traced
    # again on the masked original; that copy failing to allocate was taken as "the sizes
    # moved": the model width reported as not prunable
    from test_prune import Top1Experts

    from viewer.core.prune import Pruner

    torch.manual_seed(0)
    m, x = Top1Experts().eval(), torch.randn(24, 8)
    want = Pruner(m, (x,))
    assert want.reason(want.groups[0]) == ""  # (the width, checked against the masked copy)

    def no_room(self, plan):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                           "allocate 1024 bytes.")

    monkeypatch.setattr(Pruner, "_masked", no_room)
    p = Pruner(m, (x,), validate=False)
    # x[mask] cannot run on meta, so there is nowhere else to check it: one line, no verdict
    with pytest.raises(memory.MemoryShortError, match=r"^not enough memory to run the pruned "
                       r"model that checks a group \(RuntimeError: DefaultCPUAllocator"):
        p.validate_groups()
