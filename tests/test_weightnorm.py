"""Weight-normalised layers (viewer/core/weightnorm.py): recognised, cut through g and v, and
pruned so that the pruned layer's weight is the original's at the kept indices."""

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from viewer.core.forward import run
from viewer.core.prune import Pruner
from viewer.core.spec import load_model
from viewer.core.trees import flatten
from viewer.core.verify import layer_by_layer
from viewer.core.weightnorm import g_after_cut, weight_norm_names, weight_norms, weight_of

old_weight_norm = pytest.mark.filterwarnings(
    "ignore:`torch.nn.utils.weight_norm` is deprecated")


@old_weight_norm
def test_weight_norm_names_knows_weight_norm_and_nothing_else():
    new, old = ("parametrizations.weight.original0", "parametrizations.weight.original1"), \
        ("weight_g", "weight_v")
    assert weight_norm_names(parametrizations.weight_norm(nn.Conv1d(2, 4, 3))) == new
    assert weight_norm_names(torch.nn.utils.weight_norm(nn.Linear(2, 4), dim=None)) == old
    assert weight_norm_names(nn.Conv1d(2, 4, 3)) is None
    assert weight_norm_names(parametrizations.spectral_norm(nn.Linear(2, 4))) is None

    class Double(nn.Module):  # a second parametrization of the same weight
        def forward(self, w):
            return 2 * w

    both = parametrizations.weight_norm(nn.Linear(2, 4))
    parametrize.register_parametrization(both, "weight", Double())
    assert weight_norm_names(both) is None
    model = nn.Sequential(nn.Linear(2, 2), parametrizations.weight_norm(nn.Linear(2, 2)))
    assert weight_norms(model) == {"1.parametrizations.weight.original1":
                                   "1.parametrizations.weight.original0"}


@pytest.mark.parametrize("dim", [0, 1, 2, None])
def test_g_after_cut_gives_torchs_weight_at_the_kept_indices(dim):
    """The oracle is torch's own weight_norm: a layer given the cut v and the rescaled g
    computes the original layer's weight index-selected, along g's own dim, a normed one, or
    both."""
    torch.manual_seed(0)
    conv = parametrizations.weight_norm(nn.Conv1d(5, 6, 3), dim=dim)
    g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
    removed = {0: [1, 4], 1: [0, 2, 3]}
    v_cut, g_cut = v.detach(), g.detach()
    for d, rem in removed.items():
        keep = torch.tensor([i for i in range(v.shape[d]) if i not in rem])
        v_cut = v_cut.index_select(d, keep)
        if g.ndim and g.shape[d] > 1:
            g_cut = g_cut.index_select(d, keep)
    want = conv.weight.detach()[[0, 2, 3, 5]][:, [1, 4]]
    pruned = parametrizations.weight_norm(nn.Conv1d(2, 4, 3), dim=dim)
    with torch.no_grad():
        pruned.parametrizations.weight.original0.copy_(g_after_cut(g, g_cut, v, v_cut, removed))
        pruned.parametrizations.weight.original1.copy_(v_cut)
    torch.testing.assert_close(pruned.weight, want, rtol=1e-6, atol=1e-7)
    # cutting v alone renormalises what is left: the rescale is what keeps the weight
    if dim != 0 or 1 in removed:
        plain = weight_of(g_cut, v_cut).float()
        assert not torch.allclose(plain, want, rtol=1e-3, atol=1e-4)


class Vocoder(nn.Module):
    """Weight norm as audio models use it: a conv stack with a residual (the default dim=0,
    whose input channels are a normed dim), a whole-tensor norm (dim=None), a grouped
    positional conv normed per kernel tap (wav2vec2: dim=2), an upsampling transposed conv
    (HiFi-GAN) and a linear head; ``old``: the same with the deprecated pre-hook API."""

    def __init__(self, old: bool = False):
        super().__init__()
        wn = torch.nn.utils.weight_norm if old else parametrizations.weight_norm
        self.pre = wn(nn.Conv1d(4, 16, 5, padding=2))
        self.res = wn(nn.Conv1d(16, 16, 3, padding=1), dim=None)
        self.pos = wn(nn.Conv1d(16, 16, 5, padding=2, groups=4), dim=2)
        self.up = wn(nn.ConvTranspose1d(16, 12, 4, stride=2, padding=1))
        self.mid = wn(nn.Linear(12, 24))
        self.post = nn.Linear(24, 3)

    def forward(self, x):
        y = nn.functional.leaky_relu(self.pre(x), 0.1)
        y = y + nn.functional.leaky_relu(self.res(y), 0.1)
        y = y + nn.functional.gelu(self.pos(y))
        y = nn.functional.leaky_relu(self.up(y), 0.1).transpose(1, 2)
        return self.post(torch.tanh(self.mid(y)))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each layer's weight, as its forward computes it."""
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear))}


@old_weight_norm
@pytest.mark.parametrize("old", [False, True], ids=["parametrizations", "old pre-hook"])
def test_weight_normalised_layers_prune_exactly(old, tmp_path):
    from viewer.core.export import check_dir, export_dir, load_pruned

    lm = load_model(f"{__file__}:Vocoder", inputs=["1x4x10"], kwargs={"old": old})
    model, x = lm.model, lm.inputs[0]
    p = Pruner(model, lm.inputs)
    prunable = [g for g in p.groups if not p.reason(g)]
    assert {g.root for g in prunable} >= {"pre", "up", "mid"}, \
        [(g.root, p.reason(g)) for g in p.groups]
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    before = _weights(model)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    # the slicing invariant, for the weights the layers compute: every pruned weight is the
    # original's at the kept indices of its v (g rescaled where v lost a normed dim)
    kept, keys = p.kept(plan), model.state_dict().keys()
    for name, w in _weights(pruned).items():
        v_key = next(k for k in (f"{name}.parametrizations.weight.original1",
                                 f"{name}.weight_v", f"{name}.weight") if k in keys)
        want = before[name]
        for d, idx in sorted(kept.get(v_key, {}).items()):
            want = want.index_select(int(d), torch.tensor(idx))
        torch.testing.assert_close(w, want, rtol=1e-5, atol=1e-7, msg=name)
    assert _weights(model).keys() == before.keys() and all(
        torch.equal(a, before[k]) for k, a in _weights(model).items())  # original untouched
    renorm = p.renormalized(plan)
    assert {k.split(".")[0] for k in renorm} >= {"res", "pos", "up"}, renorm
    # by layer, the masked model is the same as the masked copy
    lbl = layer_by_layer(model, p._masked_cuts(plan), made_at=p._made_at())
    for (_, a), (_, b) in zip(flatten(run(lbl.model, (x,))),
                              flatten(run(p.masked_model(plan), (x,))), strict=True):
        torch.testing.assert_close(a, b)
    # export, reload bit-exact, check (which compares the rescaled weights)
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source)
    assert json.loads((out / "plan.json").read_text())["renormalized"] == renorm
    again = load_pruned(out)
    for (_, a), (_, b) in zip(flatten(run(again, (x,))), flatten(run(pruned, (x,))),
                              strict=True):
        assert torch.equal(a, b)
    res = check_dir(out)
    assert res["ok"] and res["tensors_match_original"], res
    # a g that is not the rescaled one is caught
    from safetensors.torch import load_file, save_file

    sd = load_file(out / "model.safetensors")
    g = next(iter(renorm))
    sd[g] = sd[g] * 1.01
    save_file(sd, out / "model.safetensors")
    res = check_dir(out)
    assert not res["tensors_match_original"] and g in " ".join(res["problems"]), res


def test_importance_scores_the_weight_a_weight_normalised_layer_computes():
    """g holds the magnitudes: a row of v a thousand times longer than the others, scaled
    back by a small g, is no more important than the weight it gives (scores equal those of
    the same layers with the parametrization removed)."""
    torch.manual_seed(0)
    model, x = Vocoder().eval(), torch.randn(1, 4, 10)
    with torch.no_grad():
        model.pre.parametrizations.weight.original1[3] *= 1000
    plain = Vocoder().eval()
    plain.load_state_dict(model.state_dict())
    for m in plain.modules():
        if parametrize.is_parametrized(m):
            parametrize.remove_parametrizations(m, "weight")
    p, q = Pruner(model, (x,)), Pruner(plain, (x,))
    for crit in ("l1", "l2"):
        a = p.importance(next(g for g in p.groups if g.root == "pre"), crit)
        b = q.importance(next(g for g in q.groups if g.root == "pre"), crit)
        assert a.shape == b.shape and a.argmax() == b.argmax()
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-5, atol=0)
