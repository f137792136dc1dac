"""Spectral-normalised layers prune exactly (viewer/core/spectralnorm.py): W and u or v are
cut, u is rescaled so that sigma and the kept weights stay the original's."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from viewer import load_pruned
from viewer.core.export import check_dir, export_dir
from viewer.core.forward import run
from viewer.core.prune import Pruner
from viewer.core.spec import load_model
from viewer.core.spectralnorm import columns, sigma, spectral_norm_names, spectral_norms
from viewer.core.verify import layer_by_layer


class Disc(nn.Module):
    """A GAN discriminator, every layer spectral-normalised, with a transposed conv (whose
    spectral norm takes its dim 1 as rows)."""

    def __init__(self, old: bool = False):
        super().__init__()
        # (old: torch.nn.utils.spectral_norm, a forward pre-hook, as HiFi-GAN's discriminators
        # and older GAN code use it)
        sn = torch.nn.utils.spectral_norm if old else torch.nn.utils.parametrizations.spectral_norm
        self.c1 = sn(nn.Conv2d(3, 16, 3, padding=1))
        self.c2 = sn(nn.Conv2d(16, 32, 3, 2, 1))
        self.up = sn(nn.ConvTranspose2d(32, 8, 2, 2))
        self.c3 = sn(nn.Conv2d(8, 16, 3, 2, 1))
        self.fc = sn(nn.Linear(16, 24))
        self.out = sn(nn.Linear(24, 1))
        for _ in range(15):  # power iterations: u and v near the singular vectors
            self(torch.randn(4, 3, 8, 8))
        self.eval()

    def forward(self, x):
        h = F.leaky_relu(self.c2(F.leaky_relu(self.c1(x), 0.2)), 0.2)
        h = F.leaky_relu(self.c3(F.leaky_relu(self.up(h), 0.2)), 0.2).mean((2, 3))
        return self.out(F.leaky_relu(self.fc(h), 0.2))


LAYERS = ("c1", "c2", "up", "c3", "fc", "out")


def _wuv(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """A spectral-normalised layer's W, u, v and row dim, either API."""
    w, u, v, dim = spectral_norm_names(layer)
    return layer.get_parameter(w), layer.get_buffer(u), layer.get_buffer(v), dim


def test_names_and_the_columns_a_cut_meets():
    assert spectral_norm_names(spectral_norm(nn.Conv2d(2, 4, 3))) == (
        "parametrizations.weight.original", "parametrizations.weight.0._u",
        "parametrizations.weight.0._v", 0)
    assert spectral_norm_names(spectral_norm(nn.ConvTranspose1d(2, 4, 3)))[3] == 1
    assert spectral_norm_names(nn.Conv2d(2, 4, 3)) is None
    assert spectral_norm_names(torch.nn.utils.spectral_norm(nn.ConvTranspose2d(2, 4, 3))) == (
        "weight_orig", "weight_u", "weight_v", 1)  # (the older pre-hook)
    # oracle: mark the positions in a tensor of W's shape, lay it out as spectral_norm does
    for shape, rows, d, pos in (((6, 4, 3, 3), 0, 1, [1, 3]), ((4, 6, 2, 2), 1, 0, [0, 2]),
                                ((4, 6, 2, 2), 1, 3, [1]), ((5, 7), 0, 1, [0, 6])):
        mark = torch.zeros(shape)
        mark.index_fill_(d, torch.tensor(pos), 1)
        want = np.nonzero(mark.movedim(rows, 0).flatten(1)[0].numpy())[0]
        assert np.array_equal(columns(shape, rows, d, pos), want), (shape, d)


@pytest.mark.parametrize("old", [False, True])
def test_a_discriminator_prunes_with_its_weights_kept_exactly(old):
    torch.manual_seed(0)
    model, x = Disc(old), torch.randn(2, 3, 8, 8)
    w_name = "weight_orig" if old else "parametrizations.weight.original"
    u_name = "weight_u" if old else "parametrizations.weight.0._u"
    p = Pruner(model, (x,))
    # every group was blocked ("a parametrization other than weight_norm"); now only the
    # output's
    assert [p.reason(g) for g in p.groups].count("") == len(p.groups) - 1
    plan = p.plan(0.5)
    assert len(plan.removed) == 5
    pruned = p.apply(plan)
    changes = p.changes(plan)
    for name in LAYERS:
        before, after = getattr(model, name), getattr(pruned, name)
        want = before.weight.detach()
        for d, rem in changes.get(f"{name}.{w_name}", {}).items():
            keep = np.setdiff1d(np.arange(want.shape[d]), rem)
            want = want.index_select(d, torch.as_tensor(keep))
        # the weight it computes is the original's at the kept indices: sigma is kept
        assert torch.allclose(after.weight, want, atol=1e-6), name
        assert torch.isclose(sigma(*_wuv(after)), sigma(*_wuv(before)))
    assert (pruned.up.in_channels, pruned.up.out_channels, pruned.fc.in_features) == (16, 4, 8)
    assert model.c1.out_channels == 16  # the model given is untouched
    # oracle of the masked equivalence, by hand: the original with the removed channels'
    # rows and columns of W zeroed and u rescaled to the sigma it had
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for name in LAYERS:
            w, u, v, dim = _wuv(getattr(masked, name))
            target = sigma(w, u, v, dim)
            for d, rem in changes.get(f"{name}.{w_name}", {}).items():
                w.index_fill_(d, torch.as_tensor(rem), 0)
            u.mul_((target / sigma(w, u, v, dim)).float())
        assert torch.allclose(pruned(x), masked(x), atol=1e-6)
        assert not torch.allclose(pruned(x), model(x), atol=1e-4)  # (the test can fail)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"] and "blind" not in \
        v["masked_equivalence"], v
    # the copy that makes each zeroed weight on call (models too large to copy) agrees
    lbl = layer_by_layer(model, p._masked_cuts(plan), made_at=p._made_at())
    with torch.no_grad():
        assert torch.allclose(run(lbl.model, (x,)), masked(x), atol=1e-6)
    # u is rescaled, not an index-select: plan.json lists it apart
    assert set(p.renormalized(plan)) == {f"{n}.{u_name}"
                                         for n in LAYERS}  # (out: its input columns)
    # training re-estimates u and v from the smaller weights
    pruned.train()
    u_before = _wuv(pruned.c2)[1].clone()
    pruned(torch.randn(4, 3, 8, 8))
    assert not torch.equal(_wuv(pruned.c2)[1], u_before)


@pytest.mark.parametrize("old", [False, True])
def test_a_model_in_training_mode_is_not_iterated_by_pruning(old):
    # a spectral-normalised weight read in training mode runs a power iteration: reading the
    # pruned layers' widths did, changing the u just rescaled (masked equivalence failed)
    torch.manual_seed(0)
    model, x = Disc(old).train(), torch.randn(2, 3, 8, 8)
    u = {n: _wuv(getattr(model, n))[1].clone() for n in LAYERS}
    p = Pruner(model, (x,))
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert pruned.training and model.training  # (the flags are the model's)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    assert all(torch.equal(u[n], _wuv(getattr(model, n))[1]) for n in LAYERS)


def test_a_square_weight_cuts_u_and_v_by_their_own_rule():
    # u and v of a square weight have one shape: the rule that cuts an unread buffer beside a
    # cut tensor cut v with u's (row) positions, and every plan failed at its width
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), spectral_norm(nn.Linear(16, 16)),
                          nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(4, 8)
    p = Pruner(model, (x,))
    plan = p.plan(0.5)
    assert len(plan.removed) == 2 and len(plan.skipped) == 1, plan.skipped
    pruned = p.apply(plan)
    assert pruned[2].parametrizations.weight.original.shape == (8, 8)
    keep = [i for i in range(16) if i not in plan.removed[0]]  # (the input group's)
    assert torch.allclose(_wuv(pruned[2])[2], _wuv(model[2])[2][keep])
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


@pytest.mark.parametrize("old", [False, True])
def test_a_spectral_norm_export_reloads_and_checks(old, tmp_path, monkeypatch):
    (tmp_path / "disc.py").write_text("import torch\nimport torch.nn.functional as F\n"
                                      "from torch import nn\n\n\n" + inspect.getsource(Disc))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    lm = load_model("disc.py:Disc", inputs=["2x3x8x8"], kwargs={"old": old})
    p = Pruner(lm.model, lm.inputs)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source, pt2=False)
    again = load_pruned(out)  # from the spec and plan.json, no pickle
    with torch.no_grad():
        assert torch.equal(again(lm.inputs[0]), pruned(lm.inputs[0]))
    res = check_dir(out)
    assert res["ok"] and res["tensors_match_original"], res
    assert set(spectral_norms(again)) == {
        f"{n}.{'weight_orig' if old else 'parametrizations.weight.original'}" for n in LAYERS}
    assert again.fc.weight.shape == pruned.fc.weight.shape  # (the old hook's, recomputed)


@pytest.mark.parametrize("how", ["a user's", "spectral_norm of a 1-D weight"])
def test_other_parametrizations_still_block(how):
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.n = nn.Conv1d(4, 16, 3, padding=1), nn.BatchNorm1d(16)
            self.b = nn.Conv1d(16, 4, 3, padding=1)
            if how == "a user's":
                parametrize.register_parametrization(self.a, "weight", Double())
            else:
                spectral_norm(self.n, "weight")

        def forward(self, x):
            return self.b(torch.relu(self.n(self.a(x))))

    model = Net().eval()
    p = Pruner(model, (torch.randn(2, 4, 10),))
    g = next(g for g in p.groups if g.root == "a")
    culprit = "'a'" if how == "a user's" else "'n'"
    assert f"{culprit} computes a weight through a parametrization other than weight_norm " \
        "and spectral_norm" in p.reason(g)
