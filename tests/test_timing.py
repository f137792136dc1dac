"""compare_speed, proven on a fake clock: each forward advances it by a known amount, so the
figures it reports are exact (no real time is measured, nothing can flake)."""

import pytest
import torch
from torch import nn

from viewer.core import timing
from viewer.core.errors import DepViewError
from viewer.core.timing import compare_speed


class Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class Ticking(nn.Module):
    """Takes ``cost`` seconds of the fake clock per forward, and records how it was run."""

    def __init__(self, clock, cost):
        super().__init__()
        self.clock, self.cost = clock, cost
        self.lin = nn.Linear(3, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled(), float(x.sum())))
        x.add_(1)  # a forward that changes its input in place
        self.clock.now += self.cost
        return self.lin(x)


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(timing, "time", c)
    return c


def test_compare_speed_reports_each_models_time_and_their_ratio(clock):
    before, after = Ticking(clock, 0.003), Ticking(clock, 0.001)
    before.train(), after.eval()
    state = {k: v.clone() for k, v in after.state_dict().items()}
    t = compare_speed(before, after, (torch.zeros(2, 3),), rounds=5)
    assert t["before_ms"] == pytest.approx(3.0) and t["after_ms"] == pytest.approx(1.0)
    assert t["speedup"] == pytest.approx(3.0)
    # rounds of at least 50 ms of the faster model: 50 runs of each in each round
    assert (t["rounds"], t["runs_per_round"]) == (5, 50)
    assert t["threads"] == torch.get_num_threads() and t["device"] == "cpu"
    assert len(before.seen) == len(after.seen) == 2 + 5 * 50  # and two untimed runs each
    # eval mode and no autograd while timed, a fresh copy of the inputs each run; the models
    # are left as they were
    assert set(before.seen) == {(False, False, 0.0)}
    assert before.training and not after.training
    assert all(torch.equal(v, state[k]) for k, v in after.state_dict().items())


class Scheduled(Ticking):
    """Takes the next of ``costs`` seconds each forward: a machine whose speed drifts."""

    def __init__(self, clock, costs):
        super().__init__(clock, 0.0)
        self.costs = list(costs)

    def forward(self, x):
        self.clock.now += self.costs.pop(0)
        return self.lin(x)


def test_the_times_reported_divide_to_the_speed_up(clock):
    """The speed-up is the median round's ratio, and the times are that round's: medians of
    each model's times taken apart (2 s and 0.5 s here) would say 4x beside a 2x speed-up."""
    before = Scheduled(clock, [1, 1] + [1, 1, 2, 2, 2])  # two untimed runs, then 5 rounds
    after = Scheduled(clock, [1, 1] + [0.5, 0.25, 2, 1, 0.5])  # ratios 2, 4, 1, 2, 4
    t = compare_speed(before, after, (torch.zeros(1, 3),), rounds=5, budget_s=100.0)
    assert (t["rounds"], t["runs_per_round"]) == (5, 1)
    assert t["speedup"] == pytest.approx(2.0)
    assert t["before_ms"] / t["after_ms"] == pytest.approx(t["speedup"])
    assert (t["before_ms"], t["after_ms"]) == (pytest.approx(2000.0), pytest.approx(1000.0))


def test_compare_speed_stops_adding_rounds_past_its_budget(clock):
    before, after = Ticking(clock, 2.0), Ticking(clock, 1.0)
    t = compare_speed(before, after, (torch.zeros(1, 3),), rounds=7, budget_s=10.0)
    # warm-up 6 s, then 3 s a round: at least 3 rounds, then no more once past 10 s
    assert (t["rounds"], t["runs_per_round"]) == (3, 1)
    assert t["speedup"] == pytest.approx(2.0)


def test_a_forward_that_fails_while_timed_is_one_line(clock):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\nmore")

    with pytest.raises(DepViewError, match=r"^timing the forward failed: RuntimeError: mat1 and "
                                           r"mat2 shapes cannot be multiplied$"):
        compare_speed(Ticking(clock, 1.0), Broken(), (torch.zeros(1, 3),))
    with pytest.raises(DepViewError, match="rounds must be at least 1"):
        compare_speed(Ticking(clock, 1.0), Ticking(clock, 1.0), (torch.zeros(1, 3),), rounds=0)
