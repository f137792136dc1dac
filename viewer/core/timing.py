"""How long a forward pass takes, before and after pruning, measured side by side.

A machine's speed drifts (other processes, turbo, a shared VM), so the two models are timed
in interleaved rounds, each round running both (in alternating order), and the speed-up is
the median of the per-round ratios: drift that slows both within a round cancels out. The
times reported are that median round's, so they divide to the speed-up a reader is shown.

    >>> t = compare_speed(lm.model, pruned, lm.inputs)
    >>> t["speedup"], t["before_ms"], t["after_ms"]
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from .errors import DepViewError
from .forward import copy_inputs
from .text import error_line
from .trace import eval_mode

#: rounds of the comparison; each runs both models ``runs`` times
ROUNDS = 7
#: a round of one model lasts at least this long (seconds): short forwards run several times
MIN_ROUND_S = 0.05
#: stop adding rounds (keeping at least 3) once the comparison has taken this long (seconds)
BUDGET_S = 20.0


def _call(model: nn.Module, inputs) -> float:
    """Seconds of one forward of ``model`` on a fresh copy of ``inputs`` (the copy is not
    timed: a forward may change its inputs in place)."""
    x = copy_inputs(inputs)
    start = time.perf_counter()
    model(**x) if isinstance(x, dict) else model(*x)
    return time.perf_counter() - start


def compare_speed(before: nn.Module, after: nn.Module, inputs, rounds: int = ROUNDS,
                  min_round_s: float = MIN_ROUND_S, budget_s: float = BUDGET_S) -> dict:
    """Time one forward of ``before`` and of ``after`` (eval mode, no autograd, the
    threads torch uses now) on ``inputs``: ``speedup`` is the median of the rounds'
    before/after ratios (2.0: the pruned model runs in half the time; the lower middle one
    when the rounds are even), ``{"before_ms", "after_ms"}`` the mean forward of each model in
    that round (medians taken apart would not divide to it: a round slow for both would set
    one and not the other). Each model first runs twice untimed
    (allocations, lazy kernels). Neither model is changed."""
    if rounds < 1:
        raise DepViewError(f"rounds must be at least 1, got {rounds!r}")
    pair = (before, after)
    try:
        with torch.no_grad(), eval_mode(before), eval_mode(after), \
                torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            first = [max(_call(m, inputs) for _ in range(2)) for m in pair]
            runs = max(1, min(1000, int(min_round_s / max(min(first), 1e-6))))
            spent = 2 * sum(first)
            means: list[list[float]] = [[], []]
            started = time.perf_counter()
            for r in range(rounds):
                for i in ((0, 1) if r % 2 == 0 else (1, 0)):  # who goes first alternates
                    means[i].append(sum(_call(pair[i], inputs) for _ in range(runs)) / runs)
                if r >= 2 and time.perf_counter() - started + spent > budget_s:
                    break
    except Exception as exc:
        raise DepViewError(f"timing the forward failed: {error_line(exc)}") from exc
    ratios = [(b / a, i) for i, (b, a) in enumerate(zip(means[0], means[1], strict=True))
              if a > 0]
    ratio, mid = statistics.median_low(ratios) if ratios else (float("nan"), 0)
    return {"before_ms": means[0][mid] * 1e3, "after_ms": means[1][mid] * 1e3,
            "speedup": ratio,
            "rounds": len(means[0]), "runs_per_round": runs,
            "threads": torch.get_num_threads(),
            "device": str(next(iter(after.parameters()), torch.empty(0)).device)}


def speed_text(t: dict, unicode: bool = False) -> str:
    """:func:`compare_speed`'s figures in words: ``"forward 2.07 ms -> 1.35 ms on 2 threads,
    1.53x as fast"`` (``unicode``: with → and ×, as the app writes)."""
    arrow, times = ("→", "×") if unicode else ("->", "x")
    n = t["threads"]
    return (f"forward {t['before_ms']:.3g} ms {arrow} {t['after_ms']:.3g} ms on {n} "
            f"thread{'' if n == 1 else 's'}, {t['speedup']:.2f}{times} as fast")
