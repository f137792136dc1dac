"""Layers masked by torch.nn.utils.prune prune structurally (viewer/core/prunemask.py):
NAME_orig and NAME_mask are cut alike, importance scores the masked weight."""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.utils.prune as tp
from torch import nn

from viewer import load_pruned
from viewer.core.export import check_dir, export_dir
from viewer.core.plan import Plan
from viewer.core.prune import Pruner
from viewer.core.prunemask import masked_names
from viewer.core.spec import load_model
from viewer.core.trace import build_graph


class Masked(nn.Module):
    """A CNN after torch's own pruning: ln_structured zeroed half of conv1's output channels
    (masked, not removed), l1_unstructured masked single weights and biases of conv2."""

    def __init__(self):
        super().__init__()
        import torch.nn.utils.prune as tp

        self.conv1, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6 * 16, 4)
        tp.ln_structured(self.conv1, "weight", amount=0.5, n=2, dim=0)
        tp.l1_unstructured(self.conv2, "weight", amount=0.3)
        tp.l1_unstructured(self.conv2, "bias", amount=0.3)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.fc(h.flatten(1))


def test_names():
    conv = tp.l1_unstructured(nn.Conv2d(2, 4, 3), "bias", amount=0.5)
    assert masked_names(conv) == ("bias",)
    tp.random_structured(conv, "weight", amount=0.5, dim=0)
    tp.l1_unstructured(conv, "weight", amount=0.2)  # (stacked: one PruningContainer)
    assert masked_names(conv) == ("bias", "weight")
    assert masked_names(nn.Conv2d(2, 4, 3)) == ()
    graph = build_graph(nn.Sequential(conv).eval(), torch.randn(1, 2, 5, 5))
    assert graph.prune_masks == {"0.bias_orig": "0.bias_mask",
                                 "0.weight_orig": "0.weight_mask"}


def test_torchs_structured_masks_become_real_cuts():
    # the layers were blocked ("computes its weight in a forward pre-hook"): the user had to
    # make the masks permanent first, and the zeroed channels still cost their full width
    torch.manual_seed(0)
    model, x = Masked().eval(), torch.randn(2, 3, 6, 6)
    zeroed = (model.conv1.weight.flatten(1).abs().sum(1) == 0).nonzero().flatten().tolist()
    assert len(zeroed) == 4
    p = Pruner(model, (x,))
    g1 = next(g for g in p.groups if g.root == "conv1")
    assert not p.reason(g1)
    # importance scores the masked weight: at torch's ratio, its zeroed channels go
    plan = p.plan(0.5, overrides={g.id: 0.0 for g in p.groups if g is not g1 and
                                  not p.reason(g)})
    assert plan.removed == {g1.id: zeroed}
    pruned = p.apply(plan)
    keep = torch.tensor([i for i in range(8) if i not in zeroed])
    for name in ("weight_orig", "weight_mask", "bias"):
        assert torch.equal(getattr(pruned.conv1, name), getattr(model.conv1, name)[keep]), name
    assert torch.equal(pruned.conv1.weight, model.conv1.weight[keep])  # (recomputed)
    assert torch.equal(pruned.conv2.weight_orig, model.conv2.weight_orig[:, keep])
    assert torch.equal(pruned.conv2.weight_mask, model.conv2.weight_mask[:, keep])
    assert pruned.conv1.out_channels == 4 and model.conv1.out_channels == 8
    assert masked_names(pruned.conv2) == ("weight", "bias")  # the masks stay
    # oracle: removing channels whose weights were zero leaves only the batch norm's shift
    # of them, which conv2 reads: zero those inputs of conv2 by hand
    with torch.no_grad():
        masked = Masked().eval()
        masked.load_state_dict(model.state_dict())
        masked.conv2.weight_orig[:, zeroed] = 0
        assert torch.allclose(pruned(x), masked(x), atol=1e-6)
        assert not torch.allclose(pruned(x), model(x), atol=1e-4)  # (the test can fail)
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    # conv2's masked bias and weight prune with its output channels
    both = p.plan(0.5)
    g2 = next(g for g in p.groups if g.root == "conv2")
    gone = both.removed[g2.id]
    out = p.apply(both)
    kept2 = [i for i in range(6) if i not in gone]
    assert torch.equal(out.conv2.bias_mask, model.conv2.bias_mask[kept2])
    assert torch.equal(out.conv2.bias, model.conv2.bias[kept2])
    v = p.verify(out, both)
    assert v["forward"] and v["masked_equivalence"]["ok"], v


def test_importance_reads_the_masked_weight():
    torch.manual_seed(0)
    model, x = Masked().eval(), torch.randn(2, 3, 6, 6)
    p = Pruner(model, (x,))
    g1 = next(g for g in p.groups if g.root == "conv1")
    scores = p.importance(g1, "l1")
    zeroed = (model.conv1.weight.flatten(1).abs().sum(1) == 0).numpy()
    # a zeroed channel scores only its bias and norm: below every channel torch kept
    assert scores[zeroed].max() < scores[~zeroed].min()
    hand = (model.conv1.weight.abs().flatten(1).sum(1) + model.conv1.bias.abs()
            + model.bn.weight.abs() + model.bn.bias.abs()
            + model.conv2.weight.abs().sum((0, 2, 3))).detach().numpy()
    assert np.allclose(scores, hand, rtol=1e-5)


def test_a_masked_export_reloads_and_checks(tmp_path, monkeypatch):
    (tmp_path / "masked.py").write_text("import torch\nfrom torch import nn\n\n\n"
                                        + inspect.getsource(Masked))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    lm = load_model("masked.py:Masked", inputs=["2x3x6x6"])
    p = Pruner(lm.model, lm.inputs)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "out", lm.source, pt2=False)
    again = load_pruned(out)  # from the spec (which masks again) and plan.json, no pickle
    with torch.no_grad():
        assert torch.equal(again(lm.inputs[0]), pruned(lm.inputs[0]))
    assert torch.equal(again.conv1.weight, pruned.conv1.weight)  # (the hook's, recomputed)
    res = check_dir(out)
    assert res["ok"] and res["tensors_match_original"], res


def test_a_hand_plan_keeps_the_mask_aligned_with_the_weight():
    torch.manual_seed(0)
    model, x = Masked().eval(), torch.randn(2, 3, 6, 6)
    p = Pruner(model, (x,))
    g2 = next(g for g in p.groups if g.root == "conv2")
    pruned = p.apply(Plan({g2.id: [0, 5]}))
    assert torch.equal(pruned.conv2.weight, model.conv2.weight[1:5])
    assert pruned.fc.in_features == 4 * 16
