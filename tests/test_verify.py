"""Verification: forward, output shapes and masked equivalence of pruned copies
(viewer/core/verify.py), layer by layer and in half precision too."""


import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_DEMOS, CNN_DEMOS, FeaturesAndLogits, MaskedLogits, tiny_pruner
from torch import nn

from viewer.core.forward import run
from viewer.core.plan import Plan
from viewer.core.prune import Pruner
from viewer.core.spec import load_model
from viewer.core.trees import flatten
from viewer.core.verify import _read_unmade, blind_note, layer_by_layer, masked_note


def _exact_only(p, plan):
    by_id = {g.id: g for g in p.groups}
    return Plan({k: v for k, v in plan.removed.items() if by_id[k].exact}, plan.settings)


@pytest.mark.parametrize("name", CNN_DEMOS + ["rnn", "vit", "llama"])
@pytest.mark.parametrize("crit", ["l1", "bn", "random"])
def test_masked_equivalence(demo_pruner, name, crit):
    """Oracle: original with removed channels' readers zeroed == physically pruned model."""
    _, p = demo_pruner(name)
    plan = _exact_only(p, p.plan(0.5, crit))
    assert plan.removed, f"{name}: no exact group to test"
    pruned = p.apply(plan)
    res = p.verify(pruned, plan)["masked_equivalence"]
    assert res["ok"], res
    assert "blind" not in res, res  # the zeroed channels moved the outputs: a real check


def test_masked_equivalence_says_when_it_could_not_fail():
    # a head initialised to zeros (some timm models' are, without weights): every output is
    # the head's bias, pruned or not, so the check passes whatever the pruning did
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    x = torch.randn(2, 3, 8, 8)
    p = Pruner(model, (x,))
    plan = p.plan(0.5)
    v = p.verify(p.apply(plan), plan)
    assert v["masked_equivalence"]["ok"] and "blind" not in v["masked_equivalence"], v
    assert blind_note(v) == ""
    with torch.no_grad():
        model[-1].weight.zero_()
    p = Pruner(model, (x,))
    pruned = p.apply(plan)
    with torch.no_grad():
        pruned[0].weight.mul_(2)  # a wrong pruned model: the check passes all the same
    v = p.verify(pruned, plan)
    assert v["masked_equivalence"]["ok"] and v["masked_equivalence"]["blind"], v
    assert blind_note(v).startswith("note: masked equivalence tells nothing here: zeroing")
    from viewer.app.callbacks.prune import verification_text
    assert "masked equivalence tells nothing here" in verification_text(v)


def test_masked_equivalence_can_fail(demo_pruner):
    _, p = demo_pruner("resnet")
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    with torch.no_grad():
        pruned.layer1[0].conv1.weight[0].add_(1.0)  # damage one kept filter
    assert not p.verify(pruned, plan)["masked_equivalence"]["ok"]
    # a wrong index mapping: the right channels kept, read in the wrong order
    pruned = p.apply(plan)
    with torch.no_grad():
        w = pruned.layer1[0].conv2.weight
        w.copy_(w[:, torch.randperm(w.shape[1], generator=torch.Generator().manual_seed(0))])
    assert not p.verify(pruned, plan)["masked_equivalence"]["ok"]


def test_masked_equivalence_holds_where_both_outputs_are_minus_inf():
    # -inf - -inf is nan: a correct prune "FAILED" with max |diff| nan
    torch.manual_seed(0)
    p = Pruner(MaskedLogits().eval(), (torch.randn(2, 4),))
    plan = Plan({p.groups[0].id: [3, 7]})
    pruned = p.apply(plan)
    me = p.verify(pruned, plan)["masked_equivalence"]
    assert me["ok"] and me["max_abs_diff"] < 1e-6, me
    # an inf where the masked original has a number is still a failure, and says so
    with torch.no_grad():
        pruned.fc2.bias[2] = float("inf")
    me = p.verify(pruned, plan)["masked_equivalence"]
    assert not me["ok"] and me["nonfinite_mismatches"] == 12, me  # log_softmax: every row
    assert "12 entries inf or nan in only one" in masked_note(p.verify(pruned, plan))


def test_verify_reports_a_changed_output_shape_instead_of_crashing():
    p = tiny_pruner()
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    v = p.verify(other.eval(), Plan({}))
    assert v["forward"] and not v["shapes_kept"]
    assert v["masked_equivalence"] == {"skipped": "the output shapes changed"}


def test_an_inexact_group_leaves_the_exact_ones_checked_alone(demo_pruner, monkeypatch):
    # the residual stream of every transformer is inexact (its RMSNorms see the lost
    # channels): masked equivalence was skipped for any plan that pruned it, so nothing
    # checked the attention and MLP groups pruned with it
    lm, p = demo_pruner("llama")
    plan = p.plan(0.5, "l1")
    exact = [gid for gid in plan.removed if p.groups[gid].exact]
    assert exact and len(exact) < len(plan.removed)
    me = p.verify(p.apply(plan), plan)["masked_equivalence"]
    assert me["skipped"].startswith("1 pruned group is inexact")
    assert me["exact_groups"]["groups"] == len(exact) and me["exact_groups"]["ok"]
    # the check can fail: the exact part pruned wrongly (one kept weight changed)
    real = Pruner.apply

    def broken(self, part, **kw):
        pruned = real(self, part, **kw)
        if set(part.removed) == set(exact):
            with torch.no_grad():
                next(m for m in pruned.modules() if isinstance(m, nn.Linear)).weight[0] += 1
        return pruned

    monkeypatch.setattr(Pruner, "apply", broken)
    v = p.verify(real(p, plan), plan)
    assert not v["masked_equivalence"]["exact_groups"]["ok"]
    assert masked_note(v).startswith(f"masked equivalence of the {len(exact)} exact groups "
                                     "pruned alone FAILED: max |diff|")


class HashExperts(torch.nn.Module):
    """Tokens go to expert ``id % 2``: example inputs with even ids never run expert 1."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.emb = nn.Embedding(40, 16)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(16, 32), nn.GELU(),
                                                   nn.Linear(32, 16)) for _ in range(2))
        self.head = nn.Linear(16, 40)

    def forward(self, ids):
        x = self.emb(ids).reshape(-1, self.emb.embedding_dim)
        route, out = ids.reshape(-1) % 2, torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            tok = torch.nonzero(route == e).squeeze(-1)
            if tok.numel():
                out = out.index_add(0, tok, expert(x.index_select(0, tok)))
        return self.head(x + out).reshape(*ids.shape, -1)


def test_parameters_the_example_inputs_never_reach_are_named_in_the_verification():
    from viewer.app.callbacks.prune import verification_text

    torch.manual_seed(0)
    p = Pruner(HashExperts().eval(), (torch.arange(0, 16, 2).reshape(2, 4),))
    assert p.untraced() == ["experts.1.0.weight", "experts.1.0.bias", "experts.1.2.weight",
                            "experts.1.2.bias"]
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["untraced"] == p.untraced()
    with pytest.raises(RuntimeError):  # what the warning is about
        pruned(torch.tensor([[1, 3, 5, 7]]))
    assert "warning: 4 parameter(s) never ran on the example inputs (experts.1.0.weight, " \
        "experts.1.0.bias, experts.1.2.weight, ...) and were not pruned" in verification_text(v)
    every = Pruner(HashExperts().eval(), (torch.arange(8).reshape(2, 4),))
    assert every.untraced() == []


class VAE(nn.Module):
    """A VAE's reparameterisation, taken in train mode only: it pairs mu's channel i with
    logvar's channel i, which an eval-mode trace never sees."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(12, 32), nn.ReLU())
        self.mu, self.lv = nn.Linear(32, 8), nn.Linear(32, 8)
        self.dec = nn.Linear(8, 12)

    def forward(self, x):
        h = self.enc(x)
        mu, lv = self.mu(h), self.lv(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * lv) if self.training else mu
        return self.dec(z)


def test_a_forward_that_branches_on_self_training_is_warned_about():
    from viewer.app.callbacks.prune import verification_text

    torch.manual_seed(0)
    p = Pruner(VAE().eval(), (torch.randn(2, 12),))
    plan = p.plan(0.5)
    mu = next(g for g in p.groups if g.root == "mu")
    assert "lv" not in {m.module for m in mu.members}  # (what the warning is about)
    v = p.verify(p.apply(plan), plan)
    assert v["forward"] and v["masked_equivalence"]["ok"] and v["train_branches"] == \
        ["VAE.forward"]
    assert "warning: VAE.forward branches on self.training: only the eval-mode branch was " \
        "traced and checked" in verification_text(v)
    # torch's own layers (dropout, batch norm) and a forward without such a branch: nothing
    p = Pruner(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(),
                             nn.Linear(8, 2)).eval(), (torch.randn(3, 4),))
    plan = p.plan(0.5)
    assert p.train_branches() == [] and "train_branches" not in p.verify(p.apply(plan), plan)


def test_verification_draws_the_same_random_numbers_for_every_model():
    # ViT-MAE shuffles its patches by random noise even in eval: the original, pruned and
    # masked models drew different noise, and masked equivalence "failed" on a right prune
    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

        def forward(self, x):
            order = torch.rand(x.shape[1]).argsort()  # tokens in a random order
            return self.b(torch.relu(self.a(x[:, order])))

    torch.manual_seed(0)
    model, x = Noisy().eval(), torch.randn(2, 5, 8)
    p = Pruner(model, (x,))
    plan = p.plan(0.5)
    state = torch.get_rng_state()
    v = p.verify(p.apply(plan), plan)
    assert plan.removed and v["masked_equivalence"]["ok"], v
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is kept


def test_a_free_output_is_checked_at_kept_indices_layer_by_layer_and_in_float32(monkeypatch):
    # the checks that mask the model as it runs (short of memory) or again in float32 (a
    # model run in half precision) compare a free output at the kept positions too
    from viewer.core import verify as verify_module

    torch.manual_seed(0)
    model = FeaturesAndLogits().eval()
    x = torch.randn(2, 3, 6, 6)
    p = Pruner(model, (x,), free_outputs=["features"])
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = flatten(run(pruned, (x,)))
    by_layer = p._masked_equivalence(plan, out, pruned, short="no room for a masked copy")
    assert by_layer["ok"] and "by_layer" in by_layer, by_layer
    half = {"rel_diff": 0.01, "max_abs_diff": 0.05}
    res = p._masked_in_float32(plan, pruned, torch.bfloat16, half, out)
    assert res["ok"] and "each layer made as it ran" in res["in_float32"], res
    monkeypatch.setattr(verify_module, "layer_by_layer", lambda *a, **k: None)
    res = p._masked_in_float32(plan, pruned, torch.bfloat16, half, out)
    assert res["ok"] and res["in_float32"].endswith("on float32 copies"), res


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masked_equivalence_in_half_precision_still_catches_swapped_channels(dtype):
    # two kept channels swapped move the small ResNet's outputs by 0.95%: within what half
    # precision's rounding could explain, so the check runs again in float32 and fails
    lm = load_model("demo:resnet", dtype=str(dtype).removeprefix("torch."))
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    plan = p.plan(0.5, "l1")
    pruned = p.apply(plan)
    assert next(pruned.parameters()).dtype == dtype
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]
    with torch.no_grad():
        pruned.conv1.weight[[0, 1]] = pruned.conv1.weight[[1, 0]]
    bad = p.verify(pruned, plan)["masked_equivalence"]
    assert not bad["ok"] and "checked again in float32" in bad["in_float32"]
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in before.items())
    assert next(pruned.parameters()).dtype == dtype  # (the float32 check ran on copies)


def test_a_half_precision_difference_is_checked_in_float32_or_skipped_for_memory(
        monkeypatch):
    from viewer.core import memory
    from viewer.core import verify as verify_module

    lm = load_model("demo:cnn", dtype="bfloat16")
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan = p.plan(0.5, "l1")
    pruned = p.apply(plan)
    half = {"rel_diff": 0.0136, "max_abs_diff": 0.05}  # (as a 12-layer Llama shows)
    out = flatten(run(pruned, lm.inputs))
    # in float32 layer by layer: a fraction of what float32 copies of both models hold
    res = p._masked_in_float32(plan, pruned, torch.bfloat16, half, out)
    assert res["ok"] and res["max_abs_diff"] < 1e-5
    assert res["in_float32"] == ("in bfloat16 the outputs differed by 1.36% of their "
                                 "largest: checked again in float32, each layer made as it ran")
    # where it cannot be made layer by layer: on float32 copies, the same verdict
    monkeypatch.setattr(verify_module, "layer_by_layer", lambda *a, **k: None)
    copies = p._masked_in_float32(plan, pruned, torch.bfloat16, half, out)
    assert copies["ok"] and copies["in_float32"].endswith("checked again on float32 copies")
    assert copies["max_abs_diff"] == res["max_abs_diff"]
    monkeypatch.setattr(memory, "available_memory", lambda: 1)  # (room for neither)
    skipped = p._masked_in_float32(plan, pruned, torch.bfloat16, half, out)
    assert skipped["memory"] and "ok" not in skipped and skipped["skipped"].startswith(
        "in bfloat16 the outputs differ by 1.36% of their largest, its rounding or a wrong "
        "group; not enough memory: checking it on float32 copies needs about")
    monkeypatch.undo()
    monkeypatch.setattr(memory, "available_memory", lambda: 1)
    skipped = p._masked_in_float32(plan, pruned, torch.bfloat16, half, out)
    assert skipped["skipped"].endswith("; masking it layer by layer as it runs needs about "
                                       "0.0 GB")
    monkeypatch.undo()
    with torch.no_grad():  # (and layer by layer it still fails on a wrong pruned model)
        pruned.features[4].weight[[0, 1]] = pruned.features[4].weight[[1, 0]]
    bad = p._masked_in_float32(plan, pruned, torch.bfloat16, half,
                               flatten(run(pruned, lm.inputs)))
    assert not bad["ok"] and "each layer made as it ran" in bad["in_float32"]


@pytest.mark.parametrize("name", ALL_DEMOS)
def test_a_model_masked_layer_by_layer_computes_what_its_masked_copy_does(name):
    # the masked copy of the model, made one layer at a time as the model runs: the same
    # outputs, bit for bit, for a fraction of the memory; the original is left as it was
    lm = load_model(f"demo:{name}")
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan = p.plan(0.5, "l1")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    lbl = layer_by_layer(lm.model, p._masked_cuts(plan), made_at=p._made_at())
    got, want = flatten(run(lbl.model, lm.inputs)), flatten(run(p.masked_model(plan), lm.inputs))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True))
    assert not any(torch.equal(a, b) for (_, a), (_, b) in
                   zip(got, flatten(run(lm.model, lm.inputs)), strict=True))  # (it masks)
    assert lbl.peak_bytes < p._masked_bytes(plan)
    # nothing made is kept: each parameter a cut touches is NaN again, one number expanded
    held = [t for t in lbl.model.parameters() if torch.isnan(t).all()]
    assert held and all(t.untyped_storage().nbytes() == t.element_size() for t in held)
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in lm.model.modules())


class HalfTable(nn.Module):
    """A position table kept as a plain bfloat16 attribute, cast where it is read."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
        self.table = torch.randn(5, 8).to(torch.bfloat16)

    def forward(self, x):
        return self.head(torch.relu(self.emb(x) + self.table.to(x.dtype)))


def test_a_plain_tensor_attribute_is_copied_layer_by_layer_as_a_buffer_is():
    # cast to float32 it was made a NaN placeholder, as a parameter is, which nothing made
    torch.manual_seed(0)
    model, x = HalfTable().eval(), torch.randn(2, 5, 4)
    p = Pruner(model, (x,))
    plan = p.plan(0.5)
    assert plan.removed[0]  # (the table's group: emb's outputs)
    lbl = layer_by_layer(model, p._masked_cuts(plan), torch.float32, made_at=p._made_at())
    got = flatten(run(lbl.model, (x,)))
    want = flatten(run(p.masked_model(plan), (x,)))
    assert torch.allclose(got[0][1], want[0][1], atol=1e-6)
    assert lbl.model.table.dtype is torch.float32 and model.table.dtype is torch.bfloat16
    assert lbl.model.table is not model.table


def test_a_weight_read_outside_its_layer_is_made_where_the_graph_reads_it_or_said():
    class ReadsWeights(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 16)
            self.cls = nn.Parameter(torch.randn(1, 1, 16))
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)  # reads out_proj's
            self.fc = nn.Linear(16, 16)

        def forward(self, ids):
            h = self.emb(ids)
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1)
            h = self.attn(h, h, h)[0]
            return self.fc(h) @ self.emb.weight.T  # (the embedding read as logits' weight)

    torch.manual_seed(0)
    model, ids = ReadsWeights().eval(), torch.randint(0, 20, (1, 6))
    p = Pruner(model, (ids,))
    plan = p.plan(0.5, "l1")
    cuts = p._masked_cuts(plan)
    assert {c.key.rpartition(".")[0] for c in cuts} >= {"emb", "attn.out_proj", "fc"}
    assert p._made_at()["attn.out_proj.weight"] == "attn" and p._made_at()["cls"] == ""
    assert p._made_at()["emb.weight"] == ""  # (read in the model's own forward too)
    want = flatten(run(p.masked_model(plan), (ids,)))
    got = flatten(run(layer_by_layer(model, cuts, made_at=p._made_at()).model, (ids,)))
    assert torch.equal(got[0][1], want[0][1])
    # without knowing where they are read, they are NaN there: said, never a wrong verdict
    blind = flatten(run(layer_by_layer(model, cuts).model, (ids,)))
    assert _read_unmade(blind, want) and torch.isnan(blind[0][1]).all()


def test_verify_by_layer_skips_rather_than_fails_on_a_weight_read_it_cannot_follow(
        monkeypatch):
    # a read the graph did not place (here: its record of where weights are read withheld)
    # leaves NaN in the outputs: masked equivalence is skipped with that reason, not FAILED
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval(), \
        torch.randn(2, 8)

    class Parent(nn.Module):  # the second layer's weight read by its parent, not its call
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return F.linear(torch.relu(self.net[0](x)), self.net[2].weight)

    parent = Parent().eval()
    p = Pruner(parent, (x,))
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert p.verify(pruned, plan)["masked_equivalence"]["ok"]
    monkeypatch.setattr(Pruner, "_masked_bytes", lambda self, plan: 2**60)  # (no copy fits)
    me = p.verify(pruned, plan)["masked_equivalence"]
    assert me["ok"] and me["by_layer"]  # (the parent's read placed at the root's call)
    monkeypatch.setattr(Pruner, "_made_at", lambda self: {})
    me = p.verify(pruned, plan)["masked_equivalence"]
    assert me["memory"] and "ok" not in me and me["skipped"].endswith(
        "; masking it layer by layer as it runs cannot be done: the model reads a layer's "
        "weights outside that layer's call")


@pytest.mark.parametrize("name", ALL_DEMOS)
def test_every_demo_prunes_in_bfloat16_with_masked_equivalence(name):
    # --dtype bfloat16: the same plan as in float32, a bfloat16 pruned copy, and masked
    # equivalence holding (in bfloat16, or on float32 copies when its rounding differs)
    lm = load_model(f"demo:{name}", dtype="bfloat16")
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan = p.plan(0.5, "l1")
    pruned = p.apply(plan)
    assert {t.dtype for t in pruned.parameters()} == {torch.bfloat16}
    v = p.verify(pruned, plan)
    assert v["forward"] and v["shapes_kept"], v
    me = v["masked_equivalence"]
    assert me.get("ok", me.get("exact_groups", {}).get("ok")), me
