"""sensitivity: each group pruned alone, proven on a model whose dead units change nothing."""

import math

import pytest
import torch
from torch import nn

from viewer.core.errors import DepViewError
from viewer.core.prune import Pruner
from viewer.core.sensitivity import output_change, sensitivity


def test_output_change_is_the_relative_l2_change_of_all_floating_outputs():
    before = {"a": torch.tensor([3.0, 0.0]), "ids": torch.tensor([1, 2]), "b": [torch.tensor(4.0)]}
    after = {"a": torch.tensor([3.0, 4.0]), "ids": torch.tensor([9, 9]), "b": [torch.tensor(4.0)]}
    assert output_change(before, after) == pytest.approx(4 / 5)  # ints are not compared
    assert output_change(before, before) == 0.0


class TwoHidden(nn.Module):
    """Two hidden layers; half of the first's units are dead (nothing reads them)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        with torch.no_grad():
            self.fc1.weight[4:] *= 1e-3  # low L1: the importance picks them
            self.fc2.weight[:, 4:] = 0  # and nothing reads them

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_each_group_alone_and_a_dead_half_changes_nothing():
    model = TwoHidden().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    p = Pruner(model, (torch.randn(5, 6),), output_layers=["out"])
    rows = sensitivity(p, 0.5)
    assert [r["root"] for r in rows] == ["fc1", "fc2"]  # out's group reaches the output
    dead, live = rows
    assert (dead["units"], dead["removed"]) == (8, 4) and live["removed"] == 4
    assert dead["params_removed"] == 4 * 6 + 4 + 4 * 8  # fc1's rows and biases, fc2's columns
    assert dead["output_change"] == pytest.approx(0.0, abs=1e-6)
    assert live["output_change"] > 1e-3
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # a share that rounds to no unit is listed, not run
    assert [r["removed"] for r in sensitivity(p, 0.1)] == [0, 0]
    assert all(r["output_change"] == 0.0 for r in sensitivity(p, 0.1))
    # ignored groups are left out; a batch of real inputs is used when given
    assert [r["root"] for r in sensitivity(p, 0.5, ignore=["fc2:out"])] == ["fc1"]
    assert math.isfinite(sensitivity(p, 0.5, batch=(torch.randn(2, 6),))[1]["output_change"])
    with pytest.raises(DepViewError, match="the model's forward on the batch failed"):
        sensitivity(p, 0.5, batch=(torch.randn(2, 5),))


def test_a_free_output_is_compared_at_the_positions_it_keeps():
    # it is narrower after the prune: "The size of tensor a (32) must match the size of
    # tensor b (64)", a crash of the CLI and the app's Sensitivity button
    from conftest import FeaturesAndLogits

    from viewer.core.forward import run
    from viewer.core.trees import flatten

    torch.manual_seed(0)
    x = (torch.randn(2, 3, 8, 8),)
    p = Pruner(FeaturesAndLogits().eval(), x, free_outputs=["features"])
    rows = {r["root"]: r for r in sensitivity(p, 0.5)}
    stem = next(g for g in p.groups if g.root == "stem")
    assert rows["stem"]["removed"] == 4
    # the oracle: the pruned model's outputs against the original's at the kept features
    plan = p.plan(0.0, overrides={stem.id: 0.5})
    before = flatten(run(p.model, x))
    keep = sorted(set(range(8)) - set(plan.removed[stem.id]))
    before = [(k, t[:, keep] if k == "features" else t) for k, t in before]
    after = flatten(run(p.apply(plan), x))
    num = sum(float((b - a).double().pow(2).sum())
              for (_, a), (_, b) in zip(before, after, strict=True))
    den = sum(float(a.double().pow(2).sum()) for _, a in before)
    assert rows["stem"]["output_change"] == pytest.approx(math.sqrt(num / den))
