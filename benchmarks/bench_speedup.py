"""What pruning buys at run time: each model pruned at one ratio, and its forward timed
against the pruned copy's (``viewer.core.timing.compare_speed``: interleaved rounds, the
median of per-round ratios), beside the fall in parameters and MACs that predicted it.

Run from the repository root::

    python benchmarks/bench_speedup.py                     # every demo, GPT-2, BERT, ViT-B
    python benchmarks/bench_speedup.py --quick             # skip resnet50 and the HF models
    python benchmarks/bench_speedup.py --ratio 0.3 --round-to 1 --models resnet50,hf-bert

Figures only: nothing is asserted (``tests/test_benchmarks.py`` checks that it runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import _git_rev, build_model, model_names  # noqa: E402


def measure(name: str, ratio: float, round_to: int) -> dict:
    """Prune ``name`` at ``ratio`` (L1, uniform, ``round_to``) and time both forwards."""
    from viewer.core.prune import Pruner
    from viewer.core.timing import compare_speed

    m, x, out_layers = build_model(name)
    p = Pruner(m, x, output_layers=out_layers)
    plan = p.plan(ratio, "l1", round_to=round_to)
    pruned = p.apply(plan)
    pre = p.preview(plan)
    t = compare_speed(m, pruned, x)
    return {"name": name, "params": pre["params"], "macs": pre["macs"], "timing": t}


def _n(x: float) -> str:
    """``89946`` -> ``"89.9k"``, ``4.09e9`` -> ``"4.09G"``."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def report(rows: list[dict], ratio: float, round_to: int) -> str:
    lines = [f"pruned at ratio {ratio}, round-to {round_to} (L1, uniform)", "",
             "| model | params | MACs | forward | speed-up | MACs fall |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        p, m, t = r["params"], r["macs"], r["timing"]
        fall = m["before"] / m["after"] if m["after"] else float("inf")
        lines.append(f"| {r['name']} | {_n(p['before'])} → {_n(p['after'])} | "
                     f"{_n(m['before'])} → {_n(m['after'])} | "
                     f"{t['before_ms']:.3g} → {t['after_ms']:.3g} ms | "
                     f"**{t['speedup']:.2f}×** | {fall:.2f}× |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated demo or HF model names (default: all)")
    ap.add_argument("--quick", action="store_true", help="skip resnet50 and the HF models")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = model_names(ap, args.models, args.quick)
    import torch

    print(f"depview {_git_rev()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {os.cpu_count()} cpus", flush=True)
    rows = []
    for name in names:
        rows.append(measure(name, args.ratio, args.round_to))
        print(f"  {name}: {rows[-1]['timing']['speedup']:.2f}x", file=sys.stderr, flush=True)
    print(report(rows, args.ratio, args.round_to), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"git": _git_rev(), "ratio": args.ratio,
                                               "round_to": args.round_to, "models": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
