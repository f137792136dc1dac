"""Every causal-LM architecture of the installed ``transformers``, from one small config (not a
test): a regression check for changes to grouping and validation.

Run from the repository root (needs ``transformers``; nothing is downloaded)::

    python benchmarks/lm_sweep.py --json after.json                 # every type (~15 min)
    python benchmarks/lm_sweep.py --types llama,falcon,inkling_text   # some of them
    python benchmarks/lm_sweep.py --json after.json --compare before.json

Each type in ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` is built with ``AutoConfig.for_model(type,
**SMALL)`` (random weights), traced on 8 token ids, its groups validated, pruned at 0.5
with L1 and verified. A row has the groups, the prunable ones, the units removed, the
parameters after and masked equivalence's verdict (``ok``; ``exact ok``: the exact groups
alone, when an inexact one was pruned; ``skip``; ``FAILED``); or the first line of the
error. Many types do not build from one generic config (sizes it leaves at their large
defaults, checks it fails): those rows are errors of the config, the same on every commit.
``--compare`` prints the types whose rows differ from an earlier ``--json`` file: run it
before and after a change. The process's address space is limited (``--limit-gb``, default
8): a type whose defaults are huge fails to allocate instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: one config for every architecture (the keys a type does not know are ignored or kept)
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=120, max_position_embeddings=64, head_dim=8)


class _TimeoutError(Exception):
    pass


def _verdict(verification: dict) -> str:
    from viewer.core.prune import masked_note

    if masked_note(verification):  # (what makes prune and check exit 1)
        return "FAILED"
    me = verification.get("masked_equivalence") or {}
    return "ok" if me.get("ok") else \
        "exact ok" if (me.get("exact_groups") or {}).get("ok") else "skip"


def run_one(model_type: str, tf, torch, seconds: int) -> dict:
    from viewer.core.prune import Pruner

    row: dict = {}

    def alarm(*_args):
        raise _TimeoutError

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        try:
            cfg = tf.AutoConfig.for_model(model_type, **SMALL)
        except Exception:  # noqa: BLE001 (head_dim a property: Falcon, ...)
            cfg = tf.AutoConfig.for_model(model_type, **{k: v for k, v in SMALL.items()
                                                         if k != "head_dim"})
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(cfg).eval()
        p = Pruner(model, {"input_ids": torch.randint(3, 100, (1, 8))})
        p.validate_groups()
        row["groups"] = len(p.groups)
        row["prunable"] = sum(1 for g in p.groups if not p.reason(g))
        plan = p.plan(0.5)
        row["removed"] = sum(len(v) for v in plan.removed.values())
        pruned = p.apply(plan)
        row["masked"] = _verdict(p.verify(pruned, plan))
        row["params"] = sum(t.numel() for t in pruned.parameters())
    except _TimeoutError:
        row["error"] = f"timeout after {seconds} s"
    except Exception as exc:  # noqa: BLE001 (a row says what went wrong; the sweep goes on)
        first = (str(exc).strip().splitlines() or [""])[0]
        row["error"] = f"{type(exc).__name__}: {first[:160]}"
    finally:
        signal.alarm(0)
    return row


def _line(name: str, row: dict) -> str:
    if "error" in row:
        return f"{name:<28} error: {row['error']}"
    return (f"{name:<28} groups {row['prunable']:>3}/{row['groups']:<3} removed "
            f"{row['removed']:>6}  params after {row['params']:>10,}  masked {row['masked']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", help="comma-separated model types (default: every one)")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--compare", help="an earlier --json file: print the rows that differ")
    ap.add_argument("--limit-gb", type=int, default=8, help="address-space limit (0: none)")
    ap.add_argument("--seconds", type=int, default=120, help="time limit per type")
    args = ap.parse_args(argv)
    if args.limit_gb:
        resource.setrlimit(resource.RLIMIT_AS, (args.limit_gb << 30, args.limit_gb << 30))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch
    import transformers as tf
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    known = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    types = known if not args.types else args.types.split(",")
    unknown = [t for t in types if t not in known]
    if unknown:
        print(f"error: unknown model type(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    before = json.loads(Path(args.compare).read_text()) if args.compare else None
    print(f"transformers {tf.__version__}, torch {torch.__version__}, {len(types)} types",
          flush=True)
    rows = {}
    for name in types:
        rows[name] = run_one(name, tf, torch, args.seconds)
        print(_line(name, rows[name]), flush=True)
    pruned = [r for r in rows.values() if "error" not in r]
    verdicts = {v: sum(r["masked"] == v for r in pruned) for v in ("ok", "exact ok", "skip",
                                                                 "FAILED")}
    print(f"{len(pruned)}/{len(rows)} built and pruned; masked equivalence: "
          + ", ".join(f"{n} {v}" for v, n in verdicts.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if before is not None:
        changed = [n for n in rows if n in before and before[n] != rows[n]]
        for n in changed:
            print(f"changed {n}:\n  before {_line(n, before[n])}\n  after  {_line(n, rows[n])}")
        print(f"{len(changed)} of {sum(n in before for n in rows)} compared rows changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
